"""Celery jobs of the sessions app: thin, keyed by id, harmless when delivered twice.

Import direction (HackSoft's): services import this module at module level to enqueue jobs; the
jobs import services (and the execution engine) inside their bodies, so loading the services never
loads the engine and no module cycle runs through here.
"""

import logging
import os
import socket

from celery import shared_task

from orchestrator.errors import NotFound
from sessions.models import CodingSession

logger = logging.getLogger(__name__)


def worker_identity(task_request) -> str:
    """A stable id for the worker process running this job: host, pid and Celery hostname."""
    hostname = getattr(task_request, "hostname", None) or socket.gethostname()
    return f"{hostname}:{os.getpid()}"


@shared_task(name="sessions.execute_session", acks_late=True, bind=True)
def execute_session(self, session_id: int) -> str | None:
    """Claim the queued session and run it; then, under concurrency limits, let the next queued session in.

    A missing session is logged and ignored; a session that is no longer queued
    (claimed by another delivery, cancelled, deleted) is left alone, and one over a
    concurrency limit stays queued until `session_dispatch` enqueues it again.
    """
    from sessions.dispatch import limits_configured, session_claim_next, session_dispatch
    from sessions.execution.session_run import run_session

    session = session_claim_next(session_id=session_id, worker_id=worker_identity(self.request))
    if session is None:
        if not CodingSession.objects.filter(pk=session_id).exists():
            logger.warning("execute_session: session %s does not exist; nothing to do", session_id)
        else:
            logger.info("execute_session: session %s not claimed (not queued, or waiting for a slot)", session_id)
        return None
    if limits_configured():
        # A session that found this one ahead of it in the queue stepped back and waits to be
        # dispatched; now that this one holds its slot, let it in if another slot is free.
        session_dispatch()
    try:
        return run_session(session=session)
    except NotFound:
        # Sessions are only soft-deleted; a row that vanished mid-run (a flushed test database)
        # leaves nothing to record.
        logger.warning("execute_session: session %s disappeared during its run", session_id)
        return None
    finally:
        if limits_configured():
            # A slot freed: let the next queued session in. Without limits every queued session
            # already has its job in the broker, and the periodic dispatch (every 5 s) re-enqueues
            # one whose message was lost: no query at the end of every run for it.
            session_dispatch()


@shared_task(name="sessions.dispatch", acks_late=True, ignore_result=True)
def dispatch() -> int:
    """Enqueue queued sessions that may start now (a slot freed, a retry's backoff ran out)."""
    from sessions.dispatch import session_dispatch

    return session_dispatch()


@shared_task(name="sessions.reconcile", acks_late=True, ignore_result=True)
def reconcile() -> dict[str, str]:
    """Recover sessions whose worker stopped heartbeating."""
    from sessions.recovery import session_reconcile

    return session_reconcile()


@shared_task(name="sessions.cleanup_workspaces", acks_late=True, ignore_result=True)
def cleanup_workspaces() -> int:
    """Remove worktrees of sessions that ended past the retention period (branches stay)."""
    from sessions.recovery import session_cleanup_workspaces

    return session_cleanup_workspaces()
