r"""The radial–tangential SDE (RT-SDE) of Adaptive Filter Attention — a RECONSTRUCTION.

Chapter 9 of the book (``notebooks/09-rt-sde.ipynb``) derives every formula here.

.. warning::
   **Reconstruction (DERIVED).** Racioppo's v1–v3 (arXiv:2509.04154, v1 §4 "Radial-Tangential
   Model", App. B.3–B.4) and the RT-Transformer paper (arXiv:2605.11007) describe this model in
   words: noise split into tangential and radial parts, "diagonal plus rank-1" covariances that
   *co-rotate* with the dynamics and so propagate in closed form, a precision-weighted attention
   rule, and the reading "attention + residual + normalization = one MLE step on the hypersphere".
   Their exact equations were **not available** to this project. Everything below is a
   derivation consistent with that description (chapter 9 of the book); each closed form is verified in the tests against numerical integration or
   brute-force linear algebra, but the paper's own parameterization is **unconfirmed**.
   In particular the choice of the noise direction ``u`` (here: the transported key's
   direction, optionally the query's) is an open modelling choice.

The model (real state x ∈ R^d, d ≥ 2):

.. math::  A = -μ I + Ω,\quad Ω^\top = -Ω,\qquad e^{As} = e^{-μ s} e^{Ω s}\ \ (e^{Ωs}\ \text{orthogonal}), \tag{9.1}
.. math::  u(t) = e^{Ω (t - t_j)} u_j,\qquad u_j = k_j/\lVert k_j\rVert, \tag{9.2}
.. math::  Q(t) = σ_\perp^2 (I - u u^\top) + σ_\parallel^2 u u^\top,\qquad u = u(t). \tag{9.3}

As an SDE: ``dx = A x dt + G(t) dw`` with ``G(t) = σ_⊥(I − u uᵀ) + σ_∥ u uᵀ`` (so ``G Gᵀ = Q(t)``) and w a
standard Wiener process. G depends on t, not on x: the SDE is linear (Itô = Stratonovich, Gaussian
transitions ``N(e^{Aτ} x(t_j), V(τ))``), and u(t) is the direction of the noiselessly transported key,
not of the state x(t). Putting the state's own direction x/‖x‖ into G instead would make the SDE
nonlinear, and Eq. (9.6) only its small-noise linearization.

Because ``e^{Ωs} u(t_i − s) = u(t_i)`` (Eq. (9.5)), the differential Lyapunov equation with this
time-varying noise keeps the closed form of chapter 2 (Eq. (9.6)),
``V(τ) = φ(τ)[σ_⊥²(I − u_i u_iᵀ) + σ_∥² u_i u_iᵀ]``, ``φ(τ) = (1 − e^{−2μτ})/(2μ)``; measurement
noise adds the same way (Eq. (9.7)), the precision follows from Sherman–Morrison (Eq. (9.9)) and the
Mahalanobis distance splits into a tangential and a radial part (Eq. (9.11)).

Glossary (code name → symbol in the book; the paper's symbols are unconfirmed)
-------------------------------------------------------------------------------
``d``                     state dimension (≥ 2); ``N`` sequence length.
``mu``                    μ ≥ 0, the shared decay of A = −μI + Ω.
``omega`` (d, d)          Ω, real skew-symmetric: the rotation generator.
``s``, ``tau``            a time offset s, a lag τ = t_i − t_j ≥ 0 (query time minus key time).
``u``, ``u0`` (..., d)    unit direction: u_j at the key time, u_i = e^{Ωτ} u_j at the query time.
``sigma2_perp/par``       σ_⊥², σ_∥²: tangential / radial process-noise rates.
``eta2_perp/par``         η_⊥², η_∥²: tangential / radial key measurement noise.
``gamma2_perp/par``       γ_⊥², γ_∥²: tangential / radial query anchor noise (γ_∥² = ∞: sphere limit).
``a_perp``, ``a_par``     a_⊥(τ), a_∥(τ): total tangential / radial residual variances (Eq. (9.7)).
``r`` (..., d)            residual r_ij = q_i − e^{AΔt_ij} k_j.
``q, k, v`` (..., N, d)   queries, keys, values (real); ``t`` (N,) strictly increasing time stamps.
``nu``, ``kappa``         Student-t degrees of freedom ν > 0 and exponent κ (default (ν + d)/d).
``alpha``                 α > 0, the step size of the residual update z ← z + αΔ.

References
----------
.. [1] P. Racioppo, "Attention as an Adaptive Filter", arXiv:2509.04154 v1 (2025), §4
       (4.1 Itô SDE with radial–tangential dynamics and noise, 4.2 propagation of uncertainty,
       4.3 radial–tangential Kalman IRLS, 4.5 the Transformer as an MLE on a hypersphere) and
       App. B.3 "Normal plus rank-1 noise covariance"; §5 in v2–v3; removed in v4.
.. [2] P. Racioppo, "RT-Transformer: The Transformer Block as a Spherical State Estimator",
       arXiv:2605.11007v1 (10 May 2026) — abstract of v1 (a later version may differ): the
       state is a direction on the hypersphere, noise lives in the tangent plane, attention aggregates evidence with precision weights, the
       residual is the state update and normalization the retraction.
.. [3] J. Sherman and W. J. Morrison, "Adjustment of an inverse matrix corresponding to a
       change in one element of a given matrix", Ann. Math. Statist. 21(1), 1950.
.. [4] P.-A. Absil, R. Mahony, R. Sepulchre, *Optimization Algorithms on Matrix Manifolds*,
       Princeton 2008, §4.1 (retractions; the sphere, Example 4.1.1).
.. [5] I. Loshchilov, C.-P. Hsieh, S. Sun, B. Ginsburg, "nGPT: Normalized Transformer with
       representation learning on the hypersphere", arXiv:2410.01131 (2024): the update
       h ← Norm(h + α_A(h_A − h)) with h_A = Norm(ATTN(h)) and a per-dimension α_A has the
       form of Eq. (9.15) with the scalar α replaced by a per-dimension one; it coincides with
       Eq. (9.15) only for a scalar α = 1.
.. [6] K. V. Mardia and P. E. Jupp, *Directional Statistics*, Wiley 2000, §10.3 (the maximum-
       likelihood mean direction of a von Mises–Fisher sample is the normalized resultant).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .lyapunov import phi1
from ._validate import (as_bool, as_positive_scalar, as_real_array, check_option, check_qkv, check_shape, check_times, guard_overflow,
                        as_lags, row_norms)

__all__ = [
    "rt_transition",
    "rt_transition_loop",
    "rt_direction",
    "rt_noise_rate",
    "rt_covariance",
    "rt_covariance_loop",
    "rt_variances",
    "rt_variances_loop",
    "rt_precision",
    "rt_precision_loop",
    "rt_distance",
    "rt_distance_loop",
    "rt_logdet_precision",
    "SphereResiduals",
    "sphere_residuals",
    "rt_attention",
    "rt_attention_loop",
    "rt_step",
    "rt_step_loop",
]

#: |‖u‖ − 1| above which a direction is rejected as not unit-norm (2^−8). Directions within it are
#: renormalized to unit length exactly, so unit vectors stored in any precision a model or kernel uses
#: pass (float32 moves the norm by ~1e−8, bfloat16 by at most 2^−8; the strict 1e−10 of earlier versions
#: refused a float32 model's own directions), while a vector 0.5 % off is refused.
UNIT_TOL = 2.0**-8


_NOISES = ("sigma2_perp", "sigma2_par", "eta2_perp", "eta2_par", "gamma2_perp", "gamma2_par")


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _check_omega(omega) -> np.ndarray:
    """Ω: a real skew-symmetric (d, d) matrix with d ≥ 2; returned exactly skew-symmetric."""
    om = as_real_array(omega, "omega", ndim=2)
    if om.shape[0] != om.shape[1]:
        raise ValueError(f"omega: expected a square matrix (d, d), got shape {om.shape}")
    if om.shape[0] < 2:
        raise ValueError(f"omega: expected d >= 2 (a sphere needs a tangent plane), got shape {om.shape}")
    skew = float(np.max(np.abs(om + om.T)))
    if skew > 1e-10 * max(float(np.max(np.abs(om))), 1.0):
        raise ValueError(f"omega: expected a skew-symmetric matrix (Ω^T = −Ω), got max |Ω + Ω^T| = {skew:.3g}")
    return 0.5 * (om - om.T)


def _check_mu(mu) -> float:
    return as_positive_scalar(mu, "mu", strict=False)


def _check_tau(tau) -> np.ndarray:
    return as_lags(tau, "tau")  # a key before its query


def _check_unit(u, name: str, d: int | None = None) -> np.ndarray:
    """Unit vectors along the last axis; returned renormalized to unit length exactly."""
    u = as_real_array(u, name)
    if u.ndim == 0:
        raise ValueError(f"{name}: expected unit vectors of shape (..., d), got a scalar")
    if d is not None and u.shape[-1] != d:
        raise ValueError(f"{name}: expected vectors of length d = {d} (last axis), got shape {u.shape}")
    norm = np.linalg.norm(u, axis=-1)
    if np.any(norm == 0):
        raise ValueError(f"{name}: expected unit vectors, got a zero vector (the direction is undefined)")
    dev = float(np.max(np.abs(norm - 1.0), initial=0.0))
    if dev > UNIT_TOL:
        raise ValueError(f"{name}: expected unit-norm vectors, got max |‖u‖ − 1| = {dev:.3g}")
    return u / norm[..., None]


def _check_noises(values: dict, *, allow_inf_gamma_par: bool = False) -> dict:
    out = {}
    for name in _NOISES:
        x = values[name]
        if allow_inf_gamma_par and name == "gamma2_par" and isinstance(x, (float, np.floating)) and x == np.inf:
            out[name] = math.inf
            continue
        out[name] = as_positive_scalar(x, name, strict=False)
    return out


def _check_broadcast(*named) -> tuple:
    """The broadcast of ``(name, batch shape)`` pairs; the first argument that does not fit is named."""
    shape = ()
    for i, (name, sh) in enumerate(named):
        try:
            shape = np.broadcast_shapes(shape, sh)
        except ValueError:
            others = ", ".join(f"{n} {s}" for n, s in named[:i])
            raise ValueError(f"{name}: batch shape {sh} does not broadcast with {others}") from None
    return shape


def _check_variances(a_perp, a_par) -> tuple[np.ndarray, np.ndarray]:
    a_perp = as_real_array(a_perp, "a_perp")
    a_par = as_real_array(a_par, "a_par", finite=False)
    if np.any(a_perp <= 0):
        raise ValueError(f"a_perp: expected tangential variances > 0, got minimum {a_perp.min():.6g}")
    if np.any(np.isnan(a_par)) or np.any(a_par <= 0):
        raise ValueError("a_par: expected radial variances > 0 (np.inf allowed: the sphere limit), got NaN or <= 0")
    return a_perp, a_par


# ---------------------------------------------------------------------------------------------
# Dynamics, Eqs. (9.1)-(9.2)
# ---------------------------------------------------------------------------------------------


def _rotation_eig(om: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ω = U diag(−iw) U^H from the Hermitian matrix iΩ = U diag(w) U^H (U unitary, w real)."""
    return np.linalg.eigh(1j * om)


