"""A turn whose end never reaches the worker is finished from OpenCode's own messages.

The run happens in this process (no Celery worker) on a real OpenCode server it starts, with the
scripted LLM, so one fault can be injected between the server's event stream and the task: the
events that end the turn (the final step's completion, `session.idle`, the idle status) are
dropped, as when a stream loses them. Everything else is the real path: the silence check asks
OpenCode for the session's messages and finishes the turn from them.
"""

import logging
import queue
import uuid

import pytest
from django.conf import settings

from orchestrator.testing import make_git_repository
from sessions.dispatch import session_claim_next
from sessions.execution import control, servers, session_run, task_turn
from sessions.execution.session_run import run_session
from sessions.models import CodingSession, SessionEvent
from sessions.services import Actor, session_create, session_start

pytestmark = pytest.mark.opencode


def ends_the_turn(event):
    """Whether a stream event tells the worker the turn is over (or that its last step is)."""
    if event.type == "session.idle":
        return True
    properties = event.as_dict().get("properties") or {}
    if event.type == "session.status":
        return (properties.get("status") or {}).get("type") == "idle"
    if event.type == "message.updated":
        return (properties.get("info") or {}).get("finish") == "stop"
    return False


class LosesTheTurnsEnd(queue.Queue):
    def __init__(self):
        super().__init__()
        self.dropped = []

    def put(self, item, *args, **kwargs):
        if not isinstance(item, Exception) and ends_the_turn(item):
            self.dropped.append(item.type)
            return
        super().put(item, *args, **kwargs)


@pytest.fixture
def in_process_server(settings, scripted_llm):
    settings.OPENCODE_URL = ""
    settings.OPENCODE_SCRIPTED_LLM_URL = scripted_llm.base_url
    try:
        yield
    finally:
        servers.shutdown()  # the OpenCode server this process started, by PID
        control.idle.wait(10)  # the control reader gave its connection back before the flush


def test_a_turn_whose_end_never_reaches_the_worker_is_finished_from_opencodes_messages(
        in_process_server, roster, operator_user, broker_queues, monkeypatch, caplog):
    lossy_queues = []

    class LossyTurnEvents(task_turn.TurnEvents):
        def __init__(self, *args):
            super().__init__(*args)
            self.queue = LosesTheTurnsEnd()
            lossy_queues.append(self.queue)

    monkeypatch.setattr(session_run, "TurnEvents", LossyTurnEvents)
    monkeypatch.setattr(task_turn, "SILENCE_CHECK_SECONDS", 1.0)
    repository = make_git_repository(settings.REPOSITORY_ROOTS[0] / f"repo-{uuid.uuid4().hex[:8]}")
    session = session_create(
        title="A turn whose end is lost",
        initial_prompt="@@write out.txt written\\n\n@@final All done.",
        repository=str(repository), actor=Actor.of_user(operator_user),
        max_duration_seconds=60,  # without the recovery the run would wait for its deadline
    )
    session_start(session=session, actor=Actor.of_user(operator_user))  # its job stays in this test's broker queue
    claimed = session_claim_next(session_id=session.pk, worker_id="test-worker")

    with caplog.at_level(logging.WARNING, logger="sessions.execution.task_turn"):
        status = run_session(session=claimed)

    # The final step's completion was lost (the idle signals too, whenever they came: by then the
    # turn may already have been finished from the messages).
    dropped = [kind for lossy in lossy_queues for kind in lossy.dropped]
    assert "message.updated" in dropped, dropped
    assert status == "completed"
    session = CodingSession.objects.get(pk=session.pk)
    assert session.result["final_text"] == "All done."
    assert (settings.WORKSPACE_ROOT / session.reference / "out.txt").read_text() == "written\n"
    types = list(SessionEvent.objects.filter(session=session).order_by("id").values_list("type", flat=True))
    assert types.count("opencode.turn_recovered") == 1
    # The final step, whose completion was lost, is recorded from the messages: usage and checkpoint.
    assert types.count("opencode.step") == 2 and session.api_calls == 2 and session.checkpoint_count == 2
    assert types.index("opencode.turn_recovered") < types.index("task.completed")
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any(session.reference in message and "ended without its events reaching the worker" in message
               for message in warnings), warnings
