"""Tests of :mod:`refimpl.lyapunov`: the closed-form differential Lyapunov covariances.

Oracles, each independent of the code under test:

* Van Loan's block matrix exponential (``scipy.linalg.expm``) in the original basis;
* ``scipy.integrate.solve_ivp`` (DOP853, rtol = atol = 1e-13) on the DLE ODE itself;
* ``scipy.integrate.quad_vec`` of ``e^{As} Q e^{A^T s}`` for the AFA test system;
* ``scipy.linalg.solve_continuous_lyapunov`` for the steady state;
* a 80-digit ``decimal`` evaluation of ``(e^{zτ} − 1)/z`` (its own Taylor series, argument
  reduction and ``Decimal.exp``) for the delicate limits ``z → 0`` and large ``|z|τ``.

Tolerances come from :mod:`refimpl._testing` (SELF, ORACLE, ODE); where an elementwise relative
error is asserted instead of the norm-wise one, it is said.
"""

from __future__ import annotations

import functools
import math
from decimal import Decimal, localcontext
from functools import lru_cache

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import quad_vec, solve_ivp

from _recording import recorder  # noqa: E402 (tests/ is on sys.path)
from _oracles import elementwise_rel, van_loan, van_loan_block, van_loan_upper  # noqa: E402
from _oracles import random_psd as _random_psd  # noqa: E402
from refimpl._testing import ODE, ORACLE, SELF, assert_close
from refimpl._validate import as_noise
from refimpl.lyapunov import (
    dle_covariance,
    dle_covariance_backward,
    dle_covariance_backward_loop,
    dle_covariance_loop,
    isotropic_covariance,
    isotropic_covariance_loop,
    phi1,
    steady_state_covariance,
    steady_state_covariance_loop,
)

#: noise matrices in the eigenbasis: complex Hermitian by default
random_psd = functools.partial(_random_psd, complex_=True)

EPS = np.finfo(np.float64).eps

#: worst error seen per oracle (printed by conftest when REFIMPL_WORST_ERRORS=1)
WORST_ERRORS, close, _record = recorder()


# ---------------------------------------------------------------------------------------------
# Random test systems
# ---------------------------------------------------------------------------------------------


def random_eigvals(rng, d, re=(-1.0, -0.05), im_scale=1.5):
    return rng.uniform(*re, size=d) + 1j * rng.normal(scale=im_scale, size=d)


def random_S(rng, d, max_cond=30.0):
    """A random complex eigenvector matrix with cond(S) <= max_cond (unit-norm columns)."""
    while True:
        S = rng.normal(size=(d, d)) + 1j * rng.normal(size=(d, d))
        S /= np.linalg.norm(S, axis=0)
        if np.linalg.cond(S) <= max_cond:
            return S


def eigenbasis_noise(S, Q):
    """G̃ = S^{-1} Q S^{-†}, Hermitian."""
    g = np.linalg.solve(S, np.linalg.solve(S, Q.conj().T).conj().T)
    return 0.5 * (g + g.conj().T)


def to_original(S, sigma):
    """S Σ S^† (for Σ of shape (..., d, d))."""
    return S @ sigma @ S.conj().T


def expm_congruence(A, Q, s):
    E = scipy.linalg.expm(A * s)
    return E @ Q @ E.conj().T


# ---------------------------------------------------------------------------------------------
# An independent high-precision reference for φ(z, τ) = (e^{zτ} − 1)/z
# ---------------------------------------------------------------------------------------------

_PREC = 80


@lru_cache(maxsize=1)
def _decimal_pi() -> Decimal:
    # The series of the `decimal` module documentation, at _PREC + 30 digits.
    with localcontext() as ctx:
        ctx.prec = _PREC + 30
        lasts, t, s, n, na, d, da = 0, Decimal(3), Decimal(3), 1, 0, 0, 24
        while s != lasts:
            lasts = s
            n, na = n + na, na + 8
            d, da = d + da, da + 32
            t = (t * n) / d
            s += t
        return s


def _decimal_cos_sin(x: Decimal) -> tuple[Decimal, Decimal]:
    with localcontext() as ctx:
        ctx.prec = _PREC + 30
        two_pi = 2 * _decimal_pi()
        r = x - (x / two_pi).to_integral_value() * two_pi  # |r| <= π
        c, s, term, i = Decimal(0), Decimal(0), Decimal(1), 0
        tiny = Decimal(10) ** (-(_PREC + 20))
        while abs(term) > tiny or i < 4:
            k = i % 4  # r^i/i! goes to cos (i even) or sin (i odd) with the sign of i^i
            if k == 0:
                c += term
            elif k == 1:
                s += term
            elif k == 2:
                c -= term
            else:
                s -= term
            i += 1
            term = term * r / i
        return c, s


def phi_ref(z, tau) -> complex:
    """(e^{zτ} − 1)/z for the exact float inputs z and τ, to far beyond float64 accuracy.

    |zτ| < 1: the series τ Σ_n (zτ)^n/(n+1)! summed in 80-digit decimal arithmetic (this is the
    test's own series, not the library's; it has no truncation at a fixed order). Otherwise
    e^{zτ} = e^{Re} (cos Im + i sin Im) with Decimal.exp and an 80-digit argument reduction.
    """
    z = complex(z)
    re, im = phi_ref_decimal(Decimal(z.real), Decimal(z.imag), tau)
    return complex(float(re), float(im))


def phi_ref_decimal(zr: Decimal, zi: Decimal, tau) -> tuple[Decimal, Decimal]:
    """(e^{zτ} − 1)/z for a rate z = zr + i·zi given exactly in decimal, as a (re, im) pair.

    The rate may be a sum of doubles that float64 cannot hold (λ_k + λ_l^*); see :func:`phi_ref`.
    """
    with localcontext() as ctx:
        ctx.prec = _PREC
        t = Decimal(float(tau))
        wr, wi = zr * t, zi * t  # exact: the products fit in 80 digits
        if wr * wr + wi * wi < 1:
            sr, si, tr, ti, n = Decimal(0), Decimal(0), Decimal(1), Decimal(0), 0
            while True:
                sr, si = sr + tr, si + ti
                n += 1
                tr, ti = (tr * wr - ti * wi) / (n + 1), (tr * wi + ti * wr) / (n + 1)
                if abs(tr) + abs(ti) <= Decimal(10) ** (-_PREC) * (abs(sr) + abs(si)):
                    break
            return sr * t, si * t
        e = wr.exp()
        c, s = _decimal_cos_sin(wi) if wi != 0 else (Decimal(1), Decimal(0))
        nr, ni = e * c - 1, e * s
        den = zr * zr + zi * zi
        return (nr * zr + ni * zi) / den, (ni * zr - nr * zi) / den


def dle_ref(lam, G, tau, sign=1.0) -> np.ndarray:
    """Σ_kl = G̃_kl φ(sign·(λ_k + λ_l^*), τ) with the rate summed exactly in decimal, shape (d, d).

    float64 cannot hold λ_k + λ_l^* when the parts differ in scale (1e6 − 1e-9); this reference
    adds the exact decimal values of the given doubles, so it judges the result for the given
    eigenvalues, not for a rounded rate.
    """
    d = len(lam)
    out = np.empty((d, d), dtype=np.complex128)
    with localcontext() as ctx:
        ctx.prec = _PREC
        for k in range(d):
            for l in range(d):
                zr = Decimal(sign) * (Decimal(lam[k].real) + Decimal(lam[l].real))
                zi = Decimal(sign) * (Decimal(lam[k].imag) - Decimal(lam[l].imag))
                pr, pi = phi_ref_decimal(zr, zi, tau)
                gr, gi = Decimal(G[k, l].real), Decimal(G[k, l].imag)
                out[k, l] = complex(float(gr * pr - gi * pi), float(gr * pi + gi * pr))
    return out


def phi_ref_array(z, tau) -> np.ndarray:
    z, tau = np.broadcast_arrays(np.asarray(z), np.asarray(tau, dtype=float))
    return np.array([phi_ref(a, b) for a, b in zip(z.ravel(), tau.ravel())]).reshape(z.shape)



def _same_bits_over_threads(monkeypatch, call):
    """``call()`` with 1, 2 and 3 threads (refimpl._blocking.THREADS): bitwise the same; returns it."""
    import refimpl._blocking as blocking

    results = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(blocking, "THREADS", threads)
        results.append(call())
    for other in results[1:]:
        assert np.array_equal(results[0], other)
    return results[0]

class TestReference:
    """The test's own high-precision reference must be right before it judges anything."""

    def test_phi_ref_known_values(self):
        assert phi_ref(0.0, 2.5) == 2.5
        assert phi_ref(1.0, 1.0) == 1.7182818284590452354  # e − 1, correctly rounded
        assert abs(phi_ref(-2.0, 50.0) - 0.5) <= EPS
        assert abs(phi_ref(1j * math.pi, 1.0) - 2j / math.pi) <= 2 * EPS
        # series branch vs exponential branch on both sides of |zτ| = 1
        a, b = phi_ref(-0.999999, 1.0), phi_ref(-1.000001, 1.0)
        assert abs(a - b) < 1e-6
        # (e^{-x} - 1)/(-x) for x = 1e-20: 1 - x/2 exactly to double precision
        assert phi_ref(-1e-20, 1.0) == 1.0
        assert phi_ref(-1e-8, 1.0).real == 1.0 - 0.5e-8 + 1e-16 / 6

    def test_dle_ref_exact_rate(self):
        # the exact decimal sum differs from the rounded one: 1e6 + 1e-9 is not a double
        lam = np.array([-1e-9 + 1e6j, -1e-9 - 1e-9j])
        G = np.array([[1.0, 0.5j], [-0.5j, 2.0]])
        ref = dle_ref(lam, G, 1e6)
        # diagonal entries have exact real rates −2e-9 and match phi_ref on them
        assert ref[0, 0] == phi_ref(-2e-9, 1e6) and ref[1, 1] == 2.0 * phi_ref(-2e-9, 1e6)
        # the off-diagonal entry differs from the one of the rounded rate by far more than round-off
        rounded = 0.5j * phi_ref(lam[0] + np.conj(lam[1]), 1e6)
        assert abs(ref[0, 1] - rounded) > 1e-8 * abs(ref[0, 1])
        # and agrees with an independent decimal evaluation through (1 − e^{zτ})·conj(z)/|z|²
        with localcontext() as ctx:
            ctx.prec = _PREC
            zr, zi = Decimal(-2e-9), Decimal(1e6) + Decimal(1e-9)
            c, s_ = _decimal_cos_sin(zi * Decimal(1e6))
            e = (zr * Decimal(1e6)).exp()
            nr, ni = e * c - 1, e * s_
            den = zr * zr + zi * zi
            val = complex(float((nr * zr + ni * zi) / den), float((ni * zr - nr * zi) / den))
        assert abs(ref[0, 1] - 0.5j * val) <= 4 * EPS * abs(ref[0, 1])


