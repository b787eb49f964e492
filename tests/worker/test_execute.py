"""Running stored jobs without a queue: outcomes recorded, artifacts published whole, finished jobs left alone,
interrupted jobs resumed, and a worker that lost its job writing nothing."""

import json
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session

from recipe.pipeline import ARTIFACTS
from recipe.plots import PLOTS
from recipe.progress import Progress, Stage
from service import jobs
from service.core.config import Settings
from service.db import create_db_engine, create_sessionmaker, upgrade_database
from service.models import Job, JobRequest, utcnow
from service.states import JobState
from service.storage import Storage
from worker.execute import INTERNAL_ERROR, execute_job

FAST = {"epochs": 2, "pretrain_epochs": 1, "batch_size": 100, "device": "cpu", "curve_exports": 0}


@pytest.fixture
def world(tmp_path):
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'vdc.db'}")
    upgrade_database(settings.database_url)
    engine = create_db_engine(settings.database_url)
    sessions = create_sessionmaker(engine)
    storage = Storage.from_settings(settings)
    storage.create_dirs()
    yield sessions, storage
    engine.dispose()


def submit(sessions, **request) -> str:
    body = {"model": {"preset": "lenet-300-100"}, "dataset": {"builtin": "digits"}, "options": FAST} | request
    with sessions() as session:
        job, _ = jobs.create_job(session=session, owner="alice", request=JobRequest.model_validate(body))
        return job.id


def run(job_id, sessions, storage, **settings):
    data_dir = storage.artifact_dir.parent
    values = {"data_dir": data_dir, "database_url": str(sessions.kw["bind"].url)} | settings
    return execute_job(job_id, sessions=sessions, storage=storage, settings=Settings(**values))


def orphan(sessions, job_id):
    """What a worker that died mid-run leaves once its lease ran out and the reconciler requeued the job."""
    with sessions() as session:
        assert jobs.requeue_orphans(session=session, now=utcnow() + timedelta(hours=1)) == [job_id]


def load(sessions, job_id):
    with sessions() as session:
        return jobs.get_job(session=session, owner="alice", job_id=job_id)


def test_a_job_succeeds_with_progress_and_all_artifacts(world):
    sessions, storage = world
    job_id = submit(sessions)
    assert run(job_id, sessions, storage) == "succeeded"
    job = load(sessions, job_id)
    assert job.state == "succeeded" and job.attempts == 1 and job.error is None
    assert job.progress["stage"] == "measuring"
    assert {a.name for a in storage.list_artifacts(job_id)} == {*ARTIFACTS, *PLOTS}
    assert not list(storage.artifact_dir.glob(".*")), "no partial directory may remain"
    assert not storage.job_checkpoint_dir(job_id).exists(), "checkpoints go once the job has finished"
    assert run(job_id, sessions, storage) == "succeeded", "a finished job is not run again"
    assert load(sessions, job_id).attempts == 1


def test_cancel_requested_while_running_stops_within_an_epoch(world, monkeypatch):
    sessions, storage = world
    job_id = submit(sessions)
    original = jobs.record_progress

    def cancel_at_first_epoch(*, session: Session, job_id: str, progress: Progress, attempt: int) -> bool:
        if progress.epoch == 1:
            jobs.request_cancel(session=session, owner="alice", job_id=job_id)
        return original(session=session, job_id=job_id, progress=progress, attempt=attempt)

    monkeypatch.setattr(jobs, "record_progress", cancel_at_first_epoch)
    assert run(job_id, sessions, storage) == "cancelled"
    assert storage.list_artifacts(job_id) == []


