"""Console pages for sessions: the monitor's actions (the monitor itself: sessions.monitor; the
list and the "New session" page: sessions.fleet_views).

Plain function views. A POST from htmx (`request.htmx`) gets the partial it
swaps; a plain POST is redirected. Every fragment comes from the partials
defined in templates/sessions/detail.html (django-template-partials), and the
WebSocket consumer renders the same partials through `live_fragment`, so the
page, an htmx swap and a push never drift apart.
"""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from orchestrator.errors import Conflict, NotFound, ValidationFailed
from orchestrator.roles import user_is_operator
from sessions import permissions, selectors, services
from sessions.models import PermissionReply, PermissionRequestStatus

# The monitor (detail page, its parts and pushes) lives in sessions.monitor; these names stay here
# for the URLconf and the action views below.
from sessions.monitor import ACTIONS, event_item, header_context, live_fragment, session_detail  # noqa: F401

DETAIL = "sessions/detail.html"


def _require_operator(request):
    if not user_is_operator(request.user):
        raise PermissionDenied("Only operators can change sessions")


def _visible_session_or_404(user, session_id):
    try:
        return selectors.session_get_for_user(user, session_id)
    except NotFound:
        raise Http404("No such session") from None


def _pending_permissions(session):
    return list(selectors.permission_requests_for(session=session, status=PermissionRequestStatus.PENDING))


def _render_partial(request, name, context, status=200):
    return render(request, f"{DETAIL}#{name}", context, status=status)


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
        session = service(session=session, actor=services.Actor.of_user(request.user))
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
        answered = permissions.permission_request_reply(
            session=session, request_id=request_id, reply=reply, actor=services.Actor.of_user(request.user)
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
