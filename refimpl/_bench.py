"""``python -m refimpl bench``: every hot path against a plain NumPy/SciPy baseline and the machine's limit.

What is measured, per case (one computation at one size, named ``module.function[variant]``):

* **time** of the refimpl function and of a **baseline**: a plain blocked NumPy/SciPy version of
  the same computation written in this file (section "baselines", a few readable lines each), or
  a peer library (SciPy's compiled filters, filterpy, PyTorch). The two outputs are compared
  (norm-wise relative error, printed as ``agree``). The **ratio** is refimpl time / baseline time.
* the same two times **under contention**: while a competing process started by the bench keeps
  one core busy (:class:`CompetingLoad`: one process for the whole run, spinning during the busy
  samples only and asleep otherwise), the normal state of a laptop or a shared server.
* the **limit**: a lower bound on the time from the case's cost model (floating-point operations,
  exponentials, bytes moved) and the machine's GEMM FLOP/s, ``exp`` throughput and copy bandwidth,
  all measured in the same run (:func:`measure_limits`); ``fraction = limit / time`` (1 = at the limit).
  A cost model counts the work that every exact algorithm must do (the fewest flops known, e.g. the
  recurrent form of a chunked recurrence, the split-radix count of an FFT), never the extra work of
  one algorithm, so that no code can beat the limit. FFTs, scans, recursions and structured sums
  cannot run at GEMM speed; their limits carry a note and are judged at the same bound.
* **peak memory** of one call (tracemalloc; the inputs exist before tracing starts, so the peak is
  what the call allocates, output included).
* for the causal chunked forms, the **loop-twin ratio** (loop time / refimpl time), secondary: the
  median over 3 pairs of calls timed back to back; in each pair refimpl's sample follows 0.1 s of
  its own untimed calls, its warm-up after the single-threaded loop (see :func:`measure`). In
  ``--quick`` mode one loop run divided by the quiet time.

The report prints a legend of these columns (:data:`LEGEND`, also in ``--help``), the refimpl
version and commit, the CPU and the load average before the run, with a warning when the machine
is already busy (above :data:`BUSY_LOAD` per core); ``--json`` keeps them with the ``--only`` patterns.

Verdicts (full mode only; each prints PASS or MISS):

* ``baseline``: ratio <= the case's target (1.5 unless stated) on the quiet machine **and** under
  contention;
* ``limit``: fraction >= 1/3 on the quiet machine (the hot paths whose cost is arithmetic);
* ``loop``: loop time / refimpl time >= 20 (causal chunked forms at N = 8192);
* ``memory``: peak <= 4 · 256 · N · 8 bytes + output (softmax attention without weights: O(block · N));
* ``agree``: refimpl and baseline agree to the case's tolerance (1e-10 unless stated).

``--quick`` runs small sizes without contention and prints times and agreement only: ratios at
small sizes say nothing about the targets, so no verdict is printed ("not judged").

Runs: the first call of each function is a warm-up (its output is the one compared); then the
median of 3 runs for calls over 20 ms, the best of 6 to 30 runs within a quarter of a second for
shorter ones, and for calls over 0.75 s a single run, the warm-up itself. A first call can carry
one-time costs (see :func:`measure`), so a warm-up of 20 to 80 ms is followed by a second call of
each function, the faster deciding the plan (:data:`PLAN_RECHECK`), and the other function of a
single-run case, if faster than 0.75 s, is run once more and keeps the faster of its two calls.
refimpl and baseline alternate, in alternating order (ABBA), so that a change in load hits both
and neither always follows the other: call by call for the median of 3, by blocks of half the runs for the best-of
runs (:func:`_sample`). Every call timed once or as one of 3, and every block, starts once no
other thread of the process runs (:func:`settle`: BLAS threads spin for about 0.1 s after a
product). The busy samples follow the same plan. Peak memory is taken on one more call of
refimpl, traced: tracemalloc slows allocation-heavy code several-fold, so a traced call is never
a timing sample. A call over the budget (20 s) is run once only, and what
it leaves unmeasured counts as a MISS. The PyTorch comparison takes the median of 5 runs of each
(every run a sample, the first outputs compared), in the same process, no competing load.
Optional peers: filterpy (else the Kalman baseline is the plain per-step NumPy loop, and the output
says so) and PyTorch (else "torch not installed: skipped"); neither is a dependency of refimpl.
Each case records the wall time of its phases (``phase_s`` in ``--json``) and the report ends
with the time per function: a full run should take at most 3 minutes on a quiet machine, a
``--quick`` run 20 seconds.

Usage::

    python -m refimpl bench                        # full: every case, quiet and under contention
    python -m refimpl bench --quick                # small sizes, seconds
    python -m refimpl bench --only attention --only 'linear_rnn.*' --json bench.json --check
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import difflib
import fnmatch
import functools
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
import tracemalloc
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import scipy
import scipy.fft
import scipy.linalg
import scipy.signal

from . import _scan, afa, attention, iir, kalman, linear_rnn, lyapunov, mixing, random_features, ssm
from ._testing import rel_error

__all__ = [
    "Cost",
    "Limits",
    "Case",
    "Calls",
    "cases",
    "select",
    "measure_limits",
    "competing_load",
    "CompetingLoad",
    "run",
    "main",
]

MODES = ("test", "quick", "full")
BLOCK = 256  # query rows per block of the softmax baselines
CHUNK = 64  # chunk length of the chunked baselines


# ============================================================================ cost model and limits
@dataclass(frozen=True)
class Cost:
    """What a computation must do at least: floating-point operations, exponentials, bytes moved."""

    flops: float = 0.0
    exps: float = 0.0
    bytes: float = 0.0


@dataclass(frozen=True)
class Limits:
    """The machine's rates, measured in the run: GEMM FLOP/s, exp/s, copy bytes/s (read + write)."""

    gemm_flops: float
    exp_rate: float  # exponentials per second on a cache-sized array (the rate a blocked code can reach)
    exp_rate_large: float  # ... on an array far larger than the caches
    copy_bandwidth: float  # bytes read + written per second by np.copyto on a large array
    gemm_sizes: tuple = ()

    def time(self, cost: Cost) -> float:
        """``limit_time = max(flops / GEMM, exps / exp rate, bytes / bandwidth)``: no code can be faster."""
        return max(cost.flops / self.gemm_flops, cost.exps / self.exp_rate, cost.bytes / self.copy_bandwidth)


def _best_time(fn: Callable[[], Any], repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_limits(quick: bool = False) -> Limits:
    """Measure GEMM FLOP/s (float64 ``a @ b``), ``np.exp`` throughput and ``np.copyto`` bandwidth.

    Best of a few runs each (of 10 GEMMs in quick mode, whose small products a burst of load slows most):
    the limit is what the machine can do, not what it did once.
    """
    rng = np.random.default_rng(0)
    sizes = (256, 512) if quick else (1024, 2048)
    gemm = 0.0
    for n in sizes:
        a, b = rng.random((n, n)), rng.random((n, n))
        out = np.empty((n, n))
        gemm = max(gemm, 2.0 * n**3 / _best_time(lambda: np.matmul(a, b, out=out), 10 if quick else 3))
    rates = []
    for n in (2**15, 2**21 if quick else 2**23):  # 256 KiB (cache), then 16 MiB / 64 MiB (far beyond the caches)
        x = np.linspace(-1.0, 1.0, n)
        y = np.empty_like(x)
        # best of 200 in cache (about 6 ms in all): a best of 20, 0.5 ms of calls, once caught a slow moment of the
        # host and halved the exp rate (523 against 1200 M/s), which doubled every exp-bound fraction of that run
        rates.append(n / _best_time(lambda: np.exp(x, out=y), 200 if n <= 2**15 else 5))
    n = 2**23 if quick else 2**24  # 64 MiB / 128 MiB of float64 per array: far beyond the caches
    src = np.ones(n)
    dst = np.zeros(n)
    bandwidth = 2.0 * src.nbytes / _best_time(lambda: np.copyto(dst, src), 3)
    return Limits(gemm, rates[0], rates[1], bandwidth, sizes)


# ============================================================================ competing load
# One child process serves the whole run: it spins in pure Python while the bench measures "busy"
# and sleeps, blocked on a read of its stdin (no CPU at all), the rest of the time. Commands on its
# stdin: b"p" pauses (it answers "paused" once it has stopped spinning), b"r" resumes (it answers
# "spinning"). It ends by itself when the bench goes away, even by SIGKILL when no finally clause
# runs: its stdin then reads end-of-file (checked between spins and while paused), and its parent
# process id changes.
_SPIN = """
import os, select, sys
parent, cmd = os.getppid(), sys.stdin.fileno()
def say(word):
    sys.stdout.write(word + "\\n")
    sys.stdout.flush()
say("spinning")
while os.getppid() == parent:
    for _ in range(100_000):  # a few milliseconds: the longest a pause waits
        pass
    if select.select([cmd], [], [], 0)[0]:
        if os.read(cmd, 1) != b"p":  # end of file (the bench is gone) or a stray byte: stop
            break
        say("paused")
        if os.read(cmd, 1) != b"r":  # blocks, using no CPU, until resumed or the bench is gone
            break
        say("spinning")
"""
_RUNNING: set = set()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            proc.stdin.close()  # end of file: the child leaves its loop and exits
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    _RUNNING.discard(proc)


@atexit.register
def _stop_all() -> None:  # in case the bench is interrupted between start and stop
    for proc in list(_RUNNING):
        _stop(proc)


class CompetingLoad:
    """One competing process for a whole run: it keeps one core busy inside :meth:`busy` only.

    Starting a process per case costs tens of milliseconds each time (and its first spins run
    while the interpreter is still warming up); pausing and resuming one process costs a pipe
    write and an answer. Outside :meth:`busy` the child is blocked on a read: it uses no CPU, so
    it does not disturb the quiet samples. :meth:`pause` returns only once the child has
    answered that it stopped spinning, :meth:`resume` once it spins again.
    """

    def __init__(self, spinning: bool = False):
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _SPIN],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        _RUNNING.add(self.proc)
        self.spinning = self._answer() == "spinning"
        if not spinning:
            self.pause()

    def _answer(self) -> str:
        return self.proc.stdout.readline().decode().strip()  # "" at once if the child died

    def _command(self, byte: bytes, answer: str) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError("the competing process has ended")
        self.proc.stdin.write(byte)
        self.proc.stdin.flush()
        if self._answer() != answer:
            raise RuntimeError(f"the competing process did not answer {answer!r}")

    def pause(self) -> None:
        """Stop spinning (the child then sleeps on a read)."""
        if self.spinning:
            self._command(b"p", "paused")
            self.spinning = False

    def resume(self) -> None:
        """Spin again."""
        if not self.spinning:
            self._command(b"r", "spinning")
            self.spinning = True

    @contextlib.contextmanager
    def busy(self):
        """Spin inside the block; paused again on exit, whatever happens inside."""
        self.resume()
        try:
            yield self.proc
        finally:
            if self.proc.poll() is None:
                self.pause()

    def close(self) -> None:
        _stop(self.proc)

    def __enter__(self) -> "CompetingLoad":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def competing_load():
    """Keep one core busy (a pure-Python spin in a child process, pinned to nothing) inside the block.

    The child is stopped on exit from the block, whatever happens inside (and at interpreter exit).
    Yields the ``subprocess.Popen`` of the child. A whole run uses one :class:`CompetingLoad` instead.
    """
    with CompetingLoad(spinning=True) as load:
        yield load.proc


# ============================================================================ baselines
# Plain NumPy/SciPy versions of each hot path: what a user would write in ten or fifteen lines
# to check refimpl's speed. Each is checked against refimpl in every run (the agree column).


