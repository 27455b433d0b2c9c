r"""Scaled dot-product and multi-head attention, read as a data-dependent FIR filter.

Chapter 4 of the book (``notebooks/04-attention-as-filter.ipynb``) derives every formula here.

Scaled dot-product attention (Vaswani et al. 2017, Eq. 1) maps queries, keys and values to

.. math::  Y = \operatorname{softmax}\!\big(\mathrm{scale}\cdot QK^\top + \log\mathrm{mask}\big)\,V,
           \qquad \mathrm{scale} = 1/\sqrt d .                                   \tag{4.1}

Row ``i`` of the weight matrix ``A`` is a matched filter (the correlation of the template
``q_i`` with every "received" key ``k_j``) passed through a softmax: non-negative weights that
sum to one, so ``y_i`` is a convex combination of the values — an FIR filter over positions
whose coefficients depend on the data.

Glossary (code name → symbol in the book / Vaswani et al. 2017)
---------------------------------------------------------------
``q``        Q, shape (..., N, d): N queries of dimension d (d_k in the paper).
``k``        K, shape (..., M, d): M keys.
``v``        V, shape (..., M, dv): M values of dimension dv (d_v).
``scale``    1/τ: the inverse temperature; the paper's 1/√d_k is the default.
``mask``     boolean, broadcastable to (..., N, M): **True = may attend** (the convention of
             ``torch.nn.functional.scaled_dot_product_attention``'s boolean ``attn_mask``).
``causal``   key j may be attended by query i only if j ≤ i (top-left aligned, as torch's
             ``is_causal``).
``A``        the attention weights, shape (..., N, M), rows sum to 1 (Eq. (4.2)).
``x``        X, shape (..., N, d_model): the token sequence of multi-head self-attention.
``w_q, w_k`` W^Q, W^K, shape (d_model, h·d_k): the h per-head projections side by side
             (head i uses columns i·d_k … (i+1)·d_k − 1); applied as ``x @ w_q`` (the paper's
             convention; torch's ``nn.Linear`` stores the transpose).
``w_v``      W^V, shape (d_model, h·d_v); ``w_o`` W^O, shape (h·d_v, d_out).
``W``        a mixer materialized as an (N, N) matrix, y = W v (Eq. (4.9)).
``h_ℓ``      its lag profile: the mean of the diagonal i − j = ℓ of W (Eq. (4.10)).

References
----------
.. [1] A. Vaswani et al., "Attention is all you need", NeurIPS 2017, Eq. (1) and §3.2.
.. [2] G. L. Turin, "An introduction to matched filters", IRE Trans. Inf. Theory 6(3), 1960.
.. [3] J.-B. Cordonnier, A. Loukas, M. Jaggi, "On the relationship between self-attention and
       convolutional layers", ICLR 2020.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ._blocking import per_block
from ._validate import as_array, as_bool, as_int, as_positive_scalar, as_real_array, check_qk, check_qkv, guard_overflow

__all__ = [
    "softmax_attention",
    "softmax_attention_loop",
    "attention_weights",
    "multihead_attention",
    "multihead_attention_loop",
    "attention_entropy",
    "effective_support",
    "materialize",
    "materialize_loop",
    "lag_profile",
    "frequency_response",
    "flash_attention",
    "flash_attention_loop",
    "alibi_geometric_slopes",
    "softmax_attention_vjp",
    "softmax_attention_vjp_loop",
]


# ---------------------------------------------------------------------------------------------
# Validation shared by the pairs
# ---------------------------------------------------------------------------------------------


def _check_qk(q, k):
    q, k, _ = check_qk(q, k)
    return q, k


def _check_qkv(q, k, v):
    return check_qkv(q, k, v)


def _batch(*arrays) -> tuple:
    try:
        return np.broadcast_shapes(*(a.shape[:-2] for a in arrays))
    except ValueError:
        got = ", ".join(str(a.shape) for a in arrays)
        raise ValueError(f"k: the batch axes of q, k (and v) do not broadcast, got shapes {got}") from None


def _check_mask(mask, causal, batch: tuple, n: int, m: int) -> np.ndarray | None:
    """Validate ``mask`` (broadcastable to (*batch, N, M)) and ``causal``; return the mask or None.

    Raises if a query row allows no key (mask & causal all False): its softmax would be 0/0,
    a silent NaN. The causal triangle itself is never materialized as an (N, M) array here.
    """
    as_bool(causal, "causal")
    if mask is None:
        return None  # with causal only, row i always keeps key 0 (M >= 1)
    arr = np.asarray(mask)
    if arr.dtype != np.bool_:
        raise TypeError(f"mask: expected a boolean array (True = may attend), got dtype {arr.dtype}")
    target = (*batch, n, m)
    try:
        ok = np.broadcast_shapes(arr.shape, target) == target
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"mask: expected a shape broadcastable to (..., N, M) = {target} (N from q, M from k), got shape {arr.shape}"
        )
    full = np.broadcast_to(arr, (*arr.shape[:-2], n, m)) if arr.ndim >= 2 else np.broadcast_to(arr, (n, m))
    empty = ~full.any(axis=-1)
    if causal:  # the first allowed key must not lie after the query: argmax finds the first True
        empty = empty | (full.argmax(axis=-1) > np.arange(n))
    if np.any(empty):
        idx = np.argwhere(empty)[0]
        raise ValueError(
            f"mask: query row {tuple(int(i) for i in idx)} may attend to no key (mask & causal is all "
            "False there); its softmax would be 0/0"
        )
    return full


def _rows_forbidden(mask, causal: bool, rows: slice, n: int, m: int) -> np.ndarray | None:
    """Where query rows ``rows`` may **not** attend (~mask | j > i), or None if nothing is masked.

    Built directly as the forbidden set (one boolean temporary per block, no inversion afterwards).
    """
    forbidden = None if mask is None else ~mask[..., rows, :]
    if causal:
        after = np.arange(m)[None, :] > np.arange(n)[rows][:, None]  # key j after query i
        forbidden = after if forbidden is None else np.logical_or(forbidden, after, out=forbidden)
    return forbidden


def _scale(scale, d: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(d) if d > 0 else 1.0
    return as_positive_scalar(scale, "scale", strict=False)


# ---------------------------------------------------------------------------------------------
# Scaled dot-product attention, Eqs. (4.1)-(4.3)
# ---------------------------------------------------------------------------------------------


def _exp_shifted_inplace(s: np.ndarray, forbidden) -> np.ndarray:
    """``s ← exp(s − max_j s)`` over the allowed keys, in place; returns the row sums ``z``."""
    if forbidden is not None:
        np.copyto(s, -np.inf, where=forbidden)  # masked logits: −∞ → weight exactly 0
    s -= s.max(axis=-1, keepdims=True)  # log-sum-exp: subtract the row max m_i (finite: a key is allowed)
    np.exp(s, out=s)  # e^{s_ij − m_i} ∈ [0, 1], Eq. (4.3)
    return s.sum(axis=-1, keepdims=True)  # z_i = Σ_j e^{s_ij − m_i} ≥ 1


def _logits(q, k, forbidden, rows=slice(None)) -> np.ndarray:
    """``scale · q_i · k_j`` for the query rows ``rows``, broadcast to the batch axes of their mask."""
    s = np.matmul(q[..., rows, :], np.swapaxes(k, -1, -2))  # s_ij = (scale q_i) · k_j (BLAS)
    if forbidden is not None:
        full = np.broadcast_shapes(s.shape, forbidden.shape)
        if full != s.shape:  # the mask carries batch axes that q and k do not
            s = np.broadcast_to(s, full).copy()
    return s


def _weights(q, k, mask, causal) -> np.ndarray:
    """A = softmax(scale q k^T) over the allowed keys (q already scaled), one (..., N, M) buffer."""
    forbidden = _rows_forbidden(mask, causal, slice(None), q.shape[-2], k.shape[-2])
    s = _logits(q, k, forbidden)
    s /= _exp_shifted_inplace(s, forbidden)  # A_ij = e^{s_ij − m_i} / z_i, Eq. (4.2)
    return s


# Query rows per block of the weight-free path: a block's logits fill the workspace budget
# (refimpl._blocking) and stay in cache while they are shifted, exponentiated, summed and
# multiplied by V.
_MIN_BLOCK_ROWS = 32  # with many batch elements, fewer rows per block would be all overhead


def _attend_blocked(q, k, v, mask, causal, batch) -> np.ndarray:
    """``y = softmax(q k^T) v`` by blocks of query rows, normalizing y instead of A."""
    n, m = q.shape[-2], k.shape[-2]
    if mask is not None:
        batch = np.broadcast_shapes(batch, mask.shape[:-2])
    rows_per_block = per_block(m * math.prod(batch), minimum=_MIN_BLOCK_ROWS)  # a row: M logits per batch entry
    y = np.empty((*batch, n, v.shape[-1]))
    for start in range(0, n, rows_per_block):
        rows = slice(start, min(n, start + rows_per_block))
        blk = _rows_forbidden(mask, causal, rows, n, m)  # (..., b, M) or None
        e = _logits(q, k, blk, rows)  # (..., b, M)
        z = _exp_shifted_inplace(e, blk)
        out = y[..., rows, :]
        np.matmul(e, v, out=out)  # Σ_j e_ij v_j (the batch axes of e and v broadcast to y's)
        out /= z  # y_i = Σ_j e_ij v_j / z_i  (= Σ_j A_ij v_j, Eq. (4.1))
    return y


def attention_weights(q, k, *, mask=None, causal=False, scale=None) -> np.ndarray:
    r"""The attention weight matrix ``A = softmax(scale · Q K^T)`` of Eq. (4.2).

    Implements Eq. (4.2) of the book (Vaswani et al. 2017, Eq. 1, the softmax factor).

    Parameters
    ----------
    q : array_like, shape (..., N, d)
    k : array_like, shape (..., M, d)
    mask, causal, scale
        As in :func:`softmax_attention`.

    Returns
    -------
    A : ndarray, shape (..., N, M)
        Non-negative, each row sums to 1, exactly 0 where the mask forbids.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> A = attention_weights(rng.normal(size=(4, 2)), rng.normal(size=(4, 2)), causal=True)
    >>> A[0].tolist()  # the first query sees only the first key
    [1.0, 0.0, 0.0, 0.0]
    >>> bool(np.allclose(A.sum(axis=-1), 1.0))
    True
    """
    q, k = _check_qk(q, k)
    mask = _check_mask(mask, causal, _batch(q, k), q.shape[-2], k.shape[-2])
    return _weights(q * _scale(scale, q.shape[-1]), k, mask, causal)


def softmax_attention(
    q, k, v, *, mask=None, causal=False, scale=None, return_weights=False, window=None, alibi_slopes=None
):
    r"""Scaled dot-product attention, ``softmax(scale · Q K^T) V``, numerically stable.

    Implements Eqs. (4.1)–(4.3) of the book (Vaswani et al. 2017, Eq. 1).

    Parameters
    ----------
    q : array_like, shape (..., N, d)
        Queries (the templates of the matched filter).
    k : array_like, shape (..., M, d)
        Keys (the received vectors). Leading batch axes of q, k, v broadcast.
    v : array_like, shape (..., M, dv)
        Values.
    mask : array_like of bool, broadcastable to (..., N, M), optional
        **True = may attend.** Combined with ``causal`` by logical and. A query row with no
        allowed key raises ``ValueError`` (its softmax would be 0/0).
    causal : bool
        Forbid keys j > i (top-left aligned, as ``torch``'s ``is_causal``).
    scale : float >= 0, optional
        The inverse temperature 1/τ; default ``1/sqrt(d)``. ``scale = 0`` gives the uniform
        average of the allowed values; ``scale → ∞`` gives hard selection of the best key.
    return_weights : bool
        Also return the weight matrix ``A``.
    window : int >= 1, optional
        Sliding-window (local) attention: key j is allowed only if ``|i − j| < window``; with
        ``causal`` each query sees its ``window`` most recent keys, itself included (Longformer,
        Mistral). Combined with ``mask`` and ``causal`` by logical and (Eq. (16.16)).
    alibi_slopes : array_like, broadcastable to the batch axes (e.g. shape (H,)), optional
        ALiBi (Press et al. 2022): the bias ``−m · |i − j|`` is added to the logits, with slope
        ``m ≥ 0`` per head (the last batch axis); for causal attention this is the paper's
        ``m · (j − i)``. Chapter 8 finds the same linear bias as the μ → 0 limit of the
        isotropic AFA prior (Eq. (8.7)); :func:`alibi_geometric_slopes` gives the paper's slopes.
        With ``window`` or ``alibi_slopes`` the logits are formed as one (..., N, M) buffer
        (not in blocks of query rows).

    Returns
    -------
    y : ndarray, shape (..., N, dv)
    A : ndarray, shape (..., N, M)
        Only if ``return_weights``.

    Notes
    -----
    With ``s_ij = scale · q_i·k_j`` and ``m_i = max_{j allowed} s_ij``,

    ``A_ij = exp(s_ij − m_i) / Σ_{j' allowed} exp(s_ij' − m_i)``,  ``y_i = Σ_j A_ij v_j``.

    Subtracting ``m_i`` changes nothing mathematically (Eq. (4.3)) and keeps every exponent ≤ 0,
    so nothing overflows. Work: the two matrix products plus four passes over the logits
    (max, subtract, exp, sum). Without ``return_weights`` the query rows are processed in
    blocks of about 2^18 logits that stay in cache, and ``y`` is normalized instead of ``A``
    (``y_i = Σ_j e^{s_ij − m_i} v_j / z_i``); peak memory is then O(block · M) besides the
    inputs and output. With ``return_weights`` one (..., N, M) buffer holds ``A``. No
    (N, M, d) intermediate is ever formed.

    References
    ----------
    .. [1] A. Vaswani et al., "Attention is all you need", NeurIPS 2017, Eq. (1).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 5, 4))
    >>> y, A = softmax_attention(q, k, v, causal=True, return_weights=True)
    >>> bool(np.allclose(A.sum(-1), 1.0)), bool(np.all(np.triu(A, 1) == 0))
    (True, True)
    """
    if window is not None or alibi_slopes is not None:  # sliding window / ALiBi, Eq. (16.16)
        return _softmax_biased(q, k, v, mask, causal, scale, return_weights, window, alibi_slopes)
    q, k, v, batch = _check_qkv(q, k, v)
    mask = _check_mask(mask, causal, batch, q.shape[-2], k.shape[-2])
    return_weights = as_bool(return_weights, "return_weights")
    q = q * _scale(scale, q.shape[-1])  # scale q (N·d products) rather than the N·M logits
    if not return_weights:
        return _attend_blocked(q, k, v, mask, causal, batch)
    A = _weights(q, k, mask, causal)
    return np.matmul(A, v), A  # y_i = Σ_j A_ij v_j, Eq. (4.1)


def softmax_attention_loop(
    q, k, v, *, mask=None, causal=False, scale=None, return_weights=False, window=None, alibi_slopes=None
):
    """Loop twin of :func:`softmax_attention`: one query, one key at a time (Eqs. (4.1)–(4.3)).

    With ``window`` or ``alibi_slopes``, the loop also applies the band and the linear bias of
    Eq. (16.16) key by key.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 4, 2))
    >>> bool(np.allclose(softmax_attention_loop(q, k, v, causal=True), softmax_attention(q, k, v, causal=True)))
    True
    """
    if window is not None or alibi_slopes is not None:  # sliding window / ALiBi, Eq. (16.16)
        return _softmax_biased_loop(q, k, v, mask, causal, scale, return_weights, window, alibi_slopes)
    q, k, v, batch = _check_qkv(q, k, v)
    n, m, dv = q.shape[-2], k.shape[-2], v.shape[-1]
    mask = _check_mask(mask, causal, batch, n, m)
    return_weights = as_bool(return_weights, "return_weights")
    c = _scale(scale, q.shape[-1])
    batch = np.broadcast_shapes(batch, mask.shape[:-2]) if mask is not None else batch
    qb = np.broadcast_to(q, (*batch, n, q.shape[-1]))
    kb = np.broadcast_to(k, (*batch, m, k.shape[-1]))
    vb = np.broadcast_to(v, (*batch, m, dv))
    mb = None if mask is None else np.broadcast_to(mask, (*batch, n, m))
    y = np.zeros((*batch, n, dv))
    A = np.zeros((*batch, n, m))
    for b in np.ndindex(*batch):
        for i in range(n):
            # key j is allowed if the mask says so and, when causal, j <= i
            keys = [j for j in range(m) if (mb is None or mb[b][i, j]) and (not causal or j <= i)]
            scores = {j: c * float(np.dot(qb[b][i], kb[b][j])) for j in keys}  # s_ij = scale q_i·k_j
            top = max(scores.values())  # m_i
            z = sum(math.exp(s - top) for s in scores.values())  # Σ_j e^{s_ij − m_i}
            for j in keys:
                A[b][i, j] = math.exp(scores[j] - top) / z  # A_ij, Eq. (4.2)
                y[b][i] += A[b][i, j] * vb[b][j]  # y_i += A_ij v_j, Eq. (4.1)
    return (y, A) if return_weights else y


# ---------------------------------------------------------------------------------------------
# Multi-head attention, Eqs. (4.11)-(4.12)
# ---------------------------------------------------------------------------------------------


def _check_mha(x, w_q, w_k, w_v, w_o, n_heads):
    x = as_real_array(x, "x")
    if x.ndim < 2:
        raise ValueError(f"x: expected shape (..., N, d_model), got shape {x.shape}")
    if x.shape[-2] == 0 or x.shape[-1] == 0:
        raise ValueError(f"x: expected at least one token and one channel, got shape {x.shape}")
    if isinstance(n_heads, bool) or not isinstance(n_heads, (int, np.integer)):
        raise TypeError(f"n_heads: expected an int, got {type(n_heads).__name__}")
    if n_heads < 1:
        raise ValueError(f"n_heads: expected n_heads >= 1, got {n_heads}")
    d_model = x.shape[-1]
    mats = {}
    for name, w in (("w_q", w_q), ("w_k", w_k), ("w_v", w_v)):
        w = as_real_array(w, name, ndim=2)
        if w.shape[0] != d_model:
            raise ValueError(f"{name}: expected shape (d_model = {d_model}, n_heads·d_head), got shape {w.shape}")
        if w.shape[1] % n_heads:
            raise ValueError(f"{name}: expected a width divisible by n_heads = {n_heads}, got shape {w.shape}")
        mats[name] = w
    if mats["w_k"].shape != mats["w_q"].shape:
        raise ValueError(f"w_k: expected the shape of w_q {mats['w_q'].shape}, got shape {mats['w_k'].shape}")
    w_o = as_real_array(w_o, "w_o", ndim=2)
    if w_o.shape[0] != mats["w_v"].shape[1]:
        raise ValueError(f"w_o: expected {mats['w_v'].shape[1]} rows (the width of w_v), got shape {w_o.shape}")
    return x, mats["w_q"], mats["w_k"], mats["w_v"], w_o, int(n_heads)


@guard_overflow()
def multihead_attention(x, w_q, w_k, w_v, w_o, n_heads, *, causal=False, mask=None, scale=None, return_weights=False):
    r"""Multi-head self-attention: h heads side by side, concatenated, mixed by ``W^O``.

    Implements Eqs. (4.11)–(4.12) of the book (Vaswani et al. 2017, §3.2.2).

    Parameters
    ----------
    x : array_like, shape (..., N, d_model)
        The sequence.
    w_q, w_k : array_like, shape (d_model, h·d_k)
        Query and key projections of all heads side by side; head i uses columns
        ``i·d_k : (i+1)·d_k``. Applied as ``x @ w_q``.
    w_v : array_like, shape (d_model, h·d_v)
    w_o : array_like, shape (h·d_v, d_out)
    n_heads : int
        h; must divide the widths of w_q and w_v.
    causal, mask, scale
        As in :func:`softmax_attention`, shared by all heads; ``scale`` defaults to 1/√d_k.
    return_weights : bool
        Also return the per-head weights, shape (..., h, N, N).

    Returns
    -------
    y : ndarray, shape (..., N, d_out)
    A : ndarray, shape (..., h, N, N)
        Only if ``return_weights``.

    Notes
    -----
    ``head_i = softmax(X W_i^Q (X W_i^K)^T · scale) X W_i^V`` and
    ``Y = [head_1, …, head_h] W^O = Σ_i A_i X W_i^V W^O_i`` (Eq. (4.12): a bank of h
    data-dependent N×N filters, each followed by its own channel mixer ``W_i^V W^O_i``).
    Vectorized: one projection of width h·d_k, reshaped (..., N, h, d_k) → (..., h, N, d_k).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(5, 4))
    >>> w_q, w_k, w_v, w_o = rng.normal(size=(4, 4, 4)) / 2
    >>> y, A = multihead_attention(x, w_q, w_k, w_v, w_o, 2, causal=True, return_weights=True)
    >>> y.shape, A.shape  # A: one (N, N) matrix per head
    ((5, 4), (2, 5, 5))
    """
    x, w_q, w_k, w_v, w_o, h = _check_mha(x, w_q, w_k, w_v, w_o, n_heads)
    return_weights = as_bool(return_weights, "return_weights")
    n = x.shape[-2]
    dk, dv = w_q.shape[1] // h, w_v.shape[1] // h

    def heads(w, width):  # (..., N, h·width) -> (..., h, N, width)
        return np.swapaxes((x @ w).reshape(*x.shape[:-1], h, width), -2, -3)

    mask_h = None if mask is None else np.expand_dims(np.asarray(mask), -3) if np.ndim(mask) >= 2 else mask
    y, A = softmax_attention(
        heads(w_q, dk), heads(w_k, dk), heads(w_v, dv), mask=mask_h, causal=causal, scale=scale, return_weights=True
    )
    concat = np.swapaxes(y, -2, -3).reshape(*x.shape[:-2], n, h * dv)  # Concat(head_1..head_h)
    out = concat @ w_o  # Eq. (4.11)
    return (out, A) if return_weights else out


@guard_overflow()
def multihead_attention_loop(
    x, w_q, w_k, w_v, w_o, n_heads, *, causal=False, mask=None, scale=None, return_weights=False
):
    """Loop twin of :func:`multihead_attention`: one head at a time, Eq. (4.11) literally.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(5, 4))
    >>> w_q, w_k, w_v, w_o = rng.normal(size=(4, 4, 4)) / 2
    >>> bool(np.allclose(multihead_attention_loop(x, w_q, w_k, w_v, w_o, 2), multihead_attention(x, w_q, w_k, w_v, w_o, 2)))
    True
    """
    x, w_q, w_k, w_v, w_o, h = _check_mha(x, w_q, w_k, w_v, w_o, n_heads)
    return_weights = as_bool(return_weights, "return_weights")
    dk, dv = w_q.shape[1] // h, w_v.shape[1] // h
    outs, weights = [], []
    for i in range(h):
        qi = x @ w_q[:, i * dk : (i + 1) * dk]  # Q W_i^Q
        ki = x @ w_k[:, i * dk : (i + 1) * dk]  # K W_i^K
        vi = x @ w_v[:, i * dv : (i + 1) * dv]  # V W_i^V
        yi, Ai = softmax_attention_loop(qi, ki, vi, mask=mask, causal=causal, scale=scale, return_weights=True)
        outs.append(yi)
        weights.append(Ai)
    out = np.concatenate(outs, axis=-1) @ w_o  # Concat(head_1, ..., head_h) W^O
    return (out, np.stack(weights, axis=-3)) if return_weights else out


# ---------------------------------------------------------------------------------------------
# Selectivity of a weight row, Eqs. (4.6)-(4.7)
# ---------------------------------------------------------------------------------------------


def _check_weights(weights) -> np.ndarray:
    a = as_real_array(weights, "weights")
    if a.ndim < 1:
        raise ValueError(f"weights: expected shape (..., M), got shape {a.shape}")
    if np.any(a < 0):
        raise ValueError(f"weights: expected non-negative weights, got minimum {a.min():.3g}")
    if a.size and np.max(np.abs(a.sum(axis=-1) - 1.0)) > 1e-8:
        raise ValueError("weights: expected rows that sum to 1")
    return a


def attention_entropy(weights) -> np.ndarray:
    r"""Shannon entropy ``H(A_i) = −Σ_j A_ij log A_ij`` (nats) of each row; 0 log 0 = 0.

    Implements Eq. (4.6) of the book. Ranges from 0 (one-hot, hard selection) to log M
    (uniform).

    Parameters
    ----------
    weights : array_like, shape (..., M)
        Rows of attention weights (non-negative, summing to 1).

    Returns
    -------
    H : ndarray, shape (...)

    Examples
    --------
    >>> H = attention_entropy(np.array([[1.0, 0.0], [0.5, 0.5]]))
    >>> bool(H[0] == 0.0), bool(np.isclose(H[1], np.log(2)))  # one-hot: 0 nats; uniform over two keys: log 2
    (True, True)
    """
    a = _check_weights(weights)
    safe = np.where(a > 0, a, 1.0)
    return -np.sum(a * np.log(safe), axis=-1)


def effective_support(weights) -> np.ndarray:
    r"""Effective number of attended keys ``1 / Σ_j A_ij²`` of each row.

    Implements Eq. (4.7) of the book (the "participation ratio"). Equals 1 for a one-hot row
    and M for a uniform row.

    Parameters
    ----------
    weights : array_like, shape (..., M)

    Returns
    -------
    n_eff : ndarray, shape (...)

    Examples
    --------
    >>> effective_support(np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])).round(12).tolist()
    [1.0, 2.0, 3.0]
    """
    a = _check_weights(weights)
    return 1.0 / np.sum(a * a, axis=-1)


# ---------------------------------------------------------------------------------------------
# Any mixer as a matrix and a frequency response, Eqs. (4.9)-(4.10)
# ---------------------------------------------------------------------------------------------


def _check_mixer(mixer, n):
    if not callable(mixer):
        raise TypeError(f"mixer: expected a callable v -> y, got {type(mixer).__name__}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n: expected a positive int (the sequence length), got {n!r}")
    return int(n)


def _probe(mixer, v: np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(mixer(v))
    if y.shape != v.shape:
        raise ValueError(f"mixer: expected an output of the input's shape {v.shape}, got shape {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError("mixer: returned non-finite values")
    return y


def _linearity_probe(n: int) -> np.ndarray:
    # a fixed, generic test column (no randomness): incommensurate cosines
    return np.cos(0.7 * np.arange(n) + 0.3)[:, None] + 0.5 * np.sin(1.9 * np.arange(n))[:, None]


def _check_linear(mixer, W: np.ndarray, n: int) -> None:
    v = _linearity_probe(n)
    y = _probe(mixer, v, n)
    ref = W @ v
    if np.max(np.abs(y - ref)) > 1e-8 * max(1.0, float(np.max(np.abs(ref)))):
        raise ValueError("mixer: is not linear in v (mixer(v) != W v for a test column v)")


def materialize(mixer: Callable, n: int, *, check_linear: bool = True) -> np.ndarray:
    r"""The (N, N) matrix ``W`` of a mixer that is linear in its values: ``mixer(v) = W v``.

    Implements Eq. (4.9) of the book: feeding the identity matrix as the values returns
    ``W I = W`` in one call (its columns are the responses to unit impulses).

    Parameters
    ----------
    mixer : callable
        ``v -> y`` with ``v`` of shape (N, c) and ``y`` of the same shape, linear in ``v`` for
        fixed data (e.g. ``lambda v: softmax_attention(q, k, v)``).
    n : int
        The sequence length N.
    check_linear : bool
        Verify ``mixer(v) == W v`` on a fixed test column; a nonlinear mixer raises ValueError.

    Returns
    -------
    W : ndarray, shape (N, N)
        Real if the mixer returns real values, complex otherwise.

    Examples
    --------
    >>> W = materialize(lambda v: np.cumsum(v, axis=-2), 3)  # a running sum is linear in v
    >>> W.tolist()
    [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    """
    n = _check_mixer(mixer, n)
    check_linear = as_bool(check_linear, "check_linear")
    W = _probe(mixer, np.eye(n), n)  # W = mixer(I): column j is the response to e_j
    if check_linear:
        _check_linear(mixer, W, n)
    return W


def materialize_loop(mixer: Callable, n: int, *, check_linear: bool = True) -> np.ndarray:
    """Loop twin of :func:`materialize`: one unit impulse ``e_j`` at a time (Eq. (4.9)).

    Examples
    --------
    >>> mixer = lambda v: np.cumsum(v, axis=-2)
    >>> bool(np.array_equal(materialize_loop(mixer, 4), materialize(mixer, 4)))
    True
    """
    n = _check_mixer(mixer, n)
    check_linear = as_bool(check_linear, "check_linear")
    cols = []
    for j in range(n):
        e = np.zeros((n, 1))
        e[j, 0] = 1.0  # the unit impulse at position j
        cols.append(_probe(mixer, e, n)[:, 0])  # column j of W
    W = np.stack(cols, axis=1)
    if check_linear:
        _check_linear(mixer, W, n)
    return W


def lag_profile(W) -> tuple[np.ndarray, np.ndarray]:
    r"""Diagonal-averaged lag profile ``h_ℓ = mean_i W_{i, i−ℓ}`` of an (N, N) mixing matrix.

    Implements Eq. (4.10) of the book. With ``y_i = Σ_j W_ij v_j`` and lag ``ℓ = i − j``, a
    Toeplitz (shift-invariant) ``W_ij = h_{i−j}`` is the convolution ``y_i = Σ_ℓ h_ℓ v_{i−ℓ}``
    and this returns its kernel exactly. For any other ``W``, ``h_ℓ`` is the mean over the
    N − |ℓ| entries of diagonal ℓ, i.e. over the rows that reach lag ℓ. It is not the average
    row: for a causal row-stochastic ``W``, ``Σ_ℓ h_ℓ`` can exceed 1 because early rows (few
    keys, large weights) enter only the short-lag means. The zero-padded average row is
    ``h_ℓ (N − |ℓ|)/N``; its sum is 1 for any row-stochastic ``W`` (chapter 4, §4.4).
    ℓ > 0 looks back (the past), ℓ < 0 looks ahead.

    Parameters
    ----------
    W : array_like, shape (N, N)

    Returns
    -------
    lags : ndarray of int, shape (2N − 1,)
        ℓ = −(N−1), …, N−1.
    h : ndarray, shape (2N − 1,)

    Examples
    --------
    >>> lags, h = lag_profile(np.tril(0.5 ** np.subtract.outer(np.arange(4), np.arange(4)).clip(0)))
    >>> lags.tolist(), h.tolist()  # a Toeplitz matrix: its own diagonals
    ([-3, -2, -1, 0, 1, 2, 3], [0.0, 0.0, 0.0, 1.0, 0.5, 0.25, 0.125])
    """
    W = as_array(W, "W")
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"W: expected a square matrix (N, N), got shape {W.shape}")
    n = W.shape[0]
    lags = np.arange(-(n - 1), n)
    h = np.array([np.diagonal(W, offset=-ell).mean() for ell in lags])  # diagonal i − j = ℓ
    return lags, h


def frequency_response(W, omega=None, *, n_freqs: int = 512) -> tuple[np.ndarray, np.ndarray]:
    r"""DTFT ``H(ω) = Σ_ℓ h_ℓ e^{−iωℓ}`` of the lag profile of a mixing matrix.

    Implements Eq. (4.10) of the book. For a Toeplitz mixer this is its exact frequency
    response: ``v_j = e^{iωj}`` gives ``y_i = H(ω) e^{iωi}`` (away from the edges).

    Parameters
    ----------
    W : array_like, shape (N, N)
    omega : array_like, optional
        Frequencies in radians per sample; default ``n_freqs`` points on [0, π].
    n_freqs : int
        Number of default frequencies.

    Returns
    -------
    omega : ndarray, shape (F,)
    H : ndarray of complex, shape (F,)

    Examples
    --------
    >>> W = np.eye(4)  # the identity mixer passes every frequency
    >>> omega, H = frequency_response(W, np.array([0.0, np.pi / 2, np.pi]))
    >>> np.abs(H).round(12).tolist()
    [1.0, 1.0, 1.0]
    """
    lags, h = lag_profile(W)
    if omega is None:
        omega = np.linspace(0.0, np.pi, int(n_freqs))
    omega = as_real_array(omega, "omega", ndim=1)
    H = np.exp(-1j * np.outer(omega, lags)) @ h  # Σ_ℓ h_ℓ e^{−iωℓ}
    return omega, H


# ---------------------------------------------------------------------------------------------
# Sliding windows and ALiBi, Eq. (16.16)
# ---------------------------------------------------------------------------------------------


def alibi_geometric_slopes(n_heads: int) -> np.ndarray:
    r"""ALiBi's head slopes: the geometric sequence ``m_h = 2^{−8h/H}``, h = 1 … H.

    The slopes of the bias of Eq. (16.16) of the book (Press et al. 2022, §3): for H a power of two the slopes start at ``2^{−8/H}`` with that
    ratio; otherwise the slopes of the largest power of two ``P < H`` are followed by every
    other slope of ``2P`` (the paper's recipe for other head counts).

    Returns
    -------
    m : ndarray, shape (n_heads,)

    Examples
    --------
    >>> alibi_geometric_slopes(8).tolist()  # H = 8: 2^{-1}, 2^{-2}, ..., 2^{-8}
    [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625]
    >>> np.log2(alibi_geometric_slopes(6)).tolist()  # H = 6: the 4-head slopes, then every other 8-head slope
    [-2.0, -4.0, -6.0, -8.0, -1.0, -3.0]
    """
    n = as_int(n_heads, "n_heads", 1)
    p = 1 << (n.bit_length() - 1)  # largest power of two <= H

    def geometric(h: int) -> np.ndarray:
        return 2.0 ** (-8.0 * np.arange(1, h + 1) / h)

    if p == n:
        return geometric(n)
    return np.concatenate([geometric(p), geometric(2 * p)[0::2][: n - p]])


def _check_biased(q, k, v, mask, causal, scale, return_weights, window, alibi_slopes):
    """Validate the inputs of a windowed/ALiBi call; return them with the allowed set and the bias."""
    q, k, v, batch = _check_qkv(q, k, v)
    n, m = q.shape[-2], k.shape[-2]
    mask = _check_mask(mask, causal, batch, n, m)
    as_bool(return_weights, "return_weights")
    lag = np.abs(np.arange(n)[:, None] - np.arange(m)[None, :])  # |i − j|
    allowed = np.ones((n, m), dtype=bool) if mask is None else mask
    if causal:
        allowed = allowed & (np.arange(m)[None, :] <= np.arange(n)[:, None])
    if window is not None:
        w = as_int(window, "window", 1)
        allowed = allowed & (lag < w)
        empty = ~allowed.any(axis=-1)
        if np.any(empty):
            idx = tuple(int(i) for i in np.argwhere(empty)[0])
            raise ValueError(f"window: query row {idx} has no allowed key within the window of {w} (N = {n}, M = {m})")
    slopes = None
    if alibi_slopes is not None:
        slopes = as_real_array(alibi_slopes, "alibi_slopes")
        if np.any(slopes < 0):
            raise ValueError(f"alibi_slopes: expected slopes >= 0, got minimum {slopes.min():.6g}")
        try:
            batch = np.broadcast_shapes(batch, slopes.shape)
        except ValueError:
            raise ValueError(f"alibi_slopes: shape {slopes.shape} does not broadcast to the batch axes {batch}") from None
    batch = np.broadcast_shapes(batch, allowed.shape[:-2])
    return q, k, v, allowed, lag, slopes, batch, _scale(scale, q.shape[-1])


def _softmax_biased(q, k, v, mask, causal, scale, return_weights, window, alibi_slopes):
    """softmax(scale q kᵀ − m |i − j|) v over the allowed (mask ∧ causal ∧ window) keys, Eq. (16.16)."""
    q, k, v, allowed, lag, slopes, batch, c = _check_biased(q, k, v, mask, causal, scale, return_weights, window, alibi_slopes)
    s = np.matmul(q * c, np.swapaxes(k, -1, -2))  # s_ij = scale q_i·k_j
    if slopes is not None:
        s = s - slopes[..., None, None] * lag  # + ALiBi bias −m_h |i − j|
    s = np.where(allowed, np.broadcast_to(s, (*batch, *s.shape[-2:])), -np.inf)
    s -= s.max(axis=-1, keepdims=True)  # row max over the allowed keys (finite: every row has one)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)  # A_ij
    y = np.matmul(s, v)
    return (y, s) if return_weights else y


def _softmax_biased_loop(q, k, v, mask, causal, scale, return_weights, window, alibi_slopes):
    q, k, v, allowed, lag, slopes, batch, c = _check_biased(q, k, v, mask, causal, scale, return_weights, window, alibi_slopes)
    n, m, dv = q.shape[-2], k.shape[-2], v.shape[-1]
    qb = np.broadcast_to(q, (*batch, n, q.shape[-1]))
    kb = np.broadcast_to(k, (*batch, m, k.shape[-1]))
    vb = np.broadcast_to(v, (*batch, m, dv))
    ab = np.broadcast_to(allowed, (*batch, n, m))
    sb = None if slopes is None else np.broadcast_to(slopes, batch)
    y = np.zeros((*batch, n, dv))
    A = np.zeros((*batch, n, m))
    for b in np.ndindex(*batch):
        for i in range(n):
            keys = [j for j in range(m) if ab[b][i, j]]  # mask ∧ causal ∧ |i − j| < window
            scores = {}
            for j in keys:
                scores[j] = c * float(np.dot(qb[b][i], kb[b][j]))  # s_ij = scale q_i·k_j
                if sb is not None:
                    scores[j] -= float(sb[b]) * abs(i - j)  # ALiBi: − m |i − j|
            top = max(scores.values())
            z = sum(math.exp(s - top) for s in scores.values())
            for j in keys:
                A[b][i, j] = math.exp(scores[j] - top) / z
                y[b][i] += A[b][i, j] * vb[b][j]
    return (y, A) if return_weights else y


# ---------------------------------------------------------------------------------------------
# FlashAttention's tiled online softmax, Eq. (16.15)
# ---------------------------------------------------------------------------------------------


def _check_flash(q, k, v, causal, scale, block_q, block_k, return_lse):
    q, k, v, batch = _check_qkv(q, k, v)
    _check_mask(None, causal, batch, q.shape[-2], k.shape[-2])  # validates ``causal``
    bq = as_int(block_q, "block_q", 1)
    bk = as_int(block_k, "block_k", 1)
    as_bool(return_lse, "return_lse")
    return q * _scale(scale, q.shape[-1]), k, v, batch, bq, bk


@guard_overflow()
def flash_attention(q, k, v, *, causal=False, scale=None, block_q=64, block_k=64, return_lse=False):
    r"""Softmax attention by FlashAttention's tiled online softmax (forward pass).

    Implements Eq. (16.15) of the book (Dao et al. 2022, FlashAttention, Algorithm 1; Milakov &
    Gimelshein 2018, online normalizer). Equal to :func:`softmax_attention` to round-off
    (about 1e-15); it exists for clarity — the algorithm GPU kernels run, written out — not
    for speed in NumPy.

    Parameters
    ----------
    q : array_like, shape (..., N, d)
    k : array_like, shape (..., M, d)
    v : array_like, shape (..., M, dv)
    causal : bool
        Forbid keys j > i (top-left aligned, as :func:`softmax_attention`).
    scale : float >= 0, optional
        Default ``1/sqrt(d)``.
    block_q, block_k : int >= 1
        Tile sizes B_r (query rows) and B_c (key columns); N and M need not be multiples.
    return_lse : bool
        Also return the row log-sum-exp ``ℓ_i = m_i + log z_i`` (what the backward pass
        stores to recompute the weights).

    Returns
    -------
    y : ndarray, shape (..., N, dv)
    lse : ndarray, shape (..., N)
        Only if ``return_lse``.

    Notes
    -----
    The keys are visited one tile at a time. For each query row a running max ``m``, a running
    normalizer ``z`` and an unnormalized output ``o`` are kept; a new tile with logits ``s``
    updates them as

    ``m' = max(m, max_j s_j)``,  ``z' = e^{m−m'} z + Σ_j e^{s_j−m'}``,
    ``o' = e^{m−m'} o + Σ_j e^{s_j−m'} v_j``,

    and ``y = o / z`` at the end. Every exponent is ≤ 0 and the rescaling ``e^{m−m'}`` makes
    the result independent of the tiling. Here all query tiles are processed at once (one
    batched product per key tile); :func:`flash_attention_loop` walks the (query tile, key
    tile) grid and skips the tiles above the diagonal when ``causal``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 7, 4))
    >>> y, lse = flash_attention(q, k, v, causal=True, block_q=2, block_k=3, return_lse=True)  # 7 is no multiple of 2 or 3
    >>> bool(np.allclose(y, softmax_attention(q, k, v, causal=True)))
    True
    >>> logits = np.where(np.tri(7, dtype=bool), q @ k.T / 2.0, -np.inf)  # scale 1/sqrt(4)
    >>> bool(np.allclose(lse, np.log(np.exp(logits).sum(axis=-1))))
    True
    """
    q, k, v, batch, bq, bk = _check_flash(q, k, v, causal, scale, block_q, block_k, return_lse)
    n, m = q.shape[-2], k.shape[-2]
    nq = -(-n // bq)
    qt = np.zeros((*batch, nq * bq, q.shape[-1]))
    qt[..., :n, :] = q
    qt = qt.reshape(*batch, nq, bq, q.shape[-1])  # query tiles (zero rows pad the last one)
    rows = np.arange(nq * bq).reshape(nq, bq, 1)  # query index i of each tile row
    mx = np.full((*batch, nq, bq, 1), -np.inf)  # running max m_i
    z = np.zeros((*batch, nq, bq, 1))  # running normalizer z_i
    o = np.zeros((*batch, nq, bq, v.shape[-1]))  # unnormalized output o_i
    for j0 in range(0, m, bk):  # key tiles
        kj, vj = k[..., None, j0 : j0 + bk, :], v[..., None, j0 : j0 + bk, :]
        s = np.matmul(qt, np.swapaxes(kj, -1, -2))  # (..., nq, bq, bk) logits of this tile
        if causal:
            s = np.where(np.arange(j0, min(m, j0 + bk)) > rows, -np.inf, s)  # key j after query i
        m_new = np.maximum(mx, s.max(axis=-1, keepdims=True))
        # rows that have seen no allowed key yet keep m = −inf; shift them by 0 instead
        shift = np.where(np.isfinite(m_new), m_new, 0.0)
        p = np.exp(s - shift)  # e^{s_ij − m'_i}
        alpha = np.exp(mx - shift)  # e^{m_i − m'_i}: the rescaling of what was accumulated
        z = alpha * z + p.sum(axis=-1, keepdims=True)
        o = alpha * o + np.matmul(p, vj)
        mx = m_new
    y = (o / z).reshape(*batch, nq * bq, v.shape[-1])[..., :n, :]
    if not return_lse:
        return y
    lse = (mx + np.log(z)).reshape(*batch, nq * bq)[..., :n]
    return y, lse


@guard_overflow()
def flash_attention_loop(q, k, v, *, causal=False, scale=None, block_q=64, block_k=64, return_lse=False):
    """Loop twin of :func:`flash_attention`: the (query tile, key tile) grid of Algorithm 1, row by row.

    Tiles strictly above the causal diagonal are skipped, as GPU kernels do (Eq. (16.15)).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 5, 2))
    >>> y, lse = flash_attention_loop(q, k, v, causal=True, block_q=2, block_k=2, return_lse=True)
    >>> y2, lse2 = flash_attention(q, k, v, causal=True, block_q=2, block_k=2, return_lse=True)
    >>> bool(np.allclose(y, y2)), bool(np.allclose(lse, lse2))
    (True, True)
    """
    q, k, v, batch, bq, bk = _check_flash(q, k, v, causal, scale, block_q, block_k, return_lse)
    n, m, dv = q.shape[-2], k.shape[-2], v.shape[-1]
    qb = np.broadcast_to(q, (*batch, n, q.shape[-1]))
    kb = np.broadcast_to(k, (*batch, m, k.shape[-1]))
    vb = np.broadcast_to(v, (*batch, m, dv))
    y = np.zeros((*batch, n, dv))
    lse = np.zeros((*batch, n))
    for b in np.ndindex(*batch):
        for i0 in range(0, n, bq):  # query tile
            for i in range(i0, min(n, i0 + bq)):
                mx, z, o = -math.inf, 0.0, np.zeros(dv)
                for j0 in range(0, m, bk):  # key tile
                    if causal and j0 > min(n, i0 + bq) - 1:
                        break  # the whole tile lies after every query of this query tile
                    js = [j for j in range(j0, min(m, j0 + bk)) if not (causal and j > i)]
                    if not js:
                        continue
                    s = [float(np.dot(qb[b][i], kb[b][j])) for j in js]  # logits of the tile
                    m_new = max(mx, max(s))  # running max
                    alpha = math.exp(mx - m_new)  # rescale what was accumulated (0 for the first tile)
                    p = [math.exp(sj - m_new) for sj in s]
                    z = alpha * z + sum(p)  # running normalizer
                    o = alpha * o + sum(pj * vb[b][j] for pj, j in zip(p, js))  # running output
                    mx = m_new
                y[b][i] = o / z
                lse[b][i] = mx + math.log(z)
    return (y, lse) if return_lse else y


# The backward pass (vector–Jacobian products) lives in refimpl/_vjp.py, re-exported here.
from ._vjp import softmax_attention_vjp, softmax_attention_vjp_loop  # noqa: E402
