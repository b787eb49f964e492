"""A worker's hold on the job it runs: a thread renews the job's lease until the run ends.

If the worker dies, renewals stop and the reconciler requeues the job once the lease runs out. If instead
the job was taken from this worker (it was presumed dead, or the database was out for longer than a lease),
``lost`` is set and the run stops at its next progress event without writing anything.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from service import jobs

logger = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews the lease of ``attempt`` of ``job_id`` every ``heartbeat_s`` while used as a context manager."""

    def __init__(
        self, sessions: sessionmaker[Session], job_id: str, attempt: int, *, lease_s: float, heartbeat_s: float
    ) -> None:
        self._sessions = sessions
        self.job_id = job_id
        self.attempt = attempt
        self._lease_s = lease_s
        self._heartbeat_s = heartbeat_s
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{job_id}", daemon=True)

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def renew(self) -> bool:
        """Renew now; False once the job is no longer this attempt's. A database error keeps the old answer:
        the lease may still run, and the next heartbeat tries again."""
        try:
            with self._sessions() as session:
                held = jobs.renew_lease(
                    session=session, job_id=self.job_id, attempt=self.attempt, lease_s=self._lease_s
                )
        except SQLAlchemyError as error:
            logger.warning("could not renew the lease of job %s: %s", self.job_id, error)
            return not self.lost
        if not held:
            if not self.lost:
                logger.warning("job %s (attempt %d) was taken from this worker; stopping", self.job_id, self.attempt)
            self._lost.set()
        return held

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            self.renew()

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
