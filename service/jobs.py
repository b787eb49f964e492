"""The job store: plain functions over a session, no HTTP, used by the API and by the workers.

States move as ``service.states.ENTERED_FROM`` allows: forward, except for a job whose worker died::

    queued -> running -> succeeded | failed | cancelled
    queued -> cancelled | failed
    running -> queued             (its lease ran out: the worker is presumed dead; the reconciler requeues it)

Each write is one conditional ``UPDATE ... WHERE state IN (...)`` (``_update_where``), so an API cancelling and a worker
starting the same job at the same moment cannot both win. A worker claims a queued job for one attempt (the
``attempts`` count it set) and holds it by renewing a lease; every write it makes afterwards is conditional
on still holding that attempt, so a worker that lost its job (presumed dead, but only slow) cannot overwrite
what the next attempt does. Functions that act for a user take ``owner`` and
see only that owner's jobs; functions for workers take the job id alone. Reads always go to the database, as
another process may have just changed the job.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from recipe.progress import Progress, Stage
from service.errors import JobConflict, NotFound
from service.models import Job, JobRequest, new_id, utcnow
from service.states import ENTERED_FROM, FINISHED, JobState

REQUEUED = Progress(
    stage=Stage.REQUEUED, reason="its worker stopped responding; it resumes from its last saved epoch"
)

def create_job(
    *,
    session: Session,
    owner: str,
    request: JobRequest,
    uploads: Mapping[str, Any] | None = None,
    idempotency_key: str | None = None,
    job_id: str | None = None,
) -> tuple[Job, bool]:
    """Record a queued job; returns it and whether it is new.

    With an ``idempotency_key`` the owner already used, the earlier job comes back (``created`` False) if the
    request and uploads are the same, and ``JobConflict`` is raised if they differ. ``job_id`` lets a caller
    store the uploads under the id before the row exists.
    """
    stored, uploads = request.model_dump(mode="json"), dict(uploads or {})
    if idempotency_key is not None:
        existing = _by_idempotency_key(session, owner, idempotency_key)
        if existing is not None:
            return _replayed(existing, stored, uploads), False
    job = Job(id=job_id or new_id(), owner=owner, request=stored, uploads=uploads, idempotency_key=idempotency_key)
    session.add(job)
    try:
        session.commit()
    except IntegrityError:
        # Another request with the same key committed first.
        session.rollback()
        existing = None if idempotency_key is None else _by_idempotency_key(session, owner, idempotency_key)
        if existing is None:
            raise
        return _replayed(existing, stored, uploads), False
    return job, True


def _by_idempotency_key(session: Session, owner: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.owner == owner, Job.idempotency_key == key))


def _replayed(job: Job, request: dict[str, Any], uploads: dict[str, Any]) -> Job:
    if job.request != request or job.uploads != uploads:
        raise JobConflict(
            f"Idempotency-Key {job.idempotency_key!r} was already used for a different request (job {job.id}); "
            "send a new key for a new job"
        )
    return job


# The reads behind every status poll and job list, built once: on SQLite, building a statement costs more than
# running it (bench/RESULTS.md, "API under load").
_OWNED_JOB = (
    select(Job).where(Job.id == bindparam("job_id"), Job.owner == bindparam("owner"))
    .execution_options(populate_existing=True)
)
_OWNER_PAGE = (
    select(Job).where(Job.owner == bindparam("owner"))
    .order_by(Job.created_at.desc(), Job.id.desc())
    .limit(bindparam("limit")).offset(bindparam("offset"))
    .execution_options(populate_existing=True)
)
_OWNER_COUNT = select(func.count()).select_from(Job).where(Job.owner == bindparam("owner"))


def get_job(*, session: Session, owner: str, job_id: str) -> Job | None:
    """The owner's job, or None: another owner's job is indistinguishable from a missing one."""
    return session.scalar(_OWNED_JOB, {"job_id": job_id, "owner": owner})


def list_jobs(*, session: Session, owner: str, limit: int, offset: int) -> tuple[list[Job], int]:
    """One page of the owner's jobs, newest first, and how many jobs the owner has in all."""
    total = session.scalar(_OWNER_COUNT, {"owner": owner}) or 0
    page = session.scalars(_OWNER_PAGE, {"owner": owner, "limit": limit, "offset": offset})
    return list(page), total


