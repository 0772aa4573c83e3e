"""Data-parallel training of the mask CNN with Ray Train (Train V2 API).

The driver (``train``) checks the run folder, starts a ``TorchTrainer`` on the dataset
folder, and after the run exports the best
checkpoint as ``cnn_enhancer_best.pth`` with ``history.csv``, ``loss_curve.png``,
``config.json`` and ``results.json`` (test-split L1, identity-mask baseline).

Each worker (``train_loop_per_worker``) reads its equal share of the split's Parquet row
groups itself (:func:`~speech_enhance.model.data.shard_tables`, in a fresh random order
every epoch) and batches them with :func:`~speech_enhance.model.data.patch_batches`; it all-reduces the epoch's loss sums so every rank sees the same
validation loss and takes the same early-stopping decision (Train V2 needs every rank
to call ``report`` equally often), and reports a checkpoint every epoch. Re-running
the same command resumes from the latest checkpoint (Ray restores the run from
``RUN_DIR/ray``); a crashed worker is restarted by Ray from that checkpoint. A loss that
turns NaN or infinite stops the run at that epoch (``TrainDiverged``), its earlier
checkpoints kept: a restart would only diverge again.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import os
import tempfile
import time
from pathlib import Path

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train.torch import TorchTrainer
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from speech_enhance.model.config import TrainConfig
from speech_enhance.model.data import (
    columns,
    patch_batches,
    prefetched,
    shard_tables,
    split_dir,
    split_pieces,
)
from speech_enhance.model.evaluate import calibrate_strength, describe_strength, identity_l1, test_l1
from speech_enhance.model.losses import LOSSES, Loss, get_loss
from speech_enhance.model.net import (
    build_model,
    complexity,
    model_config,
    patch_input,
    reads_phase,
    save_model,
)
from speech_enhance.pipeline import storage
from speech_enhance.pipeline.cluster import init_ray
from speech_enhance.pipeline.dataset import read_dataset_info
from speech_enhance.pipeline.dsp import PATCH_FRAMES

BEST_MODEL = "cnn_enhancer_best.pth"
RAY_RUN_NAME = "ray"
# Keys that may change when a run is continued (e.g. more epochs, other hardware).
RESUMABLE_KEYS = {"epochs", "patience", "time_limit", "workers", "gpu", "cpus_per_worker", "torch_threads", "precision",
                  "compile", "fault_injection"}


class TrainError(RuntimeError):
    pass


class TrainDiverged(TrainError):
    """The training or validation loss became NaN or infinite, so the run stopped there."""


# ---------------------------------------------------------------- worker side
def early_stopping_update(state: dict, val_loss: float, patience: int) -> bool:
    """Record one epoch's validation loss in ``state`` (best_val, bad_epochs); returns
    True once ``patience`` epochs in a row brought no improvement."""
    if val_loss < state["best_val"]:
        state["best_val"], state["bad_epochs"] = val_loss, 0
    else:
        state["bad_epochs"] += 1
    return state["bad_epochs"] >= patience


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def _any_ranks(flags: list[bool], device: torch.device) -> list[bool]:
    """For each flag, whether it holds on any rank: every rank gets the same answers, so
    all take the same branch, as DDP needs (one all-reduce for all the flags)."""
    t = torch.tensor([float(flag) for flag in flags], device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def _any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` holds on any rank (see :func:`_any_ranks`)."""
    return _any_ranks([flag], device)[0]


def _past_deadline(deadline: float, device: torch.device) -> bool:
    """Whether any rank is past ``deadline`` (time.time())."""
    return _any_rank(time.time() > deadline, device)


CHECK_STEPS = 8  # training steps between checks of the deadline and the loss (each is an all-reduce)


