"""Tool-permission requests during a turn: recorded, answered through the API, never waiting forever.

OpenCode asks (`permission.asked`) when a session's policy says `ask` for a tool.
The worker records each request as a PermissionRequest row; operators answer it
through the API or the console (which only write the row: the worker owns the
OpenCode server), and the worker forwards the answer to OpenCode on its next
control tick. A request nobody answers gets PERMISSION_DEFAULT_REPLY after
PERMISSION_TIMEOUT_SECONDS; one waiting longer than PERMISSION_DEGRADE_SECONDS
marks the session degraded until it is answered.
"""

import logging

from django.conf import settings

from sessions import permissions
from sessions.opencode.errors import OpenCodeError

logger = logging.getLogger(__name__)


class PermissionWatch:
    """The permission requests of one turn: which are open since when, recording them, forwarding
    the answers, and the default reply once one expires."""

    def __init__(self, session_run, turn):
        self.session_run = session_run
        self.turn = turn
        self.asked_at = {}  # OpenCode permission id -> monotonic time first seen

    def take(self, requests, now):
        """Record requests the translator has seen that are new."""
        for request in requests:
            request_id = request.get("id")
            if not request_id or request_id in self.asked_at:
                continue
            self.asked_at[request_id] = now
            permissions.permission_request_record(
                session_id=self.session_run.session_id, task_id=self.turn.task.pk,
                opencode_session_id=self.turn.opencode_session_id, request=request,
            )

    def forward_replies(self):
        """Send OpenCode the answers operators gave (and the defaults applied on expiry)."""
        for request in permissions.permission_requests_to_forward(session_id=self.session_run.session_id):
            try:
                self.turn.client.reply_permission(request.opencode_id, request.reply)
            except OpenCodeError as error:
                # Already settled on OpenCode's side (the turn ended, or it was answered there).
                logger.info("permission %s could not be forwarded: %s", request.opencode_id, error)
            permissions.permission_request_forwarded(request=request)
            self.asked_at.pop(request.opencode_id, None)

    def expire(self, now):
        for request_id, since in list(self.asked_at.items()):
            if now - since >= settings.PERMISSION_TIMEOUT_SECONDS:
                permissions.permission_request_expire(
                    session=self.session_run.session, opencode_id=request_id,
                    reply=settings.PERMISSION_DEFAULT_REPLY,
                    after_seconds=settings.PERMISSION_TIMEOUT_SECONDS,
                )
                self.forward_replies()

    def waiting_too_long(self, now):
        return any(now - since >= settings.PERMISSION_DEGRADE_SECONDS for since in self.asked_at.values())
