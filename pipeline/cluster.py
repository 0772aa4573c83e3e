"""Connecting to Ray, and cutting work into Ray tasks.

The bottom of the Ray layer: the dataset build, training, evaluation and the search all
start (or attach to) Ray through :func:`init_ray`, and the build cuts its work with
:func:`task_count`, :func:`contiguous_groups` and :func:`balanced_groups`. Public Ray
APIs only; the one opt-in workaround for a Ray Data limitation lives in
:mod:`speech_enhance.pipeline.ray_fast_start`.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import logging
import math
import os

import ray
from ray.util.debug import log_once

from speech_enhance.pipeline import allocator, ray_fast_start

# The log_once key of Ray Data's warning that an execution runs without progress bars.
RAY_DATA_BARS_OFF_WARNING = "ray_data_progress_manager_disabled"


def worker_runtime_env() -> dict:
    """The runtime environment of this job's Ray workers.

    OpenMP threads (torch's CPU kernels) spin-wait after each parallel region by
    default; in a Ray worker that shares its CPUs with other workers (Ray Data's build
    tasks, the other training workers and their read-ahead threads) that spinning takes
    their time, so workers run passive. glibc's malloc keeps freed memory for reuse
    (:mod:`speech_enhance.pipeline.allocator`). A value already in the environment wins.
    Every worker process runs :func:`setup_worker_process` when it starts."""
    env = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), **allocator.worker_env()}
    if ray_fast_start.requested():
        env[ray_fast_start.SWITCH] = os.environ[ray_fast_start.SWITCH]
    return {"env_vars": env, "worker_process_setup_hook": f"{__name__}.setup_worker_process"}


def setup_worker_process() -> None:
    """Runs in every Ray worker process: Ray Train's datasets are executed once per
    epoch by a coordinator actor, not by the driver, so what the driver set up for Ray
    Data must hold there too: no warning about the progress bars that training hides
    on purpose (:func:`hide_ray_data_progress`; its DataContext travels with the
    dataset), and the opt-in fast start."""
    log_once(RAY_DATA_BARS_OFF_WARNING)
    ray_fast_start.install_if_requested()


def init_ray(address: str | None = None, num_cpus: int | None = None, dashboard: bool = True) -> None:
    """Start or attach to Ray once per process.

    ``address`` ("auto" or "HOST:PORT") or the ``RAY_ADDRESS`` environment variable
    attaches to a running cluster (``ray start``/``ray up``); otherwise a local Ray is
    started with this machine's CPUs (or ``num_cpus``). Token authentication stays at
    Ray's default. ``dashboard=False`` starts a local Ray without the dashboard and
    metrics export (:func:`local_ray_options`)."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING, runtime_env=worker_runtime_env())
    else:
        ray.init(num_cpus=num_cpus, logging_level=logging.WARNING, runtime_env=worker_runtime_env(),
                 **local_ray_options(dashboard))
    ray.data.DataContext.get_current().enable_progress_bars = True
    ray_fast_start.install_if_requested()


def hide_ray_data_progress() -> None:
    """Turn Ray Data's progress bars off in this process, for commands whose own lines
    report progress (training's line per epoch; evaluation). Ray warns the first time an
    execution runs without bars; here they are off on purpose, so that warning is
    marked as given."""
    ray.data.DataContext.get_current().enable_progress_bars = False
    log_once(RAY_DATA_BARS_OFF_WARNING)


def local_ray_options(dashboard: bool) -> dict:
    """Extra ``ray.init`` options for a local Ray.

    With ``dashboard=False`` neither the dashboard nor the metrics export runs: the
    dataset build reads neither, and on a 2-CPU machine their processes slow it
    (BENCHMARKS.md). ``RAY_enable_metrics_collection`` in the environment wins over
    the metrics setting. Training and tuning need the dashboard: it serves Ray's state
    API, through which Ray Train learns that a worker died."""
    if dashboard:
        return {}
    options: dict = {"include_dashboard": False}
    if "RAY_enable_metrics_collection" not in os.environ:
        options["_system_config"] = {"enable_metrics_collection": False}
    return options


def task_count(n_items: int, max_items_per_task: int, tasks_per_cpu: int) -> int:
    """How many Ray tasks to split ``n_items`` work items into.

    ``tasks_per_cpu`` per CPU of the cluster at least, so that every CPU has work; more
    per CPU even out items of unequal cost, but where each task's start has a price
    (Ray Data starts a task's successor only after its scheduling loop has seen the task
    finish) one per CPU is faster. At most ``max_items_per_task`` items per task, so
    that a cluster that starts small still has tasks left for the nodes the autoscaler
    adds. Rounded up to a multiple of the CPUs, so that tasks of equal cost end together."""
    cpus = int(ray.cluster_resources().get("CPU", 0))
    tasks = max(tasks_per_cpu * cpus, math.ceil(n_items / max_items_per_task))
    if cpus:
        tasks = cpus * math.ceil(tasks / cpus)
    return max(1, min(n_items, tasks))


def contiguous_groups(costs: list[float], n_groups: int) -> list[range]:
    """Split items 0..len(costs)-1 into ``n_groups`` runs of consecutive items with about
    equal summed cost (fewer runs if there are fewer items; none empty).

    Ray Data gives each task an equal *count* of items; when items differ in cost
    (utterances differ in length) the CPU that draws the cheap tasks idles at the end
    while another finishes a long one."""
    if not costs:
        return []
    n = max(1, min(n_groups, len(costs)))
    cumulative = list(itertools.accumulate(costs))
    total = cumulative[-1]
    cuts = [0]
    for k in range(1, n):
        target = total * k / n
        # Cut before the first item whose cumulative cost reaches the target, or after
        # it, whichever lands nearer the target ...
        i = bisect.bisect_left(cumulative, target)
        before = cumulative[i - 1] if i > 0 else 0.0
        cut = i + 1 if i < len(costs) and cumulative[i] - target < target - before else i
        # ... leaving at least one item for this run and for each run still to come.
        cuts.append(min(max(cut, cuts[-1] + 1), len(costs) - (n - k)))
    cuts.append(len(costs))
    return [range(a, b) for a, b in itertools.pairwise(cuts)]


def balanced_groups(costs: list[float], n_groups: int) -> list[list[int]]:
    """Deal items 0..len(costs)-1 out to ``n_groups`` groups of about equal summed cost
    (fewer groups if there are fewer items; none empty), for work whose items need not
    stay in order: the costliest item first, each to the group with the least cost so far
    (longest-processing-time first; equal loads go to the group with fewer items). Each
    group lists its items in order. Input files differ in cost by 10× or more (a minute
    of 48 kHz noise against a few seconds of 16 kHz speech)."""
    n = max(1, min(n_groups, len(costs)))
    if not costs:
        return []
    groups: list[list[int]] = [[] for _ in range(n)]
    loads = [(0.0, 0, g) for g in range(n)]  # (cost so far, items so far, group)
    for i in sorted(range(len(costs)), key=lambda i: -costs[i]):
        cost, count, g = heapq.heappop(loads)
        groups[g].append(i)
        heapq.heappush(loads, (cost + costs[i], count + 1, g))
    return [sorted(group) for group in groups]
