"""Side effects that happen only after the database transaction commits.

Every WebSocket broadcast and every Celery enqueue goes through here, so a
rolled-back transaction never announces or starts anything (the pattern of
Zulip's `send_event_on_commit`). Outside a transaction the callback runs at once.
The sending itself (a thread, one sender per group, batching) is `orchestrator.broadcaster`'s.
"""

from django.db import transaction

from orchestrator import broadcaster

ALL_SESSIONS_GROUP = "sessions"


def session_group(session_id: int) -> str:
    return f"session-{session_id}"


def publish_now(groups: list[str] | str, message: dict) -> None:
    """Broadcast one message to channel-layer groups now, whatever the transaction (see broadcaster.broadcast)."""
    broadcaster.broadcast(groups, [message])


def publish_on_commit(groups: list[str] | str, message: dict, *, using: str | None = None) -> None:
    publish_many_on_commit(groups, [message], using=using)


def publish_many_on_commit(groups: list[str] | str, messages: list[dict], *, using: str | None = None) -> None:
    transaction.on_commit(lambda: broadcaster.broadcast(groups, messages), using=using)


def enqueue_on_commit(job, *, args=(), kwargs=None, queue=None, countdown=None, using=None) -> None:
    """Enqueue a Celery job once the surrounding transaction has committed."""
    options = {}
    if queue:
        options["queue"] = queue
    if countdown:
        options["countdown"] = countdown

    def send():
        job.apply_async(args=args, kwargs=kwargs or {}, **options)

    transaction.on_commit(send, using=using)
