"""The compose deployment as a user runs it: the image built from the Dockerfile, docker-compose.yml's stack
started, jobs sent over HTTP on 127.0.0.1, and its containers killed and restarted.

It needs Docker, a compose client and the base images (from Docker Hub, or the stand-ins that
``scripts/standin-images.sh`` builds, which ``.ci/run`` runs); without them it skips, and fails under
``VDC_REQUIRE_SERVICES=1``. Leases and the reconciler run on ``FAST_RECOVERY``'s scale of seconds, through an
override file; everything else is the compose file's own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service.states import FINISHED
from tests.integration.conftest import (
    FAST_RECOVERY,
    free_port,
    job_request,
    missing,
    require_binary,
    submit,
    training_past,
    wait_for,
)
from tests.integration.jobcheck import submit_and_check

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "vdc-compose-test"
BUILD_TIMEOUT_S = 1800  # a cold build downloads every dependency; a warm one takes seconds


def compose_command() -> list[str]:
    """``docker compose`` where the plugin is installed, else the standalone ``docker-compose``."""
    docker = require_binary("Docker", ["docker"])
    if subprocess.run([docker, "info"], capture_output=True).returncode != 0:
        missing("the Docker daemon does not answer (as root: scripts/standin-images.sh installs and starts it)")
    if subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    return [require_binary("a compose client", ["docker-compose"])]


class Stack:
    """docker-compose.yml's stack under a project name of its own, with the API published on a free port."""

    def __init__(self, folder: Path) -> None:
        self.command = compose_command()
        override = folder / "fast-recovery.yml"
        override.write_text(yaml.safe_dump(
            {"services": {name: {"environment": FAST_RECOVERY} for name in ("api", "worker")}}
        ))
        self.files = ["-f", str(ROOT / "docker-compose.yml"), "-f", str(override)]
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = os.environ | {"POSTGRES_PASSWORD": "compose-test-password", "VDC_PORT": str(self.port)}
        self.auth: dict[str, str] = {}

    def __call__(self, *args: str, timeout: float = 180, check: bool = True) -> str:
        result = subprocess.run(
            [*self.command, "-p", PROJECT, *self.files, *args], env=self.env, cwd=ROOT, capture_output=True,
            text=True, timeout=timeout,
        )
        if check and result.returncode != 0:
            pytest.fail(f"compose {' '.join(args)} exited with {result.returncode}:\n{result.stderr[-4000:]}")
        return result.stdout

    def containers(self, service: str) -> list[str]:
        return self("ps", "-q", service).split()

    def inspect(self, container: str, template: str) -> str:
        return subprocess.run(["docker", "inspect", "--format", template, container], capture_output=True,
                              text=True, check=True).stdout.strip()

    def wait_ready(self, workers: int, timeout: float = 120) -> None:
        """The API answers /readyz with its database and broker up and at least ``workers`` workers heard."""

        def ready() -> bool:
            try:
                response = httpx.get(f"{self.base}/readyz", timeout=5)
            except httpx.HTTPError:
                return False
            return response.status_code == 200 and response.json()["workers"] >= workers

        wait_for(ready, timeout, f"the API to be ready with {workers} worker(s) heard")

    def job(self, url: str) -> dict[str, Any]:
        return httpx.get(url, headers=self.auth, timeout=30).json()

    def wait_finished(self, url: str, timeout: float = 240) -> dict[str, Any]:
        return wait_for(lambda: (job := self.job(url))["state"] in FINISHED and job, timeout, f"{url} to finish")

    def runner(self, job_url: str, attempt: int) -> str:
        """The worker container that runs ``attempt`` of the job, from the line each worker logs as it starts."""
        line = f"job {job_url.rsplit('/', 1)[1]}: attempt {attempt} started"

        def find() -> str | None:
            for container in self.containers("worker"):
                logs = subprocess.run(["docker", "logs", container], capture_output=True, text=True).stderr
                if line in logs:
                    return container
            return None

        return wait_for(find, 60, f"a worker to log {line!r}")

    def redis_queue_length(self) -> int:
        return int(self("exec", "-T", "redis", "redis-cli", "llen", "celery").strip())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("compose"))
    stack("down", "-v", "--remove-orphans", check=False)  # what an interrupted run left
    started = time.monotonic()
    stack("build", timeout=BUILD_TIMEOUT_S)
    print(f"compose build: {time.monotonic() - started:.0f} s")
    try:
        started = time.monotonic()
        stack("up", "-d")
        stack.wait_ready(workers=1)
        print(f"compose up to ready: {time.monotonic() - started:.0f} s")
        key = stack("exec", "-T", "api", "vdc", "keys", "create", "--owner", "alice").strip()
        stack.auth = {"Authorization": f"Bearer {key}"}
        yield stack
    finally:
        print(stack("logs", "--tail", "40", check=False)[-20000:])
        stack("down", "-v", "--remove-orphans", check=False)


