"""Reads of a session's plan: the current version, a pending revision, and the view the API shows."""

from sessions.models import CodingSession, SessionEvent
from sessions.planning.options import options_of
from sessions.planning.services import PAUSED_REASON, waits_in_review
from tasks.models import PlanStatus, SessionPlan, Task
from tasks.planning import PLANNING_KEY_PREFIX
from tasks.selectors import task_graph

VERSIONS_SHOWN = 50


def plan_current(*, session: CodingSession) -> SessionPlan | None:
    """The session's latest plan version, or None."""
    return SessionPlan.objects.filter(session=session).order_by("-version").first()


def plan_revision_pending(*, session: CodingSession) -> SessionPlan | None:
    """The sent-back version whose planning turn has not started yet (the engine's cue), or None."""
    current = plan_current(session=session)
    if current is not None and current.status == PlanStatus.SENT_BACK and current.revision_requested:
        return current
    return None


def _plan_payload(row: SessionPlan) -> dict:
    return {
        "version": row.version, "status": row.status, "source": row.source, "plan": row.submitted,
        "findings": row.findings, "adjustments": row.adjustments, "comment": row.comment or None,
        "revision_requested": row.revision_requested, "created_by": row.created_by or None,
        "created_at": row.created_at, "decided_by": row.decided_by or None, "decided_at": row.decided_at,
    }


def plan_view(*, session: CodingSession) -> dict:
    """The plan as the API shows it: the current version (JSON as submitted, findings, adjustments,
    review state), the earlier versions, the planning options and the task graph with PERT
    estimates and the critical path (its nodes carry their plan keys)."""
    current = plan_current(session=session)
    versions = list(
        SessionPlan.objects.filter(session=session).order_by("-version")
        .values("version", "status", "source", "comment", "created_at")[:VERSIONS_SHOWN]
    )
    graph = task_graph(session_id=session.pk)
    rows = (Task.objects.filter(session=session).exclude(plan_key="")
            .values_list("id", "plan_key", "files", "acceptance"))
    keys, details = {}, {}
    for pk, key, files, acceptance in rows:
        keys[pk] = key
        details[pk] = {"files": files, "acceptance": acceptance or None}
    for node in graph["nodes"]:
        node["key"] = keys.get(node["id"])
        node.update(details.get(node["id"], {"files": [], "acceptance": None}))
    for edge in graph["edges"]:
        edge["prerequisite_key"] = keys.get(edge["prerequisite"])
        edge["dependent_key"] = keys.get(edge["dependent"])
    graph["critical_path_keys"] = [keys.get(pk) for pk in graph["critical_path"]]
    return {
        "session": session.pk,
        "reference": session.reference,
        "status": session.status,
        "paused_reason": (session.metadata or {}).get(PAUSED_REASON) if session.status == "paused" else None,
        "waiting_for_review": waits_in_review(session),
        "planning": options_of(session.metadata).as_dict(),
        "plan": _plan_payload(current) if current is not None else None,
        "versions": versions,
        "graph": graph,
    }


# --- the engine's reads --------------------------------------------------------------------------


def plan_planning_tasks(*, session: CodingSession) -> list[Task]:
    """The session's planning tasks (tasks.planning.plan_add_planning_task), oldest first."""
    return list(Task.objects.filter(session=session, plan_key__startswith=PLANNING_KEY_PREFIX).order_by("id"))


def plan_turns_taken(*, session: CodingSession) -> int:
    """How many planning turns the session has prompted (`plan.turn` events): the scripted demo model's
    `@@resume n` count for the next one."""
    return SessionEvent.objects.filter(session=session, type="plan.turn").count()


def plan_replans_used(*, session: CodingSession) -> int:
    """Replans the session has started (its `@replan-n` planning tasks, but for one a pause cut short
    and the next run cancelled): the durable count `replan_limit` bounds."""
    return (Task.objects.filter(session=session, plan_key__startswith=f"{PLANNING_KEY_PREFIX}replan-")
            .exclude(status="cancelled").count())


def plan_outcome_excluded(*, session: CodingSession) -> set[int]:
    """Task ids that do not count in the session's outcome: its planning tasks, and the failed or
    skipped tasks a replan took over (kept in the replan task's result as `replaces`)."""
    excluded = set()
    for pk, result in Task.objects.filter(session=session, plan_key__startswith=PLANNING_KEY_PREFIX).values_list(
            "id", "result"):
        excluded.add(pk)
        excluded.update((result or {}).get("replaces") or [])
    return excluded
