"""Tests of :mod:`refimpl.rt_sde`: the radial–tangential SDE (a reconstruction, chapter 9).

The paper's RT equations are unavailable, so every closed form is checked against an oracle that
does not use it:

* ``scipy.linalg.expm`` for the transition ``e^{As}`` and the co-rotating direction;
* ``scipy.integrate.quad_vec`` of ``∫_0^τ e^{As} Q(t_i − s) e^{A^T s} ds`` with ``expm`` and the
  time-varying noise rate (its direction from a general ``eig`` of Ω), and ``scipy.integrate.solve_ivp`` (DOP853) on the DLE
  ``V' = AV + VA^T + Q(t)`` — the closed form is never used to build the integrand;
* covariance algebra with matrices for the measurement terms (``e^{Aτ} R_j e^{A^T τ} + R_Γ``) and
  a Monte Carlo simulation of the SDE (exponential-Euler steps, fixed seed, 5-sigma bands);
* ``np.linalg.inv`` / ``slogdet`` and the explicit Sherman–Morrison update for the precision;
* a brute-force attention written with dense matrices (``expm`` transport, inverted
  covariance matrices, ``scipy.special.softmax``).

Tolerances come from :mod:`refimpl._testing` (SELF, ORACLE, ODE).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import quad_vec, solve_ivp

from _recording import recorder  # noqa: E402 (tests/ is on sys.path)
from refimpl._testing import ODE, ORACLE, SELF, assert_close, mc_band
from refimpl.afa import isotropic_afa
from refimpl.lyapunov import isotropic_covariance
from refimpl.rt_sde import (
    rt_attention,
    rt_attention_loop,
    rt_covariance,
    rt_covariance_loop,
    rt_direction,
    rt_distance,
    rt_distance_loop,
    rt_logdet_precision,
    rt_noise_rate,
    rt_precision,
    rt_precision_loop,
    rt_step,
    rt_step_loop,
    rt_transition,
    rt_transition_loop,
    rt_variances,
    rt_variances_loop,
    sphere_residuals,
)

#: worst error seen per oracle (printed by conftest when REFIMPL_WORST_ERRORS=1)
WORST_ERRORS, close, record = recorder()


# ---------------------------------------------------------------------------------------------
# Test systems and independent building blocks
# ---------------------------------------------------------------------------------------------

NOISES = dict(sigma2_perp=0.4, sigma2_par=1.7, eta2_perp=0.3, eta2_par=0.9, gamma2_perp=0.2, gamma2_par=0.6)


def random_skew(rng, d, scale=1.0):
    b = rng.normal(scale=scale, size=(d, d))
    return b - b.T


def random_unit(rng, shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def block_skew(freqs):
    """Block-diagonal Ω = diag(ω_1 J, ω_2 J, ...), J = [[0, −1], [1, 0]]."""
    return scipy.linalg.block_diag(*[w * np.array([[0.0, -1.0], [1.0, 0.0]]) for w in freqs])


def block_rotation(angles):
    """An orthogonal matrix commuting with every block_skew of the same block sizes."""
    return scipy.linalg.block_diag(*[np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) for a in angles])


def split(u, a_perp, a_par):
    """a_⊥(I − uu^T) + a_∥ uu^T for one unit u (the test's own)."""
    P = np.outer(u, u)
    return a_perp * (np.eye(u.size) - P) + a_par * P


def noise_rate(om, u0, sp, sq):
    """Q(t_j + s), the time-varying rate of Eq. (9.3), with u(t) = e^{Ωs}u_j from a general complex ``eig`` of Ω
    (not the module's Hermitian ``eigh`` of iΩ; cheaper than an ``expm`` per ODE right-hand side)."""
    lam, vec = np.linalg.eig(om)
    coef = np.linalg.solve(vec, u0)
    return lambda s: split(((vec * np.exp(lam * s)) @ coef).real, sp, sq)


def quad_covariance(mu, om, u0, tau, sp, sq):
    """V(τ) = ∫_0^τ e^{As} Q(t_i − s) e^{A^T s} ds by adaptive quadrature (Eq. 9.4)."""
    d = om.shape[0]
    A = -mu * np.eye(d) + om
    Q = noise_rate(om, u0, sp, sq)

    def integrand(s):
        E = scipy.linalg.expm(A * s)
        return E @ Q(tau - s) @ E.T

    V, _ = quad_vec(integrand, 0.0, tau, epsabs=1e-15, epsrel=1e-13)
    return V


def ivp_covariance(mu, om, u0, tau, sp, sq):
    """V(τ) from the DLE V' = AV + VA^T + Q(t), V(t_j) = 0, integrated by DOP853."""
    d = om.shape[0]
    A = -mu * np.eye(d) + om
    Q = noise_rate(om, u0, sp, sq)

    def rhs(s, y):
        V = y.reshape(d, d)
        return (A @ V + V @ A.T + Q(s)).ravel()

    sol = solve_ivp(rhs, (0.0, tau), np.zeros(d * d), method="DOP853", rtol=1e-13, atol=1e-14)
    return sol.y[:, -1].reshape(d, d)


def algebra_covariance(mu, om, u0, tau, nz, V=None):
    """Σ = V(τ) + e^{Aτ} R_j e^{A^T τ} + R_Γ with the co-rotating R_j (at u_j) and R_Γ (at u_i)."""
    d = om.shape[0]
    if V is None:
        V = quad_covariance(mu, om, u0, tau, nz["sigma2_perp"], nz["sigma2_par"])
    E = scipy.linalg.expm((-mu * np.eye(d) + om) * tau)
    u_i = scipy.linalg.expm(om * tau) @ u0
    R_j = split(u0, nz["eta2_perp"], nz["eta2_par"])
    R_gamma = split(u_i, nz["gamma2_perp"], nz["gamma2_par"])
    return V + E @ R_j @ E.T + R_gamma


# ---------------------------------------------------------------------------------------------
# rt_transition, rt_direction, rt_noise_rate
# ---------------------------------------------------------------------------------------------


class TestRtTransition:
    @pytest.mark.parametrize("d, seed", [(2, 1), (3, 2), (6, 3)])
    def test_expm_and_loop_twin(self, d, seed):
        rng = np.random.default_rng(seed)
        om, mu = random_skew(rng, d), 0.35
        s = np.array([[0.0, 0.4], [-1.3, 7.9]])
        E = rt_transition(mu, om, s)
        assert E.shape == (2, 2, d, d) and E.dtype == np.float64
        ref = np.array([scipy.linalg.expm((-mu * np.eye(d) + om) * x) for x in s.ravel()]).reshape(E.shape)
        close(E, ref, rtol=ORACLE, what="e^{As} vs expm")
        close(rt_transition_loop(mu, om, s), E, rtol=SELF, what="rt_transition loop twin")

    def test_decay_times_orthogonal(self):
        rng = np.random.default_rng(4)
        om = random_skew(rng, 5)
        s = np.linspace(-3, 3, 7)
        R = rt_transition(0.0, om, s)
        close(R @ np.swapaxes(R, -1, -2), np.broadcast_to(np.eye(5), R.shape), rtol=ORACLE, what="e^{Ωs} orthogonal")
        close(rt_transition(0.8, om, s), np.exp(-0.8 * s)[:, None, None] * R, rtol=ORACLE, what="e^{−μs} factor")

    def test_semigroup(self):
        om = random_skew(np.random.default_rng(5), 4)
        a, b = rt_transition(0.2, om, 0.7), rt_transition(0.2, om, 1.9)
        close(a @ b, rt_transition(0.2, om, 2.6), rtol=ORACLE, what="e^{A(s+t)} = e^{As} e^{At}")

    def test_degenerate_generator(self):
        # Ω = 0 and an odd d (a zero eigenvalue of Ω) are fine: e^{Ωs} = I, resp. a fixed axis.
        close(rt_transition(0.5, np.zeros((3, 3)), 2.0), math.exp(-1.0) * np.eye(3), rtol=ORACLE, what="Ω = 0")
        om = np.pad(block_skew([1.3]), ((0, 1), (0, 1)))  # rotation in the (1, 2) plane, axis 3 fixed
        R = rt_transition(0.0, om, 0.9)
        close(R[:, 2], [0.0, 0.0, 1.0], rtol=ORACLE, what="fixed axis")

    @pytest.mark.parametrize("func", [rt_transition, rt_transition_loop])
    @pytest.mark.parametrize(
        "mu, omega, s, exc, match",
        [
            (-0.1, [[0.0, -1.0], [1.0, 0.0]], 1.0, ValueError, "mu"),
            (np.nan, [[0.0, -1.0], [1.0, 0.0]], 1.0, ValueError, "mu"),
            ("a", [[0.0, -1.0], [1.0, 0.0]], 1.0, TypeError, "mu"),
            (0.1, [[0.0, -1.0], [0.9, 0.0]], 1.0, ValueError, "omega"),  # not skew
            (0.1, [[1.0, -1.0], [1.0, 0.0]], 1.0, ValueError, "omega"),  # nonzero diagonal
            (0.1, [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]], 1.0, ValueError, "omega"),  # not square
            (0.1, [[0.0]], 1.0, ValueError, "omega"),  # d = 1
            (0.1, [0.0, 1.0], 1.0, ValueError, "omega"),  # 1-D
            (0.1, [[0.0, -1j], [1j, 0.0]], 1.0, TypeError, "omega"),  # complex
            (0.1, [[0.0, -np.inf], [np.inf, 0.0]], 1.0, ValueError, "omega"),
            (0.1, [[0.0, -1.0], [1.0, 0.0]], np.nan, ValueError, "s"),
            (0.1, [[0.0, -1.0], [1.0, 0.0]], "x", TypeError, "s"),
        ],
    )
    def test_errors(self, func, mu, omega, s, exc, match):
        with pytest.raises(exc, match=match):
            func(mu, omega, s)


