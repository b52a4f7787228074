"""/metrics: who may read it, the database-backed series, HTTP latency by route."""

from decimal import Decimal

import pytest
from django.core.exceptions import ImproperlyConfigured
from prometheus_client.parser import text_string_to_metric_families

from agents.tests.factories import AgentFactory
from orchestrator import metrics
from orchestrator.env import env_networks
from sessions.models import PermissionRequest, SessionTransition
from sessions.tests.factories import CodingSessionFactory

TOKEN = "s3cret-metrics-token-for-tests"


def samples(text):
    """{(name, frozenset(labels)): value} of an exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(text, name, **labels):
    return samples(text).get((name, frozenset(labels.items())))


@pytest.fixture
def metrics_access(settings):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_NETWORKS = env_networks("UNSET_FOR_TEST", ["10.20.0.0/16"])
    return settings


def test_metrics_refuse_an_address_outside_the_allowed_networks_without_a_token(client, db, metrics_access):
    response = client.get("/metrics", REMOTE_ADDR="192.0.2.7")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert "METRICS_TOKEN" in response.json()["error"]["message"]


def test_metrics_refuse_a_wrong_token(client, db, metrics_access):
    response = client.get("/metrics", REMOTE_ADDR="192.0.2.7", HTTP_AUTHORIZATION="Bearer not-the-token")
    assert response.status_code == 403


def test_metrics_accept_the_bearer_token_from_any_address(client, db, metrics_access):
    response = client.get("/metrics", REMOTE_ADDR="192.0.2.7", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")


def test_metrics_accept_an_address_in_the_allowed_networks(client, db, metrics_access):
    assert client.get("/metrics", REMOTE_ADDR="10.20.3.4").status_code == 200


def test_metrics_default_allows_loopback_only(client, db, settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_NETWORKS = env_networks("UNSET_FOR_TEST", ["127.0.0.0/8", "::1/128"])
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::1").status_code == 200
    # An empty token never matches an empty bearer credential.
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.7", HTTP_AUTHORIZATION="Bearer ").status_code == 403


def test_malformed_allowed_networks_stop_start_up(monkeypatch):
    monkeypatch.setenv("METRICS_ALLOWED_NETWORKS", "10.0.0.0/8,not-a-network")
    with pytest.raises(ImproperlyConfigured, match="METRICS_ALLOWED_NETWORKS.*not-a-network"):
        env_networks("METRICS_ALLOWED_NETWORKS")


def test_database_series_count_what_the_tables_hold(client, db):
    first, second = CodingSessionFactory(status="running", worker_id="host-a:11"), CodingSessionFactory(
        status="degraded", worker_id="host-a:11")
    CodingSessionFactory(status="running", worker_id="host-b:12")
    CodingSessionFactory(status="queued", priority=0)
    CodingSessionFactory(status="queued", priority=3)
    CodingSessionFactory(status="queued", priority=4)
    CodingSessionFactory(status="completed")
    from django.utils import timezone

    CodingSessionFactory(status="completed", deleted_at=timezone.now())  # deleted: not counted
    for from_status, to_status in [("pending", "queued"), ("queued", "running"), ("queued", "running")]:
        SessionTransition.objects.create(session=first, from_status=from_status, to_status=to_status,
                                         action="start", actor_kind="system")
    PermissionRequest.objects.create(session=second, opencode_id="per_1", permission="bash")
    PermissionRequest.objects.create(session=second, opencode_id="per_2", permission="bash", status="answered")
    AgentFactory(name="AGENT-BUILD", model_identifier="scripted/demo", total_tokens=360,
                 total_cost=Decimal("0.25"))
    AgentFactory(name="AGENT-DEFAULT", total_tokens=40)
    AgentFactory(name="AGENT-IDLE")

    text = client.get("/metrics").content.decode()

    assert value(text, "orchestrator_sessions", status="running") == 2
    assert value(text, "orchestrator_sessions", status="degraded") == 1
    assert value(text, "orchestrator_sessions", status="queued") == 3
    assert value(text, "orchestrator_sessions", status="completed") == 1
    assert value(text, "orchestrator_sessions", status="orphaned") == 0  # every status, zeros included
    assert value(text, "orchestrator_session_transitions_total", from_status="queued", to_status="running") == 2
    assert value(text, "orchestrator_session_transitions_total", from_status="pending", to_status="queued") == 1
    assert value(text, "orchestrator_session_queue_depth", priority="critical") == 1
    assert value(text, "orchestrator_session_queue_depth", priority="medium") == 0
    assert value(text, "orchestrator_session_queue_depth", priority="low") == 1
    assert value(text, "orchestrator_session_queue_depth", priority="deferred") == 1
    assert value(text, "orchestrator_sessions_running", worker="host-a:11") == 2
    assert value(text, "orchestrator_sessions_running", worker="host-b:12") == 1
    assert value(text, "orchestrator_approvals_pending") == 1
    assert value(text, "orchestrator_tokens_total", agent="AGENT-BUILD", model="scripted/demo") == 360
    assert value(text, "orchestrator_cost_total", agent="AGENT-BUILD", model="scripted/demo") == 0.25
    assert value(text, "orchestrator_tokens_total", agent="AGENT-DEFAULT", model="default") == 40
    assert not any(labels and ("agent", "AGENT-IDLE") in labels for _, labels in samples(text))


def test_http_latency_is_counted_under_the_route_not_the_path(client, db):
    def count(text):
        return value(text, "orchestrator_http_request_duration_seconds_count",
                     route="/api/v1/sessions/<pk>/", method="GET", status="401") or 0

    before = count(client.get("/metrics").content.decode())
    client.get("/api/v1/sessions/123/")
    client.get("/api/v1/sessions/456/")
    text = client.get("/metrics").content.decode()
    assert count(text) == before + 2
    assert "/api/v1/sessions/123" not in text


def test_an_unmatched_path_is_one_series(client, db):
    def count(text):
        return value(text, "orchestrator_http_request_duration_seconds_count",
                     route=metrics.UNMATCHED_ROUTE, method="GET", status="404") or 0

    before = count(client.get("/metrics").content.decode())
    client.get("/no/such/page-1")
    client.get("/no/such/page-2")
    text = client.get("/metrics").content.decode()
    assert count(text) == before + 2
    assert "page-1" not in text


def test_event_lag_is_opencode_completion_to_stored_event(db):
    from datetime import timedelta

    from orchestrator import event_lag
    from sessions.models import SessionEvent
    from sessions.opencode.events import Event

    def observed():
        from prometheus_client import generate_latest

        text = generate_latest(metrics.registry(with_database=False)).decode()
        return (value(text, "orchestrator_event_lag_seconds_sum") or 0,
                value(text, "orchestrator_event_lag_seconds_count") or 0)

    session = CodingSessionFactory(status="running")
    SessionEvent.objects.create(session=session, type="opencode.step", payload={"message_id": "msg_before"})
    event_lag.reset()
    event_lag.observe_stored()  # starts after what is stored now
    stored = SessionEvent.objects.create(session=session, type="opencode.step", payload={"message_id": "msg_a"})
    SessionEvent.objects.create(session=session, type="opencode.step", payload={"message_id": "msg_unnoted"})
    completed = stored.created_at - timedelta(seconds=1.5)

    def message(message_id, role="assistant", completed_ms=None):
        info = {
            "id": message_id,
            "role": role,
            "time": {"created": 1, **({"completed": completed_ms} if completed_ms else {})},
        }
        return Event(id=None, type="message.updated", properties={"info": info})

    event_lag.note_opencode_event(message("msg_a", completed_ms=completed.timestamp() * 1000))
    event_lag.note_opencode_event(message("msg_user", role="user", completed_ms=completed.timestamp() * 1000))
    event_lag.note_opencode_event(message("msg_running"))  # not completed yet: nothing to measure
    event_lag.note_opencode_event(Event(id=None, type="session.idle", properties={}))
    sum_before, count_before = observed()

    assert event_lag.observe_stored() == 1
    sum_after, count_after = observed()
    assert count_after == count_before + 1
    assert sum_after - sum_before == pytest.approx(1.5, abs=0.01)
    assert event_lag.observe_stored() == 0  # each stored step is observed once
    event_lag.reset()


def gauge_total(name):
    from prometheus_client import generate_latest

    return value(generate_latest(metrics.registry(with_database=False)).decode(), name)


@pytest.mark.opencode
def test_the_sampler_counts_opencode_servers_restarts_and_open_directories(tmp_path):
    """With real `opencode serve` processes started by this process, as a worker starts them."""
    import os

    from orchestrator.metrics_worker import OpenCodeSampler
    from orchestrator.testing import make_git_repository
    from sessions.opencode.server import OpenCodeServer

    repositories = [make_git_repository(tmp_path / f"repo{n}") for n in range(3)]
    sampler = OpenCodeSampler(os.getpid())
    sampler.sample()
    restarts_before = gauge_total("orchestrator_opencode_server_restarts_total")
    assert gauge_total("orchestrator_opencode_servers_up") == 0

    first = OpenCodeServer(state_dir=tmp_path / "first")
    first.start()
    try:
        for repository in repositories:
            first.client(directory=str(repository)).status()
        first.client(directory=str(repositories[0])).dispose_instance()
        sampler.sample()
        assert gauge_total("orchestrator_opencode_servers_up") == 1
        assert gauge_total("orchestrator_opencode_directories_open") == 2
        assert gauge_total("orchestrator_opencode_server_restarts_total") == restarts_before  # a first server
    finally:
        first.stop()
    second = OpenCodeServer(state_dir=tmp_path / "second")
    second.start()
    try:
        sampler.sample()
        assert gauge_total("orchestrator_opencode_servers_up") == 1
        assert gauge_total("orchestrator_opencode_server_restarts_total") == restarts_before + 1
        # The stopped server's directories closed with it.
        assert gauge_total("orchestrator_opencode_directories_open") == 0
    finally:
        second.stop()
    sampler.sample()
    assert gauge_total("orchestrator_opencode_servers_up") == 0


def test_open_directories_follow_requests_disposals_and_server_lifetimes():
    import time

    from orchestrator import opencode_directories as directories

    url = "http://127.0.0.1:4096"
    started = time.time() - 60
    directories.open_directories(live_servers={})  # forget what other tests' servers left
    directories.note_opencode_request(url, "GET", "/session/status", "/w/a")
    directories.note_opencode_request(url, "POST", "/session", "/w/b")
    directories.note_opencode_request(url, "GET", "/session/status", None)  # no directory: nothing opened
    directories.note_opencode_request(url, "POST", "/instance/dispose", "/w/a")
    assert directories.open_directories(live_servers={4096: started}) == 1
    # A replacement server on the same port (OpenCode tries 4096 first) starts with none open.
    assert directories.open_directories(live_servers={4096: time.time() + 1}) == 0
    directories.note_opencode_request(url, "POST", "/session", "/w/c")
    assert directories.open_directories(live_servers={4096: started}) == 1
    # The server is gone: so are its directories.
    assert directories.open_directories(live_servers={}) == 0
