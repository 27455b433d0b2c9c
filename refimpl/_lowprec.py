r"""Plain low-precision references: refimpl's straightforward algorithms run the way kernels compute.

The low-precision verdict of :func:`refimpl.oracle.compare` (Eq. (15.3) of the book,
:func:`refimpl._testing.low_precision_verdict`) holds a kernel's error against the float64 oracle
to twice the error of a *plain* implementation run in the same precision. For the functions
registered in :data:`PLAIN` that plain implementation is written here, in the arithmetic model of
:mod:`refimpl._precision`:

* inputs on the tier's grid (the oracle passes them rounded);
* matrix products with inputs rounded to the tier and float32 accumulation
  (:func:`refimpl._precision.matmul`), results stored in the tier;
* element-wise ``exp``, ``expm1``, divisions and reductions (softmax denominators, prefix sums,
  recurrence states) in float32 — float32 is the accumulation type of every tier below float64;
* the outputs (and the intermediates the oracle compares) stored in the tier.

The algorithms are the straightforward ones (the loop twins' order of operations), so their
round-off is what a correct, unsophisticated kernel shows — it grows with the sequence length
exactly as the kernel's does, which a fixed floor cannot model. Each plain function takes the
case's keyword arguments (already rounded to the tier) and ``tier``, and returns
``{quantity: ndarray}`` for the quantities it models (outputs, and some intermediates);
quantities it does not return fall back to the rounded-input model of the oracle.

Glossary: ``f32`` the accumulation dtype (float32); ``store`` rounding to the tier's storage
format; ``phi_q``, ``phi_k`` the linear-attention features φ(q), φ(k) (Eq. (12.2)); ``Ab``, ``Bu``
the discretized Ā_t and B̄_t u_t of the selective scan (Eqs. (11.15)–(11.16)).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.signal

from ._precision import matmul, store, tier_name

__all__ = ["PLAIN", "softmax_attention", "linear_attention", "selective_scan", "sos_filter"]

f32 = np.float32


def _f32(x):
    return np.asarray(x).astype(f32)


def softmax_attention(q, k, v, mask=None, causal=False, scale=None, *, tier):
    """Eqs. (4.1)–(4.3) as FlashAttention's low-precision reference: S = scale·QKᵀ, P = softmax(S), y = P V.

    S is accumulated in float32 and stored in the tier; the softmax runs in float32 on the stored
    scores (max-subtracted) and P is stored; ``P @ V`` is accumulated in float32 and stored.
    Returns ``{"A": P, "y": y}``.
    """
    tier = tier_name(tier)
    q, k, v = _f32(q), _f32(k), _f32(v)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    s = matmul(q, np.swapaxes(k, -1, -2), tier)
    s *= f32(scale)
    s = store(s, tier).astype(f32)
    n, m = s.shape[-2:]
    allowed = np.ones((n, m), dtype=bool)
    if causal:
        allowed = np.tril(allowed)
    if mask is not None:
        allowed = allowed & np.asarray(mask, dtype=bool)
    s = np.where(allowed, s, f32(-np.inf))
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True, dtype=f32)
    p = store(s, tier)
    y = store(matmul(p, v, tier), tier)
    return {"A": p, "y": y}


def _elu1(x):
    """φ(x) = elu(x) + 1 in float32 (Eq. (12.2))."""
    x = _f32(x)
    return np.where(x > 0, x + f32(1), np.exp(np.minimum(x, f32(0))))


def linear_attention(q, k, v, causal=False, feature_map="elu+1", *, tier, block=256):
    r"""Eqs. (12.2)–(12.3): φ stored in the tier, the state Σ φ(k_j)[v_j, 1]ᵀ accumulated in float32.

    Causal: the prefix sums ``S_i = S_{i−1} + φ(k_i)[v_i, 1]ᵀ`` one token after the other
    (sequential float32 additions, the RNN of Eq. (12.3)), then ``φ(q_i)ᵀ S_i`` as a product
    whose inputs are rounded to the tier, numerator over normalizer in float32, stored.
    """
    if not (isinstance(feature_map, str) and feature_map == "elu+1"):
        raise NotImplementedError("plain low-precision linear attention models only feature_map='elu+1'")
    tier = tier_name(tier)
    phi_q, phi_k = (store(_elu1(x), tier).astype(f32) for x in (q, k))
    v = _f32(v)
    va = np.concatenate([v, np.ones(v.shape[:-1] + (1,), dtype=f32)], axis=-1)
    if not causal:
        state = np.matmul(np.swapaxes(phi_k, -1, -2), va)  # float32 reduction over the keys
        out = matmul(phi_q, state, tier)
    else:
        batch = np.broadcast_shapes(phi_q.shape[:-2], phi_k.shape[:-2], va.shape[:-2])
        phi_q, phi_k, va = (np.broadcast_to(a, batch + a.shape[-2:]) for a in (phi_q, phi_k, va))
        n, c, w = phi_q.shape[-2], phi_q.shape[-1], va.shape[-1]
        state = np.zeros(batch + (c, w), dtype=f32)
        out = np.empty(batch + (n, w), dtype=f32)
        for start in range(0, n, block):
            sl = slice(start, min(start + block, n))
            outer = phi_k[..., sl, :, None] * va[..., sl, None, :]  # φ(k_j)[v_j, 1]ᵀ, exact products in float32 for 16-bit tiers
            outer[..., 0, :, :] += state
            np.cumsum(outer, axis=-3, dtype=f32, out=outer)  # S_i, sequential float32 sums
            state = outer[..., -1, :, :].copy()
            out[..., sl, :] = matmul(phi_q[..., sl, None, :], outer, tier)[..., 0, :]
    y = out[..., :-1] / out[..., -1:]
    return {"y": store(y, tier)}


def selective_scan(u, delta, A, B, C, D=None, discretization="mamba", *, tier):
    r"""Eqs. (11.14)–(11.16) as ``selective_scan_ref`` runs on low-precision inputs: all in float32.

    ``Ā_t = exp(Δ_t A)``; ``B̄_t u_t = Δ_t B_t u_t`` ("mamba") or ``(e^{Δ_t A} − 1)/A · B_t u_t``
    ("zoh", with the series ``Δ(1 + w/2 + w²/6 + w³/24)``, w = Δ A, for |w| < 10⁻², as
    :func:`refimpl.lyapunov.phi1`); ``h_t = Ā_t h_{t−1} + B̄_t u_t`` with the state in float32, one
    time step after the other; ``y_t = Σ_n C_{t,n} h_{t,n} + D u_t`` summed in float32; y and
    the last state stored in the tier.
    """
    tier = tier_name(tier)
    u, delta, A, B, C = (_f32(x) for x in (u, delta, A, B, C))
    batch = np.broadcast_shapes(u.shape[:-2], delta.shape[:-2], B.shape[:-2], C.shape[:-2])
    L = u.shape[-2]
    h = np.zeros(batch + A.shape, dtype=f32)
    y = np.empty(batch + u.shape[-2:], dtype=f32)
    zero = A == 0
    A_safe = np.where(zero, f32(1), A)
    for t in range(L):
        dt, ut = delta[..., t, :, None], u[..., t, :, None]
        w = dt * A  # Δ_t A, (..., d, n)
        Ab = np.exp(w)
        if discretization == "mamba":
            bbar = dt * B[..., t, None, :]
        else:
            series = dt * (f32(1) + w * (f32(0.5) + w * (f32(1 / 6) + w * f32(1 / 24))))
            phi = np.where(np.abs(w) < f32(1e-2), series, np.expm1(w) / A_safe)
            bbar = phi * B[..., t, None, :]
        h = Ab * h + bbar * ut
        y[..., t, :] = np.sum(h * C[..., t, None, :], axis=-1, dtype=f32)
    if D is not None:
        y = y + _f32(D) * u
    return {"y": store(y, tier), "h_last": store(h, tier)}


def sos_filter(sos, x, form="tdf2", *, tier):
    r"""Eq. (13.8): the cascade of biquads in float32, each section's output stored in the tier.

    Each section ``[b0, b1, b2, 1, a1, a2]`` (normalized by a0 in float32) runs its difference
    equation — transposed direct form II (Eq. (13.5)) with float32 states, or direct form I
    (Eq. (13.4)) with the delayed inputs and outputs as stored — sample after sample. Returns the
    output and the cascade after each section (``section<s>``), as the oracle's intermediates.
    """
    tier = tier_name(tier)
    sos = _f32(sos)
    x = _f32(x)
    axis = 0 if x.ndim == 1 else -2
    res = {}
    for s in range(sos.shape[0]):
        b, a = sos[s, :3] / sos[s, 3], sos[s, 3:] / sos[s, 3]
        if form == "tdf2":
            y = scipy.signal.lfilter(b, a, x, axis=axis).astype(f32)  # float32 transposed direct form II
        else:
            xs = np.moveaxis(x, axis, 0)
            ys = np.empty_like(xs)
            x1 = x2 = y1 = y2 = np.zeros(xs.shape[1:], dtype=f32)
            for n in range(xs.shape[0]):
                yn = b[0] * xs[n] + b[1] * x1 + b[2] * x2 - a[1] * y1 - a[2] * y2
                yn = store(yn, tier).astype(f32)
                x2, x1, y2, y1 = x1, xs[n], y1, yn
                ys[n] = yn
            y = np.moveaxis(ys, 0, axis)
        x = store(y, tier).astype(f32)
        res[f"section{s}" if s < sos.shape[0] - 1 else "y"] = store(y, tier)
    return res


#: ``{registered function name: plain(args, tier) -> {quantity: ndarray}}``
PLAIN = {
    "attention.softmax_attention": lambda args, tier: softmax_attention(
        args["q"], args["k"], args["v"], args.get("mask"), args.get("causal", False), args.get("scale"), tier=tier),
    "random_features.linear_attention": lambda args, tier: linear_attention(
        args["q"], args["k"], args["v"], args.get("causal", False), args.get("feature_map", "elu+1"), tier=tier),
    "ssm.selective_scan": lambda args, tier: selective_scan(
        args["u"], args["delta"], args["A"], args["B"], args["C"], args.get("D"), args.get("discretization", "mamba"),
        tier=tier),
    "iir.sos_filter": lambda args, tier: sos_filter(args["sos"], args["x"], args.get("form", "tdf2"), tier=tier),
}