def blocked_softmax_attention(q, k, v, causal=False, return_weights=False, block=BLOCK):
    """softmax(QKᵀ/√d)V by blocks of query rows: one (block, N) logit matrix at a time."""
    n, d = q.shape
    y = np.empty((n, v.shape[1]))
    weights = np.zeros((n, k.shape[0])) if return_weights else None
    for i in range(0, n, block):
        rows = slice(i, min(i + block, n))
        keys = i + block if causal else k.shape[0]  # causal: later keys are masked anyway
        s = (q[rows] / math.sqrt(d)) @ k[:keys].T
        if causal:
            s[np.arange(rows.start, rows.stop)[:, None] < np.arange(s.shape[1])] = -np.inf
        s -= s.max(axis=1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(axis=1, keepdims=True)
        y[rows] = s @ v[:keys]
        if return_weights:
            weights[rows, : s.shape[1]] = s
    return (y, weights) if return_weights else y


def blocked_softmax_attention_vjp(q, k, v, dy, causal=False, block=BLOCK):
    """dQ, dK, dV of softmax(QKᵀ/√d)V by blocks of query rows (FlashAttention-2's backward, P recomputed)."""
    n, d = q.shape
    c = 1 / math.sqrt(d)
    dq, dk, dv = np.empty(q.shape), np.zeros(k.shape), np.zeros(v.shape)
    for i in range(0, n, block):
        rows = slice(i, min(i + block, n))
        keys = rows.stop if causal else k.shape[0]  # causal: later keys get no weight
        P = (q[rows] * c) @ k[:keys].T
        if causal:
            P[np.arange(rows.start, rows.stop)[:, None] < np.arange(keys)] = -np.inf
        P -= P.max(axis=1, keepdims=True)
        np.exp(P, out=P)
        P /= P.sum(axis=1, keepdims=True)  # P = softmax(S)
        dP = dy[rows] @ v[:keys].T
        dP -= np.sum(dy[rows] * (P @ v[:keys]), axis=1, keepdims=True)  # dP − D, D_i = dO_i · O_i
        dS = P * dP
        dv[:keys] += P.T @ dy[rows]
        dq[rows] = (dS @ k[:keys]) * c
        dk[:keys] += (dS.T @ q[rows]) * c
    return dq, dk, dv


def blocked_isotropic_afa(q, k, v, mu, omega, sigma2, eta2, gamma2, nu, kappa, block=BLOCK):
    """Causal isotropic AFA on t = 0, 1, …, N−1 (mu > 0, Student weight) by blocks of query rows."""
    n, d = q.shape
    rot = np.exp(-1j * omega * np.arange(n)[:, None])  # e^{−iωt}
    qr, kr = q * rot, k * rot
    q2, k2 = np.hstack([qr.real, qr.imag]), np.hstack([kr.real, kr.imag])  # Re(q̃ᴴk̃) as one real product
    nq, nk = np.sum(np.abs(q) ** 2, 1), np.sum(np.abs(k) ** 2, 1)
    out = np.empty((n, d), dtype=complex)
    for i in range(0, n, block):
        rows = np.arange(i, min(i + block, n))
        lag = rows[:, None] - np.arange(rows[-1] + 1)  # Δt = t_i − t_j; keys after the last row unused
        tau = np.maximum(lag, 0)
        E = np.exp(-mu * tau)  # e^{−μΔt}
        var = sigma2 * -np.expm1(-2 * mu * tau) / (2 * mu) + eta2 * E**2 + gamma2  # Σ(Δt), forward
        r2 = np.maximum(nq[rows, None] + E**2 * nk[: lag.shape[1]] - 2 * E * (q2[rows] @ k2[: lag.shape[1]].T), 0)
        logits = -np.log(var) - kappa * np.log1p(r2 / var / nu)  # log P − κ log(1 + d²/ν)
        logits[lag < 0] = -np.inf
        w = np.exp(logits - logits.max(axis=1, keepdims=True))
        out[rows] = ((w * E) @ (v * rot)[: lag.shape[1]]) / w.sum(axis=1, keepdims=True)
    return out * np.conj(rot)


def chunked_kernel_attention(phi_q, phi_k, v, causal=False, chunk=CHUNK):
    """y_i = φ(q_i)ᵀ S_i / φ(q_i)ᵀ z_i; causal by chunks: masked in-chunk product + running state."""
    va = np.hstack([v, np.ones((v.shape[0], 1))])  # [v, 1]: numerator and normalizer in one pass
    if not causal:
        out = phi_q @ (phi_k.T @ va)
    else:
        out = np.empty((phi_q.shape[0], va.shape[1]))
        state = np.zeros((phi_k.shape[1], va.shape[1]))
        for i in range(0, phi_q.shape[0], chunk):
            c = slice(i, i + chunk)
            out[c] = np.tril(phi_q[c] @ phi_k[c].T) @ va[c] + phi_q[c] @ state
            state += phi_k[c].T @ va[c]
    return out[:, :-1] / out[:, -1:]


def elu_plus_one(x):
    """φ(x) = elu(x) + 1."""
    return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))


def favor_positive(x, w, shift):
    """FAVOR+ features exp(ωᵀx − ‖x‖²/2)/√m, divided by exp(max) (row max or overall max: cancels)."""
    e = x @ w.T - 0.5 * np.sum(x * x, axis=1, keepdims=True)
    e -= e.max(axis=1, keepdims=True) if shift == "row" else e.max()
    return np.exp(e) / math.sqrt(w.shape[0])


def performer_baseline(q, k, v, w, causal):
    scale = q.shape[1] ** -0.25  # q̂ = q/d^{1/4}: exp(q̂·k̂) = exp(q·k/√d)
    return chunked_kernel_attention(favor_positive(q * scale, w, "row"), favor_positive(k * scale, w, "all"), v, causal)


def rfa_baseline(q, k, v, w, causal):
    def features(x):  # random Fourier features of the unit rows: [sin Wx, cos Wx]/√D
        wx = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ w.T
        return np.hstack([np.sin(wx), np.cos(wx)]) / math.sqrt(w.shape[0])

    return chunked_kernel_attention(features(q), features(k), v, causal)


def stepwise_selective_scan(u, delta, A, B, C, D, block=256):
    """Mamba's reference scan: h_t = exp(Δ_t A) h_{t−1} + Δ_t B_t u_t, y_t = C_t h_t + D u_t (time blocks)."""
    L, d = u.shape
    h = np.zeros(A.shape)
    y = np.empty((L, d))
    for i in range(0, L, block):
        t = slice(i, i + block)
        dA = np.exp(delta[t, :, None] * A)  # (T, d, n)
        dBu = (delta[t] * u[t])[:, :, None] * B[t, None, :]
        hs = np.empty_like(dA)
        for j in range(dA.shape[0]):
            h = hs[j] = dA[j] * h + dBu[j]
        y[t] = np.einsum("tdn,tn->td", hs, C[t])
    return y + D * u


def chunked_linear_attention_vjp(q, k, v, dy, chunk=CHUNK):
    """dq, dk, dv of causal linear attention (φ = elu + 1): the forward's [num, den], then three chunked prefix
    sums of the same form, causal for dφ(q) and in reversed time for dφ(k) and d[v, 1]."""

    def causal(a, b, w):  # out_i = Σ_{j≤i} (a_i·b_j) w_j by chunks: the earlier chunks' state + a masked block
        out, S = np.empty((len(a), w.shape[1])), np.zeros((a.shape[1], w.shape[1]))
        for i in range(0, len(a), chunk):
            c = slice(i, i + chunk)
            out[c] = a[c] @ S + np.tril(a[c] @ b[c].T) @ w[c]
            S += b[c].T @ w[c]
        return out

    a, b, vt = elu_plus_one(q), elu_plus_one(k), np.hstack([v, np.ones((len(v), 1))])
    o = causal(a, b, vt)
    num, den = o[:, :-1], o[:, -1:]
    G = np.hstack([dy / den, -np.sum(dy * num, axis=1, keepdims=True) / den**2])  # [dnum, dden]
    da = causal(G, vt, b)
    db = causal(vt[::-1], G[::-1], a[::-1])[::-1]  # Σ_{i≥j}: reversed time
    dvt = causal(b[::-1], a[::-1], G[::-1])[::-1]
    grad = lambda x: np.where(x > 0, 1.0, np.exp(np.minimum(x, 0.0)))  # noqa: E731  φ'
    return grad(q) * da, grad(k) * db, dvt[:, :-1]


def stepwise_selective_scan_vjp(u, delta, A, B, C, D, dy):
    """Gradients (du, dΔ, dA, dB, dC, dD) of Mamba's scan: the states h_t by a forward step loop (stored),
    the adjoints λ_t = ā_{t+1} λ_{t+1} + dy_t C_t by a backward one, then sums over states or channels."""
    Ab = np.exp(delta[:, :, None] * A)  # ā_t, (L, d, n)
    H = (delta * u)[:, :, None] * B[:, None, :]  # b̄_t u_t, then h_t
    for t in range(1, len(u)):
        H[t] += Ab[t] * H[t - 1]
    lam = dy[:, :, None] * C[:, None, :]  # dy_t C_t, then λ_t
    for t in range(len(u) - 2, -1, -1):
        lam[t] += Ab[t + 1] * lam[t + 1]
    ga = lam * Ab  # λ_t ā_t h_{t−1}, h_{−1} = 0
    ga[0] = 0.0
    ga[1:] *= H[:-1]
    lB = np.einsum("tdn,tn->td", lam, B)  # Σ_n λ_t B_t
    return (lB * delta + D * dy, np.einsum("tdn,dn->td", ga, A) + lB * u, np.einsum("tdn,td->dn", ga, delta),
            np.einsum("tdn,td->tn", lam, u * delta), np.einsum("td,tdn->tn", dy, H), np.sum(dy * u, axis=0))


def chunked_gla(q, k, v, log_g, chunk=CHUNK, segment_sums=False):
    """Gated linear attention, per-channel gates, by chunks: o_t = S_t q_t/√d, S_t = S_{t−1}Diag(g_t) + v_t k_tᵀ.

    The in-chunk decays split over q and k (``e^{cum_t}``, ``e^{−cum_s}``: for gates whose sums stay small), or with
    ``segment_sums`` every decay from the segment sums (any gate, no overflow)."""
    H, L, dk = q.shape
    q = q / math.sqrt(dk)
    o = np.empty(v.shape)
    S = np.zeros((H, dk, v.shape[2]))  # Sᵀ, per head
    for i in range(0, L, chunk):
        c = slice(i, i + chunk)
        g = log_g[:, c]  # (H, n, dk)
        cum = np.cumsum(g, axis=1)  # Σ_{r=start}^{t} log g_r
        if segment_sums:
            n = g.shape[1]
            below = np.tri(n, n, -1, dtype=bool)[None, :, :, None]  # s < t
            seg = np.cumsum(np.where(below, g[:, :, None, :], 0.0), axis=1)  # seg[t, s] = Σ_{s<r≤t} log g_r
            decay = np.where(np.tri(n, dtype=bool)[None, :, :, None], np.exp(seg), 0.0)  # (H, t, s, dk)
            W = np.einsum("htj,hsj,htsj->hts", q[:, c], k[:, c], decay)
            o[:, c] = W @ v[:, c] + (q[:, c] * np.exp(cum)) @ S
            S = np.exp(g.sum(axis=1))[:, :, None] * S + (k[:, c] * np.exp(seg[:, -1])).transpose(0, 2, 1) @ v[:, c]
            continue
        qg, kg = q[:, c] * np.exp(cum), k[:, c] * np.exp(-cum)  # decay split over q and k (|cum| small)
        o[:, c] = np.tril(qg @ kg.transpose(0, 2, 1)) @ v[:, c] + qg @ S
        end = np.exp(cum[:, -1:, :])  # decay over the whole chunk, (H, 1, dk)
        S = end.transpose(0, 2, 1) * S + (kg * end).transpose(0, 2, 1) @ v[:, c]
    return o


def chunked_ssd(x, dt, A, B, C, D, chunk=CHUNK):
    """Mamba-2 SSD (one group of B, C): h_t = e^{Δ_t A} h_{t−1} + Δ_t x_t B_tᵀ, y_t = h_t C_t + D x_t."""
    H, L, P = x.shape
    B, C = B[0], C[0]
    y = np.empty(x.shape)
    h = np.zeros((H, B.shape[1], P))  # hᵀ per head, (N, P)
    for i in range(0, L, chunk):
        c = slice(i, i + chunk)
        cum = np.cumsum(dt[:, c] * A[:, None], axis=1)  # (H, c)
        seg = cum[:, :, None] - cum[:, None, :]  # Σ_{r=s+1}^{t} Δ_r A
        decay = np.exp(np.where(np.tri(seg.shape[1], dtype=bool), seg, -np.inf))
        M = (C[c] @ B[c].T) * decay * dt[:, None, c]  # M_ts = (C_t·B_s) e^{seg} Δ_s
        y[:, c] = M @ x[:, c] + np.exp(cum)[:, :, None] * (C[c] @ h)
        w = (dt[:, c] * np.exp(cum[:, -1:] - cum))[:, :, None] * B[c]  # (H, c, N)
        h = np.exp(cum[:, -1])[:, None, None] * h + w.transpose(0, 2, 1) @ x[:, c]
    return y + D[:, None, None] * x


