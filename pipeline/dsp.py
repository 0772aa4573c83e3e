"""Pure DSP for the dataset: mixing at an exact SNR, STFT features, patching.

No Ray and no file I/O here, so every function is testable on arrays alone and the
build, the benchmark's single-process loop and re-rendering from the manifest all call
the very same code.

SNR definition (used everywhere in the project):
    SNR_dB = 10 * log10( sum(clean**2) / sum(noise_added**2) )
over the whole utterance, where ``noise_added`` is the scaled noise segment actually
added to the clean signal (same length as the utterance). ``noisy = clean + noise_added``
exactly, and the joint output gain multiplies all three, so it leaves the SNR unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SAMPLE_RATE = 16_000
N_FFT = 512
HOP = 128
N_BINS = N_FFT // 2 + 1  # 257
PATCH_FRAMES = 64
# The shortest signal that still gives one full patch: 1 + n // HOP >= PATCH_FRAMES.
MIN_PATCH_SAMPLES = (PATCH_FRAMES - 1) * HOP
# Looped noise is joined with a linear crossfade this long (20 ms) to avoid clicks.
LOOP_CROSSFADE = 320
# Peak ceiling for the joint gain: no sample of clean, noise or noisy exceeds it.
PEAK_CEILING = 0.99
# Range of the noisy RMS level drawn per mixture (dBFS), before the peak ceiling.
LEVEL_RANGE_DB = (-35.0, -15.0)


def power(x: np.ndarray) -> float:
    """Mean power of a signal, accumulated in float64."""
    return float(np.mean(np.square(x, dtype=np.float64)))


def snr_db(clean: np.ndarray, noise: np.ndarray) -> float:
    """SNR of ``clean`` over ``noise`` in dB (the project's definition, see module doc)."""
    return 10.0 * np.log10(power(clean) / power(noise))


def fit_noise(noise: np.ndarray, length: int, offset: int) -> np.ndarray:
    """Return ``length`` samples of ``noise`` starting at ``offset``.

    Noise at least as long as the utterance is cut at ``offset`` (which must leave room:
    ``0 <= offset <= len(noise) - length``). Shorter noise is looped, each repeat joined
    to the previous one with a ``LOOP_CROSSFADE``-sample linear crossfade, and the loop
    is read from ``offset`` (``0 <= offset < len(noise)``).
    """
    n = len(noise)
    if n >= length:
        if not 0 <= offset <= n - length:
            raise ValueError(f"offset {offset} outside [0, {n - length}]")
        return noise[offset : offset + length]
    if not 0 <= offset < n:
        raise ValueError(f"offset {offset} outside [0, {n})")
    fade = min(LOOP_CROSSFADE, n // 2)
    ramp = np.linspace(0.0, 1.0, fade, endpoint=False, dtype=np.float32) if fade else None
    looped = noise.astype(np.float32, copy=True)
    while len(looped) < offset + length:
        if fade:
            head = noise[:fade] * ramp + looped[-fade:] * (1.0 - ramp)
            looped = np.concatenate([looped[:-fade], head, noise[fade:]])
        else:
            looped = np.concatenate([looped, noise])
    return looped[offset : offset + length]


def noise_offset_range(noise_len: int, clean_len: int) -> int:
    """Number of valid offsets for :func:`fit_noise` (offsets are ``0 .. result-1``)."""
    return noise_len - clean_len + 1 if noise_len >= clean_len else noise_len


def scale_noise_to_snr(clean: np.ndarray, noise: np.ndarray, target_snr_db: float) -> np.ndarray:
    """Scale ``noise`` so that ``snr_db(clean, result) == target_snr_db``."""
    noise_power = power(noise)
    if noise_power <= 0.0:
        raise ValueError("noise segment is silent: cannot reach any SNR")
    scale = np.sqrt(power(clean) / (noise_power * 10.0 ** (target_snr_db / 10.0)))
    return (noise.astype(np.float64) * scale).astype(np.float32)


def joint_gain(level_db: float, *signals: np.ndarray) -> float:
    """Gain that brings the first signal's RMS to ``level_db`` dBFS without any of
    ``signals`` exceeding ``PEAK_CEILING``."""
    rms = np.sqrt(power(signals[0]))
    peak = max(max(float(s.max()), -float(s.min())) for s in signals)  # no |s| temporaries
    gain = 10.0 ** (level_db / 20.0) / max(rms, 1e-12)
    return float(min(gain, PEAK_CEILING / max(peak, 1e-12)))


@dataclass(frozen=True)
class Mixture:
    clean: np.ndarray  # float32 training target, after the joint gain
    noise: np.ndarray  # the noise actually added, after the joint gain
    noisy: np.ndarray  # speech + noise (clipped where the row says so)
    gain: float
    measured_snr_db: float  # of the speech in the mixture over the noise added


def render_mixture(
    clean: np.ndarray, noise: np.ndarray, snr: float, noise_offset: int, level_db: float
) -> Mixture:
    """Mix ``clean`` with ``noise`` at ``snr`` dB. Deterministic in its arguments alone,
    so a manifest row (offset, level) re-renders the mixture exactly."""
    return mix(clean, fit_noise(noise, len(clean), noise_offset), snr, level_db)


def mix(speech: np.ndarray, noise: np.ndarray, snr: float, level_db: float, target: np.ndarray | None = None,
        clip_level: float = 0.0) -> Mixture:
    """``speech`` plus ``noise`` (same length) scaled to ``snr`` dB against the speech, at
    ``level_db``. ``target`` (default: the speech itself, e.g. the dry or early-reverb
    version of reverberant speech) gets the same gain and is the mixture's clean signal.
    ``clip_level`` > 0 clips the noisy signal at that fraction of its peak, as an
    overdriven input does; the target stays unclipped."""
    noise_added = scale_noise_to_snr(speech, noise, snr)
    signals = (speech, noise_added) if target is None else (speech, noise_added, target)
    gain = joint_gain(level_db, speech + noise_added, *signals)
    speech_g = (speech * gain).astype(np.float32, copy=False)
    noise_g = (noise_added * gain).astype(np.float32, copy=False)
    # noisy is defined as the float32 sum, so speech + noise == noisy holds bit for bit.
    noisy_g = speech_g + noise_g
    if clip_level > 0:
        peak = np.float32(clip_level * max(float(noisy_g.max()), -float(noisy_g.min())))
        noisy_g = np.clip(noisy_g, -peak, peak)
    target_g = speech_g if target is None else (target * gain).astype(np.float32, copy=False)
    return Mixture(target_g, noise_g, noisy_g, gain, snr_db(speech_g, noise_g))


# Made once: torch.hann_window took 0.2 ms a call, 2% of a build's time at two STFTs per
# mixture. Kept as numpy so that each call gets an ordinary tensor (torch.from_numpy costs
# microseconds), never one created under some caller's inference_mode.
_HANN = torch.hann_window(N_FFT, periodic=True, dtype=torch.float32).numpy()


def _window() -> torch.Tensor:
    return torch.from_numpy(_HANN)


def stft(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Complex STFT (n_fft 512, hop 128, periodic Hann, centred with reflect padding).

    ``x``: [..., samples] → [..., 257, 1 + samples // 128]."""
    t = torch.as_tensor(x, dtype=torch.float32)
    return torch.stft(
        t, N_FFT, HOP, window=_window().to(t.device), center=True, pad_mode="reflect",
        return_complex=True,
    )


def istft(spec: torch.Tensor, length: int) -> torch.Tensor:
    """Inverse of :func:`stft`: [..., 257, frames] → [..., length]."""
    return torch.istft(spec, N_FFT, HOP, window=_window().to(spec.device), center=True, length=length)


# Patches per FFT call in spectrum_patches: 256 frames, whose windowed frames (0.5 MiB)
# and spectrum (0.5 MiB) stay in cache from the FFT through the arithmetic, which one
# call for the whole signal does not.
FFT_BLOCK_PATCHES = 4


def spectrum_patches(x: np.ndarray, with_phase: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """STFT magnitude of ``x`` cut into patches (:func:`cut_patches`), float32
    [n_patches, 257, 64]; with ``with_phase`` also the phase (radians), else None.

    The same numbers as :func:`stft` (the same window multiply and FFT, so bit for bit
    on torch's CPU FFT), computed a few patches at a time: only the frames of whole
    patches are transformed, each block's real and imaginary parts are cut into
    contiguous patches, and the arithmetic runs in place on those. numpy's SIMD
    sqrt/arctan2 were 5-9x faster here than torch's complex abs/angle."""
    x = np.asarray(x, dtype=np.float32)
    count = n_patches(len(x))
    mag = np.empty((count, N_BINS, PATCH_FRAMES), dtype=np.float32)
    phase = np.empty_like(mag) if with_phase else None
    if count == 0:
        return mag, phase
    padded = torch.from_numpy(np.pad(x, N_FFT // 2, mode="reflect"))  # stft's centring
    window = _window()
    for first in range(0, count, FFT_BLOCK_PATCHES):
        last = min(count, first + FFT_BLOCK_PATCHES)
        samples = padded[first * PATCH_FRAMES * HOP : (last * PATCH_FRAMES - 1) * HOP + N_FFT]
        spec = torch.view_as_real(torch.fft.rfft(samples.unfold(0, N_FFT, HOP) * window)).numpy()
        re, im = cut_patches(spec[..., 0].T), cut_patches(spec[..., 1].T)  # [frames, 257] parts
        if phase is not None:
            np.arctan2(im, re, out=phase[first:last])
        np.multiply(re, re, out=re)
        np.multiply(im, im, out=im)
        np.add(re, im, out=re)
        np.sqrt(re, out=mag[first:last])
    return mag, phase


def n_frames(n_samples: int) -> int:
    return 1 + n_samples // HOP


def n_patches(n_samples: int) -> int:
    """Full 64-frame patches in a signal; the last partial patch is dropped."""
    return n_frames(n_samples) // PATCH_FRAMES


def cut_patches(spec: np.ndarray) -> np.ndarray:
    """[F, T] → [T // 64, F, 64]: consecutive non-overlapping patches along time.

    The trailing frames that do not fill a whole patch (at most 63 frames, < 0.51 s)
    are dropped: zero-padding them would teach the model silence that never occurs."""
    count = spec.shape[-1] // PATCH_FRAMES
    trimmed = spec[:, : count * PATCH_FRAMES]
    return np.ascontiguousarray(
        trimmed.reshape(spec.shape[0], count, PATCH_FRAMES).transpose(1, 0, 2)
    )


def mixture_patches(mix: Mixture) -> dict[str, np.ndarray]:
    """Patch tensors of one mixture: noisy magnitude and phase, clean magnitude."""
    noisy_mag, noisy_phase = spectrum_patches(mix.noisy, with_phase=True)
    clean_mag, _ = spectrum_patches(mix.clean)
    return {"noisy_mag": noisy_mag, "clean_mag": clean_mag, "noisy_phase": noisy_phase}


def _erb_rate(hz: np.ndarray | float) -> np.ndarray:
    """Glasberg & Moore's ERB-rate scale (ERBs below ``hz``)."""
    return 21.4 * np.log10(1.0 + 0.00437 * np.asarray(hz, dtype=np.float64))


def _erb_hz(rate: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_erb_rate`."""
    return (10 ** (rate / 21.4) - 1.0) / 0.00437


def band_matrix(n_bands: int) -> np.ndarray:
    """Interpolation from ``n_bands`` frequency bands to the 257 STFT bins, [257, n_bands].

    The lower half of the bands (``n_bands // 2 + 1``) are the lowest bins themselves, where
    speech's harmonics sit; the rest have centres equally spaced on the ERB-rate scale up to
    8 kHz, as GTCRN and DeepFilterNet group the high band. Each bin takes a linear
    interpolation between the two band centres around it, so every row sums to 1: a gain
    per band in [0, 1] becomes a smooth gain per bin in [0, 1]. Normalise the columns of
    its transpose to average bins into bands."""
    if not 2 <= n_bands < N_BINS:
        raise ValueError(f"band count must be between 2 and {N_BINS - 1}, got {n_bands}")
    linear = n_bands // 2 + 1
    if linear >= n_bands:
        raise ValueError(f"band count {n_bands} leaves no ERB bands")
    bin_hz = SAMPLE_RATE / N_FFT
    lo, hi = _erb_rate((linear - 1) * bin_hz), _erb_rate(SAMPLE_RATE / 2)
    rates = lo + (hi - lo) * np.arange(1, n_bands - linear + 1) / (n_bands - linear)
    centres = np.concatenate([np.arange(linear, dtype=np.float64), _erb_hz(rates) / bin_hz])
    if np.any(np.diff(centres) < 1.0):
        raise ValueError(f"{n_bands} bands are too many: ERB bands would be narrower than one bin")
    bins = np.arange(N_BINS)
    below = np.minimum(np.searchsorted(centres, bins, side="right") - 1, n_bands - 2)  # centre at or below
    frac = (bins - centres[below]) / (centres[below + 1] - centres[below])
    weights = np.zeros((N_BINS, n_bands))
    weights[bins, below], weights[bins, below + 1] = 1.0 - frac, frac
    return weights
