"""Tests of the vector–Jacobian products: ``attention.softmax_attention_vjp``,
``random_features.linear_attention_vjp``, ``ssm.selective_scan_vjp`` and chapter 16's
``linear_rnn.ssd_vjp``, ``gated_linear_attention_vjp``, ``retention_vjp`` and ``delta_rule_vjp``
(implemented in ``refimpl/_vjp.py``).

Oracles, each independent of the code under test:

* **complex-step differentiation** (Squire & Trapp 1998): for a loss ℓ(x) = Σ dy ∘ y(x) that is
  analytic in x, ``Im ℓ(x + i h e) / h = ∇ℓ · e + O(h²)`` with no subtractive cancellation, so
  h = 1e-30 gives the directional derivative to rounding error. The three forwards are analytic
  in all their inputs (elu + 1 away from 0, whose branch is chosen on the real part), and are
  written here again in a few NumPy lines that accept complex input (refimpl's forwards reject
  complex values by design). Full gradients (one evaluation per input entry) on small cases,
  random directional derivatives on large ones;
* the loop twins (the naive softmax Jacobian, the O(N²) scatter of linear attention, the scalar
  forward-then-adjoint recurrence of the scan) against the vectorized algorithms;
* FlashAttention's ``D = rowsum(dO ∘ O)`` against the naive ``Σ_j P_ij dP_ij``.

Tolerances: complex step 1e-10 norm-wise (the task asks ≤ 1e-8; the measured errors are ~1e-14),
loop twins SELF = 1e-10.
Chapter 16's VJPs: complex step CSTEP_REC = 1e-12, central differences of refimpl's own forwards
FD_REC = 1e-8 (relative to |g||e|), loop twins SELF = 1e-10.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _oracles import delta_recurrence  # noqa: E402
from refimpl import _vjp
from refimpl._testing import SELF, assert_close, max_abs_error
from refimpl.attention import attention_weights, softmax_attention, softmax_attention_vjp, softmax_attention_vjp_loop
from refimpl.random_features import linear_attention, linear_attention_vjp, linear_attention_vjp_loop
from refimpl.ssm import selective_scan, selective_scan_vjp, selective_scan_vjp_loop

from _recording import recorder  # noqa: E402

#: worst error seen per oracle (printed by conftest when REFIMPL_WORST_ERRORS=1)
WORST_ERRORS, close, record = recorder()

CSTEP = 1e-10  # complex step vs vjp, norm-wise relative
H = 1e-30  # the complex step


# --------------------------------------------------------------------------------------------
# Independent complex-capable forwards
# --------------------------------------------------------------------------------------------


def allowed_keys(n, m, mask, causal, window, causal_alignment):
    """Where query i may attend key j under Eq. (4.14), and the signed distance ``i + o − j``."""
    o = 0 if causal_alignment == "top_left" else m - n
    dist = np.arange(n)[:, None] + o - np.arange(m)[None, :]  # i + o − j
    allowed = np.ones((n, m), dtype=bool)
    if causal:
        allowed &= dist >= 0
    if window is not None:
        allowed &= np.abs(dist) < window
    if mask is not None:
        allowed = allowed & mask
    return allowed, dist


def fwd_softmax(q, k, v, *, mask=None, causal=False, scale=None, window=None, alibi_slopes=None,
                causal_alignment="top_left", softcap=None, grouped_heads=False):
    """Eqs. (4.1) and (4.14) directly, in the dtype of the inputs (complex allowed): every option of
    softmax_attention, as FlashAttention-2 defines it (a row that sees no key gives 0)."""
    n, m, d = q.shape[-2], k.shape[-2], q.shape[-1]
    if grouped_heads:  # query head h reads key/value head h // G
        g = q.shape[-3] // k.shape[-3]
        k, v = np.repeat(k, g, axis=-3), np.repeat(v, g, axis=-3)
    c = 1.0 / math.sqrt(d) if scale is None else scale
    s = c * np.einsum("...id,...jd->...ij", q, k)
    if softcap is not None:
        s = softcap * np.tanh(s / softcap)
    allowed, dist = allowed_keys(n, m, mask, causal, window, causal_alignment)
    if alibi_slopes is not None:
        s = s - np.asarray(alibi_slopes, dtype=float)[..., None, None] * np.abs(dist)
    allowed = np.broadcast_to(allowed, s.shape)
    # Any row constant cancels; subtracting the (complex) largest logit itself makes its weight
    # exactly 1 + 0i, so the quotient below does not cancel the O(h) imaginary parts (which a
    # real shift would, at large logits).
    top = np.argmax(np.where(allowed, s.real, -np.inf), axis=-1)[..., None]
    shift = np.take_along_axis(s, top, axis=-1)
    e = np.where(allowed, np.exp(np.where(allowed, s, 0) - shift), 0)
    z = e.sum(axis=-1, keepdims=True)
    return np.einsum("...ij,...jc->...ic", e, v) / np.where(z == 0, 1, z)


def phi_c(x):
    """elu + 1 with the branch chosen on the real part (analytic on each side)."""
    return np.where(x.real > 0, x + 1, np.exp(np.where(x.real > 0, 0, x)))


def fwd_linear(q, k, v, *, causal=False):
    """Eq. (12.2) as an (N, M) matrix: y = (W v) / W 1 with W_ij = φ(q_i)·φ(k_j) (j ≤ i if causal)."""
    W = np.einsum("...ic,...jc->...ij", phi_c(q), phi_c(k))
    if causal:
        W = W * np.tri(q.shape[-2], k.shape[-2])
    return np.einsum("...ij,...jc->...ic", W, v) / W.sum(axis=-1, keepdims=True)


def phi1_c(x):
    """φ1(x) = (e^x − 1)/x, analytic: the Taylor series for |x| < 0.5 (where the quotient would
    lose the O(x) terms a complex step at A = 0 needs), the quotient elsewhere."""
    small = np.abs(x) < 0.5
    xs = np.where(small, x, 0)
    series = sum(xs**j / math.factorial(j + 1) for j in range(25))
    xl = np.where(small, 1, x)
    return np.where(small, series, (np.exp(xl) - 1) / xl)


def fwd_scan(u, delta, A, B, C, D, *, discretization="mamba"):
    """h_t = e^{Δ_t A} h_{t−1} + B̄_t u_t, y_t = C_t h_t + D u_t, one time step at a time."""
    u, delta = np.broadcast_arrays(u, delta)
    L = u.shape[-2]
    B = np.broadcast_to(B, u.shape[:-1] + B.shape[-1:])
    C = np.broadcast_to(C, u.shape[:-1] + C.shape[-1:])
    h = np.zeros(u.shape[:-2] + A.shape, dtype=np.result_type(u, delta, A, B, C, complex))
    ys = []
    for t in range(L):
        x = delta[..., t, :, None] * A
        if discretization == "mamba":
            bbar = delta[..., t, :, None] * B[..., t, None, :]
        else:
            bbar = delta[..., t, :, None] * phi1_c(x) * B[..., t, None, :]  # (e^{ΔA} − 1)/A = Δ φ1(ΔA)
        h = np.exp(x) * h + bbar * u[..., t, :, None]
        ys.append(np.sum(h * C[..., t, None, :], axis=-1))
    y = np.stack(ys, axis=-2)
    return y if D is None else y + D * u


# --------------------------------------------------------------------------------------------
# Complex-step helpers
# --------------------------------------------------------------------------------------------


def loss(fwd, args, dy, **kw):
    return np.sum(dy * fwd(**args, **kw))


def cstep_grad(fwd, args, name, dy, **kw):
    """∂ℓ/∂args[name], one complex-step evaluation per entry."""
    x = np.asarray(args[name], dtype=float)
    g = np.zeros(x.shape)
    for idx in np.ndindex(*x.shape):
        xc = x.astype(complex)
        xc[idx] += 1j * H
        g[idx] = loss(fwd, {**args, name: xc}, dy, **kw).imag / H
    return g


def cstep_dir(fwd, args, name, e, dy, **kw):
    """The directional derivative ∇_name ℓ · e by one complex step."""
    x = np.asarray(args[name], dtype=float)
    return loss(fwd, {**args, name: x + 1j * H * e}, dy, **kw).imag / H


def check_full(fwd, args, dy, grads: dict, what: str, atol=0.0, **kw):
    for name, g in grads.items():
        ref = cstep_grad(fwd, args, name, dy, **kw)
        if atol:
            err = assert_close(g, ref, rtol=CSTEP, atol=atol, what=f"{what}: d{name} vs complex step")
            record(f"{what}: d{name} vs complex step (abs error, atol {atol:.0e})", max_abs_error(g, ref), atol)
        else:
            close(g, ref, rtol=CSTEP, what=f"{what}: d{name} vs complex step")


def check_directions(fwd, args, dy, grads: dict, what: str, seed=0, n_dir=2, **kw):
    rng = np.random.default_rng(seed)
    for name, g in grads.items():
        for _ in range(n_dir):
            e = rng.standard_normal(np.shape(args[name]))
            ref = cstep_dir(fwd, args, name, e, dy, **kw)
            err = abs(float(np.sum(g * e)) - ref) / (np.linalg.norm(g) * np.linalg.norm(e))
            record(f"{what}: directional complex step (rel. to |g||e|)", err, CSTEP)
            assert err <= CSTEP, f"{what}: d{name}·e = {np.sum(g * e)!r} vs complex step {ref!r}"


def check_twins(a, b, what, atol=0.0):
    for x, y, n in zip(a, b, ("dq", "dk", "dv")):
        if atol:
            assert_close(x, y, rtol=SELF, atol=atol, what=f"{what}: {n} loop twin")
            record(f"{what}: {n} loop twin (abs error, atol {atol:.0e})", max_abs_error(x, y), atol)
        else:
            close(x, y, rtol=SELF, what=f"{what}: {n} loop twin")


# --------------------------------------------------------------------------------------------
# Softmax attention
# --------------------------------------------------------------------------------------------


def qkv(seed, n, m, d=3, dv=2, batch=(), kbatch=None):
    rng = np.random.default_rng(seed)
    kb = batch if kbatch is None else kbatch
    return (rng.normal(size=(*batch, n, d)), rng.normal(size=(*kb, m, d)), rng.normal(size=(*kb, m, dv)))


SOFTMAX_CASES = {
    "plain": dict(n=5, m=7),
    "causal": dict(n=6, m=6, causal=True),
    "causal_n_lt_m": dict(n=4, m=7, causal=True),
    "mask": dict(n=5, m=6, mask=True),
    "mask_causal": dict(n=6, m=8, mask=True, causal=True),
    "scale": dict(n=4, m=5, scale=2.5),
    "scale_zero": dict(n=4, m=5, scale=0.0),
    "heads": dict(n=4, m=5, batch=(2, 3)),
    "kv_broadcast": dict(n=4, m=5, batch=(2,), kbatch=(1,)),
    "q_broadcast": dict(n=4, m=5, batch=(1,), kbatch=(3,)),
    "large_logits": dict(n=5, m=6, scale=40.0, causal=True),  # weights near one-hot: exp underflows
    # the options of the FlashAttention-2 family (Eq. (4.14)); N > M bottom-right leaves rows with no key
    "window": dict(n=7, m=7, window=3),
    "window_causal": dict(n=7, m=7, causal=True, window=2),
    "alibi": dict(n=5, m=6, batch=(3,), alibi_slopes=np.array([0.0, 0.5, 2.0])),
    "alibi_causal_window": dict(n=6, m=6, causal=True, window=4, alibi_slopes=0.7),
    "softcap": dict(n=5, m=6, scale=3.0, softcap=2.0),
    "softcap_mask_causal": dict(n=6, m=8, mask=True, causal=True, softcap=1.5),
    "bottom_right": dict(n=4, m=7, causal=True, causal_alignment="bottom_right"),
    "bottom_right_n_gt_m": dict(n=7, m=4, causal=True, causal_alignment="bottom_right"),
    "bottom_right_window": dict(n=5, m=8, causal=True, window=3, causal_alignment="bottom_right"),
    "grouped_heads": dict(n=5, m=6, batch=(4,), kbatch=(2,), grouped_heads=True),
    "grouped_all": dict(n=5, m=7, batch=(2, 6), kbatch=(2, 3), grouped_heads=True, causal=True, window=3,
                        alibi_slopes=np.linspace(0.1, 1.0, 6), softcap=2.5, causal_alignment="bottom_right"),
}


def _softmax_case(name, seed=1):
    spec = dict(SOFTMAX_CASES[name])
    n, m = spec.pop("n"), spec.pop("m")
    q, k, v = qkv(seed, n, m, batch=spec.pop("batch", ()), kbatch=spec.pop("kbatch", None))
    kw = {}
    if spec.pop("mask", False):
        rng = np.random.default_rng(seed + 100)
        mask = rng.random((n, m)) < 0.6
        mask[:, 0] = True  # every row keeps key 0 (allowed under causal too)
        kw["mask"] = mask
    kw.update(spec)
    # grouped heads: the output has the query heads (k, v have H_kv of them on axis -3)
    batch = q.shape[:-2] if kw.get("grouped_heads") else np.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    dy = np.random.default_rng(seed + 200).normal(size=(*batch, n, v.shape[-1]))
    return {"q": q, "k": k, "v": v}, dy, kw


@pytest.mark.parametrize("name", sorted(SOFTMAX_CASES))
def test_softmax_vjp_complex_step(name):
    args, dy, kw = _softmax_case(name)
    dq, dk, dv = softmax_attention_vjp(**args, dy=dy, **kw)
    # Near one-hot rows: dP_ij − D_i cancels (D_i ≈ dP_ij for the winning key), so dq, dk are
    # accurate to ~ε·scale·|dy||v||k| absolutely, not relatively (any implementation of either form).
    atol = 1e-13 if name == "large_logits" else 0.0
    check_full(fwd_softmax, args, dy, {"q": dq, "k": dk, "v": dv}, f"softmax {name}", atol=atol, **kw)
    check_twins((dq, dk, dv), softmax_attention_vjp_loop(**args, dy=dy, **kw), f"softmax {name}", atol=atol)


@pytest.mark.parametrize("name", ["plain", "mask_causal", "heads", "bottom_right_n_gt_m", "grouped_all"])
def test_softmax_vjp_intermediates(name):
    """ℓ is the forward's log-sum-exp (−∞ for a row that sees no key) and D = rowsum(dy ∘ y) with y
    from the forward function: both checked against softmax_attention, not against the backward code."""
    args, dy, kw = _softmax_case(name)
    *g, mid = softmax_attention_vjp(**args, dy=dy, **kw, return_intermediates=True)
    *gl, mid_loop = softmax_attention_vjp_loop(**args, dy=dy, **kw, return_intermediates=True)
    y, lse = softmax_attention(**args, **kw, return_lse=True)
    assert list(mid) == ["lse", "D"] and mid["lse"].shape == mid["D"].shape == lse.shape == y.shape[:-1]
    none = np.isneginf(lse)
    assert np.array_equal(np.isneginf(mid["lse"]), none) and np.array_equal(np.isneginf(mid_loop["lse"]), none)
    assert none.any() == (name == "bottom_right_n_gt_m")
    for m_, what in ((mid, "blocks"), (mid_loop, "loop twin")):
        close(np.where(none, 0.0, m_["lse"]), np.where(none, 0.0, lse), rtol=1e-13, what=f"softmax {name}: lse ({what}) vs forward")
        close(m_["D"], np.sum(dy * y, axis=-1), rtol=1e-13, what=f"softmax {name}: D ({what}) vs rowsum(dy ∘ y)")
    for a, b in zip(g, softmax_attention_vjp(**args, dy=dy, **kw)):
        assert np.array_equal(a, b)  # the flag adds outputs and changes none


def test_independent_forward_agrees_with_refimpl():
    """The test's complex-capable forwards compute what refimpl computes (else the oracle is moot)."""
    args, dy, kw = _softmax_case("mask_causal")
    close(fwd_softmax(**args, **kw), softmax_attention(**args, **kw), rtol=1e-13, what="fwd_softmax")
    rng = np.random.default_rng(3)
    q, k, v = rng.normal(size=(3, 2, 9, 4))
    for causal in (False, True):
        close(fwd_linear(q, k, v, causal=causal), linear_attention(q, k, v, causal=causal), rtol=1e-13, what="fwd_linear")
    a = _scan_args(4, 9, 3, 2)
    for disc in ("mamba", "zoh"):
        close(fwd_scan(**a, discretization=disc), selective_scan(**a, discretization=disc), rtol=1e-13, what="fwd_scan")


