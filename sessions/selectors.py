"""Reads of coding sessions: filtered keyset-paginated lists, stats, the event log."""

from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import connection
from django.db.models import Count, F, Max, Q, QuerySet
from django.utils import timezone

from orchestrator.errors import NotFound, PermissionRefused
from orchestrator.roles import user_can_view
from sessions.health_score import AT_RISK_SECONDS
from sessions.models import (
    Checkpoint,
    CodingSession,
    PermissionRequest,
    PermissionRequestStatus,
    SessionEvent,
    SessionStatus,
    SessionTransition,
)

PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 100
EVENTS_LIMIT_MAX = 500


@dataclass(frozen=True)
class SessionFilters:
    """Every filter optional. Lists hold alternatives (status in [...])."""

    status: tuple = ()
    session_type: tuple = ()
    priority: tuple = ()
    agent_id: int | None = None
    repository: str | None = None
    tag: str | None = None
    search: str | None = None
    created_after: object = None
    created_before: object = None
    parent_id: int | None = None


@dataclass(frozen=True)
class Page:
    items: list
    next_cursor: int | None


def session_get_for_user(user: AbstractBaseUser | AnonymousUser, session_id: int | str,
                         for_update: bool = False) -> CodingSession:
    """The session `session_id` as `user` may see it.

    Raises PermissionRefused for a user who may not view sessions and NotFound
    for an unknown or deleted session (or an id that is not a number: it comes from a URL). With
    `for_update` the row is locked, so the caller must be inside a transaction.
    """
    if not user_can_view(user):
        raise PermissionRefused("Sign in to see sessions")
    try:
        session_id = int(session_id)
    except (TypeError, ValueError):
        raise NotFound(f"Session {session_id} does not exist") from None
    queryset = CodingSession.objects.select_related("agent", "created_by").filter(deleted_at__isnull=True)
    if for_update:
        queryset = queryset.select_for_update(of=("self",))
    found = queryset.filter(pk=session_id).first()
    if found is None:
        raise NotFound(f"Session {session_id} does not exist", details={"id": session_id})
    return found


def permission_requests_for(*, session: CodingSession, status: str | None = None) -> QuerySet[PermissionRequest]:
    """The session's tool-permission requests, oldest first (only those in `status` when given)."""
    requests = PermissionRequest.objects.filter(session=session)
    if status is not None:
        requests = requests.filter(status=status)
    return requests.order_by("id")


def sessions_visible() -> QuerySet[CodingSession]:
    return CodingSession.objects.filter(deleted_at__isnull=True)


def _filtered(filters: SessionFilters) -> QuerySet[CodingSession]:
    queryset = sessions_visible()
    if filters.status:
        queryset = queryset.filter(status__in=filters.status)
    if filters.session_type:
        queryset = queryset.filter(session_type__in=filters.session_type)
    if filters.priority:
        queryset = queryset.filter(priority__in=filters.priority)
    if filters.agent_id is not None:
        queryset = queryset.filter(agent_id=filters.agent_id)
    if filters.repository:
        queryset = queryset.filter(repository=filters.repository)
    if filters.parent_id is not None:
        queryset = queryset.filter(parent_id=filters.parent_id)
    if filters.tag:
        if connection.vendor == "postgresql":
            # jsonb containment, served by the GIN index on tags (migration 0002).
            queryset = queryset.filter(tags__contains=[filters.tag])
        else:
            # SQLite has no JSON containment lookup; tags are stored as a JSON list of
            # strings, so the quoted tag matches one element (SQLite's LIKE ignores ASCII case).
            queryset = queryset.filter(tags__icontains=f'"{filters.tag}"')
    if filters.search:
        term = filters.search.strip()
        # icontains on each column matches the pg_trgm GIN indexes (migration 0002).
        queryset = queryset.filter(
            Q(title__icontains=term) | Q(description__icontains=term) | Q(initial_prompt__icontains=term)
        )
    if filters.created_after is not None:
        queryset = queryset.filter(created_at__gte=filters.created_after)
    if filters.created_before is not None:
        queryset = queryset.filter(created_at__lt=filters.created_before)
    return queryset


def session_list(*, filters: SessionFilters | None = None, cursor: int | None = None,
                 page_size: int = PAGE_SIZE_DEFAULT) -> Page:
    """Newest first, keyset-paginated on id: `cursor` is the last id of the previous page.

    The page is stable under inserts (new sessions get larger ids and never shift
    later pages). Loads agent and creator in the same query; the long prompt is
    deferred.
    """
    page_size = max(1, min(int(page_size), PAGE_SIZE_MAX))
    filters = filters or SessionFilters()
    queryset = _filtered(filters).select_related("agent", "created_by").defer("initial_prompt")
    if filters.search and connection.vendor == "postgresql":
        rows = _search_rows(queryset, cursor, page_size + 1)
    else:
        if cursor is not None:
            queryset = queryset.filter(pk__lt=cursor)
        rows = list(queryset.order_by("-pk")[: page_size + 1])
    more = len(rows) > page_size
    rows = rows[:page_size]
    return Page(items=rows, next_cursor=rows[-1].pk if more and rows else None)


SEARCH_WINDOW = 1_000  # newest rows tested by LIKE alone: ~5 ms; a common term fills a page well within it


