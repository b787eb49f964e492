"""The reconciler: dead workers' jobs requeued and re-sent, lost messages replaced, each job acted on once."""

import threading
import time
from datetime import timedelta

import pytest

from service import jobs
from service.db import create_db_engine, create_sessionmaker
from service.models import utcnow
from service.reconciler import reconcile
from tests.service.conftest import digits_request


@pytest.fixture
def sessions(session, settings):
    engine = create_db_engine(settings.database_url)
    yield create_sessionmaker(engine)
    engine.dispose()


def new_job(session):
    job, _ = jobs.create_job(session=session, owner="alice", request=digits_request())
    return job.id


def test_orphans_are_requeued_and_sent_and_waiting_jobs_sent_again(session, sessions, dispatched):
    orphan, waiting, busy = new_job(session), new_job(session), new_job(session)
    jobs.claim(session=session, job_id=orphan, lease_s=1)
    jobs.claim(session=session, job_id=busy, lease_s=3600)
    later = utcnow() + timedelta(seconds=120)
    done = reconcile(sessions=sessions, dispatch=dispatched, redispatch_after_s=60, now=later)
    assert done.requeued == [orphan] and done.redispatched == [waiting] and done.undelivered == []
    assert sorted(dispatched) == sorted([orphan, waiting])
    # At once again: nothing is due (each job's wait starts over, and doubles).
    assert reconcile(sessions=sessions, dispatch=dispatched, redispatch_after_s=60, now=later).redispatched == []
    assert jobs.claim(session=session, job_id=orphan, lease_s=60).attempts == 2


def test_a_refusing_broker_leaves_the_job_queued_for_a_later_pass(session, sessions):
    job_id = new_job(session)

    def broker_down(job_id):
        raise ConnectionError("connection refused")

    later = utcnow() + timedelta(seconds=120)
    done = reconcile(sessions=sessions, dispatch=broker_down, redispatch_after_s=60, now=later)
    assert done.undelivered == [job_id]
    assert jobs.get_job(session=session, owner="alice", job_id=job_id).state == "queued"
    sent = []
    done = reconcile(sessions=sessions, dispatch=sent.append, redispatch_after_s=60, now=later + timedelta(hours=1))
    assert sent == [job_id]


def test_concurrent_reconcilers_send_each_job_once(session, sessions):
    ids = [new_job(session) for _ in range(6)]
    for job_id in ids[:3]:
        jobs.claim(session=session, job_id=job_id, lease_s=1)
    later = utcnow() + timedelta(seconds=120)
    sent: list[str] = []
    lock = threading.Lock()

    def dispatch(job_id):
        with lock:
            sent.append(job_id)

    threads = [
        threading.Thread(target=reconcile, kwargs={"sessions": sessions, "dispatch": dispatch,
                                                   "redispatch_after_s": 60, "now": later})
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(sent) == sorted(ids)


def test_the_api_runs_the_reconciler(make_client, make_settings, dispatched):
    client = make_client(make_settings(reconcile_interval_s=0.1, redispatch_after_s=0.2))
    with client.app.state.sessionmaker() as session:
        job_id = new_job(session)
    deadline = time.monotonic() + 10
    while job_id not in dispatched and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job_id in dispatched
