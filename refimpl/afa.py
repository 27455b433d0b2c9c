r"""Adaptive Filter Attention (AFA): attention as maximum-likelihood filtering of a linear SDE.

Chapters 7 and 8 of the book (``notebooks/07-afa-tensor.ipynb``, ``notebooks/08-isotropic-afa.ipynb``)
derive every formula here, with the differences between the paper's versions. Tokens are noisy measurements of one trajectory of the SDE of chapter 1,
written in its eigenbasis (``q, k, v`` play the role of ``S^{-1} z``). A key pulled forward to the
query time, ``e^{λ Δt} k_j``, is an estimate of the query's state whose precision is the inverse of
the propagated covariance of chapter 2 (Eq. (2.9)); AFA's attention weights are those precisions,
robustly reweighted by how far the pulled-forward key lies from the query (Racioppo, arXiv:2509.04154, §3).

Glossary (code name → symbol in the book / Racioppo, arXiv:2509.04154 v6)
-------------------------------------------------------------------------
``q, k, v``   (..., N, d) complex     Q, K, V: queries, keys, values in the eigenbasis (d channels).
``t``         (N,)                    time stamps t_i (default 0, 1, …, N−1); Δt_ij = t_i − t_j.
``eigvals``   (d,)                    λ_k = −μ_k + iω_k (tensor form); ``mu``, ``omega`` (isotropic form).
``sigma2``    σ² (process noise),  ``eta2`` η² (key measurement noise),  ``gamma2`` γ² (query anchor).
``nu``        ν (robustness scale), ``kappa`` κ (power of the Student-t weight, default (ν + d)/d).
``P``         precision 1/Σ(Δt) (Eq. (7.2));  ``R`` residual q_i − e^{λΔt} k_j (Eq. (7.3));
``d2``        Mahalanobis distance d²_ij = Σ_k P_k |R_k|² (Eq. (7.4));  ``A`` attention weights (Eq. (7.6)).

Conventions that differ between the paper's versions, and what refimpl implements:
Δt_ij = t_i − t_j (v4–v6, code; the thesis and v1 use t_j − t_i); the robust term sums over all
channels (v6 App. B.1, not the per-channel typo of App. A.5); κ = (ν + d)/d by default (v4–v6;
``kappa=1`` is the rational (Cauchy) weight of the thesis and of the paper's 2025 code); the
temperature multiplies the logits (β_s of v6); the output is the aggregated estimate V̄ (no output
projection or residual, which belong to a layer).

The default power-law weight is the normalized Student-t likelihood, not the IRLS weight of the
Student-t maximum-likelihood estimate (that is κ = 1): iterated with fixed keys = values = the data
(Eq. (7.10) of the book, temperature 1), the default κ has its fixed points at stationary points of
the bounded loss Σ_j ρ(d²_ij), ρ(s) = ν[(1 + s/ν)^{1−κ} − 1]/(1 − κ); only ``kappa=1`` makes them
stationary points of the Student-t likelihood (its MLE when such a point is the global maximum).

References
----------
.. [1] P. Racioppo, "Attention as an Adaptive Filter" (v1–v3, 2025) / "Robust Filter Attention"
       (v4–v6, 2026), arXiv:2509.04154.
.. [2] P. J. Huber, *Robust Statistics*, Wiley 1981 (M-estimation, IRLS).
"""

from __future__ import annotations

import cmath
import math
from typing import NamedTuple

import numpy as np

from . import lyapunov
from . import _blocking
from ._blocking import in_parts, per_block, take_turns_one_blas
from ._trig import sin_cos_half
from .attention import _TINY_Z  # the smallest unshifted row sum, as in softmax attention
from ._validate import (
    guard_overflow,
    as_bool,
    as_complex_array,
    as_positive_scalar,
    as_real_array,
    check_nonnegative,
    check_option,
    check_qkv,
    check_times,
)

__all__ = [
    "afa",
    "afa_loop",
    "isotropic_afa",
    "isotropic_afa_loop",
    "afa_irls",
    "MAX_TENSOR",
]

#: The tensor form materializes (…, N, N, d) complex arrays; it refuses inputs with
#: batch · N² · d above this (2**24 complex128 = 256 MiB per tensor, a few alive at once).
MAX_TENSOR = 2**24

_WEIGHTS = ("student", "exponential")


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------


def _check_qkv(q, k, v, copy: bool = True):
    q, k, v, _ = check_qkv(q, k, v, complex_values=True, same_shape=True, copy=copy)
    return q, k, v


def _check_flags(**flags) -> tuple:
    return tuple(as_bool(value, name) for name, value in flags.items())


def _check_t(t, N: int) -> np.ndarray:
    if t is None:
        return np.arange(N, dtype=np.float64)
    t = as_real_array(t, "t", ndim=1)
    if t.shape != (N,):
        raise ValueError(f"t: expected shape ({N},) to match the N = {N} tokens, got shape {t.shape}")
    check_times(t, "t")
    return t


def _check_noise(x, name: str, d: int) -> np.ndarray:
    arr = as_real_array(x, name, ndim=(0, 1))
    if arr.ndim == 1 and arr.shape != (d,):
        raise ValueError(f"{name}: expected a scalar or shape ({d},), got shape {arr.shape}")
    check_nonnegative(arr, name)
    return np.broadcast_to(arr, (d,)).astype(np.float64)


def _check_common(q, k, v, t, sigma2, eta2, gamma2, nu, weight, kappa, temperature, copy: bool = True):
    q, k, v = _check_qkv(q, k, v, copy)
    N, d = q.shape[-2:]
    t = _check_t(t, N)
    sigma2 = _check_noise(sigma2, "sigma2", d)
    eta2 = _check_noise(eta2, "eta2", d)
    gamma2 = _check_noise(gamma2, "gamma2", d)
    if np.any(eta2 + gamma2 <= 0):
        raise ValueError(
            "eta2, gamma2: the residual variance at zero lag, Σ(0) = η² + γ², must be > 0 in every channel "
            "(otherwise the precision of a token for itself is infinite)"
        )
    nu = as_positive_scalar(nu, "nu")
    check_option(weight, "weight", _WEIGHTS)
    kappa = (nu + d) / d if kappa is None else as_positive_scalar(kappa, "kappa")
    temperature = as_positive_scalar(temperature, "temperature")
    return q, k, v, t, sigma2, eta2, gamma2, nu, kappa, temperature


def _check_eigvals(eigvals, d: int) -> np.ndarray:
    lam = as_complex_array(eigvals, "eigvals", ndim=1)
    if lam.shape != (d,):
        raise ValueError(f"eigvals: expected shape ({d},) to match the d = {d} channels of q, got shape {lam.shape}")
    if np.any(lam.real > 0):
        i = int(np.argmax(lam.real > 0))
        raise ValueError(f"eigvals: expected Re(λ) <= 0 (stable or marginally stable modes), got eigvals[{i}] = {lam[i]}")
    return lam


# ---------------------------------------------------------------------------------------------
# pieces shared by the vectorized forms
# ---------------------------------------------------------------------------------------------


def _pairs(t: np.ndarray, causal: bool):
    """Δt_ij = t_i − t_j (N, N), |Δt|, whether the key is before the query, and the mask."""
    dt = t[:, None] - t[None, :]
    forward = dt >= 0  # key at or before the query: pulled forward
    allowed = forward if causal else np.ones_like(forward)
    return dt, np.abs(dt), forward, allowed


def _scaled_covariance(tau, forward, mu, sigma2, eta2, gamma2):
    r"""``Σ`` for forward pairs and ``Σ e^{−2μτ}`` for pushed-back pairs, and ``log P = −log Σ``.

    Eq. (7.2) with Eq. (2.9): forward ``Σ = σ² φ(−2μ, τ) + η² e^{−2μτ} + γ²``; pushed back
    ``Σ = σ² φ(2μ, τ) + η² e^{2μτ} + γ² = e^{2μτ} [σ² φ(−2μ, τ) + η² + γ² e^{−2μτ}]``. Scaling the
    pushed-back variance by e^{−2μτ} (and the residual by e^{−μτ}, as :func:`afa` does)
    keeps every quantity finite for any sequence length. See :func:`_scaled_log_variance`.
    """
    phi = lyapunov.phi1(-2.0 * mu * np.ones_like(tau), tau)  # (1 − e^{−2μτ})/(2μ)
    scaled, _, log_p = _scaled_log_variance(tau, forward, mu, sigma2, eta2, gamma2, phi)
    return scaled, log_p  # (log S is not kept: one (N, N, d) array less; _robust_penalty recovers it)


#: the smallest normal float64: a variance below it has lost digits (or underflowed to 0)
_NORMAL = np.finfo(np.float64).tiny


