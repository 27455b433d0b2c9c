r"""Plain low-precision references: refimpl's straightforward algorithms run the way kernels compute.

The low-precision verdict of :func:`refimpl.oracle.compare` (Eq. (15.3) of the book,
:func:`refimpl._testing.low_precision_verdict`) holds a kernel's error against the float64 oracle
to twice the error of a *plain* implementation run in the same precision. For the functions
registered in :data:`PLAIN` that plain implementation is written here, in the arithmetic model of
:mod:`refimpl._precision`:

* inputs on the tier's grid (the oracle passes them rounded);
* matrix products with inputs rounded to the tier and float32 accumulation
  (:func:`refimpl._precision.matmul`), results stored in the tier; in tf32 the inputs are converted
  as :func:`refimpl._precision.tf32_rounding` says, and the oracle runs each plain function with both
  conversions, to nearest even and by truncation (:func:`refimpl.oracle.compare`);
* element-wise ``exp``, ``expm1``, divisions and reductions (softmax denominators, prefix sums,
  recurrence states) in float32 — float32 is the accumulation type of every tier below float64;
* the outputs (and the intermediates the oracle compares) stored in the tier.

The algorithms are the straightforward ones (the loop twins' order of operations), so their
round-off is what a correct, unsophisticated kernel shows — it grows with the sequence length
exactly as the kernel's does, which a fixed floor cannot model. At large sizes the attention references run
in blocks of query rows, each against the keys it may see (:func:`_key_range`: kernels skip the tiles they mask
whole), and the recurrences run their heads in two threads (:func:`_in_head_parts`): the same operations on each
number, up to float32 sums over fewer (zero) terms in the blocks. Each plain function takes the
case's keyword arguments (already rounded to the tier) and ``tier``, and returns
``{quantity: ndarray}`` for the quantities it models (outputs, and some intermediates);
quantities it does not return fall back to the rounded-input model of the oracle, and so does a
whole case with an argument the plain algorithm does not model (:func:`_call` raises
``NotImplementedError``): a verdict is never taken against a different computation.

Covered: softmax attention (with mask, causal, window, ALiBi) and its backward pass,
FlashAttention (output and log-sum-exp), linear attention, Performer and RFA (chapter 12), the
selective scan and its backward pass, in refimpl's layout and in mamba_ssm's (``selective_scan_fn``
and its backward pass, with the kernel's softplus threshold; chapter 11), Mamba-2's SSD, gated
linear attention, retention and the delta rule (chapter 16: their recurrences, step by step,
with float32 states) and their backward passes (the recurrence forwards, its adjoint backwards,
step by step) and their official interfaces (Mamba-2's ``mamba_chunk_scan_combined``, fla's
``chunk_gla``, ``chunk_simple_gla``, ``chunk_delta_rule``, ``chunk_gated_delta_rule`` and their
backward passes: the same recurrences in refimpl's layout with the official element-wise steps
in float32), one biquad, a transfer function and a biquad cascade (chapter 13).

Glossary: ``f32`` the accumulation dtype (float32); ``store`` rounding to the tier's storage
format; ``phi_q``, ``phi_k`` the linear-attention features φ(q), φ(k) (Eq. (12.2)); ``Ab``, ``Bu``
the discretized Ā_t and B̄_t u_t of the selective scan (Eqs. (11.15)–(11.16)).
"""

from __future__ import annotations

import inspect
import contextvars
import math

import numpy as np
import scipy.signal

from . import _blocking
from ._precision import matmul, operand, store, stored_is_operand, tier_name

__all__ = ["PLAIN", "softmax_attention", "softmax_attention_vjp", "linear_attention", "performer_attention", "rfa_attention", "selective_scan",
           "selective_scan_vjp", "ssd", "gated_linear_attention", "retention", "delta_rule", "ssd_vjp",
           "gated_linear_attention_vjp", "retention_vjp", "delta_rule_vjp", "linear_attention_vjp", "selective_scan_fn",
           "selective_scan_fn_vjp", "selective_state_update",
           "mamba_chunk_scan_combined", "mamba_chunk_scan_combined_vjp", "chunk_gla", "chunk_delta_rule", "chunk_gla_vjp",
           "chunk_delta_rule_vjp",
           "sos_filter", "biquad_filter", "tf_filter"]

f32 = np.float32


def _f32(x):
    return np.asarray(x).astype(f32)


def _sigmoid32(x):
    """σ(x) = 1 / (1 + e^{−x}) in float32."""
    return (f32(1) / (f32(1) + np.exp(-x))).astype(f32)


def _silu32(z):
    """silu(z) = z σ(z) = z / (1 + e^{−z}) in float32 (the gate of Mamba's output)."""
    return z / (f32(1) + np.exp(-z))


def _softplus32(x):
    """log(1 + e^x) in float32 as ``log1p(e^x)``, x itself above 20: as mamba_ssm's CUDA scan kernel
    (``log1pf(expf(x))``), ``F.softplus`` and its Triton softplus before Triton 3. Its Triton >= 3 softplus, used
    by the decoding step, computes ``log(e^x + 1)``, which differs below x ≈ −15.5 (0 below ln 2^-24 ≈ −16.6,
    where ``log1p`` keeps e^x): a plain model of that kernel is this one up to such tiny steps (chapter 11)."""
    return np.where(x > f32(20), x, np.log1p(np.exp(np.minimum(x, f32(20))))).astype(f32)


def _reduce32(g, shape):
    """The gradient ``g`` of an input of ``shape`` that was broadcast: summed over the broadcast axes in float32."""
    while g.ndim > len(shape):
        g = g.sum(axis=0, dtype=f32)
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True, dtype=f32) if axes else g


#: True while a plain model stands for FlashAttention-2's causal path with ALiBi, whose kernels add ``slope · j`` to the
#: logits (not ``−slope · (i + o − j)``: the same softmax, a log-sum-exp larger by ``slope · (i + o)``, and in
#: float32 the rounding of the larger biased logits, which a correct float32 port makes and the row-relative form
#: does not: it failed such a port by up to 3.6× at seqlen 1024)
_ALIBI_COLUMN = contextvars.ContextVar("alibi_column", default=False)


def _geometry(n, m, row0, causal, window, alibi: bool, offset: int = 0, col0: int = 0):
    """What the causal mask, the window and ALiBi make of rows ``row0 … row0 + n − 1`` and the ``m`` keys
    ``col0 … col0 + m − 1``: the allowed (i, j) (n, m), and the ALiBi distance in float32 (None without):
    |i + offset − j|, or −j on FlashAttention's causal path (:data:`_ALIBI_COLUMN`). The same for every head.
    ``offset`` aligns query i with key i + offset (0 top-left, M − N bottom-right, as refimpl)."""
    cols = np.arange(col0, col0 + m)
    lag = np.arange(row0, row0 + n)[:, None] + offset - cols[None, :]  # i + offset − j
    allowed = np.ones((n, m), dtype=bool)
    if causal:
        allowed &= lag >= 0
    if window is not None:
        allowed &= np.abs(lag) < int(window)
    if alibi and causal and _ALIBI_COLUMN.get():
        return allowed, np.broadcast_to(-cols.astype(f32), (n, m))
    return allowed, (np.abs(lag).astype(f32) if alibi else None)


def _attention_scores(q, k, mask, causal, scale, window, alibi_slopes, tier, row0=0, geometry=None, offset=0,
                      softcap=None, k_operand=False, col0=0):
    """The stored logits ``S = scale · Q Kᵀ`` (float32 accumulation, stored in the tier), masked with −∞.

    ``q`` holds the query rows ``row0, row0 + 1, …`` and ``k`` the keys ``col0, col0 + 1, …`` (a block of rows and
    a range of keys; ``mask`` already sliced).
    ``geometry``: :func:`_geometry` of these rows, when the caller computed it once for all heads.
    ``softcap`` c: ``c · tanh(S / c)`` in float32 on the stored logits, before the bias and the masks
    (the kernels' order, Eq. (4.14)). Returns the logits and ``tanh(S / c)`` (None without a cap; the
    backward pass's ``1 − tanh²``). ``k_operand``: ``k`` is already rounded for the product (:func:`operand`).
    """
    q = _f32(q)
    if not k_operand:
        k = _f32(k)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    s = matmul(q, np.swapaxes(k, -1, -2), tier, on_grid=(False, k_operand))
    s *= f32(scale)
    s = store(s, tier).astype(f32, copy=False)
    n, m = s.shape[-2:]
    tanh = None
    if softcap is not None:
        c = f32(softcap)
        tanh = np.tanh(s / c).astype(f32, copy=False)
        s = c * tanh
    if geometry is None:
        geometry = _geometry(n, m, row0, causal, window, alibi_slopes is not None, offset, col0)
    allowed, abs_lag = geometry
    if mask is not None:
        allowed = allowed & np.asarray(mask, dtype=bool)
    if alibi_slopes is not None:  # the linear bias −m·|i − j|, added in float32 to the stored logits
        slopes = _f32(alibi_slopes)
        s = s - (slopes[..., None, None] * abs_lag)
    return np.where(allowed, s, f32(-np.inf)), tanh


#: logits (batch entries × N × M) above which the plain attention references with weights run one
#: batch entry (head) at a time. Each entry is the same arithmetic as in the whole batch (row-wise
#: reductions, one product per entry), so the results are bitwise the same, but the temporaries
#: hold N·M numbers instead of B·N·M: at 8 heads × N = 4096 the plain backward pass allocated
#: several GB at once and spent 10–18 s of its 10–15 s in the kernel (page faults), against 3.6 s
#: head by head (measured).
_ENTRY_LOGITS = 1 << 22

#: logits (rows × keys × batch entries) per block of query rows of the plain attention without weights
_BLOCK_LOGITS = 1 << 21