def _rotations(om: np.ndarray, s: np.ndarray) -> np.ndarray:
    """e^{Ωs} = Re(U diag(e^{−iws}) U^H) for every s, shape s.shape + (d, d)."""
    w, U = _rotation_eig(om)
    phase = np.exp(-1j * w * s[..., None])  # e^{−i w_k s}
    return ((U * phase[..., None, :]) @ U.conj().T).real


@guard_overflow()
def rt_transition(mu, omega, s):
    r"""The RT-SDE transition ``e^{As} = e^{−μs} e^{Ωs}`` for ``A = −μI + Ω``, Ω skew-symmetric.

    Implements Eq. (9.1) of the book. RECONSTRUCTION: the dynamics class A = −μI + Ω is the one
    of isotropic AFA (Racioppo 2025, §3.6; chapter 8 of the book); its use for the RT-SDE is derived,
    the paper's exact equations are unconfirmed.

    Parameters
    ----------
    mu : float
        Decay μ ≥ 0.
    omega : array_like, shape (d, d)
        Real skew-symmetric Ω (d ≥ 2).
    s : float or array_like, shape (...)
        Time offsets (any sign: negative s transports backwards).

    Returns
    -------
    ndarray of float64, shape (..., d, d)

    Notes
    -----
    ``−μI`` commutes with Ω, so ``e^{(−μI+Ω)s} = e^{−μs} e^{Ωs}``; and ``(e^{Ωs})^T e^{Ωs} =
    e^{−Ωs} e^{Ωs} = I``: the exponential is a decay times a rotation. Computed from the
    eigendecomposition of the Hermitian matrix ``iΩ = U diag(w) U^H``:
    ``e^{Ωs} = U diag(e^{−i w s}) U^H`` (real up to round-off).

    Examples
    --------
    >>> om = np.array([[0.0, -1.0], [1.0, 0.0]])
    >>> rt_transition(0.0, om, np.pi / 2).round(12) + 0.0
    array([[ 0., -1.],
           [ 1.,  0.]])
    """
    m = _check_mu(mu)
    om = _check_omega(omega)
    s = as_real_array(s, "s")
    return np.exp(-m * s)[..., None, None] * _rotations(om, s)  # e^{As} = e^{−μs} e^{Ωs}


@guard_overflow()
def rt_transition_loop(mu, omega, s):
    """Loop twin of :func:`rt_transition`: entry (a, b) of e^{−μs} Σ_k U_ak e^{−i w_k s} conj(U_bk).

    RECONSTRUCTION (Eq. (9.1); exact paper equations unconfirmed).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> W = rng.normal(size=(3, 3))
    >>> omega = (W - W.T) / 2  # a rotation generator Ω
    >>> bool(np.allclose(rt_transition_loop(0.2, omega, np.array([0.0, 1.5])), rt_transition(0.2, omega, np.array([0.0, 1.5]))))
    True
    """
    m = _check_mu(mu)
    om = _check_omega(omega)
    s = as_real_array(s, "s")
    w, U = _rotation_eig(om)
    d = om.shape[0]
    flat = s.reshape(-1)
    out = np.empty((flat.size, d, d))
    for n, sn in enumerate(flat):
        decay = math.exp(-m * sn)
        for a in range(d):
            for b in range(d):
                total = 0j
                for k in range(d):
                    total += U[a, k] * np.exp(-1j * w[k] * sn) * np.conj(U[b, k])
                out[n, a, b] = decay * total.real
    return out.reshape(s.shape + (d, d))


