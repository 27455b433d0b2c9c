r"""The linear Itô SDE observed at discrete times: model, exact discretization, sampling.

Chapter 1 of the book (``notebooks/01-linear-sde.ipynb``) derives every formula here.

.. math::  dx = A x\,dt + G\,dw,\qquad Q = G G^\top,                 \tag{1.1}
.. math::  z_i = C x(t_i) + v_i,\qquad v_i \sim \mathcal N(0, R).    \tag{1.2}

``A = S Λ S^{-1}`` is diagonalizable, ``λ_k = −μ_k + iω_k``. This is the generative model of
Adaptive Filter Attention (Racioppo 2025 [1]): tokens are noisy measurements ``z_i`` of one
trajectory, and every closed form of AFA comes from the eigenbasis in which the SDE decouples.

Glossary (code name → symbol in the book / Racioppo 2025)
---------------------------------------------------------
``d``              state dimension; ``p`` measurement dimension; ``N`` number of time stamps.
``A`` (d, d)       drift matrix A.               ``eigvals`` (d,)  λ_k = −μ_k + iω_k (Λ = diag λ).
``S`` (d, d)       eigenvectors (columns), A = S Λ S^{-1};  ``S_inv`` = S^{-1}.
``Q`` (d, d)       process-noise rate Q = G G^T (σ² in AFA when isotropic).
``noise`` (d, d)   G̃ = S^{-1} Q S^{-†}, the noise rate in the eigenbasis (Λ_Q when diagonal).
``C`` (p, d)       measurement matrix C;  ``R`` (p, p)  measurement-noise covariance (η²).
``t`` (N,)         strictly increasing time stamps t_i;  ``dt`` lags Δt = t_{i+1} − t_i ≥ 0.
``F`` (..., d, d)  transition e^{AΔt} (Eq. (1.5));  ``Qd`` (..., d, d)  V(Δt) (Eq. (1.6)).
``x`` (..., N, d)  states x(t_i);  ``z`` (..., N, p)  measurements z_i.

References
----------
.. [1] P. Racioppo, "Attention as an Adaptive Filter", arXiv:2509.04154v1, 2025 (the title of v1–v3;
       v1 has the 2-D experiment; retitled "Robust Filter Attention" from v4, 2026, which reports
       language modelling instead).
.. [2] B. Øksendal, *Stochastic Differential Equations*, 6th ed., Springer 2003, ch. 5.
.. [3] S. Särkkä and A. Solin, *Applied Stochastic Differential Equations*, CUP 2019,
       ch. 6 (linear SDEs, exact discretization) and ch. 8 (numerical simulation, Euler–Maruyama).
.. [4] C. F. Van Loan, "Computing integrals involving the matrix exponential", IEEE Trans.
       Automatic Control 23(3), 1978.
.. [5] D. J. Higham, "An algorithmic introduction to numerical simulation of stochastic
       differential equations", SIAM Review 43(3), 2001.
.. [6] P. Racioppo, the code of [1]: repository PCR-git/Adaptive-Filter-Attention on GitHub,
       commit 7f6ed105ca8190d3503c40617e8682d5c6f6488f, folder "AFA, Dec 21 (last version
       before simplification)": ``dynamics/dynamic_sim.py`` (function ``stochastic_LTI``, the
       simulator) and ``Main.ipynb`` (a 2-D example: the spiral system, Euler step and observation grid
       that chapter 1 uses, and one noise setting; it does not say whether it drew the figure of [1]).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import lyapunov
from ._scan import linear_scan
from ._validate import (
    refuse_rng,
    as_lags,
    hermitian_part,
    guard_overflow,
    as_array,
    as_complex_array,
    as_noise,
    as_positive_scalar,
    as_real_array,
    as_rng,
    check_hermitian_psd,
    check_nonnegative,
    check_square,
    check_times,
)

__all__ = [
    "LinearSDE",
    "spiral_system",
    "transition_matrix",
    "transition_matrix_loop",
    "discretize",
    "discretize_loop",
    "moments",
    "moments_loop",
    "sample",
    "sample_loop",
    "euler_maruyama",
]

#: Default bound on cond(S), the condition number of the eigenvector matrix with its columns
#: scaled to unit length (the lengths of eigenvectors are arbitrary and do not change the model).
#: Every closed form is computed in the eigenbasis and mapped back with S and S^{-1}: the
#: transition F = S e^{ΛΔt} S^{-1} (one factor S^{-1}) loses up to about cond(S)·ε of relative
#: accuracy, and Q_d = S Σ S^† with G̃ = S^{-1} Q S^{-†} (two factors) up to about cond(S)²·ε.
#: 1e3 keeps Q_d within ~1e-10 (chapter 1, §1.3 measures it); a larger ``max_cond`` accepts
#: more nearly defective models at that cost (Q_d wrong in the 5th digit at 1e6).
MAX_COND = 1e3


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    """Symmetric square root L = V diag(√w) V^H of Hermitian PSD matrices (..., n, n), L L^H = m.

    Unlike ``numpy.linalg.cholesky`` (unpivoted, positive definite input only) it works for
    singular covariances (σ² = 0, a noiseless mode).
    """
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0.0, None))[..., None, :]) @ np.conj(np.swapaxes(v, -1, -2))


def _is_real(*mats: np.ndarray, rtol: float = 1e-12) -> bool:
    return all(np.max(np.abs(m.imag), initial=0.0) <= rtol * max(np.max(np.abs(m), initial=0.0), 1e-300) for m in mats)


@dataclass(frozen=True, eq=False)
class LinearSDE:
    r"""A linear time-invariant Itô SDE with diagonalizable drift, and its measurement model.

    Eqs. (1.1)–(1.2) of the book. Build it with :meth:`from_matrices` (A, Q, C, R) or
    :meth:`from_eigen` (Λ, S and noise spectra); both check that ``A`` is diagonalizable with
    a well-conditioned eigenvector matrix.

    Attributes
    ----------
    A, Q : ndarray, shape (d, d)
        Drift and process-noise rate (float64 when the model is real, else complex128).
    C : ndarray, shape (p, d)
    R : ndarray, shape (p, p)
    eigvals : ndarray of complex128, shape (d,)
    S, S_inv : ndarray of complex128, shape (d, d)
    noise : ndarray of complex128, shape (d, d)
        G̃ = S^{-1} Q S^{-†}, Hermitian PSD.
    cond : float
        Condition number of ``S`` with its columns scaled to unit length: the closed forms lose
        up to about ``cond·ε`` (F) and ``cond²·ε`` (Q_d) of relative accuracy (see ``MAX_COND``).

    Examples
    --------
    >>> m = LinearSDE.from_matrices(np.array([[-1.0, 0.0], [0.0, -2.0]]), np.eye(2))
    >>> m.eigvals.real.tolist(), m.is_real
    ([-1.0, -2.0], True)
    """

    A: np.ndarray
    Q: np.ndarray
    C: np.ndarray
    R: np.ndarray
    eigvals: np.ndarray
    S: np.ndarray
    S_inv: np.ndarray
    noise: np.ndarray
    cond: float

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_matrices(cls, A, Q, *, C=None, R=None, max_cond: float = MAX_COND) -> "LinearSDE":
        """Build the model from ``A`` (d, d), ``Q`` (d, d), and optionally ``C`` (p, d), ``R`` (p, p).

        ``C`` defaults to the identity and ``R`` to zero (noiseless measurements). ``A`` is
        diagonalized with ``numpy.linalg.eig``; a ``ValueError`` names ``A`` if it is defective
        or nearly so (``cond(S) > max_cond``, default :data:`MAX_COND`; the bound is about
        accuracy: Q_d loses up to about ``cond(S)²·ε``).
        """
        A = as_array(A, "A", ndim=2)
        check_square(A, "A")
        d = A.shape[0]
        Q = _check_cov(Q, "Q", d)
        C, R = _check_measurement(C, R, d)
        lam, S = np.linalg.eig(A.astype(np.complex128))
        S_inv, cond = _invert_eigvecs(S, "A", max_cond)
        err = np.max(np.abs((S * lam) @ S_inv - A))
        # eig is backward stable (error ~ eps ||A||), and forming S^-1 amplifies that by up to
        # cond(S): the bound scales with cond(S), else max_cond above ~1e5 could never be honored.
        if err > max(1e-10, 100 * np.finfo(np.float64).eps * cond) * max(np.max(np.abs(A)), 1e-300):
            raise ValueError(f"A: eigendecomposition does not reproduce A (error {err:.2e}); A is not diagonalizable")
        noise = S_inv @ Q @ S_inv.conj().T  # G̃ = S^{-1} Q S^{-†}
        return cls(A, Q, C, R, lam, S, S_inv, hermitian_part(noise), cond)

    @classmethod
    @guard_overflow()
    def from_eigen(
        cls, eigvals, S, process_noise, *, measurement_noise=None, C=None, max_cond: float = MAX_COND
    ) -> "LinearSDE":
        """Build the model from its eigen-structure: ``A = S diag(eigvals) S^{-1}``, ``Q = S G̃ S^†``.

        Parameters
        ----------
        eigvals : array_like of complex, shape (d,)
        S : array_like, shape (d, d)
            Eigenvectors (columns); ``ValueError`` if singular or ``cond(S) > max_cond``.
        process_noise : array_like, shape (d,) or (d, d)
            The spectrum Λ_Q (d,) ≥ 0 (AFA's σ²), or the full G̃ (d, d) Hermitian PSD.
        measurement_noise : array_like, shape (d,) or (p, p), optional
            A spectrum Λ_R ≥ 0 (AFA's η²; then ``R = S Λ_R S^†`` and ``C`` must be the
            identity), or the covariance ``R`` itself. Default: zero.
        C : array_like, shape (p, d), optional
            Measurement matrix, default the identity.

        Notes
        -----
        For a real system the eigenvalues come in conjugate pairs and the two members of a
        pair must carry equal noise; ``A`` and ``Q`` are then real up to round-off and stored
        as float64. Otherwise the model is complex (complex circular noise).
        """
        lam = as_complex_array(eigvals, "eigvals", ndim=1)
        d = lam.shape[0]
        S = as_complex_array(S, "S", ndim=2)
        if S.shape != (d, d):
            raise ValueError(f"S: expected shape ({d}, {d}) to match eigvals, got shape {S.shape}")
        S_inv, cond = _invert_eigvecs(S, "S", max_cond)
        g, diagonal = as_noise(process_noise, "process_noise", d)
        g = np.diag(g).astype(np.complex128) if diagonal else g
        A = (S * lam) @ S_inv  # A = S Λ S^{-1}
        Q = S @ g @ S.conj().T  # Q = S G̃ S^†
        Q = hermitian_part(Q)
        if C is None:
            C = np.eye(d)
        C = as_array(C, "C", ndim=2)
        if C.shape[1] != d:
            raise ValueError(f"C: expected shape (p, {d}), got shape {C.shape}")
        p = C.shape[0]
        if measurement_noise is None:
            R = np.zeros((p, p))
        elif np.ndim(measurement_noise) == 1:
            r = as_real_array(measurement_noise, "measurement_noise", ndim=1)
            if r.shape != (d,) or C.shape != (d, d) or np.any(C != np.eye(d)):
                raise ValueError(
                    f"measurement_noise: a spectrum of shape ({d},) needs C = identity; "
                    f"got spectrum shape {r.shape} and C of shape {C.shape}"
                )
            check_nonnegative(r, "measurement_noise")
            R = (S * r) @ S.conj().T  # R = S Λ_R S^†
            R = hermitian_part(R)
        else:
            R = _check_cov(measurement_noise, "measurement_noise", p, " (p = the rows of C)")
        if _is_real(A, Q, R, np.asarray(C, dtype=np.complex128)):
            A, Q, R, C = A.real.copy(), Q.real.copy(), np.real(R).copy(), np.real(C).astype(np.float64)
        return cls(A, Q, C, R, lam, S, S_inv, g, cond)

    # ------------------------------------------------------------------ basic properties
    @property
    def dim(self) -> int:
        """State dimension d."""
        return self.A.shape[0]

    @property
    def obs_dim(self) -> int:
        """Measurement dimension p."""
        return self.C.shape[0]

    @property
    def is_real(self) -> bool:
        """True when A, Q, C, R are real (the state and the noise are real)."""
        return not any(np.iscomplexobj(m) for m in (self.A, self.Q, self.C, self.R))

    def _realify(self, m: np.ndarray) -> np.ndarray:
        # For a real model S e^{ΛΔt} S^{-1} and S Σ S^† are real mathematically (conjugate pairs
        # with equal noise); what is dropped here is round-off of size ~eps·cond(S).
        return m.real.copy() if self.is_real else m

    # ------------------------------------------------------------------ closed forms
    def transition(self, dt) -> np.ndarray:
        r"""Transition matrix ``F(Δt) = e^{AΔt} = S e^{ΛΔt} S^{-1}``, Eq. (1.5).

        ``dt`` : float or array (...), any sign: a negative lag −τ gives ``e^{-Aτ}``, the
        pushed-back map of Eq. (2.7) (public :func:`transition_matrix` accepts lags ≥ 0 only).
        Returns (..., d, d). ``ValueError`` naming ``dt`` if ``e^{AΔt}`` overflows float64.
        """
        return self._transition(as_real_array(dt, "dt"), "dt")

    def _transition(self, dt: np.ndarray, name: str) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            e = np.exp(self.eigvals * dt[..., None])  # e^{λ_k Δt}, (..., d)
            F = self._realify((self.S * e[..., None, :]) @ self.S_inv)
        if not np.all(np.isfinite(F)):
            raise _lag_overflow(self, dt, name)
        return F

    def process_noise_covariance(self, dt) -> np.ndarray:
        r"""Discrete process noise ``Q_d(Δt) = ∫_0^{Δt} e^{As} Q e^{A^† s} ds = S Σ(Δt) S^†``, Eq. (1.6).

        (``A^† = A^T`` for a real model; a complex model gives the covariance ``E[ε ε^†]``.)
        ``Σ(Δt)`` is the closed form of :func:`refimpl.lyapunov.dle_covariance` (Eq. (2.4)).
        ``dt`` : float or array (...), ≥ 0. Returns (..., d, d), Hermitian PSD. ``ValueError``
        naming ``dt`` if a lag is negative or ``Q_d`` overflows float64.
        """
        return self._process_noise(as_lags(dt, "dt"), "dt")

    def _process_noise(self, dt: np.ndarray, name: str) -> np.ndarray:
        try:
            sigma = lyapunov.dle_covariance(self.eigvals, self.noise, dt)  # (..., d, d)
        except ValueError as exc:
            if "not representable in float64" not in str(exc):
                raise
            raise _lag_overflow(self, dt, name) from None
        with np.errstate(over="ignore", invalid="ignore"):
            qd = self.S @ sigma @ self.S.conj().T
            qd = self._realify(0.5 * (qd + np.conj(np.swapaxes(qd, -1, -2))))
        if not np.all(np.isfinite(qd)):
            raise _lag_overflow(self, dt, name)
        return qd

    def stationary_covariance(self) -> np.ndarray:
        r"""``P_∞ = S Σ_∞ S^†``, the solution of ``A P + P A^† + Q = 0`` (Eq. (2.8)); needs Re λ < 0."""
        sigma = lyapunov.steady_state_covariance(self.eigvals, self.noise)
        p = self.S @ sigma @ self.S.conj().T
        return self._realify(hermitian_part(p))


def spiral_system(sigma2: float = 0.3, eta2: float = 0.5) -> LinearSDE:
    r"""The 2-D spiral system of the authors' code [6], ``A = [[0.9, −2], [1, −1.1]]``: Eq. (1.1) of the book.

    ``Λ = diag(−0.1 − i, −0.1 + i)``, ``S = [[1 − i, 1 + i], [1, 1]]``, as set up in the 2-D
    example of the authors' public code [6] (``Main.ipynb``; it does not say whether it drew the
    figure of [1]), with isotropic noise spectra in the eigenbasis: ``Λ_Q = σ² I`` and
    ``Λ_R = η² I``, so ``Q = σ² S S^†`` and ``R = η² S S^†``. The three noise settings of the
    paper's 2-D figure (Racioppo 2025 [1], v1) are (σ², η²) = (0, 1), (0.3, 0.5), (0.5, 2).

    This is AFA's *model*, which satisfies its simultaneous-diagonalizability assumption. The
    simulator of the same code (``stochastic_LTI`` [6]) draws isotropic noise in the original basis
    instead (``Q = σ² I``, ``R = η² I``; its arguments σ and η are standard deviations), which
    breaks the assumption through ``R`` wherever η > 0 (every setting of the figure) and through
    ``Q`` wherever σ > 0; build that system with
    ``LinearSDE.from_matrices(spiral_system().A, σ² I, R=η² I)``. Chapter 1 (§1.3.1) and
    chapter 3 (§3.7) measure the difference.

    Examples
    --------
    >>> m = spiral_system()
    >>> m.A.tolist(), bool(np.all(m.eigvals.real < 0))  # a stable spiral
    ([[0.9, -2.0], [1.0, -1.1]], True)
    """
    sigma2 = as_positive_scalar(sigma2, "sigma2", strict=False)
    eta2 = as_positive_scalar(eta2, "eta2", strict=False)
    lam = np.array([-0.1 - 1j, -0.1 + 1j])
    S = np.array([[1 - 1j, 1 + 1j], [1, 1]])
    return LinearSDE.from_eigen(lam, S, [sigma2, sigma2], measurement_noise=[eta2, eta2])


# ---------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------


def _check_cov(m, name: str, n: int, ref: str = "") -> np.ndarray:
    m = as_array(m, name, ndim=2)
    if m.shape != (n, n):
        raise ValueError(f"{name}: expected shape ({n}, {n}){ref}, got shape {m.shape}")
    check_hermitian_psd(m, name)
    return hermitian_part(m)


def _check_measurement(C, R, d: int) -> tuple[np.ndarray, np.ndarray]:
    C = np.eye(d) if C is None else as_array(C, "C", ndim=2)
    if C.shape[1] != d:
        raise ValueError(f"C: expected shape (p, {d}), got shape {C.shape}")
    p = C.shape[0]
    R = np.zeros((p, p)) if R is None else _check_cov(R, "R", p, " (p = the rows of C)")
    return C, R


def _unit_columns_cond(S: np.ndarray) -> float:
    """cond(S) with the columns of S scaled to unit length (inf if a column is zero).

    The columns are first divided by their largest entry, so no norm overflows or underflows.
    """
    big = np.max(np.abs(S), axis=0)
    if np.any(big == 0):
        return np.inf
    Sn = S / big
    return float(np.linalg.cond(Sn / np.linalg.norm(Sn, axis=0)))


def _invert_eigvecs(S: np.ndarray, name: str, max_cond: float) -> tuple[np.ndarray, float]:
    max_cond = as_positive_scalar(max_cond, "max_cond")
    cond = _unit_columns_cond(S)
    if not np.isfinite(cond) or cond > max_cond:
        eps = np.finfo(np.float64).eps
        raise ValueError(
            f"{name}: not diagonalizable to working accuracy: the eigenvector matrix S (unit columns) has "
            f"condition number {cond:.3g} > max_cond = {max_cond:.3g} (a defective or nearly defective matrix, "
            f"e.g. a Jordan block). The closed forms map through S and S^-1: e^(AΔt) loses up to about "
            f"cond·eps and Q_d up to about cond²·eps (here {min(cond**2 * eps, 1.0):.1g}) of relative accuracy; "
            f"pass a larger max_cond to accept that."
        )
    return np.linalg.solve(S, np.eye(S.shape[0], dtype=S.dtype)), cond


def _lag_overflow(model: LinearSDE, dt: np.ndarray, name: str) -> ValueError:
    """The error for lags at which e^{AΔt} or Q_d(Δt) is not representable in float64."""
    re = model.eigvals.real
    lags = np.asarray(dt, dtype=np.float64).reshape(-1)
    growth = max(float(re.max() * lags.max()), float(re.min() * lags.min())) if lags.size else 0.0
    return ValueError(
        f"{name}, model: e^(AΔt) or Q_d(Δt) overflows float64 at these lags (largest Re λ_k·Δt = {growth:.4g}; "
        f"e^x overflows above x ≈ 709.8, Q_d grows like e^(2 Re λ Δt)); use shorter lags or a stable model"
    )


def _check_model(model) -> LinearSDE:
    if not isinstance(model, LinearSDE):
        raise TypeError(f"model: expected a refimpl.sde.LinearSDE, got {type(model).__name__}")
    return model


def _check_t(t) -> np.ndarray:
    t = as_real_array(t, "t", ndim=1)
    check_times(t, "t")
    if t.size == 0:
        raise ValueError("t: expected at least one time stamp, got shape (0,)")
    return t


def _check_lags(dt) -> np.ndarray:
    return as_lags(dt, "dt")


def _size_tuple(size) -> tuple:
    if size is None:
        return ()
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size),)
    try:
        items = tuple(size)
    except TypeError:
        items = None
    # no int() coercion: it would truncate 2.5 to 2 and accept "3"
    if items is None or isinstance(size, (str, bytes)) or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in items
    ):
        raise TypeError(f"size: expected None, an int or a tuple of ints, got {type(size).__name__} {size!r}")
    size = tuple(int(s) for s in items)
    if any(s < 0 for s in size):
        raise ValueError(f"size: expected nonnegative lengths, got {size}")
    return size


def _check_x0(model: LinearSDE, x0, size: tuple) -> np.ndarray:
    d = model.dim
    if x0 is None:
        x0 = np.zeros(d)
    x0 = as_array(x0, "x0")
    if np.iscomplexobj(x0) and model.is_real:
        raise TypeError("x0: expected a real initial state for a real model, got complex values")
    if x0.ndim == 0 or x0.shape[-1] != d:
        raise ValueError(f"x0: expected shape ({d},) or (..., {d}), got shape {x0.shape}")
    try:
        return np.broadcast_to(x0, size + (d,)).astype(np.result_type(x0, model.A))
    except ValueError:
        raise ValueError(f"x0: shape {x0.shape} does not broadcast to size + (d,) = {size + (d,)}") from None


# ---------------------------------------------------------------------------------------------
# Exact discretization, Eqs. (1.5)-(1.7)
# ---------------------------------------------------------------------------------------------


def transition_matrix(model: LinearSDE, dt) -> np.ndarray:
    r"""``e^{AΔt}`` for every lag: Eq. (1.5), ``S e^{ΛΔt} S^{-1}``.

    Parameters
    ----------
    model : LinearSDE
    dt : float or array_like, shape (...)
        Lags Δt ≥ 0.

    Returns
    -------
    ndarray, shape (..., d, d)

    Raises
    ------
    ValueError
        Naming ``dt`` if a lag is negative or not finite, or if ``e^{AΔt}`` overflows float64
        (an unstable mode over a long lag).

    Examples
    --------
    >>> m = LinearSDE.from_matrices(np.array([[-1.0, 0.0], [0.0, -2.0]]), np.eye(2))
    >>> bool(np.allclose(transition_matrix(m, 0.5), np.diag(np.exp([-0.5, -1.0]))))
    True
    """
    model = _check_model(model)
    return model._transition(_check_lags(dt), "dt")


def transition_matrix_loop(model: LinearSDE, dt) -> np.ndarray:
    r"""Loop twin of :func:`transition_matrix`: the spectral sum ``Σ_k e^{λ_k Δt} s_k r_k^T``.

    ``s_k`` is column k of S and ``r_k`` row k of S^{-1} (the eigen-projector ``s_k r_k^T``).

    Examples
    --------
    >>> m = spiral_system()
    >>> bool(np.allclose(transition_matrix_loop(m, np.array([0.0, 0.3])), transition_matrix(m, np.array([0.0, 0.3]))))
    True
    """
    model = _check_model(model)
    return _transition_loop(model, _check_lags(dt), "dt")


def _transition_loop(model: LinearSDE, dt: np.ndarray, name: str) -> np.ndarray:
    d = model.dim
    flat = dt.reshape(-1)
    out = np.zeros((flat.size, d, d), dtype=np.complex128)
    with np.errstate(over="ignore", invalid="ignore"):
        for n, tau in enumerate(flat):
            for k in range(d):
                # e^{AΔt} = Σ_k e^{λ_k Δt} s_k r_k^T
                out[n] += np.exp(model.eigvals[k] * tau) * np.outer(model.S[:, k], model.S_inv[k, :])
    if not np.all(np.isfinite(out)):
        raise _lag_overflow(model, dt, name)
    return model._realify(out.reshape(dt.shape + (d, d)))


@guard_overflow()
def discretize(model: LinearSDE, t):
    r"""Exact discretization on the time grid ``t``: ``x_{i+1} = F_i x_i + ε_i``, Eq. (1.7).

    Parameters
    ----------
    model : LinearSDE
    t : array_like, shape (N,)
        Strictly increasing time stamps (irregular grids allowed).

    Returns
    -------
    F : ndarray, shape (N-1, d, d)
        ``e^{A(t_{i+1} - t_i)}``.
    Qd : ndarray, shape (N-1, d, d)
        ``Cov ε_i = ∫_0^{Δt_i} e^{As} Q e^{A^† s} ds`` (Eq. (1.6); ``A^† = A^T`` for a real
        model), Hermitian PSD.

    Raises
    ------
    ValueError
        Naming ``t`` (and ``model``) if ``F`` or ``Q_d`` overflows float64 on these intervals.

    Examples
    --------
    >>> m = LinearSDE.from_matrices(np.array([[-1.0]]), np.array([[2.0]]))  # Ornstein–Uhlenbeck
    >>> F, Qd = discretize(m, np.array([0.0, 0.5]))
    >>> bool(np.isclose(F[0, 0, 0], np.exp(-0.5))), bool(np.isclose(Qd[0, 0, 0], 1 - np.exp(-1.0)))  # q (1 − e^{−2aΔt})/(2a)
    (True, True)
    """
    model = _check_model(model)
    dt = np.diff(_check_t(t))
    return model._transition(dt, "t"), model._process_noise(dt, "t")


@guard_overflow()
def discretize_loop(model: LinearSDE, t):
    """Loop twin of :func:`discretize`: one interval at a time (spectral sum and Eq. (2.4) entry-wise).

    Examples
    --------
    >>> m, t = spiral_system(), np.array([0.0, 0.2, 0.7])
    >>> all(np.allclose(a, b) for a, b in zip(discretize_loop(m, t), discretize(m, t)))
    True
    """
    model = _check_model(model)
    t = _check_t(t)
    d = model.dim
    F, Qd = [], []
    for i in range(t.size - 1):
        tau = t[i + 1] - t[i]
        F.append(_transition_loop(model, np.asarray(tau), "t"))
        try:
            sigma = lyapunov.dle_covariance_loop(model.eigvals, model.noise, tau)  # Σ(Δt_i), Eq. (2.4)
        except ValueError as exc:
            if "not representable in float64" not in str(exc):
                raise
            raise _lag_overflow(model, np.asarray(tau), "t") from None
        qd = model.S @ sigma @ model.S.conj().T  # Q_d = S Σ S^†
        if not np.all(np.isfinite(qd)):
            raise _lag_overflow(model, np.asarray(tau), "t")
        Qd.append(model._realify(hermitian_part(qd)))
    dtype = model.A.dtype
    if not F:
        return np.empty((0, d, d), dtype), np.empty((0, d, d), dtype)
    return np.array(F), np.array(Qd)


# ---------------------------------------------------------------------------------------------
# Exact moments, Eq. (1.8)
# ---------------------------------------------------------------------------------------------


def _check_moments_args(model, t, m0, P0):
    model = _check_model(model)
    t = _check_t(t)
    d = model.dim
    m0 = as_array(m0, "m0", ndim=1)
    if m0.shape != (d,):
        raise ValueError(f"m0: expected shape ({d},), got shape {m0.shape}")
    P0 = np.zeros((d, d)) if P0 is None else _check_cov(P0, "P0", d)
    return model, t, m0, P0


@guard_overflow()
def moments(model: LinearSDE, t, m0, P0=None):
    r"""Exact mean and covariance of ``x(t_i)`` given ``x(t_0) ~ N(m0, P0)``, Eq. (1.8).

    .. math::  m_i = e^{A(t_i - t_0)} m_0,\qquad
               P_i = e^{A(t_i - t_0)} P_0 e^{A^\dagger (t_i - t_0)} + Q_d(t_i - t_0)

    (``A^† = A^T`` for a real model).

    Parameters
    ----------
    model : LinearSDE
    t : array_like, shape (N,)
    m0 : array_like, shape (d,)
    P0 : array_like, shape (d, d), optional
        Default zero (a known initial state).

    Returns
    -------
    m : ndarray, shape (N, d)
    P : ndarray, shape (N, d, d)

    Examples
    --------
    >>> m = LinearSDE.from_matrices(np.array([[-1.0]]), np.array([[2.0]]))
    >>> mean, P = moments(m, np.array([0.0, 50.0]), np.array([1.0]))
    >>> round(float(mean[1, 0]), 12), round(float(P[1, 0, 0]), 12)  # forgets the start: mean 0, variance q/(2a) = 1
    (0.0, 1.0)
    """
    model, t, m0, P0 = _check_moments_args(model, t, m0, P0)
    lag = t - t[0]
    F = model._transition(lag, "t")  # (N, d, d)
    m = F @ m0  # m_i = F(t_i − t_0) m_0
    P = F @ P0 @ np.conj(np.swapaxes(F, -1, -2)) + model._process_noise(lag, "t")
    return m, 0.5 * (P + np.conj(np.swapaxes(P, -1, -2)))


@guard_overflow()
def moments_loop(model: LinearSDE, t, m0, P0=None):
    r"""Loop twin of :func:`moments`: the one-step recursion ``m_{i+1} = F_i m_i``,
    ``P_{i+1} = F_i P_i F_i^† + Q_{d,i}`` (a second algorithm: it composes the steps).

    Examples
    --------
    >>> m, t = spiral_system(), np.array([0.0, 0.2, 0.7])
    >>> all(np.allclose(a, b) for a, b in zip(moments_loop(m, t, np.ones(2), np.eye(2)), moments(m, t, np.ones(2), np.eye(2))))
    True
    """
    model, t, m0, P0 = _check_moments_args(model, t, m0, P0)
    F, Qd = discretize(model, t)
    m = [m0.astype(np.result_type(m0, model.A))]
    P = [P0.astype(np.result_type(P0, model.A))]
    for i in range(t.size - 1):
        m.append(F[i] @ m[i])  # m_{i+1} = F_i m_i
        p = F[i] @ P[i] @ F[i].conj().T + Qd[i]  # P_{i+1} = F_i P_i F_i^† + Q_d,i
        P.append(hermitian_part(p))
    return np.array(m), np.array(P)


# ---------------------------------------------------------------------------------------------
# Exact sampling, Eq. (1.7) + (1.2)
# ---------------------------------------------------------------------------------------------


def _standard_normal(rng: np.random.Generator, shape: tuple, complex_: bool) -> np.ndarray:
    """N(0, I) draws; complex circular CN(0, I) (real and imaginary parts N(0, 1/2)) if asked."""
    xi = rng.standard_normal(shape)
    if complex_:
        xi = (xi + 1j * rng.standard_normal(shape)) / np.sqrt(2.0)
    return xi


def _sample_setup(model, t, x0, size, rng):
    """Validated inputs, the noise draws and the discretization shared by sample and sample_loop.

    One fixed order of draws (process noise for all steps, then measurement noise) so that
    the two can be compared path by path.
    """
    model = _check_model(model)
    t = _check_t(t)
    size = _size_tuple(size)
    x0 = _check_x0(model, x0, size)
    rng = as_rng(rng)
    cplx = not model.is_real
    xi = _standard_normal(rng, size + (t.size - 1, model.dim), cplx)
    nu = _standard_normal(rng, size + (t.size, model.obs_dim), cplx)
    F, Qd = discretize(model, t)
    return model, t, size, x0, xi, nu, F, Qd


@guard_overflow()
def sample(model: LinearSDE, t, *, x0=None, size=None, rng=None):
    r"""Exact samples of the states and measurements on any time grid, Eqs. (1.7) and (1.2).

    Parameters
    ----------
    model : LinearSDE
    t : array_like, shape (N,)
        Strictly increasing time stamps; irregular spacing is exact, not approximated.
    x0 : array_like, shape (d,) or size + (d,), optional
        The state at ``t[0]`` (default 0).
    size : int or tuple of int, optional
        Batch shape of independent paths (default: one path).
    rng : numpy.random.Generator, int or None
        The only source of randomness.

    Returns
    -------
    x : ndarray, shape size + (N, d)
        States ``x(t_i)``.
    z : ndarray, shape size + (N, p)
        Measurements ``z_i = C x(t_i) + v_i``.

    Notes
    -----
    ``ε_i = L_i ξ_i`` with ``L_i L_i^† = Q_d(Δt_i)`` and ``ξ_i ~ N(0, I)``. The recursion
    ``x_{i+1} = F_i x_i + ε_i`` runs in eigen-coordinates ``y = S^{-1} x``, where it is
    diagonal, ``y_{i+1} = e^{λΔt_i} ⊙ y_i + S^{-1} ε_i`` (``e^{λΔt_i}`` the vector of the
    ``e^{λ_k Δt_i}``, the diagonal of ``e^{ΛΔt_i}``), and all N steps are formed at once by
    an associative scan (``ceil(log2 N)`` vectorized sweeps, no loop over N).

    Examples
    --------
    >>> x, z = sample(spiral_system(), np.linspace(0.0, 1.0, 5), size=3, rng=0)
    >>> x.shape, z.shape  # states and measurements, three independent paths
    ((3, 5, 2), (3, 5, 2))
    >>> bool(np.array_equal(x, sample(spiral_system(), np.linspace(0.0, 1.0, 5), size=3, rng=0)[0]))  # seeded
    True
    """
    model, t, size, x0, xi, nu, F, Qd = _sample_setup(model, t, x0, size, rng)
    eps = (_psd_sqrt(Qd) @ xi[..., None])[..., 0]  # ε_i = L_i ξ_i, size + (N-1, d)
    # eigen-coordinates: y_0 = S^{-1} x_0, then y_{i+1} = e^{λΔt_i} y_i + S^{-1} ε_i
    b = np.concatenate([x0[..., None, :], eps], axis=-2) @ model.S_inv.T
    a = np.exp(np.diff(t)[:, None] * model.eigvals)  # (N-1, d)
    a = np.concatenate([np.zeros((1, model.dim), a.dtype), a], axis=0)
    y = linear_scan(a, b, axis=-2)
    x = model._realify(y @ model.S.T)  # x = S y
    x[..., 0, :] = x0  # exactly, not S S^{-1} x0
    z = x @ model.C.T + nu @ _psd_sqrt(model.R).T  # z_i = C x_i + R^{1/2} ν_i
    return x, z


@guard_overflow()
def sample_loop(model: LinearSDE, t, *, x0=None, size=None, rng=None):
    """Loop twin of :func:`sample`: ``x_{i+1} = F_i x_i + ε_i`` step by step in the original basis.

    With the same ``rng`` state it draws the same noise as :func:`sample`, so the two return
    the same paths (to round-off).

    Examples
    --------
    >>> x, z = sample_loop(spiral_system(), np.linspace(0.0, 1.0, 5), rng=0)
    >>> x.shape, z.shape
    ((5, 2), (5, 2))
    """
    model, t, size, x0, xi, nu, F, Qd = _sample_setup(model, t, x0, size, rng)
    L_R = _psd_sqrt(model.R)
    x = np.empty(size + (t.size, model.dim), dtype=np.result_type(x0, model.A))
    x[..., 0, :] = x0
    for i in range(t.size - 1):
        L = _psd_sqrt(Qd[i])  # L L^† = Q_d(Δt_i)
        x[..., i + 1, :] = x[..., i, :] @ F[i].T + xi[..., i, :] @ L.T  # x_{i+1} = F_i x_i + L_i ξ_i
    z = np.empty(size + (t.size, model.obs_dim), dtype=np.result_type(x, model.C, L_R))
    for i in range(t.size):
        z[..., i, :] = x[..., i, :] @ model.C.T + nu[..., i, :] @ L_R.T  # z_i = C x_i + v_i
    return x, z


# ---------------------------------------------------------------------------------------------
# Euler–Maruyama, Eq. (1.9)
# ---------------------------------------------------------------------------------------------


@guard_overflow()
def euler_maruyama(model: LinearSDE, t, *, x0=None, n_substeps: int = 1, size=None, rng=None, dW=None):
    r"""Euler–Maruyama simulation of Eq. (1.1), returned on the grid ``t``, Eq. (1.9).

    .. math::  x_{n+1} = x_n + h A x_n + G\,ΔW_n,\qquad ΔW_n \sim \mathcal N(0, h I),

    with ``G = Q^{1/2}`` (symmetric square root) and ``n_substeps`` equal steps
    ``h = (t_{i+1} - t_i)/n_substeps`` inside every interval of ``t``.

    This is the textbook loop (one Python iteration per step, vectorized over the ``size``
    independent paths): the method *is* its sequential recursion, and it exists to be checked
    against the exact sampler :func:`sample` (weak error O(h); strong error O(h) for additive
    noise, see chapter 1).

    Parameters
    ----------
    model : LinearSDE
    t : array_like, shape (N,)
    x0 : array_like, shape (d,) or size + (d,), optional
    n_substeps : int ≥ 1
    size : int or tuple, optional
    rng : numpy.random.Generator, int or None
    dW : array_like, shape size + ((N-1)·n_substeps, d), optional
        Brownian increments to use instead of drawing them (``ΔW_n`` with covariance h I;
        complex circular for a complex model). Used to run several step sizes on one path.

    Returns
    -------
    x : ndarray, shape size + (N, d)

    Examples
    --------
    >>> m = LinearSDE.from_matrices(np.array([[-1.0]]), np.zeros((1, 1)))  # no noise: x' = −x
    >>> x = euler_maruyama(m, np.array([0.0, 1.0]), x0=np.array([1.0]), n_substeps=1000, rng=0)
    >>> round(float(x[-1, 0]), 3)  # close to e^{−1}
    0.368
    """
    model = _check_model(model)
    t = _check_t(t)
    size = _size_tuple(size)
    x0 = _check_x0(model, x0, size)
    if isinstance(n_substeps, bool) or not isinstance(n_substeps, (int, np.integer)) or n_substeps < 1:
        raise ValueError(f"n_substeps: expected an integer >= 1, got {n_substeps!r}")
    n_steps = (t.size - 1) * int(n_substeps)
    h = np.repeat(np.diff(t) / n_substeps, n_substeps)  # step sizes, (n_steps,)
    if dW is None:
        dW = _standard_normal(as_rng(rng), size + (n_steps, model.dim), not model.is_real) * np.sqrt(h)[:, None]
    else:
        dW = as_array(dW, "dW")
        if dW.shape != size + (n_steps, model.dim):
            raise ValueError(
                f"dW: expected shape {size + (n_steps, model.dim)} ((len(t) − 1)·n_substeps steps of t), got shape {dW.shape}"
            )
        refuse_rng(rng, "dW is given")
    G = _psd_sqrt(model.Q)
    x = np.empty(size + (t.size, model.dim), dtype=np.result_type(x0, model.A, dW))
    state = x0.astype(x.dtype)
    x[..., 0, :] = state
    n = 0
    for i in range(t.size - 1):
        for _ in range(n_substeps):
            state = state + h[n] * (state @ model.A.T) + dW[..., n, :] @ G.T  # x ← x + h A x + G ΔW
            n += 1
        x[..., i + 1, :] = state
    return model._realify(x) if model.is_real else x
