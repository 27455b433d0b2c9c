r"""refimpl as a ground-truth oracle: golden vectors and a comparison harness for other implementations.

Chapter 15 of the book (``notebooks/15-using-refimpl-as-an-oracle.ipynb``) walks through it.

Three things are offered to people who validate their own (PyTorch, JAX, CUDA, …) kernels:

1. **A registry of golden cases** (:data:`CASES`): for every public computation of the package,
   small deterministic inputs built from a seed (and, for attention, linear attention, the
   selective scan and the linear recurrences, generated cases at tile-boundary sizes and long
   lengths, regenerated from a seed at verify time), the outputs, and the intermediates that help
   to localize a bug (AFA's precisions ``P``, residuals ``R``, Mahalanobis distances ``d2``,
   weights ``A``; the output of every section of a biquad cascade; attention weights …),
   including the delicate regimes (λ → 0, long sequences whose ``e^{μt}`` would overflow, large
   logits, poles near the unit circle, missing data, irregular time grids).
2. **Golden-vector files**: :func:`export` writes one ``.npz`` per case (loadable with
   ``numpy.load(path, allow_pickle=False)``, no object arrays; any language that reads a zip of
   ``.npy`` files can read it) and ``manifest.json``; :func:`verify` recomputes and diffs them;
   :func:`load_case` reads one case back. ``python -m refimpl vectors export|verify DIR`` is the
   command line.
3. **A comparison harness**: :func:`compare` runs a user's callable on the cases of one function
   (or on inputs of any size, ``inputs=``, e.g. from :func:`random_inputs`), rounds the inputs to
   the user's precision tier, and judges every output and intermediate by the tolerance policy
   below, per case, without ever crashing on a faulty callable.

File format (version 2; version 1 without the ``plain.*`` members and ``low_precision``)
------------------------------------------------------------------------------------------
``<case>.npz`` members (``/`` in a case name becomes ``__`` in the file name):

``arg.<name>``   an argument of the call (0-d arrays for scalars, strings as 0-d unicode);
``out.<name>``   an output, in the order the function returns them;
``mid.<name>``   an intermediate, in the order of computation. NaN marks entries outside the
                 computation (e.g. AFA's pairs with t_j > t_i when causal): not compared.
``plain.<tier>.<name>``  version 2: the plain reference of quantity ``<name>`` in the low-precision
                 tier (float32, tf32, float16, bfloat16; float16 stored as float16, the others as
                 float32 or complex64), the value Eq. (15.3) compares a kernel's error with.

``manifest.json``: ``format``, ``format_version``, ``refimpl_version``, ``numpy_version``,
``scipy_version``, ``python_version``, the tolerance policy, and per case its ``name``,
``function``, ``file``, ``sha256``, ``seed``, ``description``, ``call`` (how the function is
called), ``arguments`` (key, shape, dtype and, for scalars, the value), ``outputs`` and
``intermediates`` (key, shape, dtype) and ``tolerance`` (``rtol``, ``atol``, ``regen_rtol``), and in
version 2 ``low_precision``: per tier and quantity the member ``key``, the ``model`` of the plain
reference, ``plain_error``, ``ulps``, ``eps`` and the ``bound`` of Eq. (15.3) — enough to apply the
rule from any language: round the stored arguments to the tier, run the kernel, and compare its
norm-wise relative error with ``bound`` (the manifest's ``tolerance_policy`` says so in words).
:func:`verify` reads versions 1 and 2; for version 2 it also recomputes every plain error and
bound from the stored arrays.

*Generated cases* (``"generated"`` in the manifest entry; the registry's tile-boundary and long-
sequence cases, :func:`refimpl._golden.generated`) are too large to commit. Their arguments are
``random_inputs(function, seed=seed, **sizes)``; the file holds the scalar arguments and, for every
array, ``sample.arg.<name>``, ``sample.out.<name>``, ``sample.mid.<name>`` and
``sample.plain.<tier>.<name>``: the entries at ``round(linspace(0, size − 1, min(size, 64)))`` of the
flattened array. The manifest gives each array's full shape and dtype (``"sampled": true``), the
``sizes``, and a summary (max |x| and 2-norm of every argument and result); the low-precision
entries give the plain error and bound of the *whole* plain reference. :func:`verify` and
:func:`load_case` regenerate the arguments and results with refimpl and check them against the
samples and the summary to ``regen_rtol``; ``compare(vectors=...)`` then recomputes the plain
reference. Applying the rule to a generated case therefore needs refimpl (or NumPy's generator
and ``random_inputs``'s recipe).
The files are byte-reproducible (fixed zip time stamps), so the sha256 of an export depends
only on the numbers.

Tolerance policy (Eqs. (15.1)–(15.3) of the book; the constants are in :mod:`refimpl._testing`)
------------------------------------------------------------------------------------------------
Errors are norm-wise: ``e_abs = max|y − y*|``, ``e_rel = e_abs / max|y*|`` (``rel_error``),
against the float64 oracle ``y*``.

*float64 callables* pass a quantity if ``e_rel ≤ rtol`` or ``e_abs ≤ atol`` (per case; the
default ``rtol`` is ``SELF = 1e-10``, the bound refimpl's own loop and vectorized forms meet).

*Low-precision callables* (``dtype`` one of the tiers ``"float32"``, ``"tf32"``, ``"float16"``,
``"bfloat16"``, emulated by :mod:`refimpl._precision`) are judged by the **ratio rule** of
FlashAttention's tests, implemented once in :func:`refimpl._testing.low_precision_verdict`,

.. math::  e_{rel}(\text{user}) \le 2\,\max\bigl(e_{rel}(\text{plain}),\ u\,ε_{tier}\bigr),

where ``ε_tier`` is the tier's machine epsilon and ``plain`` a reference evaluated in the tier.
For the functions of :func:`plain_functions` (softmax attention, linear attention, the selective
scan and its backward pass, Mamba-2's SSD, GLA, retention, the delta rule and their backward passes,
FlashAttention with its log-sum-exp, the softmax-attention backward pass, Performer, RFA, biquads,
transfer functions and biquad cascades) it is refimpl's straightforward algorithm *run the way kernels
compute* (:mod:`refimpl._lowprec`): inputs rounded to the tier, intermediates stored in the
tier's format, matrix products with tier-rounded inputs and float32 accumulation, reductions,
recurrence states and ``exp`` in float32; its error grows with the length of a recurrence
exactly as a correct kernel's does. In tf32 (float32 storage, matrix products with TF32 inputs) it
runs twice, the products' inputs converted by rounding to nearest even and by truncation (kernels do
either; truncation is biased, and a truncating kernel errs about twice as much or more), and
each quantity is judged against the run whose error is larger (``"plain tf32 (truncate)"`` or
``"plain tf32 (rne)"``, :func:`refimpl._precision.round_to`). Every option of the attention family is modelled (mask,
causal alignment, sliding window, ALiBi, soft cap, grouped-query heads), for softmax attention,
FlashAttention and the backward pass alike. FlashAttention's log-sum-exp, which kernels keep in
float32 in every tier, is judged in float32 when it is returned in float32 (:data:`FLOAT32_QUANTITIES`;
rounded to bfloat16 first, an ℓ off by 0.05 nats passed), against the plain reference's ℓ, also
kept in float32 (formed from its logits rounded to the tier, so fused and unfused kernels meet
it), and in the tier when every returned value lies on the tier's grid; so is the backward pass's
``D_i = Σ_j dO_ij O_ij`` (FlashAttention-2's ``softmax_d``, also kept in float32). The linear recurrences' plain algorithm is the
recurrence itself, step by step in float32, and that of their backward passes the recurrence
forwards and its adjoint backwards, step by step, with the sums over the sequence (SSD's dA, dD)
in one float32 accumulator (the least accurate order, so any order a kernel chooses meets it).
A chunked kernel that forms its in-chunk decays as ``exp(c_t − c_s)`` from cumulative log-decays
``c`` (Mamba-2's and fla's design) rounds the weight of the pair (t, s) by about
``ε₃₂ (|c_t| + |c_s|)``, where the recurrence rounds it to a few ε₃₂: for those functions the bound
has the case's decay floor ``ε₃₂ C_eff`` as a third term (:func:`decay_floor`), ``C_eff`` the largest
mean of ``|c_t| + |c_s|`` over a row of a chunk weighted by the decays ``e^{c_t − c_s}``
(:func:`effective_log_decay`; about 0 when every step decays by many orders, whatever |c|); for a gradient
that sums such terms over the sequence (SSD's and Mamba-2's ``dA``, Mamba-2's ``ddt_bias``) the floor is scaled
by the terms' magnitude over the sum's, as the sum can cancel (:class:`_Floors`). Errors being
norm-wise and the floor the case's largest, a bug confined to some heads (the long-memory ones, say,
where the carried state matters) would be diluted by the others: these functions' per-sequence
quantities (:data:`SEQUENCE_QUANTITIES`) are also judged sequence by sequence in float32 — each batch
entry × head, relative to its own largest entry, with its own plain error and its own ``C_eff`` — and the
report names the worst sequence that fails. The
tier's own floor is ``u = 4`` ε for float32, ``u = 2`` ε for tf32 (truncation errs by less than ε per
conversion, and a chunked kernel truncates more operands than the plain recurrence: correct truncating chunked
SSD kernels measured up to 1.7 ε, chapter 15) and ``u = 1`` ε for float16 and bfloat16
(``_testing.PLAIN_ULPS``). For every other function the plain value is refimpl on
the inputs rounded to the tier (complex part-wise), evaluated in float64 and rounded to the tier:
the conditioning of the problem times the rounding of its data, with the case's ``ulps`` (default
4) standing for the kernel's own arithmetic. Each quantity's report names the model that judged
it (``"plain <tier>"`` or ``"rounded inputs"``). A failed low-precision case also reports the
finest tier whose verdict it meets (``CaseReport.meets``): a TF32 kernel asked for float32
fails and meets ``"tf32"``, a FlashAttention kernel that computes in bfloat16 fails the float16 tier by
its log-sum-exp (its output alone can come within the bound where the float16 plain reference, whose
logits are stored in float16, errs by more than ε₁₆: non-causal attention at long N); ``meets`` is computed
when first read. A correct port passes; an error of a formula, typically far above ``√ε``, fails, and the
first failing intermediate says where; within a quantity, the report gives the entry of the largest
error and the first entry over the bound in the order of computation (key tile, chunk, step), by named
axes (``QuantityReport.worst``, ``first_over``).

Regeneration (``verify`` and the CI test): recomputing a committed case must reproduce every
stored array to ``regen_rtol`` (default ``ORACLE = 1e-12``) relative, not bitwise — BLAS and
LAPACK builds differ in summation order and blocking between machines (different roundings of
the same exact result, a few ulps amplified by the case's conditioning); every real change of
a formula moves results by far more.

Adding a module: the registry is :mod:`refimpl._golden`, one file per topic module
(``refimpl/_golden/<topic>.py`` with a list of :class:`Function` records and a list of
:class:`Case` records; its docstring says how). Then re-export ``tests/golden/v2`` with
``python -m refimpl vectors export tests/golden/v2``.

Glossary: ``args`` the arguments of a case (the keywords a callable receives); ``results`` the
ordered ``{name: array}`` of refimpl's intermediates and outputs; ``plain`` the low-precision
reference of Eq. (15.3); ``tier`` a precision of :data:`TIERS`; ``e_rel``/``e_abs`` the norm-wise errors.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import math
import platform
import sys
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
import numpy as np
import scipy

from ._citations import citation_index, cited_tags
from ._golden import CASES, FUNCTIONS, Case, Function
from ._lowprec import PLAIN
from ._precision import TIERS, ladder, round_to, store, tf32_rounding, tier_name
from ._precision import eps as tier_eps
from ._testing import PLAIN_ULPS, RATIO_RULE_FACTOR, low_precision_verdict, max_abs_error, rel_error as _rel_error
from ._validate import as_array, as_bool, as_int, as_positive_scalar, as_real_array, check_option
from ._vectors import read_npz, sha256, write_npz

__all__ = [
    "Function",
    "Case",
    "FUNCTIONS",
    "CASES",
    "FORMAT_VERSION",
    "SUPPORTED_VERSIONS",
    "function_names",
    "case_names",
    "compute",
    "export",
    "verify",
    "load_case",
    "compare",
    "rel_error",
    "random_inputs",
    "random_case",
    "RANDOM_INPUTS",
    "TIERS",
    "round_to",
    "tier_eps",
    "plain_functions",
    "decay_floor",
    "effective_log_decay",
    "DECAY_FLOOR_ULPS",
    "GoldenCase",
    "QuantityReport",
    "CaseReport",
    "CompareReport",
    "VerifyReport",
    "cited_tags",
    "citation_index",
]

FORMAT = "refimpl-golden-vectors"
FORMAT_VERSION = 2
#: the format versions :func:`verify`, :func:`load_case` and ``compare(vectors=...)`` read
SUPPORTED_VERSIONS = (1, 2)
#: the low-precision tiers a version-2 file stores plain references for
VECTOR_TIERS = ("float32", "tf32", "float16", "bfloat16")
_LOW_DTYPES = TIERS[1:]



# --------------------------------------------------------------------------------------------
# Registry (the cases themselves are in refimpl/_golden/<topic>.py)
# --------------------------------------------------------------------------------------------

_CASES_BY_NAME = {c.name: c for c in CASES}


def function_names() -> list:
    """The names accepted by :func:`compare`, e.g. ``"afa.isotropic_afa"``.

    Examples
    --------
    >>> names = function_names()
    >>> len(names) > 100, 'afa.isotropic_afa' in names
    (True, True)
    """
    return sorted(FUNCTIONS)


def case_names(function: str | None = None) -> list:
    """Names of the golden cases (of one function if given).

    Examples
    --------
    >>> case_names('lyapunov.phi1')
    ['lyapunov.phi1/near_zero']
    >>> case_names('phi1') == case_names('lyapunov.phi1')  # the bare name when it is unique
    True
    """
    if function is not None and not isinstance(function, str):
        raise TypeError(f"function: expected a function name (str) or None, got {type(function).__name__}")
    if function is not None:
        function = _resolve_function(function)
    return [c.name for c in CASES if function is None or c.function == function]


def _resolve_function(name) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name in FUNCTIONS:
        return name
    matches = [f for f in FUNCTIONS if f.split(".", 1)[1] == name]
    if len(matches) == 1:
        return matches[0]
    import difflib

    close = difflib.get_close_matches(name, list(FUNCTIONS) + sorted({f.split(".", 1)[1] for f in FUNCTIONS}), n=3)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    raise ValueError(f"name: unknown function {name!r}{hint}; known functions: {', '.join(function_names())}")


def _resolve_cases(function: str, cases) -> list:
    mine = [c for c in CASES if c.function == function]
    if cases is None:
        return mine
    if isinstance(cases, str):
        cases = [cases]
    out = []
    for name in cases:
        full = name if "/" in str(name) else f"{function}/{name}"
        if full not in _CASES_BY_NAME or _CASES_BY_NAME[full].function != function:
            raise ValueError(f"cases: unknown case {name!r} of {function}; known: {', '.join(c.name for c in mine)}")
        out.append(_CASES_BY_NAME[full])
    return out


def _size_tag(value) -> str:
    """A size or option as it appears in a :func:`random_case` name: ``[100, 37, 129]`` → ``100-37-129``."""
    if isinstance(value, (list, tuple)):
        return "-".join(_size_tag(v) for v in value)
    text = str(value)
    return "".join(ch if ch.isalnum() or ch in ".-" else "-" for ch in text)


def random_case(name, *, seed, intermediates: bool = False, **sizes) -> Case:
    """A golden case at sizes of your choosing, for :func:`export`: the arguments are
    ``random_inputs(name, seed=seed, **sizes)``, written in full with refimpl's results.

    The registered cases at tile boundaries and long lengths are stored as summaries (their
    arrays would be too large to commit); a case made here is for a kernel that reads the vectors
    without refimpl — a C++ or CUDA test at its own tile sizes — so every array is written, and
    format 2 adds the plain references and bounds of Eq. (15.3) per tier. The manifest records the
    function, seed and sizes (``"random_inputs"``), from which :func:`verify` rebuilds the case.
    The case is not registered: ``compare`` takes the same inputs as ``inputs=random_inputs(...)``.

    Parameters
    ----------
    name : str
        A function of :data:`RANDOM_INPUTS` (or its bare name when it is unique).
    seed : int
        The seed of :func:`random_inputs`.
    intermediates : bool
        Also store the function's intermediates (default False: some, such as attention's
        ``(N, M)`` weights, are far larger than the outputs).
    **sizes
        The sizes and options of :func:`random_inputs` for ``name``.

    Returns
    -------
    Case
        Named ``"<function>/random_seed<seed>_<size><value>_…"`` (its file: the same with ``/`` → ``__``).

    Examples
    --------
    >>> import shutil, tempfile
    >>> case = random_case("linear_rnn.chunk_gla", seed=0, L=130, H=2, dk=64, dv=64)
    >>> case.name
    'linear_rnn.chunk_gla/random_seed0_L130_H2_dk64_dv64'
    >>> directory = tempfile.mkdtemp()
    >>> entry = export(directory, cases=[case])["cases"][0]
    >>> entry["arguments"]["q"]["shape"], entry["random_inputs"]["sizes"]
    ([1, 130, 2, 64], {'L': 130, 'H': 2, 'dk': 64, 'dv': 64})
    >>> sorted(entry["low_precision"])  # per tier: the plain reference of Eq. (15.3) and the bound
    ['bfloat16', 'float16', 'float32', 'tf32']
    >>> verify(directory).ok
    True
    >>> shutil.rmtree(directory)
    """
    function = _resolve_function(name)
    if function not in RANDOM_INPUTS:
        raise ValueError(f"name: random_inputs does not support {function}; it supports: {', '.join(RANDOM_INPUTS)}")
    as_bool(intermediates, "intermediates")
    args = random_inputs(function, seed=seed, **sizes)  # validates the seed and every size, naming it
    tag = "".join(f"_{k}{_size_tag(v)}" for k, v in sizes.items())
    record = {"sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()},
              "arguments_by": f"refimpl.oracle.random_inputs({function!r}, seed={seed}, **sizes)",
              "intermediates": intermediates}
    try:
        json.dumps(record)
    except TypeError as exc:
        raise TypeError(f"sizes: every size and option must be a JSON value (number, str, bool, None, list): {exc}") \
            from None
    # the outputs these arguments produce (an optional one, such as fla's final state without initial and final
    # states asked for, is None and not stored), in the order the function returns them
    with np.errstate(over="ignore"):
        produced = FUNCTIONS[function].run(dict(args), False)
    outputs = tuple(k for k in FUNCTIONS[function].outputs if produced.get(k) is not None)
    return Case(f"{function}/random_seed{seed}{tag}", int(seed), lambda rng: dict(args),
                f"random_inputs({function!r}, seed={seed}, " + ", ".join(f"{k}={v!r}" for k, v in sizes.items()) + ")",
                intermediates=intermediates, outputs=outputs, random=record)


def _random_case_of(entry: dict) -> Case:
    """The :func:`random_case` a manifest entry records (``ValueError`` if it records none or a bad one)."""
    record = entry.get("random_inputs")
    if not isinstance(record, dict) or not isinstance(record.get("sizes"), dict):
        raise ValueError("not a registered case, and the manifest records no random_inputs to rebuild it from")
    return random_case(entry.get("function"), seed=entry.get("seed"), intermediates=record.get("intermediates", False),
                       **record["sizes"])


def compute(case, *, args: dict | None = None) -> tuple:
    """Arguments and results of one case: ``(args, results)``.

    ``case`` is a :class:`Case` or its name; ``args`` overrides the built arguments (used to
    recompute stored vectors from their own inputs). ``results`` is ordered: intermediates in
    the order of computation, then the outputs.

    Examples
    --------
    >>> args, results = compute('lyapunov.phi1/near_zero')
    >>> sorted(args), list(results)
    (['tau', 'z'], ['phi'])
    """
    if not isinstance(case, (str, Case)):
        raise TypeError(f"case: expected a case name (str) or a Case, got {type(case).__name__}")
    if isinstance(case, str):
        if case not in _CASES_BY_NAME:
            raise ValueError(f"case: unknown case {case!r}")
        case = _CASES_BY_NAME[case]
    if args is None:
        args = case.build(np.random.default_rng(case.seed))
    with np.errstate(over="ignore"):  # documented overflow of pushed-back residuals (afa)
        results = FUNCTIONS[case.function].run(args, case.intermediates)
    if case.random is not None:  # a random_case: the optional outputs its arguments do not produce are left out
        results = {k: v for k, v in results.items() if v is not None}
    results = {k: np.asarray(v) for k, v in results.items()}
    missing = [o for o in case.output_names() if o not in results]
    if missing:
        raise RuntimeError(f"case {case.name}: run() did not produce outputs {missing}")
    return args, results


# --------------------------------------------------------------------------------------------
# Files: export, load, verify
# --------------------------------------------------------------------------------------------


def _jsonable(value):
    arr = np.asarray(value)
    if arr.dtype.kind == "c":
        return {"real": float(arr.real), "imag": float(arr.imag)}
    return arr.item()


def _describe(key, arr) -> dict:
    arr = np.asarray(arr)
    d = {"key": key, "shape": list(arr.shape), "dtype": arr.dtype.str if arr.dtype.kind == "U" else arr.dtype.name}
    if arr.ndim == 0:
        d["value"] = _jsonable(arr)
    return d


def _case_arrays(case: Case, args: dict, results: dict) -> tuple:
    arrays, manifest = {}, {"arguments": {}, "outputs": {}, "intermediates": {}}
    for k, v in args.items():
        if v is None:
            continue
        arr = np.asarray(v)
        if arr.dtype.hasobject:
            raise TypeError(f"case {case.name}: argument {k} is not a numeric/string array")
        arrays[f"arg.{k}"] = arr
        manifest["arguments"][k] = _describe(f"arg.{k}", arr)
        if isinstance(v, (tuple, list)):  # an option given as a pair of numbers: read back as one (_restore_args)
            manifest["arguments"][k]["sequence"] = type(v).__name__
    outs = case.output_names()
    for k, v in results.items():
        group, prefix = ("outputs", "out") if k in outs else ("intermediates", "mid")
        arrays[f"{prefix}.{k}"] = v
        manifest[group][k] = _describe(f"{prefix}.{k}", v)
    # outputs in the order the function returns them
    manifest["outputs"] = {k: manifest["outputs"][k] for k in outs}
    return arrays, manifest


#: entries of an array a generated case stores: ``SAMPLE`` positions of the flattened array
SAMPLE = 64


def _sample(arr) -> np.ndarray:
    """The entries of ``arr`` (flattened, C order) at ``round(linspace(0, size − 1, min(size, SAMPLE)))``."""
    flat = np.asarray(arr).reshape(-1)
    if flat.size == 0:
        return flat
    return flat[np.unique(np.linspace(0, flat.size - 1, min(flat.size, SAMPLE)).round().astype(np.int64))]


def _stats(arr) -> dict:
    """Shape, dtype, max |x| and 2-norm of an array (NaN entries left out): a generated case's summary."""
    arr = np.asarray(arr)
    x = np.abs(arr[~np.isnan(arr)]) if arr.dtype.kind in "fc" else np.abs(arr.astype(np.float64))
    return {"shape": list(arr.shape), "dtype": arr.dtype.name,
            "max_abs": float(x.max()) if x.size else 0.0, "l2": float(np.sqrt(np.sum(x.astype(np.float64) ** 2)))}


def _generated_arrays(case: Case, args: dict, results: dict) -> tuple:
    """The members of a generated case: scalar arguments, and a sample of every array (``sample.*``)."""
    arrays = {}
    manifest = {"arguments": {}, "outputs": {}, "intermediates": {}}
    summary = {}
    for k, v in args.items():
        if v is None:
            continue
        arr = np.asarray(v)
        if arr.ndim == 0:
            arrays[f"arg.{k}"] = arr
            manifest["arguments"][k] = _describe(f"arg.{k}", arr)
        else:
            arrays[f"sample.arg.{k}"] = _sample(arr)
            manifest["arguments"][k] = {**_describe(f"sample.arg.{k}", arr), "sampled": True}
            summary[f"arg.{k}"] = _stats(arr)
    outs = case.output_names()
    for k, v in results.items():
        group, prefix = ("outputs", "out") if k in outs else ("intermediates", "mid")
        arrays[f"sample.{prefix}.{k}"] = _sample(v)
        manifest[group][k] = {**_describe(f"sample.{prefix}.{k}", v), "sampled": True}
        summary[f"{prefix}.{k}"] = _stats(v)
    manifest["outputs"] = {k: manifest["outputs"][k] for k in outs}
    manifest["generated"] = {
        "sizes": dict(case.sizes),
        "arguments_by": f"refimpl.oracle.random_inputs({case.function!r}, seed={case.seed}, **sizes)",
        "sample": f"entries at round(linspace(0, size - 1, min(size, {SAMPLE}))) of the flattened (C order) array",
        "summary": summary,
    }
    return arrays, manifest