@guard_overflow()
def rt_direction(omega, u0, s):
    r"""The co-rotating noise direction ``u(t_j + s) = e^{Ωs} u_j``.

    Implements Eq. (9.2) of the book. RECONSTRUCTION: "covariances that co-rotate with the
    dynamics" (Racioppo v1 intro, §4.1) made concrete; exact paper equations unconfirmed.

    Parameters
    ----------
    omega : array_like, shape (d, d)
        Real skew-symmetric Ω.
    u0 : array_like, shape (..., d)
        Unit directions u_j at the key time t_j.
    s : float or array_like, shape (...)
        Offsets s = t − t_j; broadcast against ``u0.shape[:-1]``.

    Returns
    -------
    ndarray of float64, shape (..., d)
        Unit vectors (e^{Ωs} is orthogonal).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> W = rng.normal(size=(3, 3))
    >>> omega = (W - W.T) / 2  # a rotation generator Ω
    >>> u = rt_direction(omega, np.array([1.0, 0.0, 0.0]), np.array([0.0, 2.0]))
    >>> np.linalg.norm(u, axis=-1).round(12).tolist()  # the rotation keeps unit length
    [1.0, 1.0]
    """
    om = _check_omega(omega)
    u0 = _check_unit(u0, "u0", om.shape[0])
    s = as_real_array(s, "s")
    _check_broadcast(("u0", u0.shape[:-1]), ("s", s.shape))
    return np.einsum("...ab,...b->...a", _rotations(om, s), u0)  # u = e^{Ωs} u_j


def _split_matrix(u: np.ndarray, a_perp, a_par) -> np.ndarray:
    """``a_⊥ (I − u u^T) + a_∥ u u^T`` for u (..., d) and a broadcast over (...): (..., d, d)."""
    d = u.shape[-1]
    uu = u[..., :, None] * u[..., None, :]  # u u^T
    a_perp = np.asarray(a_perp)[..., None, None]
    a_par = np.asarray(a_par)[..., None, None]
    return a_perp * (np.eye(d) - uu) + a_par * uu


@guard_overflow()
def rt_noise_rate(omega, u0, s, sigma2_perp, sigma2_par):
    r"""The co-rotating diagonal-plus-rank-1 process-noise rate ``Q(t_j + s)``.

    Implements Eq. (9.3) of the book. RECONSTRUCTION ("normal plus rank-1 noise covariance",
    Racioppo v1 App. B.3; exact paper equations unconfirmed).

    Parameters
    ----------
    omega : array_like, shape (d, d)
        Real skew-symmetric Ω.
    u0 : array_like, shape (..., d)
        Unit direction u_j at the key time.
    s : float or array_like, shape (...)
        Offset s = t − t_j.
    sigma2_perp, sigma2_par : float
        Tangential and radial noise rates σ_⊥², σ_∥² ≥ 0.

    Returns
    -------
    ndarray of float64, shape (..., d, d)
        ``Q = σ_⊥² (I − u u^T) + σ_∥² u u^T`` with ``u = e^{Ωs} u_j``: eigenvalue σ_∥² along u and
        σ_⊥² (multiplicity d − 1) on the tangent plane.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> W = rng.normal(size=(3, 3))
    >>> omega = (W - W.T) / 2  # a rotation generator Ω
    >>> Q = rt_noise_rate(omega, np.array([1.0, 0.0, 0.0]), 0.0, 0.3, 0.05)
    >>> np.linalg.eigvalsh(Q).round(12).tolist()  # σ²_∥ along u, σ²_⊥ across
    [0.05, 0.3, 0.3]
    """
    sp = as_positive_scalar(sigma2_perp, "sigma2_perp", strict=False)
    sq = as_positive_scalar(sigma2_par, "sigma2_par", strict=False)
    u = rt_direction(omega, u0, s)
    return _split_matrix(u, sp, sq)  # Q = σ_⊥²(I − uu^T) + σ_∥² uu^T


# ---------------------------------------------------------------------------------------------
# Propagated covariance and residual variances, Eqs. (9.6)-(9.8)
# ---------------------------------------------------------------------------------------------


def _totals(m: float, tau: np.ndarray, nz: dict) -> tuple[np.ndarray, np.ndarray]:
    """(a_⊥, a_∥) of Eq. (9.7) for lags τ ≥ 0."""
    phi = phi1(-2.0 * m, tau)  # φ(τ) = (1 − e^{−2μτ})/(2μ), exact limit τ at μ = 0
    decay = np.exp(-2.0 * m * tau)  # e^{−2μτ}: the key's measurement noise, transported
    a_perp = nz["sigma2_perp"] * phi + nz["eta2_perp"] * decay + nz["gamma2_perp"]
    a_par = nz["sigma2_par"] * phi + nz["eta2_par"] * decay + nz["gamma2_par"]
    return a_perp, a_par


def _totals_scalar(m: float, tau: float, nz: dict) -> tuple[float, float]:
    """Scalar twin of :func:`_totals` (the loop versions)."""
    phi = tau if m * tau == 0 else -math.expm1(-2.0 * m * tau) / (2.0 * m)  # φ(τ)
    decay = math.exp(-2.0 * m * tau)
    a_perp = nz["sigma2_perp"] * phi + nz["eta2_perp"] * decay + nz["gamma2_perp"]
    a_par = nz["sigma2_par"] * phi + nz["eta2_par"] * decay + nz["gamma2_par"]
    return a_perp, a_par


def rt_variances(
    mu, tau, *, sigma2_perp, sigma2_par, eta2_perp=0.0, eta2_par=0.0, gamma2_perp=0.0, gamma2_par=0.0
):
    r"""Tangential and radial residual variances ``a_⊥(τ)``, ``a_∥(τ)`` of the RT-SDE.

    Implements Eq. (9.7) of the book. RECONSTRUCTION (derived in chapter 9 from the co-rotating
    noise model; consistent with Racioppo v1 §4.2, exact paper equations unconfirmed).

    Parameters
    ----------
    mu : float
        Decay μ ≥ 0.
    tau : float or array_like, shape (...)
        Lags τ = t_i − t_j ≥ 0.
    sigma2_perp, sigma2_par : float
        Process-noise rates σ_⊥², σ_∥² ≥ 0.
    eta2_perp, eta2_par : float, optional
        Key measurement noise η_⊥², η_∥² ≥ 0 (transported by e^{Aτ}: factor e^{−2μτ}).
    gamma2_perp, gamma2_par : float, optional
        Query anchor noise γ_⊥², γ_∥² ≥ 0; ``gamma2_par = np.inf`` is the sphere limit
        (the radial residual carries no information, a_∥ = ∞).

    Returns
    -------
    a_perp, a_par : ndarray of float64, shape (...)

    Notes
    -----
    .. math::  a_\perp(τ) = σ_\perp^2 φ(τ) + η_\perp^2 e^{-2μτ} + γ_\perp^2,\qquad
               a_\parallel(τ) = σ_\parallel^2 φ(τ) + η_\parallel^2 e^{-2μτ} + γ_\parallel^2,

    ``φ(τ) = (1 − e^{−2μτ})/(2μ)`` (:func:`refimpl.lyapunov.phi1`, exact limit τ at μ = 0).
    Each total is AFA's isotropic kernel (Eq. (2.9)) with that channel's noises.

    Examples
    --------
    >>> a_perp, a_par = rt_variances(0.0, np.array([0.5, 2.0]), sigma2_perp=0.3, sigma2_par=0.05)
    >>> a_perp.round(12).tolist(), a_par.round(12).tolist()  # μ = 0: σ² τ
    ([0.15, 0.6], [0.025, 0.1])
    """
    m = _check_mu(mu)
    tau = _check_tau(tau)
    nz = _check_noises(locals(), allow_inf_gamma_par=True)
    return _totals(m, tau, nz)