def chunked_delta_rule(q, k, v, beta, log_g=None, chunk=CHUNK):
    """DeltaNet by chunks (WY form): S_t = g_t S_{t−1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ, o_t = S_t q_t/√d, with g = 1,
    or Gated DeltaNet with one gate per head (``log_g``, (H, L)) and the decays from in-chunk segment sums:
    Γ_ts = γ_t/γ_s = e^{Σ_{s<r≤t} log g_r}, γ_t = Π_{r≤t} g_r."""
    H, L, dk = q.shape
    q = q / math.sqrt(dk)
    o = np.empty(v.shape)
    S = np.zeros((H, dk, v.shape[2]))  # Sᵀ per head
    times = lambda w, x: x if w is None else w * x  # noqa: E731 (no gates: no decay to apply)
    for i in range(0, L, chunk):
        c = slice(i, i + chunk)
        K, b = k[:, c], beta[:, c, None]
        n = K.shape[1]
        G = gam = g_end = G_end = None  # DeltaNet: no decays
        if log_g is not None:
            g = log_g[:, c]
            seg = np.cumsum(np.where(np.tri(n, n, -1, dtype=bool), g[:, :, None], 0.0), axis=1)  # Σ_{s<r≤t} log g_r
            G = np.where(np.tri(n, dtype=bool), np.exp(seg), 0.0)  # Γ_ts (s ≤ t), 0 above the diagonal
            gam = np.exp(np.cumsum(g, axis=1))[:, :, None]  # γ_t
            g_end, G_end = gam[:, -1:], G[:, -1, :, None]  # γ_end, Γ_end,s
        T = np.eye(n) + np.tril(b * times(G, K @ K.transpose(0, 2, 1)), -1)  # unit lower triangular
        WU = np.linalg.solve(T, np.concatenate([b * times(gam, K), b * v[:, c]], axis=2))  # [W, U'] = T⁻¹[βγK, βV]
        U = WU[:, :, dk:] - WU[:, :, :dk] @ S  # u_t = β_t(v_t − g_t S_{t−1}k_t)
        o[:, c] = times(gam, q[:, c] @ S) + np.tril(times(G, q[:, c] @ K.transpose(0, 2, 1))) @ U
        S = times(g_end, S) + times(G_end, K).transpose(0, 2, 1) @ U  # γ_end S + Σ_s Γ_end,s u_s k_sᵀ
    return o


def fftconvolve_causal(u, h):
    """Causal per-channel convolution with SciPy's FFT convolution, first N outputs."""
    return scipy.signal.fftconvolve(u, h, axes=0)[: u.shape[0]]


def vandermonde_s4d_kernel(A, B, C, step, L):
    """S4D kernel (ZOH, conjugate pairs): K_ℓ = 2 Re Σ_n C_n B̄_n exp(ℓ Δ A_n), one head at a time."""
    dtA = step[:, None] * A
    CB = C * (np.expm1(dtA) / A) * B  # C_n B̄_n, B̄ = (e^{ΔA} − 1)/A · B
    ell = np.arange(L)
    return np.stack([2 * (CB[h] @ np.exp(np.outer(dtA[h], ell))).real for h in range(A.shape[0])])


def cauchy_s4_kernel(Lam, P, Q, B, Ct, step, L):
    """S4 DPLR kernel from S4's C̃, one head at a time: Cauchy sums at the roots of unity, Woodbury, iFFT."""
    omega = np.exp(-2j * np.pi * np.arange(L) / L)
    K = np.empty((Lam.shape[0], L), dtype=complex)
    for h in range(Lam.shape[0]):
        g = (2 / step[h]) * (1 - omega) / (1 + omega)
        r = 1 / (g[:, None] - Lam[h])  # Cauchy matrix, (L, N)
        kCB, kCP, kQB, kQP = (r @ (a * b) for a, b in ((Ct[h], B[h]), (Ct[h], P[h]), (Q[h].conj(), B[h]), (Q[h].conj(), P[h])))
        K[h] = np.fft.ifft(2 / (1 + omega) * (kCB - kCP * kQB / (1 + kQP)))
    return K


def lyapunov_dle_covariance(eigvals, noise, tau):
    """Σ(τ) = Σ∞ − e^{Λτ} Σ∞ e^{Λ*τ}, with Σ∞ from SciPy's Lyapunov solver (stable modes)."""
    if noise.ndim == 1:  # diagonal noise: Σ∞_k = g_k / (2μ_k)
        return (noise / (-2 * eigvals.real)) * -np.expm1(np.multiply.outer(tau, 2 * eigvals.real))
    s_inf = scipy.linalg.solve_continuous_lyapunov(np.diag(eigvals), -noise)  # ΛΣ + ΣΛᴴ = −G̃
    z = eigvals[:, None] + eigvals.conj()[None, :]
    return s_inf * -np.expm1(np.multiply.outer(tau, z))


def stepwise_rts_smoother(z, F, H, Q, R, m0, P0):
    """Kalman filter (update first) and RTS smoother as a plain per-step NumPy loop."""
    N, n = z.shape[0], F.shape[0]
    m, P = np.empty((N, n)), np.empty((N, n, n))
    mp, Pp = m0, P0
    for t in range(N):
        if t:
            mp, Pp = F @ m[t - 1], F @ P[t - 1] @ F.T + Q
        S = H @ Pp @ H.T + R
        K = np.linalg.solve(S, H @ Pp).T  # K = P⁻Hᵀ S⁻¹
        m[t], P[t] = mp + K @ (z[t] - H @ mp), Pp - K @ S @ K.T
    ms, Ps = m.copy(), P.copy()
    for t in range(N - 2, -1, -1):
        Pp = F @ P[t] @ F.T + Q
        G = np.linalg.solve(Pp, F @ P[t]).T  # G = P Fᵀ (P⁻)⁻¹
        ms[t], Ps[t] = m[t] + G @ (ms[t + 1] - F @ m[t]), P[t] + G @ (Ps[t + 1] - Pp) @ G.T
    return ms, Ps


def filterpy_rts_smoother(z, F, H, Q, R, m0, P0):
    """filterpy's ``batch_filter`` (update first) and ``rts_smoother``: a pure-Python per-step library."""
    from filterpy.kalman import KalmanFilter

    kf = KalmanFilter(dim_x=F.shape[0], dim_z=H.shape[0])
    kf.x, kf.P, kf.F, kf.H, kf.Q, kf.R = m0.copy(), P0.copy(), F, H, Q, R
    m, P, _, _ = kf.batch_filter(z, update_first=True)
    ms, Ps, _, _ = kf.rts_smoother(m, P)
    return ms, Ps


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# ============================================================================ cases
@dataclass
class Calls:
    """The calls of one case on inputs built once: refimpl, its baseline and optionally the loop twin."""

    refimpl: Callable[[], Any]
    baseline: Callable[[], Any]
    loop: Callable[[], Any] | None = None
    note: str | None = None  # how the baseline was called, found when the inputs were built (printed beside it)


@dataclass
class Case:
    """One computation at one size: ``module.function[variant]``, its cost and its targets."""

    module: str
    function: str
    variant: str
    make: Callable[[], Calls]  # builds the inputs (lazily: only when the case runs)
    cost: Cost
    baseline: str  # what the baseline is, printed beside the ratio
    base_target: float | None = 1.5  # refimpl / baseline <= this, quiet and under contention
    limit_target: float | None = 1.0 / 3.0  # limit / time >= this on the quiet machine
    loop_target: float | None = None  # loop / refimpl >= this
    memory_bound: float | None = None  # peak bytes <= this
    tol: float = 1e-10  # agreement refimpl vs baseline (norm-wise relative)
    repeats: int | None = None  # fixed number of runs, statistic = median (else chosen from the run time)
    contention: bool = True  # also measure under a competing load (full mode)
    memory: bool = True  # measure the peak memory of one call
    bound_note: str | None = None  # why the limit is out of reach for this kind of computation (printed)

    @property
    def name(self) -> str:
        return f"{self.module}.{self.function}[{self.variant}]"


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# --- attention ----------------------------------------------------------------------------------
def _softmax_cases(mode: str) -> list[Case]:
    grid = {
        "test": [(300, 8, c, w) for c in (False, True) for w in (False, True)],
        "quick": [(1024, 64, c, w) for c in (False, True) for w in (False, True)],
        "full": [(n, 64, c, False) for n in (1024, 4096, 16384) for c in (False, True)]
        + [(n, 128, c, False) for n in (1024, 4096) for c in (False, True)]
        + [(n, 64, c, True) for n in (1024, 4096) for c in (False, True)],
    }[mode]
    out = []
    for n, d, causal, weights in grid:

        def make(n=n, d=d, causal=causal, weights=weights):
            q, k, v = _rng(1).normal(size=(3, n, d))
            return Calls(
                lambda: attention.softmax_attention(q, k, v, causal=causal, return_weights=weights),
                lambda: blocked_softmax_attention(q, k, v, causal, weights),
            )

        # cost: QKᵀ and AV (4d flops per allowed pair), one exp per pair, q, k, v, y moved once, and with
        # return_weights the N × N weights written: 8 bytes per allowed pair (the zeros above a causal
        # diagonal need no writing: a zeroed allocation maps them to the zero page)
        pairs = n * (n + 1) / 2 if causal else n * n
        out.append(
            Case(
                "attention",
                "softmax_attention",
                f"N={n},d={d}" + (",causal" if causal else "") + (",weights" if weights else ""),
                make,
                Cost(flops=4 * pairs * d, exps=pairs, bytes=8 * 4 * n * d + (8 * pairs if weights else 0)),
                f"blocked NumPy (query blocks of {BLOCK})",
                memory_bound=None if weights else 4 * BLOCK * n * 8 + 8 * n * d,
            )
        )
    return out


def _torch_cases(mode: str) -> list[Case]:
    """softmax_attention against PyTorch's CPU scaled_dot_product_attention, float64, same process.

    PyTorch is called as a user would for its fastest float64 CPU path: contiguous (batch, heads,
    N, d) float64 tensors (no grad, no mask, no dropout; ``is_causal`` for the causal case), so that
    ``scaled_dot_product_attention`` can run its fused CPU flash kernel
    (``_scaled_dot_product_flash_attention_for_cpu``), which streams over key blocks. The call is
    pinned to that kernel with ``torch.nn.attention.sdpa_kernel(SDPBackend.FLASH_ATTENTION)``; for
    these inputs the default dispatch picks the same kernel, the pin only makes sure a change of
    dispatch cannot fall back silently to the math path, which materializes heads · N² logits
    (4.3 GB at 8 × 8192²) and takes ten times longer. Three-dimensional (heads, N, d) inputs, as
    an earlier version of this bench passed, do exactly that: the fused kernels take 4-D inputs only.
    The backend used is printed beside the baseline.
    """
    if mode == "test" or not _have("torch"):
        return []
    heads, d = (1, 64) if mode == "quick" else (8, 64)
    out = []
    for causal in (False, True):
        # the issue's size, 8 heads x N = 8192, without the mask; the causal comparison at N = 4096, a quarter of the
        # pairs: at 8192 its five pairs of calls took 14-17 s, and the full run went over its 3 minutes on a slow day
        n = 512 if mode == "quick" else (4096 if causal else 8192)

        def make(causal=causal, n=n):
            import torch

            torch.set_num_threads(_cores())
            q, k, v = _rng(2).normal(size=(3, 1, heads, n, d))  # (batch, heads, N, d): the fused kernels' layout
            tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))  # share the NumPy buffers: contiguous float64
            pin, backend = _torch_flash(torch, heads, d)
            sdpa = torch.nn.functional.scaled_dot_product_attention

            def baseline():
                with pin():
                    return sdpa(tq, tk, tv, is_causal=causal).numpy()

            return Calls(lambda: attention.softmax_attention(q, k, v, causal=causal), baseline, note=backend)

        pairs = heads * (n * (n + 1) / 2 if causal else n * n)
        out.append(
            Case(
                "attention",
                "softmax_attention",
                f"H={heads},N={n},d={d}" + (",causal" if causal else "") + ",vs-torch",
                make,
                Cost(flops=4 * pairs * d, exps=pairs, bytes=8 * 4 * heads * n * d),
                f"torch {_torch_version()} scaled_dot_product_attention ({_cores()} threads)",
                limit_target=None,
                repeats=3 if mode == "quick" else 5,
                contention=False,
                memory=False,  # the same function's memory is measured by the softmax cases
            )
        )
    return out


def _torch_flash(torch, heads: int, d: int):
    """A context that pins scaled_dot_product_attention to the CPU flash kernel, and its label.

    Probed on small float64 inputs of the bench's layout; where this PyTorch has no
    ``sdpa_kernel`` or its flash kernel refuses them, the default dispatch is used and the label says so.
    """
    import warnings

    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return contextlib.nullcontext, "default dispatch (this torch has no sdpa_kernel)"
    probe = torch.zeros((1, heads, 16, d), dtype=torch.float64)
    try:
        with warnings.catch_warnings(), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            warnings.simplefilter("ignore")  # torch warns why a kernel was not used before it raises
            torch.nn.functional.scaled_dot_product_attention(probe, probe, probe)
    except RuntimeError:
        return contextlib.nullcontext, "default dispatch: the flash CPU kernel refused float64 inputs"
    return (lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION)), "flash CPU kernel, inputs (1, H, N, d) float64"


