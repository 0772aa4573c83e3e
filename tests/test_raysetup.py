"""What init_ray gives the job's Ray workers."""

import os

import pytest


@pytest.mark.timeout(60)
def test_workers_run_openmp_passive_unless_the_user_chose(ray_session):
    @ray_session.remote
    def wait_policy() -> str | None:
        return os.environ.get("OMP_WAIT_POLICY")

    assert ray_session.get(wait_policy.remote()) == os.environ.get("OMP_WAIT_POLICY", "PASSIVE")


@pytest.mark.timeout(60)
def test_task_count_keeps_every_cpu_busy_and_bounds_items_per_task(ray_session):
    from speech_enhance.raysetup import task_count

    assert ray_session.cluster_resources()["CPU"] == 2
    assert task_count(23, 8) == 4  # two tasks per CPU
    assert task_count(3, 8) == 3  # never more tasks than items
    assert task_count(1000, 8) == 125  # at most 8 items per task, for nodes yet to come
    assert task_count(0, 8) == 1
