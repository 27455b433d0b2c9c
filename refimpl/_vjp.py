r"""Vector–Jacobian products (the backward pass) of softmax attention, linear attention, the selective scan and the linear recurrences of chapter 16.

The public names are re-exported by the modules of the forward functions:
:func:`refimpl.attention.softmax_attention_vjp`, :func:`refimpl.random_features.linear_attention_vjp`,
:func:`refimpl.ssm.selective_scan_vjp` and the official interface of Mamba (mamba_ssm's ``selective_scan_fn``:
:func:`refimpl.ssm.selective_scan_fn_vjp`), and :func:`refimpl.linear_rnn.ssd_vjp`,
:func:`~refimpl.linear_rnn.gated_linear_attention_vjp`, :func:`~refimpl.linear_rnn.retention_vjp`,
:func:`~refimpl.linear_rnn.delta_rule_vjp` (chapter 16) and the official interfaces of Mamba-2 and fla
(:func:`~refimpl.linear_rnn.mamba_chunk_scan_combined_vjp`, :func:`~refimpl.linear_rnn.chunk_gla_vjp`,
:func:`~refimpl.linear_rnn.chunk_simple_gla_vjp`, :func:`~refimpl.linear_rnn.chunk_delta_rule_vjp`,
:func:`~refimpl.linear_rnn.chunk_gated_delta_rule_vjp`), each with a ``_loop`` twin of the same signature.

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
``lam``      λ_t = ∂ℓ/∂h_t, the adjoint state of the selective scan (reverse-time scan); in
             chapter 16 Λ_t = ∂ℓ/∂S_t, the adjoint of the matrix state (Eq. (16.17)).
``R``        the adjoint arriving at a chunk's end from the later chunks (chunked backward passes).
``dSe``      the delta rule's adjoint of the state leaving each chunk (Eq. (16.20)).

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
.. [5] S. Yang, B. Wang, Y. Shen, R. Panda, Y. Kim, "Gated linear attention transformers with
       hardware-efficient training", ICML 2024, §4 (chunkwise backward; log-gate gradient as a
       reverse cumulative sum); S. Yang et al., "Parallelizing linear transformers with the delta
       rule over sequence length", NeurIPS 2024, §3 (WY/UT form); T. Dao, A. Gu, "Transformers are
       SSMs" (Mamba-2), ICML 2024, §6.
"""

from __future__ import annotations

import cmath
import functools
import math

import numpy as np
from scipy.special import expit

from . import _blocking
from ._scan import cumsum_rows
from ._validate import _to_array, as_bool, as_real_array, guard_overflow

# Query rows per block of softmax_attention_vjp (FlashAttention's B_r): temporaries are
# (..., 128, M) whatever N. Blocks of 64 rows ran 10-30% slower (N = 1024 ... 4096, d = 64), of 256
# rows faster at N = 1024 but slower causal at N = 4096 (fewer blocks to balance over the threads).
_ATT_BLOCK = 128
#: parts of the query rows with dK, dV of their own in softmax_attention_vjp (when the batch has fewer
#: groups than this), and the logits from which its work items run in threads
_VJP_PARTS, _VJP_THREADED = 4, 1 << 21
# Chunk length of the chunked prefix sums of linear_attention_vjp.
_LIN_CHUNK = 64
#: numbers in each (…, T, d_in, n) temporary of a block of selective_scan_vjp (2^19: 4 MiB)
_SEL_BLOCK_FLOATS = 1 << 19


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def _given_shape(x, name: str) -> tuple:
    """The shape of argument ``name`` as given, before any broadcasting: the gradient is reduced to it.
    Input NumPy cannot convert (a ragged nested list) gets the validators' named ``TypeError``
    (``"<name>: could not convert to an array (...)"``), not NumPy's own message, which names nothing."""
    return x.shape if isinstance(x, np.ndarray) else _to_array(x, name).shape


def _given_shapes(**args) -> dict:
    """:func:`_given_shape` of each argument by name; None (an optional argument not given) stays None."""
    return {name: None if x is None else _given_shape(x, name) for name, x in args.items()}


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
    # shape, the mismatch surfaces here, so the message must point at them as well as at dy. No copy:
    # the backward passes only read dy (a copy of a long cotangent cost as much as a tenth of ssd_vjp)
    dy = as_real_array(dy, "dy", copy=False)
    if dy.shape != tuple(shape):
        raise ValueError(
            f"dy: expected the shape of the output {what} = {tuple(shape)} ({source}), got shape {dy.shape}"
        )
    return dy


# ---------------------------------------------------------------------------------------------
# Softmax attention
# ---------------------------------------------------------------------------------------------


def _softmax_setup(q, k, v, dy, mask, causal, scale, window, alibi_slopes, causal_alignment, softcap, grouped_heads,
                   return_intermediates):
    """Validate a call as :func:`refimpl.attention.softmax_attention` does (every option, grouped
    heads split into (H_kv, G) batch axes) and ``dy`` against the shape of that call's output."""
    from .attention import _prepare

    shapes = tuple(_given_shape(x, name) for x, name in ((q, "q"), (k, "k"), (v, "v")))
    as_bool(return_intermediates, "return_intermediates")
    p = _prepare(q, k, v, mask, causal, scale, window, alibi_slopes, causal_alignment, softcap, grouped_heads)
    n, dv = p.q.shape[-2], p.v.shape[-1]
    # the shape of softmax_attention's y: grouped heads (..., H_kv, G) merged back into (..., H)
    out_shape = (*p.batch, n, dv) if p.heads is None else (*p.batch[:-2], p.heads[0], n, dv)
    source = "batch shape from q, k, v, mask and alibi_slopes, N from q, dv from v"
    dy = _check_dy(dy, out_shape, "(..., N, dv)", source)
    return p, dy.reshape((*p.batch, n, dv)), shapes


def _softmax_grads(p, dq, dk, dv, shapes, lse, D, return_intermediates: bool) -> tuple:
    """The gradients as the inputs were given: heads merged back, summed over broadcast axes;
    with ``return_intermediates`` also ``{"lse": ℓ, "D": D}`` with the shape of the output's rows."""
    from .attention import _merge_heads

    if p.heads is not None:  # k, v entered as (..., H_kv, 1, M, ·), shared by the G query heads of a group
        dk, dv = (_reduce_to(g, x.shape)[..., 0, :, :] for g, x in ((dk, p.k), (dv, p.v)))
    grads = _reduce_to(_merge_heads(dq, p, 2), shapes[0]), _reduce_to(dk, shapes[1]), _reduce_to(dv, shapes[2])
    if not return_intermediates:
        return grads
    return (*grads, {"lse": _merge_heads(lse, p, 1), "D": _merge_heads(D, p, 1)})


@guard_overflow(first_only=3)  # not the intermediates: ℓ = −∞ for a row that sees no key
def softmax_attention_vjp(q, k, v, dy, *, mask=None, causal=False, scale=None, window=None, alibi_slopes=None,
                          causal_alignment="top_left", softcap=None, grouped_heads=False, return_intermediates=False):
    r"""Backward pass of :func:`refimpl.attention.softmax_attention`: ``(dq, dk, dv)`` for the cotangent ``dy``.

    The vector–Jacobian product of Eq. (4.1) of the book, in the form of FlashAttention's
    backward pass (Dao et al. 2022, Appendix B.2 and Alg. 4), with every option of the forward
    function: the masks and biases of Eq. (4.14) as FlashAttention-2 kernels apply them.

    Parameters
    ----------
    q : array_like, shape (..., N, d)
    k : array_like, shape (..., M, d)
    v : array_like, shape (..., M, dv)
    dy : array_like, shape (..., N, dv)
        The cotangent ∂ℓ/∂y (FlashAttention's dO), with the shape of the output ``y`` of
        ``softmax_attention(q, k, v, ...)`` with the same options (the broadcast batch axes).
    mask, causal, scale
        As in :func:`refimpl.attention.softmax_attention` (mask: True = may attend; causal:
        aligned by ``causal_alignment``; scale default ``1/sqrt(d)``). ``scale`` is a constant,
        not differentiated.
    window, alibi_slopes, causal_alignment, softcap, grouped_heads
        As in :func:`refimpl.attention.softmax_attention`: a sliding window of ``window`` keys,
        ALiBi biases ``− m |i + o − j|`` (constants: the slopes get no gradient), the causal
        offset ``o``, the soft cap ``c tanh(s / c)`` of the logits, and query heads that share
        key/value heads (GQA/MQA: ``dk``, ``dv`` summed over the G query heads of a group).
    return_intermediates : bool
        Also return the two row quantities a FlashAttention backward kernel reads besides its
        inputs: the log-sum-exp ``ℓ_i = m_i + log z_i`` of the (capped, biased) logits, which the
        forward kernel stores and the backward pass recomputes ``P = exp(S − ℓ)`` from (−∞ for a
        row that sees no key), and ``D_i = rowsum(dO ∘ O)``, which FlashAttention-2 computes in a
        separate preprocessing step. A wrong ``D`` points at that step, a right ``D`` with wrong
        gradients at the main loop.

    Returns
    -------
    dq : ndarray, shape of q
    dk : ndarray, shape of k
    dv : ndarray, shape of v
        Gradients summed over the axes along which the input was broadcast.
    intermediates : dict
        Only with ``return_intermediates``: ``{"lse": ℓ, "D": D}``, each of shape (..., N) (the
        batch axes of the output).

    Notes
    -----
    Forward: ``S = c Q K^T`` (c the scale), ``T = cap · tanh(S / cap)`` with a soft cap (else
    ``T = S``), then the ALiBi bias and −∞ where the mask, the causal triangle or the window
    forbids, ``P = softmax_row(T + bias)``, ``O = P V``. Reverse mode, one factor at a time:

    * ``O = P V`` gives ``dV = P^T dO`` and ``dP = dO V^T``.
    * The softmax of row i has the Jacobian ``∂P_ij/∂S_il = P_ij (δ_jl − P_il)``, so
      ``dS_ij = P_ij (dP_ij − Σ_l P_il dP_il)`` (the naive form, :func:`softmax_attention_vjp_loop`).
    * Since ``Σ_l P_il dP_il = Σ_l P_il (dO_i · v_l) = dO_i · O_i``, the row constant is
      ``D_i = rowsum(dO ∘ O)`` — an (N,) vector that FlashAttention computes from the output,
      without the N×M product ``P ∘ dP`` (Dao et al. 2022, App. B.2): ``dS = P ∘ (dP − D)``.
      Here each block of rows holds ``P`` and ``dP`` anyway, so ``D_i = rowsum(P ∘ dP)`` costs one
      product with a vector of ones, less than recomputing ``O = P V`` (10–13 % of the backward
      pass at N = 1024 … 4096, d = 64, measured).
    * The bias is a constant and the masks select entries: neither changes ``dS`` on the
      allowed entries; the soft cap multiplies it by ``∂T/∂S = 1 − tanh²(S / cap)``.
    * ``S = c Q K^T`` gives ``dQ = c dS K`` and ``dK = c dS^T Q``.

    Conditioning: when a row's weights are nearly one-hot (large logits), ``D_i ≈ dP_ij`` for the
    winning key and ``dP_ij − D_i`` cancels, so ``dq`` and ``dk`` carry an absolute error of order
    ``ε · scale · |dO| |V| |K|`` rather than a small relative one; the naive form cancels alike.

    Masked entries have ``P_ij = 0`` hence ``dS_ij = 0``: they receive no gradient; a query row
    that may attend to no key (its output is the constant 0) receives none either. The
    vectorized algorithm recomputes ``P`` block by block of 128 query rows (FlashAttention's
    B_r), over the keys the block may see only (the causal triangle and the window skip whole
    key ranges), with the same bias, masks and exponentials as the forward pass — unshifted in
    a block whose logits are bounded by Cauchy–Schwarz (no row max, no subtraction: 5 % of the
    backward pass at N = 4096, d = 64), shifted by the row max elsewhere — and accumulates
    ``dK`` and ``dV`` over the blocks: temporaries O(128·M) per batch element and thread, never
    an (N, M) or (N, M, d) array. The normalized ``P = r ∘ E`` (``E`` the block's exponentials,
    ``r_i = 1/z_i``) is never formed: ``r`` scales the thin operands instead (``dV += Eᵀ (r ∘ dO)``,
    ``dQ = c r ∘ ((E ∘ (dP − D)) K)``, ``dK += (E ∘ (dP − D))ᵀ (r ∘ c Q)``), and ``dK``, ``dV`` are
    accumulated transposed, so that every product but ``dQ``'s has contiguous operands. Large problems (at least 2^21
    logits) cut the query rows of a small batch into four parts with ``dK``, ``dV`` of their
    own, summed in order at the end, and run the parts (or the batch entries) in threads with
    BLAS held to one thread; the parts depend on the sizes alone, so the result does not depend
    on the number of threads.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v, dy = rng.normal(size=(4, 5, 3))
    >>> dq, dk, dv = softmax_attention_vjp(q, k, v, dy, causal=True)
    >>> all(np.allclose(a, b) for a, b in zip((dq, dk, dv), softmax_attention_vjp_loop(q, k, v, dy, causal=True)))
    True
    >>> kw = dict(causal=True, window=2, alibi_slopes=0.5, softcap=3.0)  # a sliding-window ALiBi head
    >>> g = softmax_attention_vjp(q, k, v, dy, **kw)
    >>> all(np.allclose(a, b) for a, b in zip(g, softmax_attention_vjp_loop(q, k, v, dy, **kw)))
    True
    """
    from .attention import _batch_groups, _key_range, _unshifted, _weights_block

    p, dy, shapes = _softmax_setup(q, k, v, dy, mask, causal, scale, window, alibi_slopes, causal_alignment,
                                   softcap, grouped_heads, return_intermediates)
    batch, (n, d), m, dv_ = p.batch, p.q.shape[-2:], p.k.shape[-2], p.v.shape[-1]
    qs = np.broadcast_to(p.q * p.scale, (*batch, n, d))  # scale q (N·d products): S = (c Q) K^T
    # where c·q overflowed (q near the float64 maximum, c > 1) the logits are formed as c·(q·k) and dK as
    # (c dSᵀ) Q, as the loop twin and the forward forms do (only then: the usual order otherwise)
    q_raw = np.broadcast_to(p.q, (*batch, n, d))
    scaled_ok = bool(np.isfinite(qs).all())
    kb, vb = np.broadcast_to(p.k, (*batch, m, d)), np.broadcast_to(p.v, (*batch, m, dv_))
    mask = None if p.mask is None else np.broadcast_to(p.mask, (*batch, n, m))
    slopes = None if p.slopes is None else np.broadcast_to(p.slopes, batch)
    dq = np.zeros((*batch, n, d))
    lse = np.full((*batch, n), -np.inf)  # ℓ_i = log 0 for a row that sees no key
    D = np.zeros((*batch, n))
    # Work items: a group of batch entries and a part of the query rows (a run of blocks). Each part
    # accumulates dK, dV of its own (the parts' sums are added in order at the end), so items are
    # independent and run in threads. Large problems only (at least _VJP_THREADED logits) are cut
    # into parts, and only when the batch gives fewer than _VJP_PARTS groups: the parts depend on
    # the sizes alone, so the result does not depend on the thread count.
    groups, size = _batch_groups(batch, _ATT_BLOCK * m)
    blocks = [(i0, min(n, i0 + _ATT_BLOCK), *_key_range(p, i0, min(n, i0 + _ATT_BLOCK), m)) for i0 in range(0, n, _ATT_BLOCK)]
    blocks = [b for b in blocks if b[3] > b[2]]  # a block whose rows see no key: output 0, no gradient
    cost = np.cumsum([(i1 - i0) * (hi - lo) for i0, i1, lo, hi in blocks])
    large = bool(blocks) and size * len(groups) * int(cost[-1]) >= _VJP_THREADED
    n_parts = min(len(blocks), _VJP_PARTS) if large and len(groups) < _VJP_PARTS else 1
    cuts = np.searchsorted(cost, cost[-1] * np.arange(1, n_parts) / n_parts, side="right") if blocks else []
    parts = [blocks[a:b] for a, b in zip([0, *cuts], [*cuts, len(blocks)]) if b > a]
    # dKᵀ, dVᵀ of each part (zero if no block sees a key), transposed: see the products below
    dkT = np.zeros((max(1, len(parts)), *batch, d, m))
    dvT = np.zeros((max(1, len(parts)), *batch, dv_, m))
    # Kᵀ and Vᵀ stored contiguously, so that S = (c Q) Kᵀ and dP = dO Vᵀ are plain (NN) products (with a
    # transposed view OpenBLAS ran these 128 × 4096 × 64 products 6-14 % slower on one core, measured)
    kTb, vTb = (np.broadcast_to(np.ascontiguousarray(np.swapaxes(x, -1, -2)), (*batch, x.shape[-1], m)) for x in (p.k, p.v))
    items = [(g, j) for g in groups for j in range(len(parts))]
    ones = np.ones((m, 1))
    bound, e_max = _unshifted(p, qs)  # which blocks the forward pass exponentiates unshifted: the same here

    # Each thread's blocks live in buffers of its own, reused from block to block and item to item (a causal
    # triangle's blocks differ in size, and fresh arrays cost page faults: 15-20 % of the logits product's time
    # at N = 4096, measured): E and dP (block rows × keys), and the (d, keys) products added into dKᵀ, dVᵀ; each
    # block takes the leading part of a buffer, contiguous
    most = max((math.prod(qs[g].shape[:-2]) for g in groups), default=0)  # batch entries per group

    def part(buf, *shape):
        return buf[: math.prod(shape)].reshape(shape)

    def worker():
        e_buf, ds_buf, add_buf = np.empty(most * _ATT_BLOCK * m), np.empty(most * _ATT_BLOCK * m), np.empty(most * max(d, dv_) * m)
        return functools.partial(item, e_buf, ds_buf, add_buf)

    def item(e_buf, ds_buf, add_buf, i):
        g, j = items[i]
        dk_g, dv_g, mask_g, slopes_g = dkT[j][g], dvT[j][g], None if mask is None else mask[g], None if slopes is None else slopes[g]
        lead = qs[g].shape[:-2]
        for i0, i1, lo, hi in parts[j]:
            keys = slice(lo, hi)
            q_b, k_b, kT_b, vT_b = qs[g][..., i0:i1, :], kb[g][..., keys, :], kTb[g][..., keys], vTb[g][..., keys]
            # the weights as the forward pass computes them: S = scale Q Kᵀ, T = cap · tanh(S / cap), + ALiBi
            # bias, 0 where forbidden; e^T unshifted where the logits are bounded, else shifted by the row max
            # (a row that sees no key: E = 0, no gradient); tanh(S / cap) kept for ∂T/∂S
            E = part(e_buf, *lead, i1 - i0, hi - lo)
            fast = np.max(bound[g][..., i0:i1], initial=-np.inf) <= e_max
            mx, z, tanh = _weights_block(q_b, np.swapaxes(kT_b, -1, -2), p, mask_g, slopes_g, i0, lo, E, ones, fast,
                                         keep_tanh=True, q_raw=q_raw[g][..., i0:i1, :])
            lse[g][..., i0:i1] = (mx + np.log(z))[..., 0]  # ℓ_i = m_i + log z_i (−∞ + 0 for an empty row)
            # P = r ∘ E, r_i = 1/z_i, never formed: r scales the (·, d) operands and results instead of the
            # (128, M) block (a pass over the block saved, 4 % of the backward pass)
            r = 1.0 / z
            dO = dy[g][..., i0:i1, :]
            # dV = Pᵀ dO = Eᵀ (r ∘ dO), accumulated transposed: dVᵀ += (r ∘ dO)ᵀ E, a plain product (Pᵀ dO with
            # a transposed operand ran 1.3 times as long)
            dv_g[..., keys] += np.matmul(np.swapaxes(dO * r, -1, -2).copy(), E, out=part(add_buf, *lead, dv_, hi - lo))
            dS = np.matmul(dO, vT_b, out=part(ds_buf, *lead, i1 - i0, hi - lo))  # dP = dO Vᵀ
            dS *= E  # E ∘ dP
            # D_i = rowsum(dO ∘ O) = Σ_j P_ij (dO_i · v_j) = r_i rowsum(E ∘ dP): a product with ones, not O = P V
            Drow = dS @ ones[: hi - lo]
            Drow *= r
            D[g][..., i0:i1] = Drow[..., 0]
            dS -= np.multiply(E, Drow, out=E)  # E ∘ (dP − D) = dS / r (dS = P ∘ (dP − D))
            if tanh is not None:
                tanh *= tanh
                np.subtract(1.0, tanh, out=tanh)
                dS *= tanh  # the soft cap: ∂T/∂S = 1 − tanh²(S / cap)
            dq_b = dS @ k_b  # dQ = c dS K = c (r ∘ ((dS / r) K)); r and c one at a time (r c can be subnormal)
            dq_b *= r
            np.multiply(dq_b, p.scale, out=dq[g][..., i0:i1, :])
            if scaled_ok:  # dK = c dSᵀ Q = (dS / r)ᵀ (r ∘ c Q), accumulated transposed: dKᵀ += (r ∘ c Q)ᵀ (dS / r)
                dk_g[..., keys] += np.matmul(np.swapaxes(q_b * r, -1, -2).copy(), dS, out=part(add_buf, *lead, d, hi - lo))
            else:  # c·q overflowed: (c dS)ᵀ Q, the loop twin's order
                dS *= r
                dS *= p.scale
                dk_g[..., keys] += np.swapaxes(q_raw[g][..., i0:i1, :], -1, -2) @ dS

    # large problems: the items in threads, BLAS on one thread each (as in softmax_attention); decided by the sizes
    # alone (with one thread the items run in turn, BLAS still on one thread), so that OpenBLAS's own threads, whose
    # products can round otherwise, do not make the result depend on the thread count
    threaded = large and len(items) > 1
    _blocking.take_turns_one_blas(len(items), worker, 1 << 30, threaded)  # elems: `large` decided already
    for j in range(1, len(parts)):  # the parts' dK, dV in order
        dkT[0] += dkT[j]
        dvT[0] += dvT[j]
    dk, dv = (np.ascontiguousarray(np.swapaxes(x[0], -1, -2)) for x in (dkT, dvT))
    return _softmax_grads(p, dq, dk, dv, shapes, lse, D, return_intermediates)


