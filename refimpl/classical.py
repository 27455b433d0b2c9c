r"""Classical adaptive filters beside attention: matched filter, Wiener, LMS/RLS, beamforming.

Chapter 6 of the book (``notebooks/06-classical-adaptive-filters.ipynb``) derives every
formula here. Each filter is a weighted sum of observations whose weights come from a template
(matched filter), from second-order statistics (Wiener–Hopf, MVDR), or from a recursion on the
data (LMS, RLS); attention computes its weights from the data by a softmax of correlations.

Glossary (code name → symbol in the book / Haykin, Van Trees)
--------------------------------------------------------------
``received``   r, shape (..., N): the received signal; ``template`` s, shape (L,): the pulse.
``r``          autocorrelation r_uu(ℓ), ℓ = 0..M−1, shape (M,): first column of the Toeplitz R.
``p``          cross-correlation p(ℓ) = E[d_n u_{n−ℓ}], shape (M,) (or (M, K) for K problems).
``w``          filter weights, shape (M,) (taps) or (n_sensors,) (array weights).
``u``, ``d``   input and desired signal of an adaptive filter, shape (..., N) (leading axes =
               independent runs); the regressor is u_n = (u_n, u_{n−1}, …, u_{n−M+1}).
``mu``         LMS step size μ; ``lam`` RLS forgetting factor λ; ``delta`` RLS initial
               regularization δ (P_0 = I/δ).
``psd_signal``, ``psd_noise``  S_x(ω_k), S_n(ω_k) on the FFT grid ω_k = 2πk/K, shape (K,).
``theta``      direction of arrival θ (radians from broadside); ``spacing`` sensor spacing in
               wavelengths (d/λ); ``n_sensors`` M of a uniform linear array (ULA).
``R``          spatial covariance E[x xᴴ] of array snapshots, shape (M, M), Hermitian PSD.
``x``          array snapshots, shape (T, M): one row per time instant.

References
----------
.. [1] S. Haykin, *Adaptive Filter Theory*, 5th ed., Pearson 2014: ch. 2 (Wiener–Hopf),
       ch. 6 (LMS), ch. 10 (RLS); Levinson–Durbin in ch. 3.
.. [2] N. Levinson, "The Wiener RMS error criterion in filter design and prediction",
       J. Math. Phys. 25, 1947; J. Durbin, Rev. Int. Stat. Inst. 28, 1960.
.. [3] H. L. Van Trees, *Optimum Array Processing*, Wiley 2002: ch. 2 (ULA, beampatterns),
       ch. 6 (MVDR).
.. [4] J. Capon, "High-resolution frequency-wavenumber spectrum analysis", Proc. IEEE 57, 1969.
.. [5] G. L. Turin, "An introduction to matched filters", IRE Trans. Inf. Theory 6(3), 1960.
.. [6] A. Feuer and E. Weinstein, "Convergence analysis of LMS filters with uncorrelated Gaussian
       data", IEEE Trans. Acoust., Speech, Signal Process. 33(1), 1985.
"""

from __future__ import annotations

import cmath
import math

import numpy as np
import scipy.linalg

from ._validate import (
    hermitian_part,
    pow2_scale,
    guard_overflow,
    as_bool,
    as_int,
    as_array,
    as_complex_array,
    as_positive_scalar,
    as_real_array,
    check_hermitian_psd,
)

__all__ = [
    "lfm_pulse",
    "matched_filter",
    "matched_filter_loop",
    "autocorrelation",
    "cross_correlation",
    "wiener_hopf",
    "wiener_hopf_loop",
    "ar1_psd",
    "wiener_smoother_response",
    "wiener_smoother_weights",
    "wiener_smoother_weights_loop",
    "lms",
    "lms_loop",
    "rls",
    "rls_loop",
    "steering_vector",
    "das_weights",
    "mvdr_weights",
    "mvdr_weights_loop",
    "beampattern",
    "beampattern_loop",
    "dirichlet_beampattern",
    "sample_covariance",
    "beamform",
    "bartlett_spectrum",
    "capon_spectrum",
    "capon_spectrum_loop",
]


# ---------------------------------------------------------------------------------------------
# Matched filter / pulse compression, Eqs. (6.1)-(6.2)
# ---------------------------------------------------------------------------------------------


def lfm_pulse(n_samples: int, bandwidth: float) -> np.ndarray:
    r"""A complex linear-FM ("chirp") pulse sweeping −B/2 … B/2 cycles per sample.

    ``s_m = exp(iπ B (m − c)² / L)``, c = (L − 1)/2, m = 0..L−1: instantaneous frequency
    ``B (m − c)/L`` cycles/sample. Used as the radar template of Eq. (6.1); its
    autocorrelation has a main lobe of width ≈ 1/B samples (pulse compression, Eq. (6.2)).

    Parameters
    ----------
    n_samples : int
        L.
    bandwidth : float in (0, 1]
        B, in cycles per sample.

    Returns
    -------
    ndarray of complex, shape (L,), unit modulus.

    Examples
    --------
    >>> s = lfm_pulse(16, 0.25)
    >>> s.shape, bool(np.allclose(np.abs(s), 1.0))  # unit modulus: only the phase sweeps
    ((16,), True)
    """
    n = as_int(n_samples, "n_samples", 1)
    b = as_positive_scalar(bandwidth, "bandwidth")
    if b > 1.0:
        raise ValueError(f"bandwidth: expected a value in (0, 1] cycles/sample, got {b!r}")
    m = np.arange(n) - (n - 1) / 2.0
    return np.exp(1j * np.pi * b * m * m / n)


def _check_mf(received, template):
    r = as_array(received, "received")
    s = as_array(template, "template", ndim=1)
    if r.ndim < 1:
        raise ValueError(f"received: expected shape (..., N), got shape {r.shape}")
    if s.size == 0:
        raise ValueError("template: expected at least one sample, got shape (0,)")
    if r.shape[-1] < s.size:
        raise ValueError(f"received: expected at least L = {s.size} samples (the template length), got shape {r.shape}")
    if not np.any(s != 0):
        raise ValueError("template: expected a nonzero template")
    return r, s


def _window_energy(r: np.ndarray, L: int) -> np.ndarray:
    """Σ_{m<L} |r_{n+m}|² for n = 0..N−L, summed window by window (no cancellation of running sums)."""
    return np.sum(np.lib.stride_tricks.sliding_window_view(np.abs(r) ** 2, L, axis=-1), axis=-1)


