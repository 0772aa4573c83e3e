"""Enhancing audio with a trained model: arrays, and files of any length and format.

The mask is predicted from the mono mix (what the model was trained on) and applied to
every channel's own STFT, so stereo input keeps its stereo image. Files are streamed:
read in blocks, resampled to 16 kHz with a streaming resampler, enhanced in segments
whose output equals the whole-file result, then resampled back to the input's rate and
written as they are produced. A segment gets the context its network declares on both
sides (the STFT frames line up on the hop grid; :func:`context_samples`); a recurrent
network instead carries its state from segment to segment, each frame seen once.
Memory depends on the segment length only, never on the file's length.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from torch import nn

from speech_enhance.model.net import network_input
from speech_enhance.pipeline import audio, dsp

SEGMENT_SAMPLES = 1000 * dsp.HOP  # 8 s at 16 kHz per model call
BLOCK_SECONDS = 10  # read size from the input file
# Frames on each side of a sample that reach it: the iSTFT overlaps ±2 frames, and a frame
# near a segment's edge is spoiled by its reflect padding for 2 more; one spare.
EDGE_FRAMES = 5


def context_samples(model: nn.Module) -> int | None:
    """Input samples on each side of a segment that make its output equal the whole-file
    result: the frames the network sees (its declared past and future), plus the STFT's
    reach. A streaming network needs only the STFT's (its past is in its state). None:
    the network needs the whole input at once."""
    model = getattr(model, "module", model)
    if getattr(model, "streamable", False):  # its look-ahead is the only future it needs
        return (EDGE_FRAMES - 1 + int(model.future_frames)) * dsp.HOP
    reach = max(model.past_frames, model.future_frames)
    return None if math.isinf(reach) else (int(reach) + EDGE_FRAMES) * dsp.HOP


def enhance_array(model: nn.Module, x: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Enhance 16 kHz audio held in memory: [samples] or [channels, samples].

    ``strength`` in [0, 1] floors the mask at ``1 - strength``: 0 returns the input,
    1 applies the model's mask fully."""
    return enhance_at_strengths(model, x, [strength])[0]


@torch.no_grad()
def enhance_at_strengths(model: nn.Module, x: np.ndarray, strengths: list[float]) -> list[np.ndarray]:
    """:func:`enhance_array` at several strengths, running the STFT and the network once."""
    for strength in strengths:
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
    signal = np.atleast_2d(np.asarray(x, dtype=np.float32))
    length = signal.shape[-1]
    if length < dsp.N_FFT:  # the STFT's reflect padding needs half a window: pad with silence, cut after
        signal = np.pad(signal, ((0, 0), (0, dsp.N_FFT - length)))
    specs = dsp.stft(signal)  # [channels, 257, frames]
    # The STFT is linear: the mono mix's spectrum is the mean of the channels' spectra.
    mask = model(network_input(model, specs.mean(dim=0)[None]))[0, 0].float()
    outputs = []
    for strength in strengths:
        out = dsp.istft(specs * (1.0 - strength * (1.0 - mask)), signal.shape[-1]).numpy()[:, :length]
        outputs.append(out[0] if np.ndim(x) == 1 else out)
    return outputs


