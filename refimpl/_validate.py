"""Input validation shared by every public function of refimpl.

Bad input must give a clear error, never a wrong answer. Every public function
validates its arguments here, at the boundary, and each helper raises a
``ValueError`` (bad value or shape) or ``TypeError`` (wrong kind of object)
whose message names the argument, what was expected and what was given::

    >>> as_real_array([1.0, np.nan], "tau")
    Traceback (most recent call last):
    ...
    ValueError: tau: expected finite values, got 1 NaN/inf entries

Conventions enforced here: real input becomes float64, complex
input complex128; an imaginary part is never dropped silently; time stamps are
strictly increasing; randomness comes only from an explicit ``rng``.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable

import numpy as np

__all__ = [
    "as_real_array",
    "as_complex_array",
    "as_array",
    "check_shape",
    "check_nonnegative",
    "check_square",
    "check_hermitian_psd",
    "check_times",
    "check_option",
    "as_positive_scalar",
    "as_rng",
    "as_noise",
    "as_int",
]


def _describe(x: np.ndarray) -> str:
    return f"array of shape {x.shape} and dtype {x.dtype}"


def _to_array(x, name: str) -> np.ndarray:
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"{name}: expected a number or array, got {type(x).__name__}")
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name}: could not convert to an array ({exc})") from None
    if arr.dtype == object or arr.dtype.kind not in "biufc":
        raise TypeError(f"{name}: expected numeric values, got {_describe(arr)}")
    return arr


def _check_ndim(arr: np.ndarray, name: str, ndim) -> None:
    if ndim is None:
        return
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if arr.ndim not in allowed:
        want = " or ".join(str(n) for n in allowed)
        raise ValueError(f"{name}: expected {want} dimensions, got shape {arr.shape}")


def _check_finite(arr: np.ndarray, name: str) -> None:
    if not arr.size:
        return
    if arr.dtype.kind == "f" and arr.flags.c_contiguous:
        # Fast path for large real signals: Σ x² (one BLAS dot) is finite only if every entry is
        # (a NaN/inf entry makes its square NaN/inf, and non-negative terms cannot cancel it). A
        # non-finite result, possibly an overflow of finite entries, falls through.
        flat = arr.reshape(-1)
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(flat @ flat):
                return
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise ValueError(f"{name}: expected finite values, got {bad} NaN/inf entries")


def as_real_array(x, name: str, *, ndim=None, finite: bool = True, copy: bool = True) -> np.ndarray:
    """Convert to a float64 array; complex input with a nonzero imaginary part is an error.

    Parameters
    ----------
    x : array_like
        The value to convert.
    name : str
        The argument's name, used in error messages.
    ndim : int or tuple of int, optional
        Allowed numbers of dimensions.
    finite : bool
        Reject NaN and inf.
    copy : bool
        Return a copy (the default), so that callers may work in place. ``copy=False`` is for
        callers that never write to the array: a float64 input is then returned as is (large
        signals are not copied just to be read).
    """
    arr = _to_array(x, name)
    if arr.dtype.kind == "c":
        if np.any(arr.imag != 0):
            raise TypeError(f"{name}: expected real values, got complex values with nonzero imaginary part")
        arr = arr.real
    arr = np.array(arr, dtype=np.float64) if copy else np.asarray(arr, dtype=np.float64)
    _check_ndim(arr, name, ndim)
    if finite:
        _check_finite(arr, name)
    return arr


def as_complex_array(x, name: str, *, ndim=None, finite: bool = True) -> np.ndarray:
    """Convert to a complex128 array (real input is accepted and cast)."""
    arr = np.array(_to_array(x, name), dtype=np.complex128)
    _check_ndim(arr, name, ndim)
    if finite:
        _check_finite(arr, name)
    return arr


def as_array(x, name: str, *, ndim=None, finite: bool = True) -> np.ndarray:
    """Convert to float64 if real, complex128 if complex (refimpl never drops an imaginary part)."""
    arr = _to_array(x, name)
    if arr.dtype.kind == "c":
        return as_complex_array(arr, name, ndim=ndim, finite=finite)
    return as_real_array(arr, name, ndim=ndim, finite=finite)


def check_shape(arr: np.ndarray, name: str, shape: tuple) -> None:
    """Check ``arr.shape`` against ``shape``; ``None`` entries match any length."""
    ok = arr.ndim == len(shape) and all(s is None or s == a for s, a in zip(shape, arr.shape))
    if not ok:
        want = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
        raise ValueError(f"{name}: expected shape {want}, got shape {arr.shape}")


def check_nonnegative(arr: np.ndarray, name: str) -> None:
    """Variances, noise spectra and lags must be >= 0."""
    if arr.dtype.kind == "c":
        raise TypeError(f"{name}: expected real values, got complex")
    if np.any(arr < 0):
        raise ValueError(f"{name}: expected values >= 0, got minimum {arr.min():.6g}")


def check_square(arr: np.ndarray, name: str) -> None:
    """A square matrix ``(n, n)``."""
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"{name}: expected a square matrix (n, n), got shape {arr.shape}")


def check_hermitian_psd(arr: np.ndarray, name: str, *, rtol: float = 1e-10) -> None:
    """A covariance: Hermitian (symmetric if real) and positive semidefinite.

    Both tests are relative to the largest entry, so a covariance that is PSD up to
    round-off passes and a genuinely indefinite one (a "negative variance") fails.
    """
    check_square(arr, name)
    scale = float(np.max(np.abs(arr))) if arr.size else 0.0
    asym = float(np.max(np.abs(arr - arr.conj().T))) if arr.size else 0.0
    if asym > rtol * max(scale, 1e-300):
        kind = "Hermitian" if arr.dtype.kind == "c" else "symmetric"
        raise ValueError(f"{name}: expected a {kind} matrix, got max |M - M^H| = {asym:.3g}")
    if arr.size:
        w = np.linalg.eigvalsh(0.5 * (arr + arr.conj().T))
        if w.min() < -rtol * max(scale, 1e-300) * arr.shape[0]:
            raise ValueError(
                f"{name}: expected a positive semidefinite matrix (a covariance), "
                f"got smallest eigenvalue {w.min():.6g}"
            )


def check_times(t: np.ndarray, name: str = "t") -> None:
    """Time stamps: a 1-D array, strictly increasing."""
    if t.ndim != 1:
        raise ValueError(f"{name}: expected time stamps of shape (N,), got shape {t.shape}")
    if t.size > 1:
        steps = np.diff(t)
        if np.any(steps <= 0):
            i = int(np.argmax(steps <= 0))
            raise ValueError(
                f"{name}: expected strictly increasing time stamps, got {name}[{i}] = {t[i]:.6g} "
                f">= {name}[{i + 1}] = {t[i + 1]:.6g}"
            )


def check_option(value, name: str, options: Iterable) -> None:
    """A string option from a fixed set."""
    options = tuple(options)
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected one of {options}, got {type(value).__name__} {value!r}")
    if value not in options:
        raise ValueError(f"{name}: expected one of {options}, got {value!r}")


def as_positive_scalar(x, name: str, *, strict: bool = True) -> float:
    """A finite real scalar, > 0 (``strict``) or >= 0."""
    if isinstance(x, bool) or not isinstance(x, (numbers.Real, np.floating, np.integer)):
        if isinstance(x, np.ndarray) and x.ndim == 0 and x.dtype.kind in "iuf":
            x = x.item()
        else:
            raise TypeError(f"{name}: expected a real scalar, got {type(x).__name__}")
    x = float(x)
    if not np.isfinite(x) or (x <= 0 if strict else x < 0):
        rel = "> 0" if strict else ">= 0"
        raise ValueError(f"{name}: expected a finite value {rel}, got {x!r}")
    return x


def as_rng(rng) -> np.random.Generator:
    """The only source of randomness: a Generator, an int seed, or None (fresh entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (isinstance(rng, (numbers.Integral, np.integer)) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng: expected a numpy.random.Generator, an int seed or None, got {type(rng).__name__}")


def as_noise(x, name: str, d: int) -> tuple[np.ndarray, bool]:
    """A noise rate in the eigenbasis: a spectrum (d,) ≥ 0, or a Hermitian PSD matrix (d, d).

    Returns ``(array, diagonal)``: the float64 spectrum and True, or the complex128 matrix
    (symmetrized) and False.
    """
    arr = _to_array(x, name)
    if arr.ndim == 1:
        g = as_real_array(arr, name, ndim=1)
        if g.shape != (d,):
            raise ValueError(f"{name}: expected a spectrum of shape ({d},) or a matrix ({d}, {d}), got shape {g.shape}")
        check_nonnegative(g, name)
        return g, True
    g = as_complex_array(arr, name, ndim=2)
    if g.shape != (d, d):
        raise ValueError(f"{name}: expected a spectrum of shape ({d},) or a matrix ({d}, {d}), got shape {g.shape}")
    check_hermitian_psd(g, name)
    return 0.5 * (g + g.conj().T), False


def as_int(value, name: str, minimum: int = 0) -> int:
    """An integer (bool rejected, no silent truncation of floats) that is at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)
