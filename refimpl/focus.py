r"""The Focus layer: adaptive second-order IIR filters from a hypernetwork, before chunked attention.

Chapter 14 of the book (``notebooks/14-focus.ipynb``) derives every formula here. Focus (Lutati,
Zimerman & Wolf 2023) splits a sequence into ``n_bins`` non-overlapping time bins of ``R`` samples
and filters each (bin, channel) with a bank of all-pole biquads whose two coefficients come from a
hypernetwork that has only seen *earlier* bins:

.. math::  H_{r,d}(z) = \sum_{\ell=1}^{F} \frac{1}{1 + θ'_{r,d,\ell,0}\,z^{-1} + θ'_{r,d,\ell,1}\,z^{-2}}  \tag{14.3}

The filtered sequence ``x_f`` supplies the keys and values of a causal attention that runs inside
chunks of ``M`` samples, the raw ``x`` supplies the queries, and MEGA's reset/update gates mix the
result back into ``x`` (Eqs. 9–14). Equation numbers without a chapter prefix (``Eq. 5``) are
those of Lutati et al. (2023); ``Eq. (14.n)`` are the book's.

The paper filters "by multiplying the FFT of the bin with the *conjugate* frequency response"
(Eqs. 4–8). That is not causal inside a bin (chapter 14, §14.4), so three variants are implemented:

``"literal"``           per-bin FFT × conj(H), IFFT: the paper as written; the circular
                        cross-correlation with the periodized response, anti-causal within a bin.
``"causal-circular"``   per-bin FFT × H, IFFT: the periodic steady state of the causal filter;
                        causal up to the circular wrap-around inside a bin.
``"causal-recursive"``  the difference equation ``u[n] = x[n] − θ₀u[n−1] − θ₁u[n−2]`` per bin from
                        rest (Eq. 32): exactly causal; equals ``scipy.signal.lfilter`` per bin.

Choices where the paper is silent (chapter 14, §14.8 and §14.13), each an argument or documented:
the bin-0 coefficients (``first_bin``: ``"zero"`` → ``H ≡ 1`` per branch, or ``"mlp-zero"`` →
the MLP applied to a zero embedding); ``n_fft ≥ R`` with zero padding, keeping the first ``R``
outputs; zero initial state in every bin (no state carried across bins); L, the bins, the pool
windows and the chunks must tile L exactly (``ValueError`` otherwise: pad explicitly, e.g. with
zeros at the end, which a causal variant cannot see); the global convolution is depthwise
``squash(k) ∗ x + skip ⊙ x`` without smoothing or nonlinearity; the MLP has a sigmoid after both
layers and is shared by all bins and channels; attention is single-head softmax with scale
``1/sqrt(d_k)``, no positional bias.

Glossary (code name → symbol in the book / the paper)
------------------------------------------------------
``x`` (..., L, D)            input of the layer, L samples of D channels.
``n_bins``, ``R``            N_bins time bins of R = L / N_bins samples (Eq. 24).
``n_fft``                    NFFT, the per-bin FFT length (default R).
``theta`` (..., n_bins, D, F, 2)   Θ' (shifted) coefficients; ``theta[..., 0]`` = θ₀ (= a₁ = b of
                             Eq. 16), ``theta[..., 1]`` = θ₁ (= a₂ = a of Eq. 16).
``F`` (``n_bank``)           filter-bank size (Eq. 7).
``O`` (``oversample``)       pooled features per bin and channel (Eq. 2).
``x_f`` (..., L, D)          the adaptively filtered sequence (Eq. 8).
``chunk_size``, ``M``        attention chunk length; C = L / M chunks (Eq. 9).
``y`` (..., L, dv)           chunked attention output (Eq. 10).
``o`` (..., L, D)            layer output (Eq. 14).
``alpha, delta, beta, eta`` (D, h)   MEGA's damped-EMA parameters (after the sigmoid for α, δ).

References
----------
.. [1] S. Lutati, I. Zimerman and L. Wolf, "Focus Your Attention (with Adaptive IIR Filters)",
       EMNLP 2023, arXiv:2305.14952 (Eqs. 1–32).
.. [2] X. Ma et al., "Mega: Moving Average Equipped Gated Attention", ICLR 2023 (the damped EMA,
       the gates; ``facebookresearch/mega``).
.. [3] D. Y. Fu et al., "Simple Hardware-Efficient Long Convolutions for Sequence Modeling",
       ICML 2023 (the global convolution of the hypernetwork).
.. [4] A. V. Oppenheim and R. W. Schafer, *Discrete-Time Signal Processing*, 3rd ed., 2010
       (circular convolution, §8.6).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import expit

from . import iir
from ._validate import as_bool, as_int, as_real_array, as_rng, check_option, guard_overflow
from .attention import softmax_attention, softmax_attention_loop

__all__ = [
    "VARIANTS",
    "FIRST_BIN",
    # the per-bin filter
    "focus_frequency_response",
    "focus_frequency_response_loop",
    "periodized_impulse_response",
    "adaptive_filter",
    "adaptive_filter_loop",
    "continuous_exponents",
    "continuous_impulse_response",
    # hypernetwork
    "global_conv",
    "global_conv_loop",
    "adaptive_max_pool",
    "adaptive_max_pool_loop",
    "hypernetwork",
    "hypernetwork_loop",
    # attention, gates, layer
    "chunked_attention",
    "chunked_attention_loop",
    "gated_residual",
    "gated_residual_loop",
    "init_focus_params",
    "focus_layer",
    "focus_layer_loop",
    "focus_op_counts",
    # MEGA
    "mega_ema_kernel",
    "mega_ema",
    "mega_ema_loop",
]

VARIANTS = ("literal", "causal-circular", "causal-recursive")
FIRST_BIN = ("zero", "mlp-zero")

_PARAM_SHAPES = {
    # name: shape with symbols D (width), K (conv kernel length), O, hid, F2 (= 2F), dk, dv
    "conv_kernel": ("K", "D"),
    "conv_skip": ("D",),
    "conv_squash": (),
    "mlp_w1": ("O", "hid"),
    "mlp_b1": ("hid",),
    "mlp_w2": ("hid", "F2"),
    "mlp_b2": ("F2",),
    "w_q": ("D", "dk"),
    "w_k": ("D", "dk"),
    "w_v": ("D", "dv"),
    "w_gamma": ("D", "dv"),
    "b_gamma": ("dv",),
    "w_phi": ("D", "D"),
    "b_phi": ("D",),
    "w_h": ("D", "D"),
    "u_h": ("dv", "D"),
    "b_h": ("D",),
}


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _signal(x, name: str = "x") -> np.ndarray:
    x = as_real_array(x, name)
    if x.ndim < 2:
        raise ValueError(f"{name}: expected shape (..., L, D), got shape {x.shape}")
    if x.shape[-2] == 0 or x.shape[-1] == 0:
        raise ValueError(f"{name}: expected at least one step (L >= 1) and one channel (D >= 1), got shape {x.shape}")
    return x


def _theta(theta, name: str = "theta") -> np.ndarray:
    """Coefficients (..., 2), finite, every (θ₀, θ₁) inside the stability triangle (Eq. 13.13)."""
    theta = as_real_array(theta, name)
    if theta.ndim == 0 or theta.shape[-1] != 2:
        raise ValueError(f"{name}: expected coefficients of shape (..., 2) = (θ0, θ1), got shape {theta.shape}")
    a1, a2 = theta[..., 0], theta[..., 1]
    stable = (np.abs(a2) < 1.0) & (np.abs(a1) < 1.0 + a2)  # |a2| < 1, |a1| < 1 + a2
    if not np.all(stable):
        i = np.unravel_index(int(np.argmin(stable.ravel())), stable.shape)
        raise ValueError(
            f"{name}: expected stable filters (|θ1| < 1 and |θ0| < 1 + θ1), got (θ0, θ1) = "
            f"({a1[i]:.6g}, {a2[i]:.6g}) at index {tuple(int(j) for j in i)}"
        )
    return theta


def _divides(n: int, name: str, length: int, what: str) -> int:
    if length % n:
        raise ValueError(
            f"{name}: expected {what} dividing L = {length} (pad x explicitly to a multiple), got {n}"
        )
    return n


def _filter_args(x, theta, variant, n_fft):
    check_option(variant, "variant", VARIANTS)
    x = _signal(x)
    theta = _theta(theta)
    if theta.ndim < 4:
        raise ValueError(f"theta: expected shape (..., n_bins, D, F, 2), got shape {theta.shape}")
    n_bins, d = theta.shape[-4], theta.shape[-3]
    L = x.shape[-2]
    if d != x.shape[-1]:
        raise ValueError(f"theta: expected D = {x.shape[-1]} channels (x.shape[-1]), got shape {theta.shape}")
    if n_bins < 1:
        raise ValueError(f"theta: expected at least one bin, got shape {theta.shape}")
    if theta.shape[-2] < 1:  # as focus_layer refuses 2F = 0: a bank of no filter is not a filter
        raise ValueError(f"theta: expected at least one filter per bank (theta.shape[-2] = F >= 1), got shape {theta.shape}")
    _divides(n_bins, "theta", L, "a number of bins (theta.shape[-4])")
    R = L // n_bins
    try:
        batch = np.broadcast_shapes(x.shape[:-2], theta.shape[:-4])
    except ValueError:
        raise ValueError(
            f"theta: leading axes {theta.shape[:-4]} do not broadcast with x's {x.shape[:-2]}"
        ) from None
    if n_fft is None:
        n_fft = R
    else:
        if variant == "causal-recursive":
            raise ValueError("n_fft: the causal-recursive variant has no FFT; expected None")
        if as_int(n_fft, "n_fft", 1) < R:
            raise ValueError(
                f"n_fft: expected at least R = {R} (the samples per bin: the length of x over the bins of theta), got {n_fft}"
            )
        n_fft = int(n_fft)
    xb = np.broadcast_to(x, batch + x.shape[-2:]).reshape(batch + (n_bins, R, d))  # S2P into bins
    th = np.broadcast_to(theta, batch + theta.shape[-4:])
    return xb, th, R, n_fft


# ---------------------------------------------------------------------------------------------
# The per-bin filter: P-5, its periodized impulse response, the three variants
# ---------------------------------------------------------------------------------------------


def focus_frequency_response(theta, n_fft):
    r"""The Eq. 5 grid ``H[k] = 1 / (1 + θ₀ e^{−j2πk/N} + θ₁ e^{−j4πk/N})``, ``k = 0 … N−1``.

    Implements Eq. (14.1) of the book (Lutati et al. 2023, Eq. 5), equal to
    ``scipy.signal.freqz([1], [1, θ0, θ1], worN=N, whole=True)``.

    Parameters
    ----------
    theta : array_like, shape (..., 2)
        Stable coefficients (θ₀, θ₁) (inside the stability triangle).
    n_fft : int ≥ 1
        The grid size N.

    Returns
    -------
    ndarray, complex128, shape (..., n_fft)

    Examples
    --------
    >>> H = focus_frequency_response(np.array([[0.0, 0.0], [-0.5, 0.0]]), 4)  # θ = 0: the identity; a one-pole filter
    >>> (np.abs(H).round(6) + 0.0).tolist()
    [[1.0, 1.0, 1.0, 1.0], [2.0, 0.894427, 0.666667, 0.894427]]
    """
    theta = _theta(theta)
    n_fft = as_int(n_fft, "n_fft", 1)
    return 1.0 / _denominator_on_grid(theta[..., None, :], n_fft, n_fft)[..., 0, :]


def _unit_roots(n: int, n_fft: int) -> np.ndarray:
    """``z_k = e^{−j2πk/N}`` for k = 0 … n−1 (= z⁻¹ on the unit circle), exactly ±1 where k/N is 0 or 1/2
    (``exp(−jπ)`` rounds to −1 − 1.2e-16j: with θ near the stability edge, H's Nyquist value
    then carried an imaginary part 1e-8 of its size where it is real)."""
    z = np.exp(-2j * np.pi * np.arange(n) / n_fft)
    z[0] = 1.0
    if n_fft % 2 == 0 and n > n_fft // 2:
        z[n_fft // 2] = -1.0
    return z


def _denominator_on_grid(th: np.ndarray, n: int, n_fft: int) -> np.ndarray:
    """``1 + θ₀ z_k + θ₁ z_k²`` for the pairs ``th`` (..., F, 2) on k = 0 … n−1: (..., F, n)."""
    z = _unit_roots(n, n_fft)
    return 1.0 + th[..., 0, None] * z + th[..., 1, None] * z * z


def focus_frequency_response_loop(theta, n_fft):
    """Loop twin of :func:`focus_frequency_response`: one filter at a time via :func:`refimpl.iir.frequency_response`.

    Examples
    --------
    >>> theta = np.random.default_rng(0).uniform(0.0, 0.9, (3, 2))
    >>> bool(np.allclose(focus_frequency_response_loop(theta, 16), focus_frequency_response(theta, 16)))
    True
    """
    theta = _theta(theta)
    n_fft = as_int(n_fft, "n_fft", 1)
    out = np.empty(theta.shape[:-1] + (n_fft,), dtype=np.complex128)
    for idx in np.ndindex(*theta.shape[:-1]):
        t0, t1 = theta[idx]
        out[idx] = iir.frequency_response([1.0], [1.0, t0, t1], n_fft, whole=True)[1]
    return out


def periodized_impulse_response(theta, n):
    r"""The N-periodized impulse response ``h_p[m] = Σ_{q≥0} h[m + qN]``, ``m = 0 … N−1``.

    Implements Eq. (14.7) of the book (§14.4): ``DFT_N(h_p) = H`` on the grid of the paper's Eq. 5, so
    ``h_p = IDFT_N(H)``, which is how it is computed here (exact for any pole radius < 1,
    including double poles). The closed form ``Σ_i ρ_i p_i^m / (1 − p_i^N)`` and the folded long
    impulse response are the oracles in the tests.

    Parameters
    ----------
    theta : array_like, shape (..., 2)
    n : int ≥ 1

    Returns
    -------
    ndarray, shape (..., n)

    Examples
    --------
    >>> theta = np.array([0.5, 0.3])
    >>> h = periodized_impulse_response(theta, 8)
    >>> bool(np.allclose(np.fft.fft(h), focus_frequency_response(theta, 8)))  # the DFT of h_p is H on the grid
    True
    """
    n = as_int(n, "n", 1)
    H = focus_frequency_response(theta, n)
    # H(e^{-iω}) = conj(H(e^{iω})) for real coefficients: the IDFT is real; irfft uses only k ≤ N/2
    return np.fft.irfft(H[..., : n // 2 + 1], n=n, axis=-1)


def _bank_grid(th: np.ndarray, n_fft: int, conjugate: bool) -> np.ndarray:
    """Σ_ℓ H_ℓ (or Σ_ℓ conj H_ℓ) on k = 0 … N/2, shape (..., n_bins, K, D)."""
    K = n_fft // 2 + 1
    H = 1.0 / _denominator_on_grid(th, K, n_fft)  # (..., n_bins, D, F, K), P-5
    if conjugate:
        H = H.conj()  # P-6: X · conj(H)
    return np.moveaxis(H.sum(axis=-2), -1, -2)  # P-7: sum the bank; → (..., n_bins, K, D)


def _impulse_bank(th: np.ndarray, R: int) -> np.ndarray:
    """Σ_ℓ h_ℓ[0 … R−1] from rest, by the recursion h[n] = δ[n] − θ₀h[n−1] − θ₁h[n−2]: (..., n_bins, R, D)."""
    t0, t1 = th[..., 0], th[..., 1]  # (..., n_bins, D, F)
    h = np.zeros((R,) + t0.shape)
    h1 = h2 = np.zeros(t0.shape)
    for n in range(R):
        hn = (1.0 if n == 0 else 0.0) - t0 * h1 - t1 * h2
        h[n], h2, h1 = hn, h1, hn
    return np.moveaxis(h.sum(axis=-1), 0, -2)


@guard_overflow()
def adaptive_filter(x, theta, *, variant="causal-recursive", n_fft=None):
    r"""Filter every (time bin, channel) of ``x`` with its bank of all-pole biquads (14.3).

    Implements Eqs. (14.8)–(14.10) of the book (Lutati et al. 2023, Eqs. 4–8 and Eq. 32).

    Parameters
    ----------
    x : array_like, shape (..., L, D)
    theta : array_like, shape (..., n_bins, D, F, 2)
        The coefficients applied to each bin (already shifted, Θ'); every pair must be stable.
        ``n_bins`` must divide L (``R = L / n_bins``); leading axes broadcast with x's.
    variant : {"causal-recursive", "causal-circular", "literal"}
        ``"literal"``: ``IFFT(FFT(x_r) · Σ_ℓ conj H_ℓ)`` (Eq. 6, anti-causal within a bin);
        ``"causal-circular"``: ``IFFT(FFT(x_r) · Σ_ℓ H_ℓ)``; ``"causal-recursive"``: the difference
        equation ``u_ℓ[n] = x[n] − θ₀u_ℓ[n−1] − θ₁u_ℓ[n−2]`` from rest in every bin, ``x_f = Σ_ℓ u_ℓ``.
    n_fft : int ≥ R, optional
        FFT length of the two FFT variants (default R). With ``n_fft > R`` the bin is zero-padded
        and the first R samples of the IFFT are kept (a choice: the paper does not say).

    Returns
    -------
    x_f : ndarray, shape (broadcast batch, L, D)

    Notes
    -----
    The FFT variants use ``rfft``/``irfft``: ``conj H(f) = H(−f)`` keeps the product Hermitian, so
    the inverse is real by construction (Eq. 8). The recursive variant is computed as the FFT
    convolution (zero-padded to 2R, hence linear, not circular) of each bin with the bank's
    impulse response truncated to R taps — exact up to round-off, since taps beyond R cannot reach
    a length-R bin from rest. Its loop twin is the recursion itself.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, theta = rng.normal(size=(16, 2)), rng.uniform(0.0, 0.9, (4, 2, 1, 2))
    >>> y = adaptive_filter(x, theta)  # 4 bins of 4 samples, one biquad per (bin, channel)
    >>> y.shape
    (16, 2)
    """
    xb, th, R, n_fft = _filter_args(x, theta, variant, n_fft)
    if variant == "causal-recursive":
        h = _impulse_bank(th, R)  # (..., n_bins, R, D)
        n = 2 * R  # linear convolution of two length-R sequences
        y = np.fft.irfft(np.fft.rfft(xb, n=n, axis=-2) * np.fft.rfft(h, n=n, axis=-2), n=n, axis=-2)[..., :R, :]
    else:
        X = np.fft.rfft(xb, n=n_fft, axis=-2)  # P-4, zero-padded if n_fft > R
        Hs = _bank_grid(th, n_fft, conjugate=(variant == "literal"))  # P-5 … P-7
        y = np.fft.irfft(X * Hs, n=n_fft, axis=-2)[..., :R, :]  # P-8, first R samples
    return y.reshape(y.shape[:-3] + (y.shape[-3] * y.shape[-2], y.shape[-1]))  # P2S (no -1: an empty batch has size 0)


def adaptive_filter_loop(x, theta, *, variant="causal-recursive", n_fft=None):
    """Loop twin of :func:`adaptive_filter`: explicit DFT sums (Eqs. 4, 8) or the recursion (Eq. 32).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, theta = rng.normal(size=(16, 2)), rng.uniform(0.0, 0.9, (4, 2, 1, 2))
    >>> bool(np.allclose(adaptive_filter_loop(x, theta), adaptive_filter(x, theta)))
    True
    """
    xb, th, R, n_fft = _filter_args(x, theta, variant, n_fft)
    batch, n_bins, d, F = xb.shape[:-3], xb.shape[-3], xb.shape[-1], th.shape[-2]
    y = np.zeros(xb.shape)
    for b in np.ndindex(*batch):
        for r in range(n_bins):
            for c in range(d):
                xs = xb[b][r, :, c]
                if variant == "causal-recursive":
                    for ell in range(F):
                        t0, t1 = th[b][r, c, ell]
                        u1 = u2 = 0.0
                        for n in range(R):
                            u = xs[n] - t0 * u1 - t1 * u2  # u[n] = x[n] − θ0 u[n−1] − θ1 u[n−2]   (P-32)
                            y[b][r, n, c] += u  # x_f = Σ_ℓ u_ℓ
                            u2, u1 = u1, u
                    continue
                N = n_fft
                X = [sum(xs[n] * np.exp(-2j * np.pi * k * n / N) for n in range(R)) for k in range(N)]  # P-4
                Xc = [0j] * N
                for k in range(N):
                    for ell in range(F):
                        t0, t1 = th[b][r, c, ell]
                        zk = np.exp(-2j * np.pi * k / N)
                        Hk = 1.0 / (1.0 + t0 * zk + t1 * zk * zk)  # P-5
                        Xc[k] += X[k] * (Hk.conjugate() if variant == "literal" else Hk)  # P-6, P-7
                for n in range(R):
                    val = sum(Xc[k] * np.exp(2j * np.pi * k * n / N) for k in range(N)) / N  # P-8
                    y[b][r, n, c] = val.real  # imaginary part is round-off: the spectrum is Hermitian
    return y.reshape(y.shape[:-3] + (y.shape[-3] * y.shape[-2], d))


def continuous_exponents(theta):
    r"""The exponents ``λ₁,₂ = (−b ∓ sqrt(b² − 4a)) / (2a)`` of the paper's continuous reading (Eq. 17).

    Implements Eq. (14.5) of the book: the roots of ``aS² + bS + 1`` with ``b = θ₀``, ``a = θ₁``
    (Eq. 16). They are the reciprocals ``1/p_i`` of the discrete poles (roots of
    ``z² + θ₀z + θ₁``), because ``S = z⁻¹``.

    Parameters
    ----------
    theta : array_like, shape (..., 2), with θ₁ ≠ 0

    Returns
    -------
    ndarray, complex128, shape (..., 2): ``λ₁`` (the ``−`` root) first.

    Examples
    --------
    >>> s = continuous_exponents(np.array([0.5, 0.3]))  # the roots of 0.3 s² + 0.5 s + 1
    >>> s.shape, bool(np.all(s.real < 0))  # a damped oscillation
    ((2,), True)
    """
    theta = _theta(theta)
    if np.any(theta[..., 1] == 0):
        raise ValueError("theta: expected θ1 != 0 (the continuous reading aS² + bS + 1 needs a = θ1 != 0)")
    b, a = theta[..., 0], theta[..., 1]
    sq = np.sqrt((b * b - 4.0 * a).astype(np.complex128))  # sqrt(Δ), imaginary when under-damped
    return np.stack([(-b - sq) / (2.0 * a), (-b + sq) / (2.0 * a)], axis=-1)


@guard_overflow()
def continuous_impulse_response(theta, t):
    r"""Impulse response of ``1/(a s² + b s + 1)`` with ``b = θ₀``, ``a = θ₁`` (the reading of Fig. 2).

    Implements Eq. (14.6) of the book (Eqs. 17, 20, Eq. 21 with the corrected frequency):

    * over-damped (``Δ = b² − 4a > 0``): ``(e^{λ₁t} − e^{λ₂t}) / (a(λ₁ − λ₂))``, evaluated as
      ``e^{λ₂t}(1 − e^{−(λ₂−λ₁)t}) / sqrt(Δ)`` (``expm1``), which neither overflows for large
      ``t`` nor cancels near ``t = 0`` or ``Δ = 0``;
    * under-damped: ``e^{−bt/(2a)} sin(ωt) / (aω)`` with ``ω = sqrt(−Δ)/(2a)`` (the paper's
      ``sqrt(Δ)/(2a)`` is imaginary there, §14.3 of the book);
    * critically damped: ``t e^{−bt/(2a)} / a``.

    Parameters
    ----------
    theta : array_like, shape (2,), with θ₁ > 0
    t : array_like, shape (n,), times ≥ 0

    Returns
    -------
    ndarray, shape (n,)

    Examples
    --------
    >>> h = continuous_impulse_response(np.array([0.5, 0.3]), np.linspace(0.0, 20.0, 5))
    >>> h.shape, abs(float(h[0])) < 1e-15, abs(float(h[-1])) < 1e-6  # starts at 0 (no zeros), decays
    ((5,), True, True)
    """
    theta = _theta(theta)
    if theta.shape != (2,) or not theta[1] > 0:
        raise ValueError(f"theta: expected one pair (θ0, θ1) with θ1 > 0, got {theta.tolist()}")
    t = as_real_array(t, "t", ndim=1)
    if t.size and t.min() < 0:
        raise ValueError(f"t: expected times t >= 0 (the impulse response is causal), got minimum {t.min():.6g}")
    b, a = float(theta[0]), float(theta[1])
    disc = b * b - 4.0 * a  # Δ
    sigma = -b / (2.0 * a)  # Re λ
    if disc > 0:
        sq = math.sqrt(disc)  # a(λ2 − λ1) = sqrt(Δ) > 0
        # λ2 = σ + s, the slower exponent, from the root formula without cancellation (λ1λ2 = 1/a)
        lam2 = -2.0 / (b + sq) if b > 0 else (sq - b) / (2.0 * a)
        # (e^{λ1 t} − e^{λ2 t}) / (a(λ1 − λ2)) = e^{λ2 t} (1 − e^{−(λ2 − λ1)t}) / sqrt(Δ): no overflow
        # (a sinh(st) e^{σt} form overflows for st > 710 while the response is ~e^{λ2 t}), no
        # cancellation near t = 0 or Δ = 0 (expm1)
        return -np.exp(lam2 * t) * np.expm1(-(sq / a) * t) / sq
    if disc < 0:
        w = math.sqrt(-disc) / (2.0 * a)  # ω = sqrt(−Δ)/(2a)  (corrected P-20)
        return np.exp(sigma * t) * np.sin(w * t) / (a * w)
    return t * np.exp(sigma * t) / a


# ---------------------------------------------------------------------------------------------
# The hypernetwork: global convolution, adaptive max pooling, MLP, shift (P-1 … P-3)
# ---------------------------------------------------------------------------------------------


def _conv_args(x, kernel, skip, squash):
    x = _signal(x)
    kernel = as_real_array(kernel, "kernel", ndim=2)
    d = x.shape[-1]
    if kernel.shape[1] != d or kernel.shape[0] < 1:
        raise ValueError(f"kernel: expected shape (K, {d}) with K >= 1, got shape {kernel.shape}")
    skip = as_real_array(skip, "skip", ndim=1)
    if skip.shape != (d,):
        raise ValueError(f"skip: expected shape ({d},), got shape {skip.shape}")
    squash = float(as_real_array(squash, "squash", ndim=0))
    if squash < 0:
        raise ValueError(f"squash: expected a threshold >= 0, got {squash!r}")
    k = np.sign(kernel) * np.maximum(np.abs(kernel) - squash, 0.0)  # soft threshold (Fu et al. 2023)
    return x, k, skip


@guard_overflow()
def global_conv(x, kernel, skip, *, squash=0.0):
    r"""Depthwise causal long convolution ``g = squash_λ(k) ∗ x + skip ⊙ x`` (Fu et al. 2023).

    Implements Eq. (14.11) of the book (the GlobalConv of Eq. 2):
    ``g[t, d] = Σ_{j=0}^{min(t, K−1)} k̃[j, d] x[t−j, d] + skip[d] x[t, d]`` with the soft threshold
    ``k̃ = sign(k) max(|k| − λ, 0)``. Smoothing and the output nonlinearity of Fu et al. are
    omitted (the paper does not give them).

    Parameters
    ----------
    x : array_like, shape (..., L, D)
    kernel : array_like, shape (K, D)
    skip : array_like, shape (D,)
    squash : float ≥ 0
        The threshold λ.

    Returns
    -------
    ndarray, shape (..., L, D)

    Notes
    -----
    Computed by FFT with zero padding to ``L + K − 1`` (linear, causal), cost O(L log L · D).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, kernel, skip = rng.normal(size=(8, 2)), rng.normal(size=(4, 2)), rng.normal(size=2)
    >>> g = global_conv(x, kernel, skip)
    >>> bool(np.allclose(g[:, 0], np.convolve(x[:, 0], kernel[:, 0])[:8] + skip[0] * x[:, 0]))  # causal, plus skip
    True
    """
    x, k, skip = _conv_args(x, kernel, skip, squash)
    L = x.shape[-2]
    n = L + k.shape[0] - 1  # no circular wrap-around
    y = np.fft.irfft(np.fft.rfft(x, n=n, axis=-2) * np.fft.rfft(k, n=n, axis=0), n=n, axis=-2)[..., :L, :]
    return y + skip * x


def global_conv_loop(x, kernel, skip, *, squash=0.0):
    """Loop twin of :func:`global_conv`: the convolution sum per output sample and channel.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, kernel, skip = rng.normal(size=(8, 2)), rng.normal(size=(4, 2)), rng.normal(size=2)
    >>> bool(np.allclose(global_conv_loop(x, kernel, skip, squash=0.1), global_conv(x, kernel, skip, squash=0.1)))
    True
    """
    x, k, skip = _conv_args(x, kernel, skip, squash)
    L, d = x.shape[-2:]
    y = np.zeros(x.shape)
    for b in np.ndindex(*x.shape[:-2]):
        for t in range(L):
            for c in range(d):
                acc = skip[c] * x[b][t, c]
                for j in range(min(t + 1, k.shape[0])):
                    acc += k[j, c] * x[b][t - j, c]  # g[t] = Σ_j k̃[j] x[t − j] + skip x[t]
                y[b][t, c] = acc
    return y


def _pool_windows(L: int, n_out: int):
    i = np.arange(n_out)
    start = (i * L) // n_out  # ⌊iL/P⌋
    stop = -((-(i + 1) * L) // n_out)  # ⌈(i+1)L/P⌉
    return start, stop


def _pool_args(g, n_out):
    g = _signal(g, "g")
    n_out = as_int(n_out, "n_out", 1)
    if n_out > g.shape[-2]:
        raise ValueError(f"n_out: expected at most L = {g.shape[-2]} outputs (the length of g), got {n_out}")
    return g, n_out


def adaptive_max_pool(g, n_out):
    r"""PyTorch's adaptive max pooling over the sequence axis (Eq. 2).

    Implements Eq. (14.12) of the book: output ``i`` of ``P = n_out`` is the maximum over the
    window ``[⌊iL/P⌋, ⌈(i+1)L/P⌉)`` (windows overlap by one sample when P does not divide L).

    Parameters
    ----------
    g : array_like, shape (..., L, D)
    n_out : int, 1 ≤ n_out ≤ L

    Returns
    -------
    ndarray, shape (..., n_out, D)

    Examples
    --------
    >>> adaptive_max_pool(np.arange(10.0)[:, None], 3)[:, 0].tolist()  # windows [0, 4), [3, 7), [6, 10)
    [3.0, 6.0, 9.0]
    """
    g, n_out = _pool_args(g, n_out)
    start, stop = _pool_windows(g.shape[-2], n_out)
    width = int((stop - start).max())
    idx = start[:, None] + np.arange(width)  # (n_out, width)
    valid = idx < stop[:, None]
    gathered = g[..., np.minimum(idx, g.shape[-2] - 1), :]  # (..., n_out, width, D)
    return np.where(valid[:, :, None], gathered, -np.inf).max(axis=-2)


def adaptive_max_pool_loop(g, n_out):
    """Loop twin of :func:`adaptive_max_pool`: the max over each floor/ceil window.

    Examples
    --------
    >>> g = np.random.default_rng(0).normal(size=(30, 3))
    >>> bool(np.array_equal(adaptive_max_pool_loop(g, 7), adaptive_max_pool(g, 7)))
    True
    """
    g, n_out = _pool_args(g, n_out)
    start, stop = _pool_windows(g.shape[-2], n_out)
    out = np.empty(g.shape[:-2] + (n_out, g.shape[-1]))
    for b in np.ndindex(*g.shape[:-2]):
        for i in range(n_out):
            for c in range(g.shape[-1]):
                out[b][i, c] = max(g[b][t, c] for t in range(start[i], stop[i]))
    return out


def _check_params(params, x: np.ndarray | None = None) -> dict:
    if not isinstance(params, dict):
        raise TypeError(f"params: expected a dict of arrays (see init_focus_params), got {type(params).__name__}")
    missing = [k for k in _PARAM_SHAPES if k not in params]
    if missing:
        raise ValueError(f"params: missing entries {missing}")
    out, sizes = {}, {}
    for key, symbols in _PARAM_SHAPES.items():
        arr = as_real_array(params[key], f"params['{key}']")
        if arr.ndim != len(symbols):
            raise ValueError(f"params['{key}']: expected {len(symbols)} dimensions {symbols}, got shape {arr.shape}")
        for sym, n in zip(symbols, arr.shape):
            if sizes.setdefault(sym, n) != n:
                raise ValueError(
                    f"params['{key}']: expected {sym} = {sizes[sym]} along its axis (shape {symbols}), got shape {arr.shape}"
                )
        out[key] = arr
    if sizes["F2"] % 2 or sizes["F2"] == 0:
        raise ValueError(f"params['mlp_w2']: expected 2F outputs (an even number > 0), got {sizes['F2']}")
    if x is not None and x.shape[-1] != sizes["D"]:
        raise ValueError(f"x: expected D = {sizes['D']} channels (the width of params), got shape {x.shape}")
    if out["conv_squash"] < 0:
        raise ValueError(f"params['conv_squash']: expected a threshold >= 0, got {float(out['conv_squash'])!r}")
    return out


def _hyper_args(x, params, n_bins, first_bin):
    x = _signal(x)
    p = _check_params(params, x)
    check_option(first_bin, "first_bin", FIRST_BIN)
    L = x.shape[-2]
    n_bins = as_int(n_bins, "n_bins", 1)
    _divides(n_bins, "n_bins", L, "a number of bins")
    O = p["mlp_w1"].shape[0]
    if L % (O * n_bins):
        raise ValueError(
            f"n_bins: expected n_bins · O = {n_bins} · {O} dividing L = {L} (pool windows must not cross bins), got {n_bins}"
        )
    return x, p, n_bins, O


def _theta_shift(theta: np.ndarray, p: dict, first_bin: str) -> np.ndarray:
    """Θ'[0] = initial kernel, Θ'[r] = Θ[r − 1] (Eq. 3's shift by one bin)."""
    out = np.empty_like(theta)
    out[..., 1:, :, :, :] = theta[..., :-1, :, :, :]
    if first_bin == "zero":
        out[..., 0, :, :, :] = 0.0  # H ≡ 1 per branch
    else:
        h1 = expit(p["mlp_b1"])  # the MLP on a zero embedding
        out[..., 0, :, :, :] = expit(h1 @ p["mlp_w2"] + p["mlp_b2"]).reshape(-1, 2)
    return out


def hypernetwork(x, params, *, n_bins, first_bin="zero", shift=True):
    r"""The coefficients Θ' of every (bin, channel, branch): ``Θ = MLP(MaxPool(GlobalConv(x)))``, shifted.

    Implements Eqs. (14.11)–(14.14) of the book (Lutati et al. 2023, Eqs. 1–3):

    1. ``g = global_conv(x)`` (depthwise, causal);
    2. ``e = adaptive_max_pool(g, O · n_bins)``, reshaped to ``(n_bins, D, O)`` (bins into the batch);
    3. ``Θ = σ(σ(e W₁ + b₁) W₂ + b₂)``, reshaped to ``(n_bins, D, F, 2)``: every θ ∈ (0, 1);
    4. shift by one bin, ``Θ'[r] = Θ[r − 1]``, so bin r's filter depends on bins < r only.

    Parameters
    ----------
    x : array_like, shape (..., L, D)
    params : dict
        As built by :func:`init_focus_params` (``conv_*`` and ``mlp_*`` entries are used).
    n_bins : int
        ``n_bins · O`` must divide L, so that no pooling window crosses a bin boundary.
    first_bin : {"zero", "mlp-zero"}
        Θ'[0] (UNCONFIRMED in the paper): zeros (each branch is the identity), or the MLP applied
        to a zero embedding.
    shift : bool
        ``False`` returns the unshifted Θ (for the shift test).

    Returns
    -------
    ndarray, shape (..., n_bins, D, F, 2)

    Examples
    --------
    >>> params = init_focus_params(2, kernel_len=8, rng=0)
    >>> x = np.random.default_rng(1).normal(size=(16, 2))
    >>> theta = hypernetwork(x, params, n_bins=4)
    >>> theta.shape  # (bins, channels, filters, 2)
    (4, 2, 1, 2)
    >>> (theta[0] + 0.0).tolist() == np.zeros_like(theta[0]).tolist()  # the first bin has no past: θ = 0
    True
    """
    x, p, n_bins, O = _hyper_args(x, params, n_bins, first_bin)
    shift = as_bool(shift, "shift")
    g = global_conv(x, p["conv_kernel"], p["conv_skip"], squash=p["conv_squash"])
    e = adaptive_max_pool(g, O * n_bins)  # (..., n_bins·O, D)
    e = np.swapaxes(e.reshape(e.shape[:-2] + (n_bins, O, e.shape[-1])), -1, -2)  # (..., n_bins, D, O)
    h1 = expit(e @ p["mlp_w1"] + p["mlp_b1"])  # first layer, sigmoid
    theta = expit(h1 @ p["mlp_w2"] + p["mlp_b2"])  # θ ∈ (0, 1)  (P-3)
    theta = theta.reshape(theta.shape[:-1] + (theta.shape[-1] // 2, 2))  # 2F -> (F, 2) (no -1: an empty batch has size 0)
    return _theta_shift(theta, p, first_bin) if shift else theta


def hypernetwork_loop(x, params, *, n_bins, first_bin="zero", shift=True):
    """Loop twin of :func:`hypernetwork`: loop twins of the convolution and pooling, the MLP per (bin, channel).

    Examples
    --------
    >>> params = init_focus_params(2, kernel_len=8, rng=0)
    >>> x = np.random.default_rng(1).normal(size=(16, 2))
    >>> bool(np.allclose(hypernetwork_loop(x, params, n_bins=4), hypernetwork(x, params, n_bins=4)))
    True
    """
    x, p, n_bins, O = _hyper_args(x, params, n_bins, first_bin)
    shift = as_bool(shift, "shift")
    g = global_conv_loop(x, p["conv_kernel"], p["conv_skip"], squash=p["conv_squash"])
    e = adaptive_max_pool_loop(g, O * n_bins)
    W1, b1, W2, b2 = p["mlp_w1"], p["mlp_b1"], p["mlp_w2"], p["mlp_b2"]
    F = W2.shape[1] // 2
    d = x.shape[-1]
    theta = np.empty(x.shape[:-2] + (n_bins, d, F, 2))
    for b in np.ndindex(*x.shape[:-2]):
        for r in range(n_bins):
            for c in range(d):
                feat = [e[b][r * O + o, c] for o in range(O)]  # O pooled features of bin r
                hid = [_sigmoid(sum(feat[o] * W1[o, j] for o in range(O)) + b1[j]) for j in range(W1.shape[1])]  # σ(e W1 + b1)
                for m in range(2 * F):
                    s = sum(hid[j] * W2[j, m] for j in range(len(hid))) + b2[m]
                    theta[b][r, c, m // 2, m % 2] = _sigmoid(s)  # θ = σ(h W2 + b2)
    return _theta_shift(theta, p, first_bin) if shift else theta


# ---------------------------------------------------------------------------------------------
# Chunked attention (P-9, P-10) and the gates (P-11 … P-14)
# ---------------------------------------------------------------------------------------------


def _attn_args(x, x_f, w_q, w_k, w_v, chunk_size):
    x = _signal(x)
    x_f = _signal(x_f, "x_f")
    if x_f.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"x_f: expected the shape (..., {x.shape[-2]}, {x.shape[-1]}) of x, got shape {x_f.shape}")
    d = x.shape[-1]
    ws = []
    for w, name in ((w_q, "w_q"), (w_k, "w_k"), (w_v, "w_v")):
        w = as_real_array(w, name, ndim=2)
        if w.shape[0] != d:
            raise ValueError(f"{name}: expected shape ({d}, ·), got shape {w.shape}")
        ws.append(w)
    if ws[0].shape[1] != ws[1].shape[1]:
        raise ValueError(f"w_k: expected the query width {ws[0].shape[1]} columns, got shape {ws[1].shape}")
    L = x.shape[-2]
    M = _divides(as_int(chunk_size, "chunk_size", 1), "chunk_size", L, "a chunk length")
    return x, x_f, ws, M


def _chunks(a: np.ndarray, M: int) -> np.ndarray:
    return a.reshape(a.shape[:-2] + (a.shape[-2] // M, M, a.shape[-1]))  # S2P: (..., C, M, ·)


def chunked_attention(x, x_f, w_q, w_k, w_v, *, chunk_size, scale=None):
    r"""Causal softmax attention inside chunks; queries from ``x``, keys and values from ``x_f``.

    Implements Eq. (14.15) of the book (Lutati et al. 2023, Eqs. 9, 10):
    ``y^i = Atten(x^i W_q, x_f^i W_k, x_f^i W_v)`` for the chunks ``i = 0 … C−1`` of length M, with a
    causal mask inside each chunk and no attention across chunks. Atten is
    :func:`refimpl.attention.softmax_attention` (scale ``1/sqrt(d_k)`` by default).

    Parameters
    ----------
    x, x_f : array_like, shape (..., L, D)
    w_q, w_k : array_like, shape (D, d_k)
    w_v : array_like, shape (D, d_v)
    chunk_size : int
        M; must divide L.
    scale : float, optional

    Returns
    -------
    ndarray, shape (..., L, d_v)

    Notes
    -----
    Cost O(L M (d_k + d_v)): linear in L for a fixed M.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, x_f = rng.normal(size=(2, 8, 4))
    >>> w_q, w_k, w_v = rng.normal(size=(3, 4, 4)) / 2
    >>> y = chunked_attention(x, x_f, w_q, w_k, w_v, chunk_size=4)
    >>> y.shape
    (8, 4)
    >>> y2 = chunked_attention(x, np.concatenate([x_f[:4], 10 + x_f[4:]]), w_q, w_k, w_v, chunk_size=4)
    >>> bool(np.allclose(y[:4], y2[:4]))  # the first chunk does not see the second
    True
    """
    x, x_f, (wq, wk, wv), M = _attn_args(x, x_f, w_q, w_k, w_v, chunk_size)
    q, k, v = _chunks(x @ wq, M), _chunks(x_f @ wk, M), _chunks(x_f @ wv, M)
    y = softmax_attention(q, k, v, causal=True, scale=scale)  # all chunks in one batched call
    return y.reshape(y.shape[:-3] + (y.shape[-3] * y.shape[-2], y.shape[-1]))  # P2S


def chunked_attention_loop(x, x_f, w_q, w_k, w_v, *, chunk_size, scale=None):
    """Loop twin of :func:`chunked_attention`: one chunk at a time through the attention loop twin.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, x_f = rng.normal(size=(2, 8, 4))
    >>> w_q, w_k, w_v = rng.normal(size=(3, 4, 4)) / 2
    >>> bool(np.allclose(chunked_attention_loop(x, x_f, w_q, w_k, w_v, chunk_size=4), chunked_attention(x, x_f, w_q, w_k, w_v, chunk_size=4)))
    True
    """
    x, x_f, (wq, wk, wv), M = _attn_args(x, x_f, w_q, w_k, w_v, chunk_size)
    L = x.shape[-2]
    y = np.empty(x.shape[:-1] + (wv.shape[1],))
    for i in range(L // M):
        s = slice(i * M, (i + 1) * M)  # chunk x^i = x[iM : (i+1)M]  (P-9)
        y[..., s, :] = softmax_attention_loop(x[..., s, :] @ wq, x_f[..., s, :] @ wk, x_f[..., s, :] @ wv, causal=True, scale=scale)
    return y


def _sigmoid(s: float) -> float:
    """σ(s) for one float, without overflow for large |s|."""
    return 1.0 / (1.0 + math.exp(-s)) if s >= 0 else math.exp(s) / (1.0 + math.exp(s))


def _silu(z):
    return z * expit(z)


def _gate_args(x, x_f, y, w_gamma, b_gamma, w_phi, b_phi, w_h, u_h, b_h):
    x = _signal(x)
    x_f = _signal(x_f, "x_f")
    y = _signal(y, "y")
    d, dv = x.shape[-1], y.shape[-1]
    if x_f.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"x_f: expected the shape (..., {x.shape[-2]}, {d}) of x, got shape {x_f.shape}")
    if y.shape[-2] != x.shape[-2]:
        raise ValueError(f"y: expected L = {x.shape[-2]} rows, got shape {y.shape}")
    want = {"w_gamma": (d, dv), "b_gamma": (dv,), "w_phi": (d, d), "b_phi": (d,), "w_h": (d, d), "u_h": (dv, d), "b_h": (d,)}
    got = dict(zip(want, (w_gamma, b_gamma, w_phi, b_phi, w_h, u_h, b_h)))
    out = []
    for name, shape in want.items():
        arr = as_real_array(got[name], name)
        if arr.shape != shape:
            raise ValueError(f"{name}: expected shape {shape}, got shape {arr.shape}")
        out.append(arr)
    try:
        batch = np.broadcast_shapes(x.shape[:-2], x_f.shape[:-2], y.shape[:-2])
    except ValueError:
        raise ValueError(f"y: leading axes {y.shape[:-2]} do not broadcast with x's {x.shape[:-2]} and x_f's {x_f.shape[:-2]}") from None
    x, x_f, y = (np.broadcast_to(a, batch + a.shape[-2:]) for a in (x, x_f, y))
    return x, x_f, y, out


def gated_residual(x, x_f, y, w_gamma, b_gamma, w_phi, b_phi, w_h, u_h, b_h):
    r"""MEGA's reset and update gates with the residual to the raw input (Eqs. 11–14).

    Implements Eq. (14.16) of the book:

    ``γ = SiLU(x_f W_γ + b_γ)``, ``φ = σ(x_f W_φ + b_φ)``, ``z = SiLU(x_f W_h + (γ ∘ y) U_h + b_h)``,
    ``o = φ ∘ z + (1 − φ) ∘ x``. (The paper's text calls the update gate ψ, Eq. 12 calls it φ.)

    Parameters
    ----------
    x, x_f : array_like, shape (..., L, D)
    y : array_like, shape (..., L, d_v)
    w_gamma : (D, d_v), b_gamma : (d_v,), w_phi : (D, D), b_phi : (D,), w_h : (D, D),
    u_h : (d_v, D), b_h : (D,)

    Returns
    -------
    ndarray, shape (..., L, D)

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, x_f, y = rng.normal(size=(3, 5, 4))
    >>> w_gamma, w_phi, w_h, u_h = rng.normal(size=(4, 4, 4)) / 2
    >>> b_gamma, b_phi, b_h = rng.normal(size=(3, 4))
    >>> gated_residual(x, x_f, y, w_gamma, b_gamma, w_phi, b_phi, w_h, u_h, b_h).shape
    (5, 4)
    """
    x, x_f, y, (wg, bg, wp, bp, wh, uh, bh) = _gate_args(x, x_f, y, w_gamma, b_gamma, w_phi, b_phi, w_h, u_h, b_h)
    gamma = _silu(x_f @ wg + bg)  # reset gate (P-11)
    phi = expit(x_f @ wp + bp)  # update gate (P-12)
    z = _silu(x_f @ wh + (gamma * y) @ uh + bh)  # candidate (P-13)
    return phi * z + (1.0 - phi) * x  # output (P-14)


def gated_residual_loop(x, x_f, y, w_gamma, b_gamma, w_phi, b_phi, w_h, u_h, b_h):
    """Loop twin of :func:`gated_residual`: one position and one output channel at a time.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, x_f, y = rng.normal(size=(3, 5, 4))
    >>> w_gamma, w_phi, w_h, u_h = rng.normal(size=(4, 4, 4)) / 2
    >>> b_gamma, b_phi, b_h = rng.normal(size=(3, 4))
    >>> args = (x, x_f, y, w_gamma, b_gamma, w_phi, b_phi, w_h, u_h, b_h)
    >>> bool(np.allclose(gated_residual_loop(*args), gated_residual(*args)))
    True
    """
    x, x_f, y, (wg, bg, wp, bp, wh, uh, bh) = _gate_args(x, x_f, y, w_gamma, b_gamma, w_phi, b_phi, w_h, u_h, b_h)
    d, dv = x.shape[-1], y.shape[-1]
    sig = _sigmoid
    o = np.empty(x.shape)
    for b in np.ndindex(*x.shape[:-2]):
        for t in range(x.shape[-2]):
            gamma = []
            for j in range(dv):
                s = sum(x_f[b][t, i] * wg[i, j] for i in range(d)) + bg[j]
                gamma.append(s * sig(s))  # γ_j = SiLU(·)
            for c in range(d):
                phi = sig(sum(x_f[b][t, i] * wp[i, c] for i in range(d)) + bp[c])  # φ_c
                s = sum(x_f[b][t, i] * wh[i, c] for i in range(d)) + sum(gamma[j] * y[b][t, j] * uh[j, c] for j in range(dv)) + bh[c]
                o[b][t, c] = phi * (s * sig(s)) + (1.0 - phi) * x[b][t, c]  # o = φ z + (1 − φ) x
    return o


# ---------------------------------------------------------------------------------------------
# Parameters and the layer
# ---------------------------------------------------------------------------------------------


def init_focus_params(d, *, n_bank=1, oversample=2, hidden=16, kernel_len=64, d_head=None, rng=None):
    """Deterministic random parameters of one Focus layer, Eqs. (14.1)–(14.16) (no training: the reference is the forward map).

    Shapes follow :func:`focus_layer`: ``conv_kernel (kernel_len, d)`` ~ N(0, 0.02²) (ten times the
    N(0, 0.002²) ``weight_init="random"`` initialization of Fu et al.'s released code, so that the
    convolution is not negligible in the chapter's small examples), ``conv_skip (d,)`` ~ N(1, 0.1²),
    ``conv_squash = 0`` (no soft threshold). In that code the threshold λ is a constructor argument
    with default 0.1, which is 50 of their standard deviations and zeros every tap (at this
    scale, 5 standard deviations: it would zero all but a fraction below 6e-7 of the taps); their
    training configurations set λ = 0.001–0.004, 0.5 to 2 of their standard deviations. Fu et al.'s
    code: repository HazyResearch/safari on GitHub, commit 26f6223 (``standalone_long_convs.py``,
    ``kernel_lam=0.1``; ``configs/model/layer/long-conv.yaml`` and
    ``configs/experiment/{cifar,lra}/long-conv-*.yaml``, ``lam``) and commit 1b65a99
    (``safari/models/sequence/long_conv_kernel.py``, ``lam=0.1``). The MLP ``oversample → hidden
    → 2·n_bank`` with Glorot-normal weights and zero biases; projections ``w_q, w_k (d, d_head)``,
    ``w_v (d, d)`` and the gates Glorot-normal, with ``b_phi = −1`` (the update gate starts
    mostly closed) and the other biases zero.

    Parameters
    ----------
    d : int
        Width D.
    n_bank, oversample, hidden, kernel_len : int
        F, O, the MLP's hidden width, the global-convolution kernel length K.
    d_head : int, optional
        Query/key width d_k (default d).
    rng : numpy.random.Generator | int | None

    Returns
    -------
    dict of ndarray

    Examples
    --------
    >>> params = init_focus_params(4, kernel_len=16, rng=0)
    >>> sorted(params)[:4]
    ['b_gamma', 'b_h', 'b_phi', 'conv_kernel']
    >>> bool(np.array_equal(params['conv_kernel'], init_focus_params(4, kernel_len=16, rng=0)['conv_kernel']))  # deterministic
    True
    """
    d = as_int(d, "d", 1)
    F = as_int(n_bank, "n_bank", 1)
    O = as_int(oversample, "oversample", 1)
    hid = as_int(hidden, "hidden", 1)
    K = as_int(kernel_len, "kernel_len", 1)
    dk = d if d_head is None else as_int(d_head, "d_head", 1)
    rng = as_rng(rng)

    def glorot(n_in, n_out):
        return rng.normal(0.0, math.sqrt(2.0 / (n_in + n_out)), size=(n_in, n_out))

    return {
        "conv_kernel": rng.normal(0.0, 0.02, size=(K, d)),
        "conv_skip": rng.normal(1.0, 0.1, size=d),
        "conv_squash": np.array(0.0),
        "mlp_w1": glorot(O, hid),
        "mlp_b1": np.zeros(hid),
        "mlp_w2": glorot(hid, 2 * F),
        "mlp_b2": np.zeros(2 * F),
        "w_q": glorot(d, dk),
        "w_k": glorot(d, dk),
        "w_v": glorot(d, d),
        "w_gamma": glorot(d, d),
        "b_gamma": np.zeros(d),
        "w_phi": glorot(d, d),
        "b_phi": -np.ones(d),
        "w_h": glorot(d, d),
        "u_h": glorot(d, d),
        "b_h": np.zeros(d),
    }


def _layer(x, params, variant, chunk_size, n_bins, n_fft, first_bin, return_intermediates, loop):
    x = _signal(x)
    p = _check_params(params, x)
    check_option(variant, "variant", VARIANTS)
    return_intermediates = as_bool(return_intermediates, "return_intermediates")
    hyper, filt, attn, gate = (
        (hypernetwork_loop, adaptive_filter_loop, chunked_attention_loop, gated_residual_loop)
        if loop
        else (hypernetwork, adaptive_filter, chunked_attention, gated_residual)
    )
    theta = hyper(x, p, n_bins=n_bins, first_bin=first_bin)  # Θ' (P-1 … P-3)
    x_f = filt(x, theta, variant=variant, n_fft=n_fft)  # P-4 … P-8 (or P-32)
    y = attn(x, x_f, p["w_q"], p["w_k"], p["w_v"], chunk_size=chunk_size)  # P-9, P-10
    o = gate(x, x_f, y, p["w_gamma"], p["b_gamma"], p["w_phi"], p["b_phi"], p["w_h"], p["u_h"], p["b_h"])  # P-11 … P-14
    if return_intermediates:
        return o, {"theta": theta, "x_f": x_f, "y": y}
    return o


@guard_overflow(first_only=True)
def focus_layer(x, params, *, variant="causal-recursive", chunk_size, n_bins, n_fft=None, first_bin="zero", return_intermediates=False):
    r"""One Focus layer: hypernetwork → adaptive IIR filtering → chunked attention → gates.

    Implements Eqs. (14.1)–(14.16) of the book (Lutati et al. 2023, Fig. 1b, Eqs. 1–14).

    Parameters
    ----------
    x : array_like, shape (..., L, D)
    params : dict
        See :func:`init_focus_params`.
    variant : {"causal-recursive", "causal-circular", "literal"}
        How each bin is filtered (see :func:`adaptive_filter`). Only ``"causal-recursive"`` makes
        the layer causal; the other two leak back to the start of the bin.
    chunk_size : int
        Attention chunk length M (must divide L).
    n_bins : int
        Number of time bins (``n_bins · O`` must divide L). Nothing is padded: pad ``x``
        explicitly (zeros at the end do not change earlier outputs of the causal variant).
    n_fft : int ≥ L / n_bins, optional
        Per-bin FFT length of the FFT variants.
    first_bin : {"zero", "mlp-zero"}
        Θ'[0], see :func:`hypernetwork`.
    return_intermediates : bool
        Also return ``{"theta": Θ', "x_f": x_f, "y": y}``.

    Returns
    -------
    o : ndarray, shape (..., L, D)
    intermediates : dict, only if ``return_intermediates``.

    Notes
    -----
    Cost ``O(D L log L)`` (global convolution) ``+ O(D L log R)`` (per-bin filtering)
    ``+ O(L M d)`` (attention): linear in L up to logs for fixed R and M (Eqs. 27, 28).

    Every θ from the sigmoid lies in (0, 1)², inside the stability triangle (Eq. 13.13). In
    float64 a pre-activation above about 37 rounds σ to exactly 1.0. For θ₁ that is a pole pair
    on the unit circle (``|p|² = θ₁``): the filter step raises ``ValueError`` naming ``theta``
    instead of returning a marginal result. ``θ₀ = 1.0`` is still a stable filter while
    ``θ₁ > 0`` (poles ``(−1 ± sqrt(1 − 4θ₁))/2``, Eq. (14.4)) and the layer returns it; only if
    θ₁ also falls below about 1.1e-16 (pre-activation below about −37), so that ``1 + θ₁``
    rounds to 1 (a pole at −1), is it refused in the same way.

    Examples
    --------
    >>> p = init_focus_params(4, rng=0)
    >>> x = np.random.default_rng(1).normal(size=(64, 4))
    >>> focus_layer(x, p, chunk_size=16, n_bins=8).shape
    (64, 4)
    """
    return _layer(x, params, variant, chunk_size, n_bins, n_fft, first_bin, return_intermediates, loop=False)


@guard_overflow(first_only=True)
def focus_layer_loop(x, params, *, variant="causal-recursive", chunk_size, n_bins, n_fft=None, first_bin="zero", return_intermediates=False):
    """Loop twin of :func:`focus_layer`: the same composition of the loop twins.

    Examples
    --------
    >>> params = init_focus_params(2, kernel_len=8, rng=0)
    >>> x = np.random.default_rng(1).normal(size=(16, 2))
    >>> kw = dict(chunk_size=4, n_bins=4)
    >>> bool(np.allclose(focus_layer_loop(x, params, **kw), focus_layer(x, params, **kw)))
    True
    """
    return _layer(x, params, variant, chunk_size, n_bins, n_fft, first_bin, return_intermediates, loop=True)


def focus_op_counts(L, d, *, n_bins, chunk_size, n_bank=1):
    r"""The paper's operation counts (Eqs. 22–28), without constants, and full attention's.

    Implements Eq. (14.17) of the book. With ``R = L/n_bins``, ``M = chunk_size``, ``C = L/M``:

    ``global_conv = D L log₂L`` (Eq. 22), ``mlp = D F`` (Eq. 23, as written),
    ``chunked_fft = D F L log₂R`` (Eq. 24/25), ``attention = C M² D + C M D²`` (Eq. 26),
    ``total_p27 = D L log₂L + C M² D``, ``total_p28 = D L (log₂L + M)``, ``full_attention = L² D``.

    Since ``C M² = L M``, Eq. 27 and Eq. 28 agree; with a fixed number of chunks C (Table 6: C = 32)
    ``M = L/C`` and the attention term is ``L² D / C``: quadratic (§14.10 of the book).

    Returns
    -------
    dict of float

    Examples
    --------
    >>> counts = focus_op_counts(1024, 64, n_bins=16, chunk_size=64)
    >>> sorted(counts)
    ['attention', 'chunked_fft', 'full_attention', 'global_conv', 'mlp', 'total_p27', 'total_p28']
    """
    L = as_int(L, "L", 1)
    d = as_int(d, "d", 1)
    n_bins = _divides(as_int(n_bins, "n_bins", 1), "n_bins", L, "a number of bins")
    M = _divides(as_int(chunk_size, "chunk_size", 1), "chunk_size", L, "a chunk length")
    F = as_int(n_bank, "n_bank", 1)
    R, C = L // n_bins, L // M
    log2 = math.log2
    return {
        "global_conv": d * L * log2(L),
        "mlp": float(d * F),
        "chunked_fft": d * F * L * log2(R) if R > 1 else 0.0,
        "attention": float(C * M * M * d + C * M * d * d),
        "total_p27": d * L * log2(L) + C * M * M * d,
        "total_p28": d * L * (log2(L) + M),
        "full_attention": float(L * L * d),
    }


# ---------------------------------------------------------------------------------------------
# MEGA's multi-dimensional damped EMA (what Focus replaces)
# ---------------------------------------------------------------------------------------------


def _ema_args(alpha, delta, beta, eta):
    out = []
    alpha = as_real_array(alpha, "alpha", ndim=2)
    for v, name in ((alpha, "alpha"), (delta, "delta"), (beta, "beta"), (eta, "eta")):
        v = as_real_array(v, name, ndim=2)
        if v.shape != alpha.shape:
            raise ValueError(f"{name}: expected shape {alpha.shape} (D, h) like alpha, got shape {v.shape}")
        if name in ("alpha", "delta") and not np.all((v > 0) & (v < 1)):
            raise ValueError(f"{name}: expected values in (0, 1) (after the sigmoid), got range [{v.min():.6g}, {v.max():.6g}]")
        out.append(v)
    return out


def mega_ema_kernel(alpha, delta, beta, eta, n):
    r"""MEGA's EMA kernel ``K[l, j] = Σ_i η_ji α_ji β_ji (1 − α_ji δ_ji)^l``, ``l = 0 … n−1``.

    Implements Eq. (14.19) of the book (Ma et al. 2023, Eq. 3 unrolled). Each component is a
    first-order IIR with pole ``q = 1 − αδ ∈ (0, 1)`` — positive, i.e. monotone and low-pass,
    which Focus's ``θ ∈ (0, 1)²`` cannot produce. (MEGA's code also scales η by ``sqrt(1/h)``; fold
    that into ``eta``.)

    Parameters
    ----------
    alpha, delta : array_like, shape (D, h), values in (0, 1)
    beta, eta : array_like, shape (D, h)
    n : int ≥ 1

    Returns
    -------
    ndarray, shape (n, D)

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> alpha, delta = rng.uniform(0.1, 0.9, (2, 2, 3))
    >>> beta, eta = rng.normal(size=(2, 2, 3))
    >>> K = mega_ema_kernel(alpha, delta, beta, eta, 5)
    >>> K.shape, bool(np.allclose(K[1], np.sum(eta * alpha * beta * (1 - alpha * delta), axis=-1)))  # l = 1
    ((5, 2), True)
    """
    alpha, delta, beta, eta = _ema_args(alpha, delta, beta, eta)
    n = as_int(n, "n", 1)
    q = 1.0 - alpha * delta  # pole of each component
    powers = q[None] ** np.arange(n)[:, None, None]  # (n, D, h)
    return np.einsum("ldh,dh->ld", powers, eta * alpha * beta)


def _ema_x(x, alpha):
    x = _signal(x)
    if x.shape[-1] != alpha.shape[0]:
        raise ValueError(f"x: expected D = {alpha.shape[0]} channels (alpha.shape[0]), got shape {x.shape}")
    return x


def mega_ema(x, alpha, delta, beta, eta):
    r"""MEGA's multi-dimensional damped EMA, as a causal FFT convolution with :func:`mega_ema_kernel`.

    Implements Eq. (14.18)–(14.19) of the book: ``y[t, j] = Σ_{l ≤ t} K[l, j] x[t − l, j]``
    (zero-padded to 2L, so linear and causal). MEGA then forms ``SiLU(y + ω ⊙ x)``; that part is
    left to the caller.

    Parameters
    ----------
    x : array_like, shape (..., L, D)
    alpha, delta, beta, eta : array_like, shape (D, h)

    Returns
    -------
    ndarray, shape (..., L, D)

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> alpha, delta = rng.uniform(0.1, 0.9, (2, 2, 3))
    >>> beta, eta = rng.normal(size=(2, 2, 3))
    >>> x = rng.normal(size=(6, 2))
    >>> y = mega_ema(x, alpha, delta, beta, eta)
    >>> bool(np.allclose(y[:, 0], np.convolve(x[:, 0], mega_ema_kernel(alpha, delta, beta, eta, 6)[:, 0])[:6]))
    True
    """
    alpha, delta, beta, eta = _ema_args(alpha, delta, beta, eta)
    x = _ema_x(x, alpha)
    L = x.shape[-2]
    k = mega_ema_kernel(alpha, delta, beta, eta, L)
    n = 2 * L
    return np.fft.irfft(np.fft.rfft(x, n=n, axis=-2) * np.fft.rfft(k, n=n, axis=0), n=n, axis=-2)[..., :L, :]


def mega_ema_loop(x, alpha, delta, beta, eta):
    """Loop twin of :func:`mega_ema`: the recurrence ``h_t = α β x_t + (1 − αδ) h_{t−1}``, ``y_t = η·h_t``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> alpha, delta = rng.uniform(0.1, 0.9, (2, 2, 3))
    >>> beta, eta = rng.normal(size=(2, 2, 3))
    >>> x = rng.normal(size=(6, 2))
    >>> bool(np.allclose(mega_ema_loop(x, alpha, delta, beta, eta), mega_ema(x, alpha, delta, beta, eta)))
    True
    """
    alpha, delta, beta, eta = _ema_args(alpha, delta, beta, eta)
    x = _ema_x(x, alpha)
    D, H = alpha.shape
    y = np.empty(x.shape)
    for b in np.ndindex(*x.shape[:-2]):
        for j in range(D):
            for i in range(H):
                h = 0.0
                for t in range(x.shape[-2]):
                    h = alpha[j, i] * beta[j, i] * x[b][t, j] + (1.0 - alpha[j, i] * delta[j, i]) * h  # (14.18)
                    y[b][t, j] = (y[b][t, j] if i else 0.0) + eta[j, i] * h  # y = η^T h
    return y
