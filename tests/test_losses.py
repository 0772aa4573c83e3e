"""Each training loss against a value worked out by hand."""

import math

import numpy as np
import pytest
import torch
from conftest import speech_like

from speech_enhance.model.losses import LOSSES, get_loss, si_sdr
from speech_enhance.pipeline import dsp


def _patch(values):
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, 1, -1)


def test_magnitude_l1_is_the_mean_absolute_difference():
    assert get_loss("mag_l1")(_patch([1.0, 2.0]), _patch([0.0, 4.0])).item() == pytest.approx((1 + 2) / 2)


def test_compressed_magnitude_losses_compare_the_0_3_powers():
    # 1^0.3 = 1 and 0^0.3 = 0 (the floor's 1e-12^0.3 = 2.5e-4); 8^0.3 = 1.866, 1^0.3 = 1.
    enhanced, clean = _patch([1.0, 8.0]), _patch([0.0, 1.0])
    floor = 1e-12 ** 0.3
    first, second = 1 - floor, 8 ** 0.3 - 1
    assert get_loss("cmag_l1")(enhanced, clean).item() == pytest.approx((first + second) / 2, rel=1e-5)
    assert get_loss("cmag_mse")(enhanced, clean).item() == pytest.approx((first**2 + second**2) / 2, rel=1e-5)


def test_asymmetric_loss_weighs_removed_speech_four_times_leftover_noise():
    # Bin 1 over-suppressed: 1^0.3 - 4^0.3 = -0.5157; bin 2 leftover noise: 16^0.3 - 1 = 1.2974.
    enhanced, clean = _patch([1.0, 16.0]), _patch([4.0, 1.0])
    under, over = 1 - 4 ** 0.3, 16 ** 0.3 - 1
    expected = (4 * under**2 + over**2) / 2
    assert get_loss("cmag_asym")(enhanced, clean).item() == pytest.approx(expected, rel=1e-5)
    # The same error the other way round costs four times as much when it removes speech.
    assert get_loss("cmag_asym")(_patch([1.0]), _patch([2.0])).item() == pytest.approx(
        4 * get_loss("cmag_asym")(_patch([2.0]), _patch([1.0])).item(), rel=1e-5)


def test_erb_weight_weighs_each_bin_by_one_over_its_erb():
    # Bins 0 and 256 (0 Hz and 8 kHz): ERBs 24.7 and 24.7 * (4.37 * 8 + 1) = 888.2 Hz.
    erb = 24.7 * (4.37 * torch.arange(257, dtype=torch.float64) * 16000 / 512 / 1000 + 1)
    mean_inverse = (1 / erb).mean().item()
    clean = torch.zeros(1, 1, 257, 2)
    enhanced = clean.clone()
    enhanced[0, 0, 0, 0] = enhanced[0, 0, 256, 1] = 1.0  # 1^0.3 - floor: an error of about 1 in each
    error = (1 - 1e-12 ** 0.3) ** 2
    plain = get_loss("cmag_mse")(enhanced, clean).item()
    assert plain == pytest.approx(2 * error / (257 * 2), rel=1e-5)
    weighted = get_loss("cmag_mse", erb_weight=1)(enhanced, clean).item()
    expected = error * (1 / 24.7 + 1 / 888.2) / mean_inverse / (257 * 2)
    assert weighted == pytest.approx(expected, rel=1e-4)
    # The asymmetric loss keeps its over-suppression factor under the weights.
    assert get_loss("cmag_asym", erb_weight=1)(clean, enhanced).item() == pytest.approx(4 * expected, rel=1e-4)
    with pytest.raises(ValueError, match="erb_weight weighs the 257 STFT bins, got 1 rows"):
        get_loss("cmag_mse", erb_weight=1)(_patch([1.0]), _patch([0.0]))