@pytest.mark.parametrize("blocks", [1, 2, 4])
@pytest.mark.parametrize("causal", [False, True])
def test_softmax_vjp_tile_boundaries(blocks, causal):
    """N = one, two, four full query blocks (of _vjp._ATT_BLOCK rows) plus a single row."""
    n = blocks * _vjp._ATT_BLOCK + 1
    m = n if causal else n - 30  # N ≠ M without the causal triangle
    args = dict(zip("qkv", qkv(n, n, m, d=4, dv=3, batch=(2,))))
    rng = np.random.default_rng(n)
    mask = rng.random((n, m)) < 0.8
    mask[:, 0] = True
    dy = rng.normal(size=(2, n, 3))
    g = softmax_attention_vjp(**args, dy=dy, mask=mask, causal=causal)
    check_twins(g, softmax_attention_vjp_loop(**args, dy=dy, mask=mask, causal=causal), f"softmax N={n}")
    check_directions(fwd_softmax, args, dy, dict(zip("qkv", g)), f"softmax N={n}", mask=mask, causal=causal)


def test_softmax_shared_kv_with_head_mask():
    """Heads of q sharing one k, v (multi-query) with a per-head mask: dk, dv are summed over the heads."""
    rng = np.random.default_rng(6)
    q, k, v = rng.normal(size=(3, 6, 4)), rng.normal(size=(7, 4)), rng.normal(size=(7, 2))
    mask = rng.random((3, 6, 7)) < 0.7
    mask[..., 0] = True
    dy = rng.normal(size=(3, 6, 2))
    g = softmax_attention_vjp(q, k, v, dy, mask=mask)
    assert [x.shape for x in g] == [q.shape, k.shape, v.shape]
    check_twins(g, softmax_attention_vjp_loop(q, k, v, dy, mask=mask), "softmax head mask")
    per_head = [softmax_attention_vjp(q[h], k, v, dy[h], mask=mask[h]) for h in range(3)]
    close(g[0], np.stack([p[0] for p in per_head]), rtol=1e-13, what="softmax head mask dq per head")
    for i, name in ((1, "dk"), (2, "dv")):
        close(g[i], sum(p[i] for p in per_head), rtol=1e-13, what=f"softmax head mask {name} = Σ_h")


def test_flash_D_form_equals_naive():
    """D_i = rowsum(dO ∘ O) = Σ_j P_ij dP_ij, hence dS = P ∘ (dP − D) equals the naive softmax Jacobian."""
    args, dy, kw = _softmax_case("mask_causal", seed=9)
    q, k, v = args["q"], args["k"], args["v"]
    P = attention_weights(q, k, **kw)
    O = P @ v
    dP = dy @ v.T
    D_flash = np.sum(dy * O, axis=-1, keepdims=True)
    D_naive = np.sum(P * dP, axis=-1, keepdims=True)
    close(D_flash, D_naive, rtol=1e-14, what="FlashAttention D vs naive row sum")
    J = np.einsum("ij,jl->ijl", P, np.eye(P.shape[-1])) - np.einsum("ij,il->ijl", P, P)  # ∂P_ij/∂S_il
    dS_naive = np.einsum("ijl,ij->il", J, dP)
    close(P * (dP - D_flash), dS_naive, rtol=1e-14, what="dS = P∘(dP − D) vs the full Jacobian")


# --------------------------------------------------------------------------------------------
# Linear attention
# --------------------------------------------------------------------------------------------

LINEAR_CASES = {
    "noncausal": dict(n=5, m=7, causal=False),
    "causal": dict(n=7, m=7, causal=True),
    "heads": dict(n=5, m=5, causal=True, batch=(2, 2)),
    "kv_broadcast": dict(n=4, m=6, causal=False, batch=(3,), kbatch=(1,)),
    "kv_broadcast_causal": dict(n=6, m=6, causal=True, batch=(3,), kbatch=()),
}


@pytest.mark.parametrize("name", sorted(LINEAR_CASES))
def test_linear_vjp_complex_step(name):
    spec = dict(LINEAR_CASES[name])
    q, k, v = qkv(11, spec["n"], spec["m"], d=3, dv=2, batch=spec.get("batch", ()), kbatch=spec.get("kbatch"))
    args = {"q": q, "k": k, "v": v}
    batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    dy = np.random.default_rng(12).normal(size=(*batch, spec["n"], 2))
    g = linear_attention_vjp(**args, dy=dy, causal=spec["causal"])
    check_full(fwd_linear, args, dy, dict(zip("qkv", g)), f"linear {name}", causal=spec["causal"])
    check_twins(g, linear_attention_vjp_loop(**args, dy=dy, causal=spec["causal"]), f"linear {name}")


@pytest.mark.parametrize("n", [65, 129, 257])
def test_linear_vjp_tile_boundaries(n):
    """Causal, chunks of 64: the prefix sums cross 1, 2 and 4 chunk boundaries plus a one-row chunk."""
    assert _vjp._LIN_CHUNK == 64
    q, k, v = qkv(n, n, n, d=3, dv=2, batch=(2,))
    args = {"q": q, "k": k, "v": v}
    dy = np.random.default_rng(n + 1).normal(size=(2, n, 2))
    g = linear_attention_vjp(**args, dy=dy, causal=True)
    check_twins(g, linear_attention_vjp_loop(**args, dy=dy, causal=True), f"linear N={n}")
    check_directions(fwd_linear, args, dy, dict(zip("qkv", g)), f"linear N={n}", causal=True)


