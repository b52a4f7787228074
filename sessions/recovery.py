"""Recovery: sessions whose worker died, automatic retries, and workspace retention.

A worker heartbeats each session it runs (every SESSION_HEARTBEAT_SECONDS).
`session_reconcile` (a periodic job) finds running sessions whose heartbeat is
older than SESSION_WORKER_LOST_SECONDS: each becomes orphaned with the reason,
then, while retries remain, is retried automatically after SPEC's backoff,
resuming from its latest checkpoint. If its OpenCode turn still runs on a
shared server (OPENCODE_URL), the retry re-attaches to it instead of restoring
the checkpoint. A session is therefore never left running with nobody running it.
"""

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from agents.models import Agent
from agents.services import agent_release
from orchestrator.errors import Conflict, ValidationFailed
from sessions.execution import workspace
from sessions.models import CodingSession
from sessions.models import SessionStatus as S
from sessions.opencode.errors import OpenCodeError
from sessions.opencode.server import ExistingServer
from sessions.services import (
    Actor,
    session_orphan,
    session_retry,
    session_start,
    session_take_resume_point,
)
from tasks.models import Task, TaskStatus

logger = logging.getLogger(__name__)

RECONCILER = Actor.system("reconciler")
ENDED = (S.COMPLETED, S.PARTIALLY_COMPLETED, S.FAILED, S.TIMEOUT, S.STOPPED, S.CANCELLED, S.ORPHANED)


def retry_delay_seconds(attempt: int) -> float:
    """Wait before automatic retry attempt n (1-based): min(base * 2^(n-1), 5 min); SPEC's base is 10 s."""
    return min(settings.SESSION_RETRY_BASE_SECONDS * 2 ** (attempt - 1), 300.0)


def session_retry_automatically(*, session_id: int, reason: str, keep_opencode_turn: bool = False) -> int | None:
    """Retry a failed, timed-out or orphaned session after the backoff, if retries remain.

    Returns the new retry count, or None when none remain. With keep_opencode_turn the
    next run re-attaches to the task's OpenCode session instead of restoring a checkpoint.
    """
    session = CodingSession.objects.get(pk=session_id)
    if session.retry_count >= session.max_retries:
        return None
    retried = session_retry(session=session, actor=RECONCILER, reason=reason)
    if keep_opencode_turn:
        session_take_resume_point(session_id=session_id)
    delay = retry_delay_seconds(retried.retry_count)
    session_start(session=retried, actor=RECONCILER, reason=f"automatic retry {retried.retry_count} in {delay:.0f} s",
                  countdown=delay)
    return retried.retry_count


def lost_sessions(*, now: datetime | None = None) -> QuerySet[CodingSession]:
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.SESSION_WORKER_LOST_SECONDS)
    return CodingSession.objects.filter(status__in=[S.RUNNING, S.DEGRADED], deleted_at__isnull=True).filter(
        Q(worker_heartbeat_at__lt=cutoff) | Q(worker_heartbeat_at__isnull=True, run_started_at__lt=cutoff)
    )


def session_reconcile(
    *, now: datetime | None = None, opencode_turn_alive: Callable[[CodingSession], bool] | None = None,
) -> dict[str, str]:
    """Orphan sessions whose worker is gone and retry them; returns {reference: what was done}.

    `opencode_turn_alive(session)` says whether the session's OpenCode turn still runs on a
    server this process can reach (default: asks the shared OPENCODE_URL server, if any).
    """
    now = now or timezone.now()
    opencode_turn_alive = opencode_turn_alive or _turn_alive_on_shared_server
    done = {}
    for session in lost_sessions(now=now):
        silent = (now - (session.worker_heartbeat_at or session.run_started_at)).total_seconds()
        reason = f"worker {session.worker_id or '?'} silent for {silent:.0f} s"
        try:
            session_orphan(
                session=session,
                actor=RECONCILER,
                reason=reason,
                error={"type": "worker_lost", "message": reason, "context": {"worker_id": session.worker_id}},
            )
        except Conflict:
            continue  # its worker (or an operator) moved it meanwhile
        alive = opencode_turn_alive(session)
        retry = session_retry_automatically(
            session_id=session.pk, reason=f"automatic retry: {reason}", keep_opencode_turn=alive
        )
        if retry is None:
            _release_interrupted_tasks(session)
            done[session.reference] = "orphaned (no retries left)"
        else:
            done[session.reference] = f"retry {retry} ({'re-attach' if alive else 'resume from checkpoint'})"
        logger.warning("%s: %s", session.reference, done[session.reference])
    return done


def _turn_alive_on_shared_server(session: CodingSession) -> bool:
    if not settings.OPENCODE_URL or not session.opencode_session_id:
        return False
    try:
        statuses = ExistingServer().client(directory=session.workspace_path or None).status()
    except OpenCodeError:
        return False
    return (statuses.get(session.opencode_session_id) or {}).get("type") in ("busy", "retry")


def _release_interrupted_tasks(session: CodingSession) -> None:
    """A session orphaned for good gives back the agent capacity its interrupted tasks held."""
    for task in Task.objects.filter(
        session=session, status__in=[TaskStatus.ASSIGNED, TaskStatus.IN_PROGRESS], assigned_agent__isnull=False
    ):
        agent = Agent.objects.filter(pk=task.assigned_agent_id).first()
        if agent is not None:
            agent_release(agent=agent)


def session_cleanup_workspaces(*, now: datetime | None = None) -> int:
    """Remove worktrees of sessions that ended more than WORKSPACE_RETENTION_HOURS ago (branches stay):
    the session's, and those of its tasks a run did not remove (a worker killed mid-graph)."""
    now = now or timezone.now()
    cutoff = now - timedelta(hours=settings.WORKSPACE_RETENTION_HOURS)
    removed = 0
    for session in CodingSession.objects.filter(status__in=ENDED, ended_at__lt=cutoff).exclude(workspace_path=""):
        path = Path(session.workspace_path)
        try:
            repository = workspace.resolve_repository(session.repository, allowed_roots=settings.REPOSITORY_ROOTS)
        except (ValidationFailed, workspace.GitError) as error:  # the repository is gone or moved
            logger.info("%s: repository unavailable (%s); removing the worktree folder only",
                        session.reference, error)
            repository = None
        if repository is not None:
            for task_path in workspace.worktrees_of_branches(repository=repository,
                                                             prefix=f"ind/{session.reference}--task-"):
                workspace.remove_workspace(repository=repository, path=task_path)
                removed += 1
        if path.exists():
            workspace.remove_workspace(repository=repository or path, path=path)
            removed += 1
        CodingSession.objects.filter(pk=session.pk).update(workspace_path="")
    removed += _cleanup_stale_spares(cutoff)
    return removed


def _cleanup_stale_spares(cutoff: datetime) -> int:
    """Spare worktrees no session took, older than the cutoff (a killed worker's, or long unused)."""
    root = Path(settings.WORKSPACE_ROOT)
    removed = 0
    for path in sorted(root.glob(f"{workspace.SPARE_PREFIX}*")) if root.is_dir() else []:
        made = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
        if made < cutoff and workspace.is_unadopted_spare(path):
            workspace.remove_workspace(repository=workspace.repository_of(path), path=path)
            removed += 1
    return removed
