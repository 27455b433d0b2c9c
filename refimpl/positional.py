r"""Positional encodings as frequency representations: sinusoidal encodings and RoPE.

Chapter 5 of the book (``notebooks/05-positional-encoding.ipynb``) derives every formula here.

Both encodings use one geometric ladder of frequencies (Vaswani et al. 2017, §3.5; Su et al.
2021, §3.2.2)

.. math::  ω_i = \mathrm{base}^{-2i/d},\qquad i = 0,\dots,d/2-1 ,                  \tag{5.1}

from 1 rad/position down to about 1/base. The sinusoidal encoding *adds* ``sin``/``cos`` of
``p ω_i`` to the token; RoPE *rotates* each pair of query/key channels by the angle ``p θ_i``
so that scores depend only on relative positions.

Glossary (code name → symbol in the book / the papers)
-------------------------------------------------------
``n_positions``  number of positions P (pos = 0, …, P − 1).
``d_model``      d, even: the encoding width (d_model in Vaswani et al., d in RoFormer).
``base``         10000 in both papers.
``omega``        ω_i (= θ_{i+1} of RoFormer, which counts from 1), shape (d/2,), Eq. (5.1).
``pe``           PE, shape (P, d): PE[p, 2i] = sin(p ω_i), PE[p, 2i+1] = cos(p ω_i), Eq. (5.2).
``M_k``          the block-diagonal rotation with PE[p + k] = M_k PE[p], Eq. (5.3).
``x``            queries or keys, shape (..., N, d); the pairs are **interleaved**
                 (x[..., 2i], x[..., 2i+1]) as in RoFormer Eq. (34), not the half-split
                 ``rotate_half`` layout of GPT-NeoX / Hugging Face.
``positions``    m (for a query) or n (for a key), shape (N,); default 0, …, N − 1.
``freqs``        θ_i, shape (d/2,): optional custom frequencies for RoPE.

References
----------
.. [1] A. Vaswani et al., "Attention is all you need", NeurIPS 2017, §3.5.
.. [2] J. Su, Y. Lu, S. Pan, A. Murtadha, B. Wen, Y. Liu, "RoFormer: Enhanced transformer with
       rotary position embedding", arXiv:2104.09864 (2021), §3.2 (rotary embedding, real and complex forms), Eq. (34), §3.4.3.
"""

from __future__ import annotations

import math

import numpy as np

from ._validate import as_bool, as_int, as_positive_scalar, as_real_array

__all__ = [
    "frequencies",
    "sinusoidal_encoding",
    "sinusoidal_encoding_loop",
    "relative_shift_matrix",
    "rope",
    "rope_loop",
    "rope_complex",
    "rope_decay_bound",
]


def _even_width(d, name: str) -> int:
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(d).__name__}")
    if d < 2 or d % 2:
        raise ValueError(f"{name}: expected an even number >= 2 (channels come in (sin, cos) pairs), got {d}")
    return int(d)


def frequencies(d_model: int, base: float = 10000.0) -> np.ndarray:
    r"""The frequency ladder ``ω_i = base^{−2i/d}``, i = 0, …, d/2 − 1.

    Implements Eq. (5.1) of the book (Vaswani et al. 2017, §3.5; RoFormer §3.2.2, where
    ``θ_i = 10000^{−2(i−1)/d}`` counts from i = 1).

    Parameters
    ----------
    d_model : int
        Even width d.
    base : float > 0
        10000 in both papers.

    Returns
    -------
    omega : ndarray, shape (d/2,)
        Radians per position, from 1 down to ``base^{−(d−2)/d}``.

    Examples
    --------
    >>> frequencies(8, base=10000.0).round(6).tolist()  # base^{-2i/d}, i = 0 … 3
    [1.0, 0.1, 0.01, 0.001]
    """
    d = _even_width(d_model, "d_model")
    base = as_positive_scalar(base, "base")
    return base ** (-np.arange(0, d, 2) / d)  # ω_i = base^{−2i/d}


