"""Pure rules of the agent registry: capabilities as bits, load level, tier,
circuit breaker and the routing score (SPEC, Agents). No Django here, so every
rule is tested as a plain function and the database query in `services` can be
built from the same tables.
"""

from dataclasses import dataclass

AGENT_TYPES = (
    "architect",
    "implementer",
    "reviewer",
    "debugger",
    "integrator",
    "orchestrator",
    "analyst",
    "optimizer",
)

# The order is part of the stored data: capability i is bit 1 << i of
# Agent.capability_mask. Append only; never reorder or remove.
CAPABILITIES = (
    "requirements_analysis",
    "system_design",
    "architecture_planning",
    "task_decomposition",
    "code_generation",
    "test_generation",
    "testing",
    "documentation",
    "refactoring",
    "code_review",
    "security_audit",
    "performance_analysis",
    "compliance_check",
    "debugging",
    "bug_fixing",
    "troubleshooting",
    "root_cause_analysis",
    "optimization",
    "deployment",
    "configuration",
    "monitoring",
    "scaling",
    "workflow_orchestration",
    "resource_allocation",
    "conflict_resolution",
    "progress_tracking",
)
CAPABILITY_BIT = {name: 1 << index for index, name in enumerate(CAPABILITIES)}
ALL_CAPABILITIES_MASK = (1 << len(CAPABILITIES)) - 1

# Tiers, best first. DEGRADED is never routed to.
ELITE, ADVANCED, COMPETENT, TRAINEE, DEGRADED = "ELITE", "ADVANCED", "COMPETENT", "TRAINEE", "DEGRADED"
TIERS = (ELITE, ADVANCED, COMPETENT, TRAINEE, DEGRADED)
TIER_WEIGHT = {ELITE: 1.0, ADVANCED: 0.8, COMPETENT: 0.6, TRAINEE: 0.4, DEGRADED: 0.0}

IDLE, OPTIMAL, HIGH, CRITICAL, OVERLOADED = "IDLE", "OPTIMAL", "HIGH", "CRITICAL", "OVERLOADED"
LOAD_LEVELS = (IDLE, OPTIMAL, HIGH, CRITICAL, OVERLOADED)
LOAD_WEIGHT = {IDLE: 1.0, OPTIMAL: 0.8, HIGH: 0.5, CRITICAL: 0.2, OVERLOADED: 0.0}
# Inclusive upper bounds of utilisation u = current / capacity, in tenths so the test is exact
# integer arithmetic (10 * current <= tenths * capacity) here and in SQL alike; CRITICAL is u < 1.0.
LOAD_BOUNDS_TENTHS = ((IDLE, 2), (OPTIMAL, 7), (HIGH, 9))

MIN_TASKS_FOR_TIER = 5
BREAKER_TRIP_BELOW = 0.3
BREAKER_RECOVER_ABOVE = 0.5

# Score weights (SPEC: 0.4 tier + 0.3 match + 0.2 load + 0.1 available + 0.2 preferred agent
# + 0.3 preferred type, capped at 1).
W_TIER, W_MATCH, W_LOAD, W_AVAILABLE, W_PREFERRED_AGENT, W_PREFERRED_TYPE = 0.4, 0.3, 0.2, 0.1, 0.2, 0.3

# The same terms in whole points (hundredths). The database ranks candidates with these
# integers, so its order and the Python score agree exactly, with no float rounding between them.
TIER_POINTS = {tier: round(100 * W_TIER * weight) for tier, weight in TIER_WEIGHT.items()}
LOAD_POINTS = {level: round(100 * W_LOAD * weight) for level, weight in LOAD_WEIGHT.items()}
MATCH_POINTS = round(100 * W_MATCH)
AVAILABLE_POINTS = round(100 * W_AVAILABLE)
PREFERRED_AGENT_POINTS = round(100 * W_PREFERRED_AGENT)
PREFERRED_TYPE_POINTS = round(100 * W_PREFERRED_TYPE)
MAX_POINTS = 100


class UnknownCapability(ValueError):
    def __init__(self, names):
        self.names = sorted(names)
        super().__init__(f"unknown capabilities: {', '.join(self.names)}")


def capability_mask(names):
    """The bitmask of `names`; raises UnknownCapability naming every unknown one."""
    names = list(names)
    unknown = {name for name in names if name not in CAPABILITY_BIT}
    if unknown:
        raise UnknownCapability(unknown)
    mask = 0
    for name in names:
        mask |= CAPABILITY_BIT[name]
    return mask


