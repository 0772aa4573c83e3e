"""Connecting to Ray: a local instance by default, or an existing cluster."""

from __future__ import annotations

import bisect
import heapq
import itertools
import logging
import math
import os
import time
from types import ModuleType

import ray

from speech_enhance import allocator

# The log_once key of Ray 2.60's warning that an execution runs without progress bars.
RAY_DATA_BARS_OFF_WARNING = "ray_data_progress_manager_disabled"


def worker_runtime_env() -> dict:
    """The environment of this job's Ray workers.

    OpenMP threads (torch's CPU kernels) spin-wait after each parallel region by
    default. In a Ray worker that shares its CPUs with Ray Data's readers and Ray's own
    processes, that spinning takes their time and the training threads then wait on
    the data: one Train worker with 2 threads on 2 CPUs ran at 8.1 patches/s spinning
    and 8.6 passive (BENCHMARKS.md). glibc's malloc keeps freed memory for reuse
    (:mod:`speech_enhance.allocator`). A value already in the environment wins.

    Every worker process also runs :func:`setup_worker_process` when it starts."""
    env = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), **allocator.worker_env()}
    return {"env_vars": env, "worker_process_setup_hook": f"{__name__}.setup_worker_process"}


def setup_worker_process() -> None:
    """What the driver gets from :func:`init_ray`, for Ray Data executions that run in a
    worker process: Ray Train's datasets are executed, once per epoch, by a
    ``SplitCoordinator`` actor rather than by the driver. Such an execution starts at
    full width (:func:`start_ray_data_at_full_width`) and, when the driver hid the
    progress bars (:func:`hide_ray_data_progress`; its DataContext travels with the
    dataset), does not warn that they are hidden."""
    start_ray_data_at_full_width()
    _mark_bars_off_warning_given()


