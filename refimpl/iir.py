r"""Classical IIR filters: difference equations, biquads, responses, stability, design, and SSMs.

Chapter 13 of the book (``notebooks/13-iir-design.ipynb``) derives every formula here. It is the
classical background of the Focus layer (Lutati, Zimerman & Wolf 2023), whose adaptive filter is
the all-pole biquad ``H(z) = 1 / (1 + θ₀ z⁻¹ + θ₁ z⁻²)``, and of the diagonal state-space models
of the later chapters, whose complex modes ``λ = −μ + iω`` are the complex-conjugate pole pairs
of a biquad.

.. math::  \sum_{k=0}^{q} a_k\,y[n-k] = \sum_{k=0}^{q} b_k\,x[n-k],\qquad a_0 \ne 0   \tag{13.1}
.. math::  H(z) = \frac{B(z)}{A(z)} = \frac{\sum_k b_k z^{-k}}{\sum_k a_k z^{-k}}            \tag{13.3}

Conventions are SciPy's (``scipy.signal.lfilter``): ``b`` and ``a`` are coefficients of powers
of ``z⁻¹``, ``a[0]`` is divided out, and the transposed-direct-form-II state ``zi`` is laid out
as in ``lfilter(b, a, x, zi=zi)``. SciPy is used by the *tests* as the independent oracle. The
filters run the block algorithm of §13.1 (exact linear algebra on powers of the state matrix);
only where those powers grow so much that it would lose accuracy (clustered poles,
:data:`GROWTH_MAX`), and for every filter where ``np.longdouble`` is no wider than float64
(:data:`EXTENDED_PRECISION`), do they run the sample recursion itself, which is SciPy's compiled
``lfilter`` / ``sosfilt`` — checked there against the loop twins and an extended-precision recursion.

Glossary (code name → symbol in the book / the papers)
-------------------------------------------------------
``b`` (q+1,)       numerator coefficients b_k of B(z) (Lutati et al. [3], Eq. 32: b₀, b₁, b₂).
``a`` (q+1,)       denominator coefficients a_k of A(z), a₀ ≠ 0 ([3], Eq. 32: a₁, a₂; Focus: θ₀, θ₁).
``x`` (..., N, d)  input: N samples of d channels (1-D ``(N,)`` is one channel).
``y``              output, the shape of ``x``.
``zi``/``zf``      initial/final filter state: TDF-II ``(..., 2, d)`` (lfilter's ``zi``) or
                   DF-I ``(..., 4, d)`` = [x[−1], x[−2], y[−1], y[−2]].
``sos`` (S, 6)     second-order sections [b₀, b₁, b₂, a₀, a₁, a₂] per row (Eq. (13.23)).
``z, p, k``        zeros, poles, gain (zpk form).  ``s`` analog, ``z`` digital variable.
``w``              digital frequency ω ∈ [0, π] rad/sample (or [0, 2π) with ``whole``).
``fs``             sampling rate; T = 1/fs.
``lam`` (2,)       SSM modes λ_i (= discrete poles p_i);  ``B``, ``C`` (2,) input/output
                   weights; ``D`` feed-through; residues ρ_i = C_i B_i.

References
----------
.. [1] A. V. Oppenheim and R. W. Schafer, *Discrete-Time Signal Processing*, 3rd ed., 2010,
       ch. 5 (transfer functions), 6 (structures), 7 (IIR design).
.. [2] T. W. Parks and C. S. Burrus, *Digital Filter Design*, Wiley 1987.
.. [3] S. Lutati, I. Zimerman and L. Wolf, "Focus Your Attention (with Adaptive IIR
       Filters)", EMNLP 2023, arXiv:2305.14952 (Eq. 5, Eqs. 16–21, Eqs. 29–32).
.. [4] E. I. Jury, *Theory and Application of the z-Transform Method*, Wiley 1964
       (the stability triangle).
.. [5] C. S. Burrus, "Block realization of digital filters", *IEEE Trans. Audio
       Electroacoustics* AU-20(4), 1972 (the block state-space form of §13.1).
.. [6] L. B. Jackson, "A correction to impulse invariance", *IEEE Signal Processing Letters*
       7(10):273–275, 2000 (the h_a(0⁺)/2 term of §13.8).
.. [7] P. Virtanen et al., "SciPy 1.0: fundamental algorithms for scientific computing in
       Python", *Nature Methods* 17:261–272, 2020 (the oracle of the tests and the chapter).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import scipy.linalg
import scipy.signal

from ._scan import BLOCK, _side_by_side, block_filter, linear_scan
from ._scan import block_matrices as _block_matrices  # noqa: F401 (chapter 13 shows the lifted form)
from ._validate import (
    guard_overflow,
    as_bool,
    as_int,
    as_complex_array,
    as_positive_scalar,
    as_real_array,
    check_option,
)

__all__ = [
    # filtering
    "tf_filter",
    "tf_filter_loop",
    "biquad_filter",
    "biquad_filter_loop",
    "sos_filter",
    "sos_filter_loop",
    "impulse_response",
    "impulse_response_loop",
    "biquad_impulse_closed_form",
    # responses
    "frequency_response",
    "frequency_response_loop",
    "sos_frequency_response",
    "group_delay",
    "group_delay_loop",
    "analog_frequency_response",
    # conversions
    "tf2zpk",
    "zpk2tf",
    "zpk2sos",
    "sos2zpk",
    "sos2tf",
    "tf2sos",
    # stability
    "biquad_poles",
    "in_stability_triangle",
    "pole_radius",
    "is_stable",
    # design
    "buttap",
    "cheb1ap",
    "lp2lp_zpk",
    "lp2hp_zpk",
    "lp2bp_zpk",
    "lp2bs_zpk",
    "prewarp",
    "bilinear_zpk",
    "bilinear",
    "impulse_invariance",
    "impulse_invariance_zpk",
    "matched_z",
    "butter",
    "cheby1",
    # state-space models
    "scalar_ssm_to_iir",
    "biquad_to_ssm",
    "ssm_to_biquad",
    "diagonal_ssm_filter",
    "diagonal_ssm_filter_loop",
]

FORMS = ("tdf2", "df1")
BTYPES = ("lowpass", "highpass", "bandpass", "bandstop")
OUTPUTS = ("zpk", "ba", "sos")



# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _coeffs(b, a, *, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate (b, a); return them normalized by a[0] and padded to a common length q+1."""
    b = as_real_array(b, "b", ndim=1)
    a = as_real_array(a, "a", ndim=1)
    if length is not None:
        for arr, name in ((b, "b"), (a, "a")):
            if arr.shape != (length,):
                raise ValueError(f"{name}: expected shape ({length},), got shape {arr.shape}")
    if b.size == 0:
        raise ValueError("b: expected at least one coefficient, got shape (0,)")
    if a.size == 0:
        raise ValueError("a: expected at least one coefficient, got shape (0,)")
    if a[0] == 0:
        raise ValueError("a: expected a[0] != 0 (the coefficient of y[n]), got a[0] = 0")
    q = max(a.size, b.size)
    b = np.concatenate([b, np.zeros(q - b.size)]) / a[0]
    a = np.concatenate([a, np.zeros(q - a.size)]) / a[0]
    return b, a


def _signal(x, name: str = "x") -> tuple[np.ndarray, bool]:
    """x as float64 (..., N, d); a 1-D x becomes (N, 1). Returns (x, was_1d).

    Not copied: no function of this module writes to its input signal.
    """
    x = as_real_array(x, name, copy=False)
    if x.ndim == 0:
        raise ValueError(f"{name}: expected a signal of shape (N,) or (..., N, d), got a scalar")
    if x.ndim == 1:
        return x[:, None], True
    return x, False


def _state(zi, name: str, x: np.ndarray, n_state: int, was_1d: bool) -> np.ndarray:
    """An initial state of shape x.shape[:-2] + (n_state, d) (or (n_state,) for a 1-D x)."""
    want = x.shape[:-2] + (n_state, x.shape[-1])
    if zi is None:
        return np.zeros(want)
    zi = as_real_array(zi, name)
    if was_1d:
        if zi.shape != (n_state,):
            raise ValueError(
                f"{name}: expected shape ({n_state},) for a 1-D x (the state size of the filter given by b, a, or by sos), "
                f"got shape {zi.shape}"
            )
        return zi[:, None]
    if zi.shape != want:
        raise ValueError(
            f"{name}: expected shape {want} (x.shape with N replaced by the state size {n_state} of the filter "
            f"given by b, a, or by sos), got shape {zi.shape}"
        )
    return zi


def _check_stable(a: np.ndarray, name: str = "a") -> None:
    if not is_stable(a):
        raise ValueError(
            f"{name}: expected a stable filter (all poles strictly inside the unit circle), got max |pole| = "
            f"{pole_radius(a):.17g} (the Schur–Cohn test on the coefficients fails)"
        )


def _check_sos(sos) -> np.ndarray:
    sos = as_real_array(sos, "sos", ndim=2)
    if sos.shape[0] == 0 or sos.shape[1] != 6:
        raise ValueError(f"sos: expected shape (n_sections, 6), got shape {sos.shape}")
    if np.any(sos[:, 3] == 0):
        i = int(np.argmax(sos[:, 3] == 0))
        raise ValueError(f"sos: expected a0 = sos[:, 3] != 0, got sos[{i}, 3] = 0")
    return sos


def _tdf2_matrices(b: np.ndarray, a: np.ndarray):
    """State space of the TDF-II structure (Eq. (13.5)): s[n] = A s[n−1] + B x[n], y[n] = C s[n−1] + D x[n]."""
    q = a.size - 1
    A = np.zeros((q, q))
    A[:, 0] = -a[1:]  # s_i[n] = b_i x[n] − a_i y[n] + s_{i+1}[n−1], with y[n] = b_0 x[n] + s_1[n−1]
    A[np.arange(q - 1), np.arange(1, q)] = 1.0
    B = b[1:] - a[1:] * b[0]
    C = np.zeros(q)
    C[0] = 1.0  # y[n] reads s_1
    return A, B, C, b[0]


#: The block algorithm runs only when no power of the state matrix it applies in float64 has an
#: ∞-norm above this (:func:`refimpl._scan.block_filter`); otherwise the filter runs as the sample
#: recursion (13.5), SciPy's compiled ``lfilter`` / ``sosfilt``. Its error is the recursion's times
#: up to about the powers' growth. The calibration is the sweep of §13.1 of the book (4000 samples;
#: 480 Butterworth, Chebyshev I and elliptic low/high-pass designs of order 2-12 and random stable
#: filters, against a double-double recursion): below this threshold the block algorithm's error
#: was at most 23x lfilter's and at most 5.7e-13 of max |y|; between 128 and 1e3 up to 73x, between
#: 1e3 and 1e4 up to 1.7e3x, between 1e4 and 1e6 up to 3.3e5x, and beyond 1e6 89 of 125 filters had
#: no digit left (Butterworth of order 6 at 0.02 Nyquist, the chapter's example: growth 1.3e7, error
#: 0.33 of max |y|; lfilter 4.8e-9), the other 36 kept errors between 1.6e-8 and 1 of max |y|.
#: Above the threshold the filters are lfilter, and exactly as accurate: for clustered poles its
#: own error is large (the tf form loses digits; use second-order sections).
GROWTH_MAX = 128.0

#: Whether ``np.longdouble`` is wider than float64 (x86-64 Linux and macOS: a 64-bit mantissa).
#: The block algorithm forms the powers of its state matrix in ``np.longdouble``
#: (:func:`refimpl._scan.matrix_powers`) so that the rounding of the block map ``A^K`` — applied
#: N/K times, a systematic error — does not pile up. Where ``np.longdouble`` is float64 (MSVC
#: builds on Windows, macOS on arm64) it would: for the undamped resonator of §13.1 of the book
#: (72 000 samples, two channels) the error would be 3.7e-11 instead of 7.7e-14, 230x the sample
#: recursion's 1.6e-13, growing linearly in N. There :func:`tf_filter`, :func:`biquad_filter` and
#: :func:`sos_filter` run the sample recursion (``lfilter`` / ``sosfilt``) for every filter, so
#: their accuracy is the same on every platform (the chapter measures the float64-only block
#: algorithm by forcing it on an extended-precision machine).
EXTENDED_PRECISION = bool(np.finfo(np.longdouble).nmant > np.finfo(np.float64).nmant)


def _block_filter(b: np.ndarray, a: np.ndarray, x: np.ndarray, s0: np.ndarray, block: int = BLOCK):
    """y and the final TDF-II state of the filter (b, a): the block algorithm on the TDF-II state
    space, or the sample recursion (``lfilter``, the same TDF-II state) where the powers of the
    companion matrix grow beyond :data:`GROWTH_MAX`."""
    if a.size == 1:  # a pure gain
        return b[0] * x, s0.copy()
    out = block_filter(*_tdf2_matrices(b, a), x, s0, block, max_growth=GROWTH_MAX) if EXTENDED_PRECISION else None
    if out is None:  # clustered poles (see GROWTH_MAX), or no extended precision (see EXTENDED_PRECISION)
        return tuple(scipy.signal.lfilter(b, a, x, axis=-2, zi=s0))
    return out


def _tf_filter_checked(b, a, x, zi):
    b, a = _coeffs(b, a)
    x, was_1d = _signal(x)
    s0 = _state(zi, "zi", x, a.size - 1, was_1d)
    return b, a, x, s0, was_1d


