r"""Token mixing as filtering: FNet's Fourier mixing, gMLP's spatial gating unit, FFT long convolutions and Hyena.

Chapter 10 of the book (``notebooks/10-token-mixing.ipynb``) derives every formula here.

A *token mixer* combines the N positions of a sequence ``x`` of shape ``(..., N, d)`` along the
sequence axis. For fixed data each mixer here is linear in the values it mixes, so it is an
N × N matrix (chapter 4, Eq. 4.9), and the question of this module is which matrix:

* **FNet** (Lee-Thorp et al. 2022): ``Re`` of the 2-D DFT, a fixed change of basis (Eqs. 10.1–10.2);
* **gMLP** (Liu et al. 2021): a learned but fixed N × N matrix W gated elementwise by the other half of
  the channels (Eqs. 10.3–10.4); a Toeplitz W is a convolution;
* **long convolutions** by zero-padded FFT (Eqs. 10.5–10.6), the workhorse of Hyena and S4;
* **Hyena** (Poli et al. 2023): long convolutions with *implicit* filters (a small sine FFN of
  positional features, times an exponential window, Eq. 10.7) interleaved with data-controlled
  diagonal gates, ``H(u) = D_x^N S_h^N ⋯ D_x^1 S_h^1`` (Def. 3.1; Eqs. 10.8–10.10).

Glossary (code name → symbol in the book / the papers)
------------------------------------------------------
``x`` (..., N, d)          token sequence X ∈ ℝ^{N×d} (FNet, gMLP input).
``N``, ``L``               sequence length (FNet/gMLP: N = n; Hyena: L).
``d``, ``D``               channels (hidden size d_model; Hyena: D).
``w`` (N, N), ``b`` (N,)   gMLP's spatial projection W and per-position bias b (Eq. 10.4).
``u`` (..., N, d)          the sequence to convolve (``fft_conv``) or the Hyena input u.
``h`` (M, d)               per-channel causal filters h_0 … h_{M−1} (``fft_conv``).
``order``                  the Hyena order N of Def. 3.1 (number of long convolutions and gates).
``v`` (..., L, D)          Hyena's value projection v = z^1.
``x`` (order, ..., L, D)   Hyena's gates x^1, …, x^N (``x[n−1]`` is x^n).
``filters`` (order, L, D)  Hyena's long filters h^1, …, h^N (``filters[n−1]`` is h^n).
``skip`` (order, D)        the reference code's per-channel skip ``D`` of ``fftconv`` (h^n_0 += skip).
``w_in`` (D, (order+1)·D)  Hyena's input projection; its output splits as (v, x^1, …, x^N).
``short_filter`` (K, (order+1)·D)  Hyena's short depthwise causal convolution (K = 3 in the code).
``b_in``, ``short_bias`` ((order+1)·D,)  biases of the input projection and of the short convolution.

Conventions: the DFT is unnormalized, ``F_nm = e^{−2πi nm/N}``; convolutions are causal,
``(h * u)_t = Σ_{j ≤ t} h_j u_{t−j}``, truncated to the input length; matrices act on the
sequence axis, ``y_i = Σ_j W_ij v_j``.

References
----------
.. [1] J. Lee-Thorp, J. Ainslie, I. Eckstein, S. Ontañón, "FNet: Mixing tokens with Fourier
       transforms", NAACL 2022 (google-research ``f_net/layers.py``, ``fourier.py``).
.. [2] H. Liu, Z. Dai, D. R. So, Q. V. Le, "Pay attention to MLPs", NeurIPS 2021
       (lucidrains ``g-mlp-pytorch`` ``SpatialGatingUnit``).
.. [3] M. Poli, S. Massaroli, E. Nguyen, D. Y. Fu, T. Dao, S. Baccus, Y. Bengio, S. Ermon, C. Ré,
       "Hyena hierarchy: Towards larger convolutional language models", ICML 2023, Def. 3.1, §3.3
       (HazyResearch/safari ``standalone_hyena.py``).
.. [4] A. V. Oppenheim, R. W. Schafer, *Discrete-Time Signal Processing*, 3rd ed., §8.7
       (linear convolution by the DFT).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft

from . import _blocking
from ._blocking import per_block
from ._validate import as_bool, as_int, as_array, as_positive_scalar, as_real_array, as_rng, guard_overflow

__all__ = [
    "fnet",
    "fnet_loop",
    "fnet_matrix",
    "spatial_gating_unit",
    "spatial_gating_unit_loop",
    "fft_conv",
    "fft_conv_loop",
    "causal_toeplitz",
    "hyena_filter",
    "hyena_filter_loop",
    "hyena_recurrence",
    "hyena_recurrence_loop",
    "hyena_operator",
    "hyena_operator_loop",
    "hyena_matrix",
]

LN_EPS = 1e-5  # LayerNorm ε of g-mlp-pytorch (torch.nn.LayerNorm default)


_in_blocks = _blocking.in_blocks  # a module name, so that tests can spy on the split


def _check_sequence(x, name: str, *, real: bool = True, copy: bool = True) -> np.ndarray:
    x = as_real_array(x, name, copy=copy) if real else as_array(x, name, copy=copy)
    if x.ndim < 2 or x.shape[-2] < 1 or x.shape[-1] < 1:
        raise ValueError(f"{name}: expected shape (..., N, d) with N, d >= 1, got shape {x.shape}")
    return x


# ---------------------------------------------------------------------------------------------
# FNet, Eqs. (10.1)-(10.2)
# ---------------------------------------------------------------------------------------------


def fnet(x):
    r"""FNet's token mixing: the real part of the 2-D DFT over the sequence and hidden axes.

    Implements Eq. (10.1) of the book (Lee-Thorp et al. 2022, §3.1: ``y = Re(F_seq(F_h(x)))``).

    Parameters
    ----------
    x : array_like, shape (..., N, d)
        Real token sequence.

    Returns
    -------
    y : ndarray, shape (..., N, d), float64

    Notes
    -----
    .. math::  y_{nk} = \operatorname{Re}\sum_{m=0}^{N-1}\sum_{h=0}^{d-1} x_{mh}\,
               e^{-2\pi i (nm/N + kh/d)} = \sum_{m,h} x_{mh}\cos\big(2\pi(nm/N + kh/d)\big).

    The unnormalized DFT, as ``numpy.fft.fft2(x, axes=(-2, -1)).real`` and HF
    ``FNetBasicFourierTransform`` (``torch.fft.fftn(x, dim=(1, 2)).real``). The real part is taken
    once, at the end: ``Re(F_N Re(X F_d))`` is a different operator. No padding mask: padding
    tokens are mixed in.

    The result is the ``.real`` view of the complex128 transform, not a compact copy: it is not
    C-contiguous and keeps the complex buffer (twice the output's size) alive as long as it is.
    Copying it out costs a measurable share of the transform at some sizes, so the copy is left
    to the caller: ``np.ascontiguousarray(fnet(x))``.

    Examples
    --------
    >>> fnet([[1.0, 0.0], [0.0, 0.0]])  # a unit impulse: every output is cos(0) = 1
    array([[1., 1.],
           [1., 1.]])
    """
    x = _check_sequence(x, "x")
    return scipy.fft.fft2(x, axes=(-2, -1)).real  # Re(F_N X F_d)


def fnet_loop(x):
    """Loop twin of :func:`fnet`: the explicit double DFT sum of Eq. (10.1), one output entry at a time.

    Examples
    --------
    >>> x = np.random.default_rng(0).normal(size=(4, 3))
    >>> bool(np.allclose(fnet_loop(x), fnet(x)))
    True
    """
    x = _check_sequence(x, "x")
    N, d = x.shape[-2:]
    m = np.arange(N)[:, None]
    h = np.arange(d)[None, :]
    y = np.empty(x.shape)
    for n in range(N):
        for k in range(d):
            phase = 2.0 * np.pi * ((n * m % N) / N + (k * h % d) / d)  # 2π(nm/N + kh/d), reduced mod 1
            y[..., n, k] = np.sum(x * np.cos(phase), axis=(-2, -1))  # Re Σ x_mh e^{−iθ} for real x
    return y


def fnet_matrix(N, d=1):
    r"""The real ``(N·d, N·d)`` matrix that FNet applies to the flattened sequence.

    Implements Eq. (10.2) of the book: ``fnet(x).reshape(-1) == fnet_matrix(N, d) @ x.reshape(-1)``
    for ``x`` of shape (N, d) (row-major flattening, index ``n·d + k``).

    Parameters
    ----------
    N : int
        Sequence length, ≥ 1.
    d : int
        Hidden size, ≥ 1. With ``d = 1`` the matrix is the N × N cosine matrix ``Re F_N``.

    Returns
    -------
    M : ndarray, shape (N·d, N·d), float64, symmetric

    Notes
    -----
    With ``F = C − iS`` (``C_nm = cos 2πnm/N``, ``S_nm = sin 2πnm/N``) and ``Y = F_N X F_d``
    (both DFT matrices are symmetric),

    .. math::  \operatorname{Re} Y = C_N X C_d - S_N X S_d
               \quad\Longleftrightarrow\quad
               \operatorname{vec}_r(\operatorname{Re}Y) = (C_N\otimes C_d - S_N\otimes S_d)\operatorname{vec}_r X .

    The matrix is not shift-invariant (not Toeplitz), but it is *flat on what it keeps*. With
    ``P_even`` the orthogonal projector onto the point-even inputs, ``x_{−n,−k} = x_{n,k}``
    (indices mod N and d),

    .. math::  M^2 = N d\,P_{\text{even}},

    because ``G = F_N ⊗ F_d`` is symmetric with ``G Ḡ = N d I`` and ``G² = N d J`` (``J`` the index
    reversal ``(n, k) ↦ (−n, −k)``), so ``M = (G + Ḡ)/2`` has ``M² = N d (I + J)/2``. Every
    non-zero singular value of ``M`` is therefore ``√(N d)``: ``M/√(N d)`` is a symmetric
    orthogonal involution on the point-even subspace, and ``M`` annihilates the point-odd one
    (rank ``(N d + f)/2`` with ``f`` the fixed points of ``J``). The gain is flat, ``√(N d)``, on
    about half of the inputs and zero on the rest. The entries ``cos(2π nm/N)`` with ``nm mod N ∈ {N/4, 3N/4}`` are 0 in exact
    arithmetic and about 1e-16 here.

    Examples
    --------
    >>> x = np.random.default_rng(0).normal(size=(4, 3))
    >>> bool(np.allclose(fnet_matrix(4, 3) @ x.ravel(), fnet(x).ravel()))
    True
    """
    N = as_int(N, "N", 1)
    d = as_int(d, "d", 1)

    def cs(n):
        k = np.outer(np.arange(n), np.arange(n)) % n  # nm mod n: exact phases
        return np.cos(2.0 * np.pi * k / n), np.sin(2.0 * np.pi * k / n)

    CN, SN = cs(N)
    Cd, Sd = cs(d)
    return np.kron(CN, Cd) - np.kron(SN, Sd)  # C_N ⊗ C_d − S_N ⊗ S_d


# ---------------------------------------------------------------------------------------------
# gMLP spatial gating unit, Eqs. (10.3)-(10.4)
# ---------------------------------------------------------------------------------------------


def _check_sgu(x, w, b, causal):
    x = _check_sequence(x, "x")
    N, c = x.shape[-2:]
    if c % 2:
        raise ValueError(f"x: expected an even number of channels (split into z1, z2), got shape {x.shape}")
    w = as_real_array(w, "w")
    if w.shape != (N, N):
        raise ValueError(f"w: expected shape ({N}, {N}) (N from x), got shape {w.shape}")
    b = as_real_array(b, "b")
    if b.shape not in ((N,), ()):
        raise ValueError(f"b: expected shape ({N},) (N from x), got shape {b.shape}")
    if as_bool(causal, "causal"):
        w = np.tril(w)  # W_ij = 0 for j > i: no position sees the future
    return x, w, np.broadcast_to(b, (N,)), c // 2


def _layer_norm(z: np.ndarray) -> np.ndarray:
    """LayerNorm over the channel axis without the affine part (its init: γ = 1, β = 0)."""
    mu = z.mean(axis=-1, keepdims=True)
    var = ((z - mu) ** 2).mean(axis=-1, keepdims=True)  # biased variance, as torch
    return (z - mu) / np.sqrt(var + LN_EPS)


@guard_overflow()
def spatial_gating_unit(x, w, b, *, causal=False):
    r"""gMLP's spatial gating unit: ``s(Z) = Z_1 ⊙ (W · LayerNorm(Z_2) + b)``.

    Implements Eqs. (10.3)–(10.4) of the book (Liu et al. 2021, Eqs. 2–3; g-mlp-pytorch
    ``SpatialGatingUnit`` with ``heads=1``, identity activation).

    Parameters
    ----------
    x : array_like, shape (..., N, 2e)
        The sequence Z after the channel expansion; its first half Z_1 is the multiplicative
        bypass, the second half Z_2 the gate input (the lucidrains convention).
    w : array_like, shape (N, N)
        The spatial projection: ``W_ij`` weighs input position j for output position i.
    b : array_like, shape (N,) or scalar
        Per-position bias (initialized to 1).
    causal : bool
        Use ``tril(W)`` (autoregressive models).

    Returns
    -------
    s : ndarray, shape (..., N, e), float64

    Notes
    -----
    .. math::  g_i = \sum_{j} W_{ij}\,\mathrm{LN}(z_{2,j}) + b_i,\qquad s_i = z_{1,i}\odot g_i .

    LayerNorm normalizes each position over its e channels (ε = 1e-5, no affine parameters —
    their initial values). With ``W = 0, b = 1`` (the paper's initialization) ``s = Z_1``
    exactly. If ``W_ij = w_{i−j}`` is Toeplitz, ``W·LN(Z_2)`` is the convolution of ``LN(Z_2)``
    with the kernel w (causal if w vanishes at negative lags).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, w = rng.normal(size=(5, 4)), rng.normal(size=(5, 5))
    >>> spatial_gating_unit(x, w, np.ones(5), causal=True).shape  # the gate halves the channels
    (5, 2)
    """
    x, w, b, e = _check_sgu(x, w, b, causal)
    z1, z2 = x[..., :e], x[..., e:]  # split channels: Z = [Z_1, Z_2]
    gate = np.matmul(w, _layer_norm(z2)) + b[:, None]  # W · LN(Z_2) + b, mixing along the sequence
    return z1 * gate  # Z_1 ⊙ f_{W,b}(LN(Z_2))


@guard_overflow()
def spatial_gating_unit_loop(x, w, b, *, causal=False):
    """Loop twin of :func:`spatial_gating_unit`: per output position i, ``g_i = Σ_j W_ij LN(z_2j) + b_i`` (Eq. 10.4).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, w = rng.normal(size=(5, 4)), rng.normal(size=(5, 5))
    >>> bool(np.allclose(spatial_gating_unit_loop(x, w, np.ones(5)), spatial_gating_unit(x, w, np.ones(5))))
    True
    """
    x, w, b, e = _check_sgu(x, w, b, causal)
    N = x.shape[-2]
    out = np.empty(x.shape[:-1] + (e,))
    for idx in np.ndindex(*x.shape[:-2]):
        z = x[idx]
        ln = np.empty((N, e))
        for j in range(N):
            z2 = z[j, e:]
            mu = sum(z2) / e
            var = sum((z2 - mu) ** 2) / e
            ln[j] = (z2 - mu) / math.sqrt(var + LN_EPS)  # LayerNorm of position j
        for i in range(N):
            g = b[i] + sum(w[i, j] * ln[j] for j in range(N))  # g_i = Σ_j W_ij LN(z_2j) + b_i
            out[idx + (i,)] = z[i, :e] * g  # s_i = z_1i ⊙ g_i
    return out


# ---------------------------------------------------------------------------------------------
# Causal long convolution by FFT, Eqs. (10.5)-(10.6)
# ---------------------------------------------------------------------------------------------


def _check_conv(u, h):
    # not copied: the convolutions only read them (a long convolution's inputs are tens of MiB)
    u = _check_sequence(u, "u", real=False, copy=False)
    h = as_array(h, "h", copy=False)
    if h.ndim != 2 or h.shape[0] < 1 or h.shape[1] not in (1, u.shape[-1]):
        raise ValueError(f"h: expected shape (M, {u.shape[-1]}) or (M, 1) with M >= 1 (channels from u), got shape {h.shape}")
    return u, h


@guard_overflow()
def fft_conv(u, h):
    r"""Causal linear convolution of every channel with its own filter, by a zero-padded FFT.

    Implements Eq. (10.6) of the book (Oppenheim & Schafer §8.7; safari ``fftconv`` without its
    skip term; the CNN mode of S4, Eq. 11.9).

    Parameters
    ----------
    u : array_like, shape (..., N, d)
        Input sequences (real or complex).
    h : array_like, shape (M, d) or (M, 1)
        Per-channel causal filters ``h_0 … h_{M−1}`` (a last axis of 1 is shared by all channels).
        Typically M = N (a *long* convolution).

    Returns
    -------
    y : ndarray, shape (..., N, d)
        ``y_t = Σ_{j=0}^{min(t, M−1)} h_j u_{t−j}``; float64, or complex128 if u or h is complex.

    Notes
    -----
    The DFT turns *circular* convolution into a product. Zero-padding both sequences to
    ``n ≥ N + M − 1`` makes the circular convolution of length n equal the linear one on the
    first N outputs (nothing wraps around), so

    .. math::  y = \big[\mathcal F_n^{-1}\big(\mathcal F_n(u)\odot\mathcal F_n(h)\big)\big]_{0:N},

    O((N + M) log(N + M)) per channel instead of O(N M). ``n`` is ``scipy.fft.next_fast_len``;
    real inputs use ``rfft``/``irfft`` with explicit ``n`` (NumPy's, which pad each channel as they
    transform it), each channel's samples copied to a contiguous row first in cache-sized tiles. The
    channels are transformed in groups of 16 (more per group when the workspace budget of
    :mod:`refimpl._blocking` holds their spectra: short sequences), so that each thread holds the
    two spectra and the inverse transform of one group, about 3 · 16 · n numbers, instead of
    those of every channel; each channel's transforms are the same either way. The groups are
    taken by threads one at a time (:data:`refimpl._blocking.THREADS`; NumPy's FFTs release the
    GIL): the groups depend on the shapes only, so the output is bitwise the same with any number
    of threads. The output at t depends on ``u_s``, s > t, only through round-off (≈ 1e-16
    relative, not exactly 0).

    Accuracy: the FFT route is accurate *norm-wise*, per channel

    .. math::  \lVert\hat y - y\rVert_2 \lesssim c\,\varepsilon\log_2 n\,
               \big(\lVert u\rVert_2\max_k|\hat h_k| + \max_k|\hat u_k|\,\lVert h\rVert_2\big)
               \le c\,\varepsilon\log_2 n\,\big(\lVert u\rVert_2\lVert h\rVert_1 + \lVert u\rVert_1\lVert h\rVert_2\big)

    (ε the float64 unit round-off, ``û``, ``ĥ`` the DFTs zero-padded to n; the error of each
    length-n transform is ≲ c·ε·log₂ n times the norm of its result: Higham 2002, §24.1, Theorem
    24.2, proved for radix-2 FFTs; for the mixed-radix n of ``next_fast_len``, c is measured), not
    entry-wise. For zero-mean data this is of the order ε·log₂ n·‖u‖‖h‖; for non-negative data
    (ĥ₀ = ‖h‖₁, of the order √N·‖h‖₂) it is about √N times that, and where the convolution cancels (a
    difference filter on a smooth signal) the error can exceed ε·max|y| by orders of magnitude (how
    far depends on the data). Where the exact output is small or zero (before the first non-zero
    input, the tail of a strongly decaying filter) the relative error of that output is large or
    unbounded. Chapter 10, §10.3 measures the error against exact integer convolutions up to
    N = 65 536 (zero-mean, non-negative, cancelling data, a short filter, n = 6000): below 0.2 times
    the first bound with c = 1. Compare an FFT-based kernel against it with this norm-wise bound and
    tol = c = 1, ε the unit round-off of the kernel's precision (a float32 FFT convolution stays below
    0.1 of it there); a kernel that sums in the time domain with the direct sum's own bound,
    |ŷ_t − y_t| ≤ γ_M (|h| * |u|)_t, γ_M = Mε/(1 − Mε). ``refimpl.oracle``'s float64 rule
    max|ŷ − y|/max|y| ≤ 1e-10 leaves ~10⁶ ε, enough for ordinary data; for strongly cancelling data or
    tight checks set the case's ``atol`` from this bound.

    Examples
    --------
    >>> u, h = np.array([[1.0], [0.0], [0.0], [0.0]]), np.array([[1.0], [0.5], [0.25], [0.0]])
    >>> (fft_conv(u, h)[:, 0].round(12) + 0.0).tolist()  # an impulse in, the filter out
    [1.0, 0.5, 0.25, 0.0]
    """
    u, h = _check_conv(u, h)
    N, M = u.shape[-2], h.shape[0]
    n = scipy.fft.next_fast_len(N + M - 1, real=True)  # n ≥ N + M − 1: no wrap-around
    real = not (np.iscomplexobj(u) or np.iscomplexobj(h))
    # NumPy's transforms, not SciPy's (the same pocketfft code): NumPy pads each row to n as it transforms it,
    # SciPy first copies the whole zero-padded block (16 channels of N = 65536: 11.4 against 18.6 ms)
    fwd, inv = (np.fft.rfft, np.fft.irfft) if real else (np.fft.fft, np.fft.ifft)
    d = u.shape[-1]
    y = np.empty(u.shape, dtype=np.result_type(u, h))
    group = per_block(math.prod(u.shape[:-2]) * n, minimum=16)  # channels per group: a spectrum is ~n numbers
    Hf = fwd(h.T, n=n, axis=-1) if h.shape[1] == 1 else None  # one filter shared by all channels

    def rows(x):  # (..., T, g) -> a C-ordered (..., g, T) copy: time as the last axis of each transform
        return _blocking.copy_transposed(x, np.empty(x.shape[:-2] + (x.shape[-1], x.shape[-2]), dtype=x.dtype))

    def run(ch):  # one group of channels: its transforms are the same whichever thread runs it
        Uf = fwd(rows(u[..., ch]), n=n, axis=-1)  # F_n(u), zero-padded, (..., g, n')
        Uf *= Hf if Hf is not None else fwd(rows(h[:, ch]), n=n, axis=-1)  # ⊙ F_n(h), zero-padded, (g, n')
        _blocking.copy_transposed(inv(Uf, n=n, axis=-1)[..., :N], y[..., ch])  # F^{-1}(F u ⊙ F h), first N samples

    _in_blocks(run, d, group, u.size * max(1, int(math.log2(n))))  # the groups side by side in threads
    return y


def fft_conv_loop(u, h):
    """Loop twin of :func:`fft_conv`: the direct sum ``y_t = Σ_{j ≤ t} h_j u_{t−j}`` one time step at a time (Eq. 10.5).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> u, h = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
    >>> bool(np.allclose(fft_conv_loop(u, h), fft_conv(u, h)))
    True
    """
    u, h = _check_conv(u, h)
    N, M = u.shape[-2], h.shape[0]
    y = np.zeros(u.shape, dtype=np.result_type(u, h))
    for t in range(N):
        k = min(t, M - 1)  # taps j = 0 … k
        past = u[..., t - k : t + 1, :][..., ::-1, :]  # u_t, u_{t−1}, …, u_{t−k}
        y[..., t, :] = np.sum(h[: k + 1] * past, axis=-2)  # y_t = Σ_j h_j u_{t−j}
    return y


def causal_toeplitz(h, N=None):
    r"""The lower-triangular Toeplitz matrices ``T_ij = h_{i−j}`` (0 for j > i) of causal filters.

    Implements Eq. (10.5) of the book in matrix form: ``fft_conv(u, h)[..., :, c] == T[c] @ u[..., :, c]``.

    Parameters
    ----------
    h : array_like, shape (M, d)
    N : int, optional
        Matrix size (default M); taps beyond M are zero.

    Returns
    -------
    T : ndarray, shape (d, N, N)

    Examples
    --------
    >>> causal_toeplitz(np.array([[1.0], [0.5], [0.25]]), 3)[0].tolist()  # channel 0
    [[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.25, 0.5, 1.0]]
    """
    h = as_array(h, "h")
    if h.ndim != 2 or h.shape[0] < 1:
        raise ValueError(f"h: expected shape (M, d) with M >= 1, got shape {h.shape}")
    N = h.shape[0] if N is None else as_int(N, "N", 1)
    lag = np.subtract.outer(np.arange(N), np.arange(N))  # i − j
    padded = np.concatenate([h, np.zeros((max(N - h.shape[0], 0), h.shape[1]), dtype=h.dtype)])
    T = np.where(lag >= 0, padded[np.clip(lag, 0, N - 1)].transpose(2, 0, 1), 0.0)  # h_{i−j}, i ≥ j
    return T.astype(h.dtype, copy=False)


# ---------------------------------------------------------------------------------------------
# Hyena: implicit filters, Eq. (10.7)
# ---------------------------------------------------------------------------------------------


def _given_ffn(weights, emb_dim: int, width: int, depth: int, out: int):
    """Validate given FFN weights [W_1, b_1, …, W_depth, b_depth, W_out]; return (layers, w_out)."""
    if isinstance(weights, (str, bytes)) or not hasattr(weights, "__len__"):
        raise TypeError(f"weights: expected a sequence [W_1, b_1, …, W_{depth}, b_{depth}, W_out], got {type(weights).__name__}")
    if len(weights) != 2 * depth + 1:
        raise ValueError(f"weights: expected {2 * depth + 1} arrays (W and b for each of depth = {depth} layers, then W_out), got {len(weights)}")
    sizes = [emb_dim] + [width] * depth
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        W = as_real_array(weights[2 * i], f"weights[{2 * i}]", ndim=2)
        b = as_real_array(weights[2 * i + 1], f"weights[{2 * i + 1}]", ndim=1)
        if W.shape != (fan_in, fan_out):
            raise ValueError(f"weights[{2 * i}]: expected W_{i + 1} of shape ({fan_in}, {fan_out}) (torch: Linear.weight.T), got shape {W.shape}")
        if b.shape != (fan_out,):
            raise ValueError(f"weights[{2 * i + 1}]: expected b_{i + 1} of shape ({fan_out},), got shape {b.shape}")
        layers.append((W, b))
    w_out = as_real_array(weights[-1], f"weights[{2 * depth}]", ndim=2)
    if w_out.shape != (width, out):
        raise ValueError(f"weights[{2 * depth}]: expected W_out of shape ({width}, {out}) (n_filters·d outputs), got shape {w_out.shape}")
    return layers, w_out


def _as_freq(freq, width: int):
    """A positive scalar (returned as float) or a finite vector of shape (width,) (one value per hidden unit)."""
    if np.ndim(freq) == 0:
        return as_positive_scalar(freq, "freq")
    freq = as_real_array(freq, "freq", ndim=1)
    if freq.shape != (width,):
        raise ValueError(f"freq: expected a positive scalar or shape ({width},) (one value per hidden unit), got shape {freq.shape}")
    return freq


def _hyena_filter_setup(L, d, n_filters, emb_dim, width, depth, freq, fast_decay_pct, slow_decay_pct, target, shift, rng,
                        weights=None):
    """Validated arguments and the FFN weights (given, or drawn in a fixed order from ``rng``)."""
    L = as_int(L, "L", 1)
    d = as_int(d, "d", 1)
    n_filters = as_int(n_filters, "n_filters", 1)
    emb_dim = as_int(emb_dim, "emb_dim", 1)
    if emb_dim < 3 or emb_dim % 2 == 0:
        raise ValueError(f"emb_dim: expected an odd integer >= 3 (t plus (emb_dim−1)/2 complex bands), got {emb_dim}")
    width = as_int(width, "width", 1)
    depth = as_int(depth, "depth", 1)
    freq = _as_freq(freq, width)
    fast = as_positive_scalar(fast_decay_pct, "fast_decay_pct")
    slow = as_positive_scalar(slow_decay_pct, "slow_decay_pct")
    target = as_positive_scalar(target, "target")
    if target >= 1.0:
        raise ValueError(f"target: expected a value in (0, 1) (the window's value after the decay), got {target!r}")
    shift = float(as_real_array(shift, "shift", ndim=0))
    out = n_filters * d
    if weights is not None:
        if rng is not None:
            raise ValueError("rng: expected None when weights are given (nothing is drawn)")
        layers, w_out = _given_ffn(weights, emb_dim, width, depth, out)
    else:
        rng = as_rng(rng)
        sizes = [emb_dim] + [width] * depth
        layers = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):  # Linear(fan_in, fan_out) → Sin
            bound = 1.0 / math.sqrt(fan_in)  # torch.nn.Linear's default U(−1/√fan_in, 1/√fan_in)
            layers.append((rng.uniform(-bound, bound, (fan_in, fan_out)), rng.uniform(-bound, bound, fan_out)))
        w_out = rng.uniform(-1.0 / math.sqrt(width), 1.0 / math.sqrt(width), (width, out))  # Linear(width, n·d, bias=False)
    deltas = np.abs(np.linspace(math.log(target) / slow, math.log(target) / fast, out))  # decay rates per channel
    return L, d, n_filters, emb_dim, freq, shift, layers, w_out, deltas


def hyena_filter(L, d, *, n_filters=1, emb_dim=3, width=16, depth=3, freq=1.0, fast_decay_pct=0.3,
                 slow_decay_pct=1.5, target=1e-2, shift=0.0, rng=None, weights=None):
    r"""Hyena's implicit long filters: a sine FFN of positional features times an exponential-decay window.

    Implements Eq. (10.7) of the book (Poli et al. 2023, §3.3, Eq. 7; safari ``HyenaFilter``,
    ``PositionalEmbedding``, ``Sin``, ``ExponentialModulation``).

    Parameters
    ----------
    L : int
        Filter length (= sequence length), ≥ 1.
    d : int
        Channels per filter, ≥ 1.
    n_filters : int
        Number of filters (the Hyena order N: one per long convolution).
    emb_dim : int
        Positional features: ``t`` and ``(emb_dim − 1)/2`` complex exponentials; odd, ≥ 3.
    width, depth : int
        FFN hidden width and number of ``Linear → Sin`` layers (code: ``order``, ``1 + num_inner_mlps``;
        defaults as safari's ``HyenaFilter``: 16 and 3).
    freq : float or array_like, shape (width,)
        Frequencies of the sine activations ``sin(freq ⊙ a)``, the same for every ``Linear → Sin``
        layer: a positive scalar (the code's initial value, 1), or one value per hidden unit. In
        the code a single ``Sin`` module, whose ``freq`` (1 × width) is trainable, is shared by all
        sine layers; a trained ``Sin.freq`` is given here as ``freq = sin.freq[0]``.
    fast_decay_pct, slow_decay_pct, target : float
        The window of channel c decays to ``target`` after a fraction between ``fast_decay_pct``
        and ``slow_decay_pct`` of the sequence (code defaults 0.3, 1.5, 1e-2).
    shift : float
        Added to the window (code default 0).
    rng : numpy.random.Generator, int or None
        Source of the FFN weights (torch ``nn.Linear`` default initialization). Must be None
        when ``weights`` is given.
    weights : sequence of arrays, optional
        Given FFN weights instead of drawn ones, in the order of the network:
        ``[W_1, b_1, …, W_depth, b_depth, W_out]`` with ``W_1`` (emb_dim, width), the inner
        ``W_i`` (width, width), ``b_i`` (width,) and ``W_out`` (width, n_filters·d); each layer
        computes ``sin(freq · (a @ W_i + b_i))``. From safari's ``HyenaFilter.implicit_filter``
        (a ``Sequential`` of ``Linear``/``Sin``): ``W_i = linear.weight.T``, ``b_i = linear.bias``,
        ``W_out = last_linear.weight.T`` and ``freq = sin.freq[0]``.

    Returns
    -------
    h : ndarray, shape (n_filters, L, d), float64
        ``h[n]`` is the filter of the (n+1)-th long convolution.

    Notes
    -----
    With ``t_ℓ = ℓ/(L−1)`` (``linspace(0, 1, L)``), ``ω_ℓ = 2πℓ/L`` and band frequencies
    ``f_k = linspace(1e-4, B − 1, B)``, B = (emb_dim − 1)/2:

    .. math::  h_\ell = \big(e^{-|\alpha_c| t_\ell} + \text{shift}\big)\cdot
               \big(W_{out}\,\sin(\varphi\odot(\cdots\sin(\varphi\odot(W_1\,\mathrm{PE}_\ell + b_1))\cdots))\big)_c,\qquad
               \mathrm{PE}_\ell = [t_\ell, \cos f_k\omega_\ell, -\sin f_k\omega_\ell],

    with ``φ = freq`` (the same in every sine layer) and decay rates ``|α_c|`` spread linearly over the ``n_filters·d`` output channels from
    ``−log(target)/slow_decay_pct`` to ``−log(target)/fast_decay_pct``. Channel ``c = n·d + j``
    of the FFN output is channel j of filter n (the code's ``rearrange(k, 'l (o d) -> o d l')``). The filter
    has L free values but only the FFN's O(emb_dim·width + depth·width² + width·n·d) weights;
    the features and the decay rates are computed, not learned. Its decay is set per filter
    length (t runs over [0, 1] whatever L is; L plays the role of the code's ``seq_len`` =
    ``l_max``). safari's ``standalone_hyena.py`` differs: it trains the positional features
    themselves (``z``, 1 × l_max × emb_dim; here they are computed), it trains ``Sin.freq`` (given
    here as the vector ``freq``) and a per-channel bias (the skip of its ``fftconv``; here the
    ``skip`` of :func:`hyena_recurrence`), and a sequence shorter than l_max uses the first L
    rows of the features and time stamps of the l_max grid, so there the decay is set per l_max.
    The reference filter of a model built with ``l_max`` for a sequence of length L < l_max is
    therefore ``hyena_filter(l_max, …)[:, :L]``, not ``hyena_filter(L, …)`` (chapter 10, §10.4,
    measures the difference).

    Examples
    --------
    >>> h = hyena_filter(32, 4, n_filters=2, rng=0)
    >>> h.shape  # (n_filters, L, d)
    (2, 32, 4)
    """
    L, d, n_filters, emb_dim, freq, shift, layers, w_out, deltas = _hyena_filter_setup(
        L, d, n_filters, emb_dim, width, depth, freq, fast_decay_pct, slow_decay_pct, target, shift, rng, weights
    )
    t = np.linspace(0.0, 1.0, L)[:, None]  # t_ℓ ∈ [0, 1], (L, 1)
    bands = (emb_dim - 1) // 2
    f = np.linspace(1e-4, bands - 1, bands)[None, :]  # band frequencies f_k
    w = 2.0 * np.pi * np.arange(L)[:, None] / L  # ω_ℓ = 2πℓ/L
    a = np.concatenate([t, np.cos(f * w), -np.sin(f * w)], axis=1)  # PE_ℓ = [t, Re e^{−ifω}, Im e^{−ifω}]
    for W, bias in layers:
        a = np.sin(freq * (a @ W + bias))  # Linear → Sin (the same freq in every layer, as the code's one Sin module)
    h = a @ w_out  # (L, n·d)
    h = h * (np.exp(-t * deltas) + shift)  # exponential-decay window
    return h.reshape(L, n_filters, d).transpose(1, 0, 2)  # channels (o d), c = o·d + j, as the code's 'l (o d) -> o d l'


def hyena_filter_loop(L, d, *, n_filters=1, emb_dim=3, width=16, depth=3, freq=1.0, fast_decay_pct=0.3,
                      slow_decay_pct=1.5, target=1e-2, shift=0.0, rng=None, weights=None):
    """Loop twin of :func:`hyena_filter`: Eq. (10.7) position by position, neuron by neuron (same weights from ``rng`` or ``weights``).

    Examples
    --------
    >>> bool(np.allclose(hyena_filter_loop(16, 2, rng=0), hyena_filter(16, 2, rng=0)))
    True
    """
    L, d, n_filters, emb_dim, freq, shift, layers, w_out, deltas = _hyena_filter_setup(
        L, d, n_filters, emb_dim, width, depth, freq, fast_decay_pct, slow_decay_pct, target, shift, rng, weights
    )
    fr = np.broadcast_to(freq, (layers[0][0].shape[1],))  # one frequency per hidden unit, shared by the layers
    bands = (emb_dim - 1) // 2
    fs = [1e-4 + k * (bands - 1 - 1e-4) / (bands - 1) for k in range(bands)] if bands > 1 else [1e-4]
    h = np.empty((n_filters, L, d))
    for ell in range(L):
        t = ell / (L - 1) if L > 1 else 0.0
        omega = 2.0 * math.pi * ell / L
        a = [t] + [math.cos(f * omega) for f in fs] + [-math.sin(f * omega) for f in fs]  # PE_ℓ
        for W, bias in layers:
            a = [math.sin(fr[j] * (sum(a[i] * W[i, j] for i in range(len(a))) + bias[j])) for j in range(W.shape[1])]
        for c in range(n_filters * d):
            value = sum(a[i] * w_out[i, c] for i in range(len(a)))  # (W_out a)_c
            h[c // d, ell, c % d] = value * (math.exp(-t * deltas[c]) + shift)  # × window
    return h


# ---------------------------------------------------------------------------------------------
# The Hyena operator, Def. 3.1: Eqs. (10.8)-(10.10)
# ---------------------------------------------------------------------------------------------


def _check_recurrence(v, x, filters, skip):
    v = _check_sequence(v, "v")
    L, D = v.shape[-2:]
    filters = as_real_array(filters, "filters")
    if filters.ndim != 3 or filters.shape[0] < 1 or filters.shape[1] < 1 or filters.shape[2] not in (1, D):
        raise ValueError(f"filters: expected shape (order, M, {D}) with order, M >= 1 (D from v), got shape {filters.shape}")
    order = filters.shape[0]
    x = as_real_array(x, "x")
    ok = x.ndim >= 3 and x.shape[0] == order and x.shape[-2] == L
    if ok:
        try:
            ok = np.broadcast_shapes(x.shape[1:], v.shape) == v.shape
        except ValueError:
            ok = False
    if not ok:
        raise ValueError(f"x: expected shape ({order}, ..., {L}, {D}) (order from filters, batch broadcastable to v), got shape {x.shape}")
    if skip is None:
        skip = np.zeros((order, 1))
    skip = as_real_array(skip, "skip")
    if skip.shape not in ((order, D), (order, 1)):
        raise ValueError(f"skip: expected shape ({order}, {D}), got shape {skip.shape}")
    return v, x, filters, skip


@guard_overflow()
def hyena_recurrence(v, x, filters, *, skip=None):
    r"""The Hyena recurrence of order N on given projections: ``z^{n+1} = x^n ⊙ (h^n * z^n)``, ``y = z^{N+1}``.

    Implements Eq. (10.8) of the book (Poli et al. 2023, Def. 3.1).

    Parameters
    ----------
    v : array_like, shape (..., L, D)
        The value projection, ``z^1 = v``.
    x : array_like, shape (order, ..., L, D)
        The gates x^1, …, x^N (batch axes broadcast to v's).
    filters : array_like, shape (order, M, D) or (order, M, 1)
        The long filters h^1, …, h^N (M ≤ L typical: M = L).
    skip : array_like, shape (order, D), optional
        Per-channel skip added to each convolution, ``h^n * z + skip_n z`` (the reference code's
        ``fftconv(u, k, D)``); equivalently ``h^n_0 += skip_n``.

    Returns
    -------
    y : ndarray, shape (..., L, D)

    Notes
    -----
    .. math::  z^1_t = v_t,\qquad z^{n+1}_t = x^n_t\,(h^n * z^n)_t \;(n = 1, …, N),\qquad y_t = z^{N+1}_t .

    Each convolution is :func:`fft_conv` (zero-padded, causal). For fixed gates the map
    ``v ↦ y`` is linear with the matrix of :func:`hyena_matrix`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> v, x, h = rng.normal(size=(8, 2)), rng.normal(size=(2, 8, 2)), rng.normal(size=(2, 8, 2))
    >>> y = hyena_recurrence(v, x, h)
    >>> bool(np.allclose(y, x[1] * fft_conv(x[0] * fft_conv(v, h[0]), h[1])))  # z² = x¹ ⊙ (h¹ ∗ v), y = x² ⊙ (h² ∗ z²)
    True
    """
    v, x, filters, skip = _check_recurrence(v, x, filters, skip)
    z = v
    for n in range(filters.shape[0]):
        z = x[n] * (fft_conv(z, filters[n]) + skip[n] * z)  # z^{n+1} = x^n ⊙ (h^n * z^n)
    return z


@guard_overflow()
def hyena_recurrence_loop(v, x, filters, *, skip=None):
    """Loop twin of :func:`hyena_recurrence`: direct convolution sums and gates, one step at a time (Eq. 10.8).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> v, x, h = rng.normal(size=(8, 2)), rng.normal(size=(2, 8, 2)), rng.normal(size=(2, 8, 2))
    >>> bool(np.allclose(hyena_recurrence_loop(v, x, h), hyena_recurrence(v, x, h)))
    True
    """
    v, x, filters, skip = _check_recurrence(v, x, filters, skip)
    L, D = v.shape[-2:]
    batch = v.shape[:-2]
    x = x.reshape((x.shape[0],) + (1,) * (v.ndim + 1 - x.ndim) + x.shape[1:])  # gates' batch axes aligned with v's
    xb = np.broadcast_to(x, (x.shape[0],) + v.shape)
    h = np.broadcast_to(filters, filters.shape[:2] + (D,))
    s = np.broadcast_to(skip, (skip.shape[0], D))
    M = h.shape[1]
    y = np.empty(v.shape)
    for idx in np.ndindex(*batch):
        for c in range(D):
            z = [v[idx + (t, c)] for t in range(L)]  # z^1 = v
            for n in range(h.shape[0]):
                conv = [sum(h[n, j, c] * z[t - j] for j in range(min(t, M - 1) + 1)) for t in range(L)]  # (h^n * z^n)_t
                z = [xb[(n,) + idx + (t, c)] * (conv[t] + s[n, c] * z[t]) for t in range(L)]  # z^{n+1}_t
            y[idx + (slice(None), c)] = z
    return y


def _check_projections(u, w_in, filters, b_in, short_filter, short_bias):
    filters = as_real_array(filters, "filters")
    if filters.ndim != 3 or filters.shape[0] < 1:
        raise ValueError(f"filters: expected shape (order, M, D) with order >= 1, got shape {filters.shape}")
    u = _check_sequence(u, "u")
    D, order = u.shape[-1], filters.shape[0]
    P = (order + 1) * D
    w_in = as_real_array(w_in, "w_in")
    if w_in.shape != (D, P):
        raise ValueError(
            f"w_in: expected shape ({D}, {P}) = (D, (order+1)·D) with D from u and order = {order} from filters, "
            f"got shape {w_in.shape}"
        )
    b_in = np.zeros(P) if b_in is None else as_real_array(b_in, "b_in")
    if b_in.shape != (P,):
        raise ValueError(f"b_in: expected shape ({P},), got shape {b_in.shape}")
    if short_filter is not None:
        short_filter = as_real_array(short_filter, "short_filter")
        if short_filter.ndim != 2 or short_filter.shape[0] < 1 or short_filter.shape[1] != P:
            raise ValueError(f"short_filter: expected shape (K, {P}) with K >= 1, got shape {short_filter.shape}")
    short_bias = np.zeros(P) if short_bias is None else as_real_array(short_bias, "short_bias")
    if short_bias.shape != (P,):
        raise ValueError(f"short_bias: expected shape ({P},), got shape {short_bias.shape}")
    return u, w_in, filters, b_in, short_filter, short_bias


def _split_projections(p: np.ndarray, order: int, D: int):
    """(…, L, (order+1)·D) → v (…, L, D) and x (order, …, L, D), in the order (v, x^1, …, x^N)."""
    parts = np.moveaxis(p.reshape(p.shape[:-1] + (order + 1, D)), -2, 0)
    return parts[0], parts[1:]


@guard_overflow()
def hyena_operator(u, w_in, filters, *, b_in=None, short_filter=None, short_bias=None, skip=None, return_projections=False):
    r"""The Hyena operator of order N on an input sequence: projections, then Def. 3.1.

    Implements Eqs. (10.8)–(10.9) of the book (Poli et al. 2023, §3.1–3.2, Def. 3.1).

    Parameters
    ----------
    u : array_like, shape (..., L, D)
        Input sequence.
    w_in : array_like, shape (D, (N+1)·D)
        Dense input projection; its output is split into (v, x^1, …, x^N), D channels each.
    filters : array_like, shape (N, M, D)
        Long filters h^1, …, h^N (e.g. from :func:`hyena_filter`); the order N is ``len(filters)``.
    b_in : array_like, shape ((N+1)·D,), optional
        Bias of the input projection.
    short_filter : array_like, shape (K, (N+1)·D), optional
        Short depthwise causal filter applied to every projection channel, ``short_filter[j]`` the
        tap at lag j (K = 3 in the code, whose ``Conv1d`` weight is this flipped:
        ``short_filter = weight[:, 0, ::-1].T``).
    short_bias : array_like, shape ((N+1)·D,), optional
        Bias of the short convolution.
    skip : array_like, shape (N, D), optional
        See :func:`hyena_recurrence`.
    return_projections : bool
        Also return ``(v, x)``.

    Returns
    -------
    y : ndarray, shape (..., L, D)
    v, x : ndarray, shapes (..., L, D) and (N, ..., L, D)
        Only if ``return_projections``.

    Notes
    -----
    ``p = short_filter * (u W_in + b_in) + short_bias`` (causal), ``(v, x^1, …, x^N) = split(p)``,
    then ``y = H(u) v`` with ``H(u) = D_{x^N} S_{h^N} ⋯ D_{x^1} S_{h^1}`` (Eq. 10.9). Every step
    is causal, so ``y_t`` depends on ``u_{0…t}`` only. No output projection (a plain per-position
    linear map).

    **Mapping to the reference code** (safari ``HyenaOperator``, ``order = N``): the code splits
    its projection into (x_0, …, x_{N−1}, v), runs only N − 1 long convolutions,
    ``for x_i in reversed(x[1:]): v = fftconv(v * x_i, k, D)``, and ends with ``y = v * x_0``:
    it gates *before* each convolution. That is this operator with ``filters[0] = δ`` (the
    identity convolution), gates ``x^n = x_{N−n}``, long filters ``h^{n+1} = k_{n−1}`` and
    ``skip = [0, D_0, …, D_{N−2}]`` (Eq. (10.10); tested). Its projection chunks, reordered as
    (v, x_{N−1}, …, x_0), give ``w_in``, ``b_in``, ``short_filter`` and ``short_bias``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> u, w_in, h = rng.normal(size=(8, 2)), rng.normal(size=(2, 6)), rng.normal(size=(2, 8, 2))
    >>> y, v, x = hyena_operator(u, w_in, h, return_projections=True)
    >>> y.shape, v.shape, x.shape
    ((8, 2), (8, 2), (2, 8, 2))
    """
    u, w_in, filters, b_in, short_filter, short_bias = _check_projections(u, w_in, filters, b_in, short_filter, short_bias)
    return_projections = as_bool(return_projections, "return_projections")
    p = u @ w_in + b_in  # dense projection, (…, L, (N+1)·D)
    if short_filter is not None:
        p = fft_conv(p, short_filter)  # short depthwise causal convolution
    v, x = _split_projections(p + short_bias, filters.shape[0], u.shape[-1])
    y = hyena_recurrence(v, x, filters, skip=skip)  # y = H(u) v
    return (y, v, x) if return_projections else y


@guard_overflow()
def hyena_operator_loop(u, w_in, filters, *, b_in=None, short_filter=None, short_bias=None, skip=None, return_projections=False):
    """Loop twin of :func:`hyena_operator`: projections by explicit sums per step, then :func:`hyena_recurrence_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> u, w_in, h = rng.normal(size=(8, 2)), rng.normal(size=(2, 6)), rng.normal(size=(2, 8, 2))
    >>> bool(np.allclose(hyena_operator_loop(u, w_in, h), hyena_operator(u, w_in, h)))
    True
    """
    u, w_in, filters, b_in, short_filter, short_bias = _check_projections(u, w_in, filters, b_in, short_filter, short_bias)
    return_projections = as_bool(return_projections, "return_projections")
    L, D = u.shape[-2:]
    P = w_in.shape[1]
    p = np.empty(u.shape[:-1] + (P,))
    for idx in np.ndindex(*u.shape[:-2]):
        for t in range(L):
            for c in range(P):
                p[idx + (t, c)] = b_in[c] + sum(u[idx + (t, i)] * w_in[i, c] for i in range(D))  # (u W_in + b_in)_tc
    if short_filter is not None:
        p = fft_conv_loop(p, short_filter)
    v, x = _split_projections(p + short_bias, filters.shape[0], D)
    y = hyena_recurrence_loop(v, x, filters, skip=skip)
    return (y, v, x) if return_projections else y


@guard_overflow()
def hyena_matrix(x, filters, *, skip=None):
    r"""The Hyena operator as a data-controlled matrix: ``H(u) = D_{x^N} S_{h^N} ⋯ D_{x^1} S_{h^1}`` per channel.

    Implements Eq. (10.9) of the book (Poli et al. 2023, Def. 3.1, matrix form):
    ``hyena_recurrence(v, x, filters)[..., :, c] == hyena_matrix(x, filters)[..., c, :, :] @ v[..., :, c]``.

    Parameters
    ----------
    x : array_like, shape (order, ..., L, D)
        The gates.
    filters : array_like, shape (order, M, D) or (order, M, 1)
    skip : array_like, shape (order, D), optional

    Returns
    -------
    H : ndarray, shape (..., D, L, L), float64, lower triangular

    Notes
    -----
    ``D_x = diag(x)`` and ``S_h`` is the causal Toeplitz matrix ``(S_h)_{ij} = h_{i−j}``
    (:func:`causal_toeplitz`, plus ``skip·I``). A product of lower-triangular matrices is lower
    triangular: the operator is causal. Unlike a convolution it is not Toeplitz — the gates
    make it data-dependent, like an attention matrix. O(order · D · L³) work.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> v, x, h = rng.normal(size=(8, 2)), rng.normal(size=(2, 8, 2)), rng.normal(size=(2, 8, 2))
    >>> H = hyena_matrix(x, h)
    >>> H.shape, bool(np.allclose(H[0] @ v[:, 0], hyena_recurrence(v, x, h)[:, 0]))  # channel 0: y = H(u) v
    ((2, 8, 8), True)
    """
    x = as_real_array(x, "x")
    if x.ndim < 3:
        raise ValueError(f"x: expected shape (order, ..., L, D), got shape {x.shape}")
    v_like = np.zeros(x.shape[1:])
    v_like, x, filters, skip = _check_recurrence(v_like, x, filters, skip)
    L, D = x.shape[-2:]
    h = np.broadcast_to(filters, filters.shape[:2] + (D,))
    s = np.broadcast_to(skip, (skip.shape[0], D))
    H = np.broadcast_to(np.eye(L), x.shape[1:-2] + (D, L, L))
    for n in range(h.shape[0]):
        S = causal_toeplitz(h[n], L) + s[n][:, None, None] * np.eye(L)  # S_{h^n} (+ skip I), (D, L, L)
        gate = np.swapaxes(x[n], -1, -2)[..., :, :, None]  # diag(x^n) as a column scale, (…, D, L, 1)
        H = gate * (S @ H)  # H ← D_{x^n} S_{h^n} H
    return H