def _search_rows(queryset: QuerySet[CodingSession], cursor: int | None, limit: int) -> list[CodingSession]:
    """Newest `limit` rows of a text search, with a bounded cost whether the term is common or rare.

    PostgreSQL cannot estimate how many rows a '%term%' match selects; when it
    guesses "many", it walks the primary key backwards testing every row, which
    for a rare term reads the whole table. So: first the newest SEARCH_WINDOW
    ids (a common term fills the page there), then, for a rare term, the rest
    ordered by an expression the planner cannot serve from the primary key,
    which leaves it the trigram indexes and a sort of the few matches.
    """
    upper = cursor
    if upper is None:
        upper = (CodingSession.objects.aggregate(top=Max("pk"))["top"] or 0) + 1
    lower = upper - SEARCH_WINDOW
    rows = list(queryset.filter(pk__lt=upper, pk__gte=lower).order_by("-pk")[:limit])
    if len(rows) < limit and lower > 1:
        older = queryset.filter(pk__lt=lower).order_by((F("pk") + 0).desc())
        rows += list(older[: limit - len(rows)])
    return rows


def session_stats(*, now: datetime | None = None) -> dict:
    """Counts by status (every status present, zeros included), the total, and the
    running or degraded sessions with less than 300 s of their budget left."""
    now = now or timezone.now()
    counts = {status: 0 for status in SessionStatus.values}
    for row in sessions_visible().values("status").annotate(n=Count("id")):
        counts[row["status"]] = row["n"]
    running = sessions_visible().filter(status__in=[SessionStatus.RUNNING, SessionStatus.DEGRADED]).only(
        "id", "reference", "title", "status", "max_duration_seconds", "attempt_seconds", "run_started_at"
    )
    at_risk = []
    for session in running:
        left = session.max_duration_seconds - session.elapsed_seconds(now)
        if left < AT_RISK_SECONDS:
            at_risk.append(
                {"id": session.pk, "reference": session.reference, "title": session.title,
                 "status": session.status, "seconds_left": round(left, 1)}
            )
    at_risk.sort(key=lambda item: item["seconds_left"])
    return {"total": sum(counts.values()), "by_status": counts, "at_risk": at_risk}


def session_events_after(session_id: int, after_id: int | None = None, *,
                         limit: int = EVENTS_LIMIT_MAX) -> list[SessionEvent]:
    """The session's events with id > after_id, oldest first, at most `limit`."""
    queryset = SessionEvent.objects.filter(session_id=session_id)
    if after_id is not None:
        queryset = queryset.filter(pk__gt=after_id)
    return list(queryset.order_by("pk")[: max(1, min(int(limit), EVENTS_LIMIT_MAX))])


def session_events_before(
    session: CodingSession, before_id: int | None = None, *, limit: int = EVENTS_LIMIT_MAX
) -> list[SessionEvent]:
    """The newest `limit` events with id < before_id (all when None), oldest first: a window of
    the log by keyset on the event id (the (session, id) index serves it at any depth)."""
    queryset = SessionEvent.objects.filter(session_id=session.pk)
    if before_id is not None:
        queryset = queryset.filter(pk__lt=before_id)
    rows = list(queryset.order_by("-pk")[: max(1, min(int(limit), EVENTS_LIMIT_MAX + 1))])
    rows.reverse()
    return rows


def session_transitions(session: CodingSession) -> list[SessionTransition]:
    return list(session.transitions.select_related("actor_user").order_by("pk"))


def session_checkpoints(session: CodingSession) -> list[Checkpoint]:
    return list(session.checkpoints.order_by("sequence"))


def session_recent_events(session: CodingSession, *, limit: int = 50) -> list[SessionEvent]:
    """The newest `limit` events, oldest first."""
    rows = list(SessionEvent.objects.filter(session_id=session.pk).order_by("-pk")[:limit])
    rows.reverse()
    return rows


@dataclass(frozen=True)
class ApprovalFilters:
    """Filters of the approvals inbox; every one optional."""

    session_id: int | None = None
    permission: str | None = None
    agent_id: int | None = None
    repository: str | None = None


def approvals_pending(*, filters: ApprovalFilters | None = None, cursor: int | None = None,
                      page_size: int = PAGE_SIZE_DEFAULT) -> Page:
    """Pending permission requests across visible sessions, oldest first, keyset-paginated on id
    (`cursor` is the last id of the previous page). Loads the session, the task and its agent in
    the same query."""
    page_size = max(1, min(int(page_size), PAGE_SIZE_MAX))
    filters = filters or ApprovalFilters()
    queryset = PermissionRequest.objects.filter(
        status=PermissionRequestStatus.PENDING, session__deleted_at__isnull=True
    ).select_related("session", "task", "task__assigned_agent")
    if filters.session_id is not None:
        queryset = queryset.filter(session_id=filters.session_id)
    if filters.permission:
        queryset = queryset.filter(permission=filters.permission)
    if filters.agent_id is not None:
        queryset = queryset.filter(task__assigned_agent_id=filters.agent_id)
    if filters.repository:
        queryset = queryset.filter(session__repository=filters.repository)
    if cursor is not None:
        queryset = queryset.filter(pk__gt=cursor)
    rows = list(queryset.defer("session__initial_prompt").order_by("pk")[: page_size + 1])
    more = len(rows) > page_size
    rows = rows[:page_size]
    return Page(items=rows, next_cursor=rows[-1].pk if more and rows else None)


def approval_seconds_left(request, *, now=None) -> float:
    """Seconds before the default reply applies to a pending request (never below 0)."""
    age = ((now or timezone.now()) - request.created_at).total_seconds()
    return max(0.0, settings.PERMISSION_TIMEOUT_SECONDS - age)


def event_latest_id() -> int:
    """The newest event's id (0 when there is none): a live page's `after`, from which its feed
    catches up on what happened between the render and the WebSocket connection."""
    return SessionEvent.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
