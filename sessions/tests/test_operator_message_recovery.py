"""Exactly once across a stopped run (docs/decisions/0240): a run that died after its prompt
reached OpenCode leaves a message the next delivery must not send again.

The worker uses an OpenCode server this test started (OPENCODE_URL, known password), so the test
can play the stopped run: its "sending" record, then its prompt, straight to the task's OpenCode
session. The scripted LLM is the only stand-in.
"""

import secrets
import uuid

import pytest
from django.conf import settings

from orchestrator.testing import make_git_repository, running_worker, wait_until
from sessions.execution.operator_messages import DELIVERED, SENDING, message_prompt
from sessions.followups import session_send_message
from sessions.models import SessionEvent
from sessions.opencode.client import OpenCodeClient
from sessions.opencode.server import OpenCodeServer
from sessions.services import Actor, session_create, session_record_event, session_start

pytestmark = [pytest.mark.opencode, pytest.mark.worker]

TERMINAL = {"completed", "partially_completed", "failed", "timeout", "stopped", "cancelled", "orphaned"}
PASSWORD = secrets.token_urlsafe(16)


@pytest.fixture(scope="module")
def opencode(scripted_llm, tmp_path_factory):
    server = OpenCodeServer(workdir=settings.WORKSPACE_ROOT, state_dir=tmp_path_factory.mktemp("opencode-state"),
                            scripted_llm_url=scripted_llm.base_url, password=PASSWORD)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def worker(django_db_setup, django_db_blocker, opencode):
    with running_worker(concurrency=4, env={"OPENCODE_URL": opencode.url, "OPENCODE_SERVER_PASSWORD": PASSWORD}) \
            as process:
        yield process


def test_a_message_a_stopped_run_already_prompted_is_not_sent_again(worker, opencode, roster, operator_user,
                                                                    scripted_llm, tmp_path):
    """A run that died after the prompt reached OpenCode: the turn it began is followed, the id line
    is found in the task's OpenCode session, and only "delivered" is recorded (the model is asked once).
    The test plays the stopped run: its sending record, then its prompt, straight to OpenCode."""
    repository = make_git_repository(settings.REPOSITORY_ROOTS[0] / f"repo-{uuid.uuid4().hex[:8]}")
    gate = tmp_path / "first-turn-may-end"
    actor = Actor.of_user(operator_user)
    session = session_create(title="Crash after the prompt", repository=str(repository), actor=actor,
                             initial_prompt=f"@@wait {gate} 120\n@@final First.")
    session_start(session=session, actor=actor)
    wait_until(lambda: SessionEvent.objects.filter(session=session, type="task.prompted").exists(),
               timeout=120, interval=0.2, message="the task's first turn to start")
    outcome = session_send_message(session=session, actor=actor, text="Once only?\n@@final Answered once.")
    task, message = outcome.task, outcome.event
    session.refresh_from_db()
    session_record_event(session=session, type=SENDING, payload={
        "message_event_id": message.pk, "task_id": task.pk, "opencode_session_id": task.opencode_session_id})
    client = OpenCodeClient(opencode.url, password=PASSWORD, directory=session.workspace_path)
    client.prompt_async(task.opencode_session_id, text=message_prompt(message))  # queued behind the first turn
    gate.touch()

    def finished():
        session.refresh_from_db()
        return session.status in TERMINAL

    wait_until(finished, timeout=120, interval=0.2, message=f"{session.reference} to finish")
    assert session.status == "completed", session.error
    delivered = SessionEvent.objects.filter(session=session, type=DELIVERED)
    assert [(e.payload["message_event_id"], e.payload.get("recovered")) for e in delivered] == [(message.pk, True)]
    assert SessionEvent.objects.filter(session=session, type=SENDING).count() == 1
    requests = [entry["directive"] for entry in scripted_llm.requests_for(task.opencode_session_id)
                if entry["kind"] != "title"]
    assert requests == ["@@final First.", "@@final Answered once."]
