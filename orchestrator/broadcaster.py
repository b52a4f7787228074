"""The broadcaster: sends channel-layer messages from any thread without making the caller wait.

One event loop per process, in its own thread; one sender coroutine per group while the group has
broadcasts waiting, each sending them in order and batching what waits (`broadcast.batch`).
`orchestrator.events` is the API the rest of the project calls (after commit); this module is the
machinery behind it.
"""

import asyncio
import logging
import os
import threading

from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)

_publisher = None  # (loop, queue) of this process
_publisher_pid = None
_publisher_lock = threading.Lock()
_unsent = 0  # broadcasts handed over and not yet sent (see wait_for_broadcasts)
_unsent_changed = threading.Condition()
PUBLISH_TIMEOUT = 5.0


def _loop():
    """One event loop per process, in its own thread, and the queue of broadcasts it sends.

    async_to_sync would build a fresh loop (and, with Redis, a fresh connection) for each
    event; a long-lived loop keeps the channel layer's connections. Each group has its own
    sender coroutine while it has broadcasts waiting (_send_queued), so every group gets them
    in the order they were handed over, groups do not wait for each other, and the caller (a
    request, a worker's run) never waits for Redis.
    """
    global _publisher, _publisher_pid
    with _publisher_lock:
        # A forked child (prefork pools, multiprocessing) inherits the loop but not its thread.
        if _publisher is None or _publisher[0].is_closed() or _publisher_pid != os.getpid():
            loop, queue = asyncio.new_event_loop(), asyncio.Queue()
            threading.Thread(target=loop.run_forever, name="event-publisher", daemon=True).start()
            loop.call_soon_threadsafe(lambda: loop.create_task(_send_queued(queue)))
            _publisher, _publisher_pid = (loop, queue), os.getpid()
        return _publisher


async def _send_queued(queue):
    """Hand each broadcast to the sender of each of its groups.

    One sender for everything made every session's events wait behind every other's: with 20
    sessions ending together a session's `completed` reached Redis 0.1-0.4 s after its row was
    written. Now a group's broadcasts wait only for that group's earlier ones.
    """
    senders = {}  # group -> asyncio.Queue of (messages, countdown) while its sender runs
    while True:
        groups, messages = await queue.get()
        countdown = [len(groups)]  # groups still to send this broadcast to (see _sent)
        for group in groups:
            waiting = senders.get(group)
            if waiting is None:
                waiting = senders[group] = asyncio.Queue()
                asyncio.get_running_loop().create_task(_send_group(group, waiting, senders))
            waiting.put_nowait((messages, countdown))


# Most broadcasts one channel-layer send carries (see _send_group): bounds a message's size.
BATCH_LIMIT = 200
BATCH_TYPE = "broadcast.batch"


async def _send_group(group, waiting, senders):
    """Send `group`'s broadcasts in order; end once none is left (all on the loop's thread, so no
    broadcast can arrive between the last get and the removal).

    Whatever waits for the group when its turn comes goes out as one channel-layer message (a
    `broadcast.batch` of them, unpacked by the consumers' DirectDispatchMixin): channels-redis sends
    a process's publishes one at a time (one lock per Redis connection), so with 20 sessions
    running, one send per event queued the events 0.3-0.5 s deep before Redis (p99, measured).
    """
    while True:
        batch = []
        while len(batch) < BATCH_LIMIT:
            try:
                batch.append(waiting.get_nowait())
            except asyncio.QueueEmpty:
                break
        if not batch:
            del senders[group]
            return
        messages = [message for messages, _ in batch for message in messages]
        try:
            layer = get_channel_layer()
            if layer is not None:
                async with asyncio.timeout(PUBLISH_TIMEOUT):
                    await layer.group_send(group, messages[0] if len(messages) == 1 else
                                           {"type": BATCH_TYPE, "messages": messages})
        except Exception:  # the broadcast is best effort; the event row is the record
            logger.exception("broadcast to %s failed", group)
        finally:
            for _, countdown in batch:
                _sent(countdown)


def unpack(message: dict) -> list[dict]:
    """The broadcasts one channel-layer message carries, in order (see _send_group)."""
    return list(message["messages"]) if message.get("type") == BATCH_TYPE else [message]


def _sent(countdown):
    """One group of a broadcast is done; the broadcast is, once all its groups are (wait_for_broadcasts)."""
    global _unsent
    countdown[0] -= 1
    if countdown[0] == 0:
        with _unsent_changed:
            _unsent -= 1
            _unsent_changed.notify_all()


def broadcast(groups: list[str] | str, messages: list[dict]) -> None:
    """Broadcast messages to channel-layer groups, in order, without waiting for them to be sent.

    A failure is logged, never raised: the database row is the durable copy of every event,
    and a client that missed a broadcast recovers it by reconnecting with the last event id it saw.
    """
    global _unsent
    groups = [groups] if isinstance(groups, str) else list(groups)
    if not groups or not messages or get_channel_layer() is None:
        return
    loop, queue = _loop()
    with _unsent_changed:
        _unsent += 1
    loop.call_soon_threadsafe(queue.put_nowait, (groups, list(messages)))


def wait_for_broadcasts(timeout: float = PUBLISH_TIMEOUT) -> bool:
    """Wait until every broadcast handed over so far has been sent (or failed); False on timeout.

    For a process about to exit, and for tests that read a group right after an action."""
    with _unsent_changed:
        return _unsent_changed.wait_for(lambda: _unsent <= 0, timeout=timeout)