def bf16_autocast(precision: str, device: torch.device) -> bool:
    """Whether ``train --precision`` runs the forward pass under bf16 autocast on ``device``:
    bf16 always; auto on GPUs only, as bf16 pays on a CPU only with AMX / AVX512-BF16."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


CPU_BF16_FLAGS = {"amx_bf16", "avx512_bf16", "bf16"}  # x86 /proc/cpuinfo "flags"; Arm's "Features"


def cpu_has_bf16(cpuinfo: str | None = None) -> bool | None:
    """Whether this CPU computes bf16 in hardware (AMX, AVX512-BF16, Arm BF16), read from
    ``/proc/cpuinfo`` (or the text given); None where it cannot tell (no such file)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = [line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
             if line.split(":", 1)[0].strip() in ("flags", "Features") and ":" in line]
    return bool(CPU_BF16_FLAGS.intersection(*flags[:1])) if flags else None


def precision_warning(precision: str, use_gpu: bool, has_bf16: bool | None) -> str | None:
    """What ``train`` warns of before a CPU run that asks for bf16 on a CPU without it: there
    autocast emulates bf16, several times slower than fp32 (the recipe's time limit then
    ends training epochs early)."""
    if precision != "bf16" or use_gpu or has_bf16 is not False:
        return None
    return ("warning: --precision bf16 on a CPU without AMX, AVX512-BF16 or Arm BF16 runs several times slower "
            "than fp32 (measured: a GRU step 4.6x); leave it out (auto is fp32 on CPUs)")


def _run_epoch(model, batches, device, optimizer=None, amp=False,  # noqa: ANN001
               loss_fn: Loss = LOSSES["mag_l1"], deadline: float | None = None,
               uneven: bool = False, ema: AveragedModel | None = None) -> tuple[float, float]:
    """One pass; returns (sum over batches of loss × patches, patches): the epoch's loss
    is the first over the second. Training stops early once past ``deadline``, or once the
    loss has turned NaN or infinite on any rank (the sum then says so). ``uneven``:
    the ranks may hold different numbers of batches (joined sequences), so every step asks
    whether all still have one and all stop with the first that runs out, as DDP needs.
    ``ema``: the weights' moving average, updated after every step."""
    training = optimizer is not None
    model.train(training)
    loss_sum, patches = 0.0, 0.0
    iterator = iter(batches)
    for step in itertools.count():
        if training and step % CHECK_STEPS == 0 and step and any(_any_ranks(
                [deadline is not None and time.time() > deadline, not math.isfinite(loss_sum)], device)):
            break
        batch = next(iterator, None)
        if (_any_rank(batch is None, device) if uneven else batch is None):
            break
        noisy, clean, *phase = (t.to(device, non_blocking=True) for t in batch)
        inputs = patch_input(model, noisy, phase[0] if phase else None)
        with torch.set_grad_enabled(training), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            mask = model(inputs)
        loss = loss_fn(mask.float() * noisy, clean, phase[0] if phase else None, noisy)
        if training:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update_parameters(getattr(model, "module", model))
        count = clean.shape[0] * clean.shape[-1] / PATCH_FRAMES  # a joined sequence counts its patches
        loss_sum += loss.item() * count
        patches += count
    return loss_sum, patches


