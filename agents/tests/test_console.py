"""The console pages and the admin (list, filters, actions that call services)."""

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from agents.models import Agent
from agents.services import agent_record_result
from agents.tests.factories import AgentFactory

pytestmark = pytest.mark.django_db


def test_list_page_needs_login(client):
    response = client.get(reverse("agents:list"))
    assert response.status_code == 302


def test_list_page_shows_roster_with_load_bars(client, viewer_user, django_assert_max_num_queries):
    AgentFactory(name="AGENT-LOADED", current_load=3, status="busy", max_concurrent_tasks=4)
    client.force_login(viewer_user)
    # session, user, role, agents, their current tasks (one query for all), the newest event id
    # (the live feed's start) and the nav's pending approvals count.
    with django_assert_max_num_queries(7):
        response = client.get(reverse("agents:list"))
    html = response.content.decode()
    assert response.status_code == 200
    assert "AGENT-ARCHITECT" in html and "AGENT-LOADED" in html
    assert 'class="loadbar"' in html and "width: 75%" in html
    assert "not monitored" in html


def test_list_page_filters(client, viewer_user):
    AgentFactory(name="AGENT-DOWN", status="offline")
    client.force_login(viewer_user)
    html = client.get(reverse("agents:list") + "?status=offline").content.decode()
    assert "AGENT-DOWN" in html and "AGENT-ARCHITECT" not in html


def test_detail_page(client, viewer_user):
    agent = Agent.objects.get(name="AGENT-REVIEWER")
    agent_record_result(agent=agent, outcome="completed", quality=0.9, duration=60, tokens=100, cost=0)
    client.force_login(viewer_user)
    html = client.get(reverse("agents:detail", args=[agent.pk])).content.decode()
    assert "code_review" in html and "edit: off" in html and "100%" in html
    assert client.get(reverse("agents:detail", args=[999999])).status_code == 404


@pytest.fixture
def admin_client_logged(client):
    user = User.objects.create_superuser("root", "root@example.test", "pw")
    client.force_login(user)
    return client


def test_admin_changelist_with_filters(admin_client_logged):
    AgentFactory(name="AGENT-ADMIN", capabilities=["scaling"])
    base = reverse("admin:agents_agent_changelist")
    html = admin_client_logged.get(base).content.decode()
    assert "AGENT-ADMIN" in html and "loadbar" in html
    html = admin_client_logged.get(base + "?capability=scaling&tier=COMPETENT").content.decode()
    assert "AGENT-ADMIN" in html and "AGENT-REVIEWER" not in html


def test_admin_actions_call_the_services(admin_client_logged):
    agent = AgentFactory()
    base = reverse("admin:agents_agent_changelist")
    admin_client_logged.post(base, {"action": "maintenance_on", "_selected_action": [agent.pk]})
    assert Agent.objects.get(pk=agent.pk).status == "maintenance"
    admin_client_logged.post(base, {"action": "maintenance_off", "_selected_action": [agent.pk]})
    assert Agent.objects.get(pk=agent.pk).status == "available"
    for _ in range(5):
        agent_record_result(agent=agent, outcome="failed", quality=0, duration=1)
    assert Agent.objects.get(pk=agent.pk).circuit_open
    admin_client_logged.post(base, {"action": "reset_circuit_breaker", "_selected_action": [agent.pk]})
    stored = Agent.objects.get(pk=agent.pk)
    assert (stored.circuit_open, stored.tier) == (False, "TRAINEE")


def test_admin_add_form_registers_through_the_service(admin_client_logged):
    response = admin_client_logged.post(
        reverse("admin:agents_agent_add"),
        {
            "name": "AGENT-FROM-ADMIN",
            "agent_type": "optimizer",
            "capabilities": ["optimization", "scaling"],
            "opencode_agent": "build",
            "max_concurrent_tasks": 3,
            "tools": "{}",
            "description": "",
            "model_identifier": "",
            "system_prompt": "",
            "temperature": "",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    agent = Agent.objects.get(name="AGENT-FROM-ADMIN")
    assert agent.capabilities == ["optimization", "scaling"]
    change = admin_client_logged.get(reverse("admin:agents_agent_change", args=[agent.pk]))
    assert change.status_code == 200
