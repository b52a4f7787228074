"""Test-wide fixtures and the service markers.

A test marked `postgres`, `redis`, `opencode` or `browser` (Chromium and Playwright) needs that
real service. When
it is absent the test is skipped with the reason, except when
ORCHESTRATOR_REQUIRE_SERVICES=1 (set by .ci/run for its PostgreSQL + Redis
run): then the absence fails the test, so CI can never pass on skips.
"""

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import pytest
from django.conf import settings

REQUIRE_SERVICES = os.environ.get("ORCHESTRATOR_REQUIRE_SERVICES") == "1"

# The browser-test fixtures (Chromium, daphne, a worker, screenshots), for any test module.
pytest_plugins = ["orchestrator.tests.browser"]


def _tcp_open(host, port):
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _missing_service(marker_name):
    if marker_name == "postgres":
        if not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
            return "needs PostgreSQL: set DATABASE_URL=postgresql://postgres@127.0.0.1:5432/orchestrator"
    if marker_name == "redis":
        if not settings.REDIS_URL:
            return "needs Redis: set REDIS_URL=redis://127.0.0.1:6379/0"
        parsed = urlparse(settings.REDIS_URL)
        if not _tcp_open(parsed.hostname, parsed.port or 6379):
            return f"needs Redis, but nothing answers at {settings.REDIS_URL}"
    if marker_name == "browser":
        from orchestrator.tests.browser import browser_missing

        return browser_missing()
    if marker_name == "opencode":
        if not Path(settings.OPENCODE_BIN).is_file():
            return f"needs the opencode binary at {settings.OPENCODE_BIN} (bin/setup installs it)"
    return None


def pytest_runtest_setup(item):
    for marker_name in ("postgres", "redis", "opencode", "browser"):
        if item.get_closest_marker(marker_name) is None:
            continue
        reason = _missing_service(marker_name)
        if reason is None:
            continue
        if REQUIRE_SERVICES:
            pytest.fail(f"required service missing ({marker_name}): {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def fresh_workspaces():
    """Start each test run with empty workspace and repository folders.

    Session references restart with every new test database, so a worktree left by an
    earlier run would otherwise be found under a new session's name.
    """
    import shutil

    var_dir = Path(settings.VAR_DIR)
    for folder in [Path(settings.WORKSPACE_ROOT), *map(Path, settings.REPOSITORY_ROOTS)]:
        if folder.exists() and var_dir in folder.resolve().parents:
            shutil.rmtree(folder)
    _purge_worker_queues()
    yield


def _purge_worker_queues():
    """Drop jobs an interrupted earlier run left in the broker: they name sessions of a test
    database that no longer exists, and a new worker would pick them up."""
    from orchestrator.celery import app

    try:
        with app.connection_for_write() as connection:
            for name in sorted(set(settings.WORKER_QUEUES)):
                queue = connection.SimpleQueue(name)
                try:
                    queue.clear()
                finally:
                    queue.close()
    except OSError:
        pass  # no broker reachable: the tests that need one say so themselves


@pytest.fixture(autouse=True)
def api_throttles_relaxed(request, settings):
    """Throttles and sign-in lockouts count per user id and address, which tests reuse: each test
    starts with empty counters and rates no test reaches. Tests of the throttles themselves
    (marked `throttled`) keep the configured rates."""
    from django.core.cache import cache

    cache.clear()
    if request.node.get_closest_marker("throttled") is None:
        settings.API_THROTTLE_RATES = {scope: "1000000/minute" for scope in settings.API_THROTTLE_RATES}
        settings.LOGIN_FAILURE_LIMIT = 1_000_000
        settings.SESSION_LIMIT_PER_USER = 0
    yield


@pytest.fixture
def operator_user(db):
    from orchestrator.tests.factories import UserFactory

    return UserFactory(role="operators")


@pytest.fixture
def viewer_user(db):
    from orchestrator.tests.factories import UserFactory

    return UserFactory(role="viewers")


def _client_for(user):
    from rest_framework.test import APIClient

    from orchestrator.testing import api_token

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token(user).key}")
    client.user = user
    return client


@pytest.fixture
def api_client(operator_user):
    """An API client signed in as an operator (token auth)."""
    return _client_for(operator_user)


@pytest.fixture
def viewer_client(viewer_user):
    return _client_for(viewer_user)


@pytest.fixture
def anonymous_client():
    from rest_framework.test import APIClient

    return APIClient()


@pytest.fixture(autouse=True)
def fresh_redis_channel_layer():
    """A new Redis channel layer instance for every test.

    Each test drives WebSockets from an event loop of its own; channels-redis keeps state per
    loop (a layer and its connections for each loop it has seen), so a later test in another loop
    would meet what a closed loop left behind. A web process has one loop, so this is a test
    matter only.
    """
    yield
    from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers
    from channels_redis.core import RedisChannelLayer
    from channels_redis.pubsub import RedisPubSubChannelLayer

    if isinstance(channel_layers.backends.get(DEFAULT_CHANNEL_LAYER), (RedisChannelLayer, RedisPubSubChannelLayer)):
        del channel_layers.backends[DEFAULT_CHANNEL_LAYER]
