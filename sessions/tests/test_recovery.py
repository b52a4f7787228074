"""Crash recovery: kill -9 a worker running five sessions; the reconciler and a second worker
finish every one, none executed twice, none left running, and no OpenCode server left behind."""

import os
import signal
import socket
import uuid
from pathlib import Path

import pytest

from orchestrator.testing import answered_directives, make_git_repository, running_worker, wait_until
from sessions.models import CodingSession, SessionEvent, SessionTransition
from sessions.opencode.scripted_llm import ScriptedLLM
from sessions.recovery import session_reconcile
from sessions.services import Actor, session_create, session_start

pytestmark = [pytest.mark.opencode, pytest.mark.worker]

SCRIPT = "@@write a.txt A\\n\n@@sleep 4\n@@write b.txt B\\n\n@@final done"


def servers_started_by(worker_pid):
    """PIDs of OpenCode servers whose private state folder belongs to that worker process."""
    marker = f"opencode-state/{socket.gethostname()}-{worker_pid}"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in environ and b"opencode" in (entry / "cmdline").read_bytes():
            found.append(int(entry.name))
    return found


@pytest.mark.django_db(transaction=True)
def test_sessions_of_a_killed_worker_are_recovered_and_finish_once(roster, operator_user, settings):
    settings.SESSION_WORKER_LOST_SECONDS = 2
    settings.SESSION_RETRY_BASE_SECONDS = 0.5
    env_common = {"SESSION_HEARTBEAT_SECONDS": 0.5}
    with ScriptedLLM() as llm:
        env = {**env_common, "OPENCODE_SCRIPTED_LLM_URL": llm.base_url}
        sessions = []
        with running_worker(concurrency=8, env=env) as doomed_worker:
            for index in range(5):
                repository = make_git_repository(settings.REPOSITORY_ROOTS[0] / f"rec-{uuid.uuid4().hex[:8]}")
                session = session_create(title=f"Recoverable {index}", initial_prompt=SCRIPT,
                                         repository=str(repository), actor=Actor.of_user(operator_user))
                sessions.append(session_start(session=session, actor=Actor.of_user(operator_user)))
            wait_until(lambda: all(SessionEvent.objects.filter(session=s, type="session.checkpoint").exists()
                                   for s in sessions), timeout=90, message="every session's first checkpoint")
            servers = servers_started_by(doomed_worker.pid)
            assert servers, "the worker's OpenCode server was not found"
            os.kill(doomed_worker.pid, signal.SIGKILL)
            doomed_worker.wait(timeout=10)
            wait_until(lambda: not servers_started_by(doomed_worker.pid), timeout=15,
                       message="the killed worker's OpenCode server to exit")
        assert all(CodingSession.objects.get(pk=s.pk).status == "running" for s in sessions)

        with running_worker(concurrency=8, env=env):
            recovered = {}
            wait_until(lambda: recovered.update(session_reconcile()) or len(recovered) == 5, timeout=30,
                       interval=0.5, message="the reconciler to recover all five")
            assert all(outcome.startswith("retry 1") for outcome in recovered.values()), recovered
            wait_until(lambda: all(CodingSession.objects.get(pk=s.pk).status == "completed" for s in sessions),
                       timeout=120, interval=0.3, message="every recovered session to complete")

        for session in sessions:
            session = CodingSession.objects.get(pk=session.pk)
            worktree = settings.WORKSPACE_ROOT / session.reference
            assert (worktree / "a.txt").read_text() == "A\n" and (worktree / "b.txt").read_text() == "B\n"
            assert SessionTransition.objects.filter(session=session, to_status="orphaned").count() == 1
            keys = {
                e.payload["opencode_session_id"]
                for e in SessionEvent.objects.filter(session=session, type="task.prompted")
            }
            steps = answered_directives(llm, keys)
            assert steps.count("@@write a.txt A\\n") == 1, steps
            assert steps.count("@@final done") == 1, steps
            assert steps.count("@@write b.txt B\\n") in (1, 2), steps  # one repeat allowed at the crash point
        assert not CodingSession.objects.filter(status__in=["running", "degraded"]).exists()
