"""Associative (parallel-prefix) scan for diagonal first-order linear recurrences.

    h_i = a_i ⊙ h_{i-1} + b_i,   i = 0 .. N-1,   h_{-1} = 0

is the composition of the affine maps h ↦ a_i h + b_i. Composition is associative,

    (a_j, b_j) ∘ (a_i, b_i) = (a_j a_i, a_j b_i + b_j),

so all prefixes can be formed in ceil(log2 N) vectorized sweeps (Hillis & Steele 1986):
sweep s combines every element with the one 2^s places earlier. This is O(N log N) work
and O(log N) sequential depth, the shape of GPU scans (Blelloch 1990; Martin & Cundy 2018),
and it only ever multiplies the given coefficients, so |a_i| <= 1 never overflows (unlike the
closed form h_i = Π a · Σ b / Π a, which divides by vanishing products).

Used by the exact SDE sampler (chapter 1) and, later, by the SSM and Kalman scans.
"""

from __future__ import annotations

import numpy as np


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
    P = np.empty((K + 1,) + F.shape, dtype=Fw.dtype)
    P[0] = np.eye(F.shape[0])
    for k in range(K):
        P[k + 1] = Fw @ P[k]
    return P


def _split(F: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``F = hi + lo`` with float64 (complex128) ``hi``, ``lo``; ``lo`` is None when F is exact in float64."""
    narrow = np.complex128 if F.dtype.kind == "c" else np.float64
    hi = F.astype(narrow)
    lo = (F - hi).astype(narrow)
    return hi, (lo if np.any(lo) else None)


#: recursions this short are run step by step in :func:`state_scan` (the base case)
_STATE_SCAN_BASE = 16


def state_scan(F: np.ndarray, U: np.ndarray, s0: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """States ``s_0 … s_{M−1}`` of ``s_{m+1} = F s_m + u_m`` (``s_0`` given), without a loop over M.

    ``F`` is (q, q), ``U`` is (M, q, L) (the last input ``u_{M−1}`` is not needed), ``s0`` is
    (q, L); the result is (M, q, L), written to ``out`` if given (it may be a strided view). This
    is the carry between blocks of the block filters (:func:`refimpl.iir.tf_filter`), where
    F = A^K is the state matrix over one block.

    Two levels, applied recursively: cut the M steps into super-blocks of R ≈ √M steps. From
    rest, super-block r ends in the state

        e_r = Σ_j F^{R−1−j} u_{rR+j}                       (one matrix product for all r),

    so the super-block start states obey the same kind of recursion, c_{r+1} = F^R c_r + e_r,
    on only M/R steps (solved by this function); the R steps inside the super-blocks then run
    for all super-blocks at once (R vectorized steps). About 2√M small steps in all, each a
    BLAS product of shape (q, q) × (q, M/R · L).

    ``F`` may be given in extended precision (``np.longdouble``, from :func:`matrix_powers`):
    the repeated products ``F s`` then use the float64 pair ``F = hi + lo`` (two products), so
    that F's rounding error — systematic, applied at every step — does not accumulate.
    """
    M, q, L = U.shape
    F = np.asarray(F)
    hi, lo = _split(F)
    dtype = np.result_type(hi, U, s0)
    S = np.empty((M, q, L), dtype=dtype) if out is None else out

    def step(s, u):  # F s + u, with F = hi + lo
        return hi @ s + u if lo is None else hi @ s + (lo @ s + u)

    if M <= _STATE_SCAN_BASE:
        if M:
            S[0] = s0
        for m in range(M - 1):
            S[m + 1] = step(S[m], U[m])
        return S
    R = int(np.ceil(np.sqrt(M)))
    M2, full = -(-M // R), M // R  # super-blocks, complete ones
    rest = M - full * R
    # inputs state-major, (R, q, M2, L): step k of every super-block is one (q, M2·L) slab
    Ut = np.empty((R, q, M2, L), dtype=dtype)
    Ut.transpose(2, 0, 1, 3)[:full] = U[: full * R].reshape(full, R, q, L)
    if rest:
        Ut[:, :, -1] = 0.0
        Ut[:rest, :, -1] = U[full * R :]
    P = matrix_powers(F, R)  # extended precision
    Fe = P[R - 1 :: -1].transpose(1, 0, 2).reshape(q, R * q).astype(hi.dtype)  # [F^{R−1} … F^0]
    E = (Fe @ Ut.reshape(R * q, M2 * L)).reshape(q, M2, L)  # e_r for every r, one product
    C = state_scan(P[R], E.transpose(1, 0, 2), s0)  # c_r: the state entering super-block r
    St = np.empty((R, q, M2 * L), dtype=dtype)
    St[0] = C.transpose(1, 0, 2).reshape(q, M2 * L)
    Ut = Ut.reshape(R, q, M2 * L)
    for k in range(R - 1):
        St[k + 1] = step(St[k], Ut[k])  # s_{rR+k+1} = F s_{rR+k} + u_{rR+k}, every r at once
    St = St.reshape(R, q, M2, L)
    S[: full * R].reshape(full, R, q, L)[...] = St[:, :, :full].transpose(2, 0, 1, 3)
    if rest:
        S[full * R :] = St[:rest, :, -1]
    return S


def state_scan_loop(F: np.ndarray, U: np.ndarray, s0: np.ndarray) -> np.ndarray:
    """Loop twin of :func:`state_scan`: ``s_{m+1} = F s_m + u_m``, one step at a time."""
    M = U.shape[0]
    S = np.empty(U.shape, dtype=np.result_type(F, U, s0))
    s = s0
    for m in range(M):
        S[m] = s
        s = F @ s + U[m]  # in F's precision (extended if F is np.longdouble)
    return S
