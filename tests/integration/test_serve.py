"""``vdc serve`` as a user runs it: a real API process and a real Celery worker process over the embedded
broker, a job submitted over HTTP, watched to success, and its model checked in onnxruntime."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from vdcore.data import load_digits
from vdcore.export import onnx_session

VDC = str(Path(sys.executable).with_name("vdc"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def server(tmp_path):
    env = os.environ | {"VDC_DATA_DIR": str(tmp_path / "data")}
    env.pop("VDC_BROKER_URL", None)
    env.pop("VDC_DATABASE_URL", None)
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed at teardown
    process = subprocess.Popen([VDC, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def healthy():
        if process.poll() is not None:
            pytest.fail(f"vdc serve exited: {(tmp_path / 'serve.log').read_text()[-2000:]}")
        try:
            return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, 60, "vdc serve to be ready")
        key = subprocess.run([VDC, "keys", "create", "--owner", "alice"], env=env, capture_output=True, text=True,
                             check=True).stdout.strip()
        yield base, {"Authorization": f"Bearer {key}"}
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def test_submit_watch_download_and_check_in_onnxruntime(server, tmp_path):
    base, auth = server
    request = {
        "model": {"preset": "lenet-300-100"},
        "dataset": {"builtin": "digits"},
        "options": {"epochs": 6, "pretrain_epochs": 3, "batch_size": 50, "lr": 0.003},
    }
    response = httpx.post(f"{base}/v1/jobs", headers=auth, files={"request": (None, json.dumps(request))})
    assert response.status_code == 202, response.text
    job_url = f"{base}{response.json()['links']['self']}"

    def finished():
        job = httpx.get(job_url, headers=auth).json()
        return job if job["state"] in ("succeeded", "failed", "cancelled") else None

    job = wait_for(finished, 240, "the job to finish")
    assert job["state"] == "succeeded", job["error"]

    report = httpx.get(f"{job_url}/artifacts/report.json", headers=auth).json()
    model = httpx.get(f"{job_url}/artifacts/model.onnx", headers=auth)
    assert model.status_code == 200 and len(model.content) == report["files"]["model.onnx"]["bytes"]
    path = tmp_path / "model.onnx"
    path.write_bytes(model.content)
    data = load_digits()
    logits = onnx_session(path).run(None, {"input": data.x_val.numpy()})[0]
    accuracy = float(np.mean(logits.argmax(1) == data.y_val.numpy()))
    assert accuracy == pytest.approx(report["accuracy"]["after"], abs=1e-9)
    assert report["compression"] > 1.5
    assert len(model.content) < report["files"]["baseline.onnx"]["bytes"]
