"""Tests of :mod:`refimpl.classical`: matched filter, Wiener–Hopf, Wiener smoother, LMS/RLS, beamforming.

Oracles, each independent of the code under test:

* ``np.correlate(r, s, "valid")`` for the matched filter and the correlation estimates;
* ``np.linalg.solve(scipy.linalg.toeplitz(r), p)`` (dense) for the Wiener–Hopf equations;
* the closed-form AR(1)-plus-white-noise smoother ``h_ℓ = c β^{|ℓ|}`` (spectral factorization
  derived in the test) for the frequency-domain Wiener smoother;
* the exponentially weighted regularized least-squares solution (dense solve) for RLS, and the
  Wiener solution for the long-run mean of LMS;
* the Dirichlet kernel and ``np.fft.fft`` of the aperture for the delay-and-sum beampattern;
  MVDR(σ²I) = DAS; the distortionless constraint; MVDR power ≤ DAS power.

Tolerances: :mod:`refimpl._testing`.
"""

from __future__ import annotations

import functools
import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

from refimpl._testing import ORACLE, SELF, assert_close, mc_band
from refimpl.classical import (
    ar1_psd,
    autocorrelation,
    bartlett_spectrum,
    beamform,
    beampattern,
    beampattern_loop,
    capon_spectrum,
    capon_spectrum_loop,
    cross_correlation,
    das_weights,
    dirichlet_beampattern,
    lfm_pulse,
    lms,
    lms_loop,
    matched_filter,
    matched_filter_loop,
    mvdr_weights,
    mvdr_weights_loop,
    rls,
    rls_loop,
    sample_covariance,
    steering_vector,
    wiener_hopf,
    wiener_hopf_loop,
    wiener_smoother_response,
    wiener_smoother_weights,
    wiener_smoother_weights_loop,
)

from _recording import recorder  # noqa: E402
from _oracles import random_psd as _random_psd  # noqa: E402

#: covariances of unit average eigenvalue, complex
random_psd = functools.partial(_random_psd, complex_=True, normalize=True)


#: worst error seen per oracle (printed by conftest when REFIMPL_WORST_ERRORS=1)
WORST_ERRORS, close, _ = recorder()


# ---------------------------------------------------------------------------------------------
class TestMatchedFilter:
    @pytest.mark.parametrize("kind", ["real", "complex"])
    @pytest.mark.parametrize(("n", "L"), [(50, 8), (64, 64), (33, 1)])
    def test_vs_np_correlate_and_loop(self, kind, n, L):
        rng = np.random.default_rng(n + L)
        r = rng.normal(size=(2, n)) + (1j * rng.normal(size=(2, n)) if kind == "complex" else 0)
        s = rng.normal(size=L) + (1j * rng.normal(size=L) if kind == "complex" else 0)
        y = matched_filter(r, s)
        assert y.shape == (2, n - L + 1) and (y.dtype == complex) == (kind == "complex")
        close(y, np.stack([np.correlate(ri, s, "valid") for ri in r]), rtol=ORACLE, what="matched filter vs np.correlate")
        close(y, matched_filter_loop(r, s), rtol=SELF, what="matched filter vs loop")

    def test_normalized(self):
        rng = np.random.default_rng(1)
        r = rng.normal(size=40) + 1j * rng.normal(size=40)
        r[10:15] = 0.0  # a window of zeros gives 0, not NaN
        s = lfm_pulse(5, 0.8)
        y = matched_filter(r, s, normalize=True)
        windows = np.lib.stride_tricks.sliding_window_view(r, 5)
        norms = np.linalg.norm(windows, axis=1) * np.linalg.norm(s)
        ref = np.where(norms > 0, windows @ s.conj() / np.where(norms > 0, norms, 1), 0)
        close(y, ref, rtol=ORACLE, what="normalized matched filter vs windows")
        close(y, matched_filter_loop(r, s, normalize=True), rtol=SELF, what="normalized vs loop")
        assert np.all(np.abs(y) <= 1 + 1e-12) and y[10] == 0

    def test_detects_the_delay(self):
        rng = np.random.default_rng(2)
        s = lfm_pulse(32, 0.5)
        r = 0.7 * (rng.normal(size=300) + 1j * rng.normal(size=300))
        r[123:155] += s
        assert np.argmax(np.abs(matched_filter(r, s))) == 123

    def test_lfm_pulse(self):
        s = lfm_pulse(64, 0.5)
        assert_close(np.abs(s), np.ones(64), rtol=ORACLE)
        f = np.angle(s[1:] * s[:-1].conj()) / (2 * np.pi)  # instantaneous frequency (cycles/sample)
        close(f, 0.5 * (np.arange(1, 64) - 0.5 - 31.5) / 64, rtol=1e-12, what="chirp instantaneous frequency")
        # pulse compression: the autocorrelation main lobe is ≈ 1/B samples wide
        ac = np.abs(np.correlate(s, s, "full")) / 64
        assert np.sum(ac > 0.5) <= 5

    @pytest.mark.parametrize("func", [matched_filter, matched_filter_loop])
    def test_errors(self, func):
        with pytest.raises(ValueError, match="^received: expected at least L = 5"):
            func(np.ones(4), np.ones(5))
        with pytest.raises(ValueError, match="^template: expected 1 dimensions"):
            func(np.ones(8), np.ones((2, 2)))
        with pytest.raises(ValueError, match="^template: expected a nonzero"):
            func(np.ones(8), np.zeros(3))
        with pytest.raises(ValueError, match="^template: expected at least one"):
            func(np.ones(8), np.zeros(0))
        with pytest.raises(ValueError, match="^received: expected finite"):
            func([1.0, np.nan, 2.0], np.ones(2))
        with pytest.raises(ValueError, match="^received: expected shape"):
            func(1.0, np.ones(1))

    def test_pulse_errors(self):
        with pytest.raises(ValueError, match="^bandwidth: expected a value in \\(0, 1\\]"):
            lfm_pulse(8, 1.5)
        with pytest.raises(ValueError, match="^n_samples: "):
            lfm_pulse(0, 0.5)


