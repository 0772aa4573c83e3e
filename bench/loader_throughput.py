"""Training data path throughput: how fast patches reach the training step, no model attached,
for the path `train` uses and Ray Data's.

    python bench/loader_throughput.py --data DATA [--batch-size 16] [--epochs 4] [--path shard_tables ...]

Each path reads the train split's noisy and clean magnitudes, shuffled per epoch, as one
rank of one, and cuts them into batches with model.data.patch_batches (256-patch shuffle
window):

    shard_tables     model.data.shard_tables in a prefetch thread: the row groups read with
                     pyarrow in a random order (what `train` does in every worker)
    ray_data         Ray Data's read_parquet (files shuffled) through `streaming_split(1)`,
                     256-patch Arrow batches: what `train` did, a Train worker's shard
    ray_data_memory  the same, the split first read into Ray's object store (`materialize()`,
                     block order shuffled per epoch): what `train` did when the splits fit

Prints JSON: per path, ``patches_per_s`` (median over the epochs after the first),
``first_batch_s`` (median time to the first batch of those epochs), the first epoch's
figures, and ``cpu_s_per_1000_patches``: CPU seconds that every process of the machine
spent (``/proc/stat``) per 1,000 patches delivered, over the epochs after the first.
That is what the data path takes from training on a small machine. Copy it into
BENCHMARKS.md.
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

from speech_enhance.model import data as model_data
from speech_enhance.pipeline.cluster import hide_ray_data_progress, init_ray

SHUFFLE_BUFFER = 256
READ_BATCH = 256  # rows per Arrow batch Ray Data hands over (what train asked for)


def machine_cpu_seconds() -> float:
    """CPU seconds spent by every process since boot (user + nice + system)."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()[1:]
    return (int(fields[0]) + int(fields[1]) + int(fields[2])) / os.sysconf("SC_CLK_TCK")


def epochs_of(path: str, data: str, epochs: int):  # noqa: ANN201
    """One iterable of Arrow tables per epoch."""
    if path == "shard_tables":
        pieces = model_data.split_pieces(data, "train")
        return [model_data.prefetched(model_data.shard_tables(pieces, model_data.columns(), seed=epoch))
                for epoch in range(epochs)]
    dataset = ray.data.read_parquet(model_data.split_dir(data, "train"), columns=model_data.columns(),
                                    shuffle=None if path == "ray_data_memory" else "files")
    if path == "ray_data_memory":
        dataset = dataset.materialize().randomize_block_order()
    shard = dataset.streaming_split(1)[0]
    return [shard.iter_batches(batch_size=READ_BATCH, batch_format="pyarrow", prefetch_batches=2)
            for _ in range(epochs)]


def measure(path: str, data: str, batch_size: int, epochs: int) -> dict:
    rates, firsts, cpu, delivered = [], [], 0.0, 0
    for epoch, tables in enumerate(epochs_of(path, data, epochs)):
        started, cpu_started = time.perf_counter(), machine_cpu_seconds()
        first, patches = None, 0
        for noisy, clean in model_data.patch_batches(tables, batch_size, SHUFFLE_BUFFER, seed=epoch):
            if first is None:
                first = time.perf_counter() - started
            patches += noisy.shape[0]
            assert clean.dtype == torch.float32
        rates.append(patches / (time.perf_counter() - started))
        firsts.append(first)
        if epoch:
            cpu += machine_cpu_seconds() - cpu_started
            delivered += patches
    return {"patches_per_epoch": patches, "patches_per_s": statistics.median(rates[1:]),
            "first_batch_s": statistics.median(firsts[1:]), "first_epoch_patches_per_s": rates[0],
            "first_epoch_first_batch_s": firsts[0], "cpu_s_per_1000_patches": 1000 * cpu / delivered,
            "per_epoch_patches_per_s": rates}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4)
    paths = ["shard_tables", "ray_data", "ray_data_memory"]
    parser.add_argument("--path", nargs="+", default=paths, choices=paths)
    args = parser.parse_args()
    init_ray()
    hide_ray_data_progress()
    results = {"machine": f"{os.cpu_count()} CPUs", "python": platform.python_version(), "ray": ray.__version__,
               "torch": torch.__version__, "data": args.data, "batch_size": args.batch_size,
               "date": time.strftime("%Y-%m-%d")}
    for path in args.path:
        results[path] = measure(path, args.data, args.batch_size, args.epochs)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
