"""sessions.execution.control: one reader thread reads the control rows of every session the worker
process runs, and heartbeats them; task threads look at its latest read instead of querying every
half second."""

from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from orchestrator.testing import wait_until
from sessions import sql
from sessions.execution import control
from sessions.models import CodingSession
from sessions.tests.factories import CodingSessionFactory

pytestmark = pytest.mark.django_db(transaction=True)  # the reader thread has its own connection


@pytest.fixture
def watched():
    sessions = [CodingSessionFactory(status="running", worker_id="w1") for _ in range(3)]
    for session in sessions:
        control.watch(session.pk, worker_id="w1")
    try:
        wait_until(lambda: all(session.pk in control._rows for session in sessions), timeout=5,
                   message="the first shared read")
        yield sessions
    finally:
        for session in sessions:
            control.unwatch(session.pk)
        assert control.idle.wait(5), "the reader gives its connection back when nothing is watched"


def test_one_read_serves_every_watched_session_and_task_threads_do_not_query(watched):
    with CaptureQueriesContext(connection) as queries:
        rows = [control.latest_row(session.pk) for session in watched]

    assert len(queries) == 0
    assert [row.pk for row in rows] == [session.pk for session in watched]
    assert {row.status for row in rows} == {"running"}
    assert isinstance(rows[0].metadata, dict) and rows[0].tokens_total == 0, "columns decoded as the model's fields"
    assert len({control._rows[session.pk][0] for session in watched}) == 1, "the rows come from one read"


def test_a_change_by_someone_else_shows_within_a_read_interval(watched):
    CodingSession.objects.filter(pk=watched[0].pk).update(status="paused")
    CodingSession.objects.filter(pk=watched[1].pk).delete()

    wait_until(lambda: control.latest_row(watched[0].pk).status == "paused", timeout=1.0,
               interval=0.02, message="the pause in the shared read")
    wait_until(lambda: control.latest_row(watched[1].pk) is None, timeout=1.0, interval=0.02,
               message="the deletion in the shared read")
    assert control.latest_row(watched[2].pk).status == "running"


def test_a_stale_or_missing_read_is_replaced_by_a_fresh_query(watched, monkeypatch):
    monkeypatch.setattr(control, "STALE_AFTER", 0.0)
    with CaptureQueriesContext(connection) as queries:
        assert control.latest_row(watched[0].pk).pk == watched[0].pk
    assert len(queries) == 1

    other = CodingSessionFactory(status="running")  # not watched: nothing shared to look at
    with CaptureQueriesContext(connection) as queries:
        assert control.latest_row(other.pk).pk == other.pk
    assert len(queries) == 1


def test_the_reader_heartbeats_the_sessions_its_worker_still_owns(watched, settings):
    settings.SESSION_HEARTBEAT_SECONDS = 0.5
    taken, paused, owned = watched
    CodingSession.objects.filter(pk=taken.pk).update(worker_id="w2", worker_heartbeat_at=None)
    CodingSession.objects.filter(pk=paused.pk).update(status="paused", worker_heartbeat_at=None)
    CodingSession.objects.filter(pk=owned.pk).update(worker_heartbeat_at=None)

    wait_until(lambda: CodingSession.objects.get(pk=owned.pk).worker_heartbeat_at is not None, timeout=3,
               interval=0.05, message="the heartbeat of the session w1 still runs")
    first = CodingSession.objects.get(pk=owned.pk).worker_heartbeat_at
    wait_until(lambda: CodingSession.objects.get(pk=owned.pk).worker_heartbeat_at > first, timeout=3,
               interval=0.05, message="the next heartbeat")
    assert CodingSession.objects.get(pk=taken.pk).worker_heartbeat_at is None, "owned by another worker now"
    assert CodingSession.objects.get(pk=paused.pk).worker_heartbeat_at is None, "no longer running"


def test_reading_no_sessions_asks_nothing():
    with CaptureQueriesContext(connection) as queries:
        assert sql.control_rows([]) == {}
    assert len(queries) == 0


def test_a_read_gives_the_fields_as_a_query_does():
    session = CodingSessionFactory(
        status="running", worker_id="w1", run_started_at=timezone.now(), attempt_seconds=12.5,
        tokens_input=7, tokens_output=3, cost=Decimal("0.012345"), cost_budget_hard=Decimal("2.5"),
        metadata={"soft_budget_passed": True, "nested": [1, "two"]},
    )
    other = CodingSessionFactory(status="running", worker_id="w1")
    with CaptureQueriesContext(connection) as queries:
        first = sql.control_rows([session.pk, other.pk])
    assert len(queries) == 1
    expected = CodingSession.objects.get(pk=session.pk)
    for name in sql.CONTROL_FIELDS:
        assert getattr(first[session.pk], name) == getattr(expected, name), name
    assert isinstance(first[session.pk].cost, Decimal) and first[session.pk].run_started_at.tzinfo is not None
    assert first[session.pk].elapsed_seconds() >= 12.5 and first[session.pk].tokens_total == 10
    paused_at = timezone.now()
    assert first[session.pk].elapsed_seconds(paused_at) == expected.elapsed_seconds(paused_at)

    CodingSession.objects.filter(pk=session.pk).update(tokens_input=9, status="paused")
    second = sql.control_rows([session.pk, other.pk])
    assert (second[session.pk].tokens_input, second[session.pk].status) == (9, "paused")
    assert second[session.pk].elapsed_seconds() == 12.5  # the clock stops outside running/degraded
    assert first[session.pk].status == "running"  # an earlier read's row is never changed under its reader

    CodingSession.objects.filter(pk=other.pk).delete()
    assert set(sql.control_rows([session.pk, other.pk])) == {session.pk}