def sinusoidal_encoding(n_positions: int, d_model: int, base: float = 10000.0) -> np.ndarray:
    r"""The sinusoidal positional encoding of Vaswani et al. (interleaved sin/cos).

    Implements Eq. (5.2) of the book (Vaswani et al. 2017, §3.5):
    ``PE[p, 2i] = sin(p / base^{2i/d})``, ``PE[p, 2i+1] = cos(p / base^{2i/d})``.

    Parameters
    ----------
    n_positions : int
        P, the number of positions p = 0, …, P − 1.
    d_model : int
        Even width d.
    base : float > 0

    Returns
    -------
    pe : ndarray, shape (n_positions, d_model)

    Notes
    -----
    This is the paper's layout (as in harvardnlp's annotated transformer). The widespread
    tensor2tensor variant ``get_timing_signal_1d`` concatenates ``[sin(all), cos(all)]`` and
    uses the grid ``base^{−i/(d/2−1)}``: a different encoding, not a permutation of this one.

    Examples
    --------
    >>> np.round(sinusoidal_encoding(2, 4), 4)
    array([[0.    , 1.    , 0.    , 1.    ],
           [0.8415, 0.5403, 0.01  , 1.    ]])
    """
    n = as_int(n_positions, "n_positions", 0)
    omega = frequencies(d_model, base)
    angle = np.arange(n)[:, None] * omega[None, :]  # p ω_i, shape (P, d/2)
    pe = np.empty((n, 2 * omega.size))
    pe[:, 0::2] = np.sin(angle)  # PE[p, 2i]
    pe[:, 1::2] = np.cos(angle)  # PE[p, 2i+1]
    return pe