def ema_model(model: nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights and BatchNorm statistics
    (``decay`` per step; None when 0): Polyak averaging, which smooths out the step-to-step
    noise of the late weights; it lags early in a run, so it suits runs of many epochs."""
    if not decay:
        return None
    return AveragedModel(getattr(model, "module", model), multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _maybe_inject_fault(config: dict, epoch: int, rank: int) -> None:
    fault = config.get("fault_injection")
    if fault and epoch == fault["epoch"] and rank == fault.get("rank", 0) and not os.path.exists(fault["marker"]):
        Path(fault["marker"]).write_text(f"crashed at epoch {epoch}\n")
        os._exit(1)  # a hard crash, as a killed process would die


def train_loop_per_worker(config: dict) -> dict | None:
    torch.manual_seed(config["seed"])
    if config.get("torch_threads"):
        torch.set_num_threads(config["torch_threads"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    device = ray.train.torch.get_device()
    amp = bf16_autocast(config.get("precision", "auto"), device)

    model = ray.train.torch.prepare_model(
        build_model(config["arch"], config["widths"], **(config.get("model_options") or {})))
    # The compiled wrapper shares the parameters; checkpoints keep saving the plain module.
    net = torch.compile(model) if config.get("compile") else model
    loss_fn = get_loss(config["loss"], **(config.get("loss_options") or {}))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    ema = ema_model(model, config.get("ema", 0.0))
    scheduler = (
        torch.optim.lr_scheduler.StepLR(optimizer, config["step_size"], config["gamma"])
        if config.get("step_size") else None
    )
    state = {"epoch": 0, "best_val": math.inf, "bad_epochs": 0, "stopped": False, "history": [],
             "train_seconds": 0.0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as ckpt_dir:
            saved = torch.load(Path(ckpt_dir) / "state.pt", map_location=device, weights_only=True)
        getattr(model, "module", model).load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler and saved.get("scheduler"):
            scheduler.load_state_dict(saved["scheduler"])
        if ema is not None and saved.get("ema"):
            ema.module.load_state_dict(saved["ema"])
            ema.n_averaged.fill_(saved["ema_steps"])
        state = saved["train_state"]
    if state["stopped"] or state["epoch"] >= config["epochs"]:
        return None  # a finished run: nothing left to do
    # Which Ray node and device each rank runs on (results.json shows how a run was spread).
    placement = [None] * context.get_world_size()
    here = (ray.get_runtime_context().get_node_id(), str(device))
    if dist.is_available() and dist.is_initialized():
        dist.all_gather_object(placement, here)
    else:
        placement = [here]
    state["worker_nodes"] = [node for node, _ in placement]
    state["worker_devices"] = [dev for _, dev in placement]
    start_steps = _adam_steps(optimizer)

    sequence = config.get("sequence", 1)
    world = context.get_world_size()
    names = columns(loss_fn.needs_phase or reads_phase(model), sequence)
    pieces = {split: split_pieces(config["data"], split) for split in ("train", "val")}
    limit = config.get("time_limit")
    for epoch in range(state["epoch"] + 1, config["epochs"] + 1):
        started = time.time()
        deadline = started + limit * 60 - state.get("train_seconds", 0.0) if limit else None
        train_tables = prefetched(shard_tables(pieces["train"], names, rank, world, seed=config["seed"] + epoch))
        train_batches = patch_batches(train_tables, config["batch_size"] // sequence,
                                      config["shuffle_buffer"] // sequence, seed=config["seed"] + epoch,
                                      sequence=sequence)
        train_sums = _run_epoch(net, train_batches, device, optimizer, amp, loss_fn, deadline, sequence > 1, ema)
        train_seconds = time.time() - started
        state["train_seconds"] = state.get("train_seconds", 0.0) + train_seconds
        # Every rank stopped at the same step, so this is the same on all of them.
        out_of_time = deadline is not None and _past_deadline(deadline, device)
        t_loss, t_patches = _all_reduce_sum(list(train_sums), device)
        v_loss, v_patches = math.nan, 0.0
        if math.isfinite(t_loss):  # the same on every rank, as is the validation loss below
            val_tables = prefetched(shard_tables(pieces["val"], names, rank, world))
            val_batches = patch_batches(val_tables, max(64, config["batch_size"]) // sequence, sequence=sequence)
            with torch.no_grad():
                val_sums = _run_epoch(ema.module if ema is not None else net, val_batches, device, amp=amp,
                                      loss_fn=loss_fn, uneven=sequence > 1)
            v_loss, v_patches = _all_reduce_sum(list(val_sums), device)
        seconds = time.time() - started
        train_loss, val_loss = t_loss / max(t_patches, 1), v_loss / max(v_patches, 1)
        if not math.isfinite(val_loss):
            # Every rank reports once and stops; the checkpoints of the earlier epochs stay
            # the run's (a checkpoint of NaN weights would only be resumed into NaN again).
            ray.train.report({"epoch": epoch, "train_loss": train_loss, "val_loss": math.inf, "diverged": True,
                              "best_val_loss": state["best_val"], "stopped": True})
            return {"diverged": {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss}}  # for the driver
        lr = optimizer.param_groups[0]["lr"]
        if scheduler:
            scheduler.step()
        # val_loss is all-reduced, hence identical on every rank: all ranks stop together.
        state["stopped"] = early_stopping_update(state, val_loss, config["patience"]) or out_of_time
        state["epoch"] = epoch
        # patches/s: training patches (all workers) per second of the training pass.
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": lr, "seconds": seconds,
               "patches_per_s": t_patches / train_seconds, "adam_steps_at_start": start_steps}
        state["history"].append(row)
        _maybe_inject_fault(config, epoch, rank)
        metrics = {**row, "best_val_loss": state["best_val"], "stopped": state["stopped"], "diverged": False}
        if rank == 0:
            print(
                f"epoch {epoch:3d}  train {train_loss:.5f}  val {val_loss:.5f}  lr {lr:.2e}  "
                f"{seconds:6.1f} s  {row['patches_per_s']:7.1f} patches/s"
                + ("  (time limit)" if out_of_time else "  (early stop)" if state["stopped"] else ""),
                flush=True,
            )
            with tempfile.TemporaryDirectory() as tmp:
                torch.save(
                    {"model": getattr(model, "module", model).state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict() if scheduler else None, "train_state": state,
                     "model_config": model_config(model),
                     # The averaged weights: validated above, and what the model file gets.
                     "ema": ema.module.state_dict() if ema is not None else None,
                     "ema_steps": int(ema.n_averaged) if ema is not None else 0},
                    Path(tmp) / "state.pt",
                )
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
        start_steps = _adam_steps(optimizer)
        if state["stopped"]:
            break
    return None


def _adam_steps(optimizer: torch.optim.Optimizer) -> int:
    steps = [s["step"] for s in optimizer.state.values() if "step" in s]
    return int(steps[0]) if steps else 0


# ---------------------------------------------------------------- driver side
def _use_gpu(setting: str) -> bool:
    available = ray.cluster_resources().get("GPU", 0) > 0
    if setting == "yes" and not available:
        raise TrainError("--gpu yes, but the Ray cluster has no GPU")
    return setting == "yes" or (setting == "auto" and available)


def _resources(cfg: TrainConfig, use_gpu: bool) -> tuple[float, int]:
    """CPUs to reserve per worker and torch threads per worker.

    On small clusters each worker reserves at most its share of all-but-one CPU, so a
    CPU stays free for other Ray work on the cluster (an ``evaluate``'s Ray Data tasks);
    a reservation only gates scheduling: the workers' torch threads use every CPU."""
    total = ray.cluster_resources().get("CPU", 1)
    if cfg.cpus_per_worker is not None:
        cpus = cfg.cpus_per_worker
    elif use_gpu:
        cpus = 1.0
    else:
        cpus = max(0.25, min(1.0, (total - 1) / cfg.workers))
    if cfg.torch_threads:
        threads = cfg.torch_threads
    else:
        threads = max(1, int(total // cfg.workers)) if not use_gpu else max(1, int(cpus))
    return cpus, threads


def _worker_resources(cpus: float, use_gpu: bool) -> dict:
    # With --cpus-per-worker 0 the bundle still needs a non-zero resource: a token
    # amount of memory.
    resources = {"CPU": cpus} if cpus > 0 or use_gpu else {"CPU": 0, "memory": 2**20}
    if use_gpu:
        resources["GPU"] = 1
    return resources


def _check_run_dir(out: str, config: dict, overwrite: bool) -> None:
    saved_path = storage.join(out, "config.json")
    if overwrite:
        for name in (RAY_RUN_NAME, BEST_MODEL, "config.json", "history.csv", "loss_curve.png", "results.json"):
            storage.delete(storage.join(out, name))
        return
    if storage.is_file(saved_path):
        saved = storage.read_json(saved_path)
        # config.json also records derived values (threads, versions): compare settings only.
        changed = sorted(k for k in config if k not in RESUMABLE_KEYS and k in saved and saved[k] != config[k])
        if changed:
            raise TrainError(
                f"{out} holds a run with a different config ({', '.join(changed)}); "
                "choose another --out or pass --overwrite"
            )


def train(cfg: TrainConfig, overwrite: bool = False, log=print, callbacks: list | None = None,  # noqa: ANN001
          choose_strength: bool = True) -> dict:
    """Run (or resume) training; returns results.json's contents. ``callbacks`` are Ray
    Train callbacks (Tune passes its ``TuneReportCallback``). ``choose_strength``: pick
    the exported model's default strength on the validation split (Tune's trials skip
    it; the search does it for its best model only)."""
    cfg = cfg.validated()
    dataset_info = read_dataset_info(cfg.data)
    for split in ("train", "val"):
        split_dir(cfg.data, split)  # an empty split fails here, not in every worker
    out = storage.resolve(cfg.out)  # a local folder or a URI (s3://...) on shared storage
    config = cfg.to_dict()
    _check_run_dir(out, config, overwrite)
    storage.make_dirs(out)
    init_ray()
    use_gpu = _use_gpu(cfg.gpu)
    cpus, threads = _resources(cfg, use_gpu)
    size = complexity(build_model(cfg.arch, cfg.widths, **(cfg.model_options or {})))
    effective = {**config, "use_gpu": use_gpu, "cpus_reserved_per_worker": cpus, "torch_threads": threads,
                 "model_size": size, "dataset": dataset_info["config"], "ray": ray.__version__,
                 "torch": torch.__version__}
    storage.write_json(storage.join(out, "config.json"), effective)
    warning = precision_warning(cfg.precision, use_gpu, cpu_has_bf16())
    if warning:
        log(warning)
    log(f"training {cfg.arch} {cfg.widths} ({size['parameters']:,} parameters, "
        f"{size['macs_per_second'] / 1e6:.0f} M MACs per second of audio), loss {cfg.loss}, on {cfg.workers} "
        f"{'GPU' if use_gpu else 'CPU'} worker(s) ({cpus:g} CPU reserved and {threads} torch threads each); "
        f"run folder {out}")
    trainer = TorchTrainer(
        train_loop_per_worker,
        # Workers read the dataset themselves: hand them its absolute path or URI.
        train_loop_config={**config, "data": storage.resolve(cfg.data), "torch_threads": threads},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.workers, use_gpu=use_gpu, resources_per_worker=_worker_resources(cpus, use_gpu)
        ),
        run_config=ray.train.RunConfig(
            name=RAY_RUN_NAME,
            storage_path=str(out),
            callbacks=callbacks,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute="val_loss", checkpoint_score_order="min"
            ),
            failure_config=ray.train.FailureConfig(max_failures=3 if cfg.fault_injection is None else
                                                   cfg.fault_injection.get("max_failures", 3)),
        ),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as err:
        summary = str(err).strip().splitlines()
        raise TrainError(
            f"training failed ({summary[0] if summary else type(err).__name__}); "
            f"re-run the same command to resume from the last checkpoint in {storage.join(out, RAY_RUN_NAME)}"
        ) from err
    last = (result.return_value or {}).get("diverged")  # rank 0's return value
    if last:
        which = "training" if not math.isfinite(last["train_loss"]) else "validation"
        kept = (f"{storage.join(out, RAY_RUN_NAME)} keeps the best checkpoint of the epochs before"
                if last["epoch"] > 1 else "no epoch was checkpointed")
        raise TrainDiverged(
            f"training diverged: the {which} loss became NaN or infinite in epoch {last['epoch']}, so the run "
            f"stopped there ({kept}). Start a new run with a lower --lr, or train with --precision fp32 or without "
            f"--compile (both may change when the same command resumes the run)")
    return export_run(result, out, cfg, log, choose_strength)


def export_run(result, out: str, cfg: TrainConfig, log=print, choose_strength: bool = True) -> dict:  # noqa: ANN001
    """Best checkpoint → cnn_enhancer_best.pth; history.csv, loss_curve.png, results.json
    (``out``: a local folder or a URI)."""
    if result.error:
        raise TrainError(f"training failed: {result.error}")
    latest = _load_state(result.checkpoint)
    history = latest["train_state"]["history"]
    best_ckpt, best_metrics = min(result.best_checkpoints, key=lambda cm: cm[1]["val_loss"])
    model, strength_choice = save_checkpoint_model(_load_state(best_ckpt), storage.join(out, BEST_MODEL),
                                                   cfg.data if choose_strength else None)
    storage.write_text(storage.join(out, "history.csv"), history_csv(history))
    with tempfile.TemporaryDirectory() as tmp:
        plot_loss_curve(history, Path(tmp) / "loss_curve.png", cfg.loss)
        storage.upload(Path(tmp) / "loss_curve.png", storage.join(out, "loss_curve.png"))
    results = {
        "best_epoch": int(best_metrics["epoch"]),
        "best_val_loss": float(best_metrics["val_loss"]),  # in the run's loss (config.json "loss")
        "loss": cfg.loss,
        "model_size": complexity(model),
        "epochs_run": len(history),
        "early_stopped": bool(latest["train_state"]["stopped"]),
        "worker_nodes": latest["train_state"].get("worker_nodes", []),
        "worker_devices": latest["train_state"].get("worker_devices", []),
        "val_loss_identity_mask": identity_l1(cfg.data, "val"),
        "test_loss": test_l1(model, cfg.data),
        "test_loss_identity_mask": identity_l1(cfg.data, "test"),
        "strength": strength_choice,
    }
    storage.write_json(storage.join(out, "results.json"), results)
    val = (f"val L1 {results['best_val_loss']:.6f} (identity mask {results['val_loss_identity_mask']:.6f})"
           if cfg.loss == "mag_l1" else f"val {cfg.loss} {results['best_val_loss']:.6f}")
    log(f"best epoch {results['best_epoch']}: {val}; "
        f"test L1 {results['test_loss']:.6f} (identity mask {results['test_loss_identity_mask']:.6f})")
    if strength_choice:
        log(f"default strength for enhance: {describe_strength({**strength_choice, 'source': 'model file'})}")
    log(f"wrote {storage.join(out, BEST_MODEL)}, history.csv, loss_curve.png, results.json")
    return results


def save_checkpoint_model(state: dict, dest: str, data_dir: str | None = None) -> tuple[nn.Module, dict | None]:
    """Rebuild the model of a training checkpoint's ``state.pt`` and save it as a
    model file at ``dest``, with the epoch and val loss of that checkpoint and, with
    ``data_dir``, its default strength (:func:`save_with_default_strength`). Returns
    the model and the strength choice (None if none was made)."""
    model = build_model(**state["model_config"])
    model.load_state_dict(state.get("ema") or state["model"])  # a run with --ema saves the average
    last = state["train_state"]["history"][-1]
    choice = save_with_default_strength(model, dest, data_dir, epoch=int(last["epoch"]),
                                        val_loss=float(last["val_loss"]))
    return model, choice


def save_with_default_strength(model: nn.Module, dest: str, data_dir: str | None,
                               **extra: float | int | str) -> dict | None:
    """Save ``model`` at ``dest`` with its default strength (mask floor 1 - s, what
    `enhance` applies unless told otherwise) chosen on ``data_dir``'s validation split.

    A briefly trained mask tends to over-suppress speech it is unsure of, which costs
    intelligibility (STOI) that the loss does not see. Without ``data_dir`` or a
    validation split no strength is saved (then `enhance` uses the full mask).
    Returns the choice."""
    model.eval()
    choice = calibrate_strength(model, data_dir) if data_dir is not None else None
    if choice:
        extra = {**extra, "strength": choice["strength"], "strength_choice": choice}
    save_model(dest, model, **extra)
    return choice


def _load_state(checkpoint) -> dict:  # noqa: ANN001
    with checkpoint.as_directory() as ckpt_dir:
        return torch.load(Path(ckpt_dir) / "state.pt", map_location="cpu", weights_only=True)


def history_csv(history: list[dict]) -> str:
    fields = ["epoch", "train_loss", "val_loss", "lr", "seconds", "patches_per_s"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return text.getvalue()


def plot_loss_curve(history: list[dict], path: Path, loss: str = "mag_l1") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"loss ({loss})")
    ax.set_title("training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