def rt_variances_loop(
    mu, tau, *, sigma2_perp, sigma2_par, eta2_perp=0.0, eta2_par=0.0, gamma2_perp=0.0, gamma2_par=0.0
):
    """Loop twin of :func:`rt_variances`: Eq. (9.7) one lag at a time.

    RECONSTRUCTION (exact paper equations unconfirmed).

    Examples
    --------
    >>> kw = dict(sigma2_perp=0.3, sigma2_par=0.05, eta2_perp=0.1, eta2_par=0.02)
    >>> all(np.allclose(a, b) for a, b in zip(rt_variances_loop(0.4, np.array([0.0, 1.0, 3.0]), **kw), rt_variances(0.4, np.array([0.0, 1.0, 3.0]), **kw)))
    True
    """
    m = _check_mu(mu)
    tau = _check_tau(tau)
    nz = _check_noises(locals(), allow_inf_gamma_par=True)
    a_perp, a_par = np.empty(tau.size), np.empty(tau.size)
    for n, tn in enumerate(tau.reshape(-1)):
        a_perp[n], a_par[n] = _totals_scalar(m, float(tn), nz)
    return a_perp.reshape(tau.shape), a_par.reshape(tau.shape)


@guard_overflow()
def rt_covariance(
    mu,
    omega,
    u0,
    tau,
    *,
    sigma2_perp,
    sigma2_par,
    eta2_perp=0.0,
    eta2_par=0.0,
    gamma2_perp=0.0,
    gamma2_par=0.0,
):
    r"""Closed-form covariance of the RT-SDE: propagated process noise (+ measurement terms).

    Implements Eq. (9.6) of the book (process noise only, the default) and Eq. (9.8) (with the
    key measurement noise η and the query anchor noise γ). RECONSTRUCTION: derived from the
    co-rotation identity Eq. (9.5); consistent with Racioppo v1 §4.2 ("closed form for diagonal
    plus rank-1 covariances that co-rotate"), exact paper equations unconfirmed.

    Parameters
    ----------
    mu : float
        Decay μ ≥ 0.
    omega : array_like, shape (d, d)
        Real skew-symmetric Ω.
    u0 : array_like, shape (..., d)
        Unit direction u_j at the key time t_j.
    tau : float or array_like, shape (...)
        Lags τ = t_i − t_j ≥ 0, broadcast against ``u0.shape[:-1]``.
    sigma2_perp, sigma2_par : float
        Process-noise rates σ_⊥², σ_∥² ≥ 0.
    eta2_perp, eta2_par, gamma2_perp, gamma2_par : float, optional
        Key measurement and query anchor noise (≥ 0, finite), default 0.

    Returns
    -------
    ndarray of float64, shape (..., d, d)
        Symmetric PSD ``a_⊥(τ)(I − u_i u_i^T) + a_∥(τ) u_i u_i^T`` with ``u_i = e^{Ωτ} u_j``.

    Notes
    -----
    The process part is ``V(τ) = ∫_0^τ e^{As} Q(t_i − s) e^{A^T s} ds`` (the DLE
    ``V' = AV + VA^T + Q(t)``, ``V(t_j) = 0``). Since ``e^{Ωs} u(t_i − s) = u_i`` for every s,

    .. math::  V(τ) = φ(τ)\,[σ_\perp^2 (I - u_i u_i^\top) + σ_\parallel^2 u_i u_i^\top],
               \qquad φ(τ) = \frac{1 - e^{-2μτ}}{2μ}.

    With measurement noise, ``Σ = V(τ) + e^{Aτ} R_j e^{A^T τ} + R_Γ`` with co-rotating
    ``R_j = η_⊥²(I − u_j u_j^T) + η_∥² u_j u_j^T`` and ``R_Γ = γ_⊥²(I − u_i u_i^T) + γ_∥² u_i u_i^T``,
    which keeps the same two eigenspaces (Eq. (9.7) gives the eigenvalues).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> W = rng.normal(size=(3, 3))
    >>> omega = (W - W.T) / 2  # a rotation generator Ω
    >>> S = rt_covariance(0.3, omega, np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 5.0]), sigma2_perp=0.3, sigma2_par=0.05)
    >>> S.shape, bool(np.allclose(S, np.swapaxes(S, -1, -2)))
    ((3, 3, 3), True)
    """
    m = _check_mu(mu)
    om = _check_omega(omega)
    u0 = _check_unit(u0, "u0", om.shape[0])
    tau = _check_tau(tau)
    nz = _check_noises(locals())
    u_i = np.einsum("...ab,...b->...a", _rotations(om, tau), u0)  # u_i = e^{Ωτ} u_j  (Eq. (9.5))
    a_perp, a_par = _totals(m, tau, nz)
    return _split_matrix(u_i, a_perp, a_par)  # a_⊥(I − u_i u_i^T) + a_∥ u_i u_i^T


@guard_overflow()
def rt_covariance_loop(
    mu,
    omega,
    u0,
    tau,
    *,
    sigma2_perp,
    sigma2_par,
    eta2_perp=0.0,
    eta2_par=0.0,
    gamma2_perp=0.0,
    gamma2_par=0.0,
):
    """Loop twin of :func:`rt_covariance`: Eqs. (9.6)/(9.8) one lag and one entry at a time.

    RECONSTRUCTION (exact paper equations unconfirmed).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> W = rng.normal(size=(3, 3))
    >>> omega = (W - W.T) / 2  # a rotation generator Ω
    >>> args = (0.3, omega, np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 5.0]))
    >>> bool(np.allclose(rt_covariance_loop(*args, sigma2_perp=0.3, sigma2_par=0.05), rt_covariance(*args, sigma2_perp=0.3, sigma2_par=0.05)))
    True
    """
    m = _check_mu(mu)
    om = _check_omega(omega)
    u0 = _check_unit(u0, "u0", om.shape[0])
    tau = _check_tau(tau)
    nz = _check_noises(locals())
    d = om.shape[0]
    shape = np.broadcast_shapes(u0.shape[:-1], tau.shape)
    u0b = np.broadcast_to(u0, shape + (d,)).reshape(-1, d)
    taub = np.broadcast_to(tau, shape).reshape(-1)
    out = np.empty((taub.size, d, d))
    for n in range(taub.size):
        rot = rt_transition_loop(0.0, om, taub[n])  # e^{Ωτ}
        u_i = [sum(rot[a, b] * u0b[n, b] for b in range(d)) for a in range(d)]  # u_i = e^{Ωτ} u_j
        a_perp, a_par = _totals_scalar(m, float(taub[n]), nz)
        for a in range(d):
            for b in range(d):
                eye = 1.0 if a == b else 0.0
                # Σ_ab = a_⊥ (δ_ab − u_a u_b) + a_∥ u_a u_b
                out[n, a, b] = a_perp * (eye - u_i[a] * u_i[b]) + a_par * u_i[a] * u_i[b]
    return out.reshape(shape + (d, d))


# ---------------------------------------------------------------------------------------------
# Sherman-Morrison precision, split distance, log-determinant, Eqs. (9.9)-(9.11)
# ---------------------------------------------------------------------------------------------


def _inv_par(a_par):
    return np.where(np.isinf(a_par), 0.0, 1.0 / np.where(np.isinf(a_par), 1.0, a_par))


