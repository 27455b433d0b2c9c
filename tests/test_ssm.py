"""Tests of :mod:`refimpl.ssm`: HiPPO, discretization, S4/S4D kernels, recurrent vs convolution, Mamba.

Oracles, each independent of the code under test:

* ``scipy.signal.cont2discrete`` (zoh, bilinear) for Ā, B̄, and ``scipy.signal.dimpulse`` for the
  kernel (one sample delayed, see the module's conventions);
* ``scipy.signal.lfilter`` for scalar (N = 1) recurrences, the EMA and the steady-state Kalman
  filter (its gain from ``scipy.linalg.solve_discrete_are``);
* direct convolution sums ``Σ_j K_j u_{t−j}`` and ``numpy.linalg.matrix_power``;
* ``numpy.polynomial.legendre`` (Gauss–Legendre quadrature, ``legval``) for the HiPPO projection;
* the HiPPO matrix written from its definition entry by entry (annotated-s4 ``make_HiPPO``).

Tolerances come from :mod:`refimpl._testing` (SELF for two algorithms of refimpl, ORACLE against
SciPy/NumPy/closed forms); errors are norm-wise relative.
"""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
import scipy.linalg
import scipy.signal
from hypothesis import given, settings
from hypothesis import strategies as st

from refimpl import ssm
from _recording import recorder  # noqa: E402 (tests/ is on sys.path)
from _oracles import random_hurwitz  # noqa: E402
from refimpl._testing import ORACLE, SELF

#: worst error seen per oracle (printed by conftest when REFIMPL_WORST_ERRORS=1)
WORST_ERRORS, close, record = recorder()


# ---------------------------------------------------------------------------------------------
# Test systems
# ---------------------------------------------------------------------------------------------


def cplx_normal(rng, *shape):
    return rng.normal(size=shape) + 1j * rng.normal(size=shape)


def s4d_lin(H, N):
    return np.broadcast_to(-0.5 + 1j * np.pi * np.arange(N), (H, N)).copy()


def mamba_inputs(rng, shape=(2, 23, 3), n=4, delta_range=(1e-3, 1.0)):
    *batch, L, d = shape
    u = rng.normal(size=shape)
    delta = np.exp(rng.uniform(*np.log(delta_range), size=shape))
    A = -np.exp(rng.normal(size=(d, n)))
    B = rng.normal(size=(*batch, L, n))
    C = rng.normal(size=(*batch, L, n))
    D = rng.normal(size=d)
    return u, delta, A, B, C, D


def direct_conv(u, K):
    """y[..., t, h] = Σ_{j ≤ t} K[h, j] u[..., t − j, h] by the defining sum."""
    L = u.shape[-2]
    y = np.zeros(np.broadcast_shapes(u.shape), dtype=np.result_type(u, K))
    for t in range(L):
        for j in range(t + 1):
            y[..., t, :] += K[:, j] * u[..., t - j, :]
    return y


# ---------------------------------------------------------------------------------------------
# HiPPO-LegS
# ---------------------------------------------------------------------------------------------


class TestHippoLegs:
    @pytest.mark.parametrize("N", [1, 2, 5, 32])
    def test_matches_definition_entry_by_entry(self, N):
        A, B = ssm.hippo_legs(N)
        ref = np.zeros((N, N))
        for n in range(N):
            for k in range(N):
                if n > k:
                    ref[n, k] = -math.sqrt(2 * n + 1) * math.sqrt(2 * k + 1)
                elif n == k:
                    ref[n, k] = -(n + 1)
        close(A, ref, rtol=ORACLE, what="hippo_legs A vs definition")
        close(B, [math.sqrt(2 * n + 1) for n in range(N)], rtol=ORACLE, what="hippo_legs B vs definition")
        assert A.dtype == np.float64 and B.dtype == np.float64

    def test_matches_annotated_s4_make_hippo(self):
        # annotated-s4: P = sqrt(1 + 2 arange); A = P P^T; A = tril(A) − diag(arange); return −A
        N = 16
        P = np.sqrt(1 + 2 * np.arange(N))
        ref = -(np.tril(P[:, None] * P[None, :]) - np.diag(np.arange(N)))
        close(ssm.hippo_legs(N)[0], ref, rtol=ORACLE, what="hippo_legs vs annotated-s4")

    def test_eigenvalues_are_minus_one_to_minus_N(self):
        A, _ = ssm.hippo_legs(10)
        np.testing.assert_array_equal(np.sort(np.diag(A)), -np.arange(10, 0, -1))
        assert np.all(np.triu(A, 1) == 0)

    def test_constant_is_a_fixed_point(self):
        # A e_0 = −B: a constant input is exactly represented by c = f e_0.
        A, B = ssm.hippo_legs(12)
        close(A[:, 0], -B, rtol=ORACLE, what="A e0 = -B")

    @pytest.mark.parametrize("N", [0, -3])
    def test_N_below_one(self, N):
        with pytest.raises(ValueError, match="^N: expected an integer >= 1"):
            ssm.hippo_legs(N)

    @pytest.mark.parametrize("N", [2.0, "4", None, True])
    def test_N_not_an_integer(self, N):
        with pytest.raises(TypeError, match="^N: expected an integer"):
            ssm.hippo_legs(N)

    def test_solves_the_projection_ode(self):
        # Eq. (11.2): the coefficients c_n(t) = (1/t) ∫_0^t f(s) √(2n+1) P_n(2s/t - 1) ds of a smooth f, computed by
        # Gauss–Legendre quadrature, satisfy c'(t) = (A c(t) + B f(t)) / t; c' by a central difference
        N = 8
        A, B = ssm.hippo_legs(N)
        f = lambda s: np.sin(2 * s) + 0.3 * s**2  # noqa: E731
        xg, wg = np.polynomial.legendre.leggauss(80)
        P = np.array([math.sqrt(2 * n + 1) * np.polynomial.legendre.legval(xg, np.eye(N)[n]) for n in range(N)])
        c = lambda t: 0.5 * P @ (wg * f(t * (xg + 1) / 2))  # noqa: E731  (1/t) ∫ ds = (1/2) ∫ dx
        t0, h = 2.0, 1e-4
        dc = (c(t0 + h) - c(t0 - h)) / (2 * h)  # truncation O(h²) ~ 1e-8, round-off ~ 1e-12
        close(dc, (A @ c(t0) + B * f(t0)) / t0, rtol=1e-6, what="HiPPO-LegS ODE (11.2)")


class TestHippoLegsDplr:
    @pytest.mark.parametrize("N", [1, 2, 8, 33, 64])
    def test_reconstructs_A_and_B(self, N):
        Lam, P, Bt, V = ssm.hippo_legs_dplr(N)
        A, B = ssm.hippo_legs(N)
        close(V @ (np.diag(Lam) - np.outer(P, P.conj())) @ V.conj().T, A, rtol=ORACLE, what="DPLR reconstructs A")
        close(V @ Bt, B, rtol=ORACLE, what="DPLR reconstructs B")
        close(V.conj().T @ V, np.eye(N), rtol=ORACLE, what="V unitary")

    def test_real_part_is_minus_one_half(self):
        Lam, *_ = ssm.hippo_legs_dplr(40)
        np.testing.assert_array_equal(Lam.real, -0.5)

    def test_normal_part_is_skew_plus_shift(self):
        # A + p p^T = −I/2 + S with S = −S^T (the NPLR identity, Eq. 11.11)
        N = 20
        A, _ = ssm.hippo_legs(N)
        p = np.sqrt(np.arange(N) + 0.5)
        S = A + np.outer(p, p) + 0.5 * np.eye(N)
        np.testing.assert_allclose(S, -S.T, rtol=0, atol=1e-13)

    def test_N_below_one(self):
        with pytest.raises(ValueError, match="^N:"):
            ssm.hippo_legs_dplr(0)


class TestDirectDiagonalizationFails:
    """What S4 avoids: the eigenvector matrix of HiPPO-LegS is astronomically ill-conditioned."""

    def test_condition_number_explodes(self):
        conds = {N: np.linalg.cond(np.linalg.eig(ssm.hippo_legs(N)[0])[1]) for N in (8, 16, 32)}
        assert conds[8] > 1e4 and conds[16] > 1e10
        assert conds[32] > 1e17  # saturated: the closed form gives 1.2e23 (test_closed_form_condition_number)
        assert conds[8] < conds[16] < conds[32]
        # the DPLR basis is unitary: condition number 1
        V = ssm.hippo_legs_dplr(32)[3]
        assert np.linalg.cond(V) < 1 + 1e-10

    def test_eigenvector_entries_grow_like_phi_squared(self):
        # S4 Lemma 3.2: V_nk = C(n+k, n-k). Row n sums to the Fibonacci number F_{2n+1}, so the largest entry lies
        # in [F_{2n+1}/(n+1), F_{2n+1}]: growth φ^{2N} ≈ 2^{1.3885 N}; the lemma's 2^{4N/3} (entry V_{3i,i}) is a lower bound
        fib = [0, 1]
        while len(fib) < 300:
            fib.append(fib[-1] + fib[-2])
        for n in range(140):
            row = [math.comb(n + k, n - k) for k in range(n + 1)]
            assert sum(row) == fib[2 * n + 1]
            assert fib[2 * n + 1] <= (n + 1) * max(row)
        n = 4999
        logs = [math.lgamma(n + k + 1) - math.lgamma(n - k + 1) - math.lgamma(2 * k + 1) for k in range(n + 1)]
        rate = max(logs) / math.log(2) / (n + 1)
        phi = (1 + math.sqrt(5)) / 2
        assert 4 / 3 < rate < math.log2(phi**2)
        assert abs(int(np.argmax(logs)) / n - 1 / math.sqrt(5)) < 1e-3

    def test_closed_form_condition_number(self):
        # cond of the unit-column eigenvector matrix from the closed form (V unit lower triangular: V^{-1} exact integers)
        def cond(N):
            V = [[math.comb(n + k, n - k) if n >= k else 0 for k in range(N)] for n in range(N)]
            Vi = [[0] * N for _ in range(N)]
            for j in range(N):
                for i in range(j, N):
                    Vi[i][j] = (i == j) - sum(V[i][m] * Vi[m][j] for m in range(j, i))
            s = (-1.0) ** np.arange(N) * np.sqrt(2 * np.arange(N) + 1.0)
            norms = np.sqrt(np.array([sum((2 * n + 1) * V[n][k] ** 2 for n in range(N)) for k in range(N)], dtype=float))
            W, Wi = s[:, None] * np.array(V, dtype=float) / norms, norms[:, None] * np.array(Vi, dtype=float) / s
            if N <= 16:  # (at N = 32 the float64 product Wi @ W itself loses all digits)
                close(Wi @ W, np.eye(N), rtol=1e-6, what="closed-form inverse")
            return np.linalg.norm(W, 2) * np.linalg.norm(Wi, 2)
        A8 = ssm.hippo_legs(8)[0]
        close(cond(8), np.linalg.cond(np.linalg.eig(A8)[1]), rtol=1e-6, what="cond at N = 8, closed form vs eig")
        assert 1.1e23 < cond(32) < 1.3e23

    def test_eigendecomposition_reconstructs_garbage(self):
        A, _ = ssm.hippo_legs(32)
        w, V = np.linalg.eig(A)
        np.testing.assert_array_equal(np.sort(w.real), -np.arange(32, 0, -1))  # eigenvalues are fine...
        recon = V @ np.diag(w) @ np.linalg.inv(V)
        assert np.max(np.abs(recon - A)) / np.max(np.abs(A)) > 1.0  # ...V diag(w) V^{-1} is not A

    def test_kernel_through_eigenbasis_is_wrong_dplr_is_right(self):
        rng = np.random.default_rng(0)
        N, L, step = 32, 256, 0.01
        A, B = ssm.hippo_legs(N)
        C = rng.normal(size=N)
        K = ssm.ssm_kernel(*ssm.discretize(A, B, step), C, L)
        w, V = np.linalg.eig(A)
        K_eig = ssm.s4d_kernel(w, np.linalg.solve(V, B), C @ V, step, L, method="bilinear")
        assert np.max(np.abs(K_eig - K)) / np.max(np.abs(K)) > 1.0
        Lam, P, Bt, Vd = ssm.hippo_legs_dplr(N)
        close(ssm.s4_kernel_dplr(Lam, P, P, Bt, C @ Vd, step, L), K, rtol=SELF, what="DPLR kernel vs powers (N=32)")


class TestHippoOnline:
    def test_constant_signal_is_exact(self):
        u = np.full((50, 2), 3.0)
        u[:, 1] = -1.5
        c = ssm.hippo_legs_online(u, 8)
        expected = np.zeros((50, 2, 8))
        expected[:, 0, 0], expected[:, 1, 0] = 3.0, -1.5
        close(c, expected, rtol=ORACLE, what="LegS constant fixed point")

    def test_converges_to_the_legendre_projection(self):
        f = lambda s: np.sin(3 * s) + s**2  # noqa: E731  on s ∈ [0, 1]
        N = 8
        xg, wg = np.polynomial.legendre.leggauss(60)
        sg = (xg + 1) / 2
        exact = np.array(
            [0.5 * np.sum(wg * f(sg) * math.sqrt(2 * n + 1) * np.polynomial.legendre.legval(xg, np.eye(N)[n])) for n in range(N)]
        )
        errs = []
        for L in (200, 400, 800):
            u = f(np.arange(1, L + 1) / L)[:, None]
            errs.append(np.max(np.abs(ssm.hippo_legs_online(u, N)[-1, 0] - exact)))
        assert errs[2] < 5e-3
        assert 1.7 < errs[0] / errs[1] < 2.3 and 1.7 < errs[1] / errs[2] < 2.3  # first order in 1/L

    def test_running_mean_of_an_impulse_decays_like_one_over_t_plus_half(self):
        # c_0 alone obeys (1 + 1/(2t)) c_t = (1 - 1/(2t)) c_{t-1} + f_t / t (A_00 = -1, B_0 = 1, Eq. (11.4)), so after
        # an impulse c_0(t) (t + 1/2) is constant: the discretized 1/t forgetting of the chapter's §11.1
        f = np.zeros((300, 1))
        f[49] = 1.0
        c0 = ssm.hippo_legs_online(f, 6)[:, 0, 0]
        t = np.arange(51, 301)
        close(c0[t - 1] * (t + 0.5), np.full(t.size, c0[49] * 50.5), rtol=ORACLE, what="c_0 (t + 1/2)")

    def test_batch_axes(self):
        rng = np.random.default_rng(1)
        u = rng.normal(size=(3, 20, 2))
        c = ssm.hippo_legs_online(u, 5)
        assert c.shape == (3, 20, 2, 5)
        close(c[1], ssm.hippo_legs_online(u[1], 5), rtol=ORACLE, what="LegS batch")

    def test_bad_input(self):
        with pytest.raises(ValueError, match="^u:"):
            ssm.hippo_legs_online(np.ones(5), 3)
        with pytest.raises(ValueError, match="^N:"):
            ssm.hippo_legs_online(np.ones((5, 1)), 0)


