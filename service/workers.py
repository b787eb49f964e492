"""Which workers are alive: each worker process renews its row every heartbeat, and one that has been silent
for a lease is presumed dead, as its job would be (``service.jobs``). Readiness reports the count; the
reconciler forgets rows silent for long, since deployments that name workers after their containers would
otherwise gather one row per container ever started."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from service.models import Worker, utcnow

FORGET_AFTER = timedelta(days=1)


def beat(*, session: Session, name: str, pid: int, started_at: datetime) -> None:
    """Say that worker ``name`` (process ``pid``, up since ``started_at``) is alive now."""
    session.merge(Worker(name=name, pid=pid, started_at=started_at, seen_at=utcnow()))
    session.commit()


def forget(*, session: Session, name: str) -> None:
    """A worker that stops cleanly leaves at once instead of falling silent."""
    session.execute(delete(Worker).where(Worker.name == name))
    session.commit()


def count_alive(*, session: Session, within_s: float, now: datetime | None = None) -> int:
    """Workers heard from within the last ``within_s`` seconds."""
    since = (now or utcnow()) - timedelta(seconds=within_s)
    return session.scalar(select(func.count()).select_from(Worker).where(Worker.seen_at >= since)) or 0


def forget_silent(*, session: Session, now: datetime | None = None) -> int:
    """Remove workers silent for ``FORGET_AFTER``; returns how many."""
    result = session.execute(delete(Worker).where(Worker.seen_at < (now or utcnow()) - FORGET_AFTER))
    session.commit()
    return result.rowcount  # type: ignore[attr-defined]
