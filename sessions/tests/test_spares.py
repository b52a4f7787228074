"""Spare worktrees (sessions.execution.spares) with a real worker, OpenCode server and scripted LLM.

The worker of this module is the only one running (the module-scoped workers of other modules are
gone), so every session here runs on it and sees its spares.
"""

import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.conf import settings

from orchestrator.testing import make_git_repository, running_worker, wait_for_idle_worker, wait_until
from sessions.execution import workspace
from sessions.models import SessionEvent
from sessions.services import Actor, session_create, session_start
from sessions.tests.test_execution import opencode_logs, run_to_end

pytestmark = [pytest.mark.opencode, pytest.mark.worker]


@contextmanager
def spares_worker(scripted_llm):
    """A worker keeping one spare per repository; entered by the test, which checks what it leaves when it stops."""
    with running_worker(concurrency=4, env={"OPENCODE_SCRIPTED_LLM_URL": scripted_llm.base_url,
                                            "WORKSPACE_SPARES": 1}) as process:
        yield process


def _spares_ready(process, count):
    return process.log_path.read_text(errors="replace").count("spare worktree ready: ") >= count


def _spare_paths(process):
    lines = process.log_path.read_text(errors="replace").splitlines()
    return [
        line.split("spare worktree ready: ", 1)[1].split(" (", 1)[0]
        for line in lines
        if "spare worktree ready: " in line
    ]


def _workspace_ready(session):
    return SessionEvent.objects.get(session=session, type="workspace.ready").payload


def test_a_session_takes_a_spare_worktree_opened_beforehand_when_it_still_fits(roster, operator_user, scripted_llm):
    repository = make_git_repository(settings.REPOSITORY_ROOTS[0] / f"spares-{uuid.uuid4().hex[:8]}")

    def run(index):
        session = session_create(
            title=f"Spare job {index}", repository=str(repository), actor=Actor.of_user(operator_user),
            initial_prompt=f"@@write out.txt job {index}\\n\n@@final job {index} done",
        )
        session_start(session=session, actor=Actor.of_user(operator_user))
        run_to_end(session)
        assert session.status == "completed", session.error
        assert (Path(session.workspace_path) / "out.txt").read_text() == f"job {index}\n"
        return session

    with spares_worker(scripted_llm) as process:
        # The repository's first two sessions are cold; from the second on the worker keeps a spare of it.
        first = run(1)
        assert _workspace_ready(first)["spare"] is False
        assert Path(first.workspace_path) == settings.WORKSPACE_ROOT / first.reference
        assert _workspace_ready(run(2))["spare"] is False
        wait_until(lambda: _spares_ready(process, 1), timeout=60, message="a spare worktree")
        spare_path = _spare_paths(process)[0]

        second = run(3)
        assert _workspace_ready(second)["spare"] is True
        assert second.workspace_path == spare_path
        assert workspace.git("symbolic-ref", "HEAD", cwd=spare_path).strip() == f"refs/heads/ind/{second.reference}"
        assert not (repository / "out.txt").exists()

        # The repository moves on: the spare made from the old HEAD no longer fits, the session goes cold.
        wait_until(lambda: _spares_ready(process, 2), timeout=60, message="the next spare worktree")
        unused = _spare_paths(process)[1]
        (repository / "CHANGELOG.md").write_text("moved on\n")
        workspace.git("add", "-A", cwd=repository)
        workspace.git("commit", "-qm", "move on", cwd=repository)
        third = run(4)
        assert _workspace_ready(third)["spare"] is False
        assert _workspace_ready(third)["base_commit"] == workspace.head_commit(repository)
        wait_until(lambda: not Path(unused).exists(), timeout=30, message="the unfit spare to be removed")
        # ... and closed in OpenCode first (servers.close_directory).
        assert f'message="disposing instance" directory={unused}\n' in opencode_logs(process.pid)
        wait_until(lambda: _spares_ready(process, 3), timeout=60, message="a spare of the new HEAD")
        wait_for_idle_worker(process)
    # The worker removes its ready spares when it stops.
    assert not Path(_spare_paths(process)[-1]).exists()
    assert Path(second.workspace_path).exists()
