"""A session's health score and deadline risk, as plain functions (no Django).

Not to be confused with orchestrator/health.py, the service probes (live, ready, health).

The rules come from SPEC (Sessions, Health score): the score is computed from
the status and the elapsed share of the time budget each time it is read, so it
is never a stale stored number.
"""

AT_RISK_SECONDS = 300

# States in which the session's clock runs and its deadline applies (sessions.models.CLOCK_STATES,
# spelled out here: this module imports nothing of Django).
CLOCK_STATES = frozenset({"running", "degraded"})

_FIXED_SCORES = {
    "completed": 1.0,
    "failed": 0.0,
    "timeout": 0.0,
    "orphaned": 0.0,
    "degraded": 0.4,
}


def health_score(status: str, elapsed_seconds: float, max_duration_seconds: int) -> float:
    """A score from 0.0 to 1.0.

    completed 1.0; failed, timeout, orphaned 0.0; degraded 0.4; running 0.9,
    0.7 once more than 70 % of the time budget is spent, 0.3 past 90 %;
    any other state 0.8.
    """
    if status in _FIXED_SCORES:
        return _FIXED_SCORES[status]
    if status == "running":
        ratio = elapsed_seconds / max_duration_seconds if max_duration_seconds else 1.0
        if ratio > 0.9:
            return 0.3
        if ratio > 0.7:
            return 0.7
        return 0.9
    return 0.8


def seconds_left(elapsed_seconds: float, max_duration_seconds: int) -> float:
    return max_duration_seconds - elapsed_seconds


def is_at_risk(status: str, elapsed_seconds: float, max_duration_seconds: int) -> bool:
    """True for a running (or degraded, which is running but unhealthy) session
    with less than 300 s of its time budget left."""
    if status not in CLOCK_STATES:
        return False
    return seconds_left(elapsed_seconds, max_duration_seconds) < AT_RISK_SECONDS
