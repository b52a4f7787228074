"""WebSocket feeds of session events, as JSON.

/ws/sessions           every session's events (the all-sessions group)
/ws/sessions/<id>      one session's events; `?after=<event id>` first replays
                       the events the client missed from the database, then
                       continues live

/ws/console/sessions/<id>   the same feed for the console's detail page, as
                       rendered HTML (htmx ws extension): each event appended
                       to #event-log, and the panels it changes replaced
                       out of band (see sessions.panels.live_fragment)
/ws/console/sessions/<id>/graph   the task graph page: its SVG partial again
                       whenever a task event arrives (sessions.panels.graph_fragment)

Each message is the "event" part of the published message: {"id",
"session_id", "reference", "type", "payload", "created_at"}. The consumer joins
the group before reading the backlog, so nothing falls between the two; an
event that arrives both ways is sent once: within one session, event ids
increase in commit order (they are written under the session row lock), so
anything at or below the last id sent is a duplicate. Across sessions ids do
not arrive in order, so the all-sessions feed forwards everything.
"""

import asyncio
import logging
from collections import OrderedDict
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.urls import path

from orchestrator import broadcaster, events
from orchestrator.consumers import DirectDispatchMixin, JsonFramesConsumer, replay_after
from orchestrator.errors import NotFound, PermissionRefused
from orchestrator.roles import user_is_operator
from sessions import panels, selectors, services
from sessions.models import CodingSession, SessionEvent

logger = logging.getLogger(__name__)

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
        return selectors.session_get_for_user(user, session_id)
    except (NotFound, PermissionRefused):
        return None

async def _session_or_close(consumer) -> CodingSession | None:
    """The session of a console socket's URL when its user may see it; otherwise the socket is
    closed (4401 anonymous, 4404 unknown or not visible) and None is returned."""
    user = consumer.scope.get("user")
    if user is None or not user.is_authenticated:
        await consumer.close(code=4401)
        return None
    session = await _visible_session(user, consumer.scope["url_route"]["kwargs"]["session_id"])
    if session is None:
        await consumer.close(code=4404)
    return session



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
        await replay_after(after=max(after, self.last_sent_id), send=self._send_once, batch=REPLAY_BATCH,
                           fetch=lambda after_id: _backlog(session_id, after_id, reference))

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


async def _fragment(session_id, event, is_operator):
    """The console push for `event`. Most events (text, tools, steps of OpenCode) only render their
    own partial: that is done on the event loop, sparing each a hop to the database thread, which
    every render used to wait its turn for; the others read the database there."""
    if panels.fragment_reads_database(event["type"]):
        return await database_sync_to_async(panels.live_fragment)(
            session_id=session_id, event=event, is_operator=is_operator)
    return panels.live_fragment(session_id=session_id, event=event, is_operator=is_operator)


@database_sync_to_async
def _graph_fragment(session_id):
    return panels.graph_fragment(session_id=session_id)


# Every client watching a session gets the same fragment for an event (one for operators, one for
# viewers): the first consumer to need it renders it, the others in this process await that render.
# 200 watchers of one session cost one render per event, not 200. Keyed by the event loop too: a
# future belongs to the loop that made it.
RENDER_CACHE_SIZE = 1_024
_renders = OrderedDict()


async def shared_render(key, render):
    """The result of `render()` (a coroutine function), computed once per `key` in this process."""
    key = (id(asyncio.get_running_loop()), *key)
    future = _renders.get(key)
    if future is not None and future.done() and not future.cancelled() and future.exception() is None:
        return future.result()  # the common case for all watchers but the first: no await at all
    if future is None:
        future = _renders[key] = asyncio.ensure_future(render())
        while len(_renders) > RENDER_CACHE_SIZE:
            _renders.popitem(last=False)
    try:
        return await asyncio.shield(future)
    except Exception:
        _renders.pop(key, None)  # a failed render is tried again by the next client
        raise


async def render_event(session_id, event, is_operator):
    """The console fragment of `event` for an operator or a viewer, rendered once per process
    (shared_render) whoever asks: the fan-out for live events, each replaying watcher for the past."""
    return await shared_render(("event", session_id, event["id"], is_operator),
                               lambda: _fragment(session_id, event, is_operator))


