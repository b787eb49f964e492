"""The Celery application: the same settings as the API, tuned for long jobs that must survive a dead worker."""

from __future__ import annotations

from celery import Celery

from service.core.config import get_settings

settings = get_settings()

app = Celery("vdc", broker=settings.broker_url or None, include=["worker.tasks"])
app.conf.update(
    # A job is acknowledged only once it has finished, so a worker killed mid-job leaves it to be delivered
    # again; one job at a time per worker process, none reserved behind it.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_time_limit=settings.job_time_limit_s,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,  # outcomes live in the job store
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
