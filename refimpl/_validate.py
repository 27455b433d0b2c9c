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

import contextvars
import functools
import inspect
import numbers
from collections.abc import Callable, Iterable

import numpy as np

__all__ = [
    "check_finite_part",
    "check_part",
    "vouch_finite",
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
    "as_int_array",
    "as_bool",
    "as_lags",
    "check_qk",
    "check_qkv",
    "hermitian_part",
    "refuse_rng",
    "guard_overflow",
    "pow2_scale",
    "row_norms",
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


def _sum_is_finite(arr: np.ndarray) -> bool:
    """Σ x is finite only if every entry is (a NaN entry makes the sum NaN, an inf entry makes it
    ±inf or NaN); False may also mean that finite entries overflowed the sum. NumPy's own
    reduction, not a BLAS dot: a multithreaded dot over a long vector stalls for milliseconds when
    the cores are busy."""
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(np.add.reduce(arr, axis=None)))


def _check_finite(arr: np.ndarray, name: str) -> None:
    if not arr.size:
        return
    if arr.dtype.kind in "fc" and arr.flags.c_contiguous and _sum_is_finite(arr.reshape(-1).view(arr.real.dtype)):
        return  # fast path (complex: the real and imaginary parts as one real array); a non-finite sum falls through
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise ValueError(f"{name}: expected finite values, got {bad} NaN/inf entries")


def check_finite_part(checks, part) -> None:
    """The finiteness check of :func:`as_real_array`, deferred to the part of the work that reads it.

    ``checks`` holds ``(name, view, arg)`` triples: ``view[part]`` (``part`` indexes the first
    axis) is the slice of the argument that one part of a threaded computation reads
    (:func:`refimpl._blocking.in_parts`), ``arg`` the argument as given. Each part checks its own
    slices, in its own thread, before it computes (the reads bring them into cache for the
    computation), instead of the caller reading every argument once more on one core first. A
    non-finite slice raises the error of :func:`as_real_array`, counted over all of ``arg``.
    """
    for name, view, arg in checks:
        piece = view[part]
        if piece.size and not _sum_is_finite(piece):
            _check_finite(np.asarray(arg), name)  # raises, unless finite entries overflowed the sum


def check_part(validate: Callable[[slice], None], part: slice) -> None:
    """``validate(part)``, the checks a threaded part makes of what it reads; if they fail, the same
    checks of everything (``validate(slice(None))``) raise instead.

    With two bad arguments read by different parts (NaN in the queries of one head, ∞ in the values
    of another), the part that fails first would otherwise name its own argument, so that the error
    depended on the number of threads. Checked again in full and in order, the error is the one the
    unthreaded call raises (where one part reads everything), whichever part found a problem.
    """
    try:
        validate(part)
    except (ValueError, TypeError):
        validate(slice(None))  # raises the first error of the checks in order
        raise


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


def as_complex_array(x, name: str, *, ndim=None, finite: bool = True, copy: bool = True) -> np.ndarray:
    """Convert to a complex128 array (real input is accepted and cast); ``copy`` as in :func:`as_real_array`."""
    arr = (np.array if copy else np.asarray)(_to_array(x, name), dtype=np.complex128)
    _check_ndim(arr, name, ndim)
    if finite:
        _check_finite(arr, name)
    return arr


def as_array(x, name: str, *, ndim=None, finite: bool = True, copy: bool = True) -> np.ndarray:
    """Convert to float64 if real, complex128 if complex (refimpl never drops an imaginary part);
    ``copy`` as in :func:`as_real_array`."""
    arr = _to_array(x, name)
    if arr.dtype.kind == "c":
        return as_complex_array(arr, name, ndim=ndim, finite=finite, copy=copy)
    return as_real_array(arr, name, ndim=ndim, finite=finite, copy=copy)


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
    """The only source of randomness: a Generator, an int seed >= 0, or None (fresh entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, (numbers.Integral, np.integer)) and not isinstance(rng, (bool, np.bool_)):
        if rng < 0:
            raise ValueError(f"rng: expected a seed >= 0, got {int(rng)}")
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng: expected a numpy.random.Generator, an int seed or None, got {type(rng).__name__}")


def refuse_rng(rng, because: str) -> None:
    """An ``rng`` that would go unused is an error, not silently ignored: it must be None.

    ``because`` names what makes it unused, e.g. ``"projection is given"``.
    """
    if rng is not None:
        raise ValueError(f"rng: expected None when {because} (nothing is drawn), got {type(rng).__name__}")


def as_bool(value, name: str) -> bool:
    """A flag: exactly a Python ``bool`` or ``numpy.bool_``.

    Truthiness is not enough: ``causal="no"`` is truthy, and a flag that silently flips the
    computation (or the number of returned values) is a wrong answer, not a convenience.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool (True or False), got {type(value).__name__} {value!r}")
    return bool(value)


