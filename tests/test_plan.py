import pytest

from speech_enhance.pipeline.plan import SPLITS, SourceFile, allot, plan_mixtures


def _corpus(speakers=10, utts=3, noises=10):
    clean = [SourceFile(f"/c/s{s}/u{u}.wav", f"s{s}", 20_000 + 1000 * u) for s in range(speakers) for u in range(utts)]
    noise = [SourceFile(f"/n/t{n}/n{n}.wav", f"t{n}", 50_000) for n in range(noises)]
    return clean, noise


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 33])
def test_allot_partitions_units(n):
    units = [f"u{i}" for i in range(n)]
    out = allot(units, (0.8, 0.1, 0.1), seed=0, salt=1)
    assigned = [u for s in SPLITS for u in out[s]]
    assert sorted(assigned) == sorted(units)
    if n >= 3:
        assert all(out[s] for s in SPLITS)
    assert len(out["train"]) >= len(out["val"])


def test_split_by_speaker_and_noise_file_without_leakage():
    clean, noise = _corpus()
    mixtures, assignment, warnings = plan_mixtures(clean, noise, [10, 0], (0.8, 0.1, 0.1), seed=3)
    assert not warnings
    speakers = {s: {m.speaker for m in mixtures if m.split == s} for s in SPLITS}
    noises = {s: {m.noise_path for m in mixtures if m.split == s} for s in SPLITS}
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not speakers[a] & speakers[b]
                assert not noises[a] & noises[b]
    assert len(speakers["train"]) == 8 and len(speakers["test"]) == 1
    # the full product: every utterance × every split noise × every SNR
    assert len([m for m in mixtures if m.split == "train"]) == 8 * 3 * 8 * 2


def test_shared_noise_and_sampling_k_noises():
    clean, noise = _corpus()
    mixtures, _, _ = plan_mixtures(clean, noise, [5], (0.8, 0.1, 0.1), 0, noises_per_clean=2, split_noise=False)
    assert len(mixtures) == 30 * 2
    assert {m.noise_path for m in mixtures if m.split == "test"} <= {n.path for n in noise}


def test_eval_only_split():
    clean, noise = _corpus(speakers=3)
    mixtures, _, warnings = plan_mixtures(clean, noise, [0], (0, 0, 1), 0)
    assert {m.split for m in mixtures} == {"test"} and not warnings


def test_tiny_corpus_warns_about_empty_split():
    clean, noise = _corpus(speakers=2, noises=1)
    mixtures, _, warnings = plan_mixtures(clean, noise, [0], (0.8, 0.1, 0.1), 0)
    assert any("no speaker" in w for w in warnings)
    assert any("shares all noise" in w for w in warnings)
    assert mixtures


def test_plan_is_deterministic_and_seed_dependent():
    clean, noise = _corpus()
    a, _, _ = plan_mixtures(clean, noise, [10, 5, 0, -5], (0.8, 0.1, 0.1), seed=1)
    b, _, _ = plan_mixtures(list(reversed(clean)), list(reversed(noise)), [10, 5, 0, -5], (0.8, 0.1, 0.1), seed=1)
    c, _, _ = plan_mixtures(clean, noise, [10, 5, 0, -5], (0.8, 0.1, 0.1), seed=2)
    assert a == b
    assert [m.noise_offset for m in a] != [m.noise_offset for m in c]
    assert [m.mixture_id for m in a] == list(range(len(a)))
    assert all(0 <= m.noise_offset <= 50_000 - m.n_samples for m in a)


def test_final_fit_trains_on_validation_noise_and_keeps_test_noise_unseen():
    clean, noise = _corpus()
    plain, plain_assignment, _ = plan_mixtures(clean, noise, [0], (0.8, 0.1, 0.1), 0, snr_range=(-5, 15),
                                               mixtures_per_clean=4)
    fit, assignment, _ = plan_mixtures(clean, noise, [0], (0.8, 0.1, 0.1), 0, snr_range=(-5, 15),
                                       mixtures_per_clean=4, train_on_val_noise=True)
    split = plain_assignment["noise"]
    assert assignment["noise"]["train"] == sorted(split["train"] + split["val"])
    assert assignment["noise"]["test"] == split["test"] and assignment["speakers"] == plain_assignment["speakers"]
    train_noise = {m.noise_path for m in fit if m.split == "train"}
    assert set(split["val"]) <= train_noise and not train_noise & set(split["test"])
    # Validation and test mixtures are the plain build's, row for row.
    assert [m for m in fit if m.split != "train"] == [m for m in plain if m.split != "train"]


def test_final_fit_of_a_corpus_too_small_for_a_validation_noise_keeps_test_noise_out():
    clean, noise = _corpus(noises=2)  # validation gets no file of its own and shares all
    _, plain, warnings = plan_mixtures(clean, noise, [0], (0.45, 0.1, 0.45), 0)
    _, fit, _ = plan_mixtures(clean, noise, [0], (0.45, 0.1, 0.45), 0, train_on_val_noise=True)
    assert any("shares all noise" in w for w in warnings) and plain["noise"]["val"] == sorted(n.path for n in noise)
    assert fit["noise"]["train"] == plain["noise"]["train"] and not set(fit["noise"]["train"]) & set(plain["noise"]["test"])
