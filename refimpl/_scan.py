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
