import pytest

from sessions.health_score import health_score, is_at_risk


@pytest.mark.parametrize(
    ("status", "elapsed", "expected"),
    [
        ("completed", 0, 1.0),
        ("failed", 0, 0.0),
        ("timeout", 3600, 0.0),
        ("orphaned", 10, 0.0),
        ("degraded", 10, 0.4),
        ("running", 0, 0.9),
        ("running", 2520, 0.9),  # exactly 70 %: not above it
        ("running", 2521, 0.7),
        ("running", 3240, 0.7),  # exactly 90 %
        ("running", 3241, 0.3),
        ("running", 5000, 0.3),
        ("pending", 0, 0.8),
        ("queued", 0, 0.8),
        ("paused", 3500, 0.8),
        ("stopped", 0, 0.8),
        ("cancelled", 0, 0.8),
        ("partially_completed", 0, 0.8),
    ],
)
def test_health_score_follows_the_spec_table(status, elapsed, expected):
    assert health_score(status, elapsed, 3600) == expected


def test_running_session_with_less_than_300_seconds_left_is_at_risk():
    assert is_at_risk("running", 3301, 3600)
    assert not is_at_risk("running", 3300, 3600)


def test_degraded_session_near_its_deadline_is_at_risk_but_a_paused_one_is_not():
    assert is_at_risk("degraded", 3500, 3600)
    assert not is_at_risk("paused", 3500, 3600)