@guard_overflow()
def matched_filter(received, template, *, normalize: bool = False) -> np.ndarray:
    r"""Matched-filter output ``y_n = Σ_m s̄_m r_{n+m}`` for every delay n = 0..N−L.

    Implements Eqs. (6.1)–(6.2) of the book (Turin 1960): correlation with the template, the
    SNR-optimal linear detector in white noise; computed by FFT (pulse compression).

    Parameters
    ----------
    received : array_like, shape (..., N)
        Real or complex.
    template : array_like, shape (L,)
        The known pulse s, L <= N, not all zero.
    normalize : bool
        Return the normalized matched filter ``y_n / (‖s‖ ‖r_{n:n+L}‖)`` ∈ [−1, 1] (0 where the
        window is 0): the cosine similarity between template and window.

    Returns
    -------
    ndarray, shape (..., N − L + 1)
        Real if both inputs are real, complex otherwise.

    Notes
    -----
    Equals ``np.correlate(received, template, "valid")`` (which conjugates its second
    argument). The FFT length is the next power of two ≥ N + L − 1 (linear, not circular,
    correlation).

    Examples
    --------
    >>> s = lfm_pulse(8, 0.3)
    >>> r = np.concatenate([np.zeros(5), s, np.zeros(4)])
    >>> int(np.argmax(np.abs(matched_filter(r, s))))  # the delay of the pulse
    5
    >>> round(float(np.max(np.abs(matched_filter(r, s, normalize=True)))), 12)  # a perfect match
    1.0
    """
    r, s = _check_mf(received, template)
    normalize = as_bool(normalize, "normalize")
    if normalize:  # scale-invariant in r and s: exact power-of-two rescaling keeps |x|² in range
        (r, _), (s, _) = pow2_scale(r), pow2_scale(s)
    n, L = r.shape[-1], s.size
    nfft = 1 << (n + L - 2).bit_length()  # ≥ N + L − 1: no circular wrap-around
    # y_n = Σ_m conj(s_m) r_{n+m}: convolution of r with the time-reversed conjugate template
    y = np.fft.ifft(np.fft.fft(r, nfft) * np.fft.fft(np.conj(s[::-1]), nfft), axis=-1)[..., L - 1 : n]
    if not (np.iscomplexobj(r) or np.iscomplexobj(s)):
        y = y.real
    if normalize:
        energy = np.sqrt(_window_energy(r, L)) * np.linalg.norm(s)
        y = np.divide(y, energy, out=np.zeros_like(y), where=energy > 0)
    return y


@guard_overflow()
def matched_filter_loop(received, template, *, normalize: bool = False) -> np.ndarray:
    """Loop twin of :func:`matched_filter`: the correlation sum at each delay (Eq. (6.1)).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> r, s = rng.normal(size=20) + 1j * rng.normal(size=20), lfm_pulse(5, 0.3)
    >>> bool(np.allclose(matched_filter_loop(r, s), matched_filter(r, s)))
    True
    """
    r, s = _check_mf(received, template)
    normalize = as_bool(normalize, "normalize")
    if normalize:  # scale-invariant in r and s: exact power-of-two rescaling keeps |x|² in range
        (r, _), (s, _) = pow2_scale(r), pow2_scale(s)
    n, L = r.shape[-1], s.size
    complex_out = np.iscomplexobj(r) or np.iscomplexobj(s)
    y = np.zeros((*r.shape[:-1], n - L + 1), dtype=complex if complex_out else float)
    s_norm = math.sqrt(sum(abs(c) ** 2 for c in s))
    for b in np.ndindex(*r.shape[:-1]):
        for delay in range(n - L + 1):
            acc = sum(np.conj(s[m]) * r[b][delay + m] for m in range(L))  # Σ_m s̄_m r_{n+m}
            if normalize:
                e = math.sqrt(sum(abs(r[b][delay + m]) ** 2 for m in range(L)))
                acc = acc / (s_norm * e) if e > 0 else 0.0
            y[b][delay] = acc
    return y


# ---------------------------------------------------------------------------------------------
# Wiener-Hopf, Eqs. (6.3)-(6.5)
# ---------------------------------------------------------------------------------------------


def _check_1d_signal(x, name):
    x = as_real_array(x, name)
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"{name}: expected shape (..., N) with N >= 1, got shape {x.shape}")
    return x


@guard_overflow()
def autocorrelation(x, n_lags: int) -> np.ndarray:
    r"""Biased autocorrelation estimate ``r(ℓ) = (1/N) Σ_{n=ℓ}^{N−1} x_n x_{n−ℓ}``, ℓ = 0..n_lags−1.

    The biased (1/N) estimate keeps the Toeplitz matrix of Eq. (6.3) positive semidefinite.

    Parameters
    ----------
    x : array_like, shape (..., N)
    n_lags : int
        M ≤ N.

    Returns
    -------
    ndarray, shape (..., M)

    Examples
    --------
    >>> autocorrelation(np.array([1.0, -1.0, 1.0, -1.0]), 3).tolist()  # (1/N) Σ x_n x_{n−ℓ}
    [1.0, -0.75, 0.5]
    """
    x = _check_1d_signal(x, "x")
    if as_int(n_lags, "n_lags", 1) > x.shape[-1]:
        raise ValueError(f"n_lags: expected at most N = {x.shape[-1]} (the length of x), got {n_lags}")
    return cross_correlation(x, x, n_lags)


def cross_correlation(d, u, n_lags: int) -> np.ndarray:
    r"""Biased cross-correlation estimate ``p(ℓ) = (1/N) Σ_{n=ℓ}^{N−1} d_n u_{n−ℓ}``, ℓ = 0..n_lags−1: Eq. (6.3) of the book.

    The right-hand side of the Wiener–Hopf equations (6.3): the correlation of the desired
    signal with the input delayed by ℓ.

    Parameters
    ----------
    d, u : array_like, shape (..., N)
    n_lags : int
        M ≤ N.

    Returns
    -------
    ndarray, shape (..., M)

    Examples
    --------
    >>> u = np.array([1.0, 2.0, 0.0, -1.0])
    >>> cross_correlation(np.roll(u, 1), u, 3).tolist()  # d is u delayed by one sample
    [0.25, 1.25, 0.5]
    """
    d = _check_1d_signal(d, "d")
    u = _check_1d_signal(u, "u")
    if d.shape[-1] != u.shape[-1]:
        raise ValueError(f"u: expected the length N = {d.shape[-1]} of d, got shape {u.shape}")
    m = as_int(n_lags, "n_lags", 1)
    n = d.shape[-1]
    if m > n:
        raise ValueError(f"n_lags: expected at most N = {n}, got {m}")
    return np.stack([np.sum(d[..., ell:] * u[..., : n - ell], axis=-1) / n for ell in range(m)], axis=-1)


def _check_wiener_hopf(r, p):
    r = as_real_array(r, "r", ndim=1)
    if r.size == 0:
        raise ValueError("r: expected at least one lag, got shape (0,)")
    if r[0] <= 0:
        raise ValueError(f"r: expected r[0] > 0 (a variance), got {r[0]!r}")
    p = as_real_array(p, "p", ndim=(1, 2))
    if p.shape[0] != r.size:
        raise ValueError(f"p: expected {r.size} rows (the length of r), got shape {p.shape}")
    return r, p


#: both Wiener–Hopf twins refuse R when its eigenvalues (``scipy.linalg.eigvalsh`` of the dense Toeplitz matrix)
#: have λ_min <= λ_max / this: R is then not positive definite (λ_min <= 0) or cond₂(R) = λ_max/λ_min >= 1e14, where
#: the relative error bound of a solve, about cond₂(R) times the unit roundoff 2⁻⁵³, reaches 1 %. A Levinson–Durbin
#: test alone (1 − ε² small at some order, ε the coefficient of Eq. (6.5)) misses an R whose prediction-error power
#: falls gradually over many orders: r(k) = exp(−k²/128), M = 12, has cond₂(R) = 1.4e19 (in 60-digit arithmetic;
#: rounding its entries to float64 already moves λ_min by more than its size, chapter 6, §6.2) and 1 − ε² > 0.015 at
#: every order.
_MAX_COND_R = 1e14


