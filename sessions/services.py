"""Every write to a coding session, its checkpoints and its event log.

Each transition service runs in one transaction with the session row locked
(`select_for_update`), asks the django-fsm transition on the model, saves only
the fields it changed, writes a `SessionTransition` audit row and a
"session.transition" `SessionEvent`, and schedules side effects (broadcast,
Celery enqueue) through `orchestrator.events`, so nothing leaves the process
unless the transaction commits.

`session` arguments accept a `CodingSession` or its id; the services re-read
the row under the lock and return that fresh instance.
"""

from dataclasses import dataclass
from datetime import timedelta
import json
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from django_fsm import can_proceed

from orchestrator import events
from orchestrator.errors import Conflict, NotFound, PermissionRefused, TransitionRefused, ValidationFailed
from orchestrator.roles import user_can_view
from sessions import admission, rules
from sessions.models import (
    ACTIVE_STATES,
    CHECKPOINTS_RETAINED,
    ActorKind,
    Checkpoint,
    CodingSession,
    SessionEvent,
    SessionStatus,
    SessionTransition,
)

S = SessionStatus

CHECKPOINT_STATES = frozenset({S.RUNNING, S.DEGRADED, S.PAUSED})
RESTORE_STATES = frozenset({S.PENDING, S.PAUSED, S.FAILED, S.TIMEOUT, S.STOPPED, S.ORPHANED})
RUNTIME_FIELDS = frozenset({"opencode_session_id", "opencode_server_url", "workspace_path", "branch_name"})


@dataclass(frozen=True)
class Actor:
    """Who drives a transition: a user, a worker (by id) or the system."""

    kind: str
    user: object = None
    label: str = ""

    @classmethod
    def of_user(cls, user):
        return cls(kind=ActorKind.USER, user=user, label=user.get_username())

    @classmethod
    def worker(cls, worker_id):
        return cls(kind=ActorKind.WORKER, label=str(worker_id))

    @classmethod
    def system(cls, label="system"):
        return cls(kind=ActorKind.SYSTEM, label=label)


def as_actor(actor):
    """Accept an Actor, a user, or None (the system)."""
    if actor is None:
        return Actor.system()
    if isinstance(actor, Actor):
        return actor
    if getattr(actor, "is_authenticated", False):
        return Actor.of_user(actor)
    raise TypeError(f"not an actor: {actor!r}")


def _pk(session):
    return session.pk if isinstance(session, CodingSession) else int(session)


def _lock(session, *, include_deleted=False, fields=None):
    """The session row, locked until the surrounding transaction ends; NotFound if absent or deleted.

    `fields` loads only those columns (the frequent writers of a running session, events and
    checkpoints, need a few; the whole row carries the prompt and the JSON columns)."""
    queryset = CodingSession.objects.select_for_update()
    if fields:
        queryset = queryset.only(*fields)
    if not include_deleted:
        queryset = queryset.filter(deleted_at__isnull=True)
    found = queryset.filter(pk=_pk(session)).first()
    if found is None:
        raise NotFound(f"Session {_pk(session)} does not exist", details={"id": _pk(session)})
    return found


# --- reading with permission ------------------------------------------------------


def session_get_for_user(user, session_id, for_update=False):
    """The session `session_id` as `user` may see it.

    Raises PermissionRefused for a user who may not view sessions and NotFound
    for an unknown or deleted session. With `for_update` the row is locked, so
    the caller must be inside a transaction.
    """
    if not user_can_view(user):
        raise PermissionRefused("Sign in to see sessions")
    try:
        session_id = int(session_id)
    except (TypeError, ValueError):
        raise NotFound(f"Session {session_id} does not exist") from None
    queryset = CodingSession.objects.select_related("agent", "created_by").filter(deleted_at__isnull=True)
    if for_update:
        queryset = queryset.select_for_update(of=("self",))
    found = queryset.filter(pk=session_id).first()
    if found is None:
        raise NotFound(f"Session {session_id} does not exist", details={"id": session_id})
    return found


# --- events ------------------------------------------------------------------------


def event_message(event, reference):
    """The channel-layer message for one SessionEvent (also the shape WebSocket clients receive)."""
    return {
        "type": "session.event",
        "event": {
            "id": event.id,
            "session_id": event.session_id,
            "reference": reference,
            "type": event.type,
            "payload": event.payload,
            "created_at": event.created_at.isoformat(),
        },
    }


