"""The search space, and an end-to-end search that is killed and resumed."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from speech_enhance.tune.space import load_space, train_settings


def test_space_file_replaces_default_and_maps_to_train_settings(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("lr: {type: loguniform, low: 0.001, high: 0.01}\nwidth1: {type: choice, values: [4, 8]}\n")
    assert set(load_space(path)) == {"lr", "width1"}
    bad = tmp_path / "bad.json"
    bad.write_text('{"lr": {"type": "normal"}}')
    with pytest.raises(ValueError, match="needs type"):
        load_space(bad)
    params = {"lr": 0.01, "width1": 8, "width2": 16, "width3": 16, "width4": 8,
              "use_step_lr": False, "step_size": 3, "gamma": 0.5}
    assert train_settings(params) == {"lr": 0.01, "widths": [8, 16, 16, 8]}
    assert train_settings({**params, "use_step_lr": True})["step_size"] == 3


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the search exited early with {proc.returncode}")
        if time.time() > deadline:
            raise AssertionError("timed out waiting for the search")
        time.sleep(1)


def _finished_trials(out: Path) -> dict[str, float]:
    """trial id -> val loss of the trials that Tune's saved experiment state lists as finished."""
    finished = {}
    for state in (out / "ray").glob("experiment_state-*.json"):
        try:
            trials = json.loads(state.read_text())["trial_data"]
        except (json.JSONDecodeError, KeyError):
            continue  # being written
        for meta, runtime in trials:
            meta, runtime = json.loads(meta), json.loads(runtime)
            if meta.get("status") == "TERMINATED":
                finished[meta["trial_id"]] = runtime["last_result"]["val_loss"]
    return finished


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_search_killed_midway_resumes_without_repeating_trials(ray_session, tiny_dataset, tmp_path, monkeypatch):
    """Three 1-epoch trials, one at a time on 2 CPUs (no Ray Data starvation). The CLI
    is killed (SIGKILL) once the first trial has finished; re-running the same command
    keeps that trial and completes the search."""
    from speech_enhance.model import load_model

    out = tmp_path / "search"
    address = ray_session.get_runtime_context().gcs_address
    command = [sys.executable, "-m", "speech_enhance.cli", "tune", "--data", str(tiny_dataset), "--out", str(out),
               "--samples", "3", "--epochs", "1", "--address", address]
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # Killed as soon as Tune's saved state records the first trial as finished.
        _wait_for(lambda: _finished_trials(out), 400, first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert not (out / "trials.csv").exists()
    (finished_id, finished_val), = _finished_trials(out).items()
    trial_dir = out / "trials" / f"trial_{finished_id}"
    files_before = {p: p.stat().st_mtime_ns for p in trial_dir.rglob("*") if p.is_file()}

    subprocess.run(command, check=True, stdout=(tmp_path / "second.log").open("w"), stderr=subprocess.STDOUT,
                   timeout=600)
    # the finished trial was not run again: its run folder is untouched
    assert {p: p.stat().st_mtime_ns for p in trial_dir.rglob("*") if p.is_file()} == files_before
    with (out / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and {r["status"] for r in rows} == {"completed"}
    assert float(next(r for r in rows if r["trial_id"] == f"trial_{finished_id}")["best_val_loss"]) == finished_val
    assert len({(r["lr"], r["width1"], r["width2"], r["width3"], r["width4"]) for r in rows}) == 3
    assert b"optuna" in next((out / "ray").glob("searcher-state-*.pkl")).read_bytes()
    best = json.loads((out / "best_config.json").read_text())
    lowest = min(rows, key=lambda r: float(r["best_val_loss"]))
    assert best["trial_id"] == lowest["trial_id"]
    assert best["config"]["lr"] == pytest.approx(float(lowest["lr"]))
    model, meta = load_model(out / "best" / "cnn_enhancer_best.pth")
    assert meta["model_config"]["widths"] == [int(lowest[f"width{i}"]) for i in range(1, 5)] == best["config"]["widths"]
    assert meta["val_loss"] == pytest.approx(float(lowest["best_val_loss"]))
    # the best model carries its default strength, chosen on the validation split
    assert meta["strength_choice"]["mixtures"] > 0 and meta["strength"] == meta["strength_choice"]["strength"]
    assert Path(out / "trials.png").stat().st_size > 0
    _retrain_uses_best_config(out / "best_config.json", best["config"], tiny_dataset, tmp_path, monkeypatch)


def _retrain_uses_best_config(path, expected: dict, data, tmp_path, monkeypatch) -> None:
    """`train --config best_config.json` trains with the search's best settings
    (flags given on the command line still win)."""
    import speech_enhance.model.train
    from speech_enhance.cli import main

    seen = []
    monkeypatch.setattr(speech_enhance.model.train, "train", lambda cfg, **kw: seen.append(cfg))
    assert main(["train", "--config", str(path), "--data", str(data), "--out", str(tmp_path / "re"),
                 "--epochs", "1"]) == 0
    cfg = seen[0]
    assert cfg.widths == expected["widths"] and cfg.lr == pytest.approx(expected["lr"])
    assert cfg.epochs == 1 and cfg.data == str(data)


@pytest.mark.parametrize(("cpus", "gpus", "workers", "gpus_per_trial", "expected"), [
    (2, 0, 1, 0, (1, 1.0, 2)),    # one trial at a time; one CPU stays free for Ray Data
    (2, 0, 2, 0, (1, 0.5, 1)),
    (16, 0, 1, 0, (15, 1.0, 1)),
    (16, 4, 1, 1, (4, 1.0, 4)),   # GPUs bound the concurrency
])
def test_trials_leave_a_cpu_for_ray_data(cpus, gpus, workers, gpus_per_trial, expected):
    from speech_enhance.tune.search import TuneConfig, plan_concurrency

    cfg = TuneConfig(data="d", out="o", samples=20, workers_per_trial=workers, gpus_per_trial=gpus_per_trial)
    concurrent, worker_cpus, threads = plan_concurrency(cfg, cpus, gpus)
    assert (concurrent, worker_cpus, threads) == expected
    if not gpus_per_trial:
        assert concurrent * workers * worker_cpus <= cpus - 1
    with pytest.raises(ValueError, match="GPU"):
        plan_concurrency(TuneConfig(data="d", out="o", gpus_per_trial=1), cpus, 0)


def test_search_refuses_to_start_without_rays_state_api(ray_session, monkeypatch):
    """Without the state API, trials that Tune stops keep their resources and the
    search hangs (speech_enhance.tune.search.require_state_api): it must fail at once instead."""
    import ray.util.state
    from ray.util.state.exception import ServerUnavailable

    from speech_enhance.tune.search import TuneError, require_state_api

    require_state_api()  # the suite's Ray runs its dashboard

    def unavailable(*args, **kwargs):
        raise ServerUnavailable("Failed to connect to API server.")

    monkeypatch.setattr(ray.util.state, "list_actors", unavailable)
    with pytest.raises(TuneError, match="dashboard"):
        require_state_api(wait_s=0)


def test_trial_status_tells_a_diverged_trial_from_one_asha_stopped():
    import pandas as pd

    from speech_enhance.tune.search import trial_status

    def rows(*epochs):
        return pd.DataFrame([{"epoch": e, "val_loss": v, "stopped": s, "diverged": d} for e, v, s, d in epochs])

    assert trial_status(rows((1, 0.5, False, False), (2, 0.4, False, False)), False, 4) == "stopped by ASHA"
    assert trial_status(rows((1, 0.5, False, False), (2, float("inf"), True, True)), False, 4) == "diverged"
    assert trial_status(rows((1, 0.5, False, False), (2, 0.6, True, False)), False, 4) == "early-stopped"
    assert trial_status(rows((1, 0.5, False, False), (2, 0.4, False, False)), False, 2) == "completed"
    assert trial_status(rows((1, 0.5, False, False)), True, 2) == "error"
    assert trial_status(None, False, 2) == "stopped by ASHA"  # no report at all