@guard_overflow(first_only=3)  # not the intermediates: ℓ = −∞ for a row that sees no key
def softmax_attention_vjp_loop(q, k, v, dy, *, mask=None, causal=False, scale=None, window=None, alibi_slopes=None,
                               causal_alignment="top_left", softcap=None, grouped_heads=False, return_intermediates=False):
    """Loop twin of :func:`softmax_attention_vjp`: one query row at a time, the naive softmax Jacobian.

    ``dS_ij = Σ_l ∂P_il/∂S_ij dP_il = P_ij (dP_ij − Σ_l P_il dP_il)`` with the row sum formed
    from ``P`` and ``dP`` (not FlashAttention's ``D_i = dO_i · O_i``), times ``1 − tanh²(S_ij / cap)``
    with a soft cap, in Python floats; the allowed keys and the bias one key at a time, as in
    :func:`refimpl.attention.softmax_attention_loop`.

    Examples
    --------
    >>> q = k = np.eye(2)
    >>> v, dy = np.array([[1.0], [0.0]]), np.ones((2, 1))
    >>> dq, dk, dv = softmax_attention_vjp_loop(q, k, v, dy, scale=0.0)  # uniform weights 1/2
    >>> dv.ravel().tolist(), float(abs(dq).max())  # dv_j = Σ_i P_ij dy_i; scale 0: no gradient to q
    ([1.0, 1.0], 0.0)
    """
    from .attention import _check_logits, _logit

    p, dy, shapes = _softmax_setup(q, k, v, dy, mask, causal, scale, window, alibi_slopes, causal_alignment,
                                   softcap, grouped_heads, return_intermediates)
    batch, (n, d), m, dv_ = p.batch, p.q.shape[-2:], p.k.shape[-2], p.v.shape[-1]
    c, cap = p.scale, p.softcap
    qb = np.broadcast_to(p.q, (*batch, n, d))
    kb = np.broadcast_to(p.k, (*batch, m, d))
    vb = np.broadcast_to(p.v, (*batch, m, dv_))
    mb = None if p.mask is None else np.broadcast_to(p.mask, (*batch, n, m))
    sb = None if p.slopes is None else np.broadcast_to(p.slopes, batch)
    dq = np.zeros((*batch, n, d))
    dk = np.zeros((*batch, m, d))
    dv = np.zeros((*batch, m, dv_))
    lse = np.full((*batch, n), -np.inf)
    D = np.zeros((*batch, n))
    for b in np.ndindex(*batch):
        for i in range(n):
            o = i + p.offset  # the key aligned with query i
            keys = [j for j in range(m) if (mb is None or mb[b][i, j]) and not (p.causal and j > o)
                    and not (p.window is not None and abs(o - j) >= p.window)]
            if not keys:
                continue  # the row sees no key: y_i = 0, no gradient
            s = {j: _logit(c, qb[b][i], kb[b][j]) for j in keys}  # S_ij = c q_i·k_j (in the order that does not overflow)
            _check_logits(s.values())  # an overflowed logit at an allowed key is refused, as the forward does
            t = {j: cap * math.tanh(s[j] / cap) if cap is not None else s[j] for j in keys}  # T_ij
            if sb is not None:
                t = {j: t[j] - float(sb[b]) * abs(o - j) for j in keys}  # ALiBi: − m |i + o − j|
            top = max(t.values())
            z = sum(math.exp(x - top) for x in t.values())
            pr = {j: math.exp(t[j] - top) / z for j in keys}  # P_ij
            dp = {j: float(np.dot(dy[b][i], vb[b][j])) for j in keys}  # dP_ij = dO_i · v_j
            row = sum(pr[j] * dp[j] for j in keys)  # Σ_l P_il dP_il
            lse[b][i], D[b][i] = top + math.log(z), row  # ℓ_i = m_i + log z_i; D_i = Σ_l P_il dP_il = dO_i · O_i
            with np.errstate(over="ignore"):
                cq = c * qb[b][i]  # c q_i, unless it overflows (then (c dS_ij) q_i below)
            cq_ok = bool(np.isfinite(cq).all())
            for j in keys:
                dv[b][j] += pr[j] * dy[b][i]  # dV_j += P_ij dO_i
                ds = pr[j] * (dp[j] - row)  # dT_ij (= dS_ij without a cap)
                if cap is not None:
                    ds *= 1.0 - math.tanh(s[j] / cap) ** 2  # dS_ij = dT_ij (1 − tanh²(S_ij / cap))
                dq[b][i] += ds * kb[b][j]  # dQ_i = c Σ_j dS_ij k_j (c applied after the sum, below)
                dk[b][j] += ds * cq if cq_ok else (c * ds) * qb[b][i]  # dK_j += dS_ij (c q_i)
            dq[b][i] *= c
    # The orders are the vectorized form's: c after the sum for dQ, (c q_i) for dK where it does not overflow.
    # With c tiny and q, k huge (q·k overflows, c q does not), c dS_ij would be subnormal and lose digits.
    return _softmax_grads(p, dq, dk, dv, shapes, lse, D, return_intermediates)


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


def _quotient_cotangent(o: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """``G = [dnum, dden] = [dy / den, −(dy·y) / den]``, the cotangent of ``o = [num, den]`` (…, W) through the
    quotient ``y = num / den`` of linear attention, given ``dy`` (…, W − 1)."""
    num, den = o[..., :-1], o[..., -1:]
    G = np.empty(o.shape)
    np.divide(dy, den, out=G[..., :-1])
    np.einsum("...i,...i->...", G[..., :-1], num, out=G[..., -1])
    G[..., -1:] /= -den
    return G


def _causal_linear_vjp(a, b, vt, dy, chunk: int = _LIN_CHUNK) -> tuple:
    """``(da, db, dṽ)`` of causal linear attention (:func:`linear_attention_vjp`) by chunks, with the forward's
    ``o`` and ``G`` formed chunk by chunk on the way; no (N, N) matrix.

    With the rows of chunk n ``A_n = φ(Q_n)``, ``B_n = φ(K_n)``, ``Ṽ_n``, ``G_n``, the forward state
    ``S_n = Σ_{m<n} B_mᵀ Ṽ_m`` (F × W), the reverse state ``T_n = Σ_{m>n} G_mᵀ A_m`` (W × F) and the two
    masked blocks ``P_n = tril(A_n B_nᵀ)`` (pairs a_i·b_j, j ≤ i) and ``M_n = tril(G_n Ṽ_nᵀ)`` (G_i·ṽ_j):

        o_n = A_n S_n + P_n Ṽ_n,      da_n = G_n S_nᵀ + M_n B_n,
        db_n = Ṽ_n T_n + M_nᵀ A_n,    dṽ_n = B_n T_nᵀ + P_nᵀ G_n.

    The three sums of the backward pass share two states and two blocks: ``da``'s state is the
    transpose of the forward's (over the earlier chunks, ``Σ ṽ_j b_jᵀ = S_nᵀ``), ``db`` and ``dṽ`` read
    the same reverse state, ``P_n`` serves ``o`` and ``dṽ``, ``M_n`` serves ``da`` and ``db``: 12 products of
    (rows × 64 × 64) per token against 16 for four separate chunked prefix sums, and two prefix sums of
    chunk states instead of four. ``G_n`` depends on the chunk's own ``o_n`` and ``dy_n`` only, so it is
    formed in the same pass. Four stages: the chunk summaries ``B_nᵀ Ṽ_n`` and their exclusive sums in
    chunk order; by cache-sized groups of chunks taken in turn by threads, ``o, G, da``, ``G_nᵀ A_n`` and
    the in-chunk parts of ``db, dṽ``; the reverse exclusive sums; the state parts of ``db, dṽ`` by
    groups. Every chunk is computed by the same operations whichever thread runs it. The last chunk is
    padded with zero rows (their ``G`` is 0: they add nothing). Memory: two arrays of N/c + 1 states
    and the outputs, plus cache-sized temporaries.
    """
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2], vt.shape[:-2], dy.shape[:-2])
    n, F, W = a.shape[-2], a.shape[-1], vt.shape[-1]
    c = min(chunk, n)
    nc = -(-n // c)
    pad = nc * c - n
    arrs = []
    for x in (a, b, vt, dy):
        x = np.broadcast_to(x, batch + x.shape[-2:])
        if pad:
            x = np.pad(x, [(0, 0)] * len(batch) + [(0, pad), (0, 0)])  # zero rows add nothing
        arrs.append(x.reshape(*batch, nc, c, x.shape[-1]))
    ac, bc, vc, dyc = arrs
    S = np.empty(batch + (nc + 1, F, W))  # row n: S_n (after the sums below)
    T = np.empty(batch + (nc + 1, W, F))  # row n: G_nᵀ A_n, then Σ_{m≥n}; chunk n reads row n + 1
    S[..., 0, :, :] = 0.0
    T[..., nc, :, :] = 0.0
    size = max(1, min(8, _blocking.per_block(math.prod(batch) * c * (2 * c + 2 * W + F))))  # chunks per group
    mask = np.tri(c)
    da, db, dvt = np.empty(batch + (nc, c, F)), np.empty(batch + (nc, c, F)), np.empty(batch + (nc, c, W))

    def summaries(sl):  # B_nᵀ Ṽ_n into row n + 1
        np.matmul(np.swapaxes(bc[..., sl, :, :], -1, -2), vc[..., sl, :, :],
                  out=S[..., sl.start + 1 : sl.stop + 1, :, :])

    def chunks(sl):  # o, G, da, G_nᵀ A_n and the in-chunk parts of db, dṽ for the chunks sl
        A, B, V = ac[..., sl, :, :], bc[..., sl, :, :], vc[..., sl, :, :]
        P = np.matmul(A, np.swapaxes(B, -1, -2))
        P *= mask  # P_n = tril(A_n B_nᵀ)
        o = np.matmul(A, S[..., sl, :, :])
        o += P @ V
        if pad and sl.stop == nc:  # padded rows: a normalizer of 1 makes their G exactly 0 (their dy is 0)
            o[..., -1, c - pad :, -1] = 1.0
        G = _quotient_cotangent(o, dyc[..., sl, :, :])
        M = np.matmul(G, np.swapaxes(V, -1, -2))
        M *= mask  # M_n = tril(G_n Ṽ_nᵀ)
        d_a = np.matmul(G, np.swapaxes(S[..., sl, :, :], -1, -2), out=da[..., sl, :, :])
        d_a += M @ B
        np.matmul(np.swapaxes(G, -1, -2), A, out=T[..., sl, :, :])
        np.matmul(np.swapaxes(M, -1, -2), A, out=db[..., sl, :, :])
        np.matmul(np.swapaxes(P, -1, -2), G, out=dvt[..., sl, :, :])

    def states(sl):  # + the reverse state's parts of db and dṽ
        T_n = T[..., sl.start + 1 : sl.stop + 1, :, :]
        db[..., sl, :, :] += vc[..., sl, :, :] @ T_n
        dvt[..., sl, :, :] += bc[..., sl, :, :] @ np.swapaxes(T_n, -1, -2)

    _blocking.in_blocks(summaries, nc, size, S.size)
    cumsum_rows(S, -3, S)  # S_n = Σ_{m<n} B_mᵀ Ṽ_m, in chunk order
    _blocking.in_blocks(chunks, nc, size, da.size + dvt.size)
    run = T[..., ::-1, :, :]
    cumsum_rows(run, -3, run)  # row n: Σ_{m≥n} G_mᵀ A_m, from the end
    _blocking.in_blocks(states, nc, size, db.size + dvt.size)
    return tuple(x.reshape(*batch, nc * c, x.shape[-1])[..., :n, :] for x in (da, db, dvt))


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
    states plus a masked block per chunk): no Python loop over tokens, no (N, N) matrix. The
    causal sums share their states and blocks (:func:`_causal_linear_vjp`): ``da``'s chunk
    state is the transpose of the forward's, ``db`` and ``dṽ`` read one reverse-time state, and
    the masked blocks ``tril(A Bᵀ)`` and ``tril(G Ṽᵀ)`` each serve two sums; measured against four
    separate chunked prefix sums at N = 8192, d = 64 (interleaved, paired medians): 0.76× the time
    in one thread, 0.66–0.70× in two.

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
        da, db, dvt = _causal_linear_vjp(a, b, vt, dy)
    else:
        G = _quotient_cotangent(a @ (np.swapaxes(b, -1, -2) @ vt), dy)  # o = Σ_j (a_i·b_j) ṽ_j
        da = G @ (np.swapaxes(vt, -1, -2) @ b)  # Σ_j (G_i·ṽ_j) b_j
        db = vt @ (np.swapaxes(G, -1, -2) @ a)  # Σ_i (ṽ_j·G_i) a_i
        dvt = b @ (np.swapaxes(a, -1, -2) @ G)  # Σ_i (b_j·a_i) G_i
    # φ'(x) = min(φ(x), 1): e^x = φ(x) for x <= 0, 1 for x > 0 (the same numbers as _elu_plus_one_grad, no exp)
    # (da, db: new arrays of the broadcast batch shape, so the products go into them)
    dq = np.multiply(da, np.minimum(a, 1.0, out=a), out=da)
    dk = np.multiply(db, np.minimum(b, 1.0, out=b), out=db)
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
    out = np.empty(x.shape)
    small = np.abs(x) < 0.1
    xs = x[small]  # each branch on its own entries only (the series is 16 passes)
    series = np.full(xs.shape, 16 / math.factorial(17))
    for kk in range(14, -1, -1):  # Horner
        series *= xs
        series += (kk + 1) / math.factorial(kk + 2)
    out[small] = series
    large = ~small
    xl = x[large]
    out[large] = (np.expm1(xl) * (xl - 1.0) + xl) / xl**2  # e^x(x−1) + 1 = (e^x − 1)(x − 1) + x
    return out


def _selective_setup(u, delta, A, B, C, D, dy, discretization):
    from .ssm import _check_selective

    shapes = {name: _given_shape(x, name) for name, x in (("u", u), ("delta", delta), ("B", B), ("C", C))}
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
        The cotangent ∂ℓ/∂y, shape of u. The last state (``return_last_state``) has no cotangent:
        ``λ_{L−1} = dy_{L−1} C_{L−1}``.

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

    Computed in blocks of time steps whose (…, T, d_in, n) temporaries fit in cache: a forward
    sweep keeps only the state entering each block; a backward sweep recomputes a block's states
    from it, runs the adjoint recurrence through the block (carrying ``ā_{t+1} λ_{t+1}`` from the
    block after), and reduces the block's gradients (elementwise products and ``einsum``
    contractions over the state or channel axis). Each recurrence is one vectorized update over
    all (batch, channel, state) entries per step, as in the loop twin. Memory O(L (d_in + n))
    per batch element beyond the inputs: the states are recomputed, not stored.

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
    u, delta, A, B, C, Dv, dy, shapes = _selective_setup(u, delta, A, B, C, D, dy, discretization)
    du, ddelta, dA, dB, dC = _selective_vjp_channels(u, delta, A, B, C, dy, discretization)
    if Dv is not None:
        du += Dv * dy
    return _selective_result(u, delta, A, B, C, Dv, dy, du, ddelta, dA, dB, dC, shapes)