def _out(y, zf, was_1d, return_state):
    if was_1d:
        y, zf = y[:, 0], zf[:, 0]
    return (y, zf) if return_state else y


def tf_filter(b, a, x, zi=None):
    r"""Filter ``x`` with the rational transfer function ``B(z)/A(z)`` of any order: Eq. (13.1) of the book.

    Implements the difference equation (13.1) in the transposed direct form II, Eq. (13.5) of the
    book (the recursion Eq. 32 of Lutati et al. 2023), by the exact block-recursive algorithm.

    Parameters
    ----------
    b, a : array_like, shape (q+1,)
        Coefficients of powers of ``z⁻¹`` (padded with zeros to a common length); ``a[0] != 0``.
    x : array_like, shape (N,) or (..., N, d)
        Input; the sequence axis is second to last, channels last.
    zi : array_like, shape (q,) or (..., q, d), optional
        Initial TDF-II state, laid out as ``scipy.signal.lfilter``'s ``zi`` (default: at rest).

    Returns
    -------
    y : ndarray, the shape of ``x``
    zf : ndarray, the shape of ``zi``
        Final state; returned only when ``zi`` is given (as ``lfilter`` does).

    Notes
    -----
    Vectorized over channels *and* time without ``lfilter`` (the block realization of a
    recursive filter, Burrus 1972): the sequence is cut into blocks of ``K`` samples,
    ``K = max(BLOCK, 4q)`` (``BLOCK = 16``), or ``max(BLOCK, 8q)`` for a single column or (q <= 8)
    a few columns filtered each as a single column, at most N
    (:func:`refimpl._scan.block_length`). With the TDF-II state space
    ``s[n] = A s[n−1] + B x[n]``, ``y[n] = C s[n−1] + D x[n]`` (companion ``A``), a block entered
    in state ``s`` outputs

        y_k = C A^k s + Σ_{j≤k} h[k−j] x_j        (zero-input + zero-state response)

    so, with every block's entering state stacked on its inputs, all outputs of all blocks and
    channels come from ONE batched product with the K × (q+K) matrix ``[O  T]`` (``O`` the rows
    ``C A^k``, ``T`` the lower-triangular Toeplitz matrix of the impulse response h[0..K−1]).
    The entering states obey ``s' = A^K s + Σ_j A^{K−1−j} B x_j``, a recursion over N/K blocks
    of a q-vector, solved without a loop over blocks by nested super-blocks
    (:func:`refimpl._scan.state_scan`; for a single column :func:`refimpl._scan.column_scan`,
    which fills the innermost level of the recursion in one product too). The powers of ``A``
    are accumulated in extended precision (``np.longdouble``) and rounded once; ``A^K`` is
    applied as a float64 pair where the carry steps through blocks, so its rounding error does
    not pile up over the N/K blocks: for an undamped resonator (|p| = 1) over 7.2·10⁴ samples
    the error against a double-double recursion is 7.7e-14 (the float64 sample recursion: 1.6e-13;
    the block algorithm with A^K in plain float64: 3.3e-10), as measured in §13.1 of the book.
    Each output is otherwise a sum of at most K + q products, exact up to round-off. Where
    ``np.longdouble`` is no wider than float64 the filter runs ``lfilter`` instead (see
    :data:`EXTENDED_PRECISION`). The powers, ``[O T]`` and the carry's matrices depend on the
    filter and the lengths only: they are kept for the filters used last (as FFT libraries keep
    their plans), so filtering many signals of one length with one filter computes them once.

    The powers ``A^k`` are applied in float64, each product with an error of about ε‖A^k‖·|s|
    where the sample recursion has ε‖A‖·|s|. Clustered poles (a high-order low-pass with a low
    cutoff) make ``‖A^k‖`` grow far above 1 before it decays — to 1.3·10⁷ for
    ``butter(6, 0.02)`` on 4000 samples, whose block-algorithm output was then 33 % wrong — so
    when a power the algorithm would apply has an ∞-norm above :data:`GROWTH_MAX` (128), the
    filter runs as the sample recursion (13.5) instead, SciPy's ``lfilter`` (same state layout).
    Below the threshold the block algorithm is not always as accurate as ``lfilter``: in the
    sweep of §13.1 its error reached 23× ``lfilter``'s, at most 5.7e-13 of max |y| — on this
    path compare with a relative tolerance of 1e-12 of max |y|, not 1e-14. Above the threshold the
    output is ``lfilter``'s and only as accurate: for clustered poles the tf form itself loses
    digits (4.8e-9 of max |y| for ``butter(6, 0.02)`` on the 4000 white-noise samples of §13.1).
    Second-order sections (:func:`sos_filter`) avoid the growth and that loss at their root.

    Examples
    --------
    >>> tf_filter([1.0], [1.0, -0.5], [1.0, 0.0, 0.0, 0.0]).tolist()  # y[n] = x[n] + 0.5 y[n−1]
    [1.0, 0.5, 0.25, 0.125]
    >>> y, zf = tf_filter([1.0], [1.0, -0.5], [1.0, 0.0], zi=[0.0])  # with a state: the final state too
    >>> zf.tolist()
    [0.25]
    """
    b, a, x, s0, was_1d = _tf_filter_checked(b, a, x, zi)
    with np.errstate(over="ignore", invalid="ignore"):  # an unstable filter may overflow to inf, as the recursion does
        y, zf = _block_filter(b, a, x, s0)
    return _out(y, zf, was_1d, zi is not None)


def tf_filter_loop(b, a, x, zi=None):
    """Loop twin of :func:`tf_filter`: the TDF-II recursion (13.5), one sample at a time.

    Examples
    --------
    >>> b, a = butter(3, 0.2, output='ba')
    >>> x = np.random.default_rng(0).normal(size=50)
    >>> bool(np.allclose(tf_filter_loop(b, a, x), tf_filter(b, a, x)))
    True
    """
    b, a, x, s0, was_1d = _tf_filter_checked(b, a, x, zi)
    q = a.size - 1
    y = np.empty_like(x)
    s = s0.copy()  # (..., q, d)
    for n in range(x.shape[-2]):
        xn = x[..., n, :]
        yn = b[0] * xn + (s[..., 0, :] if q else 0.0)  # y[n] = b0 x[n] + s_1[n−1]
        for i in range(q):
            nxt = s[..., i + 1, :] if i + 1 < q else 0.0
            s[..., i, :] = b[i + 1] * xn - a[i + 1] * yn + nxt  # s_i[n] = b_i x[n] − a_i y[n] + s_{i+1}[n−1]
        y[..., n, :] = yn
    return _out(y, s, was_1d, zi is not None)


def _biquad_checked(b, a, x, zi, form, require_stable):
    check_option(form, "form", FORMS)
    require_stable = as_bool(require_stable, "require_stable")
    b, a = _coeffs(b, a, length=3)
    if require_stable:
        _check_stable(a)
    x, was_1d = _signal(x)
    s0 = _state(zi, "zi", x, 2 if form == "tdf2" else 4, was_1d)
    return b, a, x, s0, was_1d


def _df1_to_tdf2(b, a, s):
    """TDF-II state from the DF-I history [x[−1], x[−2], y[−1], y[−2]] (Eq. (13.6))."""
    x1, x2, y1, y2 = (s[..., i, :] for i in range(4))
    s1 = b[1] * x1 + b[2] * x2 - a[1] * y1 - a[2] * y2  # the part of y[0] not due to x[0]
    s2 = b[2] * x1 - a[2] * y1
    return np.stack([s1, s2], axis=-2)


def biquad_filter(b, a, x, zi=None, *, form="tdf2", require_stable=False):
    r"""Filter ``x`` with one biquad ``(b0 + b1 z⁻¹ + b2 z⁻²)/(a0 + a1 z⁻¹ + a2 z⁻²)``.

    Implements Eq. (13.2) of the book (Eq. 32 of Lutati et al. 2023 with q = 2) in direct form I
    (Eq. (13.4)) or transposed direct form II (Eq. (13.5)); the forms differ only in their state.

    Parameters
    ----------
    b, a : array_like, shape (3,)
        Numerator and denominator; ``a[0] != 0``.
    x : array_like, shape (N,) or (..., N, d)
    zi : array_like, optional
        ``form="tdf2"``: shape (..., 2, d) (or (2,)), ``lfilter``'s state.
        ``form="df1"``: shape (..., 4, d) (or (4,)), the history [x[−1], x[−2], y[−1], y[−2]].
    form : {"tdf2", "df1"}
        Filter structure (defines the meaning of ``zi`` and ``zf``).
    require_stable : bool
        Raise ``ValueError`` if a pole lies on or outside the unit circle.

    Returns
    -------
    y : ndarray, the shape of ``x``
    zf : ndarray, the shape of ``zi``; only when ``zi`` is given.

    Notes
    -----
    The vectorized path is the block-recursive algorithm of :func:`tf_filter` (exact linear
    algebra; the sample recursion, ``lfilter``, for a double pole so close to the unit circle that
    the powers of the state matrix grow beyond :data:`GROWTH_MAX`); the DF-I history is converted
    to the equivalent TDF-II state (Eq. (13.6)) and the final DF-I history is read off the input
    and output.

    Examples
    --------
    >>> y = biquad_filter([1.0, 0.0, 0.0], [1.0, -0.5, 0.0], [1.0, 0.0, 0.0, 0.0])
    >>> y.tolist()
    [1.0, 0.5, 0.25, 0.125]
    """
    b, a, x, s0, was_1d = _biquad_checked(b, a, x, zi, form, require_stable)
    with np.errstate(over="ignore", invalid="ignore"):  # an unstable filter may overflow to inf
        if form == "tdf2":
            y, zf = _block_filter(b, a, x, s0)
            return _out(y, zf, was_1d, zi is not None)
        y, _ = _block_filter(b, a, x, _df1_to_tdf2(b, a, s0))
    # final history: the last two inputs and outputs (reaching into zi when N < 2)
    xs = np.concatenate([s0[..., 1::-1, :], x[..., -2:, :]], axis=-2)  # [x[−2], x[−1], x[0], ...][-2:] suffices
    ys = np.concatenate([s0[..., 3:1:-1, :], y[..., -2:, :]], axis=-2)
    zf = np.stack([xs[..., -1, :], xs[..., -2, :], ys[..., -1, :], ys[..., -2, :]], axis=-2)
    return _out(y, zf, was_1d, zi is not None)


def biquad_filter_loop(b, a, x, zi=None, *, form="tdf2", require_stable=False):
    """Loop twin of :func:`biquad_filter`: the difference equation of the chosen form, sample by sample.

    Examples
    --------
    >>> x = np.random.default_rng(0).normal(size=(20, 2))
    >>> b, a = [0.2, 0.1, 0.05], [1.0, -1.2, 0.5]
    >>> bool(np.allclose(biquad_filter_loop(b, a, x, form='df1'), biquad_filter(b, a, x, form='df1')))
    True
    """
    b, a, x, s0, was_1d = _biquad_checked(b, a, x, zi, form, require_stable)
    y = np.empty_like(x)
    if form == "tdf2":
        s1, s2 = s0[..., 0, :].copy(), s0[..., 1, :].copy()
        for n in range(x.shape[-2]):
            xn = x[..., n, :]
            yn = b[0] * xn + s1  # y[n] = b0 x[n] + s1[n−1]          (13.5)
            s1 = b[1] * xn - a[1] * yn + s2  # s1[n] = b1 x[n] − a1 y[n] + s2[n−1]
            s2 = b[2] * xn - a[2] * yn  # s2[n] = b2 x[n] − a2 y[n]
            y[..., n, :] = yn
        zf = np.stack([s1, s2], axis=-2)
    else:
        x1, x2, y1, y2 = (s0[..., i, :].copy() for i in range(4))
        for n in range(x.shape[-2]):
            xn = x[..., n, :]
            yn = b[0] * xn + b[1] * x1 + b[2] * x2 - a[1] * y1 - a[2] * y2  # (13.4)
            x2, x1, y2, y1 = x1, xn, y1, yn
            y[..., n, :] = yn
        zf = np.stack([x1, x2, y1, y2], axis=-2)
    return _out(y, zf, was_1d, zi is not None)


def _sos_checked(sos, x, zi, form, require_stable):
    check_option(form, "form", FORMS)
    require_stable = as_bool(require_stable, "require_stable")
    sos = _check_sos(sos)
    x, was_1d = _signal(x)
    n_state = 2 if form == "tdf2" else 4
    if zi is None:
        states = [None] * sos.shape[0]
    else:
        zi = as_real_array(zi, "zi")
        want = (sos.shape[0],) + ((n_state,) if was_1d else x.shape[:-2] + (n_state, x.shape[-1]))
        if zi.shape != want:
            raise ValueError(f"zi: expected shape {want} (one state per section of sos, batch and channels of x), got shape {zi.shape}")
        states = list(zi)
    if require_stable:
        for i, row in enumerate(sos):
            if not is_stable(row[3:]):
                raise ValueError(
                    f"sos: expected stable sections, section {i} has max |pole| = {pole_radius(row[3:]):.17g} "
                    "(poles strictly inside the unit circle needed)"
                )
    return sos, (x[:, 0] if was_1d else x), states


def _sos_apply(filt, sos, x, states, form):
    final = []
    for row, s in zip(sos, states):
        out = filt(row[:3], row[3:], x, s, form=form)
        if s is None:
            x = out
        else:
            x, zf = out
            final.append(zf)
    return (x, np.array(final)) if final else x


