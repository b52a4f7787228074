"""Every WebSocket route; each app's consumers.py lists its own."""

from django.urls import path

from orchestrator.consumers import SystemConsumer
from orchestrator.live_pages import LivePageConsumer
from sessions.consumers import websocket_urlpatterns as session_routes

websocket_urlpatterns = [
    path("ws/system", SystemConsumer.as_asgi()),
    path("ws/console/<slug:page>", LivePageConsumer.as_asgi()),
    *session_routes,
]
