"""A plan's tasks run side by side in worktrees of their own, merged into the session branch with git;
a conflict becomes an integration task; an acceptance command gates each task (a real Celery worker,
a real OpenCode server, real git, the scripted LLM)."""

import uuid
from pathlib import Path

import pytest
from django.conf import settings

from orchestrator.testing import make_git_repository, running_worker, wait_until
from sessions.execution import workspace
from sessions.execution.task_worktrees import task_worktree_path
from sessions.models import Checkpoint, SessionEvent
from sessions.planning.services import session_create_planned
from sessions.services import Actor, session_start
from tasks.models import Task

pytestmark = [pytest.mark.opencode, pytest.mark.worker]

TERMINAL = {"completed", "partially_completed", "failed", "timeout", "stopped", "cancelled", "orphaned"}
ESTIMATE = {"optimistic": 0.5, "likely": 1, "pessimistic": 2}


@pytest.fixture(scope="module")
def worker(django_db_setup, django_db_blocker, scripted_llm):
    with running_worker(concurrency=8, env={"OPENCODE_SCRIPTED_LLM_URL": scripted_llm.base_url}) as process:
        yield process


@pytest.fixture
def repository():
    return make_git_repository(settings.REPOSITORY_ROOTS[0] / f"par-{uuid.uuid4().hex[:8]}",
                               {"README.md": "demo\n", "shared.txt": "base\n"})


def plan_task(key, prompt, *, files, after=(), acceptance=None):
    task = {"key": key, "title": f"Task {key}", "prompt": prompt, "capabilities": ["code_generation"],
            "files": files, "estimate_hours": ESTIMATE, "after": list(after)}
    if acceptance:
        task["acceptance"] = acceptance
    return task


def planned_session(repository, user, tasks, *, concurrency=2):
    session = session_create_planned(
        title="Parallel work", initial_prompt="Do the plan.", repository=str(repository), actor=Actor.of_user(user),
        # No replans: these tests are about what the graph's run does with a failed task (a replan
        # turn on the scripted model would answer no plan and fail the session as plan_invalid).
        planning={"plan_approval": "auto", "task_concurrency": concurrency, "replan_limit": 0},
        plan={"summary": "parallel tasks", "tasks": tasks},
    )
    return session_start(session=session, actor=Actor.of_user(user))


def run_to_end(session, *, timeout=180):
    def finished():
        session.refresh_from_db()
        return session.status in TERMINAL

    wait_until(finished, timeout=timeout, interval=0.2, message=f"{session.reference} to finish")
    return session


def events(session, kind):
    return list(SessionEvent.objects.filter(session=session, type=kind).order_by("id"))


def tasks_by_key(session):
    return {task.plan_key: task for task in Task.objects.filter(session=session).exclude(plan_key="")}


def test_independent_tasks_run_at_once_in_their_own_worktrees_and_merge_into_the_session_branch(
    worker, roster, repository, operator_user
):
    session = planned_session(repository, operator_user, [
        plan_task("alpha", "@@write alpha.txt alpha\\n\n@@sleep 2\n@@final alpha done", files=["alpha.txt"]),
        plan_task("beta", "@@write beta.txt beta\\n\n@@sleep 2\n@@final beta done", files=["beta.txt"]),
        # Starts from the session branch once both are merged: its acceptance sees their files.
        plan_task("gamma", "@@write gamma.txt gamma\\n\n@@final gamma done", files=["gamma.txt"],
                  after=["alpha", "beta"], acceptance="test -f alpha.txt && test -f beta.txt && test -f gamma.txt"),
    ])
    run_to_end(session)

    assert session.status == "completed", session.error
    tasks = tasks_by_key(session)
    assert {key: task.status for key, task in tasks.items()} == dict.fromkeys(("alpha", "beta", "gamma"), "completed")

    # alpha and beta overlapped: each was prompted before either completed.
    prompted = {e.payload["task_id"]: e.id for e in events(session, "task.prompted")}
    completed = {e.payload["task_id"]: e.id for e in events(session, "task.completed")}
    alpha, beta, gamma = tasks["alpha"].pk, tasks["beta"].pk, tasks["gamma"].pk
    assert max(prompted[alpha], prompted[beta]) < min(completed[alpha], completed[beta])
    assert tasks["alpha"].started_at < tasks["beta"].completed_at
    assert tasks["beta"].started_at < tasks["alpha"].completed_at

    # Each in its own worktree and branch: alpha's checkpoints never held beta's file, and the reverse.
    made = {e.payload["task_id"]: e.payload for e in events(session, "task.worktree")}
    assert set(made) == {alpha, beta, gamma}
    assert made[alpha]["path"] != made[beta]["path"]
    # gamma started once alpha and beta were merged: in one of their worktrees (still open in
    # OpenCode), switched to its own branch at the session branch's head (its acceptance saw both files).
    assert made[gamma]["reused"] and made[gamma]["path"] in (made[alpha]["path"], made[beta]["path"])
    assert not made[alpha]["reused"] and not made[beta]["reused"]
    for own, other in ((alpha, "beta.txt"), (beta, "alpha.txt")):
        refs = [cp.git_ref for cp in Checkpoint.objects.filter(session=session, data__task_id=own)]
        assert refs and all(cp_data == made[own]["branch"] for cp_data in Checkpoint.objects.filter(
            session=session, data__task_id=own).values_list("data__worktree", flat=True))
        for ref in refs:
            assert other not in workspace.git("ls-tree", "--name-only", ref, cwd=repository).split()
    # The task worktrees are gone once the session ended; their branches stay.
    assert not any(Path(payload["path"]).exists() for payload in made.values())
    assert not any(task_worktree_path(session.reference, pk).exists() for pk in (alpha, beta, gamma))

    # Real merges, in dependency order: gamma's after alpha's and beta's; every branch is in the session's.
    merged = [e.payload["task_id"] for e in events(session, "merge.done")]
    assert sorted(merged[:2]) == sorted([alpha, beta]) and merged[2] == gamma
    branch = session.branch_name
    for payload in made.values():
        assert workspace.git("merge-base", "--is-ancestor", payload["branch"], branch, cwd=repository,
                             check=False, status=True)
    merge_commits = workspace.git("rev-list", "--merges", branch, cwd=repository).split()
    assert len(merge_commits) == 3
    for name in ("alpha", "beta", "gamma"):
        assert workspace.git("show", f"{branch}:{name}.txt", cwd=repository) == f"{name}\n"
    assert [e.payload["attempt"] for e in events(session, "acceptance.passed")] == [1]


