"""Console pages across sessions: the sessions list, the "New session" page and the approvals inbox.

Plain function views; a POST from htmx gets the partial it swaps, a plain POST
is redirected. The partials (templates/sessions/list.html, templates/approvals/inbox.html)
are also what orchestrator.live_pages pushes over the WebSocket, through the
render helpers at the end of this module, so the page, a swap and a push never drift.
"""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, QueryDict
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from agents.models import Agent
from orchestrator import selectors as fleet_selectors
from orchestrator.errors import Conflict, NotFound, ValidationFailed
from orchestrator.roles import user_is_operator
from sessions import permissions, rules, selectors, services
from sessions.filters import parse_approval_params, parse_list_params
from sessions.forms import SessionCreateForm
from sessions.models import CodingSession, PermissionReply, PermissionRequest, SessionStatus
from sessions.planning.services import session_create_planned

LIST = "sessions/list.html"
NEW = "sessions/new.html"
INBOX = "approvals/inbox.html"
AGENT_CHOICES_MAX = 200


def _require_operator(request):
    if not user_is_operator(request.user):
        raise PermissionDenied("Only operators can do this")


# --- sessions list -----------------------------------------------------------------------


def _list_context(request):
    # Read before the rows: an event committed between the two is then replayed by the live feed,
    # never lost (read after, it would count as seen while the rows predate it).
    last_event_id = selectors.event_latest_id()
    error = None
    try:
        filters, cursor, page_size = parse_list_params(request.GET)
    except ValidationFailed as exc:
        error = exc.message
        filters, cursor, page_size = selectors.SessionFilters(), None, selectors.PAGE_SIZE_DEFAULT
    page = selectors.session_list(filters=filters, cursor=cursor, page_size=page_size)
    params = request.GET.copy()
    params.pop("cursor", None)
    next_query = None
    if page.next_cursor is not None:
        params["cursor"] = str(page.next_cursor)
        next_query = params.urlencode()
        params.pop("cursor")
    get = request.GET
    return {
        "sessions": page.items,
        "next_query": next_query,
        "first_query": params.urlencode() if cursor is not None else None,
        "error": error,
        "statuses": SessionStatus.values,
        "types": rules.SESSION_TYPES,
        "priorities": sorted(rules.PRIORITY_NAMES.items()),
        "agents": Agent.objects.order_by("name").values_list("pk", "name")[:AGENT_CHOICES_MAX],
        "selected": {name: get.get(name, "") for name in
                     ("status", "session_type", "priority", "agent", "repository", "tag", "search")},
        "stats": selectors.session_stats(),
        "last_event_id": last_event_id,
        "is_operator": user_is_operator(request.user),
    }


@login_required
@require_GET
def session_list(request):
    context = _list_context(request)
    # Bad filters show the message above the unfiltered list, with a 400 so clients can tell.
    return render(request, LIST, context, status=400 if context["error"] else 200)


# --- new session -----------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def session_create(request):
    """GET: the "New session" page (operators). POST: create (and start when "start now" is
    ticked) through the API's service for planned sessions, then show the session's monitor;
    field errors are shown next to their fields."""
    _require_operator(request)
    if request.method == "GET":
        return render(request, NEW, {"form": SessionCreateForm()})
    form = SessionCreateForm(request.POST)
    session = None
    if form.is_valid():
        try:
            session = session_create_planned(actor=services.Actor.of_user(request.user), **form.service_arguments())
        except ValidationFailed as failure:
            form.add_service_errors(failure.errors)
    if session is None:
        if request.htmx:
            return render(request, f"{NEW}#new-session", {"form": form})
        return render(request, NEW, {"form": form}, status=400)
    messages.success(request, f"Created {session.reference} ({session.status})")
    url = reverse("sessions:detail", args=[session.pk])
    if request.htmx:
        return HttpResponseClientRedirect(url)
    return redirect(url)


# --- approvals inbox -------------------------------------------------------------------------


