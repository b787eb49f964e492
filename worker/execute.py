"""Running one stored job: claimed, its pipeline run under a lease, its outcome written back. No Celery here,
so tests drive it directly; ``worker.tasks`` wraps it for the queue."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from recipe.pipeline import Cancelled, JobError, run
from service import jobs
from service.core.config import Settings
from service.errors import JobConflict
from service.models import Job, JobRequest
from service.states import JobState
from service.storage import Storage
from worker.lease import LeaseKeeper

logger = logging.getLogger(__name__)

INTERNAL_ERROR = "the job failed because of an error on our side; it has been logged. Please try again later"


def _conclude(session: Session, storage: Storage, job_id: str, move: Callable[[], Job]) -> str:
    """Make the final transition and release the job's working files; ``lost`` if the job was taken over."""
    try:
        state = move().state
    except JobConflict:
        logger.warning("job %s was taken over by another attempt; leaving it to that one", job_id)
        return "lost"
    storage.release_job_files(job_id)
    return state


def execute_job(job_id: str, *, sessions: sessionmaker[Session], storage: Storage, settings: Settings) -> str:
    """Run the job if it is queued, and return its state afterwards (``lost`` if it was taken over,
    ``deferred`` if its owner already runs ``settings.max_running_jobs_per_owner`` jobs: send it again later).

    A delivery that finds the job taken (a duplicate message) or finished does nothing. A job whose worker
    died is requeued by the reconciler and resumes here from its last epoch checkpoint, up to
    ``settings.max_attempts`` runs; partial outputs are never served, since artifacts appear only by
    renaming a complete directory.
    """
    with sessions() as session:
        job = jobs.claim(
            session=session, job_id=job_id, lease_s=settings.lease_s,
            max_running_per_owner=settings.max_running_jobs_per_owner,
        )
        if job is None:
            current = session.get(Job, job_id)
            if current is None:
                return "missing"
            return "deferred" if current.state == JobState.QUEUED else current.state  # the owner's running limit
        attempt = job.attempts
        if job.cancel_requested:
            return _conclude(session, storage, job_id, lambda: jobs.mark_cancelled(
                session=session, job_id=job_id, attempt=attempt))
        if attempt > settings.max_attempts:
            message = (
                f"the job was interrupted {settings.max_attempts} times (a worker stopped while running it); "
                "giving up"
            )
            return _conclude(session, storage, job_id, lambda: jobs.mark_failed(
                session=session, job_id=job_id, message=message, attempt=attempt))
        logger.info("job %s: attempt %d started", job_id, attempt)
        request = JobRequest.model_validate(job.request)
        job_input = request.to_job_input(**storage.upload_paths(job_id))
        with LeaseKeeper(
            sessions, job_id, attempt, lease_s=settings.lease_s, heartbeat_s=settings.heartbeat_s
        ) as lease:
            started = time.monotonic()

            def on_progress(event: dict[str, Any]) -> bool:
                if lease.lost:
                    return True
                if time.monotonic() - started > settings.job_time_limit_s:
                    raise JobError(
                        f"the job ran longer than the {settings.job_time_limit_s} s a job may run; train fewer "
                        "epochs or a smaller model"
                    )
                try:
                    return jobs.record_progress(session=session, job_id=job_id, event=event, attempt=attempt)
                except SQLAlchemyError as error:  # progress is best effort: training goes on
                    session.rollback()
                    logger.warning("could not record the progress of job %s: %s", job_id, error)
                    return False

            try:
                run(job_input, storage.partial_artifact_dir(job_id, attempt), on_progress,
                    storage.job_checkpoint_dir(job_id))
            except Cancelled:
                if lease.lost:
                    return "lost"
                return _conclude(session, storage, job_id, lambda: jobs.mark_cancelled(
                    session=session, job_id=job_id, attempt=attempt))
            except JobError as error:
                message = str(error)
                return _conclude(session, storage, job_id, lambda: jobs.mark_failed(
                    session=session, job_id=job_id, message=message, attempt=attempt))
            except Exception:
                logger.exception("job %s failed", job_id)
                return _conclude(session, storage, job_id, lambda: jobs.mark_failed(
                    session=session, job_id=job_id, message=INTERNAL_ERROR, attempt=attempt))
            if not lease.renew():
                return "lost"
            storage.publish_artifacts(job_id, attempt)
            return _conclude(session, storage, job_id, lambda: jobs.mark_succeeded(
                session=session, job_id=job_id, attempt=attempt))
