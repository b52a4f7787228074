"""PERT three-point estimates and the complexity scale (plain Python, no Django).

expected E = (O + 4M + P) / 6, sigma = (P - O) / 6, both in hours.
Complexity by E: trivial < 0.25, simple < 1, moderate < 4, complex < 8, expert >= 8.
"""

from dataclasses import dataclass

from orchestrator.errors import ValidationFailed

TRIVIAL = "trivial"
SIMPLE = "simple"
MODERATE = "moderate"
COMPLEX = "complex"
EXPERT = "expert"

# Upper bounds (exclusive) in hours; anything at or above the last bound is expert.
COMPLEXITY_BOUNDS = ((0.25, TRIVIAL), (1.0, SIMPLE), (4.0, MODERATE), (8.0, COMPLEX))
COMPLEXITY_LEVELS = (TRIVIAL, SIMPLE, MODERATE, COMPLEX, EXPERT)

# Levels that a decomposition still breaks down further.
DECOMPOSABLE_LEVELS = frozenset({COMPLEX, EXPERT})


@dataclass(frozen=True)
class Estimate:
    optimistic: float
    likely: float
    pessimistic: float

    @property
    def expected(self) -> float:
        return (self.optimistic + 4 * self.likely + self.pessimistic) / 6

    @property
    def sigma(self) -> float:
        return (self.pessimistic - self.optimistic) / 6

    @property
    def complexity(self) -> str:
        return complexity_for(self.expected)

    def scaled(self, factor: float) -> "Estimate":
        return Estimate(self.optimistic * factor, self.likely * factor, self.pessimistic * factor)


def complexity_for(expected_hours: float) -> str:
    """The complexity level of an expected duration in hours."""
    for bound, level in COMPLEXITY_BOUNDS:
        if expected_hours < bound:
            return level
    return EXPERT


def validate_estimate(optimistic, likely, pessimistic) -> None:
    """Raise ValidationFailed unless 0 <= O <= M <= P (all numbers)."""
    errors = {}
    values = {"optimistic_hours": optimistic, "likely_hours": likely, "pessimistic_hours": pessimistic}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.setdefault(name, []).append("must be a number of hours")
        elif value < 0:
            errors.setdefault(name, []).append("must not be negative")
    if errors:
        raise ValidationFailed(errors=errors)
    if optimistic > likely:
        errors.setdefault("optimistic_hours", []).append("must not exceed likely_hours")
    if likely > pessimistic:
        errors.setdefault("likely_hours", []).append("must not exceed pessimistic_hours")
    if errors:
        raise ValidationFailed(errors=errors)


def pert(optimistic, likely, pessimistic) -> Estimate:
    """A validated Estimate; raises ValidationFailed when O <= M <= P or non-negativity is broken."""
    validate_estimate(optimistic, likely, pessimistic)
    return Estimate(float(optimistic), float(likely), float(pessimistic))


def combine_sigma(sigmas) -> float:
    """Sigma of a sum of independent estimates (a chain of tasks): sqrt of summed variances."""
    return sum(s * s for s in sigmas) ** 0.5
