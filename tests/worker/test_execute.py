"""Running stored jobs without a queue: outcomes recorded, artifacts published whole, finished jobs left alone."""

import pytest
from sqlalchemy.orm import Session

from service import jobs
from service.core.config import Settings
from service.db import create_db_engine, create_sessionmaker, upgrade_database
from service.models import JobRequest
from service.storage import Storage
from worker.execute import INTERNAL_ERROR, execute_job
from worker.pipeline import ARTIFACTS
from worker.plots import PLOTS

FAST = {"epochs": 2, "pretrain_epochs": 1, "batch_size": 100, "device": "cpu"}


@pytest.fixture
def world(tmp_path):
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'vdc.db'}")
    upgrade_database(settings.database_url)
    engine = create_db_engine(settings.database_url)
    sessions = create_sessionmaker(engine)
    storage = Storage(upload_dir=settings.upload_dir, artifact_dir=settings.artifact_dir)
    storage.create_dirs()
    yield sessions, storage
    engine.dispose()


def submit(sessions, **request) -> str:
    body = {"model": {"preset": "lenet-300-100"}, "dataset": {"builtin": "digits"}, "options": FAST} | request
    with sessions() as session:
        job, _ = jobs.create_job(session=session, owner="alice", request=JobRequest.model_validate(body))
        return job.id


def run(job_id, sessions, storage, max_attempts=3):
    return execute_job(job_id, sessions=sessions, storage=storage, max_attempts=max_attempts)


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
    assert run(job_id, sessions, storage) == "succeeded", "a finished job is not run again"
    assert load(sessions, job_id).attempts == 1


def test_cancel_requested_while_running_stops_within_an_epoch(world, monkeypatch):
    sessions, storage = world
    job_id = submit(sessions)
    original = jobs.record_progress

    def cancel_at_first_epoch(*, session: Session, job_id: str, event):
        if event.get("epoch") == 1:
            jobs.request_cancel(session=session, owner="alice", job_id=job_id)
        return original(session=session, job_id=job_id, event=event)

    monkeypatch.setattr(jobs, "record_progress", cancel_at_first_epoch)
    assert run(job_id, sessions, storage) == "cancelled"
    assert storage.list_artifacts(job_id) == []


def test_a_redelivered_job_starts_over_and_gives_up_after_max_attempts(world):
    sessions, storage = world
    job_id = submit(sessions)
    with sessions() as session:
        for _ in range(2):  # two earlier deliveries whose workers died mid-run
            jobs.mark_running(session=session, job_id=job_id)
    partial = storage.partial_artifact_dir(job_id)
    (partial / "model.onnx").write_bytes(b"half a file")
    assert run(job_id, sessions, storage, max_attempts=2) == "failed"
    job = load(sessions, job_id)
    assert "interrupted 2 times" in job.error
    assert storage.list_artifacts(job_id) == []


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
