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

from . import afa, attention, classical, focus, iir, kalman, lyapunov, mixing, positional, random_features, rt_sde, sde, ssm
from ._testing import rel_error

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
    # Optional: a reference computation to compare the vectorized time with (e.g. the two matrix
    # products inside softmax attention); reported as vectorized / reference, which must be
    # <= ``reference_target``. A case may also have ``loop=None`` (no loop timing).
    reference: Callable | None = None
    reference_name: str = ""
    reference_target: float | None = None


def _time(fn, args, kwargs, *, min_time: float = 0.2, min_repeat: int = 3, max_repeat: int = 50) -> tuple:
    """Best-of-repeats wall time of ``fn(*args, **kwargs)`` and the last result: ``(seconds, result)``.

    At least ``min_repeat`` runs: the first call that touches a large new buffer pays for
    page faults (expensive in a virtual machine), which is not the cost of the algorithm.
    """
    best = np.inf
    spent, n = 0.0, 0
    result = None
    while n < min_repeat or (spent < min_time and n < max_repeat):
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        dt = time.perf_counter() - t0
        best, spent, n = min(best, dt), spent + dt, n + 1
    return best, result


def _agreement(a, b) -> float:
    """Largest norm-wise relative difference between two results (arrays or tuples of arrays)."""
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    return max(rel_error(x, y) for x, y in zip(a, b))


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


def _kalman_model(n: int, seed: int):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    F = 0.95 * q  # spectral radius 0.95
    B = rng.normal(size=(n, n))
    return F, np.eye(2, n), B @ B.T / n + 0.1 * np.eye(n), 0.5 * np.eye(2)


def _kalman_batch(quick: bool):
    batch, N, n = (8, 100, 4) if quick else (256, 1000, 4)
    F, H, Q, R = _kalman_model(n, 5)
    z = np.random.default_rng(6).normal(size=(batch, N, 2))
    return (z, F, H, Q, R, np.zeros(n), np.eye(n)), {}


def _kalman_long(quick: bool):
    N, n = (2_000, 4) if quick else (100_000, 4)
    F, H, Q, R = _kalman_model(n, 7)
    z = np.random.default_rng(8).normal(size=(N, 2))
    return (z, F, H, Q, R, np.zeros(n), np.eye(n)), {}


def _qkv(n: int, d: int, seed: int = 5):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(size=(n, d)), rng.normal(size=(n, d))


def _sdpa(quick: bool):
    return _qkv(32 if quick else 256, 16 if quick else 64), {}


def _sdpa_large(quick: bool):
    return _qkv(256 if quick else 2048, 64), {}


def _two_matmuls(q, k, v):
    """The two matrix products of softmax attention alone (QK^T, then an (N, M) matrix times V)."""
    s = q @ k.T
    return s @ v


def _mha(quick: bool):
    rng = np.random.default_rng(6)
    n, d, h = (16, 16, 2) if quick else (128, 64, 8)
    w = rng.normal(size=(4, d, d)) / np.sqrt(d)
    return (rng.normal(size=(n, d)), *w, h), {"causal": True}


def _rope(quick: bool):
    n, d = (64, 16) if quick else (1024, 64)
    return (np.random.default_rng(7).normal(size=(n, d)),), {}


def _matched(quick: bool):
    n, L = (256, 16) if quick else (4096, 64)
    rng = np.random.default_rng(8)
    return (rng.normal(size=n) + 1j * rng.normal(size=n), classical.lfm_pulse(L, 0.5)), {}


def _biquad(quick: bool):
    n, d = (2_000, 16) if quick else (100_000, 16)
    x = np.random.default_rng(5).normal(size=(n, d))
    return ([0.2, 0.3, 0.1], [1.0, -1.6, 0.8], x), {}


def _sosfilt(b, a, x):
    """SciPy's compiled biquad (Cython ``sosfilt``), the speed the issue names as the bar."""
    import scipy.signal

    return scipy.signal.sosfilt(np.concatenate([b, a])[None, :], x, axis=-2)