def _write_event(session, type, payload):
    """Append one event and publish it after commit (see _write_events)."""
    return _write_events(session, [(type, payload)])[0]


def _write_events(session, entries):
    """Append events [(type, payload)] in order and publish them after commit, in that order.

    The caller holds the session row lock, which keeps event ids in commit order within a
    session, so a client resuming after id N never misses an event committed later with a
    smaller id. One INSERT and one broadcast task for the lot.
    """
    rows = SessionEvent.objects.bulk_create(
        [SessionEvent(session=session, type=type, payload=payload) for type, payload in entries]
    )
    events.publish_many_on_commit(
        [events.session_group(session.pk), events.ALL_SESSIONS_GROUP],
        [event_message(row, session.reference) for row in rows],
    )
    return rows


def session_record_event(*, session, type, payload=None):
    """Append an event to the session's log and publish it to the session's group
    and the all-sessions group once the transaction commits."""
    return session_record_events(session=session, entries=[(type, payload)])[0]


def session_record_events(*, session, entries):
    """Append several events [(type, payload)] in order, under one lock, in one transaction."""
    for type, _ in entries:
        if not type or len(type) > 100:
            raise ValidationFailed(field="type", rule="must be 1-100 characters")
    entries = [(type, payload or {}) for type, payload in entries]
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        return _write_events_in_one_statement(_pk(session), entries)
    with transaction.atomic():
        locked = _lock(session, include_deleted=True, fields=("id", "reference"))
        return _write_events(locked, entries)


# The running session's event writes, as one statement: lock the session row, insert the events in
# order, read the reference for the broadcast. A worker records ~20 batches per task; as a
# transaction (BEGIN, SELECT ... FOR UPDATE, INSERT, COMMIT) each cost four round trips and two
# ORM queries built in Python, the largest share of a worker's CPU per session after OpenCode's.
# The lock is taken before the ids are drawn, so ids still follow commit order within a session.
_EVENTS_INSERT = """
WITH locked AS (
    SELECT id, reference FROM {sessions} WHERE id = %s FOR UPDATE
), inserted AS (
    INSERT INTO {events} (session_id, type, payload, created_at)
    SELECT locked.id, entry.type, entry.payload, %s
    FROM locked, unnest(%s::varchar[], %s::jsonb[]) WITH ORDINALITY AS entry(type, payload, position)
    ORDER BY entry.position
    RETURNING id
)
SELECT inserted.id, locked.reference FROM inserted, locked ORDER BY inserted.id
""".format(sessions=CodingSession._meta.db_table, events=SessionEvent._meta.db_table)


def _write_events_in_one_statement(session_id, entries):
    """session_record_events outside a transaction on PostgreSQL (see _EVENTS_INSERT)."""
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(_EVENTS_INSERT, [session_id, now, [type for type, _ in entries],
                                        [json.dumps(payload) for _, payload in entries]])
        inserted = cursor.fetchall()
    if not inserted:
        raise NotFound(f"Session {session_id} does not exist", details={"id": session_id})
    rows = [SessionEvent(id=event_id, session_id=session_id, type=type, payload=payload, created_at=now)
            for (event_id, _), (type, payload) in zip(inserted, entries)]
    reference = inserted[0][1]
    events.publish_many_on_commit(
        [events.session_group(session_id), events.ALL_SESSIONS_GROUP],
        [event_message(row, reference) for row in rows],
    )
    return rows


# --- creating -------------------------------------------------------------------------


