"""Every write to a session's plan: supplied at creation, proposed by the engine, reviewed by a person.

A plan is checked (tasks.plans) before anything is written: a plan with findings writes nothing and
raises PlanRefused (400 naming each finding with its task keys). A sound plan becomes a new
SessionPlan version (the JSON as submitted) and the session's task graph (tasks.planning), and its
steps are session events: plan.proposed, plan.checked, plan.adjusted (when the overlap check ordered
tasks), plan.approved, plan.sent_back.

Review: with `plan_approval` required, a proposed plan pauses its running session with the typed
reason `plan_review` (`metadata["paused_reason"]`, beside the pause transition whose reason says the
same). While it waits there the plan can be replaced (re-checked), approved (the session resumes
through session_resume and the engine runs the graph) or sent back with a comment (the comment is
kept on the version with `revision_requested`; the session resumes and the engine's next planning
turn reads it, see plan_revision_pending in selectors). Anything else while not in review: 409.
"""

from pathlib import Path

from django.db import transaction
from django.utils import timezone

from orchestrator.errors import Conflict, NotFound, ValidationFailed
from sessions import services as session_services
from sessions.models import CodingSession, SessionStatus
from sessions.planning.options import metadata_with, options_of, parse_options
from sessions.services import Actor, as_actor
from tasks.models import PlanStatus, SessionPlan
from tasks.planning import plan_record_version, plan_store_graph
from tasks.plans import CheckedPlan, check_plan, schedule

S = SessionStatus
PAUSED_REASON = "paused_reason"
PLAN_REVIEW = "plan_review"
COMMENT_MAX = 4_000
RUNNING_STATES = (S.RUNNING, S.DEGRADED)


class PlanRefused(ValidationFailed):
    """A plan with findings. `details` maps each finding's field (`plan.tasks[1].after`) to its
    messages, and `details["findings"]` lists them whole ({code, message, tasks, field})."""

    code = "plan_invalid"

    def __init__(self, findings, *, prefix="plan"):
        errors = {}
        for finding in findings:
            name = f"{prefix}.{finding.field}" if finding.field else prefix
            errors.setdefault(name, []).append(finding.message)
        summary = "; ".join(
            (f"[{', '.join(finding.tasks)}] " if finding.tasks else "") + finding.message for finding in findings
        )
        super().__init__(f"The plan was refused: {summary}", errors=errors)
        self.details["findings"] = [finding.as_dict() for finding in findings]
        self.findings = list(findings)


# --- helpers -------------------------------------------------------------------------------


def repository_path(repository: str) -> Path | None:
    """The repository as a directory to check plan files against (symbolic links), when it exists here."""
    if not isinstance(repository, str) or not repository.strip():
        return None
    path = Path(repository.strip())
    return path if path.is_dir() else None


def checked_or_refused(plan, *, repository: str, prefix: str = "plan") -> CheckedPlan:
    """check_plan, raising PlanRefused when it has findings."""
    checked = check_plan(plan, repository=repository_path(repository))
    if not checked.ok:
        raise PlanRefused(checked.findings, prefix=prefix)
    return checked


def _lock(session: CodingSession) -> CodingSession:
    session_id = session.pk
    found = CodingSession.objects.select_for_update().filter(pk=session_id, deleted_at__isnull=True).first()
    if found is None:
        raise NotFound(f"Session {session_id} does not exist", details={"id": session_id})
    return found


def _current(session) -> SessionPlan | None:
    return SessionPlan.objects.filter(session=session).order_by("-version").first()


def _actor_payload(actor: Actor) -> dict:
    return {"kind": actor.kind, "label": actor.label}


def _check_events(row: SessionPlan, checked: CheckedPlan, actor: Actor) -> list:
    analysis = schedule(checked)
    entries = [
        ("plan.proposed", {"version": row.version, "source": row.source, "tasks": [t.key for t in checked.tasks],
                           "summary": checked.summary, "actor": _actor_payload(actor)}),
        ("plan.checked", {"version": row.version, "ok": True, "findings": [],
                          "adjustments": len(checked.adjustments), "critical_path": analysis.critical_path,
                          "total_expected_hours": round(analysis.total_expected_hours, 6)}),
    ]
    if checked.adjustments:
        entries.append(("plan.adjusted", {"version": row.version,
                                          "adjustments": [a.as_dict() for a in checked.adjustments]}))
    return entries