class TestRtDirection:
    def test_expm_and_ode(self):
        rng = np.random.default_rng(6)
        om, u0 = random_skew(rng, 4), random_unit(rng, 4)
        s = np.array([0.0, 0.3, 2.2, -1.0])
        u = rt_direction(om, u0, s)
        close(u, np.array([scipy.linalg.expm(om * x) @ u0 for x in s]), rtol=ORACLE, what="u(t) vs expm")
        sol = solve_ivp(lambda _, y: om @ y, (0.0, 2.2), u0, method="DOP853", rtol=1e-13, atol=1e-14)
        close(u[2], sol.y[:, -1], rtol=ODE, what="u(t) vs solve_ivp du/dt = Ωu")
        close(np.linalg.norm(u, axis=-1), np.ones(4), rtol=ORACLE, what="‖u(t)‖ = 1")

    def test_broadcasting(self):
        rng = np.random.default_rng(7)
        om, u0 = random_skew(rng, 3), random_unit(rng, (5, 1, 3))
        assert rt_direction(om, u0, np.zeros((4,))).shape == (5, 4, 3)

    @pytest.mark.parametrize(
        "u0, match",
        [([1.0, 1.0], "u0"), ([0.0, 0.0], "u0.*zero"), ([1.0, 0.0, 0.0], "u0"), (1.0, "u0"), ([np.nan, 1.0], "u0")],
    )
    def test_errors(self, u0, match):
        with pytest.raises(ValueError, match=match):
            rt_direction([[0.0, -1.0], [1.0, 0.0]], u0, 1.0)


class TestRtNoiseRate:
    def test_eigenstructure(self):
        rng = np.random.default_rng(8)
        om, u0 = random_skew(rng, 4), random_unit(rng, 4)
        Q = rt_noise_rate(om, u0, 1.3, 0.4, 2.5)
        u = scipy.linalg.expm(om * 1.3) @ u0
        w, vecs = np.linalg.eigh(Q)
        close(w, [0.4, 0.4, 0.4, 2.5], rtol=ORACLE, what="eig Q = (σ_⊥² × (d−1), σ_∥²)")
        close(abs(vecs[:, -1] @ u), 1.0, rtol=ORACLE, what="radial eigenvector = u(t)")

    def test_isotropic_case(self):
        om, u0 = block_skew([0.7]), np.array([0.6, 0.8])
        close(rt_noise_rate(om, u0, [0.0, 5.0], 1.1, 1.1), np.broadcast_to(1.1 * np.eye(2), (2, 2, 2)), rtol=ORACLE,
              what="σ_⊥ = σ_∥: Q = σ² I")

    @pytest.mark.parametrize("sp, sq, match", [(-0.1, 1.0, "sigma2_perp"), (1.0, -1e-9, "sigma2_par"), (1.0, np.inf, "sigma2_par")])
    def test_errors(self, sp, sq, match):
        with pytest.raises(ValueError, match=match):
            rt_noise_rate(block_skew([1.0]), [1.0, 0.0], 0.5, sp, sq)


# ---------------------------------------------------------------------------------------------
# rt_covariance, rt_variances
# ---------------------------------------------------------------------------------------------