def _cascade_matrices(sos: np.ndarray):
    """One state space for the cascade of TDF-II sections (Eq. (13.23)): the state stacks the sections' states.

    Section i filters u_i = y_{i−1} (u_1 = x). With ``u_i[n] = c_i · s[n−1] + d_i x[n]`` (c_i, d_i
    accumulated section by section), its TDF-II recursion ``s_i[n] = A_i s_i[n−1] + B_i u_i[n]``,
    ``y_i[n] = s_{i,1}[n−1] + b_{0,i} u_i[n]`` becomes a block row of a lower block-triangular
    ``A`` (2S × 2S); the same difference equations as running the sections one after another.
    """
    q = 2 * sos.shape[0]
    A, B = np.zeros((q, q)), np.zeros(q)
    c, d = np.zeros(q), 1.0  # u_1[n] = x[n]
    for i, row in enumerate(sos):
        Ai, Bi, Ci, Di = _tdf2_matrices(row[:3] / row[3], row[3:] / row[3])
        sl = slice(2 * i, 2 * i + 2)
        A[sl] = np.outer(Bi, c)  # s_i[n] = A_i s_i[n−1] + B_i (c · s[n−1] + d x[n])
        A[sl, sl] += Ai
        B[sl] = Bi * d
        c = Di * c  # y_i[n] = C_i s_i[n−1] + D_i u_i[n]
        c[sl] += Ci
        d = Di * d
    return A, B, c, d


#: the most sections a single column filters together in one state space by the block algorithm:
#: a longer cascade runs as passes of at most this many sections, one after another (as sosfilt
#: runs its sections). A pass's plan forms K = 16 S powers of its 2S × 2S state matrix in extended
#: precision, products that NumPy does not vectorize (11 µs at 2S = 16, 1.4 ms at 2S = 80,
#: measured): the 40 sections of an order-80 band-pass in one state space took 0.9 s a call on one
#: channel of 10⁵ samples (sosfilt: 6.5 ms; the plan, too large to keep, was made at every call).
#: In passes of 10: 28 ms on the first call, 6.1 ms with its plans kept. A few columns (fewer than
#: 8) run each as a single column (refimpl._scan._block_filter_columns) with blocks of 4q (for q > 8),
#: in passes of at most :data:`_SECTIONS_PER_PASS_FEW` sections, whose plans cost about as much as a
#: single column's pass of 10 (K q³ = 4·24⁴ against 8·20⁴): the 40-section band-pass on two channels,
#: first call 614 ms in one pass, 24 ms in passes (later calls 7.4 / 8.6 ms; sosfilt 14.3 ms); 12
#: sections on three channels in one pass 3.7 ms, in two 8.0 ms (sosfilt 4.9 ms). Many columns keep one
#: pass: their cost is per block of K samples, and passes of a smaller state (K ∝ q) have more
#: blocks (12 sections, 16 channels: 16.7 ms in one pass, 32 ms in two). Up to 10 sections (order
#: 20, the sweep of §13.1 of the book) the cascade stays in one pass. Accuracy against a
#: long-double recursion of the sections (3000 samples): the passes' rounding is sosfilt's kind
#: (Chebyshev I of order 30, 15 sections: 9.0e-10, sosfilt 3.0e-10, one state space 6.3e-11;
#: Butterworth of order 48: 2.6e-14, sosfilt 5.6e-14; the 40-section band-pass: 3.8e-12, sosfilt 4.4e-12).
_SECTIONS_PER_PASS, _SECTIONS_PER_PASS_FEW = 10, 12


