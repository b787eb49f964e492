"""The reconciler: the database is the truth about jobs, the broker only a messenger that can lose messages.

Every few seconds it requeues running jobs whose worker stopped renewing their lease (a killed worker, a lost
machine) and hands the broker again any queued job that no worker picked up in time (a broker restarted
without persistence loses its messages). Sending a job twice is harmless: a worker claims a job with a
conditional update, so a duplicate finds it taken and does nothing. Several API processes may each run a
reconciler; their conditional updates keep them from acting twice on one job.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from service import jobs, workers
from service.models import utcnow
from service.submission import Dispatch

logger = logging.getLogger(__name__)


@dataclass
class Reconciled:
    requeued: list[str] = field(default_factory=list)
    redispatched: list[str] = field(default_factory=list)
    undelivered: list[str] = field(default_factory=list)  # the broker refused them; tried again later


def reconcile(
    *, sessions: sessionmaker[Session], dispatch: Dispatch, redispatch_after_s: float, now: datetime | None = None
) -> Reconciled:
    """One pass: requeue orphaned jobs and send them, then send queued jobs that waited too long."""
    now = now or utcnow()
    done = Reconciled()
    with sessions() as session:
        done.requeued = jobs.requeue_orphans(session=session, now=now)
        due = jobs.redispatch_due(session=session, now=now, after_s=redispatch_after_s)
        workers.forget_silent(session=session, now=now)
    done.redispatched = due
    for job_id in done.requeued + done.redispatched:
        try:
            dispatch(job_id)
        except Exception as error:  # the broker is down: the job stays queued and is sent on a later pass
            logger.warning("could not hand job %s to the broker: %s", job_id, error)
            done.undelivered.append(job_id)
    if done.requeued:
        logger.warning("requeued jobs whose worker stopped responding: %s", ", ".join(done.requeued))
    if done.redispatched:
        logger.info("sent queued jobs to the broker again: %s", ", ".join(done.redispatched))
    return done


class Reconciler:
    """Runs ``reconcile`` every ``interval_s`` on a daemon thread, from ``start()`` to ``stop()``."""

    def __init__(
        self, sessions: sessionmaker[Session], dispatch: Dispatch, *, interval_s: float, redispatch_after_s: float
    ) -> None:
        self._sessions = sessions
        self._dispatch = dispatch
        self._interval_s = interval_s
        self._redispatch_after_s = redispatch_after_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                reconcile(sessions=self._sessions, dispatch=self._dispatch, redispatch_after_s=self._redispatch_after_s)
            except SQLAlchemyError as error:  # the database is down: nothing to reconcile against, try later
                logger.warning("reconciler pass skipped: %s", error)
            except Exception:
                logger.exception("reconciler pass failed")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