def approval_items(requests, *, now=None):
    now = now or timezone.now()
    return [{"request": request, "seconds_left": round(selectors.approval_seconds_left(request, now=now))}
            for request in requests]


def _inbox_context(params, *, is_operator, notice=None, notice_level="error"):
    error = None
    try:
        filters, cursor, page_size = parse_approval_params(params)
    except ValidationFailed as exc:
        error = exc.message
        filters, cursor, page_size = selectors.ApprovalFilters(), None, selectors.PAGE_SIZE_DEFAULT
    page = selectors.approvals_pending(filters=filters, cursor=cursor, page_size=page_size)
    query = params.copy()
    next_query = None
    if page.next_cursor is not None:
        query["cursor"] = str(page.next_cursor)
        next_query = query.urlencode()
    return {
        "items": approval_items(page.items), "next_query": next_query, "error": error,
        "pending_count": fleet_selectors.pending_approvals_count(), "is_operator": is_operator,
        "notice": notice, "notice_level": notice_level,
        "selected": {name: params.get(name, "") for name in ("session", "permission", "agent", "repository")},
    }


@login_required
@require_GET
def approvals_inbox(request):
    last_event_id = selectors.event_latest_id()  # before the rows (see _list_context)
    context = _inbox_context(request.GET, is_operator=user_is_operator(request.user))
    context["last_event_id"] = last_event_id
    context["pending_approvals"] = context["pending_count"]  # the nav's count, already read
    return render(request, INBOX, context)


@login_required
@require_POST
def approval_reply(request, request_id):
    """Answer one pending request (once / always / reject) through the same service as the API."""
    _require_operator(request)
    pending = PermissionRequest.objects.filter(pk=request_id).only("session_id").first()
    if pending is None:
        raise Http404("No such permission request")
    try:
        session = selectors.session_get_for_user(request.user, pending.session_id)
    except NotFound:
        raise Http404("No such permission request") from None
    notice, level = None, "error"
    try:
        answered = permissions.permission_request_reply(
            session=session,
            request_id=request_id,
            reply=request.POST.get("reply", ""),
            actor=services.Actor.of_user(request.user),
        )
        notice = f"{session.reference} · {answered.permission}: {PermissionReply(answered.reply).label}"
        level = "success"
    except (Conflict, ValidationFailed, NotFound) as refused:
        notice = refused.message
    if request.htmx:
        context = _inbox_context(request.GET, is_operator=True, notice=notice, notice_level=level)
        return render(request, f"{INBOX}#answered", context)
    (messages.success if level == "success" else messages.error)(request, notice)
    return redirect("approvals:inbox")


# --- WebSocket pushes (orchestrator.live_pages) ---------------------------------------------


def render_session_rows(*, session_ids, created, is_operator) -> list[str]:
    """Two out-of-band fragments: the rows of these sessions (a row not on the page is ignored by
    htmx), then the counts by status and the notice of sessions created since the page was
    rendered. Separate messages, because an HTML parser drops table rows that follow a <p>."""
    rows = list(
        CodingSession.objects.filter(pk__in=session_ids, deleted_at__isnull=True)
        .select_related("agent").defer("initial_prompt").order_by("-pk")
    )
    context = {"sessions": rows, "created": created, "push": True, "is_operator": is_operator}
    counts = render_to_string(f"{LIST}#live-counts", {**context, "stats": selectors.session_stats()})
    return [render_to_string(f"{LIST}#live-rows", context) if rows else "", counts]


def render_inbox(*, params: QueryDict, is_operator: bool) -> str:
    """The inbox as the page's filters (`params`) show it, and the nav's pending count, out of band."""
    context = _inbox_context(params, is_operator=is_operator)
    context["push"] = True
    return render_to_string(f"{INBOX}#inbox", context) + render_nav_count(count=context["pending_count"])


def render_nav_count(*, count=None) -> str:
    if count is None:
        count = fleet_selectors.pending_approvals_count()
    return render_to_string("base.html#nav-approvals", {"pending_approvals": count, "push": True})
