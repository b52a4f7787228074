"""The execution core end to end: a real Celery worker process runs sessions on a real
OpenCode server (started by the worker), with the project's scripted LLM as the model.

The scripted LLM runs in this test process so its request log can be read; the worker
is told its URL through OPENCODE_SCRIPTED_LLM_URL.
"""

import re
import uuid

import pytest
from django.conf import settings

from orchestrator.testing import make_git_repository, running_worker, wait_until
from sessions.execution import workspace
from sessions.models import SessionEvent
from sessions.services import Actor, session_create, session_start
from tasks.models import Task

pytestmark = [pytest.mark.opencode, pytest.mark.worker]

TERMINAL = {"completed", "partially_completed", "failed", "timeout", "stopped", "cancelled", "orphaned"}


@pytest.fixture(scope="module")
def worker(django_db_setup, django_db_blocker, scripted_llm):
    with running_worker(concurrency=24, env={"OPENCODE_SCRIPTED_LLM_URL": scripted_llm.base_url}) as process:
        yield process


@pytest.fixture
def repository():
    return make_git_repository(settings.REPOSITORY_ROOTS[0] / f"repo-{uuid.uuid4().hex[:8]}")


def run_to_end(session, *, timeout=120):
    def finished():
        session.refresh_from_db()
        return session.status in TERMINAL

    wait_until(finished, timeout=timeout, interval=0.2, message=f"{session.reference} to finish")
    return session


def event_types(session):
    return list(SessionEvent.objects.filter(session=session).order_by("id").values_list("type", flat=True))


def test_single_task_session_runs_in_its_own_worktree(worker, roster, repository, operator_user, scripted_llm):
    session = session_create(
        title="Write the greeting file",
        initial_prompt=(
            "Create the greeting.\n"
            "@@write notes/hello.txt Hello from the scripted model\\n\n"
            "@@bash ls -1 notes > listing.txt\n"
            "@@final Wrote notes/hello.txt and listing.txt."
        ),
        repository=str(repository),
        actor=Actor.of_user(operator_user),
    )
    session_start(session=session, actor=Actor.of_user(operator_user))
    run_to_end(session)

    assert session.status == "completed", session.error
    worktree = settings.WORKSPACE_ROOT / session.reference
    assert (worktree / "notes" / "hello.txt").read_text() == "Hello from the scripted model\n"
    assert not (repository / "notes").exists()
    assert session.branch_name == f"ind/{session.reference}"

    assert session.result["final_text"] == "Wrote notes/hello.txt and listing.txt."
    assert {f["file"] for f in session.result["diff"]["files"]} == {"notes/hello.txt", "listing.txt"}
    # Three assistant steps (write, bash, final) of 100 input + 20 output tokens each.
    assert (session.tokens_input, session.tokens_output, session.api_calls) == (300, 60, 3)
    assert session.checkpoint_count == 3
    assert all(cp.git_ref and cp.opencode_message_id for cp in session.checkpoints.all())
    # Each step's checkpoint is the worktree after it: the write and the bash step changed files,
    # the final answer did not and shares the bash step's commit.
    wrote, listed, answered = session.checkpoints.order_by("sequence").values_list("git_ref", flat=True)
    assert wrote != listed and answered == listed
    assert workspace.git("show", f"{wrote}:notes/hello.txt", cwd=repository) == "Hello from the scripted model\n"
    assert "listing.txt" not in workspace.git("ls-tree", "--name-only", wrote, cwd=repository).split()
    assert "hello.txt" in workspace.git("show", f"{listed}:listing.txt", cwd=repository)

    types = event_types(session)
    for expected in ("workspace.ready", "task.routed", "task.prompted", "tool.completed",
                     "opencode.step", "assistant.text", "task.completed", "session.diff"):
        assert expected in types, f"{expected} missing from {types}"
    assert types.count("session.checkpoint") == 3

    root = Task.objects.get(session=session, parent__isnull=True)
    assert root.status == "completed"
    # An execution session's work goes to an agent that writes code, not to the read-only planner.
    assert "code_generation" in root.assigned_agent.capabilities
    assert root.assigned_agent.opencode_agent == "build"
    steps = [entry["kind"] for entry in scripted_llm.requests_for(session.opencode_session_id)]
    assert steps.count("write") == 1 and steps.count("bash") == 1 and steps.count("final") == 1
    # The run is done with the worktree: the worker has its OpenCode close it (servers.close_directory).
    wait_until(lambda: f'message="disposing instance" directory={worktree}\n' in opencode_logs(worker.pid),
               timeout=10, message="OpenCode to close the worktree")