class TestLegsReconstruct:
    def test_matches_legval(self):
        rng = np.random.default_rng(2)
        c = rng.normal(size=(3, 7))
        x = np.linspace(-1, 1, 41)
        ref = np.array([np.polynomial.legendre.legval(x, ci * np.sqrt(2 * np.arange(7) + 1)) for ci in c])
        close(ssm.legs_reconstruct(c, x), ref, rtol=ORACLE, what="legs_reconstruct vs legval")

    @pytest.mark.parametrize("N", [1, 2])
    def test_small_N(self, N):
        x = np.array([-1.0, 0.3, 1.0])
        ref = np.polynomial.legendre.legval(x, np.ones(N) * np.sqrt(2 * np.arange(N) + 1))
        close(ssm.legs_reconstruct(np.ones(N), x), ref, rtol=ORACLE, what="legs_reconstruct small N")

    def test_bad_input(self):
        with pytest.raises(ValueError, match="^x:"):
            ssm.legs_reconstruct(np.ones(3), [0.0, 1.5])
        with pytest.raises(ValueError, match="^c:"):
            ssm.legs_reconstruct(np.ones(0), [0.0])


# ---------------------------------------------------------------------------------------------
# Discretization
# ---------------------------------------------------------------------------------------------


class TestDiscretize:
    @pytest.mark.parametrize("method", ["zoh", "bilinear"])
    @pytest.mark.parametrize("step", [1e-3, 0.1, 2.0])
    def test_hippo_vs_cont2discrete(self, method, step):
        A, B = ssm.hippo_legs(16)
        Ab, Bb = ssm.discretize(A, B, step, method=method)
        ref = scipy.signal.cont2discrete((A, B[:, None], np.ones((1, 16)), 0.0), step, method=method)
        close(Ab, ref[0], rtol=ORACLE, what=f"discretize {method} Ab vs cont2discrete")
        close(Bb, ref[1][:, 0], rtol=ORACLE, what=f"discretize {method} Bb vs cont2discrete")

    @pytest.mark.parametrize("method", ["zoh", "bilinear"])
    def test_random_dense_multi_input_vs_cont2discrete(self, method):
        rng = np.random.default_rng(3)
        A, B = random_hurwitz(rng, 6), rng.normal(size=(6, 2))
        Ab, Bb = ssm.discretize(A, B, 0.3, method=method)
        ref = scipy.signal.cont2discrete((A, B, np.ones((1, 6)), np.zeros((1, 2))), 0.3, method=method)
        close(Ab, ref[0], rtol=ORACLE, what=f"discretize {method} random Ab")
        close(Bb, ref[1], rtol=ORACLE, what=f"discretize {method} random Bb")
        assert Bb.shape == (6, 2)

    def test_zoh_against_quadrature_and_bilinear_residual(self):
        # algorithm-independent: B̄ = ∫_0^Δ e^{As} ds B (quad_vec), and (I − Δ/2 A) Ā = I + Δ/2 A
        from scipy.integrate import quad_vec

        A, B = ssm.hippo_legs(8)
        step = 0.3
        Bb = ssm.discretize(A, B, step, method="zoh")[1]
        ref, _ = quad_vec(lambda s: scipy.linalg.expm(A * s) @ B, 0.0, step, epsabs=1e-15, epsrel=1e-14)
        close(Bb, ref, rtol=1e-12, what="zoh Bb vs quad_vec")
        Ab, Bb = ssm.discretize(A, B, step, method="bilinear")
        M = np.eye(8) - 0.5 * step * A
        close(M @ Ab, np.eye(8) + 0.5 * step * A, rtol=ORACLE, what="bilinear Ab residual")
        close(M @ Bb, step * B, rtol=ORACLE, what="bilinear Bb residual")

    @pytest.mark.parametrize("method", ["zoh", "bilinear"])
    def test_diagonal_equals_dense(self, method):
        rng = np.random.default_rng(4)
        lam = -rng.uniform(0.01, 3, 5) + 1j * rng.normal(size=5) * 4
        B = rng.normal(size=5) + 1j * rng.normal(size=5)
        Ab, Bb = ssm.discretize(lam, B, 0.2, method=method)
        Ad, Bd = ssm.discretize(np.diag(lam), B, 0.2, method=method)
        close(Ab, np.diag(Ad), rtol=ORACLE, what=f"diagonal vs dense {method} Ab")
        close(Bb, Bd, rtol=ORACLE, what=f"diagonal vs dense {method} Bb")

    def test_per_channel_steps(self):
        A = s4d_lin(3, 4)
        step = np.array([0.01, 0.1, 1.0])
        Ab, Bb = ssm.discretize(A, np.ones(4), step, method="zoh", diagonal=True)
        for h in range(3):
            Ah, Bh = ssm.discretize(A[h], np.ones(4), step[h], method="zoh")
            close(Ab[h], Ah, rtol=ORACLE, what="per-channel step")
            close(Bb[h], Bh, rtol=ORACLE, what="per-channel step")

    def test_zoh_small_step_has_no_cancellation(self):
        # B̄ = (e^{Δλ} − 1)/λ: at Δλ = 1e-12 the naive quotient loses ~4 digits
        lam, step = np.array([-1.0, -1e-6 + 2e-6j]), 1e-12
        Bb = ssm.discretize(lam, np.ones(2), step, method="zoh")[1]
        exact = step * (1 + lam * step / 2)  # series to O((Δλ)^2), exact in float64 here
        close(Bb, exact, rtol=ORACLE, what="zoh small step")

    def test_zoh_singular_and_marginal(self):
        # λ = 0 (an integrator): Ā = 1, B̄ = Δ B exactly, dense and diagonal
        Ab, Bb = ssm.discretize([0.0, -1.0], [2.0, 1.0], 0.5, method="zoh")
        assert Ab[0] == 1.0 and Bb[0] == 1.0
        A = np.array([[0.0, 1.0], [0.0, 0.0]])  # singular dense: Van Loan needs no A^{-1}
        Ab, Bb = ssm.discretize(A, [0.0, 1.0], 0.5, method="zoh")
        close(Ab, [[1.0, 0.5], [0.0, 1.0]], rtol=ORACLE, what="zoh double integrator")
        close(Bb, [0.125, 0.5], rtol=ORACLE, what="zoh double integrator")

    def test_bilinear_scipy_impulse_is_two_tap_average(self):
        # scipy's bilinear also maps C, D: its impulse response is (K_k + K_{k-1})/2 of S4's kernel
        A, B = ssm.hippo_legs(6)
        C = np.arange(1.0, 7.0)
        step, L = 0.2, 30
        K = ssm.ssm_kernel(*ssm.discretize(A, B, step, method="bilinear"), C, L)
        Ad, Bd, Cd, Dd, _ = scipy.signal.cont2discrete((A, B[:, None], C[None, :], 0.0), step, method="bilinear")
        _, (h,) = scipy.signal.dimpulse((Ad, Bd, Cd, Dd, step), n=L)
        avg = 0.5 * (K + np.concatenate([[0.0], K[:-1]]))
        close(h[:, 0], avg, rtol=ORACLE, what="scipy bilinear impulse = two-tap average")

    @settings(max_examples=40)
    @given(
        re=st.floats(-50.0, -1e-6),
        im=st.floats(-100.0, 100.0),
        step=st.floats(1e-4, 10.0),
        method=st.sampled_from(["zoh", "bilinear"]),
    )
    def test_stable_poles_map_inside_the_unit_disk(self, re, im, step, method):
        Ab, _ = ssm.discretize([complex(re, im)], [1.0], step, method=method)
        assert abs(Ab[0]) < 1.0 or (method == "zoh" and abs(Ab[0]) <= 1.0 and re * step > -1e-15)

    @settings(max_examples=20)
    @given(seed=st.integers(0, 2**32 - 1), N=st.integers(1, 6), step=st.floats(1e-3, 5.0))
    def test_dense_stable_stays_stable(self, seed, N, step):
        A = random_hurwitz(np.random.default_rng(seed), N)
        for method in ("zoh", "bilinear"):
            Ab, _ = ssm.discretize(A, np.ones(N), step, method=method)
            assert np.max(np.abs(np.linalg.eigvals(Ab))) < 1.0

    def test_unstable_A(self):
        with pytest.raises(ValueError, match=r"^A: expected a stable matrix"):
            ssm.discretize([[0.5, 0.0], [0.0, -1.0]], [1.0, 1.0], 0.1)
        with pytest.raises(ValueError, match=r"^A: expected a stable matrix"):
            ssm.discretize([-1.0, 0.01 + 3j], [1.0, 1.0], 0.1, method="zoh")

    def test_unknown_method(self):
        with pytest.raises(ValueError, match="^method:"):
            ssm.discretize([-1.0], [1.0], 0.1, method="euler")

    @pytest.mark.parametrize("step", [0.0, -0.1, np.nan])
    def test_bad_step(self, step):
        with pytest.raises(ValueError, match="^step:"):
            ssm.discretize([[-1.0]], [1.0], step)
        with pytest.raises(ValueError, match="^step:"):
            ssm.discretize([-1.0], [1.0], step)

    def test_shape_errors(self):
        with pytest.raises(ValueError, match="^B:"):
            ssm.discretize(-np.eye(3), np.ones(2), 0.1)
        with pytest.raises(ValueError, match="^A:"):
            ssm.discretize(-np.ones((2, 3)), np.ones(2), 0.1)
        with pytest.raises(ValueError, match="^B:"):
            ssm.discretize(-np.ones(3), np.ones(2), 0.1)
        with pytest.raises(ValueError, match="^step:"):
            ssm.discretize(-np.ones((3, 2)), np.ones(2), np.ones(4), diagonal=True)


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


class TestSsmKernel:
    @pytest.mark.parametrize("N", [1, 4, 16])
    @pytest.mark.parametrize("L", [1, 7, 64, 300])
    def test_loop_vs_vectorized(self, N, L):
        A, B = ssm.hippo_legs(N)
        Ab, Bb = ssm.discretize(A, B, 0.05)
        C = np.random.default_rng(N).normal(size=N)
        close(ssm.ssm_kernel(Ab, Bb, C, L), ssm.ssm_kernel_loop(Ab, Bb, C, L), rtol=SELF, what="ssm_kernel loop vs vectorized")

    def test_matrix_power_oracle(self):
        rng = np.random.default_rng(5)
        A = random_hurwitz(rng, 5, complex_=True)
        Ab, Bb = ssm.discretize(A, rng.normal(size=5), 0.3, method="zoh")
        C = rng.normal(size=5) + 1j * rng.normal(size=5)
        ref = np.array([C @ np.linalg.matrix_power(Ab, ell) @ Bb for ell in range(40)])
        close(ssm.ssm_kernel(Ab, Bb, C, 40), ref, rtol=ORACLE, what="ssm_kernel vs matrix_power")

    def test_dimpulse_oracle_is_one_sample_later(self):
        A, B = ssm.hippo_legs(8)
        C = np.linspace(-1, 1, 8)
        Ab, Bb = ssm.discretize(A, B, 0.1, method="zoh")
        _, (h,) = scipy.signal.dimpulse((Ab, Bb[:, None], C[None, :], 0.0, 0.1), n=51)
        close(ssm.ssm_kernel(Ab, Bb, C, 50), h[1:, 0], rtol=ORACLE, what="ssm_kernel vs dimpulse")

    def test_channels_and_diagonal(self):
        rng = np.random.default_rng(6)
        Ab = rng.uniform(-0.9, 0.9, (3, 4)) * np.exp(1j * rng.uniform(0, 3, (3, 4)))
        Bb, C = rng.normal(size=(3, 4)), rng.normal(size=4)
        K = ssm.ssm_kernel(Ab, Bb, C, 20, diagonal=True)
        assert K.shape == (3, 20) and K.dtype == np.complex128
        close(K, ssm.ssm_kernel_loop(Ab, Bb, C, 20, diagonal=True), rtol=SELF, what="diagonal kernel loop")
        for h in range(3):
            close(K[h], ssm.ssm_kernel(np.diag(Ab[h]), Bb[h], C, 20), rtol=ORACLE, what="diagonal vs dense kernel")

    def test_bad_input(self):
        with pytest.raises(ValueError, match="^L:"):
            ssm.ssm_kernel(np.eye(2) * 0.5, np.ones(2), np.ones(2), 0)
        with pytest.raises(ValueError, match="^C:"):
            ssm.ssm_kernel(np.eye(2) * 0.5, np.ones(2), np.ones(3), 4)
        with pytest.raises(ValueError, match="^Ab:"):
            ssm.ssm_kernel_loop(np.ones((2, 3)), np.ones(2), np.ones(2), 4)
        with pytest.raises(ValueError, match="^C:"):
            ssm.ssm_kernel(np.ones((2, 3)), np.ones((2, 3)), np.ones((4, 3)), 4, diagonal=True)


