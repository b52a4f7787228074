import pytest

from orchestrator.errors import ValidationFailed
from tasks.estimates import Estimate, combine_sigma, complexity_for, pert


def test_expected_and_sigma_follow_pert():
    estimate = pert(1, 2, 9)
    assert estimate.expected == pytest.approx((1 + 8 + 9) / 6)
    assert estimate.sigma == pytest.approx(8 / 6)


@pytest.mark.parametrize(
    ("hours", "level"),
    [
        (0.0, "trivial"),
        (0.2499, "trivial"),
        (0.25, "simple"),
        (0.9999, "simple"),
        (1.0, "moderate"),
        (3.9999, "moderate"),
        (4.0, "complex"),
        (7.9999, "complex"),
        (8.0, "expert"),
        (120.0, "expert"),
    ],
)
def test_complexity_boundaries(hours, level):
    assert complexity_for(hours) == level


def test_complexity_uses_the_expected_value_not_the_likely_one():
    # M = 3.5 alone would be moderate; the long tail pushes E to 4.0, complex.
    estimate = pert(2, 3.5, 8)
    assert estimate.expected == pytest.approx(4.0)
    assert estimate.complexity == "complex"


def test_equal_points_have_zero_sigma():
    assert pert(2, 2, 2).sigma == 0
    assert pert(0, 0, 0).complexity == "trivial"


@pytest.mark.parametrize(
    ("points", "field"),
    [
        ((3, 2, 4), "optimistic_hours"),
        ((1, 5, 4), "likely_hours"),
        ((-1, 0, 1), "optimistic_hours"),
        ((0, 1, "x"), "pessimistic_hours"),
    ],
)
def test_invalid_estimates_are_refused_naming_the_field(points, field):
    with pytest.raises(ValidationFailed) as caught:
        pert(*points)
    assert field in caught.value.errors


def test_scaling_keeps_the_shape():
    assert Estimate(1, 2, 3).scaled(2) == Estimate(2, 4, 6)


def test_sigma_of_a_chain_adds_variances():
    assert combine_sigma([3, 4]) == pytest.approx(5)