def _check_toeplitz(r: np.ndarray) -> None:
    """Refuse a Toeplitz R (first column ``r``) that is not positive definite or has cond₂(R) >= 1e14.

    The one conditioning test of both :func:`wiener_hopf` and :func:`wiener_hopf_loop`, so that the twins refuse
    the same inputs. A dense eigenvalue computation, O(M³).
    """
    lam = scipy.linalg.eigvalsh(scipy.linalg.toeplitz(r))
    if not lam[0] > lam[-1] / _MAX_COND_R:
        raise ValueError(
            "r: the Toeplitz autocorrelation matrix is not positive definite or is numerically singular "
            f"(its eigenvalues have λ_min = {lam[0]:.3g} <= λ_max / {_MAX_COND_R:g} = {lam[-1] / _MAX_COND_R:.3g}: "
            f"R is not positive definite or cond(R) >= {_MAX_COND_R:g})"
        )


def wiener_hopf(r, p) -> np.ndarray:
    r"""FIR Wiener filter: solve the Wiener–Hopf equations ``R w = p`` with Toeplitz ``R_ij = r(|i−j|)``.

    Implements Eq. (6.3) of the book (Haykin 2014, ch. 2), by ``scipy.linalg.solve_toeplitz``
    (Levinson recursion in compiled code, O(M²)). The conditioning check before it computes the eigenvalues
    of the dense ``R`` (O(M³)).

    Parameters
    ----------
    r : array_like, shape (M,)
        Autocorrelation of the input, r(0) > 0; ``R`` must be positive definite with cond₂(R) < 1e14.
    p : array_like, shape (M,) or (M, K)
        Cross-correlation of the desired signal with the delayed input (K right-hand sides).

    Returns
    -------
    w : ndarray, shape (M,) or (M, K)
        The optimal taps; the minimum MSE is ``J_min = σ_d² − pᵀw`` (Eq. (6.4)).

    Raises
    ------
    ValueError
        If the eigenvalues of ``R`` (``scipy.linalg.eigvalsh`` of the dense matrix) have
        ``λ_min <= λ_max / 1e14``: ``R`` is not positive definite, or cond₂(R) >= 1e14, where the
        relative error of a solve, up to about cond₂(R) times the unit roundoff 2⁻⁵³, reaches 1 %. The test bounds
        cond₂(R); a test on the Levinson–Durbin coefficients of (6.5) alone would pass an ``R`` whose
        prediction-error power falls gradually over many orders. :func:`wiener_hopf_loop` applies the
        same test (the same function), so the twins refuse the same inputs.

    Examples
    --------
    >>> r = 0.5 ** np.arange(3) / (1 - 0.25)  # AR(1) autocorrelation, a = 0.5, q = 1
    >>> wiener_hopf(r, r * 0.5).round(12).tolist()  # one-step predictor: w = [a, 0, 0]
    [0.5, 0.0, -0.0]
    """
    r, p = _check_wiener_hopf(r, p)
    _check_toeplitz(r)  # R positive definite with cond₂(R) < 1e14
    return scipy.linalg.solve_toeplitz(r, p)  # R w = p, Eq. (6.3)


def wiener_hopf_loop(r, p) -> np.ndarray:
    r"""Loop twin of :func:`wiener_hopf`: the Levinson–Durbin recursion written out (Eq. (6.5)).

    Order by order, the forward vector ``f`` (``R_n f = e_1``) and the solution ``x``
    (``R_n x = p_{0:n}``) are extended: with ``ε = Σ_i r(n−i) f_i`` (the partial autocorrelation
    φ_nn, i.e. the last coefficient of the order-n Yule–Walker predictor, which Durbin's recursion
    computes; Haykin's reflection coefficient is ``κ = −ε``), ``f ← ([f; 0] − ε [0; f̃]) / (1 − ε²)``
    (``f̃`` reversed) and ``x ← [x; 0] + (p_n − Σ_i r(n−i) x_i) f̃_new``. Raises ValueError exactly
    where :func:`wiener_hopf` does (the same check, also with no right-hand side): where the eigenvalues of
    ``R`` have ``λ_min <= λ_max / 1e14`` (not positive definite, or cond₂(R) >= 1e14).

    Examples
    --------
    >>> r, p = 0.9 ** np.arange(4), 0.9 ** np.arange(1, 5)
    >>> bool(np.allclose(wiener_hopf_loop(r, p), wiener_hopf(r, p)))
    True
    """
    r, p = _check_wiener_hopf(r, p)
    _check_toeplitz(r)  # the test of wiener_hopf: R positive definite with cond₂(R) < 1e14
    cols = p[:, None] if p.ndim == 1 else p
    m, k = r.size, cols.shape[1]
    f = [1.0 / r[0]]  # R_1 f = e_1
    xs = [[cols[0, c] / r[0]] for c in range(k)]  # R_1 x = p_0, one solution per right-hand side
    for n in range(1, m):
        eps = sum(r[n - i] * f[i] for i in range(n))  # last entry of R_{n+1} [f; 0]
        den = 1.0 - eps * eps  # (R_{n+1}[f; 0] − ε R_{n+1}[0; f̃]) = (1 − ε²) e_1; 1 − ε² >= 1/cond₂(R) in exact arithmetic
        fe, be = f + [0.0], [0.0] + f[::-1]  # [f; 0] and [0; f̃]
        f = [(a - eps * b) / den for a, b in zip(fe, be)]  # R_{n+1} f = e_1
        for c in range(k):
            x = xs[c]
            err = cols[n, c] - sum(r[n - i] * x[i] for i in range(n))  # p_n − (R_{n+1}[x; 0])_n
            xs[c] = [a + err * b for a, b in zip(x + [0.0], f[::-1])]  # f̃ solves R_{n+1} f̃ = e_{n+1}
    out = np.zeros(cols.shape)
    for c in range(k):
        out[:, c] = xs[c]
    return out[:, 0] if p.ndim == 1 else out


# ---------------------------------------------------------------------------------------------
# Non-causal Wiener smoother in frequency, Eqs. (6.9)-(6.10)
# ---------------------------------------------------------------------------------------------


def ar1_psd(a: float, q: float, n_fft: int) -> np.ndarray:
    r"""PSD ``S_x(ω) = q / |1 − a e^{−iω}|²`` of the AR(1) process x_n = a x_{n−1} + w_n, Var w = q.

    Sampled on the FFT grid ω_k = 2πk/K, k = 0..K−1 (the input of Eq. (6.9)).

    Parameters
    ----------
    a : float, |a| < 1
    q : float > 0
    n_fft : int
        K.

    Returns
    -------
    ndarray, shape (K,)

    Examples
    --------
    >>> S = ar1_psd(0.5, 1.0, 4)  # at ω = 0, π/2, π, 3π/2
    >>> S.round(6).tolist()  # q / |1 − a e^{−iω}|²
    [4.0, 0.8, 0.444444, 0.8]
    """
    a = float(as_real_array(a, "a", ndim=0))
    if not abs(a) < 1:
        raise ValueError(f"a: expected |a| < 1 (a stationary AR(1) process), got {a!r}")
    q = as_positive_scalar(q, "q")
    k = as_int(n_fft, "n_fft", 1)
    w = 2 * np.pi * np.arange(k) / k
    return q / np.abs(1.0 - a * np.exp(-1j * w)) ** 2