@guard_overflow()
def rt_precision(u, a_perp, a_par):
    r"""Sherman–Morrison precision of the diagonal-plus-rank-1 covariance ``a_⊥(I − uu^T) + a_∥uu^T``.

    Implements Eq. (9.9) of the book. RECONSTRUCTION (consistent with Racioppo v1 App. B.3,
    "normal plus rank-1 noise covariance"; exact paper equations unconfirmed).

    Parameters
    ----------
    u : array_like, shape (..., d)
        Unit directions.
    a_perp : array_like of float, shape (...)
        Tangential variances a_⊥ > 0, broadcast against ``u.shape[:-1]``.
    a_par : array_like of float, shape (...)
        Radial variances a_∥ > 0; ``np.inf`` gives the sphere limit (1/a_∥ = 0).

    Returns
    -------
    ndarray of float64, shape (..., d, d)
        ``P = (1/a_⊥)(I − uu^T) + (1/a_∥) uu^T``.

    Notes
    -----
    ``Σ = a_⊥ I + (a_∥ − a_⊥) uu^T`` is a rank-1 update of ``a_⊥ I``; Sherman–Morrison gives
    ``Σ^{-1} = I/a_⊥ − (a_∥ − a_⊥) uu^T / (a_⊥ a_∥) = (I − uu^T)/a_⊥ + uu^T/a_∥``: invert each
    eigenvalue on its eigenspace. No matrix is inverted.

    Examples
    --------
    >>> u = np.array([0.6, 0.8, 0.0])
    >>> P = rt_precision(u, 0.5, 2.0)
    >>> bool(np.allclose(P, np.linalg.inv(0.5 * np.eye(3) + (2.0 - 0.5) * np.outer(u, u))))
    True
    """
    u = _check_unit(u, "u")
    a_perp, a_par = _check_variances(a_perp, a_par)
    _check_broadcast(("u", u.shape[:-1]), ("a_perp", a_perp.shape), ("a_par", a_par.shape))
    return _split_matrix(u, 1.0 / a_perp, _inv_par(a_par))  # P = (I − uu^T)/a_⊥ + uu^T/a_∥


@guard_overflow()
def rt_precision_loop(u, a_perp, a_par):
    """Loop twin of :func:`rt_precision`: P_ab = (δ_ab − u_a u_b)/a_⊥ + u_a u_b/a_∥, entry by entry.

    RECONSTRUCTION (exact paper equations unconfirmed).

    Examples
    --------
    >>> u = np.array([0.6, 0.8, 0.0])
    >>> bool(np.allclose(rt_precision_loop(u, 0.5, 2.0), rt_precision(u, 0.5, 2.0)))
    True
    """
    u = _check_unit(u, "u")
    a_perp, a_par = _check_variances(a_perp, a_par)
    _check_broadcast(("u", u.shape[:-1]), ("a_perp", a_perp.shape), ("a_par", a_par.shape))
    d = u.shape[-1]
    shape = np.broadcast_shapes(u.shape[:-1], a_perp.shape, a_par.shape)
    ub = np.broadcast_to(u, shape + (d,)).reshape(-1, d)
    pp, pq = np.broadcast_to(a_perp, shape).reshape(-1), np.broadcast_to(a_par, shape).reshape(-1)
    out = np.empty((ub.shape[0], d, d))
    for n in range(ub.shape[0]):
        inv_par = 0.0 if math.isinf(pq[n]) else 1.0 / pq[n]
        for a in range(d):
            for b in range(d):
                eye = 1.0 if a == b else 0.0
                out[n, a, b] = (eye - ub[n, a] * ub[n, b]) / pp[n] + ub[n, a] * ub[n, b] * inv_par
    return out.reshape(shape + (d, d))


def _check_residual(r, u) -> tuple[np.ndarray, np.ndarray]:
    r = as_real_array(r, "r")
    u = _check_unit(u, "u")
    if r.ndim == 0 or r.shape[-1] != u.shape[-1]:
        raise ValueError(f"r: expected residuals of shape (..., {u.shape[-1]}) to match u, got shape {r.shape}")
    return r, u


@guard_overflow()
def rt_distance(r, u, a_perp, a_par):
    r"""Split squared Mahalanobis distance ``d² = ‖r − (u^T r)u‖²/a_⊥ + (u^T r)²/a_∥``.

    Implements Eq. (9.11) of the book, ``d² = r^T P r`` with P of Eq. (9.9), vectorized over any
    number of residuals and lags. RECONSTRUCTION (exact paper equations unconfirmed).

    Parameters
    ----------
    r : array_like, shape (..., d)
        Residuals r_ij = q_i − e^{AΔt_ij} k_j.
    u : array_like, shape (..., d)
        Unit directions (broadcast against ``r``).
    a_perp, a_par : array_like of float, shape (...)
        Variances as in :func:`rt_precision` (``a_par = np.inf``: tangential part only).

    Returns
    -------
    ndarray of float64, shape (...)
        d² ≥ 0.

    Notes
    -----
    The tangential part is formed from the projected vector ``r_⊥ = r − (u^T r)u`` itself, not as
    ``‖r‖² − (u^T r)²``, which cancels when r is nearly radial.

    Examples
    --------
    >>> u = np.array([1.0, 0.0])
    >>> rt_distance(np.array([[2.0, 0.0], [0.0, 2.0]]), u, 0.5, 4.0).round(12).tolist()  # |r|²/a_∥ along u, |r|²/a_⊥ across
    [1.0, 8.0]
    """
    r, u = _check_residual(r, u)
    a_perp, a_par = _check_variances(a_perp, a_par)
    _check_broadcast(("r", r.shape[:-1]), ("u", u.shape[:-1]), ("a_perp", a_perp.shape), ("a_par", a_par.shape))
    s = np.sum(r * u, axis=-1)  # u^T r: the radial component
    r_perp = r - s[..., None] * u  # r_⊥ = r − (u^T r) u
    return np.sum(r_perp * r_perp, axis=-1) / a_perp + s * s * _inv_par(a_par)


@guard_overflow()
def rt_distance_loop(r, u, a_perp, a_par):
    """Loop twin of :func:`rt_distance`: Eq. (9.11) one residual and one component at a time.

    RECONSTRUCTION (exact paper equations unconfirmed).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> r, u = rng.normal(size=(4, 3)), np.array([0.6, 0.8, 0.0])
    >>> bool(np.allclose(rt_distance_loop(r, u, 0.5, 2.0), rt_distance(r, u, 0.5, 2.0)))
    True
    """
    r, u = _check_residual(r, u)
    a_perp, a_par = _check_variances(a_perp, a_par)
    _check_broadcast(("r", r.shape[:-1]), ("u", u.shape[:-1]), ("a_perp", a_perp.shape), ("a_par", a_par.shape))
    d = r.shape[-1]
    shape = np.broadcast_shapes(r.shape[:-1], u.shape[:-1], a_perp.shape, a_par.shape)
    rb, ub = np.broadcast_to(r, shape + (d,)).reshape(-1, d), np.broadcast_to(u, shape + (d,)).reshape(-1, d)
    pp, pq = np.broadcast_to(a_perp, shape).reshape(-1), np.broadcast_to(a_par, shape).reshape(-1)
    out = np.empty(rb.shape[0])
    for n in range(rb.shape[0]):
        s = sum(rb[n, a] * ub[n, a] for a in range(d))  # u^T r
        tangential = sum((rb[n, a] - s * ub[n, a]) ** 2 for a in range(d))  # ‖r − (u^T r)u‖²
        out[n] = tangential / pp[n] + (0.0 if math.isinf(pq[n]) else s * s / pq[n])
    return out.reshape(shape)


def rt_logdet_precision(a_perp, a_par, d):
    r"""``log det P = −(d − 1) log a_⊥ − log a_∥`` of the RT precision (Eq. (9.10) of the book).

    RECONSTRUCTION (exact paper equations unconfirmed).

    Parameters
    ----------
    a_perp, a_par : array_like of float
        Variances > 0 (broadcast); ``a_par = np.inf`` gives ``−inf``.
    d : int
        Dimension d ≥ 2.

    Returns
    -------
    ndarray of float64
        The broadcast shape of ``a_perp`` and ``a_par``.

    Examples
    --------
    >>> bool(np.isclose(rt_logdet_precision(0.5, 2.0, 3), -(2 * np.log(0.5) + np.log(2.0))))  # −log det Σ
    True
    """
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 2:
        raise ValueError(f"d: expected an integer dimension >= 2, got {d!r}")
    a_perp, a_par = _check_variances(a_perp, a_par)
    _check_broadcast(("a_perp", a_perp.shape), ("a_par", a_par.shape))
    return -(d - 1) * np.log(a_perp) - np.log(a_par)  # eigenvalues 1/a_⊥ (d − 1 times) and 1/a_∥


