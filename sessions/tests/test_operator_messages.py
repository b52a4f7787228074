"""An operator's message to a running task, delivered as the task's next OpenCode turn, on the real
stack: a Celery worker process, the opencode binary, the scripted LLM (the only stand-in).

The task's first turn is held by the scripted LLM's `@@wait <file>` until the test has sent the
message, so the message certainly arrives while the turn runs, with no guessed delay.
"""

import uuid

import pytest
from django.conf import settings

from orchestrator.testing import make_git_repository, running_worker, wait_until
from sessions.execution.operator_messages import DELIVERED, SENDING, id_line
from sessions.followups import OPERATOR_MESSAGE, pending_operator_messages, session_send_message
from sessions.models import SessionEvent
from sessions.opencode.scripted_llm import parse_script
from sessions.services import Actor, session_create, session_record_event, session_start
from tasks.models import Task, TaskStatus

pytestmark = [pytest.mark.opencode, pytest.mark.worker]

TERMINAL = {"completed", "partially_completed", "failed", "timeout", "stopped", "cancelled", "orphaned"}


@pytest.fixture(scope="module")
def worker(django_db_setup, django_db_blocker, scripted_llm):
    with running_worker(concurrency=4, env={"OPENCODE_SCRIPTED_LLM_URL": scripted_llm.base_url}) as process:
        yield process


def test_the_wait_directive_holds_the_step_until_its_file_exists():
    steps = parse_script("@@wait /tmp/gate 5\n@@final Done waiting.")
    assert [(step.kind, step.wait_for) for step in steps] == [("final", ("/tmp/gate", 5.0))]


def test_a_message_to_a_running_task_is_its_next_turn_answered_once(worker, roster, operator_user, scripted_llm,
                                                                    tmp_path):
    repository = make_git_repository(settings.REPOSITORY_ROOTS[0] / f"repo-{uuid.uuid4().hex[:8]}")
    gate = tmp_path / "first-turn-may-end"
    actor = Actor.of_user(operator_user)
    session = session_create(
        title="Answer, then take a follow-up",
        initial_prompt=f"Say hello.\n@@wait {gate} 120\n@@final Hello first.",
        repository=str(repository), actor=actor,
    )
    session_start(session=session, actor=actor)

    def prompted_task():
        task = Task.objects.filter(session=session, status=TaskStatus.IN_PROGRESS).first()
        prompted = SessionEvent.objects.filter(session=session, type="task.prompted").exists()
        return task if task is not None and prompted else None

    task = wait_until(prompted_task, timeout=120, interval=0.2, message="the task's first turn to start")
    outcome = session_send_message(
        session=session, actor=actor, text="Also say goodbye, please.\n@@final Goodbye from the follow-up.")
    assert outcome.delivery == "next_turn" and outcome.task.pk == task.pk
    gate.touch()

    def finished():
        session.refresh_from_db()
        return session.status in TERMINAL

    wait_until(finished, timeout=120, interval=0.2, message=f"{session.reference} to finish")
    assert session.status == "completed", session.error

    events = list(SessionEvent.objects.filter(session=session).order_by("id"))
    message = next(event for event in events if event.type == OPERATOR_MESSAGE)
    assert message.pk == outcome.event.pk
    sending = [event for event in events if event.type == SENDING]
    delivered = [event for event in events if event.type == DELIVERED]
    assert [event.payload["message_event_id"] for event in sending] == [message.pk]
    assert [event.payload["message_event_id"] for event in delivered] == [message.pk]
    assert delivered[0].payload["completed"] is True
    assert pending_operator_messages(session_id=session.pk, task_id=task.pk) == []

    # The first answer, then the follow-up turn on the same OpenCode session, answered, then delivered.
    texts = [(event.pk, event.payload["text"]) for event in events if event.type == "assistant.text"]
    assert [text for _, text in texts] == ["Hello first.", "Goodbye from the follow-up."]
    completed = next(event for event in events if event.type == "task.completed")
    assert message.pk < texts[0][0] < sending[0].pk < texts[1][0] < delivered[0].pk < completed.pk
    prompts = [event.payload for event in events if event.type == "task.prompted"]
    assert [(p["how"], p["opencode_session_id"]) for p in prompts] == [
        ("new", task.opencode_session_id), ("next_turn", task.opencode_session_id)]
    assert prompts[1]["message_event_id"] == message.pk

    # The model was asked the follow-up once, with the operator's text under its id line.
    requests = [entry for entry in scripted_llm.requests_for(task.opencode_session_id) if entry["kind"] != "title"]
    assert [entry["directive"] for entry in requests] == [
        "@@final Hello first.", "@@final Goodbye from the follow-up."]
    assert requests[1]["prompt"].startswith(id_line(message.pk))

    # Followed like any turn: its step is counted and checkpointed, and its answer is the session's.
    assert (session.tokens_input, session.tokens_output, session.api_calls) == (200, 40, 2)
    assert session.checkpoint_count == 2
    assert session.result["final_text"] == "Goodbye from the follow-up."


def test_a_message_a_stopped_run_marked_sending_but_never_prompted_is_sent_once(worker, roster, operator_user,
                                                                                scripted_llm, tmp_path):
    """A run that died between the sending record and the prompt: the task's OpenCode session holds
    no user message with the id line, so the message is sent (once) and then marked delivered."""
    repository = make_git_repository(settings.REPOSITORY_ROOTS[0] / f"repo-{uuid.uuid4().hex[:8]}")
    gate = tmp_path / "first-turn-may-end"
    actor = Actor.of_user(operator_user)
    session = session_create(title="Crash before the prompt", repository=str(repository), actor=actor,
                             initial_prompt=f"@@wait {gate} 120\n@@final First.")
    session_start(session=session, actor=actor)
    wait_until(lambda: SessionEvent.objects.filter(session=session, type="task.prompted").exists(),
               timeout=120, interval=0.2, message="the task's first turn to start")
    outcome = session_send_message(session=session, actor=actor, text="Again?\n@@final Answered once.")
    task = outcome.task
    # What the stopped run left: its sending record, and nothing in OpenCode.
    session_record_event(session=session, type=SENDING, payload={
        "message_event_id": outcome.event.pk, "task_id": task.pk, "opencode_session_id": task.opencode_session_id})
    gate.touch()

    def finished():
        session.refresh_from_db()
        return session.status in TERMINAL

    wait_until(finished, timeout=120, interval=0.2, message=f"{session.reference} to finish")
    assert session.status == "completed", session.error
    delivered = SessionEvent.objects.filter(session=session, type=DELIVERED)
    assert [event.payload["message_event_id"] for event in delivered] == [outcome.event.pk]
    assert "recovered" not in delivered[0].payload
    assert SessionEvent.objects.filter(session=session, type=SENDING).count() == 2
    requests = [entry["directive"] for entry in scripted_llm.requests_for(task.opencode_session_id)
                if entry["kind"] != "title"]
    assert requests == ["@@final First.", "@@final Answered once."]

