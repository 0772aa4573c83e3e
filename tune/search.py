"""Hyperparameter search: Ray Tune + Optuna (TPE) + ASHA over Ray Train trials.

Each Tune trial runs a driver function that calls :func:`speech_enhance.model.train.train` unchanged:
it builds its own ``TorchTrainer`` and hands the per-epoch metrics to Tune through
``TuneReportCallback`` (the Train V2 pattern, not ``Tuner(trainer)``). ASHA stops poor
trials on the per-epoch validation loss; early stopping inside a trial still applies.
Re-running the same command restores the experiment from ``TUNE_DIR/ray`` and finishes
it without repeating finished trials.
"""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
import time
from pathlib import Path

import ray
import ray.util.state
import torch
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch
from ray.util.state.exception import RayStateApiException

from speech_enhance.model.net import load_model
from speech_enhance.model.train import (
    BEST_MODEL,
    TrainConfig,
    TrainDiverged,
    save_checkpoint_model,
    save_with_default_strength,
    train,
)
from speech_enhance.pipeline import storage
from speech_enhance.pipeline.cluster import init_ray
from speech_enhance.pipeline.dataset import read_dataset_info
from speech_enhance.tune.config import TuneConfig
from speech_enhance.tune.space import load_space, to_tune, train_settings

EXPERIMENT = "ray"


def run_trial(params: dict) -> None:
    """Tune trainable: one Ray Train run with the sampled parameters."""
    fixed = params["_fixed"]
    trial_dir = storage.join(fixed["out"], "trials", tune.get_context().get_trial_name())
    cfg = TrainConfig(
        data=fixed["data"], out=trial_dir, epochs=fixed["epochs"], workers=fixed["workers"],
        gpu="yes" if fixed["gpus"] else "no", seed=fixed["seed"], torch_threads=fixed["torch_threads"],
        cpus_per_worker=fixed["cpus_per_worker"],
        **train_settings({k: v for k, v in params.items() if k != "_fixed"}),
    )
    # The default strength is chosen for the search's best model only (_export_best_model).
    try:
        train(cfg, callbacks=[TuneReportCallback()], log=lambda *_: None, choose_strength=False)
    except TrainDiverged:
        pass  # a trial like any other, whose last report says so: retrying it would diverge again


