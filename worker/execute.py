"""Running one stored job: claimed, its pipeline run under a lease, its outcome written back. No Celery here,
so tests drive it directly; ``worker.tasks`` wraps it for the queue."""

from __future__ import annotations

import logging
import time
from enum import StrEnum

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from recipe.pipeline import Cancelled, JobError, run
from recipe.progress import Progress
from service import jobs
from service.core.config import Settings
from service.errors import JobConflict
from service.models import Job, JobRequest
from service.states import JobState
from service.storage import Storage
from worker.lease import LeaseKeeper

logger = logging.getLogger(__name__)

INTERNAL_ERROR = "the job failed because of an error on our side; it has been logged. Please try again later"


class Outcome(StrEnum):
    """What one delivery of a job did: it ran to a finished state, found the job running elsewhere or already
    finished (a duplicate delivery), lost it to another attempt, was deferred by the owner's running limit (the
    task sends it again later), or found no such job."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RUNNING = "running"
    LOST = "lost"
    DEFERRED = "deferred"
    MISSING = "missing"


def execute_job(job_id: str, *, sessions: sessionmaker[Session], storage: Storage, settings: Settings) -> Outcome:
    """Run the job if it is queued, and say what this delivery did.

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
                return Outcome.MISSING
            return Outcome.DEFERRED if current.state == JobState.QUEUED else Outcome(current.state)
        attempt = job.attempts

        def end(state: JobState, error: str | None = None) -> Outcome:
            """This attempt's final transition, which releases the job's working files; ``LOST`` if another
            attempt has taken the job over."""
            try:
                jobs.finish(session=session, job_id=job_id, state=state, attempt=attempt, error=error)
            except JobConflict:
                logger.warning("job %s was taken over by another attempt; leaving it to that one", job_id)
                return Outcome.LOST
            storage.release_job_files(job_id)
            return Outcome(state)

        if job.cancel_requested:
            return end(JobState.CANCELLED)
        if attempt > settings.max_attempts:
            return end(JobState.FAILED, (
                f"the job was interrupted {settings.max_attempts} times (a worker stopped while running it); "
                "giving up"
            ))
        logger.info("job %s: attempt %d started", job_id, attempt)
        request = JobRequest.model_validate(job.request)
        job_input = request.to_job_input(**storage.upload_paths(job_id))
        with LeaseKeeper(
            sessions, job_id, attempt, lease_s=settings.lease_s, heartbeat_s=settings.heartbeat_s
        ) as lease:
            started = time.monotonic()

            def on_progress(progress: Progress) -> None:
                try:
                    jobs.record_progress(session=session, job_id=job_id, progress=progress, attempt=attempt)
                except SQLAlchemyError as error:  # progress is best effort: training goes on
                    session.rollback()
                    logger.warning("could not record the progress of job %s: %s", job_id, error)

            def should_stop() -> bool:
                """A cancel, or the job taken over; past the time limit a job fails instead (``JobError``)."""
                if time.monotonic() - started > settings.job_time_limit_s:
                    raise JobError(
                        f"the job ran longer than the {settings.job_time_limit_s} s a job may run; train fewer "
                        "epochs or a smaller model"
                    )
                if lease.lost:
                    return True
                try:
                    return jobs.should_stop(session=session, job_id=job_id, attempt=attempt)
                except SQLAlchemyError as error:  # the lease decides once the database answers again
                    session.rollback()
                    logger.warning("could not ask whether job %s should stop: %s", job_id, error)
                    return False

            try:
                run(
                    job_input, storage.partial_artifact_dir(job_id, attempt), on_progress=on_progress,
                    should_stop=should_stop, checkpoint_dir=storage.job_checkpoint_dir(job_id),
                )
            except Cancelled:
                return Outcome.LOST if lease.lost else end(JobState.CANCELLED)
            except JobError as error:
                return end(JobState.FAILED, str(error))
            except Exception:
                logger.exception("job %s failed", job_id)
                return end(JobState.FAILED, INTERNAL_ERROR)
            if not lease.renew():
                return Outcome.LOST
            storage.publish_artifacts(job_id, attempt)
            return end(JobState.SUCCEEDED)