def _block_rows(m: int, batch: tuple) -> int:
    """Query rows per block of the plain attention: about :data:`_BLOCK_LOGITS` logits against ``m`` keys."""
    return max(1, _BLOCK_LOGITS // max(m * math.prod(batch), 1))


def _by_entry(fn, seqs: dict, mask, alibi_slopes):
    """``fn(**seqs, mask=mask, alibi_slopes=alibi_slopes)``, one batch entry at a time when large.

    ``seqs`` holds (..., rows, cols) arrays whose leading axes broadcast to the batch, ``mask`` is
    None or broadcasts to (..., N, M), ``alibi_slopes`` None or broadcasts to the batch; ``fn``
    returns a tuple of arrays with the batch axes leading (as the whole-batch call would). Small
    problems (or no batch axes) make one call; otherwise the entries' results are written into
    arrays of the whole batch's shape.
    """
    mask = None if mask is None else np.asarray(mask, dtype=bool)
    slopes = None if alibi_slopes is None else np.asarray(alibi_slopes)
    lead = [a.shape[:-2] for a in map(np.asarray, seqs.values())]
    lead += [mask.shape[:-2]] if mask is not None and mask.ndim > 2 else []
    lead += [slopes.shape] if slopes is not None else []
    batch = np.broadcast_shapes(*lead)
    q = np.asarray(seqs["q"])
    logits = math.prod(batch) * q.shape[-2] * np.shape(seqs["k"])[-2]
    if not batch or math.prod(batch) == 1 or logits < _ENTRY_LOGITS:
        return fn(**seqs, mask=mask, alibi_slopes=alibi_slopes)
    full = {name: np.broadcast_to(a, batch + np.shape(a)[-2:]) for name, a in seqs.items()}
    if mask is not None and mask.ndim > 2:
        mask = np.broadcast_to(mask, batch + mask.shape[-2:])
    if slopes is not None:
        slopes = np.broadcast_to(slopes, batch)
    outs = None
    for idx in np.ndindex(*batch):
        got = fn(**{name: a[idx] for name, a in full.items()},
                 mask=mask[idx] if mask is not None and mask.ndim > 2 else mask,
                 alibi_slopes=None if slopes is None else slopes[idx])
        if outs is None:
            outs = tuple(np.empty(batch + g.shape, dtype=g.dtype) for g in got)
        for o, g in zip(outs, got):
            o[idx] = g
    return outs


def _softmax_rows(q, k, v, mask, causal, scale, window, alibi_slopes, tier, row0=0, geometry=None, offset=0,
                  softcap=None, keep_tanh=False, operands=False, col0=0):
    """P, y and ℓ of :func:`softmax_attention` for these query rows (and ``tanh(S / c)`` with
    ``keep_tanh``). A row with no allowed key (a window or a bottom-right causal mask can leave one)
    gets P = 0, y = 0 and ℓ = −∞, as in refimpl and in FlashAttention's kernels (which skip the max
    of an empty row), not 0/0. ``operands``: ``k`` and ``v`` are already rounded for the products
    (:func:`refimpl._precision.operand`; the same numbers). ``col0``: the first key of ``k`` (a range of keys,
    :func:`_key_range`)."""
    s, tanh = _attention_scores(q, k, mask, causal, scale, window, alibi_slopes, tier, row0, geometry, offset, softcap,
                                k_operand=operands, col0=col0)
    mx = s.max(axis=-1, keepdims=True)
    empty = mx == -np.inf
    has_empty = bool(empty.any())
    if has_empty:
        mx[empty] = 0.0  # e^{−∞ − 0} = 0 for every key of the row
    s -= mx
    np.exp(s, out=s)
    z = s.sum(axis=-1, keepdims=True, dtype=f32)
    s /= np.where(empty, f32(1), z) if has_empty else z
    p = store(s, tier)
    y = store(matmul(p, v if operands else _f32(v), tier, on_grid=(stored_is_operand(tier), operands)), tier)
    with np.errstate(divide="ignore"):  # log 0 = −∞ for an empty row
        lse = (mx + np.log(z))[..., 0].astype(f32)  # kept in float32, as fused kernels write ℓ
    return (p, y, lse, tanh) if keep_tanh else (p, y, lse)


def _offset(q, k, causal_alignment) -> int:
    """Key i + offset is aligned with query i: 0 top-left, M − N bottom-right (refimpl's convention)."""
    return 0 if causal_alignment == "top_left" else np.shape(k)[-2] - np.shape(q)[-2]


def _key_range(r0, r1, m, causal, window, offset, mask) -> tuple[int, int]:
    """The keys ``[k0, k1)`` outside which every query row ``r0 … r1 − 1`` is masked: the causal mask (keys
    ``j <= i + offset``), the window (``|i + offset − j| < window``) and ``mask`` (these rows, any batch axes) cut
    the key range of a block of rows. The blocked plain attention reads only these keys, as a FlashAttention kernel
    skips the tiles it masks whole: a causal problem costs half the products and exponentials of a full one. The
    keys it drops have P = 0 in every row; the sums over the keys (the softmax's normalizer, P V, dS K, and the
    sums over the rows of dK, dV) then run over fewer terms, and float32 may round them otherwise (by a unit in
    the last place). A block whose rows see no key at all keeps every key (its rows are empty either way)."""
    k0, k1 = 0, m
    if causal:
        k1 = min(k1, r1 + offset)
    if window is not None:
        k0 = max(k0, r0 + offset - int(window) + 1)
        k1 = min(k1, r1 - 1 + offset + int(window))
    if mask is not None and k0 < k1:
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim:
            seen = np.flatnonzero(mask[..., k0:k1].reshape(-1, k1 - k0).any(axis=0)) if mask.shape[-1] == m else None
            if seen is not None:
                k0, k1 = (k0 + int(seen[0]), k0 + int(seen[-1]) + 1) if seen.size else (k0, k0)
    return (k0, k1) if k0 < k1 else (0, m)


def _block_keys(mask, rows: slice, n: int, m: int, causal, window, offset) -> tuple[slice, object]:
    """The keys (a slice) that the query rows ``rows`` may see (:func:`_key_range`) and ``mask`` cut to these rows
    and keys (None stays None; a mask that broadcasts along the rows or keys keeps that axis)."""
    mk = mask[..., rows, :] if mask is not None and mask.ndim >= 2 and mask.shape[-2] == n else mask
    cols = slice(*_key_range(rows.start, rows.stop, m, causal, window, offset, mk))
    return cols, (mk[..., cols] if mk is not None and mk.ndim and mk.shape[-1] == m else mk)


def softmax_attention(q, k, v, mask=None, causal=False, scale=None, window=None, alibi_slopes=None,
                      causal_alignment="top_left", softcap=None, *, tier, weights=True):
    """Eqs. (4.1)–(4.3) as FlashAttention's low-precision reference: S = scale·QKᵀ, P = softmax(S), y = P V.

    S is accumulated in float32 and stored in the tier; the softmax runs in float32 on the stored
    scores (max-subtracted) and P is stored; ``P @ V`` is accumulated in float32 and stored.
    ``window`` and ``alibi_slopes`` (Eq. (16.16)) restrict and bias the stored logits in float32,
    aligned as ``causal_alignment`` says; ``softcap`` caps them first (float32).
    Returns ``{"A": P, "y": y, "lse": ℓ}`` with the row log-sum-exp ``ℓ_i = m_i + log Σ_j e^{s_ij − m_i}``
    of the stored logits, kept in float32 as fused kernels write it (Eq. (16.15)). With ``weights=False`` the rows
    are processed in blocks, each against the keys it may see (:func:`_key_range`: the same arithmetic row by row,
    up to the order in which float32 sums of fewer terms, or BLAS products of another shape, round) and ``A`` is
    not returned, so memory stays O(block · M) at any N.
    """
    tier = tier_name(tier)
    offset = _offset(q, k, causal_alignment)
    if weights:
        geometry = _geometry(np.shape(q)[-2], np.shape(k)[-2], 0, causal, window, alibi_slopes is not None, offset)
        fixed = dict(causal=causal, scale=scale, window=window, tier=tier, geometry=geometry, softcap=softcap)
        p, y, lse = _by_entry(lambda q, k, v, mask, alibi_slopes: _softmax_rows(q, k, v, mask, alibi_slopes=alibi_slopes, **fixed),
                              dict(q=q, k=k, v=v), mask, alibi_slopes)
        return {"A": p, "y": y, "lse": lse}

    def blocks(q, k, v, mask, alibi_slopes):  # the rows in blocks of about _BLOCK_LOGITS logits (all entries)
        q = _f32(q)
        n, m = q.shape[-2], np.shape(k)[-2]
        k, v = operand(_f32(k), tier), operand(_f32(v), tier)  # rounded once for every block of rows
        batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
        step = _block_rows(m, batch)
        ys, lses = [], []
        for r0 in range(0, n, step):
            rows = slice(r0, min(n, r0 + step))
            # one block: all keys, the arithmetic of the unblocked reference
            cols, mk = _block_keys(mask, rows, n, m, causal, window, offset) if step < n else (slice(0, m), mask)
            _, y, lse = _softmax_rows(q[..., rows, :], k[..., cols, :], v[..., cols, :], mk, causal, scale, window,
                                      alibi_slopes, tier, r0, offset=offset, softcap=softcap, operands=True,
                                      col0=cols.start)
            ys.append(y)
            lses.append(lse)
        return np.concatenate(ys, axis=-2), np.concatenate(lses, axis=-1)

    # one batch entry (head) at a time when large (_by_entry): blocks of hundreds of rows, whose products run near
    # the GEMM rate, not a few rows of every head (16 rows × 32 heads at 4096 keys took 1.7 times as long; measured)
    y, lse = _by_entry(blocks, dict(q=q, k=k, v=v), mask, alibi_slopes)
    return {"y": y, "lse": lse}


def softmax_attention_vjp(q, k, v, dy, mask=None, causal=False, scale=None, window=None, alibi_slopes=None,
                          causal_alignment="top_left", softcap=None, *, tier):
    r"""The backward pass of Eq. (4.1) as FlashAttention's backward kernel computes it in the tier.

    The weights P are recomputed as in :func:`softmax_attention` (stored logits, float32 softmax,
    P stored), ``O = P V`` stored; ``dV = Pᵀ dO`` and ``dP = dO Vᵀ`` are products with tier-rounded
    inputs and float32 accumulation; ``D_i = Σ_j dO_ij O_ij`` in float32; ``dS = P ∘ (dP − D)`` in
    float32, stored; ``dQ = scale · dS K`` and ``dK = scale · dSᵀ Q`` are tier products. Gradients are
    summed over broadcast batch axes and stored. Returns ``{"dq", "dk", "dv", "lse", "D"}``, the row
    log-sum-exp ℓ of the recomputed logits and ``D`` kept in float32 (FlashAttention-2 stores both in
    float32: ``softmax_lse``, ``softmax_d``), so a ``D`` accumulated in the tier is seen. A sliding window
    and ALiBi biases enter through the recomputed P only (forbidden entries have P = 0, hence
    dS = 0; the bias is a constant). A soft cap multiplies dS by ``1 − tanh²(S / c)`` in float32.
    Beyond :data:`_BLOCK_LOGITS` logits per head the query rows run in blocks, each against the keys it may see
    (:func:`_key_range`), with dK and dV accumulated over the blocks in float32 and scaled once, as in the kernel;
    memory O(block · M) beyond the inputs and gradients.
    """
    tier = tier_name(tier)
    c = f32(1.0 / math.sqrt(np.shape(q)[-1]) if scale is None else float(scale))
    offset = _offset(q, k, causal_alignment)
    geometry = _geometry(np.shape(q)[-2], np.shape(k)[-2], 0, causal, window, alibi_slopes is not None, offset)
    stored = stored_is_operand(tier)  # P and dS as stored: no second rounding for their products

    def rows_grads(q, k, v, dy, mask, alibi_slopes, row0=0, col0=0, geometry=None, operands=False):
        """dq, dSᵀ Q (dK before the scale), dv, ℓ and D of the rows ``row0 …`` against the keys ``col0 …``"""
        p, y, lse, tanh = _softmax_rows(q, k, v, mask, causal, scale, window, alibi_slopes, tier, row0, geometry,
                                        offset, softcap, keep_tanh=True, operands=operands, col0=col0)
        if _ALIBI_COLUMN.get() and alibi_slopes is not None:  # FlashAttention-2's causal path with ALiBi: P from the
            s, _ = _attention_scores(q, k, mask, causal, scale, window, alibi_slopes, tier, row0, geometry, offset,
                                     softcap, k_operand=operands, col0=col0)  # stored float32 lse, exp(s + slope·j − ℓ),
            with np.errstate(invalid="ignore"):  # as its kernel recomputes it (ℓ and s of order slope·j: both round)
                p = store(np.where(np.isneginf(s), f32(0), np.exp(s - lse[..., None])), tier)
        p = p.astype(f32, copy=False)
        q, k, v, dy = _f32(q), _f32(k), _f32(v), _f32(dy)
        dv = matmul(np.swapaxes(p, -1, -2), dy, tier, on_grid=(stored, False))
        dp = matmul(dy, np.swapaxes(v, -1, -2), tier, on_grid=(False, operands))
        D = np.sum(dy * y.astype(f32), axis=-1, keepdims=True, dtype=f32)
        dp -= D
        dp *= p  # P ∘ (dP − D), in place (the temporaries are rows × keys)
        if tanh is not None:
            dp *= 1 - tanh * tanh  # through the cap: ∂(c tanh(s/c))/∂s = 1 − tanh²
        ds = store(dp, tier)
        return (matmul(ds, k, tier, on_grid=(stored, operands)) * c,
                matmul(np.swapaxes(ds, -1, -2), q, tier, on_grid=(stored, False)), dv, lse, D[..., 0])

    def grads(q, k, v, dy, mask, alibi_slopes):  # dq, dk, dv before the sums over broadcast axes
        n, m = np.shape(q)[-2], np.shape(k)[-2]
        lead = [np.shape(a)[:-2] for a in (q, k, v, dy)] + ([np.shape(mask)[:-2]] if np.ndim(mask) > 2 else [])
        batch = np.broadcast_shapes(*lead)
        step = _block_rows(m, batch)
        if step >= n:  # one block: the whole problem at once
            dq, dk, dv, lse, D = rows_grads(q, k, v, dy, mask, alibi_slopes, geometry=geometry)
            return dq, dk * c, dv, lse, D
        # Blocks of query rows, each against the keys it may see (_key_range), as FlashAttention's backward kernel
        # visits the tiles; dK and dV accumulate over the blocks in float32 (the kernel's accumulators), scaled once.
        k, v = operand(_f32(k), tier), operand(_f32(v), tier)  # rounded once for every block
        q, dy = _f32(q), _f32(dy)
        dq = np.empty(batch + (n, q.shape[-1]), dtype=f32)
        dk = np.zeros(batch + k.shape[-2:], dtype=f32)
        dv = np.zeros(batch + v.shape[-2:], dtype=f32)
        lse, D = np.empty(batch + (n,), dtype=f32), np.empty(batch + (n,), dtype=f32)
        for r0 in range(0, n, step):
            rows = slice(r0, min(n, r0 + step))
            cols, mk = _block_keys(mask, rows, n, m, causal, window, offset)
            g = rows_grads(q[..., rows, :], k[..., cols, :], v[..., cols, :], dy[..., rows, :], mk, alibi_slopes, r0,
                           cols.start, operands=True)
            dq[..., rows, :], lse[..., rows], D[..., rows] = g[0], g[3], g[4]
            dk[..., cols, :] += g[1]
            dv[..., cols, :] += g[2]
        dk *= c
        return dq, dk, dv, lse, D

    dq, dk, dv, lse, D = _by_entry(grads, dict(q=q, k=k, v=v, dy=dy), mask, alibi_slopes)
    return {"dq": store(_reduce32(dq, np.shape(q)), tier), "dk": store(_reduce32(dk, np.shape(k)), tier),
            "dv": store(_reduce32(dv, np.shape(v)), tier), "lse": lse, "D": D}


def _elu1(x):
    """φ(x) = elu(x) + 1 in float32 (Eq. (12.2))."""
    x = _f32(x)
    return np.where(x > 0, x + f32(1), np.exp(np.minimum(x, f32(0))))


def _kernel_attention(phi_q, phi_k, v, causal, tier, block=256):
    r"""Eqs. (12.2)–(12.3) on stored features: the state Σ φ(k_j)[v_j, 1]ᵀ accumulated in float32.

    Causal: the prefix sums ``S_i = S_{i−1} + φ(k_i)[v_i, 1]ᵀ`` one token after the other
    (sequential float32 additions, the RNN of Eq. (12.3)), then ``φ(q_i)ᵀ S_i`` as a product
    whose inputs are rounded to the tier, numerator over normalizer in float32, stored.
    """
    phi_q, phi_k, v = _f32(phi_q), _f32(phi_k), _f32(v)
    va = np.concatenate([v, np.ones(v.shape[:-1] + (1,), dtype=f32)], axis=-1)
    out = _read_states(phi_q, phi_k, va, causal, tier, block)
    y = out[..., :-1] / out[..., -1:]
    return store(y, tier)


def _read_states(a, b, w, causal, tier, block=256):
    r"""``r_i = a_iᵀ S_i`` with the state ``S_i = Σ_j b_j w_jᵀ`` over all j, or j ≤ i if ``causal``:
    the running state accumulated in float32 one token after the other (the RNN of Eq. (12.3)), read
    with products whose inputs are rounded to the tier. Float32 inputs (..., n, ·); returns (..., n, w)."""
    if not causal:
        return matmul(a, np.matmul(np.swapaxes(b, -1, -2), w), tier)  # the state: a float32 reduction
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2], w.shape[:-2])
    a, b, w = (np.broadcast_to(x, batch + x.shape[-2:]) for x in (a, b, w))
    n, c, m = a.shape[-2], a.shape[-1], w.shape[-1]
    state = np.zeros(batch + (c, m), dtype=f32)
    out = np.empty(batch + (n, m), dtype=f32)
    for start in range(0, n, block):
        sl = slice(start, min(start + block, n))
        outer = b[..., sl, :, None] * w[..., sl, None, :]  # b_j w_jᵀ (exact in float32 for 16-bit tiers)
        outer[..., 0, :, :] += state
        np.cumsum(outer, axis=-3, dtype=f32, out=outer)  # S_i, sequential float32 sums
        state = outer[..., -1, :, :].copy()
        out[..., sl, :] = matmul(a[..., sl, None, :], outer, tier)[..., 0, :]
    return out


def linear_attention(q, k, v, causal=False, feature_map="elu+1", *, tier):
    r"""Eqs. (12.2)–(12.3): φ = elu + 1 in float32, stored in the tier, then :func:`_kernel_attention`."""
    if not (isinstance(feature_map, str) and feature_map == "elu+1"):
        raise NotImplementedError("plain low-precision linear attention models only feature_map='elu+1'")
    tier = tier_name(tier)
    phi_q, phi_k = (store(_elu1(x), tier) for x in (q, k))
    return {"y": _kernel_attention(phi_q, phi_k, v, causal, tier)}


#: weights (rows × keys × batch entries) per block of query rows of the plain linear attention's backward pass
_LINEAR_BLOCK_WEIGHTS = 1 << 22


