"""The deployment's shape: the API under uvicorn, a Celery worker process, a real Redis broker, and the job
store in SQLite or a real PostgreSQL; each a separate process, as in docker compose."""

import os
import subprocess
import sys

import pytest

from tests.integration.conftest import create_key, free_port, stop, wait_healthy
from tests.integration.jobcheck import submit_and_check


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'vdc.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def deployment(tmp_path, redis_url, database_url):
    env = os.environ | {
        "VDC_DATA_DIR": str(tmp_path / "data"),
        "VDC_BROKER_URL": redis_url,
        "VDC_DATABASE_URL": database_url,
    }
    port = free_port()
    log = tmp_path / "processes.log"
    with open(log, "wb") as out:
        api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "service.api.asgi:app", "--port", str(port), "--log-level", "warning"],
            env=env, stdout=out, stderr=out,
        )
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.tasks", "worker", "--pool", "solo",
             "--loglevel", "warning"],
            env=env, stdout=out, stderr=out,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(api, f"{base}/readyz", log)
        yield base, create_key(env)
    finally:
        stop(worker)
        stop(api)


def test_job_runs_on_a_celery_worker_over_redis(deployment, tmp_path):
    base, auth = deployment
    submit_and_check(base, auth, tmp_path)
