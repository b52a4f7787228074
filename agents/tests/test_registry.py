"""Registration, changes, deletion and draining, heartbeats, track record, the default roster."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from agents import jobs
from agents.models import Agent, AgentType
from agents.roster import DEFAULT_ROSTER
from agents.routing import ALL_CAPABILITIES_MASK, capability_mask
from agents.services import (
    agent_delete,
    agent_heartbeat,
    agent_mark_stale_offline,
    agent_record_result,
    agent_register,
    agent_release,
    agent_reserve,
    agent_reset_circuit_breaker,
    agent_set_maintenance,
    agent_update,
)
from agents.tests.factories import AgentFactory
from orchestrator.errors import Conflict, ValidationFailed

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("agent_type", AgentType.values)
def test_every_type_can_be_registered(agent_type):
    agent = agent_register(name=f"AGENT-{agent_type.upper()}-2", agent_type=agent_type, capabilities=["testing"])
    assert Agent.objects.get(pk=agent.pk).agent_type == agent_type
    assert (agent.status, agent.tier, agent.max_concurrent_tasks) == ("available", "COMPETENT", 5)


def test_eight_types_including_analyst_and_optimizer():
    assert len(AgentType.values) == 8
    assert {"analyst", "optimizer"} <= set(AgentType.values)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"name": "agent-lower"}, "name"),
        ({"name": "AGENT-"}, "name"),
        ({"name": "AGENT-ARCHITECT"}, "name"),  # taken by the default roster
        ({"agent_type": "wizard"}, "agent_type"),
        ({"capabilities": ["telepathy"]}, "capabilities"),
        ({"max_concurrent_tasks": 0}, "max_concurrent_tasks"),
        ({"max_concurrent_tasks": 51}, "max_concurrent_tasks"),
        ({"temperature": 2.5}, "temperature"),
        ({"model_identifier": "no-slash"}, "model_identifier"),
        ({"opencode_agent": "Build Agent"}, "opencode_agent"),
        ({"tools": {"edit": "no"}}, "tools"),
    ],
)
def test_registration_rejects_bad_fields_by_name(changes, field):
    fields = {"name": "AGENT-NEW", "agent_type": "implementer", "capabilities": ["testing"], **changes}
    with pytest.raises(ValidationFailed) as error:
        agent_register(**fields)
    assert field in error.value.errors
    assert not Agent.objects.filter(name=fields["name"]).exists() or field == "name"


def test_capacity_bounds_are_accepted():
    assert agent_register(name="AGENT-ONE", agent_type="analyst", capabilities=[], max_concurrent_tasks=1)
    assert agent_register(name="AGENT-FIFTY", agent_type="analyst", capabilities=[], max_concurrent_tasks=50)


def test_update_changes_only_named_fields_and_keeps_the_load():
    agent = AgentFactory(current_load=2)
    Agent.objects.filter(pk=agent.pk).update(current_load=3)  # a reservation the stale instance has not seen
    updated = agent_update(
        agent=agent, capabilities=["code_review", "testing"], temperature=0.4, model_identifier="openai/gpt-5"
    )
    stored = Agent.objects.get(pk=agent.pk)
    assert stored.capabilities == ["testing", "code_review"]
    assert (stored.temperature, stored.model_identifier, stored.current_load) == (0.4, "openai/gpt-5", 3)
    assert updated.current_load == 3


def test_update_refuses_status_and_load():
    agent = AgentFactory()
    with pytest.raises(ValidationFailed) as error:
        agent_update(agent=agent, current_load=0, status="offline")
    assert set(error.value.errors) == {"current_load", "status"}


def test_delete_of_an_idle_agent_removes_it():
    agent = AgentFactory()
    assert agent_delete(agent=agent) == "deleted"
    assert not Agent.objects.filter(pk=agent.pk).exists()


def test_delete_with_tasks_in_progress_is_refused():
    agent = AgentFactory(current_load=2, status="busy")
    with pytest.raises(Conflict) as error:
        agent_delete(agent=agent)
    assert error.value.details == {"tasks_in_progress": 2}
    assert Agent.objects.filter(pk=agent.pk, draining=False).exists()


def test_drain_stops_new_assignments_and_removes_the_agent_when_idle():
    agent = AgentFactory(current_load=2, status="busy")
    assert agent_delete(agent=agent, drain=True) == "draining"
    with pytest.raises(Conflict) as error:
        agent_reserve(agent=agent)
    assert "draining" in error.value.message
    assert agent_release(agent=agent).current_load == 1
    assert agent_release(agent=agent) is None
    assert not Agent.objects.filter(pk=agent.pk).exists()


def test_heartbeat_brings_an_offline_agent_back():
    agent = AgentFactory(status="offline", last_heartbeat_at=timezone.now() - timedelta(hours=1))
    agent = agent_heartbeat(agent=agent)
    assert agent.status == "available"
    assert timezone.now() - agent.last_heartbeat_at < timedelta(seconds=5)


def test_heartbeat_reconciles_the_load_and_reports_status():
    agent = AgentFactory(max_concurrent_tasks=4)
    agent = agent_heartbeat(agent=agent, tasks_in_progress=3, load=0.75)
    assert (agent.current_load, agent.status, agent.reported_load) == (3, "busy", 0.75)
    agent = agent_heartbeat(agent=agent, status="maintenance")
    assert Agent.objects.get(pk=agent.pk).status == "maintenance"
    agent = agent_heartbeat(agent=agent, status="available", tasks_in_progress=0)
    assert Agent.objects.get(pk=agent.pk).status == "available"


def test_heartbeat_refuses_more_tasks_than_capacity():
    agent = AgentFactory(max_concurrent_tasks=2)
    with pytest.raises(ValidationFailed) as error:
        agent_heartbeat(agent=agent, tasks_in_progress=3)
    assert "tasks_in_progress" in error.value.errors


@pytest.mark.parametrize("age_seconds, status", [(299, "available"), (301, "offline")])
def test_agents_silent_for_300_seconds_go_offline(age_seconds, status):
    now = timezone.now()
    agent = AgentFactory(last_heartbeat_at=now - timedelta(seconds=age_seconds))
    agent_mark_stale_offline(now=now)
    assert Agent.objects.get(pk=agent.pk).status == status


def test_stale_marking_leaves_maintenance_and_unmonitored_agents_alone():
    old = timezone.now() - timedelta(hours=2)
    in_maintenance = AgentFactory(status="maintenance", last_heartbeat_at=old)
    never_heard = AgentFactory(last_heartbeat_at=None)
    busy = AgentFactory(status="busy", current_load=1, last_heartbeat_at=old)
    assert jobs.mark_stale_offline() == 1
    statuses = dict(
        Agent.objects.filter(pk__in=[in_maintenance.pk, never_heard.pk, busy.pk]).values_list("pk", "status")
    )
    assert statuses == {in_maintenance.pk: "maintenance", never_heard.pk: "available", busy.pk: "offline"}


def test_stale_job_has_its_registered_name():
    assert jobs.mark_stale_offline.name == "agents.mark_stale_offline"


def test_maintenance_on_and_off():
    agent = AgentFactory()
    assert agent_set_maintenance(agent=agent, on=True).status == "maintenance"
    assert agent_set_maintenance(agent=agent, on=False).status == "available"


def test_an_agent_reporting_busy_leaves_maintenance():
    agent = agent_heartbeat(agent=AgentFactory(status="maintenance"), status="busy")
    assert Agent.objects.get(pk=agent.pk).status == "busy"


def test_ending_maintenance_of_an_agent_not_in_maintenance_changes_nothing():
    agent = agent_set_maintenance(agent=AgentFactory(status="offline"), on=False)
    assert Agent.objects.get(pk=agent.pk).status == "offline"


def record(agent, outcomes, quality=1.0):
    for outcome in outcomes:
        agent = agent_record_result(agent=agent, outcome=outcome, quality=quality, duration=10, tokens=100, cost="0.01")
    return agent


def test_track_record_accumulates_totals_and_averages():
    agent = AgentFactory()
    agent = agent_record_result(
        agent=agent, outcome="completed", quality=0.9, duration=timedelta(seconds=30), tokens=1000, cost=Decimal("0.50")
    )
    agent = agent_record_result(agent=agent, outcome="partial", quality=0.5, duration=10, tokens=3000, cost="0.30")
    agent = agent_record_result(agent=agent, outcome="failed", quality=0.1, duration=20, tokens=2000, cost=0)
    stored = Agent.objects.get(pk=agent.pk)
    assert (stored.total_tasks, stored.successful_tasks, stored.partial_tasks, stored.failed_tasks) == (3, 1, 1, 1)
    assert stored.success_rate == pytest.approx(0.5)
    assert stored.average_quality == pytest.approx(0.5)
    assert stored.average_duration_seconds == pytest.approx(20)
    assert stored.average_tokens_per_task == pytest.approx(2000)
    assert stored.total_cost == Decimal("0.80")
    assert stored.tier == "COMPETENT"  # fewer than 5 tasks


@pytest.mark.parametrize(
    "field, value",
    [("outcome", "success"), ("quality", 1.5), ("duration", -1), ("tokens", -5), ("cost", "-1")],
)
def test_record_result_rejects_bad_values_by_name(field, value):
    fields = {"outcome": "completed", "quality": 0.5, "duration": 1, "tokens": 1, "cost": 0, field: value}
    with pytest.raises(ValidationFailed) as error:
        agent_record_result(agent=AgentFactory(), **fields)
    assert list(error.value.errors) == [field]


def test_results_move_the_tier_from_competent_to_elite():
    agent = record(AgentFactory(), ["completed"] * 5, quality=0.95)
    assert (agent.tier, agent.success_rate) == ("ELITE", 1.0)


def test_breaker_trips_after_five_tasks_and_recovers_to_trainee():
    agent = record(AgentFactory(), ["failed"] * 4)
    assert (agent.tier, agent.circuit_open) == ("COMPETENT", False)
    agent = record(agent, ["failed"])
    assert (agent.tier, agent.circuit_open) == ("DEGRADED", True)
    assert agent.circuit_opened_at is not None
    # 5 failures then successes: 5/10 = 0.5 is not above 0.5, 6/11 is.
    agent = record(agent, ["completed"] * 5)
    assert (agent.tier, agent.circuit_open, agent.success_rate) == ("DEGRADED", True, 0.5)
    agent = record(agent, ["completed"])
    assert (agent.tier, agent.circuit_open) == ("TRAINEE", False)
    assert agent.circuit_opened_at is None


def test_reset_circuit_breaker_puts_a_degraded_agent_on_probation():
    agent = record(AgentFactory(), ["failed"] * 5)
    agent = agent_reset_circuit_breaker(agent=agent)
    assert (agent.tier, agent.circuit_open) == ("TRAINEE", False)


def test_default_roster_exists_and_covers_all_26_capabilities():
    names = [entry["name"] for entry in DEFAULT_ROSTER]
    agents = {agent.name: agent for agent in Agent.objects.filter(name__in=names)}
    assert set(agents) == set(names)
    union = 0
    for agent in agents.values():
        union |= agent.capability_mask
    assert union == ALL_CAPABILITIES_MASK
    assert agents["AGENT-ARCHITECT"].opencode_agent == "plan"
    assert agents["AGENT-IMPLEMENTER"].opencode_agent == "build"
    assert agents["AGENT-DEBUGGER"].opencode_agent == "build"
    assert agents["AGENT-REVIEWER"].tools == {"edit": False, "write": False, "patch": False, "bash": False}
    assert {agent.agent_type for agent in agents.values()} == set(AgentType.values)


def test_roster_entries_satisfy_the_model_rules():
    for entry in DEFAULT_ROSTER:
        agent = Agent.objects.get(name=entry["name"])
        agent.full_clean(exclude=["status"])
        assert agent.capability_mask == capability_mask(entry["capabilities"])