# ---------------------------------------------------------------------------------------------
# phi1
# ---------------------------------------------------------------------------------------------


class TestPhi1:
    @pytest.mark.parametrize(
        "z, tau, expected",
        [
            (0.0, 2.5, 2.5),
            (1.0, 1.0, 1.7182818284590452354),  # e − 1
            (math.log(2.0), 1.0, 1.0 / math.log(2.0)),  # (2 − 1)/ln 2
            (-math.log(2.0), 1.0, 0.5 / math.log(2.0)),  # (1/2 − 1)/(−ln 2)
            (-2.0, 50.0, 0.5),  # (1 − e^{−100})/2
            (1j * math.pi, 1.0, 2j / math.pi),  # (e^{iπ} − 1)/(iπ)
            (2j * math.pi, 1.0, 0.0),  # a full turn accumulates nothing (to round-off)
            (-1.0 + 0j, 1.0, 1.0 - math.exp(-1.0)),
        ],
    )
    def test_known_values(self, z, tau, expected):
        got = phi1(z, tau)
        if expected == 0.0:
            assert abs(got) <= 4 * EPS  # |e^{2πi·fl} − 1| ~ eps·2π, divided by 2π
        else:
            close(got, np.asarray(expected), rtol=ORACLE, what="phi1 known values")

    def test_zero_rate_is_tau_exactly(self):
        tau = np.array([0.0, 1e-300, 0.3, 1.0, 7.3, 1e4, 1e300])
        np.testing.assert_array_equal(phi1(0.0, tau), tau)
        np.testing.assert_array_equal(phi1(0j, tau), tau.astype(complex))
        np.testing.assert_array_equal(phi1(-0.0, tau), tau)

    def test_dtypes_and_broadcasting(self):
        z = np.array([-1.0, 0.0, 2.0])
        tau = np.array([[0.5], [1.0]])
        out = phi1(z, tau)
        assert out.dtype == np.float64 and out.shape == (2, 3)
        outc = phi1(z.astype(complex), tau)
        assert outc.dtype == np.complex128 and outc.shape == (2, 3)
        close(outc.real, out, rtol=ORACLE, what="phi1 real vs complex input")
        np.testing.assert_array_equal(outc.imag, 0.0)
        assert phi1(1, 2).dtype == np.float64  # integers are converted

    @pytest.mark.parametrize("re", [-1e-15, -1e-300, 0.0, -1e-8, 1e-15, 1e-8, -0.3, 0.2])
    @pytest.mark.parametrize("im", [0.0, 1.0, -2.5, 1e-9])
    def test_against_high_precision(self, re, im):
        # The accuracy requirement: relative error <= 1e-12 for λ_k + λ_l^* → 0
        # (down to 1e-300 and exactly 0), τ from 0 to 1e4; elementwise, not norm-wise.
        tau = np.array([0.0, 1e-12, 1e-3, 0.01, 0.5, 1.0, 7.3, 100.0, 1e3, 1e4])
        z = complex(re, im) if im else re
        ref = phi_ref_array(z, tau)
        got = phi1(z, tau)
        if not im:
            assert got.dtype == np.float64
            ref = ref.real
        err = elementwise_rel(got, ref)
        _record("phi1 vs 80-digit reference (elementwise)", err, 1e-12)
        assert err <= 1e-12, f"z={z}: elementwise relative error {err:.3e}"

    def test_random_complex_rates_long_lags(self):
        # |Im z| τ up to 3e4 rad: the result must be accurate for the *given* z and τ, so the
        # rounding of the product zτ (an error of up to ~2e-12 rad in the phase) must not show.
        rng = np.random.default_rng(20260701)
        re = np.concatenate([-(10.0 ** rng.uniform(-16, -1, 60)), 10.0 ** rng.uniform(-16, -3, 20), np.zeros(20)])
        z = re + 1j * rng.uniform(-3, 3, re.size)
        tau = rng.uniform(1e2, 1e4, re.size)
        err = elementwise_rel(phi1(z, tau), phi_ref_array(z, tau))
        _record("phi1 random complex z, τ<=1e4 (elementwise)", err, 1e-12)
        assert err <= 1e-12

    def test_large_rates(self):
        # Large |z|τ: no NaN/inf, no warning, and the limit −1/z for Re z < 0.
        z = np.array([-1e3 + 1e5j, -2e3 + 0j, -50.0 - 3e4j, -1e-3 + 1e6j])
        tau = np.array([1e-3, 0.1, 1.0, 10.0, 1e2, 1e4])[:, None]
        got = phi1(z, tau)
        assert np.all(np.isfinite(got))
        err = elementwise_rel(got, phi_ref_array(z, tau))
        _record("phi1 large |z|τ (elementwise)", err, 1e-12)
        assert err <= 1e-12
        close(phi1(z[:3], 1e4), -1.0 / z[:3], rtol=ORACLE, what="phi1 τ→∞ limit −1/z")

    def test_overflow_gives_inf_not_nan(self):
        # e^{Re zτ} beyond float64: the value is +inf (real) or has infinite components (complex).
        assert phi1(800.0, 1.0) == np.inf
        c = phi1(800.0 + 1.0j, 1.0)
        assert not np.isnan(c.real) and not np.isnan(c.imag) and np.isinf(abs(c))
        # representable results near the overflow threshold stay finite and accurate
        got = phi1(np.array([710.0, 709.0 + 0.5j]), 1.0)
        ref = phi_ref_array(np.array([710.0, 709.0 + 0.5j]), 1.0)
        assert np.all(np.isfinite(got))
        assert elementwise_rel(got, ref) <= 1e-12

    @pytest.mark.parametrize(
        "z, tau, exc, match",
        [
            ("a", 1.0, TypeError, "z"),
            (None, 1.0, TypeError, "z"),
            (1.0, "a", TypeError, "tau"),
            (1.0, 1j, TypeError, "tau"),
            (np.nan, 1.0, ValueError, "z"),
            (1.0, np.inf, ValueError, "tau"),
        ],
    )
    def test_errors(self, z, tau, exc, match):
        with pytest.raises(exc, match=match):
            phi1(z, tau)


# ---------------------------------------------------------------------------------------------
# dle_covariance (forward)
# ---------------------------------------------------------------------------------------------

FUNCS_AND_SIGNS = [
    (dle_covariance, 1.0),
    (dle_covariance_loop, 1.0),
    (dle_covariance_backward, -1.0),  # Σ^B uses φ(−z, τ)
    (dle_covariance_backward_loop, -1.0),
]
TAUS = [0.3, np.array([0.0, 0.1, 1.0, 7.3, 40.0]), np.array([[0.0, 0.5, 2.0], [3.0, 1e-9, 11.0]])]


def _mixed_eigvals(rng, d):
    # stable, unstable and marginal (Re λ = 0) modes together
    lam = random_eigvals(rng, d, re=(-1.2, 0.4))
    lam[0] = 1j * lam[0].imag
    return lam