def _check_psd_pair(psd_signal, psd_noise):
    sx = as_real_array(psd_signal, "psd_signal", ndim=1)
    sn = as_real_array(psd_noise, "psd_noise", ndim=(0, 1))
    sn = np.broadcast_to(sn, sx.shape) if sn.ndim == 0 else sn
    if sn.shape != sx.shape:
        raise ValueError(f"psd_noise: expected shape {sx.shape} (as psd_signal) or a scalar, got shape {sn.shape}")
    if sx.size == 0:
        raise ValueError("psd_signal: expected at least one frequency, got shape (0,)")
    if np.any(sx < 0):
        raise ValueError(f"psd_signal: expected values >= 0, got minimum {sx.min():.6g}")
    if np.any(sn < 0):
        raise ValueError(f"psd_noise: expected values >= 0, got minimum {sn.min():.6g}")
    if np.any(sx + sn <= 0):
        raise ValueError("psd_noise: S_x + S_n must be > 0 at every frequency")
    return sx, sn


def wiener_smoother_response(psd_signal, psd_noise) -> np.ndarray:
    r"""Frequency response ``H(ω) = S_x(ω) / (S_x(ω) + S_n(ω))`` of the non-causal Wiener smoother.

    Implements Eq. (6.9) of the book (Haykin 2014, ch. 2; Wiener 1949) for ``u = x + n`` with
    independent signal and noise.

    Parameters
    ----------
    psd_signal : array_like, shape (K,)
        S_x on the FFT grid ω_k = 2πk/K.
    psd_noise : array_like, shape (K,) or scalar
        S_n (a scalar for white noise of that variance).

    Returns
    -------
    ndarray, shape (K,), values in [0, 1].

    Examples
    --------
    >>> wiener_smoother_response(np.array([3.0, 1.0, 0.0]), np.array([1.0, 1.0, 1.0])).tolist()  # S_x / (S_x + S_n)
    [0.75, 0.5, 0.0]
    """
    sx, sn = _check_psd_pair(psd_signal, psd_noise)
    return sx / (sx + sn)


def wiener_smoother_weights(psd_signal, psd_noise) -> tuple[np.ndarray, np.ndarray]:
    r"""Two-sided impulse response ``h_ℓ = (1/K) Σ_k H(ω_k) e^{iω_kℓ}`` of the Wiener smoother.

    Implements Eq. (6.10) of the book: the smoother estimates ``x̂_n = Σ_ℓ h_ℓ u_{n−ℓ}``. The
    inverse DFT on K points is the periodization ``Σ_j h_{ℓ+jK}`` of the true response: use a
    grid long enough that the tails have decayed.

    Parameters
    ----------
    psd_signal, psd_noise
        As in :func:`wiener_smoother_response`.

    Returns
    -------
    lags : ndarray of int, shape (K,)
        ℓ = −⌊K/2⌋, …, ⌈K/2⌉ − 1.
    h : ndarray, shape (K,)
        Real when the PSDs are even in ω (always, for real processes).

    Examples
    --------
    >>> lags, h = wiener_smoother_weights(ar1_psd(0.9, 1.0, 64), np.full(64, 0.5))
    >>> lags.shape, int(lags[np.argmax(h)])  # two-sided, largest at lag 0
    ((64,), 0)
    """
    H = wiener_smoother_response(psd_signal, psd_noise)
    k = H.size
    h = np.fft.ifft(H)  # h_ℓ for ℓ = 0..K−1 (mod K)
    lags = np.arange(k) - k // 2
    h = np.fft.fftshift(h)  # reorder to ℓ = −K/2 .. K/2 − 1
    return lags, (h.real if np.max(np.abs(h.imag), initial=0.0) <= 1e-12 * np.max(np.abs(h)) else h)


def wiener_smoother_weights_loop(psd_signal, psd_noise) -> tuple[np.ndarray, np.ndarray]:
    """Loop twin of :func:`wiener_smoother_weights`: the inverse DFT as a sum per lag (Eq. (6.10)).

    Examples
    --------
    >>> Sx, Sn = ar1_psd(0.9, 1.0, 16), np.full(16, 0.5)
    >>> bool(np.allclose(wiener_smoother_weights_loop(Sx, Sn)[1], wiener_smoother_weights(Sx, Sn)[1]))
    True
    """
    H = wiener_smoother_response(psd_signal, psd_noise)
    k = H.size
    lags = np.arange(k) - k // 2
    h = np.zeros(k, dtype=complex)
    for idx, ell in enumerate(lags):
        h[idx] = sum(H[j] * cmath.exp(2j * math.pi * j * ell / k) for j in range(k)) / k  # (1/K) Σ_k H_k e^{iω_kℓ}
    return lags, (h.real if np.max(np.abs(h.imag), initial=0.0) <= 1e-12 * np.max(np.abs(h)) else h)


# ---------------------------------------------------------------------------------------------
# LMS and RLS, Eqs. (6.6)-(6.8)
# ---------------------------------------------------------------------------------------------


def _check_adaptive(u, d, n_taps, w0):
    u = _check_1d_signal(u, "u")
    d = _check_1d_signal(d, "d")
    if u.shape != d.shape:
        raise ValueError(f"d: expected the shape of u {u.shape}, got shape {d.shape}")
    m = as_int(n_taps, "n_taps", 1)
    if w0 is None:
        w0 = np.zeros(m)
    else:
        w0 = as_real_array(w0, "w0", ndim=1)
        if w0.shape != (m,):
            raise ValueError(f"w0: expected shape ({m},) (n_taps), got shape {w0.shape}")
    return u, d, m, w0


def _regressors(u: np.ndarray, m: int) -> np.ndarray:
    """U[..., n, i] = u[..., n − i] (zero before the start), shape (..., N, M)."""
    padded = np.concatenate([np.zeros((*u.shape[:-1], m - 1)), u], axis=-1)
    return np.lib.stride_tricks.sliding_window_view(padded, m, axis=-1)[..., ::-1]


_LMS_DIVERGED = (
    "mu: the LMS recursion diverged (its weights overflowed float64): mu is too large for the power of u. "
    "For independent regressors, 0 < mu < 2/lambda_max(R) (R the autocorrelation matrix of the regressors) makes "
    "only the mean of the weights converge; the mean-square error stays bounded, for independent Gaussian "
    "regressors, only while sum_i mu lambda_i / (2 (1 - mu lambda_i)) < 1 (Feuer & Weinstein 1985), which "
    "mu < 2/(3 tr R) guarantees (tr R = M E[u_n^2]; white input of power s2: mu < 2/((M + 2) s2)), and the "
    "regressors of a tapped delay line need a margin below that (chapter 6, §6.3): take a smaller mu"
)


