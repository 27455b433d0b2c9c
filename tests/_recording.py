"""Shared by the oracle tests: recording the worst error of each oracle comparison.

``recorder()`` returns a module's ``WORST_ERRORS`` dict (conftest prints it when
``REFIMPL_WORST_ERRORS=1``), a ``close`` that asserts like :func:`refimpl._testing.assert_close`
and records the norm-wise relative error under its label, and the ``record`` it uses.
"""

from __future__ import annotations



from refimpl._testing import assert_close


def recorder():
    """A fresh ``(WORST_ERRORS, close, record)`` triple for one test module.

    ``record(what, err, tol)`` keeps the worst ``err`` seen under ``what``; ``close`` asserts
    like :func:`refimpl._testing.assert_close` and records the norm-wise relative error.
    """
    worst: dict[str, tuple[float, float]] = {}

    def record(what: str, err: float, tol: float) -> float:
        worst[what] = (max(worst.get(what, (0.0,))[0], err), tol)
        return err

    def close(actual, desired, *, rtol: float, what: str) -> float:
        return record(what, assert_close(actual, desired, rtol=rtol, what=what), rtol)

    return worst, close, record
