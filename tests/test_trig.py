"""The half-angle sine and cosine of refimpl._trig, against the C library's (math.sin, math.cos)."""

import math

import numpy as np
import pytest

from refimpl._trig import sin_cos_half

EPS = np.finfo(float).eps


def _angles():
    rng = np.random.default_rng(0)
    special = [0.0, -0.0, 1e-300, 1e-8, 0.5, math.pi / 2, math.pi, -math.pi, 2 * math.pi, 3.0, 1e4, -1e4, 1e8, 2.0**52]
    near = np.array([m * math.pi + s for m in (-7, -1, 1, 2, 1001) for s in (-1e-9, 0.0, 1e-9)])  # near the tangent's poles
    return np.concatenate([special, near, rng.uniform(-50, 50, 500), rng.normal(0, 1e4, 500)])


def test_sin_cos_half_against_the_c_library():
    theta = _angles()
    s, c = np.empty_like(theta), np.empty_like(theta)
    sin_cos_half(theta / 2, s, c)
    exact_s = np.array([math.sin(x) for x in theta])
    exact_c = np.array([math.cos(x) for x in theta])
    assert np.max(np.abs(s - exact_s)) <= 4 * EPS
    assert np.max(np.abs(c - exact_c)) <= 4 * EPS
    assert np.all(np.abs(s) <= 1.0) and np.all(np.abs(c) <= 1.0)


def test_sin_cos_half_in_place_with_a_factor_per_row():
    rng = np.random.default_rng(1)
    theta = rng.uniform(-100, 100, (7, 5))
    factor = rng.uniform(0.5, 3.0, (7, 1))
    half = theta / 2
    c = np.empty_like(theta)
    sin_cos_half(half, half, c, factor)  # the sines written over the half angles
    assert np.allclose(half, factor * np.sin(theta), rtol=0, atol=8 * EPS * 3.0)
    assert np.allclose(c, factor * np.cos(theta), rtol=0, atol=8 * EPS * 3.0)


@pytest.mark.parametrize("theta", [math.pi, -math.pi, 3 * math.pi])
def test_sin_cos_half_at_odd_multiples_of_pi(theta):
    """θ/2 near π/2: tan is huge but finite (no double is a pole), so sin ≈ 0 and cos = −1 to the last bit."""
    s, c = np.empty(1), np.empty(1)
    sin_cos_half(np.array([theta / 2]), s, c)
    assert abs(s[0] - math.sin(theta)) <= 4 * EPS and c[0] == -1.0
