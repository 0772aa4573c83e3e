"""Shared storage: the README's cluster commands against a local S3 server (moto).

build writes the dataset to s3://, train's workers read it from there and train keeps its
checkpoints and outputs in s3://, the best model loads back from its URI, and a small
search keeps its experiment, trials and results in s3:// too."""

import pytest

from speech_enhance.cli import main
from speech_enhance.model import load_model
from speech_enhance.pipeline import storage

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_build_and_train_on_s3(ray_session, s3_server, tiny_corpus):
    clean, noise = tiny_corpus
    data, run = f"{s3_server}/data", f"{s3_server}/runs/r1"
    address = ray_session.get_runtime_context().gcs_address
    assert main(["build", "--clean", str(clean), "--noise", str(noise), "--out", data, "--snr", "0",
                 "--address", address]) == 0
    info = storage.read_json(f"{data}/dataset.json")
    assert info["complete"]
    for split in ("train", "val", "test"):
        files = storage.list_files(f"{data}/{split}", ".parquet")
        assert files and sum(size for _, size in files) == info["splits"][split]["bytes"]
    assert main(["build", "--clean", str(clean), "--noise", str(noise), "--out", data, "--snr", "0"]) == 0  # no-op

    assert main(["train", "--data", data, "--out", run, "--epochs", "2", "--batch-size", "4",
                 "--address", address]) == 0
    for name in ("cnn_enhancer_best.pth", "history.csv", "loss_curve.png", "config.json", "results.json"):
        assert storage.is_file(f"{run}/{name}"), name
    checkpoints = [p for p, _ in storage.list_files(f"{run}/ray", "state.pt", recursive=True)]
    assert checkpoints and all(p.startswith(f"{run}/ray/checkpoint_") for p in checkpoints)
    model, meta = load_model(f"{run}/cnn_enhancer_best.pth")
    results = storage.read_json(f"{run}/results.json")
    assert meta["val_loss"] == pytest.approx(results["best_val_loss"])
    assert results["epochs_run"] == 2

    search = f"{s3_server}/tune1"
    assert main(["tune", "--data", data, "--out", search, "--samples", "2", "--epochs", "1",
                 "--address", address]) == 0
    for name in ("trials.csv", "best_config.json", "best/cnn_enhancer_best.pth", "trials.png"):
        assert storage.is_file(f"{search}/{name}"), name
    assert len(storage.read_text(f"{search}/trials.csv").strip().splitlines()) == 3
    best = storage.read_json(f"{search}/best_config.json")
    model, meta = load_model(f"{search}/best/cnn_enhancer_best.pth")
    assert meta["model_config"]["widths"] == best["config"]["widths"]