def _vjp_channel_blocks(d: int, groups_b: int, groups_c: int) -> list[slice]:
    """The blocks of channels of the selective scans' backward passes (:func:`refimpl.ssm._scan_channel_blocks`,
    limited to about a quarter of the channels, at least 128). Their step loops make a few NumPy calls per step on
    a block's (batch, channels, N) slab, so the blocks are larger than the forward pass's (measured at batch 2, 1536
    channels, 16 states, 2048 steps, two threads: one block 2.5 s, blocks of 128 channels 1.8 s, of 384 1.55 s, of
    768 1.4 s)."""
    from .ssm import _SCAN_CHANNELS, _scan_channel_blocks

    return _scan_channel_blocks(d, groups_b, groups_c, limit=max(_SCAN_CHANNELS, -(-d // 4)))


def _channel_parts(blocks: list, run, elems: int) -> list:
    """``[run(s) for s in blocks]``, the blocks of channels taken in turn by the threads
    (:func:`refimpl._blocking.take_turns`); the results in block order, whichever thread ran each."""
    parts = [None] * len(blocks)

    def work(i):
        parts[i] = run(blocks[i])

    _blocking.take_turns(len(blocks), lambda: work, elems)
    return parts


def _selective_vjp_channels(u, delta, A, B, C, dy, discretization):
    """``(du, dΔ, dA, dB, dC)`` of :func:`selective_scan_vjp` (without D's terms) in blocks of channels taken in turn
    by the threads (:func:`_vjp_channel_blocks`), as :func:`_fn_scan_vjp` does. B and C are shared by all channels,
    so dB and dC are sums over them: each block returns its part, and the parts are added in the order of the
    blocks, whatever the number of threads."""
    d = u.shape[-1]
    blocks = _vjp_channel_blocks(d, 1, 1)
    if len(blocks) == 1:
        return _selective_vjp_block(u, delta, A, B, C, dy, discretization)
    delta = np.broadcast_to(delta, u.shape)
    parts = _channel_parts(blocks, lambda s: _selective_vjp_block(u[..., s], delta[..., s], A[s], B, C, dy[..., s],
                                                                  discretization), u.size * A.shape[1])
    du, ddelta, dA = (np.concatenate([part[j] for part in parts], axis=-1 if j < 2 else 0) for j in range(3))
    dB, dC = parts[0][3].copy(), parts[0][4].copy()
    for part in parts[1:]:  # in block order
        dB += part[3]
        dC += part[4]
    return du, ddelta, dA, dB, dC


def _selective_vjp_block(u, delta, A, B, C, dy, discretization):
    """The gradients of :func:`selective_scan_vjp` but D's, for the channels of ``u`` (a block of them): the
    forward sweep keeping the state entering each block of steps, then the backward sweep."""
    batch, (L, d), n = u.shape[:-2], u.shape[-2:], A.shape[1]
    T = max(1, min(L, _SEL_BLOCK_FLOATS // max(1, math.prod(batch) * d * n)))  # steps per block
    blocks = [slice(t0, min(L, t0 + T)) for t0 in range(0, L, T)]
    zoh = discretization != "mamba"
    A_safe = np.where(A == 0, 1.0, A)  # the divisor of (e^{ΔA} − 1)/A ("zoh"), A = 0 handled apart
    work = np.empty((4,) + batch + (T, d, n))  # ā, b̄u (then h), λ, and λ ā h_{t−1}: reused from block to block

    def discretized(sl):  # ā_t, b̄_t u_t of a block, (..., T, d, n), and (e^{ΔA} − 1)/A ("zoh")
        Ab, Bu = (w[..., : sl.stop - sl.start, :, :] for w in work[:2])
        db, ub, Bb = delta[..., sl, :, None], u[..., sl, :, None], B[..., sl, None, :]
        np.multiply(db, A, out=Ab)  # Δ_t A
        f = None
        if zoh:  # b̄_t u_t = (e^{Δ_t A} − 1)/A · B_t u_t (Eq. (11.15); expm1 has no cancellation near 0)
            f = np.expm1(Ab)
            f /= A_safe
            np.copyto(f, db, where=A == 0)  # Δ_t where A = 0
            np.multiply(f, Bb, out=Bu)
            Bu *= ub
        else:  # b̄_t u_t = Δ_t B_t u_t (Euler, Eq. (11.16))
            np.multiply(db * ub, Bb, out=Bu)
        np.exp(Ab, out=Ab)  # ā_t = e^{Δ_t A}
        return Ab, Bu, f

    # forwards: the state entering each block (its states are recomputed on the way back)
    starts = np.empty((len(blocks),) + batch + (d, n))
    h = np.zeros(batch + (d, n))
    for i, sl in enumerate(blocks):
        starts[i] = h
        Ab, Bu, _ = discretized(sl)
        for t in range(sl.stop - sl.start):  # h_t = ā_t h_{t−1} + b̄_t u_t
            h *= Ab[..., t, :, :]
            h += Bu[..., t, :, :]
    # backwards, block by block: the block's states h_t, its adjoints λ_t, and its gradients
    du, ddelta = np.empty(u.shape), np.empty(u.shape)
    dB, dC = np.empty(batch + (L, n)), np.empty(batch + (L, n))
    dA = np.zeros((d, n))
    carry = np.zeros(batch + (d, n))  # ā_{t+1} λ_{t+1} from the block after (0 after the last step)
    tmp = np.empty(batch + (d, n))
    for i in range(len(blocks) - 1, -1, -1):
        sl = blocks[i]
        ub, db, Bb, yb = u[..., sl, :], delta[..., sl, :], B[..., sl, :], dy[..., sl, :]
        Ab, H, f = discretized(sl)  # H: b̄_t u_t, then h_t in place
        H[..., 0, :, :] += Ab[..., 0, :, :] * starts[i]
        for t in range(1, H.shape[-3]):
            np.multiply(Ab[..., t, :, :], H[..., t - 1, :, :], out=tmp)
            H[..., t, :, :] += tmp
        lam, ga = (w[..., : sl.stop - sl.start, :, :] for w in work[2:])
        np.multiply(yb[..., :, :, None], C[..., sl, None, :], out=lam)  # dy_t C_t, then λ_t in place
        lam[..., -1, :, :] += carry
        for t in range(lam.shape[-3] - 2, -1, -1):  # λ_t = ā_{t+1} λ_{t+1} + dy_t C_t
            np.multiply(Ab[..., t + 1, :, :], lam[..., t + 1, :, :], out=tmp)
            lam[..., t, :, :] += tmp
        carry = Ab[..., 0, :, :] * lam[..., 0, :, :]
        dC[..., sl, :] = np.einsum("...td,...tdn->...tn", yb, H)
        np.multiply(lam, Ab, out=ga)  # λ_t ⊙ ā_t ⊙ h_{t−1}
        ga[..., 0, :, :] *= starts[i]
        ga[..., 1:, :, :] *= H[..., :-1, :, :]
        ddelta[..., sl, :] = np.einsum("...tdn,dn->...td", ga, A)  # through ā: ∂ā/∂Δ = A ā
        dA += np.einsum("tdn,td->dn", ga.reshape(-1, d, n), np.broadcast_to(db, ub.shape).reshape(-1, d))  # ∂ā/∂A = Δ ā
        if discretization == "mamba":
            lB = np.einsum("...tdn,...tn->...td", lam, Bb)  # Σ_n λ_t B_t
            np.multiply(lB, db, out=du[..., sl, :])  # Σ_n λ Δ B
            dB[..., sl, :] = np.einsum("...tdn,...td->...tn", lam, ub * db)  # Σ_d λ u Δ
            ddelta[..., sl, :] += lB * ub  # Σ_n λ u B
        else:
            w = lam * ub[..., None]  # λ_t u_t
            du[..., sl, :] = np.einsum("...tdn,...tdn,...tn->...td", lam, f, Bb)
            dB[..., sl, :] = np.einsum("...tdn,...tdn->...tn", w, f)
            wB = np.multiply(w, Bb[..., None, :], out=w)
            ddelta[..., sl, :] += np.einsum("...tdn,...tdn->...td", wB, Ab)  # ∂f/∂Δ = e^{ΔA}
            wB *= _dphi1_dA(db[..., None] * A)  # ∂f/∂A = Δ² g(ΔA)
            wB *= np.square(db)[..., None]
            dA += wB.reshape(-1, d, n).sum(axis=0)
    return du, ddelta, dA, dB, dC


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


# ---------------------------------------------------------------------------------------------
# Linear recurrences of chapter 16: the adjoint filter
# ---------------------------------------------------------------------------------------------
#
# Every layer of refimpl.linear_rnn is a linear recurrence on a matrix state, S_t = S_{t−1} F_t + (write)_t,
# o_t = S_t q_t. The adjoint state Λ_t = ∂ℓ/∂S_t obeys Λ_t = dy_t q_tᵀ + Λ_{t+1} F_{t+1}ᵀ: the same
# recurrence run backwards in time with the transposed transition (Eq. (16.17) of the book). The
# vectorized forms below run it chunk by chunk, exactly as the forward chunked algorithms run S.

# Bound on the elements of the (group, c, c[, Dk]) temporaries of the chunked backward passes.
_REC_BLOCK = 1 << 18
# Chunks of per-channel GLA whose decay stays above e^{-_REC_FACTOR_LOG} use the factored BLAS form.
_REC_FACTOR_LOG = 30.0
_REC_TINY = math.exp(-_REC_FACTOR_LOG)  # e^{−cum} is evaluated as 1 / max(e^{cum}, _REC_TINY)
# The log-gate gradient of GLA and SSD in a chunk takes the difference form
# (a reverse cumulative sum of q ⊙ dq − k ⊙ dk, Yang et al. 2024) only where the chunk decays by at most
# e^{-_REC_FACTOR_LOG} and every gate in it is at least e^{-_REC_SAFE_LOG}; elsewhere the exact form (the terms
# that straddle each step, every exponent a sum of log-gates <= 0). See _gla_vjp_core. Measured against the loop
# twin, relative to the sum of the terms' magnitudes: gates down to e^-1 in the difference form, up to ~15 ulps;
# down to e^-2, ~500 ulps (every straddling pair carries the gate at r, the cancelled pairs need not).
_REC_SAFE_LOG = 1.0


def _chunk_groups(nb: int, nc: int, c: int, width: int) -> list:
    """Slices of the ``nc`` chunks in groups whose temporaries stay in cache, as the forward pass cuts
    them (:func:`refimpl.linear_rnn._group`, ``nb`` batch entries side by side, heads of ``width`` = max(Dk, Dv))."""
    from .linear_rnn import _group

    m = max(1, min(nc, _group(nb, c, width)))  # nc = 0 (an empty sequence): no group
    return [slice(g0, min(nc, g0 + m)) for g0 in range(0, nc, m)]


def _put_rows(out, arrays, sl: slice, c: int, L: int) -> None:
    """Write the steps of the chunks ``sl`` (each array (nb, chunks, c, …)) into their rows of ``out``
    (arrays (nb, L, …)), the padding after step L − 1 left out."""
    r0, r1 = sl.start * c, min(L, sl.stop * c)
    for o, a in zip(out, arrays):
        o[:, r0:r1] = a.reshape(o.shape[:1] + (-1,) + o.shape[2:])[:, : r1 - r0]


def _rec_suffix(a: np.ndarray, axis: int) -> np.ndarray:
    """Inclusive suffix sums ``Σ_{r≥s}`` along ``axis``, accumulated from the end (no subtraction)."""
    return np.flip(np.cumsum(np.flip(a, axis), axis), axis)


_CONSTANTS: dict = {}


def _ones_matrix(kind: str, n: int) -> np.ndarray:
    """Cached read-only 0/1 matrices of the straddle sums (built once per size; a dict write is atomic, so
    threads at worst build one twice): ``"strict_upper"`` (n, n) ones above the diagonal, ``"lower"`` on
    and below it; ``"halves"`` (2n, 2n) the strictly lower triangle on the first
    half and the upper one on the second (:func:`_halves_straddle`); ``"boundary"`` (n, 2n)
    ``[upper | strictly lower]`` (:func:`_boundary_terms`); ``"pairs"`` (n, n·n) with entry (r, t·n + s)
    = [s < r ≤ t] (:func:`_straddle_factored`)."""
    key = (kind, n)
    m = _CONSTANTS.get(key)
    if m is None:
        if kind == "strict_upper":
            m = np.triu(np.ones((n, n)), 1)
        elif kind == "lower":
            m = np.tri(n)
        elif kind == "halves":
            m = np.zeros((2 * n, 2 * n))
            m[:n, :n] = np.tri(n, n, -1)
            m[n:, n:] = np.triu(np.ones((n, n)))
        elif kind == "boundary":
            m = np.hstack((np.triu(np.ones((n, n))), np.tri(n, n, -1)))
        else:  # "pairs"
            r = np.arange(n)
            m = ((r[None, None, :] < r[:, None, None]) & (r[:, None, None] <= r[None, :, None])).astype(float)
            m = m.reshape(n, n * n)
        m.setflags(write=False)
        _CONSTANTS[key] = m
    return m


def _straddle(X: np.ndarray) -> np.ndarray:
    """``D_r = Σ_{t≥r} Σ_{s<r} X[..., t, s]``: the entries of a (c, c) matrix that straddle step r.

    The derivative of ``Σ X_ts seg[t, s]`` with respect to the log-gate ``a_r`` (which enters the
    segment sums with s < r ≤ t): ``Y = X U`` with U the strictly upper triangle of ones
    (``Y_tr = Σ_{s<r} X_ts``), then the sum of ``Y_tr`` over t ≥ r. Sums of terms, no difference."""
    c = X.shape[-1]
    Y = X @ _ones_matrix("strict_upper", c)
    Y *= _ones_matrix("lower", c)
    return Y.sum(axis=-2)


def _row_products(a: np.ndarray, b: np.ndarray, per_head: bool, out: np.ndarray) -> None:
    """``out = a ⊙ b`` (…, c, Dk), or per head its row sums ``Σ_j a_tj b_tj`` into ``out`` (…, c, 1)."""
    if per_head:
        np.einsum("...j,...j->...", a, b, out=out[..., 0])
    else:
        np.multiply(a, b, out=out)


def _boundary_terms(X: np.ndarray, through: np.ndarray) -> np.ndarray:
    """The terms of the log-gate gradient of a chunk of gated linear attention that cross its boundaries.

    ``X`` (…, 2c, D) stacks ``q ⊙ dq_in`` (the state entering the chunk read at step t: pairs
    s < start ≤ r ≤ t) over ``k ⊙ dk_out`` (the chunk's keys carried out by the adjoint arriving at its
    end: pairs s < r ≤ end < t), per head summed over the channels (D = 1, :func:`_row_products`);
    ``through`` (…, D): ``colsum(R ⊙ S_in) ⊙ e^{cum_end}``, the pairs that span the whole chunk. Returns
    ``Σ_{t≥r} (q ⊙ dq_in)_t + Σ_{s<r} (k ⊙ dk_out)_s + through`` (…, c, D), one product with
    ``[upper | strictly lower]`` triangles of ones: sums of terms of the gradient, no difference."""
    c = X.shape[-2] // 2
    out = _ones_matrix("boundary", c) @ X
    out += through[..., None, :]
    return out


def _halves_straddle(Qa: np.ndarray, T2: np.ndarray, Kb: np.ndarray, T1: np.ndarray) -> np.ndarray:
    """The log-gate gradient of the pairs that cross a halving: (…, 2, h, Dk), first halves then second halves.

    ``T2 = M_q Kb`` on the second halves and ``T1 = M_qᵀ Qa`` on the first halves (``M_q`` the lower-left
    quarters of the blocks, ``Qa_t ⊙ Kb_s = q_t ⊙ k_s e^{seg[t, s]}`` with both factors' exponents <= 0 or
    a block's factored decays): a pair t (second half), s (first half) straddles every r with s < r ≤ t,
    so step r of a first half collects ``Σ_{s<r} (Kb ⊙ T1)_s`` and step r of a second half
    ``Σ_{t≥r} (Qa ⊙ T2)_t`` (sums within the half, one product with a (2h, 2h) matrix of ones)."""
    h = Qa.shape[-2]
    X = np.empty(Qa.shape[:-2] + (2, h, Qa.shape[-1]))
    np.multiply(Kb, T1, out=X[..., 0, :, :])
    np.multiply(Qa, T2, out=X[..., 1, :, :])
    S = _ones_matrix("halves", h)  # Σ_{s<r} in the first half, Σ_{t≥r} in the second
    return (S @ X.reshape(X.shape[:-3] + (2 * h, X.shape[-1]))).reshape(X.shape)


#: rows of the diagonal blocks whose straddling pairs _straddle_factored sums term by term
_STRADDLE_BLOCK = 4


def _straddle_factored(Qf: np.ndarray, Kf: np.ndarray, M: np.ndarray) -> np.ndarray:
    """``I_rj = Σ_{s<r≤t} M_ts Qf_tj Kf_sj`` for blocks ``Qf, Kf`` (…, B, Dk) and ``M`` (…, B, B): the
    in-chunk part of the log-gate gradient of gated linear attention with gates per channel, summed
    without cancellation.

    ``Qf_t ⊙ Kf_s`` are the factored decays of a block that decays by at most e^{−_REC_FACTOR_LOG}
    (``q_t ⊙ e^{A_t}``, ``k_s ⊙ e^{−A_s}``, A the in-block cumulative log-gate: their product
    ``q_t ⊙ k_s e^{seg[t, s]}`` to a few ulps). The rows (padded to a power of two) are halved down to
    blocks of ``_STRADDLE_BLOCK``; a pair across a halving (t in the second half, s in the first) straddles the
    steps s < r ≤ t: a step of the second half collects ``Σ_{t≥r} Qf_t ⊙ (M_q Kf)_t``, one of the first half
    ``Σ_{s<r} Kf_s ⊙ (M_qᵀ Qf)_s`` (M_q the quarter, one matrix product each); inside the last blocks the
    pairs s < r ≤ t one by one, ``Σ_t Qf_t ⊙ Σ_s [s < r ≤ t] M_ts Kf_s``. Every sum holds only terms of
    the gradient: the difference form ``Σ_{t≥r} (q ⊙ dq − k ⊙ dk)_t`` would subtract the pairs r ≤ s ≤ t,
    which can exceed the result by any factor (e^{50} for a gate e^{−50} at r). Returns (…, B, Dk)."""
    lead, (B, D) = Qf.shape[:-2], Qf.shape[-2:]
    P = 1 << max(0, (B - 1).bit_length())
    if P != B:  # zero rows (and columns of M) up to a power of two: a padded pair carries nothing
        Qf, Kf = (np.concatenate((a, np.zeros(lead + (P - B, D))), axis=-2) for a in (Qf, Kf))
        M = np.pad(M, [(0, 0)] * len(lead) + [(0, P - B), (0, P - B)])
    I = np.zeros(lead + (P, D))
    size = P
    while size > _STRADDLE_BLOCK:  # blocks of `size` rows, halved
        h, nb = size // 2, P // size
        i = np.arange(nb)
        split = lead + (nb, 2, h, D)
        Qs, Ks = Qf.reshape(split), Kf.reshape(split)
        Mq = np.moveaxis(M.reshape(lead + (nb, 2, h, nb, 2, h))[..., i, 1, :, i, 0, :], 0, -3)  # (…, nb, h, h)
        Qa, Kb = Qs[..., 1, :, :], Ks[..., 0, :, :]
        I.reshape(split)[...] += _halves_straddle(Qa, Mq @ Kb, Kb, np.swapaxes(Mq, -1, -2) @ Qa)
        size = h
    # the last blocks, pair by pair: X[t, s] = M_ts Qf_t ⊙ Kf_s, I_r = Σ_{t,s} [s < r ≤ t] X[t, s] (one product)
    nb = P // size
    i = np.arange(nb)
    Mb = np.moveaxis(M.reshape(lead + (nb, size, nb, size))[..., i, :, i, :], 0, -3)  # (…, nb, b, b)
    X = Mb[..., None] * Qf.reshape(lead + (nb, size, 1, D))
    X *= Kf.reshape(lead + (nb, 1, size, D))
    I.reshape(lead + (nb, size, D))[...] += _ones_matrix("pairs", size) @ X.reshape(lead + (nb, size * size, D))
    return I[..., :B, :]


def _decay_matrix(a: np.ndarray, cum: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """``e^{seg[t, s]}`` (0 for s > t) of per-head log-gates ``a`` (..., c) with in-chunk cumulative
    sums ``cum``: as ``e^{cum_t − cum_s}`` in chunks whose decay stays above e^{−_REC_FACTOR_LOG}
    (the forward pass's factored form: both sums are at most that size, so the subtraction adds at
    most ~60 units of rounding, absolute, to an exponent; measured against the segment sums:
    1e−15), from the segment sums (:func:`refimpl.linear_rnn._segsum`, exponents accumulated from
    each segment's start) in the chunks that decay further. A few passes over the (c, c) blocks
    instead of the segment sums' column-by-column cumulative sum (4 heads × 16 chunks of 64
    steps: 0.6 ms against 2.8 ms, measured)."""
    from .linear_rnn import _exp_segsum

    E = np.subtract(cum[..., :, None], cum[..., None, :])
    np.minimum(E, 0.0, out=E)  # ≤ 0 exactly where s ≤ t (the sums' rounding could leave a tiny positive)
    np.exp(E, out=E)
    E *= lower
    strong = np.nonzero(cum[..., -1] < -_REC_FACTOR_LOG)
    if strong[0].size:
        E[strong] = _exp_segsum(a[strong])
    return E


def _over_heads(core, *args, c: int, states=None) -> tuple:
    """``core(*args, c, out)``, its batch entries (heads) split over threads (:func:`refimpl._blocking.in_parts`).

    ``args`` share one batch shape, that of the last one (``dy``, (*b, L, D)); the core writes the
    gradients of all the others into ``out`` (one array of each argument's shape, flattened to
    (heads, …)) and computes every batch entry by the same operations whatever the others are, so
    each part writes its entries' rows and the result is bitwise that of one call. ``states``,
    optional: the initial state and the cotangent of the final state, (*b, Dv, Dk) each or None;
    the core then also gets them (``init``, ``final``) and writes the initial state's gradient
    into ``dinit``, returned last.
    """
    batch = args[-1].shape[:-2]
    nb = math.prod(batch)
    flat = [a.reshape((nb,) + a.shape[len(batch) :]) for a in args]
    outs = [np.empty(a.shape) for a in flat[:-1]]
    if states is None:

        def run(sl):
            core(*(a[sl] for a in flat), c, [o[sl] for o in outs])

        _blocking.in_parts(run, nb, flat[-1].size, one_blas=True)
        return tuple(o.reshape(a.shape) for o, a in zip(outs, args))
    shape = (args[2].shape[-1], args[0].shape[-1])  # (Dv, Dk): v is the third argument, q the first
    init, final = (None if a is None else a.reshape((nb,) + shape) for a in states)
    dinit = np.empty((nb,) + shape)

    def run_states(sl):
        core(*(a[sl] for a in flat), c, [o[sl] for o in outs], init=None if init is None else init[sl],
             final=None if final is None else final[sl], dinit=dinit[sl])

    _blocking.in_parts(run_states, nb, flat[-1].size, one_blas=True)
    return (*(o.reshape(a.shape) for o, a in zip(outs, args)), dinit.reshape(batch + shape))


def _gla_vjp_core(q, k, v, logg, dy, c: int, out, init=None, final=None, dinit=None) -> None:
    """Chunked backward pass of ``S_t = S_{t−1} Diag(g_t) + v_t k_tᵀ``, ``o_t = S_t q_t`` (q scaled).

    ``q, k`` (nb, L, Dk), ``v, dy`` (nb, L, Dv), ``logg`` (nb, L, Dk) or (nb, L, 1). Writes
    ``dq, dk, dv, dlogg`` (dq with respect to the scaled q) into ``out``, four arrays of those shapes.
    ``init``, ``final`` (nb, Dv, Dk), optional: the initial state S_{−1} (the state entering the first
    chunk; None: 0) and the cotangent of the final state (the adjoint arriving at the last chunk's end;
    None: 0); ``dinit`` (nb, Dv, Dk), optional, receives the adjoint leaving the first chunk, ∂ℓ/∂S_{−1}.

    Per chunk, with ``cum`` the in-chunk inclusive cumulative log-gate, the decays factor as in the
    forward pass, ``e^{seg[t, s]} = e^{cum_t} e^{−cum_s}``: with ``Qe = Q ⊙ e^{cum}``,
    ``Kf = K ⊙ e^{−cum}``, ``S_in`` the state entering the chunk, ``R`` the adjoint arriving at its
    end from later chunks (Eq. (16.18)) and ``R̃ = R Diag(e^{cum_end})`` (so that
    ``e^{to_end} = e^{cum_end} e^{−cum}`` rides on R):

    * ``dQ = e^{cum} ⊙ (dY S_in + tril(dY Vᵀ) Kf)``,
    * ``dK = e^{−cum} ⊙ (V R̃ + tril(dY Vᵀ)ᵀ Qe)``,
    * ``dV = Kf R̃ᵀ + triu(Kf Qeᵀ) dY``,
    * ``dlog g_r = Σ_{t≥r in chunk} (q_t ⊙ dq_t − k_t ⊙ dk_t) + colsum(R ⊙ S_end)`` (Eq. (16.19)), the
      difference form, in the chunks described below; elsewhere the exact form.

    ``S`` passes forward (``S_end = S_in Diag(e^{cum_end}) + Vᵀ Kf Diag(e^{cum_end})``) and ``R``
    backward (``R_prev = R Diag(e^{cum_end}) + dYᵀ Qe``) from chunk to chunk, in two sweeps over
    groups of chunks whose temporaries stay in cache (as the forward pass runs): forwards for the
    entering states, then backwards for the adjoint and every gradient of the group. Chunks that
    decay below ``e^{−_REC_FACTOR_LOG}`` (where ``e^{−cum}`` is clamped) are recomputed from the
    exact segment sums, every exponent ≤ 0 (:func:`_gla_vjp_exact`).

    The log-gate gradient. ``dlog g_r`` is the sum of the terms ``X_ts = (dy_t·v_s) q_t ⊙ k_s e^{seg[t, s]}``
    of the pairs that straddle step r (s < r ≤ t; s, t anywhere in the sequence). The difference form
    adds the pairs with t ≥ r in the chunk and subtracts those with s ≥ r: the pairs r ≤ s ≤ t cancel,
    and its error is ε times their size, which can exceed the result by any factor (a gate e^{−50} at r:
    every straddling pair carries it, the cancelled ones do not; an error of 1e−15 on a gradient of
    1e−23). It is kept where it costs no digits beyond a few units: chunks after the first, that decay by
    at most e^{−_REC_FACTOR_LOG} and have no gate below e^{−_REC_SAFE_LOG} (measured: at most ~15 ulps of the sum of the straddling terms' magnitudes; in the first chunk,
    S_in = 0, the few straddling pairs near its start lost ~1000). The other chunks take the exact
    form, sums of straddling terms only, every exponent a sum of log-gates ≤ 0:

    * the pairs across the chunk's boundaries (:func:`_boundary_terms`): ``Σ_{t≥r} q_t ⊙ dq_t`` of the
      entering state's part ``dq = e^{cum} ⊙ (dY S_in)``, ``Σ_{s<r} k_s ⊙ dk_s`` of the arriving adjoint's
      part ``dk = e^{to_end} ⊙ (V R)``, and ``colsum(R ⊙ S_in) ⊙ e^{cum_end}``;
    * the pairs inside the chunk: per head :func:`_straddle` of the (c, c) terms (the factored ``Aᵀ`` of a
      mild chunk, the segment sums of a strong one); per channel the halvings (:func:`_halves_straddle`),
      the blocks they leave with the factored decays (:func:`_straddle_factored`).

    Ordinary gates (log g ~ log U(0.9, 1)) take the difference form in every chunk but the first: the
    test costs a pass over the gates (time within ±3 % of the difference form alone at H = 4, L = 8192,
    Dk = Dv = 64, measured). Fast-forgetting gates (g ~ U(0.01, 0.5)) take the exact form everywhere:
    +25–30 % per channel (the halvings' and the blocks' straddling sums), +5–10 % per head and SSD.
    """
    # the forward pass's own chunking and sums (imported here: import cycle)
    from .linear_rnn import _chunk_cumsum, _chunks, _cumsum_triangles

    nb, L, dk = q.shape
    dv, dg = v.shape[-1], logg.shape[-1]
    c = max(1, min(c, L))  # the result does not depend on c: no chunk longer than the sequence
    qc, kc, vc, gc, yc = (_chunks(a, c, -2) for a in (q, k, v, logg, dy))  # (nb, nc, c, ·), padding 0
    nc = qc.shape[1]
    groups = _chunk_groups(nb, nc, c, max(dk, dv))
    tri, tris = np.tri(c), _cumsum_triangles(c)
    sT = lambda a: np.swapaxes(a, -1, -2)  # noqa: E731

    def decays(sl):  # e^{cum}, e^{−cum} (clamped), e^{cum_end}, the chunks that decay below e^{−30}, and the
        # other chunks whose log-gate gradient takes the exact form (the first, and those with a gate below
        # e^{−_REC_SAFE_LOG}: at a step r with a small gate every straddling pair is small)
        g = gc[:, sl]
        # Σ_{r=start}^{t} log g_r, the forward's sums
        cum = _chunk_cumsum(g, np.empty(g.shape), tris) if dg > 1 else np.cumsum(g, axis=-2)
        eq = np.exp(cum)
        ek = np.divide(1.0, np.maximum(eq, _REC_TINY))
        strong = cum[:, :, -1, :].min(axis=-1) < -_REC_FACTOR_LOG
        sharp = np.min(g, axis=(-2, -1)) < -_REC_SAFE_LOG
        if sl.start == 0:  # the first chunk: S_in = 0, the straddling pairs near its start are few
            sharp[:, 0] = True
        return eq, ek, eq[:, :, -1, :], np.nonzero(strong), np.nonzero(sharp & ~strong)

    # forwards: the state entering each chunk; S_in[:, nc] is the state at the end. The chunk's own part of its
    # end state needs e^{to_end} = e^{Σ_{r>t} log g_r} and e^{cum_end} only: one triangular product gives both,
    # every exponent <= 0 (no clamp, no exact path)
    suffix = np.vstack([np.triu(np.ones((c, c)), 1), np.ones((1, c))])  # rows: Σ_{r>t} (t < c), then Σ_r
    S_in = np.empty((nb, nc + 1, dv, dk))
    S_in[:, 0] = 0.0 if init is None else init
    for sl in groups:
        e = np.exp(np.matmul(suffix, gc[:, sl]))  # (nb, mm, c + 1, Dg)
        kv = sT(vc[:, sl]) @ (kc[:, sl] * e[:, :, :c])  # Vᵀ (K ⊙ e^{to_end}): the chunk's own part of S_end
        tot = e[:, :, c, None, :]  # e^{cum_end}
        for j in range(sl.stop - sl.start):  # S_end = S_in Diag(e^{cum_end}) + Vᵀ (K ⊙ e^{to_end})
            n = sl.start + j
            np.multiply(S_in[:, n], tot[:, j], out=S_in[:, n + 1])
            S_in[:, n + 1] += kv[:, j]
    # backwards: the adjoint arriving at each chunk's end, and every gradient of the group, written into
    # ``out`` directly (a group that ends in the padding goes through a buffer)
    upper = np.triu(np.ones((c, c)))  # Σ_{r≥t}: the suffix sums of dlog g, as a product
    lam = np.zeros((nb, dv, dk)) if final is None else final.copy()  # the adjoint at the last chunk's end
    for sl in reversed(groups):
        g0, mm = sl.start, sl.stop - sl.start
        r0, r1 = g0 * c, min(L, (g0 + mm) * c)
        full = r1 - r0 == mm * c
        dst = [o[:, r0:r1].reshape(nb, mm, c, o.shape[-1]) if full else np.empty((nb, mm, c, o.shape[-1])) for o in out]
        eq, ek, tot, strong, sharp = decays(sl)
        n_strong, n_sharp = strong[0].size, sharp[0].size
        qg, kg, vg, yg = qc[:, sl], kc[:, sl], vc[:, sl], yc[:, sl]
        Qe, Kf = qg * eq, kg * ek
        qy = sT(yg) @ Qe  # dYᵀ Qe: the chunk's own part of the adjoint it passes back
        R = np.empty_like(qy)
        for j in range(mm - 1, -1, -1):  # R_prev = R Diag(e^{cum_end}) + dYᵀ Qe
            R[:, j] = lam
            lam *= tot[:, j, None, :]
            lam += qy[:, j]
        Rs = R * tot[:, :, None, :]  # R̃ = R Diag(e^{cum_end})
        yv = yg @ sT(vg)
        yv *= tri  # tril(dY Vᵀ): (dy_t·v_s), s ≤ t
        dq, dkk, dvv, dlogg = dst
        if n_strong < nb * mm:  # the factored form (overwritten below in chunks that decay fast)
            if n_sharp:  # the exact dlog g of these chunks: views where all chunks are such, else gathers
                every = n_sharp == nb * mm
                sel = (slice(None), slice(None)) if every else sharp
                Xb = np.empty(((nb, mm) if every else (n_sharp,)) + (2 * c, dg))  # [q ⊙ dq_in; k ⊙ dk_out]
            np.matmul(yg, S_in[:, g0 : g0 + mm], out=dq)
            if n_sharp:  # q ⊙ dq of the state entering the chunk
                _row_products(Qe[sel], dq[sel], dg == 1, Xb[..., :c, :])
            dq += yv @ Kf
            dq *= eq
            np.matmul(vg, Rs, out=dkk)
            if n_sharp:  # k ⊙ dk of the adjoint leaving it
                _row_products(Kf[sel], dkk[sel], dg == 1, Xb[..., c:, :])
            dkk += sT(yv) @ Qe
            dkk *= ek
            At = Kf @ sT(Qe)
            At *= tri.T  # triu(Kf Qeᵀ) = Aᵀ, A_ts = q_t·k_s e^{seg[t, s]} (s ≤ t)
            np.matmul(Kf, sT(Rs), out=dvv)
            dvv += At @ yg
            if n_strong + n_sharp < nb * mm:  # Σ_{t≥r} (q ⊙ dq − k ⊙ dk)_t + colsum(R ⊙ S_end)
                dB = qg * dq
                dB -= kg * dkk  # ∂ℓ/∂(cumulative log-gate) at step t
                tail = np.sum(R * S_in[:, g0 + 1 : g0 + mm + 1], axis=-2)  # colsum(R ⊙ S_end), (nb, mm, Dk)
                if dg == 1:
                    tail = tail.sum(axis=-1, keepdims=True)
                    np.add(_rec_suffix(dB.sum(axis=-1, keepdims=True), -2), tail[:, :, None, :], out=dlogg)
                else:
                    np.matmul(upper, dB, out=dlogg)  # Σ_{r≥t} (in-chunk suffix sums)
                    dlogg += tail[:, :, None, :]
            if n_sharp:  # the exact form in the chunks with a gate below e^{−_REC_SAFE_LOG}
                through = np.sum(R[sel] * S_in[:, g0 : g0 + mm][sel], axis=-2) * tot[sel]
                exact = _boundary_terms(Xb, through.sum(axis=-1, keepdims=True) if dg == 1 else through)
                if dg == 1:  # the factored decays of a mild chunk (no clamp): Aᵀ
                    exact += _straddle(yv[sel] * sT(At[sel]))[..., None]
                else:
                    exact += _straddle_factored(Qe[sel], Kf[sel], yv[sel])
                dlogg[sel] = exact
        if n_strong == nb * mm:  # every chunk decays below e^{−30}: head by head, views (no gathers)
            for b in range(nb):
                dq[b], dkk[b], dvv[b], dlogg[b] = _gla_vjp_exact(
                    gc[b, sl], kc[b, sl], vc[b, sl], qc[b, sl], yc[b, sl], yv[b], S_in[b, g0 : g0 + mm], R[b])
        elif n_strong:  # some chunks decay below e^{−30}: exponents from sums of log-gates (<= 0)
            ix = (strong[0], strong[1] + g0)
            dq[strong], dkk[strong], dvv[strong], dlogg[strong] = _gla_vjp_exact(
                gc[ix], kc[ix], vc[ix], qc[ix], yc[ix], yv[strong], S_in[ix], R[strong])
        if not full:
            _put_rows(out, dst, sl, c, L)
    if dinit is not None:
        dinit[...] = lam  # the adjoint of the state entering the first chunk, ∂ℓ/∂S_{−1}


def _gla_vjp_exact(g, k, v, q, dy, yv, S_in, R):
    """The terms of :func:`_gla_vjp_core` for chunks that decay below ``e^{−_REC_FACTOR_LOG}``, from the
    exact segment sums (every exponent ≤ 0); ``g, k, v, …`` hold those chunks, (s, c, ·). Returns
    ``(dQ, dK, dV, dlog g)`` of the chunks, each (s, c, ·), dlog g in the exact form: the terms that cross
    the chunk's boundaries (:func:`_boundary_terms`) and the in-chunk pairs that straddle each step
    (per head :func:`_straddle` of the (c, c) terms, per channel those of the halvings and
    :func:`_straddle_factored` inside the blocks they leave).
    """
    from .linear_rnn import _by_halving_stop, _exp_segsum, _Halving

    sT = lambda a: np.swapaxes(a, -1, -2)  # noqa: E731
    c = g.shape[-2]
    e_end = np.exp(np.tri(c, c, -1).T @ g)  # e^{Σ_{r=t+1}^{end} log g_r} (sums of one sign as products)
    Ke = k * e_end
    e_cum = np.exp(np.tri(c) @ g)  # e^{Σ_{r=start}^{t} log g_r}
    dq = e_cum * (dy @ S_in)
    dk = e_end * (v @ R)
    dv = Ke @ sT(R)
    s, dg = g.shape[0], g.shape[-1]
    X = np.empty((s, 2 * c, dg))  # the terms that cross the chunk's boundaries (_boundary_terms)
    _row_products(q, dq, dg == 1, X[:, :c])
    _row_products(k, dk, dg == 1, X[:, c:])
    through = np.sum(R * S_in, axis=-2) * e_cum[..., -1, :]
    lg = _boundary_terms(X, through.sum(axis=-1, keepdims=True) if dg == 1 else through)
    if dg == 1:  # per head: one (c, c) decay matrix per chunk
        E = _exp_segsum(g[..., 0])
        M = yv * E  # e^{seg[t, s]} (dy_t·v_s)
        dq += M @ k
        dk += sT(M) @ q
        W = E * (q @ sT(k))  # e^{seg[t, s]} (q_t·k_s)
        dv += sT(W) @ dy
        lg += _straddle(yv * W)[..., None]  # the in-chunk pairs s < r ≤ t
        return dq, dk, dv, lg
    # per channel: the decays e^{seg_j[t, s]} = a_tj b_sj of the halvings (refimpl.linear_rnn._Halving), so
    # that each term is a matrix product per level: for t in a second half and s in the first,
    # dq_t += a_t ⊙ Σ_s M_ts (b_s ⊙ k_s), dk_s += b_s ⊙ Σ_t M_ts (a_t ⊙ q_t), dv_s += Σ_t W_ts dy_t with
    # M = tril(dY Vᵀ) and W_ts = (a_t ⊙ q_t)·(b_s ⊙ k_s); the diagonal (seg = 0) directly
    step = max(1, _REC_BLOCK // (c * max(c, dg)))  # chunks per block
    for b in _by_halving_stop(g, step):  # chunks that halve alike, batched (each halved as on its own)
        halves = _Halving(q[b], k[b], g[b])
        M, Y = halves.pad(halves.pad(yv[b]).swapaxes(-1, -2)).swapaxes(-1, -2), halves.pad(dy[b])
        DQ, DK, DV = (np.zeros(x.shape[:-2] + (halves.P, x.shape[-1])) for x in (q[b], k[b], dy[b]))
        I = np.zeros(DQ.shape)  # the in-chunk pairs s < r ≤ t of dlog g_r
        for lv in halves:
            Mq = lv.quarters(M)  # (·, nb, h, h): t in the second half, s in the first
            T2, T1 = Mq @ lv.kb, sT(Mq) @ lv.qa
            lv.second(DQ)[...] += lv.a * T2
            lv.first(DK)[...] += lv.b * T1
            lv.first(DV)[...] += sT(lv.qa @ sT(lv.kb)) @ lv.second(Y)
            I.reshape(lv.lead + (lv.nb, 2, lv.h, dg))[...] += _halves_straddle(lv.qa, T2, lv.kb, T1)
        rest = halves.rest()  # the diagonal blocks (M is lower triangular: so are its diagonal blocks)
        Mb = rest.blocks(M)
        rest.rows(DQ)[...] += rest.a * (Mb @ rest.kb)
        rest.rows(DK)[...] += rest.b * (sT(Mb) @ rest.qa)
        rest.rows(DV)[...] += sT(rest.masked(rest.qa @ sT(rest.kb))) @ rest.rows(Y)
        if rest.B > 1:  # the pairs inside a block (it decays by at most e^{−30}: factored decays)
            rest.rows(I)[...] += _straddle_factored(rest.qa, rest.kb, Mb)
        dq[b] += DQ[..., :c, :]
        dk[b] += DK[..., :c, :]
        dv[b] += DV[..., :c, :]
        lg[b] += I[..., :c, :]
    return dq, dk, dv, lg


def _check_final(dfinal_state, batch: tuple, shape: tuple, what: str):
    """The cotangent of the final state, (..., *shape) broadcast to ``batch + shape`` (the final state's
    shape: it may not add batch axes or entries), or None."""
    if dfinal_state is None:
        return None
    from .linear_rnn import _check_state

    d, new = _check_state(dfinal_state, "dfinal_state", batch, shape, what)
    if new != batch:
        raise ValueError(f"dfinal_state: expected the shape of the final state {what} = {batch + shape} "
                         f"(or one that broadcasts to it), got shape {np.shape(dfinal_state)}")
    return d


def _states(S0, dSL):
    """The ``states`` argument of :func:`_over_heads`: None when neither state is given (the plain call)."""
    return None if S0 is None and dSL is None else (S0, dSL)


def _gla_vjp_setup(q, k, v, log_g, dy, scale, chunk_size, initial_state=None, dfinal_state=None):
    from .attention import _scale
    from .linear_rnn import _gla_setup, _gla_state

    shapes = _given_shapes(q=q, k=k, v=v, log_g=log_g, initial_state=initial_state)
    qs, kb, vb, g, c = _gla_setup(q, k, v, log_g, scale, chunk_size, False)
    S0, qs, kb, vb, g = _gla_state(initial_state, qs, kb, vb, g)
    cs = _scale(scale, qs.shape[-1])
    dy = _check_dy(dy, qs.shape[:-1] + (vb.shape[-1],), "(..., L, Dv)",
                   "batch shape from q, k, v, log_g and initial_state, L from q, Dv from v")
    dSL = _check_final(dfinal_state, qs.shape[:-2], (vb.shape[-1], qs.shape[-1]), "(..., Dv, Dk)")
    return qs, kb, vb, g, dy, cs, c, shapes, S0, dSL


def _gla_vjp_result(dq, dk, dv, dg, cs, shapes, dinit=None) -> dict:
    if len(shapes["log_g"]) == len(shapes["k"]) - 1:  # per-head gates: drop the channel axis
        dg = dg[..., 0]
    out = {
        "dq": _reduce_to(dq * cs, shapes["q"]),  # o_t = S_t (c q_t): ∂ℓ/∂q = c ∂ℓ/∂(c q)
        "dk": _reduce_to(dk, shapes["k"]),
        "dv": _reduce_to(dv, shapes["v"]),
        "dlog_g": _reduce_to(dg, shapes["log_g"]),
    }
    if shapes["initial_state"] is not None:
        out["dinitial_state"] = _reduce_to(dinit, shapes["initial_state"])
    return out


def _gla_vjp_loop_core(q, k, v, logg, dy, init=None, final=None):
    """The forward recurrence storing every state, then the adjoint recurrence backwards in time; from the
    initial state ``init`` (*b, Dv, Dk) or 0, with the final state's cotangent ``final`` or 0."""
    batch = q.shape[:-2]
    L, dk, dv = q.shape[-2], q.shape[-1], v.shape[-1]
    dq, dkk, dvv, dg = np.zeros(q.shape), np.zeros(k.shape), np.zeros(v.shape), np.zeros(logg.shape)
    dinit = np.zeros(batch + (dv, dk))
    for b in np.ndindex(*batch):
        g = np.exp(logg[b])  # (L, Dk) or (L, 1)
        S = [np.zeros((dv, dk)) if init is None else init[b]]  # S[t + 1] = S_t, S[0] = S_{−1}
        for t in range(L):
            S.append(S[-1] * g[t][None, :] + np.outer(v[b][t], k[b][t]))  # S_t = S_{t−1} Diag(g_t) + v_t k_tᵀ
        lam = np.zeros((dv, dk))  # Λ_L = 0
        for t in range(L - 1, -1, -1):
            g_next = g[t + 1] if t + 1 < L else np.zeros(g.shape[-1])
            lam = np.outer(dy[b][t], q[b][t]) + lam * g_next[None, :]  # Λ_t = dy_t q_tᵀ + Λ_{t+1} Diag(g_{t+1})
            if t == L - 1 and final is not None:
                lam = lam + final[b]  # the final state S_{L−1} is an output too: + its cotangent
            dq[b][t] = S[t + 1].T @ dy[b][t]  # ∂o_t/∂q_t = S_t
            dkk[b][t] = lam.T @ v[b][t]  # ∂S_t/∂k_t: Λ_tᵀ v_t
            dvv[b][t] = lam @ k[b][t]  # Λ_t k_t
            per_channel = np.sum(lam * S[t], axis=0) * g[t]  # g_tj Σ_i Λ_t[i, j] S_{t−1}[i, j]
            dg[b][t] = per_channel if g.shape[-1] > 1 else per_channel.sum()
        if L:
            dinit[b] = lam * g[0][None, :]  # ∂ℓ/∂S_{−1} = Λ_0 Diag(g_0)
        elif final is not None:
            dinit[b] = final[b]  # no step: the final state is the initial one
    return dq, dkk, dvv, dg, dinit


@guard_overflow()
def gated_linear_attention_vjp(q, k, v, log_g, dy, *, scale=None, chunk_size=64, initial_state=None,
                               dfinal_state=None) -> dict:
    r"""Backward pass of :func:`refimpl.linear_rnn.gated_linear_attention`: ``dq, dk, dv, dlog_g``.

    The vector–Jacobian product of Eqs. (16.2)–(16.5) of the book, by the adjoint filter of
    Eqs. (16.17)–(16.19) run chunk by chunk (Yang et al. 2024, GLA, §4: the chunkwise form; its
    log-gate gradient is a reverse cumulative sum).

    Parameters
    ----------
    q, k, v, log_g, scale, chunk_size
        As in :func:`refimpl.linear_rnn.gated_linear_attention`: q, k (..., L, Dk), v (..., L, Dv),
        log-gates ≤ 0 per key channel (..., L, Dk) or per head (..., L). ``scale`` is a constant,
        not differentiated; the result does not depend on ``chunk_size``.
    dy : array_like, shape (..., L, Dv)
        The cotangent ∂ℓ/∂o, shape of the output (batch axes of q, k, v, log_g broadcast).
    initial_state : array_like, shape (..., Dv, Dk), optional
        The initial state S_{−1} of the forward call (default 0; fla's ``initial_state``, transposed).
    dfinal_state : array_like, shape (..., Dv, Dk), optional
        The cotangent ∂ℓ/∂S_{L−1} of the final state (the last chunk state; fla's ``dht``,
        transposed), with batch axes that broadcast to the final state's; the adjoint starts
        from it, Eq. (16.22) of the book, and the log-gates' gradient gains the end term
        ``Σ_i dS_{L−1}[i, j] S_{L−1}[i, j]`` of Eq. (16.23). Default 0.

    Returns
    -------
    grads : dict
        ``{"dq", "dk", "dv", "dlog_g"}``, each of the shape of its input (summed over the axes
        along which it was broadcast), and ``"dinitial_state"`` = ∂ℓ/∂S_{−1} (fla's ``dh0``,
        transposed; the shape of ``initial_state``) exactly when ``initial_state`` is given.

    Notes
    -----
    Forward ``S_t = S_{t−1} Diag(g_t) + v_t k_tᵀ``, ``o_t = S_t q̃_t`` (q̃ = scale · q) from
    ``S_{−1}``. The loss depends on ``S_t`` through ``o_t`` and ``S_{t+1}`` (and on ``S_{L−1}``
    directly, with the cotangent ``dS_{L−1}`` = ``dfinal_state``), so the adjoint ``Λ_t = ∂ℓ/∂S_t`` is

    .. math::  Λ_t = dy_t\, \tilde q_t^\top + Λ_{t+1}\, \mathrm{Diag}(g_{t+1}),\qquad
               Λ_{L−1} = dy_{L−1}\, \tilde q_{L−1}^\top + dS_{L−1},

    the same gated recurrence with the roles of (v, k) taken by (dy, q̃), run backwards in time
    with the transposed transition (a diagonal one here). Then ``dq̃_t = S_tᵀ dy_t``,
    ``dk_t = Λ_tᵀ v_t``, ``dv_t = Λ_t k_t``, ``dlog g_{t,j} = g_{t,j} Σ_i Λ_t[i,j] S_{t−1}[i,j]`` and
    ``dS_{−1} = Λ_0 Diag(g_0)``: the initial state makes ``dlog g_0`` nonzero, and the final state's
    cotangent reaches every dk, dv, dlog g (not dq).
    Summed over the pairs (s < r ≤ t) whose decay contains ``g_r``, the last one equals
    ``Σ_{t≥r} (q̃_t ⊙ dq̃_t − k_t ⊙ dk_t)``: a reverse cumulative sum (Yang et al. 2024).

    Vectorized: the chunked form of both recurrences — the states S pass forward and the adjoints
    Λ backward across chunk boundaries (L/c short steps), the intra-chunk terms are masked
    (c, c) matrix products (per head), or factored products with an exact fallback in chunks that
    decay below e^{−30} (per channel: the halving of the forward pass, each quarter's terms one
    matrix product). The log-gate gradient is accurate entry by entry (to a few ulps of the sum of
    its terms' magnitudes, however small the entry: a gate e^{−50} gives a gradient ~1e−22 to the
    last digits): the reverse cumulative sum inside each chunk plus the boundary term
    ``colsum(Λ ⊙ S)`` at the chunk's end where that costs no digits (chunks after the first, with
    every gate ≥ e^{−1} and a decay ≥ e^{−30}); elsewhere only the terms that
    straddle each step, every exponent a sum of log-gates ≤ 0 (the reverse cumulative sum subtracts
    the pairs that do not straddle r, which can be e^{50} times larger). The initial state is the
    state entering the first chunk (whose log-gate gradient always takes the exact form, so a
    gradient through an initial state decayed by e^{−40} keeps its digits), the final state's
    cotangent the adjoint arriving at the last chunk's end, and ``dS_{−1}`` the adjoint leaving
    the first chunk. Twin: :func:`gated_linear_attention_vjp_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v, dy = rng.normal(size=(4, 7, 3))
    >>> log_g = np.log(rng.uniform(0.5, 1.0, size=(7, 3)))  # per key channel
    >>> g = gated_linear_attention_vjp(q, k, v, log_g, dy, chunk_size=4)
    >>> sorted(g), g["dlog_g"].shape
    (['dk', 'dlog_g', 'dq', 'dv'], (7, 3))
    >>> g["dlog_g"][0].tolist()  # S_{-1} = 0: the first gate multiplies nothing
    [0.0, 0.0, 0.0]
    >>> gl = gated_linear_attention_vjp_loop(q, k, v, log_g, dy, chunk_size=4)
    >>> all(np.linalg.norm(g[key] - gl[key]) <= 1e-12 * np.linalg.norm(gl[key]) for key in g)
    True
    >>> small = np.full((7, 3), -50.0)  # gates e^{-50}: gradients ~1e-22, each to a few ulps
    >>> d = gated_linear_attention_vjp(q, k, v, small, dy, chunk_size=4)["dlog_g"]
    >>> dl = gated_linear_attention_vjp_loop(q, k, v, small, dy, chunk_size=4)["dlog_g"]
    >>> float(abs(dl[1:]).max()) < 1e-20, bool(np.all(abs(d - dl) <= 1e-13 * abs(dl)))
    (True, True)
    >>> S0, dS = rng.normal(size=(2, 3, 3))  # an initial state and the final state's cotangent (Dv, Dk)
    >>> g = gated_linear_attention_vjp(q, k, v, log_g, dy, initial_state=S0, dfinal_state=dS)
    >>> g["dinitial_state"].shape, float(abs(g["dlog_g"][0]).min()) > 0  # S_{-1} decays through g_0
    ((3, 3), True)
    """
    qs, kb, vb, g, dy, cs, c, shapes, S0, dSL = _gla_vjp_setup(q, k, v, log_g, dy, scale, chunk_size, initial_state,
                                                                dfinal_state)
    grads = _over_heads(_gla_vjp_core, qs, kb, vb, g, dy, c=c, states=_states(S0, dSL))
    return _gla_vjp_result(*grads[:4], cs, shapes, *grads[4:])


@guard_overflow()
def gated_linear_attention_vjp_loop(q, k, v, log_g, dy, *, scale=None, chunk_size=64, initial_state=None,
                                    dfinal_state=None) -> dict:
    """Loop twin of :func:`gated_linear_attention_vjp`: the recurrence (16.2) forwards, its adjoint (16.17) backwards.

    Stores every state ``S_t`` from ``S_{−1}``, then runs ``Λ_t = dy_t q̃_tᵀ + Λ_{t+1} Diag(g_{t+1})``
    from t = L−1 (where the final state's cotangent is added) down to 0 and reads every gradient off
    ``S_t``, ``S_{t−1}`` and ``Λ_t`` (the log-gate gradient in its state form
    ``g_t ⊙ colsum(Λ_t ⊙ S_{t−1})``; ``dS_{−1} = Λ_0 Diag(g_0)``). ``chunk_size`` is validated only.

    Examples
    --------
    >>> q, k = np.ones((2, 1)), np.ones((2, 1))
    >>> v, dy = np.array([[1.0], [0.0]]), np.array([[0.0], [1.0]])  # ℓ = o_1 = g_1 v_0 + v_1
    >>> g = gated_linear_attention_vjp_loop(q, k, v, np.log([[1.0], [0.5]]), dy, scale=1.0)
    >>> g["dv"].ravel().tolist(), g["dlog_g"].ravel().tolist()  # ∂ℓ/∂v_0 = g_1; ∂ℓ/∂log g_1 = g_1 v_0
    ([0.5, 1.0], [0.0, 0.5])
    """
    qs, kb, vb, g, dy, cs, c, shapes, S0, dSL = _gla_vjp_setup(q, k, v, log_g, dy, scale, chunk_size, initial_state,
                                                                dfinal_state)
    dq, dk, dv, dg, dinit = _gla_vjp_loop_core(qs, kb, vb, g, dy, S0, dSL)
    return _gla_vjp_result(dq, dk, dv, dg, cs, shapes, dinit)


# ---- retention ------------------------------------------------------------------------------


def _retention_vjp_setup(q, k, v, gamma):
    from .linear_rnn import _retention_setup

    q, k, v, lg = _retention_setup(q, k, v, gamma)
    log_g = np.broadcast_to(lg[:, None], k.shape[:-3] + (lg.shape[0], k.shape[-2]))  # log γ_h at every step
    return q, k, v, log_g, lg


@guard_overflow()
def retention_vjp(q, k, v, gamma, dy, *, scale=None, chunk_size=64, initial_state=None, dfinal_state=None) -> dict:
    r"""Backward pass of :func:`refimpl.linear_rnn.retention`: ``dq, dk, dv`` (the decays γ are fixed).

    The vector–Jacobian product of Eq. (16.6) of the book (Sun et al. 2023, RetNet): retention is
    gated linear attention with the constant per-head log-gate ``log γ_h``, so its adjoint is
    ``Λ_n = dy_n q̃_nᵀ + γ_h Λ_{n+1}`` — the same decay, run backwards in time (Eq. (16.17)).

    Parameters
    ----------
    q, k, v, gamma, scale, chunk_size
        As in :func:`refimpl.linear_rnn.retention`: q, k (..., H, L, Dk), v (..., H, L, Dv),
        gamma (H,) in (0, 1] (a constant of the layer, not differentiated).
    dy : array_like, shape (..., H, L, Dv)
        The cotangent of the output.
    initial_state : array_like, shape (..., H, Dv, Dk), optional
        The initial state S_{−1} of the forward call (default 0).
    dfinal_state : array_like, shape (..., H, Dv, Dk), optional
        The cotangent of the final state S_{L−1}, where the adjoint starts (Eq. (16.22) of the
        book; default 0).

    Returns
    -------
    grads : dict
        ``{"dq", "dk", "dv"}``, shapes of q, k, v, and ``"dinitial_state"`` (the shape of
        ``initial_state``) exactly when ``initial_state`` is given.

    Notes
    -----
    Computed by :func:`gated_linear_attention_vjp`'s chunked algorithm with per-head gates; with
    the states, ``Λ_{L−1} = dy_{L−1} q̃_{L−1}ᵀ + dS_{L−1}`` and ``dS_{−1} = γ_h Λ_0``.
    Twin: :func:`retention_vjp_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v, dy = rng.normal(size=(4, 2, 6, 3))  # H = 2 heads, L = 6
    >>> gamma = np.array([0.9, 0.5])
    >>> g = retention_vjp(q, k, v, gamma, dy, chunk_size=4)
    >>> gl = retention_vjp_loop(q, k, v, gamma, dy)
    >>> sorted(g), all(np.allclose(g[key], gl[key], rtol=1e-12, atol=0) for key in g)
    (['dk', 'dq', 'dv'], True)
    """
    from .linear_rnn import _retention_state

    q, k, v, log_g, lg = _retention_vjp_setup(q, k, v, gamma)
    _retention_state(initial_state, q, k, v, lg)
    g = gated_linear_attention_vjp(q, k, v, log_g, dy, scale=scale, chunk_size=chunk_size, initial_state=initial_state,
                                   dfinal_state=dfinal_state)
    return {key: g[key] for key in ("dq", "dk", "dv", "dinitial_state") if key in g}


@guard_overflow()
def retention_vjp_loop(q, k, v, gamma, dy, *, scale=None, chunk_size=64, initial_state=None, dfinal_state=None) -> dict:
    """Loop twin of :func:`retention_vjp`: the recurrence forwards, its adjoint backwards.

    ``S_n = γ S_{n−1} + v_n k_nᵀ`` from ``S_{−1}`` storing every state, then
    ``Λ_n = dy_n q̃_nᵀ + γ Λ_{n+1}`` from n = L−1 (plus the final state's cotangent there) down to 0,
    ``dS_{−1} = γ Λ_0``; ``chunk_size`` is validated only.

    Examples
    --------
    >>> q = k = v = np.ones((1, 3, 1))  # one head, L = 3
    >>> dy = np.array([[[0.0], [0.0], [1.0]]])  # ℓ = o_2 = Σ_n γ^{2−n} v_n
    >>> retention_vjp_loop(q, k, v, np.array([0.5]), dy, scale=1.0)["dv"].ravel().tolist()
    [0.25, 0.5, 1.0]
    """
    from .attention import _scale
    from .linear_rnn import _batch, _check_chunk, _retention_state

    q, k, v, _, lg = _retention_vjp_setup(q, k, v, gamma)
    _check_chunk(chunk_size)
    shapes = {"q": q.shape, "k": k.shape, "v": v.shape}
    batch = _batch([("q", q.shape[:-2]), ("k", k.shape[:-2]), ("v", v.shape[:-2])])
    L, dk, dv = q.shape[-2], q.shape[-1], v.shape[-1]
    S0 = None
    if initial_state is not None:
        S0, batch = _retention_state(initial_state, q, k, v, lg)
    cs = _scale(scale, q.shape[-1])
    dy = _check_dy(dy, batch + (q.shape[-2], v.shape[-1]), "(..., H, L, Dv)",
                   "batch and head axes from q, k, v and initial_state, L from q, Dv from v")
    dSL = _check_final(dfinal_state, batch, (dv, dk), "(..., H, Dv, Dk)")
    qs, kb, vb = (np.broadcast_to(a, batch + a.shape[-2:]) for a in (q * cs, k, v))
    dq, dkk, dvv = np.zeros(qs.shape), np.zeros(kb.shape), np.zeros(vb.shape)
    dinit = np.zeros(batch + (dv, dk))
    for b in np.ndindex(*batch):
        gam = math.exp(lg[b[-1]] if lg.shape[0] > 1 else lg[0])  # γ of this head (the head axis is the last batch axis)
        S = [np.zeros((dv, dk)) if S0 is None else S0[b]]  # S[0] = S_{−1}
        for n in range(L):
            S.append(gam * S[-1] + np.outer(vb[b][n], kb[b][n]))  # S_n = γ S_{n−1} + v_n k_nᵀ
        lam = np.zeros((dv, dk))  # Λ_L = 0
        for n in range(L - 1, -1, -1):
            lam = np.outer(dy[b][n], qs[b][n]) + gam * lam  # Λ_n = dy_n q̃_nᵀ + γ Λ_{n+1}
            if n == L - 1 and dSL is not None:
                lam = lam + dSL[b]  # + the cotangent of the final state S_{L−1}
            dq[b][n] = cs * (S[n + 1].T @ dy[b][n])
            dkk[b][n] = lam.T @ vb[b][n]
            dvv[b][n] = lam @ kb[b][n]
        dinit[b] = gam * lam if L else (0.0 if dSL is None else dSL[b])  # dS_{−1} = γ Λ_0
    out = {"dq": _reduce_to(dq, shapes["q"]), "dk": _reduce_to(dkk, shapes["k"]), "dv": _reduce_to(dvv, shapes["v"])}
    if S0 is not None:
        out["dinitial_state"] = _reduce_to(dinit, np.shape(initial_state))
    return out


# ---- SSD (Mamba-2) ----------------------------------------------------------------------------


def _ssd_vjp_setup(x, dt, A, B, C, D, dy, chunk_size, initial_state=None, dfinal_state=None):
    from .linear_rnn import _check_ssd, _ssd_state

    shapes = _given_shapes(x=x, dt=dt, B=B, C=C, initial_state=initial_state)
    x, dt, A, Bh, Ch, Dv, c = _check_ssd(x, dt, A, B, C, D, chunk_size, False)
    h0, x, dt, Bh, Ch = _ssd_state(initial_state, x, dt, Bh, Ch)
    dy = _check_dy(dy, x.shape, "(..., H, L, P)", "the shape of x, which dt, B, C and initial_state broadcast to")
    dhL = _check_final(dfinal_state, x.shape[:-2], (x.shape[-1], Bh.shape[-1]), "(..., H, P, N)")
    return x, dt, A, Bh, Ch, Dv, dy, c, shapes, h0, dhL


def _ssd_vjp_result(x, dt, A, Dv, dy, dx, ddt, dBh, dCh, rho, shapes, dinit=None) -> dict:
    """Finish SSD's gradients: the decay path (ρ = ∂ℓ/∂(Δ A)), the skip D, the sums over shared groups.

    ``dx``, ``ddt`` (the input path Δ_t x_t B_tᵀ only), ``dBh``, ``dCh`` are per head (..., H, L, ·)."""
    H = x.shape[-3]
    G = shapes["B"][-3]

    def group_sum(g):  # head h reads group h // (H/G): its gradient is summed over the heads of a group
        return g.reshape(g.shape[:-3] + (G, H // G) + g.shape[-2:]).sum(axis=-3)

    ddt += rho * A[:, None]  # log g_t = Δ_t A: ∂/∂Δ_t = A (ddt, dx: the caller's new arrays, updated in place)
    dA = np.sum(rho * dt, axis=tuple(range(dt.ndim - 2)) + (-1,))  # ∂/∂A = Δ_t
    # dD at D = 0 when D is None: dot products of rows (P terms each, no product array), then NumPy's
    # pairwise sum over the L steps (one einsum over L·P terms lost digits: 2e-14 against 3e-16, measured)
    dD = np.einsum("...hlp,...hlp->...hl", dy, x).sum(axis=-1).reshape(-1, H).sum(axis=0)
    if Dv is not None:
        dx += Dv[:, None, None] * dy
    out = {
        "dx": _reduce_to(dx, shapes["x"]),
        "ddt": _reduce_to(ddt, shapes["dt"]),
        "dA": dA,
        "dB": _reduce_to(group_sum(dBh), shapes["B"]),
        "dC": _reduce_to(group_sum(dCh), shapes["C"]),
        "dD": dD,
    }
    if shapes["initial_state"] is not None:
        out["dinitial_state"] = _reduce_to(dinit, shapes["initial_state"])
    return out


@guard_overflow()
def ssd_vjp(x, dt, A, B, C, D, dy, *, chunk_size=64, initial_state=None, dfinal_state=None) -> dict:
    r"""Backward pass of :func:`refimpl.linear_rnn.ssd` (Mamba-2): the gradients of all six inputs.

    The vector–Jacobian product of Eqs. (16.7)–(16.8) of the book (Dao & Gu 2024, Mamba-2, §6:
    the backward pass runs the same chunked algorithm on the transposed semiseparable matrix): the
    adjoint filter of Eq. (16.17) with a scalar decay per head.

    Parameters
    ----------
    x, dt, A, B, C, D, chunk_size
        As in :func:`refimpl.linear_rnn.ssd`: x (..., H, L, P), dt (..., H, L) ≥ 0, A (H,) ≤ 0,
        B, C (..., G, L, N) with H divisible by G, D (H,) or None (no skip; ``dD`` is then the
        gradient at D = 0).
    dy : array_like, shape (..., H, L, P)
        The cotangent ∂ℓ/∂y, shape of x (batch axes of x, dt, B, C broadcast).
    initial_state : array_like, shape (..., H, P, N), optional
        The initial state h_{−1} of the forward call (default 0; Mamba-2's ``initial_states``).
    dfinal_state : array_like, shape (..., H, P, N), optional
        The cotangent ∂ℓ/∂h_{L−1} of the final state (the last chunk state; the gradient flowing
        into Mamba-2's ``final_states``), with batch axes that broadcast to its; the adjoint
        starts from it, Eq. (16.22) of the book. Default 0.

    Returns
    -------
    grads : dict
        ``{"dx", "ddt", "dA", "dB", "dC", "dD"}``, each of the shape of its input: ``dB`` and
        ``dC`` are summed over the H/G heads that share a group and over broadcast batch axes,
        ``dA`` and ``dD`` over the batch and the sequence; and ``"dinitial_state"`` = ∂ℓ/∂h_{−1}
        (the shape of ``initial_state``) exactly when ``initial_state`` is given.

    Notes
    -----
    Per head, ``h_t = e^{Δ_t A} h_{t−1} + Δ_t x_t B_tᵀ``, ``y_t = h_t C_t + D x_t`` (16.7) from
    ``h_{−1}``. The adjoint ``λ_t = ∂ℓ/∂h_t`` (P × N) obeys

    .. math::  λ_t = dy_t\, C_t^\top + e^{Δ_{t+1} A} λ_{t+1},\qquad
               λ_{L−1} = dy_{L−1}\, C_{L−1}^\top + dh_{L−1},

    (``dh_{L−1}`` = ``dfinal_state``) the scalar-decay recurrence run backwards in time — the
    transpose of the lower-triangular semiseparable matrix (16.8) is upper triangular with the same
    decays. Then

    * ``dC_t = h_tᵀ dy_t``, ``dx_t = Δ_t λ_t B_t + D dy_t``, ``dB_t = Δ_t λ_tᵀ x_t``,
      ``dD = Σ_t dy_t · x_t``;
    * through the decay ``e^{Δ_t A}`` (cotangent ``ρ_t = e^{Δ_t A} ⟨λ_t, h_{t−1}⟩``, nonzero at
      t = 0 with an initial state): ``dΔ_t = A ρ_t + x_tᵀ λ_t B_t``, ``dA = Σ_t Δ_t ρ_t``;
    * ``dh_{−1} = e^{Δ_0 A} λ_0``.

    SSD is gated linear attention with q = C, k = Δ B, v = x and the per-head log-gate Δ A
    (scale 1), so the chunked algorithm is :func:`gated_linear_attention_vjp`'s, followed by the
    chain rule through k = Δ B and log g = Δ A (``ρ_t`` is the log-gate gradient, accurate entry by
    entry however strongly a head decays: e.g. ``dA`` ~ 1e−14 at Δ = 40, A = −1 to a few ulps, where a
    difference of the chunk's terms gave an error of 5e−11). Twin: :func:`ssd_vjp_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> H, G, L, P, N = 2, 1, 7, 3, 4  # two heads share one group of B, C
    >>> x, dy = rng.normal(size=(2, H, L, P))
    >>> dt = rng.uniform(0.1, 1.0, size=(H, L))
    >>> B, C = rng.normal(size=(2, G, L, N))
    >>> g = ssd_vjp(x, dt, np.array([-1.0, -0.5]), B, C, np.ones(H), dy, chunk_size=3)
    >>> sorted(g), g["dB"].shape, g["dA"].shape
    (['dA', 'dB', 'dC', 'dD', 'ddt', 'dx'], (1, 7, 4), (2,))
    >>> gl = ssd_vjp_loop(x, dt, np.array([-1.0, -0.5]), B, C, np.ones(H), dy, chunk_size=3)
    >>> all(np.allclose(g[key], gl[key], rtol=1e-12, atol=0) for key in g)
    True
    """
    return _ssd_vjp(x, dt, A, B, C, D, dy, chunk_size, initial_state, dfinal_state)


def _chunk_rss(terms, chunk: int) -> np.ndarray:
    """``sqrt(Σ_k S_k²)`` per head of |terms| (batch, H, L), ``S_k`` the sum of a chunk of ``chunk`` steps of one
    batch entry: the terms of a chunk share the rounding of its cumulative log-decay and may add up, those of
    different chunks (and batch entries) round independently (:func:`_decay_sums`)."""
    b, h, L = terms.shape
    c = max(1, min(int(chunk), L)) if L else 1
    pad = -L % c
    if pad:
        terms = np.concatenate([terms, np.zeros((b, h, pad))], axis=-1)
    S = terms.reshape(b, h, -1, c).sum(axis=-1)  # (b, h, chunks)
    return np.sqrt(np.sum(S * S, axis=(0, 2)))


def _ssd_vjp(x, dt, A, B, C, D, dy, chunk_size, initial_state, dfinal_state, sums=None) -> dict:
    """:func:`ssd_vjp`; with a dict ``sums``, also ``sums["dA"]``, per head, the magnitude of the terms Δ_t ρ_t
    that ``dA`` sums over the batch and the sequence (:func:`_chunk_rss`, :func:`_decay_sums`)."""
    x, dt, A, Bh, Ch, Dv, dy, c, shapes, h0, dhL = _ssd_vjp_setup(x, dt, A, B, C, D, dy, chunk_size, initial_state,
                                                                   dfinal_state)
    logg = (dt * A[:, None])[..., None]  # log g_t = Δ_t A_h per head
    # q = C, k = Δ B, v = x; the states (P, N) = (Dv, Dk)
    dq, dk, dv, dg, *dinit = _over_heads(_gla_vjp_core, Ch, Bh * dt[..., None], x, logg, dy, c=c, states=_states(h0, dhL))
    # k = Δ B: dΔ = dk · B (one pass, no product array), dB = Δ dk (in place: dk is ours)
    ddt = np.einsum("...n,...n->...", dk, Bh)
    dk *= dt[..., None]
    if sums is not None:
        sums["dA"] = _chunk_rss(np.abs(dg[..., 0] * dt).reshape(-1, A.shape[0], dt.shape[-1]), c)
    return _ssd_vjp_result(x, dt, A, Dv, dy, dv, ddt, dk, dq, dg[..., 0], shapes, *dinit)


@guard_overflow()
def ssd_vjp_loop(x, dt, A, B, C, D, dy, *, chunk_size=64, initial_state=None, dfinal_state=None) -> dict:
    """Loop twin of :func:`ssd_vjp`: the recurrence (16.7) forwards, its adjoint backwards, one head at a time.

    ``h_t = e^{Δ_t A} h_{t−1} + Δ_t x_t B_tᵀ`` from ``h_{−1}`` storing every state, then
    ``λ_t = dy_t C_tᵀ + e^{Δ_{t+1} A} λ_{t+1}`` from t = L−1 (plus the final state's cotangent there)
    down to 0, each gradient read off ``λ_t``, ``h_t`` and ``h_{t−1}``; ``dh_{−1} = e^{Δ_0 A} λ_0``.
    ``chunk_size`` is validated only.

    Examples
    --------
    >>> x, dt = np.ones((1, 3, 1)), np.ones((1, 3))  # one head, L = 3, P = N = 1
    >>> B = C = np.ones((1, 3, 1))
    >>> dy = np.array([[[0.0], [0.0], [1.0]]])  # ℓ = y_2 = Σ_t e^{A (2 − t)} x_t
    >>> g = ssd_vjp_loop(x, dt, np.array([np.log(0.5)]), B, C, None, dy)
    >>> g["dx"].ravel().tolist()
    [0.25, 0.5, 1.0]
    """
    x, dt, A, Bh, Ch, Dv, dy, c, shapes, h0, dhL = _ssd_vjp_setup(x, dt, A, B, C, D, dy, chunk_size, initial_state,
                                                                   dfinal_state)
    batch = x.shape[:-3]
    H, L, P = x.shape[-3:]
    N = Bh.shape[-1]
    dx, ddt = np.zeros(x.shape), np.zeros(dt.shape)
    dBh, dCh = np.zeros(Bh.shape), np.zeros(Ch.shape)
    rho = np.zeros(dt.shape)  # ∂ℓ/∂(Δ_t A): the log-gate gradient
    dinit = np.zeros(batch + (H, P, N))
    for b in np.ndindex(*batch):
        for hd in range(H):
            a = float(A[hd])
            h = [np.zeros((P, N)) if h0 is None else h0[b][hd]]  # h[t + 1] = h_t, h[0] = h_{−1}
            for t in range(L):
                d = float(dt[b][hd, t])
                h.append(math.exp(d * a) * h[-1] + d * np.outer(x[b][hd, t], Bh[b][hd, t]))  # (16.7)
            lam = np.zeros((P, N))  # λ_L = 0
            for t in range(L - 1, -1, -1):
                d = float(dt[b][hd, t])
                nxt = math.exp(float(dt[b][hd, t + 1]) * a) if t + 1 < L else 0.0
                lam = np.outer(dy[b][hd, t], Ch[b][hd, t]) + nxt * lam  # λ_t = dy_t C_tᵀ + e^{Δ_{t+1}A} λ_{t+1}
                if t == L - 1 and dhL is not None:
                    lam = lam + dhL[b][hd]  # + the cotangent of the final state h_{L−1}
                dCh[b][hd, t] = h[t + 1].T @ dy[b][hd, t]  # ∂y_t/∂C_t = h_t
                dx[b][hd, t] = d * (lam @ Bh[b][hd, t])  # ∂h_t/∂x_t: Δ_t B_t
                dBh[b][hd, t] = d * (lam.T @ x[b][hd, t])  # Δ_t λ_tᵀ x_t
                rho[b][hd, t] = math.exp(d * a) * float(np.sum(lam * h[t]))  # e^{Δ_t A} ⟨λ_t, h_{t−1}⟩
                ddt[b][hd, t] = float(x[b][hd, t] @ lam @ Bh[b][hd, t])  # ∂(Δ_t x_t B_tᵀ)/∂Δ_t
            if L:
                dinit[b][hd] = math.exp(float(dt[b][hd, 0]) * a) * lam  # dh_{−1} = e^{Δ_0 A} λ_0
            elif dhL is not None:
                dinit[b][hd] = dhL[b][hd]  # no step: the final state is the initial one
    return _ssd_vjp_result(x, dt, A, Dv, dy, dx, ddt, dBh, dCh, rho, shapes, dinit)


# ---- the delta rule (DeltaNet, Gated DeltaNet) -----------------------------------------------


def _delta_vjp_setup(q, k, v, beta, log_g, dy, scale, chunk_size, initial_state=None, dfinal_state=None):
    from .attention import _scale
    from .linear_rnn import _delta_setup, _delta_state

    shapes = _given_shapes(q=q, k=k, v=v, beta=beta, log_g=log_g, initial_state=initial_state)
    qs, kb, vb, b, g, c = _delta_setup(q, k, v, beta, log_g, scale, chunk_size, False)
    S0, qs, kb, vb, b, g = _delta_state(initial_state, qs, kb, vb, b, g)
    cs = _scale(scale, qs.shape[-1])
    dy = _check_dy(dy, qs.shape[:-1] + (vb.shape[-1],), "(..., L, Dv)",
                   "batch shape from q, k, v, beta, log_g and initial_state, L from q, Dv from v")
    dSL = _check_final(dfinal_state, qs.shape[:-2], (vb.shape[-1], qs.shape[-1]), "(..., Dv, Dk)")
    return qs, kb, vb, b, g, dy, cs, c, shapes, S0, dSL


def _delta_vjp_result(dq, dk, dv, db, dg, cs, shapes, dinit=None) -> dict:
    out = {
        "dq": _reduce_to(dq * cs, shapes["q"]),
        "dk": _reduce_to(dk, shapes["k"]),
        "dv": _reduce_to(dv, shapes["v"]),
        "dbeta": _reduce_to(db, shapes["beta"]),
    }
    if shapes["log_g"] is not None:
        out["dlog_g"] = _reduce_to(dg, shapes["log_g"])
    if shapes["initial_state"] is not None:
        out["dinitial_state"] = _reduce_to(dinit, shapes["initial_state"])
    return out


def _delta_vjp_core(q, k, v, beta, logg, dy, c: int, out, init=None, final=None, dinit=None,
                    gated: bool = True) -> None:
    """Chunked backward pass of the delta rule through the UT transform (16.11)-(16.12): Eqs. (16.20)-(16.21).

    ``q, k`` (nb, L, Dk), ``v, dy`` (nb, L, Dv), ``beta, logg`` (nb, L); writes ``dq, dk, dv, dbeta,
    dlogg`` into ``out`` (arrays of those shapes). ``init``, ``final``, ``dinit`` (nb, Dv, Dk), optional:
    the initial state (the state entering the first chunk), the cotangent of the final state (the
    adjoint leaving the last chunk) and the array that receives ∂ℓ/∂S_{−1}, as in :func:`_gla_vjp_core`.

    Per chunk the forward map is (with S_0 the entering state, γ, Γ the in-chunk decays)
    ``M = I + tril(diag(β)(Γ ⊙ K Kᵀ), −1)``, ``[W, Ũ] = M⁻¹ [diag(βγ) K, diag(β) V]``,
    ``U = Ũ − W S_0ᵀ``, ``O = diag(γ) Q S_0ᵀ + P U`` with ``P = tril(Γ ⊙ Q Kᵀ)``, and
    ``S_end = γ_end S_0 + Uᵀ diag(Γ_end) K``. Forwards, S_end = S_0 T_n + Ũᵀ K_g with the chunk's
    transition ``T_n = γ_end I − Wᵀ K_g``; backwards, the adjoint of the states obeys
    ``dS_end[n−1] = dS_end[n] T_nᵀ + dOᵀ (diag(γ) Q − P W)`` — the same chunk recurrence, reversed
    and transposed. All other gradients are products of (c, c) and (c, d) matrices; the triangular
    solve's adjoint is ``d[W, Ũ]ᵀ ↦ M⁻ᵀ``, ``dM = −M⁻ᵀ d[W, Ũ] [W, Ũ]ᵀ``.

    Two sweeps over groups of chunks whose temporaries stay in cache (as the forward pass runs): forwards,
    the UT transform of each chunk (M⁻¹ and [W, Ũ], kept) and the state entering it; backwards, the
    adjoint and every gradient of the group. ``gated=False`` (DeltaNet: ``logg`` is 0): every decay is 1,
    so their exponentials, the scalings by them and the log-gate gradient (written as 0) are skipped —
    the same arithmetic otherwise, as :func:`refimpl.linear_rnn._delta_core` does forwards (bitwise the
    gated core's result with log g = 0: the skipped factors are exact ones; H = 4, L = 8192, d = 64,
    interleaved: 0.85× its time).
    """
    from .linear_rnn import _chunks, _suffix, _unit_lower_identity, _unit_lower_inverse

    nb, L, dk = q.shape
    dv = v.shape[-1]
    c = max(1, min(c, L))  # the result does not depend on c: no chunk longer than the sequence
    qc, kc, vc, yc = (_chunks(a, c, -2) for a in (q, k, v, dy))  # (nb, nc, c, ·), padding 0
    bc, gc = (_chunks(a[..., None], c, -2)[..., 0] for a in (beta, logg))  # (nb, nc, c), β = 0 on padding
    nc = qc.shape[1]
    groups = _chunk_groups(nb, nc, c, max(dk, dv))
    sT = lambda a: np.swapaxes(a, -1, -2)  # noqa: E731
    strict, lower = np.tri(c, c, -1, dtype=bool), np.tri(c, c, 0, dtype=bool)
    work = {}  # the workspace of _unit_lower_inverse per group length

    def decays(sl):  # γ_t = e^{Σ_{r=start}^{t} log g_r}, Γ_end,s = γ_end/γ_s, Γ_ts = γ_t/γ_s (s ≤ t, 0 above)
        if not gated:
            return None, None, None
        g = gc[:, sl]
        cum = np.cumsum(g, axis=-1)
        return np.exp(cum), np.exp(_suffix(g, -1)), _decay_matrix(g, cum, lower)

    def scaled(x, factor):  # x ⊙ factor, or x itself where every decay is 1
        return x if factor is None else x * factor

    # forwards: per chunk M⁻¹ and [W, Ũ] (kept for the backward sweep), and the state S_0 entering it
    Tinv = np.empty((nb, nc, c, c))
    WU = np.empty((nb, nc, c, dk + dv))
    S0 = np.empty((nb, nc, dv, dk))
    S = np.zeros((nb, dv, dk)) if init is None else init
    for sl in groups:
        mm = sl.stop - sl.start
        kg, bg = kc[:, sl], bc[:, sl]
        gam, gam_end, Gam = decays(sl)
        if mm not in work:
            work[mm] = _unit_lower_identity((nb, mm), c)
        # M = I + tril(diag(β)(Γ ⊙ K Kᵀ), −1) is unit lower triangular: its inverse by the forward pass's
        # blocked doubling (batched products; a batched LAPACK solve per chunk cost several times more)
        Ti = _unit_lower_inverse(np.where(strict, scaled(bg[..., :, None], Gam) * (kg @ sT(kg)), 0.0), out=work[mm])
        Tinv[:, sl] = Ti
        W, Ut = WU[:, sl, :, :dk], WU[:, sl, :, dk:]
        np.matmul(Ti, scaled(bg, gam)[..., None] * kg, out=W)  # [W, Ũ] = M⁻¹ [diag(βγ) K, diag(β) V], two
        np.matmul(Ti, bg[..., None] * vc[:, sl], out=Ut)  # products of 64 x 64 outputs (no concatenation)
        Kg = scaled(kg, None if not gated else gam_end[..., None])
        for j in range(mm):
            S0[:, sl.start + j] = S
            S = scaled(S, None if not gated else gam[:, j, -1, None, None]) + sT(Ut[:, j] - W[:, j] @ sT(S)) @ Kg[:, j]
            # S_end = γ_end S_0 + Uᵀ K_g
    # backwards: the adjoint of the state leaving each chunk, dS_end[n−1] = dS_end[n] T_nᵀ + F_n, and the
    # gradients of the group, reverse mode through (16.12), then the UT transform (16.11)
    eye = np.eye(dk)
    lam = np.zeros((nb, dv, dk)) if final is None else final  # the adjoint leaving the last chunk
    for sl in reversed(groups):
        mm = sl.stop - sl.start
        qg, kg, vg, yg, bg = qc[:, sl], kc[:, sl], vc[:, sl], yc[:, sl], bc[:, sl]
        gam, gam_end, Gam = decays(sl)
        gE = gam[..., -1] if gated else None  # γ_end
        KK, QK = kg @ sT(kg), qg @ sT(kg)
        Ti, W, Ut, S0g = Tinv[:, sl], WU[:, sl, :, :dk], WU[:, sl, :, dk:], S0[:, sl]
        P = np.where(lower, scaled(QK, Gam), 0.0)
        Kg = scaled(kg, None if not gated else gam_end[..., None])
        U = Ut - W @ sT(S0g)
        Tt = scaled(eye, None if not gated else gE[..., None, None]) - sT(Kg) @ W  # T_nᵀ = γ_end I − K_gᵀ W
        F = sT(yg) @ (scaled(qg, None if not gated else gam[..., None]) - P @ W)  # dOᵀ (diag(γ) Q − P W)
        dSe = np.empty((nb, mm, dv, dk))
        for j in range(mm - 1, -1, -1):
            dSe[:, j] = lam
            lam = lam @ Tt[:, j] + F[:, j]
        dU = sT(P) @ yg + Kg @ sT(dSe)
        dP = np.where(lower, yg @ sT(U), 0.0)
        dKg = U @ dSe
        OS = yg @ S0g  # dO S_0
        dPG = scaled(dP, Gam)
        if gated:
            dK = gam_end[..., None] * dKg
            dgam_end = np.sum(kg * dKg, axis=-1)
            dQ = gam[..., None] * OS + dPG @ kg
            dgam = np.sum(qg * OS, axis=-1)
            dgE = np.sum(dSe * S0g, axis=(-2, -1))
            dGam = dP * QK
        else:
            dK, dQ = dKg, OS + dPG @ kg
        dK += sT(dPG) @ qg
        # M⁻ᵀ [dW, dŨ] with dW = −dU S_0: [dR1, dR2] = [−(M⁻ᵀ dU) S_0, M⁻ᵀ dU], side by side in one array
        dRHS = np.empty((nb, mm, c, dk + dv))
        dR1, dR2 = dRHS[..., :dk], dRHS[..., dk:]
        np.matmul(sT(Ti), dU, out=dR2)
        np.matmul(dR2, S0g, out=dR1)
        np.negative(dR1, out=dR1)
        dA = np.where(strict, -(dRHS @ sT(WU[:, sl])), 0.0)  # dM = −[dR1, dR2] [W, Ũ]ᵀ on its strictly lower part
        dK += scaled(bg, gam)[..., None] * dR1
        s1 = np.sum(kg * dR1, axis=-1)
        dbeta = scaled(s1, gam) + np.sum(vg * dR2, axis=-1) + np.sum(scaled(dA, Gam) * KK, axis=-1)
        dV = bg[..., None] * dR2
        dKK = scaled(dA * bg[..., :, None], Gam)
        dK += (dKK + sT(dKK)) @ kg
        if gated:
            dgam += bg * s1
            dGam += dA * bg[..., :, None] * KK
            # the log-gates enter γ_t (steps ≤ t), Γ_ts (s < r ≤ t), Γ_end,s (r > s) and γ_end (all r): sums of
            # terms, the one over s < r an exclusive prefix sum (an inclusive one minus its own term lost every
            # digit where that term dominates: a gate e^{−50} at r gave 0 instead of ~1e−21)
            dlogg = _rec_suffix(gam * dgam, -1) + _straddle(Gam * dGam) + (gE * dgE)[..., None]
            dlogg[..., 1:] += np.cumsum((gam_end * dgam_end)[..., :-1], axis=-1)  # Σ_{s<r}
        else:
            dlogg = np.zeros(bg.shape)
        _put_rows(out, (dQ, dK, dV, dbeta, dlogg), sl, c, L)
    if dinit is not None:
        dinit[...] = lam  # the adjoint of the state entering the first chunk, ∂ℓ/∂S_{−1}


def _delta_vjp_loop_core(q, k, v, beta, logg, dy, init=None, final=None):
    batch = q.shape[:-2]
    L, dk, dv = q.shape[-2], q.shape[-1], v.shape[-1]
    dq, dkk, dvv = np.zeros(q.shape), np.zeros(k.shape), np.zeros(v.shape)
    db, dg = np.zeros(beta.shape), np.zeros(logg.shape)
    dinit = np.zeros(batch + (dv, dk))
    eye = np.eye(dk)
    for b in np.ndindex(*batch):
        S = [np.zeros((dv, dk)) if init is None else init[b]]  # S[t + 1] = S_t, S[0] = S_{−1}
        for t in range(L):
            kt, bt, gt = k[b][t], float(beta[b][t]), math.exp(float(logg[b][t]))
            S.append(gt * S[-1] @ (eye - bt * np.outer(kt, kt)) + bt * np.outer(v[b][t], kt))  # (16.9)
        lam = np.zeros((dv, dk))  # Λ_L = 0
        for t in range(L - 1, -1, -1):
            kt, bt, gt = k[b][t], float(beta[b][t]), math.exp(float(logg[b][t]))
            if t + 1 < L:  # Λ_t = dy_t q_tᵀ + g_{t+1} Λ_{t+1} (I − β_{t+1} k_{t+1} k_{t+1}ᵀ)ᵀ
                kn, bn, gn = k[b][t + 1], float(beta[b][t + 1]), math.exp(float(logg[b][t + 1]))
                lam = gn * lam @ (eye - bn * np.outer(kn, kn)).T
            lam = lam + np.outer(dy[b][t], q[b][t])
            if t == L - 1 and final is not None:
                lam = lam + final[b]  # + the cotangent of the final state S_{L−1}
            Sp = S[t]  # S_{t−1}
            e = v[b][t] - gt * Sp @ kt  # the prediction error v_t − g_t S_{t−1} k_t (16.10)
            lk = lam @ kt
            dq[b][t] = S[t + 1].T @ dy[b][t]  # ∂o_t/∂q_t = S_t
            dvv[b][t] = bt * lk  # S_t ∋ β_t v_t k_tᵀ
            db[b][t] = float(lk @ e)  # ∂S_t/∂β_t = (v_t − g_t S_{t−1} k_t) k_tᵀ
            dkk[b][t] = bt * (lam.T @ e) - gt * bt * (Sp.T @ lk)  # from β e k_tᵀ, e depending on k_t too
            dg[b][t] = gt * float(np.sum(lam * (Sp @ (eye - bt * np.outer(kt, kt)))))  # ∂S_t/∂log g_t
        if L:  # dS_{−1} = g_0 Λ_0 (I − β_0 k_0 k_0ᵀ)ᵀ
            k0 = k[b][0]
            dinit[b] = math.exp(float(logg[b][0])) * lam @ (eye - float(beta[b][0]) * np.outer(k0, k0)).T
        elif final is not None:
            dinit[b] = final[b]  # no step: the final state is the initial one
    return dq, dkk, dvv, db, dg, dinit


@guard_overflow()
def delta_rule_vjp(q, k, v, beta, dy, *, log_g=None, scale=None, chunk_size=64, initial_state=None,
                   dfinal_state=None) -> dict:
    r"""Backward pass of :func:`refimpl.linear_rnn.delta_rule` (DeltaNet; Gated DeltaNet with ``log_g``).

    The vector–Jacobian product of Eqs. (16.9)–(16.12) of the book, by the adjoint recurrence of
    Eq. (16.20) run chunk by chunk through the UT transform, Eq. (16.21) (Yang et al. 2024, DeltaNet, §3:
    the chunkwise WY form, here differentiated in reverse mode).

    Parameters
    ----------
    q, k, v, beta, log_g, scale, chunk_size
        As in :func:`refimpl.linear_rnn.delta_rule`: q, k (..., L, Dk) with ℓ2-normalized keys,
        v (..., L, Dv), beta (..., L) in [0, 2], log_g (..., L) ≤ 0 or None.
    dy : array_like, shape (..., L, Dv)
        The cotangent ∂ℓ/∂o, shape of the output.
    initial_state : array_like, shape (..., Dv, Dk), optional
        The initial state S_{−1} of the forward call (default 0; fla's ``initial_state``, transposed).
    dfinal_state : array_like, shape (..., Dv, Dk), optional
        The cotangent ∂ℓ/∂S_{L−1} of the final state (fla's ``dht``, transposed), its batch axes
        broadcasting to those of the final state; the adjoint starts from it, Eq. (16.22) of the book.
        Default 0.

    Returns
    -------
    grads : dict
        ``{"dq", "dk", "dv", "dbeta"}`` and ``"dlog_g"`` when ``log_g`` is given, each of the
        shape of its input (summed over broadcast axes), and ``"dinitial_state"`` = ∂ℓ/∂S_{−1}
        (fla's ``dh0``, transposed) when ``initial_state`` is given. ``dk`` is the gradient with
        respect to unconstrained keys (a kernel's ∂ℓ/∂k); a layer that normalizes its keys chains it
        through the normalization (project out the radial part: ``(I − k kᵀ) dk / ‖k_raw‖``).

    Notes
    -----
    The state map ``S ↦ g_t S (I − β_t k_t k_tᵀ)`` acts on the right of S, so the adjoint
    ``Λ_t = ∂ℓ/∂S_t`` runs backwards with the transposed transition (16.20):

    .. math::  Λ_t = dy_t\, \tilde q_t^\top + g_{t+1}\, Λ_{t+1} (I − β_{t+1} k_{t+1} k_{t+1}^\top)^\top ,
               \qquad Λ_{L−1} = dy_{L−1}\, \tilde q_{L−1}^\top + dS_{L−1}

    (``dS_{L−1}`` = ``dfinal_state``). With the prediction error ``e_t = v_t − g_t S_{t−1} k_t``
    (16.10), ``S_{−1}`` the initial state: ``dq̃_t = S_tᵀ dy_t``,
    ``dv_t = β_t Λ_t k_t``, ``dβ_t = (Λ_t k_t)·e_t``,
    ``dk_t = β_t Λ_tᵀ e_t − g_t β_t S_{t−1}ᵀ Λ_t k_t``,
    ``dlog g_t = g_t ⟨Λ_t, S_{t−1}(I − β_t k_t k_tᵀ)⟩`` and
    ``dS_{−1} = g_0 Λ_0 (I − β_0 k_0 k_0ᵀ)``.

    Vectorized: per chunk the forward map is the UT/WY form (16.11)–(16.12), whose chunk
    transition ``S_0 ↦ S_0 (γ_end I − Wᵀ diag(Γ_end) K)`` is passed forwards and its transpose
    backwards across the L/c chunks (16.21); everything else is reverse mode through (16.12) and the
    unit triangular solve (16.11) for all chunks at once — products of (c, c) and (c, d)
    matrices and one more LU solve with Mᵀ per chunk. The initial state enters the first chunk,
    the final state's cotangent starts the backward chunk recurrence, and ``dS_{−1}`` is where it
    ends. Twin: :func:`delta_rule_vjp_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v, dy = rng.normal(size=(4, 6, 3))
    >>> k /= np.linalg.norm(k, axis=-1, keepdims=True)  # the delta rule needs unit keys
    >>> beta, log_g = rng.uniform(0.1, 1.5, size=6), np.log(rng.uniform(0.8, 1.0, size=6))
    >>> g = delta_rule_vjp(q, k, v, beta, dy, log_g=log_g, chunk_size=4)
    >>> sorted(g)
    ['dbeta', 'dk', 'dlog_g', 'dq', 'dv']
    >>> gl = delta_rule_vjp_loop(q, k, v, beta, dy, log_g=log_g, chunk_size=4)
    >>> all(np.allclose(g[key], gl[key], rtol=1e-12, atol=0) for key in g)
    True
    """
    qs, kb, vb, b, g, dy, cs, c, shapes, S0, dSL = _delta_vjp_setup(q, k, v, beta, log_g, dy, scale, chunk_size,
                                                                     initial_state, dfinal_state)
    core = _delta_vjp_core if shapes["log_g"] is not None else functools.partial(_delta_vjp_core, gated=False)
    grads = _over_heads(core, qs, kb, vb, b, g, dy, c=c, states=_states(S0, dSL))
    return _delta_vjp_result(*grads[:5], cs, shapes, *grads[5:])


@guard_overflow()
def delta_rule_vjp_loop(q, k, v, beta, dy, *, log_g=None, scale=None, chunk_size=64, initial_state=None,
                        dfinal_state=None) -> dict:
    """Loop twin of :func:`delta_rule_vjp`: the recurrence (16.9) forwards, the adjoint (16.20) backwards.

    Stores every state from ``S_{−1}``, then runs
    ``Λ_t = dy_t q̃_tᵀ + g_{t+1} Λ_{t+1}(I − β_{t+1} k_{t+1}k_{t+1}ᵀ)ᵀ`` from t = L−1 (plus the final
    state's cotangent there) down to 0, each gradient read off ``Λ_t``, ``S_t`` and ``S_{t−1}``;
    ``dS_{−1} = g_0 Λ_0 (I − β_0 k_0 k_0ᵀ)ᵀ``. ``chunk_size`` is validated only.

    Examples
    --------
    >>> k = np.array([[1.0, 0.0], [1.0, 0.0]])  # the same unit key twice
    >>> v, dy = np.array([[1.0], [3.0]]), np.array([[0.0], [1.0]])  # ℓ = o_1 = (S_1 k)_0
    >>> g = delta_rule_vjp_loop(k, k, v, np.array([0.5, 0.5]), dy, scale=1.0)
    >>> g["dv"].ravel().tolist()  # o_1 = (1 − β_1) β_0 v_0 + β_1 v_1
    [0.25, 0.5]
    """
    qs, kb, vb, b, g, dy, cs, c, shapes, S0, dSL = _delta_vjp_setup(q, k, v, beta, log_g, dy, scale, chunk_size,
                                                                     initial_state, dfinal_state)
    dq, dk, dv, db, dg, dinit = _delta_vjp_loop_core(qs, kb, vb, b, g, dy, S0, dSL)
    return _delta_vjp_result(dq, dk, dv, db, dg, cs, shapes, dinit)


# ---- the official interface of Mamba (mamba_ssm's selective_scan_fn) ---------------------------------


def _fn_vjp_setup(u, delta, A, B, C, dout, D, z, delta_bias, delta_softplus):
    """Validate a call as :func:`refimpl.ssm.selective_scan_fn` does, and ``dout`` against the output's shape;
    also record how B and C were given, ``(ndim, shape, complex)``: their gradients are returned in that form."""
    from .ssm import _check_official

    forms = {name: (np.ndim(X), np.shape(X), np.iscomplexobj(X)) for name, X in (("B", B), ("C", C))}
    u, delta, step, A, B, C, D, z, bias, softplus, _ = _check_official(u, delta, A, B, C, D, z, delta_bias,
                                                                       delta_softplus, False)
    dout = as_real_array(dout, "dout", copy=False)
    if dout.shape != u.shape:
        raise ValueError(f"dout: expected shape (batch, D, L) like u and the output = {u.shape}, "
                         f"got shape {dout.shape}")
    return u, delta, step, A, B, C, D, z, bias, softplus, dout, forms


def _fn_scan_vjp(u, step, A, B, C, dv, inv_B: bool, inv_C: bool) -> tuple:
    """The adjoint of the scan of :func:`refimpl.ssm.selective_scan_fn` (Eqs. (11.14), (11.16), (11.22)), vectorized,
    in blocks of channels (:func:`_vjp_channel_blocks`) taken in turn by the threads: :func:`_fn_scan_vjp_block` on
    each. The channels are independent but for the gradients of B and C, sums over the channels of a group: a
    block inside a group returns its part of the sum, and the parts are added in the order of the blocks once all
    are done, so that the result does not depend on the number of threads.
    """
    from .ssm import _block_groups

    d, n = u.shape[1], A.shape[1]
    blocks = _vjp_channel_blocks(d, B.shape[1], C.shape[1])
    if len(blocks) == 1:
        return _fn_scan_vjp_block(u, step, A, B, C, dv, inv_B, inv_C)

    def groups(X, s):  # the groups of B or C that the channels s use
        return X[:, _block_groups(s, d, X.shape[1])]

    parts = _channel_parts(blocks, lambda s: _fn_scan_vjp_block(u[:, s], step[:, s], A[s], groups(B, s), groups(C, s),
                                                                dv[:, s], inv_B, inv_C), u.size * n)
    du, dstep, dA = (np.concatenate([part[j] for part in parts], axis=1 if j < 2 else 0) for j in range(3))

    def gathered(j, X, inv):  # the gradient of B (j = 3) or C (j = 4)
        if inv:  # (D, N): one group per channel, blocks of whole groups
            return np.concatenate([part[j] for part in parts], axis=0)
        out = np.zeros(parts[0][j].shape[:1] + X.shape[1:], dtype=parts[0][j].dtype)
        for s, part in zip(blocks, parts):  # in block order: the parts of one group summed in a fixed order
            out[:, _block_groups(s, d, X.shape[1])] += part[j]
        return out

    return du, dstep, dA, gathered(3, B, inv_B), gathered(4, C, inv_C)


def _fn_scan_vjp_block(u, step, A, B, C, dv, inv_B: bool, inv_C: bool) -> tuple:
    """The adjoint of the scan of :func:`refimpl.ssm.selective_scan_fn` (Eqs. (11.14), (11.16), (11.22)), vectorized.

    ``u``, ``step`` (Δ), ``dv`` (∂ℓ/∂y) (batch, D, L); ``A`` (D, N) real or complex; ``B``, ``C``
    (batch or 1, G, N, L) as :func:`refimpl.ssm._official_bc` returns them (complex with a complex A),
    ``inv_B``, ``inv_C`` when given time-invariant (D, N). Returns the scan's part of ``du`` and ``dΔ``
    (batch, D, L), ``dA`` (D, N) and ``dB``, ``dC`` ((D, N) time-invariant, else (batch, G, N, L)),
    complex ones as ∂ℓ/∂Re + i ∂ℓ/∂Im.

    The algorithm of :func:`selective_scan_vjp` in refimpl's layout (views of the official arrays,
    (batch, L, D, ·)): blocks of T steps whose (batch, T, D, N) temporaries fit in cache, a forward
    sweep keeping the state entering each block, a backward sweep recomputing a block's states and
    running the adjoint through it. Groups are views ``(batch, T, G, D/G, N)`` of the temporaries,
    so that B_t and C_t of a group meet its D/G channels by broadcasting, and the group's gradient
    is a contraction over them.
    """
    batch, d, L = u.shape
    n = A.shape[1]
    cplx = A.dtype.kind == "c"
    kappa = 2.0 if cplx else 1.0  # y = 2 Re ⟨C, h⟩ for a complex A (Eq. (11.22))
    G_B, G_C = B.shape[1], C.shape[1]
    t = lambda x: np.swapaxes(x, 1, 2)  # noqa: E731 — (batch, D, L) -> (batch, L, D), a view
    ur, sr, vr = t(u), t(step), t(dv)
    Br, Cr = (np.broadcast_to(X.transpose(0, 3, 1, 2), (batch, L) + X.shape[1:3]) for X in (B, C))  # (batch, L, G, N)
    T = max(1, min(L, _SEL_BLOCK_FLOATS // max(1, batch * d * n * (2 if cplx else 1))))  # steps per block
    blocks = [slice(t0, min(L, t0 + T)) for t0 in range(0, L, T)]
    work = np.empty((4, batch, T, d, n), dtype=A.dtype)  # ā, Δ B u (then h), λ, and λ ā h_{t−1}

    def grouped(x, G):  # (batch, T, D, ·) -> (batch, T, G, D/G, ·), a view: channel c is in group c // (D/G)
        return x.reshape(x.shape[:2] + (G, d // G) + x.shape[3:])

    def discretized(sl):  # ā_t = e^{Δ_t A} and Δ_t B_t u_t of a block, (batch, T, D, N)
        Ab, Bu = (w[:, : sl.stop - sl.start] for w in work[:2])
        np.multiply(sr[:, sl, :, None], A, out=Ab)  # Δ_t A
        np.multiply(grouped(sr[:, sl] * ur[:, sl], G_B)[..., None], Br[:, sl, :, None, :], out=grouped(Bu, G_B))
        np.exp(Ab, out=Ab)
        return Ab, Bu

    # forwards: the state entering each block (its states are recomputed on the way back)
    starts = np.empty((len(blocks), batch, d, n), dtype=A.dtype)
    h = np.zeros((batch, d, n), dtype=A.dtype)
    for i, sl in enumerate(blocks):
        starts[i] = h
        Ab, Bu = discretized(sl)
        for k in range(sl.stop - sl.start):  # h_t = ā_t h_{t−1} + Δ_t B_t u_t
            h *= Ab[:, k]
            h += Bu[:, k]
    # backwards, block by block
    du, dstep = np.empty((batch, L, d)), np.empty((batch, L, d))
    dA = np.zeros((d, n), dtype=A.dtype)
    dB = np.zeros((d, n), dtype=A.dtype) if inv_B else np.empty((batch, L, G_B, n), dtype=A.dtype)
    dC = np.zeros((d, n), dtype=A.dtype) if inv_C else np.empty((batch, L, G_C, n), dtype=A.dtype)
    carry = np.zeros((batch, d, n), dtype=A.dtype)  # ā_{t+1} λ_{t+1} from the block after (0 after the last step)
    tmp = np.empty((batch, d, n), dtype=A.dtype)
    for i in range(len(blocks) - 1, -1, -1):
        sl = blocks[i]
        Ab, H = discretized(sl)  # H: Δ B u, then h_t in place
        H[:, 0] += Ab[:, 0] * starts[i]
        for k in range(1, H.shape[1]):
            np.multiply(Ab[:, k], H[:, k - 1], out=tmp)
            H[:, k] += tmp
        lam, ga = (w[:, : sl.stop - sl.start] for w in work[2:])
        vg = grouped(kappa * vr[:, sl], G_C)  # κ dv_t per group of C
        np.multiply(vg[..., None], Cr[:, sl, :, None, :], out=grouped(lam, G_C))  # κ dv_t C_t
        lam[:, -1] += carry
        for k in range(lam.shape[1] - 2, -1, -1):  # λ_t = ā_{t+1} λ_{t+1} + κ dv_t C_t
            np.multiply(Ab[:, k + 1], lam[:, k + 1], out=tmp)
            lam[:, k] += tmp
        carry = Ab[:, 0] * lam[:, 0]
        if inv_C:  # dC = κ Σ_{b,t} dv_t h_t (one channel per "group")
            dC += np.einsum("btgc,btgcn->gn", vg, grouped(H, G_C))
        else:  # dC_t = κ Σ_{c in the group} dv_t h_t
            dC[:, sl] = np.einsum("btgc,btgcn->btgn", vg, grouped(H, G_C))
        np.multiply(lam, Ab, out=ga)  # λ_t ā_t h_{t−1}
        ga[:, 0] *= starts[i]
        ga[:, 1:] *= H[:, :-1]
        dA += np.einsum("btdn,btd->dn", ga, sr[:, sl])  # ∂ā/∂A = Δ ā
        lB = np.einsum("btgcn,btgn->btgc", grouped(lam, G_B), Br[:, sl]).reshape(ga.shape[:3]).real  # Re Σ_n λ_t B_t
        np.multiply(lB, sr[:, sl], out=du[:, sl])  # ∂(Δ B u)/∂u = Δ B
        dstep[:, sl] = np.einsum("btdn,dn->btd", ga, A).real  # ∂ā/∂Δ = A ā
        dstep[:, sl] += lB * ur[:, sl]  # ∂(Δ B u)/∂Δ = B u
        su = grouped(sr[:, sl] * ur[:, sl], G_B)
        if inv_B:
            dB += np.einsum("btgcn,btgc->gn", grouped(lam, G_B), su)
        else:  # dB_t = Σ_{c in the group} Δ_t u_t λ_t
            dB[:, sl] = np.einsum("btgcn,btgc->btgn", grouped(lam, G_B), su)
    back = lambda x: np.ascontiguousarray(t(x))  # noqa: E731
    dB, dC = (X if inv else np.ascontiguousarray(X.transpose(0, 2, 3, 1)) for X, inv in ((dB, inv_B), (dC, inv_C)))
    if cplx:  # the adjoint above is the conjugate of ∂ℓ/∂Re h + i ∂ℓ/∂Im h
        dA, dB, dC = np.conj(dA), np.conj(dB), np.conj(dC)
    return back(du), back(dstep), dA, dB, dC


def _fn_scan_vjp_loop(u, step, A, B, C, dv, inv_B: bool, inv_C: bool) -> tuple:
    """:func:`_fn_scan_vjp` as scalar loops over batch, channel and state entry: the recurrence forwards, its adjoint
    backwards, in Python floats (complex with a complex A)."""
    batch, d_in, L = u.shape
    n = A.shape[1]
    cplx = A.dtype.kind == "c"
    num, exp, kappa = (complex, cmath.exp, 2.0) if cplx else (float, math.exp, 1.0)
    B, C = (np.broadcast_to(X, (batch,) + X.shape[1:]) for X in (B, C))  # (batch, G, N, L)
    du, dstep = np.zeros(u.shape), np.zeros(u.shape)
    dA = np.zeros(A.shape, dtype=A.dtype)
    dB = np.zeros((d_in, n) if inv_B else B.shape, dtype=A.dtype)
    dC = np.zeros((d_in, n) if inv_C else C.shape, dtype=A.dtype)
    for b in range(batch):
        for d in range(d_in):
            gB, gC = d // (d_in // B.shape[1]), d // (d_in // C.shape[1])  # the groups of channel d
            for k in range(n):
                a = num(A[d, k])
                a_bar, h = [], [0.0]  # ā_t; h[t + 1] = h_t, h[0] = h_{−1} = 0
                for t in range(L):
                    dt = float(step[b, d, t])
                    a_bar.append(exp(dt * a))
                    h.append(a_bar[t] * h[t] + dt * num(B[b, gB, k, t]) * float(u[b, d, t]))  # ā h_{t−1} + Δ B u
                lam = 0.0
                for t in range(L - 1, -1, -1):
                    dt, ut, vt = float(step[b, d, t]), float(u[b, d, t]), float(dv[b, d, t])
                    bt = num(B[b, gB, k, t])
                    nxt = a_bar[t + 1] if t + 1 < L else 0.0
                    lam = nxt * lam + kappa * vt * num(C[b, gC, k, t])  # λ_t = ā_{t+1} λ_{t+1} + κ dv_t C_t
                    g = lam * a_bar[t] * h[t]  # λ_t ā_t h_{t−1}
                    du[b, d, t] += (lam * dt * bt).real  # ∂h_t/∂u_t = Δ B
                    dstep[b, d, t] += (g * a).real + (lam * bt * ut).real  # ∂ā/∂Δ = a ā, ∂(Δ B u)/∂Δ = B u
                    dA[d, k] += g * dt  # ∂ā/∂a = Δ ā
                    dB[(d, k) if inv_B else (b, gB, k, t)] += lam * dt * ut  # ∂h_t/∂B_t = Δ u
                    dC[(d, k) if inv_C else (b, gC, k, t)] += kappa * vt * h[t + 1]  # ∂y_t/∂C_t = κ h_t
    if cplx:
        dA, dB, dC = np.conj(dA), np.conj(dB), np.conj(dC)
    return du, dstep, dA, dB, dC


def _bc_gradient(g: np.ndarray, form: tuple) -> np.ndarray:
    """The gradient of B or C in the form it was given: (batch, N, L) without the group axis; a real B of a
    complex A as it is stored, (Re, Im) interleaved along time (last axis 2L), or its real part if (D, N)."""
    ndim, shape, given_complex = form
    if ndim == 3:
        g = g[:, 0]
    if np.iscomplexobj(g) and not given_complex:
        if ndim == 2:
            return np.ascontiguousarray(g.real)
        out = np.empty(shape)
        out[..., 0::2], out[..., 1::2] = g.real, g.imag  # the gradients of the stored real and imaginary parts
        return out
    return g


def _selective_fn_vjp(loop, u, delta, A, B, C, dout, D, z, delta_bias, delta_softplus) -> dict:
    """The gradients of ``selective_scan_fn``: the scan's adjoint (vectorized or loops), then the chain rules of the
    gate, the skip connection, the softplus and the bias, in the official layout."""
    from .ssm import selective_scan_fn, selective_scan_fn_loop

    u, delta, step, A, Bo, Co, Dv, z, bias, softplus, dout, forms = _fn_vjp_setup(u, delta, A, B, C, dout, D, z,
                                                                                  delta_bias, delta_softplus)
    dv, dz = dout, None  # dv = ∂ℓ/∂(y + D u)
    if z is not None:
        forward = selective_scan_fn_loop if loop else selective_scan_fn
        v = forward(u, delta, A, B, C, Dv, None, bias, delta_softplus=softplus)  # y + D u, the gate's input
        s = expit(z)
        dz = dout * v * (s * (1.0 + z * (1.0 - s)))  # silu'(z) = σ(z) (1 + z (1 − σ(z)))
        dv = dout * (z * s)  # out = (y + D u) silu(z)
    core = _fn_scan_vjp_loop if loop else _fn_scan_vjp
    du, dstep, dA, dB, dC = core(u, step, A, Bo, Co, dv, forms["B"][0] == 2, forms["C"][0] == 2)
    raw = delta if bias is None else delta + bias[:, None]
    ddelta = dstep * expit(raw) if softplus else dstep  # softplus'(x) = σ(x)
    out = {"du": du, "ddelta": ddelta, "dA": dA, "dB": _bc_gradient(dB, forms["B"]), "dC": _bc_gradient(dC, forms["C"])}
    if Dv is not None:
        du += Dv[:, None] * dv  # y + D u
        out["dD"] = np.einsum("bdl,bdl->d", dv, u)  # Σ over batch and time
    if dz is not None:
        out["dz"] = dz
    if bias is not None:
        out["ddelta_bias"] = ddelta.sum(axis=(0, 2))
    return out


@guard_overflow()
def selective_scan_fn_vjp(u, delta, A, B, C, dout, D=None, z=None, delta_bias=None, *, delta_softplus=False) -> dict:
    r"""Backward pass of :func:`refimpl.ssm.selective_scan_fn`, with mamba_ssm's names of the gradients.

    The vector–Jacobian product of Eqs. (11.14)–(11.16) of the book by the adjoint reverse-time scan
    (Gu & Dao 2024, §3.3 and Alg. 2), chained through the official interface's steps (11.21)–(11.23)
    as ``selective_scan_cuda.bwd`` of ``mamba_ssm`` returns them (``SelectiveScanFn.backward``:
    ``du, ddelta, dA, dB, dC, dD, dz, ddelta_bias``).

    Parameters
    ----------
    u, delta, A, B, C, D, z, delta_bias, delta_softplus
        As in :func:`refimpl.ssm.selective_scan_fn` (official layout: u, delta, z (batch, D, L); A (D, N)
        real or complex; B and C each (D, N), (batch, N, L) or (batch, G, N, L), complex ones of a
        complex A as complex arrays or real ones of last axis 2L, (real, imaginary) interleaved).
    dout : array_like, shape (batch, D, L)
        The cotangent ∂ℓ/∂out. There is no cotangent for the last state: as in mamba_ssm (whose
        ``selective_scan_fn`` documents that the last state's gradient is not considered in the
        backward pass), the adjoint starts at ``λ_{L−1} = κ dv_{L−1} C_{L−1}``, so a loss that also
        depends on ``last_state`` (chunked or stateful training) gets incomplete gradients; including
        it would add ∂ℓ/∂h_{L−1} to ``λ_{L−1}``.

    Returns
    -------
    grads : dict
        ``{"du", "ddelta", "dA", "dB", "dC"}`` of the shapes of their inputs (``ddelta`` with respect
        to the ``delta`` given, before bias and softplus; ``dA`` summed over batch and time; ``dB``,
        ``dC`` in the form given: (D, N) summed over batch and time, (batch, N, L) summed over the
        channels, (batch, G, N, L) summed over the channels of a group), and ``"dD"``, ``"dz"``,
        ``"ddelta_bias"`` (summed over batch and time) exactly when D, z, delta_bias are given.
        Gradients of complex inputs are complex, ``∂ℓ/∂Re + i ∂ℓ/∂Im`` (PyTorch's and the kernel's
        convention: the direction a gradient step subtracts); of a complex B or C stored as real
        pairs, the gradients of the stored reals, i.e. the same numbers interleaved.

    Notes
    -----
    Forward, per batch entry, channel d (of B's group g and C's group g') and state entry n, with
    ``x = delta + delta_bias``, ``Δ = softplus(x)`` (Eq. (11.21)), ``ā_t = e^{Δ_t A_{dn}}``:
    ``h_t = ā_t h_{t−1} + Δ_t B_{g,n,t} u_t``, ``y_t = κ Re Σ_n C_{g',n,t} h_t`` (κ = 1 for a real A,
    κ = 2 for a complex one, Eq. (11.22)), ``v_t = y_t + D u_t``, ``out_t = v_t silu(z_t)`` (Eq. (11.23)).
    Reverse mode, one step at a time:

    * the gate: ``dz = dout · v · σ(z)(1 + z(1 − σ(z)))``, ``dv = dout · silu(z)``;
    * the skip connection: ``dD = Σ_{b,t} dv ⊙ u``, ``du += D dv``;
    * the scan: the adjoint (for a complex A the conjugate of ``∂ℓ/∂Re h + i ∂ℓ/∂Im h``)

      .. math::  λ_t = \bar a_{t+1} λ_{t+1} + κ\, dv_t\, C_{g',t},\qquad λ_{L−1} = κ\, dv_{L−1} C_{g',L−1},

      runs backwards in time (:func:`selective_scan_vjp`), and ``du_t += Re Σ_n λ_t Δ_t B_t``,
      ``dΔ_t = Re Σ_n λ_t (A ā_t h_{t−1} + B_t u_t)`` (the Euler rule (11.16) of the official code; with
      ZOH (11.15), see :func:`selective_scan_vjp`, the input term is ``B_t e^{Δ_t A} u_t`` and ``dA`` gains a
      term of its own), ``dA = conj Σ_{b,t} Δ_t λ_t ā_t h_{t−1}``,
      ``dB_{g,t} = conj Σ_{d∈g} Δ_t u_t λ_t``, ``dC_{g',t} = κ conj Σ_{d∈g'} dv_t h_t`` (no conj for a
      real A; a time-invariant B or C also summed over batch and time);
    * the step: ``ddelta = dΔ · σ(x)`` with the softplus (``dΔ`` without), ``ddelta_bias = Σ_{b,t} ddelta``.

    Differences from mamba_ssm, all deliberate: everything is float64; the softplus and its
    derivative σ are exact, as in :func:`refimpl.ssm.selective_scan_fn`, whereas the kernel uses
    the identity (and passes the gradient unchanged) for x > 20 — relative differences below
    log1p(e^{−20})/20 ≈ 1e-10 in Δ and 2.1e-9 in ``ddelta``; the flag is keyword-only; ``cu_seqlens``
    is not supported. Shared with mamba_ssm: the gradient of the last state is not taken (see ``dout``).
    Loop twin: :func:`selective_scan_fn_vjp_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> b, D, L, N = 2, 4, 5, 3
    >>> u, delta, z, dout = rng.normal(size=(4, b, D, L))
    >>> A, B, C = -np.exp(rng.normal(size=(D, N))), rng.normal(size=(b, 2, N, L)), rng.normal(size=(D, N))
    >>> g = selective_scan_fn_vjp(u, delta, A, B, C, dout, np.ones(D), z, np.zeros(D), delta_softplus=True)
    >>> list(g), g["dB"].shape, g["dC"].shape
    (['du', 'ddelta', 'dA', 'dB', 'dC', 'dD', 'dz', 'ddelta_bias'], (2, 2, 3, 5), (4, 3))
    """
    return _selective_fn_vjp(False, u, delta, A, B, C, dout, D, z, delta_bias, delta_softplus)


@guard_overflow()
def selective_scan_fn_vjp_loop(u, delta, A, B, C, dout, D=None, z=None, delta_bias=None, *,
                               delta_softplus=False) -> dict:
    """Loop twin of :func:`selective_scan_fn_vjp`: scalar loops over batch, channel, state entry and time.

    Per (b, d, n): ``h_t = e^{Δ_t A} h_{t−1} + Δ_t B_t u_t`` forwards, then
    ``λ_t = e^{Δ_{t+1} A} λ_{t+1} + κ dv_t C_t`` backwards, every gradient accumulated at step t from
    ``λ_t``, ``h_{t−1}``, ``h_t`` in Python floats (complex with a complex A); the gate's input ``y + D u``
    from :func:`refimpl.ssm.selective_scan_fn_loop`; the same chain rules.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> u, delta, dout = rng.normal(size=(3, 1, 2, 6))
    >>> A = -np.exp(rng.normal(size=(2, 3))) + 1j * rng.normal(size=(2, 3))  # complex: B, C as real pairs
    >>> B, C = rng.normal(size=(1, 3, 12)), rng.normal(size=(1, 2, 3, 12))
    >>> g = selective_scan_fn_vjp_loop(u, delta, A, B, C, dout, delta_softplus=True)
    >>> g2 = selective_scan_fn_vjp(u, delta, A, B, C, dout, delta_softplus=True)
    >>> all(np.allclose(g[k], g2[k]) for k in g), g["dA"].dtype, g["dB"].shape
    (True, dtype('complex128'), (1, 3, 12))
    """
    return _selective_fn_vjp(True, u, delta, A, B, C, dout, D, z, delta_bias, delta_softplus)


# ---- the official interfaces of Mamba-2 (mamba_ssm) and fla ----------------------------------


def _flash_attn_vjp(loop, q, k, v, dout, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                    deterministic=False, clamp_k=None) -> dict:
    """FlashAttention-2's gradients ``{"dq", "dk", "dv"}`` in its layout: :func:`softmax_attention_vjp` (or its loop
    twin) on the call :func:`refimpl.attention._fa_check` validated."""
    from .attention import _fa_check

    f = _fa_check(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic, clamp_k)
    b, h, sq = f.q.shape[:3]
    dout = as_real_array(dout, "dout")
    if dout.shape != (b, sq, h, f.v.shape[-1]):
        raise ValueError(f"dout: expected shape (batch, seqlen_q, nheads, headdim_v) = {(b, sq, h, f.v.shape[-1])} like "
                         f"the output, got {dout.shape}")
    run = softmax_attention_vjp_loop if loop else softmax_attention_vjp
    grads = run(f.q, f.k, f.v, np.swapaxes(dout, 1, 2), **f.opts)
    return {name: np.ascontiguousarray(np.swapaxes(g, 1, 2)) for name, g in zip(("dq", "dk", "dv"), grads)}


def _flash_attn_varlen_vjp(loop, q, k, v, dout, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                           softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic=False) -> dict:
    """The gradients of packed sequences: :func:`_flash_attn_vjp` on each, joined along the packed axis."""
    from .attention import _varlen_parts

    seqs = list(_varlen_parts(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, alibi_slopes))
    total, h = sum(qi.shape[1] for qi, *_ in seqs), seqs[0][0].shape[2]
    dout = as_real_array(dout, "dout")
    if dout.shape != (total, h, seqs[0][2].shape[-1]):
        raise ValueError(f"dout: expected shape (total_q, nheads, headdim_v) = {(total, h, seqs[0][2].shape[-1])} like "
                         f"the output, got {dout.shape}")
    starts = np.cumsum([0] + [qi.shape[1] for qi, *_ in seqs])
    parts = [_flash_attn_vjp(loop, qi, ki, vi, dout[None, a:b], dropout_p, softmax_scale, causal, window_size, softcap,
                             si, deterministic, int(max_seqlen_k))
             for (qi, ki, vi, si, _), a, b in zip(seqs, starts[:-1], starts[1:])]
    return {name: np.concatenate([g[name][0] for g in parts], axis=0) for name in ("dq", "dk", "dv")}


_FA_VJP_DOC = """
    Parameters
    ----------
    q, k, v, {args}dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic
        As in :func:`refimpl.attention.{fwd}` (FlashAttention's layout).
    dout : array_like, shape {shape}
        The cotangent ∂ℓ/∂out.

    Returns
    -------
    grads : dict
        ``{{"dq", "dk", "dv"}}`` of the shapes of q, k, v (with grouped-query heads, dk and dv summed
        over the query heads that share a key/value head), FlashAttention-2's ``dq, dk, dv``.
"""


@guard_overflow()
def flash_attn_func_vjp(q, k, v, dout, *, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                        softcap=0.0, alibi_slopes=None, deterministic=False) -> dict:
    r"""Backward pass of :func:`refimpl.attention.flash_attn_func`, with FlashAttention-2's names of the gradients.

    The vector–Jacobian product of Eq. (4.1) with the options of Eq. (4.14) of the book
    (:func:`softmax_attention_vjp`, the form of FlashAttention's backward pass, Dao 2024, Alg. 2), in
    FlashAttention's layout.
    {doc}
    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v, dout = rng.normal(size=(4, 1, 5, 2, 3))
    >>> sorted(flash_attn_func_vjp(q, k, v, dout, causal=True))
    ['dk', 'dq', 'dv']
    """
    return _flash_attn_vjp(False, q, k, v, dout, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                           deterministic)


@guard_overflow()
def flash_attn_func_vjp_loop(q, k, v, dout, *, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                             softcap=0.0, alibi_slopes=None, deterministic=False) -> dict:
    """Loop twin of :func:`flash_attn_func_vjp`: the same wrapper over :func:`softmax_attention_vjp_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v, dout = rng.normal(size=(4, 1, 4, 1, 2))
    >>> a, b = flash_attn_func_vjp_loop(q, k, v, dout), flash_attn_func_vjp(q, k, v, dout)
    >>> all(np.allclose(a[n], b[n]) for n in a)
    True
    """
    return _flash_attn_vjp(True, q, k, v, dout, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                           deterministic)


@guard_overflow()
def flash_attn_varlen_func_vjp(q, k, v, dout, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, dropout_p=0.0,
                               softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                               deterministic=False) -> dict:
    r"""Backward pass of :func:`refimpl.attention.flash_attn_varlen_func` (packed sequences), FlashAttention-2's names.

    The vector–Jacobian product of Eq. (4.1) with the options of Eq. (4.14) of the book on each packed
    sequence (:func:`flash_attn_func_vjp`), the gradients joined along the packed axis.
    {doc}
    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v, dout = rng.normal(size=(4, 7, 2, 3))
    >>> cu = np.array([0, 3, 7])
    >>> g = flash_attn_varlen_func_vjp(q, k, v, dout, cu, cu, 4, 4, causal=True)
    >>> g["dq"].shape
    (7, 2, 3)
    """
    return _flash_attn_varlen_vjp(False, q, k, v, dout, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                  dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic)


@guard_overflow()
def flash_attn_varlen_func_vjp_loop(q, k, v, dout, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *,
                                    dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                                    alibi_slopes=None, deterministic=False) -> dict:
    """Loop twin of :func:`flash_attn_varlen_func_vjp`: the same wrapper over :func:`softmax_attention_vjp_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v, dout = rng.normal(size=(4, 5, 1, 2))
    >>> cu = np.array([0, 2, 5])
    >>> a = flash_attn_varlen_func_vjp_loop(q, k, v, dout, cu, cu, 3, 3)
    >>> b = flash_attn_varlen_func_vjp(q, k, v, dout, cu, cu, 3, 3)
    >>> all(np.allclose(a[n], b[n]) for n in a)
    True
    """
    return _flash_attn_varlen_vjp(True, q, k, v, dout, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                  dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic)


for _fn, _args, _fwd, _shape in ((flash_attn_func_vjp, "", "flash_attn_func", "(batch, seqlen_q, nheads, headdim_v)"),
                                 (flash_attn_varlen_func_vjp, "cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, ",
                                  "flash_attn_varlen_func", "(total_q, nheads, headdim_v)")):
    _fn.__doc__ = _fn.__doc__.replace("{doc}", _FA_VJP_DOC.format(args=_args, fwd=_fwd, shape=_shape))
del _fn, _args, _fwd, _shape


def _mamba_vjp(loop, x, dt, A, B, C, dout, chunk_size, D, z, dt_bias, initial_states, dt_softplus, dt_limit,
               dfinal_states, sums=None, seq_idx=None) -> dict:
    """The gradients of ``mamba_chunk_scan_combined``: :func:`ssd_vjp` (or its loop twin) in refimpl's layout,
    then the chain rule through D, silu(z), the clamp and the softplus, in the official layout. With a dict
    ``sums`` (not with ``loop``), also the per-head Σ |terms| of ``dA`` and ``ddt_bias`` (:func:`_decay_sums`).
    With ``seq_idx``, each packed sequence's gradients on its own (:func:`_mamba_vjp_packed`)."""
    from .linear_rnn import _check_mamba, _mamba_scan, _official, _optional, _seq_runs, _swap

    m = _check_mamba(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_softplus, dt_limit)
    b, L, H, P = m.x.shape
    dout = _official(dout, "dout", m.x.shape, "(batch, seqlen, nheads, headdim) like x")
    dhL = _optional(dfinal_states, "dfinal_states", (b, H, P, m.B.shape[-1]), "(batch, nheads, headdim, dstate)")
    if seq_idx is not None:
        part = dict(A=A, chunk_size=chunk_size, D=D, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit)
        return _mamba_vjp_packed(loop, m, np.asarray(dt, float), _seq_runs(seq_idx, b, L), dout, dhL, part, sums)
    du, dz = dout, None  # du = ∂ℓ/∂(y + D x)
    if m.z is not None:
        u, _ = _mamba_scan(m, loop)  # y + D x, the gate's input
        s = expit(m.z)
        dz = dout * u * (s * (1.0 + m.z * (1.0 - s)))  # silu'(z) = σ(z) (1 + z (1 − σ(z)))
        du = dout * (m.z * s)  # out = u · silu(z)
    ssd_args = (_swap(m.x), _swap(m.step), m.A, _swap(m.B), _swap(m.C), None, _swap(du))
    if loop:
        g = ssd_vjp_loop(*ssd_args, chunk_size=m.chunk_size, initial_state=m.h0, dfinal_state=dhL)
    else:
        g = _ssd_vjp(*ssd_args, m.chunk_size, m.h0, dhL, sums)
    back = lambda a: np.ascontiguousarray(_swap(a))  # noqa: E731  refimpl's (b, h, l, ·) -> (b, l, h, ·)
    dx = back(g["dx"])
    dstep = back(g["ddt"])  # ∂ℓ/∂Δ
    dpre = np.where((m.pre < m.lo) | (m.pre > m.hi), 0.0, dstep)  # clamp: no gradient strictly outside dt_limit
    draw = dpre * expit(m.raw) if m.softplus else dpre  # softplus'(x) = σ(x)
    out = {"dx": dx, "ddt": draw, "dA": g["dA"], "dB": back(g["dB"]), "dC": back(g["dC"])}
    if m.D is not None:
        Dx = m.D[:, None] if m.D.ndim == 1 else m.D
        dx += Dx * du  # y + D x
        dDx = np.einsum("blhp,blhp->hp", du, m.x)  # Σ over batch and sequence
        out["dD"] = dDx.sum(axis=-1) if m.D.ndim == 1 else dDx
    if m.z is not None:
        out["dz"] = dz
    if m.dt_bias is not None:
        out["ddt_bias"] = draw.sum(axis=(0, 1))
        if sums is not None:
            sums["ddt_bias"] = _chunk_rss(np.moveaxis(np.abs(draw), 1, -1), m.chunk_size)  # (b, h, l)
    if m.h0 is not None:
        out["dinitial_states"] = g["dinitial_state"]
    return out


def _mamba_vjp_packed(loop, m, dt, runs, dout, dhL, part: dict, sums) -> dict:
    """:func:`_mamba_vjp` of packed sequences: each run of ``seq_idx`` (row i, steps s … e − 1) on its own, with the
    row's initial state if it starts the row with id 0 and the row's ``dfinal_states`` if it ends the row; the
    per-step gradients placed at their steps, those of the shared parameters (dA, dD, ddt_bias) summed, and the
    decay sums of ``sums`` combined as the chunks' root sum of squares they are."""
    out: dict = {}
    parts = {} if sums is not None else None
    for i, row in enumerate(runs):
        for s, e, first in row:
            cut = lambda a: None if a is None else a[i:i + 1, s:e]  # noqa: E731
            first = first and m.h0 is not None
            sub = {} if sums is not None else None
            g = _mamba_vjp(loop, cut(m.x), cut(dt), B=cut(m.B), C=cut(m.C), dout=cut(dout), z=cut(m.z),
                           initial_states=m.h0[i:i + 1] if first else None, dfinal_states=None if dhL is None or
                           e != row[-1][1] else dhL[i:i + 1], sums=sub, **part)
            for name, grad in g.items():
                if name in ("dA", "dD", "ddt_bias"):
                    out[name] = out.get(name, 0.0) + grad
                elif name == "dinitial_states":
                    out.setdefault(name, np.zeros(m.h0.shape))[i] = grad[0]
                else:
                    out.setdefault(name, np.zeros((m.x.shape[0], m.x.shape[1]) + grad.shape[2:]))[i, s:e] = grad[0]
            for name, v in (sub or {}).items():
                parts[name] = parts.get(name, 0.0) + v * v
    if m.h0 is not None:
        out.setdefault("dinitial_states", np.zeros(m.h0.shape))  # no row starts with id 0: no gradient
    if sums is not None:
        sums.update({name: np.sqrt(v) for name, v in parts.items()})
    order = ("dx", "ddt", "dA", "dB", "dC", "dD", "dz", "ddt_bias", "dinitial_states")
    return {name: out[name] for name in order if name in out}


@guard_overflow()
def mamba_chunk_scan_combined_vjp(x, dt, A, B, C, dout, chunk_size, *, D=None, z=None, dt_bias=None,
                                  initial_states=None, seq_idx=None, dt_softplus=False, dt_limit=(0.0, math.inf),
                                  dfinal_states=None) -> dict:
    r"""Backward pass of :func:`refimpl.linear_rnn.mamba_chunk_scan_combined`, with mamba_ssm's names of the gradients.

    The vector–Jacobian product of Eqs. (16.7)–(16.8) of the book by the adjoint filter of
    Eqs. (16.17) and (16.22) (:func:`ssd_vjp`), chained through the official interface's element-wise
    steps as ``_mamba_chunk_scan_combined_bwd`` of ``mamba_ssm/ops/triton/ssd_combined.py`` returns
    them (its ``_chunk_cumsum_bwd`` for the step sizes).

    Parameters
    ----------
    x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus, dt_limit
        As in :func:`refimpl.linear_rnn.mamba_chunk_scan_combined` (official layout; with ``seq_idx``
        each packed sequence is differentiated on its own, the gradients of A, D and dt_bias summed).
    dout : array_like, shape (batch, seqlen, nheads, headdim)
        The cotangent ∂ℓ/∂out.
    dfinal_states : array_like, shape (batch, nheads, headdim, dstate), optional
        The cotangent of ``final_states`` (Eq. (16.22)). Default 0.

    Returns
    -------
    grads : dict
        ``{"dx", "ddt", "dA", "dB", "dC"}`` of the shapes of their inputs (``ddt`` with respect to the
        ``dt`` given, before bias, softplus and clamp; ``dB``, ``dC`` summed over the heads of a
        group; ``dA`` over batch and sequence), and ``"dD"`` (shape of D), ``"dz"``, ``"ddt_bias"``,
        ``"dinitial_states"`` exactly when D, z, dt_bias, initial_states are given.

    Notes
    -----
    With ``u = y + D ⊙ x`` and ``out = u · silu(z)``: ``dz = dout · u · σ(z)(1 + z(1 − σ(z)))``,
    ``du = dout · silu(z)``; ``dD = Σ du ⊙ x`` (over batch, sequence and, for D (nheads,), the head
    dimension); ``dx = (∂y/∂x)ᵀ du + D du``. The step: ``dΔ`` from :func:`ssd_vjp`, zero where
    ``softplus(dt + dt_bias)`` lies strictly outside ``dt_limit`` (the kernel's ``clamp_mask``),
    times ``σ(dt + dt_bias)`` with the softplus; ``ddt_bias = Σ_{b,l} ddt``.

    Differences from mamba_ssm, all deliberate: as for the forward function (exact softplus and
    σ — the kernel passes the gradient unchanged above 20 —; no ``return_varlen_states``, as in the
    kernel's backward pass); every gradient is
    float64 and returned in a dict. Loop twin: :func:`mamba_chunk_scan_combined_vjp_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, z, dout = rng.normal(size=(3, 1, 6, 2, 3))
    >>> dt, (B, C) = rng.normal(size=(1, 6, 2)), rng.normal(size=(2, 1, 6, 1, 4))
    >>> g = mamba_chunk_scan_combined_vjp(x, dt, -np.ones(2), B, C, dout, 4, D=np.ones((2, 3)), z=z,
    ...                                   dt_bias=np.zeros(2), dt_softplus=True)
    >>> sorted(g), g["dD"].shape
    (['dA', 'dB', 'dC', 'dD', 'ddt', 'ddt_bias', 'dx', 'dz'], (2, 3))
    """
    return _mamba_vjp(False, x, dt, A, B, C, dout, chunk_size, D, z, dt_bias, initial_states, dt_softplus, dt_limit,
                      dfinal_states, seq_idx=seq_idx)


@guard_overflow()
def mamba_chunk_scan_combined_vjp_loop(x, dt, A, B, C, dout, chunk_size, *, D=None, z=None, dt_bias=None,
                                       initial_states=None, seq_idx=None, dt_softplus=False,
                                       dt_limit=(0.0, math.inf), dfinal_states=None) -> dict:
    """Loop twin of :func:`mamba_chunk_scan_combined_vjp`: the same chain rule over :func:`ssd_vjp_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, dout = rng.normal(size=(2, 1, 5, 1, 2))
    >>> dt, (B, C) = rng.uniform(0.1, 1, (1, 5, 1)), rng.normal(size=(2, 1, 5, 1, 3))
    >>> g = mamba_chunk_scan_combined_vjp_loop(x, dt, -np.ones(1), B, C, dout, 2)
    >>> g2 = mamba_chunk_scan_combined_vjp(x, dt, -np.ones(1), B, C, dout, 2)
    >>> all(np.allclose(g[n], g2[n]) for n in g)
    True
    """
    return _mamba_vjp(True, x, dt, A, B, C, dout, chunk_size, D, z, dt_bias, initial_states, dt_softplus, dt_limit,
                      dfinal_states, seq_idx=seq_idx)


def _fla_vjp(loop, q, k, v, g, beta, do, scale, initial_state, dht, l2norm, gate: str, delta: bool, g_gamma=None,
             cu_seqlens=None) -> dict:
    """The gradients of an fla function: refimpl's VJP in its layout, the states transposed, and with
    ``use_qk_l2norm_in_kernel`` the chain rule of ``x / sqrt(Σ x² + eps)``: ``dx = r (dy − y (y·dy))``.
    With ``cu_seqlens`` each packed sequence's gradients on its own (its ``dht`` entry, its ``dh0``), joined
    along the sequence (``dh0`` stacked)."""
    from .linear_rnn import _check_fla, _fla_packed, _official, _optional, _swap, _with_l2norm_keys

    packed = cu_seqlens is not None
    f = _check_fla(q, k, v, g, beta, scale, None if packed else initial_state, gate, delta, l2norm, g_gamma=g_gamma)
    Bb, H, T, K = f.q.shape
    V = f.v.shape[-1]
    do = _official(do, "do", (Bb, T, H, V), "[B, T, H, V] like v")
    run = (delta_rule_vjp_loop if loop else delta_rule_vjp) if delta else (
        gated_linear_attention_vjp_loop if loop else gated_linear_attention_vjp)

    def core(f, do, dht):
        dSL = None if dht is None else np.swapaxes(dht, -1, -2)  # fla's (K, V) -> refimpl's (V, K)
        kw = dict(scale=f.scale, initial_state=f.S0, dfinal_state=dSL)
        if delta:  # keys fla normalized itself may be short (_FLA_L2NORM_KEYS)
            return _with_l2norm_keys(f.l2norm, run, f.q, f.k, f.v, f.beta, _swap(do), log_g=f.log_g, **kw)
        return run(f.q, f.k, f.v, f.log_g, _swap(do), **kw)

    if packed:
        parts = list(_fla_packed(f, cu_seqlens, initial_state, extra=do))  # validates cu_seqlens, initial_state
        dht = _optional(dht, "dht", (len(parts), H, K, V), f"[N, H, K, V] like the final states, N = {len(parts)}")
        runs = [core(part, do_i, None if dht is None else dht[i:i + 1]) for i, (part, do_i) in enumerate(parts)]
        # every gradient has the sequence third (refimpl's layout), but the initial state's: one per sequence
        gr = {name: np.concatenate([r[name] for r in runs], axis=0 if name == "dinitial_state" else 2)
              for name in runs[0]}
    else:
        dht = _optional(dht, "dht", (Bb, H, K, V), "[N, H, K, V] like the final state")
        gr = core(f, do, dht)
    back = lambda a: np.ascontiguousarray(_swap(a))  # noqa: E731
    out = {"dq": back(gr["dq"]), "dk": back(gr["dk"]), "dv": back(gr["dv"])}
    if f.l2norm:  # y = x r, r = (Σ x² + eps)^{−1/2}: dx = r (dy − y (y · dy))
        for name, y, r in (("dq", f.q, f.rstd[0]), ("dk", f.k, f.rstd[1])):
            y = _swap(y)
            dy = out[name]
            out[name] = r[..., None] * (dy - y * np.einsum("...j,...j->...", y, dy)[..., None])
    if gate != "none" and g is not None:  # g_gamma is a constant: no gradient, as in fla
        out["dg"] = back(gr["dlog_g"])
    if delta:
        out["dbeta"] = back(gr["dbeta"])
    if initial_state is not None:
        out["dh0"] = np.ascontiguousarray(np.swapaxes(gr["dinitial_state"], -1, -2))
    return out


_FLA_VJP_DOC = """
    Parameters
    ----------
    q, k, v, {args}scale, initial_state{l2}, cu_seqlens
        As in :func:`refimpl.linear_rnn.{fwd}` (fla's layout (B, T, H, ·); states (B, H, K, V), or
        (N, H, K, V) for N packed sequences).
    do : array_like, shape (B, T, H, V)
        The cotangent ∂ℓ/∂o.
    dht : array_like, shape (B, H, K, V) (or (N, H, K, V)), optional
        The cotangent of the final state (fla's orientation; Eq. (16.22)). Default 0.

    Returns
    -------
    grads : dict
        ``{keys}`` of the shapes of their inputs, and ``"dh0"`` (the shape of ``initial_state``), the
        gradient of ``initial_state``, exactly when it is given (fla returns None otherwise).
"""


@guard_overflow()
def chunk_gla_vjp(q, k, v, g, do, scale=None, initial_state=None, dht=None, *, cu_seqlens=None) -> dict:
    r"""Backward pass of :func:`refimpl.linear_rnn.chunk_gla`, with fla's names of the gradients.

    The vector–Jacobian product of Eqs. (16.2)–(16.5) by the adjoint filter of Eqs. (16.17)–(16.19)
    and (16.22) (:func:`gated_linear_attention_vjp`), in fla's layout (``fla/ops/gla/chunk.py``,
    ``ChunkGLAFunction.backward``: ``dq, dk, dv, dg, dh0``).
    {doc}
    Notes
    -----
    ``dg`` is the gradient of the log-gates (fla's reverse cumulative sum); states and their
    gradients are in fla's orientation (K, V), refimpl's transposed. Differences from fla, all
    deliberate: float64, a dict. Loop twin: :func:`chunk_gla_vjp_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v, do = rng.normal(size=(4, 1, 5, 2, 3))
    >>> g, h0 = -rng.uniform(0, 1, (1, 5, 2, 3)), rng.normal(size=(1, 2, 3, 3))
    >>> sorted(chunk_gla_vjp(q, k, v, g, do, initial_state=h0))
    ['dg', 'dh0', 'dk', 'dq', 'dv']
    """
    return _fla_vjp(False, q, k, v, g, None, do, scale, initial_state, dht, False, "channel", False, cu_seqlens=cu_seqlens)


@guard_overflow()
def chunk_gla_vjp_loop(q, k, v, g, do, scale=None, initial_state=None, dht=None, *, cu_seqlens=None) -> dict:
    """Loop twin of :func:`chunk_gla_vjp`: the same wrapper over :func:`gated_linear_attention_vjp_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v, do = rng.normal(size=(4, 1, 5, 1, 2))
    >>> g = -rng.uniform(0, 1, (1, 5, 1, 2))
    >>> a, b = chunk_gla_vjp_loop(q, k, v, g, do), chunk_gla_vjp(q, k, v, g, do)
    >>> all(np.allclose(a[n], b[n]) for n in a)
    True
    """
    return _fla_vjp(True, q, k, v, g, None, do, scale, initial_state, dht, False, "channel", False, cu_seqlens=cu_seqlens)


@guard_overflow()
def chunk_simple_gla_vjp(q, k, v, g, do, scale=None, initial_state=None, dht=None, g_gamma=None, *,
                         cu_seqlens=None) -> dict:
    r"""Backward pass of :func:`refimpl.linear_rnn.chunk_simple_gla` (a gate per head), with fla's names.

    The vector–Jacobian product of Eqs. (16.2)–(16.5) by the adjoint filter of Eqs. (16.17)–(16.19)
    and (16.22) (:func:`gated_linear_attention_vjp` with per-head gates), in fla's layout
    (``fla/ops/simple_gla/chunk.py``: ``dq, dk, dv, dg, dh0``).
    {doc}
    Notes
    -----
    ``"dg"`` only when ``g`` is given: ``g_gamma`` is a constant (fla returns no gradient for it).
    Differences from fla, all deliberate: as :func:`chunk_gla_vjp`. Loop twin: :func:`chunk_simple_gla_vjp_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v, do = rng.normal(size=(4, 1, 5, 2, 3))
    >>> g = -rng.uniform(0, 1, (1, 5, 2))
    >>> chunk_simple_gla_vjp(q, k, v, g, do)["dg"].shape
    (1, 5, 2)
    """
    return _fla_vjp(False, q, k, v, g, None, do, scale, initial_state, dht, False, "head", False, g_gamma, cu_seqlens)


@guard_overflow()
def chunk_simple_gla_vjp_loop(q, k, v, g, do, scale=None, initial_state=None, dht=None, g_gamma=None, *,
                              cu_seqlens=None) -> dict:
    """Loop twin of :func:`chunk_simple_gla_vjp`: the same wrapper over :func:`gated_linear_attention_vjp_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v, do = rng.normal(size=(4, 1, 5, 1, 2))
    >>> g = -rng.uniform(0, 1, (1, 5, 1))
    >>> a, b = chunk_simple_gla_vjp_loop(q, k, v, g, do), chunk_simple_gla_vjp(q, k, v, g, do)
    >>> all(np.allclose(a[n], b[n]) for n in a)
    True
    """
    return _fla_vjp(True, q, k, v, g, None, do, scale, initial_state, dht, False, "head", False, g_gamma, cu_seqlens)


@guard_overflow()
def chunk_delta_rule_vjp(q, k, v, beta, do, scale=None, initial_state=None, dht=None, *,
                         use_qk_l2norm_in_kernel=False, cu_seqlens=None) -> dict:
    r"""Backward pass of :func:`refimpl.linear_rnn.chunk_delta_rule`, with fla's names of the gradients.

    The vector–Jacobian product of Eqs. (16.9)–(16.12) by the adjoint recurrence of Eqs. (16.20)–(16.22)
    (:func:`delta_rule_vjp`), in fla's layout (``fla/ops/delta_rule/chunk.py``: ``dq, dk, dv, dbeta, dh0``),
    chained through fla's ``l2norm_bwd`` with ``use_qk_l2norm_in_kernel``.
    {doc}
    Notes
    -----
    With the normalization ``y = x r``, ``r = (Σ x² + 1e-6)^{−1/2}``: ``dx = r (dy − y (y·dy))``
    for q and k (``dy`` the gradient with respect to the normalized vector). Without it ``dk`` is the
    gradient with respect to the keys as given (unconstrained, as fla's). Differences from fla, all
    deliberate: as :func:`chunk_delta_rule`. Loop twin: :func:`chunk_delta_rule_vjp_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v, do = rng.normal(size=(4, 1, 5, 2, 3))
    >>> beta = rng.uniform(0.1, 0.9, (1, 5, 2))
    >>> sorted(chunk_delta_rule_vjp(q, k, v, beta, do, use_qk_l2norm_in_kernel=True))
    ['dbeta', 'dk', 'dq', 'dv']
    """
    return _fla_vjp(False, q, k, v, None, beta, do, scale, initial_state, dht, use_qk_l2norm_in_kernel, "none", True,
                    cu_seqlens=cu_seqlens)


@guard_overflow()
def chunk_delta_rule_vjp_loop(q, k, v, beta, do, scale=None, initial_state=None, dht=None, *,
                              use_qk_l2norm_in_kernel=False, cu_seqlens=None) -> dict:
    """Loop twin of :func:`chunk_delta_rule_vjp`: the same wrapper over :func:`delta_rule_vjp_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v, do = rng.normal(size=(4, 1, 5, 1, 2))
    >>> beta, kw = rng.uniform(0.1, 0.9, (1, 5, 1)), dict(use_qk_l2norm_in_kernel=True)
    >>> a, b = chunk_delta_rule_vjp_loop(q, k, v, beta, do, **kw), chunk_delta_rule_vjp(q, k, v, beta, do, **kw)
    >>> all(np.allclose(a[n], b[n]) for n in a)
    True
    """
    return _fla_vjp(True, q, k, v, None, beta, do, scale, initial_state, dht, use_qk_l2norm_in_kernel, "none", True,
                    cu_seqlens=cu_seqlens)


@guard_overflow()
def chunk_gated_delta_rule_vjp(q, k, v, g, beta, do, scale=None, initial_state=None, dht=None, *,
                               use_qk_l2norm_in_kernel=False, cu_seqlens=None) -> dict:
    r"""Backward pass of :func:`refimpl.linear_rnn.chunk_gated_delta_rule`, with fla's names of the gradients.

    The vector–Jacobian product of Eqs. (16.9)–(16.12) with gates by the adjoint recurrence of
    Eqs. (16.20)–(16.22) (:func:`delta_rule_vjp` with ``log_g``), in fla's layout
    (``fla/ops/gated_delta_rule/chunk.py``, ``ChunkGatedDeltaRuleFunction.backward``:
    ``dq, dk, dv, dg, dbeta, dh0``), chained through ``l2norm_bwd`` with ``use_qk_l2norm_in_kernel``.
    {doc}
    Notes
    -----
    As :func:`chunk_delta_rule_vjp`; ``dg`` is the gradient of the log-gates. Loop twin:
    :func:`chunk_gated_delta_rule_vjp_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v, do = rng.normal(size=(4, 1, 5, 2, 3))
    >>> g, beta = -rng.uniform(0, 0.5, (1, 5, 2)), rng.uniform(0.1, 0.9, (1, 5, 2))
    >>> list(chunk_gated_delta_rule_vjp(q, k, v, g, beta, do, use_qk_l2norm_in_kernel=True))
    ['dq', 'dk', 'dv', 'dg', 'dbeta']
    """
    return _fla_vjp(False, q, k, v, g, beta, do, scale, initial_state, dht, use_qk_l2norm_in_kernel, "head", True,
                    cu_seqlens=cu_seqlens)


@guard_overflow()
def chunk_gated_delta_rule_vjp_loop(q, k, v, g, beta, do, scale=None, initial_state=None, dht=None, *,
                                    use_qk_l2norm_in_kernel=False, cu_seqlens=None) -> dict:
    """Loop twin of :func:`chunk_gated_delta_rule_vjp`: the same wrapper over :func:`delta_rule_vjp_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v, do = rng.normal(size=(4, 1, 5, 1, 2))
    >>> g, beta = -rng.uniform(0, 0.5, (1, 5, 1)), rng.uniform(0.1, 0.9, (1, 5, 1))
    >>> kw = dict(use_qk_l2norm_in_kernel=True)
    >>> a = chunk_gated_delta_rule_vjp_loop(q, k, v, g, beta, do, **kw)
    >>> b = chunk_gated_delta_rule_vjp(q, k, v, g, beta, do, **kw)
    >>> all(np.allclose(a[n], b[n]) for n in a)
    True
    """
    return _fla_vjp(True, q, k, v, g, beta, do, scale, initial_state, dht, use_qk_l2norm_in_kernel, "head", True,
                    cu_seqlens=cu_seqlens)


def _fill_fla_docs():
    specs = {
        chunk_gla_vjp: ("g, ", "", "chunk_gla", '{"dq", "dk", "dv", "dg"}'),
        chunk_simple_gla_vjp: ("g (None with g_gamma alone), ", ", g_gamma", "chunk_simple_gla",
                               '{"dq", "dk", "dv", "dg"}'),
        chunk_delta_rule_vjp: ("beta, ", ", use_qk_l2norm_in_kernel", "chunk_delta_rule", '{"dq", "dk", "dv", "dbeta"}'),
        chunk_gated_delta_rule_vjp: ("g, beta, ", ", use_qk_l2norm_in_kernel", "chunk_gated_delta_rule",
                                     '{"dq", "dk", "dv", "dg", "dbeta"}'),
    }
    for fn, (args, l2, fwd, keys) in specs.items():
        fn.__doc__ = fn.__doc__.replace("{doc}", _FLA_VJP_DOC.format(args=args, l2=l2, fwd=fwd, keys=keys))


_fill_fla_docs()


def _decay_sums(function: str, args: dict) -> dict:
    """``{gradient: the largest over heads of the terms' magnitude}`` for the gradients of a chunked recurrence's
    backward pass that sum decay-dependent terms over the batch and the sequence — SSD's and Mamba-2's
    ``dA = Σ Δ_t ρ_t`` and Mamba-2's ``ddt_bias = Σ ddt`` — computed in float64 from the call's arguments (an
    empty dict for other functions). The magnitude is ``sqrt(Σ_k S_k²)``, ``S_k = Σ |terms|`` over one chunk of
    one batch entry (:func:`_chunk_rss`): a kernel rounds each term's decays by about ε₃₂ C_eff, coherently within
    a chunk (one cumulative sum) and independently across chunks. The sum can cancel (Σ|terms| / |Σ terms| of 12
    to 840 measured on a correct Mamba-2 kernel's ``ddt_bias``), so :mod:`refimpl.oracle` scales these
    gradients' decay floor by this magnitude over the gradient's."""
    import inspect

    fns = {"linear_rnn.ssd_vjp": (ssd_vjp, _ssd_vjp),
           "linear_rnn.mamba_chunk_scan_combined_vjp": (mamba_chunk_scan_combined_vjp, functools.partial(_mamba_vjp, False))}
    if function not in fns:
        return {}
    public, run = fns[function]
    sums: dict = {}
    run(**{name: args.get(name, p.default) for name, p in inspect.signature(public).parameters.items()}, sums=sums)
    return {name: float(np.max(v)) if np.size(v) else 0.0 for name, v in sums.items()}