def _scaled_log_variance(tau, forward, mu, sigma2, eta2, gamma2, phi):
    r"""The scaled variance ``S`` (Σ forward, Σ e^{−2μτ} pushed back), ``log S`` and ``log P``.

    ``S`` itself can underflow: with σ² = γ² = 0 a forward pair has ``Σ = η² e^{−2μτ}``, and with
    σ² = η² = 0 a pushed-back pair has ``S = γ² e^{−2μτ}``; both are 0 in float64 once 2μτ ≳ 745
    although their logs, and the logits built from them, are ordinary numbers. Where ``S`` is
    below the normal range, ``log S`` is formed from the logs of its three terms,
    ``log S = logaddexp(log σ² + log φ, log η² [− 2μτ forward], log γ² [− 2μτ pushed back])``
    (−inf for a zero term); elsewhere it is ``log(S)``. ``log P = −log S`` (``− 2μτ`` pushed back)
    is then finite for every lag.
    """
    x = 2.0 * mu * tau  # 2μτ
    g2 = np.exp(-x)  # e^{−2μτ} ≤ 1
    scaled = sigma2 * phi + np.where(forward, eta2 * g2 + gamma2, eta2 + gamma2 * g2)
    with np.errstate(divide="ignore"):
        log_scaled = np.log(scaled)
        low = scaled < _NORMAL
        if np.any(low):  # log S = log(Σ_terms) from the terms' logs (np.log(0) = −inf for an absent term)
            shape = scaled.shape
            x_low, fwd_low = np.broadcast_to(x, shape)[low], np.broadcast_to(forward, shape)[low]

            def log_of(a):
                return np.log(np.broadcast_to(a, shape)[low])

            process = log_of(sigma2) + log_of(phi)  # σ² φ
            measurement = log_of(eta2) - np.where(fwd_low, x_low, 0.0)  # η² e^{−2μτ} (forward) or η²
            anchor = log_of(gamma2) - np.where(fwd_low, 0.0, x_low)  # γ² or γ² e^{−2μτ} (pushed back)
            log_scaled[low] = np.logaddexp(np.logaddexp(process, measurement), anchor)
    log_p = -log_scaled - np.where(forward, 0.0, x)
    return scaled, log_scaled, log_p


def _robust_penalty(d2, r_scaled, scaled, log_p, tau, forward, mu, nu, kappa, weight):
    """The robust penalty of each pair, ``κ log(1 + d²/ν)`` (Student) or ``d²/ν`` (Gaussian), Eq. (7.5),
    and d², for the tensor form: ``d2 = Σ_k |R_k|²/S_k`` from the scaled residuals and variances
    (:func:`_scaled_log_variance`; ``tau``, ``forward`` (N, N, 1) and ``mu`` (d,) give back log S).

    Where a variance ``S_k`` is below the normal range (its precision is inf or has lost digits)
    or d²/ν overflows, d² is formed in log space, ``log d² = logsumexp_k(log|R_k|² − log S_k)``,
    and the penalty from it: ``κ logaddexp(0, log d² − log ν)``, finite for any d², or
    ``e^{log d² − log ν}``, whose limit +inf (weight 0) is right when d² is beyond float64. A zero
    residual gives penalty 0.
    """
    penalty = kappa * np.log1p(d2 / nu) if weight == "student" else d2 / nu
    bad = ~np.isfinite(penalty)  # d²/ν overflowed (d2 >= 0)
    if np.min(scaled, initial=np.inf) < _NORMAL:
        bad |= np.any(scaled < _NORMAL, axis=-1)
    if np.any(bad):
        bad = np.broadcast_to(bad, d2.shape)
        full = r_scaled.shape
        s_bad, log_p_bad = np.broadcast_to(scaled, full)[bad], np.broadcast_to(log_p, full)[bad]  # (pairs, d)
        tau_bad, fwd_bad = np.broadcast_to(tau, full)[bad], np.broadcast_to(forward, full)[bad]
        with np.errstate(divide="ignore"):
            # log S: of the number where it is normal, else −log P (− 2μτ for a pushed-back pair)
            log_s = np.where(s_bad >= _NORMAL, np.log(s_bad), -log_p_bad - np.where(fwd_bad, 0.0, 2.0 * mu * tau_bad))
            log_r2 = 2.0 * np.log(np.abs(r_scaled[bad]))  # log |R_k|² (−inf for R_k = 0)
        log_d2 = np.logaddexp.reduce(log_r2 - log_s, axis=-1)
        log_y = log_d2 - math.log(nu)
        d2, penalty = d2.copy(), penalty.copy()
        d2[bad] = np.exp(log_d2)
        penalty[bad] = kappa * np.logaddexp(0.0, log_y) if weight == "student" else np.exp(log_y)
    return penalty, d2


def _robust_logits(log_p, penalty, temperature, allowed, per_channel: bool):
    """``temperature · (log P − penalty)``, −inf where not allowed, Eq. (7.5).

    ``per_channel``: the tensor form, where log P has a trailing channel axis and the robust
    penalty (one scalar per pair) is shared by the d channels.
    """
    if per_channel:
        penalty, allowed = penalty[..., None], allowed[..., None]
    logits = temperature * (log_p - penalty)
    return np.where(allowed, logits, -np.inf)


def _log_softmax(logits, axis: int):
    top = np.max(logits, axis=axis, keepdims=True)  # finite: the diagonal j = i is always allowed
    lse = top + np.log(np.sum(np.exp(logits - top), axis=axis, keepdims=True))
    return logits - lse


# ---------------------------------------------------------------------------------------------
# tensor form, Eqs. (7.2)-(7.7)
# ---------------------------------------------------------------------------------------------