def session_create(
    *,
    title,
    initial_prompt,
    repository,
    actor=None,
    description="",
    session_type="execution",
    priority=rules.PRIORITY_DEFAULT,
    model_identifier="",
    max_duration_seconds=rules.DURATION_DEFAULT,
    max_retries=rules.RETRIES_DEFAULT,
    token_budget_soft=None,
    token_budget_hard=None,
    cost_budget_soft=None,
    cost_budget_hard=None,
    permission_policy=None,
    parent=None,
    agent=None,
    tags=None,
    metadata=None,
    start=False,
):
    """Validate and create a pending session with its IND-nnnnnn reference; with `start`,
    also start it (pending -> queued, job enqueued) in the same transaction.

    The reference derives from the primary key, so concurrent creates never
    collide. Raises ValidationFailed naming each field and the rule it broke.
    Creating and starting at once is one commit instead of two and needs no row
    lock (nobody else can see the row before it commits); the audit trail is the
    same as session_create followed by session_start.
    """
    data = {
        "title": title, "initial_prompt": initial_prompt, "repository": repository,
        "description": description, "session_type": session_type, "priority": priority,
        "model_identifier": model_identifier, "max_duration_seconds": max_duration_seconds,
        "max_retries": max_retries, "token_budget_soft": token_budget_soft,
        "token_budget_hard": token_budget_hard, "cost_budget_soft": cost_budget_soft,
        "cost_budget_hard": cost_budget_hard, "permission_policy": permission_policy,
        "tags": tags, "metadata": metadata,
    }
    errors = rules.validate_session_input(data)
    if parent is not None and parent.deleted_at is not None:
        errors.setdefault("parent", []).append("does not exist")
    if errors:
        raise ValidationFailed(errors=errors)
    actor = as_actor(actor)
    admission.session_cap_check(user=actor.user)
    session = CodingSession(
        title=title.strip(),
        initial_prompt=initial_prompt,
        repository=repository.strip(),
        description=description or "",
        session_type=session_type or "execution",
        priority=rules.parse_priority(rules.PRIORITY_DEFAULT if priority is None else priority),
        model_identifier=model_identifier or "",
        max_duration_seconds=rules.DURATION_DEFAULT if max_duration_seconds is None else max_duration_seconds,
        max_retries=rules.RETRIES_DEFAULT if max_retries is None else max_retries,
        token_budget_soft=token_budget_soft,
        token_budget_hard=token_budget_hard,
        cost_budget_soft=None if cost_budget_soft is None else Decimal(str(cost_budget_soft)),
        cost_budget_hard=None if cost_budget_hard is None else Decimal(str(cost_budget_hard)),
        permission_policy=permission_policy or {},
        parent=parent,
        agent=agent,
        tags=rules.normalize_tags(tags),
        metadata=metadata or {},
        created_by=actor.user,
    )
    created = ("session.created", {"status": session.status, "title": session.title, "actor": _actor_payload(actor)})
    with transaction.atomic():
        if not start:
            session.save(force_insert=True)
            _write_events(session, [created])
            return session
        # The start transition runs on the unsaved row, so the INSERT already holds the
        # queued state: one INSERT per table, no UPDATE of a row nobody else can see yet.
        step = _fsm_step(session, method="start", attempted="start", not_before=None)
        session.save(force_insert=True)
        record, started = _transition_record(session, step, attempted="start", actor=actor)
        _write_events(session, [created, started])
        _enqueue_execution(session)
    return session


# --- transitions ------------------------------------------------------------------------


def _actor_payload(actor):
    return {"kind": actor.kind, "label": actor.label}


def _refused(session, attempted, message=None):
    if message is None and attempted == "retry" and session.status in {S.FAILED, S.TIMEOUT, S.STOPPED, S.ORPHANED}:
        message = (
            f"Cannot retry {session.reference}: it has used {session.retry_count} of "
            f"{session.max_retries} retries"
        )
    return TransitionRefused(
        kind="session", current=session.status, attempted=attempted,
        allowed=session.allowed_actions(), message=message,
    )


def _transition(session, *, method, attempted, actor, reason="", payload=None, only_from=None, **kwargs):
    """Run one transition under the row lock; return (locked session, SessionTransition).

    `only_from` narrows the transition's sources (claim is run() from queued only).
    The caller opens the transaction.
    """
    return _apply_transition(_lock(session), method=method, attempted=attempted, actor=actor, reason=reason,
                             payload=payload, only_from=only_from, **kwargs)


@dataclass(frozen=True)
class _Step:
    """What a transition's FSM method did: where it came from, when, and which fields it set."""

    from_status: str
    now: object
    changed: tuple


def _fsm_step(session, *, method, attempted, only_from=None, **kwargs):
    """Run the django-fsm transition `method` on the instance (no database write yet);
    TransitionRefused when the FSM (or `only_from`) does not allow it."""
    bound = getattr(session, method)
    if not can_proceed(bound) or (only_from is not None and session.status not in only_from):
        raise _refused(session, attempted)
    from_status = session.status
    now = timezone.now()
    changed = bound(now=now, **kwargs) or []
    session.updated_at = now
    return _Step(from_status=from_status, now=now, changed=tuple(changed))