# ---------------------------------------------------------------------------------------------
class TestCorrelations:
    def test_vs_np_correlate(self):
        rng = np.random.default_rng(3)
        u, d = rng.normal(size=(2, 30))
        full = np.correlate(d, u, "full") / 30  # index N−1+ℓ holds Σ_n d_{n+ℓ} u_n = Σ_n d_n u_{n−ℓ}
        close(cross_correlation(d, u, 6), full[29:35], rtol=ORACLE, what="cross-correlation vs np.correlate")
        close(autocorrelation(u, 6), (np.correlate(u, u, "full") / 30)[29:35], rtol=ORACLE, what="autocorrelation")

    def test_biased_estimate_is_psd(self):
        u = np.random.default_rng(4).normal(size=20)
        r = autocorrelation(u, 20)
        assert np.linalg.eigvalsh(scipy.linalg.toeplitz(r))[0] > -1e-12

    def test_errors(self):
        with pytest.raises(ValueError, match="^n_lags: expected at most N = 5"):
            autocorrelation(np.ones(5), 6)
        with pytest.raises(ValueError, match="^u: expected the length N = 5"):
            cross_correlation(np.ones(5), np.ones(4), 2)
        with pytest.raises(ValueError, match="^d: expected shape"):
            cross_correlation(np.ones(0), np.ones(0), 1)


