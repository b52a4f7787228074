"""Console pages for sessions: the list with the "New session" form, and the live detail page.

Plain function views. A POST from htmx (`request.htmx`) gets the partial it
swaps; a plain POST is redirected. Every fragment comes from the partials
defined in templates/sessions/detail.html (django-template-partials), and the
WebSocket consumer renders the same partials through `live_fragment`, so the
page, an htmx swap and a push never drift apart.
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
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect

from orchestrator.errors import Conflict, NotFound, ValidationFailed
from orchestrator.roles import user_is_operator
from sessions import approvals, selectors, services
from sessions.api import parse_list_params
from sessions.forms import SessionCreateForm
from sessions.models import CodingSession, PermissionReply, PermissionRequestStatus, SessionEvent, SessionStatus
from tasks import selectors as task_selectors

DETAIL = "sessions/detail.html"
LOG_LENGTH = 200
PAYLOAD_PREVIEW = 600


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

# Events that change what the header, the permission panel or the task list show.
HEADER_EVENTS = frozenset({"session.transition", "session.checkpoint", "opencode.step"})


def _require_operator(request):
    if not user_is_operator(request.user):
        raise PermissionDenied("Only operators can change sessions")


def _visible_session_or_404(user, session_id):
    try:
        return services.session_get_for_user(user, session_id)
    except NotFound:
        raise Http404("No such session") from None


# --- view models ------------------------------------------------------------------


def _category(type, payload):
    if type.startswith("tool."):
        return "error" if type == "tool.error" else "tool"
    if type == "assistant.text":
        return "text"
    if type in {"session.checkpoint", "session.checkpoint_restored", "workspace.restored"}:
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


def header_context(session, *, is_operator, notice=None, notice_level="error"):
    allowed = set(session.allowed_actions())
    actions = [
        {"name": name, "confirm": CONFIRM.get(name, "")}
        for name in ACTIONS
        if name in allowed
    ]
    return {
        "session": session, "is_operator": is_operator, "actions": actions,
        "notice": notice, "notice_level": notice_level,
    }


def _last_diff(session):
    event = (
        SessionEvent.objects.filter(session_id=session.pk, type="session.diff").order_by("-pk").only("payload").first()
    )
    return event.payload if event is not None else None


def _pending_permissions(session):
    return list(approvals.permission_requests_for(session=session, status=PermissionRequestStatus.PENDING))


def _tasks(session):
    return list(task_selectors.task_list(session_id=session.pk))


def _render_partial(request, name, context, status=200):
    return render(request, f"{DETAIL}#{name}", context, status=status)


# --- list and create ----------------------------------------------------------------------


def _list_context(request, form):
    error = None
    try:
        filters, cursor, page_size = parse_list_params(request.GET)
    except ValidationFailed as exc:
        error = exc.message
        filters, cursor, page_size = selectors.SessionFilters(), None, selectors.PAGE_SIZE_DEFAULT
    page = selectors.session_list(filters=filters, cursor=cursor, page_size=page_size)
    next_query = None
    if page.next_cursor is not None:
        params = request.GET.copy()
        params["cursor"] = str(page.next_cursor)
        next_query = params.urlencode()
    return {
        "sessions": page.items,
        "next_query": next_query,
        "error": error,
        "statuses": SessionStatus.values,
        "selected_status": request.GET.get("status", ""),
        "search": request.GET.get("search", ""),
        "stats": selectors.session_stats(),
        "form": form,
    }


@login_required
@require_GET
def session_list(request):
    form = SessionCreateForm() if user_is_operator(request.user) else None
    context = _list_context(request, form)
    return render(request, "sessions/list.html", context, status=400 if context["error"] else 200)


@login_required
@require_POST
def session_create(request):
    """Create a session from the console form (and start it when "start now" is ticked)."""
    _require_operator(request)
    form = SessionCreateForm(request.POST)
    session = None
    if form.is_valid():
        try:
            session = services.session_create(actor=request.user, **form.service_arguments())
        except ValidationFailed as failure:
            form.add_service_errors(failure.errors)
    if session is None:
        if request.htmx:
            return render(request, "sessions/list.html#new-session", {"form": form})
        return render(request, "sessions/list.html", _list_context(request, form), status=400)
    messages.success(request, f"Created {session.reference} ({session.status})")
    url = reverse("sessions:detail", args=[session.pk])
    if request.htmx:
        # The new session's page is where its events arrive, so htmx navigates there.
        return HttpResponseClientRedirect(url)
    return redirect(url)


# --- detail ---------------------------------------------------------------------------------


@login_required
@require_GET
def session_detail(request, session_id):
    session = _visible_session_or_404(request.user, session_id)
    is_operator = user_is_operator(request.user)
    events = _items(selectors.session_recent_events(session, limit=LOG_LENGTH))
    context = {
        **header_context(session, is_operator=is_operator),
        "events": events,
        "last_event_id": events[-1]["id"] if events else 0,
        "permission_requests": _pending_permissions(session),
        "diff": _last_diff(session),
        "tasks": _tasks(session),
    }
    return render(request, DETAIL, context)


@login_required
@require_POST
def session_action(request, session_id, action):
    """Run one operator action; a refused transition shows its message in the header, never a 500."""
    _require_operator(request)
    service = ACTIONS.get(action)
    if service is None:
        raise Http404("No such action")
    session = _visible_session_or_404(request.user, session_id)
    notice, level = None, "error"
    try:
        session = service(session=session.pk, actor=request.user)
        notice, level = f"{action}: {session.reference} is now {session.status}", "success"
    except (Conflict, ValidationFailed) as refused:
        notice = refused.message
    except NotFound:
        raise Http404("No such session") from None
    if request.htmx:
        session = _visible_session_or_404(request.user, session_id)
        context = header_context(session, is_operator=True, notice=notice, notice_level=level)
        return _render_partial(request, "header", context)
    (messages.success if level == "success" else messages.error)(request, notice)
    return redirect("sessions:detail", session_id=session_id)


@login_required
@require_GET
def session_permissions(request, session_id):
    """The pending permission requests panel (htmx refresh)."""
    session = _visible_session_or_404(request.user, session_id)
    context = {
        "session": session, "is_operator": user_is_operator(request.user),
        "permission_requests": _pending_permissions(session),
    }
    return _render_partial(request, "permissions", context)


@login_required
@require_POST
def session_permission_reply(request, session_id, request_id):
    """Answer one permission request: once, always or reject."""
    _require_operator(request)
    session = _visible_session_or_404(request.user, session_id)
    reply = request.POST.get("reply", "")
    notice, level = None, "error"
    try:
        answered = approvals.permission_request_reply(
            session=session, request_id=request_id, reply=reply, actor=request.user
        )
        notice, level = f"{answered.permission}: {PermissionReply(answered.reply).label}", "success"
    except (Conflict, ValidationFailed, NotFound) as refused:
        notice = refused.message
    if request.htmx:
        context = {
            "session": session, "is_operator": True, "notice": notice, "notice_level": level,
            "permission_requests": _pending_permissions(session),
        }
        return _render_partial(request, "permissions", context)
    (messages.success if level == "success" else messages.error)(request, notice)
    return redirect("sessions:detail", session_id=session_id)


# --- WebSocket pushes -------------------------------------------------------------------------


def live_fragment(*, session_id, event, is_operator):
    """The HTML the console consumer sends for one published event.

    Always the event, appended to #event-log (hx-swap-oob="beforeend"); with it,
    out-of-band replacements of the panels the event changes: the header on
    transitions, checkpoints and steps, the permission panel on permission
    events, the diff on session.diff, the task list on task events. Reads the
    database, so call it from a worker thread in async code.
    """
    context = {"event": event_item(**{k: event[k] for k in ("id", "type", "payload", "created_at")}),
               "is_operator": is_operator}
    kind = event["type"]
    session = None
    if kind in HEADER_EVENTS or kind.startswith("permission.") or kind.startswith("task."):
        session = CodingSession.objects.select_related("agent").filter(pk=session_id).first()
    if session is not None:
        if kind in HEADER_EVENTS:
            context.update(header_context(session, is_operator=is_operator))
            context["push_header"] = True
        if kind.startswith("permission."):
            context["session"] = session
            context["permission_requests"] = _pending_permissions(session)
            context["push_permissions"] = True
        if kind.startswith("task."):
            context["session"] = session
            context["tasks"] = _tasks(session)
            context["push_tasks"] = True
    if kind == "session.diff":
        context["diff"] = event["payload"]
        context["push_diff"] = True
    return render_to_string(f"{DETAIL}#live", context)
