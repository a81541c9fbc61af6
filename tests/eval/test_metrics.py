import numpy as np
import pytest

from vlv.eval.metrics import frechet_distance


def test_identical_sets_have_zero_distance():
    a = np.random.default_rng(0).normal(size=(500, 6))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)


def test_matches_the_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(1)
    n, var_a, var_b, shift = 200_000, np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 0.25]), np.array([1.0, -2.0, 0.0])
    a = rng.normal(size=(n, 3)) * np.sqrt(var_a)
    b = rng.normal(size=(n, 3)) * np.sqrt(var_b) + shift
    expected = np.sum(shift**2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.02)


def test_bad_feature_shapes_are_errors():
    with pytest.raises(ValueError, match="equal D"):
        frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="two samples"):
        frechet_distance(np.zeros((1, 3)), np.zeros((4, 3)))
