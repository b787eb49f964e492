"""What routes take as arguments: settings, storage, the caller and the caller's job.

Authentication is a dependency, not handler code: a route reaches the database only through ``Caller``, whose
every call first checks the API key, in the same call, so no route can run for a caller without a live key.
Every dependency here is ``async``: FastAPI would run a sync one on its thread pool, one more hop per request,
and each hop costs more than the query it carries (see ``service.api.database``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service import jobs
from service.api.database import Database
from service.api.forms import Submission, read_submission
from service.core.config import Settings
from service.errors import JobConflict, NotFound, Unauthorized
from service.keys import authenticate
from service.models import Job
from service.states import JobState
from service.storage import Storage
from service.submission import Dispatch

T = TypeVar("T")


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _storage(request: Request) -> Storage:
    return request.app.state.storage


async def _dispatch(request: Request) -> Dispatch | None:
    return request.app.state.dispatch


SettingsDep = Annotated[Settings, Depends(_settings)]
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


class Caller:
    """The client behind a request, as far as its API key says: ``run(work)`` calls ``work(session, owner)``
    for the key's owner, after checking the key in the same session on the same thread."""

    def __init__(self, database: Database, token: str, request: Request) -> None:
        self._database, self._token, self._request = database, token, request

    async def run(self, work: Callable[[Session, str], T], *, long: bool = False) -> T:
        """Work skipped if the client has gone by its turn; asking would take a message from the request's
        stream, harmless only once the body has been read (``long`` work reads a body, and is never skipped)."""
        return await self._database.run(
            lambda session: work(session, self._owner(session)), long=long, abandoned=self._request.is_disconnected
        )

    async def owner(self) -> str:
        """Check the key alone, before a request's body is read."""
        return await self._database.run(self._owner)

    def _owner(self, session: Session) -> str:
        key = authenticate(session=session, token=self._token)
        if key is None:
            raise Unauthorized("invalid or revoked API key", 'Bearer error="invalid_token"')
        return key.owner


async def _caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Caller:
    if credentials is None:
        raise Unauthorized(
            "missing API key: send the header 'Authorization: Bearer <key>' (create a key with `vdc keys create`)"
        )
    return Caller(request.app.state.database, credentials.credentials, request)


CallerDep = Annotated[Caller, Depends(_caller)]


async def _checked_caller(caller: CallerDep) -> Caller:
    await caller.owner()
    return caller


# For a route that reads a large body: the key is checked before the body is, and again with the work.
CheckedCallerDep = Annotated[Caller, Depends(_checked_caller)]


async def _owned_job(job_id: str, caller: CallerDep) -> Job:
    """The caller's job, read in a session already closed: its columns are loaded, it has no relationships."""
    job = await caller.run(lambda session, owner: jobs.get_job(session=session, owner=owner, job_id=job_id))
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


OwnedJob = Annotated[Job, Depends(_owned_job)]


async def _succeeded_job(job: OwnedJob) -> Job:
    if job.state != JobState.SUCCEEDED:
        raise JobConflict(f"job {job.id} is {job.state}; its artifacts are available once it has succeeded")
    return job


SucceededJob = Annotated[Job, Depends(_succeeded_job)]
