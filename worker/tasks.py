"""The queue's view of a job: an id in, the job store updated. The work itself is ``worker.execute``.

Workers start with ``celery -A worker.tasks worker``: this module's ``app`` is ``service.queue``'s, with the task
registered under the name the API sends.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

import torch
from celery.signals import worker_ready, worker_shutdown
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service.core.config import get_settings
from service.db import create_db_engine, create_sessionmaker, upgrade_database
from service.queue import COMPRESS_JOB, celery_app
from service.storage import Storage
from worker.execute import Outcome, execute_job
from worker.presence import Presence

logger = logging.getLogger(__name__)
settings = get_settings()
app = celery_app()
# The ONNX exporter's optimizer logs each of its passes at INFO, a hundred lines a job; a worker's log is for jobs.
for _noisy in ("onnxscript", "onnx_ir"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)


@cache
def _sessions() -> sessionmaker[Session]:
    upgrade_database(settings.database_url)
    return create_sessionmaker(create_db_engine(settings.database_url))


_presence: list[Presence] = []  # this process's, once it is ready


@worker_ready.connect
def _announce(sender: Any, **_: Any) -> None:
    presence = Presence(_sessions(), sender.hostname, heartbeat_s=settings.heartbeat_s)
    presence.start()
    _presence.append(presence)


@worker_shutdown.connect
def _sign_off(**_: Any) -> None:
    while _presence:
        _presence.pop().stop()


# A database that is down for a moment must not fail the job: retry with backoff, then let redelivery decide.
@app.task(name=COMPRESS_JOB, autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5)
def compress_job(job_id: str) -> Outcome:
    # Workers share the machine's cores; torch would otherwise start one thread per core in each of them.
    torch.set_num_threads(settings.torch_threads)
    storage = Storage.from_settings(settings)
    storage.create_dirs()
    outcome = execute_job(job_id, sessions=_sessions(), storage=storage, settings=settings)
    logger.info("job %s: %s", job_id, outcome)
    if outcome == Outcome.DEFERRED:  # its owner's other jobs hold all the owner's running slots: ask again later
        compress_job.apply_async((job_id,), countdown=settings.defer_s)
    return outcome
