"""The pure rules in agents.routing, table by table (no database)."""

import pytest

from agents import routing as r


@pytest.mark.parametrize(
    "current, capacity, level",
    [
        (0, 5, r.IDLE),
        (1, 5, r.IDLE),  # u = 0.2 exactly is still IDLE
        (2, 10, r.IDLE),
        (3, 10, r.OPTIMAL),
        (7, 10, r.OPTIMAL),  # 0.7 inclusive
        (8, 10, r.HIGH),
        (9, 10, r.HIGH),  # 0.9 inclusive
        (19, 20, r.CRITICAL),  # 0.95
        (49, 50, r.CRITICAL),
        (5, 5, r.OVERLOADED),
        (6, 5, r.OVERLOADED),
        (14, 20, r.OPTIMAL),
        (1, 1, r.OVERLOADED),
        (0, 1, r.IDLE),
    ],
)
def test_load_level_follows_the_one_scale(current, capacity, level):
    assert r.load_level(current, capacity) == level


@pytest.mark.parametrize(
    "total, successful, partial, rate",
    [(0, 0, 0, None), (4, 3, 1, 0.875), (10, 5, 0, 0.5), (2, 0, 2, 0.5)],
)
def test_success_rate_counts_partial_as_half(total, successful, partial, rate):
    assert r.success_rate(total=total, successful=successful, partial=partial) == rate


@pytest.mark.parametrize(
    "total, success, quality, tier",
    [
        (4, 0.0, 0.0, r.COMPETENT),  # fewer than 5 finished tasks
        (0, None, None, r.COMPETENT),
        (5, 0.95, 0.9, r.ELITE),
        (5, 0.95, 0.89, r.ADVANCED),  # ELITE also needs quality 0.9
        (5, 0.9499, 1.0, r.ADVANCED),
        (5, 0.85, 0.0, r.ADVANCED),
        (5, 0.8499, 1.0, r.COMPETENT),
        (5, 0.70, 0.0, r.COMPETENT),
        (5, 0.6999, 1.0, r.TRAINEE),
        (5, 0.50, 0.0, r.TRAINEE),
        (5, 0.4999, 1.0, r.DEGRADED),
    ],
)
def test_tier_thresholds_at_their_boundaries(total, success, quality, tier):
    assert r.tier_for(total=total, success=success, quality=quality) == tier


@pytest.mark.parametrize(
    "total, success, breaker_open, expected",
    [
        (5, 0.2999, False, r.Standing(r.DEGRADED, True)),  # trips below 0.3 after 5 tasks
        (5, 0.30, False, r.Standing(r.DEGRADED, False)),  # 0.3 does not trip; the table says DEGRADED
        (4, 0.0, False, r.Standing(r.COMPETENT, False)),  # not before 5 tasks
        (10, 0.50, True, r.Standing(r.DEGRADED, True)),  # must rise above 0.5, not reach it
        (10, 0.50, False, r.Standing(r.TRAINEE, False)),
        (10, 0.5001, True, r.Standing(r.TRAINEE, False)),  # recovers to TRAINEE
        (10, 0.99, True, r.Standing(r.TRAINEE, False)),  # recovery lands on TRAINEE, whatever the rate
        (10, 0.40, True, r.Standing(r.DEGRADED, True)),
    ],
)
def test_circuit_breaker_trips_and_recovers_at_its_boundaries(total, success, breaker_open, expected):
    assert r.standing_after(total=total, success=success, quality=1.0, breaker_open=breaker_open) == expected


BASE = dict(tier=r.COMPETENT, matched=2, required=2, current_load=0, capacity=10, available=True)


@pytest.mark.parametrize(
    "changes, points",
    [
        ({}, 24 + 30 + 20 + 10),
        ({"tier": r.ELITE}, 40 + 30 + 20 + 10),
        ({"tier": r.ADVANCED}, 32 + 30 + 20 + 10),
        ({"tier": r.TRAINEE}, 16 + 30 + 20 + 10),
        ({"matched": 1}, 24 + 15 + 20 + 10),
        ({"matched": 0, "required": 0}, 24 + 30 + 20 + 10),  # nothing required = full match
        ({"current_load": 5}, 24 + 30 + 16 + 10),  # OPTIMAL
        ({"current_load": 9}, 24 + 30 + 10 + 10),  # HIGH
        ({"current_load": 19, "capacity": 20}, 24 + 30 + 4 + 10),  # CRITICAL
        ({"available": False}, 24 + 30 + 20),
        ({"preferred_agent": True}, 100),  # 104 raw
        ({"preferred_agent": True, "available": False}, 24 + 30 + 20 + 20),
        ({"preferred_type": True}, 100),  # 114 raw, capped at 1.0
        ({"tier": r.ELITE, "preferred_agent": True, "preferred_type": True}, 100),
    ],
)
def test_score_terms_and_cap(changes, points):
    parts = r.score(**{**BASE, **changes})
    assert parts.points == points
    assert parts.total == points / 100


def test_score_keeps_the_uncapped_sum_for_tie_breaking():
    assert r.score(**{**BASE, "tier": r.ELITE, "preferred_type": True}).raw_points == 130


def test_reason_reads_like_the_spec_example():
    parts = r.score(tier=r.ADVANCED, matched=1, required=1, current_load=1, capacity=5, available=True)
    assert r.reason(parts=parts, matched=1, required=1, level=r.IDLE) == "full capability match, low load; score 0.92"


def test_reason_names_preferences_and_partial_match():
    parts = r.score(**{**BASE, "matched": 1, "current_load": 9, "preferred_type": True})
    text = r.reason(parts=parts, matched=1, required=2, level=r.HIGH, preferred_type=True)
    assert text == "1/2 capabilities, high load, preferred type; score 0.89"


def test_capability_mask_round_trips_and_names_unknown_capabilities():
    assert r.capabilities_of(r.capability_mask(["testing", "debugging"])) == ["testing", "debugging"]
    assert r.capability_mask(r.CAPABILITIES) == r.ALL_CAPABILITIES_MASK
    assert len(r.CAPABILITIES) == 26
    with pytest.raises(r.UnknownCapability) as error:
        r.capability_mask(["testing", "telepathy", "alchemy"])
    assert error.value.names == ["alchemy", "telepathy"]


@pytest.mark.parametrize(
    "minimum, tiers",
    [(r.ELITE, [r.ELITE]), (r.COMPETENT, [r.ELITE, r.ADVANCED, r.COMPETENT]), (r.TRAINEE, list(r.TIERS[:4]))],
)
def test_tier_at_least_never_admits_degraded(minimum, tiers):
    assert r.tier_at_least(minimum) == tiers