# ---------------------------------------------------------------------------------------------
# The sphere limit, Eq. (9.12)
# ---------------------------------------------------------------------------------------------


class SphereResiduals(NamedTuple):
    """The four residual measures of the sphere limit (Eq. (9.12)), each of shape (...).

    RECONSTRUCTION (chapter 9 of the book; exact paper equations unconfirmed).

    Examples
    --------
    >>> res = sphere_residuals(np.array([0.0, 1.0]), np.array([1.0, 0.0]))
    >>> isinstance(res, SphereResiduals), res._fields
    (True, ('tangential', 'sin2', 'theta2', 'chord2'))
    """

    tangential: np.ndarray  #: ‖q − (k^T q)k‖², the tangential residual (a_∥ → ∞)
    sin2: np.ndarray  #: sin²θ
    theta2: np.ndarray  #: θ², the squared geodesic distance
    chord2: np.ndarray  #: 2(1 − cos θ) = ‖q − k‖², the squared chordal distance


@guard_overflow()
def sphere_residuals(q, k):
    r"""The sphere limit: for unit q, k the tangential residual is sin²θ ≈ θ² ≈ 2(1 − cos θ).

    Implements Eq. (9.12) of the book. RECONSTRUCTION (chapter 9 of the book, consistent with
    "Interpreting the Transformer as an MLE on a hypersphere", Racioppo v1 §4.5; exact paper
    equations unconfirmed).

    Parameters
    ----------
    q, k : array_like, shape (..., d)
        Unit vectors (a query and a transported key), broadcast against each other.

    Returns
    -------
    SphereResiduals
        ``tangential = ‖q − (k^T q) k‖²`` (the residual r = q − k with its radial part along
        u = k removed), ``sin2 = sin²θ``, ``theta2 = θ²``, ``chord2 = 2(1 − cos θ)``; θ ∈ [0, π]
        is the angle between q and k.

    Notes
    -----
    ``tangential`` equals ``sin2`` exactly; for small θ all four agree to leading order:
    sin²θ = θ² − θ⁴/3 + …, 2(1 − cos θ) = θ² − θ⁴/12 + …. θ is computed as
    ``atan2(‖q − (k^T q)k‖, k^T q)``, accurate at small angles (unlike ``arccos``).

    Examples
    --------
    >>> res = sphere_residuals(np.array([0.0, 1.0]), np.array([1.0, 0.0]))  # at a right angle
    >>> round(float(res.sin2), 12), bool(np.isclose(res.theta2, (np.pi / 2) ** 2)), round(float(res.chord2), 12)
    (1.0, True, 2.0)
    """
    q = _check_unit(q, "q")
    k = _check_unit(k, "k")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"k: expected vectors of length {q.shape[-1]} to match q, got shape {k.shape}")
    _check_broadcast(("q", q.shape[:-1]), ("k", k.shape[:-1]))
    c = np.sum(q * k, axis=-1)  # cos θ = k^T q
    perp = q - c[..., None] * k  # the tangential residual at k
    tangential = np.sum(perp * perp, axis=-1)
    theta = np.arctan2(np.sqrt(tangential), c)
    half = np.sin(0.5 * theta)
    return SphereResiduals(tangential, np.sin(theta) ** 2, theta**2, 4.0 * half * half)  # 2(1−cosθ) = 4 sin²(θ/2)


# ---------------------------------------------------------------------------------------------
# RT attention and the MLE step on the sphere, Eqs. (9.13)-(9.15)
# ---------------------------------------------------------------------------------------------


def _check_attention(q, k, v, t, mu, omega, noises, nu, weight, kappa, temperature, direction):
    q, k, v, _ = check_qkv(q, k, v, same_shape=True)
    n, d = q.shape[-2:]
    om = _check_omega(omega)
    if om.shape[0] != d:
        raise ValueError(f"omega: expected shape ({d}, {d}) to match q's last axis, got shape {om.shape}")
    m = _check_mu(mu)
    nz = _check_noises(noises, allow_inf_gamma_par=True)
    if nz["eta2_perp"] + nz["gamma2_perp"] <= 0:
        raise ValueError("gamma2_perp: eta2_perp + gamma2_perp must be > 0 (else the zero-lag precision is infinite)")
    if nz["eta2_par"] + nz["gamma2_par"] <= 0:
        raise ValueError("gamma2_par: eta2_par + gamma2_par must be > 0 (else the zero-lag precision is infinite)")
    nu = as_positive_scalar(nu, "nu")
    check_option(weight, "weight", ("student", "exponential"))
    check_option(direction, "direction", ("key", "query"))
    kappa = (nu + d) / d if kappa is None else as_positive_scalar(kappa, "kappa")
    temperature = as_positive_scalar(temperature, "temperature")
    t = np.arange(n, dtype=np.float64) if t is None else as_real_array(t, "t")
    check_times(t, "t")
    check_shape(t, "t", (n,))
    src = k if direction == "key" else q
    if np.any(row_norms(src) == 0):
        name = "k" if direction == "key" else "q"
        raise ValueError(f"{name}: a zero vector has no direction u (direction={direction!r})")
    return q, k, v, t, m, om, nz, nu, kappa, temperature


def _check_totals(a_perp, a_par) -> None:
    """a_⊥, a_∥ > 0 at every used lag: with σ² = γ² = 0 and μ > 0, η² e^{−2μτ} underflows for huge μτ."""
    for name, a in (("gamma2_perp", a_perp), ("gamma2_par", a_par)):
        if np.any(np.asarray(a) <= 0):
            raise ValueError(
                f"{name}: the residual variance η² e^{{−2μτ}} underflows to 0 at the largest lags (σ² = γ² = 0); "
                "give a positive anchor noise gamma2 or process noise sigma2"
            )


def _logits(d2, a_perp, a_par, d, nu, kappa, weight, temperature):
    """L = temperature·[(1/d) log det P − κ log(1 + d²/ν)] (or − d²/ν), Eq. (9.13)."""
    log_prior = -(d - 1) * np.log(a_perp)  # (d − 1) tangential eigenvalues 1/a_⊥
    log_prior = log_prior - np.where(np.isinf(a_par), 0.0, np.log(np.where(np.isinf(a_par), 1.0, a_par)))
    robust = kappa * np.log1p(d2 / nu) if weight == "student" else d2 / nu
    return temperature * (log_prior / d - robust)


