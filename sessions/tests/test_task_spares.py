"""A task that gets a worktree of its own takes a spare worktree the worker opened in OpenCode
beforehand (real worker, OpenCode, git; the scripted LLM)."""

import uuid
from pathlib import Path

import pytest
from django.conf import settings

from orchestrator.testing import make_git_repository, running_worker, wait_for_idle_worker, wait_until
from sessions.execution import workspace
from sessions.models import SessionEvent
from sessions.planning.services import session_create_planned
from sessions.services import Actor, session_start
from sessions.tests.test_parallel_tasks import ESTIMATE, run_to_end

pytestmark = [pytest.mark.opencode, pytest.mark.worker]


def ready_spares(process):
    lines = process.log_path.read_text(errors="replace").splitlines()
    return [line.split("spare worktree ready: ", 1)[1].split(" (", 1)[0] for line in lines
            if "spare worktree ready: " in line]


def test_a_task_worktree_is_a_spare_opened_beforehand(roster, operator_user, scripted_llm):
    repository = make_git_repository(settings.REPOSITORY_ROOTS[0] / f"tspare-{uuid.uuid4().hex[:8]}")

    def run(index, keys):
        session = session_create_planned(
            title=f"Spare plan {index}", initial_prompt="Run the plan.", repository=str(repository),
            actor=Actor.of_user(operator_user), planning={"plan_approval": "auto", "task_concurrency": 2},
            plan={"summary": "independent", "tasks": [
                {"key": key, "title": f"Part {key}", "prompt": f"@@write {key}.txt {key}\\n\n@@final {key} done",
                 "capabilities": ["code_generation"], "files": [f"{key}.txt"], "estimate_hours": ESTIMATE,
                 "after": []} for key in keys]})
        session_start(session=session, actor=Actor.of_user(operator_user))
        run_to_end(session)
        assert session.status == "completed", session.error
        return session

    env = {"OPENCODE_SCRIPTED_LLM_URL": scripted_llm.base_url, "WORKSPACE_SPARES": 2}
    with running_worker(concurrency=4, env=env) as process:
        run(1, ["one"])
        # From the repository's second session on, the worker keeps spares of it: for sessions that run
        # two tasks at once, three (the session's worktree and one per task), not WORKSPACE_SPARES.
        run(2, ["two"])
        wait_until(lambda: len(ready_spares(process)) >= 3, timeout=60, message="three spare worktrees")
        spares = set(ready_spares(process))
        assert len(spares) == 3

        session = run(3, ["left", "right"])
        made = [e.payload for e in SessionEvent.objects.filter(session=session, type="task.worktree")]
        taken = [payload["path"] for payload in made if payload["path"] in spares]
        assert session.workspace_path in spares  # the session's own worktree took one
        assert len(taken) == 2 and all(payload["spare"] for payload in made), made  # each task one
        # Its branch was made at the session branch's head, merged, and the spare's folder removed.
        payload = next(payload for payload in made if payload["path"] == taken[0])
        assert workspace.git("merge-base", "--is-ancestor", payload["branch"], session.branch_name,
                             cwd=repository, check=False, status=True)
        assert not any(Path(path).exists() for path in taken)
        for key in ("left", "right"):
            assert workspace.git("show", f"{session.branch_name}:{key}.txt", cwd=repository) == f"{key}\n"
        wait_for_idle_worker(process)