# ---------------------------------------------------------------------------------------------
class TestWienerHopf:
    @pytest.mark.parametrize("m", [1, 2, 7, 40])
    def test_three_algorithms(self, m):
        rng = np.random.default_rng(m)
        r = 0.8 ** np.arange(m) + 0.1 * (np.arange(m) == 0)
        p = rng.normal(size=m)
        w = wiener_hopf(r, p)
        close(w, wiener_hopf_loop(r, p), rtol=SELF, what="Levinson loop vs solve_toeplitz")
        close(w, np.linalg.solve(scipy.linalg.toeplitz(r), p), rtol=1e-12, what="Wiener-Hopf vs dense solve")

    def test_several_right_hand_sides(self):
        rng = np.random.default_rng(5)
        r = autocorrelation(rng.normal(size=200), 6)
        P = rng.normal(size=(6, 3))
        W = wiener_hopf(r, P)
        assert W.shape == (6, 3)
        close(W, wiener_hopf_loop(r, P), rtol=SELF, what="several RHS vs loop")
        close(W, np.linalg.solve(scipy.linalg.toeplitz(r), P), rtol=1e-12, what="several RHS vs dense")

    @settings(max_examples=25)
    @given(seed=st.integers(0, 2**31), m=st.integers(1, 12))
    def test_random_psd_toeplitz(self, seed, m):
        rng = np.random.default_rng(seed)
        r = autocorrelation(rng.normal(size=m + 30), m)  # biased: positive definite almost surely
        p = rng.normal(size=m)
        w = wiener_hopf(r, p)
        cond = np.linalg.cond(scipy.linalg.toeplitz(r))
        close(w, wiener_hopf_loop(r, p), rtol=SELF * max(1.0, cond / 1e3), what="hypothesis: Levinson vs solve_toeplitz")

    def test_system_identification_and_mmse(self):
        # d = h * u + noise with white u: R = I·σ_u², p = σ_u² h ⇒ w_o = h, J_min = noise variance
        h = np.array([1.0, -0.5, 0.25])
        r = np.array([1.0, 0.0, 0.0])
        w = wiener_hopf(r, h)
        close(w, h, rtol=ORACLE, what="white input: w_o = h")
        sigma_d2 = h @ h + 0.1
        assert abs((sigma_d2 - h @ w) - 0.1) < 1e-14

    @pytest.mark.parametrize("func", [wiener_hopf, wiener_hopf_loop])
    @pytest.mark.parametrize(
        ("r", "p", "match"),
        [
            ([1.0, 1.0, 1.0], [1.0, 0.0, 0.0], "^r: the Toeplitz autocorrelation matrix is not positive definite"),
            ([1.0, 2.0], [1.0, 0.0], "^r: the Toeplitz autocorrelation matrix is not positive definite"),
            ([0.0, 0.0], [1.0, 0.0], "^r: expected r\\[0\\] > 0"),
            ([1.0, 0.5], [1.0, 0.0, 3.0], "^p: expected 2 rows"),
            ([1.0, np.nan], [1.0, 0.0], "^r: expected finite"),
            ([[1.0]], [1.0], "^r: expected 1 dimensions"),
            ([], [], "^r: expected at least one lag"),
        ],
    )
    def test_errors(self, func, r, p, match):
        with pytest.raises(ValueError, match=match):
            func(r, p)

    @pytest.mark.parametrize("gap", [1e-12, 1e-13, 1e-14, 1e-15, 1e-16, 0.0, -1e-3])
    def test_twins_refuse_the_same_inputs(self, gap):
        # r = [1, 1 − gap]: eigenvalues 1 ± (1 − gap), cond₂(R) = (2 − gap)/gap for gap > 0, which crosses the
        # documented bound 1e14 between gap = 1e-13 (2e13, solved) and 1e-14 (2e14, refused). Both twins apply
        # the one test: they raise together or return together, and where they return they solve the float
        # system (exact rational oracle).
        from fractions import Fraction

        r, p = np.array([1.0, 1.0 - gap]), np.array([1.0, 0.0])
        outcomes = []
        for func in (wiener_hopf, wiener_hopf_loop):
            try:
                outcomes.append(func(r, p))
            except ValueError as err:
                assert str(err).startswith("r: the Toeplitz autocorrelation matrix is not positive definite or is numerically singular")
                assert "cond(R) >= 1e+14" in str(err)
                outcomes.append(None)
        c = Fraction(r[1])
        raises = not (1 - c > 0 and (1 + c) / (1 - c) < Fraction(10**14))
        assert [o is None for o in outcomes] == [raises, raises], (gap, outcomes)
        if not raises:
            exact = np.array([float(1 / (1 - c * c)), float(-c / (1 - c * c))])  # R⁻¹ e_1 for the float r
            close(outcomes[0], exact, rtol=1e-3, what="near-singular R: solve_toeplitz vs exact")
            close(outcomes[1], exact, rtol=1e-3, what="near-singular R: Levinson loop vs exact")

    @pytest.mark.parametrize("func", [wiener_hopf, wiener_hopf_loop])
    def test_refuses_gradually_ill_conditioned(self, func):
        # Gaussian autocorrelation r(k) = exp(−k²/128), M = 12: positive definite, cond₂(R) = 1.4e19 (60 digits), but
        # 1 − ε² > 0.015 at every order of (6.5), so a Levinson–Durbin test alone passes it (and the solves
        # were off by 6.3 and 0.38 relative). The eigenvalue test refuses it in both twins, naming r.
        r = np.exp(-np.arange(12) ** 2 / 128.0)
        f, dens = np.array([1.0 / r[0]]), []
        for n in range(1, r.size):
            eps = r[n:0:-1] @ f
            dens.append(1.0 - eps * eps)
            f = (np.append(f, 0.0) - eps * np.append(0.0, f[::-1])) / dens[-1]
        assert min(dens) > 0.015  # what a Levinson–Durbin test would see
        assert np.linalg.cond(scipy.linalg.toeplitz(r)) > 1e16
        with pytest.raises(ValueError, match="^r: the Toeplitz autocorrelation matrix is not positive definite or is numerically singular") as err:
            func(r, np.eye(12)[0])
        assert "cond(R) >= 1e+14" in str(err.value)

    def test_accepts_well_conditioned_gaussian(self):
        # The same family with a narrower kernel, r(k) = exp(−k²/4), M = 12: cond₂(R) ≈ 2.8e3, far below the bound;
        # both twins solve it and agree with an exact rational solve of the float system.
        from fractions import Fraction

        r = np.exp(-np.arange(12) ** 2 / 4.0)
        assert np.linalg.cond(scipy.linalg.toeplitz(r)) < 1e4
        p = np.eye(12)[0]
        a = [[Fraction(float(r[abs(i - j)])) for j in range(12)] + [Fraction(float(p[i]))] for i in range(12)]
        for k in range(12):  # Gauss–Jordan elimination in rationals (R is positive definite: no pivoting needed)
            a[k] = [v / a[k][k] for v in a[k]]
            for i in range(12):
                if i != k:
                    a[i] = [v - a[i][k] * w for v, w in zip(a[i], a[k])]
        exact = np.array([float(row[-1]) for row in a])
        close(wiener_hopf(r, p), exact, rtol=1e-12, what="well-conditioned Gaussian: solve_toeplitz vs exact")
        close(wiener_hopf_loop(r, p), exact, rtol=1e-12, what="well-conditioned Gaussian: loop vs exact")

    def test_refuses_without_right_hand_sides(self):
        for func in (wiener_hopf, wiener_hopf_loop):
            with pytest.raises(ValueError, match="^r: the Toeplitz autocorrelation matrix is not positive definite"):
                func([1.0, 2.0], np.zeros((2, 0)))
            assert func([1.0, 0.5], np.zeros((2, 0))).shape == (2, 0)


# ---------------------------------------------------------------------------------------------
def ar1_smoother_closed_form(a, q, rn, lags):
    """h_ℓ = q / (κ(1 − β²)) β^{|ℓ|} from S_x/(S_x + r) = q / (κ (1 − βz^{-1})(1 − βz)).

    q + r|1 − a z^{-1}|² = κ(1 − βz^{-1})(1 − βz) with κ(1 + β²) = q + r(1 + a²) and κβ = r a.
    """
    c = (q + rn * (1 + a * a)) / (rn * a)  # β + 1/β
    beta = (c - np.sign(c) * np.sqrt(c * c - 4)) / 2  # the root inside the unit circle
    kappa = rn * a / beta
    return q / (kappa * (1 - beta**2)) * beta ** np.abs(lags)