@guard_overflow()
def rt_attention(
    q,
    k,
    v,
    *,
    mu,
    omega,
    sigma2_perp,
    sigma2_par,
    eta2_perp,
    eta2_par,
    gamma2_perp,
    gamma2_par,
    nu,
    t=None,
    weight="student",
    kappa=None,
    temperature=1.0,
    direction="key",
    return_weights=False,
):
    r"""Causal radial–tangential attention: precision-weighted robust average of transported values.

    Implements Eqs. (9.13)–(9.14) of the book. RECONSTRUCTION: the paper's "attention rule that
    solves the MLE within the geometric constraints" (Racioppo v1 §4.3–4.4) is not available;
    this is AFA's logit (Eq. (7.5) of the book) with the RT precision of Eqs. (9.7)–(9.10).

    Parameters
    ----------
    q, k, v : array_like, shape (..., N, d)
        Real queries, keys, values (d ≥ 2).
    mu : float
        Decay μ ≥ 0.
    omega : array_like, shape (d, d)
        Real skew-symmetric Ω.
    sigma2_perp, sigma2_par, eta2_perp, eta2_par, gamma2_perp, gamma2_par : float
        Noise levels ≥ 0 (Eq. (9.7)). ``eta2 + gamma2 > 0`` in each channel (finite zero-lag
        precision). ``gamma2_par = np.inf`` is the sphere limit: only the tangential residual
        counts, and the constant −log a_∥ = −∞ of the prior is dropped (it cancels in the softmax).
    nu : float
        ν > 0.
    t : array_like, shape (N,), optional
        Strictly increasing time stamps, default ``arange(N)``.
    weight : {"student", "exponential"}
        Robust term ``κ log(1 + d²/ν)`` or ``d²/ν``.
    kappa : float, optional
        κ > 0, default ``(ν + d)/d`` (the dimension-normalized multivariate Student-t).
    temperature : float
        Multiplies the logits (> 0).
    direction : {"key", "query"}
        The noise direction u: ``"key"`` (default) the transported key's direction
        ``u_ij = e^{ΩΔt_ij} k_j/‖k_j‖``; ``"query"`` the query's direction ``q_i/‖q_i‖`` for every
        key. Which one the paper uses is unconfirmed; the RT-Transformer abstract's "noise in the
        tangent plane at the current estimate" points to ``"query"``. For unit-norm inputs, μ = 0,
        in the sphere limit both give sin²θ (Eq. (9.12) of the book); with μ > 0 the transported
        key has norm e^{−μΔt}, and ``"query"`` gives e^{−2μΔt} sin²θ where ``"key"`` gives sin²θ.
    return_weights : bool
        Also return the attention matrix.

    Returns
    -------
    out : ndarray of float64, shape (..., N, d)
        ``z̄_i = Σ_{j≤i} A_ij e^{AΔt_ij} v_j``.
    weights : ndarray of float64, shape (..., N, N)
        Only with ``return_weights``: ``A_ij`` (zero for j > i, rows sum to 1).

    Notes
    -----
    For causal pairs (Δt_ij = t_i − t_j ≥ 0): ``r_ij = q_i − e^{AΔt_ij} k_j``,
    ``d²_ij = ‖r_⊥‖²/a_⊥ + (u^T r)²/a_∥`` (Eq. (9.11)) and

    .. math::  L_{ij} = T\,\Bigl[\tfrac1d \log\det P_{ij} - κ\log\bigl(1 + d^2_{ij}/ν\bigr)\Bigr],
               \qquad A_{ij} = \operatorname{softmax}_{j \le i} L_{ij},

    with ``log det P = −(d−1) log a_⊥ − log a_∥`` (Eq. (9.10)); for a_⊥ = a_∥ this is isotropic
    AFA's logit. The split covariance (Eq. (9.8)) is the exact covariance of a pair's residual
    when u is fixed in advance, independently of the noises; here u is taken from the noisy key
    (or query) itself. If the key is a noisy measurement of a state, with key noise that has a
    tangential part (η⊥² > 0), d²_ij is in general not χ²-distributed even for one pair (chapter 9,
    §9.4, measures the difference). Purely radial key noise (η⊥² = 0) leaves the key's direction
    exact: its axis is then the true one, and d²_ij depends on u only through uu^T. For a_⊥ = a_∥
    u drops out. Computed in the frame rotated by
    ``e^{−Ωt_i}`` (rotate–aggregate–counter-rotate):
    ``e^{−Ωt_i} r_ij = e^{−Ωt_i} q_i − e^{−μΔt_ij} e^{−Ωt_j} k_j``, with t shifted by t_0
    (only lags matter; rotating by large absolute times such as Unix seconds would cost up
    to about ε‖Ω‖ max|t| of relative accuracy). Memory O(N² d).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 5, 3))
    >>> W = rng.normal(size=(3, 3))
    >>> noise = dict(sigma2_perp=0.3, sigma2_par=0.05, eta2_perp=0.1, eta2_par=0.02, gamma2_perp=0.05, gamma2_par=0.01)
    >>> out, A = rt_attention(q, k, v, mu=0.2, omega=(W - W.T) / 2, nu=2.0, **noise, return_weights=True)
    >>> out.shape, bool(np.allclose(A.sum(axis=-1), 1.0))
    ((5, 3), True)
    """
    return_weights = as_bool(return_weights, "return_weights")
    q, k, v, t, m, om, nz, nu, kappa, temperature = _check_attention(
        q, k, v, t, mu, omega, locals(), nu, weight, kappa, temperature, direction
    )
    n, d = q.shape[-2:]
    rot_back = _rotations(om, -(t - t[0]))  # e^{−Ω(t_i − t_0)}, (N, d, d): only lags matter, no phase loss at large t
    qs = np.einsum("nab,...nb->...na", rot_back, q)  # q°_i = e^{−Ω(t_i − t_0)} q_i
    ks = np.einsum("nab,...nb->...na", rot_back, k)  # k°_j = e^{−Ω(t_j − t_0)} k_j
    vs = np.einsum("nab,...nb->...na", rot_back, v)
    dt = t[:, None] - t[None, :]  # Δt_ij
    causal = dt >= 0
    lag = np.where(causal, dt, 0.0)
    decay = np.exp(-m * lag)  # e^{−μΔt}
    resid = qs[..., :, None, :] - decay[..., None] * ks[..., None, :, :]  # e^{−Ωt_i} r_ij, (..., N, N, d)
    src = ks[..., None, :, :] if direction == "key" else qs[..., :, None, :]
    u = src / row_norms(src)  # e^{−Ωt_i} u_ij
    a_perp, a_par = _totals(m, lag, nz)  # (N, N)
    _check_totals(a_perp, a_par)
    s = np.sum(resid * u, axis=-1)  # u^T r (rotation-invariant)
    r_perp = resid - s[..., None] * u  # r − (u^T r) u
    d2 = np.sum(r_perp * r_perp, axis=-1) / a_perp + s * s * _inv_par(a_par)  # Eq. (9.11)
    logits = np.where(causal, _logits(d2, a_perp, a_par, d, nu, kappa, weight, temperature), -np.inf)
    logits = logits - np.max(logits, axis=-1, keepdims=True)
    w = np.exp(logits)
    w /= np.sum(w, axis=-1, keepdims=True)  # softmax over j ≤ i
    agg = np.einsum("...ij,...jb->...ib", w * decay, vs)  # Σ_j A_ij e^{−μΔt} v°_j
    out = np.einsum("nab,...nb->...na", np.swapaxes(rot_back, -1, -2), agg)  # counter-rotate by e^{Ωt_i}
    return (out, w) if return_weights else out


