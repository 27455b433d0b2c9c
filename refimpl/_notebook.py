"""Helpers shared by the chapters: one place for print options, figure style and checks.

Every chapter starts with ``setup_chapter()`` so that stored outputs are identical run after
run (nbval compares them): fixed print options, a fixed figure size and resolution, and
checks that print the *tolerance they passed*, not the machine-dependent error itself.
"""

from __future__ import annotations

import matplotlib as mpl
import numpy as np

from . import _blocking
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


def cost_at_scale(fn, make_args, sizes, *, target: int = 10**6, repeat: int = 3, time_order: float | None = None,
                  memory_order: float | None = None) -> dict:
    """Measure time and peak memory of ``fn`` at a few sizes and extrapolate to ``N = target``.

    For each ``n`` in ``sizes`` the call ``fn(*args, **kwargs)`` with ``(args, kwargs) =
    make_args(n)`` (the inputs of every size are made first, in the order of ``sizes``) has its
    peak of newly allocated memory measured with ``tracemalloc`` (NumPy reports its buffers to
    it; the inputs, made before the measurement, are not counted) on a call run in one thread
    (``_blocking.THREADS = 1``): functions that share work between threads give each thread its
    own fixed workspace, and whether those allocations overlap in time depends on the
    scheduling, so the multithreaded peak varies from call to call by up to one workspace per
    extra thread; the one-thread peak does not. That traced call is also each size's untimed
    first call (page faults of new arrays, first-call costs). The time is then the best of
    ``repeat`` calls taken in rounds, each round timing every size once (in alternating order):
    on a shared machine a burst of load then hits all sizes alike instead of one size's calls
    (timed back to back, a 30 % burst on one size bent a fitted exponent from 1 to 1.4, or below
    0). Both are fitted by least squares on logs, ``t = c_t n^p_t``
    and ``m = c_m n^p_m``, and evaluated at ``target``. The fit is the chapters' "measured
    constants": the exponents say how the cost grows, the constants belong to this machine,
    so a cell printing them carries ``# NBVAL_IGNORE_OUTPUT``.

    At the sizes a chapter can afford the fits can bend (a quadratic algorithm measured at
    N = 256 … 1024 may fit N^1.1; plausibly fixed per-call costs and cache effects, not measured
    here), so a power law fitted there extrapolates poorly. A chapter that knows the orders passes them: ``time_order`` (the
    exponent of the operation count, e.g. 1 for a scan, 2 for attention) extrapolates the time of
    the largest size, ``t(target) = t(N_max) (target / N_max)^time_order``; ``memory_order`` fits
    ``m = a + b N^memory_order`` (a fixed workspace plus arrays of that order) and evaluates it at
    ``target``. The fitted exponents are still returned and printed, as measurements.

    Returns a dict with ``sizes``, ``times`` (s), ``peaks`` (bytes), ``time_exponent``,
    ``memory_exponent``, ``time_at_target`` (s), ``memory_at_target`` (bytes), ``target``,
    ``time_order`` and ``memory_order`` (None: the power-law fits give the values at ``target``);
    also the affine memory fit ``m = memory_fixed + memory_per_item · N`` and its value at
    ``target``, ``memory_at_target_affine``.
    """
    import time
    import tracemalloc

    sizes = [int(n) for n in sizes]
    if len(sizes) < 2 or len(set(sizes)) < 2:
        raise ValueError("sizes: need at least two distinct sizes to fit a power law")
    inputs = [make_args(n) for n in sizes]
    peaks = []
    for args, kwargs in inputs:  # the peak, on each size's first call (one thread, traced)
        threads, _blocking.THREADS = _blocking.THREADS, 1
        tracemalloc.start()
        try:
            fn(*args, **kwargs)
            peaks.append(max(tracemalloc.get_traced_memory()[1], 1))
        finally:
            tracemalloc.stop()
            _blocking.THREADS = threads
    times = [np.inf] * len(sizes)
    for r in range(repeat):  # rounds over all sizes, in alternating order
        for i in range(len(sizes)) if r % 2 == 0 else reversed(range(len(sizes))):
            args, kwargs = inputs[i]
            t0 = time.perf_counter()
            fn(*args, **kwargs)
            times[i] = min(times[i], time.perf_counter() - t0)
    logn = np.log(sizes)
    pt, lt = np.polyfit(logn, np.log(times), 1)
    pm, lm = np.polyfit(logn, np.log(peaks), 1)
    # memory is often a fixed workspace plus arrays that grow with N: fit that form too, m = a + b·N
    n = np.asarray(sizes, dtype=float)
    b, a = np.polyfit(n, np.asarray(peaks, dtype=float), 1)
    if time_order is None:
        time_at = float(np.exp(lt + pt * np.log(target)))
    else:  # the largest size, where fixed costs weigh least, scaled by the operation count's order
        last = int(np.argmax(sizes))
        time_at = float(times[last] * (target / sizes[last]) ** time_order)
    if memory_order is None:
        memory_at = float(np.exp(lm + pm * np.log(target)))
    else:  # m = a + b N^order
        bo, ao = np.polyfit(n**memory_order, np.asarray(peaks, dtype=float), 1)
        memory_at = float(ao + bo * float(target) ** memory_order)
    return {
        "sizes": sizes,
        "times": times,
        "peaks": peaks,
        "time_exponent": float(pt),
        "memory_exponent": float(pm),
        "time_at_target": time_at,
        "memory_at_target": memory_at,
        "time_order": time_order,
        "memory_order": memory_order,
        "memory_fixed": float(a),
        "memory_per_item": float(b),
        "memory_at_target_affine": float(a + b * target),
        "target": int(target),
    }


def print_cost(name: str, cost: dict) -> None:
    """Print :func:`cost_at_scale`'s measurements and its extrapolation as a small table."""

    def _bytes(b: float) -> str:
        for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
            if b < 1024 or unit == "TiB":
                return f"{b:.3g} {unit}"
            b /= 1024
        return f"{b:.3g} TiB"  # pragma: no cover

    t_order, m_order = cost.get("time_order"), cost.get("memory_order")
    print(f"{name}: fitted over these sizes, time ~ N^{cost['time_exponent']:.2f}, memory ~ N^{cost['memory_exponent']:.2f}")
    for n, t, m in zip(cost["sizes"], cost["times"], cost["peaks"]):
        print(f"  N = {n:>9,d}: {t * 1e3:10.2f} ms  {_bytes(m):>10}")
    # with a time order, the time at the largest size is that size's measurement itself (cost_at_scale)
    measured = t_order is not None and cost["target"] == max(cost["sizes"])
    how = ["time as measured above" if measured else
           f"time ∝ N^{t_order:g} from the largest size" if t_order is not None else "time: fitted power law",
           f"memory a + b·N^{m_order:g}" if m_order is not None else "memory: fitted power law"]
    print(f"  N = {cost['target']:>9,d}: {cost['time_at_target']:10.3g} s   {_bytes(max(cost['memory_at_target'], 0.0)):>10}"
          f"  ({'' if measured else 'extrapolated: '}{'; '.join(how)})")
    if m_order is None:
        print(f"  memory as fixed + per-item: {_bytes(max(cost['memory_fixed'], 0.0))} + {cost['memory_per_item']:.3g} B·N"
              f" -> {_bytes(max(cost['memory_at_target_affine'], 0.0))} at N = {cost['target']:,d}")
