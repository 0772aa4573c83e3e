import math

import numpy as np
import pytest
import torch
from torch import nn

from speech_enhance.model import MaskCNN, build_model, load_model, save_model
from speech_enhance.model.net import (
    ARCHITECTURES,
    PITCH_QUEFRENCIES,
    cepstrum_matrix,
    complexity,
    input_gain,
    noise_floor,
    phase_advance,
    running_mean,
)
from speech_enhance.model.train import early_stopping_update
from speech_enhance.pipeline import dsp


def test_default_architecture_is_pinned():
    model = MaskCNN()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 32, (3, 3), (1, 1)), (32, 64, (3, 3), (1, 1)), (64, 64, (3, 3), (1, 1)),
        (64, 32, (3, 3), (1, 1)), (32, 1, (3, 3), (1, 1)),
    ]
    norms = [m for m in model.encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [n.num_features for n in norms] == [32, 64, 64, 32]
    assert sum(isinstance(m, nn.GELU) for m in model.modules()) == 4
    assert isinstance(model.head[-1], nn.Sigmoid)
    assert sum(p.numel() for p in model.parameters()) == 74_881
    assert not model.input_norm.affine  # the input normalisation adds no parameters


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("frames", [64, 1, 37, 200])
def test_any_number_of_frames_gives_a_mask_of_the_same_shape(arch, frames):
    model = build_model(arch).eval()
    x = torch.rand(2, 1, 257, frames)
    mask = model(x)
    assert mask.shape == x.shape
    assert mask.min() >= 0 and mask.max() <= 1


def test_widths_are_configurable():
    model = build_model("mask_cnn", [8, 16, 16, 8])
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == [8, 16, 16, 8, 1]
    with pytest.raises(ValueError):
        build_model("mask_cnn", [0, 4])
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("transformer")
    with pytest.raises(ValueError, match="takes no option"):
        build_model("mask_cnn", hidden=3)
    with pytest.raises(ValueError, match="crn bands must be"):
        build_model("crn", bands=100)  # four halvings need 16k + 1 bands


def test_crn_halves_frequency_once_per_width():
    """Three widths keep a 33-bin bottleneck (250 Hz apart) where four keep 17; the stream
    still equals the whole-input call, and widths that leave too few bands are refused."""
    torch.manual_seed(0)
    model = build_model("crn", [4, 8, 8], fullres=4, mean_norm_s=0.5).eval()
    assert model.rnn.input_size == 8 * 33
    assert build_model("crn").rnn.input_size == 32 * 17
    x = torch.rand(1, 1, 257, 30) + 0.01
    with torch.no_grad():
        first, state = model.stream(x[..., :11], None)
        rest, _ = model.stream(x[..., 11:], state)
        assert torch.allclose(torch.cat([first, rest], dim=-1), model(x), atol=1e-5)
    with pytest.raises(ValueError, match="crn takes 2 to 5 positive channel widths"):
        build_model("crn", [8])
    with pytest.raises(ValueError, match="crn bands must be 0 .* or 8k \\+ 1"):
        build_model("crn", [8, 8, 8], bands=13)  # 12 is no multiple of 2³


def test_band_crn_gain_is_smooth_above_2khz():
    """crn_erb's mask is its band gains interpolated: above 2 kHz each bin lies between its
    neighbours, so no single bin is cut out of a band."""
    torch.manual_seed(0)
    model = build_model("crn_erb").eval()
    with torch.no_grad():
        mask = model(torch.rand(1, 1, 257, 20) * 3)[0, 0]
    assert complexity(model)["macs_per_second"] < complexity(build_model("crn"))["macs_per_second"]
    step = mask[65:].diff(dim=0)
    assert step.abs().max() < mask[:65].diff(dim=0).abs().max()
    turns = (step[1:] * step[:-1] < 0).sum(dim=0)  # direction changes only at band centres
    assert int(turns.max()) <= 63


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_round_trips_through_its_model_file(tmp_path, arch):
    torch.manual_seed(0)
    model = build_model(arch, [8, 8, 8, 8] if arch != "unet" else [4, 8, 8, 8])
    model.train()
    model(torch.rand(4, 1, 257, 64) * 3)  # move the BatchNorm running statistics
    model.eval()
    path = tmp_path / "m.pth"
    save_model(path, model, epoch=3, val_loss=0.5)
    raw = torch.load(path, weights_only=True)  # no pickled code inside
    assert raw["model_config"] == {"arch": arch, **model.config()} and raw["sample_rate"] == 16000
    assert set(model.config()) == set(ARCHITECTURES[arch].DEFAULTS)  # every constructor argument
    loaded, meta = load_model(path)
    assert meta["epoch"] == 3 and meta["stft"] == {"n_fft": 512, "hop": 128, "window": "hann"}
    assert type(loaded) is type(model) and loaded.config() == model.config()
    x = torch.rand(2, 1, 257, 90)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(("arch", "options"), [(a, {}) for a in sorted(ARCHITECTURES)] + [("crn", {"lookahead": 2})])
def test_declared_context_is_what_the_network_sees(arch, options):
    """A change at frame 100 moves the mask exactly at the frames the architecture declares."""
    torch.manual_seed(0)
    model = build_model(arch, **options).eval()
    assert model.future_frames == options.get("lookahead", model.future_frames)
    x = torch.rand(1, 1, 257, 200) + 0.01
    changed = x.clone()
    changed[..., 100] *= 10
    with torch.no_grad():
        moved = (model(changed) - model(x)).abs().amax(dim=(0, 1, 2)) > 0
    frames = moved.nonzero().flatten().tolist()
    assert frames[0] == 100 - min(model.future_frames, 100)
    assert frames[-1] == (199 if math.isinf(model.past_frames) else 100 + model.past_frames)


@pytest.mark.parametrize(("mean_norm_s", "lookahead", "floor_s", "cepstrum", "layers", "fullres", "level_db"),
                         [(0.0, 0, 0.0, 0, 1, 0, 0.0), (0.5, 0, 0.0, 0, 1, 0, 0.0), (0.5, 3, 0.0, 0, 1, 0, 0.0),
                          (0.0, 0, 1.0, 0, 1, 0, 0.0), (0.5, 2, 1.0, 0, 1, 0, 0.0), (0.5, 2, 0.0, 1, 1, 0, 0.0),
                          (0.5, 1, 0.0, 0, 2, 0, 0.0), (0.5, 1, 0.0, 0, 1, 4, 0.0), (0.5, 1, 1.0, 0, 1, 4, -20.0)])
def test_the_crn_streams_chunk_by_chunk_as_it_runs_whole(mean_norm_s, lookahead, floor_s, cepstrum, layers,
                                                         fullres, level_db):
    """Streamed in 7-frame pieces, then flushed with ``lookahead`` silent frames, the masks
    come ``lookahead`` frames late and equal the whole-input call."""
    torch.manual_seed(0)
    model = build_model("crn", [8, 8, 8, 8], hidden=16, mean_norm_s=mean_norm_s, lookahead=lookahead,
                        floor_s=floor_s, cepstrum=cepstrum, layers=layers, fullres=fullres, level_db=level_db).eval()
    # A full-resolution layer's last frame, the running mean, and the noise floor's and the
    # input level's two sums each ride in the state.
    assert len(model.zero_state()) == 5 + bool(fullres) + bool(mean_norm_s) + 2 * bool(floor_s) + 2 * bool(level_db)
    x = torch.rand(2, 1, 257, 150)  # whole: three blocks of the running mean; -28 dBFS, raised by level_db -20
    _assert_streams_as_whole(model, x, lookahead)


@torch.no_grad()
def _assert_streams_as_whole(model: nn.Module, x: torch.Tensor, lookahead: int) -> torch.Tensor:
    """``model`` streamed over ``x`` in 7-frame pieces, then flushed with ``lookahead`` silent
    frames, gives the whole-input masks ``lookahead`` frames late; returns those masks."""
    whole, state, parts = model(x), None, []
    for start in range(0, x.shape[-1], 7):
        mask, state = model.stream(x[..., start:start + 7], state)
        parts.append(mask)
    if lookahead:
        parts.append(model.stream(torch.zeros(*x.shape[:3], lookahead), state)[0])
    streamed = torch.cat(parts, dim=-1)
    assert streamed.shape[-1] == x.shape[-1] + lookahead
    torch.testing.assert_close(streamed[..., lookahead:], whole, atol=1e-6, rtol=0)
    return whole


def test_phase_advance_is_still_at_a_harmonics_bin_and_a_quarter_turn_beside_it():
    """A 1250 Hz tone lies at bin 40's centre: its phase there advances as the bin's does
    (0 left over), and by a quarter turn less or more than bins 41 and 39 advance."""
    spec = dsp.stft(np.sin(2 * np.pi * 1250 * np.arange(16000) / 16000).astype(np.float32))
    phase = spec.angle()[None, None]
    advance, last = phase_advance(phase, None)
    inner = advance[0, 0, :, 5:-5]  # away from the reflect-padded ends
    for k, expected in ((39, math.pi / 2), (40, 0.0), (41, -math.pi / 2)):
        torch.testing.assert_close(torch.cos(inner[k]), torch.full_like(inner[k], math.cos(expected)), atol=1e-4,
                                   rtol=0)
        torch.testing.assert_close(torch.sin(inner[k]), torch.full_like(inner[k], math.sin(expected)), atol=1e-4,
                                   rtol=0)
    # Carried across calls: the second half's first advance starts from the first half's last phase.
    first, state = phase_advance(phase[..., :60], None)
    second, state = phase_advance(phase[..., 60:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=-1), advance)
    torch.testing.assert_close(state, last)


@pytest.mark.parametrize(("lookahead", "level_db"), [(0, 0.0), (2, -20.0)])
def test_a_crn_that_reads_the_phase_streams_as_it_runs_whole_and_uses_it(lookahead, level_db):
    torch.manual_seed(0)
    model = build_model("crn", [8, 8, 8, 8], hidden=16, mean_norm_s=0.5, fullres=4, lookahead=lookahead,
                        level_db=level_db, phase=1).eval()
    assert model.input_channels == 2
    assert len(model.zero_state()) == 5 + 1 + 1 + 2 * bool(level_db) + 1  # the last frame's phase
    x = torch.cat([torch.rand(2, 1, 257, 150), (torch.rand(2, 1, 257, 150) - 0.5) * 2 * math.pi], dim=1)
    whole = _assert_streams_as_whole(model, x, lookahead)
    with torch.no_grad():
        other_phase = model(torch.cat([x[:, :1], x[:, 1:].flip(-1)], dim=1))
    assert whole.shape == (2, 1, 257, 150) and (other_phase - whole).abs().max() > 1e-3
    for bad in (2, -1, 0.5, "on"):
        with pytest.raises(ValueError, match="phase"):
            build_model("crn", phase=bad)
    for arch, options in (("crn", {"bands": 129}), ("crn_erb", {})):
        with pytest.raises(ValueError, match="phase .* bands"):
            build_model(arch, phase=1, **options)


def test_the_post_filter_lowers_small_gains_and_leaves_a_full_one():
    from speech_enhance.model.net import check_post_filter, post_filter

    g = torch.tensor([0.0, 0.1, 0.5, 1.0])
    # Worked by hand: (1 + b) g / (1 + b / sin²(πg/2)); sin²(π/4) = 1/2, sin²(π/20) = 0.024472.
    expected = torch.tensor([0.0, 1.02 * 0.1 / (1 + 0.02 / 0.0244717), 1.02 * 0.5 / 1.04, 1.0])
    torch.testing.assert_close(post_filter(g, 0.02), expected, atol=1e-5, rtol=0)
    assert torch.equal(post_filter(g, 0.0), g)
    assert bool((post_filter(g, 0.1) <= post_filter(g, 0.02) + 1e-7).all())  # larger β, deeper
    for bad in (-0.1, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match="post_filter must be 0"):
            check_post_filter(bad)


def test_crn_lookahead_is_checked():
    for bad in (-1, 1.5, "two", True, 17):
        with pytest.raises(ValueError, match="lookahead"):
            build_model("crn", lookahead=bad)
    assert build_model("crn", lookahead=2.0).config()["lookahead"] == 2  # JSON may give 2.0


def test_running_mean_is_the_exponential_average_from_its_start():
    x = torch.tensor([1.0, 1.0, 1.0, 5.0]).reshape(1, 1, 1, 4)
    # m = 0.5 m + 0.5 x from 2: 1.5, 1.25, 1.125, 3.0625; in blocks of 3 or 1 frames alike
    for block in (3, 1, 64):
        m = running_mean(x, torch.full((1, 1, 1, 1), 2.0), 0.5, block=block)
        torch.testing.assert_close(m.flatten(), torch.tensor([1.5, 1.25, 1.125, 3.0625]))
    x, start, expected = torch.rand(2, 3, 150), torch.rand(2, 3, 1), []  # three blocks, the last one short
    m_t = start[..., 0]
    for t in range(150):
        m_t = 0.9 * m_t + 0.1 * x[..., t]
        expected.append(m_t)
    torch.testing.assert_close(running_mean(x, start, 0.9), torch.stack(expected, -1))
    with pytest.raises(ValueError, match="mean_norm_s"):
        build_model("crn", mean_norm_s=-1)


def test_input_gain_brings_the_running_level_to_the_target():
    # Frames of mean power 1, then 4; decay 0.5: the running level is 1, then (0.5·1 + 1·4) / 1.5 = 3.
    mag = torch.cat([torch.ones(1, 1, 5, 1), torch.full((1, 1, 5, 1), 2.0)], dim=-1)
    gain, (sums, weights) = input_gain(mag, None, 0.5, target=12.0)
    torch.testing.assert_close(gain.flatten(), torch.tensor([12.0 ** 0.5, 2.0]))
    torch.testing.assert_close(weights.flatten(), torch.tensor([0.75]))
    # Carried on: (0.5·2.25 + 0.5·1) / 0.875 = 1.8571, then (0.5·1.625 + 0.5·4) / 0.9375 = 3: lowered.
    gain, _ = input_gain(mag, [sums, weights], 0.5, target=1.5)
    torch.testing.assert_close(gain.flatten(), torch.tensor([(1.5 / 1.8571428) ** 0.5, 0.5 ** 0.5]))
    gain, _ = input_gain(torch.zeros(1, 1, 5, 3), None, 0.5, target=1.0)  # silence: the largest gain, 40 dB
    torch.testing.assert_close(gain.flatten(), torch.full((3,), 100.0))
    gain, _ = input_gain(torch.full((1, 1, 5, 2), 1e3), None, 0.5, target=1.0)  # 60 dB over: lowered by 40
    torch.testing.assert_close(gain.flatten(), torch.full((2,), 0.01))
    for bad in (3.0, float("nan"), "loud", True):
        with pytest.raises(ValueError, match="level_db"):
            build_model("crn", level_db=bad)


def test_level_db_makes_the_mask_independent_of_the_input_level():
    """Input 18 dB below the target, 38 dB below or 2 dB above gets the mask it would get at
    the target (features are log magnitudes floored at LOG_EPS, so without it a quiet one
    loses its quiet bins and a loud one is unlike the training mixtures)."""
    torch.manual_seed(0)
    plain = build_model("crn", [8, 8, 8, 8], hidden=16, mean_norm_s=0.5).eval()
    levelled = build_model("crn", [8, 8, 8, 8], hidden=16, mean_norm_s=0.5, level_db=-10.0).eval()
    levelled.load_state_dict(plain.state_dict())
    x = torch.rand(1, 1, 257, 120)  # about -28 dBFS
    with torch.no_grad():
        for gain in (0.1, 10.0):
            torch.testing.assert_close(levelled(x * gain), levelled(x), atol=1e-5, rtol=0)
            assert (plain(x * gain) - plain(x)).abs().max() > 0.01


def test_noise_floor_is_a_soft_minimum_that_stays_under_speech():
    # decay 0.5, softness 1, x = 0 then 2: the first frame is its own floor; then
    # -log((0.5·e^0 + 1·e^-2) / (0.5 + 1)) = 0.8590, below the running mean's 1.0.
    floor, (sums, weights) = noise_floor(torch.tensor([0.0, 2.0]).reshape(1, 1, 1, 2), None, 0.5, softness=1.0)
    torch.testing.assert_close(floor.flatten(), torch.tensor([0.0, 0.8590]), atol=1e-4, rtol=0)
    torch.testing.assert_close(weights.flatten(), torch.tensor([0.75]))
    # Steady noise at -1 for 2 s, then 160 ms of speech 3 units above it: the floor stays
    # within 0.2 of the noise while a running mean of the same time constant rises by 0.44.
    decay = math.exp(-1 / 125)  # 1 s
    x = torch.cat([torch.full((250,), -1.0), torch.full((20,), 2.0)]).reshape(1, 1, 1, -1)
    floor, _ = noise_floor(x, None, decay)
    torch.testing.assert_close(floor[..., :250], x[..., :250])
    assert floor[..., -1].item() < -0.8
    assert running_mean(x, torch.full((1, 1, 1, 1), -1.0), decay)[..., -1].item() > -0.6
    with pytest.raises(ValueError, match="floor_s"):
        build_model("crn", floor_s=float("nan"))


def test_the_cepstrum_peaks_at_the_pitch_period_of_a_harmonic_comb():
    matrix = cepstrum_matrix(*PITCH_QUEFRENCIES)
    assert matrix.shape == (217, 257)
    torch.testing.assert_close(matrix @ torch.full((257,), 3.0), torch.zeros(217), atol=1e-5, rtol=0)  # level: no lag
    # A log spectrum rippling every 5.12 bins (harmonics of 160 Hz): at lag 100 samples,
    # sqrt(2/256) · Σ_k w_k cos²(π k 100 / 256) = sqrt(2/256) · 128 = 8√2; near zero elsewhere.
    comb = torch.cos(2 * math.pi * torch.arange(257) * 100 / 512)
    lags = matrix @ comb
    assert lags.argmax().item() + PITCH_QUEFRENCIES[0] == 100
    torch.testing.assert_close(lags.max(), torch.tensor(8 * math.sqrt(2)), atol=1e-4, rtol=0)
    assert lags.abs().sort().values[-2] < 0.2
    for bad in (2, -1, 0.5, True, "yes"):
        with pytest.raises(ValueError, match="cepstrum"):
            build_model("crn", cepstrum=bad)


def test_crn_layers_stack_grus_and_are_counted():
    one, two = (build_model("crn", [8, 8, 8, 8], hidden=16, layers=n) for n in (1, 2))
    assert two.zero_state()[4].shape == (2, 1, 16)  # one hidden state per layer
    # The second layer: 3 gates × (16 inputs + 16 recurrent + 2 biases) × 16 parameters,
    # and 3 × 16 × (16 + 16) MACs on each of the 126 frames of a second.
    assert complexity(two)["parameters"] - complexity(one)["parameters"] == 3 * 34 * 16
    assert complexity(two)["macs_per_second"] - complexity(one)["macs_per_second"] == 126 * 3 * 16 * 32
    for bad in (0, -1, 1.5, True, "two"):
        with pytest.raises(ValueError, match="layers"):
            build_model("crn", layers=bad)


def test_crn_fullres_adds_a_level_that_keeps_every_bin():
    plain, full = (build_model("crn", [8, 8, 8, 8], hidden=16, mean_norm_s=0.5, fullres=n) for n in (0, 4))
    assert full.encoder[0].conv.stride == (1, 1) and full.encoder[1].conv.stride == (2, 1)
    x = torch.rand(1, 1, 257, 10)
    assert full(x).shape == plain(x).shape == x.shape
    # The new layer: conv 2 → 4 channels over 3 bins × 2 frames (+ bias) and BN (48 + 4 + 8);
    # the first halving layer then takes 4 channels, not 2 (2 × 8 × 6 more weights); the old
    # last level, conv 8 → 2 × 1 over 3 bins (48 + 2), now makes 2 × 4 channels (192 + 8)
    # with BN (8), and a last conv 4 → 1 over 3 bins (12 + 1) draws the mask.
    assert complexity(full)["parameters"] - complexity(plain)["parameters"] == 60 + 96 + 208 + 13 - 50
    for bad in (-1, 1.5, True, "eight"):
        with pytest.raises(ValueError, match="fullres"):
            build_model("crn", fullres=bad)


@pytest.mark.parametrize(("fullres", "lookahead"), [(0, 0), (4, 2)])
def test_crn_band_gru_runs_one_shared_gru_per_position_and_streams_as_it_runs_whole(fullres, lookahead):
    torch.manual_seed(0)
    plain = build_model("crn", [8, 8, 8, 8], hidden=16, mean_norm_s=0.5, fullres=fullres, lookahead=lookahead).eval()
    model = build_model("crn", [8, 8, 8, 8], hidden=16, mean_norm_s=0.5, fullres=fullres, lookahead=lookahead,
                        band_gru=6).eval()
    model.load_state_dict(plain.state_dict(), strict=False)
    x = torch.rand(2, 1, 257, 150)
    with torch.no_grad():  # its output starts at zero: the plain CRN's masks
        torch.testing.assert_close(model(x), plain(x))
        torch.nn.init.normal_(model.band_out.weight)
    # One GRU 8 → 6 (3 gates: 3·6·(8 + 6) weights, 2·3·6 biases) and its projection 6 → 8,
    # whatever the number of positions; its state is one row per position of the second halving.
    assert complexity(model)["parameters"] - complexity(plain)["parameters"] == 252 + 36 + 48 + 8
    state = model.zero_state(2)
    assert len(state) == len(plain.zero_state(2)) + 1 and state[-1].shape == (1, 2 * 65, 6)
    whole = _assert_streams_as_whole(model, x, lookahead)
    with torch.no_grad():
        assert (whole - plain(x)).abs().max() > 1e-3
    for bad in (-1, 1.5, True, "wide"):
        with pytest.raises(ValueError, match="band_gru"):
            build_model("crn", band_gru=bad)


def test_zero_state_leaves_a_training_network_as_it_was():
    model = build_model("crn", [8, 8, 8, 8], hidden=16, cepstrum=1).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert len(model.zero_state()) == 5 and model.training
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)


def test_default_architectures_fit_the_budget():
    """At most 1 M parameters for the networks meant to be trained by default."""
    for arch in ("crn", "crn_erb", "unet"):
        size = complexity(build_model(arch))
        assert size["parameters"] <= 1_000_000, (arch, size)
        assert 0 < size["macs_per_second"] < complexity(build_model("mask_cnn"))["macs_per_second"]


def test_loading_a_bad_file_names_it(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.pth"):
        load_model(bad)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_model(tmp_path / "missing.pth")


def test_early_stopping_stops_after_patience_epochs_of_plateau():
    state = {"best_val": math.inf, "bad_epochs": 0}
    losses = [1.0, 0.8, 0.7, 0.7, 0.75, 0.7, 0.9]
    stops = [early_stopping_update(state, v, patience=3) for v in losses]
    assert stops == [False, False, False, False, False, True, True]
    assert state["best_val"] == 0.7
    state = {"best_val": math.inf, "bad_epochs": 0}
    assert [early_stopping_update(state, v, 2) for v in [1.0, 0.9, 0.95, 0.8, 0.85, 0.85]] == [
        False, False, False, False, False, True]