def _store(session, plan, checked, *, source, status, actor) -> tuple:
    """A new version and the task graph; returns (row, event entries). Caller holds the session lock."""
    row = plan_record_version(session=session, submitted=plan, checked=checked, source=source, status=status,
                              actor_label=actor.label)
    plan_store_graph(session=session, checked=checked)
    entries = _check_events(row, checked, actor)
    if status == PlanStatus.APPROVED:
        row.decided_by, row.decided_at = actor.label, timezone.now()
        row.save(update_fields=["decided_by", "decided_at"])
        entries.append(("plan.approved", {"version": row.version, "automatic": True, "actor": _actor_payload(actor)}))
    return row, entries


def _set_paused_reason(session_id, metadata, reason):
    metadata = dict(metadata or {})
    if reason is None:
        metadata.pop(PAUSED_REASON, None)
    else:
        metadata[PAUSED_REASON] = reason
    CodingSession.objects.filter(pk=session_id).update(metadata=metadata)
    return metadata


def waits_in_review(session: CodingSession) -> bool:
    return session.status == S.PAUSED and (session.metadata or {}).get(PAUSED_REASON) == PLAN_REVIEW


def _require_review(locked) -> SessionPlan:
    if not waits_in_review(locked):
        reason = (locked.metadata or {}).get(PAUSED_REASON) if locked.status == S.PAUSED else None
        state = f"{locked.status} ({reason})" if reason else locked.status
        raise Conflict(
            f"The plan of {locked.reference} can be changed only while the session waits in plan_review "
            f"(paused for plan review); it is {state}",
            details={"current": locked.status, "paused_reason": reason, "allowed_states": ["paused: plan_review"]},
        )
    current = _current(locked)
    if current is None or current.status != PlanStatus.PROPOSED:
        raise Conflict(f"{locked.reference} has no proposed plan to review",
                       details={"plan_status": current.status if current else None, "allowed_states": ["proposed"]})
    return current


def _pause_for_review(locked, row, actor):
    paused = session_services.session_pause(session=locked, actor=actor, reason=PLAN_REVIEW)
    paused.metadata = _set_paused_reason(locked.pk, paused.metadata, PLAN_REVIEW)
    return paused


# --- creation --------------------------------------------------------------------------------


def session_create_planned(
    *, actor: Actor | None = None, planning: dict | None = None, plan: dict | None = None,
    metadata: dict | None = None, **fields,
) -> CodingSession:
    """session_create with planning options (stored in metadata) and, optionally, a plan.

    The options are checked first (ValidationFailed naming `planning.<field>`), then the plan
    (PlanRefused naming each finding as `plan.tasks[i]...` with its task keys). A sound plan is
    stored as version 1 (source "create") and as the session's task graph in the same transaction
    as the session: approved at once with `plan_approval` auto, otherwise proposed (the engine
    pauses the session for review when it runs it: plan_await_review).
    """
    options = parse_options(planning)
    checked = checked_or_refused(plan, repository=fields.get("repository")) if plan is not None else None
    if metadata is None or isinstance(metadata, dict):
        metadata = metadata_with(metadata, options)
    actor = as_actor(actor)
    with transaction.atomic():
        session = session_services.session_create(actor=actor, metadata=metadata, **fields)
        if checked is not None:
            status = PlanStatus.APPROVED if options.plan_approval == "auto" else PlanStatus.PROPOSED
            _row, entries = _store(session, plan, checked, source="create", status=status, actor=actor)
            session_services.session_record_events(session=session, entries=entries)
    return session


# --- the engine's hooks ------------------------------------------------------------------------


def plan_propose(
    *, session: CodingSession, plan: dict, source: str = "planner", actor: Actor | None = None
) -> SessionPlan:
    """A plan for a running session (the planner's answer, a template's): check, store, and either
    approve it (plan_approval auto) or pause the session in plan_review (required).

    Raises PlanRefused with the findings, writing nothing (the engine's repair turn quotes them; see
    plan_record_refused). Refused with Conflict unless the session is running or degraded.
    """
    actor = as_actor(actor)
    with transaction.atomic():
        locked = _lock(session)
        if locked.status not in RUNNING_STATES:
            raise Conflict(f"A plan is proposed while the session runs; {locked.reference} is {locked.status}",
                           details={"current": locked.status, "allowed_states": list(RUNNING_STATES)})
        checked = checked_or_refused(plan, repository=locked.repository)
        current = _current(locked)
        if current is not None and (current.status == PlanStatus.PROPOSED or current.revision_requested):
            if current.status == PlanStatus.PROPOSED:
                current.status = PlanStatus.SUPERSEDED
            current.revision_requested = False
            current.save(update_fields=["status", "revision_requested"])
        options = options_of(locked.metadata)
        status = PlanStatus.APPROVED if options.plan_approval == "auto" else PlanStatus.PROPOSED
        row, entries = _store(locked, plan, checked, source=source, status=status, actor=actor)
        session_services.session_record_events(session=locked, entries=entries)
        if status == PlanStatus.PROPOSED:
            _pause_for_review(locked, row, actor)
    return row


