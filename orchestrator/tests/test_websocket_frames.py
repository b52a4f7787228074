"""Issue 24, finding 8: a frame that is not JSON sent to a JSON event WebSocket closes it with
1003 (unsupported data) instead of raising in the consumer for every frame."""

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator

from orchestrator.asgi import application
from orchestrator.testing import api_token


async def _close_code_after(path, **frame):
    communicator = WebsocketCommunicator(application, path)
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    try:
        await communicator.send_to(**frame)
        output = await communicator.receive_output(timeout=10)
        return output
    finally:
        await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["/ws/system", "/ws/sessions"])
@pytest.mark.parametrize("frame", [{"text_data": "this is not json"}, {"bytes_data": b"\x00\x01binary"}])
def test_a_non_json_frame_closes_the_socket_with_1003(viewer_user, path, frame):
    token = api_token(viewer_user)
    output = async_to_sync(_close_code_after)(f"{path}?token={token.key}", **frame)
    assert output == {"type": "websocket.close", "code": 1003}