@guard_overflow(hint=_LMS_DIVERGED)
def lms(u, d, n_taps: int, mu: float, *, w0=None) -> tuple[np.ndarray, np.ndarray]:
    r"""The least-mean-squares adaptive FIR filter, vectorized over independent runs.

    Implements Eq. (6.6) of the book (Widrow & Hoff 1960; Haykin 2014, ch. 6):
    ``e_n = d_n − w_{n−1}ᵀ u_n``, ``w_n = w_{n−1} + μ e_n u_n`` with the regressor
    ``u_n = (u_n, u_{n−1}, …, u_{n−M+1})`` (zeros before the start).

    Parameters
    ----------
    u, d : array_like, shape (..., N)
        Input and desired signal; leading axes are independent runs (ensemble averages).
    n_taps : int
        M.
    mu : float > 0
        Step size. For independent regressors, ``0 < μ < 2/λ_max(R)`` (R the autocorrelation matrix
        of the regressors) makes only the mean of ``w_n`` converge. For independent Gaussian regressors
        the mean-square error stays bounded exactly while ``ζ(μ) = Σ_i μλ_i / (2(1 − μλ_i)) < 1``
        (with ``μλ_max < 1``; Feuer & Weinstein 1985), which ``μ < 2/(3 tr R)`` guarantees, and the
        misadjustment is then ``ζ/(1 − ζ) ≈ μ tr R / 2``; for white input of power σ² the bound is
        ``μ < 2/((M + 2)σ²)``, against the mean's ``2/σ²``. The regressors of a tapped delay line share M − 1 entries, and
        there the theory holds only well below that bound (chapter 6, §6.3).
    w0 : array_like, shape (M,), optional
        Initial weights (default 0).

    Returns
    -------
    w : ndarray, shape (..., N, M)
        Weights after each update, ``w[..., n, :] = w_n``. A diverging recursion is returned as
        computed (weights of any size) until its weights overflow float64; then ``ValueError``.
    e : ndarray, shape (..., N)
        A-priori errors ``e_n``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> u = rng.normal(size=2000)
    >>> d = 0.5 * u + 0.2 * np.concatenate([[0.0], u[:-1]])  # an unknown 2-tap FIR
    >>> w, e = lms(u, d, 2, 0.05)
    >>> w.shape  # the taps after every step
    (2000, 2)
    >>> w[-1].round(2).tolist()  # converged to the unknown taps
    [0.5, 0.2]
    """
    u, d, m, w0 = _check_adaptive(u, d, n_taps, w0)
    mu = as_positive_scalar(mu, "mu")
    U = _regressors(u, m)
    w = np.broadcast_to(w0, (*u.shape[:-1], m)).copy()
    W = np.empty((*u.shape, m))
    e = np.empty(u.shape)
    for n in range(u.shape[-1]):  # the recursion is sequential in time; runs and taps are vectorized
        un = U[..., n, :]
        e[..., n] = d[..., n] - np.sum(w * un, axis=-1)  # e_n = d_n − wᵀu_n
        w += mu * e[..., n, None] * un  # w ← w + μ e_n u_n
        W[..., n, :] = w
    return W, e


@guard_overflow(hint=_LMS_DIVERGED)
def lms_loop(u, d, n_taps: int, mu: float, *, w0=None) -> tuple[np.ndarray, np.ndarray]:
    """Loop twin of :func:`lms`: one run, one time step and one tap at a time (Eq. (6.6)).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> u, d = rng.normal(size=(2, 50))
    >>> bool(np.allclose(lms_loop(u, d, 3, 0.05)[0], lms(u, d, 3, 0.05)[0]))
    True
    """
    u, d, m, w0 = _check_adaptive(u, d, n_taps, w0)
    mu = as_positive_scalar(mu, "mu")
    W = np.empty((*u.shape, m))
    e = np.empty(u.shape)
    for b in np.ndindex(*u.shape[:-1]):
        w = [float(c) for c in w0]
        for n in range(u.shape[-1]):
            reg = [u[b][n - i] if n - i >= 0 else 0.0 for i in range(m)]  # u_n = (u_n, …, u_{n−M+1})
            err = d[b][n] - sum(w[i] * reg[i] for i in range(m))
            w = [w[i] + mu * err * reg[i] for i in range(m)]
            e[b][n] = err
            W[b][n] = w
    return W, e


_RLS_OVERFLOW = (
    "lam: the RLS recursion overflowed float64 although no argument is extreme: with lam < 1, every sample "
    "multiplies P_n^-1 by lam before adding u_n u_n^T, so P_n grows like lam^-n in every direction the regressors "
    "leave unexcited (covariance wind-up): all directions over a silent stretch of u, and some directions throughout "
    "for an input that does not excite all n_taps of them (a constant for n_taps >= 2, a single sinusoid for "
    "n_taps >= 3); use lam closer to 1 (P_n then grows more slowly; with lam = 1 it does not grow), fewer taps, "
    "or leave out the silent stretches"
)


def _check_rls(lam, delta):
    lam = as_positive_scalar(lam, "lam")
    if lam > 1.0:
        raise ValueError(f"lam: expected a forgetting factor in (0, 1], got {lam!r}")
    return lam, as_positive_scalar(delta, "delta")


