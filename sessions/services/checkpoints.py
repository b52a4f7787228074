"""Checkpoints of a session: numbered snapshots (OpenCode message id + git ref) to resume from."""


from django.db import connection, transaction
from django.utils import timezone

from orchestrator import events
from orchestrator.errors import Conflict, NotFound, ValidationFailed
from sessions import sql
from sessions.models import CHECKPOINTS_RETAINED, Checkpoint, CodingSession, SessionEvent, SessionStatus
from sessions.services.common import Actor, actor_payload, as_actor, lock_session
from sessions.services.event_log import event_message, write_event

S = SessionStatus


CHECKPOINT_STATES = frozenset({S.RUNNING, S.DEGRADED, S.PAUSED})
RESTORE_STATES = frozenset({S.PENDING, S.PAUSED, S.FAILED, S.TIMEOUT, S.STOPPED, S.ORPHANED})


def session_add_checkpoint(
    *, session: CodingSession, data: dict | None = None, opencode_message_id: str = "", git_ref: str = "",
    actor: Actor | None = None,
) -> Checkpoint:
    """Record a checkpoint with the next sequence number (1, 2, ... never reused).

    Only while running, degraded or paused. Keeps at most CHECKPOINTS_RETAINED
    checkpoints, dropping the oldest; checkpoint_count and last_checkpoint_at
    follow. The sequence counter lives on the locked session row, so concurrent
    calls get distinct, increasing numbers.
    """
    if data is not None and not isinstance(data, dict):
        raise ValidationFailed(field="data", rule="must be an object")
    if len(opencode_message_id or "") > 200:
        raise ValidationFailed(field="opencode_message_id", rule="must be at most 200 characters")
    if len(git_ref or "") > 200:
        raise ValidationFailed(field="git_ref", rule="must be at most 200 characters")
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        added = _add_checkpoint_in_one_statement(
            session.pk, data=data or {}, opencode_message_id=opencode_message_id or "", git_ref=git_ref or "",
            actor=actor_payload(as_actor(actor)),
        )
        if added is not None:
            return added
        # Not added: the session is gone, deleted or not in a checkpoint state; the way below says which.
    with transaction.atomic():
        locked = lock_session(
            session.pk, fields=("id", "reference", "status", "last_checkpoint_sequence", "checkpoint_count"))
        if locked.status not in CHECKPOINT_STATES:
            raise Conflict(
                f"Checkpoints are taken while a session is running, degraded or paused; "
                f"{locked.reference} is {locked.status}",
                details={"current": locked.status, "allowed_states": sorted(CHECKPOINT_STATES)},
            )
        now = timezone.now()
        sequence = locked.last_checkpoint_sequence + 1
        checkpoint = Checkpoint.objects.create(
            session=locked, sequence=sequence, data=data or {},
            opencode_message_id=opencode_message_id or "", git_ref=git_ref or "", created_at=now,
        )
        # Sequences are contiguous (only this function creates or drops them), so
        # everything at or below sequence - RETAINED is outside the newest RETAINED.
        dropped = 0
        if sequence > CHECKPOINTS_RETAINED:
            dropped, _ = Checkpoint.objects.filter(
                session=locked, sequence__lte=sequence - CHECKPOINTS_RETAINED
            ).delete()
        locked.last_checkpoint_sequence = sequence
        locked.checkpoint_count = min(locked.checkpoint_count + 1, CHECKPOINTS_RETAINED)
        locked.last_checkpoint_at = now
        locked.updated_at = now
        locked.save(update_fields=["last_checkpoint_sequence", "checkpoint_count", "last_checkpoint_at", "updated_at"])
        write_event(
            locked,
            "session.checkpoint",
            {
                "sequence": sequence,
                "opencode_message_id": checkpoint.opencode_message_id,
                "git_ref": checkpoint.git_ref,
                "actor": actor_payload(as_actor(actor)),
            },
        )
    return checkpoint


def _add_checkpoint_in_one_statement(
    session_id: int, *, data: dict, opencode_message_id: str, git_ref: str, actor: dict,
) -> Checkpoint | None:
    """session_add_checkpoint outside a transaction on PostgreSQL (see sql.add_checkpoint); None
    when nothing was added."""
    payload = {"opencode_message_id": opencode_message_id, "git_ref": git_ref, "actor": actor}
    added = sql.add_checkpoint(
        session_id=session_id, states=sorted(CHECKPOINT_STATES), retained=CHECKPOINTS_RETAINED, data=data,
        opencode_message_id=opencode_message_id, git_ref=git_ref, event_payload=payload,
    )
    if added is None:
        return None
    event = SessionEvent(id=added.event_id, session_id=session_id, type="session.checkpoint",
                         payload={"sequence": added.sequence, **payload}, created_at=added.created_at)
    events.publish_many_on_commit(
        [events.session_group(session_id), events.ALL_SESSIONS_GROUP], [event_message(event, added.reference)],
    )
    return Checkpoint(id=added.checkpoint_id, session_id=session_id, sequence=added.sequence, data=data,
                      opencode_message_id=opencode_message_id, git_ref=git_ref, created_at=added.created_at)


def session_restore_checkpoint(*, session: CodingSession, sequence: int, actor: Actor | None = None) -> CodingSession:
    """Make checkpoint `sequence` the point the next run resumes from.

    Allowed while nothing runs (pending, paused, failed, timeout, stopped,
    orphaned); the execution engine restores the workspace (git ref) and the
    OpenCode conversation (message id) when it next runs the session.
    """
    actor = as_actor(actor)
    with transaction.atomic():
        locked = lock_session(session.pk)
        if locked.status not in RESTORE_STATES:
            raise Conflict(
                f"A checkpoint can be restored only while the session is not running; "
                f"{locked.reference} is {locked.status}",
                details={"current": locked.status, "allowed_states": sorted(RESTORE_STATES)},
            )
        checkpoint = Checkpoint.objects.filter(session=locked, sequence=sequence).first()
        if checkpoint is None:
            raise NotFound(
                f"{locked.reference} has no checkpoint {sequence}",
                details={"sequence": sequence},
            )
        locked.resume_checkpoint = checkpoint
        locked.updated_at = timezone.now()
        locked.save(update_fields=["resume_checkpoint", "updated_at"])
        write_event(
            locked,
            "session.checkpoint_restored",
            {"sequence": sequence, "git_ref": checkpoint.git_ref, "actor": actor_payload(actor)},
        )
    return locked
