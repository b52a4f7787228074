"""Creating a session and moving it through its states (the django-fsm transitions), deleting it.

Each transition service runs in one transaction with the session row locked
(`select_for_update`), asks the django-fsm transition on the model, saves only
the fields it changed, writes a `SessionTransition` audit row and a
"session.transition" `SessionEvent`, and schedules side effects (broadcast,
Celery enqueue) through `orchestrator.events`, so nothing leaves the process
unless the transaction commits.
"""

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django_fsm import can_proceed

from agents.models import Agent
from orchestrator import events
from orchestrator.errors import NotFound, TransitionRefused, ValidationFailed
from sessions import admission, rules
from sessions.jobs import execute_session
from sessions.models import WORKER_STATES, Checkpoint, CodingSession, SessionStatus, SessionTransition
from sessions.services.common import Actor, actor_payload, as_actor, lock_session
from sessions.services.event_log import write_event, write_events

S = SessionStatus


# --- creating -------------------------------------------------------------------------


def session_create(
    *,
    title: str,
    initial_prompt: str,
    repository: str,
    actor: Actor | None = None,
    description: str = "",
    session_type: str = "execution",
    priority: int | str | None = rules.PRIORITY_DEFAULT,
    model_identifier: str = "",
    max_duration_seconds: int | None = rules.DURATION_DEFAULT,
    max_retries: int | None = rules.RETRIES_DEFAULT,
    token_budget_soft: int | None = None,
    token_budget_hard: int | None = None,
    cost_budget_soft: Decimal | float | str | None = None,
    cost_budget_hard: Decimal | float | str | None = None,
    permission_policy: dict | None = None,
    parent: CodingSession | None = None,
    agent: Agent | None = None,
    tags: list[str] | None = None,
    metadata: dict | None = None,
    start: bool = False,
) -> CodingSession:
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
    created = ("session.created", {"status": session.status, "title": session.title, "actor": actor_payload(actor)})
    with transaction.atomic():
        if not start:
            session.save(force_insert=True)
            write_events(session, [created])
            return session
        # The start transition runs on the unsaved row, so the INSERT already holds the
        # queued state: one INSERT per table, no UPDATE of a row nobody else can see yet.
        step = _fsm_step(session, method="start", attempted="start", not_before=None)
        session.save(force_insert=True)
        record, started = _transition_record(session, step, attempted="start", actor=actor)
        write_events(session, [created, started])
        session_enqueue_execution(session=session)
    return session


# --- transitions ------------------------------------------------------------------------


def _refused(session: CodingSession, attempted: str, message: str | None = None) -> TransitionRefused:
    if message is None and attempted == "retry" and session.status in {S.FAILED, S.TIMEOUT, S.STOPPED, S.ORPHANED}:
        message = (
            f"Cannot retry {session.reference}: it has used {session.retry_count} of "
            f"{session.max_retries} retries"
        )
    return TransitionRefused(
        kind="session", current=session.status, attempted=attempted,
        allowed=session.allowed_actions(), message=message,
    )


def _transition(session: CodingSession, *, method: str, attempted: str, actor: Actor | None, reason: str = "",
                payload: dict | None = None, only_from: set | None = None,
                **kwargs) -> tuple[CodingSession, SessionTransition]:
    """Run one transition under the row lock; return (locked session, SessionTransition).

    `only_from` narrows the transition's sources (claim is run() from queued only).
    The caller opens the transaction.
    """
    return _apply_transition(lock_session(session.pk), method=method, attempted=attempted, actor=actor, reason=reason,
                             payload=payload, only_from=only_from, **kwargs)


@dataclass(frozen=True)
class _Step:
    """What a transition's FSM method did: where it came from, when, and which fields it set."""

    from_status: str
    now: object
    changed: tuple


def _fsm_step(
    session: CodingSession, *, method: str, attempted: str, only_from: set | None = None, **kwargs
) -> "_Step":
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


