"""Accepting a job: store its uploads, check everything that can be checked now, record it, hand it to a worker.

A submission that fails any check leaves nothing behind: no row, no files. The checks are the pipeline's own
(``recipe.pipeline.prepare``), so the API refuses exactly what a worker would fail on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import BinaryIO

from sqlalchemy.orm import Session

from recipe.pipeline import JobInput, JobTooLarge, prepare
from service import jobs, quotas
from service.core.config import Settings
from service.errors import InvalidJob, QuotaExceeded, TooLarge, Unavailable
from service.models import Job, JobRequest, new_id
from service.storage import Storage
from vdcore.weights import check_weights

logger = logging.getLogger(__name__)

Dispatch = Callable[[str], None]


def check_job_input(job: JobInput, *, settings: Settings) -> None:
    """Raise ``InvalidJob`` saying what to fix unless the job is within the service's limits, the model builds,
    fits the data and the weights fit it; ``TooLarge`` for a dataset over a size limit.

    The dataset's size is checked from its headers before it is read; the model's size before the weights,
    whose check allocates the model.
    """
    options = job.options
    pretrain_epochs = 0 if job.weights is not None else options.pretrain_epochs  # uploaded weights replace it
    total = options.epochs + pretrain_epochs + options.finetune_epochs
    if total > settings.max_epochs:
        raise InvalidJob(
            f"the job would train for {total:,} epochs ({options.epochs:,} + {pretrain_epochs:,} pretraining + "
            f"{options.finetune_epochs:,} fine-tuning); this service trains at most {settings.max_epochs:,} per "
            "job (setting max_epochs)"
        )
    try:
        plan = prepare(
            replace(job, weights=None),
            max_dataset_bytes=settings.max_dataset_bytes,
            max_dataset_samples=settings.max_dataset_samples,
        ).plan
        if plan.parameters > settings.max_parameters:
            raise InvalidJob(
                f"the model has {plan.parameters:,} parameters; this service trains at most "
                f"{settings.max_parameters:,} (setting max_parameters)"
            )
        if job.weights is not None:
            check_weights(plan.build(), job.weights)
    except JobTooLarge as error:
        raise TooLarge(f"{error} (setting {error.limit})") from None
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

    ``files`` maps upload parts (``weights``, ``dataset``, ``model``) to readable binary files. A new job that takes the
    owner past an allowance (``service.quotas``) is removed again and ``QuotaExceeded`` raised. ``dispatch(job_id)``
    is called once the job is committed; if it fails, the job is removed again and ``Unavailable`` raised, so
    that a retry, even with the same Idempotency-Key, submits afresh.
    """
    if ("dataset" in files) == (request.dataset is not None):
        raise InvalidJob(
            "give exactly one dataset: {'builtin': name} in the request, or an npz file in the 'dataset' part"
        )
    if ("model" in files) == (request.model is not None):
        raise InvalidJob(
            "give exactly one model: a preset or a spec in the request, or an ONNX file in the 'model' part"
        )
    job_id = new_id()
    try:
        uploads = storage.save_uploads(job_id, files, settings.max_upload_bytes)
        quotas.check_upload_size(uploads=uploads, settings=settings)
        job_input = request.to_job_input(**storage.upload_paths(job_id))
        check_job_input(job_input, settings=settings)
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
    try:
        quotas.check_quotas(session=session, storage=storage, settings=settings, owner=owner)
    except QuotaExceeded:
        jobs.discard_job(session=session, job_id=job.id)
        storage.delete_uploads(job.id)
        raise
    if dispatch is not None:
        try:
            dispatch(job.id)
        except Exception as error:
            logger.exception("could not queue job %s; withdrawing it", job.id)
            jobs.discard_job(session=session, job_id=job.id)
            storage.delete_uploads(job.id)
            raise Unavailable("the job queue cannot be reached; nothing was submitted, try again shortly") from error
    return job, True
