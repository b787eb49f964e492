"""What routes take as arguments: settings, a session, storage, the caller's identity, the caller's job.

Authentication is a dependency, not handler code: a route that takes ``CurrentOwner`` cannot run for a caller
without a live API key.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service import jobs
from service.api.forms import Submission, read_submission
from service.core.config import Settings
from service.db import session_scope
from service.errors import JobConflict, NotFound
from service.keys import authenticate
from service.models import Job
from service.storage import Storage
from service.submission import Dispatch


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _session(request: Request) -> Iterator[Session]:
    with session_scope(request.app.state.sessionmaker) as session:
        yield session


def _storage(request: Request) -> Storage:
    return request.app.state.storage


def _dispatch(request: Request) -> Dispatch | None:
    return request.app.state.dispatch


SettingsDep = Annotated[Settings, Depends(_settings)]
SessionDep = Annotated[Session, Depends(_session)]
StorageDep = Annotated[Storage, Depends(_storage)]
DispatchDep = Annotated[Dispatch | None, Depends(_dispatch)]
SubmissionDep = Annotated[Submission, Depends(read_submission)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key", min_length=1, max_length=200, description="a retry with the same key gets the same job"
    ),
]

_bearer = HTTPBearer(auto_error=False, description="an API key, created with `vdc keys create`")


def _current_owner(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    if credentials is None:
        raise HTTPException(
            401,
            "missing API key: send the header 'Authorization: Bearer <key>' (create a key with `vdc keys create`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    key = authenticate(session=session, token=credentials.credentials)
    if key is None:
        raise HTTPException(
            401, "invalid or revoked API key", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        )
    return key.owner


CurrentOwner = Annotated[str, Depends(_current_owner)]


def _owned_job(job_id: str, owner: CurrentOwner, session: SessionDep) -> Job:
    job = jobs.get_job(session=session, owner=owner, job_id=job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


OwnedJob = Annotated[Job, Depends(_owned_job)]


def _succeeded_job(job: OwnedJob) -> Job:
    if job.state != "succeeded":
        raise JobConflict(f"job {job.id} is {job.state}; its artifacts are available once it has succeeded")
    return job


SucceededJob = Annotated[Job, Depends(_succeeded_job)]
