"""Dataset variety (pipeline/augment.py) and its plan and render, without Ray."""

import dataclasses
import hashlib
import json
import math

import numpy as np
import pytest
import soundfile as sf
from conftest import make_tiny_corpus
from scipy import signal

from speech_enhance.pipeline import augment, dataset, dsp
from speech_enhance.pipeline.plan import SPLITS, SourceFile, as_rows, plan_mixtures


def _response_db(sos: list[float], hz: float) -> float:
    _, h = signal.sosfreqz(np.reshape(sos, (-1, 6)), worN=[hz], fs=dsp.SAMPLE_RATE)
    return 20 * math.log10(abs(h[0]))


def test_biquads_have_their_textbook_responses():
    assert _response_db(augment.biquad("lowpass", 1000), 10) == pytest.approx(0, abs=0.01)
    assert _response_db(augment.biquad("lowpass", 1000), 1000) == pytest.approx(-3.01, abs=0.05)  # Q 0.707
    assert _response_db(augment.biquad("highpass", 200), 6000) == pytest.approx(0, abs=0.01)
    assert _response_db(augment.biquad("peaking", 2000, q=1, gain_db=6), 2000) == pytest.approx(6, abs=0.01)
    assert _response_db(augment.biquad("lowshelf", 300, gain_db=-9), 20) == pytest.approx(-9, abs=0.1)
    assert _response_db(augment.biquad("highshelf", 3000, gain_db=4), 7900) == pytest.approx(4, abs=0.1)
    with pytest.raises(ValueError, match="unknown biquad"):
        augment.biquad("notch", 100)


