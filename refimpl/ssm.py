r"""State-space models: HiPPO-LegS, discretization, S4 / S4D kernels and the Mamba selective scan.

Chapter 11 of the book (``notebooks/11-state-space-models.ipynb``) derives every formula here.

A (structured) state-space model maps an input channel u(t) to an output y(t) through a
latent state x(t) ∈ ℂ^N:

.. math::  x'(t) = A x(t) + B u(t),\qquad y(t) = C x(t) + D u(t).              \tag{11.1}

Discretized with a step Δ it becomes the linear recurrence (an IIR filter)

.. math::  x_k = \bar A x_{k-1} + \bar B u_k,\qquad y_k = C x_k + D u_k,        \tag{11.8}

whose impulse response is the SSM convolution kernel
``K̄ = (C B̄, C Ā B̄, …, C Ā^{L−1} B̄)`` (Eq. (11.9)), so that ``y = K̄ * u + D u``.
S4 (Gu et al. 2022) uses the HiPPO-LegS matrix A in its normal-plus-low-rank form and the
bilinear rule; S4D uses a diagonal A and a Vandermonde kernel; Mamba (Gu & Dao 2024) makes
Δ, B, C functions of the input — the *selective scan* — so the filter is no longer shift-invariant.

Glossary (code name → symbol in the book / the papers)
------------------------------------------------------
``N``, ``n``         state size N (Mamba: n = d_state).
``H``, ``d_in``      number of independent channels (S4: H = d_model; Mamba: D = d_inner).
``L``                sequence length.
``A`` (N, N)         continuous state matrix A (dense); diagonal A is given by its diagonal (…, N).
``B`` (N,), ``C`` (N,)  input and output vectors B, C (single-input single-output per channel).
``step``             the step size Δ > 0 (per channel in S4/S4D: shape (H,)).
``Ab``, ``Bb``       discretized Ā, B̄ (Eqs. (11.6), (11.7)).
``K`` (…, L)         convolution kernel K̄ (Eq. (11.9)).
``Lambda``, ``P``, ``Q``, ``V``  DPLR form A = V(Λ − P Q^*)V^* of S4 (Eqs. (11.11)–(11.12)).
``u`` (…, L, H)      input sequence (sequence axis second to last), ``y`` the output.
``delta`` (…, L, d_in)  Mamba's input-dependent Δ_t;  ``A`` (d_in, n) its fixed diagonal A;
``B``, ``C`` (…, L, n)  Mamba's input-dependent B_t, C_t;  ``D`` (d_in,) the skip connection.
``h`` (…, d_in, n)   Mamba's state h_t (x_t in S4's notation).

The official interface (:func:`selective_scan_fn`, mamba_ssm's names and layout, Eqs. (11.21)–(11.23)):
``u``, ``delta``, ``z`` (batch, D, L)  input, pre-activation step and gate, channels before time (D = d_in);
``A`` (D, N)          real or complex diagonal (complex: conjugate pairs, y = 2 Re⟨C, h⟩);
``B``, ``C``          (D, N) constant per channel, (batch, N, L) shared, or (batch, G, N, L) in G groups;
``D`` (D,)            skip connection;  ``delta_bias`` (D,)  added to delta before the softplus;
``last_state`` (batch, D, N)  h after the last step.
One step of it, mamba_ssm's decoding interface (:func:`selective_state_update`): ``state`` (batch, D, N), or
(batch, nheads, dim, N) with heads (Mamba-2); ``x``, ``dt``, ``z`` (batch, D) or (batch, nheads, dim); ``A`` (D, N)
or (nheads, dim, N); ``B``, ``C`` (batch, N) or (batch, ngroups, N); returns ``out`` and the new state.
Its backward pass :func:`selective_scan_fn_vjp` takes ``dout`` (batch, D, L) and returns mamba_ssm's gradients
``du``, ``ddelta``, ``dA``, ``dB``, ``dC`` (``dD``, ``dz``, ``ddelta_bias``), each in its input's layout.

Conventions: S4's sign (HiPPO-LegS A has eigenvalues −1, …, −N); the output is read *after*
the update (y_k = C x_k with x_k containing u_k), so K̄_0 = C B̄ — one sample earlier than
``scipy.signal.dlti``'s impulse response; C is a row vector (no conjugation: y = Σ_n C_n x_n).

References
----------
.. [1] A. Gu, T. Dao, S. Ermon, A. Rudra, C. Ré, "HiPPO: Recurrent memory with optimal
       polynomial projections", NeurIPS 2020.
.. [2] A. Gu, K. Goel, C. Ré, "Efficiently modeling long sequences with structured state
       spaces" (S4), ICLR 2022.
.. [3] A. Gu, A. Gupta, K. Goel, C. Ré, "On the parameterization and initialization of
       diagonal state space models" (S4D), NeurIPS 2022.
.. [4] A. Gu, T. Dao, "Mamba: Linear-time sequence modeling with selective state spaces",
       COLM 2024 (arXiv:2312.00752), §3 and Alg. 2.
.. [5] S. Rush, S. Karamcheti, "The Annotated S4", 2022 (srush/annotated-s4).
.. [6] T. Dao, A. Gu, "Transformers are SSMs" (Mamba-2), ICML 2024, §3 (semiseparable matrices).
.. [7] A. Ali, I. Zimerman, L. Wolf, "The hidden attention of Mamba models", arXiv:2403.01590, 2024.
.. [8] T. Dao, A. Gu, ``mamba_ssm`` (github.com/state-spaces/mamba),
       ``mamba_ssm/ops/selective_scan_interface.py``: ``selective_scan_fn`` and ``selective_scan_ref``;
       ``mamba_ssm/ops/triton/selective_state_update.py``: ``selective_state_update`` (one decoding step).
"""

from __future__ import annotations

import cmath
import math

import numpy as np
import scipy.linalg
import scipy.special

from . import _blocking
from ._blocking import one_thread_matmul, per_block
from ._scan import cumsum_rows, linear_scan
from ._validate import (
    guard_overflow,
    as_bool,
    as_int,
    as_int_array,
    as_array,
    as_complex_array,
    as_positive_scalar,
    as_real_array,
    check_option,
    check_square,
)
from .lyapunov import phi1
from .mixing import fft_conv

__all__ = [
    "hippo_legs",
    "hippo_legs_dplr",
    "hippo_legs_online",
    "legs_reconstruct",
    "discretize",
    "ssm_kernel",
    "ssm_kernel_loop",
    "s4d_kernel",
    "s4d_kernel_loop",
    "s4_kernel_dplr",
    "ssm_recurrent",
    "ssm_convolution",
    "selective_scan",
    "selective_scan_loop",
    "selective_scan_assoc",
    "selective_scan_matrix",
    "semiseparable_matrix",
    "selective_scan_fn",
    "selective_scan_fn_loop",
    "selective_state_update",
    "selective_state_update_loop",
    "selective_scan_vjp",
    "selective_scan_vjp_loop",
    "selective_scan_fn_vjp",
    "selective_scan_fn_vjp_loop",
]

METHODS = ("bilinear", "zoh")
DISCRETIZATIONS = ("mamba", "zoh")


# ---------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------


def _stability_tol(A: np.ndarray) -> float:
    return 1e-10 * max(1.0, float(np.max(np.abs(A), initial=0.0)))


def _check_stable_eigs(eigs: np.ndarray, A: np.ndarray, name: str) -> None:
    """Re λ ≤ 0 for every eigenvalue (up to round-off): the discretizations assume stability."""
    worst = float(np.max(np.real(eigs), initial=-np.inf))
    if worst > _stability_tol(A):
        raise ValueError(f"{name}: expected a stable matrix (every Re λ <= 0), got max Re λ = {worst:.6g}")


def _check_steps(step, name: str, batch_shape: tuple) -> np.ndarray:
    s = as_real_array(step, name)
    if np.any(s <= 0):
        raise ValueError(f"{name}: expected step sizes > 0, got minimum {s.min():.6g}")
    try:
        np.broadcast_shapes(s.shape, batch_shape)
    except ValueError:
        raise ValueError(f"{name}: expected a scalar or shape broadcastable to {batch_shape}, got shape {s.shape}") from None
    return s


# ---------------------------------------------------------------------------------------------
# HiPPO-LegS, Eq. (11.3), and its DPLR form, Eqs. (11.11)-(11.12)
# ---------------------------------------------------------------------------------------------


def hippo_legs(N):
    r"""The HiPPO-LegS matrices (A, B) in S4's sign convention.

    Implements Eq. (11.3) of the book (Gu et al. 2022, S4, Eq. 2; HiPPO paper, Thm. 2 with
    the sign flipped).

    Parameters
    ----------
    N : int
        State size, ≥ 1.

    Returns
    -------
    A : ndarray, shape (N, N), float64
        Lower triangular, eigenvalues −1, …, −N.
    B : ndarray, shape (N,), float64

    Notes
    -----
    .. math::  A_{nk} = -\begin{cases}\sqrt{2n+1}\sqrt{2k+1} & n > k\\ n+1 & n = k\\ 0 & n < k\end{cases},
               \qquad B_n = \sqrt{2n+1}.

    The HiPPO paper writes ``c' = −(1/t) A c + (1/t) B f`` with the *positive* matrix; S4 uses
    ``x' = A x + B u`` with the negated one (so the time-invariant system is stable).

    Examples
    --------
    >>> A, B = hippo_legs(3)
    >>> A.round(4)
    array([[-1.    ,  0.    ,  0.    ],
           [-1.7321, -2.    ,  0.    ],
           [-2.2361, -3.873 , -3.    ]])
    """
    N = as_int(N, "N", 1)
    q = np.sqrt(2.0 * np.arange(N) + 1.0)  # (2n+1)^{1/2}
    A = np.tril(np.outer(q, q), -1) + np.diag(np.arange(1.0, N + 1.0))  # n > k: q_n q_k; n = k: n+1
    return 0.0 - A, q.copy()  # 0 − A: no negative zeros above the diagonal


def hippo_legs_dplr(N):
    r"""HiPPO-LegS in S4's normal-plus-low-rank form, diagonalized stably.

    Implements Eqs. (11.11)–(11.12) of the book (Gu et al. 2022, S4, §3.3 and Thm. 1;
    annotated-s4 ``make_DPLR_HiPPO``).

    Parameters
    ----------
    N : int
        State size, ≥ 1.

    Returns
    -------
    Lambda : ndarray, shape (N,), complex128
        Eigenvalues of the normal part, all with real part exactly −1/2.
    P : ndarray, shape (N,), complex128
        The low-rank vector in the eigenbasis, ``V^* p`` with ``p_n = (n + 1/2)^{1/2}``.
    B : ndarray, shape (N,), complex128
        ``V^* B`` (B of :func:`hippo_legs`).
    V : ndarray, shape (N, N), complex128
        Unitary eigenvectors of the normal part: ``A = V (diag Λ − P P^*) V^*``.

    Notes
    -----
    With ``p_n = (n+1/2)^{1/2}``, ``A + p p^T = −I/2 + S`` where S is real skew-symmetric
    (Eq. (11.11)). ``−iS`` is Hermitian, so ``numpy.linalg.eigh`` gives real μ and a *unitary* V
    with ``S = V diag(iμ) V^*``: Λ = −1/2 + iμ. Unitary V has condition number 1; diagonalizing A
    itself instead needs the eigenvectors of S4's Lemma 3.2, whose largest entries grow like
    φ^{2N} ≈ 2^{1.39N} (φ the golden ratio) and whose unit-column matrix has cond ≈ 1.2e23 at N = 32
    (exact, from the closed form; a float64 eigensolver returns a saturated, smaller value; see the chapter).

    Examples
    --------
    >>> Lambda, P, B, V = hippo_legs_dplr(4)
    >>> A, B_dense = hippo_legs(4)
    >>> bool(np.allclose(V @ (np.diag(Lambda) - np.outer(P, P.conj())) @ V.conj().T, A))  # A = V (Λ − P P*) V*
    True
    >>> bool(np.allclose(V @ B, B_dense))
    True
    """
    A, B = hippo_legs(N)
    p = np.sqrt(np.arange(N) + 0.5)
    S = A + np.outer(p, p) + 0.5 * np.eye(N)  # skew-symmetric: S = −S^T
    mu, V = np.linalg.eigh(-1j * S)  # −iS Hermitian: S = V diag(iμ) V^*
    Lambda = -0.5 + 1j * mu  # Λ = −1/2 + iμ
    Vh = V.conj().T
    return Lambda, Vh @ p, Vh @ B, V


def hippo_legs_online(u, N):
    r"""Online HiPPO-LegS projection: the Legendre coefficients of the whole history ``u[..., :k+1, :]``.

    Implements Eq. (11.4) of the book (HiPPO paper, Thm. 2, ``c' = (1/t)(A c + B f)`` in S4's
    sign, discretized by the bilinear rule at ``t = k + 1`` for sample ``k``).

    Parameters
    ----------
    u : array_like, shape (..., L, d)
        The signal, one sample per unit time (sample k at time k + 1).
    N : int
        Number of Legendre coefficients, ≥ 1.

    Returns
    -------
    c : ndarray, shape (..., L, d, N), float64
        ``c[..., k, :, n]`` ≈ ``(1/t) ∫_0^t f(s) √(2n+1) P_n(2s/t − 1) ds`` with ``t = k + 1``.

    Notes
    -----
    The time-varying (scaled) LegS measure is uniform on [0, t]: the state is the projection
    of the entire history onto N scaled Legendre polynomials. Each step solves

    .. math::  (I - \tfrac{1}{2t}A)\,c_t = (I + \tfrac{1}{2t}A)\,c_{t-1} + \tfrac1t B f_t .

    The first sample is the constant history on [0, 1], ``c_1 = f_1 e_0``; a constant signal
    then stays an exact fixed point (``A e_0 = −B``). Reconstruct with
    :func:`legs_reconstruct`. This loop *is* the algorithm (each step has its own matrix).

    Examples
    --------
    >>> c = hippo_legs_online(np.ones((50, 1)), 4)  # a constant signal
    >>> c.shape, (c[-1, 0].round(3) + 0.0).tolist()  # its Legendre coefficients: only the constant term
    ((50, 1, 4), [1.0, 0.0, 0.0, 0.0])
    """
    N = as_int(N, "N", 1)
    u = as_real_array(u, "u")
    if u.ndim < 2:
        raise ValueError(f"u: expected shape (..., L, d), got shape {u.shape}")
    A, B = hippo_legs(N)
    eye = np.eye(N)
    L = u.shape[-2]
    c = np.zeros(u.shape[:-2] + (u.shape[-1], N))
    out = np.empty(u.shape + (N,))
    for k in range(L):
        t = k + 1.0
        if k == 0:  # on [0, 1] the history is the constant f_1: its projection is f_1 e_0
            c = u[..., 0, :, None] * eye[0]
            out[..., 0, :, :] = c
            continue
        lhs = eye - A / (2.0 * t)  # I − A/(2t), lower triangular
        rhs = c @ (eye + A / (2.0 * t)).T + (u[..., k, :, None] / t) * B  # (I + A/2t) c + B f / t
        c = scipy.linalg.solve_triangular(lhs, rhs.reshape(-1, N).T, lower=True).T.reshape(rhs.shape)
        out[..., k, :, :] = c
    return out


def legs_reconstruct(c, x):
    r"""The signal encoded by LegS coefficients: ``f(x) ≈ Σ_n c_n √(2n+1) P_n(x)``.

    Implements Eq. (11.5) of the book (HiPPO paper, §3: the scaled Legendre basis).

    Parameters
    ----------
    c : array_like, shape (..., N)
        Coefficients (e.g. one time step of :func:`hippo_legs_online`).
    x : array_like, shape (M,)
        Points in [−1, 1]; ``x = 2s/t − 1`` maps the history s ∈ [0, t] onto it.

    Returns
    -------
    ndarray, shape (..., M), float64

    Examples
    --------
    >>> legs_reconstruct(np.array([1.0, 0.0, 0.0]), np.array([-1.0, 0.0, 1.0])).tolist()  # the constant P₀
    [1.0, 1.0, 1.0]
    """
    c = as_real_array(c, "c")
    x = as_real_array(x, "x", ndim=1)
    if c.ndim < 1 or c.shape[-1] < 1:
        raise ValueError(f"c: expected shape (..., N) with N >= 1, got shape {c.shape}")
    if np.any(np.abs(x) > 1.0):
        raise ValueError(f"x: expected points in [-1, 1], got range [{x.min():.6g}, {x.max():.6g}]")
    N = c.shape[-1]
    scaled = c * np.sqrt(2.0 * np.arange(N) + 1.0)  # c_n √(2n+1)
    # Legendre series Σ a_n P_n(x) by the three-term recurrence (n+1)P_{n+1} = (2n+1)xP_n − nP_{n−1}
    p_prev, p = np.ones_like(x), x.copy()
    out = scaled[..., :1] * p_prev
    if N > 1:
        out = out + scaled[..., 1:2] * p
    for n in range(1, N - 1):
        p_prev, p = p, ((2 * n + 1) * x * p - n * p_prev) / (n + 1)
        out = out + scaled[..., n + 1 : n + 2] * p
    return out


