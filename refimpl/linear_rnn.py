r"""Linear-recurrent attention as adaptive filtering: SSD (Mamba-2), GLA, RetNet, DeltaNet, RLS.

Chapter 16 of the book (``notebooks/16-linear-recurrences.ipynb``) derives every formula here.

Every layer of this module keeps a matrix state ``S_t`` (d_v × d_k) that maps keys to values and
reads it out with the query, ``o_t = S_t (scale · q_t)``. They differ only in how a new pair
(k_t, v_t) is written:

* linear attention (Katharopoulos et al. 2020): ``S_t = S_{t−1} + v_t k_tᵀ``, accumulate and
  never forget (Eq. (16.1));
* gated linear attention (Yang et al. 2024a, GLA) and RetNet's retention (Sun et al. 2023):
  ``S_t = S_{t−1} Diag(g_t) + v_t k_tᵀ`` with a gate ``g_t ∈ (0, 1]`` per key channel or per
  head — a forgetting factor (Eqs. (16.2), (16.6));
* Mamba-2's state-space duality (Dao & Gu 2024, SSD): the same with a scalar gate
  ``g_t = exp(Δ_t A)`` per head and the pair (k, v, q) = (Δ_t B_t, x_t, C_t) (Eq. (16.7));
* the delta rule (Schlag et al. 2021; Yang et al. 2024b, DeltaNet; Yang et al. 2025, Gated
  DeltaNet): ``S_t = g_t S_{t−1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ`` — one normalized LMS
  (Widrow–Hoff) step on the regression v ≈ S k (Eqs. (16.9)–(16.10), the update (6.6) of
  chapter 6);
* recursive least squares on the same regression (:func:`rls_memory`, Eq. (16.13)): the exact
  (exponentially weighted, ridge) least-squares map, a Kalman filter with a static state
  (chapter 3).

Each exists as a recurrence (``*_loop``, one time step at a time), a dense masked "attention"
form where one exists (``*_parallel``/``ssd_quadratic``), and a chunked algorithm — the
vectorized default — that runs the quadratic form inside chunks of ``chunk_size`` steps and
passes the state between chunks, so that the cost is O(L · chunk_size) instead of O(L²).

Numerical care. Gates are given and combined in log space. A decay between steps s < t is
``exp(seg[t, s])`` with the *segment sum* ``seg[t, s] = Σ_{r=s+1}^{t} log g_r ≤ 0`` (Eq. (16.4)),
accumulated from its own start (cumulative sums of a masked matrix, or suffix sums), never as a
difference of two long prefix sums (which cancels) and never as a quotient ``Π g / Π g`` (which
under- and overflows). Every exponent is ≤ 0: nothing overflows at any length, and decays that
underflow to 0 are correct to the last bit. Inside one chunk, the chunked algorithms write
``e^{seg[t, s]} = e^{cum_t} · e^{−cum_s}`` with the chunk's own cumulative log-gate ``cum`` (a
row and a column scaling around one BLAS product) only where the chunk's total decay stays above
``e^{−30}``: there ``e^{−cum} ≤ e^{30}`` cannot overflow, and each weight carries the rounding of the
two cumulative sums, a relative error of order ``|cum|·ε`` (``|cum| ≤ 30``) and at most about
``(c − 1)·|cum|·ε`` where the roundings of the ``c − 1`` additions add up (chapter 16, §16.2, measures
both: 30 to 200 ε for random gates, above 200 ε for gates chosen to make the roundings add up). Chunks
that decay further (gates near 0) take the segment sums.

From the reference codebases' layouts (for a kernel under test)
---------------------------------------------------------------
refimpl puts the heads before the sequence axis, (batch, H, L, ·); the reference codebases put
the sequence first. The functions :func:`mamba_chunk_scan_combined`, :func:`chunk_gla`,
:func:`chunk_simple_gla`, :func:`chunk_delta_rule`, :func:`chunk_gated_delta_rule` and their
``*_vjp`` backward passes take the official names, layouts and options and do the mapping below
(a kernel is then compared with its own calling convention). With ``t = lambda a: np.moveaxis(a, 1, 2)`` (swap the L and H axes):

* Mamba-2, ``mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D)`` with x (b, l, h, p),
  dt (b, l, h), B, C (b, l, g, n): ``t(ssd(t(x), t(dt), A, t(B), t(C), D))``. Its ``dt_bias``
  and ``dt_softplus`` are applied by the caller first (``dt = softplus(dt + dt_bias)``), and its
  ``z`` gate (``y · silu(z)``) after; a per-channel D (h, p) is ``ssd(..., D=None)`` plus
  ``D[:, None, :] * x``. Its ``initial_states`` (b, h, p, n) are ``ssd(..., initial_state=...)``
  in the same layout, and the final state of ``return_final_states=True`` (b, h, p, n) is refimpl's
  last chunk state, ``ssd(..., return_chunk_states=True)[1][..., -1, :, :]``. In the backward pass
  the gradient flowing into the final states is ``ssd_vjp(..., dfinal_state=...)`` and the
  initial states' gradient its ``"dinitial_state"``.
* fla's ``chunk_gla(q, k, v, g)`` (``g`` the log-gate, (B, T, H, K)) and
  ``chunk_gated_delta_rule(q, k, v, g, beta)`` (``g`` (B, T, H)): ``t(...)`` on every array,
  ``log_g = t(g)``; the default scale is K^{−1/2} in both. fla's states are (K, V), refimpl's
  (Dv, Dk): transpose them. ``chunk_delta_rule`` expects ℓ2-normalized keys as refimpl does
  (``use_qk_l2norm_in_kernel=True`` normalizes q and k inside the kernel: do the same before
  calling refimpl; raw keys of norm below ~0.011, e.g. the zero keys of padding, stay short after
  fla's ``x / sqrt(Σ x² + 1e-6)``, which :func:`delta_rule` refuses and ``chunk_delta_rule``
  accepts). With ``T = lambda s: np.swapaxes(s, -1, -2)``: fla's ``initial_state=h0``
  (B, H, K, V) is ``initial_state=T(h0)``; its ``output_final_state=True`` state ``ht`` is
  ``T`` of refimpl's last chunk state (``return_chunk_states=True``, entry ``[..., -1, :, :]``); in
  the backward pass its ``dht`` is ``dfinal_state=T(dht)`` and its ``dh0`` is
  ``T(grads["dinitial_state"])`` of the ``*_vjp`` functions. Without an initial state refimpl
  starts from S = 0, as fla and Mamba-2 do. (The state before the first step is S_{−1} here: the
  first gate g_0 decays it, as in both codebases.)

Glossary (code name → symbol in the book / the papers)
------------------------------------------------------
``L``               sequence length (T in GLA/DeltaNet, L in Mamba-2).
``q`` (..., L, Dk)  queries q_t (GLA: Q; Mamba-2 SSD: C_t). ``Dk``: key dimension d_k.
``k`` (..., L, Dk)  keys k_t (Mamba-2: B_t, scaled by Δ_t).
``v`` (..., L, Dv)  values v_t (Mamba-2: x_t, with Dv = P the head dimension).
``S`` (Dv, Dk)      the state S_t (GLA writes its transpose; Mamba-2: h_t, shape (P, N)).
``log_g``           log-gates log g_t ≤ 0: per key channel (..., L, Dk) (GLA's α_t) or per
                    head (..., L) (Mamba-2's Δ_t A, RetNet's log γ, Gated DeltaNet's log α_t).
``gamma`` (H,)      RetNet's fixed decay γ per head.
``beta`` (..., L)   the delta rule's writing strength β_t (the NLMS step size).
``x`` (..., H, L, P)   SSD input x_t per head h (P = head dimension).
``dt`` (..., H, L)  SSD step Δ_t ≥ 0 (after the softplus; Δ_t = 0 leaves the state unchanged).
``A`` (H,)          SSD's scalar state matrix per head, A ≤ 0 (Mamba-2: −exp(A_log)).
``B``, ``C`` (..., G, L, N)  SSD input/output projections, G groups shared by H/G heads each
                    (head h uses group h // (H/G)); N the state size d_state.
``D`` (H,)          SSD's skip connection.
``chunk_size``      Q in Mamba-2, C in GLA/DeltaNet: the chunk length of the chunked algorithm.
``seg``             segment sums Σ_{r=s+1}^{t} log g_r (Mamba-2's ``segsum``).
``T``, ``W``, ``U`` the delta rule's UT transform, WY factor and pseudo-values (Eq. (16.11)).
``lam``, ``delta``  RLS forgetting factor λ and initial regularization δ (Eqs. (6.7)–(6.8)).

Conventions: heads are leading (batch) axes and broadcast; the sequence axis is second to last;
all arrays are float64; outputs are read *after* the update (o_t sees (k_t, v_t)). The default
``scale`` is ``1/sqrt(Dk)`` as in softmax attention (Eq. (4.1)); the chapter's regression
experiments use ``scale=1``, where ``o_t = S_t q_t`` is the filter's prediction of the value.

References
----------
.. [1] T. Dao, A. Gu, "Transformers are SSMs: generalized models and efficient algorithms
       through structured state space duality" (Mamba-2), ICML 2024, §3–§6, Listing 1.
.. [2] S. Yang, B. Wang, Y. Shen, R. Panda, Y. Kim, "Gated linear attention transformers with
       hardware-efficient training" (GLA), ICML 2024, §3–§4.
.. [3] Y. Sun et al., "Retentive network: a successor to Transformer for large language
       models" (RetNet), arXiv:2307.08621, 2023, §2.1, Eqs. (1)–(7).
.. [4] I. Schlag, K. Irie, J. Schmidhuber, "Linear transformers are secretly fast weight
       programmers", ICML 2021, §4 (the delta rule).
.. [5] S. Yang, B. Wang, Y. Zhang, Y. Shen, Y. Kim, "Parallelizing linear transformers with the
       delta rule over sequence length" (DeltaNet), NeurIPS 2024, §3 (WY representation,
       UT transform).
.. [6] S. Yang, J. Kautz, A. Hatamizadeh, "Gated delta networks: improving Mamba2 with delta
       rule", ICLR 2025, §3.
.. [7] B. Widrow, M. E. Hoff, "Adaptive switching circuits", IRE WESCON 1960 (LMS).
.. [8] S. Haykin, *Adaptive Filter Theory*, 5th ed., 2014, ch. 6–7 (NLMS) and 10 (RLS).
"""

from __future__ import annotations

import contextvars
import math
from typing import NamedTuple

import numpy as np
from scipy.linalg import blas, lapack
from scipy.special import expit

from . import _blocking
from ._validate import (
    as_bool,
    as_int,
    as_int_array,
    as_positive_scalar,
    as_real_array,
    _sum_is_finite,
    check_finite_part,
    check_part,
    guard_overflow,
    pow2_scale,
    row_norms,
    vouch_finite,
)
from .attention import _scale  # scale = 1/√Dk unless given, as in softmax attention

__all__ = [
    "ssd",
    "ssd_loop",
    "ssd_quadratic",
    "gated_linear_attention",
    "gated_linear_attention_loop",
    "gated_linear_attention_parallel",
    "retention",
    "retention_loop",
    "retention_parallel",
    "delta_rule",
    "delta_rule_loop",
    "rls_memory",
    "rls_memory_loop",
    "segsum",
    "KEY_NORM_TOL",
    "BETA_MAX",
    "mamba_chunk_scan_combined",
    "mamba_chunk_scan_combined_loop",
    "chunk_gla",
    "chunk_gla_loop",
    "chunk_simple_gla",
    "chunk_simple_gla_loop",
    "chunk_delta_rule",
    "chunk_delta_rule_loop",
    "chunk_gated_delta_rule",
    "chunk_gated_delta_rule_loop",
]

#: Keys of the delta rule must be ℓ2-normalized: |‖k_t‖ − 1| ≤ KEY_NORM_TOL = 2^−8. Unit keys
#: stored in any precision kernels use pass (rounding each entry to bfloat16 moves the norm by at
#: most 2^−8, float16 by 2^−11): refimpl then runs on a model's own bfloat16 keys, and on the
#: rounded keys :func:`refimpl.oracle.compare` hands to a kernel. Unnormalized keys do not.
KEY_NORM_TOL = 2.0**-8
#: The delta rule's β_t must lie in [0, BETA_MAX]: with unit keys, the interval where the write ``I − β k kᵀ`` is
#: non-expansive (Eq. (16.14); β = 0 writes nothing, β = 2 is a reflection). Outside it the call is refused as a
#: likely bug (a sign or a scale gone wrong), not because the recurrence could not be computed.
BETA_MAX = 2.0

# Bound on the elements of the temporaries of the exact paths (chunks that decay fast), per block of chunks.
_BLOCK_ELEMS = 1 << 18
# Chunks whose decay stays above e^{-_FACTOR_LOG} use the factored form e^{cum_t} e^{-cum_s};
# the others take segment sums.
_FACTOR_LOG = 30.0
_TINY = math.exp(-_FACTOR_LOG)  # e^{−cum} is evaluated as 1 / max(e^{cum}, _TINY) <= e^{30}
# SSD's skip D x_t rides on the diagonal of the chunk products as D / Δ_t times the value row x_t Δ_t e^{−cum_t}
# (_skip_diagonal) only while every Δ_t >= _FOLD_MIN_W. A subnormal value row keeps fewer digits (its rounding
# error is up to 2^−1075 absolute), and D / Δ_t multiplies that error back up: Δ = 1e−305 with x ~ 1e−15 gave
# D x_t to 4 digits. With Δ_t >= 2^−511, the square root of the normal range, the row (>= |x_t| Δ_t, as
# e^{−cum} >= 1) stays normal for every |x_t| >= 2^−511, and for smaller x_t the lost absolute error
# |D| 2^−1075 / Δ_t <= |D| 2^−564 is far below the round-off of any output of normal size. Below it, D x_t is
# added to the output after the product (exact; two more passes over the output).
_FOLD_MIN_W = 2.0**-511
# Rows (batch × chunks × chunk length) per group of chunks in the chunked algorithms. Each pass over a group reads
# and writes arrays of (rows × Dk) floats, and the fastest size followed the size of a core's L2 cache: one row per
# KiB of it (measured at H = 4, L = 8192, d = 64 on two threads: with a 2 MiB L2, 2048 rows ran faster than 512,
# 1024 or 4096; with a 1 MiB L2, 1024 rows ran SSD 6 %, GLA per channel 8-14 % and the delta rule 12 % faster than
# 2048). The groups change no result: every chunk is computed by the same operations (bitwise, tested).
_GROUP_ROWS = min(4096, max(512, (_blocking.l2_cache_bytes() or 2 << 20) >> 10))


# The chunked algorithms split independent heads (or batch entries, or SSD's groups) over threads
# (refimpl._blocking.in_parts). Their BLAS calls are small (at most 64 × 64 outputs each with the
# default chunk and heads of up to 64 dimensions; measured with OpenBLAS 0.3: such calls stay on the
# calling thread, while a (64 × 64)(64 × 256) product already uses two): the cores are used by
# splitting the heads, not by splitting each small product, which stalls whenever one of its threads
# is descheduled on a busy machine (measured: SSD 13 times slower with one competing process when its
# four heads stood side by side in (64 × 64)(64 × 256) products). With heads of 128 dimensions (or
# chunks of 128) the products do exceed 64 × 64 outputs, so while the heads run in threads BLAS is held
# to one thread (in_parts(one_blas=True); measured at H = 4, L = 4096, d = 128: SSD 107 -> 51 ms, GLA
# 108 -> 66 ms, the delta rule 169 -> 70 ms). The split changes no result: each head is computed by
# the same operations.


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _real(x, name: str, **kwargs) -> np.ndarray:
    """``as_real_array`` without a copy: the inputs are never written to."""
    return as_real_array(x, name, copy=False, **kwargs)


def _seq(x, name: str, what: str, finite: bool = True) -> np.ndarray:
    arr = _real(x, name, finite=finite)
    if arr.ndim < 2:
        raise ValueError(f"{name}: expected shape {what}, got shape {arr.shape}")
    return arr


def _batch(pairs) -> tuple:
    """Broadcast the batch shapes of (name, batch_shape) pairs, or name the first that fails."""
    shape = ()
    for name, b in pairs:
        try:
            shape = np.broadcast_shapes(shape, b)
        except ValueError:
            raise ValueError(f"{name}: batch axes {b} do not broadcast with the others {shape}") from None
    return shape


def _check_state(state, name: str, batch: tuple, shape: tuple, what: str, heads: int | None = None):
    """A state ``(..., *shape)`` (an initial state, or the cotangent of the final one) as a float64 array
    broadcast to ``new + shape``, and ``new``: the broadcast of ``batch`` with its batch axes (which may add
    axes or entries: one state per batch entry and head, or one shared). ``heads``: the layer's number of
    heads H, the last batch axis of ``batch`` (SSD, retention), named in the errors."""
    s = _real(state, name)
    sizes = ((heads,) if heads else ()) + shape
    expected = f"{name}: expected shape {what} = (..., {', '.join(map(str, sizes))})"
    if s.ndim < len(shape) or s.shape[s.ndim - len(shape):] != shape:
        raise ValueError(f"{expected}, got shape {s.shape}")
    if heads and s.ndim > len(shape) and s.shape[-len(shape) - 1] not in (1, heads):
        raise ValueError(f"{expected} with H = {heads} heads (or 1, shared), got shape {s.shape}")
    new = _batch([("the inputs", batch), (name, s.shape[: s.ndim - len(shape)])])
    return np.broadcast_to(s, new + shape), new


def _rebatch(batch: tuple, new: tuple, *arrays):
    """``arrays`` (each with the batch shape ``batch`` first) broadcast to the batch shape ``new``."""
    if new == batch:
        return arrays
    return tuple(np.broadcast_to(a, new + a.shape[len(batch):]) for a in arrays)


def _check_qkv(q, k, v, finite: bool = True):
    """q, k, v as float64 arrays; ``finite=False`` leaves their finiteness to the caller
    (:func:`refimpl._validate.check_finite_part`, in the threads that read them)."""
    q = _seq(q, "q", "(..., L, Dk)", finite)
    k = _seq(k, "k", "(..., L, Dk)", finite)
    v = _seq(v, "v", "(..., L, Dv)", finite)
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"k: expected the same last dimension Dk = {q.shape[-1]} as q, got shape {k.shape}")
    if k.shape[-2] != q.shape[-2]:
        raise ValueError(f"k: expected the same length L = {q.shape[-2]} as q, got shape {k.shape}")
    if v.shape[-2] != q.shape[-2]:
        raise ValueError(f"v: expected the same length L = {q.shape[-2]} as q, got shape {v.shape}")
    return q, k, v


def _check_log_g(log_g, L: int, dk: int, kdim: int, name: str = "log_g", allow_channel: bool = True,
                 finite: bool = True):
    """Log-gates ≤ 0, per key channel (ndim == k.ndim, (..., L, Dk)) or per head ((..., L)).
    ``finite=False``: the whole check of the values — NaN and ±∞ (as in :func:`_check_qkv`) and
    the sign (:func:`_check_gates_part`) — is left to the threads that read them."""
    g = _real(log_g, name, finite=finite)
    if allow_channel and g.ndim == kdim and g.ndim >= 2:
        if g.shape[-2:] != (L, dk):
            raise ValueError(f"{name}: expected per-channel gates (..., L, Dk) = (..., {L}, {dk}), got shape {g.shape}")
        per_channel = True
    elif g.ndim == kdim - 1 and g.ndim >= 1:
        if g.shape[-1] != L:
            raise ValueError(f"{name}: expected per-head gates (..., L) with L = {L} (the steps of q, k, v), got shape {g.shape}")
        per_channel = False
    else:
        want = "(..., L, Dk) (per key channel) or (..., L) (per head)" if allow_channel else "(..., L)"
        raise ValueError(f"{name}: expected shape {want} with as many leading axes as k, got shape {g.shape}")
    if finite:
        _check_gate_sign(g, name)
    return g, per_channel


def _check_gate_sign(g: np.ndarray, name: str) -> None:
    """Log-gates ≤ 0: a positive one is refused by name with the maximum over all of ``g``; NaN
    or +∞ (possible only where the finiteness check is deferred) gets the finiteness error first."""
    top = g.max() if g.size else -np.inf
    if not np.isfinite(top) and top != -np.inf:  # NaN or +inf: the finiteness error first
        _real(g, name)
    if top > 0:
        raise ValueError(f"{name}: expected log-gates <= 0 (gates in (0, 1]), got maximum {top:.6g}")


def _check_gates_part(view: np.ndarray, part: slice, g: np.ndarray, name: str) -> None:
    """The sign check of :func:`_check_gate_sign` in the thread that reads ``view[part]`` (a part of
    the log-gates ``g`` as given), like :func:`refimpl._validate.check_finite_part`: one maximum
    over the part instead of one over all of ``g`` on one core first (0.9 ms of 23 for gated
    linear attention at H = 4, L = 8192, Dk = 64). A part that fails is judged with all of ``g``,
    so the error is the same whichever part finds it."""
    piece = view[part]
    if piece.size and not piece.max() <= 0:  # NaN fails here too
        _check_gate_sign(g, name)


def _check_chunk(chunk_size) -> int:
    return as_int(chunk_size, "chunk_size", minimum=1)


def _effective_chunk(c: int, L: int) -> int:
    """The chunk length the chunked algorithms run with: ``min(c, L)``, at least 1.

    A chunk longer than the sequence only pads it with zeros, in (c, c) temporaries (at L = 10,
    ``chunk_size=4096`` took 2.5 s and ``10**9`` ran out of memory); one chunk of L steps is the
    same computation and gives the one chunk-end state that ceil(L / chunk_size) = 1 promises.
    """
    return max(1, min(c, L))


# ---------------------------------------------------------------------------------------------
# Segment sums, Eq. (16.4)
# ---------------------------------------------------------------------------------------------


def segsum(a) -> np.ndarray:
    r"""Segment sums ``seg[..., t, s] = Σ_{r=s+1}^{t} a_r`` for s ≤ t, ``−inf`` for s > t.

    Implements Eq. (16.4) of the book (Dao & Gu 2024, Listing 1, ``segsum``).

    Parameters
    ----------
    a : array_like, shape (..., L)
        Per-step log-decays (log-gates), typically ≤ 0.

    Returns
    -------
    seg : ndarray, shape (..., L, L)
        ``exp(seg)`` is the lower-triangular decay matrix ``Π_{r=s+1}^{t} g_r`` (1 on the
        diagonal, exactly 0 above it).

    Notes
    -----
    Each sum is accumulated from its own start — the cumulative sum down the columns of the
    matrix ``X[t, s] = a_t`` (t > s), 0 elsewhere — so no entry is the difference of two long
    prefix sums ``Λ_t − Λ_s``, which loses all digits when both are large (a gate of 0.5 over
    10⁵ steps gives prefix sums near −7·10⁴, and a difference of adjacent ones keeps ~12 of the
    16 digits; the segment sum keeps all of them).

    Examples
    --------
    >>> np.exp(segsum(np.log([0.5, 0.25, 0.5]))).round(12).tolist()  # products of the gates g_{s+1} ... g_t
    [[1.0, 0.0, 0.0], [0.25, 1.0, 0.0], [0.125, 0.5, 1.0]]
    >>> a = -np.random.default_rng(0).uniform(size=5)  # short and small: a prefix-sum difference is accurate here
    >>> cs = np.cumsum(a)
    >>> bool(np.allclose(np.tril(segsum(a)), np.tril(cs[:, None] - cs[None, :])))
    True
    """
    a = as_real_array(a, "a")
    if a.ndim < 1:
        raise ValueError(f"a: expected shape (..., L), got shape {a.shape}")
    return _segsum(a)


def _segsum(a: np.ndarray) -> np.ndarray:
    seg = _segsum_lower(a)
    np.copyto(seg, -np.inf, where=_above(seg.shape[-1]))  # s > t: no path from s to t
    return seg


def _segsum_lower(a: np.ndarray) -> np.ndarray:
    """The segment sums of :func:`segsum` for s ≤ t, and 0 (not −∞) for s > t."""
    L = a.shape[-1]
    seg = np.empty(a.shape + (L,))
    seg[...] = a[..., :, None]  # X[t, s] = a_t
    np.copyto(seg, 0.0, where=~np.tri(L, L, -1, dtype=bool))  # keep t > s only
    np.cumsum(seg, axis=-2, out=seg)  # seg[t, s] = Σ_{s<r≤t} a_r, in place (0 for s >= t)
    return seg


def _exp_segsum(a: np.ndarray) -> np.ndarray:
    """``exp(segsum(a))``: the decay matrices ``Π_{r=s+1}^{t} g_r``, exactly 0 above the diagonal.

    The same numbers as ``np.exp(_segsum(a))``, but the exponential runs on the 0 above the
    diagonal and those entries are zeroed after it: NumPy's float64 ``exp`` takes a slow path
    for −∞ (a (c, c) block half −∞ took about 3.7 times as long; measured).
    """
    seg = _segsum_lower(a)
    np.exp(seg, out=seg)
    np.copyto(seg, 0.0, where=_above(seg.shape[-1]))
    return seg