def _generated_problems(case: Case, entry: dict, arrays: dict, fresh_args=None, fresh=None) -> list:
    """A generated case regenerated from its seed and sizes against the stored summary (list of problems).

    ``fresh_args``/``fresh`` (the regenerated arguments and results) are computed when not given.
    """
    gen = entry.get("generated", {})
    msgs = []
    if gen.get("sizes") != case.sizes:
        msgs.append(f"sizes {gen.get('sizes')} differ from the registry's {case.sizes}")
        return msgs
    if fresh is None:
        fresh_args, fresh = compute(case)
    current = {f"arg.{k}": v for k, v in fresh_args.items() if v is not None}
    current.update({f"{'out' if k in case.output_names() else 'mid'}.{k}": v for k, v in fresh.items()})
    summary = gen.get("summary", {})
    for key in sorted(set(summary) | {k for k in current if np.ndim(current[k])}):
        what = "argument" if key.startswith("arg.") else "result"
        if key not in summary:
            msgs.append(f"{what} {key[4:]} is computed but not summarized")
            continue
        if key not in current:
            msgs.append(f"{what} {key[4:]} is summarized but no longer computed")
            continue
        want, arr = summary[key], np.asarray(current[key])
        if list(arr.shape) != want["shape"]:
            msgs.append(f"{what} {key[4:]}: shape {arr.shape} != stored {tuple(want['shape'])}")
            continue
        got = _stats(arr)
        tiny = np.finfo(float).tiny
        sample = arrays.get(f"sample.{key}")
        err = max(max_abs_error(_sample(arr), sample) if sample is not None else float("inf"),
                  abs(got["max_abs"] - want["max_abs"])) / max(want["max_abs"], tiny)
        err = max(err, abs(got["l2"] - want["l2"]) / max(want["l2"], tiny))
        if not err <= case.regen_rtol:
            msgs.append(f"{what} {key[4:]} differs from the stored summary: rel error {err:.3e} > {case.regen_rtol:.0e}")
    for key, arr in arrays.items():  # scalar arguments exactly
        if key.startswith("arg.") and key in current and not np.array_equal(np.asarray(current[key]), arr):
            msgs.append(f"argument {key[4:]} differs: {np.asarray(current[key])!r} != stored {arr!r}")
    return msgs


def _refimpl_version() -> str:
    version = getattr(sys.modules[__package__], "__version__", None)
    if version is None:  # refimpl seen as a namespace package (an editable install, from another directory)
        from importlib.metadata import version as dist_version

        version = dist_version("refimpl")
    return version


def _versions() -> dict:
    return {
        "refimpl_version": _refimpl_version(),
        "numpy_version": np.__version__,
        "scipy_version": scipy.__version__,
        "python_version": platform.python_version(),
    }


_POLICY = {
    "error": "norm-wise: max|y - y*| (abs) and max|y - y*| / max|y*| (rel) against the float64 oracle y*",
    "float64": "pass if rel <= rtol or abs <= atol (per case)",
    "float32/float16": "ratio rule: rel <= 2 * max(rel(plain), ulps * eps(dtype)); plain = refimpl on inputs "
    "rounded to the dtype, output rounded to the dtype",
    "regeneration": "recomputed arrays agree with the stored ones to regen_rtol (norm-wise relative)",
    "ratio_rule_factor": RATIO_RULE_FACTOR,
}


def export(directory, *, cases=None, quiet: bool = True, format_version: int = FORMAT_VERSION) -> dict:
    """Write the golden vectors: one ``.npz`` per case and ``manifest.json``; return the manifest.

    Parameters
    ----------
    directory : str or Path
        Created if needed. Existing case files of the same name are overwritten.
    cases : iterable of str, optional
        Case names (default: all of :data:`CASES`).
    quiet : bool
        If False, print one line per case.
    format_version : {2, 1}
        2 (default) also stores, per low-precision tier, the plain reference and the bound of
        Eq. (15.3) (module docstring, "File format"); 1 writes the previous format.

    Examples
    --------
    >>> import shutil, tempfile
    >>> directory = tempfile.mkdtemp()
    >>> manifest = export(directory, cases=['lyapunov.phi1/near_zero'])
    >>> [e['file'] for e in manifest['cases']], manifest['format_version']
    (['lyapunov.phi1__near_zero.npz'], 2)
    >>> shutil.rmtree(directory)
    """
    if not isinstance(directory, (str, Path)) and not hasattr(directory, "__fspath__"):
        raise TypeError(f"directory: expected a path (str or os.PathLike), got {type(directory).__name__}")
    as_bool(quiet, "quiet")
    if format_version not in SUPPORTED_VERSIONS:
        raise ValueError(f"format_version: expected one of {SUPPORTED_VERSIONS}, got {format_version!r}")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"directory: {directory} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    selected = CASES if cases is None else [n if isinstance(n, Case) else _CASES_BY_NAME[n] if n in _CASES_BY_NAME
                                            else _unknown_case(n) for n in cases]
    entries = []
    for case in selected:
        args, results = compute(case)
        if case.sizes is not None:
            arrays, desc = _generated_arrays(case, args, results)
        else:
            arrays, desc = _case_arrays(case, args, results)
        low = {}
        if format_version >= 2:
            low = _low_precision_entry(case, args, results, arrays, sampled=case.sizes is not None)
        path = directory / case.file
        write_npz(path, arrays)
        entries.append(
            {
                "name": case.name,
                "function": case.function,
                "file": case.file,
                "sha256": sha256(path),
                "bytes": path.stat().st_size,
                "seed": case.seed,
                "description": case.description,
                "call": FUNCTIONS[case.function].call,
                **desc,
                "tolerance": {"rtol": case.rtol, "atol": case.atol, "regen_rtol": case.regen_rtol, "ulps": case.ulps},
                **({"random_inputs": case.random} if case.random is not None else {}),
                **({"low_precision": low} if format_version >= 2 else {}),
            }
        )
        if not quiet:
            print(f"  wrote {case.file} ({path.stat().st_size} bytes)")
    policy = dict(_POLICY)
    if format_version >= 2:
        policy.update(_POLICY_V2)
    manifest = {"format": FORMAT, "format_version": format_version, **_versions(), "tolerance_policy": policy, "cases": entries}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    return manifest


_POLICY_V2 = {
    "float32/float16": "see low_precision",
    "low_precision": "per case and tier (float32, tf32, float16, bfloat16): the member plain.<tier>.<name> is the "
    "plain reference of quantity <name> in that tier (model 'plain <tier>': refimpl's straightforward algorithm run "
    "in the tier, storage rounded to the tier, float32 accumulation; in tf32, whose storage is float32, the worse, "
    "quantity by quantity, of two runs whose matrix products' inputs are converted to TF32 by rounding to nearest "
    "even ('plain tf32 (rne)') and by truncation ('plain tf32 (truncate)'); model 'rounded inputs': refimpl in "
    "float64 on the inputs rounded to the tier, rounded back). A callable in that tier, run on the arguments rounded "
    "to the tier (round to nearest even), passes quantity <name> if rel(user) <= bound, bound = 2 * max(plain_error, "
    "ulps * eps(tier), decay_floor), with rel and plain_error the norm-wise relative errors against out./mid.<name> "
    "(NaN entries of an intermediate not compared); the manifest stores plain_error, ulps, eps and bound per quantity, "
    "and decay_floor (eps(float32) * C_eff, C_eff the largest decay-weighted mean of |c_t| + |c_s| over the pairs "
    "s < t of a chunk, c the in-chunk cumulative log-decay; absent = 0) for the chunked linear recurrences. "
    "Where the plain reference is not finite ('overflow' counts those entries; plain_error is taken over the others), "
    "the callable's value must be the same inf or NaN, or, where out./mid.<name> rounded to the tier is finite, a "
    "finite value, which then counts in rel(user). "
    "'undefined' gives the reason a tier has no plain reference for the case. "
    "Quantities that kernels keep in float32 in every tier (FlashAttention's log-sum-exp, lse or softmax_lse, and "
    "the backward pass's D) carry, in float16 and bfloat16, 'returned_in_float32': a value returned in float32 (not "
    "on the tier's grid) is judged in float32, against returned_in_float32.bound (plain_error: the plain reference "
    "before its rounding to the tier; eps: float32's) instead of bound. "
    "In float32, compare also judges each sequence (batch entry x head) of a chunked linear recurrence's "
    "per-sequence quantities on its own (a bug in a few heads is not diluted by the others); the manifest does not "
    "store those per-sequence bounds.",
}


def _rule_bound(plain_error: float, tier: str, ulps: float, floor: float = 0.0) -> float:
    """The bound of Eq. (15.3) that a stored plain error gives, ``2 max(plain_error, ulps·eps, floor)``
    (NaN for a plain error that is not finite)."""
    return low_precision_verdict(0.0, plain_error, tier, ulps, floor=floor)[1] if np.isfinite(plain_error) else float("nan")


def _bound_mismatch(bound: float, expect: float) -> bool:
    """Whether a stored ``bound`` differs from the one its stored plain error gives (both NaN: the same)."""
    return not ((np.isnan(expect) and np.isnan(bound)) or abs(expect - bound) <= 1e-12 * abs(expect))


def _low_precision_entry(case, args, results, arrays, sampled: bool = False) -> dict:
    """Version 2: per tier the plain references (added to ``arrays``) and their errors and bounds.

    ``sampled`` (generated cases): only a sample of each plain reference is stored
    (``sample.plain.<tier>.<name>``, marked ``"sampled": true``); its error and bound are those of
    the whole array."""
    from ._precision import eps as tier_eps_

    out = {}
    floors = _Floors(case.function, args)
    for tier in VECTOR_TIERS:
        rounded = {k: _round(v, tier) for k, v in args.items() if v is not None}
        try:
            plain, models = _plain(case, rounded, tier, list(results), results)
        except Exception as exc:
            out[tier] = {"undefined": f"refimpl cannot evaluate the inputs rounded to {tier} ({type(exc).__name__})"}
            continue
        entry = {}
        for name, want in results.items():
            want = np.asarray(want)
            if want.dtype.kind not in "fc":
                continue
            with np.errstate(over="ignore", invalid="ignore"):
                value = np.asarray(_round(plain[name], tier))
            key = f"sample.plain.{tier}.{name}" if sampled else f"plain.{tier}.{name}"
            arrays[key] = _sample(value) if sampled else value
            care = ~np.isnan(want) if want.dtype.kind == "f" else np.ones(want.shape, bool)
            w = want[care]
            v = value.astype(want.dtype)[care]
            fin = np.isfinite(v)
            e_plain = _rel_error(v[fin], w[fin]) if fin.any() else float("nan")
            ulps = PLAIN_ULPS[tier] if models[name].startswith("plain") else case.ulps
            floor = floors(name, want)
            bound = _rule_bound(e_plain, tier, ulps, floor)
            entry[name] = {"key": key, "model": models[name], "plain_error": e_plain, "ulps": ulps,
                           "eps": tier_eps_(tier), "bound": bound, "overflow": int((~fin).sum()),
                           **({"decay_floor": floor} if floor else {}), **({"sampled": True} if sampled else {})}
            if tier in ("float16", "bfloat16") and name in FLOAT32_QUANTITIES.get(case.function, ()):
                # kept in float32 by kernels in every tier: a value returned in float32 is judged in float32
                # (_judged_tier), against the plain reference before its rounding to the tier
                with np.errstate(over="ignore", invalid="ignore"):
                    v32 = np.asarray(_round(plain[name], "float32")).astype(want.dtype)[care]
                fin32 = np.isfinite(v32)
                e32 = _rel_error(v32[fin32], w[fin32]) if fin32.any() else float("nan")
                ulps32 = PLAIN_ULPS["float32"] if models[name].startswith("plain") else case.ulps
                entry[name]["returned_in_float32"] = {"plain_error": e32, "ulps": ulps32, "eps": tier_eps_("float32"),
                                                      "bound": _rule_bound(e32, "float32", ulps32, floor)}
        out[tier] = entry
    return out


def _unknown_case(name):
    raise ValueError(f"cases: unknown case {name!r}; see refimpl.oracle.case_names()")


def _read_manifest(directory: Path) -> dict:
    path = directory / "manifest.json"
    if not directory.is_dir():
        raise ValueError(f"directory: {directory} is not a directory")
    if not path.is_file():
        raise ValueError(f"directory: no manifest.json in {directory}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"directory: {path} is not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") not in SUPPORTED_VERSIONS:
        raise ValueError(
            f"directory: {path} is not a {FORMAT} manifest of version {' or '.join(map(str, SUPPORTED_VERSIONS))} "
            f"(format={manifest.get('format')!r}, version={manifest.get('format_version')!r})"
        )
    return manifest


def _restore_args(arrays: dict, entry: dict | None = None) -> dict:
    """The stored arguments (``arg.*`` members): scalars as Python scalars, and an argument the manifest
    ``entry`` marks as a Python tuple or list (``"sequence"``: FlashAttention's ``window_size``, mamba_ssm's
    ``dt_limit``) as one again, since the functions take such options as pairs of numbers, not arrays."""
    described = (entry or {}).get("arguments", {})
    args = {}
    for key, arr in arrays.items():
        if key.startswith("arg."):
            kind = described.get(key[4:], {}).get("sequence")
            args[key[4:]] = (arr.item() if arr.ndim == 0 else tuple(arr.tolist()) if kind == "tuple"
                             else arr.tolist() if kind == "list" else arr)
    return args


@dataclass
class GoldenCase:
    """One case read back from a vectors directory.

    Examples
    --------
    >>> import shutil, tempfile
    >>> directory = tempfile.mkdtemp()
    >>> _ = export(directory, cases=['lyapunov.phi1/near_zero'])
    >>> g = load_case(directory, 'lyapunov.phi1/near_zero')
    >>> isinstance(g, GoldenCase), g.tolerance['rtol']
    (True, 1e-10)
    >>> shutil.rmtree(directory)
    """

    name: str
    function: str
    seed: int
    arguments: dict
    outputs: dict
    intermediates: dict
    tolerance: dict
    entry: dict = field(repr=False, default_factory=dict)
    #: version 2: ``{tier: {name: plain reference}}`` (empty for version 1)
    plain: dict = field(repr=False, default_factory=dict)


def load_case(directory, name: str, *, check_sha: bool = True) -> GoldenCase:
    """Read the case ``name`` of an exported vectors directory.

    The file's sha256 is checked against the manifest (``ValueError`` on a mismatch, unless
    ``check_sha=False``); pickled object arrays are refused (``ValueError``).

    Examples
    --------
    >>> import shutil, tempfile
    >>> directory = tempfile.mkdtemp()
    >>> _ = export(directory, cases=['lyapunov.phi1/near_zero'])
    >>> g = load_case(directory, 'lyapunov.phi1/near_zero')
    >>> g.function, sorted(g.arguments), list(g.outputs)
    ('lyapunov.phi1', ['tau', 'z'], ['phi'])
    >>> shutil.rmtree(directory)
    """
    if not isinstance(directory, (str, Path)) and not hasattr(directory, "__fspath__"):
        raise TypeError(f"directory: expected a path (str or os.PathLike), got {type(directory).__name__}")
    directory = Path(directory)
    as_bool(check_sha, "check_sha")
    manifest = _read_manifest(directory)
    entries = {e["name"]: e for e in manifest["cases"]}
    if name not in entries:
        raise ValueError(f"name: no case {name!r} in {directory / 'manifest.json'}")
    entry = entries[name]
    path = directory / entry["file"]
    if not path.is_file():
        raise ValueError(f"name: file {entry['file']} of case {name!r} is missing from {directory}")
    if check_sha and sha256(path) != entry["sha256"]:
        raise ValueError(f"name: {entry['file']} does not match its sha256 in the manifest (tampered or corrupted)")
    arrays = read_npz(path)
    if entry.get("generated") is not None:
        # too large to store: regenerated from its seed and sizes, checked against the stored summary
        case = _CASES_BY_NAME.get(name)
        if case is None:
            raise ValueError(f"name: {name!r} is a generated case that this refimpl does not register")
        args, results = compute(case)
        problems = _generated_problems(case, entry, arrays, args, results)
        if problems:
            raise ValueError(f"name: the regenerated case {name!r} does not match its summary: {'; '.join(problems)}")
        return GoldenCase(name=name, function=entry["function"], seed=entry["seed"],
                          arguments={k: v for k, v in args.items() if v is not None},
                          outputs={k: results[k] for k in entry["outputs"]},
                          intermediates={k: results[k] for k in entry["intermediates"]},
                          tolerance=entry["tolerance"], entry=entry, plain={})
    return GoldenCase(
        name=name,
        function=entry["function"],
        seed=entry["seed"],
        arguments=_restore_args(arrays, entry),
        # in the manifest's order: outputs as returned, intermediates in the order of computation
        outputs={k: arrays[f"out.{k}"] for k in entry["outputs"]},
        intermediates={k: arrays[f"mid.{k}"] for k in entry["intermediates"]},
        tolerance=entry["tolerance"],
        entry=entry,
        plain={tier: {k: arrays[q["key"]] for k, q in qs.items()}
               for tier, qs in entry.get("low_precision", {}).items() if "undefined" not in qs},
    )


@dataclass
class VerifyReport:
    """Result of :func:`verify`: per case ``"ok"`` or a list of problems.

    Examples
    --------
    >>> import shutil, tempfile
    >>> directory = tempfile.mkdtemp()
    >>> _ = export(directory, cases=['lyapunov.phi1/near_zero'])
    >>> report = verify(directory)
    >>> isinstance(report, VerifyReport), report.ok, report.tampered, report.changed
    (True, True, [], [])
    >>> shutil.rmtree(directory)
    """

    directory: str
    problems: dict  # case name -> list of messages
    checked: list
    not_exported: list
    #: ``.npz`` files of the directory that the manifest does not list (left by an earlier export, say): not checked
    unlisted: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def tampered(self) -> list:
        return [n for n, msgs in self.problems.items() if any("sha256" in m for m in msgs)]

    @property
    def changed(self) -> list:
        return [n for n, msgs in self.problems.items() if any("differs" in m or "shape" in m for m in msgs)]

    def __str__(self) -> str:
        n = len(self.checked)
        lines = [f"verified {n} case{'s' if n != 1 else ''} in {self.directory}: "
                 + ("all agree" if self.ok else f"{len(self.problems)} with problems")]
        for name, msgs in self.problems.items():
            lines += [f"  {name}: {m}" for m in msgs]
        registered = any(name in _CASES_BY_NAME for name in self.checked)
        if self.not_exported and registered:  # (a directory of random_case exports only: no note)
            shown = ", ".join(self.not_exported[:5]) + (", …" if len(self.not_exported) > 5 else "")
            lines.append(f"  note: {len(self.not_exported)} registered cases are not in the directory: {shown}")
        if self.unlisted:
            shown = ", ".join(self.unlisted[:5]) + (", …" if len(self.unlisted) > 5 else "")
            lines.append(f"  note: {len(self.unlisted)} .npz file{'s' if len(self.unlisted) != 1 else ''} of the "
                         f"directory not in its manifest, not checked: {shown}")
        return "\n".join(lines)


def _diff(stored: dict, fresh: dict, rtol: float, what: str) -> list:
    msgs = []
    for key in sorted(set(stored) | set(fresh)):
        if key not in fresh:
            msgs.append(f"{what} {key} is stored but no longer computed")
            continue
        if key not in stored:
            msgs.append(f"{what} {key} is computed but not stored")
            continue
        a, b = np.asarray(fresh[key]), np.asarray(stored[key])
        if a.shape != b.shape:
            msgs.append(f"{what} {key}: shape {a.shape} != stored {b.shape}")
        elif a.dtype.kind in "USbiu" or b.dtype.kind in "USbiu":  # strings, flags, integers: exactly
            if not np.array_equal(a, b):
                msgs.append(f"{what} {key} differs: {a!r} != stored {b!r}")
        else:
            err = _rel_error(a, b)
            if not err <= rtol:
                msgs.append(f"{what} {key} differs: rel error {err:.3e} > {rtol:.0e} (max abs {max_abs_error(a, b):.3e})")
    return msgs


def _check_low_precision(entry: dict, arrays: dict, stored: dict) -> list:
    """Version 2: each stored plain reference reproduces the manifest's plain error and bound.

    Checked on the stored arrays only (the plain references themselves are float32/float16
    computations whose last bits depend on the machine, so they are not recomputed).
    """
    msgs = []
    for tier, qs in entry.get("low_precision", {}).items():
        if "undefined" in qs:
            continue
        for name, q in qs.items():
            f32 = q.get("returned_in_float32")
            if f32 is not None:  # its plain reference is not stored: the bound follows from the stored error
                expect = _rule_bound(f32["plain_error"], "float32", f32["ulps"], q.get("decay_floor", 0.0))
                if _bound_mismatch(f32["bound"], expect):
                    msgs.append(f"low_precision {tier} {name}: returned_in_float32 bound {f32['bound']:.3e} is not "
                                f"2 max(plain_error, ulps eps) = {expect:.3e}")
            key = q.get("key", "")
            if q.get("sampled"):  # a generated case: the bound follows from the stored error (the array is not stored)
                expect = _rule_bound(q["plain_error"], tier, q["ulps"], q.get("decay_floor", 0.0))
                if key not in arrays or _bound_mismatch(q["bound"], expect):
                    msgs.append(f"low_precision {tier} {name}: member {key} missing or bound {q['bound']:.3e} is not "
                                f"2 max(plain_error, ulps eps) = {expect:.3e}")
                continue
            if key not in arrays or name not in stored:
                msgs.append(f"low_precision {tier} {name}: member {key} or the reference value is missing")
                continue
            want = np.asarray(stored[name])
            value = np.asarray(arrays[key])
            if value.shape != want.shape:
                msgs.append(f"low_precision {tier} {name}: shape {value.shape} != {want.shape}")
                continue
            care = ~np.isnan(want) if want.dtype.kind == "f" else np.ones(want.shape, bool)
            v, w = value.astype(want.dtype)[care], want[care]
            fin = np.isfinite(v)
            e = _rel_error(v[fin], w[fin]) if fin.any() else float("nan")
            bound = _rule_bound(e, tier, q["ulps"], q.get("decay_floor", 0.0))
            same = lambda a, b: (np.isnan(a) and np.isnan(b)) or abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1e-300)
            if not (same(e, q["plain_error"]) and same(bound, q["bound"])):
                msgs.append(f"low_precision {tier} {name}: plain error {e:.9e} / bound {bound:.9e} differ from the "
                            f"manifest's {q['plain_error']:.9e} / {q['bound']:.9e}")
    return msgs


def verify(directory) -> VerifyReport:
    """Recompute every case of an exported vectors directory and diff it.

    For each case of the manifest: the file's sha256 must match (else it is reported as
    tampered); the arguments rebuilt from the seed must equal the stored ones, and refimpl run
    on the *stored* arguments must reproduce every stored output and intermediate, both to the
    case's ``regen_rtol``. Cases that the registry no longer knows are problems; registered
    cases missing from the directory are listed as a note. ``ValueError`` if the directory has
    no valid manifest.

    Examples
    --------
    >>> import shutil, tempfile
    >>> directory = tempfile.mkdtemp()
    >>> _ = export(directory, cases=['lyapunov.phi1/near_zero'])
    >>> report = verify(directory)
    >>> report.ok, report.checked
    (True, ['lyapunov.phi1/near_zero'])
    >>> shutil.rmtree(directory)
    """
    if not isinstance(directory, (str, Path)) and not hasattr(directory, "__fspath__"):
        raise TypeError(f"directory: expected a path (str or os.PathLike), got {type(directory).__name__}")
    directory = Path(directory)
    manifest = _read_manifest(directory)
    problems, checked = {}, []
    for entry in manifest["cases"]:
        name = entry.get("name", "?")
        msgs = []
        checked.append(name)
        case = _CASES_BY_NAME.get(name)
        path = directory / entry.get("file", "")
        if case is None and "random_inputs" in entry:  # a random_case: rebuilt from its function, seed and sizes
            try:
                case = _random_case_of(entry)
            except (TypeError, ValueError) as exc:
                problems[name] = [f"its random_inputs cannot be rebuilt: {exc}"]
                continue
            if case.name != name:
                problems[name] = [f"its random_inputs rebuild the case {case.name!r}, not {name!r}"]
                continue
        if case is None:
            problems[name] = [f"not a registered case of refimpl {_versions()['refimpl_version']}"]
            continue
        if not path.is_file():
            problems[name] = [f"file {entry.get('file')} is missing"]
            continue
        if sha256(path) != entry.get("sha256"):
            msgs.append(f"{path.name}: sha256 mismatch with the manifest (tampered or corrupted file)")
        try:
            arrays = read_npz(path)
        except Exception as exc:  # unreadable zip, pickled member, truncated file …
            problems[name] = msgs + [f"{path.name} cannot be read safely: {exc}"]
            continue
        msgs += _described_problems(entry, arrays)
        if entry.get("generated") is not None:  # regenerated from seed and sizes, checked against the summary
            try:
                msgs += _generated_problems(case, entry, arrays)
            except Exception as exc:
                msgs.append(f"regeneration raised {type(exc).__name__}: {exc}")
            msgs += _check_low_precision(entry, arrays, {})
            if msgs:
                problems[name] = msgs
            continue
        stored_args = _restore_args(arrays, entry)
        rebuilt = {k: v for k, v in case.build(np.random.default_rng(case.seed)).items() if v is not None}
        msgs += _diff({k: np.asarray(v) for k, v in stored_args.items()},
                      {k: np.asarray(v) for k, v in rebuilt.items()}, case.regen_rtol, "argument")
        try:
            _, fresh = compute(case, args=stored_args)
        except Exception as exc:
            problems[name] = msgs + [f"recomputation raised {type(exc).__name__}: {exc}"]
            continue
        stored = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(("out.", "mid."))}
        msgs += _diff(stored, fresh, case.regen_rtol, "result")
        msgs += _check_low_precision(entry, arrays, stored)
        if msgs:
            problems[name] = msgs
    exported = {e.get("name") for e in manifest["cases"]}
    not_exported = [c.name for c in CASES if c.name not in exported]
    return VerifyReport(str(directory), problems, checked, not_exported, _unlisted(directory, manifest))


def _unlisted(directory: Path, manifest: dict) -> list:
    """The ``.npz`` files of ``directory`` that ``manifest`` does not list (an earlier export's, say), sorted."""
    listed = {e.get("file") for e in manifest["cases"]}
    return sorted(p.name for p in directory.glob("*.npz") if p.name not in listed)


