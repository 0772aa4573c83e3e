"""Build throughput: Ray Data (2 CPUs) against a single-process loop doing the same work.

Both run the same functions (probe_file, plan_mixtures, write_patch_file) and write the
same Parquet files; the loop does it all in one process. Peak
memory is the summed PSS of the driver and every process below it (Ray's GCS, raylet,
workers and object store are children of a local ``ray.init``), sampled every 0.2 s.

    python bench/build_throughput.py [--clean DIR --noise DIR] [--k 2] [--scale 4]

Defaults use ../shared/data/dev (real recordings). Results go to stdout as JSON lines;
copy them into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

from pipeline import build
from pipeline.plan import as_rows, plan_mixtures

HERE = Path(__file__).resolve().parent
DEV = HERE.parent.parent / "shared" / "data" / "dev"


class PeakMemory:
    """Peak summed PSS of this process and all its descendants."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def _sample(self) -> int:
        me = psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self.interval)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def single_process_build(cfg: build.BuildConfig) -> int:
    """The whole build in one process, no Ray: returns mixture count."""

    config = cfg.effective()
    items, skipped = build.list_inputs(cfg)
    clean, noise, _ = build.sort_probed(cfg, [build.probe_file(i) for i in items], skipped)
    mixtures, _, _ = plan_mixtures(clean, noise, config["snrs"], tuple(config["split"]), cfg.seed,
                                   cfg.noises_per_clean, cfg.split_noise)
    for job in build.file_jobs(as_rows(mixtures), Path(cfg.out_dir), config["rows_per_file"]):
        build.write_patch_file(job["mixtures"], job["path"], cfg.dtype)
    return len(mixtures)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--clean", default=str(DEV / "speech"))
    parser.add_argument("--noise", default=str(DEV / "noise"))
    parser.add_argument("--k", type=int, default=2, help="noises per clean utterance at 1x")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_build_"))

    def config(name, k):
        # Noise shared across splits so K noises per utterance exist in every split.
        return build.BuildConfig(args.clean, args.noise, str(work / name), noises_per_clean=k, split_noise=False)

    results = {"machine": f"{os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB"}
    # The loop as a user would write it (torch's default intra-op threads: it uses
    # more than one core inside torch.stft), and pinned to one thread.
    loops = {}
    for name, threads in (("loop", torch.get_num_threads()), ("loop_1_thread", 1)):
        torch.set_num_threads(threads)
        with PeakMemory() as mem:
            t0 = time.time()
            n_loop = single_process_build(config(name, args.k))
            loops[name] = time.time() - t0
        results[name] = {"mixtures": n_loop, "seconds": loops[name], "torch_threads": threads,
                         "peak_pss_mib": mem.peak / 2**20}
        shutil.rmtree(work / name)

    import ray

    from speech_enhance.raysetup import init_ray

    t0 = time.time()
    init_ray(num_cpus=2)
    results["ray_start_seconds"] = time.time() - t0
    # The first Ray build starts the worker processes; the second 1x build is the one
    # recorded, so both recorded runs start from the same warm state.
    for name, k in (("ray_1x", args.k), ("ray_1x", args.k), (f"ray_{args.scale}x", args.k * args.scale)):
        with PeakMemory() as mem:
            info = build.build_dataset(config(name, k), log=lambda *_: None)
        results[name] = {
            "mixtures": info["totals"]["mixtures"],
            "patches": info["totals"]["patches"],
            "seconds": info["seconds"],
            "mixture_seconds_per_second": info["mixture_seconds_per_second"],
            "peak_pss_mib": mem.peak / 2**20,
        }
        if name == "ray_1x":
            audio_s = info["totals"]["mixture_seconds"]
            for loop_name, seconds in loops.items():
                results[loop_name]["mixture_seconds_per_second"] = audio_s / seconds
        shutil.rmtree(work / name)
    ray.shutdown()
    big = f"ray_{args.scale}x"
    results["speedup_ray_vs_loop"] = results["ray_1x"]["mixture_seconds_per_second"] / results["loop"]["mixture_seconds_per_second"]
    results["speedup_ray_vs_loop_1_thread"] = (
        results["ray_1x"]["mixture_seconds_per_second"] / results["loop_1_thread"]["mixture_seconds_per_second"]
    )
    results["memory_ratio_4x_vs_1x"] = results[big]["peak_pss_mib"] / results["ray_1x"]["peak_pss_mib"]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
