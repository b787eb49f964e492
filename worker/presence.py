"""A worker's heartbeat in the job store, from the moment it is ready to take jobs until it shuts down, so
that the API can say how many workers are alive (``/readyz``) in any deployment, whatever each one is doing:
the beat runs on a thread of its own, beside a job that holds the worker for hours."""

from __future__ import annotations

import logging
import os
import threading

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from service import workers
from service.models import utcnow

logger = logging.getLogger(__name__)


class Presence:
    def __init__(self, sessions: sessionmaker[Session], name: str, *, heartbeat_s: float) -> None:
        self._sessions, self.name, self._heartbeat_s = sessions, name, heartbeat_s
        self._started_at = utcnow()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="presence", daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                with self._sessions() as session:
                    workers.beat(session=session, name=self.name, pid=os.getpid(), started_at=self._started_at)
            except SQLAlchemyError as error:  # the database is out: the next beat tries again
                logger.warning("worker %s could not renew its heartbeat: %s", self.name, error)
            if self._stop.wait(self._heartbeat_s):
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and leave the list of live workers."""
        self._stop.set()
        self._thread.join()
        try:
            with self._sessions() as session:
                workers.forget(session=session, name=self.name)
        except SQLAlchemyError as error:
            logger.warning("worker %s could not sign off (it will fall silent instead): %s", self.name, error)
