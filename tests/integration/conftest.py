"""Real servers for integration tests, each started on a free port in a temporary directory and stopped after.

A missing binary skips its tests with the reason; with ``VDC_REQUIRE_SERVICES=1`` (set by ``.ci/run``) it
fails them instead, so CI always runs them for real.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest

VDC = str(Path(sys.executable).with_name("vdc"))

# Leases, heartbeats and the reconciler on a scale of seconds (production: a minute), so that each recovery
# happens within a test.
FAST_RECOVERY = {
    "VDC_LEASE_S": "3",
    "VDC_HEARTBEAT_S": "0.5",
    "VDC_RECONCILE_INTERVAL_S": "0.5",
    "VDC_REDISPATCH_AFTER_S": "2",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def missing(reason: str) -> NoReturn:
    """Skip the test for ``reason``; a failure under VDC_REQUIRE_SERVICES=1, so that CI never skips it."""
    if os.environ.get("VDC_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}; VDC_REQUIRE_SERVICES=1 forbids skipping")
    pytest.skip(reason)


def require_binary(name: str, candidates: list[str]) -> str:
    """The binary's path, or ``missing`` saying what is not installed."""
    for candidate in candidates:
        found = shutil.which(candidate) or next(iter(sorted(glob.glob(candidate))), None)
        if found:
            return found
    missing(f"{name} is not installed (looked for {', '.join(candidates)})")


def wait_healthy(process: subprocess.Popen, url: str, log: Path, timeout: float = 60) -> None:
    def ready() -> bool:
        if process.poll() is not None:
            pytest.fail(f"{process.args} exited: {log.read_text()[-3000:]}")
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, timeout, url)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class RedisServer:
    """A redis-server without persistence on a fixed port, which a test may stop and start again: a restart
    loses every message it held, as a crashed broker without persistence does."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary, self.folder, self.port = binary, folder, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL,
        )
        wait_for(lambda: _accepts(self.port), 20, "redis-server")

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(require_binary("redis-server", ["redis-server"]), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class PostgresServer:
    """A throwaway PostgreSQL cluster that a test may stop and start again. Debian keeps initdb and pg_ctl in
    the versioned lib folder, and they refuse to run as root, so as root they run as the ``postgres`` user, in
    a folder of their own (pytest's temporary folders are closed to other users)."""

    def __init__(self, initdb: str) -> None:
        self.pg_ctl = str(Path(initdb).with_name("pg_ctl"))
        self.folder = Path(tempfile.mkdtemp(prefix="vdc-pg-"))
        self.as_owner: list[str] = []
        if os.geteuid() == 0:
            self.as_owner = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.folder, "postgres")
        self.data, self.port = self.folder / "data", free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        subprocess.run([*self.as_owner, initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres"], check=True,
                       capture_output=True)

    def _ctl(self, *args: str, check: bool = True) -> None:
        subprocess.run([*self.as_owner, self.pg_ctl, "-D", str(self.data), *args], check=check, capture_output=True)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("-o", options, "-l", str(self.folder / "log"), "-w", "start")

    def stop(self) -> None:
        self._ctl("-m", "immediate", "stop", check=False)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer(require_binary("PostgreSQL (initdb)", ["initdb", "/usr/lib/postgresql/*/bin/initdb"]))
    server.start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    return postgres_server.url


def create_key(env: dict[str, str], owner: str = "alice") -> dict[str, str]:
    """An API key made with the CLI, as an operator would, as request headers."""
    key = subprocess.run([VDC, "keys", "create", "--owner", owner], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    return {"Authorization": f"Bearer {key}"}


def job_request(epochs: int) -> dict[str, Any]:
    """A digits job that trains for ``epochs`` after one dense epoch: long enough to kill things in."""
    return {
        "model": {"preset": "lenet-300-100"},
        "dataset": {"builtin": "digits"},
        "options": {"epochs": epochs, "pretrain_epochs": 1, "batch_size": 50, "lr": 0.003, "device": "cpu",
                    "curve_exports": 0},
    }


def submit(base: str, auth: dict[str, str], request: dict[str, Any]) -> str:
    """POST ``request`` as JSON; the new job's URL."""
    response = httpx.post(f"{base}/v1/jobs", headers=auth, json=request, timeout=30)
    assert response.status_code == 202, response.text
    return f"{base}{response.json()['links']['self']}"


def training_past(job: dict[str, Any], epoch: int) -> bool:
    """The job is in its Sparse VD training and has finished ``epoch`` epochs of it."""
    progress = job["progress"] or {}
    return progress.get("stage") == "training" and (progress.get("epoch") or 0) >= epoch


class Serve:
    """``vdc serve`` as a user starts it, in a folder of its own: the API under uvicorn and its supervised
    workers, SQLite and the folder broker unless ``env`` names others."""

    def __init__(self, folder: Path, env: dict[str, str] | None = None, workers: int = 1) -> None:
        self.folder = folder
        self.env = {k: v for k, v in os.environ.items() if k not in ("VDC_BROKER_URL", "VDC_DATABASE_URL")}
        self.env |= {"VDC_DATA_DIR": str(folder / "data")} | (env or {})
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = folder / "serve.log"
        self.workdir = folder / "cwd"
        self.workdir.mkdir()
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [VDC, "serve", "--port", str(self.port), "--workers", str(workers)], env=self.env, stdout=out,
                stderr=out, cwd=self.workdir,
            )
        wait_healthy(self.process, f"{self.base}/readyz", self.log)
        self.auth = create_key(self.env)

    def workers(self) -> list[int]:
        """The worker processes ``vdc serve`` runs (Linux's /proc): children of any of its threads, since the
        supervisor's thread starts those that replace dead ones."""
        tasks = Path(f"/proc/{self.process.pid}/task").glob("*/children")
        return sorted(int(child) for task in tasks for child in task.read_text().split())

    def submit(self, request: dict[str, Any]) -> str:
        return submit(self.base, self.auth, request)

    def job(self, url: str) -> dict[str, Any]:
        return httpx.get(url, headers=self.auth, timeout=30).json()

    def stop(self) -> None:
        stop(self.process)
