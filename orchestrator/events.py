"""Side effects that happen only after the database transaction commits.

Every WebSocket broadcast and every Celery enqueue goes through here, so a
rolled-back transaction never announces or starts anything (the pattern of
Zulip's `send_event_on_commit`). Outside a transaction the callback runs at once.
"""

import asyncio
import logging
import os
import threading

from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)

ALL_SESSIONS_GROUP = "sessions"


def session_group(session_id):
    return f"session-{session_id}"


_publisher_loop = None
_publisher_pid = None
_publisher_lock = threading.Lock()
PUBLISH_TIMEOUT = 5.0


def _loop():
    """One event loop per process, in its own thread, for every broadcast.

    async_to_sync would build a fresh loop (and, with Redis, a fresh connection)
    for each event; a long-lived loop keeps the channel layer's connections.
    """
    global _publisher_loop, _publisher_pid
    with _publisher_lock:
        # A forked child (prefork pools, multiprocessing) inherits the loop but not its thread.
        if _publisher_loop is None or _publisher_loop.is_closed() or _publisher_pid != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="event-publisher", daemon=True).start()
            _publisher_loop, _publisher_pid = loop, os.getpid()
        return _publisher_loop


def publish_now(groups, message):
    """Send one message to channel-layer groups; a failure is logged, never raised.

    The database row is the durable copy of every event: a lost broadcast is
    recovered by clients that reconnect with the last event id they saw.
    """
    publish_many_now(groups, [message])


def publish_many_now(groups, messages):
    """Send messages to channel-layer groups, one after the other (so each group gets them in order)."""
    groups = [groups] if isinstance(groups, str) else list(groups)
    layer = get_channel_layer()
    if layer is None or not groups or not messages:
        return

    async def send_all():
        for message in messages:
            await asyncio.gather(*(layer.group_send(group, message) for group in groups))

    try:
        asyncio.run_coroutine_threadsafe(send_all(), _loop()).result(timeout=PUBLISH_TIMEOUT)
    except Exception:  # the broadcast is best effort; the event row is the record
        logger.exception("broadcast to %s failed", ", ".join(groups))


def publish_on_commit(groups, message, *, using=None):
    publish_many_on_commit(groups, [message], using=using)


def publish_many_on_commit(groups, messages, *, using=None):
    transaction.on_commit(lambda: publish_many_now(groups, messages), using=using)


def enqueue_on_commit(job, *, args=(), kwargs=None, queue=None, countdown=None, using=None):
    """Enqueue a Celery job once the surrounding transaction has committed."""
    options = {}
    if queue:
        options["queue"] = queue
    if countdown:
        options["countdown"] = countdown

    def send():
        job.apply_async(args=args, kwargs=kwargs or {}, **options)

    transaction.on_commit(send, using=using)