def _transition_record(session, step, *, attempted, actor, reason="", payload=None):
    """Write the SessionTransition audit row of `step`; return it with its event entry (type, payload)."""
    actor = as_actor(actor)
    record = SessionTransition.objects.create(
        session=session,
        from_status=step.from_status,
        to_status=session.status,
        action=attempted,
        actor_kind=actor.kind,
        actor_user=actor.user,
        actor_label=actor.label,
        reason=reason or "",
        created_at=step.now,
    )
    event = (
        "session.transition",
        {
            "from": step.from_status,
            "to": session.status,
            "action": attempted,
            "actor": _actor_payload(actor),
            "reason": reason or "",
            "transition_id": record.pk,
            **(payload or {}),
        },
    )
    return record, event


def _apply_transition(locked, *, method, attempted, actor, reason="", payload=None, only_from=None, **kwargs):
    """The body of _transition, for a row the caller has locked:
    the FSM method, the row update, the audit row and the event."""
    step = _fsm_step(locked, method=method, attempted=attempted, only_from=only_from, **kwargs)
    locked.save(update_fields=sorted({"status", "updated_at", *step.changed}))
    record, event = _transition_record(locked, step, attempted=attempted, actor=actor, reason=reason,
                                       payload=payload)
    _write_events(locked, [event])
    return locked, record


def _enqueue_execution(session, *, countdown=None):
    from sessions.jobs import execute_session

    events.enqueue_on_commit(
        execute_session,
        kwargs={"session_id": session.pk},
        queue=settings.SESSION_QUEUES[session.priority],
        countdown=countdown,
    )


def session_start(*, session, actor=None, reason="", immediate=False, worker_id=None, countdown=None):
    """pending -> queued, and enqueue `execute_session` on the queue for its priority
    once committed (after `countdown` seconds when given).

    With `immediate`, pending -> running instead: the caller is the worker
    (`worker_id`) that runs the session now, so nothing is enqueued.
    """
    with transaction.atomic():
        if immediate:
            locked, _ = _transition(
                session, method="run", attempted="start", actor=actor or Actor.worker(worker_id),
                reason=reason, only_from={S.PENDING}, worker_id=worker_id,
            )
        else:
            not_before = timezone.now() + timedelta(seconds=countdown) if countdown else None
            locked, _ = _transition(
                session, method="start", attempted="start", actor=actor, reason=reason, not_before=not_before
            )
            _enqueue_execution(locked, countdown=countdown)
    return locked


def session_claim(*, session_id, worker_id):
    """queued -> running for `worker_id`; None when the session is not queued (already
    claimed, cancelled, deleted or gone), so a second delivery of the job does nothing."""
    try:
        with transaction.atomic():
            return _transition(
                session_id, method="run", attempted="claim", actor=Actor.worker(worker_id),
                only_from={S.QUEUED}, worker_id=worker_id,
            )[0]
    except (NotFound, TransitionRefused):
        return None


def session_pause(*, session, actor=None, reason=""):
    """running or degraded -> paused; the clock stops. The running worker sees the
    transition event (or the status) and suspends the OpenCode run."""
    with transaction.atomic():
        return _transition(session, method="pause", attempted="pause", actor=actor, reason=reason)[0]


def session_resume(*, session, actor=None, reason="", immediate=False, worker_id=None):
    """paused -> queued and re-enqueue; with `immediate`, paused -> running for `worker_id`."""
    with transaction.atomic():
        if immediate:
            return _transition(
                session, method="run", attempted="resume", actor=actor or Actor.worker(worker_id),
                reason=reason, only_from={S.PAUSED}, worker_id=worker_id,
            )[0]
        locked, _ = _transition(session, method="resume", attempted="resume", actor=actor, reason=reason)
        _enqueue_execution(locked)
    return locked


def session_stop(*, session, actor=None, reason=""):
    """running, degraded or paused -> stopped (recoverable by retry)."""
    with transaction.atomic():
        return _transition(session, method="stop", attempted="stop", actor=actor, reason=reason)[0]


def session_cancel(*, session, actor=None, reason=""):
    """pending, queued or paused -> cancelled (terminal). A queued job then finds
    nothing to claim."""
    with transaction.atomic():
        return _transition(session, method="cancel", attempted="cancel", actor=actor, reason=reason)[0]