@guard_overflow(hint=_RLS_OVERFLOW)
def rls(u, d, n_taps: int, lam: float = 1.0, delta: float = 1e-2, *, w0=None) -> tuple[np.ndarray, np.ndarray]:
    r"""The recursive-least-squares adaptive FIR filter, vectorized over independent runs.

    Implements Eqs. (6.7)–(6.8) of the book (Haykin 2014, ch. 10): with ``P_0 = I/δ``,

    ``k_n = P_{n−1} u_n / (λ + u_nᵀ P_{n−1} u_n)``, ``e_n = d_n − w_{n−1}ᵀ u_n``,
    ``w_n = w_{n−1} + k_n e_n``, ``P_n = (P_{n−1} − k_n u_nᵀ P_{n−1}) / λ``.

    After the samples j = 1..n (1-based), ``w_n`` is exactly the exponentially weighted,
    regularized least-squares solution
    ``(Σ_{j≤n} λ^{n−j} u_j u_jᵀ + λ^n δ I)^{-1} (Σ_{j≤n} λ^{n−j} u_j d_j + λ^n δ w_0)`` (Eq. (6.8));
    in the returned 0-based array, ``w[..., n, :]`` has seen n + 1 samples.

    In floating point the recursion started from ``P_0 = I/δ`` degrades when δ is tiny against the
    input power: its first updates subtract numbers of size 1/δ to leave numbers of size 1/|u|²,
    with rounding errors proportional to 2⁻⁵³/δ. Where these are not small against 1/|u|², ``P``
    can be lost entirely: at δ = 1e-20 the computed ``P_n`` of the recursion is, for some inputs,
    exactly zero after a few samples, and the weights then stay frozen (chapter 6, §6.3, counts how
    many of its inputs this happens to). For a moderate δ the error acts as a spurious term in
    ``P_n⁻¹`` that λ = 1 never forgets: it is only diluted as data accumulate, and the relative
    error of ``w_n`` falls like 1/n. With λ < 1 a stretch of samples without excitation does the
    same (covariance wind-up): each such sample multiplies all of ``P_n⁻¹`` by λ — the data terms
    of (6.8) as well as its regularization — so ``P_n`` grows like λ⁻ⁿ; when excitation returns,
    ``P_n⁻¹`` is tiny against ``u_n u_nᵀ`` and the update cancels as at a tiny δ. After long enough
    a stretch ``P`` overflows float64 (``ValueError``). An input that never excites some directions
    of the regressors (a constant with M ≥ 2) winds ``P`` up in those directions throughout, and
    it overflows as well. This function therefore carries the information form of
    (6.8) along (``Φ_n = λ Φ_{n−1} + u_n u_nᵀ``, ``Φ_{−1} = δ I``, ``Φ_n = P_n⁻¹``) and, at a
    step whose update would cancel more than four digits (``u_nᵀ P_{n−1} u_n > 10⁴ λ``: at the
    start when δ is small against the input power, and when excitation returns after a wound-up
    stretch), takes ``P_n = Φ_n⁻¹`` instead — the same matrix in exact arithmetic. (In floating
    point, where such a step falls inside a long wind-up, the rounding errors of Φ_n can keep ``P``
    finite where the recursion overflows: for a sinusoid with M ≥ 3 the two twins can differ in
    whether they raise.) The loop twin :func:`rls_loop` runs the recursion from ``P_0 = I/δ`` as
    written; the two agree where
    ``u_nᵀ P_{n−1} u_n`` stays moderate against λ, that is, where neither δ nor ``P_n⁻¹`` at the end
    of a stretch without excitation (λⁿ times its value at the start, after n such samples) is tiny
    against the input power.

    Parameters
    ----------
    u, d : array_like, shape (..., N)
    n_taps : int
        M.
    lam : float in (0, 1]
        Forgetting factor λ.
    delta : float > 0
        Initial regularization δ.
    w0 : array_like, shape (M,), optional

    Returns
    -------
    w : ndarray, shape (..., N, M)
    e : ndarray, shape (..., N)
        A-priori errors.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> u = rng.normal(size=200)
    >>> d = 0.5 * u + 0.2 * np.concatenate([[0.0], u[:-1]])
    >>> w, e = rls(u, d, 2, lam=0.99)
    >>> w[-1].round(3).tolist()  # noise-free data: the unknown taps (the start-up δ fades)
    [0.5, 0.2]
    """
    u, d, m, w0 = _check_adaptive(u, d, n_taps, w0)
    lam, delta = _check_rls(lam, delta)
    U = _regressors(u, m)
    batch = u.shape[:-1]
    w = np.broadcast_to(w0, (*batch, m)).copy()
    W = np.empty((*u.shape, m))
    e = np.empty(u.shape)
    P = np.broadcast_to(np.eye(m) / delta, (*batch, m, m)).copy()  # P_0 = I/δ
    Phi = np.broadcast_to(np.eye(m) * delta, (*batch, m, m)).copy()  # Φ_{−1} = δ I: P⁻¹, for re-anchoring (docstring)
    for n in range(u.shape[-1]):
        un = U[..., n, :]
        Pu = np.einsum("...ij,...j->...i", P, un)  # P u_n
        s = np.sum(un * Pu, axis=-1)  # uᵀ P u
        k = Pu / (lam + s)[..., None]  # gain k_n
        e[..., n] = d[..., n] - np.sum(w * un, axis=-1)  # a-priori error
        w += k * e[..., n, None]  # w_n = w_{n−1} + k_n e_n
        Phi = lam * Phi + un[..., :, None] * un[..., None, :]
        P = _rls_next_P(P, k, Pu, Phi, lam, bool(np.any(s > _RLS_CANCEL * lam)))
        W[..., n, :] = w
    return W, e


#: the RLS update of P loses about log10(s / λ) digits to cancellation (s = uᵀ P u); beyond this many
#: (10⁴: four digits) :func:`rls` takes P from the information form instead
_RLS_CANCEL = 1e4


def _rls_next_P(P_prev, k, Pu, Phi, lam: float, cancels: bool) -> np.ndarray:
    """``P_n = (P_{n−1} − k_n (P_{n−1} u_n)ᵀ) / λ`` (Eq. (6.7)), or ``Φ_n⁻¹`` where the update would cancel."""
    try:
        P = np.linalg.inv(Phi) if cancels else None
    except np.linalg.LinAlgError:  # δ I lost to rounding against the data: the update after all
        P = None
    if P is None:
        P = (P_prev - k[..., :, None] * Pu[..., None, :]) / lam  # P_n = (P − k (Pu)ᵀ)/λ  (P symmetric)
    return 0.5 * (P + np.swapaxes(P, -1, -2))  # keep P symmetric against round-off


@guard_overflow(hint=_RLS_OVERFLOW)
def rls_loop(u, d, n_taps: int, lam: float = 1.0, delta: float = 1e-2, *, w0=None) -> tuple[np.ndarray, np.ndarray]:
    """Loop twin of :func:`rls`: one run and one time step at a time, entry by entry (Eq. (6.7)).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> u, d = rng.normal(size=(2, 50))
    >>> bool(np.allclose(rls_loop(u, d, 3, 0.98)[0], rls(u, d, 3, 0.98)[0]))
    True
    """
    u, d, m, w0 = _check_adaptive(u, d, n_taps, w0)
    lam, delta = _check_rls(lam, delta)
    W = np.empty((*u.shape, m))
    e = np.empty(u.shape)
    for b in np.ndindex(*u.shape[:-1]):
        w = [float(c) for c in w0]
        P = [[(1.0 / delta if i == j else 0.0) for j in range(m)] for i in range(m)]
        for n in range(u.shape[-1]):
            reg = [u[b][n - i] if n - i >= 0 else 0.0 for i in range(m)]
            Pu = [sum(P[i][j] * reg[j] for j in range(m)) for i in range(m)]
            denom = lam + sum(reg[i] * Pu[i] for i in range(m))
            gain = [Pu[i] / denom for i in range(m)]
            err = d[b][n] - sum(w[i] * reg[i] for i in range(m))
            w = [w[i] + gain[i] * err for i in range(m)]
            P = [[(P[i][j] - gain[i] * Pu[j]) / lam for j in range(m)] for i in range(m)]
            P = [[0.5 * (P[i][j] + P[j][i]) for j in range(m)] for i in range(m)]
            e[b][n] = err
            W[b][n] = w
    return W, e


# ---------------------------------------------------------------------------------------------
# Beamforming with a uniform linear array, Eqs. (6.11)-(6.15)
# ---------------------------------------------------------------------------------------------


def _check_array(n_sensors, spacing):
    m = as_int(n_sensors, "n_sensors", 1)
    return m, as_positive_scalar(spacing, "spacing")