def _transition_record(session: CodingSession, step: "_Step", *, attempted: str, actor: Actor | None, reason: str = "",
                       payload: dict | None = None) -> tuple[SessionTransition, tuple[str, dict]]:
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
            "actor": actor_payload(actor),
            "reason": reason or "",
            "transition_id": record.pk,
            **(payload or {}),
        },
    )
    return record, event


def _apply_transition(locked: CodingSession, *, method: str, attempted: str, actor: Actor | None, reason: str = "",
                      payload: dict | None = None, only_from: set | None = None,
                      **kwargs) -> tuple[CodingSession, SessionTransition]:
    """The body of _transition, for a row the caller has locked:
    the FSM method, the row update, the audit row and the event."""
    step = _fsm_step(locked, method=method, attempted=attempted, only_from=only_from, **kwargs)
    locked.save(update_fields=sorted({"status", "updated_at", *step.changed}))
    record, event = _transition_record(locked, step, attempted=attempted, actor=actor, reason=reason,
                                       payload=payload)
    write_events(locked, [event])
    return locked, record


def session_enqueue_execution(*, session: CodingSession, countdown: float | None = None) -> None:
    """Enqueue `execute_session` for `session` on the queue of its priority once the transaction
    commits (after `countdown` seconds when given). Enqueuing twice is harmless: one claim wins."""
    events.enqueue_on_commit(
        execute_session,
        kwargs={"session_id": session.pk},
        queue=settings.SESSION_QUEUES[session.priority],
        countdown=countdown,
    )


def session_start(
    *, session: CodingSession, actor: Actor | None = None, reason: str = "", immediate: bool = False,
    worker_id: str | None = None, countdown: float | None = None,
) -> CodingSession:
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
            session_enqueue_execution(session=locked, countdown=countdown)
    return locked


def session_claim(*, session_id: int, worker_id: str) -> CodingSession | None:
    """queued -> running for `worker_id`; None when the session is not queued (already
    claimed, cancelled, deleted or gone), so a second delivery of the job does nothing."""
    try:
        with transaction.atomic():
            return _apply_transition(
                lock_session(session_id), method="run", attempted="claim", actor=Actor.worker(worker_id),
                only_from={S.QUEUED}, worker_id=worker_id,
            )[0]
    except (NotFound, TransitionRefused):
        return None


def session_pause(*, session: CodingSession, actor: Actor | None = None, reason: str = "") -> CodingSession:
    """running or degraded -> paused; the clock stops. The running worker sees the
    transition event (or the status) and suspends the OpenCode run."""
    with transaction.atomic():
        return _transition(session, method="pause", attempted="pause", actor=actor, reason=reason)[0]


def session_resume(
    *, session: CodingSession, actor: Actor | None = None, reason: str = "", immediate: bool = False,
    worker_id: str | None = None,
) -> CodingSession:
    """paused -> queued and re-enqueue; with `immediate`, paused -> running for `worker_id`."""
    with transaction.atomic():
        if immediate:
            return _transition(
                session, method="run", attempted="resume", actor=actor or Actor.worker(worker_id),
                reason=reason, only_from={S.PAUSED}, worker_id=worker_id,
            )[0]
        locked, _ = _transition(session, method="resume", attempted="resume", actor=actor, reason=reason)
        session_enqueue_execution(session=locked)
    return locked


def session_stop(*, session: CodingSession, actor: Actor | None = None, reason: str = "") -> CodingSession:
    """running, degraded or paused -> stopped (recoverable by retry)."""
    with transaction.atomic():
        return _transition(session, method="stop", attempted="stop", actor=actor, reason=reason)[0]


def session_cancel(*, session: CodingSession, actor: Actor | None = None, reason: str = "") -> CodingSession:
    """pending, queued or paused -> cancelled (terminal). A queued job then finds
    nothing to claim."""
    with transaction.atomic():
        return _transition(session, method="cancel", attempted="cancel", actor=actor, reason=reason)[0]