def session_complete(*, session, actor=None, reason="", result=None, partial=False):
    """running or degraded -> completed, or partially_completed with `partial`."""
    if result is not None and not isinstance(result, dict):
        raise ValidationFailed(field="result", rule="must be an object")
    method = "complete_partially" if partial else "complete"
    with transaction.atomic():
        return _transition(
            session, method=method, attempted=method, actor=actor, reason=reason, result=result
        )[0]


def _error_value(error, reason, default_type):
    """Normalise an error to {"type", "message", "context"}; ValidationFailed names the rule."""
    if error is None:
        return {"type": default_type, "message": reason or default_type, "context": {}}
    if not isinstance(error, dict):
        raise ValidationFailed(field="error", rule="must be an object with type, message and context")
    unknown = set(error) - {"type", "message", "context"}
    if unknown:
        raise ValidationFailed(field="error", rule=f"unknown keys: {', '.join(sorted(unknown))}")
    context = error.get("context") or {}
    if not isinstance(context, dict):
        raise ValidationFailed(field="error.context", rule="must be an object")
    return {
        "type": str(error.get("type") or default_type),
        "message": str(error.get("message") or reason or default_type),
        "context": context,
    }


def session_fail(*, session, actor=None, reason="", error=None):
    """pending, queued, running or degraded -> failed, recording `error` {type, message, context}."""
    error = _error_value(error, reason, "failure")
    with transaction.atomic():
        return _transition(
            session, method="fail", attempted="fail", actor=actor, reason=reason or error["message"],
            error=error, payload={"error": error},
        )[0]


def session_timeout(*, session, actor=None, reason="", error=None):
    """running or degraded -> timeout: the deadline (max_duration_seconds) passed."""
    error = _error_value(error, reason or "deadline passed", "timeout")
    with transaction.atomic():
        return _transition(
            session, method="time_out", attempted="time_out", actor=actor, reason=reason or error["message"],
            error=error, payload={"error": error},
        )[0]


def session_orphan(*, session, actor=None, reason="", error=None):
    """running or degraded -> orphaned: its worker died and the run could not be re-attached."""
    error = _error_value(error, reason or "worker lost", "worker_lost")
    with transaction.atomic():
        return _transition(
            session, method="orphan", attempted="orphan", actor=actor, reason=reason or error["message"],
            error=error, payload={"error": error},
        )[0]


def session_degrade(*, session, actor=None, reason=""):
    """running -> degraded: provider retrying, stream silent or a permission request waiting."""
    with transaction.atomic():
        return _transition(session, method="degrade", attempted="degrade", actor=actor, reason=reason)[0]


def session_recover(*, session, actor=None, reason=""):
    """degraded -> running: progress resumed."""
    with transaction.atomic():
        return _transition(session, method="recover", attempted="recover", actor=actor, reason=reason)[0]


def session_retry(*, session, actor=None, reason=""):
    """failed, timeout, stopped or orphaned -> pending when retry_count < max_retries.

    Increments retry_count and sets the resume point to the latest retained
    checkpoint (none when the session has no checkpoint). Starting the retried
    session is a separate session_start (with a countdown for automatic retries,
    see `sessions.health.retry_delay_seconds`).
    """
    with transaction.atomic():
        latest = Checkpoint.objects.filter(session_id=_pk(session)).order_by("-sequence").first()
        return _transition(
            session, method="retry", attempted="retry", actor=actor, reason=reason,
            resume_checkpoint=latest,
            payload={"resume_checkpoint": latest.sequence if latest else None},
        )[0]


# --- checkpoints ---------------------------------------------------------------------


def session_add_checkpoint(*, session, data=None, opencode_message_id="", git_ref="", actor=None):
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
            _pk(session), data=data or {}, opencode_message_id=opencode_message_id or "", git_ref=git_ref or "",
            actor=_actor_payload(as_actor(actor)),
        )
        if added is not None:
            return added
        # Not added: the session is gone, deleted or not in a checkpoint state; the way below says which.
    with transaction.atomic():
        locked = _lock(session, fields=("id", "reference", "status", "last_checkpoint_sequence", "checkpoint_count"))
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
        _write_event(
            locked,
            "session.checkpoint",
            {
                "sequence": sequence,
                "opencode_message_id": checkpoint.opencode_message_id,
                "git_ref": checkpoint.git_ref,
                "actor": _actor_payload(as_actor(actor)),
            },
        )
    return checkpoint