class TestDleCovariance:
    @pytest.mark.parametrize("func", [dle_covariance, dle_covariance_loop])
    @pytest.mark.parametrize("tau_index", range(len(TAUS)))
    def test_shapes_and_dtypes(self, func, tau_index):
        tau = TAUS[tau_index]
        rng = np.random.default_rng(1)
        lam = _mixed_eigvals(rng, 3)
        diag = func(lam, rng.uniform(0, 2, 3), tau)
        assert diag.shape == np.shape(tau) + (3,) and diag.dtype == np.float64
        full = func(lam, random_psd(rng, 3, complex_=False), tau)  # a real G̃ still gives complex Σ
        assert full.shape == np.shape(tau) + (3, 3) and full.dtype == np.complex128

    @pytest.mark.parametrize("tau_index", range(len(TAUS)))
    @pytest.mark.parametrize("d, seed", [(1, 0), (3, 1), (6, 2)])
    def test_loop_twin(self, tau_index, d, seed):
        tau = TAUS[tau_index]
        rng = np.random.default_rng(seed)
        lam = _mixed_eigvals(rng, d)
        g = rng.uniform(0, 2, d)
        g[-1] = 0.0  # a noiseless mode
        G = random_psd(rng, d)
        close(dle_covariance_loop(lam, g, tau), dle_covariance(lam, g, tau), rtol=SELF, what="dle loop twin (diag)")
        close(dle_covariance_loop(lam, G, tau), dle_covariance(lam, G, tau), rtol=SELF, what="dle loop twin (full)")

    @pytest.mark.parametrize("threads", [1, 2, 3])
    @pytest.mark.parametrize("block", [1, 2, 5, 2**15])
    def test_diagonal_blocked_equals_unblocked(self, monkeypatch, block, threads):
        # The blocked diagonal path does the same elementwise arithmetic on slices of the lags, in
        # one thread or several: bitwise equal results for any block length and thread count, with
        # small |zτ| (series) in blocks other than the first (unsorted lags, τ = 0 last), a Re λ = 0
        # mode, a noiseless mode, and 2-D lags. The reference is one block in one thread; both agree
        # with the unblocked general kernel and the loop twin to rounding.
        import refimpl._blocking as blocking
        import refimpl.lyapunov as lyap

        rng = np.random.default_rng(21)
        lam = np.array([-0.4 + 1j, 2.5j, -3e-4 - 0.5j, -7.0 + 0j])
        g = np.array([0.7, 0.3, 1.2, 0.0])
        tau = np.concatenate([rng.uniform(0.0, 30.0, 9), [1e-9, 2e-3, 1e3, 0.0]]).reshape(13, 1) * np.ones(2)
        tau[:, 1] = tau[::-1, 0]
        monkeypatch.setattr(blocking, "THREADS", 1)
        ref = dle_covariance(lam, g, tau)
        monkeypatch.setattr(lyap, "_SPECTRUM_BLOCK", block)
        monkeypatch.setattr(blocking, "THREADS", threads)
        monkeypatch.setattr(blocking, "THREAD_MIN_ELEMS", 1)  # thread even these few lags
        got = dle_covariance(lam, g, tau)
        assert got.shape == (13, 2, 4)
        np.testing.assert_array_equal(got, ref)
        close(lyap._noise_times_phi1(g, 2.0 * lam.real, tau[..., None]), got, rtol=1e-15, what="blocked vs general kernel")
        close(dle_covariance_loop(lam, g, tau), got, rtol=SELF, what="blocked diagonal dle vs loop twin")
        np.testing.assert_array_equal(got[..., 1], 0.3 * tau)  # z = 0: g τ exactly

    @staticmethod
    def _vouched_outputs(monkeypatch, draws):
        """Call dle_covariance on each (λ, noise, τ) of ``draws`` with vouch_finite replaced by a check that
        the array vouched for is finite; returns how many outputs were vouched for. A refused (overflowing)
        result is skipped; a returned one must be finite."""
        import refimpl.lyapunov as lyap

        vouched = []

        def check(arr):
            assert np.all(np.isfinite(arr)), "vouched for an output that is not finite"
            vouched.append(arr)

        monkeypatch.setattr(lyap, "vouch_finite", check)
        for lam, noise, tau in draws:
            try:
                out = dle_covariance(lam, noise, tau)
            except ValueError:
                continue  # an overflowing result is refused by the guard
            assert np.all(np.isfinite(out))
        return len(vouched)

    def test_diagonal_vouches_only_for_finite_output(self, monkeypatch):
        # The blocked diagonal path tells the guard that its output is finite (so that the guard does not
        # read it again) when a bound computed from g, z and τ is at most 1e300. Every vouched output must
        # be finite, with the bound's extremes: g up to 1e300, modes with Re λ = 0 (the series, g τ),
        # growing modes (zτ up to 1, expm1 up to e − 1), tiny rates (g/z large), huge lags.
        rng = np.random.default_rng(23)

        def draw():
            d = int(rng.integers(1, 6))
            rate = rng.choice([0.0, 1e-300, 1e-200, 1e-8, 0.3, 1.0, 1e3], size=d) * rng.choice([-1.0, 1.0], size=d)
            g = 10.0 ** rng.uniform(-300, 300, size=d) * (rng.random(d) < 0.9)
            t_max = 10.0 ** rng.uniform(-3, 300)
            tau = np.concatenate([[0.0], rng.uniform(0.0, t_max, 7)])
            lag_rate = np.max(np.abs(rate)) * t_max
            if lag_rate > 0.5:  # keep zτ <= 1 (the blocked path): scale the rates down
                rate = rate * (0.5 / lag_rate)
            return rate / 2.0 + 1j * rng.normal(size=d), g, tau

        assert self._vouched_outputs(monkeypatch, (draw() for _ in range(200))) > 100  # most were vouched for

    def test_full_noise_vouches_only_for_finite_output(self, monkeypatch):
        # The same for full noise without growing modes (the factored path): every vouched output is finite,
        # with G̃ up to 1e300, nearly equal rates (λ_k + λ_l^* near 0: C large, the per-entry kernel), huge lags.
        rng = np.random.default_rng(24)

        def draw():
            d = int(rng.integers(1, 5))
            lam = -rng.choice([0.0, 1e-300, 1e-8, 0.3, 1e3], size=d) + 1j * rng.choice([0.0, 1e-8, 1.0], size=d) * rng.normal(size=d)
            b = rng.normal(size=(d, d)) + 1j * rng.normal(size=(d, d))
            tau = np.concatenate([[0.0], rng.uniform(0.0, 10.0 ** rng.uniform(-3, 300), 5)])
            return lam, b @ b.conj().T * 10.0 ** rng.uniform(-300, 300), tau

        assert self._vouched_outputs(monkeypatch, (draw() for _ in range(150))) > 50  # many were vouched for

    def test_diagonal_overflow_is_refused_not_vouched(self):
        # A growing mode (Re λ = 0.5, z = 1) at τ = 1: g (e − 1) overflows for g = 1.5e308 and is refused;
        # g = 1e308 gives 1.72e308, finite: returned (the bound, above 1e300, leaves the check to the guard).
        with pytest.raises(ValueError, match="eigvals|noise|tau"):
            dle_covariance(np.array([0.5 + 1j]), np.array([1.5e308]), np.array([0.0, 0.5, 1.0]))
        out = dle_covariance(np.array([0.5 + 1j]), np.array([1e308]), np.array([0.0, 0.5, 1.0]))
        assert np.all(np.isfinite(out)) and out[-1, 0] == pytest.approx(1e308 * math.expm1(1.0), rel=1e-14)

    def test_diagonal_threads_bitwise(self, monkeypatch):
        # At a size that takes the threaded path by default (lags · d above THREAD_MIN_ELEMS, several
        # blocks per thread): the same bits with 1, 2 and 3 threads, and the loop twin's values.
        import refimpl._blocking as blocking

        rng = np.random.default_rng(22)
        d = 16
        lam = -rng.uniform(0.0, 1.0, d) + 1j * rng.normal(0.0, 2.0, d)
        lam[3] = 1.5j  # Re λ = 0: g τ on every lag (the series)
        g = rng.uniform(0.1, 1.0, d)
        tau = rng.permutation(np.linspace(0.0, 50.0, 9001))  # unsorted: small |zτ| in any block
        assert tau.size * d >= blocking.THREAD_MIN_ELEMS
        results = [_same_bits_over_threads(monkeypatch, lambda: dle_covariance(lam, g, tau))]
        np.testing.assert_array_equal(results[0][:, 3], g[3] * tau)
        pick = rng.choice(tau.size, 200, replace=False)
        close(dle_covariance_loop(lam, g, tau[pick]), results[0][pick], rtol=SELF, what="threaded diagonal dle vs loop twin")

    @pytest.mark.parametrize("seed", range(6))
    def test_full_decaying_product_vs_per_entry(self, seed):
        # Full noise with no growing mode takes e^{(λ_k + λ_l^*)τ} = e^{λ_k τ} conj(e^{λ_l τ}) where
        # Re of that product is <= 1/2 and the per-entry kernel elsewhere: elementwise within a few
        # ulp of the per-entry kernel on every entry, on lags and rates that put entries on both
        # sides of the switch (marginal modes, equal frequencies, rates from 1e-8 to 1e2, phases to 1e6).
        import refimpl.lyapunov as lyap

        rng = np.random.default_rng(100 + seed)
        d = 9
        lam = -rng.uniform(0.0, 1.0, d) * 10.0 ** rng.uniform(-8, 2, d) + 1j * rng.normal(0.0, 1.0, d) * 10.0 ** (seed - 2)
        lam[0] = 1j * lam[0].imag  # Re λ = 0: Σ_00 = G̃_00 τ
        lam[1] = lam[2].real / 3 + 1j * lam[2].imag  # equal frequencies: Im z_12 = 0
        G = random_psd(rng, d)
        tau = np.concatenate([[0.0], 10.0 ** rng.uniform(-6, 6, 60)])
        got = dle_covariance(lam, G, tau)
        ref = lyap._full_from_upper(lam, as_noise(G, "noise", d)[0], tau, 1.0)
        err = elementwise_rel(got, ref)
        _record("full Σ, product form vs per-entry kernel (elementwise)", err, 1e-14)
        assert err <= 1e-14
        np.testing.assert_array_equal(got, np.conj(np.swapaxes(got, -1, -2)))  # exactly Hermitian
        np.testing.assert_array_equal(got[:, 0, 0], G[0, 0].real * tau)  # z = 0: G̃ τ exactly

    def test_full_threads_bitwise(self, monkeypatch):
        # The full-noise product form at a size that takes the threaded path (many blocks of lags):
        # the same bits with 1, 2 and 3 threads; entries of the per-entry kernel in blocks other
        # than the first (unsorted lags); the loop twin's values.
        import refimpl._blocking as blocking

        rng = np.random.default_rng(23)
        d = 12
        lam = random_eigvals(rng, d, re=(-1.0, -0.01))
        G = random_psd(rng, d)
        tau = rng.permutation(np.linspace(0.0, 60.0, 700))
        assert tau.size * d * d >= blocking.THREAD_MIN_ELEMS
        results = [_same_bits_over_threads(monkeypatch, lambda: dle_covariance(lam, G, tau))]
        pick = rng.choice(tau.size, 40, replace=False)
        close(dle_covariance_loop(lam, G, tau[pick]), results[0][pick], rtol=SELF, what="threaded full dle vs loop twin")

    def test_full_decaying_chunks_do_not_change_bits(self, monkeypatch):
        # The product form forms E_k = e^{λ_k τ} in chunks of lags (a fixed workspace instead of
        # temporaries that grow with N): chunks of any size give the same bits as a single chunk.
        import refimpl.lyapunov as lyap

        rng = np.random.default_rng(31)
        d = 3
        lam = random_eigvals(rng, d, re=(-1.0, -0.01))
        G = random_psd(rng, d)
        tau = rng.permutation(np.linspace(0.0, 40.0, 5000))
        monkeypatch.setattr(lyap, "_FULL_BLOCK", 2**30)  # one block, one chunk
        whole = dle_covariance(lam, G, tau)
        for block in (2**6, 2**9, 2**15):
            monkeypatch.setattr(lyap, "_FULL_BLOCK", block)
            np.testing.assert_array_equal(dle_covariance(lam, G, tau), whole)

    def test_full_decaying_memory_per_lag(self, monkeypatch):
        # The memory accounting of _full_decaying's docstring and of chapter 2, §2.8: beyond a fixed
        # workspace (E in chunks of _FULL_BLOCK // d lags), the peak grows per lag by the output
        # (16 d² bytes), E (16 d) and one float64 copy of the lags (8), nothing else. Measured with
        # tracemalloc in one thread, after a warm-up call, as the slope of the peak between n1 and
        # 2 n1 lags (n1 = one chunk): a fixed workspace (per call or per block) cancels, and the
        # slope is within 0.1 byte of the expected 328 (d = 4). One more length-N array that stays
        # alive moves it by its item size, against the 0.75 allowed: 8 bytes for an int64 index or
        # a float64 copy, 1 byte for a boolean mask (which fails too); a workspace that grew with N
        # (E formed in one piece) moves it by hundreds of bytes.
        import tracemalloc

        import refimpl._blocking as blocking
        import refimpl.lyapunov as lyap

        monkeypatch.setattr(blocking, "THREADS", 1)
        rng = np.random.default_rng(41)
        d = 4
        lam = random_eigvals(rng, d, re=(-1.0, -0.01))
        G = random_psd(rng, d)
        n1 = lyap._FULL_BLOCK // d
        dle_covariance(lam, G, np.linspace(0.0, 30.0, n1))  # warm-up: one-time allocations (caches) not measured
        peaks = []
        for n in (n1, 2 * n1):
            tau = np.linspace(0.0, 30.0, n)
            tracemalloc.start()
            try:
                dle_covariance(lam, G, tau)
                peaks.append(tracemalloc.get_traced_memory()[1])
            finally:
                tracemalloc.stop()
        slope = (peaks[1] - peaks[0]) / n1
        expected = 16 * d * d + 16 * d + 8
        assert abs(slope - expected) < 0.75, f"peak memory grows by {slope:.2f} bytes per lag, expected {expected}"

    def test_tiny_rate_huge_lag(self):
        # |Re λ| ~ 1e-299 and G̃ ~ 1e10: G̃/z alone overflows float64 while Σ = G̃ (e^{zτ} − 1)/z does not
        # (τ ~ 1e297, |zτ| ~ 1e-2). The diagonal path then divides after the expm1; in the full-noise
        # product form such entries have e^{zτ} near 1 and take the per-entry kernel.
        lam = np.array([-5e-300 + 0j, -5e-300 + 0.5j, -0.5 + 1j])
        g = np.array([1e10, 0.5e10, 1.0])
        G = np.diag(g).astype(complex)
        G[0, 1] = G[1, 0] = 1e9
        tau = np.array([0.5, 1e297, 3e297])
        for noise in (g, G):
            got = dle_covariance(lam, noise, tau)
            assert np.all(np.isfinite(got)) and np.max(np.abs(got)) > 1e306
            close(dle_covariance_loop(lam, noise, tau), got, rtol=SELF, what="tiny rate, huge lag")

    def test_diagonal_noise_is_diagonal_of_full(self):
        # Eq. (2.5) is Eq. (2.4) with a diagonal G̃: two code paths (real and complex kernels).
        rng = np.random.default_rng(3)
        lam = _mixed_eigvals(rng, 4)
        g = rng.uniform(0, 2, 4)
        tau = np.array([0.0, 0.2, 3.0, 25.0])
        full = dle_covariance(lam, np.diag(g), tau)
        close(np.diagonal(full, axis1=-2, axis2=-1).real, dle_covariance(lam, g, tau), rtol=ORACLE, what="diag vs full")
        off = full - np.einsum("...k,kl->...kl", np.diagonal(full, axis1=-2, axis2=-1), np.eye(4))
        assert np.all(off == 0)

    @pytest.mark.parametrize("d, seed", [(3, 10), (4, 11), (5, 12)])
    @pytest.mark.parametrize("real_q", [True, False])
    def test_van_loan(self, d, seed, real_q):
        rng = np.random.default_rng(seed)
        S = random_S(rng, d)
        lam = random_eigvals(rng, d, re=(-0.8, 0.3))
        A = (S * lam) @ np.linalg.inv(S)
        Q = random_psd(rng, d, complex_=not real_q)
        G = eigenbasis_noise(S, Q)
        for tau in (0.1, 1.0, 7.3):
            V = to_original(S, dle_covariance(lam, G, tau))
            close(V, van_loan(A, Q, tau), rtol=ORACLE, what="forward vs Van Loan expm (+ doubling)")
            V_upper = van_loan(A, Q, tau, block=van_loan_upper)
            close(V, V_upper, rtol=ORACLE, what="forward vs Van Loan upper form (+ doubling)")
            if tau <= 1.0:  # one block exponential over the whole lag (see _oracles.van_loan)
                close(V, van_loan_block(A, Q, tau), rtol=ORACLE, what="forward vs Van Loan expm (single block)")
                close(V, van_loan_upper(A, Q, tau), rtol=ORACLE, what="forward vs Van Loan upper form (single block)")

    def test_van_loan_diagonal_noise(self):
        # Q = S Λ_Q S^† (simultaneously diagonalizable noise, the AFA case) in the original basis.
        rng = np.random.default_rng(13)
        S = random_S(rng, 4)
        lam = random_eigvals(rng, 4)
        g = rng.uniform(0.1, 2, 4)
        A = (S * lam) @ np.linalg.inv(S)
        Q = (S * g) @ S.conj().T
        for tau in (0.1, 1.0, 7.3):
            V = (S * dle_covariance(lam, g, tau)) @ S.conj().T
            close(V, van_loan(A, Q, tau), rtol=ORACLE, what="forward (diag noise) vs Van Loan (+ doubling)")

    def test_solve_ivp(self):
        # dV/dt = A V + V A^† + Q, V(0) = 0, integrated as 2 d² real ODEs.
        rng = np.random.default_rng(14)
        d = 3
        S = random_S(rng, d)
        lam = random_eigvals(rng, d, re=(-0.8, 0.2))
        A = (S * lam) @ np.linalg.inv(S)
        Q = random_psd(rng, d)
        G = eigenbasis_noise(S, Q)
        n = d * d

        def rhs(_, y):
            V = (y[:n] + 1j * y[n:]).reshape(d, d)
            dV = A @ V + V @ A.conj().T + Q
            return np.concatenate([dV.real.ravel(), dV.imag.ravel()])

        taus = np.array([0.1, 1.0, 7.3])
        sol = solve_ivp(rhs, (0.0, taus[-1]), np.zeros(2 * n), method="DOP853", rtol=1e-13, atol=1e-13, t_eval=taus)
        assert sol.success
        for i, tau in enumerate(taus):
            V_ode = (sol.y[:n, i] + 1j * sol.y[n:, i]).reshape(d, d)
            close(to_original(S, dle_covariance(lam, G, tau)), V_ode, rtol=ODE, what="forward vs solve_ivp DOP853")

    def test_afa_system(self):
        # spec afa.md §11.1 and §8.1: A = [[0.9, −2], [1, −1.1]], λ = −0.1 ∓ i, S = [[1−i, 1+i], [1, 1]].
        lam = np.array([-0.1 - 1j, -0.1 + 1j])
        S = np.array([[1 - 1j, 1 + 1j], [1, 1]])
        A = np.array([[0.9, -2.0], [1.0, -1.1]])
        assert_close((S * lam) @ np.linalg.inv(S), A, rtol=1e-15, what="A = S Λ S^-1")
        g = np.array([0.7, 0.7])
        Q = (S * g) @ S.conj().T
        np.testing.assert_allclose(Q.imag, 0.0, atol=1e-15)
        assert_close(Q.real, np.array([[2.8, 1.4], [1.4, 1.4]]), rtol=1e-15, what="Q of the AFA system")
        Q = Q.real
        for tau in (0.1, 1.0, 7.3):
            ref, _ = quad_vec(lambda s: expm_congruence(A, Q, s), 0.0, tau, epsabs=0.0, epsrel=1e-14, norm="max")
            V = (S * dle_covariance(lam, g, tau)) @ S.conj().T
            close(V, ref, rtol=1e-12, what="AFA system vs quad_vec")
            np.testing.assert_allclose(V.imag, 0.0, atol=1e-14 * np.max(np.abs(V)))
            # the backward covariance by quadrature too (spec §11.2)
            refb, _ = quad_vec(lambda s: expm_congruence(-A, Q, s), 0.0, tau, epsabs=0.0, epsrel=1e-14, norm="max")
            VB = (S * dle_covariance_backward(lam, g, tau)) @ S.conj().T
            close(VB, refb, rtol=1e-12, what="AFA system backward vs quad_vec")

    def test_zero_lag_is_zero(self):
        rng = np.random.default_rng(15)
        lam = _mixed_eigvals(rng, 3)
        for noise in (rng.uniform(0, 1, 3), random_psd(rng, 3)):
            for func in (dle_covariance, dle_covariance_loop, dle_covariance_backward, dle_covariance_backward_loop):
                out = func(lam, noise, 0.0)
                assert np.all(out == 0), func.__name__

    def test_limits_of_spec_2_1(self):
        # φ(τ) = λ_Q (1 − e^{−2μτ})/(2μ): small-τ expansion, μ → 0, τ → ∞ (spec afa.md §2.1).
        mu = np.array([0.5, 2.0, 1e-3])
        lam = -mu + 1j * np.array([1.0, -3.0, 0.2])
        g = np.array([0.7, 1.3, 2.0])
        # τ → 0: φ/(gτ) = 1 − x/2 + x²/6 − x³/24 + ..., x = 2μτ,
        # i.e. 1 − μτ + 2(μτ)²/3 − (μτ)³/3 + ...
        for tau in (1e-2, 1e-3, 1e-5):
            ratio = dle_covariance(lam, g, tau) / (g * tau)
            m = mu * tau
            assert np.all(np.abs(ratio - (1 - m + 2 * m**2 / 3)) <= 1.01 * m**3 / 3 + 4 * EPS)
            # and the two-term form of the spec is off by exactly the O((μτ)²) term
            assert np.all(np.abs(ratio - (1 - m)) >= 0.99 * 2 * m**2 / 3 - m**3 / 3 - 4 * EPS)
        # μ → 0 gives gτ (relative deviation μτ)
        for mu0 in (1e-9, 1e-12, 1e-300):
            tau = np.array([0.5, 10.0, 1e4])
            out = dle_covariance(np.array([-mu0 + 1j]), np.array([0.7]), tau)[:, 0]
            assert np.all(np.abs(out / (0.7 * tau) - 1) <= 1.01 * mu0 * tau + 2 * EPS)
            assert np.all(out <= 0.7 * tau)
        # τ → ∞ gives g/(2μ)
        close(dle_covariance(lam[:2], g[:2], 1e4), g[:2] / (2 * mu[:2]), rtol=ORACLE, what="τ→∞ limit g/(2μ)")

    def test_long_lag_reaches_steady_state(self):
        rng = np.random.default_rng(16)
        lam = random_eigvals(rng, 4, re=(-1.0, -0.05))
        G = random_psd(rng, 4)
        g = rng.uniform(0, 1, 4)
        for noise, kind in ((G, "full"), (g, "diag")):
            close(
                dle_covariance(lam, noise, 1e4),
                steady_state_covariance(lam, noise),
                rtol=ORACLE,
                what=f"τ=1e4 vs steady state ({kind})",
            )

    # ---- the delicate limit λ_k + λ_l^* → 0, against the 80-digit reference -----------------

    TAU_RANGE = np.array([0.0, 1e-9, 1e-3, 0.01, 0.3, 1.0, 7.3, 1e2, 1e3, 1e4])

    @pytest.mark.parametrize("func, sign", FUNCS_AND_SIGNS)
    def test_diagonal_near_zero_rate(self, func, sign):
        re = np.array([-1e-15, -1e-300, 0.0, -1e-8, 1e-15, -0.0])
        lam = re + 1j * np.array([1.0, -0.3, 2.0, 0.0, 0.7, 5.0])
        g = np.array([0.7, 1.0, 0.3, 2.5, 1.1, 0.0])
        got = func(lam, g, self.TAU_RANGE)
        ref = g * phi_ref_array(sign * 2 * re, self.TAU_RANGE[:, None]).real
        err = elementwise_rel(got, ref)
        _record("diag Σ near z=0 vs 80-digit reference (elementwise)", err, 1e-12)
        assert err <= 1e-12
        # exactly z = 0 (Re λ = 0): g τ, exactly
        np.testing.assert_array_equal(got[:, 2], 0.3 * self.TAU_RANGE)

    @pytest.mark.parametrize("func, sign", FUNCS_AND_SIGNS)
    def test_full_near_zero_rate(self, func, sign):
        # Tiny real parts and imaginary parts whose differences are exact in float64, so that
        # z_kl = λ_k + λ_l^* is exact and the comparison is elementwise (off-diagonal z_kl have a
        # tiny real part and a nonzero imaginary part; the diagonal ones are tiny or 0).
        lam = np.array([-1e-15 + 1j, -1e-300 - 0.5j, 0.25j, -1e-8 + 2j])
        rng = np.random.default_rng(17)
        G = random_psd(rng, 4)
        got = func(lam, G, self.TAU_RANGE)
        re, im = lam.real, lam.imag
        z = (re[:, None] + re[None, :]) + 1j * (im[:, None] - im[None, :])
        assert np.all(z == lam[:, None] + lam.conj()[None, :])  # the sums are exact
        ref = G * phi_ref_array(sign * z, self.TAU_RANGE[:, None, None])
        ref = 0.5 * (ref + np.conj(np.swapaxes(ref, -1, -2)))
        err = elementwise_rel(got, ref)
        _record("full Σ near z=0 vs 80-digit reference (elementwise)", err, 1e-12)
        assert err <= 1e-12
        np.testing.assert_array_equal(got[:, 2, 2], G[2, 2].real * self.TAU_RANGE)  # z = 0 exactly

    def test_large_rates(self):
        # λ = −1e3 ± 1e5 i and −50: no NaN/inf, no warning, accurate, and the limit −G̃/z.
        lam = np.array([-1e3 + 1e5j, -1e3 - 1e5j, -50.0 + 0j])
        rng = np.random.default_rng(18)
        G = random_psd(rng, 3)
        g = np.array([1.0, 2.0, 0.5])
        tau = np.array([1e-4, 1e-2, 1.0, 1e2, 1e4])
        z = lam[:, None] + lam.conj()[None, :]
        for func in (dle_covariance, dle_covariance_loop):
            full, diag = func(lam, G, tau), func(lam, g, tau)
            assert np.all(np.isfinite(full)) and np.all(np.isfinite(diag))
            ref = G * phi_ref_array(z, tau[:, None, None])
            close(full, 0.5 * (ref + np.conj(np.swapaxes(ref, -1, -2))), rtol=ORACLE, what="full Σ at large |λ|τ")
            err = elementwise_rel(diag, g * phi_ref_array(2 * lam.real, tau[:, None]).real)
            _record("diag Σ at large |λ|τ (elementwise)", err, 1e-12)
            assert err <= 1e-12
            close(full[-1], -G / z, rtol=ORACLE, what="τ→∞ limit −G̃/z")
            close(diag[-1], g / (2 * 50.0 * np.array([20.0, 20.0, 1.0])), rtol=ORACLE, what="τ→∞ limit g/(2μ)")

    @pytest.mark.parametrize("func, sign", FUNCS_AND_SIGNS)
    @pytest.mark.parametrize("tau", [1.0, 1e3, 1e6, 1e9])
    def test_full_noise_large_phase(self, func, sign, tau):
        # Full noise with |ω|τ up to 1e15 rad and rates of very different scale: the rate
        # λ_k + λ_l^* is not a double (Im = 1e6 + 1e-9), and its rounding times τ used to be a
        # phase error (1.3e-10, 8.4e-8, 7.4e-5 elementwise at τ = 1, 1e3, 1e6). Elementwise
        # against the exact-rate 80-digit reference; real parts tiny so that the pushed-back
        # covariance stays finite at τ = 1e9.
        lam = np.array([-1e-9 + 1e6j, -1e-9 - 1e-9j, -3e-10 + 0.7j, -1e-10 - 3.3e5j])
        G = random_psd(np.random.default_rng(5), 4)
        got = func(lam, G, np.array([tau]))[0]
        ref = dle_ref(lam, G, tau, sign)
        ref = 0.5 * (ref + ref.conj().T)  # G̃ is Hermitian to round-off; so is Σ
        err = elementwise_rel(got, ref)
        _record("full Σ, |ω|τ up to 1e15 vs exact-rate reference (elementwise)", err, 1e-12)
        assert err <= 1e-12, f"τ={tau:g}: elementwise relative error {err:.3e}"

    def test_full_noise_large_phase_decaying(self):
        # the same with decaying modes (e^{Re w} between 1e-300 and 1) at τ = 1e3 and 1e6
        lam = np.array([-0.02 + 1e6j, -3e-4 - 1e-9j, -0.5 + 0.7j, -1e-3 - 3.3e5j])
        G = random_psd(np.random.default_rng(6), 4)
        for tau in (1e3, 1e6):
            for func in (dle_covariance, dle_covariance_loop):
                got = func(lam, G, tau)
                ref = dle_ref(lam, G, tau)
                err = elementwise_rel(got, 0.5 * (ref + ref.conj().T))
                _record("full Σ, decaying, large |ω|τ (elementwise)", err, 1e-12)
                assert err <= 1e-12, f"{func.__name__} τ={tau:g}: {err:.3e}"

    # ---- properties ---------------------------------------------------------------------------

    @settings(max_examples=40)
    @given(seed=st.integers(0, 2**32 - 1), d=st.integers(1, 5), unstable=st.booleans(), tau=st.floats(0.0, 30.0))
    def test_hermitian_psd(self, seed, d, unstable, tau):
        rng = np.random.default_rng(seed)
        lam = random_eigvals(rng, d, re=(-2.0, 0.5) if unstable else (-2.0, -1e-3))
        G = random_psd(rng, d, rank=int(rng.integers(1, d + 1)))
        sigma = dle_covariance(lam, G, tau)
        assert np.all(np.isfinite(sigma))
        np.testing.assert_array_equal(sigma, sigma.conj().T)
        scale = np.max(np.abs(sigma))
        assert np.linalg.eigvalsh(sigma).min() >= -1e-12 * scale

    @settings(max_examples=40)
    @given(
        seed=st.integers(0, 2**32 - 1),
        d=st.integers(1, 5),
        unstable=st.booleans(),
        tau1=st.floats(0.0, 20.0),
        dtau=st.floats(0.0, 20.0),
    )
    def test_monotone_in_loewner_order(self, seed, d, unstable, tau1, dtau):
        # Σ(τ2) − Σ(τ1) = ∫_{τ1}^{τ2} e^{Λs} G̃ e^{Λ^† s} ds ⪰ 0 for ANY eigenvalues: the
        # integrand is PSD. Also elementwise for the diagonal-noise variances.
        rng = np.random.default_rng(seed)
        lam = random_eigvals(rng, d, re=(-2.0, 0.5) if unstable else (-2.0, -1e-3))
        G = random_psd(rng, d)
        tau2 = tau1 + dtau
        s1, s2 = dle_covariance(lam, G, [tau1, tau2])
        scale = np.max(np.abs(s2))
        assert np.linalg.eigvalsh(s2 - s1).min() >= -1e-12 * scale
        g = rng.uniform(0, 2, d)
        v1, v2 = dle_covariance(lam, g, [tau1, tau2])
        assert np.all(v2 - v1 >= -4 * EPS * v2)

    def test_monotone_can_fail(self):
        # The Loewner check above does detect a decreasing pair (guards against a vacuous test).
        rng = np.random.default_rng(19)
        lam = random_eigvals(rng, 3)
        s1, s2 = dle_covariance(lam, random_psd(rng, 3), [2.0, 1.0])
        assert np.linalg.eigvalsh(s2 - s1).min() < -1e-3 * np.max(np.abs(s1))

    # ---- errors ---------------------------------------------------------------------------------

    @pytest.mark.parametrize("func", [f for f, _ in FUNCS_AND_SIGNS])
    @pytest.mark.parametrize(
        "eigvals, noise, tau, exc, match",
        [
            ([[-1.0, -2.0]], [1.0, 1.0], 1.0, ValueError, "eigvals"),  # 2-D
            ([], [], 1.0, ValueError, "eigvals"),  # empty
            ([-1.0, np.nan], [1.0, 1.0], 1.0, ValueError, "eigvals"),
            ([-1.0, np.inf], [1.0, 1.0], 1.0, ValueError, "eigvals"),
            ("ab", [1.0, 1.0], 1.0, TypeError, "eigvals"),
            (None, [1.0, 1.0], 1.0, TypeError, "eigvals"),
            ([-1.0, -2.0], [1.0, 1.0, 1.0], 1.0, ValueError, "noise"),  # wrong length
            ([-1.0, -2.0], np.eye(3), 1.0, ValueError, "noise"),  # wrong matrix size
            ([-1.0, -2.0], np.ones((2, 3)), 1.0, ValueError, "noise"),  # not square
            ([-1.0, -2.0], np.ones((2, 2, 2)), 1.0, ValueError, "noise"),  # 3-D
            ([-1.0, -2.0], 1.0, 1.0, ValueError, "noise"),  # 0-D
            ([-1.0, -2.0], [1.0, -0.1], 1.0, ValueError, "noise"),  # negative spectrum
            ([-1.0, -2.0], [1.0, 1j], 1.0, TypeError, "noise"),  # complex spectrum
            ([-1.0, -2.0], [1.0, np.nan], 1.0, ValueError, "noise"),
            ([-1.0, -2.0], [[1.0, 0.5], [0.2, 1.0]], 1.0, ValueError, "noise"),  # not symmetric
            ([-1.0, -2.0], [[1.0, 0.5j], [0.5j, 1.0]], 1.0, ValueError, "noise"),  # symmetric, not Hermitian
            ([-1.0, -2.0], [[1.0, 2.0], [2.0, 1.0]], 1.0, ValueError, "noise"),  # indefinite (eigenvalue −1)
            ([-1.0, -2.0], [[-1.0, 0.0], [0.0, 1.0]], 1.0, ValueError, "noise"),
            ([-1.0, -2.0], "ab", 1.0, TypeError, "noise"),
            ([-1.0, -2.0], None, 1.0, TypeError, "noise"),
            ([-1.0, -2.0], [1.0, 1.0], -1e-3, ValueError, "tau"),
            ([-1.0, -2.0], [1.0, 1.0], [0.0, 1.0, -2.0], ValueError, "tau"),
            ([-1.0, -2.0], [1.0, 1.0], np.nan, ValueError, "tau"),
            ([-1.0, -2.0], [1.0, 1.0], np.inf, ValueError, "tau"),
            ([-1.0, -2.0], [1.0, 1.0], "ab", TypeError, "tau"),
            ([-1.0, -2.0], [1.0, 1.0], None, TypeError, "tau"),
            ([-1.0, -2.0], [1.0, 1.0], 1.0 + 1j, TypeError, "tau"),
        ],
    )
    def test_errors(self, func, eigvals, noise, tau, exc, match):
        with pytest.raises(exc, match=match):
            func(eigvals, noise, tau)