def init_ray(address: str | None = None, num_cpus: int | None = None, dashboard: bool = True) -> None:
    """Start or attach to Ray once per process.

    ``address`` ("auto" or "HOST:PORT") or the ``RAY_ADDRESS`` environment variable
    attaches to a running cluster (``ray start``/``ray up``); otherwise a local Ray is
    started with this machine's CPUs (or ``num_cpus``). Token authentication stays at
    Ray's default (on); a local instance creates its own token. ``dashboard=False``
    starts a local Ray without the dashboard and metrics export (:func:`local_ray_options`)."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING, runtime_env=worker_runtime_env())
    else:
        ray.init(num_cpus=num_cpus, logging_level=logging.WARNING, runtime_env=worker_runtime_env(),
                 **local_ray_options(dashboard))
    # Quieter Ray Data logs; progress bars stay on.
    ray.data.DataContext.get_current().enable_progress_bars = True
    start_ray_data_at_full_width()


def hide_ray_data_progress() -> None:
    """Turn Ray Data's progress bars off in this process, for commands whose own lines
    report progress (training's line per epoch; evaluation). Ray warns the first time an
    execution runs without bars and says how to turn them back on; here they are off on
    purpose, so that warning is marked as given."""
    ray.data.DataContext.get_current().enable_progress_bars = False
    _mark_bars_off_warning_given()


def _mark_bars_off_warning_given() -> None:
    from ray.util.debug import log_once

    log_once(RAY_DATA_BARS_OFF_WARNING)


def local_ray_options(dashboard: bool) -> dict:
    """Extra ``ray.init`` options for a local Ray.

    With ``dashboard=False`` neither the dashboard nor the metrics export runs. The
    dataset build reads neither (progress goes to the terminal, results to
    dataset.json), and on a 2-vCPU machine their processes slowed builds (BENCHMARKS.md,
    session 11). Task events stay on: ``ray.timeline()`` reads them.
    ``RAY_enable_metrics_collection`` in the environment wins over the metrics setting.

    Training and tuning need the dashboard: it serves Ray's state API, through which
    Ray Train learns that a worker died (its placement-group cleaner polls it, and logs
    a warning every few seconds when it cannot)."""
    if dashboard:
        return {}
    options: dict = {"include_dashboard": False}
    if "RAY_enable_metrics_collection" not in os.environ:
        options["_system_config"] = {"enable_metrics_collection": False}
    return options


# How often (s) a Ray Data execution re-reads the CPUs it may use until it knows them:
# every RAY_DATA_COLD_START_POLL_S for its first RAY_DATA_COLD_START_S, then every
# RAY_DATA_LIMITS_REFRESH_S (a coordinator actor that is itself still starting).
RAY_DATA_COLD_START_POLL_S = 0.01
RAY_DATA_COLD_START_S = 0.5
RAY_DATA_LIMITS_REFRESH_S = 0.1
# Ray 2.60's own values of the constants this module works around.
RAY_LIMITS_UPDATE_INTERVAL_S = 1  # ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S
RAY_WAIT_FOR_TASKS_S = 0.1  # streaming_executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S
_COLD_START_MARK = "_speech_enhance_cold_start_began"
# The module whose wait for finished tasks limits_refresh_interval sets; None where
# Ray's constant is not the one measured here.
_task_wait_module: ModuleType | None = None


def start_ray_data_at_full_width() -> None:
    """Let Ray Data executions started from this process use the cluster's CPUs from
    their first hundredth of a second instead of their second second (called by
    :func:`init_ray` in the driver and, as a setup hook, in every worker process).

    Ray 2.60's streaming executor learns its CPU budget from the autoscaling coordinator
    actor by an asynchronous call whose answer it first reads on the next refresh, and
    it refreshes once a second (``ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S``, a
    private constant). Until then the budget is zero and only one task runs, so every
    execution spends its first second on one CPU: 16 one-second tasks on 8 CPUs took
    3.35 s instead of 2.4 s, the dataset build's write phase lost about a second of
    one of its two CPUs, and each training epoch's data (398 patches) took 0.98 s
    to arrive instead of 0.68-0.77 s (BENCHMARKS.md).

    The constant becomes a property (:func:`limits_refresh_interval`): a fast poll
    while the executor's known CPU budget is zero, Ray's 1 s once it has one.
    Refreshing every 0.1 s for a whole execution instead (one actor call each) cost two
    CPU-bound training workers 2-4% of their speed, as a training epoch is one long
    execution. A refresh only happens when the executor's scheduling loop comes round,
    and between rounds it waits up to 0.1 s for a task to finish
    (``streaming_executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S``, a module
    constant), so during the poll that wait is shortened too: the dataset build's second
    write task then starts 0.01-0.02 s after the first instead of 0.11 s
    (BENCHMARKS.md, session 14). Only constants that still have the values measured
    here are replaced: a Ray that renames or retunes them is left alone
    (tests/test_raysetup.py notices)."""
    from ray.data._internal.execution import streaming_executor_state
    from ray.data._internal.execution.resource_manager import ResourceManager

    if getattr(ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S", None) == RAY_LIMITS_UPDATE_INTERVAL_S:
        ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S = property(limits_refresh_interval)
    if getattr(streaming_executor_state, "WAIT_FOR_TASK_COMPLETION_TIMEOUT_S", None) == RAY_WAIT_FOR_TASKS_S:
        global _task_wait_module
        _task_wait_module = streaming_executor_state


def limits_refresh_interval(resource_manager: object) -> float:
    """Seconds between an executor's refreshes of its resource budget: every
    ``RAY_DATA_COLD_START_POLL_S`` (with the scheduling loop's wait for finished
    tasks as short) for the first ``RAY_DATA_COLD_START_S`` of an execution whose
    budget's CPUs are not known yet (zero), then every ``RAY_DATA_LIMITS_REFRESH_S``
    until they are, then Ray's own interval.

    Ray reads the interval on every call to ``get_global_limits``, at least once in
    each round of the scheduling loop, which is what lets this set the loop's wait
    too. The wait is one value for the whole process: an execution still polling
    shortens it for any other running beside it (a few extra rounds of their loops),
    and one that knows its budget restores it (the poller then waits as Ray would)."""
    limits = getattr(resource_manager, "_global_limits", None)
    now = time.monotonic()
    if limits is not None and getattr(limits, "cpu", 0) > 0:
        interval, wait = RAY_LIMITS_UPDATE_INTERVAL_S, RAY_WAIT_FOR_TASKS_S
    elif now - vars(resource_manager).setdefault(_COLD_START_MARK, now) < RAY_DATA_COLD_START_S:
        interval = wait = RAY_DATA_COLD_START_POLL_S
    else:
        interval, wait = RAY_DATA_LIMITS_REFRESH_S, RAY_WAIT_FOR_TASKS_S
    if _task_wait_module is not None:
        _task_wait_module.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S = wait
    return interval


def task_count(n_items: int, max_items_per_task: int, tasks_per_cpu: int) -> int:
    """How many Ray tasks to split ``n_items`` work items into.

    ``tasks_per_cpu`` of the cluster's CPUs at least, so that every CPU has work; more
    per CPU even out items of unequal cost, but where each task's start has a price
    (Ray Data starts a task's successor only after its scheduling loop has seen the
    task finish: up to 0.4 s later on a busy 2-CPU machine) one per CPU is faster
    (BENCHMARKS.md). At most ``max_items_per_task`` items per task, though, so that a
    cluster that starts small (``ray up`` with no worker nodes yet) still has tasks left
    for the nodes the autoscaler adds. The count is rounded up to a multiple of the
    CPUs, so that tasks of equal cost end together (3 on 2 CPUs would leave one CPU idle
    while the third runs)."""
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
    of the build while another finishes a long one."""
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
    group lists its items in order.

    The probe's input files differ in cost by 10× or more (a minute of 48 kHz noise
    against a few seconds of 16 kHz speech), and are listed speech first: cut into
    consecutive runs, the last run held all the noise and took 0.094 s against 0.035 s
    for the other (BENCHMARKS.md, session 13)."""
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
