"""The tolerance policy of refimpl, documented once and used by tests, chapters and oracle users.

Tiers
-----
``SELF``    float64 self-consistency: loop twin vs vectorized, or two algorithms for the
            same quantity (recurrent vs convolution, closed form vs scan).  rtol 1e-10.
``ORACLE``  float64 against an independent oracle: SciPy (``expm``, ``solve_ivp`` at tight
            tolerances is *not* in this tier, see ``ODE``), closed forms.  rtol 1e-12.
``ODE``     against an adaptive ODE/quadrature solver run at rtol=atol=1e-13: the solver's own
            error dominates, so rtol 1e-9.
Monte Carlo checks use fixed seeds and bands stated in standard errors (``mc_band``).

Errors are measured *norm-wise*: ``max|actual - desired| / max|desired|``.  Element-wise
relative error is meaningless for entries that are zero by symmetry (e.g. the off-diagonal
of a diagonal covariance), and norm-wise error is what a user's kernel can guarantee.

Users validating float32/TF32/float16/bfloat16 kernels against refimpl use the ratio rule of
FlashAttention's tests (``low_precision_verdict``, the one implementation of the rule, used by
``refimpl.oracle.compare`` and the golden vectors):

    e(user) <= RATIO_RULE_FACTOR * max(e(plain), ulps * eps(tier))

with every error norm-wise against the float64 oracle, ``ulps`` = ``PLAIN_ULPS[tier]`` (4 for float32,
2 for tf32, 1 for float16 and bfloat16) for a plain reference run in the tier and the case's ``ulps`` (default 4)
otherwise, ``eps(tier)`` the tier's machine epsilon
(``refimpl._precision.eps``: 2^-23, 2^-10 for tf32 and float16, 2^-7 for bfloat16) and
``plain`` a reference *run in the tier the way kernels compute*: refimpl's straightforward
algorithm with intermediates stored in the tier's format and matrix products and reductions
accumulated in float32 (``refimpl._lowprec``; in tf32 the worse of two runs, the inputs of matrix
products rounded to nearest even and truncated, as hardware converts either way). For functions without such a plain algorithm
the plain value is refimpl on the inputs rounded to the tier, evaluated in float64, rounded
to the tier: that model has no arithmetic rounding, only the floor ``ulps * eps`` stands for
it, and the report says which model was used. ``DTYPE_RTOL`` are rough absolute tiers.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "SELF",
    "ORACLE",
    "ODE",
    "DTYPE_RTOL",
    "RATIO_RULE_FACTOR",
    "PLAIN_ULPS",
    "max_abs_error",
    "rel_error",
    "assert_close",
    "mc_band",
    "ratio_rule",
    "low_precision_bound",
    "low_precision_verdict",
    "ratio_bound",
]

SELF = 1e-10
ORACLE = 1e-12
ODE = 1e-9

# Norm-wise relative tolerances for user kernels in low precision (per-dtype tier).
DTYPE_RTOL = {"float64": 1e-10, "float32": 1e-4, "tf32": 5e-3, "float16": 5e-3, "bfloat16": 3e-2}
RATIO_RULE_FACTOR = 2.0
#: the floor of the ratio rule, in units of eps(tier), when the plain reference is run in the tier.
#: float32: 4 — two correct algorithms (a sequential and a chunked scan, say) differ by a few ε in
#: their arithmetic while the storage rounding of the output is only ε/2; float16, bfloat16:
#: 1 — the plain error already contains the storage and input rounding of the tier (about ε/2 at
#: the largest entry), and a larger floor would let a bfloat16 kernel (about 3 ε of float16) pass
#: the float16 tier; tf32: 2 — TF32 stores float32, so only the conversion of a matrix product's inputs
#: rounds, and hardware may convert by truncation, whose error is up to ε, not ε/2, and biased: a chunked
#: kernel truncates the operands of a chain of products (C, B, then C Bᵀ ∘ decays, then x) where the plain
#: recurrence truncates two, and a correct truncating chunked SSD kernel reached 2.1 ε (the test
#: ``test_truncating_tf32_kernels_pass_the_tf32_tier``). The rounded-input model uses the case's ``ulps``
#: (default 4) in every tier.
PLAIN_ULPS = {"float32": 4.0, "tf32": 2.0, "float16": 1.0, "bfloat16": 1.0}


#: numbers per block of :func:`max_abs_error` and :func:`rel_error`: their temporaries (the difference, its
#: absolute value, the finiteness masks) stay in cache instead of being arrays the size of the output; at a
#: realistic kernel output (2 × 2048 × 16 × 128 numbers) whole-array temporaries took 165 ms a call
_ERROR_BLOCK = 1 << 16


def _flat_pair(actual, desired) -> tuple[np.ndarray, np.ndarray]:
    """``actual`` and ``desired`` broadcast together and flattened (views where the layout allows)."""
    a, d = np.broadcast_arrays(np.asarray(actual), np.asarray(desired))
    return a.reshape(-1), d.reshape(-1)


def _block_error(a: np.ndarray, d: np.ndarray) -> float:
    """``max |a − d|`` of one block, or inf (see :func:`max_abs_error`)."""
    with np.errstate(invalid="ignore"):  # inf − inf is NaN here, and sorted out below
        diff = np.abs(a - d)
    if not np.all(np.isfinite(diff)):
        same = (a == d) | (np.isnan(a) & np.isnan(d))  # equal infinities count as agreement
        if np.all(same | np.isfinite(diff)):
            diff = np.where(same, 0.0, diff)
        else:
            return float("inf")
    return float(diff.max())


def max_abs_error(actual, desired) -> float:
    """``max |actual - desired|`` (NaN anywhere gives inf), in blocks of :data:`_ERROR_BLOCK` numbers."""
    a, d = _flat_pair(actual, desired)
    err = 0.0
    for i in range(0, a.size, _ERROR_BLOCK):
        err = max(err, _block_error(a[i : i + _ERROR_BLOCK], d[i : i + _ERROR_BLOCK]))
        if err == float("inf"):
            break
    return err


def rel_error(actual, desired) -> float:
    """Norm-wise relative error ``max|actual - desired| / max|desired|``: Eq. (15.1) of the book.

    The measure of every verdict of :func:`refimpl.oracle.compare` (public there as ``oracle.rel_error``).
    The scale is the largest *finite* ``|desired|``: infinite entries (the log-sum-exp of an attention
    row that sees no key) must be matched exactly (:func:`max_abs_error`) and would otherwise make
    every error relative to ∞, i.e. 0. If ``desired`` has no nonzero finite entry the absolute error
    is returned.

    >>> rel_error([1.0, 2.5], [1.0, 2.0])  # 0.5 / 2
    0.25
    >>> rel_error([0.5, -np.inf], [0.5, -np.inf])  # an infinite entry matched exactly
    0.0
    """
    flat = np.asarray(desired).reshape(-1)
    scale = 0.0
    for i in range(0, flat.size, _ERROR_BLOCK):
        d = np.abs(flat[i : i + _ERROR_BLOCK])
        finite = d[np.isfinite(d)]
        if finite.size:
            scale = max(scale, float(np.max(finite)))
    err = max_abs_error(actual, desired)
    return err / scale if scale > 0 else err


def assert_close(actual, desired, *, rtol: float = SELF, atol: float = 0.0, what: str = "") -> float:
    """Assert shape equality and ``rel_error <= rtol`` (or abs error <= atol); return the error.

    The message prints both errors, so a failing test says by how much it failed.
    """
    a, d = np.asarray(actual), np.asarray(desired)
    if a.shape != d.shape:
        raise AssertionError(f"{what}: shape {a.shape} != expected {d.shape}")
    err_abs = max_abs_error(a, d)
    err_rel = rel_error(a, d)
    if not (err_rel <= rtol or err_abs <= atol):
        raise AssertionError(
            f"{what or 'values'} differ: norm-wise rel error {err_rel:.3e} > rtol {rtol:.1e} "
            f"(max abs error {err_abs:.3e}, atol {atol:.1e})"
        )
    return err_rel


def mc_band(n_samples: int, n_sigma: float = 5.0) -> float:
    """Half-width, in units of the per-sample standard deviation, of an ``n_sigma`` Monte Carlo band.

    A sample mean of ``n_samples`` i.i.d. draws with standard deviation ``s`` lies within
    ``mc_band(n) * s`` of its expectation except with probability ~ erfc(n_sigma/sqrt 2).
    """
    return n_sigma / np.sqrt(n_samples)


def ratio_bound(err_plain: float, *, level: float = float(np.finfo(np.float64).tiny),
                factor: float = RATIO_RULE_FACTOR) -> float:
    """The bound of the ratio rule, ``factor · max(err_plain, level)`` (Eq. (15.3) of the book).

    ``level`` is the floor below which the plain error does not lower the bound: the oracle
    uses ``ulps · ε_dtype`` (the rounding of a kernel's own arithmetic, which the plain
    evaluation on rounded inputs does not see); the default is the smallest normal float64.
    """
    return factor * max(float(err_plain), float(level))


def ratio_rule(err_kernel: float, err_plain: float, *, level: float = float(np.finfo(np.float64).tiny),
               factor: float = RATIO_RULE_FACTOR) -> bool:
    """The low-precision acceptance rule: ``err_kernel <= factor · max(err_plain, level)`` (both vs float64).

    Examples
    --------
    >>> ratio_rule(2e-4, 1e-4), ratio_rule(3e-4, 1e-4)
    (True, False)
    >>> ratio_rule(1e-7, 0.0, level=4 * 2.0**-23)  # exact plain result: the floor decides
    True
    """
    return bool(err_kernel <= ratio_bound(err_plain, level=level, factor=factor))


def low_precision_bound(err_plain: float, tier, ulps: float = 4.0, factor: float = RATIO_RULE_FACTOR,
                        floor: float = 0.0) -> float:
    """The bound of the low-precision verdict: ``factor * max(err_plain, ulps * eps(tier), floor)`` (Eq. (15.3)).

    ``floor``: a case's own floor of the relative error (the decay floor of a chunked linear recurrence,
    :func:`refimpl.oracle.decay_floor`; 0 for every other function).

    Examples
    --------
    >>> low_precision_bound(1e-6, "float32")  # above the floor: twice the plain error
    2e-06
    >>> low_precision_bound(0.0, "float16", ulps=1) == 2 * 2.0**-10
    True
    """
    from ._precision import eps

    return float(ratio_bound(err_plain, level=max(ulps * eps(tier), floor), factor=factor))


def low_precision_verdict(err_user: float, err_plain: float, tier, ulps: float = 4.0,
                          factor: float = RATIO_RULE_FACTOR, floor: float = 0.0) -> tuple:
    """``(passed, bound)``: ``err_user <= factor * max(err_plain, ulps * eps(tier), floor)`` (Eq. (15.3), module docstring).

    ``err_user`` and ``err_plain`` are norm-wise relative errors against the float64 oracle;
    a NaN error never passes.

    Examples
    --------
    >>> low_precision_verdict(3e-3, 5e-4, "float16", ulps=1)  # a bfloat16 kernel in the float16 tier
    (False, 0.001953125)
    """
    bound = low_precision_bound(err_plain, tier, ulps, factor, floor)
    return bool(err_user <= bound), bound