# ---------------------------------------------------------------------------------------------
# dle_covariance_backward
# ---------------------------------------------------------------------------------------------


class TestDleCovarianceBackward:
    @pytest.mark.parametrize("tau_index", range(len(TAUS)))
    @pytest.mark.parametrize("d, seed", [(1, 20), (3, 21), (5, 22)])
    def test_loop_twin_shapes_dtypes(self, tau_index, d, seed):
        tau = TAUS[tau_index]
        rng = np.random.default_rng(seed)
        lam = _mixed_eigvals(rng, d)
        g = rng.uniform(0, 2, d)
        G = random_psd(rng, d)
        vd, vf = dle_covariance_backward(lam, g, tau), dle_covariance_backward(lam, G, tau)
        assert vd.shape == np.shape(tau) + (d,) and vd.dtype == np.float64
        assert vf.shape == np.shape(tau) + (d, d) and vf.dtype == np.complex128
        close(dle_covariance_backward_loop(lam, g, tau), vd, rtol=SELF, what="backward loop twin (diag)")
        close(dle_covariance_backward_loop(lam, G, tau), vf, rtol=SELF, what="backward loop twin (full)")

    @pytest.mark.parametrize("d, seed", [(3, 23), (4, 24), (5, 25)])
    @pytest.mark.parametrize("real_q", [True, False])
    def test_van_loan(self, d, seed, real_q):
        # V_B(τ) = ∫_0^τ e^{−As} Q e^{−A^† s} ds: Van Loan with −A, and e^{−Aτ} V_F(τ) e^{−A^† τ}.
        rng = np.random.default_rng(seed)
        S = random_S(rng, d)
        lam = random_eigvals(rng, d, re=(-0.6, 0.3))
        A = (S * lam) @ np.linalg.inv(S)
        Q = random_psd(rng, d, complex_=not real_q)
        G = eigenbasis_noise(S, Q)
        for tau in (0.1, 1.0, 7.3):
            VB = to_original(S, dle_covariance_backward(lam, G, tau))
            close(VB, van_loan(-A, Q, tau), rtol=ORACLE, what="backward vs Van Loan with −A (+ doubling)")
            if tau <= 1.0:
                close(VB, van_loan_block(-A, Q, tau), rtol=ORACLE, what="backward vs Van Loan with −A (single block)")
            # the identity V_B = e^{−Aτ} V_F e^{−A^†τ} between the two closed forms (Eq. 2.7)
            E = scipy.linalg.expm(-A * tau)
            VF = to_original(S, dle_covariance(lam, G, tau))
            close(VB, E @ VF @ E.conj().T, rtol=ORACLE, what="backward vs e^{−Aτ} V_F e^{−A^†τ}")

    def test_is_forward_of_reversed_dynamics(self):
        # In the eigenbasis Σ^B(λ) = Σ^F(−λ): both are ∫_0^τ e^{−Λs} G̃ e^{−Λ^† s} ds. What is NOT
        # the backward covariance is the forward DLE run to negative time: V_F(−τ) = −V_B(τ) ⪯ 0.
        rng = np.random.default_rng(26)
        lam = _mixed_eigvals(rng, 4)
        G, g = random_psd(rng, 4), rng.uniform(0, 1, 4)
        tau = np.array([0.0, 0.4, 3.0])
        for noise in (G, g):
            backward, forward_reversed = dle_covariance_backward(lam, noise, tau), dle_covariance(-lam, noise, tau)
            close(backward, forward_reversed, rtol=ORACLE, what="Σ^B(λ) = Σ^F(−λ)")
        z = lam[:, None] + lam.conj()[None, :]
        close(dle_covariance_backward(lam, G, 3.0), -G * phi1(z, -3.0), rtol=ORACLE, what="V_B(τ) = −V_F(−τ)")

    @settings(max_examples=40)
    @given(seed=st.integers(0, 2**32 - 1), d=st.integers(1, 5), tau=st.floats(0.0, 50.0))
    def test_backward_dominates_forward(self, seed, d, tau):
        # Stable modes: g (e^{2μτ} − 1)/(2μ) >= g (1 − e^{−2μτ})/(2μ), elementwise on the diagonal.
        rng = np.random.default_rng(seed)
        lam = random_eigvals(rng, d, re=(-3.0, -1e-6))
        g = rng.uniform(0, 2, d)
        fwd, bwd = dle_covariance(lam, g, tau), dle_covariance_backward(lam, g, tau)
        assert np.all(bwd >= fwd * (1 - 4 * EPS))
        G = random_psd(rng, d)
        fwd, bwd = dle_covariance(lam, G, tau), dle_covariance_backward(lam, G, tau)
        assert np.all(np.diagonal(bwd).real >= np.diagonal(fwd).real * (1 - 4 * EPS))
        np.testing.assert_array_equal(np.diagonal(bwd).imag, 0.0)

    # ---- overflow -----------------------------------------------------------------------------

    def test_diagonal_large_growth_exact_exponent(self):
        # Σ^B_k = g (e^{2μτ} − 1)/(2μ) with 2μτ up to 700: the rounding of the product 2μ·τ
        # (up to ε·350 relative in e^{2μτ}) is restored, so the result is exact to a few ulp
        rng = np.random.default_rng(19)
        mu = rng.uniform(0.1, 3.0, 40)
        lam = -mu + 1j * rng.normal(size=40)
        tau = rng.uniform(1.0, 350.0 / mu)  # 2μτ in (0.2, 700)
        g = rng.uniform(0.5, 2.0, 40)
        for func in (dle_covariance_backward, dle_covariance_backward_loop):
            got = np.array([func(lam[i:i + 1], g[i:i + 1], tau[i])[0] for i in range(40)])
            ref = g * np.array([phi_ref(2 * m, t).real for m, t in zip(mu, tau)])
            err = elementwise_rel(got, ref)
            _record("diag Σ^B with 2μτ up to 700 (elementwise)", err, 4 * EPS)
            assert err <= 4 * EPS, f"{func.__name__}: {err:.3e}"

    def test_overflow_diagonal(self):
        # 2μτ > 709.78 + log(2μ/g): +inf where g > 0, exactly 0 where g = 0, never NaN.
        lam = np.array([-1.0 + 1j, -0.5 - 1j, -400.0 + 0j, 0.3j, -1.0 + 0j])
        g = np.array([1.0, 0.0, 2.0, 1.5, 0.0])
        tau = np.array([1.0, 400.0, 1e3, 1e4])
        for func in (dle_covariance_backward, dle_covariance_backward_loop):
            out = func(lam, g, tau)
            assert not np.any(np.isnan(out))
            np.testing.assert_array_equal(out[:, [1, 4]], 0.0)  # g = 0: no noise, no covariance
            np.testing.assert_array_equal(out[1:, [0, 2]], np.inf)  # 2μτ >= 800
            np.testing.assert_array_equal(out[:, 3], 1.5 * tau)  # μ = 0: gτ exactly
            assert np.isinf(out[0, 2]) and np.isfinite(out[0, 0])
        # just below the threshold the value is finite and right: g (e^{2μτ} − 1)/(2μ) with
        # 2μτ = 710 > log(max float) but g/(2μ) = 1e-3, value ≈ 2.2e305
        out = dle_covariance_backward(np.array([-1.0]), np.array([2e-3]), 355.0)
        assert np.isfinite(out[0])
        assert_close(out, 2e-3 * phi_ref_array(2.0, 355.0).real[None], rtol=1e-12, what="backward near overflow")

    @pytest.mark.parametrize("func", [dle_covariance_backward, dle_covariance_backward_loop])
    def test_overflow_threshold_is_the_value_not_the_exponent(self, func):
        # inf exactly where g (e^{2μτ} − 1)/(2μ) exceeds the largest float64, i.e. 2μτ > 709.78 +
        # ln(2μ/g): finite and right at 2μτ = 715 (μ = 1e5) and 720 (g = 1e-10), inf at 2μτ = 709
        # (μ = 1e-3, value 4.1e310); the loop twin alike (it returned inf for all three before).
        for mu, g, x, finite in [(1e5, 1.0, 715.0, True), (1.0, 1e-10, 720.0, True), (1e-3, 1.0, 709.0, False),
                                 (40.0, 1e-200, 1170.0, True)]:
            tau = x / (2 * mu)
            for lam in (-mu + 0j, -mu + 3j):
                out = func(np.array([lam]), np.array([g]), tau)[0]
                if not finite:
                    assert out == np.inf
                    continue
                with localcontext() as ctx:
                    ctx.prec = _PREC
                    exact = Decimal(g) * ((Decimal(2 * mu) * Decimal(tau)).exp() - 1) / Decimal(2 * mu)
                assert abs(out - float(exact)) <= 1e-12 * float(exact), (func.__name__, mu, g, x, out, exact)
        # around the crossing: 1e-9 relative below it finite, above it inf
        mu, g = 0.25, 3e3
        with localcontext() as ctx:
            ctx.prec = _PREC
            x0 = float((Decimal(np.finfo(float).max) * Decimal(2 * mu) / Decimal(g) + 1).ln())
        below, above = func(np.array([-mu]), np.array([g]), np.array([x0 * (1 - 1e-9), x0 * (1 + 1e-9)]) / (2 * mu))[:, 0]
        assert np.isfinite(below) and below > 1.79e308 and above == np.inf

    def test_overflow_full(self):
        lam = np.array([-1.0 + 2j, -0.5 - 1j, -2.0 + 0j])
        G = np.array([[2.0, 1j, 0.5], [-1j, 1.0, 0.0], [0.5, 0.0, 1.0]])
        tau = np.array([1.0, 400.0])
        vec, loop = dle_covariance_backward(lam, G, tau), dle_covariance_backward_loop(lam, G, tau)
        for out in (vec, loop):
            assert not np.any(np.isnan(out.real)) and not np.any(np.isnan(out.imag))
        assert np.all(np.isfinite(vec[0]))
        big = np.isinf(np.abs(vec[1]))
        assert big.any() and not big.all()
        np.testing.assert_array_equal(np.isinf(vec.real), np.isinf(loop.real))
        np.testing.assert_array_equal(np.isinf(vec.imag), np.isinf(loop.imag))
        np.testing.assert_array_equal(np.sign(vec[np.isinf(vec.real)].real), np.sign(loop[np.isinf(loop.real)].real))
        # entries with G̃ = 0 stay exactly 0; the finite ones agree with the loop twin
        assert vec[1, 1, 2] == 0 and vec[1, 2, 1] == 0
        fin = np.isfinite(vec)
        close(loop[fin], vec[fin], rtol=SELF, what="backward overflow: loop twin finite entries")
        # the finite entries are right: the (1, 1) entry is e^{400}/1 ≈ 5.2e173
        close(vec[1, 1, 1], np.asarray(phi_ref(1.0, 400.0)), rtol=ORACLE, what="backward large finite entry")


