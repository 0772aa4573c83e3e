"""evaluate: the report on a tiny dataset, and how the mask limit is chosen."""

import json
import math

import pytest
import torch

from speech_enhance.model import build_model, metrics, save_model
from speech_enhance.model.evaluate import (
    LIMITED_STRENGTH,
    METHODS,
    choose_strength,
    evaluate,
    paired_differences,
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