def _above(L: int) -> np.ndarray:
    """The (L, L) boolean mask of s > t (above the diagonal)."""
    return ~np.tri(L, L, 0, dtype=bool)


def _chunks(x: np.ndarray, c: int, axis: int) -> np.ndarray:
    """Zero-pad ``axis`` (the sequence) to a multiple of ``c`` and split it into (n_chunks, c)."""
    axis = axis % x.ndim
    L = x.shape[axis]
    nc = -(-L // c)
    pad = nc * c - L
    if pad:
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, pad)
        x = np.pad(x, widths)
    return x.reshape(x.shape[:axis] + (nc, c) + x.shape[axis + 1 :])


def _suffix(a: np.ndarray, axis: int) -> np.ndarray:
    """Exclusive suffix sums ``Σ_{r>s} a_r`` along ``axis`` (from the end: no subtraction)."""
    rev = np.flip(np.cumsum(np.flip(a, axis), axis), axis)  # Σ_{r≥s}
    out = np.zeros_like(a)
    idx_dst = [slice(None)] * a.ndim
    idx_src = [slice(None)] * a.ndim
    idx_dst[axis] = slice(0, -1)
    idx_src[axis] = slice(1, None)
    out[tuple(idx_dst)] = rev[tuple(idx_src)]  # Σ_{r≥s+1}
    return out


# ---------------------------------------------------------------------------------------------
# Gated linear attention: the shared chunked core, Eqs. (16.2)-(16.5)
# ---------------------------------------------------------------------------------------------


_CUM_BLOCK = 8  # rows per block of the two-level in-chunk cumulative sums (_chunk_cumsum)