def test_coloured_noise_has_its_slope_and_is_reproducible():
    n = 16000 * 4
    for beta in (0.0, 1.0, 2.0):
        x = augment.coloured_noise(n, beta, seed=5)
        np.testing.assert_array_equal(x, augment.coloured_noise(n, beta, seed=5))
        assert math.sqrt(np.mean(x.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-4)
        f, p = signal.welch(x, fs=dsp.SAMPLE_RATE, nperseg=4096)
        band = (f > 100) & (f < 6000)
        slope = np.polyfit(np.log10(f[band]), 10 * np.log10(p[band]), 1)[0]
        assert slope == pytest.approx(-10 * beta, abs=1.0)  # dB per decade


def test_generated_noises_are_reproducible_and_have_their_character():
    n = 16000 * 4
    for kind, make in augment.GENERATORS.items():
        for seed in range(6):
            x = make(n, seed)
            np.testing.assert_array_equal(x, make(n, seed))
            assert x.dtype == np.float32 and len(x) == n and np.isfinite(x).all()
            assert math.sqrt(np.mean(x.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-3), kind
        assert not np.array_equal(make(n, 0), make(n, 1))
    # Shaped: a spectrum far from flat (white noise's 1/3-octave levels spread by ~1 dB).
    f, p = signal.welch(augment.shaped_noise(n, 3), fs=dsp.SAMPLE_RATE, nperseg=2048)
    levels = [10 * np.log10(p[(f >= lo) & (f < lo * 1.26)].mean()) for lo in np.geomspace(100, 6000, 18)]
    assert np.ptp(levels) > 10
    # Impulsive: energy in short bursts, so 10 ms frame energies are heavy-tailed (kurtosis ≫ 3).
    frames = augment.impulsive_noise(n, 2).reshape(-1, 160)
    energy = np.mean(frames.astype(np.float64) ** 2, axis=1)
    assert np.mean(energy**2) / np.mean(energy) ** 2 > 3
    # Tonal: a few spectral lines stand far above the median bin.
    f, p = signal.welch(augment.tonal_noise(n, 1), fs=dsp.SAMPLE_RATE, nperseg=4096)
    assert 10 * np.log10(p.max() / np.median(p)) > 20


def test_prepare_rir_starts_at_the_direct_path_and_rejects_silence():
    h = np.zeros(100, dtype=np.float32)
    h[10], h[30] = -0.5, 0.2
    out = augment.prepare_rir(h)
    assert out[0] == 1.0 and len(out) == 90 and out[20] == pytest.approx(-0.4)
    with pytest.raises(ValueError, match="silent"):
        augment.prepare_rir(np.zeros(10))


def test_reverberate_targets_dry_and_early():
    clean = np.random.default_rng(0).standard_normal(4000).astype(np.float32)
    h = np.zeros(2000, dtype=np.float32)
    h[0], h[400], h[1500] = 1.0, 0.5, 0.25  # direct, 25 ms and 94 ms reflections
    speech, dry = augment.reverberate(clean, h, "dry")
    assert dry is clean
    np.testing.assert_allclose(speech[1600:], clean[1600:] + 0.5 * clean[1200:-400] + 0.25 * clean[100:-1500],
                               atol=1e-5)
    _, early = augment.reverberate(clean, h, "early")
    np.testing.assert_allclose(early[400:], clean[400:] + 0.5 * clean[:-400], atol=1e-5)


def test_simulated_room_is_deterministic_and_decays():
    room = augment.draw_room(np.random.default_rng(3))
    h = augment.simulate_rir(room["room_dims"], room["rt60"], room["source_pos"], room["mic_pos"])
    np.testing.assert_array_equal(h, augment.simulate_rir(room["room_dims"], room["rt60"], room["source_pos"],
                                                          room["mic_pos"]))
    assert h[0] == 1.0 and np.abs(h).argmax() == 0
    tail = int(room["rt60"] * dsp.SAMPLE_RATE)
    assert np.abs(h[tail // 2:]).max() < 0.5 and len(h) > tail // 2


def _corpus(speakers=10, utts=2, noises=10):
    clean = [SourceFile(f"/c/s{s}/u{u}.wav", f"s{s}", 20_000 + 1000 * u) for s in range(speakers) for u in range(utts)]
    noise = [SourceFile(f"/n/t{n}/n{n}.wav", f"t{n}", 50_000) for n in range(noises)]
    rirs = [SourceFile(f"/r/r{n}.wav", "r", 8000) for n in range(6)]
    return clean, noise, rirs


FULL = augment.Variety(rir=0.3, rooms=0.3, target="dry", mic_eq=0.5, clip=0.2, noise_transforms=0.5,
                       synthetic_noise=0.4, speech_gaps=0.5, noise_speed=0.6)


def _peak_hz(x: np.ndarray) -> float:
    return float(np.fft.rfftfreq(len(x), 1 / dsp.SAMPLE_RATE)[np.abs(np.fft.rfft(x)).argmax()])


@pytest.mark.parametrize("speed", [0.5, 0.8, 1.5, 2.0])
def test_a_speed_change_moves_pitch_and_tempo_together(speed):
    t = np.arange(32_000) / dsp.SAMPLE_RATE
    tone = np.sin(2 * math.pi * 1000 * t).astype(np.float32)
    out = augment.change_speed(tone, speed)
    assert out.dtype == np.float32
    assert len(out) == pytest.approx(len(tone) / speed, abs=2)
    assert _peak_hz(out) == pytest.approx(1000 * speed, rel=0.01)
    np.testing.assert_array_equal(out, augment.change_speed(tone, speed))


def test_noise_speed_is_drawn_last_for_recorded_train_noise_only():
    clean, noise, rirs = _corpus()
    kw = dict(snr_range=(-5.0, 20.0), mixtures_per_clean=3, rirs=rirs)
    without = as_rows(plan_mixtures(clean, noise, [0.0], (0.8, 0.1, 0.1), seed=1,
                                    variety=dataclasses.replace(FULL, noise_speed=0.0), **kw)[0])
    rows = as_rows(plan_mixtures(clean, noise, [0.0], (0.8, 0.1, 0.1), seed=1, variety=FULL, **kw)[0])
    assert [{**r, "noise_speed": 1.0} for r in rows] == without  # a build without it is unchanged
    sped = [r for r in rows if r["noise_speed"] != 1.0]
    assert sped and all(r["split"] == "train" and r["noise_kind"] == "file" for r in sped)
    recorded = [r for r in rows if r["split"] == "train" and r["noise_kind"] == "file"]
    assert 0.4 < len(sped) / len(recorded) < 0.8
    assert all(augment.SPEED_RANGE[0] <= r["noise_speed"] <= augment.SPEED_RANGE[1] for r in sped)
    assert min(r["noise_speed"] for r in sped) < 0.8 and max(r["noise_speed"] for r in sped) > 1.25
    assert "noise_speed" not in dataclasses.replace(FULL, noise_speed=0.0).to_dict()


def test_a_sped_noise_is_the_recording_resampled_and_an_old_row_renders_as_before():
    t = np.arange(40_000) / dsp.SAMPLE_RATE
    recording = np.sin(2 * math.pi * 500 * t).astype(np.float32)
    row = {**augment.empty_fields(), "noise_path": "n.wav", "noise_offset": 20_000}
    n = 16_000

    def segment(**fields):
        return augment.noise_segment({**row, **fields}, n, lambda path: recording, None)

    plain = segment()
    np.testing.assert_array_equal(plain, recording[20_000:36_000])
    old = {k: v for k, v in row.items() if k != "noise_speed"}  # a manifest written before the option
    np.testing.assert_array_equal(augment.noise_segment(old, n, lambda path: recording, None), plain)
    for speed in (0.5, 2.0):  # the offset, drawn for n samples, is clamped when more are read
        sped = segment(noise_speed=speed)
        assert len(sped) == n and sped.dtype == np.float32
        assert _peak_hz(sped) == pytest.approx(500 * speed, rel=0.01)


def test_speech_gaps_silence_their_spans_with_fades():
    clean = np.ones(16000, dtype=np.float32)
    out = augment.cut_gaps(clean, [4000, 6000, 5000, 9000, 15900, 16000])
    assert clean.min() == 1  # the cached input is not touched
    assert (out[4000:9000] == 0).all() and (out[15900:] == 0).all()
    fade = augment.GAP_FADE
    assert (out[:4000 - fade] == 1).all() and (out[9000 + fade:15900 - fade] == 1).all()
    assert (np.diff(out[4000 - fade:4000]) <= 0).all() and (np.diff(out[9000:9000 + fade]) >= 0).all()
    assert 0 < out[4000 - fade // 2] < 1
    assert augment.cut_gaps(clean, []) is clean
    rng = np.random.default_rng(0)
    for n in (160_000, 48_000, 1_000):
        gaps = augment.draw_gaps(rng, n)
        starts, stops = np.array(gaps[::2]), np.array(gaps[1::2])
        assert (0 <= starts).all() and (stops <= n).all()
        lengths = stops - starts
        assert augment.GAP_COVER[0] * n <= lengths.sum() <= augment.GAP_COVER[1] * n
        assert (lengths[:-1] >= 0.2 * 16000).all() and (lengths <= 1.5 * 16000).all()
    assert augment.draw_gaps(np.random.default_rng(5), 80_000) == augment.draw_gaps(np.random.default_rng(5), 80_000)


def test_speech_gaps_are_drawn_last_and_for_train_only():
    clean, noise, rirs = _corpus()
    kw = dict(snr_range=(-5.0, 20.0), mixtures_per_clean=3, rirs=rirs)
    gaps = dataclasses.replace(FULL, noise_speed=0.0)  # the draw after the gaps would move with them
    without = as_rows(plan_mixtures(clean, noise, [0.0], (0.8, 0.1, 0.1), seed=1,
                                    variety=dataclasses.replace(gaps, speech_gaps=0.0), **kw)[0])
    rows = as_rows(plan_mixtures(clean, noise, [0.0], (0.8, 0.1, 0.1), seed=1, variety=gaps, **kw)[0])
    # Every other draw is what a build without gaps makes, so such a build is unchanged.
    assert [{**r, "speech_gaps": []} for r in rows] == without
    gapped = [r for r in rows if r["speech_gaps"]]
    assert gapped and all(r["split"] == "train" for r in gapped)
    assert 0.3 < len(gapped) / sum(r["split"] == "train" for r in rows) < 0.7
    assert "speech_gaps" not in dataclasses.replace(FULL, speech_gaps=0.0).to_dict()


def test_plan_with_variety_draws_per_mixture_and_keeps_made_up_noise_in_train():
    clean, noise, rirs = _corpus()
    kw = dict(snr_range=(-5.0, 20.0), mixtures_per_clean=3, variety=FULL, rirs=rirs)
    mixtures, assignment, _ = plan_mixtures(clean, noise, [0.0], (0.8, 0.1, 0.1), seed=1, **kw)
    again, _, _ = plan_mixtures(clean, noise, [0.0], (0.8, 0.1, 0.1), seed=1, **kw)
    assert as_rows(mixtures) == as_rows(again)
    rows = as_rows(mixtures)
    assert len(rows) == 3 * len(clean)
    assert all(set(augment.empty_fields()) <= set(r) for r in rows)
    assert all(-5 <= r["snr_db"] <= 20 for r in rows) and len({r["snr_db"] for r in rows}) == len(rows)
    for split in SPLITS:
        rows_split = [r for r in rows if r["split"] == split]
        assert {r["noise_path"] for r in rows_split} <= set(assignment["noise"][split])
        assert {r["rir_path"] for r in rows_split if r["rir_kind"] == "file"} <= set(assignment["rir"][split])
    kinds = {r["noise_kind"] for r in rows if r["split"] == "train"}
    assert kinds == set(augment.NOISE_KINDS)
    assert all(r["noise_kind"] == "file" and not r["noise_sos"] and not r["noise2_path"]
               for r in rows if r["split"] != "train")
    speakers = {s: set(assignment["speakers"][s]) for s in SPLITS}
    for r in rows:
        if r["noise_kind"] == "babble":
            talkers = {p.split("/")[2] for p in r["babble_paths"]}
            assert talkers <= speakers["train"] and r["speaker"] not in talkers
            assert r["noise_type"] == "babble"
    assert {r["rir_kind"] for r in rows} == {"", "file", "room"}


def test_plain_plan_is_unchanged_by_the_variety_code():
    clean, noise, _ = _corpus()
    rows = as_rows(plan_mixtures(clean, noise, [5.0, 0.0], (0.8, 0.1, 0.1), seed=2, noises_per_clean=2)[0])
    assert "noise_kind" not in rows[0]
    # The digest of the same plan made by the planner before variety existed.
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
    assert digest == "dba700aa1f8ab3d505475b9cae0135f450c71109289df10299fb9f4349b12938"


@pytest.fixture(scope="module")
def varied_rows(tmp_path_factory):
    root = tmp_path_factory.mktemp("varied")
    clean_dir, noise_dir = make_tiny_corpus(root, speakers=4, noises=3)
    rir = root / "rir" / "room.wav"
    rir.parent.mkdir()
    h = np.zeros(4800, dtype=np.float32)
    h[30], h[900], h[3000] = 0.8, 0.3, 0.1
    sf.write(rir, h, 48000)  # another rate: resampled on load
    from speech_enhance.pipeline import audio

    clean = [SourceFile(str(p), p.parent.name, len(audio.load_clean(p))) for p in sorted(clean_dir.rglob("*.*"))]
    noise = [SourceFile(str(p), p.parent.name, len(audio.load_audio(p))) for p in sorted(noise_dir.rglob("*.wav"))]
    rirs = [SourceFile(str(rir), "room", len(audio.load_audio(rir)))]
    mixtures, _, _ = plan_mixtures(clean, noise, [0.0], (0.6, 0.2, 0.2), seed=0, split_noise=False,
                                   snr_range=(-5.0, 20.0), mixtures_per_clean=6, variety=FULL, rirs=rirs)
    return as_rows(mixtures)


def test_varied_mixtures_hit_their_snr_and_re_render_bit_for_bit(varied_rows):
    seen = set()
    for row in varied_rows:
        mix = dataset.render_row(row)
        again = dataset.render_row(dict(row))
        for a, b in ((mix.noisy, again.noisy), (mix.clean, again.clean), (mix.noise, again.noise)):
            np.testing.assert_array_equal(a, b)
        assert mix.measured_snr_db == pytest.approx(row["snr_db"], abs=0.1)
        assert np.isfinite(mix.noisy).all() and np.abs(mix.noisy).max() <= dsp.PEAK_CEILING
        if not row["rir_kind"]:  # the target is the speech in the mixture
            full = mix.clean + mix.noise
            if row["clip_level"]:
                ceiling = np.float32(row["clip_level"] * float(np.abs(full).max()))
                assert np.abs(mix.noisy).max() == ceiling
                full = np.clip(full, -ceiling, ceiling)
            np.testing.assert_array_equal(mix.noisy, full)
        if row["speech_gaps"] and not row["rir_kind"] and not row["mic_sos"]:  # silent in its gaps (no filter tail)
            start, stop = row["speech_gaps"][:2]
            assert (mix.clean[start:stop] == 0).all()
            np.testing.assert_array_equal(mix.noisy[start:stop], mix.noise[start:stop])
            seen.add("gaps")
        if row["noise_speed"] != 1.0:
            seen.add("speed")
        seen |= {row["noise_kind"], row["rir_kind"]}
    assert seen >= {*augment.NOISE_KINDS, "room", "", "gaps", "speed"}


def test_a_silent_rir_file_is_refused_with_a_reason(tmp_path):
    bad = tmp_path / "bad.wav"
    sf.write(bad, np.zeros(1000, dtype=np.float32), 16000)
    from speech_enhance.pipeline import audio

    with pytest.raises(audio.AudioError, match="silent"):
        dataset.load_rir(str(bad))
