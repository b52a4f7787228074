"""The session monitor: its page, the parts it loads on demand, its operator forms and its pushes.

Plain function views. Every fragment comes from the partials of templates/sessions/detail.html
and templates/sessions/monitor_parts.html; the WebSocket consumers render the same partials
(`live_fragment`, `graph_fragment`), so the page, an htmx swap and a push never drift apart.

The event stream is windowed: the page holds the newest EVENT_WINDOW events; older ones come a
window at a time by keyset on the event id (`?before=<id>`), so a session with tens of thousands
of events renders as fast as one with a hundred.
"""

import json
from datetime import datetime

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_POST

from orchestrator.errors import Conflict, NotFound, ValidationFailed
from orchestrator.roles import user_is_operator
from sessions import checkpoints, diffs, followups, graph_layout, plan_review, rendering, selectors, services
from sessions.models import CLOCK_STATES, CodingSession, PermissionRequestStatus, SessionEvent
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


def require_operator(request):
    if not user_is_operator(request.user):
        raise PermissionDenied("Only operators can change sessions")


def visible_session_or_404(user, session_id):
    try:
        return selectors.session_get_for_user(user, session_id)
    except NotFound:
        raise Http404("No such session") from None


# --- view models ------------------------------------------------------------------------------


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


def _items(rows):
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


def _current_tasks(session):
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
    current = _current_tasks(session)
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
    return _items(rows), (rows[0].pk if older is not None and rows else None)


def timeline_context(session):
    return {"timeline": checkpoints.checkpoint_timeline(session=session),
            "can_restore": session.status in services.RESTORE_STATES}


def _pending_permissions(session):
    return list(selectors.permission_requests_for(session=session, status=PermissionRequestStatus.PENDING))


def _tasks(session):
    return list(task_selectors.task_list(session_id=session.pk))


def _render_partial(request, template, name, context, status=200):
    return render(request, f"{template}#{name}", context, status=status)


# --- the page -----------------------------------------------------------------------------------


@login_required
@require_GET
def session_detail(request, session_id):
    session = visible_session_or_404(request.user, session_id)
    is_operator = user_is_operator(request.user)
    events, older = events_window(session)
    transitions = selectors.session_transitions(session)
    tasks = _tasks(session)
    context = {
        **header_context(session, is_operator=is_operator, transitions=transitions),
        "events": events,
        "older_before": older,
        "last_event_id": events[-1]["id"] if events else 0,
        "permission_requests": _pending_permissions(session),
        "tasks": tasks,
        **timeline_context(session),
        "transitions": transitions,
        "children": list(session.children.filter(deleted_at__isnull=True).order_by("pk")[:20]),
        "message_max": followups.MESSAGE_MAX,
        "plan_panel": plan_review.plan_panel(request, session, is_operator=is_operator, tasks=tasks),
    }
    return render(request, DETAIL, context)


@login_required
@require_GET
def session_events(request, session_id):
    """A window of older events: `?before=<event id>`. htmx gets the fragment that replaces the
    "load older" control (the events, then a control for the window before them); a browser
    without JavaScript gets a page of that window with a link further back."""
    session = visible_session_or_404(request.user, session_id)
    try:
        before = int(request.GET.get("before", ""))
    except ValueError:
        before = None
    if before is None or before < 1:
        return render(request, f"{PARTS}#bad-request",
                      {"message": "before: must be a positive event id"}, status=400)
    events, older = events_window(session, before=before)
    context = {"session": session, "events": events, "older_before": older}
    if request.htmx:
        return _render_partial(request, PARTS, "older-events", context)
    return render(request, "sessions/events.html", context)


@login_required
@require_GET
def session_diff(request, session_id):
    """The session's patch per file (loaded into the monitor on demand; a page of its own too)."""
    session = visible_session_or_404(request.user, session_id)
    context = {"session": session, "diff": diffs.session_diff(session=session)}
    if request.htmx:
        return _render_partial(request, PARTS, "patch", context)
    return render(request, "sessions/diff.html", context)


@login_required
@require_POST
def session_restore(request, session_id, sequence):
    """Restore a checkpoint (operators): the timeline shows the outcome, a refusal names the state."""
    require_operator(request)
    session = visible_session_or_404(request.user, session_id)
    notice, level = None, "error"
    try:
        session = checkpoints.checkpoint_restore(session=session, sequence=sequence, actor=services.Actor.of_user(request.user))
        notice, level = f"Checkpoint {sequence} restored; the next run resumes from it", "success"
    except (Conflict, ValidationFailed, NotFound) as refused:
        notice = refused.message
    if request.htmx:
        # 200 either way: htmx swaps only successful responses, and the refusal is the notice.
        context = {"session": session, "is_operator": True, "notice": notice, "notice_level": level,
                   **timeline_context(session)}
        return _render_partial(request, PARTS, "timeline", context)
    (messages.success if level == "success" else messages.error)(request, notice)
    return redirect("sessions:detail", session_id=session_id)


@login_required
@require_POST
def session_message(request, session_id):
    """An operator's follow-up message (sessions.followups): a follow-up session of a finished
    session, or a message for the running task."""
    require_operator(request)
    session = visible_session_or_404(request.user, session_id)
    text = request.POST.get("text", "")
    notice, level, child = None, "error", None
    try:
        outcome = followups.session_send_message(session=session, text=text, actor=services.Actor.of_user(request.user))
        child = outcome.child
        if child is not None:
            notice = f"Follow-up session {child.reference} created and started"
        else:
            notice = f"Message kept for task “{outcome.task.title}”: it is delivered as the task's next turn"
        level, text = "success", ""
    except (Conflict, ValidationFailed, NotFound) as refused:
        notice = refused.message
    if request.htmx:
        context = {"session": session, "is_operator": True, "notice": notice, "notice_level": level,
                   "child": child, "text": text, "message_max": followups.MESSAGE_MAX}
        return _render_partial(request, PARTS, "followup", context)
    (messages.success if level == "success" else messages.error)(request, notice)
    if child is not None:
        return redirect("sessions:detail", session_id=child.pk)
    return redirect("sessions:detail", session_id=session_id)


# --- the task graph ------------------------------------------------------------------------------


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


@login_required
@require_GET
def session_graph(request, session_id):
    session = visible_session_or_404(request.user, session_id)
    context = graph_context(session)
    if request.htmx:
        return _render_partial(request, GRAPH, "graph", context)
    last = SessionEvent.objects.filter(session_id=session.pk).order_by("-pk").values_list("pk", flat=True).first()
    return render(request, GRAPH, {**context, "last_event_id": last or 0})


# --- WebSocket pushes ------------------------------------------------------------------------------


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
            context["permission_requests"] = _pending_permissions(session)
            context["push_permissions"] = True
        if is_task:
            context["tasks"] = _tasks(session)
            context["push_tasks"] = True
        if kind in TIMELINE_EVENTS:
            context.update(timeline_context(session))
            context["push_timeline"] = True
        if kind == "session.diff":
            context["push_diff"] = True
        if kind.startswith("plan."):
            # The plan panel (plan_review.html#plan) is rendered here and pushed out of band.
            context["plan_panel"] = plan_review.plan_fragment(session=session, is_operator=is_operator)
    return render_to_string(f"{DETAIL}#live", context)


def graph_fragment(*, session_id):
    """The graph partial, replacing the drawn one (hx-swap-oob); reads the database."""
    session = CodingSession.objects.filter(pk=session_id).first()
    if session is None:
        return ""
    return render_to_string(f"{GRAPH}#graph", {**graph_context(session), "push_graph": True})


def monitor_url(session):
    return reverse("sessions:detail", args=[session.pk])
