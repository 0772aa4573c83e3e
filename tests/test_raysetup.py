"""What init_ray gives the job's Ray workers."""

import os

import pytest


@pytest.mark.timeout(60)
def test_workers_run_openmp_passive_unless_the_user_chose(ray_session):
    @ray_session.remote
    def wait_policy() -> str | None:
        return os.environ.get("OMP_WAIT_POLICY")

    assert ray_session.get(wait_policy.remote()) == os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
