"""The job store without HTTP: idempotency, state transitions, cancelling, owners, pagination, progress."""

from datetime import timedelta

import pytest

from recipe.options import JobOptions
from recipe.progress import Progress, Stage
from service import jobs
from service.errors import JobConflict, NotFound
from service.models import utcnow
from service.states import FINISHED, JobState
from tests.service.conftest import digits_request

TRAINING = Progress(stage=Stage.TRAINING)


def new_job(session, owner="alice", **kwargs):
    job, created = jobs.create_job(session=session, owner=owner, request=digits_request(), **kwargs)
    assert created
    return job


def test_created_job_is_queued_with_defaults_filled_in(session):
    job = new_job(session)
    assert job.state == "queued" and job.attempts == 0 and not job.cancel_requested
    assert job.request["options"]["epochs"] == 2
    assert job.request["options"]["batch_size"] == JobOptions().batch_size
    assert job.created_at.tzinfo is not None
    assert jobs.get_job(session=session, owner="alice", job_id=job.id) is job


def test_same_idempotency_key_and_request_returns_the_same_job(session):
    first = new_job(session, idempotency_key="k1", uploads={"weights": {"bytes": 3, "sha256": "ab"}})
    again, created = jobs.create_job(
        session=session, owner="alice", request=digits_request(), idempotency_key="k1",
        uploads={"weights": {"bytes": 3, "sha256": "ab"}},
    )
    assert not created and again.id == first.id
    assert jobs.list_jobs(session=session, owner="alice", limit=10, offset=0)[1] == 1


@pytest.mark.parametrize(
    ("request_", "uploads"),
    [(digits_request(epochs=3), None), (digits_request(), {"weights": {"bytes": 3, "sha256": "cd"}})],
    ids=["other options", "other upload"],
)
def test_same_idempotency_key_with_a_different_request_conflicts(session, request_, uploads):
    first = new_job(session, idempotency_key="k1")
    with pytest.raises(JobConflict, match=f"already used for a different request \\(job {first.id}\\)"):
        jobs.create_job(session=session, owner="alice", request=request_, uploads=uploads, idempotency_key="k1")


def test_idempotency_keys_belong_to_their_owner(session):
    mine = new_job(session, idempotency_key="k1")
    theirs = new_job(session, owner="bob", idempotency_key="k1")
    assert mine.id != theirs.id


def test_owners_see_only_their_jobs(session):
    job = new_job(session)
    new_job(session, owner="bob")
    assert jobs.get_job(session=session, owner="bob", job_id=job.id) is None
    assert jobs.request_cancel(session=session, owner="bob", job_id=job.id) is None
    assert jobs.get_job(session=session, owner="alice", job_id=job.id).state == "queued"
    assert jobs.list_jobs(session=session, owner="alice", limit=10, offset=0)[1] == 1
    assert jobs.get_job(session=session, owner="alice", job_id="not-a-uuid") is None


def test_list_is_newest_first_and_paginated(session):
    created = [new_job(session).id for _ in range(5)]
    first, total = jobs.list_jobs(session=session, owner="alice", limit=2, offset=0)
    rest, _ = jobs.list_jobs(session=session, owner="alice", limit=10, offset=2)
    assert total == 5
    assert [j.id for j in first + rest] == created[::-1]


def test_a_job_runs_then_succeeds(session):
    job = new_job(session)
    running = jobs.claim(session=session, job_id=job.id, lease_s=60)
    assert running.state == "running" and running.attempts == 1 and running.started_at is not None
    done = jobs.finish(session=session, job_id=job.id, state=JobState.SUCCEEDED, attempt=1)
    assert done.state == "succeeded" and done.finished_at >= done.started_at


def test_a_duplicate_delivery_finds_the_job_taken(session):
    job = new_job(session)
    jobs.claim(session=session, job_id=job.id, lease_s=60)
    assert jobs.claim(session=session, job_id=job.id, lease_s=60) is None