class TestWienerSmoother:
    @pytest.mark.parametrize(("a", "q", "rn"), [(0.9, 1.0, 2.0), (0.5, 1.0, 0.1), (-0.7, 2.0, 1.0)])
    def test_ar1_closed_form(self, a, q, rn):
        sx = ar1_psd(a, q, 4096)
        lags, h = wiener_smoother_weights(sx, rn)
        keep = np.abs(lags) <= 200
        close(h[keep], ar1_smoother_closed_form(a, q, rn, lags[keep]), rtol=ORACLE, what="smoother vs AR(1) closed form")

    def test_loop_twin(self):
        sx = ar1_psd(0.8, 1.0, 128)
        sn = 0.5 + 0.2 * np.cos(2 * np.pi * np.arange(128) / 128)
        lags, h = wiener_smoother_weights(sx, sn)
        lags2, h2 = wiener_smoother_weights_loop(sx, sn)
        np.testing.assert_array_equal(lags, lags2)
        close(h, h2, rtol=SELF, what="smoother weights vs loop")
        assert lags[0] == -64 and lags[-1] == 63 and h.dtype == np.float64

    def test_response(self):
        sx = ar1_psd(0.9, 1.0, 64)
        H = wiener_smoother_response(sx, 2.0)
        close(H, sx / (sx + 2.0), rtol=ORACLE, what="H = S_x/(S_x+S_n)")
        assert np.all((H > 0) & (H < 1)) and np.argmax(H) == 0  # a low-pass for a > 0
        assert_close(wiener_smoother_response(sx, 0.0), np.ones(64), rtol=ORACLE)  # no noise: pass everything

    def test_ar1_psd(self):
        k = np.arange(8)
        close(ar1_psd(0.5, 2.0, 8), 2.0 / (1.25 - np.cos(2 * np.pi * k / 8)), rtol=ORACLE, what="AR(1) PSD")

    def test_errors(self):
        with pytest.raises(ValueError, match="^psd_noise: expected shape \\(4,\\)"):
            wiener_smoother_response(np.ones(4), np.ones(3))
        with pytest.raises(ValueError, match="^psd_signal: expected values >= 0"):
            wiener_smoother_response(-np.ones(4), 1.0)
        with pytest.raises(ValueError, match="^psd_noise: expected values >= 0"):
            wiener_smoother_weights(np.ones(4), -1.0)
        with pytest.raises(ValueError, match="^psd_noise: S_x \\+ S_n must be > 0"):
            wiener_smoother_weights_loop(np.zeros(4), 0.0)
        with pytest.raises(ValueError, match="^psd_signal: expected finite"):
            wiener_smoother_response([1.0, np.inf], 1.0)
        with pytest.raises(ValueError, match="^a: expected \\|a\\| < 1"):
            ar1_psd(1.0, 1.0, 8)
        with pytest.raises(ValueError, match="^q: "):
            ar1_psd(0.5, 0.0, 8)


