"""Associative (parallel-prefix) scan for diagonal first-order linear recurrences.

    h_i = a_i ⊙ h_{i-1} + b_i,   i = 0 .. N-1,   h_{-1} = 0

is the composition of the affine maps h ↦ a_i h + b_i. Composition is associative,

    (a_j, b_j) ∘ (a_i, b_i) = (a_j a_i, a_j b_i + b_j),

so all prefixes can be formed in ceil(log2 N) vectorized sweeps (Hillis & Steele 1986):
sweep s combines every element with the one 2^s places earlier. This is O(N log N) work
and O(log N) sequential depth, the shape of GPU scans (Blelloch 1990; Martin & Cundy 2018),
and it only ever multiplies the given coefficients, so |a_i| <= 1 never overflows (unlike the
closed form h_i = Π a · Σ b / Π a, which divides by vanishing products).

The engine room of the package: every linear-recurrence engine lives here, and the chapter
modules call them.

================================  =====================================================  ====================
engine                            recurrence                                             used by
================================  =====================================================  ====================
:func:`linear_scan`               h_i = a_i ⊙ h_{i−1} + b_i (diagonal, Hillis–Steele)    sde, ssm, iir
:func:`state_scan`                s_{m+1} = F s_m + u_m (dense F, nested super-blocks)   block_filter, kalman
:func:`column_scan`               the same for a single column (row layout)              block_filter
:func:`block_filter`              s[n] = A s[n−1] + B x[n], y[n] = C s[n−1] + D x[n]     iir
:func:`matrix_powers`             F^0 … F^K in extended precision                        the above
================================  =====================================================  ====================

Each has a loop twin here or in its caller (``linear_scan_loop``, ``state_scan_loop``; the
block filter against ``tf_filter_loop``). The
workspace the blocked loops may use is :data:`refimpl._blocking.WORKSPACE_FLOATS`.
"""

from __future__ import annotations

import collections
import functools
import math
import os
import threading
from typing import NamedTuple

import numpy as np

from ._blocking import ONE_THREAD_MACS, per_block