class SessionFanOut:
    """One subscription of this process to a session's group, for all its console watchers here.

    Channels gives each consumer its own channel: every event then costs each watcher a
    deserialisation and a turn of its consumer loop before its frame is even written, which put
    a web process 8-12 s behind with 200 watchers of one session at 20 events/s. The fan-out
    receives each broadcast once, renders the event once per role its watchers have (operators get
    the action buttons) and offers the fragment to every watcher, which writes it. Rendering here
    rather than in each watcher (a shared_render lookup each) took ~9 % of the web process's CPU
    off the 200-watcher benchmark (docs/decisions/0251).
    """

    def __init__(self, session_id):
        self.session_id = session_id
        self.watchers = set()
        self.channel = None
        self.task = None

    async def start(self, layer):
        self.channel = await layer.new_channel(prefix="console-fanout.")
        await layer.group_add(events.session_group(self.session_id), self.channel)
        self.task = asyncio.ensure_future(self._run(layer))

    async def stop(self, layer):
        self.task.cancel()
        await layer.group_discard(events.session_group(self.session_id), self.channel)

    async def _run(self, layer):
        while True:
            message = await layer.receive(self.channel)
            batch = [each["event"] for each in broadcaster.unpack(message) if each.get("type") == "session.event"]
            if batch:
                await self._offer(batch)

    async def _offer(self, batch):
        """Render each event once per role the watchers have, then offer them all to every watcher:
        what came in one message goes out to each watcher in one frame. A watcher that joins
        meanwhile reads these events from the database (its replay)."""
        watchers = list(self.watchers)
        rendered = {role: [] for role in {watcher.is_operator for watcher in watchers}}
        for event in batch:
            for role, fragments in rendered.items():
                try:
                    fragments.append((event["id"], await render_event(self.session_id, event, role)))
                except Exception:  # one event's render must not end the fan-out of every later one
                    logger.exception("console push of event %s of session %s not rendered",
                                     event.get("id"), self.session_id)
        for watcher in watchers:
            watcher.offer(rendered[watcher.is_operator])


_fanouts = {}  # (event loop id, session id) -> SessionFanOut
_fanouts_lock = {}  # event loop id -> asyncio.Lock (a lock belongs to its loop)


def fanout_watchers(session_id):
    """How many console watchers this process's fan-out of the session feeds (on the running event
    loop); 0 when it has no fan-out for it."""
    fanout = _fanouts.get((id(asyncio.get_running_loop()), session_id))
    return len(fanout.watchers) if fanout is not None else 0


async def _watch(session_id, watcher, layer):
    loop_id = id(asyncio.get_running_loop())
    lock = _fanouts_lock.setdefault(loop_id, asyncio.Lock())
    async with lock:
        fanout = _fanouts.get((loop_id, session_id))
        if fanout is None:
            fanout = SessionFanOut(session_id)
            await fanout.start(layer)
            _fanouts[(loop_id, session_id)] = fanout
        fanout.watchers.add(watcher)


async def _unwatch(session_id, watcher, layer):
    loop_id = id(asyncio.get_running_loop())
    async with _fanouts_lock.setdefault(loop_id, asyncio.Lock()):
        fanout = _fanouts.get((loop_id, session_id))
        if fanout is None:
            return
        fanout.watchers.discard(watcher)
        if not fanout.watchers:
            del _fanouts[(loop_id, session_id)]
            await fanout.stop(layer)


