"""Training data path throughput, no model attached: how fast patches reach the training
step, for the path `train` uses and the one it used before.

    python bench/loader_throughput.py --data DATA [--batch-size 16] [--epochs 4] [--path patch_batches ...]

Each path reads the train split as `train` does (`read_split`, files shuffled per epoch)
and iterates it in the driver process, one `DataIterator` as a Train worker's shard is:

    patch_batches      model.data.patch_batches: 256-patch Arrow batches from Ray Data, read in
                       place, each training batch one gather (what `train` uses)
    iter_torch_batches Ray Data's iter_torch_batches with the PatchCollate collate function and
                       a 256-patch local shuffle buffer (what `train` used before)

With --materialize each path also runs over the split held in Ray's object store, its
block order shuffled per epoch: what `train` does when the splits fit
(model.train.training_datasets).

Prints JSON: per path, ``patches_per_s`` (median over the epochs after the first),
``first_batch_s`` (median time to the first batch of those epochs) and the first epoch's
figures. Copy it into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import ray
import torch

from speech_enhance.model.data import PatchCollate, patch_batches, read_split
from speech_enhance.pipeline.cluster import hide_ray_data_progress, init_ray

SHUFFLE_BUFFER = 256


def batches(path: str, iterator, batch_size: int, epoch: int):  # noqa: ANN001, ANN201
    if path == "patch_batches":
        return patch_batches(iterator, batch_size, SHUFFLE_BUFFER, seed=epoch)
    return iterator.iter_torch_batches(batch_size=batch_size, collate_fn=PatchCollate(),
                                       local_shuffle_buffer_size=SHUFFLE_BUFFER, local_shuffle_seed=epoch)


def measure(path: str, data: str, batch_size: int, epochs: int, materialize: bool = False) -> dict:
    dataset = read_split(data, "train", shuffle_files=not materialize)
    if materialize:  # read once into Ray's object store; block order shuffled per epoch
        dataset = dataset.materialize().randomize_block_order()
    iterator = dataset.iterator()
    rates, firsts = [], []
    for epoch in range(epochs):
        started = time.perf_counter()
        first, patches = None, 0
        for noisy, clean in batches(path, iterator, batch_size, epoch):
            if first is None:
                first = time.perf_counter() - started
            patches += noisy.shape[0]
            assert clean.dtype == torch.float32
        rates.append(patches / (time.perf_counter() - started))
        firsts.append(first)
    return {"patches_per_epoch": patches, "patches_per_s": statistics.median(rates[1:]),
            "first_batch_s": statistics.median(firsts[1:]), "first_epoch_patches_per_s": rates[0],
            "first_epoch_first_batch_s": firsts[0], "per_epoch_patches_per_s": rates}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--materialize", action="store_true", help="also each path over the materialized split")
    parser.add_argument("--path", nargs="+", default=["patch_batches", "iter_torch_batches"],
                        choices=["patch_batches", "iter_torch_batches"])
    args = parser.parse_args()
    init_ray()
    hide_ray_data_progress()
    results = {"machine": f"{os.cpu_count()} CPUs", "python": platform.python_version(), "ray": ray.__version__,
               "torch": torch.__version__, "data": args.data, "batch_size": args.batch_size,
               "date": time.strftime("%Y-%m-%d")}
    for path in args.path:
        results[path] = measure(path, args.data, args.batch_size, args.epochs)
        if args.materialize:
            results[f"{path}_materialized"] = measure(path, args.data, args.batch_size, args.epochs, True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