def test_mask_loss_compares_square_roots_of_the_mask_and_the_ideal_ratio_mask():
    # Bin 1: mask 4/4 = 1 against ideal 1/4: (1 - 0.5)^2 = 0.25. Bin 2: mask 2/4 against an ideal
    # of 8/4 capped at 1: (0.7071 - 1)^2 = 0.0858. Bin 3 is silent (no mask) and is left out.
    noisy, clean, enhanced = _patch([4.0, 4.0, 0.0]), _patch([1.0, 8.0, 0.0]), _patch([4.0, 2.0, 0.0])
    expected = (0.25 + (0.5 ** 0.5 - 1) ** 2) / 2
    loss = get_loss("mask_mse")
    assert loss(enhanced, clean, noisy=noisy).item() == pytest.approx(expected, rel=1e-5)
    # Level does not count: the same masks on a bin 100 times quieter cost the same.
    assert loss(enhanced / 100, clean / 100, noisy=noisy / 100).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="noisy magnitude"):
        loss(enhanced, clean)
    # mask_asym: bin 2 is over-suppressed (mask below the ideal), so it weighs four times.
    assert get_loss("mask_asym")(enhanced, clean, noisy=noisy).item() == pytest.approx(
        (0.25 + 4 * (0.5 ** 0.5 - 1) ** 2) / 2, rel=1e-5)
    torch.manual_seed(0)
    noisy = torch.rand(2, 1, 257, 64) + 0.1
    clean, phase = noisy * torch.rand_like(noisy), (torch.rand_like(noisy) - 0.5) * 2 * math.pi
    enhanced = noisy * torch.rand_like(noisy)
    parts = (get_loss("cmag_asym")(enhanced, clean) + 0.5 * get_loss("mask_asym")(enhanced, clean, noisy=noisy)
             + 1e-3 * get_loss("sisdr")(enhanced, clean, phase))
    combined = get_loss("cmag_mask_asym_sisdr")(enhanced, clean, phase, noisy)
    assert combined.item() == pytest.approx(parts.item(), rel=1e-5)


def test_si_sdr_of_a_known_mixture():
    target = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    noise = torch.tensor([[1.0, 1.0, -1.0, -1.0]])  # orthogonal to the target, zero mean
    # estimate = 2 * target + 0.5 * noise: projection 2 * target (energy 16), residual energy 1
    assert si_sdr(2 * target + 0.5 * noise, target).item() == pytest.approx(10 * math.log10(16 / 1), abs=1e-4)
    assert si_sdr(3 * target, target).item() > 70  # scale-invariant: a scaled target is perfect


def test_waveform_loss_is_negative_si_sdr_and_needs_the_phase():
    torch.manual_seed(0)
    clean = torch.rand(2, 1, 257, 16) + 0.1
    phase = (torch.rand(2, 1, 257, 16) - 0.5) * 2 * math.pi
    loss = get_loss("sisdr")
    assert loss.needs_phase and loss(clean, clean, phase).item() < -60  # identical waveforms
    assert loss(clean * 0.5, clean, phase).item() < -60  # scale does not count
    assert loss(clean + torch.rand_like(clean), clean, phase).item() > loss(clean, clean, phase).item()
    with pytest.raises(ValueError, match="phase"):
        loss(clean, clean)
    combined = get_loss("cmag_mse_sisdr")
    noisy = clean + torch.rand_like(clean)
    expected = get_loss("cmag_mse")(noisy, clean) + 1e-3 * loss(noisy, clean, phase)
    assert get_loss("cmag_asym_sisdr")(noisy, clean, phase).item() == pytest.approx(
        (get_loss("cmag_asym")(noisy, clean) + 1e-3 * loss(noisy, clean, phase)).item(), rel=1e-5)
    assert combined(noisy, clean, phase).item() == pytest.approx(expected.item(), rel=1e-6)


def test_stoi_loss_is_one_minus_the_envelope_correlation():
    # Every bin follows the envelope 1, 2, 1, 2, ...: so does each band's root energy.
    pattern = torch.tensor([1.0, 2.0]).repeat(32)
    clean = pattern.expand(1, 1, 257, 64)
    loss = get_loss("stoi")
    assert loss(clean, clean).item() == pytest.approx(0.0, abs=1e-4)
    assert loss(3 * clean, clean).item() == pytest.approx(0.0, abs=1e-4)  # scaled to the clean first
    assert loss(clean.flip(-1), clean).item() == pytest.approx(2.0, abs=1e-4)  # 2, 1, 2, 1: correlation -1
    assert loss(torch.ones_like(clean), clean).item() == pytest.approx(1.0, abs=1e-4)  # a flat envelope: none
    # Frames 40 dB below the loudest are left out: with 32 silent frames between two halves
    # of the pattern, the speech left is 1, 2, ... again.
    gap = torch.cat([clean[..., :32], 1e-3 * torch.rand(1, 1, 257, 32), clean[..., :32]], dim=-1)
    enhanced = torch.cat([clean[..., :32], torch.rand(1, 1, 257, 32), clean[..., :32]], dim=-1)
    assert loss(enhanced, gap).item() == pytest.approx(0.0, abs=1e-4)
    assert loss(enhanced[..., :48], gap[..., :48]).item() == pytest.approx(1.0)  # 32 speech frames: no segment
    with pytest.raises(ValueError, match="at least 48 frames"):
        loss(clean[..., :40], clean[..., :40])


