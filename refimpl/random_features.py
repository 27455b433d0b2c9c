r"""Efficient attention by kernels and hashing: linear attention, Performer (FAVOR+), RFA, Reformer LSH.

Chapter 12 of the book (``notebooks/12-efficient-attention.ipynb``) derives every formula here.

Softmax attention is a **kernel smoother** (Nadaraya–Watson) with the kernel
``κ(q, k) = exp(scale · q·k)``:

.. math::  y_i = \frac{\sum_j κ(q_i, k_j)\, v_j}{\sum_j κ(q_i, k_j)} .            \tag{12.1}

If ``κ(q, k) ≈ φ(q)·φ(k)`` for a feature map ``φ : R^d → R^C``, the sums factor,

.. math::  y_i = \frac{φ(q_i)^\top \sum_j φ(k_j) v_j^\top}{φ(q_i)^\top \sum_j φ(k_j)} ,  \tag{12.2}

and the cost drops from O(N² d) to O(N C d): the (N, N) matrix is never formed. The causal
version keeps running sums ``S_i = Σ_{j≤i} φ(k_j) v_j^T``, ``z_i = Σ_{j≤i} φ(k_j)`` — an RNN
with a matrix state (Eq. 12.3). The module's methods differ only in φ:

* **linear attention** (Katharopoulos et al. 2020): φ(x) = elu(x) + 1, deterministic, no
  scale; it is *not* an approximation of softmax attention, but a different kernel.
* **Performer / FAVOR+** (Choromanski et al. 2021): positive random features
  φ(x) = m^{-1/2} exp(Wx − ‖x‖²/2), unbiased for exp(x·y) (Eq. 12.7), with orthogonal rows
  of W (Eq. 12.9); or the trigonometric features exp(‖x‖²/2)[sin Wx, cos Wx]/√m (Eq. 12.6).
* **RFA** (Peng et al. 2021): random Fourier features [sin Wx, cos Wx]/√D of the Gaussian
  kernel (Rahimi–Recht) on ℓ2-normalized q, k, optionally with a scalar forgetting gate
  (Eqs. 12.5, 12.11–12.12).
* **Reformer LSH attention** (Kitaev et al. 2020) instead keeps exp(q·k) exactly but only for
  keys that hash into the same angular bucket (Eqs. 12.13–12.15), plus reversible residual
  blocks (Eq. 12.16).

Glossary (code name → symbol in the book / the papers)
------------------------------------------------------
``q, k``         Q, K, shape (..., N, d): queries and keys (M = N keys for causal forms).
``v``            V, shape (..., N, dv): values.
``phi``          φ(x), shape (..., N, C): the feature map (C = d, m or 2m).
``projection``   W = [ω_1 … ω_m]^T, shape (m, d): the random directions ω_r ~ N(0, I_d).
``n_features``   m (Performer) or D (RFA): the number of random directions.
``scale``        1/√d by default: κ(q, k) = exp(scale · q·k); Performer applies √scale to
                 both q and k (the paper's q/d^{1/4}, k/d^{1/4}).
``sigma``        σ (RFA): ω ~ N(0, σ^{-2} I) so that E φ(x)·φ(y) = exp(−‖x−y‖²/(2σ²)).
``gates``        g_t ∈ [0, 1), shape (..., N): RFA-Gate's forgetting gate.
``qk``           the shared query/key projection of the Reformer, shape (..., N, d).
``n_buckets``    b (even): hash buckets;  ``n_rounds``  n_r: independent hash rounds.
``chunk_size``   c: the sorted sequence is cut into chunks of c tokens.
``rotations``    R^{(r)}, shape (n_rounds, d, b/2): the random rotations of the hash (Eq. 12.13).
``look_back``    which chunk a chunk also attends to: within its round, or across rounds.

Numerical care
--------------
Positive features ``exp(ω·x − ‖x‖²/2)`` overflow for large ‖x‖. A factor that is constant along
the axis a ratio normalizes over cancels exactly: queries are shifted by their own row maximum,
keys by one maximum over all keys and features (never a per-key maximum, which would change
the weights). No ``eps`` is ever added: the authors' code (google-research
``performer/fast_attention``) adds 1e-6 and the PyTorch port performer-pytorch 1e-4 to every
feature after the exponential, which biases the estimator towards uniform attention (chapter 12,
§12.2).

References
----------
.. [1] A. Katharopoulos, A. Vyas, N. Pappas, F. Fleuret, "Transformers are RNNs: fast
       autoregressive transformers with linear attention", ICML 2020, §3.2–3.4.
.. [2] K. Choromanski et al., "Rethinking attention with Performers", ICLR 2021, Lemmas 1–2,
       Theorem 2 (orthogonal features), §2.4 (prefix sums) and §2.3 (features).
.. [3] A. Rahimi, B. Recht, "Random features for large-scale kernel machines", NeurIPS 2007.
.. [4] H. Peng et al., "Random feature attention", ICLR 2021, §2–3.
.. [5] N. Kitaev, Ł. Kaiser, A. Levskaya, "Reformer: the efficient Transformer", ICLR 2020,
       §2–3 (LSH attention, shared-QK, reversible layers).
.. [6] A. N. Gomez, M. Ren, R. Urtasun, R. B. Grosse, "The reversible residual network",
       NeurIPS 2017.
.. [7] F. X. Yu, A. T. Suresh, K. Choromanski, D. Holtmann-Rice, S. Kumar, "Orthogonal random
       features", NeurIPS 2016.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Sequence

import numpy as np
from scipy.special import logsumexp

from ._blocking import ONE_THREAD_MACS, one_thread_matmul, parts_for, per_block, take_turns
from ._trig import sin_cos_half
from ._scan import cumsum_rows
from ._validate import (_sum_is_finite, as_bool, as_positive_scalar, as_real_array, as_rng, check_finite_part, check_option,
                        check_qkv, guard_overflow, refuse_rng, row_norms, vouch_finite)

__all__ = [
    "elu_plus_one",
    "linear_attention",
    "linear_attention_loop",
    "favor_features",
    "favor_features_loop",
    "orthogonal_gaussian",
    "performer_attention",
    "performer_attention_loop",
    "performer_attention_quadratic",
    "rff_features",
    "rfa_attention",
    "rfa_attention_loop",
    "lsh_hash",
    "lsh_attention",
    "lsh_attention_loop",
    "reversible_forward",
    "reversible_inverse",
    "SELF_ATTENTION_VALUE",
    "KINDS",
    "linear_attention_vjp",
    "linear_attention_vjp_loop",
]

#: Feature kinds of :func:`favor_features`.
KINDS = ("positive", "trig")

#: The logit given to a token's own key in LSH attention (reformer-pytorch's TOKEN_SELF_ATTN_VALUE):
#: finite, so a token attends to itself only when no other key is available.
SELF_ATTENTION_VALUE = -5e4

#: Chunk length of the non-causal chunk summaries (Eq. 12.2), and the longest chunk of the causal
#: prefix sums (:func:`_causal_chunk`): for C = dv = 64 every chunk product is under the one-thread
#: size (_ONE_THREAD) as it stands; for larger C, _stacked cuts it into pieces.
_CHUNK = 64


def _causal_chunk(n_feat: int) -> int:
    """Chunk length c of the causal prefix sums (Eq. 12.4) for C features: C/2, within [32, _CHUNK].

    Per token, the chunk states cost 2·C·(dv+1) multiply-adds whatever c (the summary K_n^T A_n
    and the product Q_n S_n), the causal (c, c) block c·(C + dv + 1): a shorter chunk halves that
    part, but doubles the states to store and sum, C·(dv+1)/c numbers per token, and shrinks every
    product, which BLAS then runs less efficiently. Measured at N = 8192, dv = 64: for C = 64,
    c = 32 was 16% faster than 64 and c = 16 slower again; for C = 256, c = 64 was 13–16% faster
    than 32 or 128."""
    return max(32, min(_CHUNK, n_feat // 2))



# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _as_count(x, name: str, minimum: int = 1) -> int:
    if isinstance(x, bool) or not isinstance(x, (numbers.Integral, np.integer)):
        raise TypeError(f"{name}: expected an integer >= {minimum}, got {type(x).__name__} {x!r}")
    if int(x) < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {int(x)}")
    return int(x)


def _as_seq(x, name: str, what: str = "(..., N, d)") -> np.ndarray:
    arr = as_real_array(x, name)
    if arr.ndim < 2 or arr.shape[-2] == 0:
        raise ValueError(f"{name}: expected shape {what} with N >= 1, got shape {arr.shape}")
    return arr


def _check_qkv(q, k, v, causal, finite: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
    """Queries (..., N, d), keys (..., M, d), values (..., M, dv); M = N if causal; batch broadcast.
    ``finite=False``: their finiteness is left to the threads that read them (:func:`_check_rows`)."""
    return check_qkv(q, k, v, causal=as_bool(causal, "causal"), copy=False, finite=finite)  # never written to


def _check_rows(checks, names: tuple, rows: slice) -> None:
    """The rows ``rows`` (axis −2) of the inputs ``names`` are finite, checked by the thread that is about
    to read them (while they come into its cache) instead of all inputs on one core first; if not, the
    error of that up-front check, the first argument in order that is not finite
    (:func:`refimpl._validate.check_finite_part` over all of them). ``checks``: (name, view, argument)
    triples, ``view`` the array the kernel reads (broadcast), ``argument`` as given; empty: nothing to check."""
    for name, view, _ in checks:
        if name in names and not _sum_is_finite(view[..., rows, :]):
            check_finite_part(checks, slice(None))


def _scale(scale, d: int) -> float:
    return 1.0 / math.sqrt(d) if scale is None else as_positive_scalar(scale, "scale", strict=False)


def _as_projection(projection, name: str, m: int | None, d: int) -> np.ndarray:
    w = as_real_array(projection, name, ndim=2)
    if w.shape[1] != d or (m is not None and w.shape[0] != m) or w.shape[0] == 0:
        want = f"({'m' if m is None else m}, {d})"
        raise ValueError(f"{name}: expected shape {want}, got shape {w.shape}")
    return w


# ---------------------------------------------------------------------------------------------
# The kernel-attention core, Eqs. (12.2)-(12.4): shared by linear attention, Performer and RFA
# ---------------------------------------------------------------------------------------------


def _broadcast(batch: tuple, *arrays):
    return [a.broadcast(batch) if isinstance(a, _RowMap) else np.broadcast_to(a, batch + a.shape[-2:]) for a in arrays]


class _RowMap:
    """φ(x) computed on demand for some rows of x, never stored for all N rows: a row-wise feature
    map (the features of a row depend on that row alone) handed to :func:`_kernel_attention` in place
    of the array φ(x). ``fn`` maps rows (..., r, d) to (..., r, C) in the calling thread; ``into``
    (optional, C = d only) writes φ of an array of any shape and layout into a given one, so that
    the kernel can fill buffers it reuses, in the layout it wants.

    The queries' features are needed once, next to their products, so the kernel computes them
    group by group in its threads: no (N, C) array to allocate, fill and read back. So are the
    keys' features of the non-causal form. The causal form needs the keys' features twice (chunk
    summaries, then the in-chunk blocks): it keeps them, transposed chunk by chunk, from the first
    stage for the third (computing elu + 1 twice measured 7% slower at N = 8192, d = 64); the
    random-feature maps, whose sines and exponentials cost more, hand over an array."""

    def __init__(self, x: np.ndarray, n_feat: int, fn: Callable[[np.ndarray], np.ndarray],
                 into: Callable[[np.ndarray, np.ndarray], None] | None = None):
        self.x, self.fn, self.into, self.shape = x, fn, into, x.shape[:-1] + (n_feat,)

    def broadcast(self, batch: tuple) -> _RowMap:
        return type(self)(np.broadcast_to(self.x, batch + self.x.shape[-2:]), self.shape[-1], self.fn, self.into)

    def rows(self, r: slice) -> np.ndarray:
        """φ of rows ``r``, a new array."""
        return self.fn(self.x[..., r, :])


class _ShiftedRowMap(_RowMap):
    """The positive features of Eq. (12.7) of keys computed on demand, each group of rows divided by
    exp of its own max (:func:`_favor_group`): ``fn`` maps rows (..., r, d) to the features and the
    shift c_g (..., 1, 1). Sums of such rows are rescaled by e^{c_g − c} to the common max c
    (:func:`_summed_states`), which is the stabilizer of Eq. (12.10) for all keys: the keys' features
    are never stored, and need no second pass once the common max is known."""


def _rows(phi, r: slice) -> np.ndarray:
    """Rows ``r`` of φ: a view of an array, or computed by a :class:`_RowMap`."""
    return phi.rows(r) if isinstance(phi, _RowMap) else phi[..., r, :]


def _chunks(phi, sl: slice, c: int, buf: np.ndarray | None = None) -> np.ndarray:
    """The complete chunks ``sl`` of c rows of φ, shape (..., G, c, C); written into the first G
    chunks of ``buf`` (..., ≥ G, c, C) when φ is a :class:`_RowMap` that can fill one."""
    if buf is not None and isinstance(phi, _RowMap) and phi.into is not None:
        x = phi.x[..., sl.start * c : sl.stop * c, :]
        out = buf[..., : sl.stop - sl.start, :, :]
        phi.into(x.reshape(x.shape[:-2] + out.shape[-3:-1] + x.shape[-1:]), out)
        return out
    x = _rows(phi, slice(sl.start * c, sl.stop * c))
    return x.reshape(x.shape[:-2] + (sl.stop - sl.start, c, x.shape[-1]))


def _kernel_attention(phi_q, phi_k, v, causal: bool, chunk: int | None = None, unchecked=None) -> np.ndarray:
    """Eq. (12.2) (non-causal) or the chunked prefix sums of Eq. (12.4) (causal), never an (N, N) matrix.

    ``v`` is extended by a column of ones, ``A = [V, 1]``, so that one product gives both the
    numerator φ(q)^T S and the normalizer φ(q)^T z; the output is their ratio. The keys are cut
    into chunks of ``c`` tokens (the last one may be shorter) with summaries
    ``U_n = φ(K_n)^T A_n``, (C, dv+1) each, computed for a group of chunks at a time (``A`` is
    built group by group in a cache-sized buffer, never for all N rows).

    Non-causal: ``S = Σ_n U_n`` (:func:`_summed_states`), then ``φ(Q) S``. Causal:
    :func:`_causal_sums`.

    Every product is a stack of pieces small enough for one BLAS thread (:func:`_stacked`,
    :data:`refimpl._blocking.ONE_THREAD_MACS`): products that BLAS splits over threads wait for
    each other whenever another process keeps a core busy. The one long, thin product
    φ(K)^T [V, 1] (N terms per entry) ran up to 100 times slower under load than on the quiet
    machine; the sum of the chunk summaries replaces it. To use more than one core, the groups of
    chunks (and of query rows) are shared out between threads (:func:`refimpl._blocking.in_parts`). The groups
    are fixed by the sizes alone and every entry is computed by the same operations in the same
    order whatever the thread count, so the result is bitwise the same with one thread or many.

    ``unchecked`` (q, k, v as given, whose features φ(q), φ(k) are computed on demand): their
    finiteness, checked by the threads on the rows they read (:func:`_check_rows`), not on one core first
    (the up-front check read all of q, k, v: 0.5 to 0.7 ms; moved here, linear attention at
    N = 8192, d = 64 measured 3 to 4 % faster on one thread, within noise on two). Each group of
    output rows is also summed while in cache; if every sum is finite, the output is vouched for
    (:func:`refimpl._validate.vouch_finite`), and the caller's guard does not read it again.
    """
    batch = np.broadcast_shapes(phi_q.shape[:-2], phi_k.shape[:-2], v.shape[:-2])
    phi_q, phi_k, v = _broadcast(batch, phi_q, phi_k, v)
    # (name, the array the kernel reads, the argument as given) of q, k, v
    checks = [] if unchecked is None else list(zip("qkv", (phi_q.x, phi_k.x, v), unchecked))
    out = np.empty(batch + (phi_q.shape[-2], v.shape[-1]))
    finite = []  # whether each group of output rows summed to a finite number
    if causal:
        c = _causal_chunk(phi_q.shape[-1]) if chunk is None else chunk
        _causal_sums(phi_q, phi_k, v, min(c, phi_q.shape[-2]), out, checks, finite)
    else:
        c = min(_CHUNK if chunk is None else chunk, phi_k.shape[-2])
        s = _summed_states(phi_k, v, c, checks)  # S = Σ_j φ(k_j) [v_j, 1]^T
        rows = c * _group(phi_q.shape[-1], c, v.shape[-1] + 1, batch)

        def worker():
            def work(i):  # φ(q_i)^T S by groups of rows, divided while in cache
                r = slice(i * rows, (i + 1) * rows)
                _check_rows(checks, ("q",), r)
                _ratio(_stacked(_rows(phi_q, r), s), out[..., r, :])
                finite.append(_sum_is_finite(out[..., r, :]))

            return work

        take_turns(-(-phi_q.shape[-2] // rows), worker, _size(phi_q) + out.size)
    if finite and all(finite):
        vouch_finite(out)
    return out


def _size(phi) -> int:
    return math.prod(phi.shape)


class _Values:
    """``A = [V, 1]`` for a group of chunks at a time, in a buffer of one thread (see _kernel_attention)."""

    def __init__(self, v, c: int, group: int):
        self.v, self.c = v, c
        self.buf = np.empty(v.shape[:-2] + (group, c, v.shape[-1] + 1))
        self.buf[..., -1] = 1.0  # the ones column, written once

    def chunks(self, sl: slice) -> np.ndarray:
        """A_n for the complete chunks n in ``sl``, shape (..., G, c, dv+1)."""
        a = self.buf[..., : sl.stop - sl.start, :, :]
        a[..., :-1] = self.v[..., sl.start * self.c : sl.stop * self.c, :].reshape(a.shape[:-1] + (-1,))
        return a


def _tail_values(v, start: int) -> np.ndarray:
    """[V, 1] for the rows from ``start`` on (the short last chunk), shape (..., r, dv+1)."""
    a = np.empty(v.shape[:-2] + (v.shape[-2] - start, v.shape[-1] + 1))
    a[..., :-1], a[..., -1] = v[..., start:, :], 1.0
    return a


def _ratio(o, out):
    """y = φ(q)^T S / φ(q)^T z from o = φ(q)^T [S, z], written into ``out``."""
    np.divide(o[..., :-1], o[..., -1:], out=out)


#: The one-thread size of the stacked products (:data:`refimpl._blocking.ONE_THREAD_MACS`; tests lower it).
_ONE_THREAD = ONE_THREAD_MACS


def _stacked(a, b, out=None):
    """``np.matmul(a, b, out=out)`` in pieces of fewer than ``_ONE_THREAD`` multiply-adds (see _kernel_attention)."""
    return one_thread_matmul(a, b, out, macs=_ONE_THREAD)


def _group(n_feat: int, c: int, width: int, batch: tuple) -> int:
    """Chunks per group: the group's states, (c, c) blocks and output rows fill the workspace
    budget W (:mod:`refimpl._blocking`): cache-sized (21 chunks for C = 64, 8 for C = 256). A
    quarter of W (5 and 2 chunks) measured 15–30% slower at N = 8192, d = 64 on two cores: each
    group costs a dozen small NumPy calls, and two threads issuing them in turn wait for the GIL."""
    return per_block(((n_feat + c) * width + c * c) * max(1, math.prod(batch)))


def _summed_states(phi_k, v, c: int, checks) -> np.ndarray:
    """S = Σ_n U_n over the chunks of c rows (and the short last one), U_n = K_n^T A_n, in groups of chunks.

    Each group's summaries are summed into a slot of its own (groups in threads, see
    :func:`_kernel_attention`), then the slots are added in order: the same sums, in the same
    order, as one group after the other. The slots hold N/(G·c) states of (C, dv+1) numbers, G
    the chunks per group (:func:`_group`): a twelfth of the size of φ(K) for C = 256, dv = 64.
    """
    batch, (m, n_feat), width = phi_k.shape[:-2], phi_k.shape[-2:], v.shape[-1] + 1
    full = m // c
    group = max(1, min(full, _group(n_feat, c, width, batch)))
    n_groups = -(-full // group)
    sums = np.empty(batch + (n_groups, n_feat, width))
    # features with a shift of their own per group (_ShiftedRowMap): each group's shift, then the last rows'
    shifted = isinstance(phi_k, _ShiftedRowMap)
    shifts = np.empty(batch + (n_groups + 1, 1, 1)) if shifted else None

    def keys(gi, sl):  # φ(K_n) for the chunks sl of group gi, (..., G, c, C), and its shift into `shifts`
        if not shifted:
            return _chunks(phi_k, sl, c)
        x = phi_k.x[..., sl.start * c : sl.stop * c, :]
        f, shifts[..., gi, :, :] = phi_k.fn(x)
        return f.reshape(f.shape[:-2] + (sl.stop - sl.start, c, n_feat))

    def worker():
        values = _Values(v, c, group)

        def work(gi):  # stacked summaries of a group of chunks, summed
            sl = slice(gi * group, min((gi + 1) * group, full))
            _check_rows(checks, ("k", "v"), slice(sl.start * c, sl.stop * c))
            u = _stacked(np.swapaxes(keys(gi, sl), -1, -2), values.chunks(sl))
            np.sum(u, axis=-3, out=sums[..., gi, :, :])

        return work

    take_turns(n_groups, worker, _size(phi_k) + v.size)
    tail = None
    if m > full * c:
        _check_rows(checks, ("k", "v"), slice(full * c, m))
        if shifted:
            f, shifts[..., n_groups, :, :] = phi_k.fn(phi_k.x[..., full * c :, :])
        else:
            f = _rows(phi_k, slice(full * c, m))
        tail = np.swapaxes(f, -1, -2) @ _tail_values(v, full * c)
    if shifted:  # e^{c_g − c}: each group's sum brought to the common shift c, the max over all keys (Eq. 12.10)
        used = shifts[..., : n_groups + (tail is not None), :, :]
        np.exp(used - np.max(used, axis=-3, keepdims=True), out=used)
    s = np.zeros(batch + (n_feat, width))
    for gi in range(n_groups):
        s += sums[..., gi, :, :] * shifts[..., gi, :, :] if shifted else sums[..., gi, :, :]
    if tail is not None:
        s += tail * shifts[..., n_groups, :, :] if shifted else tail
    return s


def _causal_sums(phi_q, phi_k, v, c: int, out, checks, finite: list) -> None:
    """y_i from Σ_{j≤i} (φ(q_i)·φ(k_j)) [v_j, 1] for every i, into ``out``: Eq. (12.4) with chunks of c tokens.

    With ``Q_n, K_n, A_n`` the rows of chunk n of φ(Q), φ(K), [V, 1] (the last chunk may be
    shorter) and the chunk summaries ``U_n = K_n^T A_n`` (C, dv+1),

        out_n = Q_n S_n + tril(Q_n K_n^T) A_n,   S_n = U_0 + … + U_{n-1} :

    the state left by the earlier chunks plus the causal (c, c) block of the chunk itself
    (c from :func:`_causal_chunk`). Three stages: (1) all summaries U_n; (2) their exclusive
    prefix sums S_n, in place, one vector add per chunk over (C, dv+1) entries, in chunk order
    (np.cumsum along the chunk axis walks memory with a stride of C·(dv+1) numbers and measured
    ten to twenty times slower); (3) the outputs. Stages 1 and 3 go in groups of chunks
    (:func:`_group`), each product stacked over the group's chunks, the groups shared out between
    threads (:func:`refimpl._blocking.take_turns`); stage 2 is one short sequential sweep.

    ``K_n^T`` enters both products as a contiguous (C, c) matrix when φ(K) is computed on demand
    (a :class:`_RowMap` that fills buffers, elu + 1): stage 1 computes it in that layout (an
    elementwise map commutes with the transpose: φ(K_n)^T = φ(K_n^T)) and keeps it for stage 3;
    ``Q_n K_n^T`` with a transposed view of K_n measured 1.7 times slower for C = 64. An array φ(K)
    (the random features) is used through the view: a copy would cost more than it saves at
    C = 256. Every thread reuses its buffers (``[V, 1]``, φ(Q), the blocks, the outputs) from
    group to group instead of allocating per group (fresh pages cost page faults).

    Memory: the N/c + 1 states, (N/c + 1)·C·(dv+1) numbers — about twice the size of φ(K) for
    c = 32, C = dv = 64 — plus φ(K)^T (N·C numbers) when it is computed on demand, plus
    cache-sized buffers per thread; never the (N, C, dv) array of the plain cumulative sum of
    outer products. Every state and output is computed by the same operations in the same order
    whatever the thread count. When the stages would run in one thread (one thread, or a small
    problem), they run group by group instead — stage 1, the group's prefix sums from the state
    the earlier groups leave, stage 3 — holding the states and φ(K_n)^T of one group only: the
    same operations on every state and output (bitwise the same result), a group's states still
    in cache when its outputs read them, and no array of all states (8.5 MB at N = 8192, whose
    fresh pages the kernel zeroed again at every call). Measured in one thread, interleaved with
    the staged form (N = 8192, d = 64): linear attention 16.3 → 11.8 ms, RFA with 256 features
    60.9 → 53.2 ms, Performer (its features dominate) unchanged; page faults per call of linear
    attention 1808 → 1513.
    """
    batch, (n, n_feat), width = phi_q.shape[:-2], phi_q.shape[-2:], v.shape[-1] + 1
    full, rest = divmod(n, c)
    y_c = out[..., : full * c, :].reshape(batch + (full, c, width - 1))  # a view: the writes land in out
    group = max(1, min(full, _group(n_feat, c, width, batch)))
    n_groups = -(-full // group)
    group = -(-full // n_groups)  # as many groups, of (nearly) equal length: the threads' shares stay even
    elems = _size(phi_q) + _size(phi_k) + out.size
    # one thread: the three stages group by group (see the docstring), with the states and φ(K_n)^T of one group
    fused = parts_for(n_groups, elems) == 1
    states = np.empty(batch + ((group if fused else full) + 1, n_feat, width))  # states[n] = S_n (fused: S_{base+n})
    states[..., 0, :, :] = 0.0
    base = 0  # the chunk whose state is states[0]: 0, or the group's first in the fused path (set below)
    tri = np.tri(c)
    lazy_k = isinstance(phi_k, _RowMap) and phi_k.into is not None
    k_t = np.empty(batch + (group if fused else full, n_feat, c)) if lazy_k else None  # φ(K_n)^T, from stage 1 to 3

    def chunk_slice(gi):
        return slice(gi * group, min((gi + 1) * group, full))

    def held(sl):  # the chunks sl in the indices of states and k_t
        return slice(sl.start - base, sl.stop - base)

    def transposed_keys(sl, buf):  # φ(K_n)^T for the chunks sl, (..., G, C, c)
        if not lazy_k:
            return np.swapaxes(_chunks(phi_k, sl, c), -1, -2)
        x = phi_k.x[..., sl.start * c : sl.stop * c, :]
        x_t = buf[..., : sl.stop - sl.start, :, :]
        np.copyto(x_t, np.swapaxes(x.reshape(x.shape[:-2] + (-1, c, x.shape[-1])), -1, -2))  # K_n^T, contiguous
        k_g = k_t[..., held(sl), :, :]
        phi_k.into(x_t, k_g)
        return k_g

    def summaries():  # stage 1: U_n = K_n^T A_n into states[n + 1]
        buf = np.empty(batch + (group, n_feat, c)) if lazy_k else None
        values = _Values(v, c, group)

        def work(gi):
            sl = chunk_slice(gi)
            _check_rows(checks, ("k", "v"), slice(sl.start * c, sl.stop * c))
            a_g, h = values.chunks(sl), held(sl)
            _stacked(transposed_keys(sl, buf), a_g, out=states[..., h.start + 1 : h.stop + 1, :, :])

        return work

    def outputs():  # stage 3: out_n = Q_n S_n + tril(Q_n K_n^T) A_n, divided
        q_buf = np.empty(batch + (group, c, n_feat))
        blocks, o_buf, t_buf = (np.empty(batch + (group, c, w)) for w in (c, width, width))
        values = _Values(v, c, group)

        def work(gi):
            sl = chunk_slice(gi)
            g = sl.stop - sl.start
            _check_rows(checks, ("q",), slice(sl.start * c, sl.stop * c))
            q_g = _chunks(phi_q, sl, c, q_buf)
            k_g = k_t[..., held(sl), :, :] if lazy_k else np.swapaxes(_chunks(phi_k, sl, c), -1, -2)  # K_n^T
            a_g = values.chunks(sl)
            b, o_g, t_g = blocks[..., :g, :, :], o_buf[..., :g, :, :], t_buf[..., :g, :, :]
            _stacked(q_g, states[..., held(sl), :, :], out=o_g)  # Q_n S_n: what the earlier chunks left
            _stacked(q_g, k_g, out=b)  # Q_n K_n^T
            b *= tri  # j <= i inside the chunk
            o_g += _stacked(b, a_g, out=t_g)
            _ratio(o_g, y_c[..., sl, :, :])
            finite.append(_sum_is_finite(y_c[..., sl, :, :]))

        return work

    if fused:
        stage1, stage3 = summaries(), outputs()
        g = 0
        for gi in range(n_groups):
            if gi:  # the state the earlier groups leave enters this one
                states[..., 0, :, :] = states[..., g, :, :]
                base = chunk_slice(gi).start
            g = chunk_slice(gi).stop - base
            stage1(gi)
            cumsum_rows(states[..., : g + 1, :, :], -3, states[..., : g + 1, :, :])  # the same adds, in the same order
            stage3(gi)
        last = states[..., g, :, :]
    else:
        take_turns(n_groups, summaries, elems)
        cumsum_rows(states, -3, states)  # stage 2: states[n] = U_0 + … + U_{n-1}, in chunk order
        take_turns(n_groups, outputs, elems)
        last = states[..., full, :, :]
    if rest:  # the short last chunk: the state of all complete chunks plus its own causal block
        tail = slice(full * c, n)
        _check_rows(checks, ("q", "k", "v"), tail)
        q_r, k_r, a_r = _rows(phi_q, tail), _rows(phi_k, tail), _tail_values(v, full * c)
        o_t = q_r @ last
        o_t += (np.matmul(q_r, np.swapaxes(k_r, -1, -2)) * np.tri(rest)) @ a_r
        _ratio(o_t, out[..., full * c :, :])
        finite.append(_sum_is_finite(out[..., full * c :, :]))


def _kernel_attention_loop(phi_q, phi_k, v, causal: bool, gates=None) -> np.ndarray:
    """The RNN of Eq. (12.3) one step at a time (causal), or the sums of Eq. (12.2) key by key."""
    batch = np.broadcast_shapes(phi_q.shape[:-2], phi_k.shape[:-2], v.shape[:-2])
    phi_q, phi_k, v = _broadcast(batch, phi_q, phi_k, v)
    n, n_feat, dv = phi_q.shape[-2], phi_q.shape[-1], v.shape[-1]
    if gates is not None:
        gates = np.broadcast_to(gates, batch + (n,))
    out = np.empty(batch + (n, dv))
    for b in np.ndindex(*batch):
        if causal:
            S, z = np.zeros((n_feat, dv)), np.zeros(n_feat)
            for i in range(n):
                if gates is None:
                    S = S + np.outer(phi_k[b][i], v[b][i])  # S_i = S_{i-1} + φ(k_i) v_i^T
                    z = z + phi_k[b][i]  # z_i = z_{i-1} + φ(k_i)
                else:
                    g = gates[b][i]
                    S = g * S + (1.0 - g) * np.outer(phi_k[b][i], v[b][i])  # Eq. (12.12)
                    z = g * z + (1.0 - g) * phi_k[b][i]
                out[b][i] = (phi_q[b][i] @ S) / (phi_q[b][i] @ z)  # y_i = φ(q_i)^T S_i / φ(q_i)^T z_i
        else:
            S, z = np.zeros((n_feat, dv)), np.zeros(n_feat)
            for j in range(phi_k.shape[-2]):
                S = S + np.outer(phi_k[b][j], v[b][j])
                z = z + phi_k[b][j]
            for i in range(n):
                out[b][i] = (phi_q[b][i] @ S) / (phi_q[b][i] @ z)
    return out


# ---------------------------------------------------------------------------------------------
# Linear attention (Katharopoulos et al. 2020), Eqs. (12.2)-(12.4)
# ---------------------------------------------------------------------------------------------


def elu_plus_one(x) -> np.ndarray:
    """The feature map φ(x) = elu(x) + 1 of Eq. (12.2) (Katharopoulos et al. 2020, §3.2.1): x + 1 for x > 0, e^x otherwise.

    Examples
    --------
    >>> elu_plus_one(np.array([-1.0, 0.0, 2.0])).round(6).tolist()
    [0.367879, 1.0, 3.0]
    """
    return _elu_plus_one(as_real_array(x, "x", copy=False))


def _elu_plus_one(x: np.ndarray) -> np.ndarray:
    """elu(x) + 1 into one new array (:func:`_elu_blocks`, the blocks shared out between threads)."""
    out, blocks = _elu_blocks(x)
    _run_blocks([blocks], x.size)
    return out


def _elu_rows(x: np.ndarray) -> np.ndarray:
    """elu(x) + 1 in the calling thread (for a :class:`_RowMap`)."""
    out, blocks = _elu_blocks(x)
    return _in_order_result(out, [blocks])


def _elu_into(x: np.ndarray, out: np.ndarray) -> None:
    """elu(x) + 1 of x (any layout) into ``out`` (its shape), in the calling thread, for a
    :class:`_RowMap` whose caller holds a cache-sized group of rows: the operations of :func:`_elu_blocks`."""
    np.minimum(x, 0.0, out=out)
    np.exp(out, out=out)
    out += np.maximum(x, 0.0)


def _elu_blocks(x: np.ndarray):
    """A new array for elu(x) + 1 and the list of thunks that fill it, one per block of W/4 numbers
    (W the workspace budget of :mod:`refimpl._blocking`): the temporary max(x, 0) stays in cache
    and is never a fresh array the size of x (whole-array temporaries measured 3–8 times slower)."""
    out = np.empty(x.shape)
    flat_x, flat = x.reshape(-1), out.reshape(-1)
    step = per_block(4)

    def block(i):
        xs, o = flat_x[i : i + step], flat[i : i + step]
        np.minimum(xs, 0.0, out=o)
        np.exp(o, out=o)  # e^x for x <= 0, e^0 = 1 for x > 0
        o += np.maximum(xs, 0.0)  # + x for x > 0: the same numbers as where(x > 0, x + 1, e^x)

    return out, [functools.partial(block, i) for i in range(0, flat.size, step)]


def _in_order(phases) -> None:
    """Run the phases of :func:`_run_blocks` in the calling thread (inside a thread of the kernel)."""
    for blocks in phases:
        for block in [blocks] if callable(blocks) else blocks:
            block()


def _in_order_result(out: np.ndarray, phases) -> np.ndarray:
    """``out`` once the phases that fill it have run in the calling thread."""
    _in_order(phases)
    return out


def _run_blocks(phases, elems: int) -> None:
    """Run each phase's thunks (independent blocks of feature maps), shared out between threads
    (:func:`refimpl._blocking.take_turns`); a phase starts when the previous one is done; a callable phase is a step
    run in the calling thread between two phases. ``elems``: the numbers written.

    The feature maps' elementwise passes (exp, tan, divisions) run on the calling thread only in
    NumPy; cut into row blocks of the queries and the keys, they keep both cores busy. Every
    block is computed by the same operations whichever thread runs it."""
    for blocks in phases:
        if callable(blocks):  # a step between phases, in the calling thread
            blocks()
        elif blocks:
            take_turns(len(blocks), lambda blocks=blocks: lambda i: blocks[i](), elems)


def _linear_features(q, k, v, feature_map, causal, lazy: bool = False):
    """φ(q), φ(k), v, and q, k, v whose finiteness is left to :func:`_kernel_attention` (or None). ``lazy``
    (elu + 1 only): φ(q) and φ(k) as :class:`_RowMap`, computed group by group in the kernel's threads,
    which also check that the rows of q, k, v they read are finite."""
    lazy = lazy and isinstance(feature_map, str)
    q, k, v, _ = _check_qkv(q, k, v, causal, finite=not lazy)
    if isinstance(feature_map, str):
        check_option(feature_map, "feature_map", ("elu+1",))
        if lazy:
            rows = _RowMap(q, q.shape[-1], _elu_rows, _elu_into), _RowMap(k, k.shape[-1], _elu_rows, _elu_into)
            return *rows, v, (q, k, v)
        (phi_q, blocks_q), (phi_k, blocks_k) = _elu_blocks(q), _elu_blocks(k)
        _run_blocks([blocks_q + blocks_k], q.size + k.size)
        return phi_q, phi_k, v, None
    if not callable(feature_map):
        raise TypeError(f"feature_map: expected 'elu+1' or a callable, got {type(feature_map).__name__}")
    phi_q, phi_k = (np.asarray(feature_map(x), dtype=np.float64) for x in (q, k))
    for phi, x, name in ((phi_q, q, "q"), (phi_k, k, "k")):
        if phi.shape[:-1] != x.shape[:-1] or phi.shape[-1] != phi_q.shape[-1]:
            raise ValueError(f"feature_map: expected φ({name}) of shape {x.shape[:-1]} + (C,), got shape {phi.shape}")
    return phi_q, phi_k, v, None


@guard_overflow()
def linear_attention(q, k, v, *, feature_map="elu+1", causal=False) -> np.ndarray:
    r"""Linear attention: Eq. (12.2) with φ = elu + 1, in O(N C dv) time.

    Implements Eqs. (12.2)–(12.4) of the book (Katharopoulos et al. 2020, §3.2 and §3.4).

    Parameters
    ----------
    q : array_like, shape (..., N, d)
    k : array_like, shape (..., M, d)
        M = N if ``causal``. Leading batch axes of q, k, v broadcast.
    v : array_like, shape (..., M, dv)
    feature_map : "elu+1" or callable
        φ, applied row-wise; a callable maps (..., N, d) to (..., N, C) and should be positive
        (the normalizer φ(q)·Σφ(k) is not clamped: a non-positive one gives a wrong sign or inf).
    causal : bool
        Query i sees keys j ≤ i.

    Returns
    -------
    y : ndarray, shape (..., N, dv)

    Notes
    -----
    ``y_i = φ(q_i)^T S / φ(q_i)^T z`` with ``S = Σ_j φ(k_j) v_j^T`` and ``z = Σ_j φ(k_j)``; there is
    no 1/√d scale. The causal form replaces S, z by the prefix sums ``S_i, z_i`` (Eq. 12.3), here
    computed chunk by chunk (Eq. 12.4): per-chunk states and an exclusive cumulative sum over
    chunks, plus a masked (c, c) block inside each chunk (c = C/2 within [32, 64]: 32 for elu + 1
    with d = 64, see ``_causal_chunk``), in groups of chunks whose
    temporaries hold about W/4 floats per thread (W = 2^18, the workspace budget of
    :mod:`refimpl._blocking`), each product stacked over the group's chunks, the groups shared
    out between threads (the result is bitwise the same for any thread count). Extra memory
    besides the output: the N/c + 1 chunk states, (N/c + 1)·C·(dv+1) numbers (about twice the
    size of φ(K) for c = 32), plus O(W) per thread; the features φ(q), φ(k) are computed group
    by group in the threads (the causal form keeps φ(k)^T chunk by chunk, N·C numbers, from its
    first stage for its third). For C = d = dv = 64: 2064 bytes per token with the output
    (chapter 12, §12.5). No Python
    loop over tokens (over groups of ~1000 tokens, and one vector add per chunk for the cumulative sum). The non-causal form sums
    the same per-chunk states: extra memory O(N/(G·c)·C·dv + W).
    :func:`linear_attention_loop` is the RNN itself.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 6, 4))
    >>> bool(np.allclose(linear_attention(q, k, v, causal=True), linear_attention_loop(q, k, v, causal=True)))
    True
    """
    phi_q, phi_k, v, unchecked = _linear_features(q, k, v, feature_map, causal, lazy=True)
    return _kernel_attention(phi_q, phi_k, v, bool(causal), unchecked=unchecked)


@guard_overflow()
def linear_attention_loop(q, k, v, *, feature_map="elu+1", causal=False) -> np.ndarray:
    """Loop twin of :func:`linear_attention`: the causal RNN (Eq. 12.3), one token at a time.

    Examples
    --------
    >>> q, k, v = np.random.default_rng(0).normal(size=(3, 6, 2))
    >>> bool(np.allclose(linear_attention_loop(q, k, v, causal=True), linear_attention(q, k, v, causal=True)))
    True
    """
    phi_q, phi_k, v, _ = _linear_features(q, k, v, feature_map, causal)
    return _kernel_attention_loop(phi_q, phi_k, v, bool(causal))


# ---------------------------------------------------------------------------------------------
# Performer FAVOR+ (Choromanski et al. 2021), Eqs. (12.6)-(12.10)
# ---------------------------------------------------------------------------------------------


def _sin_cos(x: np.ndarray, w: np.ndarray, factor) -> np.ndarray:
    """``[sin Wx, cos Wx] · factor``, shape (..., N, 2D) (:func:`_sin_cos_blocks`, in threads)."""
    out, blocks, _ = _sin_cos_blocks(x, w, factor)
    _run_blocks([blocks], out.size)
    return out


def _sin_cos_blocks(x: np.ndarray, w: np.ndarray, factor, unit: bool = False):
    """A new array for ``[sin Wx, cos Wx] · factor``, shape (..., N, 2D), the thunks that fill it by
    blocks of rows, and (``unit``: x is first divided by its row norms) the array of the norms.

    From one tangent of the half angle per entry (:func:`refimpl._trig.sin_cos_half`: ``t = tan(ω·x/2)``,
    ``sin ω·x = t r``, ``cos ω·x = r − 1`` with ``r = 2/(1 + t²)``; NumPy's float64 ``sin`` and ``cos``
    call the C library once per number, its ``tan`` is vectorized, several times faster): the rest is
    three array operations and one write into each half of the result, in cache-sized blocks of rows,
    each block projected on its own (``x @ (w/2)^T`` in one-thread pieces, :func:`_stacked`). The error
    is a few units in the last place of 1 (absolute), like that of ``np.sin`` itself on the rounded
    argument ω·x (tested against ``math.sin``/``math.cos``). ``x @ (w/2)^T`` is ω·x/2 exactly (halving
    is exact).
    """
    big_d, d = w.shape
    x2 = x.reshape(-1, d)
    out = np.empty(x.shape[:-1] + (2 * big_d,))
    out2 = out.reshape(-1, 2 * big_d)
    fac = np.broadcast_to(np.asarray(factor, dtype=float), x.shape[:-1] + (1,)).reshape(-1, 1)
    norms = np.empty((x2.shape[0], 1)) if unit else None
    half_w = (0.5 * w).T
    rows = per_block(4 * big_d)  # blocks of rows: the temporaries t and r stay in cache

    def block(i):
        xb, ob, fb = x2[i : i + rows], out2[i : i + rows], fac[i : i + rows]
        if unit:
            nb = norms[i : i + rows]
            nb[...] = row_norms(xb)
            xb = xb / nb  # a zero row gives NaN here: the caller checks the norms and raises
        sin_cos_half(_stacked(xb, half_w), ob[:, :big_d], ob[:, big_d:], fb)  # [sin ω·x, cos ω·x] · factor from ω·x/2

    return out, [functools.partial(block, i) for i in range(0, x2.shape[0], rows)], norms


def _favor(x: np.ndarray, w: np.ndarray, kind: str, shift: str | None, root: float = 1.0) -> np.ndarray:
    """Features of Eq. (12.6)/(12.7) of x̂ = root·x, divided by exp(c) (:func:`_favor_blocks`, in threads)."""
    out, phases = _favor_blocks(x, w, kind, shift, root)
    _run_blocks(phases, out.size)
    return out


def _favor_blocks(x: np.ndarray, w: np.ndarray, kind: str, shift: str | None, root: float = 1.0):
    """A new array for the features of Eq. (12.6)/(12.7) of x̂ = root·x, divided by exp(c) — c = 0,
    the row max or the max over all rows — and the phases that fill it (see :func:`_run_blocks`).

    The 1/√m factor and, for positive features, the ‖x̂‖²/2 join the shift, one number per row
    (exp(ω·x̂ − (‖x̂‖²/2 + c + log √m))), so that after the matrix product only the max, one
    subtraction and the exponential pass over the (N, m) array, all in cache-sized blocks of rows,
    each block projected on its own (one-thread pieces, :func:`_stacked`, of a plain product with
    W^T stored contiguously). The row maximum of ω·x̂ − ‖x̂‖²/2 is that of ω·x̂ less ‖x̂‖²/2, an
    N-vector operation (rounding is monotonic: the same number). With the row shift the ‖x̂‖²/2
    cancels exactly (it is constant along the row): it is not formed. The max over all rows needs
    two phases: the projections and their row maxima, then the shift and the exponential.

    (Before, −‖x̂‖²/2 entered the product as a (d+1)-th column of x̂ against a column of ones,
    with W^T a transposed view: 65 terms on m = 256 features exceed the one-thread size at 32
    rows, and the 16-row pieces of a transposed operand that it got ran at 33 GFLOP/s against
    48-50 for 32-row pieces or a contiguous W^T (one core of an AVX-512 Xeon, OpenBLAS's SkylakeX
    kernels). The keys' features at N = 8192, d = 64, m = 256: 13.7-14.6 → 10.6 ms in one
    thread, paired 0.72; Performer attention paired 0.93, causal or not, one thread or two.)
    """
    m, d = w.shape
    log_m = 0.5 * math.log(m)  # the 1/√m
    if kind == "trig":
        sq = (0.5 * root * root) * np.einsum("...i,...i->...", x, x)[..., None]  # ‖x̂‖²/2, shape (..., N, 1)
        axes = {None: None, "row": (-1,), "all": (-2, -1)}[shift]
        if axes is not None:
            sq -= np.max(sq, axis=axes, keepdims=True)
        sq -= log_m
        out, blocks, _ = _sin_cos_blocks(x, root * w, np.exp(sq, out=sq))  # h [sin ωx̂, cos ωx̂]/√m, h = exp(‖x̂‖²/2)
        return out, [blocks]
    x2 = x.reshape(-1, d)
    e = np.empty(x.shape[:-1] + (m,))  # ω_r·x̂, updated in place to the features
    flat = e.reshape(-1, m)
    rows = per_block(2 * m)  # blocks of rows: projection, shift and exponential while in cache
    starts = range(0, x2.shape[0], rows)
    wt = np.ascontiguousarray((root * w).T)  # (d, m), so that the projection is a plain (NN) product
    if shift == "row":

        def row_block(i):  # the row max of ω_r·x̂ − ‖x̂‖²/2 is max_r(ω_r·x̂) − ‖x̂‖²/2
            blk = flat[i : i + rows]
            _stacked(x2[i : i + rows], wt, out=blk)  # ω_r·x̂
            blk -= np.max(blk, axis=-1, keepdims=True) + log_m
            np.exp(blk, out=blk)

        return e, [[functools.partial(row_block, i) for i in starts]]
    half_sq = 0.5 * root * root  # ‖x̂‖²/2 = (root²/2)·‖x‖²
    shift_by = np.empty((x2.shape[0], 1))  # per row ‖x̂‖²/2 + log √m, then + the common max (if asked)
    row_max = np.empty(x2.shape[0]) if shift == "all" else None

    def project(i):  # ω_r·x̂; then exp(ω_r·x̂ − ‖x̂‖²/2 − log √m), or the row max of ω_r·x̂ − ‖x̂‖²/2
        xb, blk, h = x2[i : i + rows], flat[i : i + rows], shift_by[i : i + rows, 0]
        np.multiply(np.einsum("ij,ij->i", xb, xb), half_sq, out=h)
        _stacked(xb, wt, out=blk)
        if row_max is None:
            h += log_m
            blk -= shift_by[i : i + rows]
            np.exp(blk, out=blk)
        else:  # max_r fl(ω_r·x̂ − h) = fl(max_r(ω_r·x̂) − h): rounding is monotonic
            np.subtract(np.max(blk, axis=-1), h, out=row_max[i : i + rows])
            h += log_m

    if row_max is None:
        return e, [[functools.partial(project, i) for i in starts]]

    def common_max():  # one max per batch element over its rows and features (exact: a max)
        top = np.max(row_max.reshape(x.shape[:-1]), axis=-1, keepdims=True)
        shift_by.reshape(x.shape[:-1])[...] += top

    def shift_block(i):
        blk = flat[i : i + rows]
        blk -= shift_by[i : i + rows]
        np.exp(blk, out=blk)

    return e, [[functools.partial(project, i) for i in starts], common_max, [functools.partial(shift_block, i) for i in starts]]


def _favor_group(x: np.ndarray, wt: np.ndarray, half_sq: float, log_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Positive features (Eq. 12.7) of a group of rows ``x`` (..., r, d), divided by exp of the group's
    own max: ``exp(ω·x̂ − ‖x̂‖²/2 − c_g − log √m)`` and ``c_g = max`` over the group's rows and features
    of ``ω·x̂ − ‖x̂‖²/2``, shape (..., 1, 1) (for :class:`_ShiftedRowMap`). ``wt`` is (√scale W)^T,
    (d, m), contiguous; ``half_sq`` = scale/2, so that ``half_sq ‖x‖²`` = ‖x̂‖²/2.

    The arithmetic of :func:`_favor_blocks` with ``shift="all"``, on one cache-sized group in one
    pass, instead of that function's two threaded phases over a new array per group (run on each
    group with the max read back, it measured paired 1.05 on the whole of performer_attention at
    N = 8192, m = 256: no faster, within the run-to-run noise of about 5 %)."""
    f = _stacked(x, wt)  # ω·x̂
    h = np.einsum("...i,...i->...", x, x)[..., None]
    h *= half_sq  # ‖x̂‖²/2, (..., r, 1)
    # max_r fl(ω_r·x̂ − h) = fl(max_r(ω_r·x̂) − h): rounding is monotonic
    c = np.max(np.max(f, axis=-1, keepdims=True) - h, axis=-2, keepdims=True)
    h += c + log_m
    f -= h
    np.exp(f, out=f)
    return f, c


