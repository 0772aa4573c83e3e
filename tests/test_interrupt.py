"""Ctrl-C (SIGINT) on the `build` and `train` commands: nothing that looks complete is
left behind, and running the command again finishes the job."""

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.dataset as pads
import pytest

from speech_enhance.model.train import BEST_MODEL
from speech_enhance.pipeline import dataset

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "speech_enhance.cli", *args]


def _as_from_a_terminal() -> None:
    """In the child before exec: SIGINT at its default and unblocked, as in a shell's
    foreground job (the test process may have inherited it ignored or blocked)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _interrupt_when(command: list[str], ready, log_path, env=None, timeout: float = 300) -> int:  # noqa: ANN001
    """Run ``command``, send it SIGINT (as Ctrl-C does) once ``ready()`` holds; its exit code."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                preexec_fn=_as_from_a_terminal)
        deadline = time.time() + timeout
        while not ready():
            assert proc.poll() is None, f"finished before it could be interrupted: {log_path}"
            assert time.time() < deadline, f"timed out: {log_path}"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        return proc.wait(timeout=120)


def test_interrupted_build_never_looks_complete_and_rebuilds(ray_session, tiny_corpus, tmp_path):
    clean, noise = tiny_corpus
    out = tmp_path / "data"
    args = ["build", "--clean", str(clean), "--noise", str(noise), "--out", str(out), "--snr", "5", "-5",
            "--rows-per-file", "2", "--address", ray_session.get_runtime_context().gcs_address]
    slow = {"SPEECH_ENHANCE_FAULT_INJECTION": json.dumps({"delay_s": 3.0})}  # ~25 s of file jobs
    code = _interrupt_when(_cli(*args), lambda: any(out.glob("*/part-*.parquet")), tmp_path / "build1.log", slow)
    assert code != 0
    with pytest.raises(dataset.DatasetError, match="did not finish"):
        dataset.read_dataset_info(out)
    assert subprocess.run(_cli(*args), capture_output=True).returncode == 1  # refused without --overwrite
    subprocess.run(_cli(*args, "--overwrite"), check=True, capture_output=True)
    info = dataset.read_dataset_info(out)
    for split in ("train", "val", "test"):
        table = pads.dataset(str(out / split), format="parquet").to_table(columns=["mixture_id", "patch_index"])
        assert table.num_rows == info["splits"][split]["patches"]
        assert len(set(zip(*table.to_pydict().values(), strict=True))) == table.num_rows  # no duplicated patch rows


def test_interrupted_training_resumes(ray_session, tiny_dataset, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--data", str(tiny_dataset), "--out", str(run), "--epochs", "3", "--batch-size", "4",
            "--address", ray_session.get_runtime_context().gcs_address]
    # Interrupted once Ray Train has recorded epoch 1's checkpoint in its run state.
    _interrupt_when(_cli(*args), lambda: (run / "ray" / "checkpoint_manager_snapshot.json").exists(),
                    tmp_path / "train1.log")
    assert not (run / BEST_MODEL).exists() and not (run / "results.json").exists()
    done = subprocess.run(_cli(*args), check=True, capture_output=True, text=True)
    history = (run / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2", "3"]
    assert (run / BEST_MODEL).exists()
    # the second run started after the interrupted one's checkpoint, not at epoch 1
    assert "epoch   1" not in done.stdout + done.stderr