def graph_session(repository, operator_user, tasks, *, links=(), concurrency=None):
    """A session whose root task has the given subtasks: tasks = {name: directives}; links = (a, b): b after a."""
    from tasks.services import task_add_dependency, task_create

    session = session_create(
        title="Build the three parts", initial_prompt="Build the three parts.", repository=str(repository),
        actor=Actor.of_user(operator_user), metadata={"task_concurrency": concurrency} if concurrency else None,
    )
    root = task_create(session=session, title="Build the three parts")
    made = {
        name: task_create(session=session, parent=root, title=f"Implement part {name}", description=directives,
                          required_capabilities=["code_generation"], order=index)
        for index, (name, directives) in enumerate(tasks.items())
    }
    for before, after in links:
        task_add_dependency(prerequisite=made[before], dependent=made[after])
    return session, made


def prompts_for(scripted_llm, task):
    task.refresh_from_db()
    return [
        entry["prompt"] for entry in scripted_llm.requests_for(task.opencode_session_id) if entry["kind"] != "title"
    ]


def test_task_graph_runs_in_dependency_order_and_passes_outputs_through_the_context(
    worker, roster, repository, operator_user, scripted_llm
):
    session, tasks = graph_session(repository, operator_user, {
        "A": "@@write a.txt part A\\n\n@@final Part A exposes the token alpha-42.",
        "B": "@@write b.txt part B\\n\n@@final Part B done.",
        "C": "@@final Part C done.",
    }, links=[("A", "B"), ("B", "C")])
    session_start(session=session, actor=Actor.of_user(operator_user))
    run_to_end(session)

    assert session.status == "completed", session.error
    for task in tasks.values():
        task.refresh_from_db()
        assert task.status == "completed"
    a, b, c = tasks["A"], tasks["B"], tasks["C"]
    assert a.completed_at <= b.started_at and b.completed_at <= c.started_at
    assert "Shared context" not in prompts_for(scripted_llm, a)[0]
    b_prompt = prompts_for(scripted_llm, b)[0]
    assert "Shared context" in b_prompt
    assert f'tasks.task_{a.pk}.output = "Part A exposes the token alpha-42."' in b_prompt
    assert len({a.opencode_session_id, b.opencode_session_id, c.opencode_session_id}) == 3
    assert a.assigned_agent.capabilities and "code_generation" in a.assigned_agent.capabilities
    assert {f["file"] for f in session.result["diff"]["files"]} == {"a.txt", "b.txt"}


def test_independent_tasks_run_concurrently_when_the_limit_allows(worker, roster, repository, operator_user):
    session, tasks = graph_session(repository, operator_user, {
        name: "@@sleep 2\n@@final finished " + name for name in ("A", "B", "C")
    }, concurrency=3)
    session_start(session=session, actor=Actor.of_user(operator_user))
    run_to_end(session)

    assert session.status == "completed", session.error
    for task in tasks.values():
        task.refresh_from_db()
    latest_start = max(task.started_at for task in tasks.values())
    earliest_end = min(task.completed_at for task in tasks.values())
    assert latest_start < earliest_end, "the three tasks did not overlap"


def test_failed_task_skips_its_dependents_and_the_session_ends_partially_completed(
    worker, roster, repository, operator_user
):
    session, tasks = graph_session(repository, operator_user, {
        "A": "@@fail 400\n@@final never",
        "B": "@@final depends on A",
        "C": "@@write c.txt independent\\n\n@@final C done.",
    }, links=[("A", "B")])
    session_start(session=session, actor=Actor.of_user(operator_user))
    run_to_end(session)

    assert session.status == "partially_completed", session.error
    statuses = {name: Task.objects.get(pk=task.pk).status for name, task in tasks.items()}
    assert statuses == {"A": "failed", "B": "skipped", "C": "completed"}
    failed = Task.objects.get(pk=tasks["A"].pk)
    assert failed.error["type"] == "provider_error"
    assert "400" in failed.error["message"]
    assert "task.failed" in event_types(session)


