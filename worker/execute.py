"""Running one stored job: its record read, its pipeline run, its outcome written back. No Celery here, so
tests drive it directly; ``worker.tasks`` wraps it for the queue."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service import jobs
from service.models import FINISHED, Job, JobRequest
from service.storage import Storage
from worker.pipeline import Cancelled, JobError, run

logger = logging.getLogger(__name__)

INTERNAL_ERROR = "the job failed because of an error on our side; it has been logged. Please try again later"


def execute_job(job_id: str, *, sessions: sessionmaker[Session], storage: Storage, max_attempts: int) -> str:
    """Run the job unless it has finished, and return its final state.

    A redelivered job (its worker died) starts again from scratch, up to ``max_attempts`` runs; its partial
    outputs are never served, since artifacts appear only by renaming a complete directory.
    """
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None or job.state in FINISHED:
            return "missing" if job is None else job.state
        if job.cancel_requested:
            return jobs.mark_cancelled(session=session, job_id=job_id).state
        job = jobs.mark_running(session=session, job_id=job_id)
        if job.attempts > max_attempts:
            message = f"the job was interrupted {max_attempts} times (a worker stopped while running it); giving up"
            return jobs.mark_failed(session=session, job_id=job_id, message=message).state
        request = JobRequest.model_validate(job.request)
        job_input = request.to_job_input(**storage.upload_paths(job_id))

        def on_progress(event: dict[str, Any]) -> bool:
            return jobs.record_progress(session=session, job_id=job_id, event=event)

        try:
            run(job_input, storage.partial_artifact_dir(job_id), on_progress)
        except Cancelled:
            return jobs.mark_cancelled(session=session, job_id=job_id).state
        except JobError as error:
            return jobs.mark_failed(session=session, job_id=job_id, message=str(error)).state
        except Exception:
            logger.exception("job %s failed", job_id)
            return jobs.mark_failed(session=session, job_id=job_id, message=INTERNAL_ERROR).state
        storage.publish_artifacts(job_id)
        return jobs.mark_succeeded(session=session, job_id=job_id).state
