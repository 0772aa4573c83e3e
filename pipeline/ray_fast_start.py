"""Opt-in workaround: Ray Data executions that use every CPU from their first 0.01 s.

Off by default; ``SPEECH_ENHANCE_RAY_DATA_FAST_START=1`` turns it on. Ray Data's
streaming executor learns its CPU budget by an asynchronous call that it first reads on
its next refresh, once a second, and until then runs one task: every execution spends
its first second on one CPU, and between rounds its scheduling loop waits up to 0.1 s
for a task to finish. Ray has no public setting for either interval (README, "Known
limitations"), so this module changes two private constants while an execution's
budget is unknown, and only where they still have the values it was written for (Ray
2.58-2.60): with any other Ray it does nothing. The gain is a few tenths of a second
per build or training epoch (BENCHMARKS.md).
"""

from __future__ import annotations

import importlib
import os
import time

SWITCH = "SPEECH_ENHANCE_RAY_DATA_FAST_START"
POLL_S = 0.01  # refresh interval and loop wait while the budget is unknown ...
POLL_FOR_S = 0.5  # ... for at most this long, then
SLOW_POLL_S = 0.1  # until the budget is known (a coordinator actor still starting)
RAY_REFRESH_S, RAY_WAIT_S = 1, 0.1  # Ray's own values of the two constants
_MARK = "_speech_enhance_cold_start_began"
_state: dict = {"installed": False, "wait_module": None}


def requested() -> bool:
    return os.environ.get(SWITCH, "").strip().lower() in ("1", "true", "yes", "on")


def install_if_requested() -> bool:
    """Install the workaround in this process if the switch is on and Ray's internals
    are the ones it knows; returns whether it is installed."""
    if not requested() or _state["installed"]:
        return _state["installed"]
    try:
        executor_state = importlib.import_module("ray.data._internal.execution.streaming_executor_state")
        manager = importlib.import_module("ray.data._internal.execution.resource_manager").ResourceManager
    except (ImportError, AttributeError):
        return False
    if (getattr(manager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S", None) != RAY_REFRESH_S
            or getattr(executor_state, "WAIT_FOR_TASK_COMPLETION_TIMEOUT_S", None) != RAY_WAIT_S):
        return False
    manager.GLOBAL_LIMITS_UPDATE_INTERVAL_S = property(refresh_interval)
    _state.update(installed=True, wait_module=executor_state)
    return True


def refresh_interval(resource_manager: object) -> float:
    """Seconds until the executor's next budget refresh (read on every round of its
    scheduling loop, which is what lets this set the loop's wait too): fast while the
    budget's CPUs are unknown, Ray's own interval once they are known (or once the
    switch is turned off again in this process)."""
    limits = getattr(resource_manager, "_global_limits", None)
    now = time.monotonic()
    if not requested() or (limits is not None and getattr(limits, "cpu", 0) > 0):
        interval, wait = RAY_REFRESH_S, RAY_WAIT_S
    elif now - vars(resource_manager).setdefault(_MARK, now) < POLL_FOR_S:
        interval = wait = POLL_S
    else:
        interval, wait = SLOW_POLL_S, RAY_WAIT_S
    if _state["wait_module"] is not None:
        _state["wait_module"].WAIT_FOR_TASK_COMPLETION_TIMEOUT_S = wait
    return interval
