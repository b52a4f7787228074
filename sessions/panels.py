"""The session monitor's panels: what each partial shows, and the fragments pushed over WebSocket.

View models and rendering shared by the monitor's views (sessions/monitor.py, sessions/views.py)
and the console consumers (sessions/consumers.py): the consumers render the same partials as
the pages, so the page, an htmx swap and a push never drift apart. Nothing here handles a request;
the consumers import this module, never a views module (sessions/tests/test_import_direction.py).
"""

import json
from datetime import datetime

from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from sessions import checkpoints, graph_layout, plan_panel, rendering, selectors, services
from sessions.models import CLOCK_STATES, CodingSession, PermissionRequestStatus
from tasks import selectors as task_selectors
from tasks.models import Task, TaskStatus

DETAIL = "sessions/detail.html"


PARTS = "sessions/monitor_parts.html"


GRAPH = "sessions/graph.html"


EVENT_WINDOW = 100


PAYLOAD_PREVIEW = 600


# Events after which the header (status, reason, health, current task, usage) is pushed again.
HEADER_EVENTS = frozenset({"session.transition", "session.checkpoint", "opencode.step", "operator.message"})


TIMELINE_EVENTS = frozenset({"session.checkpoint", "session.checkpoint_restored", "workspace.restored"})


MARKERS = (("merge", "merge"), ("integrat", "integration"))


def _category(type, payload):
    if type.startswith("tool."):
        return "error" if type == "tool.error" else "tool"
    if type == "assistant.text":
        return "text"
    if type in TIMELINE_EVENTS:
        return "checkpoint"
    if type == "session.transition":
        return "error" if payload.get("error") else "transition"
    if type.startswith("permission."):
        return "permission"
    if type in {"session.diff", "file.edited"}:
        return "diff"
    if type in {"opencode.error", "task.failed"}:
        return "error"
    if type.startswith("task."):
        return "task"
    if type.startswith("operator.") or type == "session.follow_up":
        return "operator"
    if type.startswith("opencode."):
        return "step"
    return "other"


def event_item(*, id, type, payload, created_at):
    """What the event partial needs from one event, from a SessionEvent row or a published message."""
    payload = payload if isinstance(payload, dict) else {"value": payload}
    if isinstance(created_at, str):
        created_at = datetime.fromisoformat(created_at)
    preview = json.dumps(payload, sort_keys=True, default=str)
    if len(preview) > PAYLOAD_PREVIEW:
        preview = preview[:PAYLOAD_PREVIEW] + "…"
    return {
        "id": id, "type": type, "payload": payload, "created_at": created_at,
        "category": _category(type, payload), "preview": preview,
    }


def event_items(rows):
    return [event_item(id=e.id, type=e.type, payload=e.payload, created_at=e.created_at) for e in rows]


def _retry_and_start(*, session, actor):
    retried = services.session_retry(session=session, actor=actor)
    return services.session_start(session=retried, actor=actor)


# The operator actions the console offers, in button order, and the service each calls.
ACTIONS = {
    "start": services.session_start,
    "pause": services.session_pause,
    "resume": services.session_resume,
    "stop": services.session_stop,
    "cancel": services.session_cancel,
    "retry": _retry_and_start,
}


CONFIRM = {"stop": "Stop this session?", "cancel": "Cancel this session? It cannot be restarted."}


def current_tasks(session):
    return list(
        Task.objects.filter(session_id=session.pk, status__in=[TaskStatus.IN_PROGRESS, TaskStatus.ASSIGNED])
        .select_related("assigned_agent").order_by("started_at", "pk")[:5]
    )