class TestRtCovariance:
    @pytest.mark.parametrize("d, seed, mu, tau", [(2, 10, 0.3, 1.7), (3, 11, 0.0, 2.5), (4, 12, 1.1, 0.4), (3, 13, 0.05, 7.3)])
    def test_quad_vec(self, d, seed, mu, tau):
        rng = np.random.default_rng(seed)
        om, u0 = random_skew(rng, d, scale=0.8), random_unit(rng, d)
        V = rt_covariance(mu, om, u0, tau, sigma2_perp=0.4, sigma2_par=2.0)
        close(V, quad_covariance(mu, om, u0, tau, 0.4, 2.0), rtol=ORACLE, what="V(τ) vs quad_vec")

    @pytest.mark.parametrize("d, seed, mu, tau", [(2, 14, 0.3, 1.7), (3, 15, 0.0, 2.5), (4, 16, 0.9, 3.0)])
    def test_solve_ivp(self, d, seed, mu, tau):
        rng = np.random.default_rng(seed)
        om, u0 = random_skew(rng, d, scale=0.8), random_unit(rng, d)
        V = rt_covariance(mu, om, u0, tau, sigma2_perp=1.3, sigma2_par=0.2)
        close(V, ivp_covariance(mu, om, u0, tau, 1.3, 0.2), rtol=ODE, what="V(τ) vs solve_ivp DLE with Q(t)")

    def test_non_corotating_noise_is_not_closed_form(self):
        # The closed form relies on co-rotation: a noise direction frozen at u_j gives another V.
        rng = np.random.default_rng(17)
        om, u0, mu, tau = random_skew(rng, 3), random_unit(rng, 3), 0.3, 1.5
        A = -mu * np.eye(3) + om
        frozen = split(u0, 0.4, 2.0)
        V_frozen, _ = quad_vec(lambda s: scipy.linalg.expm(A * s) @ frozen @ scipy.linalg.expm(A * s).T, 0.0, tau)
        V = rt_covariance(mu, om, u0, tau, sigma2_perp=0.4, sigma2_par=2.0)
        assert np.max(np.abs(V - V_frozen)) > 1e-2

    @pytest.mark.parametrize("d, seed, mu, tau", [(2, 18, 0.3, 1.7), (3, 19, 0.0, 0.0), (5, 20, 0.6, 4.0)])
    def test_measurement_terms_matrix_algebra(self, d, seed, mu, tau):
        rng = np.random.default_rng(seed)
        om, u0 = random_skew(rng, d), random_unit(rng, d)
        S = rt_covariance(mu, om, u0, tau, **NOISES)
        close(S, algebra_covariance(mu, om, u0, tau, NOISES), rtol=ORACLE, what="Σ vs V + e^{Aτ}R_j e^{A^Tτ} + R_Γ")

    def test_monte_carlo(self):
        """Simulate x on [t_j, t_i] with the co-rotating noise, measure both ends, form the residual."""
        rng = np.random.default_rng(21)
        d, mu, tau, steps, n = 3, 0.4, 1.2, 120, 20000
        om, u0 = random_skew(rng, d, scale=0.7), random_unit(rng, d)
        h = tau / steps
        E = scipy.linalg.expm((-mu * np.eye(d) + om) * h)
        E2 = scipy.linalg.expm((-mu * np.eye(d) + om) * h / 2)
        x = np.zeros((n, d))  # x(t_j) = 0 w.l.o.g. (the residual does not depend on it)
        for m in range(steps):  # exponential Euler: x ← e^{Ah} x + √h e^{Ah/2} L(t_{m+½}) ξ (noise carried h/2)
            u = scipy.linalg.expm(om * (m + 0.5) * h) @ u0
            L = np.sqrt(NOISES["sigma2_perp"]) * (np.eye(d) - np.outer(u, u)) + np.sqrt(NOISES["sigma2_par"]) * np.outer(u, u)
            x = x @ E.T + math.sqrt(h) * rng.normal(size=(n, d)) @ L.T @ E2.T
        u_i = scipy.linalg.expm(om * tau) @ u0

        def measure(u, e_perp, e_par, size):
            xi = rng.normal(size=size)
            s = xi @ u
            return math.sqrt(e_perp) * (xi - s[:, None] * u) + math.sqrt(e_par) * s[:, None] * u

        z_j = measure(u0, NOISES["eta2_perp"], NOISES["eta2_par"], (n, d))  # x(t_j) = 0
        z_i = x + measure(u_i, NOISES["gamma2_perp"], NOISES["gamma2_par"], (n, d))
        r = z_i - z_j @ scipy.linalg.expm((-mu * np.eye(d) + om) * tau).T
        emp = r.T @ r / n
        S = rt_covariance(mu, om, u0, tau, **NOISES)
        # entry (a, b) of a sample covariance has standard deviation sqrt((S_aa S_bb + S_ab²)/n)
        sd = np.sqrt(np.outer(np.diag(S), np.diag(S)) + S**2)
        band = mc_band(n) * sd  # 5 sigma; the scheme's own bias is far below (test_simulation_scheme_is_unbiased)
        assert np.all(np.abs(emp - S) <= band), np.max(np.abs(emp - S) / band)

    @pytest.mark.parametrize("mu, tau, steps", [(0.4, 1.2, 120), (0.08, 6.0, 200), (0.0, 2.5, 50)])
    def test_simulation_scheme_is_unbiased(self, mu, tau, steps):
        """The Monte Carlo scheme's own covariance (no sampling) is V(τ) with φ replaced by its midpoint rule.

        Noise injected at t_m + h/2 along u(t_m + h/2) and carried by e^{Ah/2} lands on u_i (Eq. (9.5)), so
        C = Σ_m h e^{A(τ − t_m − h/2)} Q(t_m + h/2) e^{Aᵀ(τ − t_m − h/2)} = [h Σ_m e^{−2μ(τ − t_m − h/2)}] Q(t_i) exactly.
        """
        rng = np.random.default_rng(23)
        d = 3
        om, u0 = random_skew(rng, d, scale=0.7), random_unit(rng, d)
        h = tau / steps
        A = -mu * np.eye(d) + om
        E, E2 = scipy.linalg.expm(A * h), scipy.linalg.expm(A * h / 2)
        Q = noise_rate(om, u0, NOISES["sigma2_perp"], NOISES["sigma2_par"])
        C = np.zeros((d, d))
        for m in range(steps):
            C = E @ C @ E.T + h * E2 @ Q((m + 0.5) * h) @ E2.T
        midpoint = h * np.sum(np.exp(-2 * mu * (tau - (np.arange(steps) + 0.5) * h)))
        phi = tau if mu == 0 else -math.expm1(-2 * mu * tau) / (2 * mu)
        V = rt_covariance(mu, om, u0, tau, sigma2_perp=NOISES["sigma2_perp"], sigma2_par=NOISES["sigma2_par"])
        close(C, V * (midpoint / phi), rtol=1e-12, what="scheme covariance = midpoint-rule V(τ)")

    @staticmethod
    def _one_pair_d2(eta2_perp, eta2_par, n=100_000, seed=24):
        """One pair, d = 2: d² with u fixed (the true direction) and with u from the noisy key.

        Keys k_j = x_j + v_j with v_j shaped along the true direction x_j/‖x_j‖; the path noise of
        Eq. (9.6) and the anchor noise along the true transported direction. Also returns the keys.
        """
        rng = np.random.default_rng(seed)
        mu, tau = 0.1, 1.0
        om = 0.7 * block_skew([1.0])
        nz = dict(sigma2_perp=0.01, sigma2_par=0.01, eta2_perp=eta2_perp, eta2_par=eta2_par, gamma2_perp=0.01,
                  gamma2_par=0.01)
        x_j = np.array([1.0, 0.0])
        E = scipy.linalg.expm((-mu * np.eye(2) + om) * tau)
        u_i = scipy.linalg.expm(om * tau) @ x_j

        def draw(u, var_perp, var_par):
            xi = rng.normal(size=(n, 2))
            c = xi @ u
            return math.sqrt(var_perp) * (xi - c[:, None] * u) + math.sqrt(var_par) * c[:, None] * u

        phi = -math.expm1(-2 * mu * tau) / (2 * mu)
        k = x_j + draw(x_j, nz["eta2_perp"], nz["eta2_par"])
        z = E @ x_j + draw(u_i, nz["sigma2_perp"] * phi, nz["sigma2_par"] * phi) + draw(u_i, nz["gamma2_perp"], nz["gamma2_par"])
        r = z - k @ E.T
        a_perp, a_par = rt_variances(mu, tau, **nz)
        d2_fixed = rt_distance(r, u_i, a_perp, a_par)
        u_key = rt_direction(om, k / np.linalg.norm(k, axis=1, keepdims=True), tau)
        return d2_fixed, rt_distance(r, u_key, a_perp, a_par), k @ x_j

    def test_distance_is_chi2_for_a_fixed_direction_not_for_a_key_with_tangential_noise(self):
        """With u fixed in advance d² ~ χ²₂ (mean 2); with u from a key with large tangential noise it is not."""
        n = 100_000
        d2_fixed, d2_key, _ = self._one_pair_d2(eta2_perp=0.2, eta2_par=0.005, n=n)
        # χ²₂ has mean 2 and standard deviation 2: a 5-sigma band for the sample mean is 10/√n ≈ 0.03
        assert abs(d2_fixed.mean() - 2) < mc_band(n) * 2, d2_fixed.mean()
        assert abs(np.mean(d2_fixed > -2 * math.log(0.01)) - 0.01) < 0.003  # 99 % point of χ²₂ is −2 log 0.01
        assert d2_key.mean() > 3.0, d2_key.mean()  # measured: about 4

    def test_distance_stays_chi2_for_a_key_with_purely_radial_noise(self):
        """η⊥² = 0: the key's axis is the true one (even when the key points backwards), so d² is unchanged."""
        n = 100_000
        d2_fixed, d2_key, along = self._one_pair_d2(eta2_perp=0.0, eta2_par=0.5, n=n)
        assert np.mean(along < 0) > 0.05  # P(1 + N(0, 0.5) < 0) ≈ 0.079: the sign flip is exercised
        close(d2_key, d2_fixed, rtol=1e-12, what="d² with u from a radially noisy key == d² with the true u")
        assert abs(d2_key.mean() - 2) < mc_band(n) * 2, d2_key.mean()

    def test_loop_twin_and_broadcasting(self):
        rng = np.random.default_rng(22)
        om, u0 = random_skew(rng, 3), random_unit(rng, (4, 1, 3))
        tau = np.array([0.0, 0.5, 3.0])
        S = rt_covariance(0.2, om, u0, tau, **NOISES)
        assert S.shape == (4, 3, 3, 3)
        close(rt_covariance_loop(0.2, om, u0, tau, **NOISES), S, rtol=SELF, what="rt_covariance loop twin")

    def test_brownian_limit(self):
        om, u0 = block_skew([0.5, 2.0]), random_unit(np.random.default_rng(23), 4)
        tau = np.array([0.3, 9.0])
        V0 = rt_covariance(0.0, om, u0, tau, sigma2_perp=0.7, sigma2_par=1.9)
        u_i = rt_direction(om, u0, tau)
        ref = np.array([t * split(u, 0.7, 1.9) for t, u in zip(tau, u_i)])
        close(V0, ref, rtol=ORACLE, what="μ = 0: V = τ Q(t_i)")
        close(rt_covariance(1e-13, om, u0, tau, sigma2_perp=0.7, sigma2_par=1.9), V0, rtol=1e-11, what="μ → 0")

    def test_equivariance_under_commuting_rotation(self):
        om = block_skew([0.8, -1.7])
        R = block_rotation([0.4, 2.9])
        u0 = random_unit(np.random.default_rng(24), 4)
        S = rt_covariance(0.3, om, u0, 2.0, **NOISES)
        close(rt_covariance(0.3, om, R @ u0, 2.0, **NOISES), R @ S @ R.T, rtol=ORACLE, what="Σ(Ru) = R Σ R^T")

    @settings(max_examples=25)
    @given(
        seed=st.integers(0, 2**16),
        d=st.integers(2, 5),
        mu=st.floats(0.0, 3.0),
        tau=st.floats(0.0, 50.0),
        noises=st.lists(st.floats(0.0, 10.0), min_size=6, max_size=6),
    )
    def test_psd(self, seed, d, mu, tau, noises):
        rng = np.random.default_rng(seed)
        nz = dict(zip(NOISES, noises))
        S = rt_covariance(mu, random_skew(rng, d), random_unit(rng, d), tau, **nz)
        np.testing.assert_array_equal(S, S.T)
        assert np.linalg.eigvalsh(S).min() >= -1e-12 * max(np.max(np.abs(S)), 1e-300)

    @pytest.mark.parametrize("func", [rt_covariance, rt_covariance_loop])
    @pytest.mark.parametrize(
        "args, kw, exc, match",
        [
            ((-1.0, block_skew([1.0]), [1.0, 0.0], 1.0), {}, ValueError, "mu"),
            ((0.1, [[0.0, 1.0], [1.0, 0.0]], [1.0, 0.0], 1.0), {}, ValueError, "omega"),
            ((0.1, block_skew([1.0]), [1.0, 0.1], 1.0), {}, ValueError, "u0"),
            ((0.1, block_skew([1.0]), [0.0, 0.0], 1.0), {}, ValueError, "u0"),
            ((0.1, block_skew([1.0]), [1.0, 0.0, 0.0], 1.0), {}, ValueError, "u0"),
            ((0.1, block_skew([1.0]), [1.0, 0.0], -0.5), {}, ValueError, "tau"),
            ((0.1, block_skew([1.0]), [1.0, 0.0], np.inf), {}, ValueError, "tau"),
            ((0.1, block_skew([1.0]), [1.0, 0.0], 1.0), {"sigma2_perp": -1.0}, ValueError, "sigma2_perp"),
            ((0.1, block_skew([1.0]), [1.0, 0.0], 1.0), {"eta2_par": -1.0}, ValueError, "eta2_par"),
            ((0.1, block_skew([1.0]), [1.0, 0.0], 1.0), {"gamma2_par": np.inf}, ValueError, "gamma2_par"),
            ((0.1, block_skew([1.0]), [1.0, 0.0], 1.0), {"gamma2_perp": "x"}, TypeError, "gamma2_perp"),
            ((0.1, block_skew([1.0]), np.ones((3, 2)) / np.sqrt(2), np.ones(2)), {}, ValueError, "shape|broadcast"),
        ],
    )
    def test_errors(self, func, args, kw, exc, match):
        with pytest.raises(exc, match=match):
            func(*args, **{"sigma2_perp": 1.0, "sigma2_par": 1.0, **kw})


