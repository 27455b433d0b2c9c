r"""The Kalman filter and the Rauch–Tung–Striebel smoother: recursion, parallel scan, dense GLS.

Chapter 3 of the book (``notebooks/03-kalman.ipynb``) derives every formula here. The model is the
exact discretization of chapter 1 (Eq. (1.7)) observed through Eq. (1.2):

.. math::  x_{k+1} = F_k x_k + w_k,\ w_k \sim \mathcal N(0, Q_k);\qquad
           z_k = H x_k + v_k,\ v_k \sim \mathcal N(0, R);\qquad x_0 \sim \mathcal N(m_0, P_0).

Convention (pykalman's, filterpy's ``update_first=True``): ``m0, P0`` is the prior of the state at
the **first** measurement, so step 0 is an update without a predict. The Kalman smoother is the
exact posterior that Adaptive Filter Attention approximates; its weight matrix W (x̂ = W z + c) is
the "attention matrix" of the optimal linear estimator (Eq. (3.12)).

Glossary (code name → symbol in the book / Särkkä 2013)
-------------------------------------------------------
``N`` steps, ``n`` state dimension, ``p`` measurement dimension, ``...`` independent sequences.
``z`` (..., N, p)        measurements z_k; a row that is all NaN is a missing measurement.
``F`` (n, n) or (N-1, n, n)   transitions F_k (step k → k+1);  ``Q`` likewise: process noise Q_k.
``H`` (p, n), ``R`` (p, p)    measurement model.   ``m0`` (n,) or (..., n), ``P0`` (n, n): prior.
``m``, ``P``  (..., N, n), (..., N, n, n)   filtered means and covariances m_k, P_k (Eq. (3.3)).
``ms``, ``Ps``                              smoothed means and covariances m^s_k, P^s_k (Eq. (3.5)).
``K`` gain, ``S`` innovation covariance, ``G`` smoother gain.
``m_pred``, ``P_pred``   predicted moments m⁻_k, P⁻_k;  ``y`` innovation z_k − H m⁻_k
                         (returned with ``return_intermediates=True``, with the log-likelihood).

References
----------
.. [1] R. E. Kalman, "A new approach to linear filtering and prediction problems", 1960.
.. [2] H. E. Rauch, F. Tung, C. T. Striebel, "Maximum likelihood estimates of linear dynamic
       systems", AIAA Journal 3(8), 1965.
.. [3] S. Särkkä, *Bayesian Filtering and Smoothing*, CUP 2013, §4.3 and §8.2.
.. [4] S. Särkkä and Á. F. García-Fernández, "Temporal parallelization of Bayesian smoothers",
       IEEE Trans. Automatic Control 66(1), 2021, §IV (Lemmas 7–10).
.. [5] W. D. Hillis and G. L. Steele, "Data parallel algorithms", Commun. ACM 29(12), 1986.
.. [6] G. E. Blelloch, "Prefix sums and their applications", Tech. Rep. CMU-CS-90-190, 1990.
.. [7] G. J. Bierman, *Factorization Methods for Discrete Sequential Estimation*, Academic Press, 1977.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from . import sde as _sde
from ._blocking import per_block
from ._scan import _matmul, state_scan
from ._validate import (
    guard_overflow,
    as_bool,
    as_real_array,
    check_hermitian_psd,
    check_option,
    check_times,
)

__all__ = [
    "kalman_filter",
    "kalman_filter_loop",
    "kalman_filter_scan",
    "rts_smoother",
    "rts_smoother_loop",
    "rts_smoother_scan",
    "batch_smoother",
    "kalman_weight_matrix",
    "from_sde",
    "steady_state",
    "steady_state_loop",
    "MAX_DENSE",
]

#: ``batch_smoother`` and ``kalman_weight_matrix`` build dense (N·n) × (N·n) covariances; they refuse
#: N·max(n, p) above this (4096² float64 = 128 MiB per matrix) instead of exhausting memory.
MAX_DENSE = 4096


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------


def _sym(m: np.ndarray) -> np.ndarray:
    # covariances are symmetric by construction; averaging removes round-off asymmetry
    return 0.5 * (m + np.swapaxes(m, -1, -2))


def _check_cov(m, name: str, n: int, ref: str = "") -> np.ndarray:
    m = as_real_array(m, name, ndim=2)
    if m.shape != (n, n):
        raise ValueError(f"{name}: expected shape ({n}, {n}){ref}, got shape {m.shape}")
    check_hermitian_psd(m, name, rtol=1e-8)
    return _sym(m)


def _check_steps(m, name: str, n: int, n_steps: int, psd: bool) -> np.ndarray:
    """A per-step matrix: (n, n) shared by all steps, or (N-1, n, n); returned as (N-1, n, n)."""
    m = as_real_array(m, name, ndim=(2, 3))
    if m.ndim == 2:
        if m.shape != (n, n):
            raise ValueError(
                f"{name}: expected shape ({n}, {n}) or ({n_steps}, {n}, {n}) (n = the columns of H, one per step "
                f"of z), got shape {m.shape}"
            )
        if psd:
            m = _check_cov(m, name, n)
        return np.broadcast_to(m, (n_steps, n, n))
    if m.shape != (n_steps, n, n):
        raise ValueError(
            f"{name}: expected shape ({n}, {n}) or ({n_steps}, {n}, {n}) (n = the columns of H, one per step of z), "
            f"got shape {m.shape}"
        )
    if psd:
        for k in range(n_steps):
            try:
                check_hermitian_psd(m[k], name, rtol=1e-8)
            except ValueError as err:
                raise ValueError(f"{name}[{k}]" + str(err)[len(name):]) from None
        m = _sym(m)
    return m


def _check_z(z) -> tuple[np.ndarray, np.ndarray]:
    z = as_real_array(z, "z", finite=False)
    if z.ndim < 2:
        raise ValueError(f"z: expected measurements of shape (..., N, p), got shape {z.shape}")
    if z.shape[-2] == 0:
        raise ValueError(f"z: expected at least one measurement (N >= 1), got shape {z.shape}")
    if np.any(np.isinf(z)):
        raise ValueError("z: expected finite values or all-NaN rows (missing), got inf")
    nan = np.isnan(z)
    missing = np.all(nan, axis=-1)
    partial = np.any(nan, axis=-1) & ~missing
    if np.any(partial):
        idx = tuple(int(i) for i in np.argwhere(partial)[0])
        raise ValueError(
            f"z: a row with some NaN entries must be all NaN (a missing measurement); row {idx} is partly NaN"
        )
    return np.where(nan, 0.0, z), missing


def _check_model(z, F, H, Q, R, m0, P0):
    zf, missing = _check_z(z)
    N, p = zf.shape[-2:]
    H = as_real_array(H, "H", ndim=2)
    if H.shape[0] != p:
        raise ValueError(f"H: expected shape ({p}, n) to match z's p = {p}, got shape {H.shape}")
    n = H.shape[1]
    F = _check_steps(F, "F", n, N - 1, psd=False)
    Q = _check_steps(Q, "Q", n, N - 1, psd=True)
    R = _check_cov(R, "R", p, " (p = the rows of H and the width of z)")
    m0 = as_real_array(m0, "m0")
    if m0.ndim == 0 or m0.shape[-1] != n:
        raise ValueError(f"m0: expected shape ({n},) or (..., {n}), got shape {m0.shape}")
    try:
        m0 = np.broadcast_to(m0, zf.shape[:-2] + (n,))
    except ValueError:
        raise ValueError(f"m0: shape {m0.shape} does not broadcast to the batch shape {zf.shape[:-2]} + ({n},)") from None
    P0 = _check_cov(P0, "P0", n, " (n = the columns of H)")
    return zf, missing, F, H, Q, R, m0, P0


def _singular(what: str, hint: str = "") -> ValueError:
    return ValueError(
        f"{what} is singular: the model gives a zero-variance direction (e.g. R = 0 with a "
        f"noiseless state); add noise or remove the degenerate measurement{hint}"
    )


#: the scans condition each measurement on the previous state alone (see kalman_filter_scan)
_SCAN_HINT = "; or use kalman_filter / rts_smoother, which need only H P⁻ Hᵀ + R invertible"


def _inv(a: np.ndarray, what: str) -> np.ndarray:
    try:
        return np.linalg.inv(a)
    except np.linalg.LinAlgError:
        raise _singular(what) from None


def _solve(a: np.ndarray, b: np.ndarray, what: str, hint: str = "") -> np.ndarray:
    try:
        return np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        raise _singular(what, hint) from None


# ---------------------------------------------------------------------------------------------
# The recursion, Eqs. (3.2)-(3.5)
# ---------------------------------------------------------------------------------------------


def _update(m_prior, P_prior, z, H, R):
    """Kalman update, Eq. (3.3), batched over leading axes; Joseph form for the covariance.

    The Joseph form is PSD for any gain in exact arithmetic and insensitive to first-order errors
    in K; in floating point it can still come out slightly indefinite for a very ill-conditioned
    update (guaranteed PSD needs a square-root filter, Bierman 1977).
    """
    y = z - m_prior @ H.T  # y = z − H m⁻
    HP = H @ P_prior  # H P⁻, (..., p, n)
    S = _sym(HP @ H.T + R)  # S = H P⁻ Hᵀ + R
    K = np.swapaxes(_solve(S, HP, "the innovation covariance S = H P⁻ Hᵀ + R"), -1, -2)  # K = P⁻ Hᵀ S⁻¹
    m = m_prior + (K @ y[..., None])[..., 0]  # m = m⁻ + K y
    IKH = np.eye(H.shape[1]) - K @ H
    P = IKH @ P_prior @ np.swapaxes(IKH, -1, -2) + K @ R @ np.swapaxes(K, -1, -2)  # Joseph form
    return m, _sym(P)


_LOG_2PI = float(np.log(2.0 * np.pi))



def _filter_intermediates(zf, missing, F, H, Q, R, m0, P0, m, P) -> dict:
    """The step-by-step quantities of the filter, vectorized over N from the filtered moments.

    m⁻_k = F_{k−1} m_{k−1}, P⁻_k = F_{k−1} P_{k−1} F_{k−1}ᵀ + Q_{k−1} (the prior at k = 0),
    S_k = H P⁻_k Hᵀ + R, K_k = P⁻_k Hᵀ S_k⁻¹, y_k = z_k − H m⁻_k, and the prediction-error
    decomposition of the likelihood, log p(z) = Σ_k log N(y_k; 0, S_k) over observed steps.
    """
    N = zf.shape[-2]
    p = H.shape[0]
    m_pred, P_pred = np.empty_like(m), np.empty_like(P)
    m_pred[..., 0, :] = m0
    P_pred[..., 0, :, :] = P0
    if N > 1:
        m_pred[..., 1:, :] = (F @ m[..., :-1, :, None])[..., 0]  # m⁻_k = F m_{k−1}
        P_pred[..., 1:, :, :] = _sym(F @ P[..., :-1, :, :] @ np.swapaxes(F, -1, -2) + Q)  # P⁻ = F P Fᵀ + Q
    HP = H @ P_pred
    S = _sym(HP @ H.T + R)  # S = H P⁻ Hᵀ + R
    # a missing step applies no gain: solve with I there, so that only used S must be invertible
    S_used = np.where(missing[..., None, None], np.eye(p), S)
    K = np.swapaxes(_solve(S_used, HP, "the innovation covariance S = H P⁻ Hᵀ + R"), -1, -2)  # K = P⁻ Hᵀ S⁻¹
    K[missing] = 0.0
    y = zf - m_pred @ H.T  # y = z − H m⁻
    y[missing] = np.nan  # a missing step has no innovation
    try:
        L = np.linalg.cholesky(S_used)
    except np.linalg.LinAlgError:
        raise ValueError("the innovation covariance S = H P⁻ Hᵀ + R is not positive definite") from None
    w = np.linalg.solve(L, np.where(missing[..., None], 0.0, y)[..., None])[..., 0]  # L⁻¹ y
    logdet = 2.0 * np.sum(np.log(np.diagonal(L, axis1=-2, axis2=-1)), axis=-1)  # log det S
    terms = -0.5 * (np.sum(w * w, axis=-1) + logdet + p * _LOG_2PI)  # log N(y; 0, S)
    terms = np.where(missing, 0.0, terms)
    return {
        "m_pred": m_pred,
        "P_pred": P_pred,
        "S": S,
        "K": K,
        "y": y,
        "log_likelihood_terms": terms,
        "log_likelihood": np.sum(terms, axis=-1),
    }


def _smoother_gains(P, F, Q) -> np.ndarray:
    """G_k = P_k F_kᵀ (P⁻_{k+1})⁻¹, shape (..., N−1, n, n), Eq. (3.5)."""
    FP = F @ P[..., :-1, :, :]
    P_pred = _sym(FP @ np.swapaxes(F, -1, -2) + Q)
    return np.swapaxes(_solve(P_pred, FP, "the predicted covariance P⁻ = F P Fᵀ + Q"), -1, -2)


@guard_overflow(first_only=True)
def kalman_filter(z, F, H, Q, R, m0, P0, *, return_intermediates=False):
    r"""Filtered means and covariances ``p(x_k | z_0 … z_k) = N(m_k, P_k)``, Eqs. (3.2)–(3.3).

    Implements Eqs. (3.2)–(3.3) of the book (Kalman 1960; Särkkä 2013, Thm 4.2).

    Parameters
    ----------
    z : array_like, shape (..., N, p)
        Measurements; leading axes are independent sequences (vectorized). An all-NaN row is a
        missing measurement (predict only); a partly-NaN row is an error.
    F, Q : array_like, shape (n, n) or (N-1, n, n)
        Transition and process-noise covariance of step k → k+1 (step-dependent for irregular
        time stamps, see :func:`from_sde`). Q symmetric PSD.
    H : array_like, shape (p, n)
    R : array_like, shape (p, p)
        Symmetric PSD; ``S = H P⁻ Hᵀ + R`` must be invertible.
    m0 : array_like, shape (n,) or (..., n)
    P0 : array_like, shape (n, n)
        Prior of the state at the **first** measurement (step 0 is an update, no predict).
    return_intermediates : bool, default False
        Also return a dict of the quantities that other Kalman codes (filterpy, pykalman) expose
        step by step, all over the batch:
        ``"m_pred"`` (..., N, n) and ``"P_pred"`` (..., N, n, n): the predicted moments m⁻_k,
        P⁻_k (k = 0: the prior m0, P0); ``"S"`` (..., N, p, p): innovation covariances;
        ``"K"`` (..., N, n, p): gains, zero at a missing step (not applied); ``"y"`` (..., N, p):
        innovations z_k − H m⁻_k, NaN at a missing step; ``"log_likelihood_terms"`` (..., N):
        log N(z_k; H m⁻_k, S_k), 0 at a missing step; ``"log_likelihood"`` (...): their sum, the
        log-density log p(z) of the observed measurements (the prediction-error decomposition, §3.2
        of the book).

    Returns
    -------
    m : ndarray, shape (..., N, n)
    P : ndarray, shape (..., N, n, n)
    intermediates : dict, only if ``return_intermediates``

    Notes
    -----
    .. math::  m^-_k = F_{k-1} m_{k-1},\quad P^-_k = F_{k-1} P_{k-1} F_{k-1}^\top + Q_{k-1}
    .. math::  S_k = H P^-_k H^\top + R,\quad K_k = P^-_k H^\top S_k^{-1},\quad
               m_k = m^-_k + K_k (z_k - H m^-_k),
    .. math::  P_k = (I - K_k H) P^-_k (I - K_k H)^\top + K_k R K_k^\top \quad\text{(Joseph form)}.

    The recursion is sequential in time. The covariances and gains do not depend on the measured
    values, only on which measurements are missing, so they are computed once per missingness
    pattern and the means of all sequences advance together (matrix products over the batch).

    **Steady state** (§3.9 of the book). Where consecutive steps share (F, Q) and missingness,
    the covariance recursion is the Riccati map of Eq. (3.13), a contraction near its
    stabilizing fixed point: to first order, differences of the filtered covariance shrink as
    ΔP ↦ A ΔP Aᵀ with the closed-loop matrix A = (I − K H) F, ρ(A) < 1 (those of the prior
    covariance as ΔP⁻ ↦ A⁻ ΔP⁻ A⁻ᵀ with A⁻ = F (I − K H), which has the same eigenvalues). The
    settled test is Eq. (3.16) of the book. The change of P is measured entry by entry, each
    entry against its own scale √(P_ii P_jj) (a variance against itself, a covariance against its
    two variances), so that a small variance next to a large one — a velocity next to a position —
    must have stopped moving in units of its own rounding, not of max|P|'s. Once ``_PATIENCE`` =
    8 consecutive steps change every entry by at most 4 units of rounding of its scale, the bound
    change / (1 − ρ(A)²) on the distance left to the fixed point is within 64 such units, and P
    satisfies the Riccati equation in its plain form to 64 units (norm-wise), the rest of the
    stretch copies P and K — the values the recursion would reproduce up to its own rounding
    noise, so the results agree with :func:`kalman_filter_loop` to rounding (tested at 1e-10
    norm-wise, and entry by entry in a model whose variances differ by 2·10⁴ at ρ(A) = 0.99): the
    covariances and gains entry by entry to rounding amplified by the conditioning of the
    recursion, the means to rounding amplified by the conditioning of the mean recursion, about
    1/(1 − ρ(A)) (e.g. ≈ 5e-14 relative at ρ(A) = 0.999). (Measured against max|P| instead, the
    test could pass while a small entry still moved by ~10³ of its own units of rounding a step,
    and the copies ended ~10⁵ of them away from the loop's.) Slow convergence
    (ρ(A) → 1) fails the test as long as P still moves, and keeps the step-by-step path; if the
    floating-point recursion reaches an exact fixed point (a change of exactly 0), the test passes
    for any ρ(A) < 1, and the copies are then exactly what the loop computes. Time-varying F, Q
    (irregular grids) and alternating missing rows never form a stretch of identical steps.
    On the converged stretch the mean recursion m_k = (I − K H) F m_{k−1} + K z_k has constant
    coefficients and runs as the blocked two-level scan of :func:`refimpl._scan.state_scan`
    (§13.1), without a loop over steps.

    :func:`kalman_filter_scan` is the parallel-in-time form. The log-likelihood is the
    prediction-error decomposition ``log p(z) = Σ_k log N(z_k; H m⁻_k, S_k)``.

    Examples
    --------
    >>> F, H, Q, R = np.array([[1.0, 0.1], [0.0, 1.0]]), np.array([[1.0, 0.0]]), 0.01 * np.eye(2), np.array([[0.25]])
    >>> z = np.random.default_rng(0).normal(size=(6, 1))
    >>> m0, P0 = np.zeros(2), np.eye(2)
    >>> m, P = kalman_filter(z, F, H, Q, R, m0, P0)
    >>> m.shape, P.shape
    ((6, 2), (6, 2, 2))
    >>> z[2] = np.nan  # a missing measurement: predict only
    >>> bool(np.all(np.isfinite(kalman_filter(z, F, H, Q, R, m0, P0)[0])))
    True
    """
    flag = as_bool(return_intermediates, "return_intermediates")
    args = _check_model(z, F, H, Q, R, m0, P0)
    m, P = _filter(*args)
    return (m, P, _filter_intermediates(*args, m, P)) if flag else (m, P)


def _filter(zf, missing, F, H, Q, R, m0, P0, smooth=False):
    """The recursion of :func:`kalman_filter` (and, with ``smooth``, of :func:`rts_smoother`).

    The covariances and gains do not depend on the measured values — only on which rows are
    missing — so they are computed once per missingness pattern (:func:`_filter_covariances`,
    which also finds the stretches where they have converged), and the means of all sequences
    with that pattern advance together (:func:`_filter_means`). Returns ``(m, P)`` or, with
    ``smooth``, ``(m, P, ms, Ps)``.
    """
    batch, (N, p), n = zf.shape[:-2], zf.shape[-2:], H.shape[1]
    zb, mb = zf.reshape((-1, N, p)), missing.reshape((-1, N))
    m0b = np.broadcast_to(m0, batch + (n,)).reshape((-1, n))
    B = zb.shape[0]
    m = np.empty((B, N, n))
    ms = np.empty((B, N, n)) if smooth else None
    P = Ps = None
    groups = list(_pattern_groups(mb))
    for pattern, members in groups:
        P_g, K, runs = _filter_covariances(pattern, F, H, Q, R, P0)
        m[members] = _filter_means(zb[members], m0b[members], F, H, K, pattern, runs)
        if smooth:
            Ps_g, gains = _smoother_covariances(P_g, F, Q, runs)
            ms[members] = _smoother_means(m[members], F, gains)
        if len(groups) == 1:  # one pattern (always so for one sequence): no scatter by member
            P = np.repeat(P_g[None], B, axis=0) if B > 1 else P_g[None]
            Ps = (np.repeat(Ps_g[None], B, axis=0) if B > 1 else Ps_g[None]) if smooth else None
            continue
        if P is None:
            P = np.empty((B, N, n, n))
            Ps = np.empty((B, N, n, n)) if smooth else None
        P[members] = P_g
        if smooth:
            Ps[members] = Ps_g
    out = (m.reshape(batch + (N, n)), P.reshape(batch + (N, n, n)))
    if smooth:
        out += (ms.reshape(batch + (N, n)), Ps.reshape(batch + (N, n, n)))
    return out


def _pattern_groups(mb):
    """Yield ``(pattern, members)``: each distinct missingness row of ``mb`` (B, N) and its rows."""
    if mb.shape[0] == 1:
        yield mb[0], np.zeros(1, dtype=np.intp)
        return
    keys = np.packbits(mb, axis=1)  # one byte string per sequence: cheap to compare
    keys = np.ascontiguousarray(keys).view(np.dtype((np.void, keys.shape[1]))).reshape(-1)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    for g, row in enumerate(first):
        yield mb[row], np.flatnonzero(inverse.reshape(-1) == g)


# ---------------------------------------------------------------------------------------------
# Steady state inside the recursion: where the covariances stop changing
# ---------------------------------------------------------------------------------------------

#: a stretch of identical steps is declared converged after this many consecutive steps …
_PATIENCE = 8
#: … each changing every entry P_ij by at most this many units of rounding of its own scale
#: √(P_ii P_jj) (:func:`_scaled_change`) …
_CALM = 4.0
#: … and the distance left to the fixed point, change / (1 − ρ²), is within this many units
_REACH = 64.0
_EPS = float(np.finfo(np.float64).eps)
#: constant-map stretches at least this long run the blocked scan instead of a loop over steps
_SCAN_MIN = 32


def _same_step(M: np.ndarray) -> np.ndarray:
    """``M[k] == M[k−1]`` for k = 1 … len−1 (bool, len−1); free for a broadcast (time-invariant) M."""
    if M.shape[0] < 2:
        return np.zeros(0, dtype=bool)
    if M.strides[0] == 0:
        return np.ones(M.shape[0] - 1, dtype=bool)
    return np.all(M[1:] == M[:-1], axis=(1, 2))


def _step_starts(pattern, F, Q) -> np.ndarray:
    """Steps whose covariance map differs from the previous step's, sorted, with N appended.

    Step k ≥ 1 maps P_{k−1} to P_k through (F_{k−1}, Q_{k−1}) and, if z_k is observed, the
    update; step 0 is the update of the prior alone. Between two consecutive entries the map is
    one and the same, so the Riccati recursion there is time-invariant and can converge.
    """
    N = pattern.shape[0]
    new = np.ones(N, dtype=bool)
    if N > 2:
        new[2:] = (pattern[2:] != pattern[1:-1]) | ~_same_step(F) | ~_same_step(Q)
    return np.append(np.flatnonzero(new), N)


def _spectral_radius(A: np.ndarray) -> float:
    return float(np.max(np.abs(np.linalg.eigvals(A))))


def _scaled_change(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """max_ij |X_ij − Y_ij| / √(Y_ii Y_jj) over the last two axes: a change measured entry by entry.

    Each entry of a covariance is measured against its own scale √(Y_ii Y_jj) (≥ |Y_ij| for a
    PSD Y): a variance against itself, a covariance against the geometric mean of its two
    variances. Unlike a change relative to max|Y|, this does not depend on the units of the state
    components: a small variance (a velocity next to a position, say) must be still in units of
    its own rounding, not of the largest entry's. A change of an entry whose scale is 0 counts
    as infinite (0 if the entry did not change).
    """
    d = np.sqrt(np.abs(np.diagonal(Y, axis1=-2, axis2=-1)))
    diff = np.abs(X - Y)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = diff / (d[..., :, None] * d[..., None, :])
    return np.max(np.where(diff == 0.0, 0.0, r), axis=(-2, -1))


def _settled(recent_change: float, A: np.ndarray) -> bool:
    """True when a recursion X ← A X Aᵀ + const has reached its fixed point to rounding.

    ``recent_change`` is the largest change of the last ``_PATIENCE`` steps, each measured entry
    by entry against √(X_ii X_jj) (:func:`_scaled_change`) and already at most ``_CALM`` = 4 units
    of rounding. Differences contract by ρ(A)² per step (in the scaled entries too: D⁻¹ A D has the
    eigenvalues of A), so the distance left to the fixed point is at most about change / (1 − ρ²):
    the test asks that this bound be within ``_REACH`` = 64 units of rounding of every entry's
    scale — the fixed point is reached, not merely approached slowly (as ρ → 1 only a change of
    exactly 0, an exact floating-point fixed point, passes).
    """
    rho = _spectral_radius(A)
    if not rho < 1.0:
        return False
    return recent_change <= _REACH * _EPS * (1.0 - rho * rho)


def _filter_covariances(pattern, F, H, Q, R, P0):
    """Filtered covariances P_k (N, n, n), gains K_k (N, n, p; zero where missing), Eq. (3.3),
    and the converged stretches ``runs``: ``(a, b)`` with P_k = P_a and K_k = K_a for a ≤ k < b.

    The recursion runs step by step until, inside a stretch of identical steps (same F, Q and
    missingness, :func:`_step_starts`), P stops changing: ``_PATIENCE`` consecutive steps change
    each entry by no more than a few units of rounding of its own scale √(P_ii P_jj)
    (:func:`_scaled_change`), scaled by the contraction 1 − ρ² of the closed-loop
    map A = (I − K H) F (:func:`_settled`), and P satisfies the Riccati equation of the stretch.
    The rest of the stretch is then the fixed point: P_k and K_k are copies, and the mean
    recursion there is time-invariant (a blocked scan in :func:`_filter_means`).
    """
    N, (p, n) = pattern.shape[0], H.shape
    P = np.empty((N, n, n))
    K = np.zeros((N, n, p))
    I = np.eye(n)
    starts = _step_starts(pattern, F, Q)
    runs = []
    C = P0
    calm, recent, seg = 0, 0.0, 0  # seg: index into starts of the stretch containing k
    k = 0
    while k < N:
        if k >= starts[seg + 1]:
            seg += 1
            calm, recent = 0, 0.0
        if k > 0:
            C = F[k - 1] @ P[k - 1] @ F[k - 1].T + Q[k - 1]  # P⁻ = F P Fᵀ + Q
            C = 0.5 * (C + C.T)
        if not pattern[k]:
            HC = H @ C
            S = HC @ H.T + R  # S = H P⁻ Hᵀ + R
            K[k] = _solve(0.5 * (S + S.T), HC, "the innovation covariance S = H P⁻ Hᵀ + R").T  # K = P⁻ Hᵀ S⁻¹
            IKH = I - K[k] @ H
            C = IKH @ C @ IKH.T + K[k] @ R @ K[k].T  # Joseph form
            C = 0.5 * (C + C.T)
        P[k] = C
        end = starts[seg + 1]
        if k > starts[seg]:  # the same map as the step before: measure how much P still moves
            change = float(_scaled_change(P[k - 1], C))  # entry by entry, against √(P_ii P_jj)
            if change <= _CALM * _EPS:
                calm, recent = calm + 1, max(recent, change)
            else:
                calm, recent = 0, 0.0
            if calm >= _PATIENCE and end - k > 1:
                A = (I - K[k] @ H) @ F[k - 1]  # the closed-loop map of the mean (F where missing)
                if _settled(recent, A) and _riccati_residual(C, F[k - 1], H, Q[k - 1], R, pattern[k]) <= 64 * _EPS:
                    P[k + 1 : end] = C
                    K[k + 1 : end] = K[k]
                    runs.append((k, end))
                    k = end
                    continue
                calm, recent = 0, 0.0  # not yet: look again after another _PATIENCE steps
        k += 1
    return P, K, runs


def _riccati_residual(P, F, H, Q, R, gone) -> float:
    """Relative residual of the fixed-point equation of one step, in the plain (non-Joseph) form.

    Observed: P = (I − K H) P⁻ with P⁻ = F P Fᵀ + Q and K = P⁻ Hᵀ (H P⁻ Hᵀ + R)⁻¹ (the Riccati
    equation, Eq. (3.13), written for the filtered covariance); missing: P = F P Fᵀ + Q (the
    discrete Lyapunov equation). An independent check of the fixed point the Joseph-form
    recursion has settled on.
    """
    Pp = F @ P @ F.T + Q
    if gone:
        new = Pp
    else:
        HP = H @ Pp
        new = Pp - HP.T @ np.linalg.solve(HP @ H.T + R, HP)
    return float(np.max(np.abs(new - P)) / max(np.max(np.abs(P)), 1e-300))


def _tall_product(X: np.ndarray, W: np.ndarray) -> np.ndarray:
    """``X @ Wᵀ`` for X (..., M, k) with M large and W (n, k) small, in blocks of rows.

    Each block is one BLAS product of about ``WORKSPACE_FLOATS / 2`` multiply-adds, cache-sized.
    A single (M × k)·(k × n) product with M ~ 10⁵ and k, n ≤ 32 is what a multithreaded BLAS
    splits over threads, and on a loaded machine that split costs up to 100× the arithmetic
    (measured with OpenBLAS: 100 ms against 0.5 ms single-threaded for M = 65536, k = n = 4);
    blocks this small are run by one thread.
    """
    lead, (M, k) = X.shape[:-2], X.shape[-2:]
    n = W.shape[0]
    Wt = np.ascontiguousarray(W.T)
    out = np.empty(lead + (M, n))
    rows = per_block(2 * k * n)
    for r0 in range(0, M, rows):  # a loop over blocks of rows, not over steps
        np.matmul(X[..., r0 : r0 + rows, :], Wt, out=out[..., r0 : r0 + rows, :])
    return out


def _filter_means(z, m0, F, H, K, pattern, runs):
    """Filtered means (L, N, n) of the L sequences ``z`` (L, N, p) that share one pattern.

    Step by step where the gains change (m = m⁻ + K (z − H m⁻), the rows of all sequences at
    once); on each converged stretch the recursion is the time-invariant
    m_k = (I − K H) F m_{k−1} + K z_k, solved by the blocked two-level scan
    :func:`refimpl._scan.state_scan` (matrix products over blocks, no loop over steps).
    """
    L, N = z.shape[:2]
    n = F.shape[-1]
    m = np.empty((L, N, n))
    x = m0
    k = 0
    for a, b in runs + [(N, N)]:
        stop = a if b - a >= _SCAN_MIN else b
        while k < stop:  # the steps where the gain still changes (and short stretches)
            if k > 0:
                x = x @ F[k - 1].T  # m⁻ = F m
            if not pattern[k]:
                x = x + (z[:, k] - x @ H.T) @ K[k].T  # m = m⁻ + K (z − H m⁻)
            m[:, k] = x
            k += 1
        if k < b:  # a converged stretch: m_k = A m_{k−1} + K z_k with constant A, K, a ≥ 1
            A = (np.eye(n) - K[a] @ H) @ F[a - 1]  # A = (I − K H) F (= F where missing)
            U = np.zeros((b - a + 1, n, L))
            U[:-1] = np.transpose(_tall_product(z[:, a:b], K[a]), (1, 2, 0))  # u_k = K z_k
            S = state_scan(A, U, m[:, a - 1].T)  # S_j = m_{a−1+j}
            m[:, a:b] = np.transpose(S[1:], (2, 0, 1))
            x = m[:, b - 1]
            k = b
    return m


def _smoother_covariances(P, F, Q, runs):
    """Smoothed covariances P^s_k (N, n, n) and the smoother gains, Eq. (3.5), backwards.

    Returns ``(Ps, gains)`` with ``gains`` a list of ``(a, b, G)``, latest first: G (n, n) is the
    gain of every step a ≤ k < b (one step where it changes, a whole stretch where the filter has
    converged). On a converged filter stretch (a, b) of :func:`_filter_covariances`, P_k, F_k
    and Q_k are the same for a ≤ k < b − 1, so G_k = P_k F_kᵀ (P⁻_{k+1})⁻¹ is one matrix there,
    and P^s_k = P_k + G (P^s_{k+1} − P⁻) Gᵀ is a time-invariant recursion (backwards, contracting
    by ρ(G)²): it runs until it has settled (:func:`_settled`), then the rest are copies.
    """
    N = P.shape[0]
    Ps = np.empty_like(P)
    Ps[N - 1] = P[N - 1]
    flat = {b - 1: a for a, b in runs if b - 1 - a >= 2}  # last step of a constant-gain stretch → its first
    gains = []
    k = N - 2
    while k >= 0:
        FP = F[k] @ P[k]
        P_pred = FP @ F[k].T + Q[k]  # P⁻_{k+1} = F P_k Fᵀ + Q
        P_pred = 0.5 * (P_pred + P_pred.T)
        G = _solve(P_pred, FP, "the predicted covariance P⁻ = F P Fᵀ + Q").T  # G = P Fᵀ (P⁻)⁻¹
        a = flat.get(k + 1, k)  # (the stretch's gain holds for k ≤ b − 2)
        calm, recent = 0, 0.0
        j = k
        while j >= a:
            C = P[j] + G @ (Ps[j + 1] - P_pred) @ G.T  # P^s = P + G (P^s_{k+1} − P⁻) Gᵀ
            Ps[j] = 0.5 * (C + C.T)
            if j < k:
                change = float(_scaled_change(Ps[j + 1], Ps[j]))  # entry by entry, against √(P_ii P_jj)
                if change <= _CALM * _EPS:
                    calm, recent = calm + 1, max(recent, change)
                else:
                    calm, recent = 0, 0.0
                if calm >= _PATIENCE:
                    if _settled(recent, G):
                        Ps[a:j] = Ps[j]
                        break
                    calm, recent = 0, 0.0
            j -= 1
        gains.append((a, k + 1, G))
        k = a - 1
    return Ps, gains


def _smoother_means(m, F, gains):
    """Smoothed means (L, N, n) from the filtered means ``m`` (L, N, n), Eq. (3.5), backwards.

    m^s_k = m_k + G_k (m^s_{k+1} − F_k m_k) = G_k m^s_{k+1} + (I − G_k F_k) m_k: step by step
    where the gain changes, and on a constant-gain stretch a time-invariant recursion in reverse
    time, solved by :func:`refimpl._scan.state_scan`.
    """
    L, N, n = m.shape
    ms = np.empty_like(m)
    ms[:, N - 1] = m[:, N - 1]
    for a, b, G in gains:  # latest first; the steps a ≤ k < b share G
        if b - a < _SCAN_MIN:
            for k in range(b - 1, a - 1, -1):
                m_k = m[:, k]
                ms[:, k] = m_k + (ms[:, k + 1] - m_k @ F[k].T) @ G.T  # m^s = m + G (m^s_{k+1} − F m)
            continue
        M = b - a + 1
        U = np.zeros((M, n, L))
        c = _tall_product(m[:, a:b], np.eye(n) - G @ F[a])  # c_k = (I − G F) m_k, (L, b − a, n)
        U[:-1] = np.transpose(c[:, ::-1], (1, 2, 0))  # in reverse time
        S = state_scan(G, U, ms[:, b].T)  # S_j = m^s_{b−j}
        ms[:, a:b] = np.transpose(S[:0:-1], (2, 0, 1))
    return ms


@guard_overflow(first_only=True)
def kalman_filter_loop(z, F, H, Q, R, m0, P0, *, return_intermediates=False):
    """Loop twin of :func:`kalman_filter`: the textbook recursion, one sequence and one step at a time.

    With ``return_intermediates`` the predicted moments, S, K, innovations and log-likelihood
    terms are recorded inside the loop, where the recursion forms them.

    Examples
    --------
    >>> F, H, Q, R = np.array([[1.0, 0.1], [0.0, 1.0]]), np.array([[1.0, 0.0]]), 0.01 * np.eye(2), np.array([[0.25]])
    >>> z = np.random.default_rng(0).normal(size=(6, 1))
    >>> m0, P0 = np.zeros(2), np.eye(2)
    >>> all(np.allclose(a, b) for a, b in zip(kalman_filter_loop(z, F, H, Q, R, m0, P0), kalman_filter(z, F, H, Q, R, m0, P0)))
    True
    """
    flag = as_bool(return_intermediates, "return_intermediates")
    m, P, extra = _filter_loop(*_check_model(z, F, H, Q, R, m0, P0))
    return (m, P, extra) if flag else (m, P)


def _filter_loop(zf, missing, F, H, Q, R, m0, P0):
    """The recursion of :func:`kalman_filter_loop` on validated inputs; returns (m, P, intermediates)."""
    batch, (N, p), n = zf.shape[:-2], zf.shape[-2:], H.shape[1]
    zf, missing, m0 = zf.reshape((-1, N, p)), missing.reshape((-1, N)), m0.reshape((-1, n))
    B = zf.shape[0]
    m, P = np.empty((B, N, n)), np.empty((B, N, n, n))
    m_pred, P_pred = np.empty((B, N, n)), np.empty((B, N, n, n))
    S_all, K_all = np.empty((B, N, p, p)), np.zeros((B, N, n, p))
    y_all, terms = np.full((B, N, p), np.nan), np.zeros((B, N))
    I = np.eye(n)
    for b in range(B):
        for k in range(N):
            if k == 0:
                x, C = m0[b], P0  # the prior at the first measurement: no predict
            else:
                x = F[k - 1] @ m[b, k - 1]  # m⁻ = F m
                C = F[k - 1] @ P[b, k - 1] @ F[k - 1].T + Q[k - 1]  # P⁻ = F P Fᵀ + Q
                C = 0.5 * (C + C.T)
            m_pred[b, k], P_pred[b, k] = x, C
            S = H @ C @ H.T + R  # S = H P⁻ Hᵀ + R
            S = 0.5 * (S + S.T)
            S_all[b, k] = S
            if not missing[b, k]:
                y = zf[b, k] - H @ x  # y = z − H m⁻
                K = _solve(S, H @ C, "the innovation covariance S = H P⁻ Hᵀ + R").T  # K = P⁻ Hᵀ S⁻¹
                # log N(y; 0, S) = −½ (yᵀ S⁻¹ y + log det S + p log 2π)
                sign, logdet = np.linalg.slogdet(S)
                if sign <= 0:
                    raise ValueError("the innovation covariance S = H P⁻ Hᵀ + R is not positive definite")
                terms[b, k] = -0.5 * (y @ np.linalg.solve(S, y) + logdet + p * _LOG_2PI)
                y_all[b, k], K_all[b, k] = y, K
                x = x + K @ y  # m = m⁻ + K y
                C = (I - K @ H) @ C @ (I - K @ H).T + K @ R @ K.T  # P = (I−KH) P⁻ (I−KH)ᵀ + K R Kᵀ
                C = 0.5 * (C + C.T)
            m[b, k], P[b, k] = x, C
    extra = {
        "m_pred": m_pred.reshape(batch + (N, n)),
        "P_pred": P_pred.reshape(batch + (N, n, n)),
        "S": S_all.reshape(batch + (N, p, p)),
        "K": K_all.reshape(batch + (N, n, p)),
        "y": y_all.reshape(batch + (N, p)),
        "log_likelihood_terms": terms.reshape(batch + (N,)),
        "log_likelihood": terms.sum(axis=-1).reshape(batch),
    }
    return m.reshape(batch + (N, n)), P.reshape(batch + (N, n, n)), extra


@guard_overflow(first_only=True)
def rts_smoother(z, F, H, Q, R, m0, P0, *, return_intermediates=False):
    r"""Smoothed means and covariances ``p(x_k | z_0 … z_{N-1}) = N(m^s_k, P^s_k)``, Eq. (3.5).

    Implements Eqs. (3.2)–(3.5) of the book (Rauch, Tung & Striebel 1965; Särkkä 2013, Thm 8.2):
    the filter forward, then

    .. math::  G_k = P_k F_k^\top (P^-_{k+1})^{-1},\quad
               m^s_k = m_k + G_k (m^s_{k+1} - F_k m_k),\quad
               P^s_k = P_k + G_k (P^s_{k+1} - P^-_{k+1}) G_k^\top.

    Parameters and shapes as in :func:`kalman_filter`. Returns ``ms`` (..., N, n) and
    ``Ps`` (..., N, n, n). ``P⁻_{k+1}`` must be invertible (it is whenever Q ≻ 0 or F P F^T ≻ 0).
    With ``return_intermediates=True`` a third output is the dict of :func:`kalman_filter`'s
    intermediates plus the filtered moments ``"m"``, ``"P"`` and the smoother gains ``"G"``
    (..., N−1, n, n).

    Where the filter has reached its steady state (see :func:`kalman_filter`), G is one matrix,
    the backward covariance recursion is a contraction (by ρ(G)²) stopped by the same test
    (Eq. (3.16)) once settled, and the backward mean recursion m^s_k = G m^s_{k+1} + (I − G F) m_k runs as a
    blocked scan in reverse time — in the interior of a long stationary sequence, the Wiener
    smoother of Eq. (3.15).

    Examples
    --------
    >>> F, H, Q, R = np.array([[1.0, 0.1], [0.0, 1.0]]), np.array([[1.0, 0.0]]), 0.01 * np.eye(2), np.array([[0.25]])
    >>> z = np.random.default_rng(0).normal(size=(6, 1))
    >>> m0, P0 = np.zeros(2), np.eye(2)
    >>> (m, P), (mf, Pf) = rts_smoother(z, F, H, Q, R, m0, P0), kalman_filter(z, F, H, Q, R, m0, P0)
    >>> bool(np.allclose(m[-1], mf[-1]))  # at the last step smoothing adds nothing
    True
    >>> bool(np.all(P[:, 0, 0] <= Pf[:, 0, 0] + 1e-15))  # and elsewhere it can only reduce the variance
    True
    """
    flag = as_bool(return_intermediates, "return_intermediates")
    args = _check_model(z, F, H, Q, R, m0, P0)
    m, P, ms, Ps = _filter(*args, smooth=True)
    if not flag:
        return ms, Ps
    extra = _filter_intermediates(*args, m, P)
    extra.update(m=m, P=P, G=_smoother_gains(P, args[2], args[4]))
    return ms, Ps, extra


@guard_overflow(first_only=True)
def rts_smoother_loop(z, F, H, Q, R, m0, P0, *, return_intermediates=False):
    """Loop twin of :func:`rts_smoother`: filter loop, then the backward recursion step by step.

    Examples
    --------
    >>> F, H, Q, R = np.array([[1.0, 0.1], [0.0, 1.0]]), np.array([[1.0, 0.0]]), 0.01 * np.eye(2), np.array([[0.25]])
    >>> z = np.random.default_rng(0).normal(size=(6, 1))
    >>> m0, P0 = np.zeros(2), np.eye(2)
    >>> all(np.allclose(a, b) for a, b in zip(rts_smoother_loop(z, F, H, Q, R, m0, P0), rts_smoother(z, F, H, Q, R, m0, P0)))
    True
    """
    flag = as_bool(return_intermediates, "return_intermediates")
    zf, missing, F, H, Q, R, m0, P0 = _check_model(z, F, H, Q, R, m0, P0)
    m_out, P_out, extra = _filter_loop(zf, missing, F, H, Q, R, m0, P0)
    batch, (N, n) = m_out.shape[:-2], m_out.shape[-2:]
    m, P = m_out.reshape((-1, N, n)), P_out.reshape((-1, N, n, n))
    ms, Ps = np.empty_like(m), np.empty_like(P)
    Gs = np.empty((m.shape[0], max(N - 1, 0), n, n))
    for b in range(m.shape[0]):
        ms[b, N - 1], Ps[b, N - 1] = m[b, N - 1], P[b, N - 1]
        for k in range(N - 2, -1, -1):
            m_pred = F[k] @ m[b, k]  # m⁻_{k+1} = F m_k
            P_pred = F[k] @ P[b, k] @ F[k].T + Q[k]  # P⁻_{k+1} = F P_k Fᵀ + Q
            P_pred = 0.5 * (P_pred + P_pred.T)
            G = _solve(P_pred, F[k] @ P[b, k], "the predicted covariance P⁻ = F P Fᵀ + Q").T  # G = P Fᵀ (P⁻)⁻¹
            ms[b, k] = m[b, k] + G @ (ms[b, k + 1] - m_pred)  # m^s = m + G (m^s_{k+1} − m⁻)
            C = P[b, k] + G @ (Ps[b, k + 1] - P_pred) @ G.T  # P^s = P + G (P^s_{k+1} − P⁻) Gᵀ
            Ps[b, k] = 0.5 * (C + C.T)
            Gs[b, k] = G
    ms, Ps = ms.reshape(batch + (N, n)), Ps.reshape(batch + (N, n, n))
    if not flag:
        return ms, Ps
    extra.update(m=m_out, P=P_out, G=Gs.reshape(batch + (max(N - 1, 0), n, n)))
    return ms, Ps, extra


# ---------------------------------------------------------------------------------------------
# Parallel-in-time form (Särkkä & García-Fernández 2021), Eqs. (3.6)-(3.9)
# ---------------------------------------------------------------------------------------------


def _T(a):
    return np.swapaxes(a, -1, -2)


def _Tc(a):
    """The transpose as a contiguous array: a transposed view as the right factor of a tall product
    takes a path of NumPy/OpenBLAS that is up to 1000× slower (measured: (10⁴, 8) · (8, 8)ᵀ)."""
    return np.ascontiguousarray(np.swapaxes(a, -1, -2))


def _combine_types(Xi, Xj, I):
    """The data-independent half of a_i ⊗ a_j, Eq. (3.7) (Särkkä & García-Fernández 2021, Lemma 8).

    ``Xi``, ``Xj`` (k, 3, n, n) hold (A, C, J) of a_i and a_j, stacked; ``I`` is the n × n
    identity. Returns (A, C, J)_ij stacked likewise, and the two (2n × 2n) matrices ``W1``,
    ``W2`` that carry the data half (:func:`_combine_data`). With M = A_j (I + C_i J_j)⁻¹ and
    N = A_iᵀ (I + J_j C_i)⁻¹: C and J are symmetric, so I + J_j C_i = (I + C_i J_j)ᵀ and both
    come out of one batched inverse, Mᵀ = (I + J_j C_i)⁻¹ A_jᵀ and Nᵀ = (I + C_i J_j)⁻¹ A_i; the
    terms M C_i A_jᵀ and N J_j A_i of C_ij and J_ij are then one batched product of the stacked
    (M C_i, N J_j) with the stacked right-hand sides (A_jᵀ, A_i).
    """
    k, n = Xi.shape[0], Xi.shape[-1]
    Ai, Ci, Ji, Aj, Cj, Jj = Xi[:, 0], Xi[:, 1], Xi[:, 2], Xj[:, 0], Xj[:, 1], Xj[:, 2]
    X = Ci @ Jj
    X += I  # I + C_i J_j
    R = np.concatenate([Aj.mT, Ai])  # the right-hand sides Aⱼᵀ and A_i, (2k, n, n)
    # one batched inverse and two products: the whole scan took 18% less time at n = 8, N = 10⁴ than
    # with one batched solve of the 2k systems. I + C_i J_j is similar to I + C^½ J C^½ (C, J symmetric
    # positive semidefinite), so its eigenvalues are >= 1 — but it is not normal: rescaling the state by
    # D turns it into D (I + C_i J_j) D⁻¹, so on a state whose components' scales differ by a factor d its
    # condition number can grow like d² (to 1e8 … 3e9 at d = 2¹⁶ in the eight models of §3.9 of the book,
    # against below 20 unscaled), which can cost the scan accuracy there (§3.9;
    # test_badly_scaled_state_over_eight_models)
    Xinv = _inv(X, "I + C_i J_j in the filtering scan")
    Mt, Nt = Xinv.mT @ R[:k], Xinv @ Ai  # (I + J_j C_i)⁻¹ = ((I + C_i J_j)⁻¹)ᵀ
    M = Mt.mT
    out = np.empty_like(Xi)
    np.matmul(M, Ai, out=out[:, 0])  # A_ij = A_j (I + C_i J_j)⁻¹ A_i
    Y = np.empty((2, k, n, n))
    np.matmul(M, Ci, out=Y[0])  # M C_i and N J_j, each used twice
    np.matmul(Nt.mT, Jj, out=Y[1])
    S = Y @ R.reshape(2, k, n, n)  # M C_i A_jᵀ and N J_j A_i, one batched product
    S[0] += Cj  # C_ij = A_j (I + C_i J_j)⁻¹ C_i A_jᵀ + C_j
    S[1] += Ji  # J_ij = A_iᵀ (I + J_j C_i)⁻¹ J_j A_i + J_i
    CJ = out[:, 1:].transpose(1, 0, 2, 3)  # (C, J)_ij as (2, k, n, n), a view
    np.add(S, S.mT, out=CJ)  # symmetrized: the average with the transpose
    CJ *= 0.5
    # the data half in rows [b, η]: [b, η]_ij = [b, η]_i W1 + [b, η]_j W2 (C, J symmetric)
    W1, W2 = np.zeros((2, k, 2 * n, 2 * n))
    W1[:, :n, :n] = Mt  # b_i Mᵀ
    np.negative(Y[1].mT, out=W1[:, :n, n:])  # −b_i J_j Nᵀ
    W1[:, n:, n:] = I  # η_i
    W2[:, :n, :n] = I  # b_j
    W2[:, n:, :n] = Y[0].mT  # η_j C_i Mᵀ
    W2[:, n:, n:] = Nt  # η_j Nᵀ
    return out, W1, W2


def _combine_data(Zi, Zj, W1, W2, out, tmp=None):
    """The data half of a_i ⊗ a_j, Eq. (3.7), for rows Z = [b, η] of L sequences (…, L, 2n).

    b_ij = M (b_i + C_i η_j) + b_j  and  η_ij = N (η_j − J_j b_i) + η_i are, in rows,

        [b, η]_ij = [b, η]_i W1 + [b, η]_j W2,   W1 = [[Mᵀ, −J_j Nᵀ], [0, I]],   W2 = [[I, 0], [C_i Mᵀ, Nᵀ]],

    two products and a sum (``W`` from :func:`_combine_types`). With one pair (W1, W2) for all
    rows (2-D W) the products are flat (rows × 2n) · (2n × 2n), cut into pieces that a busy
    machine's BLAS runs on one thread (:func:`refimpl._scan._matmul`); otherwise batched over rows
    with W (rows, 2n, 2n). A prefix a_i (A_i = 0, J_i = 0, η_i = 0) has N = 0, so η_ij = 0.
    ``tmp`` (shaped like ``out``) is scratch space for the second product: the scan calls this in
    every sweep, and a fresh array as long as the sequence each time costs page faults.
    """
    if W1.ndim == 2:
        w = Zi.shape[-1]
        Zi, Zj, out = Zi.reshape(-1, w), Zj.reshape(-1, w), out.reshape(-1, w)
        _matmul(Zi, W1, out=out)
        out += _matmul(Zj, W2, out=None if tmp is None else tmp.reshape(-1, w))
    else:
        np.matmul(Zi, W1, out=out)
        out += Zj @ W2


#: in one sweep of :func:`_typed_scan`, a run of at least this many consecutive elements with the
#: same pair of types (or a pair shared by this many elements) gets its own matrix products;
#: rarer pairs are gathered into one batched product
_SHARED = 64


def _runs(x: np.ndarray) -> np.ndarray:
    """Starts of the runs of equal consecutive entries of a 1-D array (at least one entry)."""
    starts = (x[1:] != x[:-1]).nonzero()[0]
    starts += 1
    return np.concatenate([[0], starts])


def _distinct(x: np.ndarray, bound: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values of a short 1-D integer array and the index of each entry among them
    (``np.unique(x, return_inverse=True)`` without its overhead, which dominates for a few dozen entries).

    With ``bound`` (all entries in 0 … bound − 1) at most :data:`_TABLE` the values are marked in
    a table of that length (no sort); otherwise they are sorted.
    """
    if bound is not None and bound <= _TABLE:
        mark = np.zeros(bound, dtype=np.intp)
        mark[x] = 1
        u = mark.nonzero()[0]
        mark[u] = np.arange(u.size)
        return u, mark[x]
    order = np.argsort(x, kind="stable")
    xs = x[order]
    new = np.empty(xs.shape[0], dtype=bool)
    new[0] = True
    np.not_equal(xs[1:], xs[:-1], out=new[1:])
    inv = np.empty(xs.shape[0], dtype=np.intp)
    inv[order] = np.cumsum(new) - 1
    return xs[new], inv


#: the longest table :func:`_distinct` marks values in
_TABLE = 4096


def _expand(rs: np.ndarray, rv: np.ndarray, a: int, b: int) -> np.ndarray:
    """The types of elements a … b−1 from the runs (starts ``rs``, types ``rv``)."""
    if b <= a:
        return rv[:0]
    i0, i1 = rs.searchsorted(a, "right") - 1, rs.searchsorted(b, "left")
    ends = np.concatenate([rs[i0 + 1 : i1], [b]])
    s = rs[i0:i1].copy()
    s[0] = a
    return np.repeat(rv[i0:i1], ends - s)


def _assign(rs: np.ndarray, rv: np.ndarray, a: int, b: int, t, N: int) -> tuple[np.ndarray, np.ndarray]:
    """The runs after elements a … b−1 (of N) are given type ``t``, merged where neighbours agree."""
    if b <= a:
        return rs, rv
    lo, hi = rs.searchsorted(a, "left"), rs.searchsorted(b, "right")  # runs before a; from b on
    s, v = [rs[:lo], [a]], [rv[:lo], [t]]
    if b < N:  # the run that contains b now starts there
        s += [[b], rs[hi:]]
        v += [rv[hi - 1 : hi], rv[hi:]]
    s, v = np.concatenate(s).astype(rs.dtype), np.concatenate(v).astype(rv.dtype)
    keep = np.empty(v.shape[0], dtype=bool)
    keep[0] = True
    np.not_equal(v[1:], v[:-1], out=keep[1:])
    return s[keep], v[keep]


def _pair_runs(rs, rv, step: int, m: int, T: int):
    """The runs of the pairs (kind of element r, kind of element r + step), r = 0 … m − 1, from the
    runs of the elements (starts ``rs``, kinds ``rv`` < T): a new run wherever either kind changes.
    Returns the runs' starts and lengths, the kind of each run's left element, the distinct pairs
    (coded left · T + right) and the pair of each run — a few dozen numbers for a time-invariant model."""
    cut = np.concatenate([rs, rs - step])
    cut = np.sort(cut[(cut > 0) & (cut < m)])
    first = np.concatenate([[0], cut[:1], cut[1:][cut[1:] != cut[:-1]]])
    lengths = np.concatenate([first[1:], [m]]) - first
    ti = rv[rs.searchsorted(first, "right") - 1]
    tj = rv[rs.searchsorted(first + step, "right") - 1]
    uniq, rinv = _distinct(ti.astype(np.int64) * T + tj, T * T)
    return first, lengths, ti, uniq, rinv


def _vanished(M: np.ndarray) -> bool:
    """True when every matrix of the table ``M`` is exactly zero: the scans stop there (see :func:`_typed_scan`)."""
    return not M.any()


def _typed_scan(types, A, C, J, Z, pattern, H, F, Q, R, starts):
    """Inclusive Hillis–Steele scan of the filtering elements, each half computed once per kind.

    ``types`` (N,) indexes the tables ``A, C, J`` (T, n, n): element k is (A, b_k, C, η_k, J) of
    its type, with data ``Z`` (N, L, 2n), the rows [b_k, η_k] (used as one of the two buffers of
    the sweeps, so overwritten). Sweep s combines element k − 2^s with element k (the
    Hillis–Steele sweeps of :func:`refimpl._scan.linear_scan`); the data-independent half of a
    combination depends only on the two types, so it is computed once per distinct pair
    (batched), and the means of all elements with that pair follow by matrix products. Returns
    the scanned ``b``, the C table and the types (the filtered covariances are C[types]).

    The types are kept as runs (start, type): a time-invariant model has a handful of long runs
    of identical elements, so the pairs of a sweep, their runs and the tables of the next sweep
    are formed from a few dozen numbers, and a long run is one flat product on a slice of the
    data. The tables keep only the types in use: the new combinations and the prefixes' types.
    The data (b, η) of an element are one row [b, η], so that a combination's data half is two
    matrix products (:func:`_combine_data`).

    After each sweep the elements that start at step 0 are prefixes, whose C are the filtered
    covariances P_k. Inside a stretch of identical steps (``starts``, :func:`_step_starts`) these
    converge; once they have settled to rounding (the test of the sequential filter,
    :func:`_settled`, with the Riccati residual), the later prefixes of the stretch are given the
    settled prefix's type, so the next sweeps combine one pair where they would combine one per
    step. Without that, a time-invariant model still has N distinct prefixes.

    The sweeps stop early once every element that is not yet a prefix has A = 0 exactly (a stable
    model's closed-loop products (I − K H) F over 2^s steps underflow once ρ^(2^s) < 10⁻³²³). In
    (3.7), A_j = 0 gives M = 0, so b_ij = b_j and C_ij = C_j bit for bit (the data half adds exact
    zeros), and A_ij = 0 again: the remaining sweeps would change no mean or covariance, and every
    element already holds its prefix's values.
    """
    N, n = types.shape[0], A.shape[-1]
    rs = _runs(types)
    rv = types[rs]
    X = np.stack([A, C, J], axis=1)  # the tables, stacked: (T, 3, n, n)
    I = np.eye(n)
    Z2, Zt = np.empty_like(Z), np.empty_like(Z)  # double buffer and scratch: no fresh memory per sweep
    settled = {}  # stretch → (first settled prefix, end of its merged run): see _merge_prefixes
    step = 1
    while step < N:
        # merge settled prefixes: the elements k < step start at step 0 after the last sweep
        rs, rv = _merge_prefixes(rs, rv, N, X[:, 1], min(step, N), pattern, H, F, Q, R, starts, settled)
        T, m = X.shape[0], N - step
        # the pairs (type of k − step, type of k), k = step … N − 1, indexed by r = k − step
        first, lengths, _, uniq, rinv = _pair_runs(rs, rv, step, m, T)
        X_new, W1, W2 = _combine_types(X[uniq // T], X[uniq % T], I)
        Zi, Zj, out, tmp = Z[:-step], Z[step:], Z2[step:], Zt[step:]
        long = lengths >= _SHARED
        for r in long.nonzero()[0]:  # a long run: plain matrix products on slices (views)
            u, a = rinv[r], first[r]
            sl = slice(a, a + lengths[r])
            _combine_data(Zi[sl], Zj[sl], W1[u], W2[u], out[sl], tmp[sl])
        short = (~long).nonzero()[0]  # the short runs
        if short.size:
            rare = short
            if lengths[short].sum() >= _SHARED:  # else no pair can be shared by _SHARED elements
                count = np.bincount(rinv[short], weights=lengths[short], minlength=uniq.size)
                shared = count >= _SHARED
                for u in shared.nonzero()[0]:  # a pair spread over many short runs: gather its rows
                    idx = np.flatnonzero(np.repeat((~long) & (rinv == u), lengths))
                    o = np.empty_like(Zj[idx])
                    _combine_data(Zi[idx], Zj[idx], W1[u], W2[u], o)
                    out[idx] = o
                rare = short[~shared[rinv[short]]]
            if rare.size:  # the other short runs: their matrices gathered, one batched product
                v = np.repeat(rinv[rare], lengths[rare])
                if rare[-1] - rare[0] + 1 == rare.size:  # consecutive runs (the prefixes before they settle): views
                    rows = slice(first[rare[0]], first[rare[-1]] + lengths[rare[-1]])
                    _combine_data(Zi[rows], Zj[rows], W1[v], W2[v], out[rows])
                else:
                    mask = np.zeros(lengths.size, dtype=bool)
                    mask[rare] = True
                    rows = np.flatnonzero(np.repeat(mask, lengths))
                    o = np.empty_like(Zj[rows])
                    _combine_data(Zi[rows], Zj[rows], W1[v], W2[v], o)
                    out[rows] = o
        # the elements k < step are unchanged; Z2 already holds those before step / 2 (it was written
        # two sweeps ago, when they were final), so only step / 2 … step − 1 are copied
        Z2[step // 2 : step] = Z[step // 2 : step]
        Z, Z2 = Z2, Z
        # the runs and tables of the next sweep: the prefixes' runs (k < step, unchanged), then the new
        # pairs; prefix types and the others never coincide, so no run straddles k = step
        keep = rs < step
        used, pinv = _distinct(rv[keep], T)
        rs = np.concatenate([rs[keep], first + step])
        rv = np.concatenate([pinv, used.size + rinv])
        X = np.concatenate([X[used], X_new])
        step *= 2
        if _vanished(X_new[:, 0]):  # every element that is not yet a prefix has A = 0: done (see above)
            break
    # the prefixes of the last sweep (k >= step / 2) are merged too: left with kinds of their own, the
    # settled covariances would cut a stretch of identical smoother elements (see _typed_suffix_scan)
    rs, rv = _merge_prefixes(rs, rv, N, X[:, 1], N, pattern, H, F, Q, R, starts, settled)
    return Z[..., :n], X[:, 1], np.repeat(rv, np.diff(rs, append=N))


def _merge_prefixes(rs, rv, N, C, stop, pattern, H, F, Q, R, starts, settled):
    """Give the settled prefixes k < ``stop`` of each stretch of identical steps one type.

    The types are runs (starts ``rs``, types ``rv``) of the N elements; returns the new runs.
    Prefix k (the scanned element that starts at step 0) has C = P_k. Within a stretch
    [starts[i], starts[i+1]) of identical steps (:func:`_step_starts`), find the first k ending
    ``_PATIENCE`` consecutive prefixes that change P by at most 4 units of rounding entry by entry
    (:func:`_scaled_change`), check that the fixed point is reached (:func:`_settled` on the
    closed-loop map, and the Riccati residual), and give its type to the prefixes after it whose P
    agrees with it to 64 units of rounding entry by entry (the scan forms each prefix by its own tree of products, so the settled prefixes
    scatter by more than the sequential recursion's few units). The same test as
    :func:`_filter_covariances`, so both forms stop at the same place.
    ``settled`` (stretch → (c, end of the merged prefixes)) carries the verdicts from sweep to
    sweep, so each sweep looks only at the prefixes that are new, one type (run) at a time.
    """
    if stop <= _PATIENCE + 1:
        return rs, rv
    lo_all, hi_all = starts[:-1] + 1, np.minimum(starts[1:], stop)  # pairs (k−1, k) inside a stretch
    long = (hi_all - lo_all >= _PATIENCE + 1).nonzero()[0]
    for i in long:
        lo, hi = int(lo_all[i]), int(hi_all[i])
        if i in settled:  # extend the merged run over the new prefixes that agree with P_c
            c, last = settled[i]
            if 0 <= last < hi:
                tc = rv[rs.searchsorted(c, "right") - 1]
                r0, r1 = rs.searchsorted(last, "right") - 1, rs.searchsorted(hi, "left")  # runs in [last, hi)
                close = _scaled_change(C[rv[r0:r1]], C[tc]) <= _REACH * _EPS
                end = hi if close.all() else max(last, int(rs[r0 + int(np.argmin(close))]))
                rs, rv = _assign(rs, rv, last, end, tc, N)
                settled[i] = (c, end if end == hi else -1)  # −1: a prefix disagreed; stop extending
            continue
        types = _expand(rs, rv, lo - 1, hi)
        Pk = C[types]  # P_{lo−1} … P_{hi−1}
        change = _scaled_change(Pk[:-1], Pk[1:])  # change[j] = |P_{lo+j} − P_{lo+j−1}|, entry by entry
        calm = change <= _CALM * _EPS
        window = np.convolve(calm.astype(np.int64), np.ones(_PATIENCE, dtype=np.int64), "valid")
        ready = (window == _PATIENCE).nonzero()[0]
        if ready.size == 0:
            continue
        j = int(ready[0]) + _PATIENCE - 1  # the last of _PATIENCE calm prefixes
        c = lo + j
        P_c = C[types[j + 1]]
        gone = bool(pattern[c])
        A = _closed_loop(P_c, F[c - 1], H, Q[c - 1], R, gone)
        recent = float(np.max(change[j - _PATIENCE + 1 : j + 1]))
        if not (
            _settled(recent, A)
            and _riccati_residual(P_c, F[c - 1], H, Q[c - 1], R, gone) <= 64 * _EPS
        ):
            continue
        close = _scaled_change(Pk[j + 1 :], P_c) <= _REACH * _EPS
        end = hi if close.all() else c + int(np.argmin(close))
        rs, rv = _assign(rs, rv, c, end, types[j + 1], N)
        settled[int(i)] = (c, end if end == hi else -1)
    return rs, rv


def _closed_loop(P, F, H, Q, R, gone):
    """The map of the mean in a step after P: (I − K H) F with K the next gain (F where missing)."""
    if gone:
        return F
    Pp = F @ P @ F.T + Q
    K = np.linalg.solve(H @ Pp @ H.T + R, H @ Pp).T
    return (np.eye(F.shape[0]) - K @ H) @ F


def _filter_scan(zf, missing, F, H, Q, R, m0, P0):
    """The filtering scan of :func:`kalman_filter_scan` on validated inputs: (m, P) like ``_filter``."""
    batch, (N, p), n = zf.shape[:-2], zf.shape[-2:], H.shape[1]
    zb, mb = zf.reshape((-1, N, p)), missing.reshape((-1, N))
    m0b = np.broadcast_to(m0, batch + (n,)).reshape((-1, n))
    B = zb.shape[0]
    m = np.empty((B, N, n))
    P = None
    groups = list(_pattern_groups(mb))
    for pattern, members in groups:
        zg, m0g = (zb, m0b) if len(groups) == 1 else (zb[members], m0b[members])  # one group: all, in order
        b, Ctab, types, _ = _scan_group(zg, m0g, pattern, F, H, Q, R, P0)
        C = Ctab.take(types, axis=0)  # (take: ~10× faster than fancy indexing for N small matrices)
        if len(groups) == 1:  # all sequences, in order: plain copies, no scatter by member
            m[...] = np.transpose(b, (1, 0, 2))
            P = np.repeat(C[None], B, axis=0) if B > 1 else C[None]
            continue
        m[members] = np.transpose(b, (1, 0, 2))
        if P is None:
            P = np.empty((B, N, n, n))
        P[members] = C
    return m.reshape(batch + (N, n)), P.reshape(batch + (N, n, n))


def _scan_group(z, m0, pattern, F, H, Q, R, P0):
    """Filtering elements of Eq. (3.6) for L sequences sharing a pattern, scanned.

    Returns the filtered means ``b`` (N, L, n), the covariance table and the type of each
    prefix (P_k = table[types[k]]), and the kind of each step k → k+1 (N − 1,), for the smoother.

    An element's (A, C, J) depend on its step only through (F_{k−1}, Q_{k−1}, missing or not),
    its (b, η) on the measurement: the first half is built once per distinct step ("type"), the
    second for every step and sequence by matrix products. Type 0 is step 0, the update of the
    prior (A = 0, J = 0, C = its covariance).
    """
    L, N, p = z.shape
    n = H.shape[1]
    I = np.eye(n)
    m_first, P_first = _update(m0, P0, z[:, 0], H, R)
    Z = np.empty((N, L, 2 * n))  # the data of every element as one row [b, η] (see _typed_scan)
    Z[0, :, :n] = m0 if pattern[0] else m_first
    Z[0, :, n:] = 0.0
    A = np.zeros((1, n, n))
    C = (P0 if pattern[0] else P_first)[None].copy()
    J = np.zeros((1, n, n))
    types = np.zeros(N, dtype=np.intp)
    if N > 1:
        if F.strides[0] == 0 and Q.strides[0] == 0:  # time-invariant: a step is observed or missing
            cls = pattern[1:].astype(np.intp)  # 0 observed, 1 missing
            if cls.all() or not cls.any():  # one kind of step
                first, cls = np.zeros(1, dtype=np.intp), np.zeros_like(cls)
            else:
                first = np.array([np.argmin(cls), np.argmax(cls)])
        else:
            rows = np.ascontiguousarray(
                np.concatenate([F.reshape(N - 1, -1), Q.reshape(N - 1, -1), pattern[1:, None]], axis=1)
            )
            keys = rows.view(np.dtype((np.void, rows.shape[1] * rows.itemsize))).reshape(-1)
            _, first, cls = np.unique(keys, return_index=True, return_inverse=True)
        cls = cls.reshape(-1)
        Fc, Qc, gone = F[first], Q[first], pattern[first + 1]  # one representative step per type
        S = _sym(H @ Qc @ H.T + R)  # S = H Q Hᵀ + R
        K = _T(_solve(S, H @ Qc, "H Q Hᵀ + R in the filtering scan", _SCAN_HINT))  # K = Q Hᵀ S⁻¹
        IKH = I - K @ H
        W = _solve(S, H @ Fc, "H Q Hᵀ + R in the filtering scan", _SCAN_HINT)  # S⁻¹ H F
        # observed: A = (I − K H) F, C = (I − K H) Q, J = Fᵀ Hᵀ S⁻¹ H F; missing: A = F, C = Q, J = 0
        A_c = np.where(gone[:, None, None], Fc, IKH @ Fc)
        C_c = np.where(gone[:, None, None], Qc, _sym(IKH @ Qc))
        J_c = np.where(gone[:, None, None], 0.0, _sym(_T(Fc) @ _T(H) @ W))
        # the data [b, η] = z [Kᵀ, Fᵀ Hᵀ S⁻¹]: b = K z, η = Fᵀ Hᵀ S⁻¹ z (both 0 where missing)
        V = np.where(gone[:, None, None], 0.0, np.concatenate([_T(K), W], axis=-1))  # (types, p, 2n)
        zt = np.transpose(z[:, 1:], (1, 0, 2))  # (N − 1, L, p)
        if first.size <= 8:
            zt = np.ascontiguousarray(zt)
            for c in range(first.size):  # one flat (rows × p) · (p × 2n) product per kind
                idx = np.flatnonzero(cls == c)
                if idx[-1] - idx[0] + 1 == idx.size:  # contiguous (the usual case): views
                    rows = slice(1 + idx[0], 2 + idx[-1])
                    np.matmul(zt[idx[0] : idx[-1] + 1].reshape(-1, p), V[c], out=Z[rows].reshape(-1, 2 * n))
                else:
                    Z[1 + idx] = (zt[idx].reshape(-1, p) @ V[c]).reshape(idx.size, L, 2 * n)
        else:
            Z[1:] = zt @ V[cls]
        A, C, J = np.concatenate([A, A_c]), np.concatenate([C, C_c]), np.concatenate([J, J_c])
        types[1:] = 1 + cls
    types_step = types.copy()  # the kind of each step (k ≥ 1: of the step k−1 → k)
    starts = _step_starts(pattern, F, Q)
    b, C, types = _typed_scan(types, A, C, J, Z, pattern, H, F, Q, R, starts)
    return b, C, types, (types_step[1:] if N > 1 else types_step[:0])


@guard_overflow(first_only=True)
def kalman_filter_scan(z, F, H, Q, R, m0, P0, *, return_intermediates=False):
    r"""Parallel-in-time Kalman filter: an associative scan over time, Eqs. (3.6)–(3.8).

    Implements the filtering scan of Särkkä & García-Fernández (2021, §IV-A, Lemmas 7–8): each
    step becomes an element ``a_k = (A_k, b_k, C_k, η_k, J_k)`` of a conditional-Gaussian
    semigroup, and all filtered moments come out of an inclusive prefix scan with at most
    ``ceil(log2 N)`` vectorized sweeps (no Python loop over N). The scan is Hillis–Steele's
    (Hillis & Steele 1986): ``ceil(log2 N)`` sweeps and O(N log N) combinations; a work-efficient
    (Blelloch 1990) scan would do O(N) combinations in about ``2 ceil(log2 N)`` sweeps. This is the
    reference for GPU Kalman kernels. Same parameters and returns as :func:`kalman_filter`
    (the intermediates are formed from the scanned moments, vectorized over N), with one
    further condition: every element conditions a measurement on the previous state alone, so
    ``H Q Hᵀ + R`` must be invertible (not only the innovation covariance ``H P⁻ Hᵀ + R``). A
    model with ``R = 0`` and a noiseless measured direction of Q (e.g. ``Q = diag(0, 1)``,
    ``H = [1, 0]``) runs in :func:`kalman_filter` but raises here; use the sequential form.

    An element's (A, C, J) depend on the step only through (F, Q, missing or not), its (b, η)
    on the data: the covariance half of every combination is computed once per distinct pair of
    element kinds, and the means of all elements with that pair follow by two matrix products.
    The prefixes (elements that start at step 0) carry the filtered covariances; once they have
    settled — the test of :func:`kalman_filter` — the later prefixes of the stretch share one
    kind, so a time-invariant model costs O(s) batches of small-matrix combinations plus
    O(N s n²) flat matrix products for the means, for the s ≤ ``ceil(log2 N)`` sweeps that run.
    The sweeps stop as soon as every element's transition A is exactly zero — a stable model's
    products of closed-loop maps underflow after about 745 / |ln ρ| steps, and after k sweeps an
    element spans 2^k steps, so s is about ``ceil(log2(745 / |ln ρ|))`` when that is below
    ``ceil(log2 N)`` — since from there on a sweep would change no result, not even by rounding.

    Which form to use: on a time-invariant model whose covariances settle, :func:`kalman_filter`
    (the sequential recursion with its steady-state shortcut) does O(N n²) work once converged
    against the scan's O(N s n²) and makes fewer NumPy calls; the two are within a small
    factor of each other for small n and the sequential form is clearly ahead at n = 32 (§3.9
    of the book prints the measured ratios). With scattered missing rows or a time-varying
    model (irregular grid) the covariances never settle: the sequential form is then a Python
    loop over all N steps, while the scan still runs ``ceil(log2 N)`` batched sweeps, so for
    small n the scan can be the faster CPU form; its covariance half costs O(N s n³)
    against the recursion's O(N n³), which dominates as n grows. The scan is also the
    reference for a parallel (GPU, many-core) kernel, whose O(log N) depth it mirrors, and an
    independent second algorithm.

    Accuracy: when the state's components have very different scales, the scan's covariances
    can be far less accurate than the recursion's — the matrix I + C_i J_j that each
    combination (3.7) inverts is then ill-conditioned, although its eigenvalues are at least 1 —
    by an amount that varies widely from model to model. In §3.9 of the book, rescaling the
    states of eight random well-scaled models (n = 3) by diag(1, 2⁸, 2¹⁶) moves the recursion's
    filtered covariances by at most a few units of each entry's rounding (each entry against
    √(P_ii P_jj), as in Eq. (3.16)) on every model, and this scan's by about 2·10² to 2·10⁵
    units (median about 10³, within 10² on the well-scaled models; figures from the machine
    that ran the book — other BLAS kernels give the same spread). Only on the worst two of the
    eight does it exceed 10⁴ units and 1e-12 of max |P| norm-wise (up to about 1e-11).
    Validate a kernel entry by entry against :func:`kalman_filter_loop` or
    :func:`kalman_filter`, and against this scan only on a well-scaled state (rescaling by
    powers of two is exact) or with a looser tolerance.

    Examples
    --------
    >>> F, H, Q, R = np.array([[1.0, 0.1], [0.0, 1.0]]), np.array([[1.0, 0.0]]), 0.01 * np.eye(2), np.array([[0.25]])
    >>> z = np.random.default_rng(0).normal(size=(6, 1))
    >>> m0, P0 = np.zeros(2), np.eye(2)
    >>> all(np.allclose(a, b) for a, b in zip(kalman_filter_scan(z, F, H, Q, R, m0, P0), kalman_filter(z, F, H, Q, R, m0, P0)))
    True
    """
    flag = as_bool(return_intermediates, "return_intermediates")
    args = _check_model(z, F, H, Q, R, m0, P0)
    m, P = _filter_scan(*args)
    return (m, P, _filter_intermediates(*args, m, P)) if flag else (m, P)


def _by_runs(X, first, lengths, kinds, M, out):
    """``out[k] = X[k] @ M[kinds[r]]ᵀ`` for the elements k of run r (starts ``first``, ``lengths``):
    one flat product per run of at least :data:`_SHARED` elements (slices: views), one gathered
    batched product for the short runs (a view when they are consecutive)."""
    n = X.shape[-1]
    long = lengths >= _SHARED
    for r in np.flatnonzero(long):
        sl = slice(first[r], first[r] + lengths[r])
        np.matmul(X[sl].reshape(-1, n), _Tc(M[kinds[r]]), out=out[sl].reshape(-1, n))
    short = np.flatnonzero(~long)
    if short.size:
        Mk = _Tc(M[np.repeat(kinds[short], lengths[short])])[:, None]  # (rows, 1, n, n): one per element
        if short[-1] - short[0] + 1 == short.size:  # consecutive runs: views
            rows = slice(first[short[0]], first[short[-1]] + lengths[short[-1]])
            np.matmul(X[rows][..., None, :], Mk, out=out[rows][..., None, :])
        else:
            mask = np.zeros(lengths.size, dtype=bool)
            mask[short] = True
            rows = np.flatnonzero(np.repeat(mask, lengths))
            out[rows] = (X[rows][..., None, :] @ Mk)[..., 0, :]
    return out


def _typed_suffix_scan(types, E, L, g):
    """Reverse Hillis–Steele scan of the smoother elements (E, g, L), Eq. (3.9), per kind.

    Element k is (E, g_k, L) with (E, L) = table[types[k]] and data g (N, L, n). Sweep s combines
    element k with element k + 2^s: (E_k E_j, E_k g_j + g_k, E_k L_j E_kᵀ + L_k); the
    data-independent half once per distinct pair of kinds, the means by matrix products grouped
    by the kind of k. Returns the scanned g (the smoothed means), the L table and the types
    (P^s_k = table[types[k]]).

    As in :func:`_typed_scan`, the kinds are kept as runs (start, kind): a time-invariant model
    has a few long runs of identical elements, so the pairs of a sweep and the tables of the next
    are formed from a few dozen numbers and a long run's means are one flat product. The tables
    keep only the kinds in use.

    As in :func:`_typed_scan`, the sweeps stop early once every element that is not yet a suffix
    has E = 0 exactly: E_k = 0 gives (E_k E_j, E_k g_j + g_k, E_k L_j E_kᵀ + L_k) = (0, g_k, L_k)
    bit for bit, so the remaining sweeps would change nothing.
    """
    N = types.shape[0]
    g2 = np.empty_like(g)
    elem, E0, L0 = types, E, L  # the elements' own kinds, for the settled test
    rs = _runs(types)
    rv = types[rs]
    ends = np.append(rs[1:], N)
    runs = [(int(a), int(b)) for a, b in zip(rs, ends) if b - a > _PATIENCE + 1]  # runs of identical elements
    settled = {}
    step = 1
    while step < N:
        rs, rv = _merge_suffixes(rs, rv, L, N - step, elem, E0, L0, runs, settled)
        T, m = E.shape[0], N - step
        first, lengths, ti, uniq, rinv = _pair_runs(rs, rv, step, m, T)  # the pairs (kind of k, kind of k + step)
        ui, uj = uniq // T, uniq % T
        Ei = E[ui]
        E_new = Ei @ E[uj]  # E_kj = E_k E_j
        L_new = _sym(Ei @ L[uj] @ _T(Ei) + L[ui])  # L_kj = E_k L_j E_kᵀ + L_k
        _by_runs(g[step:], first, lengths, ti, E, out=g2[:m])
        g2[:m] += g[:m]  # g_kj = E_k g_j + g_k
        g2[m:] = g[m:]  # the suffixes k >= m are unchanged
        g, g2 = g2, g
        # the runs and tables of the next sweep: the new pairs (k < m), then the suffixes' runs (k >= m)
        top = rs.searchsorted(m, "right") - 1  # the run that holds m
        s_rs = np.concatenate([[m], rs[top + 1 :]])
        used, pinv = _distinct(rv[top:], T)
        rs = np.concatenate([first, s_rs])
        rv = np.concatenate([rinv, uniq.size + pinv])
        E, L = np.concatenate([E_new, E[used]]), np.concatenate([L_new, L[used]])
        step *= 2
        if _vanished(E_new):  # every element that is not yet a suffix has E = 0: done (see above)
            break
    return g, L, np.repeat(rv, np.diff(rs, append=N))


def _merge_suffixes(rs, rv, L, first, elem, E0, L0, runs, settled):
    """Give the settled suffixes k ≥ ``first`` of each run of identical elements one kind.

    The mirror of :func:`_merge_prefixes` for the smoother: suffix k (the scanned element that
    reaches step N − 1) has L = P^s_k, and inside a run of identical elements (E, L) the
    smoothed covariance obeys P^s_k = E P^s_{k+1} Eᵀ + L, a contraction by ρ(E)² that settles as
    k decreases. The first suffix (from the end of the run) ending ``_PATIENCE`` consecutive
    changes of at most 4 units of rounding entry by entry (:func:`_scaled_change`) that passes
    :func:`_settled` and the fixed-point residual gives its kind to the suffixes below it that
    agree with it to 64 units of rounding entry by entry.
    The kinds are runs (starts ``rs``, kinds ``rv``); returns the new runs. ``settled`` (run →
    (c, lowest merged suffix, or None once one disagreed)) carries the verdicts from sweep to sweep.
    """
    N = elem.shape[0]
    for r, (a, b) in enumerate(runs):
        lo = max(a, first)
        if r in settled:  # extend the merged run downwards over the new suffixes, run by run
            c, low = settled[r]
            if low is not None and low > lo:
                tc = rv[rs.searchsorted(c, "right") - 1]
                r0, r1 = rs.searchsorted(lo, "right") - 1, rs.searchsorted(low, "left")  # the runs in [lo, low)
                close = _scaled_change(L[rv[r0:r1]], L[tc]) <= _REACH * _EPS
                # from the top down, the first run that disagrees stops the merge at its end
                start = lo if close.all() else min(low, int(np.append(rs, N)[r1 - int(np.argmin(close[::-1]))]))
                rs, rv = _assign(rs, rv, start, low, tc, N)
                settled[r] = (c, start if start == lo else None)  # None: a suffix disagreed; stop extending
            continue
        if b - lo < _PATIENCE + 1:
            continue
        kinds = _expand(rs, rv, lo, min(b + 1, N))
        X = L[kinds]  # P^s_lo … (P^s_b)
        m = b - lo  # suffixes lo … b − 1 of the run, each against the one above it
        if X.shape[0] < m + 1:
            m -= 1  # the last run ends at N − 1: its top suffix has nothing above it
        change = _scaled_change(X[1 : m + 1], X[:m])  # change[j] = |P^s_{lo+j} − P^s_{lo+j+1}|, entry by entry
        calm = (change <= _CALM * _EPS)[::-1]  # from the top of the run down
        window = np.convolve(calm.astype(np.int64), np.ones(_PATIENCE, dtype=np.int64), "valid")
        ready = np.flatnonzero(window == _PATIENCE)
        if ready.size == 0:
            continue
        j = m - 1 - (int(ready[0]) + _PATIENCE - 1)  # index (from lo) of the settled suffix
        c = lo + j
        E, Lk = E0[elem[c]], L0[elem[c]]
        X_c = X[j]
        recent = float(np.max(change[j : j + _PATIENCE]))
        residual = np.max(np.abs(E @ X_c @ E.T + Lk - X_c)) / max(float(np.max(np.abs(X_c))), 1e-300)
        if not (_settled(recent, E) and residual <= 64 * _EPS):
            continue
        close = _scaled_change(X[:j], X_c) <= _REACH * _EPS
        start = lo if np.all(close) else c - int(np.argmin(close[::-1]))
        rs, rv = _assign(rs, rv, start, c, kinds[j], N)
        settled[r] = (c, start if start == lo else None)
    return rs, rv


def _smoother_scan_group(b, Ctab, ftypes, kinds, F, Q):
    """The smoothing scan for L sequences sharing a pattern, from the filtering scan's output.

    ``b`` (N, L, n) filtered means, ``Ctab[ftypes]`` the filtered covariances, ``kinds`` (N − 1,)
    the kind of each step k → k+1 (same F_k, Q_k within a kind). The element of step k < N − 1
    depends on (P_k, F_k, Q_k) only through (ftypes[k], kinds[k]), so E_k and L_k are formed once
    per distinct pair. Returns the smoothed means (N, L, n), covariances (N, n, n) and the gains
    E_k (N − 1, n, n) as (table, index).
    """
    N, _, n = b.shape
    key = np.empty(N, dtype=np.int64)
    key[:-1] = ftypes[:-1].astype(np.int64) * (int(kinds.max()) + 1 if N > 1 else 1) + kinds
    key[-1] = -1  # the last element: E = 0, g = m_{N−1}, L = P_{N−1}
    uniq, first, stypes = np.unique(key, return_index=True, return_inverse=True)
    stypes = stypes.reshape(-1)
    inner = first[uniq >= 0]  # a representative step of every kind but the last
    E = np.zeros((uniq.size, n, n))
    L = np.empty((uniq.size, n, n))
    L[0] = Ctab[ftypes[N - 1]]  # key −1 sorts first
    W = np.zeros((uniq.size, n, n))  # g_k = W m_k with W = I − E F
    W[0] = np.eye(n)
    if inner.size:
        Pk, Fk, Qk = Ctab[ftypes[inner]], F[inner], Q[inner]
        FP = Fk @ Pk
        P_pred = _sym(FP @ _T(Fk) + Qk)  # P⁻_{k+1} = F P_k Fᵀ + Q
        E[1:] = _T(_solve(P_pred, FP, "the predicted covariance P⁻ = F P Fᵀ + Q"))  # E_k = P_k Fᵀ (P⁻)⁻¹
        L[1:] = _sym(Pk - E[1:] @ FP)  # L_k = P_k − E_k F P_k
        W[1:] = np.eye(n) - E[1:] @ Fk  # g_k = m_k − E_k F m_k
    gains = (E, stypes[:-1])
    rs = _runs(stypes)
    g = _by_runs(b, rs, np.diff(rs, append=N), stypes[rs], W, out=np.empty_like(b))
    ms, Ltab, ltypes = _typed_suffix_scan(stypes, E, L, g)
    return ms, Ltab.take(ltypes, axis=0), gains


@guard_overflow(first_only=True)
def rts_smoother_scan(z, F, H, Q, R, m0, P0, *, return_intermediates=False):
    r"""Parallel-in-time RTS smoother: filtering scan, then a reverse associative scan, Eq. (3.9).

    The smoother step ``m^s_k = E_k m^s_{k+1} + g_k``, ``P^s_k = E_k P^s_{k+1} E_k^\top + L_k`` with
    ``E_k = P_k F_k^\top (P^-_{k+1})^{-1}``, ``g_k = m_k − E_k F_k m_k``, ``L_k = P_k − E_k F_k P_k``
    (and ``E = 0``, ``g = m_{N-1}``, ``L = P_{N-1}`` at the end) is an affine map; composing the maps
    from the end is a suffix scan (Särkkä & García-Fernández 2021, §IV-B, Lemmas 9–10).
    Same parameters and returns as :func:`rts_smoother` (the gains ``"G"`` are the ``E_k``); the
    filtering scan needs ``H Q Hᵀ + R`` invertible (see :func:`kalman_filter_scan`).

    As in :func:`kalman_filter_scan`, (E_k, L_k) depend on the step only through (P_k, F_k, Q_k),
    so they are formed, and combined in each sweep, once per distinct kind; the means g follow by
    matrix products grouped by kind. Where the filter has settled, the interior steps are one
    kind; the suffixes that reach the end carry the smoothed covariances, and once those have
    settled (the test of :func:`kalman_filter`, Eq. (3.16), with the contraction ρ(E)² of the
    backward recursion) the later suffixes share one kind too, so each sweep combines a few
    kinds and the cost is dominated by the O(N s n²) mean products (s sweeps, at most
    ``ceil(log2 N)``). Like the filtering scan, it stops as soon as every element's E (a product
    of smoother gains) is exactly zero.

    Which form to use: as for the filter (:func:`kalman_filter_scan`): on a settling
    time-invariant model the sequential :func:`rts_smoother` does less work (clearly faster at
    n = 32, within a small factor for small n); where the covariances never settle (irregular
    grid, scattered missing rows) the sequential form loops over every step in Python and for
    small n the scan can be faster (§3.9 of the book prints the measured ratios). This scan is
    the reference for a parallel smoother kernel, whose O(log N) depth it mirrors, and an
    independent second algorithm. Its accuracy on a badly scaled state varies from model to
    model like the filtering scan's (see :func:`kalman_filter_scan`): in §3.9 of the book, after
    a rescaling by diag(1, 2⁸, 2¹⁶) of eight random models it is off by about 2·10² to 6·10⁵
    units of each entry's rounding (median about 10³, beyond 10⁴ on the worst two), while
    :func:`rts_smoother` and :func:`rts_smoother_loop` are off by up to several hundred — on a
    few of 32 models by more than 10³, on some of those by more than this scan. Validate
    smoother kernels entry by entry against the loop twins; on a badly scaled state, against
    the loop twins run on the state rescaled to similar scales (by powers of two: exact) and
    transformed back.

    Examples
    --------
    >>> F, H, Q, R = np.array([[1.0, 0.1], [0.0, 1.0]]), np.array([[1.0, 0.0]]), 0.01 * np.eye(2), np.array([[0.25]])
    >>> z = np.random.default_rng(0).normal(size=(6, 1))
    >>> m0, P0 = np.zeros(2), np.eye(2)
    >>> all(np.allclose(a, b) for a, b in zip(rts_smoother_scan(z, F, H, Q, R, m0, P0), rts_smoother(z, F, H, Q, R, m0, P0)))
    True
    """
    flag = as_bool(return_intermediates, "return_intermediates")
    zf, missing, F, H, Q, R, m0, P0 = _check_model(z, F, H, Q, R, m0, P0)
    batch, (N, p), n = zf.shape[:-2], zf.shape[-2:], H.shape[1]
    zb, mb = zf.reshape((-1, N, p)), missing.reshape((-1, N))
    m0b = np.broadcast_to(m0, batch + (n,)).reshape((-1, n))
    B = zb.shape[0]
    m, ms = np.empty((B, N, n)), np.empty((B, N, n))
    P, Ps = np.empty((B, N, n, n)), np.empty((B, N, n, n))
    G = np.empty((B, N - 1, n, n)) if flag else None
    for pattern, members in _pattern_groups(mb):
        b, Ctab, ftypes, kinds = _scan_group(zb[members], m0b[members], pattern, F, H, Q, R, P0)
        s_means, s_covs, (E, etypes) = _smoother_scan_group(b, Ctab, ftypes, kinds, F, Q)
        m[members] = np.transpose(b, (1, 0, 2))
        ms[members] = np.transpose(s_means, (1, 0, 2))
        P[members] = Ctab.take(ftypes, axis=0)
        Ps[members] = s_covs
        if flag:
            G[members] = E[etypes]
    ms, Ps = ms.reshape(batch + (N, n)), Ps.reshape(batch + (N, n, n))
    if not flag:
        return ms, Ps
    m, P = m.reshape(batch + (N, n)), P.reshape(batch + (N, n, n))
    extra = _filter_intermediates(zf, missing, F, H, Q, R, m0, P0, m, P)
    extra.update(m=m, P=P, G=G.reshape(batch + (N - 1, n, n)))
    return ms, Ps, extra


# ---------------------------------------------------------------------------------------------
# The dense definition: generalized least squares for all steps at once, Eqs. (3.10)-(3.12)
# ---------------------------------------------------------------------------------------------


def _dense_prior(F, Q, m0, P0, N):
    """Stacked prior mean (N, n) and covariance (N n, N n) of x_0 … x_{N-1}, Eq. (3.10)."""
    n = P0.shape[0]
    mu = np.empty((N, n))
    Sigma = np.zeros((N, n, N, n))
    mu[0] = m0
    Sigma[0, :, 0, :] = P0
    for k in range(1, N):
        mu[k] = F[k - 1] @ mu[k - 1]  # μ_k = F μ_{k-1}
        # Cov(x_k, x_j) = F Cov(x_{k-1}, x_j) for j < k;  Cov(x_k, x_k) = F Σ_{k-1,k-1} Fᵀ + Q
        Sigma[k, :, :k, :] = np.einsum("ab,bjc->ajc", F[k - 1], Sigma[k - 1, :, :k, :])
        Sigma[k, :, k, :] = F[k - 1] @ Sigma[k - 1, :, k - 1, :] @ F[k - 1].T + Q[k - 1]
        Sigma[:k, :, k, :] = np.transpose(Sigma[k, :, :k, :], (1, 2, 0))
    return mu, Sigma.reshape(N * n, N * n)


def _dense_measurement(missing, H, R, N):
    """Block-diagonal H̄ (N p, N n) and R̄ (N p, N p); a missing row gets H = 0, R = I (no information)."""
    p, n = H.shape
    Hbar = np.zeros((N, p, N, n))
    Rbar = np.zeros((N, p, N, p))
    for k in range(N):
        Hbar[k, :, k, :] = 0.0 if missing[k] else H
        Rbar[k, :, k, :] = np.eye(p) if missing[k] else R
    return Hbar.reshape(N * p, N * n), Rbar.reshape(N * p, N * p)


def _check_dense(N: int, n: int, p: int, what: str) -> None:
    size = N * max(n, p)
    if size > MAX_DENSE:
        raise ValueError(
            f"{what}: N·max(n, p) = {size} exceeds refimpl.kalman.MAX_DENSE = {MAX_DENSE}; the dense "
            f"form builds ({size} × {size}) matrices. Use rts_smoother / kalman_filter for long sequences."
        )


@guard_overflow()
def batch_smoother(z, F, H, Q, R, m0, P0):
    r"""The smoother by its definition: Gaussian conditioning of all states on all measurements.

    Implements Eqs. (3.10)–(3.11) of the book. With the stacked prior ``x ~ N(μ, Σ)`` of
    Eq. (3.10) and ``z = H̄ x + v``, ``v ~ N(0, R̄)``,

    .. math::  \hat x = μ + Σ \bar H^\top (\bar H Σ \bar H^\top + \bar R)^{-1}(z - \bar H μ),\qquad
               \operatorname{Cov}(x \mid z) = Σ - Σ \bar H^\top (\bar H Σ \bar H^\top + \bar R)^{-1} \bar H Σ,

    the generalized-least-squares solution for all steps at once — the quantity the recursions
    must reproduce. A missing row contributes nothing (its block of H̄ is zero, its block of R̄
    the identity, so that the stacked covariance stays invertible). Dense: O((N n)²) memory and
    O((N p)³ + (N n)² N p) time; refuses ``N·max(n, p) > MAX_DENSE``.

    Accuracy: the subtraction ``Σ − Σ H̄ᵀ S⁻¹ H̄ Σ`` loses digits in proportion to cond(S), so
    with a nearly flat prior (P0 ≫ R, e.g. 1e8 against 1) it agrees with the recursions only to
    ~eps·cond(S) (about 1e-7 there), while the recursions stay at round-off: it is a definition
    to test against with a moderate prior (§3.5 of the book), not the most accurate form.

    Parameters and returns as in :func:`rts_smoother` (leading batch axes are looped over).

    Examples
    --------
    >>> F, H, Q, R = np.array([[1.0, 0.1], [0.0, 1.0]]), np.array([[1.0, 0.0]]), 0.01 * np.eye(2), np.array([[0.25]])
    >>> z = np.random.default_rng(0).normal(size=(6, 1))
    >>> m0, P0 = np.zeros(2), np.eye(2)
    >>> all(np.allclose(a, b) for a, b in zip(batch_smoother(z, F, H, Q, R, m0, P0), rts_smoother(z, F, H, Q, R, m0, P0)))
    True
    """
    zf, missing, F, H, Q, R, m0, P0 = _check_model(z, F, H, Q, R, m0, P0)
    batch, (N, p), n = zf.shape[:-2], zf.shape[-2:], H.shape[1]
    _check_dense(N, n, p, "batch_smoother")
    zb, mb, m0b = zf.reshape((-1, N, p)), missing.reshape((-1, N)), m0.reshape((-1, n))
    ms = np.empty((zb.shape[0], N, n))
    Ps = np.empty((zb.shape[0], N, n, n))
    for i in range(zb.shape[0]):
        mu, Sigma = _dense_prior(F, Q, m0b[i], P0, N)
        Hbar, Rbar = _dense_measurement(mb[i], H, R, N)
        SH = Sigma @ Hbar.T  # Σ H̄ᵀ
        S = _sym(Hbar @ SH + Rbar)  # H̄ Σ H̄ᵀ + R̄
        Wt = _solve(S, SH.T, "the stacked measurement covariance H̄ Σ H̄ᵀ + R̄")  # (Σ H̄ᵀ S⁻¹)ᵀ
        x = mu.reshape(-1) + Wt.T @ (zb[i].reshape(-1) - Hbar @ mu.reshape(-1))
        cov = _sym(Sigma - Wt.T @ SH.T).reshape(N, n, N, n)
        ms[i] = x.reshape(N, n)
        Ps[i] = cov[np.arange(N), :, np.arange(N), :]
    return ms.reshape(batch + (N, n)), Ps.reshape(batch + (N, n, n))


@guard_overflow()
def kalman_weight_matrix(n_steps, F, H, Q, R, m0, P0, *, kind: str = "smoother", missing=None, return_offset=False):
    r"""The linear map of the optimal estimator: ``x̂ = W z + c``, the "attention matrix" of Eq. (3.12).

    Implements Eq. (3.12) of the book. The smoother's W (``kind="smoother"``) is
    ``Σ H̄ᵀ S⁻¹`` (Eq. (3.11)), a full matrix; the filter's (``kind="filter"``) is block lower
    triangular: with the Cholesky factor ``S = L Lᵀ``, the innovations ``e = L⁻¹(z − H̄μ)`` are
    white and ordered in time, and the filtered estimate at k uses the innovations up to k,
    ``W_filter = tril_blocks(Σ H̄ᵀ L⁻ᵀ) L⁻¹``.

    Parameters
    ----------
    n_steps : int
        N, the number of measurements.
    F, H, Q, R, m0, P0 : as in :func:`kalman_filter`.
    kind : {"smoother", "filter"}
    missing : array_like of bool, shape (N,), optional
        Missing measurements (their columns of W are zero).
    return_offset : bool
        Also return ``c`` (N, n), the part of the estimate that comes from the prior mean ``m0``.

    Returns
    -------
    W : ndarray, shape (N, n, N, p)
        ``x̂_k = Σ_j W[k, :, j, :] z_j + c_k``. For scalar state and measurement, ``W[:, 0, :, 0]``
        is an N × N matrix whose rows are the estimator's weights over time.
    c : ndarray, shape (N, n)
        Only if ``return_offset``.

    Examples
    --------
    >>> F, H, Q, R = np.array([[1.0, 0.1], [0.0, 1.0]]), np.array([[1.0, 0.0]]), 0.01 * np.eye(2), np.array([[0.25]])
    >>> z = np.random.default_rng(0).normal(size=(6, 1))
    >>> m0, P0 = np.zeros(2), np.eye(2)
    >>> W, c = kalman_weight_matrix(6, F, H, Q, R, m0, P0, return_offset=True)
    >>> W.shape  # W[i, :, j, :]: the weight of measurement j in the smoothed state i
    (6, 2, 6, 1)
    >>> bool(np.allclose(np.einsum('ianb,nb->ia', W, z) + c, rts_smoother(z, F, H, Q, R, m0, P0)[0]))
    True
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
        raise ValueError(f"n_steps: expected an integer >= 1, got {n_steps!r}")
    check_option(kind, "kind", ("smoother", "filter"))
    return_offset = as_bool(return_offset, "return_offset")
    N = int(n_steps)
    H_ = as_real_array(H, "H", ndim=2)
    p, n = H_.shape
    if missing is None:
        missing = np.zeros(N, dtype=bool)
    missing = np.asarray(missing)
    if missing.dtype != bool or missing.shape != (N,):
        raise ValueError(f"missing: expected a boolean array of shape ({N},), got {missing.dtype} {missing.shape}")
    z_dummy = np.where(missing[:, None], np.nan, np.zeros((N, p)))
    _, missing, F, H, Q, R, m0, P0 = _check_model(z_dummy, F, H_, Q, R, m0, P0)
    if m0.ndim != 1:
        raise ValueError(f"m0: expected shape ({n},), got shape {m0.shape}")
    _check_dense(N, n, p, "kalman_weight_matrix")
    mu, Sigma = _dense_prior(F, Q, m0, P0, N)
    Hbar, Rbar = _dense_measurement(missing, H, R, N)
    SH = Sigma @ Hbar.T  # Σ H̄ᵀ, (N n, N p)
    S = _sym(Hbar @ SH + Rbar)
    if kind == "smoother":
        W = _solve(S, SH.T, "the stacked measurement covariance H̄ Σ H̄ᵀ + R̄").T  # W = Σ H̄ᵀ S⁻¹
    else:
        try:
            L = np.linalg.cholesky(S)  # S = L Lᵀ: innovations e = L⁻¹ (z − H̄ μ) are white
        except np.linalg.LinAlgError:
            raise ValueError("the stacked measurement covariance H̄ Σ H̄ᵀ + R̄ is not positive definite") from None
        G = scipy.linalg.solve_triangular(L, SH.T, lower=True).T  # Σ H̄ᵀ L⁻ᵀ = Cov(x, e)
        later = np.triu(np.ones((N, N), dtype=bool), 1)  # (k, j) with j > k
        G = G.reshape(N, n, N, p) * ~later[:, None, :, None]  # x̂_k uses innovations e_j, j ≤ k only
        W = scipy.linalg.solve_triangular(L, G.reshape(N * n, N * p).T, lower=True, trans="T").T  # · L⁻¹
    c = mu.reshape(-1) - W @ (Hbar @ mu.reshape(-1))
    W = W.reshape(N, n, N, p)
    return (W, c.reshape(N, n)) if return_offset else W


# ---------------------------------------------------------------------------------------------
# From the SDE of chapter 1, and the steady state, Eqs. (3.13)-(3.14)
# ---------------------------------------------------------------------------------------------


def from_sde(model, t):
    r"""Discrete-time model ``(F, Q, H, R)`` of a :class:`refimpl.sde.LinearSDE` on the time grid ``t``.

    The continuous–discrete filter: ``F_k = e^{A(t_{k+1} − t_k)}`` and ``Q_k = Q_d(t_{k+1} − t_k)``
    (Eqs. (1.5)–(1.6), exact on irregular grids), ``H = C``, ``R = R``. The model must be real.

    Returns
    -------
    F : ndarray, shape (N-1, n, n)
    Q : ndarray, shape (N-1, n, n)
    H : ndarray, shape (p, n)
    R : ndarray, shape (p, p)

    Examples
    --------
    >>> from refimpl.sde import spiral_system
    >>> F, Q, H, R = from_sde(spiral_system(), np.array([0.0, 0.1, 0.3]))
    >>> F.shape, Q.shape, H.shape  # one F and Q per interval
    ((2, 2, 2), (2, 2, 2), (2, 2))
    """
    if not isinstance(model, _sde.LinearSDE):
        raise TypeError(f"model: expected a refimpl.sde.LinearSDE, got {type(model).__name__}")
    if not model.is_real:
        raise ValueError("model: the Kalman filter here is real-valued; got a complex LinearSDE")
    t = as_real_array(t, "t", ndim=1)
    check_times(t, "t")
    F, Q = _sde.discretize(model, t)
    return F, Q, model.C.copy(), model.R.copy()


def _check_stationary(F, H, Q, R):
    F = as_real_array(F, "F", ndim=2)
    n = F.shape[0]
    if F.shape != (n, n):
        raise ValueError(f"F: expected a square matrix, got shape {F.shape}")
    H = as_real_array(H, "H", ndim=2)
    if H.shape[1] != n:
        raise ValueError(f"H: expected shape (p, {n}), got shape {H.shape}")
    Q = _check_cov(Q, "Q", n, " (n = the size of F)")
    R = _check_cov(R, "R", H.shape[0], " (p = the rows of H)")
    return F, H, Q, R


def _gain(P_prior, H, R):
    S = _sym(H @ P_prior @ H.T + R)
    return _solve(S, H @ P_prior, "the innovation covariance S = H P⁻ Hᵀ + R").T  # K = P⁻ Hᵀ S⁻¹


@guard_overflow()
def steady_state(F, H, Q, R):
    r"""Steady-state gain and covariances of a time-invariant filter, from the DARE, Eq. (3.13).

    Implements Eq. (3.13) of the book: the prior covariance ``P⁻`` solves the discrete algebraic
    Riccati equation ``P⁻ = F P⁻ Fᵀ − F P⁻ Hᵀ (H P⁻ Hᵀ + R)⁻¹ H P⁻ Fᵀ + Q``
    (``scipy.linalg.solve_discrete_are(F.T, H.T, Q, R)``), then ``K = P⁻ Hᵀ S⁻¹`` and
    ``P = (I − K H) P⁻``. Needs (F, H) detectable and (F, Q^{1/2}) stabilizable. SciPy's
    solution is then refined by up to two Newton steps (:func:`_refine_riccati`): with a slow
    closed loop its error depends on the BLAS kernels (at ρ = 0.998, 243 to 9723 rounding units
    on three OpenBLAS kernel types against a long-double iteration; 1 to 84 after refinement).

    Returns
    -------
    K : ndarray, shape (n, p)
    P_prior : ndarray, shape (n, n)
    P_post : ndarray, shape (n, n)

    Examples
    --------
    >>> F, H, Q, R = np.array([[1.0, 0.1], [0.0, 1.0]]), np.array([[1.0, 0.0]]), 0.01 * np.eye(2), np.array([[0.25]])
    >>> K, P_prior, P_post = steady_state(F, H, Q, R)
    >>> K.shape, bool(np.all(np.linalg.eigvalsh(P_post) > 0))
    ((2, 1), True)
    """
    F, H, Q, R = _check_stationary(F, H, Q, R)
    try:
        P_prior = _sym(scipy.linalg.solve_discrete_are(F.T, H.T, Q, R))
    except (np.linalg.LinAlgError, ValueError) as err:
        raise ValueError(f"F, H, Q, R: no stabilizing solution of the Riccati equation ({err})") from None
    P_prior = _refine_riccati(P_prior, F, H, Q, R)
    K = _gain(P_prior, H, R)
    P_post = _sym((np.eye(F.shape[0]) - K @ H) @ P_prior)
    return K, P_prior, P_post


def _refine_riccati(P, F, H, Q, R, steps: int = 2):
    """Newton steps on the DARE of :func:`steady_state` from its solution ``P`` (Hewer 1971).

    The residual of Eq. (3.13), ``Res = F P Fᵀ − K_p S K_pᵀ + Q − P`` with ``S = H P Hᵀ + R`` and
    the predictor gain ``K_p = F P Hᵀ S⁻¹``, is linear in a correction ``ΔP`` to first order
    through the closed loop ``A = F − K_p H``: ``ΔP = A ΔP Aᵀ + Res`` (a Stein equation,
    ``scipy.linalg.solve_discrete_lyapunov``). A step is kept only if it lowers the residual's
    largest entry, so an ill-posed correction (a closed loop with a pole at 1) leaves ``P`` as it is.
    """
    def residual(X):
        S = H @ X @ H.T + R
        Kp = np.linalg.solve(S.T, (F @ X @ H.T).T).T
        return F @ X @ F.T - Kp @ S @ Kp.T + Q - X, F - Kp @ H

    res, A = residual(P)
    size = np.max(np.abs(res))
    for _ in range(steps):
        if size == 0.0:
            break
        try:
            with np.errstate(all="ignore"):
                P_new = _sym(P + scipy.linalg.solve_discrete_lyapunov(A, res))
                res_new, A_new = residual(P_new)
        except (np.linalg.LinAlgError, ValueError):
            break
        size_new = np.max(np.abs(res_new))
        if not size_new < size:  # no progress (or NaN): keep the better of the two
            break
        P, res, A, size = P_new, res_new, A_new, size_new
    return P


#: :func:`steady_state_loop` gives up (``ValueError``) after this many steps: enough for ρ(A) = 0.9999
#: (a random walk with q/r = 1e-8 takes about 1.4e5 steps to reach its floating-point fixed point)
_RICCATI_MAX_ITER = 1_000_000
#: … and compares each iterate with this many before it (a short cycle of rounding ends the loop at once)
_CYCLE = 8


class _Arrival:
    """Whether a deterministic iteration has arrived: its new iterate equals, bit for bit, one it
    produced before — a fixed point of the floating-point map or a cycle of rounding of any period.

    The new iterate is compared with the ``recent`` iterates before it (a cycle of period up to
    that many is recognized as soon as it closes) and with an *anchor*, an earlier iterate that
    moves to the current one after ``recent`` steps, then after twice as many, and so on (Brent's
    cycle detection: R. P. Brent, "An improved Monte Carlo factorization algorithm", BIT 20,
    1980): a cycle of any period λ entered at step μ is recognized within about
    2 max(μ, λ) + λ steps, with memory for ``recent`` + 1 iterates. Comparing with a few recent
    iterates alone misses longer cycles: with OpenBLAS's Sandybridge kernels (no fused
    multiply-add) the Lyapunov iteration P ← F P Fᵀ + Q of a two-state spiral settles into a
    cycle of period 11 and would run 1000000 steps before giving up.
    """

    def __init__(self, recent: int):
        self.recent: list = []
        self.keep = recent
        self.anchor, self.since, self.span = None, 0, recent

    def __call__(self, new: np.ndarray, old: np.ndarray) -> bool:
        """Whether ``new`` (the iterate computed from ``old``) repeats an earlier iterate."""
        if np.array_equal(new, old) or any(np.array_equal(new, x) for x in self.recent):
            return True
        if self.anchor is not None and np.array_equal(new, self.anchor):
            return True
        self.recent = self.recent[1 - self.keep :] + [old] if self.keep > 1 else []
        self.since += 1
        if self.since >= self.span:  # move the anchor here and double the distance to the next move
            self.anchor, self.since, self.span = new, 0, 2 * self.span
        return False


def steady_state_loop(F, H, Q, R):
    """Loop twin of :func:`steady_state`: iterate the Riccati recursion (3.2)–(3.3) to its fixed point.

    Starts from the positive definite ``P⁻ = Q + I`` (so it converges to the same stabilizing
    solution as the DARE, Eq. (3.13), even where ``Q`` alone is a spurious fixed point) and
    iterates P⁻ ← F P Fᵀ + Q with the Joseph-form update P of P⁻. It stops when the iteration
    has arrived, not when it merely moves slowly (§3.9 of the book): when a step reproduces, bit
    for bit, an earlier iterate — an exact fixed point of the floating-point map, or a cycle of
    rounding of any period (:class:`_Arrival`), from which it can get no closer. A small relative
    change is not used as the criterion: with ρ the spectral radius of the closed loop
    F (I − K H), a change of δ per step leaves about δ / (1 − ρ²) to go, and a change below
    4 units of rounding of max|P⁻| can still be many units of rounding of a small entry of P⁻.

    Differences contract by about ρ² per step, so the number of steps grows like
    1 / (1 − ρ²); ``ValueError`` after ``_RICCATI_MAX_ITER`` = 1000000 steps (ρ too close to 1),
    and ``ValueError`` if P⁻ overflows ((F, H) not
    detectable).
    Accuracy: the fixed point of the floating-point map differs from the exact DARE solution by
    rounding amplified by up to about 1 / (1 − ρ²) — the conditioning of the fixed point itself
    (the tests check it against :func:`steady_state` at ρ = 0.998, 0.999 and 0.9999 within
    8 eps / (1 − ρ²); unrefined, ``scipy.linalg.solve_discrete_are`` fell outside that bound on
    some BLAS kernels).

    Examples
    --------
    >>> F, H, Q, R = np.array([[1.0, 0.1], [0.0, 1.0]]), np.array([[1.0, 0.0]]), 0.01 * np.eye(2), np.array([[0.25]])
    >>> all(np.allclose(a, b) for a, b in zip(steady_state_loop(F, H, Q, R), steady_state(F, H, Q, R)))
    True
    """
    F, H, Q, R = _check_stationary(F, H, Q, R)
    max_iter = _RICCATI_MAX_ITER
    n = F.shape[0]
    I = np.eye(n)
    P_prior = Q + I
    arrived = _Arrival(_CYCLE)  # whether an iterate repeats an earlier one (a fixed point or a cycle of rounding)
    for step in range(max_iter):
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported just below
            K = _gain(P_prior, H, R)  # K = P⁻ Hᵀ S⁻¹
            IKH = I - K @ H
            P_post = IKH @ P_prior @ IKH.T + K @ R @ K.T  # Joseph update
            new = F @ P_post @ F.T + Q  # P⁻ ← F P Fᵀ + Q
            new = 0.5 * (new + new.T)
        if not np.all(np.isfinite(new)):
            raise ValueError(
                f"F, H, Q, R: the Riccati recursion diverges (P⁻ overflows after {step + 1} steps); "
                f"an unstable mode of F is not observed through H ((F, H) not detectable)"
            )
        if arrived(new, P_prior):
            P_prior = new  # the floating-point map no longer brings P⁻ anywhere new
            break
        P_prior = new
    else:
        raise ValueError(
            f"F, H, Q, R: the Riccati recursion did not converge in max_iter = {max_iter} steps (a closed-loop "
            f"spectral radius too close to 1); use steady_state"
        )
    K = _gain(P_prior, H, R)
    return K, P_prior, _sym((I - K @ H) @ P_prior)