# A running session's step checkpoint as one statement (as its events: _EVENTS_INSERT): the UPDATE
# locks the row and draws the next sequence, then the checkpoint, the retention cut and the event
# follow from its RETURNING. As a transaction (BEGIN, SELECT ... FOR UPDATE, INSERT, UPDATE, INSERT,
# COMMIT) it cost six round trips and four ORM queries built in Python, three times per task.
# Nothing comes back when the session is not in a checkpoint state: the caller then takes the ORM way,
# which refuses with the reason.
_CHECKPOINT_INSERT = """
WITH updated AS (
    UPDATE {sessions}
    SET last_checkpoint_sequence = last_checkpoint_sequence + 1,
        checkpoint_count = LEAST(checkpoint_count + 1, %(retained)s),
        -- the time after the row lock, so checkpoint times follow their sequence as in the ORM way
        last_checkpoint_at = clock_timestamp(), updated_at = clock_timestamp(),
        -- a resume point among the checkpoints the retention cut drops goes (as SET_NULL does)
        resume_checkpoint_id = CASE
            WHEN (SELECT sequence FROM {checkpoints} WHERE id = resume_checkpoint_id)
                 <= last_checkpoint_sequence + 1 - %(retained)s THEN NULL
            ELSE resume_checkpoint_id END
    WHERE id = %(session)s AND deleted_at IS NULL AND status = ANY(%(states)s)
    RETURNING id, reference, last_checkpoint_sequence AS sequence, last_checkpoint_at AS at
), checkpoint AS (
    INSERT INTO {checkpoints} (session_id, sequence, data, opencode_message_id, git_ref, created_at)
    SELECT id, sequence, %(data)s::jsonb, %(message)s, %(git_ref)s, at FROM updated
    RETURNING id
), dropped AS (
    DELETE FROM {checkpoints} old USING updated
    WHERE old.session_id = updated.id AND old.sequence <= updated.sequence - %(retained)s
), event AS (
    INSERT INTO {events} (session_id, type, payload, created_at)
    SELECT id, 'session.checkpoint', %(payload)s::jsonb || jsonb_build_object('sequence', sequence), at
    FROM updated
    RETURNING id
)
SELECT updated.reference, updated.sequence, updated.at, checkpoint.id, event.id FROM updated, checkpoint, event
""".format(sessions=CodingSession._meta.db_table, checkpoints=Checkpoint._meta.db_table,
           events=SessionEvent._meta.db_table)


def _add_checkpoint_in_one_statement(session_id, *, data, opencode_message_id, git_ref, actor):
    """session_add_checkpoint outside a transaction on PostgreSQL (see _CHECKPOINT_INSERT); None
    when nothing was added."""
    payload = {"opencode_message_id": opencode_message_id, "git_ref": git_ref, "actor": actor}
    with connection.cursor() as cursor:
        cursor.execute(_CHECKPOINT_INSERT, {
            "session": session_id, "states": sorted(CHECKPOINT_STATES), "retained": CHECKPOINTS_RETAINED,
            "data": json.dumps(data), "message": opencode_message_id, "git_ref": git_ref,
            "payload": json.dumps(payload),
        })
        added = cursor.fetchone()
    if added is None:
        return None
    reference, sequence, now, checkpoint_id, event_id = added
    event = SessionEvent(id=event_id, session_id=session_id, type="session.checkpoint",
                         payload={"sequence": sequence, **payload}, created_at=now)
    events.publish_many_on_commit(
        [events.session_group(session_id), events.ALL_SESSIONS_GROUP], [event_message(event, reference)],
    )
    return Checkpoint(id=checkpoint_id, session_id=session_id, sequence=sequence, data=data,
                      opencode_message_id=opencode_message_id, git_ref=git_ref, created_at=now)