def plan_await_review(*, session: CodingSession, actor: Actor | None = None) -> CodingSession:
    """Pause a running session whose current plan is proposed (supplied at creation with approval
    required) in plan_review. Refused with Conflict when there is no proposed plan or it is not running."""
    actor = as_actor(actor)
    with transaction.atomic():
        locked = _lock(session)
        current = _current(locked)
        if current is None or current.status != PlanStatus.PROPOSED:
            raise Conflict(f"{locked.reference} has no proposed plan to review",
                           details={"plan_status": current.status if current else None})
        if locked.status not in RUNNING_STATES:
            raise Conflict(f"Only a running session pauses for plan review; {locked.reference} is {locked.status}",
                           details={"current": locked.status, "allowed_states": list(RUNNING_STATES)})
        return _pause_for_review(locked, current, actor)


def plan_record_refused(*, session: CodingSession, findings, source: str = "planner", attempt: int = 1) -> None:
    """Record a plan the checks refused (plan.checked with ok false and its findings), so the console
    shows why the planner's answer needs its repair turn."""
    session_services.session_record_events(session=session,
                                           entries=[("plan.checked", {
                                               "version": None, "ok": False, "source": source, "attempt": attempt,
                                               "findings": [finding.as_dict() for finding in findings],
                                           })])


def plan_revision_taken(*, plan: SessionPlan) -> None:
    """The engine has started the planning turn that answers a sent-back plan: it is not pending any more."""
    SessionPlan.objects.filter(pk=plan.pk).update(revision_requested=False)


# --- review ----------------------------------------------------------------------------------


def plan_replace(*, session: CodingSession, plan: dict, actor: Actor | None = None) -> SessionPlan:
    """Replace the plan of a session waiting in plan_review: re-checked, a new proposed version, and
    the pending tasks replaced in one transaction. The replaced version becomes superseded."""
    actor = as_actor(actor)
    with transaction.atomic():
        locked = _lock(session)
        current = _require_review(locked)
        checked = checked_or_refused(plan, repository=locked.repository)
        current.status = PlanStatus.SUPERSEDED
        current.save(update_fields=["status"])
        row, entries = _store(locked, plan, checked, source="api", status=PlanStatus.PROPOSED, actor=actor)
        session_services.session_record_events(session=locked, entries=entries)
    return row


def plan_approve(*, session: CodingSession, actor: Actor | None = None) -> CodingSession:
    """Approve the proposed plan of a session in plan_review; the session resumes (paused → queued)."""
    actor = as_actor(actor)
    with transaction.atomic():
        locked = _lock(session)
        current = _require_review(locked)
        current.status, current.decided_by, current.decided_at = PlanStatus.APPROVED, actor.label, timezone.now()
        current.save(update_fields=["status", "decided_by", "decided_at"])
        session_services.session_record_events(session=locked, entries=[
            ("plan.approved", {"version": current.version, "automatic": False, "actor": _actor_payload(actor)}),
        ])
        resumed = session_services.session_resume(session=locked, actor=actor, reason="plan approved")
        resumed.metadata = _set_paused_reason(locked.pk, resumed.metadata, None)
    return resumed


def plan_revise(*, session: CodingSession, comment: str, actor: Actor | None = None) -> CodingSession:
    """Send the proposed plan back with a comment; the session resumes and the engine's next
    planning turn sees the comment and the plan (plan_revision_pending)."""
    if not isinstance(comment, str) or not comment.strip():
        raise ValidationFailed(field="comment", rule="is required: say what the plan should change")
    if len(comment) > COMMENT_MAX:
        raise ValidationFailed(field="comment", rule=f"must be at most {COMMENT_MAX} characters")
    actor = as_actor(actor)
    with transaction.atomic():
        locked = _lock(session)
        current = _require_review(locked)
        current.status, current.comment, current.revision_requested = PlanStatus.SENT_BACK, comment.strip(), True
        current.decided_by, current.decided_at = actor.label, timezone.now()
        current.save(update_fields=["status", "comment", "revision_requested", "decided_by", "decided_at"])
        session_services.session_record_events(session=locked, entries=[
            ("plan.sent_back", {"version": current.version, "comment": current.comment,
                                "actor": _actor_payload(actor)}),
        ])
        resumed = session_services.session_resume(session=locked, actor=actor, reason="plan sent back")
        resumed.metadata = _set_paused_reason(locked.pk, resumed.metadata, None)
    return resumed
