"""An operator's follow-up message to a session.

- A finished session (completed, partially completed, failed, stopped, timeout) gets a follow-up
  session: a child (`parent`) on the same repository whose branch continues the finished one's
  (it starts at its newest checkpoint when that is newer than the branch's last commit, at the
  branch's head otherwise), with the message as its prompt, started at once.
- A running (or degraded) session with a task in progress keeps the message as an
  "operator.message" event addressed to that task, `delivery: "pending"`: the durable record the
  engine delivers as the task's next turn (`pending_operator_messages` is what it reads).
- Anything else is refused with a Conflict (409) naming the state.
"""

from dataclasses import dataclass
from pathlib import Path

from django.db import transaction

from orchestrator.errors import Conflict, NotFound, ValidationFailed
from sessions import services
from sessions.execution import workspace
from sessions.models import Checkpoint, CodingSession, SessionEvent, SessionStatus
from tasks.models import Task, TaskStatus

S = SessionStatus

MESSAGE_MAX = 10_000
FOLLOW_UP_STATES = frozenset({S.COMPLETED, S.PARTIALLY_COMPLETED, S.FAILED, S.STOPPED, S.TIMEOUT})
MESSAGE_STATES = frozenset({S.RUNNING, S.DEGRADED})
OPERATOR_MESSAGE = "operator.message"


@dataclass(frozen=True)
class MessageOutcome:
    """What became of a message: a follow-up session (`child`) or a message kept for a task."""

    delivery: str  # "follow_up_session" or "next_turn"
    session: CodingSession  # the session written to
    event: SessionEvent
    child: CodingSession | None = None
    task: Task | None = None


def _clean_text(text):
    if not isinstance(text, str) or not text.strip():
        raise ValidationFailed(field="text", rule="is required")
    if len(text) > MESSAGE_MAX:
        raise ValidationFailed(field="text", rule=f"must be at most {MESSAGE_MAX} characters")
    return text.strip()


def _refused(session):
    raise Conflict(
        f"{session.reference} is {session.status}: a message goes to a running task or starts a follow-up "
        f"of a finished session ({', '.join(sorted(FOLLOW_UP_STATES))})",
        details={"current": session.status,
                 "allowed_states": sorted(FOLLOW_UP_STATES | MESSAGE_STATES)},
    )


def session_send_message(*, session: CodingSession, text: str, actor=None) -> MessageOutcome:
    """Deliver an operator's message to `session` as the module docstring says."""
    text = _clean_text(text)
    actor = services.as_actor(actor)
    with transaction.atomic():
        locked = CodingSession.objects.select_for_update().filter(pk=session.pk, deleted_at__isnull=True).first()
        if locked is None:
            raise NotFound(f"Session {session.pk} does not exist", details={"id": session.pk})
        if locked.status in MESSAGE_STATES:
            return _message_for_task(locked, text, actor)
        if locked.status in FOLLOW_UP_STATES:
            return _follow_up_session(locked, text, actor)
        _refused(locked)


def _message_for_task(session, text, actor):
    task = (
        Task.objects.filter(session_id=session.pk, status=TaskStatus.IN_PROGRESS)
        .select_related("assigned_agent").order_by("started_at", "pk").first()
    )
    if task is None:
        raise Conflict(
            f"{session.reference} is {session.status} but no task is in progress to take a message; "
            f"send it when a task runs, or after the session ends",
            details={"current": session.status, "task": None},
        )
    event = services.session_record_event(session=session, type=OPERATOR_MESSAGE, payload={
        "text": text, "task_id": task.pk, "task_title": task.title,
        "agent": task.assigned_agent.name if task.assigned_agent else "",
        "opencode_session_id": task.opencode_session_id, "delivery": "pending",
        "actor": {"kind": actor.kind, "label": actor.label},
    })
    return MessageOutcome(delivery="next_turn", session=session, event=event, task=task)


def _start_point(parent, repository):
    """(commit, checkpoint sequence or None) the follow-up's branch starts at, or (None, None)
    when the parent left no branch (it never prepared a worktree)."""
    branch = parent.branch_name or workspace.branch_name(parent.reference)
    head = workspace.git("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}^{{commit}}",
                         cwd=repository, check=False).strip()
    latest = Checkpoint.objects.filter(session_id=parent.pk).exclude(git_ref="").order_by("-sequence").first()
    if latest is not None and (not head or workspace.git(
        "merge-base", "--is-ancestor", head, latest.git_ref, cwd=repository, check=False, status=True,
    )):
        return latest.git_ref, latest.sequence
    return (head or None), None


def _follow_up_session(parent, text, actor):
    repository = Path(parent.repository)
    start_commit, checkpoint = (None, None)
    if repository.is_dir():
        start_commit, checkpoint = _start_point(parent, repository)
    title = f"Follow-up of {parent.reference}: {' '.join(text.split())}"
    child = services.session_create(
        title=title[:200], initial_prompt=text, repository=parent.repository, actor=actor,
        description=f"Follow-up of {parent.reference} ({parent.title})",
        session_type=parent.session_type, priority=parent.priority, model_identifier=parent.model_identifier,
        max_duration_seconds=parent.max_duration_seconds, max_retries=parent.max_retries,
        token_budget_soft=parent.token_budget_soft, token_budget_hard=parent.token_budget_hard,
        cost_budget_soft=parent.cost_budget_soft, cost_budget_hard=parent.cost_budget_hard,
        permission_policy=parent.permission_policy, parent=parent, agent=parent.agent, tags=parent.tags,
        metadata={"follow_up": {"parent": parent.reference, "checkpoint": checkpoint, "start_commit": start_commit}},
        start=True,
    )
    branch = workspace.branch_name(child.reference)
    event = services.session_record_event(session=parent, type="session.follow_up", payload={
        "child_id": child.pk, "child_reference": child.reference, "text": text[:500],
        "branch": branch, "start_commit": start_commit, "checkpoint": checkpoint,
        "actor": {"kind": actor.kind, "label": actor.label},
    })
    if start_commit:
        # Last in the transaction, so only the commit itself can fail after it (ids are not reused,
        # so a branch left by a failed commit names no session). The child's worktree opens this
        # existing branch instead of branching from the repository's HEAD; the job that runs it is
        # enqueued on commit, after the branch exists.
        workspace.git("branch", branch, start_commit, cwd=repository)
    return MessageOutcome(delivery="follow_up_session", session=parent, event=event, child=child)


def pending_operator_messages(*, session_id: int, task_id: int) -> list:
    """The operator messages for a task not yet delivered, oldest first: what the engine sends as
    the task's next turns (then records an "operator.message.delivered" event naming each id)."""
    delivered = set(
        SessionEvent.objects.filter(session_id=session_id, type=f"{OPERATOR_MESSAGE}.delivered")
        .values_list("payload__message_event_id", flat=True)
    )
    return [
        event for event in SessionEvent.objects.filter(
            session_id=session_id, type=OPERATOR_MESSAGE, payload__task_id=task_id).order_by("pk")
        if event.pk not in delivered
    ]
