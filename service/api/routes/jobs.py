"""Submit, list, inspect and cancel compression jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy.orm import Session

from service import jobs
from service.api.deps import (
    CallerDep,
    CheckedCallerDep,
    DispatchDep,
    IdempotencyKey,
    OwnedJob,
    SettingsDep,
    StorageDep,
    SubmissionDep,
)
from service.api.errors import error_responses
from service.api.forms import OPENAPI_BODY
from service.errors import NotFound
from service.models import JobList, JobPublic
from service.submission import submit_job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=error_responses(401, 404, 422, 503))


@router.post(
    "",
    status_code=202,
    openapi_extra=OPENAPI_BODY,
    responses={
        200: {"model": JobPublic, "description": "the job an earlier request with this Idempotency-Key made"},
        # 400: a multipart body that cannot be parsed; 429: the owner's allowance of jobs or storage is used up.
        **error_responses(400, 409, 413, 415, 429),
    },
)
async def submit(
    # The caller comes first: the key is checked before the body is read.
    caller: CheckedCallerDep,
    submission: SubmissionDep,
    storage: StorageDep,
    settings: SettingsDep,
    dispatch: DispatchDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> JobPublic:
    """Queue a job; everything that can be checked now is, and a 4xx says what to fix."""

    def accept(session: Session, owner: str) -> tuple[JobPublic, bool]:
        job, created = submit_job(
            session=session, storage=storage, settings=settings, owner=owner, request=submission.request,
            files=submission.files, idempotency_key=idempotency_key, dispatch=dispatch,
        )
        return JobPublic.from_job(job), created  # read while the session is open: a commit expired the row

    job, created = await caller.run(accept, long=True)
    response.status_code = 202 if created else 200
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job


@router.get("")
async def list_jobs(
    caller: CallerDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, description="page size; at most the server's page_size_max")] = 20,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
) -> JobList:
    """The caller's jobs, newest first."""
    limit = min(limit, settings.page_size_max)
    items, total = await caller.run(
        lambda session, owner: jobs.list_jobs(session=session, owner=owner, limit=limit, offset=offset)
    )
    following = f"/v1/jobs?limit={limit}&offset={offset + limit}" if offset + limit < total else None
    page = [JobPublic.from_job(job) for job in items]
    return JobList(items=page, total=total, limit=limit, offset=offset, next=following)


@router.get("/{job_id}")
async def get_job(job: OwnedJob) -> JobPublic:
    return JobPublic.from_job(job)


@router.delete("/{job_id}", status_code=202, responses=error_responses(409))
async def cancel_job(job_id: str, caller: CallerDep) -> JobPublic:
    """Cancel a queued job at once, or ask a running job's worker to stop within an epoch; 409 once finished."""

    def cancel(session: Session, owner: str) -> JobPublic | None:
        job = jobs.request_cancel(session=session, owner=owner, job_id=job_id)
        return None if job is None else JobPublic.from_job(job)

    job = await caller.run(cancel)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job