def test_stoi_loss_follows_stoi():
    """On speech-like signals in noise, 1 - loss is within 0.03 of STOI (pystoi)."""
    pystoi = pytest.importorskip("pystoi")
    rng = np.random.default_rng(1)
    clean = speech_like(rng, 2.0, dsp.SAMPLE_RATE, 130)
    for snr in (-5.0, 5.0, 15.0):
        noisy = clean + dsp.scale_noise_to_snr(clean, rng.standard_normal(len(clean)).astype(np.float32), snr)
        ours = 1 - get_loss("stoi")(dsp.stft(noisy).abs()[None, None], dsp.stft(clean).abs()[None, None]).item()
        assert ours == pytest.approx(pystoi.stoi(clean, noisy, dsp.SAMPLE_RATE), abs=0.03), snr


def test_every_loss_is_differentiable_and_named_once():
    torch.manual_seed(0)
    mask = torch.rand(2, 1, 257, 64, requires_grad=True)  # a patch: stoi needs 48 frames or more
    noisy, clean = torch.rand(2, 1, 257, 64) + 0.01, torch.rand(2, 1, 257, 64)
    phase = torch.rand(2, 1, 257, 64)
    for name, loss in LOSSES.items():
        assert loss.name == name
        value = loss(mask * noisy, clean, phase, noisy)
        value.backward()
        assert torch.isfinite(mask.grad).all(), name
        mask.grad = None
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss("perceptual")


def test_loss_options_change_the_weights_and_refuse_what_the_loss_does_not_have():
    torch.manual_seed(0)
    noisy = torch.rand(2, 1, 257, 64) + 0.1
    clean, phase = noisy * torch.rand_like(noisy), (torch.rand_like(noisy) - 0.5) * 2 * math.pi
    enhanced = noisy * torch.rand_like(noisy)
    cmag_asym, mask_asym, sisdr = (get_loss(n)(enhanced, clean, phase, noisy) for n in ("cmag_asym", "mask_asym", "sisdr"))
    weighted = get_loss("cmag_asym_sisdr", sisdr_weight=0.004)
    assert weighted(enhanced, clean, phase).item() == pytest.approx((cmag_asym + 0.004 * sisdr).item(), rel=1e-5)
    # over_suppression reaches the asymmetric parts of a sum: 1 makes cmag_asym cmag_mse.
    symmetric = get_loss("cmag_mask_asym_sisdr", over_suppression=1, mask_weight=2, sisdr_weight=0)
    expected = get_loss("cmag_mse")(enhanced, clean) + 2 * get_loss("mask_mse")(enhanced, clean, noisy=noisy)
    assert symmetric(enhanced, clean, phase, noisy).item() == pytest.approx(expected.item(), rel=1e-5)
    assert get_loss("cmag_asym_sisdr").options() == {"over_suppression": 4.0, "erb_weight": 0.0, "sisdr_weight": 1e-3}
    stoi = get_loss("stoi")(enhanced, clean)
    assert get_loss("cmag_asym_sisdr_stoi", stoi_weight=0.5, sisdr_weight=0.004)(enhanced, clean, phase).item() == (
        pytest.approx((cmag_asym + 0.004 * sisdr + 0.5 * stoi).item(), rel=1e-5))
    assert get_loss("cmag_asym_sisdr")(enhanced, clean, phase).item() == pytest.approx(
        (cmag_asym + 1e-3 * sisdr).item(), rel=1e-5)  # the registered loss is unchanged
    with pytest.raises(ValueError, match="cmag_mse loss has no option 'sisdr_weight'; it has: erb_weight"):
        get_loss("cmag_mse", sisdr_weight=0.01)
    with pytest.raises(ValueError, match="non-negative number, got -1"):
        get_loss("cmag_asym_sisdr", sisdr_weight=-1)
    with pytest.raises(ValueError, match="non-negative number, got 'high'"):
        get_loss("cmag_asym_sisdr", sisdr_weight="high")