@pytest.mark.parametrize("n, chunk", [(70, 16), (64, 16), (5, 16), (130, 64), (3, 64)])
def test_causal_linear_vjp_against_matrix(n, chunk):
    """The chunked backward pass (shared states and blocks, the forward formed on the way) equals the masked
    (N, N) matrices: o = tril(A Bᵀ) Ṽ, G from o and dy, da = tril(G Ṽᵀ) B, db = tril(G Ṽᵀ)ᵀ A,
    dṽ = tril(A Bᵀ)ᵀ G; partial last chunks, one chunk, and broadcast batch axes."""
    rng = np.random.default_rng(4)
    a, b = rng.uniform(0.1, 2.0, size=(2, 2, 1, n, 3))  # positive features (φ = elu + 1 > 0)
    b = np.swapaxes(b, 0, 1)  # batch axes (2, 1) and (1, 2)
    vt = np.concatenate([rng.normal(size=(n, 2)), np.ones((n, 1))], axis=-1)
    dy = rng.normal(size=(2, 2, n, 2))
    da, db, dvt = _vjp._causal_linear_vjp(a, b, vt, dy, chunk=chunk)
    P = np.tril(a @ np.swapaxes(b, -1, -2))
    o = P @ vt
    den = o[..., -1:]
    G = np.concatenate([dy / den, -np.sum(dy * o[..., :-1], axis=-1, keepdims=True) / den**2], axis=-1)
    M = np.tril(G @ vt.T)
    close(da, M @ b, rtol=1e-13, what="da")
    close(db, np.swapaxes(M, -1, -2) @ a, rtol=1e-13, what="db")
    close(dvt, np.swapaxes(P, -1, -2) @ G, rtol=1e-13, what="dṽ")


# --------------------------------------------------------------------------------------------
# Selective scan
# --------------------------------------------------------------------------------------------


def _scan_args(seed, L, d_in, n, batch=(2,), with_zero=True):
    rng = np.random.default_rng(seed)
    A = -rng.uniform(0.05, 2.0, (d_in, n))
    if with_zero:
        A[0, 0] = 0.0  # a pure integrator (e^{ΔA} = 1, B̄ = ΔB in both rules)
        A[-1, -1] = -1e-3  # ΔA small: the series branch of ∂B̄/∂A
    return {
        "u": rng.normal(size=(*batch, L, d_in)),
        "delta": rng.uniform(0.01, 1.0, (*batch, L, d_in)),
        "A": A,
        "B": rng.normal(size=(*batch, L, n)),
        "C": rng.normal(size=(*batch, L, n)),
        "D": rng.normal(size=d_in),
    }


@pytest.mark.parametrize("disc", ["mamba", "zoh"])
def test_scan_vjp_complex_step(disc):
    args = _scan_args(21, 9, 3, 2)
    dy = np.random.default_rng(22).normal(size=args["u"].shape)
    g = selective_scan_vjp(**args, dy=dy, discretization=disc)
    assert set(g) == {"du", "ddelta", "dA", "dB", "dC", "dD"}
    check_full(fwd_scan, args, dy, {k[1:]: v for k, v in g.items()}, f"scan {disc}", discretization=disc)
    gl = selective_scan_vjp_loop(**args, dy=dy, discretization=disc)
    for key in g:
        close(g[key], gl[key], rtol=SELF, what=f"scan {disc}: {key} loop twin")


@pytest.mark.parametrize("disc", ["mamba", "zoh"])
@pytest.mark.parametrize("floats", [1, 3 * 2 * 3 * 2, 4 * 2 * 3 * 2])
def test_scan_vjp_blocks_of_steps(monkeypatch, disc, floats):
    """selective_scan_vjp runs in blocks of T steps (_SEL_BLOCK_FLOATS / (batch·d·n)): one step per
    block, blocks of 3 (L = 10: the last block one step) and of 4 equal the loop twin and one block."""
    args = _scan_args(41, 10, 3, 2)  # batch (2,), d = 3, n = 2
    dy = np.random.default_rng(42).normal(size=args["u"].shape)
    one = selective_scan_vjp(**args, dy=dy, discretization=disc)
    monkeypatch.setattr(_vjp, "_SEL_BLOCK_FLOATS", floats)
    g = selective_scan_vjp(**args, dy=dy, discretization=disc)
    gl = selective_scan_vjp_loop(**args, dy=dy, discretization=disc)
    for key in g:
        close(g[key], gl[key], rtol=SELF, what=f"scan {disc} in blocks ({floats}): {key} loop twin")
        close(g[key], one[key], rtol=1e-13, what=f"scan {disc} in blocks ({floats}) vs one block: {key}")


@pytest.mark.parametrize("disc", ["mamba", "zoh"])
def test_scan_vjp_wide_channels_in_blocks_for_any_thread_count(monkeypatch, disc):
    """More than 128 channels: blocks of channels taken in turn by the threads (_vjp._selective_vjp_channels;
    here 128, 128 and 44), dB and dC the blocks' parts added in block order, Δ broadcast over the batch; equal
    to the loop twin, and bitwise the same with 1, 2 or 3 threads."""
    import refimpl._blocking as blocking

    monkeypatch.setattr(blocking, "THREAD_MIN_ELEMS", 0)
    full = _scan_args(51, 5, 300, 2, batch=(2,))
    args = dict(full, delta=full["delta"][0])
    dy = np.random.default_rng(52).normal(size=full["u"].shape)
    runs = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(blocking, "THREADS", threads)
        runs.append(selective_scan_vjp(**args, dy=dy, discretization=disc))
    gl = selective_scan_vjp_loop(**args, dy=dy, discretization=disc)
    for key in gl:
        close(runs[0][key], gl[key], rtol=SELF, what=f"scan {disc} in channel blocks: {key} loop twin")
        assert all(np.array_equal(run[key], runs[0][key]) for run in runs[1:]), key


@pytest.mark.parametrize("disc", ["mamba", "zoh"])
def test_scan_vjp_broadcast_inputs(disc):
    """Δ broadcast over the batch, B and C shared by the batch, scalar D: gradients summed back."""
    full = _scan_args(31, 6, 2, 3, batch=(3,))
    args = dict(full, delta=full["delta"][0], B=full["B"][0], C=full["C"][:1], D=np.float64(0.7))
    dy = np.random.default_rng(32).normal(size=full["u"].shape)
    g = selective_scan_vjp(**args, dy=dy, discretization=disc)
    for key, name in (("ddelta", "delta"), ("dB", "B"), ("dC", "C"), ("dD", "D")):
        assert g[key].shape == np.shape(args[name]), key
    check_full(fwd_scan, args, dy, {k[1:]: v for k, v in g.items()}, f"scan broadcast {disc}", discretization=disc)
    gl = selective_scan_vjp_loop(**args, dy=dy, discretization=disc)
    for key in g:
        close(g[key], gl[key], rtol=SELF, what=f"scan broadcast {disc}: {key} loop twin")


def test_scan_vjp_without_D():
    """D = None: no skip connection; dD is the gradient at D = 0 and du lacks the D dy term."""
    args = _scan_args(41, 7, 2, 2)
    dy = np.random.default_rng(42).normal(size=args["u"].shape)
    g0 = selective_scan_vjp(**dict(args, D=None), dy=dy)
    gz = selective_scan_vjp(**dict(args, D=np.zeros(2)), dy=dy)
    for key in g0:
        close(g0[key], gz[key], rtol=1e-15, what=f"D=None vs D=0: {key}")


@pytest.mark.parametrize("L", [65, 257])
@pytest.mark.parametrize("disc", ["mamba", "zoh"])
def test_scan_vjp_long(L, disc):
    """Longer sequences: the associative forward and reverse scans against the scalar loops and the complex step."""
    args = _scan_args(L, L, 2, 3, batch=(2,))
    dy = np.random.default_rng(L + 1).normal(size=args["u"].shape)
    g = selective_scan_vjp(**args, dy=dy, discretization=disc)
    gl = selective_scan_vjp_loop(**args, dy=dy, discretization=disc)
    for key in g:
        close(g[key], gl[key], rtol=SELF, what=f"scan L={L} {disc}: {key} loop twin")
    check_directions(fwd_scan, args, dy, {k[1:]: v for k, v in g.items()}, f"scan L={L}", discretization=disc)


def test_dphi1_dA_series_and_closed_form():
    """g(x) = (x e^x − e^x + 1)/x²: series below |x| = 0.1, closed form above; continuous, g(0) = 1/2."""
    x = np.array([0.0, -1e-8, 1e-8, -0.0999999, -0.1, 0.0999999, 0.1, -3.0, -40.0])
    g = _vjp._dphi1_dA(x)
    assert g[0] == 0.5
    ld = x.astype(np.longdouble)
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = (ld * np.exp(ld) - np.exp(ld) + 1) / ld**2
    sel = np.abs(x) >= 0.05
    close(g[sel], ref[sel].astype(float), rtol=1e-13, what="g(x) closed form vs long double")
    close(g[1:3], np.array([0.5 - 1e-8 / 3, 0.5 + 1e-8 / 3]), rtol=1e-15, what="g(x) ≈ 1/2 + x/3")


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_bad_input_softmax():
    q, k, v = qkv(1, 4, 5)
    dy = np.zeros((4, 2))
    with pytest.raises(ValueError, match="dy"):
        softmax_attention_vjp(q, k, v, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="dy"):
        softmax_attention_vjp_loop(q, k, v, np.zeros((5, 2)))
    with pytest.raises(TypeError, match="dy"):
        softmax_attention_vjp(q, k, v, dy + 1j)
    with pytest.raises(ValueError, match="dy"):
        softmax_attention_vjp(q, k, v, np.full((4, 2), np.nan))
    with pytest.raises(TypeError, match="mask"):
        softmax_attention_vjp(q, k, v, dy, mask=np.ones((4, 5)))
    for fn in (softmax_attention_vjp, softmax_attention_vjp_loop):  # no key: y = 0, a constant
        assert all(not g.any() for g in fn(q, k, v, np.ones((4, 2)), mask=np.zeros((4, 5), bool)))
    with pytest.raises(TypeError, match="causal"):
        softmax_attention_vjp(q, k, v, dy, causal=1)
    with pytest.raises(ValueError, match="scale"):
        softmax_attention_vjp(q, k, v, dy, scale=-1.0)
    with pytest.raises(ValueError, match="v"):
        softmax_attention_vjp(q, k, v[:3], dy)
    with pytest.raises(ValueError, match="mask"):  # the mask may not add batch axes
        softmax_attention_vjp(q, k, v, dy, mask=np.ones((3, 4, 5), bool))
    with pytest.raises(ValueError, match="dy"):  # batched q: dy needs the batch axis
        softmax_attention_vjp(np.stack([q, q]), k, v, dy)
    for kw, name, err in ((dict(window=0), "window", ValueError), (dict(alibi_slopes=-1.0), "alibi_slopes", ValueError),
                          (dict(causal_alignment="left"), "causal_alignment", ValueError),
                          (dict(causal_alignment=1), "causal_alignment", TypeError), (dict(softcap=0.0), "softcap", ValueError),
                          (dict(grouped_heads=1), "grouped_heads", TypeError), (dict(grouped_heads=True), "grouped_heads", ValueError),
                          (dict(alibi_slopes=np.ones(3)), "alibi_slopes", ValueError),
                          (dict(return_intermediates=1), "return_intermediates", TypeError)):
        for fn in (softmax_attention_vjp, softmax_attention_vjp_loop):
            with pytest.raises(err, match=name):
                fn(q, k, v, dy, **kw)
    qh, kh, vh = qkv(2, 4, 5, batch=(3,))  # 3 query heads cannot share 2 key/value heads
    with pytest.raises(ValueError, match="k"):
        softmax_attention_vjp(qh, kh[:2], vh[:2], np.zeros((3, 4, 2)), grouped_heads=True)
    with pytest.raises(ValueError, match="dy"):  # grouped heads: dy has the H query heads
        softmax_attention_vjp(np.stack([qh, qh]).reshape(6, 4, 3), kh, vh, np.zeros((3, 4, 2)), grouped_heads=True)


