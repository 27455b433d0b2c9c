"""Independent oracles and random test systems shared by several test modules.

Nothing here imports refimpl: these are the references refimpl is checked against, written
from their textbook definitions with SciPy's ``expm`` as the only numerical tool.

``van_loan``             ∫_0^τ e^{As} Q e^{A^† s} ds by Van Loan's block exponential (Van Loan
                         1978, Thm. 1) on a short step, then doubled;
``van_loan_block``,      the two single-block forms it can use (lower and upper triangular
``van_loan_upper``       block matrices), for tests that compare them;
``random_psd``           a random Hermitian positive semidefinite matrix b bᴴ;
``random_contraction``   a random real matrix with a given spectral radius (discrete-time stable);
``random_hurwitz``       a random dense matrix with spectral abscissa −0.1 (continuous-time stable);
``elementwise_rel``      the largest element-wise relative error (for results whose every entry
                         carries information, where the package's norm-wise ``rel_error`` would
                         hide the small entries);
``delta_recurrence``     the delta rule (DeltaNet, Gated DeltaNet) one step at a time, in complex
                         arithmetic (for complex-step derivatives), from a given initial state.

A test module that wants other defaults binds them once, e.g.
``random_psd = functools.partial(_oracles.random_psd, complex_=True)``.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg

__all__ = ["van_loan", "van_loan_block", "van_loan_upper", "random_psd", "random_contraction", "random_hurwitz",
           "elementwise_rel", "delta_recurrence"]


def van_loan_block(A, Q, tau):
    r"""``∫_0^τ e^{As} Q e^{A^† s} ds`` by one block exponential (Van Loan 1978, Thm. 1).

    ``expm([[−A, Q], [0, A^†]] τ) = [[F11, F12], [0, F22]]`` with ``F22 = e^{A^† τ}`` and
    ``F12 = ∫_0^τ e^{−A(τ−s)} Q e^{A^† s} ds = e^{−Aτ} V(τ)``, so ``F22^† F12 = V(τ)``.

    Q is scaled to unit size first (V is linear in Q): the error of ``expm`` grows with the
    norm of the block matrix, and an unbalanced Q block costs digits for nothing.
    """
    d = A.shape[0]
    c = max(float(np.max(np.abs(Q))), 1e-300)
    M = np.zeros((2 * d, 2 * d), dtype=np.complex128)
    M[:d, :d] = -A
    M[:d, d:] = Q / c
    M[d:, d:] = np.conj(A).T
    F = scipy.linalg.expm(M * tau)
    return c * (F[d:, d:].conj().T @ F[:d, d:])


def van_loan_upper(A, Q, tau):
    r"""The same integral from the other block form.

    ``expm([[A, Q], [0, −A^†]] τ)`` has the upper-right block ``X = ∫_0^τ e^{A(τ−s)} Q e^{−A^† s} ds``,
    and ``X e^{A^† τ} = ∫_0^τ e^{Au} Q e^{A^† u} du``.
    """
    d = A.shape[0]
    c = max(float(np.max(np.abs(Q))), 1e-300)
    M = np.zeros((2 * d, 2 * d), dtype=np.complex128)
    M[:d, :d] = A
    M[:d, d:] = Q / c
    M[d:, d:] = -np.conj(A).T
    F = scipy.linalg.expm(M * tau)
    return c * (F[:d, d:] @ F[:d, :d].conj().T)  # e^{A^† τ} = (e^{Aτ})^†


def van_loan(A, Q, tau, *, block=van_loan_block):
    r"""``∫_0^τ e^{As} Q e^{A^† s} ds``: ``block`` at a short step h = τ/2^k (‖A‖h <= 1/2), then doubled.

    ``V(2h) = V(h) + e^{Ah} V(h) e^{A^† h}``. Why: ``F22^† F12 = e^{Aτ} · (e^{−Aτ} V)`` recovers V
    from a block of size ‖e^{−Aτ}‖‖V‖, so a single block exponential loses about
    ``log10(‖e^{Aτ}‖ ‖e^{−Aτ}‖)`` digits. With stable and unstable modes at τ = 7.3 that is
    ~1e-11..1e-10 (measured against quad_vec, which agrees with the closed form to 5e-15); on the
    short step it is ~1e-16, and doubling adds PSD-congruent terms without cancellation.
    Real A and Q give a real result.
    """
    A, Q = np.asarray(A), np.asarray(Q)
    d = A.shape[0]
    if tau == 0:
        return np.zeros((d, d), dtype=np.result_type(A, Q))
    k = max(0, math.ceil(math.log2(max(np.linalg.norm(A, 2) * tau, 1e-300) / 0.5)))
    h = tau / 2**k
    V = block(A, Q, h)
    E = scipy.linalg.expm(A * h)
    for _ in range(k):
        V = V + E @ V @ E.conj().T  # V(2h) = V(h) + e^{Ah} V(h) e^{A^† h}
        E = E @ E
    return V if np.iscomplexobj(A) or np.iscomplexobj(Q) else V.real


def random_psd(rng, d, *, rank=None, complex_=False, normalize=False, floor=0.0):
    """A random d × d Hermitian PSD matrix ``b bᴴ`` (b: d × rank standard normal, complex if ``complex_``).

    ``normalize`` divides by d (unit average eigenvalue); ``floor`` adds ``floor · I``.
    """
    r = d if rank is None else rank
    b = rng.normal(size=(d, r)) + (1j * rng.normal(size=(d, r)) if complex_ else 0.0)
    P = b @ b.conj().T
    if normalize:
        P = P / d
    return P + floor * np.eye(d) if floor else P


def random_contraction(rng, n, radius=None):
    """A random real matrix with spectral radius ``radius`` (default uniform in [0.3, 0.95])."""
    F = rng.normal(size=(n, n))
    radius = rng.uniform(0.3, 0.95) if radius is None else radius
    return F * (radius / np.abs(np.linalg.eigvals(F)).max())


def random_hurwitz(rng, n, *, complex_=False):
    """A random dense stable A (spectral abscissa −0.1), not normal."""
    M = rng.normal(size=(n, n)) + (1j * rng.normal(size=(n, n)) if complex_ else 0.0)
    return M - (np.max(np.linalg.eigvals(M).real) + 0.1) * np.eye(n)


def elementwise_rel(actual, desired, *, nonzero=False) -> float:
    """max_k |a_k − d_k| / |d_k| over entries with d_k ≠ 0; entries with d_k = 0 must be exactly 0.

    Infinite desired entries (a true value beyond float64) must be matched exactly. With
    ``nonzero`` every desired entry must be finite and nonzero.
    """
    a, d = np.asarray(actual), np.asarray(desired)
    assert a.shape == d.shape, f"shape {a.shape} != {d.shape}"
    if nonzero:
        assert np.all(np.isfinite(d)) and np.all(d != 0)
    assert not np.any(np.isnan(a)), "NaN in the result"
    zero = d == 0
    assert np.all(a[zero] == 0), f"expected exact zeros, got {a[zero]}"
    inf = ~np.isfinite(d)  # the true value overflows float64: the same infinite components
    np.testing.assert_array_equal(a[inf], d[inf])
    nz = ~zero & ~inf
    return float(np.max(np.abs(a[nz] - d[nz]) / np.abs(d[nz]), initial=0.0))


def delta_recurrence(q, k, v, beta, log_g=None, S0=None, *, scale=None):
    """The delta rule, Eq. (16.9), one step at a time and complex-capable (for complex-step derivatives):
    ``S_t = g_t S_{t−1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ``, ``o_t = S_t (scale · q_t)`` from ``S_{−1} = S0``
    (default 0). Returns ``(o, S_{L−1})``."""
    c = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if log_g is None:
        log_g = np.zeros(np.shape(beta))
    batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2], np.shape(beta)[:-1], np.shape(log_g)[:-1])
    S = np.zeros(batch + (v.shape[-1], k.shape[-1]), dtype=complex) if S0 is None else np.asarray(S0, dtype=complex)
    out = []
    for t in range(q.shape[-2]):
        kt = k[..., t, :]
        g, b = np.exp(log_g[..., t])[..., None, None], beta[..., t][..., None, None]
        Sk = np.einsum("...ij,...j->...i", S, kt)
        S = g * S - g * b * Sk[..., :, None] * kt[..., None, :] + b * v[..., t, :, None] * kt[..., None, :]
        out.append(np.einsum("...ij,...j->...i", S, c * q[..., t, :]))
    return np.stack(out, axis=-2), S
