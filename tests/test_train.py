"""Ray Train runs on a tiny dataset (each TorchTrainer run costs ~30 s of Ray overhead)."""

import csv
import json
import math
import shutil

import pytest
import torch

from speech_enhance.model import load_model
from speech_enhance.model.evaluate import choose_strength
from speech_enhance.model.train import BEST_MODEL, TrainConfig, TrainError, train

pytestmark = pytest.mark.timeout(400)


def _history(run):
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def test_two_workers_train_survive_a_killed_worker_and_write_outputs(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    marker = tmp_path / "crashed"
    cfg = TrainConfig(data=str(tiny_dataset), out=str(run), epochs=3, workers=2, batch_size=4,
                      fault_injection={"epoch": 2, "rank": 1, "marker": str(marker)})
    results = train(cfg, log=lambda *_: None)
    assert marker.exists()  # rank 1 really died during epoch 2 ...
    history = _history(run)
    assert [int(h["epoch"]) for h in history] == [1, 2, 3]  # ... and training went on from epoch 1's checkpoint
    val = [float(h["val_loss"]) for h in history]
    assert val[-1] < val[0]
    for name in (BEST_MODEL, "history.csv", "loss_curve.png", "config.json", "results.json"):
        assert (run / name).exists(), name
    model, meta = load_model(run / BEST_MODEL)
    assert meta["val_loss"] == pytest.approx(min(val))
    # enhance's default strength, chosen on the validation split and saved with the model
    choice = meta["strength_choice"]
    assert meta["strength"] == results["strength"]["strength"] == choose_strength(
        {float(s): d for s, d in choice["stoi_delta"].items()}, {float(s): e for s, e in choice["stoi_delta_se"].items()})
    assert meta["strength_choice"]["mixtures"] > 0
    assert results["test_loss"] > 0 and results["val_loss_identity_mask"] > results["best_val_loss"]
    assert json.loads((run / "config.json").read_text())["workers"] == 2
    assert model(torch.rand(1, 1, 257, 10)).shape == (1, 1, 257, 10)


def test_interrupted_run_resumes_at_next_epoch_with_optimizer_state(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    cfg = TrainConfig(data=str(tiny_dataset), out=str(run), epochs=3, workers=1, batch_size=4, ema=0.9,
                      fault_injection={"epoch": 2, "rank": 0, "marker": str(tmp_path / "m"), "max_failures": 0})
    with pytest.raises(TrainError, match="training failed"):
        train(cfg, log=lambda *_: None)  # dies during epoch 2: only epoch 1 is checkpointed
    first = sorted(p for p in (run / "ray").glob("checkpoint_*") if p.is_dir())
    assert len(first) == 1
    steps_after_epoch_1 = torch.load(first[0] / "state.pt", weights_only=True)["train_state"]["history"][0]
    cfg.fault_injection = None
    train(cfg, log=lambda *_: None)  # the same command again
    history = _history(run)
    assert [int(h["epoch"]) for h in history] == [1, 2, 3]
    latest = sorted(p for p in (run / "ray").glob("checkpoint_*") if p.is_dir())[-1]
    rows = torch.load(latest / "state.pt", weights_only=True)["train_state"]["history"]
    # epoch 2 started from the optimizer state saved after epoch 1, not from scratch
    steps_per_epoch = rows[1]["adam_steps_at_start"] - steps_after_epoch_1["adam_steps_at_start"]
    assert rows[1]["adam_steps_at_start"] > 0 and steps_per_epoch > 0
    assert rows[2]["adam_steps_at_start"] - rows[1]["adam_steps_at_start"] == steps_per_epoch
    # the weights' moving average went on from its checkpoint too: one update per step
    states = [torch.load(p / "state.pt", weights_only=True)
              for p in (run / "ray").glob("checkpoint_*") if p.is_dir()]
    final = max(states, key=lambda st: len(st["train_state"]["history"]))
    assert final["ema_steps"] == rows[2]["adam_steps_at_start"] + steps_per_epoch
    # the model file holds the average of its checkpoint, not the last weights
    model, meta = load_model(run / BEST_MODEL)
    best = next(st for st in states if st["train_state"]["history"][-1]["val_loss"] == meta["val_loss"])
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, best["ema"][name])
    assert any(not torch.equal(best["ema"][k], best["model"][k]) for k in best["model"])
    # a different model config in the same folder is refused
    with pytest.raises(TrainError, match="different config"):
        train(TrainConfig(data=str(tiny_dataset), out=str(run), widths=[8, 8, 8, 8]), log=lambda *_: None)


def test_ema_model_averages_the_weights_and_batchnorm_statistics():
    from speech_enhance.model import build_model
    from speech_enhance.model.train import ema_model

    assert ema_model(build_model("crn"), 0.0) is None
    model = build_model("crn", [8, 8, 8, 8], hidden=16)
    ema = ema_model(model, 0.5)
    start = model.rnn.weight_hh_l0.detach().clone()
    ema.update_parameters(model)  # the first update copies
    with torch.no_grad():
        model.rnn.weight_hh_l0.add_(1.0)
    model.train()
    model(torch.rand(2, 1, 257, 10))  # moves the input norm's running mean from 0
    ema.update_parameters(model)
    torch.testing.assert_close(ema.module.rnn.weight_hh_l0, start + 0.5)
    torch.testing.assert_close(ema.module.input_norm.running_mean, model.input_norm.running_mean / 2)


def test_bf16_on_a_cpu_without_it_is_warned_of_and_nowhere_else():
    from speech_enhance.model.train import cpu_has_bf16, precision_warning

    amd = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx2 avx512f\n"
    assert cpu_has_bf16(amd) is False
    assert cpu_has_bf16("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n") is True
    assert cpu_has_bf16("Features\t: fp asimd sve bf16 i8mm\n") is True  # Arm
    assert cpu_has_bf16("processor\t: 0\n") is None  # no flags line: cannot tell
    assert "leave it out" in precision_warning("bf16", use_gpu=False, has_bf16=False)
    assert precision_warning("bf16", use_gpu=False, has_bf16=True) is None
    assert precision_warning("bf16", use_gpu=True, has_bf16=False) is None
    assert precision_warning("bf16", use_gpu=False, has_bf16=None) is None
    assert precision_warning("auto", use_gpu=False, has_bf16=False) is None


@pytest.mark.parametrize("arch, loss, limit", [
    ("unet", "cmag_mse", ["--workers", "2", "--sequence", "2"]),
    ("crn", "cmag_mse_sisdr", ["--epochs", "3", "--time-limit", "1e-4", "--workers", "2", "--precision", "bf16",
                               "--compile"]),
    ("crn", "cmag_mse", ["--model-option", "phase=1"])])
def test_each_new_architecture_trains_an_epoch_through_the_cli_with_its_default_widths(
        tiny_dataset, tmp_path, arch, loss, limit):
    """(The CRN's run also stops at its --time-limit: after the first epoch of three. The
    U-Net's trains on pairs of patches with two workers, whose shards then hold different
    numbers of pairs: both must stop together at the end of the epoch, or DDP hangs. The
    CRN's also trains compiled under DDP in bf16 on the CPU, and its model file must load.
    A CRN that reads the phase gets it from the dataset though its loss does not need it.)"""
    from speech_enhance.cli import main
    from speech_enhance.model.net import ARCHITECTURES

    run = tmp_path / arch
    assert main(["train", "--data", str(tiny_dataset), "--out", str(run), "--arch", arch, "--loss", loss,
                 "--epochs", "1", "--batch-size", "4", *limit]) == 0
    history = _history(run)
    assert len(history) == 1 and float(history[0]["patches_per_s"]) > 0 and float(history[0]["val_loss"]) > 0
    model, meta = load_model(run / BEST_MODEL)
    phase = {"phase": 1} if "phase=1" in limit else {}
    assert meta["model_config"] == {"arch": arch, **ARCHITECTURES[arch].DEFAULTS, **phase}
    results = json.loads((run / "results.json").read_text())
    assert results["loss"] == loss and results["model_size"]["parameters"] == sum(
        p.numel() for p in model.parameters())
    config = json.loads((run / "config.json").read_text())
    assert config["model_size"]["macs_per_second"] > 0
    assert (config["precision"], config["compile"]) == (("bf16", True) if "--compile" in limit else ("auto", False))


def test_an_empty_validation_split_is_refused_before_training_starts(tiny_dataset, tmp_path, capsys):
    from speech_enhance.cli import main

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    for path in (data / "val").glob("*.parquet"):
        path.unlink()
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "'val' split empty" in err and str(data / "val") in err
    assert not (tmp_path / "run" / "config.json").exists()  # nothing was started


def test_a_training_step_that_turns_the_loss_nan_ends_the_pass_at_the_next_check():
    from speech_enhance.model import build_model
    from speech_enhance.model.train import CHECK_STEPS, _run_epoch

    torch.manual_seed(0)
    model = build_model("mask_cnn", [4, 4, 4, 4])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e30)  # one step makes the weights overflow
    served = []

    def batches():
        for _ in range(5 * CHECK_STEPS):
            noisy = torch.rand(2, 1, 257, 64)
            served.append(1)
            yield noisy, noisy / 2

    loss_sum, patches = _run_epoch(model, batches(), torch.device("cpu"), optimizer)
    assert math.isnan(loss_sum)
    assert len(served) == CHECK_STEPS and patches == 2 * CHECK_STEPS  # not the other 32 batches


def test_a_run_whose_loss_turns_nan_stops_with_a_clear_error_instead_of_exporting_it(tiny_dataset, tmp_path):
    from speech_enhance.model.train import TrainDiverged

    run = tmp_path / "run"
    cfg = TrainConfig(data=str(tiny_dataset), out=str(run), epochs=3, workers=1, batch_size=4, lr=1e30)
    with pytest.raises(TrainDiverged, match=r"training loss became NaN or infinite in epoch 1.*lower --lr"):
        train(cfg, log=lambda *_: None)
    assert not (run / BEST_MODEL).exists() and not (run / "history.csv").exists()
    assert not [p for p in (run / "ray").glob("checkpoint_*") if p.is_dir()]