def test_a_conflicting_pair_produces_an_integration_task_and_unresolved_ends_partially_completed(
    worker, roster, repository, operator_user
):
    # The plan says they own different files; they both change shared.txt anyway.
    session = planned_session(repository, operator_user, [
        plan_task("left", "@@write shared.txt left side\\n\n@@sleep 1\n@@final left done", files=["left.txt"]),
        plan_task("right", "@@write shared.txt right side\\n\n@@sleep 1\n@@final right done", files=["right.txt"]),
    ])
    run_to_end(session)

    assert session.status == "partially_completed", session.error
    conflict = events(session, "merge.conflict")
    assert len(conflict) == 1 and conflict[0].payload["files"] == ["shared.txt"]
    integration_event = events(session, "merge.integration_task")
    assert len(integration_event) == 1 and integration_event[0].payload["files"] == ["shared.txt"]
    integration = Task.objects.get(pk=integration_event[0].payload["integration_task_id"])
    assert integration.required_capabilities == ["conflict_resolution"]
    assert "conflict_resolution" in integration.assigned_agent.capabilities
    assert "shared.txt" in integration.description and "<<<<<<<" in integration.description
    # The scripted model answered without editing: the markers remained, the integration failed.
    assert integration.status == "failed"
    conflicted = Task.objects.get(pk=conflict[0].payload["task_id"])
    assert conflicted.status == "failed" and conflicted.error["type"] == "merge_conflict"
    assert conflicted.error["context"]["remaining"] == ["shared.txt"]
    assert session.result["conflicts"][0]["files"] == ["shared.txt"]
    # The first merged; the aborted merge left the session branch and worktree clean.
    assert len(events(session, "merge.done")) == 1
    shared = workspace.git("show", f"{session.branch_name}:shared.txt", cwd=repository)
    assert shared in ("left side\n", "right side\n")
    worktree = settings.WORKSPACE_ROOT / session.reference
    assert not workspace.git("rev-parse", "-q", "--verify", "MERGE_HEAD", cwd=worktree, check=False).strip()
    assert "<<<<<<<" not in (worktree / "shared.txt").read_text()


def test_an_acceptance_failure_gets_a_second_turn_with_the_output_then_passes_or_fails(
    worker, roster, repository, operator_user, scripted_llm
):
    # `fixer`'s command prints a directive line: the second turn's prompt carries the output, so the
    # scripted model writes the file and the command passes. `broken`'s command always fails.
    session = planned_session(repository, operator_user, [
        plan_task("fixer", "@@write first.txt one\\n\n@@final first try", files=["first.txt", "fixed.txt"],
                  acceptance="test -f fixed.txt || { echo '@@write fixed.txt repaired'; exit 1; }"),
        plan_task("broken", "@@write other.txt two\\n\n@@final done", files=["other.txt"],
                  acceptance="echo the build is still broken; exit 3"),
    ])
    run_to_end(session)

    assert session.status == "partially_completed", session.error
    tasks = tasks_by_key(session)
    fixer, broken = tasks["fixer"], tasks["broken"]
    failed = [(e.payload["task_id"], e.payload["attempt"]) for e in events(session, "acceptance.failed")]
    passed = [(e.payload["task_id"], e.payload["attempt"]) for e in events(session, "acceptance.passed")]
    assert sorted(failed) == sorted([(fixer.pk, 1), (broken.pk, 1), (broken.pk, 2)])
    assert passed == [(fixer.pk, 2)]
    assert fixer.status == "completed" and fixer.result["acceptance"]["passed"] is True
    assert workspace.git("show", f"{session.branch_name}:fixed.txt", cwd=repository) == "repaired"

    assert broken.status == "failed" and broken.error["type"] == "acceptance_failed"
    kept = broken.error["context"]["acceptance"]
    assert kept["exit_code"] == 3 and "the build is still broken" in kept["output"]
    # Two turns on one OpenCode session: the second prompted with the failing output.
    turns = [e.payload for e in events(session, "task.prompted") if e.payload["task_id"] == broken.pk]
    assert [t["how"] for t in turns] == ["new", "acceptance_failed"]
    assert turns[0]["opencode_session_id"] == turns[1]["opencode_session_id"]
    prompts = [entry["prompt"] for entry in scripted_llm.requests_for(broken.opencode_session_id)
               if entry["kind"] != "title"]
    assert any("the build is still broken" in prompt and "exited with status 3" in prompt for prompt in prompts)
    # The failed task's work was never merged.
    assert "other.txt" not in workspace.git("ls-tree", "--name-only", session.branch_name, cwd=repository).split()