def _together(*plans) -> list:
    """The phases of several feature maps side by side: the blocks of their i-th phases together,
    then their steps between phases (see :func:`_run_blocks`)."""
    steps: list = []
    for i in range(max(map(len, plans))):
        here = [p[i] for p in plans if i < len(p)]
        steps.append([t for h in here if isinstance(h, list) for t in h])
        steps += [h for h in here if not isinstance(h, list)]
    return steps


@guard_overflow()
def favor_features(x, projection, *, scale=1.0, kind="positive", stabilize=True) -> np.ndarray:
    r"""Random features of the softmax kernel exp(scale·x·y): FAVOR+ (positive) or trigonometric.

    Implements Eqs. (12.6)–(12.7) of the book (Choromanski et al. 2021, Lemma 1 and §2.3).

    Parameters
    ----------
    x : array_like, shape (..., N, d)
        Inputs as they are; the function scales them itself (x̂ = √scale · x).
    projection : array_like, shape (m, d)
        The directions ω_r (rows), e.g. from :func:`orthogonal_gaussian`.
    scale : float >= 0 or None, default 1.0
        The kernel's inverse temperature: the features are those of x̂ = √scale · x, so that
        ``E φ(x)·φ(y) = exp(scale · x·y)``. The same parameter as :func:`performer_attention`'s
        ``scale``, which scales its q and k by calling this function: ``None`` means 1/√d there
        and here (the paper's q/d^{1/4}). The default 1.0 is the plain kernel exp(x·y) of
        Lemma 1; pass ``scale=None`` for the features that Performer attention uses.
    kind : {"positive", "trig"}
        ``positive``: φ(x) = exp(Wx − ‖x‖²/2)/√m, shape (..., N, m).
        ``trig``: φ(x) = exp(‖x‖²/2) [sin Wx, cos Wx]/√m, shape (..., N, 2m).
    stabilize : bool
        Divide all features of one batch element by exp(c), c the largest exponent over its N
        rows (and m features). A common factor per batch element cancels in attention (in both
        the numerator and the normalizer), but the kernel estimate φ(x)·φ(y) is then scaled by
        e^{-c_x - c_y}: use ``stabilize=False`` to estimate exp(x·y) itself.

    Returns
    -------
    phi : ndarray, shape (..., N, m) or (..., N, 2m)

    Notes
    -----
    For ω ~ N(0, I): E[e^{ω·x − ‖x‖²/2} e^{ω·y − ‖y‖²/2}] = e^{x·y} (Lemma 1) and
    E[cos(ω·(x − y))] = e^{−‖x−y‖²/2}, so both feature kinds are unbiased:
    ``E φ(x)·φ(y) = exp(x·y)``. Their mean squared errors (Lemma 2, Eq. 12.8) differ: the
    positive one vanishes as exp(x·y) → 0, the trigonometric one explodes.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> w = rng.normal(size=(200_000, 2))
    >>> x, y = np.array([[0.3, 0.1]]), np.array([[-0.2, 0.4]])
    >>> est = (favor_features(x, w, stabilize=False) @ favor_features(y, w, stabilize=False).T)[0, 0]
    >>> bool(abs(est - np.exp(x @ y.T)[0, 0]) < 0.01)
    True
    """
    x = _as_seq(x, "x")
    check_option(kind, "kind", KINDS)
    w = _as_projection(projection, "projection", None, x.shape[-1])
    root = math.sqrt(_scale(scale, x.shape[-1]))  # x̂ = √scale · x
    return _favor(x, w, kind, "all" if as_bool(stabilize, "stabilize") else None, root)