def linear_attention_vjp(q, k, v, dy, causal=False, *, tier):
    r"""The backward pass of Eqs. (12.2)–(12.4) in the tier, through the quadratic (masked) form: ``dq, dk, dv``.

    What automatic differentiation of the textbook form computes: stored features φ = elu + 1,
    ``A = φ(q) φ(k)ᵀ`` (causally masked) a tier product, stored; ``den_i = Σ_j A_ij`` in float32,
    ``y = (A v) / den``; then ``dnum = dy / den``, ``dden = −(dy·y) / den``, ``dA = dnum vᵀ + dden``
    (masked), stored, and ``dφ(q) = dA φ(k)``, ``dφ(k) = dAᵀ φ(q)``, ``dv = Aᵀ dnum`` (tier
    products, float32 sums over row blocks), ``dq = φ'(q) ⊙ dφ(q)`` with ``φ' = min(φ, 1)``. Rows in
    blocks: memory O(block · M); causal, each block reads the keys up to its last row only. Of the two
    textbook algorithms this one errs more in float32 (every pair's weight rounded, sums over all keys):
    the factored form of :func:`linear_attention` (its states, :func:`_read_states`) stays within its
    bound, and this one — a float32 PyTorch kernel written from the masked form failed a bound set by
    the factored form by up to 1.9× — meets it.
    """
    tier = tier_name(tier)
    phi_q, phi_k = (store(_elu1(x), tier).astype(f32) for x in (q, k))
    v, dy = _f32(v), _f32(dy)
    batch = np.broadcast_shapes(phi_q.shape[:-2], phi_k.shape[:-2], v.shape[:-2], dy.shape[:-2])
    phi_q, dy = (np.broadcast_to(a, batch + a.shape[-2:]) for a in (phi_q, dy))
    phi_k, v = (np.broadcast_to(a, batch + a.shape[-2:]) for a in (phi_k, v))
    n, m = phi_q.shape[-2], phi_k.shape[-2]
    dphi_q = np.empty(phi_q.shape, f32)
    dphi_k, dv = np.zeros(phi_k.shape, f32), np.zeros(v.shape, f32)
    kT, vT = np.swapaxes(phi_k, -1, -2), np.swapaxes(v, -1, -2)
    # the operands every block of rows reads, rounded once (the stored features are on the grid but in tf32)
    kT_r, v_r, vT_r, k_r = (operand(a, tier) for a in (kT, v, vT, phi_k))
    stored = stored_is_operand(tier)
    step = max(1, _LINEAR_BLOCK_WEIGHTS // max(1, m * math.prod(batch)))
    for r0 in range(0, n, step):
        rows = slice(r0, min(n, r0 + step))
        # causal: the block's rows see the keys before rows.stop only (as _key_range; one block sees them all)
        cols = slice(0, min(m, rows.stop) if causal else m)
        keep = None if not causal else np.arange(cols.stop)[None, :] <= np.arange(r0, rows.stop)[:, None]
        A = matmul(phi_q[..., rows, :], kT_r[..., cols], tier, on_grid=(stored, True))
        if keep is not None:
            A = np.where(keep, A, f32(0))
        A = store(A, tier).astype(f32, copy=False)
        den = np.sum(A, axis=-1, keepdims=True, dtype=f32)
        y = matmul(A, v_r[..., cols, :], tier, on_grid=(stored, True)) / den
        dnum = dy[..., rows, :] / den
        dA = matmul(dnum, vT_r[..., cols], tier, on_grid=(False, True)) - np.sum(dy[..., rows, :] * y, axis=-1,
                                                                                keepdims=True, dtype=f32) / den
        if keep is not None:
            dA = np.where(keep, dA, f32(0))
        dA = store(dA, tier).astype(f32, copy=False)
        dphi_q[..., rows, :] = matmul(dA, k_r[..., cols, :], tier, on_grid=(stored, True))
        dphi_k[..., cols, :] += matmul(np.swapaxes(dA, -1, -2), phi_q[..., rows, :], tier, on_grid=(stored, stored))
        dv[..., cols, :] += matmul(np.swapaxes(A, -1, -2), dnum, tier, on_grid=(stored, False))
    dq = dphi_q * np.minimum(_elu1(q), f32(1))
    dk = dphi_k * np.minimum(_elu1(k), f32(1))
    return {"dq": store(_reduce32(dq, np.shape(q)), tier), "dk": store(_reduce32(dk, np.shape(k)), tier),
            "dv": store(_reduce32(dv, np.shape(v)), tier)}


def performer_attention(q, k, v, projection, causal=False, kind="positive", scale=None, *, tier):
    r"""Eqs. (12.6)–(12.10) in the tier: FAVOR+ features in float32, stored, then kernel attention.

    ``q̂ = √scale · q`` (float32); the exponents ``ω·q̂`` are a product with tier-rounded inputs and
    float32 accumulation; ``ω·x − ‖x‖²/2`` (positive) shifted by the stabilizers of Eq. (12.10) —
    each query row by its own maximum, all keys by one common maximum — and exponentiated in
    float32 (trig: ``e^{‖x‖²/2 − max} [sin ωx, cos ωx]``), divided by √m and stored in the tier;
    then the sums of :func:`_kernel_attention`.
    """
    tier = tier_name(tier)
    d = np.shape(q)[-1]
    root = f32(math.sqrt(1.0 / math.sqrt(d) if scale is None else float(scale)))
    w = _f32(projection)
    m = w.shape[0]

    def features(x, axes):
        x = _f32(x) * root
        wx = matmul(x, w.T, tier)
        sq = f32(0.5) * np.sum(x * x, axis=-1, keepdims=True, dtype=f32)
        if kind == "positive":
            e = wx - sq
            e -= e.max(axis=axes, keepdims=True)
            phi = np.exp(e) / f32(math.sqrt(m))
        else:
            h = np.exp(sq - sq.max(axis=axes, keepdims=True)) / f32(math.sqrt(m))
            phi = np.concatenate([h * np.sin(wx), h * np.cos(wx)], axis=-1)
        return store(phi, tier)

    return {"y": _kernel_attention(features(q, (-1,)), features(k, (-2, -1)), v, causal, tier)}


def _outer(a, b, out=None):
    """``a bᵀ`` (…, m, n) of ``a`` (…, m) and ``b`` (…, n), into ``out`` when given: the step loops keep one buffer
    for it, not a fresh (batch × state)-sized array each step (measured at 32 heads of 128 × 128: GLA's state update
    took 0.68 ms a step with a new temporary, 0.27 ms with the buffer)."""
    return np.multiply(a[..., :, None], b[..., None, :], out=out)


def _gated_step(S, k, v, g, t: int, buf=None, in_place=False):
    """``S_t = Diag(g_t) S_{t−1} + k_t v_tᵀ`` on the transposed state (Dk × Dv), in float32 (``buf``: for the outer
    product; ``in_place``: overwrite ``S``, where the states are not kept)."""
    S = np.multiply(S, g[..., t, :, None], out=S if in_place else None)  # else a new array (_states_backwards keeps them)
    S += _outer(k[..., t, :], v[..., t, :], buf)
    return S


def _gated_recurrence(q, k, v, log_g, tier, chunk=None, S0=None):
    r"""``S_t = Diag(g_t) S_{t−1} + k_t v_tᵀ``, ``o_t = q_tᵀ S_t`` in float32, one step after the other.

    The transposed state (Dk × Dv) of Eq. (16.2): ``q``, ``k`` (..., L, Dk), ``v`` (..., L, Dv),
    ``log_g`` (..., L, Dk) or (..., L, 1), all float32; the gates ``e^{log g}`` in float32, the
    state in float32 (the accumulator a kernel keeps), the read-out a product whose inputs are
    rounded to the tier (a kernel's ``tl.dot`` of the stored state and the queries). ``S0``: the
    transposed initial state (..., Dk, Dv) (None: 0). Returns the outputs (..., L, Dv) in float32
    and, if ``chunk``, the states at the chunk ends (..., n, Dv, Dk).
    """
    batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2], log_g.shape[:-2],
                                () if S0 is None else S0.shape[:-2])
    q, k, v, log_g = (_heads(a, batch) for a in (q, k, v, log_g))  # (batch entries, L, ·)
    nb, L, dk, dv = q.shape[0], q.shape[-2], q.shape[-1], v.shape[-1]
    g = np.exp(log_g)
    ends = [t for t in range(L) if t % chunk == chunk - 1 or t == L - 1] if chunk else []
    o, states = _read_out_steps(_gated_step, _filled(batch + (dk, dv), S0).reshape(nb, dk, dv), q, (k, v, g), ends, tier)
    o, states = o.reshape(batch + o.shape[1:]), states.reshape(batch + states.shape[1:])
    return o, (states if chunk else None)


def _read_out_steps(step, S_all, q, per_step, ends, tier):
    """The forward step loops of the plain recurrences: ``S ← step(S, *per_step, t)`` in place from ``S_all``
    (batch entries, Dk, Dv), the read-out ``o_t = q_tᵀ S_t`` a product with tier-rounded inputs, and the transposed
    states after the steps ``ends``; the batch entries in parts (:func:`_in_head_parts`). Returns ``o`` (batch
    entries, L, Dv) and the states (batch entries, len(ends), Dv, Dk), float32."""
    nb, L, (dk, dv) = q.shape[0], q.shape[1], S_all.shape[-2:]
    o = np.empty((nb, L, dv), dtype=f32)
    states = np.empty((nb, len(ends), dv, dk), dtype=f32)

    def steps(part):
        S, qs, args = S_all[part], q[part], [a[part] for a in per_step]
        buf = np.empty(S.shape, dtype=f32)  # for the outer products of the steps
        j = 0
        for t in range(L):
            S = step(S, *args, t, buf, in_place=True)
            o[part, t, :] = matmul(qs[:, t, None, :], S, tier)[:, 0, :]
            if j < len(ends) and t == ends[j]:
                states[part, j] = np.swapaxes(S, -1, -2)
                j += 1

    _in_head_parts(steps, nb, dk * dv)
    return o, states


def _scaled(q, scale):
    return _f32(q) * f32(1.0 / math.sqrt(np.shape(q)[-1]) if scale is None else float(scale))


def gated_linear_attention(q, k, v, log_g, scale=None, chunk_size=64, initial_state=None, *, tier):
    r"""Eq. (16.2), the recurrence of gated linear attention, in float32 (:func:`_gated_recurrence`).

    Per-channel gates ``log_g`` (..., L, Dk) or per-head gates (..., L). Returns the output and
    the states at the ends of the chunks of ``chunk_size`` steps (``chunk_states``), stored.
    """
    tier = tier_name(tier)
    lg = _f32(log_g)
    if lg.ndim == np.ndim(k) - 1:
        lg = lg[..., None]
    o, states = _gated_recurrence(_scaled(q, scale), _f32(k), _f32(v), lg, tier, int(chunk_size),
                                  _state_in(initial_state))
    return {"y": store(o, tier), "chunk_states": store(states, tier)}


def retention(q, k, v, gamma, scale=None, chunk_size=64, initial_state=None, *, tier):
    r"""Eq. (16.6): retention's recurrence ``S_n = γ_h S_{n−1} + v_n k_nᵀ`` in float32 (log γ in float32)."""
    tier = tier_name(tier)
    lg = np.log(_f32(gamma))[:, None, None]  # (H, 1, 1) against (..., H, L, 1)
    lg = np.broadcast_to(lg, (lg.shape[0], np.shape(q)[-2], 1))
    o, _ = _gated_recurrence(_scaled(q, scale), _f32(k), _f32(v), lg, tier, S0=_state_in(initial_state))
    return {"y": store(o, tier)}


def ssd(x, dt, A, B, C, D=None, chunk_size=64, initial_state=None, *, tier):
    r"""Eq. (16.7), Mamba-2's SSD recurrence ``h_t = e^{Δ_t A} h_{t−1} + Δ_t x_t B_tᵀ``, ``y_t = h_t C_t + D x_t``.

    In float32 per head (:func:`_gated_recurrence` with k = Δ B, v = x, q = C, log g = Δ A);
    head h reads group ``h // (H / G)`` of B and C. Returns y and the states at the chunk ends.
    """
    tier = tier_name(tier)
    o, states = _ssd32(x, dt, A, B, C, chunk_size, initial_state, tier)
    if D is not None:
        o = o + _f32(D)[:, None, None] * _f32(x)
    return {"y": store(o, tier), "chunk_states": store(states, tier)}


def _ssd32(x, dt, A, B, C, chunk_size, initial_state, tier):
    """:func:`ssd`'s recurrence without the skip: the float32 output ``h_t C_t`` and chunk-end states, not stored."""
    x, dt, A, B, C = (_f32(a) for a in (x, dt, A, B, C))
    H, G = x.shape[-3], B.shape[-3]
    B, C = np.repeat(B, H // G, axis=-3), np.repeat(C, H // G, axis=-3)
    return _gated_recurrence(C, B * dt[..., None], x, (dt * A[:, None])[..., None], tier, int(chunk_size),
                             _state_in(initial_state))


def _delta_step(S, k, v, beta, g, t: int, buf=None, in_place=False):
    """One step of the delta rule on the transposed state in float32: ``Sᵀ ← g_t Sᵀ``, then
    ``Sᵀ + k_t β_t (v_t − (g_t S) k_t)ᵀ`` (the prediction a float32 reduction; ``buf``, ``in_place`` as
    :func:`_gated_step`)."""
    S = np.multiply(S, g[..., t, None, None], out=S if in_place else None)
    kt = k[..., t, :]
    u = beta[..., t, None] * (v[..., t, :] - np.matmul(kt[..., None, :], S)[..., 0, :])
    S += _outer(kt, u, buf)  # in place: S is the array of the decay above
    return S


def delta_rule(q, k, v, beta, log_g=None, scale=None, chunk_size=64, initial_state=None, *, tier):
    r"""Eq. (16.9)–(16.10), the delta rule step by step in float32: ``S_t = g_t S_{t−1} + β_t (v_t − g_t S_{t−1} k_t) k_tᵀ``.

    The prediction ``S k`` is a float32 reduction, the state float32, the read-out ``S_t q_t`` a
    product with tier-rounded inputs; keys are used as given (rounded to the tier, so no longer
    exactly of unit norm — as in the kernel). Returns y and the states at the chunk ends.
    """
    tier = tier_name(tier)
    q, k, v, beta = _scaled(q, scale), _f32(k), _f32(v), _f32(beta)
    lg = np.zeros(beta.shape, f32) if log_g is None else _f32(log_g)
    S0 = _state_in(initial_state)
    batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2], beta.shape[:-1], lg.shape[:-1],
                                () if S0 is None else S0.shape[:-2])
    q, k, v = (_heads(a, batch) for a in (q, k, v))  # (batch entries, L, ·)
    beta, g = _heads(beta, batch, 1), _heads(np.exp(lg), batch, 1)
    nb, L, dk, dv, c = q.shape[0], q.shape[-2], k.shape[-1], v.shape[-1], int(chunk_size)
    ends = [t for t in range(L) if t % c == c - 1 or t == L - 1]
    S_all = _filled(batch + (dk, dv), S0).reshape(nb, dk, dv)  # Sᵀ
    o, states = _read_out_steps(_delta_step, S_all, q, (k, v, beta, g), ends, tier)
    o, states = o.reshape(batch + o.shape[1:]), states.reshape(batch + states.shape[1:])
    return {"y": store(o, tier), "chunk_states": store(states, tier)}


