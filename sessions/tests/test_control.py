"""Execution control end to end: pause and resume, stop, deadline, provider retries, permission
approvals, budgets, checkpoint restore, and racing starts. A real Celery worker runs the sessions on
a real OpenCode server; the scripted LLM runs in this process so its request log can be read."""

import re
import threading
import time
import uuid

import pytest
from django.conf import settings
from django.db import connection

from orchestrator.errors import TransitionRefused
from orchestrator.testing import answered_directives, make_git_repository, running_worker, wait_until
from sessions.execution import workspace
from sessions.models import Checkpoint, CodingSession, PermissionRequest, SessionEvent, SessionTransition
from sessions.services import (
    Actor,
    session_create,
    session_pause,
    session_restore_checkpoint,
    session_resume,
    session_retry,
    session_start,
    session_stop,
)
from tasks.models import Task

pytestmark = [pytest.mark.opencode, pytest.mark.worker]

TERMINAL = {"completed", "partially_completed", "failed", "timeout", "stopped", "cancelled", "orphaned"}


@pytest.fixture(scope="module")
def worker(django_db_setup, django_db_blocker, scripted_llm):
    env = {
        "OPENCODE_SCRIPTED_LLM_URL": scripted_llm.base_url,
        "PERMISSION_TIMEOUT_SECONDS": 4,
        "PERMISSION_DEGRADE_SECONDS": 1,
        "SESSION_HEARTBEAT_SECONDS": 1,
        "SESSION_STALL_SECONDS": 3,
    }
    with running_worker(concurrency=8, env=env) as process:
        yield process


@pytest.fixture
def new_session(roster, operator_user):
    def make(prompt, **fields):
        repository = make_git_repository(settings.REPOSITORY_ROOTS[0] / f"ctl-{uuid.uuid4().hex[:8]}")
        fields.setdefault("title", "Controlled job")
        return session_create(
            initial_prompt=prompt, repository=str(repository), actor=Actor.of_user(operator_user), **fields
        )

    return make


def status_of(session):
    return CodingSession.objects.values_list("status", flat=True).get(pk=session.pk)


def wait_for_status(session, *statuses, timeout=90):
    wait_until(lambda: status_of(session) in statuses, timeout=timeout, interval=0.1,
               message=f"{session.reference} to be {' or '.join(statuses)} (is {status_of(session)})")
    session.refresh_from_db()
    return session


def wait_for_event(session, kind, *, count=1, timeout=60, **payload):
    def found():
        events = SessionEvent.objects.filter(session=session, type=kind)
        matching = [e for e in events if all(e.payload.get(k) == v for k, v in payload.items())]
        return len(matching) >= count and matching

    return wait_until(found, timeout=timeout, interval=0.1, message=f"{count} {kind} event(s) {payload or ''}")


def completed_steps(scripted_llm, *keys):
    return answered_directives(scripted_llm, keys)


def transitions(session):
    return list(
        SessionTransition.objects.filter(session=session)
        .order_by("id")
        .values_list("from_status", "to_status", "reason")
    )


def root_task(session):
    return Task.objects.get(session=session, parent__isnull=True)


def test_pause_then_resume_finishes_the_work_in_the_same_opencode_session(
    worker, new_session, operator_user, scripted_llm
):
    session = new_session("@@write a.txt A\\n\n@@sleep 4\n@@write b.txt B\\n\n@@final both written")
    session_start(session=session, actor=Actor.of_user(operator_user))
    wait_for_event(session, "tool.completed", tool="write")
    session_pause(session=session, actor=Actor.of_user(operator_user), reason="operator wants a look")
    wait_until(lambda: root_task(session).status == "paused", timeout=30, message="the task to pause")
    first_opencode_session = root_task(session).opencode_session_id
    assert Checkpoint.objects.filter(session=session, data__reason="pause").exists()

    session_resume(session=session, actor=Actor.of_user(operator_user))
    session = wait_for_status(session, *TERMINAL)

    assert session.status == "completed", session.error
    assert root_task(session).opencode_session_id == first_opencode_session
    worktree = settings.WORKSPACE_ROOT / session.reference
    assert (worktree / "a.txt").read_text() == "A\n" and (worktree / "b.txt").read_text() == "B\n"
    steps = completed_steps(scripted_llm, first_opencode_session)
    assert steps.count("@@write a.txt A\\n") == 1
    assert steps.count("@@write b.txt B\\n") == 1
    how = [e.payload["how"] for e in SessionEvent.objects.filter(session=session, type="task.prompted").order_by("id")]
    assert how == ["new", "continue"]