def test_an_orphaned_job_is_requeued_once_its_lease_runs_out_and_claimed_for_another_attempt(session):
    job = new_job(session)
    jobs.claim(session=session, job_id=job.id, lease_s=60)
    assert jobs.requeue_orphans(session=session, now=utcnow()) == []  # the lease still runs
    later = utcnow() + timedelta(seconds=61)
    assert jobs.requeue_orphans(session=session, now=later) == [job.id]
    assert jobs.requeue_orphans(session=session, now=later) == []  # a second reconciler finds nothing
    requeued = jobs.get_job(session=session, owner="alice", job_id=job.id)
    assert requeued.state == "queued" and requeued.progress["stage"] == "requeued"
    assert jobs.claim(session=session, job_id=job.id, lease_s=60).attempts == 2


def test_a_worker_that_lost_its_job_can_no_longer_write_it(session):
    job = new_job(session)
    jobs.claim(session=session, job_id=job.id, lease_s=60)
    jobs.requeue_orphans(session=session, now=utcnow() + timedelta(seconds=61))
    jobs.claim(session=session, job_id=job.id, lease_s=60)  # attempt 2, on another worker
    assert not jobs.renew_lease(session=session, job_id=job.id, attempt=1, lease_s=60)
    assert not jobs.record_progress(session=session, job_id=job.id, progress=TRAINING, attempt=1)
    assert jobs.should_stop(session=session, job_id=job.id, attempt=1)
    assert not jobs.should_stop(session=session, job_id=job.id, attempt=2)
    with pytest.raises(JobConflict):
        jobs.finish(session=session, job_id=job.id, state=JobState.SUCCEEDED, attempt=1)
    assert jobs.renew_lease(session=session, job_id=job.id, attempt=2, lease_s=60)
    assert jobs.finish(session=session, job_id=job.id, state=JobState.SUCCEEDED, attempt=2).state == "succeeded"


def test_queued_jobs_are_dispatched_again_with_a_growing_wait(session):
    job = new_job(session)
    created = jobs.get_job(session=session, owner="alice", job_id=job.id).dispatched_at
    assert jobs.redispatch_due(session=session, now=created + timedelta(seconds=9), after_s=10) == []
    assert jobs.redispatch_due(session=session, now=created + timedelta(seconds=10), after_s=10) == [job.id]
    second = created + timedelta(seconds=10)
    # The second wait is twice the first; a concurrent reconciler does not dispatch the job again.
    assert jobs.redispatch_due(session=session, now=second + timedelta(seconds=19), after_s=10) == []
    assert jobs.redispatch_due(session=session, now=second + timedelta(seconds=20), after_s=10) == [job.id]
    jobs.claim(session=session, job_id=job.id, lease_s=60)
    assert jobs.redispatch_due(session=session, now=second + timedelta(days=1), after_s=10) == []


@pytest.mark.parametrize("finish", sorted(FINISHED))
def test_a_finished_job_never_moves_again(session, finish):
    job = new_job(session)
    jobs.claim(session=session, job_id=job.id, lease_s=60)
    jobs.finish(session=session, job_id=job.id, state=finish, attempt=1)
    assert jobs.claim(session=session, job_id=job.id, lease_s=60) is None
    for state in FINISHED:
        with pytest.raises(JobConflict, match=f"is {finish} and cannot become"):
            jobs.finish(session=session, job_id=job.id, state=state, attempt=1)
        with pytest.raises(JobConflict):
            jobs.finish(session=session, job_id=job.id, state=state, error="again")
    assert jobs.get_job(session=session, owner="alice", job_id=job.id).state == finish


def test_only_finished_states_finish_a_job(session):
    job = new_job(session)
    with pytest.raises(ValueError, match="not a finished state"):
        jobs.finish(session=session, job_id=job.id, state=JobState.RUNNING)


def test_a_queued_job_cannot_succeed_without_running(session):
    job = new_job(session)
    with pytest.raises(JobConflict, match="is queued and cannot become succeeded"):
        jobs.finish(session=session, job_id=job.id, state=JobState.SUCCEEDED, attempt=1)