@guard_overflow()
def favor_features_loop(x, projection, *, scale=1.0, kind="positive", stabilize=True) -> np.ndarray:
    """Loop twin of :func:`favor_features`: each feature of each row with ``math.exp``/``sin``/``cos``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, w = rng.normal(size=(3, 4)), rng.normal(size=(8, 4))
    >>> bool(np.allclose(favor_features_loop(x, w), favor_features(x, w)))
    True
    """
    x = _as_seq(x, "x")
    check_option(kind, "kind", KINDS)
    w = _as_projection(projection, "projection", None, x.shape[-1])
    x = x * math.sqrt(_scale(scale, x.shape[-1]))  # x̂ = √scale · x
    stabilize = as_bool(stabilize, "stabilize")
    m, n = w.shape[0], x.shape[-2]
    out = np.empty(x.shape[:-1] + ((m,) if kind == "positive" else (2 * m,)))
    for b in np.ndindex(*x.shape[:-2]):
        half = [0.5 * sum(t * t for t in x[b][i]) for i in range(n)]  # ‖x_i‖²/2
        proj = [[float(np.dot(w[r], x[b][i])) for r in range(m)] for i in range(n)]  # ω_r·x_i
        if kind == "positive":
            c = max(proj[i][r] - half[i] for i in range(n) for r in range(m)) if stabilize else 0.0
            for i in range(n):
                for r in range(m):
                    out[b][i][r] = math.exp(proj[i][r] - half[i] - c) / math.sqrt(m)
        else:
            c = max(half) if stabilize else 0.0
            for i in range(n):
                h = math.exp(half[i] - c) / math.sqrt(m)
                for r in range(m):
                    out[b][i][r] = h * math.sin(proj[i][r])
                    out[b][i][m + r] = h * math.cos(proj[i][r])
    return out


