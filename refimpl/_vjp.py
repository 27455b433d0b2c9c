r"""Vector–Jacobian products (the backward pass) of softmax attention, linear attention and the selective scan.

The public names are re-exported by the modules of the forward functions:
:func:`refimpl.attention.softmax_attention_vjp`, :func:`refimpl.random_features.linear_attention_vjp`
and :func:`refimpl.ssm.selective_scan_vjp` (each with a ``_loop`` twin of the same signature).

A vector–Jacobian product of ``y = f(x)`` takes the cotangent ``dy = ∂ℓ/∂y`` of a scalar loss ℓ
and returns ``dx = (∂y/∂x)^T dy = ∂ℓ/∂x``: exactly what a kernel's backward pass computes. Every
gradient has the shape of its input; where an input was broadcast (batch axes of q, k, v; Δ
broadcast to u; batch axes of B, C) its gradient is summed over the broadcast axes.

Glossary (code name → symbol)
-----------------------------
``dy``       dO (FlashAttention) or ∂ℓ/∂y: the cotangent of the output, shape of the output.
``P``        the attention weights (the book's A, Eq. (4.2)), ``S`` the scaled logits.
``Drow``     D_i = Σ_j dO_ij O_ij = rowsum(dO ∘ O) (Dao et al. 2022, Appendix B.2 and Alg. 4).
``dS``       ∂ℓ/∂S = P ∘ (dP − D) (Dao et al. 2022, Appendix B.2).
``G``        [dnum, dden]: the cotangents of the numerator and normalizer of Eq. (12.2).
``lam``      λ_t = ∂ℓ/∂h_t, the adjoint state of the selective scan (reverse-time scan).

References
----------
.. [1] T. Dao, D. Y. Fu, S. Ermon, A. Rudra, C. Ré, "FlashAttention: fast and memory-efficient
       exact attention with IO-awareness", NeurIPS 2022, Appendix B.2 (the backward pass) and Alg. 4.
.. [2] A. Katharopoulos, A. Vyas, N. Pappas, F. Fleuret, "Transformers are RNNs", ICML 2020,
       §3.3.1 (the gradients of causal linear attention as cumulative sums).
.. [3] A. Gu, T. Dao, "Mamba: linear-time sequence modeling with selective state spaces",
       COLM 2024, §3.3 (the backward pass recomputes the states) and Alg. 2.
.. [4] L. S. Pontryagin et al., "The mathematical theory of optimal processes", 1962 (the adjoint
       equation); A. Griewank, A. Walther, "Evaluating derivatives", SIAM 2008, §3 (reverse mode).
"""

from __future__ import annotations

import math

import numpy as np

from ._scan import linear_scan
from ._validate import as_real_array, check_option, guard_overflow