# ---------------------------------------------------------------------------------------------
# steady_state_covariance
# ---------------------------------------------------------------------------------------------


class TestSteadyStateCovariance:
    @pytest.mark.parametrize("d, seed", [(1, 30), (3, 31), (6, 32)])
    def test_loop_twin_shapes_dtypes(self, d, seed):
        rng = np.random.default_rng(seed)
        lam = random_eigvals(rng, d)
        g, G = rng.uniform(0, 2, d), random_psd(rng, d)
        sd, sf = steady_state_covariance(lam, g), steady_state_covariance(lam, G)
        assert sd.shape == (d,) and sd.dtype == np.float64
        assert sf.shape == (d, d) and sf.dtype == np.complex128
        close(steady_state_covariance_loop(lam, g), sd, rtol=SELF, what="steady state loop twin")
        close(steady_state_covariance_loop(lam, G), sf, rtol=SELF, what="steady state loop twin")

    @pytest.mark.parametrize("d, seed", [(2, 33), (4, 34), (5, 35)])
    @pytest.mark.parametrize("real_q", [True, False])
    def test_solve_continuous_lyapunov(self, d, seed, real_q):
        # A P + P A^† = −Q in the original basis.
        rng = np.random.default_rng(seed)
        S = random_S(rng, d)
        lam = random_eigvals(rng, d, re=(-1.5, -0.1))
        A = (S * lam) @ np.linalg.inv(S)
        Q = random_psd(rng, d, complex_=not real_q)
        P = to_original(S, steady_state_covariance(lam, eigenbasis_noise(S, Q)))
        P_scipy = scipy.linalg.solve_continuous_lyapunov(A, -Q)
        close(P, P_scipy, rtol=ORACLE, what="steady state vs solve_continuous_lyapunov")
        close(A @ P + P @ A.conj().T, -Q, rtol=1e-13 * np.linalg.cond(S) ** 2, what="steady-state residual")

    def test_diagonal_values(self):
        lam = np.array([-0.1 - 1j, -0.1 + 1j, -2.0])
        np.testing.assert_allclose(steady_state_covariance(lam, [0.7, 0.7, 1.0]), [3.5, 3.5, 0.25], rtol=4 * EPS)

    @pytest.mark.parametrize("func", [steady_state_covariance, steady_state_covariance_loop])
    @pytest.mark.parametrize("re", [0.0, -0.0, 1e-300, 0.5])
    def test_unstable_rejected(self, func, re):
        lam = np.array([-1.0 + 1j, re + 2j])
        for noise in ([1.0, 1.0], np.eye(2)):
            with pytest.raises(ValueError, match="eigvals"):
                func(lam, noise)

    @pytest.mark.parametrize("func", [steady_state_covariance, steady_state_covariance_loop])
    @pytest.mark.parametrize(
        "eigvals, noise, exc, match",
        [
            ([[-1.0]], [1.0], ValueError, "eigvals"),
            ([], [], ValueError, "eigvals"),
            ([np.nan], [1.0], ValueError, "eigvals"),
            ([-1.0], [-1.0], ValueError, "noise"),
            ([-1.0, -2.0], [[1.0, 2.0], [2.0, 1.0]], ValueError, "noise"),
            ([-1.0, -2.0], [1.0], ValueError, "noise"),
            ([-1.0], "x", TypeError, "noise"),
        ],
    )
    def test_errors(self, func, eigvals, noise, exc, match):
        with pytest.raises(exc, match=match):
            func(eigvals, noise)


