import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator

from orchestrator.asgi import application
from orchestrator.testing import api_token


def test_api_refuses_anonymous_requests_with_401(db, anonymous_client):
    response = anonymous_client.get("/api/v1/")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_api_accepts_a_token(db, viewer_client):
    response = viewer_client.get("/api/v1/no-such-endpoint")
    # Authenticated: the request reaches routing (404), not the auth wall (401).
    assert response.status_code == 404


def test_viewer_is_refused_an_operator_action(db, viewer_client):
    response = viewer_client.post("/api/v1/no-such-endpoint", {}, format="json")
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "permission_denied"
    assert "Only operators" in error["message"]


def test_operator_passes_the_permission_check(db, api_client):
    assert api_client.post("/api/v1/no-such-endpoint", {}, format="json").status_code == 404


async def _connect(path, headers=()):
    communicator = WebsocketCommunicator(application, path, headers=list(headers))
    connected, code = await communicator.connect(timeout=5)
    await communicator.disconnect()
    return connected, code


@pytest.mark.django_db(transaction=True)
def test_websocket_refuses_anonymous_clients():
    connected, code = async_to_sync(_connect)("/ws/system")
    assert connected is False
    assert code == 4401


@pytest.mark.django_db(transaction=True)
def test_websocket_accepts_a_token_and_refuses_a_wrong_one(viewer_user):
    token = api_token(viewer_user)
    assert async_to_sync(_connect)("/ws/system", [(b"authorization", f"Token {token.key}".encode())])[0] is True
    assert async_to_sync(_connect)(f"/ws/system?token={token.key}")[0] is True
    assert async_to_sync(_connect)("/ws/system?token=wrong")[0] is False


@pytest.mark.django_db(transaction=True)
def test_websocket_refuses_a_foreign_browser_origin(viewer_user):
    token = api_token(viewer_user)
    headers = [(b"origin", b"https://evil.example"), (b"authorization", f"Token {token.key}".encode())]
    assert async_to_sync(_connect)("/ws/system", headers)[0] is False
