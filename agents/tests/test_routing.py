"""agent_route against the real database: each score term, exclusions, errors, reservation."""

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from agents.models import Agent
from agents.services import NoAgentAvailable, agent_record_result, agent_release, agent_reserve, agent_route
from agents.tests.factories import AgentFactory
from orchestrator.errors import Conflict, ValidationFailed

CODE = ["code_generation"]


@pytest.fixture
def empty_registry(db):
    """Routing cases start without the default roster so only their own agents compete."""
    Agent.objects.all().delete()


def stale():
    return timezone.now() - timedelta(seconds=301)


# Each case: the agents (name suffix -> factory kwargs), route kwargs, expected winner and score.
CASES = {
    "tier term: ELITE beats COMPETENT": (
        {"A": {"tier": "ELITE"}, "B": {}},
        {},
        "A",
        1.0,
    ),
    "load term: IDLE beats OPTIMAL": (
        {"A": {"current_load": 5, "max_concurrent_tasks": 10}, "B": {"current_load": 1, "max_concurrent_tasks": 10}},
        {},
        "B",
        0.84,
    ),
    "available term: available beats busy at the same load level": (
        {"A": {"status": "busy", "current_load": 1, "max_concurrent_tasks": 10}, "B": {"max_concurrent_tasks": 10}},
        {},
        "B",
        0.84,
    ),
    "a missing capability excludes even an ELITE agent": (
        {"A": {"tier": "ELITE", "capabilities": ["testing"]}, "B": {"tier": "TRAINEE"}},
        {},
        "B",
        0.76,
    ),
    "preferred agent: +0.2 lifts COMPETENT over ADVANCED": (
        {"A": {"tier": "ADVANCED"}, "B": {}},
        {"preferred_agent": "AGENT-CASE-B"},
        "B",
        1.0,
    ),
    "preferred type: +0.3 does not lift a loaded busy TRAINEE over an idle ELITE (0.92 < 1.0)": (
        {
            "A": {"tier": "ELITE"},
            "B": {
                "tier": "TRAINEE",
                "agent_type": "reviewer",
                "status": "busy",
                "current_load": 4,
                "max_concurrent_tasks": 10,
            },
        },
        {"preferred_type": "reviewer"},
        "A",
        1.0,
    ),
    "preferred type wins when the rest is close": (
        {
            "A": {"tier": "ADVANCED"},
            "B": {
                "tier": "TRAINEE",
                "agent_type": "reviewer",
                "status": "busy",
                "current_load": 1,
                "max_concurrent_tasks": 10,
            },
        },
        {"preferred_type": "reviewer"},
        "B",
        0.96,
    ),
    "the cap at 1.0 keeps the uncapped sum as tie-break": (
        {"A": {"tier": "COMPETENT", "agent_type": "reviewer"}, "B": {"tier": "ELITE", "agent_type": "reviewer"}},
        {"preferred_type": "reviewer"},
        "B",
        1.0,
    ),
    "DEGRADED is excluded": (
        {"A": {"tier": "DEGRADED", "circuit_open": True}, "B": {"tier": "TRAINEE"}},
        {},
        "B",
        0.76,
    ),
    "a full agent is excluded": (
        {"A": {"tier": "ELITE", "current_load": 5, "status": "busy"}, "B": {"tier": "TRAINEE"}},
        {},
        "B",
        0.76,
    ),
    "an offline agent is excluded": (
        {"A": {"tier": "ELITE", "status": "offline"}, "B": {"tier": "TRAINEE"}},
        {},
        "B",
        0.76,
    ),
    "a stale heartbeat is excluded before the job marks it offline": (
        {"A": {"tier": "ELITE", "last_heartbeat_at": stale}, "B": {"tier": "TRAINEE"}},
        {},
        "B",
        0.76,
    ),
    "maintenance and draining are excluded": (
        {
            "A": {"tier": "ELITE", "status": "maintenance"},
            "C": {"tier": "ELITE", "draining": True},
            "B": {"tier": "TRAINEE"},
        },
        {},
        "B",
        0.76,
    ),
    "min_tier excludes lower tiers": (
        {"A": {"tier": "COMPETENT"}, "B": {"tier": "ADVANCED", "current_load": 4}},
        {"min_tier": "ADVANCED"},
        "B",
        0.32 + 0.3 + 0.1 + 0.1,  # 4/5 is HIGH
    ),
}


