"""/api/v1/agents: register, list, detail, patch, delete/drain, route, heartbeat, performance."""

import pytest
from django.urls import reverse

from agents.models import Agent
from agents.tests.factories import AgentFactory

pytestmark = pytest.mark.django_db

LIST = "/api/v1/agents"


def url(agent, suffix=""):
    return f"{LIST}/{agent.pk}{suffix}"


VALID = {"name": "AGENT-API", "agent_type": "reviewer", "capabilities": ["code_review", "security_audit"]}


def test_list_name_reverses():
    assert reverse("api:agent-list") == "/api/v1/agents"
    assert reverse("api:agent-route") == "/api/v1/agents/route"


def test_register_returns_the_agent(api_client):
    response = api_client.post(
        LIST,
        {**VALID, "opencode_agent": "plan", "tools": {"edit": False, "bash": False}, "temperature": 0.2,
         "model_identifier": "anthropic/claude-sonnet-4", "max_concurrent_tasks": 7},
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["capabilities"] == ["code_review", "security_audit"]
    assert (body["status"], body["tier"], body["load_level"], body["max_concurrent_tasks"]) == (
        "available",
        "COMPETENT",
        "IDLE",
        7,
    )
    assert body["tools"] == {"edit": False, "bash": False}


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"name": "nope"}, "name"),
        ({"agent_type": "wizard"}, "agent_type"),
        ({"capabilities": ["telepathy"]}, "capabilities.0"),
        ({"capabilities": []}, "capabilities"),
        ({"max_concurrent_tasks": 51}, "max_concurrent_tasks"),
        ({"max_concurrent_tasks": 0}, "max_concurrent_tasks"),
        ({"temperature": -0.1}, "temperature"),
        ({"model_identifier": "gpt"}, "model_identifier"),
        ({"name": "AGENT-ARCHITECT"}, "name"),
    ],
)
def test_register_validation_errors_name_the_field(api_client, changes, field):
    response = api_client.post(LIST, {**VALID, **changes}, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert field in error["details"], error


def test_viewer_can_read_but_not_write(viewer_client):
    agent = AgentFactory()
    assert viewer_client.get(LIST).status_code == 200
    assert viewer_client.post(LIST, VALID, format="json").status_code == 403
    assert viewer_client.patch(url(agent), {"description": "x"}, format="json").status_code == 403
    assert viewer_client.delete(url(agent)).status_code == 403
    assert viewer_client.post(url(agent, "/heartbeat"), {}, format="json").status_code == 403
    assert viewer_client.post(f"{LIST}/route", {"required_capabilities": []}, format="json").status_code == 403
    assert not Agent.objects.filter(name="AGENT-API").exists()


def test_anonymous_is_refused(anonymous_client):
    assert anonymous_client.get(LIST).status_code in (401, 403)


def test_list_filters_and_orders(api_client, django_assert_max_num_queries):
    Agent.objects.all().delete()
    AgentFactory(name="AGENT-A", agent_type="debugger", capabilities=["debugging", "testing"], tier="TRAINEE")
    AgentFactory(name="AGENT-B", agent_type="debugger", capabilities=["debugging"], tier="ELITE", status="offline")
    AgentFactory(name="AGENT-C", agent_type="reviewer", capabilities=["code_review"], tier="ADVANCED")
    for index in range(20):
        AgentFactory(name=f"AGENT-X{index:02d}", agent_type="optimizer", capabilities=["optimization"])

    def names(query):
        response = api_client.get(f"{LIST}?{query}")
        assert response.status_code == 200, response.json()
        return [row["name"] for row in response.json()["results"]]

    assert names("type=debugger") == ["AGENT-A", "AGENT-B"]
    assert names("capability=debugging&capability=testing") == ["AGENT-A"]
    assert names("capability=debugging,testing") == ["AGENT-A"]
    assert names("status=offline") == ["AGENT-B"]
    assert names("tier=ADVANCED") == ["AGENT-C"]
    assert names("ordering=tier&page_size=3") == ["AGENT-B", "AGENT-C", "AGENT-X00"]
    assert names("ordering=-name&type=debugger") == ["AGENT-B", "AGENT-A"]
    with django_assert_max_num_queries(5):
        response = api_client.get(LIST)
    assert response.json()["count"] == 23


@pytest.mark.parametrize(
    "query, field",
    [
        ("type=wizard", "type"),
        ("capability=telepathy", "capability"),
        ("ordering=colour", "ordering"),
        ("tier=GOD", "tier"),
    ],
)
def test_list_rejects_unknown_filter_values(api_client, query, field):
    response = api_client.get(f"{LIST}?{query}")
    assert response.status_code == 400
    assert field in response.json()["error"]["details"]


def test_detail_and_unknown_agent(api_client):
    agent = AgentFactory(current_load=4, status="busy")
    body = api_client.get(url(agent)).json()
    assert (body["name"], body["load_level"], body["utilisation"]) == (agent.name, "HIGH", 0.8)
    assert api_client.get(f"{LIST}/999999").status_code == 404


def test_patch_changes_configuration_but_never_status(api_client):
    agent = AgentFactory()
    response = api_client.patch(
        url(agent), {"capabilities": ["testing"], "max_concurrent_tasks": 9, "status": "offline"}, format="json"
    )
    assert response.status_code == 200, response.json()
    stored = Agent.objects.get(pk=agent.pk)
    assert (stored.capabilities, stored.max_concurrent_tasks, stored.status) == (["testing"], 9, "available")
    response = api_client.patch(url(agent), {"max_concurrent_tasks": 99}, format="json")
    assert response.status_code == 400 and "max_concurrent_tasks" in response.json()["error"]["details"]


def test_put_is_not_offered(api_client):
    assert api_client.put(url(AgentFactory()), VALID, format="json").status_code == 405


def test_delete_is_refused_while_busy_and_drains_on_request(api_client):
    agent = AgentFactory(current_load=1, status="busy")
    response = api_client.delete(url(agent))
    assert response.status_code == 409
    assert response.json()["error"]["details"] == {"tasks_in_progress": 1}
    response = api_client.delete(url(agent) + "?drain=true")
    assert response.status_code == 202
    assert response.json()["agent"]["draining"] is True
    idle = AgentFactory()
    assert api_client.delete(url(idle)).status_code == 204
    assert not Agent.objects.filter(pk=idle.pk).exists()


def test_route_is_a_dry_run(api_client):
    Agent.objects.all().delete()
    chosen = AgentFactory(name="AGENT-BEST", tier="ELITE", capabilities=["testing"])
    AgentFactory(name="AGENT-NEXT", capabilities=["testing"])
    response = api_client.post(f"{LIST}/route", {"required_capabilities": ["testing"]}, format="json")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["agent"]["name"] == "AGENT-BEST"
    assert body["score"] == 1.0
    assert body["reason"] == "full capability match, low load; score 1.00"
    assert body["alternatives"] == [
        {"id": body["alternatives"][0]["id"], "name": "AGENT-NEXT", "agent_type": "implementer", "score": 0.84}
    ]
    assert Agent.objects.get(pk=chosen.pk).current_load == 0


def test_route_with_preferences(api_client):
    response = api_client.post(
        f"{LIST}/route",
        {
            "required_capabilities": ["code_review"],
            "preferred_type": "reviewer",
            "preferred_agent": "AGENT-REVIEWER",
            "min_tier": "TRAINEE",
        },
        format="json",
    )
    assert response.status_code == 200, response.json()
    assert response.json()["agent"]["name"] == "AGENT-REVIEWER"
    assert "preferred agent, preferred type" in response.json()["reason"]


def test_route_without_candidate_is_409_naming_the_capability(api_client):
    Agent.objects.all().delete()
    AgentFactory(capabilities=["testing"])
    response = api_client.post(f"{LIST}/route", {"required_capabilities": ["testing", "scaling"]}, format="json")
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "no_agent_available"
    assert error["details"]["missing_capabilities"] == ["scaling"]


def test_route_rejects_unknown_capability(api_client):
    response = api_client.post(f"{LIST}/route", {"required_capabilities": ["telepathy"]}, format="json")
    assert response.status_code == 400
    assert "required_capabilities.0" in response.json()["error"]["details"]


def test_heartbeat_endpoint(api_client):
    agent = AgentFactory(status="offline", max_concurrent_tasks=4)
    response = api_client.post(url(agent, "/heartbeat"), {"tasks_in_progress": 2, "load": 0.5}, format="json")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["status"], body["current_load"]) == ("busy", 2)
    assert body["heartbeat_age_seconds"] < 5
    response = api_client.post(url(agent, "/heartbeat"), {"tasks_in_progress": 5}, format="json")
    assert response.status_code == 400 and "tasks_in_progress" in response.json()["error"]["details"]
    response = api_client.post(url(agent, "/heartbeat"), {"status": "offline"}, format="json")
    assert response.status_code == 400 and "status" in response.json()["error"]["details"]


def test_heartbeat_without_body(api_client):
    agent = AgentFactory()
    assert api_client.post(url(agent, "/heartbeat")).status_code == 200
    assert Agent.objects.get(pk=agent.pk).last_heartbeat_at is not None


def test_performance(api_client):
    from agents.services import agent_record_result

    agent = AgentFactory()
    agent_record_result(agent=agent, outcome="completed", quality=0.8, duration=12, tokens=500, cost="0.25")
    body = api_client.get(url(agent, "/performance")).json()
    assert body["total_tasks"] == 1 and body["success_rate"] == 1.0
    assert body["average_tokens_per_task"] == 500 and body["average_cost_per_task"] == "0.250000"
    assert (body["tier"], body["circuit_open"], body["load_level"]) == ("COMPETENT", False, "IDLE")
