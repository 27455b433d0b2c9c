"""Tests of :mod:`refimpl.afa`: tensor and isotropic Adaptive Filter Attention, and the IRLS driver.

The identities of issue 5 ("Identities the tests must prove") and of spec afa.md §11, each against
an oracle that does not share code with the function under test:

* the loop twins (explicit loops over i, j, k; SELF);
* the pair quantities P, R, d², logits written out in the test from :mod:`refimpl.lyapunov`
  (``isotropic_covariance``, ``dle_covariance``, ``dle_covariance_backward``) and direct residuals;
* the residual-norm identity of spec §4.4 checked against explicit complex loops, with the
  cross term formed as a real matmul of width 2d;
* the closed forms of the filtering regimes (spec §4.7) and the ALiBi limit;
* the RoPE limit (spec §6) against real 2-vector rotations with explicit 2×2 matrices and a plain
  NumPy softmax, and against :func:`refimpl.attention.softmax_attention` on :func:`refimpl.positional.rope`;
* the maximum-likelihood estimate (spec §3.1, §11 item 7) as a dense least-squares solve, in the
  original basis with ``scipy.linalg.expm`` transitions (γ² = 0: the exact GLS of the generative
  model) and in the eigenbasis with the anchor noise (γ² > 0);
* a row-by-row evaluation of the equations for a long non-causal sequence (N = 3000);
* the equations in 40-digit decimal arithmetic (``afa_decimal``) where a variance or d² leaves the
  float64 range (σ² = γ² = 0 or σ² = η² = 0 at long lags, |q| ~ 1e300, huge ν), and the invariance
  of the isotropic form to a common offset of the time stamps.

Tolerances come from :mod:`refimpl._testing` (SELF, ORACLE); where an elementwise relative error is
asserted instead of the norm-wise one, it is said.
"""

from __future__ import annotations

import functools
import math
import tracemalloc
from decimal import Decimal, localcontext

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

from refimpl import afa as afa_module
from refimpl import sde
from _recording import recorder  # noqa: E402 (tests/ is on sys.path)
from _oracles import elementwise_rel as _elementwise_rel  # noqa: E402
from refimpl._testing import ORACLE, SELF, rel_error
from refimpl.afa import afa, afa_irls, afa_loop, isotropic_afa, isotropic_afa_loop
from refimpl.attention import softmax_attention
from refimpl.lyapunov import dle_covariance, dle_covariance_backward, isotropic_covariance
from refimpl.positional import rope

#: every entry AFA's element-wise checks compare is finite and nonzero
elementwise_rel = functools.partial(_elementwise_rel, nonzero=True)

EPS = np.finfo(np.float64).eps

#: worst error seen per oracle (printed by conftest when REFIMPL_WORST_ERRORS=1)
WORST_ERRORS, close, record = recorder()


def close_elementwise(actual, desired, *, rtol: float, what: str) -> float:
    err = record(what + " (elementwise)", elementwise_rel(actual, desired), rtol)
    assert err <= rtol, f"{what}: elementwise relative error {err:.3e} > {rtol:.1e}"
    return err


# ---------------------------------------------------------------------------------------------
# Test data
# ---------------------------------------------------------------------------------------------


def cplx(rng, shape, scale=1.0):
    return scale * (rng.normal(size=shape) + 1j * rng.normal(size=shape))


def make_times(kind: str, N: int, rng):
    """``None`` (the default arange), a uniform grid 0.5·arange (Toeplitz path), or irregular stamps."""
    if kind == "default":
        return None
    if kind == "half":
        return 0.5 * np.arange(N)
    return np.cumsum(rng.uniform(0.2, 1.4, size=N)) - 0.7  # irregular, partly negative times


def tensor_params(rng, d, *, zero_mu=(0,)):
    """Anisotropic dynamics and per-channel noise spectra; channels in ``zero_mu`` have μ = 0."""
    mu = rng.uniform(0.05, 0.8, size=d)
    mu[[c for c in zero_mu if c < d]] = 0.0  # the exact Brownian limit, Re λ = 0
    return dict(
        eigvals=-mu + 1j * rng.normal(scale=1.3, size=d),
        sigma2=rng.uniform(0.0, 0.8, size=d),
        eta2=rng.uniform(0.05, 0.9, size=d),
        gamma2=rng.uniform(0.05, 0.5, size=d),
        nu=2.5,
    )


def iso_params(rng, d):
    return dict(mu=0.35, omega=rng.normal(scale=1.3, size=d), sigma2=0.4, eta2=0.3, gamma2=0.2, nu=2.5)


def lags(t, N):
    t = np.arange(N, dtype=float) if t is None else np.asarray(t, dtype=float)
    return t, t[:, None] - t[None, :]  # Δt_ij = t_i − t_j