class TestRtVariances:
    def test_loop_twin_and_isotropic_kernel(self):
        tau = np.array([[0.0, 0.2], [3.0, 40.0]])
        a_perp, a_par = rt_variances(0.25, tau, **NOISES)
        lp, lq = rt_variances_loop(0.25, tau, **NOISES)
        close(lp, a_perp, rtol=SELF, what="a_⊥ loop twin")
        close(lq, a_par, rtol=SELF, what="a_∥ loop twin")
        n = NOISES
        close(a_perp, isotropic_covariance(tau, 0.25, n["sigma2_perp"], n["eta2_perp"], n["gamma2_perp"]), rtol=ORACLE,
              what="a_⊥ = AFA isotropic kernel (2.9)")
        close(a_par, isotropic_covariance(tau, 0.25, n["sigma2_par"], n["eta2_par"], n["gamma2_par"]), rtol=ORACLE,
              what="a_∥ = AFA isotropic kernel (2.9)")

    @pytest.mark.parametrize("d, seed, mu, tau", [(3, 30, 0.4, 1.1), (4, 31, 0.0, 2.0)])
    def test_eigenvalues_of_matrix_oracle(self, d, seed, mu, tau):
        rng = np.random.default_rng(seed)
        om, u0 = random_skew(rng, d), random_unit(rng, d)
        S = algebra_covariance(mu, om, u0, tau, NOISES)
        u_i = scipy.linalg.expm(om * tau) @ u0
        a_perp, a_par = rt_variances(mu, tau, **NOISES)
        close(u_i @ S @ u_i, a_par, rtol=ORACLE, what="a_∥ = u_i^T Σ u_i")
        w = np.linalg.eigvalsh(S - a_par * np.outer(u_i, u_i))  # remove the radial part: a_⊥ on the tangent plane
        close(np.sort(w)[1:], np.full(d - 1, a_perp), rtol=ORACLE, what="a_⊥ = tangential eigenvalues")

    def test_limits(self):
        n = NOISES
        a_perp, a_par = rt_variances(0.0, 2.0, **n)
        close(a_perp, 2.0 * n["sigma2_perp"] + n["eta2_perp"] + n["gamma2_perp"], rtol=ORACLE, what="μ = 0 totals")
        a_perp, a_par = rt_variances(0.5, 1e3, **n)
        close(a_par, n["sigma2_par"] / 1.0 + n["gamma2_par"], rtol=ORACLE, what="τ → ∞ totals")
        a_perp, a_par = rt_variances(0.5, 0.0, **n)
        close(a_par, n["eta2_par"] + n["gamma2_par"], rtol=ORACLE, what="τ = 0 totals")

    def test_sphere_limit_infinite_radial(self):
        a_perp, a_par = rt_variances(0.5, [0.0, 1.0], **{**NOISES, "gamma2_par": np.inf})
        assert np.all(np.isinf(a_par)) and np.all(np.isfinite(a_perp))

    @pytest.mark.parametrize("func", [rt_variances, rt_variances_loop])
    @pytest.mark.parametrize(
        "mu, tau, kw, exc, match",
        [
            (-0.1, 1.0, {}, ValueError, "mu"),
            (0.1, -1.0, {}, ValueError, "tau"),
            (0.1, [0.0, np.nan], {}, ValueError, "tau"),
            (0.1, 1.0, {"sigma2_par": -2.0}, ValueError, "sigma2_par"),
            (0.1, 1.0, {"eta2_perp": np.inf}, ValueError, "eta2_perp"),
            (0.1, 1.0, {"gamma2_perp": -np.inf}, ValueError, "gamma2_perp"),
            (0.1, 1.0, {"gamma2_par": -1.0}, ValueError, "gamma2_par"),
            (0.1, 1.0, {"gamma2_par": None}, TypeError, "gamma2_par"),
        ],
    )
    def test_errors(self, func, mu, tau, kw, exc, match):
        with pytest.raises(exc, match=match):
            func(mu, tau, **{**NOISES, **kw})


# ---------------------------------------------------------------------------------------------
# rt_precision, rt_distance, rt_logdet_precision
# ---------------------------------------------------------------------------------------------


def sherman_morrison(u, a_perp, a_par):
    """(a_⊥ I + c u u^T)^{-1} = I/a_⊥ − (c/a_⊥²) u u^T / (1 + c u^T u / a_⊥), c = a_∥ − a_⊥ (explicit update)."""
    c = a_par - a_perp
    return np.eye(u.size) / a_perp - (c / a_perp**2) * np.outer(u, u) / (1.0 + c * (u @ u) / a_perp)


class TestRtPrecision:
    def test_inverse_sherman_morrison_loop(self):
        rng = np.random.default_rng(40)
        u = random_unit(rng, (6, 4))
        a_perp, a_par = rng.uniform(0.1, 3.0, 6), rng.uniform(0.01, 30.0, 6)
        P = rt_precision(u, a_perp, a_par)
        S = np.array([split(*x) for x in zip(u, a_perp, a_par)])
        close(P, np.linalg.inv(S), rtol=ORACLE, what="P vs np.linalg.inv")
        close(P, np.array([sherman_morrison(*x) for x in zip(u, a_perp, a_par)]), rtol=ORACLE, what="P vs Sherman–Morrison")
        close(rt_precision_loop(u, a_perp, a_par), P, rtol=SELF, what="rt_precision loop twin")

    def test_sphere_limit_is_tangent_projector(self):
        u = np.array([0.0, 0.6, 0.8])
        P = rt_precision(u, 2.0, np.inf)
        close(P, (np.eye(3) - np.outer(u, u)) / 2.0, rtol=ORACLE, what="a_∥ = ∞: P = (I − uu^T)/a_⊥")
        close(rt_precision_loop(u, 2.0, np.inf), P, rtol=SELF, what="rt_precision loop twin (a_∥ = ∞)")
        close(P, rt_precision(u, 2.0, 1e16), rtol=1e-15, what="a_∥ → ∞")

    @settings(max_examples=30)
    @given(
        seed=st.integers(0, 2**16),
        d=st.integers(2, 6),
        a_perp=st.floats(1e-3, 1e3),
        a_par=st.floats(1e-3, 1e3),
    )
    def test_precision_times_covariance(self, seed, d, a_perp, a_par):
        u = random_unit(np.random.default_rng(seed), d)
        P = rt_precision(u, a_perp, a_par)
        cond = max(a_perp, a_par) / min(a_perp, a_par)  # round-off of the product scales with cond(Σ)
        assert_close(P @ split(u, a_perp, a_par), np.eye(d), rtol=10 * d * np.finfo(float).eps * cond)
        assert np.linalg.eigvalsh(P).min() > 0

    @pytest.mark.parametrize("func", [rt_precision, rt_precision_loop])
    @pytest.mark.parametrize(
        "u, a_perp, a_par, exc, match",
        [
            ([1.0, 0.0], 0.0, 1.0, ValueError, "a_perp"),
            ([1.0, 0.0], -1.0, 1.0, ValueError, "a_perp"),
            ([1.0, 0.0], np.inf, 1.0, ValueError, "a_perp"),
            ([1.0, 0.0], 1.0, 0.0, ValueError, "a_par"),
            ([1.0, 0.0], 1.0, np.nan, ValueError, "a_par"),
            ([1.0, 0.0], 1.0, -np.inf, ValueError, "a_par"),
            ([2.0, 0.0], 1.0, 1.0, ValueError, "u"),
            ([0.0, 0.0], 1.0, 1.0, ValueError, "u"),
            (np.ones((2, 2)) / np.sqrt(2), [1.0, 1.0, 1.0], 1.0, ValueError, "shape|broadcast"),
        ],
    )
    def test_errors(self, func, u, a_perp, a_par, exc, match):
        with pytest.raises(exc, match=match):
            func(u, a_perp, a_par)


