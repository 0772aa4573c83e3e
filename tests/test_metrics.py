import numpy as np
import pytest

from speech_enhance.model import metrics
from tests.conftest import speech_like


def _speech(seconds=3.0):
    return speech_like(np.random.default_rng(1), seconds, 16000, 120.0)


def test_si_sdr_of_signal_with_itself_is_very_high_and_scale_invariant():
    s = _speech()
    assert metrics.si_sdr(s, s) > 100
    assert metrics.si_sdr(s, 0.3 * s) > 100


@pytest.mark.parametrize("target_db", [-5.0, 0.0, 10.0, 20.0])
def test_si_sdr_with_known_orthogonal_error(target_db):
    s = _speech().astype(np.float64)
    s -= s.mean()
    e = np.random.default_rng(0).standard_normal(len(s))
    e -= e.mean()
    e -= np.dot(e, s) / np.dot(s, s) * s  # orthogonal to s: SI-SDR is exactly the energy ratio
    e *= np.sqrt(np.dot(s, s) / np.dot(e, e) / 10 ** (target_db / 10))
    assert metrics.si_sdr(s, 2.0 * (s + e)) == pytest.approx(target_db, abs=1e-6)


def test_pesq_and_stoi_of_clean_against_clean():
    s = _speech()
    assert metrics.pesq_wb(s, s) == pytest.approx(4.64, abs=0.01)
    assert metrics.stoi(s, s) == pytest.approx(1.0, abs=1e-6)


def test_metrics_rank_noisier_signals_lower():
    s = _speech()
    noise = 0.05 * np.random.default_rng(2).standard_normal(len(s)).astype(np.float32)
    light, heavy = metrics.all_metrics(s, s + 0.3 * noise), metrics.all_metrics(s, s + 3 * noise)
    assert all(light[k] > heavy[k] for k in ("pesq", "stoi", "si_sdr"))


@pytest.mark.parametrize("baseline", [metrics.wiener, metrics.spectral_gating])
def test_classical_baselines_improve_si_sdr_on_stationary_noise(baseline):
    s = _speech(4.0)
    noisy = s + 0.05 * np.random.default_rng(3).standard_normal(len(s)).astype(np.float32)
    out = baseline(noisy)
    assert out.shape == noisy.shape
    assert metrics.si_sdr(s, out) > metrics.si_sdr(s, noisy) + 1.0


@pytest.mark.skipif(not metrics.rnnoise_available(), reason="the rnnoise extra is not installed")
def test_rnnoise_is_aligned_with_its_input_and_denoises():
    """The delay is removed: RNNoise's output lines up with the clean signal sample for
    sample (a wrong delay costs tens of dB of SI-SDR), and it improves on the noisy input."""
    s = _speech(4.0)
    noisy = s + 0.05 * np.random.default_rng(3).standard_normal(len(s)).astype(np.float32)
    out = metrics.rnnoise(noisy)
    assert out.shape == noisy.shape and out.dtype == np.float32
    lags = range(-40, 41)
    best = max(lags, key=lambda d: np.dot(s[100:-100], np.roll(out, -d)[100:-100]))
    assert abs(best) <= 1  # within a sample (the resamplers round)
    assert metrics.si_sdr(s, out) > metrics.si_sdr(s, noisy) + 1.0