@guard_overflow(first_only=True)
def afa(
    q,
    k,
    v,
    *,
    eigvals,
    sigma2,
    eta2,
    gamma2,
    nu,
    t=None,
    weight: str = "student",
    kappa=None,
    temperature=1.0,
    causal: bool = True,
    rotate_values: bool = True,
    return_weights: bool = False,
    return_intermediates: bool = False,
):
    r"""Tensor-form Adaptive Filter Attention, Eqs. (7.1)–(7.7) of the book.

    Implements Racioppo (arXiv:2509.04154) v6 App. B.1 (v4 B.1, thesis §3.6): per channel k and pair (i, j),

    .. math::
        P_{kij} = 1/Σ_k(Δt_{ij}),\quad R_{kij} = q_{ki} - e^{λ_kΔt_{ij}} k_{kj},\quad
        d^2_{ij} = \sum_{k'} P_{k'ij}|R_{k'ij}|^2,

    .. math::
        L_{kij} = \log P_{kij} - κ\log(1 + d^2_{ij}/ν)\ \ (\text{or } - d^2_{ij}/ν),\quad
        A_{kij} = \operatorname{softmax}_{j\ \text{allowed}}(β L_{kij}),\quad
        \bar v_{ki} = \sum_j A_{kij}\, e^{λ_kΔt_{ij}} v_{kj}.

    Σ is Eq. (7.2) (chapter 2's Eq. (2.9)): for Δt ≥ 0
    ``σ²_k (1 − e^{−2μ_kΔt})/(2μ_k) + η²_k e^{−2μ_kΔt} + γ²_k`` (exact μ → 0 limit ``σ²_k Δt``); for
    the pairs with Δt < 0 (j > i, used with ``causal=False``) its second case, the pushed-back
    covariance of Eq. (2.7), ``σ²_k (e^{2μ_k|Δt|} − 1)/(2μ_k) + η²_k e^{2μ_k|Δt|} + γ²_k``, which grows
    with the lag (the first case read at Δt < 0 is a different number and can be negative). Where
    a variance leaves the float64 range
    (η²_k e^{−2μ_kΔt} underflows once 2μ_kΔt ≳ 709 when σ²_k = γ²_k = 0), log P = −log Σ comes from
    the logs of the three terms and the penalty from ``log d² = logsumexp_k(log|R_k|² + log P_k)``
    (``κ logaddexp(0, log d² − log ν)``): the logits stay exact for every lag.

    Parameters
    ----------
    q, k, v : array_like, shape (..., N, d)
        Queries, keys, values in the eigenbasis (complex; real input is cast).
    eigvals : array_like, shape (d,)
        λ_k = −μ_k + iω_k with Re λ_k ≤ 0.
    sigma2, eta2, gamma2 : float or array_like, shape (d,)
        Noise spectra σ², η², γ² ≥ 0, with η² + γ² > 0.
    nu : float
        ν > 0.
    t : array_like, shape (N,), optional
        Strictly increasing time stamps; default ``arange(N)``.
    weight : {"student", "exponential"}
        The robust weight: power law (1 + d²/ν)^{−κ} or Gaussian e^{−d²/ν}.
    kappa : float, optional
        κ > 0; default (ν + d)/d (v4–v6): log w is then the d-dimensional Student-t
        log-likelihood divided by d/2. κ = 1 is the rational (Cauchy) weight of the thesis and of the
        paper's 2025 code, and the IRLS weight of the Student-t maximum-likelihood estimate: with
        fixed keys = values = the data z and temperature 1, a fixed point of ``q ← afa(q, z, z)``
        (Eq. (7.10)) is a stationary point of the Student-t likelihood (its MLE when that point is
        the global maximum) only for κ = 1; for another κ it is a stationary point of
        Σ_j ρ(d²_ij) with ρ' = (1 + s/ν)^{−κ}.
    temperature : float
        β > 0 multiplying the logits.
    causal : bool
        Attend only to keys with t_j ≤ t_i.
    rotate_values : bool
        Pull values forward with e^{λΔt}; if False, only decay them (e^{−μΔt}).
    return_weights : bool
        Also return A, shape (..., N, N, d), ``A[..., i, j, k]``.
    return_intermediates : bool
        Also return a dict with ``A``, ``R`` (..., N, N, d), ``P`` (N, N, d) (the same for every
        batch element), ``d2`` (..., N, N) and ``logits`` (..., N, N, d) (−inf where not allowed).
        ``R`` of pushed-back pairs can overflow to inf for very long non-causal lags, and ``P`` and
        ``d2`` where a variance underflows (e.g. η² e^{−2μΔt} with σ² = γ² = 0 once 2μΔt ≳ 709);
        the logits, formed from log Σ and log d², stay finite (or −inf for a Gaussian weight whose
        d²/ν exceeds the float64 range: weight 0, the limit).

    Returns
    -------
    out : ndarray of complex128, shape (..., N, d)
        The filtered estimates V̄.

    Notes
    -----
    Memory is O(batch · N² · d) by nature (the precision, residual and weight tensors); inputs
    with batch · N² · d > ``MAX_TENSOR`` are refused. :func:`isotropic_afa` is the form for a shared
    decay and noise, with no (N, N, d) array (memory O(b·N + N d) on a uniform time grid).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = (rng.normal(size=(5, 2)) + 1j * rng.normal(size=(5, 2)) for _ in range(3))
    >>> lam = np.array([-0.5 + 1.0j, -0.1 - 2.0j])
    >>> out, A = afa(q, k, v, eigvals=lam, sigma2=0.5, eta2=0.1, gamma2=0.05, nu=2.0, return_weights=True)
    >>> out.shape, A.shape
    ((5, 2), (5, 5, 2))
    >>> bool(np.allclose(A.sum(axis=1), 1.0)), bool(np.all(A[0, 1:] == 0))  # rows sum to 1; causal
    (True, True)
    """
    causal, rotate_values, return_weights, return_intermediates = _check_flags(
        causal=causal, rotate_values=rotate_values, return_weights=return_weights,
        return_intermediates=return_intermediates,
    )
    q, k, v, t, sigma2, eta2, gamma2, nu, kappa, temperature = _check_common(
        q, k, v, t, sigma2, eta2, gamma2, nu, weight, kappa, temperature
    )
    N, d = q.shape[-2:]
    lam = _check_eigvals(eigvals, d)
    size = int(np.prod(q.shape[:-2], dtype=np.int64)) * N * N * d
    if size > MAX_TENSOR:
        raise ValueError(
            f"q: the tensor form needs batch·N²·d = {size} entries per tensor, more than "
            f"refimpl.afa.MAX_TENSOR = {MAX_TENSOR}; use isotropic_afa (no (N, N, d) array) or a smaller input"
        )
    mu, omega = -lam.real, lam.imag
    dt, tau, forward, allowed = _pairs(t, causal)
    dt3, tau3, fwd3 = dt[..., None], tau[..., None], forward[..., None]  # (N, N, 1) against channels
    scaled_cov, log_p = _scaled_covariance(tau3, fwd3, mu, sigma2, eta2, gamma2)  # (N, N, d)
    phase = np.exp(1j * omega * dt3)  # e^{iωΔt}
    decay = np.exp(-mu * tau3)  # e^{−μ|Δt|} ≤ 1
    qi, kj = q[..., :, None, :], k[..., None, :, :]
    # forward: R = q_i − e^{λΔt} k_j;  pushed back (scaled by e^{−λτ}): e^{λτ} q_i − k_j
    r_scaled = np.where(fwd3, qi - decay * phase * kj, decay * np.conj(phase) * qi - kj)
    d2 = np.sum(np.abs(r_scaled) ** 2 / scaled_cov, axis=-1)  # d²_ij = Σ_k P_k |R_k|²
    penalty, d2 = _robust_penalty(d2, r_scaled, scaled_cov, log_p, tau3, fwd3, mu, nu, kappa, weight)
    logits = _robust_logits(log_p, penalty, temperature, allowed, per_channel=True)
    del penalty  # not alive at the peak of memory below
    log_a = _log_softmax(logits, axis=-2)  # normalize over keys j
    # Â = A · e^{λΔt} (or e^{−μΔt}); |e^{λΔt}| = e^{−μΔt} is applied in log space
    aggregate = np.exp(log_a - mu * dt3)
    if rotate_values:
        aggregate = aggregate * phase
    out = np.einsum("...ijk,...jk->...ik", aggregate, v)  # v̄_i = Σ_j Â_ij v_j
    if return_intermediates:
        with np.errstate(over="ignore", invalid="ignore"):
            R = qi - np.exp(lam * dt3) * kj
        weights = np.exp(log_a)
        extra = {"A": weights, "P": np.exp(log_p), "R": R, "d2": d2, "logits": logits}
        return out, extra
    if return_weights:
        return out, np.exp(log_a)
    return out


def _log0(x: float) -> float:
    """log x, −inf at x = 0 (math.log raises there)."""
    return math.log(x) if x > 0 else -math.inf


def _logsumexp(terms) -> float:
    """log Σ e^{x} of a few numbers, −inf if all are −inf."""
    top = max(terms)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(x - top) for x in terms))


def _log_variance_loop(dt: float, mu: float, sigma2: float, eta2: float, gamma2: float) -> float:
    """log Σ(Δt) of Eq. (2.9) for one lag and channel, the log of a sum of three terms.

    ``Σ = σ² φ(∓2μ, τ) + η² e^{∓2μτ} + γ²`` (− for a key at or before the query, + after it):
    ``log Σ = log(e^{log σ² + log φ} + e^{log η² ∓ 2μτ} + e^{log γ²})``, a term with zero noise
    being e^{−inf}. Neither the variance (η² e^{−2μτ} underflows once 2μτ ≳ 745) nor the
    pushed-back φ(2μ, τ) = e^{2μτ} φ(−2μ, τ) (which overflows) is formed.
    """
    tau = abs(dt)
    x = 2.0 * mu * tau
    growth = 0.0 if dt >= 0 else x  # pushed back: φ(2μ, τ) = e^{2μτ} φ(−2μ, τ)
    log_phi = growth + _log0(float(lyapunov._phi1_scalar(-2.0 * mu, tau)))  # log φ(∓2μ, τ)
    process = _log0(sigma2) + log_phi  # log(σ² φ)
    measurement = _log0(eta2) + (-x if dt >= 0 else x)  # log(η² e^{∓2μτ})
    anchor = _log0(gamma2)  # log γ²
    return _logsumexp([process, measurement, anchor])


