"""Two processes never both move the same session (PostgreSQL row locks, real broker)."""

import threading

import pytest
from django.db import connection, transaction

from orchestrator.errors import TransitionRefused
from orchestrator.testing import wait_until
from sessions import services
from sessions.models import CodingSession, SessionEvent, SessionTransition
from sessions.services.common import lock_session
from sessions.services.event_log import write_events

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def run_concurrently(count, work):
    barrier = threading.Barrier(count)
    outcomes = []

    def worker():
        try:
            barrier.wait()
            outcomes.append(("ok", work()))
        except TransitionRefused as exc:
            outcomes.append(("refused", exc))
        except Exception as exc:  # anything else is a bug the test reports
            outcomes.append(("error", exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def new_session():
    return services.session_create(
        title="Add retries to the HTTP client", initial_prompt="Wrap calls in a retry loop.", repository="/srv/app",
    )


def test_twenty_concurrent_starts_one_succeeds_and_one_job_is_enqueued(broker_queues):
    session = new_session()
    outcomes = run_concurrently(20, lambda: services.session_start(session=session))
    kinds = [kind for kind, _ in outcomes]
    assert kinds.count("ok") == 1, outcomes
    assert kinds.count("refused") == 19, outcomes
    assert all(exc.current == "queued" for kind, exc in outcomes if kind == "refused")
    assert CodingSession.objects.get(pk=session.pk).status == "queued"
    assert SessionTransition.objects.filter(session=session).count() == 1

    received = broker_queues.drain()
    assert received == [
        {"queue": broker_queues.names[2], "task": "sessions.execute_session", "kwargs": {"session_id": session.pk}}
    ]


def test_concurrent_claims_give_the_session_to_one_worker(broker_queues):
    session = new_session()
    services.session_start(session=session)
    counter = iter(range(100))
    outcomes = run_concurrently(
        10, lambda: services.session_claim(session_id=session.pk, worker_id=f"w{next(counter)}")
    )
    claimed = [value for kind, value in outcomes if kind == "ok" and value is not None]
    assert len(claimed) == 1
    assert [kind for kind, _ in outcomes].count("ok") == 10
    assert CodingSession.objects.get(pk=session.pk).worker_id == claimed[0].worker_id


def test_pause_and_stop_racing_on_a_running_session_apply_in_some_order_never_both_from_running():
    session = new_session()
    services.session_start(session=session, immediate=True, worker_id="w")
    calls = iter([services.session_pause, services.session_stop] * 5)
    lock = threading.Lock()

    def work():
        with lock:
            call = next(calls)
        return call(session=session)

    run_concurrently(10, work)
    from_running = SessionTransition.objects.filter(session=session, from_status="running").count()
    assert from_running == 1
    assert CodingSession.objects.get(pk=session.pk).status in {"paused", "stopped"}


def test_an_event_written_while_another_transaction_holds_the_session_waits_so_ids_follow_commit_order():
    # A worker's event write is one statement on PostgreSQL (sessions.sql.EVENTS_INSERT): its lock
    # must come before its id is drawn, or a client resuming after the later id misses the other.
    session = new_session()
    locked, go = threading.Event(), threading.Event()

    def holder():
        try:
            with transaction.atomic():
                row = lock_session(session.pk, include_deleted=True, fields=("id", "reference"))
                locked.set()
                go.wait(30)
                write_events(row, [("first.committed", {})])
        finally:
            connection.close()

    def writer():
        try:
            services.session_record_events(session=session, entries=[("written.while.locked", {})])
        finally:
            connection.close()

    threads = [threading.Thread(target=holder), threading.Thread(target=writer)]
    threads[0].start()
    assert locked.wait(30)
    threads[1].start()
    wait_until(lambda: waiting_on_a_lock() == 1, timeout=30, message="the writer to wait for the row lock")
    go.set()
    for thread in threads:
        thread.join(30)
    assert list(SessionEvent.objects.filter(session=session, type__in=["first.committed", "written.while.locked"])
                .order_by("id").values_list("type", flat=True)) == ["first.committed", "written.while.locked"]


def waiting_on_a_lock():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


def test_dispatch_without_limits_enqueues_only_sessions_queued_suspiciously_long(broker_queues):
    # Every queued session already has its job in the broker; one queued past STALE_QUEUED_SECONDS
    # (a lost message) gets another, a recent one does not. No limit is configured here.
    from datetime import timedelta

    from django.utils import timezone

    from sessions.dispatch import STALE_QUEUED_SECONDS, session_dispatch

    lost, recent = new_session(), new_session()
    services.session_start(session=lost)
    services.session_start(session=recent)
    broker_queues.drain()
    CodingSession.objects.filter(pk=lost.pk).update(
        queued_at=timezone.now() - timedelta(seconds=STALE_QUEUED_SECONDS + 5))

    assert session_dispatch() == 1
    assert [message["kwargs"] for message in broker_queues.drain()] == [{"session_id": lost.pk}]


@pytest.mark.parametrize("limit", [0, 5])
def test_a_run_end_dispatches_only_under_limits(broker_queues, settings, limit):
    # Under a limit a run's end lets the next queued session in; without one every queued session
    # already has its job and the periodic dispatch re-enqueues a lost one, so the end does nothing.
    from datetime import timedelta

    from django.utils import timezone

    from sessions.dispatch import STALE_QUEUED_SECONDS
    from sessions.jobs import execute_session

    settings.SESSION_LIMIT_GLOBAL = limit
    lost, ending = new_session(), new_session()
    services.session_start(session=lost)
    services.session_start(session=ending)
    broker_queues.drain()
    now = timezone.now()
    # The ending session is first in queue order (a limit lets no claim pass one ahead of it).
    CodingSession.objects.filter(pk=ending.pk).update(queued_at=now - timedelta(seconds=STALE_QUEUED_SECONDS + 10))
    CodingSession.objects.filter(pk=lost.pk).update(queued_at=now - timedelta(seconds=STALE_QUEUED_SECONDS + 5))
    # Its repository is outside the allowed roots: the run fails at once, and its job ends.
    execute_session(session_id=ending.pk)
    assert CodingSession.objects.get(pk=ending.pk).status == "failed"
    enqueued = [message["kwargs"] for message in broker_queues.drain()]
    if limit:
        assert {"session_id": lost.pk} in enqueued
    else:
        assert enqueued == []
