from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse

from agents.tests.factories import AgentFactory
from sessions import services
from sessions.models import CodingSession, SessionTransition
from sessions.tests.factories import CodingSessionFactory

pytestmark = pytest.mark.django_db

REPOSITORY = Path(settings.REPOSITORY_ROOTS[0]) / "app"
VALID = {
    "title": "Move settings to environment variables",
    "initial_prompt": "Read every setting from the environment with a default.",
    "repository": str(REPOSITORY),
}


@pytest.fixture(autouse=True)
def app_repository():
    """Create checks the repository (sessions.repositories): it must be a real one."""
    from orchestrator.testing import make_git_repository

    if not (REPOSITORY / ".git").exists():
        make_git_repository(REPOSITORY)


def url(name, *args):
    return reverse(f"api:session-{name}", args=args)


def create(client, **changes):
    return client.post(url("list"), {**VALID, **changes}, format="json")


# --- create and validation ---------------------------------------------------------


def test_create_returns_the_session_with_its_reference(api_client, broker_queues):
    response = create(api_client, priority="HIGH", tags=["backend", "config"], permission_policy={"bash": "ask"})
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["reference"] == f"IND-{body['id']:06d}"
    assert (body["status"], body["priority"], body["priority_name"]) == ("pending", 1, "HIGH")
    assert body["allowed_actions"] == ["cancel", "fail", "run", "start"]
    assert body["created_by"] == api_client.user.username
    assert body["permission_policy"] == {"bash": "ask"}
    assert body["health_score"] == 0.8


