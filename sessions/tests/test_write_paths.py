"""A running session's event writes behave the same whichever way they take: inside a transaction
(the ORM) and, on PostgreSQL, outside one (one statement, sessions.sql.insert_events). Checkpoints
have the same pair of tests in test_checkpoints.py."""

from decimal import Decimal

import pytest
from django.db import connection

from orchestrator.errors import NotFound
from sessions import services
from sessions.models import CodingSession, SessionEvent
from sessions.tests.factories import CodingSessionFactory

WRITE_PATHS = [
    pytest.param(marks=pytest.mark.django_db, id="in-a-transaction"),
    pytest.param(marks=pytest.mark.django_db(transaction=True), id="autocommit"),
]


def expected_path():
    """Which way services.session_record_events takes here (the test's parameter decides)."""
    return "one-statement" if connection.vendor == "postgresql" and not connection.in_atomic_block else "orm"


@pytest.mark.parametrize([], WRITE_PATHS)
def test_events_are_written_in_order_with_increasing_ids():
    session = CodingSessionFactory(status="running")
    entries = [("assistant.text", {"text": "one"}), ("tool.completed", {"n": 2}), ("assistant.text", {})]
    rows = services.session_record_events(session=session, entries=entries)

    stored = list(SessionEvent.objects.filter(session=session).order_by("id"))
    assert [row.id for row in rows] == [event.id for event in stored]
    assert [row.id for row in rows] == sorted(row.id for row in rows)
    assert [(event.type, event.payload) for event in stored] == entries
    assert [row.created_at for row in rows] == [event.created_at for event in stored]
    more = services.session_record_events(session=session, entries=[("assistant.text", {"text": "later"})])
    assert more[0].id > rows[-1].id


@pytest.mark.parametrize([], WRITE_PATHS)
def test_an_event_without_payload_stores_an_empty_object():
    session = CodingSessionFactory(status="running")
    services.session_record_events(session=session, entries=[("session.note", None)])
    assert SessionEvent.objects.get(session=session).payload == {}


@pytest.mark.parametrize([], WRITE_PATHS)
def test_events_of_an_unknown_session_are_refused_and_nothing_is_written():
    with pytest.raises(NotFound):
        services.session_record_events(session=CodingSession(pk=987654), entries=[("tool.completed", {"n": 1})])
    assert not SessionEvent.objects.filter(session_id=987654).exists()


@pytest.mark.parametrize([], WRITE_PATHS)
def test_a_deleted_session_still_gets_its_last_events():
    # A run that ends after an operator deleted its session records how it ended.
    session = CodingSessionFactory(status="stopped")
    services.session_delete(session=session)
    services.session_record_events(session=session, entries=[("session.diff", {"files": []})])
    assert list(SessionEvent.objects.filter(session=session).values_list("type", flat=True))[-1] == "session.diff"


@pytest.mark.parametrize([], WRITE_PATHS)
def test_usage_adds_to_the_counters():
    session = CodingSessionFactory(status="running")
    services.session_record_usage(session_id=session.pk, tokens_input=10, tokens_output=2, tokens_reasoning=1,
                                  tokens_cache_read=4, tokens_cache_write=5, cost=Decimal("0.25"), api_calls=1)
    services.session_record_usage(session_id=session.pk, tokens_input=1, cost=0.5, api_calls=1)
    row = CodingSession.objects.get(pk=session.pk)
    assert (row.tokens_input, row.tokens_output, row.tokens_reasoning, row.tokens_cache_read,
            row.tokens_cache_write, row.api_calls) == (11, 2, 1, 4, 5, 2)
    assert row.cost == Decimal("0.75") and row.tokens_total == 14


@pytest.mark.postgres
@pytest.mark.parametrize(("marks", "path"), [
    pytest.param(None, "orm", marks=pytest.mark.django_db, id="in-a-transaction"),
    pytest.param(None, "one-statement", marks=pytest.mark.django_db(transaction=True), id="autocommit"),
])
def test_postgresql_runs_both_ways(marks, path):
    # The tests above are worth running twice only if the two parameters take the two ways.
    assert expected_path() == path
