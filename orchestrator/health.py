"""Liveness and readiness probes.

/live says the process answers. /ready checks what a request needs: the
database, the Celery broker and the channel layer; a failure answers 503 and
names the part that failed, so an operator knows where to look.
"""

import asyncio
import json
import time

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from orchestrator.celery import app as celery_app

CHECK_TIMEOUT = 2.0


def check_database():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def check_broker():
    with celery_app.connection_for_write() as broker:
        broker.ensure_connection(max_retries=1, timeout=CHECK_TIMEOUT)


def check_channel_layer():
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer configured")

    async def round_trip():
        await asyncio.wait_for(layer.group_send("health-check", {"type": "health.ping"}), CHECK_TIMEOUT)

    async_to_sync(round_trip)()


CHECKS = {
    "database": check_database,
    "broker": check_broker,
    "channel_layer": check_channel_layer,
}


def _broker_name():
    url = settings.CELERY_BROKER_URL
    return "redis" if url.startswith(("redis", "rediss")) else url.split("://", 1)[0]


@never_cache
@require_GET
def live(request):
    return JsonResponse({"status": "live"})


@never_cache
@require_GET
def ready(request):
    backends = {
        "database": settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1],
        "broker": _broker_name(),
        "channel_layer": "redis" if settings.REDIS_URL else "sqlite",
    }
    results = {}
    failed = []
    for name, check in CHECKS.items():
        started = time.monotonic()
        try:
            check()
            results[name] = {"ok": True}
        except Exception as exc:  # any failure of a dependency makes us not ready
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            failed.append(name)
        results[name]["backend"] = backends[name]
        results[name]["ms"] = round((time.monotonic() - started) * 1000, 1)
    body = {"status": "ready" if not failed else "not ready", "checks": results}
    if failed:
        body["failed"] = failed
        body["message"] = "not ready: " + "; ".join(
            f"{name} [{backends[name]}] {results[name]['error']}" for name in failed
        )
    return JsonResponse(body, status=503 if failed else 200)


@never_cache
@require_GET
def health(request):
    """Readiness plus what this instance is running, for dashboards and humans."""
    response = ready(request)
    body = json.loads(response.content)
    body["version"] = {"opencode": settings.OPENCODE_VERSION, "demo_model": settings.OPENCODE_DEMO_MODEL}
    return JsonResponse(body, status=response.status_code)