def _torch_version() -> str:
    try:
        from importlib.metadata import version

        return version("torch")
    except Exception:  # noqa: BLE001 - only a label
        return "?"


def _afa_cases(mode: str) -> list[Case]:
    n, d = {"test": (300, 4), "quick": (512, 32), "full": (4096, 64)}[mode]

    def make():
        rng = _rng(3)
        q, k, v = (rng.normal(size=(n, d)) + 1j * rng.normal(size=(n, d)) for _ in range(3))
        q, k = q / math.sqrt(d), k / math.sqrt(d)
        omega = rng.normal(size=d)
        kw = dict(mu=0.05, sigma2=0.1, eta2=0.5, gamma2=0.1, nu=float(d), kappa=2.0)
        return Calls(
            lambda: afa.isotropic_afa(q, k, v, omega=omega, causal=True, **kw),
            lambda: blocked_isotropic_afa(q, k, v, omega=omega, **kw),
        )

    # cost per allowed pair: the cross term Re(q̃ᴴk̃) as a real product of width 2d (4d flops) and the real
    # weights times complex values (4d flops): 8d flops, twice softmax's 4d; an exp and a log1p (the
    # Student weight of a residual that depends on both ends). e^{−μΔt} and Σ(Δt) depend on the lag only
    # (N values), so they are not counted per pair. Complex q, k, v read and the output written once.
    pairs = n * (n + 1) / 2
    return [
        Case(
            "afa",
            "isotropic_afa",
            f"N={n},d={d},causal",
            make,
            Cost(flops=8 * pairs * d, exps=2 * pairs, bytes=16 * 4 * n * d),
            f"blocked NumPy (query blocks of {BLOCK})",
        )
    ]


# --- random features ----------------------------------------------------------------------------
def _efficient_cases(mode: str) -> list[Case]:
    n, d, m = {"test": (150, 8, 16), "quick": (1024, 64, 64), "full": (8192, 64, 256)}[mode]
    out = []
    for kind in ("linear", "performer", "rfa"):
        for causal in (False, True):

            def make(kind=kind, causal=causal):
                rng = _rng(4)
                q, k, v = rng.normal(size=(3, n, d))
                if kind == "linear":
                    ref = lambda: random_features.linear_attention(q, k, v, causal=causal)  # noqa: E731
                    base = lambda: chunked_kernel_attention(elu_plus_one(q), elu_plus_one(k), v, causal)  # noqa: E731
                    loop = lambda: random_features.linear_attention_loop(q, k, v, causal=causal)  # noqa: E731
                elif kind == "performer":
                    q, k = q / 2, k / 2
                    w = random_features.orthogonal_gaussian(m, d, rng=5)
                    kw = dict(n_features=m, rng=None, projection=w, causal=causal)
                    ref = lambda: random_features.performer_attention(q, k, v, **kw)  # noqa: E731
                    base = lambda: performer_baseline(q, k, v, w, causal)  # noqa: E731
                    loop = lambda: random_features.performer_attention_loop(q, k, v, **kw)  # noqa: E731
                else:
                    w = _rng(6).standard_normal((m // 2, d)) / 0.5  # what rng=6 draws inside rfa_attention
                    kw = dict(n_features=m // 2, sigma=0.5, rng=6, causal=causal)
                    ref = lambda: random_features.rfa_attention(q, k, v, **kw)  # noqa: E731
                    base = lambda: rfa_baseline(q, k, v, w, causal)  # noqa: E731
                    loop = None
                return Calls(ref, base, loop if causal and kind != "rfa" else None)

            # cost: the features, then φ(K)ᵀ[V, 1] and φ(Q)S: 4 n·feats·(d + 1) flops, causal or not (the
            # recurrent prefix-sum form does exactly this per step; the in-chunk products of a chunked form
            # are its own price, not work every code must do, so they are not counted). Features: elu + 1
            # needs an exp for the negative entries only (half of Gaussian inputs, n·d of 2n·d); Performer
            # projects q and k on m directions (4ndm flops) and takes 2nm exps; RFA projects on m/2
            # frequencies (2ndm flops) and takes a sine and a cosine of each (2nm, counted at the exp rate)
            feats = d if kind == "linear" else m
            feature_cost = {
                "linear": Cost(exps=n * d),
                "performer": Cost(flops=4 * n * d * m, exps=2 * n * m),
                "rfa": Cost(flops=2 * n * d * m, exps=2 * n * m),
            }[kind]
            attend = 4 * n * feats * (d + 1)
            chunked = causal and kind != "rfa"
            out.append(
                Case(
                    "random_features",
                    f"{kind}_attention",
                    f"N={n},d={d}" + ("" if kind == "linear" else f",m={m}") + (",causal" if causal else ""),
                    make,
                    Cost(flops=feature_cost.flops + attend, exps=feature_cost.exps, bytes=8 * 4 * n * d),
                    "NumPy features + " + (f"chunked prefix sums (chunks of {CHUNK})" if causal else "two products"),
                    loop_target=20.0 if chunked and mode == "full" else None,
                )
            )
    return out


# --- state-space models -------------------------------------------------------------------------
def _ssm_cases(mode: str) -> list[Case]:
    L, d, n = {"test": (300, 4, 4), "quick": (1024, 32, 16), "full": (8192, 64, 16)}[mode]

    def make_scan():
        rng = _rng(7)
        u = rng.normal(size=(L, d))
        delta = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), (L, d)))
        A = -np.broadcast_to(np.arange(1.0, n + 1), (d, n))  # S4D-Real
        B, C = rng.normal(size=(2, L, n))
        D = np.ones(d)
        return Calls(lambda: ssm.selective_scan(u, delta, A, B, C, D), lambda: stepwise_selective_scan(u, delta, A, B, C, D))

    Lk, N, H = {"test": (300, 8, 3), "quick": (2048, 32, 8), "full": (8192, 32, 32)}[mode]

    def make_s4d():
        rng = _rng(8)
        A = np.broadcast_to(-0.5 + 1j * np.pi * np.arange(N), (H, N))  # S4D-Lin
        B = np.ones((H, N), dtype=complex)
        C = rng.normal(size=(H, N)) + 1j * rng.normal(size=(H, N))
        step = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), H))
        return Calls(
            lambda: ssm.s4d_kernel(A, B, C, step, Lk, conj_pairs=True), lambda: vandermonde_s4d_kernel(A, B, C, step, Lk)
        )

    Ls, Ns, Hs = {"test": (256, 8, 2), "quick": (2048, 32, 8), "full": (8192, 64, 16)}[mode]

    def make_s4():
        rng = _rng(9)
        Lam, P, B, _ = ssm.hippo_legs_dplr(Ns)
        Lam, P, B = (np.broadcast_to(a, (Hs, Ns)) for a in (Lam, P, B))
        Ct = rng.normal(size=(Hs, Ns)) + 1j * rng.normal(size=(Hs, Ns))
        step = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), Hs))
        return Calls(
            lambda: ssm.s4_kernel_dplr(Lam, P, P, B, Ct, step, Ls, c_tilde=True),
            lambda: cauchy_s4_kernel(Lam, P, P, B, Ct, step, Ls),
        )

    # cost: per (step, channel, state): exp(ΔA), the update and the readout; one complex multiply-add per
    # (head, mode, lag) for S4D; for S4, per (head, mode, frequency) a Cauchy term 1/(g − λ) (~8 flops) shared
    # by four sums (a complex multiply-add each, 32 flops), and a complex iFFT per head counted at the
    # fewest flops known, (34/9) L log2 L (Johnson & Frigo 2007; the radix-2 count 5 L log2 L is beaten)
    return [
        Case(
            "ssm",
            "selective_scan",
            f"L={L},d={d},n={n}",
            make_scan,
            Cost(flops=6 * L * d * n, exps=L * d * n, bytes=8 * L * (3 * d + 2 * n)),
            "NumPy step loop in time blocks (Mamba's reference scan)",
            bound_note="a scan: its flops at the GEMM rate",
        ),
        Case(
            "ssm",
            "s4d_kernel",
            f"L={Lk},N={N},H={H}",
            make_s4d,
            # conj_pairs: 2 Re K̄ needs only Re(P·W), two real multiply-adds (4 flops) per (h, n, l) term
            Cost(flops=4 * H * N * Lk, bytes=8 * H * Lk),
            "NumPy Vandermonde exp(outer) product per head",
            bound_note="a Vandermonde sum at the GEMM rate",
        ),
        Case(
            "ssm",
            "s4_kernel_dplr",
            f"L={Ls},N={Ns},H={Hs},c_tilde",
            make_s4,
            Cost(flops=40 * Hs * Ns * Ls + 34 / 9 * Hs * Ls * math.log2(Ls), bytes=16 * Hs * Ls),
            "NumPy Cauchy sums + Woodbury + ifft per head",
            bound_note="Cauchy sums and an FFT at the GEMM rate",
        ),
    ]


# --- chunked linear recurrences -----------------------------------------------------------------
def _linear_rnn_cases(mode: str) -> list[Case]:
    sizes = {"test": [(2, 150, 8)], "quick": [(4, 1024, 32)], "full": [(4, 8192, 64), (4, 4096, 128)]}[mode]
    H, L, d = {"test": (2, 150, 8), "quick": (4, 1024, 32), "full": (4, 2048, 64)}[mode]
    return [case for H_, L_, d_ in sizes for case in _linear_rnn_at(mode, H_, L_, d_)] + _fast_forgetting(H, L, d)


def _fast_forgetting(H: int, L: int, d: int) -> list[Case]:
    """GLA with gates per key channel of 0.3 … 0.9, SSD with Mamba-2's largest decays (A = −4 … −16, Δ up to 0.5),
    and Gated DeltaNet with gates per head of 0.3 … 0.9: every chunk of 64 steps decays below e^−30 (in some
    channel), the regime of the exact paths of refimpl's chunked forms, against plain chunked forms whose decays
    come from segment sums. No loop-twin target: the loop twins do not depend on the gates."""

    def make_gla():
        rng = _rng(13)
        q, k, v = rng.normal(size=(3, H, L, d))
        log_g = np.log(rng.uniform(0.3, 0.9, (H, L, d)))
        return Calls(lambda: linear_rnn.gated_linear_attention(q, k, v, log_g),
                     lambda: chunked_gla(q, k, v, log_g, segment_sums=True))

    def make_ssd():
        rng = _rng(14)
        x = rng.normal(size=(H, L, d))
        dt = np.exp(rng.uniform(np.log(0.05), np.log(0.5), (H, L)))
        A, D = -np.linspace(4.0, 16.0, H), np.ones(H)
        B, C = rng.normal(size=(2, 1, L, d))
        return Calls(lambda: linear_rnn.ssd(x, dt, A, B, C, D), lambda: chunked_ssd(x, dt, A, B, C, D))

    def make_delta():
        rng = _rng(15)
        q, k, v = rng.normal(size=(3, H, L, d))
        k /= np.linalg.norm(k, axis=-1, keepdims=True)
        beta, log_g = rng.uniform(0.1, 0.9, (H, L)), np.log(rng.uniform(0.3, 0.9, (H, L)))
        return Calls(lambda: linear_rnn.delta_rule(q, k, v, beta, log_g=log_g),
                     lambda: chunked_delta_rule(q, k, v, beta, log_g))

    variant, note = f"H={H},L={L},d={d}", dict(bound_note="the recurrent form's flops at the GEMM rate")
    return [
        Case("linear_rnn", "gated_linear_attention", variant + ",gate-per-channel,fast-forgetting", make_gla,
             Cost(flops=4 * H * L * d * d, exps=H * L * d, bytes=8 * 5 * H * L * d), f"NumPy chunks of {CHUNK}, segment sums",
             **note),
        Case("linear_rnn", "ssd", variant + ",fast-forgetting", make_ssd, Cost(flops=4 * H * L * d * d, exps=H * L,
             bytes=8 * 3 * H * L * d), f"NumPy chunks of {CHUNK}", **note),
        Case("linear_rnn", "delta_rule", variant + ",gate-per-head,fast-forgetting", make_delta,
             Cost(flops=6 * H * L * d * d, exps=H * L, bytes=8 * 4 * H * L * d), f"NumPy chunks of {CHUNK} (WY form), segment sums",
             **note),
    ]


