r"""Closed-form solutions of the differential Lyapunov equation (DLE) in the eigenbasis.

Chapter 2 of the book (``notebooks/02-lyapunov.ipynb``) derives every formula here.

For the linear Itô SDE ``dx = A x dt + G dw`` (chapter 1) with ``Q = G G^T`` and a
diagonalizable ``A = S Λ S^{-1}``, the covariance that a state accumulates while it is
propagated over a lag τ solves the DLE

.. math::  \dot V = A V + V A^\dagger + Q,\qquad V(0) = 0.      \tag{2.1}

In eigen-coordinates ``Σ = S^{-1} V S^{-†}`` the equation decouples entry by entry and has the
closed form (Eq. (2.4))

.. math::  Σ_{kl}(τ) = \tilde G_{kl}\,\frac{e^{(λ_k+λ_l^*)τ}-1}{λ_k+λ_l^*},
           \qquad \tilde G = S^{-1} Q S^{-\dagger}.

Glossary (code name → symbol in the book / Racioppo 2025)
---------------------------------------------------------
``eigvals``   λ_k = −μ_k + iω_k, shape (d,): eigenvalues of A (``Λ = diag(λ)``).
``noise``     G̃ = S^{-1} Q S^{-†}: process-noise rate in the eigenbasis. Shape (d,) for the
              diagonal case (the noise spectrum Λ_Q of AFA, λ_{Q,k} ≥ 0) or (d, d) Hermitian
              PSD for the general case.
``tau``       τ ≥ 0: the lag over which the state is propagated; any shape (...,).
``z``         λ_k + λ_l^*: the exponent rate of entry (k, l).
``sigma2``    σ² (process noise), ``eta2`` η² (key measurement noise), ``gamma2`` γ² (query
              anchor noise), ``mu`` μ (decay) of AFA's isotropic kernel (Eq. (2.9)).

References
----------
.. [1] P. Racioppo, "Attention as an Adaptive Filter" / "Robust Filter Attention",
       arXiv:2509.04154 (v1 2025, v6 2026), §3.1 and App. A.
.. [2] C. Van Loan, "Computing integrals involving the matrix exponential",
       IEEE Trans. Automatic Control 23(3), 1978.
.. [3] A. H. Jazwinski, *Stochastic Processes and Filtering Theory*, Academic Press, 1970, ch. 4.
.. [4] P. Racioppo, "Expanded Thesis (updated after submission)", PDF of July 28, 2025, in the
       repository PCR-git/Adaptive-Filter-Attention on GitHub (the AFA thesis; it predates [1]).
"""

from __future__ import annotations

import cmath
import math

import numpy as np

from . import _blocking
from ._validate import (as_complex_array, as_noise, as_real_array, check_nonnegative, guard_overflow, as_lags, hermitian_part,
                        vouch_finite)

__all__ = [
    "phi1",
    "dle_covariance",
    "dle_covariance_loop",
    "dle_covariance_backward",
    "dle_covariance_backward_loop",
    "steady_state_covariance",
    "steady_state_covariance_loop",
    "isotropic_covariance",
    "isotropic_covariance_loop",
]

# |zτ| below which (e^{zτ} - 1)/z is summed as a Taylor series: the truncation error of the
# 8-term series is |zτ|^8/9! < 3e-22 relative, and the expm1 quotient above it is accurate
# to a few ulp.
_SERIES_BELOW = 1e-2
_SERIES_COEFFS = [1.0 / math.factorial(n + 1) for n in range(8)]  # 1, 1/2, 1/6, ...


# ---------------------------------------------------------------------------------------------
# The scalar kernel (e^{zτ} - 1)/z, Eq. (2.6)
# ---------------------------------------------------------------------------------------------


_SPLIT = 134217729.0  # 2**27 + 1, Dekker's splitting constant