# ---------------------------------------------------------------------------------------------
# isotropic_covariance
# ---------------------------------------------------------------------------------------------


def isotropic_formula(dt, mu, sigma2, eta2, gamma2):
    """Spec afa.md §2.3–2.4 written out with plain NumPy (μ > 0, moderate |Δt|)."""
    tau = np.abs(dt)
    fwd = sigma2 * (1 - np.exp(-2 * mu * tau)) / (2 * mu) + eta2 * np.exp(-2 * mu * tau) + gamma2
    bwd = sigma2 * (np.exp(2 * mu * tau) - 1) / (2 * mu) + eta2 * np.exp(2 * mu * tau) + gamma2
    return np.where(dt >= 0, fwd, bwd)


class TestIsotropicCovariance:
    SIG, ETA, GAM = 0.3, 0.5, 0.2

    @pytest.mark.parametrize("func", [isotropic_covariance, isotropic_covariance_loop])
    def test_endpoints(self, func):
        mu = np.array([0.05, 0.5, 3.0])
        np.testing.assert_array_equal(func(0.0, mu, self.SIG, self.ETA, self.GAM), self.ETA + self.GAM)  # Σ(0)
        beta = self.GAM + self.SIG / (2 * mu)
        close(func(1e4, mu, self.SIG, self.ETA, self.GAM), beta, rtol=ORACLE, what="isotropic Σ(∞) = β")

    @pytest.mark.parametrize("func", [isotropic_covariance, isotropic_covariance_loop])
    def test_alpha_beta_form(self, func):
        # Σ(Δt) = α e^{−2μΔt} + β, α = η² − σ̃², β = γ² + σ̃², σ̃² = σ²/(2μ)  (V6 Eq. 6)
        dt = np.array([0.0, 1e-6, 0.1, 1.0, 5.0, 50.0])[:, None]
        mu = np.array([0.01, 0.2, 1.5])
        for sigma2, eta2, gamma2 in [(0.3, 0.5, 0.2), (0.0, 1.0, 0.1), (0.5, 2.0, 0.3), (2.0, 0.1, 0.05)]:
            tilde = sigma2 / (2 * mu)
            alpha, beta = eta2 - tilde, gamma2 + tilde
            got = func(dt, mu, sigma2, eta2, gamma2)
            assert got.shape == (6, 3) and got.dtype == np.float64
            close(got, alpha * np.exp(-2 * mu * dt) + beta, rtol=1e-12, what="isotropic α e^{−2μΔt} + β")

    @pytest.mark.parametrize("func", [isotropic_covariance, isotropic_covariance_loop])
    def test_brownian_limit(self, func):
        # μ = 0: Σ = σ² |Δt| + η² + γ² for both signs of Δt; μ = 1e-12 is within μ|Δt| of it.
        dt = np.array([-1e4, -3.0, -1e-300, 0.0, 1e-300, 0.5, 7.3, 1e4])
        expected = self.SIG * np.abs(dt) + self.ETA + self.GAM
        np.testing.assert_allclose(func(dt, 0.0, self.SIG, self.ETA, self.GAM), expected, rtol=2 * EPS)
        got = func(dt, 1e-12, self.SIG, self.ETA, self.GAM)
        assert np.all(np.abs(got - expected) <= 1.01 * 2e-12 * np.abs(dt) * expected + 2 * EPS * expected)

    @pytest.mark.parametrize("func", [isotropic_covariance, isotropic_covariance_loop])
    def test_pushed_back(self, func):
        # Δt < 0: σ² (e^{2μτ} − 1)/(2μ) + η² e^{2μτ} + γ², τ = −Δt (spec §2.2–2.3).
        dt = -np.array([1e-8, 0.1, 1.0, 4.0, 30.0])[:, None]
        mu = np.array([0.05, 0.5, 2.0])
        got = func(dt, mu, self.SIG, self.ETA, self.GAM)
        close(got, isotropic_formula(dt, mu, self.SIG, self.ETA, self.GAM), rtol=1e-12, what="isotropic pushed back")
        # and it is the backward diagonal covariance plus the propagated measurement noise
        tau = -dt[:, 0]
        sig_b = dle_covariance_backward(-mu + 1j, np.full(3, self.SIG), tau)
        expected = sig_b + self.ETA * np.exp(2 * mu * tau[:, None]) + self.GAM
        close(got, expected, rtol=1e-12, what="isotropic = backward DLE + η² e^{2μτ} + γ²")
        assert np.all(got > isotropic_covariance(-dt, mu, self.SIG, self.ETA, self.GAM))  # grows vs forward

    @pytest.mark.parametrize("func", [isotropic_covariance, isotropic_covariance_loop])
    def test_forward_matches_dle(self, func):
        dt = np.array([0.0, 0.3, 2.0, 9.0])
        mu = 0.4
        sig_f = dle_covariance(np.array([-mu + 0.7j]), np.array([self.SIG]), dt)[:, 0]
        expected = sig_f + self.ETA * np.exp(-2 * mu * dt) + self.GAM
        got = func(dt, mu, self.SIG, self.ETA, self.GAM)
        close(got, expected, rtol=1e-12, what="isotropic forward = DLE + η² e^{−2μΔt} + γ²")

    def test_broadcasting_and_loop_twin(self):
        rng = np.random.default_rng(40)
        dt = rng.uniform(-5, 5, size=(4, 1, 1))
        mu = rng.uniform(0.01, 1, size=(1, 3, 1))
        sigma2 = rng.uniform(0, 1, size=(2,))
        eta2, gamma2 = 0.4, rng.uniform(0.1, 1, size=(1, 1, 2))
        got = isotropic_covariance(dt, mu, sigma2, eta2, gamma2)
        assert got.shape == (4, 3, 2)
        close(got, isotropic_formula(dt, mu, sigma2, eta2, gamma2), rtol=1e-12, what="isotropic broadcasting")
        close(isotropic_covariance_loop(dt, mu, sigma2, eta2, gamma2), got, rtol=SELF, what="isotropic loop twin")
        assert isotropic_covariance(1.0, 0.5, 0.3, 0.5, 0.2).shape == ()

    @pytest.mark.parametrize("func", [isotropic_covariance, isotropic_covariance_loop])
    def test_overflow_pushed_back(self, func):
        # e^{2μτ} beyond float64: +inf, never NaN, also when σ² = 0 or η² = 0 (no 0·inf).
        dt = np.array([-1e3, -400.0, -1.0])
        for sigma2, eta2 in [(0.0, 1.0), (1.0, 0.0), (1.0, 1.0)]:
            out = func(dt, 1.0, sigma2, eta2, 0.1)
            np.testing.assert_array_equal(out[:2], np.inf)
            assert np.isfinite(out[2])
        out = func(dt, 1.0, 0.0, 0.0, 0.1)
        np.testing.assert_array_equal(out, 0.1)  # nothing propagates, only the anchor noise

    @pytest.mark.parametrize("func", [isotropic_covariance, isotropic_covariance_loop])
    def test_pushed_back_elementwise_exact(self, func):
        # Δt < 0 with 2μτ up to 700: σ² (e^{2μτ} − 1)/(2μ) + η² e^{2μτ} + γ² against an 80-digit
        # decimal evaluation, elementwise within a few ulp (η² e^{2μτ} formed as exp(2μτ) alone
        # carries the rounding of 2μτ, up to 350 ulp at 2μτ = 700).
        rng = np.random.default_rng(61)
        n = 60
        mu = 10.0 ** rng.uniform(-3, 1, n)
        tau = rng.uniform(0.0, 700.0, n) / (2 * mu)
        s2, e2, g2 = (10.0 ** rng.uniform(-3, 1, n) for _ in range(3))
        s2[::4], e2[1::4] = 0.0, 0.0
        got = func(-tau, mu, s2, e2, g2)
        with localcontext() as ctx:
            ctx.prec = _PREC
            ref = []
            for m, t, s, e, g in zip(mu, tau, s2, e2, g2):
                m, t, s, e, g = map(Decimal, (m, t, s, e, g))
                growth = (2 * m * t).exp()
                ref.append(float(s * (growth - 1) / (2 * m) + e * growth + g))
        ref = np.array(ref)
        err = float(np.max(np.abs(got - ref) / ref))
        _record("isotropic pushed back, 2μτ up to 700 (elementwise)", err, 4 * EPS)
        assert err <= 4 * EPS, f"{func.__name__}: {err:.3e}"

    @pytest.mark.parametrize("func", [isotropic_covariance, isotropic_covariance_loop])
    def test_pushed_back_representable_beyond_exp_overflow(self, func):
        # e^{2μτ} = e^{720} overflows float64, but η² e^{720} = 4.92e302 (η² = 1e-10) does not:
        # finite and right, for the measurement term as for the process term.
        for s2, e2 in [(0.0, 1e-10), (1e-10, 0.0), (1e-10, 1e-10)]:
            got = float(func(-360.0, 1.0, s2, e2, 0.25))
            with localcontext() as ctx:
                ctx.prec = _PREC
                growth = Decimal(720).exp()
                exact = Decimal(s2) * (growth - 1) / 2 + Decimal(e2) * growth + Decimal(0.25)
            assert abs(got - float(exact)) <= 1e-12 * float(exact), (func.__name__, s2, e2, got)

    @pytest.mark.parametrize("func", [isotropic_covariance, isotropic_covariance_loop])
    def test_signed_and_mirrored_lag_are_two_transports(self, func):
        # A complex mode y, stationary (variance σ̃²), a key measured τ after the query
        # (z_j = y_j + v_j, Var v = η²; z_i = y_i + u_i, Var u = γ²); E[y_i conj(y_j)] = σ̃² e^{λ^*τ}.
        # The residual z_i − c z_j has the exact second moment
        #     σ̃² + γ² + |c|² (σ̃² + η²) − 2 σ̃² Re(conj(c) e^{λ^*τ}).
        # c = e^{−λτ} (pushed back, Eq. (2.7)): the signed-lag kernel Σ(−τ);
        # c = e^{λ^*τ} (stationary backward predictor, Eq. (2.11)): the mirror image Σ(τ).
        rng = np.random.default_rng(62)
        for _ in range(50):
            mu, om = rng.uniform(0.01, 2.0), rng.normal(0.0, 3.0)
            s2, e2, g2 = rng.uniform(0.01, 2.0, 3)
            tau = rng.uniform(0.0, 8.0)
            lam, st2 = -mu + 1j * om, s2 / (2 * mu)
            cov = st2 * np.exp(np.conj(lam) * tau)
            for c, dt in ((np.exp(-lam * tau), -tau), (np.exp(np.conj(lam) * tau), tau)):
                var = st2 + g2 + abs(c) ** 2 * (st2 + e2) - 2 * (np.conj(c) * cov).real
                close(func(dt, mu, s2, e2, g2), var, rtol=1e-12, what="isotropic kernel = residual of its transport")

    @pytest.mark.parametrize("func", [isotropic_covariance, isotropic_covariance_loop])
    @pytest.mark.parametrize(
        "args, exc, match",
        [
            ((1.0, -0.1, 0.3, 0.5, 0.2), ValueError, "mu"),
            ((1.0, 0.1, -0.3, 0.5, 0.2), ValueError, "sigma2"),
            ((1.0, 0.1, 0.3, -0.5, 0.2), ValueError, "eta2"),
            ((1.0, 0.1, 0.3, 0.5, -0.2), ValueError, "gamma2"),
            ((np.nan, 0.1, 0.3, 0.5, 0.2), ValueError, "dt"),
            ((1.0, np.inf, 0.3, 0.5, 0.2), ValueError, "mu"),
            ((np.ones(3), np.ones(2), 0.3, 0.5, 0.2), ValueError, "dt, mu"),
            ((1.0, 0.1, np.ones(4), np.ones((2, 3)), 0.2), ValueError, "shapes do not broadcast"),
            (("1", 0.1, 0.3, 0.5, 0.2), TypeError, "dt"),
            ((1.0, None, 0.3, 0.5, 0.2), TypeError, "mu"),
            ((1.0, 0.1, 0.3, 0.5, 1j), TypeError, "gamma2"),
        ],
    )
    def test_errors(self, func, args, exc, match):
        with pytest.raises(exc, match=match):
            func(*args)