@guard_overflow(first_only=True)
def afa_loop(
    q,
    k,
    v,
    *,
    eigvals,
    sigma2,
    eta2,
    gamma2,
    nu,
    t=None,
    weight: str = "student",
    kappa=None,
    temperature=1.0,
    causal: bool = True,
    rotate_values: bool = True,
    return_weights: bool = False,
    return_intermediates: bool = False,
):
    """Loop twin of :func:`afa`: Eqs. (7.2)–(7.7) with explicit loops over i, j and k.

    Reads like the equations: the covariance of each pair comes from Eq. (2.9), per channel, as
    its logarithm (:func:`_log_variance_loop`: a variance that underflows, η² e^{−2μτ} at long
    lags, still has an ordinary log), the residual is formed directly, and d² as
    ``log d² = log Σ_k e^{log P_k + log|R_k|²}``. No guard against e^{+μτ} overflowing: meant for
    pushed-back lags of moderate 2μτ. With ``return_intermediates`` the pair quantities are formed
    for every pair (i, j), as :func:`afa` returns them.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = (rng.normal(size=(5, 2)) + 1j * rng.normal(size=(5, 2)) for _ in range(3))
    >>> kw = dict(eigvals=np.array([-0.5 + 1.0j, -0.1 - 2.0j]), sigma2=0.5, eta2=0.1, gamma2=0.05, nu=2.0)
    >>> bool(np.allclose(afa_loop(q, k, v, **kw), afa(q, k, v, **kw)))
    True
    """
    causal, rotate_values, return_weights, return_intermediates = _check_flags(
        causal=causal, rotate_values=rotate_values, return_weights=return_weights,
        return_intermediates=return_intermediates,
    )
    q, k, v, t, sigma2, eta2, gamma2, nu, kappa, temperature = _check_common(
        q, k, v, t, sigma2, eta2, gamma2, nu, weight, kappa, temperature
    )
    batch, (N, d) = q.shape[:-2], q.shape[-2:]
    lam = _check_eigvals(eigvals, d)
    qb, kb, vb = (x.reshape((-1, N, d)) for x in (q, k, v))
    out = np.zeros_like(qb)
    A = np.zeros((qb.shape[0], N, N, d))
    if return_intermediates:
        P_all = np.empty((N, N, d))
        R_all = np.empty(qb.shape[:1] + (N, N, d), dtype=np.complex128)
        d2_all = np.empty(qb.shape[:1] + (N, N))
        L_all = np.full(qb.shape[:1] + (N, N, d), -np.inf)
    for b in range(qb.shape[0]):
        for i in range(N):
            keys = [j for j in range(N) if (t[j] <= t[i] or not causal)]
            logits = np.empty((len(keys), d))
            for j in range(N) if return_intermediates else keys:
                dt = float(t[i] - t[j])
                log_P = np.empty(d)
                R = np.empty(d, dtype=np.complex128)
                log_d2_terms = []
                for c in range(d):
                    mu = -lam[c].real
                    log_P[c] = -_log_variance_loop(dt, mu, sigma2[c], eta2[c], gamma2[c])  # log P = −log Σ_c(Δt), Eq. (2.9)
                    R[c] = qb[b, i, c] - cmath.exp(lam[c] * dt) * kb[b, j, c]  # R = q_i − e^{λΔt} k_j
                    log_d2_terms.append(2.0 * _log0(abs(R[c])) + log_P[c])  # log(P_k |R_k|²)
                log_d2 = _logsumexp(log_d2_terms)  # d² = Σ_k P_k |R_k|²
                if weight == "student":  # κ log(1 + d²/ν)
                    robust = kappa * float(np.logaddexp(0.0, log_d2 - math.log(nu)))
                else:  # d²/ν
                    robust = lyapunov._exp_real(log_d2 - math.log(nu))  # (inf: weight 0, the limit)
                L = temperature * (log_P - robust)  # L = log P − κ log(1 + d²/ν)
                if j in keys:
                    logits[keys.index(j)] = L
                if return_intermediates:
                    P_all[i, j], R_all[b, i, j], d2_all[b, i, j] = np.exp(log_P), R, lyapunov._exp_real(log_d2)
                    if j in keys:
                        L_all[b, i, j] = L
            for c in range(d):
                top = max(logits[:, c])
                total = sum(math.exp(x - top) for x in logits[:, c])
                for n, j in enumerate(keys):
                    a = math.exp(logits[n, c] - top) / total  # softmax over allowed j
                    A[b, i, j, c] = a
                    dt = float(t[i] - t[j])
                    carry = cmath.exp(lam[c] * dt) if rotate_values else math.exp(lam[c].real * dt)
                    out[b, i, c] += a * carry * vb[b, j, c]  # v̄_i = Σ_j A_ij e^{λΔt} v_j
    out = out.reshape(batch + (N, d))
    if return_intermediates:
        extra = {"A": A.reshape(batch + (N, N, d)), "P": P_all, "R": R_all.reshape(batch + (N, N, d)),
                 "d2": d2_all.reshape(batch + (N, N)), "logits": L_all.reshape(batch + (N, N, d))}
        return out, extra
    return (out, A.reshape(batch + (N, N, d))) if return_weights else out


# ---------------------------------------------------------------------------------------------
# isotropic form, Eqs. (8.1)-(8.4)
# ---------------------------------------------------------------------------------------------


#: A grid counts as uniform when every stamp lies within this many ε·max|t| of t_1 + h·(i − 1)
#: (the rounding of the stamps themselves): see :func:`_uniform_step`.
_UNIFORM_ULPS = 4.0


def _uniform_step(t: np.ndarray):
    """The step h of a uniform grid ``t_i = t_1 + h·(i − 1)``, or None if ``t`` is not one.

    Steps exactly equal in floating point (the default ``0, 1, …``, ``0.25·arange``) give
    h = t_2 − t_1, as they always did. A grid such as ``0.1·arange(N)`` or ``linspace`` is uniform
    only up to the rounding of its stamps (its steps differ by a few ulps of max|t|): it is
    recognised when every stamp lies within ``_UNIFORM_ULPS``·ε·max|t| of t_1 + h·(i − 1), with
    h = (t_N − t_1)/(N − 1). Its lags are then taken as h·(i − j), which differ from the rounded
    differences t_i − t_j by at most about 2·_UNIFORM_ULPS·ε·max|t| (absolute) — the size of the
    stamps' own rounding — and the lag kernels stay O(N) Toeplitz views instead of (N, N) arrays.
    """
    N = t.shape[0]
    if N < 2:
        return None
    steps = np.diff(t)
    if np.all(steps == steps[0]):
        return float(steps[0])
    h = float(t[-1] - t[0]) / (N - 1)
    tol = _UNIFORM_ULPS * np.finfo(np.float64).eps * float(np.max(np.abs(t[[0, -1]])))
    # a cheap test of the steps first (each within 2 tol of h), then of the stamps (no drift)
    if not np.max(np.abs(steps - h)) <= 2.0 * tol:
        return None
    if not np.max(np.abs(t - (t[0] + h * np.arange(N)))) <= tol:
        return None
    return h


class _LagKernels:
    """The pair quantities of isotropic AFA, which depend on Δt_ij only (Eq. (8.1)).

    On a uniform grid (:func:`_uniform_step`, which also recognises grids such as
    ``0.1·arange(N)`` that are uniform only up to the rounding of their stamps) they are
    Toeplitz: computed once per lag (2N − 1 values) and exposed as strided (N, N) views without
    copying; otherwise evaluated for every pair.

    The logits of :func:`_isotropic_rows` are ``L = log P − penalty − shift``, the constant shift
    (which the softmax cancels) being the largest log P over the lags that carry weight (the lags
    >= 0 when causal): as the penalty is >= 0, every logit is <= 0 and the rows need no max
    subtraction. Per lag, from ``log P`` and ``log S`` of :func:`_scaled_log_variance` (finite for
    every lag; ``S`` is Σ, scaled by e^{−2μτ} for keys after their query, and ‖R‖² is scaled alike):

    * Student: ``log P − κ log(1 + ‖R‖²/(νS)) = log P + κ log(νS) − κ log(‖R‖² + νS)``, stored as
      ``nu_sigma`` = νS and ``c`` = log P + κ log(νS) − shift, so that ``L = c − κ log(‖R‖² + νS)``.
      Unlike ``log1p(‖R‖² P/ν)`` this stays exact when S underflows (P = inf): then
      ``L = log P + κ log(νS) − κ log ‖R‖²`` with the exact logs. νS and ‖R‖² are both scaled by
      the power of two ``r2_scale`` <= 1 (exact) that brings the largest νS to [1/2, 1).
    * Gaussian: ``log P − ‖R‖² P/ν``, stored as ``log_p`` = log P − shift and ``p_nu`` = P/ν
      (inf where S underflows: ‖R‖² · inf = inf is the right limit, weight 0).

    Not resolved: a residual that underflows as well (‖R‖² = 0 next to an underflowed S, e.g. a
    query exactly 0 against a key 2μΔt ≳ 745 earlier with σ² = γ² = 0) gives log 0 or 0 · inf,
    a NaN that :func:`refimpl._validate.guard_overflow` refuses.

    Lags that carry no weight (keys after their query, causal) get harmless values (logit
    ``−κ log(‖R‖² + 1)`` or 0), whatever their variance.
    """

    def __init__(self, t: np.ndarray, mu: float, sigma2: float, eta2: float, gamma2: float, nu: float = 1.0,
                 kappa: float = 1.0, weight: str = "student", causal: bool = True):
        N = t.shape[0]
        h = _uniform_step(t)
        self.uniform = h is not None
        if self.uniform:
            lags = h * np.arange(-(N - 1), N)  # Δt for i − j = −(N−1) … N−1

            def toeplitz(a):  # [i, j] = a[i − j + N − 1]; a row runs forward through memory (unit stride)
                return np.lib.stride_tricks.sliding_window_view(np.ascontiguousarray(a[::-1]), N)[::-1]
        else:
            lags = t[:, None] - t[None, :]

            def toeplitz(a):
                return a
        tau, forward = np.abs(lags), lags >= 0
        phi = lyapunov._phi1_array(np.asarray(-2.0 * mu), tau)  # (1 − e^{−2μτ})/(2μ)
        scaled, log_scaled, log_p = _scaled_log_variance(tau, forward, mu, sigma2, eta2, gamma2, phi)
        decay = np.exp(-mu * tau)
        self.dt, self.forward = toeplitz(lags), toeplitz(forward)
        self.later = toeplitz(~forward)  # keys after the query
        self.decay, self.decay_sq = toeplitz(decay), toeplitz(decay * decay)
        masked = ~forward if causal else np.zeros_like(forward)  # lags that carry no weight
        shift = np.max(log_p[~masked])  # the largest log P that carries weight: every logit <= 0
        self.r2_scale = 1.0
        self.nu_sigma = self.c = self.log_p = self.p_nu = None
        with np.errstate(divide="ignore", over="ignore"):
            if weight == "student":
                # ‖R‖² and νS scaled by 2^{−e} (exact), e >= 0 making the largest νS that carries weight
                # at most 1: ‖R‖² + νS cannot overflow, and the logs of c and of ‖R‖² + νS stay small
                # where they cancel (‖R‖² ≪ νS)
                top = math.log(nu) + float(np.max(log_scaled[~masked]))  # the largest log(νS)
                e = min(max(0, math.floor(top / math.log(2.0)) + 1), 1022)
                self.r2_scale = math.ldexp(1.0, -e)
                nu_sigma = scaled * (nu * self.r2_scale)  # νS 2^{−e}
                # log(νS 2^{−e}): of the stored number, or from log S where it has lost digits (or is 0)
                log_nu_sigma = np.where(nu_sigma >= _NORMAL, np.log(nu_sigma), math.log(nu) + log_scaled - e * math.log(2.0))
                c = log_p + kappa * log_nu_sigma - shift  # log P + κ log(νS) − shift (with the scale)
                self.nu_sigma = toeplitz(np.where(masked, 1.0, nu_sigma))
                self.c = toeplitz(np.where(masked, 0.0, c))
            else:
                p_nu = 1.0 / (scaled * nu)  # P/ν: d²/ν = (P/ν) ‖R‖² in one product
                low = scaled < _NORMAL
                if np.any(low):  # P/ν from log P where S has lost digits or is 0
                    p_nu = np.where(low, np.exp(-log_scaled - math.log(nu)), p_nu)
                self.p_nu = toeplitz(np.where(masked, 0.0, p_nu))
                self.log_p = toeplitz(np.where(masked, 0.0, log_p - shift))


