"""evaluate: the report on a tiny dataset, and how the mask limit is chosen."""

import json
import math

import pytest
import torch

from speech_enhance.model import build_model, metrics, save_model
from speech_enhance.model.data import local_batches
from speech_enhance.model.evaluate import (
    LIMITED_STRENGTH,
    METHODS,
    choose_strength,
    evaluate,
    paired_differences,
    patch_l1,
    strength_for_evaluation,
)
from speech_enhance.pipeline.dataset import load_manifest


def test_choose_strength_takes_the_least_limiting_strength_that_keeps_stoi():
    assert choose_strength({1.0: -0.05, 0.9: -0.01, 0.8: 0.0, 0.7: 0.01}) == 0.8
    assert choose_strength({1.0: 0.02, 0.8: 0.03}) == 1.0  # no limit needed
    assert choose_strength({1.0: -0.05, 0.8: -0.01, 0.6: -0.02}) == 0.8  # none keeps STOI: the least loss


def test_choose_strength_wants_a_margin_of_one_standard_error():
    mean = {1.0: -0.05, 0.8: 0.002, 0.7: 0.006, 0.6: 0.012}
    assert choose_strength(mean, {1.0: 0.01, 0.8: 0.004, 0.7: 0.004, 0.6: 0.004}) == 0.7
    assert choose_strength(mean, {1.0: 0.01, 0.8: 0.004, 0.7: 0.008, 0.6: 0.02}) == 0.6  # none clear: least loss


def _row(mixture_id: str, pesq: float, stoi: float, si_sdr: float, rnnoise_stoi: float = 0.5) -> dict:
    return {"mixture_id": mixture_id, "model.pesq": pesq, "model.stoi": stoi, "model.si_sdr": si_sdr,
            "rnnoise.pesq": 1.0, "rnnoise.stoi": rnnoise_stoi, "rnnoise.si_sdr": 0.0}


def test_paired_differences_match_mixtures_by_id_and_give_a_standard_error():
    base = [_row("a", 1.0, 0.5, 0.0), _row("b", 2.0, 0.6, 5.0), _row("gone", 9.0, 0.9, 9.0)]
    other = [_row("b", 2.5, 0.6, 6.0), _row("a", 1.1, 0.7, 2.0), _row("new", 0.0, 0.0, 0.0)]
    diff = paired_differences(other, base)
    assert diff["pesq"]["n"] == 2 and diff["pesq"]["mean"] == pytest.approx(0.3)  # (0.1 + 0.5) / 2
    assert diff["pesq"]["se"] == pytest.approx(0.2)  # std of (0.1, 0.5) is 0.2828; / sqrt(2)
    assert diff["stoi"]["mean"] == pytest.approx(0.1) and diff["si_sdr"]["mean"] == pytest.approx(1.5)
    within = paired_differences(base, base, base_method="rnnoise")  # the model against RNNoise, same mixtures
    assert within["stoi"]["mean"] == pytest.approx((0.0 + 0.1 + 0.4) / 3)
    with pytest.raises(ValueError, match="share no mixture"):
        paired_differences([_row("x", 1, 1, 1)], base)


def test_evaluation_uses_the_strength_saved_in_the_model_file(tmp_path):
    choice = {"strength": 0.7, "split": "val", "mixtures": 5, "stoi_delta": {"1.0": -0.02, "0.7": 0.01}}
    used = strength_for_evaluation(None, {"strength": 0.7, "strength_choice": choice}, str(tmp_path))
    assert used == {**choice, "source": "model file"}  # taken as saved: no dataset read, no model run


def test_patch_l1_gives_a_network_that_reads_the_phase_the_patches_phase(tiny_dataset):
    torch.manual_seed(0)
    model = build_model("crn", [8, 8, 8, 8], hidden=16, phase=1).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for noisy, clean, phase in local_batches(tiny_dataset, "val", with_phase=True):
            total += float((model(torch.cat([noisy, phase], dim=1)) * noisy - clean).abs().sum())
            count += clean.numel()
    assert count and patch_l1(tiny_dataset, "val", model) == pytest.approx(total / count, rel=1e-5)


def test_evaluation_without_a_saved_strength_or_validation_split_falls_back(tmp_path, monkeypatch):
    monkeypatch.setattr("speech_enhance.model.evaluate.load_manifest", lambda _: [{"split": "test"}])
    used = strength_for_evaluation(None, {}, str(tmp_path))
    assert used["strength"] == LIMITED_STRENGTH and used["source"] == "default"