def as_lags(x, name: str) -> np.ndarray:
    """Lags (time differences of a key before its query): a finite float64 array, every entry >= 0."""
    arr = as_real_array(x, name)
    if arr.size and np.any(arr < 0):
        raise ValueError(f"{name}: expected lags >= 0, got minimum {arr.min():.6g}")
    return arr


def hermitian_part(m: np.ndarray) -> np.ndarray:
    """``(M + M^H) / 2`` over the last two axes: removes the round-off asymmetry of a covariance."""
    return 0.5 * (m + np.conj(np.swapaxes(m, -1, -2)))


def check_qk(q, k, *, names=("q", "k"), complex_values: bool = False, causal: bool = False):
    """Queries (..., N, d) and keys (..., M, d): :func:`check_qkv` without values."""
    q, k, _, batch = check_qkv(q, k, _NO_VALUES, names=(*names, ""), complex_values=complex_values, causal=causal)
    return q, k, batch


_NO_VALUES = object()


def check_qkv(q, k, v, *, names=("q", "k", "v"), complex_values: bool = False, same_shape: bool = False,
              causal: bool = False, copy: bool = True, finite: bool = True):
    """Queries (..., N, d), keys (..., M, d) and values (..., M, dv) of any attention-like module.

    One rule for every module, one set of messages:

    * each of q, k, v has at least 2 axes and N, M, d >= 1 (dv >= 1);
    * k has q's last axis d; v has k's number of rows M;
    * ``same_shape``: k and v have q's shape exactly (one token sequence, as in AFA);
    * ``causal``: M = N (a causal mask pairs query i with key i);
    * the batch axes broadcast.

    ``names`` are the caller's argument names (``("z", "z", "z")`` when one argument plays all
    three roles). Returns ``(q, k, v, batch)`` as float64
    (complex128 with ``complex_values``). ``copy=False`` (real values only) returns float64
    inputs as they are, for callers that never write to them (see :func:`as_real_array`).
    ``finite=False`` leaves the finiteness of the values to the caller (the threads that read
    them, :func:`check_finite_part`).
    """
    nq, nk, nv = names
    conv = functools.partial(as_complex_array if complex_values else as_real_array, copy=copy, finite=finite)
    q, k = conv(q, nq), conv(k, nk)
    v = None if v is _NO_VALUES else conv(v, nv)
    checks = [(q, nq, "(..., N, d)"), (k, nk, "(..., M, d)")] + ([] if v is None else [(v, nv, "(..., M, dv)")])
    for arr, name, what in checks:
        if arr.ndim < 2:
            raise ValueError(f"{name}: expected shape {what}, got shape {arr.shape}")
        if arr.shape[-2] == 0 or arr.shape[-1] == 0:
            raise ValueError(f"{name}: expected shape {what} with at least one token and one channel, got shape {arr.shape}")
    if same_shape:
        for arr, name, _ in checks[1:]:
            if arr.shape != q.shape:
                raise ValueError(f"{name}: expected the shape of {nq} {q.shape}, got shape {arr.shape}")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"{nk}: expected the same last dimension d = {q.shape[-1]} as {nq}, got shape {k.shape}")
    if v is not None and v.shape[-2] != k.shape[-2]:
        raise ValueError(f"{nv}: expected the same number of rows M = {k.shape[-2]} as {nk}, got shape {v.shape}")
    if causal and k.shape[-2] != q.shape[-2]:
        raise ValueError(
            f"{nk}: causal attention needs as many keys as {nq} has queries (N = {q.shape[-2]}), got shape {k.shape}"
        )
    batch = q.shape[:-2]
    for arr, name, _ in checks[1:]:  # name the first argument whose batch axes do not fit the others'
        try:
            batch = np.broadcast_shapes(batch, arr.shape[:-2])
        except ValueError:
            got = ", ".join(str(a.shape) for a, _, _ in checks)
            names_ = ", ".join(n for _, n, _ in checks)
            raise ValueError(f"{name}: the batch axes of {names_} do not broadcast, got shapes {got}") from None
    return q, k, v, batch