def started_into_a_sleeping_step(new_session, operator_user, scripted_llm):
    """(session, its task): started, its first file written, the LLM asked for the 6 s step."""
    session = new_session("@@write a.txt A\\n\n@@sleep 6\n@@write b.txt B\\n\n@@final never")
    session_start(session=session, actor=Actor.of_user(operator_user))
    wait_for_event(session, "tool.completed", tool="write")
    task = root_task(session)
    wait_until(lambda: any(e["key"] == task.opencode_session_id and e["step"] == 1 for e in scripted_llm.requests),
               timeout=20, message="the sleeping step to be asked")
    return session, task


def test_stop_mid_run_sends_the_llm_nothing_after_the_abort(worker, new_session, operator_user, scripted_llm):
    session, task = started_into_a_sleeping_step(new_session, operator_user, scripted_llm)
    stopped_at = time.time()
    session_stop(session=session, actor=Actor.of_user(operator_user), reason="enough")
    wait_until(lambda: (task.opencode_session_id, 1) in {(e["key"], e["step"]) for e in scripted_llm.abandoned},
               timeout=20, message="OpenCode to hang up on the sleeping request")

    assert status_of(session) == "stopped"
    later = [e for e in scripted_llm.requests if e["key"] == task.opencode_session_id and e["time"] > stopped_at]
    assert later == []
    assert not (settings.WORKSPACE_ROOT / session.reference / "b.txt").exists()


def test_a_run_whose_session_another_worker_took_stops_and_leaves_the_task_to_it(
    worker, new_session, operator_user, scripted_llm,
):
    """The control reader shows the run that its session now belongs to another worker (the
    reconciler gave it away): the run aborts its turn and stops as "lost", without failing the task
    the other worker carries on."""
    session, task = started_into_a_sleeping_step(new_session, operator_user, scripted_llm)

    CodingSession.objects.filter(pk=session.pk).update(worker_id="another-worker")

    wait_until(lambda: (task.opencode_session_id, 1) in {(e["key"], e["step"]) for e in scripted_llm.abandoned},
               timeout=20, message="OpenCode to hang up on the sleeping request (the turn aborted)")
    stopped = re.compile(rf"{session.reference}: run stopped \((.*)now owned by another-worker\)".encode())
    wait_until(lambda: stopped.search(worker.log_path.read_bytes()), timeout=10, message="the run to stop")
    assert stopped.search(worker.log_path.read_bytes()).group(1) == b"session is lost: "
    assert Task.objects.get(pk=task.pk).status == "in_progress"
    assert status_of(session) == "running"
    assert not (settings.WORKSPACE_ROOT / session.reference / "b.txt").exists()


def test_deadline_aborts_the_turn_and_times_out(worker, new_session, operator_user, scripted_llm):
    session = new_session("@@sleep 30\n@@final too late", max_duration_seconds=60)
    # 57 of its 60 seconds were spent in an earlier attempt: the deadline falls 3 s into this run.
    CodingSession.objects.filter(pk=session.pk).update(attempt_seconds=57)
    session_start(session=session, actor=Actor.of_user(operator_user))
    session = wait_for_status(session, *TERMINAL, timeout=60)

    assert session.status == "timeout"
    assert session.error["type"] == "timeout"
    key = root_task(session).opencode_session_id
    # Whatever the LLM had been asked before the abort was dropped, never answered.
    wait_until(lambda: not any(e["key"] == key and e["kind"] != "title" for e in scripted_llm.requests)
               or (key, 0) in {(e["key"], e["step"]) for e in scripted_llm.abandoned},
               timeout=20, message="the aborted request to be dropped")
    assert completed_steps(scripted_llm, key) == []