class TestS4dKernel:
    @pytest.mark.parametrize("method", ["zoh", "bilinear"])
    @pytest.mark.parametrize("L", [1, 10, 37, 200])
    def test_loop_vs_vectorized_vs_powers(self, method, L):
        rng = np.random.default_rng(7)
        A = s4d_lin(3, 5)
        C = rng.normal(size=(3, 5)) + 1j * rng.normal(size=(3, 5))
        step = np.array([1e-3, 0.05, 0.5])
        K = ssm.s4d_kernel(A, 1.0, C, step, L, method=method)
        close(K, ssm.s4d_kernel_loop(A, 1.0, C, step, L, method=method), rtol=SELF, what="s4d_kernel loop vs vectorized")
        Ab, Bb = ssm.discretize(A, np.ones(5), step, method=method, diagonal=True)
        close(K, ssm.ssm_kernel(Ab, Bb, C, L, diagonal=True), rtol=SELF, what="s4d_kernel vs powers")

    @pytest.mark.parametrize("conj_pairs", [False, True])
    @pytest.mark.parametrize("kind", ["real system", "real A, complex C", "complex A", "bilinear, negative real Ā"])
    def test_real_part_product_and_dtypes(self, kind, conj_pairs):
        # only Re K̄ is formed when that is returned (conj_pairs or a real system): the real product of
        # conj(P) and W read as interleaved real pairs, or of the real factor with the real part of the other; L = 97
        # is not a multiple of the block length (10), so the last row of the product is shorter
        rng = np.random.default_rng(9)
        A = -rng.uniform(0.1, 2.0, (2, 3, 5))
        if kind == "complex A":
            A = A + 1j * rng.normal(size=A.shape)
        elif kind == "bilinear, negative real Ā":
            A = -rng.uniform(25.0, 30.0, A.shape)  # Δ A < −2: Ā = (1 + ΔA/2)/(1 − ΔA/2) < 0, log Ā complex
        C = rng.normal(size=5) + (0 if kind == "real system" else 1j * rng.normal(size=5))
        method = "bilinear" if kind.startswith("bilinear") else "zoh"
        K = ssm.s4d_kernel(A, 1.0, C, 0.1, 97, method=method, conj_pairs=conj_pairs)
        loop = ssm.s4d_kernel_loop(A, 1.0, C, 0.1, 97, method=method, conj_pairs=conj_pairs)
        assert K.shape == loop.shape == (2, 3, 97) and K.dtype == loop.dtype and K.flags.c_contiguous
        close(K, loop, rtol=SELF, what=f"s4d_kernel ({kind}, conj_pairs={conj_pairs}) vs loop twin")

    @pytest.mark.parametrize("conj_pairs", [False, True])
    def test_blocks_of_channels_change_nothing(self, monkeypatch, conj_pairs):
        # one channel per block or all in one: each channel's factors are strided float64 views of the
        # (power, channel, mode) arrays, whose row stride grows with the block; the kernels are bitwise the same
        import refimpl._blocking
        rng = np.random.default_rng(31)
        A = -rng.uniform(0.1, 2.0, (5, 6)) + 1j * rng.normal(size=(5, 6))
        C = rng.normal(size=(5, 6)) + 1j * rng.normal(size=(5, 6))
        step = np.linspace(0.01, 0.3, 5)
        monkeypatch.setattr(refimpl._blocking, "WORKSPACE_FLOATS", 10**9)
        whole = ssm.s4d_kernel(A, 1.0, C, step, 53, conj_pairs=conj_pairs)
        monkeypatch.setattr(refimpl._blocking, "WORKSPACE_FLOATS", 1)
        one = ssm.s4d_kernel(A, 1.0, C, step, 53, conj_pairs=conj_pairs)
        np.testing.assert_array_equal(one, whole)
        loop = ssm.s4d_kernel_loop(A, 1.0, C, step, 53, conj_pairs=conj_pairs)
        close(one, loop, rtol=SELF, what=f"s4d_kernel, one channel per block (conj_pairs={conj_pairs}) vs loop twin")

    def test_conj_pairs_equals_the_full_conjugate_set(self):
        rng = np.random.default_rng(8)
        A = -rng.uniform(0.1, 1, 4) + 1j * rng.uniform(0, 5, 4)
        B, C = rng.normal(size=4) + 1j * rng.normal(size=4), rng.normal(size=4) + 1j * rng.normal(size=4)
        half = ssm.s4d_kernel(A, B, C, 0.1, 50, conj_pairs=True)
        full = ssm.s4d_kernel(np.r_[A, A.conj()], np.r_[B, B.conj()], np.r_[C, C.conj()], 0.1, 50)
        assert half.dtype == np.float64
        close(half, full.real, rtol=ORACLE, what="conj_pairs vs full set")
        np.testing.assert_allclose(full.imag, 0.0, atol=1e-13 * np.max(np.abs(full)))

    def test_transcribed_state_spaces_s4d_kernel(self):
        # state-spaces/s4 models/s4/s4d.py S4DKernel.forward, transcribed to NumPy (B folded into C)
        rng = np.random.default_rng(27)
        H, N, L = 3, 8, 100
        log_dt = rng.uniform(np.log(1e-3), np.log(1e-1), H)
        C = rng.normal(size=(H, N)) + 1j * rng.normal(size=(H, N))
        A = -np.exp(np.log(0.5 * np.ones((H, N)))) + 1j * np.pi * np.arange(N)
        dt = np.exp(log_dt)
        dtA = A * dt[:, None]
        K_ref = 2 * np.einsum("hn,hnl->hl", C * (np.exp(dtA) - 1.0) / A, np.exp(dtA[:, :, None] * np.arange(L))).real
        close(ssm.s4d_kernel(A, 1.0, C, dt, L, conj_pairs=True), K_ref, rtol=ORACLE, what="s4d_kernel vs state-spaces s4d.py")

    def test_real_s4d_real_init_against_lfilter(self):
        # S4D-Real / Mamba init A_n = −(n+1): each mode is a one-pole IIR filter
        N, step, L = 4, 0.3, 60
        A, B, C = -(np.arange(N) + 1.0), np.ones(N), np.linspace(1, 2, N)
        K = ssm.s4d_kernel(A, B, C, step, L)
        impulse = np.zeros(L)
        impulse[0] = 1.0
        Ab, Bb = np.exp(step * A), np.expm1(step * A) / A
        ref = sum(C[n] * Bb[n] * scipy.signal.lfilter([1.0], [1.0, -Ab[n]], impulse) for n in range(N))
        assert K.dtype == np.float64
        close(K, ref, rtol=ORACLE, what="s4d real vs lfilter")

    def test_bilinear_negative_pole_stays_real(self):
        # Δλ < −2 gives a negative real Ā: log Ā is complex, the kernel must still be real and right
        K = ssm.s4d_kernel([-30.0], [1.0], [1.0], 0.2, 12, method="bilinear")
        a = (1 - 3.0) / (1 + 3.0)
        close(K, 0.2 / 4.0 * a ** np.arange(12), rtol=ORACLE, what="bilinear negative pole")
        assert K.dtype == np.float64

    def test_pole_at_zero(self):
        # Δλ = −2 (bilinear): Ā = 0, kernel = (C B̄, 0, 0, ...)
        K = ssm.s4d_kernel([-20.0], [1.0], [1.0], 0.1, 5, method="bilinear")
        np.testing.assert_array_equal(K, [0.05, 0, 0, 0, 0])

    def test_long_kernel_without_materializing_powers(self):
        # L = 16384, N = H = 64: the Vandermonde (H, N, L) complex matrix would be 1 GiB
        rng = np.random.default_rng(9)
        H, N, L = 64, 64, 16384
        A = s4d_lin(H, N)
        C = rng.normal(size=(H, N)) + 1j * rng.normal(size=(H, N))
        step = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), H))
        tracemalloc.start()
        try:
            K = ssm.s4d_kernel(A, 1.0, C, step, L, conj_pairs=True)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert K.shape == (H, L)
        assert peak < 128 * 2**20, f"peak {peak / 2**20:.0f} MiB"
        ell = np.arange(L)
        for h in (0, H - 1):  # the direct Vandermonde for two channels
            Bb = np.expm1(step[h] * A[h]) / A[h]  # ZOH input matrix of a diagonal mode
            ref = 2 * np.real((C[h] * Bb) @ np.exp(step[h] * A[h][:, None] * ell))
            close(K[h], ref, rtol=ORACLE, what="s4d long kernel vs direct Vandermonde")

    def test_bad_input(self):
        with pytest.raises(ValueError, match="^A: expected a stable"):
            ssm.s4d_kernel([0.1], [1.0], [1.0], 0.1, 4)
        with pytest.raises(ValueError, match="^method:"):
            ssm.s4d_kernel([-1.0], [1.0], [1.0], 0.1, 4, method="dss")
        with pytest.raises(ValueError, match="^step:"):
            ssm.s4d_kernel([-1.0], [1.0], [1.0], -0.1, 4)
        with pytest.raises(ValueError, match="^C:"):
            ssm.s4d_kernel([-1.0, -2.0], [1.0], [1.0, 2.0, 3.0], 0.1, 4)
        with pytest.raises(ValueError, match="^C:"):
            ssm.s4d_kernel(s4d_lin(3, 2), 1.0, np.ones((2, 2)), 0.1, 4)
        with pytest.raises(ValueError, match="^B:"):
            ssm.s4d_kernel_loop([-1.0, -2.0], [1.0, 2.0, 3.0], [1.0, 2.0], 0.1, 4)
        with pytest.raises(ValueError, match="^L:"):
            ssm.s4d_kernel([-1.0], [1.0], [1.0], 0.1, 0)
        with pytest.raises(ValueError, match="^step:"):
            ssm.s4d_kernel(s4d_lin(3, 2), 1.0, 1.0, np.ones(2) * 0.1, 4)


