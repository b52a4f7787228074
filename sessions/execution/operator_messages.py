"""Delivering an operator's messages to a running task: each becomes the task's next OpenCode turn.

`session_send_message` (sessions/followups.py) keeps a message for a running task as an
"operator.message" event. When that task's turn ends well, the session run calls
`deliver_pending`: each message not yet delivered, oldest first, is prompted on the task's
OpenCode session (the same conversation, so the agent answers with everything it did in view),
followed like any turn (events, step checkpoints, usage), then "operator.message.delivered"
names it.

Exactly once, a worker crash included (docs/decisions/0240-operator-message-delivery.md):

1. "operator.message.sending" is committed BEFORE the prompt goes out;
2. the prompt carries the message's id on its first line ("Message from the operator (#<id>)");
3. "operator.message.delivered" is committed after the turn ends.

A message with a sending record and no delivered one was (maybe) sent by a run that stopped
meanwhile. It is sent again only when the task's OpenCode session does not hold a user message
with its id line: if the prompt reached OpenCode, the resumed run has followed (re-attached to or
continued) the turn it started, and only "delivered" is recorded. A task resumed in a new OpenCode
session (its old one was lost with its server) gets the message again: the conversation that saw
it is gone, and the agent that carries the task on has not.
"""

import logging

from sessions.execution.task_turn import TaskTurn, TurnOutcome
from sessions.followups import OPERATOR_MESSAGE, pending_operator_messages
from sessions.models import SessionEvent
from tasks.models import Task

logger = logging.getLogger(__name__)

SENDING = f"{OPERATOR_MESSAGE}.sending"
DELIVERED = f"{OPERATOR_MESSAGE}.delivered"
# Messages delivered at one turn's end at most; later ones wait for the next end (a bound, so an
# operator posting in a loop cannot keep a task from ever finishing).
DELIVERY_LIMIT = 20


def message_prompt(message: SessionEvent) -> str:
    """What the agent is sent: the id line (how a resumed run recognises a message already sent),
    then the operator's text as written."""
    return f"{id_line(message.pk)}\n{message.payload['text']}"


def id_line(message_event_id: int) -> str:
    return f"Message from the operator (#{message_event_id}):"


def deliver_pending(*, turn: TaskTurn, task: Task, outcome: TurnOutcome) -> TurnOutcome:
    """Deliver the task's pending operator messages after a turn that completed, one turn each;
    answer the outcome of the last turn run (`outcome` itself when there was nothing to deliver).

    A turn that failed ends the delivery there (the task fails with it; messages still pending stay
    so, recorded as they are). SessionEnded from a follow-up turn propagates like any turn's."""
    session_run = turn.session_run
    for _ in range(DELIVERY_LIMIT):
        if not outcome.completed:
            break
        pending = pending_operator_messages(session_id=session_run.session_id, task_id=task.pk)
        if not pending:
            break
        message = pending[0]
        base = {"message_event_id": message.pk, "opencode_session_id": turn.opencode_session_id}
        if _sending_recorded(message) and _reached_opencode(turn, message):
            # A run that stopped sent it; the turn it started was followed when this run took the task on.
            session_run.record([(DELIVERED, {**base, "resent": False, "recovered": True})], task=task)
            continue
        session_run.record([(SENDING, base)], task=task)
        outcome = turn.run_next(task, prompt=message_prompt(message), note={"message_event_id": message.pk})
        session_run.record([(DELIVERED, {**base, "completed": outcome.completed})], task=task)
    return outcome


def _sending_recorded(message: SessionEvent) -> bool:
    return SessionEvent.objects.filter(
        session_id=message.session_id, type=SENDING, payload__message_event_id=message.pk).exists()


def _reached_opencode(turn: TaskTurn, message: SessionEvent) -> bool:
    """Whether the task's OpenCode session holds a user message starting with the message's id line."""
    expected = id_line(message.pk)
    for item in turn.client.messages(turn.opencode_session_id):
        if (item.get("info") or {}).get("role") != "user":
            continue
        for part in item.get("parts") or []:
            if part.get("type") == "text" and (part.get("text") or "").startswith(expected):
                return True
    return False
