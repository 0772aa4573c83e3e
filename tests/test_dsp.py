import numpy as np
import pytest
import torch

from speech_enhance.pipeline import dsp


def _signals(seed=0, n=20_000):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / dsp.SAMPLE_RATE
    clean = (0.3 * np.sin(2 * np.pi * 220 * t) * np.hanning(n)).astype(np.float32)
    noise = (0.2 * rng.standard_normal(3 * n)).astype(np.float32)
    return clean, noise


@pytest.mark.parametrize("snr", [20.0, 10.0, 5.0, 0.0, -5.0, -10.0])
def test_mixture_hits_snr_and_sums_exactly(snr):
    clean, noise = _signals()
    for level in (-35.0, -15.0, 10.0):  # 10 dBFS forces the peak ceiling
        mix = dsp.render_mixture(clean, noise, snr, noise_offset=1234, level_db=level)
        assert np.array_equal(mix.clean + mix.noise, mix.noisy)
        assert abs(dsp.snr_db(mix.clean, mix.noise) - snr) < 0.1
        assert abs(mix.measured_snr_db - snr) < 0.1
        for x in (mix.clean, mix.noise, mix.noisy):
            assert np.max(np.abs(x)) <= dsp.PEAK_CEILING + 1e-6


def test_joint_gain_scales_all_three_consistently():
    clean, noise = _signals()
    mix = dsp.render_mixture(clean, noise, 5.0, 0, -25.0)
    # the clean target is exactly the input clean times the reported gain
    np.testing.assert_allclose(mix.clean, clean * mix.gain, rtol=1e-6, atol=1e-9)
    rms_db = 10 * np.log10(dsp.power(mix.noisy))
    assert abs(rms_db - -25.0) < 0.01


def test_render_is_deterministic_in_its_arguments():
    clean, noise = _signals()
    a = dsp.render_mixture(clean, noise, 0.0, 77, -20.0)
    b = dsp.render_mixture(clean.copy(), noise.copy(), 0.0, 77, -20.0)
    assert np.array_equal(a.noisy, b.noisy)


def test_fit_noise_cuts_long_noise_at_offset():
    noise = np.arange(100, dtype=np.float32)
    np.testing.assert_array_equal(dsp.fit_noise(noise, 10, 90), noise[90:100])
    with pytest.raises(ValueError):
        dsp.fit_noise(noise, 10, 91)


def test_fit_noise_loops_short_noise_with_crossfade():
    n = 1000
    noise = np.ones(n, dtype=np.float32)
    out = dsp.fit_noise(noise, 5000, 500)
    assert len(out) == 5000
    # a constant signal crossfaded with itself stays constant: no gaps or clicks
    np.testing.assert_allclose(out, 1.0, atol=1e-6)
    ramp = np.sin(np.linspace(0, 40 * np.pi, n)).astype(np.float32)
    looped = dsp.fit_noise(ramp, 3 * n, 0)
    assert np.max(np.abs(np.diff(looped))) < 2 * np.max(np.abs(np.diff(ramp))) + 1e-3


def test_spectrum_patches_are_the_stft_and_reconstruct_it_above_60db():
    n = (2 * dsp.PATCH_FRAMES - 1) * dsp.HOP  # frames fill exactly two patches
    clean, noise = _signals(n=n)
    x = clean + 0.1 * noise[:n]
    mag, phase = dsp.spectrum_patches(x, with_phase=True)
    assert mag.shape == phase.shape == (2, dsp.N_BINS, dsp.PATCH_FRAMES)
    assert mag.flags.c_contiguous and phase.flags.c_contiguous and mag.dtype == phase.dtype == np.float32
    spec = torch.polar(torch.from_numpy(np.concatenate(mag, axis=-1)), torch.from_numpy(np.concatenate(phase, axis=-1)))
    np.testing.assert_allclose(spec.numpy(), dsp.stft(x).numpy(), rtol=1e-5, atol=1e-5)
    y = dsp.istft(spec, n).numpy()
    assert dsp.snr_db(x, x - y) > 60.0
    mag_only, no_phase = dsp.spectrum_patches(x)
    assert no_phase is None and np.array_equal(mag_only, mag)


def test_spectrum_patches_match_the_stft_across_fft_blocks_and_drop_the_tail():
    # Patches spread over three FFT blocks (the last one short), then 40 frames that do
    # not fill a patch; and a signal one sample short of a patch.
    count = 2 * dsp.FFT_BLOCK_PATCHES + 2
    n = (count * dsp.PATCH_FRAMES + 40) * dsp.HOP
    clean, noise = _signals(n=n)
    x = clean + 0.1 * noise[:n]
    mag, phase = dsp.spectrum_patches(x, with_phase=True)
    assert mag.shape == phase.shape == (count, dsp.N_BINS, dsp.PATCH_FRAMES)
    expected = dsp.cut_patches(dsp.stft(x).numpy())  # complex, tail dropped
    got = torch.polar(torch.from_numpy(mag), torch.from_numpy(phase)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    short_mag, short_phase = dsp.spectrum_patches(x[: dsp.MIN_PATCH_SAMPLES - 1], with_phase=True)
    assert short_mag.shape == short_phase.shape == (0, dsp.N_BINS, dsp.PATCH_FRAMES)


def test_cut_patches_drops_partial_tail_and_keeps_order():
    spec = np.arange(257 * 150, dtype=np.float32).reshape(257, 150)
    patches = dsp.cut_patches(spec)
    assert patches.shape == (2, 257, 64)
    np.testing.assert_array_equal(patches[1], spec[:, 64:128])
    assert dsp.n_patches(dsp.MIN_PATCH_SAMPLES) == 1
    assert dsp.n_patches(dsp.MIN_PATCH_SAMPLES - 1) == 0


def test_mixture_patch_count_matches_plan():
    clean, noise = _signals(n=30_000)
    mix = dsp.render_mixture(clean, noise, 0.0, 5, -20.0)
    patches = dsp.mixture_patches(mix)
    assert {k: v.shape for k, v in patches.items()} == {
        k: (dsp.n_patches(30_000), 257, 64) for k in ("noisy_mag", "clean_mag", "noisy_phase")
    }


def test_band_matrix_keeps_low_bins_and_interpolates_erb_bands():
    w = dsp.band_matrix(129)
    assert w.shape == (257, 129) and w.min() >= 0
    np.testing.assert_allclose(w.sum(axis=1), 1.0)  # a gain in [0, 1] per band stays one per bin
    np.testing.assert_array_equal(w[:65, :65], np.eye(65))  # 0-2 kHz: bin by bin
    width = (w > 0).sum(axis=0)  # bins each band touches grow with frequency (ERB)
    assert width[65] <= 3 and width[-2] >= 9 and np.all(np.diff(width[66:-1]) >= -1)
    assert w[256, 128] == pytest.approx(1.0)  # the last band ends at 8 kHz
    band_gain = np.linspace(0.0, 1.0, 129)
    bin_gain = w @ band_gain
    assert np.all(np.diff(bin_gain) >= 0)  # interpolation, no overshoot
    with pytest.raises(ValueError, match="narrower than one bin"):
        dsp.band_matrix(250)
    with pytest.raises(ValueError, match="between 2 and"):
        dsp.band_matrix(257)