def _sos(quick: bool):
    n, d = (2_000, 16) if quick else (100_000, 16)
    sos = iir.butter(8, [0.1, 0.2], btype="bandpass", output="sos")
    return (sos, np.random.default_rng(6).normal(size=(n, d))), {}


def _ssm(quick: bool):
    n, d = (2_000, 16) if quick else (100_000, 16)
    lam, B, C, D = iir.biquad_to_ssm([0.2, 0.3, 0.1], [1.0, -1.6, 0.8])
    return (lam, B, C, D, np.random.default_rng(7).normal(size=(n, d))), {}


def _freq(quick: bool):
    return iir.butter(8, 0.3, output="ba") + (2_048 if quick else 65_536,), {}


def _afa_pairs(x):
    return np.stack([x.real, x.imag], axis=-1).reshape(x.shape[:-1] + (-1,))


def _isotropic_afa(quick: bool):
    rng = np.random.default_rng(9)
    n, d = (256, 16) if quick else (2048, 64)
    q, k, v = (rng.normal(size=(n, d)) + 1j * rng.normal(size=(n, d)) for _ in range(3))
    kw = dict(mu=0.05, omega=rng.normal(size=d), sigma2=0.1, eta2=0.5, gamma2=0.1, nu=float(d))
    return (q / np.sqrt(d), k / np.sqrt(d), v), kw


def _softmax_on_pairs(q, k, v, **_):
    """Causal softmax attention on the real (N, 2d) form of the same tokens (the cost to match)."""
    return attention.softmax_attention(_afa_pairs(q), _afa_pairs(k), _afa_pairs(v), causal=True)


def _tensor_afa(quick: bool):
    rng = np.random.default_rng(10)
    n, d = (24, 4) if quick else (128, 8)
    q, k, v = (rng.normal(size=(n, d)) + 1j * rng.normal(size=(n, d)) for _ in range(3))
    lam = -rng.uniform(0.0, 0.3, d) + 1j * rng.normal(size=d)
    kw = dict(eigvals=lam, sigma2=rng.uniform(0.1, 0.5, d), eta2=0.5, gamma2=0.1, nu=4.0)
    return (q, k, v), kw


def _rt_attention(quick: bool):
    rng = np.random.default_rng(11)
    n, d = (16, 3) if quick else (96, 4)
    x = rng.normal(size=(3, n, d))
    w = rng.normal(size=(d, d))
    kw = dict(mu=0.1, omega=w - w.T, sigma2_perp=0.2, sigma2_par=0.05, eta2_perp=0.3, eta2_par=0.1,
              gamma2_perp=0.1, gamma2_par=0.1, nu=4.0)
    return (x[0], x[1], x[2]), kw


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


def _fft_conv(quick: bool):
    return _fft_conv_scaling(512 if quick else 4096)


def _fft_conv_scaling(n: int):
    rng = np.random.default_rng(12)
    return (rng.normal(size=(n, 16)), rng.normal(size=(n, 16))), {}


def _fnet(quick: bool):
    n, d = (16, 8) if quick else (128, 32)
    return (np.random.default_rng(13).normal(size=(n, d)),), {}


def _sgu(quick: bool):
    rng = np.random.default_rng(14)
    n, c = (16, 8) if quick else (128, 32)
    return (rng.normal(size=(n, c)), rng.normal(size=(n, n)) / n, np.ones(n)), {"causal": True}



_FOCUS_PARAMS: dict = {}


def _focus_params(d: int) -> dict:
    if d not in _FOCUS_PARAMS:
        _FOCUS_PARAMS[d] = focus.init_focus_params(d, kernel_len=256, rng=11)
    return _FOCUS_PARAMS[d]