@pytest.mark.timeout(300)
def test_evaluate_writes_report_with_every_method_and_a_validation_chosen_limit(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    model = build_model("mask_cnn", [8, 8, 8, 8])
    model.train()
    model(torch.rand(2, 1, 257, 64) * 5)  # non-trivial BatchNorm statistics
    save_model(tmp_path / "model.pth", model.eval(), epoch=1, val_loss=0.1)
    out = tmp_path / "report"
    report = evaluate(str(tiny_dataset), str(tmp_path / "model.pth"), str(out), samples=1, log=lambda *_: None)

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["evaluated_mixtures"] == saved["test_mixtures"] == len(saved["per_mixture"]) > 0
    assert set(saved["overall"]) == {"n", *METHODS}
    cal = saved["limited_strength"]
    assert cal["source"] == "validation split"  # the model file carries no strength
    assert cal["mixtures"] > 0 and len(cal["stoi_delta"]) == len(cal["stoi_delta_se"]) == 6
    assert cal["strength"] == choose_strength({float(s): d for s, d in cal["stoi_delta"].items()},
                                              {float(s): e for s, e in cal["stoi_delta_se"].items()})
    # The noisy input's SI-SDR is the mixing SNR (clean and noise are uncorrelated).
    for snr, row in report["per_snr"].items():
        assert row["noisy"]["si_sdr"] == pytest.approx(float(snr), abs=1.5)
    assert report["overall"]["noisy"]["stoi_delta"] == 0.0
    text = (out / "report.md").read_text()
    assert "chosen here as" in text and "validation mixtures" in text and "Per SNR" in text
    assert "At its default strength the model is ahead of every baseline on" in text
    if metrics.rnnoise_available():  # the open-source denoiser people already use, in every report
        assert math.isfinite(report["overall"]["rnnoise"]["stoi"]) and "| RNNoise |" in text
        gap = sum(r["model_limited.stoi"] - r["rnnoise.stoi"] for r in saved["per_mixture"]) / len(saved["per_mixture"])
        assert f"- Model minus RNNoise, mixture by mixture at strength {cal['strength']}" in text
        assert f"STOI {gap:+.3f} ± " in text  # paired with the same mixtures' RNNoise scores
    else:
        assert "RNNoise: not run" in text
    sample = report["samples"][0]
    for kind in ("noisy", "enhanced", "clean", "figure"):
        assert (out / sample[kind]).is_file()


@pytest.mark.timeout(300)
def test_evaluate_scores_the_validation_split_when_asked(tiny_dataset, tmp_path):
    model = build_model("mask_cnn", [8, 8, 8, 8]).eval()
    save_model(tmp_path / "model.pth", model, epoch=1, val_loss=0.1, strength=1.0)
    report = evaluate(str(tiny_dataset), str(tmp_path / "model.pth"), str(tmp_path / "report"), max_mixtures=2,
                      samples=0, log=lambda *_: None, split="val")
    manifest = load_manifest(str(tiny_dataset))
    val_ids = {int(r["mixture_id"]) for r in manifest if r["split"] == "val"}
    assert report["split"] == "val" and report["test_mixtures"] == len(val_ids)
    assert {r["mixture_id"] for r in report["per_mixture"]} <= val_ids
    assert "validation mixtures, enhanced whole" in (tmp_path / "report" / "report.md").read_text()
    with pytest.raises(ValueError, match="--split must be test or val"):
        evaluate(str(tiny_dataset), str(tmp_path / "model.pth"), str(tmp_path / "r2"), split="train")


def _write_pairs(tiny_dataset, root):
    """Noisy and clean folders from the tiny dataset's test mixtures: one pair at 48 kHz
    with the DNS Challenge's names, two in a noise-type folder, a noisy file without a
    partner and an unreadable pair. Returns the SNRs the pairs were mixed at, by file."""
    import soundfile as sf

    from speech_enhance.pipeline.audio import resample
    from speech_enhance.pipeline.dataset import render_row

    rows = [r for r in load_manifest(str(tiny_dataset)) if r["split"] == "test"][:3]
    assert len(rows) == 3
    snrs = {}
    for i, row in enumerate(rows):
        mix = render_row(row)
        if i == 0:
            names, rate = ("book_07_snr5_fileid_7.wav", "clean_fileid_7.wav"), 48000
            noisy, clean = resample(mix.noisy, 16000, rate), resample(mix.clean, 16000, rate)
        else:
            names, rate, noisy, clean = (f"cafe/u{i}.wav",) * 2, 16000, mix.noisy, mix.clean
        for side, name, signal in (("noisy", names[0], noisy), ("clean", names[1], clean)):
            (root / side / name).parent.mkdir(parents=True, exist_ok=True)
            sf.write(root / side / name, signal, rate)
        snrs[names[0]] = float(row["snr_db"])
    (root / "noisy" / "alone.wav").write_bytes((root / "noisy" / "cafe" / "u1.wav").read_bytes())
    for side in ("noisy", "clean"):
        (root / side / "broken.wav").write_bytes(b"RIFF, but no audio")
    return snrs


def test_pair_files_matches_by_path_or_fileid_and_lists_the_rest(tmp_path):
    from speech_enhance.model.evaluate import pair_files

    for path in ("noisy/a.wav", "clean/a.wav", "noisy/x/b.wav", "clean/x/b.wav", "noisy/n_fileid_3.wav",
                 "clean/clean_fileid_3.wav", "noisy/lost.wav", "noisy/m_fileid_4.wav", "clean/c_fileid_4.wav",
                 "clean/d_fileid_4.wav"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(b"")
    pairs, unpaired = pair_files(tmp_path / "noisy", tmp_path / "clean")
    found = {p["file"]: (p["clean_path"], p["noise_type"]) for p in pairs}
    assert found == {"a.wav": (str(tmp_path / "clean/a.wav"), "all"),
                     "x/b.wav": (str(tmp_path / "clean/x/b.wav"), "x"),
                     "n_fileid_3.wav": (str(tmp_path / "clean/clean_fileid_3.wav"), "all")}
    # no partner, or two clean files with the same fileid: listed, not guessed
    assert sorted(u["file"] for u in unpaired) == ["lost.wav", "m_fileid_4.wav"]
    assert "no clean partner" in unpaired[0]["error"] and str(tmp_path / "noisy") in unpaired[0]["error"]
    with pytest.raises(FileNotFoundError, match="--clean .*: no such folder"):
        pair_files(tmp_path / "noisy", tmp_path / "nothing")


def test_a_pair_of_other_lengths_is_refused_and_its_snr_is_estimated(tmp_path):
    import numpy as np
    import soundfile as sf

    from speech_enhance.model.evaluate import estimated_snr_db, load_pair
    from speech_enhance.pipeline.audio import AudioError

    rng = np.random.default_rng(0)
    clean, noise = rng.standard_normal(16000) * 0.1, rng.standard_normal(16000) * 0.01
    assert estimated_snr_db(clean + noise, clean) == pytest.approx(20.0, abs=0.2)
    sf.write(tmp_path / "n.wav", (clean + noise)[:12000], 16000)
    sf.write(tmp_path / "c.wav", clean, 16000)
    with pytest.raises(AudioError, match=r"n.wav: 0.750 s long, its clean file .*c.wav 1.000 s"):
        load_pair({"noisy_path": str(tmp_path / "n.wav"), "clean_path": str(tmp_path / "c.wav")})


@pytest.mark.timeout(300)
def test_evaluate_scores_folders_of_recordings_and_skips_what_it_cannot_pair_or_read(tiny_dataset, tmp_path):
    from speech_enhance.cli import main

    snrs = _write_pairs(tiny_dataset, tmp_path / "rec")
    net = build_model("mask_cnn", [8, 8, 8, 8]).eval()
    net.post_filter = 0.05  # saved with the model, said in the report
    save_model(tmp_path / "model.pth", net, epoch=1, val_loss=0.1, strength=0.9)
    out = tmp_path / "report"
    assert main(["evaluate", "--noisy", str(tmp_path / "rec" / "noisy"), "--clean", str(tmp_path / "rec" / "clean"),
                 "--model", str(tmp_path / "model.pth"), "--out", str(out), "--samples", "1"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["split"] == "pairs" and report["test_mixtures"] == 4 and report["evaluated_mixtures"] == 3
    assert report["limited_strength"]["strength"] == 0.9  # the model file's
    scored = {r["file"]: r for r in report["per_mixture"]}
    assert set(scored) == set(snrs)
    for name, snr in snrs.items():  # estimated from each pair; the 48 kHz one lost the noise above 7.6 kHz
        assert scored[name]["snr_db"] == pytest.approx(snr, abs=0.5 if "fileid" in name else 0.01)
        assert all(math.isfinite(scored[name][f"{m}.stoi"]) for m in ("noisy", "model", "wiener"))
    assert set(report["per_noise_type"]) == {"all", "cafe"}
    assert sorted(s["file"] for s in report["skipped"]) == ["alone.wav", "broken.wav"]
    text = (out / "report.md").read_text()
    assert "3 of 4 file pairs" in text and "Skipped (2)" in text and "unreadable audio" in text
    assert "post-filter 0.05)" in text
    assert "Per folder" in text and "Patch loss" not in text
    assert (out / report["samples"][0]["enhanced"]).is_file()