def _linear_rnn_at(mode: str, H: int, L: int, d: int) -> list[Case]:
    # heads of 128 dimensions (full mode: L = 4096, no loop twin) are a case of their own: their chunk
    # products have more than 64 x 64 outputs, which OpenBLAS splits over threads of its own

    def qkv(seed):
        rng = _rng(seed)
        q, k, v = rng.normal(size=(3, H, L, d))
        return rng, q, k / np.linalg.norm(k, axis=-1, keepdims=True), v

    with_loop = d <= 64

    def make_ssd():
        rng = _rng(10)
        x = rng.normal(size=(H, L, d))
        dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), (H, L)))
        A, D = -np.arange(1.0, H + 1), np.ones(H)
        B, C = rng.normal(size=(2, 1, L, d))
        return Calls(
            lambda: linear_rnn.ssd(x, dt, A, B, C, D),
            lambda: chunked_ssd(x, dt, A, B, C, D),
            (lambda: linear_rnn.ssd_loop(x, dt, A, B, C, D)) if with_loop else None,
        )

    def make_gla():
        rng, q, k, v = qkv(11)
        log_g = np.log(rng.uniform(0.9, 1.0, (H, L, d)))  # per key channel
        return Calls(
            lambda: linear_rnn.gated_linear_attention(q, k, v, log_g),
            lambda: chunked_gla(q, k, v, log_g),
            (lambda: linear_rnn.gated_linear_attention_loop(q, k, v, log_g)) if with_loop else None,
        )

    def make_delta():
        rng, q, k, v = qkv(12)
        beta = rng.uniform(0.1, 0.9, (H, L))
        return Calls(
            lambda: linear_rnn.delta_rule(q, k, v, beta),
            lambda: chunked_delta_rule(q, k, v, beta),
            (lambda: linear_rnn.delta_rule_loop(q, k, v, beta)) if with_loop else None,
        )

    # cost: the fewest flops of any exact algorithm, which is the recurrent (one step at a time) form: per
    # step and head, the d × d state is updated by a rank-one product (2d² flops) and read out (2d²);
    # the delta rule also needs S k before its update (6d² in all). A chunked form adds its in-chunk
    # products (4·c·d per step for chunks of c) and, for the delta rule, the WY/UT transform's
    # triangular solve: the price of running at GEMM speed, not work that every code must do, so neither
    # is counted. Exps: one decay e^{Δ_t A} per step and head (SSD), the gates g = exp(log g) per step and
    # key channel (GLA); the delta rule has none.
    state = 4 * H * L * d * d
    loop = 20.0 if mode == "full" and with_loop else None
    variant = f"H={H},L={L},d={d}"
    base = f"NumPy chunks of {CHUNK}"
    note = dict(bound_note="the recurrent form's flops at the GEMM rate")
    return [
        Case("linear_rnn", "ssd", variant, make_ssd, Cost(flops=state, exps=H * L, bytes=8 * 3 * H * L * d),
             base, loop_target=loop, **note),
        Case("linear_rnn", "gated_linear_attention", variant + ",gate-per-channel", make_gla,
             Cost(flops=state, exps=H * L * d, bytes=8 * 5 * H * L * d), base, loop_target=loop, **note),
        Case("linear_rnn", "delta_rule", variant, make_delta,
             Cost(flops=1.5 * state, bytes=8 * 4 * H * L * d), base + " (WY form)", loop_target=loop, **note),
    ]


# --- backward passes ----------------------------------------------------------------------------
def _backward_cases(mode: str) -> list[Case]:
    """The vector–Jacobian products kernel authors check with the forward: FlashAttention's backward
    and Mamba's scan's, against plain NumPy forms of the same algorithms."""
    n, d = {"test": (300, 8), "quick": (1024, 64), "full": (4096, 64)}[mode]
    out = []
    for causal in (False, True):

        def make_attention(causal=causal):
            q, k, v, dy = _rng(20).normal(size=(4, n, d))
            return Calls(
                lambda: attention.softmax_attention_vjp(q, k, v, dy, causal=causal),
                lambda: blocked_softmax_attention_vjp(q, k, v, dy, causal),
            )

        # cost: FlashAttention-2's backward with its forward's output O at hand: S = QKᵀ again, dP = dO Vᵀ,
        # dV = Pᵀ dO, dQ = dS K, dK = dSᵀ Q (10d flops per allowed pair), one exp per pair; q, k, v, dy
        # read and dq, dk, dv written once. Without O (the call's inputs), O = P V costs 2d more: not counted
        pairs = n * (n + 1) / 2 if causal else n * n
        out.append(Case("attention", "softmax_attention_vjp", f"N={n},d={d}" + (",causal" if causal else ""),
                        make_attention, Cost(flops=10 * pairs * d, exps=pairs, bytes=8 * 7 * n * d),
                        f"blocked NumPy (query blocks of {BLOCK})"))
    nl = {"test": 150, "quick": 1024, "full": 8192}[mode]

    def make_linear():
        q, k, v, dy = _rng(22).normal(size=(4, nl, d))
        return Calls(lambda: random_features.linear_attention_vjp(q, k, v, dy, causal=True),
                     lambda: chunked_linear_attention_vjp(q, k, v, dy))

    # cost: the forward's prefix sums again and three more of the same form (4 N d (d + 1) flops each, counted as
    # for the forward case: a chunked form's in-chunk products are its own price), elu + 1 of q and k
    out.append(Case("random_features", "linear_attention_vjp", f"N={nl},d={d},causal", make_linear,
                    Cost(flops=16 * nl * d * (d + 1), exps=nl * d, bytes=8 * 7 * nl * d),
                    f"NumPy features + chunked prefix sums (chunks of {CHUNK})"))
    L, ds, ns = {"test": (300, 4, 4), "quick": (1024, 32, 16), "full": (8192, 64, 16)}[mode]

    def make_scan():
        rng = _rng(21)
        u, dy = rng.normal(size=(2, L, ds))
        delta = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), (L, ds)))
        A = -np.broadcast_to(np.arange(1.0, ns + 1), (ds, ns))  # S4D-Real
        B, C = rng.normal(size=(2, L, ns))
        D = np.ones(ds)
        def grads():  # in the baseline's order
            g = ssm.selective_scan_vjp(u, delta, A, B, C, D, dy)
            return tuple(g[key] for key in ("du", "ddelta", "dA", "dB", "dC", "dD"))

        return Calls(
            grads,
            lambda: stepwise_selective_scan_vjp(u, delta, A, B, C, D, dy),
        )

    # cost per (step, channel, state): the state again (update, exp), the adjoint's update, λ ā h_{t−1},
    # and the four sums over states or channels (dC, dΔ through ā and b̄, dA, dB): about 16 flops and one exp
    out.append(Case("ssm", "selective_scan_vjp", f"L={L},d={ds},n={ns}", make_scan,
                    Cost(flops=16 * L * ds * ns, exps=L * ds * ns, bytes=8 * L * (5 * ds + 4 * ns)),
                    "NumPy step loops, states stored (the adjoint recurrence backwards)",
                    bound_note="a scan: its flops at the GEMM rate"))
    return out


# --- convolution --------------------------------------------------------------------------------# --- convolution --------------------------------------------------------------------------------
def _conv_cases(mode: str) -> list[Case]:
    n, d = {"test": (300, 3), "quick": (8192, 16), "full": (65536, 64)}[mode]

    def make():
        u, h = _rng(13).normal(size=(2, n, d))
        return Calls(lambda: mixing.fft_conv(u, h), lambda: fftconvolve_causal(u, h))

    # cost per channel: three real FFTs of length m >= 2N − 1 (u, h forward, y inverse) and the product of
    # m/2 + 1 complex bins (6 flops each). A real FFT is counted at the fewest flops known: the leading
    # term (17/9) m log2 m of Johnson & Frigo's modified split radix (34/9 · m log2 m for complex data, half
    # for real data; IEEE Trans. Signal Process. 55(1), 2007), less 4m for the lower-order terms (the
    # real split radix takes 2 m log2 m − 4m + 6; Sorensen et al. 1987). The earlier 2.5 m log2 m is the
    # radix-2 count, which split-radix codes beat: not a lower bound.
    m = scipy.fft.next_fast_len(2 * n - 1, real=True)
    rfft = max(17 / 9 * m * math.log2(m) - 4 * m, 0.0)
    return [
        Case(
            "mixing",
            "fft_conv",
            f"N={n},d={d}",
            make,
            Cost(flops=(3 * rfft + 3 * m) * d, bytes=8 * 3 * n * d),
            "scipy.signal.fftconvolve",
            bound_note="FFT flops at the GEMM rate",
        )
    ]


# --- Lyapunov -----------------------------------------------------------------------------------
def _lyapunov_cases(mode: str) -> list[Case]:
    sizes = {"test": ((300, 8), (30, 6)), "quick": ((20_000, 32), (200, 32)), "full": ((100_000, 64), (256, 64))}[mode]
    out = []
    for full_noise, (lags, d) in zip((False, True), sizes):

        def make(full_noise=full_noise, lags=lags, d=d):
            rng = _rng(14)
            lam = -rng.uniform(0.01, 1.0, d) + 1j * rng.normal(0.0, 2.0, d)
            if full_noise:
                b = rng.normal(size=(d, d)) + 1j * rng.normal(size=(d, d))
                g = b @ b.conj().T / d
            else:
                g = rng.uniform(0.1, 1.0, d)
            tau = np.linspace(0.0, 50.0, lags)
            return Calls(lambda: lyapunov.dle_covariance(lam, g, tau), lambda: lyapunov_dle_covariance(lam, g, tau))

        # cost: diagonal noise, one expm1 per lag and mode and the real output written once. Full noise:
        # e^{(λ_k + λ̄_l)τ} = e^{λ_k τ} · conj(e^{λ_l τ}), so a complex exp (counted as two) per lag and mode
        # suffices where e^{zτ} − 1 stays away from 0 (there the product e^{λ_k τ} conj(e^{λ_l τ}) − 1 loses
        # no digits; where it nears 0 — ω_k ≈ ω_l, small (μ_k + μ_l)τ — an exact algorithm needs more, so
        # this count stays a lower bound), then at least one complex product (6 flops) per entry of the
        # Hermitian upper triangle; the complex d × d output is written once per lag. (Counting a complex
        # exp per entry, as before, charged work that this factorization avoids where it applies.)
        if full_noise:
            cost = Cost(flops=6 * lags * d * (d + 1) / 2, exps=2 * lags * d, bytes=16 * lags * d * d)
        else:
            cost = Cost(exps=lags * d, bytes=8 * lags * d)
        out.append(
            Case(
                "lyapunov",
                "dle_covariance",
                f"lags={lags},d={d}," + ("full-noise" if full_noise else "diagonal-noise"),
                make,
                cost,
                "SciPy solve_continuous_lyapunov + NumPy expm1 broadcast",
            )
        )
    return out


# --- Kalman -------------------------------------------------------------------------------------
def _kalman_model(n: int, seed: int):
    rng = _rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    b = rng.normal(size=(n, n))
    F, H = 0.95 * q, np.eye(2, n)  # spectral radius 0.95; two observed coordinates
    return F, H, b @ b.T / n + 0.1 * np.eye(n), 0.5 * np.eye(2), np.zeros(n), np.eye(n)