def _check_isotropic_dynamics(mu, omega, d: int):
    mu = as_real_array(mu, "mu", ndim=0)
    if mu < 0:
        raise ValueError(f"mu: expected a decay >= 0, got {float(mu)!r}")
    omega = as_real_array(omega, "omega", ndim=1)
    if omega.shape != (d,):
        raise ValueError(f"omega: expected shape ({d},) to match the d = {d} channels of q, got shape {omega.shape}")
    return float(mu), omega


#: Causal isotropic AFA factors the decay of every pair, E_ij = a_i b_j (see isotropic_afa), when the
#: stamps span μ(t_N − t_1) <= _FOLD_SPAN and every ‖q_i‖², ‖k_j‖² and |v_jk|² is at most _FOLD_NORM: the
#: factors then lie in [e^{−128}, e^{128}] and every term of the product of width 2d + 2 (at most
#: 4·e^{512}·_FOLD_NORM, the pairs masked after their query included) stays far below the float64 limit.
#: The factors carry the rounding of their exponents, about ε·μ(t_N − t_1)/2 relative each (≤ 3e-14).
_FOLD_SPAN = 256.0
_FOLD_NORM = 1e60


#: The refusal of :func:`isotropic_afa` when no argument is extreme: with moderate inputs, the output of
#: non-causal attention at a low temperature grows with the longest lag (chapter 8, §8.4).
_ISOTROPIC_OVERFLOW = (
    "temperature, causal: the result is not representable in float64 (an intermediate overflowed although no "
    "argument is extreme). With causal=False a key after its query carries e^{+mu|dt|} into the output: when "
    "sigma2 or eta2 is positive its weight falls like e^{-2 T mu|dt|} at temperature T, so for T < 1/2 the exact "
    "output grows like e^{(1 - 2T) mu |dt|} with the longest lag; with sigma2 = eta2 = 0 the Student weight falls "
    "like e^{-2 kappa T mu|dt|} (growth for T < 1/(2 kappa)) and a key of zero norm keeps its weight at every lag "
    "(chapter 8, §8.4). Raise the temperature, shorten mu (t_N - t_1) or use causal=True; otherwise rescale the "
    "inputs to moderate magnitudes"
)


@guard_overflow(hint=_ISOTROPIC_OVERFLOW)
def isotropic_afa(
    q,
    k,
    v,
    *,
    mu,
    omega,
    sigma2,
    eta2,
    gamma2,
    nu,
    t=None,
    weight: str = "student",
    kappa=None,
    temperature=1.0,
    causal: bool = True,
    rotate_values: bool = True,
    return_weights: bool = False,
):
    r"""Isotropic AFA at the order of cost of ordinary attention: Eqs. (8.1)–(8.4) of the book.

    Implements Racioppo (arXiv:2509.04154) v6 §3.5, App. B.2–B.3 and Algorithm 1 (chapter 8 of the book): one decay
    μ and one noise level per head, λ_k = −μ + iω_k. Then the precision is shared by all channels
    and everything factorizes:

    .. math::
        \tilde q_i = e^{-iωt_i}⊙q_i,\ \tilde k_j = e^{-iωt_j}⊙k_j,\qquad
        \|R_{ij}\|^2 = \|q_i\|^2 + E_{ij}^2\|k_j\|^2 - 2E_{ij}\operatorname{Re}(\tilde q_i^\dagger\tilde k_j),
        \ E_{ij} = e^{-μ|Δt_{ij}|},

    for keys at or before their query (Δt_ij ≥ 0); the cross term is one real matmul of width 2d,
    and values are rotated, aggregated and counter-rotated: ``v̄_i = e^{iωt_i} ⊙ Σ_j Â_ij ṽ_j``
    with ``Â_ij = A_ij e^{−μΔt_ij}`` (signed lag; ``A_ij E_ij`` for Δt_ij ≥ 0), a second real matmul
    of width 2d (the real weights times ṽ viewed as real). A key after its query (``causal=False``)
    is pulled back by ``e^{+μ|Δt|} = 1/E_ij``: its residual norm and variance are both evaluated
    scaled by ``E_ij²`` (``E²‖q_i‖² + ‖k_j‖² − 2E Re(q̃_i^† k̃_j)``) and ``Â_ij`` is formed in log
    space. No (N, N, d) array is ever formed. Causal attention factors the decay, E_ij = a_i b_j
    with a_i = e^{−μ(t_i − s)}, b_j = e^{μ(t_j − s)} and s the middle of the stamps, so that all of
    ‖R_ij‖² is one product of width 2d + 2, ``[−2a_i q̃_i, a_i², ‖q_i‖²]·[b_j k̃_j, b_j²‖k_j‖², 1]``,
    and ``Â_ij ṽ_j = a_i A_ij (b_j ṽ_j)``: five elementwise passes over the pairs fewer (measured
    at N = 4096, d = 64 against the unfactored form, interleaved: 9–11 % faster in one thread and
    in two). It does so only while μ(t_N − t_1) ≤ 256 and the squared norms of q and k and the
    squared entries of v are at most 1e60, so that the factors stay within e^{±128} and no term of
    the product (masked pairs included) can overflow; otherwise, and for non-causal attention, the
    decay enters as the relative kernel E_ij ≤ 1 (chapter 8, §8.4). Each factor carries the
    rounding of its exponent, about ε μ|t − s| relative (at most 128ε ≈ 3e-14), where e^{−μΔt}
    itself has about ε. The exact output itself can still grow: a pushed-back value carries e^{+μ|Δt|}, and when
    σ² or η² is positive its weight falls like e^{−2βμ|Δt|} for a temperature β, so with β < 1/2 the
    non-causal output grows like e^{(1−2β)μ|Δt|} with the longest lag (a property of the model; chapter 8,
    §8.4). With σ² = η² = 0 the precision is the constant 1/γ² and the penalty grows instead: the Student
    weight falls like e^{−2κβμ|Δt|}, so the output grows for β < 1/(2κ); the exponential weight's output stays
    bounded; both for keys of nonzero norm (a zero key keeps its weight at every lag, and its value's
    e^{+μ|Δt|} is not compensated at any temperature). The output is returned while every intermediate
    stays within float64, and refused with a ValueError beyond (never inf or NaN; with no extreme argument the
    message names the temperature and causal=False as the likely cause). The weighted sum Σ_j Â_ij ṽ_j is
    formed before its division by the row's sum of weights (at most N), so an output somewhat below the
    largest float64 can already be refused. The Student
    logit is evaluated as ``log P + κ log(νΣ) − κ log(‖R‖² + νΣ)``
    (= ``log P − κ log(1 + ‖R‖² P/ν)``) with ``log Σ`` from the logs of its three terms, so that
    it stays exact when Σ underflows (e.g. η² e^{−2μΔt} with σ² = γ² = 0, or the scaled pushed-back
    γ² e^{−2μ|Δt|} with σ² = η² = 0, once 2μ|Δt| ≳ 745); the Gaussian penalty ‖R‖² P/ν then tends
    to +inf (weight 0), its limit. The rotations use the time since the first stamp,
    ``t_i − t_1`` in place of ``t_i`` above (the factors e^{∓iωt_1} cancel): a common offset of
    the time stamps changes nothing, and the phases ω(t_i − t_1) carry a rounding error of about
    ε|ω|(t_N − t_1) radians, against ε|ωΔt_ij| for the tensor form's e^{iωΔt_ij}; the rotations are formed from
    the tangent of the half angle (``refimpl._trig``), a few units in the last place of 1 beyond that.
    The pairs are computed in blocks of b query rows against the keys they attend to:
    memory O(b·N + N d) on a uniform time grid (the lag kernels are Toeplitz views of 2N − 1
    values): steps exactly equal, e.g. the default ``t = 0, 1, …``, or equal up to the rounding of
    the stamps, e.g. ``t = 0.1·arange(N)``, whose lags are then taken as h·(i − j) with
    h = (t_N − t_1)/(N − 1), a change of at most about 8ε·max|t| from t_i − t_j (every stamp within
    4ε·max|t| of t_1 + h·(i − 1)). Irregular time stamps make the lag kernels (N, N) arrays, and ``return_weights`` returns the (N, N) weights: O(N²)
    memory in those cases. The blocks run in
    ``refimpl._blocking.THREADS`` threads (the cores NumPy's ufuncs leave idle); every block is
    computed by the same operations in any thread, so the result is bitwise the same for any
    number of threads.

    Parameters
    ----------
    q, k, v : array_like, shape (..., N, d)
    mu : float
        Decay μ ≥ 0 shared by the channels.
    omega : array_like, shape (d,)
        Rotation frequencies ω_k.
    sigma2, eta2, gamma2 : float
        Scalar noise levels (a (d,) array is refused, even with equal entries: use :func:`afa`).
    nu, t, weight, kappa, temperature, causal, rotate_values : as in :func:`afa`.
    return_weights : bool
        Also return A, shape (..., N, N) (the same for every channel).

    Returns
    -------
    out : ndarray of complex128, shape (..., N, d)
        Equal to ``afa(q, k, v, eigvals=-mu + 1j*omega, ...)`` up to rounding (for long sequences
        dominated by the phases' ε|ω|(t_N − t_1), above).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = (rng.normal(size=(5, 2)) + 1j * rng.normal(size=(5, 2)) for _ in range(3))
    >>> kw = dict(mu=0.3, omega=np.array([1.0, -0.5]), sigma2=0.5, eta2=0.1, gamma2=0.05, nu=2.0)
    >>> out = isotropic_afa(q, k, v, **kw)
    >>> out.shape
    (5, 2)
    >>> noise = {n: kw[n] for n in ("sigma2", "eta2", "gamma2", "nu")}
    >>> bool(np.allclose(out, afa(q, k, v, eigvals=-0.3 + 1j * kw["omega"], **noise)))  # λ_k = −μ + iω_k
    True
    """
    causal, rotate_values, return_weights = _check_flags(
        causal=causal, rotate_values=rotate_values, return_weights=return_weights
    )
    for name, value in (("sigma2", sigma2), ("eta2", eta2), ("gamma2", gamma2)):
        if np.ndim(value) != 0:
            raise ValueError(f"{name}: isotropic AFA takes a scalar noise level, got shape {np.shape(value)}")
    # no defensive copies: isotropic AFA only reads q, k, v (into new operands, _operands) and returns no view of them
    q, k, v, t, sigma2, eta2, gamma2, nu, kappa, temperature = _check_common(
        q, k, v, t, sigma2, eta2, gamma2, nu, weight, kappa, temperature, copy=False
    )
    N, d = q.shape[-2:]
    mu, omega = _check_isotropic_dynamics(mu, omega, d)
    lag = _LagKernels(t, mu, sigma2[0], eta2[0], gamma2[0], nu, kappa, weight, causal)  # E, Σ, log P as functions of Δt_ij
    plan = _Plan.make(N, causal)
    batch = q.shape[:-2]
    nb = math.prod(batch)
    qb, kb, vb = (x.reshape((nb, N, d)) for x in (q, k, v))
    rot = np.empty((N, d), dtype=np.complex128)  # e^{−iω(t − t_1)} (_operands)
    # Causal pairs: E_ij = e^{−μ(t_i − t_j)} = a_i b_j with a_i = e^{−μ(t_i − s)}, b_j = e^{μ(t_j − s)}, s the
    # middle of the stamps, so that ‖R‖² = [−2a_i q̃_i, a_i², ‖q_i‖²]·[b_j k̃_j, b_j²‖k_j‖², 1] is one product of
    # width 2d + 2 and Â_ij ṽ_j = a_i A_ij (b_j ṽ_j): five passes over the pairs fewer (_isotropic_rows). Only
    # while the factors and every term of the product stay far inside float64 (_FOLD_SPAN, _FOLD_NORM): the
    # operands are formed folded when the span allows it, and formed again unfolded if an input is too large.
    keys = _operands(qb, kb, vb, t, rot, omega, mu, lag, plan, rotate_values,
                     fold=causal and mu * float(t[-1] - t[0]) <= _FOLD_SPAN)
    if keys.a is not None and not keys.fold_ok():
        keys = _operands(qb, kb, vb, t, rot, omega, mu, lag, plan, rotate_values, fold=False)

    head = _Head(mu, nu, kappa, weight, temperature, causal)
    out = np.empty((nb, N, d), dtype=np.complex128)
    weights = np.empty((nb, N, N)) if return_weights else None
    items = [(b, rows) for b in range(nb) for rows in plan.blocks]

    def worker():
        work = plan.workspace()  # each thread its own buffers

        def block(i: int) -> None:
            b, rows = items[i]
            o = out[b, rows]
            _isotropic_rows(b, rows, keys, lag, head, plan, work, weights, o.view(np.float64))
            if rotate_values:
                o *= np.conj(rot[rows])  # counter-rotate: v̄ = e^{iωt} ⊙ (Â ṽ)

        return block

    # Rows of the operands (_operands), and blocks of query rows (a softmax over keys per query), are
    # independent: they run in threads, and every row or block is computed by the same operations
    # whichever thread runs it, so the result does not depend on the number of threads. The rows
    # of the operands are split evenly; the blocks are handed out one at a time (a thread that
    # shares its core with another process computes fewer of them), with BLAS held to one thread
    # (each thread's products are its own, as in softmax attention; _blocking.one_thread_blas).
    take_turns_one_blas(len(items), worker, nb * plan.pairs, True)
    out = out.reshape(batch + (N, d))
    return (out, weights.reshape(batch + (N, N))) if return_weights else out


