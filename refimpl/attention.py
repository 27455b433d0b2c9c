r"""Scaled dot-product and multi-head attention, read as a data-dependent FIR filter.

Chapter 4 of the book (``notebooks/04-attention-as-filter.ipynb``) derives every formula here.

Scaled dot-product attention (Vaswani et al. 2017, Eq. 1) maps queries, keys and values to

.. math::  Y = \operatorname{softmax}\!\big(\mathrm{scale}\cdot QK^\top + \log\mathrm{mask}\big)\,V,
           \qquad \mathrm{scale} = 1/\sqrt d .                                   \tag{4.1}

Row ``i`` of the weight matrix ``A`` is a matched filter (the correlation of the template
``q_i`` with every "received" key ``k_j``) passed through a softmax: non-negative weights that
sum to one, so ``y_i`` is a convex combination of the values — an FIR filter over positions
whose coefficients depend on the data.

From FlashAttention's layout (for a kernel under test)
------------------------------------------------------
``flash_attn_func(q, k, v, softmax_scale, causal, window_size, softcap, alibi_slopes)`` takes
(batch, seqlen, heads, d); refimpl takes the heads before the sequence, (batch, heads, seqlen, d):
with ``t = lambda a: np.moveaxis(a, 1, 2)``, its output is
``t(flash_attention(t(q), t(k), t(v), causal=causal, causal_alignment="bottom_right", ...))``
(its causal mask is aligned bottom-right when the lengths differ); its ``window_size`` is
``window`` as that parameter of :func:`softmax_attention` says; fewer key/value heads
than query heads is ``grouped_heads=True``; ``alibi_slopes`` and ``softcap`` mean the same;
its ``softmax_lse`` (batch, heads, seqlen) is refimpl's ``lse`` (+∞ where refimpl's is −∞, a
row that sees no key) — except with causal ALiBi and no left window bound: there
FlashAttention-2 adds ``slope · j`` to the logits and drops the row's term ``−slope · (i + o)``,
which the softmax does not see (the output is the same), so its ``softmax_lse`` is refimpl's
``lse`` plus ``slope · (i + o)`` (``o = M − N``). With a left window bound its kernel adds
``−slope · |i + o − j|`` as refimpl does, and no shift applies.

Glossary (code name → symbol in the book / Vaswani et al. 2017)
---------------------------------------------------------------
``q``        Q, shape (..., N, d): N queries of dimension d (d_k in the paper).
``k``        K, shape (..., M, d): M keys.
``v``        V, shape (..., M, dv): M values of dimension dv (d_v).
``scale``    1/τ: the inverse temperature; the paper's 1/√d_k is the default.
``mask``     boolean, broadcastable to (..., N, M): **True = may attend** (the convention of
             ``torch.nn.functional.scaled_dot_product_attention``'s boolean ``attn_mask``).
``causal``   key j may be attended by query i only if j ≤ i + o (``o = 0`` top-left, as torch's
             ``is_causal``; ``o = M − N`` with ``causal_alignment="bottom_right"``, the KV-cache case).
``window``   w: key j allowed only if |i + o − j| < w (sliding-window attention).
``softcap``  c: logits s → c·tanh(s/c) (Gemma 2 soft-capping), Eq. (4.14).
``H, H_kv``  query heads and key/value heads (axis −3 with ``grouped_heads``); G = H / H_kv, query
             head h reads key/value head h // G (grouped-query attention; H_kv = 1: multi-query).
``lse``      ℓ_i = log Σ_{j allowed} e^{s_ij}, the row log-sum-exp (log partition function), Eq. (4.15).
``A``        the attention weights, shape (..., N, M), rows sum to 1 (Eq. (4.2)).
``x``        X, shape (..., N, d_model): the token sequence of multi-head self-attention.
``w_q, w_k``  W^Q, W^K, shape (d_model, h·d_k): the h per-head projections side by side
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

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from . import _blocking
from ._blocking import MIN_BLOCK_ROWS, per_block
from ._validate import (
    _to_array,
    as_array,
    as_bool,
    as_int,
    as_positive_scalar,
    as_real_array,
    check_qk,
    check_qkv,
    guard_overflow,
)

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
    "flash_attn_func",
    "flash_attn_func_loop",
    "flash_attn_varlen_func",
    "flash_attn_varlen_func_loop",
    "flash_attn_func_vjp",
    "flash_attn_func_vjp_loop",
    "flash_attn_varlen_func_vjp",
    "flash_attn_varlen_func_vjp_loop",
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
    arr = _to_array(mask, "mask")
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


def _scale(scale, d: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(d) if d > 0 else 1.0
    return as_positive_scalar(scale, "scale", strict=False)


# ---------------------------------------------------------------------------------------------
# Scaled dot-product attention, Eqs. (4.1)-(4.3)
# ---------------------------------------------------------------------------------------------


#: Where the causal diagonal (and the window and ALiBi distance) sits when N != M.
_ALIGNMENTS = ("top_left", "bottom_right")


class _Problem(NamedTuple):
    """A validated attention call, with grouped heads already split into (H_kv, G) batch axes."""

    q: np.ndarray  # (..., N, d), not yet scaled
    k: np.ndarray  # (..., M, d)
    v: np.ndarray  # (..., M, dv)
    mask: np.ndarray | None  # bool, broadcastable to (*batch, N, M); True = may attend
    causal: bool
    offset: int  # query i is aligned with key i + offset: 0 (top-left) or M − N (bottom-right)
    window: int | None
    slopes: np.ndarray | None  # ALiBi slopes, broadcastable to batch
    softcap: float | None
    scale: float
    batch: tuple  # broadcast batch axes (with grouped heads: ..., H_kv, G)
    heads: tuple | None  # (H, H_kv) with grouped heads, else None


def _split_heads(x: np.ndarray, name: str, h: int, h_kv: int, core: int) -> np.ndarray:
    """View the head axis (the one before the ``core`` trailing axes) of size H as (H_kv, G).

    Query head h lands at (h // G, h % G): head h uses key/value head h // G. A head axis of
    size 1 (or none) broadcasts over all heads.
    """
    if x.ndim <= core:
        return x
    axis = x.ndim - core - 1
    if x.shape[axis] == h:
        return x.reshape(*x.shape[:axis], h_kv, h // h_kv, *x.shape[axis + 1 :])
    if x.shape[axis] == 1:
        return np.expand_dims(x, axis)
    raise ValueError(f"{name}: expected {h} or 1 entries on the head axis (axis {axis - x.ndim}), got shape {x.shape}")


def _prepare(q, k, v, mask, causal, scale, window, alibi_slopes, causal_alignment, softcap, grouped_heads) -> _Problem:
    """Validate every option of the softmax-attention family and normalize grouped heads."""
    causal = as_bool(causal, "causal")
    grouped = as_bool(grouped_heads, "grouped_heads")
    if not isinstance(causal_alignment, str):
        raise TypeError(f"causal_alignment: expected 'top_left' or 'bottom_right', got {type(causal_alignment).__name__}")
    if causal_alignment not in _ALIGNMENTS:
        raise ValueError(f"causal_alignment: expected 'top_left' or 'bottom_right', got {causal_alignment!r}")
    heads = None
    if grouped:
        q, k, v = (as_real_array(x, name, copy=False) for x, name in ((q, "q"), (k, "k"), (v, "v")))
        for arr, name, what in ((q, "q", "(..., H, N, d)"), (k, "k", "(..., H_kv, M, d)"), (v, "v", "(..., H_kv, M, dv)")):
            if arr.ndim < 3:
                raise ValueError(f"{name}: grouped_heads needs a head axis, expected shape {what}, got shape {arr.shape}")
        h, h_kv = q.shape[-3], k.shape[-3]
        if h == 0:
            raise ValueError(f"q: grouped_heads: expected at least one head on axis -3, got shape {q.shape}")
        if v.shape[-3] != h_kv:
            raise ValueError(f"v: expected the H_kv = {h_kv} heads of k on axis -3, got shape {v.shape}")
        if h_kv == 0 or h % h_kv:
            raise ValueError(
                f"k: grouped_heads: the H = {h} query heads (axis -3 of q) must be a multiple of the H_kv = {h_kv} "
                f"key/value heads (axis -3 of k), got shapes q {q.shape}, k {k.shape}"
            )
        heads = (h, h_kv)
        q = q.reshape(*q.shape[:-3], h_kv, h // h_kv, *q.shape[-2:])  # query head h -> (h // G, h % G)
        k, v = k[..., None, :, :], v[..., None, :, :]  # (..., H_kv, 1, M, .): shared by the G heads of a group
    # no defensive copies: nothing in the family writes to q, k or v (three N·d copies would cost
    # about a tenth of a call at N = 1024, d = 64, mostly in page faults of fresh memory)
    q, k, v, batch = check_qkv(q, k, v, copy=False)
    n, m = q.shape[-2], k.shape[-2]
    slopes = None
    if alibi_slopes is not None:
        slopes = as_real_array(alibi_slopes, "alibi_slopes")
        if np.any(slopes < 0):
            raise ValueError(f"alibi_slopes: expected slopes >= 0, got minimum {slopes.min():.6g}")
        if heads is not None:
            slopes = _split_heads(slopes, "alibi_slopes", *heads, core=0)
        try:
            batch = np.broadcast_shapes(batch, slopes.shape)
        except ValueError:
            raise ValueError(f"alibi_slopes: shape {slopes.shape} does not broadcast to the batch axes {batch}") from None
    if mask is not None:
        mask = _to_array(mask, "mask")
        if mask.dtype != np.bool_:
            raise TypeError(f"mask: expected a boolean array (True = may attend), got dtype {mask.dtype}")
        if heads is not None:
            mask = _split_heads(mask, "mask", *heads, core=2)
        target = (*batch, n, m)
        try:
            ok = np.broadcast_shapes(mask.shape, target) == target
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"mask: expected a shape broadcastable to (..., N, M) = {target} (N from q, M from k), got shape {mask.shape}"
            )
    w = None if window is None else as_int(window, "window", 1)
    cap = None if softcap is None else as_positive_scalar(softcap, "softcap")
    offset = 0 if causal_alignment == "top_left" else m - n
    return _Problem(q, k, v, mask, causal, offset, w, slopes, cap, _scale(scale, q.shape[-1]), batch, heads)


def _merge_heads(x: np.ndarray, p: _Problem, core: int) -> np.ndarray:
    """Undo :func:`_split_heads` on an output: (..., H_kv, G, core...) -> (..., H, core...)."""
    if p.heads is None:
        return x
    lead = x.ndim - core - 2
    return x.reshape(*x.shape[:lead], p.heads[0], *x.shape[lead + 2 :])


def _outputs(p: _Problem, y, A, lse, return_weights: bool, return_lse: bool):
    out = (_merge_heads(y, p, 2),)
    if return_weights:
        out += (_merge_heads(A, p, 2),)
    if return_lse:
        out += (_merge_heads(lse, p, 1),)
    return out[0] if len(out) == 1 else out


def _key_range(p: _Problem, i0: int, i1: int, m: int) -> tuple[int, int]:
    """The keys [lo, hi) that any query row i0 … i1−1 may see under ``causal`` and ``window``.

    Key tiles outside it are fully masked for the whole block and are never multiplied.
    """
    lo, hi = 0, m
    last = i1 - 1 + p.offset  # the key aligned with the block's last query
    if p.causal:
        hi = min(hi, last + 1)  # j <= i + offset
    if p.window is not None:
        hi = min(hi, last + p.window)  # j < i + offset + w
        lo = max(lo, i0 + p.offset - p.window + 1)  # j > i + offset − w
    return lo, hi


def _bias_and_mask(s, p: _Problem, mask, slopes, i0: int, i1: int, lo: int, keep_tanh: bool = False):
    """In place on the logits block ``s`` (rows i0 … i1−1, keys lo …): soft-cap, ALiBi, masks.

    The order is that of the kernels: ``c · tanh(s / c)``, then the bias ``− m |i + offset − j|``,
    then −∞ wherever the mask, the causal triangle or the window forbids (Eq. (4.14)). Returns
    ``tanh(s / c)`` with ``keep_tanh`` and a soft cap (the backward pass's ``∂T/∂S = 1 − tanh²``),
    else None.
    """
    tanh = _bias(s, p, slopes, i0, i1, lo, keep_tanh)
    _mask(s, p, mask, i0, i1, lo, -np.inf)
    return tanh


#: The refusal of a logit that overflowed (every form of the family, vectorized and loop alike).
_LOGIT_OVERFLOW = (
    "q, k, scale: a logit scale·q_i·k_j of a key the row may attend overflows float64, itself (|logit| > 1.8e308) "
    "or in the products that form it (scale·q_i, q_i·k_j, or terms of the dot product that cancel: inf − inf); "
    "rescale q, k or scale to moderate magnitudes"
)
#: A block whose logit bound b_i = ‖scale q_i‖ max_j ‖k_j‖ is at most this has only finite logits
#: (|s_ij| <= b_i, every partial sum of the dot product included), and is not checked.
_FINITE_BOUND = 1e300


def _logit(scale: float, qi, kj) -> float:
    """The logit ``scale · q_i · k_j`` of the loop twins: ``scale · (q_i · k_j)``, or, where that is
    not finite (``q_i · k_j`` overflowed), ``(scale q_i) · k_j``, the order the vectorized forms use
    first. So the twins agree on which logits they can form: a logit is not finite only when both
    orders overflow (the logit itself, or products that form it in both orders, e.g. inf − inf).
    """
    s = scale * float(np.dot(qi, kj))
    if math.isfinite(s):
        return s
    with np.errstate(over="ignore", invalid="ignore"):
        other = float(np.dot(scale * qi, kj))
    return other if math.isfinite(other) else s


def _check_logits(s) -> None:
    """Refuse logits (a list of floats: the allowed keys of one row) of which one overflowed float64.

    An overflowed logit is not a number the softmax can use: −∞ from finite inputs looks like a
    forbidden key (a row of them would silently give ``y_i = 0``), +∞ or the NaN of inf − inf
    gives NaN, and a soft cap would turn either into ±c, a plausible-looking wrong weight. Each
    loop twin calls this on the logits it computes; the vectorized forms call
    :func:`_refuse_overflowed` on a block whose bound does not rule overflow out.
    """
    if not all(math.isfinite(x) for x in s):
        raise ValueError(_LOGIT_OVERFLOW)


def _refuse_overflowed(s, allowed: Callable[[np.ndarray], None], other: Callable[[], np.ndarray] | None = None) -> None:
    """In place on a block of raw logits ``s = (scale q) kᵀ``: form those that are not finite in the
    other order, ``other()`` = ``scale · (q kᵀ)`` (as :func:`_logit` does for the loop twins); refuse
    one that is not finite either way at an allowed key (:func:`_check_logits`); set those at
    forbidden keys to 0 (the mask removes them later).

    ``allowed(t)`` zeroes, in place, the entries of a float array shaped like ``s`` where the key
    is forbidden. Only blocks whose logit bound exceeds :data:`_FINITE_BOUND` are checked (one pass
    over the block, with extreme inputs only); ordinary inputs never reach this.
    """
    bad = ~np.isfinite(s)
    if bad.any() and other is not None:  # scale·q_i (or a term of (scale q_i)·k_j) overflowed: try scale·(q_i·k_j)
        with np.errstate(over="ignore", invalid="ignore"):
            s[bad] = other()[bad]
        bad = ~np.isfinite(s)
    if bad.any():
        t = bad.astype(float)
        allowed(t)
        if t.any():
            raise ValueError(_LOGIT_OVERFLOW)
        s[bad] = 0.0


def _bias(s, p: _Problem, slopes, i0: int, i1: int, lo: int, keep_tanh: bool = False):
    """The soft cap and ALiBi of :func:`_bias_and_mask`, in place on ``s``; returns ``tanh(s / c)`` or None."""
    tanh = None
    if p.softcap is not None:  # the logits are finite here (see _weights_block)
        with np.errstate(over="ignore"):  # s / c may overflow for a tiny cap: tanh(±inf) = ±1 exactly
            np.divide(s, p.softcap, out=s)
        np.tanh(s, out=s)
        if keep_tanh:
            tanh = s.copy()
        s *= p.softcap  # c · tanh(s / c)
    if slopes is not None:
        diag = np.arange(i0, i1)[:, None] + p.offset  # the key aligned with each query row
        s -= slopes[..., None, None] * np.abs(np.arange(lo, lo + s.shape[-1]) - diag)  # ALiBi: − m |i + offset − j|
    return tanh


def _mask(s, p: _Problem, mask, i0: int, i1: int, lo: int, fill: float) -> None:
    """``fill`` wherever the mask, the causal triangle or the window forbids key j to row i (in place).

    ``fill = −∞`` masks logits; ``fill = 0`` masks weights e^{s_ij} after the exponential: NumPy's
    ``exp`` takes a slow path for −∞ (measured: a block half −∞ took 3.7 times as long as one of
    ordinary numbers), so blocks whose logits are known to be moderate exponentiate first and
    zero the forbidden weights after (:func:`_attend`).
    """
    hi = lo + s.shape[-1]
    if p.causal:
        c0 = max(lo, i0 + p.offset + 1)  # keys before c0 are allowed for every row of the block
        if c0 < hi:  # key j after its query: j > i + offset
            np.copyto(s[..., c0 - lo :], fill, where=_later(i1 - i0, hi - c0, c0 - i0 - p.offset))
    if p.window is not None:
        c1 = min(hi, i1 + p.offset - p.window)  # keys from c1 on are recent enough for every row
        if c1 > lo:  # j <= i + offset − w
            np.copyto(s[..., : c1 - lo], fill, where=~_later(i1 - i0, c1 - lo, lo - i0 - p.offset + p.window))
        c0 = max(lo, i0 + p.offset + p.window)  # keys before c0 are near enough ahead for every row
        if c0 < hi:  # j >= i + offset + w
            np.copyto(s[..., c0 - lo :], fill, where=_later(i1 - i0, hi - c0, c0 - i0 - p.offset - p.window + 1))
    if mask is not None:
        np.copyto(s, fill, where=~mask[..., i0:i1, lo:hi])


@functools.lru_cache(maxsize=32)
def _later(rows: int, cols: int, shift: int) -> np.ndarray:
    """The read-only (rows, cols) boolean array ``[c + shift > r]``: the triangles of :func:`_mask`
    (the same few for every block of a problem, so made once)."""
    out = np.arange(cols) + shift > np.arange(rows)[:, None]
    out.flags.writeable = False
    return out


def _exp_rows(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``s ← e^{s − m_i}`` in place on a block of masked logits; returns ``m`` and ``z`` (Eq. (4.3)).

    ``m_i`` is the row max (−∞ for a row with no allowed key, which is shifted by 0 and keeps
    weights 0) and ``z_i = Σ_j e^{s_ij − m_i}`` (>= 1, or 1 for an empty row so that dividing by
    it is harmless).
    """
    mx = s.max(axis=-1, keepdims=True)  # m_i over the allowed keys; −∞ for a row with none
    empty = np.isneginf(mx)
    s -= np.where(empty, 0.0, mx) if empty.any() else mx  # log-sum-exp: every exponent <= 0
    np.exp(s, out=s)
    z = s.sum(axis=-1, keepdims=True)  # z_i = Σ_j e^{s_ij − m_i}
    z[empty] = 1.0  # an empty row: e = 0, so y_i = 0 and lse_i = −∞ + log 1
    return mx, z


def _batch_groups(batch: tuple, floats_per_element: int) -> tuple[list, int]:
    """Cut the batch axes into groups of about ``per_block(floats_per_element)`` elements.

    Returns index tuples (ints for the outer axes, a slice for one axis, the inner axes whole)
    and the size of the largest group. Small problems go in one group (one batched product);
    large ones one batch element at a time, so that every product has at least a full block
    of query rows.
    """
    fit = per_block(floats_per_element)
    inner, a = 1, len(batch)
    while a > 0 and inner * batch[a - 1] <= fit:
        inner *= batch[a - 1]
        a -= 1
    if a == 0:
        return [()], inner
    step = max(1, fit // inner)
    groups = [
        (*outer, slice(s0, min(batch[a - 1], s0 + step)))
        for outer in np.ndindex(*batch[: a - 1])
        for s0 in range(0, batch[a - 1], step)
    ]
    return groups, step * inner


#: A block with a normalizer z_i below e^{−_LOW} (a row that sees no key, or whose logits are all
#: below about −_LOW) is recomputed with the exact row max (see :func:`_attend`): unshifted, its
#: weights would lose digits to subnormal numbers. Isotropic AFA's blocks use the same threshold.
_LOW = 256.0
_TINY_Z = math.exp(-_LOW)
#: problems with at least this many logits (over all blocks and batch entries) run their blocks in
#: threads (see _attend); smaller ones lose more to handing work to threads than they gain (measured,
#: d = 64: N = 512 non-causal 1.3 ms in one thread, 1.45 ms in two; N = 768 2.6 -> 2.4 ms, causal
#: 2.7 -> 2.0; N = 1024 4.4 -> 3.7, causal 3.7 -> 2.9)
_THREADED_LOGITS = 1 << 18
#: blocks at least, and the fewest rows of a block, when the blocks run in threads: four blocks for
#: each of two threads (the cut must not depend on the thread count, see _attend)
_MIN_BLOCKS, _THREAD_ROWS = 8, 64

#: The largest unshifted exponent before the sums of a block could overflow (see :func:`_attend`).
_EXP_SAFE = 700.0


def _attend(p: _Problem, return_weights: bool, return_lse: bool):
    """``y = softmax(scale q kᵀ + bias) v`` by blocks of query rows, over the allowed keys only.

    Eq. (4.3) shifts the exponents by the row max so that none overflows; any shift with that
    property gives the same softmax, including no shift at all when the logits are known to be
    moderate. A bound on every row's logits is known before the product:
    ``s_ij <= b_i = ‖scale q_i‖ · max_j ‖k_j‖`` (Cauchy–Schwarz; ALiBi and the masks only lower
    the logits, a soft cap keeps them below c). In a block where every ``b_i`` is at most
    ``E = 700 − log M − log(1 + max |v|)``, neither ``e^{s_ij}`` nor the sums
    ``z_i = Σ_j e^{s_ij}`` and ``Σ_j e^{s_ij} v_j`` can overflow, so the block takes
    ``e_ij = e^{s_ij}`` unshifted: of the four passes over the logits (max, subtract, exp,
    sum) the max and the subtraction are gone (about 10–15% of the time at N = 2048 … 8192),
    and the row sums are a product with a vector of ones (BLAS, which uses both cores; NumPy's
    ``sum`` uses one). Other blocks — large logits, or a row whose ``z_i`` falls below
    e^{−_LOW} (it sees no key, or all its logits are very negative) — are computed with the
    exact row max (:func:`_weights_block`). ``ℓ_i = log z_i`` in an unshifted block and
    ``m_i + log z_i`` in a shifted one: the same log-sum-exp.

    Without weights, ``y`` is normalized instead of ``A`` (``y_i = Σ_j e_ij v_j / z_i``) and the
    logits live in a reused workspace of about one block per thread; with weights, each block is
    written into ``A`` directly. Problems of at least ``_THREADED_LOGITS`` (2^18) logits run their
    blocks in :data:`refimpl._blocking.THREADS` threads, largest first, with BLAS held to one
    thread, in at least ``_MIN_BLOCKS`` blocks; the blocks and that choice follow from the sizes
    alone, so the result is bitwise the same with one thread or many. A row with no allowed key gets
    ``y_i = 0``, ``A_i = 0``, ``lse_i = −∞``.
    """
    n, m, d, dv = p.q.shape[-2], p.k.shape[-2], p.q.shape[-1], p.v.shape[-1]
    batch = p.batch
    qs = p.q * p.scale  # scale q (N·d products), not the N·M logits
    q = np.broadcast_to(qs, (*batch, n, d))
    q_raw = np.broadcast_to(p.q, (*batch, n, d))  # for the logits scale·(q_i·k_j) where scale·q_i overflowed
    k = np.broadcast_to(p.k, (*batch, m, d))
    v = np.broadcast_to(p.v, (*batch, m, dv))
    bound, e_max = _unshifted(p, qs)
    # the bound before the soft cap decides whether a block's logits can have overflowed (_weights_block)
    raw = bound if p.softcap is None else np.broadcast_to(_logit_bound(p, qs), bound.shape)
    ones = np.ones((m, 1))  # z = e 1: the row sums as a BLAS product
    mask = None if p.mask is None else np.broadcast_to(p.mask, (*batch, n, m))
    slopes = None if p.slopes is None else np.broadcast_to(p.slopes, batch)
    y = np.empty((*batch, n, dv))
    lse = np.empty((*batch, n)) if return_lse else None
    rows_min = min(n, MIN_BLOCK_ROWS)  # as many rows as fill the budget, never fewer than this
    groups, size = _batch_groups(batch, rows_min * m)
    rows = min(n, max(rows_min, per_block(size * m)))

    def cut(rows):  # the blocks (batch group, first row, keys), the largest first, and their logits
        blocks = [(g, i0, *_key_range(p, i0, min(n, i0 + rows), m)) for g in groups for i0 in range(0, n, rows)]
        blocks.sort(key=lambda b: b[2] - b[3])
        return blocks, size * sum((min(n, i0 + rows) - i0) * max(0, hi - lo) for _, i0, lo, hi in blocks)

    blocks, logits = cut(rows)
    # Large problems: the blocks in threads that take them in turn, each thread's products on one
    # BLAS thread (_blocking.one_thread_blas), so that the exponentials, which NumPy computes on
    # the calling thread, run on every core too; at least _MIN_BLOCKS blocks, so that no thread
    # waits long for the last one. Whether a problem is large, and its blocks, follow from the
    # sizes alone, not from the number of threads (with one, the same blocks run one after the
    # other, BLAS still on one thread): the result is bitwise the same for any thread count.
    threaded = logits >= _THREADED_LOGITS and _blocking.blas_threads_settable()
    if threaded and len(blocks) < _MIN_BLOCKS:
        rows = max(_THREAD_ROWS, -(-n // _MIN_BLOCKS))
        blocks, logits = cut(rows)
    # A: zeros where no block writes (keys outside a block's range: the causal triangle, the window); where every
    # block spans all keys, the blocks write every entry (forbidden ones as 0) and A needs no zeroing pass first
    # (np.zeros of recycled memory is a memset on one core: 0.4 ms of 5.9 at N = 1024, measured)
    every_key = all(lo == 0 and hi == m for _, _, lo, hi in blocks)
    A = (np.empty if every_key else np.zeros)((*batch, n, m)) if return_weights else None

    def worker():
        work = None if return_weights else np.empty(size * rows * m)  # this thread's logits block, reused

        def block(b):
            g, i0, lo, hi = blocks[b]
            i1 = min(n, i0 + rows)
            mask_g, slopes_g = (None if a is None else a[g] for a in (mask, slopes))
            out = y[g][..., i0:i1, :]
            lse_b = None if lse is None else lse[g][..., i0:i1]
            if hi <= lo:  # no query of this block may see any key
                out[...] = 0.0
                if lse_b is not None:
                    lse_b[...] = -np.inf
                return
            if A is not None:
                s = A[g][..., i0:i1, lo:hi]
            else:
                shape = (*out.shape[:-1], hi - lo)
                s = work[: math.prod(shape)].reshape(shape)
            fast = np.max(bound[g][..., i0:i1], initial=-np.inf) <= e_max  # else large logits: the exact max
            finite = np.max(raw[g][..., i0:i1], initial=-np.inf) <= _FINITE_BOUND  # no logit can have overflowed
            mx, z, _ = _weights_block(q[g][..., i0:i1, :], k[g][..., lo:hi, :], p, mask_g, slopes_g, i0, lo, s, ones, fast,
                                      finite=finite, q_raw=q_raw[g][..., i0:i1, :])
            np.matmul(s, v[g][..., lo:hi, :], out=out)  # Σ_j e_ij v_j
            out /= z  # y_i = Σ_j e_ij v_j / z_i  (= Σ_j A_ij v_j, Eq. (4.1))
            if A is not None:
                s /= z  # A_ij = e_ij / z_i, Eq. (4.2)
            if lse_b is not None:
                lse_b[...] = (mx + np.log(z))[..., 0]  # ℓ_i = m_i + log z_i (m_i = 0 unshifted)

        return block

    _blocking.take_turns_one_blas(len(blocks), worker, logits, threaded)
    return y, A, lse


def _logit_bound(p: _Problem, qs: np.ndarray) -> np.ndarray:
    """``b_i = ‖scale q_i‖ · max_j ‖k_j‖ >= |scale q_i · k_j|`` (Cauchy–Schwarz), before any soft cap;
    inf or NaN when the squares overflow (extreme inputs)."""
    kmax = np.sqrt(np.max(np.einsum("...md,...md->...m", p.k, p.k), axis=-1, initial=0.0))  # max_j ‖k_j‖
    return np.sqrt(np.einsum("...nd,...nd->...n", qs, qs)) * kmax[..., None]


def _unshifted(p: _Problem, qs: np.ndarray) -> tuple[np.ndarray, float]:
    """The bounds ``b_i >= s_ij`` of every row's logits (all keys, per batch element) and ``E``,
    the largest bound for which a block may take its exponentials unshifted (see :func:`_attend`)."""
    n, m = p.q.shape[-2], p.k.shape[-2]
    bound = _logit_bound(p, qs)
    if p.softcap is not None:
        bound = np.minimum(bound, p.softcap)  # c · tanh(s / c) < c
    vmax = max(float(np.max(p.v, initial=0.0)), -float(np.min(p.v, initial=0.0)))  # max |v_j|
    return np.broadcast_to(bound, (*p.batch, n)), _EXP_SAFE - math.log(max(m, 1)) - math.log1p(vmax)


def _weights_block(q, k, p: _Problem, mask, slopes, i0: int, lo: int, s, ones, fast: bool, keep_tanh: bool = False,
                   finite: bool = False, q_raw=None):
    """The unnormalized weights ``e_ij`` of one block of query rows ``q`` (rows i0 …) against the
    keys ``k`` (keys lo …), in place in ``s``, and their row sums ``z_i`` (Eq. (4.3)).

    ``fast`` (every row's logit bound at most E, :func:`_attend`): ``e_ij = e^{s_ij}`` unshifted,
    the forbidden weights zeroed after the exponential (:func:`_mask`), ``z`` a product with
    ``ones``. A block whose rows' bound is larger, or in which some ``z_i`` falls below
    e^{−_LOW} (a row with no key, or very negative logits), takes the exact row max instead:
    ``e_ij = e^{s_ij − m_i}`` with −∞ where forbidden. Returns ``(m, z, tanh)``: the shift (the row
    maxima, or 0.0 unshifted: ``ℓ_i = m_i + log z_i`` either way), the sums, and ``tanh(s / c)`` of a
    soft cap with ``keep_tanh`` (else None).

    A logit that overflowed float64 at an allowed key is refused (:func:`_refuse_overflowed`): on
    the exact path it would be indistinguishable from a forbidden key, and a soft cap would turn it
    into ±c. ``finite`` (the caller's bound before the cap, :func:`_logit_bound`, is at most
    :data:`_FINITE_BOUND`) and ``fast`` blocks without a soft cap cannot hold an overflowed logit and
    are not checked: the check costs nothing on ordinary inputs. With ``q_raw`` (the block's
    unscaled queries), a checked block forms a logit that is not finite as ``(scale q_i) · k_j``
    again as ``scale · (q_i · k_j)``, as the loop twins do (:func:`_logit`), and refuses only what
    overflows both ways.
    """
    i1 = i0 + s.shape[-2]
    kT = np.swapaxes(k, -1, -2)
    check = not (finite or (fast and p.softcap is None))  # a bound above 1e300 (or inf/NaN): look for overflowed logits
    other = None if q_raw is None else (lambda: np.matmul(q_raw, kT) * p.scale)  # scale·(q_i·k_j)

    def logits():
        np.matmul(q, kT, out=s)  # s_ij = scale q_i · k_j (BLAS)
        if check:
            _refuse_overflowed(s, lambda t: _mask(t, p, mask, i0, i1, lo, 0.0), other)

    logits()
    if fast:
        tanh = _bias(s, p, slopes, i0, i1, lo, keep_tanh)
        np.exp(s, out=s)  # e_ij = e^{s_ij} <= e^{E} for every key, allowed or not: no shift needed
        _mask(s, p, mask, i0, i1, lo, 0.0)  # then e_ij = 0 where key j is forbidden (see _mask)
        z = np.matmul(s, ones[: s.shape[-1]])  # z_i = Σ_j e_ij
        if np.all(z >= _TINY_Z):
            return 0.0, z, tanh
        logits()  # the exact path below, from the logits again
    tanh = _bias_and_mask(s, p, mask, slopes, i0, i1, lo, keep_tanh)
    mx, z = _exp_rows(s)  # e^{s_ij − m_i}, z_i
    return mx, z, tanh


def attention_weights(q, k, *, mask=None, causal=False, scale=None) -> np.ndarray:
    r"""The attention weight matrix ``A = softmax(scale · Q K^T)`` of Eq. (4.2).

    Implements Eq. (4.2) of the book (Vaswani et al. 2017, Eq. 1, the softmax factor).

    Parameters
    ----------
    q : array_like, shape (..., N, d)
    k : array_like, shape (..., M, d)
    mask, causal, scale
        As in :func:`softmax_attention`, except that a mask row with no allowed key raises
        ``ValueError`` here (a softmax over no key is not a distribution whose rows sum to 1;
        :func:`softmax_attention` returns ``y_i = 0`` for such a row, as FlashAttention-2 does, and
        ``ℓ_i = −∞``, where FlashAttention-2 stores +∞).

    Returns
    -------
    A : ndarray, shape (..., N, M)
        Non-negative, each row sums to 1, exactly 0 where the mask forbids. Finite inputs whose
        logits overflow float64 are refused (``ValueError``), as in :func:`softmax_attention`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> A = attention_weights(rng.normal(size=(4, 2)), rng.normal(size=(4, 2)), causal=True)
    >>> A[0].tolist()  # the first query sees only the first key
    [1.0, 0.0, 0.0, 0.0]
    >>> bool(np.allclose(A.sum(axis=-1), 1.0))
    True
    """
    return _weights(q, k, mask, causal, scale)[1]


@guard_overflow("q", "k", "scale", first_only=True)
def _weights(q, k, mask, causal, scale):
    """:func:`attention_weights` under the overflow guard (floating-point warnings silenced, extreme
    arguments named). It returns ``(y, A)`` with ``y = A · 0`` for one zero value channel: ``y`` is
    NaN where a row of ``A`` is not finite, so the guard checks N numbers instead of the N·M weights."""
    q, k = _check_qk(q, k)
    mask = _check_mask(mask, causal, _batch(q, k), q.shape[-2], k.shape[-2])  # refuses rows with no key
    # the engine of softmax_attention (with one zero value channel): the same weights, bit for bit
    p = _prepare(q, k, np.zeros((*k.shape[:-1], 1)), mask, causal, scale, None, None, "top_left", None, False)
    return _attend(p, True, False)[:2]


@guard_overflow(first_only=True)
def softmax_attention(
    q,
    k,
    v,
    *,
    mask=None,
    causal=False,
    scale=None,
    return_weights=False,
    window=None,
    alibi_slopes=None,
    causal_alignment="top_left",
    softcap=None,
    grouped_heads=False,
    return_lse=False,
):
    r"""Scaled dot-product attention, ``softmax(scale · Q K^T) V``, numerically stable.

    Implements Eqs. (4.1)–(4.3) of the book (Vaswani et al. 2017, Eq. 1), with the options of
    fused attention kernels of Eqs. (4.14)–(4.15) (FlashAttention-2 and PyTorch's
    ``scaled_dot_product_attention``): causal alignment, sliding windows, ALiBi, logit
    soft-capping, grouped-query heads and the log-sum-exp output.

    Parameters
    ----------
    q : array_like, shape (..., N, d)
        Queries (the templates of the matched filter). With ``grouped_heads``, shape
        (..., H, N, d).
    k : array_like, shape (..., M, d)
        Keys (the received vectors). Leading batch axes of q, k, v broadcast. With
        ``grouped_heads``, shape (..., H_kv, M, d).
    v : array_like, shape (..., M, dv)
        Values; with ``grouped_heads``, shape (..., H_kv, M, dv).
    mask : array_like of bool, broadcastable to (..., N, M), optional
        **True = may attend.** Combined with ``causal`` and ``window`` by logical and.
    causal : bool
        Forbid the keys after each query: ``j > i + o`` with the offset ``o`` of
        ``causal_alignment``.
    scale : float >= 0, optional
        The inverse temperature 1/τ; default ``1/sqrt(d)``. ``scale = 0`` gives the uniform
        average of the allowed values; ``scale → ∞`` gives hard selection of the best key.
    return_weights : bool
        Also return the weight matrix ``A``.
    window : int >= 1, optional
        Sliding-window (local) attention: key j is allowed only if ``|i + o − j| < window``;
        with ``causal`` each query sees its ``window`` most recent keys, itself included
        (Longformer's window ``w_L`` is the total width, ``window = w_L/2 + 1``; Mistral 7B's paper
        counts its ``W`` both as at most ``W`` keys, ``window = W``, and as the positions
        ``i − W … i``, ``window = W + 1``, the mask of its reference code; §16.11, Eq. (16.16)). In
        FlashAttention's ``flash_attn_func`` this is
        ``window_size=(window − 1, 0)`` with ``causal=True`` and ``(window − 1, window − 1)``
        without (its bounds are inclusive).
    alibi_slopes : array_like, broadcastable to the batch axes (e.g. shape (H,)), optional
        ALiBi (Press et al. 2022): the bias ``−m · |i + o − j|`` is added to the logits, with
        slope ``m ≥ 0`` per head (the last batch axis); for causal attention this is the
        paper's ``m · (j − i)``. Chapter 8 finds the same linear bias as the μ → 0 limit of the
        isotropic AFA prior (Eq. (8.7)); :func:`alibi_geometric_slopes` gives the paper's slopes.
    causal_alignment : {"top_left", "bottom_right"}
        Where query i sits among the keys when N ≠ M: ``"top_left"`` (default, PyTorch's
        ``is_causal``) aligns it with key ``i`` (offset ``o = 0``); ``"bottom_right"``
        (FlashAttention-2 ≥ 2.1, the KV-cache case: the N queries are the last N of the M
        positions) with key ``i + M − N``. The offset places the causal diagonal, the window
        and the ALiBi distance alike.
    softcap : float > 0, optional
        Logit soft-capping (Gemma 2; FlashAttention's ``softcap``): the scaled logits become
        ``c · tanh(s / c)``, bounded by ``c``, before the bias and the masks.
    grouped_heads : bool
        Grouped-query (and multi-query) attention: axis −3 holds heads, q has H of them and k,
        v have H_kv, a divisor of H. Query head ``h`` uses key/value head ``h // (H / H_kv)``
        (consecutive query heads share a key/value head, as FlashAttention and PyTorch's
        ``enable_gqa``). Multi-query attention (H_kv = 1) also works without the flag, by
        broadcasting.
    return_lse : bool
        Also return the row log-sum-exp ``ℓ_i = m_i + log z_i`` (natural log) of the final
        logits (scaled, soft-capped, biased) over the allowed keys: what fused kernels store
        for the backward pass (Eq. (4.15)). With causal ALiBi and no left window bound,
        FlashAttention-2's stored ``softmax_lse`` is this plus ``slope · (i + o)`` (it adds
        ``slope · j`` alone; see the module's notes on FlashAttention's layout).

    Returns
    -------
    y : ndarray, shape (..., N, dv)
        With ``grouped_heads``, shape (..., H, N, dv).
    A : ndarray, shape (..., N, M)
        Only if ``return_weights``.
    lse : ndarray, shape (..., N)
        Only if ``return_lse`` (after ``A`` when both are requested).

    Notes
    -----
    With ``s_ij`` the logits (``scale · q_i·k_j``, soft-capped, biased) and
    ``m_i = max_{j allowed} s_ij``,

    ``A_ij = exp(s_ij − m_i) / Σ_{j' allowed} exp(s_ij' − m_i)``,  ``y_i = Σ_j A_ij v_j``.

    Subtracting ``m_i`` changes nothing mathematically (Eq. (4.3)) and keeps every exponent ≤ 0, so
    nothing overflows. A query row with **no allowed key** (e.g. the first N − M rows of a
    bottom-right causal mask with N > M) gets ``y_i = 0``, ``A_i = 0`` and ``ℓ_i = −∞`` (the log of
    an empty sum); FlashAttention-2 outputs the same ``y_i = 0`` but stores +∞ in its
    ``softmax_lse`` there, so that its backward pass recomputes zero weights
    (``flash_attn_func``). Finite inputs whose logit ``scale · q_i · k_j`` overflows float64 at
    a key the row may attend are refused with a ``ValueError`` naming q, k and scale: a logit that
    overflowed to −∞ would otherwise look like a forbidden key (checked only where the bound
    ``‖scale q_i‖ max_j ‖k_j‖`` exceeds 1e300, so ordinary inputs pay nothing). The logit is formed
    as ``(scale q_i) · k_j`` and, where that is not finite, as ``scale · (q_i · k_j)`` (the loop
    twin tries the same two orders, the other way round), so a representable logit whose only
    overflow is ``scale · q_i`` or ``q_i · k_j`` is answered; refused are logits that overflow
    themselves, or in both orders (terms of the dot product that cancel: inf − inf). An overflow at
    a masked key is harmless and ignored.

    Cost: the two matrix products plus a few passes over the logits (max, subtract, exp, sum).
    The query rows are processed in blocks of at least 256 rows (all N rows when N < 256, more
    when the rows are short) so that each block is two large BLAS products. A problem that runs
    its blocks in :data:`refimpl._blocking.THREADS` threads (at least 2^18 logits, and BLAS can be
    held to one thread) and would have fewer than eight blocks cuts them smaller, to
    ``max(64, ceil(N / 8))`` rows (N = 1024: eight blocks of 128 rows), whatever the number of
    threads, so that the result is bitwise the same with one thread or many. With ``causal`` or ``window`` a block multiplies only the keys its rows may
    see, so causal attention costs about half.
    Without ``return_weights`` the logits of one block live in one reused workspace and ``y``
    is normalized instead of ``A`` (``y_i = Σ_j e^{s_ij − m_i} v_j / z_i``): peak memory is
    O(block · M) beyond the inputs and output. With ``return_weights`` one (..., N, M) buffer
    holds ``A``. No (N, M, d) intermediate is ever formed.

    References
    ----------
    .. [1] A. Vaswani et al., "Attention is all you need", NeurIPS 2017, Eq. (1).
    .. [2] T. Dao, "FlashAttention-2", ICLR 2024, §3 (causal masks, log-sum-exp); J. Ainslie et al.,
           "GQA", EMNLP 2023; Gemma Team, "Gemma 2", 2024, §2 (logit soft-capping).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 5, 4))
    >>> y, A = softmax_attention(q, k, v, causal=True, return_weights=True)
    >>> bool(np.allclose(A.sum(-1), 1.0)), bool(np.all(np.triu(A, 1) == 0))
    (True, True)
    >>> q, k, v = rng.normal(size=(4, 2, 3, 4)), rng.normal(size=(2, 5, 4)), rng.normal(size=(2, 5, 2))
    >>> y, lse = softmax_attention(q[0], k, v, causal=True, causal_alignment="bottom_right", return_lse=True)
    >>> y.shape, lse.shape  # 2 heads, 3 new queries against 5 cached keys
    ((2, 3, 2), (2, 3))
    >>> softmax_attention(rng.normal(size=(4, 3, 4)), k, v, grouped_heads=True).shape  # 4 query heads, 2 kv heads
    (4, 3, 2)
    """
    p = _prepare(q, k, v, mask, causal, scale, window, alibi_slopes, causal_alignment, softcap, grouped_heads)
    return_weights = as_bool(return_weights, "return_weights")
    return_lse = as_bool(return_lse, "return_lse")
    y, A, lse = _attend(p, return_weights, return_lse)
    return _outputs(p, y, A, lse, return_weights, return_lse)


@guard_overflow(first_only=True)
def softmax_attention_loop(
    q,
    k,
    v,
    *,
    mask=None,
    causal=False,
    scale=None,
    return_weights=False,
    window=None,
    alibi_slopes=None,
    causal_alignment="top_left",
    softcap=None,
    grouped_heads=False,
    return_lse=False,
):
    """Loop twin of :func:`softmax_attention`: one query, one key at a time (Eqs. (4.1)–(4.3), (4.14)).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 4, 2))
    >>> bool(np.allclose(softmax_attention_loop(q, k, v, causal=True), softmax_attention(q, k, v, causal=True)))
    True
    """
    p = _prepare(q, k, v, mask, causal, scale, window, alibi_slopes, causal_alignment, softcap, grouped_heads)
    return_weights = as_bool(return_weights, "return_weights")
    return_lse = as_bool(return_lse, "return_lse")
    n, m, dv, batch = p.q.shape[-2], p.k.shape[-2], p.v.shape[-1], p.batch
    qb = np.broadcast_to(p.q, (*batch, n, p.q.shape[-1]))
    kb = np.broadcast_to(p.k, (*batch, m, p.k.shape[-1]))
    vb = np.broadcast_to(p.v, (*batch, m, dv))
    mb = None if p.mask is None else np.broadcast_to(p.mask, (*batch, n, m))
    sb = None if p.slopes is None else np.broadcast_to(p.slopes, batch)
    y = np.zeros((*batch, n, dv))
    A = np.zeros((*batch, n, m))
    lse = np.full((*batch, n), -np.inf)  # ℓ_i = log 0 = −∞ for a row that sees no key
    # with grouped heads, b ends in (h_kv, g): query head h = h_kv·G + g reads key/value head h_kv
    for b in np.ndindex(*batch):
        for i in range(n):
            o = i + p.offset  # the key aligned with query i (o = i top-left, i + M − N bottom-right)
            scores = {}
            for j in range(m):
                if mb is not None and not mb[b][i, j]:
                    continue  # the mask forbids
                if p.causal and j > o:
                    continue  # key after the query
                if p.window is not None and abs(o - j) >= p.window:
                    continue  # outside the window
                s = _logit(p.scale, qb[b][i], kb[b][j])  # s_ij = scale q_i·k_j
                _check_logits([s])  # an overflowed logit is refused, not taken for a forbidden key
                if p.softcap is not None:
                    s = p.softcap * math.tanh(s / p.softcap)  # soft cap: c tanh(s / c)
                if sb is not None:
                    s -= float(sb[b]) * abs(o - j)  # ALiBi: − m |i + o − j|
                scores[j] = s
            if not scores:
                continue  # no key: y_i = 0, A_i = 0, ℓ_i = −∞
            top = max(scores.values())  # m_i
            z = sum(math.exp(s - top) for s in scores.values())  # Σ_j e^{s_ij − m_i}
            for j, s in scores.items():
                A[b][i, j] = math.exp(s - top) / z  # A_ij, Eq. (4.2)
                y[b][i] += A[b][i, j] * vb[b][j]  # y_i += A_ij v_j, Eq. (4.1)
            lse[b][i] = top + math.log(z)  # ℓ_i = m_i + log z_i, Eq. (4.15)
    return _outputs(p, y, A, lse, return_weights, return_lse)


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

    mask = None if mask is None else _to_array(mask, "mask")
    mask_h = None if mask is None else np.expand_dims(mask, -3) if mask.ndim >= 2 else mask
    # the h (N, N) weights only when asked for: without them the heads run in blocks of rows, O(N) memory
    res = softmax_attention(
        heads(w_q, dk), heads(w_k, dk), heads(w_v, dv), mask=mask_h, causal=causal, scale=scale,
        return_weights=return_weights,
    )
    y = res[0] if return_weights else res
    concat = np.swapaxes(y, -2, -3).reshape(*x.shape[:-2], n, h * dv)  # Concat(head_1..head_h)
    out = concat @ w_o  # Eq. (4.11)
    return (out, res[1]) if return_weights else out


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
        Verify ``mixer(v) == W v`` on one fixed test column (entries of size about 1) and raise
        ValueError if it fails. This is a necessary condition, not a proof of linearity: a mixer
        that is nonlinear only elsewhere (e.g. clipped at large amplitudes) passes.

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


# ---------------------------------------------------------------------------------------------
# FlashAttention's tiled online softmax, Eq. (16.15)
# ---------------------------------------------------------------------------------------------


#: :func:`flash_attention` pads its last query tile to ``block_q`` rows; a ``block_q`` larger than both N and this is
#: cut to N (one tile of all the queries either way). Up to it the padded tile is kept as given, so that the rounding
#: of every call with a kernel-sized tile stays as it was (BLAS may round a product of 64 rows differently from one
#: of N rows, by an ulp); above it, the padding would only cost memory and time in proportion to ``block_q``.
_MAX_PADDED_TILE = 1024


def _check_flash(q, k, v, causal, scale, block_q, block_k, return_lse, window, alibi_slopes, causal_alignment, softcap,
                 grouped_heads, return_intermediates):
    p = _prepare(q, k, v, None, causal, scale, window, alibi_slopes, causal_alignment, softcap, grouped_heads)
    bq = as_int(block_q, "block_q", 1)
    bk = as_int(block_k, "block_k", 1)
    return p, bq, bk, as_bool(return_lse, "return_lse"), as_bool(return_intermediates, "return_intermediates")


def _flash_outputs(p, y, lse, running_max, running_sum, return_lse: bool, return_intermediates: bool):
    """``y`` [, ``ℓ``] [, ``{"running_max", "running_sum"}``] with the heads merged back."""
    out = (_merge_heads(y, p, 2),)
    if return_lse:
        out += (_merge_heads(lse, p, 1),)
    if return_intermediates:
        out += ({"running_max": _merge_heads(running_max, p, 2), "running_sum": _merge_heads(running_sum, p, 2)},)
    return out[0] if len(out) == 1 else out


@guard_overflow(first_only=True)
def flash_attention(
    q,
    k,
    v,
    *,
    causal=False,
    scale=None,
    block_q=64,
    block_k=64,
    return_lse=False,
    window=None,
    alibi_slopes=None,
    causal_alignment="top_left",
    softcap=None,
    grouped_heads=False,
    return_intermediates=False,
):
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
        Forbid keys after each query (aligned by ``causal_alignment``, as in
        :func:`softmax_attention`).
    scale : float >= 0, optional
        Default ``1/sqrt(d)``.
    block_q, block_k : int >= 1
        Tile sizes B_r (query rows) and B_c (key columns); N and M need not be multiples. The
        last query tile is padded with zero rows up to ``block_q`` rows; a ``block_q`` above both N
        and 1024 is taken as N (the same single tile, without padding whose memory would grow
        with ``block_q``). To round-off, the result does not depend on the tile sizes.
    return_lse : bool
        Also return the row log-sum-exp ``ℓ_i = m_i + log z_i`` (what the backward pass
        stores to recompute the weights); ``−∞`` for a row that sees no key. With causal ALiBi
        and no left window bound, FlashAttention-2's ``softmax_lse`` is this plus
        ``slope · (i + o)``, ``o = M − N``.
    window, alibi_slopes, causal_alignment, softcap, grouped_heads
        As in :func:`softmax_attention` (Eq. (4.14)).
    return_intermediates : bool
        Also return the running max ``m_i`` and running normalizer ``z_i`` of (16.15) after each
        key tile: what a tiled kernel holds in registers between tiles, so that a kernel's values
        (e.g. dumped from a debug build) show the first tile where a rescaling goes wrong.

    Returns
    -------
    y : ndarray, shape (..., N, dv)
    lse : ndarray, shape (..., N)
        Only if ``return_lse``.
    intermediates : dict
        Only if ``return_intermediates``: ``"running_max"`` and ``"running_sum"``, each of shape
        (..., ceil(M / block_k), N): row ``t`` holds ``m_i`` and ``z_i`` after key tiles 0 … t
        (``−∞`` and 0 for a row that has seen no key yet; a tile a row may not see leaves them
        unchanged).

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
    p, bq, bk, return_lse, return_intermediates = _check_flash(
        q, k, v, causal, scale, block_q, block_k, return_lse, window, alibi_slopes, causal_alignment, softcap, grouped_heads,
        return_intermediates,
    )
    batch, n, m = p.batch, p.q.shape[-2], p.k.shape[-2]
    if bq > max(n, _MAX_PADDED_TILE):
        bq = n  # one query tile either way: without the padding rows, whose memory grows with block_q
    k, v = np.broadcast_to(p.k, (*batch, m, p.k.shape[-1])), np.broadcast_to(p.v, (*batch, m, p.v.shape[-1]))
    slopes = None if p.slopes is None else np.broadcast_to(p.slopes, batch)[..., None, None, None]
    nq = -(-n // bq)
    qt = np.zeros((*batch, nq * bq, p.q.shape[-1]))
    qt[..., :n, :] = p.q * p.scale
    qt = qt.reshape(*batch, nq, bq, p.q.shape[-1])  # query tiles (zero rows pad the last one)
    diag = np.arange(nq * bq).reshape(nq, bq, 1) + p.offset  # the key aligned with each tile row
    mx = np.full((*batch, nq, bq, 1), -np.inf)  # running max m_i
    z = np.zeros((*batch, nq, bq, 1))  # running normalizer z_i
    o = np.zeros((*batch, nq, bq, v.shape[-1]))  # unnormalized output o_i
    nk = -(-m // bk)
    track = (np.empty((*batch, nk, nq * bq)), np.empty((*batch, nk, nq * bq))) if return_intermediates else None
    with np.errstate(over="ignore", invalid="ignore"):  # max ‖scale q_i‖ · max ‖k_j‖ >= |s_ij| (inf or NaN if extreme)
        finite = math.sqrt(np.max(np.einsum("...d,...d->...", qt, qt), initial=0.0)) * math.sqrt(
            np.max(np.einsum("...d,...d->...", k, k), initial=0.0)) <= _FINITE_BOUND

    q_raw = None
    if not finite:  # the unscaled query tiles, for the logits scale·(q_i·k_j) where scale·q_i overflowed
        q_raw = np.zeros((*batch, nq * bq, p.q.shape[-1]))
        q_raw[..., :n, :] = p.q
        q_raw = q_raw.reshape(qt.shape)

    def forbidden(j):  # the entries of a key tile a row may not attend (causal, window), or None
        off = j > diag if p.causal else None  # key j after query i
        if p.window is not None:
            out = np.abs(diag - j) >= p.window  # outside the window
            off = out if off is None else off | out
        return off

    for j0 in range(0, m, bk):  # key tiles
        kj, vj = k[..., None, j0 : j0 + bk, :], v[..., None, j0 : j0 + bk, :]
        s = np.matmul(qt, np.swapaxes(kj, -1, -2))  # (..., nq, bq, bk) logits of this tile
        j = np.arange(j0, min(m, j0 + bk))
        off = forbidden(j)
        if not finite:  # formed as scale·(q_i·k_j) where not finite, then refused at an allowed key (_refuse_overflowed)
            _refuse_overflowed(s, lambda t: None if off is None else np.copyto(t, 0.0, where=off),
                               lambda: np.matmul(q_raw, np.swapaxes(kj, -1, -2)) * p.scale)
        if p.softcap is not None:
            with np.errstate(over="ignore"):
                s = p.softcap * np.tanh(s / p.softcap)  # c · tanh(s / c)
        if slopes is not None:
            s = s - slopes * np.abs(j - diag)  # ALiBi: − m |i + o − j|
        if off is not None:
            s = np.where(off, -np.inf, s)  # forbidden keys
        m_new = np.maximum(mx, s.max(axis=-1, keepdims=True))
        # rows that have seen no allowed key yet keep m = −inf; shift them by 0 instead
        shift = np.where(np.isfinite(m_new), m_new, 0.0)
        p_t = np.exp(s - shift)  # e^{s_ij − m'_i}
        alpha = np.exp(mx - shift)  # e^{m_i − m'_i}: the rescaling of what was accumulated
        z = alpha * z + p_t.sum(axis=-1, keepdims=True)
        o = alpha * o + np.matmul(p_t, vj)
        mx = m_new
        if track is not None:  # m_i, z_i after this tile
            track[0][..., j0 // bk, :] = mx.reshape(*batch, nq * bq)
            track[1][..., j0 // bk, :] = z.reshape(*batch, nq * bq)
    seen = z > 0  # a row that saw no key keeps z = 0: y_i = 0, ℓ_i = −∞
    y = (o / np.where(seen, z, 1.0)).reshape(*batch, nq * bq, v.shape[-1])[..., :n, :]
    lse = np.where(seen, mx + np.log(np.where(seen, z, 1.0)), -np.inf).reshape(*batch, nq * bq)[..., :n]
    running = (None, None) if track is None else (track[0][..., :n], track[1][..., :n])
    return _flash_outputs(p, y, lse, *running, return_lse, return_intermediates)


@guard_overflow(first_only=True)
def flash_attention_loop(
    q,
    k,
    v,
    *,
    causal=False,
    scale=None,
    block_q=64,
    block_k=64,
    return_lse=False,
    window=None,
    alibi_slopes=None,
    causal_alignment="top_left",
    softcap=None,
    grouped_heads=False,
    return_intermediates=False,
):
    """Loop twin of :func:`flash_attention`: the (query tile, key tile) grid of Algorithm 1, row by row.

    Tiles strictly after the causal diagonal are skipped, as GPU kernels do (Eq. (16.15)).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 5, 2))
    >>> y, lse = flash_attention_loop(q, k, v, causal=True, block_q=2, block_k=2, return_lse=True)
    >>> y2, lse2 = flash_attention(q, k, v, causal=True, block_q=2, block_k=2, return_lse=True)
    >>> bool(np.allclose(y, y2)), bool(np.allclose(lse, lse2))
    (True, True)
    """
    p, bq, bk, return_lse, return_intermediates = _check_flash(
        q, k, v, causal, scale, block_q, block_k, return_lse, window, alibi_slopes, causal_alignment, softcap, grouped_heads,
        return_intermediates,
    )
    batch, n, m, dv = p.batch, p.q.shape[-2], p.k.shape[-2], p.v.shape[-1]
    qb = np.broadcast_to(p.q, (*batch, n, p.q.shape[-1]))
    kb = np.broadcast_to(p.k, (*batch, m, p.k.shape[-1]))
    vb = np.broadcast_to(p.v, (*batch, m, dv))
    sb = None if p.slopes is None else np.broadcast_to(p.slopes, batch)
    y = np.zeros((*batch, n, dv))
    lse = np.full((*batch, n), -np.inf)
    nk = -(-m // bk)
    run_max, run_sum = np.full((*batch, nk, n), -np.inf), np.zeros((*batch, nk, n))  # m_i, z_i after each key tile
    for b in np.ndindex(*batch):
        for i0 in range(0, n, bq):  # query tile
            for i in range(i0, min(n, i0 + bq)):
                d_i = i + p.offset  # the key aligned with query i
                mx, z, o = -math.inf, 0.0, np.zeros(dv)
                for j0 in range(0, m, bk):  # key tile
                    run_max[b][j0 // bk :, i], run_sum[b][j0 // bk :, i] = mx, z  # so far (skipped tiles keep them)
                    if p.causal and j0 > min(n, i0 + bq) - 1 + p.offset:
                        break  # the whole tile lies after every query of this query tile
                    js = [
                        j
                        for j in range(j0, min(m, j0 + bk))
                        if not (p.causal and j > d_i) and not (p.window is not None and abs(d_i - j) >= p.window)
                    ]
                    if not js:
                        continue
                    s = [_logit(p.scale, qb[b][i], kb[b][j]) for j in js]  # logits of the tile
                    _check_logits(s)  # an overflowed logit is refused, not taken for a forbidden key
                    if p.softcap is not None:
                        s = [p.softcap * math.tanh(sj / p.softcap) for sj in s]
                    if sb is not None:
                        s = [sj - float(sb[b]) * abs(d_i - j) for sj, j in zip(s, js)]
                    m_new = max(mx, max(s))  # running max
                    alpha = math.exp(mx - m_new)  # rescale what was accumulated (0 for the first tile)
                    p_t = [math.exp(sj - m_new) for sj in s]
                    z = alpha * z + sum(p_t)  # running normalizer
                    o = alpha * o + sum(pj * vb[b][j] for pj, j in zip(p_t, js))  # running output
                    mx = m_new
                    run_max[b][j0 // bk :, i], run_sum[b][j0 // bk :, i] = mx, z
                if z > 0:  # a row that saw no key keeps y_i = 0, ℓ_i = −∞
                    y[b][i] = o / z
                    lse[b][i] = mx + math.log(z)
    return _flash_outputs(p, y, lse, run_max, run_sum, return_lse, return_intermediates)


# ---------------------------------------------------------------------------------------------
# FlashAttention-2's official interfaces: flash_attn_func, flash_attn_varlen_func
# ---------------------------------------------------------------------------------------------


class _Fa(NamedTuple):
    """A validated FlashAttention-2 call, in refimpl's layout (b, h, s, d): the options of
    :func:`softmax_attention` (``opts``), the ALiBi slopes (b, h) or None, and ``lse_shift``: the kernel runs its
    causal path with ALiBi, adding ``slope · j`` to the logits, so that its stored lse is ℓ + slope·(i + o)."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    opts: dict
    slopes: np.ndarray | None
    lse_shift: bool


def _fa_check(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic=False,
              clamp_k=None):
    """Validate FlashAttention-2's arguments in its layout (b, s, h, d), naming them as flash_attn does; returns
    an :class:`_Fa` with the window as an explicit mask (its bounds are inclusive and may differ left and right).

    The window as flash_attn's ``mha_fwd`` (``mha_varlen_fwd``, ``mha_bwd``) and ``set_params_fprop`` set it up: a
    negative bound is no bound, ``causal`` sets the right bound to 0, a bound of at least ``seqlen_k``
    (``max_seqlen_k`` for packed sequences, ``clamp_k``) is none, a call with no left bound and a right bound of 0 is
    the causal one (``window_size=(-1, 0)`` without ``causal`` included), whose ALiBi bias the kernel forms as
    ``slope · j``, and a left bound without a right one gets the right bound ``seqlen_k`` (``clamp_k``), which
    ``mask.h`` applies as ``j <= i + o + seqlen_k``: it cuts keys from the first ``seqlen_q − seqlen_k − 1`` rows
    when ``seqlen_q >= seqlen_k + 2``. (No left bound with a right one gets the left bound ``seqlen_k``, which never
    cuts: ``j >= i + o − seqlen_k`` holds for every key.)"""

    q, k, v = (as_real_array(a, n, copy=False) for a, n in ((q, "q"), (k, "k"), (v, "v")))  # never written to
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"q, k, v: expected shape (batch, seqlen, nheads, headdim), got {q.shape}, {k.shape}, {v.shape}")
    b, sq, h, d = q.shape
    if k.shape[:1] != (b,) or k.shape[3] != d or v.shape[:3] != k.shape[:3]:
        raise ValueError(f"k, v: expected shapes (batch, seqlen_k, nheads_k, headdim) = ({b}, ·, ·, {d}) and (batch, "
                         f"seqlen_k, nheads_k, headdim_v) (batch and headdim from q), got {k.shape}, {v.shape}")
    hk, sk = k.shape[2], k.shape[1]
    for name, arr in (("q", q), ("k", k), ("v", v)):
        if arr.shape[1] == 0 or arr.shape[3] == 0:
            raise ValueError(f"{name}: expected seqlen >= 1 and headdim >= 1 in (batch, seqlen, nheads, headdim), got shape "
                             f"{arr.shape}" + ("; flash_attn returns out = 0 and softmax_lse = +inf for seqlen_k = 0, "
                                               "refimpl refuses empty sequences (see Notes)" if arr.shape[1] == 0 else ""))
    if hk == 0 or h % hk:
        # seqlen and nheads may differ between q and k: shapes cannot tell which argument has the wrong layout,
        # but a reading with one's axes 1 and 2 exchanged that fits is named
        head_first = "(batch, nheads, seqlen, headdim)"
        q_fits, kv_fit = hk > 0 and q.shape[1] % hk == 0, h % k.shape[1] == 0
        if q_fits and not kv_fit:
            raise ValueError(f"q: expected shape (batch, seqlen, nheads, headdim); its nheads = {h} is not a multiple "
                             f"of the nheads_k = {hk} of k {k.shape} and v {v.shape}, but its axis 1 (size "
                             f"{q.shape[1]}) is: was q passed as {head_first}?")
        hint = {(True, True): f": was q, or were k and v, passed as {head_first}?",
                (False, True): f": were k and v passed as {head_first}?"}.get((q_fits, kv_fit), "")
        raise ValueError(f"k: its nheads_k = {hk} must divide the nheads = {h} of q (grouped-query attention){hint}")
    if as_positive_scalar(dropout_p, "dropout_p", strict=False) != 0.0:
        raise ValueError(f"dropout_p: the reference is deterministic, validate with dropout_p = 0, got {dropout_p!r}")
    causal = as_bool(causal, "causal")
    as_bool(deterministic, "deterministic")  # accepted and ignored: the reference is deterministic
    if isinstance(window_size, (str, bytes)) or not isinstance(window_size, (tuple, list)) or len(window_size) != 2:
        raise TypeError(f"window_size: expected a pair of ints (left, right), -1 for no bound, got {window_size!r}")
    left, right = (max(-1, as_int(w, "window_size", minimum=-(2**62))) for w in window_size)  # negative: no bound
    if softmax_scale is not None:
        softmax_scale = as_positive_scalar(softmax_scale, "softmax_scale", strict=False)
    if causal:
        right = 0  # flash_attn: causal sets the right bound of the window to 0
    softcap = as_positive_scalar(softcap, "softcap", strict=False)
    slopes = None
    if alibi_slopes is not None:
        slopes = as_real_array(alibi_slopes, "alibi_slopes")
        if slopes.shape not in ((h,), (b, h)):
            raise ValueError(f"alibi_slopes: expected shape (nheads,) = ({h},) or (batch, nheads) = ({b}, {h}), "
                             f"got {slopes.shape}")
        slopes = np.broadcast_to(slopes, (b, h))
    kc = sk if clamp_k is None else clamp_k
    left, right = (-1 if w >= kc else w for w in (left, right))  # a bound past every key is none (flash_attn)
    causal = left < 0 and right == 0  # flash_attn's is_causal: also window_size=(-1, 0) without causal
    if left >= 0 and right < 0:
        right = kc  # set_params_fprop: window_size_right = seqlen_k (max_seqlen_k when packed)
    o = sk - sq  # bottom-right alignment (FlashAttention >= 2.1): query i sits at key i + seqlen_k - seqlen_q
    mask = None
    if not causal and (left >= 0 or right >= 0):  # a window; the causal one is the causal flag itself
        i, j = np.arange(sq)[:, None] + o, np.arange(sk)[None, :]
        mask = np.ones((sq, sk), bool)
        if left >= 0:
            mask &= j >= i - left
        if right >= 0:
            mask &= j <= i + right
    opts = dict(mask=mask, causal=causal, scale=softmax_scale, alibi_slopes=slopes, causal_alignment="bottom_right",
                softcap=softcap or None, grouped_heads=hk != h)
    sw = lambda a: np.swapaxes(a, 1, 2)  # noqa: E731  (b, s, h, d) <-> (b, h, s, d)
    return _Fa(sw(q), sw(k), sw(v), opts, slopes, slopes is not None and causal)


def _fa_lse(f: _Fa, lse: np.ndarray, shifted: bool = False) -> np.ndarray:
    """FlashAttention-2's stored ``softmax_lse`` (b, h, seqlen_q) from refimpl's ℓ: +∞ for a row that sees no key
    (its kernels write INFINITY there; refimpl's ℓ is −∞), and on the causal path with ALiBi ℓ + slope·(i + o) (the
    kernel adds slope·j alone, Eq. (4.15); not with a left window bound, where it adds −slope·|i + o − j|).
    ``shifted``: ``lse`` already is (a plain model that forms the bias as the kernel does)."""
    lse = np.where(np.isneginf(lse), np.inf, lse)
    if f.lse_shift and not shifted:
        sq, sk = f.q.shape[2], f.k.shape[2]
        lse = lse + f.slopes[..., None] * (np.arange(sq) + sk - sq)
    return lse


def _flash_attn(loop, q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, return_attn_probs,
                deterministic=False, clamp_k=None):
    return_attn_probs = as_bool(return_attn_probs, "return_attn_probs")
    f = _fa_check(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic, clamp_k)
    run = softmax_attention_loop if loop else softmax_attention
    y, lse = run(f.q, f.k, f.v, **f.opts, return_lse=True)
    out = np.ascontiguousarray(np.swapaxes(y, 1, 2))
    return (out, _fa_lse(f, lse), None) if return_attn_probs else out


def _check_cu(cu, name: str, total: int, arg: str) -> np.ndarray:
    """``cu_seqlens_q`` or ``_k`` of the packed ``arg`` (q, or k and v) of ``total`` steps."""
    from .linear_rnn import _check_cu_seqlens

    try:
        return _check_cu_seqlens(cu, total, name, "flash_attn's int32 tensor")
    except (TypeError, ValueError) as exc:
        text = str(exc)
        if "expected offsets from 0 to T" in text:  # the offsets or the packed array may be the wrong one
            text = f"{arg}, {text} (T: the packed length of {arg})"
        if "strictly increasing" in text:
            text += ("; flash_attn accepts empty sequences (repeated offsets: out = 0 and softmax_lse = +inf for queries "
                     "without keys), refimpl refuses them (see Notes): leave them out of the packed batch")
        raise type(exc)(text) from None


def _varlen_parts(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, alibi_slopes, extra=None):
    """The sequences of a packed FlashAttention call: per sequence ``(q, k, v, slopes, extra)`` cut from the packed
    (total, nheads, ·) arrays as (1, seqlen, nheads, ·), ``extra`` (the cotangent) cut like q."""
    q, k, v = (as_real_array(a, n) for a, n in ((q, "q"), (k, "k"), (v, "v")))
    if q.ndim != 3 or k.ndim != 3 or v.ndim != 3:
        raise ValueError(f"q, k, v: expected shape (total, nheads, headdim) (packed sequences), got {q.shape}, {k.shape}, "
                         f"{v.shape}")
    cq, ck = _check_cu(cu_seqlens_q, "cu_seqlens_q", q.shape[0], "q"), _check_cu(cu_seqlens_k, "cu_seqlens_k", k.shape[0], "k")
    if cq.size != ck.size:
        raise ValueError(f"cu_seqlens_k: expected as many sequences as cu_seqlens_q ({cq.size - 1}), got {ck.size - 1}")
    for cu, m, name in ((cq, max_seqlen_q, "max_seqlen_q"), (ck, max_seqlen_k, "max_seqlen_k")):
        if as_int(m, name, minimum=1) < int(np.diff(cu).max()):
            raise ValueError(f"{name}: expected at least the longest sequence, {int(np.diff(cu).max())}, got {m}")
    slopes = None if alibi_slopes is None else as_real_array(alibi_slopes, "alibi_slopes")
    if slopes is not None and (slopes.ndim not in (1, 2) or slopes.ndim == 2 and slopes.shape[0] != cq.size - 1):
        raise ValueError(f"alibi_slopes: expected shape (nheads,) or (batch, nheads) with batch = {cq.size - 1} "
                         f"sequences, got {slopes.shape}")
    for i in range(cq.size - 1):
        a, b, c, e = int(cq[i]), int(cq[i + 1]), int(ck[i]), int(ck[i + 1])
        yield (q[None, a:b], k[None, c:e], v[None, c:e], None if slopes is None else (slopes if slopes.ndim == 1 else
               slopes[i]), None if extra is None else extra[None, a:b])


def _flash_attn_varlen(loop, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale,
                       causal, window_size, softcap, alibi_slopes, return_attn_probs, deterministic=False):
    return_attn_probs = as_bool(return_attn_probs, "return_attn_probs")
    outs, lses = [], []
    for qi, ki, vi, si, _ in _varlen_parts(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                           alibi_slopes):
        o, lse, _ = _flash_attn(loop, qi, ki, vi, dropout_p, softmax_scale, causal, window_size, softcap, si, True,
                                deterministic, clamp_k=int(max_seqlen_k))
        outs.append(o[0])
        lses.append(lse[0])
    out = np.concatenate(outs, axis=0)
    return (out, np.concatenate(lses, axis=-1), None) if return_attn_probs else out


_FA_NOTES = """
    Differences from flash_attn, all deliberate: the options are keyword-only (refimpl's
    convention); float64, computed by :func:`softmax_attention`
    (its loop twin for ``*_loop``), so the tiling does not change the result; ``dropout_p`` must
    be 0 (a reference is deterministic: validate a kernel with dropout off); ``deterministic`` is
    accepted and ignored; the third returned value of ``return_attn_probs`` (FlashAttention's
    ``S_dmask``, documented as for testing only) is None; empty sequences are refused, where
    flash_attn accepts them — ``seqlen_k = 0`` in :func:`flash_attn_func` (``mha_fwd`` returns out = 0
    and softmax_lse = +inf) and repeated ``cu_seqlens`` offsets in :func:`flash_attn_varlen_func`
    (zero-length sequences of a padded batch): compare a kernel on the batch without them."""


@guard_overflow(first_only=True)  # softmax_lse is +inf for a row that sees no key
def flash_attn_func(q, k, v, *, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    r"""FlashAttention-2's official interface, ``flash_attn.flash_attn_func``: its layout, options and outputs.

    Implements Eqs. (4.1)–(4.3) with the options of Eqs. (4.14)–(4.15) of the book (Dao 2024,
    FlashAttention-2; ``flash_attn/flash_attn_interface.py``) through :func:`softmax_attention`
    after swapping the sequence and head axes, so that a kernel is checked with its own calling
    convention (``refimpl.oracle.compare("attention.flash_attn_func", kernel, ...)``).

    Parameters
    ----------
    q : array_like, shape (batch, seqlen_q, nheads, headdim)
    k : array_like, shape (batch, seqlen_k, nheads_k, headdim)
        ``nheads_k`` divides ``nheads`` (grouped-query attention: query head h reads key/value
        head ``h // (nheads / nheads_k)``).
    v : array_like, shape (batch, seqlen_k, nheads_k, headdim_v)
    dropout_p : float
        Must be 0 (see Notes).
    softmax_scale : float >= 0, optional
        Default ``headdim^{-1/2}``.
    causal : bool
        Query i sees the keys ``j <= i + seqlen_k − seqlen_q`` (aligned to the bottom-right
        corner, as FlashAttention >= 2.1 does; a query row that sees no key gets output 0).
    window_size : (int, int)
        ``(left, right)``: query i sees the keys ``i + o − left <= j <= i + o + right``,
        ``o = seqlen_k − seqlen_q``; a negative bound, or one of at least ``seqlen_k``, is none; with
        ``causal`` the right bound is 0, and ``(-1, 0)`` is causal attention. A left bound without a
        right one gets the right bound ``seqlen_k``: ``j <= i + o + seqlen_k``, which cuts keys from
        the first ``seqlen_q − seqlen_k − 1`` query rows when ``seqlen_q >= seqlen_k + 2`` (the first
        ``seqlen_q − 2·seqlen_k`` rows see none). All as flash_attn sets the window up
        (``flash_api.cpp``: ``mha_fwd``'s clamp, then ``set_params_fprop``; ``mask.h``).
    softcap : float >= 0
        ``softcap · tanh(s / softcap)`` of the scaled logits; 0 for none.
    alibi_slopes : array_like, shape (nheads,) or (batch, nheads), optional
        The bias ``−slope · |i + o − j|``.
    deterministic : bool
        Ignored (the reference is deterministic).
    return_attn_probs : bool
        Also return ``softmax_lse`` and None (see below).

    Returns
    -------
    out : ndarray, shape (batch, seqlen_q, nheads, headdim_v)
    softmax_lse : ndarray, shape (batch, nheads, seqlen_q)
        Only with ``return_attn_probs``: the row log-sum-exp as FlashAttention-2 stores it — ℓ of
        :func:`softmax_attention`, plus ``slope · (i + o)`` with ALiBi on the causal path (no left window
        bound; its kernel then adds ``slope · j`` alone), +∞ for a row that sees no key.
    S_dmask : None
        Only with ``return_attn_probs`` (flash_attn returns an empty tensor without dropout).

    Notes
    -----
    With ``window_size`` the window becomes an explicit (seqlen_q, seqlen_k) mask (its two bounds
    may differ, which :func:`softmax_attention`'s symmetric ``window`` cannot express).
    {notes}
    Loop twin: :func:`flash_attn_func_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 2, 5, 4, 8))
    >>> out, lse, _ = flash_attn_func(q, k[:, :, :2], v[:, :, :2], causal=True, window_size=(2, -1),
    ...                               return_attn_probs=True)
    >>> out.shape, lse.shape
    ((2, 5, 4, 8), (2, 4, 5))
    """
    return _flash_attn(False, q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                       return_attn_probs, deterministic)


@guard_overflow(first_only=True)  # softmax_lse is +inf for a row that sees no key
def flash_attn_func_loop(q, k, v, *, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                         alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """Loop twin of :func:`flash_attn_func`: the same wrapper over :func:`softmax_attention_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 1, 4, 2, 3))
    >>> bool(np.allclose(flash_attn_func_loop(q, k, v, causal=True), flash_attn_func(q, k, v, causal=True)))
    True
    """
    return _flash_attn(True, q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                       return_attn_probs, deterministic)


@guard_overflow(first_only=True)  # softmax_lse is +inf for a row that sees no key
def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False):
    r"""FlashAttention-2's interface for packed sequences, ``flash_attn.flash_attn_varlen_func``.

    Implements Eqs. (4.1)–(4.3) and (4.14)–(4.15) of the book on each of the packed sequences: the
    queries ``q[cu_seqlens_q[i] : cu_seqlens_q[i+1]]`` attend to the keys and values
    ``k, v[cu_seqlens_k[i] : cu_seqlens_k[i+1]]`` only, with every option as in
    :func:`flash_attn_func` applied within the sequence (the causal diagonal and the window aligned
    to the bottom-right corner of each sequence's own (seqlen_q, seqlen_k) block).

    Parameters
    ----------
    q : array_like, shape (total_q, nheads, headdim)
    k : array_like, shape (total_k, nheads_k, headdim)
    v : array_like, shape (total_k, nheads_k, headdim_v)
    cu_seqlens_q, cu_seqlens_k : array_like of int, shape (batch + 1,)
        The sequences' offsets in q and in k, v: ``0 = c_0 < c_1 < … < c_batch = total``.
    max_seqlen_q, max_seqlen_k : int
        At least the longest sequence (as the kernel requires). ``max_seqlen_k`` enters through the
        window only, as in flash_attn's ``mha_varlen_fwd``: a window bound of at least ``max_seqlen_k``
        is none (with ALiBi and such a left bound, the causal path's shifted lse is returned), and a
        left bound without a right one gets the right bound ``max_seqlen_k``, so that each sequence's
        query i sees no key ``j > i + seqlen_k − seqlen_q + max_seqlen_k`` (its own lengths).
    dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic, return_attn_probs
        As in :func:`flash_attn_func`; ``alibi_slopes`` of shape (batch, nheads) give each sequence
        its own row.

    Returns
    -------
    out : ndarray, shape (total_q, nheads, headdim_v)
    softmax_lse : ndarray, shape (nheads, total_q)
        Only with ``return_attn_probs`` (the layout of recent flash-attn 2.x releases for packed sequences;
        older ones used (batch, nheads, max_seqlen_q)).
    S_dmask : None
        Only with ``return_attn_probs``.

    Notes
    -----
    {notes}
    Loop twin: :func:`flash_attn_varlen_func_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 9, 2, 4))
    >>> cu = np.array([0, 4, 9])
    >>> out = flash_attn_varlen_func(q, k, v, cu, cu, 5, 5, causal=True)
    >>> bool(np.allclose(out[4:], flash_attn_func(q[None, 4:], k[None, 4:], v[None, 4:], causal=True)[0]))
    True
    """
    return _flash_attn_varlen(False, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                              softmax_scale, causal, window_size, softcap, alibi_slopes, return_attn_probs,
                              deterministic)


@guard_overflow(first_only=True)  # softmax_lse is +inf for a row that sees no key
def flash_attn_varlen_func_loop(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, dropout_p=0.0,
                                softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                                deterministic=False, return_attn_probs=False):
    """Loop twin of :func:`flash_attn_varlen_func`: the same wrapper over :func:`softmax_attention_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 5, 1, 2))
    >>> cu = np.array([0, 2, 5])
    >>> a = flash_attn_varlen_func_loop(q, k, v, cu, cu, 3, 3, causal=True)
    >>> bool(np.allclose(a, flash_attn_varlen_func(q, k, v, cu, cu, 3, 3, causal=True)))
    True
    """
    return _flash_attn_varlen(True, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                              softmax_scale, causal, window_size, softcap, alibi_slopes, return_attn_probs,
                              deterministic)


for _fn in (flash_attn_func, flash_attn_varlen_func):
    _fn.__doc__ = _fn.__doc__.replace("{notes}", _FA_NOTES.strip("\n").lstrip())
del _fn

# The backward pass (vector–Jacobian products) lives in refimpl/_vjp.py, re-exported here.
from ._vjp import (  # noqa: E402
    flash_attn_func_vjp,
    flash_attn_func_vjp_loop,
    flash_attn_varlen_func_vjp,
    flash_attn_varlen_func_vjp_loop,
    softmax_attention_vjp,
    softmax_attention_vjp_loop,
)