class TestRtDistance:
    def test_quadratic_form_and_loop_over_lags_and_residuals(self):
        rng = np.random.default_rng(41)
        d, mu = 3, 0.3
        om = random_skew(rng, d)
        u0 = random_unit(rng, (7, d))  # seven keys
        tau = np.linspace(0.0, 5.0, 5)[:, None]  # five lags
        u = rt_direction(om, u0, tau)  # (5, 7, d)
        r = rng.normal(size=(5, 7, d))
        a_perp, a_par = rt_variances(mu, tau, **NOISES)
        d2 = rt_distance(r, u, a_perp, a_par)
        assert d2.shape == (5, 7)
        S = rt_covariance(mu, om, u0, tau, **NOISES)
        ref = np.einsum("...a,...ab,...b->...", r, np.linalg.inv(S), r)
        close(d2, ref, rtol=ORACLE, what="d² vs r^T Σ^{-1} r")
        close(d2, np.einsum("...a,...ab,...b->...", r, rt_precision(u, a_perp, a_par), r), rtol=ORACLE, what="d² = r^T P r")
        close(rt_distance_loop(r, u, a_perp, a_par), d2, rtol=SELF, what="rt_distance loop twin")

    def test_nearly_radial_residual_keeps_its_tangential_part(self):
        u = np.array([1.0, 0.0, 0.0])
        r = np.array([1.0, 3e-9, 0.0])
        d2 = rt_distance(r, u, 1.0, np.inf)
        assert abs(d2 - 9e-18) <= 1e-15 * 9e-18  # ‖r‖² − (u^T r)² would be 0 or noise

    @settings(max_examples=30)
    @given(seed=st.integers(0, 2**16), d=st.integers(2, 6), a_perp=st.floats(1e-3, 1e3), a_par=st.floats(1e-3, 1e3))
    def test_nonnegative(self, seed, d, a_perp, a_par):
        rng = np.random.default_rng(seed)
        d2 = rt_distance(rng.normal(size=(4, d)), random_unit(rng, (4, d)), a_perp, a_par)
        assert np.all(d2 >= 0)

    @settings(max_examples=30)
    @given(
        seed=st.integers(0, 2**16),
        freqs=st.lists(st.floats(-3.0, 3.0), min_size=1, max_size=3),
        angles=st.lists(st.floats(-np.pi, np.pi), min_size=3, max_size=3),
        tau=st.floats(0.0, 10.0),
    )
    def test_rotation_invariance(self, seed, freqs, angles, tau):
        """Rotating u_j and r by an orthogonal R with RΩ = ΩR leaves d² unchanged (u_i = e^{Ωτ}u_j)."""
        rng = np.random.default_rng(seed)
        om, R = block_skew(freqs), block_rotation(angles[: len(freqs)])
        d = om.shape[0]
        u0, r = random_unit(rng, d), rng.normal(size=d)
        a_perp, a_par = rt_variances(0.2, tau, **NOISES)
        d2 = rt_distance(r, rt_direction(om, u0, tau), a_perp, a_par)
        d2_rot = rt_distance(R @ r, rt_direction(om, R @ u0, tau), a_perp, a_par)
        assert_close(d2_rot, d2, rtol=1e-12)

    def test_rotation_invariance_needs_commutation(self):
        """The property above is not vacuous: a rotation that does not commute with Ω changes d²."""
        rng = np.random.default_rng(42)
        om = block_skew([1.0, 0.0])
        R = scipy.linalg.expm(random_skew(rng, 4))
        u0, r = random_unit(rng, 4), rng.normal(size=4)
        a_perp, a_par = rt_variances(0.2, 1.0, **NOISES)
        d2 = rt_distance(r, rt_direction(om, u0, 1.0), a_perp, a_par)
        assert abs(rt_distance(R @ r, rt_direction(om, R @ u0, 1.0), a_perp, a_par) - d2) > 1e-3

    @pytest.mark.parametrize("func", [rt_distance, rt_distance_loop])
    @pytest.mark.parametrize(
        "r, u, a_perp, a_par, exc, match",
        [
            ([1.0, 0.0, 0.0], [1.0, 0.0], 1.0, 1.0, ValueError, "r"),
            (1.0, [1.0, 0.0], 1.0, 1.0, ValueError, "r"),
            ([1.0, np.nan], [1.0, 0.0], 1.0, 1.0, ValueError, "r"),
            ([1.0, 0.0], [1.0, 1.0], 1.0, 1.0, ValueError, "u"),
            ([1.0, 0.0], [0.0, 0.0], 1.0, 1.0, ValueError, "u"),
            ([1.0, 0.0], [1.0, 0.0], -1.0, 1.0, ValueError, "a_perp"),
            ([1.0, 0.0], [1.0, 0.0], 1.0, 0.0, ValueError, "a_par"),
            (np.ones((3, 2)), [1.0, 0.0], [1.0, 2.0], 1.0, ValueError, "shape|broadcast"),
        ],
    )
    def test_errors(self, func, r, u, a_perp, a_par, exc, match):
        with pytest.raises(exc, match=match):
            func(r, u, a_perp, a_par)


class TestRtLogdetPrecision:
    def test_slogdet(self):
        rng = np.random.default_rng(43)
        for d in (2, 3, 7):
            u = random_unit(rng, d)
            sign, ref = np.linalg.slogdet(rt_precision(u, 0.3, 4.5))
            assert sign == 1
            close(rt_logdet_precision(0.3, 4.5, d), ref, rtol=ORACLE, what="log det P vs slogdet")
        assert rt_logdet_precision(1.0, np.inf, 3) == -np.inf

    @pytest.mark.parametrize("d, a_perp, a_par, match", [(1, 1.0, 1.0, "d"), (2.0, 1.0, 1.0, "d"), (True, 1.0, 1.0, "d"),
                                                         (2, 0.0, 1.0, "a_perp"), (2, 1.0, -1.0, "a_par")])
    def test_errors(self, d, a_perp, a_par, match):
        with pytest.raises(ValueError, match=match):
            rt_logdet_precision(a_perp, a_par, d)


# ---------------------------------------------------------------------------------------------
# sphere_residuals
# ---------------------------------------------------------------------------------------------


class TestSphereResiduals:
    def test_identities(self):
        rng = np.random.default_rng(50)
        q, k = random_unit(rng, (200, 4)), random_unit(rng, (200, 4))
        res = sphere_residuals(q, k)
        close(res.tangential, res.sin2, rtol=1e-14, what="‖r_⊥‖² = sin²θ")
        theta = np.arccos(np.clip(np.sum(q * k, axis=-1), -1, 1))  # fine away from θ = 0, π
        close(res.theta2, theta**2, rtol=1e-12, what="θ vs arccos")
        close(res.chord2, np.sum((q - k) ** 2, axis=-1), rtol=1e-14, what="2(1 − cos θ) = ‖q − k‖²")
        close(res.tangential, rt_distance(q - k, k, 1.0, np.inf), rtol=1e-14, what="tangential = d² at a_⊥ = 1, a_∥ = ∞")

    def test_small_angle_orders(self):
        theta = np.array([1e-1, 1e-2, 1e-4])
        q = np.stack([np.cos(theta), np.sin(theta), 0 * theta], axis=-1)
        k = np.array([1.0, 0.0, 0.0])
        res = sphere_residuals(q, k)
        close(res.theta2, theta**2, rtol=1e-15, what="θ at small angles (atan2)")
        close(res.sin2 / res.theta2 - 1, -(theta**2) / 3 + 2 * theta**4 / 45, rtol=1e-5, what="sin²θ/θ² − 1")
        close(res.chord2 / res.theta2 - 1, -(theta**2) / 12 + theta**4 / 360, rtol=1e-5, what="2(1−cosθ)/θ² − 1")

    def test_antipodal(self):
        res = sphere_residuals([1.0, 0.0], [-1.0, 0.0])
        assert res.tangential == 0 and res.chord2 == 4.0 and abs(res.theta2 - np.pi**2) < 1e-15

    @pytest.mark.parametrize(
        "q, k, match", [([1.0, 1.0], [1.0, 0.0], "q"), ([1.0, 0.0], [0.0, 0.0], "k"), ([1.0, 0.0], [1.0, 0.0, 0.0], "k")]
    )
    def test_errors(self, q, k, match):
        with pytest.raises(ValueError, match=match):
            sphere_residuals(q, k)


