r"""Precision tiers of GPU kernels, emulated in NumPy by rounding.

Kernels ship in five precisions; NumPy has two of them natively (float64, float32) and one as a
storage type (float16). The others are emulated here, exactly, by rounding float64 values to the
tier's grid with integer operations on the IEEE-754 bits:

========== ============ ============= ================================================================
tier        mantissa     ε (= 2^−p)    how it is carried here
========== ============ ============= ================================================================
float64     52 bits      2^−52         ``numpy.float64``
float32     23 bits      2^−23         ``numpy.float32``
tf32        10 bits      2^−10         ``numpy.float32`` storage; only the *inputs of matrix products*
                                       are converted to 10 bits (NVIDIA's TensorFloat-32, Triton's default
                                       for float32 ``tl.dot``), the products accumulate in float32
bfloat16    7 bits       2^−7          ``numpy.float32`` holding values of the bfloat16 grid (8 exponent
                                       bits: the range of float32)
float16     10 bits      2^−10         ``numpy.float16`` (5 exponent bits: max 65504, subnormals
                                       down to 2^−24)
========== ============ ============= ================================================================

Rounding is to nearest, ties to even, done once from float64 (no double rounding through
float32); values beyond the largest finite number of the tier become ±inf, values below the
smallest normal number land on the tier's subnormal grid. For the two tiers kept in float32's
exponent range (tf32, bfloat16), :func:`round_to` also converts a float32 value the other ways
hardware does (``rounding=``, :data:`ROUNDINGS`): to nearest with ties away from zero (PTX's
``cvt.rna``) and by truncation, i.e. dropping the low mantissa bits (rounding toward zero), which is
what matrix instructions that read float32 operands as TF32 without a conversion do.

TF32's conversion is not fixed by the format: one kernel's matrix products see its inputs rounded
to nearest, another's truncated, and truncation is biased (every magnitude shrinks, by ε/2 on average)
where rounding to nearest is not, so its error does not average out in a sum and is about twice as
large or more (measured in ``tests/test_oracle.py``). The plain references of the tf32 tier are
therefore computed with both conversions of the matrix products' inputs (:func:`tf32_rounding`,
read by :func:`matmul`), and the oracle takes, quantity by quantity, the one whose error is larger
(:func:`refimpl.oracle.compare`).

The arithmetic model of a kernel in a tier (the one :mod:`refimpl._lowprec` follows):
intermediates that a kernel writes are stored in the tier's format (:func:`store`);
dot products, matrix products and reductions (sums, prefix sums, recurrence states) are
accumulated in float32 for the 16-bit tiers and TF32 — as tensor cores and FlashAttention's own
reference do — and in float32 for float32 (:func:`matmul`, :func:`acc`); elementwise
``exp``/``log``/division run in float32 on the stored values.

Glossary: ``tier`` one of :data:`TIERS`; ``grid`` the set of numbers the tier represents;
``carrier`` the NumPy dtype that holds them (:func:`carrier`).
"""

from __future__ import annotations

import contextlib
import contextvars

import numpy as np

from ._blocking import fill_blocks

__all__ = ["TIERS", "ROUNDINGS", "tier_name", "eps", "carrier", "round_to", "store", "acc", "matmul", "ladder",
           "tf32_rounding"]

#: the tiers, finest first
TIERS = ("float64", "float32", "tf32", "float16", "bfloat16")

# (explicit mantissa bits, minimum normal exponent, maximum exponent)
_FORMAT = {
    "float64": (52, -1022, 1023),
    "float32": (23, -126, 127),
    "tf32": (10, -126, 127),
    "bfloat16": (7, -126, 127),
    "float16": (10, -14, 15),
}

#: the conversions :func:`round_to` models: ``"rne"`` to nearest, ties to even (every tier; the default);
#: ``"rna"`` to nearest, ties away from zero (PTX's ``cvt.rna.tf32.f32``); ``"truncate"`` the low mantissa bits
#: dropped, i.e. toward zero (matrix instructions that read float32 operands as TF32 as they are). The last two
#: for the tiers kept in float32's exponent range (tf32, bfloat16), from float32 values.
ROUNDINGS = ("rne", "rna", "truncate")

#: the conversion of a matrix product's inputs in the tf32 tier that :func:`matmul` applies (:func:`tf32_rounding`)
_TF32_ROUNDING = contextvars.ContextVar("tf32_rounding", default="rne")

_ALIASES = {"fp64": "float64", "double": "float64", "fp32": "float32", "single": "float32", "bf16": "bfloat16",
            "fp16": "float16", "half": "float16", "tensorfloat32": "tf32"}


