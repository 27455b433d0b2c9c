"""Shared by the oracle tests of attention, positional and classical: error recording and warnings as errors.

``recorder()`` returns a module's ``WORST_ERRORS`` dict (conftest prints it when
``REFIMPL_WORST_ERRORS=1``) and a ``close`` that asserts like :func:`refimpl._testing.assert_close`
and records the norm-wise relative error under its label.
"""

from __future__ import annotations



from refimpl._testing import assert_close


def recorder():
    """A fresh ``(WORST_ERRORS, close)`` pair for one test module."""
    worst: dict[str, tuple[float, float]] = {}

    def close(actual, desired, *, rtol: float, what: str) -> float:
        err = assert_close(actual, desired, rtol=rtol, what=what)
        worst[what] = (max(worst.get(what, (0.0,))[0], err), rtol)
        return err

    return worst, close