def capabilities_of(mask):
    """Capability names held in `mask`, in the canonical order."""
    return [name for name in CAPABILITIES if mask & CAPABILITY_BIT[name]]


def utilisation(current_load, capacity):
    return current_load / capacity if capacity > 0 else 1.0


def load_level(current_load, capacity):
    """SPEC's one scale: IDLE u<=0.2, OPTIMAL <=0.7, HIGH <=0.9, CRITICAL <1.0, OVERLOADED >=1.0."""
    if current_load >= capacity:
        return OVERLOADED
    for level, tenths in LOAD_BOUNDS_TENTHS:
        if 10 * current_load <= tenths * capacity:
            return level
    return CRITICAL


def success_rate(*, total, successful, partial):
    """(successful + 0.5 partial) / total, or None before the first finished task."""
    if total <= 0:
        return None
    return (successful + 0.5 * partial) / total


def tier_for(*, total, success, quality):
    """The tier table alone: COMPETENT until 5 finished tasks, then by success (and quality for ELITE)."""
    if total < MIN_TASKS_FOR_TIER or success is None:
        return COMPETENT
    if success >= 0.95 and quality >= 0.9:
        return ELITE
    if success >= 0.85:
        return ADVANCED
    if success >= 0.70:
        return COMPETENT
    if success >= 0.50:
        return TRAINEE
    return DEGRADED


@dataclass(frozen=True)
class Standing:
    tier: str
    breaker_open: bool


def standing_after(*, total, success, quality, breaker_open):
    """Tier and circuit-breaker state after a finished task.

    The breaker trips (after >= 5 tasks, success < 0.3) and then holds the agent
    at DEGRADED until its success rises strictly above 0.5, where it recovers to
    TRAINEE. While the breaker is closed the tier table applies as it stands,
    including its own DEGRADED below 0.5; the breaker only differs from the
    table at exactly 0.5 (held vs. TRAINEE) and in being a recorded state an
    operator can see and reset.
    """
    if breaker_open:
        if success is not None and success > BREAKER_RECOVER_ABOVE:
            return Standing(TRAINEE, False)
        return Standing(DEGRADED, True)
    if total >= MIN_TASKS_FOR_TIER and success is not None and success < BREAKER_TRIP_BELOW:
        return Standing(DEGRADED, True)
    return Standing(tier_for(total=total, success=success, quality=quality), False)


def tier_at_least(minimum):
    """Tiers at or above `minimum` (DEGRADED never qualifies)."""
    index = TIERS.index(minimum)
    return [tier for tier in TIERS[: index + 1] if tier != DEGRADED]


@dataclass(frozen=True)
class ScoreParts:
    """Each term of the score in points (hundredths of 1.0)."""

    tier: int
    match: int
    load: int
    available: int
    preferred_agent: int
    preferred_type: int

    @property
    def raw_points(self):
        return self.tier + self.match + self.load + self.available + self.preferred_agent + self.preferred_type

    @property
    def points(self):
        return min(MAX_POINTS, self.raw_points)

    @property
    def total(self):
        """The score on SPEC's 0-1 scale, capped at 1.0."""
        return self.points / 100


def score(*, tier, matched, required, current_load, capacity, available, preferred_agent=False, preferred_type=False):
    """SPEC's routing score, term by term; `.total` is capped at 1.0.

    `required == 0` (no capability asked for) counts as a full match. The
    match term is rounded to whole points (1/3 match = 10 points).
    """
    return ScoreParts(
        tier=TIER_POINTS[tier],
        match=round(MATCH_POINTS * matched / required) if required else MATCH_POINTS,
        load=LOAD_POINTS[load_level(current_load, capacity)],
        available=AVAILABLE_POINTS if available else 0,
        preferred_agent=PREFERRED_AGENT_POINTS if preferred_agent else 0,
        preferred_type=PREFERRED_TYPE_POINTS if preferred_type else 0,
    )


_LOAD_WORDS = {IDLE: "low load", OPTIMAL: "moderate load", HIGH: "high load", CRITICAL: "critical load"}


def reason(*, parts, matched, required, level, preferred_agent=False, preferred_type=False):
    """A one-line explanation such as "full capability match, low load; score 0.92"."""
    words = ["full capability match" if matched >= required else f"{matched}/{required} capabilities"]
    words.append(_LOAD_WORDS.get(level, "overloaded"))
    if preferred_agent:
        words.append("preferred agent")
    if preferred_type:
        words.append("preferred type")
    return f"{', '.join(words)}; score {parts.total:.2f}"