# ---------------------------------------------------------------------------------------------
# Overflow: a result is finite, or the call is refused with the argument that overflowed it
# ---------------------------------------------------------------------------------------------


def pow2_scale(x: np.ndarray, axis=None) -> tuple[np.ndarray, np.ndarray]:
    """``(x / s, s)`` with ``s`` the power of two nearest above max |x| (along ``axis``; 1 where x is 0).

    Dividing by a power of two is exact, so a scale-invariant computation run on ``x / s`` gives
    bit for bit the same answer for moderate inputs and a finite one for inputs near the
    float64 limits (|x| ~ 1e300 or 1e-300), where forming x² or Σ x would overflow or underflow.
    """
    m = np.max(np.abs(x), axis=axis, keepdims=axis is not None) if x.size else np.zeros(())
    _, e = np.frexp(np.where(m > 0, m, 0.5))  # frexp(0.5) = (0.5, 0): s = 1 where x is 0
    s = np.ldexp(1.0, e)
    return x / s, s


#: Below this norm some squares of a row may have lost digits to underflow (entries under ~1e-154)
_SMALL_NORM = 2.0**-460


def row_norms(x: np.ndarray) -> np.ndarray:
    """``‖x_i‖₂`` along the last axis (kept as length 1): ``np.linalg.norm``, and for rows near the
    float64 limits — whose squares overflow (the norm came out inf) or may underflow (it came out
    below 2^−460, or 0 for a nonzero row) — the norm of the row scaled by a power of two first
    (:func:`pow2_scale`; exact). A square lost to underflow in a row of norm >= 2^−460 is below
    2^−1022, under 2^−100 of the row's squared norm: far below its rounding.
    """
    with np.errstate(over="ignore", under="ignore"):  # such rows are redone below
        n = np.linalg.norm(x, axis=-1, keepdims=True)
    redo = ~(n >= _SMALL_NORM) | np.isinf(n)
    if np.any(redo):
        rows = redo[..., 0]
        xs, s = pow2_scale(x[rows], axis=-1)
        n[rows] = s * np.linalg.norm(xs, axis=-1, keepdims=True)
    return n


#: The arrays a function wrapped by :func:`guard_overflow` has itself found finite (:func:`vouch_finite`),
#: during the current call: a list per call, None outside one.
_VOUCHED: contextvars.ContextVar[list | None] = contextvars.ContextVar("refimpl_vouched", default=None)


def vouch_finite(arr: np.ndarray) -> None:
    """Tell the enclosing :func:`guard_overflow` that every entry of ``arr`` (an output about to be
    returned) is finite, so that it does not read the whole output once more on one core.

    For functions whose threads have already summed their own parts of the output while in cache
    (a sum is finite only if every entry is, :func:`_sum_is_finite`): the serial check of the
    guard cost 1.3 ms of 23 ms for gated linear attention at H = 4, L = 8192, Dk = 64. Vouch only
    for what was checked: an array vouched for is not checked again. Outside a guarded call this
    does nothing.
    """
    vouched = _VOUCHED.get()
    if vouched is not None:
        vouched.append(arr)