def _kalman_cases(mode: str) -> list[Case]:
    peer = "filterpy" if _have("filterpy") else "numpy"
    out = []
    for n in (2, 8, 32):
        # full: the performance issue's one sequence of N = 10^5 steps for n = 2 and 8; at n = 32
        # N = 2·10^4 (filterpy's per-step Python takes about 280 µs a step there, half a minute per
        # call at 10^5). These three ratios cost the bench about 35 s, quiet and busy.
        N = {"test": 300, "quick": 1_000, "full": 100_000 if n <= 8 else 20_000}[mode]

        def make(n=n, N=N):
            model = _kalman_model(n, 15)
            z = _rng(16).normal(size=(N, 2))
            base = filterpy_rts_smoother if peer == "filterpy" and mode != "test" else stepwise_rts_smoother
            return Calls(lambda: kalman.rts_smoother(z, *model), lambda: base(z, *model))

        out.append(
            Case(
                "kalman",
                "rts_smoother",
                f"N={N},n={n}",
                make,
                # the fewest flops per step: filter, F P (2n³) and the symmetric (F P) Fᵀ (n³); smoother, the
                # gain G = (P Fᵀ)(P⁻)⁻¹ by a Cholesky factor (n³/3) and two triangular solves (2n³; P Fᵀ comes
                # from the filter), then the symmetric G (P_s − P⁻) Gᵀ (3n³): about 8.3 n³, counted as 8 n³
                # (the earlier 14 n³ was one algorithm's count). Far from GEMM speed at small n: no limit target
                Cost(flops=8 * N * n**3),
                "filterpy batch_filter + rts_smoother" if peer == "filterpy" else "NumPy per-step loop (filterpy not installed)",
                base_target=0.5,  # at least 2x faster than the per-step peer
                limit_target=None,
                bound_note="small n x n products at the GEMM rate",
            )
        )
    for n in (2, 8, 32):
        Ns = {"test": 200, "quick": 256, "full": 10_000 if n <= 8 else 2_000}[mode]
        for scan, seq, what in (
            (kalman.kalman_filter_scan, kalman.kalman_filter, "filtered"),
            (kalman.rts_smoother_scan, kalman.rts_smoother, "smoothed"),
        ):

            def make_scan(n=n, Ns=Ns, scan=scan, seq=seq):
                model = _kalman_model(n, 17)
                z = _rng(18).normal(size=(Ns, 2))
                return Calls(lambda: scan(z, *model), lambda: seq(z, *model))

            out.append(
                Case(
                    "kalman",
                    scan.__name__,
                    f"N={Ns},n={n}",
                    make_scan,
                    # the fewest flops for the filtered (smoothed) moments: the sequential filter's F P Fᵀ, 3 n³ a
                    # step with symmetry (the smoother's gain and covariance, 8 n³ with the filter, as for
                    # rts_smoother above). The associative scan's log2 N sweeps of element combinations are that
                    # algorithm's price, not work every code must do: counted (10 n³ log2 N a step), they put the
                    # "limit" above the measured time (fraction 0.8 quiet, 2.3 loaded, at n = 32)
                    Cost(flops=(3 if what == "filtered" else 8) * Ns * n**3),
                    f"refimpl's sequential {seq.__name__}",
                    base_target=2.0 if n <= 8 else None,
                    limit_target=None,
                    bound_note="small n x n products at the GEMM rate",
                )
            )
    return out


# --- IIR ----------------------------------------------------------------------------------------
def _iir_cases(mode: str) -> list[Case]:
    N = {"test": 1_000, "quick": 20_000, "full": 100_000}[mode]
    b, a = [0.2, 0.3, 0.1], [1.0, -1.6, 0.8]
    sos = np.asarray(iir.butter(8, [0.1, 0.2], btype="bandpass", output="sos"))
    b4, a4 = (np.asarray(c) for c in iir.butter(4, 0.2, output="ba"))

    def make_one():
        x = _rng(19).normal(size=N)
        return Calls(lambda: iir.biquad_filter(b, a, x), lambda: scipy.signal.lfilter(b, a, x))

    def make_tf():
        x = _rng(20).normal(size=N)
        return Calls(lambda: iir.tf_filter(b4, a4, x), lambda: scipy.signal.lfilter(b4, a4, x))

    def make_tf_new():  # every call a filter never seen: its plan (the lifted matrices, _scan._block_plan) computed
        x = _rng(20).normal(size=N)

        def new_filter():
            _scan._PLANS.clear()
            return iir.tf_filter(b4, a4, x)

        return Calls(new_filter, lambda: scipy.signal.lfilter(b4, a4, x))

    def make_multi(channels=16):
        x = _rng(21).normal(size=(N, channels))
        return Calls(lambda: iir.biquad_filter(b, a, x), lambda: scipy.signal.sosfilt(np.r_[b, a][None], x, axis=0))

    def make_sos():
        x = _rng(22).normal(size=(N, 16))
        return Calls(lambda: iir.sos_filter(sos, x), lambda: scipy.signal.sosfilt(sos, x, axis=0))

    sos4 = np.asarray(iir.butter(4, 0.1, output="sos"))

    def make_sos_few():  # a fourth-order low-pass on a three-axis signal (an accelerometer's x, y, z)
        x = _rng(23).normal(size=(N, 3))
        return Calls(lambda: iir.sos_filter(sos4, x), lambda: scipy.signal.sosfilt(sos4, x, axis=0))

    # cost: 4 flops per coefficient and sample; x read and y written once. A recursion is latency-bound: no limit target
    def cost(order, ch):
        return Cost(flops=4 * order * N * ch, bytes=16 * N * ch)

    common = dict(limit_target=None, bound_note="a recursion at the GEMM rate")
    return [
        Case("iir", "biquad_filter", f"N={N},channels=1", make_one, cost(2, 1),
             "scipy.signal.lfilter (the same filter at every call: refimpl keeps its plan)", base_target=2.0, **common),
        Case("iir", "tf_filter", f"N={N},channels=1,order=4", make_tf, cost(4, 1),
             "scipy.signal.lfilter (the same filter at every call: refimpl keeps its plan)", base_target=2.0, **common),
        # the first call with a filter (filtering one signal once, the common use): the plan is part of the time
        Case("iir", "tf_filter", f"N={N},channels=1,order=4,new-filter", make_tf_new, cost(4, 1),
             "scipy.signal.lfilter (refimpl: a new plan at every call)", base_target=2.0, **common),
        Case("iir", "biquad_filter", f"N={N},channels=2", functools.partial(make_multi, 2), cost(2, 2), "scipy.signal.sosfilt",
             base_target=1.0, **common),  # stereo: too few columns to batch (the interleaved rows of _scan._block_filter_rows)
        Case("iir", "biquad_filter", f"N={N},channels=16", make_multi, cost(2, 16), "scipy.signal.sosfilt", base_target=1.0, **common),
        Case("iir", "sos_filter", f"N={N},channels=16,sections={len(sos)}", make_sos, cost(16, 16), "scipy.signal.sosfilt",
             base_target=1.0, **common),
        # few columns with a joint state too large to interleave: each column a single column, side by side
        # (_scan._block_filter_columns)
        Case("iir", "sos_filter", f"N={N},channels=3,sections={len(sos4)}", make_sos_few, cost(4, 3), "scipy.signal.sosfilt",
             base_target=1.0, **common),
    ]


_FAMILIES = (
    _softmax_cases,
    _afa_cases,
    _efficient_cases,
    _ssm_cases,
    _linear_rnn_cases,
    _backward_cases,
    _conv_cases,
    _lyapunov_cases,
    _kalman_cases,
    _iir_cases,
    _torch_cases,  # last: importing torch starts its thread pool
)


def cases(mode: str = "full") -> list[Case]:
    """Every case of ``mode`` ("full", "quick", or "test": tiny sizes for the test suite)."""
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    return [case for family in _FAMILIES for case in family(mode)]


def _matches(case: Case, pattern: str) -> bool:
    """The full name, a substring of ``module.function`` (of the full name if the pattern has a ``[``),
    or a glob (``*``, ``?``) on module, function or name; case-insensitive. Brackets are literal: they
    delimit a variant (``linear_rnn.ssd[*fast*]``), never a character class."""
    p = pattern.lower()
    if p == case.name.lower():
        return True
    if "*" in p or "?" in p:
        glob = p.replace("[", "\0").replace("]", "[]]").replace("\0", "[[]")  # fnmatch's escapes for [ and ]
        names = (case.module, case.function, f"{case.module}.{case.function}", case.name)
        return any(fnmatch.fnmatchcase(s.lower(), glob) for s in names)
    return p in (case.name if "[" in p else f"{case.module}.{case.function}").lower()


def select(all_cases: list[Case], only: list[str] | None) -> list[Case]:
    """The cases that match any of the ``--only`` patterns (all cases if none is given)."""
    return [c for c in all_cases if not only or any(_matches(c, p) for p in only)]


