"""Handing jobs to the workers through Celery, and checking that the broker answers (for /readyz)."""

from __future__ import annotations


def celery_dispatch(job_id: str) -> None:
    """Queue the job for a worker. Imported late: the API module loads without Celery's task code."""
    from worker.tasks import compress_job

    compress_job.delay(job_id)


def celery_broker_check() -> None:
    """Raise unless the broker accepts a connection within a few seconds."""
    from worker.celery_app import app

    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=3)