def _cumsum_triangles(c: int) -> tuple:
    """The triangles of ones :func:`_chunk_cumsum` multiplies by for chunks of ``c`` rows (made once per call of
    a core, not once per group of chunks)."""
    b = _CUM_BLOCK
    if c % b or c < 2 * b:
        return (np.tri(c),)
    return np.tri(b), np.tri(c // b, k=-1)


def _chunk_cumsum(g: np.ndarray, out: np.ndarray, tris: tuple) -> np.ndarray:
    """``out[..., t, :] = Σ_{r<=t} g[..., r, :]``: inclusive cumulative sums down the chunk axis (-2).

    Two levels for chunks of a multiple of :data:`_CUM_BLOCK` rows: the sums within blocks of 8
    rows (a product with the (8, 8) triangle of ones), then each block's offset (the totals of the
    blocks before it, a product with the strict triangle over blocks) added to its rows. Measured
    (chunks of 64 × 64, 32 chunks, one thread): 110 us, against 235 us for the products with the
    (64, 64) triangle (in halves) and 870 us for ``np.cumsum`` down this axis. Each sum keeps a
    relative error of order (rows) × ε, as with the single triangle. Other chunk lengths: one
    product with the (c, c) triangle of ones. ``tris``: :func:`_cumsum_triangles` of the chunk length.
    """
    c, b = g.shape[-2], _CUM_BLOCK
    if len(tris) == 1:
        return np.matmul(tris[0], g, out=out)
    shape = g.shape[:-2] + (c // b, b, g.shape[-1])
    blocks = np.matmul(tris[0], g.reshape(shape), out=out.reshape(shape))  # sums within each block
    blocks += np.matmul(tris[1], blocks[..., -1, :])[..., None, :]  # + the earlier blocks' totals
    return out


def _group(rows: int, c: int, width: int = 64) -> int:
    """Chunks per group: the work runs on groups of chunks whose temporaries stay in cache, ``_GROUP_ROWS``
    rows (``rows`` batch entries × chunks × ``c`` steps) of up to 64 floats; for wider heads (``width`` =
    max(Dk, Dv) > 64) proportionally fewer rows, the same bytes (measured with a 1 MiB L2 at d = 128: 512 rows
    ran GLA per channel 15 % faster than 1024, SSD 2 %)."""
    return max(1, _GROUP_ROWS * 64 // (max(1, rows * c) * max(64, width)))


def _gla_chunked(q, k, v, logg, c: int, keep_states: bool = True, scale: float = 1.0, finite=(), init=None):
    """Chunked ``S_t = S_{t−1} Diag(g_t) + v_t k_tᵀ``, ``o_t = S_t (scale · q_t)``.

    ``q, k`` (*b, L, Dk), ``v`` (*b, L, Dv), ``logg`` (*b, L, Dk) or (*b, L, 1), all broadcast to
    one batch shape. Returns ``o`` (*b, L, Dv) and the chunk-end states (*b, n_chunks, Dv, Dk)
    (None without ``keep_states``). The batch entries (heads) are split over threads. ``finite``:
    (name, argument) pairs whose finiteness each thread checks on the slices it reads (in the order
    q, k, v, log g, the same arrays as ``q, k, v, logg`` before broadcasting); with a gate per key
    channel only after computing, and only if its output is not finite or a chunk decayed fast
    (either follows from a NaN or ±∞ among them, see ``run`` below). ``init``, optional:
    the initial state S_{−1} (*b, Dv, Dk), the state entering the first chunk (None: 0).
    """
    batch, (L, dk), dv = q.shape[:-2], q.shape[-2:], v.shape[-1]
    c = _effective_chunk(c, L)
    nb, nc = math.prod(batch), -(-L // c)
    q, k, v, logg = (a.reshape((nb,) + a.shape[-2:]) for a in (q, k, v, logg))
    init_t = None if init is None else np.swapaxes(init.reshape((nb,) + init.shape[-2:]), -1, -2)  # S_{−1}ᵀ (a view)
    checks = [(name, view, arg) for (name, arg), view in zip(finite, (q, k, v, logg))]
    gates = checks[3:]  # (log_g, its view, log_g as given): the sign is checked by the parts too

    def check_gates(sl):
        for name, view, arg in gates:
            _check_gates_part(view, sl, arg, name)

    def validate(sl):  # the gates' sign, then the finiteness of q, k, v, log g (check_part: in this order over all)
        check_gates(sl)
        check_finite_part(checks, sl)

    if 0 in (nb, L, dk, dv):  # nothing to compute: S_t q_t is 0 (Dk = 0) or empty, as are the states
        validate(slice(None))
        return np.zeros(batch + (L, dv)), np.zeros(batch + (nc, dv, dk)) if keep_states else None
    o = np.empty((nb, nc, c, dv))
    states = np.empty((nb, nc, dk, dv)) if keep_states else None  # transposed chunk-end states
    if logg.shape[-1] == 1:  # one gate per head: the scalar core, one group per head

        def run(sl):
            check_part(validate, sl)
            _scalar_chunked(q[sl], k[sl], v[sl, None], logg[sl, None, :, 0], c, o[sl, None],
                            None if states is None else states[sl, None], scale=scale,
                            init=None if init_t is None else init_t[sl, None])
    else:
        # The per-channel core carries scale · S (see _channel_chunked): its chunk-end states would have to be
        # divided by the scale, which fails for scale = 0 and loses digits for a subnormal one. With the states
        # asked for, each thread scales its queries instead and runs the core with scale 1 (one pass over q;
        # calls without states keep the scale in the core).
        q_scaled = states is not None and scale != 1.0

        def run(sl):
            def gates_ok(block):  # the gates' sign (check_gates), checked on each group of chunks as the core
                if not block.max() <= 0:  # reads it: the block is then in cache for its cumulative sums (NaN fails)
                    check_part(check_gates, sl)

            qs, s = (q[sl] * scale, 1.0) if q_scaled else (q[sl], scale)
            fast = _channel_chunked(qs, k[sl], v[sl], logg[sl], c, o[sl], None if states is None else states[sl],
                                    s, init=None if init_t is None else init_t[sl], check=gates_ok if gates else None)
            # The finiteness of the inputs, checked after the fact: a NaN or ±inf in q, k or v reaches the output
            # (q_t through o_t; k_s and v_s through the weights of o_s, times 0 where masked: NaN), and −∞ in
            # log g (NaN and +∞ are refused before, by check_gates) makes its chunk decay fast. One sum over the
            # part's output, in cache, instead of four over the inputs (5 to 8 % of the time at H = 4,
            # L = 8192, Dk = 64); the check itself is the same, so is its error. A finite sum also vouches
            # for the part's output (vouch_finite below: the guard need not read it again).
            if checks:
                finite_out[sl.start] = not fast and _sum_is_finite(o[sl])
                if not finite_out[sl.start]:
                    check_part(validate, sl)

    finite_out = {}  # part → whether its output was summed to a finite number
    _blocking.in_parts(run, nb, q.size, one_blas=True)
    o = o.reshape(nb, nc * c, dv)[:, :L].reshape(batch + (L, dv))
    if finite_out and all(finite_out.values()):
        vouch_finite(o)
    if states is not None:
        states = np.swapaxes(states, -1, -2).reshape(batch + (nc, dv, dk))
    return o, states


def _channel_chunked(q, k, v, logg, c: int, o, states=None, scale: float = 1.0, init=None, check=None):
    """The chunked form with a gate per key channel; ``q, k, logg`` (nb, L, Dk), ``v`` (nb, L, Dv).

    Writes the output, padded to whole chunks, into ``o`` (nb, n_chunks, c, Dv) and, unless
    None, the transposed chunk-end states ``S_endᵀ`` into ``states`` (nb, n_chunks, Dk, Dv).
    ``scale`` multiplies the queries; the output is linear in them, so the scale rides on the
    keys and the carried state (``scale · Kfᵀ``, ``scale · S``): the transposing copy of the
    keys that the products below need anyway scales them, no pass over the output or the
    queries. ``states`` only with ``scale`` = 1 (then the carried state is S itself; the caller
    scales the queries, :func:`_gla_chunked`). ``init``, optional: the transposed initial state
    ``S_{−1}ᵀ`` (nb, Dk, Dv) entering the first chunk (None: 0). ``check``, optional: called with
    each group's log-gates before they are read (the caller's sign check, :func:`_gla_chunked`: then
    they are in cache for the cumulative sums). Returns whether a chunk took the exact path below
    (decayed fast, or met −∞ in ``logg``).

    In a chunk with in-chunk cumulative log-gates ``cum_t = Σ_{r=start}^{t} log g_r`` (one
    vector per step), ``e^{seg_j[t, s]} = e^{cum_tj} e^{−cum_sj}``: with ``Qe = Q ⊙ e^{cum}`` and
    ``Kf = K ⊙ e^{−cum}`` the in-chunk form (16.3) is ``tril(Qe Kfᵀ) V`` (BLAS), the readout of
    the entering state ``S_in`` is ``Qe S_inᵀ``, and the chunk's end state is
    ``S_endᵀ = Diag(e^{cum_end}) (S_inᵀ + Kfᵀ V)`` (16.5). This holds (each weight to a relative error of
    order ``|cum|·ε``, at most about ``(c − 1)·|cum|·ε``: the roundings of the cumulative sums; §16.2) where the
    chunk's total decay stays above ``e^{−_FACTOR_LOG}`` (then ``e^{−cum} <= e^{30}``); chunks
    that decay further (gates near 0) are recomputed from segment sums, whose exponents are all
    <= 0, and pass their state on as ``Diag(e^{cum_end}) S_inᵀ + local`` with the decay inside
    ``local`` (e^{cum_end} may underflow to 0 there).

    The chunk's rows are processed in two halves (sub-chunks of c/2 rows; one block for c < 16):
    the rows of the first half see only the first half of the keys, so the upper-right quarter
    of ``tril(Qe Kfᵀ)`` (all zeros) is neither computed nor multiplied, the mask applies to the
    two diagonal quarters only: 3/4 of the flops of the weights and of their product with V (the
    same sums: only products with the zeros of the mask are dropped). The readout ``Qe S_inᵀ``
    and the in-chunk part are two products added in cache; the values are read where they are,
    in the input (one product of ``[Qe | tril(Qe Kfᵀ)]`` with ``[S_inᵀ ; V]`` would need a copy
    of V below each state, and its 32 × 128 × 64 products ran at 49 GFLOP/s against 64 for
    64 × 64 × 64 on one core; measured per group of 32 chunks: 672 against 585 us, the copy and
    the sum included). The cumulative log-gates take two levels, blocks of 8 rows and their offsets
    (:func:`_chunk_cumsum`). ``Kfᵀ`` is written transposed, so both of its products are plain
    (NN) ones (OpenBLAS ran ``Qe Kfᵀ`` with a transposed operand 1.4 to 1.5 times slower at
    64 × 64 × 64; the transposing copy costs less than that, a few % of the time overall).
    Each product has at most 64 × 64 outputs per call for the default chunk and Dk, Dv <= 64,
    so OpenBLAS keeps it on the calling thread (see :func:`refimpl._blocking.in_parts`).

    With the heads split over two threads, a NumPy call can wait for the interpreter lock held by
    the other thread's Python work between its calls: two heads (L = 8192, d = 64) took 18.8 ms
    alone, 19.0 ms in each of two processes side by side and 21.3 ms in each of two threads. So the
    calls per group are few: the triangles of the cumulative sums are made once, one scalar test
    finds a group without fast-decaying chunks, the chunk-end states are stored by one copy per group.
    """
    nb, L, dk = q.shape
    dv = v.shape[-1]
    if states is not None and scale != 1.0:
        raise ValueError("_channel_chunked: chunk-end states need scale = 1 (scale the queries instead)")
    qc, kc, vc, gc = (_chunks(a, c, -2) for a in (q, k, v, logg))  # (nb, nc, c, ·)
    nc = qc.shape[1]
    h = c // 2 if c >= 16 else c
    parts = ((0, h), (h, c)) if h < c else ((0, c),)  # row blocks [r0, r1): they see the keys s < r1
    tris = _cumsum_triangles(c)
    above = np.zeros((c, c), dtype=bool)  # the mask's zeros that the row blocks compute: above the diagonal of
    for r0, r1 in parts:  # their diagonal blocks (set by one masked copy per group: half the time of a product
        above[r0:r1, r0:r1] = _above(r1 - r0)  # with each block's triangle, 33 against 62 us per group of 32 chunks)
    # Groups of _group's rows (as the other cores). A quarter of them kept one thread's temporaries in a 2 MiB L2
    # cache and ran 5 to 10 % faster on one thread, but with the heads split over two threads the whole call
    # took 15 % longer (H = 4, L = 8192, Dk = Dv = 64: 26.5 against 23 ms, medians of 15, interleaved runs).
    m = min(nc, _group(nb, c, max(dk, dv)))
    QE = np.empty((nb, m, c, dk))  # Qe = q ⊙ e^{cum}
    W = np.empty((nb, m, c, c))  # tril(Qe Kfᵀ), times the scale
    SIN = np.empty((nb, m + 1, dk, dv))  # scale · S_inᵀ per chunk, and after the last one
    SIN[:, 0] = 0.0 if init is None else init * scale  # entering the first group
    S = SIN[:, m]  # leaving a whole group (the next one copies it to its first slot)
    T = np.empty((nb, m, c, dv))  # the in-chunk part of the output
    Y = np.empty((nb, m, c, dk))  # cum, then e^{cum}
    KT = np.empty((nb, m, dk, c))  # scale · Kfᵀ = scale · (k ⊙ e^{−cum})ᵀ
    D = np.empty((nb, m, dk, dv))  # e^{cum_end} of each chunk, along the rows of Sᵀ
    LOC = np.empty((nb, m, dk, dv))  # each chunk's own contribution to its end state
    # the views the state passing reads and writes, made once for all groups (the buffers are reused): its loop
    # makes two small NumPy calls a chunk, and with the heads split over threads the Python work between them
    # waits for the interpreter lock (the loop took 1.3 ms of 18 per two heads in one thread, 3.1 of 23 in each
    # of two; 2.3 with these views)
    z_in, loc, dec_j = [SIN[:, j] for j in range(m + 1)], [LOC[:, j] for j in range(m)], [D[:, j] for j in range(m)]
    fast = False  # whether a chunk decayed fast (the return value)
    g0 = 0
    while g0 < nc:  # groups of chunks (temporaries in cache)
        sl = slice(g0, min(nc, g0 + m))
        mm = sl.stop - g0
        Qe, Wg, Sg, Tg, Eg, KTg, gg, vg = QE[:, :mm], W[:, :mm], SIN[:, :mm], T[:, :mm], Y[:, :mm], KT[:, :mm], \
            gc[:, sl], vc[:, sl]
        if check is not None:
            check(gg)
        _chunk_cumsum(gg, Eg, tris)  # cum_t = Σ_{r=start}^{t} log g_r
        np.exp(Eg, out=Eg)  # e^{cum_t}
        np.multiply(qc[:, sl], Eg, out=Qe)  # q_t ⊙ e^{cum_t}
        # e^{cum_end}: each chunk's decay per key channel (the rows of Sᵀ), spread over the columns (so that each
        # step of the state passing below is a plain contiguous product: a broadcast took twice as long)
        dec = D[:, :mm]
        np.copyto(dec, Eg[:, :, -1, :, None])
        mixed = Eg[:, :, -1].min() < _TINY  # whether a chunk decays fast (then the exact path for it, below)
        strong = dec[..., 0].min(axis=-1) < _TINY if mixed else None  # which ones
        if mixed and strong.all():  # every chunk of the group takes the exact path: no factored form to overwrite
            local = LOC[:, :mm]
        else:
            # k_s ⊙ e^{−cum_s}; e^{cum} >= e^{cum_end} >= e^{−30} in a chunk that does not decay fast (the
            # log-gates are <= 0), else clamped there (the exact path below where it matters)
            # (divided in place, then written transposed: a contiguous division and a transposing copy took
            # 2/3 of the time of one division with a transposed output, 98 against 149 us per group)
            np.divide(kc[:, sl], np.maximum(Eg, _TINY, out=Eg) if mixed else Eg, out=Eg)
            if scale == 1.0:
                np.copyto(KTg, np.swapaxes(Eg, -1, -2))
            else:
                np.multiply(np.swapaxes(Eg, -1, -2), scale, out=KTg)
            for r0, r1 in parts:  # Σ_j q_tj k_sj e^{seg_j[t, s]}, the rows [r0, r1) for the keys s < r1
                np.matmul(Qe[:, :, r0:r1], KTg[..., :r1], out=Wg[:, :, r0:r1, :r1])
            np.copyto(Wg, 0.0, where=above)  # s <= t (the upper-right quarter is neither written nor read)
            local = np.matmul(KTg, vg, out=LOC[:, :mm])  # scale Σ_s (k_s ⊙ e^{−cum_s}) v_sᵀ
        if mixed:
            sb, sn = np.nonzero(strong)
            _channel_exact(Wg, local, qc[:, sl], kc[:, sl], vg, gg, sb, sn, scale)
        if g0:
            Sg[:, 0] = S  # the state leaving the previous group
        if not mixed:
            for z, l_, d_, nxt in zip(z_in, loc, dec_j, z_in[1 : mm + 1]):  # state passing (16.5), times the scale
                np.add(z, l_, nxt)
                np.multiply(nxt, d_, nxt)
        else:
            # A head and chunk that decays fast passes Diag(e^{cum_end}) S_inᵀ + local on (the exact path's local
            # carries the decay), every other Diag(e^{cum_end}) (S_inᵀ + local); each by its own arithmetic whatever
            # the other heads do, so that a head's result does not depend on how the heads are shared out between
            # threads
            n_fast = strong.sum(axis=0).tolist()
            for j in range(mm):
                nxt = z_in[j + 1]
                if n_fast[j] == nb:
                    np.multiply(z_in[j], dec_j[j], out=nxt)
                    nxt += loc[j]
                else:
                    np.add(z_in[j], loc[j], out=nxt)
                    nxt *= dec_j[j]
                    if n_fast[j]:
                        b = strong[:, j]
                        nxt[b] = Sg[b, j] * dec[b, j] + local[b, j]
        if states is not None:
            states[:, sl] = SIN[:, 1 : mm + 1]  # S_endᵀ (scale = 1 here)
        # S_in (q_t ⊙ e^{cum_t}) + the masked form (16.3) in the chunk, both times the scale (in S and Kf); the
        # rows [r0, r1) read the keys s < r1 only
        og = o[:, sl]
        np.matmul(Qe, Sg, out=og)
        for r0, r1 in parts:
            np.matmul(Wg[:, :, r0:r1, :r1], vg[:, :, :r1], out=Tg[:, :, r0:r1])
        og += Tg
        if mixed:
            fast = True
        g0 += mm
    return fast


def _channel_exact(scores, local, qg, kg, vg, gg, sb, sn, scale: float = 1.0):
    """Chunks that decay below ``e^{−_FACTOR_LOG}``: in-chunk weights and end-state contributions
    (with the chunk's decay) with every exponent a sum of log-gates <= 0, in blocks of at most
    about ``_BLOCK_ELEMS`` elements, both times ``scale`` (:func:`_channel_chunked`).

    The in-chunk weights ``W[t, s] = Σ_j q_tj k_sj e^{seg_j[t, s]}`` (s <= t) by halving
    (:func:`_halving_weights`); the chunk's contribution to its end state from the suffix sums
    ``Σ_{r=s+1}^{end} log g_r``.
    """
    c, dk = gg.shape[-2:]
    step = max(1, _BLOCK_ELEMS // (c * max(c, dk)))  # chunks per block (at least one)
    for sel in _by_halving_stop(gg[sb, sn], step):  # chunks that halve alike, batched
        b, n = sb[sel], sn[sel]
        k, g = kg[b, n], gg[b, n]  # (s, c, Dk)
        w = _halving_weights(qg[b, n], k, g)
        ke = k * np.exp(np.tri(c, c, -1).T @ g)  # k_s ⊙ e^{Σ_{r=s+1}^{end} log g_r} (the sums as a product)
        if scale != 1.0:
            w *= scale
            ke *= scale
        scores[b, n] = w
        local[b, n] = np.swapaxes(ke, -1, -2) @ vg[b, n]


def _by_halving_stop(g: np.ndarray, step: int):
    """Batches (index arrays, at most ``step`` long) of the chunks ``g`` (s, c, Dk) whose halvings
    (:class:`_Halving`) stop at the same block size, each chunk judged on its own gates.

    A batched halving stops where all of its chunks are mild; a chunk batched with others that
    decay faster would be halved further than on its own, by other operations: its result would
    depend on which chunks (of which heads, so of which thread) it shares a batch with. Batches
    of chunks that stop alike halve each chunk exactly as it would be halved alone.
    """
    s, c = g.shape[:2]
    P = 1 << max(0, (c - 1).bit_length())
    gp = g if c == P else np.pad(g, [(0, 0), (0, P - c), (0, 0)])
    stop = np.ones(s, dtype=np.int64)  # B = 1 where no level is mild
    open_ = np.ones(s, dtype=bool)
    B = P
    while B >= 2 and open_.any():  # the levels of _Halving.__iter__, largest blocks first
        mild = _mild_blocks(gp, B)
        stop[open_ & mild] = B
        open_ &= ~mild
        B //= 2
    for size in np.unique(stop):
        sel = np.flatnonzero(stop == size)
        for i0 in range(0, sel.size, step):
            yield sel[i0 : i0 + step]


def _mild_blocks(g: np.ndarray, B: int) -> np.ndarray:
    """Per chunk of the padded log-gates ``g`` (…, P, Dk): whether every block of B rows decays by at most
    e^{−_FACTOR_LOG} in every channel (where :class:`_Halving` stops)."""
    sums = g.reshape(g.shape[:-2] + (g.shape[-2] // B, B, g.shape[-1])).sum(axis=-2)
    return sums.min(axis=(-2, -1), initial=0.0) >= -_FACTOR_LOG


def _halving_weights(q, k, g):
    """``W[t, s] = Σ_j q_tj k_sj e^{seg_j[t, s]}`` for s <= t, 0 above the diagonal; (…, c, c).

    ``q, k, g`` (…, c, Dk), ``g`` the log-gates (<= 0): the lower-left quarters of the halvings
    (:class:`_Halving`) and the diagonal blocks where they stop, each one batched product.
    """
    c = q.shape[-2]
    halves = _Halving(q, k, g)
    W = np.zeros(halves.lead + (halves.P, halves.P))
    for level in halves:
        level.put(W, level.qa @ np.swapaxes(level.kb, -1, -2))  # (…, nb, h, h)
    rest = halves.rest()
    rest.put(W, rest.masked(rest.qa @ np.swapaxes(rest.kb, -1, -2)))  # tril within each diagonal block
    return W[..., :c, :c]


class _Halving:
    """The in-chunk decays ``e^{seg_j[t, s]}`` (s <= t) of gates per channel, by halving the chunk.

    ``q, k, g`` (…, c, Dk), ``g`` the log-gates (<= 0). The rows are halved again and again (the
    chunk padded to a power of two P with zero queries and keys, log-gates 0). A pair t, s that
    falls into different halves of a block of 2h rows, s in the first half and t in the second
    half, which starts at m, decays through the boundary,

        seg_j[t, s] = Σ_{m≤r≤t} log g_rj + Σ_{s<r<m} log g_rj,

    so that ``e^{seg_j[t, s]} = a_tj b_sj`` with both factors at most 1: every exponent is a sum of
    terms <= 0 (no difference of sums, no loss of digits; an underflow to 0 only where the weight
    is below 1e-308), and the block's lower-left quarter of any product with these decays is a
    matrix product, batched over the blocks of a level. Iterating gives one :class:`_Level` per
    halving (h = P/2, P/4, …), with ``qa = q ⊙ a`` (second halves) and ``kb = k ⊙ b`` (first
    halves). The halving stops at the first level whose blocks (of B = 2h rows) all decay by at
    most ``e^{−_FACTOR_LOG}`` in every channel, or at B = 1; :meth:`rest` then gives the pairs
    inside those diagonal blocks in the factored form of the chunked algorithm,
    ``(q_t ⊙ e^{A_t})·(k_s ⊙ e^{−A_s})`` with A the in-block cumulative log-gate (|A| <= 30: relative
    errors of order |A|·ε, at most about (B − 1)·|A|·ε, as for the chunks that never take this path). Every pair s <= t is in exactly one
    quarter or diagonal block. At most 2·P·Dk·log2(P) exponentials per chunk, where the (c, c, Dk)
    tensor of segment sums takes c²·Dk; cf. the secondary chunking of Yang et al. (2024a, GLA, §4.3),
    which makes one such split.
    """

    def __init__(self, q, k, g):
        self.lead, (c, self.dk) = q.shape[:-2], q.shape[-2:]
        self.P = 1 << max(0, (c - 1).bit_length())  # c rounded up to a power of two
        self.q, self.k, self.g = (self.pad(a) for a in (q, k, g))
        self.block = 1  # the size of the diagonal blocks left by the halvings (see rest)

    def pad(self, a):
        """``a`` (…, c, ·) with zero rows up to P (a padded key or query carries nothing)."""
        c = a.shape[-2]
        return a if c == self.P else np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, self.P - c), (0, 0)])

    def _mild(self, B: int) -> bool:
        """Whether every block of B rows decays by at most e^{−_FACTOR_LOG} in every channel."""
        return bool(_mild_blocks(self.g, B).all())

    def __iter__(self):
        h = self.P // 2
        while h >= 1:
            if self._mild(2 * h):
                self.block = 2 * h
                return
            nb = self.P // (2 * h)  # blocks of 2h rows at this level
            split = self.lead + (nb, 2, h, self.dk)
            qs, ks, gs = (a.reshape(split) for a in (self.q, self.k, self.g))
            # the sums as products with triangles of ones (BLAS; NumPy's cumsum along a short axis is slow)
            a = np.exp(np.tri(h) @ gs[..., 1, :, :])  # a_t = e^{Σ_{m≤r≤t} log g_r}
            b = np.exp(np.tri(h, h, -1).T @ gs[..., 0, :, :])  # b_s = e^{Σ_{s<r<m} log g_r}
            yield _Level(h, nb, self.lead, a, b, a * qs[..., 1, :, :], b * ks[..., 0, :, :])
            h //= 2
        self.block = 1

    def rest(self) -> "_Blocks":
        """The diagonal blocks the halvings left (call after iterating): B = ``self.block`` rows each,
        ``qa = q ⊙ e^{A}``, ``kb = k ⊙ e^{−A}``, ``a = e^{A}``, ``b = e^{−A}`` (…, P/B, B, Dk), A the
        in-block inclusive cumulative log-gate (B = 1: A = 0, q and k themselves)."""
        B = self.block
        split = self.lead + (self.P // B, B, self.dk)
        qs, ks = self.q.reshape(split), self.k.reshape(split)
        if B == 1:
            one = np.ones_like(qs)
            return _Blocks(B, self.P // B, self.lead, one, one, qs, ks)
        a = np.exp(np.tri(B) @ self.g.reshape(split))  # e^{A_t}, A_t = Σ_{start≤r≤t} log g_r
        b = 1.0 / a  # e^{−A_s} <= e^{30}: the blocks are mild
        return _Blocks(B, self.P // B, self.lead, a, b, a * qs, b * ks)


class _Factors(NamedTuple):
    """The factors ``e^{seg_j[t, s]} = a_tj b_sj`` of one stage of :class:`_Halving`: ``nb`` blocks,
    ``a, b`` (…, nb, size, Dk); ``qa = q ⊙ a``, ``kb = k ⊙ b``."""

    size: int
    nb: int
    lead: tuple
    a: np.ndarray
    b: np.ndarray
    qa: np.ndarray
    kb: np.ndarray


class _Level(_Factors):
    """One halving: blocks of 2h rows (h = ``size``); ``a`` on the second half of each block, ``b`` on the first."""

    __slots__ = ()

    @property
    def h(self) -> int:
        return self.size

    def second(self, x):
        """The rows of the second halves of ``x`` (…, P, ·), a view (…, nb, h, ·)."""
        return x.reshape(self.lead + (self.nb, 2, self.h, x.shape[-1]))[..., 1, :, :]

    def first(self, x):
        """The rows of the first halves of ``x`` (…, P, ·), a view (…, nb, h, ·)."""
        return x.reshape(self.lead + (self.nb, 2, self.h, x.shape[-1]))[..., 0, :, :]

    def quarters(self, M):
        """The lower-left quarters of the blocks of ``M`` (…, P, P), (…, nb, h, h) (a copy)."""
        i = np.arange(self.nb)
        blocks = M.reshape(self.lead + (self.nb, 2, self.h, self.nb, 2, self.h))
        return np.moveaxis(blocks[..., i, 1, :, i, 0, :], 0, -3)

    def put(self, M, quarter):
        """Write ``quarter`` (…, nb, h, h) into the lower-left quarters of the blocks of ``M`` (…, P, P)."""
        i = np.arange(self.nb)
        blocks = M.reshape(self.lead + (self.nb, 2, self.h, self.nb, 2, self.h))
        blocks[..., i, 1, :, i, 0, :] = np.moveaxis(quarter, -3, 0)  # the index axes first


class _Blocks(_Factors):
    """The diagonal blocks of :meth:`_Halving.rest`: B = ``size`` rows each; ``a = e^{A}``, ``b = e^{−A}``
    (s <= t in a block)."""

    __slots__ = ()

    @property
    def B(self) -> int:
        return self.size

    def rows(self, x):
        """``x`` (…, P, ·) by blocks, a view (…, nb, B, ·)."""
        return x.reshape(self.lead + (self.nb, self.B, x.shape[-1]))

    def blocks(self, M):
        """The diagonal blocks of ``M`` (…, P, P), (…, nb, B, B) (a copy)."""
        i = np.arange(self.nb)
        return np.moveaxis(M.reshape(self.lead + (self.nb, self.B, self.nb, self.B))[..., i, :, i, :], 0, -3)

    def put(self, M, blocks):
        """Write ``blocks`` (…, nb, B, B) into the diagonal blocks of ``M`` (…, P, P)."""
        i = np.arange(self.nb)
        M.reshape(self.lead + (self.nb, self.B, self.nb, self.B))[..., i, :, i, :] = np.moveaxis(blocks, -3, 0)

    def masked(self, blocks):
        """``blocks`` with the pairs s > t zeroed (in place)."""
        blocks *= np.tri(self.B)
        return blocks


def _scalar_chunked(q, k, v, loga, c: int, o, states=None, w=None, skip=None, scale: float = 1.0, init=None,
                    fold: bool = True):
    """The chunked form with one gate per head; the R heads of a group share ``q`` and ``k``.

    ``q, k`` (G, L, Dk); ``v`` (G, R, L, Dv); ``loga`` (G, R, L) the heads' log-gates; ``w``
    (G, R, L), optional, weights the values (SSD's Δ_s); ``skip`` (G, R), optional, adds
    ``skip_gr v_t`` to the output (SSD's D), through the diagonal of the chunk products
    (:func:`_skip_diagonal`; ``fold=False`` adds it after the products, as it must when a step's
    ``w`` is 0); ``scale`` multiplies the queries. Writes the output,
    padded to whole chunks, into ``o`` (G, R, n_chunks, c, Dv) and, unless None, the transposed
    chunk-end states ``S_endᵀ`` into ``states`` (G, R, n_chunks, Dk, Dv). ``init``, optional: the
    transposed initial states ``S_{−1}ᵀ`` (G, R, Dk, Dv) entering the first chunk (None: 0).

    With a scalar gate the decay ``e^{cum_t − cum_s}`` factors into a row and a column scaling,
    so a chunk's output is ``e^{cum_t} ⊙ ([Q | tril(Q Kᵀ)] [S_inᵀ ; V ⊙ e^{−cum}])``: one
    (c × (Dk + c)) (Dk + c × Dv) product per head and chunk does the in-chunk form (16.3) and the
    readout of the entering state at once, and its left factor is shared by the R heads of a
    group (Mamba-2's shared B, C). The product runs in two halves of rows (as in
    :func:`_channel_chunked`): the first c/2 rows see the first c/2 keys only, so they skip the
    upper-right quarter of ``tril(Q Kᵀ)`` (zeros), 7/8 of the flops (measured 11 % faster for
    16 chunks of 64 × 128 × 64, one thread). The chunk's end state is ``S_end = e^{cum_end} S_in +
    local`` for every head, ``local`` carrying the chunk's own decay. Each product has at most 64 × 64 outputs per call for the
    default chunk and Dk, Dv <= 64, so OpenBLAS keeps it on the calling thread (see
    refimpl._blocking.in_parts). Chunks that decay below ``e^{−_FACTOR_LOG}`` take
    ``(Γ ⊙ tril(Q Kᵀ)) (V ⊙ w) + e^{cum} ⊙ (Q S_inᵀ)`` per head, Γ from segment sums, in place of their
    product: batched where a group's chunks all decay so (the factored products are then skipped), gathered
    otherwise, by the same operations, so that each head's result is the same bits whichever heads share
    its thread.
    """
    G, L, dk = q.shape
    R, dv = v.shape[1], v.shape[-1]
    qc, kc = _chunks(q, c, -2), _chunks(k, c, -2)  # (G, nc, c, Dk)
    nc = qc.shape[1]
    ac = _chunks(loga, c, -1)  # (G, R, nc, c)
    cum = np.cumsum(ac, axis=-1)
    E = np.exp(cum)
    f = 1.0 / np.maximum(E, _TINY)  # e^{−cum_s} (clamped: exact path below where it matters)
    Es = E * scale if scale != 1.0 else E  # the output's row scaling (the output is linear in q)
    wc = None if w is None else _chunks(w, c, -1)
    if wc is not None:
        f *= wc
    strong = cum[..., -1] < -_FACTOR_LOG  # (G, R, nc)
    dec = E[..., -1, None, None]  # (G, R, nc, 1, 1): e^{cum_end}, the chunk's decay per head
    vc = _chunks(v, c, -2)  # (G, R, nc, c, Dv)
    tri = np.tri(c)
    fold = None if skip is None or not fold else _skip_diagonal(skip, wc, scale)
    diag = (Ellipsis, np.arange(c), np.arange(c))  # the diagonal of the (c, c) blocks
    S = np.zeros((G, R, dk, dv)) if init is None else init.copy()  # S_inᵀ entering the next group
    m = min(nc, _group(G * R, c, max(dk, dv)))
    h = c // 2 if c >= 16 else c
    parts = ((0, h), (h, c)) if h < c else ((0, c),)  # row blocks [r0, r1): they see the keys s < r1
    X = np.empty((G, 1, m, c, dk + c))  # [Q | tril(Q Kᵀ)] per chunk, shared by the R heads
    Z = np.empty((G, R, m, dk + c, dv))  # [S_inᵀ ; V ⊙ w e^{−cum}] per head and chunk
    KT = np.empty((G, 1, m, dk, c))  # Kᵀ per chunk, shared by the R heads
    LOC = np.empty((G, R, m, dk, dv))  # each chunk's own contribution to its end state
    # the views the state passing reads and writes, made once (the buffers are reused by every group; see
    # _channel_chunked)
    z_in, loc, dec_j = [Z[:, :, j, :dk] for j in range(m)], [LOC[:, :, j] for j in range(m)], [dec[:, :, j] for j in range(nc)]
    for g0 in range(0, nc, m):  # groups of chunks (temporaries in cache); L / (m c) steps
        sl = slice(g0, min(nc, g0 + m))
        mm = sl.stop - g0
        Xg, Zg, KTg = X[:, :, :mm], Z[:, :, :mm], KT[:, :, :mm]
        # Kᵀ written once, so that both of its products are plain (NN) ones: OpenBLAS ran Q Kᵀ with a transposed
        # operand 1.4 times slower (64 × 64 × 64, 431 against 306 us for 32 chunks; the copy costs 53 us)
        np.copyto(KTg, np.swapaxes(kc[:, None, sl], -1, -2))
        np.matmul(qc[:, None, sl], KTg, out=Xg[..., dk:])  # q_t · k_s
        Xg[..., dk:] *= tri
        Xg[..., :dk] = qc[:, None, sl]
        sg, sr, sn = np.nonzero(strong[:, :, sl])
        every = sg.size == G * R * mm  # every chunk of the group decays fast: segment sums, no factored form
        if every:
            if wc is None:
                Zg[..., dk:, :] = vc[:, :, sl]  # V
            else:
                np.multiply(vc[:, :, sl], wc[:, :, sl, :, None], out=Zg[..., dk:, :])  # v_s w_s
            local = LOC[:, :, :mm]
            local[...] = _own_state(kc[:, None, sl], vc[:, :, sl], ac[:, :, sl], None if wc is None else wc[:, :, sl])
        else:
            Vs = np.multiply(vc[:, :, sl], f[:, :, sl, :, None], out=Zg[..., dk:, :])  # v_s w_s e^{−cum_s}
            local = np.matmul(KTg, Vs, out=LOC[:, :, :mm])  # (Σ_s v_s w_s e^{−cum_s} k_sᵀ)ᵀ, per head
            local *= dec[:, :, sl]  # ... e^{cum_end}: the chunk's own contribution to its end state
            if sg.size:  # the end-state contributions of strongly decaying chunks, from suffix sums
                local[sg, sr, sn] = _own_state(kc[sg, g0 + sn], vc[sg, sr, g0 + sn], ac[sg, sr, g0 + sn],
                                               None if wc is None else wc[sg, sr, g0 + sn])
        Zg[:, :, 0, :dk] = S
        for j in range(mm):  # state passing (16.5): S_end = e^{cum_end} S_in + local, one formula for every head
            nxt = z_in[j + 1] if j + 1 < mm else S
            np.multiply(z_in[j], dec_j[g0 + j], out=nxt)
            nxt += loc[j]
            if states is not None:
                states[:, :, g0 + j] = nxt
        # A chunk that decays fast takes (Γ ⊙ tril(Q Kᵀ)) (V ⊙ w) + e^{cum_t} ⊙ (Q S_inᵀ), times the scale, + D x_t with
        # a folded skip, Γ from segment sums (every exponent <= 0): batched in a group whose chunks all do, gathered in
        # a mixed one, by the same operations entry by entry, so that a head's result does not depend on whether its
        # neighbours (in its thread) decay fast too
        og = o[:, :, sl]
        d_x = None if fold is None else skip  # D x_t here, when the diagonal would have carried it
        if every:
            _decaying_chunks(ac[:, :, sl], Xg[..., dk:], Zg[..., dk:, :], E[:, :, sl], qc[:, None, sl],
                             Zg[..., :dk, :], scale, None if d_x is None else d_x[:, :, None], vc[:, :, sl], out=og)
        elif fold is None:  # in-chunk (16.3) + Q S_inᵀ, without the row scaling; rows [r0, r1) read the keys s < r1
            for r0, r1 in parts:
                np.matmul(Xg[..., r0:r1, : dk + r1], Zg[..., : dk + r1, :], out=og[..., r0:r1, :])
        else:  # one product per head, the head's D / (w_t scale) on the diagonal (D x_t, see _skip_diagonal)
            blocks = Xg[:, 0, :, :, dk:]
            own = blocks[diag]  # q_t · k_t (a copy)
            for r in range(R):
                blocks[diag] = own + fold[:, r, sl]
                for r0, r1 in parts:
                    np.matmul(Xg[:, 0, :, r0:r1, : dk + r1], Zg[:, r, :, : dk + r1], out=og[:, r, :, r0:r1])
            blocks[diag] = own  # tril(Q Kᵀ) again, for the exact chunks below
        if not every:
            og *= Es[:, :, sl, :, None]  # e^{cum_t}
            if sg.size:  # the chunks that decay fast, gathered: the product above is replaced
                n = g0 + sn
                vw = vc[sg, sr, n]
                if wc is not None:
                    vw = vw * wc[sg, sr, n][..., None]
                og[sg, sr, sn] = _decaying_chunks(ac[sg, sr, n], Xg[sg, 0, sn, :, dk:], vw, E[sg, sr, n], qc[sg, n],
                                                  Zg[sg, sr, sn, :dk, :], scale, None if d_x is None else d_x[sg, sr],
                                                  vc[sg, sr, n])
        if skip is not None and fold is None:
            # + D x_t, with Z's value rows (consumed by the product) as the workspace
            og += np.multiply(vc[:, :, sl], skip[:, :, None, None, None], out=Zg[..., dk:, :])


def _decaying_chunks(a, qk, vw, e, q, s_in, scale: float, d, x, out=None):
    """The output of chunks that decay fast (:func:`_scalar_chunked`), with every exponent <= 0:
    ``(Γ ⊙ tril(Q Kᵀ)) (V ⊙ w) + e^{cum} ⊙ (Q S_inᵀ)``, times the scale, ``+ D x`` (``d`` None: without),
    Γ from the segment sums of the log-decays ``a`` (…, c); ``qk`` the masked ``tril(Q Kᵀ)``, ``e`` = e^{cum}.
    Batched over the chunks of a group or gathered from a mixed one, each chunk by the same operations."""
    y = np.matmul(_exp_segsum(a) * qk, vw, out=out)
    y += e[..., None] * (q @ s_in)
    if scale != 1.0:
        y *= scale
    if d is not None:
        y += d[..., None, None] * x  # + D x_t
    return y


def _own_state(k, v, a, w=None):
    """A chunk's own part of its end state, ``Σ_s (v_s w_s e^{Σ_{r=s+1}^{end} a_r}) k_sᵀ`` transposed, (…, Dk, Dv),
    from the suffix sums of the log-gates ``a`` (…, c) (every exponent <= 0); ``k`` (…, c, Dk), ``v`` (…, c, Dv)."""
    wk = np.exp(_suffix(a, -1))  # e^{Σ_{r=s+1}^{end} log g_r}
    if w is not None:
        wk *= w
    return np.swapaxes(k * wk[..., None], -1, -2) @ v


def _skip_diagonal(skip, wc, scale: float):
    """``D / (w_t · scale)`` per head and step, (G, R, nc, c), or None where it would not be exact.

    The skip ``D x_t`` of SSD rides in the chunk product of :func:`_scalar_chunked`: the value
    row ``s = t`` of that product is ``v_t w_t e^{−cum_t}`` and its output row is multiplied by
    ``scale · e^{cum_t}``, so ``D / (w_t · scale)`` added to the diagonal entry ``(t, t)`` of the
    in-chunk block adds ``D v_t`` (to a few ulps) — and saves two passes over the output (the
    product ``D v`` and its sum with the output measured about 11 % of SSD's single-thread time
    at H = 4, L = 8192, P = N = 64). Chunks that decay below ``e^{−_FACTOR_LOG}`` (where ``e^{−cum}`` is
    clamped) are recomputed exactly and add ``D v_t`` themselves. Padded steps (w = 0) get 0, so
    a real step with w = 0 (SSD's Δ_t = 0) cannot ride here: the caller then does not fold.
    When a tiny Δ_t makes ``D / Δ_t`` overflow or the value rows subnormal (below), None: the
    caller adds ``D v_t`` separately.
    """
    w = 1.0 if wc is None else wc
    if np.any((w > 0) & (w < _FOLD_MIN_W)):
        return None
    out = np.zeros(np.broadcast_shapes(np.shape(w), skip.shape + (1, 1)))
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        np.divide(skip[:, :, None, None] / scale, w, out=out, where=np.broadcast_to(w, out.shape) > 0)
    return out if np.isfinite(out).all() else None


def _gla_loop(q, k, v, logg, c: int, init=None):
    """The recurrence (16.2) one step at a time, from ``init`` (*b, Dv, Dk) or 0; also the states at the chunk ends."""
    batch = q.shape[:-2]
    L, dk, dv = q.shape[-2], q.shape[-1], v.shape[-1]
    nc = -(-L // c)
    o = np.zeros(batch + (L, dv))
    states = np.zeros(batch + (nc, dv, dk))
    for b in np.ndindex(*batch):
        S = np.zeros((dv, dk)) if init is None else init[b].copy()  # S_{−1}
        for t in range(L):
            g = np.exp(logg[b][t])  # g_t: (Dk,) per channel or (1,) per head
            S = S * g[None, :] + np.outer(v[b][t], k[b][t])  # S_t = S_{t−1} Diag(g_t) + v_t k_tᵀ
            o[b][t] = S @ q[b][t]  # o_t = S_t q_t
            if t % c == c - 1 or t == L - 1:
                states[b][t // c] = S
    return o, states


def _gla_setup(q, k, v, log_g, scale, chunk_size, return_chunk_states, scale_q=True):
    """Validated, broadcast ``q, k, v, log g`` (per head: (..., L, 1)) and ``c``; ``q`` times the
    scale, or with ``scale_q=False`` unscaled and the scale returned last (the chunked algorithms
    scale their output instead: one pass over data in cache rather than a copy of ``q``), and
    then with the finiteness of the four inputs left to the threads of the chunked algorithm
    (the last item: the (name, argument) pairs to check)."""
    q, k, v = _check_qkv(q, k, v, finite=scale_q)
    L, dk = q.shape[-2:]
    g, per_channel = _check_log_g(log_g, L, dk, k.ndim, finite=scale_q)
    args = list(zip(("q", "k", "v", "log_g"), (q, k, v, g)))  # as float64 arrays, before broadcasting
    c = _check_chunk(chunk_size)
    as_bool(return_chunk_states, "return_chunk_states")
    if not per_channel:
        g = g[..., None]
    batch = _batch([("q", q.shape[:-2]), ("k", k.shape[:-2]), ("v", v.shape[:-2]), ("log_g", g.shape[:-2])])
    L = q.shape[-2]
    s = _scale(scale, dk)
    q = np.broadcast_to(q * s if scale_q else q, batch + q.shape[-2:])
    k = np.broadcast_to(k, batch + k.shape[-2:])
    v = np.broadcast_to(v, batch + v.shape[-2:])
    g = np.broadcast_to(g, batch + (L, g.shape[-1]))
    return (q, k, v, g, c) if scale_q else (q, k, v, g, c, s, args)


def _gla_state(initial_state, q, k, v, g):
    """``initial_state`` (..., Dv, Dk) checked against the broadcast ``q, k, v, log g`` of :func:`_gla_setup`
    (None stays None), and the five broadcast to one batch shape."""
    if initial_state is None:
        return None, q, k, v, g
    batch = q.shape[:-2]
    S0, new = _check_state(initial_state, "initial_state", batch, (v.shape[-1], q.shape[-1]), "(..., Dv, Dk)")
    return (S0, *_rebatch(batch, new, q, k, v, g))


@guard_overflow()
def gated_linear_attention(q, k, v, log_g, *, scale=None, chunk_size=64, return_chunk_states=False, initial_state=None):
    r"""Gated linear attention (GLA), chunked: ``S_t = S_{t−1} Diag(g_t) + v_t k_tᵀ``, ``o_t = S_t q_t``.

    Implements Eqs. (16.1)–(16.5) of the book ((16.1), linear attention, is the case g = 1;
    Yang et al. 2024a, GLA, Eqs. 3–4 and §4.2; with a per-head gate it is Mamba-2's scalar-decay
    SSD, Dao & Gu 2024, §3–§6).

    Parameters
    ----------
    q, k : array_like, shape (..., L, Dk)
        Queries and keys (leading axes, e.g. batch and head, broadcast).
    v : array_like, shape (..., L, Dv)
        Values.
    log_g : array_like, shape (..., L, Dk) or (..., L)
        Log-gates ``log g_t ≤ 0``: per key channel (GLA's α_t; as many axes as ``k``) or one per
        head and step (one axis fewer). A gate of 1 (``log_g = 0``) is plain linear attention.
    scale : float >= 0, optional
        Multiplies the queries; default ``1/sqrt(Dk)``.
    chunk_size : int >= 1
        Chunk length c; any c gives the same result (L need not be a multiple of c). A c longer
        than L runs as one chunk of L steps (no (c, c) temporaries).
    return_chunk_states : bool
        Also return the states at the end of each chunk (an intermediate for debugging kernels).
    initial_state : array_like, shape (..., Dv, Dk), optional
        The state ``S_{−1}`` before the first step (fla's ``initial_state``, transposed); its
        batch axes broadcast with those of q, k, v, log_g (one state per batch entry and head, or
        one shared). Default: 0.

    Returns
    -------
    o : ndarray, shape (..., L, Dv)
    states : ndarray, shape (..., ceil(L / c), Dv, Dk)
        Only if ``return_chunk_states``: ``S_t`` at ``t = min((n + 1) c, L) − 1``. The last one is
        the final state ``S_{L−1}`` (fla's ``output_final_state``).

    Notes
    -----
    Unrolling the recurrence from ``S_{−1}`` gives the masked "attention" form (16.3),

    ``o_t = Σ_{s≤t} v_s Σ_j q_{t,j} k_{s,j} exp(seg_j[t, s]) + S_{−1} (q_t ⊙ exp(Σ_{r=0}^{t} log g_r))``,
    ``seg_j[t, s] = Σ_{r=s+1}^{t} log g_{r,j}``: the initial state is read through the decay of the whole
    prefix, the first gate g_0 included.

    The chunked algorithm (16.5) splits it at chunk boundaries: inside a chunk the masked form,
    across chunks the state at the previous chunk's end, decayed by ``exp(Σ_{r=start}^{t} log g_r)``;
    chunk-end states are passed on from chunk to chunk (L/c short steps). The in-chunk weights
    are factored as ``(q_t ⊙ e^{cum_t})·(k_s ⊙ e^{−cum_s})`` (one BLAS product, ``cum`` the
    in-chunk cumulative log-gate; with a gate per head the scalings move onto the rows of the
    output and of the values) only in chunks whose decay stays above ``e^{−30}``, where
    ``e^{−cum} ≤ e^{30}`` cannot overflow and costs each weight a relative error of order ``|cum|·ε``,
    at most about ``(c − 1)·|cum|·ε`` where the roundings of the cumulative sum add up (chapter 16, §16.2);
    chunks that decay further (gates
    near 0) use the (c, c) segment sums with a gate per head (every exponent ≤ 0); with a gate
    per key channel the chunk is halved again and again, each quarter one product through its
    boundary (every exponent ≤ 0), until the blocks decay by at most ``e^{−30}`` and take the
    factored form (the GLA paper's secondary chunking, applied recursively). Every other
    exponent is ≤ 0, so nothing overflows at any L. The in-chunk form and the readout of the entering state are
    one product per chunk with a gate per head, ``[Q | tril(Q Kᵀ)] [S_inᵀ ; V ⊙ e^{−cum}]`` (the first chunk's
    ``S_in`` is ``S_{−1}``), and two with a gate per key channel, ``Qe S_inᵀ`` and ``tril(Qe Kfᵀ) V``, added
    (the first half of a chunk's rows skips the zero upper-right quarter of the mask); the chunks are
    processed in groups small enough to stay in the processor's cache, and independent heads run in
    parallel threads. Twins: :func:`gated_linear_attention_loop` (the recurrence),
    :func:`gated_linear_attention_parallel` (the dense masked form).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k = rng.normal(size=(2, 6, 3))
    >>> v = rng.normal(size=(6, 2))
    >>> log_g = np.log(rng.uniform(0.5, 1.0, size=(6, 3)))  # one gate per key channel
    >>> o = gated_linear_attention(q, k, v, log_g, chunk_size=4)  # L = 6 is no multiple of 4
    >>> o.shape, bool(np.allclose(o, gated_linear_attention_parallel(q, k, v, log_g)))
    ((6, 2), True)
    >>> S0 = rng.normal(size=(2, 3))  # an initial state (Dv, Dk): two calls continue one sequence
    >>> o1, S1 = gated_linear_attention(q[:4], k[:4], v[:4], log_g[:4], initial_state=S0, return_chunk_states=True)
    >>> o2 = gated_linear_attention(q[4:], k[4:], v[4:], log_g[4:], initial_state=S1[-1])
    >>> bool(np.allclose(np.concatenate([o1, o2]), gated_linear_attention(q, k, v, log_g, initial_state=S0)))
    True
    """
    q, k, v, g, c, s, args = _gla_setup(q, k, v, log_g, scale, chunk_size, return_chunk_states, scale_q=False)
    S0, q, k, v, g = _gla_state(initial_state, q, k, v, g)
    o, states = _gla_chunked(q, k, v, g, c, keep_states=return_chunk_states, scale=s, finite=args, init=S0)
    return (o, states) if return_chunk_states else o


@guard_overflow()
def gated_linear_attention_loop(q, k, v, log_g, *, scale=None, chunk_size=64, return_chunk_states=False,
                                initial_state=None):
    """Loop twin of :func:`gated_linear_attention`: the recurrence (16.2), one step at a time, from
    ``S_{−1} = initial_state`` (or 0).

    ``chunk_size`` only selects which states ``return_chunk_states`` reports.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k = rng.normal(size=(2, 6, 3))
    >>> v = rng.normal(size=(6, 2))
    >>> log_g = np.log(rng.uniform(0.5, 1.0, size=6))  # one gate per step (per head)
    >>> o, S = gated_linear_attention_loop(q, k, v, log_g, chunk_size=4, return_chunk_states=True)
    >>> o2, S2 = gated_linear_attention(q, k, v, log_g, chunk_size=4, return_chunk_states=True)
    >>> S.shape, bool(np.allclose(o, o2)), bool(np.allclose(S, S2))
    ((2, 2, 3), True, True)
    """
    q, k, v, g, c = _gla_setup(q, k, v, log_g, scale, chunk_size, return_chunk_states)
    S0, q, k, v, g = _gla_state(initial_state, q, k, v, g)
    o, states = _gla_loop(q, k, v, g, c, S0)
    return (o, states) if return_chunk_states else o


@guard_overflow()
def gated_linear_attention_parallel(q, k, v, log_g, *, scale=None, initial_state=None):
    r"""The dense masked form (16.3) of gated linear attention: an (L, L) weight matrix per channel.

    ``o_t = Σ_{s≤t} (Σ_j q_{t,j} k_{s,j} e^{seg_j[t,s]}) v_s`` with the segment sums of Eq. (16.4),
    plus ``S_{−1} (q_t ⊙ e^{Σ_{r≤t} log g_r})`` with an ``initial_state`` S_{−1} (..., Dv, Dk) (the
    decay of the whole prefix as a cumulative sum from the sequence's start: every exponent ≤ 0).
    O(L² Dk) memory: a reference for short sequences (Yang et al. 2024a, GLA, Eq. 4 "parallel form").

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k = rng.normal(size=(2, 5, 3))
    >>> v = rng.normal(size=(5, 2))
    >>> o = gated_linear_attention_parallel(q, k, v, np.zeros(5), scale=1.0)  # g = 1: plain causal linear attention
    >>> bool(np.allclose(o, np.tril(q @ k.T) @ v))
    True
    """
    q, k, v, g, _ = _gla_setup(q, k, v, log_g, scale, 1, False)
    S0, q, k, v, g = _gla_state(initial_state, q, k, v, g)
    decay = np.moveaxis(_exp_segsum(np.swapaxes(g, -1, -2)), -3, -1)  # (..., L, L, Dk'), 0 for s > t
    if g.shape[-1] == 1:
        W = (q @ np.swapaxes(k, -1, -2)) * decay[..., 0]
    else:
        W = np.einsum("...tj,...sj,...tsj->...ts", q, k, decay)
    o = W @ v
    if S0 is not None:
        o += (q * np.exp(np.cumsum(g, axis=-2))) @ np.swapaxes(S0, -1, -2)  # S_{−1} (q_t ⊙ e^{Σ_{r≤t} log g_r})
    return o


# ---------------------------------------------------------------------------------------------
# Retention (RetNet), Eq. (16.6)
# ---------------------------------------------------------------------------------------------


def _retention_setup(q, k, v, gamma):
    q, k, v = _check_qkv(q, k, v)
    for arr, name, what in ((q, "q", "(..., H, L, Dk)"), (k, "k", "(..., H, L, Dk)"), (v, "v", "(..., H, L, Dv)")):
        if arr.ndim < 3:
            raise ValueError(f"{name}: expected shape {what} with a head axis, got shape {arr.shape}")
    gam = as_real_array(gamma, "gamma", ndim=1)
    # the head and batch axes (..., H) of q, k, v broadcast, or the first that does not is named
    for arr, name in ((k, "k"), (v, "v")):
        try:
            heads = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], arr.shape[:-2])
        except ValueError:
            raise ValueError(
                f"{name}: the head and batch axes (..., H) of q, k, v do not broadcast, "
                f"got shapes {q.shape}, {k.shape}, {v.shape}"
            ) from None
    H = heads[-1]  # the broadcast head axis: q may hold one head for all of them (or k, v may)
    if gam.shape != (H,):
        raise ValueError(f"gamma: expected one decay per head, shape ({H},) (the head axis of q, k, v, broadcast), "
                         f"got shape {gam.shape}")
    if np.any(gam <= 0) or np.any(gam > 1):
        raise ValueError(f"gamma: expected decays in (0, 1], got range [{gam.min():.6g}, {gam.max():.6g}]")
    return q, k, v, np.log(gam)


def _retention_state(initial_state, q, k, v, lg):
    """:func:`_check_state` of retention's initial state (..., H, Dv, Dk) against q, k, v (None: (None, batch))."""
    batch = _batch([("q", q.shape[:-2]), ("k", k.shape[:-2]), ("v", v.shape[:-2])])
    if initial_state is None:
        return None, batch
    return _check_state(initial_state, "initial_state", batch, (v.shape[-1], k.shape[-1]), "(..., H, Dv, Dk)",
                        heads=lg.shape[0])


@guard_overflow()
def retention(q, k, v, gamma, *, scale=None, chunk_size=64, initial_state=None):
    r"""RetNet's retention: linear attention with a fixed decay γ_h per head, chunked.

    Implements Eq. (16.6) of the book (Sun et al. 2023, RetNet, Eqs. (1)–(7): recurrent
    ``S_n = γ S_{n−1} + v_n k_nᵀ``, ``o_n = S_n q_n``; parallel ``(Q Kᵀ ⊙ D) V`` with
    ``D_{nm} = γ^{n−m}`` for n ≥ m; chunkwise recurrent).

    Parameters
    ----------
    q, k : array_like, shape (..., H, L, Dk)
    v : array_like, shape (..., H, L, Dv)
        The batch and head axes of q, k, v broadcast (e.g. one query head shared by H key heads).
    gamma : array_like, shape (H,)
        Decays in (0, 1], one per head of the broadcast head axis; RetNet uses ``1 − 2^{−5−h}``.
    scale : float >= 0, optional
        Default ``1/sqrt(Dk)`` (RetNet scales K by d^{−1/2}).
    chunk_size : int >= 1
        As in :func:`gated_linear_attention`.
    initial_state : array_like, shape (..., H, Dv, Dk), optional
        The state ``S_{−1}`` before the first step (batch and head axes broadcast with those of
        q, k, v); default 0. Then ``o_n`` gains ``γ^{n+1} S_{−1} q_n``. The final state is the
        last chunk state of :func:`gated_linear_attention` with ``log_g = log γ_h`` and
        ``return_chunk_states=True``.

    Returns
    -------
    o : ndarray, shape (..., H, L, Dv)

    Notes
    -----
    The xPos rotation and the group normalization of a RetNet layer are not part of retention
    proper and are left to the caller (``positional.rope`` rotates q, k). Retention is
    :func:`gated_linear_attention` with the per-head log-gate ``log γ_h`` at every step.
    Twins: :func:`retention_loop`, :func:`retention_parallel`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 2, 6, 3))  # H = 2 heads, L = 6
    >>> gamma = np.array([0.9, 0.5])
    >>> o = retention(q, k, v, gamma, chunk_size=4)
    >>> o.shape, bool(np.allclose(o, retention_parallel(q, k, v, gamma)))
    ((2, 6, 3), True)
    """
    q, k, v, lg = _retention_setup(q, k, v, gamma)
    _retention_state(initial_state, q, k, v, lg)
    log_g = np.broadcast_to(lg[:, None], k.shape[:-3] + (lg.shape[0], k.shape[-2]))  # log γ_h at every step (H from gamma)
    return gated_linear_attention(q, k, v, log_g, scale=scale, chunk_size=chunk_size, initial_state=initial_state)


@guard_overflow()
def retention_loop(q, k, v, gamma, *, scale=None, chunk_size=64, initial_state=None):
    """Loop twin of :func:`retention`: ``S_n = γ_h S_{n−1} + v_n k_nᵀ``, ``o_n = S_n q_n`` (Eq. (16.6)),
    from ``S_{−1} = initial_state`` (or 0).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 2, 5, 2))
    >>> gamma = np.array([0.9, 0.5])
    >>> bool(np.allclose(retention_loop(q, k, v, gamma), retention(q, k, v, gamma, chunk_size=2)))
    True
    """
    q, k, v, lg = _retention_setup(q, k, v, gamma)
    _check_chunk(chunk_size)  # validated for signature parity; the recurrence has no chunks
    batch = _batch([("q", q.shape[:-2]), ("k", k.shape[:-2]), ("v", v.shape[:-2])])
    S0 = None
    if initial_state is not None:
        S0, batch = _retention_state(initial_state, q, k, v, lg)
    qs = np.broadcast_to(q * _scale(scale, q.shape[-1]), batch + q.shape[-2:])
    kb, vb = np.broadcast_to(k, batch + k.shape[-2:]), np.broadcast_to(v, batch + v.shape[-2:])
    o = np.zeros(batch + (q.shape[-2], v.shape[-1]))
    for b in np.ndindex(*batch):
        g = math.exp(lg[b[-1]] if lg.shape[0] > 1 else lg[0])  # γ of this head
        S = np.zeros((v.shape[-1], k.shape[-1])) if S0 is None else S0[b].copy()  # S_{−1}
        for n in range(q.shape[-2]):
            S = g * S + np.outer(vb[b][n], kb[b][n])  # S_n = γ S_{n−1} + v_n k_nᵀ
            o[b][n] = S @ qs[b][n]  # o_n = S_n q_n
    return o


@guard_overflow()
def retention_parallel(q, k, v, gamma, *, scale=None, initial_state=None):
    r"""Retention's parallel form ``(Q Kᵀ ⊙ D) V``, ``D_{nm} = γ^{n−m}`` (n ≥ m), Eq. (16.6).

    ``γ^{n−m}`` is evaluated directly as ``exp((n − m) log γ)`` — no segment sums, no products —
    an independent check of the chunked algorithm (Sun et al. 2023, Eq. 5). An ``initial_state``
    S_{−1} (..., H, Dv, Dk) adds ``γ^{n+1} S_{−1} q_n``, with ``γ^{n+1} = exp((n + 1) log γ)``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 2, 5, 2))
    >>> gamma = np.array([0.9, 0.5])
    >>> log_g = np.broadcast_to(np.log(gamma)[:, None], (2, 5))  # GLA with a constant gate per head
    >>> bool(np.allclose(retention_parallel(q, k, v, gamma), gated_linear_attention(q, k, v, log_g, chunk_size=2)))
    True
    """
    q, k, v, lg = _retention_setup(q, k, v, gamma)
    L = q.shape[-2]
    lag = np.arange(L)[:, None] - np.arange(L)[None, :]  # n − m
    if initial_state is not None:
        S0, _ = _retention_state(initial_state, q, k, v, lg)
    D = np.where(lag >= 0, np.exp(np.maximum(lag, 0) * lg[:, None, None]), 0.0)  # (H, L, L)
    qs = q * _scale(scale, q.shape[-1])
    W = qs @ np.swapaxes(k, -1, -2) * D
    o = W @ v
    if initial_state is not None:
        decay = np.exp(np.arange(1, L + 1) * lg[:, None])  # γ^{n+1}, (H, L)
        o = o + decay[..., None] * (qs @ np.swapaxes(S0, -1, -2))  # + γ^{n+1} S_{−1} q_n
    return o


# ---------------------------------------------------------------------------------------------
# SSD (Mamba-2), Eqs. (16.7)-(16.8)
# ---------------------------------------------------------------------------------------------


def _check_ssd(x, dt, A, B, C, D, chunk_size, return_chunk_states, grouped=False, finite=True):
    """Validated, broadcast SSD inputs; ``finite=False`` leaves the finiteness of x, B and C to the
    caller (:func:`refimpl._validate.check_finite_part`, in the threads that read them)."""
    x = _real(x, "x", finite=finite)
    if x.ndim < 3:
        raise ValueError(f"x: expected shape (..., H, L, P), got shape {x.shape}")
    H, L, P = x.shape[-3:]
    dt = _real(dt, "dt")
    if dt.ndim < 2 or dt.shape[-2:] != (H, L):
        raise ValueError(f"dt: expected shape (..., H, L) = (..., {H}, {L}) (H, L from x), got shape {dt.shape}")
    if dt.size and dt.min() < 0:
        raise ValueError(f"dt: expected step sizes >= 0, got minimum {dt.min():.6g}")
    A = as_real_array(A, "A", ndim=1)
    if A.shape != (H,):
        raise ValueError(f"A: expected one scalar per head, shape ({H},), got shape {A.shape}")
    if np.any(A > 0):
        raise ValueError(f"A: expected A <= 0 (a stable, decaying state), got maximum {A.max():.6g}")
    B = _real(B, "B", finite=finite)
    C = _real(C, "C", finite=finite)
    if B.ndim < 3 or B.shape[-2] != L:
        raise ValueError(f"B: expected shape (..., G, L, N) with L = {L}, got shape {B.shape}")
    G, N = B.shape[-3], B.shape[-1]
    if H % G:
        raise ValueError(f"B: the number of heads H = {H} must be divisible by the number of groups G = {G}")
    if C.ndim < 3 or C.shape[-3:] != (G, L, N):
        raise ValueError(f"C: expected shape (..., G, L, N) = (..., {G}, {L}, {N}) like B, got shape {C.shape}")
    if D is not None:
        D = as_real_array(D, "D", ndim=1)
        if D.shape != (H,):
            raise ValueError(f"D: expected one skip weight per head, shape ({H},), got shape {D.shape}")
    c = _check_chunk(chunk_size)
    as_bool(return_chunk_states, "return_chunk_states")
    batch = _batch([("x", x.shape[:-3]), ("dt", dt.shape[:-2]), ("B", B.shape[:-3]), ("C", C.shape[:-3])])
    x = np.broadcast_to(x, batch + x.shape[-3:])
    dt = np.broadcast_to(dt, batch + dt.shape[-2:])
    if grouped:  # one B, C per group, (..., G, L, N)
        return x, dt, A, np.broadcast_to(B, batch + (G, L, N)), np.broadcast_to(C, batch + (G, L, N)), D, c
    # head h reads group h // (H / G) (Mamba-2's contiguous grouping of heads)
    B = np.broadcast_to(np.repeat(B, H // G, axis=-3), batch + (H, L, N))
    C = np.broadcast_to(np.repeat(C, H // G, axis=-3), batch + (H, L, N))
    return x, dt, A, B, C, D, c


def _ssd_state(state, x, dt, B, C, name: str = "initial_state"):
    """A state ``(..., H, P, N)`` checked against the broadcast SSD inputs of :func:`_check_ssd` (None stays
    None), and the five broadcast to one batch shape (the state's head axis is H or 1)."""
    if state is None:
        return None, x, dt, B, C
    batch, (H, _, P), N = x.shape[:-3], x.shape[-3:], B.shape[-1]
    S0, new = _check_state(state, name, batch + (H,), (P, N), "(..., H, P, N)", heads=H)
    return (S0, *_rebatch(batch, new[:-1], x, dt, B, C))


def _ssd_finish(y, x, D, states, return_chunk_states):
    if D is not None:
        y += D[:, None, None] * x  # y_t += D x_t
    return (y, states) if return_chunk_states else y


@guard_overflow()
def ssd(x, dt, A, B, C, D=None, *, chunk_size=64, return_chunk_states=False, initial_state=None):
    r"""Mamba-2's structured state-space duality (SSD) layer, by the chunked algorithm.

    Implements Eqs. (16.7)–(16.8) and the chunked algorithm (16.5) of the book (Dao & Gu 2024,
    Mamba-2, Eq. (1)/(4) with scalar-times-identity A, §6 and Listing 1).

    Parameters
    ----------
    x : array_like, shape (..., H, L, P)
        Inputs, H heads of dimension P.
    dt : array_like, shape (..., H, L)
        Step sizes Δ_t ≥ 0 (after the softplus). A step with Δ_t = 0 leaves the state unchanged
        (``e^0 = 1``, no input): the lower end of ``mamba_ssm``'s default clamp.
    A : array_like, shape (H,)
        One scalar A_h ≤ 0 per head (the state matrix is A_h I).
    B, C : array_like, shape (..., G, L, N)
        Input and output projections of G groups; H must be divisible by G (head h reads group
        ``h // (H // G)``).
    D : array_like, shape (H,), optional
        Skip connection.
    chunk_size : int >= 1
        Q of the paper; the result does not depend on it (a Q longer than L runs as one chunk of L steps).
    return_chunk_states : bool
        Also return the states h_t (shape (P, N)) at the end of each chunk.
    initial_state : array_like, shape (..., H, P, N), optional
        The state ``h_{−1}`` before the first step (Mamba-2's ``initial_states``, the same layout);
        its batch axes broadcast with those of x, dt, B, C, its head axis is H or 1. Default: 0.

    Returns
    -------
    y : ndarray, shape (..., H, L, P)
    states : ndarray, shape (..., H, ceil(L / Q), P, N)
        Only if ``return_chunk_states``. The last one is the final state ``h_{L−1}`` (Mamba-2's
        ``return_final_states``).

    Notes
    -----
    Per head, with state ``h_t ∈ ℝ^{P×N}`` and ``h_{−1}`` the initial state (or 0):

    ``h_t = e^{Δ_t A} h_{t−1} + Δ_t x_t B_tᵀ``,  ``y_t = h_t C_t + D x_t``  (16.7)

    i.e. gated linear attention with a per-head gate ``log g_t = Δ_t A``, keys ``Δ_t B_t``,
    values ``x_t`` and queries ``C_t`` (scale 1). Its matrix (the "attention" of the duality) is
    the N-semiseparable ``M_{ts} = (C_t·B_s) exp(A Σ_{r=s+1}^{t} Δ_r) Δ_s`` (16.8) (its decay
    mask alone is 1-semiseparable). This is Mamba-1's selective scan (chapter 11, Eq. (11.14),
    ``discretization="mamba"``) with A tied across the N states and P channels of a head.
    Twins: :func:`ssd_loop` (recurrence), :func:`ssd_quadratic` (the matrix M).

    The chunked algorithm is that of :func:`gated_linear_attention` with a gate per head: in a
    chunk ``y = e^{cum_t} ⊙ (tril(C Bᵀ) (Δ x ⊙ e^{−cum}) + C h_inᵀ)`` (``cum`` the chunk's
    cumulative ``Δ A``, used where the chunk decays by less than ``e^{−30}``; segment sums
    elsewhere). The in-chunk form and the readout of the entering state are one product
    ``[C | tril(C Bᵀ)] [h_inᵀ ; Δ x ⊙ e^{−cum}]`` per head and chunk (the first half of its rows
    skips the zero upper-right quarter of the mask), whose left factor the heads of a group
    (which share ``B`` and ``C``) share; independent groups or heads run in parallel
    threads.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> H, G, L, P, N = 2, 1, 7, 3, 4  # two heads share one group of B, C
    >>> x = rng.normal(size=(H, L, P))
    >>> dt = rng.uniform(0.1, 1.0, size=(H, L))
    >>> A, D = np.array([-1.0, -0.5]), np.array([1.0, 0.5])
    >>> B, C = rng.normal(size=(2, G, L, N))
    >>> y = ssd(x, dt, A, B, C, D, chunk_size=3)
    >>> y.shape, bool(np.allclose(y, ssd_quadratic(x, dt, A, B, C, D)))
    ((2, 7, 3), True)
    >>> h0 = rng.normal(size=(H, P, N))  # initial states, one per head
    >>> y, h = ssd(x, dt, A, B, C, D, chunk_size=3, initial_state=h0, return_chunk_states=True)
    >>> h[:, -1].shape, bool(np.allclose(y, ssd_quadratic(x, dt, A, B, C, D, initial_state=h0)))  # final states
    ((2, 3, 4), True)
    """
    args = dict(x=x, B=B, C=C)
    x, dt, A, B, C, D, c = _check_ssd(x, dt, A, B, C, D, chunk_size, return_chunk_states, grouped=True, finite=False)
    h0, x, dt, B, C = _ssd_state(initial_state, x, dt, B, C)
    batch, (H, L, P), (G, N) = x.shape[:-3], x.shape[-3:], B.shape[-3::2]
    c = _effective_chunk(c, L)
    if 0 in (math.prod(batch), H, L, P, N):  # nothing to compute but the skip: y_t = D x_t (h_t C_t = 0 if N = 0)
        check_finite_part([("x", x, args["x"]), ("B", B, args["B"]), ("C", C, args["C"])], slice(None))
        states = np.zeros(batch + (H, -(-L // c), P, N))
        return _ssd_finish(np.zeros(x.shape), x, D, states, return_chunk_states)
    R = H // G  # heads per group: they share the left factor of the chunked products
    # q = C, k = B, v = x weighted by Δ, log g_t = Δ_t A_h; groups (batch × G) first, R heads each
    q, k = C.reshape(-1, L, N), B.reshape(-1, L, N)
    v, loga, w = x.reshape(-1, R, L, P), (dt * A[:, None]).reshape(-1, R, L), dt.reshape(-1, R, L)
    skip = None if D is None else np.broadcast_to(D.reshape(G, R), batch + (G, R)).reshape(-1, R)
    ng, nc = q.shape[0], -(-L // c)
    o = np.empty((ng, R, nc, c, P))
    states = np.empty((ng, R, nc, N, P)) if return_chunk_states else None  # transposed chunk-end states
    init = None if h0 is None else np.swapaxes(h0.reshape(ng, R, P, N), -1, -2)  # h_{−1}ᵀ per group and head

    def part(a, sl, axis):  # the part ``sl`` of ``a`` along the groups (axis 0) or the heads (axis 1)
        return None if a is None else (a[sl] if axis == 0 else a[:, sl])

    # D x_t rides on the chunk products' diagonal as D / Δ_t (see _skip_diagonal), decided here for all heads at once:
    # a thread's part of the heads deciding alone would let one head's Δ change the arithmetic of the others
    fold = not (dt == 0).any() and (skip is None or _skip_diagonal(skip, w[..., None], 1.0) is not None)
    axis = 0 if ng >= min(R, _blocking.THREADS) else 1  # split the groups or, if there are fewer, the heads
    # each part checks that what it reads is finite: its x; its B, C (all of them in the first part
    # when the heads of a group are split)
    x_check = [("x", v if axis == 0 else np.swapaxes(v, 0, 1), args["x"])]
    bc_check = [("B", k, args["B"]), ("C", q, args["C"])]

    def validate(sl):  # x, then B and C (check_part: over all parts in this order if a part fails)
        check_finite_part(x_check, sl)
        check_finite_part(bc_check, sl if axis == 0 else slice(None) if not sl.start else slice(0, 0))

    def run(sl):
        check_part(validate, sl)
        qs, ks = (q[sl], k[sl]) if axis == 0 else (q, k)
        _scalar_chunked(qs, ks, part(v, sl, axis), part(loga, sl, axis), c, part(o, sl, axis),
                        part(states, sl, axis), w=part(w, sl, axis), skip=part(skip, sl, axis),
                        init=part(init, sl, axis), fold=fold)
        # the part's output summed while in cache: a finite sum vouches for it (vouch_finite below), so
        # that the guard does not read all of y again on one core (1.3 ms of 17 at H = 4, L = 8192)
        finite_out[sl.start] = _sum_is_finite(part(o, sl, axis))

    finite_out = {}
    _blocking.in_parts(run, o.shape[axis], x.size, one_blas=True)
    y = o.reshape(ng, R, nc * c, P)[:, :, :L].reshape(batch + (H, L, P))
    if all(finite_out.values()):
        vouch_finite(y)
    if return_chunk_states:
        states = np.swapaxes(states, -1, -2).reshape(batch + (H, nc, P, N))
    return _ssd_finish(y, x, None, states, return_chunk_states)  # None: the core has added D x_t


@guard_overflow()
def ssd_loop(x, dt, A, B, C, D=None, *, chunk_size=64, return_chunk_states=False, initial_state=None):
    """Loop twin of :func:`ssd`: the recurrence (16.7), one head and one step at a time, from
    ``h_{−1} = initial_state`` (or 0).

    ``chunk_size`` only selects which states ``return_chunk_states`` reports.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(1, 5, 2))  # H = 1, L = 5, P = 2
    >>> dt = rng.uniform(0.1, 1.0, size=(1, 5))
    >>> B, C = rng.normal(size=(2, 1, 5, 3))  # G = 1, N = 3
    >>> y, S = ssd_loop(x, dt, np.array([-1.0]), B, C, chunk_size=2, return_chunk_states=True)
    >>> y2, S2 = ssd(x, dt, np.array([-1.0]), B, C, chunk_size=2, return_chunk_states=True)
    >>> S.shape, bool(np.allclose(y, y2)), bool(np.allclose(S, S2))
    ((1, 3, 2, 3), True, True)
    """
    x, dt, A, B, C, D, c = _check_ssd(x, dt, A, B, C, D, chunk_size, return_chunk_states)
    h0, x, dt, B, C = _ssd_state(initial_state, x, dt, B, C)
    batch = x.shape[:-3]
    H, L, P = x.shape[-3:]
    N = B.shape[-1]
    y = np.zeros(x.shape)
    states = np.zeros(batch + (H, -(-L // c), P, N))
    for b in np.ndindex(*batch):
        for hd in range(H):
            h = np.zeros((P, N)) if h0 is None else h0[b][hd].copy()  # h_{−1}
            for t in range(L):
                d = dt[b][hd, t]
                h = math.exp(d * A[hd]) * h + d * np.outer(x[b][hd, t], B[b][hd, t])  # h_t = e^{ΔA} h + Δ x Bᵀ
                y[b][hd, t] = h @ C[b][hd, t]  # y_t = h_t C_t
                if t % c == c - 1 or t == L - 1:
                    states[b][hd, t // c] = h
    return _ssd_finish(y, x, D, states, return_chunk_states)


@guard_overflow()
def ssd_quadratic(x, dt, A, B, C, D=None, *, return_matrix=False, initial_state=None):
    r"""SSD in its quadratic "attention" form: ``y = M x`` with the semiseparable matrix (16.8).

    ``M_{ts} = (C_t · B_s) · exp(seg[t, s]) · Δ_s`` for s ≤ t, with the segment sums
    ``seg[t, s] = Σ_{r=s+1}^{t} A Δ_r`` of Eq. (16.4) (Dao & Gu 2024, Eq. (16)/§5, the masked
    attention dual). O(L²) memory per head: a reference for short sequences. An
    ``initial_state`` h_{−1} (..., H, P, N) adds ``e^{A Σ_{r≤t} Δ_r} h_{−1} C_t`` (the decay of the
    whole prefix, a cumulative sum from the sequence's start).

    Returns
    -------
    y : ndarray, shape (..., H, L, P)
    M : ndarray, shape (..., H, L, L)
        Only if ``return_matrix`` (without the skip ``D`` and the initial state's term).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(1, 4, 2))
    >>> dt = rng.uniform(0.1, 1.0, size=(1, 4))
    >>> B, C = rng.normal(size=(2, 1, 4, 3))
    >>> y, M = ssd_quadratic(x, dt, np.array([0.0]), B, C, return_matrix=True)  # A = 0: no decay
    >>> bool(np.allclose(M[0], np.tril(C[0] @ B[0].T) * dt[0]))  # M_ts = (C_t·B_s) Δ_s for s <= t
    True
    >>> bool(np.allclose(y, M @ x))
    True
    """
    x, dt, A, B, C, D, _ = _check_ssd(x, dt, A, B, C, D, 1, False)
    as_bool(return_matrix, "return_matrix")
    h0, x, dt, B, C = _ssd_state(initial_state, x, dt, B, C)
    decay = _exp_segsum(dt * A[:, None])  # e^{Σ_{s<r≤t} A Δ_r}; 0 above the diagonal
    M = (C @ np.swapaxes(B, -1, -2)) * decay * dt[..., None, :]  # M_ts = (C_t·B_s) e^{A seg} Δ_s
    y = M @ x
    if h0 is not None:
        y += np.exp(np.cumsum(dt * A[:, None], axis=-1))[..., None] * (C @ np.swapaxes(h0, -1, -2))  # e^{AΣΔ} h_{−1} C_t
    if D is not None:
        y = y + D[:, None, None] * x
    return (y, M) if return_matrix else y


# ---------------------------------------------------------------------------------------------
# The delta rule (DeltaNet, Gated DeltaNet), Eqs. (16.9)-(16.12)
# ---------------------------------------------------------------------------------------------


def _delta_setup(q, k, v, beta, log_g, scale, chunk_size, return_chunk_states, scale_q=True):
    """Validated, broadcast ``q, k, v, β, log g`` and ``c``; ``q`` times the scale, or with
    ``scale_q=False`` unscaled and the scale returned last (as in :func:`_gla_setup`)."""
    q, k, v = _check_qkv(q, k, v, finite=scale_q)
    args = list(zip(("q", "k", "v"), (q, k, v)))  # as float64 arrays, before broadcasting
    L, dk = q.shape[-2:]
    if scale_q:
        _check_key_norms(k)
    b = _real(beta, "beta")
    if b.ndim != k.ndim - 1 or b.shape[-1:] != (L,):
        raise ValueError(f"beta: expected shape (..., L) with L = {L} and one axis fewer than k, got shape {b.shape}")
    if b.size and (b.min() < 0 or b.max() > BETA_MAX):
        raise ValueError(
            f"beta: expected writing strengths in [0, {BETA_MAX:g}] (where the write is non-expansive for unit keys), "
            f"got range [{b.min():.6g}, {b.max():.6g}]"
        )
    if log_g is None:
        g = np.zeros(b.shape)
    else:
        g, _ = _check_log_g(log_g, L, dk, k.ndim, allow_channel=False)
    c = _check_chunk(chunk_size)
    as_bool(return_chunk_states, "return_chunk_states")
    batch = _batch(
        [("q", q.shape[:-2]), ("k", k.shape[:-2]), ("v", v.shape[:-2]), ("beta", b.shape[:-1]), ("log_g", g.shape[:-1])]
    )
    s = _scale(scale, dk)
    q = np.broadcast_to(q * s if scale_q else q, batch + q.shape[-2:])
    k = np.broadcast_to(k, batch + k.shape[-2:])
    v = np.broadcast_to(v, batch + v.shape[-2:])
    b = np.broadcast_to(b, batch + (L,))
    g = np.broadcast_to(g, batch + (L,))
    return (q, k, v, b, g, c) if scale_q else (q, k, v, b, g, c, s, args)


def _delta_state(initial_state, q, k, v, b, g):
    """``initial_state`` (..., Dv, Dk) checked against the broadcast inputs of :func:`_delta_setup` (None
    stays None), and the six broadcast to one batch shape."""
    if initial_state is None:
        return None, q, k, v, b, g
    batch = q.shape[:-2]
    S0, new = _check_state(initial_state, "initial_state", batch, (v.shape[-1], q.shape[-1]), "(..., Dv, Dk)")
    return (S0, *_rebatch(batch, new, q, k, v, b, g))


#: True while an fla call with ``use_qk_l2norm_in_kernel=True`` runs the delta rule on the keys it normalized
#: itself (:func:`_fla_delta`, and the backward passes of ``refimpl._vjp``, which call :func:`delta_rule_vjp`).
#: fla's ``x / sqrt(Σ x² + 1e-6)`` leaves a raw key of norm below ~0.011 short (a zero key of padding stays 0), and
#: fla runs such keys: a short key writes less, and β ≤ 2 keeps the write ``I − β k kᵀ`` non-expansive for any
#: ‖k‖ ≤ 1. The unit-key check (:func:`_check_key_norms`) lets them through while it is set; keys a caller passes
#: to :func:`delta_rule` are still checked. Read in the calling thread, before the work is shared out.
_FLA_L2NORM_KEYS: contextvars.ContextVar[bool] = contextvars.ContextVar("_FLA_L2NORM_KEYS", default=False)


def _with_l2norm_keys(l2norm: bool, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with ``_FLA_L2NORM_KEYS`` set to ``l2norm`` (fla's in-kernel normalized keys)."""
    token = _FLA_L2NORM_KEYS.set(bool(l2norm))
    try:
        return fn(*args, **kwargs)
    finally:
        _FLA_L2NORM_KEYS.reset(token)


def _check_key_norms(k: np.ndarray, l2norm: bool | None = None) -> None:
    """The delta rule's keys are ℓ2-normalized: |‖k_t‖ − 1| <= KEY_NORM_TOL (NaN norms are left to
    the finiteness check). Not for keys fla's in-kernel normalization made (``l2norm``, by default
    ``_FLA_L2NORM_KEYS``): their norm is below 1 by construction."""
    if _FLA_L2NORM_KEYS.get() if l2norm is None else l2norm:
        return
    with np.errstate(over="ignore", under="ignore"):  # a key far from unit norm is refused below
        norms = np.sqrt(np.einsum("...j,...j->...", k, k))  # ‖k_t‖
    if norms.size and np.max(np.abs(norms - 1.0)) > KEY_NORM_TOL:
        i = int(np.argmax(np.abs(norms - 1.0)))
        # the message's norm without overflow or underflow of the squares (1e200 or 1e-200, not inf or 0)
        worst = float(row_norms(k.reshape(norms.size, k.shape[-1])[i : i + 1])[0, 0])
        raise ValueError(
            f"k: the delta rule expects l2-normalized keys (|‖k_t‖ − 1| <= {KEY_NORM_TOL:g}), got a key of norm {worst:.6g}"
        )


def _unit_lower_identity(batch: tuple, c: int) -> np.ndarray:
    """Identity matrices (*batch, p, p), p = c rounded up to a power of two: the workspace of
    :func:`_unit_lower_inverse`, which overwrites only their strictly lower triangles."""
    p = 1 << max(0, (c - 1).bit_length())
    T = np.zeros(tuple(batch) + (p, p))
    np.einsum("...ii->...i", T)[...] = 1.0
    return T


def _unit_lower_inverse(A: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``(I + A)^{−1}`` for strictly lower-triangular ``A`` (..., c, c), by doubling the diagonal blocks.

    The inverse of a unit lower-triangular block matrix is
    ``[[T₁, 0], [−T₂ A₂₁ T₁, T₂]]`` with ``T₁, T₂`` the inverses of its diagonal blocks (the
    blocked algorithm of LAPACK's ``trtri``). Starting from blocks of one row (T = I), each level
    fills the lower-left quarter of every 2h × 2h diagonal block with two matrix products, for all
    blocks of all chunks at once: log₂ c levels of batched products, no per-chunk LAPACK call.
    (It replaces a batched ``scipy.linalg.solve_triangular``, one OpenBLAS ``trsm`` per chunk, whose
    speed depends on the threads and the load of the machine; a batched ``numpy.linalg.inv``
    pivots and does more work.) ``A`` is padded with zero rows to a power of two (the padding's block of the inverse is I).
    ``out``, optional, is a workspace from :func:`_unit_lower_identity` (reused from call to call:
    the levels write every strictly lower entry and nothing else); the result is a view of it.
    """
    c = A.shape[-1]
    T = _unit_lower_identity(A.shape[:-2], c) if out is None else out
    p = T.shape[-1]
    if p != c:
        A = np.pad(A, [(0, 0)] * (A.ndim - 2) + [(0, p - c), (0, p - c)])
    batch = A.shape[:-2]
    h = 1
    while h < p:  # merge pairs of h × h blocks into 2h × 2h blocks
        shape = batch + (p // (2 * h), 2 * h, p // (2 * h), 2 * h)
        Tb = np.einsum("...ijik->...ijk", T.reshape(shape))  # the 2h × 2h diagonal blocks (a writable view)
        Ab = np.einsum("...ijik->...ijk", A.reshape(shape))
        T1, T2 = Tb[..., :h, :h], Tb[..., h:, h:]
        np.matmul(-(T2 @ Ab[..., h:, :h]), T1, out=Tb[..., h:, :h])  # −T₂ A₂₁ T₁
        h *= 2
    return T[..., :c, :c]


def _delta_chunked(q, k, v, beta, logg, c: int, return_factors: bool = False, keep_states: bool = True,
                   scale: float = 1.0, finite=(), init=None):
    """Chunked delta rule (16.11)-(16.12): ``o`` (*b, L, Dv) and the chunk-end states
    (*b, n_chunks, Dv, Dk) (None without ``keep_states``); with ``return_factors`` also the WY
    factor ``W`` and ``T diag(β) V`` per chunk, shapes (*b, n_chunks, c, Dk) and
    (*b, n_chunks, c, Dv) (the oracle's intermediates; rows past L in the last chunk are padding).
    ``scale`` multiplies the queries. ``logg`` None: DeltaNet without gates (every decay 1).
    The batch entries (heads) are split over threads. ``finite``: the (name, argument) pairs of
    q, k, v, whose finiteness and key norms each thread checks on the slices it reads (see
    :func:`_gla_chunked`). ``init``, optional: the initial state S_{−1} (*b, Dv, Dk) (None: 0).
    """
    batch, (L, dk), dv = q.shape[:-2], q.shape[-2:], v.shape[-1]
    if not return_factors:  # the factors keep the c rows per chunk they document (padding included)
        c = _effective_chunk(c, L)
    nb, nc = math.prod(batch), -(-L // c)
    q, k, v = (a.reshape((nb,) + a.shape[-2:]) for a in (q, k, v))
    init_t = None if init is None else np.swapaxes(init.reshape((nb,) + init.shape[-2:]), -1, -2)  # S_{−1}ᵀ (a view)
    checks = [(name, view, arg) for (name, arg), view in zip(finite, (q, k, v))]
    l2norm = bool(checks) and _FLA_L2NORM_KEYS.get()  # fla's normalized keys (read here, before threads share the work)
    beta = beta.reshape(nb, L)
    logg = None if logg is None else logg.reshape(nb, L)

    def validate(sl):  # q, k, v finite, then the keys' norms (check_part: over all in this order if a part fails)
        check_finite_part(checks, sl)
        _check_key_norms(k[sl], l2norm)

    if 0 in (nb, L, dk, dv):  # nothing to compute: S_t q_t is 0 (Dk = 0) or empty, as are the states and factors
        if checks:
            validate(slice(None))
        o = np.zeros(batch + (L, dv))
        states = np.zeros(batch + (nc, dv, dk)) if keep_states or return_factors else None
        if return_factors:
            return o, states, np.zeros(batch + (nc, c, dk)), np.zeros(batch + (nc, c, dv))
        return o, states
    o = np.empty((nb, nc, c, dv))
    states = np.empty((nb, nc, dk, dv)) if keep_states or return_factors else None  # transposed
    factors = (np.empty((nb, nc, c, dk)), np.empty((nb, nc, c, dv))) if return_factors else None

    def run(sl):
        if checks:
            check_part(validate, sl)
        _delta_core(q[sl], k[sl], v[sl], beta[sl], None if logg is None else logg[sl], c, o[sl],
                    None if states is None else states[sl],
                    None if factors is None else (factors[0][sl], factors[1][sl]), scale,
                    init=None if init_t is None else init_t[sl])

    _blocking.in_parts(run, nb, q.size, one_blas=True)
    o = o.reshape((nb, nc * c, dv))[:, :L].reshape(batch + (L, dv))
    if states is not None:
        states = np.swapaxes(states, -1, -2).reshape(batch + (nc, dv, dk))
    if return_factors:
        W, TV = (a.reshape(batch + a.shape[1:]) for a in factors)
        return o, states, W, TV
    return o, states


def _delta_core(q, k, v, beta, logg, c: int, o, states=None, factors=None, scale: float = 1.0, init=None):
    """The chunked delta rule on ``q, k`` (nb, L, Dk), ``v`` (nb, L, Dv), ``beta, logg`` (nb, L).

    Writes the output, padded to whole chunks, into ``o`` (nb, n_chunks, c, Dv), unless None the
    transposed chunk-end states ``S_endᵀ`` into ``states`` (nb, n_chunks, Dk, Dv), and unless None
    ``W`` and ``T diag(β) V`` into the pair of arrays ``factors``; ``scale`` multiplies the
    queries (applied to the output, which is linear in them). ``init``, optional: the transposed
    initial state ``S_{−1}ᵀ`` (nb, Dk, Dv) entering the first chunk (None: 0).

    The decays ``Γ_ts = γ_t/γ_s = e^{cum_t − cum_s}`` (``cum`` the in-chunk cumulative log-gate)
    enter as row and column scalings of ``K Kᵀ`` and ``Q Kᵀ`` in chunks whose decay stays above
    ``e^{−_FACTOR_LOG}``; chunks that decay further take segment sums (exponents <= 0). Everything
    that does not depend on the entering state (the UT transform ``T``, the masked scores) is
    formed for all chunks of a group at once; the loop over chunks then does three
    (c × c or Dk)(· × Dv) products per chunk: the pseudo-values
    ``U = T diag(β) V − W S_inᵀ = T (diag(β) V − diag(β γ) K S_inᵀ)`` (``W = T diag(β γ) K`` the
    WY factor; applying ``T`` last saves the product ``W``) and the next state
    ``S_endᵀ = γ_end S_inᵀ + K_Γᵀ U`` with ``K_Γ = diag(γ_end/γ_s) K`` (16.12).
    The output of a chunk is one product ``[tril(Γ ⊙ Q Kᵀ) | diag(γ) Q] [U ; S_inᵀ]``. Each
    product has at most 64 × 64 outputs per call for the default chunk and Dk, Dv <= 64, so
    OpenBLAS keeps it on the calling thread (see :func:`refimpl._blocking.in_parts`).
    """
    dk, dv = q.shape[-1], v.shape[-1]
    gated = logg is not None  # without gates (DeltaNet) every γ is 1 and its scalings are skipped
    qc, kc, vc = (_chunks(a, c, -2) for a in (q, k, v))  # (nb, nc, c, ·); padding: k = 0
    bc = _chunks(beta, c, -1)  # (nb, nc, c); padding: β = 0
    nb, nc = qc.shape[:2]
    if gated:
        gc = _chunks(logg, c, -1)
        cum = np.cumsum(gc, axis=-1)  # log γ_t = Σ_{r=start}^{t} log g_r
        gam = np.exp(cum)  # γ_t
        ginv = 1.0 / np.maximum(gam, _TINY)  # 1/γ_s (clamped: exact path below where it matters)
        gend = gam[..., -1, None, None]  # γ_end, (nb, nc, 1, 1)
        strong = cum[..., -1] < -_FACTOR_LOG
    strict, tri = np.tri(c, c, -1), np.tri(c)
    S = np.zeros((nb, dk, dv)) if init is None else init.copy()  # S_inᵀ entering the next group
    m = min(nc, _group(nb, c, max(dk, dv)))
    X = np.empty((nb, m, c, c + dk))  # [tril(Γ ⊙ Q Kᵀ) | diag(γ) Q] per chunk
    Z = np.empty((nb, m, c + dk, dv))  # [U ; S_inᵀ] per chunk
    T = _unit_lower_identity((nb, m), c)  # the workspace of T, reused by every group
    R = np.empty((nb, c, dv))  # diag(β) (V − diag(γ) K S_inᵀ) of one chunk
    Sd = np.empty((nb, dk, dv)) if gated else None  # γ_end S_inᵀ of one chunk
    # (diag(1/γ) K)ᵀ per chunk, written transposed once so that the products A and P below are plain (NN) ones:
    # OpenBLAS ran them with a transposed operand 1.4 times slower at 64 × 64 × 64 (the copy costs a sixth of that)
    KT = np.empty((nb, m, dk, c))
    for g0 in range(0, nc, m):  # groups of chunks (temporaries in cache); L / (m c) steps
        sl = slice(g0, min(nc, g0 + m))
        mm = sl.stop - g0
        Xg, Zg = X[:, :mm], Z[:, :mm]
        kg, bg = kc[:, sl], bc[:, sl, :, None]
        # UT transform (16.11): (I + tril(diag(β) (Γ ⊙ K Kᵀ), −1)) [W | U0] = [diag(β γ) K | diag(β) V];
        # with Γ_ts = γ_t/γ_s the decays are row and column scalings of the small (c, Dk) factors
        sb, sn = np.nonzero(strong[:, sl]) if gated else ((), ())
        every = len(sb) == nb * mm  # every chunk of the group decays fast: no factored products to overwrite
        if gated:
            gg = gam[:, sl, :, None]
            Kb = kg * (bg * gg)  # diag(β γ) K
            Qg = np.multiply(qc[:, sl], gg, out=Xg[..., c:])  # diag(γ) Q
        else:
            Kb = kg * bg  # diag(β) K
            Qg = Xg[..., c:]
            Qg[...] = qc[:, sl]  # Q
        Vb = vc[:, sl] * bg  # diag(β) V
        if every:  # Γ from segment sums for the whole group, no gathered copies
            A, Pe, KgT = _delta_exact(qc[:, sl], kg, bc[:, sl], gc[:, sl], strict)
            P = Xg[..., :c]
            P[...] = Pe  # tril(Γ ⊙ Q Kᵀ), the left block of the chunk product
            sb = ()  # done
        else:
            KiT = KT[:, :mm]
            if gated:
                np.copyto(KiT, np.swapaxes(kg * ginv[:, sl, :, None], -1, -2))  # (diag(1/γ) K)ᵀ
                KgT = KiT * gend[:, sl]  # K_Γᵀ = (diag(γ_end/γ_s) K)ᵀ
            else:
                np.copyto(KiT, np.swapaxes(kg, -1, -2))  # Kᵀ
                KgT = KiT
            A = Kb @ KiT  # β_t (γ_t/γ_s) (k_t · k_s)
            A *= strict
            P = np.matmul(Qg, KiT, out=Xg[..., :c])
            P *= tri  # tril(Γ ⊙ Q Kᵀ)
        if len(sb):  # chunks that decay below e^{−_FACTOR_LOG}: Γ from segment sums
            n = g0 + sn
            A[sb, sn], P[sb, sn], KgT[sb, sn] = _delta_exact(qc[sb, n], kc[sb, n], bc[sb, n], gc[sb, n], strict)
        Tg = _unit_lower_inverse(A, out=T[:, :mm])  # T = (I + A)^{-1}, all chunks of the group at once
        Zg[:, 0, c:] = S
        for j in range(mm):  # the state passes from chunk to chunk: a short loop over chunks
            St, U = Zg[:, j, c:], Zg[:, j, :c]
            np.matmul(Kb[:, j], St, out=R)
            np.subtract(Vb[:, j], R, out=R)
            np.matmul(Tg[:, j], R, out=U)  # pseudo-values U = T diag(β) V − W S_inᵀ = T R
            nxt = Zg[:, j + 1, c:] if j + 1 < mm else S
            np.matmul(KgT[:, j], U, out=nxt)
            nxt += np.multiply(St, gend[:, g0 + j], out=Sd) if gated else St  # S_endᵀ = γ_end S_inᵀ + K_Γᵀ U
            if states is not None:
                states[:, g0 + j] = nxt
        og = np.matmul(Xg, Zg, out=o[:, sl])  # (16.12): tril(Γ ⊙ Q Kᵀ) U + diag(γ) Q S_inᵀ
        if scale != 1.0:
            og *= scale
        if factors is not None:  # the WY factor W = T diag(β γ) K and T diag(β) V
            np.matmul(Tg, Kb, out=factors[0][:, sl])
            np.matmul(Tg, Vb, out=factors[1][:, sl])


def _delta_exact(q, k, beta, g, strict):
    """The decayed terms of the UT transform for chunks that decay fast, Γ from segment sums (every exponent
    <= 0): ``A = strict ⊙ diag(β) (Γ ⊙ K Kᵀ)``, ``P = Γ ⊙ Q Kᵀ`` (0 above the diagonal) and
    ``K_Γᵀ = (diag(γ_end/γ_s) K)ᵀ``; ``q, k`` (…, c, Dk), ``beta, g`` (…, c)."""
    Gam = _exp_segsum(g)  # Γ_ts, 0 above the diagonal
    kT = np.swapaxes(k, -1, -2)
    A = strict * beta[..., None] * Gam * (k @ kT)
    P = Gam * (q @ kT)
    # K_Γᵀ contiguous, as a mixed group's is: OpenBLAS rounds a product with a transposed view otherwise, and a head's
    # result would depend on whether its neighbours (in its thread) decay fast too
    return A, P, np.ascontiguousarray(np.swapaxes(k * np.exp(_suffix(g, -1))[..., None], -1, -2))


def _delta_loop(q, k, v, beta, logg, c: int, init=None):
    batch = q.shape[:-2]
    L, dk, dv = q.shape[-2], k.shape[-1], v.shape[-1]
    o = np.zeros(batch + (L, dv))
    states = np.zeros(batch + (-(-L // c), dv, dk))
    eye = np.eye(dk)
    for b in np.ndindex(*batch):
        S = np.zeros((dv, dk)) if init is None else init[b].copy()  # S_{−1}
        for t in range(L):
            kt, bt, gt = k[b][t], beta[b][t], math.exp(logg[b][t])
            S = gt * S @ (eye - bt * np.outer(kt, kt)) + bt * np.outer(v[b][t], kt)  # Eq. (16.9)
            o[b][t] = S @ q[b][t]  # o_t = S_t q_t
            if t % c == c - 1 or t == L - 1:
                states[b][t // c] = S
    return o, states


@guard_overflow()
def delta_rule(q, k, v, beta, *, log_g=None, scale=None, chunk_size=64, return_chunk_states=False, initial_state=None):
    r"""The delta rule (DeltaNet; Gated DeltaNet with ``log_g``), by the chunked WY/UT algorithm.

    Implements Eqs. (16.9)–(16.12) of the book (Schlag et al. 2021, §4; Yang et al. 2024b,
    DeltaNet, Eqs. (1)–(2) and §3.1–§3.2; Yang et al. 2025, Gated DeltaNet, Eq. (10)):

    ``S_t = g_t S_{t−1} (I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ``,  ``o_t = S_t q_t``.

    Parameters
    ----------
    q, k : array_like, shape (..., L, Dk)
        Queries and keys; **keys must be ℓ2-normalized** (|‖k_t‖ − 1| ≤ ``KEY_NORM_TOL``),
        otherwise ``ValueError``.
    v : array_like, shape (..., L, Dv)
    beta : array_like, shape (..., L)
        Writing strengths β_t ∈ [0, 2]: DeltaNet's sigmoid gives (0, 1); (1, 2] lets
        ``I − β k kᵀ`` have a negative eigenvalue (still non-expansive; β = 2 is a reflection,
        which Grazzi et al.'s 2σ(x) reaches once σ rounds to 1, e.g. in bfloat16 for x ≥ ln 511 ≈ 6.24; β = 0
        writes nothing). Outside, ``ValueError`` (a likely bug).
        The update is non-expansive while ``0 ≤ β‖k‖² ≤ 2``: every accepted key meets it for
        β ≤ 2/(1 + 2^−8)² ≈ 1.984; for β closer to 2, a key off the unit sphere by up to
        ``KEY_NORM_TOL`` can make the memory grow (by at most 1.6 % per write along that key).
    log_g : array_like, shape (..., L), optional
        Gated DeltaNet's per-head log-gates ``log g_t ≤ 0`` (default: no gate, g = 1).
    scale : float >= 0, optional
        Multiplies the queries; default ``1/sqrt(Dk)``.
    chunk_size : int >= 1
        Chunk length c; the result does not depend on it (a c longer than L runs as one chunk of L steps).
    return_chunk_states : bool
        Also return the states at the chunk ends.
    initial_state : array_like, shape (..., Dv, Dk), optional
        The state ``S_{−1}`` before the first step (fla's ``initial_state``, transposed); its batch
        axes broadcast with those of q, k, v, beta, log_g. Default: 0. The recurrence runs from it
        unchanged (the first step is ``S_0 = g_0 S_{−1}(I − β_0 k_0 k_0ᵀ) + β_0 v_0 k_0ᵀ``).

    Returns
    -------
    o : ndarray, shape (..., L, Dv)
    states : ndarray, shape (..., ceil(L / c), Dv, Dk)
        Only if ``return_chunk_states``. The last one is the final state ``S_{L−1}`` (fla's
        ``output_final_state``).

    Notes
    -----
    The update is one normalized-LMS step on the regression ``v ≈ S k`` (Eq. (16.10)):
    ``S_t = g_t S_{t−1} + β_t (v_t − g_t S_{t−1} k_t) k_tᵀ`` — prediction error times
    regressor, step β_t, with unit keys (the LMS update (6.6) of chapter 6; the gate is a
    leak/forgetting factor). Stable for 0 < β_t < 2: ``I − β k kᵀ`` has eigenvalues 1 and
    1 − β ∈ (−1, 1] (Eq. (16.14)).

    Chunked form: inside a chunk the pseudo-values ``u_t = β_t (v_t − g_t S_{t−1} k_t)``
    satisfy a unit lower-triangular system (the UT transform, Eq. (16.11)), solved for all
    chunks at once; then ``S_t = γ_t S_0 + Σ_{i≤t} (γ_t/γ_i) u_i k_iᵀ`` (S_0 the state entering
    the chunk: the initial state for the first), so outputs and the next chunk's state are matrix
    products (16.12). With the WY factor ``W = T diag(β γ) K`` the
    pseudo-values are ``U = T diag(β) V − W S_0ᵀ`` and the state passes as
    ``S_end = γ_end S_0 + Uᵀ K_Γ``, ``K_Γ = diag(γ_end/γ_i) K``: ``T``, ``W``, ``T diag(β) V`` and
    ``K_Γ`` are formed for all chunks at once, and the loop over the L/c chunks is two
    (c × Dk)(Dk × Dv)-sized products each. The inverse ``T`` of the unit lower-triangular
    system is built by doubling its diagonal blocks (LAPACK's blocked ``trtri`` algorithm), as
    batched products. Decays ``γ_t/γ_i`` are row and column scalings in chunks that decay by
    less than ``e^{−30}`` and exponentials of segment sums (≤ 0) elsewhere. Work
    O(L c (Dk + Dv) + L Dk Dv); independent heads run in parallel threads.
    Twin: :func:`delta_rule_loop`.

    Accuracy: the state entering a chunk is carried by ``γ_end S_0 − (S_0 Wᵀ) K_Γ``, a difference, so
    each chunk adds an error proportional to the size of the state it was handed plus its values,
    not of the state it returns. The factor follows the conditioning of the UT system: a few ε for
    β < 1, but up to 2000 ε (chunks of 64) for β near 2 with nearly parallel keys, where
    cond₂(I + A) reaches 1e3 (chapter 16, §16.5, asserts both bounds). A chunk that nearly annihilates
    the state — its keys span few directions (Dk small against c) and repeat with β near 1 —
    leaves it with an absolute error of a few ε·|S_0|, not a relative one: four orthonormal keys
    in Dk = 4 written over and over with β = 0.9 and v = 0 shrink the state by 1e-16 per chunk
    of 64, and the chunked states come out as rounding noise, while the loop twin keeps them to a
    few ulps. Norm-wise over a whole output the chunked form agrees with the recurrence within the
    tolerance chapter 16 checks (1e-10 relative).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k = rng.normal(size=(2, 6, 3))
    >>> k /= np.linalg.norm(k, axis=-1, keepdims=True)  # the delta rule needs unit keys
    >>> v = rng.normal(size=(6, 2))
    >>> beta = rng.uniform(0.1, 1.5, size=6)  # in (0, 2)
    >>> log_g = np.log(rng.uniform(0.8, 1.0, size=6))  # Gated DeltaNet
    >>> o = delta_rule(q, k, v, beta, log_g=log_g, chunk_size=4)
    >>> o.shape, bool(np.allclose(o, delta_rule_loop(q, k, v, beta, log_g=log_g)))
    ((6, 2), True)
    """
    q, k, v, b, g, c, s, args = _delta_setup(q, k, v, beta, log_g, scale, chunk_size, return_chunk_states, scale_q=False)
    S0, q, k, v, b, g = _delta_state(initial_state, q, k, v, b, g)
    g = None if log_g is None else g  # DeltaNet: no decay scalings at all
    o, states = _delta_chunked(q, k, v, b, g, c, keep_states=return_chunk_states, scale=s, finite=args, init=S0)
    return (o, states) if return_chunk_states else o


@guard_overflow()
def delta_rule_loop(q, k, v, beta, *, log_g=None, scale=None, chunk_size=64, return_chunk_states=False,
                    initial_state=None):
    """Loop twin of :func:`delta_rule`: ``S_t = g_t S_{t−1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ`` step by step (16.9),
    from ``S_{−1} = initial_state`` (or 0).

    ``chunk_size`` only selects which states ``return_chunk_states`` reports.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> k = rng.normal(size=(5, 3))
    >>> k /= np.linalg.norm(k, axis=-1, keepdims=True)
    >>> v = rng.normal(size=(5, 2))
    >>> o = delta_rule_loop(k, k, v, np.ones(5), scale=1.0)  # β = 1 overwrites: S_t k_t = v_t
    >>> bool(np.allclose(o, v))
    True
    """
    q, k, v, b, g, c = _delta_setup(q, k, v, beta, log_g, scale, chunk_size, return_chunk_states)
    S0, q, k, v, b, g = _delta_state(initial_state, q, k, v, b, g)
    o, states = _delta_loop(q, k, v, b, g, c, S0)
    return (o, states) if return_chunk_states else o


# ---------------------------------------------------------------------------------------------
# RLS on the key -> value regression, Eq. (16.13)
# ---------------------------------------------------------------------------------------------


def _rls_setup(q, k, v, lam, delta, scale):
    q, k, v = _check_qkv(q, k, v)
    lam = as_positive_scalar(lam, "lam")
    if lam > 1:
        raise ValueError(f"lam: expected a forgetting factor in (0, 1], got {lam!r}")
    delta = as_positive_scalar(delta, "delta")
    batch = _batch([("q", q.shape[:-2]), ("k", k.shape[:-2]), ("v", v.shape[:-2])])
    q = np.broadcast_to(q * _scale(scale, q.shape[-1]), batch + q.shape[-2:])
    k = np.broadcast_to(k, batch + k.shape[-2:])
    v = np.broadcast_to(v, batch + v.shape[-2:])
    return q, k, v, lam, delta


#: the message of :func:`rls_memory_loop` when its square-root factor ``P_t^{1/2}`` overflows
_RLS_WOUND_UP = ("lam, delta, k: the RLS recursion's square-root factor of P_t = R_t^(-1) overflowed float64: with "
                 "lam < 1, P_t grows like "
                 "lam^-(t+1)/delta in every direction the keys leave unexcited; use rls_memory, a larger lam or a "
                 "larger delta")

#: the largest condition number of a square-root factor (``A_t`` of :func:`rls_memory_loop`, ``U_t`` of
#: :func:`rls_memory`) at which the RLS functions answer: 2^−10/ε ≈ 4.4e12 (``cond R_t`` or ``cond P_t`` up to 2e25)
RLS_COND_MAX = 2.0**-10 / np.finfo(float).eps


#: the 2-norm of one vector without overflow or underflow of its squares (BLAS ``dnrm2``), for the two norms of each
#: step of :func:`_rls_lstsq`: ``np.linalg.norm`` of a key with entries above ~1e154 is inf (such keys were skipped,
#: the answer 0); :func:`refimpl._validate.row_norms`, the same guarantee for rows, costs 6 µs a call here, dnrm2 0.1
_norm2 = blas.dnrm2

#: block size of LAPACK's ``dtpqrt`` in :func:`_rls_lstsq` (one new row per call: 8 measured fastest of 1 … 128)
_TPQRT_BLOCK = 8


def _rls_lstsq(q: np.ndarray, k: np.ndarray, v: np.ndarray, lam: float, delta: float) -> np.ndarray:
    """Eq. (16.13) for one sequence (q scaled), by an orthogonal factorization restricted to the span of the keys.

    ``Q`` (Dk × r) is an orthonormal basis of the keys written so far (Gram–Schmidt, twice); in the directions
    orthogonal to it (16.13) gives ``S_t u = 0`` exactly, so they are not carried. In the span the weighted data
    rows ``λ^{(t−i)/2} [Qᵀk_i, v_iᵀ]`` and the prior rows ``λ^{(t+1)/2} δ^{1/2} I`` are reduced by QR, one new row per
    step, to ``[U_t | Y_t]`` with ``U_tᵀU_t = Qᵀ R_t Q`` and ``U_tᵀ Y_t = Qᵀ Z_tᵀ``; then
    ``o_t = Y_tᵀ U_t^{−T} Qᵀ q_t``. ``U`` and ``Y`` are stored times ``2^E`` (exact rescalings; they cancel in U^{−1}Y).

    Each new row is two LAPACK calls: ``dtpqrt`` reduces ``[√λ U; Qᵀk_t]`` to a triangle (the QR of a triangle with a
    row appended, O(r²)) and ``dtpmqrt`` applies the same reflections to ``[√λ Y; v_tᵀ]`` — the rows of R that a QR
    of the whole stack ``[√λ U, √λ Y; Qᵀk_t, v_tᵀ]`` gives, up to their signs (which cancel in o_t). The condition
    check needs ``cond₂ U_t``; ``‖U‖_F ‖U⁻¹‖_F`` (``dtrtri``) bounds it from above, so the singular values are
    computed only where that bound exceeds half the threshold (the half covers the rounding of the computed
    inverse, whose residual ``|U X − I|`` is of order ``r ε |U||X|``, below 0.1 there): the same steps are refused.
    """
    L, dk = k.shape
    dv = v.shape[-1]
    eps = np.finfo(float).eps
    root_lam = math.sqrt(lam)
    Q = np.zeros((dk, 0))
    U, Y = np.zeros((0, 0), order="F"), np.zeros((0, dv), order="F")  # U_t · 2^E and Y_t · 2^E (Fortran: LAPACK's)
    E = 0
    o = np.zeros((L, dv))
    for t in range(L):
        r = Q.shape[1]
        nk = _norm2(k[t])
        if not math.isfinite(nk):
            raise ValueError(f"k: the norm of the key at step t = {t} overflows float64; rescale the keys (the "
                             f"least-squares map scales like 1/|k|)")
        if nk > 0:
            c = Q.T @ k[t]
            res = k[t] - Q @ c
            c2 = Q.T @ res  # reorthogonalize once ("twice is enough")
            res, c = res - Q @ c2, c + c2
            nr = _norm2(res)
            if r < dk and nr > 4 * dk * eps * nk:  # a direction no earlier key excited: its prior λ^t δ enters
                Q = np.c_[Q, res / nr]
                prior = math.exp(E * math.log(2.0) + 0.5 * (math.log(delta) + t * math.log(lam)))
                U_new, Y_new = np.zeros((r + 1, r + 1), order="F"), np.zeros((r + 1, dv), order="F")
                U_new[:r, :r], U_new[r, r], Y_new[:r] = U, prior, Y
                U, Y, c, r = U_new, Y_new, np.r_[c, nr], r + 1
            if E > 900:  # everything earlier is below 2^−900 of this key: bring it to scale (what underflows is refused)
                U, Y, E = np.asfortranarray(np.ldexp(U, 900 - E)), np.asfortranarray(np.ldexp(Y, 900 - E)), 900
            U *= root_lam
            Y *= root_lam
            U, V, T, _ = lapack.dtpqrt(0, min(_TPQRT_BLOCK, r), U, np.ldexp(c, E)[None], overwrite_a=1, overwrite_b=1)
            if dv:
                Y, _, _ = lapack.dtpmqrt(0, V, T, Y, np.ldexp(v[t], E)[None], trans="T", overwrite_a=1, overwrite_b=1)
        else:  # a zero key writes nothing: every row decays by √λ
            U *= root_lam
            Y *= root_lam
        if r == 0:
            continue  # S_t = 0 before any key is written
        m = np.abs(U).max()
        if m > 0:
            _, e = np.frexp(m)
            U, Y, E = np.asfortranarray(np.ldexp(U, -int(e))), np.asfortranarray(np.ldexp(Y, -int(e))), E - int(e)
        inv, info = lapack.dtrtri(U)
        if not (info == 0 and np.linalg.norm(U) * np.linalg.norm(inv) <= RLS_COND_MAX / 2):  # cond₂ U near the threshold
            sv = np.linalg.svd(U, compute_uv=False)
            cond = sv[0] / sv[-1] if sv[-1] > 0 else math.inf
            if cond > RLS_COND_MAX:
                raise ValueError(
                    f"lam, delta, k: at step t = {t} the least-squares problem (16.13) restricted to the span of the "
                    f"keys has cond(U_t) = {cond:.1e} > 2^-10/eps = {RLS_COND_MAX:.1e} (U_t^T U_t = R_t on that span): "
                    f"a direction the keys excited has faded (weight lam^(t-i)) to about {1 / cond ** 2:.0e} of the "
                    f"others, and float64 cannot recall its value to 1e-6; use a larger lam, or shorter sequences")
        x, _ = lapack.dtrtrs(U, (Q.T @ q[t])[:, None], trans=1)  # U_t^{−T} Qᵀ q_t
        o[t] = Y.T @ x[:, 0]  # Y_tᵀ U_t^{−T} Qᵀ q_t
    return o


@guard_overflow()
def rls_memory(q, k, v, *, lam=1.0, delta=1e-6, scale=None):
    r"""The least-squares key→value map after each step, read out by the queries: ``o_t = S_t q_t``.

    Implements Eq. (16.13) of the book: ``S_t`` minimizes
    ``Σ_{i≤t} λ^{t−i} ‖v_i − S k_i‖² + λ^{t+1} δ ‖S‖_F²``, i.e.

    ``S_t = (Σ_{i≤t} λ^{t−i} v_i k_iᵀ) (Σ_{i≤t} λ^{t−i} k_i k_iᵀ + λ^{t+1} δ I)^{−1}``

    — RLS (Eq. (6.8) of chapter 6, Haykin 2014, ch. 10) with a matrix of weights, the Kalman
    filter of a static state (chapter 3).

    Parameters
    ----------
    q, k : array_like, shape (..., L, Dk)
        Queries and keys (keys need not be normalized).
    v : array_like, shape (..., L, Dv)
    lam : float in (0, 1]
        Forgetting factor λ.
    delta : float > 0
        Ridge regularization δ of the initial state (P_{−1} = I/δ in the recursion).
    scale : float >= 0, optional
        Multiplies the queries; default ``1/sqrt(Dk)``.

    Returns
    -------
    o : ndarray, shape (..., L, Dv)

    Raises
    ------
    ValueError
        Naming ``lam, delta, k``, where the answer cannot be computed to 1e-6 (below).

    Notes
    -----
    This version solves the weighted least-squares problem (16.13) directly, never forming
    ``R_t`` as a sum: an orthonormal basis ``Q`` of the keys written so far splits the key space.
    Orthogonal to the keys (16.13) gives ``S_t u = 0`` exactly, whatever the prior. On their span
    the weighted data rows ``λ^{(t−i)/2}[Qᵀk_i, v_iᵀ]`` and the prior rows ``(λ^{t+1}δ)^{1/2} I``
    are reduced by one QR update per step to a triangular ``U_t`` (``U_tᵀU_t = QᵀR_tQ``) and
    ``Y_t``, and ``o_t = Y_tᵀ U_t^{−T} Qᵀ q_t`` — O(L Dk²(Dk + Dv)) work per sequence, looped over
    the batch; each step is a few LAPACK calls (the row update ``dtpqrt``, ``dtrtri`` for an upper
    bound on ``cond U_t``, ``dtrtrs`` for the readout; singular values only where that bound nears
    the threshold below). Its twin :func:`rls_memory_loop` runs the RLS recursion; their agreement is the
    statement "RLS is exact least squares" (§16.6).

    A direction that the keys excited once and then left alone keeps its value in (16.13) (its
    data and the prior fade at the same rate), but its weight ``λ^{t−i}`` falls against the
    keys written since, and ``cond U_t`` grows like ``λ^{−(t−i)/2}``. The error of the value
    recalled there was measured at about ``(ε cond U_t)²`` (chapter 16, §16.6, against 130-digit
    solutions). Where ``cond U_t > 2^{−10}/ε ≈ 4.4e12`` (``RLS_COND_MAX``), so that this error
    could exceed about 1e-6, the call is refused with a ``ValueError`` naming ``lam``, ``delta``
    and ``k``. Directions never excited (fewer keys than Dk, keys of lower rank) do not count: a
    key counts as new only if its part outside the span is above ``4 Dk ε ‖k‖``, the rounding of
    the key itself. Before any key is written ``S_t = 0``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k = rng.normal(size=(2, 6, 3))
    >>> v = rng.normal(size=(6, 2))
    >>> o = rls_memory(q, k, v, lam=0.9, delta=0.1)
    >>> o.shape, bool(np.allclose(o, rls_memory_loop(q, k, v, lam=0.9, delta=0.1)))
    ((6, 2), True)
    """
    q, k, v, lam, delta = _rls_setup(q, k, v, lam, delta, scale)
    o = np.zeros(v.shape)
    for b in np.ndindex(*v.shape[:-2]):
        o[b] = _rls_lstsq(q[b], k[b], v[b], lam, delta)
    return o


@guard_overflow(hint=_RLS_WOUND_UP)
def rls_memory_loop(q, k, v, *, lam=1.0, delta=1e-6, scale=None):
    """Loop twin of :func:`rls_memory`: the RLS recursion of Eq. (16.13) (Eq. (6.7)) with a matrix of weights.

    The recursion of §16.6, ``P_{−1} = I/δ``,
    ``κ_t = P_{t−1} k_t / (λ + k_tᵀ P_{t−1} k_t)``, ``S_t = S_{t−1} + (v_t − S_{t−1} k_t) κ_tᵀ``,
    ``P_t = (P_{t−1} − κ_t k_tᵀ P_{t−1}) / λ``, ``o_t = S_t q_t``, run in square-root (inverse
    QR) form: the loop keeps a factor ``A_t`` with ``P_t = A_t A_tᵀ`` instead of ``P_t``, and one
    orthogonal rotation Θ (a QR factorization) per step turns the pre-array into a lower
    triangular post-array,

    ``[[1, k_tᵀ A_{t−1}/√λ], [0, A_{t−1}/√λ]] Θ = [[r_t, 0], [κ_t r_t, A_t]]``,
    ``r_t² = (λ + k_tᵀ P_{t−1} k_t)/λ``

    (multiply each side by its transpose: the blocks are the three equations above). The same
    gain and state update, with ``P_t`` never formed: with λ < 1 and keys that leave a
    direction unexcited, ``P_t`` grows there like ``λ^{−(t+1)}/δ`` while it stays O(1) along
    the keys, and once that ratio exceeds 1/ε the rounding of ``P − κ kᵀP`` corrupts the gain
    of the plain recursion (chapter 16 shows it). The condition number of ``A_t`` is the square
    root of that of ``P_t``, so the factor carries a larger spread of scales, but not an
    unlimited one: on chapter 16's windup case the recall error is 6e-11 at 40 + 40 passes,
    2e-8 at 50 + 50 and 0.1 at 80 + 80. The loop therefore refuses, with a ``ValueError`` naming
    ``lam``, ``delta`` and ``k``, at the first step where ``cond A_t > 2^{−10}/ε ≈ 4.4e12``
    (``RLS_COND_MAX``, ``cond P_t`` up to 2e25); below it, it agrees with :func:`rls_memory`
    (chapter 16, §16.6). :func:`rls_memory`, which does not carry the unexcited directions,
    answers the windup cases. The a-priori error ``v − S k`` is the Kalman innovation of a
    static state observed through ``k`` (chapter 3, Eq. (3.3), with F = I and Q = 0 for λ = 1).
    If ``A_t`` itself overflows the call is refused in the same way.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k = rng.normal(size=(2, 6, 3))
    >>> W = rng.normal(size=(2, 3))
    >>> o = rls_memory_loop(q, k, k @ W.T, delta=1e-12, scale=1.0)  # noiseless values v = W k
    >>> bool(np.allclose(o[2:], q[2:] @ W.T))  # exact once Dk = 3 independent keys are seen
    True
    """
    q, k, v, lam, delta = _rls_setup(q, k, v, lam, delta, scale)
    batch = q.shape[:-2]
    L, dk, dv = q.shape[-2], k.shape[-1], v.shape[-1]
    o = np.zeros(batch + (L, dv))
    pre = np.zeros((dk + 1, dk + 1))
    for b in np.ndindex(*batch):
        S = np.zeros((dv, dk))
        A = np.eye(dk) / math.sqrt(delta)  # P_{−1} = A Aᵀ = I/δ
        for t in range(L):
            kt = k[b][t]
            B = A / math.sqrt(lam)  # (P_{t−1}/λ)^{1/2}
            pre[0, 0], pre[0, 1:], pre[1:, 0], pre[1:, 1:] = 1.0, kt @ B, 0.0, B
            post = np.linalg.qr(pre.T, mode="r").T  # pre Θ: lower triangular, Θ orthogonal
            gain = post[1:, 0] / post[0, 0]  # κ_t r_t / r_t = P_{t−1} k_t / (λ + k_tᵀ P_{t−1} k_t)
            S = S + np.outer(v[b][t] - S @ kt, gain)  # S_t = S_{t−1} + (v_t − S_{t−1} k_t) κ_tᵀ
            A = post[1:, 1:]  # P_t = A_t A_tᵀ = (P_{t−1} − κ_t k_tᵀ P_{t−1}) / λ
            sv = np.linalg.svd(A, compute_uv=False)
            if not sv[0] <= RLS_COND_MAX * sv[-1]:  # (also catches an overflowed factor: inf or NaN)
                if not np.all(np.isfinite(sv)):
                    raise ValueError(_RLS_WOUND_UP)
                raise ValueError(
                    f"lam, delta, k: the RLS recursion's square-root factor of P_t = R_t^(-1) has cond(A_t) = "
                    f"{sv[0] / sv[-1]:.1e} > 2^-10/eps = {RLS_COND_MAX:.1e} at step t = {t}: with lam < 1, P_t grows "
                    f"like lam^-(t+1)/delta in the directions the keys leave unexcited (and keys far larger than "
                    f"delta^(1/2) shrink it along themselves), and the recursion's gain is no longer accurate; use "
                    f"rls_memory, a larger lam or a larger delta")
            o[b][t] = S @ q[b][t]
    return o


# ---------------------------------------------------------------------------------------------
# The official interfaces of Mamba-2 (mamba_ssm) and fla, Eqs. (16.7)-(16.12)
# ---------------------------------------------------------------------------------------------

#: fla's ``l2norm_fwd``: ``x / sqrt(Σ x² + eps)`` with eps = 1e-6 (``use_qk_l2norm_in_kernel=True``)
L2NORM_EPS = 1e-6


def _swap(a: np.ndarray) -> np.ndarray:
    """(B, T, H, ·) <-> (B, H, T, ·) and (B, T, H) <-> (B, H, T): the sequence and head axes swapped (a view)."""
    return np.swapaxes(a, 1, 2)


def _official(x, name: str, shape: tuple, what: str) -> np.ndarray:
    """A float64 array (no copy) of exactly ``shape`` (None entries: any size >= 1), ``what`` the official layout
    (optionally followed by ``"; <where the sizes come from>"``)."""
    arr = _real(x, name)
    if arr.ndim != len(shape) or any(s is not None and a != s for a, s in zip(arr.shape, shape)) or 0 in arr.shape:
        want = ", ".join("·" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "")
        what, _, source = what.partition("; ")
        source = f" ({source})" if source else ""
        raise ValueError(f"{name}: expected shape {what} = ({want}){source} with every size >= 1, got shape {arr.shape}")
    return arr


def _optional(x, name: str, shape: tuple, what: str):
    return None if x is None else _official(x, name, shape, what)


def _exchanged(name: str, value, shape: tuple, layout: str, first: str = "q") -> None:
    """Refuse ``name`` (official ``layout``, e.g. ``"[B, T, H, V]"``) whose leading sizes are those of the first
    argument's ``shape`` (B, T, H, ·) with T and H exchanged, saying so: one of the two was passed head first, and
    the check alone would only report the expected shape. Nothing when T = H or the sizes are otherwise."""
    size = getattr(value, "shape", None)
    if size is None or len(size) < 3 or shape[1] == shape[2] or tuple(size[:3]) != (shape[0], shape[2], shape[1]):
        return
    raise ValueError(f"{name}: expected shape {layout} with B, T, H = {shape[:3]} from {first}, got shape {tuple(size)}: "
                     f"its T and H are {first}'s exchanged — was {name}, or {first} (with the arguments that agree "
                     f"with it), passed head first, [B, H, T, ·]?")


def _outvoted(name: str, shape: tuple, layout: str, swapped: str, later) -> None:
    """Refuse the first argument ``name`` (of ``shape``, official ``layout``) when the later arguments that take
    their sizes from it agree with each other and each disagrees with it: a ``ValueError`` naming it, where the
    check of the first later argument would blame that one. ``later``: ``(name, value, n)``, the leading ``n``
    sizes of ``value`` being those of ``shape`` (batch, sequence, heads); None values are left out, and at least
    two must be given. The message asks whether ``name`` was passed in the ``swapped`` layout (its axes 1 and 2
    exchanged) when that reading fits them."""
    given = []
    for other, value, n in later:
        if value is None:
            continue
        try:
            size = tuple(int(d) for d in np.shape(value))
        except Exception:  # noqa: BLE001 — not array-like: its own check names it
            return
        if len(size) < n:
            return
        given.append((other, size, n))
    if len(given) < 2 or any(size[:n] == shape[:n] for _, size, n in given):
        return
    if any(a[:min(m, n)] != b[:min(m, n)] for i, (_, a, m) in enumerate(given) for _, b, n in given[i + 1:]):
        return
    exchanged = (shape[0], shape[2], shape[1])
    hint = f": was {name} passed as {swapped}?" if all(size[:n] == exchanged[:n] for _, size, n in given) else ""
    listed = ", ".join(f"{other} {size}" for other, size, _ in given[:-1]) + f" and {given[-1][0]} {given[-1][1]}"
    raise ValueError(f"{name}: expected shape {layout}; its sizes {shape} disagree with {listed}, which agree with "
                     f"each other{hint}")


class _Mamba(NamedTuple):
    """A validated ``mamba_chunk_scan_combined`` call: refimpl's layout (b, h, l, ·) for the scan, the
    official one for the element-wise steps; ``raw`` = dt + dt_bias, ``pre`` = softplus(raw) (or raw),
    ``step`` = Δ = clamp(pre, dt_limit)."""

    x: np.ndarray  # (b, l, h, p)
    raw: np.ndarray  # (b, l, h)
    pre: np.ndarray
    step: np.ndarray
    A: np.ndarray
    B: np.ndarray  # (b, l, g, n)
    C: np.ndarray
    chunk_size: int
    D: np.ndarray | None  # (h,) or (h, p)
    z: np.ndarray | None  # (b, l, h, p)
    dt_bias: np.ndarray | None
    h0: np.ndarray | None  # (b, h, p, n)
    lo: float
    hi: float
    softplus: bool


def _check_mamba(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_softplus, dt_limit) -> _Mamba:
    """Validate ``mamba_chunk_scan_combined``'s arguments in the official layout, naming the official arguments."""
    softplus = as_bool(dt_softplus, "dt_softplus")
    x = _official(x, "x", (None,) * 4, "(batch, seqlen, nheads, headdim)")
    b, L, H, P = x.shape
    # dt, B and C agreeing on (batch, seqlen) with each other and not with x: x is named, not dt
    _outvoted("x", x.shape, "(batch, seqlen, nheads, headdim)", "(batch, nheads, seqlen, headdim)",
              (("dt", dt, 3), ("B", B, 2), ("C", C, 2)))
    dt = _official(dt, "dt", (b, L, H), "(batch, seqlen, nheads); sizes from x")
    if np.ndim(A) == 1 and np.shape(A)[0] == L != H:  # x and dt both head first, A (nheads,) as it should be
        raise ValueError(f"A: expected shape (nheads,) = ({H},) (nheads from x), got shape {np.shape(A)}: its length is "
                         f"x's seqlen as x reads, x {x.shape} (batch, seqlen, nheads, headdim) — were x and dt passed "
                         "head first, (batch, nheads, seqlen, ·)?")
    A = _official(A, "A", (H,), "(nheads,); nheads from x")
    if np.any(A > 0):
        raise ValueError(f"A: expected A <= 0 (a decaying state, Mamba-2's A = -exp(A_log)), got maximum {A.max():.6g}")
    B = _official(B, "B", (b, L, None, None), "(batch, seqlen, ngroups, dstate); batch and seqlen from x")
    G, N = B.shape[2:]
    if H % G:
        raise ValueError(f"B: its ngroups = {G} must divide nheads = {H} (head h reads group h // (nheads/ngroups))")
    C = _official(C, "C", B.shape, "(batch, seqlen, ngroups, dstate) like B")
    c = as_int(chunk_size, "chunk_size", minimum=1)
    if D is not None:
        D = _real(D, "D")
        if D.shape not in ((H,), (H, P)):
            raise ValueError(f"D: expected shape (nheads,) = ({H},) or (nheads, headdim) = ({H}, {P}) (from x), got shape {D.shape}")
    z = _optional(z, "z", x.shape, "(batch, seqlen, nheads, headdim) like x")
    dt_bias = _optional(dt_bias, "dt_bias", (H,), "(nheads,); nheads from x")
    h0 = _optional(initial_states, "initial_states", (b, H, P, N), "(batch, nheads, headdim, dstate); sizes from x and B")
    lim = _real(dt_limit, "dt_limit", finite=False)
    if lim.shape != (2,) or np.isnan(lim).any() or not (0 <= lim[0] <= lim[1]) or not np.isfinite(lim[0]):
        raise ValueError(f"dt_limit: expected (min, max) with 0 <= min <= max, min finite (max may be inf), got {lim.tolist()}")
    raw = dt if dt_bias is None else dt + dt_bias  # dt + dt_bias
    pre = np.logaddexp(0.0, raw) if softplus else raw  # softplus(dt + dt_bias), exact
    step = np.clip(pre, lim[0], lim[1])  # Δ = clamp(·, dt_limit) >= 0: a negative dt is a step of Δ = 0, as in the kernel
    return _Mamba(x, raw, pre, step, A, B, C, c, D, z, dt_bias, h0, float(lim[0]), float(lim[1]), softplus)


def _silu(z: np.ndarray) -> np.ndarray:
    return z * expit(z)


def _mamba_scan(m: _Mamba, loop: bool, D_inside: bool = True):
    """SSD in refimpl's layout on a validated call: ``y + D x`` (official layout, before the gate) and the
    final states (b, h, p, n)."""
    run = ssd_loop if loop else ssd
    y, states = run(_swap(m.x), _swap(m.step), m.A, _swap(m.B), _swap(m.C), None, chunk_size=m.chunk_size,
                    return_chunk_states=True, initial_state=m.h0)
    y = np.ascontiguousarray(_swap(y))  # (b, l, h, p)
    if m.D is not None and D_inside:
        y += (m.D[:, None] if m.D.ndim == 1 else m.D) * m.x  # y + D x, D per head or per channel
    return y, states[:, :, -1]


def _seq_runs(seq_idx, b: int, L: int) -> list:
    """mamba_ssm's ``seq_idx`` (batch, seqlen): for each batch row its sequences as ``(start, stop, first)``, the runs
    of equal ids, ``first`` when the run starts the row with id 0 — the one sequence the row's ``initial_states``
    enter (as mamba_ssm's state passing carries them). Ids are non-negative integers, non-decreasing along a row
    (each sequence one contiguous run)."""
    # int64 first: np.diff of unsigned ids wraps around, and would hide ids that go back
    ids = as_int_array(seq_idx, "seq_idx", "integer sequence ids (mamba_ssm's int32 tensor)")
    if ids.shape != (b, L):
        raise ValueError(f"seq_idx: expected shape (batch, seqlen) = ({b}, {L}) (from x), got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or np.any(np.diff(ids, axis=1) < 0)):
        raise ValueError("seq_idx: expected non-negative ids, non-decreasing along each row (each packed sequence "
                         "one contiguous run of its id)")
    runs = []
    for row in ids:
        cuts = np.concatenate([[0], np.flatnonzero(np.diff(row)) + 1, [L]]).tolist()
        runs.append([(s, e, s == 0 and int(row[0]) == 0) for s, e in zip(cuts[:-1], cuts[1:])])
    return runs


def _mamba_part(m: _Mamba, i: int, s: int, e: int, first: bool) -> _Mamba:
    """Row ``i``, steps ``s … e − 1`` of a validated call, as a call of its own; the row's initial state only for
    ``first`` (:func:`_seq_runs`)."""
    cut = lambda a: None if a is None else a[i:i + 1, s:e]  # noqa: E731
    return m._replace(x=cut(m.x), raw=cut(m.raw), pre=cut(m.pre), step=cut(m.step), B=cut(m.B), C=cut(m.C), z=cut(m.z),
                      h0=m.h0[i:i + 1] if first and m.h0 is not None else None)


def _check_varlen(runs, cu_seqlens, return_varlen_states):
    """``cu_seqlens``, whenever given (mamba_ssm reads it only for ``return_varlen_states`` and ignores it otherwise;
    refimpl refuses rather than ignores): one batch row whose ``seq_idx`` sequences it marks."""
    if cu_seqlens is None and not return_varlen_states:
        return
    if return_varlen_states and (runs is None or cu_seqlens is None):
        raise ValueError("return_varlen_states: needs cu_seqlens and the seq_idx of the same packed sequences (mamba_ssm "
                         "resets the state only where seq_idx changes)")
    if runs is None:
        raise ValueError("cu_seqlens: packs nothing without seq_idx (mamba_ssm resets the state only where seq_idx "
                         "changes, and reads cu_seqlens only for return_varlen_states): pass the seq_idx of the same "
                         "sequences, or no cu_seqlens")
    if len(runs) != 1:
        raise ValueError(f"cu_seqlens: packed sequences need one batch row, got batch = {len(runs)}")
    cu = _check_cu_seqlens(cu_seqlens, runs[0][-1][1])
    if cu.tolist() != [s for s, _, _ in runs[0]] + [runs[0][-1][1]]:
        raise ValueError(f"cu_seqlens: expected the offsets of seq_idx's sequences, "
                         f"{[s for s, _, _ in runs[0]] + [runs[0][-1][1]]}, got {cu.tolist()}")


def _mamba_forward(loop, x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_softplus, dt_limit,
                   return_final_states, seq_idx=None, cu_seqlens=None, return_varlen_states=False):
    return_final_states = as_bool(return_final_states, "return_final_states")
    return_varlen_states = as_bool(return_varlen_states, "return_varlen_states")
    m = _check_mamba(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_softplus, dt_limit)
    runs = None if seq_idx is None else _seq_runs(seq_idx, *m.x.shape[:2])
    _check_varlen(runs, cu_seqlens, return_varlen_states)
    if runs is None:
        out, final = _mamba_scan(m, loop)
        varlen = None
    else:  # packed sequences: each run of seq_idx on its own, the state starting again from 0 (Eq. (16.7) per run)
        out = np.empty(m.x.shape)
        final = np.empty(m.x.shape[:1] + m.x.shape[2:] + m.B.shape[-1:])
        ends = []
        for i, row in enumerate(runs):
            for s, e, first in row:
                out[i:i + 1, s:e], last = _mamba_scan(_mamba_part(m, i, s, e, first), loop)
                ends.append(last)
            final[i] = last[0]  # the state after the row's last step: its last sequence's
        varlen = np.concatenate(ends) if return_varlen_states else None
    if m.z is not None:
        out *= _silu(m.z)  # out = (y + D x) · silu(z)
    extra = (final,) if return_final_states else ()
    extra += (varlen,) if return_varlen_states else ()
    return (out, *extra) if extra else out


@guard_overflow()
def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None, *,
                              seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, math.inf),
                              return_final_states=False, return_varlen_states=False):
    r"""Mamba-2's SSD with the official interface of ``mamba_ssm`` (``mamba_chunk_scan_combined``).

    Implements Eqs. (16.7)–(16.8) of the book (Dao & Gu 2024, Mamba-2, §6 and Listing 1;
    ``mamba_ssm/ops/triton/ssd_combined.py``: ``mamba_chunk_scan_combined`` and its references
    ``ssd_chunk_scan_combined_ref``, ``ssd_selective_scan``): the official argument names, layouts
    (sequence before heads) and options, so that a kernel is checked with its own calling
    convention. The scan is :func:`ssd` after swapping the sequence and head axes.

    Parameters
    ----------
    x : array_like, shape (batch, seqlen, nheads, headdim)
        Inputs x_t (refimpl's ``ssd`` takes (..., H, L, P)).
    dt : array_like, shape (batch, seqlen, nheads)
        Step sizes before the bias, the softplus and the clamp.
    A : array_like, shape (nheads,)
        One scalar A_h ≤ 0 per head.
    B, C : array_like, shape (batch, seqlen, ngroups, dstate)
        Input and output projections; head h reads group ``h // (nheads / ngroups)``.
    chunk_size : int >= 1
        The kernel's chunk length Q; the result does not depend on it.
    D : array_like, shape (nheads,) or (nheads, headdim), optional
        Skip connection per head or per channel: ``y + D x``.
    z : array_like, shape (batch, seqlen, nheads, headdim), optional
        Gate: the output is ``(y + D x) · silu(z)``, ``silu(z) = z σ(z)``.
    dt_bias : array_like, shape (nheads,), optional
        Added to ``dt`` before the softplus.
    initial_states : array_like, shape (batch, nheads, headdim, dstate), optional
        The state h_{−1} before the first step (refimpl's orientation (P, N) too). Default 0.
    seq_idx : array_like of int, shape (batch, seqlen), optional
        Packed sequences: the id of the sequence each step belongs to, non-negative and
        non-decreasing along a row. Each run of equal ids is a sequence of its own: the state
        starts again from 0 where the id changes, except that a row's ``initial_states`` enter
        the sequence that starts it with id 0 (as mamba_ssm's state passing does).
    cu_seqlens : array_like of int, shape (N + 1,), optional
        The offsets of the N sequences of one batch row (batch = 1); needed only by
        ``return_varlen_states``. Checked whenever given: it needs ``seq_idx`` and must mark its
        runs (mamba_ssm ignores it without ``return_varlen_states``; refimpl refuses what it would
        ignore — it does not pack sequences by itself).
    dt_softplus : bool
        Apply ``softplus(x) = log(1 + e^x)`` to ``dt + dt_bias``.
    dt_limit : (float, float)
        ``(min, max)``, 0 ≤ min ≤ max: Δ is clamped to it after the softplus (default (0, inf)).
    return_final_states : bool
        Also return the state after the last step.
    return_varlen_states : bool
        Also return the state after the last step of each packed sequence (needs ``seq_idx`` and
        ``cu_seqlens``). Sequence 0's includes the row's ``initial_states``; mamba_ssm's
        ``chunk_state_varlen`` leaves them out when sequence 0 ends within the first chunk (it adds the
        carried state only to sequences that start before their last chunk) — a kernel faithful to it
        differs from refimpl there.

    Returns
    -------
    out : ndarray, shape (batch, seqlen, nheads, headdim), float64
    final_states : ndarray, shape (batch, nheads, headdim, dstate), float64
        Only if ``return_final_states``: the state after each row's last step.
    varlen_states : ndarray, shape (N, nheads, headdim, dstate), float64
        Only if ``return_varlen_states``, after ``final_states`` (mamba_ssm's order).

    Notes
    -----
    ``Δ = clamp(softplus(dt + dt_bias), dt_limit)`` (each step optional; the clamp is always
    applied, so with the default ``dt_limit`` a negative ``dt`` without the softplus is a step of
    Δ = 0, which leaves the state unchanged, as in the kernel), then per head, with
    ``h_{−1}`` = ``initial_states`` (Eq. (16.7)):

    .. math::  h_t = e^{Δ_t A} h_{t−1} + Δ_t x_t B_t^\top,\qquad
               \mathrm{out}_t = (h_t C_t + D \odot x_t)\,\mathrm{silu}(z_t).

    Differences from ``mamba_ssm``, all deliberate: float64 throughout; the softplus is exact,
    whereas the kernel returns x itself above 20 (a difference log1p(e^{−x}) < 2.1e-9, below
    float32's resolution there); A > 0 is refused, as :func:`ssd` refuses it; the options
    are keyword-only (refimpl's convention); ``seq_idx`` must be non-decreasing along a row (the
    kernel only compares neighbouring ids; ids that come back would join sequences) and
    ``return_varlen_states`` needs ``seq_idx`` (without it the kernel would not reset the states
    its varlen states are read from); a ``cu_seqlens`` is checked even without
    ``return_varlen_states``, where the kernel ignores it.
    In :func:`refimpl.oracle.compare` the call has no ``return_final_states`` (a ``return_*`` flag is
    not an argument of a case): a kernel that returns ``(out, final_states)`` has its final states
    judged too, one that returns ``out`` alone (or ``(out, None)``) is judged on ``out``.
    Loop twin: :func:`mamba_chunk_scan_combined_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> b, L, H, P, G, N = 2, 7, 4, 3, 2, 5
    >>> x, z = rng.normal(size=(2, b, L, H, P))
    >>> dt, (B, C) = rng.normal(size=(b, L, H)), rng.normal(size=(2, b, L, G, N))
    >>> A, D = -np.exp(rng.normal(size=H)), rng.normal(size=(H, P))
    >>> out, h = mamba_chunk_scan_combined(x, dt, A, B, C, 4, D, z, np.zeros(H), dt_softplus=True,
    ...                                    dt_limit=(0.01, 10.0), return_final_states=True)
    >>> out.shape, h.shape
    ((2, 7, 4, 3), (2, 4, 3, 5))
    """
    return _mamba_forward(False, x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_softplus, dt_limit,
                          return_final_states, seq_idx, cu_seqlens, return_varlen_states)


@guard_overflow()
def mamba_chunk_scan_combined_loop(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None, *,
                                   seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, math.inf),
                                   return_final_states=False, return_varlen_states=False):
    """Loop twin of :func:`mamba_chunk_scan_combined`: the same wrapper over :func:`ssd_loop` (the recurrence (16.7)).

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> x, dt, A, B, C = rng.normal(size=(1, 5, 2, 3)), rng.normal(size=(1, 5, 2)), -np.ones(2), *rng.normal(size=(2, 1, 5, 1, 4))
    >>> kw = dict(dt_softplus=True)
    >>> bool(np.allclose(mamba_chunk_scan_combined_loop(x, dt, A, B, C, 2, **kw), mamba_chunk_scan_combined(x, dt, A, B, C, 2, **kw)))
    True
    """
    return _mamba_forward(True, x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_softplus, dt_limit,
                          return_final_states, seq_idx, cu_seqlens, return_varlen_states)


class _Fla(NamedTuple):
    """A validated fla call in refimpl's layout (B, H, T, ·): q and k normalized if asked, the log-gates
    (per channel (B, H, T, K), per head (B, H, T) or None), β (B, H, T) or None, the initial state
    transposed to (B, H, V, K); ``q_raw``, ``k_raw`` (official layout) and their ``rstd`` for the chain
    rule of the normalization (None without it)."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    log_g: np.ndarray | None
    beta: np.ndarray | None
    scale: object
    S0: np.ndarray | None
    l2norm: bool
    rstd: tuple | None


def _check_fla(q, k, v, g, beta, scale, initial_state, gate: str, delta: bool, l2norm=False, g_gamma=None) -> _Fla:
    """Validate an fla call (``gate``: "channel", "head" or "none"), naming fla's arguments and shapes.
    ``g_gamma`` (H,) (``chunk_simple_gla``): a constant log-decay per head added to ``g`` (or alone)."""
    l2norm = as_bool(l2norm, "use_qk_l2norm_in_kernel")
    q = _official(q, "q", (None,) * 4, "[B, T, H, K]")
    Bb, T, H, K = q.shape
    # k, v and the gates agreeing on [B, T, H] with each other and not with q: q is named, not k (k and v alone are
    # no evidence against q, as they usually share a layout: a gate, g or beta, must side with them)
    gates = (("g", g if gate != "none" else None, 3), ("beta", beta if delta else None, 3))
    if any(value is not None for _, value, _ in gates):
        _outvoted("q", q.shape, "[B, T, H, K]", "[B, H, T, K] (head first)", (("k", k, 3), ("v", v, 3)) + gates)
    _exchanged("k", k, q.shape, "[B, T, H, K]")
    k = _official(k, "k", q.shape, "[B, T, H, K] like q")
    _exchanged("v", v, q.shape, "[B, T, H, V]")
    v = _official(v, "v", (Bb, T, H, None), "[B, T, H, V]")
    V = v.shape[-1]
    if g_gamma is not None:  # chunk_simple_gla: log g_t = g_t + g_gamma (per head)
        g_gamma = _official(g_gamma, "g_gamma", (H,), "[H]; H from q")
        if g_gamma.max() > 0:
            raise ValueError(f"g_gamma: expected log-space decays <= 0, got maximum {g_gamma.max():.6g}")
        g = np.zeros((Bb, T, H)) if g is None else g
    elif gate == "head" and g is None:
        raise ValueError("g: chunk_simple_gla needs the log-gates g, g_gamma or both (as fla)")
    if gate != "none":
        _exchanged("g", g, q.shape, "[B, T, H, K]" if gate == "channel" else "[B, T, H]")
        g = _official(g, "g", q.shape if gate == "channel" else (Bb, T, H), "[B, T, H, K]" if gate == "channel" else "[B, T, H]")
        if g.max() > 0:
            raise ValueError(f"g: expected log-space gates <= 0 (forget gates in (0, 1]), got maximum {g.max():.6g}")
        if g_gamma is not None:
            g = g + g_gamma
    if delta:
        _exchanged("beta", beta, q.shape, "[B, T, H]")
        beta = _official(beta, "beta", (Bb, T, H), "[B, T, H]")
    if np.ndim(initial_state) == 4 and np.shape(initial_state)[1] == T != H:
        raise ValueError(f"initial_state: expected shape [N, H, K, V] = ({Bb}, {H}, {K}, {V}) (N = B: one state per "
                         f"sequence; H, K from q, V from v), got shape {np.shape(initial_state)}: its H is q's T as q "
                         f"reads, q {q.shape} [B, T, H, K] — were q, k, v passed head first, [B, H, T, ·]?")
    S0 = _optional(initial_state, "initial_state", (Bb, H, K, V),
                   "[N, H, K, V]; N = B, one state per sequence; H, K from q, V from v")
    rstd = None
    if l2norm:  # fla's l2norm_fwd on q and k: x / sqrt(Σ x² + eps)
        (q, rq), (k, rk) = _l2norm(q), _l2norm(k)
        rstd = (rq, rk)
        # any finite raw key: a short one (norm < 1, e.g. a zero key of padding) writes less, as in fla
        # (the delta rule's unit-key check is lifted for these keys: _FLA_L2NORM_KEYS)
    elif delta:
        norms = np.sqrt(np.einsum("...j,...j->...", k, k))
        if np.max(np.abs(norms - 1.0)) > KEY_NORM_TOL:
            worst = norms.flat[int(np.argmax(np.abs(norms - 1.0)))]
            raise ValueError(f"k: the delta rule expects l2-normalized keys (|‖k_t‖ − 1| <= {KEY_NORM_TOL:g}), got a key "
                             f"of norm {worst:.6g}; normalize them, or pass use_qk_l2norm_in_kernel=True to normalize q "
                             "and k as fla does")
    sw = lambda a: None if a is None else _swap(a)  # noqa: E731
    return _Fla(sw(q), sw(k), sw(v), sw(g) if gate != "none" else None, sw(beta) if delta else None, scale,
                None if S0 is None else np.swapaxes(S0, -1, -2), l2norm, rstd)


def _l2norm(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """fla's ``l2norm_fwd`` over the last axis: ``(x r, r)`` with ``r = 1 / sqrt(Σ x² + eps)``, eps = ``L2NORM_EPS``.
    A row whose Σ x² overflows float64 (entries above ~1e154) is scaled by a power of two first (exact), where eps is
    far below the rounding of Σ (x/s)² >= 1/4: ``r = 1 / (s sqrt(Σ (x/s)²))``, so that it is normalized instead of
    becoming a zero vector (r = 0). Every other row is the formula as written, bit for bit."""
    ss = np.einsum("...j,...j->...", x, x)
    r = 1.0 / np.sqrt(ss + L2NORM_EPS)
    big = np.isinf(ss)  # x is finite: only an overflow of Σ x²
    if np.any(big):
        xs, s = pow2_scale(x[big], axis=-1)
        r[big] = 1.0 / (s[..., 0] * np.sqrt(np.einsum("...j,...j->...", xs, xs)))
    return x * r[..., None], r


def _fla_finish(o, states, output_final_state: bool):
    """fla's return value: ``o`` in (B, T, H, V) and the final state (B, H, K, V) (fla's orientation) or None."""
    return np.ascontiguousarray(_swap(o)), (np.ascontiguousarray(np.swapaxes(states[..., -1, :, :], -1, -2))
                                           if output_final_state else None)


def _check_cu_seqlens(cu_seqlens, T: int, name: str = "cu_seqlens", dtype: str = "fla's LongTensor") -> np.ndarray:
    """fla's ``cu_seqlens`` of a packed batch: integer offsets ``0 = cu_0 < cu_1 < … < cu_N = T`` (N + 1,),
    sequence i the steps ``cu_i … cu_{i+1} − 1`` of the one batch row; returned as int64. ``name`` and
    ``dtype`` (the tensor the library takes) for the messages (FlashAttention's ``cu_seqlens_q``/``_k``)."""
    # int64 first: np.diff of unsigned offsets wraps around, and would hide a decrease
    cu = as_int_array(cu_seqlens, name, f"integer offsets ({dtype})")
    if cu.ndim != 1 or cu.size < 2:
        raise ValueError(f"{name}: expected shape (N + 1,) with N >= 1 sequences, got shape {cu.shape}")
    if cu[0] != 0 or cu[-1] != T:
        raise ValueError(f"{name}: expected offsets from 0 to T = {T} (the packed length), got {int(cu[0])} … {int(cu[-1])}")
    if np.any(np.diff(cu) <= 0):
        raise ValueError(f"{name}: expected strictly increasing offsets (every sequence at least one step), got "
                         f"{cu.tolist() if cu.size <= 20 else 'a decrease or a repeat'}")
    return cu


def _fla_packed(f: _Fla, cu_seqlens, initial_state, extra=None):
    """The sequences of a packed fla call (``cu_seqlens``): for each, the validated call ``f`` cut to its steps
    (refimpl's layout, the sequence axis third) with its own initial state, and ``extra`` (an array in fla's layout
    (1, T, ·), e.g. the cotangent ``do``) cut alike. fla runs them as independent sequences: every state starts
    from the sequence's own initial state (``initial_state`` (N, H, K, V), or 0), chunks restart at each start."""
    Bb, H, T, K = f.q.shape
    V = f.v.shape[-1]
    if Bb != 1:
        raise ValueError(f"q: packed sequences (cu_seqlens) need one batch row, shape [1, T, H, K], got B = {Bb}")
    cu = _check_cu_seqlens(cu_seqlens, T)
    N = cu.size - 1
    S0 = _optional(initial_state, "initial_state", (N, H, K, V), f"[N, H, K, V]; one per sequence, N = {N} from cu_seqlens")
    cut = lambda a, b, e: None if a is None else a[:, :, b:e]  # noqa: E731
    for i, (b, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        part = f._replace(q=cut(f.q, b, e), k=cut(f.k, b, e), v=cut(f.v, b, e), log_g=cut(f.log_g, b, e),
                          beta=cut(f.beta, b, e), S0=None if S0 is None else np.swapaxes(S0[i:i + 1], -1, -2))
        yield (part,) if extra is None else (part, extra[:, b:e])


def _fla_run(f: _Fla, core, cu_seqlens, initial_state, output_final_state):
    """fla's return value of ``core(f) -> (o, chunk states)`` (refimpl's layout), for one call or, with
    ``cu_seqlens``, for each packed sequence, the outputs joined along the sequence and the final states stacked."""
    if cu_seqlens is None:
        return _fla_finish(*core(f), output_final_state)
    runs = [core(part) for part, in _fla_packed(f, cu_seqlens, initial_state)]
    o = np.concatenate([o for o, _ in runs], axis=-2)
    final = np.concatenate([states[..., -1:, :, :] for _, states in runs], axis=0)  # (N, H, 1, V, K)
    return _fla_finish(o, final, output_final_state)


def _fla_gla(loop, q, k, v, g, scale, initial_state, output_final_state, gate, g_gamma=None, cu_seqlens=None):
    output_final_state = as_bool(output_final_state, "output_final_state")
    f = _check_fla(q, k, v, g, None, scale, initial_state if cu_seqlens is None else None, gate, False, g_gamma=g_gamma)
    run = gated_linear_attention_loop if loop else gated_linear_attention
    core = lambda f: run(f.q, f.k, f.v, f.log_g, scale=f.scale, return_chunk_states=True, initial_state=f.S0)  # noqa: E731
    return _fla_run(f, core, cu_seqlens, initial_state, output_final_state)


def _fla_delta(loop, q, k, v, g, beta, scale, initial_state, output_final_state, l2norm, gated, cu_seqlens=None):
    output_final_state = as_bool(output_final_state, "output_final_state")
    f = _check_fla(q, k, v, g, beta, scale, initial_state if cu_seqlens is None else None, "head" if gated else "none",
                   True, l2norm)
    run = delta_rule_loop if loop else delta_rule
    core = lambda f: _with_l2norm_keys(f.l2norm, run, f.q, f.k, f.v, f.beta, log_g=f.log_g,  # noqa: E731
                                       scale=f.scale, return_chunk_states=True, initial_state=f.S0)
    return _fla_run(f, core, cu_seqlens, initial_state, output_final_state)



@guard_overflow()
def chunk_gla(q, k, v, g, scale=None, initial_state=None, *, output_final_state=False, cu_seqlens=None):
    r"""Gated linear attention with the official interface of fla (``fla.ops.gla.chunk_gla``).

    Implements Eqs. (16.2)–(16.5) of the book (Yang et al. 2024a, GLA; ``fla/ops/gla/chunk.py``) in
    fla's layout: :func:`gated_linear_attention` after swapping the sequence and head axes.

    Parameters
    ----------
    q, k : array_like, shape (B, T, H, K)
        Queries and keys.
    v : array_like, shape (B, T, H, V)
    g : array_like, shape (B, T, H, K)
        Forget gates in log space, ≤ 0, one per key channel (GLA's log α_t).
    scale : float >= 0, optional
        Multiplies the queries; default ``K^{−1/2}`` (fla's default).
    initial_state : array_like, shape (B, H, K, V), optional
        The state before the first step in fla's orientation (K, V): refimpl's S_{−1} transposed.
    output_final_state : bool
        Return the state after the last step (else None), as fla does.
    cu_seqlens : array_like of int, shape (N + 1,), optional
        Packed sequences (fla's varlen mode): one batch row (B = 1) holds N sequences, sequence i the
        steps ``cu_seqlens[i] … cu_seqlens[i+1] − 1`` (``0 = cu_0 < … < cu_N = T``). Each runs on its
        own from its own initial state (``initial_state`` of shape (N, H, K, V), or 0), as N separate
        calls would; the final states are then (N, H, K, V).

    Returns
    -------
    o : ndarray, shape (B, T, H, V), float64
    final_state : ndarray, shape (B, H, K, V) (or (N, H, K, V) with ``cu_seqlens``), float64, or None
        The state after the last step, fla's orientation (refimpl's S_{T−1} transposed), if
        ``output_final_state``; else None.

    Notes
    -----
    In fla's orientation (state ``h_t`` of shape (K, V), the transpose of refimpl's ``S_t``):
    ``h_t = Diag(e^{g_t}) h_{t−1} + k_t v_tᵀ``, ``o_t = h_tᵀ (scale · q_t)`` (Eq. (16.2)).

    Differences from fla, all deliberate: float64 throughout; ``g > 0`` is refused; the chunk length
    (fla's 64) does not change the result; the deprecated ``head_first`` is not supported;
    ``output_final_state`` and ``cu_seqlens`` are keyword-only (refimpl's convention for options).
    Loop twin: :func:`chunk_gla_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k = rng.normal(size=(2, 1, 6, 2, 3))
    >>> v, g = rng.normal(size=(1, 6, 2, 4)), -rng.uniform(0, 1, (1, 6, 2, 3))
    >>> o, ht = chunk_gla(q, k, v, g, output_final_state=True)
    >>> o.shape, ht.shape
    ((1, 6, 2, 4), (1, 2, 3, 4))
    >>> o2 = gated_linear_attention(q.swapaxes(1, 2), k.swapaxes(1, 2), v.swapaxes(1, 2), g.swapaxes(1, 2))
    >>> bool(np.allclose(o, o2.swapaxes(1, 2)))
    True
    """
    return _fla_gla(False, q, k, v, g, scale, initial_state, output_final_state, "channel", cu_seqlens=cu_seqlens)


@guard_overflow()
def chunk_gla_loop(q, k, v, g, scale=None, initial_state=None, *, output_final_state=False, cu_seqlens=None):
    """Loop twin of :func:`chunk_gla`: the same wrapper over :func:`gated_linear_attention_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 1, 5, 1, 2))
    >>> g = -rng.uniform(0, 1, (1, 5, 1, 2))
    >>> bool(np.allclose(chunk_gla_loop(q, k, v, g)[0], chunk_gla(q, k, v, g)[0]))
    True
    """
    return _fla_gla(True, q, k, v, g, scale, initial_state, output_final_state, "channel", cu_seqlens=cu_seqlens)


@guard_overflow()
def chunk_simple_gla(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None, *, output_final_state=False,
                     cu_seqlens=None):
    r"""Gated linear attention with one gate per head, fla's interface (``fla.ops.simple_gla.chunk_simple_gla``).

    Implements Eqs. (16.2)–(16.5) with a scalar gate per head and step (the decay of Mamba-2's SSD,
    Eq. (16.7); ``fla/ops/simple_gla/chunk.py``): :func:`gated_linear_attention` with per-head
    log-gates, after swapping the sequence and head axes.

    Parameters
    ----------
    q, k : array_like, shape (B, T, H, K)
    v : array_like, shape (B, T, H, V)
    g : array_like, shape (B, T, H), optional
        Forget gates in log space, ≤ 0, one per head and step.
    g_gamma : array_like, shape (H,), optional
        A constant log-decay per head, ≤ 0, added to ``g`` at every step (fla's ``g_gamma``; alone it
        is RetNet's retention with γ = e^{g_gamma}). At least one of ``g``, ``g_gamma``.
    scale, initial_state, output_final_state, cu_seqlens
        As in :func:`chunk_gla`: default scale ``K^{−1/2}``, states (B, H, K, V) in fla's orientation
        ((N, H, K, V) for N packed sequences).

    Returns
    -------
    o : ndarray, shape (B, T, H, V), float64
    final_state : ndarray, shape (B, H, K, V), float64, or None

    Notes
    -----
    ``h_t = e^{g_t} h_{t−1} + k_t v_tᵀ``, ``o_t = h_tᵀ (scale · q_t)`` (fla's orientation, Eq. (16.2)).

    Differences from fla, all deliberate: as :func:`chunk_gla`.
    Loop twin: :func:`chunk_simple_gla_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 1, 6, 2, 3))
    >>> g = -rng.uniform(0, 1, (1, 6, 2))
    >>> o, ht = chunk_simple_gla(q, k, v, g, initial_state=np.zeros((1, 2, 3, 3)), output_final_state=True)
    >>> o.shape, ht.shape
    ((1, 6, 2, 3), (1, 2, 3, 3))
    """
    return _fla_gla(False, q, k, v, g, scale, initial_state, output_final_state, "head", g_gamma, cu_seqlens)


@guard_overflow()
def chunk_simple_gla_loop(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None, *, output_final_state=False,
                          cu_seqlens=None):
    """Loop twin of :func:`chunk_simple_gla`: the same wrapper over :func:`gated_linear_attention_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 1, 5, 1, 2))
    >>> g = -rng.uniform(0, 1, (1, 5, 1))
    >>> bool(np.allclose(chunk_simple_gla_loop(q, k, v, g)[0], chunk_simple_gla(q, k, v, g)[0]))
    True
    """
    return _fla_gla(True, q, k, v, g, scale, initial_state, output_final_state, "head", g_gamma, cu_seqlens)


@guard_overflow()
def chunk_delta_rule(q, k, v, beta, scale=None, initial_state=None, *, output_final_state=False,
                     use_qk_l2norm_in_kernel=False, cu_seqlens=None):
    r"""DeltaNet with the official interface of fla (``fla.ops.delta_rule.chunk_delta_rule``).

    Implements Eqs. (16.9)–(16.12) of the book (Yang et al. 2024b, DeltaNet; ``fla/ops/delta_rule/chunk.py``)
    in fla's layout: :func:`delta_rule` after swapping the sequence and head axes.

    Parameters
    ----------
    q, k : array_like, shape (B, T, H, K)
        Queries and keys. Without ``use_qk_l2norm_in_kernel`` the keys must be ℓ2-normalized
        (|‖k_t‖ − 1| ≤ ``KEY_NORM_TOL``, as :func:`delta_rule` requires), else ``ValueError``;
        with it any finite raw q and k.
    v : array_like, shape (B, T, H, V)
    beta : array_like, shape (B, T, H)
        Writing strengths β_t ∈ [0, 2].
    scale : float >= 0, optional
        Multiplies the (normalized) queries; default ``K^{−1/2}``.
    initial_state : array_like, shape (B, H, K, V), optional
        The state before the first step, fla's orientation (refimpl's S_{−1} transposed).
    output_final_state : bool
        Return the state after the last step (else None).
    use_qk_l2norm_in_kernel : bool
        Normalize q and k first, as fla's ``l2norm_fwd`` does: ``x / sqrt(Σ x² + 1e-6)``. A raw key of
        norm below ~0.011 stays short (norm < 1 − ``KEY_NORM_TOL``; a zero key, e.g. of padding, stays 0):
        accepted, as fla runs it — it writes less, and with β ≤ 2 the write stays non-expansive. (Where
        Σ x² would overflow, above ~1e154, the row is scaled first, so that it is still normalized.)
    cu_seqlens : array_like of int, shape (N + 1,), optional
        Packed sequences, as in :func:`chunk_gla` (B = 1; states (N, H, K, V)).

    Returns
    -------
    o : ndarray, shape (B, T, H, V), float64
    final_state : ndarray, shape (B, H, K, V), float64, or None

    Notes
    -----
    In fla's orientation (``h_t`` (K, V) = refimpl's ``S_tᵀ``):
    ``h_t = (I − β_t k_t k_tᵀ) h_{t−1} + β_t k_t v_tᵀ``, ``o_t = h_tᵀ (scale · q_t)`` (Eq. (16.9)).

    Differences from fla, all deliberate: float64 throughout (fla refuses float32 inputs here and
    runs bfloat16); keys that are not unit (without the normalization) and β outside [0, 2] are
    refused; ``head_first`` is not supported; the options are keyword-only. The
    normalization keeps fla's eps = 1e-6 (``L2NORM_EPS``), so the oracle's keys are fla's.
    Loop twin: :func:`chunk_delta_rule_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 1, 6, 2, 4))
    >>> beta = rng.uniform(0.1, 0.9, (1, 6, 2))
    >>> o, ht = chunk_delta_rule(q, k, v, beta, output_final_state=True, use_qk_l2norm_in_kernel=True)
    >>> o.shape, ht.shape
    ((1, 6, 2, 4), (1, 2, 4, 4))
    """
    return _fla_delta(False, q, k, v, None, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel,
                      False, cu_seqlens)


@guard_overflow()
def chunk_delta_rule_loop(q, k, v, beta, scale=None, initial_state=None, *, output_final_state=False,
                          use_qk_l2norm_in_kernel=False, cu_seqlens=None):
    """Loop twin of :func:`chunk_delta_rule`: the same wrapper over :func:`delta_rule_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 1, 5, 1, 2))
    >>> beta = rng.uniform(0.1, 0.9, (1, 5, 1))
    >>> kw = dict(use_qk_l2norm_in_kernel=True)
    >>> bool(np.allclose(chunk_delta_rule_loop(q, k, v, beta, **kw)[0], chunk_delta_rule(q, k, v, beta, **kw)[0]))
    True
    """
    return _fla_delta(True, q, k, v, None, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel,
                      False, cu_seqlens)


@guard_overflow()
def chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, *, output_final_state=False,
                           use_qk_l2norm_in_kernel=False, cu_seqlens=None):
    r"""Gated DeltaNet with the official interface of fla (``fla.ops.gated_delta_rule.chunk_gated_delta_rule``).

    Implements Eqs. (16.9)–(16.12) with a gate per head (Yang et al. 2025, Gated DeltaNet, Eq. (10);
    ``fla/ops/gated_delta_rule/chunk.py``): :func:`delta_rule` with ``log_g``, after swapping the
    sequence and head axes.

    Parameters
    ----------
    q, k, v, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel, cu_seqlens
        As in :func:`chunk_delta_rule`.
    g : array_like, shape (B, T, H)
        Forget gates in log space, ≤ 0, one per head and step.

    Returns
    -------
    o : ndarray, shape (B, T, H, V), float64
    final_state : ndarray, shape (B, H, K, V), float64, or None

    Notes
    -----
    ``h_t = e^{g_t} (I − β_t k_t k_tᵀ) h_{t−1} + β_t k_t v_tᵀ``, ``o_t = h_tᵀ (scale · q_t)``
    (fla's orientation; Eq. (16.9) with ``g_t`` the log-gate).

    Differences from fla, all deliberate: as :func:`chunk_delta_rule`; ``g > 0`` is refused too.
    Loop twin: :func:`chunk_gated_delta_rule_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 1, 6, 2, 4))
    >>> k /= np.linalg.norm(k, axis=-1, keepdims=True)  # unit keys (or use_qk_l2norm_in_kernel=True)
    >>> g, beta = -rng.uniform(0, 0.5, (1, 6, 2)), rng.uniform(0.1, 0.9, (1, 6, 2))
    >>> o, ht = chunk_gated_delta_rule(q, k, v, g, beta)
    >>> o.shape, ht is None
    ((1, 6, 2, 4), True)
    """
    return _fla_delta(False, q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel,
                      True, cu_seqlens)


@guard_overflow()
def chunk_gated_delta_rule_loop(q, k, v, g, beta, scale=None, initial_state=None, *, output_final_state=False,
                                use_qk_l2norm_in_kernel=False, cu_seqlens=None):
    """Loop twin of :func:`chunk_gated_delta_rule`: the same wrapper over :func:`delta_rule_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 1, 5, 1, 2))
    >>> g, beta = -rng.uniform(0, 0.5, (1, 5, 1)), rng.uniform(0.1, 0.9, (1, 5, 1))
    >>> kw = dict(use_qk_l2norm_in_kernel=True)
    >>> bool(np.allclose(chunk_gated_delta_rule_loop(q, k, v, g, beta, **kw)[0],
    ...                  chunk_gated_delta_rule(q, k, v, g, beta, **kw)[0]))
    True
    """
    return _fla_delta(True, q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel,
                      True, cu_seqlens)


# The backward passes (vector–Jacobian products) live in refimpl/_vjp.py, re-exported here.
from ._vjp import (  # noqa: E402
    chunk_delta_rule_vjp,
    chunk_delta_rule_vjp_loop,
    chunk_gated_delta_rule_vjp,
    chunk_gated_delta_rule_vjp_loop,
    chunk_gla_vjp,
    chunk_gla_vjp_loop,
    chunk_simple_gla_vjp,
    chunk_simple_gla_vjp_loop,
    delta_rule_vjp,
    delta_rule_vjp_loop,
    gated_linear_attention_vjp,
    gated_linear_attention_vjp_loop,
    mamba_chunk_scan_combined_vjp,
    mamba_chunk_scan_combined_vjp_loop,
    retention_vjp,
    retention_vjp_loop,
    ssd_vjp,
    ssd_vjp_loop,
)

__all__ += [
    "ssd_vjp",
    "ssd_vjp_loop",
    "gated_linear_attention_vjp",
    "gated_linear_attention_vjp_loop",
    "retention_vjp",
    "retention_vjp_loop",
    "delta_rule_vjp",
    "delta_rule_vjp_loop",
    "mamba_chunk_scan_combined_vjp",
    "mamba_chunk_scan_combined_vjp_loop",
    "chunk_gla_vjp",
    "chunk_gla_vjp_loop",
    "chunk_simple_gla_vjp",
    "chunk_simple_gla_vjp_loop",
    "chunk_delta_rule_vjp",
    "chunk_delta_rule_vjp_loop",
    "chunk_gated_delta_rule_vjp",
    "chunk_gated_delta_rule_vjp_loop",
]