def _described_problems(entry: dict, arrays: dict) -> list:
    """The manifest's description of every stored array (its member, shape and dtype) against the file: a reader
    that sizes its buffers from the manifest must find what it describes (a sampled array: only the member)."""
    msgs = []
    for group in ("arguments", "outputs", "intermediates"):
        for name, desc in (entry.get(group) or {}).items():
            key = desc.get("key") if isinstance(desc, dict) else None
            if key is None or key not in arrays:
                msgs.append(f"manifest {group} {name}: member {key} is not in the file")
                continue
            if desc.get("sampled"):
                continue
            arr = arrays[key]
            dtype = arr.dtype.str if arr.dtype.kind == "U" else arr.dtype.name
            if list(arr.shape) != desc.get("shape") or dtype != desc.get("dtype"):
                msgs.append(f"manifest {group} {name}: shape {desc.get('shape')} dtype {desc.get('dtype')} but the file "
                            f"holds shape {list(arr.shape)} dtype {dtype}")
    return msgs


# --------------------------------------------------------------------------------------------
# The comparison harness
# --------------------------------------------------------------------------------------------


@dataclass
class QuantityReport:
    """One output or intermediate of one case, judged by the tolerance policy.

    ``rel_error`` and ``abs_error`` are the norm-wise errors of Eq. (15.1) of the book, ``bound`` the
    relative bound of Eq. (15.2) (float64: ``rtol``, with ``atol`` on the absolute error) or (15.3)
    (the ratio rule). Where the error is (the documented location of a failure):

    ``worst``, ``worst_index``
        the entry with the largest error ``|x − x*|`` — the one that sets ``rel_error``, relative to the
        quantity's scale ``max|x*|`` (for a quantity failed by one sequence, :data:`SEQUENCE_QUANTITIES`,
        the largest of that sequence's errors, which set the reported ``rel_error``). ``worst_index`` is the
        index into the returned array (a tuple, C order); ``worst`` names it, ``{axis name: index}``, with
        the axes of the quantity's layout where it is known (:data:`_LAYOUTS`; e.g. ``head``, ``row``,
        ``column`` for an attention output, ``head``, ``key_tile``, ``row`` for FlashAttention's running
        max and sum, ``batch``, ``head``, ``step`` for a recurrence) and ``axis0``, ``axis1``, … elsewhere,
        plus positions derived from an index, put before it: the ``chunk`` of a step
        (``step // chunk_size``), the ``query_tile`` of a row (``row // block_q``), the packed
        ``sequence`` of a token (``cu_seqlens``) and its ``step`` or ``row`` in it. None for a scalar or an
        unjudged quantity.
    ``first_over``, ``first_over_index``
        for a quantity computed in order — FlashAttention's running max and sum (key tile by key tile),
        chunk states (chunk by chunk), the outputs and per-step states of recurrences and filters (step
        by step; an RTS smoother backwards), the gradients of the recurrences' backward passes (those from
        the adjoint — dk, dv, dg, du, dx, dB, … — from the last step back; dq, dC, dz step by step), attention
        rows, and attention's dk, dv key by key (FlashAttention-2's backward pass runs over key blocks; its dq, a
        sum over them, has no order) — the first entry in that order whose error
        exceeds the bound (``|x − x*| > bound · max|x*|``; in float64 also ``> atol``): where a bug
        starts, as opposed to where it grew largest. The dict lists the axes in computation order. None if
        no entry exceeds the bound (a passing quantity) or the quantity has no order.
    ``worst_sequence``
        for the chunked linear recurrences judged sequence by sequence in float32 (:data:`SEQUENCE_QUANTITIES`),
        whenever the quantity fails: the sequence (batch entry × head) whose error, relative to its own
        largest entry, is the largest multiple of its own bound, ``{axis name: index}``. In the other tiers
        ``worst`` names the sequence of the largest error.

    Examples
    --------
    >>> from refimpl.lyapunov import phi1
    >>> q = compare('lyapunov.phi1', phi1)['near_zero'].quantities[0]
    >>> isinstance(q, QuantityReport), q.name, q.kind, q.passed
    (True, 'phi', 'output', True)
    >>> from refimpl.attention import softmax_attention
    >>> x = np.arange(8.0).reshape(4, 2) / 8
    >>> def wrong(**kw):  # entry (2, 1) off by 1 %
    ...     y = softmax_attention(**kw)
    ...     y[2, 1] *= 1.01
    ...     return y
    >>> bad = compare('attention.softmax_attention', wrong, inputs={'q': x, 'k': x, 'v': x}).cases[0].quantities[0]
    >>> bad.passed, bad.worst, bad.worst_index, bad.first_over
    (False, {'row': 2, 'column': 1}, (2, 1), {'row': 2, 'column': 1})
    """

    name: str
    kind: str  # "output" or "intermediate"
    passed: bool
    abs_error: float = float("nan")
    rel_error: float = float("nan")
    bound: float = float("nan")  # the rel bound it was held to
    plain_error: float | None = None  # low tiers: rel error of the plain reference in that tier
    message: str = ""
    model: str = ""  # low tiers: "plain <tier>" (run in the tier) or "rounded inputs" (see the module docstring)
    floor: float = 0.0  # low tiers: the case's decay floor (chunked linear recurrences, :func:`decay_floor`), or 0
    atol: float = 0.0  # float64: the case's absolute tolerance (the quantity passes if rel <= bound or abs <= atol)
    worst: dict | None = None  # {axis: index} of the largest error (see the class docstring)
    worst_index: tuple | None = None  # the same, as an index into the returned array
    first_over: dict | None = None  # {axis: index} of the first entry over the bound, in computation order
    first_over_index: tuple | None = None
    worst_sequence: dict | None = None  # chunked recurrences in float32, when the quantity fails

    def line(self, digits: int = 1) -> str:
        """The report's line for this quantity: ``rel <= bound`` (or ``>``), where, and the details.

        Examples
        --------
        >>> QuantityReport('y', 'output', False, 1e-2, 1e-2, 9.5e-7, worst={'head': 2, 'row': 64},
        ...                first_over={'key_tile': 1, 'row': 64, 'head': 0}).line()
        'y          FAIL rel 1.0e-02 > bound 9.5e-07 at head 2, row 64 (first over the bound: key tile 1, row 64, head 0)  abs 1.0e-02'
        """
        status = "ok" if self.passed else "FAIL"
        if self.message and not np.isfinite(self.rel_error):
            return f"{self.name:<10} {status:<4} {self.message}"
        d = digits
        text = f"{self.name:<10} {status:<4} rel {self.rel_error:.{d}e} {_cmp(self.rel_error, self.bound)} bound {self.bound:.{d}e}"
        if not self.passed:
            if self.worst is not None:
                text += f" at {_where(self.worst)}"
            if self.first_over is not None:
                text += f" (first over the bound: {_where(self.first_over)})"
            if self.worst_sequence is not None and _ONE_BY_ONE not in self.message:
                text += f"; worst sequence: {_where(self.worst_sequence)}"
        text += f"  abs {self.abs_error:.{d}e}"
        if self.atol:
            text += f" {_cmp(self.abs_error, self.atol)} atol {self.atol:.{d}e}"
        if self.plain_error is not None:
            text += f"  plain {self.plain_error:.{d}e} ({self.model})"
        if self.floor:
            text += f"  decay floor {self.floor:.{d}e}"
        return text + (f"  {self.message}" if self.message else "")


def _cmp(value: float, bound: float) -> str:
    """``"<="`` if ``value <= bound`` else ``">"`` (NaN: ``">"``)."""
    return "<=" if value <= bound else ">"


def _where(location: dict) -> str:
    """``{"key_tile": 1, "row": 64}`` → ``"key tile 1, row 64"``; unnamed axes → ``"index (1, 64)"``."""
    if all(k.startswith("axis") and k[4:].isdigit() for k in location):
        return f"index ({', '.join(str(v) for v in location.values())}{',' if len(location) == 1 else ''})"
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in location.items())


class _Deferred:
    """A value computed when first asked for (``CaseReport.meets``)."""

    def __init__(self, compute):
        self.compute = compute


@dataclass
class CaseReport:
    """The verdict on one case: ``status`` is ``"pass"``, ``"fail"``, ``"error"`` or ``"skipped"``.

    ``"skipped"``: the callable raised ``NotImplementedError`` on a registered (golden) case — an option
    or a size the kernel does not support; ``message`` gives its text. A skipped case neither passes nor
    fails a report (:attr:`CompareReport.passed`).

    ``meets`` (low tiers): the finest tier whose verdict the returned values meet. For a failed case it
    is computed when first read — it judges the values against the plain references of the coarser
    tiers, the cost of a few more compares — from copies of the returned values taken at the comparison;
    ``str(report)`` reads it.

    Examples
    --------
    >>> from refimpl.lyapunov import phi1
    >>> case = compare('lyapunov.phi1', phi1)['near_zero']
    >>> isinstance(case, CaseReport), case.status, case.first_failure
    (True, 'pass', None)
    """

    case: str
    status: str
    quantities: list
    message: str = ""
    #: low tiers: the finest tier whose verdict the returned values meet ("float32" for a passing
    #: float32 case, "tf32" for a TF32 kernel asked for float32, None if no tier is met)
    meets: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def __getstate__(self):  # pickled or deep-copied with ``meets`` computed: a pending computation does not travel
        return {**self.__dict__, "_meets": self.meets}

    @property
    def first_failure(self) -> str | None:
        """The first failing quantity in the order of computation: where the bug is."""
        for q in self.quantities:
            if not q.passed:
                return q.name
        return None


def _get_meets(self):
    value = self.__dict__.get("_meets")
    if isinstance(value, _Deferred):  # computed once, on first access
        value = self.__dict__["_meets"] = value.compute()
    return value


def _set_meets(self, value):
    self.__dict__["_meets"] = value


CaseReport.meets = property(_get_meets, _set_meets, doc=(
    "low tiers: the finest tier whose verdict the returned values meet (None if none); computed on first "
    "access for a failed case"))


@dataclass
class CompareReport:
    """Result of :func:`compare`; ``str(report)`` is a table, ``report.passed`` the verdict.

    ``passed``: every compared case passes, and at least one was compared — cases the callable
    skipped (``NotImplementedError``) are left out, and a report whose cases were all skipped
    does not pass (``str(report)`` says "NOTHING COMPARED").

    Examples
    --------
    >>> from refimpl.lyapunov import phi1
    >>> report = compare('lyapunov.phi1', phi1)
    >>> isinstance(report, CompareReport), report.function, report.dtype, report.passed
    (True, 'lyapunov.phi1', 'float64', True)
    """

    function: str
    dtype: str
    cases: list

    @property
    def compared(self) -> list:
        """The cases that were compared (not skipped)."""
        return [c for c in self.cases if c.status != "skipped"]

    @property
    def skipped(self) -> list:
        """The names of the cases the callable skipped (it raised ``NotImplementedError``)."""
        return [c.case for c in self.cases if c.status == "skipped"]

    @property
    def passed(self) -> bool:
        compared = self.compared
        return bool(compared) and all(c.passed for c in compared)

    @property
    def meets(self) -> str | None:
        """The finest tier whose verdict every compared case meets (None if a case meets none or errored)."""
        tiers = [c.meets for c in self.compared]
        if not tiers or any(t is None for t in tiers):
            return None
        return max(tiers, key=TIERS.index)

    def __getitem__(self, name) -> CaseReport:
        for c in self.cases:
            if c.case == name or c.case.split("/", 1)[1] == name:
                return c
        raise KeyError(name)

    def table(self, digits: int = 1) -> str:
        """A fixed-width table; errors printed with ``digits`` significant decimals.

        One line per case, then one per quantity: ``rel`` next to its ``bound`` (``<=`` or ``>``), and for
        a failing quantity where its largest error is and the first entry over the bound in the order of
        computation (:class:`QuantityReport`), then ``abs``, the plain error and its model."""
        rule = "ratio rule" if self.dtype in _LOW_DTYPES else "float64 rtol"
        compared, skipped = self.compared, self.skipped
        head = f"compare {self.function} in {self.dtype} ({rule}): "
        if not compared and skipped:
            head += f"NOTHING COMPARED, all {len(skipped)} cases skipped (not supported by the callable)"
        else:
            head += ("PASS" if self.passed else "FAIL") + f", {sum(c.passed for c in compared)}/{len(compared)} cases"
            if skipped:
                head += f" ({len(skipped)} skipped: not supported by the callable)"
        lines = [head]
        if self.dtype in _LOW_DTYPES and any(c.status == "fail" for c in compared):  # (errors compare nothing)
            lines[0] += (f"; errors within the bounds of tier: {self.meets or 'none'} (the finest tier met: the errors of a "
                         "kernel computing in that tier, or of a formula error too small for that tier's resolution; "
                         "not a claim about how the kernel computes)")
        for c in self.cases:
            head = f"  {c.case.split('/', 1)[1]:<28} {c.status.upper():<5}"
            if c.status in ("error", "skipped"):
                lines.append(f"{head} {c.message}")
                continue
            where = f" first failure: {c.first_failure}" if c.first_failure else ""
            if self.dtype in _LOW_DTYPES and not c.passed:
                where += f" (within the bounds of tier: {c.meets or 'none'})"
            lines.append(head + where)
            lines += [f"      {q.line(digits)}" for q in c.quantities]
            if c.message:  # a note on the case (unknown names ignored; inputs that look passed head first)
                lines.append(f"      note: {c.message}")
        return "\n".join(lines)

    __str__ = table


def _round(x, dtype: str):
    """Round a value to the storage of tier ``dtype`` (complex part-wise; tf32 stores float32;
    bfloat16 is carried in float32, complex float16 in complex64). A scalar (a softmax scale, a
    soft cap, an ε) comes back as a Python float or complex on the tier's grid: kernels take such
    options as host numbers, and a NumPy float16 scalar would make ``scale / softcap`` a float16
    division in the callable (a correct FlashAttention port failed its log-sum-exp by 1.3× so)."""
    if isinstance(x, (bool, np.bool_, str, int, np.integer)) or x is None:
        return x
    if isinstance(x, (tuple, list)) and all(isinstance(e, (int, np.integer)) and not isinstance(e, bool) for e in x):
        return x  # integers (FlashAttention's window_size) stay integers
    if isinstance(x, (tuple, list)) and all(isinstance(e, (float, int, np.floating, np.integer)) for e in x):
        return type(x)(float(_round(e, dtype)) for e in x)  # a tuple option (e.g. dt_limit) stays a tuple
    arr = np.asarray(x)
    if arr.dtype.kind not in "fc":
        return x
    with np.errstate(over="ignore"):  # values beyond the dtype's range become inf, as in a kernel
        out = store(arr, dtype)
    if out.ndim == 0:
        return complex(out) if out.dtype.kind == "c" else float(out)
    return out


#: the message of an optional output a callable left out or returned as None
_NOT_RETURNED = "not returned (optional): not judged"


def _as_results(value, case: Case, oracle: dict) -> tuple:
    """Map the user's return value to ``{name: value}``; (mapping, error message or '').

    The function's optional outputs (:class:`refimpl._golden.Function`: those refimpl returns only on
    request, and the gradients of optional inputs) may be returned as None, or left out: from a dict, or from
    the end of a tuple (they come after the required ones); they are then not in the mapping. One value is the
    single required output. A tuple may also hold all the function's outputs, None for those the case's inputs
    do not produce (``dlog_g`` without ``log_g``). A required output returned as None stays in the mapping, as
    None (reported as "returned None")."""
    outs = case.output_names()
    optional = FUNCTIONS[case.function].optional
    required = tuple(o for o in outs if o not in optional)

    def returned(given: dict) -> dict:  # an optional output returned as None: not returned
        return {k: v for k, v in given.items() if v is not None or k in required}

    if value is None:  # a callable that returns nothing (e.g. writes into an argument): an error, not a value
        return None, f"returned None, expected the output{'s' if len(outs) > 1 else ''} {', '.join(outs)}"
    if isinstance(value, dict):  # None stands for an output not returned (fla's final state without output_final_state)
        unknown = [k for k in value if k not in oracle]
        note = f"ignored unknown names {unknown}" if unknown else ""
        return returned({k: v for k, v in value.items() if k in oracle}), note
    if isinstance(value, (tuple, list)):  # trailing None: outputs not returned, as fla's (o, None), (…, dh0=None)
        n = len(value)
        while n > len(required) and value[n - 1] is None:
            n -= 1
        value = value[:n]  # the same type: the messages name it
    if len(required) == len(outs):
        fewer = ""
    elif len(outs) - len(required) == 1:
        fewer = " or " + (f"{required[0]} alone" if len(required) == 1 else f"{len(required)} ({', '.join(required)})")
    else:
        fewer = f" or fewer, down to {len(required)} ({', '.join(required)}): optional ones left out from the end"
    full = FUNCTIONS[case.function].outputs  # the function's outputs (a case may have fewer: no dlog_g without log_g)
    if isinstance(value, (tuple, list)) and len(value) == len(full) != len(outs):
        given = dict(zip(full, value))
        if all(given[k] is None for k in full if k not in outs):  # the documented call, absent outputs as None
            return returned({k: v for k, v in given.items() if k in outs}), ""
    if isinstance(value, (tuple, list)):
        if not len(required) <= len(value) <= len(outs):
            return None, (f"returned a {type(value).__name__} of {len(value)} items, expected {len(outs)} "
                          f"({', '.join(outs)}){fewer}")
        return returned(dict(zip(outs, value))), ""
    if len(required) != 1:
        return None, f"returned one {type(value).__name__}, expected a tuple ({', '.join(outs)}){fewer}"
    return {required[0]: value}, ""


def _returned_none(function: str, name: str, outs) -> str:
    """The message of a required output returned as None."""
    optional = [o for o in outs if o in FUNCTIONS[function].optional]
    return f"returned None for {name}, a required output" + (
        f" (only {', '.join(optional)} may be None or left out)" if optional else "")


#: the chunk length of fla's chunked kernels (its functions take no chunk size)
FLA_CHUNK = 64


def _log_decays(function: str, args: dict):
    """``(log g with the sequence last, chunk length, channel axes)`` of a chunked linear recurrence's
    arguments, or None. ``channel axes`` is 1 where the log-decays carry a key-channel axis before the
    sequence (a gate per key channel: GLA's, fla's ``chunk_gla``), else 0; the axes before it index the
    independent sequences (batch entries and heads)."""
    fn = function.removesuffix("_vjp")
    a = {k: v for k, v in args.items() if v is not None}
    if fn == "linear_rnn.ssd":
        return np.asarray(a["dt"], float) * np.asarray(a["A"], float)[:, None], int(a.get("chunk_size", 64)), 0
    if fn == "linear_rnn.gated_linear_attention":
        lg = np.asarray(a["log_g"], float)
        per_channel = lg.ndim == np.ndim(a["k"])
        return (np.moveaxis(lg, -1, -2) if per_channel else lg), int(a.get("chunk_size", 64)), int(per_channel)
    if fn == "linear_rnn.retention":
        lg = np.log(np.asarray(a["gamma"], float))[:, None]
        return np.broadcast_to(lg, (lg.shape[0], np.shape(a["q"])[-2])), int(a.get("chunk_size", 64)), 0
    if fn == "linear_rnn.delta_rule" and "log_g" in a:
        return np.asarray(a["log_g"], float), int(a.get("chunk_size", 64)), 0
    if fn == "linear_rnn.mamba_chunk_scan_combined":
        raw = np.asarray(a["dt"], float) + (np.asarray(a["dt_bias"], float) if "dt_bias" in a else 0.0)
        step = np.logaddexp(0.0, raw) if a.get("dt_softplus", False) else raw
        lo, hi = a.get("dt_limit", (0.0, np.inf))
        step = np.clip(step, float(lo), float(hi))
        return np.moveaxis(step * np.asarray(a["A"], float), -2, -1), int(a["chunk_size"]), 0  # (b, h, l)
    if fn == "linear_rnn.chunk_gla":
        return np.moveaxis(np.asarray(a["g"], float), 1, -1), FLA_CHUNK, 1  # (B, H, K, T)
    if fn == "linear_rnn.chunk_simple_gla" and "g_gamma" in a:  # a constant log-decay per head, added to g
        g = np.asarray(a["g"], float) if "g" in a else np.zeros(np.shape(a["q"])[:3])
        return np.moveaxis(g + np.asarray(a["g_gamma"], float), 1, -1), FLA_CHUNK, 0
    if fn in ("linear_rnn.chunk_simple_gla", "linear_rnn.chunk_gated_delta_rule"):
        return np.moveaxis(np.asarray(a["g"], float), 1, -1), FLA_CHUNK, 0  # (B, H, T)
    return None


#: the multiple of ε₃₂ · C_eff that makes the decay floor (:func:`decay_floor`). Measured: correct float32
#: chunked kernels of mamba_ssm's and fla's design (SSD and simple GLA forward; SSD backward by autograd)
#: reach at most 0.84 ε₃₂ C_eff, and at most 0.19 ε₃₂ C_eff where the floor sets the bound (C_eff > 20), so
#: the bound 2 ε₃₂ C_eff leaves a margin of 2.4 at least (chapter 15 measures it)
DECAY_FLOOR_ULPS = 1.0


def effective_log_decay(log_g, chunk: int) -> float:
    r"""``C_eff``: the largest decay-weighted mean of ``|c_t| + |c_s|`` over the pairs s < t of a chunk.

    The C_eff of the decay floor in the bound of Eq. (15.3) of the book (:func:`decay_floor`).
    ``log_g`` (..., L): log-decays ``a_r ≤ 0`` with the sequence last; ``chunk``: the kernel's chunk
    length. Inside each chunk, with ``c_t = Σ_{r=start}^{t} a_r`` (and ``c_{−1} = 0`` for the state
    entering the chunk),

    .. math::  C_{\mathrm{eff}} = \max_t \frac{\sum_{s=-1}^{t-1} e^{c_t - c_s}\,(|c_t| + |c_s|)}
                                              {1 + \sum_{s=-1}^{t-1} e^{c_t - c_s}} .

    A kernel that forms the weight of the pair (t, s) as ``exp(c_t − c_s)`` from a float32 ``c``
    rounds it by about ``ε₃₂ (|c_t| + |c_s|)`` relative; the diagonal weight (s = t, 1 in the
    denominator) is exact. The mean over a row, weighted by the decays, is the relative error of
    the row's weights taken together: 1.47 to 1.66 ``C`` for a constant decay per step of ``e^{−10^{−4}}``
    to ``e^{−0.2}`` over 64 steps (C the largest ``|c|``), 1.0 to 1.45 ``C`` for gates ``log σ(ξ)`` (ξ standard normal;
    200 draws of 4 × 256 steps in chunks of 64), 0.73 C for a decay of ``e^{−1}`` per step, and about 0 when
    every step decays by many orders — the diagonal then carries the row, and a C of thousands
    says nothing about the error. The sums run as two scalar recurrences over the chunk:
    ``A_t = e^{a_t}(A_{t−1} + 1)``, ``B_t = e^{a_t}(B_{t−1} + |c_{t−1}|)`` from ``A = B = 0``, and
    the row's mean is ``(|c_t| A_t + B_t) / (1 + A_t)``. A zero gate (``log g = −∞``) wipes the
    state: no pair spans it (a kernel must treat it apart: ``exp(c_t − c_s)`` is NaN there) and ``c``
    restarts after it.

    Examples
    --------
    >>> float(effective_log_decay(np.zeros((2, 10)), 4))  # no decay: every weight exact
    0.0
    >>> round(float(effective_log_decay(np.full(64, -0.01), 64)), 3)  # slow decay: 1.51 |c|max = 0.97
    0.968
    >>> float(effective_log_decay(np.full(64, -100.0), 64)) < 1e-30  # fast decay: C = 6400, C_eff ~ 0
    True
    """
    rows = _effective_log_decays(_log_decays_checked(log_g), as_int(chunk, "chunk", minimum=1))
    return float(rows.max()) if rows.size else 0.0


def _log_decays_checked(log_g) -> np.ndarray:
    a = as_real_array(log_g, "log_g", finite=False)
    if a.ndim == 0:
        raise ValueError("log_g: expected shape (..., L), got a scalar")
    if np.isnan(a).any() or (a.size and a.max() > 0):
        raise ValueError(f"log_g: expected log-decays <= 0 (−inf allowed), got {'NaN' if np.isnan(a).any() else f'maximum {a.max():.6g}'}")
    return a


