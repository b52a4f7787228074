"""Prometheus metrics: what each process counts, and the /metrics endpoint.

Two kinds of series:
- counted by the processes that see the event (HTTP latency in web processes; Celery job outcomes
  and the OpenCode servers in workers), through prometheus-client's multi-process mode: each
  process writes its values to files under PROMETHEUS_MULTIPROC_DIR, and /metrics adds up the files
  of every process on the host that share the folder;
- read from the database when /metrics is scraped (`orchestrator.metrics_db`): sessions by status,
  transitions, queue depth, running sessions per worker, tokens and cost, pending approvals, event
  lag. The database is the source of truth for these, so every web replica answers the same values.

settings.py puts PROMETHEUS_MULTIPROC_DIR in the environment before this module is imported, which
is when prometheus-client picks its (file-backed) value class.
"""

import hmac
import ipaddress
import os
import re
import time
from pathlib import Path

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

_ = settings.PROMETHEUS_MULTIPROC_DIR  # load settings (and so the environment) before prometheus_client

from prometheus_client import (  # noqa: E402  (after the settings, see above)
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

PREFIX = "orchestrator"
UNMATCHED_ROUTE = "<unmatched>"

HTTP_LATENCY = Histogram(
    f"{PREFIX}_http_request_duration_seconds",
    "Time to answer an HTTP request, by route (the URL pattern, not the path), method and status.",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
JOBS = Counter(
    f"{PREFIX}_celery_jobs",
    "Celery jobs finished, by job name (label `name`: `job` is the scrape job's) and outcome "
    "(success, failure, retry, revoked, rejected).",
    ["name", "outcome"],
)
JOB_DURATION = Histogram(
    f"{PREFIX}_celery_job_duration_seconds",
    "Run time of Celery jobs, by job name.",
    ["name"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0),
)
OPENCODE_SERVERS_UP = Gauge(
    f"{PREFIX}_opencode_servers_up",
    "OpenCode servers managed by the workers on this host that are running.",
    multiprocess_mode="livesum",
)
OPENCODE_DIRECTORIES_OPEN = Gauge(
    f"{PREFIX}_opencode_directories_open",
    "Directories (worktrees) the OpenCode servers of the workers hold open (requested, not yet disposed).",
    multiprocess_mode="livesum",
)
OPENCODE_RESTARTS = Counter(
    f"{PREFIX}_opencode_server_restarts",
    "Times a worker's OpenCode server was replaced by a new process (crash, failed health check or retirement).",
)

EVENT_LAG = Histogram(
    f"{PREFIX}_event_lag_seconds",
    "From OpenCode completing a step (its clock) to the step's event stored (orchestrator.event_lag).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


def multiprocess_dir() -> Path:
    return Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or settings.PROMETHEUS_MULTIPROC_DIR)


def forget_dead_live_gauges() -> None:
    """`livesum` gauges must add up live processes only, and prometheus-client sums every file:
    drop those of processes of this host that ended without marking themselves dead (killed, or a
    test process that stopped early)."""
    folder = multiprocess_dir()
    for path in folder.glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            multiprocess.mark_process_dead(int(pid), path=str(folder))


def registry(*, with_database: bool) -> CollectorRegistry:
    """A registry of every process's values in the multi-process folder, plus (for /metrics on a
    web process) the database-backed series."""
    forget_dead_live_gauges()
    collected = CollectorRegistry()
    multiprocess.MultiProcessCollector(collected, path=str(multiprocess_dir()))
    if with_database:
        from orchestrator.metrics_db import DatabaseCollector

        collected.register(DatabaseCollector())
    return collected


def exposition() -> bytes:
    return generate_latest(registry(with_database=True))


# --- access ----------------------------------------------------------------------------------


def client_allowed(*, remote_addr: str, authorization: str) -> bool:
    """A bearer token equal to METRICS_TOKEN, or a client address inside METRICS_ALLOWED_NETWORKS."""
    token = settings.METRICS_TOKEN
    scheme, _, credentials = authorization.partition(" ")
    if token and scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), token.encode()):
        return True
    try:
        address = ipaddress.ip_address(remote_addr)
    except ValueError:
        return False
    return any(address in network for network in settings.METRICS_ALLOWED_NETWORKS)


@never_cache
@require_GET
def metrics_view(request):
    if not client_allowed(remote_addr=request.META.get("REMOTE_ADDR", ""),
                          authorization=request.headers.get("Authorization", "")):
        return JsonResponse({"error": {
            "code": "forbidden",
            "message": "metrics need a bearer token (METRICS_TOKEN) or an address in METRICS_ALLOWED_NETWORKS",
            "details": {},
        }}, status=403)
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_PLAIN_0_0_4)


# --- HTTP latency ------------------------------------------------------------------------------


def route_label(route: str) -> str:
    """The URL pattern as a label: `api/v1/sessions/(?P<pk>\\d+)/start/?$` -> `/api/v1/sessions/<pk>/start`."""
    label = NAMED_GROUP.sub(lambda match: f"<{match.group(1)}>", route)
    label = label.replace("^", "").replace("$", "").replace("/?", "/")
    return "/" + label.lstrip("/")


NAMED_GROUP = re.compile(r"\(\?P<(\w+)>(?:[^()]|\([^()]*\))*\)")
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetricsMiddleware:
    """Times each request and counts it under its URL pattern (`/api/v1/sessions/<pk>`), so ids in
    paths do not make a series each; a path no pattern matched counts as `<unmatched>`."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        route = route_label(match.route) if match is not None and match.route else UNMATCHED_ROUTE
        method = request.method if request.method in KNOWN_METHODS else "other"
        HTTP_LATENCY.labels(route=route, method=method, status=str(response.status_code)).observe(
            time.perf_counter() - started)
        return response