def discard_job(*, session: Session, job_id: str) -> None:
    """Delete a job that was never handed to a worker, so a retried submission starts afresh."""
    job = session.get(Job, job_id)
    if job is not None:
        session.delete(job)
        session.commit()


def count_by_state(*, session: Session) -> dict[str, int]:
    """Jobs per state over all owners, every state present (for metrics)."""
    counts = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
    return {state.value: counts.get(state, 0) for state in JobState}


def _update_where(session: Session, *condition: Any, **values: Any) -> bool:
    """Set ``values`` on the jobs that meet ``condition``, committed; whether any did (False: another process
    moved the job first)."""
    result = session.execute(
        update(Job).where(*condition).values(**values).execution_options(synchronize_session=False)
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def _this_attempt(job_id: str, states: Iterable[JobState], attempt: int | None) -> list[Any]:
    """The job in one of ``states``, and given ``attempt``, still that attempt's: a condition for
    ``_update_where``."""
    condition = [Job.id == job_id, Job.state.in_(states)]
    if attempt is not None:
        condition.append(Job.attempts == attempt)
    return condition


def _transition(session: Session, job_id: str, target: JobState, attempt: int | None = None, **values: Any) -> Job:
    """Move the job to ``target`` if ``ENTERED_FROM`` allows it from the job's state (and, given ``attempt``, the
    job is still in that attempt); ``JobConflict`` otherwise."""
    moved = _update_where(
        session, *_this_attempt(job_id, ENTERED_FROM[target], attempt), state=target, updated_at=utcnow(), **values
    )
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise NotFound(f"no job {job_id}")
    if not moved:
        raise JobConflict(f"job {job_id} is {job.state} and cannot become {target}")
    return job


def claim(
    *, session: Session, job_id: str, lease_s: float, max_running_per_owner: int | None = None
) -> Job | None:
    """Take a queued job for one more attempt, leased for ``lease_s``; None if it is not queued (another
    worker holds it, or it has finished: a duplicate delivery then has nothing to do) or if its owner already
    has ``max_running_per_owner`` jobs running (it stays queued).

    ``started_at`` is the current attempt's start; the returned job's ``attempts`` identifies the attempt. The
    owner's limit is part of the conditional update; two workers claiming the same owner's jobs in the same
    instant may still pass it by one on PostgreSQL, where each sees the other's claim only once committed.
    """
    now = utcnow()
    condition = [Job.id == job_id, Job.state == JobState.QUEUED]
    if max_running_per_owner is not None:
        owner = select(Job.owner).where(Job.id == job_id).scalar_subquery()
        running = (
            select(func.count()).select_from(Job).where(Job.owner == owner, Job.state == JobState.RUNNING)
        ).scalar_subquery()
        condition.append(running < max_running_per_owner)
    claimed = _update_where(
        session, *condition, state=JobState.RUNNING, updated_at=now, started_at=now, attempts=Job.attempts + 1,
        lease_expires_at=now + timedelta(seconds=lease_s),
    )
    if not claimed:
        return None
    return session.get(Job, job_id, populate_existing=True)


def renew_lease(*, session: Session, job_id: str, attempt: int, lease_s: float) -> bool:
    """Extend the attempt's hold on the job; False if the job is no longer this attempt's to run."""
    expires = utcnow() + timedelta(seconds=lease_s)
    return _update_where(session, *_this_attempt(job_id, {JobState.RUNNING}, attempt), lease_expires_at=expires)


def finish(
    *, session: Session, job_id: str, state: JobState, attempt: int | None = None, error: str | None = None
) -> Job:
    """Move the job (given ``attempt``, only if still that attempt's) to a finished ``state``. A failed job's
    ``error`` is what the user reads: say what went wrong and what to change."""
    if state not in FINISHED:
        raise ValueError(f"{state} is not a finished state")
    return _transition(session, job_id, state, attempt, finished_at=utcnow(), error=error, lease_expires_at=None)


def requeue_orphans(*, session: Session, now: datetime) -> list[str]:
    """Running jobs whose lease ran out (their worker died) go back to the queue, counted as dispatched now;
    returns their ids, for the caller to dispatch.

    Each is moved by its own conditional update, so of two reconcilers only one requeues a job.
    """
    expired = session.scalars(select(Job.id).where(Job.state == JobState.RUNNING, Job.lease_expires_at < now)).all()
    requeued = []
    for job_id in expired:
        if _update_where(
            session, Job.id == job_id, Job.state.in_(ENTERED_FROM[JobState.QUEUED]), Job.lease_expires_at < now,
            state=JobState.QUEUED, lease_expires_at=None, updated_at=now, dispatched_at=now,
            dispatches=Job.dispatches + 1,
            progress=REQUEUED.model_dump(mode="json", exclude_none=True),
        ):
            requeued.append(job_id)
    return requeued


def redispatch_due(*, session: Session, now: datetime, after_s: float, cap_s: float = 3600) -> list[str]:
    """Queued jobs due for another hand-to-the-broker, each claimed by one conditional update.

    A job is due once ``after_s * 2 ** (dispatches - 1)`` (at most ``cap_s``) have passed since its last
    dispatch: a lost message is replaced soon, while a job that merely waits behind others is not flooded
    with duplicates (which would be harmless: a duplicate finds the job taken and does nothing).
    """
    queued = session.execute(
        select(Job.id, Job.dispatched_at, Job.dispatches).where(Job.state == JobState.QUEUED)
    ).all()
    due = []
    for job_id, dispatched_at, dispatches in queued:
        wait = min(after_s * 2 ** max(dispatches - 1, 0), cap_s)
        if dispatched_at.replace(tzinfo=dispatched_at.tzinfo or now.tzinfo) + timedelta(seconds=wait) > now:
            continue
        if _update_where(
            session, Job.id == job_id, Job.state == JobState.QUEUED, Job.dispatches == dispatches,
            dispatched_at=now, dispatches=dispatches + 1,
        ):
            due.append(job_id)
    return due


def request_cancel(*, session: Session, owner: str, job_id: str) -> Job | None:
    """Cancel the owner's job: a queued job is cancelled at once, a running one is flagged for its worker to
    stop within an epoch. ``JobConflict`` if it has already finished; None if the owner has no such job."""
    job = get_job(session=session, owner=owner, job_id=job_id)
    if job is None:
        return None
    now = utcnow()
    if not _update_where(  # a queued job never ran: it is cancelled at once
        session, Job.id == job_id, Job.state == JobState.QUEUED,
        state=JobState.CANCELLED, finished_at=now, cancel_requested=True, updated_at=now,
    ) and not _update_where(
        session, Job.id == job_id, Job.state == JobState.RUNNING, cancel_requested=True, updated_at=now
    ):
        raise JobConflict(f"job {job_id} has finished ({job.state}); there is nothing to cancel")
    return session.get(Job, job_id, populate_existing=True)


def should_stop(*, session: Session, job_id: str, attempt: int | None = None) -> bool:
    """Whether a worker should stop the job: a cancel was requested, the job is gone or no longer running, or,
    given ``attempt``, another attempt has taken it over."""
    row = session.execute(select(Job.cancel_requested, Job.state, Job.attempts).where(Job.id == job_id)).first()
    return (
        row is None or row.cancel_requested or row.state != JobState.RUNNING
        or (attempt is not None and row.attempts != attempt)
    )


def record_progress(*, session: Session, job_id: str, progress: Progress, attempt: int | None = None) -> bool:
    """Store ``progress`` as the running job's (given ``attempt``, only while it is that attempt's); returns
    whether it was stored."""
    return _update_where(
        session, *_this_attempt(job_id, {JobState.RUNNING}, attempt),
        progress=progress.model_dump(mode="json", exclude_none=True), updated_at=utcnow(),
    )
