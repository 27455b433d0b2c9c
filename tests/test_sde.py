"""Tests of :mod:`refimpl.sde`: the linear Itô SDE, its exact discretization and sampling.

Oracles: ``scipy.linalg.expm`` for the transition matrix, Van Loan's block exponential for the
discrete process noise, ``scipy.linalg.solve_continuous_lyapunov`` for the stationary
covariance, the exact Euler–Maruyama moment recursion written out in the test, and Monte Carlo
with fixed seeds and bands stated in standard errors. Tolerances: :mod:`refimpl._testing`.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

from _recording import recorder  # noqa: E402 (tests/ is on sys.path)
from _oracles import random_psd, van_loan  # noqa: E402
from refimpl import lyapunov
from refimpl._testing import ORACLE, SELF
from refimpl.sde import (
    MAX_COND,
    LinearSDE,
    discretize,
    discretize_loop,
    euler_maruyama,
    moments,
    moments_loop,
    sample,
    sample_loop,
    spiral_system,
    transition_matrix,
    transition_matrix_loop,
)

EPS = np.finfo(np.float64).eps
SPIRAL_A = np.array([[0.9, -2.0], [1.0, -1.1]])
SPIRAL_S = np.array([[1 - 1j, 1 + 1j], [1, 1]])
EIG2 = ([-1.0, -2.0], np.eye(2), [1.0, 1.0])  # valid from_eigen arguments

#: worst error seen per oracle (printed by conftest when REFIMPL_WORST_ERRORS=1)
WORST_ERRORS, close, record = recorder()


# ---------------------------------------------------------------------------------------------
# Test systems and independent oracles
# ---------------------------------------------------------------------------------------------


def random_real_drift(rng, d, *, margin=(0.05, 0.8), max_cond=50.0):
    """A random real, stable, diagonalizable A (generic real matrices are) with cond(S) <= max_cond."""
    while True:
        B = rng.normal(size=(d, d)) / np.sqrt(d)
        lam, S = np.linalg.eig(B)
        if np.linalg.cond(S) <= max_cond:
            return B - (lam.real.max() + rng.uniform(*margin)) * np.eye(d)


def random_real_model(rng, d, p=None):
    p = d if p is None else p
    A = random_real_drift(rng, d)
    return LinearSDE.from_matrices(A, random_psd(rng, d), C=rng.normal(size=(p, d)), R=random_psd(rng, p) / p)


def random_complex_model(rng, d=3):
    """Eigenvalues that are not conjugate pairs: a genuinely complex (circular) model."""
    eigvals = rng.uniform(-0.8, -0.1, d) + 1j * rng.uniform(-2, 2, d)
    while True:
        S = rng.normal(size=(d, d)) + 1j * rng.normal(size=(d, d))
        if np.linalg.cond(S) < 10:
            break
    return LinearSDE.from_eigen(eigvals, S, rng.uniform(0.2, 1.0, d), measurement_noise=rng.uniform(0.1, 0.5, d))


def expm_2x2(A, t):
    """e^{At} of a real 2x2 matrix in closed form (Cayley–Hamilton; chapter 1, §1.3): B = A − (tr A/2) I has
    B² = r² I with r² = −det B, so e^{At} = e^{t tr A/2} (cosh(rt) I + sinh(rt)/r B), cos and sin of |r|t for r² < 0."""
    s = 0.5 * (A[0, 0] + A[1, 1])
    B = A - s * np.eye(2)
    r2 = B[0, 0] ** 2 + B[0, 1] * B[1, 0]
    r = np.sqrt(abs(r2))
    if r2 >= 0:
        c, f = np.cosh(r * t), (np.sinh(r * t) / r if r > 0 else t)
    else:
        c, f = np.cos(r * t), np.sin(r * t) / r
    return np.exp(s * t) * (c * np.eye(2) + f * B)


def mc_check(samples, mean, cov, *, n_sigma=5.0, extra_mean=0.0, extra_cov=0.0, what="", record_it=True):
    """Sample mean and covariance (centred at the true mean) within n_sigma standard errors.

    samples (n, d); for the mean the standard error is sqrt(P_ii/n); for the covariance entry
    (i, j) of a Gaussian, Var(x_i x_j) = P_ii P_jj + |P_ij|^2, so sqrt((P_ii P_jj + |P_ij|^2)/n).
    ``extra_*`` add a known deterministic bias (e.g. the O(h) bias of Euler–Maruyama).
    """
    n = samples.shape[0]
    dev = samples - mean
    m_hat = samples.mean(axis=0)
    c_hat = dev.T @ dev.conj() / n
    pii = np.real(np.diagonal(cov))
    se_mean = np.sqrt(pii / n)
    se_cov = np.sqrt((np.outer(pii, pii) + np.abs(cov) ** 2) / n)
    z_mean = np.abs(m_hat - mean) / (n_sigma * se_mean + extra_mean)
    z_cov = np.abs(c_hat - cov) / (n_sigma * se_cov + extra_cov)
    if record_it:
        record(f"MC {what} (fraction of the {n_sigma:g}σ band)", float(max(z_mean.max(), z_cov.max())), 1.0)
    assert np.all(z_mean <= 1), f"{what}: mean outside the band: {m_hat} vs {mean} (se {se_mean})"
    assert np.all(z_cov <= 1), f"{what}: covariance outside the band:\n{c_hat}\nvs\n{cov}\n(se {se_cov})"


# ---------------------------------------------------------------------------------------------
# LinearSDE.from_matrices
# ---------------------------------------------------------------------------------------------


class TestFromMatrices:
    @pytest.mark.parametrize("d, seed", [(1, 0), (2, 1), (4, 2), (6, 3)])
    def test_eigendecomposition(self, d, seed):
        rng = np.random.default_rng(seed)
        A = random_real_drift(rng, d)
        Q = random_psd(rng, d)
        m = LinearSDE.from_matrices(A, Q)
        assert m.is_real and m.A.dtype == np.float64 and m.Q.dtype == np.float64
        assert m.dim == d and m.obs_dim == d
        np.testing.assert_array_equal(m.C, np.eye(d))
        np.testing.assert_array_equal(m.R, np.zeros((d, d)))
        close((m.S * m.eigvals) @ m.S_inv, A, rtol=1e-13, what="A = S Λ S^-1")
        close(m.S_inv @ m.S, np.eye(d), rtol=1e-13, what="S^-1 S = I")
        np.testing.assert_array_equal(m.noise, m.noise.conj().T)  # G̃ Hermitian (exactly)
        close(m.S @ m.noise @ m.S.conj().T, Q, rtol=1e-13, what="S G̃ S^† = Q")
        assert np.linalg.eigvalsh(m.noise).min() >= -1e-13 * np.abs(m.noise).max()
        assert m.cond == pytest.approx(np.linalg.cond(m.S), rel=1e-12)

    @pytest.mark.parametrize("d, seed", [(2, 4), (3, 5), (5, 6)])
    def test_transition_vs_expm(self, d, seed):
        rng = np.random.default_rng(seed)
        A = random_real_drift(rng, d)
        m = LinearSDE.from_matrices(A, random_psd(rng, d))
        np.testing.assert_allclose(m.transition(0.0), np.eye(d), rtol=0, atol=1e-14)
        for dt in (0.0, 1e-8, 0.1, 1.0, 7.3, 30.0):
            close(m.transition(dt), scipy.linalg.expm(A * dt), rtol=1e-12, what="transition vs expm")
        dts = np.array([[0.0, 0.25, 1.5], [3.0, 0.01, 12.0]])
        F = m.transition(dts)
        assert F.shape == (2, 3, d, d) and F.dtype == np.float64
        for idx in np.ndindex(dts.shape):
            close(F[idx], scipy.linalg.expm(A * dts[idx]), rtol=1e-12, what="transition vs expm")
        # negative lags are the pushed-back map e^{-Aτ} = (e^{Aτ})^{-1}
        close(m.transition(-2.0) @ m.transition(2.0), np.eye(d), rtol=1e-12, what="e^{-Aτ} e^{Aτ} = I")

    @pytest.mark.parametrize("d, seed", [(2, 7), (3, 8), (5, 9)])
    def test_process_noise_vs_van_loan(self, d, seed):
        rng = np.random.default_rng(seed)
        A = random_real_drift(rng, d)
        Q = random_psd(rng, d)
        m = LinearSDE.from_matrices(A, Q)
        for dt in (0.0, 0.1, 1.0, 7.3):
            Qd = m.process_noise_covariance(dt)
            assert Qd.dtype == np.float64
            np.testing.assert_array_equal(Qd, Qd.T)
            assert np.linalg.eigvalsh(Qd).min() >= -1e-13 * max(np.abs(Qd).max(), 1e-300)
            if dt == 0:
                np.testing.assert_array_equal(Qd, 0.0)
            else:
                close(Qd, van_loan(A, Q, dt), rtol=ORACLE, what="Q_d vs Van Loan")
        dts = np.array([0.2, 0.5, 3.0])
        Qds = m.process_noise_covariance(dts)
        assert Qds.shape == (3, d, d)
        for i, dt in enumerate(dts):
            close(Qds[i], van_loan(A, Q, dt), rtol=ORACLE, what="Q_d vs Van Loan")

    @pytest.mark.parametrize("d, seed", [(2, 10), (4, 11)])
    def test_stationary_covariance(self, d, seed):
        rng = np.random.default_rng(seed)
        A = random_real_drift(rng, d)
        Q = random_psd(rng, d)
        m = LinearSDE.from_matrices(A, Q)
        P = m.stationary_covariance()
        assert P.dtype == np.float64
        close(P, scipy.linalg.solve_continuous_lyapunov(A, -Q), rtol=ORACLE, what="P_∞ vs solve_continuous_lyapunov")
        close(m.process_noise_covariance(2e3), P, rtol=ORACLE, what="Q_d(τ→∞) = P_∞")

    def test_unstable_has_no_stationary_covariance(self):
        m = LinearSDE.from_matrices(np.array([[0.1, -1.0], [1.0, 0.1]]), np.eye(2))
        with pytest.raises(ValueError, match="eigvals"):
            m.stationary_covariance()
        close(m.transition(1.0), scipy.linalg.expm(m.A), rtol=1e-12, what="transition vs expm")

    def test_measurement_model(self):
        rng = np.random.default_rng(12)
        A = random_real_drift(rng, 3)
        C = rng.normal(size=(2, 3))
        R = random_psd(rng, 2)
        m = LinearSDE.from_matrices(A, np.eye(3), C=C, R=R)
        assert m.obs_dim == 2 and m.C.shape == (2, 3) and m.R.shape == (2, 2)
        np.testing.assert_array_equal(m.C, C)
        close(m.R, R, rtol=1e-15, what="R stored")

    def test_complex_drift(self):
        rng = np.random.default_rng(13)
        A = random_real_drift(rng, 3) + 1j * rng.normal(size=(3, 3)) * 0.3
        Q = random_psd(rng, 3, complex_=True)
        m = LinearSDE.from_matrices(A, Q)
        assert not m.is_real and m.A.dtype == np.complex128
        close(m.transition(1.3), scipy.linalg.expm(1.3 * A), rtol=1e-12, what="transition vs expm (complex)")
        close(m.process_noise_covariance(1.3), van_loan(A, Q, 1.3), rtol=ORACLE, what="Q_d vs Van Loan (complex)")


# ---------------------------------------------------------------------------------------------
# LinearSDE.from_eigen and spiral_system
# ---------------------------------------------------------------------------------------------


class TestFromEigen:
    @pytest.mark.parametrize("sigma2, eta2", [(0.0, 1.0), (0.3, 0.5), (0.5, 2.0)])
    def test_spiral_system(self, sigma2, eta2):
        m = spiral_system(sigma2, eta2)
        assert m.is_real
        for arr in (m.A, m.Q, m.C, m.R):
            assert arr.dtype == np.float64
        np.testing.assert_allclose(m.A, SPIRAL_A, rtol=0, atol=1e-15)
        SSh = SPIRAL_S @ SPIRAL_S.conj().T  # [[4, 2], [2, 2]], real
        np.testing.assert_allclose(m.Q, sigma2 * SSh.real, rtol=0, atol=1e-15)
        np.testing.assert_allclose(m.R, eta2 * SSh.real, rtol=0, atol=1e-15)
        np.testing.assert_array_equal(np.sort_complex(m.eigvals), [-0.1 - 1j, -0.1 + 1j])
        close(m.transition(1.0), scipy.linalg.expm(SPIRAL_A), rtol=1e-12, what="spiral transition vs expm")

    def test_spiral_defaults_are_a_paper_setting(self):
        m = spiral_system()
        np.testing.assert_allclose(m.Q, 0.3 * np.array([[4.0, 2.0], [2.0, 2.0]]), rtol=0, atol=1e-15)

    def test_from_matrices_agrees(self):
        SSh = np.array([[4.0, 2.0], [2.0, 2.0]])
        a, b = spiral_system(0.3, 0.5), LinearSDE.from_matrices(SPIRAL_A, 0.3 * SSh, R=0.5 * SSh)
        for dt in (0.1, 1.0, 7.3):
            close(b.transition(dt), a.transition(dt), rtol=1e-13, what="from_eigen vs from_matrices")
            Qd_a, Qd_b = a.process_noise_covariance(dt), b.process_noise_covariance(dt)
            close(Qd_b, Qd_a, rtol=1e-13, what="from_eigen vs from_matrices")

    def test_complex_scalar(self):
        m = LinearSDE.from_eigen([-0.1 + 1j], [[1.0]], [0.5])
        assert not m.is_real
        assert m.A.dtype == np.complex128 and m.A.shape == (1, 1)
        np.testing.assert_allclose(m.A, [[-0.1 + 1j]], rtol=0, atol=1e-16)
        np.testing.assert_allclose(m.transition(2.0), [[np.exp((-0.1 + 1j) * 2.0)]], rtol=1e-15)
        # Q_d = σ² (1 − e^{−2μτ})/(2μ) for a scalar complex OU process
        np.testing.assert_allclose(m.process_noise_covariance(2.0), [[0.5 * (1 - np.exp(-0.4)) / 0.2]], rtol=1e-14)

    def test_random_complex_model(self):
        rng = np.random.default_rng(14)
        m = random_complex_model(rng, 3)
        assert not m.is_real
        assert all(np.iscomplexobj(a) for a in (m.A, m.Q, m.R))
        close((m.S * m.eigvals) @ m.S_inv, m.A, rtol=1e-14, what="A = S Λ S^-1")
        close(m.transition(0.7), scipy.linalg.expm(0.7 * m.A), rtol=1e-12, what="transition vs expm (complex)")
        close(m.process_noise_covariance(0.7), van_loan(m.A, m.Q, 0.7), rtol=ORACLE, what="Q_d vs Van Loan (complex)")
        P = m.stationary_covariance()
        P_scipy = scipy.linalg.solve_continuous_lyapunov(m.A, -m.Q)
        close(P, P_scipy, rtol=ORACLE, what="P_∞ vs solve_continuous_lyapunov (complex)")

    def test_full_process_noise_and_measurement_covariance(self):
        rng = np.random.default_rng(15)
        G = random_psd(rng, 2, complex_=True)
        R = random_psd(rng, 3)
        C = rng.normal(size=(3, 2))
        m = LinearSDE.from_eigen([-0.5 + 0.2j, -1.0 - 0.7j], SPIRAL_S, G, measurement_noise=R, C=C)
        close(m.Q, SPIRAL_S @ G @ SPIRAL_S.conj().T, rtol=1e-14, what="Q = S G̃ S^†")
        close(m.R, R, rtol=1e-15, what="R stored")
        assert m.obs_dim == 3

    def test_conjugate_pair_with_unequal_noise_is_complex(self):
        # A real A needs equal noise on the two members of a conjugate pair (chapter 1, §1.3.1).
        m = LinearSDE.from_eigen([-0.1 - 1j, -0.1 + 1j], SPIRAL_S, [0.3, 0.7])
        np.testing.assert_allclose(m.A.real, SPIRAL_A, atol=1e-15)
        assert not m.is_real and np.iscomplexobj(m.Q)


# ---------------------------------------------------------------------------------------------
# Diagonalizability and input validation of the constructors
# ---------------------------------------------------------------------------------------------


class TestValidation:
    def test_jordan_block(self):
        with pytest.raises(ValueError, match=r"^A:.*condition"):
            LinearSDE.from_matrices([[-1.0, 1.0], [0.0, -1.0]], np.eye(2))

    def test_nearly_defective(self):
        # eigenvalues −1 ± 1e-7 with nearly parallel eigenvectors: cond(S) ~ 1e7 > MAX_COND
        with pytest.raises(ValueError, match=r"^A:.*condition"):
            LinearSDE.from_matrices([[-1.0, 1.0], [1e-14, -1.0]], np.eye(2))

    def test_max_cond_keyword(self):
        A = [[-1.0, 1.0], [1e-10, -1.0]]  # cond(S) ~ 1e5 > MAX_COND = 1e3: refused unless asked for
        with pytest.raises(ValueError, match=r"^A:.*max_cond = 1e\+03"):
            LinearSDE.from_matrices(A, np.eye(2))
        m = LinearSDE.from_matrices(A, np.eye(2), max_cond=1e6)
        assert 1e4 < m.cond < 1e6
        with pytest.raises(ValueError, match=r"^A:.*max_cond"):
            LinearSDE.from_matrices(A, np.eye(2), max_cond=1e4)
        m = LinearSDE.from_matrices([[-1.0, 1.0], [1e-14, -1.0]], np.eye(2), max_cond=1e9)
        assert m.cond > 1e6
        for bad in (0.0, -1.0, np.inf, np.nan):
            with pytest.raises(ValueError, match="max_cond"):
                LinearSDE.from_matrices(SPIRAL_A, np.eye(2), max_cond=bad)
        with pytest.raises(TypeError, match="max_cond"):
            LinearSDE.from_matrices(SPIRAL_A, np.eye(2), max_cond="big")

    @pytest.mark.parametrize("seed", [0, 1, 2, 3])
    def test_transition_loses_at_most_cond_eps(self, seed):
        # Chapter 1, §1.3: F = S e^{ΛΔt} S^-1 carries one factor S^-1 and loses up to about cond(S)·ε. Measured
        # against the exact 2x2 closed form (never through S, a few roundings), on A = [[-1, 1], [δ, -1]] rotated at
        # random: refimpl's largest error is 0.7 cond(S)·ε over OpenBLAS kernels; the test allows 2 cond(S)·ε. A
        # transition formed through two factors of S^-1 (error ~cond(S)²·ε) would fail it from δ = 1e-8 on.
        rng = np.random.default_rng(100 + seed)
        rot = np.linalg.qr(rng.normal(size=(2, 2)))[0]
        for delta in (1e-4, 1e-6, 1e-8, 1e-10, 1e-12):
            A = rot @ np.array([[-1.0, 1.0], [delta, -1.0]]) @ rot.T
            m = LinearSDE.from_matrices(A, np.eye(2), max_cond=1e7)
            for dt in (0.1, 1.0, 5.0):
                F_ref = expm_2x2(A, dt)
                err = np.abs(m.transition(dt) - F_ref).max() / np.abs(F_ref).max()
                record("F of a nearly defective A / (cond(S) ε)", err / (m.cond * EPS), 2.0)
                assert err < 2.0 * m.cond * EPS, (delta, dt, err / (m.cond * EPS))

    def test_expm_2x2_oracle(self):
        # the closed form used above, against scipy on random matrices with real and complex eigenvalues,
        # on the Jordan block (r = 0) and on a zero matrix
        rng = np.random.default_rng(7)
        for A in [rng.normal(size=(2, 2)) for _ in range(20)] + [np.array([[-1.0, 1.0], [0.0, -1.0]]), np.zeros((2, 2))]:
            for dt in (0.0, 0.3, 2.0):
                np.testing.assert_allclose(expm_2x2(A, dt), scipy.linalg.expm(A * dt), rtol=1e-13, atol=1e-14)

    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_accuracy_at_the_default_bound(self, seed):
        # The bound is about accuracy: the closed forms lose up to ~cond(S)·ε (F) and ~cond(S)²·ε
        # (Q_d, two factors of S^-1 in G̃). A nearly defective A = [[-1, 1], [δ, -1]] (cond(S) ≈ δ^-1/2),
        # rotated at random, just inside the default bound must still give Q_d to ~1e-10 (MAX_COND
        # = 1e6 would accept Q_d wrong in the 5th digit, and fail this test).
        rng = np.random.default_rng(seed)
        rot = np.linalg.qr(rng.normal(size=(2, 2)))[0]
        A = rot @ np.array([[-1.0, 1.0], [1.02 / MAX_COND**2, -1.0]]) @ rot.T
        Q = random_psd(rng, 2)
        m = LinearSDE.from_matrices(A, Q)  # accepted by default
        assert 0.9 * MAX_COND < m.cond <= MAX_COND
        for dt in (0.1, 1.0, 5.0):
            close(m.transition(dt), scipy.linalg.expm(A * dt), rtol=1e-12, what="F at the cond(S) bound")
            close(m.process_noise_covariance(dt), van_loan(A, Q, dt), rtol=1e-9, what="Q_d at the cond(S) bound")
        _, P = moments(m, [0.0, 1.0, 3.0], [1.0, 0.0])
        close(P[1:], np.array([van_loan(A, Q, h) for h in (1.0, 3.0)]), rtol=1e-9, what="moments at the cond(S) bound")

    def test_cond_ignores_the_lengths_of_the_eigenvectors(self):
        # Rescaling the columns of S changes neither the model nor the round-off of the closed forms,
        # so cond is measured with unit columns: a badly scaled but well-conditioned basis is accepted.
        S = SPIRAL_S * np.array([1.0, 1e6])
        m = LinearSDE.from_eigen([-0.1 - 1j, -0.5 + 1j], S, [0.3, 0.7])
        ref = LinearSDE.from_eigen([-0.1 - 1j, -0.5 + 1j], SPIRAL_S, [0.3, 0.7 * 1e12])
        assert m.cond == pytest.approx(spiral_system().cond, rel=1e-12) and m.cond < 3.0
        for dt in (0.1, 2.0):
            close(m.transition(dt), scipy.linalg.expm(m.A * dt), rtol=1e-12, what="F, rescaled eigenvectors")
            close(m.process_noise_covariance(dt), ref.process_noise_covariance(dt), rtol=1e-12,
                  what="Q_d, rescaled eigenvectors")
            close(m.process_noise_covariance(dt), van_loan(m.A, m.Q, dt), rtol=ORACLE, what="Q_d vs Van Loan, rescaled")
        with pytest.raises(ValueError, match=r"^S:.*condition number inf"):
            LinearSDE.from_eigen([-1.0, -2.0], [[1.0, 0.0], [0.0, 0.0]], [1.0, 1.0])

    def test_singular_S(self):
        with pytest.raises(ValueError, match=r"^S:"):
            LinearSDE.from_eigen([-1.0, -2.0], [[1.0, 2.0], [2.0, 4.0]], [1.0, 1.0])
        with pytest.raises(ValueError, match=r"^S:"):
            LinearSDE.from_eigen([-1.0, -2.0], [[1.0, 1.0], [1.0, 1.0 + 1e-9]], [1.0, 1.0])

    @pytest.mark.parametrize(
        "A, Q, kwargs, exc, match",
        [
            (np.ones((2, 3)), np.eye(2), {}, ValueError, "A"),
            (np.ones(3), np.eye(3), {}, ValueError, "A"),
            ([[-1.0, np.nan], [0.0, -1.0]], np.eye(2), {}, ValueError, "A"),
            ("A", np.eye(2), {}, TypeError, "A"),
            (SPIRAL_A, np.eye(3), {}, ValueError, "Q"),
            (SPIRAL_A, np.ones(2), {}, ValueError, "Q"),
            (SPIRAL_A, [[1.0, 0.5], [0.2, 1.0]], {}, ValueError, "Q"),  # not symmetric
            (SPIRAL_A, [[1.0, 2.0], [2.0, 1.0]], {}, ValueError, "Q"),  # eigenvalue −1
            (SPIRAL_A, [[-1e-3, 0.0], [0.0, 1.0]], {}, ValueError, "Q"),
            (SPIRAL_A, [[1.0, np.inf], [np.inf, 1.0]], {}, ValueError, "Q"),
            (SPIRAL_A, None, {}, TypeError, "Q"),
            (SPIRAL_A, np.eye(2), {"C": np.ones((3, 3))}, ValueError, "C"),
            (SPIRAL_A, np.eye(2), {"C": np.ones(2)}, ValueError, "C"),
            (SPIRAL_A, np.eye(2), {"C": np.ones((3, 2)), "R": np.eye(2)}, ValueError, "R"),
            (SPIRAL_A, np.eye(2), {"R": [[1.0, 2.0], [2.0, 1.0]]}, ValueError, "R"),
        ],
    )
    def test_from_matrices_errors(self, A, Q, kwargs, exc, match):
        with pytest.raises(exc, match=f"^{match}:"):
            LinearSDE.from_matrices(A, Q, **kwargs)

    @pytest.mark.parametrize(
        "args, kwargs, exc, match",
        [
            (([-1.0, -2.0], np.eye(3), [1.0, 1.0]), {}, ValueError, "S"),
            (([[-1.0, -2.0]], np.eye(2), [1.0, 1.0]), {}, ValueError, "eigvals"),
            (([-1.0, np.nan], np.eye(2), [1.0, 1.0]), {}, ValueError, "eigvals"),
            (([-1.0, -2.0], np.eye(2), [1.0, -1.0]), {}, ValueError, "process_noise"),
            (([-1.0, -2.0], np.eye(2), [1.0, 1.0, 1.0]), {}, ValueError, "process_noise"),
            (([-1.0, -2.0], np.eye(2), [[1.0, 2.0], [2.0, 1.0]]), {}, ValueError, "process_noise"),
            (EIG2, {"measurement_noise": [1.0, -1.0]}, ValueError, "measurement_noise"),
            (EIG2, {"measurement_noise": [1.0, 1.0], "C": [[1.0, 0.5], [0.0, 1.0]]}, ValueError, "measurement_noise"),
            (EIG2, {"measurement_noise": [1.0, 1.0], "C": np.ones((1, 2))}, ValueError, "measurement_noise"),
            (EIG2, {"measurement_noise": np.eye(3), "C": np.ones((2, 2))}, ValueError, "measurement_noise"),
            (([-1.0, -2.0], np.eye(2), [1.0, 1.0]), {"C": np.ones((2, 3))}, ValueError, "C"),
        ],
    )
    def test_from_eigen_errors(self, args, kwargs, exc, match):
        with pytest.raises(exc, match=f"^{match}:"):
            LinearSDE.from_eigen(*args, **kwargs)

    def test_model_type(self):
        for func in (transition_matrix, transition_matrix_loop):
            with pytest.raises(TypeError, match="^model:"):
                func("spiral", 1.0)
        for func in (discretize, discretize_loop, sample, sample_loop, euler_maruyama):
            with pytest.raises(TypeError, match="^model:"):
                func(SPIRAL_A, [0.0, 1.0])
        with pytest.raises(TypeError, match="^model:"):
            moments(None, [0.0, 1.0], [0.0, 0.0])

    @pytest.mark.parametrize("func", [discretize, discretize_loop, sample, sample_loop, euler_maruyama])
    @pytest.mark.parametrize(
        "t, exc, match",
        [
            ([0.0, 1.0, 1.0], ValueError, "strictly increasing"),
            ([0.0, 2.0, 1.0], ValueError, "strictly increasing"),
            ([[0.0, 1.0]], ValueError, "^t:"),
            ([], ValueError, "^t:"),
            ([0.0, np.nan], ValueError, "^t:"),
            ([0.0, 1j], TypeError, "^t:"),
            ("0 1 2", TypeError, "^t:"),
        ],
    )
    def test_time_stamps(self, func, t, exc, match):
        with pytest.raises(exc, match=match):
            func(spiral_system(), t)

    def test_time_stamp_message_names_t(self):
        with pytest.raises(ValueError, match=r"^t: expected strictly increasing"):
            moments(spiral_system(), [0.0, 1.0, 0.5], [1.0, 0.0])


# ---------------------------------------------------------------------------------------------
# transition_matrix and discretize
# ---------------------------------------------------------------------------------------------

DT_CASES = [0.37, np.array([0.0, 0.1, 1.0, 7.3]), np.array([[0.5, 2.0, 0.0], [1e-6, 3.0, 10.0]])]


class TestTransitionMatrix:
    @pytest.mark.parametrize("dt_index", range(len(DT_CASES)))
    @pytest.mark.parametrize("kind", ["spiral", "real", "complex"])
    def test_loop_twin(self, dt_index, kind):
        rng = np.random.default_rng(20)
        m = {"spiral": spiral_system(), "real": random_real_model(rng, 4), "complex": random_complex_model(rng)}[kind]
        dt = DT_CASES[dt_index]
        F = transition_matrix(m, dt)
        assert F.shape == np.shape(dt) + (m.dim, m.dim)
        assert F.dtype == (np.float64 if m.is_real else np.complex128)
        close(transition_matrix_loop(m, dt), F, rtol=SELF, what="transition loop twin")
        close(F, m.transition(dt), rtol=0.0, what="transition_matrix = model.transition")
        flat = np.reshape(dt, -1)
        for i, tau in enumerate(flat):
            close(F.reshape(-1, m.dim, m.dim)[i], scipy.linalg.expm(m.A * tau), rtol=1e-12, what="transition vs expm")

    @pytest.mark.parametrize("func", [transition_matrix, transition_matrix_loop])
    def test_errors(self, func):
        m = spiral_system()
        with pytest.raises(ValueError, match="^dt:"):
            func(m, -0.1)
        with pytest.raises(ValueError, match="^dt:"):
            func(m, [1.0, -1e-9])
        with pytest.raises(ValueError, match="^dt:"):
            func(m, np.nan)
        with pytest.raises(TypeError, match="^dt:"):
            func(m, "1")

    @pytest.mark.parametrize("func", [transition_matrix, transition_matrix_loop, "method"])
    def test_overflow_is_refused(self, func):
        # e^{0.5·2000} is not representable: a named error, never NaN/inf with only a warning
        m = LinearSDE.from_matrices(np.array([[0.5, 0.0], [0.0, -1.0]]), np.eye(2))
        f = m.transition if func == "method" else (lambda dt: func(m, dt))
        close(f(100.0), np.diag(np.exp([50.0, -100.0])), rtol=1e-12, what="unstable mode, representable lag")
        with warnings.catch_warnings():  # no floating-point warning either
            warnings.simplefilter("error")
            with pytest.raises(ValueError, match=r"^dt, model: .*overflows float64.*Re λ_k·Δt = 1000"):
                f([1.0, 2000.0])

    @settings(max_examples=30)
    @given(seed=st.integers(0, 2**32 - 1), d=st.integers(1, 4), dt1=st.floats(0.0, 5.0), dt2=st.floats(0.0, 5.0))
    def test_semigroup(self, seed, d, dt1, dt2):
        # F(a + b) = F(a) F(b) and the Chapman–Kolmogorov law of the noise
        # Q_d(a + b) = Q_d(a) + F(a) Q_d(b) F(a)^T.
        rng = np.random.default_rng(seed)
        m = random_real_model(rng, d)
        Fa, Fb, Fab = m.transition([dt1, dt2, dt1 + dt2])
        close(Fa @ Fb, Fab, rtol=1e-12, what="semigroup F(a+b) = F(a)F(b)")
        Qa, Qb, Qab = m.process_noise_covariance([dt1, dt2, dt1 + dt2])
        if dt1 + dt2 > 0:
            close(Qa + Fa @ Qb @ Fa.T, Qab, rtol=1e-12, what="Q_d(a+b) = Q_d(a) + F(a) Q_d(b) F(a)^T")

    @settings(max_examples=30)
    @given(seed=st.integers(0, 2**32 - 1), d=st.integers(1, 4), dt1=st.floats(0.0, 20.0), ddt=st.floats(0.0, 20.0))
    def test_process_noise_psd_and_monotone(self, seed, d, dt1, ddt):
        rng = np.random.default_rng(seed)
        m = random_real_model(rng, d)
        Q1, Q2 = m.process_noise_covariance([dt1, dt1 + ddt])
        for Qd in (Q1, Q2):
            np.testing.assert_array_equal(Qd, Qd.T)
            assert np.linalg.eigvalsh(Qd).min() >= -1e-12 * max(np.abs(Qd).max(), 1e-300)
        assert np.linalg.eigvalsh(Q2 - Q1).min() >= -1e-12 * max(np.abs(Q2).max(), 1e-300)

    @pytest.mark.parametrize("mu", [0.0, 1e-9, 1e-5])
    def test_undamped_modes_take_the_limit_of_eq_1_6(self, mu):
        # (1.6) is 0/0 where λ_k + λ_l^* = 0 (the diagonal of an undamped mode, μ_k = 0) and cancels near it;
        # the limit is Σ_kk = G̃_kk Δt. Eigenvalues −μ and −μ ± i with a full G̃, against Van Loan (never through S).
        # Built with from_matrices, the model has LAPACK's eigenvalues, whose real parts at μ = 0 are rounding errors
        # (of order 1e-16 on the machines measured; in general not exactly 0): the literal quotient is then not 0/0
        # but a cancellation. Against the exact φ of the same z it was measured off by up to 100 % at μ = 0 (Δt = 1e-3,
        # where e^{zΔt} − 1 rounds to 0) and by up to 2e-5 at μ = 1e-9, so it fails this test at rtol = ORACLE.
        # The exact 0/0 point is test_exact_zero_eigenvalues_take_the_limit_of_eq_1_6.
        T = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.2, 0.0, 1.0]])
        core = np.array([[-mu, -1.0, 0.0], [1.0, -mu, 0.0], [0.0, 0.0, -mu]])
        A = T @ core @ np.linalg.inv(T)
        Q = np.array([[1.0, 0.3, -0.2], [0.3, 0.8, 0.1], [-0.2, 0.1, 0.6]])
        m = LinearSDE.from_matrices(A, Q)
        assert np.abs(m.noise - np.diag(np.diag(m.noise))).max() > 0.05  # a full G̃
        lags = np.array([1e-3, 0.5, 2.0, 7.0])
        for dt, Qd in zip(lags, m.process_noise_covariance(lags)):
            close(Qd, van_loan(A, Q, dt), rtol=ORACLE, what="Q_d of an undamped model vs Van Loan")
        if mu == 0.0:
            Sigma = (m.S_inv @ m.process_noise_covariance(lags) @ m.S_inv.conj().T)
            close(np.diagonal(Sigma, axis1=1, axis2=2), np.diag(m.noise)[None, :] * lags[:, None], rtol=1e-12,
                  what="Σ_kk = G̃_kk Δt at μ = 0")

    def test_exact_zero_eigenvalues_take_the_limit_of_eq_1_6(self):
        # The 0/0 point itself: eigenvalues exactly i, −i and 0 (from_eigen keeps them), so λ_k + λ_k^* = 0 exactly on
        # the whole diagonal of Σ, where the literal quotient of (1.6) is NaN. A full G̃ (the same A and Q as the
        # μ = 0 model above), against Σ_kk = G̃_kk Δt and against Van Loan (never through S).
        T = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.2, 0.0, 1.0]])
        A = T @ np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]) @ np.linalg.inv(T)
        Q = np.array([[1.0, 0.3, -0.2], [0.3, 0.8, 0.1], [-0.2, 0.1, 0.6]])
        S = T @ np.array([[1, 1, 0], [-1j, 1j, 0], [0, 0, 1]]) / np.sqrt(2)  # eigenvectors for i, −i, 0
        S_inv = np.linalg.inv(S)
        m = LinearSDE.from_eigen([1j, -1j, 0.0], S, S_inv @ Q @ S_inv.conj().T)
        assert m.is_real and np.all(m.eigvals.real == 0)
        assert np.abs(m.noise - np.diag(np.diag(m.noise))).max() > 0.1  # a full G̃
        close(m.A, A, rtol=1e-13, what="from_eigen rebuilds A")
        close(m.Q, Q, rtol=1e-13, what="from_eigen rebuilds Q")
        lags = np.array([0.0, 1e-3, 0.5, 2.0, 7.0])
        Sigma = lyapunov.dle_covariance(m.eigvals, m.noise, lags)
        assert np.all(np.isfinite(Sigma))
        close(np.diagonal(Sigma, axis1=1, axis2=2), np.diag(m.noise)[None, :] * lags[:, None], rtol=1e-13,
              what="Σ_kk = G̃_kk Δt at λ_k + λ_k^* = 0 exactly")
        Qd = m.process_noise_covariance(lags)
        for dt, q in zip(lags[1:], Qd[1:]):
            close(q, van_loan(A, Q, dt), rtol=ORACLE, what="Q_d with exact zero real parts vs Van Loan")
        np.testing.assert_array_equal(Qd[0], np.zeros((3, 3)))


class TestDiscretize:
    @pytest.mark.parametrize("kind", ["spiral", "real", "complex"])
    def test_irregular_grid(self, kind):
        rng = np.random.default_rng(21)
        m = {"spiral": spiral_system(), "real": random_real_model(rng, 3), "complex": random_complex_model(rng)}[kind]
        t = np.cumsum(rng.exponential(0.7, size=9)) - 0.3
        F, Qd = discretize(m, t)
        assert F.shape == Qd.shape == (8, m.dim, m.dim)
        Fl, Qdl = discretize_loop(m, t)
        close(Fl, F, rtol=SELF, what="discretize loop twin")
        close(Qdl, Qd, rtol=SELF, what="discretize loop twin")
        for i, dt in enumerate(np.diff(t)):
            close(F[i], scipy.linalg.expm(m.A * dt), rtol=1e-12, what="discretize F vs expm")
            close(Qd[i], van_loan(m.A, m.Q, dt), rtol=ORACLE, what="discretize Q_d vs Van Loan")
            np.testing.assert_array_equal(Qd[i], Qd[i].conj().T)

    @pytest.mark.parametrize("func", [discretize, discretize_loop])
    def test_overflow_names_t(self, func):
        m = LinearSDE.from_matrices(np.array([[0.5, 0.0], [0.0, -1.0]]), np.eye(2))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ValueError, match=r"^t, model: .*overflows float64"):
                func(m, [0.0, 1.0, 2001.0])
        for bad in (-1.0, [0.5, -1e-9]):
            with pytest.raises(ValueError, match=r"^dt: expected lags >= 0"):
                m.process_noise_covariance(bad)

    def test_single_time_stamp(self):
        m = spiral_system()
        for func in (discretize, discretize_loop):
            F, Qd = func(m, [3.0])
            assert F.shape == Qd.shape == (0, 2, 2)


# ---------------------------------------------------------------------------------------------
# moments
# ---------------------------------------------------------------------------------------------


class TestMoments:
    @pytest.mark.parametrize("kind", ["spiral", "real", "complex"])
    def test_loop_twin_and_closed_form(self, kind):
        rng = np.random.default_rng(22)
        m = {"spiral": spiral_system(), "real": random_real_model(rng, 3), "complex": random_complex_model(rng)}[kind]
        d = m.dim
        t = np.concatenate([[0.5], 0.5 + np.cumsum(rng.uniform(0.05, 2.0, size=7))])
        m0 = rng.normal(size=d)
        P0 = random_psd(rng, d, complex_=not m.is_real) * 0.1
        mean, P = moments(m, t, m0, P0)
        assert mean.shape == (8, d) and P.shape == (8, d, d)
        ml, Pl = moments_loop(m, t, m0, P0)
        close(ml, mean, rtol=SELF, what="moments loop twin (composition of steps)")
        close(Pl, P, rtol=SELF, what="moments loop twin (composition of steps)")
        for i, ti in enumerate(t):
            F = scipy.linalg.expm(m.A * (ti - t[0]))
            close(mean[i], F @ m0, rtol=1e-12, what="moments mean vs expm")
            expected = F @ P0 @ F.conj().T + van_loan(m.A, m.Q, ti - t[0])
            close(P[i], expected, rtol=1e-12, what="moments P vs expm + Van Loan")
        close(P[0], 0.5 * (P0 + P0.conj().T), rtol=1e-14, what="moments P(t0) = P0")  # F(0) = S S^-1 ≈ I

    def test_stationary_is_invariant(self):
        m = spiral_system(0.5, 2.0)
        P_inf = m.stationary_covariance()
        mean, P = moments(m, [0.0, 0.3, 5.0, 100.0], [0.0, 0.0], P_inf)
        close(P, np.broadcast_to(P_inf, P.shape), rtol=ORACLE, what="stationary covariance is invariant")
        np.testing.assert_array_equal(mean, 0.0)

    @pytest.mark.parametrize("func", [moments, moments_loop])
    def test_errors(self, func):
        m = spiral_system()
        with pytest.raises(ValueError, match="^m0:"):
            func(m, [0.0, 1.0], [0.0, 0.0, 0.0])
        with pytest.raises(ValueError, match="^P0:"):
            func(m, [0.0, 1.0], [0.0, 0.0], np.eye(3))
        with pytest.raises(ValueError, match="^P0:"):
            func(m, [0.0, 1.0], [0.0, 0.0], [[1.0, 2.0], [2.0, 1.0]])
        with pytest.raises(ValueError, match="^t:"):
            func(m, [1.0, 0.0], [0.0, 0.0])
        unstable = LinearSDE.from_matrices(np.array([[0.5, 0.0], [0.0, -1.0]]), np.eye(2))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ValueError, match=r"^t, model: .*overflows float64"):
                func(unstable, [0.0, 1000.0, 2000.0], [1.0, 1.0])


# ---------------------------------------------------------------------------------------------
# sample
# ---------------------------------------------------------------------------------------------


class TestSample:
    @pytest.mark.parametrize(
        "kind, size, x0",
        [
            ("spiral", None, None),
            ("spiral", (2, 3), [1.0, -2.0]),
            ("spiral", 4, "batch"),
            ("real", (3,), None),
            ("complex", None, None),
            ("complex", (2, 2), "batch"),
        ],
    )
    def test_loop_twin(self, kind, size, x0):
        rng = np.random.default_rng(23)
        make = {
            "spiral": spiral_system,
            "real": lambda: random_real_model(rng, 3, p=2),
            "complex": lambda: random_complex_model(rng),
        }
        m = make[kind]()
        t = np.concatenate([[0.0], np.cumsum(rng.uniform(0.01, 1.5, size=11))])  # irregular
        shape = () if size is None else (size,) if isinstance(size, int) else size
        if isinstance(x0, str):
            x0 = rng.normal(size=shape + (m.dim,))
        x, z = sample(m, t, x0=x0, size=size, rng=7)
        assert x.shape == shape + (t.size, m.dim) and z.shape == shape + (t.size, m.obs_dim)
        assert x.dtype == z.dtype == (np.float64 if m.is_real else np.complex128)
        xl, zl = sample_loop(m, t, x0=x0, size=size, rng=7)
        close(xl, x, rtol=1e-12, what="sample loop twin (same seed)")
        close(zl, z, rtol=1e-12, what="sample loop twin (same seed)")
        # x(t_0) = x0 (up to the round trip through the eigenbasis, x0 -> S^-1 x0 -> S S^-1 x0)
        start = np.broadcast_to(0.0 if x0 is None else x0, shape + (m.dim,))
        close(x[..., 0, :], start, rtol=1e-14, what="sample x(t0) = x0")
        # an int seed and a Generator seeded with it draw the same paths
        x2, _ = sample(m, t, x0=x0, size=size, rng=np.random.default_rng(7))
        np.testing.assert_array_equal(x2, x)
        x3, _ = sample(m, t, x0=x0, size=size, rng=8)
        assert not np.allclose(x3, x)

    @pytest.mark.parametrize("kind", ["spiral", "complex"])
    def test_noiseless_is_deterministic(self, kind):
        rng = np.random.default_rng(24)
        if kind == "spiral":
            m = spiral_system(0.0, 0.0)
        else:
            eigvals = np.array([-0.3 + 1j, -0.1 - 0.4j, -0.7 + 0.2j])
            S = np.eye(3) + 0.3 * (rng.normal(size=(3, 3)) + 1j * rng.normal(size=(3, 3)))
            m = LinearSDE.from_eigen(eigvals, S, np.zeros(3))
        t = np.array([0.0, 0.4, 0.5, 2.0, 9.0])
        x0 = rng.normal(size=(3, m.dim))
        for func in (sample, sample_loop):
            x, z = func(m, t, x0=x0, size=3, rng=1)
            expected = np.einsum("nij,bj->bni", np.array([scipy.linalg.expm(m.A * (ti - t[0])) for ti in t]), x0)
            close(x, expected, rtol=1e-12, what="noiseless sample = e^{A(t−t0)} x0")
            close(z, x, rtol=1e-15, what="noiseless measurements = x")

    def test_monte_carlo_moments(self):
        # 20000 exact paths of the spiral (σ² = 0.3, η² = 0.5) from x0 = (1, −0.5) on an irregular
        # grid: sample mean and covariance within 5 standard errors of `moments`, for x and z.
        m = spiral_system(0.3, 0.5)
        t = np.array([0.0, 0.3, 1.1, 2.0, 6.5])
        x0 = np.array([1.0, -0.5])
        n = 20000
        x, z = sample(m, t, x0=x0, size=n, rng=20260701)
        mean, P = moments(m, t, x0)
        for i in (1, 2, 4):
            mc_check(x[:, i], mean[i], P[i], what="sample x vs moments")
            mc_check(z[:, i], m.C @ mean[i], m.C @ P[i] @ m.C.T + m.R, what="sample z vs C P C^T + R")

    def test_monte_carlo_complex_model(self):
        m = random_complex_model(np.random.default_rng(25))
        t = np.array([0.0, 0.5, 3.0])
        x0 = np.array([1.0, 1j, -0.5])
        x, z = sample(m, t, x0=x0, size=20000, rng=3)
        mean, P = moments(m, t, x0)
        for i in (1, 2):
            mc_check(x[:, i], mean[i], P[i], what="complex sample x vs moments")
            mc_check(z[:, i], m.C @ mean[i], m.C @ P[i] @ m.C.conj().T + m.R, what="complex sample z vs moments")
            # circular noise: the pseudo-covariance E[(x − m)(x − m)^T] vanishes
            dev = x[:, i] - mean[i]
            pseudo = dev.T @ dev / dev.shape[0]
            pii = np.real(np.diagonal(P[i]))
            assert np.all(np.abs(pseudo) <= 5 * np.sqrt(np.outer(pii, pii) / dev.shape[0]))

    def test_monte_carlo_can_fail(self):
        # The band is tight enough to see a 10 % error in the covariance (guards against a vacuous test).
        m = spiral_system(0.3, 0.5)
        x, _ = sample(m, [0.0, 2.0], size=20000, rng=11)
        _, P = moments(m, [0.0, 2.0], [0.0, 0.0])
        with pytest.raises(AssertionError):
            mc_check(x[:, 1], np.zeros(2), 1.1 * P[1], what="deliberately wrong covariance", record_it=False)
        mc_check(x[:, 1], np.zeros(2), P[1], what="sample x vs moments")  # while the right one passes

    @pytest.mark.parametrize("func", [sample, sample_loop])
    def test_errors(self, func):
        m = spiral_system()
        t = [0.0, 1.0]
        with pytest.raises(ValueError, match="^x0:"):
            func(m, t, x0=[1.0, 2.0, 3.0])
        with pytest.raises(ValueError, match="^x0:"):
            func(m, t, x0=np.zeros((3, 2)), size=4)
        with pytest.raises(ValueError, match="^x0:"):
            func(m, t, x0=1.0)
        with pytest.raises(TypeError, match="^x0:"):
            func(m, t, x0=[1j, 0.0])
        with pytest.raises(ValueError, match="^size:"):
            func(m, t, size=-1)
        with pytest.raises(ValueError, match="^size:"):
            func(m, t, size=(2, -3))
        for bad in (1.5, "ab", (2.5,), ("3",), True, (True,)):
            with pytest.raises(TypeError, match="^size:"):
                func(m, t, size=bad)
        for bad in (1.5, "seed", True, np.random.RandomState(0)):
            with pytest.raises(TypeError, match="^rng:"):
                func(m, t, rng=bad)
        unstable = LinearSDE.from_matrices(np.array([[0.5, 0.0], [0.0, -1.0]]), np.eye(2))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ValueError, match=r"^t, model: .*overflows float64"):
                func(unstable, [0.0, 2000.0], x0=[1.0, 1.0], rng=0)


# ---------------------------------------------------------------------------------------------
# euler_maruyama
# ---------------------------------------------------------------------------------------------


def em_exact_moments(A, Q, m0, h, n_steps):
    """The exact mean and covariance of the EM chain x ← (I + hA) x + G ΔW, Cov ΔW = h I."""
    B = np.eye(A.shape[0]) + h * A
    mean, P = np.asarray(m0, dtype=float), np.zeros_like(Q)
    for _ in range(n_steps):
        mean, P = B @ mean, B @ P @ B.T + h * Q
    return mean, P


class TestEulerMaruyama:
    def test_matches_recursion_written_out(self):
        # x_{n+1} = x_n + h A x_n + Q^{1/2} ΔW_n with the given increments, on an irregular grid.
        rng = np.random.default_rng(30)
        m = random_real_model(rng, 3)
        t = np.array([0.0, 0.3, 0.35, 1.0])
        k = 4
        x0 = rng.normal(size=(2, 3))
        dW = rng.normal(size=(2, 3 * k, 3))
        x = euler_maruyama(m, t, x0=x0, n_substeps=k, size=2, dW=dW)
        G = np.real(scipy.linalg.sqrtm(m.Q))
        h = np.repeat(np.diff(t) / k, k)
        ref = np.empty((2, 4, 3))
        state = x0.copy()
        ref[:, 0] = state
        for n in range(3 * k):
            state = state + h[n] * state @ m.A.T + dW[:, n] @ G.T
            if (n + 1) % k == 0:
                ref[:, (n + 1) // k] = state
        assert x.shape == (2, 4, 3) and x.dtype == np.float64
        close(x, ref, rtol=1e-13, what="EM vs the recursion written out")

    def test_one_step_differs_from_exact(self):
        # Sanity that the convergence tests can fail: noiseless spiral, one EM step per interval.
        m = spiral_system(0.0, 0.0)
        t = np.array([0.0, 0.5, 1.0, 1.5])
        x0 = np.array([1.0, 0.0])
        exact = transition_matrix(m, t - t[0]) @ x0
        coarse = euler_maruyama(m, t, x0=x0, n_substeps=1, rng=0)
        fine = euler_maruyama(m, t, x0=x0, n_substeps=4000, rng=0)
        assert np.max(np.abs(coarse - exact)) > 0.1
        err_fine = np.max(np.abs(fine - exact))
        assert err_fine < 1e-3
        # first order: halving h halves the deterministic error
        half = euler_maruyama(m, t, x0=x0, n_substeps=8000, rng=0)
        assert np.max(np.abs(half - exact)) == pytest.approx(err_fine / 2, rel=0.01)

    def test_weak_convergence(self):
        # 20000 EM paths of the spiral at T = 2 with h = 0.01: mean and covariance within the 5σ
        # Monte Carlo band of the exact `moments`, widened by EM's deterministic O(h) bias
        # (computed exactly from the EM moment recursion, not estimated).
        m = spiral_system(0.3, 0.5)
        x0 = np.array([1.0, -0.5])
        T, k, n = 2.0, 200, 20000
        x = euler_maruyama(m, [0.0, T], x0=x0, n_substeps=k, size=n, rng=20260702)
        mean, P = moments(m, [0.0, T], x0)
        em_mean, em_P = em_exact_moments(m.A, m.Q, x0, T / k, k)
        bias_mean, bias_P = np.abs(em_mean - mean[1]), np.abs(em_P - P[1])
        # the bias is first order in h: with h/2 it halves
        em_mean2, em_P2 = em_exact_moments(m.A, m.Q, x0, T / (2 * k), 2 * k)
        assert np.max(np.abs(em_P2 - P[1])) == pytest.approx(np.max(bias_P) / 2, rel=0.05)
        assert np.max(np.abs(em_mean2 - mean[1])) == pytest.approx(np.max(bias_mean) / 2, rel=0.05)
        mc_check(x[:, 1], mean[1], P[1], extra_mean=bias_mean, extra_cov=bias_P, what="EM weak (h = 0.01)")
        # and the EM sample agrees with the EM chain's own exact moments at 5σ with no slack
        mc_check(x[:, 1], em_mean, em_P, what="EM vs its exact moment recursion")

    def test_strong_convergence_order_one(self):
        # Strong error E|x_h(T) − x(T)|² ^ (1/2) on the same Brownian paths: fine increments summed
        # in blocks give the coarse runs; a run with h_ref = T/2^13 is the reference.
        # The general theory gives EM strong order 1/2; with additive noise (G constant) the
        # Milstein correction ½ G G' (ΔW² − h) vanishes, EM *is* the Milstein scheme, and the
        # strong order is 1. So the fitted slope of log error vs log h must be ~1.
        m = spiral_system(0.5, 0.0)
        T, n_paths, n_ref = 2.0, 300, 2**13
        rng = np.random.default_rng(20260703)
        dW = rng.standard_normal((n_paths, n_ref, 2)) * np.sqrt(T / n_ref)
        x0 = np.array([1.0, 0.0])
        ref = euler_maruyama(m, [0.0, T], x0=x0, n_substeps=n_ref, size=n_paths, dW=dW)[:, -1]
        steps = np.array([2**4, 2**5, 2**6, 2**7, 2**8])
        errors = []
        for n in steps:
            coarse_dW = dW.reshape(n_paths, n, n_ref // n, 2).sum(axis=2)
            xn = euler_maruyama(m, [0.0, T], x0=x0, n_substeps=int(n), size=n_paths, dW=coarse_dW)[:, -1]
            errors.append(np.sqrt(np.mean(np.sum((xn - ref) ** 2, axis=-1))))
        p = np.polyfit(np.log(T / steps), np.log(errors), 1)[0]
        record("EM strong order (fitted slope, expected 1)", abs(p - 1.0), 0.2)
        assert 0.8 <= p <= 1.2, f"strong order {p:.3f}, errors {errors}"

    def test_causality(self):
        # Perturbing the increments after step k never changes the states up to step k.
        m = spiral_system()
        t = np.arange(6.0)
        rng = np.random.default_rng(31)
        dW = rng.normal(size=(5 * 3, 2)) * np.sqrt(1 / 3)
        x = euler_maruyama(m, t, n_substeps=3, dW=dW)
        dW2 = dW.copy()
        dW2[7:] += rng.normal(size=dW2[7:].shape)  # steps 7.. lie in interval 2 (steps 6, 7, 8)
        x2 = euler_maruyama(m, t, n_substeps=3, dW=dW2)
        np.testing.assert_array_equal(x2[:3], x[:3])
        assert np.all(np.abs(x2[3:] - x[3:]).max(axis=-1) > 0)

    def test_complex_model(self):
        rng = np.random.default_rng(32)
        m = random_complex_model(rng)
        x = euler_maruyama(m, [0.0, 0.5, 1.0], n_substeps=10, size=3, rng=2)
        assert x.shape == (3, 3, 3) and x.dtype == np.complex128
        dW = (rng.normal(size=(20, 3)) + 1j * rng.normal(size=(20, 3))) * np.sqrt(0.05 / 2)
        x = euler_maruyama(m, [0.0, 0.5, 1.0], n_substeps=10, dW=dW)
        G = scipy.linalg.sqrtm(m.Q)
        state = np.zeros(3, dtype=complex)
        for n in range(20):
            state = state + 0.05 * m.A @ state + G @ dW[n]
        close(x[-1], state, rtol=1e-13, what="complex EM vs the recursion written out")

    def test_errors(self):
        m = spiral_system()
        t = [0.0, 1.0, 2.0]
        for bad in (0, -1, 1.5, True, "2"):
            with pytest.raises(ValueError, match="^n_substeps:"):
                euler_maruyama(m, t, n_substeps=bad)
        with pytest.raises(ValueError, match="^dW:"):
            euler_maruyama(m, t, n_substeps=2, dW=np.zeros((3, 2)))
        with pytest.raises(ValueError, match="^dW:"):
            euler_maruyama(m, t, n_substeps=2, size=2, dW=np.zeros((4, 2)))
        with pytest.raises(ValueError, match="^dW:"):
            euler_maruyama(m, t, dW=[[0.0, np.nan], [0.0, 0.0]])
        with pytest.raises(TypeError, match="^rng:"):
            euler_maruyama(m, t, rng=0.5)
        with pytest.raises(ValueError, match="^x0:"):
            euler_maruyama(m, t, x0=[0.0])


def test_euler_maruyama_refuses_an_unused_rng():
    from refimpl import sde as _sde

    model = _sde.spiral_system()
    dW = np.zeros((2, 2))
    x = _sde.euler_maruyama(model, [0.0, 0.5, 1.0], dW=dW, rng=None)
    assert np.all(np.isfinite(x))
    with pytest.raises(ValueError, match="^rng: expected None when dW is given"):
        _sde.euler_maruyama(model, [0.0, 0.5, 1.0], dW=dW, rng=0)