# ============================================================================ measuring one case
def _agreement(a, b) -> float:
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    return max(rel_error(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


# A threaded BLAS product leaves its worker threads spinning (runnable, waiting for the next
# product) for a while after it returns: OpenBLAS's THREAD_TIMEOUT, 2^28 cycles by default, about
# 0.1 s. Measured: a spinning worker makes the head-threaded chunked forms of refimpl.linear_rnn
# 1.5-2x slower for that long (GLA at H = 4, L = 8192, best of 5: 26-33 ms after a 0.2 s pause,
# 45-61 ms right after a 512 x 512 product; isotropic AFA 146 ms median right after its baseline,
# 112 ms after a wait). So that no sample is charged for the threads of the call before it (the
# baseline's, refimpl's, or the previous case's), every timed call over BEST_OF (the median-of-3
# and single runs, where a 0.1 s spin covers much of a call) first waits, up to SETTLE_MAX
# seconds, until no other thread of this process is running (read from /proc; elsewhere it does
# not wait); so does the first call of each case. The wait is not part of the sample. Best-of
# runs of shorter calls do not wait: their many waits would double the length of the run.
SETTLE_MAX = 0.3
SETTLE_POLL = 0.002
_TASKS = "/proc/self/task"


def _running_threads() -> int:
    """Threads of this process, other than the caller, that are running or runnable (state R)."""
    me, n = threading.get_native_id(), 0
    try:
        tids = os.listdir(_TASKS)
    except OSError:  # no /proc: nothing to wait for
        return 0
    for tid in tids:
        if int(tid) == me:
            continue
        try:
            with open(f"{_TASKS}/{tid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):  # the thread ended meanwhile
            continue
        n += state == "R"
    return n


def settle(max_wait: float = SETTLE_MAX) -> float:
    """Wait until no other thread of this process runs (at most ``max_wait`` s); return the wait."""
    t0 = time.perf_counter()
    while _running_threads() and time.perf_counter() - t0 < max_wait:
        time.sleep(SETTLE_POLL)
    return time.perf_counter() - t0


def _timed(fn: Callable[[], Any], wait: bool = True) -> tuple[float, Any]:
    if wait:
        settle()  # the previous call's BLAS threads asleep: each sample starts from the same state
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _peak(fn: Callable[[], Any]) -> int:
    """Peak bytes allocated during one call (NumPy reports its buffers to tracemalloc)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@dataclass
class _Plan:
    runs: int
    stat: str  # "median" or "best"


# Run policy (see the module docstring): thresholds on the duration of the first calls, in seconds.
SINGLE_RUN = 0.75  # a call over this is timed once (its warm-up is the sample); at 1 s, softmax attention at
# N = 16384 (baseline 0.9-1.1 s) fell on either side and its case took 4.7 s in one full run, 15.5 s in another
LOOP_PAIRS = 3  # (loop twin, refimpl) pairs timed back to back for the loop-twin ratio (full mode)
LOOP_WARMUP = 0.1  # seconds of untimed refimpl calls between the loop twin and refimpl's sample (full mode)
BEST_OF = 0.02  # a call under this is timed best-of-many, within a budget; in between, median of 3
BEST_OF_BUDGET = 0.25  # seconds of refimpl + baseline calls that the best-of runs may take (per phase)
BEST_OF_RUNS = (6, 30)  # ... but at least 6 and at most 30 runs (an even number: two blocks each)
QUICK_BUDGET = 0.1  # quick mode: a pair of calls over this is timed once, else best of <= 10 within it
#: a warm-up pair whose slower call lies between BEST_OF and PLAN_RECHECK · BEST_OF is followed by a second call of
#: each function, and the faster of each function's two calls chooses the plan: a first call can carry one-time
#: costs (new threads, fresh pages) that put a function with 5 ms calls over BEST_OF. Measured: softmax attention at
#: N = 1024 (5.3 ms a call in a loop, 9-14 ms a call after a pause) drew the median of 3 from a first call over 20 ms
#: in one full run (7.3 ms, fraction 0.28) and the best of 8 in the next (5.2-6.2 ms): the same case, two statistics.
PLAN_RECHECK = 4


def _plan(case: Case, t_ref: float, t_base: float, quick: bool) -> _Plan:
    """How many runs, from the warm-up durations: the run policy of the module docstring.

    The best-of runs are capped by a time budget (:data:`BEST_OF_BUDGET` for the refimpl +
    baseline pairs of one phase) instead of a fixed count: a 1 ms call gets 30 runs, an 8 ms
    call about 15, each phase of a short case costs at most about a quarter of a second.
    """
    if case.repeats is not None:
        return _Plan(case.repeats, "median")
    slowest, pair = max(t_ref, t_base), t_ref + t_base
    if quick:
        return _Plan(1, "median") if pair > QUICK_BUDGET else _Plan(int(min(10, max(2, QUICK_BUDGET / max(pair, 1e-6)))), "best")
    if slowest > SINGLE_RUN:
        return _Plan(1, "median")
    if slowest > BEST_OF:
        return _Plan(3, "median")
    low, high = BEST_OF_RUNS
    runs = int(min(high, max(low, BEST_OF_BUDGET / max(pair, 1e-6))))
    return _Plan(runs - runs % 2, "best")  # even: two blocks per function (see _sample)


def _sample(calls: Calls, plan: _Plan, blocks: bool = False) -> tuple[float, float]:
    """Alternate refimpl and baseline runs (so that a drift in load hits both); return their statistics.

    The order alternates too (refimpl, baseline, baseline, refimpl, …): a call that ends with a
    multithreaded BLAS product leaves BLAS threads spinning for about 0.1 s, and a best-of run does
    not wait for them (:func:`settle`), so in a fixed order one function would always start next
    to the other's spinning threads (measured in one run, best of 40: refimpl's linear attention,
    N = 8192, 9.7 ms right after its baseline's two-thread products, 8.0 ms right after itself).
    Each function then has samples after itself and after the other.

    ``blocks`` (best-of runs of the full bench): the same ABBA order by blocks of half the runs,
    each block started once the previous one's threads are asleep (one :func:`settle` per block,
    not per call). Call by call, every sample of a short call falls within the 0.1 s spin of the
    other function's last products, so the best of them is not the function's own time: softmax
    attention at N = 1024 (best of 16) measured 6.4 ms call by call against 3.7 ms in blocks, the
    same call alone 3.4-3.8 ms; the baseline (two-thread BLAS) measured the same either way."""
    ref, base = [], []
    if blocks and plan.stat == "best":
        per = max(1, plan.runs // 2)  # plan.runs is even (_plan)
        for fn, acc in ((calls.refimpl, ref), (calls.baseline, base), (calls.baseline, base), (calls.refimpl, ref)):
            settle()  # the other function's BLAS threads asleep (the wait is not timed)
            acc.extend(_timed(fn, False)[0] for _ in range(per))
        return float(np.min(ref)), float(np.min(base))
    wait = plan.stat == "median"  # best-of runs (calls under BEST_OF) do not wait: up to 60 waits of 0.1 s
    for i in range(plan.runs):
        if i % 2:
            base.append(_timed(calls.baseline, wait)[0])
            ref.append(_timed(calls.refimpl, wait)[0])
        else:
            ref.append(_timed(calls.refimpl, wait)[0])
            base.append(_timed(calls.baseline, wait)[0])
    stat = np.median if plan.stat == "median" else np.min
    return float(stat(ref)), float(stat(base))


class _Clock:
    """Wall time per phase of one case (make, warm-up, quiet, peak memory, loop twin, busy): where the time goes."""

    def __init__(self):
        self.phases: dict = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phases[phase] = self.phases.get(phase, 0.0) + time.perf_counter() - t0


def measure(case: Case, limits: Limits | None, quick: bool, *, over_budget: float = 20.0,
            load: CompetingLoad | None = None) -> dict:
    """Run one case: agreement, times quiet (and under contention), memory, loop twin; a JSON record.

    The first call of each function is a warm-up whose output is compared; its duration chooses the
    number of runs (:func:`_plan`); for a single-run plan the warm-ups are the samples. A call longer
    than ``over_budget`` seconds is run once only: no memory, contention or loop measurement
    (reported as not measured, a MISS where a target needs it). A case with fixed ``repeats`` (the
    PyTorch comparison) takes every run as a sample instead (one run only if it is over the budget).
    The busy samples run inside ``load.busy()`` (one competing process for the whole run); without
    ``load``, a competing process is started for this case alone. ``phase_s`` in the record is the
    wall time of each phase.
    """
    start = time.perf_counter()
    clock = _Clock()
    with clock("make"):
        calls = case.make()
    with clock("settle"):
        settle()  # the previous case's BLAS threads asleep
    rec: dict = {"name": case.name, "module": case.module, "function": case.function, "variant": case.variant,
                 "rerun": None}  # the function of a single-run case timed a second time (see below)
    if case.repeats is not None:
        ref, base = [], []
        with clock("quiet"):
            for _ in range(case.repeats):
                t, out = _timed(calls.refimpl)
                if not ref:
                    out_ref = out  # the first call's output is the one compared
                ref.append(t)
                t, out = _timed(calls.baseline)
                if not base:
                    out_base = out
                base.append(t)
                if max(ref[0], base[0]) > over_budget:
                    break  # one run is all the budget allows
        plan, slow = _Plan(len(ref), "median"), len(ref) < case.repeats
        rec["time_s"], rec["baseline_s"] = float(np.median(ref)), float(np.median(base))
    else:
        with clock("warmup"):
            t_base, out_base = _timed(calls.baseline)
            t_ref, out_ref = _timed(calls.refimpl)
            if not quick and BEST_OF < max(t_ref, t_base) <= PLAN_RECHECK * BEST_OF:  # one-time costs? (PLAN_RECHECK)
                t_base, t_ref = min(t_base, _timed(calls.baseline)[0]), min(t_ref, _timed(calls.refimpl)[0])
        slow = max(t_ref, t_base) > over_budget
        plan = _plan(case, t_ref, t_base, quick)
        if slow or plan.runs == 1:
            plan = _Plan(1, "median")
            rec["time_s"], rec["baseline_s"] = t_ref, t_base  # the first calls are the samples ...
            if not slow and not quick:
                # ... except for a function under SINGLE_RUN beside a slow one: it runs once more and
                # keeps the faster of its two calls. A first call can carry a one-time cost of the
                # machine: the first 128 MiB array of a process (softmax attention's weights at
                # N = 4096) took 0.48-0.58 s where later calls took 74-106 ms, the kernel compacting
                # memory for the huge pages NumPy asks for (measured; not after a previous process
                # had freed such pages). A slow function's warm-up stays its sample (the bench's budget).
                with clock("quiet"):
                    if t_ref <= SINGLE_RUN:
                        rec["time_s"] = min(t_ref, _timed(calls.refimpl)[0])
                        rec["rerun"] = "refimpl"
                    if t_base <= SINGLE_RUN:
                        rec["baseline_s"] = min(t_base, _timed(calls.baseline)[0])
                        rec["rerun"] = "baseline"
        else:
            with clock("quiet"):
                rec["time_s"], rec["baseline_s"] = _sample(calls, plan, blocks=not quick)
    baseline = case.baseline if calls.note is None else f"{case.baseline}, {calls.note}"
    rec.update(baseline=baseline, agree=_agreement(out_ref, out_base), tol=case.tol)
    rec.update(runs=plan.runs, stat=plan.stat, ratio=rec["time_s"] / rec["baseline_s"], over_budget=slow)
    # peak memory: a separate traced call. tracemalloc slows allocation-heavy code several-fold (the
    # selective scan 7x, the Kalman smoother 2.6x at the quick sizes), so a traced call is never a sample.
    rec["peak_bytes"] = None
    if case.memory and not slow:
        with clock("peak"):
            rec["peak_bytes"] = _peak(calls.refimpl)
    rec["memory_bound"] = case.memory_bound
    rec["loop_s"] = rec["loop_ratio"] = rec["loop_agree"] = rec["loop_pairs"] = None
    if calls.loop is not None and not slow:
        # the loop twin and refimpl back to back, LOOP_PAIRS times: each ratio is taken under one
        # machine state (its speed drifts by tens of percent within a run on a shared host), and
        # the verdict reads their median, not one loop sample against a median taken earlier.
        # refimpl's sample follows its own warm-up (as in the quiet phase): run it for LOOP_WARMUP
        # seconds first, untimed. The loop twin keeps one core busy and leaves the other idle; the
        # first threaded calls after it run slower until the idle core is back to speed (measured:
        # causal linear attention, N = 8192, 12.6-17 ms for the first call after its loop twin,
        # 7-8 ms from about the tenth, 0.1 s later; the same after a 0.4 s pause or a 0.4 s
        # single-threaded spin).
        # Quick mode times the loop once and divides by the quiet time above: one cold refimpl call right after
        # the loop twin gave ratios from 0.6x to 18x for the same case.
        pairs = 1 if quick else LOOP_PAIRS
        loop_t, ratios = [], []
        with clock("loop"):
            for i in range(pairs):
                t_loop, out = _timed(calls.loop)
                if i == 0:
                    out_loop = out
                loop_t.append(t_loop)
                if quick:
                    ratios.append(t_loop / rec["time_s"])
                    continue
                warm_from = time.perf_counter()
                while time.perf_counter() - warm_from < LOOP_WARMUP:
                    calls.refimpl()
                ratios.append(t_loop / _timed(calls.refimpl)[0])
        rec["loop_s"], rec["loop_ratio"], rec["loop_pairs"] = float(np.median(loop_t)), float(np.median(ratios)), pairs
        rec["loop_agree"] = _agreement(out_ref, out_loop)
    rec["time_busy_s"] = rec["baseline_busy_s"] = rec["ratio_busy"] = None
    if case.contention and not quick and not slow:
        with clock("busy"), (load.busy() if load is not None else competing_load()):
            rec["time_busy_s"], rec["baseline_busy_s"] = _sample(calls, plan, blocks=True)
        rec["ratio_busy"] = rec["time_busy_s"] / rec["baseline_busy_s"]
    rec["limit_s"] = None if limits is None else limits.time(case.cost)
    rec["fraction"] = None if limits is None else rec["limit_s"] / rec["time_s"]
    rec["bound_note"] = case.bound_note
    rec["cost"] = {"flops": case.cost.flops, "exps": case.cost.exps, "bytes": case.cost.bytes}
    rec["verdicts"] = {} if quick else _verdicts(case, rec)
    rec["phase_s"] = clock.phases
    rec["case_wall_s"] = time.perf_counter() - start  # everything above: what the case costs the bench
    return rec


def _verdicts(case: Case, rec: dict) -> dict:
    """PASS/MISS per target (full mode); a target that could not be measured is a MISS."""
    v = {"agree": rec["agree"] <= case.tol}
    if case.base_target is not None:
        ratios = [rec["ratio"]] + ([rec["ratio_busy"]] if case.contention else [])
        measured = case.repeats is None or rec["runs"] == case.repeats  # the protocol was followed
        v["baseline"] = measured and all(r is not None and r <= case.base_target for r in ratios)
    if case.limit_target is not None and rec["fraction"] is not None:
        v["limit"] = rec["fraction"] >= case.limit_target
    if case.loop_target is not None:
        v["loop"] = rec["loop_ratio"] is not None and rec["loop_ratio"] >= case.loop_target
    if case.memory_bound is not None:
        v["memory"] = rec["peak_bytes"] is not None and rec["peak_bytes"] <= case.memory_bound
    return {k: ("PASS" if ok else "MISS") for k, ok in v.items()}


# ============================================================================ printing
def _t(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs" if s >= 1e-5 else f"{s * 1e6:.2g} µs"
    return f"{s * 1e3:.1f} ms" if s < 1.0 else f"{s:.2f} s"


def _fraction(x: float, target: float | None = None) -> str:
    return _beside(x, target, 2) if x >= 0.01 else f"{x:.1e}"


def _beside(x: float, target: float | None, decimals: int) -> str:
    """``x`` with ``decimals`` decimals, or more where that many would print it as its target:
    a loop ratio of 19.97 against 20 reads 19.97, not a missed 20.0 (likewise 0.331 against 1/3)."""
    text = f"{x:.{decimals}f}"
    while target is not None and x != target and text == f"{target:.{decimals}f}" and decimals < 6:
        decimals += 1
        text = f"{x:.{decimals}f}"
    return text


def _mib(b: float | None) -> str:
    return "not measured" if b is None else f"{b / 2**20:.1f} MiB"


def _case_lines(case: Case, rec: dict, quick: bool) -> list[str]:
    runs = f"median of {rec['runs']}" if rec["stat"] == "median" else f"best of {rec['runs']}"
    if rec["runs"] == 1:
        runs = "1 run" if rec.get("rerun") is None else f"1 run, {rec['rerun']} best of 2"
    lines = [f"{rec['name']}   vs {rec['baseline']}"]
    quiet = f"quiet {_t(rec['time_s'])} / {_t(rec['baseline_s'])} = {_beside(rec['ratio'], case.base_target, 2)}x"
    if rec["ratio_busy"] is not None:
        busy = f"busy {_t(rec['time_busy_s'])} / {_t(rec['baseline_busy_s'])} = " \
               f"{_beside(rec['ratio_busy'], case.base_target, 2)}x"
    elif rec["over_budget"]:
        busy = "busy: not measured (a call took over the budget)"
    else:
        busy = "busy: not run (quick mode)" if quick else "busy: not run (same-process comparison)"
    note = f"; {rec['bound_note']}" if rec.get("bound_note") else ""
    limit = "" if rec["limit_s"] is None else f"limit {_t(rec['limit_s'])} (fraction {_fraction(rec['fraction'], case.limit_target)}{note})"
    lines.append(f"    {quiet}   {busy}   [{runs}; case took {rec['case_wall_s']:.1f} s]")
    extra = f"    {limit}   peak {_mib(rec['peak_bytes'])}   agree {rec['agree']:.1e}"
    if rec["loop_ratio"] is not None:
        pairs = (" (against the quiet time)" if quick else "") if rec.get("loop_pairs", 1) == 1 else \
            f", median of {rec['loop_pairs']} back-to-back pairs"
        extra += f"   loop twin {_t(rec['loop_s'])}, loop/refimpl = {_beside(rec['loop_ratio'], case.loop_target, 1)}x{pairs} (agree {rec['loop_agree']:.1e})"
    lines.append(extra)
    if quick:
        lines.append("    ratios not judged (quick mode)")
    else:
        lines.append("    " + "; ".join(_verdict_text(case, k, v) for k, v in rec["verdicts"].items()))
    return lines


def _verdict_text(case: Case, key: str, verdict: str) -> str:
    if key == "agree":
        what = f"agree <= {case.tol:.0e}"
    elif key == "baseline":
        what = f"ratio <= {case.base_target:g}x" + (" quiet and busy" if case.contention else "")
    elif key == "limit":
        what = "fraction >= 1/3" if case.limit_target == 1.0 / 3.0 else f"fraction >= {case.limit_target:.3g}"
    elif key == "loop":
        what = f"loop/refimpl >= {case.loop_target:g}x"
    else:
        what = f"peak <= {_mib(case.memory_bound)} (O(block·N))"
    return f"{what}: {verdict}"


def environment() -> dict:
    """numpy/scipy versions, BLAS, CPU count and the thread variables: what the timings depend on."""
    try:
        config = np.show_config(mode="dicts")
    except TypeError:  # numpy < 1.26 has no mode
        config = None
    threads = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
    from . import __version__

    return {
        "refimpl": __version__,
        "git_commit": _git_commit(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "cpu_count": os.cpu_count(),
        "usable_cores": _cores(),
        "thread_env": {k: os.environ.get(k) for k in threads},
        "huge_pages": _huge_pages(),
        "numpy_config": config,
        "filterpy": _have("filterpy"),
        "torch": _torch_version() if _have("torch") else None,
    }


def _huge_pages() -> dict:
    """Whether NumPy advises huge pages for its large arrays, and the kernel's transparent-huge-page
    settings: where ``defrag`` is ``madvise``, a fault on such an array may wait while the kernel
    compacts memory (first calls 2 to 40 times slower on the benchmark machines; see the README)."""
    try:
        from numpy._core import multiarray

        advised = bool(multiarray._get_madvise_hugepage())
    except (ImportError, AttributeError):  # another NumPy: not reported
        advised = None
    kernel = {}
    for key in ("enabled", "defrag"):
        try:
            with open(f"/sys/kernel/mm/transparent_hugepage/{key}") as f:
                kernel[key] = next((w[1:-1] for w in f.read().split() if w.startswith("[")), None)
        except OSError:  # not Linux, or no THP
            kernel[key] = None
    return {"numpy_madvise": advised, **kernel}


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _huge_text(huge: dict) -> str:
    advised = {True: "advised by NumPy", False: "not advised by NumPy", None: "NumPy's advice unknown"}[huge["numpy_madvise"]]
    return f"{advised}, kernel THP enabled={huge['enabled'] or '?'} defrag={huge['defrag'] or '?'}"


def _blas(env: dict) -> str:
    try:
        blas = env["numpy_config"]["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except (KeyError, TypeError):
        return "unknown"


# ============================================================================ running
LEGEND = (
    "quiet / busy: refimpl time / baseline time = ratio, on the quiet machine and while a competing process "
    "keeps one core busy; limit: the time of the case's unavoidable work (flops, exponentials, bytes) at this "
    "machine's GEMM, exp and copy rates measured in the run, fraction = limit / refimpl time (1 = at the limit); "
    "peak: the traced peak memory of one refimpl call; agree: norm-wise relative difference of refimpl's and the "
    "baseline's outputs; loop/refimpl: loop twin time / refimpl time; [median of 3 | best of N | 1 run]: how the "
    "times were taken"
)

#: load average per usable core above which the report warns that another process uses the machine
BUSY_LOAD = 0.5


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not available on this platform
        return None


def _load_text(load: float | None, cores: int, end: bool = False) -> str | None:
    """A warning when the machine is busy (the 1-minute load average, per core) before the run, or at its ``end``."""
    if load is None or load <= BUSY_LOAD * cores:
        return None
    if end:
        return f"warning: load average {load:.1f} at the end of the run: the machine was busy"
    return (f"warning: load average {load:.1f} on {cores} cores before the run: another process is using the "
            "machine; times, ratios and the measured limits will be noisy")


def _git_commit() -> str | None:
    """The commit of a git checkout of refimpl; None for an installed copy, without git, or where the package
    lies inside some other repository (a virtual environment in a project's folder: that commit is not ours)."""
    here = os.path.dirname(os.path.abspath(__file__))

    def git(*args):
        return subprocess.run(["git", "-C", here, *args], capture_output=True, text=True, timeout=5)

    try:
        if git("ls-files", "--error-unmatch", os.path.basename(__file__)).returncode != 0:
            return None  # this file is not tracked there: not refimpl's own checkout
        done = git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


WALL_TARGET = {"full": 180.0, "quick": 20.0}  # seconds a run of every case should take on a quiet machine


def time_by_family(records: list[dict]) -> dict:
    """Wall time per ``module.function`` (the PyTorch comparison apart), largest first: where a run's time goes."""
    total: dict = {}
    for rec in records:
        key = f"{rec['module']}.{rec['function']}" + (" vs torch" if "vs-torch" in rec["variant"] else "")
        total[key] = total.get(key, 0.0) + rec["case_wall_s"]
    return dict(sorted(total.items(), key=lambda kv: -kv[1]))


class _Tee:
    """Print to a stream and keep every line (for --json)."""

    def __init__(self, stream):
        self.stream, self.lines = stream, []

    def __call__(self, line: str = "") -> None:
        self.lines.append(line)
        print(line, file=self.stream, flush=True)


def run(quick: bool = False, only: list[str] | None = None, stream=None, *, over_budget: float | None = None) -> dict:
    """Run the selected cases and print the report; return everything printed as a JSON-ready dict."""
    start = time.perf_counter()
    out = _Tee(sys.stdout if stream is None else stream)
    mode = "quick" if quick else "full"
    selected = select(cases(mode), only)
    env = environment()
    load_start = _load_average()
    out(f"refimpl bench ({mode}): {len(selected)} case{'' if len(selected) == 1 else 's'}; "
        "ratio = refimpl time / baseline time")
    out(f"numpy {env['numpy']}, scipy {env['scipy']}, BLAS {_blas(env)}, {env['usable_cores']} usable cores "
        f"(cpu_count {env['cpu_count']}), thread env {json.dumps({k: v for k, v in env['thread_env'].items() if v})}, "
        f"huge pages {_huge_text(env['huge_pages'])}")
    out(f"refimpl {env['refimpl']}{'' if env['git_commit'] is None else ' (commit ' + env['git_commit'][:12] + ')'}, "
        f"CPU {env['cpu_model']}, load average {'?' if load_start is None else f'{load_start:.2f}'}")
    busy_warning = _load_text(load_start, env["usable_cores"])
    if busy_warning:
        out(busy_warning)
    if quick:
        out("quick mode: small sizes, no competing load; times and agreement only, no verdicts")
    limits = measure_limits(quick)
    out(f"machine limits: GEMM {limits.gemm_flops / 1e9:.1f} GFLOP/s (float64, n = {limits.gemm_sizes}), "
        f"exp {limits.exp_rate / 1e6:.0f} M/s in cache and {limits.exp_rate_large / 1e6:.0f} M/s out of cache, "
        f"copy {limits.copy_bandwidth / 1e9:.1f} GB/s (read + write)")
    out("")
    records = []
    budget = over_budget if over_budget is not None else (5.0 if quick else 20.0)
    needs_load = not quick and any(case.contention for case in selected)
    with contextlib.ExitStack() as stack:
        load = stack.enter_context(CompetingLoad()) if needs_load else None  # paused until a busy phase
        for case in selected:
            rec = measure(case, limits, quick, over_budget=budget, load=load)
            records.append(rec)
            for line in _case_lines(case, rec, quick):
                out(line)
    if not _have("torch") and select(_softmax_cases("test")[:1], only):
        out("attention.softmax_attention vs PyTorch: torch not installed: skipped")
    elapsed = time.perf_counter() - start
    out("")
    out(LEGEND)
    if any(rec["bound_note"] for rec in records):
        out("limit = max(flops / GEMM FLOP/s, exps / exp rate, bytes / copy bandwidth) in every case; a case whose limit "
            "carries a note (FFT, scan, recursion, structured sum, small products) cannot run at GEMM speed, and its "
            + ("fraction would be judged against that bound all the same (quick mode judges nothing)" if quick else
               "fraction is judged against that bound all the same"))
    summary = {"PASS": 0, "MISS": 0}
    missed = []
    for rec in records:
        for key, verdict in rec["verdicts"].items():
            summary[verdict] += 1
            if verdict == "MISS":
                missed.append(f"{rec['name']} ({key})")
    if quick:
        out("quick mode: no verdicts")
    else:
        out(f"verdicts: {summary['PASS']} PASS, {summary['MISS']} MISS")
        for name in missed:
            out(f"  MISS {name}")
    families = time_by_family(records)
    out("time by function: " + ", ".join(f"{name} {t:.1f} s" for name, t in families.items()))
    target = WALL_TARGET[mode]
    within = None if only else elapsed <= target  # the budget is for a run of every case
    if within is None:
        out(f"total wall time {elapsed:.1f} s (a selection of cases)")
    else:
        out(f"total wall time {elapsed:.1f} s ({'within' if within else 'over'} the {target:g} s budget of a {mode} run "
            "on a quiet machine)")
    load_end = _load_average()
    end_warning = None if needs_load else _load_text(load_end, env["usable_cores"], end=True)  # (the load's own spin)
    if end_warning:
        out(end_warning)
    limit_dict = {"gemm_flops": limits.gemm_flops, "exp_rate": limits.exp_rate, "exp_rate_large": limits.exp_rate_large,
                  "copy_bandwidth": limits.copy_bandwidth, "gemm_sizes": list(limits.gemm_sizes)}
    return {"mode": mode, "only": only, "load_average": {"start": load_start, "end": load_end},
            "environment": env, "limits": limit_dict, "cases": records, "verdicts": summary,
            "missed": missed, "wall_time_s": elapsed, "wall_target_s": target, "within_wall_target": within,
            "time_by_function_s": families,
            "lines": out.lines}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m refimpl bench",
        description="Time every hot path against a plain NumPy/SciPy baseline and the machine's limit, "
        "quiet and under a competing load; print PASS/MISS per target (full mode). A full run should take at "
        "most 3 minutes on a quiet machine, a --quick run 20 seconds; the report ends with the time per function.",
        epilog="Case names are module.function[variant]. Examples: --only softmax, --only 'linear_rnn.*', "
        "--only 'linear_rnn.ssd[*fast*]' (brackets are literal), --only 'attention.softmax_attention[*vs-torch]' "
        "(the PyTorch comparison, if torch is installed). Columns: " + LEGEND + ".",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds); prints no verdicts")
    parser.add_argument("--only", action="append", metavar="PATTERN",
                        help="run the cases whose module or function matches (substring or glob); repeatable")
    parser.add_argument("--json", metavar="FILE", help="also write everything printed (and the environment) as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed (quick: if an agreement fails)")
    args = parser.parse_args(argv)
    if args.only and not select(cases("quick" if args.quick else "full"), args.only):
        names = sorted({f"{c.module}.{c.function}" for c in cases("quick" if args.quick else "full")})
        print(f"refimpl bench: no case matches --only {' '.join(args.only)}; valid names:", file=sys.stderr)
        for name in names:
            print(f"  {name}", file=sys.stderr)
        by_function = {name.split(".")[-1]: name for name in names}  # a pattern is usually a function's name
        close = {by_function.get(m, m) for p in args.only
                 for m in difflib.get_close_matches(p.split("[")[0].lower(), [*names, *by_function], n=3, cutoff=0.6)}
        if close:
            print(f"did you mean: {', '.join(sorted(close))}?", file=sys.stderr)
        return 2
    report = run(quick=args.quick, only=args.only)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1, default=str)
    if not args.check:
        return 0
    if args.quick:
        bad = [r["name"] for r in report["cases"] if not r["agree"] <= r["tol"]]
        if bad:
            print(f"agreement beyond tolerance: {', '.join(bad)}", file=sys.stderr)
        return 1 if bad else 0
    return 1 if report["missed"] else 0