# ---------------------------------------------------------------------------------------------
# rt_attention, rt_step
# ---------------------------------------------------------------------------------------------


def brute_force_attention(q, k, v, *, mu, omega, nu, t, weight="student", kappa=None, temperature=1.0,
                          direction="key", **nz):
    """Dense-matrix oracle: expm transport, Σ matrix algebra, inv, slogdet, scipy softmax."""
    n, d = q.shape
    kappa = (nu + d) / d if kappa is None else kappa
    A = -mu * np.eye(d) + omega
    out, W = np.zeros((n, d)), np.zeros((n, n))
    for i in range(n):
        L, vals = [], []
        for j in range(i + 1):
            tau = t[i] - t[j]
            E = scipy.linalg.expm(A * tau)
            k_hat = E @ k[j]
            u = k_hat / np.linalg.norm(k_hat) if direction == "key" else q[i] / np.linalg.norm(q[i])
            u_j = scipy.linalg.expm(-omega * tau) @ u  # the direction at the key time
            phi = tau if mu == 0 else (1 - np.exp(-2 * mu * tau)) / (2 * mu)
            V = phi * split(u, nz["sigma2_perp"], nz["sigma2_par"])
            S = V + E @ split(u_j, nz["eta2_perp"], nz["eta2_par"]) @ E.T + split(u, nz["gamma2_perp"], nz["gamma2_par"])
            r = q[i] - k_hat
            d2 = r @ np.linalg.solve(S, r)
            logdet_P = -np.linalg.slogdet(S)[1]
            robust = kappa * np.log1p(d2 / nu) if weight == "student" else d2 / nu
            L.append(temperature * (logdet_P / d - robust))
            vals.append(E @ v[j])
        W[i, : i + 1] = scipy.special.softmax(np.array(L))
        out[i] = W[i, : i + 1] @ np.array(vals)
    return out, W


ATT = dict(mu=0.3, nu=3.0, **NOISES)


