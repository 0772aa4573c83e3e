"""Training throughput: Ray Train (1 and 2 workers) against a plain PyTorch loop over the
same Parquet data and the same model, on the same CPUs.

    python bench/train_throughput.py [--data DATA_DIR] [--epochs 2] [--runs NAME ...]

Without --data, a dataset is built from the embedded corpus. Ray Train's figure is the
last epoch's training patches per second of the training pass (the first epoch includes
worker and data start-up); the plain loop's is one pass after one warm-up pass. Each Ray
run is compared with the plain loop using as many torch threads in all (the same CPU
count for the computation):

    ray_1w_2t  1 worker, 2 torch threads (the default for 1 worker on 2 CPUs) vs plain, 2 threads
    ray_1w_1t  1 worker, 1 torch thread                                      vs plain, 1 thread
    ray_2w     2 workers, 1 thread each (DDP; the default for 2 workers)     vs plain, 2 threads
    ray_1gpu   1 GPU worker (bf16 autocast, 1 torch thread)                  vs plain on the GPU

`--precision bf16 --compile` run both sides under bf16 autocast and torch.compile (as
`train --precision bf16 --compile`). Both sides run the same epoch function (speech_enhance.model.train._run_epoch). The GPU run is left out
where torch sees no GPU. Prints JSON; copy it into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from speech_enhance.model.config import PRECISIONS, TrainConfig
from speech_enhance.model.data import local_batches
from speech_enhance.model.losses import get_loss
from speech_enhance.model.net import build_model
from speech_enhance.model.train import _run_epoch, bf16_autocast, train
from speech_enhance.pipeline import allocator


def plain_loop(data: str, batch_size: int, threads: int, device: str = "cpu", arch: str = "mask_cnn",
               loss: str = "mag_l1", precision: str = "auto", compile: bool = False) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(arch).to(device)
    net = torch.compile(model) if compile else model
    amp = bf16_autocast(precision, torch.device(device))
    loss_fn = get_loss(loss)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    rate = 0.0
    for _ in range(2):  # the first pass warms up allocator and caches (and compiles)
        started = time.time()
        _, patches = _run_epoch(net, local_batches(data, "train", batch_size, loss_fn.needs_phase),
                                torch.device(device), optimizer, amp=amp, loss_fn=loss_fn)
        if device == "cuda":
            torch.cuda.synchronize()
        rate = patches / (time.time() - started)
    return rate


# name: (workers, torch threads per worker or None for train's default, threads of the
# plain loop it is compared with, device)
RAY_RUNS = {"ray_1w_2t": (1, 2, 2, "cpu"), "ray_1w_1t": (1, 1, 1, "cpu"), "ray_2w": (2, None, 2, "cpu"),
            "ray_1gpu": (1, 1, 1, "cuda")}


def main():
    # As the CLI does: the loops here run with the malloc settings of Ray's workers.
    allocator.keep_freed_memory()
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=None)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--arch", default="mask_cnn")
    parser.add_argument("--loss", default="mag_l1")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--runs", nargs="+", choices=list(RAY_RUNS),
                        default=[name for name, run in RAY_RUNS.items() if run[3] == "cpu" or torch.cuda.is_available()])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    from speech_enhance.pipeline.cluster import init_ray

    init_ray()
    data = args.data
    if data is None:
        from speech_enhance.pipeline.build import BuildConfig, build_dataset
        from speech_enhance.pipeline.corpus import make_corpus

        make_corpus(work / "corpus")
        data = str(work / "data")
        build_dataset(BuildConfig(str(work / "corpus/speech"), str(work / "corpus/noise"), data,
                                  snrs=[5.0, 0.0], noises_per_clean=1), log=lambda *_: None)
    machine = f"{os.cpu_count()} CPUs" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
    results = {"machine": machine, "data": data, "batch_size": args.batch_size, "arch": args.arch, "loss": args.loss,
               "precision": args.precision, "compile": args.compile,
               "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}
    plain = {}
    for name in args.runs:
        workers, threads, total_threads, device = RAY_RUNS[name]
        baseline = f"plain_{total_threads}t" + ("_gpu" if device == "cuda" else "")
        if baseline not in plain:
            plain[baseline] = plain_loop(data, args.batch_size, total_threads, device, args.arch, args.loss,
                                         args.precision, args.compile)
            results[f"{baseline}_patches_per_s"] = plain[baseline]
        cfg = TrainConfig(data=data, out=str(work / name), epochs=args.epochs, workers=workers,
                          batch_size=args.batch_size, patience=args.epochs, torch_threads=threads,
                          arch=args.arch, loss=args.loss, precision=args.precision, compile=args.compile,
                          gpu="yes" if device == "cuda" else "no")
        started = time.time()
        train(cfg, log=lambda *_: None, choose_strength=False)  # the export's calibration is not timed
        with open(work / name / "history.csv") as f:
            last = f.read().strip().splitlines()[-1].split(",")
        results[f"{name}_patches_per_s"] = float(last[-1])
        results[f"{name}_wall_s"] = time.time() - started
        results[f"{name}_vs_{baseline}"] = float(last[-1]) / plain[baseline]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