def steering_vector(theta, n_sensors: int, spacing: float = 0.5) -> np.ndarray:
    r"""ULA steering vectors ``a(θ)_m = exp(−i 2π (d/λ) m sin θ)``, m = 0..M−1.

    Implements Eq. (6.11) of the book (Van Trees 2002, ch. 2): the phase with which a plane
    wave from direction θ (radians from broadside) reaches sensor m, relative to sensor 0.

    Parameters
    ----------
    theta : array_like, shape (...)
    n_sensors : int
        M.
    spacing : float > 0
        d/λ, the sensor spacing in wavelengths (1/2: no grating lobes).

    Returns
    -------
    ndarray of complex, shape (..., M)

    Examples
    --------
    >>> a = steering_vector(np.pi / 6, 4)  # half-wavelength spacing, 30°
    >>> np.angle(a).round(6).tolist()  # phase −π m sin θ
    [0.0, -1.570796, -3.141593, 1.570796]
    """
    th = as_real_array(theta, "theta")
    m, sp = _check_array(n_sensors, spacing)
    return np.exp(-2j * np.pi * sp * np.sin(th)[..., None] * np.arange(m))


def das_weights(theta0: float, n_sensors: int, spacing: float = 0.5) -> np.ndarray:
    r"""Delay-and-sum (Bartlett) weights ``w = a(θ_0)/M``: the spatial matched filter.

    Implements Eq. (6.12) of the book. Distortionless: ``wᴴ a(θ_0) = 1``.

    Returns
    -------
    ndarray of complex, shape (M,) (or (..., M) for an array of look directions)

    Examples
    --------
    >>> w = das_weights(0.3, 8)
    >>> round(float(abs(w.conj() @ steering_vector(0.3, 8))), 12)  # unit gain in the look direction
    1.0
    """
    a = steering_vector(as_real_array(theta0, "theta0"), n_sensors, spacing)
    return a / a.shape[-1]


def _check_R(R):
    R = as_complex_array(R, "R", ndim=2)
    check_hermitian_psd(R, "R")
    return hermitian_part(R)


def _check_mvdr(R, steering, loading, rescale: bool = False):
    R = _check_R(R)
    a = as_complex_array(steering, "steering", ndim=(1, 2))
    if a.shape[-1] != R.shape[0]:
        raise ValueError(f"steering: expected a last dimension of M = {R.shape[0]} (the size of R), got shape {a.shape}")
    eps = as_positive_scalar(loading, "loading", strict=False)
    if np.any(np.all(a == 0, axis=-1)):
        raise ValueError("steering: expected nonzero look directions, got an all-zero row")
    sr, sa = 1.0, np.ones(a.shape[:-1] + (1,))
    if rescale:
        # w is invariant to the scale of R and scales as 1/conj(c) with a → c a: work on R and a
        # divided by powers of two (exact), so that entries near 1e±300 neither overflow nor underflow.
        R, sr = pow2_scale(R)
        a, sa = pow2_scale(a, axis=-1)
    Rl = R + (eps / sr) * np.eye(R.shape[0])  # diagonal loading R + εI (on R's scale)
    if np.linalg.eigvalsh(Rl)[0] <= 1e-13 * max(1.0, float(np.max(np.abs(Rl)))):
        raise ValueError("R: expected a nonsingular covariance (use loading > 0 for a rank-deficient sample covariance)")
    return Rl, a, sa


@guard_overflow()
def mvdr_weights(R, steering, *, loading: float = 0.0) -> np.ndarray:
    r"""MVDR / Capon weights ``w = R^{-1} a / (aᴴ R^{-1} a)``.

    Implements Eq. (6.13) of the book (Capon 1969; Van Trees 2002, ch. 6): the weights that
    minimize the output power ``wᴴ R w`` subject to the distortionless constraint
    ``wᴴ a = 1``.

    Parameters
    ----------
    R : array_like, shape (M, M)
        Hermitian positive semidefinite spatial covariance.
    steering : array_like, shape (M,) or (K, M)
        The look direction(s) ``a(θ_0)``.
    loading : float >= 0
        Diagonal loading ε: ``R + εI`` replaces R (needed when R is singular).

    Returns
    -------
    ndarray of complex, shape (M,) or (K, M)

    Examples
    --------
    >>> a0, a1 = steering_vector(0.0, 6), steering_vector(0.5, 6)
    >>> R = 100 * np.outer(a1, a1.conj()) + np.eye(6)  # a strong interferer at 0.5 rad
    >>> w = mvdr_weights(R, a0)
    >>> round(float(abs(w.conj() @ a0)), 12), bool(abs(w.conj() @ a1) < 0.01)  # distortionless, interferer nulled
    (1.0, True)
    """
    Rl, a, scale = _check_mvdr(R, steering, loading, rescale=True)
    Ria = np.linalg.solve(Rl, a.T).T  # R^{-1} a (no explicit inverse), shape (..., M)
    return Ria / np.sum(a.conj() * Ria, axis=-1, keepdims=True) / scale  # / (aᴴ R^{-1} a), undo the scaling


@guard_overflow()
def mvdr_weights_loop(R, steering, *, loading: float = 0.0) -> np.ndarray:
    """Loop twin of :func:`mvdr_weights`: one look direction at a time (Eq. (6.13)).

    Examples
    --------
    >>> a = steering_vector(np.array([0.0, 0.4]), 5)
    >>> R = np.outer(a[1], a[1].conj()) * 10 + np.eye(5)
    >>> bool(np.allclose(mvdr_weights_loop(R, a, loading=0.1), mvdr_weights(R, a, loading=0.1)))
    True
    """
    Rl, a, scale = _check_mvdr(R, steering, loading, rescale=True)
    rows = a[None, :] if a.ndim == 1 else a
    scales = np.broadcast_to(scale, a.shape[:-1] + (1,)).reshape(-1)
    out = np.empty(rows.shape, dtype=complex)
    for k, ak in enumerate(rows):
        x = np.linalg.solve(Rl, ak)  # R^{-1} a
        denom = sum(np.conj(ak[i]) * x[i] for i in range(ak.size))  # aᴴ R^{-1} a
        out[k] = x / denom / scales[k]
    return out[0] if a.ndim == 1 else out


def _check_pattern(w, theta, spacing):
    w = as_complex_array(w, "w", ndim=1)
    if w.size == 0:
        raise ValueError("w: expected at least one sensor, got shape (0,)")
    th = as_real_array(theta, "theta")
    return w, th, as_positive_scalar(spacing, "spacing")


@guard_overflow()
def beampattern(w, theta, spacing: float = 0.5) -> np.ndarray:
    r"""Power beampattern ``B(θ) = |wᴴ a(θ)|²`` of array weights w.

    Implements Eq. (6.14) of the book.

    Parameters
    ----------
    w : array_like, shape (M,)
    theta : array_like, shape (...)
    spacing : float > 0

    Returns
    -------
    ndarray, shape (...)

    Examples
    --------
    >>> B = beampattern(das_weights(0.2, 8), np.array([0.2, 0.0]))
    >>> round(float(B[0]), 12), bool(B[1] < B[0])  # the peak in the look direction
    (1.0, True)
    """
    w, th, sp = _check_pattern(w, theta, spacing)
    a = steering_vector(th, w.size, sp)
    return np.abs(a @ w.conj()) ** 2  # |wᴴ a(θ)|²


