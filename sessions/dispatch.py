"""Who runs next: concurrency limits and queue order, enforced in the database.

Limits (settings, 0 = none): running sessions overall (SESSION_LIMIT_GLOBAL),
per repository and per agent (the session's preferred agent). They are counted
in the database under one lock (a PostgreSQL advisory lock; on SQLite every
write transaction is already exclusive), so they hold across worker hosts.

A queued session over a limit stays queued. When a slot frees, `session_dispatch`
enqueues the sessions that may start now, in priority-then-age order; a claim
is refused to a session while another that fits the limits is ahead of it, so
the order holds even when jobs arrive out of order. The job for a queued session
may be delivered any number of times: only one claim succeeds.
"""

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from sessions import sql
from sessions.models import CLOCK_STATES, CodingSession
from sessions.models import SessionStatus as S
from sessions.services import session_claim, session_enqueue_execution, session_record_event

logger = logging.getLogger(__name__)

DISPATCH_LOCK_KEY = 0x1D0_5E55  # any constant shared by every process
STALE_QUEUED_SECONDS = 30


def limits_configured() -> bool:
    return bool(
        settings.SESSION_LIMIT_GLOBAL or settings.SESSION_LIMIT_PER_REPOSITORY or settings.SESSION_LIMIT_PER_AGENT
    )


def _dispatch_lock() -> None:
    """Serialise claims and dispatches across processes for the rest of the transaction."""
    sql.advisory_transaction_lock(DISPATCH_LOCK_KEY)


class RunningCounts:
    """Running sessions overall, per repository and per agent, updated as the dispatcher plans."""

    def __init__(self) -> None:
        running = CodingSession.objects.filter(status__in=CLOCK_STATES, deleted_at__isnull=True)
        self.total = running.count()
        self.by_repository = dict(running.values_list("repository").annotate(n=Count("id")))
        self.by_agent = dict(
            running.filter(agent__isnull=False).values_list("agent_id").annotate(n=Count("id"))
        )

    def blocking_limit(self, session: CodingSession) -> str | None:
        """The name of the limit `session` would break by starting now, or None."""
        if settings.SESSION_LIMIT_GLOBAL and self.total >= settings.SESSION_LIMIT_GLOBAL:
            return f"global limit of {settings.SESSION_LIMIT_GLOBAL} running sessions"
        if settings.SESSION_LIMIT_PER_REPOSITORY and (
            self.by_repository.get(session.repository, 0) >= settings.SESSION_LIMIT_PER_REPOSITORY
        ):
            return f"limit of {settings.SESSION_LIMIT_PER_REPOSITORY} running sessions per repository"
        if settings.SESSION_LIMIT_PER_AGENT and session.agent_id and (
            self.by_agent.get(session.agent_id, 0) >= settings.SESSION_LIMIT_PER_AGENT
        ):
            return f"limit of {settings.SESSION_LIMIT_PER_AGENT} running sessions per agent"
        return None

    def add(self, session: CodingSession) -> None:
        self.total += 1
        self.by_repository[session.repository] = self.by_repository.get(session.repository, 0) + 1
        if session.agent_id:
            self.by_agent[session.agent_id] = self.by_agent.get(session.agent_id, 0) + 1


def queued_in_order(now: datetime | None = None) -> QuerySet[CodingSession]:
    """Queued sessions that may start now (backoff over), in priority-then-age order."""
    now = now or timezone.now()
    return (
        CodingSession.objects.filter(status=S.QUEUED, deleted_at__isnull=True)
        .filter(Q(not_before__isnull=True) | Q(not_before__lte=now))
        .order_by("priority", "queued_at", "id")
    )


def session_claim_next(*, session_id: int, worker_id: str) -> CodingSession | None:
    """Claim the queued session for `worker_id` if the limits and the queue order allow; else None.

    Without limits this is the plain compare-and-set claim.
    """
    if not limits_configured():
        return session_claim(session_id=session_id, worker_id=worker_id)
    with transaction.atomic():
        _dispatch_lock()
        session = CodingSession.objects.filter(pk=session_id, status=S.QUEUED, deleted_at__isnull=True).first()
        if session is None:
            return None
        counts = RunningCounts()
        blocked_by = counts.blocking_limit(session)
        if blocked_by is None:
            ahead = _first_startable(counts, exclude_id=session.pk, before=session)
            if ahead is not None:
                blocked_by = f"{ahead.reference} is ahead in the queue"
                session_enqueue_execution(session=ahead)
        if blocked_by is not None:
            _note_waiting(session, blocked_by)
            return None
        return session_claim(session_id=session_id, worker_id=worker_id)


def _first_startable(counts: RunningCounts, *, exclude_id: int, before: CodingSession) -> CodingSession | None:
    """The first queued session ahead of `before` that could start now, if any."""
    ahead = queued_in_order().exclude(pk=exclude_id).filter(
        Q(priority__lt=before.priority)
        | Q(priority=before.priority, queued_at__lt=before.queued_at)
        | Q(priority=before.priority, queued_at=before.queued_at, id__lt=before.pk)
    )
    for candidate in ahead[:50]:
        if counts.blocking_limit(candidate) is None:
            return candidate
    return None


def _note_waiting(session: CodingSession, reason: str) -> None:
    """Say once why a session waits (again when the reason changes)."""
    if (session.metadata or {}).get("waiting_for") == reason:
        return
    CodingSession.objects.filter(pk=session.pk).update(metadata={**(session.metadata or {}), "waiting_for": reason})
    session_record_event(session=session, type="session.waiting", payload={"reason": reason})


def session_dispatch(*, now: datetime | None = None) -> int:
    """Enqueue the queued sessions that may start now; returns how many were enqueued.

    Called when a run ends (a slot frees) and periodically (backoffs that ran out).
    Enqueuing twice is harmless: the claim lets one delivery through.
    """
    now = now or timezone.now()
    candidates = queued_in_order(now)
    if not limits_configured():
        # Every queued session already has its job in the broker; only one waiting
        # suspiciously long (a lost message) is enqueued again. No counts to keep, so no lock:
        # one query (the periodic dispatch's; a run's end dispatches only under limits).
        stale = now - timedelta(seconds=STALE_QUEUED_SECONDS)
        lost = list(
            candidates.filter(queued_at__lt=stale).filter(Q(not_before__isnull=True) | Q(not_before__lt=stale))[:200]
        )
        for session in lost:
            session_enqueue_execution(session=session)
        return len(lost)
    with transaction.atomic():
        _dispatch_lock()
        counts = RunningCounts()
        started = 0
        for session in candidates[:200]:
            if counts.blocking_limit(session) is not None:
                continue
            session_enqueue_execution(session=session)
            counts.add(session)
            started += 1
            if settings.SESSION_LIMIT_GLOBAL and counts.total >= settings.SESSION_LIMIT_GLOBAL:
                break
    return started
