"""Whether one more session may be created for a user: the per-user cap on sessions that have not
ended (SESSION_LIMIT_PER_USER), so one client cannot fill the queues for everybody."""

from django.conf import settings

from orchestrator.errors import Conflict
from sessions.models import CodingSession, SessionStatus

S = SessionStatus
# Not ended: still waiting, running, or able to run again without a retry.
OPEN_STATES = (S.PENDING, S.QUEUED, S.RUNNING, S.PAUSED, S.DEGRADED)


class SessionLimitReached(Conflict):
    code = "session_limit"


def session_cap_check(*, user) -> None:
    """Raise SessionLimitReached when `user` already has SESSION_LIMIT_PER_USER open sessions.

    A count before the insert, not a lock: two creates racing at the cap may both pass, which a
    cap meant to stop a runaway client tolerates."""
    limit = settings.SESSION_LIMIT_PER_USER
    if not limit or user is None or not getattr(user, "pk", None):
        return
    open_count = CodingSession.objects.filter(
        created_by=user, deleted_at__isnull=True, status__in=OPEN_STATES
    ).count()
    if open_count >= limit:
        raise SessionLimitReached(
            f"{user.get_username()} already has {open_count} sessions that have not ended "
            f"(SESSION_LIMIT_PER_USER={limit}); finish, stop or cancel one first",
            details={"open_sessions": open_count, "limit": limit},
        )
