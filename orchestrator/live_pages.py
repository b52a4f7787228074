"""Live console pages: which session events change each page, what it re-renders, and the
consumer that pushes it.

/ws/console/overview | sessions | approvals | agents   (`?after=<event id>` and the page's filters)

Each page joins the all-sessions group. An event the page cares about marks what it changes
(for the sessions list: that session's row; a new session is counted, not inserted, so the
list never jumps); changes are gathered for COALESCE_SECONDS and then sent as one rendered
fragment, out of band, made by the same partials as the page. With `after` (the newest event
id when the page was rendered), the events committed since are read from the database first,
so nothing between the render and the connection is missed; an event that then also arrives
live is counted once.
"""

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.http import QueryDict
from django.template.loader import render_to_string

from orchestrator import events
from orchestrator import selectors as fleet_selectors
from orchestrator.consumers import DirectDispatchMixin
from orchestrator.roles import user_is_operator
from sessions.models import SessionEvent

logger = logging.getLogger(__name__)

COALESCE_SECONDS = 0.2
REPLAY_LIMIT = 500
SEEN_KEPT = 2 * REPLAY_LIMIT


@dataclass
class Changes:
    """What the events since the last push changed, for one connection."""

    sessions: set = field(default_factory=set)
    created: int = 0
    any: bool = False


@dataclass(frozen=True)
class LivePage:
    wants: Callable[[str], bool]
    # (changes, params, is_operator, created_total) -> html, or several fragments sent as one message
    # each; reads the database.
    render: Callable[..., str | list[str]]


def _overview_wants(kind):
    return kind.startswith(("session.", "task.", "permission."))


def _render_overview(changes, params, is_operator, created_total):
    overview = fleet_selectors.fleet_overview()
    html = render_to_string("overview.html#overview", {"overview": overview, "push": True})
    return html + render_to_string("base.html#nav-approvals", {"pending_approvals": overview["pending_approvals"],
                                                             "push": True})


def _sessions_wants(kind):
    return kind in {"session.created", "session.transition", "session.checkpoint", "task.routed", "task.assigned"}


def _render_sessions(changes, params, is_operator, created_total):
    from sessions.fleet_views import render_session_rows

    return render_session_rows(session_ids=changes.sessions, created=created_total, is_operator=is_operator)


def _approvals_wants(kind):
    return kind.startswith("permission.")


def _render_approvals(changes, params, is_operator, created_total):
    from sessions.fleet_views import render_inbox

    return render_inbox(params=params, is_operator=is_operator)


def _agents_wants(kind):
    return kind.startswith("task.") or kind == "session.transition"


def _render_agents(changes, params, is_operator, created_total):
    from agents.views import render_agent_rows

    return render_agent_rows(params=params)


# The renderers import the page modules when first used: this module is loaded by the ASGI
# routing, and the page modules pull in the API and the forms.
PAGES = {
    "overview": LivePage(_overview_wants, _render_overview),
    "sessions": LivePage(_sessions_wants, _render_sessions),
    "approvals": LivePage(_approvals_wants, _render_approvals),
    "agents": LivePage(_agents_wants, _render_agents),
}


def _after(query):
    values = query.getlist("after")
    try:
        return max(0, int(values[-1])) if values else None
    except ValueError:
        return None


@database_sync_to_async
def _missed(after):
    return list(
        SessionEvent.objects.filter(pk__gt=after).order_by("pk").values("id", "session_id", "type")[:REPLAY_LIMIT]
    )


class LivePageConsumer(DirectDispatchMixin, AsyncWebsocketConsumer):
    """Pushes re-rendered parts of one console page (see the module docstring).

    4401 for an anonymous user, 4404 for an unknown page. Operator buttons are rendered only
    for operators, as on the page itself.
    """

    page = None

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.page = PAGES.get(self.scope["url_route"]["kwargs"]["page"])
        if self.page is None:
            await self.close(code=4404)
            return
        query = QueryDict(self.scope.get("query_string", b"").decode("latin1"))
        after = _after(query)
        self.params = query.copy()
        self.params.pop("after", None)
        self.is_operator = await database_sync_to_async(user_is_operator)(user)
        self.changes, self.created_total, self.seen, self.flush = Changes(), 0, set(), None
        await self.channel_layer.group_add(events.ALL_SESSIONS_GROUP, self.channel_name)
        await self.accept()
        if after is not None:
            while True:  # in batches until caught up; live broadcasts wait in the channel meanwhile
                missed = await _missed(after)
                for event in missed:
                    self._note(event)
                if len(missed) < REPLAY_LIMIT:
                    break
                after = missed[-1]["id"]
            if self.changes.any:
                await self._push()

    async def disconnect(self, code):
        if self.page is not None:
            await self.channel_layer.group_discard(events.ALL_SESSIONS_GROUP, self.channel_name)
        if self.flush is not None:
            self.flush.cancel()

    def _note(self, event):
        """Record what `event` changes; False when it was already counted or the page ignores it."""
        if event["id"] in self.seen or not self.page.wants(event["type"]):
            return False
        self.seen.add(event["id"])
        if len(self.seen) > SEEN_KEPT:
            # Replayed ids are the only ones live delivery can repeat, and they are the oldest.
            self.seen = set(sorted(self.seen)[-REPLAY_LIMIT:])
        self.changes.any = True
        if event["type"] == "session.created":
            self.changes.created += 1
        else:
            self.changes.sessions.add(event["session_id"])
        return True

    async def session_event(self, message):
        if self._note(message["event"]) and self.flush is None:
            self.flush = asyncio.get_running_loop().create_task(self._push_later())

    async def _push_later(self):
        try:
            # Events noted while a push renders are pushed by the next round of this loop.
            while self.changes.any:
                await asyncio.sleep(COALESCE_SECONDS)
                await self._push()
        except Exception:  # a failed render must not end the feed: the next change renders again
            logger.exception("live page push failed")
        finally:
            self.flush = None

    async def _push(self):
        changes, self.changes = self.changes, Changes()
        self.created_total += changes.created
        rendered = await database_sync_to_async(self.page.render)(
            changes, self.params, self.is_operator, self.created_total
        )
        for html in [rendered] if isinstance(rendered, str) else rendered:
            if html.strip():
                await self.send(text_data=html)