def tier_name(dtype, name: str = "dtype") -> str:
    """The tier of ``dtype``: a name of :data:`TIERS` (or an alias such as ``"bf16"``) or a NumPy float dtype.

    Raises ``ValueError`` naming the argument (``name``) for anything else (integers, complex,
    unknown names).
    """
    if isinstance(dtype, str):
        key = dtype.strip().lower()
        key = _ALIASES.get(key, key)
        if key in TIERS:
            return key
    try:
        dt = None if dtype is None else np.dtype(dtype)  # np.dtype(None) would be float64
    except (TypeError, ValueError):
        dt = None
    if dt is not None and dt.name in ("float64", "float32", "float16"):
        return dt.name
    raise ValueError(f"{name}: expected one of {', '.join(TIERS)} (or a NumPy float64/float32/float16 dtype), got {dtype!r}")


def eps(tier) -> float:
    """Machine epsilon 2^−p of the tier (the spacing of its grid just above 1): ε_tier of Eq. (15.3).

    Examples
    --------
    >>> eps("bfloat16") == 2.0**-7, eps("tf32") == eps("float16") == 2.0**-10
    (True, True)
    """
    return 2.0 ** -_FORMAT[tier_name(tier, "tier")][0]


def carrier(tier):
    """The NumPy dtype that carries values of the tier (float64, float32 or float16)."""
    tier = tier_name(tier)
    return {"float64": np.float64, "float16": np.float16}.get(tier, np.float32)


def _round_bits(x: np.ndarray, bits: int, emin: int, emax: int) -> np.ndarray:
    """float64 ``x`` rounded to ``bits`` mantissa bits and the exponent range [emin, emax], as float64 (a new array).

    On blocks of :data:`_ROUND_BLOCK` numbers shared out between threads (with a dozen passes a number, two
    threads gained from 2^19 numbers on, measured; :func:`_round_bits32`'s five gain from 2^23 only): the same
    operations on each number as on the whole array, whose temporaries (a dozen passes over 8-byte arrays)
    made rounding a comparison's arguments and results take several seconds at realistic sizes (measured:
    2 × 4096 × 16 × 128 numbers, 0.33 s an array).
    """
    return _blockwise(np.asarray(x, dtype=np.float64), lambda xb, rb: np.copyto(rb, _round_bits_flat(xb, bits, emin, emax)))


def _blockwise(x: np.ndarray, block, threads_from: int = 0) -> np.ndarray:
    """:func:`refimpl._blocking.fill_blocks` on parts of :data:`_ROUND_BLOCK` numbers."""
    return fill_blocks(x, block, _ROUND_BLOCK, threads_from)


def _round_bits_flat(x: np.ndarray, bits: int, emin: int, emax: int) -> np.ndarray:
    """:func:`_round_bits` of a 1-D float64 block."""
    drop = 52 - bits
    u = x.view(np.uint64)
    # round to nearest even on the magnitude's bits: add half an ulp minus one, plus the kept lsb
    half = np.uint64((1 << (drop - 1)) - 1)
    lsb = (u >> np.uint64(drop)) & np.uint64(1)
    finite = np.isfinite(x)
    r = np.where(finite, (u + half + lsb) & ~np.uint64((1 << drop) - 1), u).view(np.float64)
    # below the smallest normal number the grid is uniform with spacing 2^(emin − bits)
    tiny = 2.0 ** emin
    quantum = 2.0 ** (emin - bits)
    sub = finite & (np.abs(x) < tiny)
    if np.any(sub):
        r = np.where(sub, np.round(x / quantum) * quantum, r)  # x / quantum is exact; np.round ties to even
    # above the largest finite number: infinity (round to nearest gives 2^(emax+1) there)
    big = (2.0 - 2.0 ** -bits) * 2.0 ** emax
    with np.errstate(invalid="ignore"):
        r = np.where(finite & (np.abs(r) > big), np.copysign(np.inf, x), r)
    return r


