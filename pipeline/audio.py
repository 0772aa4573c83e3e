"""Reading and writing audio: any format soundfile reads, any rate, any channel count.

Everything is converted to 16 kHz mono float32 on load. Problems with a file raise
:class:`AudioError` with a reason a person can act on; batch jobs catch it, record the
file and the reason, and go on.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from speech_enhance.pipeline.dsp import MIN_PATCH_SAMPLES, SAMPLE_RATE

# Peak below which a file counts as silent (-80 dBFS).
SILENCE_PEAK = 1e-4


class AudioError(Exception):
    """A file that cannot be used; ``str(err)`` is the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def audio_extensions() -> set[str]:
    """Lower-case file extensions (with dot) of every format libsndfile reads."""
    exts = {"." + fmt.lower() for fmt in sf.available_formats()}
    # Common extensions that differ from libsndfile's format names; RAW has no header
    # to read a rate from, so it is left out.
    return (exts | {".aif", ".oga", ".opus"}) - {".raw"}


def discover_audio(root: str | os.PathLike) -> list[Path]:
    """Every audio file below ``root``, recursively, in sorted (deterministic) order.

    Symbolic links to folders are followed (a folder of links to speaker folders is how
    people pick part of a corpus), each real folder once, so a link cycle ends."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    exts = audio_extensions()
    found, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        found += [Path(folder) / f for f in files if Path(f).suffix.lower() in exts and (Path(folder) / f).is_file()]
    return sorted(found)


def folder_labels(folders: list[str | os.PathLike]) -> list[str]:
    """Short names that tell ``folders`` apart: the last path component, or as many more as
    it takes (``dev/speech`` and ``extra/speech``). Speakers of several clean folders are
    named ``label/speaker``, so that equal folder names in two corpora stay two speakers."""
    parts = [Path(f).resolve().parts for f in folders]
    for k in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-k:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    raise ValueError(f"the same folder is given twice: {[str(f) for f in folders]}")


def speaker_of(path: Path, root: Path, speaker_regex: str | None = None) -> str:
    """Speaker id of a clean file: its parent folder's name by default, or the first
    group of ``speaker_regex`` searched in the path relative to ``root``."""
    if speaker_regex is None:
        return path.parent.name if path.parent != root else path.stem
    rel = path.relative_to(root).as_posix()
    match = re.search(speaker_regex, rel)
    if not match:
        raise AudioError(path, f"speaker regex {speaker_regex!r} does not match {rel!r}")
    return match.group(1) if match.groups() else match.group(0)


def resample(x: np.ndarray, rate: float, target: int = SAMPLE_RATE) -> np.ndarray:
    """``x`` sampled at ``rate`` Hz (any positive rate, not only an integer) resampled to ``target``."""
    if rate == target:
        return x.astype(np.float32, copy=False)
    return soxr.resample(x, rate, target, quality="HQ").astype(np.float32, copy=False)


def load_audio(path: str | os.PathLike, min_samples: int = 0) -> np.ndarray:
    """Load ``path`` as 16 kHz mono float32, or raise :class:`AudioError` saying why not.

    Channels are averaged. Rejected: unreadable/corrupt files, empty files, non-finite
    samples, silent files (peak < -80 dBFS), and files shorter than ``min_samples``
    after resampling."""
    if os.path.getsize(path) == 0:
        raise AudioError(path, "empty file (0 bytes)")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for corrupt input
        raise AudioError(path, f"unreadable audio ({type(exc).__name__}: {exc})") from None
    if data.size == 0:
        raise AudioError(path, "empty file (no samples)")
    if not np.all(np.isfinite(data)):
        raise AudioError(path, "non-finite samples (NaN or Inf)")
    mono = resample(data.mean(axis=1), rate)
    if float(np.max(np.abs(mono))) < SILENCE_PEAK:
        raise AudioError(path, "silent (peak below -80 dBFS)")
    if len(mono) < min_samples:
        raise AudioError(
            path,
            f"too short ({len(mono) / SAMPLE_RATE:.3f} s < {min_samples / SAMPLE_RATE:.3f} s)",
        )
    return mono


def load_clean(path: str | os.PathLike) -> np.ndarray:
    """A clean utterance must give at least one full 64-frame patch."""
    return load_audio(path, min_samples=MIN_PATCH_SAMPLES)


def read_info(path: str | os.PathLike) -> tuple[int, int]:
    """(sample rate, channels) of a file, for writing output in the input's format."""
    info = sf.info(str(path))
    return info.samplerate, info.channels


def write_audio(path: str | os.PathLike, x: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """Write float audio as 16-bit PCM (or the format the extension implies)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(x, -1.0, 1.0), rate, subtype="PCM_16" if str(path).endswith(".wav") else None)
