"""Two processes never both move the same session (PostgreSQL row locks, real broker)."""

import threading

import pytest
from django.db import connection

from orchestrator.errors import TransitionRefused
from sessions import services
from sessions.models import CodingSession, SessionTransition

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
    outcomes = run_concurrently(20, lambda: services.session_start(session=session.pk))
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
    outcomes = run_concurrently(10, lambda: services.session_claim(session_id=session.pk, worker_id=f"w{next(counter)}"))
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
        return call(session=session.pk)

    run_concurrently(10, work)
    from_running = SessionTransition.objects.filter(session=session, from_status="running").count()
    assert from_running == 1
    assert CodingSession.objects.get(pk=session.pk).status in {"paused", "stopped"}
