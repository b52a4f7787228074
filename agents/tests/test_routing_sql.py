"""The SQL ranking of agents (agents.sql) against the pure score (agents.routing), on 60 agents.

agent_route re-scores in Python only the few rows the SQL ranked first, so a wrong term in
the SQL would hide behind it: these tests compare the SQL's own order and points, row by
row, with what SPEC's filter and `routing.score` give for the same population. Dropping any
term of the SQL (tier, match, load, available, preferred agent, preferred type) fails them.
"""

import random
from datetime import timedelta

import pytest
from django.utils import timezone

from agents import routing, sql
from agents.models import HEARTBEAT_STALE_SECONDS, Agent
from agents.services import CANDIDATE_LIMIT, agent_route
from agents.tests.factories import AgentFactory

POPULATION = 60
CAPABILITY_POOL = ("code_generation", "testing", "code_review", "debugging", "security_audit")


@pytest.fixture
def population(db):
    """60 agents with every kind of tier, load, status, capability set, type and heartbeat age."""
    Agent.objects.all().delete()
    randomness = random.Random(21)
    now = timezone.now()
    agents = []
    for index in range(POPULATION):
        capacity = randomness.choice([1, 2, 3, 5, 10, 12, 20])
        load = min(capacity, round(capacity * randomness.choice([0, 0.1, 0.5, 0.8, 0.95, 1.0])))
        status = randomness.choices(["available", "busy", "offline", "maintenance"], weights=[6, 6, 1, 1])[0]
        held = ["code_generation"] if randomness.random() < 0.85 else []
        held += [name for name in CAPABILITY_POOL[1:] if randomness.random() < 0.5]
        heartbeat = randomness.choice([None, now - timedelta(seconds=10), now - timedelta(seconds=10)])
        if randomness.random() < 0.1:
            heartbeat = now - timedelta(seconds=HEARTBEAT_STALE_SECONDS + 60)
        agents.append(
            AgentFactory(
                name=f"AGENT-POP-{index:02d}",
                agent_type=randomness.choice(routing.AGENT_TYPES),
                tier=randomness.choices(routing.TIERS, weights=[2, 3, 3, 3, 1])[0],
                status=status,
                current_load=load,
                max_concurrent_tasks=capacity,
                capabilities=held or ["documentation"],
                draining=randomness.random() < 0.05,
                last_heartbeat_at=heartbeat,
            )
        )
    return agents


def expected_ranking(agents, *, required, preferred_agent_id=None, preferred_type=None, min_tier=None):
    """SPEC's candidates and order, in plain Python: [(agent, ScoreParts)], best first."""
    fresh_after = timezone.now() - timedelta(seconds=HEARTBEAT_STALE_SECONDS)
    allowed_tiers = routing.tier_at_least(min_tier or routing.TRAINEE)
    ranked = []
    for agent in agents:
        held = set(routing.capabilities_of(agent.capability_mask))
        matched = len(set(required) & held)
        if (
            matched < len(set(required))
            or agent.status not in ("available", "busy")
            or agent.draining
            or agent.tier not in allowed_tiers
            or agent.current_load >= agent.max_concurrent_tasks
            or (agent.last_heartbeat_at is not None and agent.last_heartbeat_at < fresh_after)
        ):
            continue
        parts = routing.score(
            tier=agent.tier,
            matched=matched,
            required=len(set(required)),
            current_load=agent.current_load,
            capacity=agent.max_concurrent_tasks,
            available=agent.status == "available",
            preferred_agent=agent.pk == preferred_agent_id,
            preferred_type=agent.agent_type == preferred_type,
        )
        ranked.append((agent, parts))
    ranked.sort(key=lambda pair: (-pair[1].points, -pair[1].raw_points, pair[0].current_load, pair[0].pk))
    return ranked


def sql_ranking(*, required, preferred_agent_id=None, preferred_type=None, min_tier=None, limit):
    return sql.ranked_candidates(
        mask=routing.capability_mask(required),
        tiers=routing.tier_at_least(min_tier or routing.TRAINEE),
        fresh_after=timezone.now() - timedelta(seconds=HEARTBEAT_STALE_SECONDS),
        preferred_agent_id=preferred_agent_id,
        preferred_type=preferred_type,
        limit=limit,
    )


def the_preferred_agent(agents, required):
    """An agent ranked in the middle without preference: the +0.2 must move it."""
    ranked = expected_ranking(agents, required=required)
    return ranked[len(ranked) // 2][0]


SCENARIOS = {
    "one capability": {"required": ["code_generation"]},
    "no capability asked for": {"required": []},
    "two capabilities, preferred type": {"required": ["code_generation", "testing"], "preferred_type": "reviewer"},
    "preferred agent and type": {
        "required": ["code_generation"],
        "preferred_agent": True,
        "preferred_type": "debugger",
    },
    "preferred agent, minimum tier": {
        "required": ["code_generation"],
        "preferred_agent": True,
        "min_tier": "COMPETENT",
    },
}


def _route_kwargs(agents, scenario):
    kwargs = dict(scenario)
    if kwargs.pop("preferred_agent", False):
        kwargs["preferred_agent_id"] = the_preferred_agent(agents, kwargs["required"]).pk
    return kwargs


def test_the_population_gives_every_term_room(population):
    ranked = expected_ranking(population, required=["code_generation"])
    assert len(ranked) >= 20
    assert len({agent.tier for agent, _ in ranked}) == 4
    assert len({routing.load_level(agent.current_load, agent.max_concurrent_tasks) for agent, _ in ranked}) == 4
    assert {agent.status for agent, _ in ranked} == {"available", "busy"}
    assert len({agent.agent_type for agent, _ in ranked}) >= 5


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=list(SCENARIOS))
@pytest.mark.parametrize("limit", [CANDIDATE_LIMIT, 12, POPULATION])
def test_sql_top_n_is_the_pure_score_order(population, scenario, limit):
    kwargs = _route_kwargs(population, scenario)
    expected = expected_ranking(population, **kwargs)
    assert len(expected) > CANDIDATE_LIMIT
    ranked = sql_ranking(**kwargs, limit=limit)
    assert [(row.agent.name, row.raw_points) for row in ranked] == [
        (agent.name, parts.raw_points) for agent, parts in expected[:limit]
    ]


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=list(SCENARIOS))
def test_route_chooses_the_pure_scores_best_and_alternatives(population, scenario):
    kwargs = _route_kwargs(population, scenario)
    expected = expected_ranking(population, **kwargs)
    decision = agent_route(
        required_capabilities=kwargs["required"],
        preferred_agent=kwargs.get("preferred_agent_id"),
        preferred_type=kwargs.get("preferred_type"),
        min_tier=kwargs.get("min_tier"),
    )
    assert [(decision.agent.name, decision.score)] + [
        (alternative.agent.name, alternative.score) for alternative in decision.alternatives
    ] == [(agent.name, parts.total) for agent, parts in expected[:4]]