# ---------------------------------------------------------------------------------------------
def identification_problem(seed, runs, n, h, noise=0.1, color=0.6):
    """u: AR(1) input (coloured), d = h * u + white noise. Returns u, d and the Wiener solution."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(runs, n))
    u = np.zeros((runs, n))
    for t in range(n):
        u[:, t] = color * (u[:, t - 1] if t else 0.0) + w[:, t]
    d = np.stack([np.convolve(ui, h)[:n] for ui in u]) + noise * rng.normal(size=(runs, n))
    m = len(h)
    r_true = color ** np.arange(m) / (1 - color**2)  # stationary AR(1) autocorrelation
    p_true = scipy.linalg.toeplitz(r_true) @ h
    return u, d, wiener_hopf(r_true, p_true)


def rls_least_squares(u, d, m, lam, delta, n, w0=None):
    """Eq. (6.8) solved directly: the RLS weights after samples 0 … n (0-based) of one run u, d with m taps,
    ``(Σ_j λ^{n−j} u_j u_jᵀ + λ^{n+1} δ I)^{-1} (Σ_j λ^{n−j} u_j d_j + λ^{n+1} δ w0)`` (u_j the regressors
    [u_j, …, u_{j−m+1}], zeros before the start; the prior δ I, w0 discounted n + 1 times)."""
    U = np.stack([np.concatenate([u[j::-1], np.zeros(m)])[:m] for j in range(n + 1)])
    g = lam ** (n - np.arange(n + 1))  # λ^{n−j}
    A = (U.T * g) @ U + lam ** (n + 1) * delta * np.eye(m)
    b = (U.T * g) @ d[: n + 1] + (0.0 if w0 is None else lam ** (n + 1) * delta * np.asarray(w0))
    return np.linalg.solve(A, b)


class TestLMS:
    def test_loop_twin(self):
        u, d, _ = identification_problem(1, 3, 60, [0.5, -0.3, 0.2])
        W, e = lms(u, d, 3, 0.05, w0=[0.1, 0.0, -0.1])
        W2, e2 = lms_loop(u, d, 3, 0.05, w0=[0.1, 0.0, -0.1])
        assert W.shape == (3, 60, 3) and e.shape == (3, 60)
        close(W, W2, rtol=SELF, what="LMS vs loop")
        close(e, e2, rtol=SELF, what="LMS errors vs loop")

    def test_first_steps_by_hand(self):
        u, d = np.array([1.0, 2.0, -1.0]), np.array([0.5, 1.0, 0.0])
        W, e = lms(u, d, 2, 0.1)
        # n = 0: u_0 = (1, 0), e = 0.5, w = (0.05, 0); n = 1: u_1 = (2, 1), e = 1 − 0.1 = 0.9, w = (0.23, 0.09)
        close(W[:2], [[0.05, 0.0], [0.23, 0.09]], rtol=ORACLE, what="LMS by hand")
        close(e[:2], [0.5, 0.9], rtol=ORACLE, what="LMS errors by hand")

    def test_converges_to_wiener_solution(self):
        h = np.array([0.8, -0.4, 0.2, 0.1])
        u, d, w_o = identification_problem(2, 20, 3000, h)
        W, _ = lms(u, d, 4, 0.01)
        w_mean = W[:, 2000:, :].mean(axis=(0, 1))
        assert np.max(np.abs(w_mean - w_o)) < 0.02  # misadjustment band for μ = 0.01, 20 runs
        assert np.max(np.abs(W[:, 0, :].mean(0) - w_o)) > 0.3  # it did have to move

    def test_errors(self):
        with pytest.raises(ValueError, match="^d: expected the shape of u"):
            lms(np.ones(5), np.ones(4), 2, 0.1)
        with pytest.raises(ValueError, match="^mu: "):
            lms(np.ones(5), np.ones(5), 2, -0.1)
        with pytest.raises(ValueError, match="^n_taps: "):
            lms_loop(np.ones(5), np.ones(5), 0, 0.1)
        with pytest.raises(ValueError, match="^w0: expected shape \\(2,\\)"):
            lms(np.ones(5), np.ones(5), 2, 0.1, w0=[1.0])
        with pytest.raises(ValueError, match="^u: expected finite"):
            lms_loop([1.0, np.nan], [1.0, 1.0], 1, 0.1)

    @pytest.mark.parametrize("func", [lms, lms_loop])
    def test_divergence_names_mu(self, func):
        # moderate inputs, a step size above 2/λ_max(R): the weights overflow, and the error names mu
        u = np.random.default_rng(3).normal(size=3000)
        with pytest.raises(ValueError, match="^mu: the LMS recursion diverged"):
            func(u, u, 4, 3.0)
        # an extreme input is still named as such
        with pytest.raises(ValueError, match="^u \\(\\|u\\| from"):
            func(u * 1e200, u, 4, 0.1)

    @pytest.mark.parametrize("func", [lms, lms_loop])
    def test_divergence_below_the_mean_bound(self, func):
        # white unit-power input, M = 16: R ≈ I, so the mean converges for μ < 2/λ_max ≈ 2, but the mean square
        # (independent Gaussian regressors) only for μ < 2/(M + 2) = 0.11. At μ = 0.5 the weights overflow; the
        # message must not cite the mean bound as sufficient (the user satisfies it) but the mean-square condition.
        u = np.random.default_rng(11).normal(size=3000)
        with pytest.raises(ValueError, match="^mu: the LMS recursion diverged") as err:
            func(u, u, 16, 0.5)
        msg = str(err.value)
        assert "only the mean" in msg and "mean-square" in msg and "mu < 2/(3 tr R)" in msg
        assert "mu < 2/((M + 2) s2)" in msg

    def test_misadjustment_independence_theory(self):
        # white Gaussian input, M = 8, μ = 0.3 μ_max (μ_max = 2/(M + 2)): the misadjustment J_ex/J_min of a tapped
        # delay line matches the independence theory ζ/(1 − ζ), ζ = Mμ/(2(1 − μ)) (Feuer & Weinstein 1985), here
        # 0.343; the first-order μ tr R / 2 = 0.24 and a step of 2μ (1.20) lie far outside the band.
        m, mu, runs, n = 8, 0.3 * 2 / 10, 300, 3000
        rng = np.random.default_rng(12)
        u = rng.normal(size=(runs, n))
        h = rng.normal(size=m) / np.sqrt(m)
        d = np.stack([np.convolve(x, h)[:n] for x in u]) + 0.1 * rng.normal(size=(runs, n))  # J_min = 0.01
        _, e = lms(u, d, m, mu)
        per_run = (e[:, -2000:] ** 2).mean(axis=1) / 0.01 - 1
        zeta = m * mu / (2 * (1 - mu))
        # a fixed band of 10 % (0.034): the run average scatters by 0.004 (one standard error; measured over seeds
        # 12-15: within 0.006 of the theory), and at 0.6 μ_max, where the tapped delay line departs from the theory,
        # the heavy-tailed runs would inflate a band taken from their own spread
        assert abs(per_run.mean() - zeta / (1 - zeta)) < 0.1 * zeta / (1 - zeta), (per_run.mean(), zeta / (1 - zeta))


class TestRLS:
    @pytest.mark.parametrize(("lam", "delta"), [(1.0, 1e-2), (0.95, 1.0)])
    def test_loop_twin(self, lam, delta):
        u, d, _ = identification_problem(3, 2, 50, [0.5, -0.3, 0.2])
        W, e = rls(u, d, 3, lam, delta, w0=[0.2, 0.0, 0.0])
        W2, e2 = rls_loop(u, d, 3, lam, delta, w0=[0.2, 0.0, 0.0])
        close(W, W2, rtol=SELF, what="RLS vs loop")
        close(e, e2, rtol=SELF, what="RLS errors vs loop")

    @pytest.mark.parametrize(("lam", "delta"), [(1.0, 1e-3), (0.97, 0.5), (0.9, 10.0)])
    def test_exact_weighted_least_squares(self, lam, delta):
        u, d, _ = identification_problem(4, 1, 80, [0.5, -0.3, 0.2])
        w0 = np.array([0.1, -0.2, 0.3])
        W, _ = rls(u, d, 3, lam, delta, w0=w0)
        for n in (0, 5, 79):
            close(W[0, n], rls_least_squares(u[0], d[0], 3, lam, delta, n, w0), rtol=1e-9,
                  what="RLS vs weighted least squares")

    @pytest.mark.parametrize("delta", [1e-10, 1e-20, 1e-300])
    @pytest.mark.parametrize("lam", [1.0, 0.99])
    @pytest.mark.parametrize("silent_start", [0, 50])
    def test_tiny_delta_stays_least_squares(self, delta, lam, silent_start):
        """δ tiny against the input power: the recursion from P_0 = I/δ subtracts numbers of size 1/δ, with
        rounding errors proportional to 2⁻⁵³/δ (at δ = 1e-20 it can lose P entirely and freeze the weights,
        chapter 6, §6.3); rls takes P from the information form where the update would cancel, also when the
        input starts silent."""
        u, d, _ = identification_problem(3, 1, 400, [0.5, -0.3, 0.2])
        u[:, :silent_start] = 0.0
        W, _ = rls(u, d, 3, lam, delta)
        for n in (silent_start + 10, 200, 399):  # steps where the samples span the taps: well posed
            close(W[0, n], rls_least_squares(u[0], d[0], 3, lam, delta, n), rtol=1e-12,
                  what=f"RLS at n = {n} vs weighted least squares")

    def test_covariance_windup(self):
        # λ = 0.9 and 1000 samples without excitation: P grows like λ⁻ⁿ (1e46) and λⁿδ becomes tiny; when the input
        # returns, rls still gives the weighted least squares (6.8) (the recursion as written, rls_loop, is off by
        # about 1e-4 here). 8000 silent samples overflow P (λ⁻ⁿ = 1e366): both twins name lam and the wind-up.
        rng = np.random.default_rng(8)
        lam, m = 0.9, 4
        uu = np.r_[rng.normal(size=100), np.zeros(1000), rng.normal(size=60)]
        dd = np.convolve(uu, [0.8, -0.4, 0.25, 0.1])[: uu.size] + 0.1 * rng.normal(size=uu.size)
        W, _ = rls(uu, dd, m, lam, 1e-2)
        for n in (1100 + m, uu.size - 1):
            close(W[n], rls_least_squares(uu, dd, m, lam, 1e-2, n), rtol=1e-12,
                  what=f"RLS after a wound-up stretch, n = {n}, vs weighted least squares")
        silent = np.r_[rng.normal(size=50), np.zeros(8000), rng.normal(size=10)]
        for func in (rls, rls_loop):
            with pytest.raises(ValueError, match="^lam: the RLS recursion overflowed float64") as err:
                func(silent, silent, 2, lam, 1e-2)
            assert "covariance wind-up" in str(err.value)
        # an extreme argument is still named as such
        with pytest.raises(ValueError, match=r"^lam \(\|lam\| from 1e-300"):
            rls(uu, dd, 3, lam=1e-300)

    @pytest.mark.parametrize("func", [rls, rls_loop])
    def test_windup_without_silence(self, func):
        # u is never silent, but a constant excites only the direction (1, 1) of the regressors: P⁻¹ only shrinks by λ
        # in the direction (1, −1), so 8000 samples at λ = 0.9 overflow P (λ⁻⁸⁰⁰⁰ = 1e366), and the message must not
        # blame a silent stretch alone. With λ = 1, P does not grow: no error, and w_1 + w_2 fits d = 0.5 u.
        u = np.ones(8000)
        with pytest.raises(ValueError, match="^lam: the RLS recursion overflowed float64") as err:
            func(u, 0.5 * u, 2, 0.9, 1e-2)
        assert "covariance wind-up" in str(err.value) and "a constant" in str(err.value)
        W, _ = func(u, 0.5 * u, 2, 1.0, 1e-2)
        assert abs(W[-1].sum() - 0.5) < 1e-6

    def test_converges_to_wiener_solution(self):
        h = np.array([0.8, -0.4, 0.2, 0.1])
        u, d, w_o = identification_problem(5, 10, 3000, h)
        W, _ = rls(u, d, 4, 1.0, 1e-2)
        # the LS estimate has covariance ≈ σ_noise² R^{-1} / N per run: a 5-sigma band for the mean of 10 runs
        r_true = 0.6 ** np.arange(4) / (1 - 0.6**2)
        sd = 0.1 / np.sqrt(np.linalg.eigvalsh(scipy.linalg.toeplitz(r_true))[0])
        assert np.max(np.abs(W[:, -1, :].mean(0) - w_o)) < sd * mc_band(10 * 3000)

    def test_errors(self):
        with pytest.raises(ValueError, match="^lam: expected a forgetting factor in \\(0, 1\\]"):
            rls(np.ones(5), np.ones(5), 2, 1.5)
        with pytest.raises(ValueError, match="^delta: "):
            rls_loop(np.ones(5), np.ones(5), 2, 1.0, 0.0)
        with pytest.raises(ValueError, match="^lam: "):
            rls(np.ones(5), np.ones(5), 2, 0.0)


# ---------------------------------------------------------------------------------------------
class TestBeamforming:
    def test_steering_vector(self):
        a = steering_vector(np.array([0.0, np.pi / 6]), 4, 0.5)
        assert a.shape == (2, 4)
        assert_close(a[0], np.ones(4), rtol=0.0)  # broadside: all sensors in phase
        close(a[1], np.exp(-1j * np.pi * 0.5 * np.arange(4)), rtol=ORACLE, what="steering at 30°")

    @pytest.mark.parametrize(("m", "spacing", "theta0"), [(8, 0.5, 0.3), (5, 0.5, -0.9), (10, 1.0, 0.2)])
    def test_das_beampattern_is_dirichlet(self, m, spacing, theta0):
        theta = np.linspace(-np.pi / 2, np.pi / 2, 721)
        w = das_weights(theta0, m, spacing)
        B = beampattern(w, theta, spacing)
        # ψ = 2π(d/λ)(sin θ − sin θ0) carries a rounding error ~ 2π(d/λ)ε and the kernel's slope is O(M):
        # attainable agreement ~ M·2π(d/λ)·ε·(a few) ≈ 1e-13 … 1e-12
        close(B, dirichlet_beampattern(theta, theta0, m, spacing), rtol=1e-11, what="DAS beampattern vs Dirichlet")
        close(B, beampattern_loop(w, theta, spacing), rtol=SELF, what="beampattern vs loop")
        assert abs(np.sum(w.conj() * steering_vector(theta0, m, spacing)) - 1) < 1e-14  # distortionless

    def test_beampattern_is_fft_of_aperture(self):
        # on the grid ψ_k = 2πk/K (spatial frequency), |wᴴ a|² = |FFT(conj w)|² up to the sign of ψ
        m, K = 8, 64
        w = np.random.default_rng(6).normal(size=m) + 1j * np.random.default_rng(7).normal(size=m)
        psi = 2 * np.pi * np.arange(K) / K
        # a_m = e^{−iψm}, u = sin θ = ψ/(2π·spacing); spacing 1/2 → sin θ = ψ/π, wrap to [−1, 1]
        s = psi / np.pi
        s = np.where(s > 1, s - 2, s)
        theta = np.arcsin(np.clip(s, -1, 1))
        close(beampattern(w, theta), np.abs(np.fft.fft(w.conj(), K)) ** 2, rtol=1e-12, what="beampattern vs FFT")

    def test_grating_lobes(self):
        # spacing = λ: a second full-gain lobe where sin θ − sin θ_0 = ±1
        assert_close(dirichlet_beampattern(np.arcsin(np.sin(0.2) - 1.0), 0.2, 10, 1.0), 1.0, rtol=1e-12)

    def test_mvdr_white_noise_is_das(self):
        a = steering_vector(0.4, 9)
        close(mvdr_weights(3.0 * np.eye(9), a), das_weights(0.4, 9), rtol=ORACLE, what="MVDR(σ²I) = DAS")

    @settings(max_examples=25)
    @given(seed=st.integers(0, 2**31), m=st.integers(2, 8), theta0=st.floats(-1.4, 1.4))
    def test_mvdr_properties(self, seed, m, theta0):
        rng = np.random.default_rng(seed)
        R = random_psd(rng, m) + 0.1 * np.eye(m)
        a = steering_vector(theta0, m)
        w = mvdr_weights(R, a)
        assert abs(w.conj() @ a - 1) < 1e-10  # distortionless, Eq. (6.13)
        close(w, mvdr_weights_loop(R, a), rtol=SELF, what="hypothesis: MVDR vs loop")
        p_mvdr = np.real(w.conj() @ R @ w)
        wd = das_weights(theta0, m)
        assert p_mvdr <= np.real(wd.conj() @ R @ wd) * (1 + 1e-10)  # MVDR minimizes the power
        close(p_mvdr, capon_spectrum(R, theta0), rtol=1e-10, what="MVDR power = Capon spectrum")
        # independent closed form: w ∝ R^{-1} a via an explicit inverse
        wi = np.linalg.inv(R) @ a
        close(w, wi / (a.conj() @ wi), rtol=1e-9, what="MVDR vs explicit inverse")

    def test_null_deepens_with_interferer_power(self):
        m, th0, thi = 10, 0.0, 0.5
        ai = steering_vector(thi, m)
        depths = []
        for power in (1.0, 10.0, 100.0, 1000.0):
            R = np.eye(m) + power * np.outer(ai, ai.conj())
            depths.append(beampattern(mvdr_weights(R, steering_vector(th0, m)), thi))
        assert all(x > y for x, y in zip(depths, depths[1:]))
        assert depths[-1] < 1e-5 * beampattern(das_weights(th0, m), thi)

    def test_capon_peaks_at_sources(self):
        rng = np.random.default_rng(8)
        m, T = 12, 400
        doas = np.array([-0.4, 0.25])
        S = (rng.normal(size=(T, 2)) + 1j * rng.normal(size=(T, 2))) * np.array([3.0, 2.0])
        x = S @ steering_vector(doas, m) + 0.5 * (rng.normal(size=(T, m)) + 1j * rng.normal(size=(T, m)))
        R = sample_covariance(x)
        grid = np.linspace(-1.2, 1.2, 2401)
        P = capon_spectrum(R, grid)
        close(P, capon_spectrum_loop(R, grid), rtol=SELF, what="Capon vs loop")
        peaks = np.where((P[1:-1] > P[:-2]) & (P[1:-1] > P[2:]))[0] + 1
        top = np.sort(grid[peaks[np.argsort(P[peaks])[-2:]]])
        assert np.max(np.abs(top - doas)) < 0.01
        Pb = bartlett_spectrum(R, grid)
        assert np.all(P <= Pb * (1 + 1e-10))  # Capon ≤ Bartlett everywhere

    def test_sample_covariance_and_beamform(self):
        rng = np.random.default_rng(9)
        x = rng.normal(size=(50, 4)) + 1j * rng.normal(size=(50, 4))
        R = sample_covariance(x)
        ref = sum(np.outer(xt, xt.conj()) for xt in x) / 50
        close(R, ref, rtol=ORACLE, what="sample covariance vs outer products")
        assert np.linalg.eigvalsh(R)[0] > 0
        w = das_weights(0.1, 4)
        close(beamform(x, w), np.array([w.conj() @ xt for xt in x]), rtol=ORACLE, what="beamform y = wᴴx")
        # rank-deficient R (T < M) needs loading
        Rs = sample_covariance(x[:2])
        with pytest.raises(ValueError, match="^R: expected a nonsingular covariance"):
            mvdr_weights(Rs, steering_vector(0.1, 4))
        w_loaded = mvdr_weights(Rs, steering_vector(0.1, 4), loading=1e-2)
        assert abs(w_loaded.conj() @ steering_vector(0.1, 4) - 1) < 1e-12

    @pytest.mark.parametrize("func", [mvdr_weights, mvdr_weights_loop])
    def test_mvdr_errors(self, func):
        with pytest.raises(ValueError, match="^R: expected a square matrix"):
            func(np.ones((2, 3)), np.ones(2))
        with pytest.raises(ValueError, match="^R: expected a Hermitian"):
            func(np.array([[1.0, 2.0], [0.0, 1.0]]), np.ones(2))
        with pytest.raises(ValueError, match="^R: expected a positive semidefinite"):
            func(np.diag([1.0, -1.0]), np.ones(2))
        with pytest.raises(ValueError, match="^steering: expected a last dimension of M = 2"):
            func(np.eye(2), np.ones(3))
        with pytest.raises(ValueError, match="^loading: "):
            func(np.eye(2), np.ones(2), loading=-1.0)
        with pytest.raises(ValueError, match="^R: expected finite"):
            func(np.full((2, 2), np.nan), np.ones(2))

    def test_other_errors(self):
        with pytest.raises(ValueError, match="^n_sensors: "):
            steering_vector(0.1, 0)
        with pytest.raises(ValueError, match="^spacing: "):
            das_weights(0.1, 4, spacing=0.0)
        with pytest.raises(ValueError, match="^theta: expected finite"):
            beampattern(np.ones(3), [np.nan])
        with pytest.raises(ValueError, match="^w: expected 1 dimensions"):
            beampattern_loop(np.ones((2, 2)), [0.0])
        with pytest.raises(ValueError, match="^theta0: expected 0 dimensions"):
            dirichlet_beampattern([0.0], [0.1, 0.2], 4)
        with pytest.raises(ValueError, match="^x: expected at least one snapshot"):
            sample_covariance(np.ones((0, 3)))
        with pytest.raises(ValueError, match="^x: expected a last dimension of M = 3"):
            beamform(np.ones((5, 2)), np.ones(3))
        with pytest.raises(ValueError, match="^R: expected a square matrix"):
            capon_spectrum_loop(np.ones((2, 3)), [0.0])


class TestExtremeScales:
    """Scale-invariant computations stay exact at 1e±300; the others refuse by name (never NaN)."""

    def test_mvdr_rescales(self):
        from refimpl.classical import mvdr_weights, mvdr_weights_loop

        rng = np.random.default_rng(3)
        g = rng.normal(size=(4, 4))
        R, a = g @ g.T + np.eye(4), np.exp(1j * 0.7 * np.arange(4))
        w = mvdr_weights(R, a)
        for c in (1e300, -1e300, 1e-300, 3.0):
            # w(c a) = w(a)/conj(c), and w does not depend on the scale of R
            assert_close(mvdr_weights(R, c * a) * np.conj(c), w, rtol=ORACLE, what=f"MVDR, steering x {c:g}")
            assert_close(mvdr_weights_loop(R, c * a) * np.conj(c), w, rtol=ORACLE, what=f"MVDR loop, steering x {c:g}")
            assert_close(mvdr_weights(abs(c) * R, a), w, rtol=ORACLE, what=f"MVDR, R x {abs(c):g}")
        with pytest.raises(ValueError, match="^steering: expected nonzero look directions"):
            mvdr_weights(R, np.zeros(4))

    def test_normalized_matched_filter_rescales(self):
        from refimpl.classical import matched_filter, matched_filter_loop

        rng = np.random.default_rng(4)
        r, s = rng.normal(size=20), rng.normal(size=5)
        y = matched_filter(r, s, normalize=True)
        for c in (1e300, 1e-300, -1e-300):
            for f in (matched_filter, matched_filter_loop):
                assert_close(f(r, c * s, normalize=True), np.sign(c) * y, rtol=ORACLE, what=f"{f.__name__}, s x {c:g}")
                assert_close(f(c * r, s, normalize=True), np.sign(c) * y, rtol=ORACLE, what=f"{f.__name__}, r x {c:g}")

    def test_refusals_name_the_argument(self):
        from refimpl.classical import autocorrelation, das_weights, lms, rls, sample_covariance

        rng = np.random.default_rng(5)
        u, d = rng.normal(size=20), rng.normal(size=20)
        with pytest.raises(ValueError, match=r"^lam \(\|lam\| from 1e-300"):
            rls(u, d, 3, lam=1e-300)  # 1/λ overflows P: refused, not 231 NaN
        with pytest.raises(ValueError, match=r"^u \(\|u\| from"):
            lms(u * 1e300, d, 3, 0.05)
        with pytest.raises(ValueError, match=r"^x \(\|x\| from"):
            sample_covariance(rng.normal(size=(10, 3)) * 1e300)
        with pytest.raises(ValueError, match=r"^x: expected finite values"):
            autocorrelation([1.0, np.nan, 2.0], 2)
        with pytest.raises(ValueError, match=r"^n_lags: expected at most N = 2 \(the length of x\)"):
            autocorrelation([1.0, 2.0], 3)
        with pytest.raises(TypeError, match=r"^theta0: expected a number or array"):
            das_weights(None, 4)
        with pytest.raises(TypeError, match=r"^normalize: expected a bool"):
            from refimpl.classical import matched_filter

            matched_filter(u, u[:3], normalize="no")
