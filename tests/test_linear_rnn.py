"""Tests of :mod:`refimpl.linear_rnn`: SSD, gated linear attention, retention, the delta rule, RLS.

Oracles, each independent of the code under test:

* the recurrences written step by step (the ``*_loop`` twins) against the chunked algorithms,
  and the dense masked matrices built here from explicit products of gates;
* Mamba-1's selective scan of :mod:`refimpl.ssm` (chapter 11) for SSD with A tied per head;
* :func:`refimpl.classical.lms` and :func:`refimpl.classical.rls` (chapter 6) for the delta rule
  and the RLS memory on a tapped-delay regression;
* ``numpy.linalg.lstsq`` for the least-squares map, closed forms for orthogonal keys.

Tolerances come from :mod:`refimpl._testing`; errors are norm-wise relative.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refimpl import _blocking, classical, linear_rnn as lr, ssm
from _recording import recorder  # noqa: E402 (tests/ is on sys.path)
from refimpl._testing import ORACLE, SELF

WORST_ERRORS, close, record = recorder()


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _qkv(seed, batch=(2, 3), L=29, dk=5, dv=4):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=batch + (L, dk))
    k = rng.normal(size=batch + (L, dk))
    v = rng.normal(size=batch + (L, dv))
    return rng, q, k, v


def _ssd_inputs(seed, batch=(2,), H=4, G=2, L=23, P=3, N=5, dt_scale=1.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=batch + (H, L, P))
    dt = dt_scale * np.exp(rng.normal(size=batch + (H, L)) - 1.0)
    A = -rng.uniform(0.1, 2.0, H)
    B, C = rng.normal(size=(2,) + batch + (G, L, N))
    D = rng.normal(size=H)
    return x, dt, A, B, C, D


# ---------------------------------------------------------------------------------------------
# Segment sums
# ---------------------------------------------------------------------------------------------


def test_segsum_is_the_sum_over_each_segment():
    a = np.random.default_rng(0).normal(size=(3, 9))
    seg = lr.segsum(a)
    for t in range(9):
        for s in range(9):
            want = a[:, s + 1 : t + 1].sum(-1) if s <= t else np.full(3, -np.inf)
            np.testing.assert_allclose(seg[:, t, s], want, rtol=1e-14, atol=1e-15)


def test_segsum_keeps_digits_where_prefix_differences_lose_them():
    # a gate of 0.5 for 10^5 steps: prefix sums near −7e4; adjacent differences lose ~5 digits
    a = np.full(100_000, np.log(0.5))
    seg_last = lr.segsum(a[-40:])[-1, -2]  # one step: log 0.5 exactly
    assert seg_last == np.log(0.5)
    prefix = np.cumsum(a)
    assert abs((prefix[-1] - prefix[-2]) - np.log(0.5)) > 1e-13  # the naive difference is visibly off


def test_exp_segsum_is_exp_of_segsum_bitwise():
    # the decay matrices without exp(−inf): the same numbers, 0 above the diagonal, underflow included
    rng = np.random.default_rng(11)
    for a in (rng.normal(size=(3, 17)), -rng.uniform(0, 800, (2, 5, 9)), np.zeros(1), -np.full(6, 1e-12)):
        assert np.array_equal(lr._exp_segsum(a), np.exp(lr.segsum(a)))


@pytest.mark.parametrize("c", [1, 7, 8, 16, 24, 40, 64, 65, 128])
def test_chunk_cumsum_two_levels_equals_exact_sums(c):
    # the in-chunk cumulative log-gates of the per-channel core: blocks of 8 rows plus the earlier blocks'
    # totals (c a multiple of 8, at least 16), else one product with the triangle; against exact sums
    rng = np.random.default_rng(c)
    g = -rng.uniform(0.0, 3.0, size=(2, 3, c, 5))
    g[0, 1] = -rng.uniform(0.0, 1e-6, size=(c, 5))  # gates near 1: small sums, where an absolute error shows
    out = np.full(g.shape, np.nan)
    assert lr._chunk_cumsum(g, out, lr._cumsum_triangles(c)) is out
    exact = np.array([[[[math.fsum(g[a, b, : t + 1, j]) for j in range(5)] for t in range(c)]
                       for b in range(3)] for a in range(2)])
    assert np.all(np.abs(out - exact) <= 4 * c * np.finfo(float).eps * np.abs(exact))
    # the output may be a non-contiguous slice (the core's group of chunks): written in place
    view = np.full((2, 5, c, 5), np.nan)[:, 1:4]
    lr._chunk_cumsum(g, view, lr._cumsum_triangles(c))
    assert np.array_equal(view, out)


@pytest.mark.parametrize("c", [1, 2, 5, 16, 29, 64])
@pytest.mark.parametrize("decay", ["strong", "mild blocks", "all mild"])
def test_halving_factors_every_pair_once(c, decay):
    # e^{seg_j[t, s]} = a_tj b_sj for each s <= t in exactly one quarter of one level (a, b <= 1) or one
    # diagonal block where the halving stops (its blocks decay by at most e^-30: the factored form)
    rng = np.random.default_rng(c)
    g = {"strong": -rng.uniform(0, 3.0, (2, c, 3)), "mild blocks": -rng.uniform(0, 3.0, (2, c, 3)),
         "all mild": -rng.uniform(0, 0.2, (2, c, 3))}[decay]
    if decay == "strong":
        g[0, c // 2 :, 1] = -400.0  # e^{seg} underflows far from the diagonal; no block of 2 rows is mild
    halves = lr._Halving(np.ones_like(g), np.ones_like(g), g)
    P = halves.P
    assert P >= c and P & (P - 1) == 0 and P < 2 * max(c, 1)
    got = np.full((2, 3, P, P), np.nan)

    def place(put, a, b):  # a_t b_s of one channel into its places, checking that no pair is placed twice
        for j in range(3):
            full = np.full((2, P, P), np.nan)
            put(full, a[..., :, j][..., :, None] * b[..., :, j][..., None, :])
            new = ~np.isnan(full)
            assert np.all(np.isnan(got[:, j][new])), "a pair placed twice"
            got[:, j][new] = full[new]

    levels = 0
    for lv in halves:
        levels += 1
        assert np.all(lv.a <= 1.0) and np.all(lv.b <= 1.0)
        place(lv.put, lv.a, lv.b)
    rest = halves.rest()
    assert rest.B == halves.block and rest.B * rest.nb == P
    if decay == "strong" and c > 1:
        assert rest.B == 1 and levels == (P - 1).bit_length()
    if decay == "all mild":
        assert rest.B == P and levels == 0
    if rest.B > 1:
        assert np.all(np.abs(np.log(rest.a)) <= 30.0) and np.allclose(rest.a * rest.b, 1.0)
    place(lambda M, blocks: rest.put(M, rest.masked(blocks)), rest.a, rest.b)
    want = lr._exp_segsum(np.swapaxes(g, -1, -2))  # (2, 3, c, c)
    lower = np.tri(c, c, 0, dtype=bool)
    assert not np.any(np.isnan(got[..., :c, :c][..., lower])), "a pair s <= t not placed"
    np.testing.assert_allclose(got[..., :c, :c][..., lower], want[..., lower], rtol=1e-13, atol=1e-300)


# ---------------------------------------------------------------------------------------------
# Gated linear attention
# ---------------------------------------------------------------------------------------------


def _gla_dense(q, k, v, log_g, scale):
    """Dense oracle: weights from explicit products of gates Π_{r=s+1}^{t} g_r (short L only)."""
    L = q.shape[-2]
    g = np.exp(log_g)
    per_channel = log_g.ndim == q.ndim
    out = np.zeros(np.broadcast_shapes(q.shape[:-2], v.shape[:-2]) + (L, v.shape[-1]))
    for t in range(L):
        for s in range(t + 1):
            if per_channel:
                decay = np.prod(g[..., s + 1 : t + 1, :], axis=-2)  # (..., Dk)
                w = np.sum(q[..., t, :] * k[..., s, :] * decay, -1)
            else:
                decay = np.prod(g[..., s + 1 : t + 1], axis=-1)
                w = np.sum(q[..., t, :] * k[..., s, :], -1) * decay
            out[..., t, :] += scale * w[..., None] * v[..., s, :]
    return out


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("chunk", [1, 4, 7, 29, 64])
def test_gla_chunked_equals_recurrence_and_dense(per_channel, chunk):
    rng, q, k, v = _qkv(1)
    shape = q.shape if per_channel else q.shape[:-1]
    log_g = -rng.uniform(0.0, 1.0, shape)
    y, st = lr.gated_linear_attention(q, k, v, log_g, chunk_size=chunk, return_chunk_states=True)
    y_loop, st_loop = lr.gated_linear_attention_loop(q, k, v, log_g, chunk_size=chunk, return_chunk_states=True)
    close(y, y_loop, rtol=SELF, what="GLA chunked vs recurrence")
    close(st, st_loop, rtol=SELF, what="GLA chunk states vs recurrence")
    assert st.shape == q.shape[:-2] + (-(-29 // chunk), 4, 5)
    close(lr.gated_linear_attention_parallel(q, k, v, log_g), y_loop, rtol=SELF, what="GLA parallel vs recurrence")
    close(y, _gla_dense(q, k, v, log_g, 1 / np.sqrt(5)), rtol=ORACLE, what="GLA vs dense products of gates")


@pytest.mark.parametrize("scale_g", [1e-12, 3.0, 60.0, 800.0])
def test_gla_delicate_gates(scale_g):
    # gates near 1 (log g ~ −1e-12), moderate, near 0 (log g ~ −60: the exact segment-sum path) and
    # log g ~ −800 (e^{log g} underflows: the decays are exactly 0, never NaN)
    rng, q, k, v = _qkv(2, batch=(2,), L=41, dk=6, dv=3)
    for log_g in (-rng.uniform(0, scale_g, q.shape), -rng.uniform(0, scale_g, q.shape[:-1])):
        y = lr.gated_linear_attention(q, k, v, log_g, chunk_size=8)
        assert np.all(np.isfinite(y))
        close(y, lr.gated_linear_attention_loop(q, k, v, log_g, chunk_size=8), rtol=SELF, what="GLA delicate gates")



def _exact_decays(log_g):
    """e^{Σ_{0<r≤t} log g_r} for t = 0, 1, …: the sums of the doubles exact (fractions), the exponential to 40 digits."""
    import decimal
    from fractions import Fraction

    out, pre = [1.0], Fraction(0)
    with decimal.localcontext() as ctx:
        ctx.prec = 40
        for x in log_g[1:]:
            pre += Fraction(float(x))
            out.append(float((decimal.Decimal(pre.numerator) / decimal.Decimal(pre.denominator)).exp()))
    return np.array(out)


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("c", [64, 256])
def test_gla_factored_decays_error_bound(per_channel, c):
    # one chunk that decays by e^-29.9 (the factored path), k = e_1 and v = 1 at s = 0 only: o_t = e^{seg[t, 0]}, one
    # factored weight per step. Gates that make the roundings of the cumulative sum add up (one gate of e^-29, then
    # c − 1 equal ones) stay below the first-order bound (c − 1)·|cum|·ε of chapter 16, §16.2, and reach above the
    # 200 ε of random gates; gates whose sums are exact (multiples of 2^-10) leave only the exponentials' roundings.
    eps = np.finfo(float).eps
    q, k, v = np.ones((c, 1)), np.eye(c, 1), np.eye(c, 1)
    adding_up = np.r_[-29.0, np.full(c - 1, -0.9 / (c - 1))]
    exact_sums = np.full(c, -29.0 / c)  # −29/64 and −29/256: all partial sums exact in binary
    for log_g, lo, hi in ((adding_up, 200, (c - 1) * 29.9), (exact_sums, 0, 8)):
        g = log_g[:, None] if per_channel else log_g
        o = lr.gated_linear_attention(q, k, v, g, scale=1.0, chunk_size=c)[:, 0]
        ref = _exact_decays(log_g)
        err = np.max(np.abs(o - ref) / ref) / eps
        assert lo <= err < hi, (err, lo, hi)

def test_gla_mixed_chunks_take_both_paths():
    # half the chunks decay below e^{-30} (exact path: halving), half do not (factored path)
    rng, q, k, v = _qkv(3, batch=(3,), L=64, dk=4, dv=2)
    log_g = -rng.uniform(0, 0.05, q.shape)
    log_g[1, 16:32] = -5.0
    close(
        lr.gated_linear_attention(q, k, v, log_g, chunk_size=16),
        lr.gated_linear_attention_loop(q, k, v, log_g, chunk_size=16),
        rtol=SELF,
        what="GLA factored and exact chunks together",
    )


@pytest.mark.parametrize("block", [1 << 10, 1 << 22])
def test_gla_exact_path_with_large_chunks(monkeypatch, block):
    # a (c, c, Dk) block larger than the memory bound must still be computed (one chunk at a time)
    monkeypatch.setattr(lr, "_BLOCK_ELEMS", block)
    rng, q, k, v = _qkv(9, batch=(2,), L=203, dk=8, dv=3)
    log_g = -rng.uniform(0, 40.0, q.shape)
    for c in (16, 256):
        close(lr.gated_linear_attention(q, k, v, log_g, chunk_size=c), lr.gated_linear_attention_loop(q, k, v, log_g),
              rtol=SELF, what="GLA exact path, blocks above the memory bound")


def test_gla_long_sequence_no_overflow():
    # L = 20000 with log g = −0.5: the cumulative log-gate reaches −1e4, so any e^{+Λ} factor
    # over the whole sequence would overflow; the result must match the recurrence
    rng, q, k, v = _qkv(4, batch=(), L=20_000, dk=3, dv=2)
    log_g = np.full(q.shape, -0.5)
    log_g[::7] = -1e-9
    y = lr.gated_linear_attention(q, k, v, log_g, chunk_size=64)
    assert np.all(np.isfinite(y))
    close(y, lr.gated_linear_attention_loop(q, k, v, log_g), rtol=SELF, what="GLA long L vs recurrence")


def _strong_log_gates(rng, shape):
    """Log-gates over a long sequence mixing every regime: gates near 1 (−1e-12), moderate ones,
    and stretches of strong decay (−60 and −800 per step: e^{−800} underflows to 0) that put some
    chunks on the exact segment-sum path and leave their neighbours on the factored one."""
    L = shape[-1]
    a = np.where(rng.random(shape) < 0.5, -1e-12, -rng.uniform(0.0, 2.0, shape))
    a[..., L // 8 : L // 8 + 100] = -60.0
    a[..., L // 2 : L // 2 + 40] = -800.0
    a[..., 3 * L // 4 :] *= 1e-6  # a long stretch of gates near 1
    return a


@pytest.mark.parametrize("form", ["gla per channel", "gla per head", "ssd groups", "gated delta rule"])
def test_chunked_long_sequence_strong_decay_vs_recurrence(form):
    # L = 4096 with gates near 0 and near 1 in the same sequence, against the step-by-step loops
    rng = np.random.default_rng(30)
    L = 4096
    if form == "ssd groups":  # 4 heads in 2 groups; in each group one head decays strongly, one barely
        x, dt, A, B, C, D = _ssd_inputs(31, batch=(), H=4, G=2, L=L, P=2, N=3)
        A = np.array([-1e-9, -50.0, -0.5, -3.0])
        dt[0, L // 3 : L // 3 + 64] = 1e12  # Δ A = −1000 per step in the slow head 0
        got, want = lr.ssd(x, dt, A, B, C, D), lr.ssd_loop(x, dt, A, B, C, D)
    elif form == "gated delta rule":
        rng, q, k, v = _qkv(32, batch=(), L=L, dk=4, dv=3)
        k = _unit(k)
        beta = rng.uniform(0.05, 1.95, L)
        log_g = _strong_log_gates(rng, (L,))
        got = lr.delta_rule(q, k, v, beta, log_g=log_g)
        want = lr.delta_rule_loop(q, k, v, beta, log_g=log_g)
    else:
        rng, q, k, v = _qkv(33, batch=(2,), L=L, dk=4, dv=3)
        log_g = _strong_log_gates(rng, (2, 4, L)).swapaxes(-1, -2) if form == "gla per channel" else _strong_log_gates(rng, (2, L))
        got = lr.gated_linear_attention(q, k, v, log_g)
        want = lr.gated_linear_attention_loop(q, k, v, log_g)
    assert np.all(np.isfinite(got))
    close(got, want, rtol=SELF, what=f"{form}, L = 4096, strong and weak decay, chunked vs recurrence")


@pytest.mark.parametrize("form", ["gla per channel", "gla per head", "ssd one group", "ssd groups", "gated delta rule"])
def test_chunk_groups_and_threads_do_not_change_the_result(chunk_groups, form):
    # the chunked forms run on groups of chunks (one chunk per group, groups of 2 or 3 chunks with
    # a shorter last one, or all chunks in one group) and split the heads over threads (3 threads
    # for 4 heads: uneven parts; SSD with one group splits its heads, with two groups the groups);
    # outputs and chunk-end states must be those of the recurrence, with strong and weak decays
    rng = np.random.default_rng(40)
    L, c = 203, 8  # 26 chunks, the last one short
    kw = dict(chunk_size=c, return_chunk_states=True)
    if form.startswith("ssd"):
        x, dt, A, B, C, D = _ssd_inputs(41, batch=(), H=4, G=1 if form == "ssd one group" else 2, L=L, P=3, N=5)
        dt[1, 40:60] = 1e3  # chunks of head 1 that decay below e^{-30}
        got, want = lr.ssd(x, dt, A, B, C, D, **kw), lr.ssd_loop(x, dt, A, B, C, D, **kw)
    elif form == "gated delta rule":
        rng, q, k, v = _qkv(42, batch=(4,), L=L, dk=5, dv=3)
        beta = rng.uniform(0.05, 1.95, (4, L))
        log_g = _strong_log_gates(rng, (4, L))
        got = lr.delta_rule(q, _unit(k), v, beta, log_g=log_g, **kw)
        want = lr.delta_rule_loop(q, _unit(k), v, beta, log_g=log_g, **kw)
    else:
        rng, q, k, v = _qkv(43, batch=(4,), L=L, dk=5, dv=3)
        log_g = _strong_log_gates(rng, (4, 5, L)).swapaxes(-1, -2) if form == "gla per channel" else _strong_log_gates(rng, (4, L))
        got = lr.gated_linear_attention(q, k, v, log_g, **kw)
        want = lr.gated_linear_attention_loop(q, k, v, log_g, **kw)
    close(got[0], want[0], rtol=SELF, what=f"{form}: groups of chunks and threads vs recurrence")
    close(got[1], want[1], rtol=SELF, what=f"{form}: chunk-end states, groups of chunks and threads vs recurrence")


def test_threads_keep_the_callers_floating_point_error_state(monkeypatch):
    # the threads run in a copy of the caller's context, so np.errstate (a context variable)
    # reaches them: decays that underflow inside a thread raise nothing when the caller silences
    # them, and a caller's errstate(under="raise") is seen by the threads
    monkeypatch.setattr(_blocking, "THREADS", 2)
    monkeypatch.setattr(_blocking, "THREAD_MIN_ELEMS", 0)
    rng, q, k, v = _qkv(44, batch=(2,), L=40, dk=3, dv=2)
    log_g = np.full(q.shape[:-1], -800.0)  # e^{-800} underflows to 0
    with np.errstate(under="raise"):
        # the core computes e^{cum} with cum down to −32000: an underflow in a worker thread
        with pytest.raises(FloatingPointError):
            lr._gla_chunked(q, k, v, log_g[..., None], 8)
    y = lr.gated_linear_attention(q, k, v, log_g, chunk_size=8)  # guard_overflow silences it
    close(y, lr.gated_linear_attention_loop(q, k, v, log_g), rtol=SELF, what="GLA threads, gates underflowing to 0")


def test_gla_without_forgetting_is_causal_linear_attention():
    rng, q, k, v = _qkv(5)
    y = lr.gated_linear_attention(q, k, v, np.zeros(q.shape[:-1]), scale=1.0, chunk_size=6)
    want = np.tril(q @ np.swapaxes(k, -1, -2)) @ v  # Σ_{s≤t} (q_t·k_s) v_s
    close(y, want, rtol=ORACLE, what="GLA with g = 1 vs unnormalized causal linear attention")


def test_gla_is_causal():
    rng, q, k, v = _qkv(6, batch=(), L=30)
    log_g = -rng.uniform(0, 1, q.shape)
    y0 = lr.gated_linear_attention(q, k, v, log_g, chunk_size=8)
    k2, v2 = k.copy(), v.copy()
    k2[17:] += 1.0
    v2[17:] -= 2.0
    y1 = lr.gated_linear_attention(q, k2, v2, log_g, chunk_size=8)
    assert np.array_equal(y0[:17], y1[:17])


@pytest.mark.parametrize("scale", [0.0, 1e-320, 1e-300, 0.37, 1e300])
@pytest.mark.parametrize("per_channel", [True, False])
def test_gla_chunk_states_do_not_depend_on_the_scale(per_channel, scale):
    # the scale multiplies the queries only: the states S_t are those of scale = 1, to the last bit, for
    # scale = 0 (o = 0) and subnormal or huge scales too (a core carrying scale · S and dividing the states
    # by the scale refused scale = 0 and returned states 11 % off at scale = 1e-320)
    rng, q, k, v = _qkv(7, batch=(2,), L=37, dk=4, dv=3)
    log_g = -rng.uniform(0, 0.5, q.shape if per_channel else q.shape[:-1])
    kw = dict(chunk_size=8, return_chunk_states=True)
    o, st = lr.gated_linear_attention(q, k, v, log_g, scale=scale, **kw)
    o_loop, st_loop = lr.gated_linear_attention_loop(q, k, v, log_g, scale=scale, **kw)
    assert np.array_equal(st, lr.gated_linear_attention(q, k, v, log_g, scale=1.0, **kw)[1])
    close(st, st_loop, rtol=1e-14, what="GLA chunk states at any scale vs recurrence")
    if scale == 0.0:
        assert np.array_equal(o, np.zeros_like(o))
    elif scale >= 1e-300:  # normal scaled queries (the subnormal ones of 1e-320 keep few digits in every form)
        close(o, o_loop, rtol=SELF, what="GLA outputs at any scale vs recurrence")
        # with or without the states, the same outputs (to round-off: the scale is applied elsewhere)
        close(lr.gated_linear_attention(q, k, v, log_g, scale=scale, chunk_size=8), o, rtol=1e-14,
              what="GLA outputs with and without chunk states")


# ---------------------------------------------------------------------------------------------
# Retention
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 5, 16, 100])
def test_retention_three_forms(chunk):
    rng, q, k, v = _qkv(7, batch=(2, 4), L=33)
    gamma = 1 - 2.0 ** (-5 - np.arange(4))  # RetNet's per-head decays
    y = lr.retention(q, k, v, gamma, chunk_size=chunk)
    close(y, lr.retention_loop(q, k, v, gamma, chunk_size=chunk), rtol=SELF, what="retention chunked vs recurrence")
    close(y, lr.retention_parallel(q, k, v, gamma), rtol=SELF, what="retention chunked vs parallel")


def test_retention_extreme_decays():
    rng, q, k, v = _qkv(8, batch=(3,), L=300, dk=4, dv=2)
    gamma = np.array([1e-300, 0.5, 1.0])  # γ = 1e-300: only the diagonal survives; γ = 1: no decay
    y = lr.retention(q, k, v, gamma, scale=1.0, chunk_size=32)
    close(y, lr.retention_parallel(q, k, v, gamma, scale=1.0), rtol=SELF, what="retention extreme γ vs parallel")
    close(y[0], np.sum(q[0] * k[0], -1)[:, None] * v[0], rtol=ORACLE, what="retention γ → 0: o_t = (q_t·k_t) v_t")
    close(y[2], np.tril(q[2] @ k[2].T) @ v[2], rtol=ORACLE, what="retention γ = 1: causal linear attention")


@pytest.mark.parametrize("shapes", [
    ((1, 33, 5), (3, 33, 5), (3, 33, 4)),  # one query head shared by three key/value heads
    ((3, 33, 5), (1, 33, 5), (1, 33, 4)),
    ((2, 1, 33, 5), (3, 33, 5), (1, 33, 4)),  # batch from q, heads from k
])
def test_retention_gamma_follows_the_broadcast_head_axis(shapes):
    # gamma holds one decay per head of the broadcast head axis of q, k, v (not of q alone)
    rng = np.random.default_rng(9)
    q, k, v = (rng.normal(size=shape) for shape in shapes)
    gamma = np.array([0.9, 0.5, 0.99])
    y = lr.retention(q, k, v, gamma, chunk_size=8)
    batch = np.broadcast_shapes(*(shape[:-2] for shape in shapes))
    assert y.shape == batch + (33, 4)
    qb, kb, vb = (np.broadcast_to(a, batch + a.shape[-2:]).copy() for a in (q, k, v))
    log_g = np.broadcast_to(np.log(gamma)[:, None], batch + (33,))
    close(y, lr.gated_linear_attention_loop(qb, kb, vb, log_g), rtol=SELF,
          what="retention, broadcast heads, vs GLA recurrence")
    close(lr.retention_loop(q, k, v, gamma), y, rtol=SELF, what="retention recurrence, broadcast heads")
    close(lr.retention_parallel(q, k, v, gamma), y, rtol=SELF, what="retention parallel, broadcast heads")
    for fn in (lr.retention, lr.retention_loop, lr.retention_parallel):
        with pytest.raises(ValueError, match=r"gamma: expected one decay per head, shape \(3,\)"):
            fn(q, k, v, gamma[:1])


# ---------------------------------------------------------------------------------------------
# SSD
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 4, 10, 23, 64])
def test_ssd_three_algorithms(chunk):
    x, dt, A, B, C, D = _ssd_inputs(10)
    y, st = lr.ssd(x, dt, A, B, C, D, chunk_size=chunk, return_chunk_states=True)
    y_loop, st_loop = lr.ssd_loop(x, dt, A, B, C, D, chunk_size=chunk, return_chunk_states=True)
    close(y, y_loop, rtol=SELF, what="SSD chunked vs recurrence")
    close(st, st_loop, rtol=SELF, what="SSD chunk states vs recurrence")
    close(lr.ssd_quadratic(x, dt, A, B, C, D), y_loop, rtol=SELF, what="SSD quadratic vs recurrence")


def test_ssd_matrix_is_built_from_explicit_products():
    x, dt, A, B, C, D = _ssd_inputs(11, batch=(), H=2, G=1, L=9)
    _, M = lr.ssd_quadratic(x, dt, A, B, C, return_matrix=True)
    for h in range(2):
        for t in range(9):
            for s in range(9):
                want = 0.0 if s > t else C[0, t] @ B[0, s] * np.prod(np.exp(dt[h, s + 1 : t + 1] * A[h])) * dt[h, s]
                assert abs(M[h, t, s] - want) <= 1e-13 * max(1.0, abs(want))


@pytest.mark.parametrize("G", [1, 2, 4])
def test_ssd_equals_mamba1_selective_scan_with_tied_A(G):
    # Mamba-1 (chapter 11): per channel p and state n, h = e^{Δ A_{p,n}} h + Δ B_n u_p, y_p = Σ C_n h_n.
    # SSD is the case A_{p,n} = A_h for every (p, n) of head h, Δ shared by the head's channels.
    x, dt, A, B, C, D = _ssd_inputs(12, batch=(2,), H=4, G=G, L=31, P=3, N=5)
    y, st = lr.ssd(x, dt, A, B, C, D, chunk_size=8, return_chunk_states=True)
    for b in range(2):
        for h in range(4):
            g = h // (4 // G)
            args = (x[b, h], np.repeat(dt[b, h][:, None], 3, 1), np.full((3, 5), A[h]), B[b, g], C[b, g], np.full(3, D[h]))
            ys, h_last = ssm.selective_scan(*args, return_last_state=True)
            close(y[b, h], ys, rtol=SELF, what="SSD vs selective_scan (tied A)")
            close(st[b, h, -1], h_last, rtol=SELF, what="SSD final state vs selective_scan")
            close(y[b, h], ssm.selective_scan_loop(*args), rtol=SELF, what="SSD vs selective_scan_loop")


def test_ssd_is_scalar_gated_linear_attention():
    x, dt, A, B, C, D = _ssd_inputs(13, batch=(), H=2, G=2, L=17)
    y = lr.ssd(x, dt, A, B, C, chunk_size=5)
    gla = lr.gated_linear_attention(C, B * dt[..., None], x, dt * A[:, None], scale=1.0, chunk_size=3)
    close(y, gla, rtol=SELF, what="SSD = GLA(q=C, k=ΔB, v=x, log g=ΔA)")


@pytest.mark.parametrize("regime", ["A=0", "fast decay", "tiny dt", "subnormal dt"])
def test_ssd_delicate_regimes(regime):
    x, dt, A, B, C, D = _ssd_inputs(14, L=70)
    if regime == "A=0":
        A = np.zeros_like(A)  # gates exactly 1: a pure cumulative sum
    elif regime == "fast decay":
        dt = dt * 400.0  # e^{ΔA} underflows to 0
    elif regime == "tiny dt":
        dt = dt * 1e-9  # D / Δ ≈ 1e9 on the diagonal of the chunk products
    else:
        dt[..., 5] = 1e-310  # D / Δ overflows: the skip is added outside the products
        assert lr._skip_diagonal(np.ones((2, 4)), lr._chunks(dt, 16, -1), 1.0) is None
    y = lr.ssd(x, dt, A, B, C, D, chunk_size=16)
    assert np.all(np.isfinite(y))
    close(y, lr.ssd_loop(x, dt, A, B, C, D), rtol=SELF, what=f"SSD {regime}")
    close(lr.ssd_quadratic(x, dt, A, B, C, D), y, rtol=SELF, what=f"SSD quadratic {regime}")


@pytest.mark.parametrize("L", [64, 70])
def test_ssd_skip_on_the_diagonal_equals_the_skip_added(monkeypatch, L):
    # D x_t rides on the diagonal of the chunk products (_skip_diagonal); without it, D x_t is
    # added to the output afterwards. Strongly decaying chunks (exact path) in both.
    x, dt, A, B, C, D = _ssd_inputs(15, L=L)
    dt[..., 20:40] *= 200.0
    y = lr.ssd(x, dt, A, B, C, D, chunk_size=16)
    monkeypatch.setattr(lr, "_skip_diagonal", lambda *args: None)
    y_added = lr.ssd(x, dt, A, B, C, D, chunk_size=16)
    close(y, y_added, rtol=SELF, what="SSD skip on the diagonal vs added")
    close(y, lr.ssd_loop(x, dt, A, B, C, D), rtol=SELF, what="SSD vs recurrence")


@pytest.mark.parametrize("dt_value", [1e-9, 1e-160, 1e-200, 1e-300, 1e-305])
def test_ssd_skip_with_tiny_steps_is_exact(dt_value):
    # y_t = h_t C_t + D x_t with Δ tiny and x ~ 1e-15: D x_t is the whole output. Folded into the diagonal as
    # D / Δ times the value row x_t Δ_t e^{-cum} (subnormal for Δ = 1e-305: 4 digits lost), it must not be:
    # below Δ = 2^-511 the skip is added outside the product; above it the fold stays (bitwise the fast path)
    x, dt, A, B, C, D = _ssd_inputs(16, H=2, G=1, L=21)
    x *= 1e-15
    dt = np.full(dt.shape, dt_value)
    D = np.array([1.0, -0.5])
    folded = lr._skip_diagonal(np.ones((2, 2)), lr._chunks(dt.reshape(-1, 2, 21), 8, -1), 1.0) is not None
    assert folded == (dt_value >= 2.0**-511)
    y = lr.ssd(x, dt, A, B, C, D, chunk_size=8)
    close(y, lr.ssd_loop(x, dt, A, B, C, D), rtol=1e-14, what="SSD with tiny Δ (D x_t dominates) vs recurrence")
    close(lr.ssd_quadratic(x, dt, A, B, C, D), y, rtol=1e-14, what="SSD quadratic with tiny Δ")


@pytest.mark.parametrize("chunk", [4, 8, 64])
def test_ssd_steps_of_zero_leave_the_state_unchanged(chunk):
    # Δ_t = 0 (the lower end of mamba_ssm's clamp): e^{0·A} = 1 and no input, the output still reads the state and
    # adds D x_t, which therefore cannot ride on the diagonal as D / Δ_t (_skip_diagonal): three algorithms agree,
    # with a whole head of zero steps, a whole chunk of them, and every third step; forward and backward
    x, dt, A, B, C, D = _ssd_inputs(17, L=37)
    dt[..., ::3] = 0.0
    dt[:, 1] = 0.0
    dt[..., 8:16] = 0.0
    h0 = np.random.default_rng(18).normal(size=x.shape[:-2] + (x.shape[-1], B.shape[-1]))
    y, S = lr.ssd(x, dt, A, B, C, D, chunk_size=chunk, initial_state=h0, return_chunk_states=True)
    y_loop, S_loop = lr.ssd_loop(x, dt, A, B, C, D, chunk_size=chunk, initial_state=h0, return_chunk_states=True)
    close(y, y_loop, rtol=SELF, what="SSD with zero steps vs recurrence")
    close(S, S_loop, rtol=SELF, what="SSD chunk states with zero steps")
    close(lr.ssd_quadratic(x, dt, A, B, C, D, initial_state=h0), y, rtol=SELF, what="SSD quadratic with zero steps")
    np.testing.assert_array_equal(S[:, 1], np.broadcast_to(h0[:, 1, None], S[:, 1].shape))  # a head of Δ = 0 keeps h_{−1}
    dy = np.random.default_rng(19).normal(size=y.shape)
    g = lr.ssd_vjp(x, dt, A, B, C, D, dy, chunk_size=chunk, initial_state=h0)
    g_loop = lr.ssd_vjp_loop(x, dt, A, B, C, D, dy, chunk_size=chunk, initial_state=h0)
    for key in g:
        close(g[key], g_loop[key], rtol=SELF, what=f"SSD vjp {key} with zero steps")
    # dΔ at Δ = 0, against a one-sided second-order difference (Δ cannot go below 0): (−3 f(0) + 4 f(h) − f(2h)) / 2h
    t, h = (0, 2, 3), 1e-5
    f = [np.sum(lr.ssd(x, np.where(np.arange(37) == 3, dt + s * h, dt) * (np.arange(4)[:, None] == 2)
                       + dt * (np.arange(4)[:, None] != 2), A, B, C, D, chunk_size=chunk, initial_state=h0)[0] * dy[0])
         for s in (0, 1, 2)]
    want = (-3 * f[0] + 4 * f[1] - f[2]) / (2 * h)
    assert dt[t] == 0 and abs(g["ddt"][t] - want) <= 1e-8 * max(1.0, abs(want)), (g["ddt"][t], want)


# ---------------------------------------------------------------------------------------------
# Delta rule
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("chunk", [1, 3, 8, 37, 64])
def test_delta_rule_chunked_equals_recurrence(gated, chunk):
    rng, q, k, v = _qkv(20, L=37, dk=6, dv=4)
    k = _unit(k)
    beta = rng.uniform(0.05, 1.95, q.shape[:-1])
    log_g = -rng.uniform(0, 0.5, q.shape[:-1]) if gated else None
    y, st = lr.delta_rule(q, k, v, beta, log_g=log_g, chunk_size=chunk, return_chunk_states=True)
    y_loop, st_loop = lr.delta_rule_loop(q, k, v, beta, log_g=log_g, chunk_size=chunk, return_chunk_states=True)
    close(y, y_loop, rtol=SELF, what="delta rule chunked vs recurrence")
    close(st, st_loop, rtol=SELF, what="delta rule chunk states vs recurrence")


@pytest.mark.parametrize("group_rows", [None, 64])
def test_delta_rule_without_gates_is_the_gated_form_with_unit_gates(monkeypatch, group_rows):
    # DeltaNet (log_g None) skips the decay scalings; they are multiplications by exactly 1, so the
    # result must be bitwise that of log g = 0. group_rows = 64: several groups of chunks per call
    # and a shorter last group (the T workspace is reused through a non-contiguous slice)
    if group_rows:
        monkeypatch.setattr(lr, "_GROUP_ROWS", group_rows)
    rng, q, k, v = _qkv(23, batch=(3,), L=150, dk=6, dv=5)
    k = _unit(k)
    beta = rng.uniform(0.05, 1.95, q.shape[:-1])
    y, st = lr.delta_rule(q, k, v, beta, chunk_size=8, return_chunk_states=True)
    y0, st0 = lr.delta_rule(q, k, v, beta, log_g=np.zeros(beta.shape), chunk_size=8, return_chunk_states=True)
    assert np.array_equal(y, y0) and np.array_equal(st, st0)
    close(y, lr.delta_rule_loop(q, k, v, beta, chunk_size=8), rtol=SELF, what="DeltaNet chunked vs recurrence")


def test_unit_lower_inverse_reuses_its_workspace():
    rng = np.random.default_rng(24)
    T = lr._unit_lower_identity((2, 5), 12)  # padded to 16 x 16
    assert T.shape == (2, 5, 16, 16)
    for _ in range(3):  # each call overwrites the strictly lower triangles of a non-contiguous slice
        A = np.tril(rng.normal(size=(2, 3, 12, 12)), -1)
        inv = lr._unit_lower_inverse(A, out=T[:, :3])
        close(inv, np.linalg.inv(np.eye(12) + A), rtol=ORACLE, what="(I + A)^-1 in a reused workspace")
        assert np.shares_memory(inv, T)
    close(lr._unit_lower_inverse(A), inv, rtol=SELF, what="fresh workspace")


@pytest.mark.parametrize("beta_value", [0.0, 1e-9, 1.0, 1.999999, 2.0])
def test_delta_rule_beta_near_bounds_and_aligned_keys(beta_value):
    # nearly aligned keys make the UT system's off-diagonal entries ~β: the worst case for the WY form
    rng, q, k, v = _qkv(21, batch=(2,), L=100, dk=4, dv=3)
    k = _unit(np.array([1.0, 0.0, 0.0, 0.0]) + 0.01 * k)
    beta = np.full(q.shape[:-1], beta_value)
    y = lr.delta_rule(q, k, v, beta, chunk_size=32)
    close(y, lr.delta_rule_loop(q, k, v, beta), rtol=SELF, what="delta rule β near bounds")
    if beta_value in (0.0, 2.0):  # the interval's ends are accepted: nothing written; a reflection, norms kept
        dy = rng.normal(size=y.shape)
        g, g_loop = (f(q, k, v, beta, dy, chunk_size=32) for f in (lr.delta_rule_vjp, lr.delta_rule_vjp_loop))
        for key in g:
            close(g[key], g_loop[key], rtol=SELF, what=f"delta rule vjp {key} at β = {beta_value}")
        S0 = rng.normal(size=(2, 3, 4))
        _, S = lr.delta_rule(q, k, np.zeros(v.shape), beta, chunk_size=32, initial_state=S0, return_chunk_states=True)
        if beta_value == 0.0:
            close(S[:, -1], S0, rtol=SELF, what="β = 0 leaves the state")
        else:  # each write reflects the rows of S: their norms are kept
            close(np.linalg.norm(S[:, -1], axis=-1), np.linalg.norm(S0, axis=-1), rtol=1e-12, what="β = 2 keeps norms")


def test_delta_rule_long_gated_sequence():
    rng, q, k, v = _qkv(22, batch=(), L=3000, dk=4, dv=2)
    k = _unit(k)
    beta = rng.uniform(0.1, 1.0, 3000)
    log_g = -rng.uniform(0, 3.0, 3000)  # gates from 1 down to e^{-3}
    log_g[100:200] = -700.0  # e^{-700} per step: resets
    y = lr.delta_rule(q, k, v, beta, log_g=log_g, chunk_size=64)
    assert np.all(np.isfinite(y))
    close(y, lr.delta_rule_loop(q, k, v, beta, log_g=log_g), rtol=SELF, what="delta rule long gated L")


def test_delta_rule_is_nlms_of_chapter_6():
    # LMS w_n = w_{n−1} + μ e_n u_n on regressors u_n is the delta rule with k = u/‖u‖,
    # v = d/‖u‖, β = μ‖u‖² (the normalized step), and its output with q_t = u_t is w_tᵀ u_t
    rng = np.random.default_rng(23)
    n, m, mu = 400, 4, 0.05
    u = rng.normal(size=n)
    d = np.convolve(u, [0.5, -0.3, 0.2, 0.1])[:n] + 0.05 * rng.normal(size=n)
    W, _ = classical.lms(u, d, m, mu)
    U = np.stack([np.concatenate([np.zeros(i), u[: n - i]]) for i in range(m)], -1)
    norm = np.linalg.norm(U, axis=-1)
    o, st = lr.delta_rule(U, U / norm[:, None], (d / norm)[:, None], mu * norm**2, scale=1.0, chunk_size=16, return_chunk_states=True)
    close(o[:, 0], np.sum(W * U, -1), rtol=ORACLE, what="delta rule vs classical.lms outputs")
    close(st[-1, 0], W[-1], rtol=ORACLE, what="delta rule final state vs classical.lms weights")


def test_delta_rule_beta_one_stores_orthonormal_pairs_exactly():
    # with orthonormal keys and β = 1, S k_i = v_i for every stored pair (closed form)
    rng = np.random.default_rng(24)
    keys = np.linalg.qr(rng.normal(size=(8, 8)))[0].T[:6]
    vals = rng.normal(size=(6, 3))
    _, st = lr.delta_rule(keys, keys, vals, np.ones(6), scale=1.0, return_chunk_states=True)
    close(st[-1] @ keys.T, vals.T, rtol=ORACLE, what="delta rule exact recall, orthonormal keys")


def test_delta_rule_is_causal():
    rng, q, k, v = _qkv(25, batch=(), L=40)
    k = _unit(k)
    beta = rng.uniform(0.1, 1, 40)
    y0 = lr.delta_rule(q, k, v, beta, chunk_size=16)
    v2 = v.copy()
    v2[21:] += 1.0
    y1 = lr.delta_rule(q, k, v2, beta, chunk_size=16)
    close(y1[:21], y0[:21], rtol=1e-15, what="delta rule causality")


@settings(max_examples=25, deadline=None)
@given(
    L=st.integers(1, 40),
    chunk=st.integers(1, 50),
    dk=st.integers(1, 5),
    dv=st.integers(1, 3),
    gate_scale=st.sampled_from([0.0, 1e-9, 0.3, 5.0, 100.0]),
    seed=st.integers(0, 2**16),
)
def test_chunked_equals_recurrence_property(L, chunk, dk, dv, gate_scale, seed):
    # any length, chunk size, width and gate regime: the chunked forms are their recurrences
    rng = np.random.default_rng(seed)
    q, k, v = rng.normal(size=(L, dk)), rng.normal(size=(L, dk)), rng.normal(size=(L, dv))
    log_g = -gate_scale * rng.random((L, dk))
    close(lr.gated_linear_attention(q, k, v, log_g, chunk_size=chunk), lr.gated_linear_attention_loop(q, k, v, log_g),
          rtol=SELF, what="GLA chunked vs recurrence (property)")
    ku = _unit(k + 1e-3)  # no zero key
    beta = rng.uniform(1e-3, 1.999, L)
    close(lr.delta_rule(q, ku, v, beta, log_g=log_g[:, 0], chunk_size=chunk), lr.delta_rule_loop(q, ku, v, beta, log_g=log_g[:, 0]),
          rtol=SELF, what="delta rule chunked vs recurrence (property)")


# ---------------------------------------------------------------------------------------------
# RLS memory
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [1.0, 0.95])
def test_rls_memory_recursion_equals_normal_equations(lam):
    rng, q, k, v = _qkv(30, L=25, dk=4, dv=3)
    close(
        lr.rls_memory(q, k, v, lam=lam, delta=0.1),
        lr.rls_memory_loop(q, k, v, lam=lam, delta=0.1),
        rtol=1e-9,
        what="RLS recursion vs normal equations",
    )


def test_rls_memory_is_least_squares():
    rng, q, k, v = _qkv(31, batch=(), L=50, dk=4, dv=3)
    S_ls = np.linalg.lstsq(k, v, rcond=None)[0].T  # argmin Σ ‖v_i − S k_i‖²
    o = lr.rls_memory(q, k, v, lam=1.0, delta=1e-10, scale=1.0)
    close(o[-1], S_ls @ q[-1], rtol=1e-8, what="RLS memory vs lstsq (δ = 1e-10)")


def test_rls_memory_matches_classical_rls():
    rng = np.random.default_rng(32)
    n, m = 200, 3
    u = rng.normal(size=n)
    d = np.convolve(u, [1.0, 0.4, -0.2])[:n] + 0.1 * rng.normal(size=n)
    W, _ = classical.rls(u, d, m, lam=0.98, delta=0.01)
    U = np.stack([np.concatenate([np.zeros(i), u[: n - i]]) for i in range(m)], -1)
    o = lr.rls_memory_loop(U, U, d[:, None], lam=0.98, delta=0.01, scale=1.0)
    close(o[:, 0], np.sum(W * U, -1), rtol=1e-10, what="RLS memory vs classical.rls")


def _windup_case(seed, passes=40):
    """Six unit keys in Dk = 8 (two directions never excited), `passes` passes with values V, then as many with
    new values V'; the six keys read at the end by zero-key steps (§16.6). Returns q, k, v and V'."""
    rng = np.random.default_rng(seed)
    keys, V, V2 = _unit(rng.normal(size=(6, 8))), rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    order = np.concatenate([rng.permutation(6) for _ in range(2 * passes)])
    vals = np.where((np.arange(12 * passes) < 6 * passes)[:, None], V[order], V2[order])
    return np.r_[keys[order], keys], np.r_[keys[order], 0 * keys], np.r_[vals, 0 * V2], V2


def test_rls_memory_survives_windup_and_the_loop_refuses():
    # λ < 1 without persistent excitation: P_t grows like λ^{−(t+1)}/δ in the two unexcited directions. The plain
    # recursion (P stored) loses the gain; rls_memory (QR on the span of the keys) recalls the new values to
    # round-off; the square-root loop refuses by name once cond A_t > RLS_COND_MAX instead of answering
    q, k, v, V2 = _windup_case(1)
    recall = lambda o: np.sum((o[-6:] - V2) ** 2) / np.sum(V2**2)  # noqa: E731
    # the case winds up: λ^{−(t+1)}/δ passes 1e30 (the plain recursion, P stored, lost the gain here with OpenBLAS's
    # SkylakeX kernels, recall error > 1e-3, and kept it by luck of rounding with its Haswell kernels, 4.7e-6)
    assert 0.9 ** -len(k) / 1e-9 > 1e30
    assert recall(lr.rls_memory(q, k, v, lam=0.9, delta=1e-9, scale=1.0)) < 1e-15
    with pytest.raises(ValueError, match=r"lam, delta, k: the RLS recursion's square-root factor .* cond\(A_t\)"):
        lr.rls_memory_loop(q, k, v, lam=0.9, delta=1e-9, scale=1.0)
    q, k, v, V2 = _windup_case(1, passes=15)  # λ^-(t+1)/δ = 1e20: both forms answer and agree at every step
    close(lr.rls_memory_loop(q, k, v, lam=0.9, delta=1e-9, scale=1.0), lr.rls_memory(q, k, v, lam=0.9, delta=1e-9, scale=1.0),
          rtol=1e-9, what="RLS square-root recursion vs least squares under moderate windup")


def _faded_case(seed, passes=80):
    """Two keys written once at the start, then six others `passes` times (Dk = 8, no direction never excited); the
    eight keys are read at the end by zero-key steps. Returns q, k, v and the values V of the eight keys."""
    rng = np.random.default_rng(seed)
    keys, V = _unit(rng.normal(size=(8, 8))), rng.normal(size=(8, 3))
    order = np.concatenate([rng.permutation(6) for _ in range(passes)])
    k, v = np.r_[keys[6:], keys[order]], np.r_[V[6:], V[order]]
    return np.r_[k, keys], np.r_[k, 0 * keys], np.r_[v, 0 * V], V


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rls_memory_recalls_a_direction_written_once_long_ago(seed):
    # review newtext18a, rls_faded.py: exact (16.13) keeps the two once-written values (data and prior fade at the
    # same rate; 60-digit solutions are within 5e-7 of V); the eigen-drop returned them with relative errors 2 to 5.7
    q, k, v, V = _faded_case(seed)
    for fn in (lr.rls_memory, lr.rls_memory_loop):
        o = fn(q, k, v, lam=0.9, delta=1e-9, scale=1.0)[-8:]
        assert np.linalg.norm(o[6:] - V[6:]) / np.linalg.norm(V[6:]) < 1e-6, fn.__name__
        assert np.linalg.norm(o[:6] - V[:6]) / np.linalg.norm(V[:6]) < 1e-12, fn.__name__


def test_rls_memory_refuses_a_direction_faded_beyond_float64():
    # 120 passes: cond U_t reaches 1e16 and the once-written values cannot be recalled (measured errors 1 to 2.6)
    q, k, v, V = _faded_case(0, passes=120)
    with pytest.raises(ValueError, match=r"lam, delta, k: at step t = \d+ the least-squares problem"):
        lr.rls_memory(q, k, v, lam=0.9, delta=1e-9, scale=1.0)


def test_rls_memory_refuses_at_the_first_step_past_the_threshold():
    """The step named in the refusal against cond₂ U_t from an independent computation: the QR of the whole weighted
    problem (16.13) at each step (prior rows and λ^{(t−i)/2} k_i), all eight directions excited from t = 7 on. The
    condition check computes singular values only where a cheaper upper bound passes half the threshold: this pins
    that the bound never lets a step past the threshold through."""
    q, k, v, _ = _faded_case(0, passes=120)
    lam, delta = 0.9, 1e-9
    with pytest.raises(ValueError, match=r"at step t = (\d+)") as refused:
        lr.rls_memory(q, k, v, lam=lam, delta=delta, scale=1.0)
    t_ref = int(re.search(r"at step t = (\d+)", str(refused.value)).group(1))

    def cond(t):
        w = np.sqrt(lam ** (t - np.arange(t + 1.0)))[:, None]
        a = np.r_[math.sqrt(lam ** (t + 1) * delta) * np.eye(8), w * k[: t + 1]]
        s = np.linalg.svd(np.linalg.qr(a, mode="r"), compute_uv=False)
        return s[0] / s[-1]

    conds = np.array([cond(t) for t in range(7, t_ref + 1)])
    assert conds[-1] > lr.RLS_COND_MAX and np.all(conds[:-1] <= lr.RLS_COND_MAX), (t_ref, conds[-3:])
    assert conds[-2] > lr.RLS_COND_MAX / 64  # the last steps before it were near the threshold: the exact check ran


@pytest.mark.parametrize("size", [1e100, 1e160, 1e200, 1e300])
def test_rls_memory_keys_of_large_norm(size):
    """Keys whose squares overflow float64: the map scales like 1/|k| (one direction, δ → 0: o_t = v (k·q)/|k|²);
    np.linalg.norm of such a key is inf, and rls_memory used to skip the key and answer 0."""
    k = np.full((6, 4), size)
    q, v = np.ones((6, 4)), np.arange(18.0).reshape(6, 3) + 1
    o = lr.rls_memory(q, k, v, lam=1.0, delta=1e-12, scale=1.0)
    want = np.cumsum(v, axis=0) / np.arange(1, 7)[:, None] / size  # the mean of the values so far, times k·q/|k|²
    close(o, want, rtol=1e-12, what=f"rls_memory, keys of size {size:.0e}")


def test_rls_memory_refuses_a_key_whose_norm_overflows():
    k = np.full((6, 64), 1e308)  # finite entries, norm 8e308
    with pytest.raises(ValueError, match=r"^k: the norm of the key at step t = 0 overflows"):
        lr.rls_memory(np.ones((6, 64)), k, np.ones((6, 3)))


@pytest.mark.parametrize("theta", [0.0, 0.7])
def test_rls_memory_aligned_keys_written_once(theta):
    # review newtext18a, rls_aligned.py: e_1 once (value 1), then e_2 399 times; (16.13) reads 1 − 9e-7 along e_1 for
    # ever; the eigen-drop returned 0 from t = 320 (0.983 at t = 300 with the plane rotated by 0.7 rad)
    L = 400
    k = np.zeros((L, 2))
    k[0], k[1:] = [1, 0], [0, 1]
    v = np.where(np.arange(L)[:, None] == 0, 1.0, 0.5)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    q = np.tile([1.0, 0.0], (L, 1)) @ rot.T
    exact = 1 / (1 + 1e-6 * 0.9)  # Σ over e_1: λ^t / (λ^t + λ^{t+1} δ), for every t
    for fn in (lr.rls_memory, lr.rls_memory_loop):
        o = fn(q, k @ rot.T, v, lam=0.9, delta=1e-6, scale=1.0)[:, 0]
        close(o, np.full(L, exact), rtol=1e-10, what=f"{fn.__name__}, aligned keys, rotation {theta}")


@pytest.mark.parametrize("seed", range(4))
def test_rls_forms_agree_on_random_well_conditioned_cases(seed):
    rng = np.random.default_rng(100 + seed)
    q, k, v = rng.normal(size=(3, 2, 60, 5))
    for lam in (1.0, 0.97, 0.9):
        close(lr.rls_memory_loop(q, k, v, lam=lam, delta=0.1), lr.rls_memory(q, k, v, lam=lam, delta=0.1),
              rtol=1e-10, what=f"RLS loop vs least squares, λ = {lam}")


def test_rls_memory_rank_deficient_keys():
    # keys of rank 3 in Dk = 8, λ = 0.9, δ = 1e-6, L = 400: λ^{t+1}δ falls far below the rounding of R_t, which is
    # singular to working precision (a plain np.linalg.solve of (16.13) raises LinAlgError on these inputs)
    rng = np.random.default_rng(3)
    k = rng.normal(size=(400, 3)) @ rng.normal(size=(3, 8))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    W1, W2 = rng.normal(size=(2, 2, 8))
    v = np.where((np.arange(400) < 200)[:, None], k @ W1.T, k @ W2.T) + 0.01 * rng.normal(size=(400, 2))
    normal = lr.rls_memory(k, k, v, lam=0.9, delta=1e-6, scale=1.0)
    loop = lr.rls_memory_loop(k, k, v, lam=0.9, delta=1e-6, scale=1.0)
    # both are within ~5e-9 of a 60-digit solution of (16.13); the problem itself is that sensitive to rounding
    close(normal, loop, rtol=1e-7, what="RLS with rank-deficient keys: normal equations vs square-root recursion")
    assert np.abs(normal[-1] - v[-1]).max() < 0.1  # reads the current map W2 (the noise is 0.01)


def test_rls_memory_before_any_key_after_the_prior_underflows():
    # zero keys for 1200 steps with λ = 0.5: λ^{t+1}δ underflows to 0 and R_t = 0; S_t = 0 until a key is written
    rng = np.random.default_rng(4)
    q, v = rng.normal(size=(1300, 2)), rng.normal(size=(1300, 1))
    k = np.where((np.arange(1300) < 1200)[:, None], 0.0, _unit(rng.normal(size=(1300, 2))))
    o = lr.rls_memory(q, k, v, lam=0.5, delta=1.0, scale=1.0)
    assert np.all(o[:1200] == 0) and np.all(np.isfinite(o))
    # from there on the prior is 0 in float64: weighted least squares (the minimum-norm map at t = 1200, one key)
    for t in (1200, 1201, 1250, 1299):
        w = np.sqrt(0.5 ** (t - np.arange(1200, t + 1.0)))[:, None]
        S = np.linalg.lstsq(w * k[1200:t + 1], w * v[1200:t + 1], rcond=None)[0].T
        close(o[t], S @ q[t], rtol=1e-9, what=f"RLS after 1200 empty steps, step {t}, vs weighted lstsq")


def test_rls_memory_loop_refuses_when_its_factor_spreads():
    # λ = 0.5 and a direction never excited: P_t^{1/2} grows like 2^{t/2} there; the loop names lam and delta at the
    # first step with cond A_t > RLS_COND_MAX (before the factor overflows near t = 2048); rls_memory still answers
    k = np.tile([1.0, 0.0], (2100, 1))
    v = np.ones((2100, 1))
    with pytest.raises(ValueError, match="lam, delta, k: the RLS recursion's square-root factor"):
        lr.rls_memory_loop(k, k, v, lam=0.5, delta=1.0, scale=1.0)
    close(lr.rls_memory(k, k, v, lam=0.5, delta=1.0, scale=1.0)[-1], np.ones(1), rtol=1e-12,
          what="RLS least squares, one direction excited for 2100 steps")


# ---------------------------------------------------------------------------------------------
# Chunks longer than the sequence, empty sequences and widths
# ---------------------------------------------------------------------------------------------


def _forms(L, dk=4, dv=3, batch=(2,), seed=50):
    """Each chunked form and its loop twin on inputs of length L: name -> (call(fn, **kw), chunked, loop)."""
    rng, q, k, v = _qkv(seed, batch=batch, L=L, dk=dk, dv=dv)
    log_g, log_gh = -rng.uniform(0, 1.0, q.shape), -rng.uniform(0, 1.0, q.shape[:-1])
    beta = rng.uniform(0.1, 1.9, q.shape[:-1])
    ku = _unit(k) if dk and L else k
    x, dt, A, B, C, D = _ssd_inputs(seed, batch=batch[:-1], H=batch[-1] if batch else 1, G=1, L=L, P=dv, N=dk)
    qr, kr, vr = (a if batch else a[None] for a in (q, k, v))  # retention needs a head axis
    gamma = rng.uniform(0.5, 1.0, qr.shape[-3])
    gla = (lr.gated_linear_attention, lr.gated_linear_attention_loop)
    return {
        "gla per channel": (lambda f, **kw: f(q, k, v, log_g, **kw), *gla),
        "gla per head": (lambda f, **kw: f(q, k, v, log_gh, **kw), *gla),
        "gated delta rule": (lambda f, **kw: f(q, ku, v, beta, log_g=log_gh, **kw), lr.delta_rule, lr.delta_rule_loop),
        "delta rule": (lambda f, **kw: f(q, ku, v, beta, **kw), lr.delta_rule, lr.delta_rule_loop),
        "ssd": (lambda f, **kw: f(x, dt, A, B, C, D, **kw), lr.ssd, lr.ssd_loop),
        "retention": (lambda f, **kw: f(qr, kr, vr, gamma, **kw), lr.retention, lr.retention_loop),
    }


@pytest.mark.parametrize("form", list(_forms(10)))
def test_chunk_longer_than_the_sequence_is_one_chunk_of_L_steps(form):
    # chunk_size = 4096 at L = 10 is the computation of chunk_size = L (it took seconds and hundreds of MB
    # in (c, c) temporaries of zero padding; 10**9 ran out of memory): the same outputs to the last bit, one
    # chunk-end state, and the memory of a call with chunks of 10 steps
    import time
    import tracemalloc

    call, chunked, loop = _forms(10)[form]
    kw = {} if form == "retention" else dict(return_chunk_states=True)
    want = call(chunked, chunk_size=10, **kw)
    tracemalloc.start()
    try:
        start = time.perf_counter()
        got = call(chunked, chunk_size=4096, **kw)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{form}: {peak / 2**20:.1f} MiB for a sequence of 10 steps"
    assert elapsed < 2.0
    for a, b in zip(*((got, want) if kw else ((got,), (want,)))):
        assert np.array_equal(a, b)
    if kw:
        assert got[1].shape[-3] == 1  # ceil(L / chunk_size) = 1 chunk-end state
        close(got[1], call(loop, chunk_size=4096, **kw)[1], rtol=SELF, what=f"{form}: the one chunk state vs recurrence")
    close(got[0] if kw else got, call(loop, chunk_size=4096, **kw)[0] if kw else call(loop, chunk_size=4096),
          rtol=SELF, what=f"{form}: chunk longer than L vs recurrence")


@pytest.mark.parametrize("sizes", [dict(L=0), dict(L=0, batch=()), dict(L=7, dv=0), dict(L=7, dk=0), dict(L=7, batch=(0,))])
@pytest.mark.parametrize("form", list(_forms(10)))
def test_empty_sequences_and_widths(form, sizes):
    # L = 0, Dv = 0 (P = 0), Dk = 0 (N = 0: no state, SSD's y = D x) or an empty batch: correctly shaped
    # results, the same from the chunked form, its loop twin and the dense form, and chunk-end states of the
    # documented shape (..., ceil(L / c), Dv, Dk): none for L = 0. The delta rule's keys of Dk = 0 are not unit.
    call, chunked, loop = _forms(**sizes)[form]
    if form.endswith("delta rule") and sizes.get("dk") == 0 and sizes["L"]:
        for fn in (chunked, loop):
            with pytest.raises(ValueError, match="k: the delta rule expects l2-normalized keys"):
                call(fn)
        return
    kw = {} if form == "retention" else dict(chunk_size=4, return_chunk_states=True)
    got, want = call(chunked, **kw), call(loop, **kw)
    dense = {"gla per channel": lr.gated_linear_attention_parallel, "gla per head": lr.gated_linear_attention_parallel,
             "ssd": lr.ssd_quadratic, "retention": lr.retention_parallel}.get(form)
    y, y_loop = (got[0], want[0]) if kw else (got, want)
    np.testing.assert_array_equal(y, y_loop)  # the same shape and numbers: zeros, or SSD's D x
    assert 0 in y.shape or sizes.get("dk") == 0
    assert form == "ssd" or not np.any(y)  # with Dk = 0 there is no state to read: o_t = 0
    if dense is not None:
        np.testing.assert_array_equal(call(dense), y)
    if kw:
        L = sizes["L"]
        assert got[1].shape == want[1].shape and got[1].shape[-3] == -(-L // 4)
        assert not np.any(got[1])
    # an empty result still reads its inputs: non-finite values are refused as before
    if form.startswith("gla") and y.size == 0 and sizes.get("dv") == 0:
        _, q, k, v = _qkv(0, batch=(2,), L=7, dk=4, dv=0)
        q[1, 3, 2] = np.nan
        with pytest.raises(ValueError, match="q: expected finite values"):
            lr.gated_linear_attention(q, k, v, np.zeros((2, 7)), return_chunk_states=True)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def _good():
    rng, q, k, v = _qkv(40, batch=(2,), L=6, dk=3, dv=2)
    return q, _unit(k), v, np.full((2, 6), 0.5), -np.full((2, 6), 0.1)


@pytest.mark.parametrize(
    "edit, exc, match",
    [
        (lambda a: a.update(q=np.ones(3)), ValueError, "q: expected shape"),
        (lambda a: a.update(v=np.ones((2, 5, 2))), ValueError, "v: expected the same length"),
        (lambda a: a.update(k=np.ones((2, 6, 4))), ValueError, "k: expected the same last dimension"),
        (lambda a: a.update(log_g=np.full((2, 6), 0.1)), ValueError, "log_g: expected log-gates <= 0"),
        (lambda a: a.update(log_g=np.zeros((2, 5))), ValueError, "log_g: expected per-head gates"),
        (lambda a: a.update(log_g=np.zeros((2, 6, 4))), ValueError, "log_g: expected per-channel"),
        (lambda a: a.update(log_g=np.zeros(6)), ValueError, "log_g: expected shape"),
        (lambda a: a.update(log_g=np.full((2, 6), np.nan)), ValueError, "log_g: expected finite"),
        (lambda a: a.update(chunk_size=0), ValueError, "chunk_size"),
        (lambda a: a.update(chunk_size=8.0), TypeError, "chunk_size"),
        (lambda a: a.update(scale=-1.0), ValueError, "scale"),
        (lambda a: a.update(return_chunk_states=1), TypeError, "return_chunk_states"),
        (lambda a: a.update(q="abc"), TypeError, "q"),
    ],
)
@pytest.mark.parametrize("fn", [lr.gated_linear_attention, lr.gated_linear_attention_loop])
def test_gla_bad_input(fn, edit, exc, match):
    q, k, v, _, log_g = _good()
    args = dict(q=q, k=k, v=v, log_g=log_g, chunk_size=4, scale=None, return_chunk_states=False)
    edit(args)
    with pytest.raises(exc, match=match):
        fn(args.pop("q"), args.pop("k"), args.pop("v"), args.pop("log_g"), **args)


@pytest.mark.parametrize("tier", ["bfloat16", "float16"])
def test_delta_rule_takes_unit_keys_stored_in_low_precision(tier):
    # unit keys rounded to bfloat16 are off by up to 2^-8 in norm: accepted (a model's own keys, the
    # oracle's rounded inputs), and the chunked form still equals the recurrence; 1.01 is refused
    from refimpl._precision import round_to

    rng = np.random.default_rng(5)
    q, k, v = rng.standard_normal((3, 2, 300, 16))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    k = round_to(k, tier).astype(np.float64)
    off = np.abs(np.linalg.norm(k, axis=-1) - 1.0).max()
    assert 1e-6 < off <= 2.0**-8
    beta = rng.uniform(0.1, 1.9, (2, 300))
    got, want = lr.delta_rule(q, k, v, beta, chunk_size=32), lr.delta_rule_loop(q, k, v, beta)
    assert np.abs(got - want).max() <= 1e-12 * np.abs(want).max()
    with pytest.raises(ValueError, match="k: the delta rule expects l2-normalized keys"):
        lr.delta_rule(q, k * 1.01, v, beta)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda a: a.update(k=a["k"] * 1.01), "k: the delta rule expects l2-normalized keys"),
        # the norm in the message is the key's, even where its squares overflow or underflow (was inf, 0)
        (lambda a: a.update(k=a["k"] * 1e200), r"got a key of norm 1e\+200"),
        (lambda a: a.update(k=a["k"] * 1e-200), r"got a key of norm 1e-200"),
        (lambda a: a.update(beta=np.full((2, 6), 2.0 + 2.0**-51)), r"beta: expected writing strengths in \[0, 2\]"),
        (lambda a: a.update(beta=np.full((2, 6), -1e-300)), "beta: expected writing strengths"),
        (lambda a: a.update(beta=np.full((2, 5), 0.5)), "beta: expected shape"),
        (lambda a: a.update(log_g=np.full((2, 6), 1e-3)), "log_g: expected log-gates <= 0"),
        (lambda a: a.update(log_g=np.zeros((2, 6, 3))), "log_g: expected shape"),
        (lambda a: a.update(chunk_size=-2), "chunk_size"),
    ],
)
@pytest.mark.parametrize("fn", [lr.delta_rule, lr.delta_rule_loop])
def test_delta_rule_bad_input(fn, edit, match):
    q, k, v, beta, log_g = _good()
    args = dict(q=q, k=k, v=v, beta=beta, log_g=log_g, chunk_size=4)
    edit(args)
    with pytest.raises(ValueError, match=match):
        fn(args.pop("q"), args.pop("k"), args.pop("v"), args.pop("beta"), **args)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda a: a.update(x=np.ones((5, 3))), "x: expected shape"),
        (lambda a: a.update(dt=np.ones((2, 4, 5))), "dt: expected shape"),
        (lambda a: a.update(dt=-a["dt"]), "dt: expected step sizes >= 0"),
        (lambda a: a.update(A=np.ones(4)), "A: expected A <= 0"),
        (lambda a: a.update(A=-np.ones(3)), "A: expected one scalar per head"),
        (lambda a: a.update(B=np.ones((2, 3, 23, 5)), C=np.ones((2, 3, 23, 5))), "divisible"),
        (lambda a: a.update(B=np.ones((2, 2, 22, 5))), "B: expected shape"),
        (lambda a: a.update(C=np.ones((2, 2, 23, 4))), "C: expected shape"),
        (lambda a: a.update(D=np.ones(3)), "D: expected one skip weight"),
        (lambda a: a.update(chunk_size=0), "chunk_size"),
        (lambda a: a.update(x=np.full((2, 4, 23, 3), np.inf)), "x: expected finite"),
    ],
)
@pytest.mark.parametrize("fn", [lr.ssd, lr.ssd_loop])
def test_ssd_bad_input(fn, edit, match):
    x, dt, A, B, C, D = _ssd_inputs(41)
    args = dict(x=x, dt=dt, A=A, B=B, C=C, D=D, chunk_size=8)
    edit(args)
    with pytest.raises(ValueError, match=match):
        fn(args.pop("x"), args.pop("dt"), args.pop("A"), args.pop("B"), args.pop("C"), args.pop("D"), **args)


@pytest.mark.parametrize("fn", [lr.retention, lr.retention_loop, lr.retention_parallel])
def test_retention_bad_input(fn):
    rng, q, k, v = _qkv(42, batch=(3,), L=5)
    with pytest.raises(ValueError, match=r"gamma: expected decays in \(0, 1\]"):
        fn(q, k, v, np.array([0.5, 1.5, 0.9]))
    with pytest.raises(ValueError, match="gamma: expected one decay per head"):
        fn(q, k, v, np.array([0.5, 0.9]))
    with pytest.raises(ValueError, match="q: expected shape"):
        fn(q[0], k[0], v[0], np.array([0.5]))


@pytest.mark.parametrize("fn", [lr.rls_memory, lr.rls_memory_loop])
def test_rls_memory_bad_input(fn):
    rng, q, k, v = _qkv(43, batch=(), L=5)
    with pytest.raises(ValueError, match="lam: expected a forgetting factor"):
        fn(q, k, v, lam=1.5)
    with pytest.raises(ValueError, match="lam"):
        fn(q, k, v, lam=0.0)
    with pytest.raises(ValueError, match="delta"):
        fn(q, k, v, delta=0.0)
    with pytest.raises(ValueError, match="v: expected the same length"):
        fn(q, k, v[:4])


@pytest.mark.parametrize("form", ["gla", "ssd", "delta rule"])
def test_threads_and_groups_give_bitwise_the_same_result(monkeypatch, form):
    # each head is computed by the same operations whichever thread runs it (README: "bitwise the same"), and
    # each chunk whatever group of chunks it falls in: the group size follows the machine's L2 cache
    # (linear_rnn._GROUP_ROWS), so a result must not depend on it
    monkeypatch.setattr(_blocking, "THREAD_MIN_ELEMS", 0)
    if form == "ssd":
        x, dt, A, B, C, D = _ssd_inputs(45, batch=(), H=4, G=2, L=150, P=3, N=5)
        run = lambda: lr.ssd(x, dt, A, B, C, D, chunk_size=16, return_chunk_states=True)  # noqa: E731
    elif form == "gla":
        rng, q, k, v = _qkv(46, batch=(4,), L=150, dk=5, dv=3)
        log_g = np.log(rng.uniform(0.5, 1.0, q.shape))
        run = lambda: lr.gated_linear_attention(q, k, v, log_g, chunk_size=16, return_chunk_states=True)  # noqa: E731
    else:
        rng, q, k, v = _qkv(47, batch=(4,), L=150, dk=5, dv=3)
        beta = rng.uniform(0.1, 1.0, (4, 150))
        run = lambda: lr.delta_rule(q, _unit(k), v, beta, chunk_size=16, return_chunk_states=True)  # noqa: E731
    results = []
    for threads, group_rows in ((1, 2048), (2, 2048), (3, 2048), (1, 16), (2, 48), (3, 1 << 20)):
        monkeypatch.setattr(_blocking, "THREADS", threads)
        monkeypatch.setattr(lr, "_GROUP_ROWS", group_rows)
        results.append(run())
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("form", ["gla per channel", "gla per head", "ssd", "delta rule"])
def test_a_head_that_decays_fast_leaves_its_neighbours_bits_alone(monkeypatch, form):
    # chunks that decay below e^{-30} take the exact path (segment sums), others the factored one; the heads are
    # shared out between threads, so each head's arithmetic must depend on its own gates only, or the result would
    # depend on the thread count: here head 3 decays fast in some chunks (and in every chunk for SSD), the others never
    monkeypatch.setattr(_blocking, "THREAD_MIN_ELEMS", 0)
    rng = np.random.default_rng(48)
    H, L = 4, 150
    if form == "ssd":
        x, dt, A, B, C, D = _ssd_inputs(48, batch=(), H=H, G=1, L=L, P=3, N=5)
        A = A.copy()
        A[3] = -1e4  # head 3: every chunk decays below e^{-30} (a group of them all: the all-exact path)
        A[2] = -3.0  # head 2: some chunks do (their Σ Δ is about 10 ± 3), some do not
        dt = dt.copy()
        dt[1, 7] = 1e-200  # head 1: D x_t cannot ride on the diagonal as D / Δ_t (it would overflow), for no head then
        run = lambda: lr.ssd(x, dt, A, B, C, D, chunk_size=16, return_chunk_states=True)  # noqa: E731
    elif form == "delta rule":
        q, k = rng.normal(size=(2, H, L, 3))
        k, v = _unit(k), rng.normal(size=(H, L, 2))
        beta = rng.uniform(0.1, 1.0, (H, L))
        # head 0 never decays fast, heads 1 and 2 in every chunk (alone in a thread: the all-exact groups), head 3 in
        # some; chunks of 32 (the all-exact groups' K_Γᵀ was a transposed view, which OpenBLAS multiplies otherwise)
        log_g = -rng.uniform(0.5, 1.5, (H, L)) * np.array([0.05, 20.0, 1.5, 0.95])[:, None]
        run = lambda: lr.delta_rule(q, k, v, beta, log_g=log_g, chunk_size=32, return_chunk_states=True)  # noqa: E731
    else:
        q, k, v = rng.normal(size=(3, H, L, 5))
        shape = (H, L, 5) if form == "gla per channel" else (H, L)
        log_g = np.log(rng.uniform(0.5, 1.0, shape))
        log_g[3, 40:50] = -10.0  # head 3: chunk 2 (steps 32 ... 47) and chunk 3 decay by e^{-80} and more
        run = lambda: lr.gated_linear_attention(q, k, v, log_g, chunk_size=16, return_chunk_states=True)  # noqa: E731
    results = []
    for threads in (1, 2, 4):
        monkeypatch.setattr(_blocking, "THREADS", threads)
        results.append(run())
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)
    ref = (lr.ssd_loop(x, dt, A, B, C, D, chunk_size=16, return_chunk_states=True) if form == "ssd" else
           lr.delta_rule_loop(q, k, v, beta, log_g=log_g, chunk_size=32, return_chunk_states=True)
           if form == "delta rule" else
           lr.gated_linear_attention_loop(q, k, v, log_g, chunk_size=16, return_chunk_states=True))
    for a, b in zip(results[0], ref):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * np.abs(b).max())


def test_chunks_halved_for_fast_decay_are_halved_as_on_their_own(monkeypatch):
    # gates per key channel that decay fast: each such chunk is halved until its blocks are mild, the chunks of a
    # thread batched; a chunk batched with faster-decaying ones (of other heads) was halved further, by other
    # operations, so its head's result depended on the thread count (1e-14, forward and backward)
    from refimpl._vjp import gated_linear_attention_vjp

    monkeypatch.setattr(_blocking, "THREAD_MIN_ELEMS", 0)
    rng = np.random.default_rng(49)
    q, k, v, dy = rng.normal(size=(4, 3, 164, 5))
    # every chunk of 32 steps decays below e^{-30}, each head by its own depth: a head's chunks are halved down to
    # blocks of 16 (about -1.2 per step), 4 (-5) or 1 (-20) steps before the blocks are mild
    log_g = -rng.uniform(0.5, 1.5, (3, 164, 5)) * np.array([1.2, 5.0, 20.0])[:, None, None]
    runs = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(_blocking, "THREADS", threads)
        y, states = lr.gated_linear_attention(q, k, v, log_g, chunk_size=32, return_chunk_states=True)
        grads = gated_linear_attention_vjp(q, k, v, log_g, dy, chunk_size=32)
        runs.append([y, states, *grads.values()])
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)
    ref = lr.gated_linear_attention_loop(q, k, v, log_g, chunk_size=32)
    np.testing.assert_allclose(runs[0][0], ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())


# ---------------------------------------------------------------------------------------------
# Finiteness checked in the threads that read the inputs (refimpl._validate.check_finite_part)
# ---------------------------------------------------------------------------------------------


def _large_inputs(rng, H=4, L=300, d=64):
    """Inputs large enough for the heads to be split over threads (q.size >= THREAD_MIN_ELEMS)."""
    q, k, v = rng.normal(size=(3, H, L, d))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    return q, k, v


def _calls(rng):
    q, k, v = _large_inputs(rng)
    H, L, d = q.shape
    log_g = np.log(rng.uniform(0.8, 1.0, (H, L, d)))
    beta = rng.uniform(0.1, 0.9, (H, L))
    x, dt, A, D = rng.normal(size=(H, L, d)), rng.uniform(0.01, 0.1, (H, L)), -np.arange(1.0, H + 1), np.ones(H)
    B, C = rng.normal(size=(2, 1, L, d))  # one group: the heads of the group are split, B and C shared
    B2, C2 = rng.normal(size=(2, 4, L, d))  # four groups: the groups are split
    return {
        "gla": (lambda a: lr.gated_linear_attention(a["q"], a["k"], a["v"], a["log_g"]), dict(q=q, k=k, v=v, log_g=log_g)),
        "delta": (lambda a: lr.delta_rule(a["q"], a["k"], a["v"], beta), dict(q=q, k=k, v=v)),
        "ssd": (lambda a: lr.ssd(a["x"], dt, A, a["B"], a["C"], D), dict(x=x, B=B, C=C)),
        "ssd-groups": (lambda a: lr.ssd(a["x"], dt, A, a["B"], a["C"], D), dict(x=x, B=B2, C=C2)),
    }


@pytest.mark.parametrize("chunk", [64, 8, 5])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_gla_per_channel_refuses_one_non_finite_entry_anywhere(chunk, bad):
    # the per-channel core checks the finiteness of q, k, v after computing, from its output (and from a
    # chunk that decays fast, for −∞ in log g): one bad entry at the start, middle or end of a chunk, of
    # either half of it, or of the sequence, in the first or the last head, must still be refused,
    # with or without chunk states and at any scale (0 included)
    rng, q, k, v = _qkv(45, batch=(2,), L=140, dk=6, dv=5)
    log_g = -rng.uniform(0, 0.05, q.shape)
    args = dict(q=q, k=k, v=v, log_g=log_g)
    for name in args:
        for t in (0, 1, 31, 32, 63, 64, 100, 139):
            for head, dim, scale, states in ((0, 0, None, False), (1, -1, 0.0, False), (1, 2, 0.5, True)):
                broken = dict(args)
                broken[name] = args[name].copy()
                broken[name][head, t, dim] = bad
                with pytest.raises(ValueError, match=f"^{name}: expected finite values, got 1 NaN/inf entries"):
                    lr.gated_linear_attention(*broken.values(), scale=scale, chunk_size=chunk,
                                              return_chunk_states=states)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("fn", ["gla", "delta", "ssd", "ssd-groups"])
def test_non_finite_inputs_are_refused_by_the_threads_that_read_them(monkeypatch, fn, bad):
    import refimpl._blocking as blocking

    monkeypatch.setattr(blocking, "THREADS", 2)
    rng = np.random.default_rng(5)
    call, args = _calls(rng)[fn]
    call(args)  # the clean inputs pass
    for name, arr in args.items():
        broken = dict(args)
        broken[name] = arr.copy()
        broken[name][-1, 7, 3] = bad  # the last head or group: read by the second thread
        broken[name][0, -1, 0] = bad
        with pytest.raises(ValueError, match=f"^{name}: expected finite values, got 2 NaN/inf entries"):
            call(broken)


@pytest.mark.parametrize("threads", [1, 2])
def test_positive_log_gates_are_refused_by_the_threads_that_read_them(monkeypatch, threads):
    # the sign of the log-gates is checked by each thread on its heads: a positive one in the last head
    # only (read by the second thread) is refused with the maximum over all of log_g, per channel or
    # per head; NaN or +inf there gets the finiteness error, counted over all of log_g, whichever part
    # finds it
    import refimpl._blocking as blocking

    monkeypatch.setattr(blocking, "THREADS", threads)
    monkeypatch.setattr(blocking, "THREAD_MIN_ELEMS", 0)
    rng, q, k, v = _qkv(46, batch=(4,), L=70, dk=6, dv=5)
    for log_g in (-rng.uniform(0, 0.05, q.shape), -rng.uniform(0, 0.05, q.shape[:-1])):
        lr.gated_linear_attention(q, k, v, log_g)
        broken = log_g.copy()
        broken[-1, 33] = 0.25
        broken[-1, 34] = 0.125
        with pytest.raises(ValueError, match=r"^log_g: expected log-gates <= 0 \(gates in \(0, 1\]\), got maximum 0.25$"):
            lr.gated_linear_attention(q, k, v, broken, chunk_size=16)
        broken.flat[5] = np.nan  # the first head (first thread) has a NaN, the last one positive gates
        with pytest.raises(ValueError, match=r"^log_g: expected finite values, got 1 NaN/inf entries"):
            lr.gated_linear_attention(q, k, v, broken)


@pytest.mark.parametrize("fn", ["gla", "gla-head", "delta", "gated-delta", "ssd", "ssd-groups"])
def test_two_bad_arguments_in_different_parts_give_the_one_thread_error(monkeypatch, fn):
    # each thread checks the inputs it reads; with a bad entry in the last head of the first argument and
    # in the first head of a later one, the first thread finds the later one first. The error must not
    # depend on that: it is the one-thread error (the first argument, in order), for any thread count.
    # Before refimpl._validate.check_part, two or more threads named the later argument.
    import refimpl._blocking as blocking

    monkeypatch.setattr(blocking, "THREAD_MIN_ELEMS", 0)
    rng = np.random.default_rng(9)
    calls = _calls(rng)
    call, args = calls[{"gla-head": "gla", "gated-delta": "delta"}.get(fn, fn)]
    H, L = next(iter(args.values())).shape[:2]
    if fn == "gla-head":
        args = dict(args, log_g=np.log(rng.uniform(0.8, 1.0, (H, L))))
    if fn == "gated-delta":
        beta, log_g = rng.uniform(0.1, 0.9, (H, L)), np.log(rng.uniform(0.8, 1.0, (H, L)))
        call = lambda a: lr.delta_rule(a["q"], a["k"], a["v"], beta, log_g=log_g)  # noqa: E731
    names = list(args)
    cases = [(names[0], later) for later in names[1:]]
    if fn.startswith("gla"):  # a positive log-gate is refused before the finiteness of any input
        cases.append(("log_g", "q"))
    for first, later in cases:
        broken = {name: arr.copy() for name, arr in args.items()}
        if first == "log_g":
            broken["log_g"][-1, 5] = 0.5
            want = r"^log_g: expected log-gates <= 0"
        else:
            broken[first][(-1, 5, 0)[: broken[first].ndim]] = np.nan
            want = f"^{first}: expected finite values, got 1 NaN/inf entries"
        broken[later][(0, 7, 1)[: broken[later].ndim]] = -np.inf  # (+inf or NaN in log g is refused with the gates' sign, before all)
        for threads in (1, 2, 4):
            monkeypatch.setattr(blocking, "THREADS", threads)
            with pytest.raises(ValueError, match=want):
                call(broken)


@pytest.mark.parametrize("threads", [1, 2])
def test_outputs_that_overflow_are_refused_although_the_threads_sum_them(monkeypatch, threads):
    # GLA and SSD sum each part of their output in its thread and vouch for it only if every sum is
    # finite: finite inputs whose output overflows (values near the float64 maximum, added over steps)
    # are still refused, in either head
    import refimpl._blocking as blocking

    monkeypatch.setattr(blocking, "THREADS", threads)
    monkeypatch.setattr(blocking, "THREAD_MIN_ELEMS", 0)
    rng, q, k, v = _qkv(47, batch=(2,), L=40, dk=4, dv=3)
    q, k = np.abs(q) + 1.0, np.abs(k) + 1.0
    for head in (0, 1):
        big = v.copy()
        big[head] = 1e308
        for log_g in (np.zeros(q.shape), np.zeros(q.shape[:-1])):
            with pytest.raises(ValueError, match="not representable in float64"):
                lr.gated_linear_attention(q, k, big, log_g, scale=1.0)
        x, dt, A = np.ones((2, 40, 3)), np.full((2, 40), 0.5), np.zeros(2)
        x[head] = 1e308
        B = C = np.ones((1, 40, 4))
        with pytest.raises(ValueError, match="not representable in float64"):
            lr.ssd(x, dt, A, B, C)