def test_bad_input_linear():
    q, k, v = qkv(1, 4, 5)
    with pytest.raises(ValueError, match="dy"):
        linear_attention_vjp(q, k, v, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="k"):
        linear_attention_vjp(q, k, v, np.zeros((4, 2)), causal=True)  # causal needs M = N
    with pytest.raises(TypeError, match="causal"):
        linear_attention_vjp_loop(q, k, v, np.zeros((4, 2)), causal="yes")
    with pytest.raises(TypeError, match="dy"):
        linear_attention_vjp(q, k, v, np.zeros((4, 2)) + 1j)


def test_bad_input_scan():
    args = _scan_args(1, 5, 2, 2)
    dy = np.zeros(args["u"].shape)
    with pytest.raises(ValueError, match="dy"):
        selective_scan_vjp(**args, dy=dy[..., :1])
    with pytest.raises(ValueError, match="dy"):
        selective_scan_vjp_loop(**args, dy=dy[0])
    with pytest.raises(ValueError, match="discretization"):
        selective_scan_vjp(**args, dy=dy, discretization="euler")
    with pytest.raises(ValueError, match="delta"):
        selective_scan_vjp(**dict(args, delta=-args["delta"]), dy=dy)
    with pytest.raises(ValueError, match="A"):
        selective_scan_vjp(**dict(args, A=-args["A"] + 1.0), dy=dy)
    with pytest.raises(ValueError, match="D"):
        selective_scan_vjp(**dict(args, D=np.ones(3)), dy=dy)


# --------------------------------------------------------------------------------------------
# The oracle judges gradients like any output
# --------------------------------------------------------------------------------------------


def _port_softmax_backward(q, k, v, dy, *, mask=None, causal=False, scale=None, window=None, alibi_slopes=None,
                           causal_alignment="top_left", softcap=None, grouped_heads=False, bug=None):
    """A plain NumPy backward pass computing in the precision of its inputs (a user's port), with
    the options of a FlashAttention-2 kernel: window, ALiBi, soft cap, bottom-right causal, GQA."""
    dt = q.dtype
    n, m, d = q.shape[-2], k.shape[-2], q.shape[-1]
    g = q.shape[-3] // k.shape[-3] if grouped_heads else 1
    if g > 1:  # query head h reads key/value head h // g
        k, v = np.repeat(k, g, axis=-3), np.repeat(v, g, axis=-3)
    c = dt.type(1 / np.sqrt(d) if scale is None else scale)
    allowed, dist = allowed_keys(n, m, mask, causal, window, causal_alignment)
    s = c * (q @ np.swapaxes(k, -1, -2))
    t = np.tanh(s / dt.type(softcap)) if softcap is not None else None
    if softcap is not None:
        s = dt.type(softcap) * t
    if alibi_slopes is not None:
        s = s - np.asarray(alibi_slopes, dtype=dt)[..., None, None] * np.abs(dist).astype(dt)
    s = np.where(allowed, s, -np.inf)
    top = s.max(axis=-1, keepdims=True)
    P = np.exp(s - np.where(np.isfinite(top), top, 0))  # a row with no key: P = 0
    P /= np.maximum(P.sum(axis=-1, keepdims=True), np.finfo(dt).tiny)
    dP = dy @ np.swapaxes(v, -1, -2)
    D = 0 if bug == "no_D" else np.sum(dy * (P @ v), axis=-1, keepdims=True)
    dS = P * (dP - D)
    if softcap is not None:
        dS = dS * (1 - t * t)
    dq, dk, dv = c * dS @ k, c * np.swapaxes(dS, -1, -2) @ q, np.swapaxes(P, -1, -2) @ dy
    if g > 1:  # the query heads of a group share k, v: their gradients add up
        dk, dv = (x.reshape(*x.shape[:-3], -1, g, *x.shape[-2:]).sum(axis=-3) for x in (dk, dv))
    if bug == "D_only":  # a port that also hands its preprocessing output D to the oracle
        return {"D": D[..., 0], "dq": dq, "dk": dk, "dv": dv}
    return dq, dk, dv


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_oracle_judges_a_backward_port(dtype):
    from refimpl import oracle

    good = oracle.compare("attention.softmax_attention_vjp", _port_softmax_backward, dtype=dtype)
    assert good.passed, str(good)
    bad = oracle.compare("attention.softmax_attention_vjp", lambda **kw: _port_softmax_backward(**kw, bug="no_D"), dtype=dtype)
    assert not bad.passed


def test_oracle_localizes_a_wrong_D():
    """A port that returns its D (FlashAttention-2's preprocessing output) is judged on it first: a
    preprocessing bug (dy taken from the next row) fails at D, before the gradients."""
    from refimpl import oracle

    good = oracle.compare("attention.softmax_attention_vjp", lambda **kw: _port_softmax_backward(**kw, bug="D_only"))
    assert good.passed, str(good)

    def shifted(**kw):  # D_i = dy_{i+1} · y_i: the preprocessing reads the wrong row
        out = _port_softmax_backward(**{**kw, "dy": np.roll(kw["dy"], -1, axis=-2)}, bug="D_only")
        return {"D": out["D"], **dict(zip(("dq", "dk", "dv"), _port_softmax_backward(**kw)))}

    bad = oracle.compare("attention.softmax_attention_vjp", shifted)
    assert not bad.passed
    failed = [c for c in bad.cases if not c.passed]
    assert len(failed) == 4  # the four committed cases (the two at scale store no intermediates)
    for case in failed:
        first = next(qr for qr in case.quantities if not qr.passed)
        assert (first.name, first.kind) == ("D", "intermediate"), str(case)
        assert all(qr.passed for qr in case.quantities if qr.kind == "output")  # the gradients themselves are right


# --------------------------------------------------------------------------------------------
# Random shapes: vectorized against loop twins
# --------------------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 70), m=st.integers(1, 9), d=st.integers(1, 3), heads=st.integers(1, 2),
       causal=st.booleans(), masked=st.booleans(), seed=st.integers(0, 2**16))
def test_softmax_vjp_random_shapes(n, m, d, heads, causal, masked, seed):
    rng = np.random.default_rng(seed)
    q, k, v = rng.normal(size=(heads, n, d)), rng.normal(size=(m, d)), rng.normal(size=(heads, m, 2))
    mask = None
    if masked:
        mask = rng.random((n, m)) < 0.5
        mask[:, 0] = True
    dy = rng.normal(size=(heads, n, 2))
    g = softmax_attention_vjp(q, k, v, dy, mask=mask, causal=causal)
    # atol: with one allowed key (M = 1, row 0 when causal) dq vanishes exactly (dP − D = 0), leaving round-off
    check_twins(g, softmax_attention_vjp_loop(q, k, v, dy, mask=mask, causal=causal), "softmax random shapes", atol=1e-13)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 140), d=st.integers(1, 3), causal=st.booleans(), seed=st.integers(0, 2**16))
def test_linear_vjp_random_shapes(n, d, causal, seed):
    rng = np.random.default_rng(seed)
    q, k, v, dy = rng.normal(size=(n, d)), rng.normal(size=(n, d)), rng.normal(size=(n, 2)), rng.normal(size=(n, 2))
    g = linear_attention_vjp(q, k, v, dy, causal=causal)
    # atol: dq_i = Σ_j (dy_i·(v_j − y_i)) φ(k_j)/den_i vanishes exactly when every weight sits on one
    # value (N = 1, or row 0 when causal), leaving round-off of the O(1) terms (inputs are O(1) here)
    check_twins(g, linear_attention_vjp_loop(q, k, v, dy, causal=causal), "linear random shapes", atol=1e-13)


# --------------------------------------------------------------------------------------------
# Chapter 16: SSD, gated linear attention, retention, the delta rule
# --------------------------------------------------------------------------------------------
#
# Oracles: complex-capable recurrences written here again (one step at a time, in the dtype of
# the inputs), differentiated by the complex step — all four layers are analytic in all their
# inputs (products, sums and exponentials only; the delta rule's unit-key constraint is checked
# by refimpl's validation, not part of the map) — and central finite differences of refimpl's own
# forwards along directions that keep the inputs valid (keys perturbed tangentially to the sphere).

CSTEP_REC = 1e-12  # complex step vs vjp, norm-wise (full gradients) or relative to |g||e| (directions)
FD_REC = 1e-8  # central finite differences of refimpl's forwards vs vjp, relative to |g||e|

from refimpl import linear_rnn as lr  # noqa: E402


def fwd_gla(q, k, v, log_g, *, scale=None):
    """Eq. (16.2) one step at a time: S_t = S_{t−1} Diag(g_t) + v_t k_tᵀ, o_t = S_t (scale q_t)."""
    c = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    per_channel = np.ndim(log_g) == np.ndim(k)
    batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2], np.shape(log_g)[: -2 if per_channel else -1])
    S = np.zeros(batch + (v.shape[-1], k.shape[-1]), dtype=complex)
    out = []
    for t in range(q.shape[-2]):
        g = np.exp(log_g[..., t, :]) if per_channel else np.exp(log_g[..., t])[..., None]
        S = S * g[..., None, :] + v[..., t, :, None] * k[..., t, None, :]
        out.append(np.einsum("...ij,...j->...i", S, c * q[..., t, :]))
    return np.stack(out, axis=-2)


def fwd_retention(q, k, v, *, gamma, scale=None):
    """Eq. (16.6): S_n = γ_h S_{n−1} + v_n k_nᵀ."""
    return fwd_gla(q, k, v, np.broadcast_to(np.log(gamma)[:, None], q.shape[:-1]), scale=scale)


