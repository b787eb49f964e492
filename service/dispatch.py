"""Handing jobs to the workers through Celery, and checking that the broker answers (for /readyz)."""

from __future__ import annotations

from service.queue import COMPRESS_JOB, celery_app


def celery_dispatch(job_id: str) -> None:
    """Queue the job for a worker, by the task's name: the API never loads the worker's code."""
    celery_app().send_task(COMPRESS_JOB, args=(job_id,))


def celery_broker_check() -> None:
    """Raise unless the broker accepts a connection within a few seconds."""
    with celery_app().connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=3)