def test_failure_keeps_the_message_for_the_user(session):
    job = new_job(session)
    jobs.claim(session=session, job_id=job.id, lease_s=60)
    message = "the weights hold NaN; export them again"
    failed = jobs.finish(session=session, job_id=job.id, state=JobState.FAILED, error=message)
    assert failed.state == "failed" and failed.error == message


def test_transitions_of_a_missing_job(session):
    assert jobs.claim(session=session, job_id="00000000-0000-4000-8000-000000000000", lease_s=60) is None
    with pytest.raises(NotFound):
        jobs.finish(session=session, job_id="00000000-0000-4000-8000-000000000000", state=JobState.FAILED, error="gone")


def test_cancelling_a_queued_job_is_immediate(session):
    job = new_job(session)
    cancelled = jobs.request_cancel(session=session, owner="alice", job_id=job.id)
    assert cancelled.state == "cancelled" and cancelled.finished_at is not None
    assert jobs.claim(session=session, job_id=job.id, lease_s=60) is None


def test_cancelling_a_running_job_asks_its_worker_to_stop(session):
    job = new_job(session)
    jobs.claim(session=session, job_id=job.id, lease_s=60)
    assert not jobs.should_stop(session=session, job_id=job.id, attempt=1)
    flagged = jobs.request_cancel(session=session, owner="alice", job_id=job.id)
    assert flagged.state == "running" and flagged.cancel_requested
    assert jobs.should_stop(session=session, job_id=job.id, attempt=1)
    assert jobs.record_progress(session=session, job_id=job.id, progress=TRAINING), "it still reports as it stops"
    assert jobs.finish(session=session, job_id=job.id, state=JobState.CANCELLED).state == "cancelled"


def test_cancelling_a_finished_job_conflicts(session):
    job = new_job(session)
    jobs.claim(session=session, job_id=job.id, lease_s=60)
    jobs.finish(session=session, job_id=job.id, state=JobState.SUCCEEDED, attempt=1)
    with pytest.raises(JobConflict, match=r"has finished \(succeeded\); there is nothing to cancel"):
        jobs.request_cancel(session=session, owner="alice", job_id=job.id)


def test_progress_is_stored_as_given_and_a_stage_event_clears_the_previous_stage(session):
    job = new_job(session)
    jobs.claim(session=session, job_id=job.id, lease_s=60)
    epoch = Progress(stage=Stage.TRAINING, epoch=1, epochs=4, data_loss=0.5, kl=float("nan"), eta_seconds=6.0)
    assert jobs.record_progress(session=session, job_id=job.id, progress=epoch, attempt=1)
    stored = jobs.get_job(session=session, owner="alice", job_id=job.id).progress
    assert stored == {"stage": "training", "epoch": 1, "epochs": 4, "data_loss": 0.5, "eta_seconds": 6.0}
    jobs.record_progress(session=session, job_id=job.id, progress=Progress(stage=Stage.EXPORTING))
    assert jobs.get_job(session=session, owner="alice", job_id=job.id).progress == {"stage": "exporting"}


def test_progress_is_refused_unless_running(session):
    job = new_job(session)
    assert not jobs.record_progress(session=session, job_id=job.id, progress=TRAINING)
    assert jobs.get_job(session=session, owner="alice", job_id=job.id).progress is None
    missing = "00000000-0000-4000-8000-000000000000"
    assert not jobs.record_progress(session=session, job_id=missing, progress=TRAINING)
    assert jobs.should_stop(session=session, job_id=missing) and jobs.should_stop(session=session, job_id=job.id)


def test_count_by_state_and_discard(session):
    kept, dropped = new_job(session), new_job(session)
    jobs.claim(session=session, job_id=kept.id, lease_s=60)
    jobs.discard_job(session=session, job_id=dropped.id)
    assert jobs.count_by_state(session=session) == {
        "queued": 0, "running": 1, "succeeded": 0, "failed": 0, "cancelled": 0
    }