def test_provider_errors_degrade_the_session_until_it_recovers(worker, new_session, operator_user):
    session = new_session("@@fail 500 times=2\n@@write a.txt A\\n\n@@final recovered")
    session_start(session=session, actor=Actor.of_user(operator_user))
    session = wait_for_status(session, *TERMINAL, timeout=90)

    assert session.status == "completed", session.error
    moves = transitions(session)
    degraded = [reason for source, target, reason in moves if target == "degraded"]
    assert degraded and degraded[0].startswith("provider retrying")
    assert ("degraded", "running") in [(source, target) for source, target, _ in moves]


def test_a_silent_stream_degrades_the_session_until_events_resume(worker, new_session, operator_user):
    session = new_session("@@sleep 6\n@@final woke up")
    session_start(session=session, actor=Actor.of_user(operator_user))
    session = wait_for_status(session, *TERMINAL, timeout=60)

    assert session.status == "completed", session.error
    moves = [(source, target, reason) for source, target, reason in transitions(session)]
    assert ("running", "degraded", "no OpenCode events for 3 s") in moves
    assert moves.index(("running", "degraded", "no OpenCode events for 3 s")) < [
        (source, target) for source, target, _ in moves].index(("degraded", "running"))


def test_permission_ask_approved_through_the_api_lets_the_tool_run(worker, new_session, operator_user, api_client):
    session = new_session("@@bash echo approved > out.txt\n@@final ran", permission_policy={"bash": "ask"})
    session_start(session=session, actor=Actor.of_user(operator_user))
    wait_until(lambda: PermissionRequest.objects.filter(session=session, status="pending").exists(),
               timeout=30, message="a pending permission request")

    listed = api_client.get(f"/api/v1/sessions/{session.pk}/permissions?status=pending").json()["results"]
    assert [item["permission"] for item in listed] == ["bash"]
    answer = api_client.post(f"/api/v1/sessions/{session.pk}/permissions/{listed[0]['id']}/reply", {"reply": "once"},
                             format="json")
    assert answer.status_code == 200, answer.json()
    session = wait_for_status(session, *TERMINAL)

    assert session.status == "completed", session.error
    assert (settings.WORKSPACE_ROOT / session.reference / "out.txt").read_text() == "approved\n"
    again = api_client.post(f"/api/v1/sessions/{session.pk}/permissions/{listed[0]['id']}/reply", {"reply": "reject"},
                            format="json")
    assert again.status_code == 409


def test_permission_rejected_fails_the_task(worker, new_session, operator_user, api_client):
    session = new_session("@@bash echo nope > out.txt\n@@final ran", permission_policy={"bash": "ask"})
    session_start(session=session, actor=Actor.of_user(operator_user))
    wait_until(lambda: PermissionRequest.objects.filter(session=session, status="pending").exists(), timeout=30,
               message="a pending permission request")
    request = PermissionRequest.objects.get(session=session)
    assert api_client.post(f"/api/v1/sessions/{session.pk}/permissions/{request.pk}/reply", {"reply": "reject"},
                           format="json").status_code == 200
    session = wait_for_status(session, *TERMINAL)

    assert session.status == "failed"
    assert root_task(session).status == "failed"
    assert root_task(session).error["type"] == "permission_rejected"
    assert not (settings.WORKSPACE_ROOT / session.reference / "out.txt").exists()


def test_unanswered_permission_gets_the_default_after_expiry(worker, new_session, operator_user):
    session = new_session("@@bash echo late > out.txt\n@@final ran", permission_policy={"bash": "ask"})
    session_start(session=session, actor=Actor.of_user(operator_user))
    session = wait_for_status(session, *TERMINAL, timeout=60)

    request = PermissionRequest.objects.get(session=session)
    assert (request.status, request.reply) == ("expired", "reject")
    assert request.forwarded_at is not None
    assert session.status == "failed"
    assert any(target == "degraded" and "permission" in reason for _, target, reason in transitions(session))
    wait_for_event(session, "permission.expired")