def session_restore_checkpoint(*, session, sequence, actor=None):
    """Make checkpoint `sequence` the point the next run resumes from.

    Allowed while nothing runs (pending, paused, failed, timeout, stopped,
    orphaned); the execution engine restores the workspace (git ref) and the
    OpenCode conversation (message id) when it next runs the session.
    """
    actor = as_actor(actor)
    with transaction.atomic():
        locked = _lock(session)
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
        _write_event(
            locked,
            "session.checkpoint_restored",
            {"sequence": sequence, "git_ref": checkpoint.git_ref, "actor": _actor_payload(actor)},
        )
    return locked


# --- deleting -----------------------------------------------------------------------------


def session_delete(*, session, actor=None):
    """Soft delete: the session disappears from lists and the API, its rows stay.

    Refused while a worker has it (queued, running, degraded): stop or cancel first.
    """
    actor = as_actor(actor)
    with transaction.atomic():
        locked = _lock(session)
        if locked.status in ACTIVE_STATES:
            raise TransitionRefused(
                kind="session", current=locked.status, attempted="delete", allowed=locked.allowed_actions(),
                message=(
                    f"Cannot delete {locked.reference} while it is {locked.status}; "
                    f"stop or cancel it first"
                ),
            )
        now = timezone.now()
        locked.deleted_at = now
        locked.updated_at = now
        locked.save(update_fields=["deleted_at", "updated_at"])
        _write_event(locked, "session.deleted", {"actor": _actor_payload(actor)})
    return locked


# --- worker bookkeeping -----------------------------------------------------------------


def session_heartbeat(*, session_ids, worker_id):
    """Record that `worker_id` still runs these sessions (one UPDATE); returns how many it still owns."""
    return CodingSession.objects.filter(
        pk__in=session_ids, worker_id=worker_id, status__in=[S.RUNNING, S.DEGRADED]
    ).update(worker_heartbeat_at=timezone.now())


def session_set_runtime(*, session_id, **values):
    """Store OpenCode bookkeeping: opencode_session_id, opencode_server_url, workspace_path, branch_name."""
    unknown = set(values) - RUNTIME_FIELDS
    if unknown:
        raise ValidationFailed(field=sorted(unknown)[0], rule="is not a runtime field")
    CodingSession.objects.filter(pk=session_id).update(**values, updated_at=timezone.now())


# A step's usage, added in one UPDATE written once: the worker records one per assistant step, and
# building the ORM's seven F() + value expressions cost ~2 ms of its Python each time.
_USAGE_UPDATE = (
    "UPDATE {sessions} SET tokens_input = tokens_input + %s, tokens_output = tokens_output + %s, "
    "tokens_reasoning = tokens_reasoning + %s, tokens_cache_read = tokens_cache_read + %s, "
    "tokens_cache_write = tokens_cache_write + %s, cost = cost + %s, api_calls = api_calls + %s, "
    "updated_at = %s WHERE id = %s"
).format(sessions=CodingSession._meta.db_table)


def session_record_usage(
    *, session_id, tokens_input=0, tokens_output=0, tokens_reasoning=0,
    tokens_cache_read=0, tokens_cache_write=0, cost=0, api_calls=0,
):
    """Add usage to the session's counters in one atomic UPDATE (no read-modify-write)."""
    ops = connection.ops
    with connection.cursor() as cursor:
        cursor.execute(_USAGE_UPDATE, [
            tokens_input, tokens_output, tokens_reasoning, tokens_cache_read, tokens_cache_write,
            ops.adapt_decimalfield_value(Decimal(str(cost))), api_calls,
            ops.adapt_datetimefield_value(timezone.now()), session_id,
        ])


def session_budget_soft_pause(*, session, actor=None, tokens, cost):
    """running or degraded -> paused because the soft budget was crossed.

    Marks the session so that, once an operator resumes it, the soft limit does
    not pause it again (the hard limit still applies).
    """
    reason = f"soft budget limit reached: {tokens} tokens, cost {cost}"
    with transaction.atomic():
        locked, _ = _transition(
            session, method="pause", attempted="pause", actor=actor, reason=reason,
            payload={"budget": {"tokens": tokens, "cost": str(cost), "limit": "soft"}},
        )
        locked.metadata = {**(locked.metadata or {}), "soft_budget_passed": True}
        locked.save(update_fields=["metadata"])
    return locked


def session_take_resume_point(*, session_id):
    """The engine has restored the resume checkpoint: clear it, so a later run does not restore it again."""
    CodingSession.objects.filter(pk=session_id).update(resume_checkpoint=None, updated_at=timezone.now())