def test_a_job_runs_through_the_stack_and_its_model_runs_in_onnxruntime(stack, tmp_path):
    report = submit_and_check(stack.base, stack.auth, tmp_path)
    assert report["accuracy"]["after"] > 0.5  # a short job on 1200 digits; chance is 0.1


def test_two_workers_run_two_jobs_at_once(stack):
    stack("up", "-d", "--scale", "worker=2")
    stack.wait_ready(workers=2)
    urls = [submit(stack.base, stack.auth, job_request(epochs=8)) for _ in range(2)]
    wait_for(lambda: all(stack.job(url)["state"] == "running" for url in urls), 60, "both jobs to run at once")
    assert {stack.runner(url, 1) for url in urls} == set(stack.containers("worker"))
    for url in urls:
        assert stack.wait_finished(url)["state"] == "succeeded"


def test_killed_workers_jobs_resume_and_a_crashed_worker_is_restarted(stack):
    """``docker kill`` stops a container for good (Docker counts it as stopped by hand): its job goes to the
    other worker once the lease runs out. A worker whose process dies (the OOM killer, a crash) is started
    again by the restart policy, and its job resumes there or on another worker."""
    if os.geteuid() != 0:
        pytest.skip("killing a container's process as the OOM killer does needs root")
    stack("up", "-d", "--scale", "worker=2")
    stack.wait_ready(workers=2)
    url = submit(stack.base, stack.auth, job_request(epochs=100))
    wait_for(lambda: training_past(stack.job(url), 2), 120, "the job to train")
    killed = stack.runner(url, 1)
    subprocess.run(["docker", "kill", killed], check=True, capture_output=True)

    wait_for(lambda: (job := stack.job(url))["attempts"] == 2 and training_past(job, 4), 120, "the second attempt")
    crashed = stack.runner(url, 2)
    assert crashed != killed
    restarts = int(stack.inspect(crashed, "{{.RestartCount}}"))
    os.kill(int(stack.inspect(crashed, "{{.State.Pid}}")), signal.SIGKILL)

    job = stack.wait_finished(url)
    assert job["state"] == "succeeded", job["error"]
    assert job["attempts"] == 3
    assert int(stack.inspect(crashed, "{{.RestartCount}}")) == restarts + 1
    assert stack.inspect(crashed, "{{.State.Status}}") == "running"
    assert stack.inspect(killed, "{{.State.Status}}") == "exited"


def test_jobs_queued_in_redis_survive_its_restart_and_run_once(stack):
    stack("up", "-d", "--scale", "worker=1")
    stack("stop", "worker")
    url = submit(stack.base, stack.auth, job_request(epochs=2))
    assert stack.redis_queue_length() >= 1
    stack("restart", "redis")
    wait_for(lambda: stack("exec", "-T", "redis", "redis-cli", "ping", check=False).strip() == "PONG", 60, "redis")
    assert stack.redis_queue_length() >= 1, "the restart lost the queued message: Redis keeps no append-only file"
    stack("start", "worker")
    job = stack.wait_finished(url)
    assert job["state"] == "succeeded", job["error"]
    assert job["attempts"] == 1


def test_an_api_restart_keeps_jobs_and_artifacts(stack):
    url = submit(stack.base, stack.auth, job_request(epochs=2))
    assert stack.wait_finished(url)["state"] == "succeeded"
    jobs = httpx.get(f"{stack.base}/v1/jobs", headers=stack.auth, timeout=30).json()["items"]
    model = httpx.get(f"{url}/artifacts/model.onnx", headers=stack.auth, timeout=30).content

    stack("restart", "api")
    stack.wait_ready(workers=1)
    assert httpx.get(f"{stack.base}/v1/jobs", headers=stack.auth, timeout=30).json()["items"] == jobs
    assert httpx.get(f"{url}/artifacts/model.onnx", headers=stack.auth, timeout=30).content == model


def test_the_gpu_profile_is_a_valid_configuration():
    """No GPU here to start it, but compose must accept the profile as written."""
    result = subprocess.run(
        [*compose_command(), "-f", str(ROOT / "docker-compose.yml"), "--profile", "gpu", "config"],
        env=os.environ | {"POSTGRES_PASSWORD": "compose-test-password"}, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "gpu-worker" in yaml.safe_load(result.stdout)["services"]
