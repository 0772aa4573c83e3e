"""Bad input as a new user gives it: a one-line error naming the option or file, before Ray."""

import re

import numpy as np
import pytest
import soundfile as sf
import torch

from speech_enhance.cli import main
from speech_enhance.model import build_model, save_model
from speech_enhance.model.config import TrainConfig


def _one_line_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err
    return err


@pytest.mark.parametrize("flags, words", [
    (["--lr", "-1"], ["--lr", "-1"]),
    (["--epochs", "0"], ["--epochs"]),
    (["--arch", "unet", "--widths", "8,8"], ["--widths", "unet"]),
    (["--gamma", "2"], ["--gamma"]),
    (["--ema", "1"], ["--ema", "[0, 1)"]),
    (["--sequence", "3"], ["--batch-size", "multiple of --sequence"]),  # batch 16 of 3-patch examples
    (["--loss", "mag_l1", "--loss-option", "sisdr_weight=0.01"], ["--loss-option", "sisdr_weight", "none"]),
    (["--loss", "cmag_asym_sisdr", "--loss-option", "sisdr_weight=-1"], ["--loss-option", "non-negative"]),
])
def test_bad_training_options_fail_before_ray_and_say_which(tmp_path, capsys, flags, words):
    import ray

    started = ray.is_initialized()
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"), *flags]) == 1
    err = _one_line_error(capsys, *words)
    assert "re-run" not in err  # a configuration error is not resumable
    assert ray.is_initialized() == started  # no Ray was started for it


def test_a_config_file_with_an_unknown_precision_is_refused_by_name():
    with pytest.raises(ValueError, match="--precision must be auto, bf16 or fp32, got 'fp16'"):
        TrainConfig("d", "o", precision="fp16").validated()
    with pytest.raises(ValueError, match="--compile must be left out with --precision bf16 for --arch unet"):
        TrainConfig("d", "o", arch="unet", precision="bf16", compile=True).validated()
    assert TrainConfig("d", "o", arch="crn", precision="bf16", compile=True).validated().compile


def test_each_architecture_trains_with_its_own_default_widths():
    assert TrainConfig("d", "o", arch="unet").validated().widths == list(build_model("unet").widths)
    assert TrainConfig("d", "o").validated().widths == [32, 64, 64, 32]  # the seed's


@pytest.mark.parametrize("split", [["0.5", "0.5", "0.5"], ["1.2", "-0.1", "-0.1"], ["0", "0", "0"]])
def test_build_refuses_split_fractions_that_are_not_a_partition(tmp_path, capsys, split):
    (tmp_path / "speech").mkdir()
    (tmp_path / "noise").mkdir()
    assert main(["build", "--clean", str(tmp_path / "speech"), "--noise", str(tmp_path / "noise"),
                 "--out", str(tmp_path / "data"), "--split", *split]) == 1
    _one_line_error(capsys, "--split", "sum to 1")


@pytest.mark.parametrize("flag", ["--noise-speed", "--speech-gaps", "--synthetic-noise"])
def test_build_refuses_a_variety_fraction_outside_0_1(tmp_path, capsys, flag):
    (tmp_path / "speech").mkdir()
    (tmp_path / "noise").mkdir()
    assert main(["build", "--clean", str(tmp_path / "speech"), "--noise", str(tmp_path / "noise"),
                 "--out", str(tmp_path / "data"), flag, "1.5"]) == 1
    _one_line_error(capsys, flag, "[0, 1]", "1.5")


def test_build_refuses_a_final_fit_without_split_noise(tmp_path, capsys):
    (tmp_path / "speech").mkdir()
    (tmp_path / "noise").mkdir()
    assert main(["build", "--clean", str(tmp_path / "speech"), "--noise", str(tmp_path / "noise"),
                 "--out", str(tmp_path / "data"), "--train-on-val-noise", "--no-split-noise"]) == 1
    _one_line_error(capsys, "--train-on-val-noise", "--no-split-noise")


@pytest.fixture()
def model_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "model.pth"
    save_model(path, build_model("mask_cnn", [4, 4, 4, 4]).eval())
    return path


@pytest.mark.parametrize("samples", [1, 80, 300])  # one sample, 5 ms, under one STFT window
def test_enhance_handles_files_shorter_than_a_window(tmp_path, model_file, samples):
    src = tmp_path / "short.wav"
    sf.write(src, (0.1 * np.random.default_rng(0).standard_normal(samples)).astype(np.float32), 16000)
    assert main(["enhance", str(src), "--model", str(model_file), "--out", str(tmp_path / "out")]) == 0
    out, rate = sf.read(tmp_path / "out" / "short.wav")
    assert rate == 16000 and len(out) == samples


def test_enhance_out_naming_a_file_is_refused(tmp_path, model_file, capsys):
    src = tmp_path / "a.wav"
    sf.write(src, np.zeros(16000, np.float32), 16000)
    (tmp_path / "taken").write_text("not a folder")
    assert main(["enhance", str(src), "--model", str(model_file), "--out", str(tmp_path / "taken")]) == 1
    _one_line_error(capsys, "--out", "is a file")


def test_a_file_that_is_not_a_model_gets_one_line(tmp_path, capsys):
    src = tmp_path / "a.wav"
    sf.write(src, np.zeros(16000, np.float32), 16000)
    bogus = tmp_path / "random.bin"
    bogus.write_bytes(np.random.default_rng(0).bytes(4096))
    assert main(["enhance", str(src), "--model", str(bogus), "--out", str(tmp_path / "out")]) == 1
    _one_line_error(capsys, "random.bin", "not a speech-enhance model")


@pytest.mark.parametrize("args, message", [
    (["--data", "d", "--noisy", "n", "--clean", "c"], "either --data .* or --noisy and --clean .*, not both"),
    ([], r"either --data .* or --noisy and --clean \(folders of recordings\)$"),
    (["--noisy", "n"], "--clean is missing"),
    (["--noisy", "n", "--clean", "c", "--split", "val"], "--split picks a build's split"),
])
def test_evaluate_takes_a_build_or_two_folders_of_recordings(tmp_path, capsys, args, message):
    assert main(["evaluate", "--model", "m", "--out", str(tmp_path / "r"), *args]) == 1
    assert re.search(message, capsys.readouterr().err)
