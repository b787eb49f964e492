"""A job's states, declared once: the job store's column and queries, the API's models, the metrics and the
``vdc`` client all read them here."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """Where a job is. It moves queued -> running -> one of the finished states; a running job whose worker
    died goes back to queued; a queued job may be cancelled at once."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = frozenset({JobState.QUEUED, JobState.RUNNING})  # counted against an owner's allowance
FINISHED = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})  # never change again
