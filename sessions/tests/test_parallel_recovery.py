"""kill -9 of a worker while two tasks of a session run in their own worktrees: after recovery every
task completes once, in its worktree brought back to its checkpoint, and the merges hold."""

import os
import signal
import uuid

import pytest

from orchestrator.testing import answered_directives, make_git_repository, running_worker, wait_until
from sessions.execution import workspace
from sessions.execution.task_worktrees import task_worktree_path
from sessions.models import Checkpoint, CodingSession, SessionEvent
from sessions.opencode.scripted_llm import ScriptedLLM
from sessions.planning.services import session_create_planned
from sessions.recovery import session_reconcile
from sessions.services import Actor, session_start
from sessions.tests.test_recovery import servers_started_by
from tasks.models import Task

pytestmark = [pytest.mark.opencode, pytest.mark.worker]

ESTIMATE = {"optimistic": 0.5, "likely": 1, "pessimistic": 2}


def script(name):
    return f"@@write {name}1.txt {name} one\\n\n@@sleep 4\n@@write {name}2.txt {name} two\\n\n@@final {name} done"


@pytest.mark.django_db(transaction=True)
def test_a_parallel_phase_killed_mid_way_recovers_with_every_task_once_and_the_merges_held(
    roster, operator_user, settings
):
    settings.SESSION_WORKER_LOST_SECONDS = 2
    settings.SESSION_RETRY_BASE_SECONDS = 0.5
    repository = make_git_repository(settings.REPOSITORY_ROOTS[0] / f"parrec-{uuid.uuid4().hex[:8]}")
    keys = ("north", "south")
    with ScriptedLLM() as llm:
        env = {"SESSION_HEARTBEAT_SECONDS": 0.5, "OPENCODE_SCRIPTED_LLM_URL": llm.base_url}
        with running_worker(concurrency=4, env=env) as doomed_worker:
            session = session_create_planned(
                title="Two halves", initial_prompt="Build both halves.", repository=str(repository),
                actor=Actor.of_user(operator_user), planning={"plan_approval": "auto", "task_concurrency": 2},
                plan={"summary": "two independent halves", "tasks": [
                    {"key": key, "title": f"The {key} half", "prompt": script(key), "capabilities": ["code_generation"],
                     "files": [f"{key}1.txt", f"{key}2.txt"], "estimate_hours": ESTIMATE, "after": []}
                    for key in keys]},
            )
            session_start(session=session, actor=Actor.of_user(operator_user))
            tasks = {task.plan_key: task for task in Task.objects.filter(session=session).exclude(plan_key="")}
            # Both tasks in their worktrees, each past its first step's checkpoint: the parallel phase.
            wait_until(lambda: all(Checkpoint.objects.filter(session=session, data__task_id=task.pk).exists()
                                   for task in tasks.values()), timeout=120, message="a checkpoint of each task")
            assert all(task_worktree_path(session.reference, task.pk).exists() for task in tasks.values())
            os.kill(doomed_worker.pid, signal.SIGKILL)
            doomed_worker.wait(timeout=10)
            wait_until(lambda: not servers_started_by(doomed_worker.pid), timeout=15,
                       message="the killed worker's OpenCode server to exit")
        assert CodingSession.objects.get(pk=session.pk).status == "running"
        assert not SessionEvent.objects.filter(session=session, type="merge.done").exists()

        with running_worker(concurrency=4, env=env):
            recovered = {}
            wait_until(lambda: recovered.update(session_reconcile()) or len(recovered) == 1, timeout=30,
                       interval=0.5, message="the reconciler to recover the session")
            wait_until(lambda: CodingSession.objects.get(pk=session.pk).status in ("completed", "failed",
                                                                                    "partially_completed"),
                       timeout=180, interval=0.3, message="the recovered session to end")

        session = CodingSession.objects.get(pk=session.pk)
        assert session.status == "completed", session.error
        branch = session.branch_name
        for key, task in tasks.items():
            task.refresh_from_db()
            assert task.status == "completed"
            completed = SessionEvent.objects.filter(session=session, type="task.completed", payload__task_id=task.pk)
            assert completed.count() == 1
            merged = SessionEvent.objects.filter(session=session, type="merge.done", payload__task_id=task.pk)
            assert merged.count() == 1
            # The merge holds: the task's branch is in the session branch, with both of its files.
            task_branch = merged.get().payload["branch"]
            assert workspace.git("merge-base", "--is-ancestor", task_branch, branch, cwd=repository,
                                 check=False, status=True)
            assert workspace.git("show", f"{branch}:{key}1.txt", cwd=repository) == f"{key} one\n"
            assert workspace.git("show", f"{branch}:{key}2.txt", cwd=repository) == f"{key} two\n"
            assert not task_worktree_path(session.reference, task.pk).exists()
            # Each step answered once, but the one the crash interrupted (it may be asked again).
            opencode_sessions = {e.payload["opencode_session_id"] for e in SessionEvent.objects.filter(
                session=session, type="task.prompted", payload__task_id=task.pk)}
            hows = [e.payload["how"] for e in SessionEvent.objects.filter(
                session=session, type="task.prompted", payload__task_id=task.pk).order_by("id")]
            assert hows == ["new", "resume"], hows
            # Its own worktree was brought back to its checkpoint before it resumed there.
            assert SessionEvent.objects.filter(session=session, type="workspace.restored", payload__task_id=task.pk,
                                               payload__path=str(task_worktree_path(session.reference, task.pk))
                                               ).count() == 1
            steps = answered_directives(llm, opencode_sessions)
            assert steps.count(f"@@write {key}1.txt {key} one\\n") == 1, steps
            assert steps.count(f"@@final {key} done") == 1, steps
            assert steps.count(f"@@write {key}2.txt {key} two\\n") in (1, 2), steps
        assert len(workspace.git("rev-list", "--merges", branch, cwd=repository).split()) == 2
