"""``vdc serve`` keeps its promise that a killed worker's job resumes: the worker is started again by the
supervisor, the reconciler requeues the job once its lease runs out, and the new worker finishes it."""

from __future__ import annotations

import os
import signal

import httpx
import pytest

from service.states import FINISHED
from tests.integration.conftest import FAST_RECOVERY, Serve, job_request, training_past, wait_for


@pytest.fixture
def serve(tmp_path):
    server = Serve(tmp_path, FAST_RECOVERY)
    yield server
    server.stop()


def test_a_killed_worker_is_started_again_and_its_job_resumes(serve):
    job_url = serve.submit(job_request(epochs=40))
    wait_for(lambda: training_past(serve.job(job_url), 3), 180, "training to pass epoch 3")
    assert httpx.get(f"{serve.base}/readyz").json()["workers"] == 1
    [worker] = serve.workers()
    os.kill(worker, signal.SIGKILL)  # as the kernel's OOM killer would

    job = wait_for(lambda: (job := serve.job(job_url))["state"] in FINISHED and job, 240, "the job to finish")
    assert job["state"] == "succeeded", job["error"]
    assert job["attempts"] == 2, "the job ran again, on the worker started in the killed one's place"
    log = serve.log.read_text()
    assert "worker vdc0 was killed by SIGKILL" in log and "starting it again" in log
    [restarted] = serve.workers()
    assert restarted != worker
    assert httpx.get(f"{serve.base}/readyz").json()["workers"] == 1, "the new worker reports itself alive"
