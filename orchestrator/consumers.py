from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from orchestrator.broadcaster import unpack

SYSTEM_GROUP = "system"


async def replay_after(*, after: int, fetch, send, batch: int) -> None:
    """Send a reconnecting client what it missed: `await fetch(after_id)` gives at most `batch`
    events with ids above `after_id`, oldest first; each goes to `await send(event)`; batches
    follow until a short one says the log is caught up. The consumer has joined its group before
    calling this, so live events wait in its channel meanwhile; `send` drops what it has sent."""
    cursor = after
    while True:
        backlog = await fetch(cursor)
        for event in backlog:
            await send(event)
        if backlog:
            cursor = max(cursor, backlog[-1]["id"])
        if len(backlog) < batch:
            return


class DirectDispatchMixin:
    """Dispatch each message straight to its handler.

    Channels' AsyncConsumer.dispatch first runs Django's close_old_connections in a worker thread,
    for every message: a thread hop per event delivered, about a tenth of the web server's CPU
    while 20 sessions ran. The consumers here reach the database only through
    database_sync_to_async, which runs that same check around each call, so the one before every
    message only costs time. A `broadcast.batch` (several broadcasts sent as one) is handled one
    broadcast at a time.
    """

    async def dispatch(self, message):
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def broadcast_batch(self, message):
        """Several broadcasts to a group sent as one channel-layer message (orchestrator.events
        _send_group): each is handled in order, as if it had come alone."""
        for each in unpack(message):
            await self.dispatch(each)


class JsonFramesConsumer(AsyncJsonWebsocketConsumer):
    """A JSON WebSocket consumer that closes with 1003 (unsupported data) on a frame that is not
    a JSON text frame, instead of raising in the consumer on every such frame."""

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        try:
            content = await self.decode_json(text_data) if text_data else None
        except ValueError:  # json.JSONDecodeError
            content = None
        if content is None:
            await self.close(code=1003)
            return
        await self.receive_json(content, **kwargs)


class SystemConsumer(DirectDispatchMixin, JsonFramesConsumer):
    """System news (worker pings) for any signed-in user, as JSON."""

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        await self.channel_layer.group_add(SYSTEM_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(SYSTEM_GROUP, self.channel_name)

    async def system_event(self, message):
        await self.send_json(message["event"])
