"""The queue between the API and the workers: one Celery application, built from the same settings on both sides,
tuned for long jobs that must survive a dead worker. The API sends ``COMPRESS_JOB`` by name; ``worker.tasks``
registers the task under that name.

Without ``VDC_BROKER_URL`` the broker is a folder under ``data_dir`` (kombu's filesystem transport): the
embedded default of ``vdc serve``, which needs no server. Deployments set a Redis or RabbitMQ URL.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from celery import Celery

from service.core.config import Settings, get_settings

COMPRESS_JOB = "vdc.compress_job"
HARD_LIMIT_GRACE_S = 600


def broker_options(settings: Settings) -> tuple[str, dict[str, Any]]:
    """The broker URL and transport options: the configured broker, or the embedded folder broker."""
    if settings.broker_url:
        return settings.broker_url, {}
    folder = settings.data_dir / "broker"
    for sub in ("queue", "processed", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    queue = str(folder / "queue")
    return "filesystem://", {
        "data_folder_in": queue,
        "data_folder_out": queue,
        "processed_folder": str(folder / "processed"),
        "control_folder": str(folder / "control"),  # kombu's default is ./control, wherever the process runs
        "store_processed": False,
    }


@cache
def celery_app() -> Celery:
    """The application for this process's settings; the API only sends with it, a worker also runs its tasks."""
    settings = get_settings()
    broker_url, transport_options = broker_options(settings)
    app = Celery("vdc", broker=broker_url)
    app.conf.update(
        broker_transport_options=transport_options,
        # A job is acknowledged only once it has finished, so a worker killed mid-job leaves it to be delivered
        # again; one job at a time per worker process, none reserved behind it.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # The pipeline stops a job over its time limit at an epoch's end; this kill is the backstop for one epoch
        # that never ends.
        task_time_limit=settings.job_time_limit_s + HARD_LIMIT_GRACE_S,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # outcomes live in the job store
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app