def softmax_rows(logits, allowed):
    """Plain NumPy softmax over the last axis, restricted to ``allowed``."""
    x = np.where(allowed, logits, -np.inf)
    x = x - np.max(x, axis=-1, keepdims=True)
    e = np.exp(x)
    return e / np.sum(e, axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# The pair quantities of Eqs. (7.2)-(7.5), written out from refimpl.lyapunov and direct residuals
# ---------------------------------------------------------------------------------------------


def pair_oracle(q, k, *, eigvals, sigma2, eta2, gamma2, t):
    """P (N, N, d) from :func:`isotropic_covariance` at the signed lag, R = q_i − e^{λΔt} k_j, d² = Σ_k P|R|²."""
    N, d = q.shape[-2:]
    lam = np.asarray(eigvals, dtype=complex)
    _, dt = lags(t, N)
    noise = [np.broadcast_to(np.asarray(x, dtype=float), (d,)) for x in (sigma2, eta2, gamma2)]
    P = np.empty((N, N, d))
    for c in range(d):
        P[:, :, c] = 1.0 / isotropic_covariance(dt, -lam[c].real, noise[0][c], noise[1][c], noise[2][c])
    R = q[..., :, None, :] - np.exp(lam * dt[..., None]) * k[..., None, :, :]
    d2 = np.sum(P * np.abs(R) ** 2, axis=-1)
    return P, R, d2


# =============================================================================================
# afa == afa_loop and isotropic_afa == isotropic_afa_loop
# =============================================================================================

WEIGHTS = [("student", None), ("student", 1.0), ("student", 2.5), ("exponential", None)]
GRID = [
    (causal, weight, kappa, temperature, rotate, tkind)
    for causal in (True, False)
    for weight, kappa in WEIGHTS
    for temperature in (1.0, 0.6)
    for rotate in (True, False)
    for tkind in ("default", "half", "irregular")
]


def grid_id(p):
    causal, weight, kappa, temperature, rotate, tkind = p
    return f"{'causal' if causal else 'bidir'}-{weight}-k{kappa}-T{temperature}-{'rot' if rotate else 'norot'}-{tkind}"


class TestAfa:
    @pytest.mark.parametrize("case", GRID, ids=grid_id)
    def test_loop_twin(self, case):
        causal, weight, kappa, temperature, rotate, tkind = case
        rng = np.random.default_rng(100)
        batch, N, d = (2,), 5, 3
        q, k, v = (cplx(rng, batch + (N, d)) for _ in range(3))
        par = tensor_params(rng, d)
        opts = dict(t=make_times(tkind, N, rng), weight=weight, kappa=kappa, temperature=temperature,
                    causal=causal, rotate_values=rotate)
        out, A = afa(q, k, v, **par, **opts, return_weights=True)
        out_l, A_l = afa_loop(q, k, v, **par, **opts, return_weights=True)
        assert out.shape == batch + (N, d) and out.dtype == np.complex128
        assert A.shape == A_l.shape == batch + (N, N, d)
        close(out, out_l, rtol=SELF, what="afa vs afa_loop")
        close(A, A_l, rtol=SELF, what="afa weights vs afa_loop")
        np.testing.assert_array_equal(afa(q, k, v, **par, **opts), out)  # return_weights changes nothing

    @settings(max_examples=40)
    @given(
        seed=st.integers(0, 2**32 - 1),
        batch=st.sampled_from([(), (1,), (2,), (2, 1, 2)]),
        N=st.integers(1, 5),
        d=st.integers(1, 4),
        zero_mu=st.sampled_from([(), (0,), (0, 1, 2, 3)]),
        scalar_noise=st.booleans(),
        causal=st.booleans(),
        weight=st.sampled_from(["student", "exponential"]),
        irregular=st.booleans(),
    )
    def test_loop_twin_shapes(self, seed, batch, N, d, zero_mu, scalar_noise, causal, weight, irregular):
        # batch axes, d = 1, N = 1, μ = 0 channels, scalar or per-channel noise
        rng = np.random.default_rng(seed)
        q, k, v = (cplx(rng, batch + (N, d)) for _ in range(3))
        par = tensor_params(rng, d, zero_mu=zero_mu)
        if scalar_noise:
            par.update(sigma2=0.3, eta2=0.2, gamma2=0.1)
        t = make_times("irregular" if irregular else "default", N, rng)
        opts = dict(t=t, weight=weight, causal=causal)
        out = afa(q, k, v, **par, **opts)
        assert out.shape == batch + (N, d)
        close(out, afa_loop(q, k, v, **par, **opts), rtol=SELF, what="afa vs afa_loop")

    def test_single_token_returns_its_value(self):
        # N = 1: the only key is the query itself (Δt = 0, e^{λ·0} = 1), with weight 1
        rng = np.random.default_rng(1)
        q, k, v = (cplx(rng, (3, 1, 4)) for _ in range(3))
        out, A = afa(q, k, v, **tensor_params(rng, 4), return_weights=True)
        np.testing.assert_array_equal(A, 1.0)
        close(out, v, rtol=ORACLE, what="afa N = 1")

    def test_real_input_is_cast(self):
        rng = np.random.default_rng(2)
        q, k, v = (rng.normal(size=(4, 2)) for _ in range(3))
        par = tensor_params(rng, 2)
        out = afa(q, k, v, **par)
        assert out.dtype == np.complex128
        np.testing.assert_array_equal(out, afa(q + 0j, k + 0j, v + 0j, **par))

    @pytest.mark.parametrize("causal", [True, False])
    def test_noiseless_trajectory_is_a_fixed_point(self, causal):
        # Tokens y_j = e^{λ t_j} y_0 on one noiseless path: every pulled-forward (or pushed-back) key
        # e^{λΔt_ij} y_j equals y_i, so whatever the weights, the estimate is y_i.
        rng = np.random.default_rng(3)
        N, d = 7, 3
        par = tensor_params(rng, d)
        t = make_times("irregular", N, rng)
        y = np.exp(par["eigvals"] * t[:, None]) * cplx(rng, d)
        for func in (afa, afa_loop):
            out = func(y, y, y, **par, t=t, causal=causal)
            close(out, y, rtol=SELF, what="afa on a noiseless trajectory")

    def test_exponential_weight_with_huge_nu_is_prior_only(self):
        # ν → ∞ (exponential weight): A = P / Σ_j P per channel, Eq. (7.6) without the robust factor
        rng = np.random.default_rng(4)
        N, d = 6, 3
        q, k, v = (cplx(rng, (N, d)) for _ in range(3))
        par = tensor_params(rng, d)
        par["nu"] = 1e300
        t = make_times("irregular", N, rng)
        _, A = afa(q, k, v, **par, t=t, weight="exponential", return_weights=True)
        P, _, _ = pair_oracle(q, k, **{key: par[key] for key in ("eigvals", "sigma2", "eta2", "gamma2")}, t=t)
        P = np.tril(np.moveaxis(P, -1, 0))  # (d, N, N), causal
        close(A, np.moveaxis(P / P.sum(axis=-1, keepdims=True), 0, -1), rtol=ORACLE, what="afa prior-only weights")


class TestAfaIntermediates:
    @pytest.mark.parametrize("causal", [True, False])
    def test_loop_twin(self, causal):
        # afa_loop(..., return_intermediates=True) forms every pair quantity by the equations
        rng = np.random.default_rng(11)
        q, k, v = (cplx(rng, (2, 5, 3)) for _ in range(3))
        par = tensor_params(rng, 3)
        t = make_times("irregular", 5, rng)
        out, extra = afa(q, k, v, **par, t=t, causal=causal, temperature=0.8, return_intermediates=True)
        out_l, extra_l = afa_loop(q, k, v, **par, t=t, causal=causal, temperature=0.8, return_intermediates=True)
        assert list(extra_l) == list(extra)
        close(out_l, out, rtol=SELF, what="afa_loop out")
        for key in ("A", "P", "R", "d2"):
            close(extra_l[key], extra[key], rtol=SELF, what=f"afa_loop intermediate {key}")
        finite = np.isfinite(extra["logits"])
        np.testing.assert_array_equal(np.isfinite(extra_l["logits"]), finite)  # −inf exactly where not allowed
        close(extra_l["logits"][finite], extra["logits"][finite], rtol=SELF, what="afa_loop logits")

    @pytest.mark.parametrize("causal", [True, False])
    @pytest.mark.parametrize("weight, kappa", [("student", None), ("student", 1.5), ("exponential", None)])
    def test_contents(self, causal, weight, kappa):
        rng = np.random.default_rng(10)
        batch, N, d = (2,), 6, 3
        q, k, v = (cplx(rng, batch + (N, d)) for _ in range(3))
        par = tensor_params(rng, d)
        t = make_times("irregular", N, rng)
        temperature = 0.8
        out, extra = afa(q, k, v, **par, t=t, weight=weight, kappa=kappa, temperature=temperature, causal=causal,
                         return_intermediates=True)
        assert set(extra) == {"A", "P", "R", "d2", "logits"}
        assert extra["A"].shape == extra["R"].shape == extra["logits"].shape == batch + (N, N, d)
        assert extra["P"].shape == (N, N, d)  # the precision does not depend on the data
        assert extra["d2"].shape == batch + (N, N)
        np.testing.assert_array_equal(out, afa(q, k, v, **par, t=t, weight=weight, kappa=kappa,
                                                temperature=temperature, causal=causal))
        _, dt = lags(t, N)
        allowed = dt >= 0 if causal else np.ones((N, N), bool)

        # P = 1/Σ(Δt) with the signed lag: forward for j ≤ i, pushed back for j > i (in both modes)
        noise = {key: par[key] for key in ("eigvals", "sigma2", "eta2", "gamma2")}
        P, R, d2 = pair_oracle(q, k, **noise, t=t)
        close_elementwise(extra["P"], P, rtol=ORACLE,
                          what="P = 1/lyapunov.isotropic_covariance")
        # R = q_i − e^{λΔt} k_j and d² = Σ_k P |R|²
        close(extra["R"], R, rtol=ORACLE, what="R = q_i − e^{λΔt} k_j")
        close_elementwise(extra["d2"], d2, rtol=ORACLE, what="d² = Σ_k P|R|²")
        # logits = β (log P − κ log(1 + d²/ν)) (or − d²/ν), −inf where not allowed
        kap = (par["nu"] + d) / d if kappa is None else kappa
        penalty = kap * np.log1p(d2 / par["nu"]) if weight == "student" else d2 / par["nu"]
        L = temperature * (np.log(P) - penalty[..., None])
        mask3 = np.broadcast_to(allowed[:, :, None], L.shape)
        assert np.all(extra["logits"][~mask3] == -np.inf)
        close(extra["logits"][mask3], L[mask3], rtol=ORACLE, what="afa logits")
        # A: softmax over allowed j, rows sum to 1, exact zeros where masked
        A = extra["A"]
        assert np.all(A[~mask3] == 0.0)
        assert np.max(np.abs(A.sum(axis=-2) - 1.0)) <= 8 * EPS
        A_ref = np.moveaxis(softmax_rows(np.moveaxis(L, -1, -3), allowed), -3, -1)
        close(A, A_ref, rtol=ORACLE, what="A = softmax of the test's logits")
        # and return_weights returns the same A
        np.testing.assert_array_equal(afa(q, k, v, **par, t=t, weight=weight, kappa=kappa, temperature=temperature,
                                          causal=causal, return_weights=True)[1], A)

    def test_precision_matches_dle_covariances(self):
        # Eqs. (2.4), (2.7), (2.9): Σ_fwd(τ) = Σ_DLE(τ) + η² e^{−2μτ} + γ²,
        # Σ_back(τ) = Σ^B_DLE(τ) + η² e^{2μτ} + γ²
        rng = np.random.default_rng(11)
        N, d = 7, 4
        q, k, v = (cplx(rng, (N, d)) for _ in range(3))
        par = tensor_params(rng, d)
        t = make_times("irregular", N, rng)
        _, extra = afa(q, k, v, **par, t=t, causal=False, return_intermediates=True)
        _, dt = lags(t, N)
        mu = -par["eigvals"].real
        fwd = dt >= 0
        tau = np.abs(dt)
        grow = np.exp(2 * mu * tau[..., None])
        sig_f = dle_covariance(par["eigvals"], par["sigma2"], tau) + par["eta2"] / grow
        sig_b = dle_covariance_backward(par["eigvals"], par["sigma2"], tau) + par["eta2"] * grow
        sigma = np.where(fwd[..., None], sig_f, sig_b) + par["gamma2"]
        close_elementwise(extra["P"], 1.0 / sigma, rtol=ORACLE, what="P = 1/(DLE + propagated η² + γ²)")
        # the diagonal is 1/(η² + γ²) (Σ(0), spec §2.4), to the rounding of exp(−log Σ)
        diag = np.diagonal(extra["P"], axis1=0, axis2=1).T  # (N, d)
        expected = np.broadcast_to(1.0 / (par["eta2"] + par["gamma2"]), (N, d))
        assert elementwise_rel(diag, expected) <= 4 * EPS

    def test_brownian_channels(self):
        # μ = 0: Σ = σ²|Δt| + η² + γ² for either sign of Δt (exact limit, no 0/0)
        rng = np.random.default_rng(12)
        N, d = 6, 3
        q, k, v = (cplx(rng, (N, d)) for _ in range(3))
        par = tensor_params(rng, d, zero_mu=(0, 1, 2))
        t = make_times("irregular", N, rng)
        _, extra = afa(q, k, v, **par, t=t, causal=False, return_intermediates=True)
        _, dt = lags(t, N)
        expected = 1.0 / (par["sigma2"] * np.abs(dt)[..., None] + par["eta2"] + par["gamma2"])
        close_elementwise(extra["P"], expected, rtol=ORACLE, what="P Brownian limit")


# =============================================================================================
# isotropic form
# =============================================================================================


class TestIsotropicAfa:
    @pytest.mark.parametrize("case", GRID, ids=grid_id)
    def test_loop_twin(self, case):
        causal, weight, kappa, temperature, rotate, tkind = case
        rng = np.random.default_rng(200)
        batch, N, d = (2,), 5, 3
        q, k, v = (cplx(rng, batch + (N, d)) for _ in range(3))
        par = iso_params(rng, d)
        opts = dict(t=make_times(tkind, N, rng), weight=weight, kappa=kappa, temperature=temperature,
                    causal=causal, rotate_values=rotate)
        out, A = isotropic_afa(q, k, v, **par, **opts, return_weights=True)
        out_l, A_l = isotropic_afa_loop(q, k, v, **par, **opts, return_weights=True)
        assert out.shape == batch + (N, d) and out.dtype == np.complex128
        assert A.shape == A_l.shape == batch + (N, N)
        close(out, out_l, rtol=SELF, what="isotropic_afa vs isotropic_afa_loop")
        close(A, A_l, rtol=SELF, what="isotropic_afa weights vs loop")
        np.testing.assert_allclose(A.sum(axis=-1), 1.0, rtol=0, atol=8 * EPS)
        if causal:
            assert np.all(A[..., np.triu_indices(N, 1)[0], np.triu_indices(N, 1)[1]] == 0.0)
        np.testing.assert_array_equal(isotropic_afa(q, k, v, **par, **opts), out)

    @settings(max_examples=40)
    @given(
        seed=st.integers(0, 2**32 - 1),
        batch=st.sampled_from([(), (1,), (3,), (2, 1, 2)]),
        N=st.integers(1, 6),
        d=st.integers(1, 4),
        mu=st.sampled_from([0.0, 1e-9, 0.2, 1.5]),
        causal=st.booleans(),
        weight=st.sampled_from(["student", "exponential"]),
        tkind=st.sampled_from(["default", "half", "irregular"]),
    )
    def test_loop_twin_shapes(self, seed, batch, N, d, mu, causal, weight, tkind):
        rng = np.random.default_rng(seed)
        q, k, v = (cplx(rng, batch + (N, d)) for _ in range(3))
        par = iso_params(rng, d)
        par["mu"] = mu
        opts = dict(t=make_times(tkind, N, rng), weight=weight, causal=causal)
        out = isotropic_afa(q, k, v, **par, **opts)
        assert out.shape == batch + (N, d)
        close(out, isotropic_afa_loop(q, k, v, **par, **opts), rtol=SELF, what="isotropic_afa vs isotropic_afa_loop")

    def test_peak_memory_is_not_n2d(self):
        # "never materialize an (N, N, d) array": at N = 256, d = 64 one complex (N, N, d) tensor is
        # 128 N² float64 words; the isotropic form needs a few (N, N) buffers.
        rng = np.random.default_rng(20)
        N, d = 256, 64
        q, k, v = (cplx(rng, (N, d)) for _ in range(3))
        par = iso_params(rng, d)
        for causal, t in [(True, None), (False, np.sort(rng.uniform(0, 100, N)))]:
            tracemalloc.start()
            try:
                isotropic_afa(q, k, v, **par, t=t, causal=causal, return_weights=True)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert peak < 32 * N * N * 8, f"peak {peak / (N * N * 8):.1f} N² words (an (N, N, d) tensor is 128)"

    @pytest.mark.parametrize(
        "grid",
        [
            lambda n: 0.1 * np.arange(n),
            lambda n: 0.01 * np.arange(n),
            lambda n: np.arange(n) / 3.0,
            lambda n: np.linspace(0.0, 7.0, n),
            lambda n: -50.0 + 0.37 * np.arange(n),
        ],
        ids=["0.1k", "0.01k", "k/3", "linspace", "offset"],
    )
    def test_grid_uniform_up_to_rounding_takes_the_toeplitz_path(self, grid, monkeypatch):
        """t = h·arange(N) with a non-dyadic h has steps that differ by a few ulps: it is recognised
        as uniform (lags h·(i − j), Toeplitz views), agrees with the per-pair (irregular) path to
        rounding, and its peak memory grows like the default grid's, not by N×N arrays."""
        import refimpl._blocking

        rng = np.random.default_rng(31)
        N, d = 96, 3
        t = grid(N)
        steps = np.diff(t)
        h = afa_module._uniform_step(t)
        assert h is not None and abs(h - (t[-1] - t[0]) / (N - 1)) <= 4 * np.finfo(float).eps * abs(h)
        lag = afa_module._LagKernels(t, 0.2, 0.3, 0.5, 0.1, 2.0)
        assert lag.uniform and lag.dt.base is not None  # a strided view of 2N − 1 lags, not an (N, N) array
        q, k, v = (cplx(rng, (N, d)) for _ in range(3))
        par = iso_params(rng, d)
        for causal in (True, False):
            for weight in ("student", "exponential"):
                kw = dict(**par, t=t, causal=causal, weight=weight, return_weights=True)
                y, w = isotropic_afa(q, k, v, **kw)
                with monkeypatch.context() as m:  # no tolerance: the per-pair path with t_i − t_j
                    m.setattr(afa_module, "_UNIFORM_ULPS", 0.0)
                    if not np.all(steps == steps[0]):
                        assert not afa_module._LagKernels(t, 0.2, 0.3, 0.5, 0.1, 2.0).uniform
                    y_pairs, w_pairs = isotropic_afa(q, k, v, **kw)
                assert np.max(np.abs(y - y_pairs)) <= 1e-14 * np.max(np.abs(y_pairs)), (causal, weight)
                assert np.max(np.abs(w - w_pairs)) <= 1e-14, (causal, weight)

        # memory: growth of the peak (one thread) from N = 512 to 1024, in N×N float64 arrays (above
        # N ≈ 400 the block workspace no longer holds all N² pairs, and is fixed)
        monkeypatch.setattr(refimpl._blocking, "THREADS", 1)

        def peak(n, times):
            r = np.random.default_rng(n)
            x = [r.normal(size=(n, 4)) for _ in range(3)]
            tracemalloc.start()
            try:
                isotropic_afa(*x, mu=0.1, omega=np.linspace(0.1, 1.0, 4), sigma2=0.3, eta2=0.5, gamma2=0.1, nu=3.0, t=times)
                return tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()

        def growth(times_of):
            return (peak(1024, times_of(1024)) - peak(512, times_of(512))) / (8 * (1024**2 - 512**2))

        assert growth(grid) < 0.25
        irregular = growth(lambda n: np.cumsum(np.random.default_rng(n).uniform(0.5, 1.5, n)))
        assert irregular > 4  # the per-pair path: several N×N arrays

    def test_perturbed_grid_is_not_uniform(self):
        """Stamps off a uniform grid by more than the rounding tolerance take the per-pair path."""
        rng = np.random.default_rng(32)
        t = 0.1 * np.arange(200)
        for size in (1e-12, 1e-9):
            t_p = t + size * rng.normal(size=t.shape)
            assert afa_module._uniform_step(t_p) is None
            assert not afa_module._LagKernels(t_p, 0.2, 0.3, 0.5, 0.1, 2.0).uniform
        # a drift that no single step shows: steps each within 2 tol of h, stamps not within tol
        n = 1001
        tol = afa_module._UNIFORM_ULPS * np.finfo(float).eps * 100.0
        bump = np.concatenate([np.arange(501), 1000 - np.arange(501, n)]) * (1.5 * tol)  # peaks at the middle
        t_d = np.linspace(0.0, 100.0, n) + bump
        assert afa_module._uniform_step(t_d) is None
        assert afa_module._uniform_step(np.linspace(0.0, 100.0, n)) is not None


class TestTensorEqualsIsotropic:
    @pytest.mark.parametrize("causal", [True, False])
    @pytest.mark.parametrize("weight, kappa", [("student", None), ("student", 1.0), ("exponential", None)])
    @pytest.mark.parametrize("tkind", ["default", "half", "irregular"])
    @pytest.mark.parametrize("rotate", [True, False])
    def test_outputs_and_weights(self, causal, weight, kappa, tkind, rotate):
        rng = np.random.default_rng(30)
        batch, N, d = (2, 1), 6, 4
        q, k, v = (cplx(rng, batch + (N, d)) for _ in range(3))
        par = iso_params(rng, d)
        iso = {key: par[key] for key in ("sigma2", "eta2", "gamma2", "nu")}
        opts = dict(t=make_times(tkind, N, rng), weight=weight, kappa=kappa, temperature=1.3, causal=causal,
                    rotate_values=rotate)
        out_i, A_i = isotropic_afa(q, k, v, **par, **opts, return_weights=True)
        out_t, A_t = afa(q, k, v, eigvals=-par["mu"] + 1j * par["omega"], **iso, **opts, return_weights=True)
        close(out_i, out_t, rtol=SELF, what="isotropic_afa vs afa")
        # the tensor weights do not depend on the channel, and equal the isotropic ones
        for c in range(d):
            assert np.max(np.abs(A_t[..., c] - A_t[..., 0])) <= 4 * EPS
            close(A_t[..., c], A_i, rtol=SELF, what="tensor A[..., k] vs isotropic A")
        # noise given per channel (equal entries) in the tensor form: the same
        per_channel = {key: np.full(d, value) for key, value in iso.items() if key != "nu"}
        out_pc = afa(q, k, v, eigvals=-par["mu"] + 1j * par["omega"], nu=par["nu"], **per_channel, **opts)
        close(out_pc, out_t, rtol=SELF, what="afa scalar vs per-channel noise")

    def test_cancellation_in_the_residual_norm(self):
        # q = k = v = a noiseless trajectory: ‖R‖² = 0 for every pair, and the factorized
        # ‖q‖² + E²‖k‖² − 2E Re(q̃†k̃) cancels to round-off (possibly negative; spec §9 item 5).
        rng = np.random.default_rng(31)
        N, d = 40, 8
        par = iso_params(rng, d)
        t = make_times("irregular", N, rng)
        y = np.exp((-par["mu"] + 1j * par["omega"]) * t[:, None]) * cplx(rng, d, scale=30.0)
        for causal in (True, False):
            out, A = isotropic_afa(y, y, y, **par, t=t, causal=causal, return_weights=True)
            assert np.all(np.isfinite(out)) and np.all(np.isfinite(A))
            close(out, y, rtol=SELF, what="isotropic_afa on a noiseless trajectory")
            iso = {key: par[key] for key in ("sigma2", "eta2", "gamma2", "nu")}
            _, A_t = afa(y, y, y, eigvals=-par["mu"] + 1j * par["omega"], **iso, t=t, causal=causal,
                         return_weights=True)
            close(A, A_t[..., 0], rtol=SELF, what="isotropic vs tensor weights at ‖R‖ = 0")


class TestResidualNormIdentity:
    """Spec §4.4: ‖q_i − e^{(−μ+iω)Δt} k_j‖² = ‖q_i‖² + E²‖k_j‖² − 2E Re(q̃_i† k̃_j), E = e^{−μΔt}
    (with the signed lag it holds for pushed-back pairs too)."""

    @staticmethod
    def direct(q, k, mu, omega, t):
        N, d = q.shape
        out = np.empty((N, N))
        for i in range(N):
            for j in range(N):
                s = 0.0
                for c in range(d):
                    r = q[i, c] - math.exp(-mu * (t[i] - t[j])) * complex(math.cos(omega[c] * (t[i] - t[j])),
                                                                          math.sin(omega[c] * (t[i] - t[j]))) * k[j, c]
                    s += r.real**2 + r.imag**2
                out[i, j] = s
        return out

    @staticmethod
    def factorized(q, k, mu, omega, t):
        rot = np.exp(-1j * omega * t[:, None])  # e^{−iωt}
        qt, kt = q * rot, k * rot
        cross = np.concatenate([qt.real, qt.imag], axis=1) @ np.concatenate([kt.real, kt.imag], axis=1).T
        E = np.exp(-mu * (t[:, None] - t[None, :]))  # signed lag: valid for pushed-back pairs too
        nq = np.sum(np.abs(q) ** 2, axis=1)[:, None]
        nk = np.sum(np.abs(k) ** 2, axis=1)[None, :]
        return nq + E**2 * nk - 2 * E * cross, np.real(qt.conj() @ kt.T), cross

    @pytest.mark.parametrize("mu", [0.0, 0.3])
    def test_identity(self, mu):
        rng = np.random.default_rng(40)
        N, d = 7, 5
        q, k = cplx(rng, (N, d)), cplx(rng, (N, d))
        omega = rng.normal(scale=1.5, size=d)
        t = make_times("irregular", N, rng)
        direct = self.direct(q, k, mu, omega, t)
        fact, cross_complex, cross_real = self.factorized(q, k, mu, omega, t)
        close(cross_real, cross_complex, rtol=ORACLE, what="Re(q̃†k̃) as a real 2d-wide matmul")
        close(fact, direct, rtol=ORACLE, what="residual-norm identity (§4.4)")
        # and the module's d² / P (tensor form with isotropic parameters) is this ‖R‖²
        _, extra = afa(q, k, k, eigvals=-mu + 1j * omega, sigma2=0.4, eta2=0.3, gamma2=0.2, nu=2.0, t=t,
                       causal=False, return_intermediates=True)
        close_elementwise(extra["d2"] / extra["P"][..., 0], direct, rtol=ORACLE, what="afa d²/P vs direct ‖R‖²")


# =============================================================================================
# Covariance kernel: filtering regimes and limits (spec §4.7)
# =============================================================================================


class TestFilteringRegimes:
    @staticmethod
    def prior(mu, sigma2, eta2, gamma2, lag):
        """The module's log P at the given causal lags (query at t = 0, keys at −lag), from the logits
        with q = k = 0 (so d² = 0 and the robust term vanishes)."""
        lag = np.asarray(lag, dtype=float)
        t = np.concatenate([-np.sort(lag)[::-1], [0.0]])
        N = t.size
        z = np.zeros((N, 1))
        _, extra = afa(z, z, z, eigvals=[-mu], sigma2=sigma2, eta2=eta2, gamma2=gamma2, nu=1.0, t=t,
                       return_intermediates=True)
        B = extra["logits"][-1, :-1, 0][::-1]  # row of the last query, in increasing lag
        assert elementwise_rel(np.exp(B), extra["P"][-1, :-1, 0][::-1]) <= 4 * EPS
        return np.sort(lag), B

    def test_diffusive_regime(self):
        # α < 0 (σ̃² > η²), α' = −α:
        # P = 1/(β − α' e^{−2μΔt}),  B = −log β − log(1 − (α'/β) e^{−2μΔt})
        mu, sigma2, eta2, gamma2 = 0.4, 1.2, 0.3, 0.2
        st2 = sigma2 / (2 * mu)
        alpha, beta = eta2 - st2, gamma2 + st2
        assert alpha < 0
        lag, B = self.prior(mu, sigma2, eta2, gamma2, np.geomspace(1e-3, 30.0, 25))
        g = np.exp(-2 * mu * lag)
        close_elementwise(np.exp(B), 1.0 / (beta + alpha * g), rtol=ORACLE, what="diffusive P")
        close_elementwise(B, -np.log(beta) - np.log1p(alpha / beta * g), rtol=ORACLE, what="diffusive B")
        assert np.all(np.diff(B) < 0)  # P falls with lag, towards 1/β
        assert abs(B[-1] + np.log(beta)) < 1e-8

    def test_integrative_regime(self):
        # α > 0 (η² > σ̃²):
        # P = (1/β) sigmoid(2μΔt − ln(α/β)),  B = −log β − softplus(ln(α/β) − 2μΔt)
        mu, sigma2, eta2, gamma2 = 0.4, 0.2, 1.5, 0.3
        st2 = sigma2 / (2 * mu)
        alpha, beta = eta2 - st2, gamma2 + st2
        assert alpha > 0
        lag, B = self.prior(mu, sigma2, eta2, gamma2, np.geomspace(1e-3, 30.0, 25))
        x = 2 * mu * lag - np.log(alpha / beta)
        close_elementwise(np.exp(B), 1.0 / (beta * (1.0 + np.exp(-x))), rtol=ORACLE, what="integrative P")
        close_elementwise(B, -np.log(beta) - np.log1p(np.exp(-x)), rtol=ORACLE, what="integrative B")
        assert np.all(np.diff(B) > 0)  # P rises with lag

    @staticmethod
    def prior_response(mu, sigma2, eta2, gamma2, lag):
        """Â = A ⊙ E of the last query (at t = 0) against keys at the given positive lags and itself
        (lag 0, returned first), read off the *output*: q = k = 0 (d² = 0), one-hot values (value j in
        channel j), no value rotation, so out[i, j] = A_ij e^{−μΔt_ij} (all channels share μ and the
        noise, hence A)."""
        t = np.concatenate([-np.asarray(lag)[::-1], [0.0]])
        N = t.size
        z = np.zeros((N, N))
        out = isotropic_afa(z, z, np.eye(N), mu=mu, omega=np.zeros(N), sigma2=sigma2, eta2=eta2, gamma2=gamma2,
                            nu=1.0, t=t, rotate_values=False)
        assert np.all(out.imag == 0)
        return out[-1].real[::-1]  # in increasing lag, starting with the query itself

    def test_peak_of_the_prior_response(self):
        # α > β (η² > γ² + 2σ̃²): P·E ∝ e^{−μΔt}/(α e^{−2μΔt} + β) peaks at Δt* = ln(α/β)/(2μ)
        mu, sigma2, eta2, gamma2 = 0.5, 0.2, 2.0, 0.1
        st2 = sigma2 / (2 * mu)
        alpha, beta = eta2 - st2, gamma2 + st2
        assert alpha > beta
        star = np.log(alpha / beta) / (2 * mu)
        h = 0.01 * star
        f = self.prior_response(mu, sigma2, eta2, gamma2, star + h * np.arange(-20, 21))[1:]
        assert np.argmax(f) == 20  # the grid point at Δt*
        # zero slope at Δt*: the central difference is O(h²) of the one-sided ones
        assert abs(f[21] - f[19]) < 0.05 * (f[20] - f[21])
        # … and not at a point 10 % away
        g = self.prior_response(mu, sigma2, eta2, gamma2, 1.1 * star + h * np.arange(-1, 2))[1:]
        assert abs(g[2] - g[0]) > 1.0 * abs(g[1] - g[2])

    def test_no_positive_peak_when_alpha_below_beta(self):
        # 0 < α < β: the prior response falls monotonically from lag 0
        mu, sigma2, eta2, gamma2 = 0.5, 0.2, 0.5, 0.3
        st2 = sigma2 / (2 * mu)
        alpha, beta = eta2 - st2, gamma2 + st2
        assert 0 < alpha < beta
        f = self.prior_response(mu, sigma2, eta2, gamma2, np.geomspace(1e-3, 10, 30))  # lag 0 first
        assert np.all(np.diff(f) < 0)

    def test_alibi_short_lag_limit(self):
        # μ = 0: B = −log(σ²Δt + η² + γ²) = −log(η² + γ²) − x + O(x²), x = σ²Δt/(η² + γ²): a linear
        # bias in the lag (ALiBi); the remainder is x − log(1 + x) = x²/2 − x³/3 + …
        sigma2, eta2, gamma2 = 0.7, 0.4, 0.1
        lag, B = self.prior(0.0, sigma2, eta2, gamma2, np.geomspace(1e-5, 1e-1, 9))
        s0 = eta2 + gamma2
        x = sigma2 * lag / s0
        alibi = -np.log(s0) - x
        close_elementwise(B, -np.log(s0 + sigma2 * lag), rtol=ORACLE, what="Brownian B")
        rem = B - alibi
        assert np.all(rem > 0)
        assert np.all(np.abs(rem - x**2 / 2) <= x**3 / 3 + 4 * EPS * np.abs(B))

    @pytest.mark.parametrize("weight", ["exponential", "student"])
    def test_logit_slope_at_zero_lag_includes_the_rotation(self, weight):
        # μ = 0, keys of the same content k at lags Δt = 0, h, 2h of the last query q:
        #   L(Δt) = log P − penalty(P‖R(Δt)‖²/ν),  P = 1/(σ²Δt + η² + γ²),  R(Δt) = q − e^{iωΔt} ⊙ k,
        #   dL/dΔt|₀ = −σ²p(1 − x) − (p/ν)D (exponential), −σ²p(1 − κx/(1 + x)) − κ(p/ν)D/(1 + x) (Student),
        # x = p‖R(0)‖²/ν, D = d‖R‖²/dΔt|₀ = 2 Σ_m ω_m Im(q̄_m k_m) (chapter 8, §8.6). Measured from the weights by
        # Richardson's one-sided difference (error O(h²), below 1e-4 here; the D term is O(1)).
        rng = np.random.default_rng(86)
        d, N, h = 3, 12, 0.005
        sigma2, eta2, gamma2 = 0.3, 0.6, 0.2
        p = 1.0 / (eta2 + gamma2)
        t = h * np.arange(N)
        rotation_mattered = False
        for _ in range(3):
            q, k = (x / np.linalg.norm(x) for x in (cplx(rng, (d,)), cplx(rng, (d,))))
            omega = rng.normal(size=d)
            for nu in (0.7, 5.0):
                _, A = isotropic_afa(np.tile(q, (N, 1)), np.tile(k, (N, 1)), np.ones((N, d)), mu=0.0, omega=omega,
                                     sigma2=sigma2, eta2=eta2, gamma2=gamma2, nu=nu, t=t, weight=weight,
                                     return_weights=True)
                L0, L1, L2 = np.log(A[-1, -1]), np.log(A[-1, -2]), np.log(A[-1, -3])
                measured = (4 * L1 - L2 - 3 * L0) / (2 * h)
                x = p * np.sum(np.abs(q - k) ** 2) / nu
                D = 2 * np.sum(omega * np.imag(q.conj() * k))
                if weight == "exponential":
                    fixed, rot = -sigma2 * p * (1 - x), -p / nu * D
                else:
                    kappa = (nu + d) / d
                    fixed, rot = -sigma2 * p * (1 - kappa * x / (1 + x)), -kappa * p / nu * D / (1 + x)
                assert abs(measured - (fixed + rot)) < 1e-3, (measured, fixed, rot)
                rotation_mattered |= abs(rot) > 0.05
        assert rotation_mattered  # the residual-held-fixed formula alone would fail


# =============================================================================================
# RoPE limit (spec §6)
# =============================================================================================


def rope_pairs(x, omega, t, sign):
    """Each complex channel x_k = (Re, Im) as a real 2-vector, rotated by the angle sign·ω_k·t_i with
    an explicit 2×2 rotation matrix; returns the real (N, 2d) array [(Re, Im) of channel 0, …]."""
    N, d = x.shape
    out = np.empty((N, d, 2))
    for i in range(N):
        for c in range(d):
            th = sign * omega[c] * t[i]
            rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
            out[i, c] = rot @ np.array([x[i, c].real, x[i, c].imag])
    return out.reshape(N, 2 * d)


class TestRopeLimit:
    N, d = 8, 4

    def data(self, seed=50):
        rng = np.random.default_rng(seed)
        q, k = cplx(rng, (self.N, self.d)), cplx(rng, (self.N, self.d))
        q /= np.linalg.norm(q, axis=1, keepdims=True)  # unit-norm queries and keys
        k /= np.linalg.norm(k, axis=1, keepdims=True)
        v = cplx(rng, (self.N, self.d))
        omega = rng.normal(scale=1.5, size=self.d)
        t = make_times("irregular", self.N, rng)
        return q, k, v, omega, t

    @staticmethod
    def oracle(q, k, v, omega, t, c, causal, sign=-1.0):
        scores = c * (rope_pairs(q, omega, t, sign) @ rope_pairs(k, omega, t, sign).T)
        allowed = t[:, None] >= t[None, :] if causal else np.ones(scores.shape, bool)
        A = softmax_rows(scores, allowed)
        return A @ v, A

    @pytest.mark.parametrize("causal", [True, False])
    def test_exponential_weight_is_rope_attention(self, causal):
        # μ = σ² = η² = 0: P = 1/γ² for every pair, and with ‖q_i‖ = ‖k_j‖ = 1
        #   ‖R_ij‖² = 2 − 2 Re(q_i† e^{iω(t_i − t_j)} k_j) = 2 − 2 Re((e^{−iωt_i} q_i)† (e^{−iωt_j} k_j)),
        # so L_ij = const_i + (2/(γ²ν)) ⟨RoPE(q_i), RoPE(k_j)⟩ with RoPE rotating each (Re, Im) pair of
        # channel k by the angle −ω_k t (the conjugate of the left factor turns e^{−iωt_i} into e^{+iωt_i}).
        q, k, v, omega, t = self.data()
        gamma2, nu = 0.5, 3.0
        c = 2.0 / (gamma2 * nu)  # 2p/ν with p = 1/γ²
        out_ref, A_ref = self.oracle(q, k, v, omega, t, c, causal)
        kw = dict(sigma2=0.0, eta2=0.0, gamma2=gamma2, nu=nu, t=t, weight="exponential", causal=causal,
                  rotate_values=False)
        out, A = isotropic_afa(q, k, v, mu=0.0, omega=omega, **kw, return_weights=True)
        close(out, out_ref, rtol=ORACLE, what="RoPE limit: isotropic_afa vs softmax(c·RoPE scores)·V")
        close(A, A_ref, rtol=ORACLE, what="RoPE limit: weights")
        out_t = afa(q, k, v, eigvals=1j * omega, **kw)
        close(out_t, out_ref, rtol=ORACLE, what="RoPE limit: afa vs softmax(c·RoPE scores)·V")
        # the sign: rotating by +ω t (Re(q† e^{−iωΔt} k)) is a different attention
        out_wrong, _ = self.oracle(q, k, v, omega, t, c, causal, sign=+1.0)
        assert rel_error(out_wrong, out_ref) > 1e-2
        assert rel_error(out, out_wrong) > 1e-2

    def test_matches_library_softmax_attention_on_rope(self):
        # issue 5: softmax_attention (scale 2/(γ²ν)) on the (Re, Im) pairs rotated by positional.rope
        q, k, v, omega, t = self.data(51)
        gamma2, nu = 0.25, 2.0
        interleave = lambda x: np.stack([x.real, x.imag], axis=-1).reshape(self.N, 2 * self.d)
        rq = rope(interleave(q), positions=t, freqs=-omega)  # rotation by −ω_k t
        rk = rope(interleave(k), positions=t, freqs=-omega)
        y_re = softmax_attention(rq, rk, v.real, causal=True, scale=2.0 / (gamma2 * nu))
        y_im = softmax_attention(rq, rk, v.imag, causal=True, scale=2.0 / (gamma2 * nu))
        out = isotropic_afa(q, k, v, mu=0.0, omega=omega, sigma2=0.0, eta2=0.0, gamma2=gamma2, nu=nu, t=t,
                            weight="exponential", rotate_values=False)
        close(out, y_re + 1j * y_im, rtol=ORACLE, what="RoPE limit vs attention.softmax_attention ∘ positional.rope")

    def test_student_weight_approaches_the_linearized_softmax(self):
        # power law with κ = 1: L = log p − log(1 + (2p/ν)(1 − Re q̃†k̃)); linearized c = 2κp/ν
        q, k, v, omega, t = self.data(52)
        gamma2, kappa = 1.0, 1.0
        errs = []
        for nu in [1.0, 10.0, 100.0, 1000.0]:
            _, A = isotropic_afa(q, k, v, mu=0.0, omega=omega, sigma2=0.0, eta2=0.0, gamma2=gamma2, nu=nu, t=t,
                                 weight="student", kappa=kappa, rotate_values=False, return_weights=True)
            _, A_lin = self.oracle(q, k, v, omega, t, 2 * kappa / (gamma2 * nu), causal=True)
            errs.append(float(np.max(np.abs(A - A_lin))))
        record("RoPE limit: Student-t vs linearized at ν = 1000 (max abs)", errs[-1], 1e-5)
        assert all(a > b for a, b in zip(errs, errs[1:])), errs
        assert errs[-1] < 1e-5, errs
        assert errs[0] > 1e-2  # not trivially equal


# =============================================================================================
# Causality
# =============================================================================================


class TestCausality:
    @settings(max_examples=30)
    @given(
        seed=st.integers(0, 2**32 - 1),
        N=st.integers(2, 7),
        d=st.integers(1, 3),
        form=st.sampled_from(["tensor", "isotropic", "tensor_loop"]),
        weight=st.sampled_from(["student", "exponential"]),
        tkind=st.sampled_from(["default", "half", "irregular"]),
        data=st.data(),
    )
    def test_later_tokens_do_not_change_earlier_outputs(self, seed, N, d, form, weight, tkind, data):
        i = data.draw(st.integers(0, N - 2), label="i")
        rng = np.random.default_rng(seed)
        q, k, v = (cplx(rng, (2, N, d)) for _ in range(3))
        t = make_times(tkind, N, rng)
        if form == "isotropic":
            par = iso_params(rng, d)
            func = isotropic_afa
        else:
            par = tensor_params(rng, d)
            func = afa if form == "tensor" else afa_loop
        opts = dict(**par, t=t, weight=weight)
        out = func(q, k, v, **opts, causal=True)
        q2, k2, v2 = q.copy(), k.copy(), v.copy()
        for x in (q2, k2, v2):
            x[:, i + 1:] += cplx(rng, (2, N - i - 1, d), scale=100.0)
        out2 = func(q2, k2, v2, **opts, causal=True)
        err = np.max(np.abs(out2[:, : i + 1] - out[:, : i + 1])) / np.max(np.abs(out[:, : i + 1]))
        record("causal: change of earlier outputs (relative)", err, 1e-15)
        assert err <= 1e-15
        # without the mask the later values do reach output i
        v3 = v.copy()
        v3[:, i + 1:] += cplx(rng, (2, N - i - 1, d))
        o1 = func(q, k, v, **opts, causal=False)
        o3 = func(q, k, v3, **opts, causal=False)
        assert np.max(np.abs(o3[:, i] - o1[:, i])) > 1e-8


# =============================================================================================
# Maximum likelihood with zero process noise (spec §3.1, §11 item 7)
# =============================================================================================


def real_system(rng, mus, omegas, etas):
    """A real 2m-dimensional system with eigenvalues −μ ± iω and eigen-noise spectrum η² per pair."""
    lam = np.ravel([[-m + 1j * w, -m - 1j * w] for m, w in zip(mus, omegas)])
    while True:
        cols = [cplx(rng, 2 * len(mus)) for _ in mus]
        S = np.column_stack([c for s in cols for c in (s, s.conj())])
        if np.linalg.cond(S) < 20:
            break
    S_inv = np.linalg.inv(S)
    eta2 = np.repeat(etas, 2)
    A = (S * lam) @ S_inv
    Rm = (S * eta2) @ S.conj().T
    assert np.max(np.abs(A.imag)) < 1e-12 and np.max(np.abs(Rm.imag)) < 1e-12
    return lam, S, S_inv, eta2, A.real, 0.5 * (Rm.real + Rm.real.T)


class TestMaximumLikelihood:
    @pytest.mark.parametrize("causal", [True, False])
    def test_zero_process_noise_is_the_exact_gls(self, causal):
        # σ² = 0, γ² = 0, w ≡ 1 (exponential weight, ν = 1e300: d²/ν is below the rounding of log P):
        # the estimate of x(t_i) from z_j = e^{A(t_j − t_i)} x(t_i) + v_j, v_j ~ N(0, R), j ≤ i (or all j),
        # is the generalized least-squares solution — solved here as one dense whitened least-squares
        # problem per query in the original (real) basis, with scipy's expm for the transitions.
        rng = np.random.default_rng(60)
        lam, S, S_inv, eta2, A, Rm = real_system(rng, mus=[0.3, 0.05], omegas=[1.1, 0.4], etas=[0.5, 1.3])
        N, D = 9, 4
        t = make_times("irregular", N, rng)
        x = np.array([scipy.linalg.expm(A * (ti - t[0])) @ rng.normal(size=D) for ti in t])
        L = np.linalg.cholesky(Rm)
        z = x + rng.normal(size=(N, D)) @ L.T
        expected = np.empty((N, D))
        for i in range(N):
            keys = [j for j in range(N) if t[j] <= t[i] or not causal]
            H = np.vstack([np.linalg.solve(L, scipy.linalg.expm(A * (t[j] - t[i]))) for j in keys])  # L^{-1} H_j
            b = np.concatenate([np.linalg.solve(L, z[j]) for j in keys])
            expected[i] = np.linalg.lstsq(H, b, rcond=None)[0]
        y = z @ S_inv.T  # eigen-coordinates S^{-1} z
        for func in (afa, afa_loop):
            out = func(y, y, y, eigvals=lam, sigma2=0.0, eta2=eta2, gamma2=0.0, nu=1e300, t=t,
                       weight="exponential", causal=causal)
            est = out @ S.T
            assert np.max(np.abs(est.imag)) <= 1e-12 * np.max(np.abs(est))
            close(est.real, expected, rtol=ORACLE, what="AFA (σ² = 0) vs dense GLS, original basis")

    @pytest.mark.parametrize("causal", [True, False])
    def test_anchor_noise_gls_in_the_eigenbasis(self, causal):
        # With γ² > 0 the pulled-forward key j is an estimate of the query state with variance
        # Σ_ijk = η²_k e^{−2μ_kΔt} + γ²_k (pushed back: η²_k e^{2μ_kτ} + γ²_k); the GLS of spec §3.1 is
        # the dense weighted least-squares solve of the stacked system x_k = e^{λ_kΔt_ij} y_jk.
        rng = np.random.default_rng(61)
        N, d = 8, 3
        mu = np.array([0.0, 0.2, 0.6])
        lam = -mu + 1j * rng.normal(size=d)
        eta2, gamma2 = rng.uniform(0.2, 1.0, d), rng.uniform(0.05, 0.3, d)
        t = make_times("irregular", N, rng)
        y = cplx(rng, (N, d))
        expected = np.empty((N, d), dtype=complex)
        for i in range(N):
            rows, rhs = [], []
            for j in range(N):
                if t[j] > t[i] and causal:
                    continue
                dt = t[i] - t[j]
                var = eta2 * np.exp(-2 * mu * dt) + gamma2
                for c in range(d):
                    row = np.zeros(d)
                    row[c] = 1.0 / math.sqrt(var[c])
                    rows.append(row)
                    rhs.append(np.exp(lam[c] * dt) * y[j, c] / math.sqrt(var[c]))
            expected[i] = np.linalg.lstsq(np.array(rows, dtype=complex), np.array(rhs), rcond=None)[0]
        out = afa(y, y, y, eigvals=lam, sigma2=0.0, eta2=eta2, gamma2=gamma2, nu=1e300, t=t,
                  weight="exponential", causal=causal)
        close(out, expected, rtol=ORACLE, what="AFA (σ² = 0, γ² > 0) vs dense GLS, eigenbasis")


class TestFixedDataIrlsFixedPoint:
    """The fixed point of (7.10), q ← afa(q, z, z), is a stationary point of J_i(q_i) = Σ_j ρ_κ(d²_ij)
    with ρ_κ' = (1 + s/ν)^{−κ}: ρ_κ(s) = ν[(1 + s/ν)^{1−κ} − 1]/(1 − κ), and ρ_1(s) = ν log(1 + s/ν), the
    Student-t negative log-likelihood (up to a factor). Oracle: J written out from
    :func:`isotropic_covariance` and direct residuals, its gradient by central differences in the real
    and imaginary part of every channel (no weight formula of the module is used). The fixed point of
    the default κ = (ν + d)/d is *not* stationary for the Student-t likelihood (κ = 1), and vice versa."""

    @staticmethod
    def loss(q, z, par, t, kappa, causal):
        """J_i(q_i) for every query i, shape (N,)."""
        P, R, d2 = pair_oracle(q, z, **{k: par[k] for k in ("eigvals", "sigma2", "eta2", "gamma2")}, t=t)
        nu = par["nu"]
        rho = nu * np.log1p(d2 / nu) if kappa == 1.0 else nu * ((1 + d2 / nu) ** (1 - kappa) - 1) / (1 - kappa)
        _, dt = lags(t, q.shape[-2])
        return np.sum(np.where(dt >= 0, rho, 0.0) if causal else rho, axis=-1)

    def relative_gradient(self, q, z, par, t, kappa, causal, h=1e-6):
        """max over queries of |∇J_i| at ``q`` (central differences), relative to its max at the start of
        the iteration, q = z."""
        grads = []
        for point in (q, z):
            g = np.zeros(q.shape[:-1] + (2 * q.shape[-1],))
            for c in range(q.shape[-1]):
                for part, unit in enumerate((1.0, 1j)):
                    step = np.zeros_like(q)
                    step[..., c] = h * unit  # the same channel of every query: J_i depends on q_i only
                    g[..., 2 * c + part] = (self.loss(point + step, z, par, t, kappa, causal)
                                            - self.loss(point - step, z, par, t, kappa, causal)) / (2 * h)
            grads.append(np.linalg.norm(g, axis=-1))
        return float(np.max(grads[0]) / np.max(grads[1]))

    @pytest.mark.parametrize("causal", [True, False])
    def test_each_kappa_is_stationary_for_its_own_loss_only(self, causal):
        rng = np.random.default_rng(62)
        N, d = 7, 3
        par = tensor_params(rng, d)  # per-channel μ, σ², η², γ²: P differs between channels
        t = make_times("irregular", N, rng)
        z = cplx(rng, (N, d))
        z[3] += 6.0 - 4.0j  # an outlier, so that the weights matter
        kappa_t = (par["nu"] + d) / d
        fixed = {}
        for kappa in (kappa_t, 1.0):
            q = z
            for _ in range(400):
                new = afa(q, z, z, **par, t=t, kappa=kappa, causal=causal)
                if np.max(np.abs(new - q)) <= 1e-15 * np.max(np.abs(z)):
                    break
                q = new
            assert np.max(np.abs(new - q)) <= 1e-13 * np.max(np.abs(z)), "(7.10) did not converge"
            fixed[kappa] = new
        for own, other in ((kappa_t, 1.0), (1.0, kappa_t)):
            assert self.relative_gradient(fixed[own], z, par, t, own, causal) < 1e-7, own
            assert self.relative_gradient(fixed[own], z, par, t, other, causal) > 1e-3, (own, other)
        assert np.max(np.abs(fixed[kappa_t] - fixed[1.0])) > 1e-3


# =============================================================================================
# afa_irls
# =============================================================================================


class TestAfaIrls:
    def setup_method(self):
        rng = np.random.default_rng(70)
        self.z = cplx(rng, (2, 6, 3))
        self.par = tensor_params(rng, 3)
        self.t = make_times("irregular", 6, rng)

    def test_one_step_is_one_afa_call(self):
        est = afa_irls(self.z, **self.par, t=self.t, n_iter=1, step=1.0)
        assert est.shape == (1, 2, 6, 3) and est.dtype == np.complex128
        close(est[0], afa(self.z, self.z, self.z, **self.par, t=self.t), rtol=ORACLE, what="afa_irls n_iter = 1")

    @pytest.mark.parametrize("step", [0.3, 1.0])
    @pytest.mark.parametrize("causal", [True, False])
    def test_relaxation(self, step, causal):
        opts = dict(**self.par, t=self.t, weight="exponential", causal=causal)
        est = afa_irls(self.z, **opts, n_iter=3, step=step)
        assert est.shape == (3, 2, 6, 3)
        current = self.z
        for n in range(3):  # ẑ⁽ⁿ⁺¹⁾ = ẑ⁽ⁿ⁾ + α (afa(ẑ⁽ⁿ⁾) − ẑ⁽ⁿ⁾)
            current = current + step * (afa(current, current, current, **opts) - current)
            close(est[n], current, rtol=SELF, what="afa_irls relaxation")

    def test_unbatched_input(self):
        est = afa_irls(self.z[0], **self.par, t=self.t, n_iter=2)
        assert est.shape == (2, 6, 3)
        close(est, afa_irls(self.z, **self.par, t=self.t, n_iter=2)[:, 0], rtol=SELF, what="afa_irls batch slice")

    @pytest.mark.parametrize("sigma2, eta2", [(0.0, 1.0), (0.3, 0.5), (0.5, 2.0)])
    def test_filters_the_spiral_system(self, sigma2, eta2):
        # The paper's 2-D system with the true dynamics and noise, in the eigenbasis y = S^{-1} z:
        # the filtered estimates are much closer to the true states than the measurements.
        model = sde.spiral_system(sigma2, eta2)
        t = 0.1 * np.arange(101)
        x, z = sde.sample(model, t, x0=[20.0, 0.0], size=8, rng=20260520)
        y = z @ model.S_inv.T
        est = afa_irls(y, eigvals=model.eigvals, sigma2=sigma2, eta2=eta2, gamma2=0.01, nu=4.0, t=t, n_iter=3)
        xhat = est @ model.S.T
        assert np.max(np.abs(xhat.imag)) <= 1e-10 * np.max(np.abs(xhat))  # a real system stays real
        rmse = lambda a: float(np.sqrt(np.mean((a - x) ** 2)))
        raw = rmse(z)
        errs = [rmse(xhat[n].real) for n in range(3)]
        assert errs[0] < 0.8 * raw, (raw, errs)
        if sigma2 == 0.0:
            # a deterministic trajectory: further iterations keep smoothing towards it
            assert errs[0] > errs[1] > errs[2], errs
            assert errs[2] < 0.45 * raw, (raw, errs)


# =============================================================================================
# Long sequences and the size limit of the tensor form
# =============================================================================================


def isotropic_row(q, k, v, i, *, mu, omega, sigma2, eta2, gamma2, nu, t, weight="student", kappa=None,
                  temperature=1.0, cutoff=160.0):
    """Output i of isotropic AFA from the equations (7.2)–(7.7), one row, non-causal.

    Pushed-back keys with 2μτ > ``cutoff`` (default 160) are left out: their precision is < e^{−160}/η²
    and their contribution, after the value is pushed back by e^{μτ}, is of relative size < e^{−80}
    (``cutoff=None`` keeps every key, for tests whose pushed-back values must all count).
    """
    d = q.shape[-1]
    kappa = (nu + d) / d if kappa is None else kappa
    dt = t[i] - t
    keep = (dt >= 0) | (2 * mu * -dt <= (np.inf if cutoff is None else cutoff))
    dt, kk, vv = dt[keep], k[keep], v[keep]
    P = 1.0 / isotropic_covariance(dt, mu, sigma2, eta2, gamma2)
    pull = np.exp((-mu + 1j * omega) * dt[:, None])  # e^{λΔt}
    d2 = P * np.sum(np.abs(q[i] - pull * kk) ** 2, axis=-1)
    L = temperature * (np.log(P) - (kappa * np.log1p(d2 / nu) if weight == "student" else d2 / nu))
    a = np.exp(L - np.max(L))
    return (a / a.sum()) @ (pull * vv)


def _growth_problem(seed, **noise):
    """The non-causal growth tests' problem: N = 300 tokens in d = 2, μ = 0.5, ν = 4, fixed ω."""
    rng = np.random.default_rng(seed)
    N, d, mu = 300, 2, 0.5
    qkv = tuple(cplx(rng, (N, d)) for _ in range(3))
    par = dict(omega=np.array([0.3, -0.7]), nu=4.0, **noise)
    return rng, (N, d, mu), qkv, np.arange(N, dtype=float), par


class TestLongSequences:
    def test_noncausal_n3000(self):
        # e^{2μτ} for τ up to 3000 is far beyond float64; the pushed-back pairs must stay finite.
        rng = np.random.default_rng(80)
        N, d = 3000, 4
        q, k, v = (cplx(rng, (N, d)) for _ in range(3))
        par = dict(mu=0.5, omega=rng.normal(size=d), sigma2=0.3, eta2=0.5, gamma2=0.2, nu=4.0)
        t = np.arange(N, dtype=float)
        out = isotropic_afa(q, k, v, **par, causal=False)
        assert out.shape == (N, d) and np.all(np.isfinite(out))
        for i in (0, 1, 1500, N - 2, N - 1):
            expected = isotropic_row(q, k, v, i, **par, t=t)
            close(out[i], expected, rtol=SELF, what="isotropic_afa N = 3000 row vs equations")

    def test_noncausal_low_temperature_grows_like_the_model(self):
        # A pushed-back value carries e^{+μτ}; with η² > 0 its precision falls like e^{−2μτ}, so under a factor T
        # on the logits its weight falls like e^{−2Tμτ}: for T < 1/2 the exact output of the first query grows like
        # e^{(1−2T)μτ_max} (chapter 8, §8.4). Oracle: the row from (7.2)–(7.7), with 2μτ ≤ 299 (all representable).
        rng, (N, d, mu), (q, k, v), t, par = _growth_problem(85, sigma2=0.1, eta2=0.5, gamma2=0.1)
        for T in (0.4, 1.0):
            expected = isotropic_row(q, k, v, 0, mu=mu, **par, t=t, temperature=T, cutoff=None)
            out = isotropic_afa(q, k, v, mu=mu, **par, causal=False, temperature=T)
            close(out[0], expected, rtol=SELF, what=f"non-causal row 0 at temperature {T}")
            growth = np.log(np.max(np.abs(out[0])))
            if T < 0.5:
                assert abs(growth - (1 - 2 * T) * mu * (N - 1)) < 5, growth  # (1 − 2T)μτ_max = 29.9
            else:
                assert growth < 5, growth
        # beyond float64: (1 − 2T)μτ_max = 0.8 · 0.5 · 1999 ≈ 800 > 709.8; no argument is extreme, so the message
        # points to the temperature and causal=False
        q2 = cplx(rng, (2000, d))
        with pytest.raises(ValueError, match="not representable") as exc:
            isotropic_afa(q2, q2, q2, mu=mu, **par, causal=False, temperature=0.1)
        assert str(exc.value).startswith("temperature, causal:") and "causal=False" in str(exc.value)
        # an extreme argument is still named first (the Gaussian penalty of |q| ~ 1e300 overflows)
        with pytest.raises(ValueError, match=r"^q \(\|q\| from"):
            isotropic_afa(q * 1e300, k, v, mu=mu, **par, weight="exponential")

    def test_noncausal_growth_without_sigma_eta(self):
        # σ² = η² = 0: P ≡ 1/γ² at every lag and the penalty grows with the lag, ‖R‖² ≈ e^{2μτ}‖k‖². The Student
        # weight falls like e^{−2κTμτ}, so the non-causal output grows like e^{(1−2κT)μτ_max} for T < 1/(2κ) only
        # (κ = 3: 1/6, not 1/2); the exponential weight falls faster than any exponential (chapter 8, §8.4).
        _, (N, d, mu), (q, k, v), t, par = _growth_problem(86, sigma2=0.0, eta2=0.0, gamma2=0.3)
        kappa = (4.0 + d) / d
        assert np.all(isotropic_covariance(t[0] - t, mu, 0.0, 0.0, 0.3) == 0.3)  # P ≡ 1/γ² at every lag
        for weight, T in (("student", 0.1), ("student", 0.3), ("exponential", 0.1)):
            expected = isotropic_row(q, k, v, 0, mu=mu, **par, t=t, weight=weight, temperature=T, cutoff=None)
            out = isotropic_afa(q, k, v, mu=mu, **par, causal=False, weight=weight, temperature=T)
            close(out[0], expected, rtol=SELF, what=f"σ² = η² = 0, {weight}, row 0 at temperature {T}")
            growth = np.log(np.max(np.abs(out[0])))
            if weight == "student" and T < 1 / (2 * kappa):
                assert abs(growth - (1 - 2 * kappa * T) * mu * (N - 1)) < 5, growth  # 0.4 · 0.5 · 299 = 59.8
            else:
                assert growth < 5, growth  # the rule for σ² > 0 would give (1 − 2T)μτ_max = 59.8 or 119.6
        # a key of zero norm keeps ‖R‖² = ‖q_0‖² and its weight at every lag: its e^{μτ} grows at any temperature
        k0 = k.copy()
        k0[-1] = 0.0
        out = isotropic_afa(q, k0, v, mu=mu, **par, causal=False, weight="exponential", temperature=1.0)
        assert np.log(np.max(np.abs(out[0]))) > mu * (N - 1) - 30  # μτ_max = 149.5

    def test_long_lags_tensor_form(self):
        # the tensor form scales the pushed-back pairs too: huge lags, finite output and weights
        rng = np.random.default_rng(81)
        N, d = 6, 2
        q, k, v = (cplx(rng, (N, d)) for _ in range(3))
        t = np.array([0.0, 1.0, 2.0, 500.0, 900.0, 2000.0])
        par = dict(eigvals=[-0.6 + 1j, -1.0 - 0.5j], sigma2=[0.3, 0.1], eta2=[0.5, 0.4], gamma2=[0.2, 0.1], nu=3.0)
        out, A = afa(q, k, v, **par, t=t, causal=False, return_weights=True)
        assert np.all(np.isfinite(out)) and np.all(np.isfinite(A))
        np.testing.assert_allclose(A.sum(axis=1), 1.0, rtol=0, atol=8 * EPS)
        iso = isotropic_afa(q, k, v, mu=0.6, omega=[1.0, 1.0], sigma2=0.3, eta2=0.5, gamma2=0.2, nu=3.0, t=t,
                            causal=False)
        ref = afa(q, k, v, eigvals=[-0.6 + 1j, -0.6 + 1j], sigma2=0.3, eta2=0.5, gamma2=0.2, nu=3.0, t=t,
                  causal=False)
        close(iso, ref, rtol=SELF, what="isotropic vs tensor at long lags")

    def test_max_tensor_default(self):
        # 2049² · 4 = 16 793 604 > 2**24: refused before anything of that size is allocated
        q = np.zeros((2049, 4))
        par = dict(eigvals=-np.ones(4), sigma2=0.1, eta2=0.1, gamma2=0.1, nu=1.0)
        with pytest.raises(ValueError, match="MAX_TENSOR"):
            afa(q, q, q, **par)
        with pytest.raises(ValueError, match="MAX_TENSOR"):
            afa_irls(q, **par)

    def test_max_tensor_counts_batch(self, monkeypatch):
        monkeypatch.setattr(afa_module, "MAX_TENSOR", 100)
        par = dict(eigvals=-np.ones(2), sigma2=0.1, eta2=0.1, gamma2=0.1, nu=1.0)
        ok = np.ones((2, 5, 2))  # 2 · 5² · 2 = 100: at the limit, accepted
        assert afa(ok, ok, ok, **par).shape == ok.shape
        for shape in [(3, 5, 2), (2, 2, 5, 2), (8, 2)]:  # 150, 200, 128
            x = np.ones(shape)
            with pytest.raises(ValueError, match=r"MAX_TENSOR = 100") as exc:
                afa(x, x, x, **par)
            assert str(math.prod(shape[:-2]) * shape[-2] ** 2 * shape[-1]) in str(exc.value)
        # the isotropic form has no such limit
        x = np.ones((3, 5, 2))
        out = isotropic_afa(x, x, x, mu=1.0, omega=np.zeros(2), sigma2=0.1, eta2=0.1, gamma2=0.1, nu=1.0)
        assert out.shape == x.shape


# =============================================================================================
# Bad input
# =============================================================================================

N_, D_ = 4, 3
GOOD = np.ones((N_, D_)) + 0.5j
TENSOR = dict(eigvals=[-0.2 + 1j, -0.3, 0.0 - 0.5j], sigma2=0.3, eta2=0.2, gamma2=0.1, nu=2.0)
ISO = dict(mu=0.2, omega=[1.0, -1.0, 0.5], sigma2=0.3, eta2=0.2, gamma2=0.1, nu=2.0)

COMMON_BAD = [
    # (changes to the keyword arguments or q/k/v, exception, message must contain)
    ({"sigma2": -0.1}, ValueError, "sigma2"),
    ({"eta2": -0.1}, ValueError, "eta2"),
    ({"gamma2": -1e-9}, ValueError, "gamma2"),
    ({"eta2": 0.0, "gamma2": 0.0}, ValueError, "eta2, gamma2"),
    ({"nu": 0.0}, ValueError, "nu"),
    ({"nu": -1.0}, ValueError, "nu"),
    ({"nu": np.inf}, ValueError, "nu"),
    ({"nu": np.nan}, ValueError, "nu"),
    ({"nu": True}, TypeError, "nu"),
    ({"kappa": 0.0}, ValueError, "kappa"),
    ({"kappa": -2.0}, ValueError, "kappa"),
    ({"temperature": 0.0}, ValueError, "temperature"),
    ({"temperature": -1.0}, ValueError, "temperature"),
    ({"weight": "huber"}, ValueError, "weight"),
    ({"weight": None}, TypeError, "weight"),
    ({"t": np.arange(N_ + 1.0)}, ValueError, "t"),
    ({"t": np.arange(N_ - 1.0)}, ValueError, "t"),
    ({"t": np.ones((N_, 1))}, ValueError, "t"),
    ({"t": np.array([0.0, 1.0, 1.0, 2.0])}, ValueError, "t"),
    ({"t": np.array([0.0, 2.0, 1.0, 3.0])}, ValueError, "t"),
    ({"t": np.array([0.0, 1.0, np.nan, 3.0])}, ValueError, "t"),
    ({"q": np.ones(D_)}, ValueError, "q"),
    ({"q": np.ones((N_, 0)), "k": np.ones((N_, 0)), "v": np.ones((N_, 0))}, ValueError, "q"),
    ({"k": np.ones((N_, D_ + 1))}, ValueError, "k"),
    ({"k": np.ones((2, N_, D_))}, ValueError, "k"),
    ({"v": np.ones((N_ + 1, D_))}, ValueError, "v"),
    ({"q": np.where(np.eye(N_, D_) > 0, np.nan, GOOD)}, ValueError, "q"),
    ({"k": np.where(np.eye(N_, D_) > 0, np.inf, GOOD)}, ValueError, "k"),
    ({"v": np.where(np.eye(N_, D_) > 0, -np.inf, GOOD)}, ValueError, "v"),
    ({"q": "abc"}, TypeError, "q"),
]
TENSOR_BAD = [
    ({"eigvals": [-0.2 + 1j, 0.1, -0.5]}, ValueError, "eigvals"),  # Re λ > 0
    ({"eigvals": [-0.2, -0.3]}, ValueError, "eigvals"),
    ({"eigvals": [-0.2, -0.3, -0.4, -0.5]}, ValueError, "eigvals"),
    ({"eigvals": [[-0.2, -0.3, -0.4]]}, ValueError, "eigvals"),
    ({"eigvals": [-0.2, np.nan, -0.4]}, ValueError, "eigvals"),
    ({"sigma2": [0.1, 0.2]}, ValueError, "sigma2"),
    ({"eta2": [0.1, 0.2, 0.3, 0.4]}, ValueError, "eta2"),
    ({"gamma2": np.ones((3, 3))}, ValueError, "gamma2"),
    ({"sigma2": [0.1, -0.2, 0.3]}, ValueError, "sigma2"),
    ({"eta2": [0.0, 0.1, 0.1], "gamma2": [0.0, 0.2, 0.2]}, ValueError, "eta2, gamma2"),  # channel 0 has Σ(0) = 0
]
ISO_BAD = [
    ({"mu": -0.1}, ValueError, "mu"),
    ({"mu": [0.1, 0.2, 0.3]}, ValueError, "mu"),
    ({"mu": np.nan}, ValueError, "mu"),
    ({"omega": [1.0, 2.0]}, ValueError, "omega"),
    ({"omega": 1.0}, ValueError, "omega"),
    ({"omega": [1.0, 2.0, 1j]}, TypeError, "omega"),
    ({"sigma2": [0.3, 0.3, 0.3]}, ValueError, "sigma2"),
    ({"eta2": [0.2, 0.2, 0.2]}, ValueError, "eta2"),
    ({"gamma2": np.array([0.1])}, ValueError, "gamma2"),
]


def call(func, base, change):
    kw = dict(base)
    kw.update(change)
    q, k, v = kw.pop("q", GOOD), kw.pop("k", GOOD), kw.pop("v", GOOD)
    return func(q, k, v, **kw)


class TestValidation:
    @pytest.mark.parametrize("func", [afa, afa_loop])
    @pytest.mark.parametrize("change, exc, match", COMMON_BAD + TENSOR_BAD)
    def test_tensor_errors(self, func, change, exc, match):
        with pytest.raises(exc, match=match):
            call(func, TENSOR, change)

    @pytest.mark.parametrize("func", [isotropic_afa, isotropic_afa_loop])
    @pytest.mark.parametrize("change, exc, match", COMMON_BAD + ISO_BAD)
    def test_isotropic_errors(self, func, change, exc, match):
        with pytest.raises(exc, match=match):
            call(func, ISO, change)

    def test_valid_baselines(self):
        # the bad-input tables change one thing in a valid call
        for func, base in [(afa, TENSOR), (afa_loop, TENSOR), (isotropic_afa, ISO), (isotropic_afa_loop, ISO)]:
            assert np.all(np.isfinite(call(func, base, {})))
        # edge values that are valid: η² = 0 with γ² > 0, γ² = 0 with η² > 0, μ = 0, marginal Re λ = 0
        assert np.all(np.isfinite(call(afa, TENSOR, {"eta2": 0.0})))
        assert np.all(np.isfinite(call(afa, TENSOR, {"gamma2": 0.0})))
        assert np.all(np.isfinite(call(isotropic_afa, ISO, {"mu": 0.0, "sigma2": 0.0})))

    @pytest.mark.parametrize(
        "change, exc, match",
        [
            ({"n_iter": 0}, ValueError, "n_iter"),
            ({"n_iter": -1}, ValueError, "n_iter"),
            ({"n_iter": 1.5}, ValueError, "n_iter"),
            ({"n_iter": True}, ValueError, "n_iter"),
            ({"step": 0.0}, ValueError, "step"),
            ({"step": -0.5}, ValueError, "step"),
            ({"step": 1.5}, ValueError, "step"),
            ({"step": np.nan}, ValueError, "step"),
            ({"z": np.full((N_, D_), np.nan)}, ValueError, "z"),
            ({"eigvals": [0.1, -0.2, -0.3]}, ValueError, "eigvals"),
            ({"weight": "cauchy"}, ValueError, "weight"),
        ],
    )
    def test_irls_errors(self, change, exc, match):
        kw = dict(TENSOR)
        kw.update(change)
        z = kw.pop("z", GOOD)
        with pytest.raises(exc, match=match):
            afa_irls(z, **kw)

    def test_irls_accepts_numpy_integer_and_step_one(self):
        est = afa_irls(GOOD, **TENSOR, n_iter=np.int64(2), step=1)
        assert est.shape == (2, N_, D_)


class TestBadInputRefusedByName:
    def test_flags_are_strict_bools(self):
        rng = np.random.default_rng(0)
        q = rng.normal(size=(4, 2)) + 1j * rng.normal(size=(4, 2))
        kw = dict(eigvals=[-0.3 + 1j, -0.2], sigma2=0.4, eta2=0.1, gamma2=0.05, nu=2.0)
        for f in (afa, afa_loop):
            for flag in ("causal", "rotate_values", "return_weights"):
                with pytest.raises(TypeError, match=f"^{flag}: expected a bool"):
                    f(q, q, q, **kw, **{flag: "no"})
        iso = dict(mu=0.3, omega=[1.0, -0.5], sigma2=0.4, eta2=0.1, gamma2=0.05, nu=2.0)
        for f in (isotropic_afa, isotropic_afa_loop):
            with pytest.raises(TypeError, match="^causal: expected a bool"):
                f(q, q, q, **iso, causal="no")
        with pytest.raises(TypeError, match="^return_intermediates: expected a bool"):
            afa(q, q, q, **kw, return_intermediates=1)

    def test_overflow_is_refused_by_name(self):
        rng = np.random.default_rng(1)
        q = rng.normal(size=(4, 2)) + 1j * rng.normal(size=(4, 2))
        kw = dict(eigvals=[-0.3 + 1j, -0.2], sigma2=0.4, eta2=0.1, gamma2=0.05, nu=2.0)
        for f in (afa, afa_loop):
            # (the Student weight's logits of |q| ~ 1e300 are representable: TestVariancesOutOfRange;
            # the Gaussian ones, −d²/ν ~ −1e600, are not)
            with pytest.raises(ValueError, match=r"^q \(\|q\| from"):
                f(q * 1e300, q, q, **kw, weight="exponential")
        # the loop twin's pushed-back lags (causal=False) overflow math.exp: a named ValueError, not OverflowError
        iso = dict(omega=[1.0, -0.5], sigma2=0.4, eta2=0.1, gamma2=0.05, nu=2.0)
        with pytest.raises(ValueError, match=r"^mu \(\|mu\| from"):
            isotropic_afa_loop(q, q, q, mu=1e300, **iso, t=np.arange(4.0), weight="exponential", causal=False)

    def test_irls_names_z(self):
        kw = dict(eigvals=[-0.3 + 1j, -0.2], sigma2=0.4, eta2=0.1, gamma2=0.05, nu=2.0)
        with pytest.raises(ValueError, match=r"^z: expected shape"):
            afa_irls(np.ones(3), **kw)
        with pytest.raises(ValueError, match=r"^z: expected shape .* at least one token"):
            afa_irls(np.ones((0, 2)), **kw)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("irregular", [False, True])
def test_isotropic_row_blocks_and_causal_key_limit(causal, irregular, monkeypatch):
    """Blocks of query rows (8 rows each when the workspace and the least rows are shrunk, so
    N = 37 spans five blocks, the last one partial): causal blocks read only the keys up to their
    last query (the weights after it are zero), and nothing changes against the loop twin."""
    import refimpl._blocking

    monkeypatch.setattr(refimpl._blocking, "WORKSPACE_FLOATS", 1)
    monkeypatch.setattr(afa_module, "_MIN_ROWS", 8)
    rng = np.random.default_rng(7)
    N = 37
    plan = afa_module._Plan.make(N, causal)
    assert [(b.start, b.stop) for b in plan.blocks] == [(0, 8), (8, 16), (16, 24), (24, 32), (32, 37)]
    q, k, v = (rng.normal(size=(N, 3)) + 1j * rng.normal(size=(N, 3)) for _ in range(3))
    t = np.cumsum(rng.uniform(0.1, 1.0, N)) if irregular else None
    kw = dict(mu=0.2, omega=np.array([0.3, -0.5, 1.0]), sigma2=0.3, eta2=0.2, gamma2=0.1, nu=2.0, t=t, causal=causal)
    y, w = isotropic_afa(q, k, v, return_weights=True, **kw)
    y_loop, w_loop = isotropic_afa_loop(q, k, v, return_weights=True, **kw)
    assert np.linalg.norm(y - y_loop) <= 1e-12 * np.linalg.norm(y_loop)
    assert np.max(np.abs(w - w_loop)) <= 1e-13
    if causal:
        assert not np.any(np.triu(w, 1))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("N", [5, 3001, 40_000, 10**6])
def test_isotropic_plan_blocks(causal, N):
    """The plan covers the query rows once, in blocks of a multiple of 8 rows (but the last), each of
    about the workspace's pairs and at least _MIN_ROWS rows, fewer only when those would exceed
    _BLOCK_PAIRS_MAX pairs (never fewer than 8); causal blocks hold more rows early than late; the
    buffers hold the largest block."""
    import refimpl._blocking

    plan = afa_module._Plan.make(N, causal)
    starts, stops = [b.start for b in plan.blocks], [b.stop for b in plan.blocks]
    assert starts[0] == 0 and stops[-1] == N and starts[1:] == stops[:-1]
    sizes = np.diff([0] + stops)
    assert np.all(sizes[:-1] % 8 == 0) and np.all(sizes > 0)
    least = max(8, min(afa_module._MIN_ROWS, afa_module._BLOCK_PAIRS_MAX // N) // 8 * 8)
    assert least == (afa_module._MIN_ROWS if N <= 32768 else 8 if N == 10**6 else 48)
    assert np.all(sizes[:-1] >= least)
    seen = np.array(stops) if causal else np.full(len(stops), N)
    budget = refimpl._blocking.per_block(afa_module._PAIR_FLOATS)
    assert np.all(sizes * seen <= np.maximum(budget + 8 * seen, least * seen))
    assert plan.pairs == int(np.sum(sizes * seen))
    assert plan.buffer == int(np.max(sizes * (seen + afa_module._ROW_PAD))) and plan.scratch == int(np.max(sizes * seen))
    if causal and len(sizes) > 2:
        assert sizes[0] > sizes[-2]


@pytest.mark.parametrize("causal, tkind, weight", [(True, "default", "student"), (True, "irregular", "exponential"),
                                                   (False, "half", "student"), (False, "irregular", "student")])
def test_isotropic_bitwise_the_same_in_any_number_of_threads(causal, tkind, weight, monkeypatch):
    """Blocks of query rows run in threads (refimpl._blocking.in_parts); each block is computed by the
    same operations whichever thread runs it, so 1, 2 or 3 threads give the same bits. N = 523 is
    not a multiple of the 8-row pieces, the 128-key chunks or the blocks; the threads really run
    (the blocks are split into as many parts as threads, computed in the pool's threads)."""
    import threading

    import refimpl._blocking

    rng = np.random.default_rng(11)
    batch, N, d = (2,), 523, 64
    q, k, v = (cplx(rng, batch + (N, d), scale=0.2) for _ in range(3))
    par = dict(mu=0.05, omega=rng.normal(size=d), sigma2=0.1, eta2=0.5, gamma2=0.1, nu=3.0)
    opts = dict(t=make_times(tkind, N, rng), causal=causal, weight=weight, return_weights=True)
    monkeypatch.setattr(refimpl._blocking, "WORKSPACE_FLOATS", 2**14)  # many blocks at this size
    plan = afa_module._Plan.make(N, causal)
    assert len(plan.blocks) > 6 and N % (plan.blocks[0].stop - plan.blocks[0].start) != 0
    parts, threads_seen = [], set()
    in_parts, rows_fn = refimpl._blocking.in_parts, afa_module._isotropic_rows

    def spy_parts(run, n, elems):  # the parts of each split: the operands' rows, then the blocks
        split = []
        parts.append(split)

        def spied(part):
            split.append(part)
            run(part)

        in_parts(spied, n, elems)

    def spy_rows(*args, **kwargs):  # the threads that compute blocks
        threads_seen.add(threading.get_ident())
        return rows_fn(*args, **kwargs)

    monkeypatch.setattr(afa_module, "in_parts", spy_parts)
    monkeypatch.setattr(refimpl._blocking, "in_parts", spy_parts)  # what take_turns calls
    monkeypatch.setattr(afa_module, "_isotropic_rows", spy_rows)
    results = {}
    for threads in (1, 2, 3):
        monkeypatch.setattr(refimpl._blocking, "THREADS", threads)
        parts.clear()
        threads_seen.clear()
        results[threads] = isotropic_afa(q, k, v, **par, **opts)
        assert [len(split) for split in parts] == [threads, threads]
        assert (threading.get_ident() in threads_seen) == (threads == 1)  # threads: blocks run in the pool
    for threads in (2, 3):
        assert np.array_equal(results[threads][0], results[1][0])
        assert np.array_equal(results[threads][1], results[1][1])
    # and they are the equations: rows against a row-by-row evaluation (causal: of the tokens up to the row)
    t = np.arange(N, dtype=float) if opts["t"] is None else opts["t"]
    for i in (0, 200, N - 1):
        upto = slice(0, i + 1) if causal else slice(0, N)
        expected = isotropic_row(q[0, upto], k[0, upto], v[0, upto], i, **par, t=t[upto], weight=weight)
        close(results[2][0][0, i], expected, rtol=SELF, what="isotropic_afa (threads) row vs equations")


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("weight", ["student", "exponential"])
def test_isotropic_rows_far_from_every_key_take_the_row_max(causal, weight, monkeypatch):
    """The isotropic kernel exponentiates logits <= 0 without their row max (log P is shifted by its
    largest value). Queries far from every key make a row's logits all far below 0; with the
    exponential weight its unshifted weights sum below e^-256 (or to 0), and the block must be redone
    with the row max. Checked against the loop twin, and which blocks were redone."""
    import refimpl._blocking

    monkeypatch.setattr(refimpl._blocking, "WORKSPACE_FLOATS", 1)  # blocks of 8 query rows
    monkeypatch.setattr(afa_module, "_MIN_ROWS", 8)
    rng = np.random.default_rng(11)
    N, d = 37, 3
    q, k, v = (rng.normal(size=(N, d)) + 1j * rng.normal(size=(N, d)) for _ in range(3))
    q[10:13] *= 300.0  # three queries of the second block, far from every key
    # a slow decay (μ = 0.01): the query term of a pushed-back pair, E² ‖q_i‖², stays large as well
    kw = dict(mu=0.01, omega=np.array([0.3, -0.5, 1.0]), sigma2=0.3, eta2=0.2, gamma2=0.1, nu=2.0, causal=causal,
              weight=weight, kappa=2.0 if weight == "student" else None)
    redone, real = [], afa_module._isotropic_rows
    monkeypatch.setattr(afa_module, "_isotropic_rows",
                        lambda *a, exact=False: (redone.append(a[1].start) if exact else None) or real(*a, exact=exact))
    y, w = isotropic_afa(q, k, v, return_weights=True, **kw)
    assert redone == ([8] if weight == "exponential" else []), redone  # the Student weight decays slowly: no redo
    y_loop, w_loop = isotropic_afa_loop(q, k, v, return_weights=True, **kw)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(w))
    assert np.linalg.norm(y - y_loop) <= 1e-12 * np.linalg.norm(y_loop)
    assert np.max(np.abs(w - w_loop)) <= 1e-13


# =============================================================================================
# Variances out of the float64 range: logits from log Σ (review of the fuzzing report)
# =============================================================================================


def afa_decimal(q, k, v, *, eigvals, sigma2, eta2, gamma2, nu, t, weight="student", kappa=None, causal=True,
                rows=None):
    """Rows of AFA, Eqs. (7.2)–(7.7), in 40-digit decimal arithmetic: no float64 range limits.

    Σ_k(Δt) (Eq. (2.9): forward, and pushed back for a key after its query), |e^{λΔt}| = e^{−μΔt},
    the residuals, d², the logits log P − κ log(1 + d²/ν) (or − d²/ν) and the softmax are formed
    with ``Decimal.exp``/``ln`` from the exact values of the float64 inputs. Only the phases
    e^{iωΔt} are float64 (cos and sin of ωΔt; the tests choose dyadic ω and stamps, so that ωΔt
    is exact). Returns the outputs (len(rows), d) and the weights (len(rows), N, d) of ``rows``.
    """
    q, k, v = (np.asarray(x, dtype=complex) for x in (q, k, v))
    N, d = q.shape
    t = np.asarray(t, dtype=float)
    lam = np.broadcast_to(np.asarray(eigvals, dtype=complex), (d,))
    noise = [np.broadcast_to(np.asarray(x, dtype=float), (d,)) for x in (sigma2, eta2, gamma2)]
    kappa = (nu + d) / d if kappa is None else kappa
    rows = list(range(N)) if rows is None else list(rows)
    out, weights = np.zeros((len(rows), d), dtype=complex), np.zeros((len(rows), N, d))
    D = Decimal
    with localcontext() as ctx:
        ctx.prec = 40
        for n, i in enumerate(rows):
            keys = [j for j in range(N) if not causal or t[j] <= t[i]]
            logits, pull = {}, {}
            for j in keys:
                dt = D(float(t[i])) - D(float(t[j]))
                sig, d2 = [], D(0)
                for c in range(d):
                    mu = -D(float(lam[c].real))
                    s2, e2, g2 = (D(float(x[c])) for x in noise)
                    if mu == 0:
                        phi = abs(dt)
                    elif dt >= 0:
                        phi = (1 - (-2 * mu * dt).exp()) / (2 * mu)  # (1 − e^{−2μτ})/(2μ)
                    else:
                        phi = ((-2 * mu * dt).exp() - 1) / (2 * mu)  # pushed back: (e^{2μτ} − 1)/(2μ)
                    sigma = s2 * phi + e2 * (-2 * mu * dt).exp() + g2  # Σ = σ² φ + η² e^{−2μΔt} + γ²
                    sig.append(sigma)
                    angle = float(lam[c].imag) * float(t[i] - t[j])
                    er, ei = (-mu * dt).exp() * D(math.cos(angle)), (-mu * dt).exp() * D(math.sin(angle))  # e^{λΔt}
                    kr, ki = D(float(k[j, c].real)), D(float(k[j, c].imag))
                    rr = D(float(q[i, c].real)) - (er * kr - ei * ki)  # R = q_i − e^{λΔt} k_j
                    ri = D(float(q[i, c].imag)) - (er * ki + ei * kr)
                    d2 += (rr * rr + ri * ri) / sigma  # d² = Σ_k |R_k|²/Σ_k
                    pull[j, c] = (er, ei)
                penalty = D(kappa) * (1 + d2 / D(nu)).ln() if weight == "student" else d2 / D(nu)
                logits[j] = [-s.ln() - penalty for s in sig]
            for c in range(d):
                top = max(logits[j][c] for j in keys)
                z = sum((logits[j][c] - top).exp() for j in keys)
                acc_r, acc_i = D(0), D(0)
                for j in keys:
                    a = (logits[j][c] - top).exp() / z
                    weights[n, j, c] = float(a)
                    er, ei = pull[j, c]
                    vr, vi = D(float(v[j, c].real)), D(float(v[j, c].imag))
                    acc_r += a * (er * vr - ei * vi)  # v̄_i = Σ_j A_ij e^{λΔt} v_j
                    acc_i += a * (er * vi + ei * vr)
                out[n, c] = complex(float(acc_r), float(acc_i))
    return out, weights


def all_four(q, k, v, *, mu, omega, t, rows=None, **kw):
    """(name, out, weights (N, N, d)) of afa, afa_loop, isotropic_afa and isotropic_afa_loop."""
    eig = -mu + 1j * np.asarray(omega)
    results = []
    for f in (afa, afa_loop):
        o, w = f(q, k, v, eigvals=eig, t=t, return_weights=True, **kw)
        results.append((f.__name__, o, w))
    for f in (isotropic_afa, isotropic_afa_loop):
        o, w = f(q, k, v, mu=mu, omega=omega, t=t, return_weights=True, **kw)
        results.append((f.__name__, o, np.repeat(w[..., None], q.shape[-1], axis=-1)))
    return results


#: κ ∈ {0.5, 1, 2} (Student) and the Gaussian weight
ROBUST = [("student", 0.5), ("student", 1.0), ("student", 2.0), ("exponential", None)]


class TestVariancesOutOfRange:
    """Σ = η² e^{−2μΔt} (σ² = γ² = 0) underflows once 2μΔt ≳ 745 (P = 1/Σ overflows from 709),
    and the scaled pushed-back variance γ² e^{−2μ|Δt|} (σ² = η² = 0) likewise, although the logits
    are ordinary numbers: e.g. for κ = 1 the logit is −log(Σ + ‖R‖²/ν). Every form must give the
    decimal reference's answer, not a weight 0 (P·‖R‖² = inf), and not a refusal."""

    def test_cauchy_example(self):
        # q = [1, 1], k = [1, 0], v = 1, σ² = γ² = 0, η² = 1, ν = 2, κ = 1, μ = 1/2, t = [0, t1]:
        # logits of row 1: L_10 = −log(e^{−t1} + (1 − e^{−t1/2})²/2), L_11 = −log(1 + 1/2)
        q, k, v = np.array([[1.0], [1.0]]), np.array([[1.0], [0.0]]), np.ones((2, 1))
        kw = dict(sigma2=0.0, eta2=1.0, gamma2=0.0, nu=2.0, kappa=1.0)
        for t1 in (700.0, 710.0, 740.0, 800.0, 1500.0, 1e4):
            l10 = -math.log(math.exp(-t1) + (1.0 - math.exp(-t1 / 2)) ** 2 / 2)
            w10 = 1.0 / (1.0 + math.exp(-math.log(1.5) - l10))
            out1 = w10 * math.exp(-t1 / 2) + (1.0 - w10)
            # log P = t1 and log(1 + d²/ν) ≈ t1 − log 2 cancel in the logit: an absolute rounding of ~ε t1
            tol = 4 * EPS * t1
            for name, out, w in all_four(q, k, v, mu=0.5, omega=[0.0], t=np.array([0.0, t1]), **kw):
                assert abs(w[1, 0, 0] - w10) <= tol and abs(out[1, 0] - out1) <= tol, (name, t1, w[1], out[1])

    @pytest.mark.parametrize("weight, kappa", ROBUST)
    @pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
    @pytest.mark.parametrize("noise", ["eta_only", "gamma_only", "eta_only_huge_nu"])
    def test_against_decimal(self, noise, causal, weight, kappa):
        rng = np.random.default_rng(90)
        N, d, mu, omega = 5, 2, 1.0, np.array([0.75, -1.25])
        q, k, v = (cplx(rng, (N, d)) for _ in range(3))
        # 2μΔt up to 1403: Σ (or the scaled pushed-back Σ) is 0 or subnormal for the far pairs; e^{μΔt}
        # stays finite, so the loop twins can push keys back too
        t = np.array([0.0, 1.0, 380.0, 700.0, 701.5])
        kw = {"eta_only": dict(sigma2=0.0, eta2=0.8, gamma2=0.0, nu=1.5),
              "gamma_only": dict(sigma2=0.0, eta2=0.0, gamma2=0.3, nu=1.5),
              # νΣ up to 1e302 next to underflowing Σ: ‖R‖² and νΣ are scaled by 2^-1000 or so
              "eta_only_huge_nu": dict(sigma2=0.0, eta2=100.0, gamma2=0.0, nu=1e300)}[noise]
        kw.update(weight=weight, kappa=kappa, causal=causal)
        expected, w_expected = afa_decimal(q, k, v, eigvals=-mu + 1j * omega, t=t, **kw)
        for name, out, w in all_four(q, k, v, mu=mu, omega=omega, t=t, **kw):
            close(out, expected, rtol=ORACLE, what=f"{name}, variance out of range, vs decimal")
            assert np.max(np.abs(w - w_expected)) <= 1e-13, name

    @pytest.mark.parametrize("weight, kappa", ROBUST)
    @pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
    def test_long_sequence_no_measurement_noise(self, causal, weight, kappa):
        # σ² = η² = 0 (the decayed-RoPE setting): forward Σ = γ²; every pushed-back lag with
        # 2μ|Δt| > 745 has a scaled variance 0 — masked when causal, but it must not reach the
        # shift of the logits (max log P) either way
        rng = np.random.default_rng(91)
        N, d, mu, omega = 400, 2, 1.0, np.array([0.5, -0.125])
        q, k, v = (cplx(rng, (N, d)) for _ in range(3))
        t = np.arange(N, dtype=float)
        kw = dict(sigma2=0.0, eta2=0.0, gamma2=0.05, nu=1.0, weight=weight, kappa=kappa, causal=causal)
        out = isotropic_afa(q, k, v, mu=mu, omega=omega, t=t, **kw)
        tensor = afa(q, k, v, eigvals=-mu + 1j * omega, t=t, **kw)
        close(out, tensor, rtol=SELF, what="isotropic vs tensor, σ² = η² = 0, N = 400")
        rows = [0, 1, 200, N - 1]
        expected, _ = afa_decimal(q, k, v, eigvals=-mu + 1j * omega, t=t, rows=rows, **kw)
        for f, o in (("isotropic_afa", out), ("afa", tensor)):
            close(o[rows], expected, rtol=ORACLE, what=f"{f}, σ² = η² = 0, N = 400, vs decimal")

    @pytest.mark.parametrize("kappa", [0.5, 1.0, 2.0])
    @pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
    def test_huge_residuals_student(self, causal, kappa):
        # |q| ~ 1e300: d²/ν overflows, log d² does not. The logits (≈ −1400 κ) carry an absolute
        # rounding of ~1400 κ ε, hence the wider tolerance.
        rng = np.random.default_rng(92)
        q, k, v = (cplx(rng, (4, 2)) for _ in range(3))
        q = q * 1e300
        lam, t = np.array([-0.3 + 0.5j, -0.25]), np.arange(4.0)
        kw = dict(sigma2=0.4, eta2=0.125, gamma2=0.0625, nu=2.0, kappa=kappa, causal=causal)
        expected, _ = afa_decimal(q, k, v, eigvals=lam, t=t, **kw)
        for f in (afa, afa_loop):
            close(f(q, k, v, eigvals=lam, t=t, **kw), expected, rtol=1e-11, what=f"{f.__name__}, |q| ~ 1e300")

    def test_huge_decay_times_lag_loop_twin(self):
        # μ τ = 2.7e21: the loop twin's scalar φ kernel (e^{−2μτ} = 0, its exponent's rounding error
        # > 709) gave NaN and a refusal
        rng = np.random.default_rng(93)
        q, k, v = (cplx(rng, (4, 2)) for _ in range(3))
        lam, t = np.array([-1.1e10 + 0.0j, -0.5 + 0.25j]), np.array([0.0, 1.0, 2.45e11, 2.45e11 + 1])
        kw = dict(sigma2=np.array([1.0, 0.3]), eta2=0.5, gamma2=0.25, nu=2.0, t=t)
        expected, _ = afa_decimal(q, k, v, eigvals=lam, **kw)
        for f in (afa, afa_loop):
            close(f(q, k, v, eigvals=lam, **kw), expected, rtol=ORACLE, what=f"{f.__name__}, μτ = 2.7e21")


class TestTimeOffset:
    """The output depends on the lags Δt_ij only: a common offset of the stamps changes nothing. The
    isotropic form rotates by ω(t_i − t_1) (the factors e^{∓iωt_1} cancel); rotating by ω t_i
    would carry a phase rounding of ε|ω| t_1 (2.9e-5 relative at t_1 = 1e12)."""

    @pytest.mark.parametrize("weight", ["student", "exponential"])
    @pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
    @pytest.mark.parametrize("tkind", ["uniform", "irregular"])
    def test_offset(self, tkind, causal, weight):
        rng = np.random.default_rng(94)
        N, d = 40, 4
        q, k, v = (cplx(rng, (N, d)) for _ in range(3))
        omega = rng.normal(scale=1.5, size=d)  # not dyadic: ω t is rounded, and more so for large t
        # stamps on a grid of 1/64: t0 + base and (t0 + base) − t0 are exact for these offsets
        base = 0.75 * np.arange(N) if tkind == "uniform" else np.cumsum(rng.integers(8, 96, size=N)) / 64.0
        kw = dict(mu=0.2, omega=omega, sigma2=0.3, eta2=0.4, gamma2=0.2, nu=3.0, weight=weight, causal=causal)
        ref = isotropic_afa(q, k, v, t=base, **kw)
        tensor = afa(q, k, v, eigvals=-0.2 + 1j * omega, sigma2=0.3, eta2=0.4, gamma2=0.2, nu=3.0, t=base,
                     weight=weight, causal=causal)
        close(ref, tensor, rtol=1e-14, what="isotropic vs tensor, t from 0")
        for t0 in (1e3, 1e6, 1e12, -1e12):
            out = isotropic_afa(q, k, v, t=t0 + base, **kw)
            close(out, ref, rtol=1e-14, what=f"isotropic_afa with stamps offset by {t0:g}")


@pytest.mark.parametrize("fn", [afa, afa_loop])
def test_return_intermediates_must_be_bool(fn):
    # the loop twin validated causal, rotate_values and return_weights but not return_intermediates
    rng = np.random.default_rng(0)
    q = rng.normal(size=(4, 2)) + 1j * rng.normal(size=(4, 2))
    kw = dict(eigvals=np.array([-0.5 + 1.0j, -0.1 - 2.0j]), sigma2=0.5, eta2=0.1, gamma2=0.05, nu=2.0)
    with pytest.raises(TypeError, match="return_intermediates"):
        fn(q, q, q, return_intermediates="no", **kw)


class TestFoldedDecay:
    """Causal isotropic AFA factors each pair's decay, E_ij = e^{−μ(t_i − t_j)} = a_i b_j (a_i = e^{−μ(t_i − s)},
    b_j = e^{μ(t_j − s)}), so that ‖R‖² is one product of width 2d + 2 and the values carry b_j. Only while
    μ(t_N − t_1) <= _FOLD_SPAN and the inputs are moderate (_FOLD_NORM); otherwise the operands are the plain
    ones. Both forms against each other, the loop twin and the tensor form; which form ran; the fallbacks."""

    @staticmethod
    def forms(monkeypatch):
        """Record whether each call's operands were folded (keys.a is not None)."""
        seen, make = [], afa_module._operands

        def spy(*args, **kwargs):
            keys = make(*args, **kwargs)
            seen.append(keys.a is not None)
            return keys

        monkeypatch.setattr(afa_module, "_operands", spy)
        return seen

    @pytest.mark.parametrize("weight", ["student", "exponential"])
    @pytest.mark.parametrize("tkind", ["default", "half", "irregular"])
    @pytest.mark.parametrize("mu", [0.0, 0.05, 0.4])
    def test_folded_equals_plain(self, mu, tkind, weight, monkeypatch):
        rng = np.random.default_rng(95)
        batch, N, d = (2,), 611, 8  # not whole pieces or chunks; μ = 0.4 spans 244 (default t) or 0.4·(t_N − t_1)
        q, k, v = (cplx(rng, batch + (N, d), scale=0.5) for _ in range(3))
        t = make_times(tkind, N, rng)
        kw = dict(mu=mu, omega=rng.normal(size=d), sigma2=0.1, eta2=0.5, gamma2=0.1, nu=3.0, weight=weight, t=t,
                  return_weights=True, rotate_values=tkind != "half", temperature=0.7 if tkind == "irregular" else 1.0)
        span = mu * (N - 1 if t is None else t[-1] - t[0])
        seen = self.forms(monkeypatch)
        out, A = isotropic_afa(q, k, v, **kw)
        assert seen == [span <= afa_module._FOLD_SPAN]
        monkeypatch.setattr(afa_module, "_FOLD_SPAN", -1.0)  # the plain operands
        plain, A_plain = isotropic_afa(q, k, v, **kw)
        assert seen[-1] is False
        close(out, plain, rtol=1e-14, what="folded vs plain isotropic AFA")
        close(A, A_plain, rtol=1e-14, what="folded vs plain weights")
        loop = isotropic_afa_loop(q[1, :100], k[1, :100], v[1, :100], **{**kw, "return_weights": False,
                                                                            "t": None if t is None else t[:100]})
        close(out[1, :100], loop, rtol=1e-13, what="folded isotropic AFA vs loop twin")

    def test_largest_span(self, monkeypatch):
        """At the largest folded span the factors reach e^{±128}: the decay of the long lags is still
        the tensor form's, every weight within 1e-13 of it."""
        rng = np.random.default_rng(96)
        N, d = 257, 4
        q, k, v = (cplx(rng, (N, d)) for _ in range(3))
        omega = rng.normal(size=d)
        mu = afa_module._FOLD_SPAN / (N - 1)  # span exactly _FOLD_SPAN: folded
        noise = dict(sigma2=0.2, eta2=0.3, gamma2=0.05, nu=2.0)
        seen = self.forms(monkeypatch)
        out, A = isotropic_afa(q, k, v, mu=mu, omega=omega, **noise, return_weights=True)
        assert seen == [True]
        ref, A_ref = afa(q, k, v, eigvals=-mu + 1j * omega, **noise, return_weights=True)
        close(out, ref, rtol=1e-13, what="folded isotropic AFA at the largest span vs tensor form")
        close(A, A_ref[..., 0], rtol=1e-13, what="its weights")

    @pytest.mark.parametrize("which", ["q", "k", "v", "span", "bidir"])
    def test_plain_when_folding_could_overflow(self, which, monkeypatch):
        """A long span, inputs whose squared norms (or values) exceed _FOLD_NORM, or causal=False: the plain
        operands (the folded ones are formed first and dropped when an input is too large), bitwise the
        result of the plain form, finite, and the loop twin's."""
        rng = np.random.default_rng(97)
        N, d = 50, 3
        x = {n: cplx(rng, (N, d)) for n in "qkv"}
        mu = 0.2
        if which in "qkv":
            x[which][7] *= 1e31  # ‖·‖² ≈ 1e62 > _FOLD_NORM
        if which == "span":
            mu = 1.01 * afa_module._FOLD_SPAN / (N - 1)
        kw = dict(mu=mu, omega=np.array([0.3, -0.7, 1.1]), sigma2=0.1, eta2=0.5, gamma2=0.1, nu=2.0,
                  causal=which != "bidir")
        seen = self.forms(monkeypatch)
        out = isotropic_afa(x["q"], x["k"], x["v"], **kw)
        assert seen == ([True, False] if which in "qkv" else [False])
        assert np.all(np.isfinite(out))
        monkeypatch.setattr(afa_module, "_FOLD_SPAN", -1.0)
        np.testing.assert_array_equal(isotropic_afa(x["q"], x["k"], x["v"], **kw), out)
        close(out, isotropic_afa_loop(x["q"], x["k"], x["v"], **kw), rtol=SELF, what=f"plain ({which}) vs loop twin")


@pytest.mark.parametrize("causal", [True, False])
def test_isotropic_afa_reads_its_inputs_only(causal):
    """isotropic_afa takes q, k, v without defensive copies (check_qkv(copy=False)): it must leave
    them as they were, and return nothing that shares their memory."""
    rng = np.random.default_rng(5)
    q, k, v = (rng.normal(size=(2, 40, 3)) + 1j * rng.normal(size=(2, 40, 3)) for _ in range(3))
    before = [x.copy() for x in (q, k, v)]
    kw = dict(mu=0.2, omega=np.array([0.3, -0.5, 1.0]), sigma2=0.3, eta2=0.2, gamma2=0.1, nu=2.0, causal=causal)
    y, w = isotropic_afa(q, k, v, return_weights=True, **kw)
    for x, b in zip((q, k, v), before):
        assert np.array_equal(x, b)
        assert not np.shares_memory(y, x) and not np.shares_memory(w, x)