# ---- backward passes of the linear recurrences (chapter 16) --------------------------------------------


def _gated_adjoint(q, k, v, log_g, dy, tier, S0=None, dS_end=None):
    r"""The backward pass of :func:`_gated_recurrence` in float32: the states forwards, the adjoint backwards.

    Forward ``S_t = Diag(g_t) S_{t−1} + k_t v_tᵀ`` (the transposed state, Dk × Dv, from ``S0`` or 0)
    in float32 (:func:`_states_backwards`: O(√L) states in memory); then the adjoint ``Λ_t = ∂ℓ/∂S_t``,

    ``Λ_t = q_t dy_tᵀ + Diag(g_{t+1}) Λ_{t+1}``,  ``Λ_{L−1} = q_{L−1} dy_{L−1}ᵀ + dS_end``,

    one step after the other in float32 (Eq. (16.17) of the book), and at each step
    ``dq_t = S_t dy_t``, ``dk_t = Λ_t v_t``, ``dv_t = Λ_tᵀ k_t`` (products with tier-rounded inputs)
    and ``dlog g_t = g_t ⊙ Σ_i (Λ_t ⊙ S_{t−1})[:, i]`` (a float32 reduction, summed over the channels
    too for a gate per head: ``log_g`` (..., L, 1)). The log-gate gradient is the state form a
    step-by-step backward pass (automatic differentiation of the recurrence) computes. Returns
    ``dq, dk, dv, dlog_g`` (float32, the broadcast batch shape) and ``Diag(g_0) Λ_0`` (the
    gradient of ``S0``; None without ``S0``).
    """
    batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2], log_g.shape[:-2], dy.shape[:-2],
                                *(() if x is None else x.shape[:-2] for x in (S0, dS_end)))
    q, k, v, log_g, dy = (_heads(a, batch) for a in (q, k, v, log_g, dy))  # (batch entries, L, ·)
    nb, L, dk, dv = q.shape[0], q.shape[-2], k.shape[-1], v.shape[-1]
    g = np.exp(log_g)
    start = _filled(batch + (dk, dv), S0).reshape(nb, dk, dv)
    lam_all = _filled(batch + (dk, dv), dS_end).reshape(nb, dk, dv)
    dq, dkk, dvv = np.empty(q.shape, f32), np.empty(k.shape, f32), np.empty(v.shape, f32)
    dg = np.empty((nb, L, g.shape[-1]), dtype=f32)

    def steps(part):
        qs, ks, vs, gs, ys, lam = q[part], k[part], v[part], g[part], dy[part], lam_all[part]
        buf = np.empty(lam.shape, dtype=f32)  # for the outer products of the steps
        for t, S_prev, S_t in _states_backwards(lambda S, t: _gated_step(S, ks, vs, gs, t, buf), start[part], L):
            if t < L - 1:
                lam *= gs[:, t + 1, :, None]
            lam += _outer(qs[:, t, :], ys[:, t, :], buf)
            dq[part, t, :] = matmul(S_t, ys[:, t, :, None], tier)[..., 0]
            lam_r = operand(lam, tier)  # Λ_t as both of its products read it: rounded once
            dkk[part, t, :] = matmul(lam_r, vs[:, t, :, None], tier, on_grid=(True, False))[..., 0]
            dvv[part, t, :] = matmul(ks[:, t, None, :], lam_r, tier, on_grid=(False, True))[..., 0, :]
            rows = np.sum(lam * S_prev, axis=-1, dtype=f32)  # Σ_i Λ_t[j, i] S_{t−1}[j, i]
            if gs.shape[-1] == 1:
                rows = np.sum(rows, axis=-1, keepdims=True, dtype=f32)
            dg[part, t, :] = gs[:, t, :] * rows

    _in_head_parts(steps, nb, dk * dv)  # lam_all holds Λ_0 after
    dS0 = None if S0 is None else (g[:, 0, :, None] * lam_all if L else lam_all).reshape(batch + (dk, dv))
    dq, dkk, dvv, dg = (a.reshape(batch + a.shape[1:]) for a in (dq, dkk, dvv, dg))
    return dq, dkk, dvv, dg, dS0


#: state floats per step (batch entries × Dk × Dv) from which the plain step loops share their batch entries (heads)
#: out between threads: each step is a dozen NumPy calls on the whole batch's state, which release the GIL; on
#: states of a few hundred KiB two threads' calls hand the GIL back and forth more than they overlap
_HEAD_THREADS_FLOATS = 1 << 18


def _heads(a, batch: tuple, trailing: int = 2) -> np.ndarray:
    """``a`` broadcast to ``batch`` and its last ``trailing`` axes, the batch axes flattened into one (a view when the
    strides allow, else a copy): the batch entries of a step loop, which :func:`_in_head_parts` splits."""
    a = np.broadcast_to(a, batch + np.shape(a)[np.ndim(a) - trailing:])
    return a.reshape((math.prod(batch),) + a.shape[len(batch):])


def _in_head_parts(run, nb: int, state_floats: int) -> None:
    """``run(part)`` on parts of the ``nb`` batch entries (heads) of a step loop, in threads with one BLAS thread each
    (:func:`refimpl._blocking.in_parts`) when the state of all entries holds :data:`_HEAD_THREADS_FLOATS` numbers or
    more, else at once. The entries are independent and each is computed by the same operations either way (the
    products, roundings and row sums of one entry do not depend on the others), so the results are the same."""
    big = nb * state_floats >= _HEAD_THREADS_FLOATS  # (in_parts's own floor would keep small test states in one thread)
    _blocking.in_parts(run, nb, max(nb * state_floats, _blocking.THREAD_MIN_ELEMS) if big else 0, one_blas=True)


def _filled(shape: tuple, value) -> np.ndarray:
    """A float32 array of ``shape`` holding ``value`` broadcast (a state, a cotangent), or zeros for None."""
    out = np.zeros(shape, dtype=f32)
    if value is not None:
        out += value
    return out


