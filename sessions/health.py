"""Session health and deadline risk, as plain functions (no Django).

The rules come from SPEC (Sessions, Health score): the score is computed from
the status and the elapsed share of the time budget each time it is read, so it
is never a stale stored number.
"""

AT_RISK_SECONDS = 300

# States in which the session's clock runs and its deadline applies.
RUNNING_STATES = frozenset({"running", "degraded"})

_FIXED_SCORES = {
    "completed": 1.0,
    "failed": 0.0,
    "timeout": 0.0,
    "orphaned": 0.0,
    "degraded": 0.4,
}


def health_score(status, elapsed_seconds, max_duration_seconds):
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


def seconds_left(elapsed_seconds, max_duration_seconds):
    return max_duration_seconds - elapsed_seconds


def is_at_risk(status, elapsed_seconds, max_duration_seconds):
    """True for a running (or degraded, which is running but unhealthy) session
    with less than 300 s of its time budget left."""
    if status not in RUNNING_STATES:
        return False
    return seconds_left(elapsed_seconds, max_duration_seconds) < AT_RISK_SECONDS


def retry_delay_seconds(attempt):
    """Wait before automatic retry attempt n (1-based): min(10 s * 2^(n-1), 5 min)."""
    if attempt < 1:
        raise ValueError("attempt numbers start at 1")
    return min(10 * 2 ** (attempt - 1), 300)