def _effective_log_decays(a: np.ndarray, chunk: int) -> np.ndarray:
    """:func:`effective_log_decay` of each sequence of the checked log-decays ``a`` (..., L): shape ``a.shape[:-1]``."""
    lead, L = a.shape[:-1], a.shape[-1]
    if L == 0 or a.size == 0:
        return np.zeros(lead)
    c = max(1, min(chunk, L))
    n_chunks, pad = -(-L // c), -L % c
    if pad:  # the last chunk's padded steps are computed (a = 0) but their rows are not counted
        a = np.concatenate([a, np.zeros(lead + (pad,))], axis=-1)
    a = a.reshape(-1, c)  # one row per chunk of every sequence
    last = np.arange(a.shape[0]) % n_chunks == n_chunks - 1  # the chunks that end a sequence
    A, B, prev, cum, worst = np.zeros((5, a.shape[0]))  # the two sums, |c_{t−1}| (|c_{−1}| = 0), c_t, the chunk's max
    for t in range(c):
        at = a[:, t]
        zero = np.isneginf(at)  # a zero gate wipes the state: no pair spans it, and c restarts after it
        at = np.where(zero, 0.0, at)
        g = np.where(zero, 0.0, np.exp(at))
        cum = np.where(zero, 0.0, cum + at)  # c_t within the chunk (as a float32 kernel's cumsum, in float64)
        A = g * (A + 1.0)  # Σ_{s<t} e^{c_t − c_s}, the entering state (s = −1) included
        B = g * (B + prev)  # Σ_{s<t} e^{c_t − c_s} |c_s|
        prev = np.abs(cum)
        row = (prev * A + B) / (1.0 + A)  # the row's decay-weighted mean of |c_t| + |c_s| (>= 0)
        if t >= c - pad:  # a padded step in the last chunks
            row[last] = 0.0
        np.maximum(worst, row, out=worst)
    return worst.reshape(lead + (n_chunks,)).max(axis=-1)


def decay_floor(function: str, args: dict) -> float:
    r"""The decay floor of a chunked linear recurrence's case: ``DECAY_FLOOR_ULPS · ε₃₂ · C_eff`` (= ε₃₂ C_eff).

    ``C_eff`` (:func:`effective_log_decay`) over the chunks of the case's ``chunk_size`` (64 for
    fla's functions, whose kernels use chunks of 64), every head, channel and batch entry: the
    largest mean, weighted by the in-chunk decays ``e^{c_t − c_s}``, of ``|c_t| + |c_s|``. 0 when
    ``C_eff <= 1`` (the floor is then below the tier's own term) and for every function without
    chunked decays. The floor enters the bound of Eq. (15.3) of the book as
    ``2 max(e_plain, u ε_tier, ε₃₂ C_eff)`` (u the tier's :data:`refimpl._testing.PLAIN_ULPS`); :func:`compare`
    scales it, for the gradients that sum decay-dependent terms over the sequence (``dA``, ``ddt_bias``), by
    ``max(1, max_h T_h / max|gradient|)``, ``T_h`` the magnitude of head h's terms chunk by chunk (the sum
    can cancel).

    Why: the chunked kernels of Mamba-2 and fla form the decay between steps s < t of a chunk as
    ``e^{c_t − c_s}`` from the float32 cumulative log-decay ``c`` since the chunk's start. ``c``
    carries an absolute rounding error of about ε₃₂|c|, so the weight of the pair (t, s) a relative
    one of about ``ε₃₂ (|c_t| + |c_s|)``, where the recurrence (the plain reference) rounds each weight
    to a few ε₃₂. Such a kernel is correct and its float32 error reaches a fraction of ``ε₃₂ C_eff``. Only
    the weights that exist count: when every step decays by many orders, the off-diagonal weights
    vanish, the diagonal ones are exact, and the floor is about 0 however large ``|c|`` grows.
    In TF32 and the 16-bit tiers the floor stays below the tier's own term ``u ε_tier`` while
    ``C_eff < u ε_tier / ε₃₂``: 2^13 for float16 (u = 1), 2^14 for TF32 (u = 2), 2^16 for bfloat16 (u = 1).

    Examples
    --------
    >>> args = {"q": np.ones((1, 128, 4)), "k": np.ones((1, 128, 4)), "v": np.ones((1, 128, 2)),
    ...         "log_g": np.full((1, 128), -0.5), "chunk_size": 64}  # 64 steps of −0.5 per chunk
    >>> floor = decay_floor("linear_rnn.gated_linear_attention", args)
    >>> bool(floor == 2.0**-23 * effective_log_decay(np.full((1, 128), -0.5), 64)), round(floor / 2.0**-23, 1)
    (True, 38.0)
    >>> decay_floor("attention.softmax_attention", {})  # no chunked decays
    0.0
    """
    if not isinstance(function, str):
        raise TypeError(f"function: expected a registered function name (str), got {type(function).__name__}")
    if function not in FUNCTIONS:
        raise ValueError(f"function: unknown function {function!r}; see refimpl.oracle.function_names()")
    if not isinstance(args, dict):
        raise TypeError(f"args: expected a dict of the case's arguments, got {type(args).__name__}")
    try:
        got = _log_decays(function, args)
    except KeyError as exc:
        raise ValueError(f"args: the arguments of {function} lack {exc.args[0]!r}") from None
    if got is None:
        return 0.0
    rows = _sequence_C(got, args.get("cu_seqlens"))
    C = float(rows.max()) if rows.size else 0.0
    return DECAY_FLOOR_ULPS * tier_eps("float32") * C if np.isfinite(C) and C > 1 else 0.0


def _sequence_C(got, cu_seqlens=None) -> np.ndarray:
    """``C_eff`` of each sequence of ``_log_decays``'s ``got``: shape (batch, heads), the key channels' largest. With
    fla's ``cu_seqlens`` the packed sequences of the one batch row are cut apart (each chunked from its own start):
    shape (N, heads)."""
    a, chunk, channels = got
    a = _log_decays_checked(a)
    chunk = as_int(chunk, "chunk", minimum=1)
    if cu_seqlens is None:
        C = _effective_log_decays(a, chunk)
    else:  # (1, H, [K,] T): one row of N packed sequences
        cu = np.asarray(cu_seqlens).tolist()
        C = np.concatenate([_effective_log_decays(a[..., b:e], chunk) for b, e in zip(cu[:-1], cu[1:])], axis=0)
    if channels:
        C = C.max(axis=-1) if C.shape[-1] else np.zeros(C.shape[:-1])
    return C


def _case_floor(function: str, args: dict) -> float:
    """:func:`decay_floor` of a case whose arguments refimpl accepted; 0 where they lack what it reads."""
    try:
        return decay_floor(function, args)
    except (TypeError, ValueError):
        return 0.0


class _OnRounded:
    """refimpl's float64 values of a case's quantities on the inputs rounded to the tier (the rounded-input
    model), computed once, when first asked for (:func:`_per_sequence`); None where refimpl rejects them."""

    def __init__(self, case, args: dict):
        self.case, self.args, self.values = case, args, None

    def __call__(self, name: str):
        if self.values is None:
            try:
                _, self.values = compute(dataclasses.replace(self.case, intermediates=True), args=self.args)
            except Exception:  # noqa: BLE001 — rounded inputs refimpl cannot evaluate: no such model
                self.values = {}
        return self.values.get(name)


class _Floors:
    """The decay floor of each quantity of a case: :func:`decay_floor`, and for a gradient that sums
    decay-dependent terms over the batch and the sequence (SSD's and Mamba-2's ``dA``, Mamba-2's ``ddt_bias``)
    that floor times ``max_h T_h / max|gradient|`` (≥ 1), ``T_h`` the magnitude of head h's terms, chunk by chunk
    (``refimpl._vjp._decay_sums``): each term carries its decays' rounding, and the sum can cancel (a correct
    float32 Mamba-2 kernel's ``ddt_bias`` reached 2.6 ε₃₂ C_eff relative to the cancelled sum, with
    Σ|terms| / |Σ terms| of 12 to 840). Computed once per case, in float64."""

    def __init__(self, function: str, args: dict, low: bool = True, tier: str | None = None):
        self.function, self.args = function, args
        self.floor = _case_floor(function, args) if low else 0.0
        self._sums = None
        self._seq = None if tier == "float32" else ()  # sequence by sequence in float32 only (see sequences)

    def sequences(self, name: str):
        """``(move, S, floors)`` for judging the quantity ``name`` sequence by sequence, or None.

        ``S``: the shape of the case's independent sequences (batch entries × heads), ``floors`` (S): each
        one's decay floor ``ε₃₂ C_eff`` (0 where ``C_eff <= 1``, as :func:`decay_floor`), ``move``: the
        quantity is laid out time first, ``(b, l, h, …)``, and its time axis goes behind the heads. Only
        in float32, for the quantities of :data:`SEQUENCE_QUANTITIES`, in cases with log-decays (whatever
        their floor: a sequence's errors are also relative to its own largest entry) and more than one
        sequence. Float32 is the tier where the decay floor ε₃₂ C_eff can exceed the tier's own floor, so
        where one head's C_eff can loosen every head's bound; in TF32 and the 16-bit tiers the tier's floor
        u ε_tier is larger for C_eff < 2^13 (float16; 2^14 for tf32, 2^16 for bfloat16), and there the plain models, whose states stay in float32,
        are more accurate than chunked kernels that store their intermediates in the tier: a correct 16-bit
        chunked gated delta rule kernel's gate gradients failed small, cancelling sequences by up to about 2×, though
        its whole-case errors were well within the bounds."""
        names = SEQUENCE_QUANTITIES.get(self.function.removesuffix("_vjp"), {})
        if name not in names:
            return None
        if self._seq is None:
            self._seq = _sequence_floors(self.function, self.args) or ()
        return (names[name], *self._seq) if self._seq else None

    def __call__(self, name: str, want) -> float:
        if not self.floor:
            return 0.0
        if self._sums is None:
            from ._vjp import _decay_sums

            try:
                self._sums = _decay_sums(self.function, self.args)
            except (TypeError, ValueError):
                self._sums = {}
        if name not in self._sums:
            return self.floor
        top = float(np.max(np.abs(want))) if np.size(want) else 0.0
        return self.floor * max(1.0, self._sums[name] / top) if top > 0 else self.floor


#: the quantities judged sequence by sequence (batch entry × head) as well as whole, per function (and its
#: backward pass): name → laid out time first (``(b, l, h, …)``, the official interfaces). Their leading axes
#: index the sequences (after moving the time axis behind the heads). The gradients of what sequences share (dA,
#: dD, ddt_bias, dB, dC) are judged whole only, and so are the gates' gradients (``dg``, ``dbeta``, ``dlog_g``):
#: each is a sum over the key and value channels that can cancel by two orders of magnitude, and on a short
#: sequence a correct float32 kernel's rounding of such a sum exceeded the sequence's own bound while the whole
#: case stayed well within its bound.
SEQUENCE_QUANTITIES = {
    "linear_rnn.ssd": dict.fromkeys(("y", "chunk_states", "dx", "ddt", "dinitial_state"), False),
    "linear_rnn.gated_linear_attention": dict.fromkeys(("y", "chunk_states", "dq", "dk", "dv", "dinitial_state"),
                                                       False),
    "linear_rnn.retention": dict.fromkeys(("y", "dq", "dk", "dv", "dinitial_state"), False),
    "linear_rnn.delta_rule": dict.fromkeys(("y", "W", "TbetaV", "chunk_states", "dq", "dk", "dv", "dinitial_state"),
                                           False),
    "linear_rnn.mamba_chunk_scan_combined": {"out": True, "Delta": True, "dx": True, "ddt": True, "dz": True,
                                             "final_states": False, "dinitial_states": False},
    **{f"linear_rnn.{fla}": {**dict.fromkeys(("o", "dq", "dk", "dv"), True), "final_state": False, "dh0": False}
       for fla in ("chunk_gla", "chunk_simple_gla", "chunk_delta_rule", "chunk_gated_delta_rule")},
}


def _sequence_floors(function: str, args: dict):
    """``(S, floors, cu)`` of :meth:`_Floors.sequences`, or None (one sequence; arguments refimpl cannot read);
    ``cu``: fla's ``cu_seqlens`` of packed sequences, or None."""
    try:
        got = _log_decays(function, args)
        if got is None:
            return None
        fn, a = function.removesuffix("_vjp"), {k: v for k, v in args.items() if v is not None}
        cu = a.get("cu_seqlens")
        C = _sequence_C(got, cu)
        if fn in ("linear_rnn.mamba_chunk_scan_combined",) or fn.startswith("linear_rnn.chunk_"):
            lead = [C.shape]  # (b, h), or (N, h) packed, already
        elif fn == "linear_rnn.ssd":
            lead = [C.shape, np.shape(a["x"])[:-2]]
        else:  # refimpl's forms: the batch shape is the broadcast of every sequence input's
            lead = [C.shape] + [np.shape(a[k])[:-2] for k in ("q", "k", "v") if k in a]
        S = np.broadcast_shapes(*lead)
        floors = np.where(C > 1, DECAY_FLOOR_ULPS * tier_eps("float32") * C, 0.0)
        if not (len(S) and math.prod(S) > 1):
            return None
        return S, np.broadcast_to(floors, S), None if cu is None else np.asarray(cu).tolist()
    except (KeyError, TypeError, ValueError):
        return None


_ONE_BY_ONE = "when judged one by one"


def _peaks(arrays) -> np.ndarray:
    """The largest magnitude of each array (0 for an empty one)."""
    return np.array([np.max(np.abs(x)) if x.size else 0.0 for x in arrays])


def _sequence_errors(seq, want, *values):
    """Per sequence (in the order of S), the errors ``max|x − want| / max|want|`` of each of ``values`` against
    ``want``; None where the quantity is not laid out by sequences (a broadcast input's gradient)."""
    move, S, _, cu = seq
    n = math.prod(S)
    if move and cu is not None:  # packed sequences (1, T, H, ·): sequence i's steps, head by head
        if want.ndim < 3 or want.shape[0] != 1 or want.shape[2] != S[1] or want.shape[1] != cu[-1]:
            return None
        cut = lambda x: [x[0, b:e, h] for b, e in zip(cu[:-1], cu[1:]) for h in range(S[1])]  # noqa: E731
        w = cut(want)
        scale = _peaks(w)
        with np.errstate(invalid="ignore"):
            errs = [_peaks([a - b for a, b in zip(cut(x), w)]) for x in values]
    else:
        if move and want.ndim >= 3:
            want, *values = (np.moveaxis(x, 1, 2) for x in (want, *values))
        k = len(S)
        if want.ndim <= k or want.shape[:k] != tuple(S):
            return None
        w = want.reshape(n, -1)
        scale = np.max(np.abs(w), axis=1) if w.shape[1] else np.zeros(n)
        with np.errstate(invalid="ignore"):
            errs = [np.max(np.abs(x.reshape(n, -1) - w), axis=1) if w.shape[1] else np.zeros(n) for x in values]
    with np.errstate(invalid="ignore", divide="ignore"):
        return [np.where(scale > 0, e / np.where(scale > 0, scale, 1.0), e) for e in errs]


def _per_sequence(arr, rounded, want, tier: str, ulps: float, seq, exact=None):
    """The worst sequence of a quantity judged sequence by sequence (the ratio rule, Eq. (15.3), with each
    sequence's plain error and decay floor, errors relative to its own largest entry), as
    ``(passed, rel_error, bound, plain_error, floor, message, where)``, or None where the quantity is not laid
    out by sequences (a broadcast input's gradient); ``where`` (an index into the sequences' shape S) is the
    sequence whose error is the largest multiple of its bound, the one reported.

    One sequence's plain error is one draw of rounding and can be small by luck, below what the rounding of
    its inputs alone causes (a correct 16-bit gated delta rule kernel's ``dbeta`` failed one sequence by 1.9×,
    and refimpl itself, exact on the rounded inputs, by 1.2×): where a sequence fails, ``exact()`` (refimpl in
    float64 on the rounded inputs, rounded to the tier) is computed, and the sequence's plain error is the larger
    of the two."""
    move, S, floors, cu = seq
    n = math.prod(S)
    got = _sequence_errors(seq, want, arr, rounded)
    if got is None:
        return None
    rel, prel = got
    fl = np.asarray(floors, float).reshape(n)

    def verdict():
        bounds = np.array([low_precision_verdict(0.0, p, tier, ulps, floor=f)[1] for p, f in zip(prel, fl)])
        with np.errstate(invalid="ignore"):
            return bounds, rel <= bounds  # NaN never passes

    bounds, ok = verdict()
    if not ok.all() and exact is not None:
        ex = exact()
        if ex is not None and np.shape(ex) == want.shape:
            e_in = _sequence_errors(seq, want, ex)[0]
            prel = np.where(np.isfinite(e_in), np.maximum(prel, e_in), prel)
            bounds, ok = verdict()
    with np.errstate(invalid="ignore", divide="ignore"):  # the largest multiple of its bound (NaN: the worst)
        ratio = rel / bounds
        worst = int(np.argmax(np.where(np.isnan(ratio), np.inf, ratio)))
    where = tuple(int(i) for i in np.unravel_index(worst, S))
    message = "" if ok.all() else (
        f"{int((~ok).sum())} of {n} sequences ({'packed sequences' if cu else 'batch entries'} × heads, shape "
        f"{tuple(S)}) fail {_ONE_BY_ONE}; "
        f"the worst, {where}: error {rel[worst]:.3g} > bound {bounds[worst]:.3g} (its plain or rounded-input error {prel[worst]:.3g}, "
        f"decay floor {fl[worst]:.3g}); errors relative to each sequence's largest entry")
    return (bool(ok.all()), float(rel[worst]), float(bounds[worst]), float(prel[worst]), float(fl[worst]), message,
            where)


# ---- where an error is: the layouts of the quantities, and the location of the largest error ------------------

def _fla_trailing(names):
    """fla's layouts (B, T, H, ·): with ``cu_seqlens`` the time axis holds the tokens of packed sequences, and a
    state's first axis is the packed sequence."""

    def trailing(args, ndim):
        if args.get("cu_seqlens") is None:
            return names
        if "step" in names:
            return tuple("token" if n == "step" else n for n in names)
        return tuple("sequence" if n == "batch" else n for n in names)

    return trailing


def _gate_grad(args, ndim):
    """The gradient of GLA's log-decays: (…, L, Dk) for a gate per key channel, (…, L) for one per step."""
    return ("step", "channel") if np.ndim(args.get("log_g")) == np.ndim(args.get("q")) else ("step",)


def _by_ndim(*layouts):
    """A layout chosen by the quantity's number of axes (a filter's (N,) or (…, N, channels); a 1- or 2-D D)."""
    table = {len(names): names for names in layouts}
    return lambda args, ndim: table.get(ndim, max(layouts, key=len))


_ATT_ROW = ("row",)
#: attention's backward pass: dk and dv are computed key block by key block (FlashAttention-2's outer loop); dq, summed
#: over the key blocks, has no order
_KEY = ("key",)
_STEP, _CHUNK = ("step",), ("chunk",)
#: a backward pass's gradient computed from the adjoint, which runs from the last step back to the first (a kernel's
#: state cotangent dh from the last chunk back): its first entry over the bound is sought from the end. The
#: gradients that read the forward states (dq, dC, dz) are computed in the forward order (_STEP)
_BACK = ("-step",)
_FLA_OUT = ("batch", "step", "head", "channel")
#: ``{function: {quantity: (axis names, leading axes, computation order)}}``: the names of the trailing axes
#: (or a function of the arguments and the number of axes that gives them), the kind of the leading batch axes
#: before them (``"head"``: the last one is the head axis, as in attention's (…, H, N, d); ``"batch_head"``: one
#: is a batch axis, two are (batch, head); ``"batch"``: all batch axes; None: no leading axes), and the axes in
#: the order the quantity is computed (``"-step"``: backwards; the other axes follow in their own order), or None
#: where it has none. Used by :func:`_layout` to name the location of a quantity's largest error.
_LAYOUTS = {
    "attention.softmax_attention": {"A": (("row", "key"), "head", _ATT_ROW), "y": (("row", "column"), "head", _ATT_ROW)},
    "attention.flash_attention": {
        "running_max": (("key_tile", "row"), "head", ("key_tile", "row")),
        "running_sum": (("key_tile", "row"), "head", ("key_tile", "row")),
        "lse": (("row",), "head", _ATT_ROW), "y": (("row", "column"), "head", _ATT_ROW)},
    "attention.softmax_attention_vjp": {
        "lse": (("row",), "head", _ATT_ROW), "D": (("row",), "head", _ATT_ROW), "dq": (("row", "column"), "head", None),
        "dk": (("key", "column"), "head", _KEY), "dv": (("key", "column"), "head", _KEY)},
    "attention.multihead_attention": {"A": (("head", "row", "key"), "batch", _ATT_ROW),
                                      "y": (("row", "column"), "batch", _ATT_ROW)},
    "attention.flash_attn_func": {"out": (("batch", "row", "head", "column"), None, _ATT_ROW),
                                  "softmax_lse": (("batch", "head", "row"), None, _ATT_ROW)},
    "attention.flash_attn_func_vjp": {"dq": (("batch", "row", "head", "column"), None, None),
                                      "dk": (("batch", "key", "head", "column"), None, _KEY),
                                      "dv": (("batch", "key", "head", "column"), None, _KEY)},
    "attention.flash_attn_varlen_func": {"out": (("token", "head", "column"), None, ("token",)),
                                         "softmax_lse": (("head", "token"), None, ("token",))},
    "attention.flash_attn_varlen_func_vjp": {"dq": (("token", "head", "column"), None, None),
                                             "dk": (("key_token", "head", "column"), None, ("key_token",)),
                                             "dv": (("key_token", "head", "column"), None, ("key_token",))},
    "random_features.linear_attention": {"y": (("row", "column"), "head", _ATT_ROW)},
    "random_features.linear_attention_vjp": {n: (("row", "column"), "head", None) for n in ("dq", "dk", "dv")},
    "random_features.performer_attention": {"y": (("row", "column"), "head", _ATT_ROW)},
    "random_features.rfa_attention": {"y": (("row", "column"), "head", _ATT_ROW)},
    "ssm.selective_scan": {"M": (("channel", "step", "source"), "batch", _STEP), "y": (("step", "channel"), "batch", _STEP),
                           "h_last": (("channel", "state"), "batch", None)},
    "ssm.selective_scan_vjp": {"du": (("step", "channel"), "batch", _BACK), "ddelta": (("step", "channel"), "batch", _BACK),
                               "dA": (("channel", "state"), None, None), "dB": (("step", "state"), "batch", _BACK),
                               "dC": (("step", "state"), "batch", _STEP), "dD": (("channel",), None, None)},
    "ssm.selective_scan_fn": {"Delta": (("batch", "channel", "step"), None, _STEP),
                              "out": (("batch", "channel", "step"), None, _STEP),
                              "last_state": (("batch", "channel", "state"), None, None)},
    "ssm.selective_scan_fn_vjp": {
        **{n: (("batch", "channel", "step"), None, _BACK) for n in ("du", "ddelta")},
        "dz": (("batch", "channel", "step"), None, _STEP),
        "dA": (("channel", "state"), None, None), "dD": (("channel",), None, None), "ddelta_bias": (("channel",), None, None),
        **{n: (_by_ndim(("batch", "state", "step"), ("batch", "group", "state", "step")), None, order)
           for n, order in (("dB", _BACK), ("dC", _STEP))}},
    "ssm.ssm_recurrent": {"y": (("step", "channel"), "batch", _STEP)},
    "linear_rnn.ssd": {"chunk_states": (("head", "chunk", "channel", "state"), "batch", _CHUNK),
                       "M": (("head", "step", "source"), "batch", _STEP), "y": (("head", "step", "channel"), "batch", _STEP)},
    "linear_rnn.ssd_vjp": {"dx": (("head", "step", "channel"), "batch", _BACK), "ddt": (("head", "step"), "batch", _BACK),
                           "dA": (("head",), None, None), "dB": (("group", "step", "state"), "batch", _BACK),
                           "dC": (("group", "step", "state"), "batch", _STEP), "dD": (("head",), None, None),
                           "dinitial_state": (("head", "channel", "state"), "batch", None)},
    "linear_rnn.gated_linear_attention": {"chunk_states": (("chunk", "dv", "dk"), "batch_head", _CHUNK),
                                          "y": (("step", "channel"), "batch_head", _STEP)},
    "linear_rnn.gated_linear_attention_vjp": {
        "dq": (("step", "channel"), "batch_head", _STEP),
        **{n: (("step", "channel"), "batch_head", _BACK) for n in ("dk", "dv")},
        "dlog_g": (_gate_grad, "batch_head", _BACK), "dinitial_state": (("dv", "dk"), "batch_head", None)},
    "linear_rnn.retention": {"y": (("head", "step", "channel"), "batch", _STEP)},
    "linear_rnn.retention_vjp": {"dq": (("head", "step", "channel"), "batch", _STEP),
                                 **{n: (("head", "step", "channel"), "batch", _BACK) for n in ("dk", "dv")},
                                 "dinitial_state": (("head", "dv", "dk"), "batch", None)},
    "linear_rnn.delta_rule": {"W": (("chunk", "chunk_step", "dk"), "batch_head", _CHUNK),
                              "TbetaV": (("chunk", "chunk_step", "dv"), "batch_head", _CHUNK),
                              "chunk_states": (("chunk", "dv", "dk"), "batch_head", _CHUNK),
                              "y": (("step", "channel"), "batch_head", _STEP)},
    "linear_rnn.delta_rule_vjp": {"dq": (("step", "channel"), "batch_head", _STEP),
                                  **{n: (("step", "channel"), "batch_head", _BACK) for n in ("dk", "dv")},
                                  "dbeta": (("step",), "batch_head", _BACK), "dlog_g": (("step",), "batch_head", _BACK),
                                  "dinitial_state": (("dv", "dk"), "batch_head", None)},
    "linear_rnn.rls_memory": {"y": (("step", "channel"), "batch_head", _STEP)},
    "linear_rnn.mamba_chunk_scan_combined": {
        "Delta": (("batch", "step", "head"), None, _STEP), "out": (("batch", "step", "head", "channel"), None, _STEP),
        "final_states": (("batch", "head", "channel", "state"), None, None)},
    "linear_rnn.mamba_chunk_scan_combined_vjp": {
        "dx": (("batch", "step", "head", "channel"), None, _BACK), "dz": (("batch", "step", "head", "channel"), None, _STEP),
        "ddt": (("batch", "step", "head"), None, _BACK), "dA": (("head",), None, None), "ddt_bias": (("head",), None, None),
        "dB": (("batch", "step", "group", "state"), None, _BACK), "dC": (("batch", "step", "group", "state"), None, _STEP),
        "dD": (_by_ndim(("head",), ("head", "channel")), None, None),
        "dinitial_states": (("batch", "head", "channel", "state"), None, None)},
    **{f"linear_rnn.{fla}": {"o": (_fla_trailing(_FLA_OUT), None, _STEP),
                             "final_state": (_fla_trailing(("batch", "head", "dk", "dv")), None, None)}
       for fla in ("chunk_gla", "chunk_simple_gla", "chunk_delta_rule", "chunk_gated_delta_rule")},
    **{f"linear_rnn.{fla}_vjp": {
        "dq": (_fla_trailing(_FLA_OUT), None, _STEP),
        **{n: (_fla_trailing(_FLA_OUT), None, _BACK) for n in ("dk", "dv")},
        "dg": (_fla_trailing(_FLA_OUT if fla == "chunk_gla" else _FLA_OUT[:3]), None, _BACK),
        "dbeta": (_fla_trailing(_FLA_OUT[:3]), None, _BACK),
        "dh0": (_fla_trailing(("batch", "head", "dk", "dv")), None, None)}
       for fla in ("chunk_gla", "chunk_simple_gla", "chunk_delta_rule", "chunk_gated_delta_rule")},
    **{f"kalman.{f}": {"m": (("step", "state"), None, _STEP), "P": (("step", "row", "column"), None, _STEP)}
       for f in ("kalman_filter", "kalman_filter_scan")},
    **{f"kalman.{f}": {"m": (("step", "state"), None, ("-step",)), "P": (("step", "row", "column"), None, ("-step",))}
       for f in ("rts_smoother", "rts_smoother_scan")},
    "kalman.batch_smoother": {"m": (("step", "state"), None, None), "P": (("step", "row", "column"), None, None)},
    **{f"iir.{f}": {"y": (_by_ndim(("step",), ("step", "channel")), "batch", _STEP)}
       for f in ("biquad_filter", "tf_filter", "sos_filter", "diagonal_ssm_filter")},
}


def _lead_names(k: int, kind) -> tuple:
    """Names of ``k`` leading batch axes of the kind ``kind`` (see :data:`_LAYOUTS`)."""
    if k <= 0:
        return ()
    if kind == "head" or (kind == "batch_head" and k >= 2):
        return (("batch",) if k == 2 else tuple(f"batch{i}" for i in range(k - 1)))[: k - 1] + ("head",)
    return ("batch",) if k == 1 else tuple(f"batch{i}" for i in range(k))


@dataclass(frozen=True)
class _Layout:
    """The named axes of one quantity (:func:`_layout`): ``names`` one per axis, ``order`` the axes in the order of
    computation (or None), ``backwards`` those computed last to first, ``derive`` per axis a function of its index
    giving the positions derived from it (``[(name, index), …]``, put before the axis)."""

    names: tuple
    order: tuple | None = None
    backwards: frozenset = frozenset()
    derive: dict = field(default_factory=dict)

    def named(self, index, axes=None) -> dict:
        """``{axis name: index}`` of ``index``, the axes in the order ``axes`` (default: their own)."""
        out = {}
        for ax in range(len(index)) if axes is None else axes:
            i = int(index[ax])
            for name, value in self.derive.get(ax, lambda i: [])(i):
                out.setdefault(name, int(value))
            out[self.names[ax]] = i
        return out


def _packed(cu, inner: str, chunk: int = 0):
    """Derived positions of a packed token: its ``sequence`` (``cu_seqlens``), its index ``inner`` in it and, with
    ``chunk``, the chunk of that index."""
    cu = np.asarray(cu).astype(np.int64).reshape(-1)

    def derive(i):
        s = int(np.searchsorted(cu, i, side="right") - 1)
        if not 0 <= s < cu.size - 1:
            return []
        j = i - int(cu[s])
        return [("sequence", s)] + ([("chunk", j // chunk)] if chunk else []) + [(inner, j)]

    return derive


def _layout(function: str, name: str, ndim: int, args: dict) -> _Layout:
    """The :class:`_Layout` of quantity ``name`` of ``function`` with ``ndim`` axes (``axis0``, ``axis1``, … where
    the layout is not known or does not fit)."""
    generic = _Layout(tuple(f"axis{i}" for i in range(ndim)))
    table = _LAYOUTS.get(function, {})
    spec = table.get("y" if function == "iir.sos_filter" and name.startswith("section") else name)  # a section's output
    if spec is None or ndim == 0:
        return generic
    trailing, lead, order = spec
    a = {k: v for k, v in args.items() if v is not None}
    try:
        trailing = tuple(trailing(a, ndim) if callable(trailing) else trailing)
    except Exception:  # noqa: BLE001 — arguments refimpl would reject: no names
        return generic
    k = ndim - len(trailing)
    if k < 0 or (k > 0 and lead is None):
        return generic
    names = _lead_names(k, lead) + trailing
    if len(set(names)) != len(names):
        return generic
    axes = None
    backwards = set()
    if order is not None:
        first = []
        for n in order:
            base = n.lstrip("-")
            if base == "step" and "step" not in names and "token" in names:  # packed sequences: tokens in order
                base = "token"
            ax = names.index(base) if base in names else None
            if ax is not None:
                first.append(ax)
                if n.startswith("-"):
                    backwards.add(ax)
        if first:
            axes = tuple(first) + tuple(ax for ax in range(ndim) if ax not in first)
    derive = {}
    fn = function.removesuffix("_vjp")
    chunk = None
    if fn in ("linear_rnn.ssd", "linear_rnn.gated_linear_attention", "linear_rnn.retention", "linear_rnn.delta_rule"):
        chunk = a.get("chunk_size", 64)
    elif fn == "linear_rnn.mamba_chunk_scan_combined":
        chunk = a.get("chunk_size")
    elif fn.startswith("linear_rnn.chunk_"):
        chunk = FLA_CHUNK
    for ax, n in enumerate(names):
        if n == "step" and chunk:
            c = int(chunk)
            derive[ax] = lambda i, c=c: [("chunk", i // c)]
        elif n == "token" and fn.startswith("linear_rnn.chunk_") and a.get("cu_seqlens") is not None:
            derive[ax] = _packed(a["cu_seqlens"], "step", FLA_CHUNK)
        elif n == "token" and a.get("cu_seqlens_q") is not None:
            derive[ax] = _packed(a["cu_seqlens_q"], "row")
        elif n == "key_token" and a.get("cu_seqlens_k") is not None:
            derive[ax] = _packed(a["cu_seqlens_k"], "key")
        elif n == "row" and function == "attention.flash_attention" and a.get("block_q"):
            b = int(a["block_q"])
            derive[ax] = lambda i, b=b: [("query_tile", i // b)]
    return _Layout(names, axes, frozenset(backwards), derive)


def _entry_errors(actual, desired) -> np.ndarray:
    """``|actual − desired|`` entry by entry as :func:`refimpl._testing.max_abs_error` counts it: 0 where both agree
    (equal infinities, both NaN), ∞ where one is NaN or infinite and the other is not."""
    a, d = np.asarray(actual), np.asarray(desired)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a - d).astype(np.float64, copy=False)
        bad = ~np.isfinite(diff)
        if bad.any():
            same = (a == d) | (np.isnan(a) & np.isnan(d))
            diff[bad] = np.where(same[bad], 0.0, np.inf)
    return diff


def _locate(diff, threshold, layout: _Layout | None):
    """``(worst, worst_index, first_over, first_over_index)`` of the entry errors ``diff`` (−∞ where not compared):
    the largest, and the first in the order of computation above ``threshold``."""
    if layout is None or diff.ndim == 0 or diff.size == 0:
        return None, None, None, None
    flat = int(np.argmax(diff))
    if not diff.flat[flat] > -np.inf:  # nothing compared
        return None, None, None, None
    worst = tuple(int(i) for i in np.unravel_index(flat, diff.shape))
    first = None
    if layout.order is not None and threshold is not None and np.isfinite(threshold):
        over = np.transpose(diff > threshold, layout.order)
        for j, ax in enumerate(layout.order):
            if ax in layout.backwards:
                over = np.flip(over, axis=j)
        i = int(np.argmax(over.reshape(-1)))
        if over.reshape(-1)[i]:
            at = np.unravel_index(i, over.shape)
            index = [0] * diff.ndim
            for j, ax in enumerate(layout.order):
                index[ax] = int(diff.shape[ax] - 1 - at[j]) if ax in layout.backwards else int(at[j])
            first = tuple(index)
    return (layout.named(worst), worst, None if first is None else layout.named(first, layout.order),
            first)


def _scale(desired) -> float:
    """The scale of :func:`refimpl._testing.rel_error`: the largest finite ``|desired|``, or 1 (then errors are absolute)."""
    d = np.abs(np.asarray(desired))
    d = d[np.isfinite(d)]
    top = float(d.max()) if d.size else 0.0
    return top if top > 0 else 1.0


def _sequence_mask(seq, shape, where) -> np.ndarray:
    """The entries of sequence ``where`` (an index into S) of a quantity of ``shape`` laid out by sequences
    (:meth:`_Floors.sequences`)."""
    move, S, _, cu = seq
    mask = np.zeros(shape, bool)
    if move and cu is not None:  # packed (1, T, H, ·): sequence i's tokens of head h
        i, h = where
        mask[0, cu[i]:cu[i + 1], h] = True
    elif move:  # (b, l, h, ·): batch entry b, head h
        mask[(where[0], slice(None), *where[1:])] = True
    else:
        mask[tuple(where)] = True
    return mask


def _sequence_names(seq, layout: _Layout | None, where) -> dict:
    """``{axis name: index}`` of sequence ``where`` (batch entry × head)."""
    move, S, _, cu = seq
    if cu is not None:
        names = ("sequence", "head")
    elif layout is None:
        names = tuple(f"axis{i}" for i in range(len(S)))
    else:
        names = (layout.names[0],) + layout.names[2:len(S) + 1] if move else layout.names[:len(S)]
    if len(names) != len(where) or any(n.startswith("axis") for n in names):
        names = tuple(f"sequence_axis{i}" for i in range(len(where)))
    return {n: int(i) for n, i in zip(names, where)}


#: quantities that kernels keep in float32 in every tier: FlashAttention's log-sum-exp (its forward
#: pass writes ℓ in float32 whatever the inputs' dtype, and the backward pass reads it back) and the
#: backward pass's D (``softmax_d``)
FLOAT32_QUANTITIES = {"attention.flash_attention": ("lse",), "attention.softmax_attention_vjp": ("lse", "D"),
                      "attention.flash_attn_func": ("softmax_lse",), "attention.flash_attn_varlen_func": ("softmax_lse",)}


def _judged_tier(function: str, name: str, value, tier: str) -> str:
    """The tier a returned quantity is judged in: float32 for one of :data:`FLOAT32_QUANTITIES`
    returned in float32 (not every value on the tier's grid), else ``tier``.

    Rounded to bfloat16 before judging, a float32 log-sum-exp off by 0.05 nats passed the forward
    check (the tier's bound, 2ε relative, is 0.125 nats at ℓ = 8); a kernel that does store ℓ in
    the tier is judged in the tier, as before."""
    if tier in ("float64", "float32", "tf32") or name not in FLOAT32_QUANTITIES.get(function, ()):
        return tier
    try:
        arr = np.asarray(value)
        if arr.dtype.kind != "f" or arr.dtype == np.float16:
            return tier
        with np.errstate(over="ignore", invalid="ignore"):
            on_grid = np.array_equal(np.asarray(round_to(arr, tier), dtype=np.float64), arr.astype(np.float64),
                                     equal_nan=True)
    except (TypeError, ValueError):
        return tier
    return tier if on_grid else "float32"


class _NotAnArray:
    """A returned value that could not be converted to an array, with the reason (:func:`_to_array`)."""

    def __init__(self, reason: str):
        self.reason = reason


def _to_array(value):
    """A returned value as a NumPy array, or :class:`_NotAnArray` with the original exception's text.

    Accepted: arrays and anything ``numpy.asarray`` converts (``__array__``: JAX arrays, CuPy … where they allow it),
    and tensors: an object with ``.detach()`` (PyTorch; a tensor that requires grad) is detached, moved with ``.cpu()``
    and converted with ``.numpy()``; one whose dtype NumPy lacks (bfloat16) is upcast with ``.float()`` first, an
    exact conversion. An object with ``.numpy()`` alone (TensorFlow) is converted with it."""
    if isinstance(value, (np.ndarray, np.generic, list, tuple, int, float, complex, bool)) or value is None:
        try:
            return np.asarray(value)
        except Exception as exc:  # noqa: BLE001 — e.g. a ragged list
            return _NotAnArray(f"{type(exc).__name__}: {exc}")
    try:
        if callable(getattr(value, "detach", None)):
            value = value.detach()
        if callable(getattr(value, "cpu", None)):
            value = value.cpu()
        if callable(getattr(value, "numpy", None)):
            try:
                value = value.numpy()
            except TypeError:  # e.g. PyTorch's bfloat16, which NumPy lacks: upcast (exactly) to float32
                if not callable(getattr(value, "float", None)):
                    raise
                value = value.float().numpy()
        return np.asarray(value)
    except Exception as exc:  # noqa: BLE001 — the callable's value: reported, with the original text
        return _NotAnArray(f"{type(exc).__name__}: {exc}")


def _judge(name, kind, got, want, *, dtype, rtol, atol, plain, ulps, model="", floor=0.0, seq=None,
           exact=None, layout=None) -> QuantityReport:
    """Judge one returned quantity (Eqs. (15.1)–(15.3) of the book); with ``layout`` (:func:`_layout`) also locate
    its largest error and the first entry over the bound (``QuantityReport.worst``, ``first_over``)."""
    want = np.asarray(want)
    arr = got if isinstance(got, (np.ndarray, _NotAnArray)) else _to_array(got)
    if isinstance(arr, _NotAnArray):
        return QuantityReport(name, kind, False, message=f"not an array ({arr.reason})")
    if arr.dtype.hasobject or arr.dtype.kind not in "biufc":
        return QuantityReport(name, kind, False, message=f"dtype {arr.dtype} is not numeric")
    if arr.shape != want.shape:
        return QuantityReport(name, kind, False, message=f"shape {arr.shape} != expected {want.shape}")
    if want.dtype.kind == "c" and arr.dtype.kind != "c":
        return QuantityReport(name, kind, False, message=f"dtype {arr.dtype} is real, expected complex")
    if want.dtype.kind != "c" and arr.dtype.kind == "c":
        return QuantityReport(name, kind, False, message=f"dtype {arr.dtype} is complex, expected real")
    arr64 = arr.astype(np.complex128 if arr.dtype.kind == "c" else np.float64)
    full_shape = want.shape
    care = None
    if kind == "intermediate":  # NaN in an oracle intermediate: a pair outside the computation, not compared
        care = ~np.isnan(want)
        if care.all():
            care = None

    def located(report, diff, threshold, within=None):
        """``report`` with the location of its largest error and the first entry over ``threshold`` (``diff``:
        the errors of the compared entries, in their order; ``within``: only these entries of the full shape)."""
        if layout is None:
            return report
        if care is None:
            full = diff  # a fresh array: changed in place below
        else:
            full = np.full(full_shape, -np.inf)
            full[care] = diff
        if within is not None:
            full[~within] = -np.inf
        w, wi, f, fi = _locate(full, threshold, layout)
        return dataclasses.replace(report, worst=w, worst_index=wi, first_over=f, first_over_index=fi)

    if dtype == "float64":
        if care is not None:
            arr64, want = arr64[care], want[care]
        e_abs, e_rel = max_abs_error(arr64, want), _rel_error(arr64, want)
        report = QuantityReport(name, kind, bool(e_rel <= rtol or e_abs <= atol), e_abs, e_rel, rtol, atol=atol)
        return located(report, _entry_errors(arr64, want), max(rtol * _scale(want), atol))
    with np.errstate(over="ignore", invalid="ignore"):
        # the user's values on the tier's storage grid (a no-op for a kernel that returns the dtype)
        arr64 = np.asarray(_round(arr64, dtype)).astype(want.dtype)
        rounded = np.asarray(_round(plain, dtype)).astype(want.dtype)
    if care is not None:
        if rounded.shape != full_shape:
            return QuantityReport(name, kind, False, message=f"plain reference has shape {rounded.shape}, expected {want.shape}")
        arr64, want, rounded = arr64[care], want[care], rounded[care]
    if rounded.shape != want.shape:
        return QuantityReport(name, kind, False, message=f"plain reference has shape {rounded.shape}, expected {want.shape}")
    e_plain = _rel_error(rounded, want)
    if not np.isfinite(e_plain):
        # The plain reference overflows the dtype in some entries (the answer itself may, or only the plain
        # algorithm's intermediates, e.g. float16 logits of order 1e5). There the kernel may overflow alike
        # (the same inf or NaN), or return a finite value where the answer is representable — judged with the
        # other entries; the plain reference's finite entries give the bound of the ratio rule.
        fin = np.isfinite(rounded)
        with np.errstate(over="ignore", invalid="ignore"):
            representable = np.isfinite(np.asarray(_round(want, dtype)))
        alike = (arr64 == rounded) | (np.isnan(arr64) & np.isnan(rounded))
        finite_instead = np.isfinite(arr64) & representable
        same = bool(np.all((alike | finite_instead)[~fin]))
        judged = fin | (finite_instead & ~alike)
        e_plain = _rel_error(rounded[fin], want[fin])
        e_abs, e_rel = max_abs_error(arr64[judged], want[judged]), _rel_error(arr64[judged], want[judged])
        ok, bound = low_precision_verdict(e_rel, e_plain, dtype, ulps, floor=floor)
        msg = f"{int((~fin).sum())} entries overflow {dtype} in the plain reference" + (
            "" if same else ", but not alike in the returned values")
        if same and (judged & ~fin).any():
            msg += f" ({int((judged & ~fin).sum())} returned finite: judged)"
        report = QuantityReport(name, kind, same and ok, e_abs, e_rel, bound, e_plain, msg, model, floor)
        if layout is None:
            return report
        diff = np.where(judged, _entry_errors(arr64, want), -np.inf)
        diff[~fin & ~(alike | finite_instead)] = np.inf  # not alike where the plain reference overflows: wrong
        return located(report, diff, bound * _scale(want[judged]))
    e_abs, e_rel = max_abs_error(arr64, want), _rel_error(arr64, want)
    ok, bound = low_precision_verdict(e_rel, e_plain, dtype, ulps, floor=floor)

    def exact_rounded():  # refimpl in float64 on the rounded inputs, its value of this quantity rounded to the tier
        value = exact(name) if exact is not None else None
        if value is None:
            return None
        with np.errstate(over="ignore", invalid="ignore"):
            return np.asarray(_round(value, dtype)).astype(want.dtype)

    by_sequence = seq and care is None and arr64.shape == want.shape
    one_by_one = _per_sequence(arr64, rounded, want, dtype, ulps, seq, exact_rounded) if ok and by_sequence else None
    if one_by_one and not one_by_one[0]:  # the whole passes, a sequence does not: report that sequence
        _, e_rel, bound, e_plain, floor, message, where = one_by_one
        report = QuantityReport(name, kind, False, e_abs, e_rel, bound, e_plain, message, model, floor,
                                worst_sequence=_sequence_names(seq, layout, where))
        mask = _sequence_mask(seq, want.shape, where)
        return located(report, _entry_errors(arr64, want), bound * _scale(want[mask]), within=mask)
    report = QuantityReport(name, kind, ok, e_abs, e_rel, bound, e_plain, "", model, floor)
    if not ok and by_sequence and layout is not None:  # name the worst sequence of a failing quantity too
        named = _per_sequence(arr64, rounded, want, dtype, ulps, seq)
        if named is not None:
            report = dataclasses.replace(report, worst_sequence=_sequence_names(seq, layout, named[-1]))
    return located(report, _entry_errors(arr64, want), bound * _scale(want))


def _load_from(vectors, case: Case) -> tuple:
    try:
        g = load_case(vectors, case.name)
    except ValueError as exc:
        if "no case" not in str(exc):
            raise
        raise ValueError(f"vectors: {exc}; compare(vectors=...) runs the registered cases of the function (choose them "
                         "with cases=...). A case of random_case (vectors export --random) is compared with "
                         "inputs=random_inputs(name, seed=..., **sizes), the seed and sizes its manifest records") from None
    return g.arguments, {**g.intermediates, **g.outputs}, g


def _stored_plain(g, tier, oracle) -> tuple | None:
    """A version-2 file's plain references of ``tier`` for every quantity (None if not stored)."""
    qs = g.entry.get("low_precision", {}).get(tier)
    if not qs or "undefined" in qs or not all(k in g.plain.get(tier, {}) for k in oracle if np.asarray(oracle[k]).dtype.kind in "fc"):
        return None
    return dict(g.plain[tier]), {k: q["model"] + " (stored)" for k, q in qs.items()}


def plain_functions() -> list:
    """The functions whose low-precision verdict (Eq. (15.3)) uses a plain reference run in the tier.

    The others use the rounded-input model (module docstring); ``QuantityReport.model`` says
    which one judged each quantity.

    Examples
    --------
    >>> "ssm.selective_scan" in plain_functions(), "lyapunov.phi1" in plain_functions()
    (True, False)
    """
    return sorted(PLAIN)


def _call_params(function: str) -> tuple:
    """``(names, required, defaults)`` of the keywords a callable of ``function`` receives.

    Read from the ``call`` text of the manifest (``fn(a, b, [zi], form) -> …``): bracketed names
    are optional; a name of the refimpl function's signature is optional if it has a default
    there (the default is then what the oracle uses when it is not given).
    """
    import inspect
    import re

    from ._golden._base import resolve

    call = FUNCTIONS[function].call
    inner = re.match(r"\s*fn\((.*?)\)", call)
    items = [p.strip() for p in inner.group(1).split(",") if p.strip()] if inner else []
    try:
        sig = inspect.signature(resolve(function)).parameters
    except (AttributeError, ImportError, ValueError, TypeError):
        sig = {}
    names, required, defaults = [], set(), {}
    for item in items:
        optional = item.startswith("[")
        nm = item.strip("[]").strip()
        names.append(nm)
        p = sig.get(nm)
        if p is not None and p.default is not inspect.Parameter.empty:
            defaults[nm] = p.default
        elif not optional:
            required.add(nm)
    return names, required, defaults


def _input_cases(function: str, inputs) -> list:
    """:class:`Case` records for user-given keyword dicts (``ValueError``/``TypeError`` on bad ones)."""
    if isinstance(inputs, dict):
        inputs = [inputs]
    try:
        inputs = list(inputs)
    except TypeError:
        raise TypeError(f"inputs: expected a dict or a list of dicts, got {type(inputs).__name__}") from None
    if not inputs:
        raise ValueError("inputs: empty list")
    names, required, defaults = _call_params(function)
    out = []
    for i, inp in enumerate(inputs):
        if not isinstance(inp, dict):
            raise TypeError(f"inputs[{i}]: expected a dict of keyword arguments, got {type(inp).__name__}")
        extra = sorted(k for k in inp if k not in names)
        missing = sorted(k for k in required if k not in inp)
        if extra or missing:
            raise ValueError(f"inputs[{i}]: " + "; ".join(
                ([f"unknown keys {extra}"] if extra else []) + ([f"missing keys {missing}"] if missing else []))
                + f" (the call is {FUNCTIONS[function].call})")
        given = dict(inp)
        # outputs=(): the outputs of a user's case are those refimpl produces for its arguments (zf only
        # with zi, dlog_g only with log_g, b and a for output="ba"), named after the reference run
        out.append((Case(f"{function}/inputs[{i}]", -1, lambda rng, a=given: dict(a), "user inputs", intermediates=False,
                         outputs=()), defaults))
    return out


#: the conversions of a matrix product's float32 inputs to TF32 whose plain references the tf32 tier takes the worse
#: of, quantity by quantity (:func:`_plain_stages`): to nearest even, and truncation (the low 13 bits dropped)
TF32_ROUNDINGS = ("rne", "truncate")


def _plain_error(value, want, tier: str) -> float:
    """The norm-wise relative error (Eq. (15.1)) of a plain reference ``value``, stored in ``tier``, against the
    float64 ``want``, as :func:`_judge` measures it: NaN entries of ``want`` (pairs outside the computation) and
    entries where the plain reference is not finite left out; NaN if nothing is left."""
    want = np.asarray(want)
    with np.errstate(over="ignore", invalid="ignore"):
        v = np.asarray(_round(value, tier))
    if want.dtype.kind not in "fc" or v.shape != want.shape:
        return float("nan")
    v = v.astype(want.dtype)
    keep = np.isfinite(v) & (~np.isnan(want) if want.dtype.kind == "f" else True)
    return float(_rel_error(v[keep], want[keep])) if keep.any() else float("nan")


def _plain_stages(case: Case, args: dict, tier: str, needed, want=None):
    """:func:`_plain` in two stages, each ``({name: value}, {name: model})``: first the quantities the plain algorithm
    of :mod:`refimpl._lowprec` returns (run in the tier), then the others (the rounded-input model, one float64 run of
    refimpl). A generator: the second stage is computed only when asked for (:func:`_meets` stops at a failure).

    In the tf32 tier the plain algorithm runs twice, its matrix products' inputs converted to TF32 by rounding to
    nearest even and by truncation (:data:`TF32_ROUNDINGS`, :func:`refimpl._precision.tf32_rounding`), and each
    quantity takes the run whose error against ``want`` (its float64 value, required there) is larger, named in
    its model (``"plain tf32 (truncate)"``): kernels convert either way, and a truncating kernel's error is
    about twice a rounding one's (the bias of truncation does not average out), so the bound of Eq. (15.3) covers
    both. The rounded-input model has no matrix products of its own: its tf32 value is refimpl on the float32
    inputs."""
    values, models = {}, {}
    fn = PLAIN.get(case.function)
    if fn is not None:
        # an option left at refimpl's default does not change the computation: the plain algorithm
        # need not model it (e.g. causal_alignment="top_left" or grouped_heads=False)
        defaults = _call_params(case.function)[2]
        modelled = {k: v for k, v in args.items() if not (k in defaults and _same_default(v, defaults[k]))}

        def run():
            try:
                with np.errstate(all="ignore"):
                    return (fn(modelled, tier, needed=tuple(needed)) if "needed" in inspect.signature(fn).parameters
                            else fn(modelled, tier))
            except NotImplementedError:
                return {}

        if tier != "tf32":
            got = run()
            for k in needed:
                if k in got:
                    values[k], models[k] = got[k], f"plain {tier}"
        else:
            if want is None:
                raise ValueError("want: the float64 values of the quantities are needed to choose the tf32 plain reference")
            runs = {}
            for mode in TF32_ROUNDINGS:
                with tf32_rounding(mode):
                    runs[mode] = run()
            for k in needed:
                have = [m for m in TF32_ROUNDINGS if k in runs[m]]
                if not have:
                    continue
                errors = {m: _plain_error(runs[m][k], want[k], tier) if k in want else float("nan") for m in have}
                worst = max(have, key=lambda m: errors[m] if np.isfinite(errors[m]) else -np.inf)  # ties: the first
                values[k], models[k] = runs[worst][k], f"plain {tier} ({worst})"
        yield values, models
    rest = [k for k in needed if k not in values]
    if rest:
        mid = any(k not in case.output_names() for k in rest)  # an intermediate such as FlashAttention's lse
        with np.errstate(all="ignore"):
            _, fallback = compute(dataclasses.replace(case, intermediates=case.intermediates or mid),
                                  args=case.constrain(args) if case.constrain else args)
        yield {k: fallback[k] for k in rest}, dict.fromkeys(rest, "rounded inputs")


def _plain(case: Case, args: dict, tier: str, needed, want=None) -> tuple:
    """The plain references of ``needed`` quantities in ``tier``: ``({name: value}, {name: model})``.

    ``args`` are the arguments rounded to the tier. Quantities a plain algorithm of
    :mod:`refimpl._lowprec` returns are run in the tier; the others are refimpl on the rounded
    inputs, evaluated in float64 (the rounded-input model). ``want``: the float64 values of the
    quantities, needed in the tf32 tier (:func:`_plain_stages`).
    """
    values, models = {}, {}
    for v, m in _plain_stages(case, args, tier, needed, want):
        values.update(v)
        models.update(m)
    return values, models


def _same_default(value, default) -> bool:
    """Whether an argument's value is its default (scalars and strings only; arrays are never defaults)."""
    if value is default:
        return True
    plain = (str, bool, int, float)
    return isinstance(value, plain) and type(value) is type(default) and value == default


#: a coarser tier is only "met" if its plain reference keeps at least one correct digit there
MEETS_MAX_PLAIN_ERROR = 0.1


def _beyond_every_bound(got, want, kind: str, tier: str, ulps: float, floor: float) -> bool:
    """Whether the returned values' error in ``tier`` exceeds every bound a met tier can have: a tier is met only if
    its plain error is at most :data:`MEETS_MAX_PLAIN_ERROR`, so its bound (Eq. (15.3)) is at most
    ``2 max(MEETS_MAX_PLAIN_ERROR, ulps ε_tier, floor)``. Measured on entries :func:`_judge` always judges
    (returned finite, answer representable in the tier), against a scale at least the judged one: never above the
    judged error, so True only where the tier cannot be met, without running its plain reference."""
    try:
        arr, want = np.asarray(got), np.asarray(want)
        if (arr.shape != want.shape or arr.dtype.kind not in "biufc" or want.dtype.kind not in "fc"
                or (arr.dtype.kind == "c") != (want.dtype.kind == "c")):
            return False
        with np.errstate(over="ignore", invalid="ignore"):
            a = np.asarray(_round(arr.astype(want.dtype), tier)).astype(want.dtype)
            representable = np.isfinite(np.asarray(_round(want, tier)))
        care = ~np.isnan(want) if kind == "intermediate" else np.ones(want.shape, bool)
        use = care & np.isfinite(a) & representable
        if not use.any() or not np.max(np.abs(want[use])) > 0:
            return False
        top = np.abs(want[care])
        top = float(np.max(top[np.isfinite(top)]))
        error = float(np.max(np.abs(a[use] - want[use]))) / top
        return error > RATIO_RULE_FACTOR * max(MEETS_MAX_PLAIN_ERROR, ulps * tier_eps(tier), floor)
    except Exception:  # noqa: BLE001 — when in doubt, the tier is judged in full
        return False


def _meets(case, args, oracle, mapped, tier, defaults, *, floor_of=None, skip=False, first=()) -> str | None:
    """The finest tier at or below ``tier`` whose verdict the returned values ``mapped`` meet.

    Tiers whose plain reference is off by more than :data:`MEETS_MAX_PLAIN_ERROR` (a filter near
    the unit circle in float16) are not counted: their verdict would accept anything.

    The same verdicts as judging every quantity in every tier, at less cost: ``skip`` leaves out ``tier`` itself
    (the caller's comparison judged it, with the same plain reference, and failed); a tier whose error is beyond
    every bound it could have is left out unrun (:func:`_beyond_every_bound`); in a tier the quantities are judged
    ``first`` ones first (those that failed), each stage of the plain reference (:func:`_plain_stages`) only if
    the quantities of the previous one passed, and the first failure ends the tier. ``floor_of``: the decay floor
    of each quantity (the same in every tier), if known.
    """
    names = [q for q in oracle if q in mapped]
    order = [q for q in first if q in names] + [q for q in names if q not in first]
    outs = case.output_names()
    for t in ladder(tier) if skip else (tier,) + ladder(tier):
        try:
            rounded = {k: _round(v, t) for k, v in args.items() if v is not None}
        except Exception:  # noqa: BLE001
            continue
        tiers = {q: _judged_tier(case.function, q, mapped[q], t) for q in names}
        if floor_of is None or any(q not in floor_of for q in names):
            low = _Floors(case.function, args, tier=t)
            floor_of = {q: low(q, oracle[q]) for q in names}
        if any(_beyond_every_bound(mapped[q], oracle[q], "output" if q in outs else "intermediate", tiers[q],
                                   max(PLAIN_ULPS[tiers[q]], case.ulps), floor_of[q]) for q in order):
            continue
        sequences = _Floors(case.function, args, low=False, tier=t)  # only the float32 tier judges sequences
        on_rounded = _OnRounded(case, {**defaults, **rounded})
        stages = _plain_stages(case, {**defaults, **rounded}, t, names, oracle)
        met = True
        while met:
            try:
                plain, models = next(stages)
            except StopIteration:
                break
            except Exception:  # noqa: BLE001 — refimpl cannot evaluate the inputs rounded to this tier
                met = False
                break
            for q in [q for q in order if q in plain]:
                jt = tiers[q]
                j = _judge(q, "output" if q in outs else "intermediate", mapped[q], oracle[q], dtype=jt,
                           rtol=case.rtol, atol=case.atol, plain=plain[q],
                           ulps=PLAIN_ULPS[jt] if models[q].startswith("plain") else case.ulps,
                           floor=floor_of[q], seq=sequences.sequences(q), exact=on_rounded)
                if not (j.passed and j.plain_error is not None and j.plain_error <= MEETS_MAX_PLAIN_ERROR):
                    met = False
                    break
        if met:
            return t
    return None


def rel_error(actual, desired) -> float:
    r"""The norm-wise relative error of Eq. (15.1) of the book: ``max|actual − desired| / max|desired|``.

    The measure of every verdict of :func:`compare`, for a kernel author's own checks. The scale is
    the largest *finite* ``|desired|``; an infinite entry of ``desired`` (the log-sum-exp of an
    attention row that sees no key) must be matched exactly, else the error is ∞. If ``desired`` has
    no nonzero finite entry, the absolute error is returned.

    Parameters
    ----------
    actual : array_like
        The values under test: real or complex, finite or ±∞ (not NaN).
    desired : array_like, the shape of ``actual``
        The reference: real or complex, not NaN.

    Returns
    -------
    float

    Examples
    --------
    >>> rel_error([1.0, 2.5], [1.0, 2.0])  # 0.5 / 2
    0.25
    >>> rel_error([0.5, -np.inf], [0.5, -np.inf])  # an infinite entry matched exactly
    0.0
    """
    a = as_array(actual, "actual", finite=False)
    d = as_array(desired, "desired", finite=False)
    for arr, label in ((a, "actual"), (d, "desired")):
        if np.isnan(arr).any():
            raise ValueError(f"{label}: expected no NaN (NaN has no error), got {int(np.isnan(arr).sum())} NaN entries")
    if a.shape != d.shape:
        raise ValueError(f"actual: expected the shape of desired {d.shape}, got shape {a.shape}")
    with np.errstate(invalid="ignore"):  # inf − inf of matched infinite entries: max_abs_error treats them as equal
        return float(_rel_error(a, d))


def _head_first_hint(function: str, args: dict) -> str:
    """For a failed case of an interface whose layout puts the sequence before the heads (mamba_ssm's, fla's,
    flash_attn_func's (batch, seqlen, heads, dim)): a note when the inputs read as fewer steps than heads (but more
    than one, as in decoding), the shape of tensors passed head first (batch, heads, seqlen, dim) by mistake; ""
    otherwise. Such inputs are consistent with each other, so nothing is refused: refimpl runs the recurrence or the
    attention over the heads' axis."""
    base = function.removesuffix("_vjp")
    if base in _OFFICIAL:
        name = "x" if base == "linear_rnn.mamba_chunk_scan_combined" else "q"
    elif base == "attention.flash_attn_func":
        name = "q"
    else:
        return ""
    shape = np.shape(args.get(name))
    if len(shape) != 4 or not 1 < shape[1] < shape[2]:
        return ""
    return (f"{name} {tuple(shape)} reads as {shape[1]} steps of {shape[2]} heads ({_layout_names(base)}, the sequence "
            f"before the heads); tensors passed head first (batch, heads, seqlen, dim) would read so: swap axes 1 and 2")


def _layout_names(base: str) -> str:
    return {"linear_rnn.mamba_chunk_scan_combined": "mamba_ssm's layout (batch, seqlen, nheads, headdim)",
            "attention.flash_attn_func": "FlashAttention's layout (batch, seqlen, nheads, headdim)"}.get(
        base, "fla's layout (B, T, H, K)")


def compare(name, fn, *, dtype="float64", cases=None, inputs=None, vectors=None) -> CompareReport:
    r"""Run a user's implementation on golden cases, or on given inputs, of ``name`` and judge it.

    Implements the acceptance rules Eqs. (15.1)–(15.3) of the book (norm-wise errors, float64
    bounds, and the ratio rule of FlashAttention's tests for low precision; see the module
    docstring).

    Parameters
    ----------
    name : str
        A registered function, ``"module.function"`` (e.g. ``"afa.isotropic_afa"``) or the bare
        function name when unique; see :func:`function_names`.
    fn : callable
        Called once per case with the case's arguments as keywords (the ``call`` column of the
        manifest; e.g. ``fn(q=…, k=…, v=…, causal=…)``). Floating arrays are rounded to the
        tier's storage format (float16 as ``numpy.float16``; bfloat16 values carried in float32;
        tf32 stores float32; complex part-wise, complex float16 carried as complex64); floating
        scalars (a scale, a soft cap) are rounded to the tier's grid and passed as Python floats,
        as kernels take such options; integers, booleans and strings are passed unchanged. The
        callable is not told the tier (close over it), and gets every argument of the case:
        ``attention.flash_attention``'s includes the tiles ``block_q``, ``block_k``; a backward
        pass (``…_vjp``) gets the forward inputs and the output's cotangent, not the forward's
        output or log-sum-exp, so a kernel's backward runs its own forward first. It returns the output (one array), the
        outputs as a tuple in refimpl's order, or a dict of named outputs and any of the case's
        intermediates (``P``, ``R2``, ``d2``, ``A`` … — see ``case_names`` and the manifest), which
        are then checked too, in the order of computation, so that the first failing one
        localizes a bug. Optional outputs, marked ``[, name]`` in the ``call`` — those refimpl returns only
        on request (the last state of ``ssm.selective_scan``, ``return_last_state``; the final state of the
        official chunked interfaces) and the gradients of optional inputs (``dh0`` of ``initial_state``,
        ``dD``, ``dz``, ``ddt_bias``, ``dinitial_states`` of mamba_ssm's ``D``, ``z``, ``dt_bias``,
        ``initial_states`` …) — may be left out (from the end of a tuple, or from a dict) or returned as
        None: they are then reported as not returned and not judged; returned, they are judged. A required
        output returned as None fails ("returned None for dg, a required output"). Only the judged
        quantities count for ``meets``.

        The returned values may be NumPy arrays or any array-like: an object with ``__array__``
        (JAX arrays, …) or ``.numpy()``, and tensors — an object with ``.detach()`` (a PyTorch tensor,
        one that requires grad or lives on a GPU included) is converted with
        ``.detach().cpu().numpy()``, a bfloat16 tensor, which NumPy cannot hold, upcast exactly with
        ``.float()`` first. A value that cannot be converted fails its quantity with the original
        exception's text.

        A callable that does not support a registered case — an option (a mask, a window, ALiBi …)
        or a size its kernel lacks — raises ``NotImplementedError``: the case is reported as
        ``"skipped"`` with the exception's text, and neither passes nor fails the report; a report
        whose cases were all skipped does not pass ("NOTHING COMPARED"). With ``inputs=`` (inputs
        the caller chose) ``NotImplementedError`` is an ``"error"`` like any other exception.
    dtype : {"float64", "float32", "tf32", "float16", "bfloat16"} or a NumPy float dtype
        The precision tier of the user's implementation: it selects the rounding of the inputs
        and the rule (float64: ``rtol``; the others: the ratio rule against a plain reference
        run in that tier, :mod:`refimpl._lowprec`, where one exists).
    cases : str or iterable of str, optional
        Case names (full, or the part after ``/``); default all cases of ``name``.
    inputs : dict or list of dict, optional
        Keyword arguments in refimpl's names, at any size (see :func:`random_inputs`); the
        oracle computes its float64 reference on them; an intermediate (the log-sum-exp of
        ``attention.flash_attention``, say) is computed and compared only if the callable
        returns it by name in a dict. Replaces the registered cases. Missing or unknown keys raise ``ValueError``; inputs refimpl
        rejects (e.g. mismatched shapes) give an ``"error"`` case with refimpl's message.
    vectors : str or Path, optional
        A directory written by :func:`export`: compare against its stored arguments and values
        (sha256 checked) instead of recomputing them.

    Returns
    -------
    CompareReport
        Per case ``status`` (``pass``/``fail``/``error``/``skipped``) and, per quantity, the max abs and
        norm-wise relative errors (Eq. (15.1)), the bound (Eqs. (15.2), (15.3)), the plain error and which
        model produced it (for the chunked linear recurrences in float32, a quantity whose whole passes but
        one of whose sequences — batch entry × head — fails its own bound reports the worst such sequence's
        error, bound, plain error and floor, and names it in ``message``), and where the error is:
        ``worst`` (the entry of the largest error, by named axes — head, row, key tile, chunk, step …),
        ``first_over`` (the first entry over the bound in the order of computation — key tile by key
        tile, chunk by chunk, step by step), ``worst_sequence`` (chunked recurrences in float32, whenever
        the quantity fails), see :class:`QuantityReport`; ``str(report)`` prints them on the line of each
        failing quantity. For low tiers ``meets``, the finest tier whose verdict the returned values meet (a
        TF32 kernel asked for float32 fails, meeting ``"tf32"``), computed for a failed case when first read
        (:class:`CaseReport`), so that a failing comparison whose ``meets`` is not read costs what a passing
        one does. A callable that raises, returns the wrong number of outputs, a wrong shape or a wrong dtype
        kind gives a failed or errored case, never an exception.

    Raises
    ------
    ValueError
        Unknown ``name`` (the message lists the known names), unknown case, unknown dtype,
        ``inputs`` with missing or unknown keys, ``inputs`` together with ``cases`` or ``vectors``.
    TypeError
        ``fn`` is not callable; ``inputs`` is not a dict or a list of dicts.

    Examples
    --------
    >>> from refimpl.lyapunov import phi1
    >>> compare('lyapunov.phi1', phi1).passed  # refimpl against itself
    True
    >>> report = compare('lyapunov.phi1', lambda z, tau: (np.exp(z * tau) - 1) / z)  # the naive formula
    >>> report.passed, report.cases[0].status  # fails: 0/0 at z = 0, cancellation near it
    (False, 'fail')
    """
    if vectors is not None and not isinstance(vectors, (str, Path)) and not hasattr(vectors, "__fspath__"):
        raise TypeError(f"vectors: expected a path (str or os.PathLike) or None, got {type(vectors).__name__}")
    function = _resolve_function(name)
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    dt = tier_name(dtype)  # ValueError naming ``dtype`` for anything else
    if inputs is not None:
        if cases is not None or vectors is not None:
            raise ValueError("inputs: give either inputs or cases/vectors, not both")
        selected = _input_cases(function, inputs)
    else:
        selected = [(c, {}) for c in _resolve_cases(function, cases)]
    reports = []
    for case, defaults in selected:
        stored = None
        if inputs is not None:
            # the user's keywords, as given; the callable runs first, so that the float64 reference is
            # computed once, with the intermediates it returns by name (e.g. a fused kernel's log-sum-exp)
            args = case.build(None)
        else:
            if vectors is not None:
                args, oracle, stored = _load_from(vectors, case)
            else:
                args, oracle = compute(case)
        user_args = {k: _round(v, dt) for k, v in args.items() if v is not None}
        try:
            with np.errstate(all="ignore"):
                value = fn(**user_args)
        except NotImplementedError as exc:  # an option or size the kernel does not support
            message = f"raised NotImplementedError: {exc}" if str(exc) else "raised NotImplementedError"
            if inputs is None:  # a registered case: skipped, not failed (the user's own inputs: an error)
                reports.append(CaseReport(case.name, "skipped", [], f"not supported by the callable ({message})"))
                continue
            reports.append(CaseReport(case.name, "error", [], message))
            continue
        except Exception as exc:
            message = f"raised {type(exc).__name__}: {exc}"
            if inputs is not None:  # say so when the inputs themselves are invalid
                try:
                    compute(case, args={**defaults, **args})
                except Exception as bad:  # noqa: BLE001
                    message = f"refimpl rejects the inputs ({type(bad).__name__}: {bad}); the callable {message}"
            reports.append(CaseReport(case.name, "error", [], message))
            continue
        if inputs is not None:
            wanted = isinstance(value, dict) and any(k in FUNCTIONS[function].intermediates for k in value)
            try:
                _, oracle = compute(dataclasses.replace(case, intermediates=wanted), args={**defaults, **args})
            except Exception as exc:  # noqa: BLE001 — user inputs: any failure of refimpl is reported per case
                reports.append(CaseReport(case.name, "error", [], f"refimpl rejects the inputs ({type(exc).__name__}: {exc})"))
                continue
            case = dataclasses.replace(case, outputs=tuple(k for k in oracle if k not in FUNCTIONS[function].intermediates))
            if wanted:  # only the intermediates the callable returned
                oracle = {k: v for k, v in oracle.items() if k in value or k in case.output_names()}
        plain, models, plain_stored = None, {}, None
        if dt != "float64" and stored is not None and _stored_plain(stored, dt, oracle) is not None:
            plain, models = plain_stored = _stored_plain(stored, dt, oracle)
        elif dt != "float64":
            try:
                plain, models = _plain(case, {**defaults, **user_args}, dt, list(oracle), oracle)
            except Exception as exc:  # e.g. time stamps that are no longer increasing once rounded
                reports.append(CaseReport(case.name, "error", [], f"refimpl cannot evaluate the inputs rounded to {dt} "
                                          f"({type(exc).__name__}: {exc}); the ratio rule is undefined for this case"))
                continue
        mapped, note = _as_results(value, case, oracle)
        if mapped is None:
            reports.append(CaseReport(case.name, "error", [], note))
            continue
        # tensors too (.detach().cpu().numpy()); None: a required output returned as None
        mapped = {k: None if v is None else _to_array(v) for k, v in mapped.items()}
        quantities = []
        outs = case.output_names()
        floors = _Floors(function, args, low=dt != "float64", tier=dt)
        on_rounded = _OnRounded(case, {**defaults, **user_args})
        floor_of = {}
        for qname in oracle:  # intermediates first, in order of computation, then the outputs
            kind = "output" if qname in outs else "intermediate"
            if qname not in mapped:
                if kind == "output" and qname in FUNCTIONS[function].optional:
                    quantities.append(QuantityReport(qname, kind, True, message=_NOT_RETURNED))
                elif kind == "output":
                    quantities.append(QuantityReport(qname, kind, False, message="missing from the returned values"))
                continue
            if mapped[qname] is None:  # a required output (an optional one returned as None is not in mapped)
                quantities.append(QuantityReport(qname, kind, False, message=_returned_none(function, qname, outs)))
                continue
            jt = _judged_tier(function, qname, mapped[qname], dt)  # float32 for FlashAttention's lse
            floor = floor_of[qname] = floors(qname, oracle[qname])
            model = models.get(qname, "") + (", judged in float32" if jt != dt else "")
            quantities.append(_judge(qname, kind, mapped[qname], oracle[qname], dtype=jt, rtol=case.rtol, atol=case.atol,
                                     plain=None if plain is None else plain.get(qname, oracle[qname]),
                                     ulps=PLAIN_ULPS[jt] if models.get(qname, "").startswith("plain ") else case.ulps,
                                     model=model, floor=floor, seq=floors.sequences(qname), exact=on_rounded,
                                     layout=_layout(function, qname, np.ndim(oracle[qname]), {**defaults, **args})))
        status = "pass" if all(q.passed for q in quantities) else "fail"
        if status == "fail":
            hint = _head_first_hint(function, {**defaults, **args})
            note = "; ".join(m for m in (note, hint) if m)
        meets = dt if status == "pass" else None
        if status == "fail" and dt != "float64" and all(q.message in ("", _NOT_RETURNED) or "overflow" in q.message
                                                         or _ONE_BY_ONE in q.message for q in quantities):
            # computed when first read (str(report) reads it), from copies of the values judged here; the tier dt
            # itself is not judged again where this comparison used the same plain reference (computed, not stored)
            judged = {k: np.array(v, copy=True) for k, v in mapped.items() if k in oracle}
            same_plain = (stored is None or plain_stored is None) and all(q in judged for q in oracle)
            failed = sorted((q for q in quantities if not q.passed), key=lambda q: -_ratio(q.rel_error, q.bound))
            meets = _Deferred(functools.partial(
                _meets, case, args if inputs is None else {k: _copy(v) for k, v in args.items()}, oracle, judged, dt,
                defaults, floor_of=floor_of, skip=same_plain, first=tuple(q.name for q in failed)))
        reports.append(CaseReport(case.name, status, quantities, note, meets))
    return CompareReport(function, dt, reports)


def _ratio(error: float, bound: float) -> float:
    """``error / bound`` (∞ for NaN or a zero bound): how far a quantity failed."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = float(np.float64(error) / np.float64(bound))
    return np.inf if np.isnan(r) else r


def _copy(value):
    """A copy of an array argument (scalars, strings and tuples as they are)."""
    return np.array(value, copy=True) if isinstance(value, np.ndarray) else value


def _softplus(x):
    return np.logaddexp(0.0, x)


def _dt_bias(rng: np.random.Generator, shape) -> np.ndarray:
    """Mamba's (and Mamba-2's) initialization of the step bias: dt0 log-uniform in [10⁻³, 10⁻¹] (one draw of
    ``shape``), returned as its inverse softplus, so that ``softplus(bias) = dt0``."""
    dt0 = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), shape))
    return dt0 + np.log(-np.expm1(-dt0))


def _sizes(name: str, sizes: dict, known: dict) -> dict:
    """``known`` (defaults) updated with ``sizes``, checked by the default's type: a flag is a bool, a size an int
    (>= 1, or >= 0 where the default 0 means "none" or "the same as another size"); other values pass as given."""
    unknown = sorted(set(sizes) - set(known))
    if unknown:
        raise ValueError(f"sizes: unknown {unknown} for {name}; known: {', '.join(f'{k}={v!r}' for k, v in known.items())}")
    out = {**known, **sizes}
    for k, v in out.items():
        if isinstance(known[k], bool):
            out[k] = as_bool(v, k)
        elif isinstance(known[k], int):
            least = 0 if known[k] == 0 else 1
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < least:
                want = "a positive int" if least else "an int >= 0"
                raise ValueError(f"{k}: expected {want}, got {v!r}")
            out[k] = int(v)
    return out


def _attention_inputs(function: str, rng, sizes: dict) -> dict:
    """:func:`random_inputs` of softmax attention, FlashAttention and the attention backward pass.

    ``heads`` is the number of query heads H (the leading axis, 0: none); ``batch`` is its older name, kept
    for compatibility (the same draw): giving both is refused."""
    sizes = dict(sizes)
    if "heads" in sizes and "batch" in sizes:
        raise ValueError(f"heads, batch: give the number of query heads once, as heads (batch is its older name for "
                         f"{function}, not a separate batch axis), got heads={sizes['heads']!r} and "
                         f"batch={sizes['batch']!r}")
    key = "batch" if "batch" in sizes else "heads"  # the name the caller used, for the messages
    alignment = sizes.pop("causal_alignment", None)
    softcap = sizes.pop("softcap", None)
    extra = {"block_q": 64, "block_k": 64} if function == "attention.flash_attention" else {}
    s = _sizes(function, sizes, {"N": 256, "M": 0, "d": 64, "dv": 0, key: 0, "causal": False, "kv_heads": 0,
                                 "window": 0, "alibi": False, **extra})
    N, d, H, H_kv = s["N"], s["d"], s[key], s["kv_heads"]
    M, dv = s["M"] or N, s["dv"] or d
    from .attention import _ALIGNMENTS, alibi_geometric_slopes

    if alignment is not None:
        check_option(alignment, "causal_alignment", _ALIGNMENTS)
    if s["causal"] and M != N and alignment is None:
        raise ValueError("M: causal attention with M != N needs causal_alignment ('bottom_right': the KV-cache case)")
    if softcap is not None:
        softcap = as_positive_scalar(softcap, "softcap")
    if (H_kv or s["alibi"]) and not H:
        subject = key if key in sizes else "heads, batch"
        raise ValueError(f"{subject}: kv_heads and alibi need a head axis: give heads = the number of query heads H >= 1 "
                         f"(batch is its older name), got {H}")
    if H_kv and H % H_kv:
        raise ValueError(f"kv_heads: the {H} query heads ({key}) must be a multiple of kv_heads, got {H_kv}")
    b, b_kv = ((H,) if H else ()), ((H_kv or H,) if H else ())
    out = {"q": rng.standard_normal(b + (N, d)), "k": rng.standard_normal(b_kv + (M, d)),
           "v": rng.standard_normal(b_kv + (M, dv))}
    if function == "attention.softmax_attention_vjp":
        out["dy"] = rng.standard_normal(b + (N, dv))
    out["causal"] = s["causal"]
    if s["window"]:
        out["window"] = s["window"]
    if s["alibi"]:
        out["alibi_slopes"] = alibi_geometric_slopes(H)
    if alignment is not None:
        out["causal_alignment"] = alignment
    if softcap is not None:
        out["softcap"] = softcap
    if H_kv:
        out["grouped_heads"] = True
    return {**out, **{k: s[k] for k in extra}}


def random_inputs(name, *, seed, **sizes) -> dict:
    r"""Valid keyword arguments for ``name`` at any size, in the regimes real models run in.

    Inputs for the comparison of Eqs. (15.1)–(15.3) of the book at the sizes kernels run at.

    ``compare(name, fn, inputs=random_inputs(name, seed=0, N=4097, d=128))`` validates a
    kernel at a realistic size.

    Parameters
    ----------
    name : str
        A function of :data:`RANDOM_INPUTS` (``"module.function"``, or the bare name when it is unique).
    seed : int >= 0
        Seeds ``numpy.random.default_rng`` (its sub-streams ``(seed, i)`` draw the cotangents and states):
        the same name, seed and sizes always give the same arrays.
    **sizes
        The function's sizes and options, listed per family below with their defaults in parentheses.
        Every keyword is checked: a size is an int (>= 1; >= 0 where 0 means "none" or "the same as"),
        a flag a bool, an option one of its values. A keyword the function does not use is refused,
        never ignored.

    Returns
    -------
    dict
        Keyword arguments of ``name`` in its own argument names: float64 arrays and the options.

    Raises
    ------
    ValueError, TypeError
        Naming the argument: a function that is not supported, a keyword that is not one of the
        function's options (``"sizes: unknown [...]"``, with the known ones, and for a library's own name
        of a size — fla's ``T``, ``K``, ``V``, mamba_ssm's ``seqlen``, ``nheads``, ``headdim``, ``dstate``
        — the name it has here), a size that is not an int in range, a flag that is not a bool, an option
        out of range or inconsistent with another.

    Notes
    -----
    **What the size keywords mean.** The leading axis is not the same thing in every family:

    * in the softmax-attention draws it holds the **heads**: ``heads`` = H query heads (``batch`` is
      its older name there: the same draw, not a separate batch axis);
    * the linear recurrences with heads (``linear_rnn.ssd``, ``linear_rnn.retention``, the fla and
      mamba_ssm interfaces) call them ``H``, FlashAttention-2's interfaces ``nheads``;
    * everywhere else ``batch`` is a batch axis of independent sequences (0: no such axis).

    Shapes below use those sizes; ``B`` is ``batch``, and ``(B,)`` is left out when ``batch`` is 0.

    *Softmax attention* — ``attention.softmax_attention``, ``attention.flash_attention`` and
    ``attention.softmax_attention_vjp`` (refimpl's layout, heads before the sequence):

    * ``N`` (256) queries, ``M`` (0: = N) keys, ``d`` (64) the width of q and k, ``dv`` (0: = d) of v;
    * ``heads`` (0) the number H of query heads: 0 draws no head axis, q (N, d), k (M, d),
      v (M, dv); H >= 1 draws q (H, N, d), k (H, M, d), v (H, M, dv). ``batch`` (0) is the older
      name of ``heads`` for these three functions, kept for compatibility (the same draw); giving
      both is refused. For a kernel in (B, H, N, d), draw ``heads`` = B·H (and ``kv_heads`` =
      B·H_kv) and reshape q to (B, H, N, d), k and v to (B, H_kv, M, ·): query head h of each batch
      row then reads key/value head h // (H/H_kv) of the same row (not with ``alibi``, whose
      slopes are drawn for B·H heads);
    * ``kv_heads`` (0: none) grouped-query attention with H_kv key/value heads, a divisor of H:
      k (H_kv, M, d), v (H_kv, M, dv) and ``grouped_heads=True``; needs ``heads``;
    * ``causal`` (False); ``window`` (0: none) a sliding window; ``alibi`` (False) ALiBi's geometric
      slopes ``alibi_slopes`` (H,), needs ``heads``; ``softcap`` (None: none; e.g. 50.0 as in Gemma 2);
      ``causal_alignment`` (None: refimpl's ``"top_left"``; ``"bottom_right"`` is the KV-cache case,
      needed for causal attention with M ≠ N);
    * q, k, v standard normal (logits of order √d before the 1/√d scale, as after a LayerNorm);
      ``flash_attention`` adds its tiles ``block_q`` and ``block_k`` (64); the backward pass adds
      the cotangent ``dy`` of y's shape, (H, N, dv).

    *Linear and Performer attention* — ``random_features.linear_attention`` (and its ``_vjp``),
    ``random_features.performer_attention``: ``N`` (1024), ``d`` (16; Performer 64), ``dv`` (0: = d),
    ``batch`` (0) B sequences, ``causal`` (True), Performer's ``m`` (256) features: q, k (B, N, d),
    v (B, N, dv) standard normal; ``projection`` (m, d) orthogonal.

    *Selective scan* — ``ssm.selective_scan`` (and its ``_vjp``): ``L`` (1024), ``d_in`` (8), ``n``
    (16), ``batch`` (0), ``discretization`` (``"mamba"`` or ``"zoh"``): Mamba's initialization — Δ =
    softplus(b + 0.5 ξ) with the bias b set so that softplus(b) is log-uniform in [10⁻³, 10⁻¹],
    A = −(1, 2, …, n) per channel (S4D-real), B, C, u standard normal, D ones. u, delta (B, L, d_in),
    A (d_in, n), B, C (B, L, n), D (d_in,).

    ``ssm.selective_scan_fn`` (and its ``_vjp``) — the same draw in mamba_ssm's layout (channels
    before time): ``L``, ``d_in``, ``n`` as above, ``batch`` (1, always an axis), ``gated`` (False),
    ``groups`` (0): u, delta (batch, d_in, L) with ``delta`` raw (0.5 ξ), ``delta_bias`` (d_in,) =
    softplus⁻¹(dt0) and ``delta_softplus=True``; B, C (batch, n, L), or per group (batch, G, n, L)
    with ``groups`` G > 0 dividing d_in; ``gated`` adds ``z`` (batch, d_in, L); the backward pass
    adds the cotangent ``dout`` of the output (the seed's second stream).

    ``ssm.selective_state_update`` (one decoding step) — ``batch`` (1), ``nheads`` (0: Mamba's layout, a
    per-channel A; H > 0: Mamba-2's, a scalar A per head), ``dim`` (64, the channels, per head with heads),
    ``dstate`` (16), ``groups`` (1, dividing nheads), ``pool`` (0: one state per batch entry; P >= batch: a pool of
    P states addressed by ``state_batch_indices``, a random choice of distinct rows): state standard normal
    (batch or P, [H,] dim, dstate); x, z standard normal (batch, [H,] dim); dt raw (0.5 ξ) with ``dt_bias``
    softplus⁻¹(dt0) (dt0 log-uniform in [10⁻³, 10⁻¹] per channel), ``dt_softplus=True``; A = −(1, 2, …, dstate)
    per channel, or −exp(ξ) per head; B, C (batch, dstate) or (batch, groups, dstate); D ones.

    *IIR filters* — ``iir.sos_filter``: ``N`` (4096), ``order`` (6, even), ``wn`` (0.05, in (0, 1)): a
    Chebyshev I low-pass with 1 dB ripple, poles near z = 1, sos (order/2, 6); x (N,) standard
    normal. ``iir.biquad_filter``: ``N`` (4096), ``r`` (0.999, the pole radius, in (0, 1)),
    ``theta`` (0.3, the poles' angle in [0, π] rad): a band-pass resonator with poles r e^{±iθ},
    b, a (3,); x (N,).

    *Linear recurrences, refimpl's layout* (heads, then the sequence):

    * ``linear_rnn.ssd``: ``L`` (1024), ``H`` (4 heads), ``G`` (1 group, a divisor of H), ``P`` (16),
      ``N`` (16), ``batch`` (0), ``chunk_size`` (64): Mamba-2's initialization — Δ = softplus(b + 0.5
      ξ) with softplus(b) log-uniform in [10⁻³, 10⁻¹], A = −U(1, 16) per head; x, B, C standard
      normal, D ones. x (B, H, L, P), dt (B, H, L), A (H,), B, C (B, G, L, N), D (H,).
    * ``linear_rnn.gated_linear_attention``: ``L`` (1024), ``dk`` (64), ``dv`` (64), ``batch`` (0),
      ``per_channel`` (True), ``chunk_size`` (64), ``gate_normalizer`` (16.0): q, k (B, L, dk),
      v (B, L, dv) (one head; several heads are a batch axis), GLA's gates log g = log σ(ξ)/τ,
      log_g (B, L, dk) or, without ``per_channel``, (B, L), with τ the normalizer (16 in the GLA
      paper). A smaller τ forgets faster: with τ = 1 (mean log g ≈ −0.8 a step) every chunk of 64
      steps decays below e^{−30}, the regime of the exact path of the chunked forms (gates near 0),
      which τ = 16 never reaches.
    * ``linear_rnn.retention``: ``L`` (1024), ``H`` (4), ``dk`` (64), ``dv`` (64), ``chunk_size`` (64):
      q, k (H, L, dk), v (H, L, dv), RetNet's decays γ_h = 1 − 2^(−5−h), gamma (H,). No batch axis.
    * ``linear_rnn.delta_rule``: ``L`` (1024), ``dk`` (64), ``dv`` (64), ``batch`` (0), ``gated``
      (False), ``chunk_size`` (64), ``gate_normalizer`` (16.0, only with ``gated``): q (B, L, dk),
      unit keys k (B, L, dk), v (B, L, dv), β = σ(ξ) beta (B, L), Gated DeltaNet's log g = log σ(ξ)/τ
      log_g (B, L) (τ as for GLA).
    * ``states`` (False), for each of them: also an ``initial_state`` (standard normal, the seed's
      fourth stream), (B, H, P, N) for SSD, (H, dv, dk) for retention, (B, dv, dk) otherwise.
    * The backward passes ``linear_rnn.ssd_vjp``, ``gated_linear_attention_vjp``, ``retention_vjp``,
      ``delta_rule_vjp`` (and ``random_features.linear_attention_vjp``, ``ssm.selective_scan_vjp``):
      the forward function's inputs (same sizes, same seed), plus the cotangent ``dy`` of the
      output's shape (standard normal, the seed's second stream) and, with ``states``, the
      cotangent ``dfinal_state`` of the last state (third stream).

    *Linear recurrences, official interfaces* (sequence before heads; ``batch`` (1) is always an
    axis, ``H`` (4) heads):

    * ``linear_rnn.mamba_chunk_scan_combined``: ``L``, ``H``, ``G``, ``P``, ``N``, ``chunk_size`` as
      for SSD, ``batch`` (1), ``gated`` (False), ``states`` (False), ``seqlens`` (None): x (B, L, H, P),
      ``dt`` (B, L, H) raw with its ``dt_bias`` (H,) and ``dt_softplus=True`` (the same Δ
      distribution), A (H,), B, C (B, L, G, N), D (H,); ``gated`` adds z (B, L, H, P); ``states`` adds
      ``initial_states`` (B, H, P, N).
    * fla's ``linear_rnn.chunk_gla``, ``chunk_simple_gla``, ``chunk_delta_rule``,
      ``chunk_gated_delta_rule``: ``L`` (1024), ``H`` (4), ``dk`` (64), ``dv`` (64), ``batch`` (1),
      ``states`` (False), ``seqlens`` (None), ``gate_normalizer`` (16.0; not for ``chunk_delta_rule``,
      which has no gate): q, k (B, T, H, K), v (B, T, H, V) with T = L, K = dk, V = dv; g (B, T, H, K)
      for chunk_gla, (B, T, H) for the others with a gate; the delta rules' beta (B, T, H), raw keys
      and ``use_qk_l2norm_in_kernel=True``; ``states`` adds ``initial_state`` (B, H, K, V) and
      ``output_final_state=True``. fla's functions take no ``chunk_size``: their kernels use chunks of
      64, as :func:`decay_floor` assumes.
    * ``seqlens`` (a list of lengths, instead of ``L`` and ``batch``) packs n sequences in one batch
      row of L = sum(seqlens) steps: fla's with their ``cu_seqlens`` (n + 1,) (varlen mode; states
      (n, H, K, V)), mamba_ssm's with their ``seq_idx`` (1, L) (ids 0 … n − 1; the first sequence gets
      ``initial_states``).
    * The backward passes (``_vjp``) add the output cotangent ``dout`` (mamba_ssm) or ``do`` (fla),
      shaped like x or v, and with ``states`` ``dfinal_states``/``dht``, shaped like the states.

    *FlashAttention-2's interfaces* — ``attention.flash_attn_func``, ``flash_attn_varlen_func`` and
    their ``_vjp`` (sequence before heads): ``batch`` (1, a real batch axis), ``seqlen_q`` (256),
    ``seqlen_k`` (0: = seqlen_q), ``nheads`` (4), ``nheads_k`` (0: = nheads; a divisor of it),
    ``headdim`` (64), ``headdim_v`` (0: = headdim): q (batch, seqlen_q, nheads, headdim),
    k (batch, seqlen_k, nheads_k, headdim), v (batch, seqlen_k, nheads_k, headdim_v). Packed
    (``flash_attn_varlen_func``, which takes ``seqlens_q`` and ``seqlens_k`` instead of ``batch``,
    ``seqlen_q`` and ``seqlen_k``): ``seqlens_q`` (a list, [100, 37, 129]) and ``seqlens_k``
    (None: = seqlens_q; as many sequences), q (total_q, nheads, headdim), k, v (total_k, nheads_k, ·)
    with their ``cu_seqlens_q``, ``cu_seqlens_k`` (n + 1,) and ``max_seqlen_q``, ``max_seqlen_k``.
    Options: ``causal`` (False), ``window_size`` ((-1, -1): a pair of ints, a negative bound is none),
    ``softcap`` (0.0: none; None is none too), ``alibi`` (False: else the geometric slopes
    ``alibi_slopes`` (nheads,)); the backward passes add ``dout``, shaped like the output.

    Examples
    --------
    >>> inputs = random_inputs("ssm.selective_scan", seed=0, L=300, d_in=2, n=4)
    >>> inputs["u"].shape, inputs["A"].shape, inputs["discretization"]
    ((300, 2), (2, 4), 'mamba')
    >>> compare("ssm.selective_scan", lambda **kw: None, inputs=inputs).cases[0].status  # a callable returning nothing
    'error'
    >>> att = random_inputs("attention.softmax_attention", seed=0, N=5, d=3, heads=4, kv_heads=2)
    >>> att["q"].shape, att["k"].shape, att["grouped_heads"]  # heads: the query heads; kv_heads share them
    ((4, 5, 3), (2, 5, 3), True)
    >>> random_inputs("linear_rnn.ssd", seed=0, L=8, H=2, batch=3)["x"].shape  # here batch is a batch axis
    (3, 2, 8, 16)
    """
    function = _resolve_function(name)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed}")
    if function not in RANDOM_INPUTS:
        raise ValueError(f"name: random_inputs supports {', '.join(RANDOM_INPUTS)}, not {function}")
    _check_options(function, sizes)
    rng = np.random.default_rng(seed)
    if function in _OFFICIAL:
        return _official_inputs(function, seed, sizes)
    if function in _FLASH_OFFICIAL:
        return _flash_official_inputs(function, seed, sizes)
    if function == "ssm.selective_scan_fn":
        return _selective_scan_fn_inputs(seed, sizes)
    if function == "ssm.selective_state_update":
        return _state_update_inputs(seed, sizes)
    if function == "ssm.selective_scan_fn_vjp":  # the forward inputs, then the cotangent dout of the output
        try:
            out = _selective_scan_fn_inputs(seed, sizes)
        except ValueError as exc:  # name the function asked for
            raise ValueError(str(exc).replace("for ssm.selective_scan_fn;",
                                              f"for {function} (those of ssm.selective_scan_fn);")) from None
        return {**out, "dout": np.random.default_rng((seed, 1)).standard_normal(out["u"].shape)}
    if function in _VJP_OUTPUTS:  # the forward inputs, then the cotangent of the forward output
        name = function.removesuffix("_vjp")
        try:
            forward = random_inputs(name, seed=seed, **sizes)
        except ValueError as exc:  # name the function asked for
            raise ValueError(str(exc).replace(f"for {name};", f"for {function} (those of {name});")) from None
        shape = forward[_VJP_OUTPUTS[function]].shape
        out = {**forward, "dy": np.random.default_rng((seed, 1)).standard_normal(shape)}
        if "initial_state" in forward:  # and the cotangent of the last state (a chained segment's)
            out["dfinal_state"] = np.random.default_rng((seed, 2)).standard_normal(forward["initial_state"].shape)
        return out
    if function.startswith("linear_rnn.") and "states" in sizes:
        sizes = dict(sizes)
        if as_bool(sizes.pop("states"), "states"):
            out = random_inputs(function, seed=seed, **sizes)
            lead_axes = out["x"].shape[:-2] if function == "linear_rnn.ssd" else out["v"].shape[:-2]
            inner = (out["x"].shape[-1], out["B"].shape[-1]) if function == "linear_rnn.ssd" else \
                (out["v"].shape[-1], out["k"].shape[-1])  # (P, N) or (Dv, Dk)
            out["initial_state"] = np.random.default_rng((seed, 3)).standard_normal(lead_axes + inner)
            return out

    def lead(b):
        return (b,) if b else ()

    if function in ("attention.softmax_attention", "attention.flash_attention", "attention.softmax_attention_vjp"):
        return _attention_inputs(function, rng, sizes)
    if function == "random_features.linear_attention":
        s = _sizes(function, sizes, {"N": 1024, "d": 16, "dv": 0, "batch": 0, "causal": True})
        b, dv = lead(s["batch"]), s["dv"] or s["d"]
        return {"q": rng.standard_normal(b + (s["N"], s["d"])), "k": rng.standard_normal(b + (s["N"], s["d"])),
                "v": rng.standard_normal(b + (s["N"], dv)), "causal": s["causal"]}
    if function == "ssm.selective_scan":
        disc = sizes.pop("discretization", "mamba")
        check_option(disc, "discretization", ("mamba", "zoh"))
        s = _sizes(function, sizes, {"L": 1024, "d_in": 8, "n": 16, "batch": 0})
        b, L, d, n = lead(s["batch"]), s["L"], s["d_in"], s["n"]
        bias = _dt_bias(rng, d)
        return {"u": rng.standard_normal(b + (L, d)), "delta": _softplus(bias + 0.5 * rng.standard_normal(b + (L, d))),
                "A": -np.tile(np.arange(1.0, n + 1), (d, 1)), "B": rng.standard_normal(b + (L, n)),
                "C": rng.standard_normal(b + (L, n)), "D": np.ones(d), "discretization": disc}
    if function == "iir.sos_filter":
        s = _sizes(function, {k: v for k, v in sizes.items() if k != "wn"}, {"N": 4096, "order": 6})
        wn = as_positive_scalar(sizes.get("wn", 0.05), "wn")
        if not 0 < wn < 1:
            raise ValueError(f"wn: expected a normalized frequency in (0, 1), got {wn!r}")
        if s["order"] % 2:
            raise ValueError(f"order: expected an even order (whole biquads), got {s['order']}")
        from . import iir

        return {"sos": iir.cheby1(s["order"], 1.0, wn, output="sos"), "x": rng.standard_normal(s["N"]), "form": "tdf2"}
    if function == "random_features.performer_attention":
        s = _sizes(function, sizes, {"N": 1024, "d": 64, "dv": 0, "m": 256, "batch": 0, "causal": True})
        b, dv = lead(s["batch"]), s["dv"] or s["d"]
        from .random_features import orthogonal_gaussian

        return {"q": rng.standard_normal(b + (s["N"], s["d"])), "k": rng.standard_normal(b + (s["N"], s["d"])),
                "v": rng.standard_normal(b + (s["N"], dv)), "projection": orthogonal_gaussian(s["m"], s["d"], rng=rng),
                "causal": s["causal"]}
    if function == "linear_rnn.ssd":
        s = _sizes(function, sizes, {"L": 1024, "H": 4, "G": 1, "P": 16, "N": 16, "batch": 0, "chunk_size": 64})
        b, H, L = lead(s["batch"]), s["H"], s["L"]
        if H % s["G"]:
            raise ValueError(f"G: the number of heads H = {H} must be divisible by the number of groups, got G = {s['G']}")
        bias = _dt_bias(rng, H)
        return {"x": rng.standard_normal(b + (H, L, s["P"])),
                "dt": _softplus(bias[:, None] + 0.5 * rng.standard_normal(b + (H, L))),
                "A": -rng.uniform(1.0, 16.0, H), "B": rng.standard_normal(b + (s["G"], L, s["N"])),
                "C": rng.standard_normal(b + (s["G"], L, s["N"])), "D": np.ones(H), "chunk_size": s["chunk_size"]}
    if function in ("linear_rnn.gated_linear_attention", "linear_rnn.delta_rule", "linear_rnn.retention"):
        known = {"L": 1024, "dk": 64, "dv": 64, "chunk_size": 64}
        known.update({"linear_rnn.gated_linear_attention": {"batch": 0, "per_channel": True, "gate_normalizer": 16.0},
                      "linear_rnn.delta_rule": {"batch": 0, "gated": False, "gate_normalizer": 16.0},
                      "linear_rnn.retention": {"H": 4}}[function])  # retention: heads (one decay each), no batch
        s = _sizes(function, sizes, known)
        tau = as_positive_scalar(s.get("gate_normalizer", 16.0), "gate_normalizer")  # log g = log σ(ξ) / τ
        if function == "linear_rnn.delta_rule" and "gate_normalizer" in sizes and not s["gated"]:
            raise ValueError("gate_normalizer: the delta rule has gates only with gated=True")
        b = (s["H"],) if function == "linear_rnn.retention" else lead(s["batch"])
        L, dk = s["L"], s["dk"]
        q, k, v = rng.standard_normal(b + (L, dk)), rng.standard_normal(b + (L, dk)), rng.standard_normal(b + (L, s["dv"]))
        logsig = lambda x: -np.logaddexp(0.0, -x)  # log σ(x)
        if function == "linear_rnn.retention":
            return {"q": q, "k": k, "v": v, "gamma": 1 - 2.0 ** (-5 - np.arange(s["H"])), "chunk_size": s["chunk_size"]}
        if function == "linear_rnn.gated_linear_attention":
            gate_shape = b + ((L, dk) if s["per_channel"] else (L,))
            return {"q": q, "k": k, "v": v, "log_g": logsig(rng.standard_normal(gate_shape)) / tau, "chunk_size": s["chunk_size"]}
        out = {"q": q, "k": k / np.linalg.norm(k, axis=-1, keepdims=True), "v": v,
               "beta": 1 / (1 + np.exp(-rng.standard_normal(b + (L,)))), "chunk_size": s["chunk_size"]}
        if s["gated"]:
            out["log_g"] = logsig(rng.standard_normal(b + (L,))) / tau
        return out
    if function == "iir.biquad_filter":
        s = _sizes(function, {k: v for k, v in sizes.items() if k not in ("r", "theta")}, {"N": 4096})
        r, theta = as_positive_scalar(sizes.get("r", 0.999), "r"), sizes.get("theta", 0.3)
        if not 0 < r < 1:
            raise ValueError(f"r: expected a pole radius in (0, 1), got {r!r}")
        if as_positive_scalar(theta, "theta", strict=False) > np.pi:
            raise ValueError(f"theta: expected the poles' angle in [0, π] rad, got {theta!r}")
        theta = float(theta)
        return {"b": np.array([1.0, 0.0, -1.0]) * (1 - r), "a": np.array([1.0, -2 * r * np.cos(theta), r * r]),
                "x": rng.standard_normal(s["N"]), "form": "tdf2"}
    raise ValueError(f"name: random_inputs supports {', '.join(RANDOM_INPUTS)}, not {function}")


#: backward passes :func:`random_inputs` supports: the forward input whose shape the output (and dy) has
_VJP_OUTPUTS = {"random_features.linear_attention_vjp": "v", "ssm.selective_scan_vjp": "u", "linear_rnn.ssd_vjp": "x",
                "linear_rnn.gated_linear_attention_vjp": "v", "linear_rnn.retention_vjp": "v",
                "linear_rnn.delta_rule_vjp": "v"}

#: the official interfaces (mamba_ssm, fla) :func:`random_inputs` supports: ``{name: the refimpl function whose
#: inputs are drawn}`` (then moved to the official layout, :func:`_official_inputs`)
_OFFICIAL = {
    "linear_rnn.mamba_chunk_scan_combined": "linear_rnn.ssd",
    "linear_rnn.chunk_gla": "linear_rnn.gated_linear_attention",
    "linear_rnn.chunk_simple_gla": "linear_rnn.gated_linear_attention",
    "linear_rnn.chunk_delta_rule": "linear_rnn.delta_rule",
    "linear_rnn.chunk_gated_delta_rule": "linear_rnn.delta_rule",
}
_OFFICIAL.update({f"{name}_vjp": base for name, base in _OFFICIAL.items()})


def _lengths(value, name: str) -> list:
    """A non-empty list of positive ints: packed sequences' lengths (``seqlens``, ``seqlens_q``, …)."""
    if isinstance(value, (str, bytes)) or not np.iterable(value) or not len(value) or any(
            isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 for n in value):
        raise ValueError(f"{name}: expected a list of positive ints (the packed sequences' lengths), got {value!r}")
    lengths = [int(n) for n in value]
    if sum(lengths) > _MAX_PACKED:  # the kernels' cu_seqlens are int32 (flash-attn, fla)
        raise ValueError(f"{name}: the packed length sum({name}) = {sum(lengths)} exceeds the int32 offsets kernels "
                         f"take (at most {_MAX_PACKED})")
    return lengths


#: The longest packed batch :func:`random_inputs` draws: FlashAttention-2's and fla's ``cu_seqlens`` are int32.
_MAX_PACKED = 2**31 - 1


def _seqlens(sizes: dict):
    """Pop ``seqlens`` (packed sequences' lengths) from ``sizes`` and set ``L`` to their sum, or None."""
    seqlens = sizes.pop("seqlens", None)
    if seqlens is None:
        return None
    seqlens = _lengths(seqlens, "seqlens")
    if sizes.get("batch", 1) != 1 or sizes.get("L", sum(seqlens)) != sum(seqlens):
        raise ValueError("seqlens: packed sequences make one batch row of L = sum(seqlens) steps; leave out batch and L")
    sizes["L"] = sum(seqlens)
    return seqlens


def _official_inputs(function: str, seed: int, sizes: dict) -> dict:
    """:func:`random_inputs` of an official interface: refimpl's inputs for the same layer with the batch of
    ``B·H`` entries (``H`` heads, SSD's own head axis), moved to the official layout (sequence before heads),
    the official argument names and options; the backward passes add ``do``/``dout`` (and ``dht``/
    ``dfinal_states`` with ``states``) from the seed's second (third) stream."""
    sizes = dict(sizes)
    vjp = function.endswith("_vjp")
    name = function.removesuffix("_vjp")
    states = as_bool(sizes.pop("states", False), "states")
    swap = lambda a: np.swapaxes(a, 1, 2)  # noqa: E731 — (B, H, T, ·) -> (B, T, H, ·)
    if name == "linear_rnn.mamba_chunk_scan_combined":
        gated = as_bool(sizes.pop("gated", False), "gated")
        seqlens = _seqlens(sizes)
        B = _sizes(function, {"batch": sizes.pop("batch", 1)}, {"batch": 1})["batch"]
        base = random_inputs("linear_rnn.ssd", seed=seed, batch=B, states=states, **sizes)
        H = base["A"].shape[0]
        # Mamba-2's parameterization: dt = softplus(raw + dt_bias), dt_bias the inverse softplus of the
        # initialization's dt0 per head (as random_inputs("linear_rnn.ssd") draws Δ), the raw part 0.5 ξ
        rng = np.random.default_rng((seed, 4))
        bias = _dt_bias(rng, H)
        out = {"x": swap(base["x"]), "dt": 0.5 * rng.standard_normal((B, base["x"].shape[-2], H)), "A": base["A"],
               "B": swap(base["B"]), "C": swap(base["C"]), "chunk_size": base["chunk_size"], "D": base["D"],
               "z": swap(rng.standard_normal(base["x"].shape)) if gated else None,
               "dt_bias": bias, "dt_softplus": True}
        if states:
            out["initial_states"] = base["initial_state"]
        if vjp:
            out["dout"] = np.random.default_rng((seed, 1)).standard_normal(out["x"].shape)
            if states:
                out["dfinal_states"] = np.random.default_rng((seed, 2)).standard_normal(base["initial_state"].shape)
        if seqlens is not None:  # mamba_ssm marks packed sequences by their ids (the first, 0, gets initial_states)
            out["seq_idx"] = np.repeat(np.arange(len(seqlens)), seqlens)[None, :]
        return {k: v for k, v in out.items() if v is not None}
    known = {"L": 1024, "H": 4, "dk": 64, "dv": 64, "batch": 1}  # fla's chunks: 64, no size
    if name != "linear_rnn.chunk_delta_rule":  # DeltaNet has no gate
        known["gate_normalizer"] = 16.0
    seqlens = _seqlens(sizes)
    s = _sizes(function, sizes, known)
    B, H = s["batch"], s["H"]
    N = B if seqlens is None else len(seqlens)  # one state per batch row, or per packed sequence
    forward = {"linear_rnn.chunk_gla": dict(per_channel=True), "linear_rnn.chunk_simple_gla": dict(per_channel=False),
               "linear_rnn.chunk_delta_rule": dict(gated=False), "linear_rnn.chunk_gated_delta_rule": dict(gated=True)}[name]
    if "gate_normalizer" in s:
        forward["gate_normalizer"] = s["gate_normalizer"]
    base = random_inputs(_OFFICIAL[name], seed=seed, L=s["L"], dk=s["dk"], dv=s["dv"], batch=B * H, **forward)

    def official(a):  # (B·H, T, ·) or (B·H, T) -> (B, T, H, ·) or (B, T, H)
        return np.swapaxes(a.reshape((B, H) + a.shape[1:]), 1, 2)

    out = {"q": official(base["q"]), "k": official(base["k"]), "v": official(base["v"])}
    if "log_g" in base:
        out["g"] = official(base["log_g"])
    if "beta" in base:  # fla normalizes q and k in the kernel (use_qk_l2norm_in_kernel=True): raw keys
        out["beta"] = official(base["beta"])
        out["k"] = official(np.random.default_rng((seed, 4)).standard_normal(base["k"].shape))
        out["use_qk_l2norm_in_kernel"] = True
    if states:
        out["initial_state"] = np.random.default_rng((seed, 3)).standard_normal((N, H, s["dk"], s["dv"]))
    if vjp:
        out["do"] = np.random.default_rng((seed, 1)).standard_normal(out["v"].shape)
        if states:
            out["dht"] = np.random.default_rng((seed, 2)).standard_normal((N, H, s["dk"], s["dv"]))
    elif states:
        out["output_final_state"] = True
    if seqlens is not None:
        out["cu_seqlens"] = np.concatenate([[0], np.cumsum(seqlens)]).astype(np.int64)
    return out


#: FlashAttention-2's official interfaces :func:`random_inputs` supports
_FLASH_OFFICIAL = ("attention.flash_attn_func", "attention.flash_attn_varlen_func", "attention.flash_attn_func_vjp",
                   "attention.flash_attn_varlen_func_vjp")


def _window_size(value):
    """FlashAttention's ``window_size``: a pair (tuple or list, kept as given) of ints, a negative bound is none."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"window_size: expected a pair of ints (left, right), -1 for no bound, got {value!r}")
    for w in value:
        as_int(w, "window_size", minimum=-(2**62))
    return list(value) if isinstance(value, list) else value


def _flash_official_inputs(function: str, seed: int, sizes: dict) -> dict:
    """:func:`random_inputs` of FlashAttention-2's interfaces: standard normal q, k, v in its layout (batch, seqlen,
    nheads, headdim), or packed (total, nheads, headdim) with ``cu_seqlens_q``/``cu_seqlens_k`` from the lists
    ``seqlens_q``/``seqlens_k``; options ``causal``, ``window_size``, ``softcap``, ``alibi`` (the paper's geometric
    slopes per head); the backward passes add ``dout`` (the seed's second stream)."""
    sizes = dict(sizes)
    vjp = function.endswith("_vjp")
    varlen = "varlen" in function
    softcap = sizes.pop("softcap", 0.0)  # None, as softmax_attention's default, is no cap too
    opts = {"causal": as_bool(sizes.pop("causal", False), "causal"),
            "window_size": _window_size(sizes.pop("window_size", (-1, -1))),
            "softcap": 0.0 if softcap is None else as_positive_scalar(softcap, "softcap", strict=False)}
    alibi = as_bool(sizes.pop("alibi", False), "alibi")
    rng = np.random.default_rng(seed)
    if varlen:
        seqlens_q = _lengths(sizes.pop("seqlens_q", [100, 37, 129]), "seqlens_q")
        seqlens_k = sizes.pop("seqlens_k", None)
        seqlens_k = seqlens_q if seqlens_k is None else _lengths(seqlens_k, "seqlens_k")
        s = _sizes(function, sizes, {"nheads": 4, "nheads_k": 0, "headdim": 64, "headdim_v": 0})
        if len(seqlens_q) != len(seqlens_k):
            raise ValueError(f"seqlens_k: expected as many sequences as seqlens_q ({len(seqlens_q)}), got {len(seqlens_k)}")
        lead_q, lead_k = (int(sum(seqlens_q)),), (int(sum(seqlens_k)),)
    else:
        s = _sizes(function, sizes, {"batch": 1, "seqlen_q": 256, "seqlen_k": 0, "nheads": 4, "nheads_k": 0,
                                     "headdim": 64, "headdim_v": 0})
        lead_q, lead_k = (s["batch"], s["seqlen_q"]), (s["batch"], s["seqlen_k"] or s["seqlen_q"])
    h, d = s["nheads"], s["headdim"]
    hk, dv = s["nheads_k"] or h, s["headdim_v"] or d
    if h % hk:
        raise ValueError(f"nheads_k: expected a divisor of nheads = {h}, got {hk}")
    out = {"q": rng.standard_normal(lead_q + (h, d)), "k": rng.standard_normal(lead_k + (hk, d)),
           "v": rng.standard_normal(lead_k + (hk, dv))}
    if varlen:
        out["cu_seqlens_q"] = np.concatenate([[0], np.cumsum(seqlens_q)]).astype(np.int64)
        out["cu_seqlens_k"] = np.concatenate([[0], np.cumsum(seqlens_k)]).astype(np.int64)
        out["max_seqlen_q"], out["max_seqlen_k"] = int(max(seqlens_q)), int(max(seqlens_k))
    out.update(opts)
    if alibi:
        from .attention import alibi_geometric_slopes

        out["alibi_slopes"] = alibi_geometric_slopes(h)
    if vjp:
        out["dout"] = np.random.default_rng((seed, 1)).standard_normal(lead_q + (h, dv))
    return out


def _selective_scan_fn_inputs(seed: int, sizes: dict) -> dict:
    """:func:`random_inputs` of ``ssm.selective_scan_fn``: ``random_inputs("ssm.selective_scan")``'s draw (Mamba's
    initialization, ``batch`` sequences) in mamba_ssm's layout (channels before time), with Δ raw — ``delta`` =
    0.5 ξ, ``delta_bias`` the inverse softplus of the per-channel dt0, ``delta_softplus=True`` (the same Δ) —
    and, with ``gated``, the gate ``z`` (standard normal, the seed's fourth stream); ``groups`` G > 0 draws B and C
    per group, (batch, G, n, L) (standard normal, the seed's sixth stream), G dividing ``d_in``."""
    sizes = dict(sizes)
    gated = as_bool(sizes.pop("gated", False), "gated")
    s = _sizes("ssm.selective_scan_fn", sizes, {"L": 1024, "d_in": 8, "n": 16, "batch": 1, "groups": 0})
    if s["groups"] and s["d_in"] % s["groups"]:
        raise ValueError(f"groups: expected a divisor of d_in = {s['d_in']}, got {s['groups']}")
    base = random_inputs("ssm.selective_scan", seed=seed, L=s["L"], d_in=s["d_in"], n=s["n"], batch=s["batch"])
    rng = np.random.default_rng((seed, 4))
    bias = _dt_bias(rng, s["d_in"])
    t = lambda a: np.swapaxes(a, -1, -2)  # noqa: E731 — (batch, L, ·) -> (batch, ·, L)
    out = {"u": t(base["u"]), "delta": 0.5 * rng.standard_normal(t(base["u"]).shape), "A": base["A"],
           "B": t(base["B"]), "C": t(base["C"]), "D": base["D"], "delta_bias": bias,
           "delta_softplus": True}
    if gated:
        out["z"] = np.random.default_rng((seed, 5)).standard_normal(out["u"].shape)
    if s["groups"]:  # channel d reads group d // (d_in / G)
        out["B"], out["C"] = np.random.default_rng((seed, 6)).standard_normal(
            (2, s["batch"], s["groups"], s["n"], s["L"]))
    return out


_STATE_UPDATE_OPTIONS = {"batch": 1, "nheads": 0, "dim": 64, "dstate": 16, "groups": 1, "pool": 0}


def _state_update_inputs(seed: int, sizes: dict) -> dict:
    """:func:`random_inputs` of ``ssm.selective_state_update``: one decoding step (see :func:`random_inputs`)."""
    s = _sizes("ssm.selective_state_update", dict(sizes), _STATE_UPDATE_OPTIONS)
    H, G, b = s["nheads"], s["groups"], s["batch"]
    if H and H % G:
        raise ValueError(f"groups: expected a divisor of nheads = {H}, got {G}")
    if not H and G != 1:
        raise ValueError(f"groups: Mamba's layout (nheads = 0) has one group, got {G}")
    if s["pool"] and s["pool"] < b:
        raise ValueError(f"pool: expected at least batch = {b} states, got {s['pool']}")
    rng = np.random.default_rng(seed)
    lead = (b, H, s["dim"]) if H else (b, s["dim"])
    bias = _dt_bias(rng, lead[1:])
    if H:
        A = np.broadcast_to(-np.exp(rng.standard_normal(H))[:, None, None], (H, s["dim"], s["dstate"])).copy()
    else:
        A = -np.broadcast_to(np.arange(1.0, s["dstate"] + 1), (s["dim"], s["dstate"])).copy()  # S4D-real
    bc = (b, G, s["dstate"]) if H else (b, s["dstate"])
    out = {"state": rng.standard_normal(((s["pool"] or b),) + lead[1:] + (s["dstate"],)),
           "x": rng.standard_normal(lead), "dt": 0.5 * rng.standard_normal(lead), "A": A,
           "B": rng.standard_normal(bc), "C": rng.standard_normal(bc), "D": np.ones(lead[1:]),
           "z": rng.standard_normal(lead), "dt_bias": bias, "dt_softplus": True}
    if s["pool"]:
        out["state_batch_indices"] = rng.permutation(s["pool"])[:b]
    return out


#: the functions :func:`random_inputs` supports
RANDOM_INPUTS = ("attention.softmax_attention", "attention.flash_attention", "attention.softmax_attention_vjp",
                 "random_features.linear_attention", "random_features.performer_attention", "ssm.selective_scan",
                 "linear_rnn.ssd", "linear_rnn.gated_linear_attention", "linear_rnn.retention", "linear_rnn.delta_rule",
                 "iir.sos_filter", "iir.biquad_filter", "ssm.selective_scan_fn", "ssm.selective_scan_fn_vjp",
                 "ssm.selective_state_update",
                 *_VJP_OUTPUTS, *_OFFICIAL, *_FLASH_OFFICIAL)

_ATTENTION_OPTIONS = {"N": 256, "M": 0, "d": 64, "dv": 0, "heads": 0, "batch": 0, "kv_heads": 0, "causal": False,
                      "window": 0, "alibi": False, "softcap": None, "causal_alignment": None}
_RECURRENCE = {"L": 1024, "dk": 64, "dv": 64}
_FLA_OPTIONS = {"L": 1024, "H": 4, "dk": 64, "dv": 64, "batch": 1, "gate_normalizer": 16.0, "states": False,
                "seqlens": None}
_FLASH_OPTIONS = {"nheads": 4, "nheads_k": 0, "headdim": 64, "headdim_v": 0, "causal": False, "window_size": (-1, -1),
                  "softcap": 0.0, "alibi": False}

#: every option :func:`random_inputs` takes, per forward function, with its default (a backward pass takes its
#: forward function's); any other keyword is refused, naming it, rather than ignored
_RANDOM_OPTIONS = {
    "attention.softmax_attention": _ATTENTION_OPTIONS,
    "attention.flash_attention": {**_ATTENTION_OPTIONS, "block_q": 64, "block_k": 64},
    "random_features.linear_attention": {"N": 1024, "d": 16, "dv": 0, "batch": 0, "causal": True},
    "random_features.performer_attention": {"N": 1024, "d": 64, "dv": 0, "m": 256, "batch": 0, "causal": True},
    "ssm.selective_scan": {"L": 1024, "d_in": 8, "n": 16, "batch": 0, "discretization": "mamba"},
    "ssm.selective_scan_fn": {"L": 1024, "d_in": 8, "n": 16, "batch": 1, "gated": False, "groups": 0},
    "ssm.selective_state_update": _STATE_UPDATE_OPTIONS,
    "iir.sos_filter": {"N": 4096, "order": 6, "wn": 0.05},
    "iir.biquad_filter": {"N": 4096, "r": 0.999, "theta": 0.3},
    "linear_rnn.ssd": {"L": 1024, "H": 4, "G": 1, "P": 16, "N": 16, "batch": 0, "chunk_size": 64, "states": False},
    "linear_rnn.gated_linear_attention": {**_RECURRENCE, "batch": 0, "per_channel": True, "chunk_size": 64,
                                          "gate_normalizer": 16.0, "states": False},
    "linear_rnn.retention": {**_RECURRENCE, "H": 4, "chunk_size": 64, "states": False},
    "linear_rnn.delta_rule": {**_RECURRENCE, "batch": 0, "gated": False, "chunk_size": 64, "gate_normalizer": 16.0,
                              "states": False},
    "linear_rnn.mamba_chunk_scan_combined": {"L": 1024, "H": 4, "G": 1, "P": 16, "N": 16, "batch": 1, "chunk_size": 64,
                                             "gated": False, "states": False, "seqlens": None},
    "linear_rnn.chunk_gla": _FLA_OPTIONS,
    "linear_rnn.chunk_simple_gla": _FLA_OPTIONS,
    "linear_rnn.chunk_delta_rule": {k: v for k, v in _FLA_OPTIONS.items() if k != "gate_normalizer"},
    "linear_rnn.chunk_gated_delta_rule": _FLA_OPTIONS,
    "attention.flash_attn_func": {"batch": 1, "seqlen_q": 256, "seqlen_k": 0, **_FLASH_OPTIONS},
    "attention.flash_attn_varlen_func": {"seqlens_q": [100, 37, 129], "seqlens_k": None, **_FLASH_OPTIONS},
}


def _forward_of(function: str) -> str:
    """The function whose options a backward pass of :data:`RANDOM_INPUTS` takes (a forward function: itself)."""
    return function if function in _RANDOM_OPTIONS else function.removesuffix("_vjp")


def _unknown_hint(function: str, name: str, options: dict) -> str:
    """Why ``name`` is not an option of ``function``, where a neighbouring family has it ("" otherwise)."""
    if name == "heads":
        heads = next((h for h in ("H", "nheads") if h in options), None)
        if heads:
            return f"the number of heads is {heads} here"
        return f"{function} draws no head axis" + (" (its leading axis is batch)" if "batch" in options else "")
    if name == "batch" and "H" in options:
        return f"{function} draws no batch axis: its leading axis holds the H heads"
    if name == "gate_normalizer":
        return f"{function} draws no gate" + (" (DeltaNet's; chunk_gated_delta_rule has one)"
                                               if "chunk_delta_rule" in function else "")
    if name in ("dtype", "tier"):
        return "random_inputs draws float64 inputs; the precision tier is compare's dtype="
    if name == "chunk_size" and function.startswith("linear_rnn.chunk_"):
        return "fla's kernels use chunks of 64"
    # the libraries' own names of a size (fla's T, K, V; mamba_ssm's seqlen, nheads, headdim, ngroups, dstate):
    # random_inputs keeps one vocabulary across the families, and names its own
    ssm_state = ("N",) if "P" in options else ()  # N is the state size of SSD and mamba, the length of attention
    ours = {"T": ("L",), "K": ("dk",), "V": ("dv",), "seqlen": ("L", "seqlen_q", "N"), "nheads": ("H",),
            "headdim": ("P", "d"), "head_dim": ("P", "d", "headdim"), "ngroups": ("G",), "dstate": ssm_state,
            "d_state": ssm_state}.get(name, ())
    for own in ours:
        if own in options:
            return f"{name} is {own} here" + (" (and seqlen_k)" if own == "seqlen_q" else "")
    return ""


def _check_options(function: str, sizes: dict) -> None:
    """Refuse the keywords that are not options of ``function`` (:data:`_RANDOM_OPTIONS`), naming them."""
    forward = _forward_of(function)
    options = _RANDOM_OPTIONS[forward]
    unknown = sorted(set(sizes) - set(options))
    if unknown:
        those = f" (those of {forward})" if forward != function else ""
        hints = "; ".join(f"{n}: {h}" for n in unknown if (h := _unknown_hint(function, n, options)))
        raise ValueError(f"sizes: unknown {unknown} for {function}{those}; known: "
                         f"{', '.join(f'{k}={v!r}' for k, v in options.items())}" + (f" ({hints})" if hints else ""))


# --------------------------------------------------------------------------------------------
# Command line: python -m refimpl vectors export|verify DIR
# --------------------------------------------------------------------------------------------


def _size_options(pairs) -> dict:
    """``["L=2048", "causal=True", "seqlens=[100, 37]", "discretization=zoh"]`` → the keyword arguments (a
    VALUE that is not a Python literal is a string); ``ValueError`` naming a pair without ``=``."""
    import ast

    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"--size: expected NAME=VALUE, got {pair!r}")
        if key.strip() in out:
            raise ValueError(f"--size: {key.strip()} is given twice ({key.strip()}={out[key.strip()]!r} and {pair!r})")
        text = text.strip()
        text = {"true": "True", "false": "False", "none": "None"}.get(text, text)  # JSON's spelling too
        try:
            out[key.strip()] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[key.strip()] = text
    return out


def main(argv=None) -> int:
    """``python -m refimpl vectors export DIR`` / ``verify DIR``. Exit 0 ok, 1 problems, 2 usage."""
    parser = argparse.ArgumentParser(
        prog="python -m refimpl vectors",
        description="Export or verify refimpl's golden vectors (one .npz per case + manifest.json).",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    p_exp = sub.add_parser("export", help="write the golden vectors to DIR")
    p_exp.add_argument("directory", metavar="DIR")
    p_exp.add_argument("--only", action="append", metavar="TEXT", help="export the cases whose name contains TEXT")
    p_exp.add_argument("--random", metavar="FUNCTION",
                       help="instead, export one case of FUNCTION at sizes of your choosing, every array in full: "
                            "the arguments of random_inputs(FUNCTION, seed=SEED, **sizes) and refimpl's results "
                            "(oracle.random_case), e.g. --random linear_rnn.chunk_gla --seed 0 --size L=2048 "
                            "--size H=4 --size states=True")
    p_exp.add_argument("--seed", type=int, default=0, help="with --random: the seed (default 0)")
    p_exp.add_argument("--size", action="append", default=[], metavar="NAME=VALUE",
                       help="with --random: a size or option of random_inputs, VALUE a Python literal "
                            "(2048, True, [100, 37, 129]) or else a string; repeat for each")
    p_exp.add_argument("--intermediates", action="store_true", help="with --random: store the intermediates too")
    p_ver = sub.add_parser("verify", help="recompute the vectors in DIR and report differences and tampered files")
    p_ver.add_argument("directory", metavar="DIR")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.action == "export":
        names = None
        given = [flag for flag, used in (("--seed", args.seed != 0), ("--size", args.size),
                                         ("--intermediates", args.intermediates)) if used]
        if args.random is None and given:
            print(f"refimpl vectors: {', '.join(given)} only with --random FUNCTION", file=sys.stderr)
            return 2
        if args.random is not None:
            if args.only:
                print("refimpl vectors: --only and --random exclude each other", file=sys.stderr)
                return 2
            try:
                names = [random_case(args.random, seed=args.seed, intermediates=args.intermediates,
                                     **_size_options(args.size))]
            except (TypeError, ValueError) as exc:
                print(f"refimpl vectors: {exc}", file=sys.stderr)
                return 2
        if args.only:
            names = [c.name for c in CASES if any(t in c.name for t in args.only)]
            if not names:
                print(f"refimpl vectors: no case matches --only {args.only}", file=sys.stderr)
                return 2
        try:
            manifest = export(args.directory, cases=names)
        except (ValueError, OSError) as exc:
            print(f"refimpl vectors: {exc}", file=sys.stderr)
            return 2
        total = sum(e["bytes"] for e in manifest["cases"])
        n = len(manifest["cases"])
        print(f"wrote {n} case{'s' if n != 1 else ''} ({total / 1024:.0f} KiB) and manifest.json to {args.directory}")
        others = _unlisted(Path(args.directory), manifest)
        if others:  # an earlier export's files: the new manifest.json does not list (or verify) them
            shown = ", ".join(others[:3]) + (", …" if len(others) > 3 else "")
            print(f"note: {len(others)} other .npz file{'s' if len(others) != 1 else ''} in {args.directory} "
                  f"(an earlier export?) are not in the new manifest.json and will not be verified: {shown}")
        return 0
    try:
        report = verify(args.directory)
    except ValueError as exc:
        print(f"refimpl vectors: {exc}", file=sys.stderr)
        return 2
    print(report)
    return 0 if report.ok else 1
