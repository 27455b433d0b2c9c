"""``python -m refimpl bench``: time every loop/vectorized pair, print ratios, scaling and memory.

Absolute times depend on the machine and its load; the numbers to quote are the **ratios**
(loop time / vectorized time, measured in one process, one after the other) and the fitted
**scaling exponents** (slope of log time vs log N). Each case names the target ratio that its
issue asks for; ``--check`` exits non-zero if a target is missed.

Usage::

    python -m refimpl bench                 # the full benchmark (about a minute)
    python -m refimpl bench --quick         # small sizes, seconds (the test suite runs this)
    python -m refimpl bench --only dle --json bench.json

Adding a case: append a ``Case`` to ``CASES`` with a ``setup(quick) -> (args, kwargs)``, the
vectorized and the loop callables, and the issue's target ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import lyapunov, sde, ssm

__all__ = ["Case", "CASES", "run_case", "run", "main"]


@dataclass
class Case:
    """One loop/vectorized pair at one size."""

    name: str
    vectorized: Callable
    loop: Callable | None  # None: time the vectorized function alone (no loop at this size)
    setup: Callable[[bool], tuple]  # quick -> (args, kwargs)
    size: Callable[[bool], str]  # quick -> human-readable size
    target: float | None = None  # the minimum loop/vectorized ratio
    scaling: Callable[[int], tuple] | None = None  # n -> (args, kwargs): vectorized time vs n
    scaling_ns: tuple = ()
    notes: str = ""
    extra: dict = field(default_factory=dict)


def _time(fn, args, kwargs, *, min_time: float = 0.2, min_repeat: int = 3, max_repeat: int = 50) -> float:
    """Best-of-repeats wall time of ``fn(*args, **kwargs)``.

    At least ``min_repeat`` runs: the first call that touches a large new buffer pays for
    page faults (expensive in a virtual machine), which is not the cost of the algorithm.
    """
    best = np.inf
    spent, n = 0.0, 0
    while n < min_repeat or (spent < min_time and n < max_repeat):
        t0 = time.perf_counter()
        fn(*args, **kwargs)
        dt = time.perf_counter() - t0
        best, spent, n = min(best, dt), spent + dt, n + 1
    return best


def _peak_memory(fn, args, kwargs) -> int:
    """Peak bytes allocated during one call (NumPy reports its buffers to tracemalloc)."""
    tracemalloc.start()
    try:
        fn(*args, **kwargs)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ------------------------------------------------------------------------------------- cases
def _eig(d: int, rng: np.random.Generator) -> np.ndarray:
    return -rng.uniform(0.01, 1.0, d) + 1j * rng.normal(0.0, 2.0, d)


def _dle_diag(quick: bool):
    rng = np.random.default_rng(0)
    n_lags, d = (2_000, 16) if quick else (100_000, 64)
    return (_eig(d, rng), rng.uniform(0.1, 1.0, d), np.linspace(0.0, 50.0, n_lags)), {}


def _dle_full(quick: bool):
    rng = np.random.default_rng(1)
    n_lags, d = (50, 8) if quick else (1_000, 64)
    B = rng.normal(size=(d, d)) + 1j * rng.normal(size=(d, d))
    return (_eig(d, rng), B @ B.conj().T / d, np.linspace(0.0, 50.0, n_lags)), {}


def _dle_scaling(n: int):
    rng = np.random.default_rng(0)
    return (_eig(64, rng), rng.uniform(0.1, 1.0, 64), np.linspace(0.0, 50.0, n)), {}


def _iso(quick: bool):
    n = 20_000 if quick else 1_000_000
    return (np.linspace(-20.0, 20.0, n), 0.1, 0.3, 0.5, 0.1), {}


def _sample(quick: bool):
    n, paths = (200, 4) if quick else (5_000, 16)
    t = np.cumsum(np.random.default_rng(2).uniform(0.05, 0.15, n))
    return (sde.spiral_system(0.3, 0.5), t), {"x0": [20.0, 0.0], "size": paths, "rng": 3}


def _discretize(quick: bool):
    n = 200 if quick else 5_000
    t = np.cumsum(np.random.default_rng(4).uniform(0.05, 0.15, n))
    return (sde.spiral_system(0.3, 0.5), t), {}


def _ssm_conv(quick: bool):
    rng = np.random.default_rng(5)
    L, H, N = (64, 4, 8) if quick else (512, 32, 16)
    A, B = ssm.hippo_legs(N)
    steps = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), H))
    disc = [ssm.discretize(A, B, s) for s in steps]
    Ab, Bb = np.stack([d[0] for d in disc]), np.stack([d[1] for d in disc])
    return (rng.normal(size=(L, H)), Ab, Bb, rng.normal(size=(H, N)), np.ones(H)), {}


def _selective(quick: bool):
    rng = np.random.default_rng(6)
    L, d, n = (64, 4, 4) if quick else (512, 32, 16)
    u = rng.normal(size=(L, d))
    delta = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), (L, d)))
    A = -np.broadcast_to(np.arange(1.0, n + 1), (d, n))  # S4D-Real init
    return (u, delta, A, rng.normal(size=(L, n)), rng.normal(size=(L, n)), np.ones(d)), {}


def _s4d(quick: bool):
    rng = np.random.default_rng(7)
    L, N, H = (256, 8, 4) if quick else (16384, 64, 64)
    A = np.broadcast_to(-0.5 + 1j * np.pi * np.arange(N), (H, N))  # S4D-Lin
    C = rng.normal(size=(H, N)) + 1j * rng.normal(size=(H, N))
    step = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), H))
    return (A, 1.0, C, step, L), {"conj_pairs": True}


CASES: list[Case] = [
    Case(
        "dle_covariance (diagonal noise)",
        lyapunov.dle_covariance,
        lyapunov.dle_covariance_loop,
        _dle_diag,
        lambda q: "2e3 lags, d=16" if q else "1e5 lags, d=64",
        target=100.0,
        scaling=_dle_scaling,
        scaling_ns=(10_000, 30_000, 100_000),
    ),
    Case(
        "dle_covariance (full noise)",
        lyapunov.dle_covariance,
        lyapunov.dle_covariance_loop,
        _dle_full,
        lambda q: "50 lags, d=8" if q else "1e3 lags, d=64",
        target=20.0,
    ),
    Case(
        "dle_covariance_backward (diagonal noise)",
        lyapunov.dle_covariance_backward,
        lyapunov.dle_covariance_backward_loop,
        _dle_diag,
        lambda q: "2e3 lags, d=16" if q else "1e5 lags, d=64",
    ),
    Case(
        "isotropic_covariance",
        lyapunov.isotropic_covariance,
        lyapunov.isotropic_covariance_loop,
        _iso,
        lambda q: "2e4 lags" if q else "1e6 lags",
    ),
    Case(
        "sde.discretize (spiral, irregular grid)",
        sde.discretize,
        sde.discretize_loop,
        _discretize,
        lambda q: "N=200" if q else "N=5000",
    ),
    Case(
        "sde.sample (spiral, irregular grid)",
        sde.sample,
        sde.sample_loop,
        _sample,
        lambda q: "N=200, 4 paths" if q else "N=5000, 16 paths",
    ),
    Case(
        "ssm_convolution vs ssm_recurrent (HiPPO)",
        ssm.ssm_convolution,
        ssm.ssm_recurrent,
        _ssm_conv,
        lambda q: "L=64, H=4, N=8" if q else "L=512, H=32, N=16",
        target=50.0,
    ),
    Case(
        "selective_scan vs selective_scan_loop",
        ssm.selective_scan,
        ssm.selective_scan_loop,
        _selective,
        lambda q: "L=64, d_in=4, n=4" if q else "L=512, d_in=32, n=16",
        target=50.0,
    ),
    Case(
        "selective_scan_assoc vs selective_scan_loop",
        ssm.selective_scan_assoc,
        ssm.selective_scan_loop,
        _selective,
        lambda q: "L=64, d_in=4, n=4" if q else "L=512, d_in=32, n=16",
    ),
    Case(
        "s4d_kernel (blocked Vandermonde)",
        ssm.s4d_kernel,
        None,
        _s4d,
        lambda q: "L=256, N=8, H=4" if q else "L=16384, N=64, H=64",
        notes="no loop at this size; peak memory is the point (the full Vandermonde is 1 GiB)",
    ),
]


def run_case(case: Case, quick: bool = False) -> dict:
    """Time one case; returns a JSON-serializable record."""
    args, kwargs = case.setup(quick)
    t_vec = _time(case.vectorized, args, kwargs)
    if case.loop is None:
        t_loop = float("nan")
    else:
        t_loop = _time(case.loop, args, kwargs, min_time=0.05 if quick else 0.0, min_repeat=1)
    record = {
        "name": case.name,
        "size": case.size(quick),
        "vectorized_s": t_vec,
        "loop_s": t_loop,
        "ratio": t_loop / t_vec,
        "target": case.target,
        "peak_bytes_vectorized": _peak_memory(case.vectorized, args, kwargs),
    }
    if case.scaling is not None and not quick:
        ns = np.array(case.scaling_ns, dtype=float)
        times = [_time(case.vectorized, *case.scaling(int(n))) for n in ns]
        record["scaling_ns"] = [int(n) for n in ns]
        record["scaling_s"] = times
        record["scaling_exponent"] = float(np.polyfit(np.log(ns), np.log(times), 1)[0])
    return record


def run(quick: bool = False, only: list[str] | None = None, stream=None) -> list[dict]:
    """Run the selected cases, printing one line each (to ``stream``, default stdout); return the records."""
    stream = sys.stdout if stream is None else stream
    cases = [c for c in CASES if not only or any(o.lower() in c.name.lower() for o in only)]
    print(f"refimpl bench ({'quick' if quick else 'full'}): {len(cases)} cases; ratios = loop / vectorized", file=stream)
    records = []
    for case in cases:
        r = run_case(case, quick)
        records.append(r)
        verdict = ""
        if r["target"] is not None:
            verdict = f"  target ≥ {r['target']:g}×: {'met' if r['ratio'] >= r['target'] else 'MISSED'}"
        scaling = f"  time ~ N^{r['scaling_exponent']:.2f}" if "scaling_exponent" in r else ""
        print(
            f"  {r['name']:<42} {r['size']:<20} vectorized {r['vectorized_s'] * 1e3:9.2f} ms   "
            f"loop {r['loop_s'] * 1e3:10.1f} ms   ratio {r['ratio']:8.1f}×{verdict}{scaling}   "
            f"peak {r['peak_bytes_vectorized'] / 2**20:.1f} MiB",
            file=stream,
            flush=True,
        )
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refimpl bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds); targets are not meaningful")
    parser.add_argument("--only", action="append", metavar="TEXT", help="run cases whose name contains TEXT")
    parser.add_argument("--json", metavar="PATH", help="also write the records as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target ratio is missed")
    args = parser.parse_args(argv)
    records = run(quick=args.quick, only=args.only)
    if not records:
        print("refimpl bench: no case matches --only", file=sys.stderr)
        return 2
    if args.json:
        meta = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine()}
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"meta": meta, "quick": args.quick, "cases": records}, fh, indent=2)
    missed = [r["name"] for r in records if r["target"] is not None and r["ratio"] < r["target"]]
    if args.check and missed and not args.quick:
        print(f"targets missed: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0
