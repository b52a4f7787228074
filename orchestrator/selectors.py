"""Reads that span the apps: what the console's overview page shows.

Every list here is bounded, so the overview costs the same few queries with ten
sessions or a million.
"""

from dataclasses import dataclass

from django.db.models import Count, OuterRef, Subquery
from django.utils import timezone

from agents.models import Agent
from sessions import rules
from sessions import selectors as session_selectors
from sessions.dispatch import RunningCounts, limits_configured
from sessions.health_score import AT_RISK_SECONDS
from sessions.models import CodingSession, PermissionRequest, PermissionRequestStatus, SessionStatus, SessionTransition
from tasks.models import Task

RUNNING_SHOWN = 20
FAILURES_SHOWN = 8
QUEUED_EXAMINED = 50
AGENTS_SHOWN = 50
FAILED_STATES = ("failed", "timeout", "orphaned")


@dataclass(frozen=True)
class QueueRow:
    priority: int
    name: str
    depth: int


def _current_tasks(session_ids):
    """{session id: title of its task in progress (or assigned)}; one query."""
    current = {}
    rows = (
        Task.objects.filter(session_id__in=session_ids, status__in=["in_progress", "assigned"])
        .select_related("assigned_agent")
        .order_by("session_id", "-status", "pk")
        .only("session_id", "title", "status", "assigned_agent__name")
    )
    for task in rows:
        current.setdefault(task.session_id, {
            "title": task.title, "agent": task.assigned_agent.name if task.assigned_agent_id else "",
        })
    return current


def _degraded_reasons(session_ids):
    """{session id: reason of the transition that made it degraded}; one query."""
    latest = (
        SessionTransition.objects.filter(session_id=OuterRef("pk"), to_status=SessionStatus.DEGRADED)
        .order_by("-pk").values("reason")[:1]
    )
    rows = CodingSession.objects.filter(pk__in=session_ids).annotate(reason=Subquery(latest)).values("pk", "reason")
    return {row["pk"]: row["reason"] or "" for row in rows}


def fleet_overview(*, now=None) -> dict:
    """The overview page's data: counts by status, running sessions with health and current task,
    at-risk and stalled sessions with their reason, queue depth per priority with the limits
    that hold queued sessions back, pending approvals, agents' load and recent failures."""
    now = now or timezone.now()
    stats = session_selectors.session_stats(now=now)
    visible = session_selectors.sessions_visible()
    running = list(
        visible.filter(status__in=[SessionStatus.RUNNING, SessionStatus.DEGRADED])
        .select_related("agent").defer("initial_prompt").order_by("pk")[:RUNNING_SHOWN]
    )
    ids = [session.pk for session in running]
    tasks = _current_tasks(ids)
    reasons = _degraded_reasons([s.pk for s in running if s.status == SessionStatus.DEGRADED])
    rows = []
    for session in running:
        left = session.max_duration_seconds - session.elapsed_seconds(now)
        rows.append({
            "session": session, "task": tasks.get(session.pk), "seconds_left": round(left),
            "at_risk": left < AT_RISK_SECONDS, "stalled_reason": reasons.get(session.pk, ""),
        })
    depth = dict(
        visible.filter(status=SessionStatus.QUEUED).values_list("priority").annotate(n=Count("id"))
    )
    queue = [QueueRow(priority=number, name=name, depth=depth.get(number, 0))
             for number, name in sorted(rules.PRIORITY_NAMES.items())]
    held = {}
    if limits_configured():
        counts = RunningCounts()
        for session in visible.filter(status=SessionStatus.QUEUED).order_by("priority", "pk")[:QUEUED_EXAMINED]:
            limit = counts.blocking_limit(session)
            if limit:
                held[limit] = held.get(limit, 0) + 1
    failures = list(
        visible.filter(status__in=FAILED_STATES).defer("initial_prompt")
        .order_by("-updated_at", "-pk")[:FAILURES_SHOWN]
    )
    agents = list(Agent.objects.order_by("-current_load", "name")[:AGENTS_SHOWN])
    return {
        "stats": stats,
        "running": rows,
        "at_risk": [row for row in rows if row["at_risk"]],
        "stalled": [row for row in rows if row["session"].status == SessionStatus.DEGRADED],
        "queue": queue,
        "queue_total": sum(row.depth for row in queue),
        "held_by_limits": sorted(held.items()),
        "pending_approvals": pending_approvals_count(),
        "agents": [{"agent": agent, "load_percent": min(100, round(100 * agent.utilisation))} for agent in agents],
        "failures": failures,
    }


def pending_approvals_count() -> int:
    return PermissionRequest.objects.filter(
        status=PermissionRequestStatus.PENDING, session__deleted_at__isnull=True
    ).count()