def sinusoidal_encoding_loop(n_positions: int, d_model: int, base: float = 10000.0) -> np.ndarray:
    """Loop twin of :func:`sinusoidal_encoding`: one position and one channel at a time (Eq. (5.2)).

    Examples
    --------
    >>> bool(np.allclose(sinusoidal_encoding_loop(6, 4), sinusoidal_encoding(6, 4)))
    True
    """
    n = as_int(n_positions, "n_positions", 0)
    d = _even_width(d_model, "d_model")
    base = as_positive_scalar(base, "base")
    pe = np.zeros((n, d))
    for p in range(n):
        for i in range(d // 2):
            w = base ** (-2.0 * i / d)  # ω_i
            pe[p, 2 * i] = math.sin(p * w)
            pe[p, 2 * i + 1] = math.cos(p * w)
    return pe


def relative_shift_matrix(k: float, d_model: int, base: float = 10000.0) -> np.ndarray:
    r"""The rotation ``M_k`` with ``PE[p + k] = M_k PE[p]`` for every position p.

    Implements Eq. (5.3) of the book (the property Vaswani et al. 2017, §3.5, state in words:
    "PE_{pos+k} can be represented as a linear function of PE_pos").

    Parameters
    ----------
    k : float
        The offset (any real; integer offsets are the usual case).
    d_model : int
        Even width d.
    base : float > 0

    Returns
    -------
    M : ndarray, shape (d, d)
        Block diagonal with blocks ``[[cos kω_i, sin kω_i], [−sin kω_i, cos kω_i]]`` acting on
        the (sin, cos) pair (2i, 2i+1). Orthogonal; ``M_k M_l = M_{k+l}``; ``M_{−k} = M_k^T``.

    Examples
    --------
    >>> pe, M = sinusoidal_encoding(10, 4), relative_shift_matrix(3.0, 4)
    >>> bool(np.allclose(pe[2:7] @ M.T, pe[5:10]))  # PE[p + 3] = M PE[p]
    True
    """
    k = float(as_real_array(k, "k", ndim=0))
    omega = frequencies(d_model, base)
    c, s = np.cos(k * omega), np.sin(k * omega)
    M = np.zeros((2 * omega.size, 2 * omega.size))
    i = np.arange(omega.size)
    M[2 * i, 2 * i], M[2 * i, 2 * i + 1] = c, s  # sin(ω(p+k)) = cos(ωk) sin(ωp) + sin(ωk) cos(ωp)
    M[2 * i + 1, 2 * i], M[2 * i + 1, 2 * i + 1] = -s, c  # cos(ω(p+k)) = −sin(ωk) sin(ωp) + cos(ωk) cos(ωp)
    return M


# ---------------------------------------------------------------------------------------------
# RoPE, Eqs. (5.5)-(5.7)
# ---------------------------------------------------------------------------------------------


def _check_rope(x, positions, base, freqs):
    x = as_real_array(x, "x", copy=False)  # read only: no copy of a float64 input
    if x.ndim < 2:
        raise ValueError(f"x: expected shape (..., N, d), got shape {x.shape}")
    d, n = x.shape[-1], x.shape[-2]
    if d % 2:
        raise ValueError(f"x: expected an even last dimension d (RoPE rotates channel pairs), got shape {x.shape}")
    if positions is None:
        pos = np.arange(n, dtype=np.float64)
    else:
        pos = as_real_array(positions, "positions", ndim=1)
        if pos.shape != (n,):
            raise ValueError(f"positions: expected shape ({n},) (one per row of x), got shape {pos.shape}")
    if freqs is None:
        theta = frequencies(d, base) if d else np.zeros(0)
    else:
        as_positive_scalar(base, "base")
        theta = as_real_array(freqs, "freqs", ndim=1)
        if theta.shape != (d // 2,):
            raise ValueError(f"freqs: expected shape ({d // 2},) (d/2 for x of width {d}), got shape {theta.shape}")
    return x, pos, theta


def rope(x, positions=None, base: float = 10000.0, freqs=None) -> np.ndarray:
    r"""Rotary position embedding: rotate each interleaved channel pair by ``p θ_i``.

    Implements Eq. (5.5) of the book (RoFormer, Su et al. 2021, Eq. 34):

    ``R_p x = x ⊙ (cos pθ_0, cos pθ_0, cos pθ_1, …) + (−x_1, x_0, −x_3, x_2, …) ⊙ (sin pθ_0, sin pθ_0, …)``.

    Parameters
    ----------
    x : array_like, shape (..., N, d)
        Queries or keys (d even). Standard RoPE rotates queries and keys only; rotating the
        values as well, with the opposite rotation of the outputs, is a different mechanism
        (AFA with ``rotate_values=True``, chapter 8).
    positions : array_like, shape (N,), optional
        The position p of each row; default 0, …, N − 1. Real (non-integer) positions allowed.
    base : float > 0
        Used for the default ``θ_i = base^{−2i/d}`` (Eq. (5.1)).
    freqs : array_like, shape (d/2,), optional
        Custom θ_i (overrides ``base``).

    Returns
    -------
    ndarray, shape (..., N, d)

    Notes
    -----
    ``⟨rope(q, m), rope(k, n)⟩ = q^T R_{n−m} k`` depends on the positions only through n − m
    (Eq. (5.6)). The layout is RoFormer's interleaved pairs (2i, 2i+1), as in Meta's LLaMA
    reference (complex view) and GPT-J's ``rotate_every_two``: compare with those without a
    permutation (at the model's ladder, see below). The GPT-NeoX / Hugging Face ``rotate_half``
    layout pairs i with i + d/2 and equals this one up to the fixed permutation
    ``perm = np.r_[0:d:2, 1:d:2]`` of the channels: ``rope(x)[..., perm]`` equals the
    ``rotate_half`` RoPE of ``x[..., perm]``.

    Partial rotary rotates only the first r channels of a head, with the ladder of d := r
    (``θ_i = base^{−2i/r}``), and passes the other channels through unchanged. GPT-J
    (``rotary_dim`` = r) is interleaved: its rotation of ``x[..., :r]`` is ``rope(x[..., :r])``.
    GPT-NeoX (``rotary_ndims`` = r = int(d · ``rotary_pct``)) is half-split *within* those r
    channels: with ``pr = np.r_[0:r:2, 1:r:2]``, its rotation of ``x[..., :r]`` is
    ``rope(x[..., :r][..., np.argsort(pr)])[..., pr]``. Neither ``rope(x[..., :r])`` (without
    ``pr``) nor the full-width recipe with ``perm`` gives it.

    The ladder differs between models too: pass the model's base (``rope_theta``: 10000, the
    default, in RoFormer, LLaMA, GPT-J and GPT-NeoX; 500000 in Llama 3) as ``base``, and a
    rescaled ladder as ``freqs`` (Llama 3.1's; θ_i / s for position interpolation, which
    divides the positions by s). The layout rules above do not depend on the ladder. Chapter 5,
    §5.8, checks all of this.

    Examples
    --------
    >>> x = np.random.default_rng(0).normal(size=(4, 6))
    >>> y = rope(x)
    >>> bool(np.allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1)))  # a rotation keeps norms
    True
    >>> bool(np.allclose(y[0], x[0]))  # position 0 is not rotated
    True
    """
    x, pos, theta = _check_rope(x, positions, base, freqs)
    angle = pos[:, None] * theta[None, :]  # p θ_i, shape (N, d/2)
    cos = np.cos(angle)
    sin = np.sin(angle, out=angle)  # the angles' buffer: memory N·d/2 less
    out = np.empty_like(x)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    even, odd = out[..., 0::2], out[..., 1::2]
    # [cos −sin; sin cos] (x_2i, x_2i+1), written into the output: one (…, N, d/2) temporary at a time
    np.multiply(x0, cos, out=even)
    even -= x1 * sin
    np.multiply(x1, cos, out=odd)
    odd += x0 * sin
    return out


def rope_loop(x, positions=None, base: float = 10000.0, freqs=None) -> np.ndarray:
    """Loop twin of :func:`rope`: a 2×2 rotation per position and channel pair (Eq. (5.5)).

    Examples
    --------
    >>> x = np.random.default_rng(0).normal(size=(4, 6))
    >>> bool(np.allclose(rope_loop(x), rope(x)))
    True
    """
    x, pos, theta = _check_rope(x, positions, base, freqs)
    out = np.empty_like(x)
    for b in np.ndindex(*x.shape[:-2]):
        for row, p in enumerate(pos):
            for i, t in enumerate(theta):
                c, s = math.cos(p * t), math.sin(p * t)
                a, e = x[b][row, 2 * i], x[b][row, 2 * i + 1]
                out[b][row, 2 * i] = c * a - s * e  # R(pθ_i) = [[cos, −sin], [sin, cos]]
                out[b][row, 2 * i + 1] = s * a + c * e
    return out


def rope_complex(x, positions=None, base: float = 10000.0, freqs=None, *, as_complex: bool = False):
    r"""RoPE in complex form: ``z_i = x_{2i} + i x_{2i+1}`` multiplied by ``e^{i p θ_i}``.

    Implements Eq. (5.7) of the book (RoFormer, Su et al. 2021, §3.2.1).

    Parameters
    ----------
    x, positions, base, freqs
        As in :func:`rope`.
    as_complex : bool
        Return the rotated complex pairs, shape (..., N, d/2), instead of the real interleaved
        array (the default, which equals :func:`rope`).

    Returns
    -------
    ndarray, shape (..., N, d) float64, or (..., N, d/2) complex128 if ``as_complex``.

    Examples
    --------
    >>> x = np.random.default_rng(0).normal(size=(4, 6))
    >>> bool(np.allclose(rope_complex(x), rope(x)))  # the same rotation in complex arithmetic
    True
    >>> rope_complex(x, as_complex=True).shape
    (4, 3)
    """
    x, pos, theta = _check_rope(x, positions, base, freqs)
    as_complex = as_bool(as_complex, "as_complex")
    z = x[..., 0::2] + 1j * x[..., 1::2]  # z_i = x_2i + i x_2i+1
    z = z * np.exp(1j * pos[:, None] * theta[None, :])  # z_i e^{i p θ_i}
    if as_complex:
        return z
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = z.real, z.imag
    return out


def rope_decay_bound(distances, d: int, base: float = 10000.0) -> np.ndarray:
    r"""RoFormer's long-term decay curve ``(1/(d/2)) Σ_{j=1}^{d/2} |S_j|``, ``S_j = Σ_{u<j} e^{i r θ_u}``.

    Implements Eq. (5.8) of the book (RoFormer, Su et al. 2021, §3.4.3 and Fig. 2): by Abel
    summation ``|Σ_i h_i e^{i r θ_i}| ≤ (max_{0≤i<d/2} |h_{i+1} − h_i|) Σ_j |S_j|`` with RoFormer's
    convention ``h_{d/2} := 0`` (without it the bound is false: a constant ``h`` would make the
    right side 0), so the mean ``|S_j|`` bounds how large the score of two vectors at relative
    distance ``r`` can be. The curve decays on average but is not monotone: it oscillates, and
    for d = 64 it rises on about half of the integer steps r → r + 1 up to r = 1000.

    Parameters
    ----------
    distances : array_like, shape (R,)
        Relative distances r = n − m.
    d : int
        Even head width (128 in the paper's figure).
    base : float > 0

    Returns
    -------
    ndarray, shape (R,)

    Examples
    --------
    >>> b = rope_decay_bound(np.array([0.0, 10.0, 100.0]), 64)
    >>> b.round(3).tolist()  # decays on average; not monotone
    [16.5, 8.814, 7.465]
    """
    r = as_real_array(distances, "distances", ndim=1)
    theta = frequencies(_even_width(d, "d"), base)
    S = np.cumsum(np.exp(1j * r[:, None] * theta[None, :]), axis=1)  # S_j = Σ_{u<j} e^{i r θ_u} for j = 1..d/2
    return np.abs(S).mean(axis=1)
