"""Concurrency limits and queue order, enforced in the database, with a real worker."""

import uuid

import pytest
from django.conf import settings

from orchestrator.testing import make_git_repository, running_worker, wait_until
from sessions.models import CodingSession, SessionEvent, SessionTransition
from sessions.opencode.scripted_llm import ScriptedLLM
from sessions.services import Actor, session_cancel, session_create, session_start

pytestmark = [pytest.mark.opencode, pytest.mark.worker]

TERMINAL = {"completed", "partially_completed", "failed", "timeout", "stopped", "cancelled", "orphaned"}


@pytest.fixture(scope="module")
def worker(django_db_setup, django_db_blocker):
    with ScriptedLLM() as llm:
        env = {"OPENCODE_SCRIPTED_LLM_URL": llm.base_url, "SESSION_LIMIT_GLOBAL": 2}
        with running_worker(concurrency=8, env=env) as process:
            yield process


def make_session(operator_user, prompt, priority="MEDIUM", title="Limited job"):
    repository = make_git_repository(settings.REPOSITORY_ROOTS[0] / f"lim-{uuid.uuid4().hex[:8]}")
    return session_create(
        title=title,
        initial_prompt=prompt,
        repository=str(repository),
        actor=Actor.of_user(operator_user),
        priority=priority,
    )


def running_intervals(sessions):
    """(start, end) of each stretch a session spent running or degraded, from the audit rows."""
    intervals = []
    for session in sessions:
        started = None
        for move in SessionTransition.objects.filter(session=session).order_by("id"):
            if move.to_status in ("running", "degraded") and started is None:
                started = move.created_at
            elif move.to_status not in ("running", "degraded") and started is not None:
                intervals.append((started, move.created_at))
                started = None
    return intervals


def most_at_once(intervals):
    points = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    current = peak = 0
    for _, step in points:
        current += step
        peak = max(peak, current)
    return peak


def test_global_limit_holds_and_queued_sessions_start_in_priority_then_age_order(worker, roster, operator_user):
    # The blockers hold both slots while the others are queued (8 s is well beyond that on a busy machine):
    # a slot freed early would let a session start before the higher-priority ones exist.
    blockers = [make_session(operator_user, "@@sleep 8\n@@final blocker done", title=f"Blocker {n}") for n in (1, 2)]
    for blocker in blockers:
        session_start(session=blocker, actor=Actor.of_user(operator_user))
    wait_until(lambda: CodingSession.objects.filter(pk__in=[b.pk for b in blockers], status="running").count() == 2,
               timeout=60, message="both blockers to run")

    waiting = [
        make_session(operator_user, "@@sleep 1\n@@final done", priority=priority, title=f"Waiting {name}")
        for name, priority in [("low", "LOW"), ("high-1", "HIGH"), ("medium", "MEDIUM"),
                               ("high-2", "HIGH"), ("critical", "CRITICAL")]
    ]
    doomed = make_session(operator_user, "@@final must never run", priority="CRITICAL", title="Cancelled while queued")
    for session in waiting:
        session_start(session=session, actor=Actor.of_user(operator_user))
    session_start(session=doomed, actor=Actor.of_user(operator_user))
    wait_until(lambda: SessionEvent.objects.filter(session=doomed, type="session.waiting").exists(),
               timeout=30, message="the doomed session to wait for a slot")
    session_cancel(session=doomed, actor=Actor.of_user(operator_user), reason="not needed after all")

    everyone = [*blockers, *waiting, doomed]
    wait_until(lambda: set(CodingSession.objects.filter(pk__in=[s.pk for s in everyone])
                           .values_list("status", flat=True)) <= TERMINAL,
               timeout=180, interval=0.2, message="every session to finish")

    statuses = dict(CodingSession.objects.filter(pk__in=[s.pk for s in everyone]).values_list("title", "status"))
    assert statuses.pop("Cancelled while queued") == "cancelled"
    assert set(statuses.values()) == {"completed"}
    assert not SessionTransition.objects.filter(session=doomed, to_status="running").exists()
    assert not SessionEvent.objects.filter(session=doomed, type="task.prompted").exists()

    assert most_at_once(running_intervals([*blockers, *waiting])) <= 2
    first_run = {
        session.title: SessionTransition.objects.filter(session=session, to_status="running")
        .order_by("id")
        .first()
        .created_at
        for session in waiting
    }
    assert sorted(first_run, key=first_run.get) == [
        "Waiting critical", "Waiting high-1", "Waiting high-2", "Waiting medium", "Waiting low",
    ]