def _two_product(a, b):
    """``a·b = p + e`` exactly (Dekker 1971): ``p`` the rounded product, ``e`` its rounding error.

    Used for the phase ω τ: at |ωτ| ~ 1e4 rad the rounding of the product alone is a phase
    error of ~1e-12 rad, which would show as a relative error of the result.
    """
    p = a * b
    t = _SPLIT * a
    a_hi = t - (t - a)
    a_lo = a - a_hi
    t = _SPLIT * b
    b_hi = t - (t - b)
    b_lo = b - b_hi
    e = ((a_hi * b_hi - p) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo
    return p, e


def _two_sum(a, b):
    """``a + b = s + e`` exactly (Knuth's TwoSum): ``s`` the rounded sum, ``e`` its rounding error.

    Used for the rate z = λ_k + λ_l^*: at ω_k = 1e6, ω_l = 1e-9 the rounded Im z is off by
    up to 6e-11, which τ = 1e6 turns into a phase error of 6e-5 rad.
    """
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


def _finite_or_zero(e):
    # the error terms overflow (inf or NaN) only for |x| > 1e300, where they are irrelevant
    return np.where(np.isfinite(e), e, 0.0)


def _expm1_complex(z: np.ndarray, tau: np.ndarray, z_lo=None) -> np.ndarray:
    """e^{zτ} − 1 for complex z, real τ: no cancellation near 0, and no rounding of the exponent.

    With w = zτ and half-angle sines (s, c) = (sin, cos)(Im w / 2),

        Re(e^w − 1) = expm1(Re w)(1 − 2s²) − 2s²,    Im(e^w − 1) = e^{Re w} · 2sc.

    The exponent w = (z + z_lo)τ, with ``z_lo`` the rounding error of z (from
    :func:`_two_sum`, or 0), is formed as a rounded part plus a small complex remainder
    δ = δ_r + iδ_i: the rounding errors of Re(z)·τ and Im(z)·τ (:func:`_two_product`) and
    z_lo·τ. It enters exactly as ``e^{w+δ} − 1 = (e^w − 1) + e^w (e^δ − 1)``: δ is as large as
    half an ulp of w (0.06 at |w| = 1e15), so a first-order ``e^w δ`` would not do.
    The real part δ_r (at most ε|Re w|/2) changes the result by less than ε relative unless
    Re w > 0: it is formed only when some mode grows. (Callers handle overflow of e^{Re w}.)
    """
    wr = z.real * tau
    er = None
    if np.max(wr, initial=-np.inf) > 0:  # a growing mode: e^{Re w} feels the rounding of Re w
        wr, er = _two_product(z.real, tau)
        if z_lo is not None:
            er = er + z_lo.real * tau
    wi, ei = _two_product(z.imag, tau)
    if z_lo is not None:
        ei = ei + z_lo.imag * tau
    wr, wi, ei = np.broadcast_arrays(wr, wi, ei)
    ei = _finite_or_zero(ei)
    s, c = np.sin(0.5 * wi), np.cos(0.5 * wi)
    two_s2 = 2.0 * s * s
    cos_i, sin_i = 1.0 - two_s2, 2.0 * s * c
    exp_r = np.exp(wr)
    # D = e^δ − 1 by the same half-angle formula (δ is tiny: no cancellation, no overflow)
    sd = np.sin(0.5 * ei)
    if er is None:
        d_re, d_im = -2.0 * sd * sd, np.sin(ei)
    else:
        # where e^{Re w} underflows to 0 the correction e^w D is 0; there |Re w| may be so large
        # (≳ 6e18) that its rounding error er exceeds 709 and D overflows: 0 · inf would be NaN
        er = np.where(exp_r == 0.0, 0.0, _finite_or_zero(np.broadcast_to(er, wr.shape)))
        d_re = np.expm1(er) * (1.0 - 2.0 * sd * sd) - 2.0 * sd * sd
        d_im = np.exp(er) * np.sin(ei)
    out = np.empty(wr.shape, dtype=np.complex128)
    # e^{w+δ} − 1 = (e^w − 1) + e^w D,  e^w = e^{Re w}(cos_i + i sin_i)
    out.real = np.expm1(wr) * cos_i - two_s2 + exp_r * (d_re * cos_i - d_im * sin_i)
    out.imag = exp_r * (sin_i + d_re * sin_i + d_im * cos_i)
    return out


def _expm1_real(z: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """e^{zτ} − 1 for real z and τ, with the rounding error δ of the product zτ restored:
    e^{w+δ} − 1 = expm1(w) + e^w expm1(δ).

    |δ| ≤ ε|w|/2 changes the result by at most about ε relative where w ≤ 1, so the correction
    is formed only on the entries with w > 1 (growing, pushed-back modes).
    """
    w = np.asarray(z * tau)
    out = np.expm1(w, out=np.empty_like(w))  # an array also for 0-d w (entries are set below)
    big = w > 1.0
    if np.any(big):
        wb, e = _two_product(np.broadcast_to(z, w.shape)[big], np.broadcast_to(tau, w.shape)[big])
        e = _finite_or_zero(e)
        # where e^w overflows, e^w · 0 would be NaN: add the correction only where it is nonzero
        out[big] = np.expm1(wb) + np.where(e != 0, np.exp(wb) * np.expm1(e), 0.0)
    return out


def _complex(re: np.ndarray, im: np.ndarray) -> np.ndarray:
    # re + 1j*im would turn an infinite im into a NaN real part (1j * inf = nan + inf j).
    out = np.empty(np.broadcast_shapes(np.shape(re), np.shape(im)), dtype=np.complex128)
    out.real, out.imag = re, im
    return out


def _may_overflow(z: np.ndarray, tau: np.ndarray) -> bool:
    # e^{zτ} overflows float64 only if Re(z) τ > log(max float) ≈ 709.78; a cheap scalar test that
    # lets the common case (stable forward propagation) skip every overflow guard.
    # (τ < 0 is allowed in phi1: then a stable z overflows.) Re(z)τ is bounded by its four corners.
    return _max_rate_lag(z, tau) > 700.0


def _max_rate_lag(z: np.ndarray, tau: np.ndarray) -> float:
    """max Re(z) τ over all pairs (−inf if there are none): the largest of the four corners."""
    zr, tr = np.real(z), np.asarray(tau)
    if not zr.size or not tr.size:
        return -math.inf
    return float(np.max(np.outer([zr.min(), zr.max()], [tr.min(), tr.max()])))


def _phi1_array(z: np.ndarray, tau: np.ndarray, z_lo=None) -> np.ndarray:
    """Vectorized (e^{zτ} − 1)/z for broadcastable z (real or complex) and τ, Eq. (2.6).

    ``z_lo`` (complex z only) is the rounding error of z when z is a rounded sum (the exact
    rate is z + z_lo); it is carried into the exponent and the quotient.
    """
    w = np.asarray(z * tau)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # Where e^{Re w} overflows the result may hold inf/NaN; _noise_times_phi1 re-forms those entries.
        if np.isrealobj(w):
            out = np.asarray(_expm1_real(z, tau), dtype=np.float64)
        else:
            out = _expm1_complex(z, tau, z_lo)
        out /= z  # 0/0 at z = 0 is replaced by the series below
        if z_lo is not None:
            out -= out * (z_lo / z)  # 1/(z + z_lo) = (1/z)(1 − z_lo/z + O(ε²))
    _series_where_small(out, w, tau)
    return out


def _series_where_small(out: np.ndarray, w: np.ndarray, tau, g=None) -> None:
    """Where |w| = |zτ| < :data:`_SERIES_BELOW`, set ``out`` to φ (or to g φ) by its series (in place).

    τ · (1 + w/2 + w²/6 + ...) by Horner's rule on the few small entries: the exact limit τ at
    w = 0, where (e^w − 1)/z is 0/0. ``g`` (broadcastable to ``w``), if given, multiplies the
    series last, as ``out *= g`` would after the series.
    """
    small = np.abs(w) < _SERIES_BELOW
    if np.any(small):
        ws = w[small]
        series = np.zeros_like(ws)
        for c in reversed(_SERIES_COEFFS):
            series = series * ws + c
        series *= np.broadcast_to(tau, w.shape)[small]
        if g is not None:
            series *= np.broadcast_to(g, w.shape)[small]
        out[small] = series


def _exp_real(x: float) -> float:
    # math.exp raises OverflowError; the IEEE result of an overflow is +inf.
    return math.exp(x) if x < 709.782712893384 else math.inf


def _phi1_scalar(z: complex, tau: float, z_lo: complex = 0j) -> complex:
    """(e^{zτ} − 1)/z for one complex z and one τ: the loop twins' version of Eq. (2.6).

    ``z_lo`` is the rounding error of z (the exact rate is z + z_lo), as in :func:`_phi1_array`.
    """
    w = z * tau
    if abs(w) < _SERIES_BELOW:
        total = 0.0
        for c in reversed(_SERIES_COEFFS):
            total = total * w + c
        return tau * total
    if isinstance(w, complex) and w.imag != 0.0:
        # the scalar form of _expm1_complex: half-angle sines, the exponent's rounding restored
        z, z_lo = complex(z), complex(z_lo)
        wr, er = _two_product(z.real, tau)
        wi, ei = _two_product(z.imag, tau)
        er = er + z_lo.real * tau if math.isfinite(er) else 0.0
        ei = ei + z_lo.imag * tau if math.isfinite(ei) else 0.0
        s, c = math.sin(0.5 * wi), math.cos(0.5 * wi)
        cos_i, sin_i = 1.0 - 2.0 * s * s, 2.0 * s * c
        exp_r = _exp_real(wr)
        expm1_r = math.expm1(wr) if wr < 709.0 else math.inf
        re = (expm1_r * cos_i if cos_i != 0 else 0.0) - 2.0 * s * s
        im = exp_r * sin_i if sin_i != 0 else 0.0
        if 0.0 < exp_r < math.inf:  # (e^w = 0: the correction is 0, and D may overflow: 0 · inf)
            # e^{w+δ} − 1 = (e^w − 1) + e^w D,  D = e^δ − 1 (half-angle form)
            sd = math.sin(0.5 * ei)
            d_re = (math.expm1(er) if er < 709.0 else math.inf) * (1.0 - 2.0 * sd * sd) - 2.0 * sd * sd
            d_im = _exp_real(er) * math.sin(ei)
            re += exp_r * (d_re * cos_i - d_im * sin_i)
            im += exp_r * (d_re * sin_i + d_im * cos_i)
        q = complex(re, im) / z
        return q - q * (z_lo / z)  # 1/(z + z_lo) = (1/z)(1 − z_lo/z)
    zr, zr_lo = float(getattr(z, "real", z)), float(getattr(z_lo, "real", z_lo))
    w, e = _two_product(zr, float(tau))
    expm1 = math.expm1(w) if w < 709.0 else math.inf
    exp_w = _exp_real(w)
    if math.isfinite(expm1) and math.isfinite(e) and exp_w != 0.0:
        # (where e^w underflows the correction is 0; there |w| may be so large (≳ 6e18) that its
        # rounding error δ exceeds 709 and expm1(δ) overflows: 0 · inf would be NaN)
        d = e + zr_lo * tau
        expm1 += exp_w * (math.expm1(d) if d < 709.0 else math.inf)  # e^{w+δ} − 1 = expm1(w) + e^w expm1(δ)
    q = expm1 / zr
    return q - q * (zr_lo / zr) if zr_lo else q


def _noise_times_phi1(g: np.ndarray, z: np.ndarray, tau: np.ndarray, z_lo=None) -> np.ndarray:
    """``g · φ(z, τ)`` elementwise, with the two float64 edge cases made exact.

    A mode with no noise (g = 0) accumulates no covariance, even where φ overflows (0 · inf
    would be NaN); and where the product overflows (only for Re z > 0) it is formed as
    ``[g (1 − e^{−zτ})/z · e^{i Im(z) τ}] · e^{Re(z) τ}``, a finite complex number times a
    real magnitude (combined in log space), which is finite when the result is representable
    and gives ±inf components, not inf − inf = NaN, when it is not. ``z_lo``: see
    :func:`_phi1_array`.
    """
    out = _phi1_array(z, tau, z_lo)
    full = np.broadcast_shapes(out.shape, np.shape(g))
    if full != out.shape:
        out = np.broadcast_to(out, full).copy()
    if not _may_overflow(z, tau):
        out *= g
        return out
    with np.errstate(over="ignore", invalid="ignore"):
        out *= g
        bad = ~np.isfinite(out)
        if np.any(bad):
            zb = np.broadcast_to(z, out.shape)[bad]
            tb = np.broadcast_to(tau, out.shape)[bad]
            gb = np.broadcast_to(g, out.shape)[bad]
            wb = zb * tb
            # φ = e^{w}(1 − e^{−w})/z: a finite factor u times e^{Re w}; combine the magnitudes in
            # log space so that a representable result (large |z|) stays finite.
            u = gb * (1.0 - np.exp(-wb)) / zb
            if np.iscomplexobj(out):
                u = u * np.exp(1j * wb.imag)
            absu = np.abs(u)
            mag = np.exp(wb.real + np.log(np.where(absu == 0, 1.0, absu)))
            unit = np.where(absu == 0, 0.0, u / np.where(absu == 0, 1.0, absu))
            huge_re = np.where(unit.real == 0, 0.0, unit.real * mag)
            if np.iscomplexobj(out):
                out[bad] = _complex(huge_re, np.where(unit.imag == 0, 0.0, unit.imag * mag))
            else:
                out[bad] = huge_re
    return out


#: float64 numbers per block of :func:`_spectrum_times_phi1`: its temporaries (256 KiB) stay in
#: the L2 cache, so the output is the only array as large as the result
_SPECTRUM_BLOCK = 2**15


def _spectrum_times_phi1(g: np.ndarray, z: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """``g_k φ(z_k, τ)`` for a spectrum: real rates z (d,), g (d,), lags τ (...); shape τ.shape + (d,).

    The arithmetic of :func:`_noise_times_phi1` — expm1(zτ) times g/z, the Taylor series where
    |zτ| < :data:`_SERIES_BELOW` — for the common case in which no entry has zτ > 1 (no
    rounding correction of the exponent, no overflow; e.g. decaying modes and τ ≥ 0). The
    quotient g/z is formed once per mode, so each entry costs one product, one expm1 and one
    product (expm1(zτ)/z · g also rounds twice after the expm1; where g/z would overflow, the
    quotient is taken after the expm1, by :func:`_noise_times_phi1`).
    It runs over blocks of lags, so that the exponent and the series live in a cache-sized
    buffer and each output entry is written once; z and g/z are tiled to the block's shape
    once, so that the products run over whole blocks rather than one short row at a time.
    The series is formed only in the blocks that can hold a small |zτ| (the smallest |z| times
    the block's smallest |τ|). Every entry depends on its own z and τ only, so the blocks are
    independent: :func:`refimpl._blocking.in_parts` runs contiguous runs of them in threads
    (the ufuncs release the GIL), with the same result for any number of threads. Other inputs
    go to :func:`_noise_times_phi1`.
    """
    tau = np.asarray(tau, dtype=np.float64)
    if z.size == 0 or tau.size == 0 or _max_rate_lag(z, tau) > 1.0:
        return _noise_times_phi1(g, z, tau[..., None])
    d = z.shape[0]
    t = tau.reshape(-1, 1)
    n = t.shape[0]
    abs_t = np.abs(t[:, 0])
    z_min = float(np.min(np.abs(z)))
    out = np.empty((n, d))
    rows = min(n, max(1, _SPECTRUM_BLOCK // d))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # g/z at z = 0: those entries take the series
        c = g / z
    if not np.all(np.isfinite(c) | (z == 0)):  # g/z overflows (|z| < 1e-300 or so): divide after expm1
        return _noise_times_phi1(g, z, tau[..., None])
    z_tile = np.tile(z, (rows, 1))
    c_tile = np.tile(c, (rows, 1))

    def run(part: slice) -> None:
        w_buf = np.empty((rows, d))  # each thread its own exponent buffer
        for r0 in range(part.start, part.stop, rows):
            r1 = min(r0 + rows, part.stop)
            b = r1 - r0
            w, o = w_buf[:b], out[r0:r1]
            np.multiply(t[r0:r1], z_tile[:b], out=w)  # w = zτ
            np.expm1(w, out=o)
            o *= c_tile[:b]  # g φ = expm1(zτ) · g/z
            if z_min * float(abs_t[r0:r1].min()) < _SERIES_BELOW:  # fl(|z||τ|) is monotone: no small w missed
                _series_where_small(o, w, t[r0:r1], g)

    blocks = -(-n // rows)
    with np.errstate(invalid="ignore"):  # expm1(0) · (g/0) is NaN before the series replaces it
        _blocking.in_parts(lambda part: run(slice(part.start * rows, min(part.stop * rows, n))), blocks, n * d)
    out = out.reshape(tau.shape + (d,))
    # Every entry is finite when this bound is: |expm1(zτ)| <= e − 1 for zτ <= 1 (checked above), so an
    # entry off the series is at most (e − 1) |g/z|; on it (|zτ| < 10^−2) at most 1.01 g |τ|. Then the
    # caller's guard need not read the whole output once more on one core (3.3 ms at 10^5 lags, d = 64).
    with np.errstate(over="ignore", invalid="ignore"):
        bound = max(1.72 * float(np.max(np.abs(c[z != 0]), initial=0.0)), 1.01 * float(np.max(g)) * float(np.max(abs_t)))
    if bound <= 1e300:
        vouch_finite(out)
    return out


def _noise_times_phi1_scalar(g: complex, z: complex, tau: float, z_lo: complex = 0j) -> complex:
    """Scalar twin of :func:`_noise_times_phi1` for the loop versions."""
    if g == 0:
        return 0.0
    value = complex(g) * complex(_phi1_scalar(z, tau, z_lo))
    if cmath.isfinite(value) and math.isfinite(math.hypot(value.real / 2, value.imag / 2) * 2):  # |value| representable
        return value if isinstance(z, complex) else value.real
    if not isinstance(z, complex):  # real rate: g e^{w}(1 − e^{−w})/z, magnitudes combined in log space
        zr = float(z)
        w = zr * tau
        u = float(g) * (1.0 - _exp_real(-w)) / zr
        if u == 0:
            return 0.0
        return math.copysign(_exp_real(w + math.log(abs(u))), u)
    z = complex(z)
    w = z * tau
    u = complex(g) * (1.0 - cmath.exp(-w)) / z * cmath.exp(1j * w.imag)
    if u == 0:
        return 0j
    m = max(abs(u.real), abs(u.imag))  # |u| by parts: abs() raises OverflowError near the float64 limit
    unit = (u / m) / abs(u / m)
    mag = _exp_real(w.real + math.log(m) + math.log(abs(u / m)))
    return complex(unit.real * mag if unit.real != 0 else 0.0, unit.imag * mag if unit.imag != 0 else 0.0)


def phi1(z, tau):
    r"""The DLE kernel :math:`(e^{zτ} - 1)/z`, accurate for every ``z`` including ``z → 0``.

    Implements Eq. (2.6) of the book: the factor that turns a constant noise rate into the
    covariance accumulated over a lag τ (Racioppo 2025, App. A.1, with its Re λ = 0 case
    as the exact limit).

    Parameters
    ----------
    z : array_like, real or complex
        The rate (``λ_k + λ_l^*`` for entry (k, l) of the covariance).
    tau : array_like of float
        The lag τ; broadcast against ``z``.

    Returns
    -------
    ndarray
        float64 if ``z`` is real, complex128 otherwise; the broadcast shape of ``z`` and ``tau``.

    Notes
    -----
    The naive quotient loses all digits when ``zτ`` is tiny (``e^{zτ} - 1`` cancels) and is
    0/0 at ``z = 0``. Here

    .. math::  \frac{e^{zτ}-1}{z} = \begin{cases}
               τ\,\bigl(1 + \tfrac{w}{2} + \tfrac{w^2}{6} + \dots + \tfrac{w^7}{8!}\bigr), & |w| < 10^{-2}\\
               \operatorname{expm1}(w)/z, & \text{otherwise}\end{cases}\qquad w = zτ,

    with a complex ``expm1`` that has no cancellation near 0. The exponent w is not rounded: the
    rounding errors of the products Re(z)·τ and Im(z)·τ (Dekker's TwoProduct) are carried into
    e^w (that of Re(z)·τ only where it can matter, Re w > 0). A rounded w would carry an absolute
    error of up to about ε|w| (the rate λ_k + λ_l^* and the product zτ each round), almost all of it
    in the phase when the rotation is fast, and (2.6) evaluated with w = fl(zτ) is then off by up to
    about ε(|w| e^{Re w}/|e^w − 1| + 4) relative: about ε|Im w| (2e-9 at |Im w| = 1e7) where e^w
    has not decayed, and more where e^w nearly returns to 1 (chapter 2, §2.3, checks this bound
    over random draws; the error of one draw is not a tolerance). The
    covariance functions also carry the rounding error of the rate z = λ_k + λ_l^* (Knuth's
    TwoSum) into the exponent. For Re w > 0 the real part of e^w − 1
    may cancel (where e^{Re w} cos Im w ≈ 1); its modulus, and φ, stay accurate.
    Where ``e^{Re w}`` overflows (only possible for Re(z)τ > 0, e.g. the pushed-back covariance)
    the entry is formed as ``e^{Re w} · [e^{i Im w}(1 − e^{−w})/z]`` with the magnitudes combined
    in log space: finite wherever the value is representable, ±inf components (never NaN) where
    it is not. The limits are φ → τ as z → 0 and φ → −1/z as τ → ∞ for Re z < 0.

    Examples
    --------
    >>> float(phi1(0.0, 2.5)), float(phi1(-1e-300, 2.5)), round(float(phi1(-2.0, 50.0)), 12)
    (2.5, 2.5, 0.5)
    """
    z = np.asarray(z)
    zc = as_complex_array(z, "z") if z.dtype.kind == "c" else as_real_array(z, "z")
    tau = as_real_array(tau, "tau")
    try:
        np.broadcast_shapes(zc.shape, tau.shape)
    except ValueError:
        raise ValueError(f"z, tau: expected shapes that broadcast together, got {zc.shape} and {tau.shape}") from None
    return _noise_times_phi1(np.float64(1.0), zc, tau)


# ---------------------------------------------------------------------------------------------
# Validation shared by the covariance functions
# ---------------------------------------------------------------------------------------------


def _check_eig_noise(eigvals, noise) -> tuple[np.ndarray, np.ndarray, bool]:
    lam = as_complex_array(eigvals, "eigvals", ndim=1)
    if lam.shape[0] == 0:
        raise ValueError("eigvals: expected at least one eigenvalue, got shape (0,)")
    g, diagonal = as_noise(noise, "noise", lam.shape[0])
    return lam, g, diagonal


def _check_tau(tau) -> np.ndarray:
    return as_lags(tau, "tau")


def _rate(lam_k, lam_l, sign: float):
    """``sign·(λ_k + λ_l^*)`` as a rounded complex z plus its exact rounding error z_lo.

    Both parts come from :func:`_two_sum`, so z + z_lo is the exact rate of the given
    eigenvalues: the rounding of the sum (e.g. Im z = 1e6 − 1e-9) would otherwise be
    multiplied by τ inside e^{zτ}. Works on arrays and on Python scalars.
    """
    zr, er = _two_sum(lam_k.real, lam_l.real)
    zi, ei = _two_sum(lam_k.imag, -lam_l.imag)
    return sign * _complex(zr, zi), sign * _complex(er, ei)


def _full_from_upper(lam: np.ndarray, g: np.ndarray, tau: np.ndarray, sign: float) -> np.ndarray:
    """``Σ_kl = G̃_kl φ(sign·(λ_k + λ_l^*), τ)`` for all (k, l), shape tau.shape + (d, d).

    Only the upper triangle k ≤ l is evaluated; ``Σ_lk = conj(Σ_kl)`` because z_lk = conj(z_kl)
    and G̃ is Hermitian. Half the work, and the result is exactly Hermitian.
    """
    d = lam.shape[0]
    iu, ju = np.triu_indices(d)
    z, z_lo = _rate(lam[iu], lam[ju], sign)  # z_kl = λ_k + λ_l^* = z + z_lo exactly, (m,)
    vals = _noise_times_phi1(g[iu, ju], z, tau[..., None], z_lo)  # (..., m)
    out = np.empty(tau.shape + (d, d), dtype=np.complex128)
    out[..., iu, ju] = vals
    out[..., ju, iu] = vals.conj()
    return out


#: complex numbers per block of :func:`_full_decaying` (512 KiB): a block of lags of Σ stays in the L2
#: cache while it is multiplied, shifted, scaled and mirrored
_FULL_BLOCK = 2**15

#: where Re(e^{zτ}) <= this, e^{zτ} − 1 is formed as the product e^{λ_k τ} · conj(e^{λ_l τ}) minus 1
_PRODUCT_BELOW = 0.5


def _full_decaying(lam: np.ndarray, g: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """``Σ_kl = G̃_kl φ(λ_k + λ_l^*, τ)`` (Eq. (2.4)) when no mode grows (every Re λ_k <= 0), τ >= 0.

    The same values as :func:`_full_from_upper` to rounding, by a factorization that needs one
    exponential per mode and lag instead of one per entry: e^{(λ_k + λ_l^*)τ} = E_k conj(E_l)
    with E_k = e^{λ_k τ}, so that

        Σ_kl(τ) = (E_k conj(E_l) − 1) · C_kl,    C_kl = G̃_kl / (λ_k + λ_l^*)  (formed once).

    E_k comes from :func:`_expm1_complex` (exact phase ω_k τ), so |E_k| <= 1 carries an absolute
    error of a few ulp and so does the product P = E_k conj(E_l). Where Re P <= 1/2, the
    difference P − 1 has modulus >= 1/2 and keeps a relative error of a few ulp: no
    cancellation. Elsewhere (small |zτ|, or e^{zτ} near 1 because the phase (ω_k − ω_l)τ nearly
    vanishes or nearly completes a turn) the difference cancels, and those entries — few for
    lags beyond the slowest decay time — are formed by the per-entry kernel
    :func:`_noise_times_phi1` with the exact rate z + z_lo. Only the upper triangle is selected;
    the lower one is its conjugate, so Σ is exactly Hermitian (with a real diagonal).

    Blocks of lags are independent and each is computed the same way whichever thread runs it:
    the threads take them in turn (:func:`refimpl._blocking.take_turns`). Memory: the output,
    the factors E (1/d of the output), the caller's float64 copy of the lags (made by input
    validation: 8 bytes per lag) and a fixed workspace (E is formed in chunks of
    ``_FULL_BLOCK // d`` lags, so the workspace stops growing at that many lags).
    """
    d = lam.shape[0]
    t = tau.reshape(-1)
    n = t.shape[0]
    out = np.empty((n, d, d), dtype=np.complex128)
    if n == 0:
        return out.reshape(tau.shape + (d, d))
    z, z_lo = _rate(lam[:, None], lam[None, :], 1.0)  # z_kl + z_lo_kl = λ_k + λ_l^* exactly
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # z = 0: a per-entry (series) entry
        c = g / z
        c -= c * (z_lo / z)  # 1/(z + z_lo) = (1/z)(1 − z_lo/z + O(ε²))
    if not np.all(np.isfinite(c) | (z == 0)):  # G̃/z overflows (|z| < 1e-300 or so): divide after expm1
        return _full_from_upper(lam, g, tau, 1.0)
    lower = ~np.triu(np.ones((d, d), dtype=bool))
    # The candidates for the per-entry kernel: Re P > 1/2 needs |P| = e^{Re(z) τ} > 1/2, i.e.
    # Re(z) τ > −log 2, so a block whose smallest lag is τ_0 needs only the upper-triangle pairs with
    # Re(z) τ_0 > −0.7 (Re z <= 0): a prefix of the pairs sorted by Re z, descending.
    iu, ju = np.triu_indices(d)
    by_rate = np.argsort(-z.real[iu, ju], kind="stable")
    iu, ju = iu[by_rate], ju[by_rate]
    rate_sorted = z.real[iu, ju]
    rows = min(n, max(1, _FULL_BLOCK // (d * d)))
    # E_k = e^{λ_k τ}, (n, d), in chunks of lags: the temporaries of _expm1_complex (about a dozen
    # real arrays of the chunk's shape, _FULL_BLOCK entries each) are then a fixed workspace instead
    # of growing with N; what grows with N is the output, E (1/d of its size) and the caller's float64
    # copy of the lags (tau here is a view of it).
    # Every entry depends on its own τ only, so the chunks give the same bits as one call.
    e = np.empty((n, d), dtype=np.complex128)
    chunk = max(rows, _FULL_BLOCK // d)
    for c0 in range(0, n, chunk):
        c1 = min(c0 + chunk, n)
        np.add(_expm1_complex(lam, t[c0:c1, None]), 1.0, out=e[c0:c1])

    # Blocks of short lags hold most of the per-entry work: the threads take the blocks in turn
    # (refimpl._blocking.take_turns), not a contiguous run of lags each, so they get equal shares

    def worker():
        p_buf = np.empty((rows, d, d), dtype=np.complex128)  # each thread its own block of P

        def block(bi: int) -> None:
            r0 = bi * rows
            r1 = min(r0 + rows, n)
            b = r1 - r0
            p = np.multiply(e[r0:r1, :, None], e[r0:r1, None, :].conj(), out=p_buf[:b])  # P_kl = E_k conj(E_l)
            m = int(np.count_nonzero(rate_sorted * float(t[r0:r1].min()) > -0.7))
            if m:
                i, j = np.nonzero(p[:, iu[:m], ju[:m]].real > _PRODUCT_BELOW)
            p -= 1.0
            p *= c  # Σ_kl = (P_kl − 1) C_kl where Re P_kl <= 1/2
            if m and i.size:
                k, l = iu[j], ju[j]
                p[i, k, l] = _noise_times_phi1(g[k, l], z[k, l], t[r0 + i], z_lo[k, l])
            o = out[r0:r1]
            np.copyto(o, p)
            np.copyto(o, np.swapaxes(p, 1, 2), where=lower)  # Σ_lk = conj(Σ_kl): the transpose, then
            np.negative(o.imag, out=o.imag, where=lower)  # the sign of Im (faster than a masked np.conjugate)
            o.reshape(b, d * d)[:, :: d + 1].imag = 0.0  # Σ_kk = G̃_kk φ(2 Re λ_k, τ) is real

        return block

    with np.errstate(invalid="ignore", over="ignore"):  # (P − 1) · C where C is not finite: replaced above
        _blocking.take_turns(-(-n // rows), worker, n * d * d)
    out = out.reshape(tau.shape + (d, d))
    # Every entry is finite when this bound is: |E_k| <= 1 (no growing mode, τ >= 0), so |P − 1| <= 2 and an
    # entry (P − 1) C_kl is at most 2 |C_kl| (C finite there: the entries with C not finite have P = 1 and
    # are replaced); a per-entry one is G̃_kl φ with |φ(z, τ)| <= τ for Re z <= 0. Then the caller's guard
    # need not read the whole output once more on one core (1.3 ms of 11 ms at 256 lags, d = 64).
    with np.errstate(over="ignore", invalid="ignore"):
        finite_c = np.isfinite(c)
        bound = max(2.01 * float(np.max(np.abs(c[finite_c]), initial=0.0)),
                    1.01 * float(np.max(np.abs(g))) * float(np.max(t)))
    if bound <= 1e300:
        vouch_finite(out)
    return out


# Σ is Hermitian by construction; averaging with its conjugate transpose removes round-off asymmetry.
_hermitize = hermitian_part


# ---------------------------------------------------------------------------------------------
# Forward (pulled-forward) covariance, Eqs. (2.4)-(2.5)
# ---------------------------------------------------------------------------------------------


@guard_overflow()
def dle_covariance(eigvals, noise, tau):
    r"""Covariance accumulated by propagating the SDE forward over a lag τ, in the eigenbasis.

    Implements Eq. (2.4) (full noise) and Eq. (2.5) (diagonal noise) of the book
    (Racioppo, arXiv:2509.04154v6, App. A.1; the full form is in the AFA thesis [4], App. 7.3).

    Parameters
    ----------
    eigvals : array_like of complex, shape (d,)
        Eigenvalues λ_k = −μ_k + iω_k of ``A``. Any sign of Re λ is allowed (the forward
        covariance of an unstable mode grows). A result beyond the float64 range is refused
        with a ``ValueError`` that names the arguments; it is not returned as ``inf`` (unlike
        :func:`dle_covariance_backward`, whose growth is its documented point).
    noise : array_like, shape (d,) or (d, d)
        The process-noise rate in the eigenbasis, ``G̃ = S^{-1} Q S^{-†}``: a nonnegative
        spectrum (d,) (diagonal G̃), or a Hermitian positive semidefinite matrix (d, d).
    tau : float or array_like, shape (...)
        Lags τ ≥ 0.

    Returns
    -------
    ndarray
        Diagonal noise: float64, shape (..., d), the variances Σ_k(τ).
        Full noise: complex128, shape (..., d, d), Hermitian PSD Σ(τ).

    Notes
    -----
    With ``V(τ) = ∫_0^τ e^{As} Q e^{A^† s} ds`` (the solution of the DLE ``V' = AV + VA^† + Q``,
    ``V(0) = 0``) and ``Σ = S^{-1} V S^{-†}``,

    .. math::  Σ_{kl}(τ) = \tilde G_{kl}\,φ(λ_k + λ_l^*, τ),\qquad
               Σ_k(τ) = g_k\,\frac{1 - e^{-2μ_k τ}}{2μ_k},

    where φ(z, τ) = (e^{zτ} − 1)/z is evaluated by :func:`phi1` (exact z → 0 limit
    ``g_k τ``, the Brownian case). The original-basis covariance is ``S Σ S^†``.
    With full noise and no growing mode (every Re λ_k <= 0) the exponential factors,
    ``e^{(λ_k + λ_l^*)τ} = e^{λ_k τ} conj(e^{λ_l τ})``: one exponential per mode and lag, and
    per entry ``(e^{λ_k τ} conj(e^{λ_l τ}) − 1) G̃_kl/(λ_k + λ_l^*)`` wherever the real part of
    the product is at most 1/2 (the difference cannot cancel there); the other entries, where
    e^{zτ} is near 1, take φ entry by entry. Both agree to a few units of rounding.

    See Also
    --------
    dle_covariance_loop : the same entry by entry.
    dle_covariance_backward : the pushed-back covariance, Eq. (2.7).
    steady_state_covariance : the τ → ∞ limit, Eq. (2.8).

    Examples
    --------
    >>> lam = np.array([-0.1 - 1j, -0.1 + 1j])
    >>> dle_covariance(lam, np.array([0.7, 0.7]), [1.0, 1e6]).round(6)
    array([[0.634442, 0.634442],
           [3.5     , 3.5     ]])
    """
    lam, g, diagonal = _check_eig_noise(eigvals, noise)
    tau = _check_tau(tau)
    if diagonal:
        z = 2.0 * lam.real  # λ_k + λ_k^* = 2 Re λ_k = −2 μ_k
        return _spectrum_times_phi1(g, z, tau)  # Σ_k = g_k φ(−2μ_k, τ)
    if np.max(lam.real) <= 0:  # no growing mode: e^{(λ_k + λ_l^*)τ} = e^{λ_k τ} conj(e^{λ_l τ})
        return _full_decaying(lam, g, tau)
    return _full_from_upper(lam, g, tau, 1.0)  # Σ_kl = G̃_kl φ(λ_k + λ_l^*, τ)


def _dle_loop(eigvals, noise, tau, sign: float):
    """Σ_kl(τ) = G̃_kl φ(sign·(λ_k + λ_l^*), τ), one lag and one entry at a time (Eqs. (2.4), (2.7))."""
    lam, g, diagonal = _check_eig_noise(eigvals, noise)
    tau = _check_tau(tau)
    d = lam.shape[0]
    flat = tau.reshape(-1)
    if diagonal:
        out = np.empty((flat.size, d))
        for n, t in enumerate(flat):
            for k in range(d):
                # Σ_k(τ) = g_k φ(sign · 2 Re λ_k, τ)
                out[n, k] = _noise_times_phi1_scalar(g[k], sign * 2.0 * lam[k].real, float(t))
        return out.reshape(tau.shape + (d,))
    out = np.empty((flat.size, d, d), dtype=np.complex128)
    for n, t in enumerate(flat):
        for k in range(d):
            for l in range(d):
                # Σ_kl(τ) = G̃_kl φ(sign · (λ_k + λ_l^*), τ), the rate exact as z + z_lo
                z, z_lo = _rate(complex(lam[k]), complex(lam[l]), sign)
                out[n, k, l] = _noise_times_phi1_scalar(g[k, l], complex(z), float(t), complex(z_lo))
    out = _hermitize(out) if np.all(np.isfinite(out)) else out
    return out.reshape(tau.shape + (d, d))


@guard_overflow()
def dle_covariance_loop(eigvals, noise, tau):
    """Loop twin of :func:`dle_covariance`: Eq. (2.4) one lag and one entry (k, l) at a time,

    Σ_kl(τ) = G̃_kl (e^{(λ_k + λ_l^*) τ} − 1) / (λ_k + λ_l^*)   (diagonal: k = l only).

    Examples
    --------
    >>> lam, g, tau = np.array([-0.5 + 1j, -1.0]), np.array([1.0, 0.3]), np.array([0.0, 0.5, 2.0])
    >>> bool(np.allclose(dle_covariance_loop(lam, g, tau), dle_covariance(lam, g, tau)))
    True
    """
    return _dle_loop(eigvals, noise, tau, 1.0)


# ---------------------------------------------------------------------------------------------
# Backward (pushed-back) covariance, Eq. (2.7)
# ---------------------------------------------------------------------------------------------


def dle_covariance_backward(eigvals, noise, tau):
    r"""Covariance of the pushed-back estimate ``e^{-Aτ} x(t+τ)`` of ``x(t)``, in the eigenbasis.

    Implements Eq. (2.7) of the book (Racioppo 2025, §3.1 non-causal case; AFA thesis [4], App. 7.3):
    the covariance that a *later* key carries when it is propagated back by τ to a query.

    Parameters
    ----------
    eigvals, noise : as in :func:`dle_covariance`.
    tau : float or array_like, shape (...)
        Lags τ ≥ 0 (the key lies τ after the query).

    Returns
    -------
    ndarray
        Shape (..., d) (diagonal noise, float64) or (..., d, d) (full noise, complex128).

    Notes
    -----
    .. math::  V_B(τ) = \int_0^τ e^{-As} Q e^{-A^\dagger s}\,ds = e^{-Aτ} V_F(τ) e^{-A^\dagger τ},
               \qquad Σ^B_{kl}(τ) = \tilde G_{kl}\,\frac{1 - e^{-(λ_k+λ_l^*)τ}}{λ_k+λ_l^*}
               = \tilde G_{kl}\,φ(-(λ_k+λ_l^*), τ).

    As an integral this is the forward formula with Λ → −Λ, so for a stable mode it grows like
    ``e^{2μτ}``. It is the error of the *unbiased* pushed-back estimate; it is not the error of
    the best backward predictor ``E[x(t) | x(t+τ)]`` under the stationary law, which stays
    bounded (chapter 2, Eq. (2.11)): the two are different estimators, and the difference is not
    a matter of time-reversibility — a reversible process (real eigenvalues, diagonal G̃, real or
    circular complex noise) has the same growing V_B (chapter 2, §2.7).
    An entry is returned as ``inf`` (±inf components for full noise, never NaN) where its value
    exceeds the float64 range: for diagonal noise, ``g_k (e^{2μ_k τ} − 1)/(2μ_k) > 1.8e308``,
    i.e. ``2μτ > 709.78 + ln(2μ/g)``; its precision is 0. A representable value stays finite
    even where ``e^{2μτ}`` alone overflows (e.g. μ = 1e5, g = 1, 2μτ = 715 gives 1.66e305).

    Examples
    --------
    >>> S = dle_covariance_backward(np.array([-0.5, -1.0 + 2j]), np.array([1.0, 0.3]), np.array([0.0, 1.0]))
    >>> S.shape  # diagonal noise: the diagonal of Σ per lag
    (2, 2)
    >>> bool(np.isclose(S[1, 0], np.exp(1.0) - 1.0))  # g (e^{2μτ} − 1)/(2μ), μ = 0.5, g = 1, τ = 1
    True
    """
    lam, g, diagonal = _check_eig_noise(eigvals, noise)
    tau = _check_tau(tau)
    if diagonal:
        return _noise_times_phi1(g, -2.0 * lam.real, tau[..., None])  # Σ^B_k = g_k φ(2μ_k, τ)
    return _full_from_upper(lam, g, tau, -1.0)  # Σ^B_kl = G̃_kl φ(−(λ_k + λ_l^*), τ)


def dle_covariance_backward_loop(eigvals, noise, tau):
    """Loop twin of :func:`dle_covariance_backward`: Eq. (2.7) entry by entry,

    Σ^B_kl(τ) = G̃_kl (1 − e^{−(λ_k + λ_l^*) τ}) / (λ_k + λ_l^*)   (diagonal: k = l only).

    Examples
    --------
    >>> lam, g, tau = np.array([-0.5 + 1j, -1.0]), np.array([1.0, 0.3]), np.array([0.0, 0.5, 2.0])
    >>> bool(np.allclose(dle_covariance_backward_loop(lam, g, tau), dle_covariance_backward(lam, g, tau)))
    True
    """
    return _dle_loop(eigvals, noise, tau, -1.0)


# ---------------------------------------------------------------------------------------------
# Steady state, Eq. (2.8)
# ---------------------------------------------------------------------------------------------


def _check_stable(lam: np.ndarray) -> None:
    if np.any(lam.real >= 0):
        k = int(np.argmax(lam.real >= 0))
        raise ValueError(
            f"eigvals: a steady-state covariance needs every Re(λ_k) < 0 (a stable system), "
            f"got eigvals[{k}] = {lam[k]:.6g}"
        )


def steady_state_covariance(eigvals, noise):
    r"""Stationary covariance ``Σ_∞ = lim_{τ→∞} Σ(τ)`` of a stable SDE, in the eigenbasis.

    Implements Eq. (2.8) of the book: the solution of the algebraic Lyapunov equation
    ``ΛΣ + ΣΛ^† + G̃ = 0`` (equivalently ``A P + P A^† + Q = 0`` with ``P = S Σ S^†``).

    Parameters
    ----------
    eigvals : array_like of complex, shape (d,)
        Eigenvalues; every Re λ_k must be < 0 (``ValueError`` otherwise).
    noise : array_like, shape (d,) or (d, d)
        As in :func:`dle_covariance`.

    Returns
    -------
    ndarray
        float64 (d,) for diagonal noise, ``g_k / (2 μ_k)``; complex128 (d, d) for full noise,
        ``Σ_kl = −G̃_kl / (λ_k + λ_l^*)``.

    Examples
    --------
    >>> S = steady_state_covariance(np.array([-0.5, -2.0 + 1j]), np.array([1.0, 4.0]))
    >>> S.tolist()  # diagonal noise: g / (2μ) per mode
    [1.0, 1.0]
    """
    lam, g, diagonal = _check_eig_noise(eigvals, noise)
    _check_stable(lam)
    if diagonal:
        return g / (-2.0 * lam.real)  # σ̃²_k = g_k / (2 μ_k)
    return _hermitize(-g / (lam[:, None] + lam.conj()[None, :]))  # Σ_kl = −G̃_kl / (λ_k + λ_l^*)


def steady_state_covariance_loop(eigvals, noise):
    """Loop twin of :func:`steady_state_covariance`: Eq. (2.8) entry by entry.

    Examples
    --------
    >>> lam, G = np.array([-0.5 + 1j, -1.0]), np.array([[1.0, 0.2j], [-0.2j, 0.5]])
    >>> bool(np.allclose(steady_state_covariance_loop(lam, G), steady_state_covariance(lam, G)))
    True
    """
    lam, g, diagonal = _check_eig_noise(eigvals, noise)
    _check_stable(lam)
    d = lam.shape[0]
    if diagonal:
        out = np.empty(d)
        for k in range(d):
            out[k] = g[k] / (-2.0 * lam[k].real)
        return out
    out = np.empty((d, d), dtype=np.complex128)
    for k in range(d):
        for l in range(d):
            out[k, l] = -g[k, l] / (lam[k] + np.conj(lam[l]))
    return _hermitize(out)


# ---------------------------------------------------------------------------------------------
# AFA's isotropic kernel, Eq. (2.9)
# ---------------------------------------------------------------------------------------------


def _check_isotropic(dt, mu, sigma2, eta2, gamma2):
    dt = as_real_array(dt, "dt")
    out = [dt]
    for name, value in (("mu", mu), ("sigma2", sigma2), ("eta2", eta2), ("gamma2", gamma2)):
        arr = as_real_array(value, name)
        check_nonnegative(arr, name)
        out.append(arr)
    try:
        np.broadcast_shapes(*(a.shape for a in out))
    except ValueError:
        shapes = ", ".join(f"{n} {a.shape}" for n, a in zip(("dt", "mu", "sigma2", "eta2", "gamma2"), out))
        raise ValueError(f"dt, mu, sigma2, eta2, gamma2: shapes do not broadcast ({shapes})") from None
    return out


def isotropic_covariance(dt, mu, sigma2, eta2, gamma2):
    r"""AFA's residual variance between a query at t_i and a key at t_j, Δt = t_i − t_j.

    Implements Eq. (2.9) of the book (Racioppo, arXiv:2509.04154v6, Eq. 6 and App. A.2):
    process noise accumulated over the lag, the key's measurement noise propagated with it,
    and the query's anchor noise.

    Parameters
    ----------
    dt : array_like of float
        Signed lag Δt = t_i − t_j: ≥ 0 for causal pairs (key before query), < 0 for a key after
        the query (pushed back).
    mu : array_like of float
        Decay μ ≥ 0 (λ = −μ + iω); μ = 0 is the exact Brownian limit.
    sigma2, eta2, gamma2 : array_like of float
        Process-noise rate σ², key measurement noise η², query anchor noise γ², all ≥ 0.

    Returns
    -------
    ndarray
        float64, the broadcast shape of the inputs: Σ(Δt).

    Notes
    -----
    For Δt ≥ 0 (forward, Eq. (2.5) plus the measurement terms):

    .. math::  Σ(Δt) = σ^2\,\frac{1 - e^{-2μΔt}}{2μ} + η^2 e^{-2μΔt} + γ^2
               = α\,e^{-2μΔt} + β,\qquad α = η^2 - \tilde σ^2,\ β = γ^2 + \tilde σ^2,
               \ \tilde σ^2 = \frac{σ^2}{2μ},

    and for Δt < 0 (pushed back by τ = −Δt, Eq. (2.7)) the process term is
    ``σ² (e^{2μτ} − 1)/(2μ)`` and the measurement term ``η² e^{2μτ}``: both grow, and
    ``Σ = (η² + σ̃²) e^{2μτ} + γ² − σ̃²``. The α/β form holds for Δt ≥ 0 only.
    Σ(0) = η² + γ², Σ(∞) = β, and for μ = 0, Σ = σ²|Δt| + η² + γ².

    Which sign to pass depends on how a key after the query (Δt < 0) is transported to t_i.
    The signed lag pairs with the pushed-back key e^{−Aτ} z_j, per mode e^{−λτ} (unbiased for
    x(t_i), Eq. (2.7)). Passing |Δt| gives the mirror image Σ(|Δt|), which is exactly the residual
    variance of the stationary backward predictor of chapter 2 (Eq. (2.11)), per mode
    e^{λ^* τ} = e^{−μ|Δt|} e^{iωΔt}: decay with |Δt|, rotation with the signed lag, as the
    official code's e^{−μ|t_i − t_j|} with its absolute-time rotations. Mixing the two (one
    transport, the other kernel) is inconsistent.

    For Δt < 0 the sum is evaluated as ``(σ² + 2μη²)(e^{2μτ} − 1)/(2μ) + η² + γ²`` (since
    ``e^{2μτ} = 1 + 2μ (e^{2μτ} − 1)/(2μ)``), one φ of Eq. (2.6) with the exponent's rounding
    restored: a few ulp, and finite wherever the value is representable (``inf``, never NaN,
    beyond the float64 range).

    Examples
    --------
    >>> isotropic_covariance(np.array([0.0, 1.0, -1.0]), 0.0, 0.5, 0.1, 0.05).round(12).tolist()  # μ = 0: σ²|Δt| + η² + γ²
    [0.15, 0.65, 0.65]
    """
    dt, mu, sigma2, eta2, gamma2 = _check_isotropic(dt, mu, sigma2, eta2, gamma2)
    tau = np.abs(dt)
    back = dt < 0
    rate = np.where(back, 2.0 * mu, -2.0 * mu)  # forward decays, pushed-back grows
    shape = np.broadcast_shapes(dt.shape, mu.shape, sigma2.shape, eta2.shape, gamma2.shape)
    # Δt < 0: η² e^{2μτ} = η² + 2μη² φ(2μ, τ), so Σ = (σ² + 2μη²) φ(2μ, τ) + η² + γ²: one φ, whose
    # exponent keeps its rounding and whose overflow is handled (finite wherever Σ is representable)
    g = np.where(back, sigma2 + 2.0 * mu * eta2, sigma2)
    process = _noise_times_phi1(np.broadcast_to(g, shape), rate, tau)  # g (e^{rate τ} − 1)/rate
    measurement = eta2 * np.where(back, 1.0, np.exp(-2.0 * mu * tau))  # η² e^{−2μτ} (forward), η² (back)
    return process + measurement + gamma2


def isotropic_covariance_loop(dt, mu, sigma2, eta2, gamma2):
    """Loop twin of :func:`isotropic_covariance`: Eq. (2.9) one lag at a time.

    Examples
    --------
    >>> dt = np.array([-2.0, 0.0, 0.5, 3.0])
    >>> bool(np.allclose(isotropic_covariance_loop(dt, 0.3, 0.5, 0.1, 0.05), isotropic_covariance(dt, 0.3, 0.5, 0.1, 0.05)))
    True
    """
    arrays = _check_isotropic(dt, mu, sigma2, eta2, gamma2)
    shape = np.broadcast_shapes(*(a.shape for a in arrays))
    dt, mu, sigma2, eta2, gamma2 = (np.broadcast_to(a, shape).reshape(-1) for a in arrays)
    out = np.empty(dt.size)
    for n in range(dt.size):
        tau = abs(dt[n])
        if dt[n] >= 0:  # Σ = σ² (1 − e^{−2μτ})/(2μ) + η² e^{−2μτ} + γ²
            process = _noise_times_phi1_scalar(sigma2[n], -2.0 * mu[n], tau)
            measurement = eta2[n] * math.exp(-2.0 * mu[n] * tau)
        else:  # Σ = σ² (e^{2μτ} − 1)/(2μ) + η² e^{2μτ} + γ² = (σ² + 2μη²)(e^{2μτ} − 1)/(2μ) + η² + γ²
            process = _noise_times_phi1_scalar(sigma2[n] + 2.0 * mu[n] * eta2[n], 2.0 * mu[n], tau)
            measurement = eta2[n]
        out[n] = process + measurement + gamma2[n]
    return out.reshape(shape)