def fwd_ssd(x, dt, A, B, C, D):
    """Eq. (16.7): h_t = e^{Δ_t A} h_{t−1} + Δ_t x_t B_tᵀ, y_t = h_t C_t + D x_t (head h reads group h // (H/G))."""
    H, G = x.shape[-3], B.shape[-3]
    Bh, Ch = np.repeat(B, H // G, axis=-3), np.repeat(C, H // G, axis=-3)
    h, ys = 0, []
    for t in range(x.shape[-2]):
        d = dt[..., t]
        h = np.exp(d * A)[..., None, None] * h + d[..., None, None] * x[..., t, :, None] * Bh[..., t, None, :]
        ys.append(np.einsum("...pn,...n->...p", h, Ch[..., t, :]))
    y = np.stack(ys, axis=-2)
    return y if D is None else y + D[:, None, None] * x


def fwd_delta(q, k, v, beta, log_g=None, *, scale=None):
    """Eq. (16.9): S_t = g_t S_{t−1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ, o_t = S_t (scale q_t), from S_{−1} = 0."""
    return delta_recurrence(q, k, v, beta, log_g, scale=scale)[0]


def check_full_rec(fwd, args, dy, grads, what, **kw):
    for name, g in grads.items():
        ref = cstep_grad(fwd, args, name, dy, **kw)
        close(g, ref, rtol=CSTEP_REC, what=f"{what}: d{name} vs complex step")


def check_dirs_rec(fwd, args, dy, grads, what, seed=0, **kw):
    rng = np.random.default_rng(seed)
    for name, g in grads.items():
        e = rng.standard_normal(np.shape(args[name]))
        ref = cstep_dir(fwd, args, name, e, dy, **kw)
        err = abs(float(np.sum(g * e)) - ref) / (np.linalg.norm(g) * np.linalg.norm(e))
        record(f"{what}: directional complex step (rel. to |g||e|)", err, CSTEP_REC)
        assert err <= CSTEP_REC, f"{what}: d{name}·e = {np.sum(g * e)!r} vs complex step {ref!r}"


def check_all_twins(g, gl, what):
    assert set(g) == set(gl)
    for key in g:
        close(g[key], gl[key], rtol=SELF, what=f"{what}: {key} loop twin")


def gla_args(seed, L, dk=3, dv=2, batch=(2,), per_channel=True, lo=0.0, hi=1.0):
    rng = np.random.default_rng(seed)
    q, k = rng.normal(size=(2, *batch, L, dk))
    v, dy = rng.normal(size=(2, *batch, L, dv))
    log_g = -rng.uniform(lo, hi, (*batch, L, dk) if per_channel else (*batch, L))
    return {"q": q, "k": k, "v": v, "log_g": log_g}, dy


def ssd_args(seed, L, H=4, G=2, P=3, N=2, batch=(2,), dt_hi=1.0):
    rng = np.random.default_rng(seed)
    A = -rng.uniform(0.1, 2.0, H)
    A[0] = 0.0  # a pure integrator head
    return {"x": rng.normal(size=(*batch, H, L, P)), "dt": rng.uniform(0.05, dt_hi, (*batch, H, L)), "A": A,
            "B": rng.normal(size=(*batch, G, L, N)), "C": rng.normal(size=(*batch, G, L, N)),
            "D": rng.normal(size=H)}, rng.normal(size=(*batch, H, L, P))


def delta_args(seed, L, dk=4, dv=3, batch=(2,), gated=True, beta=(0.1, 1.9)):
    rng = np.random.default_rng(seed)
    q, k = rng.normal(size=(2, *batch, L, dk))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    args = {"q": q, "k": k, "v": rng.normal(size=(*batch, L, dv)), "beta": rng.uniform(*beta, (*batch, L))}
    if gated:
        args["log_g"] = -rng.uniform(0, 1.0, (*batch, L))
    return args, rng.normal(size=(*batch, L, dv))


def test_rec_independent_forwards_agree_with_refimpl():
    a, _ = gla_args(1, 20)
    close(fwd_gla(**a, scale=0.7), lr.gated_linear_attention(**a, scale=0.7), rtol=1e-13, what="fwd_gla")
    a, _ = gla_args(1, 20, per_channel=False)
    close(fwd_gla(**a), lr.gated_linear_attention(**a), rtol=1e-13, what="fwd_gla per head")
    a, _ = ssd_args(2, 20)
    close(fwd_ssd(**a), lr.ssd(**a), rtol=1e-13, what="fwd_ssd")
    a, _ = delta_args(3, 20)
    close(fwd_delta(**a, scale=0.5), lr.delta_rule(**a, scale=0.5), rtol=1e-13, what="fwd_delta")
    q, k, v = np.random.default_rng(4).normal(size=(3, 3, 20, 4))
    gamma = np.array([0.9, 0.5, 0.99])
    close(fwd_retention(q, k, v, gamma=gamma), lr.retention(q, k, v, gamma), rtol=1e-13, what="fwd_retention")


@pytest.mark.parametrize("per_channel", [True, False])
def test_gla_vjp_complex_step(per_channel):
    args, dy = gla_args(11, 9, per_channel=per_channel)
    g = lr.gated_linear_attention_vjp(**args, dy=dy, scale=0.7, chunk_size=4)
    assert set(g) == {"dq", "dk", "dv", "dlog_g"}
    check_full_rec(fwd_gla, args, dy, {key[1:]: val for key, val in g.items()}, f"GLA per_channel={per_channel}", scale=0.7)
    check_all_twins(g, lr.gated_linear_attention_vjp_loop(**args, dy=dy, scale=0.7, chunk_size=4), "GLA")


@pytest.mark.parametrize("L, c", [(63, 64), (64, 64), (65, 64), (130, 64), (65, 7)])
@pytest.mark.parametrize("per_channel", [True, False])
def test_gla_vjp_tile_boundaries(L, c, per_channel):
    args, dy = gla_args(L + c, L, dk=4, dv=3, per_channel=per_channel)
    g = lr.gated_linear_attention_vjp(**args, dy=dy, chunk_size=c)
    check_all_twins(g, lr.gated_linear_attention_vjp_loop(**args, dy=dy, chunk_size=c), f"GLA L={L} c={c}")
    check_dirs_rec(fwd_gla, args, dy, {key[1:]: val for key, val in g.items()}, f"GLA L={L} c={c}")


@pytest.mark.parametrize("per_channel", [True, False])
def test_gla_vjp_gates_near_zero_take_the_exact_path(per_channel):
    """Chunks decaying below e^-30 use the exact segment sums ((c, c, Dk) per channel, (c, c) per head), mixed
    with gates of 1 − 1e-12 (per head: the factored decays e^{cum_t − cum_s} elsewhere)."""
    args, dy = gla_args(5, 48, dk=4, dv=3, per_channel=per_channel)
    rng = np.random.default_rng(6)
    args["log_g"] = np.where(rng.random(args["log_g"].shape) < 0.5, -1e-12, -rng.uniform(30, 80, args["log_g"].shape))
    g = lr.gated_linear_attention_vjp(**args, dy=dy, chunk_size=16)
    assert all(np.all(np.isfinite(val)) for val in g.values())
    check_all_twins(g, lr.gated_linear_attention_vjp_loop(**args, dy=dy, chunk_size=16), f"GLA gates near 0 ({per_channel=})")
    check_dirs_rec(fwd_gla, args, dy, {key[1:]: val for key, val in g.items()}, f"GLA gates near 0 ({per_channel=})")


def test_gla_vjp_chunk_size_does_not_matter():
    args, dy = gla_args(8, 50)
    ref = lr.gated_linear_attention_vjp(**args, dy=dy, chunk_size=50)
    for c in (1, 3, 16, 64):
        g = lr.gated_linear_attention_vjp(**args, dy=dy, chunk_size=c)
        for key in g:
            close(g[key], ref[key], rtol=SELF, what=f"GLA chunk {c}: {key}")


def test_gla_vjp_broadcast_inputs():
    """k, v shared by the heads of q, one gate sequence for all heads: their gradients are summed over the heads."""
    rng = np.random.default_rng(9)
    q = rng.normal(size=(3, 10, 4))
    k, v = rng.normal(size=(1, 10, 4)), rng.normal(size=(10, 2))
    log_g = -rng.uniform(0, 1, (10, 4))[None]
    dy = rng.normal(size=(3, 10, 2))
    args = {"q": q, "k": k, "v": v, "log_g": log_g}
    g = lr.gated_linear_attention_vjp(**args, dy=dy, chunk_size=4)
    for key, val in g.items():
        assert val.shape == np.shape(args[key[1:]]), key
    check_full_rec(fwd_gla, args, dy, {key[1:]: val for key, val in g.items()}, "GLA broadcast")
    check_all_twins(g, lr.gated_linear_attention_vjp_loop(**args, dy=dy, chunk_size=4), "GLA broadcast")


def test_retention_vjp_complex_step_and_twin():
    rng = np.random.default_rng(12)
    q, k, v = rng.normal(size=(3, 2, 3, 9, 4))  # batch 2, H = 3
    dy = rng.normal(size=(2, 3, 9, 4))
    gamma = 1 - 2.0 ** (-5 - np.arange(3))
    g = lr.retention_vjp(q, k, v, gamma, dy, chunk_size=4)
    assert set(g) == {"dq", "dk", "dv"}
    check_full_rec(fwd_retention, {"q": q, "k": k, "v": v}, dy, {key[1:]: val for key, val in g.items()}, "retention",
                   gamma=gamma)
    check_all_twins(g, lr.retention_vjp_loop(q, k, v, gamma, dy, chunk_size=4), "retention")
    # equals GLA's with the constant per-head log-gate log γ_h
    gg = lr.gated_linear_attention_vjp(q, k, v, np.broadcast_to(np.log(gamma)[:, None], (2, 3, 9)), dy, chunk_size=5)
    for key in g:
        close(g[key], gg[key], rtol=SELF, what=f"retention vs GLA: {key}")


def test_ssd_vjp_complex_step():
    args, dy = ssd_args(21, 9)
    g = lr.ssd_vjp(**args, dy=dy, chunk_size=4)
    assert set(g) == {"dx", "ddt", "dA", "dB", "dC", "dD"}
    check_full_rec(fwd_ssd, args, dy, {key[1:]: val for key, val in g.items()}, "SSD")
    check_all_twins(g, lr.ssd_vjp_loop(**args, dy=dy, chunk_size=4), "SSD")


@pytest.mark.parametrize("L, c", [(63, 64), (65, 64), (130, 64), (40, 7)])
def test_ssd_vjp_tile_boundaries(L, c):
    args, dy = ssd_args(L, L, dt_hi=3.0)
    g = lr.ssd_vjp(**args, dy=dy, chunk_size=c)
    check_all_twins(g, lr.ssd_vjp_loop(**args, dy=dy, chunk_size=c), f"SSD L={L} c={c}")
    check_dirs_rec(fwd_ssd, args, dy, {key[1:]: val for key, val in g.items()}, f"SSD L={L} c={c}")


def test_ssd_vjp_broadcast_groups_and_no_D():
    """B, C shared by the batch (and by two heads per group), D = None: dD is the gradient at D = 0."""
    args, dy = ssd_args(31, 11, H=4, G=2, batch=(3,))
    args = dict(args, B=args["B"][:1], C=args["C"][0])
    g = lr.ssd_vjp(**dict(args, D=None), dy=dy, chunk_size=4)
    gz = lr.ssd_vjp(**dict(args, D=np.zeros(4)), dy=dy, chunk_size=4)
    for key in g:
        assert g[key].shape == np.shape(args[key[1:]]), key
        close(g[key], gz[key], rtol=1e-15, what=f"D=None vs D=0: {key}")
    check_full_rec(fwd_ssd, dict(args, D=np.zeros(4)), dy, {key[1:]: val for key, val in gz.items()}, "SSD broadcast")
    check_all_twins(g, lr.ssd_vjp_loop(**dict(args, D=None), dy=dy, chunk_size=4), "SSD broadcast")


def test_ssd_vjp_equals_the_selective_scan_vjp():
    """SSD = the selective scan of chapter 11 with A tied across a head (Eq. (16.7)): so are their gradients."""
    rng = np.random.default_rng(41)
    L, P, N = 30, 3, 4
    x, dy = rng.normal(size=(2, 1, L, P))
    dt = rng.uniform(0.05, 1.0, (1, L))
    B, C = rng.normal(size=(2, 1, L, N))
    a, D = -0.7, np.array([0.3])
    g = lr.ssd_vjp(x, dt, np.array([a]), B, C, D, dy, chunk_size=8)
    s = selective_scan_vjp(x[0], np.repeat(dt[0][:, None], P, axis=1), np.full((P, N), a), B[0], C[0],
                           np.full(P, D[0]), dy[0], discretization="mamba")
    close(g["dx"][0], s["du"], rtol=SELF, what="SSD dx vs selective scan du")
    close(g["ddt"][0], s["ddelta"].sum(axis=1), rtol=SELF, what="SSD ddt vs Σ_p ddelta")
    close(g["dA"][0], s["dA"].sum(), rtol=SELF, what="SSD dA vs Σ dA")
    close(g["dB"][0], s["dB"], rtol=SELF, what="SSD dB vs selective scan dB")
    close(g["dC"][0], s["dC"], rtol=SELF, what="SSD dC vs selective scan dC")
    close(g["dD"][0], s["dD"].sum(), rtol=SELF, what="SSD dD vs Σ dD")


@pytest.mark.parametrize("gated", [True, False])
def test_delta_vjp_complex_step(gated):
    args, dy = delta_args(51, 9, gated=gated)
    g = lr.delta_rule_vjp(**args, dy=dy, scale=0.5, chunk_size=4)
    assert set(g) == {"dq", "dk", "dv", "dbeta"} | ({"dlog_g"} if gated else set())
    check_full_rec(fwd_delta, args, dy, {key[1:]: val for key, val in g.items()}, f"delta gated={gated}", scale=0.5)
    check_all_twins(g, lr.delta_rule_vjp_loop(**args, dy=dy, scale=0.5, chunk_size=4), f"delta gated={gated}")


def test_delta_vjp_ungated_is_gated_with_zero_log_gates():
    """Without log_g (DeltaNet) the core skips every decay (all are e^0 = 1) and the log-gate gradient: the
    same numbers, bitwise, as the gated core given log g = 0, with initial and final states and a partial chunk."""
    rng = np.random.default_rng(62)
    args, dy = delta_args(63, 70, gated=False)
    H, L, d = np.shape(args["q"])[0], np.shape(args["q"])[-2], np.shape(args["q"])[-1]
    dv = np.shape(args["v"])[-1]
    states = dict(initial_state=rng.normal(size=(H, dv, d)), dfinal_state=rng.normal(size=(H, dv, d)))
    plain = lr.delta_rule_vjp(**args, dy=dy, chunk_size=16, **states)
    zero = lr.delta_rule_vjp(**args, dy=dy, chunk_size=16, log_g=np.zeros((H, L)), **states)
    assert set(zero) - set(plain) == {"dlog_g"}
    for key, val in plain.items():
        np.testing.assert_array_equal(val, zero[key])


@pytest.mark.parametrize("L, c", [(63, 64), (65, 64), (130, 64), (65, 5)])
@pytest.mark.parametrize("beta", [(0.01, 0.99), (1.9, 1.999)])
def test_delta_vjp_tile_boundaries(L, c, beta):
    args, dy = delta_args(L + c, L, beta=beta)
    g = lr.delta_rule_vjp(**args, dy=dy, chunk_size=c)
    check_all_twins(g, lr.delta_rule_vjp_loop(**args, dy=dy, chunk_size=c), f"delta L={L} c={c} β={beta}")
    check_dirs_rec(fwd_delta, args, dy, {key[1:]: val for key, val in g.items()}, f"delta L={L} c={c}")


def test_delta_vjp_broadcast_beta_and_shared_keys():
    rng = np.random.default_rng(61)
    q = rng.normal(size=(2, 12, 3))
    k = rng.normal(size=(1, 12, 3))  # keys, values and β shared by the two heads of q
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    args = {"q": q, "k": k, "v": rng.normal(size=(1, 12, 2)), "beta": rng.uniform(0.2, 1.5, (1, 12)),
            "log_g": -rng.uniform(0, 1, (2, 12))}
    dy = rng.normal(size=(2, 12, 2))
    g = lr.delta_rule_vjp(**args, dy=dy, chunk_size=5)
    for key, val in g.items():
        assert val.shape == np.shape(args[key[1:]]), key
    check_full_rec(fwd_delta, args, dy, {key[1:]: val for key, val in g.items()}, "delta broadcast")
    check_all_twins(g, lr.delta_rule_vjp_loop(**args, dy=dy, chunk_size=5), "delta broadcast")


# The log-gate gradients entry by entry. dlog g_r is a sum of terms (dy_t·v_s) q_t ⊙ k_s e^{seg[t, s]} over the pairs
# s < r <= t; with |q|, |k|, |v|, |dy| every term is positive, so the loop twin on those gives the sum of the terms'
# magnitudes, MAG_r: an error of a few ulps times MAG_r is a few ulps times the entry's condition. A difference of
# larger sums (the reverse cumulative sum of q ⊙ dq − k ⊙ dk) has an error of ε times those sums instead: 1e-16
# absolute on entries of 1e-23 with gates e^-50.

DLOGG = 1e-13  # |dlog g − loop twin| <= DLOGG · MAG per entry (the loop twin's own error: ~1e-15 · MAG)
DLOGG_REL = 1e-12  # relative error of the entries whose condition MAG / |dlog g| is at most 10


def gates(pattern, shape, rng):
    """Log-gates: 'e^-50' everywhere; 'e^-1000 among ~1' (a gate e^-1000 at 30 % of the entries, −1e-3 elsewhere);
    'e^-50 among ~1' (every 7th step); 'e^-20 among ~1' (every 23rd step: chunks of 16 that decay by less than e^-30)."""
    near_one = -1e-3 * rng.uniform(0.5, 1.0, shape)
    steps = np.arange(shape[0])[(slice(None),) + (None,) * (len(shape) - 1)]
    if pattern == "e^-50":
        return np.full(shape, -50.0)
    if pattern == "e^-1000 among ~1":
        return np.where(rng.random(shape) < 0.3, -1000.0, near_one)
    if pattern == "e^-50 among ~1":
        return np.where(steps % 7 == 3, -50.0 - rng.uniform(0, 1, shape), near_one)
    return np.where(steps % 23 == 5, -20.0 - rng.uniform(0, 1, shape), near_one)  # 'e^-20 among ~1'


def check_dlogg_entries(g, ref, mag, what):
    """|g − ref| <= DLOGG · MAG in every entry (exact equality where MAG = 0), relative DLOGG_REL where MAG <= 10 |ref|."""
    err = np.abs(g - ref)
    ratio = np.divide(err, mag, out=np.where(err > 0, np.inf, 0.0), where=mag > 0)  # inf: an error where MAG = 0
    i = np.unravel_index(np.argmax(ratio), err.shape)
    record(f"{what}: |error| / Σ|terms| per entry", float(ratio[i]), DLOGG)
    assert np.all(err <= DLOGG * mag), f"{what}: entry {i}: {g[i]!r} vs loop twin {ref[i]!r} (Σ|terms| {mag[i]:.3e})"
    sound = (mag > 0) & (mag <= 10 * np.abs(ref))
    rel = float(np.max(err[sound] / np.abs(ref[sound])))
    record(f"{what}: relative error of well-conditioned entries", rel, DLOGG_REL)
    assert rel <= DLOGG_REL, f"{what}: relative error {rel:.2e}"


@pytest.mark.parametrize("pattern", ["e^-50", "e^-1000 among ~1", "e^-50 among ~1", "e^-20 among ~1"])
@pytest.mark.parametrize("L, c", [(64, 16), (70, 16), (45, 64), (40, 7)])
@pytest.mark.parametrize("per_channel", [True, False])
def test_gla_vjp_dlog_g_entry_by_entry_with_small_gates(per_channel, L, c, pattern):
    """dlog_g of small gates against the loop twin entry by entry, entries down to ~1e-23 included (the
    difference form gave them an absolute error of ~1e-16); exact zeros (the first step, gates e^-1000) exact."""
    rng = np.random.default_rng(L + c)
    dk, dv = 4, 3
    q, k = rng.normal(size=(2, 2, L, dk))
    v, dy = rng.normal(size=(2, 2, L, dv))
    log_g = gates(pattern, (L, dk) if per_channel else (L,), rng)
    log_g = np.stack([log_g, gates(pattern, log_g.shape, rng)])  # two heads
    g = lr.gated_linear_attention_vjp(q, k, v, log_g, dy, scale=1.0, chunk_size=c)["dlog_g"]
    ref = lr.gated_linear_attention_vjp_loop(q, k, v, log_g, dy, scale=1.0)["dlog_g"]
    mag = lr.gated_linear_attention_vjp_loop(abs(q), abs(k), abs(v), log_g, abs(dy), scale=1.0)["dlog_g"]
    check_dlogg_entries(g, ref, mag, f"GLA dlog_g {pattern} ({per_channel=}, L={L}, c={c})")
    if pattern == "e^-1000 among ~1":  # ~e^-1000 underflows: those entries are 0 (below 5e-324), compared exactly
        assert np.count_nonzero(mag == 0) > 0.2 * mag.size
    else:  # the checks above covered entries this small
        assert np.abs(ref[mag > 0]).min() < (1e-7 if pattern == "e^-20 among ~1" else 1e-20)


@pytest.mark.parametrize("dt", [10.0, 20.0, 40.0])
@pytest.mark.parametrize("c", [64, 16, 7])
def test_ssd_vjp_dA_of_fast_decays(dt, c):
    """dA = Σ_t Δ_t ρ_t with ρ_t the log-gate gradient: at Δ A = −10, −20, −40 per step each ρ_t is ~e^{ΔA}, and a
    difference of the chunk's terms gave dA with relative errors 1e-10, 5e-6, 3e3 (one head, L = 64, A = −1)."""
    rng = np.random.default_rng(int(dt) + c)
    L = 64
    x, dy = rng.normal(size=(2, 2, L, 2))
    B, C = rng.normal(size=(2, 1, L, 2))
    A = np.array([-1.0, -0.5])
    dts = np.full((2, L), dt)
    g = lr.ssd_vjp(x, dts, A, B, C, None, dy, chunk_size=c)
    gl = lr.ssd_vjp_loop(x, dts, A, B, C, None, dy, chunk_size=c)
    rel = np.abs(g["dA"] - gl["dA"]) / np.abs(gl["dA"])
    record("SSD dA of fast decays (relative)", float(rel.max()), DLOGG_REL)
    assert np.all(rel <= DLOGG_REL), (g["dA"], gl["dA"])
    close(g["ddt"], gl["ddt"], rtol=SELF, what=f"SSD ddt at Δ = {dt}")


def test_ssd_vjp_dA_in_mamba2_like_settings():
    """Δ = softplus(N(2, 1)), A down to −10 (Mamba-2-like): dA against the loop twin, to a few ulps of Σ Δ_t |ρ_t terms|."""
    rng = np.random.default_rng(13)
    H, L, P, N = 4, 256, 8, 8
    x, dy = rng.normal(size=(2, H, L, P))
    B, C = rng.normal(size=(2, 1, L, N))
    dt = np.log1p(np.exp(rng.normal(2.0, 1.0, (H, L))))
    A = -np.array([1.7, 10.0, 5.8, 1.2])
    g = lr.ssd_vjp(x, dt, A, B, C, None, dy)["dA"]
    gl = lr.ssd_vjp_loop(x, dt, A, B, C, None, dy)["dA"]
    mag = lr.ssd_vjp_loop(abs(x), dt, A, abs(B), abs(C), None, abs(dy))["dA"]  # Σ Δ_t × Σ|terms of ρ_t| (A ≤ 0)
    err = np.abs(g - gl)
    record("SSD dA, Mamba-2-like (rel. to Σ|terms|)", float(np.max(err / mag)), DLOGG)
    assert np.all(err <= DLOGG * mag), (g, gl, mag)
    assert np.all(err <= DLOGG_REL * np.abs(gl)), (g, gl)


def delta_dlogg_magnitude(q, k, v, beta, log_g, dy):
    """``g_t Σ_ij |Λ_t[i, j] (S_{t−1}(I − β_t k_t k_tᵀ))[i, j]|`` per step (scale 1, one sequence): the size of the
    terms of the delta rule's ``dlog g_t = g_t ⟨Λ_t, S_{t−1}(I − β_t k_t k_tᵀ)⟩`` (Eq. (16.20)), the states and
    adjoints from the recurrences written out here again."""
    L, dk = q.shape
    eye = np.eye(dk)
    P = [eye - beta[t] * np.outer(k[t], k[t]) for t in range(L)]
    S = [np.zeros((v.shape[-1], dk))]
    for t in range(L):
        S.append(math.exp(log_g[t]) * S[-1] @ P[t] + beta[t] * np.outer(v[t], k[t]))
    out, lam = np.zeros(L), np.zeros_like(S[0])
    for t in range(L - 1, -1, -1):
        lam = (math.exp(log_g[t + 1]) * lam @ P[t + 1].T if t + 1 < L else lam) + np.outer(dy[t], q[t])
        out[t] = math.exp(log_g[t]) * np.sum(np.abs(lam * (S[t] @ P[t])))
    return out


@pytest.mark.parametrize("c", [64, 16, 5])
def test_delta_vjp_dlog_g_of_gates_near_e_minus_50(c):
    """The delta rule's dlog_g at steps with a gate ~e^-50 (~1e-21 and smaller) against the loop twin, entry by entry
    to a few ulps of the size of its terms: the sum over s < r as an inclusive prefix sum minus its own term gave 0."""
    rng = np.random.default_rng(60 + c)
    L = 65
    q, k, v, dy = rng.normal(size=(4, 2, L, 3))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    beta = rng.uniform(0.1, 1.9, (2, L))
    small = rng.random((2, L)) < 0.3
    log_g = np.where(small, -50.0 - rng.uniform(0, 1, (2, L)), -rng.uniform(0, 0.2, (2, L)))
    g = lr.delta_rule_vjp(q, k, v, beta, dy, log_g=log_g, scale=1.0, chunk_size=c)
    gl = lr.delta_rule_vjp_loop(q, k, v, beta, dy, log_g=log_g, scale=1.0, chunk_size=c)
    mag = np.stack([delta_dlogg_magnitude(q[h], k[h], v[h], beta[h], log_g[h], dy[h]) for h in range(2)])
    tiny = small & (mag > 0)
    assert np.abs(gl["dlog_g"][tiny]).max() < 1e-18 and tiny.sum() > 10
    err = np.abs(g["dlog_g"] - gl["dlog_g"])
    record("delta dlog_g (rel. to the size of its terms)", float(np.max(err[mag > 0] / mag[mag > 0])), DLOGG)
    assert np.all(err <= DLOGG * mag), np.max(err[mag > 0] / mag[mag > 0])
    check_all_twins(g, gl, f"delta with gates e^-50 (c={c})")


def _fd_dir(fn, args, name, e, dy, h=1e-5):
    plus, minus = dict(args), dict(args)
    plus[name], minus[name] = args[name] + h * e, args[name] - h * e
    return float(np.sum(dy * (fn(**plus) - fn(**minus)))) / (2 * h)


def test_rec_vjps_against_finite_differences_of_refimpl():
    """Directional derivatives of refimpl's own forwards by central differences: <dy, J e> = <vjp(dy), e>."""
    rng = np.random.default_rng(71)
    cases = []
    a, dy = gla_args(72, 65, dk=4, dv=3)
    cases.append(("GLA", lr.gated_linear_attention, lr.gated_linear_attention_vjp, a, dy, {}))
    a, dy = ssd_args(73, 65)
    cases.append(("SSD", lr.ssd, lr.ssd_vjp, a, dy, {}))
    a, dy = delta_args(74, 65)
    cases.append(("delta", lr.delta_rule, lr.delta_rule_vjp, a, dy, {}))
    for what, fwd, vjp, a, dy, kw in cases:
        g = vjp(**a, dy=dy)
        for name in a:
            e = rng.standard_normal(np.shape(a[name]))
            if what == "delta" and name == "k":  # stay on the unit sphere to first order: e ⟂ k_t
                e -= np.sum(e * a["k"], axis=-1, keepdims=True) * a["k"]
            if name in ("dt", "beta", "log_g", "A"):  # stay inside the valid region (dt > 0, β ∈ (0, 2), gates ≤ 0)
                e *= 0.01 * np.minimum(np.abs(a[name]), 1.0)
            ref = _fd_dir(fwd, a, name, e, dy)
            err = abs(float(np.sum(g["d" + name] * e)) - ref) / (np.linalg.norm(g["d" + name]) * np.linalg.norm(e))
            record(f"{what}: central finite difference (rel. to |g||e|)", err, FD_REC)
            assert err <= FD_REC, (what, name, err)


def test_bad_input_rec_vjps():
    a, dy = gla_args(1, 6)
    with pytest.raises(ValueError, match="dy"):
        lr.gated_linear_attention_vjp(**a, dy=dy[..., :1])
    with pytest.raises(ValueError, match="log_g"):
        lr.gated_linear_attention_vjp(**dict(a, log_g=-a["log_g"] + 1.0), dy=dy)
    with pytest.raises(ValueError, match="chunk_size"):
        lr.gated_linear_attention_vjp_loop(**a, dy=dy, chunk_size=0)
    a, dy = ssd_args(2, 6)
    with pytest.raises(ValueError, match="dy"):
        lr.ssd_vjp(**a, dy=dy[0])
    with pytest.raises(ValueError, match="dt"):
        lr.ssd_vjp_loop(**dict(a, dt=-a["dt"]), dy=dy)
    with pytest.raises(ValueError, match="B"):
        lr.ssd_vjp(**dict(a, B=a["B"][..., :1, :, :].repeat(3, axis=-3), C=a["C"][..., :1, :, :].repeat(3, axis=-3)), dy=dy)
    a, dy = delta_args(3, 6)
    with pytest.raises(ValueError, match="k"):
        lr.delta_rule_vjp(**dict(a, k=2 * a["k"]), dy=dy)
    with pytest.raises(ValueError, match="beta"):
        lr.delta_rule_vjp_loop(**dict(a, beta=a["beta"] + 2.0), dy=dy)
    with pytest.raises(TypeError, match="dy"):
        lr.delta_rule_vjp(**a, dy=dy + 1j)
    q, k, v = np.ones((3, 2, 4, 3))
    with pytest.raises(ValueError, match="gamma"):
        lr.retention_vjp(q, k, v, np.array([0.5, 1.5]), np.ones((2, 4, 3)))
    with pytest.raises(ValueError, match="dy"):
        lr.retention_vjp_loop(q, k, v, np.array([0.5, 0.9]), np.ones((2, 5, 3)))


def _drop_decay_in_adjoint(**kw):
    """A planted bug: the adjoint of SSD run without the decays (Λ_t = Σ_{s≥t} dy_s C_sᵀ), i.e. A = 0 in the backward pass."""
    return lr.ssd_vjp(**dict(kw, A=np.zeros_like(kw["A"])))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_oracle_judges_rec_gradients(dtype):
    from refimpl import oracle

    for name in ("linear_rnn.ssd_vjp", "linear_rnn.gated_linear_attention_vjp", "linear_rnn.retention_vjp",
                 "linear_rnn.delta_rule_vjp"):
        assert oracle.compare(name, getattr(lr, name.split(".")[1] + "_loop"), dtype=dtype).passed, name
    assert not oracle.compare("linear_rnn.ssd_vjp", _drop_decay_in_adjoint, dtype=dtype).passed


@settings(max_examples=15, deadline=None)
@given(L=st.integers(1, 40), c=st.integers(1, 20), dk=st.integers(1, 3), per_channel=st.booleans(),
       seed=st.integers(0, 2**16))
def test_gla_vjp_random_shapes(L, c, dk, per_channel, seed):
    args, dy = gla_args(seed, L, dk=dk, dv=2, batch=(), per_channel=per_channel, hi=3.0)
    g = lr.gated_linear_attention_vjp(**args, dy=dy, chunk_size=c)
    gl = lr.gated_linear_attention_vjp_loop(**args, dy=dy, chunk_size=c)
    for key in g:  # dlog_g_0 = 0 exactly (S_{−1} = 0): compare norm-wise, with an absolute floor
        assert_close(g[key], gl[key], rtol=SELF, atol=1e-14, what=f"GLA random shapes {key}")


@settings(max_examples=15, deadline=None)
@given(L=st.integers(1, 40), c=st.integers(1, 20), gated=st.booleans(), seed=st.integers(0, 2**16))
def test_delta_vjp_random_shapes(L, c, gated, seed):
    args, dy = delta_args(seed, L, dk=3, dv=2, batch=(), gated=gated)
    g = lr.delta_rule_vjp(**args, dy=dy, chunk_size=c)
    gl = lr.delta_rule_vjp_loop(**args, dy=dy, chunk_size=c)
    for key in g:
        assert_close(g[key], gl[key], rtol=SELF, atol=1e-14, what=f"delta random shapes {key}")


@pytest.mark.parametrize(
    "kw", [dict(), dict(causal=True), dict(window=9, causal=True), dict(softcap=2.0)], ids=["plain", "causal", "window", "softcap"]
)
@pytest.mark.parametrize("batch", [(), (2,), (5,)])
def test_softmax_vjp_parts_and_threads(monkeypatch, kw, batch):
    """Large problems: parts of the query rows with dK, dV of their own, in threads. The result is
    bitwise the same for 1, 2 and 3 threads, and equals the loop twin (several parts when the batch
    has fewer groups than _VJP_PARTS, one part per batch entry otherwise)."""
    import refimpl._blocking as blocking

    rng = np.random.default_rng(17)
    q, k, v = rng.normal(size=(3, *batch, 90, 5))
    dy = rng.normal(size=(*batch, 90, 5))
    monkeypatch.setattr(_vjp, "_ATT_BLOCK", 8)  # 12 blocks
    monkeypatch.setattr(_vjp, "_VJP_THREADED", 1)
    monkeypatch.setattr("refimpl.attention.per_block", lambda floats, minimum=1: max(minimum, 8 * 90 // max(1, floats)))
    got = {}
    for threads in (1, 2, 3):
        monkeypatch.setattr(blocking, "THREADS", threads)
        got[threads] = softmax_attention_vjp(q, k, v, dy, **kw)
    for threads in (2, 3):
        assert all(np.array_equal(a, b) for a, b in zip(got[1], got[threads])), (threads, kw, batch)
    check_twins(got[2], softmax_attention_vjp_loop(q, k, v, dy, **kw), f"softmax vjp in parts {kw} batch {batch}")
    monkeypatch.setattr(_vjp, "_VJP_PARTS", 1)  # one part: the sums of dK, dV in another order, the same to rounding
    one = softmax_attention_vjp(q, k, v, dy, **kw)
    for a, b in zip(got[1], one):
        close(a, b, rtol=1e-13, what=f"parts vs one part {kw} batch {batch}")


def test_chunked_recurrence_vjps_split_heads_over_threads_bitwise(monkeypatch):
    """The backward passes of SSD, GLA and the delta rule run their heads in threads
    (_vjp._over_heads): bitwise the same gradients with 1, 2 and 3 threads."""
    import refimpl._blocking as blocking
    from refimpl._vjp import delta_rule_vjp, gated_linear_attention_vjp, ssd_vjp

    rng = np.random.default_rng(23)
    H, L, d = 3, 200, 40  # dy has H·L·d = 24000 entries: raise the work so that threads are used
    monkeypatch.setattr(blocking, "THREAD_MIN_ELEMS", 1000)
    q, k, v, dy = rng.normal(size=(4, H, L, d))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    log_g = np.log(rng.uniform(0.7, 1.0, (H, L, d)))
    beta = rng.uniform(0.1, 0.9, (H, L))
    dt, A, D = rng.uniform(0.01, 0.5, (H, L)), -np.arange(1.0, H + 1), np.ones(H)
    B, C = rng.normal(size=(2, 1, L, d))
    calls = {
        "gla": lambda: gated_linear_attention_vjp(q, k, v, log_g, dy, chunk_size=16),
        "delta": lambda: delta_rule_vjp(q, k, v, beta, dy, log_g=log_g[..., 0], chunk_size=16),
        "ssd": lambda: ssd_vjp(q, dt, A, B, C, D, dy, chunk_size=16),
    }
    for name, call in calls.items():
        got = {}
        for threads in (1, 2, 3):
            monkeypatch.setattr(blocking, "THREADS", threads)
            got[threads] = call()
        for threads in (2, 3):
            for key in got[1]:
                assert np.array_equal(got[1][key], got[threads][key]), (name, key, threads)


@pytest.mark.parametrize("batch", [(), (2,)])
def test_linear_attention_vjp_groups_of_chunks_in_threads_bitwise(monkeypatch, batch):
    """The chunked prefix sums of linear_attention_vjp run groups of chunks in threads taken in turn
    (_blocking.in_blocks): bitwise the same gradients with 1, 2 and 3 threads."""
    import refimpl._blocking as blocking
    from refimpl._vjp import linear_attention_vjp, linear_attention_vjp_loop

    rng = np.random.default_rng(24)
    q, k, v, dy = rng.normal(size=(4, *batch, 1100, 5))  # 18 chunks of 64 (the last one short): 3 groups
    monkeypatch.setattr(blocking, "THREAD_MIN_ELEMS", 1000)
    got = {}
    for threads in (1, 2, 3):
        monkeypatch.setattr(blocking, "THREADS", threads)
        got[threads] = linear_attention_vjp(q, k, v, dy, causal=True)
    for threads in (2, 3):
        assert all(np.array_equal(a, b) for a, b in zip(got[1], got[threads])), threads
    small = tuple(x[..., :150, :] for x in (q, k, v, dy))  # and the loop twin, on a shorter sequence
    for a, b in zip(linear_attention_vjp(*small, causal=True), linear_attention_vjp_loop(*small, causal=True)):
        close(a, b, rtol=1e-12, what="linear attention vjp in threads vs loop twin")


@pytest.mark.parametrize("form", ["gla-channel", "gla-head", "delta", "ssd", "retention"])
def test_empty_sequences_give_empty_gradients(form):
    """L = 0: the forward passes return empty outputs, and so must their backward passes (they
    raised 'range() arg 3 must not be zero'); the loop twins agree on every shape."""
    from refimpl import linear_rnn as lr

    z = np.zeros
    fn, loop, args = {
        "gla-channel": (lr.gated_linear_attention_vjp, lr.gated_linear_attention_vjp_loop,
                        (z((0, 4)), z((0, 4)), z((0, 3)), z((0, 4)), z((0, 3)))),
        "gla-head": (lr.gated_linear_attention_vjp, lr.gated_linear_attention_vjp_loop,
                     (z((0, 4)), z((0, 4)), z((0, 3)), z((0,)), z((0, 3)))),
        "delta": (lr.delta_rule_vjp, lr.delta_rule_vjp_loop, (z((0, 4)), z((0, 4)), z((0, 3)), z(0), z((0, 3)))),
        "ssd": (lr.ssd_vjp, lr.ssd_vjp_loop,
                (z((2, 0, 3)), np.ones((2, 0)), -np.ones(2), z((1, 0, 4)), z((1, 0, 4)), np.ones(2), z((2, 0, 3)))),
        "retention": (lr.retention_vjp, lr.retention_vjp_loop,
                      (z((2, 0, 4)), z((2, 0, 4)), z((2, 0, 3)), np.array([0.9, 0.8]), z((2, 0, 3)))),
    }[form]
    got, want = fn(*args), loop(*args)
    assert got.keys() == want.keys()
    for name in got:
        assert np.shape(got[name]) == np.shape(want[name]), name
        assert np.array_equal(got[name], want[name]), name  # zeros (dA, dD of SSD: sums over no step)


def test_the_vjp_forms_name_a_ragged_argument_themselves():
    """Each vector–Jacobian product takes the shapes of its arguments as given (the gradients are reduced to
    them) through the package's converter, so a ragged nested list is named by the function itself — run
    here without the overflow guard it wears (``__wrapped__``), whose net for NumPy's bare message it no
    longer needs."""
    rng = np.random.default_rng(0)
    rag = [[1.0, 2.0], [3.0]]
    q, k, v = rng.normal(size=(3, 2, 5, 3))
    k = k / np.linalg.norm(k, axis=-1, keepdims=True)
    u, delta = rng.normal(size=(4, 5)), np.full((4, 5), 0.1)
    calls = {
        "q": lambda: _vjp.softmax_attention_vjp.__wrapped__(rag, k, v, v),
        "delta": lambda: _vjp.selective_scan_vjp.__wrapped__(u, rag, -np.ones((4, 2)), np.ones((5, 2)),
                                                             np.ones((5, 2)), None, u),
        "v": lambda: _vjp.gated_linear_attention_vjp.__wrapped__(q, k, rag, -np.ones((2, 5)), v),
        "dt": lambda: _vjp.ssd_vjp.__wrapped__(v, rag, -np.ones(2), np.ones((1, 5, 2)), np.ones((1, 5, 2)), None, v),
        "beta": lambda: _vjp.delta_rule_vjp.__wrapped__(q, k, v, rag, v),
        "initial_state": lambda: _vjp.delta_rule_vjp.__wrapped__(q, k, v, np.full((2, 5), 0.5), v, initial_state=rag),
    }
    for name, call in calls.items():
        with pytest.raises(TypeError, match=f"^{name}: could not convert to an array"):
            call()


def test_the_attention_backward_twins_refuse_an_overflowed_logit_alike():
    """A row where one allowed logit overflows float64 (to −∞) and the others are finite: the vectorized backward
    pass refused it and its loop twin silently dropped that key; both refuse it now, naming q, k and scale."""
    rng = np.random.default_rng(1)
    q = np.full((4, 3), 1e160)
    k = np.abs(rng.normal(size=(5, 3)))
    k[0] = -1e160  # q·k_0 ≈ −3e320: −∞ in float64; the other logits ≈ 1e160, finite
    v, dy = rng.normal(size=(5, 2)), np.ones((4, 2))
    for fn in (softmax_attention_vjp, softmax_attention_vjp_loop):
        with pytest.raises(ValueError, match="^q, k, scale: a logit"):
            fn(q, k, v, dy)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", ["logit 1e300", "q·k overflows", "scale·q overflows"])
def test_the_attention_backward_twins_agree_on_which_extreme_logits_they_form(case, causal):
    """q = 1e300, k = 1e10, scale = 1e-10: the logit (1e300) is representable and both twins answer, alike (the loop
    formed c·(q·k), whose q·k overflows, and refused it). q = 2^1020, k = 2^-1021, scale = 2^5 (scale·q overflows,
    q·k does not; an independent reviewer's q = 1e300, k = 1e-300, scale = 1e10): the vectorized form formed
    scale·q first and refused while the loop answered; both answer now. In the last two cases (and in q = k = 2^520,
    scale = 2^-1040, where q·k overflows) powers of two make every logit and weight those of a moderate problem (scale
    2^(eq + ek + es)), so each gradient is that problem's rescaled exactly: dq by 2^-eq, dk by 2^-ek, dv not."""
    rng = np.random.default_rng(3)
    base_q, base_k = rng.uniform(0.5, 1.0, size=(2, 3, 2))
    v, dy = rng.normal(size=(3, 2)), rng.normal(size=(3, 2))
    eq, ek, es = {"logit 1e300": (996, 33, -33), "q·k overflows": (520, 520, -1040),
                  "scale·q overflows": (1020, -1021, 5)}[case]  # q, k, scale: 2^eq base_q, 2^ek base_k, 2^es
    q, k, scale = 2.0**eq * base_q, 2.0**ek * base_k, 2.0**es
    with np.errstate(over="ignore"):
        assert not np.all(np.isfinite(scale * q if case == "scale·q overflows" else q @ k.T))
    a = softmax_attention_vjp(q, k, v, dy, scale=scale, causal=causal)
    b = softmax_attention_vjp_loop(q, k, v, dy, scale=scale, causal=causal)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=0)
    if case == "logit 1e300":
        return  # one-hot weights: no moderate problem to compare with
    moderate = softmax_attention_vjp(base_q, base_k, v, dy, scale=2.0 ** (eq + ek + es), causal=causal)
    for x, y, e in zip(a, moderate, (-eq, -ek, 0)):
        assert np.abs(y).max() > 1e-3  # gradients that are not all 0
        np.testing.assert_allclose(x, 2.0**e * y, rtol=1e-12, atol=0)
