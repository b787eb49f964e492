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

# The states the job store may move a job into each state from; any other move is a conflict. A queued job
# cancelled or failed never ran; a running job goes back to queued when its worker is presumed dead.
ENTERED_FROM: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING}),
    JobState.RUNNING: frozenset({JobState.QUEUED}),
    JobState.SUCCEEDED: frozenset({JobState.RUNNING}),
    JobState.FAILED: ACTIVE,
    JobState.CANCELLED: ACTIVE,
}
