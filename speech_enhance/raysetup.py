"""Connecting to Ray: a local instance by default, or an existing cluster."""

from __future__ import annotations

import logging
import math
import os

import ray


def worker_runtime_env() -> dict:
    """The environment of this job's Ray workers.

    OpenMP threads (torch's CPU kernels) spin-wait after each parallel region by
    default. In a Ray worker that shares its CPUs with Ray Data's readers and Ray's own
    processes, that spinning takes their time and the training threads then wait on
    the data: one Train worker with 2 threads on 2 CPUs ran at 8.1 patches/s spinning
    and 8.6 passive (BENCHMARKS.md). A value already in the environment wins."""
    return {"env_vars": {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}}


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start or attach to Ray once per process.

    ``address`` ("auto" or "HOST:PORT") or the ``RAY_ADDRESS`` environment variable
    attaches to a running cluster (``ray start``/``ray up``); otherwise a local Ray is
    started with this machine's CPUs (or ``num_cpus``). Token authentication stays at
    Ray's default (on); a local instance creates its own token."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING, runtime_env=worker_runtime_env())
    else:
        # The dashboard also serves Ray's state API, which Ray Train's placement-group
        # cleaner polls; without it every run logs a warning every few seconds.
        ray.init(num_cpus=num_cpus, logging_level=logging.WARNING, runtime_env=worker_runtime_env())
    # Quieter Ray Data logs; progress bars stay on.
    ray.data.DataContext.get_current().enable_progress_bars = True


def task_count(n_items: int, max_items_per_task: int) -> int:
    """How many Ray Data tasks (blocks) to split ``n_items`` work items into.

    Two per CPU of the cluster: Ray Data starts a task's successor only after its
    scheduling loop has seen it finish, 0.1-0.2 s later on a busy 2-CPU machine, so
    a task per item left the CPUs idle for a third of a build (BENCHMARKS.md). At
    most ``max_items_per_task`` items per task, though, so that a cluster that
    starts small (``ray up`` with no worker nodes yet) still has tasks left for the
    nodes the autoscaler adds."""
    cpus = int(ray.cluster_resources().get("CPU", 0))
    return max(1, min(n_items, max(2 * cpus, math.ceil(n_items / max_items_per_task))))