def _all_finite(out, vouched=()) -> bool:
    if any(out is v for v in vouched):
        return True
    if isinstance(out, (tuple, list)):
        return all(_all_finite(o, vouched) for o in out)
    if isinstance(out, np.ndarray):
        if out.dtype.kind not in "fc" or not out.size:
            return True
        with np.errstate(all="ignore"):
            if np.isfinite(out.sum()):  # fast path: one reduction; a non-finite sum falls through
                return True
        return bool(np.all(np.isfinite(out)))
    if isinstance(out, dict):
        return all(_all_finite(o, vouched) for o in out.values())
    if hasattr(out, "__dataclass_fields__"):
        return all(_all_finite(getattr(out, f), vouched) for f in out.__dataclass_fields__)
    if isinstance(out, (float, complex, np.floating, np.complexfloating)):
        return bool(np.isfinite(out))
    return True


def _magnitude(value) -> tuple[float, float]:
    """(largest |entry|, smallest nonzero |entry|) of a numeric argument; (1, 1) if not numeric."""
    try:
        arr = np.abs(np.asarray(value, dtype=np.complex128)).ravel()
    except (TypeError, ValueError):
        return 1.0, 1.0
    arr = arr[np.isfinite(arr) & (arr > 0)]
    if not arr.size:
        return 1.0, 1.0
    return float(arr.max()), float(arr.min())


#: The start of NumPy's error for a ragged nested sequence ("... The requested array has an inhomogeneous shape ...").
_RAGGED = "setting an array element with a sequence"


def guard_overflow(*names: str, first_only: bool | int = False, hint: str | None = None):
    """Decorator: the result is finite with no floating-point warning, or a ``ValueError`` names the culprit.

    Inputs are validated to be finite, but finite inputs of extreme magnitude (|x| ~ 1e300, or
    ~1e-300 where they divide) can still overflow float64 inside a quadratic form, an exponential
    or a product of many factors. Such a result is not an answer: NaN or inf would propagate
    silently into a caller's comparison. The wrapped function runs with floating-point warnings
    silenced; if its result contains NaN/inf, or it raises ``OverflowError``/``ZeroDivisionError``
    (the loop twins use :mod:`math`), the call is refused with a ``ValueError`` that names the
    arguments among ``names`` (default: all) whose magnitudes are extreme (all of them if none is).
    Functions whose documented result may be infinite are not wrapped; ``first_only`` checks
    only the first output, or the first n outputs for an int n (the others are diagnostics that
    may hold documented infinities, e.g. the masked entries of an intermediate precision, or the
    log-sum-exp −∞ of an attention row that sees no key). ``hint``: the message when no argument
    is extreme, for a recursion that can diverge from moderate inputs (LMS with too large a step
    size); it names the argument to change.

    Also a safety net for ragged input: NumPy's own "setting an array element with a sequence"
    ``ValueError`` (a ragged nested list that reached ``np.shape`` or ``np.asarray`` before the function
    validated it) becomes the ``TypeError`` of :func:`as_real_array`, ``"<name>: could not convert to an
    array (...)"``, naming the first argument NumPy cannot convert.
    """

    def wrap(fn):
        sig = inspect.signature(fn)
        checked = names or tuple(p for p in sig.parameters if p not in ("cls", "self"))

        def refuse(args, kwargs):
            try:
                bound = sig.bind_partial(*args, **kwargs).arguments
            except TypeError:
                bound = {}
            found = []
            for name in checked:
                if name in bound:
                    hi, lo = _magnitude(bound[name])
                    if hi > 1e100 or lo < 1e-100:
                        found.append(f"{name} (|{name}| from {lo:.3g} to {hi:.3g})")
            if not found and hint:
                return ValueError(hint)
            culprits = ", ".join(found) if found else ", ".join(checked)
            return ValueError(
                f"{culprits}: the result is not representable in float64 (NaN/inf from overflow or "
                "underflow); rescale the inputs to moderate magnitudes"
            )

        def extreme(args, kwargs) -> bool:
            try:
                bound = sig.bind_partial(*args, **kwargs).arguments
            except TypeError:
                return False
            return any(max(hi, 1 / lo) > 1e100 for hi, lo in (_magnitude(bound[n]) for n in checked if n in bound))

        def ragged(args, kwargs) -> str | None:
            # the first argument (in signature order) that NumPy cannot convert to an array: a ragged nested
            # list reached np.shape / np.asarray inside the function before the argument was validated
            try:
                bound = sig.bind_partial(*args, **kwargs).arguments
            except TypeError:
                return None
            for name, value in bound.items():
                if isinstance(value, (list, tuple)):
                    try:
                        np.asarray(value)
                    except ValueError:
                        return name
            return None

        def internal(exc: ValueError) -> bool:
            # An error raised by a check on an intermediate (it names no argument of this function, or
            # finds non-finite values that the inputs did not have): overflow reached an inner step.
            msg = str(exc)
            lead = msg.split(":", 1)[0] if ":" in msg else ""
            own = lead and all(part.strip().split(" ")[0] in sig.parameters for part in lead.split(","))
            return not own or "expected finite values" in msg or "not representable in float64" in msg

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            vouched = _VOUCHED.set([])  # the outputs fn itself found finite (vouch_finite)
            try:
                with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
                    out = fn(*args, **kwargs)
            except (OverflowError, ZeroDivisionError, FloatingPointError):
                raise refuse(args, kwargs) from None
            except IndexError:
                # an extreme input can empty a selection an inner step relies on (e.g. no pole left
                # after an overflow); without extreme inputs an IndexError is a bug and propagates
                if extreme(args, kwargs):
                    raise refuse(args, kwargs) from None
                raise
            except ValueError as exc:
                if _RAGGED in str(exc):  # NumPy's own message from a ragged argument, which names no argument
                    culprit = ragged(args, kwargs)
                    if culprit is not None:
                        raise TypeError(f"{culprit}: could not convert to an array ({exc})") from None
                if internal(exc) and extreme(args, kwargs):
                    raise refuse(args, kwargs) from exc
                raise
            finally:
                found = _VOUCHED.get()
                _VOUCHED.reset(vouched)
            n = int(first_only)  # True: the first output; an int n: the first n outputs
            if not _all_finite(out[:n] if n and isinstance(out, tuple) else out, found):
                raise refuse(args, kwargs)
            return out

        return wrapper

    return wrap


