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
from typing import Any

import httpx
import pytest

VDC = str(Path(sys.executable).with_name("vdc"))


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


def require_binary(name: str, candidates: list[str]) -> str:
    """The binary's path, or a skip (a failure under VDC_REQUIRE_SERVICES=1) saying what is missing."""
    for candidate in candidates:
        found = shutil.which(candidate) or next(iter(sorted(glob.glob(candidate))), None)
        if found:
            return found
    reason = f"{name} is not installed (looked for {', '.join(candidates)})"
    if os.environ.get("VDC_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}; VDC_REQUIRE_SERVICES=1 forbids skipping")
    pytest.skip(reason)


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


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    binary = require_binary("redis-server", ["redis-server"])
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _accepts(port), 20, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(process)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster. Debian keeps initdb and pg_ctl in the versioned lib folder, and they
    refuse to run as root, so as root they run as the ``postgres`` user, in a folder of their own (pytest's
    temporary folders are closed to other users)."""
    initdb = require_binary("PostgreSQL (initdb)", ["initdb", "/usr/lib/postgresql/*/bin/initdb"])
    pg_ctl = str(Path(initdb).with_name("pg_ctl"))
    folder = Path(tempfile.mkdtemp(prefix="vdc-pg-"))
    as_owner: list[str] = []
    if os.geteuid() == 0:
        as_owner = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres")
    data, port = folder / "data", free_port()
    subprocess.run([*as_owner, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"], check=True,
                   capture_output=True)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*as_owner, pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_owner, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def create_key(env: dict[str, str], owner: str = "alice") -> dict[str, str]:
    """An API key made with the CLI, as an operator would, as request headers."""
    key = subprocess.run([VDC, "keys", "create", "--owner", owner], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    return {"Authorization": f"Bearer {key}"}