@guard_overflow()
def beampattern_loop(w, theta, spacing: float = 0.5) -> np.ndarray:
    """Loop twin of :func:`beampattern`: one angle and one sensor at a time (Eq. (6.14)).

    Examples
    --------
    >>> w, theta = das_weights(0.2, 6), np.linspace(-1.0, 1.0, 5)
    >>> bool(np.allclose(beampattern_loop(w, theta), beampattern(w, theta)))
    True
    """
    w, th, sp = _check_pattern(w, theta, spacing)
    out = np.empty(th.shape)
    for idx in np.ndindex(*th.shape):
        acc = 0j
        for m in range(w.size):
            acc += np.conj(w[m]) * cmath.exp(-2j * math.pi * sp * m * math.sin(th[idx]))  # w̄_m a_m(θ)
        out[idx] = abs(acc) ** 2
    return out


def dirichlet_beampattern(theta, theta0: float, n_sensors: int, spacing: float = 0.5) -> np.ndarray:
    r"""Closed-form delay-and-sum beampattern ``|sin(Mψ/2) / (M sin(ψ/2))|²``.

    Implements Eq. (6.15) of the book (Van Trees 2002, ch. 2): with
    ``ψ = 2π (d/λ)(sin θ − sin θ_0)``, the Dirichlet kernel — the DFT of a rectangular
    aperture. Equals 1 where ψ is a multiple of 2π (main lobe and grating lobes).

    Parameters
    ----------
    theta : array_like, shape (...)
    theta0 : float
        Look direction.
    n_sensors : int
    spacing : float > 0

    Returns
    -------
    ndarray, shape (...)

    Examples
    --------
    >>> theta = np.linspace(-1.0, 1.0, 7)
    >>> bool(np.allclose(dirichlet_beampattern(theta, 0.2, 8), beampattern(das_weights(0.2, 8), theta)))
    True
    """
    th = as_real_array(theta, "theta")
    t0 = float(as_real_array(theta0, "theta0", ndim=0))
    m, sp = _check_array(n_sensors, spacing)
    psi = 2 * np.pi * sp * (np.sin(th) - np.sin(t0))
    half = 0.5 * psi
    s = np.sin(half)
    lobe = np.abs(s) < 1e-8  # ψ ≈ 2πk: the limit of the ratio is ±1
    safe = np.where(lobe, 1.0, s)
    ratio = np.where(lobe, 1.0, np.sin(m * half) / (m * safe))
    return ratio**2


@guard_overflow()
def sample_covariance(x) -> np.ndarray:
    r"""Sample spatial covariance ``R̂ = (1/T) Σ_t x_t x_tᴴ`` of snapshots x, shape (T, M): the R of Eq. (6.13) of the book.

    Hermitian positive semidefinite; rank ≤ T (use diagonal loading in MVDR when T < M).

    Examples
    --------
    >>> x = np.array([[1.0, 1j], [1.0, -1j]])  # two snapshots of a 2-sensor array
    >>> sample_covariance(x).tolist()
    [[(1+0j), 0j], [0j, (1+0j)]]
    """
    x = as_complex_array(x, "x", ndim=2)
    if x.shape[0] == 0:
        raise ValueError(f"x: expected at least one snapshot (T >= 1), got shape {x.shape}")
    R = x.T @ x.conj() / x.shape[0]  # R_ij = (1/T) Σ_t x_ti conj(x_tj)
    return hermitian_part(R)


def beamform(x, w) -> np.ndarray:
    r"""Array output ``y_t = wᴴ x_t`` for snapshots x, shape (..., T, M), and weights w, shape (M,): Eqs. (6.12)–(6.14) of the book.

    Examples
    --------
    >>> x = np.tile(steering_vector(0.3, 4), (3, 1))  # three snapshots of a unit plane wave from 0.3 rad
    >>> bool(np.allclose(beamform(x, das_weights(0.3, 4)), 1.0))  # the wave passes with unit gain
    True
    """
    x = as_complex_array(x, "x")
    w = as_complex_array(w, "w", ndim=1)
    if x.ndim < 1 or x.shape[-1] != w.size:
        raise ValueError(f"x: expected a last dimension of M = {w.size} (the size of w), got shape {x.shape}")
    return x @ w.conj()


def _check_spectrum(R, theta, spacing):
    R = _check_R(R)
    th = as_real_array(theta, "theta")
    sp = as_positive_scalar(spacing, "spacing")
    return R, th, sp


def bartlett_spectrum(R, theta, spacing: float = 0.5) -> np.ndarray:
    r"""Bartlett (delay-and-sum) spatial spectrum ``P(θ) = a(θ)ᴴ R a(θ) / M²``: Eqs. (6.12) and (6.14) of the book.

    Examples
    --------
    >>> a = steering_vector(0.4, 8)
    >>> P = bartlett_spectrum(np.outer(a, a.conj()) + 0.1 * np.eye(8), np.linspace(-1.0, 1.0, 11))
    >>> round(float(np.linspace(-1.0, 1.0, 11)[np.argmax(P)]), 6)  # the source direction
    0.4
    """
    R, th, sp = _check_spectrum(R, theta, spacing)
    a = steering_vector(th, R.shape[0], sp)
    return np.real(np.einsum("...i,ij,...j->...", a.conj(), R, a)) / R.shape[0] ** 2


def capon_spectrum(R, theta, spacing: float = 0.5, *, loading: float = 0.0) -> np.ndarray:
    r"""Capon (MVDR) spatial spectrum ``P(θ) = 1 / (a(θ)ᴴ R^{-1} a(θ))``: the MVDR output power.

    Implements Eq. (6.13) of the book evaluated over a grid of look directions (Capon 1969).

    Examples
    --------
    >>> a = steering_vector(0.4, 8)
    >>> P = capon_spectrum(np.outer(a, a.conj()) + 0.01 * np.eye(8), np.linspace(-1.0, 1.0, 11))
    >>> round(float(np.linspace(-1.0, 1.0, 11)[np.argmax(P)]), 6)  # the source direction
    0.4
    """
    R, th, sp = _check_spectrum(R, theta, spacing)
    a = steering_vector(th, R.shape[0], sp)
    Rl, _, _ = _check_mvdr(R, a.reshape(-1, R.shape[0]), loading)
    Ria = np.linalg.solve(Rl, a.reshape(-1, R.shape[0]).T).T.reshape(a.shape)  # R^{-1} a(θ)
    return 1.0 / np.real(np.sum(a.conj() * Ria, axis=-1))


def capon_spectrum_loop(R, theta, spacing: float = 0.5, *, loading: float = 0.0) -> np.ndarray:
    """Loop twin of :func:`capon_spectrum`: one look direction at a time.

    Examples
    --------
    >>> a = steering_vector(0.4, 6)
    >>> R, theta = np.outer(a, a.conj()) + 0.1 * np.eye(6), np.linspace(-1.0, 1.0, 5)
    >>> bool(np.allclose(capon_spectrum_loop(R, theta), capon_spectrum(R, theta)))
    True
    """
    R, th, sp = _check_spectrum(R, theta, spacing)
    m = R.shape[0]
    Rl, _, _ = _check_mvdr(R, np.ones(m), loading)
    out = np.empty(th.shape)
    for idx in np.ndindex(*th.shape):
        a = np.array([cmath.exp(-2j * math.pi * sp * k * math.sin(th[idx])) for k in range(m)])
        x = np.linalg.solve(Rl, a)
        out[idx] = 1.0 / sum(np.conj(a[k]) * x[k] for k in range(m)).real
    return out