def plan_concurrency(cfg: TuneConfig, cpus: float, gpus: float) -> tuple[int, float, int]:
    """(concurrent trials, CPUs each training worker reserves, torch threads per worker).

    A trial's driver function only waits on its TorchTrainer, so the trial itself
    reserves no CPU; its training workers reserve theirs in Train's own placement group.
    One CPU is always left unreserved, for Ray's own actors and other work on the
    cluster (training reads its data in its workers, so trials do not need it). Trials
    never ask for more than exists."""
    workers = cfg.workers_per_trial
    spare = max(cpus - 1, 0.25 * workers)
    worker_cpus = 1.0 if cfg.gpus_per_trial else max(0.25, min(1.0, spare / workers))
    fit = max(1, int(spare // (worker_cpus * workers)))
    if cfg.gpus_per_trial:
        if gpus < cfg.gpus_per_trial * workers:
            raise ValueError(f"--gpus-per-trial {cfg.gpus_per_trial}, but the cluster has {gpus:g} GPU(s)")
        fit = min(fit, int(gpus // (cfg.gpus_per_trial * workers)))
    concurrent = min(fit, cfg.max_concurrent or fit, cfg.samples)
    threads = max(1, int(cpus // (concurrent * workers)))
    return concurrent, worker_cpus, threads


class TuneError(RuntimeError):
    pass


def require_state_api(wait_s: float = 30.0) -> None:
    """Fail fast where Ray's state API is missing (it is served by the dashboard, which
    ``ray[default]`` installs and ``ray start`` runs unless told not to).

    Tune stops a trial (ASHA, or at its last epoch) by killing the trial's actor. The
    placement group of that trial's Ray Train run is scoped to the job, not to the
    killed actor, and Ray Train's placement-group cleaner removes it only once it sees,
    through the state API, that the run's controller died. Without the API every
    stopped trial keeps its CPUs or GPU and the next trial waits for them forever. The
    dashboard can take a few seconds to answer after Ray starts."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            ray.util.state.list_actors(limit=1, timeout=10, raise_on_missing_output=False)
            return
        except RayStateApiException as err:
            if time.monotonic() >= deadline:
                reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise TuneError(
                    "Ray's state API does not answer, so Ray Train could not release the resources of "
                    "trials that Tune stops and the search would hang: run Ray with its dashboard "
                    f"(install ray[default]; no --include-dashboard=false) ({reason})"
                ) from err
            time.sleep(1)


def search(cfg: TuneConfig, log=print) -> dict:  # noqa: ANN001
    """Run or resume the search; writes trials.csv, best_config.json, best/, trials.png."""
    read_dataset_info(cfg.data)  # fail early on a missing or unfinished dataset
    out = storage.resolve(cfg.out)  # a local folder or a URI (s3://...)
    storage.make_dirs(out)
    init_ray()
    require_state_api()
    space = load_space(cfg.space)
    resources = ray.cluster_resources()
    concurrent, worker_cpus, threads = plan_concurrency(cfg, resources.get("CPU", 1), resources.get("GPU", 0))
    fixed = {"data": storage.resolve(cfg.data), "out": out, "epochs": cfg.epochs,
             "workers": cfg.workers_per_trial, "gpus": cfg.gpus_per_trial, "seed": cfg.seed,
             "torch_threads": threads, "cpus_per_worker": worker_cpus}
    # The trial's driver function reserves nothing but a token (a bundle needs some
    # resource); see plan_concurrency for where the CPUs go.
    trainable = tune.with_resources(run_trial, tune.PlacementGroupFactory([{"CPU": 0, "memory": 2**20}]))
    # Tune saves the search state every >= 10 s by default; a search killed in that window
    # after a trial finished would run the trial again on resume. Trials take minutes, the
    # state is small: save it every 2 s.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    experiment = storage.join(out, EXPERIMENT)
    if tune.Tuner.can_restore(experiment):
        log(f"resuming the search in {experiment}")
        tuner = tune.Tuner.restore(experiment, trainable, resume_errored=True)
    else:
        log(f"searching {cfg.samples} trials, {concurrent} at a time, {cfg.epochs} epochs max each")
        searcher = ConcurrencyLimiter(OptunaSearch(seed=cfg.seed), max_concurrent=concurrent)
        tuner = tune.Tuner(
            trainable,
            param_space={**to_tune(space), "_fixed": fixed},
            tune_config=tune.TuneConfig(
                metric="val_loss", mode="min", num_samples=cfg.samples, search_alg=searcher,
                trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
                scheduler=ASHAScheduler(time_attr="training_iteration", max_t=cfg.epochs,
                                        grace_period=min(cfg.grace_period, cfg.epochs), reduction_factor=2),
            ),
            run_config=tune.RunConfig(name=EXPERIMENT, storage_path=out,
                                      failure_config=tune.FailureConfig(max_failures=1)),
        )
    results = tuner.fit()
    return write_outputs(results, out, cfg, log)


def _trial_name(trial) -> str:  # noqa: ANN001
    return f"trial_{trial.trial_id}"


def write_outputs(results, out: str, cfg: TuneConfig, log=print) -> dict:  # noqa: ANN001
    rows = []
    for result in results:
        df = result.metrics_dataframe
        params = {k: v for k, v in (result.config or {}).items() if k != "_fixed"}
        best_val = float(df["val_loss"].min()) if df is not None and "val_loss" in df else math.nan
        epochs = int(df["epoch"].max()) if df is not None and "epoch" in df else 0
        status = trial_status(df, bool(result.error), cfg.epochs)
        name = storage.name(result.path)
        rows.append({"trial_id": name, "trial_dir": storage.join(out, "trials", name), **params,
                     "best_val_loss": best_val, "epochs_run": epochs, "status": status})
    rows.sort(key=lambda r: (math.isnan(r["best_val_loss"]), r["best_val_loss"]))
    fields = list(dict.fromkeys(k for r in rows for k in r))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    storage.write_text(storage.join(out, "trials.csv"), table.getvalue())
    best = rows[0]
    params = {k: best[k] for k in fields if k not in ("trial_id", "trial_dir", "best_val_loss", "epochs_run", "status")}
    settings = train_settings(params)
    storage.write_json(storage.join(out, "best_config.json"), {
        "config": settings, "params": params, "best_val_loss": best["best_val_loss"], "trial_id": best["trial_id"],
        "epochs_run": best["epochs_run"]})
    _export_best_model(best["trial_dir"], storage.join(out, "best", BEST_MODEL), cfg.data)
    with tempfile.TemporaryDirectory() as tmp:
        plot_trials(rows, Path(tmp) / "trials.png")
        storage.upload(Path(tmp) / "trials.png", storage.join(out, "trials.png"))
    log(f"{len(rows)} trials; best val L1 {best['best_val_loss']:.6f} with {settings}")
    log(f"wrote {storage.join(out, 'trials.csv')}, best_config.json, best/{BEST_MODEL}, trials.png")
    return {"trials": rows, "best": best}


def trial_status(df, error: bool, epochs: int) -> str:  # noqa: ANN001
    """How a trial ended, from its reported metrics (a DataFrame, one row per epoch)."""
    last = df.iloc[-1] if df is not None and len(df) else {}
    if error:
        return "error"
    if bool(last.get("diverged", False)):
        return "diverged"
    stopped_early = bool(last.get("stopped", False))
    if int(last.get("epoch", 0)) < epochs and not stopped_early:
        return "stopped by ASHA"
    return "early-stopped" if stopped_early else "completed"


def _export_best_model(trial_dir: str, dest: str, data_dir: str) -> None:
    """The best trial's model with its default strength chosen on the validation split:
    from the trial's exported model, or (for a trial Tune stopped before it could
    export) from its best checkpoint."""
    if storage.is_file(storage.join(trial_dir, BEST_MODEL)):
        model, meta = load_model(storage.join(trial_dir, BEST_MODEL))
        save_with_default_strength(model, dest, data_dir, epoch=meta["epoch"], val_loss=meta["val_loss"])
        return
    states = [torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=True)
              for path, _ in storage.list_files(storage.join(trial_dir, "ray"), "state.pt", recursive=True)
              if "/checkpoint_" in path]
    if not states:
        raise FileNotFoundError(f"{trial_dir}: the best trial left no checkpoint")
    save_checkpoint_model(min(states, key=lambda s: s["train_state"]["history"][-1]["val_loss"]), dest, data_dir)


def plot_trials(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if not math.isnan(r["best_val_loss"])]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].bar(range(len(ok)), [r["best_val_loss"] for r in ok],
                color=["tab:green" if r["status"] != "stopped by ASHA" else "tab:gray" for r in ok])
    axes[0].set_xticks(range(len(ok)), [str(i) for i in range(len(ok))])
    axes[0].set_xlabel("trial (rank order, see trials.csv)")
    axes[0].set_ylabel("best val L1")
    axes[0].set_title("trials (grey: stopped by ASHA)")
    if ok and "lr" in ok[0]:
        axes[1].scatter([float(r["lr"]) for r in ok], [r["best_val_loss"] for r in ok])
        axes[1].set_xscale("log")
    axes[1].set_xlabel("learning rate")
    widths = [sum(int(r.get(f"width{i}", 0) or 0) for i in range(1, 5)) for r in ok]
    axes[2].scatter(widths, [r["best_val_loss"] for r in ok])
    axes[2].set_xlabel("sum of channel widths")
    for ax in axes[1:]:
        ax.set_ylabel("best val L1")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