# Query rows per block of softmax_attention_vjp (FlashAttention's B_r): temporaries are
# (..., 64, M) whatever N.
_ATT_BLOCK = 64
# Chunk length of the chunked prefix sums of linear_attention_vjp.
_LIN_CHUNK = 64


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def _reduce_to(g: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum ``g`` over the axes along which an input of ``shape`` was broadcast (the adjoint of broadcasting)."""
    extra = g.ndim - len(shape)
    if extra > 0:
        g = g.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, (s, t) in enumerate(zip(shape, g.shape)) if s == 1 and t != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return np.ascontiguousarray(g.reshape(shape))


def _check_dy(dy, shape: tuple, what: str, source: str) -> np.ndarray:
    # ``source`` names the arguments that set the expected shape: when one of them has the wrong
    # shape, the mismatch surfaces here, so the message must point at them as well as at dy
    dy = as_real_array(dy, "dy")
    if dy.shape != tuple(shape):
        raise ValueError(
            f"dy: expected the shape of the output {what} = {tuple(shape)} ({source}), got shape {dy.shape}"
        )
    return dy


# ---------------------------------------------------------------------------------------------
# Softmax attention
# ---------------------------------------------------------------------------------------------


def _softmax_setup(q, k, v, dy, mask, causal, scale):
    from .attention import _check_mask, _check_qkv, _scale

    q, k, v, batch = _check_qkv(q, k, v)
    n, m = q.shape[-2], k.shape[-2]
    mask = _check_mask(mask, causal, batch, n, m)
    if mask is not None:
        batch = np.broadcast_shapes(batch, mask.shape[:-2])
    c = _scale(scale, q.shape[-1])
    dy = _check_dy(dy, (*batch, n, v.shape[-1]), "(..., N, dv)",
                   "batch shape from q, k, v and mask, N from q, dv from v")
    return q, k, v, dy, mask, bool(causal), c, batch


@guard_overflow()
def softmax_attention_vjp(q, k, v, dy, *, mask=None, causal=False, scale=None):
    r"""Backward pass of :func:`refimpl.attention.softmax_attention`: ``(dq, dk, dv)`` for the cotangent ``dy``.

    The vector–Jacobian product of Eq. (4.1) of the book, in the form of FlashAttention's
    backward pass (Dao et al. 2022, Appendix B.2 and Alg. 4).

    Parameters
    ----------
    q : array_like, shape (..., N, d)
    k : array_like, shape (..., M, d)
    v : array_like, shape (..., M, dv)
    dy : array_like, shape (..., N, dv)
        The cotangent ∂ℓ/∂y (FlashAttention's dO), with the shape of the output ``y`` of
        ``softmax_attention(q, k, v, ...)`` (the broadcast batch axes of q, k, v).
    mask, causal, scale
        As in :func:`refimpl.attention.softmax_attention` (mask: True = may attend; causal:
        top-left aligned; scale default ``1/sqrt(d)``). ``scale`` is a constant, not differentiated.

    Returns
    -------
    dq : ndarray, shape of q
    dk : ndarray, shape of k
    dv : ndarray, shape of v
        Gradients summed over the axes along which the input was broadcast.

    Notes
    -----
    Forward: ``S = c Q K^T`` (c the scale, forbidden logits −∞), ``P = softmax_row(S)``,
    ``O = P V``. Reverse mode, one factor at a time:

    * ``O = P V`` gives ``dV = P^T dO`` and ``dP = dO V^T``.
    * The softmax of row i has the Jacobian ``∂P_ij/∂S_il = P_ij (δ_jl − P_il)``, so
      ``dS_ij = P_ij (dP_ij − Σ_l P_il dP_il)`` (the naive form, :func:`softmax_attention_vjp_loop`).
    * Since ``Σ_l P_il dP_il = Σ_l P_il (dO_i · v_l) = dO_i · O_i``, the row constant is
      ``D_i = rowsum(dO ∘ O)`` — an (N,) vector computed from the output, without the N×M
      product ``P ∘ dP`` (Dao et al. 2022, App. B.2): ``dS = P ∘ (dP − D)``.
    * ``S = c Q K^T`` gives ``dQ = c dS K`` and ``dK = c dS^T Q``.

    Conditioning: when a row's weights are nearly one-hot (large logits), ``D_i ≈ dP_ij`` for the
    winning key and ``dP_ij − D_i`` cancels, so ``dq`` and ``dk`` carry an absolute error of order
    ``ε · scale · |dO| |V| |K|`` rather than a small relative one; the naive form cancels alike.

    Masked entries have ``P_ij = 0`` hence ``dS_ij = 0``: they receive no gradient. The vectorized
    algorithm recomputes ``P`` block by block of 64 query rows (FlashAttention's B_r), with the same
    row-max-shifted exponentials as the forward pass, and accumulates ``dK`` and ``dV`` over the
    blocks: temporaries O(64·M) per batch element, never an (N, M) or (N, M, d) array.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v, dy = rng.normal(size=(4, 5, 3))
    >>> dq, dk, dv = softmax_attention_vjp(q, k, v, dy, causal=True)
    >>> all(np.allclose(a, b) for a, b in zip((dq, dk, dv), softmax_attention_vjp_loop(q, k, v, dy, causal=True)))
    True
    """
    from .attention import _exp_shifted_inplace, _rows_forbidden

    q, k, v, dy, mask, causal, c, batch = _softmax_setup(q, k, v, dy, mask, causal, scale)
    n, m = q.shape[-2], k.shape[-2]
    qs = q * c  # scale q (N·d products): S = (c Q) K^T
    kT, vT = np.swapaxes(k, -1, -2), np.swapaxes(v, -1, -2)
    dq = np.empty((*batch, n, q.shape[-1]))
    dk = np.zeros((*batch, m, k.shape[-1]))
    dv = np.zeros((*batch, m, v.shape[-1]))
    for start in range(0, n, _ATT_BLOCK):
        rows = slice(start, min(n, start + _ATT_BLOCK))
        forbidden = _rows_forbidden(mask, causal, rows, n, m)  # (..., b, M) or None
        P = qs[..., rows, :] @ kT  # the block of logits S
        if P.shape[:-2] != batch:  # q is broadcast over batch axes of k or v: one block per batch element
            P = np.broadcast_to(P, (*batch, *P.shape[-2:])).copy()
        P /= _exp_shifted_inplace(P, forbidden)  # P = softmax(S) over the allowed keys (recomputed)
        dO = dy[..., rows, :]
        Drow = np.sum(dO * (P @ v), axis=-1, keepdims=True)  # D_i = rowsum(dO ∘ O), O_i = Σ_j P_ij v_j
        dv += np.swapaxes(P, -1, -2) @ dO  # dV = P^T dO
        dS = dO @ vT  # dP = dO V^T
        dS -= Drow
        dS *= P  # dS = P ∘ (dP − D)
        dq[..., rows, :] = (dS @ k) * c  # dQ = c dS K
        dk += np.swapaxes(dS, -1, -2) @ qs[..., rows, :]  # dK = c dS^T Q
    return _reduce_to(dq, q.shape), _reduce_to(dk, k.shape), _reduce_to(dv, v.shape)


@guard_overflow()
def softmax_attention_vjp_loop(q, k, v, dy, *, mask=None, causal=False, scale=None):
    """Loop twin of :func:`softmax_attention_vjp`: one query row at a time, the naive softmax Jacobian.

    ``dS_ij = Σ_l ∂P_il/∂S_ij dP_il = P_ij (dP_ij − Σ_l P_il dP_il)`` with the row sum formed
    from ``P`` and ``dP`` (not FlashAttention's ``D_i = dO_i · O_i``), in Python floats.

    Examples
    --------
    >>> q = k = np.eye(2)
    >>> v, dy = np.array([[1.0], [0.0]]), np.ones((2, 1))
    >>> dq, dk, dv = softmax_attention_vjp_loop(q, k, v, dy, scale=0.0)  # uniform weights 1/2
    >>> dv.ravel().tolist(), float(abs(dq).max())  # dv_j = Σ_i P_ij dy_i; scale 0: no gradient to q
    ([1.0, 1.0], 0.0)
    """
    q, k, v, dy, mask, causal, c, batch = _softmax_setup(q, k, v, dy, mask, causal, scale)
    n, m, d, dv_ = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    qb = np.broadcast_to(q, (*batch, n, d))
    kb = np.broadcast_to(k, (*batch, m, d))
    vb = np.broadcast_to(v, (*batch, m, dv_))
    mb = None if mask is None else np.broadcast_to(mask, (*batch, n, m))
    dq = np.zeros((*batch, n, d))
    dk = np.zeros((*batch, m, d))
    dv = np.zeros((*batch, m, dv_))
    for b in np.ndindex(*batch):
        for i in range(n):
            keys = [j for j in range(m) if (mb is None or mb[b][i, j]) and (not causal or j <= i)]
            s = {j: c * float(np.dot(qb[b][i], kb[b][j])) for j in keys}  # S_ij = c q_i·k_j
            top = max(s.values())
            z = sum(math.exp(x - top) for x in s.values())
            p = {j: math.exp(s[j] - top) / z for j in keys}  # P_ij
            dp = {j: float(np.dot(dy[b][i], vb[b][j])) for j in keys}  # dP_ij = dO_i · v_j
            row = sum(p[j] * dp[j] for j in keys)  # Σ_l P_il dP_il
            for j in keys:
                dv[b][j] += p[j] * dy[b][i]  # dV_j += P_ij dO_i
                ds = p[j] * (dp[j] - row)  # dS_ij
                dq[b][i] += c * ds * kb[b][j]  # dQ_i += c dS_ij k_j
                dk[b][j] += c * ds * qb[b][i]  # dK_j += c dS_ij q_i
    return _reduce_to(dq, q.shape), _reduce_to(dk, k.shape), _reduce_to(dv, v.shape)


# ---------------------------------------------------------------------------------------------
# Linear attention
# ---------------------------------------------------------------------------------------------


def _linear_setup(q, k, v, dy, causal):
    from .random_features import _check_qkv, elu_plus_one

    q, k, v, batch = _check_qkv(q, k, v, causal)
    dy = _check_dy(dy, (*batch, q.shape[-2], v.shape[-1]), "(..., N, dv)",
                   "batch shape from q, k and v, N from q, dv from v")
    return q, k, v, dy, bool(causal), batch, elu_plus_one


def _elu_plus_one_grad(x: np.ndarray) -> np.ndarray:
    """φ'(x) for φ = elu + 1: 1 for x > 0, e^x otherwise (the one-sided derivative at 0 is 1 from both sides)."""
    return np.where(x > 0, 1.0, np.exp(np.minimum(x, 0.0)))


def _causal_products(a, b, w, chunk: int = _LIN_CHUNK) -> np.ndarray:
    """``out_i = Σ_{j ≤ i} (a_i · b_j) w_j`` by chunked prefix sums, without an (N, N) matrix.

    The sequence is cut into chunks of ``chunk`` rows; chunk n sees the exclusive prefix of the
    per-chunk states ``b_n^T w_n`` (a cumulative sum over chunks) plus its own lower-triangular
    block. Memory O(N/chunk · F · W + N · chunk).
    """
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2], w.shape[:-2])
    n = a.shape[-2]
    c = min(chunk, n)
    pad = (-n) % c
    arrs = []
    for x in (a, b, w):
        x = np.broadcast_to(x, batch + x.shape[-2:])
        if pad:
            x = np.pad(x, [(0, 0)] * len(batch) + [(0, pad), (0, 0)])  # zero rows add nothing
        arrs.append(x.reshape(*batch, (n + pad) // c, c, x.shape[-1]))
    ac, bc, wc = arrs
    states = np.swapaxes(bc, -1, -2) @ wc  # (..., nc, F, W): Σ_{j in chunk} b_j w_j^T
    prefix = np.cumsum(states, axis=-3)
    prefix[..., 1:, :, :] = prefix[..., :-1, :, :].copy()  # exclusive: earlier chunks only
    prefix[..., 0, :, :] = 0.0
    block = ac @ np.swapaxes(bc, -1, -2)  # (..., nc, c, c): a_i · b_j inside a chunk
    block *= np.tri(c)  # j <= i
    out = ac @ prefix + block @ wc
    return out.reshape(*batch, n + pad, w.shape[-1])[..., :n, :]


def _anticausal_products(a, b, w) -> np.ndarray:
    """``out_j = Σ_{i ≥ j} (a_j · b_i) w_i``: :func:`_causal_products` in reversed time."""
    flip = lambda x: x[..., ::-1, :]  # noqa: E731
    return flip(_causal_products(flip(a), flip(b), flip(w)))


@guard_overflow()
def linear_attention_vjp(q, k, v, dy, *, causal=False):
    r"""Backward pass of :func:`refimpl.random_features.linear_attention` (φ = elu + 1): ``(dq, dk, dv)``.

    The vector–Jacobian product of Eqs. (12.2)–(12.4) of the book (Katharopoulos et al. 2020,
    §3.3.1, there for the numerator only; here with the normalizer).

    Parameters
    ----------
    q : array_like, shape (..., N, d)
    k : array_like, shape (..., M, d)
        M = N if ``causal``.
    v : array_like, shape (..., M, dv)
    dy : array_like, shape (..., N, dv)
        The cotangent ∂ℓ/∂y, shape of the output (batch axes of q, k, v broadcast).
    causal : bool
        Query i sees keys j ≤ i.

    Returns
    -------
    dq, dk, dv : ndarray, shapes of q, k, v

    Notes
    -----
    Write ``a_i = φ(q_i)``, ``b_j = φ(k_j)``, ``ṽ_j = [v_j, 1]`` and the forward pass as
    ``o_i = Σ_{j ∈ J(i)} (a_i · b_j) ṽ_j = [num_i, den_i]``, ``y_i = num_i / den_i`` (J(i) = all keys,
    or j ≤ i if causal). The quotient gives ``dnum_i = dy_i / den_i`` and
    ``dden_i = −(dy_i · y_i) / den_i``; with ``G_i = [dnum_i, dden_i]`` the bilinear form gives

    * ``da_i = Σ_{j ∈ J(i)} (G_i · ṽ_j) b_j``,
    * ``db_j = Σ_{i : j ∈ J(i)} (ṽ_j · G_i) a_i``,
    * ``dṽ_j = Σ_{i : j ∈ J(i)} (b_j · a_i) G_i`` (``dv_j`` its first dv entries),

    and finally ``dq = φ'(q) ∘ da``, ``dk = φ'(k) ∘ db`` with φ'(x) = 1 for x > 0, e^x otherwise.
    Each sum is again (unnormalized) linear attention: causal for ``da`` (a forward prefix sum
    over j ≤ i, as in the forward pass), anti-causal for ``db`` and ``dṽ`` (a reverse-time
    prefix sum over i ≥ j: the adjoint of a causal scan runs backwards in time). They are
    computed by chunked prefix sums (chunks of 64, an exclusive cumulative sum of per-chunk
    states plus a masked block per chunk): no Python loop over tokens, no (N, N) matrix.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v, dy = rng.normal(size=(4, 6, 3))
    >>> g = linear_attention_vjp(q, k, v, dy, causal=True)
    >>> all(np.allclose(a, b) for a, b in zip(g, linear_attention_vjp_loop(q, k, v, dy, causal=True)))
    True
    """
    q, k, v, dy, causal, batch, phi = _linear_setup(q, k, v, dy, causal)
    a, b = phi(q), phi(k)
    vt = np.concatenate([v, np.ones(v.shape[:-1] + (1,))], axis=-1)  # ṽ = [v, 1]
    if causal:
        o = _causal_products(a, b, vt)
    else:
        o = a @ (np.swapaxes(b, -1, -2) @ vt)  # Σ_j (a_i·b_j) ṽ_j
    den = o[..., -1:]
    y = o[..., :-1] / den
    G = np.concatenate([dy / den, -np.sum(dy * y, axis=-1, keepdims=True) / den], axis=-1)  # [dnum, dden]
    if causal:
        da = _causal_products(G, vt, b)
        db = _anticausal_products(vt, G, a)
        dvt = _anticausal_products(b, a, G)
    else:
        da = G @ (np.swapaxes(vt, -1, -2) @ b)  # Σ_j (G_i·ṽ_j) b_j
        db = vt @ (np.swapaxes(G, -1, -2) @ a)  # Σ_i (ṽ_j·G_i) a_i
        dvt = b @ (np.swapaxes(a, -1, -2) @ G)  # Σ_i (b_j·a_i) G_i
    dq = _elu_plus_one_grad(q) * da
    dk = _elu_plus_one_grad(k) * db
    return _reduce_to(dq, q.shape), _reduce_to(dk, k.shape), _reduce_to(dvt[..., :-1], v.shape)


@guard_overflow()
def linear_attention_vjp_loop(q, k, v, dy, *, causal=False):
    """Loop twin of :func:`linear_attention_vjp`: query by query, key by key, in Python floats.

    For each query i: ``y_i = num_i/den_i`` from the keys it sees, then ``dnum_i = dy_i/den_i``,
    ``dden_i = −dy_i·y_i/den_i`` scattered to every key it sees:
    ``dφ(q_i) += (dnum_i·v_j + dden_i) φ(k_j)``, ``dφ(k_j) += (dnum_i·v_j + dden_i) φ(q_i)``,
    ``dv_j += (φ(q_i)·φ(k_j)) dnum_i``; then the chain rule through φ.

    Examples
    --------
    >>> q = k = np.zeros((3, 2))  # φ(0) = 1: uniform weights
    >>> v, dy = np.arange(3.0)[:, None], np.ones((3, 1))
    >>> dq, dk, dv = linear_attention_vjp_loop(q, k, v, dy, causal=True)
    >>> np.round(dv.ravel(), 12).tolist()  # key j is seen by queries i >= j with weight 1/(i+1)
    [1.833333333333, 0.833333333333, 0.333333333333]
    """
    q, k, v, dy, causal, batch, phi = _linear_setup(q, k, v, dy, causal)
    n, m, d, dv_ = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    qb, kb, vb = (np.broadcast_to(x, (*batch, *x.shape[-2:])) for x in (q, k, v))
    dq = np.zeros((*batch, n, d))
    dk = np.zeros((*batch, m, d))
    dv = np.zeros((*batch, m, dv_))
    for b in np.ndindex(*batch):
        a, bk = phi(qb[b]), phi(kb[b])
        for i in range(n):
            keys = range(i + 1) if causal else range(m)
            w = {j: float(a[i] @ bk[j]) for j in keys}  # φ(q_i)·φ(k_j)
            den = sum(w.values())
            y = sum(w[j] * vb[b][j] for j in keys) / den
            dnum, dden = dy[b][i] / den, -float(dy[b][i] @ y) / den
            da = np.zeros(d)
            for j in keys:
                g = float(dnum @ vb[b][j]) + dden  # ∂ℓ/∂(φ(q_i)·φ(k_j))
                da += g * bk[j]
                dk[b][j] += g * a[i]  # dφ(k_j), chain rule below
                dv[b][j] += w[j] * dnum
            dq[b][i] = da
        dq[b] *= _elu_plus_one_grad(qb[b])  # dq = φ'(q) dφ(q)
    dk *= _elu_plus_one_grad(np.broadcast_to(k, (*batch, m, d)))
    return _reduce_to(dq, q.shape), _reduce_to(dk, k.shape), _reduce_to(dv, v.shape)


# ---------------------------------------------------------------------------------------------
# Selective scan
# ---------------------------------------------------------------------------------------------


def _dphi1_dA(x: np.ndarray) -> np.ndarray:
    r"""``g(x) = (x e^x − e^x + 1)/x²``, so that ``∂/∂A [(e^{ΔA} − 1)/A] = Δ² g(ΔA)``; g(0) = 1/2.

    For |x| < 0.1 the series ``g(x) = Σ_{k≥0} (k+1) x^k / (k+2)!`` (16 terms: truncation < 1e-30);
    elsewhere the closed form, whose cancellation costs at most ε/x² ≤ 100 ε.
    """
    x = np.asarray(x, dtype=np.float64)
    small = np.abs(x) < 0.1
    xs = np.where(small, x, 0.0)
    series = np.zeros_like(x)
    for kk in range(15, -1, -1):  # Horner
        series = series * xs + (kk + 1) / math.factorial(kk + 2)
    xl = np.where(small, 1.0, x)
    closed = (np.expm1(xl) * (xl - 1.0) + xl) / xl**2  # e^x(x−1) + 1 = (e^x − 1)(x − 1) + x
    return np.where(small, series, closed)


def _selective_setup(u, delta, A, B, C, D, dy, discretization):
    from .ssm import _check_selective

    shapes = {"u": np.shape(u), "delta": np.shape(delta), "B": np.shape(B), "C": np.shape(C)}
    u, delta, A, B, C, Dv = _check_selective(u, delta, A, B, C, D, discretization)
    dy = _check_dy(dy, u.shape, "(..., L, d_in)", "the shape of u, which delta, B and C broadcast to")
    return u, delta, A, B, C, Dv, dy, shapes


def _selective_result(u, delta, A, B, C, Dv, dy, du, ddelta, dA, dB, dC, shapes) -> dict:
    dD_full = np.sum(dy * u, axis=tuple(range(u.ndim - 1)))  # dD_d = Σ_t dy_{t,d} u_{t,d}
    dD = dD_full if Dv is None or Dv.shape == (u.shape[-1],) else np.asarray(dD_full.sum())
    return {
        "du": _reduce_to(du, shapes["u"]),
        "ddelta": _reduce_to(ddelta, shapes["delta"]),
        "dA": dA,
        "dB": _reduce_to(dB, shapes["B"]),
        "dC": _reduce_to(dC, shapes["C"]),
        "dD": dD,
    }


@guard_overflow()
def selective_scan_vjp(u, delta, A, B, C, D, dy, *, discretization="mamba") -> dict:
    r"""Backward pass of :func:`refimpl.ssm.selective_scan`: the gradients of all six inputs.

    The vector–Jacobian product of Eqs. (11.14)–(11.16) of the book (Gu & Dao 2024, Alg. 2): the
    adjoint is the reverse-time scan.

    Parameters
    ----------
    u, delta, A, B, C, D, discretization
        As in :func:`refimpl.ssm.selective_scan`: u, delta (..., L, d_in) (delta broadcastable to
        u), A (d_in, n) with entries ≤ 0, B, C (..., L, n), D (d_in,) or () or None (no skip
        connection; ``dD`` is then the gradient at D = 0).
    dy : array_like, shape (..., L, d_in)
        The cotangent ∂ℓ/∂y, shape of u.

    Returns
    -------
    grads : dict
        ``{"du", "ddelta", "dA", "dB", "dC", "dD"}``, each of the shape of its input (summed over
        broadcast axes); ``dD`` has shape (d_in,) when D is None.

    Notes
    -----
    Forward (per batch element, channel d and state n): ``h_t = ā_t h_{t−1} + b̄_t u_t``,
    ``y_t = Σ_n C_{t,n} h_t + D u_t`` with ``ā_t = e^{Δ_t A}`` and ``b̄_t = Δ_t B_t`` ("mamba") or
    ``(e^{Δ_t A} − 1)/A · B_t`` ("zoh"). The loss depends on ``h_t`` through ``y_t`` and through
    ``h_{t+1}``, so the adjoint state ``λ_t = ∂ℓ/∂h_t`` obeys

    .. math::  λ_t = \bar a_{t+1} ⊙ λ_{t+1} + dy_t\, C_t ,\qquad λ_{L−1} = dy_{L−1} C_{L−1},

    the same diagonal linear recurrence as the forward pass, run backwards in time (the discrete
    adjoint equation; the transpose of the lower-triangular semiseparable matrix of Eq. (11.18)
    is upper triangular). Then, with ``h_{−1} = 0`` and ``w_t = λ_t u_t``:

    * ``dC_{t,n} = Σ_d dy_{t,d} h_{t,d,n}``, ``dD_d = Σ_t dy_{t,d} u_{t,d}``;
    * ``du_t = Σ_n λ_t b̄_t + D dy_t``;
    * through ``ā_t``: ``∂ā/∂Δ = A ā``, ``∂ā/∂A = Δ ā``, with the cotangent ``λ_t ⊙ h_{t−1}``;
    * through ``b̄_t`` ("mamba"): ``dB_{t,n} = Σ_d w_t Δ_t``, ``dΔ_t += Σ_n w_t B_{t,n}``;
      ("zoh"): ``dB_{t,n} = Σ_d w_t (e^{ΔA} − 1)/A``, ``dΔ_t += Σ_n w_t B_{t,n} e^{Δ_t A}``,
      ``dA += Σ_t w_t B_{t,n} Δ_t² g(Δ_t A)`` with ``g(x) = (x e^x − e^x + 1)/x²`` (series near 0,
      g(0) = 1/2).

    Vectorized: the forward states and the adjoint states each come from one associative scan
    (:func:`refimpl._scan.linear_scan`, ⌈log₂ L⌉ sweeps, the adjoint on the time-reversed
    sequence with the coefficients shifted by one step); the rest are elementwise products and
    reductions. Memory O(L · d_in · n) per batch element (the states are stored, not recomputed).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> u, dy = rng.normal(size=(2, 6, 3))
    >>> delta, A = np.full((6, 3), 0.1), -np.ones((3, 2))
    >>> B, C = rng.normal(size=(2, 6, 2))
    >>> g = selective_scan_vjp(u, delta, A, B, C, np.ones(3), dy, discretization="zoh")
    >>> sorted(g), g["dA"].shape
    (['dA', 'dB', 'dC', 'dD', 'ddelta', 'du'], (3, 2))
    >>> gl = selective_scan_vjp_loop(u, delta, A, B, C, np.ones(3), dy, discretization="zoh")
    >>> all(np.allclose(g[key], gl[key], rtol=1e-12, atol=0) for key in g)
    True
    """
    from .ssm import _discretize_selective

    u, delta, A, B, C, Dv, dy, shapes = _selective_setup(u, delta, A, B, C, D, dy, discretization)
    Ab, Bu = _discretize_selective(u, delta, A, B, discretization)  # ā_t, b̄_t u_t: (..., L, d, n)
    tl = lambda x: np.ascontiguousarray(np.moveaxis(x, -3, -1))  # noqa: E731  time last
    H = np.moveaxis(linear_scan(tl(Ab), tl(Bu)), -1, -3)  # h_t
    cot = dy[..., :, :, None] * C[..., :, None, :]  # dy_t C_t: (..., L, d, n)
    a_next = np.zeros(Ab.shape)
    a_next[..., :-1, :, :] = Ab[..., 1:, :, :]  # ā_{t+1} (0 after the last step)
    lam = np.moveaxis(linear_scan(tl(a_next)[..., ::-1], tl(cot)[..., ::-1])[..., ::-1], -1, -3)  # λ_t, reverse time
    H_prev = np.zeros(H.shape)
    H_prev[..., 1:, :, :] = H[..., :-1, :, :]  # h_{t−1}
    dC = np.einsum("...td,...tdn->...tn", dy, H)
    ga = lam * H_prev * Ab  # λ_t ⊙ h_{t−1} ⊙ ā_t
    ddelta = np.einsum("...tdn,dn->...td", ga, A)  # through ā: ∂ā/∂Δ = A ā
    lead = tuple(range(ga.ndim - 2))  # batch and time axes: A is shared by all of them
    dA = np.sum(ga * delta[..., None], axis=lead)  # through ā: ∂ā/∂A = Δ ā
    w = lam * u[..., None]  # λ_t u_t
    if discretization == "mamba":
        du = np.einsum("...tdn,...td,...tn->...td", lam, delta, B)  # Σ_n λ Δ B
        dB = np.einsum("...tdn,...td->...tn", w, delta)
        ddelta += np.einsum("...tdn,...tn->...td", w, B)
    else:
        x = delta[..., None] * A  # Δ_t A
        f = np.where(A == 0, delta[..., None], np.expm1(x) / np.where(A == 0, 1.0, A))  # (e^{ΔA} − 1)/A
        du = np.einsum("...tdn,...tdn,...tn->...td", lam, f, B)
        dB = np.einsum("...tdn,...tdn->...tn", w, f)
        wB = w * B[..., None, :]
        ddelta += np.einsum("...tdn,...tdn->...td", wB, Ab)  # ∂f/∂Δ = e^{ΔA}
        dA += np.sum(wB * delta[..., None] ** 2 * _dphi1_dA(x), axis=lead)
    if Dv is not None:
        du += Dv * dy
    return _selective_result(u, delta, A, B, C, Dv, dy, du, ddelta, dA, dB, dC, shapes)


@guard_overflow()
def selective_scan_vjp_loop(u, delta, A, B, C, D, dy, *, discretization="mamba") -> dict:
    """Loop twin of :func:`selective_scan_vjp`: scalar loops, the forward recurrence then the adjoint one.

    Per batch element, channel d and state n: ``h_t = ā_t h_{t−1} + b̄_t u_t`` forwards, then
    ``λ_t = dy_t C_t + ā_{t+1} λ_{t+1}`` backwards (t = L−1, …, 0), accumulating every
    gradient at step t from ``λ_t``, ``h_{t−1}`` and the step's coefficients, in Python floats.

    Examples
    --------
    >>> u, dy = np.ones((3, 1)), np.array([[0.0], [0.0], [1.0]])  # ℓ = y_2
    >>> g = selective_scan_vjp_loop(u, np.ones((3, 1)), np.zeros((1, 1)), np.ones((3, 1)), np.ones((3, 1)), None, dy)
    >>> g["du"].ravel().tolist()  # A = 0: h_2 = Δ(u_0 + u_1 + u_2), each input counts once
    [1.0, 1.0, 1.0]
    """
    u, delta, A, B, C, Dv, dy, shapes = _selective_setup(u, delta, A, B, C, D, dy, discretization)
    L, d_in = u.shape[-2:]
    n = A.shape[1]
    batch = u.shape[:-2]
    du, ddelta = np.zeros(u.shape), np.zeros(u.shape)
    dB, dC = np.zeros(B.shape), np.zeros(C.shape)
    dA = np.zeros(A.shape)
    for idx in np.ndindex(*batch):
        for d in range(d_in):
            for s in range(n):
                a = float(A[d, s])
                coef = []  # (ā_t, f_t, b̄_t) per step; f = ∂b̄/∂B
                h = [0.0]  # h[t + 1] = h_t, h[0] = h_{−1} = 0
                for t in range(L):
                    dt, bt = float(delta[idx + (t, d)]), float(B[idx + (t, s)])
                    a_bar = math.exp(dt * a)
                    f = dt if discretization == "mamba" else (math.expm1(dt * a) / a if a != 0.0 else dt)
                    coef.append((a_bar, f, f * bt))
                    h.append(a_bar * h[-1] + f * bt * float(u[idx + (t, d)]))
                lam = 0.0
                for t in range(L - 1, -1, -1):
                    a_bar, f, b_bar = coef[t]
                    dt, bt, ut = float(delta[idx + (t, d)]), float(B[idx + (t, s)]), float(u[idx + (t, d)])
                    nxt = coef[t + 1][0] if t + 1 < L else 0.0
                    lam = nxt * lam + float(dy[idx + (t, d)]) * float(C[idx + (t, s)])  # λ_t
                    dC[idx + (t, s)] += float(dy[idx + (t, d)]) * h[t + 1]  # ∂y_t/∂C_t = h_t
                    du[idx + (t, d)] += lam * b_bar  # ∂h_t/∂u_t = b̄_t
                    g = lam * h[t] * a_bar  # λ_t h_{t−1} ā_t
                    ddelta[idx + (t, d)] += g * a  # ∂ā/∂Δ = a ā
                    dA[d, s] += g * dt  # ∂ā/∂a = Δ ā
                    dB[idx + (t, s)] += lam * ut * f  # ∂b̄/∂B = f
                    if discretization == "mamba":
                        ddelta[idx + (t, d)] += lam * ut * bt  # ∂(Δ B)/∂Δ = B
                    else:
                        ddelta[idx + (t, d)] += lam * ut * bt * a_bar  # ∂f/∂Δ = e^{Δa}
                        x = dt * a
                        if abs(x) < 0.1:  # g(x) = Σ (k+1) x^k/(k+2)!
                            gx = sum((kk + 1) * x**kk / math.factorial(kk + 2) for kk in range(16))
                        else:
                            gx = (x * math.exp(x) - math.exp(x) + 1.0) / (x * x)
                        dA[d, s] += lam * ut * bt * dt * dt * gx  # ∂f/∂a = Δ² g(Δa)
    if Dv is not None:
        du += Dv * dy
    return _selective_result(u, delta, A, B, C, Dv, dy, du, ddelta, dA, dB, dC, shapes)
