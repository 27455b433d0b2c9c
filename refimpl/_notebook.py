"""Helpers shared by the chapters: one place for print options, figure style and checks.

Every chapter starts with ``setup_chapter()`` so that stored outputs are identical run after
run (nbval compares them): fixed print options, a fixed figure size and resolution, and
checks that print the *tolerance they passed*, not the machine-dependent error itself.
"""

from __future__ import annotations

import matplotlib as mpl
import numpy as np

from ._testing import assert_close


def setup_chapter() -> None:
    """Fix NumPy printing and the matplotlib style for a chapter."""
    np.set_printoptions(precision=4, suppress=True, linewidth=96, floatmode="maxprec")
    mpl.rcParams.update(
        {
            "figure.figsize": (7.0, 3.4),
            "figure.dpi": 90,
            "savefig.dpi": 90,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "legend.frameon": False,
            "font.size": 9,
        }
    )


def check(what: str, actual, desired, rtol: float) -> None:
    """Assert ``rel_error(actual, desired) <= rtol`` and print a deterministic one-line verdict.

    The printed text names the tolerance, not the measured error: the last digits of a
    float64 error depend on the BLAS and CPU, and stored outputs must not.
    """
    assert_close(actual, desired, rtol=rtol, what=what)
    print(f"✓ {what}: relative error < {rtol:.0e}")


def fmt(x, digits: int = 4) -> str:
    """A float rounded for printing in a stored output."""
    return f"{float(x):.{digits}g}"