def round_to(x, tier, *, rounding: str = "rne") -> np.ndarray:
    """``x`` rounded to the grid of ``tier``, in the tier's carrier dtype (see the module table).

    The rounding fl of the inputs in Eq. (15.3) of the book (``rounding="rne"``: to nearest, ties to even).

    For ``"tf32"`` this is the conversion of a matrix product's inputs (10 mantissa bits), carried in
    float32. Complex input is rounded part-wise (complex64 carrier for the low tiers, NumPy having
    no complex32).

    ``rounding`` (:data:`ROUNDINGS`): ``"rne"`` (every tier), or, for ``"tf32"`` and ``"bfloat16"``,
    ``"rna"`` (to nearest, ties away from zero: PTX's ``cvt.rna``) and ``"truncate"`` (the low mantissa
    bits dropped: toward zero, as matrix instructions that read float32 operands as TF32 do). These two
    convert the float32 value, as hardware does: a float64 ``x`` is first rounded to float32 (to nearest
    even). Overflow gives ±inf with ``"rna"`` as with ``"rne"``; ``"truncate"`` never overflows.

    Examples
    --------
    >>> float(round_to(1 + 2.0**-8, "bfloat16")), float(round_to(1 + 3 * 2.0**-8, "bfloat16"))  # ties to even
    (1.0, 1.015625)
    >>> float(round_to(70000.0, "float16"))  # beyond float16's largest finite number 65504
    inf
    >>> x = 1 + 2.0**-11 + 2.0**-12  # between 1 and 1 + 2^-10, nearer the upper one
    >>> float(round_to(x, "tf32")) == 1 + 2.0**-10, float(round_to(x, "tf32", rounding="truncate"))
    (True, 1.0)
    """
    tier = tier_name(tier, "tier")
    if not isinstance(rounding, str) or rounding not in ROUNDINGS:
        raise ValueError(f"rounding: expected one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    if rounding != "rne" and tier not in ("tf32", "bfloat16"):
        raise ValueError(f"rounding: {rounding!r} is modelled for the tiers tf32 and bfloat16 only, got tier {tier!r}")
    if x is None:
        raise TypeError("x: expected a real or complex array, got None")
    arr = np.asarray(x)
    if arr.dtype.kind not in "biufc":
        raise TypeError(f"x: expected a real or complex array, got dtype {arr.dtype}")
    if arr.dtype.kind in "biu":
        arr = arr.astype(np.float64)
    if arr.dtype.kind == "c":
        re, im = round_to(arr.real, tier, rounding=rounding), round_to(arr.imag, tier, rounding=rounding)
        ctype = np.complex128 if tier == "float64" else np.complex64
        return (re.astype(ctype) + 1j * im.astype(ctype)).astype(ctype)
    if tier == "float64":
        return arr.astype(np.float64)
    with np.errstate(over="ignore"):
        if tier in ("float32", "float16"):
            return arr.astype(carrier(tier))  # NumPy's casts round to nearest even once (tested bit-exactly)
        bits, emin, emax = _FORMAT[tier]
        if arr.dtype in (np.float32, np.float16) or rounding != "rne":
            return _round_bits32(arr.astype(np.float32, copy=False), bits, rounding)
        return _round_bits(arr.astype(np.float64), bits, emin, emax).astype(np.float32)


@contextlib.contextmanager
def tf32_rounding(rounding: str):
    """Within the block, :func:`matmul` converts the inputs of tf32 products with ``rounding`` (:data:`ROUNDINGS`).

    The oracle runs the plain references of the tf32 tier (Eq. (15.3)) once with ``"rne"`` and once with
    ``"truncate"`` (module docstring). A context variable: it follows the block into the worker threads of
    :mod:`refimpl._blocking`, and other threads are not affected.
    """
    if not isinstance(rounding, str) or rounding not in ROUNDINGS:
        raise ValueError(f"rounding: expected one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    token = _TF32_ROUNDING.set(rounding)
    try:
        yield rounding
    finally:
        _TF32_ROUNDING.reset(token)


def _round_bits32(x: np.ndarray, bits: int, rounding: str = "rne") -> np.ndarray:
    """float32 ``x`` rounded to ``bits`` mantissa bits with float32's exponent range (bfloat16, tf32), a new array.

    ``rounding``: ``"rne"`` to nearest, ties to even; ``"rna"`` to nearest, ties away from zero (add half
    an ulp to the magnitude); ``"truncate"`` toward zero (clear the dropped bits).
    On the bits, the carry of the rounding runs into the exponent, so subnormals land on the
    grid of spacing 2^(−126 − bits) and values above the largest finite number become ±inf.
    NaNs are kept as they are (their payload could otherwise carry into the sign or round to inf).
    The integer passes run on blocks of :data:`_ROUND_BLOCK` numbers, in place in the output, and
    the blocks of a large array are shared out between threads (:data:`_ROUND32_THREADS`): the same
    operations on each number either way. The oracle rounds every stored intermediate of
    its plain references (attention weights of N² numbers), and whole-array temporaries made
    that rounding the larger part of a comparison's time (measured: 4 × 2048² numbers, 76 →
    27 ms in one thread).
    """
    x = np.asarray(x).astype(np.float32, copy=False)
    drop = np.uint32(23 - bits)
    half = np.uint32((1 << (23 - bits - 1)) - 1)
    keep = np.uint32(0xFFFFFFFF ^ ((1 << (23 - bits)) - 1))

    def block(xb, outb):  # r = (u + half + lsb) & keep: round to nearest, ties to even, on the magnitude's bits
        ub, rb = xb.view(np.uint32), outb.view(np.uint32)
        if rounding == "truncate":  # r = u & keep: toward zero
            np.bitwise_and(ub, keep, out=rb)
            return
        if rounding == "rna":  # r = (u + half + 1) & keep: to nearest, ties away from zero
            np.add(ub, half + np.uint32(1), out=rb)
            rb &= keep
            return
        np.right_shift(ub, drop, out=rb)
        rb &= np.uint32(1)  # the lowest kept bit
        rb += half
        rb += ub
        rb &= keep

    out = _blockwise(x, block, _ROUND32_THREADS)
    if x.size and np.isnan(np.min(x)):  # np.min propagates NaN: one read-only pass when there is none
        np.copyto(out, x, where=np.isnan(x))
    return out


#: numbers per block of :func:`_round_bits32` (256 KiB of float32: input and output blocks stay in cache)
_ROUND_BLOCK = 1 << 16

#: float32 numbers from which :func:`_round_bits32` shares its blocks out between threads. Its five integer passes
#: on a block in cache take about 0.3 ns a number, so for fewer numbers two threads handing the GIL to each other
#: cost more than they share: rounding to bfloat16 measured 0.12 against 0.28 ms (2^18 numbers, one thread against
#: two), 2.6 against 4.0 ms (2^22), and 8.6 against 7.8 ms at 2^23 (the plain recurrences round a state of
#: 32 heads × 128 × 128, 2^19 numbers, twice a step: their backward passes took 10-30 % less time in one thread).
#: The float64 rounding (a dozen passes) gains from two threads from 2^19 numbers on and keeps them.
_ROUND32_THREADS = 1 << 23


def store(x, tier) -> np.ndarray:
    """``x`` as a kernel stores it in ``tier``: rounded to the tier (tf32 stores float32)."""
    tier = tier_name(tier)
    return round_to(x, "float32" if tier == "tf32" else tier)


def acc(tier):
    """The accumulation dtype of reductions in ``tier``: float64 for float64, float32 otherwise."""
    return np.float64 if tier_name(tier) == "float64" else np.float32


def operand(x, tier) -> np.ndarray:
    """``x`` as :func:`matmul` rounds an input for a product in ``tier`` (tf32: as :func:`tf32_rounding` says),
    a new array in the tier's carrier dtype: round once what several products read (``on_grid``)."""
    tier = tier_name(tier)
    return round_to(x, tier, rounding=_TF32_ROUNDING.get()) if tier == "tf32" else round_to(x, tier)


def stored_is_operand(tier) -> bool:
    """Whether a value stored in ``tier`` (:func:`store`) is already on the grid of its products' inputs: in every
    tier but tf32, which stores float32 and rounds the inputs of products to 10 mantissa bits."""
    return tier_name(tier) != "tf32"


def matmul(a, b, tier, *, on_grid=(False, False)) -> np.ndarray:
    """``a @ b`` as a tensor core computes it in ``tier``, returned in the accumulation dtype.

    The inputs are rounded to the tier (to 10 mantissa bits for tf32, converted as :func:`tf32_rounding`
    says: to nearest even unless set), the products are exact in float32 for every 16-bit tier and tf32
    (at most 11 + 11 significant bits), and they are summed in float32 (float64 for float64). The caller
    stores the result (:func:`store`). ``on_grid``: for ``a`` and ``b``, whether it is already rounded as this
    call would round it (:func:`operand`, or a value stored in the tier where :func:`stored_is_operand`): not
    rounded again — the rounding is idempotent, so the result is the same, without a pass over an input that
    several products read (attention's keys and values, row block after row block; its weights, three times in
    the backward pass).
    """
    tier = tier_name(tier)
    a, b = (np.asarray(x) if done else operand(x, tier) for x, done in zip((a, b), on_grid))
    dt = acc(tier)
    return np.matmul(a.astype(dt, copy=False), b.astype(dt, copy=False))  # new arrays already: no copies


def ladder(tier) -> tuple:
    """The tiers coarser than ``tier``, in the order a kernel's verdict is tried against them."""
    tier = tier_name(tier)
    return TIERS[TIERS.index(tier) + 1:]
