"""Side effects wait for the commit: nothing is sent when the transaction rolls back."""

import asyncio
import threading

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connections, transaction

from orchestrator.broadcaster import unpack
from orchestrator.events import publish_on_commit

GROUP = "events-test"


async def _receive_all(layer, channel, timeout, *, sends=None):
    """Every broadcast the channel receives (batches unpacked); `sends` collects the channel-layer
    messages as they came."""
    received = []
    try:
        while True:
            message = await asyncio.wait_for(layer.receive(channel), timeout)
            if sends is not None:
                sends.append(message)
            received.extend(unpack(message))
    except TimeoutError:
        return received


def _collect(action, timeout=0.5, *, sends=None):
    layer = get_channel_layer()

    def action_in_thread():
        try:
            action()
        finally:
            # That thread's own database connection, back to the pool: left checked out, it kept
            # a session open on the test database and its drop at the end failed.
            connections.close_all()

    async def run():
        channel = await layer.new_channel()
        await layer.group_add(GROUP, channel)
        await asyncio.to_thread(action_in_thread)
        try:
            return await _receive_all(layer, channel, timeout, sends=sends)
        finally:
            await layer.group_discard(GROUP, channel)

    return async_to_sync(run)()


class Boom(Exception):
    pass


@pytest.mark.django_db(transaction=True)
def test_nothing_is_published_when_the_transaction_rolls_back():
    def rolled_back():
        with pytest.raises(Boom):
            with transaction.atomic():
                publish_on_commit(GROUP, {"type": "test.message", "n": 1})
                raise Boom

    assert _collect(rolled_back) == []


@pytest.mark.django_db(transaction=True)
def test_a_committed_transaction_publishes_once_after_commit():
    def committed():
        with transaction.atomic():
            publish_on_commit(GROUP, {"type": "test.message", "n": 2})

    assert _collect(committed) == [{"type": "test.message", "n": 2}]


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_quiet_group_member_still_receives_after_the_redis_read_timeout():
    """channels-redis blocks for 5 s per read; the client must not time out first."""
    layer = get_channel_layer()

    async def run():
        channel = await layer.new_channel()
        await layer.group_add(GROUP, channel)
        try:
            waiting = asyncio.ensure_future(layer.receive(channel))
            await asyncio.sleep(7)  # longer than one blocking read: the quiet period is the point
            await layer.group_send(GROUP, {"type": "test.message", "n": 3})
            return await asyncio.wait_for(waiting, 5)
        finally:
            await layer.group_discard(GROUP, channel)

    assert async_to_sync(run)() == {"type": "test.message", "n": 3}


def test_a_forked_child_publishes_through_its_own_loop():
    """A prefork child inherits the parent's publisher loop object but not its thread."""
    import multiprocessing

    from orchestrator import broadcaster

    broadcaster._loop()  # the parent's loop and thread exist before the fork
    context = multiprocessing.get_context("fork")
    results = context.Queue()

    def child():
        results.put(broadcaster._loop() is not None and broadcaster._publisher_pid == __import__("os").getpid())

    process = context.Process(target=child)
    process.start()
    process.join(timeout=20)
    assert results.get(timeout=5) is True


@pytest.mark.django_db(transaction=True)
def test_broadcasts_reach_a_group_in_the_order_they_were_handed_over():
    # The caller does not wait for the channel layer; one sender keeps the order.
    from orchestrator import broadcaster, events

    def many():
        for n in range(50):
            events.publish_now(GROUP, {"type": "test.message", "n": n})
        assert broadcaster.wait_for_broadcasts()

    assert [message["n"] for message in _collect(many)] == list(range(50))


@pytest.mark.django_db(transaction=True)
def test_broadcasts_waiting_for_a_group_go_out_as_one_channel_layer_message():
    # channels-redis sends a process's publishes one at a time: what queued for a group meanwhile
    # goes in one send (a `broadcast.batch`), in order, at most BATCH_LIMIT broadcasts a send.
    from orchestrator import broadcaster, events

    gate = threading.Event()

    def many():
        loop, _ = broadcaster._loop()
        loop.call_soon_threadsafe(gate.wait)  # the publisher's loop is busy while all are handed over
        try:
            for n in range(broadcaster.BATCH_LIMIT + 5):
                events.publish_now(GROUP, {"type": "test.message", "n": n})
        finally:
            gate.set()
        assert broadcaster.wait_for_broadcasts()

    sends = []
    assert [message["n"] for message in _collect(many, sends=sends)] == list(range(broadcaster.BATCH_LIMIT + 5))
    assert [(message["type"], len(message["messages"])) for message in sends] == [
        ("broadcast.batch", broadcaster.BATCH_LIMIT), ("broadcast.batch", 5)]


@pytest.mark.django_db(transaction=True)
def test_each_group_keeps_its_order_when_broadcasts_go_to_several_groups():
    # Every group has its own sender: a session's group and the all-sessions group each get their
    # broadcasts in the order they were handed over, whichever other groups they also went to.
    from orchestrator import broadcaster, events

    layer = get_channel_layer()
    other = "events-test-other"

    async def run():
        mine, theirs = await layer.new_channel(), await layer.new_channel()
        await layer.group_add(GROUP, mine)
        await layer.group_add(other, theirs)

        def many():
            for n in range(60):
                events.publish_now([GROUP, other] if n % 3 else [GROUP], {"type": "test.message", "n": n})
            assert broadcaster.wait_for_broadcasts()

        await asyncio.to_thread(many)
        try:
            return await _receive_all(layer, mine, 0.5), await _receive_all(layer, theirs, 0.5)
        finally:
            await layer.group_discard(GROUP, mine)
            await layer.group_discard(other, theirs)

    to_group, to_other = async_to_sync(run)()
    assert [message["n"] for message in to_group] == list(range(60))
    assert [message["n"] for message in to_other] == [n for n in range(60) if n % 3]