def session_complete(
    *, session: CodingSession, actor: Actor | None = None, reason: str = "", result: dict | None = None,
    partial: bool = False,
) -> CodingSession:
    """running or degraded -> completed, or partially_completed with `partial`."""
    if result is not None and not isinstance(result, dict):
        raise ValidationFailed(field="result", rule="must be an object")
    method = "complete_partially" if partial else "complete"
    with transaction.atomic():
        return _transition(
            session, method=method, attempted=method, actor=actor, reason=reason, result=result
        )[0]


def _error_value(error: dict | None, reason: str, default_type: str) -> dict:
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


def session_fail(
    *, session: CodingSession, actor: Actor | None = None, reason: str = "", error: dict | None = None,
) -> CodingSession:
    """pending, queued, running or degraded -> failed, recording `error` {type, message, context}."""
    error = _error_value(error, reason, "failure")
    with transaction.atomic():
        return _transition(
            session, method="fail", attempted="fail", actor=actor, reason=reason or error["message"],
            error=error, payload={"error": error},
        )[0]


def session_timeout(
    *, session: CodingSession, actor: Actor | None = None, reason: str = "", error: dict | None = None,
) -> CodingSession:
    """running or degraded -> timeout: the deadline (max_duration_seconds) passed."""
    error = _error_value(error, reason or "deadline passed", "timeout")
    with transaction.atomic():
        return _transition(
            session, method="time_out", attempted="time_out", actor=actor, reason=reason or error["message"],
            error=error, payload={"error": error},
        )[0]


def session_orphan(
    *, session: CodingSession, actor: Actor | None = None, reason: str = "", error: dict | None = None,
) -> CodingSession:
    """running or degraded -> orphaned: its worker died and the run could not be re-attached."""
    error = _error_value(error, reason or "worker lost", "worker_lost")
    with transaction.atomic():
        return _transition(
            session, method="orphan", attempted="orphan", actor=actor, reason=reason or error["message"],
            error=error, payload={"error": error},
        )[0]


def session_degrade(*, session: CodingSession, actor: Actor | None = None, reason: str = "") -> CodingSession:
    """running -> degraded: provider retrying, stream silent or a permission request waiting."""
    with transaction.atomic():
        return _transition(session, method="degrade", attempted="degrade", actor=actor, reason=reason)[0]


def session_recover(*, session: CodingSession, actor: Actor | None = None, reason: str = "") -> CodingSession:
    """degraded -> running: progress resumed."""
    with transaction.atomic():
        return _transition(session, method="recover", attempted="recover", actor=actor, reason=reason)[0]


def session_retry(*, session: CodingSession, actor: Actor | None = None, reason: str = "") -> CodingSession:
    """failed, timeout, stopped or orphaned -> pending when retry_count < max_retries.

    Increments retry_count and sets the resume point to the latest retained
    checkpoint (none when the session has no checkpoint). Starting the retried
    session is a separate session_start (with a countdown for automatic retries,
    see `sessions.recovery.retry_delay_seconds`).
    """
    with transaction.atomic():
        latest = Checkpoint.objects.filter(session_id=session.pk).order_by("-sequence").first()
        return _transition(
            session, method="retry", attempted="retry", actor=actor, reason=reason,
            resume_checkpoint=latest,
            payload={"resume_checkpoint": latest.sequence if latest else None},
        )[0]


# --- deleting -----------------------------------------------------------------------------


def session_delete(*, session: CodingSession, actor: Actor | None = None) -> CodingSession:
    """Soft delete: the session disappears from lists and the API, its rows stay.

    Refused while a worker has it (queued, running, degraded): stop or cancel first.
    """
    actor = as_actor(actor)
    with transaction.atomic():
        locked = lock_session(session.pk)
        if locked.status in WORKER_STATES:
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
        write_event(locked, "session.deleted", {"actor": actor_payload(actor)})
    return locked


def session_budget_soft_pause(
    *, session: CodingSession, actor: Actor | None = None, tokens: int, cost: Decimal,
) -> CodingSession:
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