class TestRtAttention:
    @pytest.mark.parametrize("weight", ["student", "exponential"])
    @pytest.mark.parametrize("direction", ["key", "query"])
    def test_brute_force_and_loop(self, weight, direction):
        rng = np.random.default_rng(60)
        n, d = 7, 3
        om = random_skew(rng, d)
        q, k, v = (rng.normal(size=(n, d)) for _ in range(3))
        t = np.cumsum(rng.uniform(0.2, 1.5, n))
        kw = dict(ATT, omega=om, t=t, weight=weight, direction=direction, kappa=None if weight == "student" else 2.0)
        out, W = rt_attention(q, k, v, return_weights=True, **kw)
        ref_out, ref_W = brute_force_attention(q, k, v, **kw)
        close(W, ref_W, rtol=ORACLE, what="RT attention weights vs dense brute force")
        close(out, ref_out, rtol=ORACLE, what="RT attention output vs dense brute force")
        lo, lW = rt_attention_loop(q, k, v, return_weights=True, **kw)
        close(lo, out, rtol=SELF, what="rt_attention loop twin")
        close(lW, W, rtol=SELF, what="rt_attention loop twin weights")
        np.testing.assert_array_equal(W[np.triu_indices(n, 1)], 0.0)
        close(W.sum(axis=-1), np.ones(n), rtol=1e-15, what="rows sum to 1")

    @pytest.mark.parametrize("direction", ["key", "query"])
    def test_tiny_vectors_have_a_direction(self, direction):
        """q, k of size 1e-170: their squares underflow (np.linalg.norm gave 0, and the call was refused as 'a zero
        vector has no direction'). The distances vanish there, so the output is the small-input limit, the same as
        at 1e-20; the loop twin agrees."""
        rng = np.random.default_rng(67)
        q, k, v = (rng.normal(size=(6, 4)) for _ in range(3))
        kw = dict(ATT, omega=block_skew([0.3, 0.6]), direction=direction)
        out = rt_attention(q * 1e-170, k * 1e-170, v, **kw)
        close(out, rt_attention(q * 1e-20, k * 1e-20, v, **kw), rtol=1e-14, what="RT attention, 1e-170 against 1e-20")
        close(rt_attention_loop(q * 1e-170, k * 1e-170, v, **kw), out, rtol=SELF, what="its loop twin")
        with pytest.raises(ValueError, match="a zero vector has no direction"):
            rt_attention(q, np.zeros_like(k), v, **{**kw, "direction": "key"})

    def test_batch_sphere_limit_and_loop(self):
        rng = np.random.default_rng(61)
        q, k, v = (rng.normal(size=(2, 3, 5, 4)) for _ in range(3))
        kw = dict(ATT, omega=block_skew([0.7, 1.9]), gamma2_par=np.inf, temperature=0.7)
        out = rt_attention(q, k, v, **kw)
        assert out.shape == (2, 3, 5, 4)
        close(rt_attention_loop(q, k, v, **kw), out, rtol=SELF, what="rt_attention loop twin (batch, a_∥ = ∞)")
        close(out[1, 2], rt_attention(q[1, 2], k[1, 2], v[1, 2], **kw), rtol=1e-15, what="batch = independent rows")
        near = rt_attention(q, k, v, **{**kw, "gamma2_par": 1e10})
        close(near, out, rtol=1e-8, what="γ_∥² → ∞ approaches the sphere limit")

    def test_isotropic_noise_makes_direction_irrelevant(self):
        rng = np.random.default_rng(62)
        q, k, v = (rng.normal(size=(6, 3)) for _ in range(3))
        iso = dict(mu=0.2, nu=2.0, sigma2_perp=0.5, sigma2_par=0.5, eta2_perp=0.1, eta2_par=0.1, gamma2_perp=0.3,
                   gamma2_par=0.3, omega=random_skew(rng, 3))
        close(rt_attention(q, k, v, direction="query", **iso), rt_attention(q, k, v, **iso), rtol=1e-14,
              what="isotropic: u drops out")
        # ... and the logit is isotropic AFA's: log p − κ log(1 + p‖r‖²/ν), p = 1/Σ(Δt)
        _, W = rt_attention(q, k, v, return_weights=True, **iso)
        t = np.arange(6.0)
        E = [scipy.linalg.expm((-0.2 * np.eye(3) + iso["omega"]) * x) for x in t]
        L = np.full((6, 6), -np.inf)
        for i in range(6):
            for j in range(i + 1):
                p = 1.0 / isotropic_covariance(t[i] - t[j], 0.2, 0.5, 0.1, 0.3)
                r = q[i] - E[i - j] @ k[j]
                L[i, j] = np.log(p) - (2.0 + 3) / 3 * np.log1p(p * (r @ r) / 2.0)
        close(W, scipy.special.softmax(L, axis=-1), rtol=ORACLE, what="isotropic RT = isotropic AFA weights")

    @pytest.mark.parametrize("weight", ["student", "exponential"])
    def test_isotropic_equals_isotropic_afa(self, weight):
        """a_⊥ = a_∥ and Ω = diag(ω_k J): the complex channels x_{2k} + i x_{2k+1} of refimpl.afa (chapter 8)."""
        rng = np.random.default_rng(63)
        freqs = np.array([0.7, -1.9])
        q, k, v = (rng.normal(size=(2, 6, 4)) for _ in range(3))
        t = np.cumsum(rng.uniform(0.2, 1.5, 6))
        iso = dict(sigma2_perp=0.5, sigma2_par=0.5, eta2_perp=0.1, eta2_par=0.1, gamma2_perp=0.3, gamma2_par=0.3)
        out, W = rt_attention(q, k, v, mu=0.2, omega=block_skew(freqs), nu=2.0, t=t, weight=weight, kappa=1.5,
                              return_weights=True, **iso)
        cplx = lambda x: x[..., 0::2] + 1j * x[..., 1::2]
        ref, ref_W = isotropic_afa(cplx(q), cplx(k), cplx(v), mu=0.2, omega=freqs, sigma2=0.5, eta2=0.1, gamma2=0.3,
                                   nu=2.0, t=t, weight=weight, kappa=1.5, return_weights=True)
        close(W, ref_W, rtol=ORACLE, what="isotropic RT weights = afa.isotropic_afa weights")
        close(cplx(out), ref, rtol=ORACLE, what="isotropic RT output = afa.isotropic_afa output")

    @settings(max_examples=15)
    @given(seed=st.integers(0, 2**16), i=st.integers(0, 5), direction=st.sampled_from(["key", "query"]))
    def test_causality(self, seed, i, direction):
        rng = np.random.default_rng(seed)
        q, k, v = (rng.normal(size=(6, 3)) for _ in range(3))
        kw = dict(ATT, omega=random_skew(rng, 3), direction=direction)
        out = rt_attention(q, k, v, **kw)
        q2, k2, v2 = q.copy(), k.copy(), v.copy()
        for x in (q2, k2, v2):
            x[i + 1 :] += rng.normal(size=x[i + 1 :].shape)
        out2 = rt_attention(q2, k2, v2, **kw)
        np.testing.assert_array_equal(out2[: i + 1], out[: i + 1])
        if i < 5:
            assert np.max(np.abs(out2[i + 1 :] - out[i + 1 :])) > 0  # later outputs do react

    @settings(max_examples=15)
    @given(seed=st.integers(0, 2**16), angles=st.lists(st.floats(-np.pi, np.pi), min_size=2, max_size=2),
           shift=st.floats(-50.0, 50.0))
    def test_rotation_equivariance_and_time_shift(self, seed, angles, shift):
        rng = np.random.default_rng(seed)
        om, R = block_skew([0.9, -2.1]), block_rotation(angles)
        q, k, v = (rng.normal(size=(5, 4)) for _ in range(3))
        t = np.cumsum(rng.uniform(0.1, 2.0, 5))
        out = rt_attention(q, k, v, t=t, omega=om, **ATT)
        rot = rt_attention(q @ R.T, k @ R.T, v @ R.T, t=t, omega=om, **ATT)
        assert_close(rot, out @ R.T, rtol=1e-12)
        assert_close(rt_attention(q, k, v, t=t + shift, omega=om, **ATT), out, rtol=1e-11)

    @pytest.mark.parametrize("t0", [1e6, 1.7e9])
    def test_large_absolute_times_keep_full_accuracy(self, t0):
        """Only lags matter: time stamps such as Unix seconds must not cost accuracy in the rotated frame
        (rotating by e^{−Ωt} at t = 1.7e9 before the shift lost ~6e−8, against 1e−15 for the loop twin)."""
        rng = np.random.default_rng(64)
        om = random_skew(rng, 4)
        q, k, v = (rng.normal(size=(10, 4)) for _ in range(3))
        t = np.arange(10.0)
        ref = rt_attention_loop(q, k, v, t=t, omega=om, **ATT)
        close(rt_attention_loop(q, k, v, t=t0 + t, omega=om, **ATT), ref, rtol=1e-14, what="loop twin, shifted t")
        close(rt_attention(q, k, v, t=t0 + t, omega=om, **ATT), ref, rtol=1e-14,
              what=f"rt_attention with t starting at {t0:g} vs the loop twin at t starting at 0")

    def test_key_and_query_directions_on_the_sphere(self):
        """Unit-norm inputs, sphere limit: both directions give sin²θ only for μ = 0; with μ > 0 the query's
        tangential residual is e^{−2μΔt} sin²θ (the transported key is shorter than the query)."""
        rng = np.random.default_rng(65)
        n, d = 7, 3
        om = random_skew(rng, d)
        z = random_unit(rng, (n, d))
        t = np.cumsum(rng.uniform(0.2, 1.5, n))
        sph = dict(sigma2_perp=0.05, sigma2_par=0.0, eta2_perp=0.02, eta2_par=0.0, gamma2_perp=0.02,
                   gamma2_par=np.inf, nu=2.0, omega=om, t=t)
        _, Wk0 = rt_attention(z, z, z, mu=0.0, return_weights=True, **sph)
        _, Wq0 = rt_attention(z, z, z, mu=0.0, direction="query", return_weights=True, **sph)
        close(Wq0, Wk0, rtol=1e-13, what="μ = 0: key and query directions coincide on the sphere")
        mu = 0.3
        _, Wk = rt_attention(z, z, z, mu=mu, return_weights=True, **sph)
        _, Wq = rt_attention(z, z, z, mu=mu, direction="query", return_weights=True, **sph)
        assert np.max(np.abs(Wk - Wq)) > 0.05  # they differ for μ > 0
        # the logits written out with ‖r_⊥‖² = sin²θ (key) and e^{−2μΔt} sin²θ (query)
        for W, shrink in ((Wk, False), (Wq, True)):
            L = np.full((n, n), -np.inf)
            for i in range(n):
                for j in range(i + 1):
                    tau = t[i] - t[j]
                    kh = scipy.linalg.expm((-mu * np.eye(d) + om) * tau) @ z[j]
                    sin2 = 1.0 - (z[i] @ kh) ** 2 / (kh @ kh)
                    a_perp = 0.05 * (1 - np.exp(-2 * mu * tau)) / (2 * mu) + 0.02 * np.exp(-2 * mu * tau) + 0.02
                    d2 = (np.exp(-2 * mu * tau) if shrink else 1.0) * sin2 / a_perp
                    L[i, j] = -(d - 1) / d * np.log(a_perp) - (2.0 + d) / d * np.log1p(d2 / 2.0)
            close(W, scipy.special.softmax(L, axis=-1), rtol=ORACLE,
                  what=f"sphere-limit weights with the {'query' if shrink else 'key'} direction written out")

    @pytest.mark.parametrize("func", [rt_attention, rt_attention_loop])
    def test_underflowing_variance_is_an_error_not_nan(self, func):
        # σ² = γ² = 0: a(τ) = η² e^{−2μτ} underflows to 0 at μτ > 373 (an infinite precision)
        kw = dict(ATT, omega=block_skew([1.0]), sigma2_perp=0.0, gamma2_perp=0.0, mu=400.0)
        with pytest.raises(ValueError, match="gamma2_perp"):
            func(np.ones((3, 2)), np.ones((3, 2)), np.ones((3, 2)), **kw)
        out = func(np.ones((3, 2)), np.ones((3, 2)), np.ones((3, 2)), **{**kw, "mu": 1.0})  # fine at moderate μτ
        assert np.all(np.isfinite(out))

    @pytest.mark.parametrize("func", [rt_attention, rt_attention_loop])
    @pytest.mark.parametrize(
        "edit, exc, match",
        [
            (lambda a: {**a, "k": np.ones((4, 2))}, ValueError, "k"),
            (lambda a: {**a, "v": np.ones((3, 3))}, ValueError, "v"),
            (lambda a: {**a, "q": np.ones(3)}, ValueError, "q"),
            (lambda a: {**a, "omega": block_skew([1.0, 2.0])}, ValueError, "omega"),
            (lambda a: {**a, "omega": np.ones((3, 3))}, ValueError, "omega"),
            (lambda a: {**a, "mu": -0.5}, ValueError, "mu"),
            (lambda a: {**a, "sigma2_perp": -1.0}, ValueError, "sigma2_perp"),
            (lambda a: {**a, "eta2_par": -1.0}, ValueError, "eta2_par"),
            (lambda a: {**a, "gamma2_perp": np.inf}, ValueError, "gamma2_perp"),
            (lambda a: {**a, "eta2_perp": 0.0, "gamma2_perp": 0.0}, ValueError, "gamma2_perp"),
            (lambda a: {**a, "eta2_par": 0.0, "gamma2_par": 0.0}, ValueError, "gamma2_par"),
            (lambda a: {**a, "nu": 0.0}, ValueError, "nu"),
            (lambda a: {**a, "kappa": -1.0}, ValueError, "kappa"),
            (lambda a: {**a, "temperature": 0.0}, ValueError, "temperature"),
            (lambda a: {**a, "weight": "cauchy"}, ValueError, "weight"),
            (lambda a: {**a, "weight": 1}, TypeError, "weight"),
            (lambda a: {**a, "direction": "value"}, ValueError, "direction"),
            (lambda a: {**a, "t": [0.0, 2.0, 1.0]}, ValueError, "t"),
            (lambda a: {**a, "t": [0.0, 1.0, 1.0]}, ValueError, "t"),
            (lambda a: {**a, "t": [0.0, 1.0]}, ValueError, "t"),
            (lambda a: {**a, "k": np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])}, ValueError, "k"),
            (lambda a: {**a, "q": np.zeros((3, 2)), "direction": "query"}, ValueError, "q"),
        ],
    )
    def test_errors(self, func, edit, exc, match):
        args = dict(ATT, q=np.ones((3, 2)), k=np.ones((3, 2)), v=np.ones((3, 2)), omega=block_skew([1.0]))
        args = edit(args)
        with pytest.raises(exc, match=match):
            func(args.pop("q"), args.pop("k"), args.pop("v"), **args)