class TestS4KernelDplr:
    @pytest.mark.parametrize("N", [1, 4, 16, 64])
    @pytest.mark.parametrize("L", [1, 16, 101, 1024])
    @pytest.mark.parametrize("step", [1e-3, 0.1])
    def test_hippo_equals_powers(self, N, L, step):
        rng = np.random.default_rng(N + L)
        A, B = ssm.hippo_legs(N)
        C = rng.normal(size=N)
        K = ssm.ssm_kernel(*ssm.discretize(A, B, step), C, L)
        Lam, P, Bt, V = ssm.hippo_legs_dplr(N)
        Kd = ssm.s4_kernel_dplr(Lam, P, P, Bt, C @ V, step, L)
        close(Kd, K, rtol=SELF, what="s4_kernel_dplr (HiPPO) vs powers")
        assert Kd.dtype == np.complex128

    @pytest.mark.parametrize("L", [2, 100, 1024])
    def test_omega_minus_one_is_the_limit(self, L):
        # at ω = −1 (k = L/2) 2/(1+ω) and g(ω) are infinite; the product tends to Δ/2 and K̂(−1) = (Δ/2) C̃ B
        N, step = 16, 0.1
        A, B = ssm.hippo_legs(N)
        C = np.random.default_rng(L).normal(size=N)
        Lam, P, Bt, V = ssm.hippo_legs_dplr(N)
        K_hat = np.fft.fft(ssm.s4_kernel_dplr(Lam, P, P, Bt, C @ V, step, L))
        Ab, _ = ssm.discretize(A, B, step)
        C_tilde = C - C @ np.linalg.matrix_power(Ab, L)
        close(K_hat[L // 2], step / 2 * C_tilde @ B, rtol=SELF, what="K̂(−1) vs (Δ/2) C̃ B")

    def test_random_dplr_with_c_tilde(self):
        rng = np.random.default_rng(10)
        N, L, step = 6, 50, 0.2
        Lam = -rng.uniform(1.0, 2.0, N) + 1j * rng.normal(size=N)
        P, Q, B, C = (rng.normal(size=N) + 1j * rng.normal(size=N) for _ in range(4))
        P, Q = 0.3 * P, 0.3 * Q
        A = np.diag(Lam) - np.outer(P, Q.conj())
        assert np.max(np.linalg.eigvals(A).real) < 0  # a stable, non-normal DPLR system
        Ab, Bb = ssm.discretize(A, B, step)
        K = ssm.ssm_kernel(Ab, Bb, C, L)
        Ct = C @ (np.eye(N) - np.linalg.matrix_power(Ab, L))  # S4's C̃ = C (I − Ā^L)
        close(ssm.s4_kernel_dplr(Lam, P, Q, B, Ct, step, L, c_tilde=True), K, rtol=SELF, what="dplr c_tilde vs powers")
        close(ssm.s4_kernel_dplr(Lam, P, Q, B, C, step, L), K, rtol=SELF, what="dplr vs powers")

    def test_transcribed_annotated_s4_kernel_dplr(self):
        # srush/annotated-s4 kernel_DPLR, transcribed from JAX to NumPy. It conjugates its C argument
        # (a column vector), so it receives C̃^*; it returns .real.
        def cauchy(v, omega, lambd):
            return (v / (omega[:, None] - lambd)).sum(axis=1)

        def kernel_DPLR(Lambda, P, Q, B, C, step, L):
            Omega_L = np.exp((-2j * np.pi) * (np.arange(L) / L))
            aterm, bterm = (C.conj(), Q.conj()), (B, P)
            g = (2.0 / step) * ((1.0 - Omega_L) / (1.0 + Omega_L))
            c = 2.0 / (1.0 + Omega_L)
            k00 = cauchy(aterm[0] * bterm[0], g, Lambda)
            k01 = cauchy(aterm[0] * bterm[1], g, Lambda)
            k10 = cauchy(aterm[1] * bterm[0], g, Lambda)
            k11 = cauchy(aterm[1] * bterm[1], g, Lambda)
            atRoots = c * (k00 - k01 * (1.0 / (1.0 + k11)) * k10)
            return np.fft.ifft(atRoots, L).reshape(L).real

        rng = np.random.default_rng(26)
        Lam, P, B, _ = ssm.hippo_legs_dplr(8)
        Ct = rng.normal(size=8) + 1j * rng.normal(size=8)
        ours = ssm.s4_kernel_dplr(Lam, P, P, B, Ct, 0.05, 64, c_tilde=True)
        close(ours.real, kernel_DPLR(Lam, P, P, B, Ct.conj(), 0.05, 64), rtol=ORACLE, what="s4_kernel_dplr vs annotated-s4")

    @pytest.mark.parametrize("c_tilde", [False, True])
    def test_several_channels(self, c_tilde):
        # S4's layout: H channels with their own Δ and (Λ, P, B), two output channels of C:
        # each kernel equals the dense C_c Ā_h^ℓ B̄_h of its channel, and the single-channel call
        rng = np.random.default_rng(27)
        H, N, L, n_out = 3, 8, 96, 2
        Lam0, P0, B0, V = ssm.hippo_legs_dplr(N)
        Lam = Lam0 - rng.uniform(0, 0.5, (H, 1))  # a different diagonal per channel (still stable)
        P = P0 * rng.uniform(0.5, 1.0, (H, 1))
        B = B0 + 0.1 * rng.normal(size=(H, N))
        C = rng.normal(size=(n_out, H, N)) + 1j * rng.normal(size=(n_out, H, N))
        step = np.array([1e-3, 0.02, 0.3])
        dense = np.empty((n_out, H, L), dtype=np.complex128)
        Cin = np.empty_like(C)
        for h in range(H):
            A = np.diag(Lam[h]) - np.outer(P[h], P[h].conj())
            Ab, Bb = ssm.discretize(A, B[h], step[h])
            for c in range(n_out):
                dense[c, h] = ssm.ssm_kernel(Ab, Bb, C[c, h], L)
                Cin[c, h] = C[c, h] @ (np.eye(N) - np.linalg.matrix_power(Ab, L)) if c_tilde else C[c, h]
        K = ssm.s4_kernel_dplr(Lam, P, P, B, Cin, step, L, c_tilde=c_tilde)
        assert K.shape == (n_out, H, L) and K.dtype == np.complex128
        close(K, dense, rtol=SELF, what="multi-channel DPLR kernel vs dense powers")
        for c in range(n_out):
            for h in range(H):
                single = ssm.s4_kernel_dplr(Lam[h], P[h], P[h], B[h], Cin[c, h], step[h], L, c_tilde=c_tilde)
                close(K[c, h], single, rtol=ORACLE, what="multi-channel DPLR kernel vs one channel at a time")

    def test_channel_and_frequency_blocks(self, monkeypatch):
        # blocks of one channel and one frequency give the same kernels as one block of everything
        import refimpl._blocking
        rng = np.random.default_rng(28)
        Lam, P, B, _ = ssm.hippo_legs_dplr(6)
        C = rng.normal(size=(5, 6))
        step = np.linspace(0.01, 0.2, 5)
        monkeypatch.setattr(ssm, "_SMALL_PRODUCT", 10**9)
        monkeypatch.setattr(refimpl._blocking, "WORKSPACE_FLOATS", 10**9)
        whole = ssm.s4_kernel_dplr(Lam, P, P, B, C, step, 40)
        monkeypatch.setattr(ssm, "_SMALL_PRODUCT", 1)
        monkeypatch.setattr(refimpl._blocking, "WORKSPACE_FLOATS", 1)
        blocked = ssm.s4_kernel_dplr(Lam, P, P, B, C, step, 40)
        np.testing.assert_allclose(blocked, whole, rtol=0, atol=1e-15 * np.abs(whole).max())

    @pytest.mark.parametrize("cauchy", ["real arithmetic", "complex reciprocal"])
    def test_cauchy_forms_and_threads(self, monkeypatch, cauchy):
        # the Cauchy entries in real arithmetic ((a − ib)/(a² + b²)) or, out of its range, by the complex
        # reciprocal: both against the dense kernel; blocks of 4 frequencies (L = 103: a shorter last one)
        # taken by 1, 2 or 3 threads give bitwise the same kernels
        import refimpl._blocking

        if cauchy == "complex reciprocal":
            monkeypatch.setattr(ssm, "_CAUCHY_RANGE", 1.0)
        rng = np.random.default_rng(29)
        N, L = 6, 103
        Lam, P, B, V = ssm.hippo_legs_dplr(N)
        C = rng.normal(size=(3, N))
        step = np.array([1e-3, 0.05, 0.3])
        monkeypatch.setattr(ssm, "_SMALL_PRODUCT", 4 * 16 * N)  # 4 frequencies per block
        monkeypatch.setattr(refimpl._blocking, "THREAD_MIN_ELEMS", 0)
        out = {}
        for threads in (1, 2, 3):
            monkeypatch.setattr(refimpl._blocking, "THREADS", threads)
            out[threads] = ssm.s4_kernel_dplr(Lam, P, P, B, C @ V, step, L)
        assert np.array_equal(out[2], out[1]) and np.array_equal(out[3], out[1])
        A, Bd = ssm.hippo_legs(N)
        for i in range(3):
            K = ssm.ssm_kernel(*ssm.discretize(A, Bd, step[i]), C[i], L)
            close(out[1][i], K, rtol=SELF, what=f"s4_kernel_dplr ({cauchy}) vs powers")

    def test_bad_input(self):
        Lam, P, B, V = ssm.hippo_legs_dplr(4)
        with pytest.raises(ValueError, match="^Lambda: expected a stable"):
            ssm.s4_kernel_dplr(Lam + 1.0, P, P, B, B, 0.1, 8)
        with pytest.raises(ValueError, match="^Q:"):
            ssm.s4_kernel_dplr(Lam, P, P[:3], B, B, 0.1, 8)
        with pytest.raises(ValueError, match="^step:"):
            ssm.s4_kernel_dplr(Lam, P, P, B, B, 0.0, 8)
        with pytest.raises(ValueError, match="^L:"):
            ssm.s4_kernel_dplr(Lam, P, P, B, B, 0.1, 0)
        with pytest.raises(ValueError, match="^Lambda:"):
            ssm.s4_kernel_dplr(np.complex128(-1.0), P, P, B, B, 0.1, 8)  # leading axes are channels; N is last
        with pytest.raises(ValueError, match="^C: channel axes"):
            ssm.s4_kernel_dplr(np.stack([Lam] * 3), P, P, B, np.stack([B] * 2), 0.1, 8)
        with pytest.raises(ValueError, match="^step:"):
            ssm.s4_kernel_dplr(np.stack([Lam] * 3), P, P, B, B, np.full(2, 0.1), 8)
        with pytest.raises(ValueError, match="^Lambda, P, Q: the state matrix"):
            ssm.s4_kernel_dplr(Lam, 3 * P, -3 * P, B, B, 0.1, 8)  # Λ + 9 P P^*: unstable


# ---------------------------------------------------------------------------------------------
# Recurrent vs convolution
# ---------------------------------------------------------------------------------------------


class TestRecurrentVsConvolution:
    def test_hippo_channels_batch_and_D(self):
        rng = np.random.default_rng(11)
        A, B = ssm.hippo_legs(8)
        Ab = np.stack([ssm.discretize(A, B, s)[0] for s in (0.01, 0.1, 1.0)])
        Bb = np.stack([ssm.discretize(A, B, s)[1] for s in (0.01, 0.1, 1.0)])
        C = rng.normal(size=(3, 8))
        u = rng.normal(size=(2, 5, 70, 3))
        D = np.array([0.5, -1.0, 2.0])
        y_rec = ssm.ssm_recurrent(u, Ab, Bb, C, D)
        y_conv = ssm.ssm_convolution(u, Ab, Bb, C, D)
        assert y_rec.shape == u.shape and y_rec.dtype == np.float64 and y_conv.dtype == np.float64
        close(y_conv, y_rec, rtol=SELF, what="ssm_convolution vs ssm_recurrent")
        K = ssm.ssm_kernel(Ab, Bb, C, 70)
        close(y_conv, direct_conv(u, K) + D * u, rtol=ORACLE, what="ssm_convolution vs direct sum")

    def test_diagonal_complex(self):
        rng = np.random.default_rng(12)
        Ab, Bb = ssm.discretize(s4d_lin(2, 3), np.ones(3), np.array([0.1, 0.4]), method="zoh", diagonal=True)
        C = rng.normal(size=(2, 3)) + 1j * rng.normal(size=(2, 3))
        u = rng.normal(size=(33, 2))
        y_rec = ssm.ssm_recurrent(u, Ab, Bb, C, diagonal=True)
        assert y_rec.dtype == np.complex128
        close(ssm.ssm_convolution(u, Ab, Bb, C, diagonal=True), y_rec, rtol=SELF, what="diagonal complex conv vs rec")

    @pytest.mark.parametrize("a,b,c,d", [(0.9, 1.0, 1.0, 0.0), (-0.5, 0.3, 2.0, 0.7), (0.999, 0.001, 1.0, 0.0)])
    def test_scalar_vs_lfilter(self, a, b, c, d):
        u = np.random.default_rng(13).normal(size=(500, 1))
        ref = c * scipy.signal.lfilter([b], [1.0, -a], u[:, 0]) + d * u[:, 0]
        for f in (ssm.ssm_recurrent, ssm.ssm_convolution):
            close(f(u, [[a]], [b], [c], d)[:, 0], ref, rtol=ORACLE, what=f"{f.__name__} vs lfilter")

    @settings(max_examples=25)
    @given(seed=st.integers(0, 2**32 - 1), L=st.integers(2, 40), t=st.integers(0, 39), N=st.integers(1, 4))
    def test_causality(self, seed, L, t, N):
        t = t % (L - 1)
        rng = np.random.default_rng(seed)
        Ab, Bb = ssm.discretize(random_hurwitz(rng, N), rng.normal(size=N), 0.3, method="zoh")
        C = rng.normal(size=N)
        u = rng.normal(size=(L, 2))
        v = u.copy()
        v[t + 1 :] += rng.normal(size=v[t + 1 :].shape) * 10
        for f in (ssm.ssm_convolution, ssm.ssm_recurrent):
            y1, y2 = f(u, Ab, Bb, C, 1.0), f(v, Ab, Bb, C, 1.0)
            np.testing.assert_allclose(y2[: t + 1], y1[: t + 1], rtol=0, atol=1e-12 * (1 + np.max(np.abs(y1))))
            assert not np.allclose(y2[t + 1 :], y1[t + 1 :])

    def test_bad_input(self):
        Ab, Bb, C = 0.5 * np.eye(2), np.ones(2), np.ones(2)
        for f in (ssm.ssm_recurrent, ssm.ssm_convolution):
            with pytest.raises(ValueError, match="^u:"):
                f(np.ones(5), Ab, Bb, C)
            with pytest.raises(ValueError, match="^u:"):
                f(np.ones((0, 3)), Ab, Bb, C)
            with pytest.raises(ValueError, match="^Ab, Bb, C:"):
                f(np.ones((5, 3)), np.stack([Ab, Ab]), Bb, C)
            with pytest.raises(ValueError, match="^D:"):
                f(np.ones((5, 3)), Ab, Bb, C, D=np.ones(2))
            with pytest.raises(ValueError, match="^Bb:"):
                f(np.ones((5, 3)), Ab, np.ones(3), C)
            with pytest.raises(TypeError, match="^u:"):
                f("abc", Ab, Bb, C)


# ---------------------------------------------------------------------------------------------
# Mamba's selective scan
# ---------------------------------------------------------------------------------------------

SCANS = [ssm.selective_scan, ssm.selective_scan_loop, ssm.selective_scan_assoc, ssm.selective_scan_matrix]


class TestSelectiveScan:
    @pytest.mark.parametrize("discretization", ["mamba", "zoh"])
    @pytest.mark.parametrize("shape", [(1, 1), (17, 3), (2, 31, 4), (2, 2, 8, 2), (2, 19, 260)])
    def test_four_forms_agree(self, discretization, shape):
        # (2, 19, 260): more channels than ssm._SCAN_CHANNELS, solved in blocks of 128, 128 and 4 channels
        u, delta, A, B, C, D = mamba_inputs(np.random.default_rng(14), shape=shape, n=3)
        y0, h0 = ssm.selective_scan(u, delta, A, B, C, D, discretization=discretization, return_last_state=True)
        assert y0.shape == u.shape and h0.shape == shape[:-2] + (shape[-1], 3)
        for f in SCANS[1:]:
            y, h = f(u, delta, A, B, C, D, discretization=discretization, return_last_state=True)
            close(y, y0, rtol=SELF, what=f"{f.__name__} vs selective_scan")
            close(h, h0, rtol=SELF, what=f"{f.__name__} last state")

    @pytest.mark.parametrize("d, steps, rows, sizes", [
        (64, 8192, 16, [32, 32]),  # one block of a large problem: halves
        (128, 8192, 16, [64, 64]),
        (32, 8192, 16, [16, 16]),
        (64, 512, 16, [64]),  # too little work (2^19 entries): one block, one thread
        (32, 8192, 4, [32]),  # halves whose state (16 channels × 4) is too small to pay for the threads
        (16, 8192, 16, [16]),  # no half of 16 channels or more
        (256, 8192, 16, [128, 128]),  # already blocks of 128: not cut further
    ])
    def test_forward_channel_blocks(self, d, steps, rows, sizes):
        assert [s.stop - s.start for s in ssm._forward_channel_blocks(d, 1, 1, steps, rows)] == sizes

    @pytest.mark.parametrize("discretization", ["mamba", "zoh"])
    def test_halves_and_long_blocks_give_the_same_bits_with_any_thread_count(self, monkeypatch, discretization):
        # 64 channels, 40 chunks: two halves of 32 channels, each with blocks of steps of two budgets (two chunks a
        # budget), taken in turn by 1, 2 or 3 threads: the same bits, the same bits as one block of one budget
        # (each channel is computed by the same operations in any block), and the loop twin's result
        import refimpl._blocking as blocking

        monkeypatch.setattr(blocking, "THREAD_MIN_ELEMS", 0)
        monkeypatch.setattr(ssm, "per_block", lambda floats, **kw: max(1, 4096 // floats))  # two chunks a budget
        u, delta, A, B, C, D = mamba_inputs(np.random.default_rng(31), shape=(40 * ssm._SCAN_CHUNK + 3, 64), n=2,
                                            delta_range=(1e-3, 0.1))
        run = lambda: ssm.selective_scan(u, delta, A, B, C, D, discretization=discretization,  # noqa: E731
                                         return_last_state=True)
        one = run()  # a small problem: one block
        monkeypatch.setattr(ssm, "_HALVES_WORK", 0)
        monkeypatch.setattr(ssm, "_HALF_STATE", 0)
        monkeypatch.setattr(ssm, "_SCAN_BUDGETS", 2)
        assert len(ssm._forward_channel_blocks(64, 1, 1, u.shape[0], 2)) == 2
        runs = []
        for threads in (1, 2, 3):
            monkeypatch.setattr(blocking, "THREADS", threads)
            runs.append(run())
        y, h = ssm.selective_scan_loop(u, delta, A, B, C, D, discretization=discretization, return_last_state=True)
        close(runs[0][0], y, rtol=SELF, what="halves vs loop")
        close(runs[0][1], h, rtol=SELF, what="last state")
        for y2, h2 in runs[1:] + [one]:
            assert np.array_equal(y2, runs[0][0]) and np.array_equal(h2, runs[0][1])

    def test_transcribed_selective_scan_ref_layout(self):
        # state-spaces/mamba selective_scan_ref (real A, no z, no delta_bias), transcribed to NumPy in
        # float64 without its float32 casts; its layout is u, delta (B, D, L), B, C (B, N, L).
        def selective_scan_ref(u, delta, A, B, C, D):
            deltaA = np.exp(np.einsum("bdl,dn->bdln", delta, A))
            deltaB_u = np.einsum("bdl,bnl,bdl->bdln", delta, B, u)
            x = np.zeros((u.shape[0], u.shape[1], A.shape[1]))
            ys = []
            for i in range(u.shape[2]):
                x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
                ys.append(np.einsum("bdn,bn->bd", x, C[:, :, i]))
            y = np.stack(ys, axis=2)
            return y + u * D[:, None], x

        u, delta, A, B, C, D = mamba_inputs(np.random.default_rng(25), shape=(2, 19, 3), n=4)
        t = lambda a: np.swapaxes(a, -1, -2)  # noqa: E731  (B, L, ·) <-> (B, ·, L)
        y_ref, last_ref = selective_scan_ref(t(u), t(delta), A, t(B), t(C), D)
        for f in SCANS:
            y, last = f(u, delta, A, B, C, D, return_last_state=True)
            close(y, t(y_ref), rtol=ORACLE, what=f"{f.__name__} vs transcribed selective_scan_ref")
            close(last, last_ref, rtol=ORACLE, what=f"{f.__name__} last state vs selective_scan_ref")

    def test_last_state_continues_the_sequence(self):
        u, delta, A, B, C, _ = mamba_inputs(np.random.default_rng(15), shape=(40, 2), n=3)
        y_full = ssm.selective_scan(u, delta, A, B, C)
        _, h = ssm.selective_scan(u[:25], delta[:25], A, B[:25], C[:25], return_last_state=True)
        # continue by hand for one step from h
        h_next = np.exp(delta[25][:, None] * A) * h + delta[25][:, None] * B[25] * u[25][:, None]
        close(h_next @ C[25], y_full[25], rtol=ORACLE, what="last state continues")

    def test_broadcast_B_C_over_batch(self):
        u, delta, A, B, C, D = mamba_inputs(np.random.default_rng(16), shape=(3, 12, 2), n=2)
        Bc, Cc = B[0], C[0]  # shared by the batch
        y = ssm.selective_scan(u, delta, A, Bc, Cc, D)
        ref = np.stack([ssm.selective_scan(u[i], delta[i], A, Bc, Cc, D) for i in range(3)])
        close(y, ref, rtol=ORACLE, what="broadcast B, C")
        close(ssm.selective_scan_assoc(u, delta, A, Bc, Cc, D), ref, rtol=SELF, what="broadcast B, C assoc")

    @pytest.mark.parametrize("discretization", ["mamba", "zoh"])
    def test_lti_scalar_vs_lfilter(self, discretization):
        # N = 1, constant Δ, B, C: a one-pole IIR filter
        L, dt, a, b, c = 300, 0.2, -1.5, 0.7, 1.3
        u = np.random.default_rng(17).normal(size=(L, 1))
        abar = math.exp(dt * a)
        bbar = dt * b if discretization == "mamba" else math.expm1(dt * a) / a * b
        ref = c * scipy.signal.lfilter([bbar], [1.0, -abar], u[:, 0])
        for f in SCANS:
            y = f(u, np.full((L, 1), dt), [[a]], np.full((L, 1), b), np.full((L, 1), c), discretization=discretization)
            close(y[:, 0], ref, rtol=ORACLE, what=f"{f.__name__} vs lfilter")

    def test_lti_reduces_to_s4d_real_convolution(self):
        # constant Δ, B, C: M is Toeplitz with the S4D-Real (ZOH) kernel
        L, d, n = 40, 2, 5
        rng = np.random.default_rng(18)
        A = -np.broadcast_to(np.arange(1.0, n + 1), (d, n))
        step = np.array([0.05, 0.3])
        Bv, Cv = rng.normal(size=n), rng.normal(size=n)
        M = ssm.semiseparable_matrix(np.broadcast_to(step, (L, d)), A, np.broadcast_to(Bv, (L, n)), np.broadcast_to(Cv, (L, n)), discretization="zoh")
        K = ssm.s4d_kernel(A, Bv, Cv, step, L)
        for h in range(d):
            toeplitz = np.tril(scipy.linalg.toeplitz(K[h]))
            close(M[h], toeplitz, rtol=SELF, what="LTI semiseparable = S4D Toeplitz")

    def test_theorem1_gate(self):
        # Gu & Dao Thm. 1: N = 1, A = −1, B = C = 1, Δ = softplus(z): h_t = (1 − g_t) h_{t−1} + g_t x_t, g = σ(z)
        rng = np.random.default_rng(19)
        L = 200
        z = rng.normal(scale=2.0, size=(L, 1))
        x = rng.normal(size=(L, 1))
        delta = np.logaddexp(0.0, z)  # softplus, no overflow
        g = 1.0 / (1.0 + np.exp(-z))
        h, ref = 0.0, np.empty(L)
        for t in range(L):
            h = (1 - g[t, 0]) * h + g[t, 0] * x[t, 0]
            ref[t] = h
        ones = np.ones((L, 1))
        for f in SCANS:
            y = f(x, delta, [[-1.0]], ones, ones, discretization="zoh")
            close(y[:, 0], ref, rtol=ORACLE, what="Theorem 1 (zoh)")
        # with the simplified B̄ = Δ of the reference code, the identity does not hold
        y_euler = ssm.selective_scan(x, delta, [[-1.0]], ones, ones, discretization="mamba")
        assert np.max(np.abs(y_euler[:, 0] - ref)) > 0.05 * np.max(np.abs(ref))

    def test_single_pole_ema(self):
        # steady gain k: Δ = −log(1 − k), A = −1, B = C = 1, ZOH ⇒ y_t = (1 − k) y_{t−1} + k u_t
        L, k = 400, 0.15
        u = np.random.default_rng(20).normal(size=(L, 1))
        ema = scipy.signal.lfilter([k], [1.0, -(1.0 - k)], u[:, 0])
        ones = np.ones((L, 1))
        y = ssm.selective_scan(u, np.full((L, 1), -math.log1p(-k)), [[-1.0]], ones, ones, discretization="zoh")
        close(y[:, 0], ema, rtol=ORACLE, what="selective scan = EMA")

    def test_steady_state_kalman_filter(self):
        # x_t = a x_{t−1} + w (q), z_t = x_t + v (r). Steady-state filter: m_t = a(1 − K) m_{t−1} + K z_t.
        a, q, r, L = 0.95, 0.1, 0.5, 300
        P = scipy.linalg.solve_discrete_are(np.array([[a]]), np.array([[1.0]]), np.array([[q]]), np.array([[r]]))[0, 0]
        K = P / (P + r)  # P is the prior (predicted) steady-state variance
        rng = np.random.default_rng(21)
        z = rng.normal(size=(L, 1))
        # the Kalman recursion itself, at steady state (prior variance P every step)
        m, kf = 0.0, np.empty(L)
        for t in range(L):
            m_pred = a * m
            m = m_pred + K * (z[t, 0] - m_pred)
            kf[t] = m
        close(kf, scipy.signal.lfilter([K], [1.0, -a * (1 - K)], z[:, 0]), rtol=ORACLE, what="Kalman recursion vs lfilter")
        # the same single pole as a selective SSM with Δ = 1: A = log(a(1−K)), B chosen so that B̄ = K
        A = math.log(a * (1 - K))
        Bv = K * A / math.expm1(A)
        ones = np.ones((L, 1))
        y = ssm.selective_scan(z, ones, [[A]], Bv * ones, ones, discretization="zoh")
        close(y[:, 0], kf, rtol=ORACLE, what="selective scan = steady-state Kalman")

    def test_reset_token_cuts_the_memory(self):
        # a large Δ at t0 forgets everything before t0 (Ā_t0 = e^{Δ A} ≈ 0)
        L, t0 = 30, 12
        delta = np.full((L, 1), 0.05)
        delta[t0] = 50.0
        ones = np.ones((L, 1))
        M = ssm.semiseparable_matrix(delta, [[-1.0]], ones, ones)[0]
        assert np.max(np.abs(M[t0:, :t0])) < 1e-20
        assert np.min(M[:t0, :t0][np.tril_indices(t0)]) > 0.01

    def test_semiseparable_matches_probing(self):
        # M probed column by column through the (linear in u) scan equals the closed form
        u, delta, A, B, C, D = mamba_inputs(np.random.default_rng(22), shape=(9, 2), n=3)
        M = ssm.semiseparable_matrix(delta, A, B, C, D, discretization="zoh")
        for d in range(2):
            cols = []
            for s in range(9):
                e = np.zeros((9, 2))
                e[s, d] = 1.0
                cols.append(ssm.selective_scan_loop(e, delta, A, B, C, D, discretization="zoh")[:, d])
            close(M[d], np.stack(cols, axis=1), rtol=SELF, what="semiseparable vs probing")
        assert np.all(np.triu(M, 1) == 0)

    def test_long_sequences_do_not_overflow(self):
        # Σ Δ large: exp(cumsum) ratios would under/overflow; segment sums and scans do not
        u, delta, A, B, C, _ = mamba_inputs(np.random.default_rng(23), shape=(600, 2), n=2, delta_range=(0.5, 3.0))
        A = A * 50
        y0 = ssm.selective_scan(u, delta, A, B, C)
        for f in SCANS[2:]:
            y = f(u, delta, A, B, C)
            assert np.all(np.isfinite(y))
            close(y, y0, rtol=SELF, what=f"{f.__name__} long sequence")

    def test_zero_A_integrates(self):
        L = 10
        u = np.arange(1.0, L + 1)[:, None]
        ones = np.ones((L, 1))
        for disc in ("mamba", "zoh"):
            y = ssm.selective_scan_loop(u, 0.5 * ones, [[0.0]], ones, ones, discretization=disc)
            close(y[:, 0], 0.5 * np.cumsum(u[:, 0]), rtol=ORACLE, what="A = 0 integrates")
            close(ssm.selective_scan(u, 0.5 * ones, [[0.0]], ones, ones, discretization=disc), y, rtol=SELF, what="A = 0")

    @settings(max_examples=20)
    @given(seed=st.integers(0, 2**32 - 1), L=st.integers(2, 25), t=st.integers(0, 24))
    def test_causality(self, seed, L, t):
        t = t % (L - 1)
        rng = np.random.default_rng(seed)
        u, delta, A, B, C, D = mamba_inputs(rng, shape=(L, 2), n=3)
        u2, delta2, B2, C2 = u.copy(), delta.copy(), B.copy(), C.copy()
        for arr in (u2, B2, C2):
            arr[t + 1 :] += 5 * rng.normal(size=arr[t + 1 :].shape)
        delta2[t + 1 :] *= 3.0
        for f in (ssm.selective_scan, ssm.selective_scan_assoc, ssm.selective_scan_matrix):
            y1 = f(u, delta, A, B, C, D)
            y2 = f(u2, delta2, A, B2, C2, D)
            np.testing.assert_allclose(y2[: t + 1], y1[: t + 1], rtol=0, atol=1e-12 * (1 + np.max(np.abs(y1))))

    def test_bad_input(self):
        u, delta, A, B, C, D = mamba_inputs(np.random.default_rng(24), shape=(6, 2), n=3)
        for f in SCANS:
            with pytest.raises(ValueError, match="^delta: expected step sizes > 0"):
                f(u, np.where(delta > 0.5, 0.0, delta) * 0.0, A, B, C)
            with pytest.raises(ValueError, match="^delta: expected step sizes > 0"):
                f(u, -delta, A, B, C)
            with pytest.raises(ValueError, match="^delta: expected shape"):
                f(u, delta[:5], A, B, C)
            with pytest.raises(ValueError, match="^A: expected a stable"):
                f(u, delta, -A + 0.0, B, C)
            with pytest.raises(ValueError, match="^A: expected shape"):
                f(u, delta, A[:1], B, C)
            with pytest.raises(ValueError, match="^B: expected shape"):
                f(u, delta, A, B[:, :2], C)
            with pytest.raises(ValueError, match="^C: expected shape"):
                f(u, delta, A, B, C[:4])
            with pytest.raises(ValueError, match="^D: expected shape"):
                f(u, delta, A, B, C, np.ones(3))
            with pytest.raises(ValueError, match="^discretization:"):
                f(u, delta, A, B, C, discretization="bilinear")
            with pytest.raises(ValueError, match="^u: expected shape"):
                f(u[:, 0], delta[:, 0], A, B, C)
            with pytest.raises(ValueError, match="^u: expected shape"):
                f(u[:0], delta[:0], A, B[:0], C[:0])
            with pytest.raises(TypeError, match="^A: expected real"):
                f(u, delta, A + 1j, B, C)
        with pytest.raises(ValueError, match="^delta: expected shape"):
            ssm.semiseparable_matrix(delta[:, 0], A, B, C)


# ---------------------------------------------------------------------------------------------
# The official interface (mamba_ssm's selective_scan_fn), layout (batch, D, L)
# ---------------------------------------------------------------------------------------------


def official_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """mamba_ssm's ``selective_scan_ref`` semantics written independently in NumPy float64.

    A per-step loop in the official layout: u, delta (b, D, L); A (D, N); B, C (D, N), (b, N, L),
    (b, G, N, L), or, with a complex A, real (…, 2L) viewed as complex pairs (the memory layout
    ``torch.view_as_complex`` reads); groups expanded by repetition; ``y.real * 2`` for complex.
    """
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = np.maximum(delta, 0.0) + np.log1p(np.exp(-np.abs(delta)))
    batch, dim, L = u.shape
    N = A.shape[1]
    is_complex = np.iscomplexobj(A)

    def per_channel(X):  # -> (batch, dim, N, L)
        if X.ndim == 2:
            return np.broadcast_to(X[None, :, :, None], (batch, dim, N, L))
        if is_complex and not np.iscomplexobj(X):
            X = np.ascontiguousarray(X, dtype=np.float64).view(np.complex128)  # (re, im) pairs along the last axis
        if X.ndim == 3:
            X = X[:, None]
        return np.repeat(X, dim // X.shape[1], axis=1)  # "B G N L -> B (G H) N L"

    Bx, Cx = per_channel(B), per_channel(C)
    deltaA = np.exp(delta[:, :, None, :] * A[None, :, :, None])
    deltaB_u = delta[:, :, None, :] * Bx * u[:, :, None, :]
    x = np.zeros((batch, dim, N), dtype=complex if is_complex else float)
    ys = []
    for i in range(L):
        x = deltaA[..., i] * x + deltaB_u[..., i]
        y = np.sum(x * Cx[..., i], axis=-1)
        ys.append(2 * y.real if is_complex else y)
    out = np.stack(ys, axis=-1)
    if D is not None:
        out = out + u * D[:, None]
    if z is not None:
        out = out * z / (1.0 + np.exp(-z))
    return out, x


def official_inputs(rng, batch=2, dim=4, L=9, N=3, B_form="shared", C_form="shared", complex_A=False,
                    interleaved=True, G=2):
    """Random arguments of selective_scan_fn: B, C in the form named ("invariant", "shared", "grouped")."""
    u = rng.normal(size=(batch, dim, L))
    delta = rng.normal(-1.0, 1.0, size=(batch, dim, L))  # before the softplus
    A = -np.exp(rng.normal(size=(dim, N)))
    if complex_A:
        A = A + 1j * np.pi * rng.normal(size=(dim, N))

    def make(form):
        if form == "invariant":
            X = rng.normal(size=(dim, N))
            return X + 1j * rng.normal(size=(dim, N)) if complex_A else X
        shape = (batch, N, L) if form == "shared" else (batch, G, N, L)
        if complex_A and interleaved:
            return rng.normal(size=shape[:-1] + (2 * L,))
        X = rng.normal(size=shape)
        return X + 1j * rng.normal(size=shape) if complex_A else X

    return dict(u=u, delta=delta, A=A, B=make(B_form), C=make(C_form), D=rng.normal(size=dim),
                z=rng.normal(size=(batch, dim, L)), delta_bias=rng.normal(0.5, 0.3, size=dim))


FORMS = ["invariant", "shared", "grouped"]
FN_SCANS = [ssm.selective_scan_fn, ssm.selective_scan_fn_loop]


class TestChunkedSelectiveScan:
    """The chunked closed form inside :func:`ssm.selective_scan` (chunks of ``_SCAN_CHUNK`` steps).

    Within a chunk ``h_t = e^{S_t}(h_0 + Σ_{s≤t} e^{−S_s} B̄_s u_s)``: the loop twin is the oracle,
    entry by entry against the size of the terms (the same scan of |u|, |B|, |C|), through the
    regimes the implementation distinguishes: moderate decays (all chunks), fast decays (chunks
    halved), decays too fast for any chunk (the step loop) and overflow of ``e^{−S} B̄ u``.
    """

    @staticmethod
    def count(monkeypatch):
        calls = {"steps": 0, "chunks": 0}
        steps, chunks = ssm._selective_steps, ssm._selective_chunks

        def counted_steps(*args, **kw):
            calls["steps"] += 1
            return steps(*args, **kw)

        def counted_chunks(*args, **kw):
            calls["chunks"] += 1
            return chunks(*args, **kw)

        monkeypatch.setattr(ssm, "_selective_steps", counted_steps)
        monkeypatch.setattr(ssm, "_selective_chunks", counted_chunks)
        return calls

    @staticmethod
    def entrywise(u, delta, A, B, C, discretization, what):
        """selective_scan vs its loop twin, entry by entry, relative to Σ |C| e^{S_t − S_s} |B̄ u| (the size of the terms)."""
        y, h = ssm.selective_scan(u, delta, A, B, C, discretization=discretization, return_last_state=True)
        yl, hl = ssm.selective_scan_loop(u, delta, A, B, C, discretization=discretization, return_last_state=True)
        scale, hscale = ssm.selective_scan_loop(np.abs(u), delta, A, np.abs(B), np.abs(C),
                                                discretization=discretization, return_last_state=True)
        err = max(float(np.max(np.abs(y - yl) / scale)), float(np.max(np.abs(h - hl) / hscale)))
        record(what, err, 1e-12)
        assert err <= 1e-12, (what, err)
        close(y, yl, rtol=SELF, what=what + " (norm-wise)")
        return y

    @pytest.mark.parametrize("discretization", ["mamba", "zoh"])
    def test_moderate_decay_runs_in_chunks(self, monkeypatch, discretization):
        rng = np.random.default_rng(40)
        L = 37 * ssm._SCAN_CHUNK + 5  # whole chunks and a shorter one
        u, delta, A, B, C, _ = mamba_inputs(rng, shape=(2, L, 3), n=4, delta_range=(1e-3, 0.3))
        calls = self.count(monkeypatch)
        self.entrywise(u, delta, A, B, C, discretization, f"chunked scan, moderate decay ({discretization})")
        assert calls["chunks"] > 0 and calls["steps"] == 0

    @pytest.mark.parametrize("discretization", ["mamba", "zoh"])
    def test_fast_decay_halves_the_chunks(self, monkeypatch, discretization):
        # Δ_t A down to −50 per step: 16 steps would reach −800, 4 steps stay within −200
        rng = np.random.default_rng(41)
        L = 300
        u, delta, _, B, C, _ = mamba_inputs(rng, shape=(L, 3), n=4, delta_range=(0.5, 1.0))
        A = -rng.uniform(10.0, 50.0, size=(3, 4))
        calls = self.count(monkeypatch)
        self.entrywise(u, delta, A, B, C, discretization, f"chunked scan, Δ A to -50 ({discretization})")
        assert calls["chunks"] > 0 and calls["steps"] == 0

    def test_too_fast_for_any_chunk_uses_the_step_loop(self, monkeypatch):
        # one stretch with Δ A = −400 per step (beyond the bound even for two steps), moderate elsewhere
        rng = np.random.default_rng(42)
        L = 400
        u, delta, A, B, C, _ = mamba_inputs(rng, shape=(L, 2), n=3, delta_range=(1e-2, 0.2))
        A[0, 0] = -20.0
        delta[150:170, 0] = 20.0
        calls = self.count(monkeypatch)
        self.entrywise(u, delta, A, B, C, "mamba", "chunked scan, Δ A = -400 stretch")
        assert calls["chunks"] > 0 and calls["steps"] > 0

    def test_overflowing_terms_are_redone_in_shorter_chunks(self, monkeypatch):
        # e^{−S} reaches e^{288} ≈ 1e125 within 16 steps; with |B̄ u| ≈ 1e250 the product overflows
        L = 64
        rng = np.random.default_rng(43)
        u = 1e250 * rng.uniform(0.5, 1.0, size=(L, 2))
        delta, A = np.ones((L, 2)), np.full((2, 2), -18.0)
        B, C = rng.uniform(0.5, 1.0, size=(2, L, 2))
        calls = self.count(monkeypatch)
        y = self.entrywise(u, delta, A, B, C, "mamba", "chunked scan, overflow redone")
        assert np.all(np.isfinite(y)) and calls["chunks"] > 1

    @settings(max_examples=25, deadline=None)
    @given(seed=st.integers(0, 2**32 - 1), L=st.integers(1, 120), log_rate=st.floats(-4.0, 2.7))
    def test_random_decay_rates(self, seed, L, log_rate):
        # per-step decays |Δ A| spread over a decade around 10^log_rate (up to ~5000 per step)
        rng = np.random.default_rng(seed)
        u, delta, A, B, C, _ = mamba_inputs(rng, shape=(L, 2), n=3, delta_range=(0.3, 3.0))
        A = -(10.0**log_rate) * rng.uniform(0.1, 1.0, size=A.shape)
        for disc in ("mamba", "zoh"):
            self.entrywise(u, delta, A, B, C, disc, "chunked scan, random decay rates")

    def test_complex_official_long_sequence(self):
        # selective_scan_fn: complex A (fast rotations Im A up to ~30, decays up to ~50 per step), grouped
        # B, C, several thousand steps, against the official per-step reference and the loop twin
        rng = np.random.default_rng(44)
        kw = official_inputs(rng, batch=1, dim=4, L=2500, N=3, B_form="grouped", C_form="shared", complex_A=True)
        kw["A"] = -np.exp(rng.uniform(-3.0, 2.5, size=(4, 3))) + 1j * np.pi * rng.normal(0.0, 3.0, size=(4, 3))
        kw["delta_bias"] = np.array([-3.0, 0.0, 1.0, 2.0])
        ref, last_ref = official_reference(**kw, delta_softplus=True)
        out, last = ssm.selective_scan_fn(**kw, delta_softplus=True, return_last_state=True)
        close(out, ref, rtol=SELF, what="chunked complex scan vs official reference, L = 2500")
        close(last, last_ref, rtol=SELF, what="chunked complex scan last state, L = 2500")
        loop = ssm.selective_scan_fn_loop(**kw, delta_softplus=True)
        close(out, loop, rtol=SELF, what="chunked complex scan vs loop twin, L = 2500")


class TestSelectiveScanFn:
    def test_softplus_underflow_to_zero_is_refused(self):
        # documented policy: Δ ≤ 0 is refused, also the Δ = 0 of a float64 softplus that underflows (x < −745.13);
        # just above, Δ is a tiny positive number and the step is the identity to round-off
        u, A, B, C = np.ones((1, 1, 3)), -np.ones((1, 1)), np.ones((1, 1)), np.ones((1, 1))
        with pytest.raises(ValueError, match="got minimum 0"):
            ssm.selective_scan_fn(u, np.array([[[-0.5, -800.0, -0.5]]]), A, B, C, delta_softplus=True)
        out = ssm.selective_scan_fn(u, np.array([[[-0.5, -700.0, -0.5]]]), A, B, C, delta_softplus=True)
        assert out[0, 0, 1] == out[0, 0, 0]  # Ā = 1, B̄ u below an ulp: the state is carried unchanged
        assert math.log1p(math.exp(-745.0)) > 0 and math.log1p(math.exp(-746.0)) == 0
        assert np.float32(math.log1p(math.exp(-103.0))) > 0 and np.float32(math.log1p(math.exp(-104.0))) == 0

    @pytest.mark.parametrize("complex_A", [False, True], ids=["real_A", "complex_A"])
    @pytest.mark.parametrize("B_form,C_form,G,blocks", [
        ("grouped", "shared", 6, [100, 100, 100]),  # blocks of two whole groups of B (50 channels each)
        ("shared", "grouped", 2, [75, 75, 75, 75]),  # blocks inside the groups of C (150 channels each)
        ("invariant", "shared", 2, [128, 128, 44]),  # one group per channel (B constant in time), a short last block
        ("grouped", "invariant", 3, [100, 100, 100]),
    ])
    def test_wide_channels_run_in_blocks_that_read_their_own_groups(self, monkeypatch, B_form, C_form, G, blocks,
                                                                     complex_A):
        # more channels than ssm._SCAN_CHANNELS: blocks of channels (ssm._scan_channel_blocks) solved in turn by the
        # threads, each with the groups of B and C that its channels use; against the reference, and the same bits
        # with 1, 2 or 3 threads
        import refimpl._blocking as blocking

        monkeypatch.setattr(blocking, "THREAD_MIN_ELEMS", 0)
        rng = np.random.default_rng(7 + G + 2 * complex_A)
        kw = official_inputs(rng, dim=300, L=11, N=3, B_form=B_form, C_form=C_form, complex_A=complex_A, G=G)
        B_shape, C_shape = (np.shape(kw[X]) for X in ("B", "C"))
        groups = [1 if len(shp) == 3 else shp[1] for shp in (B_shape, C_shape)]
        groups = [300 if form == "invariant" else g for form, g in zip((B_form, C_form), groups)]
        assert [s.stop - s.start for s in ssm._forward_channel_blocks(300, *groups, 11, 2 * 3)] == blocks
        ref, last_ref = official_reference(**kw, delta_softplus=True)
        results = []
        for threads in (1, 2, 3):
            monkeypatch.setattr(blocking, "THREADS", threads)
            results.append(ssm.selective_scan_fn(**kw, delta_softplus=True, return_last_state=True))
        close(results[0][0], ref, rtol=ORACLE, what=f"{B_form}/{C_form} vs reference")
        close(results[0][1], last_ref, rtol=ORACLE, what="last state")
        for out, last in results[1:]:
            assert np.array_equal(out, results[0][0]) and np.array_equal(last, results[0][1])

    @pytest.mark.parametrize("complex_A", [False, True], ids=["real_A", "complex_A"])
    @pytest.mark.parametrize("C_form", FORMS)
    @pytest.mark.parametrize("B_form", FORMS)
    def test_every_B_C_form_matches_the_reference(self, B_form, C_form, complex_A):
        rng = np.random.default_rng(100 + 10 * FORMS.index(B_form) + 2 * FORMS.index(C_form) + complex_A)
        kw = official_inputs(rng, B_form=B_form, C_form=C_form, complex_A=complex_A)
        ref, last_ref = official_reference(**kw, delta_softplus=True)
        for f in FN_SCANS:
            out, last = f(**kw, delta_softplus=True, return_last_state=True)
            assert out.shape == kw["u"].shape and out.dtype == np.float64
            assert last.shape == (2, 4, 3) and last.dtype == (np.complex128 if complex_A else np.float64)
            close(out, ref, rtol=ORACLE, what=f"{f.__name__} {B_form}/{C_form} vs reference")
            close(last, last_ref, rtol=ORACLE, what=f"{f.__name__} last state")

    @pytest.mark.parametrize("complex_A", [False, True], ids=["real_A", "complex_A"])
    @pytest.mark.parametrize("options", [(), ("D",), ("z",), ("delta_bias",), ("delta_softplus",),
                                         ("D", "z", "delta_bias", "delta_softplus")])
    def test_each_option(self, options, complex_A):
        rng = np.random.default_rng(len(options) + 10 * complex_A)
        kw = official_inputs(rng, B_form="grouped", C_form="shared", complex_A=complex_A)
        kw["delta"] = np.abs(kw["delta"]) + 0.05  # Δ > 0 without the softplus
        for name in ("D", "z", "delta_bias"):
            if name not in options:
                kw[name] = None
        softplus = "delta_softplus" in options
        ref, last_ref = official_reference(**kw, delta_softplus=softplus)
        for f in FN_SCANS:
            out = f(**kw, delta_softplus=softplus)
            close(out, ref, rtol=ORACLE, what=f"{f.__name__} with {options}")
            out2, last = f(**kw, delta_softplus=softplus, return_last_state=True)
            np.testing.assert_array_equal(out2, out)
            close(last, last_ref, rtol=ORACLE, what=f"{f.__name__} last state with {options}")

    @pytest.mark.parametrize("L", [1, 63, 65, 2049])
    def test_odd_lengths(self, L):
        rng = np.random.default_rng(L)
        for complex_A in (False, True):
            kw = official_inputs(rng, batch=1, dim=2, L=L, N=2, B_form="grouped", C_form="invariant",
                                 complex_A=complex_A, G=2)
            ref, last_ref = official_reference(**kw, delta_softplus=True)
            out, last = ssm.selective_scan_fn(**kw, delta_softplus=True, return_last_state=True)
            close(out, ref, rtol=ORACLE, what=f"L = {L}")
            close(last, last_ref, rtol=ORACLE, what=f"L = {L} last state")
            if L <= 65:
                close(ssm.selective_scan_fn_loop(**kw, delta_softplus=True), out, rtol=ORACLE, what=f"loop L = {L}")

    def test_blocking_does_not_change_the_result(self, monkeypatch):
        import refimpl._blocking

        kw = official_inputs(np.random.default_rng(3), L=40, B_form="grouped", C_form="invariant", complex_A=True)
        whole = ssm.selective_scan_fn(**kw, delta_softplus=True)
        monkeypatch.setattr(refimpl._blocking, "WORKSPACE_FLOATS", 1)  # one time step per block
        np.testing.assert_allclose(ssm.selective_scan_fn(**kw, delta_softplus=True), whole, rtol=0, atol=1e-14 * np.abs(whole).max())

    def test_is_selective_scan_after_the_mapping(self):
        # shared B, C, real A: transpose to (batch, L, D), Δ = softplus(delta + delta_bias), then selective_scan
        kw = official_inputs(np.random.default_rng(4), L=30)
        t = lambda a: np.swapaxes(a, -1, -2)  # noqa: E731
        step = np.logaddexp(0.0, kw["delta"] + kw["delta_bias"][:, None])
        y, h = ssm.selective_scan(t(kw["u"]), t(step), kw["A"], t(kw["B"]), t(kw["C"]), kw["D"], return_last_state=True)
        kw["z"] = None
        out, last = ssm.selective_scan_fn(**kw, delta_softplus=True, return_last_state=True)
        close(out, t(y), rtol=ORACLE, what="selective_scan_fn == selective_scan after the mapping")
        close(last, h, rtol=ORACLE, what="last state after the mapping")
        # grouped B, C: group g is selective_scan on its channels
        kw = official_inputs(np.random.default_rng(5), L=30, dim=6, B_form="grouped", C_form="grouped", G=3)
        kw["z"] = None
        out = ssm.selective_scan_fn(**kw, delta_softplus=True)
        step = np.logaddexp(0.0, kw["delta"] + kw["delta_bias"][:, None])
        for g in range(3):
            ch = slice(2 * g, 2 * g + 2)
            y = ssm.selective_scan(t(kw["u"][:, ch]), t(step[:, ch]), kw["A"][ch], t(kw["B"][:, g]), t(kw["C"][:, g]),
                                   kw["D"][ch])
            close(out[:, ch], t(y), rtol=ORACLE, what=f"group {g} == selective_scan on its channels")

    def test_complex_A_is_a_bank_of_one_pole_filters(self):
        # LTI: constant Δ, time-invariant complex B, C: y = 2 Re Σ_n C_n lfilter([Δ B_n], [1, −e^{Δ A_n}], u)
        rng = np.random.default_rng(6)
        L, N, dt = 80, 3, 0.3
        A = -rng.uniform(0.1, 1.0, (1, N)) + 1j * rng.uniform(-3, 3, (1, N))
        B, C = cplx_normal(rng, 1, N), cplx_normal(rng, 1, N)
        u = rng.normal(size=(1, 1, L))
        ref = sum(2 * (C[0, n] * scipy.signal.lfilter([dt * B[0, n]], [1.0, -np.exp(dt * A[0, n])], u[0, 0])).real
                  for n in range(N))
        for f in FN_SCANS:
            close(f(u, np.full((1, 1, L), dt), A, B, C)[0, 0], ref, rtol=ORACLE, what=f"{f.__name__} vs lfilter bank")

    def test_interleaved_storage_equals_complex_arrays(self):
        rng = np.random.default_rng(7)
        kw = official_inputs(rng, B_form="grouped", C_form="shared", complex_A=True, interleaved=True)
        as_complex = dict(kw, B=kw["B"][..., 0::2] + 1j * kw["B"][..., 1::2], C=kw["C"][..., 0::2] + 1j * kw["C"][..., 1::2])
        np.testing.assert_array_equal(ssm.selective_scan_fn(**kw, delta_softplus=True),
                                      ssm.selective_scan_fn(**as_complex, delta_softplus=True))

    def test_complex_dtype_decides_the_doubling(self):
        # a complex128 A with zero imaginary parts: conjugate-pair read-out 2 Re y, as A.is_complex() decides
        kw = official_inputs(np.random.default_rng(8), B_form="invariant", C_form="invariant")
        real = ssm.selective_scan_fn(**dict(kw, D=None, z=None), delta_softplus=True)
        doubled = ssm.selective_scan_fn(**dict(kw, A=kw["A"] + 0j, D=None, z=None), delta_softplus=True)
        close(doubled, 2 * real, rtol=ORACLE, what="complex dtype doubles")

    def test_softplus_is_exact_beyond_20(self):
        # mamba_ssm returns x itself for x > 20; refimpl keeps log(1 + e^x) = x + log1p(e^-x)
        one = np.ones((1, 1, 1))
        out = ssm.selective_scan_fn(one, np.full((1, 1, 1), 25.0), [[0.0]], [[1.0]], [[1.0]], delta_softplus=True)
        assert out[0, 0, 0] == 25.0 + math.log1p(math.exp(-25.0)) and out[0, 0, 0] != 25.0

    def test_bad_input(self):
        kw = official_inputs(np.random.default_rng(9), B_form="grouped", C_form="shared")
        call = lambda **over: ssm.selective_scan_fn(**dict(kw, **over), delta_softplus=True)  # noqa: E731
        cases = [
            (ValueError, "^u: expected shape \\(batch, D, L\\)", dict(u=kw["u"][0])),
            (ValueError, "^delta: expected the shape of u", dict(delta=np.swapaxes(kw["delta"], 1, 2))),
            (ValueError, "^A: expected shape \\(4, N\\)", dict(A=kw["A"].T)),
            (ValueError, "^A: expected a stable diagonal", dict(A=-kw["A"])),
            (ValueError, "^B: its G = 3 groups do not divide the D = 4 channels", dict(B=np.ones((2, 3, 3, 9)))),
            (ValueError, "^B: expected shape", dict(B=np.swapaxes(kw["B"], -1, -2))),
            (ValueError, "^B: expected shape", dict(B=np.ones((3, 9)))),
            (ValueError, "^C: expected shape", dict(C=kw["C"][:1])),
            (ValueError, "^C: expected last axis L = 9", dict(C=kw["C"][..., :8])),
            (ValueError, "^D: expected shape \\(4,\\)", dict(D=np.ones(3))),
            (ValueError, "^z: expected the shape of u", dict(z=kw["z"][..., :3])),
            (ValueError, "^delta_bias: expected shape \\(4,\\)", dict(delta_bias=np.ones((4, 1)))),
            (TypeError, "^B: complex values need a complex A", dict(B=kw["B"] + 1j)),
            (ValueError, "^B: with a complex A a real B holds \\(real, imaginary\\) pairs", dict(A=kw["A"] + 1j)),
            (TypeError, "^u: expected real values", dict(u=kw["u"] + 1j)),
        ]
        for exc, pattern, over in cases:
            with pytest.raises(exc, match=pattern):
                call(**over)
        for f in FN_SCANS:
            with pytest.raises(TypeError, match="^delta_softplus: expected a bool"):
                f(**kw, delta_softplus=1)
            with pytest.raises(TypeError, match="^return_last_state: expected a bool"):
                f(**kw, return_last_state="yes")
            with pytest.raises(ValueError, match="^delta, delta_bias, delta_softplus: expected step sizes Δ = delta \\+ delta_bias > 0"):
                f(**kw)  # Δ = delta + delta_bias has negative entries without the softplus
        with pytest.raises(TypeError, match="positional arguments"):  # the flags are keyword-only (refimpl's convention)
            ssm.selective_scan_fn(kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"], None, None, None, True)


class TestBadInputRefusedByName:
    def test_dplr_refuses_re_lambda_zero(self):
        rng = np.random.default_rng(0)
        P, Q, B, C = (rng.normal(size=4) for _ in range(4))
        lam = -0.5 + 1j * np.arange(4.0)
        assert np.all(np.isfinite(ssm.s4_kernel_dplr(lam, P, Q, B, C, 0.1, 8)))
        for bad in (np.zeros(4, dtype=complex), 1j * np.arange(4.0)):  # Re λ = 0: singular Cauchy step (was NaN)
            with pytest.raises(ValueError, match=r"^Lambda: expected Re λ < 0"):
                ssm.s4_kernel_dplr(bad, P, Q, B, C, 0.1, 8)

    def test_flags_and_shapes(self):
        rng = np.random.default_rng(1)
        A = -0.5 + 1j * np.pi * np.arange(3)
        with pytest.raises(TypeError, match="^conj_pairs: expected a bool"):
            ssm.s4d_kernel(A, np.ones(3), np.ones(3), 0.1, 8, conj_pairs="yes")
        with pytest.raises(ValueError, match=r"^B: expected shape \(\.\.\., 1\) broadcastable with A"):
            ssm.s4d_kernel(A[:1], np.ones(3), np.ones(3), 0.1, 8)
        with pytest.raises(TypeError, match="^diagonal: expected a bool"):
            ssm.ssm_kernel(0.5 * np.eye(2), np.ones(2), np.ones(2), 4, diagonal=1)
        u = rng.normal(size=(6, 2))
        with pytest.raises(TypeError, match="^return_last_state: expected a bool"):
            ssm.selective_scan(u, np.full((6, 2), 0.1), -np.ones((2, 3)), np.ones((6, 3)), np.ones((6, 3)),
                               return_last_state="no")
        with pytest.raises(ValueError, match=r"^delta: expected shape \(\.\.\., L, d_in\) with L, d_in >= 1"):
            ssm.semiseparable_matrix(np.ones((0, 2)), -np.ones((2, 3)), np.ones((0, 3)), np.ones((0, 3)))


# ---------------------------------------------------------------------------------------------
# One decoding step: mamba_ssm's selective_state_update
# ---------------------------------------------------------------------------------------------
UPDATES = [ssm.selective_state_update, ssm.selective_state_update_loop]


def _decode(update, state, steps):
    """Run ``update`` over the steps (dicts of per-step arguments), returning the outputs stacked along a new axis 1."""
    outs = []
    for kw in steps:
        out, state = update(state, **kw)
        outs.append(out)
    return np.stack(outs, axis=1), state


@pytest.mark.parametrize("update", UPDATES)
def test_state_update_decodes_the_mamba_scan_token_by_token(update):
    """Mamba layout: decoding a sequence one token at a time from the zero state gives selective_scan_fn's outputs
    and its last state (the whole-sequence algorithm, an independent code path), with every option."""
    r = np.random.default_rng(70)
    b, D_, L, N = 2, 3, 6, 4
    u, delta, z = r.standard_normal((3, b, D_, L))
    A = -np.exp(r.standard_normal((D_, N)))
    B, C = r.standard_normal((2, b, N, L))
    Dv, bias = r.standard_normal(D_), r.normal(0.5, 0.5, D_)
    ref, last = ssm.selective_scan_fn(u, delta, A, B, C, Dv, z, bias, delta_softplus=True, return_last_state=True)
    steps = [dict(x=u[..., t], dt=delta[..., t], A=A, B=B[..., t], C=C[..., t], D=Dv, z=z[..., t], dt_bias=bias,
                  dt_softplus=True) for t in range(L)]
    out, state = _decode(update, np.zeros((b, D_, N)), steps)
    np.testing.assert_allclose(np.moveaxis(out, 1, -1), ref, rtol=0, atol=SELF * np.abs(ref).max())
    np.testing.assert_allclose(state, last, rtol=0, atol=SELF * np.abs(last).max())


@pytest.mark.parametrize("update", UPDATES)
def test_state_update_decodes_mamba2_token_by_token(update):
    """Heads layout (Mamba-2): decoding step by step from initial states gives mamba_chunk_scan_combined's outputs
    and final states; grouped B, C (head h reads group h // (H/G)), per-channel D, gate, bias and softplus."""
    from refimpl import linear_rnn

    r = np.random.default_rng(71)
    b, L, H, P, G, N = 2, 7, 4, 3, 2, 5
    x, z = r.standard_normal((2, b, L, H, P))
    dt = r.normal(-1.0, 1.0, (b, L, H))
    A = -np.exp(r.standard_normal(H))
    B, C = r.standard_normal((2, b, L, G, N))
    Dv, bias = r.standard_normal((H, P)), r.normal(0.5, 0.3, H)
    h0 = r.standard_normal((b, H, P, N))
    ref, final = linear_rnn.mamba_chunk_scan_combined(x, dt, A, B, C, 3, D=Dv, z=z, dt_bias=bias, initial_states=h0,
                                                      dt_softplus=True, return_final_states=True)
    tie = lambda a: np.broadcast_to(a[:, None, None], (H, P, N))  # noqa: E731 (Mamba-2's A per head, over (P, N))
    steps = [dict(x=x[:, t], dt=np.repeat(dt[:, t, :, None], P, axis=-1), A=tie(A), B=B[:, t], C=C[:, t], D=Dv,
                  z=z[:, t], dt_bias=np.repeat(bias[:, None], P, axis=-1), dt_softplus=True) for t in range(L)]
    out, state = _decode(update, h0, steps)
    np.testing.assert_allclose(out, ref, rtol=0, atol=SELF * np.abs(ref).max())
    np.testing.assert_allclose(state, final, rtol=0, atol=SELF * np.abs(final).max())


def test_state_update_twins_agree_and_leave_the_state_untouched():
    """The vectorized step and its scalar loop agree to rounding on random shapes and options; neither writes
    into the state it is given (refimpl is pure: mamba_ssm updates ``state`` in place)."""
    r = np.random.default_rng(72)
    for trial in range(20):
        heads = bool(trial % 2)
        b, H, P, N = r.integers(1, 4), int(r.choice([1, 2, 4])), r.integers(1, 5), r.integers(1, 6)
        G = int(r.choice([g for g in (1, 2, 4) if H % g == 0]))
        lead = (b, H, P) if heads else (b, P)
        state = r.standard_normal(lead + (N,))
        kw = dict(x=r.standard_normal(lead), dt=r.normal(0, 1, lead), A=-np.exp(r.standard_normal(lead[1:] + (N,))),
                  B=r.standard_normal((b, G, N) if heads else (b, N)), C=r.standard_normal((b, G, N) if heads else (b, N)))
        opts = dict(D=r.standard_normal(lead[1:]), z=r.standard_normal(lead), dt_bias=r.standard_normal(lead[1:]))
        chosen = {k: v for k, v in opts.items() if r.random() < 0.5}
        before = state.copy()
        a = ssm.selective_state_update(state, **kw, **chosen, dt_softplus=True)
        c = ssm.selective_state_update_loop(state, **kw, **chosen, dt_softplus=True)
        for u, w in zip(a, c):
            np.testing.assert_allclose(u, w, rtol=1e-13, atol=1e-14)
        np.testing.assert_array_equal(state, before)


@pytest.mark.parametrize("update", UPDATES)
def test_state_update_reads_and_writes_a_pool_of_states(update):
    """state_batch_indices: entry b updates row indices[b] of a larger pool; a negative index is padding (output 0,
    no row touched); rows no entry addresses are unchanged. Equal to the plain call on the gathered rows."""
    r = np.random.default_rng(73)
    pool, b, H, P, N = 6, 4, 2, 3, 4
    states = r.standard_normal((pool, H, P, N))
    idx = np.array([4, -1, 0, 2])
    kw = dict(x=r.standard_normal((b, H, P)), dt=r.uniform(0.1, 1.0, (b, H, P)),
              A=-np.exp(r.standard_normal((H, P, N))), B=r.standard_normal((b, 1, N)), C=r.standard_normal((b, 1, N)))
    out, new = update(states, **kw, state_batch_indices=idx)
    live = idx >= 0
    sub = {k: (v[live] if k in ("x", "dt", "B", "C") else v) for k, v in kw.items()}
    ref_out, ref_rows = update(states[idx[live]], **sub)
    np.testing.assert_allclose(out[live], ref_out, rtol=1e-14, atol=1e-15)
    np.testing.assert_array_equal(out[~live], 0.0)
    np.testing.assert_allclose(new[idx[live]], ref_rows, rtol=1e-14, atol=1e-15)
    untouched = np.setdiff1d(np.arange(pool), idx[live])
    np.testing.assert_array_equal(new[untouched], states[untouched])


def test_state_update_edge_values():
    """A tiny Δ (softplus(−700) ≈ 1e-304) leaves the state unchanged to rounding and reads C·h + D x; a huge softplus
    argument is Δ = x itself (no overflow)."""
    r = np.random.default_rng(74)
    h0, x = r.standard_normal((1, 2, 3)), r.standard_normal((1, 2))
    A, B, C, Dv = -np.ones((2, 3)), r.standard_normal((1, 3)), r.standard_normal((1, 3)), r.standard_normal(2)
    for update in UPDATES:
        out, h1 = update(h0, x, np.full((1, 2), -700.0), A, B, C, Dv, dt_softplus=True)
        np.testing.assert_array_equal(h1, h0)
        np.testing.assert_allclose(out, h0 @ C[0] + Dv * x, rtol=1e-15)
        out, h1 = update(h0, x, np.full((1, 2), 800.0), -1e-3 * np.ones((2, 3)), B, C, dt_softplus=True)
        np.testing.assert_allclose(h1, np.exp(-0.8) * h0 + 800.0 * B[0] * x[0, :, None], rtol=1e-14)


@pytest.mark.parametrize("update", UPDATES)
def test_state_update_refuses_a_zero_step_like_the_scan(update):
    """Δ = 0 — given directly, or a float64 softplus that underflows (x < −745.13) — is refused by the decoding step
    exactly when selective_scan_fn refuses it (one policy for both Mamba kernels, neither of which clamps the step),
    naming the arguments that make Δ; padding entries (index < 0) are not computed, so their steps are not checked."""
    r = np.random.default_rng(76)
    h0, x = r.standard_normal((2, 2, 3)), r.standard_normal((2, 2))
    A, B, C = -np.ones((2, 3)), r.standard_normal((2, 3)), r.standard_normal((2, 3))
    cases = [(dict(dt=np.array([[0.3, 0.0], [0.2, 0.1]])), "^dt, dt_softplus: expected step sizes Δ = dt > 0"),
             (dict(dt=np.array([[0.3, -800.0], [0.2, 0.1]]), dt_softplus=True),
              r"^dt: expected step sizes Δ = softplus\(dt\) > 0 \(Eq. \(11.21\)\), got minimum 0"),
             (dict(dt=np.array([[0.3, -0.5], [0.2, 0.1]]), dt_bias=np.array([0.0, 0.5])),
              r"^dt, dt_bias, dt_softplus: expected step sizes Δ = dt \+ dt_bias > 0")]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            update(h0, x, kw["dt"], A, B, C, dt_bias=kw.get("dt_bias"), dt_softplus=kw.get("dt_softplus", False))
        # the same step as a sequence of length 1 for selective_scan_fn: refused too
        with pytest.raises(ValueError, match="expected step sizes"):
            ssm.selective_scan_fn(x[..., None], kw["dt"][..., None], A, B[..., None], C[..., None],
                                  delta_bias=kw.get("dt_bias"), delta_softplus=kw.get("dt_softplus", False))
    # just above the underflow both accept, and decoding still equals the scan
    dt = np.array([[0.3, -700.0], [0.2, 0.1]])
    out, h1 = update(h0, x, dt, A, B, C, dt_softplus=True)
    np.testing.assert_array_equal(h1[0, 1], h0[0, 1])  # Δ ≈ 1e-304: the identity step to rounding
    ref, last = ssm.selective_scan_fn(x[..., None], dt[..., None], A, B[..., None], C[..., None], delta_softplus=True,
                                      return_last_state=True)
    np.testing.assert_allclose(h1, h0 * np.exp(np.logaddexp(0.0, dt)[..., None] * A) + last, rtol=1e-14)
    # a padding entry's step is not checked (its output is 0 and no state changes)
    out, h1 = update(h0, x, np.array([[0.3, 0.2], [0.0, -1.0]]), A, B, C, state_batch_indices=[1, -1])
    np.testing.assert_array_equal(out[1], 0.0)
    np.testing.assert_array_equal(h1[0], h0[0])


@pytest.mark.parametrize("update", UPDATES)
def test_state_update_refuses_bad_input_by_name(update):
    r = np.random.default_rng(75)
    b, H, P, N = 2, 4, 3, 5
    good = dict(state=r.standard_normal((b, H, P, N)), x=r.standard_normal((b, H, P)), dt=r.uniform(0.1, 1, (b, H, P)),
                A=-np.ones((H, P, N)), B=r.standard_normal((b, 2, N)), C=r.standard_normal((b, 2, N)))
    cases = [
        (dict(state=np.ones((b, N))), ValueError, "^state: expected shape"),
        (dict(x=np.ones((b, H, P + 1))), ValueError, "^x: expected shape"),
        (dict(dt=np.ones((b, H))), ValueError, "^dt: expected the shape of x"),
        (dict(dt=None), TypeError, "^dt: expected a number or array"),
        (dict(A=np.ones((H, P, N))), ValueError, "^A: expected a stable diagonal"),
        (dict(A=-np.ones((P, N))), ValueError, "^A: expected shape"),
        (dict(B=np.ones((b, 3, N)), C=np.ones((b, 3, N))), ValueError, "^B: its 3 groups do not divide the 4 heads"),
        (dict(C=np.ones((b, 1, N))), ValueError, "^C: expected the groups of B"),
        (dict(B=np.ones((b + 1, 2, N))), ValueError, "^B: expected shape"),
        (dict(D=np.ones(P)), ValueError, r"^D: expected shape \(nheads, dim\)"),
        (dict(dt_bias=np.ones((H, P, 1))), ValueError, "^dt_bias: expected shape"),
        (dict(z=np.ones((b, P))), ValueError, "^z: expected the shape of x"),
        (dict(dt=-np.ones((b, H, P))), ValueError, r"^dt, dt_softplus: expected step sizes Δ = dt > 0"),
        (dict(dt=np.zeros((b, H, P))), ValueError, r"^dt, dt_softplus: expected step sizes Δ = dt > 0 .*got minimum 0"),
        (dict(x=np.full((b, H, P), np.nan)), ValueError, "^x: "),
        (dict(dt_softplus="yes"), TypeError, "^dt_softplus"),
        (dict(state_batch_indices=[0, 0]), ValueError, "^state_batch_indices: expected distinct indices"),
        (dict(state_batch_indices=[0, 2]), ValueError, "^state_batch_indices: expected indices < 2"),
        (dict(state_batch_indices=[0.0, 1.0]), TypeError, "^state_batch_indices"),
        (dict(state_batch_indices=[0]), ValueError, r"^state_batch_indices: expected shape \(2,\)"),
        (dict(state=r.standard_normal((b + 1, H, P, N))), ValueError, "^state: expected batch = 2 rows"),
    ]
    for change, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            update(**{**good, **change})
    out, _ = update(**good)  # the good call itself passes
    assert out.shape == (b, H, P)
    one = dict(state=r.standard_normal((b, P, N)), x=r.standard_normal((b, P)), dt=r.uniform(0.1, 1, (b, P)),
               A=-np.ones((P, N)), B=r.standard_normal((b, N)), C=r.standard_normal((b, N)))
    with pytest.raises(ValueError, match=r"^B: Mamba's layout \(a 3-D state\) has one group"):
        update(**{**one, "B": np.ones((b, 2, N))})
    assert update(**{**one, "B": one["B"][:, None]})[0].shape == (b, P)  # (batch, 1, dstate): the one group