def _operands(qb, kb, vb, t, rot, omega, mu: float, lag: _LagKernels, plan: "_Plan", rotate_values: bool,
              fold: bool) -> "_Keys":
    """The operands of the two products of :func:`isotropic_afa` (a :class:`_Keys`), rows in threads; also the
    rotations ``rot`` = e^{−iω(t − t_1)}. ``fold``: with the decay's factors a_i, b_j (see isotropic_afa)."""
    nb, N, d = qb.shape
    width = 2 * d + 2 if fold else 2 * d
    k2 = np.empty((nb, N, width))  # k̃ by rows (written through its complex view), then stored transposed
    keys = _Keys(
        q2=np.empty((nb, N, width)),
        k2t=np.empty((nb, width, N)),
        nq=np.empty((nb, N)),
        nk=np.empty((nb, N)),
        values=np.empty((nb, N, 2 * d)),
        a=np.exp(-mu * (t - 0.5 * (t[0] + t[-1]))) if fold else None,
        largest=[],
    )
    b_fold = np.exp(mu * (t - 0.5 * (t[0] + t[-1]))) if fold else None  # b_j = e^{μ(t_j − s)}
    # The rotations use the time since the first stamp: the output depends on Δt_ij only (the
    # factors e^{∓iωt_1} cancel between q̃ and k̃, and between ṽ and the counter-rotation), and
    # the rounding of the phases ω t is then relative to t − t_1, not to an offset t_1.
    t_rot = t - t[0] if t[0] != 0 else t

    def prepare(rows: slice) -> None:
        # e^{−iωt} = cos(−ωt) + i sin(−ωt), by the half-angle tangent (refimpl._trig: NumPy's sin and cos
        # call the C library per number, 8.2 of the 25 ms of this stage at N = 4096, d = 64 in one thread;
        # the tangent's route 1.2 ms); the half angle −ωt/2 (exact halving) is formed where the sines go.
        r = rot[rows]
        np.multiply(t_rot[rows, None], -0.5 * omega, out=r.imag)
        sin_cos_half(r.imag, r.imag, r.real)
        for x, norm in ((qb, keys.nq), (kb, keys.nk)):  # ‖q_i‖², ‖k_j‖²: Σ (Re² + Im²) over the 2d reals
            real = x[:, rows].view(np.float64)
            np.vecdot(real, real, out=norm[:, rows])
            if lag.r2_scale != 1.0:
                norm[:, rows] *= lag.r2_scale
        # −2 Re(q̃_i^† k̃_j) as one real matmul of width 2d: a complex (N, d) array viewed as real
        # is (N, 2d) with Re and Im interleaved, and Re(a^† b) = Σ (Re a Re b + Im a Im b) is the
        # real dot product of the two views. The factor −2 of Eq. (8.2) rides on the queries (N·d
        # products, exact) instead of the N² pairs.
        q2, k2_rows = keys.q2[:, rows, : 2 * d], k2[:, rows, : 2 * d]
        np.multiply(qb[:, rows], r, out=q2.view(np.complex128))  # q̃
        # (Student: ‖R‖² scaled by a power of two, _LagKernels)
        q2 *= (-2.0 * lag.r2_scale) * keys.a[rows, None] if fold else -2.0 * lag.r2_scale
        np.multiply(kb[:, rows], r, out=k2_rows.view(np.complex128))  # k̃
        # ṽ = e^{−iωt} ⊙ v (or v): the real weights times the complex values are also one real
        # matmul of width 2d on the real view (a complex product would cast the weights to complex
        # and do four times the work); its (rows, 2d) result viewed as complex is Σ_j Â_ij ṽ_j
        values = keys.values[:, rows]
        if rotate_values:
            np.multiply(vb[:, rows], r, out=values.view(np.complex128))
        else:
            values.view(np.complex128)[...] = vb[:, rows]
        if fold:  # the factors of E_ij: [−2a_i q̃_i, a_i², ‖q_i‖²] and [b_j k̃_j, b_j²‖k_j‖², 1], b_j ṽ_j
            a, b_j = keys.a[rows], b_fold[rows]
            keys.largest.append(max(np.max(keys.nq[:, rows], initial=0.0), np.max(keys.nk[:, rows], initial=0.0),
                                    max(np.max(values, initial=0.0), -np.min(values, initial=0.0)) ** 2))  # |ṽ_jk| = |v_jk|
            k2_rows *= b_j[:, None]
            values *= b_j[:, None]
            keys.q2[:, rows, -2] = a * a  # (‖k_j‖² carries the scale of ‖R‖² already)
            keys.q2[:, rows, -1] = keys.nq[:, rows]
            np.multiply(b_j * b_j, keys.nk[:, rows], out=k2[:, rows, -2])
            k2[:, rows, -1] = 1.0
        # k̃ᵀ: the first product of every block is then a plain (NN) one, (rows × width)(width × keys); with a
        # transposed operand OpenBLAS ran it about 1.6 times slower (64 × 130 × 64, one thread, measured)
        np.copyto(keys.k2t[:, :, rows], k2[:, rows].swapaxes(-1, -2))

    in_parts(prepare, N, elems=nb * N * d)
    return keys


