"""Build throughput: Ray Data (2 CPUs) against a single-process loop doing the same work.

Both run the same functions (probe_file, plan_mixtures, write_patch_file) and write the
same patch files; the loop does it all in one process. The Ray build also writes its
manifest.parquet and dataset.json, which the loop skips. A third build runs the same work
on a ``multiprocessing`` pool of two processes without Ray (probe and write tasks cut as
Ray's are, one of each per process): the most any two processes get out of this machine, so
Ray's own cost is Ray against the pool, and the machine's is the pool against the loop.

    python bench/build_throughput.py [--clean DIR --noise DIR] [--k 2] [--scale 4] [--repeat 5]
                                     [--repeat-scaled 3] [--variety]

Defaults use ../shared/data/dev (real recordings). Speed and memory are measured in
separate runs:
- speed: ``--repeat`` rounds at 1x, each timing the loop (torch's default threads), the
  loop on one torch thread, the pool and the Ray build, in that order, after one
  untimed loop build and one untimed pool build; Ray is started for its run (and warmed
  by one untimed 1x build) and shut down after it, so the others run without it.
  Interleaving puts the machine's drift on all four alike. Medians are compared, and
  the ratio of each round is printed too. Each loop also reports ``cpus_busy``, its
  process's CPU time over its wall time (torch's OpenMP threads count while they spin).
  Then ``--repeat-scaled`` rounds of the same at ``--scale`` times the mixtures (3,808
  by default; ~15 s for Ray here, against ~4 s at 1x): throughput on a build nearer
  the size of a real one, where the fixed costs of each build (probe, plan, starting
  Ray Data's execution and its tasks) weigh less.
  Every run starts after the previous run's output is deleted and flushed (``sync``,
  then a 1 s pause): writing into a disk still busy discarding the last run's
  gigabytes made timings vary by 20%.
- memory: one more run of each, sampling the summed PSS of the driver and every
  process below it (Ray's GCS, raylet, workers and object store are children of a
  local ``ray.init``) every 0.2 s. Reading PSS of Ray's ~20 processes takes ~45 ms, a
  fifth of a CPU at that rate, which is why the timed runs do without it. Ray is
  measured at 1x and at ``--scale``, for the memory ratio.
Results go to stdout as JSON; copy them into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.pool
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import torch

from speech_enhance.pipeline import allocator, build, ray_fast_start
from speech_enhance.pipeline.plan import as_rows

HERE = Path(__file__).resolve().parent
# --variety: the variety options a varied training set uses (README, "Dataset variety").
VARIETY = {"snr_range": (-5.0, 20.0), "simulate_rooms": 0.5, "mic_eq": 0.3, "clip": 0.05,
           "noise_transforms": 0.5, "synthetic_noise": 0.3}
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


def planned_jobs(cfg: build.BuildConfig, probe: Callable[[list[dict]], list[dict]]) -> tuple[list[dict], int]:
    """The build's file jobs and mixture count, planned as the build does; ``probe``
    turns the input items into probe rows."""
    config = cfg.effective()
    items, skipped = build.list_inputs(cfg)
    clean, noise, _, rirs = build.sort_probed(cfg, probe(items), skipped)
    mixtures, _, _ = build.plan(cfg, clean, noise, rirs)
    return build.file_jobs(as_rows(mixtures), Path(cfg.out_dir), config["rows_per_file"]), len(mixtures)


def write_files(jobs: list[dict], dtype: str) -> None:
    for job in jobs:
        build.write_patch_file(job["mixtures"], job["path"], dtype)


def single_process_build(cfg: build.BuildConfig) -> int:
    """The whole build in one process, no Ray: returns mixture count."""
    jobs, count = planned_jobs(cfg, build.probe_files)
    write_files(jobs, cfg.dtype)
    return count


def _pool_worker_setup() -> None:
    # As in Ray's workers: one torch thread per process, freed memory kept.
    torch.set_num_threads(1)
    allocator.keep_freed_memory()


def pool_build(cfg: build.BuildConfig, pool: multiprocessing.pool.Pool, processes: int) -> int:
    """The build on ``processes`` plain processes, no Ray: returns mixture count."""
    def probe(items: list[dict]) -> list[dict]:
        parts = pool.map(build.probe_files, build.probe_groups(items, processes), chunksize=1)
        return [row for part in parts for row in part]

    jobs, count = planned_jobs(cfg, probe)
    pool.starmap(write_files, [(task, cfg.dtype) for task in build.write_tasks(jobs, processes)], chunksize=1)
    return count


def ray_speedups(samples: dict[str, list[float]]) -> dict:
    """Ray's speed-up over each other build of the timed rounds: the ratio of the
    medians, and the ratio of each round (runs minutes apart share the machine's
    state), for the spread."""
    out = {}
    for base in ("loop", "loop_1_thread", "pool"):
        out[f"speedup_ray_vs_{base}"] = statistics.median(samples[base]) / statistics.median(samples["ray"])
        out[f"speedup_ray_vs_{base}_per_round"] = [
            b / r for b, r in zip(samples[base], samples["ray"], strict=True)]
    return out


def compare_scaled(samples: dict[str, list[float]], ray_info: dict) -> dict:
    """Medians, throughput and speed-ups of the timed rounds at scale (``ray_info``:
    the scaled Ray build's results, for its mixture count and seconds of audio)."""
    seconds = {name: statistics.median(values) for name, values in samples.items()}
    return {"mixtures": ray_info["mixtures"], "seconds": seconds, "seconds_samples": samples,
            "mixture_seconds_per_second": {name: ray_info["mixture_seconds"] / s for name, s in seconds.items()},
            **ray_speedups(samples)}


def settle() -> None:
    """Let the disk finish the previous run's writes and discards before timing."""
    os.sync()
    time.sleep(1.0)


def main():
    # As the CLI does: the loops here run with the malloc settings of Ray's workers.
    allocator.keep_freed_memory()
    parser = argparse.ArgumentParser()
    parser.add_argument("--clean", default=str(DEV / "speech"))
    parser.add_argument("--noise", default=str(DEV / "noise"))
    parser.add_argument("--k", type=int, default=2, help="noises per clean utterance at 1x")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds at 1x (each: both loops, pool, Ray)")
    parser.add_argument("--repeat-scaled", type=int, default=3, help="timed rounds at --scale times the mixtures")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--variety", action="store_true",
                        help="every build with the variety options on (VARIETY: reverberation, SNR range, ...)")
    parser.add_argument("--no-fast-start", action="store_true",
                        help="skip the Ray build with SPEECH_ENHANCE_RAY_DATA_FAST_START=1 in each round")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_build_"))
    import ray

    from speech_enhance.pipeline.cluster import init_ray

    def config(name, k):
        # Noise shared across splits so K noises per utterance exist in every split.
        return build.BuildConfig(args.clean, args.noise, str(work / name), noises_per_clean=k, split_noise=False,
                                 **(VARIETY if args.variety else {}))

    def timed(name: str, k: int, run) -> tuple[float, float]:  # noqa: ANN001
        """Wall seconds of one run, and this process's CPU-s in it: all of a loop's, only
        the driver's for the pool and Ray."""
        settle()
        t0, cpu0 = time.time(), time.process_time()
        run(config(name, k))
        seconds, cpu = time.time() - t0, time.process_time() - cpu0
        shutil.rmtree(work / name)
        return seconds, cpu

    def peak_mib(name: str, k: int, run) -> tuple[float, object]:  # noqa: ANN001
        settle()
        with PeakMemory() as mem:
            result = run(config(name, k))
        shutil.rmtree(work / name)
        return mem.peak / 2**20, result

    def ray_build(cfg: build.BuildConfig) -> dict:
        return build.build_dataset(cfg, log=lambda *_: None)

    def start_ray() -> float:
        t0 = time.time()
        init_ray(num_cpus=2, dashboard=False)  # as `speech-enhance build` starts it
        started = time.time() - t0
        # The first build starts the worker processes and is not timed, so every timed
        # build starts from the same warm state.
        ray_build(config("warm-up", args.k))
        shutil.rmtree(work / "warm-up")
        return started

    # The loop as a user would write it (torch's default intra-op threads: it uses more
    # than one core inside torch.stft), and pinned to one thread.
    loop_threads = {"loop": torch.get_num_threads(), "loop_1_thread": 1}
    pool = multiprocessing.get_context("spawn").Pool(2, initializer=_pool_worker_setup)
    def run_pool(cfg: build.BuildConfig) -> int:
        return pool_build(cfg, pool, 2)
    for name, run in (("warm-up", single_process_build), ("warm-up", run_pool)):
        run(config(name, args.k))  # untimed, like Ray's first build
        shutil.rmtree(work / name)
    ray_start = []
    ray_variants = [] if args.no_fast_start else ["ray_fast_start"]

    def timed_rounds(k: int, repeat: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
        """Seconds per run of each build, ``repeat`` rounds, and the loops' CPU-s per run.
        Rounds interleave the four runs, so that the machine's drift (the loop's time
        varied 7.5-9.0 s between runs an hour apart) falls on all of them alike. Ray is
        shut down while the others run."""
        samples = {name: [] for name in (*loop_threads, "pool", "ray", *ray_variants)}
        loop_cpu = {name: [] for name in loop_threads}
        for _ in range(repeat):
            for name, threads in loop_threads.items():
                torch.set_num_threads(threads)
                seconds, cpu = timed(name, k, single_process_build)
                samples[name].append(seconds)
                loop_cpu[name].append(cpu)
            samples["pool"].append(timed("pool", k, run_pool)[0])
            ray_start.append(start_ray())
            samples["ray"].append(timed("ray", k, ray_build)[0])
            ray.shutdown()
            for variant in ray_variants:  # the opt-in Ray Data workaround, same round
                os.environ[ray_fast_start.SWITCH] = "1"
                start_ray()
                samples[variant].append(timed(variant, k, ray_build)[0])
                ray.shutdown()
                del os.environ[ray_fast_start.SWITCH]
        return samples, loop_cpu

    samples, loop_cpu = timed_rounds(args.k, args.repeat)
    scaled, _ = timed_rounds(args.k * args.scale, args.repeat_scaled)
    pool.close()
    pool.join()
    results = {"machine": f"{os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB",
               "ray_start_seconds": statistics.median(ray_start),
               "pool": {"processes": 2, "seconds": statistics.median(samples["pool"]),
                        "seconds_samples": samples["pool"]}}
    for name, threads in loop_threads.items():
        torch.set_num_threads(threads)
        peak, n_loop = peak_mib(name, args.k, single_process_build)
        # CPU-s per wall second of the 1x runs: how many CPUs the loop kept busy (torch's
        # OpenMP threads spin between parallel regions, which counts as busy).
        cpus_busy = [c / s for c, s in zip(loop_cpu[name], samples[name], strict=True)]
        results[name] = {"mixtures": n_loop, "seconds": statistics.median(samples[name]),
                         "seconds_samples": samples[name], "torch_threads": threads, "peak_pss_mib": peak,
                         "cpus_busy": statistics.median(cpus_busy)}
    start_ray()
    big = f"ray_{args.scale}x"
    for name, k, timings in (("ray_1x", args.k, samples["ray"]), (big, args.k * args.scale, scaled["ray"])):
        peak, info = peak_mib(name, k, ray_build)
        seconds = statistics.median(timings)  # of the timed runs, not this sampled one
        results[name] = {
            "mixtures": info["totals"]["mixtures"],
            "patches": info["totals"]["patches"],
            "mixture_seconds": info["totals"]["mixture_seconds"],
            "seconds": seconds,
            "seconds_samples": timings,
            "mixture_seconds_per_second": info["totals"]["mixture_seconds"] / seconds,
            "peak_pss_mib": peak,
        }
    for loop_name in loop_threads:  # the loops render the same 1x mixtures
        results[loop_name]["mixture_seconds_per_second"] = (
            results["ray_1x"]["mixture_seconds"] / results[loop_name]["seconds"])
    ray.shutdown()
    results.update(ray_speedups(samples))  # Ray against the loops, and its cost over the pool
    for variant in ray_variants:
        results[variant] = {"seconds_1x": statistics.median(samples[variant]), "seconds_1x_samples": samples[variant],
                            f"seconds_{args.scale}x": statistics.median(scaled[variant]),
                            f"seconds_{args.scale}x_samples": scaled[variant]}
    # What the machine allows two processes at all.
    results["speedup_pool_vs_loop_1_thread"] = results["loop_1_thread"]["seconds"] / results["pool"]["seconds"]
    results["memory_ratio_4x_vs_1x"] = results[big]["peak_pss_mib"] / results["ray_1x"]["peak_pss_mib"]
    results[f"timed_{args.scale}x"] = compare_scaled(scaled, results[big])
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