@pytest.mark.parametrize("agents, route_kwargs, winner, score", CASES.values(), ids=list(CASES))
def test_routing_case(empty_registry, agents, route_kwargs, winner, score):
    for suffix, kwargs in agents.items():
        kwargs = {key: value() if callable(value) else value for key, value in kwargs.items()}
        AgentFactory(name=f"AGENT-CASE-{suffix}", **kwargs)
    decision = agent_route(required_capabilities=CODE, **route_kwargs)
    assert decision.agent.name == f"AGENT-CASE-{winner}"
    assert decision.score == pytest.approx(score)
    assert not decision.reserved


def test_decision_lists_up_to_three_alternatives_in_score_order(empty_registry):
    for index, tier in enumerate(["TRAINEE", "ELITE", "COMPETENT", "ADVANCED", "TRAINEE"]):
        AgentFactory(name=f"AGENT-ALT-{index}", tier=tier)
    decision = agent_route(required_capabilities=CODE)
    assert decision.agent.name == "AGENT-ALT-1"
    assert [(alt.agent.name, alt.score) for alt in decision.alternatives] == [
        ("AGENT-ALT-3", 0.92),
        ("AGENT-ALT-2", 0.84),
        ("AGENT-ALT-0", 0.76),
    ]
    assert decision.reason == "full capability match, low load; score 1.00"


def test_reason_names_the_load_and_the_preference(empty_registry):
    AgentFactory(name="AGENT-R", agent_type="debugger", current_load=4, status="busy", max_concurrent_tasks=5)
    decision = agent_route(required_capabilities=CODE, preferred_type="debugger")
    assert decision.reason == "full capability match, high load, preferred type; score 0.94"


def test_every_required_capability_must_be_held(empty_registry):
    AgentFactory(name="AGENT-ONE", capabilities=["code_generation"])
    AgentFactory(name="AGENT-BOTH", capabilities=["code_generation", "security_audit"], tier="TRAINEE")
    decision = agent_route(required_capabilities=["code_generation", "security_audit"])
    assert decision.agent.name == "AGENT-BOTH"


def test_no_agent_with_a_capability_names_it(empty_registry):
    AgentFactory(capabilities=["code_generation"])
    with pytest.raises(NoAgentAvailable) as error:
        agent_route(required_capabilities=["code_generation", "scaling", "monitoring"])
    assert error.value.details["reason"] == "missing_capabilities"
    assert error.value.details["missing_capabilities"] == ["monitoring", "scaling"]
    assert "no agent has monitoring, scaling" in error.value.message


def test_capabilities_spread_over_agents_but_held_by_none_together(empty_registry):
    AgentFactory(capabilities=["code_generation"])
    AgentFactory(capabilities=["scaling"])
    with pytest.raises(NoAgentAvailable) as error:
        agent_route(required_capabilities=["code_generation", "scaling"])
    assert error.value.details["reason"] == "no_agent_has_all"


def test_all_full_is_reported_as_such(empty_registry):
    AgentFactory(current_load=5, status="busy")
    AgentFactory(current_load=2, max_concurrent_tasks=2, status="busy")
    with pytest.raises(NoAgentAvailable) as error:
        agent_route(required_capabilities=CODE)
    assert error.value.details["reason"] == "all_full"
    assert "are full" in error.value.message


def test_all_offline_is_reported_as_such(empty_registry):
    AgentFactory(status="offline")
    AgentFactory(last_heartbeat_at=stale())
    with pytest.raises(NoAgentAvailable) as error:
        agent_route(required_capabilities=CODE)
    assert error.value.details["reason"] == "all_offline"


def test_mixed_exclusions_are_counted(empty_registry):
    AgentFactory(current_load=5, status="busy")
    AgentFactory(tier="DEGRADED")
    with pytest.raises(NoAgentAvailable) as error:
        agent_route(required_capabilities=CODE)
    assert error.value.details["reason"] == "none_routable"
    assert "1 full, 1 DEGRADED" in error.value.message
    assert isinstance(error.value, Conflict)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"required_capabilities": ["telepathy"]}, "required_capabilities"),
        ({"required_capabilities": "code_generation"}, "required_capabilities"),
        ({"required_capabilities": CODE, "preferred_type": "wizard"}, "preferred_type"),
        ({"required_capabilities": CODE, "min_tier": "DEGRADED"}, "min_tier"),
        ({"required_capabilities": CODE, "preferred_agent": "AGENT-NOBODY"}, "preferred_agent"),
    ],
)
def test_bad_route_input_names_the_field(empty_registry, kwargs, field):
    with pytest.raises(ValidationFailed) as error:
        agent_route(**kwargs)
    assert field in error.value.errors


