"""The two record types of the golden-case registry and the helpers the topic files share.

Glossary (the names used by every ``run`` wrapper of :mod:`refimpl._golden`):

``args``        the case's arguments, ``{name: value}``, exactly what a user's callable receives
                as keywords;
``with_mid``    whether the wrapper also returns the intermediates (``Case.intermediates``);
``run``         ``run(args, with_mid) -> {name: ndarray}``: intermediates first (in the order of
                computation), then the outputs;
``rng``         the ``numpy.random.Generator`` a case's builder draws its arguments from.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .._testing import ORACLE, SELF


@dataclass(frozen=True)
class Function:
    """A public computation of refimpl as the oracle sees it.

    ``run(args, intermediates)`` evaluates refimpl on the keyword arguments ``args`` and returns
    an ordered ``{name: ndarray}``: the intermediates first (in order of computation, only if
    ``intermediates`` is true), then the outputs named in ``outputs``. ``call`` documents how a
    user's callable is called (always with the case's arguments as keywords); when it is not
    given it is generated from the signature of the refimpl function ``name`` names (options
    ``return_*`` and the parameters listed in ``skip`` left out) and from ``outputs`` and
    ``intermediates``. ``optional`` names the outputs a callable may leave out: those the refimpl
    function returns only on request (``return_last_state``) and, for a backward pass, the
    gradients of optional inputs (``dh0`` of ``initial_state``, ``dD`` of ``D``, …). They come after
    the others; a callable may leave them out (a tuple without the trailing ones, one array for a
    single output, or a dict without them) or return None in their place; they are then reported
    as not returned and not judged. ``call`` marks them: ``-> (dq, dk, dv, dg[, dh0])``.

    Examples
    --------
    >>> from refimpl.oracle import FUNCTIONS
    >>> f = FUNCTIONS['lyapunov.phi1']
    >>> f.outputs, f.call
    (('phi',), 'fn(z, tau) -> phi')
    >>> FUNCTIONS['linear_rnn.chunk_gla_vjp'].call.split(' -> ')[1]
    '(dq, dk, dv, dg[, dh0])'
    """

    name: str
    run: Callable[[dict, bool], dict]
    outputs: tuple
    call: str | None = None
    intermediates: tuple = ()
    skip: tuple = ()
    optional: tuple = ()

    def __post_init__(self):
        if self.call is None:
            object.__setattr__(self, "call", call_string(self.name, self.outputs, self.intermediates, self.skip,
                                                         self.optional))


def call_string(name: str, outputs: tuple, intermediates: tuple = (), skip: tuple = (), optional: tuple = ()) -> str:
    """``"fn(p1, p2, …) -> (out[, opt]); intermediates a, b"`` from the signature of ``refimpl.<name>``,
    the ``optional`` outputs in brackets."""
    params = [p for p in inspect.signature(resolve(name)).parameters
              if not p.startswith("return_") and p not in skip]
    sep = lambda i: ", " if i else ""  # noqa: E731
    outs = "".join(f"[{sep(i)}{o}]" if o in optional else f"{sep(i)}{o}" for i, o in enumerate(outputs))
    outs = outs if len(outputs) == 1 else f"({outs})"
    text = f"fn({', '.join(params)}) -> {outs}"
    if intermediates:
        text += f"; intermediate{'s' if len(intermediates) > 1 else ''} {', '.join(intermediates)}"
    return text


@dataclass(frozen=True)
class Case:
    """One golden case: deterministic arguments ``build(np.random.default_rng(seed))``.

    The function is the part of ``name`` before ``/`` (``"afa.afa/long_sequence"`` is a case of
    ``"afa.afa"``).

    Examples
    --------
    >>> from refimpl.oracle import CASES
    >>> case = next(c for c in CASES if c.name == 'lyapunov.phi1/near_zero')
    >>> case.function, case.seed, case.file
    ('lyapunov.phi1', 201, 'lyapunov.phi1__near_zero.npz')
    """

    name: str
    seed: int
    build: Callable[[np.random.Generator], dict]
    description: str
    rtol: float = SELF
    atol: float = 0.0
    regen_rtol: float = ORACLE
    intermediates: bool = True
    ulps: float = 4.0  # low dtypes: floor of the ratio rule, in units of the dtype's epsilon
    # low dtypes: maps the rounded arguments back onto a constraint refimpl validates (unit vectors,
    # rows summing to 1) before the plain evaluation of Eq. (15.3); the user's callable gets them as rounded
    constrain: Callable[[dict], dict] | None = None
    outputs: tuple | None = None  # overrides Function.outputs (e.g. ``zf`` when ``zi`` is given)
    #: a case generated at verify time: its arguments are ``random_inputs(function, seed=seed, **sizes)``
    #: and only a summary of them and of the results is written (see :func:`generated`)
    sizes: dict | None = None
    #: a case at sizes of the user's choosing (:func:`refimpl.oracle.random_case`), not registered: its arguments
    #: are ``random_inputs(function, seed=seed, **random)``, written in full, and the manifest records them so
    #: that :func:`refimpl.oracle.verify` can rebuild the case
    random: dict | None = None

    @property
    def function(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def file(self) -> str:
        return self.name.replace("/", "__") + ".npz"

    def output_names(self) -> tuple:
        from . import FUNCTIONS

        return self.outputs if self.outputs is not None else FUNCTIONS[self.function].outputs


# ---- run wrappers ---------------------------------------------------------------------------


def direct(fn, *names, **fixed):
    """``run`` for a function called as ``fn(**args, **fixed)``, its result(s) named ``names``."""

    def run(args, with_mid):
        res = fn(**args, **fixed)
        if hasattr(res, "_fields"):  # a named tuple
            res = tuple(res)
        return dict(zip(names, res if isinstance(res, tuple) else (res,)))

    return run


def mid_pair(out, with_mid: bool) -> tuple:
    """``(value, intermediate)`` of a call made with ``return_<intermediate>=with_mid``: the pair it returns, or
    its one value and None. Wrappers ask for an intermediate only when it is wanted: attention weights are N × M
    per head, and ``compare(..., inputs=random_inputs(..., N=4096, heads=8))`` for a callable that returns the
    output alone formed 1 GiB of them (2.9 s against 1.2 s without)."""
    return out if with_mid else (out, None)


def ordered(mid: dict, out: dict, with_mid: bool) -> dict:
    """The intermediates (if asked for) followed by the outputs."""
    res = dict(mid) if with_mid else {}
    res.update(out)
    return res


# ---- builders shared by several topics --------------------------------------------------------

#: three modes: a rotating decay, a slow fast-rotating one and a real one
LAM3 = np.array([-0.3 + 1.0j, -0.05 - 2.0j, -1.2 + 0.0j])


def cplx(rng, *shape):
    """Complex standard normal entries (real and imaginary parts independent)."""
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


def spd(rng, d, scale=1.0):
    """A random Hermitian positive definite ``d × d`` matrix, ``scale · G Gᴴ / d``."""
    G = rng.standard_normal((d, d)) + 1j * rng.standard_normal((d, d))
    return scale * (G @ G.conj().T) / d


def skew(rng, d):
    """A random real skew-symmetric ``d × d`` matrix (a rotation generator Ω)."""
    W = rng.standard_normal((d, d))
    return (W - W.T) / 2


def unit(x):
    """``x`` normalized to unit Euclidean norm along the last axis."""
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def renormalize(*names, by="norm"):
    """``Case.constrain``: the named float arguments re-normalized in float64 (unit norm or unit row sum)."""

    def constrain(args):
        out = dict(args)
        for n in names:
            x = np.asarray(out[n], dtype=np.float64)
            out[n] = unit(x) if by == "norm" else x / x.sum(axis=-1, keepdims=True)
        return out

    return constrain


def resolve(name: str):
    """The refimpl callable ``"module.function"`` names."""
    module, attr = name.split(".", 1)
    return getattr(importlib.import_module(f"refimpl.{module}"), attr)


def called(name: str, *outputs, call: str | None = None, skip: tuple = (), optional: tuple = (), **fixed) -> Function:
    """The :class:`Function` of a refimpl function called directly with the case's arguments.

    ``called("lyapunov.phi1", "phi")`` runs ``refimpl.lyapunov.phi1(**args)`` and names its
    result ``phi``; ``fixed`` keywords are added to every call; ``optional`` outputs are those the
    refimpl function returns only on request (see :class:`Function`).
    """
    return Function(name, direct(resolve(name), *outputs, **fixed), tuple(outputs), call=call, skip=skip,
                    optional=tuple(optional))


def generated(name: str, seed: int, description: str, *, intermediates: bool = False, **sizes) -> Case:
    """A case too large to commit: its arguments are ``refimpl.oracle.random_inputs(function, seed=seed, **sizes)``.

    :func:`refimpl.oracle.export` writes only its seed, sizes, scalar arguments and a summary of
    every array (shape, max |x|, 2-norm, 256 entries at fixed positions); :func:`refimpl.oracle.verify`
    regenerates the arguments, recomputes the results and checks them against the summary.
    Intermediates are off by default (the big (N, M) ones would dominate the cost).

    Examples
    --------
    >>> case = generated("ssm.selective_scan/long_L9", 5, "a long scan", L=9, d_in=2, n=3)
    >>> case.sizes, sorted(case.build(None))[:3]
    ({'L': 9, 'd_in': 2, 'n': 3}, ['A', 'B', 'C'])
    """
    function = name.split("/", 1)[0]

    def build(rng):
        from ..oracle import random_inputs  # the registry is imported by the oracle: resolved at call time

        return random_inputs(function, seed=seed, **sizes)

    return Case(name, seed, build, description, intermediates=intermediates, sizes=dict(sizes))
