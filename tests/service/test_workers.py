"""Which workers are alive: heard from within a lease; a clean stop leaves at once; long-silent rows go."""

from datetime import timedelta

from service import workers
from service.models import utcnow


def test_a_worker_is_alive_while_it_beats_and_gone_once_it_signs_off(session):
    started = utcnow()
    workers.beat(session=session, name="vdc0@a", pid=10, started_at=started)
    workers.beat(session=session, name="vdc0@a", pid=10, started_at=started)  # a renewal, not a second worker
    workers.beat(session=session, name="vdc1@a", pid=11, started_at=started)
    assert workers.count_alive(session=session, within_s=60) == 2
    workers.forget(session=session, name="vdc1@a")
    assert workers.count_alive(session=session, within_s=60) == 1


def test_a_silent_worker_is_presumed_dead_then_forgotten(session):
    workers.beat(session=session, name="vdc0@a", pid=10, started_at=utcnow())
    later = utcnow() + timedelta(seconds=61)
    assert workers.count_alive(session=session, within_s=60, now=later) == 0
    assert workers.forget_silent(session=session, now=later) == 0, "silent for a minute is not yet forgotten"
    assert workers.forget_silent(session=session, now=utcnow() + workers.FORGET_AFTER + timedelta(seconds=1)) == 1