class _Keys(NamedTuple):
    """What every block of query rows of :func:`isotropic_afa` reads, formed once."""

    q2: np.ndarray  # −2 q̃ viewed as real: Re, Im interleaved, (batch, N, 2d); folded: width 2d + 2
    k2t: np.ndarray  # k̃ viewed as real, transposed: (batch, 2d, N); folded: width 2d + 2
    nq: np.ndarray  # ‖q_i‖², (batch, N)
    nk: np.ndarray  # ‖k_j‖², (batch, N)
    values: np.ndarray  # ṽ = e^{−iωt} ⊙ v (or v) viewed as real, (batch, N, 2d); folded: b_j ṽ_j
    a: np.ndarray | None  # folded (causal, see isotropic_afa): a_i = e^{−μ(t_i − s)}, (N,); else None
    largest: list  # folded: each part's largest ‖q_i‖², ‖k_j‖², |v_jk|²

    def fold_ok(self) -> bool:
        """Whether the folded operands are within the bounds of _FOLD_NORM (NaN: not)."""
        return bool(max(self.largest, default=0.0) <= _FOLD_NORM)


class _Head(NamedTuple):
    """The scalar parameters of one isotropic head (validated)."""

    mu: float
    nu: float
    kappa: float
    weight: str
    temperature: float
    causal: bool


#: The fewest query rows of a block (but the last, and unless N is very large, see _BLOCK_PAIRS_MAX): the rows
#: of the block's two products. OpenBLAS's kernels work on panels of 4 (Haswell, Zen) to 16 (Skylake-X and later)
#: rows; on the latter, products of 8 rows (64 × 130 × 64 inner width and keys) ran at 28-30 GFLOP/s in one thread
#: against 47-52 for 32 to 64 rows (measured). Blocks of at least 64 rows, each product one call, ran isotropic AFA
#: (N = 4096, d = 64) in 0.73-0.78 of the time of pieces of 8 rows × 128 keys summed over the keys' chunks, causal
#: and not, in one thread and in two (paired, one process; N = 8192: 0.67-0.76 at d = 8 … 64).
_MIN_ROWS = 64

#: ... unless 64 rows of the keys would exceed this many pairs (16 MiB per buffer; N > 32768): then as many
#: rows as fit, at least 8, so that the workspace at N = 10⁶ stays that of 8 rows.
_BLOCK_PAIRS_MAX = 2**21

#: float64 numbers a (query, key) pair of a block costs: its logit, a temporary, and the lag kernels,
#: keys and values streamed through the cache with it. A block holds WORKSPACE_FLOATS / 3 pairs
#: (87 381: two 683 KiB buffers per thread) while that is at least _MIN_ROWS rows; with pieces of 8
#: rows, blocks of twice as many pairs had run about 5 % slower, of half as many about 10 %.
_PAIR_FLOATS = 3

#: a block's rows lie this many float64 numbers further apart than its keys: a row length of a
#: power of two (4096 keys) maps the rows onto the same cache sets and made the passes that
#: broadcast a row or read a lag kernel up to twice slower
_ROW_PAD = 8