def linear_scan(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """All states of ``h_i = a_i h_{i-1} + b_i`` (``h_{-1} = 0``) along ``axis``.

    ``a`` and ``b`` broadcast against each other; the result has their broadcast shape.
    """
    a, b = np.broadcast_arrays(np.asarray(a), np.asarray(b))
    a = np.moveaxis(a, axis, -1).astype(np.result_type(a, b), copy=True)
    h = np.moveaxis(b, axis, -1).astype(np.result_type(a, b), copy=True)
    n = h.shape[-1]
    step = 1
    while step < n:
        # (a, h)[i] <- (a[i] a[i-step], a[i] h[i-step] + h[i]) for i >= step; right-hand
        # sides are read before either array is written.
        h_prev, a_prev = h[..., :-step].copy(), a[..., :-step].copy()
        h[..., step:] += a[..., step:] * h_prev
        a[..., step:] *= a_prev
        step *= 2
    return np.moveaxis(h, -1, axis)


def linear_scan_loop(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Loop twin of :func:`linear_scan`: the recurrence one step at a time."""
    a, b = np.broadcast_arrays(np.asarray(a), np.asarray(b))
    a, b = np.moveaxis(a, axis, -1), np.moveaxis(b, axis, -1)
    h = np.empty(b.shape, dtype=np.result_type(a, b))
    prev = np.zeros(b.shape[:-1], dtype=h.dtype)
    for i in range(b.shape[-1]):
        prev = a[..., i] * prev + b[..., i]  # h_i = a_i h_{i-1} + b_i
        h[..., i] = prev
    return np.moveaxis(h, -1, axis)


def _wide(dtype) -> type:
    return np.clongdouble if np.dtype(dtype).kind == "c" else np.longdouble


def matrix_powers(F: np.ndarray, K: int) -> np.ndarray:
    """``F^0, F^1, …, F^K`` as an array (K+1, q, q) in extended precision (``np.longdouble``).

    The block algorithms apply ``F^K`` N/K times, so the rounding error of a power is
    *systematic*: it shifts the eigenvalues of the block map, and for an undamped filter the
    resulting phase error adds up linearly over the sequence (≈ N·ε·cond, against the √N·ε of the
    sample recursion). The products are therefore accumulated in ``np.longdouble`` (64-bit
    mantissa on x86-64; on platforms where it is plain float64 this is the ordinary product) and
    the callers round them once, or split them into a float64 pair (:func:`state_scan`).
    """
    F = np.asarray(F)
    Fw = F.astype(_wide(F.dtype))
    P = np.zeros((K + 1,) + F.shape, dtype=Fw.dtype)
    np.fill_diagonal(P[0], 1.0)
    views, matmul = list(P), np.matmul
    for k in range(min(K, _nonzero_powers(Fw) - 1)):  # one factor F at a time: each product rounds once
        matmul(Fw, views[k], out=views[k + 1])  # (doubling, F^k F^k, is less accurate)
    return P


def _nonzero_powers(F: np.ndarray) -> int:
    """A k such that F^j, j >= k, rounds to 0 in float64 entry by entry (a huge number when none is known).

    Every entry of F^j is at most ‖F‖^j (∞-norm, submultiplicative). Powers below a quarter of the
    smallest float64 number are left exactly 0 by :func:`matrix_powers`: computed, they would be
    numbers no float64 can hold (the extended type's subnormals, slow to multiply) that every
    caller rounds to 0 — e.g. the powers of A^K for a filter that decays within the first blocks.
    """
    norm = np.abs(F).sum(axis=-1).max(initial=0.0)  # in F's precision: it may be far below float64's range
    if not norm < 1.0:  # also NaN
        return 2**62
    if norm == 0.0:
        return 1
    return max(1, math.ceil(_LOG_ZERO_IN_FLOAT64 / float(np.log(norm))))


#: log of a quarter of the smallest subnormal float64 (half of it rounds to 0): a margin for the
#: extended-precision rounding of the powers that :func:`_nonzero_powers` bounds
_LOG_ZERO_IN_FLOAT64 = math.log(float(np.finfo(np.float64).smallest_subnormal)) - math.log(4.0)


def _flush(x: np.ndarray) -> np.ndarray:
    """``x`` (float64 or complex128, in place) with its subnormal entries set to 0; returns ``x``.

    The powers of a decaying filter pass below 2.2e-308 on their way to 0. A subnormal operand
    makes every multiply-add it enters a slow microcode path of the CPU: an (800 × 400)(400 × 320)
    product took 1.5 ms, 10.6 ms with 1 % of the right factor's entries subnormal, 84 ms with 10 %
    (measured; one fill matrix of a 40-section band-pass, 400 × 320, held 8726 subnormal entries,
    6.8 %). Set to 0, such an entry changes a product by less than 2.2e-308 times the other
    factor: nothing a float64 result of normal size can show.
    """
    r = x.view(np.float64) if x.dtype == np.complex128 else x
    r[np.abs(r) < np.finfo(np.float64).tiny] = 0.0
    return x


def _narrow(P: np.ndarray) -> np.ndarray:
    """Extended-precision ``P`` rounded once to float64 (complex128), subnormals flushed (:func:`_flush`)."""
    return _flush(P.astype(np.complex128 if P.dtype.kind == "c" else np.float64))


def _split(F: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``F = hi + lo`` with float64 (complex128) ``hi``, ``lo``; ``lo`` is None when F is exact in float64
    (subnormal parts flushed to 0, :func:`_flush`)."""
    hi = _narrow(F)
    lo = _narrow(F - hi)
    return hi, (lo if np.any(lo) else None)


#: recursions this short are run step by step in :func:`state_scan` (the base case): a level of
#: the recursion costs ~0.1–0.2 ms of fixed work (powers in extended precision, the fill matrix),
#: as much as ~50 steps of the base case; 32 rather than 16 saves one level for a single channel
#: of 10⁵ samples (tf_filter 0.80 -> 0.74 ms)
_STATE_SCAN_BASE = 32

#: multiply-adds of one BLAS product in :func:`_matmul` (at most, where the one-thread size of
#: :data:`refimpl._blocking.ONE_THREAD_MACS` is a strict bound): OpenBLAS runs a product this small
#: on the calling thread. A larger one is shared between threads, and on a machine whose cores are
#: busy (the normal state of a laptop or a shared server) the threads wait milliseconds for each other.
_PIECE_MACS = ONE_THREAD_MACS // 2


def _matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a @ b`` for 2-D ``a`` (m, k) and ``b`` (k, n), as products of at most ~:data:`_PIECE_MACS` multiply-adds.

    The longer of the outer dimensions m, n is cut into pieces; the inner sum over k is never cut,
    so every entry is the same dot product as in one call.
    """
    (m, k), n = a.shape, b.shape[1]
    if out is None:
        out = np.empty((m, n), dtype=np.result_type(a, b))
    step = max(1, _PIECE_MACS // max(1, k * min(m, n)))
    if m >= n:
        for i in range(0, m, step):
            np.matmul(a[i : i + step], b, out=out[i : i + step])
    else:
        for j in range(0, n, step):
            np.matmul(a, b[:, j : j + step], out=out[:, j : j + step])
    return out


def cumsum_rows(a: np.ndarray, axis: int, out: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sums of ``a`` along ``axis``, one row (index of ``axis``) at a time, into ``out``.

    The same sums, in the same order, as ``np.cumsum(a, axis=axis)``, which is several times
    slower along an axis that is not the last one (it walks memory with the axis' stride).
    ``out`` may be ``a`` itself.
    """
    src, dst = np.moveaxis(a, axis, 0), np.moveaxis(out, axis, 0)  # views
    dst[0] = src[0]
    for i in range(1, dst.shape[0]):  # each row written once: cum_i = cum_{i−1} + a_i
        np.add(dst[i - 1], src[i], out=dst[i])
    return out


def _super_block(q: int) -> int:
    """Steps per super-block in :func:`state_scan`: R·q ≈ 64, so the fill matrix is at most ~64 × 64."""
    return max(4, -(-64 // q))


def scan_levels(F: np.ndarray, M: int) -> list[np.ndarray]:
    """The powers :func:`state_scan` forms for ``M`` steps of ``F``: one array ``F_ℓ^0 … F_ℓ^R``
    (R+1, q, q) per level of its recursion, in extended precision, with ``F_0 = F`` and
    ``F_{ℓ+1} = F_ℓ^R``; empty when M is short enough for the step-by-step base case.

    Computed before the scan (and handed to it) so that a caller can first check how large the
    powers are (:func:`power_growth`).
    """
    q, levels = F.shape[0], []
    while M > _STATE_SCAN_BASE:
        R = _super_block(q)
        P = matrix_powers(F, R)
        levels.append(P)
        F, M = P[R], -(-M // R)
    return levels


def power_growth(*powers: np.ndarray, section: int | None = None) -> float:
    """The largest ∞-norm (max row sum of |entries|) among the stacks of matrix powers ``powers``.

    ``section``: only the diagonal blocks of that size count (a cascade of sections whose
    state matrix is block lower-triangular: the diagonal blocks of its powers are the powers
    of the sections' own matrices).
    """
    def norm(P):
        if section is not None:
            n = P.shape[-1] // section
            idx = np.arange(n)
            P = P.reshape(-1, n, section, n, section)[:, idx, :, idx, :]  # (n, R+1, section, section)
        return float(np.abs(P).sum(axis=-1).max())

    return max((norm(P) for P in powers if P.size), default=0.0)


class _Level(NamedTuple):
    """One level of :func:`state_scan` for ``F_ℓ``: everything that depends on F_ℓ alone.

    ``P`` the powers F_ℓ^0 … F_ℓ^R (extended precision, :func:`matrix_powers`); ``Pn`` F_ℓ^0 … F_ℓ^{R−1}
    rounded once to float64 (complex128); ``Fe`` = [F^{R−1} … F^0] (q, Rq); ``Wu`` (Rq, Rq) and ``Wc``
    (Rq, q) the fill matrices [F^{k−1−j}, j < k] and [F^k]; ``split_next`` the float64 pair of
    F_{ℓ+1} = F_ℓ^R (the base case's step matrix when the next level is the last).
    """

    P: np.ndarray
    Pn: np.ndarray
    Fe: np.ndarray
    Wu: np.ndarray
    Wc: np.ndarray
    split_next: tuple


def _level(P: np.ndarray) -> _Level:
    """The :class:`_Level` of the powers ``P`` (R+1, q, q) of one level (:func:`scan_levels`): the
    fill matrices of :func:`_column_level`, transposed (the same numbers, laid out for columns)."""
    R, q = P.shape[0] - 1, P.shape[1]
    col = _column_level(P, R)
    Wc = np.ascontiguousarray(col.Fill[:q].T)  # [F^k] (Rq, q), F^0 … F^{R−1} each rounded once
    Wu = np.ascontiguousarray(col.Fill[q:].T)  # [F^{k−1−j}, j < k] (Rq, Rq)
    Fe = np.ascontiguousarray(col.FeT.T)  # [F^{R−1} … F^0] (q, Rq)
    return _Level(P, Wc.reshape(R, q, q), Fe, Wu, Wc, _split(P[R]))


def state_scan(F: np.ndarray, U: np.ndarray, s0: np.ndarray, out: np.ndarray | None = None,
               levels: list | None = None) -> np.ndarray:
    """States ``s_0 … s_{M−1}`` of ``s_{m+1} = F s_m + u_m`` (``s_0`` given), without a loop over M.

    ``F`` is (q, q), ``U`` is (M, q, L) (the last input ``u_{M−1}`` is not needed), ``s0`` is
    (q, L); the result is (M, q, L), written to ``out`` if given (it may be a strided view). This
    is the carry between blocks of the block filters (:func:`refimpl.iir.tf_filter`), where
    F = A^K is the state matrix over one block.

    Two levels, applied recursively: cut the M steps into super-blocks of R steps (R·q ≈ 64).
    From rest, super-block r ends in the state

        e_r = Σ_j F^{R−1−j} u_{rR+j}                       (one matrix product for all r),

    so the super-block start states obey the same kind of recursion, c_{r+1} = F^R c_r + e_r,
    on only M/R steps (solved by this function); the states inside the super-blocks are then

        s_{rR+k} = F^k c_r + Σ_{j<k} F^{k−1−j} u_{rR+j},   k = 0 … R−1,

    one product of the (Rq × (q + Rq)) matrix [F^k | F^{k−1−j}] with every super-block's start
    state and inputs stacked. About log_R M levels, each a handful of BLAS products; the work is
    O(R q² · M L).

    ``F`` may be given in extended precision (``np.longdouble``, from :func:`matrix_powers`):
    its powers are formed in extended precision and rounded once, and the step-by-step base case
    uses the float64 pair ``F = hi + lo`` (two products), so that F's rounding error —
    systematic, applied at every step — does not accumulate along the recursion.

    The products apply the powers ``F^k`` in float64, with a rounding error of about
    ε‖F^k‖·|s| each. When F is far from normal (clustered poles: a high-order low-pass filter in
    companion form) those norms grow to 10⁶ and beyond before they decay, and the error — then
    propagated by the recursion — can exceed the states themselves; :func:`power_growth` of
    ``levels`` (:func:`scan_levels`, computed by the caller or here) measures it.
    """
    F = np.asarray(F)
    if levels is None:
        levels = scan_levels(F, U.shape[0])
    fills = [lv if isinstance(lv, _Level) else _level(lv) for lv in levels]
    return _state_scan(F, _split(F), U, s0, out, fills)


def _state_scan(F: np.ndarray, split: tuple, U: np.ndarray, s0: np.ndarray, out: np.ndarray | None,
                fills: list[_Level]) -> np.ndarray:
    """:func:`state_scan` with the levels' matrices given (``fills``) and ``F`` as the pair ``split``."""
    M, q, L = U.shape
    hi, lo = split
    dtype = np.result_type(hi, U, s0)
    S = np.empty((M, q, L), dtype=dtype) if out is None else out

    if M <= _STATE_SCAN_BASE:
        if M:
            S[0] = s0
        for m in range(M - 1):  # F s + u, with F = hi + lo
            S[m + 1] = hi @ S[m] + U[m] if lo is None else hi @ S[m] + (lo @ S[m] + U[m])
        return S
    if not fills:  # levels for fewer steps than M were given: the rest from F
        fills = [_level(P) for P in scan_levels(F, M)]
    lv = fills[0]
    R = lv.P.shape[0] - 1
    M2, full = -(-M // R), M // R  # super-blocks, complete ones
    rest = M - full * R
    # inputs state-major, (R, q, M2, L): step k of every super-block is one (q, M2·L) slab
    Ut = np.empty((R, q, M2, L), dtype=dtype)
    Ut.transpose(2, 0, 1, 3)[:full] = U[: full * R].reshape(full, R, q, L)
    if rest:
        Ut[:, :, -1] = 0.0
        Ut[:rest, :, -1] = U[full * R :]
    Ut = Ut.reshape(R * q, M2 * L)
    E = _matmul(lv.Fe, Ut).reshape(q, M2, L)  # e_r for every r, one product
    C = _state_scan(lv.P[R], lv.split_next, E.transpose(1, 0, 2), s0, None, fills[1:])  # c_r: entering super-block r
    # the fill: rows (k, state) of [F^k] for the start state and [F^{k−1−j}, j < k] for the inputs
    St = _matmul(lv.Wc, C.transpose(1, 0, 2).reshape(q, M2 * L))  # F^k c_r
    St += _matmul(lv.Wu, Ut)  # + Σ_{j<k} F^{k−1−j} u_{rR+j}
    St = St.reshape(R, q, M2, L)
    S[: full * R].reshape(full, R, q, L)[...] = St[:, :, :full].transpose(2, 0, 1, 3)
    if rest:
        S[full * R :] = St[:rest, :, -1]
    return S


class _ColumnLevel(NamedTuple):
    """One level of :func:`column_scan` (a single column) for ``F_ℓ``, in the row layout where a
    super-block's R inputs are one row ``[u_0ᵀ … u_{R−1}ᵀ]`` of an (M/R, Rq) matrix (a view of the
    (M, q) inputs: no transposed copy).

    ``FeT`` (Rq, q): the blocks (F^{R−1−j})ᵀ stacked, so that the end states of all super-blocks
    from rest are ``e = U_rows FeT``. ``Fill`` ((R+1)q, Rq): the row ``[c_rᵀ | u_0ᵀ … u_{R−1}ᵀ]``
    times it is ``[s_0ᵀ … s_{R−1}ᵀ]``, with block (c, k) = (F^k)ᵀ and block (u_j, k) = (F^{k−1−j})ᵀ
    for j < k (0 otherwise): the powers rounded once from extended precision.
    """

    R: int
    FeT: np.ndarray
    Fill: np.ndarray


@functools.lru_cache(maxsize=64)
def _fill_index(R: int) -> np.ndarray:
    """Index (R+1, R) into ``ext`` of :func:`_column_level`: row block 0 (the start state) reads
    (F^k)ᵀ = ext[R + k], row block 1 + j (input u_j) reads (F^{k−1−j})ᵀ = ext[R + k − 1 − j], 0 for k <= j."""
    idx = np.empty((R + 1, R), dtype=np.intp)
    idx[0] = R + np.arange(R)
    idx[1:] = R - 1 + np.subtract.outer(np.arange(R), np.arange(R)).T  # [j, k] -> R + k − 1 − j
    idx.flags.writeable = False
    return idx


def _column_level(P: np.ndarray, R: int) -> _ColumnLevel:
    """The :class:`_ColumnLevel` of the powers ``P`` (at least R, q, q) = F^0 … F^{R−1} (or more)."""
    q = P.shape[1]
    Pn = _narrow(P[:R])  # F^0 … F^{R−1}, each rounded once
    ext = np.zeros((2 * R, q, q), dtype=Pn.dtype)  # ext[R + l] = (F^l)ᵀ, 0 for l < 0
    ext[R:] = Pn.transpose(0, 2, 1)
    fill = ext[_fill_index(R)].transpose(0, 2, 1, 3).reshape((R + 1) * q, R * q)  # blocks -> rows, columns
    FeT = np.ascontiguousarray(ext[: R - 1 : -1].reshape(R * q, q))  # (F^{R−1})ᵀ … (F^0)ᵀ
    return _ColumnLevel(R, FeT, fill)


def column_levels(F: np.ndarray, M: int, levels: list | None = None) -> list[_ColumnLevel]:
    """The levels :func:`column_scan` uses for ``M`` steps of ``F`` (extended precision, from
    :func:`matrix_powers`): those of :func:`scan_levels` (given as ``levels``, or computed), more
    of the same until at most R steps are left (R·q ≈ 64, :func:`_super_block`), then one for
    those last steps, which it fills in one product instead of stepping through them (from the
    powers of its ``F`` rounded once: no rounding of ``F`` accumulates over the steps; its fill
    matrix is at most ((R+1)q × Rq), about 64 × 64 numbers, whatever the state size)."""
    levels = scan_levels(F, M) if levels is None else levels
    R_base = _super_block(F.shape[0])
    out = []
    for P in levels:
        R = P.shape[0] - 1
        out.append(_column_level(P, R))
        F, M = P[R], -(-M // R)
    while M > R_base:
        P = matrix_powers(F, R_base)
        out.append(_column_level(P, R_base))
        F, M = P[R_base], -(-M // R_base)
    return out + [_column_level(matrix_powers(F, max(M - 1, 0)), M)]


def column_scan(U: np.ndarray, s0: np.ndarray, levels: list[_ColumnLevel]) -> np.ndarray:
    """:func:`state_scan` for a single column: the states ``s_0 … s_{M−1}`` (M, q) of
    ``s_{m+1} = F s_m + u_m``, ``U`` (M, q), ``s0`` (q,), with the levels of :func:`column_levels`
    (a few interleaved columns are one column of their joint state, F = A^K ⊗ I: :func:`_block_filter_rows`).
    Leading axes of ``U`` (…, M, q) and ``s0`` (…, q) are independent columns of the same F, side by
    side (:func:`_block_filter_columns`): every level is still two products, over the rows of all of them.

    The same two-level recursion with the products transposed: with each super-block's inputs a
    row of ``U_rows`` (M/R, Rq), the end states from rest are ``e = U_rows FeT``, the start states
    ``c_r`` obey the recursion on M/R steps (solved by this function, down to the last level, one
    super-block holding every step), and the states inside every super-block are ONE product,
    ``[C | U_rows] Fill``, already in the (M, q) order of the states. For a single column the
    cost of :func:`state_scan` is its NumPy calls (transposed copies, a step loop at the base,
    separate products for start states and inputs), not its arithmetic: here a level is two
    products and two copies.
    """
    lv = levels[0]
    R = lv.R
    batch, (M, q) = U.shape[:-2], U.shape[-2:]
    dtype = np.result_type(U, s0, lv.Fill)
    if M == 0:
        return np.empty(U.shape, dtype=dtype)
    M2, full = -(-M // R), M // R
    W = np.empty(batch + (M2, (R + 1) * q), dtype=dtype)  # rows [c_rᵀ | u_{rR}ᵀ … u_{rR+R−1}ᵀ] (of each column)
    ins = W[..., q:].reshape(batch + (M2, R, q))
    ins[..., :full, :, :] = U[..., : full * R, :].reshape(batch + (full, R, q))
    if full < M2:
        ins[..., full, : M - full * R, :] = U[..., full * R :, :]
        ins[..., full, M - full * R :, :] = 0.0
    rows = W.reshape(-1, (R + 1) * q)  # the rows of all columns: one product each
    if len(levels) == 1:  # the last level: one super-block, entered in s0
        W[..., 0, :q] = s0
    else:
        E = _matmul(rows[:, q:], lv.FeT).reshape(batch + (M2, q))  # e_r = Σ_j F^{R−1−j} u_{rR+j}, every r
        W[..., :q] = column_scan(E, s0, levels[1:])  # c_r: the start state of super-block r
    S = _matmul(rows, lv.Fill)  # s_{rR+k} = F^k c_r + Σ_{j<k} F^{k−1−j} u_{rR+j}
    return S.reshape(batch + (M2 * R, q))[..., :M, :]


def state_scan_loop(F: np.ndarray, U: np.ndarray, s0: np.ndarray) -> np.ndarray:
    """Loop twin of :func:`state_scan`: ``s_{m+1} = F s_m + u_m``, one step at a time."""
    M = U.shape[0]
    S = np.empty(U.shape, dtype=np.result_type(F, U, s0))
    s = s0
    for m in range(M):
        S[m] = s
        s = F @ s + U[m]  # in F's precision (extended if F is np.longdouble)
    return S


# ---------------------------------------------------------------------------------------------
# The block filter: a real state space run K samples at a time
# ---------------------------------------------------------------------------------------------

#: block length K of :func:`block_filter` (at least 4q is used); K = 12 and 24 hit a slow path
#: of the batched products on the reference machine, 16, 20 and 32 do not
BLOCK = 16


def block_matrices(A: np.ndarray, B: np.ndarray, C: np.ndarray, D: float, K: int):
    """The lifted (block) form of a real state space for blocks of K samples.

    For ``s[n] = A s[n−1] + B x[n]``, ``y[n] = C s[n−1] + D x[n]`` returns ``P`` (K+1, q, q) =
    A^0 … A^K, ``A^K`` in extended precision, ``O`` (K, q) with rows C A^k (zero-input
    response), ``T`` (K, K) the lower-triangular Toeplitz matrix of h[0 … K−1] (zero-state
    response, h[0] = D, h[m] = C A^{m−1} B), and ``G`` (q, K) whose column j is A^{K−1−j} B
    (the state a block's inputs leave behind).
    """
    Pw = matrix_powers(A, K)  # extended precision; A^K is split into a float64 pair by state_scan
    P = _narrow(Pw)
    O = _flush(C @ P[:K])  # C A^k
    g = _flush(P[:K] @ B)  # A^m B
    h = np.concatenate([[D], _flush(g[:-1] @ C), [0.0]])  # h[0] = D, h[m] = C A^{m−1} B; then 0 (above the diagonal)
    T = h[_toeplitz_index(K)]  # T[k, j] = h[k − j], 0 for j > k
    return P, Pw[K], O, T, g[::-1].T


@functools.lru_cache(maxsize=64)
def _toeplitz_index(K: int) -> np.ndarray:
    """Index (K, K) into ``h`` (K + 1,) of :func:`block_matrices`: k − j on and below the diagonal, K (the 0) above."""
    lag = np.subtract.outer(np.arange(K), np.arange(K))
    idx = np.where(lag >= 0, lag, K)
    idx.flags.writeable = False
    return idx


#: at most this many columns, with a joint state q·columns of at most _INTERLEAVED_STATE, run as one
#: interleaved column (:func:`_block_filter_rows`) rather than as a batch of blocks
_INTERLEAVED_COLUMNS, _INTERLEAVED_STATE = 4, 8


def _interleaved(q: int, columns: int) -> bool:
    """Whether ``columns`` signals of a state of size q run as rows of interleaved blocks (:func:`_block_filter_rows`).

    A batch of blocks costs a small product per block, which a few columns do not fill. Measured on
    10⁵ samples (median of 40, against lfilter): biquad on two channels 1.97 → 0.80 ms (0.84), on four
    2.50 → 1.87 ms (1.64-1.73); ``tf_filter`` of order 4 on two channels 2.44 → 0.96 ms (0.83-0.86).
    Larger joint states (order 4 on three or four channels) made temporaries of ~2 MB that faulted
    1300-2000 pages a call (3.3-5.4 ms): they run side by side (:func:`_side_by_side`).
    """
    return columns == 1 or (columns <= _INTERLEAVED_COLUMNS and q * columns <= _INTERLEAVED_STATE)


#: fewer columns than this (biquads, q = 2: than _SIDE_BY_SIDE_BIQUADS) that do not run interleaved
#: (:func:`_interleaved`) run side by side (:func:`_block_filter_columns`), each as a single column with
#: the blocks of a single column (:func:`block_length`), a segment of the signal at a time: segments of
#: about _SEGMENT_NUMBERS numbers of all columns (512 KiB: the segment's copies stay in cache)
_SIDE_BY_SIDE_COLUMNS, _SIDE_BY_SIDE_BIQUADS, _SEGMENT_NUMBERS = 8, 6, 2**16


def _side_by_side(q: int, columns: int) -> bool:
    """Whether ``columns`` signals of a state of size q run side by side (:func:`_block_filter_columns`).

    A batch of blocks (:func:`block_filter`) costs a small product per block, which a few columns do not
    fill, and interleaved rows (:func:`_block_filter_rows`) multiply by ``⊗ I_L``: their products
    waste a factor L. Measured on 10⁵ samples against sosfilt (best of 21 in 3 rounds, one process,
    batch of blocks → side by side): 2 sections on 3 channels 1.88x → 1.06x, on 4 channels 1.43x →
    0.91x; 3 sections on 2 channels 2.13x → 1.13x, on 3 channels 1.85x → 1.03x; 4 sections on 4
    channels 1.38x → 1.07x, on 7 channels 0.99x → 0.84x; ``tf_filter`` of order 4 on 3 channels 1.70x →
    0.87x (lfilter 0.70x). Blocks of K = 8q measured faster than K = 4q in this form for q <= 8
    (geometric mean over 11 cases: 0.99x against 1.06x sosfilt; for q > 8, 4q: see :func:`block_length`),
    segments of 2^16 numbers faster than 2^15 or 2^17. From 8 columns on the batch of blocks is as fast
    or faster (2 sections on 8 channels 0.78x against 0.69-0.74x; 16 channels 0.64x against 0.63-0.77x),
    and for biquads from 6 (0.79x against 0.84x).
    """
    limit = _SIDE_BY_SIDE_COLUMNS if q > 2 else _SIDE_BY_SIDE_BIQUADS
    return 1 < columns < limit and not _interleaved(q, columns)


def _segment_blocks(K: int, columns: int, M: int) -> int:
    """Blocks per segment of :func:`_block_filter_columns`: about _SEGMENT_NUMBERS numbers of all columns, at most M."""
    return max(1, min(M, _SEGMENT_NUMBERS // (K * columns)))


def block_length(q: int, columns: int, n: int, block: int = BLOCK) -> int:
    """The block length K of :func:`block_filter` for a state of size q, ``columns`` signals of n samples.

    ``max(block, 4q)`` — ``8q`` for a single column, whose cost is the carry's fixed work per block
    rather than the products (``tf_filter`` of order 4 on one channel of 10⁵ samples: 0.71 → 0.67 ms,
    against 0.39 ms for ``lfilter``), and for a few columns side by side (:func:`_side_by_side`) with
    q <= 8 — and at most n. Side by side with q > 8 the plan's extended-precision powers (O(K q³)) cost
    more than the blocks save: ``diagonal_ssm_filter`` with 32 modes on two channels of 2·10⁴ samples,
    first call 481 → 202 ms, later calls 1.64 → 1.17 ms with 4q; 10 sections on three channels 0.97x →
    0.86x sosfilt, error against a long-double recursion 7.0e-10 → 1.1e-9 for a Chebyshev I cascade of
    15 sections (sosfilt 2.9e-10). (K = 32 for every single column was faster for q > 4, but less
    accurate: 9.8e-9 against 9.0e-10 for a Chebyshev cascade of 15 sections whose sosfilt error is
    3.0e-10.) A few interleaved columns (:func:`_interleaved`) take ``max(2q, 32 // columns)``, so that a
    block of all columns holds about 32 numbers (measured for biquads and order 4 on 2-4 channels: K =
    8, 16, 32 tried).
    """
    if columns == 1 or (q <= 8 and _side_by_side(q, columns)):  # side by side, each column is a single column
        k = max(block, 8 * q)
    elif _interleaved(q, columns):
        k = max(2 * q, 32 // columns)
    else:
        k = max(block, 4 * q)
    return max(min(k, n), 1)


class _BlockPlan(NamedTuple):
    """What :func:`block_filter` computes from the filter and the lengths alone (:func:`_block_plan`)."""

    P: np.ndarray  # A^0 … A^K (float64)
    AK: np.ndarray  # A^K, extended precision
    O: np.ndarray  # rows C A^k
    T: np.ndarray  # Toeplitz matrix of h[0 … K−1]
    G: np.ndarray  # columns A^{K−1−j} B
    levels: list  # the _Level of each level of the carry's state_scan (interleaved rows: column_scan's _ColumnLevel)
    lifted: tuple = ()  # interleaved columns (_block_filter_rows): Tᵀ ⊗ I, Oᵀ ⊗ I, Gᵀ ⊗ I


#: plans of recently used filters (:func:`_block_plan`), most recent last
_PLANS: collections.OrderedDict = collections.OrderedDict()
_PLANS_MAX = 32
#: the most bytes the kept plans may hold together (a cascade of 20 sections, q = 40, has plans of ~2 MiB)
_PLANS_BYTES = 32 * 2**20


def _plan_bytes(plan: _BlockPlan | None) -> int:
    if plan is None:
        return 0
    return (sum(z.nbytes for z in plan[:5]) + sum(z.nbytes for lv in plan.levels for z in _arrays(lv))
            + sum(z.nbytes for z in plan.lifted))


def _arrays(level) -> list:
    """The arrays a level of a plan holds (a :class:`_Level` or a :class:`_ColumnLevel`)."""
    return [z for z in level[:5] if isinstance(z, np.ndarray)]


_plans_lock = threading.Lock()


def _new_plans_lock() -> None:
    global _plans_lock
    _plans_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # a child forked while another thread held the lock must not wait for it
    os.register_at_fork(after_in_child=_new_plans_lock)


def _block_plan(A, B, C, D, K: int, M: int, max_growth: float, section: int | None,
                width: int = 0) -> _BlockPlan | None:
    """The lifted matrices of :func:`block_matrices` and the levels of the carry (:func:`scan_levels`,
    as :class:`_Level`; as :class:`_ColumnLevel` of the block map times I_width for ``width``
    interleaved columns, :func:`_block_filter_rows`) for blocks of K samples and M blocks, or None
    where a power the algorithm would apply has an ∞-norm above ``max_growth`` (see
    :func:`block_filter`).

    They depend on the filter, K and M only, and cost about a third of a call on one channel of
    10⁵ samples (a 4th-order filter: 0.35 of 1.0 ms measured), so the last :data:`_PLANS_MAX` are
    kept (together at most :data:`_PLANS_BYTES`), as ``scipy.fft`` keeps its plans, keyed by the
    exact bytes of A, B, C, D and the lengths; a plan's arrays are read-only. The key also holds
    everything else they are computed from (the base length of the scan and the extended type,
    which tests may change), so a kept plan is always the one that would be computed.
    """
    A, B, C = (np.asarray(z, dtype=np.float64) for z in (A, B, C))
    key = (A.shape, A.tobytes(), B.tobytes(), C.tobytes(), float(D), K, M, float(max_growth), section, width,
           _STATE_SCAN_BASE, np.dtype(_wide(np.float64)).str)
    with _plans_lock:
        if key in _PLANS:
            _PLANS.move_to_end(key)
            return _PLANS[key]
    plan = _new_block_plan(A, B, C, D, K, M, max_growth, section, width)
    if plan is not None:
        for z in plan[:5]:
            z.flags.writeable = False
        for lv in plan.levels:
            for z in _arrays(lv):
                z.flags.writeable = False
        for z in plan.lifted:
            z.flags.writeable = False
    with _plans_lock:
        _PLANS[key] = plan
        held = sum(_plan_bytes(p) for p in _PLANS.values())
        while _PLANS and (len(_PLANS) > _PLANS_MAX or held > _PLANS_BYTES):  # the oldest go first
            held -= _plan_bytes(_PLANS.popitem(last=False)[1])
    return plan


def _new_block_plan(A, B, C, D, K: int, M: int, max_growth: float, section: int | None,
                    width: int = 0) -> _BlockPlan | None:
    P, AK, O, T, G = block_matrices(A, B, C, D, K)
    if power_growth(P, section=section) > max_growth:  # before the levels' powers: no work for a refused filter
        return None
    levels = scan_levels(AK, M)
    # the levels apply powers A^(Kj + i) = (A^K)^j A^i; with ‖A^K‖ < 1 (∞-norm, submultiplicative) none
    # exceeds the largest of A^0 … A^K, so only a slowly decaying filter needs their norms
    if max_growth < np.inf and power_growth(P[K:], section=section) >= 1.0 and power_growth(*levels, section=section) > max_growth:
        return None
    if not width:
        return _BlockPlan(P, AK, O, T, G, [_level(P_l) for P_l in levels])
    if width == 1:
        levels = column_levels(AK, M, levels)
    else:  # the block map of the interleaved state, A^K ⊗ I (its powers are those of A^K, with exact zeros)
        levels = column_levels(np.kron(AK, np.eye(width)), M)
    # Tᵀ ⊗ I (KL, KL), Oᵀ ⊗ I (qL, KL), Gᵀ ⊗ I (KL, qL); for L = 1 the transposes alone (np.kron costs
    # ~30 µs a call, a tenth of a first call on one column)
    lifted = tuple(np.ascontiguousarray(z.T if width == 1 else np.kron(z.T, np.eye(width))) for z in (T, O, G))
    return _BlockPlan(P, AK, O, T, G, levels, lifted)


def block_filter(A, B, C, D, x: np.ndarray, s0: np.ndarray, block: int = BLOCK, max_growth: float = np.inf,
                 section: int | None = None):
    """y and the final state for x (..., N, d), state s0 (..., q, d): the block algorithm.

    For the real state space ``s[n] = A s[n−1] + B x[n]``, ``y[n] = C s[n−1] + D x[n]``, a block
    of K samples entered in state s outputs and leaves

        y_k = C A^k s + Σ_{j≤k} h[k−j] x_j        (zero-input + zero-state response, §13.1 of the book)
        s_K = A^K s + Σ_j A^{K−1−j} B x_j,

    so with each block's entering state stacked on its inputs, ``[s; x_blk]``, every output of
    every block and channel is ONE product with the K × (q+K) matrix ``[O  T]``. The entering
    states themselves obey ``s' = A^K s + G x_blk`` — a recursion over N/K blocks of a
    q-dimensional state, solved without a Python loop over blocks by :func:`state_scan`.

    Returns None instead when a power of A that the algorithm would apply in float64 (A^k for
    k <= K, and the powers of A^K of :func:`state_scan`) has an ∞-norm above ``max_growth``
    (:func:`power_growth`): each such product rounds with an error of about ε‖A^k‖·|s|, where the
    sample recursion rounds with ε‖A‖·|s|, so the block algorithm is less accurate than the
    recursion by about the powers' growth (clustered poles; see :data:`refimpl.iir.GROWTH_MAX`).
    ``section``: measure the growth on the diagonal blocks of that size only (a cascade, see
    :func:`power_growth`).

    Everything that depends on the filter and the lengths alone (the lifted matrices, the
    levels of the carry, the growth check) is kept for the last few filters used
    (:func:`_block_plan`): filtering many signals with one filter computes it once.

    One column, or a few whose joint state is small (:func:`_interleaved`: a biquad on up to four
    channels), runs with the blocks of all columns as the rows of one matrix
    (:func:`_block_filter_rows`); other few columns (:func:`_side_by_side`: fewer than 8) run each as
    a single column, side by side, a segment at a time (:func:`_block_filter_columns`); more columns
    run as a batch of blocks, ``[O T]`` times each block's stacked ``[s; x_blk]``.
    """
    q = A.shape[0]
    lead, n, d = x.shape[:-2], x.shape[-2], x.shape[-1]
    if n == 0:
        return x.copy(), s0.copy()
    L = math.prod(lead) * d
    K = block_length(q, L, n, block)
    M, full = -(-n // K), n // K
    rows, columns = _interleaved(q, L), _side_by_side(q, L)
    if columns:  # the single-column plan, for the blocks of one segment and the state after it
        Ms = _segment_blocks(K, L, M)
        plan = _block_plan(A, B, C, D, K, Ms + 1, max_growth, section, width=1)
    else:
        plan = _block_plan(A, B, C, D, K, M, max_growth, section, width=L if rows else 0)
    if plan is None:
        return None
    P, AK, O, T, G, levels, lifted = plan
    X, S0 = _columns(x, lead), _columns(s0, lead)  # (N, L), (q, L): all batch entries × channels
    if rows or columns:  # one or a few columns: interleaved rows, or each column on its own
        y, s_end = _block_filter_columns(P, G, lifted, X, S0, levels, Ms) if columns else \
            _block_filter_rows(P, G, lifted, X, S0, levels)
        return _uncolumns(y, lead), _uncolumns(s_end, lead)
    blocks = X[: full * K].reshape(full, K, L)  # the complete blocks, a view of x
    last = np.zeros((K, L))  # the last block, zero-padded
    last[: n - (M - 1) * K] = X[(M - 1) * K :]
    U = np.empty((M, q, L))  # U_m = G x_blk: the state block m leaves behind from rest
    U[:full] = G @ blocks
    if full < M:
        U[-1] = G @ last
    S = state_scan(AK, U, S0, levels=levels)  # s_{(m+1)K} = A^K s_{mK} + U_m
    OT = np.concatenate([O, T], axis=1)  # [O T]
    Y = np.empty((M, K, L))
    for rows, s_x in _stacked_blocks(S, blocks, last):
        np.matmul(OT, s_x, out=Y[rows])  # y_blk = [O T] [s; x_blk] = C A^k s + Σ_j h[k−j] x_j
    y = Y.reshape(M * K, L)[:n]
    s_end = _state_after(P, G, S[-1], last[: n - (M - 1) * K])
    return _uncolumns(y, lead), _uncolumns(s_end, lead)


def _state_after(P, G, s: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """The state (q, L) after the last block, entered in state ``s`` (q, L), from its r samples ``inputs``
    (r, L): ``A^r s + Σ_j A^{r−1−j} B x_j``, with P = A^0 … A^K and the columns A^{K−1−j} B of G."""
    r = inputs.shape[0]
    return P[r] @ s + G[:, G.shape[1] - r :] @ inputs


def _columns(a: np.ndarray, lead: tuple) -> np.ndarray:
    """(…, n, d) -> (n, L): the batch entries and channels as the L columns (``a`` itself when 2-D)."""
    return np.moveaxis(a, -2, 0).reshape(a.shape[-2], -1) if lead else a


def _uncolumns(a: np.ndarray, lead: tuple) -> np.ndarray:
    """The inverse of :func:`_columns`: (n, L) -> (…, n, d)."""
    return np.moveaxis(a.reshape((a.shape[0],) + lead + (-1,)), 0, -2) if lead else a


def _block_filter_rows(P, G, lifted: tuple, x: np.ndarray, s0: np.ndarray, levels: list):
    """:func:`block_filter` for one or a few columns x (N, L), state s0 (q, L): every block of all
    columns is a row, ``Xb`` (M, K·L), a view of x (sample j of column l at j·L + l).

    The same algorithm with the products transposed, on the interleaved signal: the states the
    blocks leave behind from rest are ``Xb (Gᵀ ⊗ I_L)`` (M, q·L), the entering states ``S`` follow
    from them by :func:`column_scan` with the block map ``A^K ⊗ I_L`` (levels of
    :func:`column_levels`), and the outputs are ``Xb (Tᵀ ⊗ I_L) + S (Oᵀ ⊗ I_L)`` = Σ_j h[k−j] x_j +
    C A^k s, already in x's layout — 2-D products with many rows instead of M small ones, written slab
    by slab straight into y: no temporary as large as the signal (each would cost a page fault per
    4 KiB, as much as the arithmetic). One column (L = 1) is the plain form.
    """
    (q, K), (n, L) = G.shape, x.shape
    M, full = -(-n // K), n // K
    r = n - (M - 1) * K  # samples in the last block
    Tt, Ot, Gt = lifted  # Tᵀ ⊗ I_L (KL, KL), Oᵀ ⊗ I_L (qL, KL), Gᵀ ⊗ I_L (KL, qL), from the plan
    last = np.zeros((K, L))  # the last block, zero-padded
    last[:r] = x[(M - 1) * K :]
    Xb = x[: full * K].reshape(full, K * L)  # the complete blocks, one per row
    U = np.empty((M, q * L))  # U_m = G x_blk, per column
    _matmul(Xb, Gt, out=U[:full])
    if full < M:
        U[-1] = last.reshape(-1) @ Gt
    S = column_scan(U, s0.reshape(q * L), levels)  # entering states, (M, q·L)
    y = np.empty((n, L))
    Y = y[: full * K].reshape(full, K * L)
    step = max(1, _PIECE_MACS // (K * L * (K + q) * L))
    for i in range(0, full, step):  # slabs of blocks: y_blk = Σ_j h[k−j] x_j + C A^k s
        rows = slice(i, min(i + step, full))
        np.matmul(Xb[rows], Tt, out=Y[rows])
        Y[rows] += S[rows] @ Ot
    if full < M:
        y[full * K :] = (last.reshape(-1) @ Tt + S[-1] @ Ot).reshape(K, L)[:r]
    return y, _state_after(P, G, S[-1].reshape(q, L), last[:r])  # the state after the last sample


def _block_filter_columns(P, G, lifted: tuple, x: np.ndarray, s0: np.ndarray, levels: list, Ms: int):
    """:func:`block_filter` for a few columns x (N, L), state s0 (q, L), each column as a single
    column (the plan of one column, for ``Ms`` + 1 blocks), side by side, a segment of ``Ms`` blocks at a time.

    Per segment, every column's blocks are copied transposed (sample j of block m of column l at
    ``Z[l, m, q + j]``), so that each block is a row of one column, as in :func:`_block_filter_rows`
    with L = 1, but for all columns at once: ``u_m = x_blk Gᵀ`` (one product per column), the
    entering states by :func:`column_scan` over the columns side by side (from the state the previous
    segment leaves: row Ms of its scan, the state after the segment's last block), written beside the
    inputs, and the outputs ``[s_mᵀ | x_blkᵀ] [Oᵀ ; Tᵀ]`` = C A^k s + Σ_j h[k−j] x_j — one product per
    column — copied back into x's layout. The products carry no ``⊗ I_L`` and no product per block; the
    segment's buffers (about :data:`_SEGMENT_NUMBERS` numbers) are reused from segment to segment and
    stay in cache, so that no temporary as large as the signal is made (each costs a page fault per 4 KiB).
    """
    (q, K), (n, L) = G.shape, x.shape
    Tt, Ot, Gt = lifted  # Tᵀ (K, K), Oᵀ (q, K), Gᵀ (K, q): the single-column plan
    OT = np.concatenate([Ot, Tt])  # [Oᵀ ; Tᵀ] (q + K, K)
    M = -(-n // K)
    Z = np.empty((L, Ms, q + K))  # per column and block of the segment: [s_mᵀ | x_blkᵀ]
    U = np.empty((L, Ms + 1, q))  # u_m = G x_blk; row Ms (after the segment's last block): no input
    U[:, Ms] = 0.0
    Y = np.empty((L, Ms, K))
    y = np.empty((n, L))
    s = np.ascontiguousarray(s0.T)  # the state entering the segment, per column
    for m0 in range(0, M, Ms):  # a loop over segments of Ms blocks, not over samples
        mb = min(Ms, M - m0)  # blocks in this segment
        a, b = m0 * K, min(n, (m0 + mb) * K)
        full = (b - a) // K  # complete blocks (all but the signal's last, if it is short)
        X = Z[:, :mb, q:]
        X[:, :full] = x[a : a + full * K].reshape(full, K, L).transpose(2, 0, 1)
        if full < mb:  # the signal's last block, zero-padded
            r = b - a - full * K
            X[:, full, :r] = x[a + full * K : b].T
            X[:, full, r:] = 0.0
        if mb < Ms:
            U[:, mb:Ms] = 0.0
        np.matmul(X, Gt, out=U[:, :mb])  # u_m = Σ_j A^{K−1−j} B x_j
        S = column_scan(U, s, levels)  # s_m entering block m of the segment, and s_Ms after it (L, Ms + 1, q)
        Z[:, :mb, :q] = S[:, :mb]
        np.matmul(Z[:, :mb], OT, out=Y[:, :mb])  # y_blk = C A^k s + Σ_j h[k−j] x_j
        Yc = Y[:, :mb].reshape(L, mb * K)
        if L <= 4:  # column by column (a strided write per column): faster for a few columns, measured
            for col in range(L):
                y[a:b, col] = Yc[col, : b - a]
        else:
            y[a:b] = Yc[:, : b - a].T
        s = S[:, mb]
    last = Z[:, mb - 1, q : q + n - (M - 1) * K]  # the inputs of the last block, per column (L, r)
    return y, _state_after(P, G, S[:, mb - 1].T, last.T)  # the state after the last sample (q, L)


def _stacked_blocks(S: np.ndarray, blocks: np.ndarray, last: np.ndarray):
    """Yield ``(rows, [s_m; x_blk_m] for m in rows)``, a slab of blocks at a time.

    ``S`` (M, q, L) are the entering states, ``blocks`` (M or M−1, K, L) the complete blocks (a
    view of the signal, read in place) and ``last`` (K, L) the zero-padded last block. The slab
    is one reused buffer of (slab, q+K, L) numbers within the workspace budget, so the scratch
    memory is cache-sized instead of another copy of the signal.
    """
    (M, q, L), K, full = S.shape, last.shape[0], blocks.shape[0]
    slab = per_block((q + K) * L)
    buf = np.empty((min(slab, M), q + K, L))
    for m0 in range(0, M, slab):  # a loop over slabs of blocks, not over samples
        m1 = min(m0 + slab, M)
        buf[: m1 - m0, :q] = S[m0:m1]
        buf[: min(m1, full) - m0, q:] = blocks[m0:m1]
        if m1 > full:
            buf[m1 - 1 - m0, q:] = last
        yield slice(m0, m1), buf[: m1 - m0]
