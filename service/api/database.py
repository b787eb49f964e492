"""How a request reaches the database: each unit of work is one call on a worker thread, with a session opened
and closed inside that call.

Why this holds under any load. FastAPI runs each sync dependency and sync route on a pool of 40 threads, every
step of a request on whichever thread is free. When a session opened in one step is used in the next, its
pooled connection stays checked out while its request waits for a thread. Once more requests wait for a
connection than the pool holds, every thread waits for a connection that only a request without a thread can
give back, until the pool's timeout (30 s): the API stopped answering at 60 clients. Here no connection outlives
the call that took it, so a thread that waits for a connection waits only for threads that are running.

At most ``concurrency`` calls run at once, and the engine's pool holds that many connections, so none of them
waits for one at all. More requests wait for their turn without holding a thread; once ``max_waiting`` wait,
the next is refused at once with 503 and ``Retry-After``, so an overloaded API answers quickly and recovers as
soon as the load stops.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from anyio import CapacityLimiter
from sqlalchemy.orm import Session, sessionmaker

from service.db import session_scope
from service.errors import ServiceError, Unavailable

T = TypeVar("T")

RETRY_AFTER_S = 1


class Busy(Unavailable):
    """Too many requests wait for the database; the client should come back after ``Retry-After`` seconds."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(RETRY_AFTER_S)}


class Abandoned(ServiceError):
    """The client went away while its request waited for its turn: nobody would read the answer."""

    status_code = 499  # nginx's "client closed request", so the metrics can count these


class Database:
    def __init__(self, sessions: sessionmaker[Session], *, concurrency: int, max_waiting: int) -> None:
        self.sessions = sessions
        self.max_waiting = max_waiting
        self.limiter = CapacityLimiter(concurrency)

    async def run(
        self, work: Callable[[Session], T], *, long: bool = False,
        abandoned: Callable[[], Awaitable[bool]] | None = None,
    ) -> T:
        """``work(session)`` on a worker thread, in a session of its own that is closed before this returns.

        ``long`` work spends most of its time outside the database (a submission's checks of its files): it runs
        on anyio's default thread pool instead of taking one of the database's turns for seconds; the engine's
        pool has overflow connections for it. Work whose client has gone by its turn (``abandoned()``) is
        skipped: after a burst of clients that gave up, the queue empties at once instead of serving nobody.
        """
        if long:
            return await anyio.to_thread.run_sync(self._in_session, work)
        if self.limiter.statistics().tasks_waiting >= self.max_waiting:
            raise Busy(
                f"the server is busy: {self.max_waiting} requests are already waiting for the database; "
                f"retry after {RETRY_AFTER_S} s"
            )
        async with self.limiter:
            if abandoned is not None and await abandoned():
                raise Abandoned("the client closed the connection before its turn")
            return await anyio.to_thread.run_sync(self._in_session, work)

    def _in_session(self, work: Callable[[Session], T]) -> T:
        with session_scope(self.sessions) as session:
            return work(session)
