"""Faults survived, with real processes: a worker killed mid-training, Redis restarted with jobs waiting, the
API restarted while a job runs, the database down, all on the fast recovery scale of ``FAST_RECOVERY``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from recipe.pipeline import ARTIFACTS
from tests.integration.conftest import (
    FAST_RECOVERY,
    PostgresServer,
    RedisServer,
    create_key,
    free_port,
    job_request,
    submit,
    training_past,
    wait_for,
    wait_healthy,
)


class Deployment:
    """The API under uvicorn and Celery workers as separate processes, each one a test can kill and restart."""

    def __init__(self, tmp_path: Path, broker_url: str, database_url: str) -> None:
        self.env = os.environ | FAST_RECOVERY | {
            "VDC_DATA_DIR": str(tmp_path / "data"),
            "VDC_BROKER_URL": broker_url,
            "VDC_DATABASE_URL": database_url,
        }
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "processes.log"
        self.processes: list[subprocess.Popen] = []
        self.api: subprocess.Popen | None = None
        self.auth: dict[str, str] = {}

    def _spawn(self, *args: str) -> subprocess.Popen:
        with open(self.log, "ab") as out:
            # A session of its own: a kill reaches the whole process group, as when a machine dies.
            process = subprocess.Popen([sys.executable, "-m", *args], env=self.env, stdout=out, stderr=out,
                                       start_new_session=True)
        self.processes.append(process)
        return process

    def start_api(self) -> None:
        self.api = self._spawn("uvicorn", "service.api.asgi:app", "--port", str(self.port), "--log-level", "warning")
        wait_healthy(self.api, f"{self.base}/healthz", self.log)
        if not self.auth:
            self.auth = create_key(self.env)

    def start_worker(self) -> subprocess.Popen:
        return self._spawn("celery", "-A", "worker.tasks", "worker", "--pool", "solo", "--loglevel", "warning")

    def submit(self, request: dict) -> str:
        return submit(self.base, self.auth, request)

    def get(self, url: str) -> httpx.Response:
        return httpx.get(url, headers=self.auth, timeout=30)

    def wait_finished(self, job_url: str, timeout: float = 240) -> dict:
        def finished() -> dict | None:
            job = self.get(job_url).json()
            return job if job["state"] in ("succeeded", "failed", "cancelled") else None

        return wait_for(finished, timeout, f"{job_url} to finish")

    def close(self) -> None:
        for process in self.processes:  # a warm shutdown would wait for the running job
            if process.poll() is None:
                kill(process)


def kill(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture
def sqlite_over_redis(tmp_path: Path, redis_server: RedisServer) -> Iterator[tuple[Deployment, RedisServer]]:
    deployment = Deployment(tmp_path, redis_server.url, f"sqlite:///{tmp_path / 'vdc.db'}")
    yield deployment, redis_server
    deployment.close()


def test_a_worker_killed_mid_training_hands_its_job_to_another_that_resumes(sqlite_over_redis):
    deployment, _ = sqlite_over_redis
    deployment.start_api()
    first = deployment.start_worker()
    job_url = deployment.submit(job_request(epochs=60))

    wait_for(lambda: training_past(deployment.get(job_url).json(), 3), 120, "training to pass epoch 3")
    kill(first)
    job = deployment.get(job_url).json()
    assert job["state"] == "running", "a job whose worker died is not finished"
    artifacts = deployment.get(f"{job_url}/artifacts")
    assert artifacts.status_code == 409, "nothing of an unfinished run is listed"
    assert deployment.get(f"{job_url}/artifacts/model.onnx").status_code == 409, "nor served"

    deployment.start_worker()
    job = deployment.wait_finished(job_url)
    assert job["state"] == "succeeded", job["error"]
    assert job["attempts"] == 2
    report = deployment.get(f"{job_url}/artifacts/report.json").json()
    assert report["resumed_after_epoch"]["training"] >= 3, "the second worker resumed from a checkpoint"
    assert [m["epoch"] for m in report["history"]["training"]] == list(range(1, 61))
    names = {item["name"] for item in deployment.get(f"{job_url}/artifacts").json()["items"]}
    assert set(ARTIFACTS) <= names


def test_jobs_waiting_in_redis_survive_its_restart_and_run_once(sqlite_over_redis):
    deployment, redis = sqlite_over_redis
    deployment.start_api()
    job_urls = [deployment.submit(job_request(epochs=2)) for _ in range(2)]  # no worker yet: they wait in Redis
    redis.stop()  # without persistence, the messages are gone
    response = httpx.post(f"{deployment.base}/v1/jobs", headers=deployment.auth, json=job_request(2), timeout=60)
    assert response.status_code == 503 and "queue" in response.json()["detail"]
    ready = httpx.get(f"{deployment.base}/readyz", timeout=30)
    assert ready.status_code == 503 and ready.json()["checks"]["broker"] == "unavailable"
    redis.start()
    wait_for(lambda: httpx.get(f"{deployment.base}/readyz", timeout=30).status_code == 200, 60, "readiness")
    deployment.start_worker()
    for job_url in job_urls:
        job = deployment.wait_finished(job_url)
        assert job["state"] == "succeeded", job["error"]
        assert job["attempts"] == 1, "each job ran exactly once"


def test_an_api_restart_keeps_status_and_artifacts(sqlite_over_redis):
    deployment, _ = sqlite_over_redis
    deployment.start_api()
    deployment.start_worker()
    done_url = deployment.submit(job_request(epochs=2))
    assert deployment.wait_finished(done_url)["state"] == "succeeded"
    running_url = deployment.submit(job_request(epochs=60))
    wait_for(lambda: deployment.get(running_url).json()["state"] == "running", 60, "the job to start")
    before = deployment.get(f"{done_url}/artifacts/report.json").content

    assert deployment.api is not None
    kill(deployment.api)
    deployment.start_api()
    assert deployment.get(done_url).json()["state"] == "succeeded"
    assert deployment.get(f"{done_url}/artifacts/report.json").content == before
    job = deployment.wait_finished(running_url)
    assert job["state"] == "succeeded" and job["attempts"] == 1, "the running job went on undisturbed"


@pytest.fixture
def postgres_over_redis(
    tmp_path: Path, redis_server: RedisServer, postgres_server: PostgresServer
) -> Iterator[tuple[Deployment, PostgresServer]]:
    deployment = Deployment(tmp_path, redis_server.url, postgres_server.url)
    yield deployment, postgres_server
    deployment.close()


def test_a_database_outage_is_a_503_that_names_it_and_the_api_recovers_by_itself(postgres_over_redis):
    deployment, postgres = postgres_over_redis
    deployment.start_api()
    listing = f"{deployment.base}/v1/jobs"
    assert httpx.get(listing, headers=deployment.auth).status_code == 200
    postgres.stop()
    for response in (
        httpx.get(listing, headers=deployment.auth, timeout=60),
        httpx.post(listing, headers=deployment.auth, json=job_request(2), timeout=60),
    ):
        assert response.status_code == 503, response.text
        assert "database unavailable" in response.json()["detail"]
        assert "Traceback" not in response.text
    ready = httpx.get(f"{deployment.base}/readyz", timeout=60)
    assert ready.status_code == 503 and ready.json()["checks"]["database"] == "unavailable"
    postgres.start()
    wait_for(lambda: httpx.get(listing, headers=deployment.auth, timeout=30).status_code == 200, 60, "recovery")
    assert httpx.get(f"{deployment.base}/readyz", timeout=30).status_code == 200
    assert json.loads(httpx.get(listing, headers=deployment.auth).text)["total"] == 0
