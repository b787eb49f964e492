"""``vdc serve`` as a user runs it: a real API process and a real Celery worker process over the embedded
folder broker, with SQLite; nothing else running. Used over HTTP and through the ``vdc`` client commands."""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import VDC, Serve
from tests.integration.jobcheck import REQUEST, submit_and_check


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    serve = Serve(tmp_path_factory.mktemp("serve"))
    workers = serve.workers()
    try:
        yield serve.base, serve.auth
    finally:
        serve.stop()
    assert list(serve.workdir.iterdir()) == [], "vdc serve must keep its files under VDC_DATA_DIR"
    assert serve.process.returncode == 128 + signal.SIGTERM, "stopped by SIGTERM, vdc serve exits through its cleanup"
    assert workers and not any(Path(f"/proc/{pid}").exists() for pid in workers), "its workers must stop with it"


def test_submit_watch_download_and_check_in_onnxruntime(server, tmp_path):
    base, auth = server
    submit_and_check(base, auth, tmp_path)


def test_the_vdc_client_commands(server, tmp_path):
    base, auth = server
    env = os.environ | {"VDC_SERVER": base, "VDC_API_KEY": auth["Authorization"].removeprefix("Bearer ")}
    options = [f"--{k.replace('_', '-')}={v}" for k, v in REQUEST["options"].items()]

    def vdc(*args):
        return subprocess.run([VDC, *args], env=env, capture_output=True, text=True, timeout=300)

    submitted = vdc("submit", "--preset", "lenet-300-100", "--dataset", "digits", *options, "--watch")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[0]
    assert "succeeded" in submitted.stderr

    status = vdc("status", job_id)
    assert json.loads(status.stdout)["state"] == "succeeded"
    assert job_id in vdc("status").stdout

    downloaded = vdc("download", job_id, "--out", str(tmp_path))
    assert downloaded.returncode == 0, downloaded.stderr
    assert {p.name for p in tmp_path.iterdir()} >= {"model.onnx", "baseline.onnx", "report.json"}
    assert not list(tmp_path.glob(".*")), "no partial download may remain"

    refused = vdc("cancel", job_id)
    assert refused.returncode == 2 and "409" in refused.stderr and "nothing to cancel" in refused.stderr
    unknown = subprocess.run([VDC, "status", job_id], env=env | {"VDC_API_KEY": "vdc_wrong"},
                             capture_output=True, text=True)
    assert unknown.returncode == 2 and "401" in unknown.stderr