class _Plan(NamedTuple):
    """How :func:`isotropic_afa` cuts the (query, key) pairs: blocks of query rows, each against the
    keys its rows attend to, the unit of the two products.

    A block holds about ``WORKSPACE_FLOATS / _PAIR_FLOATS`` pairs, so that its buffers stay in a
    core's cache, and at least ``_MIN_ROWS`` rows (fewer only when those would exceed
    ``_BLOCK_PAIRS_MAX`` pairs), a multiple of 8. Causal blocks end at their last query (the keys
    after it carry no weight), so early blocks hold more rows than late ones. The plan depends on N
    and ``causal`` only, not on the number of threads.
    """

    blocks: tuple  # slices of query rows
    pairs: int  # pairs computed in all, for the threads
    buffer: int  # float64 numbers of the largest block's (rows, keys) buffer (rows padded, _ROW_PAD)
    scratch: int  # ... and of its temporary

    @classmethod
    def make(cls, N: int, causal: bool) -> "_Plan":
        budget = per_block(_PAIR_FLOATS)  # pairs of a block
        least = max(8, min(_MIN_ROWS, _BLOCK_PAIRS_MAX // max(N, 1)) // 8 * 8)  # rows of a block, at least
        blocks, start = [], 0
        while start < N:
            if causal:  # r rows against start + r keys: r (start + r) <= budget
                rows = (math.isqrt(start * start + 4 * budget) - start) // 2
            else:
                rows = budget // N
            stop = min(N, start + max(least, rows // 8 * 8))
            blocks.append(slice(start, stop))
            start = stop
        seen = [(b.stop if causal else N) for b in blocks]
        shapes = [(b.stop - b.start, s) for b, s in zip(blocks, seen)]
        return cls(
            blocks=tuple(blocks), pairs=sum(r * s for r, s in shapes),
            buffer=max(r * (s + _ROW_PAD) for r, s in shapes), scratch=max(r * s for r, s in shapes),
        )

    def workspace(self) -> tuple:
        """One thread's buffers: the block's pairs and a temporary."""
        return np.empty(self.buffer), np.empty(self.scratch)


def _isotropic_rows(b, rows, keys: _Keys, lag: _LagKernels, head: _Head, plan: _Plan, work, weights, out,
                    exact: bool = False):
    """Eqs. (8.1)–(8.3) for one block of query rows of batch entry ``b``: writes Â ṽ normalized
    (before counter-rotation) into ``out``, real (rows, 2d) (Re, Im interleaved), and the weights
    into ``weights`` if given. Causal blocks read only the keys up to their last query.

    With folded operands (``keys.a`` set, causal; see :func:`isotropic_afa`) the first product is all of
    ‖R‖², the values carry b_j and the output row a_i. The block's pairs live in one buffer of ``work``
    (the logits ``L`` are built where ``‖R‖²`` was): a block costs the two products and about a dozen
    (folded: seven) elementwise passes over that buffer (cache-sized while the block holds about the workspace's
    pairs), and no new (rows, keys) array. The logits are <= 0 (log P is shifted by
    its largest value over the lags that carry weight, :class:`_LagKernels`), so the exponentials
    need no row max (Eq. (4.3)); a block with a row
    whose weights sum below e^{−256} (every logit far below 0) is redone with its row max
    (``exact``), where unshifted weights would lose digits to subnormal numbers (the threshold of
    :func:`refimpl.attention._attend`).
    """
    n_rows = rows.stop - rows.start
    seen = rows.stop if head.causal else lag.decay.shape[-1]  # keys 0 … seen − 1
    buf, scratch = work
    R2 = buf[: n_rows * (seen + _ROW_PAD)].reshape(n_rows, seen + _ROW_PAD)[:, :seen]
    tmp = scratch[: n_rows * seen].reshape(n_rows, seen)
    # −2 Re(q̃_i^† k̃_j) (folded: all of ‖R‖²): one product, (rows × 2d)(2d × keys), into the buffer
    np.matmul(keys.q2[b, rows], keys.k2t[b, :, :seen], out=R2)
    window = (rows, slice(0, seen))  # the block's own (rows, keys) window of the pair quantities
    before, after = (seen, seen) if head.causal else (rows.start, rows.stop)  # keys before / after every query
    folded = keys.a is not None  # causal, E_ij = a_i b_j: ‖R‖² is the product itself (isotropic_afa)
    if not folded:
        E, E2 = lag.decay[window], lag.decay_sq[window]  # e^{−μ|Δt|} ≤ 1 and its square
        nq, nk = keys.nq[b, rows, None], keys.nk[b, None, :seen]
        R2 *= E  # −2E Re(q̃^†k̃)
        # ‖R‖² = ‖q_i‖² + E²‖k_j‖² − 2E Re(q̃^†k̃) (Eq. (8.2)) for keys at or before the query; pushed-back
        # keys (after it; t increases strictly), scaled by E²: E²‖q_i‖² + ‖k_j‖² − 2E Re(q̃^†k̃). Causal
        # blocks mask the keys after their queries anyway.
        R2[:, :before] += nq
        R2[:, :before] += np.multiply(E2[:, :before], nk[:, :before], out=tmp[:, :before])
    if not head.causal:
        R2[:, after:] += np.multiply(E2[:, after:], nq, out=tmp[:, after:])
        R2[:, after:] += nk[:, after:]
        mixed = slice(before, after)  # the block's diagonal: each query has keys on both sides
        R2[:, mixed] += np.where(lag.forward[rows, mixed], nq + E2[:, mixed] * nk[:, mixed], E2[:, mixed] * nq + nk[:, mixed])
    np.maximum(R2, 0.0, out=R2)  # the identity can cancel to a tiny negative number
    L = R2
    if head.weight == "student":  # L = log P − κ log(1 + ‖R‖²/(νΣ)) = c − κ log(‖R‖² + νΣ)  (Eq. (7.5))
        L += lag.nu_sigma[window]
        np.log(L, out=L)
        L *= -head.kappa
        L += lag.c[window]  # c = log P + κ log(νΣ) − shift
    else:
        L *= lag.p_nu[window]  # d²/ν = P ‖R‖² / ν
        np.negative(L, out=L)  # −d²/ν
        L += lag.log_p[window]  # L = log P − d²/ν  (Eq. (7.5))
    if head.temperature != 1.0:
        L *= head.temperature
    c0 = rows.start + 1  # causal: only keys after the block's first query can lie after a query (t increases strictly)
    if exact:
        if head.causal:
            np.copyto(L[:, c0:], -np.inf, where=lag.later[rows, c0:seen])
        L -= np.max(L, axis=-1, keepdims=True)  # the row max: finite, the diagonal j = i is always allowed
    # unnormalized weights (causal: in place; otherwise L is still needed for Â below); the row
    # sums normalize after the matmul
    A = np.exp(L, out=L if head.causal else tmp)
    if head.causal and not exact:  # keys after their query: weight 0. Set after the exponential (L <= 0 is
        # finite everywhere), not as −∞ before it: NumPy's exp takes a slow path for −∞
        np.copyto(A[:, c0:], 0.0, where=lag.later[rows, c0:seen])
    total = np.sum(A, axis=-1, keepdims=True)
    if not exact and not np.all(total >= _TINY_Z):
        return _isotropic_rows(b, rows, keys, lag, head, plan, work, weights, out, exact=True)
    if weights is not None:
        np.divide(A, total, out=weights[b, rows, :seen])
    if folded:  # Â_ij ṽ_j = a_i A_ij (b_j ṽ_j): the values carry b_j, the output's row a_i (below)
        np.divide(total, keys.a[rows, None], out=total)
    elif head.causal:
        A *= E  # Â = A ⊙ e^{−μΔt}
    else:  # e^{−μΔt} > 1 for pushed-back pairs: combine in log space
        L -= np.multiply(head.mu, lag.dt[window], out=tmp)
        np.exp(L, out=L)  # Â
    if weights is not None:
        weights[b, rows, seen:] = 0.0
    np.matmul(L, keys.values[b, :seen], out=out)  # Σ_j Â_ij ṽ_j (Â is in L): one product, (rows × keys)(keys × 2d)
    out /= total


@guard_overflow()
def isotropic_afa_loop(
    q,
    k,
    v,
    *,
    mu,
    omega,
    sigma2,
    eta2,
    gamma2,
    nu,
    t=None,
    weight: str = "student",
    kappa=None,
    temperature=1.0,
    causal: bool = True,
    rotate_values: bool = True,
    return_weights: bool = False,
):
    """Loop twin of :func:`isotropic_afa`: the tensor equations (7.2)–(7.7) as written, loops over i, j, k,
    with λ_k = −μ + iω_k and shared noise — no factorization (the identity (8.2) is what is tested).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> q, k, v = (rng.normal(size=(5, 2)) + 1j * rng.normal(size=(5, 2)) for _ in range(3))
    >>> kw = dict(mu=0.3, omega=np.array([1.0, -0.5]), sigma2=0.5, eta2=0.1, gamma2=0.05, nu=2.0)
    >>> bool(np.allclose(isotropic_afa_loop(q, k, v, **kw), isotropic_afa(q, k, v, **kw)))
    True
    """
    causal, rotate_values, return_weights = _check_flags(
        causal=causal, rotate_values=rotate_values, return_weights=return_weights
    )
    q, k, v = _check_qkv(q, k, v)
    d = q.shape[-1]
    for name, value in (("sigma2", sigma2), ("eta2", eta2), ("gamma2", gamma2)):
        if np.ndim(value) != 0:
            raise ValueError(f"{name}: isotropic AFA takes a scalar noise level, got shape {np.shape(value)}")
    mu, omega = _check_isotropic_dynamics(mu, omega, d)
    out = afa_loop(
        q, k, v, eigvals=-mu + 1j * omega, sigma2=sigma2, eta2=eta2, gamma2=gamma2, nu=nu, t=t, weight=weight,
        kappa=kappa, temperature=temperature, causal=causal, rotate_values=rotate_values, return_weights=return_weights,
    )
    if return_weights:
        return out[0], out[1][..., 0]  # the weights are the same for every channel
    return out


# ---------------------------------------------------------------------------------------------
# AFA as a state estimator: iteratively reweighted least squares, Eq. (7.9)
# ---------------------------------------------------------------------------------------------


@guard_overflow()
def afa_irls(
    z,
    *,
    eigvals,
    sigma2,
    eta2,
    gamma2,
    nu,
    t=None,
    n_iter: int = 3,
    step=1.0,
    weight: str = "student",
    kappa=None,
    causal: bool = True,
):
    r"""AFA applied as a filter to measurements, iterated as re-smoothing: Eqs. (7.8)–(7.9) of the book.

    Implements the iteration of Racioppo (2025) v1 §2.6.2, thesis §3.5 (chapter 7 of the book) with
    known dynamics and noise: start from ``ẑ⁽⁰⁾ = z`` (queries, keys and values are the
    measurements in the eigenbasis), then

    .. math::  \bar z^{(n)} = \operatorname{afa}(\hat z^{(n)}, \hat z^{(n)}, \hat z^{(n)}),\qquad
               \hat z^{(n+1)} = \hat z^{(n)} + α\,(\bar z^{(n)} - \hat z^{(n)}),

    a weighted least-squares estimate per query whose weights are recomputed from the current
    residuals (temperature 1, so the softmax is exactly w·P normalized). Each pass replaces the
    data (queries, keys *and* values) by the previous estimate: this is iterated re-smoothing, what
    a stack of layers does — not IRLS for the M-estimator, whose keys and values stay the
    measurements, ``ẑ⁽ⁿ⁺¹⁾ = afa(ẑ⁽ⁿ⁾, z, z)`` (Eq. (7.10) of the book). The function keeps the
    paper's name.

    Parameters
    ----------
    z : array_like, shape (..., N, d)
        Measurements in the eigenbasis (``S^{-1} z`` for a model built with :mod:`refimpl.sde`).
    eigvals, sigma2, eta2, gamma2, nu, t, weight, kappa, causal : as in :func:`afa`.
    n_iter : int ≥ 1
    step : float in (0, 1]
        The relaxation α.

    Returns
    -------
    estimates : ndarray of complex128, shape (n_iter, ..., N, d)
        ``ẑ⁽¹⁾ … ẑ⁽ⁿ⁾``, the relaxed estimate after each iteration (the AFA output itself when α = 1).

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> z = rng.normal(size=(6, 2)) + 1j * rng.normal(size=(6, 2))
    >>> est = afa_irls(z, eigvals=np.array([-0.2 + 0.5j, -1.0]), sigma2=0.4, eta2=0.2, gamma2=0.05, nu=2.0, n_iter=2)
    >>> est.shape, est.dtype
    ((2, 6, 2), dtype('complex128'))
    """
    if isinstance(n_iter, bool) or not isinstance(n_iter, (int, np.integer)) or n_iter < 1:
        raise ValueError(f"n_iter: expected an integer >= 1, got {n_iter!r}")
    step = as_positive_scalar(step, "step")
    if step > 1:
        raise ValueError(f"step: expected a relaxation in (0, 1], got {step!r}")
    current, _, _, _ = check_qkv(z, z, z, names=("z", "z", "z"), complex_values=True)
    estimates = []
    for _ in range(int(n_iter)):
        bar = afa(
            current, current, current, eigvals=eigvals, sigma2=sigma2, eta2=eta2, gamma2=gamma2, nu=nu, t=t,
            weight=weight, kappa=kappa, causal=causal,
        )
        current = current + step * (bar - current)  # ẑ ← ẑ + α (z̄ − ẑ)
        estimates.append(current)
    return np.array(estimates)