def test_create_with_start_queues_it_on_its_priority_queue(
    api_client, broker_queues, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = create(api_client, priority=0, start=True)
    assert response.json()["status"] == "queued"
    assert [m["queue"] for m in broker_queues.drain()] == [broker_queues.names[0]]


@pytest.mark.parametrize(
    ("changes", "field", "rule"),
    [
        ({"title": "Untitled"}, "title", "is too generic: name what the session does"),
        ({"title": "x" * 201}, "title", "must be at most 200 characters"),
        ({"title": ""}, "title", "is required (1-200 characters)"),
        ({"initial_prompt": "p" * 100_001}, "initial_prompt", "must be at most 100000 characters"),
        ({"max_duration_seconds": 59}, "max_duration_seconds", "must be between 60 and 86400"),
        ({"max_duration_seconds": 86_401}, "max_duration_seconds", "must be between 60 and 86400"),
        ({"priority": "URGENT"}, "priority", "must be one of CRITICAL, HIGH, MEDIUM, LOW, DEFERRED or 0-4"),
        (
            {"model_identifier": "gpt4"},
            "model_identifier",
            "must look like provider/model, e.g. anthropic/claude-sonnet-4",
        ),
        ({"session_type": "chat"}, "session_type", "must be one of planning, execution, review, debug, integration"),
        ({"permission_policy": {"bash": "sometimes"}}, "permission_policy", 'bash: must be "allow", "ask" or "deny"'),
    ],
)
def test_invalid_input_is_400_naming_field_and_rule(api_client, changes, field, rule):
    response = create(api_client, **changes)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["details"] == {field: [rule]}
    assert field in error["message"]
    assert not CodingSession.objects.exists()


def test_wrong_types_are_400_naming_the_field(api_client):
    response = create(api_client, max_retries="many", parent=424242)
    assert response.status_code == 400
    assert set(response.json()["error"]["details"]) == {"max_retries", "parent"}


def test_viewer_cannot_create(viewer_client):
    assert create(viewer_client).status_code == 403


def test_anonymous_is_refused(anonymous_client):
    assert anonymous_client.get(url("list")).status_code in (401, 403)


# --- transitions ------------------------------------------------------------------------


def test_start_then_pause_from_queued_is_409_with_current_state_and_allowed(api_client, broker_queues):
    session_id = create(api_client).json()["id"]
    assert api_client.post(url("start", session_id)).json()["status"] == "queued"
    response = api_client.post(url("pause", session_id), {"reason": "wait"}, format="json")
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "transition_refused"
    assert error["details"] == {"current": "queued", "attempted": "pause", "allowed": ["cancel", "fail", "run"]}
    assert "queued" in error["message"]


def test_commands_drive_a_session_through_its_life(api_client, broker_queues):
    session = CodingSessionFactory(status="running")
    assert api_client.post(url("pause", session.pk), {"reason": "break"}, format="json").json()["status"] == "paused"
    assert api_client.post(url("resume", session.pk)).json()["status"] == "queued"
    services.session_claim(session_id=session.pk, worker_id="w")
    body = api_client.post(url("complete", session.pk), {"result": {"files": 3}}, format="json").json()
    assert (body["status"], body["metrics"]["result"]) == ("completed", {"files": 3})
    transitions = api_client.get(url("transitions", session.pk)).json()["results"]
    assert [(t["from_status"], t["to_status"]) for t in transitions] == [
        ("running", "paused"), ("paused", "queued"), ("queued", "running"), ("running", "completed"),
    ]
    assert transitions[0]["actor"]["kind"] == "user" and transitions[0]["reason"] == "break"


def test_fail_stop_cancel_and_retry(api_client, broker_queues):
    running = CodingSessionFactory(status="running")
    body = api_client.post(
        url("fail", running.pk), {"error": {"type": "tool", "message": "boom", "context": {}}}, format="json"
    ).json()
    assert body["status"] == "failed" and body["metrics"]["error"]["message"] == "boom"
    body = api_client.post(url("retry", running.pk), {"start": True}, format="json").json()
    assert (body["status"], body["metrics"]["retry_count"]) == ("queued", 1)
    assert api_client.post(url("cancel", running.pk)).json()["status"] == "cancelled"
    assert api_client.post(url("stop", CodingSessionFactory(status="degraded").pk)).json()["status"] == "stopped"


def test_bad_fail_error_is_400(api_client):
    session = CodingSessionFactory(status="running")
    response = api_client.post(url("fail", session.pk), {"error": {"kind": "x"}}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"error": ["unknown keys: kind"]}


# --- checkpoints, events, stats -----------------------------------------------------------


def test_checkpoints_list_create_and_restore(api_client):
    session = CodingSessionFactory(status="running")
    created = api_client.post(url("checkpoints", session.pk), {"data": {"n": 1}, "git_ref": "abc"}, format="json")
    assert created.status_code == 201 and created.json()["sequence"] == 1
    api_client.post(url("checkpoints", session.pk), {}, format="json")
    listed = api_client.get(url("checkpoints", session.pk)).json()["results"]
    assert [c["sequence"] for c in listed] == [1, 2]
    assert api_client.post(url("restore-checkpoint", session.pk, 1)).status_code == 409
    api_client.post(url("pause", session.pk))
    body = api_client.post(url("restore-checkpoint", session.pk, 1)).json()
    assert body["resume_checkpoint"] == 1
    assert api_client.post(url("restore-checkpoint", session.pk, 9)).status_code == 404


def test_events_after_an_id(api_client):
    session = CodingSessionFactory(status="running")
    for number in range(3):
        services.session_record_event(session=session, type="opencode.message", payload={"n": number})
    events = api_client.get(url("events", session.pk)).json()
    assert [e["payload"]["n"] for e in events["results"]] == [0, 1, 2]
    first_id = events["results"][0]["id"]
    after = api_client.get(url("events", session.pk), {"after": first_id}).json()
    assert [e["payload"]["n"] for e in after["results"]] == [1, 2]
    assert after["next_after"] == events["results"][-1]["id"]
    assert api_client.get(url("events", session.pk), {"after": "x"}).status_code == 400


def test_stats_count_by_status_and_list_at_risk(api_client):
    from datetime import timedelta

    from django.utils import timezone

    CodingSessionFactory(status="running", run_started_at=timezone.now() - timedelta(seconds=3400))
    CodingSessionFactory(status="running", run_started_at=timezone.now())
    CodingSessionFactory(status="failed")
    CodingSessionFactory(status="failed", deleted_at=timezone.now())
    body = api_client.get(url("stats")).json()
    assert body["by_status"]["running"] == 2 and body["by_status"]["failed"] == 1
    assert body["total"] == 3
    assert len(body["at_risk"]) == 1 and body["at_risk"][0]["seconds_left"] < 300


# --- list ----------------------------------------------------------------------------------


def test_list_filters(api_client):
    agent = AgentFactory()
    target = CodingSessionFactory(
        status="failed", session_type="review", priority=0, agent=agent, repository="/srv/a",
        tags=["backend", "db"], description="migrate the ledger tables",
    )
    CodingSessionFactory(status="running", tags=["frontend"])
    CodingSessionFactory(status="failed", session_type="debug")
    for params in [
        {"status": "failed,completed", "session_type": "review"},
        {"priority": "CRITICAL"},
        {"agent": agent.pk},
        {"repository": "/srv/a"},
        {"tag": "db"},
        {"search": "LEDGER"},
        {"created_after": target.created_at.isoformat().replace("+00:00", "Z"), "type": "review"},
    ]:
        ids = [s["id"] for s in api_client.get(url("list"), params).json()["results"]]
        assert ids == [target.pk], params


def test_list_rejects_unknown_filters_values(api_client):
    response = api_client.get(url("list"), {"status": "sleeping", "priority": "urgent"})
    assert response.status_code == 400
    assert set(response.json()["error"]["details"]) == {"status", "priority"}
    assert api_client.get(url("list"), {"page_size": 101}).json()["error"]["details"] == {
        "page_size": ["must be at most 100"]
    }


def test_list_pages_with_a_stable_cursor(api_client):
    made = [CodingSessionFactory().pk for _ in range(7)]
    first = api_client.get(url("list"), {"page_size": 3}).json()
    assert [s["id"] for s in first["results"]] == made[::-1][:3]
    CodingSessionFactory()  # a new session does not shift later pages
    second = api_client.get(url("list"), {"page_size": 3, "cursor": first["next_cursor"]}).json()
    assert [s["id"] for s in second["results"]] == made[::-1][3:6]
    third = api_client.get(second["next"]).json()
    assert [s["id"] for s in third["results"]] == made[:1] and third["next_cursor"] is None


def test_list_query_count_does_not_grow_with_page_size(api_client, django_assert_max_num_queries):
    agent = AgentFactory()
    for _ in range(60):
        CodingSessionFactory(agent=agent, created_by=api_client.user, status="running")
    with django_assert_max_num_queries(4):
        small = api_client.get(url("list"), {"page_size": 5})
    with django_assert_max_num_queries(4):
        large = api_client.get(url("list"), {"page_size": 60})
    assert len(small.json()["results"]) == 5 and len(large.json()["results"]) == 60


# --- delete ----------------------------------------------------------------------------------


def test_deleted_session_is_404_everywhere(api_client):
    session = CodingSessionFactory(status="failed")
    assert api_client.delete(url("detail", session.pk)).status_code == 204
    assert CodingSession.objects.filter(pk=session.pk, deleted_at__isnull=False).exists()
    for method, name, args in [
        ("get", "detail", ()), ("post", "retry", ()), ("get", "checkpoints", ()), ("get", "transitions", ()),
        ("get", "events", ()), ("delete", "detail", ()), ("post", "restore-checkpoint", (1,)),
    ]:
        response = getattr(api_client, method)(url(name, session.pk, *args))
        assert response.status_code == 404, (name, response.status_code)
        assert response.json()["error"]["code"] == "not_found"
    assert api_client.get(url("list")).json()["results"] == []


def test_delete_of_a_running_session_is_409(api_client):
    session = CodingSessionFactory(status="running")
    response = api_client.delete(url("detail", session.pk))
    assert response.status_code == 409
    assert response.json()["error"]["details"]["current"] == "running"
    assert not SessionTransition.objects.exists()


def test_unknown_id_is_404(api_client):
    assert api_client.get(url("detail", 987654)).status_code == 404
    assert api_client.post(url("start", 987654)).status_code == 404


def test_paths_work_with_and_without_a_trailing_slash(api_client):
    session = CodingSessionFactory(status="running")
    assert api_client.get("/api/v1/sessions").status_code == 200
    assert api_client.get("/api/v1/sessions/").status_code == 200
    assert api_client.get(f"/api/v1/sessions/{session.pk}").status_code == 200
    assert api_client.post(f"/api/v1/sessions/{session.pk}/pause").json()["status"] == "paused"
    assert api_client.get(f"/api/v1/sessions/{session.pk}/events/").status_code == 200


@pytest.mark.postgres
def test_search_finds_rare_matches_beyond_the_newest_window_and_pages_them(api_client, monkeypatch):
    from sessions import selectors

    monkeypatch.setattr(selectors, "SEARCH_WINDOW", 3)
    made = [CodingSessionFactory(description="plain work").pk for _ in range(12)]
    matching = [made[1], made[4], made[5], made[10]]
    CodingSession.objects.filter(pk__in=matching).update(description="fix the QUASAR importer")
    first = api_client.get(url("list"), {"search": "quasar", "page_size": 3}).json()
    assert [s["id"] for s in first["results"]] == [made[10], made[5], made[4]]
    second = api_client.get(url("list"), {"search": "quasar", "page_size": 3, "cursor": first["next_cursor"]}).json()
    assert [s["id"] for s in second["results"]] == [made[1]] and second["next_cursor"] is None


def test_missing_required_fields_are_400_naming_each(api_client):
    response = api_client.post("/api/v1/sessions", {}, format="json")
    assert response.status_code == 400
    assert set(response.json()["error"]["details"]) == {"title", "initial_prompt", "repository"}
    response = api_client.post("/api/v1/sessions", {"title": "Add a health probe", "repository": "/etc"}, format="json")
    assert response.status_code == 400
    assert "initial_prompt" in response.json()["error"]["details"]
    assert not CodingSession.objects.exists()