@guard_overflow()
def rt_attention_loop(
    q,
    k,
    v,
    *,
    mu,
    omega,
    sigma2_perp,
    sigma2_par,
    eta2_perp,
    eta2_par,
    gamma2_perp,
    gamma2_par,
    nu,
    t=None,
    weight="student",
    kappa=None,
    temperature=1.0,
    direction="key",
    return_weights=False,
):
    """Loop twin of :func:`rt_attention`: Eqs. (9.13)–(9.14) one query i and one key j at a time.

    RECONSTRUCTION (exact paper equations unconfirmed). Each pair transports the key and value
    with its own ``e^{AΔt_ij}`` (:func:`rt_transition_loop`), forms u, the residual, the split
    distance and the logit as written, then a softmax over j ≤ i.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 5, 3))
    >>> W = rng.normal(size=(3, 3))
    >>> noise = dict(sigma2_perp=0.3, sigma2_par=0.05, eta2_perp=0.1, eta2_par=0.02, gamma2_perp=0.05, gamma2_par=0.01)
    >>> kw = dict(mu=0.2, omega=(W - W.T) / 2, nu=2.0, **noise)
    >>> bool(np.allclose(rt_attention_loop(q, k, v, **kw), rt_attention(q, k, v, **kw)))
    True
    """
    return_weights = as_bool(return_weights, "return_weights")
    q, k, v, t, m, om, nz, nu, kappa, temperature = _check_attention(
        q, k, v, t, mu, omega, locals(), nu, weight, kappa, temperature, direction
    )
    batch, (n, d) = q.shape[:-2], q.shape[-2:]
    qf, kf, vf = (x.reshape((-1, n, d)) for x in (q, k, v))
    out = np.zeros(qf.shape)
    weights = np.zeros((qf.shape[0], n, n))
    for b in range(qf.shape[0]):
        for i in range(n):
            logits, values = [], []
            for j in range(i + 1):
                lag = float(t[i] - t[j])
                rot = rt_transition_loop(0.0, om, lag)  # e^{ΩΔt_ij}
                trans = math.exp(-m * lag) * rot  # e^{AΔt_ij} = e^{−μΔt} e^{ΩΔt}
                k_hat = trans @ kf[b, j]  # transported key
                src = rot @ kf[b, j] if direction == "key" else qf[b, i]  # (direction of k_hat, even if e^{−μΔt} underflows)
                u = src / row_norms(src)
                r = qf[b, i] - k_hat  # r_ij = q_i − e^{AΔt} k_j
                a_perp, a_par = _totals_scalar(m, lag, nz)
                _check_totals(a_perp, a_par)
                s = float(u @ r)
                r_perp = r - s * u
                d2 = float(r_perp @ r_perp) / a_perp + (0.0 if math.isinf(a_par) else s * s / a_par)
                log_det = -(d - 1) * math.log(a_perp) - (0.0 if math.isinf(a_par) else math.log(a_par))
                robust = kappa * math.log1p(d2 / nu) if weight == "student" else d2 / nu
                logits.append(temperature * (log_det / d - robust))  # L_ij, Eq. (9.13)
                values.append(trans @ vf[b, j])  # e^{AΔt_ij} v_j
            top = max(logits)
            ws = [math.exp(x - top) for x in logits]
            total = sum(ws)
            for j in range(i + 1):
                weights[b, i, j] = ws[j] / total  # A_ij
                out[b, i] += weights[b, i, j] * values[j]  # z̄_i = Σ_j A_ij e^{AΔt} v_j
    out = out.reshape(batch + (n, d))
    return (out, weights.reshape(batch + (n, n))) if return_weights else out


def _check_step(z, alpha) -> tuple[np.ndarray, float]:
    z, _, _, _ = check_qkv(z, z, z, names=("z", "z", "z"))
    z = _check_unit(z, "z")  # renormalized to unit length exactly (within UNIT_TOL)
    return z, as_positive_scalar(alpha, "alpha")


def _retract(y: np.ndarray) -> np.ndarray:
    norm = row_norms(y)
    if np.any(norm == 0):
        raise ValueError("alpha: the update z + αΔ vanished for some token; the retraction is undefined")
    return y / norm


@guard_overflow()
def rt_step(z, *, alpha=1.0, **params):
    r"""One "MLE step on the hypersphere": RT attention, residual update, normalization.

    Implements Eq. (9.15) of the book. RECONSTRUCTION of "Interpreting the Transformer as an MLE
    on a hypersphere" (Racioppo v1 §4.5) and of the RT-Transformer abstract (arXiv:2605.11007);
    exact paper equations unconfirmed.

    Parameters
    ----------
    z : array_like, shape (..., N, d)
        Unit-norm states (the filter reading: q = k = v = z).
    alpha : float
        Step size α > 0 (α = 1: z is replaced by the attention estimate before retraction).
    **params
        Keyword arguments of :func:`rt_attention` (``mu``, ``omega``, the six noises, ``nu``,
        ``t``, ``weight``, ``kappa``, ``temperature``, ``direction``).

    Returns
    -------
    ndarray of float64, shape (..., N, d)
        ``z⁺ = (z + αΔ)/‖z + αΔ‖`` with ``Δ = z̄ − z`` and ``z̄ = rt_attention(z, z, z)``.

    Notes
    -----
    Write ``Δ = c z + Δ_⊥`` (radial and tangential parts at z) and ``R_z(ξ) = (z + ξ)/‖z + ξ‖``
    (the retraction of a tangent vector ξ). Then ``z⁺ = sign(1 + αc) R_z(α/(1 + αc) Δ_⊥)``: for
    1 + αc > 0 the normalization is a retraction of a tangent step and the radial part of the
    update only rescales the step size; for 1 + αc < 0 z⁺ is the antipode of that retraction.
    At α = 1, ``z⁺ = z̄/‖z̄‖`` is the normalized weighted resultant of the transported values
    ``e^{AΔt_ij} z_j = e^{−μΔt_ij} e^{ΩΔt_ij} z_j``: the maximum-likelihood mean direction of a
    von Mises–Fisher sample of the unit directions ``e^{ΩΔt_ij} z_j`` with weights
    ``A_ij e^{−μΔt_ij}`` (Mardia & Jupp 2000, §10.3) — the attention weights (IRLS weights) times
    the decay of the transported value; for μ = 0 the weights are ``A_ij``. One reweighted MLE
    step on the sphere.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 5, 3))
    >>> W = rng.normal(size=(3, 3))
    >>> noise = dict(sigma2_perp=0.3, sigma2_par=0.05, eta2_perp=0.1, eta2_par=0.02, gamma2_perp=0.05, gamma2_par=0.01)
    >>> z = q / np.linalg.norm(q, axis=-1, keepdims=True)
    >>> z_next = rt_step(z, alpha=0.5, mu=0.1, omega=(W - W.T) / 2, nu=2.0, **noise)
    >>> np.linalg.norm(z_next, axis=-1).round(12).tolist()  # back on the sphere
    [1.0, 1.0, 1.0, 1.0, 1.0]
    """
    z, alpha = _check_step(z, alpha)
    zbar = rt_attention(z, z, z, **params)
    return _retract(z + alpha * (zbar - z))  # z ← (z + αΔ)/‖z + αΔ‖


@guard_overflow()
def rt_step_loop(z, *, alpha=1.0, **params):
    """Loop twin of :func:`rt_step`: :func:`rt_attention_loop`, then the update token by token.

    RECONSTRUCTION (exact paper equations unconfirmed).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = rng.normal(size=(3, 5, 3))
    >>> W = rng.normal(size=(3, 3))
    >>> noise = dict(sigma2_perp=0.3, sigma2_par=0.05, eta2_perp=0.1, eta2_par=0.02, gamma2_perp=0.05, gamma2_par=0.01)
    >>> z = q / np.linalg.norm(q, axis=-1, keepdims=True)
    >>> kw = dict(alpha=0.5, mu=0.1, omega=(W - W.T) / 2, nu=2.0, **noise)
    >>> bool(np.allclose(rt_step_loop(z, **kw), rt_step(z, **kw)))
    True
    """
    z, alpha = _check_step(z, alpha)
    zbar = rt_attention_loop(z, z, z, **params)
    n, d = z.shape[-2:]
    zf, bf = z.reshape(-1, d), zbar.reshape(-1, d)
    out = np.empty(zf.shape)
    for i in range(zf.shape[0]):
        y = [zf[i, a] + alpha * (bf[i, a] - zf[i, a]) for a in range(d)]  # z + αΔ
        norm = math.sqrt(sum(x * x for x in y))
        if norm == 0:
            raise ValueError("alpha: the update z + αΔ vanished for some token; the retraction is undefined")
        out[i] = [x / norm for x in y]  # retraction onto the sphere
    return out.reshape(z.shape)
