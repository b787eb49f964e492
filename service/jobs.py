"""The job store: plain functions over a session, no HTTP, used by the API and by the workers.

States move only forward::

    queued -> running -> succeeded | failed | cancelled
    queued -> cancelled | failed
    running -> running            (a redelivered task after a worker died: one more attempt)

Each transition is one conditional ``UPDATE ... WHERE state IN (...)``, so an API cancelling and a worker
starting the same job at the same moment cannot both win. Functions that act for a user take ``owner`` and
see only that owner's jobs; functions for workers take the job id alone. Reads always go to the database, as
another process may have just changed the job.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.errors import JobConflict, NotFound
from service.models import FINISHED, STATES, Job, JobRequest, new_id, utcnow


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


def get_job(*, session: Session, owner: str, job_id: str) -> Job | None:
    """The owner's job, or None: another owner's job is indistinguishable from a missing one."""
    query = select(Job).where(Job.id == job_id, Job.owner == owner).execution_options(populate_existing=True)
    return session.scalar(query)


def list_jobs(*, session: Session, owner: str, limit: int, offset: int) -> tuple[list[Job], int]:
    """One page of the owner's jobs, newest first, and how many jobs the owner has in all."""
    page = (
        select(Job)
        .where(Job.owner == owner)
        .order_by(Job.created_at.desc(), Job.id.desc())
        .execution_options(populate_existing=True)
    )
    total = session.scalar(select(func.count()).select_from(Job).where(Job.owner == owner)) or 0
    return list(session.scalars(page.limit(limit).offset(offset))), total


def discard_job(*, session: Session, job_id: str) -> None:
    """Delete a job that was never handed to a worker, so a retried submission starts afresh."""
    job = session.get(Job, job_id)
    if job is not None:
        session.delete(job)
        session.commit()


def count_by_state(*, session: Session) -> dict[str, int]:
    """Jobs per state over all owners, every state present (for metrics)."""
    counts = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
    return {state: counts.get(state, 0) for state in STATES}


def _transition(session: Session, job_id: str, sources: set[str], target: str, **values: Any) -> Job:
    """Move the job to ``target`` if it is in one of ``sources``; ``JobConflict`` otherwise."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state.in_(sources))
        .values(state=target, updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise NotFound(f"no job {job_id}")
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise JobConflict(f"job {job_id} is {job.state} and cannot become {target}")
    return job


def mark_running(*, session: Session, job_id: str) -> Job:
    """A worker starts (or, after a crash, restarts) the job; ``started_at`` is the current attempt's start."""
    return _transition(
        session, job_id, {"queued", "running"}, "running", started_at=utcnow(), attempts=Job.attempts + 1
    )


def mark_succeeded(*, session: Session, job_id: str) -> Job:
    return _transition(session, job_id, {"running"}, "succeeded", finished_at=utcnow(), error=None)


def mark_failed(*, session: Session, job_id: str, message: str) -> Job:
    """Fail the job with ``message``, which the user reads: say what went wrong and what to change."""
    return _transition(session, job_id, {"queued", "running"}, "failed", finished_at=utcnow(), error=message)


def mark_cancelled(*, session: Session, job_id: str) -> Job:
    """A worker stopped the job because a cancel was requested."""
    return _transition(session, job_id, {"queued", "running"}, "cancelled", finished_at=utcnow())


def request_cancel(*, session: Session, owner: str, job_id: str) -> Job | None:
    """Cancel the owner's job: a queued job is cancelled at once, a running one is flagged for its worker to
    stop within an epoch. ``JobConflict`` if it has already finished; None if the owner has no such job."""
    job = get_job(session=session, owner=owner, job_id=job_id)
    if job is None:
        return None
    try:
        return _transition(session, job_id, {"queued"}, "cancelled", finished_at=utcnow(), cancel_requested=True)
    except JobConflict:
        pass
    try:
        return _transition(session, job_id, {"running"}, "running", cancel_requested=True)
    except JobConflict:
        raise JobConflict(f"job {job_id} has finished ({job.state}); there is nothing to cancel") from None


def is_cancel_requested(*, session: Session, job_id: str) -> bool:
    """Whether a worker should stop: a cancel was requested, or the job is gone or already finished."""
    row = session.execute(select(Job.cancel_requested, Job.state).where(Job.id == job_id)).first()
    return row is None or row.cancel_requested or row.state in FINISHED


def record_progress(*, session: Session, job_id: str, event: Mapping[str, Any]) -> bool:
    """Store a pipeline progress event as the running job's progress; returns whether the worker should stop.

    The result suits ``worker.pipeline.run``'s ``on_progress``, where a truthy answer cancels the run. An
    epoch event (``epoch``, ``epochs``, ``seconds``, metrics) gets an ``eta_seconds``; a stage event (only
    ``stage``) clears the previous stage's metrics.
    """
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        return True
    progress = _clean(dict(event) if "epoch" in event else {"stage": event["stage"]})
    if "epoch" in event and isinstance(event.get("seconds"), int | float):
        remaining = event["epochs"] - event["epoch"]
        if event["stage"] == "pretraining":
            remaining += job.request["options"]["epochs"]
        progress["eta_seconds"] = event["seconds"] * remaining
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == "running")
        .values(progress=progress, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 0 or is_cancel_requested(session=session, job_id=job_id)  # type: ignore[attr-defined]


def _clean(values: dict[str, Any]) -> dict[str, Any]:
    """NaN and infinities become null: JSON has no such numbers, and PostgreSQL refuses them."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()}
