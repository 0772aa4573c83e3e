"""Quality metrics and classical baselines (pure numpy; 16 kHz mono signals).

Metrics: wide-band PESQ (ITU-T P.862.2, ``pesq``), STOI (``pystoi``) and SI-SDR
(Le Roux et al., 2019). Baselines: a decision-directed Wiener filter written here,
spectral gating from ``noisereduce``, and RNNoise (Valin, 2018; the ``pyrnnoise`` package,
the ``rnnoise`` extra), the open-source denoiser people already use; none sees the clean
signal.
"""

from __future__ import annotations

import importlib.util

import noisereduce
import numpy as np
import soxr
import torch
from pesq import NoUtterancesError, pesq
from pystoi import stoi as _stoi

from speech_enhance.pipeline import dsp


def si_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Scale-invariant SDR in dB (both signals made zero-mean first)."""
    ref = np.asarray(reference, np.float64) - np.mean(reference)
    est = np.asarray(estimate, np.float64) - np.mean(estimate)
    scale = np.dot(est, ref) / max(np.dot(ref, ref), 1e-20)
    target = scale * ref
    residual = est - target
    return float(10 * np.log10(max(np.dot(target, target), 1e-20) / max(np.dot(residual, residual), 1e-20)))


def pesq_wb(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Wide-band PESQ (MOS-LQO, about 1.0-4.64); NaN where PESQ finds no utterance."""
    try:
        return float(pesq(dsp.SAMPLE_RATE, np.asarray(reference, np.float64), np.asarray(estimate, np.float64), "wb"))
    except NoUtterancesError:
        return float("nan")


def stoi(reference: np.ndarray, estimate: np.ndarray) -> float:
    return float(_stoi(reference, estimate, dsp.SAMPLE_RATE, extended=False))


def all_metrics(reference: np.ndarray, estimate: np.ndarray) -> dict[str, float]:
    return {"pesq": pesq_wb(reference, estimate), "stoi": stoi(reference, estimate),
            "si_sdr": si_sdr(reference, estimate)}


def noise_psd_estimate(power: np.ndarray, quantile: float = 0.1) -> np.ndarray:
    """Per-bin noise power: a low quantile over time (speech is absent or weak in the
    quietest frames of each bin); power is [bins, frames]."""
    return np.quantile(power, quantile, axis=1, keepdims=True) + 1e-12


def wiener(noisy: np.ndarray, alpha: float = 0.98, gain_floor: float = 0.1) -> np.ndarray:
    """Decision-directed Wiener filter (Ephraim & Malah, 1984) with a quantile noise
    estimate. The noisy phase is kept."""
    spec = dsp.stft(noisy).numpy()
    power = np.abs(spec) ** 2
    noise = noise_psd_estimate(power)
    gains = np.empty_like(power)
    previous_clean = np.zeros(power.shape[0])
    for t in range(power.shape[1]):
        posterior = power[:, t] / noise[:, 0]
        prior = alpha * previous_clean / noise[:, 0] + (1 - alpha) * np.maximum(posterior - 1, 0)
        gains[:, t] = np.maximum(prior / (1 + prior), gain_floor)
        previous_clean = (gains[:, t] ** 2) * power[:, t]
    return dsp.istft(torch.from_numpy(spec * gains), len(noisy)).numpy()


def spectral_gating(noisy: np.ndarray) -> np.ndarray:
    """Stationary spectral gating (``noisereduce``), noise statistics from the input itself."""
    return noisereduce.reduce_noise(y=noisy, sr=dsp.SAMPLE_RATE, stationary=True, n_jobs=1).astype(np.float32)


RNNOISE_RATE, RNNOISE_FRAME = 48000, 480
# RNNoise's output lags its input by two 10 ms frames (measured by cross-correlation on
# speech, tests/test_metrics.py): removed, so that sample-aligned measures (SI-SDR, STOI)
# judge the denoising and not the delay.
RNNOISE_DELAY = 2 * RNNOISE_FRAME


def rnnoise_available() -> bool:
    return importlib.util.find_spec("pyrnnoise") is not None


def rnnoise(noisy: np.ndarray) -> np.ndarray:
    """RNNoise on 16 kHz audio: resampled to its 48 kHz, run frame by frame (10 ms),
    its delay removed, resampled back; same length as the input."""
    from pyrnnoise.rnnoise import create, destroy, process_mono_frame  # the optional rnnoise extra

    x48 = soxr.resample(np.asarray(noisy, np.float32), dsp.SAMPLE_RATE, RNNOISE_RATE)
    padded = np.concatenate([x48, np.zeros(RNNOISE_DELAY + RNNOISE_FRAME, np.float32)])
    frames = len(padded) // RNNOISE_FRAME
    state = create()
    try:
        out = np.concatenate([process_mono_frame(state, np.clip(padded[i * RNNOISE_FRAME:(i + 1) * RNNOISE_FRAME],
                                                                -1, 1))[0] for i in range(frames)])
    finally:
        destroy(state)
    y48 = out.astype(np.float32) / 32767 if out.dtype == np.int16 else out.astype(np.float32)
    y48 = y48[RNNOISE_DELAY : RNNOISE_DELAY + len(x48)]
    y = soxr.resample(y48, RNNOISE_RATE, dsp.SAMPLE_RATE)
    return np.pad(y, (0, max(0, len(noisy) - len(y))))[: len(noisy)].astype(np.float32)