class StreamingEnhancer:
    """Feed 16 kHz blocks [channels, n] in with :meth:`push`, collect output of the
    same total length from :meth:`push` and :meth:`finish`: equal to :func:`enhance_array`
    on the whole signal.

    ``context`` defaults to what the model declares (:func:`context_samples`). A
    streaming network's masks are computed once per frame, in order, with its state
    carried over; they are kept for the few frames that the next segment's overlap-add
    needs again. A network with look-ahead hands each mask over that many frames late,
    and is flushed with that many silent frames at :meth:`finish`. A network that needs
    the whole input is run once, at :meth:`finish`."""

    def __init__(self, model: nn.Module, channels: int, strength: float = 1.0,
                 segment: int = SEGMENT_SAMPLES, context: int | None = None):
        context = context_samples(model) if context is None else context
        self.whole = context is None
        context = context or 0
        if segment % dsp.HOP or context % dsp.HOP:
            raise ValueError("segment and context must be multiples of the hop")
        self.model, self.strength, self.segment, self.context = model, strength, segment, context
        net = getattr(model, "module", model)
        self.streaming = getattr(net, "streamable", False)
        self.delay = int(net.future_frames) if self.streaming else 0
        self.buffer = np.zeros((channels, 0), np.float32)
        self.buffer_start = 0  # absolute sample index of buffer[:, 0]
        self.done = 0  # absolute index up to which output has been emitted
        # Streaming networks: the state after frames [0, next_frame), and the masks of
        # frames [mask_first, mask_first + masks.shape[-1]).
        # The first `delay` masks of a stream belong to frames before the first.
        self.state: object | None = None
        self.next_frame = 0
        self.mask_first, self.masks = -self.delay, torch.zeros(dsp.N_BINS, 0)

    def _segment(self, end: int, final: bool = False) -> np.ndarray:
        left = min(self.context, self.done)
        lo = self.done - left - self.buffer_start
        hi = min(end + self.context, self.buffer_start + self.buffer.shape[1]) - self.buffer_start
        chunk = self.buffer[:, lo:hi]
        if self.streaming and not (final and self.done == 0):
            y = self._streamed(chunk, self.done - left, end, final)
        else:  # a network with bounded context, or a whole stream in one piece
            y = enhance_array(self.model, chunk, self.strength)
        out = y[:, left : left + end - self.done]
        self.done = end
        drop = max(0, self.done - self.context - self.buffer_start)
        self.buffer, self.buffer_start = self.buffer[:, drop:], self.buffer_start + drop
        return out

    @torch.no_grad()
    def _streamed(self, chunk: np.ndarray, start: int, end: int, final: bool) -> np.ndarray:
        """Enhance ``chunk`` (starting at absolute sample ``start``) with the masks of a
        streaming network; only samples up to ``end`` are used."""
        specs = dsp.stft(chunk)  # frame k is centred on sample start + k * hop
        first, frames = start // dsp.HOP, specs.shape[-1]
        # The frames whose windows reach [done, end) (every one left, at the end), and the
        # look-ahead their masks wait for (the context holds it; at the end, silence).
        last = first + frames - 1 if final else min(end // dsp.HOP + 1, first + frames - 1)
        feed = min(last + self.delay, first + frames - 1)
        if feed >= self.next_frame or (final and self.delay):
            mono = network_input(self.model, specs.mean(dim=0)[None, :, self.next_frame - first : feed - first + 1])
            if final:
                mono = nn.functional.pad(mono, (0, self.delay))
            new, self.state = self.model.stream(mono, self.state)
            self.masks = torch.cat([self.masks, new[0, 0].float()], dim=1)
            self.next_frame = max(self.next_frame, feed + 1)
        mask = torch.ones(dsp.N_BINS, frames)
        lo, hi = max(first, self.mask_first), min(first + frames, self.mask_first + self.masks.shape[1])
        mask[:, lo - first : hi - first] = self.masks[:, lo - self.mask_first : hi - self.mask_first]
        keep_from = max(self.mask_first, end // dsp.HOP - EDGE_FRAMES)  # what the next segment overlaps
        self.masks, self.mask_first = self.masks[:, keep_from - self.mask_first :], keep_from
        return dsp.istft(specs * (1.0 - self.strength * (1.0 - mask)), chunk.shape[-1]).numpy()

    def push(self, block: np.ndarray) -> np.ndarray:
        self.buffer = np.concatenate([self.buffer, np.asarray(block, np.float32)], axis=1)
        outputs = []
        available = self.buffer_start + self.buffer.shape[1]
        while not self.whole and self.done + self.segment + self.context <= available:
            outputs.append(self._segment(self.done + self.segment))
        return np.concatenate(outputs, axis=1) if outputs else np.zeros((self.buffer.shape[0], 0), np.float32)

    def finish(self) -> np.ndarray:
        end = self.buffer_start + self.buffer.shape[1]
        outputs = []
        while self.done < end:
            # A stream takes what is left (under a segment and its context) in one final piece:
            # a shorter piece would lack the context after it, and each frame is fed only once.
            stop = end if self.whole or self.streaming else min(self.done + self.segment, end)
            outputs.append(self._segment(stop, final=stop == end))
        return np.concatenate(outputs, axis=1) if outputs else np.zeros((self.buffer.shape[0], 0), np.float32)


@dataclass
class FileResult:
    path: str
    output: str | None = None
    seconds_audio: float = 0.0
    seconds_wall: float = 0.0
    error: str | None = None


def enhance_file(model: nn.Module, src_path: str | os.PathLike, dst_path: str | os.PathLike,
                 strength: float = 1.0) -> FileResult:
    """Enhance one file of any length, rate and channel count into ``dst_path`` (same
    rate, channels and length as the input)."""
    started = time.time()
    try:
        info = sf.info(str(src_path))
    except Exception as exc:
        return FileResult(str(src_path), error=f"unreadable audio ({type(exc).__name__}: {exc})")
    if info.frames == 0:
        return FileResult(str(src_path), error="empty file (no samples)")
    rate, channels, total = info.samplerate, info.channels, info.frames
    dst_path = Path(dst_path)
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst_path.with_name(dst_path.name + ".part" + dst_path.suffix)
    down = soxr.ResampleStream(rate, dsp.SAMPLE_RATE, channels, dtype="float32", quality="HQ")
    up = soxr.ResampleStream(dsp.SAMPLE_RATE, rate, channels, dtype="float32", quality="HQ")
    enhancer = StreamingEnhancer(model, channels, strength)
    written = 0

    def write(dst: sf.SoundFile, y16: np.ndarray, last: bool) -> None:
        nonlocal written
        y = up.resample_chunk(np.ascontiguousarray(y16.T), last=last)
        y = y[: max(0, total - written)]
        dst.write(np.clip(y, -1.0, 1.0))
        written += len(y)

    try:
        subtype = info.subtype if info.subtype in sf.available_subtypes(info.format) else None
        with sf.SoundFile(str(src_path)) as src, sf.SoundFile(
            str(tmp), "w", rate, channels, subtype=subtype, format=info.format
        ) as dst:
            for block in src.blocks(blocksize=rate * BLOCK_SECONDS, dtype="float32", always_2d=True):
                if not np.all(np.isfinite(block)):
                    raise audio.AudioError(src_path, "non-finite samples (NaN or Inf)")
                x16 = down.resample_chunk(block)
                write(dst, enhancer.push(x16.T), last=False)
            tail = enhancer.push(down.resample_chunk(np.zeros((0, channels), np.float32), last=True).T)
            write(dst, np.concatenate([tail, enhancer.finish()], axis=1), last=True)
            if written < total:  # resampler rounding: pad the last few samples
                dst.write(np.zeros((total - written, channels), np.float32))
        os.replace(tmp, dst_path)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        reason = exc.reason if isinstance(exc, audio.AudioError) else f"{type(exc).__name__}: {exc}"
        return FileResult(str(src_path), error=reason)
    return FileResult(str(src_path), str(dst_path), total / rate, time.time() - started)


def _file_jobs(inputs: list[str], out_dir: str | os.PathLike) -> tuple[list[tuple[Path, Path]], list[FileResult]]:
    """(source, destination) of every input file (folders searched recursively), and a
    failed result for each input that does not exist."""
    jobs: list[tuple[Path, Path]] = []
    missing: list[FileResult] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            jobs += [(f, Path(out_dir) / path.name / f.relative_to(path)) for f in audio.discover_audio(path)]
        elif path.exists():
            jobs.append((path, Path(out_dir) / path.name))
        else:
            missing.append(FileResult(str(path), error="no such file or folder"))
    return jobs, missing


def _log_result(log, result: FileResult, index: int, total: int, dst: Path) -> None:  # noqa: ANN001
    if result.error:
        log(f"[{index}/{total}] skipped {result.path}: {result.error}")
    else:
        log(f"[{index}/{total}] {result.path} -> {dst}  ({result.seconds_audio:.1f} s audio, real-time factor "
            f"{result.seconds_wall / max(result.seconds_audio, 1e-9):.3f})")


def enhance_paths(model: nn.Module, inputs: list[str], out_dir: str | os.PathLike, strength: float = 1.0,
                  log=print) -> list[FileResult]:  # noqa: ANN001
    """Enhance files and folders (recursively) one after another; outputs keep their
    names under out_dir."""
    jobs, results = _file_jobs(inputs, out_dir)
    return _enhance_jobs(model, jobs, results, strength, log)


def _enhance_jobs(model: nn.Module, jobs: list[tuple[Path, Path]], results: list[FileResult], strength: float,
                  log) -> list[FileResult]:  # noqa: ANN001
    for index, (src, dst) in enumerate(jobs, 1):
        results.append(enhance_file(model, src, dst, strength))
        _log_result(log, results[-1], index, len(jobs), dst)
    return results


_WORKER_MODEL: nn.Module | None = None


def _start_worker(load, threads: int) -> None:  # noqa: ANN001
    global _WORKER_MODEL
    torch.set_num_threads(threads)
    _WORKER_MODEL = load()


def _enhance_in_worker(src: Path, dst: Path, strength: float) -> FileResult:
    return enhance_file(_WORKER_MODEL, src, dst, strength)


def enhance_paths_parallel(load, inputs: list[str], out_dir: str | os.PathLike,  # noqa: ANN001
                           strength: float = 1.0, jobs: int | None = None, log=print) -> list[FileResult]:  # noqa: ANN001
    """:func:`enhance_paths` with files enhanced in ``jobs`` processes at once (default:
    every CPU), each on one thread with its own model from ``load()`` (a picklable
    callable): files are independent, so this scales where one file's small matrix
    products do not."""
    import concurrent.futures
    import multiprocessing

    file_jobs, results = _file_jobs(inputs, out_dir)
    workers = max(1, min(jobs or os.cpu_count() or 1, len(file_jobs)))
    if workers == 1:
        return _enhance_jobs(load(), file_jobs, results, strength, log)
    # spawn, not fork: a forked copy of a process that has run torch's thread pool can hang.
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_start_worker, initargs=(load, 1)) as pool:
        futures = {pool.submit(_enhance_in_worker, src, dst, strength): dst for src, dst in file_jobs}
        for index, future in enumerate(concurrent.futures.as_completed(futures), 1):
            results.append(future.result())
            _log_result(log, results[-1], index, len(file_jobs), futures[future])
    return results


def stream_pcm(model: nn.Module, source, sink, rate: int = dsp.SAMPLE_RATE, channels: int = 1,  # noqa: ANN001
               strength: float = 1.0, segment: int = 2 * dsp.HOP) -> int:
    """Enhance raw 16-bit little-endian PCM from the binary stream ``source`` (e.g. stdin)
    to ``sink`` as it arrives, ``segment`` samples at 16 kHz at a time: a denoiser for a
    pipe from ``sox``/``ffmpeg``/a sound card. Returns the frames written (as many as read)."""
    down = soxr.ResampleStream(rate, dsp.SAMPLE_RATE, channels, dtype="float32", quality="HQ")
    up = soxr.ResampleStream(dsp.SAMPLE_RATE, rate, channels, dtype="float32", quality="HQ")
    enhancer = StreamingEnhancer(model, channels, strength, segment=segment)
    frame_bytes = 2 * channels
    read = written = 0
    pending = b""

    def emit(y16: np.ndarray, last: bool) -> None:
        nonlocal written
        y = up.resample_chunk(np.ascontiguousarray(y16.T), last=last)[: max(0, read - written)]
        if last and written + len(y) < read:  # resampler rounding: pad the last few samples
            y = np.concatenate([y, np.zeros((read - written - len(y), channels), np.float32)])
        sink.write((np.clip(y, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes())
        sink.flush()
        written += len(y)

    while True:
        data = source.read1(4096 * frame_bytes) if hasattr(source, "read1") else source.read(4096 * frame_bytes)
        if not data:
            break
        data, pending = pending + data, b""
        usable = len(data) - len(data) % frame_bytes
        data, pending = data[:usable], data[usable:]
        block = np.frombuffer(data, "<i2").astype(np.float32).reshape(-1, channels) / 32768.0
        read += len(block)
        emit(enhancer.push(down.resample_chunk(block).T), last=False)
    tail = enhancer.push(down.resample_chunk(np.zeros((0, channels), np.float32), last=True).T)
    emit(np.concatenate([tail, enhancer.finish()], axis=1), last=True)
    return written


def latency_ms(model: nn.Module, segment: int = 2 * dsp.HOP) -> float | None:
    """Algorithmic latency of :func:`stream_pcm` at 16 kHz: an output sample waits for its
    segment to fill and for the context after it (window and look-ahead). None: the
    network needs the whole input."""
    context = context_samples(model)
    return None if context is None else 1000.0 * (segment + context) / dsp.SAMPLE_RATE
