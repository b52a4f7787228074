"""Recovery and dispatch rules without a worker: lost sessions, retries, limits, workspace retention."""

import os
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from orchestrator.testing import make_git_repository
from sessions.dispatch import RunningCounts, session_claim_next
from sessions.execution import workspace
from sessions.models import CodingSession
from sessions.recovery import retry_delay_seconds, session_cleanup_workspaces, session_reconcile
from sessions.services import session_claim, session_complete, session_create, session_start

pytestmark = pytest.mark.django_db


def queued_session(repository="/srv/repos/demo", **fields):
    session = session_create(title="Rule check", initial_prompt="@@final ok", repository=repository, **fields)
    return session_start(session=session)


def running_session(worker_id="host:1", **fields):
    session = queued_session(**fields)
    return session_claim(session_id=session.pk, worker_id=worker_id)


def test_retry_delay_follows_spec(settings):
    settings.SESSION_RETRY_BASE_SECONDS = 10
    assert [retry_delay_seconds(n) for n in (1, 2, 3, 4, 5, 6)] == [10, 20, 40, 80, 160, 300]


def test_reconciler_orphans_a_silent_session_and_schedules_a_retry(settings):
    settings.SESSION_WORKER_LOST_SECONDS = 30
    settings.SESSION_RETRY_BASE_SECONDS = 10
    silent = running_session()
    alive = running_session(worker_id="host:2")
    CodingSession.objects.filter(pk=silent.pk).update(worker_heartbeat_at=timezone.now() - timedelta(seconds=31))

    done = session_reconcile(opencode_turn_alive=lambda session: False)

    assert done == {silent.reference: "retry 1 (resume from checkpoint)"}
    silent.refresh_from_db()
    assert silent.status == "queued" and silent.retry_count == 1
    assert silent.not_before > timezone.now() + timedelta(seconds=5)
    assert list(silent.transitions.values_list("to_status", flat=True))[-3:] == ["orphaned", "pending", "queued"]
    assert CodingSession.objects.get(pk=alive.pk).status == "running"


def test_reconciler_leaves_a_session_orphaned_when_retries_are_used_up(settings):
    settings.SESSION_WORKER_LOST_SECONDS = 30
    session = running_session(max_retries=0)
    CodingSession.objects.filter(pk=session.pk).update(worker_heartbeat_at=timezone.now() - timedelta(minutes=5))
    assert session_reconcile(opencode_turn_alive=lambda s: False) == {session.reference: "orphaned (no retries left)"}
    session.refresh_from_db()
    assert session.status == "orphaned"
    assert session.error["type"] == "worker_lost"


def test_per_repository_and_per_agent_limits_name_the_limit(settings):
    from agents.tests.factories import AgentFactory

    settings.SESSION_LIMIT_PER_REPOSITORY = 1
    settings.SESSION_LIMIT_PER_AGENT = 1
    agent = AgentFactory()
    running_session(repository="/srv/repos/one")
    running_session(repository="/srv/repos/two", agent=agent)
    counts = RunningCounts()
    assert counts.blocking_limit(queued_session(repository="/srv/repos/one")) == (
        "limit of 1 running sessions per repository")
    assert counts.blocking_limit(queued_session(repository="/srv/repos/three", agent=agent)) == (
        "limit of 1 running sessions per agent")
    assert counts.blocking_limit(queued_session(repository="/srv/repos/three")) is None


def test_a_claim_over_the_limit_waits_and_says_why(settings):
    settings.SESSION_LIMIT_GLOBAL = 1
    running_session()
    waiting = queued_session()
    assert session_claim_next(session_id=waiting.pk, worker_id="host:9") is None
    waiting.refresh_from_db()
    assert waiting.status == "queued"
    assert waiting.events.filter(type="session.waiting", payload__reason="global limit of 1 running sessions").exists()


def test_workspaces_of_sessions_ended_long_ago_are_removed_and_their_branch_kept(settings, tmp_path):
    settings.REPOSITORY_ROOTS = [tmp_path / "repos"]
    settings.WORKSPACE_RETENTION_HOURS = 24
    repository = make_git_repository(tmp_path / "repos" / "demo")
    session = running_session(repository=str(repository))
    space = workspace.prepare_workspace(repository=repository, root=tmp_path / "ws", reference=session.reference)
    CodingSession.objects.filter(pk=session.pk).update(workspace_path=str(space.path))
    # A worker killed mid-graph left two task worktrees: one made for its task, one a spare it took.
    task_space = workspace.task_worktree(repository=repository, path=tmp_path / "ws" / f"{session.reference}--task-7",
                                         branch=f"ind/{session.reference}--task-7", start=space.base_commit)
    spare, _ = workspace.create_spare(repository=repository, root=tmp_path / "ws", name="spare-h-1-1")
    workspace.adopt_for_task(repository=repository, path=spare, branch=f"ind/{session.reference}--task-8",
                             start=space.base_commit)
    recent = running_session(repository=str(repository))
    recent_space = workspace.prepare_workspace(repository=repository, root=tmp_path / "ws", reference=recent.reference)
    CodingSession.objects.filter(pk=recent.pk).update(workspace_path=str(recent_space.path))
    session_complete(session=session)
    session_complete(session=recent)
    CodingSession.objects.filter(pk=session.pk).update(ended_at=timezone.now() - timedelta(hours=25))

    recent_task = workspace.task_worktree(repository=repository, path=tmp_path / "ws" / f"{recent.reference}--task-9",
                                          branch=f"ind/{recent.reference}--task-9", start=recent_space.base_commit)

    assert session_cleanup_workspaces() == 3
    assert not space.path.exists() and not task_space.path.exists() and not spare.exists()
    assert recent_space.path.exists() and recent_task.path.exists()
    branches = workspace.git("branch", "--list", cwd=repository)
    for branch in (f"ind/{session.reference}", f"ind/{session.reference}--task-7", f"ind/{session.reference}--task-8"):
        assert branch in branches
    assert CodingSession.objects.get(pk=session.pk).workspace_path == ""


def test_spare_worktrees_left_behind_are_removed_after_the_retention_period(settings, tmp_path):
    settings.WORKSPACE_ROOT = tmp_path / "ws"
    settings.WORKSPACE_RETENTION_HOURS = 24
    repository = make_git_repository(tmp_path / "repos" / "demo")
    stale, base = workspace.create_spare(repository=repository, root=settings.WORKSPACE_ROOT, name="spare-h-1-1")
    fresh, _ = workspace.create_spare(repository=repository, root=settings.WORKSPACE_ROOT, name="spare-h-1-2")
    adopted, _ = workspace.create_spare(repository=repository, root=settings.WORKSPACE_ROOT, name="spare-h-1-3")
    workspace.adopt_spare(repository=repository, path=adopted, reference="IND-000077", base_commit=base)
    day_old = time.time() - 25 * 3600
    for path in (stale, adopted):
        os.utime(path, (day_old, day_old))

    assert session_cleanup_workspaces() == 1
    assert not stale.exists()
    assert fresh.exists() and adopted.exists()  # a recent spare, and a session's worktree (its row decides)
    assert str(stale) not in workspace.git("worktree", "list", cwd=repository)