def _states_backwards(step, start, L: int):
    """``(t, S_{t−1}, S_t)`` for t = L−1 down to 0 of the recurrence ``S_t = step(S_{t−1}, t)``, ``S_{−1} = start``.

    Checkpoints every ⌈√L⌉ steps, the states in between recomputed from them by the same float32
    operations (bitwise the forward pass's): O(√L) states in memory instead of L — the plain
    backward passes judge kernels at L in the thousands with states of 128 × 128 per head."""
    span = math.isqrt(max(L - 1, 0)) + 1
    marks, S = [], start
    for t in range(L):
        if t % span == 0:
            marks.append(S)
        S = step(S, t)
    for b in reversed(range(0, L, span)):
        local = [marks[b // span]]
        for t in range(b, min(b + span, L)):
            local.append(step(local[-1], t))
        for t in range(min(b + span, L) - 1, b - 1, -1):
            yield t, local[t - b], local[t - b + 1]


def _seq_sum32(terms, lead: int = 2):
    """Σ over the ``lead`` leading axes (batch and sequence) in one float32 accumulator per entry, in order.

    A sum over the sequence (SSD's dA and dD, Mamba-2's dD and ddt_bias) is a reduction whose order a
    kernel chooses (by chunks, atomics, trees); the one-accumulator order is the least accurate of
    them, so any reasonable order meets its bound."""
    t = np.asarray(terms, dtype=f32)
    rest = t.shape[lead:]
    flat = t.reshape((-1,) + rest)
    return np.cumsum(flat, axis=0, dtype=f32)[-1] if flat.shape[0] else np.zeros(rest, f32)


def _state_in(state):
    """A state in refimpl's orientation (..., Dv, Dk) as the float32 transposed state (..., Dk, Dv), or None."""
    return None if state is None else np.swapaxes(_f32(state), -1, -2)


def _state_grads(out: dict, dS0, initial_state, tier, raw: bool = False) -> dict:
    """``out`` with ``dinitial_state`` (refimpl's orientation, summed over broadcast axes) when a state was given,
    stored in the tier (``raw``: left in float32, for a caller that chains further steps before storing)."""
    if initial_state is not None:
        out["dinitial_state"] = _reduce32(np.swapaxes(dS0, -1, -2), np.shape(initial_state))
    return out if raw else {name: store(x, tier) for name, x in out.items()}


def gated_linear_attention_vjp(q, k, v, log_g, dy, scale=None, chunk_size=64, initial_state=None, dfinal_state=None,
                               *, tier, raw=False):
    r"""The backward pass of Eq. (16.2) step by step in float32 (:func:`_gated_adjoint`): ``dq, dk, dv, dlog_g``.

    ``dq`` is ``scale`` times the gradient of the scaled queries (float32); gradients are summed
    over broadcast axes in float32 and stored. With ``initial_state`` the recurrence starts from it
    and ``dinitial_state`` is returned; ``dfinal_state`` is the cotangent of the last state.
    """
    tier = tier_name(tier)
    c = f32(1.0 / math.sqrt(np.shape(q)[-1]) if scale is None else float(scale))
    lg = _f32(log_g)
    per_head = lg.ndim == np.ndim(k) - 1
    dq, dk, dv, dg, dS0 = _gated_adjoint(_f32(q) * c, _f32(k), _f32(v), lg[..., None] if per_head else lg, _f32(dy),
                                         tier, _state_in(initial_state), _state_in(dfinal_state))
    out = {"dq": _reduce32(dq * c, np.shape(q)), "dk": _reduce32(dk, np.shape(k)), "dv": _reduce32(dv, np.shape(v)),
           "dlog_g": _reduce32(dg[..., 0] if per_head else dg, np.shape(log_g))}
    return _state_grads(out, dS0, initial_state, tier, raw)


def retention_vjp(q, k, v, gamma, dy, scale=None, chunk_size=64, initial_state=None, dfinal_state=None, *, tier):
    r"""The backward pass of Eq. (16.6) step by step in float32 (log γ in float32): ``dq, dk, dv``."""
    tier = tier_name(tier)
    c = f32(1.0 / math.sqrt(np.shape(q)[-1]) if scale is None else float(scale))
    lg = np.log(_f32(gamma))[:, None, None]  # (H, 1, 1) against (..., H, L, 1)
    lg = np.broadcast_to(lg, (lg.shape[0], np.shape(q)[-2], 1))
    dq, dk, dv, _, dS0 = _gated_adjoint(_f32(q) * c, _f32(k), _f32(v), lg, _f32(dy), tier,
                                        _state_in(initial_state), _state_in(dfinal_state))
    out = {"dq": _reduce32(dq * c, np.shape(q)), "dk": _reduce32(dk, np.shape(k)), "dv": _reduce32(dv, np.shape(v))}
    return _state_grads(out, dS0, initial_state, tier)


def ssd_vjp(x, dt, A, B, C, D, dy, chunk_size=64, initial_state=None, dfinal_state=None, *, tier, raw=False):
    r"""The backward pass of Eq. (16.7) step by step in float32: :func:`_gated_adjoint` with k = Δ B, v = x,
    q = C, log g = Δ A per head, then the chain rule in float32:

    ``dB = Δ dk``, ``dΔ = B·dk + A ρ`` (ρ = ∂ℓ/∂(Δ A), the log-gate gradient), ``dA = Σ Δ ρ`` and
    ``dD = Σ dy·x`` over the batch and the sequence in one float32 accumulator each
    (:func:`_seq_sum32`), ``dx = dv + D dy``, ``dB``, ``dC`` summed over the H/G heads of a group.
    """
    tier = tier_name(tier)
    shapes = {"x": np.shape(x), "dt": np.shape(dt), "B": np.shape(B), "C": np.shape(C)}
    x, dt, A, B, C, dy = (_f32(a) for a in (x, dt, A, B, C, dy))
    H, G = x.shape[-3], B.shape[-3]
    Bh, Ch = np.repeat(B, H // G, axis=-3), np.repeat(C, H // G, axis=-3)
    dC, dk, dx, rho, dS0 = _gated_adjoint(Ch, Bh * dt[..., None], x, (dt * A[:, None])[..., None], dy, tier,
                                          _state_in(initial_state), _state_in(dfinal_state))
    rho = rho[..., 0]
    dtb = np.broadcast_to(dt, rho.shape)
    ddt = np.sum(dk * Bh, axis=-1, dtype=f32) + A[:, None] * rho
    dB = dk * dtb[..., None]
    dA = _seq_sum32(np.moveaxis((dtb * rho)[..., ::-1], -2, -1), dtb.ndim - 1)  # Σ_t Δ_t ρ_t, last step first
    dD = _seq_sum32(np.moveaxis(np.broadcast_to(dy * x, dx.shape), -3, -1), dx.ndim - 1)
    if D is not None:
        dx = dx + _f32(D)[:, None, None] * dy

    def group_sum(g):  # head h reads group h // (H/G)
        return g.reshape(g.shape[:-3] + (G, H // G) + g.shape[-2:]).sum(axis=-3, dtype=f32)

    out = {"dx": _reduce32(dx, shapes["x"]), "ddt": _reduce32(ddt, shapes["dt"]), "dA": dA,
           "dB": _reduce32(group_sum(dB), shapes["B"]), "dC": _reduce32(group_sum(dC), shapes["C"]), "dD": dD}
    return _state_grads(out, dS0, initial_state, tier, raw)


def delta_rule_vjp(q, k, v, beta, dy, log_g=None, scale=None, chunk_size=64, initial_state=None, dfinal_state=None,
                   *, tier, raw=False):
    r"""The backward pass of Eqs. (16.9)–(16.10) step by step in float32 (Eq. (16.20) of the book).

    The forward recurrence of :func:`delta_rule` (:func:`_delta_step`; O(√L) states in memory,
    :func:`_states_backwards`), then
    ``Mᵀ = Λ_t`` backwards, ``M_t = q_t dy_tᵀ + g_{t+1} (I − β_{t+1} k_{t+1} k_{t+1}ᵀ) M_{t+1}``
    (the update a float32 reduction), and per step, with the prediction error
    ``e_t = v_t − g_t S_{t−1} k_t``: ``dq_t = S_tᵀ dy_t``, ``dv_t = β_t Λ_t k_t``,
    ``dβ_t = (Λ_t k_t)·e_t``, ``dk_t = β_t Λ_tᵀ e_t − g_t β_t S_{t−1}ᵀ Λ_t k_t``,
    ``dlog g_t = g_t (⟨Λ_t, S_{t−1}⟩ − β_t (Λ_t k_t)·(S_{t−1} k_t))`` — the read-outs products with
    tier-rounded inputs, the rest float32.
    """
    tier = tier_name(tier)
    c = f32(1.0 / math.sqrt(np.shape(q)[-1]) if scale is None else float(scale))
    shapes = {"q": np.shape(q), "k": np.shape(k), "v": np.shape(v), "beta": np.shape(beta)}
    q, k, v, beta, dy = _f32(q) * c, _f32(k), _f32(v), _f32(beta), _f32(dy)
    lg = np.zeros(beta.shape, f32) if log_g is None else _f32(log_g)
    S0, dS_end = _state_in(initial_state), _state_in(dfinal_state)
    batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2], beta.shape[:-1], lg.shape[:-1], dy.shape[:-2],
                                *(() if x is None else x.shape[:-2] for x in (S0, dS_end)))
    q, k, v, dy = (_heads(a, batch) for a in (q, k, v, dy))  # (batch entries, L, ·)
    beta, g = _heads(beta, batch, 1), _heads(np.exp(lg), batch, 1)
    nb, L, dk, dv = q.shape[0], q.shape[-2], k.shape[-1], v.shape[-1]
    start, M_all = (_filled(batch + (dk, dv), x).reshape(nb, dk, dv) for x in (S0, dS_end))
    dq, dkk, dvv = np.empty(q.shape, f32), np.empty(k.shape, f32), np.empty(v.shape, f32)
    db, dg = np.empty(beta.shape, f32), np.empty(beta.shape, f32)

    def steps(part):
        qs, ks, vs, ys, bs, gs, M = q[part], k[part], v[part], dy[part], beta[part], g[part], M_all[part]
        prev = None  # (S_{t−1}, its product operand) of the step before (the next t down reads it as S_t)
        buf = np.empty(M.shape, dtype=f32)  # for the outer products of the steps
        for t, Sp, S_t in _states_backwards(lambda S, t: _delta_step(S, ks, vs, bs, gs, t, buf), start[part], L):
            # each state as the products read it, rounded once (S_t: the previous step's S_{t−1}, the same array,
            # unless a checkpoint segment starts here)
            S_t_r = prev[1] if prev is not None and prev[0] is S_t else operand(S_t, tier)
            Sp_r = operand(Sp, tier)
            prev = (Sp, Sp_r)
            if t < L - 1:  # M_t = g_{t+1} (I − β_{t+1} k_{t+1} k_{t+1}ᵀ) M_{t+1} + q_t dy_tᵀ
                kn = ks[:, t + 1, :]
                M -= _outer(bs[:, t + 1, None] * kn, np.matmul(kn[..., None, :], M)[..., 0, :], buf)
                M *= gs[:, t + 1, None, None]
            M += _outer(qs[:, t, :], ys[:, t, :], buf)
            kt, bt, gt = ks[:, t, :], bs[:, t, None], gs[:, t, None]
            M_r = operand(M, tier)
            pred = matmul(kt[..., None, :], Sp_r, tier, on_grid=(False, True))[..., 0, :]  # S_{t−1} k_t
            e = vs[:, t, :] - gt * pred
            lk = matmul(kt[..., None, :], M_r, tier, on_grid=(False, True))[..., 0, :]  # Λ_t k_t
            dq[part, t, :] = matmul(S_t_r, ys[:, t, :, None], tier, on_grid=(True, False))[..., 0]
            dvv[part, t, :] = bt * lk
            db[part, t] = np.sum(lk * e, axis=-1, dtype=f32)
            dkk[part, t, :] = bt * (matmul(M_r, e[..., :, None], tier, on_grid=(True, False))[..., 0]
                                    - gt * matmul(Sp_r, lk[..., :, None], tier, on_grid=(True, False))[..., 0])
            inner = np.sum(M * Sp, axis=(-2, -1), dtype=f32)  # ⟨Λ_t, S_{t−1}⟩
            dg[part, t] = gs[:, t] * (inner - bs[:, t] * np.sum(lk * pred, axis=-1, dtype=f32))

    _in_head_parts(steps, nb, dk * dv)  # M_all holds M_0 after
    dq, dkk, dvv, db, dg = (a.reshape(batch + a.shape[1:]) for a in (dq, dkk, dvv, db, dg))
    M = M_all.reshape(batch + (dk, dv))
    k, beta, g = (a.reshape(batch + a.shape[1:]) for a in (k, beta, g))
    out = {"dq": _reduce32(dq * c, shapes["q"]), "dk": _reduce32(dkk, shapes["k"]), "dv": _reduce32(dvv, shapes["v"]),
           "dbeta": _reduce32(db, shapes["beta"])}
    if log_g is not None:
        out["dlog_g"] = _reduce32(dg, np.shape(log_g))
    dS0 = None
    if S0 is not None:  # ∂ℓ/∂S_{−1} = g_0 (I − β_0 k_0 k_0ᵀ) M_0
        dS0 = M.copy()
        if L:
            k0 = k[..., 0, :]
            dS0 -= (beta[..., 0, None, None] * k0[..., :, None]) * np.matmul(k0[..., None, :], dS0)
            dS0 *= g[..., 0, None, None]
    return _state_grads(out, dS0, initial_state, tier, raw)


# ---- the official interfaces of Mamba-2 (mamba_ssm) and fla (chapter 16) ------------------------------


def _sw(a):
    """(B, T, H, ·) <-> (B, H, T, ·): the official layouts onto refimpl's, as views."""
    return np.swapaxes(np.asarray(a), 1, 2)


def _mamba_steps(dt, dt_bias, dt_softplus, dt_limit):
    """``dt + dt_bias``, its softplus (x itself above 20, as mamba_ssm's kernel) and Δ clamped to ``dt_limit``, float32."""
    raw = _f32(dt) + (f32(0) if dt_bias is None else _f32(dt_bias))
    pre = _softplus32(raw) if dt_softplus else raw
    lo, hi = (f32(v) for v in np.asarray(dt_limit, dtype=np.float64))
    return raw, pre, np.clip(pre, lo, hi).astype(f32)


def _mamba_out32(x, step, A, B, C, chunk_size, D, initial_states, tier):
    """``y + D x`` (official layout, float32, not stored) and the float32 final states."""
    o, states = _ssd32(_sw(x), _sw(step), A, _sw(B), _sw(C), chunk_size, initial_states, tier)
    u = _sw(o)
    if D is not None:
        D32 = _f32(D)
        u = u + (D32[:, None] if D32.ndim == 1 else D32) * _f32(x)
    return u, states[:, :, -1]


def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                              dt_softplus=False, dt_limit=(0.0, np.inf), *, tier):
    r"""mamba_ssm's ``mamba_chunk_scan_combined`` as its kernel computes it on low-precision inputs.

    ``Δ = clamp(softplus(dt + dt_bias), dt_limit)`` in float32 (x itself above 20), :func:`ssd`'s
    float32 recurrence in refimpl's layout, then ``(y + D x) · z σ(z)`` in float32 (D per head or per
    channel); ``out`` and ``final_states`` stored in the tier once; ``Delta`` (float32) for the intermediate.
    """
    tier = tier_name(tier)
    _, _, step = _mamba_steps(dt, dt_bias, dt_softplus, dt_limit)
    u, final = _mamba_out32(x, step, A, B, C, chunk_size, D, initial_states, tier)
    if z is not None:
        z32 = _f32(z)
        u = u * _silu32(z32)
    return {"out": store(u, tier), "final_states": store(final, tier), "Delta": step}


def mamba_chunk_scan_combined_vjp(x, dt, A, B, C, dout, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                                  dt_softplus=False, dt_limit=(0.0, np.inf), dfinal_states=None, *, tier):
    r"""Its backward pass in float32: the gate (``u = y + D x`` recomputed in float32), :func:`ssd_vjp`'s
    float32 adjoint on ``du``, then ``dx += D du``, ``dD = Σ du ⊙ x`` and ``ddt_bias = Σ ddt`` (one float32
    accumulator each), the clamp's mask and the softplus' σ in float32; every gradient stored once."""
    tier = tier_name(tier)
    raw, pre, step = _mamba_steps(dt, dt_bias, dt_softplus, dt_limit)
    du, out = _f32(dout), {}
    if z is not None:
        u, _ = _mamba_out32(x, step, A, B, C, chunk_size, D, initial_states, tier)
        z32 = _f32(z)
        s = _sigmoid32(z32)
        dz = du * u * (s * (f32(1) + z32 * (f32(1) - s)))
        du = du * (z32 * s)
    g = ssd_vjp(_sw(x), _sw(step), A, _sw(B), _sw(C), None, _sw(du), chunk_size, initial_states, dfinal_states,
                tier=tier, raw=True)
    dx = _sw(g["dx"])
    lo, hi = (f32(v) for v in np.asarray(dt_limit, dtype=np.float64))
    dpre = np.where((pre < lo) | (pre > hi), f32(0), _sw(g["ddt"]))
    draw = (dpre * _sigmoid32(raw)).astype(f32) if dt_softplus else dpre
    out.update(dx=dx, ddt=draw, dA=g["dA"], dB=_sw(g["dB"]), dC=_sw(g["dC"]))
    if D is not None:
        D32 = _f32(D)
        dx += (D32[:, None] if D32.ndim == 1 else D32) * du
        terms = du * _f32(x)  # (b, l, h, p)
        out["dD"] = _seq_sum32(terms) if D32.ndim == 2 else _seq_sum32(np.swapaxes(terms, -1, -2), 3)
    if z is not None:
        out["dz"] = dz
    if dt_bias is not None:
        out["ddt_bias"] = _seq_sum32(draw)
    if initial_states is not None:
        out["dinitial_states"] = g["dinitial_state"]
    return {name: store(v, tier) for name, v in out.items()}


def _l2norm32(x):
    """fla's ``l2norm_fwd`` in float32: ``x · r``, ``r = 1/sqrt(Σ x² + 1e-6)``; returns both."""
    x32 = _f32(x)
    r = (f32(1) / np.sqrt(np.sum(x32 * x32, axis=-1, dtype=f32) + f32(1e-6))).astype(f32)
    return x32 * r[..., None], r


def _fla_state(h):
    """fla's state (B, H, K, V) as refimpl's (B, H, V, K), or None."""
    return None if h is None else np.swapaxes(np.asarray(h), -1, -2)


def _fla_out(res):
    o, states = res["y"], res["chunk_states"]
    return {"o": _sw(o), "final_state": np.swapaxes(states[..., -1, :, :], -1, -2)}


def chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, *, tier):
    r"""fla's ``chunk_gla`` / ``chunk_simple_gla`` (g per channel or per head): :func:`gated_linear_attention`'s
    float32 recurrence in refimpl's layout, the state in fla's orientation; ``o`` and ``final_state`` stored."""
    return _fla_out(gated_linear_attention(_sw(q), _sw(k), _sw(v), _sw(g), scale, 64, _fla_state(initial_state),
                                           tier=tier))


def chunk_delta_rule(q, k, v, beta, g=None, scale=None, initial_state=None, output_final_state=False,
                     use_qk_l2norm_in_kernel=False, *, tier):
    r"""fla's ``chunk_delta_rule`` / ``chunk_gated_delta_rule``: q and k normalized in float32 if asked
    (:func:`_l2norm32`), then :func:`delta_rule`'s float32 recurrence in refimpl's layout."""
    if use_qk_l2norm_in_kernel:
        (q, _), (k, _) = _l2norm32(q), _l2norm32(k)
    return _fla_out(delta_rule(_sw(q), _sw(k), _sw(v), _sw(beta), None if g is None else _sw(g), scale, 64,
                               _fla_state(initial_state), tier=tier))


def chunk_gla_vjp(q, k, v, g, do, scale=None, initial_state=None, dht=None, *, tier):
    r"""The backward pass of fla's ``chunk_gla`` / ``chunk_simple_gla``: :func:`gated_linear_attention_vjp`
    in refimpl's layout, named and oriented as fla's (``dg``, ``dh0``)."""
    gr = gated_linear_attention_vjp(_sw(q), _sw(k), _sw(v), _sw(g), _sw(do), scale, 64, _fla_state(initial_state),
                                    _fla_state(dht), tier=tier)
    out = {"dq": _sw(gr["dq"]), "dk": _sw(gr["dk"]), "dv": _sw(gr["dv"]), "dg": _sw(gr["dlog_g"])}
    if initial_state is not None:
        out["dh0"] = np.swapaxes(gr["dinitial_state"], -1, -2)
    return out


def chunk_delta_rule_vjp(q, k, v, beta, do, g=None, scale=None, initial_state=None, dht=None,
                         use_qk_l2norm_in_kernel=False, *, tier):
    r"""The backward pass of fla's delta rules: :func:`delta_rule_vjp` in float32 on the normalized q, k,
    then (with ``use_qk_l2norm_in_kernel``) fla's ``l2norm_bwd`` ``dx = r (dy − y (y·dy))`` in float32."""
    tier = tier_name(tier)
    rq = rk = None
    if use_qk_l2norm_in_kernel:
        (q, rq), (k, rk) = _l2norm32(q), _l2norm32(k)
    gr = delta_rule_vjp(_sw(q), _sw(k), _sw(v), _sw(beta), _sw(do), None if g is None else _sw(g), scale, 64,
                        _fla_state(initial_state), _fla_state(dht), tier=tier, raw=True)
    out = {"dq": _sw(gr["dq"]), "dk": _sw(gr["dk"]), "dv": _sw(gr["dv"])}
    if rq is not None:
        for name, y, r in (("dq", _f32(q), rq), ("dk", _f32(k), rk)):
            dy = out[name]
            out[name] = r[..., None] * (dy - y * np.sum(y * dy, axis=-1, dtype=f32)[..., None])
    if g is not None:
        out["dg"] = _sw(gr["dlog_g"])
    out["dbeta"] = _sw(gr["dbeta"])
    if initial_state is not None:
        out["dh0"] = np.swapaxes(gr["dinitial_state"], -1, -2)
    return {name: store(x, tier) for name, x in out.items()}


def rfa_attention(q, k, v, n_features, sigma, seed, gates=None, causal=True, *, tier):
    r"""Eqs. (12.5), (12.11)–(12.12): RFA with random Fourier features in float32, gated or not.

    ω = N(0, σ⁻² I) drawn from ``numpy.random.default_rng(seed)`` as refimpl draws it and held in
    the tier; q/‖q‖, k/‖k‖ in float32; ``φ(x) = [sin ωx, cos ωx]/√D`` with ``ωx`` a tier product,
    stored. Gated: the recurrence ``S_t = g_t S_{t−1} + (1 − g_t) φ(k_t)[v_t, 1]ᵀ`` in float32;
    ungated: :func:`_kernel_attention`.
    """
    tier = tier_name(tier)
    d = np.shape(q)[-1]
    w = store(np.random.default_rng(int(seed)).standard_normal((int(n_features), d)) / float(sigma), tier)
    w = _f32(w)

    def features(x):
        x = _f32(x)
        x = x / np.sqrt(np.sum(x * x, axis=-1, keepdims=True, dtype=f32))
        wx = matmul(x, w.T, tier)
        return store(np.concatenate([np.sin(wx), np.cos(wx)], axis=-1) / f32(math.sqrt(w.shape[0])), tier).astype(f32)

    phi_q, phi_k = features(q), features(k)
    if gates is None:
        return {"y": _kernel_attention(phi_q, phi_k, v, causal, tier)}
    g = _f32(gates)
    v = _f32(v)
    va = np.concatenate([v, np.ones(v.shape[:-1] + (1,), dtype=f32)], axis=-1)
    with np.errstate(divide="ignore"):
        lg = np.log(g)[..., None]
    o, _ = _gated_recurrence(phi_q, phi_k * (f32(1) - g)[..., None], va, lg, tier)
    return {"y": store(o[..., :-1] / o[..., -1:], tier)}


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


#: steps per block of the official selective scan's plain references, whose arrays hold time last (mamba_ssm's layout)
_TIME_BLOCK = 64

#: rows (all axes but time) per tile of the transposing copies of :func:`_time_major` (256 of 64 steps: 64 KiB of float32)
_TILE_ROWS = 256


def _time_major(x: np.ndarray, t0: int, t1: int) -> np.ndarray:
    """Steps ``t0 … t1 − 1`` of ``x`` (…, L) as a contiguous (t1 − t0, …) array: a step of an array with time last is
    a gather of one number per cache line (per page, for long sequences), which made the step-by-step plain scans
    spend most of their time on memory (measured, the backward pass at batch 2, 1536 channels, 16 states, L = 2048: 15 s
    of 20); a block of steps copied once is read step by step from contiguous memory (the same numbers, the same
    operations). The copy transposes :data:`_TILE_ROWS` rows at a time, which stay in cache (2.6 times faster than
    one transposing copy of the block, measured there; that backward pass now takes 7 s)."""
    T = t1 - t0
    out = np.empty((T,) + x.shape[:-1], dtype=x.dtype)
    src, dst = x[..., t0:t1].reshape(-1, T), out.reshape(T, -1)  # (rows, T): a view where x's rows merge, else a copy
    for r in range(0, src.shape[0], _TILE_ROWS):
        dst[:, r : r + _TILE_ROWS] = src[r : r + _TILE_ROWS].T
    return out


def _put_time_major(x: np.ndarray, t0: int, blk: np.ndarray) -> None:
    """Write the time-major block ``blk`` (T, …) into steps ``t0 … t0 + T − 1`` of the contiguous ``x`` (…, L), in
    tiles of :data:`_TILE_ROWS` rows (the inverse of :func:`_time_major`)."""
    T = blk.shape[0]
    dst = x[..., t0 : t0 + T].view()
    dst.shape = (-1, T)  # a view (an error, not a silent copy, if x were not contiguous)
    src = blk.reshape(T, -1)
    for r in range(0, dst.shape[0], _TILE_ROWS):
        dst[r : r + _TILE_ROWS] = src[:, r : r + _TILE_ROWS].T


def _reduction_blocks(L: int, size: int = 256):
    """Blocks [t0, t1) of nearly equal length covering range(L), each at least ``size`` steps long (one block when
    L < 2 size): a sum over the states of a block of steps is the sum over the whole sequence's, element for element
    (NumPy sums along the states in the same order whenever a block has two steps or more)."""
    nb = max(1, L // size)
    return [(L * i // nb, L * (i + 1) // nb) for i in range(nb)]


def _per_channel(X: np.ndarray, d: int, t0: int, t1: int, dtype) -> np.ndarray:
    """Steps ``t0 … t1 − 1`` of mamba_ssm's B or C (batch or 1, G, N, L), G groups of the ``d`` channels (G = d: per
    channel), as one row per channel, (batch or 1, d, N, t1 − t0) in ``dtype``: formed for a block of steps only."""
    X = X[..., t0:t1].astype(dtype)  # cast the G groups, then repeat them: the same numbers, d/G times fewer casts
    return np.repeat(X, d // X.shape[1], axis=1)


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False, *, tier):
    r"""Eqs. (11.21)–(11.23) as mamba_ssm's kernel computes them on low-precision inputs: all in float32.

    ``Δ = softplus(delta + delta_bias)`` in float32 (x itself above 20, as the CUDA kernel and
    ``F.softplus`` return it); per channel ``h_t = e^{Δ_t A} h_{t−1} + Δ_t B_t u_t`` with the state in
    float32 (complex64 for a complex A), one step after the other; ``y_t = Σ_n C_{t,n} h_{t,n}``
    (``2 Re`` of it for a complex A) in float32, ``(y + D u) · z σ(z)`` in float32; the output and the
    last state stored in the tier. The layouts (grouped, time-invariant, interleaved complex B and
    C) are normalized by refimpl's own check, exactly (the arguments are already on the tier's grid).
    """
    from .ssm import _check_official

    tier = tier_name(tier)
    u, delta, _, A, B, C, D, z, bias, softplus, _ = _check_official(u, delta, A, B, C, D, z, delta_bias,
                                                                     delta_softplus, False)
    d = u.shape[1]
    cplx = np.iscomplexobj(A)
    ct = np.complex64 if cplx else f32
    u32 = _f32(u)
    step = _f32(delta) + (f32(0) if bias is None else _f32(bias)[:, None])
    if softplus:
        step = _softplus32(step)
    A32 = A.astype(ct)
    h = np.zeros((u.shape[0],) + A.shape, dtype=ct)
    y = np.empty(u.shape, dtype=f32)
    L = u.shape[2]
    for t0 in range(0, L, _TIME_BLOCK):  # blocks of steps, time-major (see _time_major)
        t1 = min(L, t0 + _TIME_BLOCK)
        # B_t, C_t of each channel (b or 1, D, N, steps), formed for the block only
        bs, cs = (_time_major(_per_channel(X, d, t0, t1, ct), 0, t1 - t0) for X in (B, C))
        steps, us = (_time_major(x, t0, t1) for x in (step, u32))
        ys = np.empty((t1 - t0,) + y.shape[:2], dtype=f32)
        for i in range(t1 - t0):
            dt = steps[i][..., None]
            h = np.exp(dt * A32) * h + (dt * bs[i]) * us[i][..., None]
            yt = np.sum(h * cs[i], axis=-1, dtype=ct)
            ys[i] = f32(2) * yt.real if cplx else yt
        _put_time_major(y, t0, ys)
    if D is not None:
        y = y + _f32(D)[:, None] * u32
    if z is not None:
        z32 = _f32(z)
        y = y * _silu32(z32)
    return {"out": store(y, tier), "last_state": store(h, tier), "Delta": step}


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                           state_batch_indices=None, *, tier):
    r"""One step of Eqs. (11.21), (11.14), (11.23) as mamba_ssm's ``selective_state_update`` kernel computes it on
    low-precision inputs: all in float32.

    ``Δ = softplus(dt + dt_bias)`` in float32 (x itself above 20, as the kernel); ``h' = e^{Δ A} h + (Δ B) x`` with
    the state in float32; ``out = (Σ_n C_n h'_n + D x) · z σ(z)`` summed in float32; the output and the new state
    stored in the tier (the kernel writes the state back in its own dtype). Layouts, groups and the pool of states
    (``state_batch_indices``, a negative index a padding entry with output 0) are normalized by refimpl's own check,
    exactly (the arguments are already on the tier's grid).
    """
    from .ssm import _check_state_update

    tier = tier_name(tier)
    st, xs, dts, A, B, C, D, z, bias, softplus, rows, _ = _check_state_update(
        state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices)
    H = xs.shape[1]
    step = _f32(dts) + (f32(0) if bias is None else _f32(bias))
    if softplus:
        step = _softplus32(step)
    Bh, Ch = (np.repeat(_f32(V), H // V.shape[1], axis=1) for V in (B, C))  # (batch, H, N)
    live = rows >= 0
    h = _f32(st)[np.where(live, rows, 0)]
    s = step[..., None]
    x32 = _f32(xs)
    h = np.exp(s * _f32(A)) * h + (s * Bh[:, :, None, :]) * x32[..., None]
    y = np.sum(h * Ch[:, :, None, :], axis=-1, dtype=f32)
    if D is not None:
        y = y + _f32(D) * x32
    if z is not None:
        y = y * _silu32(_f32(z))
    y[~live] = 0
    new = _f32(st).copy()
    new[rows[live]] = h[live]
    if np.ndim(state) == 3:
        y, new = y[:, 0], new[:, 0]
    return {"out": store(y, tier), "new_state": store(new, tier)}


def _dphi1_dA(x):
    """``(x e^x − e^x + 1)/x²`` in float32 (``∂/∂A (e^{ΔA} − 1)/A = Δ² ·`` this): a series for |x| < 0.1."""
    x = _f32(x)
    small = np.abs(x) < f32(0.1)
    xs = np.where(small, x, f32(0))
    series = np.zeros_like(x)
    for k in range(6, -1, -1):  # Σ_k (k+1) x^k / (k+2)!, Horner
        series = series * xs + f32((k + 1) / math.factorial(k + 2))
    xl = np.where(small, f32(1), x)
    return np.where(small, series, (np.expm1(xl) * (xl - f32(1)) + xl) / (xl * xl))


def selective_scan_vjp(u, delta, A, B, C, D, dy, discretization="mamba", *, tier):
    r"""The backward pass of Eqs. (11.14)–(11.16) in float32: the forward scan, then the adjoint scan
    ``λ_t = ā_{t+1} ⊙ λ_{t+1} + dy_t C_t`` backwards in time, one step after the other (float32
    states), and the gradients of :func:`refimpl.ssm.selective_scan_vjp` as float32 products and
    reductions; summed over broadcast batch axes and stored in the tier.

    ``dA`` and ``dD`` are sums over the whole sequence whose terms cancel: they are accumulated in
    float32 (dA during the adjoint scan, last step first; dD first step first). A kernel that
    adds them in another order (by chunks, by atomics) errs differently, by up to a few times the
    plain error; its verdict on ``dA``/``dD`` is then a warning to look at, not proof of a bug.

    The (…, L, d, n) quantities are formed block by block of :data:`_TIME_BLOCK` steps, the gradients of a block
    right after its adjoints: only the states ``h_t`` are held for the whole sequence. The same numbers as forming
    each quantity whole: every one is elementwise in its step, reduced within its step, or summed over time in
    the same sequential order (measured at L = 4096, 256 channels, 16 states: this model 0.9–1.2 → 0.43 s, traced
    peak 721 → 104 MiB; a whole comparison in bfloat16 3.4 → 1.2 s).
    """
    tier = tier_name(tier)
    shapes = {"u": np.shape(u), "delta": np.shape(delta), "B": np.shape(B), "C": np.shape(C)}
    u, delta, A, B, C, dy = (_f32(x) for x in (u, delta, A, B, C, dy))
    batch = np.broadcast_shapes(u.shape[:-2], delta.shape[:-2], B.shape[:-2], C.shape[:-2], dy.shape[:-2])
    u, delta, dy = (np.broadcast_to(x, batch + u.shape[-2:]) for x in (u, delta, dy))
    B, C = (np.broadcast_to(x, batch + x.shape[-2:]) for x in (B, C))
    L = u.shape[-2]
    mamba = discretization == "mamba"

    def coefficients(t0, t1):  # steps t0 … t1 − 1: w = Δ_t A, ā_t = e^{w}, the input's coefficient f (Δ_t; ZOH: φ₁)
        w = delta[..., t0:t1, :, None] * A
        if mamba:
            return w, np.exp(w), np.broadcast_to(delta[..., t0:t1, :, None], w.shape)
        series = delta[..., t0:t1, :, None] * (f32(1) + w * (f32(0.5) + w * (f32(1 / 6) + w * f32(1 / 24))))
        return w, np.exp(w), np.where(np.abs(w) < f32(1e-2), series, np.expm1(w) / np.where(A == 0, f32(1), A))

    blocks = [(t0, min(L, t0 + _TIME_BLOCK)) for t0 in range(0, L, _TIME_BLOCK)]
    H = np.empty(batch + (L,) + A.shape, dtype=f32)  # h_t, every step (the gradients read h_{t−1})
    h = np.zeros(batch + A.shape, dtype=f32)
    for t0, t1 in blocks:
        _, Ab, f = coefficients(t0, t1)
        Bu = f * B[..., t0:t1, None, :] * u[..., t0:t1, :, None]
        for i in range(t1 - t0):
            h = Ab[..., i, :, :] * h + Bu[..., i, :, :]
            H[..., t0 + i, :, :] = h

    def over_time(acc, x):  # acc + Σ over the block's steps, added from the last step to the first (as a cumsum)
        x = x[..., ::-1, :, :]
        if acc is not None:
            x = np.concatenate([acc[..., None, :, :], x], axis=-3)
        return np.cumsum(x, axis=-3, dtype=f32)[..., -1, :, :]

    du, ddelta = np.empty(u.shape, dtype=f32), np.empty(u.shape, dtype=f32)
    dB, dC = np.empty(B.shape, dtype=f32), np.empty(C.shape, dtype=f32)
    dA = dA_zoh = None  # Σ_t over time (and, below, over the batch)
    g = np.zeros(batch + A.shape, dtype=f32)
    for t0, t1 in reversed(blocks):
        w, Ab, f = coefficients(t0, min(L, t1 + 1))  # ā_{t+1} for the block's last step too
        lam = np.empty(batch + (t1 - t0,) + A.shape, dtype=f32)
        for t in range(t1 - 1, t0 - 1, -1):
            g = (Ab[..., t - t0 + 1, :, :] * g if t < L - 1 else g) + dy[..., t, :, None] * C[..., t, None, :]
            lam[..., t - t0, :, :] = g
        w, Ab, f = w[..., : t1 - t0, :, :], Ab[..., : t1 - t0, :, :], f[..., : t1 - t0, :, :]
        if t0:
            H_prev = H[..., t0 - 1 : t1 - 1, :, :]
        else:
            H_prev = np.zeros(lam.shape, dtype=f32)
            H_prev[..., 1:, :, :] = H[..., : t1 - 1, :, :]
        dC[..., t0:t1, :] = np.sum(dy[..., t0:t1, :, None] * H[..., t0:t1, :, :], axis=-2, dtype=f32)
        ga = lam * H_prev * Ab
        dd = np.sum(ga * A, axis=-1, dtype=f32)
        dA = over_time(dA, ga * delta[..., t0:t1, :, None])
        wv = lam * u[..., t0:t1, :, None]
        du[..., t0:t1, :] = np.sum(lam * f * B[..., t0:t1, None, :], axis=-1, dtype=f32)
        dB[..., t0:t1, :] = np.sum(wv * f, axis=-2, dtype=f32)
        wB = wv * B[..., t0:t1, None, :]
        if mamba:
            dd += np.sum(wB, axis=-1, dtype=f32)
        else:
            dd += np.sum(wB * Ab, axis=-1, dtype=f32)
            dA_zoh = over_time(dA_zoh, wB * delta[..., t0:t1, :, None] ** 2 * _dphi1_dA(w))
        ddelta[..., t0:t1, :] = dd
    dA = np.zeros(batch + A.shape, dtype=f32) if dA is None else dA
    dA = dA.reshape((-1,) + A.shape).sum(axis=0, dtype=f32) if dA.ndim > 2 else dA
    if dA_zoh is not None:
        dA += dA_zoh.reshape((-1,) + A.shape).sum(axis=0, dtype=f32) if dA_zoh.ndim > 2 else dA_zoh
    dD = np.sum(dy * u, axis=tuple(range(u.ndim - 1)), dtype=f32)  # time steps added first to last
    if D is not None:
        Dv = _f32(D)
        du = du + Dv * dy
        if Dv.ndim == 0:
            dD = np.sum(dD, dtype=f32)

    out = {"du": _reduce32(du, shapes["u"]), "ddelta": _reduce32(ddelta, shapes["delta"]), "dA": dA,
           "dB": _reduce32(dB, shapes["B"]), "dC": _reduce32(dC, shapes["C"]), "dD": dD}
    return {k: store(v, tier) for k, v in out.items()}


def selective_scan_fn_vjp(u, delta, A, B, C, dout, D=None, z=None, delta_bias=None, delta_softplus=False, *, tier):
    r"""The backward pass of Eqs. (11.21)–(11.23) as mamba_ssm's kernel computes it on low-precision inputs.

    :func:`selective_scan_fn`'s float32 forward (complex64 for a complex A; Δ with the kernel's
    softplus, x itself above 20) keeping every state; the gate's ``dz`` and ``dv = dout · silu(z)``
    in float32; the adjoint ``λ_t = ā_{t+1} λ_{t+1} + κ dv_t C_t`` backwards in time, one step
    after the other, with dA (and a time-invariant B's or C's gradient) accumulated during it,
    last step first; the gradients of :func:`refimpl.ssm.selective_scan_fn_vjp` as float32 products
    and sums, summed over the channels of a group in float32; ``ddelta = dΔ · σ(x)`` for x ≤ 20 and
    ``dΔ`` above (the kernel's threshold), ``dD`` and ``ddelta_bias`` in one float32 accumulator each;
    every gradient stored in the tier once. Layouts as in :func:`selective_scan_fn`.
    """
    from ._vjp import _bc_gradient
    from .ssm import _check_official

    tier = tier_name(tier)
    forms = {name: (np.ndim(X), np.shape(X), np.iscomplexobj(X)) for name, X in (("B", B), ("C", C))}
    u, delta, _, A, B, C, Dv, z, bias, softplus, _ = _check_official(u, delta, A, B, C, D, z, delta_bias,
                                                                     delta_softplus, False)
    batch, d, L = u.shape
    n = A.shape[1]
    cplx = np.iscomplexobj(A)
    ct = np.complex64 if cplx else f32
    kappa = f32(2) if cplx else f32(1)
    u32, dout32 = _f32(u), _f32(dout)
    raw = _f32(delta) + (f32(0) if bias is None else _f32(bias)[:, None])
    step = _softplus32(raw) if softplus else raw
    A32 = A.astype(ct)
    given = {"B": B, "C": C}  # (batch or 1, G, N, L): per group (or per channel, or time-invariant as a broadcast)

    # The (batch, D, N, L) quantities are formed block by block of steps, never whole (the same numbers: each is an
    # element-wise function of its step): memory O(D N L) for the states and adjoints only.
    def bc(name, t0, t1):  # B_t or C_t of each channel, steps t0 … t1 − 1, for every batch entry
        return np.broadcast_to(_per_channel(given[name], d, t0, t1, ct), (batch, d, n, t1 - t0))

    def decay(t0, t1):  # ā_t = e^{Δ_t A}
        return np.exp(step[:, :, None, t0:t1] * A32[:, :, None])

    H = np.empty((batch, d, n, L), dtype=ct)
    h = np.zeros((batch, d, n), dtype=ct)
    for t0 in range(0, L, _TIME_BLOCK):  # blocks of steps, time-major (_time_major)
        t1 = min(L, t0 + _TIME_BLOCK)
        T = t1 - t0
        ab = _time_major(decay(t0, t1), 0, T)
        bu = _time_major((step * u32)[:, :, None, t0:t1] * bc("B", t0, t1), 0, T)  # Δ_t B_t u_t
        hs = np.empty((T, batch, d, n), dtype=ct)
        for i in range(T):
            h = ab[i] * h + bu[i]
            hs[i] = h
        _put_time_major(H, t0, hs)
    dv, out = dout32, {}
    if z is not None:
        y = np.empty((batch, d, L), dtype=ct)
        for t0, t1 in _reduction_blocks(L):
            y[..., t0:t1] = np.sum(H[..., t0:t1] * bc("C", t0, t1), axis=2, dtype=ct)
        v = (kappa * y.real if cplx else y).astype(f32)
        if Dv is not None:
            v = v + _f32(Dv)[:, None] * u32
        z32 = _f32(z)
        s = _sigmoid32(z32)
        out["dz"] = dout32 * v * (s * (f32(1) + z32 * (f32(1) - s)))
        dv = dout32 * (z32 * s)
    lam = np.empty_like(H)
    g = np.zeros((batch, d, n), dtype=ct)
    dA = np.zeros((batch, d, n), dtype=ct)
    inv = {name: forms[name][0] == 2 for name in ("B", "C")}
    acc = {name: np.zeros((batch, d, n), dtype=ct) for name in ("B", "C") if inv[name]}
    for t1 in range(L, 0, -_TIME_BLOCK):  # λ_t = ā_{t+1} λ_{t+1} + κ dv_t C_t, sums over time added last step first
        t0 = max(0, t1 - _TIME_BLOCK)
        lo = max(0, t0 - 1)  # H from step t0 − 1 (the state before the block), ā to step t1 (after it)
        ab, hs = _time_major(decay(t0, min(L, t1 + 1)), 0, min(L, t1 + 1) - t0), _time_major(H, lo, t1)
        cs = _time_major(bc("C", t0, t1), 0, t1 - t0)
        dvs, steps, us = (_time_major(x, t0, t1) for x in (dv, step, u32))
        lams = np.empty((t1 - t0, batch, d, n), dtype=ct)
        for t in range(t1 - 1, t0 - 1, -1):
            i = t - t0
            g = (ab[i + 1] * g if t < L - 1 else g) + (kappa * dvs[i])[..., None] * cs[i]
            lams[i] = g
            prev = hs[t - 1 - lo] if t else np.zeros_like(g)
            dA += g * ab[i] * prev * steps[i][..., None]
            if inv["B"]:
                acc["B"] += g * (steps[i] * us[i])[..., None]
            if inv["C"]:
                acc["C"] += (kappa * dvs[i])[..., None] * hs[t - lo]
        _put_time_major(lam, t0, lams)
    re = (lambda x: x.real) if cplx else (lambda x: x)  # noqa: E731
    conj = np.conj if cplx else (lambda x: x)  # noqa: E731
    lB = np.empty((batch, d, L), dtype=f32)  # Re Σ_n λ_t B_t
    dstep = np.empty((batch, d, L), dtype=f32)
    full = {name: np.empty((batch, given[name].shape[1], n, L), dtype=ct) for name in ("B", "C") if not inv[name]}
    for t0, t1 in _reduction_blocks(L):  # the sums over the states (and a group's channels), a block of steps at a time
        lam_b, H_prev = lam[..., t0:t1], np.empty((batch, d, n, t1 - t0), dtype=ct)
        H_prev[..., 1:] = H[..., t0 : t1 - 1]
        H_prev[..., 0] = H[..., t0 - 1] if t0 else 0
        lB[..., t0:t1] = re(np.sum(lam_b * bc("B", t0, t1), axis=2, dtype=ct))
        # ā named, not a temporary: NumPy would multiply into a temporary right operand, λ and ā swapped, and its
        # complex product is not bitwise commutative
        ab_b = decay(t0, t1)
        dstep[..., t0:t1] = (re(np.sum(lam_b * ab_b * H_prev * A32[:, :, None], axis=2, dtype=ct))
                             + lB[..., t0:t1] * u32[..., t0:t1])
        for name, terms in (("B", lambda: lam_b * (step * u32)[:, :, None, t0:t1]),
                            ("C", lambda: (kappa * dv)[:, :, None, t0:t1] * H[..., t0:t1])):
            if name in full:  # Σ over the channels of each group (batch, G, N, steps)
                G = full[name].shape[1]
                full[name][..., t0:t1] = terms().reshape(batch, G, d // G, n, t1 - t0).sum(axis=2, dtype=ct)
    du = lB * step
    ddelta = np.where(raw <= f32(20), dstep * _sigmoid32(raw), dstep).astype(f32) if softplus else dstep

    def groups(name):  # the gradient of B or C: per group (batch, G, N, L), or the accumulated (D, N)
        return conj(acc[name].sum(axis=0, dtype=ct) if inv[name] else full[name])

    out = {"du": du, "ddelta": ddelta, "dA": conj(dA.sum(axis=0, dtype=ct)),
           "dB": _bc_gradient(groups("B"), forms["B"]), "dC": _bc_gradient(groups("C"), forms["C"]), **out}
    if Dv is not None:
        out["du"] = du + _f32(Dv)[:, None] * dv
        out["dD"] = _seq_sum32(np.moveaxis(dv * u32, -1, 1))  # Σ over batch and time, in order
    if bias is not None:
        out["ddelta_bias"] = _seq_sum32(np.moveaxis(ddelta, -1, 1))
    return {name: store(x, tier) for name, x in out.items()}


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


def _df1(b, a, x, hist, tier):
    """Direct form I (Eq. (13.4)) sample after sample in float32, each output stored in the tier.

    ``x`` (N, ...) float32; ``hist`` the history [x[−1], x[−2], y[−1], y[−2]]. Returns (y, final history).
    """
    x1, x2, y1, y2 = hist
    ys = np.empty_like(x)
    for n in range(x.shape[0]):
        yn = b[0] * x[n] + b[1] * x1 + b[2] * x2 - a[1] * y1 - a[2] * y2
        yn = store(yn, tier).astype(f32)
        x2, x1, y2, y1 = x1, x[n], y1, yn
        ys[n] = yn
    return ys, np.stack([x1, x2, y1, y2])


def biquad_filter(b, a, x, zi=None, form="tdf2", *, tier):
    r"""Eq. (13.2), one biquad in float32: transposed direct form II (``lfilter`` in float32, Eq. (13.5))
    or direct form I (Eq. (13.4)) sample by sample; ``zi`` as in :func:`refimpl.iir.biquad_filter`.

    Returns ``y`` (and ``zf`` when ``zi`` is given), stored in the tier.
    """
    tier = tier_name(tier)
    b, a, x = _f32(b), _f32(a), _f32(x)
    b, a = b / a[0], a / a[0]
    axis = 0 if x.ndim == 1 else -2
    if form == "tdf2":
        if zi is None:
            return {"y": store(scipy.signal.lfilter(b, a, x, axis=axis), tier)}
        y, zf = scipy.signal.lfilter(b, a, x, axis=axis, zi=_f32(zi))
        return {"y": store(y, tier), "zf": store(zf, tier)}
    xs = np.moveaxis(x, axis, 0)
    hist = np.zeros((4,) + xs.shape[1:], dtype=f32) if zi is None else np.moveaxis(_f32(zi), axis, 0)
    ys, hf = _df1(b, a, xs, hist, tier)
    res = {"y": store(np.moveaxis(ys, 0, axis), tier)}
    if zi is not None:
        res["zf"] = store(np.moveaxis(hf, 0, axis), tier)
    return res


def tf_filter(b, a, x, zi=None, *, tier):
    r"""Eq. (13.1) in transposed direct form II (Eq. (13.5)) with float32 states and arithmetic
    (``scipy.signal.lfilter`` on float32 data), ``y`` (and ``zf``) stored in the tier."""
    tier = tier_name(tier)
    b, a, x = _f32(b), _f32(a), _f32(x)
    n = max(b.size, a.size)
    b, a = np.pad(b, (0, n - b.size)) / a[0], np.pad(a, (0, n - a.size)) / a[0]
    axis = 0 if x.ndim == 1 else -2
    if zi is None:
        return {"y": store(scipy.signal.lfilter(b, a, x, axis=axis), tier)}
    y, zf = scipy.signal.lfilter(b, a, x, axis=axis, zi=_f32(zi))
    return {"y": store(y, tier), "zf": store(zf, tier)}


def _call(fn, args, names, tier, fixed=None):
    """``fn(**{n: args[n]}, tier=tier)`` for the argument names the plain algorithm models.

    An argument it does not model (given and not None) raises ``NotImplementedError``: the oracle
    then falls back to the rounded-input model for that case instead of judging a different
    computation.
    """
    extra = sorted(k for k, v in args.items() if k not in names and v is not None)
    if extra:
        raise NotImplementedError(f"the plain low-precision {fn.__name__} does not model {extra}")
    kw = {n: args[n] for n in names if n in args}
    return fn(**kw, **(fixed or {}), tier=tier)


def _unblocked(fn):
    """``fn`` with the tile sizes ``block_q``, ``block_k`` accepted and ignored (the plain algorithm is untiled)."""

    def run(q, k, v, block_q=None, block_k=None, *, tier, **options):
        return fn(q, k, v, **options, tier=tier, weights=False)

    run.__name__ = fn.__name__
    return run


def _grouped(plain, grads: bool = False):
    """``plain(args, tier[, needed])`` for grouped-query heads: each key/value head repeated for the G
    query heads that read it (axis −3; query head h reads key head h // G, as refimpl and
    ``torch.repeat_interleave``), and, for a backward pass, ``dK``, ``dV`` summed over the G heads in
    float32 and stored once more (a kernel accumulates them in float32 and stores once: one rounding
    fewer, so the plain error is, if anything, slightly larger)."""

    takes_needed = "needed" in inspect.signature(plain).parameters

    def run(args, tier, needed=None):
        args = dict(args)
        kw = {"needed": needed} if takes_needed and needed is not None else {}
        if not args.pop("grouped_heads", False):
            return plain(args, tier, **kw)
        h, h_kv = np.shape(args["q"])[-3], np.shape(args["k"])[-3]
        g = h // h_kv
        if g == 1:  # one query head per key head: nothing to repeat or to sum (copies of k and v took 0.4 s of a
            return plain(args, tier, **kw)  # 5.6 s comparison at 2 × 2048 × 16 × 128)
        for n in ("k", "v"):
            args[n] = np.repeat(np.asarray(args[n]), g, axis=-3)
        out = plain(args, tier, **kw)
        if grads:
            for n in ("k", "v"):
                d = np.asarray(out["d" + n], dtype=f32)
                shape = d.shape[:-3] + (h_kv, g) + d.shape[-2:]
                out["d" + n] = store(d.reshape(shape).sum(axis=-3, dtype=f32), tier)
        return out

    return run


_ATTENTION_OPTIONS = ("mask", "causal", "scale", "window", "alibi_slopes", "causal_alignment", "softcap")


def _selective(args, tier):
    return _call(selective_scan, args, ("u", "delta", "A", "B", "C", "D", "discretization"), tier)


_MAMBA = ("x", "dt", "A", "B", "C", "chunk_size", "D", "z", "dt_bias", "initial_states", "dt_softplus", "dt_limit")
_FLA = ("q", "k", "v", "g", "scale", "initial_state", "output_final_state")


def _with_gamma(args: dict) -> dict:
    """``chunk_simple_gla``'s ``g_gamma`` (H,) folded into ``g`` (B, T, H) in float32, as the kernel adds them."""
    if args.get("g_gamma") is None:
        return args
    args = dict(args)
    gamma = _f32(args.pop("g_gamma"))
    g = args.get("g")
    args["g"] = (np.zeros(np.shape(args["q"])[:3], f32) if g is None else _f32(g)) + gamma
    return args


def _without_dg(grads: dict, args: dict) -> dict:
    """No ``dg`` when ``g`` was not given (``g_gamma`` alone is a constant)."""
    return grads if args.get("g") is not None else {k: v for k, v in grads.items() if k != "dg"}
_FLA_VJP = ("q", "k", "v", "g", "do", "scale", "initial_state", "dht")

#: the arguments of fla's functions that run along the packed sequence (B = 1, T, ·), and those with one entry per
#: packed sequence (N, H, K, V)
_FLA_TIMED, _FLA_PER_SEQUENCE = ("q", "k", "v", "g", "beta", "do"), ("initial_state", "dht")


def _packed(plain):
    """fla's plain model with packed sequences (``cu_seqlens``): ``plain`` once per sequence on its steps and its
    states, the outputs joined along the sequence (axis 1) and the states stacked, as the function runs them."""

    def run(args, tier):
        if args.get("cu_seqlens") is None:
            return plain(args, tier)
        cu = np.asarray(args["cu_seqlens"]).tolist()
        parts = []
        for i, (b, e) in enumerate(zip(cu[:-1], cu[1:])):
            part = {n: a[:, b:e] if n in _FLA_TIMED else a[i:i + 1] if n in _FLA_PER_SEQUENCE else a
                    for n, a in args.items() if n != "cu_seqlens" and a is not None}
            parts.append(plain(part, tier))
        return {n: np.concatenate([p[n] for p in parts], axis=0 if n in ("final_state", "dh0") else 1) for n in parts[0]}

    return run


#: mamba_ssm's arguments along (batch, seqlen), and its shared parameters' gradients (summed over packed sequences)
_MAMBA_TIMED, _MAMBA_SHARED = ("x", "dt", "B", "C", "z", "dout"), ("dA", "dD", "ddt_bias")


def _seq_idx_runs(plain):
    """mamba_ssm's plain model with packed sequences (``seq_idx``): ``plain`` once per run of equal ids of each
    batch row, the row's ``initial_states`` entering the run that starts it with id 0 and its ``dfinal_states`` the
    run that ends it; outputs and per-step gradients put back at their steps, the shared parameters' gradients
    summed in float32, the row's final state its last run's (as :func:`refimpl.linear_rnn.mamba_chunk_scan_combined`)."""

    def run(args, tier):
        if args.get("seq_idx") is None:
            return plain(args, tier)
        from .linear_rnn import _seq_runs

        x = np.asarray(args["x"])
        out: dict = {}
        for i, row in enumerate(_seq_runs(args["seq_idx"], *x.shape[:2])):
            for s, e, first in row:
                part = {n: a[i:i + 1, s:e] if n in _MAMBA_TIMED else a for n, a in args.items()
                        if n not in ("seq_idx", "initial_states", "dfinal_states") and a is not None}
                if first and args.get("initial_states") is not None:
                    part["initial_states"] = args["initial_states"][i:i + 1]
                if e == row[-1][1] and args.get("dfinal_states") is not None:
                    part["dfinal_states"] = args["dfinal_states"][i:i + 1]
                for n, v in plain(part, tier).items():
                    v = np.asarray(v)
                    if n in _MAMBA_SHARED:
                        out[n] = (out[n] + v.astype(f32)).astype(f32) if n in out else v.astype(f32)
                    elif n in ("final_states", "dinitial_states"):
                        full = out.setdefault(n, np.zeros((x.shape[0],) + v.shape[1:], v.dtype))
                        if n == "final_states" or s == 0:
                            full[i] = v[0]
                    else:
                        out.setdefault(n, np.zeros(x.shape[:2] + v.shape[2:], v.dtype))[i, s:e] = v[0]
        if args.get("initial_states") is not None and args.get("dout") is not None:  # the backward pass: no row
            out.setdefault("dinitial_states", np.zeros(np.shape(args["initial_states"]), f32))  # starts with id 0
        return out

    return run


def _flash_official(vjp: bool, varlen: bool):
    """The plain model of FlashAttention-2's official interfaces: the call mapped to refimpl's layout and options
    by :func:`refimpl.attention._fa_check` (the window as a mask), the plain softmax attention (or its backward pass)
    of each sequence, the results mapped back (``softmax_lse`` as FlashAttention-2 stores it)."""
    from .attention import _fa_check, _fa_lse, _varlen_parts

    names = ("dropout_p", "softmax_scale", "causal", "window_size", "softcap", "alibi_slopes")

    def one(q, k, v, dout, opts, tier, clamp_k=None):
        f = _fa_check(q, k, v, *(opts.get(n, d) for n, d in zip(names, (0.0, None, False, (-1, -1), 0.0, None))),
                      clamp_k=clamp_k)
        token = _ALIBI_COLUMN.set(f.lse_shift)  # the causal path with ALiBi: the kernel's slope·j
        try:
            return _one(f, dout, tier)
        finally:
            _ALIBI_COLUMN.reset(token)

    def _one(f, dout, tier):
        a = {"q": f.q, "k": f.k, "v": f.v, **{n: x for n, x in f.opts.items() if x is not None and x is not False},
             "scale": f.opts["scale"]}
        a.pop("grouped_heads", None)
        a = {n: x for n, x in a.items() if x is not None}
        sw = lambda x: np.swapaxes(x, 1, 2)  # noqa: E731
        if vjp:
            g = PLAIN["attention.softmax_attention_vjp"]({**a, "dy": sw(dout), "grouped_heads": True}, tier)
            return {n: sw(g[n]) for n in ("dq", "dk", "dv")}
        r = PLAIN["attention.softmax_attention"]({**a, "grouped_heads": True}, tier, needed=("y",))
        return {"out": sw(r["y"]), "softmax_lse": _fa_lse(f, np.asarray(r["lse"], np.float64), shifted=True)}

    def run(args, tier):
        opts = {n: args[n] for n in names if args.get(n) is not None}
        if not varlen:
            return one(args["q"], args["k"], args["v"], args.get("dout"), opts, tier)
        parts = [one(qi, ki, vi, di, {**opts, "alibi_slopes": si} if si is not None else opts, tier,
                     int(args["max_seqlen_k"]))
                 for qi, ki, vi, si, di in _varlen_parts(args["q"], args["k"], args["v"], args["cu_seqlens_q"],
                                                         args["cu_seqlens_k"], args["max_seqlen_q"],
                                                         args["max_seqlen_k"], args.get("alibi_slopes"), args.get("dout"))]
        return {n: np.concatenate([p[n][0] for p in parts], axis=-1 if n == "softmax_lse" else 0) for n in parts[0]}

    return run


#: ``{registered function name: plain(args, tier[, needed]) -> {quantity: ndarray}}`` (``needed``: the
#: quantities the oracle compares, for plain algorithms that can skip a large intermediate)
PLAIN = {
    "attention.softmax_attention": _grouped(lambda args, tier, needed=("A", "y"): _call(
        softmax_attention, args, ("q", "k", "v") + _ATTENTION_OPTIONS, tier, {"weights": "A" in needed})),
    "attention.softmax_attention_vjp": _grouped(lambda args, tier: _call(
        softmax_attention_vjp, args, ("q", "k", "v", "dy") + _ATTENTION_OPTIONS, tier), grads=True),
    "attention.flash_attn_func": _flash_official(False, False),
    "attention.flash_attn_varlen_func": _flash_official(False, True),
    "attention.flash_attn_func_vjp": _flash_official(True, False),
    "attention.flash_attn_varlen_func_vjp": _flash_official(True, True),
    "attention.flash_attention": _grouped(lambda args, tier: _call(
        _unblocked(softmax_attention), args, ("q", "k", "v", "block_q", "block_k") + _ATTENTION_OPTIONS[1:], tier)),
    "random_features.linear_attention": lambda args, tier: _call(
        linear_attention, args, ("q", "k", "v", "causal", "feature_map"), tier),
    "random_features.performer_attention": lambda args, tier: _call(
        performer_attention, args, ("q", "k", "v", "projection", "causal", "kind", "scale"), tier),
    "random_features.rfa_attention": lambda args, tier: _call(
        rfa_attention, args, ("q", "k", "v", "n_features", "sigma", "seed", "gates"), tier, {"causal": True}),
    "ssm.selective_scan": _selective,
    "ssm.selective_scan_fn": lambda args, tier: _call(
        selective_scan_fn, args, ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "delta_softplus",
                                  "return_last_state"), tier),
    "ssm.selective_state_update": lambda args, tier: _call(
        selective_state_update, args, ("state", "x", "dt", "A", "B", "C", "D", "z", "dt_bias", "dt_softplus",
                                       "state_batch_indices"), tier),
    "random_features.linear_attention_vjp": lambda args, tier: _call(
        linear_attention_vjp, args, ("q", "k", "v", "dy", "causal"), tier),
    "ssm.selective_scan_vjp": lambda args, tier: _call(
        selective_scan_vjp, args, ("u", "delta", "A", "B", "C", "D", "dy", "discretization"), tier),
    "ssm.selective_scan_fn_vjp": lambda args, tier: _call(
        selective_scan_fn_vjp, args, ("u", "delta", "A", "B", "C", "dout", "D", "z", "delta_bias", "delta_softplus"),
        tier),
    "linear_rnn.ssd": lambda args, tier: _call(ssd, args, ("x", "dt", "A", "B", "C", "D", "chunk_size", "initial_state"), tier),
    "linear_rnn.gated_linear_attention": lambda args, tier: _call(
        gated_linear_attention, args, ("q", "k", "v", "log_g", "scale", "chunk_size", "initial_state"), tier),
    "linear_rnn.retention": lambda args, tier: _call(
        retention, args, ("q", "k", "v", "gamma", "scale", "chunk_size", "initial_state"), tier),
    "linear_rnn.delta_rule": lambda args, tier: _call(
        delta_rule, args, ("q", "k", "v", "beta", "log_g", "scale", "chunk_size", "initial_state"), tier),
    "linear_rnn.ssd_vjp": lambda args, tier: _call(
        ssd_vjp, args, ("x", "dt", "A", "B", "C", "D", "dy", "chunk_size", "initial_state", "dfinal_state"), tier),
    "linear_rnn.gated_linear_attention_vjp": lambda args, tier: _call(
        gated_linear_attention_vjp, args, ("q", "k", "v", "log_g", "dy", "scale", "chunk_size", "initial_state",
                                           "dfinal_state"), tier),
    "linear_rnn.retention_vjp": lambda args, tier: _call(
        retention_vjp, args, ("q", "k", "v", "gamma", "dy", "scale", "chunk_size", "initial_state", "dfinal_state"),
        tier),
    "linear_rnn.delta_rule_vjp": lambda args, tier: _call(
        delta_rule_vjp, args, ("q", "k", "v", "beta", "dy", "log_g", "scale", "chunk_size", "initial_state",
                               "dfinal_state"), tier),
    "linear_rnn.mamba_chunk_scan_combined": _seq_idx_runs(lambda args, tier: _call(
        mamba_chunk_scan_combined, args, _MAMBA, tier)),
    "linear_rnn.mamba_chunk_scan_combined_vjp": _seq_idx_runs(lambda args, tier: _call(
        mamba_chunk_scan_combined_vjp, args, _MAMBA + ("dout", "dfinal_states"), tier)),
    "linear_rnn.chunk_gla": _packed(lambda args, tier: _call(chunk_gla, args, _FLA, tier)),
    "linear_rnn.chunk_simple_gla": _packed(lambda args, tier: _call(chunk_gla, _with_gamma(args), _FLA, tier)),
    "linear_rnn.chunk_delta_rule": _packed(lambda args, tier: _call(
        chunk_delta_rule, args, _FLA + ("beta", "use_qk_l2norm_in_kernel"), tier)),
    "linear_rnn.chunk_gated_delta_rule": _packed(lambda args, tier: _call(
        chunk_delta_rule, args, _FLA + ("beta", "use_qk_l2norm_in_kernel"), tier)),
    "linear_rnn.chunk_gla_vjp": _packed(lambda args, tier: _call(chunk_gla_vjp, args, _FLA_VJP, tier)),
    "linear_rnn.chunk_simple_gla_vjp": _packed(lambda args, tier: _without_dg(
        _call(chunk_gla_vjp, _with_gamma(args), _FLA_VJP, tier), args)),
    "linear_rnn.chunk_delta_rule_vjp": _packed(lambda args, tier: _call(
        chunk_delta_rule_vjp, args, _FLA_VJP + ("beta", "use_qk_l2norm_in_kernel"), tier)),
    "linear_rnn.chunk_gated_delta_rule_vjp": _packed(lambda args, tier: _call(
        chunk_delta_rule_vjp, args, _FLA_VJP + ("beta", "use_qk_l2norm_in_kernel"), tier)),
    "iir.sos_filter": lambda args, tier: _call(sos_filter, args, ("sos", "x", "form"), tier),
    "iir.biquad_filter": lambda args, tier: _call(biquad_filter, args, ("b", "a", "x", "zi", "form"), tier),
    "iir.tf_filter": lambda args, tier: _call(tf_filter, args, ("b", "a", "x", "zi"), tier),
}
