"""Training throughput: Ray Train (1 and 2 workers) against a plain PyTorch loop over the
same Parquet data and the same model, on the same CPUs.

    python bench/train_throughput.py [--data DATA_DIR] [--epochs 2]

Without --data, a dataset is built from the embedded corpus. Ray Train's figure is the
last epoch's training patches per second of the training pass (the first epoch includes
worker and data start-up); the plain loop's is one pass after one warm-up pass, with
torch using all CPUs. Prints JSON; copy it into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from model.data import local_batches
from model.net import build_model
from model.train import TrainConfig, train


def plain_loop(data: str, batch_size: int, threads: int) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    rate = 0.0
    for _ in range(2):  # the first pass warms up allocator and caches
        started, patches = time.time(), 0
        for noisy, clean in local_batches(data, "train", batch_size):
            loss = torch.nn.functional.l1_loss(model(noisy) * noisy, clean)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            patches += len(noisy)
        rate = patches / (time.time() - started)
    return rate


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=None)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    from speech_enhance.raysetup import init_ray

    init_ray()
    data = args.data
    if data is None:
        from pipeline.build import BuildConfig, build_dataset
        from pipeline.corpus import make_corpus

        make_corpus(work / "corpus")
        data = str(work / "data")
        build_dataset(BuildConfig(str(work / "corpus/speech"), str(work / "corpus/noise"), data,
                                  snrs=[5.0, 0.0], noises_per_clean=1), log=lambda *_: None)
    cpus = os.cpu_count()
    results = {"machine": f"{cpus} CPUs", "data": data, "batch_size": args.batch_size,
               "plain_loop_patches_per_s": plain_loop(data, args.batch_size, cpus)}
    for workers in (1, 2):
        cfg = TrainConfig(data=data, out=str(work / f"run{workers}"), epochs=args.epochs, workers=workers,
                          batch_size=args.batch_size, patience=args.epochs)
        started = time.time()
        train(cfg, log=lambda *_: None)
        with open(work / f"run{workers}" / "history.csv") as f:
            last = f.read().strip().splitlines()[-1].split(",")
        results[f"ray_train_{workers}_workers_patches_per_s"] = float(last[-1])
        results[f"ray_train_{workers}_workers_wall_s"] = time.time() - started
        results[f"ratio_{workers}_workers_vs_plain"] = float(last[-1]) / results["plain_loop_patches_per_s"]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