def orthogonal_gaussian(m, d, *, rng, scaling="chi") -> np.ndarray:
    r"""m × d Gaussian directions whose rows are orthogonal within each block of d (ORF).

    Implements Eq. (12.9) of the book (Choromanski et al. 2021, §2.4 and Theorem 2; Yu et al.
    2016 for random Fourier features).

    Parameters
    ----------
    m : int >= 1
        Number of rows (features); ceil(m/d) independent blocks, the last one truncated.
    d : int >= 1
        Dimension.
    rng : numpy.random.Generator, int or None
    scaling : {"chi", "sqrt_d"}
        Row norms: ``chi`` draws them from the χ_d distribution (norms of fresh N(0, I_d)
        vectors), so each row is marginally N(0, I_d) and the estimator stays unbiased
        (performer-pytorch ``scaling=0``); ``sqrt_d`` sets every norm to √d (``scaling=1``).

    Returns
    -------
    w : ndarray, shape (m, d)

    Notes
    -----
    Each block is Q^T from the QR factorization of a d × d Gaussian matrix, with the signs of
    Q's columns fixed by diag(R) so that Q is Haar distributed. Theorem 2 of Choromanski et al.
    bounds the MSE gain for the positive features with m ≤ d directions; the blocks are
    independent, so for m a multiple of d the ratio MSE(iid)/MSE(orthogonal) is that of one block.

    Examples
    --------
    >>> w = orthogonal_gaussian(4, 4, rng=0)
    >>> g = w @ w.T
    >>> bool(np.allclose(g - np.diag(np.diag(g)), 0.0))
    True
    """
    m, d = _as_count(m, "m"), _as_count(d, "d")
    check_option(scaling, "scaling", ("chi", "sqrt_d"))
    rng = as_rng(rng)
    blocks = []
    for _ in range(-(-m // d)):
        qmat, r = np.linalg.qr(rng.standard_normal((d, d)))
        qmat = qmat * np.where(np.diag(r) < 0, -1.0, 1.0)  # Haar: fix the signs of Q's columns
        blocks.append(qmat.T)  # orthonormal rows
    w = np.concatenate(blocks, axis=0)[:m]
    if scaling == "chi":
        norms = np.linalg.norm(rng.standard_normal((m, d)), axis=1)  # ‖g‖, g ~ N(0, I_d): χ_d
    else:
        norms = np.full(m, math.sqrt(d))
    return w * norms[:, None]


def _performer_features(q, k, v, n_features, rng, causal, kind, scale, projection, orthogonal, lazy=False):
    q, k, v, _ = _check_qkv(q, k, v, causal)
    m = _as_count(n_features, "n_features")
    check_option(kind, "kind", KINDS)
    d = q.shape[-1]
    orthogonal = as_bool(orthogonal, "orthogonal")
    if projection is not None:
        w = _as_projection(projection, "projection", m, d)
        refuse_rng(rng, "projection is given")
    elif orthogonal:
        w = orthogonal_gaussian(m, d, rng=rng)
    else:
        w = as_rng(rng).standard_normal((m, d))  # iid ω_r ~ N(0, I_d)
    root = math.sqrt(_scale(scale, d))  # q̂ = q·√scale, k̂ = k·√scale (q/d^{1/4} by default)
    # The features of favor_features(q, w, scale=scale) and favor_features(k, w, scale=scale), with
    # stabilizers that cancel (Eq. 12.10): the row max for each query, one max over all keys.
    if lazy:  # the queries' features in the kernel's threads (row shift: row by row)
        n_feat = m if kind == "positive" else 2 * m
        phi_q = _RowMap(q, n_feat, lambda x: _in_order_result(*_favor_blocks(x, w, kind, "row", root)))
        if kind == "positive" and not causal:  # the keys' too, each group shifted by its own max (see _ShiftedRowMap)
            wt, half_sq, log_m = np.ascontiguousarray((root * w).T), 0.5 * root * root, 0.5 * math.log(m)
            return phi_q, _ShiftedRowMap(k, n_feat, lambda x: _favor_group(x, wt, half_sq, log_m)), v
        phi_k, plan_k = _favor_blocks(k, w, kind, "all", root)
        _run_blocks(plan_k, phi_k.size)
        return phi_q, phi_k, v
    phi_k, plan_k = _favor_blocks(k, w, kind, "all", root)
    phi_q, plan_q = _favor_blocks(q, w, kind, "row", root)
    _run_blocks(_together(plan_q, plan_k), phi_q.size + phi_k.size)
    return phi_q, phi_k, v


@guard_overflow()
def performer_attention(
    q, k, v, *, n_features, rng, causal=False, kind="positive", scale=None, projection=None, orthogonal=True
) -> np.ndarray:
    r"""Performer (FAVOR+) attention in linear time: Eq. (12.2) with random softmax-kernel features.

    Implements Eqs. (12.2), (12.4), (12.6)–(12.10) of the book (Choromanski et al. 2021, §2.2–2.4).

    Parameters
    ----------
    q : array_like, shape (..., N, d)
    k : array_like, shape (..., M, d)
        M = N if ``causal``.
    v : array_like, shape (..., M, dv)
    n_features : int >= 1
        m, the number of random directions (2m features for ``kind="trig"``).
    rng : numpy.random.Generator, int or None
        Draws the projection (unused when ``projection`` is given). The same seed gives the
        same projection in :func:`performer_attention_quadratic`.
    causal : bool
    kind : {"positive", "trig"}
    scale : float >= 0, optional
        The softmax inverse temperature; default 1/√d. The approximated quantity is
        ``refimpl.attention.softmax_attention(q, k, v, scale=scale, causal=causal)``.
    projection : array_like, shape (n_features, d), optional
        Use these directions instead of drawing them (for oracle comparisons).
    orthogonal : bool
        Draw orthogonal directions (:func:`orthogonal_gaussian`, the default, as in the paper)
        or iid N(0, I_d) rows.

    Returns
    -------
    y : ndarray, shape (..., N, dv)

    Notes
    -----
    ``φ(q̂)``, ``φ(k̂)`` of :func:`favor_features` with q̂ = √scale·q, k̂ = √scale·k (so that
    exp(q̂·k̂) = exp(scale·q·k)): the features of ``favor_features(q, projection, scale=scale)``
    and ``favor_features(k, projection, scale=scale)`` — both functions take unscaled inputs and
    the same ``scale`` — then the kernel-attention sums of Eq. (12.2); causal by chunked
    prefix sums (Eq. 12.4). Overflow is avoided by the stabilizers of Eq. (12.10): each query row
    is divided by its own maximum, all keys by one common maximum. Non-causal with positive
    features, each group of keys is shifted by its own maximum as its features are made, and the
    groups' sums ``Σ φ(k_j) [v_j, 1]^T`` are brought to the common maximum after (a factor
    e^{c_g − c} each): the same stabilizer, and neither feature array is stored. Time
    O(N m (d + dv)), memory O(N m) otherwise: the keys' features (the queries' are computed group
    by group and never stored), and for the causal form the N/c + 1 chunk states, about twice as
    many numbers again for c = 32, m = dv = 64 (:func:`linear_attention` says more). Trig
    features can give a normalizer ≤ 0; it is not clamped (the result is then wrong in sign or
    infinite — the paper's argument for positive features). The common key maximum has a limit
    in the causal form: a key whose features lie more than about 745 (in log) below the largest
    key feature of the whole sequence underflows to 0, and a query whose allowed keys all
    underflow has a zero normalizer, so the call is refused (``ValueError``, not representable)
    even though the exact estimator is finite. It takes a spread of the keys' exponents, not
    large norms alone: q, k all of norm 60 in d = 4 give finite outputs (their exponents are
    shifted together), while in d = 4 past keys of norm 60 or more followed by one key of norm
    near 0 are refused (the largest positive-feature exponents ω·k̂ − ‖k̂‖²/2 of the two differ by
    about 800 at norm 60). Where the refusal starts depends on the draw of ω, through ω·k̂: over
    seeds 0–5 and m = 4, 16, 64, 256 (q, k standard normal, N = 64, the keys then rescaled), it
    starts between norm 55.3 and 59.3, so keys of norm 55 are never refused and of norm 60 always.
    Since the maximum runs over all keys, a single future key whose features dwarf those of the
    earlier keys can make the causal call refuse outputs that a shorter sequence gives (chapter
    12, §12.4): for positive features (Eq. 12.7) a key of small norm after keys of large norm,
    for trig features (Eq. 12.6, exponent +‖k̂‖²/2) a key of large norm. The
    non-causal form always sees the maximal key. Rescale q and k there: at such logit ranges the
    estimator's variance makes it useless anyway.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 8, 4))
    >>> a = performer_attention(q, k, v, n_features=16, rng=1, causal=True)
    >>> b = performer_attention_quadratic(q, k, v, n_features=16, rng=1, causal=True)
    >>> bool(np.allclose(a, b, rtol=1e-12))
    True
    """
    causal = as_bool(causal, "causal")
    phi_q, phi_k, v = _performer_features(q, k, v, n_features, rng, causal, kind, scale, projection, orthogonal, lazy=True)
    return _kernel_attention(phi_q, phi_k, v, causal)


@guard_overflow()
def performer_attention_loop(
    q, k, v, *, n_features, rng, causal=False, kind="positive", scale=None, projection=None, orthogonal=True
) -> np.ndarray:
    """Loop twin of :func:`performer_attention`: the prefix-sum RNN (Eq. 12.3) one token at a time.

    Examples
    --------
    >>> q, k, v = np.random.default_rng(0).normal(size=(3, 6, 4)) / 2
    >>> kw = dict(n_features=16, rng=1, causal=True)
    >>> bool(np.allclose(performer_attention_loop(q, k, v, **kw), performer_attention(q, k, v, **kw)))
    True
    """
    causal = as_bool(causal, "causal")
    phi_q, phi_k, v = _performer_features(q, k, v, n_features, rng, causal, kind, scale, projection, orthogonal)
    return _kernel_attention_loop(phi_q, phi_k, v, causal)


@guard_overflow()
def performer_attention_quadratic(
    q, k, v, *, n_features, rng, causal=False, kind="positive", scale=None, projection=None, orthogonal=True
) -> np.ndarray:
    r"""The same estimator as :func:`performer_attention` through the (N, M) matrix Â = φ(Q)φ(K)^T.

    Implements Eq. (12.1) with κ̂(q, k) = φ(q̂)·φ(k̂) (Choromanski et al. 2021, §2.2, before the
    reordering): ``Â_ij = φ(q̂_i)·φ(k̂_j)`` (zero for j > i if ``causal``), ``y = D̂^{-1} Â V`` with
    ``D̂ = diag(Â 1)``. O(N M m) time, O(N M) memory: the quadratic path, for checking the
    linear-time one and for looking at the implicit attention matrix. Parameters as
    :func:`performer_attention`.

    Examples
    --------
    >>> q, k, v = np.random.default_rng(0).normal(size=(3, 6, 4)) / 2
    >>> kw = dict(n_features=16, rng=1)
    >>> bool(np.allclose(performer_attention_quadratic(q, k, v, **kw), performer_attention(q, k, v, **kw)))
    True
    """
    causal = as_bool(causal, "causal")
    phi_q, phi_k, v = _performer_features(q, k, v, n_features, rng, causal, kind, scale, projection, orthogonal)
    a = phi_q @ np.swapaxes(phi_k, -1, -2)  # Â_ij = φ(q̂_i)·φ(k̂_j)
    if causal:
        a = a * np.tri(a.shape[-2], a.shape[-1])
    return (a @ v) / a.sum(axis=-1, keepdims=True)  # D̂^{-1} Â V


# ---------------------------------------------------------------------------------------------
# Random Feature Attention (Peng et al. 2021), Eqs. (12.5), (12.11)-(12.12)
# ---------------------------------------------------------------------------------------------


def rff_features(x, projection) -> np.ndarray:
    r"""Random Fourier features φ(x) = [sin(Wx), cos(Wx)]/√D (Rahimi & Recht 2007).

    Implements Eq. (12.5) of the book (Peng et al. 2021, §2; Rahimi & Recht 2007). With the rows of W drawn
    from N(0, σ^{-2} I), ``E φ(x)·φ(y) = exp(−‖x − y‖²/(2σ²))``.

    Parameters
    ----------
    x : array_like, shape (..., N, d)
    projection : array_like, shape (D, d)

    Returns
    -------
    phi : ndarray, shape (..., N, 2D)

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, w = rng.normal(size=(2, 3)), rng.normal(size=(4, 3))
    >>> phi = rff_features(x, w)
    >>> phi.shape, bool(np.allclose(np.sum(phi**2, axis=-1), 1.0))  # sin² + cos² over D = 4 features
    ((2, 8), True)
    """
    x = _as_seq(x, "x")
    w = _as_projection(projection, "projection", None, x.shape[-1])
    return _sin_cos(x, w, 1.0 / math.sqrt(w.shape[0]))


def _rfa_setup(q, k, v, n_features, sigma, rng, gated, gates, causal, lazy=False):
    """φ(q/‖q‖), φ(k/‖k‖), v, the gates (or None), causal. ``lazy`` (ungated only): φ(q), and φ(k)
    if not causal, as :class:`_RowMap` for :func:`_kernel_attention`; then the caller must call
    :func:`_refuse_zero_rows` on the returned list once the kernel has run (the rows' norms are
    known only then)."""
    causal, gated = as_bool(causal, "causal"), as_bool(gated, "gated")
    q, k, v, batch = _check_qkv(q, k, v, causal)
    big_d = _as_count(n_features, "n_features")
    sigma = as_positive_scalar(sigma, "sigma")
    if gated:
        if not causal:
            raise ValueError("causal: gated RFA is a recurrence over time; expected causal=True")
        if gates is None:
            raise ValueError("gates: gated=True needs the gate values g_t, shape (..., N)")
        gates = as_real_array(gates, "gates")
        try:
            ok = np.broadcast_shapes(gates.shape, batch + (q.shape[-2],)) == batch + (q.shape[-2],)
        except ValueError:
            ok = False
        if gates.ndim < 1 or not ok:
            raise ValueError(f"gates: expected a shape broadcastable to (..., N) = {batch + (q.shape[-2],)}, got shape {gates.shape}")
        if np.any(gates < 0) or np.any(gates >= 1):
            raise ValueError(f"gates: expected values in [0, 1), got range [{gates.min():.6g}, {gates.max():.6g}]")
    elif gates is not None:
        raise ValueError("gates: given but gated=False; pass gated=True to use them")
    w = as_rng(rng).standard_normal((big_d, q.shape[-1])) / sigma  # ω ~ N(0, σ^{-2} I)
    factor = 1.0 / math.sqrt(big_d)  # φ(x/‖x‖) = rff_features(x/‖x‖, w), the blocks of q and k in threads
    zero_rows: list = []  # the names of the arguments with a zero row

    def lazy_map(x, name):
        def fn(rows):
            out, blocks, norm = _sin_cos_blocks(rows, w, factor, unit=True)
            _in_order([blocks])
            if np.any(norm == 0):
                zero_rows.append(name)
            return out

        return _RowMap(x, 2 * big_d, fn)

    if lazy and not gated:
        if not causal:
            return lazy_map(q, "q"), lazy_map(k, "k"), v, None, causal, zero_rows
        phi_k, blocks_k, norm_k = _sin_cos_blocks(k, w, factor, unit=True)
        _run_blocks([blocks_k], phi_k.size)
        if np.any(norm_k == 0):
            zero_rows.append("k")
        return lazy_map(q, "q"), phi_k, v, None, causal, zero_rows
    (phi_q, blocks_q, norm_q), (phi_k, blocks_k, norm_k) = (_sin_cos_blocks(x, w, factor, unit=True) for x in (q, k))
    _run_blocks([blocks_q + blocks_k], phi_q.size + phi_k.size)
    _refuse_zero_rows([name for norm, name in ((norm_q, "q"), (norm_k, "k")) if np.any(norm == 0)])
    return phi_q, phi_k, v, (gates if gated else None), causal, zero_rows


def _refuse_zero_rows(names: list) -> None:
    for name in ("q", "k"):
        if name in names:
            raise ValueError(f"{name}: expected nonzero rows (RFA normalizes each row to unit length), got a zero row")


def _gated_quadratic(phi_q, phi_k, v, gates) -> np.ndarray:
    """The decay-masked quadratic form of gated RFA: weight φ(q_t)·φ(k_s)(1 − g_s)Π_{r=s+1}^t g_r, s ≤ t."""
    n = phi_q.shape[-2]
    with np.errstate(divide="ignore"):
        logg = np.log(gates)  # −inf where g = 0 (a full reset)
    later = np.arange(n)[:, None] > np.arange(n)[None, :]  # r > s
    # seg[t, s] = Σ_{s < r ≤ t} log g_r, by a cumulative sum down each column (exact for g = 0)
    seg = np.cumsum(np.where(later, logg[..., :, None], 0.0), axis=-2)
    decay = np.where(np.tri(n, dtype=bool), np.exp(seg), 0.0) * (1.0 - gates)[..., None, :]
    a = (phi_q @ np.swapaxes(phi_k, -1, -2)) * decay
    return (a @ v) / a.sum(axis=-1, keepdims=True)


@guard_overflow()
def rfa_attention(q, k, v, *, n_features, sigma, rng, gated=False, gates=None, causal=True) -> np.ndarray:
    r"""Random Feature Attention (RFA), optionally gated (RFA-Gate).

    Implements Eqs. (12.5), (12.11)–(12.12) of the book (Peng et al. 2021, §3.1–3.2).

    Parameters
    ----------
    q : array_like, shape (..., N, d)
    k : array_like, shape (..., M, d)
        Rows are ℓ2-normalized (a zero row is an error). M = N if ``causal``.
    v : array_like, shape (..., M, dv)
    n_features : int >= 1
        D, the number of random directions (2D features).
    sigma : float > 0
        Kernel width: ω ~ N(0, σ^{-2} I), E φ(x)·φ(y) = exp(−‖x−y‖²/(2σ²)); for unit vectors
        this is e^{−1/σ²} exp(x·y/σ²), so RFA approximates softmax attention with scale 1/σ²
        on the normalized q, k. Peng et al. 2021 draw ω ~ N(0, σ² I) next to
        this kernel; the two agree only for σ = 1, and the kernel is what is implemented (a
        learned standard deviation s of ω is σ = 1/s).
    rng : numpy.random.Generator, int or None
    gated : bool
        Use the forgetting gate: S_t = g_t S_{t−1} + (1 − g_t) φ(k_t) v_t^T (and the same for z_t).
    gates : array_like, shape (..., N), optional
        g_t ∈ [0, 1) (required iff ``gated``; e.g. a sigmoid of the token, g_t = σ(w_g·x_t + b_g)).
    causal : bool
        The default is causal (RFA is a decoder recurrence). Gated RFA must be causal.

    Returns
    -------
    y : ndarray, shape (..., N, dv)

    Notes
    -----
    Ungated: Eq. (12.2) with φ = random Fourier features, causal by chunked prefix sums.
    Gated: the recurrence unrolls to the decay-masked quadratic form (Eq. 12.12)
    ``y_t = Σ_{s≤t} w_ts v_s / Σ_{s≤t} w_ts``, ``w_ts = φ(q_t)·φ(k_s) (1 − g_s) Π_{r=s+1}^t g_r``,
    computed with segment sums of log g (exact for g = 0, no underflowing products); this
    vectorized form is O(N²). The normalizer φ(q)·z can be ≤ 0 (trig features); the authors'
    code clamps it from below at a constant (``qz.clamp_min(EPS)``, whose value differs between
    versions of that code: 0.1, 1 and 0.01 are found), this reference does not clamp.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 6, 4))
    >>> g = np.full(6, 0.5)
    >>> a = rfa_attention(q, k, v, n_features=8, sigma=1.0, rng=1, gated=True, gates=g)
    >>> bool(np.allclose(a, rfa_attention_loop(q, k, v, n_features=8, sigma=1.0, rng=1, gated=True, gates=g)))
    True
    """
    phi_q, phi_k, v, gates, causal, zero_rows = _rfa_setup(q, k, v, n_features, sigma, rng, gated, gates, causal, lazy=True)
    if gates is not None:
        return _gated_quadratic(phi_q, phi_k, v, gates)
    y = _kernel_attention(phi_q, phi_k, v, causal)
    _refuse_zero_rows(zero_rows)
    return y


@guard_overflow()
def rfa_attention_loop(q, k, v, *, n_features, sigma, rng, gated=False, gates=None, causal=True) -> np.ndarray:
    """Loop twin of :func:`rfa_attention`: the (gated) recurrence of Eqs. (12.11)–(12.12), one token at a time.

    Examples
    --------
    >>> q, k, v = np.random.default_rng(0).normal(size=(3, 5, 4))
    >>> kw = dict(n_features=8, sigma=1.0, rng=2)
    >>> bool(np.allclose(rfa_attention_loop(q, k, v, **kw), rfa_attention(q, k, v, **kw)))
    True
    """
    phi_q, phi_k, v, gates, causal, _ = _rfa_setup(q, k, v, n_features, sigma, rng, gated, gates, causal)
    return _kernel_attention_loop(phi_q, phi_k, v, causal, gates)


# ---------------------------------------------------------------------------------------------
# Reformer: angular LSH, LSH attention, reversible blocks, Eqs. (12.13)-(12.16)
# ---------------------------------------------------------------------------------------------


def _lsh_setup(x, n_buckets, n_rounds):
    n_buckets = _as_count(n_buckets, "n_buckets", 2)
    if n_buckets % 2:
        raise ValueError(f"n_buckets: expected an even number >= 2 (h = argmax[xR; −xR]), got {n_buckets}")
    return n_buckets, _as_count(n_rounds, "n_rounds")


def _rotations(rng, n_rounds: int, d: int, n_buckets: int) -> np.ndarray:
    return as_rng(rng).standard_normal((n_rounds, d, n_buckets // 2))  # R^{(r)}, one per round


def _hash(x: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """h^{(r)}(x) = argmax [x R^{(r)}; −x R^{(r)}], shape (..., n_rounds, N).

    Without forming the concatenation: the first maximum of [xR, −xR] is argmax(xR) if
    max(xR) ≥ −min(xR) (ties go to the first half, as in the concatenated argmax), else
    b/2 + argmin(xR). Cost O(N d b/2) per round by one matrix product (BLAS).
    """
    xr = np.matmul(x[..., None, :, :], rot)  # x R^{(r)}, shape (..., R, N, b/2)
    i_max, i_min = np.argmax(xr, axis=-1), np.argmin(xr, axis=-1)
    top = np.take_along_axis(xr, i_max[..., None], axis=-1)[..., 0]
    bottom = np.take_along_axis(xr, i_min[..., None], axis=-1)[..., 0]
    return np.where(top >= -bottom, i_max, rot.shape[-1] + i_min)


def lsh_hash(x, n_buckets, *, rng, n_rounds=1, rotations=None) -> np.ndarray:
    r"""Angular locality-sensitive hashing: h(x) = argmax([xR; −xR]) for random Gaussian R.

    Implements Eq. (12.13) of the book (Kitaev et al. 2020, §2; Andoni et al. 2015).

    Parameters
    ----------
    x : array_like, shape (..., N, d)
    n_buckets : int, even, >= 2
    rng : numpy.random.Generator, int or None
        Draws R^{(r)} ~ N(0, 1)^{d × b/2}, one per round (shared by the batch), in one call
        ``standard_normal((n_rounds, d, n_buckets // 2))``.
    n_rounds : int >= 1
    rotations : array_like, shape (n_rounds, d, n_buckets // 2), optional
        Use these R instead of drawing them (to reproduce another library's buckets).

    Returns
    -------
    buckets : ndarray of int, shape (..., n_rounds, N)
        Bucket ids in 0 … n_buckets − 1.

    Notes
    -----
    Two vectors at angle θ fall into the same bucket with a probability that decreases with θ;
    for b = 2 it is exactly 1 − θ/π (a random hyperplane). The hash depends only on the
    direction of x.

    Examples
    --------
    >>> x = np.random.default_rng(0).normal(size=(5, 3))
    >>> bool(np.array_equal(lsh_hash(x, 4, rng=7), lsh_hash(x, 4, rng=7)))
    True
    """
    x = _as_seq(x, "x")
    n_buckets, n_rounds = _lsh_setup(x, n_buckets, n_rounds)
    d = x.shape[-1]
    if rotations is None:
        rot = _rotations(rng, n_rounds, d, n_buckets)
    else:
        rot = as_real_array(rotations, "rotations", ndim=3)
        if rot.shape != (n_rounds, d, n_buckets // 2):
            raise ValueError(f"rotations: expected shape {(n_rounds, d, n_buckets // 2)}, got shape {rot.shape}")
        refuse_rng(rng, "rotations is given")
    return _hash(x, rot)


_LOOK_BACKS = ("within_round", "across_rounds")


def _lsh_check(qk, v, n_buckets, n_rounds, chunk_size, causal, rng, rotations, look_back):
    qk, v = _as_seq(qk, "qk"), _as_seq(v, "v", "(..., N, dv)")
    if v.shape[-2] != qk.shape[-2]:
        raise ValueError(f"v: expected the same number of rows N = {qk.shape[-2]} as qk, got shape {v.shape}")
    try:
        batch = np.broadcast_shapes(qk.shape[:-2], v.shape[:-2])
    except ValueError:
        raise ValueError(f"v: the batch axes of qk and v do not broadcast, got shapes {qk.shape}, {v.shape}") from None
    n_buckets, n_rounds = _lsh_setup(qk, n_buckets, n_rounds)
    n = qk.shape[-2]
    c = _as_count(chunk_size, "chunk_size")
    if n % c:
        raise ValueError(f"chunk_size: expected a divisor of N = {n} (no implicit padding), got {c}")
    check_option(look_back, "look_back", _LOOK_BACKS)
    norm = row_norms(qk)
    if np.any(norm == 0):
        raise ValueError("qk: expected nonzero rows (keys are qk/‖qk‖), got a zero row")
    d = qk.shape[-1]
    if rotations is None:
        rot = _rotations(rng, n_rounds, d, n_buckets)
    else:
        if rng is not None:
            raise ValueError("rng: expected None when rotations are given (nothing is drawn)")
        rot = as_real_array(rotations, "rotations", ndim=3)
        if rot.shape != (n_rounds, d, n_buckets // 2):
            raise ValueError(f"rotations: expected shape {(n_rounds, d, n_buckets // 2)}, got shape {rot.shape}")
    qk, v = np.broadcast_to(qk, batch + qk.shape[-2:]), np.broadcast_to(v, batch + v.shape[-2:])
    k = qk / np.broadcast_to(norm, batch + norm.shape[-2:])
    return qk, k, v, rot, n_rounds, c, as_bool(causal, "causal")


def _previous_chunk(n_rounds: int, nc: int, look_back: str) -> np.ndarray | None:
    """Index of the chunk that chunk g looks back to, over the R·nc chunks of all rounds in order.

    ``"within_round"``: the cyclically previous chunk of the same round (none if nc = 1).
    ``"across_rounds"``: the previous chunk of the sequence of all rounds sorted one after the
    other, cyclically over all R·nc chunks (none if R·nc = 1): round r's first chunk looks back
    to round r−1's last (reformer-pytorch's ``look_one_back`` after sorting all hash rounds
    together, as trax does).
    """
    g = np.arange(n_rounds * nc)
    if look_back == "across_rounds":
        return None if g.size == 1 else (g - 1) % g.size
    return None if nc == 1 else (g // nc) * nc + (g % nc - 1) % nc


@guard_overflow()
def lsh_attention(
    qk, v, *, n_buckets, n_rounds, chunk_size, rng=None, rotations=None, causal=False, look_back="within_round"
) -> np.ndarray:
    r"""Reformer LSH attention with shared QK: sort by bucket, attend within chunks, combine rounds.

    Implements Eqs. (12.13)–(12.15) of the book (Kitaev et al. 2020, §2; the chunking and
    masking conventions of reformer-pytorch's ``LSHAttention``; for more than one round, its
    look-back rule only with ``look_back="across_rounds"``).

    Parameters
    ----------
    qk : array_like, shape (..., N, d)
        Shared query/key projection: queries q_i = qk_i, keys k_j = qk_j/‖qk_j‖ (nonzero rows).
    v : array_like, shape (..., N, dv)
    n_buckets : int, even, >= 2
    n_rounds : int >= 1
        Independent hash rounds (``n_hashes``).
    chunk_size : int >= 1
        Must divide N (no implicit padding: pad the sequence yourself and mask).
    rng : numpy.random.Generator, int or None
        Draws the rotations exactly as :func:`lsh_hash` with the same seed. Must be None when
        ``rotations`` is given.
    rotations : array_like, shape (n_rounds, d, n_buckets // 2), optional
        The rotations R^{(r)} of Eq. (12.13) to use instead of drawing them (to reproduce
        another implementation's buckets; reformer-pytorch's ``(1, d, n_hashes, b/2)`` tensor
        is ``rotations.transpose(1, 0, 2)`` of this layout, its batch axis dropped).
    causal : bool
        Key j is masked for query i if j > i.
    look_back : {"within_round", "across_rounds"}
        Which chunk a chunk attends to besides itself. ``"within_round"`` (the default): the
        cyclically previous chunk of the same hash round, so each round is the paper's
        attention over P_i^{(r)} on its own. ``"across_rounds"``: the rounds' sorted orders are
        laid one after the other and a chunk looks one chunk back along that sequence, so the
        first chunk of round r sees the last chunk of round r−1 (and round 0's first chunk the
        last chunk of the last round) — the rule of reformer-pytorch and trax. The two agree
        for one round.

    Returns
    -------
    y : ndarray, shape (..., N, dv)

    Notes
    -----
    Per round r: sort the tokens by (bucket, position); cut the sorted order into chunks of c;
    each chunk attends to itself and to one previous chunk (``look_back``; only itself if there
    is no other chunk). Inside that window the logit is ``s_ij = q_i·k_j/√d`` for every key,
    whatever its bucket (reformer-pytorch's default ``attend_across_buckets=True``), except
    ``s_ij = SELF_ATTENTION_VALUE`` for j = i (−5e4: a token sees itself only if nothing else is
    available; also where the other round's chunk holds the query itself) and ``s_ij = −∞`` for
    j > i when causal. Round r gives ``o_i^{(r)}`` and its log-normalizer
    ``z_i^{(r)} = logsumexp_j s_ij``; the rounds are combined as
    ``o_i = Σ_r exp(z_i^{(r)} − logsumexp_r z_i^{(r)}) o_i^{(r)}`` (Eq. 12.15), i.e. a softmax over
    the multiset of keys seen in all rounds (no duplicate-count correction, as reformer-pytorch's
    default ``allow_duplicate_attention=True``). With one round and two chunks (c = N/2) every
    query sees every key and the result is full shared-QK attention.

    Cost per round: the hash, N·d·b/2 multiply-adds; the sort, O(N log N); and N·2c·(d + dv)
    multiply-adds for the windows. A bucket holds about N/b tokens, so c and b cannot both stay
    fixed as N grows: with a fixed chunk length (b ∝ N) the hash grows like N²d/(2c) and passes
    the windows at N = 4c²(d + dv)/d (32768 for c = d = dv = 64); with a fixed b the windows
    grow like N²/b. The paper's O(N log N) holds while these terms stay small (chapter 12,
    §12.5–12.6). Memory O(n_rounds · N · (d + dv)) for the sorted copies and per-round outputs.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> qk, v = rng.normal(size=(2, 8, 4))
    >>> a = lsh_attention(qk, v, n_buckets=4, n_rounds=2, chunk_size=2, rng=3)
    >>> bool(np.allclose(a, lsh_attention_loop(qk, v, n_buckets=4, n_rounds=2, chunk_size=2, rng=3)))
    True
    """
    q, k, v, rot, n_rounds, c, causal = _lsh_check(qk, v, n_buckets, n_rounds, chunk_size, causal, rng, rotations, look_back)
    batch, (n, d), dv = q.shape[:-2], q.shape[-2:], v.shape[-1]
    buckets = _hash(q, rot)  # (..., R, N)
    perm = np.argsort(buckets * n + np.arange(n), axis=-1, kind="stable")  # per round: sort by (bucket, position)
    nc = n // c
    n_chunks = n_rounds * nc  # the chunks of all rounds, round after round
    prev = _previous_chunk(n_rounds, nc, look_back)
    flat = perm.reshape(*batch, n_rounds * n)  # the sorted positions of all rounds in one sequence
    sq, sk, sv = (np.take_along_axis(x, flat[..., None], axis=-2).reshape(*batch, n_chunks, c, -1) for x in (q, k, v))
    pos = flat.reshape(*batch, n_chunks, c)
    group = per_block(2 * c * max(c, d, dv) * math.prod(batch))  # a chunk: its window of 2c keys
    o, z = np.empty(batch + (n_chunks, c, dv)), np.empty(batch + (n_chunks, c))
    for g0 in range(0, n_chunks, group):  # groups of chunks: temporaries stay small
        idx = np.arange(g0, min(g0 + group, n_chunks))
        own = idx if prev is None else np.concatenate([idx, prev[idx]])  # own chunk + the one looked back to

        def window(x):  # (..., G, c, f) for the group's chunks -> (..., G, (1 or 2)·c, f)
            w = np.take(x, own, axis=-3)
            return w if prev is None else np.concatenate([w[..., : idx.size, :, :], w[..., idx.size :, :, :]], axis=-2)

        kpos = window(pos[..., None])[..., 0]
        qpos = np.take(pos, idx, axis=-2)
        s_g = (np.take(sq, idx, axis=-3) @ np.swapaxes(window(sk), -1, -2)) / math.sqrt(d)  # q_i·k_j/√d
        if causal:
            s_g[kpos[..., None, :] > qpos[..., :, None]] = -np.inf
        s_g[kpos[..., None, :] == qpos[..., :, None]] = SELF_ATTENTION_VALUE
        z_g = logsumexp(s_g, axis=-1, keepdims=True)  # z_i^{(r)}
        np.exp(s_g - z_g, out=s_g)
        o[..., idx, :, :] = s_g @ window(sv)  # o_i^{(r)} in sorted order
        z[..., idx, :] = z_g[..., 0]
    inv = np.argsort(perm, axis=-1)  # undo each round's sort
    o = np.take_along_axis(o.reshape(*batch, n_rounds, n, dv), inv[..., None], axis=-2)
    z = np.take_along_axis(z.reshape(*batch, n_rounds, n), inv, axis=-1)
    # Eq. (12.15): softmax over rounds of z_i^{(r)} (shifted by the max: z ≈ −5e4 loses no digits)
    w = np.exp(z - np.max(z, axis=-2, keepdims=True))
    return np.einsum("...rn,...rnf->...nf", w, o) / np.sum(w, axis=-2)[..., None]


@guard_overflow()
def lsh_attention_loop(
    qk, v, *, n_buckets, n_rounds, chunk_size, rng=None, rotations=None, causal=False, look_back="within_round"
) -> np.ndarray:
    """Loop twin of :func:`lsh_attention`: per round, per query, over the keys of its window.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> qk, v = rng.normal(size=(8, 4)), rng.normal(size=(8, 2))
    >>> kw = dict(n_buckets=4, n_rounds=2, chunk_size=2, rng=3)
    >>> bool(np.allclose(lsh_attention_loop(qk, v, **kw), lsh_attention(qk, v, **kw)))
    True
    """
    q, k, v, rot, n_rounds, c, causal = _lsh_check(qk, v, n_buckets, n_rounds, chunk_size, causal, rng, rotations, look_back)
    batch, (n, d), dv = q.shape[:-2], q.shape[-2:], v.shape[-1]
    nc = n // c
    out = np.zeros(batch + (n, dv))
    for b in np.ndindex(*batch):
        outs, logz = np.zeros((n_rounds, n, dv)), np.zeros((n_rounds, n))
        chunks = []  # the chunks of all rounds, round after round
        for r in range(n_rounds):
            h = [int(np.argmax(np.concatenate([q[b][i] @ rot[r], -(q[b][i] @ rot[r])]))) for i in range(n)]
            order = sorted(range(n), key=lambda i: (h[i], i))  # sort by (bucket, position)
            chunks += [order[j * c : (j + 1) * c] for j in range(nc)]
        for g, chunk in enumerate(chunks):
            r, j = divmod(g, nc)
            if look_back == "across_rounds":  # one chunk back along the sequence of all rounds
                back = None if len(chunks) == 1 else chunks[g - 1]
            else:  # one chunk back within round r, cyclically
                back = None if nc == 1 else chunks[r * nc + (j - 1) % nc]
            keys = chunk if back is None else chunk + back
            for i in chunk:
                logits = []
                for jj in keys:
                    if jj == i:
                        logits.append(SELF_ATTENTION_VALUE)
                    elif causal and jj > i:
                        logits.append(-np.inf)
                    else:
                        logits.append(float(q[b][i] @ k[b][jj]) / math.sqrt(d))
                top = max(logits)
                e = [math.exp(s - top) for s in logits]
                total = sum(e)
                logz[r, i] = top + math.log(total)
                outs[r, i] = sum(ej / total * v[b][jj] for ej, jj in zip(e, keys))
        for i in range(n):
            top = max(logz[:, i])
            wts = [math.exp(logz[r, i] - top) for r in range(n_rounds)]
            out[b][i] = sum(wts[r] / sum(wts) * outs[r, i] for r in range(n_rounds))
    return out


# ---------------------------------------------------------------------------------------------
# Reversible residual layers, Eq. (12.16)
# ---------------------------------------------------------------------------------------------


def _layers(f, g) -> list[tuple[Callable, Callable]]:
    fs = list(f) if isinstance(f, Sequence) else [f]
    gs = list(g) if isinstance(g, Sequence) else [g]
    if len(fs) != len(gs) or not fs:
        raise ValueError(f"g: expected as many G functions as F functions (>= 1), got {len(fs)} F and {len(gs)} G")
    for fn, name in [(fn, "f") for fn in fs] + [(fn, "g") for fn in gs]:
        if not callable(fn):
            raise TypeError(f"{name}: expected a callable or a sequence of callables, got {type(fn).__name__}")
    return list(zip(fs, gs))


def _apply(fn, x, name: str, shape: tuple) -> np.ndarray:
    y = np.asarray(fn(x), dtype=np.float64)
    if y.shape != shape:
        raise ValueError(f"{name}: expected an output of shape {shape}, got shape {y.shape}")
    return y


def _pair(x1, x2, n1: str, n2: str):
    x1, x2 = as_real_array(x1, n1), as_real_array(x2, n2)
    if x1.shape != x2.shape:
        raise ValueError(f"{n2}: expected the same shape as {n1}, {x1.shape}, got shape {x2.shape}")
    return x1, x2


def reversible_forward(x1, x2, f, g) -> tuple[np.ndarray, np.ndarray]:
    r"""Reversible residual blocks (RevNet): Y1 = X1 + F(X2), Y2 = X2 + G(Y1).

    Implements Eq. (12.16) of the book (Kitaev et al. 2020, §3; Gomez et al. 2017, §3).

    Parameters
    ----------
    x1, x2 : array_like, same shape
        The two halves of the activations.
    f, g : callable or sequence of callables
        F (attention) and G (feed-forward); sequences of equal length are a stack of blocks,
        applied in order. Each must return an array of the input's shape.

    Returns
    -------
    y1, y2 : ndarray

    Examples
    --------
    >>> x1, x2 = np.ones(3), np.arange(3.0)
    >>> y1, y2 = reversible_forward(x1, x2, np.sin, np.tanh)
    >>> a, b = reversible_inverse(y1, y2, np.sin, np.tanh)
    >>> bool(np.allclose(a, x1) and np.allclose(b, x2))
    True
    """
    y1, y2 = _pair(x1, x2, "x1", "x2")
    for fn, gn in _layers(f, g):
        y1 = y1 + _apply(fn, y2, "f", y2.shape)  # Y1 = X1 + F(X2)
        y2 = y2 + _apply(gn, y1, "g", y1.shape)  # Y2 = X2 + G(Y1)
    return y1, y2


def reversible_inverse(y1, y2, f, g) -> tuple[np.ndarray, np.ndarray]:
    r"""Inverse of :func:`reversible_forward`: X2 = Y2 − G(Y1), X1 = Y1 − F(X2), blocks in reverse order.

    Implements Eq. (12.17) of the book (Kitaev et al. 2020, §3; Gomez et al. 2017, §3): the
    activations of a layer are recomputed from its outputs, so none need to be stored.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x1, x2, w = rng.normal(size=(3, 3, 3))
    >>> f = g = lambda x: np.tanh(x @ w)
    >>> y1, y2 = reversible_forward(x1, x2, f, g)
    >>> bool(np.allclose(reversible_inverse(y1, y2, f, g), (x1, x2)))
    True
    """
    x1, x2 = _pair(y1, y2, "y1", "y2")
    for fn, gn in reversed(_layers(f, g)):
        x2 = x2 - _apply(gn, x1, "g", x1.shape)  # X2 = Y2 − G(Y1)
        x1 = x1 - _apply(fn, x2, "f", x2.shape)  # X1 = Y1 − F(X2)
    return x1, x2


# The backward pass (vector–Jacobian products) lives in refimpl/_vjp.py, re-exported here.
from ._vjp import linear_attention_vjp, linear_attention_vjp_loop  # noqa: E402
