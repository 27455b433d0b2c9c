"""The golden-case registry of :mod:`refimpl.oracle`: one file per topic module.

Each ``refimpl/_golden/<topic>.py`` declares two lists,

``FUNCTIONS``  the :class:`Function` records of the topic's public computations: a ``run``
               wrapper ``run(args, with_mid) -> {name: ndarray}`` (intermediates first, in the
               order of computation, then the outputs) and the output names. ``called(name,
               *outputs)`` builds the record of a function called directly with the case's
               arguments; the ``call`` text of the manifest is generated from the function's
               signature unless the wrapper adapts the arguments (then it is written out);
``CASES``      the :class:`Case` records: ``Case("module.function/label", seed, build,
               description, …)`` where ``build(rng) -> {argument: value}`` draws the arguments
               from ``numpy.random.default_rng(seed)``. The function is the part of the name
               before ``/``.

Adding a topic = adding one file ``refimpl/_golden/<topic>.py`` with ``FUNCTIONS`` and
``CASES`` (import the record types and shared builders from ``._base``). It is discovered
here automatically (every module of this package whose name does not start with ``_``);
:func:`_check_registry` refuses duplicate names and cases of unregistered functions. Then
re-export the golden vectors with ``python -m refimpl vectors export tests/golden/v2`` (the
files of the existing cases stay byte-identical; ``manifest.json`` gains the new entries).

A minimal topic file::

    '''Golden cases of :mod:`refimpl.linear_rnn`, chapter N (...).'''

    import numpy as np

    from refimpl import linear_rnn

    from ._base import Case, called

    FUNCTIONS = [
        called("linear_rnn.scan", "y"),            # linear_rnn.scan(**args) -> y
    ]

    CASES = [
        Case("linear_rnn.scan/basic", 1301,         # a fixed seed
             lambda rng: {"x": rng.standard_normal((16, 3)), "a": 0.9},
             "what this case exercises"),
    ]

Cases too large to commit (tile-boundary sizes, long sequences) are declared with
``generated("module.function/label", seed, description, **sizes)``: their arguments are
``refimpl.oracle.random_inputs(function, seed=seed, **sizes)`` and the vectors store only a
summary, checked when the case is regenerated (``_golden/at_scale.py``).

A function whose arguments must be adapted gets a wrapper ``run(args, with_mid)`` and a
:class:`Function` record; use ``ordered(intermediates, outputs, with_mid)`` to return
intermediates, and pass ``call="fn(...) -> ..."`` when the arguments differ from the signature.
"""

from __future__ import annotations

import importlib
import pkgutil

from ._base import Case, Function, called, direct, generated, ordered

__all__ = ["Function", "Case", "FUNCTIONS", "CASES", "TOPICS", "called", "direct", "generated", "ordered"]

#: the topic files, in alphabetical order
TOPICS = tuple(
    importlib.import_module(f"{__name__}.{info.name}")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name)
    if not info.name.startswith("_")
)

FUNCTIONS: dict = {f.name: f for topic in TOPICS for f in topic.FUNCTIONS}
CASES: list = [c for topic in TOPICS for c in topic.CASES]


def _check_registry():
    names = [f.name for topic in TOPICS for f in topic.FUNCTIONS]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise RuntimeError(f"golden functions registered twice: {sorted(dup)}")
    names = [c.name for c in CASES]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise RuntimeError(f"duplicate golden case names: {sorted(dup)}")
    for c in CASES:
        if "/" not in c.name or c.function not in FUNCTIONS:
            raise RuntimeError(f"case {c.name!r}: function {c.function!r} is not registered")


_check_registry()