def test_twenty_concurrent_sessions_all_complete(worker, roster, operator_user):
    sessions = []
    for index in range(20):
        repository = make_git_repository(settings.REPOSITORY_ROOTS[0] / f"many-{uuid.uuid4().hex[:8]}")
        session = session_create(
            title=f"Parallel job {index}", repository=str(repository), actor=Actor.of_user(operator_user),
            initial_prompt=f"@@write out.txt job {index}\\n\n@@bash cat out.txt\n@@final job {index} done",
        )
        session_start(session=session, actor=Actor.of_user(operator_user))
        sessions.append(session)
    for session in sessions:
        run_to_end(session, timeout=240)
    failures = {s.reference: (s.status, s.error) for s in sessions if s.status != "completed"}
    assert not failures, failures
    for index, session in enumerate(sessions):
        assert (settings.WORKSPACE_ROOT / session.reference / "out.txt").read_text() == f"job {index}\n"



def opencode_logs(worker_pid):
    """The logs of the worker's OpenCode servers, as text."""
    return "".join(log.read_text(errors="replace") for log in
                   (settings.VAR_DIR / "opencode-state").glob(f"*-{worker_pid}-*/data/opencode/log/*.log"))


def opencode_sessions_titled(worker_pid, prefix):
    """Titles of the OpenCode sessions in the stores of the worker's servers that start with `prefix`
    (read-only: the server is running)."""
    import sqlite3

    titles = []
    for store in (settings.VAR_DIR / "opencode-state").glob(f"*-{worker_pid}-*/data/opencode/opencode.db"):
        connection = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10)
        try:
            titles += [row[0] for row in connection.execute("SELECT title FROM session") if row[0].startswith(prefix)]
        finally:
            connection.close()
    return titles


def test_a_task_that_waits_for_an_agent_runs_when_one_frees_up_in_the_opencode_session_made_first(
    worker, roster, repository, operator_user, scripted_llm,
):
    """Every agent able to write code is full: the task waits (retrying each second), then runs once one
    is released. Its OpenCode session, made while the first attempt was routed, serves every attempt:
    exactly one exists for the session afterwards (none leaked by the retries)."""
    from agents.services import NoAgentAvailable, agent_release, agent_route

    held = []
    while True:
        try:
            held.append(agent_route(required_capabilities=["code_generation"], reserve=True).agent)
        except NoAgentAvailable:
            break
    session = session_create(title="Wait for an agent", initial_prompt="@@final done after waiting",
                             repository=str(repository), actor=Actor.of_user(operator_user))
    try:
        session_start(session=session, actor=Actor.of_user(operator_user))
        wait_until(lambda: "task.waiting_for_agent" in event_types(session), timeout=60,
                   message="the task to wait for an agent")
        attempts = re.compile(rf"{session.reference}: task \d+ waits for an agent".encode())
        # The worker logs each routing attempt: let it try three times while every agent is full.
        wait_until(lambda: len(attempts.findall(worker.log_path.read_bytes())) >= 3, timeout=30,
                   message="three routing attempts")
    finally:
        for agent in held:
            agent_release(agent=agent)
    run_to_end(session)

    assert session.status == "completed", session.error
    root = Task.objects.get(session=session, parent__isnull=True)
    assert root.opencode_session_id
    assert opencode_sessions_titled(worker.pid, session.reference) == [f"{session.reference} · {root.title}"]
    assert [entry["kind"] for entry in scripted_llm.requests_for(root.opencode_session_id)
            if entry["kind"] != "title"] == ["final"]


def test_a_task_no_agent_can_take_is_skipped_and_its_early_opencode_session_deleted(
    worker, roster, repository, operator_user,
):
    """The OpenCode session made while the task was routed is deleted when routing finds no agent
    that could ever take it; the session's other task runs, so the session ends partially completed."""
    from agents.models import Agent
    from tasks.services import task_create

    # Without the generalist, no agent both writes code and audits security.
    Agent.objects.filter(name="AGENT-GENERALIST").delete()
    session, tasks = graph_session(repository, operator_user, {"A": "@@final Part A done."})
    root = Task.objects.get(session=session, parent__isnull=True)
    unroutable = task_create(session=session, parent=root, title="Needs what nobody has",
                             description="@@final never", required_capabilities=["code_generation", "security_audit"],
                             order=1)
    session_start(session=session, actor=Actor.of_user(operator_user))
    run_to_end(session)

    assert session.status == "partially_completed", session.error
    unroutable.refresh_from_db()
    assert unroutable.status == "skipped"
    assert unroutable.opencode_session_id in ("", None)
    wait_until(lambda: opencode_sessions_titled(worker.pid, session.reference)
               == [f"{session.reference} · {tasks['A'].title}"], timeout=10,
               message="only the task that ran to keep its OpenCode session")