# ---------------------------------------------------------------------------------------------
# Discretization, Eqs. (11.6)-(11.7)
# ---------------------------------------------------------------------------------------------


def discretize(A, B, step, *, method="bilinear", diagonal=False):
    r"""Discretize ``x' = Ax + Bu`` with step Δ: the bilinear (S4) or zero-order-hold (S4D) rule.

    Implements Eq. (11.6) (bilinear; Gu et al. 2022, S4, Eq. 3) and Eq. (11.7) (ZOH; S4D §2,
    Mamba Eq. 4) of the book.

    Parameters
    ----------
    A : array_like, shape (N, N), or (..., N) if diagonal
        Continuous state matrix (real or complex), stable: every Re λ ≤ 0. A 1-D ``A`` is always
        read as a diagonal; a 2-D one is dense unless ``diagonal=True`` (then (H, N): H diagonals).
    B : array_like, shape (N,) or (N, m) (dense); (..., N) broadcastable with ``A`` (diagonal)
    step : float, or array_like of shape (...) (diagonal only: one Δ per row of ``A``)
        Step Δ > 0.
    method : {"bilinear", "zoh"}
    diagonal : bool
        Read a 2-D ``A`` as a stack of diagonals.

    Returns
    -------
    Ab : ndarray
        Ā, same shape as ``A`` (diagonal: broadcast with ``step``).
    Bb : ndarray
        B̄, same shape as ``B`` (diagonal: broadcast shape).

    Notes
    -----
    Bilinear (Tustin):  ``Ā = (I − Δ/2·A)^{-1}(I + Δ/2·A)``, ``B̄ = (I − Δ/2·A)^{-1} Δ B``.
    ZOH:  ``Ā = e^{ΔA}``, ``B̄ = A^{-1}(e^{ΔA} − I) B``. For diagonal A the ZOH B̄ is
    ``Δ·φ(Δλ)·B`` with φ(z) = (e^z − 1)/z evaluated by :func:`refimpl.lyapunov.phi1` (no
    cancellation as Δλ → 0, exact limit ΔB at λ = 0); for dense A it is the upper-right block of
    Van Loan's ``expm([[A, B], [0, 0]] Δ)``, valid for singular A too.
    C is unchanged by both rules in S4's convention (``scipy.signal.cont2discrete`` with
    ``method="bilinear"`` also transforms C and D: its impulse response is the two-tap average
    ``(K̄_k + K̄_{k−1})/2`` of S4's kernel). Each eigenvalue maps to a pole inside the unit disk:
    ``e^{Δλ}`` (ZOH) or ``(1 + Δλ/2)/(1 − Δλ/2)`` (bilinear).

    Examples
    --------
    >>> Ab, Bb = discretize([-1.0], [1.0], 0.5, method="zoh")
    >>> bool(np.isclose(Ab[0], np.exp(-0.5))), bool(np.isclose(Bb[0], 1 - np.exp(-0.5)))
    (True, True)
    """
    check_option(method, "method", METHODS)
    diagonal = as_bool(diagonal, "diagonal")
    A = as_array(A, "A")
    B = as_array(B, "B")
    if A.ndim == 1 or diagonal:
        if A.ndim < 1 or A.shape[-1] < 1:
            raise ValueError(f"A: expected a diagonal of shape (..., N) with N >= 1, got shape {A.shape}")
        try:
            np.broadcast_shapes(A.shape, B.shape)
        except ValueError:
            raise ValueError(f"B: expected shape broadcastable with A {A.shape}, got shape {B.shape}") from None
        _check_stable_eigs(A, A, "A")
        s = _check_steps(step, "step", A.shape[:-1])[..., None]
        if method == "zoh":
            Ab = np.exp(s * A)  # Ā = e^{Δλ}
            Bb = phi1(A, s) * B  # B̄ = (e^{Δλ} − 1)/λ · B = Δ φ(Δλ) B
        else:
            den = 1.0 - 0.5 * s * A  # 1 − Δλ/2
            Ab = (1.0 + 0.5 * s * A) / den  # Ā = (1 + Δλ/2)/(1 − Δλ/2)
            Bb = s * B / den  # B̄ = Δ B / (1 − Δλ/2)
        return Ab, Bb
    check_square(A, "A")
    N = A.shape[0]
    if B.ndim not in (1, 2) or B.shape[0] != N:
        raise ValueError(f"B: expected shape ({N},) or ({N}, m), got shape {B.shape}")
    _check_stable_eigs(np.linalg.eigvals(A), A, "A")
    dt = as_positive_scalar(step, "step")
    Bm = B.reshape(N, -1)
    if method == "zoh":
        m = Bm.shape[1]
        M = np.zeros((N + m, N + m), dtype=np.result_type(A, Bm))
        M[:N, :N], M[:N, N:] = A, Bm  # expm([[A, B], [0, 0]] Δ) = [[Ā, B̄], [0, I]]
        E = scipy.linalg.expm(dt * M)
        Ab, Bb = E[:N, :N], E[:N, N:]
    else:
        eye = np.eye(N)
        lu = scipy.linalg.lu_factor(eye - 0.5 * dt * A)  # I − Δ/2 A
        Ab = scipy.linalg.lu_solve(lu, eye + 0.5 * dt * A)  # Ā = (I − Δ/2 A)^{-1}(I + Δ/2 A)
        Bb = scipy.linalg.lu_solve(lu, dt * Bm)  # B̄ = (I − Δ/2 A)^{-1} Δ B
    return Ab, Bb.reshape(B.shape)


# ---------------------------------------------------------------------------------------------
# Convolution kernels, Eqs. (11.9), (11.10), (11.13)
# ---------------------------------------------------------------------------------------------


def _check_discrete_ssm(Ab, Bb, C, diagonal: bool):
    """Ā (..., N, N) dense or (..., N) diagonal; B̄, C (..., N); returns arrays and N."""
    diagonal = as_bool(diagonal, "diagonal")
    Ab = as_array(Ab, "Ab")
    Bb = as_array(Bb, "Bb")
    C = as_array(C, "C")
    if diagonal:
        if Ab.ndim < 1 or Ab.shape[-1] < 1:
            raise ValueError(f"Ab: expected a diagonal of shape (..., N) with N >= 1, got shape {Ab.shape}")
        N = Ab.shape[-1]
    else:
        if Ab.ndim < 2 or Ab.shape[-1] != Ab.shape[-2] or Ab.shape[-1] < 1:
            raise ValueError(f"Ab: expected square matrices of shape (..., N, N), got shape {Ab.shape}")
        N = Ab.shape[-1]
    for name, v in (("Bb", Bb), ("C", C)):
        if v.ndim < 1 or v.shape[-1] != N:
            raise ValueError(f"{name}: expected shape (..., {N}) to match Ab, got shape {v.shape}")
    batch = Ab.shape[:-1] if diagonal else Ab.shape[:-2]
    try:
        batch = np.broadcast_shapes(batch, Bb.shape[:-1], C.shape[:-1])
    except ValueError:
        raise ValueError(
            f"C: expected leading (channel) dimensions broadcastable with Ab and Bb, got shapes "
            f"Ab {Ab.shape}, Bb {Bb.shape}, C {C.shape}"
        ) from None
    return Ab, Bb, C, batch


