"""``vdc serve`` as a user runs it: a real API process and a real Celery worker process over the embedded
folder broker, with SQLite; nothing else running."""

import os
import subprocess

import pytest

from tests.integration.conftest import VDC, create_key, free_port, stop, wait_healthy
from tests.integration.jobcheck import submit_and_check


@pytest.fixture
def server(tmp_path):
    env = os.environ | {"VDC_DATA_DIR": str(tmp_path / "data")}
    env.pop("VDC_BROKER_URL", None)
    env.pop("VDC_DATABASE_URL", None)
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([VDC, "serve", "--port", str(port)], env=env, stdout=out, stderr=out)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(process, f"{base}/readyz", log)
        yield base, create_key(env)
    finally:
        stop(process)


def test_submit_watch_download_and_check_in_onnxruntime(server, tmp_path):
    base, auth = server
    submit_and_check(base, auth, tmp_path)
