"""ASGI entry point: Django for HTTP, Channels consumers for WebSockets."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from orchestrator.gc_tuning import tune_collector_for_web  # noqa: E402
from orchestrator.routing import websocket_urlpatterns  # noqa: E402
from orchestrator.ws_auth import websocket_stack  # noqa: E402

try:
    from daphne.http_protocol import WebRequest
except ImportError:  # served by another ASGI server
    pass
else:
    # Twisted parses form bodies for its own `args`, which daphne never reads, and answers a
    # malformed multipart body with an empty 400 before Django sees it; the body goes to Django as
    # it came (the API answers 415 JSON, the console its own error). Twisted sets the flag per
    # request in __init__ (always true for daphne): a property that ignores the assignment.
    WebRequest._parsePOSTFormSubmission = property(lambda request: False, lambda request, value: None)

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": websocket_stack(URLRouter(websocket_urlpatterns)),
    }
)

tune_collector_for_web()  # after the imports: what they built is frozen (orchestrator.gc_tuning)
