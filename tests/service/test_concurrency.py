"""Many clients at once: requests queue for the database instead of waiting for a pooled connection, and a
full queue is refused at once with 503 and Retry-After."""

from __future__ import annotations

import threading
import time

import anyio
import httpx
import pytest

from service.api.database import Abandoned, Busy, Database
from service.api.main import create_app
from service.db import create_db_engine, create_sessionmaker, upgrade_database
from service.jobs import create_job
from service.keys import create_api_key
from tests.service.conftest import digits_request


def test_hundreds_of_concurrent_requests_all_answer_with_a_small_pool(make_settings):
    """With FastAPI's sync dependencies holding a session across thread hops, 60 clients deadlocked the pool
    until its 30 s timeout; here two connections serve 300 requests at once."""
    settings = make_settings(api_db_concurrency=2)
    upgrade_database(settings.database_url)
    with create_sessionmaker(create_db_engine(settings.database_url))() as session:
        token = create_api_key(session=session, owner="alice", name="test")
        job_id = create_job(session=session, owner="alice", request=digits_request())[0].id
    app = create_app(settings)
    statuses: list[int] = []

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {token}"}
        async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=transport, base_url="http://api", headers=headers, timeout=30
        ) as client:

            async def poll(path: str) -> None:
                statuses.append((await client.get(path)).status_code)

            async with anyio.create_task_group() as group:
                for i in range(300):
                    group.start_soon(poll, "/v1/jobs" if i % 3 == 0 else f"/v1/jobs/{job_id}")

    started = time.monotonic()
    anyio.run(main)
    assert statuses == [200] * 300
    assert time.monotonic() - started < 15, "requests waited for connections instead of queueing for a turn"


def test_a_full_queue_is_refused_at_once(make_settings):
    settings = make_settings()
    upgrade_database(settings.database_url)
    database = Database(create_sessionmaker(create_db_engine(settings.database_url)), concurrency=1, max_waiting=1)
    release = threading.Event()
    outcomes: list[str] = []

    async def call() -> None:
        try:
            await database.run(lambda session: release.wait(10))
            outcomes.append("ran")
        except Busy as error:
            outcomes.append(f"busy {error.headers}")
            release.set()

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for _ in range(3):  # one runs, one waits, the third finds the queue full
                group.start_soon(call)
                await anyio.sleep(0.1)

    anyio.run(main)
    assert outcomes == ["busy {'Retry-After': '1'}", "ran", "ran"]


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/jobs/some-id"])
def test_busy_answers_503_with_retry_after(client, alice, path):
    client.app.state.database.max_waiting = 0  # every request finds the queue full
    response = client.get(path, headers=alice)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "busy" in response.json()["detail"]
    assert client.get("/healthz").status_code == 200, "probes do not queue for the database"


def test_work_whose_client_left_while_it_waited_is_skipped(make_settings):
    settings = make_settings()
    upgrade_database(settings.database_url)
    database = Database(create_sessionmaker(create_db_engine(settings.database_url)), concurrency=1, max_waiting=10)
    ran: list[str] = []

    async def gone() -> bool:
        return True

    async def main() -> None:
        with pytest.raises(Abandoned):
            await database.run(lambda session: ran.append("left"), abandoned=gone)
        await database.run(lambda session: ran.append("stayed"))

    anyio.run(main)
    assert ran == ["stayed"]