def as_noise(x, name: str, d: int, ref: str = "eigvals") -> tuple[np.ndarray, bool]:
    """A noise rate in the eigenbasis: a spectrum (d,) ≥ 0, or a Hermitian PSD matrix (d, d).

    Returns ``(array, diagonal)``: the float64 spectrum and True, or the complex128 matrix
    (symmetrized) and False.
    """
    arr = _to_array(x, name)
    if arr.ndim == 1:
        g = as_real_array(arr, name, ndim=1)
        if g.shape != (d,):
            raise ValueError(
                f"{name}: expected a spectrum of shape ({d},) or a matrix ({d}, {d}) to match the d = {d} {ref}, "
                f"got shape {g.shape}"
            )
        check_nonnegative(g, name)
        return g, True
    g = as_complex_array(arr, name, ndim=2)
    if g.shape != (d, d):
        raise ValueError(
            f"{name}: expected a spectrum of shape ({d},) or a matrix ({d}, {d}) to match the d = {d} {ref}, "
            f"got shape {g.shape}"
        )
    check_hermitian_psd(g, name)
    return hermitian_part(g), False


def as_int_array(x, name: str, what: str = "integers") -> np.ndarray:
    """Integer data (offsets, sequence ids) as an int64 array, before any arithmetic on it.

    Any signed or unsigned integer dtype is accepted and cast to int64, so that differences of the
    values are signed: ``np.diff`` of an unsigned array wraps around (3 − 6 is 4294967293 in uint32),
    which would hide a decrease from a monotonicity check. Refused, naming the argument: data that is
    not an array of integers (``TypeError``; floats included, as there is no silent truncation) and
    unsigned values above the int64 range (``ValueError``). ``what`` says what was expected, e.g.
    ``"integer offsets"``.
    """
    arr = _to_array(x, name)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected {what}, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name}: expected {what} in the int64 range, got maximum {int(arr.max())}")
    return arr.astype(np.int64)


def as_int(value, name: str, minimum: int = 0) -> int:
    """An integer (bool rejected, no silent truncation of floats) that is at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)