class TestPhi1BadInput:
    def test_negative_lags_overflow_to_inf_not_nan(self):
        import warnings

        from refimpl.lyapunov import phi1

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            # τ < 0 with a stable z: e^{zτ} overflows; the magnitude is inf, never NaN
            for z, tau in ((-0.5 + 1j, -1e10), (-0.5 + 1j, -1e300), (-0.5, -1e300)):
                v = complex(phi1(z, tau))
                assert not np.isnan(v.real) and not np.isnan(v.imag) and math.isinf(abs(v))
            v = float(phi1(-0.5, -1e3))  # representable: (e^{500} − 1)/(−0.5)
            assert abs(v - (-2.0 * math.expm1(500.0))) <= 1e-15 * abs(v)

    def test_shapes_that_do_not_broadcast_are_named(self):
        from refimpl.lyapunov import phi1

        with pytest.raises(ValueError, match=r"^z, tau: expected shapes that broadcast together"):
            phi1(np.ones(4), np.ones(5))


class TestHugeDecayTimesLag:
    """|zτ| beyond ~6e18: the rounding error δ of the exponent w = zτ (half an ulp of w) exceeds 709,
    so the correction e^w (e^δ − 1) of the exponent's rounding is 0 · inf where e^w underflows.
    The kernel is then exactly −1/z (e^{zτ} = 0), which the loop twins (scalar kernel) and the
    vectorized complex kernel must return, not NaN or inf. References: the decimal φ above."""

    RATES = [-2.2e10, -2.42e10, -2.42e10 + 0.5j, -1e15 + 3.0j, -7.3e3 - 1e4j]
    LAGS = [2.45e11, 3.7e13, 1e20]

    @pytest.mark.parametrize("z", RATES)
    def test_scalar_kernel(self, z):
        from refimpl.lyapunov import _phi1_scalar

        # (the decimal reference reduces phases up to ~1e100 rad: the longest lag for real rates only)
        for tau in self.LAGS + ([1.7e300] if isinstance(z, float) else []):
            expected = phi_ref(z, tau)
            got = complex(_phi1_scalar(z, tau))
            assert abs(got - expected) <= 4 * EPS * abs(expected), (z, tau, got, expected)
            if isinstance(z, float):
                got = _phi1_scalar(z, tau)
                assert isinstance(got, float) and abs(got - expected.real) <= 4 * EPS * abs(expected), (z, tau, got)

    def test_vectorized_kernel_with_a_growing_mode(self):
        # a growing mode in the same call makes the complex kernel restore the real part's rounding too
        z = np.array([-2.42e10 + 0.5j, 2e-15 + 1.0j, -1e15 + 3.0j])
        for tau in (2.45e11, 3.7e13):
            got = phi1(z, tau)
            expected = phi_ref_array(z, tau)
            assert np.all(np.abs(got - expected) <= 4 * EPS * np.abs(expected)), (tau, got, expected)

    @pytest.mark.parametrize("func", [isotropic_covariance, isotropic_covariance_loop])
    def test_isotropic_covariance(self, func):
        # Σ = σ² (1 − e^{−2μΔt})/(2μ) + η² e^{−2μΔt} + γ² with e^{−2μΔt} = 0 (2μΔt = 5.39e21)
        for dt, mu, s2, e2, g2 in [(2.45e11, 1.1e10, 1.0, 0.0, 0.0), (3.7e13, 1.21e10, 0.7, 0.3, 0.1)]:
            expected = s2 * phi_ref(-2.0 * mu, dt).real + g2
            got = float(func(dt, mu, s2, e2, g2))
            assert abs(got - expected) <= 4 * EPS * expected, (func.__name__, dt, mu, got, expected)

    @pytest.mark.parametrize("func", [dle_covariance, dle_covariance_loop])
    def test_dle_covariance_diagonal(self, func):
        lam, g = np.array([-1.1e10, -1.21e10 + 3.0j, -0.5 + 1.0j]), np.array([1.0, 0.4, 0.3])
        for tau in (2.45e11, 3.7e13):
            got = func(lam, g, tau)
            expected = np.array([g[c] * phi_ref(2.0 * lam[c].real, tau).real for c in range(3)])
            close_elementwise_lyap(got, expected, what=f"{func.__name__} huge decay × lag")

    @pytest.mark.parametrize("func", [dle_covariance, dle_covariance_loop])
    def test_dle_covariance_full_with_a_growing_mode(self, func):
        lam = np.array([-1.21e10 + 0.5j, 1e-15 + 1.0j])
        G = np.array([[1.0, 0.3 + 0.1j], [0.3 - 0.1j, 1.0]])
        for tau in (2.45e11, 3.7e13):
            got = func(lam, G, tau)
            expected = dle_ref(lam, G, tau)
            assert np.all(np.isfinite(got))
            assert np.all(np.abs(got - expected) <= 8 * EPS * np.abs(expected)), (tau, got, expected)


def close_elementwise_lyap(actual, expected, *, what: str) -> None:
    err = float(np.max(np.abs(np.asarray(actual) - expected) / np.abs(expected)))
    _record(what + " (elementwise)", err, 4 * EPS)
    assert err <= 4 * EPS, f"{what}: elementwise relative error {err:.3e}"
