"""The session's event log: append events under the row lock, publish them after commit."""


from django.db import connection, transaction
from django.utils import timezone

from orchestrator import events
from orchestrator.errors import NotFound, ValidationFailed
from sessions import sql
from sessions.models import CodingSession, SessionEvent
from sessions.services.common import lock_session


def event_message(event: SessionEvent, reference: str) -> dict:
    """The channel-layer message for one SessionEvent (also the shape WebSocket clients receive)."""
    return {
        "type": "session.event",
        "event": {
            "id": event.id,
            "session_id": event.session_id,
            "reference": reference,
            "type": event.type,
            "payload": event.payload,
            "created_at": event.created_at.isoformat(),
        },
    }


def write_event(session: CodingSession, type: str, payload: dict) -> SessionEvent:
    """Append one event and publish it after commit (see _write_events)."""
    return write_events(session, [(type, payload)])[0]


def write_events(session: CodingSession, entries: list[tuple[str, dict]]) -> list[SessionEvent]:
    """Append events [(type, payload)] in order and publish them after commit, in that order.

    The caller holds the session row lock, which keeps event ids in commit order within a
    session, so a client resuming after id N never misses an event committed later with a
    smaller id. One INSERT and one broadcast task for the lot.
    """
    rows = SessionEvent.objects.bulk_create(
        [SessionEvent(session=session, type=type, payload=payload) for type, payload in entries]
    )
    events.publish_many_on_commit(
        [events.session_group(session.pk), events.ALL_SESSIONS_GROUP],
        [event_message(row, session.reference) for row in rows],
    )
    return rows


def session_record_event(*, session: CodingSession, type: str, payload: dict | None = None) -> SessionEvent:
    """Append an event to the session's log and publish it to the session's group
    and the all-sessions group once the transaction commits."""
    return session_record_events(session=session, entries=[(type, payload)])[0]


def session_record_events(*, session: CodingSession, entries: list[tuple[str, dict | None]]) -> list[SessionEvent]:
    """Append several events [(type, payload)] in order, under one lock, in one transaction."""
    for type, _ in entries:
        if not type or len(type) > 100:
            raise ValidationFailed(field="type", rule="must be 1-100 characters")
    entries = [(type, payload or {}) for type, payload in entries]
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        return _write_events_in_one_statement(session.pk, entries)
    with transaction.atomic():
        locked = lock_session(session.pk, include_deleted=True, fields=("id", "reference"))
        return write_events(locked, entries)


def _write_events_in_one_statement(session_id: int, entries: list[tuple[str, dict]]) -> list[SessionEvent]:
    """session_record_events outside a transaction on PostgreSQL (see sql.insert_events)."""
    now = timezone.now()
    inserted = sql.insert_events(session_id=session_id, entries=entries, now=now)
    if inserted is None:
        raise NotFound(f"Session {session_id} does not exist", details={"id": session_id})
    rows = [SessionEvent(id=event_id, session_id=session_id, type=type, payload=payload, created_at=now)
            for event_id, (type, payload) in zip(inserted.ids, entries, strict=False)]
    events.publish_many_on_commit(
        [events.session_group(session_id), events.ALL_SESSIONS_GROUP],
        [event_message(row, inserted.reference) for row in rows],
    )
    return rows
