"""Events reach the channel layer only after commit, and the WebSocket feed replays then streams."""

import asyncio

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.db import transaction
from django.utils import timezone

from orchestrator.asgi import application
from orchestrator.broadcaster import unpack
from orchestrator.errors import NotFound, ValidationFailed
from orchestrator.events import ALL_SESSIONS_GROUP, session_group
from orchestrator.testing import api_token
from orchestrator.testing import record_event as record
from orchestrator.testing import run_socket_scenario as run
from sessions import services
from sessions.models import CodingSession, SessionEvent
from sessions.tests.factories import CodingSessionFactory

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 15






def test_rolled_back_event_is_never_published():
    session = CodingSessionFactory(status="running")

    def rolled_back():
        with pytest.raises(RuntimeError):
            with transaction.atomic():
                services.session_pause(session=session)
                raise RuntimeError("abort")

    async def scenario():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(session_group(session.pk), channel)
        await database_sync_to_async(rolled_back)()
        await database_sync_to_async(record)(session, "committed")
        return await asyncio.wait_for(layer.receive(channel), timeout=TIMEOUT)

    message = run(scenario)
    assert message["type"] == "session.event"
    assert message["event"]["type"] == "committed"
    assert CodingSession.objects.get(pk=session.pk).status == "running"


def test_published_message_has_the_documented_shape():
    session = CodingSessionFactory(status="running")

    async def scenario():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(ALL_SESSIONS_GROUP, channel)
        event = await database_sync_to_async(record)(session, "opencode.step", step=1)
        return event, await asyncio.wait_for(layer.receive(channel), timeout=TIMEOUT)

    event, message = run(scenario)
    assert message == {
        "type": "session.event",
        "event": {
            "id": event.id, "session_id": session.pk, "reference": session.reference, "type": "opencode.step",
            "payload": {"step": 1}, "created_at": event.created_at.isoformat(),
        },
    }


def test_a_batch_of_events_is_stored_and_published_in_order():
    session = CodingSessionFactory(status="running")
    entries = [("tool.started", {"n": 1}), ("tool.completed", {"n": 2}), ("opencode.step", {"n": 3})]

    async def scenario():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(session_group(session.pk), channel)
        rows = await database_sync_to_async(services.session_record_events)(session=session, entries=entries)
        # One broadcast for the batch, sent as one channel-layer message.
        return rows, unpack(await asyncio.wait_for(layer.receive(channel), timeout=TIMEOUT))

    rows, received = run(scenario)
    ids = [row.id for row in rows]
    assert ids == sorted(ids) and None not in ids
    assert [(m["event"]["id"], m["event"]["type"], m["event"]["payload"]) for m in received] == [
        (row_id, kind, payload) for row_id, (kind, payload) in zip(ids, entries, strict=False)
    ]


def test_a_batch_with_a_bad_type_writes_nothing():
    session = CodingSessionFactory(status="running")
    with pytest.raises(ValidationFailed):
        services.session_record_events(session=session, entries=[("ok", {}), ("", {})])
    assert not SessionEvent.objects.filter(session=session).exists()


def test_events_of_an_unknown_session_are_refused_and_nothing_is_written():
    with pytest.raises(NotFound):
        services.session_record_events(session=CodingSession(pk=987654), entries=[("tool.completed", {"n": 1})])
    assert not SessionEvent.objects.exists()


def connect(path):
    async def go():
        communicator = WebsocketCommunicator(application, path)
        connected, code = await communicator.connect(timeout=TIMEOUT)
        if connected:
            await communicator.disconnect()
        return connected, code

    return run(go)


def test_consumer_replays_missed_events_then_delivers_live_ones_once(operator_user):
    token = api_token(operator_user)
    session = CodingSessionFactory(status="running")
    seen = record(session, "step", n=1)
    missed = [record(session, "step", n=2), record(session, "step", n=3)]

    async def scenario():
        communicator = WebsocketCommunicator(
            application, f"/ws/sessions/{session.pk}?after={seen.id}&token={token.key}"
        )
        connected, _ = await communicator.connect(timeout=TIMEOUT)
        assert connected
        replayed = [await communicator.receive_json_from(timeout=TIMEOUT) for _ in missed]
        # A late duplicate of a replayed event (replay and live overlapping) is not sent again.
        await get_channel_layer().group_send(
            session_group(session.pk), services.event_message(missed[-1], session.reference)
        )
        live = await database_sync_to_async(record)(session, "step", n=4)
        received = await communicator.receive_json_from(timeout=TIMEOUT)
        await communicator.disconnect()
        return replayed, live, received

    replayed, live, received = run(scenario)
    assert [e["id"] for e in replayed] == [e.id for e in missed]
    assert [e["payload"]["n"] for e in replayed] == [2, 3]
    assert received["id"] == live.id and received["payload"] == {"n": 4}
    assert received["reference"] == session.reference


