"""The session monitor: its page, the parts it loads on demand, its operator forms and its pushes.

Plain function views. Every fragment comes from the partials of templates/sessions/detail.html
and templates/sessions/monitor_parts.html; what the partials show, and the pushes the WebSocket
consumers send (`live_fragment`, `graph_fragment`), are in sessions/panels.py, so the page, an htmx
swap and a push never drift apart.

The event stream is windowed: the page holds the newest EVENT_WINDOW events; older ones come a
window at a time by keyset on the event id (`?before=<id>`), so a session with tens of thousands
of events renders as fast as one with a hundred.
"""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from orchestrator.errors import Conflict, NotFound, ValidationFailed
from orchestrator.roles import user_is_operator
from sessions import checkpoints, diffs, followups, plan_panel, selectors, services
from sessions.models import SessionEvent

# The panels' names the views use (and views.py, the tests and older callers import from here).
from sessions.panels import (  # noqa: F401
    ACTIONS,
    DETAIL,
    GRAPH,
    PARTS,
    event_item,
    events_window,
    fragment_reads_database,
    graph_context,
    graph_fragment,
    header_context,
    live_fragment,
    monitor_url,
    pending_permissions,
    session_tasks,
    timeline_context,
)


def require_operator(request):
    if not user_is_operator(request.user):
        raise PermissionDenied("Only operators can change sessions")


def visible_session_or_404(user, session_id):
    try:
        return selectors.session_get_for_user(user, session_id)
    except NotFound:
        raise Http404("No such session") from None


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
    tasks = session_tasks(session)
    context = {
        **header_context(session, is_operator=is_operator, transitions=transitions),
        "events": events,
        "older_before": older,
        "last_event_id": events[-1]["id"] if events else 0,
        "permission_requests": pending_permissions(session),
        "tasks": tasks,
        **timeline_context(session),
        "transitions": transitions,
        "children": list(session.children.filter(deleted_at__isnull=True).order_by("pk")[:20]),
        "message_max": followups.MESSAGE_MAX,
        "plan_panel": plan_panel.plan_panel(request, session, is_operator=is_operator, tasks=tasks),
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
        session = checkpoints.checkpoint_restore(session=session, sequence=sequence,
                                                 actor=services.Actor.of_user(request.user))
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