@guard_overflow()
def ssm_kernel(Ab, Bb, C, L, *, diagonal=False):
    r"""The SSM convolution kernel ``K̄_ℓ = C Ā^ℓ B̄``, ℓ = 0 … L−1, from powers of Ā.

    Implements Eq. (11.9) of the book (Gu et al. 2022, S4, Eq. 4–5; annotated-s4 ``K_conv``).

    Parameters
    ----------
    Ab : array_like, shape (..., N, N), or (..., N) if diagonal
        Discrete state matrix Ā (real or complex).
    Bb : array_like, shape (..., N)
        B̄.
    C : array_like, shape (..., N)
        Output row vector C (y = Σ_n C_n x_n, no conjugation).
    L : int
        Kernel length ≥ 1.
    diagonal : bool
        ``Ab`` holds the diagonal of Ā.

    Returns
    -------
    K : ndarray, shape (..., L)
        Broadcast leading (channel) shape; float64 if every input is real, else complex128.

    Notes
    -----
    Baby-step giant-step: with T = ⌈√L⌉, ``K̄_{jT+i} = (C Ā^{jT}) (Ā^i B̄)``, so T matrix–vector
    products give the right factors ``Ā^i B̄`` (i < T), ⌈L/T⌉ row-vector products with
    ``G = Ā^T`` give the left factors ``C G^j``, and one small matrix product combines them:
    O(√L) sequential steps (batched over channels) instead of the L of :func:`ssm_kernel_loop`.
    Both take powers of Ā explicitly, which is fine for a stable Ā in float64 but is exactly
    what S4 avoids for long L (Eq. (11.13)).

    Examples
    --------
    >>> A, B = hippo_legs(4)
    >>> Ab, Bb = discretize(A, B, 0.1)
    >>> C = np.ones(4)
    >>> K = ssm_kernel(Ab, Bb, C, 8)
    >>> bool(np.allclose(K[3], C @ np.linalg.matrix_power(Ab, 3) @ Bb))  # K_l = C Ā^l B̄
    True
    """
    L = as_int(L, "L", 1)
    Ab, Bb, C, batch = _check_discrete_ssm(Ab, Bb, C, diagonal)
    N = Bb.shape[-1]
    T = max(1, int(np.ceil(np.sqrt(L))))
    J = -(-L // T)
    mul = (lambda M, v: M * v) if diagonal else (lambda M, v: np.matmul(M, v[..., None])[..., 0])
    right = [np.broadcast_to(Bb, batch + (N,))]
    for _ in range(T - 1):
        right.append(mul(Ab, right[-1]))  # Ā^i B̄
    G = Ab ** T if diagonal else np.linalg.matrix_power(Ab, T)  # G = Ā^T
    Gt = G if diagonal else np.swapaxes(G, -1, -2)
    left = [np.broadcast_to(C, batch + (N,))]
    for _ in range(J - 1):
        left.append(mul(Gt, left[-1]))  # C Ā^{jT} as (G^T)^j C^T
    R = np.stack(right, axis=-1)  # (..., N, T)
    W = np.stack(left, axis=-2)  # (..., J, N)
    K = np.matmul(W, R)  # K̄_{jT+i} = (C Ā^{jT})(Ā^i B̄): (..., J, T)
    return K.reshape(K.shape[:-2] + (J * T,))[..., :L]


@guard_overflow()
def ssm_kernel_loop(Ab, Bb, C, L, *, diagonal=False):
    """Loop twin of :func:`ssm_kernel`: ``x ← Ā x`` one step at a time, channel by channel (Eq. (11.9)).

    Examples
    --------
    >>> A, B = hippo_legs(4)
    >>> Ab, Bb = discretize(A, B, 0.1)
    >>> C = np.ones(4)
    >>> bool(np.allclose(ssm_kernel_loop(Ab, Bb, C, 8), ssm_kernel(Ab, Bb, C, 8)))
    True
    """
    L = as_int(L, "L", 1)
    Ab, Bb, C, batch = _check_discrete_ssm(Ab, Bb, C, diagonal)
    N = Bb.shape[-1]
    Ab = np.broadcast_to(Ab, batch + ((N,) if diagonal else (N, N)))
    Bb, C = np.broadcast_to(Bb, batch + (N,)), np.broadcast_to(C, batch + (N,))
    K = np.empty(batch + (L,), dtype=np.result_type(Ab, Bb, C))
    for idx in np.ndindex(*batch):
        x = Bb[idx].copy()  # x = Ā^0 B̄
        for ell in range(L):
            K[idx + (ell,)] = C[idx] @ x  # K̄_ℓ = C Ā^ℓ B̄
            x = Ab[idx] * x if diagonal else Ab[idx] @ x
    return K


def _s4d_args(A, B, C, step, L, method):
    check_option(method, "method", METHODS)
    L = as_int(L, "L", 1)
    A = as_array(A, "A")
    if A.ndim < 1 or A.shape[-1] < 1:
        raise ValueError(f"A: expected a diagonal of shape (..., N) with N >= 1, got shape {A.shape}")
    B, C = as_array(B, "B"), as_array(C, "C")
    for name, v in (("B", B), ("C", C)):
        if v.ndim and v.shape[-1] not in (A.shape[-1], 1):
            raise ValueError(
                f"{name}: expected shape (..., {A.shape[-1]}) broadcastable with A (N = {A.shape[-1]} modes), got shape {v.shape}"
            )
    Ab, Bb = discretize(A, B, step, method=method, diagonal=True)
    try:
        batch = np.broadcast_shapes(Ab.shape[:-1], Bb.shape[:-1], C.shape[:-1])
    except ValueError:
        raise ValueError(f"C: expected leading dimensions broadcastable with A, B and step, got shape {C.shape}") from None
    real = not (np.iscomplexobj(A) or np.iscomplexobj(B) or np.iscomplexobj(C))
    step = np.asarray(step, dtype=np.float64)[..., None]
    return A, step, Ab, Bb, C, L, batch, real


def _finish_s4d(K: np.ndarray, conj_pairs: bool) -> np.ndarray:
    return 2.0 * K.real if conj_pairs else K


#: real multiply-adds per BLAS call of :func:`s4d_kernel` and :func:`s4_kernel_dplr` (see :func:`_small_matmuls`)
_SMALL_PRODUCT = 1 << 17


def _real_form(Y: np.ndarray) -> np.ndarray:
    """The real (..., 2k, 2n) matrix of a complex (..., k, n) one: ``X.view(float) @ _real_form(Y) == (X @ Y).view(float)``.

    With real and imaginary parts interleaved, row pair (2i, 2i+1) holds ``[[Re Y, Im Y], [−Im Y, Re Y]]``
    entry by entry: ``(a + ib)(c + id) = (ac − bd) + i(ad + bc)``.
    """
    k, n = Y.shape[-2:]
    Yr = np.empty(Y.shape[:-2] + (k, 2, n, 2))
    Yr[..., :, 0, :, 0], Yr[..., :, 0, :, 1] = Y.real, Y.imag
    Yr[..., :, 1, :, 0], Yr[..., :, 1, :, 1] = -Y.imag, Y.real
    return Yr.reshape(Y.shape[:-2] + (2 * k, 2 * n))


def _small_matmuls(X: np.ndarray, Y: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = X @ Y`` (batched) as real BLAS products of at most :data:`_SMALL_PRODUCT` multiply-adds each.

    BLAS runs products this small on one thread. Complex operands go through their real form
    (:func:`_real_form`): complex products ran multithreaded even when tiny, and, like large real
    ones, collapsed whenever another process kept a core busy (a batch of 300 small complex
    products took 12 s instead of 90 ms). ``out`` must have a contiguous last axis.
    """
    if np.iscomplexobj(X) or np.iscomplexobj(Y):
        X = X.astype(np.complex128, copy=False)
        X = (X if X.strides[-1] == X.itemsize else np.ascontiguousarray(X)).view(np.float64)
        Y, out_r = _real_form(Y.astype(np.complex128, copy=False)), out.view(np.float64)
    else:
        out_r = out
    one_thread_matmul(X, Y, out=out_r, macs=_SMALL_PRODUCT)
    return out


def _times(x: np.ndarray, k) -> np.ndarray:
    """``x · k`` for a real k (or real array k, broadcast), real and imaginary parts apart: log 0 = −inf + 0j stays
    so (a complex product gives NaN)."""
    if x.dtype.kind != "c":
        return x * k
    out = np.empty(np.broadcast_shapes(x.shape, np.shape(k)), dtype=x.dtype)
    out.real, out.imag = x.real * k, x.imag * k
    return out


def _powers(log_z: np.ndarray, m: int, scale: float = 1.0) -> np.ndarray:
    """``z^i = exp(i log z)`` for i = 0 … m − 1, shape (m, ...) (the power first), by doubling:
    ``z^{i + 2^k} = z^i · exp(2^k log z)``.

    With ``scale`` s, the powers of ``z^s = exp(s log z)`` instead (s log z formed as by :func:`_times`). One
    exponential per bit of m, all taken in one call; ``z^0 = 1`` also for ``z = 0`` (``log z = −inf``). The power
    axis comes first so that each doubling step is one product of contiguous blocks, ``out[k : k + c] =
    out[:c] · z^{2^k}`` (with the power axis last, the short steps were products of rows of 1, 2, 4 … numbers:
    1.6 times slower at N = 32, m = 91).
    """
    out = np.empty((m,) + log_z.shape, dtype=np.result_type(log_z, np.float64))
    out[0] = 1.0
    bits = max(1, (m - 1).bit_length())
    # s·2^j: exact for an integer s (and (s·2^j) log z = (s log z)·2^j exactly)
    factors = (scale * 2.0 ** np.arange(bits)).reshape((bits,) + (1,) * log_z.ndim)
    zk = np.exp(_times(log_z, factors) if log_z.dtype.kind == "c" else log_z * factors)  # z^{s 2^j}, (bits, ...)
    k = 1
    for j in range(bits):
        if k >= m:
            break
        c = min(k, m - k)
        np.multiply(out[:c], zk[j], out=out[k : k + c])
        k *= 2
    return out


def s4d_kernel(A, B, C, step, L, *, method="zoh", conj_pairs=False):
    r"""S4D convolution kernel of a diagonal SSM: a Vandermonde product, no powers of Ā stored.

    Implements Eq. (11.10) of the book (Gu et al. 2022b, S4D, §3; state-spaces ``s4d.py``).

    Parameters
    ----------
    A : array_like, shape (..., N)
        Continuous diagonal A (stable: Re λ ≤ 0), e.g. S4D-Lin ``−1/2 + iπn``; (H, N) for H channels.
    B, C : array_like, shape (..., N)
        Broadcast against ``A``.
    step : float or array_like, shape (...)
        Δ > 0 per channel (e.g. shape (H,)).
    L : int
        Kernel length.
    method : {"zoh", "bilinear"}
    conj_pairs : bool
        The modes are one member of each conjugate pair (S4D keeps N/2): return ``2·Re K``.

    Returns
    -------
    K : ndarray, shape (..., L)
        float64 if ``conj_pairs`` or every input is real; else complex128.

    Notes
    -----
    .. math::  \bar K_\ell = \sum_n C_n \bar B_n\, \bar A_n^{\ell}
               = \sum_n C_n \bar B_n\, e^{\ell \log \bar A_n}.

    The (…, N, L) Vandermonde matrix is never formed (at H = N = 64, L = 16384 it would be
    1 GiB): with a block length T ≈ √L and J = ⌈L/T⌉ blocks, ``Ā^{jT+i} = Ā^{jT}·Ā^{i}``, so the
    kernel of each channel is one matrix product ``K[j, i] = Σ_n (C_n B̄_n Ā_n^{jT}) Ā_n^{i}``
    of a (J, N) by an (N, T) matrix, done as small real products (:func:`_small_matmuls`). When only
    ``Re K̄`` is wanted (``conj_pairs``, or a real system), the product is the real one
    ``Re(P W) = Re P Re W − Im P Im W``: ``conj(P)`` times ``W``, each with its real and imaginary
    parts read as interleaved real numbers (a float64 view, no copy): half the multiply-adds of the
    complex product. The powers ``Ā^i`` (i < T) and ``Ā^{jT}`` (j < J) come
    from ``exp(2^k log Ā)`` (for ZOH ``log Ā = ΔA`` exactly) by doubling,
    ``Ā^{i + 2^k} = Ā^i Ā^{2^k}``: one exponential per bit, so the relative error of ``Ā^ℓ`` is
    that of ``exp`` of the rounded argument ``ℓ log Ā`` plus a few ulps per set bit of i and j: at most
    about ℓ |log Ā| ε (the conditioning of e^{ℓz}, which no method escapes once log Ā = ΔA is rounded),
    against the O(ℓ ε) of ``x ← Ā x``; a gain for slow modes, |Δλ| ≪ 1, none for |Δλ| of order 10. Channels are processed in blocks whose powers and factors fit the workspace
    budget of :mod:`refimpl._blocking`, and K̄ is written in place. Memory O(H L) for K̄ and
    O(N √L) per channel of a block.

    Examples
    --------
    >>> A = -0.5 + 1j * np.pi * np.arange(4)
    >>> B, C = np.ones(4, dtype=complex), np.ones(4, dtype=complex) / 4
    >>> K = s4d_kernel(A, B, C, 0.1, 16)
    >>> Ab, Bb = discretize(A, B, 0.1, method='zoh', diagonal=True)
    >>> bool(np.allclose(K, ssm_kernel(Ab, Bb, C, 16, diagonal=True)))
    True
    """
    conj_pairs = as_bool(conj_pairs, "conj_pairs")
    A, step, Ab, Bb, C, L, batch, real = _s4d_args(A, B, C, step, L, method)
    N = Ab.shape[-1]
    with np.errstate(divide="ignore"):  # log 0 = −inf for a pole at 0 (bilinear at Δλ = −2)
        logA = step * A if method == "zoh" else np.log(Ab.astype(np.complex128))  # log Ā (ZOH: ΔA exactly)
    logA = np.broadcast_to(logA, batch + (N,)).reshape(-1, N)  # channels flattened: (H, N)
    CB = np.broadcast_to(C * Bb, batch + (N,)).reshape(-1, N)  # C_n B̄_n
    if conj_pairs:
        CB = 2.0 * CB  # 2 Re K̄ = Re Σ_n (2 C_n B̄_n) Ā_n^ℓ; doubling is exact
    real_out = conj_pairs or real  # only Re K̄ is wanted (a real system's K̄ is real)
    H = logA.shape[0]
    T = max(1, int(np.ceil(np.sqrt(L))))
    J = -(-L // T)
    full = L // T  # rows j whose T lags all lie below L; a last row of L − full·T lags if T does not divide L
    K = np.empty((H, L), dtype=np.float64 if real_out else np.result_type(logA, CB, np.float64))

    def block(hs):  # the kernels of channels hs, written into K
        h = hs.stop - hs.start
        W = _powers(logA[hs], T)  # Ā^i, i < T: (T, h, N)
        P = CB[hs] * _powers(logA[hs], J, scale=T)  # C_n B̄_n Ā^{jT}: (J, h, N)
        if real_out and P.dtype.kind == "c" and W.dtype.kind == "c":
            # Re Σ_n p_n w_n = Σ_n (Re p_n Re w_n + (−Im p_n) Im w_n): one real product of conj(P) and W, each seen
            # as real pairs (a float64 view: no copy), half the multiply-adds of the complex product
            np.conjugate(P, out=P)
            P, W = P.view(np.float64), W.view(np.float64)  # (J, h, 2N), (T, h, 2N)
        elif real_out:  # one factor real: Re(p w) = (Re p) w for a real w, and p (Re w) for a real p
            P, W = P.real, W.real
        # per channel, X = P[:, c] (J, ·) and Y = W[:, c]^T (·, T): strided views, which BLAS reads as they lie
        X, Y = P.transpose(1, 0, 2), W.transpose(1, 2, 0)
        mul = (lambda a, b, out: one_thread_matmul(a, b, out=out, macs=_SMALL_PRODUCT)) if real_out else _small_matmuls
        # K̄_{jT+i} = Σ_n C_n B̄_n Ā^{jT} Ā^i, written in place: rows j < full, then the last, shorter row
        mul(X[:, :full], Y, K[hs, : full * T].reshape(h, full, T))
        if full < J:
            mul(X[:, full:], Y[..., : L - full * T], K[hs, full * T :].reshape(h, 1, L - full * T))

    heads = per_block(4 * N * (T + J))  # channels per block: the powers and factors (complex, 2 floats each) stay cache-sized

    # one thread: the work is a few milliseconds, mostly exponentials of large arguments, and two threads ran
    # slower than one whenever another thread kept a core busy (also BLAS threads spinning after a product)
    for h0 in range(0, H, heads):
        block(slice(h0, min(h0 + heads, H)))
    return K.reshape(batch + (L,))


def s4d_kernel_loop(A, B, C, step, L, *, method="zoh", conj_pairs=False):
    """Loop twin of :func:`s4d_kernel`: per channel and mode, ``z ← Ā z`` and ``K̄_ℓ += C B̄ z`` (Eq. (11.10)).

    Examples
    --------
    >>> A = -0.5 + 1j * np.pi * np.arange(4)
    >>> B, C = np.ones(4, dtype=complex), np.ones(4, dtype=complex) / 4
    >>> bool(np.allclose(s4d_kernel_loop(A, B, C, 0.1, 16), s4d_kernel(A, B, C, 0.1, 16)))
    True
    """
    conj_pairs = as_bool(conj_pairs, "conj_pairs")
    _, _, Ab, Bb, C, L, batch, _ = _s4d_args(A, B, C, step, L, method)
    N = Ab.shape[-1]
    Ab, Bb, C = (np.broadcast_to(v, batch + (N,)) for v in (Ab, Bb, C))
    K = np.zeros(batch + (L,), dtype=np.result_type(Ab, Bb, C))
    for idx in np.ndindex(*batch):
        for n in range(N):
            cb, a, z = C[idx + (n,)] * Bb[idx + (n,)], Ab[idx + (n,)], 1.0
            for ell in range(L):
                K[idx + (ell,)] += cb * z  # K̄_ℓ += C_n B̄_n Ā_n^ℓ
                z = z * a
    return _finish_s4d(K, conj_pairs)


#: :func:`s4_kernel_dplr` forms its Cauchy entries 1/(g − Λ_n) = (a − ib)/(a² + b²) in real arithmetic while
#: a = −Re Λ_n >= 1/_CAUCHY_RANGE and |b| < _CAUCHY_RANGE (a² + b² then neither underflows nor overflows)
_CAUCHY_RANGE = 1e150


@guard_overflow()
def s4_kernel_dplr(Lambda, P, Q, B, C, step, L, *, c_tilde=False):
    r"""S4's kernel for a DPLR state matrix ``A = Λ − P Q^*``: Cauchy kernel + Woodbury + inverse FFT.

    Implements Eq. (11.13) of the book (Gu et al. 2022, S4, Alg. 1 and §3.3;
    annotated-s4 ``kernel_DPLR``; state-spaces ``SSMKernelDPLR``), bilinear discretization.

    Parameters
    ----------
    Lambda : array_like, shape (..., N)
        Diagonal part (stable: Re Λ ≤ 0), e.g. from :func:`hippo_legs_dplr`; leading axes are
        channels (S4's H, or (C, H) with several output channels) and broadcast with the others.
    P, Q : array_like, shape (..., N)
        Low-rank factors, ``A = diag(Λ) − P Q^*`` (HiPPO: Q = P).
    B, C : array_like, shape (..., N)
        Input vector and output row vector *in the same basis* as Λ (``V^* B`` and ``C V``).
    step : float or array_like, shape (...)
        Δ > 0, one per channel (S4's ``exp(log_dt)``, shape (H,)); broadcast with the channel axes.
    L : int
        Kernel length (the truncation length of the generating function).
    c_tilde : bool
        ``C`` is already S4's learned ``C̃ = C (I − Ā^L)``. If False (default) C̃ is formed
        here from the dense Ā of each channel (O(N³ log L), done once, as S4's ``_setup_C``).

    Returns
    -------
    K : ndarray, shape (..., L), complex128
        The kernel ``K̄_ℓ = C Ā^ℓ B̄`` of each channel (the broadcast channel shape of all
        inputs); for a system that is real in the original basis the imaginary part is
        round-off (take ``.real``).

    Notes
    -----
    The truncated generating function at the roots of unity ``ω_k = e^{−2πik/L}`` is

    .. math::  \hat K(ω) = \sum_{\ell<L} \bar K_\ell ω^\ell = \tilde C (I - \bar A ω)^{-1} \bar B
               = \frac{2}{1+ω}\,\tilde C\,(g(ω) - A)^{-1} B,\qquad g(ω) = \frac2Δ\frac{1-ω}{1+ω},

    and Woodbury with ``R = (g − Λ)^{-1}`` diagonal gives
    ``K̂ = 2/(1+ω) [k_{C̃B} − k_{C̃P} (1 + k_{Q^*P})^{-1} k_{Q^*B}]`` with Cauchy sums
    ``k_{ab}(ω) = Σ_n a_n b_n / (g(ω) − Λ_n)``. At ω = −1 (k = L/2, L even) 2/(1+ω) and g are
    infinite but their product ``2/[(2/Δ)(1−ω) − (1+ω)Λ]`` is not (the limit is ``K̂(−1) = (Δ/2) C̃ B``);
    the computed ``exp(−iπ)`` is not exactly −1, so the formula is evaluated next to that point,
    with a huge but finite g, and gives the limit to round-off. Then ``K̄ = ifft(K̂)``. Cost O(N L) per channel
    plus an FFT, and no power of Ā is ever formed (except in forming C̃ when ``c_tilde`` is
    False). The Cauchy matrices are formed in blocks of channels and frequencies, in place and
    in real arithmetic: ``g(ω)`` is imaginary on the unit circle, so with ``a = −Re Λ_n`` and
    ``b = Im g − Im Λ_n``, ``1/(g − Λ_n) = (a − ib)/(a² + b²)`` (the complex reciprocal where
    ``a² + b²`` could underflow or overflow); the four Cauchy sums of a block are one batched
    real matrix product. The blocks of frequencies are taken by threads one at a time; they
    depend on the shapes only, so the kernel is bitwise the same with any number of threads.

    Porting note: annotated-s4's ``kernel_DPLR(Λ, P, Q, B, C, Δ, L)`` treats C as a column
    vector and conjugates it, so it equals ``s4_kernel_dplr(Λ, P, Q, B, conj(C), Δ, L,
    c_tilde=True).real``. state-spaces' ``SSMKernelDPLR`` with H channels, ``n_ssm`` = 1 and
    rank 1 corresponds to ``Lambda`` (H, N), ``P = Q`` (H, N), ``B`` (H, N), ``C`` (channels, H, N),
    ``step`` (H,), giving K of shape (channels, H, L).

    Examples
    --------
    >>> Lambda, P, B, V = hippo_legs_dplr(4)
    >>> C = np.ones(4) @ V  # C in the eigenbasis, C V
    >>> K = s4_kernel_dplr(Lambda, P, P, B, C, 0.1, 16)  # HiPPO: Q = P
    >>> bool(np.allclose(K, ssm_kernel(*discretize(*hippo_legs(4), 0.1), np.ones(4), 16)))  # the dense kernel
    True
    """
    c_tilde = as_bool(c_tilde, "c_tilde")
    L = as_int(L, "L", 1)
    Lam = as_complex_array(Lambda, "Lambda")
    if Lam.ndim < 1 or Lam.shape[-1] < 1:
        raise ValueError(f"Lambda: expected shape (..., N) with N >= 1 eigenvalues, got shape {Lam.shape}")
    N = Lam.shape[-1]
    vecs, batch = {}, Lam.shape[:-1]
    for name, v in (("P", P), ("Q", Q), ("B", B), ("C", C)):
        arr = as_complex_array(v, name)
        if arr.ndim < 1 or arr.shape[-1] != N:
            raise ValueError(f"{name}: expected shape (..., {N}) to match Lambda, got shape {arr.shape}")
        try:
            batch = np.broadcast_shapes(batch, arr.shape[:-1])
        except ValueError:
            raise ValueError(f"{name}: channel axes {arr.shape[:-1]} do not broadcast with {batch}") from None
        vecs[name] = arr
    _check_stable_eigs(Lam, Lam, "Lambda")
    if np.any(Lam.real >= 0):
        # the Cauchy step divides by g(ω_k) − λ, and g is imaginary on the unit circle: a mode with
        # Re λ = 0 makes it singular (or arbitrarily ill-conditioned), not just slowly decaying
        i = np.unravel_index(int(np.argmax(Lam.real >= 0)), Lam.shape)
        raise ValueError(f"Lambda: expected Re λ < 0 for the DPLR kernel, got Lambda[{', '.join(map(str, i))}] = {Lam[i]}")
    dt = _check_steps(step, "step", batch)
    batch = np.broadcast_shapes(batch, dt.shape)
    Lam = np.broadcast_to(Lam, batch + (N,))
    Pv, Qv, Bv, Cv = (np.broadcast_to(vecs[k], batch + (N,)) for k in ("P", "Q", "B", "C"))
    dt = np.broadcast_to(dt, batch)
    if not c_tilde:
        A = Lam[..., :, None] * np.eye(N) - Pv[..., :, None] * Qv.conj()[..., None, :]  # A = Λ − P Q^*
        worst = float(np.max(np.linalg.eigvals(A).real, initial=-np.inf))
        if worst > _stability_tol(A):
            raise ValueError(f"Lambda, P, Q: the state matrix Λ − P Q^* is not stable (max Re λ = {worst:.6g}); pass c_tilde=True with S4's C̃")
        half = 0.5 * dt[..., None, None] * A
        Ab = np.linalg.solve(np.eye(N) - half, np.eye(N) + half)  # Ā = (I − Δ/2 A)^{-1}(I + Δ/2 A)
        Cv = Cv - (Cv[..., None, :] @ np.linalg.matrix_power(Ab, L))[..., 0, :]  # C̃ = C (I − Ā^L)
    omega = np.exp(-2j * np.pi * np.arange(L) / L)  # ω_k = e^{−2πik/L}
    Qc = Qv.conj()
    # the four numerators of the Cauchy sums, (H, N, 4): C̃B, C̃P, Q*B, Q*P
    W = np.stack([Cv * Bv, Cv * Pv, Qc * Bv, Qc * Pv], axis=-1).reshape(-1, N, 4)
    Lam_f, dt_f = Lam.reshape(-1, N), dt.reshape(-1)
    H = W.shape[0]
    # blocks of (channels, frequencies): each product (rows, N)·(N, 4) small enough for one BLAS thread, and
    # the block's Cauchy matrices within the workspace budget (cache-resident while formed and multiplied)
    rows = max(1, min(L, _SMALL_PRODUCT // (16 * N)))  # the real form of (rows, N)·(N, 4): 16 N rows multiply-adds
    heads = min(H, per_block(2 * rows * N))
    k = np.empty((H, L, 4), dtype=np.complex128)  # k_{C̃B}, k_{C̃P}, k_{Q*B}, k_{Q*P} at every frequency
    g = (2.0 / dt_f[:, None]) * ((1.0 - omega) / (1.0 + omega))  # g(ω) = (2/Δ)(1−ω)/(1+ω), (H, L); one division per ω
    # g(ω) is imaginary on the unit circle (its computed real part is round-off, ~ε|g|), so with a = −Re Λ_n > 0
    # and b = Im g − Im Λ_n the Cauchy entry is 1/(g − Λ_n) = (a − ib)/(a² + b²): real arithmetic (the complex
    # reciprocal takes Smith's branches per entry, 1.6 times slower), and k = Σ_n [1/(a²+b²)]·(a W_n) +
    # [b/(a²+b²)]·(−i W_n), one real product of [1/(a²+b²), b/(a²+b²)] with [a W; −i W] (as real pairs). Used where
    # a² + b² can neither underflow nor overflow; else the complex reciprocal.
    a = -Lam_f.real
    gi = np.ascontiguousarray(g.imag)
    real_form = a.min() >= 1 / _CAUCHY_RANGE and np.abs(gi).max() + np.abs(Lam_f.imag).max() < _CAUCHY_RANGE
    if real_form:
        V2 = np.empty_like(W)
        V2.real, V2.imag = W.imag, -W.real  # −i W, exactly
        Y = np.concatenate([a[..., None] * W, V2], axis=-2).view(np.float64)  # (H, 2N, 8): [a W; −i W] as real pairs
        a2 = a * a

    def worker():  # a Cauchy block per thread
        # real form: transposed, (heads, 2N, rows), so that both halves are contiguous; BLAS reads it transposed
        R = np.empty((heads, 2 * N, rows) if real_form else (heads, rows, N),
                     dtype=np.float64 if real_form else np.complex128)
        return lambda i: block(R, slice(i * rows, min(L, (i + 1) * rows)))

    def block(R, f):  # the frequencies f of every channel, in blocks of channels
        for h0 in range(0, H, heads):
            h = slice(h0, min(h0 + heads, H))
            if real_form:
                Rb = R[: h.stop - h0, :, : f.stop - f.start]
                inv, b = Rb[:, :N], Rb[:, N:]
                np.subtract(gi[h, None, f], Lam_f.imag[h, :, None], out=b)  # b = Im g − Im Λ_n
                np.multiply(b, b, out=inv)
                inv += a2[h, :, None]
                np.reciprocal(inv, out=inv)  # 1/(a² + b²)
                b *= inv  # b/(a² + b²)
                one_thread_matmul(Rb.swapaxes(-1, -2), Y[h], out=k[h, f].view(np.float64), macs=_SMALL_PRODUCT)  # the four sums
            else:
                Rb = R[: h.stop - h0, : f.stop - f.start]
                np.subtract(g[h, f, None], Lam_f[h, None, :], out=Rb)  # in place: no (h, L, N) temporaries
                np.reciprocal(Rb, out=Rb)  # Cauchy matrix 1/(g(ω) − Λ_n)
                _small_matmuls(Rb, W[h], k[h, f])  # the four Cauchy sums

    _blocking.take_turns(-(-L // rows), worker, H * L * N)  # blocks of frequencies, taken by threads one at a time
    k00, k01, k10, k11 = (k[..., i] for i in range(4))
    K_hat = 2.0 / (1.0 + omega) * (k00 - k01 * k10 / (1.0 + k11))  # Woodbury, Eq. (11.13)
    return np.fft.ifft(K_hat, axis=-1).reshape(batch + (L,))  # K̄ = iFFT(K̂)


# ---------------------------------------------------------------------------------------------
# Recurrent vs convolutional mode, Eqs. (11.8)-(11.9)
# ---------------------------------------------------------------------------------------------


def _check_ssm_io(u, Ab, Bb, C, D, diagonal: bool):
    Ab, Bb, C, batch = _check_discrete_ssm(Ab, Bb, C, diagonal)
    u = as_array(u, "u")
    if u.ndim < 2 or u.shape[-2] < 1:
        raise ValueError(f"u: expected shape (..., L, H) with L >= 1, got shape {u.shape}")
    H = u.shape[-1]
    if len(batch) > 1 or (len(batch) == 1 and batch[0] not in (1, H)):
        raise ValueError(f"Ab, Bb, C: expected one SSM or one per channel (H = {H} from u), got channel shape {batch}")
    N = Bb.shape[-1]
    Ab = np.broadcast_to(Ab, (H,) + ((N,) if diagonal else (N, N)))
    Bb, C = np.broadcast_to(Bb, (H, N)), np.broadcast_to(C, (H, N))
    if D is None:
        D = np.zeros(H)
    else:
        D = as_array(D, "D")
        if D.ndim > 1 or (D.ndim == 1 and D.shape[0] not in (1, H)):
            raise ValueError(f"D: expected a scalar or shape ({H},), got shape {D.shape}")
        D = np.broadcast_to(D, (H,))
    return u, Ab, Bb, C, D


@guard_overflow()
def ssm_recurrent(u, Ab, Bb, C, D=None, *, diagonal=False):
    r"""Run the discrete SSM as a recurrence (RNN mode), step by step.

    Implements Eq. (11.8) of the book (Gu et al. 2022, S4, Eq. 3; annotated-s4 ``scan_SSM``).
    This is the loop-level twin of :func:`ssm_convolution` (same signature, same output).

    Parameters
    ----------
    u : array_like, shape (..., L, H)
        Input, H channels.
    Ab : array_like, shape (N, N) or (H, N, N); with ``diagonal``: (N,) or (H, N)
        Ā, shared by all channels or one per channel.
    Bb, C : array_like, shape (N,) or (H, N)
    D : float or array_like, shape (H,), optional
        Skip term (default 0).
    diagonal : bool
        ``Ab`` holds diagonals.

    Returns
    -------
    y : ndarray, shape (..., L, H)
        float64 if every input is real, else complex128.

    Notes
    -----
    ``x_k = Ā x_{k−1} + B̄ u_k`` (``x_{−1} = 0``), ``y_k = C x_k + D u_k``: plain Python loops
    over the batch, the channels and the time steps (O(1) work per step at inference — the
    reason SSMs generate fast).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> Ab, Bb = discretize(*hippo_legs(4), 0.1)
    >>> u, C = rng.normal(size=(10, 2)), rng.normal(size=4)
    >>> y = ssm_recurrent(u, Ab, Bb, C)
    >>> y.shape, bool(np.allclose(y, ssm_convolution(u, Ab, Bb, C)))  # the recurrent and convolutional modes agree
    ((10, 2), True)
    """
    u, Ab, Bb, C, D = _check_ssm_io(u, Ab, Bb, C, D, diagonal)
    L, H = u.shape[-2:]
    flat = u.reshape(-1, L, H)
    y = np.empty(flat.shape, dtype=np.result_type(u, Ab, Bb, C, D))
    for b in range(flat.shape[0]):
        for h in range(H):
            a, bb, c, d = Ab[h], Bb[h], C[h], D[h]
            x = np.zeros(bb.shape, dtype=y.dtype)
            for k in range(L):
                x = (a * x if diagonal else a @ x) + bb * flat[b, k, h]  # x_k = Ā x_{k−1} + B̄ u_k
                y[b, k, h] = c @ x + d * flat[b, k, h]  # y_k = C x_k + D u_k
    return y.reshape(u.shape[:-2] + (L, H))


@guard_overflow()
def ssm_convolution(u, Ab, Bb, C, D=None, *, diagonal=False):
    r"""Run the discrete SSM as a causal convolution with its kernel (CNN mode).

    Implements Eq. (11.9) of the book (Gu et al. 2022, S4, Eq. 4–5): ``y = K̄ * u + D u``.
    Same signature and output as :func:`ssm_recurrent`.

    Parameters
    ----------
    u : array_like, shape (..., L, H)
    Ab : array_like, shape (N, N) or (H, N, N); with ``diagonal``: (N,) or (H, N)
    Bb, C : array_like, shape (N,) or (H, N)
    D : float or array_like, shape (H,), optional
    diagonal : bool

    Returns
    -------
    y : ndarray, shape (..., L, H)

    Notes
    -----
    The kernel comes from :func:`ssm_kernel` by baby-step giant-step: with T = ⌈√L⌉, T − 1
    products with Ā give the right factors Ā^i B̄, one matrix power G = Ā^T and ⌈L/T⌉ − 1
    products with G give the left factors C G^j, and one (⌈L/T⌉, N) × (N, T) product combines
    them — O(√L) sequential steps, batched over the H channels. The convolution is one
    zero-padded FFT of length ≥ 2L − 1 (:func:`refimpl.mixing.fft_conv`). In all
    O(H (N²√L + N³ log L + N L + L log L)) for a dense Ā (O(H (N L + L log L)) for a diagonal
    one), against the L sequential steps of the recurrence, O(H L N²) in all — the training
    mode of S4.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> Ab, Bb = discretize(*hippo_legs(4), 0.1)
    >>> u, C = rng.normal(size=(10, 2)), rng.normal(size=4)
    >>> K = ssm_kernel(Ab, Bb, C, 10)
    >>> bool(np.allclose(ssm_convolution(u, Ab, Bb, C)[:, 0], np.convolve(u[:, 0], K)[:10]))  # y = K ∗ u
    True
    """
    u, Ab, Bb, C, D = _check_ssm_io(u, Ab, Bb, C, D, diagonal)
    L = u.shape[-2]
    K = ssm_kernel(Ab, Bb, C, L, diagonal=diagonal)  # (H, L)
    return fft_conv(u, K.T) + D * u  # y = K̄ * u + D u (zero-padded FFT, Eq. 10.6)


# ---------------------------------------------------------------------------------------------
# Mamba's selective scan (S6), Eqs. (11.14)-(11.18)
# ---------------------------------------------------------------------------------------------


def _check_selective(u, delta, A, B, C, D, discretization, u_name="u"):
    # u_name: the argument whose shape u has (semiseparable_matrix has no u; its shape is delta's)
    check_option(discretization, "discretization", DISCRETIZATIONS)
    u = as_real_array(u, "u", copy=False)  # read only: no working copies of the inputs
    if u.ndim < 2 or u.shape[-2] < 1 or u.shape[-1] < 1:
        raise ValueError(f"{u_name}: expected shape (..., L, d_in) with L, d_in >= 1, got shape {u.shape}")
    L, d_in = u.shape[-2:]
    delta = as_real_array(delta, "delta", copy=False)
    try:
        np.broadcast_shapes(delta.shape, u.shape)
        if np.broadcast_shapes(delta.shape, u.shape) != u.shape:
            raise ValueError
    except ValueError:
        raise ValueError(f"delta: expected shape {u.shape} (broadcastable to u), got shape {delta.shape}") from None
    if np.any(delta <= 0):
        raise ValueError(f"delta: expected step sizes > 0, got minimum {delta.min():.6g}")
    A = as_real_array(A, "A", ndim=2)
    if A.shape[0] != d_in or A.shape[1] < 1:
        raise ValueError(f"A: expected shape ({d_in}, n) with n >= 1 (d_in from {u_name}), got shape {A.shape}")
    if np.any(A > 0):
        raise ValueError(f"A: expected a stable diagonal (every entry <= 0), got maximum {A.max():.6g}")
    n = A.shape[1]
    out = []
    for name, v in (("B", B), ("C", C)):
        v = as_real_array(v, name, copy=False)
        ok = v.ndim >= 2 and v.shape[-1] == n and v.shape[-2] == L
        if ok:
            try:
                ok = np.broadcast_shapes(v.shape[:-1], u.shape[:-1]) == u.shape[:-1]
            except ValueError:
                ok = False
        if not ok:
            raise ValueError(
                f"{name}: expected shape {u.shape[:-1] + (n,)} (batch broadcastable to {u_name}, n from A), got shape {v.shape}"
            )
        out.append(v)
    B, C = out
    if D is not None:
        D = as_real_array(D, "D")
        if D.shape not in ((d_in,), ()):
            raise ValueError(f"D: expected shape ({d_in},), got shape {D.shape}")
    batch = u.shape[:-2]
    delta = np.broadcast_to(delta, u.shape)
    B = np.broadcast_to(B, batch + (L, n))
    C = np.broadcast_to(C, batch + (L, n))
    return u, delta, A, B, C, D


def _discretize_selective(u, delta, A, B, discretization):
    """``Ā_t = exp(Δ_t A)`` and ``B̄_t u_t`` per (…, t, d, n), Eq. (11.15) ("zoh") or (11.16) ("mamba")."""
    Ab = delta[..., None] * A  # Δ_t A, (..., L, d, n)
    if discretization == "mamba":
        Bu = (delta * u)[..., None] * B[..., None, :]  # B̄_t u_t = Δ_t B_t u_t (Euler)
    else:
        Bu = phi1(A, delta[..., None])  # (e^{Δ_t A} − 1)/A
        Bu *= B[..., None, :]  # B̄_t = (e^{Δ_t A} − 1)/A · B_t
        Bu *= u[..., None]
    np.exp(Ab, out=Ab)  # Ā_t = e^{Δ_t A}; in place: fewer large temporaries
    return Ab, Bu


def _channel_groups(x: np.ndarray, groups: int) -> np.ndarray:
    """View ``(..., d, k)`` as ``(..., G, d/G, k)``: channel c belongs to group c // (d/G) (contiguous groups)."""
    return x.reshape(x.shape[:-2] + (groups, x.shape[-2] // groups, x.shape[-1]))


#: time steps per chunk of the chunked selective scan (:func:`_selective_chunks`); a block of the
#: workspace budget holds several chunks, which are summed along time together
_SCAN_CHUNK = 16

#: largest decay exponent |A Σ Δ| allowed within one chunk of the chunked selective scan: e^{±300}
#: ≈ 2e±130 neither overflows against moderate inputs (|B̄_t u_t| < 1e178) nor underflows, and the
#: rounding of the exponents, about 300 ε ≈ 7e-14 relative per term, stays far below the 1e-10
#: agreement with the loop twin. Chunks that would exceed it are halved, down to the step loop.
_MAX_CHUNK_DECAY = 300.0


def _selective_steps(u, delta, A, B, C, discretization, h, sl, y):
    """The step loop of Eq. (11.14) on the time steps ``sl``: writes ``y[..., sl, :]``, returns the last state.

    ``h`` (..., n, d) is the state before the first step (state axis first, as in
    :func:`_selective_chunks`). One vectorized update over all (batch, channel, state) entries per
    time step, in place on the precomputed B̄_t u_t (the loop of ``selective_scan_ref``); the
    readout ``y_t = C_t h_t`` is one batched product. The fallback of the chunked form.
    """
    d, n = A.shape
    shape = u.shape[:-2] + (sl.stop - sl.start, d, n)  # (..., T, d, n)
    # temporaries allocated C-ordered (out=): a transposed u or a strided B (the official layout) must not
    # set their layout, which would make every per-step slice below strided
    H, Ab = np.empty(shape, dtype=h.dtype), np.empty(shape, dtype=h.dtype)
    Bg = B[..., sl, :, None, :]  # B_{t,g}, (..., T, G, 1, n)
    if discretization == "mamba":  # B̄_t u_t = Δ_t u_t B_{t,g} (Euler, Eq. (11.16))
        np.multiply(_channel_groups((delta[..., sl, :] * u[..., sl, :])[..., None], Bg.shape[-3]), Bg,
                    out=_channel_groups(H, Bg.shape[-3]))
    else:  # B̄_t u_t = (e^{Δ_t A} − 1)/A · B_{t,g} u_t (ZOH, Eq. (11.15))
        np.multiply(_channel_groups(phi1(A, delta[..., sl, :, None]), Bg.shape[-3]), Bg,
                    out=_channel_groups(H, Bg.shape[-3]))
        H *= u[..., sl, :, None]
    np.multiply(delta[..., sl, :, None], A, out=Ab)  # Δ_t A
    np.exp(Ab, out=Ab)  # Ā_t = e^{Δ_t A}, in place: fewer large temporaries
    H[..., 0, :, :] += Ab[..., 0, :, :] * np.swapaxes(h, -1, -2)  # H starts as B̄_t u_t
    for t in range(1, H.shape[-3]):
        Ab[..., t, :, :] *= H[..., t - 1, :, :]  # Ā_t h_{t−1}
        H[..., t, :, :] += Ab[..., t, :, :]  # h_t = Ā_t h_{t−1} + B̄_t u_t
    # y_t = C_{t,g} h_t for the block: channels grouped as C is, one batched product
    Cg = C[..., sl, :, :, None]  # (..., T, G_C, n, 1)
    y[..., sl, :] = np.matmul(_channel_groups(H, Cg.shape[-3]), Cg).reshape(H.shape[:-1])
    return np.swapaxes(H[..., -1, :, :], -1, -2).copy()


def _chunked(x: np.ndarray, start: int, G: int, T: int, tail: int) -> np.ndarray:
    """Steps ``start … start + G T − 1`` of ``x`` (..., L, *k) as a view (..., G, T, *k); ``tail`` = len(k).

    Splitting one axis copies nothing, whatever its stride (also 0: B or C constant in time).
    """
    lead, rest = x.shape[: x.ndim - tail - 1], x.shape[x.ndim - tail :]
    return x[(Ellipsis, slice(start, start + G * T)) + (slice(None),) * tail].reshape(lead + (G, T) + rest)


def _last_axes(x: np.ndarray, order: tuple) -> np.ndarray:
    """``x`` with its last ``len(order)`` axes permuted to ``order`` (a view; cheaper than ``np.moveaxis``)."""
    lead = x.ndim - len(order)
    return x.transpose(tuple(range(lead)) + tuple(lead + i for i in order))


def _selective_chunks(cs, u, delta, At, B, C, discretization, h, start, y, work=None):
    r"""Steps ``start …`` of Eq. (11.14) as G chunks of T steps each, without a loop over the steps.

    ``cs`` (..., T, G, d) holds ``Σ_{r≤t} Δ_r`` counted from each chunk's start; ``At`` is
    A transposed and repeated over the chunks, (n, ≥ G, d); ``h`` (..., n, d) is the state before
    the first chunk, with the state axis first, so that the channel axis (next to the chunk
    axis) is the long contiguous one of every temporary. Writes ``y`` and returns the last state
    (or None if something overflowed: the caller then splits the chunks). ``work``: two arrays of
    shape (..., T, n, ≥ G, d) to hold the temporaries (reused from block to block: they stay in
    the cache and are not paged in again each time). Within a chunk, with
    ``S_t = A Σ_{r≤t} Δ_r`` and ``h_0`` the state before it, the recurrence unrolls to

    .. math::  h_t = e^{S_t}\Big(h_0 + \sum_{s\le t} e^{-S_s}\,\bar B_s u_s\Big),

    so a chunk costs one exponential per (step, state, channel), a cumulative sum along time (one
    vectorized add per step for all G chunks at once) and a few products; only the chunk
    boundaries are visited one by one. Each term ``e^{S_t} e^{−S_s} x_s`` is the exact
    ``e^{S_t − S_s} x_s`` up to a relative error of about ``(|S_t| + |S_s|) ε``, and the rounding of
    the sum is bounded by ``ε Σ_s e^{S_t − S_s} |x_s|``, the step loop's own bound, as long as
    nothing overflows: the caller keeps ``|S_t| ≤`` :data:`_MAX_CHUNK_DECAY` (the closed form over
    a *whole* sequence, with ``Π Ā`` vanishing, is what this bound rules out).
    """
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is detected below (and the chunks split)
        return _chunks_closed_form(cs, u, delta, At, B, C, discretization, h, start, y, work)


def _chunks_closed_form(cs, u, delta, At, B, C, discretization, h, start, y, work):
    T, G, d = cs.shape[-3:]
    n = At.shape[0]
    batch = u.shape[:-2]
    dl, ub = (np.swapaxes(_chunked(x, start, G, T, 1), -3, -2) for x in (delta, u))  # (..., T, G, d)
    if work is None or work[0].shape[-2] < G:
        work = [np.empty(batch + (T, n, G, d), dtype=h.dtype) for _ in range(2)]
    E, W = (x[..., :G, :] for x in work)
    At = At[:, :G, :] if At.shape[1] >= G else At[:, :1, :]  # (shorter chunks than planned: more of them)
    np.multiply(cs[..., :, None, :, :], At, out=E)  # S_t = A Σ_{r≤t} Δ_r
    np.exp(E, out=E)  # e^{S_t}
    gB, gC = B.shape[-2], C.shape[-2]
    # B_{t,g} of each step, state and group of channels: (..., T, n, G, G_B, 1)
    Bt = _last_axes(_chunked(B, start, G, T, 2), (1, 3, 0, 2))[..., None]
    Wg = W.reshape(batch + (T, n, G, gB, d // gB))
    if discretization == "mamba":  # B̄_t u_t = Δ_t u_t B_{t,g} (Euler, Eq. (11.16))
        np.divide((dl * ub)[..., None, :, :], E, out=W)  # e^{−S_s} Δ_s u_s
    else:  # B̄_t u_t = (e^{Δ_t A} − 1)/A · B_{t,g} u_t (ZOH, Eq. (11.15))
        np.multiply(phi1(At, dl[..., None, :, :]), ub[..., None, :, :], out=W)
        W /= E
    Wg *= Bt  # e^{−S_s} B̄_s u_s
    for t in range(1, T):  # Σ_{s≤t} e^{−S_s} B̄_s u_s: one add per step for all chunks
        W[..., t, :, :, :] += W[..., t - 1, :, :, :]
    H0 = np.empty(batch + (n, G, d), dtype=h.dtype)
    for g in range(G):  # the chunk boundaries in order: h_0 of each chunk, and the state at its end
        H0[..., g, :] = h
        h = E[..., -1, :, g, :] * (h + W[..., -1, :, g, :])
    W += H0[..., None, :, :, :]
    W *= E  # h_t = e^{S_t}(h_0 + Σ_{s≤t} e^{−S_s} B̄_s u_s)
    # y_t = C_{t,g} h_t: channels grouped as C is, one batched product
    Ct = np.swapaxes(_chunked(C, start, G, T, 2), -4, -3)[..., None, :]  # (..., T, G, G_C, 1, n)
    Hg = _last_axes(W.reshape(batch + (T, n, G, gC, d // gC)), (0, 2, 3, 1, 4))  # (..., T, G, G_C, n, d/G_C)
    yt = np.swapaxes(_chunked(y, start, G, T, 1), -3, -2)  # a view of y: (..., T, G, d)
    np.matmul(Ct, Hg, out=yt.reshape(batch + (T, G, gC, 1, d // gC)))  # splitting the channel axis: a view too
    return h if np.all(np.isfinite(h)) and np.all(np.isfinite(yt)) else None


def _chunk_sums(delta, start, G, T):
    """``Σ_{r≤t} Δ_r`` from each chunk's start, (..., T, G, d), for G chunks of T steps from ``start``.

    One add per step of a chunk, for all chunks at once (``np.cumsum`` along this strided axis is
    many times slower).
    """
    cs = np.swapaxes(_chunked(delta, start, G, T, 1), -3, -2).copy()  # C-ordered, and never the input itself
    return cumsum_rows(cs, -3, cs)


def _decay_ok(cs, A_abs):
    """Each chunk's decay ``|A| Σ_{r in chunk} Δ_r`` (largest at its end: Δ > 0) within :data:`_MAX_CHUNK_DECAY`; (G,)."""
    worst = (cs[..., -1, :, :] * A_abs).max(axis=-1)  # (..., G): the fastest channel
    return worst.reshape(-1, worst.shape[-1]).max(axis=0) <= _MAX_CHUNK_DECAY


def _selective_span(u, delta, A, At, A_abs, B, C, discretization, h, start, stop, T, y):
    """Steps ``start … stop − 1`` in chunks of T steps (the last one shorter), returning the last state (..., n, d).

    Runs of consecutive chunks within the decay bound go to :func:`_selective_chunks` together;
    a chunk that decays too fast, or whose terms overflow, is split in halves, recursively; below
    two steps per chunk the step loop takes over.
    """
    if T < 2:
        return _selective_steps(u, delta, A, B, C, discretization, h, slice(start, stop), y)
    K = (stop - start) // T  # whole chunks
    if K:
        cs = _chunk_sums(delta, start, K, T)
        ok = _decay_ok(cs, A_abs)
        k = 0
        while k < K:
            j = k + 1
            while j < K and ok[j] == ok[k]:  # a run of chunks with the same verdict
                j += 1
            h_new = _selective_chunks(cs[..., k:j, :], u, delta, At, B, C, discretization, h, start + k * T, y) if ok[k] else None
            h = h_new if h_new is not None else _selective_span(u, delta, A, At, A_abs, B, C, discretization, h,
                                                                 start + k * T, start + j * T, T // 2, y)
            k = j
    if start + K * T < stop:  # the remainder: one shorter chunk
        h = _selective_span(u, delta, A, At, A_abs, B, C, discretization, h, start + K * T, stop, stop - start - K * T, y)
    return h


#: the most channels per block of the selective scan (:func:`_selective_core`): a block's state, batch × n × 128
#: numbers, leaves room in the workspace budget for chunks of 16 steps (at batch × n <= 128)
_SCAN_CHANNELS = 128

#: channels that fit one block are cut in halves (:func:`_forward_channel_blocks`) from this much work, in
#: (step, channel, state) entries, when each half's state holds at least _HALF_STATE numbers
_HALVES_WORK, _HALF_STATE = 2**20, 256

#: when the channels run in several blocks (threads), a block of steps of a long sequence (at least
#: _LONG_BLOCKS of them) holds _SCAN_BUDGETS workspace budgets (:func:`_selective_block`): fewer NumPy calls
#: over larger slabs, measured faster although they outgrow the L2 cache (L = 8192, n = 16, two threads, best
#: of 15: d = 64 in halves 0.79 -> 0.62 of one block's time, d = 128 0.80 -> 0.63; eight budgets 0.68, 0.66).
#: On one thread, and on short sequences, whose temporaries are allocated anew at every call, one budget:
#: four measured 5 % slower for one block of 16 channels (L = 8192) and up to 1.4 times slower at L = 512.
_SCAN_BUDGETS, _LONG_BLOCKS = 4, 4


def _scan_channel_blocks(d: int, groups_b: int, groups_c: int, limit: int | None = None) -> list[slice]:
    """Blocks of ``size`` consecutive channels (the last one may be shorter), ``size`` the largest
    number up to ``limit`` (default :data:`_SCAN_CHANNELS`) that, for ``B`` and for ``C`` alike, divides the channels per
    group or is a multiple of them, unless there is one group (channel c uses group c // (d/G),
    :func:`_selective_core`): each block then lies within one group or is made of whole groups,
    and reads the groups of its own channels only. Fixed by the sizes alone; one block if no such
    size reaches 16."""
    per = (d // groups_b, d // groups_c)  # channels per group

    def fits(s):
        return all(p == d or p % s == 0 or s % p == 0 for p in per)

    size = next((s for s in range(min(d, limit or _SCAN_CHANNELS), 15, -1) if fits(s)), d)
    return [slice(c, min(c + size, d)) for c in range(0, d, size)]


def _forward_channel_blocks(d: int, groups_b: int, groups_c: int, steps: int, rows: int) -> list[slice]:
    """The blocks of channels of the forward selective scan, for ``steps`` time steps and ``rows`` =
    batch × n numbers of state per channel: those of :func:`_scan_channel_blocks`, and where they are
    one block of a large problem (at least :data:`_HALVES_WORK` (step, channel, state) entries, each
    half's state at least :data:`_HALF_STATE` numbers), halves of at least 16 channels, so that both
    cores work on one sequence of 32 to 128 channels.

    The chunked form makes about forty NumPy calls per block of steps and three per chunk, each over
    a slab of the block's channels, on its own thread; on small slabs the two threads wait for
    the interpreter lock. Measured against one block (one thread), best of 20 in 4 rounds
    ((L, d, n)): (8192, 64, 16) 0.63 (with :data:`_SCAN_BUDGETS`), (256, 64, 16) 0.98; halves of
    small problems or slabs ran slower: (64, 64, 16) 1.80, (1024, 32, 4) 1.64. Fixed by the sizes
    alone, as the result must not depend on the number of threads (it does not depend on the blocks
    either: each channel is computed by the same operations in any block)."""
    blocks = _scan_channel_blocks(d, groups_b, groups_c)
    if len(blocks) == 1 and d >= 32 and steps * rows * d >= _HALVES_WORK and rows * (d // 2) >= _HALF_STATE:
        blocks = _scan_channel_blocks(d, groups_b, groups_c, limit=d // 2)
    return blocks


def _block_groups(s: slice, d: int, groups: int) -> slice:
    """The groups of B or C (``groups`` of the ``d`` channels) that the channels of a block ``s`` of
    :func:`_scan_channel_blocks` read: the one it lies in, or the whole ones it is made of."""
    per = d // groups
    return slice(s.start // per, -(-s.stop // per))


def _selective_core(u, delta, A, B, C, discretization):
    """The recurrence (11.14) with grouped ``B_t``, ``C_t``; shared by selective_scan and selective_scan_fn.

    ``u``, ``delta`` (..., L, d) float64 (validated); ``A`` (d, n) real, or complex (then the state
    and ``y`` are complex); ``B`` (..., L, G_B, n) and ``C`` (..., L, G_C, n) with batch dims
    broadcastable to u's and G dividing d: channel c uses group c // (d/G) (G = 1: shared by all
    channels, as in :func:`selective_scan`; G = d: one per channel). Returns ``y`` (..., L, d) and
    the last state (..., d, n).

    The channels are independent: blocks of at most :data:`_SCAN_CHANNELS` of them, and halves of one
    such block in large problems (:func:`_forward_channel_blocks`), are solved by :func:`_selective_block`,
    taken in turn by the threads (:func:`refimpl._blocking.take_turns`). A block's state is then small
    enough for chunks of 16 steps even at realistic widths (d = 1536 with a batch of 2 left the whole
    state room for chunks of 2 steps), and both cores work. Measured (n = 16, two threads, best of 3,
    against one block of all channels in one thread; (batch, L, d)): (2, 2048, 1536) 0.59 -> 0.40 s,
    (1, 2048, 2048) 0.35 -> 0.24 s, (8, 1024, 768) 0.60-0.66 -> 0.42-0.44 s; and with the halves and
    the larger blocks of steps of long sequences (:data:`_SCAN_BUDGETS`), against blocks of 128 with
    one budget (best of 12-24 in 4 rounds): (1, 8192, 64) 0.69, (1, 8192, 32) 0.71, (1, 8192, 128)
    0.66, (1, 2048, 64) 0.86, (1, 4096, 256) 0.93, (2, 2048, 768) 0.74, n = 64 at (1, 2048, 64) 0.58.
    The blocks follow from the sizes alone and each is computed the same way in any thread (and in
    any block): the result does not depend on the number of threads.
    """
    d = u.shape[-1]
    blocks = _forward_channel_blocks(d, B.shape[-2], C.shape[-2], u.shape[-2], math.prod(u.shape[:-2]) * A.shape[1])
    if len(blocks) == 1:  # one thread: blocks of steps of one budget (see _SCAN_BUDGETS)
        return _selective_block(u, delta, A, B, C, discretization)
    dtype = np.result_type(A, B, C, np.float64)
    y = np.empty_like(u, dtype=dtype)  # laid out like u, as _selective_block's
    h = np.empty(np.broadcast_shapes(u.shape[:-2], B.shape[:-3], C.shape[:-3]) + (d, A.shape[1]), dtype=dtype)

    def work(i):
        s = blocks[i]
        Bs, Cs = (X[..., _block_groups(s, d, X.shape[-2]), :] for X in (B, C))
        y[..., s], h[..., s, :] = _selective_block(u[..., s], delta[..., s], A[s], Bs, Cs, discretization,
                                                   budgets=_SCAN_BUDGETS)

    _blocking.take_turns(len(blocks), lambda: work, u.size * A.shape[1])
    return y, h


def _selective_block(u, delta, A, B, C, discretization, budgets: int = 1):
    """The recurrence (11.14) on one block of channels: the arguments and results of :func:`_selective_core`.

    The steps are cut into chunks of :data:`_SCAN_CHUNK` steps, solved in closed form
    (:func:`_selective_chunks`) several at a time, in blocks sized by :mod:`refimpl._blocking`.
    The within-chunk sums of Δ are formed once for the whole sequence. A block with a chunk
    whose decay exceeds :data:`_MAX_CHUNK_DECAY` (or that overflows) is redone with shorter
    chunks, down to the step loop (:func:`_selective_steps`).

    One thread: the caller shares blocks of channels out between threads (:func:`_selective_core`).
    A block of steps holds ``budgets`` workspace budgets where the sequence has at least
    :data:`_LONG_BLOCKS` such blocks, else one (see :data:`_SCAN_BUDGETS`).
    """
    L, d = u.shape[-2:]
    n = A.shape[1]
    dtype = np.result_type(A, B, C, np.float64)
    # y laid out like u: a transposed u (the official (batch, D, L) layout) gets a y that transposes back without a copy
    y = np.empty_like(u, dtype=dtype)
    h = np.zeros(u.shape[:-2] + (n, d), dtype=dtype)  # h_{−1} = 0, state axis first: (..., n, d)
    A_abs = np.max(np.abs(A), axis=1)  # the fastest decay (or rotation) of each channel
    steps = per_block(2 * h.size * dtype.itemsize // 8)  # steps per block: e^{S} and the sums, (..., n, d) each
    T = min(_SCAN_CHUNK, L, max(2, steps))  # shorter chunks if even one would not fit the budget
    K = L // T  # whole chunks; the last L − K T steps form a shorter one
    G = min(K, max(1, steps // T))  # chunks per block
    if K >= _LONG_BLOCKS * budgets * G:  # a long sequence: blocks of steps of ``budgets`` budgets
        G *= budgets
    At = np.ascontiguousarray(np.broadcast_to(A.T[:, None, :], (n, G, d)))  # A per state, chunk and channel
    work = [np.empty(u.shape[:-2] + (T, n, G, d), dtype=dtype) for _ in range(2)]  # e^{S} and the sums
    cs = _chunk_sums(delta, 0, K, T)  # (..., T, K, d), for the whole sequence at once
    ok = _decay_ok(cs, A_abs)
    for k0 in range(0, K, G):
        k1 = min(k0 + G, K)
        h_new = None
        if np.all(ok[k0:k1]):
            h_new = _selective_chunks(cs[..., k0:k1, :], u, delta, At, B, C, discretization, h, k0 * T, y, work)
        if h_new is None:  # too fast a decay, or an overflow: those chunks are split
            h_new = _selective_span(u, delta, A, At, A_abs, B, C, discretization, h, k0 * T, k1 * T, T, y)
        h = h_new
    if K * T < L:
        h = _selective_span(u, delta, A, At, A_abs, B, C, discretization, h, K * T, L, L - K * T, y)
    return y, np.ascontiguousarray(np.swapaxes(h, -1, -2))


def _finish_selective(y, h_last, u, D, return_last_state):
    if D is not None:
        y += D * u  # y_t += D u_t (y is the scan's own array)
    return (y, h_last) if return_last_state else y


def selective_scan(u, delta, A, B, C, D=None, *, discretization="mamba", return_last_state=False):
    r"""Mamba's selective scan (S6): a diagonal SSM whose Δ, B, C depend on the time step.

    Implements Eqs. (11.14)–(11.16) of the book (Gu & Dao 2024, Alg. 2 and Eq. 2a–2b, 4;
    ``mamba_ssm`` ``selective_scan_ref``, mamba-minimal ``selective_scan``).

    Parameters
    ----------
    u : array_like, shape (..., L, d_in)
        Input x of the paper.
    delta : array_like, shape (..., L, d_in)
        Step sizes Δ_t > 0 (after the softplus).
    A : array_like, shape (d_in, n)
        Fixed, real, diagonal state matrix per channel; entries ≤ 0 (Mamba: ``−exp(A_log)``).
    B, C : array_like, shape (..., L, n)
        Input-dependent B_t and C_t, shared by the d_in channels (batch dims broadcast to u's).
    D : array_like, shape (d_in,), optional
        Skip connection.
    discretization : {"mamba", "zoh"}
        ``"mamba"``: ``Ā = exp(ΔA)``, ``B̄ = ΔB`` (the official reference's simplified rule);
        ``"zoh"``: ``B̄ = (exp(ΔA) − 1)/A · B`` (exact zero-order hold, Eq. (11.15)).
    return_last_state : bool
        Also return the final state ``h_{L−1}``.

    Returns
    -------
    y : ndarray, shape (..., L, d_in)
    h_last : ndarray, shape (..., d_in, n)
        Only if ``return_last_state``.

    Notes
    -----
    .. math::  h_t = \bar A_t \odot h_{t-1} + \bar B_t u_t,\qquad y_t = \langle C_t, h_t\rangle + D u_t,
               \qquad \bar A_t = e^{Δ_t A}.

    The recurrence is solved in chunks of a few steps (16), each in closed form: with
    ``S_t = A Σ_{r≤t} Δ_r`` counted from the chunk's start and ``h_0`` the state before it,

    .. math::  h_t = e^{S_t}\Big(h_0 + \sum_{s\le t} e^{-S_s}\,\bar B_s u_s\Big),

    i.e. one exponential per (step, channel, state), a cumulative sum along time and a few
    products, vectorized over the chunks of a block of time steps (whose temporaries hold one to four
    workspace budgets of :mod:`refimpl._blocking`); only the chunk boundaries are sequential, and
    the readout ``y_t = C_t h_t`` is one batched product per block. The channels are solved in
    blocks of up to 128 (in halves where one block would hold a large problem), shared out between
    threads (the result does not depend on their number). The closed form is accurate
    while ``e^{∓S}`` stay moderate: each term is ``e^{S_t − S_s} B̄_s u_s`` up to
    ``(|S_t| + |S_s|) ε`` relative, and the sum's rounding has the step loop's bound, so chunks
    are kept to ``|S| ≤ 300``; a chunk that decays faster (or whose terms overflow) is halved,
    down to the step loop of ``selective_scan_ref`` (one vectorized update per step). Twins:
    :func:`selective_scan_loop` (scalar loops), :func:`selective_scan_assoc` (parallel scan),
    :func:`selective_scan_matrix` (semiseparable matrix).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> L, d, n = 6, 2, 3
    >>> u, delta = rng.normal(size=(L, d)), 0.1 + rng.random((L, d))
    >>> A, B, C = -np.exp(rng.normal(size=(d, n))), rng.normal(size=(L, n)), rng.normal(size=(L, n))
    >>> y, h = selective_scan(u, delta, A, B, C, return_last_state=True)
    >>> y.shape, h.shape
    ((6, 2), (2, 3))
    """
    u, delta, A, B, C, D = _check_selective(u, delta, A, B, C, D, discretization)
    return_last_state = as_bool(return_last_state, "return_last_state")
    # B_t, C_t shared by the d_in channels: one group (the grouped core also serves selective_scan_fn)
    y, h = _selective_core(u, delta, A, B[..., None, :], C[..., None, :], discretization)
    return _finish_selective(y, h, u, D, return_last_state)


def selective_scan_loop(u, delta, A, B, C, D=None, *, discretization="mamba", return_last_state=False):
    """Loop twin of :func:`selective_scan`: the scalar recurrence per batch, channel and state (Eq. (11.14)).

    ``h_{t,d,n} = exp(Δ_{t,d} A_{d,n}) h_{t−1,d,n} + B̄_{t,d,n} u_{t,d}``, ``y_{t,d} = Σ_n C_{t,n} h_{t,d,n}``,
    with ``B̄ = Δ B`` ("mamba") or ``(exp(Δ A) − 1)/A · B`` ("zoh"), in Python floats.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> L, d, n = 6, 2, 3
    >>> u, delta = rng.normal(size=(L, d)), 0.1 + rng.random((L, d))
    >>> A, B, C = -np.exp(rng.normal(size=(d, n))), rng.normal(size=(L, n)), rng.normal(size=(L, n))
    >>> bool(np.allclose(selective_scan_loop(u, delta, A, B, C), selective_scan(u, delta, A, B, C)))
    True
    """
    u, delta, A, B, C, D = _check_selective(u, delta, A, B, C, D, discretization)
    return_last_state = as_bool(return_last_state, "return_last_state")
    L, d_in = u.shape[-2:]
    n = A.shape[1]
    batch = u.shape[:-2]
    y = np.empty(u.shape)
    h_last = np.empty(batch + (d_in, n))
    for idx in np.ndindex(*batch):
        for d in range(d_in):
            h = np.zeros(n)
            for t in range(L):
                dt, ut = delta[idx + (t, d)], u[idx + (t, d)]
                for k in range(n):
                    a = A[d, k]
                    a_bar = math.exp(dt * a)  # Ā = e^{Δ a}
                    if discretization == "mamba":
                        b_bar = dt * B[idx + (t, k)]  # B̄ = Δ B
                    else:  # B̄ = (e^{Δa} − 1)/a · B, → Δ B as a → 0
                        b_bar = (math.expm1(dt * a) / a if a != 0.0 else dt) * B[idx + (t, k)]
                    h[k] = a_bar * h[k] + b_bar * ut  # h_t = Ā_t h_{t−1} + B̄_t u_t
                y[idx + (t, d)] = sum(C[idx + (t, k)] * h[k] for k in range(n))  # y_t = Σ_n C_{t,n} h_{t,n}
            h_last[idx + (d,)] = h
    return _finish_selective(y, h_last, u, D, return_last_state)


def selective_scan_assoc(u, delta, A, B, C, D=None, *, discretization="mamba", return_last_state=False):
    r"""Selective scan by an associative (parallel-prefix) scan over time.

    Implements Eq. (11.17) of the book (Gu & Dao 2024, §3.3.2; Blelloch 1990; mambapy ``pscan``).
    Same signature and output as :func:`selective_scan`.

    Notes
    -----
    The steps ``h ↦ Ā_t h + B̄_t u_t`` are affine maps, and composition
    ``(a_2, b_2) ∘ (a_1, b_1) = (a_2 a_1, a_2 b_1 + b_2)`` is associative, so all prefixes come
    out of ⌈log₂ L⌉ vectorized sweeps (:func:`refimpl._scan.linear_scan`, Hillis–Steele: sweep j
    composes every position with the one 2^j before it, O(L log L) compositions in all; a work-efficient
    Blelloch scan takes 2⌈log₂ L⌉ sweeps and O(L) compositions). Only products of the given Ā_t ∈ (0, 1] are formed, so
    nothing overflows; long products may underflow to 0, which is the exact limit they approach.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> L, d, n = 6, 2, 3
    >>> u, delta = rng.normal(size=(L, d)), 0.1 + rng.random((L, d))
    >>> A, B, C = -np.exp(rng.normal(size=(d, n))), rng.normal(size=(L, n)), rng.normal(size=(L, n))
    >>> bool(np.allclose(selective_scan_assoc(u, delta, A, B, C), selective_scan(u, delta, A, B, C)))
    True
    """
    u, delta, A, B, C, D = _check_selective(u, delta, A, B, C, D, discretization)
    return_last_state = as_bool(return_last_state, "return_last_state")
    Ab, Bu = _discretize_selective(u, delta, A, B, discretization)
    # time as the last, contiguous axis: each sweep then reads memory in order
    Ht = linear_scan(np.ascontiguousarray(np.moveaxis(Ab, -3, -1)), np.ascontiguousarray(np.moveaxis(Bu, -3, -1)))
    H = np.moveaxis(Ht, -1, -3)  # all h_t, (..., L, d, n)
    y = np.matmul(H, C[..., None])[..., 0]  # y_t = C_t h_t
    return _finish_selective(y, H[..., -1, :, :], u, D, return_last_state)


def _segsum(delta: np.ndarray) -> np.ndarray:
    """``S[..., d, t, s] = Σ_{r=s+1}^{t} Δ_{r,d}`` for s ≤ t (0 above the diagonal), as exact cumulative sums.

    Each segment sum is accumulated from its own start, never as a difference of two long
    prefix sums (which would cancel; mamba_ssm ``segsum``).
    """
    dl = np.swapaxes(delta, -1, -2)  # (..., d, L)
    L = dl.shape[-1]
    X = np.broadcast_to(dl[..., :, None], dl.shape + (L,))  # X[t, s] = Δ_t
    X = np.where(np.tril(np.ones((L, L), dtype=bool), -1), X, 0.0)  # keep t > s
    return np.cumsum(X, axis=-2)  # S[t, s] = Σ_{s<r≤t} Δ_r


def semiseparable_matrix(delta, A, B, C, D=None, *, discretization="mamba"):
    r"""The selective SSM as a data-dependent L×L matrix per channel: ``y[..., :, d] = M[..., d] @ u[..., :, d]``.

    Implements Eq. (11.18) of the book (Dao & Gu 2024, Mamba-2, §3: SSMs are semiseparable
    matrices; Ali et al. 2024, "the hidden attention of Mamba").

    Parameters
    ----------
    delta : array_like, shape (..., L, d_in)
    A : array_like, shape (d_in, n)
    B, C : array_like, shape (..., L, n)
    D : array_like, shape (d_in,), optional
        Added on the diagonal.
    discretization : {"mamba", "zoh"}

    Returns
    -------
    M : ndarray, shape (..., d_in, L, L), float64, lower triangular

    Notes
    -----
    .. math::  M_{ts} = \sum_n C_{t,n}\, \exp\!\Big(A_{n}\sum_{r=s+1}^{t}Δ_r\Big)\, \bar B_{s,n},
               \qquad s \le t,

    with ``B̄_s = Δ_s B_s`` ("mamba") or ``(e^{Δ_s A} − 1)/A · B_s`` ("zoh"). With Δ, B, C
    constant it is Toeplitz: the S4D kernel of Eq. (11.10). Memory O(d_in L²) per batch element.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> L, d, n = 6, 2, 3
    >>> u, delta = rng.normal(size=(L, d)), 0.1 + rng.random((L, d))
    >>> A, B, C = -np.exp(rng.normal(size=(d, n))), rng.normal(size=(L, n)), rng.normal(size=(L, n))
    >>> M = semiseparable_matrix(delta, A, B, C)
    >>> M.shape, bool(np.allclose(np.triu(M[0], 1), 0.0))  # per channel, lower triangular: causal
    ((2, 6, 6), True)
    >>> bool(np.allclose(M[0] @ u[:, 0], selective_scan(u, delta, A, B, C)[:, 0]))  # y_d = M_d u_d
    True
    """
    delta_arr = as_real_array(delta, "delta")
    if delta_arr.ndim < 2:
        raise ValueError(f"delta: expected shape (..., L, d_in), got shape {delta_arr.shape}")
    u = np.ones(delta_arr.shape)
    u, delta, A, B, C, D = _check_selective(u, delta_arr, A, B, C, D, discretization, u_name="delta")
    seg = _segsum(delta)  # (..., d, L, L)
    lower = np.tril(np.ones(seg.shape[-2:], dtype=bool))
    _, Bbar = _discretize_selective(u, delta, A, B, discretization)  # B̄_s (u = 1): (..., L, d, n)
    M = np.zeros(seg.shape)
    for k in range(A.shape[1]):
        decay = np.where(lower, np.exp(A[:, k, None, None] * seg), 0.0)  # Π_{s<r≤t} Ā_r
        Bk = np.swapaxes(Bbar[..., k], -1, -2)[..., None, :]  # B̄_{s,d,n}: (..., d, 1, L)
        M += C[..., None, :, k, None] * decay * Bk  # C_{t,n} Π Ā B̄_{s,n}
    if D is not None:
        M = M + np.eye(M.shape[-1]) * np.broadcast_to(D, (A.shape[0],))[:, None, None]
    return M


def selective_scan_matrix(u, delta, A, B, C, D=None, *, discretization="mamba", return_last_state=False):
    r"""Selective scan as a matrix product ``y_d = M_d u_d`` with the semiseparable M of Eq. (11.18).

    Same signature and output as :func:`selective_scan`; O(L²) work (the "attention" form).
    The last state is ``h_{L−1} = Σ_s exp(A Σ_{s<r≤L−1} Δ_r) B̄_s u_s`` (the last row of the
    same segment sums, without C).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> L, d, n = 6, 2, 3
    >>> u, delta = rng.normal(size=(L, d)), 0.1 + rng.random((L, d))
    >>> A, B, C = -np.exp(rng.normal(size=(d, n))), rng.normal(size=(L, n)), rng.normal(size=(L, n))
    >>> bool(np.allclose(selective_scan_matrix(u, delta, A, B, C), selective_scan(u, delta, A, B, C)))
    True
    """
    u, delta, A, B, C, D = _check_selective(u, delta, A, B, C, D, discretization)
    return_last_state = as_bool(return_last_state, "return_last_state")
    M = semiseparable_matrix(delta, A, B, C, discretization=discretization)  # (..., d, L, L)
    y = np.swapaxes(M @ np.swapaxes(u, -1, -2)[..., None], -2, -1)[..., 0, :]  # y_{d} = M_d u_d
    y = np.swapaxes(y, -1, -2)
    h_last = None
    if return_last_state:
        seg_last = _segsum(delta)[..., -1, :]  # Σ_{s<r≤L−1} Δ_r: (..., d, L)
        _, Bu = _discretize_selective(u, delta, A, B, discretization)  # (..., L, d, n)
        decay = np.exp(A[:, None, :] * seg_last[..., None])  # (..., d, L, n)
        h_last = np.einsum("...dsn,...sdn->...dn", decay, Bu)
    return _finish_selective(y, h_last, u, D, return_last_state)


# ---------------------------------------------------------------------------------------------
# The official interface of mamba_ssm, Eqs. (11.21)-(11.23)
# ---------------------------------------------------------------------------------------------


def _official_bc(X, name: str, batch: int, d: int, n: int, L: int, complex_A: bool) -> np.ndarray:
    """``B`` or ``C`` of ``selective_scan_fn`` as an array (batch or 1, G, n, L) in the official axis order.

    Accepted (mamba_ssm's ``selective_scan_ref``): (D, N) — time-invariant, one vector per
    channel (returned as G = D groups, broadcast over batch and L); (batch, N, L) — shared by all
    channels (G = 1); (batch, G, N, L) — G contiguous groups of D/G channels. With a complex A a
    time-varying ``X`` is complex of last axis L, or real of last axis 2L holding (real,
    imaginary) pairs interleaved (``torch.view_as_complex`` of (..., L, 2)).
    """
    X = as_array(X, name)
    if X.dtype.kind == "c" and not complex_A:
        raise TypeError(f"{name}: complex values need a complex A (with a real A, {name} is real), got {X.dtype}")
    forms = f"({d}, {n}), ({batch}, {n}, L) or ({batch}, G, {n}, L) with L = {L} and G dividing D = {d}"
    if X.ndim == 2:
        if X.shape != (d, n):
            raise ValueError(f"{name}: expected shape {forms} (D, N from A), got shape {X.shape}")
        X = X.astype(np.complex128 if complex_A else np.float64, copy=False)
        return np.broadcast_to(X[None, :, :, None], (1, d, n, L))  # time-invariant: G = D groups of one
    if X.ndim not in (3, 4):
        raise ValueError(f"{name}: expected shape {forms}, got shape {X.shape}")
    if X.ndim == 3:
        X = X[:, None]  # shared by all channels: one group
    Xb, G, Xn, Xl = X.shape
    if Xb != batch or Xn != n or G < 1:
        raise ValueError(f"{name}: expected shape {forms} (batch from u, N from A), got shape {X.shape}")
    if d % G:
        raise ValueError(f"{name}: its G = {G} groups do not divide the D = {d} channels of u (channel d uses group d // (D/G))")
    if complex_A and X.dtype.kind != "c":  # complex stored as real: (re, im) interleaved along time
        if Xl != 2 * L:
            raise ValueError(f"{name}: with a complex A a real {name} holds (real, imaginary) pairs interleaved "
                             f"along time, last axis 2L = {2 * L}; got shape {X.shape} (or pass a complex array)")
        return X[..., 0::2] + 1j * X[..., 1::2]
    if Xl != L:
        raise ValueError(f"{name}: expected last axis L = {L} (from u), got shape {X.shape}")
    return X.astype(np.complex128 if complex_A else np.float64, copy=False)


def _softplus(x: np.ndarray) -> np.ndarray:
    """log(1 + e^x) without overflow: ``max(x, 0) + log1p(e^{−|x|})``, the branches of ``logaddexp(0, x)`` and of
    the loop twins' :func:`_softplus_scalar`, as NumPy's vectorized exp and log1p in cache-sized blocks (NumPy's
    ``logaddexp`` takes them one number at a time: 118 ms against 32 ms for 2 × 1536 × 2048 numbers; the two
    differ by at most an ulp or two, 4e-16 relative there)."""

    def block(xs, o):
        np.abs(xs, out=o)
        np.negative(o, out=o)
        np.exp(o, out=o)  # e^{−|x|} <= 1
        np.log1p(o, out=o)
        o += np.maximum(xs, 0.0)

    return _blocking.fill_blocks(np.asarray(x, dtype=np.float64), block, per_block(4))


def _check_official(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    """Validate the arguments of :func:`selective_scan_fn`; returns them normalized, and Δ of Eq. (11.21)."""
    delta_softplus = as_bool(delta_softplus, "delta_softplus")
    return_last_state = as_bool(return_last_state, "return_last_state")
    u = as_real_array(u, "u", copy=False)
    if u.ndim != 3 or min(u.shape) < 1:
        raise ValueError(f"u: expected shape (batch, D, L) with every size >= 1, got shape {u.shape}")
    batch, d, L = u.shape
    delta = as_real_array(delta, "delta", copy=False)
    if delta.shape != u.shape:
        raise ValueError(f"delta: expected the shape of u {u.shape} (batch, D, L), got shape {delta.shape}")
    A = as_array(A, "A")
    if A.ndim != 2 or A.shape[0] != d or A.shape[1] < 1:
        raise ValueError(f"A: expected shape ({d}, N) with N >= 1 (D from u), got shape {A.shape}")
    if np.any(A.real > 0):
        raise ValueError(f"A: expected a stable diagonal (every Re A <= 0, as Mamba's A = -exp(A_log)), "
                         f"got maximum Re A = {A.real.max():.6g}")
    complex_A = A.dtype.kind == "c"
    n = A.shape[1]
    B = _official_bc(B, "B", batch, d, n, L, complex_A)
    C = _official_bc(C, "C", batch, d, n, L, complex_A)
    vectors = {}
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        if v is not None:
            v = as_real_array(v, name)
            if v.shape != (d,):
                raise ValueError(f"{name}: expected shape ({d},) (D from u), got shape {v.shape}")
        vectors[name] = v
    if z is not None:
        z = as_real_array(z, "z", copy=False)
        if z.shape != u.shape:
            raise ValueError(f"z: expected the shape of u {u.shape} (batch, D, L), got shape {z.shape}")
    # Eq. (11.21): Δ = softplus(delta + delta_bias) (each step optional)
    step = delta if delta_bias is None else delta + vectors["delta_bias"][:, None]
    if delta_softplus:
        step = _softplus(step)
    if not np.all(step > 0):
        culprits = "delta" + (", delta_bias" if delta_bias is not None else "")
        culprits += "" if delta_softplus else ", delta_softplus"
        formula = "delta" if delta_bias is None else "delta + delta_bias"
        formula = f"softplus({formula})" if delta_softplus else formula
        raise ValueError(f"{culprits}: expected step sizes Δ = {formula} > 0 (Eq. (11.21)), "
                         f"got minimum {float(np.min(step)):.6g}")
    return u, delta, step, A, B, C, vectors["D"], z, vectors["delta_bias"], delta_softplus, return_last_state


@guard_overflow()
def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, *, delta_softplus=False, return_last_state=False):
    r"""Mamba's selective scan with the official interface of ``mamba_ssm`` (``selective_scan_fn``).

    Implements Eqs. (11.21)–(11.23) on top of (11.14) and (11.16) of the book (Gu & Dao 2024,
    Alg. 2; ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` and its reference
    ``selective_scan_ref``): the official argument names, layouts and options, so that a port of
    the CUDA kernel is checked with its own calling convention. The computation is
    :func:`selective_scan`'s recurrence (``discretization="mamba"``) after the mapping tabulated
    in chapter 11, §11.10.

    Parameters
    ----------
    u : array_like, shape (batch, D, L)
        Input, channels before time (the official layout; refimpl's is (..., L, d_in)).
    delta : array_like, shape (batch, D, L)
        Step sizes before the bias and the softplus.
    A : array_like, shape (D, N), real or complex
        Diagonal state matrix, Re A ≤ 0 (refused otherwise; the official code does not check).
        A complex A (its dtype decides, as ``A.is_complex()`` does) makes the state complex and
        the output ``2 Re⟨C, h⟩`` (conjugate pairs, Eq. (11.22)).
    B, C : array_like
        Each independently one of: (D, N) time-invariant (one vector per channel; complex allowed
        with a complex A); (batch, N, L) time-varying, shared by the D channels; (batch, G, N, L)
        grouped, G dividing D, channel d using group d // (D/G). With a complex A a time-varying
        B or C is complex of last axis L, or real of last axis 2L with (real, imaginary) pairs
        interleaved along time (the official "complex as real" storage).
    D : array_like, shape (D,), optional
        Skip connection, ``y += D u``.
    z : array_like, shape (batch, D, L), optional
        Gate: the output is multiplied by ``silu(z) = z σ(z)``.
    delta_bias : array_like, shape (D,), optional
        Added to ``delta`` per channel before the softplus.
    delta_softplus : bool
        Apply ``softplus(x) = log(1 + e^x)`` to ``delta + delta_bias``.
    return_last_state : bool
        Also return the state after the last step.

    Returns
    -------
    out : ndarray, shape (batch, D, L), float64
    last_state : ndarray, shape (batch, D, N), float64 (complex128 if A is complex)
        Only if ``return_last_state``.

    Notes
    -----
    With Δ = softplus(delta + delta_bias) (Eq. (11.21); each part optional), for every batch b,
    channel d, state entry n and step t:

    .. math::  h_{t} = e^{Δ_{t} A_{d n}} h_{t-1} + Δ_{t} B_{g(d), n, t} u_{t},\qquad
               y_t = \sum_n C_{g(d), n, t} h_t \;(\times 2\,\mathrm{Re}\text{ if } A \text{ is complex}),
    .. math::  \mathrm{out}_t = (y_t + D_d u_t)\,\mathrm{silu}(z_t).

    Differences from ``mamba_ssm``, all deliberate: everything is float64 (the reference casts
    to float32); the softplus is exact, whereas the reference (``F.softplus``) and the CUDA kernel
    return x itself for x > 20, which differs by log1p(e^{−x}) < 2.1e-9, below float32's
    resolution at 20 (1.9e-6); Re A > 0 and Δ ≤ 0 are refused — the softplus is never negative, but the
    CUDA kernel's float32 ``log1p(e^x)`` underflows to exactly 0 below x ≈ −104 (−87 with subnormals
    flushed), where the official code takes the identity step, and a float64 softplus below x ≈ −745,
    where refimpl refuses the Δ = 0, as does the decoding step :func:`selective_state_update` (whose
    official Triton kernel computes the softplus differently and gives 0 from x ≈ −16.6 on; neither
    kernel clamps the step); the options are keyword-only
    (refimpl's convention); the ``cu_seqlens`` argument of recent versions (packed sequences of
    several lengths) is not supported — call once per sequence. Loop twin:
    :func:`selective_scan_fn_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> b, D, L, N = 2, 4, 5, 3
    >>> u, delta, z = rng.normal(size=(b, D, L)), rng.normal(size=(b, D, L)), rng.normal(size=(b, D, L))
    >>> A, B, C = -np.exp(rng.normal(size=(D, N))), rng.normal(size=(b, 2, N, L)), rng.normal(size=(b, N, L))
    >>> out, last = selective_scan_fn(u, delta, A, B, C, np.ones(D), z, np.zeros(D), delta_softplus=True,
    ...                               return_last_state=True)
    >>> out.shape, last.shape
    ((2, 4, 5), (2, 4, 3))
    """
    u, _, step, A, B, C, D, z, _, _, return_last_state = _check_official(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    # official (batch, D, L) -> refimpl (batch, L, D), as views; B, C (batch, G, N, L) -> (batch, L, G, N), copied
    # C-ordered (N/D of u's size) unless constant in time (a broadcast view, stride 0 along L)
    to_refimpl = lambda x: np.swapaxes(x, -1, -2)  # noqa: E731
    B, C = (X.transpose(0, 3, 1, 2) if X.strides[-1] == 0 else np.ascontiguousarray(X.transpose(0, 3, 1, 2)) for X in (B, C))
    y, h = _selective_core(to_refimpl(u), to_refimpl(step), A, B, C, "mamba")
    if np.iscomplexobj(y):
        y = 2.0 * y.real  # conjugate pairs: the real output of 2N real modes, Eq. (11.22)
    y = np.ascontiguousarray(to_refimpl(y))  # back to (batch, D, L), C-ordered
    if D is not None:
        y += D[:, None] * u  # y += D u
    if z is not None:
        y *= z * scipy.special.expit(z)  # out = (y + D u) silu(z), Eq. (11.23)
    return (y, h) if return_last_state else y


def _softplus_scalar(x: float) -> float:
    return x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))


def _sigmoid_scalar(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


@guard_overflow()
def selective_scan_fn_loop(u, delta, A, B, C, D=None, z=None, delta_bias=None, *, delta_softplus=False,
                           return_last_state=False):
    """Loop twin of :func:`selective_scan_fn`: scalar loops over batch, channel, time and state, official layout.

    For each b, d: ``Δ = softplus(delta[b, d, t] + delta_bias[d])`` (Eq. (11.21)),
    ``h_n ← e^{Δ A[d, n]} h_n + Δ B[b, g, n, t] u[b, d, t]`` with g = d // (D/G),
    ``y = Σ_n C[b, g', n, t] h_n`` (``2 Re y`` for a complex A, Eq. (11.22)),
    ``out[b, d, t] = (y + D[d] u[b, d, t]) · z σ(z)`` (Eq. (11.23)), in Python floats.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> b, D, L, N = 1, 2, 6, 3
    >>> u, delta = rng.normal(size=(b, D, L)), rng.normal(size=(b, D, L))
    >>> A = -np.exp(rng.normal(size=(D, N))) + 1j * rng.normal(size=(D, N))
    >>> B, C = rng.normal(size=(b, N, 2 * L)), rng.normal(size=(b, N, 2 * L))  # complex, stored interleaved
    >>> kw = dict(delta_softplus=True)
    >>> bool(np.allclose(selective_scan_fn_loop(u, delta, A, B, C, **kw), selective_scan_fn(u, delta, A, B, C, **kw)))
    True
    """
    u, delta, _, A, B, C, D, z, delta_bias, delta_softplus, return_last_state = _check_official(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    exp = cmath.exp if A.dtype.kind == "c" else math.exp
    batch, d_in, L = u.shape
    n = A.shape[1]
    B = np.broadcast_to(B, (batch,) + B.shape[1:])  # (batch, G, N, L)
    C = np.broadcast_to(C, (batch,) + C.shape[1:])
    out = np.empty(u.shape)
    last = np.empty((batch, d_in, n), dtype=A.dtype)
    for b in range(batch):
        for d in range(d_in):
            gB, gC = d // (d_in // B.shape[1]), d // (d_in // C.shape[1])  # the groups of channel d
            h = [0.0] * n
            for t in range(L):
                x = delta[b, d, t] + (delta_bias[d] if delta_bias is not None else 0.0)
                dt = _softplus_scalar(x) if delta_softplus else x  # Δ, Eq. (11.21)
                ut = u[b, d, t]
                y = 0.0
                for k in range(n):
                    h[k] = exp(dt * A[d, k]) * h[k] + dt * B[b, gB, k, t] * ut  # h = e^{ΔA} h + Δ B u
                    y += C[b, gC, k, t] * h[k]  # y = Σ_n C_n h_n
                if A.dtype.kind == "c":
                    y = 2.0 * y.real  # conjugate pairs, Eq. (11.22)
                if D is not None:
                    y += D[d] * ut
                if z is not None:
                    y *= z[b, d, t] * _sigmoid_scalar(z[b, d, t])  # silu(z) = z σ(z), Eq. (11.23)
                out[b, d, t] = y
            last[b, d] = h
    return (out, last) if return_last_state else out



# ---------------------------------------------------------------------------------------------
# One step of the scan: mamba_ssm's decoding interface (selective_state_update)
# ---------------------------------------------------------------------------------------------


def _check_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices):
    """Validate the arguments of :func:`selective_state_update`.

    Returns ``(state, x, dt, A, B, C, D, z, dt_bias, softplus, rows, step)`` with a heads axis in every
    layout (state (pool, H, P, N), x, dt, z (batch, H, P), A (H, P, N), B, C (batch, G, N), D, dt_bias
    (H, P)), ``rows`` the state row each batch entry reads (-1: a padding entry) and ``step`` the
    Δ of Eq. (11.21), (batch, H, P).
    """
    softplus = as_bool(dt_softplus, "dt_softplus")
    state = as_real_array(state, "state", copy=False)
    if state.ndim not in (3, 4) or min(state.shape) < 1:
        raise ValueError("state: expected shape (batch, dim, dstate) (Mamba) or (batch, nheads, dim, dstate) "
                         f"(Mamba-2) with every size >= 1, got shape {state.shape}")
    heads = state.ndim == 4
    lay = "(batch, nheads, dim)" if heads else "(batch, dim)"
    st = state if heads else state[:, None]
    pool, H, P, N = st.shape
    x = as_real_array(x, "x", copy=False)
    if x.ndim != state.ndim - 1 or x.shape[1:] != st.shape[1:-1][int(not heads):] or x.shape[0] < 1:
        raise ValueError(f"x: expected shape {lay} with {'nheads, dim' if heads else 'dim'} = "
                         f"{st.shape[1:3] if heads else P} from state, got shape {x.shape}")
    batch = x.shape[0]
    xs = x if heads else x[:, None]
    arrays = {}
    for name, v in (("dt", dt), ("z", z)):  # dt is required: None is refused by the converter, naming it
        if v is not None or name == "dt":
            v = as_real_array(v, name, copy=False)
            if v.shape != x.shape:
                raise ValueError(f"{name}: expected the shape of x {x.shape} {lay}, got shape {v.shape}")
            v = v if heads else v[:, None]
        arrays[name] = v
    A = as_real_array(A, "A", copy=False)
    want_A = (H, P, N) if heads else (P, N)
    if A.shape != want_A:
        raise ValueError(f"A: expected shape {'(nheads, dim, dstate)' if heads else '(dim, dstate)'} = {want_A} "
                         f"from state, got shape {A.shape}")
    if np.any(A > 0):
        raise ValueError(f"A: expected a stable diagonal (every A <= 0, as Mamba's A = -exp(A_log)), "
                         f"got maximum A = {A.max():.6g}")
    A = A if heads else A[None]
    for name, v in (("B", B), ("C", C)):
        v = as_real_array(v, name, copy=False)
        if v.ndim == 2:
            v = v[:, None]  # (batch, dstate): one group
        if v.ndim != 3 or v.shape[0] != batch or v.shape[2] != N or v.shape[1] < 1:
            raise ValueError(f"{name}: expected shape (batch, dstate) or (batch, ngroups, dstate) with batch = {batch} "
                             f"from x and dstate = {N} from state, got shape {np.shape(v)}")
        if not heads and v.shape[1] != 1:
            raise ValueError(f"{name}: Mamba's layout (a 3-D state) has one group: expected shape (batch, dstate) or "
                             f"(batch, 1, dstate), got shape {v.shape}")
        if H % v.shape[1]:
            raise ValueError(f"{name}: its {v.shape[1]} groups do not divide the {H} heads of state "
                             "(head h reads group h // (nheads / ngroups))")
        arrays[name] = v
    if arrays["B"].shape[1] != arrays["C"].shape[1]:
        raise ValueError(f"C: expected the groups of B ({arrays['B'].shape[1]}), got shape {arrays['C'].shape}")
    for name, v in (("D", D), ("dt_bias", dt_bias)):
        if v is not None:
            v = as_real_array(v, name)
            if v.shape != x.shape[1:]:
                raise ValueError(f"{name}: expected shape {'(nheads, dim)' if heads else '(dim,)'} = {x.shape[1:]} "
                                 f"from x, got shape {v.shape}")
            v = v if heads else v[None]
        arrays[name] = v
    if state_batch_indices is None:
        if pool != batch:
            raise ValueError(f"state: expected batch = {batch} rows (from x), got shape {state.shape} "
                             "(a larger pool of states needs state_batch_indices)")
        rows = np.arange(batch)
    else:
        rows = as_int_array(state_batch_indices, "state_batch_indices", "integer state indices")
        if rows.shape != (batch,):
            raise ValueError(f"state_batch_indices: expected shape ({batch},) (batch from x), got shape {rows.shape}")
        if np.any(rows >= pool):
            raise ValueError(f"state_batch_indices: expected indices < {pool} (the rows of state), "
                             f"got maximum {int(rows.max())}")
        used = rows[rows >= 0]
        if np.unique(used).size != used.size:
            raise ValueError("state_batch_indices: expected distinct indices (a negative one marks a padding entry); "
                             "two batch entries updating one state is a race in the kernel")
    # Eq. (11.21): Δ = softplus(dt + dt_bias) (each step optional)
    raw = arrays["dt"] if arrays["dt_bias"] is None else arrays["dt"] + arrays["dt_bias"]
    step = _softplus(raw) if softplus else raw
    live = rows >= 0  # padding entries are not computed: their steps are not checked
    if not np.all(step[live] > 0):  # Δ <= 0 refused, as by selective_scan_fn (the kernel checks neither)
        culprits = "dt" + (", dt_bias" if dt_bias is not None else "") + ("" if softplus else ", dt_softplus")
        formula = "dt" if dt_bias is None else "dt + dt_bias"
        formula = f"softplus({formula})" if softplus else formula
        raise ValueError(f"{culprits}: expected step sizes Δ = {formula} > 0 (Eq. (11.21)), "
                         f"got minimum {float(step[live].min()):.6g}")
    return (st, xs, arrays["dt"], A, arrays["B"], arrays["C"], arrays["D"], arrays["z"], arrays["dt_bias"], softplus,
            rows, step)


@guard_overflow()
def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, *, dt_softplus=False,
                           state_batch_indices=None):
    r"""One step of Mamba's selective scan with mamba_ssm's decoding interface (``selective_state_update``).

    Implements one time step of Eqs. (11.21), (11.14) (``discretization="mamba"``) and (11.23) of
    the book (Gu & Dao 2024, Alg. 2; Dao & Gu 2024 for the heads layout;
    ``mamba_ssm.ops.triton.selective_state_update``, the kernel that generates one token at a time):
    the official argument names, layouts and options, so that a port of the kernel is checked
    with its own calling convention.

    Parameters
    ----------
    state : array_like, shape (batch, dim, dstate) or (batch, nheads, dim, dstate)
        The state h before the step (Mamba; Mamba-2 with heads of ``dim`` channels). With
        ``state_batch_indices``, a pool of states of any number of rows.
    x : array_like, shape (batch, dim) or (batch, nheads, dim)
        The input of this step.
    dt : array_like, the shape of x
        Step sizes before the bias and the softplus.
    A : array_like, shape (dim, dstate) or (nheads, dim, dstate)
        Diagonal state matrix, A ≤ 0 (real; refused otherwise). Mamba-2's scalar A per head is
        ``A[h]`` broadcast over (dim, dstate).
    B, C : array_like, shape (batch, dstate) or (batch, ngroups, dstate)
        Input and output vectors of this step; head h reads group ``h // (nheads / ngroups)``.
    D : array_like, shape (dim,) or (nheads, dim), optional
        Skip connection, ``y += D x``.
    z : array_like, the shape of x, optional
        Gate: the output is multiplied by ``silu(z) = z σ(z)``.
    dt_bias : array_like, shape (dim,) or (nheads, dim), optional
        Added to ``dt`` before the softplus.
    dt_softplus : bool
        Apply ``softplus(x) = log(1 + e^x)`` to ``dt + dt_bias``.
    state_batch_indices : array_like of int, shape (batch,), optional
        Batch entry b reads and writes row ``state_batch_indices[b]`` of ``state`` (a pool of
        states, continuous batching); a negative index marks a padding entry: its output is 0 and
        no state changes. The non-negative indices must be distinct (two entries updating one
        state would race in the kernel).

    Returns
    -------
    out : ndarray, the shape of x
    new_state : ndarray, the shape of state
        The state after the step (rows not addressed by the batch unchanged).

    Notes
    -----
    With Δ = softplus(dt + dt_bias) (Eq. (11.21); each part optional), for every batch entry,
    head h, channel p and state entry n, g = h // (nheads / ngroups):

    .. math::  h'_{pn} = e^{Δ_p A_{pn}} h_{pn} + (Δ_p B_{g n})\, x_p,\qquad
               \mathrm{out}_p = \Big(\sum_n C_{g n} h'_{pn} + D_p x_p\Big)\,\mathrm{silu}(z_p),

    the step t of :func:`selective_scan_fn` (Mamba layout) or of
    :func:`refimpl.linear_rnn.mamba_chunk_scan_combined` (heads layout): decoding a sequence
    token by token from the zero state gives the outputs and the final state of the whole scan
    (for every input this function accepts: Δ > 0).

    Differences from ``mamba_ssm``, all deliberate: the function is pure — it returns the new
    state instead of writing it into ``state`` — and float64 throughout (the kernel computes in
    float32 and stores the state in its dtype); the softplus is exact, whereas the kernel returns x
    itself for x > 20 (a difference below 2.1e-9); A > 0 and Δ ≤ 0 are refused, as by
    :func:`selective_scan_fn` — the kernel checks neither, and where its float32 softplus is 0 it
    takes the identity step: ``log(e^x + 1)`` (``mamba_ssm/ops/triton/softplus.py`` under Triton ≥ 3)
    is 0 below x ≈ ln 2⁻²⁴ ≈ −16.6, where 1 + e^x rounds to 1 (and 1.19e-7 from there up to
    x ≈ −15.5), ``log1p(e^x)`` (older Triton) below x ≈ −104; a float64 softplus underflows only below
    x ≈ −745, and refimpl refuses that Δ = 0 (the kernel has no clamp of the step, unlike the chunked
    scan of :func:`refimpl.linear_rnn.mamba_chunk_scan_combined`, which accepts Δ = 0), so that
    decoding and :func:`selective_scan_fn` accept the same steps; repeated non-negative
    ``state_batch_indices`` are refused (the kernel's
    result would depend on the order of its programs); a state with more rows than the batch needs
    ``state_batch_indices`` (the kernel would update its first rows); layouts are not mixed (with a
    3-D state, ``x``, ``dt``, ``z`` are 2-D, ``A`` is (dim, dstate), ``D`` and ``dt_bias`` are (dim,),
    where mamba_ssm also accepts each with a unit heads axis); the options are keyword-only.
    ``state_batch_indices`` and its padding entries follow the Triton kernel (the PyTorch
    reference ``selective_state_update_ref`` has neither). Loop twin:
    :func:`selective_state_update_loop`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> b, H, P, N = 2, 4, 3, 5  # Mamba-2: heads of P channels, one group of B, C
    >>> h0, x = rng.normal(size=(b, H, P, N)), rng.normal(size=(b, H, P))
    >>> dt, A = rng.normal(size=(b, H, P)), np.repeat(-np.exp(rng.normal(size=(H, 1, 1))), P, axis=1).repeat(N, axis=2)
    >>> B, C = rng.normal(size=(2, b, 1, N))
    >>> out, h1 = selective_state_update(h0, x, dt, A, B, C, dt_softplus=True)
    >>> out.shape, h1.shape, bool(np.allclose(out, selective_state_update_loop(h0, x, dt, A, B, C, dt_softplus=True)[0]))
    ((2, 4, 3), (2, 4, 3, 5), True)
    """
    st, x, _, A, B, C, D, z, _, _, rows, step = _check_state_update(
        state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices)
    batch, H = x.shape[:2]
    Bh, Ch = (np.repeat(V, H // V.shape[1], axis=1) for V in (B, C))  # (batch, H, N): head h reads group h // (H/G)
    live = rows >= 0
    h = st[np.where(live, rows, 0)]  # (batch, H, P, N): the state each entry reads
    s = step[..., None]  # Δ, (batch, H, P, 1)
    h = np.exp(s * A) * h + (s * Bh[:, :, None, :]) * x[..., None]  # h' = e^{ΔA} h + (Δ B) x, Eq. (11.14)
    y = np.matmul(h, Ch[..., None])[..., 0]  # Σ_n C_n h'_n
    if D is not None:
        y += D * x  # y += D x
    if z is not None:
        y *= z * scipy.special.expit(z)  # out = (y + D x) silu(z), Eq. (11.23)
    y[~live] = 0.0  # padding entries
    new = st.copy()
    new[rows[live]] = h[live]
    if np.ndim(state) == 3:
        return y[:, 0], new[:, 0]
    return y, new


@guard_overflow()
def selective_state_update_loop(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, *, dt_softplus=False,
                                state_batch_indices=None):
    """Loop twin of :func:`selective_state_update`: scalar loops over batch, head, channel and state entry.

    For each batch entry b reading state row r (``state_batch_indices[b]``, or b), head h,
    channel p: ``Δ = softplus(dt[b, h, p] + dt_bias[h, p])`` (Eq. (11.21)),
    ``h_n ← e^{Δ A[h, p, n]} h_n + (Δ B[b, g, n]) x[b, h, p]`` with g = h // (nheads/ngroups),
    ``out[b, h, p] = (Σ_n C[b, g, n] h_n + D[h, p] x[b, h, p]) · z σ(z)`` (Eq. (11.23)), in Python floats.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> b, dim, N = 2, 3, 4  # Mamba: per-channel A, no heads
    >>> h0, x, dt = rng.normal(size=(b, dim, N)), rng.normal(size=(b, dim)), rng.uniform(0.1, 1.0, (b, dim))
    >>> A, B, C = -np.exp(rng.normal(size=(dim, N))), rng.normal(size=(b, N)), rng.normal(size=(b, N))
    >>> out, h1 = selective_state_update_loop(h0, x, dt, A, B, C)
    >>> bool(np.allclose(h1, selective_state_update(h0, x, dt, A, B, C)[1]))
    True
    """
    st, x, dt, A, B, C, D, z, dt_bias, softplus, rows, _ = _check_state_update(
        state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices)
    batch, H, P = x.shape
    G, N = B.shape[1:]
    new = st.copy()
    out = np.zeros(x.shape)
    for b in range(batch):
        r = int(rows[b])
        if r < 0:
            continue  # a padding entry: output 0, no state touched
        for hd in range(H):
            g = hd // (H // G)  # the group of head hd
            for p in range(P):
                v = dt[b, hd, p] + (dt_bias[hd, p] if dt_bias is not None else 0.0)
                step = _softplus_scalar(v) if softplus else v  # Δ, Eq. (11.21)
                xv = x[b, hd, p]
                y = 0.0
                for n in range(N):
                    hn = math.exp(step * A[hd, p, n]) * st[r, hd, p, n] + (step * B[b, g, n]) * xv  # e^{ΔA} h + (ΔB) x
                    new[r, hd, p, n] = hn
                    y += C[b, g, n] * hn  # Σ_n C_n h'_n
                if D is not None:
                    y += D[hd, p] * xv
                if z is not None:
                    y *= z[b, hd, p] * _sigmoid_scalar(z[b, hd, p])  # silu(z), Eq. (11.23)
                out[b, hd, p] = y
    if np.ndim(state) == 3:
        return out[:, 0], new[:, 0]
    return out, new


# The backward pass (vector–Jacobian products) lives in refimpl/_vjp.py, re-exported here.
from ._vjp import (  # noqa: E402
    selective_scan_fn_vjp,
    selective_scan_fn_vjp_loop,
    selective_scan_vjp,
    selective_scan_vjp_loop,
)