class SessionConsoleConsumer(DirectDispatchMixin, AsyncWebsocketConsumer):
    """One session's events as HTML fragments for the console's detail page.

    Permission is checked on connect as for the JSON feed (4401 anonymous, 4404
    unknown or not visible). `?after=<event id>` (the last event the page
    rendered) replays what happened between the page load and the connection;
    an event is sent once even when replay and live delivery overlap.

    Live events come from the process's SessionFanOut, rendered, into an inbox; one writer task
    writes what the inbox holds as one frame (the htmx ws extension swaps each out-of-band
    element of a frame in order). An idle watcher gets each event at once; a busy web process
    writes fewer, larger frames instead of falling behind one frame per event per watcher. Live
    events that arrive during the replay wait in the inbox until it is done.
    """

    session_id = None
    _writer = None

    async def connect(self):
        session = await _session_or_close(self)
        if session is None:
            return
        user = self.scope["user"]
        self.session_id = session.pk
        self.last_sent_id = 0
        self._inbox = []
        self._replaying = True
        # Fragments carry the action buttons, which only operators get.
        self.is_operator = await database_sync_to_async(user_is_operator)(user)
        # Watch before reading the backlog, so nothing falls between the two.
        await _watch(session.pk, self, self.channel_layer)
        await self.accept()
        after = _after_from_scope(self.scope)
        try:
            if after is not None:
                await replay_after(after=max(after, self.last_sent_id), send=self._send_rendered, batch=REPLAY_BATCH,
                                   fetch=lambda after_id: _backlog(session.pk, after_id, session.reference))
        finally:
            self._replaying = False
        if self._inbox and self._writer is None:
            self._writer = asyncio.ensure_future(self._write())

    async def _send_rendered(self, event):
        if self._first_time(event["id"]):
            await self.send(text_data=await render_event(self.session_id, event, self.is_operator))

    def _first_time(self, event_id):
        """Whether the event is not sent yet (replay and live delivery may overlap); it is from now."""
        if event_id <= self.last_sent_id:
            return False
        self.last_sent_id = event_id
        return True

    def offer(self, fragments):
        """Live events' fragments from the fan-out, (event id, html) in order (called on this
        process's event loop)."""
        self._inbox.extend(fragments)
        if self._writer is None and not self._replaying:
            self._writer = asyncio.ensure_future(self._write())

    async def _write(self):
        """Write the inbox, one frame per turn, until it stays empty (the only writer of live
        events, so frames keep the events' order)."""
        try:
            while self._inbox:
                batch, self._inbox = self._inbox, []
                frame = "".join(fragment for event_id, fragment in batch if self._first_time(event_id))
                if frame:
                    await self.send(text_data=frame)
        finally:
            self._writer = None

    async def disconnect(self, code):
        if self.session_id is not None:
            await _unwatch(self.session_id, self, self.channel_layer)
        if self._writer is not None:
            self._writer.cancel()


@database_sync_to_async
def _task_events_after(session_id, after_id):
    """(whether a task event came after `after_id`, the newest event id) of the session."""
    events_after = SessionEvent.objects.filter(session_id=session_id, pk__gt=after_id)
    newest = SessionEvent.objects.filter(session_id=session_id).order_by("-pk").values_list("pk", flat=True).first()
    return events_after.filter(type__startswith="task.").exists(), newest or 0


class SessionGraphConsumer(DirectDispatchMixin, AsyncWebsocketConsumer):
    """The task graph page's live feed: the graph partial, re-rendered, after each task event.

    Same checks on connect as the console feed (4401 anonymous, 4404 unknown or not visible).
    `?after=<event id>` (the newest event when the page was rendered): when a task event came
    since, the graph is sent once at once; events up to the newest one read then are not sent
    again, since the graph just sent already shows them.
    """

    session_id = None

    async def connect(self):
        session = await _session_or_close(self)
        if session is None:
            return
        self.session_id = session.pk
        self.last_seen_id = 0
        await self.channel_layer.group_add(events.session_group(session.pk), self.channel_name)
        await self.accept()
        after = _after_from_scope(self.scope)
        if after is not None:
            missed, newest = await _task_events_after(session.pk, after)
            self.last_seen_id = max(after, newest)
            if missed:
                await self.send(text_data=await _graph_fragment(session.pk))

    async def disconnect(self, code):
        if self.session_id is not None:
            await self.channel_layer.group_discard(events.session_group(self.session_id), self.channel_name)

    async def session_event(self, message):
        event = message["event"]
        if event["id"] <= self.last_seen_id:
            return
        self.last_seen_id = event["id"]
        if event["type"].startswith("task."):
            html = await shared_render(("graph", self.session_id, event["id"]),
                                       lambda: _graph_fragment(self.session_id))
            await self.send(text_data=html)


websocket_urlpatterns = [
    path("ws/sessions", SessionEventsConsumer.as_asgi()),
    path("ws/sessions/<int:session_id>", SessionEventsConsumer.as_asgi()),
    path("ws/console/sessions/<int:session_id>", SessionConsoleConsumer.as_asgi()),
    path("ws/console/sessions/<int:session_id>/graph", SessionGraphConsumer.as_asgi()),
]
