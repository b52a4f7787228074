"""The 12 x 12 transition matrix, driven through the services, plus retry and claim rules."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.forms.models import model_to_dict
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from orchestrator.errors import NotFound, TransitionRefused
from sessions import services
from sessions.models import CodingSession, SessionEvent, SessionTransition
from sessions.tests.factories import CodingSessionFactory

pytestmark = pytest.mark.django_db

STATES = [
    "pending", "queued", "running", "paused", "completed", "partially_completed",
    "failed", "timeout", "stopped", "cancelled", "orphaned", "degraded",
]

# SPEC (Sessions, "The 12 states"), written out independently of the model.
SPEC_TABLE = {
    "pending": {"queued", "running", "cancelled", "failed"},
    "queued": {"running", "cancelled", "failed"},
    "running": {"completed", "partially_completed", "failed", "timeout", "paused", "stopped", "degraded", "orphaned"},
    "paused": {"queued", "running", "stopped", "cancelled"},
    "degraded": {"running", "completed", "partially_completed", "failed", "timeout", "paused", "stopped", "orphaned"},
    "failed": {"pending"},
    "timeout": {"pending"},
    "stopped": {"pending"},
    "orphaned": {"pending"},
    "completed": set(),
    "partially_completed": set(),
    "cancelled": set(),
}


def claim(session):
    return services.session_claim(session_id=session.pk, worker_id="worker-1")


# target -> [(name, call, the sources from which this call reaches the target)]
DRIVERS = {
    "queued": [
        ("start", lambda s: services.session_start(session=s), {"pending"}),
        ("resume", lambda s: services.session_resume(session=s), {"paused"}),
    ],
    "running": [
        ("claim", claim, {"queued"}),
        ("start now", lambda s: services.session_start(session=s, immediate=True, worker_id="worker-1"), {"pending"}),
        ("resume now", lambda s: services.session_resume(session=s, immediate=True, worker_id="worker-1"), {"paused"}),
        ("recover", lambda s: services.session_recover(session=s), {"degraded"}),
    ],
    "paused": [("pause", lambda s: services.session_pause(session=s), {"running", "degraded"})],
    "completed": [("complete", lambda s: services.session_complete(session=s), {"running", "degraded"})],
    "partially_completed": [
        ("complete partially", lambda s: services.session_complete(session=s, partial=True), {"running", "degraded"})
    ],
    "failed": [("fail", lambda s: services.session_fail(session=s), {"pending", "queued", "running", "degraded"})],
    "timeout": [("time out", lambda s: services.session_timeout(session=s), {"running", "degraded"})],
    "stopped": [("stop", lambda s: services.session_stop(session=s), {"running", "degraded", "paused"})],
    "cancelled": [("cancel", lambda s: services.session_cancel(session=s), {"pending", "queued", "paused"})],
    "orphaned": [("orphan", lambda s: services.session_orphan(session=s), {"running", "degraded"})],
    "degraded": [("degrade", lambda s: services.session_degrade(session=s), {"running"})],
    "pending": [("retry", lambda s: services.session_retry(session=s), {"failed", "timeout", "stopped", "orphaned"})],
}


def test_the_drivers_cover_exactly_the_spec_table():
    edges = {(source, target) for target, drivers in DRIVERS.items() for *_, sources in drivers for source in sources}
    assert edges == {(source, target) for source, targets in SPEC_TABLE.items() for target in targets}


def snapshot(session):
    row = CodingSession.objects.get(pk=session.pk)
    return model_to_dict(row, exclude=[]) | {"status": row.status, "updated_at": row.updated_at}


def in_state(status):
    started = timezone.now() - timedelta(seconds=30)
    running = status in {"running", "degraded"}
    return CodingSessionFactory(status=status, run_started_at=started if running else None, started_at=started)


@pytest.mark.parametrize("target", STATES)
@pytest.mark.parametrize("source", STATES)
def test_transition_matrix(source, target):
    session = in_state(source)
    before = snapshot(session)
    allowed = target in SPEC_TABLE[source]
    expected_allowed_actions = CodingSession.objects.get(pk=session.pk).allowed_actions()

    for name, call, sources in DRIVERS[target]:
        if source in sources:
            continue
        if name == "claim":
            assert call(session) is None, f"claim from {source} must do nothing"
        else:
            with pytest.raises(TransitionRefused) as refused:
                call(session)
            assert refused.value.current == source
            assert refused.value.allowed == expected_allowed_actions
        assert snapshot(session) == before, f"{name} from {source} changed the row"
        assert not SessionTransition.objects.filter(session=session).exists()
        assert not SessionEvent.objects.filter(session=session).exists()

    drivers = [call for _, call, sources in DRIVERS[target] if source in sources]
    assert len(drivers) == (1 if allowed else 0)
    if not allowed:
        return
    result = drivers[0](session)
    assert result.status == target
    assert CodingSession.objects.get(pk=session.pk).status == target
    record = SessionTransition.objects.get(session=session)
    assert (record.from_status, record.to_status) == (source, target)
    event = SessionEvent.objects.get(session=session)
    assert event.type == "session.transition"
    assert (event.payload["from"], event.payload["to"]) == (source, target)
    assert event.payload["transition_id"] == record.pk


def test_refusal_names_current_state_and_allowed_actions():
    session = in_state("queued")
    with pytest.raises(TransitionRefused) as refused:
        services.session_pause(session=session)
    assert refused.value.details == {"current": "queued", "attempted": "pause", "allowed": ["cancel", "fail", "run"]}
    assert "queued" in refused.value.message


def test_terminal_state_allows_nothing():
    session = in_state("completed")
    with pytest.raises(TransitionRefused) as refused:
        services.session_retry(session=session)
    assert refused.value.allowed == []


def test_transition_records_the_user_actor_and_reason(operator_user):
    session = in_state("running")
    services.session_pause(session=session, actor=services.Actor.of_user(operator_user), reason="lunch")
    record = SessionTransition.objects.get(session=session)
    assert (record.actor_kind, record.actor_user, record.actor_label, record.reason) == (
        "user", operator_user, operator_user.username, "lunch"
    )


def test_claim_records_the_worker_and_starts_the_clock():
    session = in_state("queued")
    claimed = claim(session)
    assert claimed.status == "running" and claimed.worker_id == "worker-1"
    assert claimed.run_started_at is not None and claimed.worker_heartbeat_at is not None
    record = SessionTransition.objects.get(session=session)
    assert (record.actor_kind, record.actor_label, record.action) == ("worker", "worker-1", "claim")


def test_second_claim_of_the_same_session_does_nothing():
    session = in_state("queued")
    assert claim(session) is not None
    assert services.session_claim(session_id=session.pk, worker_id="worker-2") is None
    assert CodingSession.objects.get(pk=session.pk).worker_id == "worker-1"
    assert SessionTransition.objects.filter(session=session).count() == 1


def test_claim_of_a_deleted_or_missing_session_does_nothing():
    session = in_state("queued")
    CodingSession.objects.filter(pk=session.pk).update(deleted_at=timezone.now())
    assert claim(session) is None
    assert services.session_claim(session_id=999_999, worker_id="w") is None


def test_transitions_on_a_deleted_session_are_not_found():
    session = in_state("running")
    CodingSession.objects.filter(pk=session.pk).update(deleted_at=timezone.now())
    with pytest.raises(NotFound):
        services.session_pause(session=session)


def test_pause_stops_the_clock_and_keeps_the_running_time():
    session = in_state("running")
    paused = services.session_pause(session=session)
    assert paused.run_started_at is None
    assert 29 < paused.attempt_seconds < 60 and paused.duration_seconds == paused.attempt_seconds
    assert paused.elapsed_seconds() == paused.attempt_seconds


def test_fail_records_the_error():
    session = in_state("running")
    error = {"type": "provider_error", "message": "rate limited", "context": {"status": 429}}
    failed = services.session_fail(session=session, error=error)
    assert failed.error == error and failed.failed_at is not None and failed.ended_at is not None


# --- retry --------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["failed", "timeout", "stopped", "orphaned"])
def test_retry_moves_a_recoverable_session_to_pending_and_counts(status):
    session = in_state(status)
    retried = services.session_retry(session=session)
    assert retried.status == "pending"
    assert retried.retry_count == 1
    assert retried.resume_checkpoint is None


def test_retry_resumes_from_the_latest_checkpoint():
    session = in_state("running")
    for number in range(3):
        services.session_add_checkpoint(session=session, git_ref=f"ref{number}")
    services.session_fail(session=session)
    retried = services.session_retry(session=session)
    assert retried.resume_checkpoint.sequence == 3
    assert retried.resume_checkpoint.git_ref == "ref2"
    event = SessionEvent.objects.filter(session=session, type="session.transition").last()
    assert event.payload["resume_checkpoint"] == 3


def test_retry_is_refused_once_max_retries_are_used():
    session = CodingSessionFactory(status="failed", max_retries=2, retry_count=2)
    with pytest.raises(TransitionRefused) as refused:
        services.session_retry(session=session)
    assert "2 of 2 retries" in refused.value.message
    assert refused.value.allowed == []
    assert CodingSession.objects.get(pk=session.pk).status == "failed"


def test_retry_count_accumulates_over_attempts():
    session = CodingSessionFactory(status="failed", max_retries=2)
    services.session_retry(session=session)
    services.session_start(session=session, immediate=True, worker_id="w")
    services.session_timeout(session=session)
    second = services.session_retry(session=session)
    assert second.retry_count == 2
    services.session_start(session=session, immediate=True, worker_id="w")
    services.session_fail(session=session)
    with pytest.raises(TransitionRefused):
        services.session_retry(session=session)


def test_retry_starts_a_fresh_attempt_clock_but_keeps_total_duration():
    session = in_state("running")
    stopped = services.session_stop(session=session)
    retried = services.session_retry(session=session)
    assert retried.attempt_seconds == 0
    assert retried.duration_seconds == stopped.duration_seconds > 0
    assert retried.error == {}


def _trail(session):
    transitions = list(SessionTransition.objects.filter(session=session).order_by("id")
                       .values_list("from_status", "to_status", "action", "actor_kind", "actor_label"))
    events = list(SessionEvent.objects.filter(session=session).order_by("id").values_list("type", flat=True))
    return transitions, events


def test_create_with_start_leaves_the_same_trail_as_create_then_start(operator_user, broker_queues,
                                                                      django_capture_on_commit_callbacks):
    fields = {"title": "Fix the parser", "initial_prompt": "Fix it.", "repository": "/srv/r",
              "actor": services.Actor.of_user(operator_user)}
    with django_capture_on_commit_callbacks(execute=True):
        one_call = services.session_create(start=True, **fields)
    with django_capture_on_commit_callbacks(execute=True):
        two_calls = services.session_start(session=services.session_create(**fields), actor=fields["actor"])

    stored = CodingSession.objects.get(pk=one_call.pk)
    assert (stored.status, stored.reference) == ("queued", f"IND-{one_call.pk:06d}")
    assert stored.queued_at is not None
    assert _trail(one_call) == _trail(two_calls)
    assert _trail(one_call)[0] == [("pending", "queued", "start", "user", operator_user.username)]
    assert len(broker_queues.drain()) == 2  # one job per started session


def test_create_with_start_writes_one_row_per_table(operator_user, broker_queues):
    # The session INSERT already holds the queued state and the reference; the two events go in one INSERT.
    with CaptureQueriesContext(connection) as captured:
        session = services.session_create(title="Fix", initial_prompt="Fix it.", repository="/srv/r",
                                          actor=services.Actor.of_user(operator_user), start=True)
    statements = [q["sql"].split()[0:3] for q in captured.captured_queries if "SAVEPOINT" not in q["sql"]]
    assert statements == [
        ["INSERT", "INTO", '"coding_sessions_codingsession"'],
        ["INSERT", "INTO", '"coding_sessions_sessiontransition"'],
        ["INSERT", "INTO", '"coding_sessions_sessionevent"'],
    ]
    assert (session.status, session.reference) == ("queued", f"IND-{session.pk:06d}")


def test_reference_is_the_id_with_six_digits_at_least():
    assert CodingSessionFactory(id=42).reference == "IND-000042"
    assert CodingSessionFactory(id=1_234_567).reference == "IND-1234567"
    assert CodingSession.objects.get(reference="IND-000042").pk == 42


def test_create_with_start_rolled_back_leaves_nothing(operator_user, broker_queues):
    from django.db import transaction

    with pytest.raises(RuntimeError), transaction.atomic():
        services.session_create(title="Fix the parser", initial_prompt="Fix it.", repository="/srv/r",
                                actor=services.Actor.of_user(operator_user), start=True)
        raise RuntimeError("the caller's transaction fails")
    assert not CodingSession.objects.exists() and not SessionEvent.objects.exists()
    assert broker_queues.drain() == []


def test_event_and_checkpoint_writers_lock_the_row_without_loading_it_whole():
    # A running session's most frequent writes: the lock reads a few columns, never the prompt or the
    # JSON columns, and nothing is read again afterwards.
    session = CodingSessionFactory(status="running", initial_prompt="x" * 50_000)
    with CaptureQueriesContext(connection) as captured:
        services.session_record_events(session=session, entries=[("assistant.text", {"text": "hi"})])
        services.session_add_checkpoint(session=session, git_ref="abc", opencode_message_id="msg_1")
    selects = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("SELECT")]
    assert len(selects) == 2
    if connection.features.has_select_for_update:  # SQLite locks the whole database instead
        assert all("FOR UPDATE" in sql for sql in selects)
    for sql in selects:
        assert '"initial_prompt"' not in sql and '"metadata"' not in sql and '"result"' not in sql


@pytest.mark.django_db
def test_usage_adds_up_on_the_session_alone():
    session, other = CodingSessionFactory(status="running"), CodingSessionFactory(status="running")
    before = session.updated_at
    services.session_record_usage(session_id=session.pk, tokens_input=100, tokens_output=20, tokens_reasoning=3,
                                  tokens_cache_read=40, tokens_cache_write=5, cost=0.000123, api_calls=1)
    services.session_record_usage(session_id=session.pk, tokens_input=1, tokens_output=2, cost=Decimal("0.5"),
                                  api_calls=1)
    session.refresh_from_db()
    assert (session.tokens_input, session.tokens_output, session.tokens_reasoning, session.tokens_cache_read,
            session.tokens_cache_write, session.api_calls) == (101, 22, 3, 40, 5, 2)
    assert session.cost == Decimal("0.500123")
    assert session.updated_at > before
    other.refresh_from_db()
    assert (other.tokens_input, other.cost, other.api_calls) == (0, Decimal("0"), 0)


@pytest.mark.postgres
@pytest.mark.django_db
def test_session_pages_keep_room_for_updated_rows():
    with connection.cursor() as cursor:
        cursor.execute("SELECT reloptions FROM pg_class WHERE relname = %s", [CodingSession._meta.db_table])
        (options,) = cursor.fetchone()
    assert "fillfactor=70" in options