def test_an_interrupted_job_resumes_from_its_last_epoch(world, monkeypatch):
    sessions, storage = world
    job_id = submit(sessions, options=FAST | {"epochs": 3})
    original = jobs.record_progress

    def die_after_training_epoch_2(*, session: Session, job_id: str, progress: Progress, attempt: int) -> bool:
        if progress.stage == Stage.TRAINING and progress.epoch == 2:
            raise KeyboardInterrupt("the worker is killed")  # not an Exception: nothing is recorded
        return original(session=session, job_id=job_id, progress=progress, attempt=attempt)

    monkeypatch.setattr(jobs, "record_progress", die_after_training_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(job_id, sessions, storage)
    monkeypatch.setattr(jobs, "record_progress", original)
    assert load(sessions, job_id).state == "running" and storage.list_artifacts(job_id) == []
    orphan(sessions, job_id)
    assert run(job_id, sessions, storage) == "succeeded"
    job = load(sessions, job_id)
    assert job.attempts == 2
    report = json.loads(storage.artifact(job_id, "report.json").path.read_bytes())
    assert report["resumed_after_epoch"] == {"pretraining": 1, "training": 2, "finetuning": 0}
    assert [m["epoch"] for m in report["history"]["training"]] == [1, 2, 3]
    assert not list(storage.artifact_dir.glob(".*")), "the dead attempt's partial directory is cleaned up"


def test_a_job_interrupted_too_often_fails_and_shows_nothing(world):
    sessions, storage = world
    job_id = submit(sessions)
    with sessions() as session:
        for _ in range(2):  # two earlier attempts whose workers died mid-run
            jobs.claim(session=session, job_id=job_id, lease_s=60)
            (storage.partial_artifact_dir(job_id, session.get(Job, job_id).attempts) / "model.onnx").write_bytes(
                b"half a file"
            )
            orphan(sessions, job_id)
    assert run(job_id, sessions, storage, max_attempts=2) == "failed"
    job = load(sessions, job_id)
    assert "interrupted 2 times" in job.error
    assert storage.list_artifacts(job_id) == []
    assert not list(storage.artifact_dir.glob(".*"))


def test_a_duplicate_delivery_does_nothing(world):
    sessions, storage = world
    job_id = submit(sessions)
    with sessions() as session:
        jobs.claim(session=session, job_id=job_id, lease_s=60)  # another worker runs it
    assert run(job_id, sessions, storage) == "running"
    assert load(sessions, job_id).attempts == 1


def test_a_worker_whose_job_was_taken_over_stops_and_writes_nothing(world, monkeypatch):
    sessions, storage = world
    job_id = submit(sessions)
    original = jobs.record_progress

    def taken_over_at_first_epoch(*, session: Session, job_id: str, progress: Progress, attempt: int) -> bool:
        if progress.epoch == 1 and attempt == 1:  # presumed dead: requeued and claimed elsewhere
            orphan(sessions, job_id)
            jobs.claim(session=session, job_id=job_id, lease_s=60)
        return original(session=session, job_id=job_id, progress=progress, attempt=attempt)

    monkeypatch.setattr(jobs, "record_progress", taken_over_at_first_epoch)
    assert run(job_id, sessions, storage) == "lost"
    job = load(sessions, job_id)
    assert job.state == "running" and job.attempts == 2
    assert storage.list_artifacts(job_id) == []


def test_a_job_over_its_time_limit_fails_with_the_limit(world):
    sessions, storage = world
    job_id = submit(sessions)
    assert run(job_id, sessions, storage, job_time_limit_s=1e-9) == "failed"
    assert "longer than the" in load(sessions, job_id).error


def test_an_unexpected_error_fails_the_job_without_details(world, monkeypatch):
    sessions, storage = world
    job_id = submit(sessions)

    def explode(*args, **kwargs):
        raise RuntimeError("/secret/path/on/the/worker")

    monkeypatch.setattr("worker.execute.run", explode)
    assert run(job_id, sessions, storage) == "failed"
    assert load(sessions, job_id).error == INTERNAL_ERROR


def test_missing_job_is_ignored(world):
    sessions, storage = world
    assert run("00000000-0000-4000-8000-000000000000", sessions, storage) == "missing"


def test_a_user_error_fails_the_job_with_a_message_that_says_what_to_fix(world):
    sessions, storage = world
    job_id = submit(sessions, model={"preset": "lenet-5-caffe"})  # 5x5 kernels cannot fit 8x8 digits twice
    assert run(job_id, sessions, storage) == "failed"
    assert "larger than the padded input" in load(sessions, job_id).error


def test_an_owner_over_the_running_limit_waits_in_the_queue(world):
    sessions, storage = world
    running, waiting = submit(sessions), submit(sessions)
    with sessions() as session:
        jobs.claim(session=session, job_id=running, lease_s=60)
    assert run(waiting, sessions, storage, max_running_jobs_per_owner=1) == "deferred"
    assert load(sessions, waiting).state == "queued" and load(sessions, waiting).attempts == 0
    with sessions() as session:
        jobs.finish(session=session, job_id=running, state=JobState.FAILED, error="stopped", attempt=1)
    assert run(waiting, sessions, storage, max_running_jobs_per_owner=1) == "succeeded"