class TestRtStep:
    def test_definition_loop_and_retraction_identity(self):
        rng = np.random.default_rng(70)
        z = random_unit(rng, (2, 6, 3))
        kw = dict(ATT, omega=random_skew(rng, 3), t=np.linspace(0, 4, 6))
        step = rt_step(z, alpha=0.3, **kw)
        zbar = rt_attention(z, z, z, **kw)
        y = z + 0.3 * (zbar - z)
        close(step, y / np.linalg.norm(y, axis=-1, keepdims=True), rtol=ORACLE, what="rt_step definition")
        close(rt_step_loop(z, alpha=0.3, **kw), step, rtol=SELF, what="rt_step loop twin")
        close(np.linalg.norm(step, axis=-1), np.ones((2, 6)), rtol=1e-15, what="retracted onto the sphere")
        # the radial part of Δ only rescales the tangent step: α → α/(1 + αc)
        delta = zbar - z
        c = np.sum(delta * z, axis=-1, keepdims=True)
        tangent = z + 0.3 / (1 + 0.3 * c) * (delta - c * z)
        close(step, tangent / np.linalg.norm(tangent, axis=-1, keepdims=True), rtol=1e-13, what="retraction identity")

    def test_antipodal_case_sign_identity(self):
        """z⁺ = sign(1 + αc) R_z(α/(1 + αc) Δ_⊥), R_z(ξ) = (z + ξ)/‖z + ξ‖, including tokens with 1 + αc < 0."""
        rng = np.random.default_rng(72)
        z = random_unit(rng, (30, 3))
        kw = dict(omega=random_skew(rng, 3, 0.5), nu=2.0, sigma2_perp=0.05, sigma2_par=0.0, eta2_perp=0.02,
                  eta2_par=0.0, gamma2_perp=0.02, gamma2_par=np.inf)
        n_anti = 0
        for alpha in (0.7, 1.0, 1.6):
            for mu in (0.0, 0.3):
                zbar = rt_attention(z, z, z, mu=mu, **kw)
                delta = zbar - z
                c = np.sum(delta * z, axis=-1, keepdims=True)
                y = z + alpha / (1 + alpha * c) * (delta - c * z)
                expect = np.sign(1 + alpha * c) * y / np.linalg.norm(y, axis=-1, keepdims=True)
                close(rt_step(z, alpha=alpha, mu=mu, **kw), expect, rtol=1e-12, what="sign(1 + αc)·retraction")
                n_anti += int(np.sum(1 + alpha * c < 0))
        assert n_anti > 0  # the antipodal branch was exercised

    def test_alpha_one_is_the_decay_weighted_vmf_mean(self):
        """At α = 1 and μ > 0 the step is the vMF mean direction of e^{ΩΔt}z_j with weights A_ij e^{−μΔt_ij},
        not with weights A_ij."""
        rng = np.random.default_rng(73)
        n, d, mu = 30, 3, 0.3
        om = random_skew(rng, d, 0.5)
        z = random_unit(rng, (n, d))
        t = np.arange(float(n))
        kw = dict(mu=mu, omega=om, t=t, nu=2.0, sigma2_perp=0.05, sigma2_par=0.0, eta2_perp=0.02, eta2_par=0.0,
                  gamma2_perp=0.02, gamma2_par=np.inf)
        _, W = rt_attention(z, z, z, return_weights=True, **kw)
        step = rt_step(z, alpha=1.0, **kw)
        worst = 0.0
        for i in range(n):
            lag = t[i] - t[: i + 1]
            dirs = np.array([scipy.linalg.expm(om * x) @ z[j] for j, x in enumerate(lag)])  # unit directions
            m = (W[i, : i + 1] * np.exp(-mu * lag)) @ dirs
            close(step[i], m / np.linalg.norm(m), rtol=1e-12, what="weights A_ij e^{−μΔt}")
            m_a = W[i, : i + 1] @ dirs
            worst = max(worst, np.arccos(np.clip(step[i] @ m_a / np.linalg.norm(m_a), -1.0, 1.0)))
        assert np.degrees(worst) > 1.0  # the A_ij-weighted mean direction is a different point

    @pytest.mark.parametrize("func", [rt_step, rt_step_loop])
    def test_nearly_unit_z_is_renormalized(self, func):
        """A z within UNIT_TOL of the sphere is used renormalized, as the tolerance's contract says."""
        rng = np.random.default_rng(74)
        z = random_unit(rng, (6, 3))
        kw = dict(ATT, omega=random_skew(rng, 3), alpha=0.5)
        close(func(1.003 * z, **kw), func(z, **kw), rtol=1e-14, what="rt_step(1.003 z) == rt_step(z)")

    def test_causal(self):
        rng = np.random.default_rng(71)
        z = random_unit(rng, (5, 3))
        kw = dict(ATT, omega=random_skew(rng, 3))
        z2 = z.copy()
        z2[3:] = random_unit(rng, (2, 3))
        np.testing.assert_array_equal(rt_step(z2, alpha=0.5, **kw)[:3], rt_step(z, alpha=0.5, **kw)[:3])

    def test_vanishing_update(self):
        # equal weights on e1 and −e1 (Ω = 0, μ = 0, σ = η = 0, ν huge): z̄_1 = 0 and z + 1·Δ = 0
        kw = dict(mu=0.0, omega=np.zeros((2, 2)), nu=1e300, weight="exponential", sigma2_perp=0.0, sigma2_par=0.0,
                  eta2_perp=0.0, eta2_par=0.0, gamma2_perp=1.0, gamma2_par=1.0)
        for func in (rt_step, rt_step_loop):
            with pytest.raises(ValueError, match="alpha"):
                func(np.array([[1.0, 0.0], [-1.0, 0.0]]), alpha=1.0, **kw)

    @pytest.mark.parametrize("func", [rt_step, rt_step_loop])
    @pytest.mark.parametrize(
        "z, alpha, exc, match",
        [
            (np.ones((3, 2)), 0.5, ValueError, "z"),
            (np.array([1.0, 0.0]), 0.5, ValueError, "z"),
            (np.array([[1.0, 0.0], [0.0, 1.0]]), 0.0, ValueError, "alpha"),
            (np.array([[1.0, 0.0], [0.0, 1.0]]), "a", TypeError, "alpha"),
        ],
    )
    def test_errors(self, func, z, alpha, exc, match):
        with pytest.raises(exc, match=match):
            func(z, alpha=alpha, omega=block_skew([1.0]), **ATT)


class TestBadInputRefusedByName:
    def test_loop_overflow_and_broadcast(self):
        om = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
        for f in (rt_transition, rt_transition_loop):
            with pytest.raises(ValueError, match=r"^s \(\|s\| from"):
                f(0.2, om, np.array([-1e300, 1.0]))  # e^{−μs} overflows (was OverflowError in the loop)
        u = np.eye(3)
        with pytest.raises(ValueError, match=r"^a_perp: batch shape \(2,\) does not broadcast with u \(3,\)"):
            rt_precision(u, np.ones(2), np.ones(3))
        with pytest.raises(ValueError, match=r"^a_par: batch shape \(4,\) does not broadcast"):
            rt_logdet_precision(np.ones(3), np.ones(4), 3)
        with pytest.raises(ValueError, match=r"^k: batch shape"):
            sphere_residuals(u, np.eye(3)[:2])

    def test_return_weights_is_a_strict_bool(self):
        rng = np.random.default_rng(2)
        q = rng.normal(size=(4, 3))
        om = np.zeros((3, 3))
        for f in (rt_attention, rt_attention_loop):
            with pytest.raises(TypeError, match="^return_weights: expected a bool"):
                f(q, q, q, mu=0.2, omega=om, **NOISES, nu=2.0, return_weights="no")