def test_soft_budget_pauses_with_the_reason(worker, new_session, operator_user):
    session = new_session("@@write a.txt A\\n\n@@write b.txt B\\n\n@@sleep 5\n@@final done", token_budget_soft=150)
    session_start(session=session, actor=Actor.of_user(operator_user))
    session = wait_for_status(session, "paused", *TERMINAL)

    assert session.status == "paused"
    reasons = [reason for _, target, reason in transitions(session) if target == "paused"]
    assert reasons and reasons[0].startswith("soft budget limit reached")
    assert session.metadata["soft_budget_passed"] is True


def test_hard_budget_fails_the_session(worker, new_session, operator_user):
    session = new_session("@@write a.txt A\\n\n@@write b.txt B\\n\n@@sleep 5\n@@final done", token_budget_hard=200)
    session_start(session=session, actor=Actor.of_user(operator_user))
    session = wait_for_status(session, *TERMINAL)

    assert session.status == "failed"
    assert session.error["type"] == "budget_exceeded"
    assert session.tokens_total >= 200


def test_restoring_a_checkpoint_resets_the_worktree_before_resuming(worker, new_session, operator_user, scripted_llm):
    session = new_session("@@write a.txt one\\n\n@@sleep 30\n@@write a.txt two\\n\n@@final done")
    session_start(session=session, actor=Actor.of_user(operator_user))
    wait_for_event(session, "session.checkpoint")
    session_stop(session=session, actor=Actor.of_user(operator_user))
    # The stopped run's task is interrupted (paused), so the retry below carries it on.
    wait_until(lambda: root_task(session).status == "paused", timeout=30, message="the task to stop")
    worktree = settings.WORKSPACE_ROOT / session.reference
    (worktree / "a.txt").write_text("tampered\n")
    (worktree / "junk.txt").write_text("junk\n")
    checkpoint = Checkpoint.objects.filter(session=session).order_by("sequence").first()

    session_restore_checkpoint(session=session, sequence=checkpoint.sequence, actor=Actor.of_user(operator_user))
    session_retry(session=session, actor=Actor.of_user(operator_user))
    session_start(session=CodingSession.objects.get(pk=session.pk), actor=Actor.of_user(operator_user))
    wait_for_event(session, "workspace.restored")

    assert (worktree / "a.txt").read_text() == "one\n"
    assert not (worktree / "junk.txt").exists()
    assert (
        workspace.snapshot_tree(worktree)
        == workspace.git("rev-parse", f"{checkpoint.git_ref}^{{tree}}", cwd=worktree).strip()
    )
    # The retried run resumes the interrupted task: in a new OpenCode session told that one step is done.
    prompted = wait_for_event(session, "task.prompted", how="resume")[0]
    assert prompted.payload["steps_done"] == 1
    assert status_of(session) in ("running", "degraded")
    session_stop(session=session, actor=Actor.of_user(operator_user), reason="test done")  # it sleeps 30 s in step 2


@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_starts_run_the_session_once(worker, new_session, operator_user, scripted_llm):
    session = new_session("@@write a.txt once\\n\n@@final done")
    outcomes = []
    barrier = threading.Barrier(50)

    def start():
        barrier.wait()
        try:
            session_start(session=CodingSession.objects.get(pk=session.pk), actor=Actor.of_user(operator_user))
            outcomes.append("started")
        except TransitionRefused:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=start) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    session = wait_for_status(session, *TERMINAL)

    assert outcomes.count("started") == 1 and outcomes.count("refused") == 49
    assert session.status == "completed"
    runs = [t for t in transitions(session) if t[1] == "running"]
    assert len(runs) == 1
    assert SessionEvent.objects.filter(session=session, type="task.prompted").count() == 1
    assert completed_steps(scripted_llm, root_task(session).opencode_session_id).count("@@write a.txt once\\n") == 1