def test_reserving_route_takes_capacity_and_release_gives_it_back(empty_registry):
    AgentFactory(name="AGENT-ONLY", max_concurrent_tasks=2)
    first = agent_route(required_capabilities=CODE, reserve=True)
    assert first.reserved and first.agent.current_load == 1 and first.agent.status == "busy"
    agent_route(required_capabilities=CODE, reserve=True)
    with pytest.raises(NoAgentAvailable):
        agent_route(required_capabilities=CODE, reserve=True)
    agent = agent_release(agent=first.agent)
    assert agent.current_load == 1
    agent = agent_release(agent=agent)
    assert (agent.current_load, agent.status) == (0, "available")
    assert agent_release(agent=agent).current_load == 0


def test_recording_a_result_with_release_gives_the_capacity_back_in_the_same_write(empty_registry):
    AgentFactory(name="AGENT-ONLY", max_concurrent_tasks=2)
    first = agent_route(required_capabilities=CODE, reserve=True).agent
    agent_route(required_capabilities=CODE, reserve=True)
    agent_record_result(agent=first, outcome="completed", quality=1.0, duration=3, tokens=10, release=True)
    stored = Agent.objects.get(pk=first.pk)
    assert (stored.current_load, stored.status, stored.total_tasks, stored.successful_tasks) == (1, "busy", 1, 1)
    agent_record_result(agent=first, outcome="failed", quality=0.0, duration=1, release=True)
    stored = Agent.objects.get(pk=first.pk)
    assert (stored.current_load, stored.status, stored.total_tasks, stored.failed_tasks) == (0, "available", 2, 1)
    agent_record_result(agent=first, outcome="completed", quality=1.0, duration=1, release=True)  # idle: load stays 0
    assert Agent.objects.get(pk=first.pk).current_load == 0


def test_a_draining_agent_goes_when_its_last_result_is_recorded_with_release(empty_registry):
    agent = AgentFactory(name="AGENT-LEAVING", current_load=1, status="busy", draining=True)
    agent_record_result(agent=agent, outcome="completed", quality=1.0, duration=2, release=True)
    assert not Agent.objects.filter(pk=agent.pk).exists()


def test_reserve_refuses_a_full_agent(empty_registry):
    agent = AgentFactory(current_load=5, status="busy")
    with pytest.raises(Conflict) as error:
        agent_reserve(agent=agent)
    assert "full (5/5)" in error.value.message


def test_dry_run_reserves_nothing(empty_registry):
    AgentFactory(name="AGENT-ONLY", max_concurrent_tasks=1)
    for _ in range(3):
        agent_route(required_capabilities=CODE)
    assert Agent.objects.get(name="AGENT-ONLY").current_load == 0


def test_default_roster_routes_every_capability_and_every_pair(db):
    from agents.routing import CAPABILITIES

    for name in CAPABILITIES:
        assert agent_route(required_capabilities=[name]).agent.has_capabilities([name])
    decision = agent_route(required_capabilities=["code_generation", "security_audit"])
    assert decision.agent.name == "AGENT-GENERALIST"


def test_default_roster_prefers_the_specialist_type(db):
    assert agent_route(required_capabilities=["code_review"], preferred_type="reviewer").agent.name == "AGENT-REVIEWER"
    assert (
        agent_route(required_capabilities=["system_design"], preferred_type="architect").agent.name == "AGENT-ARCHITECT"
    )


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_reserving_routings_fill_exactly_the_capacity():
    Agent.objects.all().delete()
    for index, capacity in enumerate((3, 3, 4)):
        AgentFactory(name=f"AGENT-RACE-{index}", max_concurrent_tasks=capacity)
    barrier = threading.Barrier(50)
    outcomes = []
    lock = threading.Lock()

    def route():
        try:
            barrier.wait()
            try:
                decision = agent_route(required_capabilities=CODE, reserve=True)
                result = decision.agent.name
            except NoAgentAvailable as error:
                result = error.details["reason"]
            with lock:
                outcomes.append(result)
        finally:
            connection.close()

    threads = [threading.Thread(target=route) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(outcomes) == 50
    reserved = [outcome for outcome in outcomes if outcome.startswith("AGENT-")]
    assert len(reserved) == 10
    assert set(outcomes) - set(reserved) == {"all_full"}
    loads = dict(Agent.objects.values_list("name", "current_load"))
    assert loads == {"AGENT-RACE-0": 3, "AGENT-RACE-1": 3, "AGENT-RACE-2": 4}
    assert {name: reserved.count(name) for name in loads} == loads
