"""Quality metrics and classical baselines (pure numpy; 16 kHz mono signals).

Metrics: wide-band PESQ (ITU-T P.862.2, ``pesq``), STOI (``pystoi``) and SI-SDR
(Le Roux et al., 2019). Baselines: a decision-directed Wiener filter written here and
spectral gating from ``noisereduce``; neither sees the clean signal.
"""

from __future__ import annotations

import noisereduce
import numpy as np
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