def header_context(session, *, is_operator, notice=None, notice_level="error", transitions=None):
    """The monitor header: status with its typed reason, health, current task and agent, time and
    budgets, and the operator's actions (two queries: current tasks, last transition, unless the
    caller has the `transitions` already)."""
    allowed = set(session.allowed_actions())
    actions = [{"name": name, "confirm": CONFIRM.get(name, "")} for name in ACTIONS if name in allowed]
    if transitions is not None:
        last = (transitions[-1].action, transitions[-1].reason) if transitions else None
    else:
        last = session.transitions.order_by("-pk").values_list("action", "reason").first()
    elapsed = session.elapsed_seconds()
    budget = session.max_duration_seconds
    current = current_tasks(session)
    return {
        "session": session, "is_operator": is_operator, "actions": actions,
        "notice": notice, "notice_level": notice_level,
        "reason": rendering.status_reason(status=session.status, error=session.error,
                                          at_risk=session.is_at_risk, last_transition=last),
        "current_task": current[0] if current else None, "more_current_tasks": max(0, len(current) - 1),
        "elapsed": rendering.format_duration(elapsed), "elapsed_seconds": int(elapsed),
        "budget": rendering.format_duration(budget),
        "budget_percent": min(100, round(100 * elapsed / budget)) if budget else 0,
        "clock_running": session.status in CLOCK_STATES,
    }


def events_window(session, *, before=None, limit=EVENT_WINDOW):
    """The newest `limit` events (below `before` when given), oldest first, and the id to ask
    for the window before them (None when there is nothing older)."""
    rows = selectors.session_events_before(session, before, limit=limit + 1)
    older = rows[0].pk if len(rows) > limit else None
    rows = rows[1:] if older is not None else rows
    return event_items(rows), (rows[0].pk if older is not None and rows else None)


def timeline_context(session):
    return {"timeline": checkpoints.checkpoint_timeline(session=session),
            "can_restore": session.status in services.RESTORE_STATES}


def pending_permissions(session):
    return list(selectors.permission_requests_for(session=session, status=PermissionRequestStatus.PENDING))


def session_tasks(session):
    return list(task_selectors.task_list(session_id=session.pk))


def _marker(title):
    lowered = (title or "").lower()
    for needle, marker in MARKERS:
        if needle in lowered:
            return marker
    return ""


def graph_context(session):
    """The session's task graph laid out for the SVG partial: its executed tasks (containers are
    drawn through their subtasks), dependencies, critical path; three queries."""
    graph = task_selectors.task_graph(session_id=session.pk)
    agents = dict(
        Task.objects.filter(session_id=session.pk, assigned_agent__isnull=False)
        .values_list("pk", "assigned_agent__name")
    )
    leaves = [node for node in graph["nodes"] if not node["is_container"]]
    shown = {node["id"] for node in leaves}
    edges = _leaf_edges(graph, shown)
    drawing = graph_layout.layout(
        [{"id": node["id"], "title": node["title"], "status": node["status"], "agent": agents.get(node["id"], ""),
          "expected_hours": node["estimate"]["expected_hours"], "marker": _marker(node["title"])}
         for node in leaves],
        edges, graph["critical_path"],
    )
    counts = {}
    for node in leaves:
        counts[node["status"]] = counts.get(node["status"], 0) + 1
    return {
        "session": session, "drawing": drawing, "status_counts": sorted(counts.items()),
        "svg": graph_svg(drawing, monitor_url=reverse("sessions:detail", args=[session.pk])),
        "total_hours": graph["total_expected_hours"], "critical_length": len(graph["critical_path"]),
    }


def graph_svg(drawing, *, monitor_url):
    """The nodes and edges of a drawing as SVG markup (escaped). Built here rather than in a
    template loop: 200 tasks cost the template ~5,000 variable lookups, most of the page's time."""
    edges = [
        format_html('<path class="edge{}" d="{}" marker-end="url(#arrow{})"/>',
                    " critical" if edge.critical else "", edge.d, "-critical" if edge.critical else "")
        for edge in drawing.edges
    ]
    nodes = []
    for node in drawing.nodes:
        details = [node.status, node.agent, node.estimate, "on the critical path" if node.critical else ""]
        label = f"{node.full_title}: " + ", ".join(part for part in details if part)
        meta = " · ".join(part for part in (node.status, node.estimate, node.marker) if part)
        nodes.append(format_html(
            '<a href="{}#task-{}" aria-label="{}"><g class="node node-{}{}" id="node-{}" transform="translate({},{})">'
            '<title>{}</title><rect width="{}" height="{}" rx="6"/>'
            '<text x="10" y="19" class="node-title">{}</text><text x="10" y="36" class="node-meta">{}</text>'
            '<text x="10" y="51" class="node-meta">{}</text></g></a>',
            monitor_url, node.id, label, node.status, " critical" if node.critical else "", node.id, node.x, node.y,
            node.full_title, node.width, node.height, node.title, meta, node.agent or "no agent yet",
        ))
    return mark_safe("\n".join(edges) + "\n" + "\n".join(nodes))  # noqa: S308 (every part went through format_html)


