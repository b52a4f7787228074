"""WebSocket feeds of session events, as JSON.

/ws/sessions           every session's events (the all-sessions group)
/ws/sessions/<id>      one session's events; `?after=<event id>` first replays
                       the events the client missed from the database, then
                       continues live

/ws/console/sessions/<id>   the same feed for the console's detail page, as
                       rendered HTML (htmx ws extension): each event appended
                       to #event-log, and the panels it changes replaced
                       out of band (see sessions.views.live_fragment)

Each message is the "event" part of the published message: {"id",
"session_id", "reference", "type", "payload", "created_at"}. The consumer joins
the group before reading the backlog, so nothing falls between the two; an
event that arrives both ways is sent once: within one session, event ids
increase in commit order (they are written under the session row lock), so
anything at or below the last id sent is a duplicate. Across sessions ids do
not arrive in order, so the all-sessions feed forwards everything.
"""

from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.urls import path

from orchestrator import events
from orchestrator.consumers import DirectDispatchMixin, JsonFramesConsumer
from orchestrator.errors import NotFound, PermissionRefused
from orchestrator.roles import user_is_operator
from sessions import selectors, services, views

REPLAY_BATCH = selectors.EVENTS_LIMIT_MAX


def _after_from_scope(scope):
    values = parse_qs(scope.get("query_string", b"").decode("latin1")).get("after")
    if not values:
        return None
    try:
        return max(0, int(values[-1]))
    except ValueError:
        return None


@database_sync_to_async
def _visible_session(user, session_id):
    try:
        return services.session_get_for_user(user, session_id)
    except (NotFound, PermissionRefused):
        return None


@database_sync_to_async
def _backlog(session_id, after_id, reference):
    return [
        services.event_message(event, reference)["event"]
        for event in selectors.session_events_after(session_id, after_id, limit=REPLAY_BATCH)
    ]


class SessionEventsConsumer(DirectDispatchMixin, JsonFramesConsumer):
    """Events of one session (with `session_id` in the route) or of all sessions."""

    groups_joined = ()

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        session_id = self.scope["url_route"]["kwargs"].get("session_id")
        self.last_sent_id = 0
        self.single_session = session_id is not None
        if session_id is None:
            self.groups_joined = (events.ALL_SESSIONS_GROUP,)
        else:
            session = await _visible_session(user, session_id)
            if session is None:
                await self.close(code=4404)
                return
            self.groups_joined = (events.session_group(session.pk),)
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        after = _after_from_scope(self.scope)
        if session_id is not None and after is not None:
            await self._replay(session.pk, after, session.reference)

    async def _replay(self, session_id, after, reference):
        # Batches until caught up; live messages queue in the channel meanwhile.
        while True:
            backlog = await _backlog(session_id, max(after, self.last_sent_id), reference)
            for event in backlog:
                await self._send_once(event)
            if len(backlog) < REPLAY_BATCH:
                return

    async def _send_once(self, event):
        if self.single_session:
            if event["id"] <= self.last_sent_id:
                return
            self.last_sent_id = event["id"]
        await self.send_json(event)

    async def disconnect(self, code):
        for group in self.groups_joined:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def session_event(self, message):
        await self._send_once(message["event"])


@database_sync_to_async
def _fragment(session_id, event, is_operator):
    return views.live_fragment(session_id=session_id, event=event, is_operator=is_operator)


class SessionConsoleConsumer(DirectDispatchMixin, AsyncWebsocketConsumer):
    """One session's events as HTML fragments for the console's detail page.

    Permission is checked on connect as for the JSON feed (4401 anonymous, 4404
    unknown or not visible). `?after=<event id>` (the last event the page
    rendered) replays what happened between the page load and the connection;
    an event is sent once even when replay and live delivery overlap.
    """

    session_id = None

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        session = await _visible_session(user, self.scope["url_route"]["kwargs"]["session_id"])
        if session is None:
            await self.close(code=4404)
            return
        self.session_id = session.pk
        self.last_sent_id = 0
        # Fragments carry the action buttons, which only operators get.
        self.is_operator = await database_sync_to_async(user_is_operator)(user)
        await self.channel_layer.group_add(events.session_group(session.pk), self.channel_name)
        await self.accept()
        after = _after_from_scope(self.scope)
        if after is not None:
            while True:
                backlog = await _backlog(session.pk, max(after, self.last_sent_id), session.reference)
                for event in backlog:
                    await self._send_once(event)
                if len(backlog) < REPLAY_BATCH:
                    break

    async def _send_once(self, event):
        if event["id"] <= self.last_sent_id:
            return
        self.last_sent_id = event["id"]
        await self.send(text_data=await _fragment(self.session_id, event, self.is_operator))

    async def disconnect(self, code):
        if self.session_id is not None:
            await self.channel_layer.group_discard(events.session_group(self.session_id), self.channel_name)

    async def session_event(self, message):
        await self._send_once(message["event"])


websocket_urlpatterns = [
    path("ws/sessions", SessionEventsConsumer.as_asgi()),
    path("ws/sessions/<int:session_id>", SessionEventsConsumer.as_asgi()),
    path("ws/console/sessions/<int:session_id>", SessionConsoleConsumer.as_asgi()),
]
