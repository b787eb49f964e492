"""The API under load, as a dashboard or a CI pipeline would put it: the real server (``vdc serve``: uvicorn,
a worker training a job) and 200 clients polling at once, on SQLite and on PostgreSQL. Every request must be
answered, none may wait more than a few seconds, and the server must answer at once when the load stops.
Before the fix, 60 such clients stopped the API for the pool's 30 s timeout. Loopback only, bounded in count
and time (200 clients x 3 requests)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import httpx
import pytest

from tests.integration.conftest import Serve, wait_for

CLIENTS = 200
ROUNDS = 3
SLOWEST_S = 5.0  # one request's longest acceptable wait under the load


@pytest.fixture(params=["sqlite", "postgresql"])
def serve(request, tmp_path):
    env = {}
    if request.param == "postgresql":
        env["VDC_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    server = Serve(tmp_path, env)
    yield server
    server.stop()


async def _load(base: str, headers: dict[str, str], paths: list[str]) -> list[tuple[int, float]]:
    """Each of ``CLIENTS`` clients sends ``ROUNDS`` requests in turn; returns (status, seconds) per request.

    aiohttp rather than httpx: on two cores shared with the server and a training job, httpx's own work made
    the clients, not the server, the bottleneck (about 90 requests a second against the server's 700).
    """
    answers: list[tuple[int, float]] = []
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(base, headers=headers, connector=connector, timeout=timeout) as client:

        async def one_client(index: int) -> None:
            for round_ in range(ROUNDS):
                started = time.monotonic()
                try:
                    async with client.get(paths[(index + round_) % len(paths)]) as response:
                        await response.read()
                        status = response.status
                except (aiohttp.ClientError, TimeoutError):
                    status = 0
                answers.append((status, time.monotonic() - started))

        await asyncio.gather(*(one_client(index) for index in range(CLIENTS)))
    return answers


def test_200_clients_polling_at_once_are_all_answered_promptly(serve):
    job_url = serve.submit({
        "model": {"preset": "lenet-300-100"},
        "dataset": {"builtin": "digits"},
        "options": {"epochs": 500, "pretrain_epochs": 0, "device": "cpu"},
    })
    wait_for(lambda: serve.job(job_url)["state"] == "running", 120, "the job to start training")
    job_path = job_url.removeprefix(serve.base)

    answers = asyncio.run(_load(serve.base, serve.auth, [job_path, "/v1/jobs"]))

    assert len(answers) == CLIENTS * ROUNDS
    failed = [status for status, _ in answers if status != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed: statuses {sorted(set(failed))}"
    slowest = max(seconds for _, seconds in answers)
    assert slowest < SLOWEST_S, f"a request waited {slowest:.1f} s"
    started = time.monotonic()
    after = httpx.get(job_url, headers=serve.auth, timeout=30)
    assert after.status_code == 200 and after.json()["state"] == "running"
    assert time.monotonic() - started < 1.0, "the server is slow to answer once the load has stopped"
    assert httpx.delete(job_url, headers=serve.auth, timeout=30).status_code == 202
