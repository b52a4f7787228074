"""Whether a session run may go on: control, deadline, health (degrade/recover) and budgets.

Every half second the run looks at its session row (task threads at the worker's shared read of all
its sessions' rows, sessions/execution/control.py, which also heartbeats them). When an operator (or
the reconciler) has moved it out of running/degraded, or another worker owns it, the run stops;
the deadline and the budgets are enforced from the same row.
"""

import logging
import threading

from orchestrator.errors import Conflict
from sessions import services as session_services
from sessions.execution import control
from sessions.models import CLOCK_STATES, CodingSession
from sessions.models import SessionStatus as S
from sessions.opencode.client import OpenCodeClient
from sessions.opencode.errors import OpenCodeError
from sessions.services import Actor
from sessions.sql import ControlRow

logger = logging.getLogger(__name__)


class SessionEnded(Exception):
    """The session left running/degraded (pause, stop, timeout, budget, lost ownership): stop working."""

    def __init__(self, status: str, reason: str = ""):
        super().__init__(f"session is {status}: {reason}" if reason else f"session is {status}")
        self.status = status
        self.reason = reason


def abort_turn(client: OpenCodeClient, opencode_session_id: str) -> None:
    """Abort an OpenCode turn; one that has already ended (or a server that is gone) is logged."""
    try:
        client.abort(opencode_session_id)
    except OpenCodeError as error:
        logger.warning("abort of %s failed: %s", opencode_session_id, error)


class RunGuard:
    """The stop signal of one session run, and the checks that raise it.

    Owns: the run's `ending` event and the SessionEnded it carries to every task thread
    (`end`), the control check of the session row (status, owner, deadline), the degraded/running
    transitions the run drives, and the token and cost budgets. Every check raises SessionEnded
    when the run must stop."""

    def __init__(self, *, session: CodingSession, actor: Actor):
        self.session = session
        self.session_id = session.pk
        self.worker_id = session.worker_id
        self.actor = actor
        self.ending = threading.Event()
        self.ended_by = None

    def end(self, error: BaseException) -> None:
        """Tell every task thread the run is ending and why (they abort their turns the same way)."""
        self.ended_by = error if isinstance(error, SessionEnded) else SessionEnded("ending", str(error))
        self.ending.set()

    def check_control(self, *, shared: bool = False) -> ControlRow:
        """The session's control row; raise SessionEnded when the run must stop; enforce the deadline.
        `shared`: look at the row of the process's latest shared read (control.latest_row, for the
        periodic checks of task threads) instead of reading it now."""
        if self.ending.is_set():
            raise self.ended_by
        current = control.latest_row(self.session_id) if shared else control.read_row(self.session_id)
        if current is None or current.deleted_at is not None:
            raise SessionEnded("deleted")
        if current.status not in CLOCK_STATES:
            raise SessionEnded(current.status, "changed by someone else")
        if current.worker_id != self.worker_id:
            # "lost": the other worker's run carries the tasks on; this one must not touch them.
            raise SessionEnded("lost", f"now owned by {current.worker_id}")
        if current.elapsed_seconds() > current.max_duration_seconds:
            try:
                session_services.session_timeout(
                    session=self.session, actor=self.actor,
                    error={"type": "timeout", "message": f"deadline of {current.max_duration_seconds} s passed",
                           "context": {"elapsed_seconds": round(current.elapsed_seconds(), 1)}},
                )
            except Conflict:
                pass
            raise SessionEnded(S.TIMEOUT, "deadline passed")
        return current

    def degrade(self, reason: str) -> bool:
        """running -> degraded; False when the session was not running (someone moved it)."""
        try:
            session_services.session_degrade(session=self.session, actor=self.actor, reason=reason)
            return True
        except Conflict:
            return False

    def recover(self, reason: str) -> bool:
        """degraded -> running; False when the session was not degraded."""
        try:
            session_services.session_recover(session=self.session, actor=self.actor, reason=reason)
            return True
        except Conflict:
            return False

    def enforce_budget(self, current: ControlRow, client: OpenCodeClient, opencode_session_id: str) -> None:
        """Hard limit: abort and fail. Soft limit: pause, saying why (resuming continues past it).

        `current` is the session row check_control just read."""
        tokens = current.tokens_total
        over_hard = (current.token_budget_hard is not None and tokens >= current.token_budget_hard) or (
            current.cost_budget_hard is not None and current.cost >= current.cost_budget_hard
        )
        if over_hard:
            abort_turn(client, opencode_session_id)
            error = {
                "type": "budget_exceeded",
                "message": "hard budget limit reached",
                "context": {
                    "tokens": tokens,
                    "cost": str(current.cost),
                    "token_budget_hard": current.token_budget_hard,
                    "cost_budget_hard": str(current.cost_budget_hard) if current.cost_budget_hard is not None else None,
                },
            }
            try:
                session_services.session_fail(session=self.session, actor=self.actor, error=error)
            except Conflict:
                pass
            raise SessionEnded(S.FAILED, "hard budget limit reached")
        soft_passed = (current.metadata or {}).get("soft_budget_passed")
        over_soft = (current.token_budget_soft is not None and tokens >= current.token_budget_soft) or (
            current.cost_budget_soft is not None and current.cost >= current.cost_budget_soft
        )
        if over_soft and not soft_passed:
            abort_turn(client, opencode_session_id)
            session_services.session_budget_soft_pause(session=self.session, actor=self.actor, tokens=tokens,
                                                       cost=current.cost)
            raise SessionEnded(S.PAUSED, "soft budget limit reached")