def _sos_cascade(sos, x, states):
    """The sections through the block filter: one pass, or for one column or a few passes of at most
    :data:`_SECTIONS_PER_PASS` (:data:`_SECTIONS_PER_PASS_FEW`) sections (``states`` None or one TDF-II
    state per section)."""
    x2 = x[:, None] if x.ndim == 1 else x
    n_sec = sos.shape[0]
    if states is None:
        s0 = np.zeros(x2.shape[:-2] + (2 * n_sec, x2.shape[-1]))
    else:
        s0 = np.concatenate([s.reshape(x2.shape[:-2] + (2, x2.shape[-1])) for s in states], axis=-2)
    y, finals = x2, []
    columns = math.prod(x2.shape[:-2]) * x2.shape[-1]
    if columns == 1:
        passes = -(-n_sec // _SECTIONS_PER_PASS)
    elif _side_by_side(2 * n_sec, columns):  # each column a single column, side by side
        passes = -(-n_sec // _SECTIONS_PER_PASS_FEW)
    else:
        passes = 1
    for part in np.array_split(np.arange(n_sec), passes):  # passes of equal size
        rows = slice(2 * part[0], 2 * part[-1] + 2)
        y, sf = _cascade_pass(sos[part], y, s0[..., rows, :])
        finals.append(sf)
    sf = np.concatenate(finals, axis=-2)
    if x.ndim == 1:
        y, sf = y[:, 0], sf[:, 0]
    if states is None:
        return y
    return y, np.stack(np.split(sf, n_sec, axis=-2 if x.ndim > 1 else -1))


def _cascade_pass(sos, x2, s0):
    """y and the final stacked state of the cascade ``sos`` on x2 (..., N, d) from state s0 (..., 2S, d):
    one pass of the block algorithm, or sosfilt where a section's powers grow (see GROWTH_MAX) or
    without long double."""
    n_sec = sos.shape[0]
    with np.errstate(over="ignore", invalid="ignore"):  # an unstable filter may overflow to inf
        # only each section's own growth counts (the coupling's costs no accuracy: see sos_filter)
        out = block_filter(*_cascade_matrices(sos), x2, s0, max_growth=GROWTH_MAX, section=2) if EXTENDED_PRECISION else None
        if out is None:  # the sections' recursions, sosfilt
            zi = np.moveaxis(s0.reshape(s0.shape[:-2] + (n_sec, 2, s0.shape[-1])), -3, 0)  # sosfilt's (S, ..., 2, d)
            y, zf = scipy.signal.sosfilt(sos / sos[:, 3:4], x2, axis=-2, zi=zi)  # rows scaled to a0 = 1
            out = y, np.concatenate(list(zf), axis=-2)
    return out


def sos_filter(sos, x, zi=None, *, form="tdf2", require_stable=False):
    r"""Filter ``x`` through a cascade of second-order sections.

    Implements Eq. (13.23) of the book: ``H(z) = Π_s H_s(z)``. The S sections run together as
    one state space of order 2S — the sections' TDF-II states stacked, section s driven by the
    output of section s − 1, which makes the state matrix lower block-triangular — through the
    block algorithm of :func:`tf_filter` (one pass over the signal, no intermediate signal per
    section): the same difference equations as running the sections one after another. One column
    of more than 10 sections runs in passes of at most 10, fewer than 8 columns of more than 12 in
    passes of at most 12 (:data:`_SECTIONS_PER_PASS`: the plan of one state space of order 2S costs
    O(S⁴) in extended precision), each pass's output rounded to float64 as ``sosfilt`` rounds each
    section's. Only ``form="df1"`` with ``zi`` given (DF-I states hold each section's own input and
    output history) runs section by section, each with :func:`biquad_filter`.

    The cascade's state matrix has powers that grow with the gains coupling the sections (to 10⁵
    and beyond for sharp designs), but that growth costs little accuracy: on the 210 Butterworth,
    Chebyshev I and elliptic cascades of order 2–20 of §13.1 of the book, against a double-double
    recursion, the block algorithm stayed within 3.3× of ``sosfilt``'s error. What does cost
    accuracy is a *section* whose own powers grow (a double pole near the unit circle): then the
    cascade runs as ``sosfilt`` (see :data:`GROWTH_MAX`), as it does for every cascade where
    ``np.longdouble`` is float64 (:data:`EXTENDED_PRECISION`).

    Parameters
    ----------
    sos : array_like, shape (S, 6)
        Rows ``[b0, b1, b2, a0, a1, a2]`` (``scipy.signal`` layout).
    x : array_like, shape (N,) or (..., N, d)
    zi : array_like, shape (S, ...) optional
        One state per section, each as in :func:`biquad_filter` (``sosfilt``'s ``zi`` for tdf2).
    form : {"tdf2", "df1"}
    require_stable : bool
        Raise ``ValueError`` if a section has a pole on or outside the unit circle.

    Returns
    -------
    y : ndarray, the shape of ``x``;  zf : ndarray (S, ...) only when ``zi`` is given.

    Examples
    --------
    >>> sos = butter(4, 0.2, output='sos')
    >>> x = np.random.default_rng(0).normal(size=64)
    >>> bool(np.allclose(sos_filter(sos, x), tf_filter(*sos2tf(sos), x)))  # the cascade = the product filter
    True
    """
    sos, x, states = _sos_checked(sos, x, zi, form, require_stable)
    if form == "df1" and zi is not None:  # DF-I histories: each section's input and output are needed
        return _sos_apply(biquad_filter, sos, x, states, form)
    return _sos_cascade(sos, x, None if zi is None else states)


def sos_filter_loop(sos, x, zi=None, *, form="tdf2", require_stable=False):
    """Loop twin of :func:`sos_filter`: each section by the difference-equation loop.

    Examples
    --------
    >>> sos, x = butter(4, 0.2, output='sos'), np.random.default_rng(0).normal(size=64)
    >>> bool(np.allclose(sos_filter_loop(sos, x), sos_filter(sos, x)))
    True
    """
    sos, x, states = _sos_checked(sos, x, zi, form, require_stable)
    return _sos_apply(biquad_filter_loop, sos, x, states, form)


def impulse_response(b, a, n):
    """The first ``n`` samples of the impulse response ``h[k]`` of ``B(z)/A(z)``.

    Implements Eq. (13.10) of the book: ``h`` is the output for ``x = δ`` from rest.

    Parameters
    ----------
    b, a : array_like, shape (q+1,)
    n : int ≥ 1

    Returns
    -------
    ndarray, shape (n,)

    Examples
    --------
    >>> impulse_response([1.0], [1.0, -0.5], 4).tolist()
    [1.0, 0.5, 0.25, 0.125]
    """
    n = as_int(n, "n", 1)
    delta = np.zeros(n)
    delta[0] = 1.0
    return tf_filter(b, a, delta)


def impulse_response_loop(b, a, n):
    """Loop twin of :func:`impulse_response`: the recursion h[k] = b_k − Σ_{i≥1} a_i h[k−i].

    Examples
    --------
    >>> b, a = [0.2, 0.1, 0.05], [1.0, -1.2, 0.5]
    >>> bool(np.allclose(impulse_response_loop(b, a, 30), impulse_response(b, a, 30)))
    True
    """
    b, a = _coeffs(b, a)
    n = as_int(n, "n", 1)
    h = np.zeros(n)
    for k in range(n):
        acc = b[k] if k < b.size else 0.0
        for i in range(1, min(k, a.size - 1) + 1):
            acc -= a[i] * h[k - i]  # h[k] = b_k − Σ a_i h[k−i]
        h[k] = acc
    return h


def biquad_impulse_closed_form(b, a, n):
    r"""Closed-form impulse response of a biquad, by the kind of its poles.

    Implements Eq. (13.11) of the book. For the all-pole part ``1/(1 + a1 z⁻¹ + a2 z⁻²)`` with
    poles ``p1, p2`` (roots of ``z² + a1 z + a2``), from rest,

    * distinct poles: ``g[k] = (p1^{k+1} − p2^{k+1}) / (p1 − p2)``;
    * complex poles ``r e^{±iω0}``: ``g[k] = r^k sin((k+1) ω0) / sin ω0``;
    * a double pole ``p`` (``a1² = 4 a2``): ``g[k] = (k+1) p^k``;

    and the numerator shifts and adds: ``h[k] = b0 g[k] + b1 g[k−1] + b2 g[k−2]``.

    Parameters
    ----------
    b, a : array_like, shape (3,)
    n : int ≥ 1

    Returns
    -------
    ndarray, shape (n,)

    Notes
    -----
    The case is chosen by the exact sign of the discriminant ``a1² − 4 a2``. Near a double pole
    the distinct-pole formula divides by ``p1 − p2`` and loses about ``eps/|p1 − p2|`` relative
    accuracy; the recursion (:func:`impulse_response`) does not.

    Examples
    --------
    >>> b, a = [1.0, 0.5, 0.25], [1.0, -1.8, 0.81]  # a double pole at 0.9
    >>> bool(np.allclose(biquad_impulse_closed_form(b, a, 40), impulse_response(b, a, 40)))
    True
    """
    b, a = _coeffs(b, a, length=3)
    n = as_int(n, "n", 1)
    k = np.arange(n, dtype=np.float64)
    disc = a[1] ** 2 - 4.0 * a[2]
    if disc == 0.0:
        p = -a[1] / 2.0
        g = (k + 1.0) * p**k  # double pole
    elif disc > 0.0:
        p1, p2 = _real_roots(a[1], a[2])
        if p1 == p2:  # a2 = 0 and a1 = 0 cannot give disc > 0; kept for safety
            g = (k + 1.0) * p1**k
        else:
            g = (p1 ** (k + 1) - p2 ** (k + 1)) / (p1 - p2)  # distinct real poles
    else:
        r = math.sqrt(a[2])  # |p|² = p p̄ = a2
        w0 = math.atan2(math.sqrt(-disc) / 2.0, -a[1] / 2.0)  # p = −a1/2 + i sqrt(−disc)/2
        g = r**k * np.sin((k + 1.0) * w0) / math.sin(w0)  # complex poles
    h = b[0] * g
    h[1:] += b[1] * g[:-1]
    h[2:] += b[2] * g[:-2]
    return h


def _real_roots(a1: float, a2: float) -> tuple[float, float]:
    """Roots of z² + a1 z + a2 (real discriminant ≥ 0) without cancellation."""
    sq = math.sqrt(a1 * a1 - 4.0 * a2)
    big = -(a1 + math.copysign(sq, a1)) / 2.0  # the root of larger magnitude
    small = a2 / big if big != 0.0 else 0.0  # Vieta: p1 p2 = a2
    return big, small


# ---------------------------------------------------------------------------------------------
# Frequency response and group delay
# ---------------------------------------------------------------------------------------------


def _grid(w, whole) -> np.ndarray:
    whole = as_bool(whole, "whole")
    if isinstance(w, (numbers.Integral, np.integer)) and not isinstance(w, bool):
        n = as_int(w, "w", 1)
        return np.arange(n) * ((2.0 if whole else 1.0) * np.pi / n)
    if isinstance(w, bool):
        raise TypeError("w: expected a number of frequencies (int) or an array of frequencies, got bool")
    w = as_real_array(w, "w")
    if w.ndim != 1:
        raise ValueError(f"w: expected frequencies of shape (n,) or an int, got shape {w.shape}")
    return w


def _poly_at(c: np.ndarray, zinv: np.ndarray) -> np.ndarray:
    """Σ_k c_k zinv^k by Horner's rule."""
    out = np.zeros(zinv.shape, dtype=np.complex128)
    for ck in c[::-1]:
        out = out * zinv + ck
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num/den, with +inf (not NaN, no warning) where den = 0 ≠ num: the response on a pole."""
    out = np.full(np.broadcast(num, den).shape, complex(np.inf, 0.0), dtype=np.complex128)
    pole = den == 0
    np.divide(num, den, out=out, where=~pole)
    out[pole & (num == 0)] = np.nan  # 0/0: a zero on the pole, the ratio of the polynomials is undefined there
    return out


def _poly_ratio(b: np.ndarray, a: np.ndarray, zinv: np.ndarray) -> np.ndarray:
    """B(zinv)/A(zinv); where both vanish (a root common to B and A) the limit, by l'Hôpital's rule."""
    num, den = _poly_at(b, zinv), _poly_at(a, zinv)
    both = np.flatnonzero((num == 0) & (den == 0))
    while both.size and (b.size > 1 or a.size > 1):
        b = b[1:] * np.arange(1, b.size) if b.size > 1 else np.zeros(1)  # d/dx Σ c_k x^k
        a = a[1:] * np.arange(1, a.size) if a.size > 1 else np.zeros(1)
        num[both], den[both] = _poly_at(b, zinv[both]), _poly_at(a, zinv[both])
        both = both[(num[both] == 0) & (den[both] == 0)]
    return _ratio(num, den)


def frequency_response(b, a, w=512, *, whole=False):
    r"""The frequency response ``H(e^{iω}) = B(e^{iω})/A(e^{iω})``.

    Implements Eq. (13.7) of the book (Eq. 5 of Lutati et al. 2023 for b = [1], a = [1, θ0, θ1]).

    Parameters
    ----------
    b, a : array_like, shape (q+1,)
    w : int or array_like, shape (n,)
        An int ``n`` gives the grid ``ω_k = π k/n`` (``2π k/n`` if ``whole``), as
        ``scipy.signal.freqz(b, a, worN=n)``; an array gives the frequencies in rad/sample.
    whole : bool
        Grid over the whole circle [0, 2π) instead of [0, π).

    Returns
    -------
    w : ndarray, shape (n,)
    h : ndarray, complex128, shape (n,)
        ``inf`` (no warning) where A vanishes on the unit circle.

    Examples
    --------
    >>> w, h = frequency_response([0.5, 0.5], [1.0], np.array([0.0, np.pi / 2, np.pi]))  # two-tap average
    >>> (np.abs(h).round(12) + 0.0).tolist()  # |cos(ω/2)|
    [1.0, 0.707106781187, 0.0]
    """
    b, a = _coeffs(b, a)
    w = _grid(w, whole)
    zinv = np.exp(-1j * w)
    return w, _poly_ratio(b, a, zinv)  # H = B(e^{-iω}) / A(e^{-iω})


def frequency_response_loop(b, a, w=512, *, whole=False):
    """Loop twin of :func:`frequency_response`: the sums Σ b_k e^{−iωk}, Σ a_k e^{−iωk} per frequency.

    Examples
    --------
    >>> b, a = [0.2, 0.1, 0.05], [1.0, -1.2, 0.5]
    >>> bool(np.allclose(frequency_response_loop(b, a, 16)[1], frequency_response(b, a, 16)[1]))
    True
    """
    b, a = _coeffs(b, a)
    w = _grid(w, whole)
    h = np.empty(w.shape, dtype=np.complex128)
    for i, wi in enumerate(w):
        db, da = list(b), list(a)
        num = sum(bk * np.exp(-1j * wi * k) for k, bk in enumerate(db))
        den = sum(ak * np.exp(-1j * wi * k) for k, ak in enumerate(da))
        while num == 0 and den == 0 and (len(db) > 1 or len(da) > 1):  # a common root: l'Hôpital
            db = [k * c for k, c in enumerate(db)][1:] or [0.0]
            da = [k * c for k, c in enumerate(da)][1:] or [0.0]
            num = sum(c * np.exp(-1j * wi * k) for k, c in enumerate(db))
            den = sum(c * np.exp(-1j * wi * k) for k, c in enumerate(da))
        h[i] = num / den if den != 0 else complex(np.inf) if num != 0 else complex(np.nan)
    return w, h


def sos_frequency_response(sos, w=512, *, whole=False):
    """Frequency response of a cascade: the product of the sections' responses (Eq. (13.23)).

    Examples
    --------
    >>> sos = butter(4, 0.3, output='sos')
    >>> w, h = sos_frequency_response(sos, np.array([0.0, 0.3 * np.pi]))
    >>> np.abs(h).round(6).tolist()  # 1 at DC, 1/√2 at the cutoff
    [1.0, 0.707107]
    """
    sos = _check_sos(sos)
    w = _grid(w, whole)
    h = np.ones(w.shape, dtype=np.complex128)
    if not np.all(np.any(sos[:, :3] != 0, axis=1)):
        return w, np.zeros(w.shape, dtype=np.complex128)  # a section with b = 0: the cascade is the zero filter
    with np.errstate(invalid="ignore"):  # inf · 0 is resolved below
        for row in sos:
            h *= frequency_response(row[:3], row[3:], w)[1]
    if np.isnan(h).any():  # a pole of one section on a zero of another (inf · 0): the limit of the product
        h = np.where(np.isnan(h), frequency_response(*sos2tf(sos), w)[1], h)
    return w, h


def group_delay(b, a, w=512, *, whole=False):
    r"""Group delay ``τ(ω) = −d arg H(e^{iω}) / dω`` in samples.

    Implements Eq. (13.8) of the book:
    ``τ = Re[Σ k b_k e^{−iωk} / B] − Re[Σ k a_k e^{−iωk} / A]``.

    Parameters
    ----------
    b, a : array_like, shape (q+1,)
    w : int or array_like
        As in :func:`frequency_response`.
    whole : bool

    Returns
    -------
    w : ndarray, shape (n,);  gd : ndarray, float64, shape (n,)
        NaN (no warning) where B or A vanishes on the unit circle (the phase is undefined there).

    Examples
    --------
    >>> w, gd = group_delay([0.0, 0.0, 1.0], [1.0], np.array([0.5, 1.0]))  # a pure delay of two samples
    >>> gd.round(12).tolist()
    [2.0, 2.0]
    """
    b, a = _coeffs(b, a)
    w = _grid(w, whole)
    zinv = np.exp(-1j * w)
    k = np.arange(b.size)
    with np.errstate(divide="ignore", invalid="ignore"):
        num = _poly_at(k * b, zinv) / _poly_at(b, zinv)  # Σ k b_k z^{-k} / B
        den = _poly_at(k * a, zinv) / _poly_at(a, zinv)  # Σ k a_k z^{-k} / A
    gd = (num - den).real
    return w, np.where(np.isfinite(gd), gd, np.nan)


def group_delay_loop(b, a, w=512, *, whole=False):
    """Loop twin of :func:`group_delay`: the four sums per frequency.

    Examples
    --------
    >>> b, a = [0.2, 0.1, 0.05], [1.0, -1.2, 0.5]
    >>> bool(np.allclose(group_delay_loop(b, a, 16)[1], group_delay(b, a, 16)[1]))
    True
    """
    b, a = _coeffs(b, a)
    w = _grid(w, whole)
    gd = np.empty(w.shape)
    for i, wi in enumerate(w):
        e = [np.exp(-1j * wi * k) for k in range(b.size)]
        B = sum(bk * ek for bk, ek in zip(b, e))
        A = sum(ak * ek for ak, ek in zip(a, e))
        kB = sum(k * bk * ek for k, (bk, ek) in enumerate(zip(b, e)))
        kA = sum(k * ak * ek for k, (ak, ek) in enumerate(zip(a, e)))
        gd[i] = (kB / B - kA / A).real if (B != 0 and A != 0) else np.nan
    return w, gd


def analog_frequency_response(b, a, w):
    r"""Analog frequency response ``H(iΩ) = Σ b_k (iΩ)^{M−k} / Σ a_k (iΩ)^{N−k}``.

    Coefficients are of descending powers of ``s`` (``scipy.signal.freqs`` convention); ``w``
    is in rad/s. The analog side of Eqs. (13.14)–(13.17): prototypes vs their discretizations.

    Examples
    --------
    >>> w, h = analog_frequency_response([1.0], [1.0, 1.0], np.array([0.0, 1.0]))  # 1/(s + 1)
    >>> np.abs(h).round(6).tolist()
    [1.0, 0.707107]
    """
    b = as_real_array(b, "b", ndim=1)
    a = as_real_array(a, "a", ndim=1)
    if a.size == 0 or not np.any(a != 0):
        raise ValueError("a: expected a nonzero analog denominator")
    if b.size == 0:
        raise ValueError("b: expected at least one coefficient, got shape (0,)")
    w = as_real_array(w, "w", ndim=1)
    s = 1j * w
    h = np.empty(w.shape, dtype=np.complex128)
    small = np.abs(w) <= 1.0
    h[small] = _ratio(np.polyval(b, s[small]), np.polyval(a, s[small]))
    # |s| > 1: H(s) = s^{M−N} B̃(1/s)/Ã(1/s) with the reversed polynomials, so that no power of a
    # large s is formed (|Ω| up to 1e300 stays finite; a proper H tends to 0 or b_0/a_0)
    x = 1.0 / s[~small]
    with np.errstate(over="ignore", under="ignore"):  # s^{M−N}: a true 0 or inf for extreme |Ω|
        lead = s[~small] ** (b.size - a.size) if b.size >= a.size else x ** (a.size - b.size)
        h[~small] = lead * _ratio(np.polyval(b[::-1], x), np.polyval(a[::-1], x))
    return w, h


# ---------------------------------------------------------------------------------------------
# Conversions tf ↔ zpk ↔ sos
# ---------------------------------------------------------------------------------------------


def _roots(c: np.ndarray) -> np.ndarray:
    """Roots of c[0] z^q + ... + c[q] (leading zeros stripped), complex128."""
    nz = np.flatnonzero(c)
    if nz.size == 0:
        return np.zeros(0, dtype=np.complex128)
    c = c[nz[0] :]
    return np.roots(c).astype(np.complex128) if c.size > 1 else np.zeros(0, dtype=np.complex128)


def tf2zpk(b, a):
    r"""Zeros, poles and gain of the digital ``B(z)/A(z)`` (Eqs. (13.3) and (13.9)).

    ``b`` and ``a`` are padded to a common length, so the zeros and poles are the roots of
    ``z^q B(z)`` and ``z^q A(z)`` — including those at ``z = 0`` that a shorter polynomial
    implies. ``k = b[0]/a[0]`` after stripping leading zeros of ``b`` (a zero at infinity is not
    kept).

    Returns
    -------
    z : ndarray complex128;  p : ndarray complex128;  k : float

    Examples
    --------
    >>> z, p, k = tf2zpk([1.0, 1.0], [1.0, -0.5])
    >>> z.real.tolist(), p.real.tolist(), float(k)
    ([-1.0], [0.5], 1.0)
    """
    b, a = _coeffs(b, a)
    if not np.any(b != 0):
        raise ValueError("b: expected a nonzero numerator")
    nz = np.flatnonzero(b)[0]
    return _roots(b), _roots(a), float(b[nz])


def _conj_closed(r: np.ndarray, scale: float) -> bool:
    if r.size == 0:
        return True
    a = np.sort_complex(r)
    c = np.sort_complex(r.conj())
    return bool(np.max(np.abs(a - c)) <= 1e-9 * max(scale, 1.0))


def _poly(r: np.ndarray) -> np.ndarray:
    """Coefficients of Π (z − r_i), highest power first."""
    c = np.ones(1, dtype=np.complex128)
    for ri in r:
        c = np.convolve(c, [1.0, -ri])  # multiply by (z − r_i)
    return c


def _realify(c: np.ndarray, r: np.ndarray) -> np.ndarray:
    if _conj_closed(r, float(np.max(np.abs(r), initial=0.0))):
        return c.real.copy()
    return c


@guard_overflow()
def zpk2tf(z, p, k):
    """Numerator and denominator of ``k Π(1 − z_i z⁻¹) / Π(1 − p_i z⁻¹)`` (Eqs. (13.9) and (13.3)).

    The coefficients are real when the zeros and the poles are each closed under conjugation
    (to 1e-9 relative); otherwise they are returned complex — never silently made real.

    Returns
    -------
    b : ndarray, shape (len(z)+1,);  a : ndarray, shape (len(p)+1,)

    Examples
    --------
    >>> b, a = zpk2tf([-1.0], [0.5], 2.0)
    >>> b.tolist(), a.tolist()
    ([2.0, 2.0], [1.0, -0.5])
    """
    z = as_complex_array(z, "z", ndim=1)
    p = as_complex_array(p, "p", ndim=1)
    k = as_real_array(k, "k", ndim=0)
    b = _realify(float(k) * _poly(z), z)
    a = _realify(_poly(p), p)
    return b, a


def _single_section(zs, ps) -> np.ndarray:
    """One row [b0 b1 b2 1 a1 a2] from up to two zeros and two poles (conjugate pairs or reals)."""
    b = np.zeros(3)
    a = np.zeros(3)
    bz = _poly(np.asarray(zs, dtype=np.complex128)).real
    ap = _poly(np.asarray(ps, dtype=np.complex128)).real
    b[: bz.size] = bz
    a[: ap.size] = ap
    return np.concatenate([b, a])


def _split_pairs(r: np.ndarray, scale: float):
    """One representative of each conjugate pair (Im > 0) and the reals; error if not closed."""
    tol = 100 * np.finfo(float).eps * max(scale, 1.0)
    real = r[np.abs(r.imag) <= tol].real
    upper = r[r.imag > tol]
    lower = r[r.imag < -tol]
    if upper.size != lower.size or (upper.size and not _conj_closed(np.concatenate([upper, lower]), scale)):
        return None
    return real.astype(np.complex128), np.sort_complex(upper)


@guard_overflow()
def zpk2sos(z, p, k):
    r"""Second-order sections from zeros, poles and gain (Eqs. (13.9) and (13.23)).

    The pairing rule is the one of ``scipy.signal.zpk2sos(..., pairing="nearest")``: repeatedly
    take the remaining pole closest to the unit circle (a complex pole with its conjugate, a real
    pole with the next such real pole), give it the nearest remaining zero (with its conjugate,
    or with the next nearest real zero), and fill the sections from the last to the first, so
    the sharpest resonances come last; the gain goes into the first section. Missing zeros or
    poles are placed at the origin.

    Returns
    -------
    sos : ndarray, shape (ceil(max(len z, len p)/2), 6)

    Examples
    --------
    >>> z, p, k = butter(4, 0.2)
    >>> sos = zpk2sos(z, p, k)
    >>> sos.shape, bool(np.allclose(sos, butter(4, 0.2, output='sos')))
    ((2, 6), True)
    """
    z = as_complex_array(z, "z", ndim=1)
    p = as_complex_array(p, "p", ndim=1)
    k = float(as_real_array(k, "k", ndim=0))
    if z.size == 0 and p.size == 0:
        return np.array([[k, 0.0, 0.0, 1.0, 0.0, 0.0]])
    n = max(z.size, p.size)
    n += n % 2
    z = np.concatenate([z, np.zeros(n - z.size)])
    p = np.concatenate([p, np.zeros(n - p.size)])
    sz, sp = _split_pairs(z, float(np.max(np.abs(z)))), _split_pairs(p, float(np.max(np.abs(p))))
    if sz is None:
        raise ValueError("z: expected zeros closed under complex conjugation (real coefficients)")
    if sp is None:
        raise ValueError("p: expected poles closed under complex conjugation (real coefficients)")
    zr, zc = list(sz[0]), list(sz[1])
    pr, pc = list(sp[0]), list(sp[1])
    n_sec = n // 2
    sos = np.zeros((n_sec, 6))

    def worst(cands):
        return int(np.argmin([abs(1 - abs(c)) for c in cands]))

    def take_nearest(pool, target):
        i = int(np.argmin([abs(c - target) for c in pool]))
        return pool.pop(i)

    for si in range(n_sec - 1, -1, -1):
        cands = pc + pr
        i = worst(cands)
        p1 = cands[i]
        if i < len(pc):
            pc.pop(i)
            ps = [p1, p1.conjugate()]
        else:
            pr.pop(i - len(pc))
            p2 = pr.pop(worst(pr)) if pr else 0.0
            ps = [p1, p2]
        # zeros: the nearest (complex with its conjugate; real with the next nearest real)
        pool = zc + zr
        j = int(np.argmin([abs(c - p1) for c in pool])) if pool else -1
        if ps[1] == np.conj(p1) and p1.imag != 0 and len(pc) + len(pr) + 1 == len(zc) + len(zr) \
                and len(pr) == 1 and len(zr) == 1 and zc:
            # one real pole and one real zero left over: keep them for each other (SciPy's rule)
            j = int(np.argmin([abs(c - p1) for c in zc]))
        if j < len(zc):
            zz = zc.pop(j)
            zs = [zz, zz.conjugate()]
        else:
            z1 = zr.pop(j - len(zc))
            zs = [z1, take_nearest(zr, p1)] if zr else [z1]
        sos[si] = _single_section(zs, ps)
    sos[0, :3] *= k
    return sos


def sos2zpk(sos):
    """Zeros, poles and gain of a cascade: the union of the sections' (Eqs. (13.23) and (13.9)).

    Examples
    --------
    >>> z, p, k = sos2zpk(butter(2, 0.3, output='sos'))
    >>> len(z), len(p), bool(np.all(np.abs(p) < 1))
    (2, 2, True)
    """
    sos = _check_sos(sos)
    zs, ps, k = [], [], 1.0
    for i, row in enumerate(sos):
        if not np.any(row[:3]):  # the cascade is identically zero: it has no zeros or gain to return
            raise ValueError(f"sos: section {i} has a zero numerator (b0 = b1 = b2 = 0)")
        z, p, kk = tf2zpk(row[:3], row[3:])
        zs.append(np.concatenate([z, np.zeros(2 - z.size)]))  # a zero at infinity… is at the origin here
        ps.append(p)
        k *= kk
    return np.concatenate(zs), np.concatenate(ps), k


def sos2tf(sos):
    """``(b, a)`` of a cascade: the product of the sections' polynomials: Eqs. (13.23) and (13.3) of the book.

    Examples
    --------
    >>> b, a = sos2tf(np.array([[1.0, 1.0, 0.0, 1.0, -0.5, 0.0], [1.0, 0.0, 0.0, 1.0, 0.5, 0.0]]))
    >>> b.tolist(), a.tolist()  # (1 + z⁻¹) · 1 over (1 − 0.5 z⁻¹)(1 + 0.5 z⁻¹)
    ([1.0, 1.0, 0.0, 0.0, 0.0], [1.0, 0.0, -0.25, 0.0, 0.0])
    """
    sos = _check_sos(sos)
    b, a = np.ones(1), np.ones(1)
    for row in sos:
        b = np.convolve(b, row[:3] / row[3])
        a = np.convolve(a, row[3:] / row[3])
    return b, a


def tf2sos(b, a):
    """Second-order sections of ``B(z)/A(z)``: :func:`tf2zpk` then :func:`zpk2sos`: Eqs. (13.3) and (13.23) of the book.

    Examples
    --------
    >>> b, a = butter(4, 0.2, output='ba')
    >>> sos = tf2sos(b, a)
    >>> sos.shape, bool(np.allclose(sos_filter(sos, np.eye(1, 32)[0]), impulse_response(b, a, 32)))
    ((2, 6), True)
    """
    return zpk2sos(*tf2zpk(b, a))


# ---------------------------------------------------------------------------------------------
# Stability
# ---------------------------------------------------------------------------------------------


def _biquad_a(a) -> np.ndarray:
    a = as_real_array(a, "a")
    if a.ndim == 0 or a.shape[-1] != 3:
        raise ValueError(f"a: expected biquad denominators of shape (..., 3), got shape {a.shape}")
    if np.any(a[..., 0] == 0):
        raise ValueError("a: expected a[..., 0] != 0, got a zero leading coefficient")
    return a / a[..., :1]


def biquad_poles(a) -> np.ndarray:
    r"""The two poles of ``1/(1 + a1 z⁻¹ + a2 z⁻²)`` for a batch of denominators.

    Roots of ``z² + a1 z + a2`` (Eq. (13.9)), the larger-magnitude one first for real pairs
    (computed without cancellation, the other by Vieta ``p1 p2 = a2``), ``Im p > 0`` first for
    complex pairs.

    Parameters
    ----------
    a : array_like, shape (..., 3)

    Returns
    -------
    ndarray, complex128, shape (..., 2)

    Examples
    --------
    >>> biquad_poles(np.array([1.0, -1.5, 0.56])).real.round(12).tolist()  # (1 − 0.7 z⁻¹)(1 − 0.8 z⁻¹)
    [0.8, 0.7]
    """
    a = _biquad_a(a)
    a1, a2 = a[..., 1], a[..., 2]
    disc = a1 * a1 - 4.0 * a2
    out = np.empty(a.shape[:-1] + (2,), dtype=np.complex128)
    sq = np.sqrt(np.abs(disc))
    big = -(a1 + np.where(a1 >= 0, sq, -sq)) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        small = np.where(big != 0, a2 / np.where(big != 0, big, 1.0), 0.0)
    real = disc >= 0
    out[..., 0] = np.where(real, big, -a1 / 2.0 + 0.5j * sq)
    out[..., 1] = np.where(real, small, -a1 / 2.0 - 0.5j * sq)
    return out


def in_stability_triangle(a) -> np.ndarray:
    r"""The biquad stability triangle: ``|a2| < 1`` and ``|a1| < 1 + a2``.

    Implements Eq. (13.13) of the book (Jury's criterion for q = 2): a biquad with
    denominator ``[1, a1, a2]`` has both poles strictly inside the unit circle iff this holds.

    Parameters
    ----------
    a : array_like, shape (..., 3)

    Returns
    -------
    ndarray of bool, shape (...)

    Examples
    --------
    >>> in_stability_triangle(np.array([[1.0, -1.5, 0.56], [1.0, -2.1, 1.1]])).tolist()
    [True, False]
    """
    a = _biquad_a(a)
    a1, a2 = a[..., 1], a[..., 2]
    return (np.abs(a2) < 1.0) & (np.abs(a1) < 1.0 + a2)


def _denominator(a) -> np.ndarray:
    a = as_real_array(a, "a", ndim=1)
    if a.size == 0 or a[0] == 0:
        raise ValueError("a: expected a[0] != 0")
    return np.trim_zeros(a, "b")  # trailing zeros are poles at z = 0 (delays): they do not change the radius


def pole_radius(a) -> float:
    """Largest pole magnitude ``max |p_i|`` of ``1/A(z)`` (any order; ``a`` shape (q+1,)): Eq. (13.12) of the book.

    Up to order 2 in closed form (:func:`biquad_poles`: a complex pair has ``|p|² = a2/a0``
    exactly), above it from the roots of ``A`` (eigenvalues of the companion matrix), which carry
    rounding errors: a pole on the unit circle may come out as 0.9999999999999999. Use
    :func:`is_stable` to decide stability.

    Examples
    --------
    >>> round(pole_radius([1.0, -1.5, 0.56]), 12)
    0.8
    >>> pole_radius([1.0, -2 * np.cos(0.3), 1.0])  # a pair on the unit circle
    1.0
    """
    a = _denominator(a)
    if a.size <= 3:
        a1, a2 = np.concatenate([a, np.zeros(3 - a.size)])[1:] / a[0]
        if a1 * a1 < 4.0 * a2:  # a complex pair: p p̄ = a2
            return math.sqrt(a2)
        return float(np.max(np.abs(biquad_poles(np.array([1.0, a1, a2])))))
    return float(np.max(np.abs(_roots(a)), initial=0.0))


def is_stable(a) -> bool:
    r"""All poles strictly inside the unit circle (Eq. (13.12)), by the Schur–Cohn test on the coefficients.

    The step-down recursion of the Schur–Cohn (Jury) test: with ``A`` monic of degree m, the
    reflection coefficient is ``k_m = a_m`` and ``A`` is stable iff ``|k_m| < 1`` and the
    polynomial of degree m − 1 with coefficients ``(a_i − k_m a_{m−i}) / (1 − k_m²)`` is stable.
    For m = 2 this is the stability triangle (:func:`in_stability_triangle`). It decides from the
    coefficients, in extended precision, without finding roots: a pole exactly on the unit circle
    (``a = [1, −2 cos θ, 1]``) is unstable, where the roots may round to a radius just below 1.

    Examples
    --------
    >>> is_stable([1.0, -1.5, 0.56]), is_stable([1.0, -2.1, 1.1]), is_stable([1.0, -2 * np.cos(0.3), 1.0])
    (True, False, False)
    """
    c = _denominator(a).astype(np.longdouble)
    c = c / c[0]
    while c.size > 1:
        k = c[-1]  # reflection coefficient k_m = a_m (A monic)
        if not abs(k) < 1:
            return False
        c = (c[:-1] - k * c[:0:-1]) / (1 - k * k)  # (a_i − k a_{m−i}) / (1 − k²), i = 0 … m−1
    return True


# ---------------------------------------------------------------------------------------------
# Analog prototypes and s → z maps
# ---------------------------------------------------------------------------------------------


def buttap(order):
    r"""Analog Butterworth prototype (cutoff 1 rad/s): ``|H(iΩ)|² = 1/(1 + Ω^{2N})``.

    Implements Eq. (13.14) of the book: the poles are the left-half-plane roots of
    ``1 + (s/i)^{2N} = 0``, ``p_m = −exp(iπ m/(2N))`` for ``m = −N+1, −N+3, …, N−1``.

    Returns
    -------
    z : ndarray (0,);  p : ndarray complex128 (N,);  k : float (= 1)

    Examples
    --------
    >>> z, p, k = buttap(3)
    >>> len(z), np.abs(p).round(12).tolist(), float(k)  # poles on the unit circle, no zeros
    (0, [1.0, 1.0, 1.0], 1.0)
    """
    N = as_int(order, "order", 1)
    m = np.arange(-N + 1, N, 2)
    p = -np.exp(1j * np.pi * m / (2 * N))  # on the unit circle, left half plane
    return np.zeros(0, dtype=np.complex128), p, 1.0


@guard_overflow()
def cheb1ap(order, rp):
    r"""Analog Chebyshev type I prototype with passband ripple ``rp`` dB (edge 1 rad/s).

    Implements Eq. (13.15) of the book: ``|H(iΩ)|² = 1/(1 + ε² T_N(Ω)²)``,
    ``ε = sqrt(10^{rp/10} − 1)``; poles ``p_m = −sinh(μ + iπ m/(2N))`` with
    ``μ = asinh(1/ε)/N``; an ellipse with semi-axes ``sinh μ`` and ``cosh μ``. The gain makes
    ``|H(0)| = 1`` (odd N) or ``1/sqrt(1 + ε²)`` (even N).

    Examples
    --------
    >>> z, p, k = cheb1ap(4, 1.0)
    >>> len(p), bool(np.all(p.real < 0))
    (4, True)
    """
    N = as_int(order, "order", 1)
    rp = as_positive_scalar(rp, "rp")
    eps = math.sqrt(10.0 ** (0.1 * rp) - 1.0)
    mu = math.asinh(1.0 / eps) / N
    m = np.arange(-N + 1, N, 2)
    p = -np.sinh(mu + 1j * np.pi * m / (2 * N))
    k = float(np.prod(-p).real)
    if N % 2 == 0:
        k /= math.sqrt(1.0 + eps * eps)
    return np.zeros(0, dtype=np.complex128), p, k


def _zpk_in(z, p, k):
    z = as_complex_array(z, "z", ndim=1)
    p = as_complex_array(p, "p", ndim=1)
    k = float(as_real_array(k, "k", ndim=0))
    if z.size > p.size:
        raise ValueError(f"z, p: expected no more zeros than poles (a proper system), got {z.size} zeros and {p.size} poles")
    return z, p, k


@guard_overflow()
def lp2lp_zpk(z, p, k, wo=1.0):
    """Lowpass → lowpass with cutoff ``wo``: ``s → s/wo`` (Eq. (13.18)).

    Examples
    --------
    >>> z, p, k = lp2lp_zpk(*buttap(2), wo=3.0)
    >>> np.abs(p).round(12).tolist()  # the poles scaled by wo
    [3.0, 3.0]
    """
    z, p, k = _zpk_in(z, p, k)
    wo = as_positive_scalar(wo, "wo")
    return z * wo, p * wo, k * wo ** (p.size - z.size)


@guard_overflow()
def lp2hp_zpk(z, p, k, wo=1.0):
    """Lowpass → highpass with cutoff ``wo``: ``s → wo/s`` (Eq. (13.19)); zeros at infinity go to 0.

    Examples
    --------
    >>> z, p, k = lp2hp_zpk(*buttap(2), wo=3.0)
    >>> (np.abs(z) + 0.0).tolist(), np.abs(p).round(12).tolist()  # zeros at s = 0, poles mirrored
    ([0.0, 0.0], [3.0, 3.0])
    """
    z, p, k = _zpk_in(z, p, k)
    wo = as_positive_scalar(wo, "wo")
    if np.any(p == 0):
        raise ValueError("p: a pole at s = 0 maps to s = ∞ under s → wo/s (expected a lowpass prototype)")
    deg = p.size - z.size
    # (wo/s − z) = −z (s − wo/z)/s for z ≠ 0, but = wo/s for z = 0: a zero at the origin goes to
    # infinity (dropped) and contributes the gain wo instead of −z
    zn = z[z != 0]
    zh = np.concatenate([wo / zn, np.zeros(deg)])
    ph = wo / p
    kh = k * wo ** (z.size - zn.size) * (np.prod(-zn) / np.prod(-p)).real
    return zh.astype(np.complex128), ph, float(kh)


@guard_overflow()
def lp2bp_zpk(z, p, k, wo=1.0, bw=1.0):
    r"""Lowpass → bandpass around ``wo`` with width ``bw``: ``s → (s² + wo²)/(bw s)`` (Eq. (13.20)).

    Each prototype root ``r`` becomes the two roots of ``s² − r bw s + wo² = 0``,
    ``s = r bw/2 ± sqrt((r bw/2)² − wo²)``; zeros at infinity give ``deg`` zeros at 0.

    Examples
    --------
    >>> z, p, k = lp2bp_zpk(*buttap(2), wo=2.0, bw=0.5)
    >>> len(z), len(p)  # each prototype pole becomes a pair
    (2, 4)
    """
    z, p, k = _zpk_in(z, p, k)
    wo = as_positive_scalar(wo, "wo")
    bw = as_positive_scalar(bw, "bw")
    deg = p.size - z.size
    zl, pl = z * bw / 2, p * bw / 2
    zb = np.concatenate([zl + np.sqrt(zl**2 - wo**2), zl - np.sqrt(zl**2 - wo**2), np.zeros(deg)])
    pb = np.concatenate([pl + np.sqrt(pl**2 - wo**2), pl - np.sqrt(pl**2 - wo**2)])
    return zb.astype(np.complex128), pb, k * bw**deg


def lp2bs_zpk(z, p, k, wo=1.0, bw=1.0):
    r"""Lowpass → bandstop around ``wo`` with width ``bw``: ``s → bw s/(s² + wo²)``.

    The highpass map of Eq. (13.19) (with cutoff 1, ``s → 1/s``) followed by the bandpass map
    of Eq. (13.20): ``1/((s² + wo²)/(bw s)) = bw s/(s² + wo²)``. Each prototype root ``r`` becomes
    the two roots of ``r s² − bw s + r wo² = 0``, ``s = bw/(2r) ± sqrt((bw/(2r))² − wo²)``; the
    zeros at infinity become ``deg`` pairs at ``s = ±i wo`` (the notch), and the gain is
    ``k Re(Π(−z_i)/Π(−p_i))`` (the value at s = 0 and at s = ∞ is the prototype's DC value).

    Examples
    --------
    >>> z, p, k = lp2bs_zpk([], [-1.0], 1.0, wo=2.0, bw=1.0)  # 1/(s+1) → (s² + 4)/(s² + s + 4)
    >>> z.tolist(), np.round(np.poly(p).real, 12).tolist(), k
    ([2j, -2j], [1.0, 1.0, 4.0], 1.0)
    """
    z, p, k = _zpk_in(z, p, k)
    wo = as_positive_scalar(wo, "wo")
    bw = as_positive_scalar(bw, "bw")
    if np.any(p == 0):
        raise ValueError("p: a prototype pole at s = 0 has no bandstop image (it maps to s = ±i wo and ∞)")
    if np.any(z == 0):
        raise ValueError("z: a prototype zero at s = 0 has no finite bandstop image (it maps to s = 0 and ∞)")
    return lp2bp_zpk(*lp2hp_zpk(z, p, k, 1.0), wo, bw)  # s → 1/s, then s → (s² + wo²)/(bw s)


def prewarp(f, fs):
    r"""Analog frequency (rad/s) that the bilinear transform maps onto the digital ``f``.

    Implements Eq. (13.17) of the book: ``Ω = 2 fs tan(π f / fs)``, for ``0 < f < fs/2``.

    Examples
    --------
    >>> round(float(prewarp(250.0, 1000.0)), 6)  # 2 fs tan(π f / fs)
    2000.0
    """
    fs = as_positive_scalar(fs, "fs")
    f = as_real_array(f, "f")
    if np.any(f <= 0) or np.any(f >= fs / 2):
        raise ValueError(f"f: expected frequencies strictly between 0 and fs/2 = {fs / 2:g}, got {f.tolist()}")
    return 2.0 * fs * np.tan(np.pi * f / fs)


@guard_overflow()
def bilinear_zpk(z, p, k, fs):
    r"""Bilinear (Tustin) transform of an analog zpk: ``s = 2 fs (z − 1)/(z + 1)``.

    Implements Eq. (13.16) of the book: each root maps as ``z = (2fs + s)/(2fs − s)`` (the left
    half plane onto the unit disk), zeros at infinity go to ``z = −1``, and the gain is
    ``k Π(2fs − z_i)/Π(2fs − p_i)``.

    Examples
    --------
    >>> z, p, k = bilinear_zpk(*buttap(2), fs=2.0)
    >>> z.real.tolist(), bool(np.all(np.abs(p) < 1))  # the analog zeros at ∞ land at z = −1
    ([-1.0, -1.0], True)
    """
    z, p, k = _zpk_in(z, p, k)
    fs = as_positive_scalar(fs, "fs")
    fs2 = 2.0 * fs
    if np.any(p == fs2) or np.any(z == fs2):
        raise ValueError(f"p: a root at s = 2 fs = {fs2:g} maps to z = infinity")
    zd = (fs2 + z) / (fs2 - z)
    pd = (fs2 + p) / (fs2 - p)
    zd = np.concatenate([zd, -np.ones(p.size - z.size)])  # zeros at infinity → Nyquist
    kd = k * (np.prod(fs2 - z) / np.prod(fs2 - p)).real
    return zd.astype(np.complex128), pd, float(kd)


@guard_overflow()
def bilinear(b, a, fs):
    r"""Bilinear transform of an analog ``(b, a)`` (descending powers of s) to a digital ``(b, a)``.

    Substitutes ``s = 2fs (1 − z⁻¹)/(1 + z⁻¹)`` in Eq. (13.16) and multiplies through by
    ``(1 + z⁻¹)^D``, ``D = max(deg B, deg A)``:
    ``Σ_j c_j s^j → Σ_j c_j (2fs)^j (1 − z⁻¹)^j (1 + z⁻¹)^{D−j}``; normalized so ``a[0] = 1``.

    Examples
    --------
    >>> bz, az = bilinear([1.0], [1.0, 1.0], 10.0)  # 1/(s + 1) at fs = 10
    >>> bz.round(6).tolist(), az.round(6).tolist()
    ([0.047619, 0.047619], [1.0, -0.904762])
    """
    b = as_real_array(b, "b", ndim=1)
    a = as_real_array(a, "a", ndim=1)
    fs = as_positive_scalar(fs, "fs")
    if b.size == 0 or not np.any(b != 0):
        raise ValueError("b: expected a nonzero analog numerator")
    if a.size == 0 or not np.any(a != 0):
        raise ValueError("a: expected a nonzero analog denominator")
    b = b[np.flatnonzero(b)[0] :]
    a = a[np.flatnonzero(a)[0] :]
    D = max(b.size, a.size) - 1

    def substitute(c):
        out = np.zeros(D + 1)
        deg = c.size - 1
        for i, ci in enumerate(c):
            j = deg - i  # power of s
            term = np.array([ci * (2.0 * fs) ** j])
            for _ in range(j):
                term = np.convolve(term, [1.0, -1.0])  # (1 − z⁻¹)
            for _ in range(D - j):
                term = np.convolve(term, [1.0, 1.0])  # (1 + z⁻¹)
            out += term
        return out

    bd, ad = substitute(b), substitute(a)
    if ad[0] == 0:
        raise ValueError("a: the analog denominator has a root at s = 2 fs (maps to z = infinity)")
    return bd / ad[0], ad / ad[0]


def _impulse_invariant(num: np.ndarray, poles: np.ndarray, T: float):
    """(bd, ad) of ``h_d[n] = T h_a(nT)`` for ``H_a = num/Π(s − p_i)`` (deg num < q = len(poles)).

    The route has no partial fractions (whose residues grow like 1/Π(p_i − p_j) and cancel for
    close poles): a state-space realization ``h_a(t) = C e^{At} B``, ``e^{AT}`` by
    ``scipy.linalg.expm``, the Markov parameters ``h_d[n] = T C (e^{AT})^n B`` for n < q, the
    denominator ``ad = Π(1 − e^{p_i T} z⁻¹)`` and the numerator ``bd = (ad ∗ h_d)[0:q]`` (the
    product A_d(z) H_d(z) is a polynomial of degree q − 1 in z⁻¹, so its first q terms are all
    of it).

    The realization is the cascade of first-order sections ``x_0' = p_0 x_0 + u``,
    ``x_j' = p_j x_j + σ x_{j−1}``, so ``X_j = σ^j U/Π_{i≤j}(s − p_i)``, with the output
    ``y = Σ_j c_j σ^{-j} x_j`` where ``num = Σ_j c_j Π_{i>j}(s − p_i)`` (Newton's form of the
    numerator on the nodes p_{q−1}, …, p_0, by repeated synthetic division). Its matrix is
    bidiagonal with the poles on the diagonal and σ = max|p_i| below, close to normal, whereas
    the companion form of the same system is so far from normal that ``expm`` loses digits once
    |p|T exceeds a few radians (1e-4 against a condition of 1e-10 at |p|T ≈ 190).
    """
    q = poles.size
    r = np.concatenate([np.zeros(q - num.size), num]).astype(np.complex128)  # s^{q−1} … s^0
    c = np.empty(q, dtype=np.complex128)
    for j in range(q - 1, -1, -1):  # r(s) = c_j + (s − p_j) r_next(s): Horner at p_j
        acc = np.empty(r.size, dtype=np.complex128)
        value = 0.0
        for i, ri in enumerate(r):
            value = value * poles[j] + ri
            acc[i] = value
        c[j], r = acc[-1], acc[:-1]
    sigma = float(np.max(np.abs(poles), initial=0.0)) or 1.0
    A = np.diag(poles.astype(np.complex128)) + np.diag(np.full(q - 1, sigma), -1)
    C = c / sigma ** np.arange(q)  # y = Σ_j c_j σ^{-j} x_j
    E = scipy.linalg.expm(A * T)  # e^{AT}
    h = np.empty(q, dtype=np.complex128)
    x = np.zeros(q, dtype=np.complex128)
    x[0] = 1.0  # B = e_0
    for n in range(q):
        h[n] = T * (C @ x)  # h_d[n] = T C e^{AnT} B
        x = E @ x
    ad = _realify(_poly(np.exp(poles * T)), poles)  # Π (1 − e^{p_i T} z⁻¹): the pole map z = e^{sT}
    if np.isrealobj(ad) and np.isrealobj(num):
        h = h.real  # a real system: the imaginary parts are round-off
    bd = np.convolve(ad, h)[:q]  # (A_d · H_d)(z) truncated to degree q − 1
    return np.concatenate([bd, np.zeros(1, dtype=bd.dtype)]), ad


@guard_overflow()
def impulse_invariance(b, a, fs):
    r"""Impulse-invariant discretization: ``h_d[n] = T h_a(nT)``, ``T = 1/fs``.

    Implements Eq. (13.21) of the book. With the partial fractions of the strictly proper
    ``H_a(s) = Σ_i r_i/(s − p_i)`` (distinct poles, ``r_i = B(p_i)/A'(p_i)``),
    ``h_a(t) = Σ r_i e^{p_i t}`` and ``H_d(z) = T Σ_i r_i / (1 − e^{p_i T} z⁻¹)``: the pole map is
    ``z = e^{sT}``; the zeros are *not* mapped, and the response aliases:
    ``H_d(e^{iω}) = Σ_m H_a(i(ω + 2πm)/T) + T h_a(0⁺)/2``, where the last term vanishes only
    for relative degree ≥ 2 (``h_a(0⁺) = 0``); §13.8 of the book computes both cases.

    Parameters
    ----------
    b, a : array_like
        Analog coefficients, descending powers of s; ``deg B < deg A``. Repeated poles are
        allowed (``h_a`` then has terms ``t^m e^{pt}``).
    fs : float > 0

    Returns
    -------
    bd, ad : ndarray (real), shapes (q+1,) with q = deg A; ``ad[0] = 1``, ``bd[q] = 0``.

    Notes
    -----
    The coefficients are *not* formed from the partial fractions: for close poles the residues
    are large (up to 1/∏|p_i − p_j|) and their sum cancels, which costs as many digits as the
    residues are large. Instead ``h_d[0..q−1]`` come from a state-space form,
    ``h_d[n] = T C e^{AnT} B`` (``scipy.linalg.expm``, as ``scipy.signal.cont2discrete``, but on
    a cascade of first-order sections rather than the companion form),
    ``ad = Π(1 − e^{p_i T} z⁻¹)`` with the poles of ``a``, and ``bd = (ad ∗ h_d)[0:q]``.
    With ``h_d[0] = T h_a(0⁺)`` this is SciPy's ``cont2discrete(..., method='impulse')``: the
    classical, uncorrected map. Jackson (2000) corrects it with ``h_d[0] = T h_a(0⁺)/2``, which
    removes the ``T h_a(0⁺)/2`` term from the aliasing relation; refimpl keeps SciPy's convention.

    See Also
    --------
    impulse_invariance_zpk : the same from analog zeros, poles and gain (no root finding).

    Examples
    --------
    >>> bz, az = impulse_invariance([1.0], [1.0, 1.0], 10.0)  # h_d[n] = T h_a(nT) = T e^{−nT}
    >>> bool(np.allclose(impulse_response(bz, az, 5), 0.1 * np.exp(-0.1 * np.arange(5))))
    True
    """
    b = as_real_array(b, "b", ndim=1)
    a = as_real_array(a, "a", ndim=1)
    fs = as_positive_scalar(fs, "fs")
    if a.size == 0 or not np.any(a != 0):
        raise ValueError("a: expected a nonzero analog denominator")
    a = a[np.flatnonzero(a)[0] :]
    b = b[np.flatnonzero(b)[0] :] if np.any(b != 0) else np.zeros(1)
    if b.size >= a.size:
        raise ValueError(f"b: expected a strictly proper system (deg b < deg a), got deg b = {b.size - 1}, deg a = {a.size - 1}")
    poles = np.roots(a).astype(np.complex128)
    return _impulse_invariant(b / a[0], poles, 1.0 / fs)


@guard_overflow()
def impulse_invariance_zpk(z, p, k, fs):
    r"""Impulse-invariant discretization of an analog ``(z, p, k)``: Eq. (13.21) of the book.

    As :func:`impulse_invariance`, from ``H_a(s) = k Π(s − z_i)/Π(s − p_i)``; the discrete poles
    ``e^{p_i T}`` are exact images of the given poles (no root finding on a polynomial), which
    keeps clustered poles exact.

    Parameters
    ----------
    z, p : array_like of complex
        Analog zeros and poles, fewer zeros than poles (strictly proper); each set closed under
        conjugation for a real filter.
    k : float
    fs : float > 0

    Returns
    -------
    zd : ndarray complex128
        Zeros of ``z^q B_d(z)`` (a zero at infinity is not kept, as in :func:`tf2zpk`).
    pd : ndarray complex128, shape (len(p),)
        ``e^{p_i T}``.
    kd : float
        The first nonzero numerator coefficient.

    Examples
    --------
    ``1/(s + 1)`` at fs = 2 becomes ``T/(1 − e^{−T} z⁻¹)`` = ``0.5 z/(z − e^{−0.5})``:

    >>> zd, pd, kd = impulse_invariance_zpk([], [-1.0], 1.0, 2.0)
    >>> zd.tolist(), bool(abs(pd[0] - np.exp(-0.5)) < 1e-15), kd
    ([0j], True, 0.5)
    """
    z, p, k = _zpk_in(z, p, k)
    fs = as_positive_scalar(fs, "fs")
    if z.size >= p.size:
        raise ValueError(f"z, p: expected fewer zeros than poles (a strictly proper system), got {z.size} zeros and {p.size} poles")
    if k == 0:
        raise ValueError("k: expected a nonzero gain")
    num = _realify(k * _poly(z), z)
    bd, _ = _impulse_invariant(num, p, 1.0 / fs)
    pd = np.exp(p / fs)
    kd = bd[np.flatnonzero(bd)[0]]  # the first nonzero numerator coefficient
    return _roots(bd), pd.astype(np.complex128), (float(kd) if np.isrealobj(bd) else complex(kd))


@guard_overflow()
def matched_z(z, p, k, fs, *, gain_at=0.0):
    r"""Matched-z transform: map poles **and** zeros by ``z = e^{sT}`` and match one gain.

    Implements Eq. (13.22) of the book. Zeros at infinity are placed at ``z = −1`` (Nyquist, the
    image of ``s = ∞`` under the bilinear map), and the gain is chosen so that
    ``|H_d(e^{iΩT})| = |H_a(iΩ)|`` at ``Ω = gain_at`` rad/s (default DC; use a frequency in the
    passband for a highpass or bandpass).

    Returns
    -------
    zd, pd : ndarray complex128;  kd : float

    Examples
    --------
    >>> z, p, k = matched_z([], [-1.0], 1.0, 10.0)  # 1/(s + 1)
    >>> bool(np.allclose(p, np.exp(-0.1)))  # z = e^{sT}
    True
    """
    z, p, k = _zpk_in(z, p, k)
    if k == 0:
        raise ValueError("k: expected a nonzero gain (k = 0 is the zero filter; no gain can be matched)")
    fs = as_positive_scalar(fs, "fs")
    g = as_positive_scalar(gain_at, "gain_at", strict=False)
    T = 1.0 / fs
    if g >= np.pi * fs:
        raise ValueError(f"gain_at: expected 0 <= gain_at < π fs = {np.pi * fs:g} rad/s, got {g!r}")
    zd = np.concatenate([np.exp(z * T), -np.ones(p.size - z.size)])
    pd = np.exp(p * T)
    s0, z0 = 1j * g, np.exp(1j * g * T)
    ha = k * np.prod(s0 - z) / np.prod(s0 - p)
    hd = np.prod(z0 - zd) / np.prod(z0 - pd)
    if abs(hd) == 0 or not np.isfinite(abs(ha)) or abs(ha) == 0:
        raise ValueError(
            f"z, p, gain_at: the response is zero or infinite at {g:g} rad/s (a zero or pole there, or an "
            "overflow of the products over z and p); choose a passband frequency"
        )
    return zd.astype(np.complex128), pd, float(abs(ha) / abs(hd) * np.sign((ha / hd).real or 1.0))


def _design(proto, order, wn, btype, analog, fs, output):
    check_option(btype, "btype", BTYPES)
    check_option(output, "output", OUTPUTS)
    analog = as_bool(analog, "analog")
    wn = as_real_array(wn, "wn")
    want = 2 if btype in ("bandpass", "bandstop") else 1
    if wn.size != want or wn.ndim > 1:
        raise ValueError(f"wn: expected {'two band edges' if want == 2 else 'one cutoff'} for btype={btype!r}, got shape {wn.shape}")
    wn = wn.reshape(-1)
    if analog:
        if fs is not None:
            raise ValueError("fs: an analog design has no sampling rate (wn is in rad/s); leave fs unset")
        if output == "sos":
            raise ValueError("output: expected 'zpk' or 'ba' for an analog design (sections are digital here)")
        if np.any(wn <= 0):
            raise ValueError(f"wn: expected positive frequencies in rad/s, got {wn.tolist()}")
    else:
        fs = 2.0 if fs is None else as_positive_scalar(fs, "fs")
        if np.any(wn <= 0) or np.any(wn >= fs / 2):
            raise ValueError(f"wn: expected frequencies strictly between 0 and fs/2 = {fs / 2:g}, got {wn.tolist()}")
    if want == 2 and not wn[0] < wn[1]:
        raise ValueError(f"wn: expected band edges wn[0] < wn[1], got {wn.tolist()}")
    z, p, k = proto
    # digital: design at the sampling rate 2 (frequencies as fractions of Nyquist), as SciPy does
    fsd = 2.0
    warped = wn if analog else prewarp(wn / (fs / 2.0), fsd)  # Ω = 2 fs tan(π f/fs), Eq. (13.17)
    if btype == "lowpass":
        z, p, k = lp2lp_zpk(z, p, k, warped[0])
    elif btype == "highpass":
        z, p, k = lp2hp_zpk(z, p, k, warped[0])
    else:
        bw = warped[1] - warped[0]
        wo = math.sqrt(warped[0] * warped[1])
        z, p, k = (lp2bp_zpk if btype == "bandpass" else lp2bs_zpk)(z, p, k, wo, bw)
    if not analog:
        z, p, k = bilinear_zpk(z, p, k, fsd)
    if output == "zpk":
        return z, p, k
    if output == "ba":
        return zpk2tf(z, p, k)
    return zpk2sos(z, p, k)


@guard_overflow()
def butter(order, wn, *, btype="lowpass", analog=False, fs=None, output="zpk"):
    r"""Butterworth filter, digital or analog: prototype poles, pre-warping, frequency transformation, bilinear.

    Implements the design chain of §13.7 of the book: :func:`buttap` (Eq. (13.14)) →
    :func:`prewarp` (13.17) → :func:`lp2lp_zpk`/:func:`lp2hp_zpk`/:func:`lp2bp_zpk`/
    :func:`lp2bs_zpk` (13.18–13.20) → :func:`bilinear_zpk` (13.16).

    Parameters
    ----------
    order : int ≥ 1
    wn : float or (2,) array
        Digital: cutoff (or band edges) in the units of ``fs``, strictly between 0 and fs/2;
        with the default ``fs = 2`` a fraction of the Nyquist frequency (``scipy.signal.butter``'s
        ``Wn``). Analog: cutoff (or band edges) in rad/s, > 0.
    btype : {"lowpass", "highpass", "bandpass", "bandstop"}
        A band design has order 2·``order``.
    analog : bool, default False
        Return the analog filter H(s) (no pre-warping, no bilinear transform): zeros, poles and
        gain in s, or ``(b, a)`` in descending powers of s (``scipy.signal.freqs`` convention).
    fs : float > 0, optional
        Sampling rate of a digital design (default 2); must not be given with ``analog=True``.
    output : {"zpk", "ba", "sos"}
        ``"sos"`` only for digital designs.

    Returns
    -------
    (z, p, k), (b, a) or sos, as ``output`` says.

    Examples
    --------
    >>> sos = butter(4, 0.25, output='sos')
    >>> sos.shape
    (2, 6)
    >>> w, h = sos_frequency_response(sos, np.array([0.25 * np.pi]))
    >>> bool(np.isclose(abs(h[0]), 2 ** -0.5))  # −3 dB at the cutoff
    True
    """
    return _design(buttap(order), order, wn, btype, analog, fs, output)


@guard_overflow()
def cheby1(order, rp, wn, *, btype="lowpass", analog=False, fs=None, output="zpk"):
    """Chebyshev type I filter (ripple ``rp`` dB), digital or analog: :func:`cheb1ap` through the chain of :func:`butter`: Eqs. (13.15)–(13.17) of the book.

    Parameters as :func:`butter` (``analog``, ``fs``, ``output``, the four ``btype`` values).

    Examples
    --------
    >>> sos = cheby1(4, 1.0, 0.3, output='sos')
    >>> w, h = sos_frequency_response(sos, np.linspace(0.0, 0.3 * np.pi, 50))
    >>> bool(np.all(np.abs(h) >= 10 ** (-1.0 / 20) - 1e-9))  # ripple at most 1 dB in the pass band
    True
    """
    return _design(cheb1ap(order, rp), order, wn, btype, analog, fs, output)


# ---------------------------------------------------------------------------------------------
# IIR ↔ diagonal state-space models
# ---------------------------------------------------------------------------------------------


def scalar_ssm_to_iir(A, B, C, D):
    r"""The first-order IIR ``(b, a)`` of the scalar SSM ``s[t] = A s[t−1] + B x[t]``, ``y = C s + D x``.

    Implements Eq. (13.24) of the book, the corrected Eqs. 30–31 of Lutati et al. (2023):
    ``y[t] = A y[t−1] + (CB + D) x[t] − AD x[t−1]``, i.e. ``b = [CB + D, −AD]``, ``a = [1, −A]``.
    The paper writes ``+AD`` in its Eq. (31); the chapter shows that sign is wrong numerically.

    Examples
    --------
    >>> b, a = scalar_ssm_to_iir(0.9, 0.5, 2.0, 0.1)
    >>> b.round(12).tolist(), a.round(12).tolist()
    ([1.1, -0.09], [1.0, -0.9])
    """
    vals = []
    for v, name in ((A, "A"), (B, "B"), (C, "C"), (D, "D")):
        vals.append(float(as_real_array(v, name, ndim=0)))
    A, B, C, D = vals
    return np.array([C * B + D, -A * D]), np.array([1.0, -A])


def biquad_to_ssm(b, a):
    r"""The two-state diagonal SSM of a biquad: modes, input and output weights, feed-through.

    Implements Eq. (13.25) of the book (partial fractions, ``scipy.signal.residuez``):

    .. math:: H(z) = D + \frac{ρ_1}{1 − λ_1 z^{-1}} + \frac{ρ_2}{1 − λ_2 z^{-1}},

    ``λ_i`` the poles, ``D = b2/a2`` the direct term, ``ρ_i`` the residues of ``H − D``; returned
    as ``B = (1, 1)`` and ``C = (ρ_1, ρ_2)`` so that ``s_i[n] = λ_i s_i[n−1] + B_i x[n]``,
    ``y[n] = Re Σ C_i s_i[n] + D x[n]`` (:func:`diagonal_ssm_filter`).

    Returns
    -------
    lam, B, C : ndarray complex128, shape (2,);  D : float

    Raises
    ------
    ValueError
        ``a``: if ``a2 = 0`` (fewer than two poles) or the poles coincide (a double pole has no
        diagonal realization).

    Examples
    --------
    >>> lam, B, C, D = biquad_to_ssm([0.2, 0.1, 0.05], [1.0, -1.2, 0.5])
    >>> b, a = ssm_to_biquad(lam, B, C, D)
    >>> bool(np.allclose(b, [0.2, 0.1, 0.05]) and np.allclose(a, [1.0, -1.2, 0.5]))  # a round trip
    True
    """
    b, a = _coeffs(b, a, length=3)
    if a[2] == 0:
        raise ValueError("a: expected a[2] != 0 (two nonzero poles) for a two-state SSM")
    lam = biquad_poles(a)
    if lam[0] == lam[1] or abs(lam[0] - lam[1]) <= 1e-12 * abs(lam[0]):
        raise ValueError("a: expected distinct poles; a double pole has no diagonal (two-mode) realization")
    D = b[2] / a[2]  # direct term: H(z) → b2/a2 as z⁻¹ → ∞
    r = b - D * a  # numerator of H − D, degree ≤ 1 in z⁻¹: r0 + r1 z⁻¹
    rho = np.empty(2, dtype=np.complex128)
    for i in range(2):
        j = 1 - i
        rho[i] = (r[0] + r[1] / lam[i]) / (1.0 - lam[j] / lam[i])  # ρ_i = [(H−D)(1 − λ_i z⁻¹)] at z = λ_i
    return lam, np.ones(2, dtype=np.complex128), rho, float(D)


@guard_overflow()
def ssm_to_biquad(lam, B, C, D):
    r"""The biquad ``(b, a)`` of a two-state diagonal SSM (Eq. (13.26) of the book).

    With residues ``ρ_i = C_i B_i``:
    ``a = [1, −(λ1 + λ2), λ1 λ2]``,
    ``b = [D + ρ1 + ρ2, −D(λ1 + λ2) − ρ1 λ2 − ρ2 λ1, D λ1 λ2]``.
    Real coefficients require ``λ2 = conj λ1`` and ``ρ2 = conj ρ1`` (or all real).

    Returns
    -------
    b, a : ndarray float64, shape (3,)

    Examples
    --------
    >>> lam = 0.9 * np.exp(0.3j * np.array([1, -1]))
    >>> b, a = ssm_to_biquad(lam, np.array([1.0 + 0.5j, 1.0 - 0.5j]), np.array([0.3 - 0.2j, 0.3 + 0.2j]), 0.2)
    >>> bool(np.allclose(a, [1.0, -1.8 * np.cos(0.3), 0.81]))  # (1 − λz⁻¹)(1 − λ̄z⁻¹)
    True
    """
    lam = as_complex_array(lam, "lam", ndim=1)
    B = as_complex_array(B, "B", ndim=1)
    C = as_complex_array(C, "C", ndim=1)
    D = as_real_array(D, "D", ndim=0)
    for arr, name in ((lam, "lam"), (B, "B"), (C, "C")):
        if arr.shape != (2,):
            raise ValueError(f"{name}: expected shape (2,), got shape {arr.shape}")
    rho = C * B
    l1, l2 = lam
    a = np.array([1.0, -(l1 + l2), l1 * l2])
    b = np.array([D + rho[0] + rho[1], -D * (l1 + l2) - rho[0] * l2 - rho[1] * l1, D * l1 * l2])
    scale = max(1.0, float(np.max(np.abs(b))), float(np.max(np.abs(a))))
    if np.max(np.abs(a.imag)) > 1e-12 * scale:
        raise ValueError("lam: expected a real or complex-conjugate pair of modes (real coefficients)")
    if np.max(np.abs(b.imag)) > 1e-12 * scale:
        raise ValueError("B, C: expected residues C_i B_i that are conjugate when the modes are (real coefficients)")
    return b.real.copy(), a.real.copy()


def _ssm_checked(lam, B, C, D, x):
    lam = as_complex_array(lam, "lam", ndim=1)
    m = lam.shape[0]
    B = as_complex_array(B, "B", ndim=1)
    C = as_complex_array(C, "C", ndim=1)
    for arr, name in ((B, "B"), (C, "C")):
        if arr.shape != (m,):
            raise ValueError(f"{name}: expected shape ({m},) like lam, got shape {arr.shape}")
    D = float(as_real_array(D, "D", ndim=0))
    x, was_1d = _signal(x)
    return lam, B, C, D, x, was_1d


def _real_ssm(lam: np.ndarray, B: np.ndarray, C: np.ndarray, D: float):
    """The diagonal complex SSM as a real state space of dimension 2m in the form of Eq. (13.5).

    With s_i = u_i + i v_i and λ_i = α_i + iβ_i the modes rotate and scale the pairs (u_i, v_i):
    ``u' = α u − β v + Re(B) x``, ``v' = β u + α v + Im(B) x``, and ``Re Σ C_i s_i = Re(C)·u −
    Im(C)·v``. The output reads the *updated* state, y[n] = C_r s[n] + D x[n]; in the form
    y[n] = C' s[n−1] + D' x[n] that is C' = C_r A_r, D' = D + C_r B_r.
    """
    al, be = np.diag(lam.real), np.diag(lam.imag)
    A_r = np.block([[al, -be], [be, al]])
    B_r = np.concatenate([B.real, B.imag])
    C_r = np.concatenate([C.real, -C.imag])
    return A_r, B_r, C_r @ A_r, D + C_r @ B_r


@guard_overflow()
def diagonal_ssm_filter(lam, B, C, D, x, *, scan="chunked"):
    r"""Run the diagonal SSM ``s_i[n] = λ_i s_i[n−1] + B_i x[n]``, ``y[n] = Re Σ_i C_i s_i[n] + D x[n]``.

    Implements Eq. (13.25) of the book in the time domain (Eq. 29 of Lutati et al. with the state
    update including the current input). The vectorized path writes the m complex modes as a
    real state space of dimension 2m (rotation–scaling pairs, :func:`_real_ssm`) and runs the
    block algorithm of :func:`tf_filter` on it: a Toeplitz product inside chunks of samples, the
    carried state between them (the "chunked" form of Mamba-2/SSD). ``scan="associative"``
    uses the Hillis–Steele associative scan (:func:`refimpl._scan.linear_scan`) on the complex
    modes instead, the shape of a GPU kernel (O(N log N) work). The chunked form forms the powers
    of its state matrix in ``np.longdouble``; where that is float64 (see
    :data:`EXTENDED_PRECISION`) the error for modes with ``|λ|`` near 1 grows linearly in N.

    Parameters
    ----------
    lam, B, C : array_like, shape (m,)
    D : float
    x : array_like, shape (N,) or (..., N, d)
    scan : {"chunked", "associative"}
        The parallel algorithm for the recursions (both exact up to round-off).

    Returns
    -------
    y : ndarray float64, the shape of ``x``

    Examples
    --------
    >>> x = np.random.default_rng(0).normal(size=40)
    >>> lam, B, C = np.array([0.9, 0.5j]), np.array([1.0, 1.0]), np.array([1.0, 0.5])
    >>> y = diagonal_ssm_filter(lam, B, C, 0.1, x)
    >>> bool(np.allclose(y, diagonal_ssm_filter(lam, B, C, 0.1, x, scan='associative')))
    True
    """
    check_option(scan, "scan", ("chunked", "associative"))
    lam, B, C, D, x, was_1d = _ssm_checked(lam, B, C, D, x)
    if scan == "associative":
        u = x[..., None] * B  # (..., N, d, m): B_i x[n]
        s = linear_scan(np.broadcast_to(lam, u.shape), u, axis=-3)  # s[n] = λ s[n−1] + B x[n]
    else:
        A_r, B_r, C_r, D_r = _real_ssm(lam, B, C, D)
        s0 = np.zeros(x.shape[:-2] + (A_r.shape[0], x.shape[-1]))
        with np.errstate(over="ignore", invalid="ignore"):  # growing modes may overflow, as the recursion does
            y, _ = block_filter(A_r, B_r, C_r, D_r, x, s0)
        return y[:, 0] if was_1d else y
    y = (s @ C).real + D * x
    return y[:, 0] if was_1d else y


@guard_overflow()
def diagonal_ssm_filter_loop(lam, B, C, D, x, *, scan="chunked"):
    """Loop twin of :func:`diagonal_ssm_filter`: the m recursions, sample by sample (``scan`` is ignored).

    Examples
    --------
    >>> x = np.random.default_rng(0).normal(size=40)
    >>> lam, B, C = np.array([0.9, 0.5j]), np.array([1.0, 1.0]), np.array([1.0, 0.5])
    >>> bool(np.allclose(diagonal_ssm_filter_loop(lam, B, C, 0.1, x), diagonal_ssm_filter(lam, B, C, 0.1, x)))
    True
    """
    check_option(scan, "scan", ("chunked", "associative"))
    lam, B, C, D, x, was_1d = _ssm_checked(lam, B, C, D, x)
    y = np.empty_like(x)
    s = np.zeros(x.shape[:-2] + (x.shape[-1], lam.size), dtype=np.complex128)
    for n in range(x.shape[-2]):
        s = lam * s + B * x[..., n, :, None]  # s_i[n] = λ_i s_i[n−1] + B_i x[n]
        y[..., n, :] = (s @ C).real + D * x[..., n, :]  # y[n] = Re Σ C_i s_i[n] + D x[n]
    return y[:, 0] if was_1d else y