def _focus_filter(variant: str):
    def setup(quick: bool):
        rng = np.random.default_rng(12)
        L, d, R = (128, 2, 16) if quick else ((512, 4, 32) if variant != "causal-recursive" else (8192, 8, 64))
        theta = rng.uniform(0.0, 1.0, size=(L // R, d, 1, 2))
        return (rng.normal(size=(L, d)), theta), {"variant": variant}

    return setup


def _focus_layer(quick: bool):
    L, d = (64, 2) if quick else (256, 4)
    x = np.random.default_rng(13).normal(size=(L, d))
    return (x, _focus_params(d)), {"chunk_size": 32, "n_bins": L // 32}


def _focus_scaling(n: int):
    x = np.random.default_rng(14).normal(size=(n, 16))
    return (x, _focus_params(16)), {"chunk_size": 64, "n_bins": n // 64}  # fixed M = R = 64


def _sdpa_causal_scaling(n: int):
    x = np.random.default_rng(15).normal(size=(n, 16))
    return (x, x, x), {"causal": True}


# random_features (issue 7): scaling over N = 2^10 … 2^15, d = 64, m = 256
_EFFICIENT_NS = tuple(2**p for p in range(10, 16))


def _efficient(kind: str, causal: bool):
    """(setup, scaling) for one efficient-attention case; the loop twins run at small N."""
    kw = {"causal": causal}
    if kind == "performer":
        kw.update(n_features=256, rng=0)

    def setup(quick: bool):
        n = (64 if quick else 512) if kind == "linear" else (32 if quick else 256)
        return _qkv(n, 16 if quick else 64), kw

    def scaling(n: int):
        return _qkv(n, 64), kw

    return setup, scaling


def _efficient_case(kind: str, causal: bool) -> Case:
    name = "linear_attention" if kind == "linear" else "performer_attention"
    extra = ", m=256" if kind == "performer" else ""
    small, big = ("N=64, d=16", "N=512, d=64") if kind == "linear" else ("N=32, d=16", "N=256, d=64")
    setup, scaling = _efficient(kind, causal)
    return Case(
        f"{name} ({'causal' if causal else 'non-causal'}{extra}) vs {'RNN ' if causal else ''}loop twin",
        getattr(random_features, name),
        getattr(random_features, name + "_loop"),
        setup,
        lambda q: small if q else big + extra,
        scaling=scaling,
        scaling_ns=_EFFICIENT_NS,
        notes=f"issue 7: fitted time exponent over N = 2^10 … 2^15 (d = 64{extra}) at most 1.15",
    )


def _lsh_kw(n: int, causal: bool = False) -> dict:
    return {"n_buckets": max(2, n // 64), "n_rounds": 2, "chunk_size": 64, "rng": 0, "causal": causal}


def _lsh(quick: bool):
    n = 64 if quick else 256
    q, _, v = _qkv(n, 16 if quick else 64)
    return (q, v), {**_lsh_kw(n), "chunk_size": 16 if quick else 64}


def _lsh_scaling(n: int):
    q, _, v = _qkv(n, 64)
    return (q, v), _lsh_kw(n)


def _sdpa_scaling(n: int):
    return _qkv(n, 64), {}


def _sdpa_mid(quick: bool):
    return _sdpa_scaling(256 if quick else 1024)


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
        "kalman filter+smoother (batched vs loop twin)",
        kalman.rts_smoother,
        kalman.rts_smoother_loop,
        _kalman_batch,
        lambda q: "8×(N=100), n=4" if q else "256×(N=1000), n=4",
        target=30.0,
    ),
    Case(
        "kalman smoother: parallel scan vs recursion",
        kalman.rts_smoother_scan,
        kalman.rts_smoother,
        _kalman_long,
        lambda q: "N=2e3, n=4" if q else "N=1e5, n=4",
        notes="ratio = recursion time / scan time (both vectorized; the scan has O(log N) depth)",
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
        "softmax_attention",
        attention.softmax_attention,
        attention.softmax_attention_loop,
        _sdpa,
        lambda q: "N=32, d=16" if q else "N=256, d=64",
        target=100.0,
    ),
    Case(
        "softmax_attention vs its two matmuls",
        attention.softmax_attention,
        None,
        _sdpa_large,
        lambda q: "N=256, d=64" if q else "N=2048, d=64",
        reference=_two_matmuls,
        reference_name="QK^T and AV",
        reference_target=2.0,
    ),
    Case(
        "multihead_attention (causal)",
        attention.multihead_attention,
        attention.multihead_attention_loop,
        _mha,
        lambda q: "N=16, d=16, h=2" if q else "N=128, d=64, h=8",
    ),
    Case(
        "rope",
        positional.rope,
        positional.rope_loop,
        _rope,
        lambda q: "N=64, d=16" if q else "N=1024, d=64",
    ),
    Case(
        "matched_filter (FFT vs correlation sums)",
        classical.matched_filter,
        classical.matched_filter_loop,
        _matched,
        lambda q: "N=256, L=16" if q else "N=4096, L=64",
    ),
    Case(
        "afa (tensor form) vs loop twin",
        afa.afa,
        afa.afa_loop,
        _tensor_afa,
        lambda q: "N=24, d=4" if q else "N=128, d=8",
        target=50.0,
    ),
    Case(
        "isotropic_afa vs causal softmax attention",
        afa.isotropic_afa,
        None,
        _isotropic_afa,
        lambda q: "N=256, d=16" if q else "N=2048, d=64",
        reference=_softmax_on_pairs,
        reference_name="softmax (N, 2d)",
        reference_target=3.0,
        notes="issue 5: time and peak memory each at most 3x softmax attention on the real (N, 2d) tokens",
    ),
    Case(
        "rt_sde.rt_attention vs loop twin",
        rt_sde.rt_attention,
        rt_sde.rt_attention_loop,
        _rt_attention,
        lambda q: "N=16, d=3" if q else "N=96, d=4",
    ),
    Case(
        "iir.biquad_filter (block-recursive, two-level carry)",
        iir.biquad_filter,
        iir.biquad_filter_loop,
        _biquad,
        lambda q: "2e3 x 16 ch" if q else "1e5 x 16 ch",
        target=100.0,
        notes="loop twin is vectorized over channels; scipy.signal.sosfilt and lfilter (compiled) reach only ~40x of it",
        reference=_sosfilt,
        reference_name="scipy.signal.sosfilt",
        reference_target=1.0,
    ),
    Case(
        "iir.sos_filter (8th-order bandpass, 8 sections)",
        iir.sos_filter,
        iir.sos_filter_loop,
        _sos,
        lambda q: "2e3 x 16 ch" if q else "1e5 x 16 ch",
    ),
    Case(
        "iir.diagonal_ssm_filter (chunked scan)",
        iir.diagonal_ssm_filter,
        iir.diagonal_ssm_filter_loop,
        _ssm,
        lambda q: "2e3 x 16 ch" if q else "1e5 x 16 ch",
    ),
    Case(
        "iir.frequency_response (order 8)",
        iir.frequency_response,
        iir.frequency_response_loop,
        _freq,
        lambda q: "2048 freqs" if q else "65536 freqs",
    ),
    Case(
        "fft_conv vs direct causal convolution",
        mixing.fft_conv,
        mixing.fft_conv_loop,
        _fft_conv,
        lambda q: "N=512, d=16" if q else "N=4096, d=16",
        target=50.0,
        scaling=_fft_conv_scaling,
        scaling_ns=tuple(2**k for k in range(12, 19)),
        notes="issue 6: fitted time exponent over N = 2^12 … 2^18 (d = 16) at most 1.25",
    ),
    Case(
        "fnet (2-D FFT) vs explicit DFT sums",
        mixing.fnet,
        mixing.fnet_loop,
        _fnet,
        lambda q: "N=16, d=8" if q else "N=128, d=32",
    ),
    Case(
        "spatial_gating_unit (causal) vs loop twin",
        mixing.spatial_gating_unit,
        mixing.spatial_gating_unit_loop,
        _sgu,
        lambda q: "N=16, 2e=8" if q else "N=128, 2e=32",
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
    *(
        Case(
            f"focus.adaptive_filter ({v})",
            focus.adaptive_filter,
            focus.adaptive_filter_loop,
            _focus_filter(v),
            (lambda q: "L=128, d=2, R=16" if q else "L=8192, d=8, R=64")
            if v == "causal-recursive"
            else (lambda q: "L=128, d=2, R=16" if q else "L=512, d=4, R=32"),
            notes="loop twin: explicit DFT sums (FFT variants) or the scalar recursion (recursive)",
        )
        for v in focus.VARIANTS
    ),
    Case(
        "focus_layer (causal-recursive) vs loop; time vs L",
        focus.focus_layer,
        focus.focus_layer_loop,
        _focus_layer,
        lambda q: "L=64, d=2" if q else "L=256, d=4",
        scaling=_focus_scaling,
        scaling_ns=(2**10, 2**12, 2**14, 2**16),
        notes="issue 8: fitted exponent over L = 2^10 … 2^16 (d=16, chunk M = bin R = 64) must be ≤ 1.25",
    ),
    Case(
        "softmax_attention (full, causal): time vs L",
        attention.softmax_attention,
        None,
        lambda q: _sdpa_causal_scaling(64 if q else 512),
        lambda q: "L=64, d=16" if q else "L=512, d=16",
        scaling=_sdpa_causal_scaling,
        scaling_ns=(2**10, 2**11, 2**12, 2**13),
        notes="issue 8: the exponent reported beside focus_layer's (quadratic: ≈ 2)",
    ),
    *[_efficient_case(kind, causal) for kind in ("linear", "performer") for causal in (False, True)],
    Case(
        "lsh_attention (2 rounds, chunk 64, N/64 buckets) vs loop twin",
        random_features.lsh_attention,
        random_features.lsh_attention_loop,
        _lsh,
        lambda q: "N=64, d=16, chunk 16" if q else "N=256, d=64",
        scaling=_lsh_scaling,
        scaling_ns=_EFFICIENT_NS,
        notes="issue 7: fitted time exponent over N = 2^10 … 2^15 (d = 64) at most 1.3",
    ),
    Case(
        "softmax_attention scaling (beside the efficient attentions)",
        attention.softmax_attention,
        None,
        _sdpa_mid,
        lambda q: "N=256, d=64" if q else "N=1024, d=64",
        scaling=_sdpa_scaling,
        scaling_ns=tuple(2**p for p in range(10, 15)),
        notes="issue 7: reported beside the efficient attentions (N = 2^10 … 2^14; expect ~2)",
    ),
]


# --- chapter 16: chunked linear recurrences vs their recurrent loop twins --------------------

from . import linear_rnn  # noqa: E402  (chapter 16 cases, appended)


def _lrnn_qkv(L: int, H: int, d: int, seed: int):
    rng = np.random.default_rng(seed)
    q, k, v = rng.normal(size=(3, H, L, d))
    return rng, q, k / np.linalg.norm(k, axis=-1, keepdims=True), v


def _lrnn_ssd(L: int, H: int = 4, d: int = 32):
    rng = np.random.default_rng(16)
    x = rng.normal(size=(H, L, d))
    dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), (H, L)))
    B, C = rng.normal(size=(2, 1, L, d))
    return (x, dt, -np.arange(1.0, H + 1), B, C, np.ones(H)), {}


def _lrnn_gla(L: int, H: int = 4, d: int = 32):
    rng, q, k, v = _lrnn_qkv(L, H, d, 17)
    return (q, k, v, np.log(rng.uniform(0.9, 1.0, (H, L, d)))), {}  # per-channel gates


def _lrnn_delta(L: int, H: int = 4, d: int = 32):
    rng, q, k, v = _lrnn_qkv(L, H, d, 18)
    return (q, k, v, rng.uniform(0.1, 0.9, (H, L))), {"log_g": np.log(rng.uniform(0.9, 1.0, (H, L)))}


_LRNN_NS = tuple(2**p for p in range(10, 17))

CASES.extend(
    [
        Case(
            f"linear_rnn.{name} (chunked) vs loop twin; time vs L",
            getattr(linear_rnn, name),
            getattr(linear_rnn, name + "_loop"),
            (lambda setup: lambda q: setup(128 if q else 8192))(setup),
            lambda q: "L=128, H=4, d=32" if q else "L=8192, H=4, d=32",
            target=20.0,
            scaling=setup,
            scaling_ns=_LRNN_NS,
            notes="chapter 16: chunk 64; fitted time exponent over L = 2^10 … 2^16 (target <= 1.15)",
        )
        for name, setup in (("ssd", _lrnn_ssd), ("gated_linear_attention", _lrnn_gla), ("delta_rule", _lrnn_delta))
    ]
)


def run_case(case: Case, quick: bool = False) -> dict:
    """Time one case; returns a JSON-serializable record."""
    args, kwargs = case.setup(quick)
    t_vec, out_vec = _time(case.vectorized, args, kwargs)
    t_loop, out_loop = (
        (None, None)
        if case.loop is None
        # best of several runs when a loop is short (its first run pays for fresh buffers)
        else _time(case.loop, args, kwargs, min_time=0.05 if quick else 1.0, min_repeat=1)
    )
    record = {
        "name": case.name,
        "size": case.size(quick),
        "vectorized_s": t_vec,
        "loop_s": t_loop,
        "ratio": None if t_loop is None else t_loop / t_vec,
        "target": case.target,
        "peak_bytes_vectorized": _peak_memory(case.vectorized, args, kwargs),
        "max_rel_diff": None if out_loop is None else _agreement(out_vec, out_loop),
    }
    if case.reference is not None:
        t_ref, _ = _time(case.reference, args, kwargs)
        record["reference"] = case.reference_name
        record["reference_s"] = t_ref
        record["reference_ratio"] = t_vec / t_ref
        record["reference_target"] = case.reference_target
        record["peak_bytes_reference"] = _peak_memory(case.reference, args, kwargs)
        record["peak_ratio_vs_reference"] = record["peak_bytes_vectorized"] / max(record["peak_bytes_reference"], 1)
    if case.scaling is not None and not quick:
        ns = np.array(case.scaling_ns, dtype=float)
        times = [_time(case.vectorized, *case.scaling(int(n)))[0] for n in ns]
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
        if r["target"] is not None and r["ratio"] is not None:
            verdict = f"  target ≥ {r['target']:g}×: {'met' if r['ratio'] >= r['target'] else 'MISSED'}"
        scaling = f"  time ~ N^{r['scaling_exponent']:.2f}" if "scaling_exponent" in r else ""
        if r["ratio"] is not None:
            loop = f"loop {r['loop_s'] * 1e3:10.1f} ms   ratio {r['ratio']:8.1f}×"
        elif "reference" in r:
            loop = f"{r['reference']} {r['reference_s'] * 1e3:8.2f} ms"
        else:
            loop = "(no loop twin at this size)"
        agree = "" if r["max_rel_diff"] is None else f"   agree {r['max_rel_diff']:.0e}"
        if "reference_ratio" in r:
            target = r["reference_target"]
            ok = "" if target is None else f" (target ≤ {target:g}: {'met' if r['reference_ratio'] <= target else 'MISSED'})"
            verdict += f"  vectorized/{r['reference']} = {r['reference_ratio']:.2f}{ok}"
            verdict += f", peak memory ratio {r['peak_ratio_vs_reference']:.2f}"
        print(
            f"  {r['name']:<46} {r['size']:<20} vectorized {r['vectorized_s'] * 1e3:9.2f} ms   "
            f"{loop}{verdict}{scaling}   "
            f"peak {r['peak_bytes_vectorized'] / 2**20:.1f} MiB{agree}",
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
    missed = [r["name"] for r in records if r["target"] is not None and r["ratio"] is not None and r["ratio"] < r["target"]]
    missed += [
        r["name"] for r in records if r.get("reference_target") is not None and r["reference_ratio"] > r["reference_target"]
    ]
    if args.check and missed and not args.quick:
        print(f"targets missed: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0
