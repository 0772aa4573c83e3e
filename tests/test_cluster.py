"""speech_enhance.pipeline.cluster: what init_ray gives Ray's workers, and cutting work into tasks."""

import os
import time

import pytest


@pytest.mark.timeout(60)
def test_workers_run_openmp_passive_and_keep_freed_memory_unless_the_user_chose(ray_session):
    from speech_enhance.pipeline import allocator

    names = ["OMP_WAIT_POLICY", *allocator.SETTINGS]

    @ray_session.remote
    def settings() -> list[str | None]:
        return [os.environ.get(name) for name in names]

    expected = [os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), *allocator.worker_env().values()]
    assert ray_session.get(settings.remote()) == expected
    assert expected[1:] == [os.environ.get(name, str(value)) for name, (_, value) in allocator.SETTINGS.items()]


@pytest.mark.timeout(60)
def test_worker_processes_do_not_warn_about_hidden_progress_bars(ray_session):
    """Ray Data executions also run in worker processes (a split coordinator, an actor that
    starts one): they need no warning about the progress bars a command hides, as the driver."""
    from speech_enhance.pipeline.cluster import RAY_DATA_BARS_OFF_WARNING

    @ray_session.remote
    class Probe:
        def would_warn_that_bars_are_hidden(self) -> bool:
            from ray.util.debug import log_once

            return log_once(RAY_DATA_BARS_OFF_WARNING)

    assert not ray_session.get(Probe.remote().would_warn_that_bars_are_hidden.remote())