def _leaf_edges(graph, shown):
    """Dependencies between the drawn tasks; one on a container stands for one on each of its tasks."""
    children = {}
    for node in graph["nodes"]:
        if node["parent"] is not None:
            children.setdefault(node["parent"], []).append(node["id"])

    def leaves(node_id):
        if node_id in shown:
            return [node_id]
        return [leaf for child in children.get(node_id, []) for leaf in leaves(child)]

    pairs = []
    for edge in graph["edges"]:
        for a in leaves(edge["prerequisite"]):
            for b in leaves(edge["dependent"]):
                if a != b:
                    pairs.append((a, b))
    return list(dict.fromkeys(pairs))


def fragment_reads_database(kind):
    """Whether the push for an event of this type reads the database (it re-renders a panel)."""
    return (kind in HEADER_EVENTS or kind.startswith("task.") or kind.startswith("permission.")
            or kind in TIMELINE_EVENTS or kind == "session.diff" or kind.startswith("plan."))


def live_fragment(*, session_id, event, is_operator):
    """The HTML the console consumer sends for one published event.

    Always the event, appended to #event-log (hx-swap-oob="beforeend"); with it, out-of-band
    replacements of the panels the event changes: the header (transitions, checkpoints, steps,
    task events, operator messages), the permission panel, the task list, the checkpoint timeline,
    the transitions, and the diff (its shell, which loads the patch again). Reads the database, so
    call it from a worker thread in async code.
    """
    context = {"event": event_item(**{k: event[k] for k in ("id", "type", "payload", "created_at")}),
               "is_operator": is_operator}
    kind = event["type"]
    is_task = kind.startswith("task.")
    session = None
    if fragment_reads_database(kind):
        session = CodingSession.objects.select_related("agent").filter(pk=session_id).first()
    if session is not None:
        context["session"] = session
        if kind == "session.transition":
            context["transitions"] = selectors.session_transitions(session)
            context["push_transitions"] = True
        if kind in HEADER_EVENTS or is_task:
            context.update(header_context(session, is_operator=is_operator, transitions=context.get("transitions")))
            context["push_header"] = True
        if kind.startswith("permission."):
            context["permission_requests"] = pending_permissions(session)
            context["push_permissions"] = True
        if is_task:
            context["tasks"] = session_tasks(session)
            context["push_tasks"] = True
        # A transition changes whether the timeline offers restore (only while nothing runs).
        if kind in TIMELINE_EVENTS or kind == "session.transition":
            context.update(timeline_context(session))
            context["push_timeline"] = True
        if kind == "session.diff":
            context["push_diff"] = True
        if kind.startswith("plan."):
            # The plan panel (plan_review.html#plan) is rendered here and pushed out of band.
            context["plan_panel"] = plan_panel.plan_fragment(session=session, is_operator=is_operator)
    return render_to_string(f"{DETAIL}#live", context)


def graph_fragment(*, session_id):
    """The graph partial, replacing the drawn one (hx-swap-oob); reads the database."""
    session = CodingSession.objects.filter(pk=session_id).first()
    if session is None:
        return ""
    return render_to_string(f"{GRAPH}#graph", {**graph_context(session), "push_graph": True})


def monitor_url(session):
    return reverse("sessions:detail", args=[session.pk])
