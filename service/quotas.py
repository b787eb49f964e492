"""Per-owner allowances, checked at submission: jobs queued or running at once, and disk used by uploads and
artifacts.

Storage is measured on disk rather than taken from ``Job.uploads``: a finished job's uploads are released
while its record keeps their sizes, and artifacts are recorded nowhere else.

``check_quotas`` counts the job being submitted as well: ``submit_job`` records it first and withdraws it if
an allowance is exceeded, so two submissions racing for an owner's last slot cannot both win (at worst both
are refused, and a retry gets it), and an idempotent retry of an accepted job is never refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.core.config import Settings
from service.errors import QuotaExceeded, TooLarge
from service.models import Job
from service.states import ACTIVE
from service.storage import Storage


def active_jobs(*, session: Session, owner: str) -> int:
    """How many of the owner's jobs are queued or running."""
    query = select(func.count()).select_from(Job).where(Job.owner == owner, Job.state.in_(ACTIVE))
    return session.scalar(query) or 0


def upload_bytes(uploads: Mapping[str, Any]) -> int:
    """The size of a job's uploads, as ``Storage.save_uploads`` returns them (and ``Job.uploads`` records them)."""
    return sum(int(upload["bytes"]) for upload in uploads.values())


def _file_bytes(paths: Iterable[str | os.PathLike[str]]) -> int:
    total = 0
    for path in paths:
        with suppress(OSError):  # removed while we looked (released, or an artifact directory being replaced)
            total += os.stat(path, follow_symlinks=False).st_size
    return total


def _tree_bytes(folder: Path) -> int:
    return _file_bytes(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names)


def storage_bytes(*, session: Session, storage: Storage, owner: str) -> int:
    """Disk the owner's jobs use now: their uploads and their artifacts."""
    total = 0
    for job_id in session.scalars(select(Job.id).where(Job.owner == owner)):
        total += _file_bytes(storage.upload_paths(job_id).values()) + _tree_bytes(storage.job_artifact_dir(job_id))
    return total


def check_upload_size(*, uploads: Mapping[str, Any], settings: Settings) -> None:
    """``TooLarge`` if one job's uploads alone would pass the owner's storage allowance."""
    size, limit = upload_bytes(uploads), settings.max_storage_bytes_per_owner
    if size > limit:
        raise TooLarge(
            f"the uploaded files take {size:,} bytes, more than the {limit:,} bytes one owner may store "
            "(setting max_storage_bytes_per_owner); send smaller files"
        )


def check_quotas(*, session: Session, storage: Storage, settings: Settings, owner: str) -> None:
    """``QuotaExceeded`` if the owner, counting the job just recorded, has too many active jobs or uses too much
    disk."""
    limit = settings.max_active_jobs_per_owner
    if active_jobs(session=session, owner=owner) > limit:
        raise QuotaExceeded(
            f"too many active jobs: one owner may have at most {limit} jobs queued or running at once (setting "
            "max_active_jobs_per_owner); wait for one to finish, or cancel one, then submit again"
        )
    used, limit = storage_bytes(session=session, storage=storage, owner=owner), settings.max_storage_bytes_per_owner
    if used > limit:
        raise QuotaExceeded(
            f"not enough storage: with this job, your uploads and artifacts would take {used:,} bytes, more than "
            f"the {limit:,} bytes one owner may store (setting max_storage_bytes_per_owner); ask the operator to "
            "remove old jobs' files or raise the limit"
        )
