"""Accepting a job: store its uploads, check everything that can be checked now, record it, hand it to a worker.

A submission that fails any check leaves nothing behind: no row, no files. The checks are the pipeline's own
(``worker.pipeline.prepare``), so the API refuses exactly what a worker would fail on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import BinaryIO

from sqlalchemy.orm import Session

from service import jobs
from service.core.config import Settings
from service.errors import InvalidJob, Unavailable
from service.models import Job, JobRequest, new_id
from service.storage import Storage
from vdcore.weights import check_weights
from worker.pipeline import JobInput, prepare

logger = logging.getLogger(__name__)

Dispatch = Callable[[str], None]


def check_job_input(job: JobInput, *, max_parameters: int) -> None:
    """Raise ``InvalidJob`` saying what to fix unless the model builds, fits the data and the weights fit it.

    The size limit is checked before the weights, whose check allocates the model.
    """
    try:
        plan = prepare(replace(job, weights=None)).plan
        if plan.parameters > max_parameters:
            raise InvalidJob(
                f"the model has {plan.parameters:,} parameters; this service trains at most {max_parameters:,}"
            )
        if job.weights is not None:
            check_weights(plan.build(), job.weights)
    except ValueError as error:  # JobError, WeightsError, DataError: messages written for the user
        raise InvalidJob(str(error)) from None


def submit_job(
    *,
    session: Session,
    storage: Storage,
    settings: Settings,
    owner: str,
    request: JobRequest,
    files: Mapping[str, BinaryIO],
    idempotency_key: str | None = None,
    dispatch: Dispatch | None = None,
) -> tuple[Job, bool]:
    """Accept a job for ``owner``; returns it and whether it is new (False: an idempotent retry).

    ``files`` maps upload parts (``weights``, ``dataset``) to readable binary files. ``dispatch(job_id)`` is
    called once the job is committed; if it fails, the job is removed again and ``Unavailable`` raised, so
    that a retry, even with the same Idempotency-Key, submits afresh.
    """
    if ("dataset" in files) == (request.dataset is not None):
        raise InvalidJob(
            "give exactly one dataset: {'builtin': name} in the request, or an npz file in the 'dataset' part"
        )
    job_id = new_id()
    try:
        uploads = storage.save_uploads(job_id, files, settings.max_upload_bytes)
        job_input = request.to_job_input(**storage.upload_paths(job_id))
        check_job_input(job_input, max_parameters=settings.max_parameters)
        job, created = jobs.create_job(
            session=session, owner=owner, request=request, uploads=uploads, idempotency_key=idempotency_key,
            job_id=job_id,
        )
    except BaseException:
        storage.delete_uploads(job_id)
        raise
    if not created:
        storage.delete_uploads(job_id)
        return job, False
    if dispatch is not None:
        try:
            dispatch(job.id)
        except Exception as error:
            logger.exception("could not queue job %s; withdrawing it", job.id)
            jobs.discard_job(session=session, job_id=job.id)
            storage.delete_uploads(job.id)
            raise Unavailable("the job queue cannot be reached; nothing was submitted, try again shortly") from error
    return job, True