def test_all_sessions_feed_delivers_every_session(operator_user):
    token = api_token(operator_user)
    first, second = CodingSessionFactory(status="running"), CodingSessionFactory(status="running")

    async def scenario():
        communicator = WebsocketCommunicator(application, f"/ws/sessions?token={token.key}")
        connected, _ = await communicator.connect(timeout=TIMEOUT)
        assert connected
        await database_sync_to_async(services.session_pause)(session=first)
        await database_sync_to_async(record)(second, "step")
        messages = [await communicator.receive_json_from(timeout=TIMEOUT) for _ in range(2)]
        await communicator.disconnect()
        return messages

    messages = run(scenario)
    assert [(m["session_id"], m["type"]) for m in messages] == [(first.pk, "session.transition"), (second.pk, "step")]


def test_unauthenticated_socket_is_closed_with_4401():
    session = CodingSessionFactory()
    assert connect(f"/ws/sessions/{session.pk}") == (False, 4401)


def test_unknown_or_deleted_session_socket_is_closed_with_4404(operator_user):
    token = api_token(operator_user)
    deleted = CodingSessionFactory(status="failed", deleted_at=timezone.now())
    assert connect(f"/ws/sessions/999999?token={token.key}") == (False, 4404)
    assert connect(f"/ws/sessions/{deleted.pk}?token={token.key}") == (False, 4404)


async def receive_events(communicator, path, rows):
    """What arrived for each row, in order: one frame per event on the JSON feed; on the console
    feed a frame carries the events rendered while the previous one was written (one or several
    partials, split here at each event's own out-of-band wrapper)."""
    if not path.startswith("/ws/console/"):
        return [await communicator.receive_from(timeout=TIMEOUT) for _ in rows]
    marker = '<div hx-swap-oob="beforeend:#event-log">'
    parts = []
    while len(parts) < len(rows):
        frame = await communicator.receive_from(timeout=TIMEOUT)
        parts += [marker + part for part in frame.split(marker) if part.strip()]
    return parts


@pytest.mark.parametrize("path", ["/ws/sessions/{id}", "/ws/console/sessions/{id}"])
def test_events_are_delivered_without_a_database_check_per_message(operator_user, monkeypatch, path):
    # Channels' own dispatch hops to a worker thread to close stale database connections before
    # every message; these consumers skip it (orchestrator.consumers.DirectDispatchMixin).
    import channels.consumer

    checks = []
    original = channels.consumer.aclose_old_connections

    async def counted():
        checks.append(1)
        return await original()

    monkeypatch.setattr(channels.consumer, "aclose_old_connections", counted)
    token = api_token(operator_user)
    session = CodingSessionFactory(status="running")

    async def scenario():
        communicator = WebsocketCommunicator(application, path.format(id=session.pk) + f"?token={token.key}")
        connected, _ = await communicator.connect(timeout=TIMEOUT)
        assert connected
        sent = [await database_sync_to_async(record)(session, "step", n=n) for n in range(3)]
        received = await receive_events(communicator, path, sent)
        await communicator.disconnect()
        return sent, received

    sent, received = run(scenario)
    assert len(received) == 3 and all(f"{event.id}" in text for event, text in zip(sent, received, strict=False))
    assert checks == []


@pytest.mark.parametrize("path", ["/ws/sessions/{id}", "/ws/console/sessions/{id}"])
def test_a_batch_of_events_reaches_a_client_in_order(operator_user, path):
    token = api_token(operator_user)
    session = CodingSessionFactory(status="running")
    entries = [("tool.started", {"n": 1}), ("tool.completed", {"n": 2}), ("opencode.step", {"n": 3})]

    async def scenario():
        communicator = WebsocketCommunicator(application, path.format(id=session.pk) + f"?token={token.key}")
        connected, _ = await communicator.connect(timeout=TIMEOUT)
        assert connected
        rows = await database_sync_to_async(services.session_record_events)(session=session, entries=entries)
        received = await receive_events(communicator, path, rows)
        assert await communicator.receive_nothing(timeout=0.3)
        await communicator.disconnect()
        return rows, received

    rows, received = run(scenario)
    assert all(f"{row.id}" in text for row, text in zip(rows, received, strict=False))