def test_ray_fast_start_is_off_unless_asked_and_leaves_other_rays_alone(monkeypatch):
    """The one workaround that touches Ray's internals is opt-in, and only takes over
    constants that still have the values it was written for."""
    from speech_enhance.pipeline import ray_fast_start as fast

    streaming_executor_state = pytest.importorskip("ray.data._internal.execution.streaming_executor_state")
    ResourceManager = pytest.importorskip("ray.data._internal.execution.resource_manager").ResourceManager
    if not hasattr(streaming_executor_state, "WAIT_FOR_TASK_COMPLETION_TIMEOUT_S"):
        monkeypatch.setenv(fast.SWITCH, "1")
        assert not fast.install_if_requested()  # another Ray: the workaround does nothing
        return

    monkeypatch.setattr(fast, "_state", {"installed": False, "wait_module": None})
    monkeypatch.delenv(fast.SWITCH, raising=False)
    original = ResourceManager.__dict__.get("GLOBAL_LIMITS_UPDATE_INTERVAL_S")
    assert not fast.install_if_requested()
    assert ResourceManager.__dict__.get("GLOBAL_LIMITS_UPDATE_INTERVAL_S") is original

    monkeypatch.setenv(fast.SWITCH, "1")
    # A Ray whose constant has another value is left as it is.
    monkeypatch.setattr(streaming_executor_state, "WAIT_FOR_TASK_COMPLETION_TIMEOUT_S", 0.25)
    assert not fast.install_if_requested()
    assert ResourceManager.__dict__.get("GLOBAL_LIMITS_UPDATE_INTERVAL_S") is original

    monkeypatch.setattr(streaming_executor_state, "WAIT_FOR_TASK_COMPLETION_TIMEOUT_S", fast.RAY_WAIT_S)
    monkeypatch.setattr(ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S", fast.RAY_REFRESH_S)
    if original != fast.RAY_REFRESH_S:
        pytest.skip("this Ray's constants differ: the workaround does nothing here, as it should")
    assert fast.install_if_requested()
    assert isinstance(ResourceManager.__dict__["GLOBAL_LIMITS_UPDATE_INTERVAL_S"], property)


def test_fast_start_polls_fast_at_first_then_as_ray_would(monkeypatch):
    from types import SimpleNamespace

    from speech_enhance.pipeline import ray_fast_start as fast

    module = SimpleNamespace(WAIT_FOR_TASK_COMPLETION_TIMEOUT_S=fast.RAY_WAIT_S)
    monkeypatch.setattr(fast, "_state", {"installed": True, "wait_module": module})
    starting = SimpleNamespace(_global_limits=SimpleNamespace(cpu=0))
    monkeypatch.delenv(fast.SWITCH, raising=False)  # installed, then switched off: Ray's own values
    assert fast.refresh_interval(starting) == fast.RAY_REFRESH_S
    assert module.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S == fast.RAY_WAIT_S
    monkeypatch.setenv(fast.SWITCH, "1")
    assert fast.refresh_interval(starting) == fast.POLL_S
    assert module.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S == fast.POLL_S
    assert fast.refresh_interval(SimpleNamespace()) == fast.POLL_S  # no budget read yet
    # Still no CPUs after POLL_FOR_S: the coordinator actor is itself starting.
    long_waiting = SimpleNamespace(_global_limits=SimpleNamespace(cpu=0))
    setattr(long_waiting, fast._MARK, time.monotonic() - fast.POLL_FOR_S)
    assert fast.refresh_interval(long_waiting) == fast.SLOW_POLL_S
    assert module.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S == fast.RAY_WAIT_S
    fast.refresh_interval(starting)
    assert fast.refresh_interval(SimpleNamespace(_global_limits=SimpleNamespace(cpu=2))) == fast.RAY_REFRESH_S
    assert module.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S == fast.RAY_WAIT_S  # Ray's own once the budget is known


@pytest.mark.timeout(60)
def test_task_count_keeps_every_cpu_busy_and_bounds_items_per_task(ray_session):
    from speech_enhance.pipeline.cluster import task_count

    assert ray_session.cluster_resources()["CPU"] == 2
    assert task_count(23, 16, 1) == 2  # one task per CPU
    assert task_count(23, 8, 2) == 4  # or two
    assert task_count(3, 8, 2) == 3  # never more tasks than items
    assert task_count(1000, 16, 1) == 64  # at most 16 items per task, for nodes yet to come,
    assert task_count(40, 16, 1) == 4  # and a multiple of the CPU count
    assert task_count(0, 16, 1) == 1


def test_balanced_groups_deal_costly_items_apart():
    from speech_enhance.pipeline.cluster import balanced_groups

    # Cheap items first, costly ones last (speech, then noise): consecutive runs would
    # put all the costly ones in one group.
    costs = [1] * 8 + [10] * 4
    groups = balanced_groups(costs, 2)
    assert [sum(costs[i] for i in g) for g in groups] == [24, 24]
    assert sorted(i for g in groups for i in g) == list(range(len(costs)))
    assert all(g == sorted(g) for g in groups)
    assert balanced_groups([0, 0, 0], 3) == [[0], [1], [2]]  # zero costs: still none empty
    assert balanced_groups([5.0], 3) == [[0]]
    assert balanced_groups([], 3) == []


def test_contiguous_groups_balance_cost_and_keep_order():
    from speech_enhance.pipeline.cluster import contiguous_groups

    assert contiguous_groups([1.0] * 23, 4) == [range(0, 6), range(6, 11), range(11, 17), range(17, 23)]
    # Cheap items at the end (a split's remainder, small val/test files) share a run.
    assert contiguous_groups([10, 10, 10, 10, 10, 10, 5, 5, 1, 1, 1, 1], 4) == [
        range(0, 2), range(2, 4), range(4, 6), range(6, 12)]
    assert contiguous_groups([100, 1, 1, 1], 2) == [range(0, 1), range(1, 4)]
    assert contiguous_groups([1, 1, 1, 100], 2) == [range(0, 3), range(3, 4)]
    assert contiguous_groups([5.0], 3) == [range(0, 1)]  # never an empty run
    assert contiguous_groups([], 3) == []
    for costs, n in (([3, 1, 4, 1, 5, 9, 2, 6], 3), ([1] * 7, 7), ([0, 0, 0, 5], 2)):
        runs = contiguous_groups(costs, n)
        assert [i for r in runs for i in r] == list(range(len(costs)))
        assert len(runs) == min(n, len(costs)) and all(len(r) for r in runs)


def test_local_ray_without_dashboard_also_drops_metrics_unless_the_user_chose(monkeypatch):
    from speech_enhance.pipeline.cluster import local_ray_options

    assert local_ray_options(dashboard=True) == {}
    monkeypatch.delenv("RAY_enable_metrics_collection", raising=False)
    assert local_ray_options(dashboard=False) == {
        "include_dashboard": False, "_system_config": {"enable_metrics_collection": False}}
    monkeypatch.setenv("RAY_enable_metrics_collection", "1")
    assert local_ray_options(dashboard=False) == {"include_dashboard": False}


@pytest.mark.timeout(120)
def test_a_local_ray_starts_without_dashboard_and_runs_tasks(tmp_path):
    """This Ray accepts the options (an unknown system-config key fails ray.init), and
    no dashboard answers. Its own process: the test session's Ray stays as it is."""
    import json
    import subprocess
    import sys

    script = (
        "import json, ray\n"
        "from speech_enhance.pipeline.cluster import init_ray\n"
        "init_ray(num_cpus=1, dashboard=False)\n"
        "one = ray.get(ray.remote(lambda: 1).remote())\n"
        "webui = ray.init(ignore_reinit_error=True).dashboard_url  # the running Ray's context\n"
        "print(json.dumps({'webui': webui, 'one': one}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=110,
                          env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["one"] == 1 and not result["webui"], result


@pytest.mark.timeout(60)
def test_hidden_progress_bars_do_not_warn(ray_session):
    """Training and evaluation turn Ray Data's bars off on purpose; Ray's warning that
    they are off (and how to turn them on) would only confuse their output."""
    import logging

    from ray.util.debug import reset_log_once

    from speech_enhance.pipeline.cluster import RAY_DATA_BARS_OFF_WARNING, hide_ray_data_progress

    context = ray_session.data.DataContext.get_current()
    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    logger = logging.getLogger("ray.data._internal.progress")
    logger.addHandler(handler)
    try:
        reset_log_once(RAY_DATA_BARS_OFF_WARNING)
        context.enable_progress_bars = False
        ray_session.data.range(2).take_all()
        if not any("Progress bars disabled" in w for w in warnings):
            pytest.skip("this Ray does not warn about hidden progress bars: nothing to hide")

        warnings.clear()
        reset_log_once(RAY_DATA_BARS_OFF_WARNING)
        hide_ray_data_progress()
        ray_session.data.range(2).take_all()
        assert not context.enable_progress_bars
        assert not [w for w in warnings if "Progress bars" in w], warnings
    finally:
        logger.removeHandler(handler)
        context.enable_progress_bars = True
