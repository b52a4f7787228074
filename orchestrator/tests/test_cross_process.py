"""The embedded default's cross-process path (and the Redis one in CI's second run):
a job enqueued here runs in a separate worker process, and the event it publishes
reaches a WebSocket client connected to this process's ASGI application."""

import asyncio
import json
import os
import uuid

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator

from orchestrator.asgi import application
from orchestrator.jobs import ping
from orchestrator.testing import api_token, running_worker


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_job_runs_in_worker_process_and_its_event_reaches_a_websocket_client(viewer_user):
    token = api_token(viewer_user)
    marker = uuid.uuid4().hex

    async def exchange():
        communicator = WebsocketCommunicator(application, f"/ws/system?token={token.key}")
        connected, _ = await communicator.connect(timeout=10)
        assert connected
        try:
            await asyncio.to_thread(ping.delay, marker)
            while True:
                event = json.loads(await communicator.receive_from(timeout=30))
                if event.get("token") == marker:
                    return event
        finally:
            await communicator.disconnect()

    with running_worker(concurrency=1, queues=["default"]) as worker:
        event = async_to_sync(exchange)()
    assert event["type"] == "worker.pong"
    assert event["pid"] != os.getpid()
    assert event["pid"] == worker.pid
