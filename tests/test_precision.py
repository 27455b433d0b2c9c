"""Tests of the precision tiers (:mod:`refimpl._precision`) and of the low-precision verdict.

* Rounding to float16, bfloat16 and TF32 against the definition, checked without the code under
  test: the result lies on the tier's grid (trailing bits zero), is the nearer grid neighbour,
  ties go to the even one, subnormals land on the uniform subnormal grid, and values beyond the
  largest finite number become inf (float16: 65520 → inf; bfloat16: float32's range).
* The verdict of :func:`refimpl.oracle.compare` in low precision: float32 ports written here,
  from the equations, with loop orders and blockings different from the plain references of
  :mod:`refimpl._lowprec` (a tiled online-softmax attention, a chunked linear attention, a
  sequential and an SSD-style chunked selective scan, a direct-form-I biquad cascade and
  ``scipy.signal.sosfilt``), pass at realistic lengths; a formula error in each fails; a TF32
  kernel fails float32 and meets tf32; a bfloat16 kernel fails the float16 tier.
* Bad input: dtype names, ``inputs`` keys, shapes refimpl rejects, wrong return values.
"""

from __future__ import annotations

import functools
import numpy as np
import pytest
import scipy.signal

from refimpl import oracle
from refimpl._precision import TIERS, carrier, eps, ladder, matmul, round_to, store, tier_name
from refimpl._testing import PLAIN_ULPS, low_precision_verdict, rel_error

f32 = np.float32

# ---- rounding ----------------------------------------------------------------------------------

FORMATS = {"float16": (10, -14, 15), "bfloat16": (7, -126, 127), "tf32": (10, -126, 127)}


def _grid_neighbours(x: float, bits: int, emin: int):
    """The two grid points around x > 0 (float64 arithmetic, exact for these formats)."""
    e = max(int(np.floor(np.log2(x))), emin)
    q = 2.0 ** (e - bits)  # spacing of the grid at x (uniform below 2^emin)
    lo = np.floor(x / q) * q
    return lo, lo + q, q


@pytest.mark.parametrize("tier", sorted(FORMATS))
def test_rounding_is_nearest_on_the_grid_ties_to_even(tier):
    bits, emin, emax = FORMATS[tier]
    rng = np.random.default_rng(0)
    x = rng.uniform(1, 2, 4000) * 2.0 ** rng.integers(emin - bits - 2, emax, 4000)
    x = np.concatenate([x, -x[:100]])
    r = round_to(x, tier).astype(np.float64)
    big = (2 - 2.0 ** -bits) * 2.0 ** emax
    for xi, ri in zip(x, r):
        a = abs(xi)
        lo, hi, q = _grid_neighbours(a, bits, emin)
        if a >= big + q / 2:
            assert np.isinf(ri) and np.sign(ri) == np.sign(xi)
            continue
        want = lo if a - lo < hi - a else hi if a - lo > hi - a else (lo if (lo / q) % 2 == 0 else hi)
        assert abs(ri) == min(want, big) and np.signbit(ri) == np.signbit(xi), (tier, xi, ri, want)


def test_float16_special_values():
    got = round_to(np.array([1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, 2.0 ** -25, 3 * 2.0 ** -25, 65504.0, 65519.99, 65520.0,
                             -7e4, 1e-9, np.inf, -0.0]), "float16")
    assert got.dtype == np.float16
    want = [1.0, 1 + 2.0 ** -9, 0.0, 2.0 ** -23, 65504.0, 65504.0, np.inf, -np.inf, 0.0, np.inf, -0.0]
    assert np.array_equal(got.astype(np.float64), want)
    assert np.isnan(round_to(np.nan, "float16"))


def test_bfloat16_special_values_and_range():
    big = (2 - 2.0 ** -7) * 2.0 ** 127
    x = np.array([1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8, 2.0 ** -134, 3 * 2.0 ** -134, 2.0 ** -133, big, (2 - 2.0 ** -8) * 2.0 ** 127,
                  1e38, 65520.0, np.nan])
    for source in (x, x.astype(np.float32)):  # from float64 (one rounding) and from float32 (the bit path)
        got = round_to(source, "bfloat16")
        assert got.dtype == np.float32
        want = [1.0, 1 + 2.0 ** -6, 0.0, 2.0 ** -132, 2.0 ** -133, big, np.inf, 150 * 2.0 ** 119,
                65536.0, np.nan]
        assert np.array_equal(got.astype(np.float64), want, equal_nan=True)
        assert np.all((got[np.isfinite(got)].view(np.uint32) & 0xFFFF) == 0)  # 8 significant bits: low half zero


def test_tf32_keeps_ten_bits_and_float32_range():
    x = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    r = round_to(x, "tf32")
    assert r.dtype == np.float32 and np.all((r.view(np.uint32) & 0x1FFF) == 0)
    assert np.max(np.abs(r - x) / np.abs(x)) <= 2.0 ** -11
    assert np.isinf(round_to(np.float32(3.4028235e38), "tf32"))  # float32's max rounds up to 2^128 = inf
    assert store(x, "tf32").dtype == np.float32 and np.array_equal(store(x, "tf32"), x)  # tf32 stores float32


def test_float32_and_float16_agree_with_numpy_casts():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(20000) * 10.0 ** rng.uniform(-45, 39, 20000)
    with np.errstate(over="ignore"):
        assert np.array_equal(round_to(x, "float32"), x.astype(np.float32))
        assert np.array_equal(round_to(x, "float16"), x.astype(np.float16))


def test_complex_is_rounded_partwise():
    z = np.array([1 + 2.0 ** -9 + 1j * (1 + 3 * 2.0 ** -8)])
    got = round_to(z, "bfloat16")
    assert got.dtype == np.complex64 and got[0] == 1 + 1j * (1 + 2.0 ** -6)


def test_tier_names_and_constants():
    assert TIERS == ("float64", "float32", "tf32", "float16", "bfloat16")
    assert [tier_name(t) for t in (np.float64, np.dtype("float32"), "bf16", "FP16", "tf32", np.float16)] == [
        "float64", "float32", "bfloat16", "float16", "tf32", "float16"]
    assert [eps(t) for t in TIERS] == [2.0 ** -52, 2.0 ** -23, 2.0 ** -10, 2.0 ** -10, 2.0 ** -7]
    assert carrier("float16") is np.float16 and carrier("bfloat16") is np.float32
    assert ladder("float32") == ("tf32", "float16", "bfloat16") and ladder("bfloat16") == ()
    for bad in ("bfloat17", "int8", np.int32, np.complex64, None, 3):
        with pytest.raises(ValueError, match="dtype: expected one of"):
            tier_name(bad)


def test_matmul_accumulates_exact_products_in_float32():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((40, 300)), rng.standard_normal((300, 20))
    for tier in ("bfloat16", "float16", "tf32"):
        got = matmul(a, b, tier)
        assert got.dtype == np.float32
        exact = round_to(a, tier).astype(np.float64) @ round_to(b, tier).astype(np.float64)
        # only the float32 summation errs: |error| <= K eps32 sum |a||b| (a loose a-priori bound)
        bound = 300 * 2.0 ** -24 * (np.abs(round_to(a, tier).astype(float)) @ np.abs(round_to(b, tier).astype(float)))
        assert np.all(np.abs(got - exact) <= bound)
        assert np.max(np.abs(exact - a @ b)) > 100 * np.max(np.abs(got - exact))  # the input rounding dominates


def test_verdict_rule():
    assert low_precision_verdict(1e-6, 1e-6, "float32") == (True, 2e-6)
    ok, bound = low_precision_verdict(3e-3, 1e-4, "float16", ulps=PLAIN_ULPS["float16"])
    assert bound == 2 * 2.0 ** -10 and not ok
    assert PLAIN_ULPS["float32"] == 4.0
    assert not low_precision_verdict(float("nan"), 1e-3, "bfloat16")[0]


# ---- float32 ports (from the equations; not refimpl's code) -----------------------------------



def scan_port(u, delta, A, B, C, D=None, discretization="zoh", bug=None):
    # all of Ā_t, B̄_t computed at once, then the recurrence, readout by einsum
    u, delta, A, B, C = (np.asarray(x, dtype=f32) for x in (u, delta, A, B, C))
    dA = delta[..., :, :, None] * A                      # (..., L, d, n)
    Abar = np.exp(dA)
    if discretization == "mamba" or bug == "euler":
        Bbar = delta[..., None] * B[..., :, None, :]
    else:
        Bbar = np.where(A == 0, delta[..., None], np.expm1(dA) / np.where(A == 0, f32(1), A)) * B[..., :, None, :]
    x = Bbar * u[..., None]
    h = np.zeros(x.shape[:-3] + x.shape[-2:], dtype=f32)
    hs = np.empty_like(x)
    for t in range(x.shape[-3]):
        h = Abar[..., t, :, :] * h + x[..., t, :, :]
        hs[..., t, :, :] = h
    y = np.einsum("...tdn,...tn->...td", hs, C).astype(f32)
    if D is not None:
        y = y + np.asarray(D, f32) * u
    return y, h


def biquad_port(sos, x, form="tdf2", bug=None):
    # direct form I, section after section, float32 scalars
    y = np.asarray(x, dtype=f32).copy()
    for s, row in enumerate(np.asarray(sos, dtype=f32)):
        b0, b1, b2, a0, a1, a2 = row
        b0, b1, b2, a1, a2 = b0 / a0, b1 / a0, b2 / a0, a1 / a0, a2 / a0
        if bug == "a2" and s == 0:
            a2 = a2 * f32(1.001)
        x1 = x2 = y1 = y2 = f32(0)
        out = np.empty_like(y)
        for n, xn in enumerate(y):
            yn = b0 * xn + b1 * x1 + b2 * x2 - a1 * y1 - a2 * y2
            x2, x1, y2, y1 = x1, xn, y1, yn
            out[n] = yn
        y = out
    return y


def linear_attention_port(q, k, v, causal=True, chunk=64, bug=None):
    q, k, v = (np.asarray(x, dtype=f32) for x in (q, k, v))
    fq, fk = (np.where(x > 0, x + 1, np.exp(np.minimum(x, 0))).astype(f32) for x in (q, k))
    n, C = fq.shape
    dv = v.shape[1]
    S = np.zeros((C, dv), f32)
    z = np.zeros(C, f32)
    y = np.empty((n, dv), f32)
    mask = np.tril(np.ones((chunk, chunk), bool))
    for s in range(0, n, chunk):
        Q, K, V = fq[s:s + chunk], fk[s:s + chunk], v[s:s + chunk]
        if bug == "leak":  # the state updated before it is read: each chunk sees its own future
            S = S + K.T @ V
            z = z + K.sum(0)
        m = mask[:len(Q), :len(Q)]
        W = np.where(m, Q @ K.T, f32(0))
        num = Q @ S + W @ V
        den = Q @ z + W.sum(1)
        y[s:s + chunk] = num / den[:, None]
        if bug != "leak":
            S += K.T @ V
            z += K.sum(0)
    return y


def attention_port(q, k, v, causal=False, scale=None, block=256, rnd=None, bug=None):
    # tiled online softmax (FlashAttention forward); rnd rounds what a kernel would store / feed to a dot
    rnd = rnd or (lambda x: np.asarray(x, f32))
    q, k, v = (rnd(x).astype(f32) for x in (q, k, v))
    n, d = q.shape
    m_ = k.shape[0]
    scale = f32(1 / np.sqrt(d)) if scale is None else f32(scale)
    if bug == "noscale":
        scale = f32(1)
    o = np.zeros((n, v.shape[1]), f32)
    mx = np.full((n, 1), -np.inf, f32)
    l = np.zeros((n, 1), f32)
    rows = np.arange(n)[:, None]
    for s in range(0, m_, block):
        S = (q @ k[s:s + block].T) * scale
        if causal:
            cols = np.arange(s, min(s + block, m_))[None, :]
            S = np.where(cols <= rows + (1 if bug == "offbyone" else 0), S, -np.inf)
        new = np.maximum(mx, S.max(1, keepdims=True))
        new_safe = np.where(np.isfinite(new), new, f32(0))
        P = np.exp(S - new_safe)
        corr = np.exp(np.where(np.isfinite(mx), mx - new_safe, -np.inf))
        l = l * corr + P.sum(1, keepdims=True)
        o = o * corr + rnd(P).astype(f32) @ v[s:s + block]
        mx = new
    return rnd(o / l).astype(f32)


def scan_chunked_port(u, delta, A, B, C, D=None, discretization="zoh", chunk=32):
    # SSD-style chunked scan: inside a chunk h_t = sum_s exp(sum_{s<r<=t} w_r) x_s (+ carried state)
    u, delta, A, B, C = (np.asarray(x, dtype=f32) for x in (u, delta, A, B, C))
    w = delta[..., None] * A                                  # (L, d, n)
    if discretization == "mamba":
        Bbar = delta[..., None] * B[:, None, :]
    else:
        Bbar = np.where(A == 0, delta[..., None], np.expm1(w) / np.where(A == 0, f32(1), A)) * B[:, None, :]
    x = Bbar * u[..., None]
    L = u.shape[0]
    h = np.zeros(A.shape, f32)
    y = np.empty(u.shape, f32)
    for s in range(0, L, chunk):
        ws, xs = w[s:s + chunk], x[s:s + chunk]
        cs = np.cumsum(ws, axis=0, dtype=f32)                 # (T, d, n)
        T = len(ws)
        seg = cs[:, None] - cs[None, :]                       # sum_{s<r<=t} w_r, (T, T, d, n)
        tri = np.tril(np.ones((T, T), bool))[:, :, None, None]
        Wm = np.where(tri, np.exp(np.where(tri, seg, f32(0))), f32(0))
        H = np.einsum("tsdn,sdn->tdn", Wm, xs) + np.exp(cs) * h
        y[s:s + chunk] = np.einsum("tdn,tn->td", H, C[s:s + chunk])
        h = H[-1]
    if D is not None:
        y = y + np.asarray(D, f32) * u
    return y, h


# ---- verdicts ------------------------------------------------------------------------------------


def _verdict(report):
    (case,) = report.cases
    return {q.name: q for q in case.quantities}, case


@pytest.mark.parametrize("L", [50, 400, 4096])
@pytest.mark.parametrize("port", [scan_port, scan_chunked_port])
def test_selective_scan_float32_ports_pass_at_every_length_and_euler_fails(L, port):
    inp = oracle.random_inputs("ssm.selective_scan", seed=L, L=L, d_in=4, n=8, discretization="zoh")
    report = oracle.compare("ssm.selective_scan", port, dtype="float32", inputs=inp)
    qs, case = _verdict(report)
    assert report.passed, report.table()
    assert all(q.model == "plain float32" for q in qs.values())
    if port is scan_port:
        bad = oracle.compare("ssm.selective_scan", lambda **kw: scan_port(**kw, bug="euler"), dtype="float32", inputs=inp)
        assert not bad.passed and bad.cases[0].first_failure == "y"
        assert bad.cases[0].quantities[0].rel_error > 1e4 * bad.cases[0].quantities[0].bound


def test_selective_scan_slow_modes_and_registered_long_case():
    r = np.random.default_rng(3)
    slow = {"u": r.standard_normal((2048, 4)), "delta": np.full((2048, 4), 1e-3), "A": -np.geomspace(1e-4, 1, 16)[None].repeat(4, 0),
            "B": r.standard_normal((2048, 16)), "C": r.standard_normal((2048, 16)), "D": np.ones(4), "discretization": "mamba"}
    for port in (scan_port, scan_chunked_port):
        report = oracle.compare("ssm.selective_scan", port, dtype="float32", inputs=slow)
        assert report.passed, report.table()
    # the registered case the fixed 8-eps floor failed (y rel 2.0e-6 against a bound of 9.5e-7)
    report = oracle.compare("ssm.selective_scan", scan_port, dtype=np.float32, cases="zoh_long")
    assert report.passed and report.cases[0].quantities[0].rel_error > 8 * 2.0 ** -23


@pytest.mark.parametrize("N", [2000, 20000])
def test_biquad_cascade_near_unit_circle(N):
    inp = oracle.random_inputs("iir.sos_filter", seed=2, N=N, order=6, wn=0.02)
    poles = np.concatenate([np.roots(row[3:]) for row in inp["sos"]])
    assert np.max(np.abs(poles)) > 0.99
    good = oracle.compare("iir.sos_filter", biquad_port, dtype="float32", inputs=inp)
    assert good.passed, good.table()
    assert good.cases[0].quantities[0].rel_error > 100 * 2.0 ** -23  # far above any fixed floor
    bad = oracle.compare("iir.sos_filter", lambda **kw: biquad_port(**kw, bug="a2"), dtype="float32", inputs=inp)
    assert not bad.passed and bad.meets is None  # a1 a2 off by 0.1 %: no tier whose plain reference is meaningful


def test_sosfilt_in_float32_passes_the_registered_case():
    report = oracle.compare("iir.sos_filter", lambda sos, x, form: scipy.signal.sosfilt(sos.astype(f32), x), dtype="float32",
                            cases="cheby1_near_unit_circle")
    assert report.passed, report.table()
    q = report.cases[0].quantities
    assert [x.model for x in q] == ["plain float32"] * len(q)


def test_causal_linear_attention_n8192():
    inp = oracle.random_inputs("random_features.linear_attention", seed=3, N=8192, d=16)
    good = oracle.compare("random_features.linear_attention", linear_attention_port, dtype="float32", inputs=inp)
    assert good.passed, good.table()
    bad = oracle.compare("random_features.linear_attention", lambda **kw: linear_attention_port(**kw, bug="leak"),
                         dtype="float32", inputs=inp)
    assert not bad.passed and bad.cases[0].first_failure == "y"


@pytest.fixture(scope="module")
def attn4096():
    return oracle.random_inputs("attention.softmax_attention", seed=4, N=4096, d=64, causal=True)


def test_softmax_attention_n4096_tiled_port_passes_and_mask_off_by_one_fails(attn4096):
    good = oracle.compare("attention.softmax_attention", attention_port, dtype="float32", inputs=attn4096)
    assert good.passed and good.meets == "float32", good.table()
    bad = oracle.compare("attention.softmax_attention", lambda **kw: attention_port(**kw, bug="offbyone"), dtype="float32",
                         inputs=attn4096)
    qs, case = _verdict(bad)
    assert not bad.passed and case.first_failure == "y" and qs["y"].rel_error > 0.1


def test_tf32_kernel_fails_float32_and_meets_tf32():
    attn1024 = oracle.random_inputs("attention.softmax_attention", seed=4, N=1024, d=64, causal=True)
    tf32 = lambda **kw: attention_port(**kw, rnd=lambda x: round_to(x, "tf32"))
    r32 = oracle.compare("attention.softmax_attention", tf32, dtype="float32", inputs=attn1024)
    assert not r32.passed and r32.meets == "tf32"
    assert "within the bounds of tier: tf32" in r32.table()
    rtf = oracle.compare("attention.softmax_attention", tf32, dtype="tf32", inputs=attn1024)
    assert rtf.passed and rtf.cases[0].quantities[0].model in ("plain tf32 (rne)", "plain tf32 (truncate)")


def test_rounding_modes_truncate_and_ties_away():
    # round_to(..., rounding=) against the definition: "truncate" is the float32 value with the dropped bits cleared
    # (toward zero), "rna" the nearer grid neighbour with ties away from zero; grid neighbours computed in float64
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(6000) * 10.0 ** rng.integers(-44, 39, 6000)).astype(f32)
    ties = np.array([1 + 2.0 ** -11, -(1 + 2.0 ** -11), 1 + 2.0 ** -8, 3 * 2.0 ** -137], f32)  # halfway in tf32 / bf16
    x = np.concatenate([x, ties, np.array([3.4028235e38, -3.4028235e38, np.inf, -np.inf, np.nan, 0.0, -0.0], f32)])
    for tier in ("tf32", "bfloat16"):
        bits = FORMATS[tier][0]
        drop = 23 - bits
        trunc = round_to(x, tier, rounding="truncate")
        fin = np.isfinite(x)
        cleared = (x.view(np.uint32) & np.uint32(0xFFFFFFFF ^ ((1 << drop) - 1))).view(f32)
        assert np.array_equal(trunc[fin], cleared[fin])
        assert np.all(np.abs(trunc[fin].astype(float)) <= np.abs(x[fin].astype(float)))  # toward zero, never overflows
        assert np.array_equal(trunc[~fin], x[~fin], equal_nan=True)  # ±inf, NaN kept
        a, lo = np.abs(x[fin].astype(float)), np.abs(trunc[fin].astype(float))
        top = np.floor(np.log2(np.where(lo > 0, lo, 1.0)))
        q = 2.0 ** (np.where(lo >= 2.0 ** -126, top, -126) - bits)  # the grid's spacing at lo
        hi = lo + q  # the next grid point away from zero (2^128 beyond float32's range: overflow)
        want = np.where(a - lo >= hi - a, hi, lo)  # ties away from zero
        want = np.where(want > (2 - 2.0 ** -bits) * 2.0 ** 127, np.inf, want) * np.sign(x[fin])
        got = round_to(x, tier, rounding="rna")
        assert np.array_equal(got[fin].astype(float), want) and np.array_equal(got[~fin], x[~fin], equal_nan=True), tier
        assert np.array_equal(round_to(x.astype(float), tier, rounding="truncate"), trunc, equal_nan=True)  # via float32
    assert float(round_to(f32(1 + 2.0 ** -11), "tf32")) == 1.0  # the tie: to even ...
    assert float(round_to(f32(1 + 2.0 ** -11), "tf32", rounding="rna")) == 1 + 2.0 ** -10  # ... or away from zero
    for bad, match in [(dict(rounding="down"), "rounding: expected one of rne, rna, truncate"),
                       (dict(rounding=None), "rounding: expected one of"),
                       (dict(tier="float16", rounding="truncate"), "rounding: 'truncate' is modelled for the tiers tf32")]:
        with pytest.raises(ValueError, match=match):
            round_to(x, **{"tier": "tf32", **bad})


def test_tf32_rounding_sets_the_conversion_of_matmul():
    from refimpl._precision import tf32_rounding

    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((30, 200)).astype(f32), rng.standard_normal((200, 20)).astype(f32)
    product = lambda mode: round_to(a, "tf32", rounding=mode).astype(float) @ round_to(b, "tf32", rounding=mode).astype(float)  # noqa: E731
    near = matmul(a, b, "tf32")
    with tf32_rounding("truncate"):
        cut = matmul(a, b, "tf32")
        with tf32_rounding("rne"):
            assert np.array_equal(matmul(a, b, "tf32"), near)
        assert np.array_equal(matmul(a, b, "tf32"), cut)
    assert np.array_equal(matmul(a, b, "tf32"), near)  # reset on leaving the block
    for got, mode in ((near, "rne"), (cut, "truncate")):
        assert np.max(np.abs(got - product(mode))) < 1e-5 * np.max(np.abs(product(mode)))
    assert np.max(np.abs(cut - near)) > 100 * np.max(np.abs(near - product("rne")))  # the conversion matters
    with tf32_rounding("truncate"):
        assert np.array_equal(matmul(a, b, "bfloat16"),  # other tiers: always to nearest even
                              round_to(a, "bfloat16").astype(f32) @ round_to(b, "bfloat16").astype(f32))
    with pytest.raises(ValueError, match="rounding: expected one of"):
        with tf32_rounding("floor"):
            pass


def test_truncating_tf32_kernels_pass_the_tf32_tier():
    """Hardware converts a float32 operand of a matrix product to TF32 by rounding to nearest or by truncation (its
    13 low bits dropped), and truncation is biased (every magnitude shrinks), so its error does not average out: the
    tf32 tier's plain reference is the worse of the two conversions, quantity by quantity, and its floor is u = 2.
    A correct fused attention kernel that truncates passes non-causal attention, where it exceeds the bound that the
    rounding plain reference with u = 1 would give, and a correct truncating chunked SSD kernel passes where it
    exceeds 2 ε (the floor u = 1); kernels that round to nearest (ties to even or away) pass too; planted bugs fail."""
    from refimpl._lowprec import PLAIN
    from refimpl._precision import tf32_rounding

    e = eps("tf32")
    trunc = lambda x: round_to(np.asarray(x, f32), "tf32", rounding="truncate")  # noqa: E731
    rna = lambda x: round_to(np.asarray(x, f32), "tf32", rounding="rna")  # noqa: E731
    inp = oracle.random_inputs("attention.flash_attention", seed=0, N=600, d=64, causal=False)
    good = oracle.compare("attention.flash_attention", lambda **kw: flash_port(**kw, rnd=trunc), dtype="tf32", inputs=inp)
    lse, y = good.cases[0].quantities
    assert good.passed and y.model == "plain tf32 (truncate)" and y.rel_error < 0.8 * y.bound, good.table()
    with tf32_rounding("rne"):  # the plain reference with rounding alone, judged as a kernel: its error
        rne = PLAIN["attention.flash_attention"]({k: (f32(v) if isinstance(v, np.ndarray) else v) for k, v in inp.items()},
                                                 "tf32")
    e_rne = oracle.compare("attention.flash_attention", lambda **kw: rne, dtype="tf32", inputs=inp).cases[0].quantities
    assert y.rel_error > 2 * max(e_rne[1].rel_error, e) and y.plain_error > 2 * e_rne[1].rel_error, (y, e_rne[1])
    for rnd in (lambda x: round_to(x, "tf32"), rna):
        assert oracle.compare("attention.flash_attention", lambda **kw: flash_port(**kw, rnd=rnd), dtype="tf32",
                              inputs=inp).passed
    bad = oracle.compare("attention.flash_attention", lambda **kw: flash_port(**kw, rnd=trunc, bug="last tile"),
                         dtype="tf32", inputs=inp)
    assert not bad.passed and bad.cases[0].first_failure == "lse"
    inp = oracle.random_inputs("linear_rnn.ssd", seed=1, L=1024, H=4, P=16, N=16, chunk_size=64)
    good = oracle.compare("linear_rnn.ssd", lambda **kw: ssd_port(**kw, rnd=trunc), dtype="tf32", inputs=inp)
    q = good.cases[0].quantities[0]
    assert good.passed and q.rel_error > 2 * e and q.bound == 2 * PLAIN_ULPS["tf32"] * e, good.table()
    bad = oracle.compare("linear_rnn.ssd", lambda **kw: ssd_port(**kw, rnd=trunc, bug="segsum"), dtype="tf32",
                         inputs=inp)
    assert not bad.passed and bad.cases[0].quantities[0].rel_error > 10 * bad.cases[0].quantities[0].bound


def test_bfloat16_kernel_fails_the_float16_tier():
    inp = oracle.random_inputs("attention.softmax_attention", seed=5, N=1024, d=64, causal=True)
    half = oracle.compare("attention.softmax_attention", lambda **kw: attention_port(**kw, rnd=lambda x: round_to(x, "float16")),
                          dtype="float16", inputs=inp)
    assert half.passed, half.table()
    bf = lambda **kw: attention_port(**kw, rnd=lambda x: round_to(x, "bfloat16"))
    r16 = oracle.compare("attention.softmax_attention", bf, dtype="float16", inputs=inp)
    assert not r16.passed and r16.meets == "bfloat16"
    assert oracle.compare("attention.softmax_attention", bf, dtype="bfloat16", inputs=inp).passed


def test_functions_without_plain_algorithm_keep_the_rounded_input_model():
    from refimpl import lyapunov

    report = oracle.compare("lyapunov.phi1", lambda z, tau: lyapunov.phi1(z, tau).astype(np.complex64), dtype="float32")
    models = {q.model for c in report.cases for q in c.quantities}
    assert report.passed and models == {"rounded inputs"}
    assert "(rounded inputs)" in report.table()


# ---- the modern linear recurrences, FlashAttention, random features and filters ---------------------
# Ports written from the papers' equations (chunked where the plain reference is sequential and vice
# versa); each passes the float32 verdict at a long length and a planted formula error fails it.


def _cast(x):
    return np.asarray(x, dtype=f32)


def _segsum_port(a):
    # seg[..., t, s] = sum_{s < r <= t} a_r (cumulative sums of a masked matrix: no difference of prefix sums)
    T = a.shape[-1]
    later = np.tril(np.ones((T, T), bool), -1)  # r > s  (row r, column s)
    seg = np.cumsum(np.where(later, a[..., :, None], f32(0)), axis=-2, dtype=f32)
    return np.where(np.tril(np.ones((T, T), bool)), seg, f32(-np.inf))


def ssd_port(x, dt, A, B, C, D=None, chunk_size=64, *, chunk=64, rnd=None, bug=None):
    # Mamba-2's chunked algorithm (intra-chunk quadratic form + state passing), float32 state
    rnd = rnd or _cast
    x, dt, A, B, C = (_cast(a) for a in (x, dt, A, B, C))
    H, L, P = x.shape[-3:]
    G = B.shape[-3]
    B, C = np.repeat(B, H // G, axis=-3), np.repeat(C, H // G, axis=-3)
    a = dt * A[:, None]                                   # log-decays Δ_t A, (H, L)
    y = np.empty(x.shape, f32)
    h = np.zeros((H, P, B.shape[-1]), f32)
    for s in range(0, L, chunk):
        sl = slice(s, min(s + chunk, L))
        ac, xc, Bc, Cc, dc = a[:, sl], x[:, sl], B[:, sl], C[:, sl], dt[:, sl]
        seg = _segsum_port(ac)
        if bug == "segsum":                               # decay from s includes step s itself
            seg = seg + ac[:, None, :]
        scores = (rnd(Cc) @ np.swapaxes(rnd(Bc), -1, -2)) * np.exp(seg) * dc[:, None, :]
        cs = np.cumsum(ac, axis=-1, dtype=f32)
        y[:, sl] = rnd(scores) @ rnd(xc) + np.exp(cs)[..., None] * (rnd(Cc) @ np.swapaxes(rnd(h), -1, -2))
        w = np.exp(seg[:, -1, :]) * dc                    # decay from s to the chunk end, times Δ_s
        h = np.exp(cs[:, -1])[:, None, None] * h + np.swapaxes(rnd(xc * w[..., None]), -1, -2) @ rnd(Bc)
    if D is not None:
        y = y + _cast(D)[:, None, None] * x
    return rnd(y)


def gla_port(q, k, v, log_g, scale=None, chunk_size=64, *, chunk=16, bug=None):
    # chunked GLA in the factored form (q ⊙ e^{cum}) · (k ⊙ e^{−cum}) inside chunks of 16
    q, k, v, lg = (_cast(a) for a in (q, k, v, log_g))
    q = q * f32(1 / np.sqrt(q.shape[-1]) if scale is None else scale)
    L, dk = q.shape[-2:]
    S = np.zeros((dk, v.shape[-1]), f32)
    o = np.empty(q.shape[:-1] + (v.shape[-1],), f32)
    for s in range(0, L, chunk):
        sl = slice(s, min(s + chunk, L))
        cum = np.cumsum(lg[sl], axis=0, dtype=f32)
        qt = q[sl] * np.exp(cum)
        kt = k[sl] * np.exp(-(cum - lg[sl]) if bug == "segment" else -cum)
        o[sl] = qt @ S + np.tril(qt @ kt.T) @ v[sl]
        S = np.exp(cum[-1])[:, None] * S + (k[sl] * np.exp(cum[-1] - cum)).T @ v[sl]
    return o


def retention_port(q, k, v, gamma, scale=None, chunk_size=64, *, bug=None):
    # the parallel form (Q Kᵀ ⊙ D) V per head, D_nm = γ^{n−m} (n ≥ m)
    q, k, v = (_cast(a) for a in (q, k, v))
    q = q * f32(1 / np.sqrt(q.shape[-1]) if scale is None else scale)
    L = q.shape[-2]
    lag = np.subtract.outer(np.arange(L), np.arange(L)).astype(f32)
    allowed = lag >= (-1 if bug == "mask" else 0)
    Dm = np.where(allowed, _cast(gamma)[:, None, None] ** np.maximum(lag, 0), f32(0))
    return (q @ np.swapaxes(k, -1, -2) * Dm) @ v


def delta_port(q, k, v, beta, log_g=None, scale=None, chunk_size=64, *, bug=None):
    # S_t = g_t S_{t−1} (I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ with the matrix formed explicitly
    q, k, v, beta = (_cast(a) for a in (q, k, v, beta))
    q = q * f32(1 / np.sqrt(q.shape[-1]) if scale is None else scale)
    g = np.exp(_cast(log_g)) if log_g is not None else np.ones(beta.shape, f32)
    L, dk = k.shape
    S = np.zeros((v.shape[-1], dk), f32)
    eye = np.eye(dk, dtype=f32)
    o = np.empty((L, v.shape[-1]), f32)
    for t in range(L):
        if bug == "gate":   # the correction uses the ungated state
            S = g[t] * S - beta[t] * np.outer(S @ k[t], k[t]) + beta[t] * np.outer(v[t], k[t])
        else:
            S = g[t] * S @ (eye - beta[t] * np.outer(k[t], k[t])) + beta[t] * np.outer(v[t], k[t])
        o[t] = S @ q[t]
    return o


def flash_port(q, k, v, causal=False, scale=None, block_q=64, block_k=64, *, tile=128, rnd=None, bug=None):
    # online softmax over key tiles; returns y and the row log-sum-exp
    rnd = rnd or _cast
    q, k, v = (rnd(a).astype(f32) for a in (q, k, v))
    n, d = q.shape
    m_ = k.shape[0]
    c = f32(1 / np.sqrt(d) if scale is None else scale)
    acc = np.zeros((n, v.shape[1]), f32)
    mx = np.full((n, 1), -np.inf, f32)
    l = np.zeros((n, 1), f32)
    rows = np.arange(n)[:, None]
    stop = m_ - m_ % tile if bug == "last tile" else m_
    for s in range(0, stop, tile):
        S = rnd(q) @ rnd(k[s:s + tile]).T * c
        if causal:
            S = np.where(np.arange(s, min(s + tile, m_))[None, :] <= rows, S, -np.inf)
        new = np.maximum(mx, S.max(axis=1, keepdims=True))
        safe = np.where(np.isfinite(new), new, f32(0))
        p = np.exp(S - safe)
        r = np.exp(np.where(np.isfinite(mx), mx - safe, -np.inf))
        l = l * r + p.sum(axis=1, keepdims=True)
        acc = acc * r + rnd(p).astype(f32) @ v[s:s + tile]
        mx = new
    lse = (mx + np.log(l))[:, 0]
    if bug == "log2":
        lse = lse / f32(np.log(2))
    return {"lse": lse, "y": rnd(acc / l).astype(f32)}


def performer_port(q, k, v, projection, causal=True, *, bug=None):
    # FAVOR+ features from Eq. (12.7), causal by cumulative sums over all tokens
    q, k, v, w = (_cast(a) for a in (q, k, v, projection))
    d, m = q.shape[-1], w.shape[0]
    if bug == "scale":
        qh, kh = q / f32(np.sqrt(d)), k                       # q·k/√d split unevenly
    else:
        qh, kh = q * f32(d ** -0.25), k * f32(d ** -0.25)
    eq = qh @ w.T - 0.5 * np.sum(qh * qh, -1, keepdims=True)
    ek = kh @ w.T - 0.5 * np.sum(kh * kh, -1, keepdims=True)
    fq = np.exp(eq - eq.max(-1, keepdims=True)) / f32(np.sqrt(m))
    fk = np.exp(ek - ek.max()) / f32(np.sqrt(m))
    if not causal:
        return (fq @ (fk.T @ v)) / (fq @ fk.sum(0))[:, None]
    S = np.cumsum(fk[:, :, None] * v[:, None, :], axis=0, dtype=f32)
    z = np.cumsum(fk, axis=0, dtype=f32)
    return np.einsum("nm,nmd->nd", fq, S) / np.sum(fq * z, -1, keepdims=True)


def rfa_port(q, k, v, n_features, sigma, seed, gates, *, bug=None):
    # gated RFA in its decay-masked quadratic form (Eq. 12.12), float32
    q, k, v, g = (_cast(a) for a in (q, k, v, gates))
    w = np.random.default_rng(int(seed)).standard_normal((int(n_features), q.shape[-1])).astype(f32) / f32(sigma)
    feat = lambda x: np.concatenate([np.sin(x @ w.T), np.cos(x @ w.T)], -1) / f32(np.sqrt(w.shape[0]))
    fq = feat(q / np.linalg.norm(q, axis=-1, keepdims=True))
    fk = feat(k / np.linalg.norm(k, axis=-1, keepdims=True))
    n = q.shape[0]
    lg = np.log(g)
    seg = np.cumsum(np.where(np.tri(n, k=-1, dtype=bool), lg[:, None], f32(0)), axis=0)
    decay = np.where(np.tri(n, dtype=bool), np.exp(seg), f32(0)) * ((1 - g) if bug != "no 1-g" else np.ones_like(g))[None, :]
    a = (fq @ fk.T) * decay
    return (a @ v) / a.sum(-1, keepdims=True)


def biquad_df1_port(b, a, x, form="tdf2", *, bug=None):
    # direct form I with float32 scalars
    b, a = _cast(b) / _cast(a)[0], _cast(a) / _cast(a)[0]
    if bug == "a2":
        a = a * np.array([1, 1, 1.001], f32)
    b0, b1, b2 = (f32(t) for t in b)
    a1, a2 = f32(a[1]), f32(a[2])
    x1 = x2 = y1 = y2 = f32(0)
    y = np.empty(len(x), f32)
    for n, xn in enumerate(_cast(x).tolist()):
        xn = f32(xn)
        yn = b0 * xn + b1 * x1 + b2 * x2 - a1 * y1 - a2 * y2
        x2, x1, y2, y1 = x1, xn, y1, yn
        y[n] = yn
    return y


def tf_sos_port(b, a, x, *, bug=None):
    # the transfer function as a float32 cascade of second-order sections
    sos = scipy.signal.tf2sos(b, a).astype(f32)
    if bug == "gain":
        sos[0, :3] *= f32(1.01)
    return scipy.signal.sosfilt(sos, _cast(x), axis=0).astype(f32)


def _one(report):
    (case,) = report.cases
    return case, {q.name: q for q in case.quantities}


LONG_PORTS = {
    "ssd": ("linear_rnn.ssd", dict(L=4096, H=2, P=8, N=8), ssd_port, "segsum"),
    "gla": ("linear_rnn.gated_linear_attention", dict(L=4096, dk=16, dv=16), gla_port, "segment"),
    "retention": ("linear_rnn.retention", dict(L=1024, H=3, dk=16, dv=16), retention_port, "mask"),
    "delta": ("linear_rnn.delta_rule", dict(L=1024, dk=16, dv=16, gated=True), delta_port, "gate"),
    "performer": ("random_features.performer_attention", dict(N=2048, d=16, m=64), performer_port, "scale"),
    "biquad": ("iir.biquad_filter", dict(N=100_000, r=0.9995, theta=0.05), biquad_df1_port, "a2"),
}


@pytest.mark.parametrize("key", sorted(LONG_PORTS))
def test_long_float32_ports_pass_and_formula_errors_fail(key):
    name, sizes, port, bug = LONG_PORTS[key]
    inp = oracle.random_inputs(name, seed=7, **sizes)
    good = oracle.compare(name, port, dtype="float32", inputs=inp)
    case, qs = _one(good)
    assert good.passed and good.meets == "float32", good.table()
    assert qs["y"].model == "plain float32"
    bad = oracle.compare(name, lambda **kw: port(**kw, bug=bug), dtype="float32", inputs=inp)
    case, qs = _one(bad)
    assert not bad.passed and case.first_failure == "y" and qs["y"].rel_error > 100 * qs["y"].bound, bad.table()
    if key == "biquad":  # near the unit circle the float32 error is far above any fixed floor
        assert qs["y"].plain_error > 1000 * 2.0 ** -23


def test_flash_attention_lse_and_tiles():
    inp = oracle.random_inputs("attention.flash_attention", seed=1, N=1000, d=64)  # 1000 = 7 tiles of 128 + 104
    good = oracle.compare("attention.flash_attention", flash_port, dtype="float32", inputs=inp)
    case, qs = _one(good)
    assert good.passed and [q.name for q in case.quantities] == ["lse", "y"] and qs["lse"].model == "plain float32"
    for bug, lse_ok in [("log2", False), ("last tile", False)]:
        bad = oracle.compare("attention.flash_attention", lambda **kw: flash_port(**kw, bug=bug), dtype="float32", inputs=inp)
        case, qs = _one(bad)
        assert not bad.passed and case.first_failure == "lse", bad.table()
    assert qs["y"].rel_error > 0.1  # the dropped last tile also breaks the output
    bf16 = lambda **kw: flash_port(**kw, rnd=lambda x: round_to(x, "bfloat16"))
    assert oracle.compare("attention.flash_attention", bf16, dtype="bfloat16", inputs=inp).passed
    r16 = oracle.compare("attention.flash_attention", bf16, dtype="float16", inputs=inp)
    assert not r16.passed and r16.meets == "bfloat16"


def test_ssd_bfloat16_kernel_fails_the_float16_tier():
    # a kernel that only *stores* in bfloat16 errs by at most 2^-9 = the float16 floor: the one below also
    # rounds its matrix-product inputs to bfloat16, and its error (about 4e-3) is twice the float16 bound
    inp = oracle.random_inputs("linear_rnn.ssd", seed=3, L=1024, H=2, P=16, N=64)
    half = oracle.compare("linear_rnn.ssd", lambda **kw: ssd_port(**kw, rnd=lambda x: round_to(x, "float16")),
                          dtype="float16", inputs=inp)
    assert half.passed, half.table()
    bf = lambda **kw: ssd_port(**kw, rnd=lambda x: round_to(x, "bfloat16"))
    r16 = oracle.compare("linear_rnn.ssd", bf, dtype="float16", inputs=inp)
    assert not r16.passed and r16.meets == "bfloat16" and r16.cases[0].quantities[0].rel_error > 1.5 * r16.cases[0].quantities[0].bound
    assert oracle.compare("linear_rnn.ssd", bf, dtype="bfloat16", inputs=inp).passed


@pytest.mark.parametrize("name, port, bug", [("random_features.rfa_attention", rfa_port, "no 1-g"),
                                             ("iir.tf_filter", tf_sos_port, "gain")])
def test_registered_cases_rfa_and_tf_filter(name, port, bug):
    good = oracle.compare(name, port, dtype="float32")
    assert good.passed and all(q.model == "plain float32" for c in good.cases for q in c.quantities), good.table()
    bad = oracle.compare(name, lambda **kw: port(**kw, bug=bug), dtype="float32")
    assert not bad.passed and bad.cases[0].first_failure == "y"


def test_plain_reference_declines_what_it_does_not_model(monkeypatch):
    # ALiBi is modelled; an option the plain algorithm does not know falls back to the rounded-input model
    from refimpl import _lowprec
    from refimpl._lowprec import PLAIN

    inp = oracle.random_inputs("attention.softmax_attention", seed=0, N=40, d=8, batch=2)
    got = PLAIN["attention.softmax_attention"]({**inp, "window": 5, "alibi_slopes": np.array([0.5, 0.25])}, "float32")
    from refimpl import attention

    want = attention.softmax_attention(inp["q"], inp["k"], inp["v"], window=5, alibi_slopes=np.array([0.5, 0.25]))
    assert np.max(np.abs(got["y"] - want)) < 1e-5
    with pytest.raises(NotImplementedError, match="does not model"):
        PLAIN["random_features.linear_attention"]({**inp, "softcap": 30.0}, "float32")
    case = oracle._CASES_BY_NAME["attention.softmax_attention/basic"]
    args, results = oracle.compute(case)
    rounded = {k: oracle._round(v, "float32") for k, v in args.items()}
    _, models = oracle._plain(case, {**rounded, "softcap": 30.0}, "float32", list(results))
    assert set(models.values()) == {"plain float32"}  # every option of the family is modelled
    _, models = oracle._plain(case, rounded, "float32", list(results))
    assert set(models.values()) == {"plain float32"}
    # an option the plain algorithm did not model (here: the soft cap, taken out of the modelled ones)
    monkeypatch.setattr(_lowprec, "_ATTENTION_OPTIONS", tuple(o for o in _lowprec._ATTENTION_OPTIONS if o != "softcap"))
    _, models = oracle._plain(case, {**rounded, "softcap": 30.0}, "float32", list(results))
    assert set(models.values()) == {"rounded inputs"}


# ---- inputs= and random_inputs ---------------------------------------------------------------------


def test_inputs_list_and_defaults():
    inps = [oracle.random_inputs("attention.softmax_attention", seed=s, N=n, d=d)
            for s, (n, d) in enumerate([(65, 64), (129, 128), (33, 256)])]
    report = oracle.compare("attention.softmax_attention", attention_port, dtype="float32", inputs=inps)
    assert report.passed and [c.case for c in report.cases] == [f"attention.softmax_attention/inputs[{i}]" for i in range(3)]
    # causal omitted: refimpl's default (False) is used by the oracle and by the callable
    q = inps[0]
    report = oracle.compare("softmax_attention", lambda q, k, v: attention_port(q, k, v), dtype="bfloat16",
                            inputs={"q": q["q"], "k": q["k"], "v": q["v"]})
    assert report.passed, report.table()


def test_random_inputs_regimes():
    s = oracle.random_inputs("ssm.selective_scan", seed=0, L=100, d_in=3, n=4, batch=2)
    assert s["u"].shape == (2, 100, 3) and s["B"].shape == (2, 100, 4) and s["A"].shape == (3, 4)
    assert np.all(s["A"] < 0) and 5e-4 < np.median(s["delta"]) < 0.2
    a = oracle.random_inputs("attention.softmax_attention", seed=0, N=4097, M=300, d=128)
    assert a["q"].shape == (4097, 128) and a["k"].shape == (300, 128)
    f = oracle.random_inputs("iir.sos_filter", seed=0, N=10)
    assert f["sos"].shape == (3, 6)
    assert set(oracle.RANDOM_INPUTS) >= {"attention.softmax_attention", "random_features.linear_attention",
                                         "ssm.selective_scan", "iir.sos_filter", "linear_rnn.ssd", "attention.flash_attention"}
    for name in oracle.RANDOM_INPUTS:  # every generator gives inputs refimpl accepts, in the call's names
        inp = oracle.random_inputs(name, seed=1)
        assert not set(inp) - set(oracle._call_params(name)[0]), name
        oracle.compute(oracle._input_cases(name, inp)[0][0], args=inp)
    d = oracle.random_inputs("linear_rnn.delta_rule", seed=0, L=5, dk=3, dv=2, gated=True)
    assert np.allclose(np.linalg.norm(d["k"], axis=-1), 1) and np.all(d["log_g"] <= 0) and np.all((0 < d["beta"]) & (d["beta"] < 1))
    ssd_in = oracle.random_inputs("linear_rnn.ssd", seed=0, L=7, H=4, G=2)
    assert ssd_in["B"].shape == (2, 7, 16) and np.all(ssd_in["A"] < 0)


def _gqa_attention_port(q, k, v, causal=False, grouped_heads=False, head_of=None, **unused):
    """float32 softmax attention with grouped heads: query head h reads key/value head ``head_of(h)``."""
    q, k, v = (np.asarray(a, dtype=f32) for a in (q, k, v))
    H, H_kv = q.shape[0], k.shape[0]
    out = []
    for h in range(H):
        kh = head_of(h, H, H_kv)
        s = q[h] @ k[kh].T / f32(np.sqrt(q.shape[-1]))
        if causal:
            s = np.where(np.tril(np.ones(s.shape, dtype=bool)), s, f32(-np.inf))
        p = np.exp(s - s.max(axis=-1, keepdims=True))
        out.append((p / p.sum(axis=-1, keepdims=True)) @ v[kh])
    return np.stack(out)


def test_random_inputs_of_attention_variants():
    # the variants kernels ship, drawn at any size: grouped-query heads, a sliding window, ALiBi, soft-capping and the
    # KV-cache alignment; refimpl's own functions pass on them, and the classic grouped-query bug (query head h reading
    # key/value head h mod H_kv instead of h // G) fails
    from refimpl import attention

    a = oracle.random_inputs("attention.softmax_attention_vjp", seed=0, N=70, batch=6, kv_heads=2, window=16, alibi=True,
                             softcap=30.0, causal=True, d=8)
    assert a["q"].shape == (6, 70, 8) and a["k"].shape == a["v"].shape == (2, 70, 8) and a["dy"].shape == (6, 70, 8)
    assert a["grouped_heads"] and a["window"] == 16 and a["softcap"] == 30.0 and a["alibi_slopes"].shape == (6,)
    kv = oracle.random_inputs("attention.flash_attention", seed=0, N=40, M=90, d=8, causal=True, causal_alignment="bottom_right")
    assert kv["k"].shape == (90, 8) and kv["causal_alignment"] == "bottom_right"
    for name, inp in (("attention.softmax_attention_vjp", a), ("attention.flash_attention", kv)):
        for dtype in ("float64", "bfloat16"):
            fn = attention.softmax_attention_vjp if name.endswith("vjp") else attention.flash_attention
            assert oracle.compare(name, fn, inputs=inp, dtype=dtype).passed
    gqa = oracle.random_inputs("attention.softmax_attention", seed=1, N=130, batch=8, kv_heads=2, causal=True, d=16)
    right = functools.partial(_gqa_attention_port, head_of=lambda h, H, H_kv: h // (H // H_kv))
    wrong = functools.partial(_gqa_attention_port, head_of=lambda h, H, H_kv: h % H_kv)
    assert oracle.compare("attention.softmax_attention", right, inputs=gqa, dtype="float32").passed
    assert oracle.compare("attention.softmax_attention", wrong, inputs=gqa, dtype="float32").cases[0].status == "fail"
    for bad, match in ((dict(batch=6, kv_heads=4), "kv_heads: the 6 query heads"), (dict(kv_heads=2), "batch: kv_heads and alibi"),
                       (dict(M=300, causal=True), "causal_alignment"), (dict(softcap=-1.0), "softcap"),
                       (dict(causal_alignment="middle"), "causal_alignment: expected")):
        with pytest.raises(ValueError, match=match):
            oracle.random_inputs("attention.softmax_attention", seed=0, **bad)


def test_random_inputs_gate_normalizer_reaches_fast_forgetting():
    # GLA's normalizer τ = 16 never makes a chunk of 64 steps decay below e^-30; τ = 1 makes every chunk do so (the
    # exact path of the chunked forms). refimpl's forward and backward pass there, a gate gradient 1% off fails
    from refimpl import linear_rnn

    def chunk_decay(log_g, per_channel):  # the smallest total log-gate of a chunk of 64 steps, over channels
        g = log_g if per_channel else log_g[..., None]
        sums = g.reshape(g.shape[:-2] + (-1, 64, g.shape[-1])).sum(axis=-2)
        return sums.min(axis=-1)  # (…, chunks)

    for name, extra, per_channel in (("linear_rnn.gated_linear_attention", {}, True),
                                     ("linear_rnn.gated_linear_attention", dict(per_channel=False), False),
                                     ("linear_rnn.delta_rule", dict(gated=True), False)):
        mild = oracle.random_inputs(name, seed=2, L=1024, dk=16, dv=8, **extra)
        fast = oracle.random_inputs(name, seed=2, L=1024, dk=16, dv=8, gate_normalizer=1.0, **extra)
        assert np.all(chunk_decay(mild["log_g"], per_channel) > -30), name
        assert np.all(chunk_decay(fast["log_g"], per_channel) < -30), name
        assert np.allclose(fast["log_g"], 16 * mild["log_g"]) and np.array_equal(fast["q"], mild["q"])
    vjp = "linear_rnn.gated_linear_attention_vjp"
    inp = oracle.random_inputs(vjp, seed=4, L=1024, dk=16, dv=8, batch=2, gate_normalizer=1.0)
    assert oracle.compare("linear_rnn.gated_linear_attention", linear_rnn.gated_linear_attention,
                          inputs={k: v for k, v in inp.items() if k != "dy"}, dtype="float32").passed
    assert oracle.compare(vjp, linear_rnn.gated_linear_attention_vjp, inputs=inp, dtype="float32").passed
    off = oracle.compare(vjp, lambda **kw: {**(r := linear_rnn.gated_linear_attention_vjp(**kw)), "dlog_g": r["dlog_g"] * 1.01},
                         inputs=inp, dtype="float64").cases[0]
    assert off.status == "fail" and off.first_failure == "dlog_g"


@pytest.mark.parametrize("name, sizes, grad", [
    ("linear_rnn.ssd_vjp", dict(L=300, H=4, G=2, P=8, N=8, chunk_size=32), "dB"),
    ("linear_rnn.gated_linear_attention_vjp", dict(L=300, dk=16, dv=8, batch=2), "dlog_g"),
    ("linear_rnn.retention_vjp", dict(L=300, H=3, dk=16, dv=8), "dk"),
    ("linear_rnn.delta_rule_vjp", dict(L=300, dk=16, dv=8, gated=True), "dbeta"),
    ("random_features.linear_attention_vjp", dict(N=300, d=8, batch=2), "dv"),
    ("ssm.selective_scan_vjp", dict(L=300, d_in=4, n=8), "dA"),
])
def test_random_inputs_of_the_backward_passes(name, sizes, grad):
    # the forward function's inputs (same seed and sizes) plus a cotangent of the output's shape; refimpl's
    # own backward pass passes on them, in float64 and in bfloat16, and a gradient 1% (25%) off fails there
    from refimpl._golden._base import resolve

    inp = oracle.random_inputs(name, seed=3, **sizes)
    forward = oracle.random_inputs(name.removesuffix("_vjp"), seed=3, **sizes)
    assert inp.keys() == forward.keys() | {"dy"}
    assert all(np.array_equal(inp[k], v) if isinstance(v, np.ndarray) else inp[k] == v for k, v in forward.items())
    y = resolve(name.removesuffix("_vjp"))(**forward)
    assert inp["dy"].shape == (y[0] if isinstance(y, tuple) else y).shape
    vjp = resolve(name)

    def off(factor):  # refimpl's gradients (a tuple or a dict), one of them off by a factor
        def run(**kw):
            res = vjp(**kw)
            named = res if isinstance(res, dict) else dict(zip(oracle.FUNCTIONS[name].outputs, res))
            return {n: g * factor if n == grad else g for n, g in named.items()}

        return run

    for dtype, factor in (("float64", 1.01), ("bfloat16", 1.25)):  # bfloat16's ε is 2^-7 ≈ 0.8%
        assert oracle.compare(name, vjp, inputs=inp, dtype=dtype).passed
        bad = oracle.compare(name, off(factor), inputs=inp, dtype=dtype).cases[0]
        assert bad.status == "fail" and bad.first_failure == grad


def test_random_inputs_of_selective_scan_fn():
    # mamba_ssm's layout of the selective scan's draw: the same u, A, B, C, D, and the same Δ distribution reached
    # through the raw delta, its bias and the softplus; refimpl passes in bfloat16, a softplus threshold of 0
    # instead of 20 (a kernel bug) fails in float32
    from refimpl import ssm

    inp = oracle.random_inputs("ssm.selective_scan_fn", seed=5, L=300, d_in=4, n=8, batch=2, gated=True)
    base = oracle.random_inputs("ssm.selective_scan", seed=5, L=300, d_in=4, n=8, batch=2)
    assert np.array_equal(inp["u"], np.swapaxes(base["u"], 1, 2)) and np.array_equal(inp["B"], np.swapaxes(base["B"], 1, 2))
    assert np.array_equal(inp["A"], base["A"]) and inp["delta_softplus"] is True and inp["z"].shape == (2, 4, 300)
    step = np.logaddexp(0.0, inp["delta"] + inp["delta_bias"][:, None])
    assert 5e-4 < np.median(step) < 0.2
    assert "z" not in oracle.random_inputs("ssm.selective_scan_fn", seed=5, L=30)
    assert oracle.compare("ssm.selective_scan_fn", ssm.selective_scan_fn, inputs=inp, dtype="bfloat16").passed

    def threshold0(**kw):  # softplus applied only below 0 (the identity above): a wrong threshold
        raw = kw["delta"] + kw["delta_bias"][:, None]
        kw = dict(kw, delta=np.where(raw <= 0, np.logaddexp(0.0, raw), raw) - kw["delta_bias"][:, None], delta_softplus=False)
        return ssm.selective_scan_fn(**kw).astype(f32)

    inp["delta"] = inp["delta"] + 8.0  # some raw steps above 0
    assert not oracle.compare("ssm.selective_scan_fn", threshold0, inputs=inp, dtype="float32").passed
    with pytest.raises(ValueError, match=r"sizes: unknown \['width'\]"):
        oracle.random_inputs("ssm.selective_scan_fn", seed=0, width=3)
    grouped = oracle.random_inputs("ssm.selective_scan_fn", seed=5, L=50, d_in=4, n=8, groups=2)
    assert grouped["B"].shape == grouped["C"].shape == (1, 2, 8, 50) and ssm.selective_scan_fn(**grouped).shape == (1, 4, 50)
    with pytest.raises(ValueError, match="^groups: expected a divisor of d_in = 4"):
        oracle.random_inputs("ssm.selective_scan_fn", seed=0, d_in=4, groups=3)
    with pytest.raises(ValueError, match=r"sizes: unknown \['chunk_size'\] for linear_rnn.chunk_gla"):
        oracle.random_inputs("linear_rnn.chunk_gla", seed=0, chunk_size=128)  # fla's kernels: chunks of 64


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(name="lyapunov.phi1"), ValueError, "name: random_inputs supports"),
    (dict(name="ssm.selective_scan", L=10, width=3), ValueError, r"sizes: unknown \['width'\]"),
    (dict(name="ssm.selective_scan", L=0), ValueError, "L: expected a positive int"),
    (dict(name="ssm.selective_scan", L=2.5), ValueError, "L: expected a positive int"),
    (dict(name="ssm.selective_scan", discretization="euler"), ValueError, "discretization"),
    (dict(name="attention.softmax_attention", causal="yes"), TypeError, "causal: expected a bool"),
    (dict(name="iir.sos_filter", order=5), ValueError, "order: expected an even order"),
    (dict(name="linear_rnn.ssd_vjp", width=3), ValueError, r"sizes: unknown \['width'\] for linear_rnn.ssd_vjp \(those of linear_rnn.ssd\)"),
    (dict(name="ssm.selective_scan_vjp", L=-1), ValueError, "L: expected a positive int"),
    (dict(name="linear_rnn.gated_linear_attention", gate_normalizer=0.0), ValueError, "gate_normalizer"),
    (dict(name="linear_rnn.gated_linear_attention_vjp", gate_normalizer=float("nan")), ValueError, "gate_normalizer"),
    (dict(name="linear_rnn.delta_rule", gate_normalizer=2.0), ValueError, "gate_normalizer: the delta rule has gates only"),
])
def test_random_inputs_bad(kwargs, exc, match):
    name = kwargs.pop("name")
    with pytest.raises(exc, match=match):
        oracle.random_inputs(name, seed=0, **kwargs)
    with pytest.raises(TypeError, match="seed"):
        oracle.random_inputs("ssm.selective_scan", seed=1.5)


def _small_attn():
    return oracle.random_inputs("attention.softmax_attention", seed=0, N=8, d=4)


@pytest.mark.parametrize("bad, match", [
    (lambda i: {k: v for k, v in i.items() if k != "k"}, r"inputs\[0\]: missing keys \['k'\]"),
    (lambda i: {**i, "temperature": 2.0}, r"inputs\[0\]: unknown keys \['temperature'\]"),
])
def test_inputs_with_missing_or_extra_keys(bad, match):
    with pytest.raises(ValueError, match=match):
        oracle.compare("attention.softmax_attention", attention_port, dtype="float32", inputs=bad(_small_attn()))


def test_inputs_bad_containers():
    with pytest.raises(TypeError, match="inputs: expected a dict or a list of dicts"):
        oracle.compare("attention.softmax_attention", attention_port, inputs=3)
    with pytest.raises(TypeError, match=r"inputs\[1\]: expected a dict"):
        oracle.compare("attention.softmax_attention", attention_port, inputs=[_small_attn(), "q"])
    with pytest.raises(ValueError, match="inputs: give either inputs or cases"):
        oracle.compare("attention.softmax_attention", attention_port, inputs=_small_attn(), cases="basic")
    with pytest.raises(ValueError, match="inputs: empty"):
        oracle.compare("attention.softmax_attention", attention_port, inputs=[])


def test_inputs_refimpl_rejects_is_a_per_case_error():
    i = _small_attn()
    report = oracle.compare("attention.softmax_attention", attention_port, dtype="float32",
                            inputs=[i, {**i, "v": i["v"][:5]}])
    assert report.cases[0].passed
    assert report.cases[1].status == "error" and "refimpl rejects the inputs (ValueError" in report.cases[1].message
    assert "refimpl rejects" in report.table()


@pytest.mark.parametrize("fn, message", [
    (lambda **kw: attention_port(**kw)[:-1], "shape (7, 4) != expected (8, 4)"),
    (lambda **kw: attention_port(**kw).astype(np.complex64), "is complex, expected real"),
    (lambda **kw: attention_port(**kw).astype(str), "is not numeric"),
    (lambda **kw: (attention_port(**kw), 1), "returned a tuple of 2 items"),
])
def test_wrong_return_values_are_reported_per_case(fn, message):
    for dtype in ("float32", "bfloat16"):
        report = oracle.compare("attention.softmax_attention", fn, dtype=dtype, inputs=_small_attn())
        case = report.cases[0]
        assert not case.passed and (message in case.message or any(message in q.message for q in case.quantities))


# ---- golden vectors, format version 2 ----------------------------------------------------------------

V2_CASES = ["attention.softmax_attention/basic", "ssm.selective_scan/mamba", "iir.sos_filter/cheby1_near_unit_circle",
            "lyapunov.phi1/near_zero", "afa.isotropic_afa/causal_student"]


@pytest.fixture(scope="module")
def v2_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("v2")
    return d, oracle.export(d, cases=V2_CASES)


def test_v2_manifest_stores_plain_references_and_bounds(v2_dir):
    d, manifest = v2_dir
    assert manifest["format_version"] == 2 and "low_precision" in manifest["tolerance_policy"]
    entries = {e["name"]: e for e in manifest["cases"]}
    attn = entries["attention.softmax_attention/basic"]["low_precision"]
    assert set(attn) == {"float32", "tf32", "float16", "bfloat16"}
    assert attn["float16"]["y"]["model"] == "plain float16" and attn["float32"]["A"]["ulps"] == 4.0
    assert entries["lyapunov.phi1/near_zero"]["low_precision"]["float32"]["phi"]["model"] == "rounded inputs"
    g = oracle.load_case(d, "attention.softmax_attention/basic")
    assert g.plain["float16"]["y"].dtype == np.float16 and g.plain["bfloat16"]["y"].dtype == np.float32
    for tier, qs in attn.items():
        for name, q in qs.items():
            assert q["bound"] == 2 * max(q["plain_error"], q["ulps"] * q["eps"])
    assert oracle.verify(d).ok


def test_v2_rule_applies_from_the_files_alone(v2_dir):
    d, manifest = v2_dir
    import json
    import zipfile

    entry = next(e for e in json.loads((d / "manifest.json").read_text())["cases"] if e["name"] == "attention.softmax_attention/basic")
    with np.load(d / entry["file"], allow_pickle=False) as z:
        args = {k[4:]: z[k] for k in z.files if k.startswith("arg.")}
        y_ref = z["out.y"]
    q32 = entry["low_precision"]["float32"]["y"]
    y = attention_port(args["q"].astype(f32), args["k"].astype(f32), args["v"].astype(f32), bool(args["causal"]))
    e = np.max(np.abs(y - y_ref)) / np.max(np.abs(y_ref))
    report = oracle.compare("attention.softmax_attention", attention_port, dtype="float32", vectors=d, cases="basic")
    assert (e <= q32["bound"]) == report.passed
    assert report.cases[0].quantities[-1].model == "plain float32 (stored)"
    assert zipfile.is_zipfile(d / entry["file"])


def test_v2_verify_catches_an_edited_bound(v2_dir, tmp_path):
    import json
    import shutil

    d, _ = v2_dir
    copy = tmp_path / "v2copy"
    shutil.copytree(d, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["cases"][0]["low_precision"]["float32"]["y"]["bound"] *= 10
    (copy / "manifest.json").write_text(json.dumps(m))
    report = oracle.verify(copy)
    assert not report.ok and "differ from the manifest" in str(report)


def test_version_1_still_written_and_read(tmp_path):
    m = oracle.export(tmp_path, cases=V2_CASES[:2], format_version=1)
    assert m["format_version"] == 1 and "low_precision" not in m["cases"][0]
    assert oracle.verify(tmp_path).ok
    report = oracle.compare("attention.softmax_attention", attention_port, dtype="float32", vectors=tmp_path, cases="basic")
    assert report.passed and report.cases[0].quantities[-1].model == "plain float32"
    with pytest.raises(ValueError, match="format_version"):
        oracle.export(tmp_path, cases=V2_CASES[:1], format_version=3)


def test_public_names_of_the_tiers():
    assert oracle.TIERS == TIERS and oracle.round_to is round_to
    assert [oracle.tier_eps(t) for t in ("float32", "bfloat16")] == [2.0 ** -23, 2.0 ** -7]
    assert oracle.plain_functions() == [
        "attention.flash_attention", "attention.flash_attn_func", "attention.flash_attn_func_vjp",
        "attention.flash_attn_varlen_func", "attention.flash_attn_varlen_func_vjp", "attention.softmax_attention",
        "attention.softmax_attention_vjp", "iir.biquad_filter", "iir.sos_filter", "iir.tf_filter",
        "linear_rnn.chunk_delta_rule", "linear_rnn.chunk_delta_rule_vjp", "linear_rnn.chunk_gated_delta_rule",
        "linear_rnn.chunk_gated_delta_rule_vjp", "linear_rnn.chunk_gla", "linear_rnn.chunk_gla_vjp",
        "linear_rnn.chunk_simple_gla", "linear_rnn.chunk_simple_gla_vjp",
        "linear_rnn.delta_rule", "linear_rnn.delta_rule_vjp", "linear_rnn.gated_linear_attention",
        "linear_rnn.gated_linear_attention_vjp", "linear_rnn.mamba_chunk_scan_combined",
        "linear_rnn.mamba_chunk_scan_combined_vjp", "linear_rnn.retention", "linear_rnn.retention_vjp", "linear_rnn.ssd",
        "linear_rnn.ssd_vjp",
        "random_features.linear_attention", "random_features.linear_attention_vjp", "random_features.performer_attention",
        "random_features.rfa_attention", "ssm.selective_scan", "ssm.selective_scan_fn", "ssm.selective_scan_fn_vjp",
        "ssm.selective_scan_vjp", "ssm.selective_state_update"]


#: how far the plain attention in blocks of rows (each against its range of keys) may differ from the plain attention
#: in one block: its float32 sums over the keys (and, backwards, over the rows) have fewer terms, or other shapes, and
#: may round otherwise, which moves some stored values by a unit of the tier (norm-wise: a fraction of one);
#: in float32 the differences stay at float32's rounding (the backward pass's dS = P (dP − D) cancels: a few bits)
_BLOCKED_PLAIN_TOL = {"bfloat16": 2.0**-8, "float16": 2.0**-11, "tf32": 2.0**-11, "float32": 2.0**-20}


def _plain_attention_problem(seed=0, n=700, m=700):
    rng = np.random.default_rng(seed)
    q, dy = rng.standard_normal((2, 2, n, 16))
    k, v = rng.standard_normal((2, 2, m, 16))
    mask = rng.random((n, m)) < 0.8
    mask[:, 0] = True
    return q, k, v, dy, mask


@pytest.mark.parametrize("tier, rounding", [("bfloat16", "rne"), ("float16", "rne"), ("tf32", "rne"), ("tf32", "truncate"),
                                            ("float32", "rne")])
@pytest.mark.parametrize("by_entry", [False, True])
@pytest.mark.parametrize("block_logits", [1 << 21, 50_000])
@pytest.mark.parametrize("causal_alignment, m", [("top_left", 700), ("bottom_right", 900), ("bottom_right", 500)])
def test_blocked_plain_softmax_equals_the_full_one(monkeypatch, tier, rounding, by_entry, block_logits, causal_alignment, m):
    # without the weights the plain reference runs in blocks of query rows (all heads at once, or head by head
    # when large), each block against the keys its rows may see, the keys and values rounded once for all blocks:
    # in one block the same arithmetic, bit for bit; in several, the same up to the rounding of sums of fewer
    # terms (_BLOCKED_PLAIN_TOL). The backward pass likewise, dK and dV accumulated over the blocks.
    import refimpl._lowprec as lp
    from refimpl._precision import tf32_rounding

    # bottom right with 900 keys: every row sees the first ones; with 500, the first 200 rows see no key (P = 0, y = 0,
    # ℓ = −∞: blocks of empty rows)
    q, k, v, dy, mask = _plain_attention_problem(n=700, m=m)
    kw = dict(mask=mask, causal=True, window=300, alibi_slopes=np.array([0.1, 0.2]), causal_alignment=causal_alignment,
              tier=tier)
    with tf32_rounding(rounding):
        full = lp.softmax_attention(q, k, v, **kw)
        full_grads = lp.softmax_attention_vjp(q, k, v, dy, **kw)
        monkeypatch.setattr(lp, "_ENTRY_LOGITS", 0 if by_entry else 1 << 60)
        monkeypatch.setattr(lp, "_BLOCK_LOGITS", block_logits)  # 50 000: blocks of 71 (35) rows
        blocked = lp.softmax_attention(q, k, v, **kw, weights=False)
        blocked_grads = lp.softmax_attention_vjp(q, k, v, dy, **kw)
    assert "A" not in blocked
    pairs = [(blocked[n], full[n], n) for n in ("y", "lse")]
    pairs += [(blocked_grads[n], full_grads[n], n) for n in ("dq", "dk", "dv", "lse", "D")]
    for got, want, n in pairs:
        assert got.dtype == want.dtype and got.shape == want.shape, n
        if block_logits == 1 << 21 and not by_entry:  # one block of all 700 rows, all heads at once
            assert np.array_equal(got, want), n
        else:
            assert rel_error(got, want) <= _BLOCKED_PLAIN_TOL[tier], (n, rel_error(got, want))


@pytest.mark.parametrize("tier", ["bfloat16", "float16", "tf32", "float32"])
@pytest.mark.parametrize("causal", [False, True])
def test_blocked_plain_linear_attention_vjp_equals_one_block(monkeypatch, tier, causal):
    # the plain backward pass of linear attention runs in blocks of query rows (causal: each against the keys up to
    # its last row), dφ(k) and dv accumulated over the blocks: the gradients of one block up to the rounding of
    # float32 sums of fewer terms (_BLOCKED_PLAIN_TOL); one block (the default at this size) is the unblocked form
    import refimpl._lowprec as lp

    rng = np.random.default_rng(6)
    q, k, v, dy = rng.standard_normal((4, 2, 300, 8))
    one = lp.linear_attention_vjp(q, k, v, dy, causal=causal, tier=tier)
    monkeypatch.setattr(lp, "_LINEAR_BLOCK_WEIGHTS", 2 * 300 * 37)  # blocks of 37 rows
    blocked = lp.linear_attention_vjp(q, k, v, dy, causal=causal, tier=tier)
    for n in ("dq", "dk", "dv"):
        assert blocked[n].dtype == one[n].dtype and blocked[n].shape == one[n].shape, n
        assert rel_error(blocked[n], one[n]) <= _BLOCKED_PLAIN_TOL[tier], (n, rel_error(blocked[n], one[n]))


@pytest.mark.parametrize("discretization", ["mamba", "zoh"])
def test_plain_selective_scan_vjp_in_blocks_of_steps_gives_the_same_bits(monkeypatch, discretization):
    # the plain backward pass of the selective scan forms its (…, L, d, n) quantities block by block of steps: every
    # one is elementwise in its step, reduced within its step, or summed over time in one sequential order, so the
    # gradients are bitwise those of one block holding the whole sequence (blocks of 7 steps: 43 of them, the last
    # one short; a pure integrator A = 0 and a slow mode for ZOH's series branch)
    import refimpl._lowprec as lp

    rng = np.random.default_rng(11)
    L, d, n = 300, 3, 4
    u, dy = rng.standard_normal((2, 2, L, d))
    delta = rng.uniform(0.01, 0.5, (2, L, d))
    A = -np.exp(rng.standard_normal((d, n)))
    A[0, 0], A[1, 1] = 0.0, -1e-5
    B, C = rng.standard_normal((2, L, n))  # shared by the batch: their gradients are summed over it
    for D in (None, 0.5, rng.standard_normal(d)):
        monkeypatch.setattr(lp, "_TIME_BLOCK", L)
        one = lp.selective_scan_vjp(u, delta, A, B, C, D, dy, discretization, tier="float32")
        monkeypatch.setattr(lp, "_TIME_BLOCK", 7)
        blocked = lp.selective_scan_vjp(u, delta, A, B, C, D, dy, discretization, tier="float32")
        assert list(blocked) == ["du", "ddelta", "dA", "dB", "dC", "dD"]
        for name, value in one.items():
            assert blocked[name].dtype == value.dtype and blocked[name].shape == value.shape, name
            assert np.array_equal(blocked[name].view(np.uint32), value.view(np.uint32)), name


def test_plain_step_loops_give_the_same_bits_with_their_heads_in_threads(monkeypatch):
    # the plain recurrences (GLA, SSD, the delta rule; forwards and backwards) share their batch entries out between
    # threads when the states are large (_HEAD_THREADS_FLOATS): every entry is the same operations either way
    import refimpl._lowprec as lp

    rng = np.random.default_rng(9)
    B, H, L, dk, dv = 2, 3, 37, 8, 6
    q, k = rng.standard_normal((2, B, H, L, dk))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v, dy = rng.standard_normal((2, B, H, L, dv))
    log_g = np.log(rng.uniform(0.5, 1.0, (B, H, L, dk)))
    beta, gate = rng.uniform(0.1, 1.0, (B, H, L)), np.log(rng.uniform(0.5, 1.0, (1, H, L)))  # a gate per head, broadcast
    S0, dS = rng.standard_normal((2, B, H, dv, dk))
    calls = [
        lambda: lp.gated_linear_attention(q, k, v, log_g, chunk_size=16, initial_state=S0, tier="bfloat16"),
        lambda: lp.gated_linear_attention_vjp(q, k, v, log_g, dy, initial_state=S0, dfinal_state=dS, tier="bfloat16"),
        lambda: lp.gated_linear_attention_vjp(q, k, v, gate, dy, tier="tf32"),
        lambda: lp.delta_rule(q, k, v, beta, log_g=gate, chunk_size=10, initial_state=S0, tier="float16"),
        lambda: lp.delta_rule_vjp(q, k, v, beta, dy, log_g=gate, initial_state=S0, dfinal_state=dS, tier="bfloat16"),
        lambda: lp.delta_rule_vjp(q[:1], k, v[0], beta, dy, tier="float32"),  # broadcast batch entries
    ]
    monkeypatch.setattr(lp, "_HEAD_THREADS_FLOATS", 1 << 60)
    one = [c() for c in calls]
    monkeypatch.setattr(lp, "_HEAD_THREADS_FLOATS", 0)
    monkeypatch.setattr(lp._blocking, "THREADS", 2)
    for i, (c, want) in enumerate(zip(calls, one)):
        got = c()
        assert sorted(got) == sorted(want), i
        for n in want:
            assert got[n].shape == want[n].shape and np.array_equal(got[n], want[n]), (i, n)


@pytest.mark.parametrize("tier", ["bfloat16", "float32"])
def test_blocked_plain_softmax_with_flashattention_column_bias(monkeypatch, tier):
    # FlashAttention-2's causal path with ALiBi adds slope·j (the key's column, _ALIBI_COLUMN): a block that reads the
    # keys from k0 on must bias them by their own columns, not by their places in the block
    import refimpl._lowprec as lp

    q, k, v, dy, _ = _plain_attention_problem(seed=2, n=600, m=600)
    kw = dict(causal=True, window=250, alibi_slopes=np.array([0.3, 0.7]), causal_alignment="bottom_right", tier=tier)
    token = lp._ALIBI_COLUMN.set(True)
    try:
        full, full_grads = lp.softmax_attention(q, k, v, **kw), lp.softmax_attention_vjp(q, k, v, dy, **kw)
        monkeypatch.setattr(lp, "_BLOCK_LOGITS", 30_000)  # blocks of 25 rows, keys from k0 = r0 − 249 on
        blocked, blocked_grads = lp.softmax_attention(q, k, v, **kw, weights=False), lp.softmax_attention_vjp(q, k, v, dy, **kw)
    finally:
        lp._ALIBI_COLUMN.reset(token)
    # the biased logits reach slope·j ≈ 400 here, whose float32 ulp (3e-5) the recomputed P = e^{s − ℓ} carries: in
    # float32 a few units of that, not of float32's own epsilon
    tol = 2.0**-16 if tier == "float32" else _BLOCKED_PLAIN_TOL[tier]
    for got, want, n in [(blocked[n], full[n], n) for n in ("y", "lse")] + [
            (blocked_grads[n], full_grads[n], n) for n in ("dq", "dk", "dv", "lse", "D")]:
        assert rel_error(got, want) <= tol, (n, rel_error(got, want))


def test_key_range_keeps_every_key_a_row_of_the_block_may_see():
    # _key_range cuts the keys of a block of rows to [k0, k1), never empty: every (row, key) pair the causal mask, the
    # window and the mask allow lies inside, at any alignment
    from refimpl._lowprec import _geometry, _key_range

    rng = np.random.default_rng(3)
    cut = 0
    for _ in range(400):
        n, m = (int(x) for x in rng.integers(1, 60, 2))
        causal, window = bool(rng.random() < 0.7), (int(rng.integers(1, 40)) if rng.random() < 0.6 else None)
        offset = int(rng.choice([0, m - n, int(rng.integers(-20, 20))]))
        mask = rng.random((n, m)) < rng.choice([0.05, 0.5, 1.0]) if rng.random() < 0.5 else None
        r0 = int(rng.integers(0, n))
        r1 = int(rng.integers(r0 + 1, n + 1))
        allowed, _ = _geometry(r1 - r0, m, r0, causal, window, False, offset)
        mk = None if mask is None else mask[r0:r1]
        if mk is not None:
            allowed = allowed & mk
        k0, k1 = _key_range(r0, r1, m, causal, window, offset, mk)
        assert 0 <= k0 < k1 <= m
        cols = np.flatnonzero(allowed.any(axis=0))
        if cols.size:
            assert k0 <= cols[0] and cols[-1] < k1, (n, m, causal, window, offset, r0, r1, k0, k1)
            cut += (k0, k1) != (0, m)
    assert cut > 100  # the ranges do cut


@pytest.mark.parametrize("tier, rounding", [("bfloat16", "rne"), ("float16", "rne"), ("float32", "rne"), ("tf32", "rne"),
                                            ("tf32", "truncate")])
def test_matmul_of_operands_rounded_once_is_the_same(tier, rounding):
    # an input already rounded as matmul rounds it (operand), or a value stored in a tier whose storage grid is
    # that of the products' inputs, is not rounded again: the result is bit for bit that of rounding it inside
    from refimpl._precision import operand, stored_is_operand, tf32_rounding

    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((30, 70)), rng.standard_normal((70, 20)).T.copy().T  # b: a transposed layout
    with tf32_rounding(rounding):
        want = matmul(a, b, tier)
        for on_grid in ((True, False), (False, True), (True, True)):
            x, y = (operand(m, tier) if done else m for m, done in zip((a, b), on_grid))
            got = matmul(x, y, tier, on_grid=on_grid)
            assert got.dtype == want.dtype and np.array_equal(got, want), on_grid
        sa = store(a, tier)
        assert stored_is_operand(tier) == (tier != "tf32")
        if stored_is_operand(tier):
            assert np.array_equal(matmul(sa, b, tier, on_grid=(True, False)), matmul(sa, b, tier))
        else:  # tf32 stores float32: its products still round the stored value to 10 mantissa bits
            assert not np.array_equal(operand(sa, tier), sa)


@pytest.mark.parametrize("rounding", ["rne", "rna", "truncate"])
def test_float32_rounding_in_threads_or_not_is_the_same(monkeypatch, rounding):
    # _round_bits32 shares its blocks out between threads from _ROUND32_THREADS numbers on, else runs them in the
    # calling thread: the same integer operations on every number, whatever the layout
    from refimpl import _precision as pr

    rng = np.random.default_rng(8)
    n = 3 * pr._ROUND_BLOCK + 1234
    x = (rng.standard_normal(n) * 10.0 ** rng.integers(-40, 38, n)).clip(-3e38, 3e38).astype(np.float32)
    x[:: pr._ROUND_BLOCK // 3] = np.nan
    for view in (x, x.reshape(-1, 2)[:, ::-1] if n % 2 == 0 else x[::3], x[:-1234].reshape(-1, 64).T):
        serial = pr._round_bits32(view, 7, rounding)
        monkeypatch.setattr(pr, "_ROUND32_THREADS", 0)
        threaded = pr._round_bits32(view, 7, rounding)
        monkeypatch.setattr(pr, "_ROUND32_THREADS", 1 << 23)
        assert serial.shape == view.shape and np.array_equal(serial, threaded, equal_nan=True)
        assert np.array_equal(serial.view(np.uint32), threaded.view(np.uint32))


def test_float64_rounding_in_blocks_equals_the_whole_array():
    # round_to of float64 values (bfloat16, tf32 and float16's grid) runs on blocks of _ROUND_BLOCK numbers in threads:
    # the same operations number by number as on the whole array, whatever the layout
    from refimpl import _precision as pr

    rng = np.random.default_rng(5)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324, 1e-40, -1e-45, 2.0**-126, 2.0**-133,
                         3.4e38, 3.5e38, -3.39e38, 65504.0, 65520.0, 6e-8, 3e-8, 1 + 2.0**-8, 1 + 3 * 2.0**-8])
    n = 17 * (3 * pr._ROUND_BLOCK // 17 + 2)  # three blocks and a part of one, 17 columns
    x = rng.standard_normal(n) * 10.0 ** rng.integers(-45, 39, n)
    x[np.arange(specials.size) * (pr._ROUND_BLOCK // 7)] = specials  # specials in every block, at its edges too
    x[pr._ROUND_BLOCK - 2 : pr._ROUND_BLOCK + 2] = specials[:4]
    for fmt in ((7, -126, 127), (10, -126, 127), (10, -14, 15)):  # bfloat16, tf32, float16
        whole = pr._round_bits_flat(x, *fmt)
        for view, ref in ((x, whole), (x.reshape(-1, 17)[:, ::2], whole.reshape(-1, 17)[:, ::2]),
                          (x.reshape(17, -1).T, whole.reshape(17, -1).T), (x[5:6].reshape(()), whole[5:6].reshape(()))):
            got = pr._round_bits(view, *fmt)
            assert got.shape == view.shape and np.array_equal(got.view(np.uint64), ref.view(np.uint64)), fmt


@pytest.mark.parametrize("tier", ["bfloat16", "float16", "tf32"])
@pytest.mark.parametrize(
    "q_batch, k_batch, mask_kind, alibi",
    [((3,), (3,), None, False), ((2, 3), (3,), "batched", True), ((2, 1), (1, 3), "2d", True), ((3,), (), "rows", False)],
)
def test_plain_attention_head_by_head_equals_the_whole_batch(monkeypatch, tier, q_batch, k_batch, mask_kind, alibi):
    # large problems run the plain references one batch entry at a time: the same arithmetic, bit for bit,
    # with broadcast heads, masks (per entry, shared, one row for all) and ALiBi slopes per head
    import refimpl._lowprec as lp

    rng = np.random.default_rng(1)
    n, m, d = 9, 12, 4
    batch = np.broadcast_shapes(q_batch, k_batch)
    q, dy = rng.standard_normal((2,) + q_batch + (n, d))
    k, v = rng.standard_normal((2,) + k_batch + (m, d))
    mask = {None: None, "batched": rng.random(batch + (n, m)) < 0.8, "2d": rng.random((n, m)) < 0.8,
            "rows": rng.random((1, m)) < 0.8}[mask_kind]
    if mask is not None:
        mask[..., 0] = True
    kw = dict(mask=mask, causal=True, scale=0.6, window=7, tier=tier,
              alibi_slopes=rng.uniform(0.1, 1.0, batch[-1:]) if alibi else None)
    runs = []
    for threshold in (1 << 60, 0):  # the whole batch at once, then entry by entry
        monkeypatch.setattr(lp, "_ENTRY_LOGITS", threshold)
        runs.append({**lp.softmax_attention(q, k, v, **kw), **lp.softmax_attention_vjp(q, k, v, dy, **kw)})
    whole, by_entry = runs
    assert whole.keys() == by_entry.keys() == {"A", "y", "lse", "dq", "dk", "dv", "D"}
    for name in whole:
        a, b = whole[name], by_entry[name]
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True), name
    assert by_entry["dk"].shape == k.shape  # summed over the broadcast query heads


def test_plain_attention_rows_without_keys_are_zero():
    # a sliding window or a bottom-right causal mask can leave a query with no key: refimpl (and FlashAttention's
    # kernels) give y = 0 and lse = -inf there; so does the plain reference (it gave 0/0 = NaN, and refimpl's own
    # function then failed its bfloat16 comparison: "entries overflow bfloat16, but not in the returned values")
    import refimpl._lowprec as lp
    from refimpl import attention

    rng = np.random.default_rng(4)
    q, dy = rng.standard_normal((2, 2, 17, 4))
    k, v = rng.standard_normal((2, 2, 6, 4))
    kw = dict(causal=True, tier="bfloat16")  # top-left causal with M = 6 < N = 17 is fine; window 1 and M < N leave rows
    out = lp.softmax_attention(q, k, v, window=1, **kw)
    empty = np.arange(17) >= 6  # query i may only see key i
    assert np.all(out["y"][:, empty] == 0) and np.all(out["A"][:, empty] == 0) and np.all(out["lse"][:, empty] == -np.inf)
    assert np.isfinite(out["y"]).all() and np.isfinite(out["lse"][:, ~empty]).all()
    grads = lp.softmax_attention_vjp(q, k, v, dy, window=1, **kw)
    assert all(np.isfinite(grads[g]).all() for g in ("dq", "dk", "dv", "D")) and np.all(grads["dq"][:, empty] == 0)
    assert np.all(grads["lse"][:, empty] == -np.inf) and np.all(grads["D"][:, empty] == 0)
    for name, fn in (("attention.softmax_attention", attention.softmax_attention),
                     ("attention.softmax_attention_vjp", attention.softmax_attention_vjp)):
        for sizes in (dict(N=17, M=1, window=1), dict(N=130, M=129, window=1), dict(N=40, M=30, causal=True,
                                                                                    causal_alignment="bottom_right")):
            inp = oracle.random_inputs(name, seed=2, d=4, **sizes)
            assert oracle.compare(name, fn, inputs=inp, dtype="bfloat16").passed, (name, sizes)


@pytest.mark.parametrize("tier", ["bfloat16", "tf32"])
def test_rounding_from_float32_on_any_memory_layout(tier):
    # the blocked bit rounding works on the array's memory order: transposed, reversed, strided and
    # float16 inputs round like a C-contiguous float32 copy (the formula on the bits, written out here)
    bits = FORMATS[tier][0]
    rng = np.random.default_rng(2)
    base = (rng.standard_normal((4, 30, 50)) * 10.0 ** rng.integers(-40, 39, (4, 30, 50))).astype(f32)
    raw = base.reshape(-1).view(np.uint32)
    raw[::97] = rng.integers(0x7F800001, 0x80000000, raw[::97].size, dtype=np.uint64)  # NaNs with any payload
    raw[5], raw[6], raw[7] = 0x7F7FFFFF, 0x00000001, 0xFFFFFFFF  # largest finite, smallest subnormal, a NaN
    drop = 23 - bits

    def expected(x):
        x = np.array(x, dtype=f32, order="C")  # a C-contiguous copy (0-d stays 0-d)
        u = x.view(np.uint32).astype(np.uint64)
        r = ((u + (1 << (drop - 1)) - 1 + ((u >> drop) & 1)) & ~np.uint64((1 << drop) - 1)) & 0xFFFFFFFF
        return np.where(np.isnan(x), x, r.astype(np.uint32).view(f32))

    views = [base, np.swapaxes(base, -1, -2), base[:, ::-1], np.swapaxes(base[::-1], 0, 2), base[:, 3:29:2, ::3],
             rng.standard_normal((5, 40)).astype(np.float16)[:, ::2], base[0, 0, 0]]
    for x in views:
        got, want = round_to(x, tier), expected(x)
        assert got.dtype == f32 and got.shape == np.shape(x)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bad_callables_on_inputs_are_reported_per_case(dtype):
    i = _small_attn()
    nan = oracle.compare("attention.softmax_attention", lambda **kw: np.full((8, 4), np.nan, np.float32), dtype=dtype, inputs=i)
    assert nan.cases[0].status == "fail" and nan.cases[0].quantities[0].rel_error == np.inf
    boom = oracle.compare("attention.softmax_attention", lambda **kw: 1 / 0, dtype=dtype, inputs=[i, i])
    assert [c.status for c in boom.cases] == ["error", "error"] and "raised ZeroDivisionError" in boom.cases[0].message
    # the callable raises on inputs refimpl rejects too: the report says the inputs are at fault
    short = oracle.compare("attention.softmax_attention", lambda **kw: 1 / 0, dtype=dtype, inputs={**i, "v": i["v"][:5]})
    assert short.cases[0].message.startswith("refimpl rejects the inputs (ValueError")
    # an intermediate returned by name is judged (lse of FlashAttention), an unknown name is reported
    f = oracle.random_inputs("attention.flash_attention", seed=0, N=20, d=8, block_k=8)
    rep = oracle.compare("attention.flash_attention", lambda **kw: {**flash_port(**kw), "junk": 1}, dtype=dtype, inputs=f)
    assert rep.passed and [q.name for q in rep.cases[0].quantities] == ["lse", "y"]
    assert "ignored unknown names ['junk']" in rep.cases[0].message


def test_window_and_alibi_reach_the_oracle_and_the_plain_reference():
    from refimpl import attention

    inp = {**oracle.random_inputs("attention.softmax_attention", seed=3, N=50, d=8, batch=2), "window": 7,
           "alibi_slopes": np.array([0.5, 0.25])}

    def kernel(q, k, v, causal, window, alibi_slopes):
        return attention.softmax_attention(q, k, v, causal=causal, window=window, alibi_slopes=alibi_slopes).astype(f32)

    report = oracle.compare("attention.softmax_attention", kernel, dtype="float32", inputs=inp)
    assert report.passed and report.cases[0].quantities[0].model == "plain float32", report.table()
    unbiased = oracle.compare("attention.softmax_attention", lambda q, k, v, causal, window, alibi_slopes:
                              attention.softmax_attention(q, k, v, causal=causal).astype(f32), dtype="float32", inputs=inp)
    assert not unbiased.passed


def scan_vjp_port(u, delta, A, B, C, D, dy, discretization="mamba", *, bug=None):
    # the forward recurrence in float32, then the reverse-time adjoint with every gradient accumulated step by step
    u, delta, A, B, C, dy, D = (np.asarray(x, dtype=f32) for x in (u, delta, A, B, C, dy, D))
    L = u.shape[0]
    x = delta[:, :, None] * A
    Abar = np.exp(x)
    f = np.broadcast_to(delta[:, :, None], x.shape) if discretization == "mamba" else np.expm1(x) / A
    g_of_x = np.where(np.abs(x) < 0.1, 0.5 + x / 3 + x * x / 8 + x ** 3 / 30,
                      (np.expm1(x) * (x - 1) + x) / np.where(np.abs(x) < 0.1, f32(1), x) ** 2)
    hs = np.zeros((L + 1,) + A.shape, f32)
    for t in range(L):
        hs[t + 1] = Abar[t] * hs[t] + f[t] * B[t] * u[t][:, None]
    lam = np.zeros(A.shape, f32)
    du, ddelta, dB = np.empty(u.shape, f32), np.empty(u.shape, f32), np.empty(B.shape, f32)
    dA = np.zeros(A.shape, f32)
    for t in range(L - 1, -1, -1):
        decay = Abar[t] if bug == "adjoint" else (Abar[t + 1] if t + 1 < L else f32(0))
        lam = lam * decay + dy[t][:, None] * C[t]
        ga = lam * hs[t] * Abar[t]
        wB = lam * u[t][:, None] * B[t]
        du[t] = (lam * f[t] * B[t]).sum(1) + D * dy[t]
        ddelta[t] = (ga * A).sum(1) + (wB if discretization == "mamba" else wB * Abar[t]).sum(1)
        dA += ga * delta[t][:, None] + (0 if discretization == "mamba" else wB * delta[t][:, None] ** 2 * g_of_x[t])
        dB[t] = (lam * u[t][:, None] * f[t]).sum(0)
    dC = np.einsum("td,tdn->tn", dy, hs[1:])
    return {"du": du, "ddelta": ddelta, "dA": dA, "dB": dB, "dC": dC, "dD": (dy * u).sum(0)}


@pytest.mark.parametrize("disc, L", [("mamba", 2048), ("zoh", 512)])
def test_selective_scan_vjp_float32_port_and_adjoint_off_by_one(disc, L):
    inp = oracle.random_inputs("ssm.selective_scan", seed=11, L=L, d_in=4, n=8, discretization=disc)
    inp["dy"] = np.random.default_rng(12).standard_normal(inp["u"].shape)
    good = oracle.compare("ssm.selective_scan_vjp", scan_vjp_port, dtype="float32", inputs=inp)
    qs = {q.name: q for q in good.cases[0].quantities}
    assert {q.model for q in qs.values()} == {"plain float32"}
    # the gradients that come out of the two scans pass at every length; dA and dD are long sums whose
    # terms cancel, so their float32 error depends on the order of the additions: within a few times the
    # plain reference's (here they pass; a kernel adding in another order may exceed the factor 2)
    assert all(qs[n].passed for n in ("du", "ddelta", "dB", "dC")), good.table()
    assert all(qs[n].rel_error < 5 * max(qs[n].plain_error, 2.0 ** -23) for n in ("dA", "dD")), good.table()
    bad = oracle.compare("ssm.selective_scan_vjp", lambda **kw: scan_vjp_port(**kw, bug="adjoint"), dtype="float32", inputs=inp)
    assert not bad.passed and bad.cases[0].first_failure == "du", bad.table()


# ---- the backward passes of the linear recurrences (chapter 16) ---------------------------------

_RNN_VJPS = {
    "linear_rnn.ssd_vjp": dict(L=300, H=4, G=2, P=8, N=8, batch=2),
    "linear_rnn.gated_linear_attention_vjp": dict(L=300, dk=16, dv=8, batch=2, gate_normalizer=4.0),
    "linear_rnn.retention_vjp": dict(L=300, H=3, dk=16, dv=8),
    "linear_rnn.delta_rule_vjp": dict(L=300, dk=16, dv=8, batch=2, gated=True),
}


def _rnn_vjp(name):
    from refimpl import linear_rnn

    return getattr(linear_rnn, name.split(".")[1])


@pytest.mark.parametrize("name", list(_RNN_VJPS))
@pytest.mark.parametrize("tier", ["float32", "bfloat16"])
def test_linear_recurrence_backward_passes_have_a_plain_reference(name, tier):
    """The plain references of the four backward passes (refimpl._lowprec) compute the gradients:
    within a few ε of the tier of refimpl's float64 vector-Jacobian products; compare() judges every
    gradient with them (before they existed, the float32 bound was the rounded-inputs floor 8 ε32,
    which a plain step-by-step float32 backward pass reached at L = 2048)."""
    from refimpl._lowprec import PLAIN

    inp = oracle.random_inputs(name, seed=5, **_RNN_VJPS[name])
    rounded = {k: (round_to(v, tier).astype(float) if isinstance(v, np.ndarray) else v) for k, v in inp.items()}
    want = _rnn_vjp(name)(**rounded)
    got = PLAIN[name](rounded, tier)
    assert sorted(got) == sorted(want)
    for key in want:  # dA, dD: sums over the sequence whose terms cancel (a few times more digits lost)
        rel = np.max(np.abs(got[key] - want[key])) / np.max(np.abs(want[key]))
        assert rel < (300 if key in ("dA", "dD") else 30) * eps(tier), (key, rel)
    report = oracle.compare(name, lambda **kw: {k: store(v, tier) for k, v in _rnn_vjp(name)(**kw).items()},
                            dtype=tier, inputs=inp)
    assert report.passed, report.table()
    assert {q.model for q in report.cases[0].quantities} == {f"plain {tier}"}


def test_plain_linear_recurrence_backward_passes_broadcast_and_per_head_gates():
    from refimpl import linear_rnn
    from refimpl._lowprec import PLAIN

    rng = np.random.default_rng(8)
    L = 40
    q, k = rng.standard_normal((2, 3, 1, L, 4))  # a batch axis broadcast against the heads of v
    v = rng.standard_normal((2, L, 5))  # batch (3, 2) from q, k (3, 1, ·) and v (2, ·)
    dy = rng.standard_normal((3, 2, L, 5))
    cases = [
        ("linear_rnn.gated_linear_attention_vjp", dict(q=q, k=k, v=v[:1], dy=dy[:, :1],
                                                       log_g=np.log(rng.uniform(0.7, 1, (1, 1, L))))),
        ("linear_rnn.gated_linear_attention_vjp", dict(q=q, k=k, v=v, dy=dy, scale=0.3,
                                                       log_g=np.log(rng.uniform(0.7, 1, (1, 2, L, 4))))),
        ("linear_rnn.delta_rule_vjp", dict(q=q, k=k / np.linalg.norm(k, axis=-1, keepdims=True), v=v, dy=dy,
                                           beta=rng.uniform(0.2, 1.8, (1, 1, L)))),
        ("linear_rnn.ssd_vjp", dict(x=v, dt=rng.uniform(0.01, 0.3, (2, L)), A=-np.array([0.5, 2.0]),
                                    B=rng.standard_normal((3, 1, L, 4)), C=rng.standard_normal((1, L, 4)), D=None,
                                    dy=dy)),
    ]
    for name, args in cases:
        want = getattr(linear_rnn, name.split(".")[1])(**args)
        got = PLAIN[name](args, "float32")
        for key in want:
            assert got[key].shape == np.shape(want[key]), (name, key)
            rel = np.max(np.abs(got[key] - want[key])) / np.max(np.abs(want[key]))
            assert rel < 1e-5, (name, key, rel)


def ssd_vjp_port(x, dt, A, B, C, D, dy, chunk_size=64, *, bug=None):
    """Mamba-2's SSD backward written here from the equations, float32, one head at a time: the forward
    recurrence storing the states, then the adjoint backwards with each gradient read off per step."""
    x, dt, A, B, C, D, dy = (np.asarray(a, dtype=f32) for a in (x, dt, A, B, C, D, dy))
    H, L, P = x.shape
    G, N = B.shape[0], B.shape[-1]
    out = {n: np.zeros(s, f32) for n, s in (("dx", x.shape), ("ddt", dt.shape), ("dA", (H,)), ("dB", B.shape),
                                            ("dC", C.shape))}
    for h in range(H):
        g = h // (H // G)
        a = np.exp(dt[h] * A[h])
        hs = np.zeros((L + 1, P, N), f32)
        for t in range(L):
            hs[t + 1] = a[t] * hs[t] + dt[h, t] * np.outer(x[h, t], B[g, t])
        lam = np.zeros((P, N), f32)
        for t in range(L - 1, -1, -1):
            nxt = a[t] if bug == "adjoint" else (a[t + 1] if t + 1 < L else f32(0))
            lam = nxt * lam + np.outer(dy[h, t], C[g, t])
            out["dx"][h, t] = dt[h, t] * (lam @ B[g, t]) + D[h] * dy[h, t]
            out["dB"][g, t] += dt[h, t] * (lam.T @ x[h, t])
            out["dC"][g, t] += hs[t + 1].T @ dy[h, t]
            rho = a[t] * np.sum(lam * hs[t])
            out["ddt"][h, t] = x[h, t] @ lam @ B[g, t] + A[h] * rho
            out["dA"][h] += dt[h, t] * rho
    out["dD"] = np.einsum("hlp,hlp->h", dy, x)
    return out


def test_ssd_vjp_float32_port_at_length_2048_and_adjoint_off_by_one():
    """A kernel author's report: a step-by-step float32 SSD backward pass reached 0.99 of the old
    rounded-inputs floor on dA at L = 2048; with the plain float32 reference the bound follows the
    sum's own rounding error, and the port passes. The adjoint decayed by the wrong step fails."""
    inp = oracle.random_inputs("linear_rnn.ssd_vjp", seed=3, L=2048, H=4, P=16, N=16)
    good = oracle.compare("linear_rnn.ssd_vjp", ssd_vjp_port, dtype="float32", inputs=inp)
    qs = {q.name: q for q in good.cases[0].quantities}
    assert good.passed and {q.model for q in qs.values()} == {"plain float32"}, good.table()
    assert qs["dA"].plain_error > PLAIN_ULPS["float32"] * eps("float32"), good.table()  # above the floor: it grew with L
    bad = oracle.compare("linear_rnn.ssd_vjp", lambda **kw: ssd_vjp_port(**kw, bug="adjoint"), dtype="float32",
                         inputs=inp)
    assert not bad.passed and bad.cases[0].first_failure == "dx", bad.table()


def test_gla_vjp_gate_shift_fails_in_bfloat16():
    from refimpl import linear_rnn

    inp = oracle.random_inputs("linear_rnn.gated_linear_attention_vjp", seed=7, L=512, dk=16, dv=16)

    def shifted(q, k, v, log_g, dy, chunk_size):  # the gate of step t applied at step t − 1
        lg = np.concatenate([log_g[1:], log_g[-1:]])
        return {k_: store(g, "bfloat16") for k_, g in linear_rnn.gated_linear_attention_vjp(
            q, k, v, lg, dy, chunk_size=chunk_size).items()}

    rep = oracle.compare("linear_rnn.gated_linear_attention_vjp", shifted, dtype="bfloat16", inputs=inp)
    assert not rep.passed and rep.cases[0].quantities[0].model == "plain bfloat16", rep.table()


@pytest.mark.parametrize("tier", ["bfloat16", "float16"])
def test_flash_attention_lse_is_judged_in_float32_when_returned_in_float32(tier):
    """Fused kernels form ℓ from float32 logits and keep it in float32 in every tier. Rounded to the
    tier first, a float32 ℓ off by 0.05 nats passed in bfloat16 (below half the grid spacing at
    ℓ ≈ 8; an independent kernel author's trial); now it fails, and an ℓ the kernel stores in the
    tier is still judged in the tier."""
    rnd = functools.partial(round_to, tier=tier)
    inp = oracle.random_inputs("attention.flash_attention", seed=41, N=512, d=64, causal=True, block_k=128)

    def port(change):
        def run(**kw):
            out = flash_port(**kw, rnd=lambda a: rnd(a).astype(f32))
            return {**out, "lse": change(out["lse"])}
        return run

    def lse_of(report):
        return report.cases[0].quantities[0]

    good = lse_of(oracle.compare("attention.flash_attention", port(lambda l: l), dtype=tier, inputs=inp))
    assert good.passed and good.model == f"plain {tier}, judged in float32", good
    assert good.bound < 2 * eps(tier)  # the float32 logits' ℓ: far below the tier's floor
    off = lse_of(oracle.compare("attention.flash_attention", port(lambda l: l + f32(0.05)), dtype=tier, inputs=inp))
    assert not off.passed and off.model.endswith("judged in float32")
    stored = lse_of(oracle.compare("attention.flash_attention", port(lambda l: np.asarray(rnd(l))), dtype=tier,
                                   inputs=inp))
    assert stored.passed and stored.model == f"plain {tier}"

    def unfused(**kw):  # ℓ from logits rounded to the tier (an unfused kernel), returned in float32
        out = flash_port(**kw, rnd=lambda a: rnd(a).astype(f32))
        q, k = (rnd(kw[n]).astype(f32) for n in ("q", "k"))
        S = rnd(q @ k.T / f32(np.sqrt(q.shape[1]))).astype(f32)
        S = np.where(np.tril(np.ones(S.shape, bool)), S, -np.inf)
        m = S.max(axis=1, keepdims=True)
        return {**out, "lse": (m + np.log(np.exp(S - m).sum(axis=1, keepdims=True)))[:, 0]}

    assert lse_of(oracle.compare("attention.flash_attention", unfused, dtype=tier, inputs=inp)).passed


@pytest.mark.parametrize("tier", ["bfloat16", "float16"])
def test_backward_D_has_a_plain_model_kept_in_float32(tier):
    """FlashAttention-2's backward keeps D_i = Σ_j dO_ij O_ij (``softmax_d``) and ℓ in float32. With no plain
    model, D was judged by the rounded-inputs model (a bound of 6e-2 in bfloat16), so an independent kernel
    author's D 3–4× less accurate than a correct one passed and could not localize the bug; now D and ℓ come
    from the plain backward pass, in float32 (D from the stored O: its own error is 5e-3 in bfloat16), and a D
    off by 2^-5 (bfloat16; the old bound was 6e-2) or 2^-9 (float16; old bound 8e-3) relative fails there."""
    from refimpl import attention

    inp = oracle.random_inputs("attention.softmax_attention_vjp", seed=7, N=300, d=32, causal=True)

    def port(scale_D):
        def run(**kw):
            dq, dk, dv, mid = attention.softmax_attention_vjp(**kw, return_intermediates=True)
            return {"dq": dq, "dk": dk, "dv": dv, "lse": mid["lse"].astype(f32), "D": (mid["D"] * scale_D).astype(f32)}
        return run

    good = oracle.compare("attention.softmax_attention_vjp", port(1.0), dtype=tier, inputs=inp).cases[0]
    q = {x.name: x for x in good.quantities}
    assert good.passed and q["D"].model == f"plain {tier}, judged in float32" and q["D"].bound < 2 * eps(tier)
    off = 2.0**-5 if tier == "bfloat16" else 2.0**-9
    bad = oracle.compare("attention.softmax_attention_vjp", port(1 + off), dtype=tier, inputs=inp).cases[0]
    assert not bad.passed and bad.first_failure == "D"


def linear_attention_vjp_port(q, k, v, dy, causal=False, *, bug=None):
    """Autograd of the textbook masked form in float32, written out: A = φ(q)φ(k)ᵀ, y = A v / rowsum(A)."""
    q, k, v, dy = (np.asarray(a, f32) for a in (q, k, v, dy))
    phi = lambda x: np.where(x > 0, x + 1, np.exp(np.minimum(x, 0))).astype(f32)  # noqa: E731
    a, b = phi(q), phi(k)
    A = a @ b.T
    if causal:
        A = np.tril(A)
    den = A.sum(-1, keepdims=True)
    num = A @ v
    dnum = dy / den
    dden = -(dy * num).sum(-1, keepdims=True) / (den * den)
    dA = dnum @ v.T + (0 if bug == "no normalizer" else dden)
    if causal:
        dA = np.tril(dA)
    return (dA @ b) * np.minimum(a, 1), (dA.T @ a) * np.minimum(b, 1), A.T @ dnum


@pytest.mark.parametrize("causal", [False, True])
def test_linear_attention_vjp_textbook_float32_port_passes(causal):
    """The masked form differentiated in float32 (what a PyTorch reference computes) failed the
    rounded-inputs floor (dv 1.6e-6 against 9.5e-7 at N = 1024, an independent tester's trial); the
    plain reference is now that form in the tier. A dropped normalizer gradient fails."""
    inp = oracle.random_inputs("random_features.linear_attention_vjp", seed=1, N=1024, d=16, causal=causal)
    good = oracle.compare("random_features.linear_attention_vjp", linear_attention_vjp_port, dtype="float32", inputs=inp)
    assert good.passed and {q.model for q in good.cases[0].quantities} == {"plain float32"}, good.table()
    bad = oracle.compare("random_features.linear_attention_vjp",
                         lambda **kw: linear_attention_vjp_port(**kw, bug="no normalizer"), dtype="float32", inputs=inp)
    assert not bad.passed


@pytest.mark.parametrize("name", list(_RNN_VJPS))
def test_initial_states_and_final_state_cotangents_are_judged_by_the_plain_references(name):
    """Mamba-2's initial_states / fla's h0 and the cotangent of the last state (dht): the plain
    references start their recurrences from the given state and their adjoints from dfinal_state;
    refimpl's own float64 gradients stored in float32 pass with every quantity judged by them, and a
    kernel that drops either state fails."""
    inp = oracle.random_inputs(name, seed=9, states=True, **{k: v for k, v in _RNN_VJPS[name].items() if k != "L"},
                               L=130)
    assert {"initial_state", "dfinal_state"} <= set(inp)
    fn = _rnn_vjp(name)

    def kernel(drop=None):
        def run(**kw):
            if drop:
                kw[drop] = np.zeros_like(kw[drop])
            return {k: store(v, "float32") for k, v in fn(**kw).items()}
        return run

    good = oracle.compare(name, kernel(), dtype="float32", inputs=inp)
    qs = {q.name: q for q in good.cases[0].quantities}
    assert good.passed and "dinitial_state" in qs and {q.model for q in qs.values()} == {"plain float32"}, good.table()
    for drop in ("initial_state", "dfinal_state"):
        assert not oracle.compare(name, kernel(drop), dtype="float32", inputs=inp).passed, drop


def test_forward_initial_state_reaches_the_plain_reference():
    from refimpl import linear_rnn

    inp = oracle.random_inputs("linear_rnn.ssd", seed=2, L=300, H=4, G=2, P=8, N=8, states=True)
    good = oracle.compare("linear_rnn.ssd", lambda **kw: linear_rnn.ssd(**kw).astype(f32), dtype="float32", inputs=inp)
    assert good.passed and good.cases[0].quantities[0].model == "plain float32", good.table()
    no_state = {k: v for k, v in inp.items() if k != "initial_state"}
    bad = oracle.compare("linear_rnn.ssd", lambda **kw: linear_rnn.ssd(**{k: v for k, v in kw.items()
                                                                          if k != "initial_state"}).astype(f32),
                         dtype="float32", inputs=inp)
    assert not bad.passed and no_state
    with pytest.raises(TypeError, match="^states"):
        oracle.random_inputs("linear_rnn.ssd", seed=2, states="yes")


def simple_gla_cumsum_port(q, k, v, g, scale=None, initial_state=None, output_final_state=False, *, bug=None):
    """fla's chunked simple GLA in float32, written from the GLA paper: per chunk of 64 the decays
    exp(c_t − c_s) from the in-chunk cumulative log-gate c (the design of fla's and Mamba-2's kernels)."""
    q, k, v, g = (np.asarray(a, f32) for a in (q, k, v, g))
    B, T, H, K = q.shape
    s = f32(K ** -0.5 if scale is None else scale)
    if bug == "gate shift":
        g = np.concatenate([g[:, 1:], g[:, -1:]], axis=1)
    o = np.empty(v.shape, f32)
    S = np.zeros((B, H, K, v.shape[-1]), f32) if initial_state is None else np.asarray(initial_state, f32).copy()
    for c0 in range(0, T, 64):
        sl = slice(c0, min(T, c0 + 64))
        qc, kc, vc = (np.swapaxes(a[:, sl], 1, 2) for a in (q, k, v))  # (B, H, c, ·)
        cum = np.cumsum(np.swapaxes(g[:, sl], 1, 2), axis=-1, dtype=f32)  # (B, H, c)
        decay = np.exp(np.where(np.tri(cum.shape[-1], dtype=bool), cum[..., :, None] - cum[..., None, :], -np.inf))
        intra = ((qc * s) @ np.swapaxes(kc, -1, -2) * decay) @ vc
        inter = ((qc * s) * np.exp(cum)[..., None]) @ S
        o[:, sl] = np.swapaxes(intra + inter, 1, 2)
        S = np.exp(cum[..., -1])[..., None, None] * S + np.swapaxes(kc * np.exp(cum[..., -1:] - cum)[..., None], -1, -2) @ vc
    return o, (S if output_final_state else None)


def ssd_cumsum_port(x, dt, A, B, C, D=None, chunk_size=64, *, bug=None):
    """Mamba-2's chunked SSD in float32, written from the paper (Listing 1): per chunk the decays exp(c_t − c_s) from
    the float32 in-chunk cumulative log-decay c, the state carried between chunks in float32."""
    x, dt, A, B, C = (np.asarray(a, f32) for a in (x, dt, A, B, C))
    if bug == "dt in bfloat16":
        dt = round_to(dt, "bfloat16").astype(f32)
    H, L, _ = x.shape
    B, C = (np.repeat(a, H // a.shape[0], axis=0) for a in (B, C))
    y, h = np.empty(x.shape, f32), np.zeros((H, x.shape[-1], B.shape[-1]), f32)  # h (H, P, N)
    for c0 in range(0, L, int(chunk_size)):
        sl = slice(c0, min(L, c0 + int(chunk_size)))
        c = np.cumsum(dt[:, sl] * A[:, None], axis=-1, dtype=f32)
        decay = np.exp(np.where(np.tri(c.shape[-1], dtype=bool), c[:, :, None] - c[:, None, :], -np.inf))
        xb = x[:, sl] * dt[:, sl, None]
        y[:, sl] = (C[:, sl] @ np.swapaxes(B[:, sl], 1, 2) * decay) @ xb + np.exp(c)[..., None] * (C[:, sl] @ np.swapaxes(h, 1, 2))
        if bug != "no carry":
            h = np.exp(c[:, -1])[:, None, None] * h
        else:
            h = np.zeros_like(h)
        h = h + np.swapaxes(xb * np.exp(c[:, -1:] - c)[..., None], 1, 2) @ B[:, sl]
    return y + (0 if D is None else np.asarray(D, f32)[:, None, None] * x)


def test_decay_floor_admits_chunked_cumsum_kernels_and_still_catches_a_gate_shift():
    """Two independent kernel authors: float32 ports of fla's chunked simple GLA (decays exp(c_t − c_s),
    fla's own test gates log σ(ξ)) failed every run by up to 2.35× the bound without a decay floor, and
    Mamba-2's by up to 3×; decays from segment sums passed. The floor ε32 C_eff covers the rounding of c; a
    gate shifted by one step still fails by orders of magnitude."""
    rng = np.random.default_rng(0)
    B, T, H, K, V = 1, 512, 2, 32, 32
    inp = {"q": rng.standard_normal((B, T, H, K)), "k": rng.standard_normal((B, T, H, K)),
           "v": rng.standard_normal((B, T, H, V)), "g": -np.logaddexp(0.0, -rng.standard_normal((B, T, H)))}
    C_eff = oracle.effective_log_decay(np.moveaxis(inp["g"], 1, -1), 64)
    assert oracle.decay_floor("linear_rnn.chunk_simple_gla", inp) == eps("float32") * C_eff and C_eff > 30
    good = oracle.compare("linear_rnn.chunk_simple_gla", simple_gla_cumsum_port, dtype="float32", inputs=inp)
    q = good.cases[0].quantities[0]
    assert good.passed and q.floor > 0 and q.bound == 2 * max(q.plain_error, q.floor), good.table()
    assert q.rel_error > 2 * max(q.plain_error, 4 * eps("float32"))  # the bound without the floor: a false failure
    assert q.rel_error < 0.5 * q.bound  # the margin
    bad = oracle.compare("linear_rnn.chunk_simple_gla", lambda **kw: simple_gla_cumsum_port(**kw, bug="gate shift"),
                         dtype="float32", inputs=inp)
    assert not bad.passed and bad.cases[0].quantities[0].rel_error > 100 * bad.cases[0].quantities[0].bound


def test_decay_floor_counts_only_the_weights_that_exist():
    """An independent review: with C the largest in-chunk |Σ log g| the registered case ssd/fast_decay (steps that
    decay by e^-6 to e^-1000) had a float32 bound of 6.4e-3, above the 16-bit tiers', and a float32 kernel that
    rounds Δ to bfloat16 (error 2e-3) passed. The off-diagonal weights there all but vanish and the diagonal ones
    are exact: the decay-weighted C_eff keeps the floor near what a correct kernel needs."""
    args, _ = oracle.compute("linear_rnn.ssd/fast_decay")
    lg = args["dt"] * args["A"][:, None]
    C = max(np.abs(lg[:, i:i + 16].sum(-1)).max() for i in range(0, 40, 16))
    assert C > 5000 and oracle.decay_floor("linear_rnn.ssd", args) < 0.01 * eps("float32") * C
    good = oracle.compare("linear_rnn.ssd", ssd_cumsum_port, dtype="float32", cases="fast_decay")
    bad = oracle.compare("linear_rnn.ssd", lambda **kw: ssd_cumsum_port(**kw, bug="dt in bfloat16"), dtype="float32",
                         cases="fast_decay")
    assert good.passed, good.table()
    assert not bad.passed and bad.cases[0].quantities[0].rel_error > 10 * bad.cases[0].quantities[0].bound
    inp = oracle.random_inputs("linear_rnn.ssd", seed=3, L=1024, H=4, G=2, P=16, N=16)
    good = oracle.compare("linear_rnn.ssd", ssd_cumsum_port, dtype="float32", inputs=inp)
    bad = oracle.compare("linear_rnn.ssd", lambda **kw: ssd_cumsum_port(**kw, bug="no carry"), dtype="float32", inputs=inp)
    assert good.passed and good.cases[0].quantities[0].floor > 0, good.table()
    assert not bad.passed


def test_decay_floor_of_gradients_summed_over_the_sequence(monkeypatch):
    """An independent kernel author's correct float32 Mamba-2 kernel (cumsum decays, autograd backward) failed
    mamba_chunk_scan_combined_vjp at ddt_bias alone, 1.56× the bound: ddt_bias and dA sum decay-dependent terms
    over the batch and the sequence, each rounded by about ε32 C_eff, and the sums cancel (Σ|terms| / |Σ terms| of
    12 to 840), so their error reached 2.6 ε32 C_eff relative to the cancelled sum. Their floor is scaled by the
    terms' magnitude, sqrt(Σ_k S_k²) over chunks k (S_k = Σ |terms| in a chunk): such an error passes, a
    ddt_bias 1% off still fails."""
    from refimpl import linear_rnn
    from refimpl._vjp import _decay_sums

    name = "linear_rnn.mamba_chunk_scan_combined_vjp"
    inp = oracle.random_inputs(name, seed=2, L=1024, H=4, P=16, N=16, chunk_size=256)
    g = linear_rnn.mamba_chunk_scan_combined_vjp(**inp)
    # the magnitude of ddt_bias's terms (the per-step ddt), chunk by chunk, by hand
    S = np.abs(g["ddt"]).reshape(1, 4, 256, 4).sum(axis=2)  # (batch, chunks, heads)
    assert np.isclose(_decay_sums(name, inp)["ddt_bias"], np.sqrt((S ** 2).sum(axis=(0, 1))).max(), rtol=1e-12)
    assert set(_decay_sums(name, inp)) == {"dA", "ddt_bias"} and _decay_sums("linear_rnn.ssd", {}) == {}
    floor = oracle.decay_floor(name, inp)
    signs = np.array([1.0, -1.0, 1.0, -1.0])

    def kernel(off):  # refimpl's gradients, ddt_bias moved by `off` relative, in float32
        def run(**kw):
            got = linear_rnn.mamba_chunk_scan_combined_vjp(**kw)
            got["ddt_bias"] = got["ddt_bias"] + off * signs * np.abs(got["ddt_bias"]).max()
            return {k: v.astype(f32) for k, v in got.items()}
        return run

    measured = kernel(2.6 * floor)  # the error the correct kernel reached
    rep = oracle.compare(name, measured, dtype="float32", inputs=inp).cases[0]
    q = {x.name: x for x in rep.quantities}
    assert rep.passed and q["ddt_bias"].floor > 3 * floor and q["dx"].floor == floor, rep
    assert not oracle.compare(name, kernel(0.01), dtype="float32", inputs=inp).passed
    monkeypatch.setattr("refimpl._vjp._decay_sums", lambda function, args: {})  # the floor of the case alone
    assert oracle.compare(name, measured, dtype="float32", inputs=inp).cases[0].first_failure == "ddt_bias"


def test_chunked_recurrences_are_judged_sequence_by_sequence():
    """Errors are norm-wise and the decay floor is the case's worst head's: a kernel that drops the carried state
    is off only where the decays are weak, and passed the whole of a case whose fastest head set the floor. Each
    sequence (batch entry × head) is now also judged on its own, relative to its own largest entry and with its
    own C_eff; the correct port passes, the bug fails and the report names the worst sequence and the tier met."""
    inp = oracle.random_inputs("linear_rnn.ssd", seed=7, L=1024, H=6, P=16, N=16, chunk_size=256)
    lg = inp["dt"] * inp["A"][:, None]
    S, floors, cu = oracle._sequence_floors("linear_rnn.ssd", inp)
    assert S == (6,) and cu is None and np.allclose(floors, [eps("float32") * oracle.effective_log_decay(lg[h], 256) for h in range(6)],
                                     rtol=1e-12, atol=0)
    assert floors.max() == oracle.decay_floor("linear_rnn.ssd", inp) > 20 * floors.min()  # one head sets the case's floor
    good = oracle.compare("linear_rnn.ssd", ssd_cumsum_port, dtype="float32", inputs=inp)
    assert good.passed, good.table()
    bad = oracle.compare("linear_rnn.ssd", lambda **kw: ssd_cumsum_port(**kw, bug="no carry"), dtype="float32",
                         inputs=inp).cases[0]
    q = bad.quantities[0]
    from refimpl import linear_rnn

    whole = rel_error(ssd_cumsum_port(**inp, bug="no carry"), linear_rnn.ssd(**inp))
    assert whole < 2 * floors.max()  # the whole case alone: within the bound of its fastest head
    assert bad.status == "fail" and "sequences" in q.message and q.rel_error > q.bound and bad.meets == "tf32", q
    slow = np.argsort(lg.mean(axis=1))[-2:]  # the weakest decays: the carried state matters most there
    assert q.message.startswith("2 of 6 sequences") and any(f"the worst, ({h},)" in q.message for h in slow)

    # the official layout (b, l, h, p): a sequence is (batch entry, head), found behind the time axis
    name = "linear_rnn.mamba_chunk_scan_combined"
    inp = oracle.random_inputs(name, seed=0, L=256, H=3, P=8, N=8, batch=2, chunk_size=64)
    want = linear_rnn.mamba_chunk_scan_combined(**inp)

    def damaged(**kw):  # float32 values, one sequence (b, h) = (1, 2) off by 20 float32 ulps of its largest entry
        out = want.astype(np.float32)
        out[1, :, 2] += np.float32(20 * eps("float32") * np.abs(want[1, :, 2]).max())
        return out

    rep = oracle.compare(name, damaged, dtype="float32", inputs=inp).cases[0]
    assert rep.status == "fail" and "the worst, (1, 2)" in rep.quantities[0].message, rep
    assert oracle.compare(name, lambda **kw: want.astype(np.float32), dtype="float32", inputs=inp).passed
    # float64 judges the whole only; so do quantities shared by heads (SSD's dA)
    assert oracle._Floors(name, inp, low=False).sequences("out") is None
    assert oracle._Floors("linear_rnn.ssd_vjp", inp, low=True).sequences("dA") is None


def _brute_effective_log_decay(lg, c):
    """C_eff by its definition: for every chunk and row t, the pairs s = −1 … t−1 (c_{−1} = 0) one by one."""
    worst = 0.0
    for seq in lg.reshape(-1, lg.shape[-1]):
        for s0 in range(0, len(seq), c):
            cum = np.concatenate([[0.0], np.cumsum(seq[s0:s0 + c])])  # cum[s + 1] = c_s
            for t in range(1, len(cum)):
                w = np.exp(cum[t] - cum[:t])
                worst = max(worst, np.sum(w * (abs(cum[t]) + np.abs(cum[:t]))) / (1.0 + np.sum(w)))
    return worst


def test_effective_log_decay_is_its_definition():
    rng = np.random.default_rng(4)
    for _ in range(12):
        L, c = int(rng.integers(1, 40)), int(rng.integers(1, 12))
        lg = -rng.exponential(rng.uniform(0.01, 3.0), (2, 3, L))
        assert np.isclose(oracle.effective_log_decay(lg, c), _brute_effective_log_decay(lg, c), rtol=1e-12, atol=0)
    assert oracle.effective_log_decay(np.zeros((2, 10)), 4) == 0.0  # no decay: every weight exact
    slow = oracle.effective_log_decay(np.full(64, -0.01), 64)  # decays near 1: about 1.5 times the largest |c| = 0.64
    assert 1.45 * 0.64 < slow < 1.55 * 0.64
    assert oracle.effective_log_decay(np.full(64, -100.0), 64) < 1e-30  # |c| up to 6400, no weight but the exact ones
    # a zero gate wipes the state: no pair spans it, c restarts after it
    assert np.isclose(oracle.effective_log_decay(np.array([-1.0, -2.0, -np.inf, -1.0, -2.0]), 5),
                      oracle.effective_log_decay(np.array([-1.0, -2.0]), 2))
    for bad, match in [(np.array([0.5]), "^log_g: expected log-decays <= 0"), (np.array([np.nan]), "^log_g"),
                       (3.0, "^log_g: expected shape")]:
        with pytest.raises(ValueError, match=match):
            oracle.effective_log_decay(bad, 4)
    with pytest.raises(ValueError, match="^chunk"):
        oracle.effective_log_decay(np.zeros(3), 0)


def test_decay_floor_of_each_chunked_recurrence():
    rng = np.random.default_rng(1)
    e, C_eff = eps("float32"), oracle.effective_log_decay
    dt, A = rng.uniform(0.01, 0.5, (2, 3, 100)), -np.array([1.0, 4.0, 8.0])
    ssd = {"x": None, "dt": dt, "A": A, "chunk_size": 16}
    assert np.isclose(oracle.decay_floor("linear_rnn.ssd", ssd), e * C_eff(dt * A[:, None], 16))
    assert oracle.decay_floor("linear_rnn.ssd_vjp", ssd) == oracle.decay_floor("linear_rnn.ssd", ssd)
    ret = {"q": np.ones((2, 40, 3)), "gamma": np.array([0.5, 0.99]), "chunk_size": 64}  # one chunk of L = 40 steps
    assert np.isclose(oracle.decay_floor("linear_rnn.retention", ret), e * C_eff(np.full(40, np.log(0.5)), 64))
    lg = -rng.uniform(0, 1, (2, 50, 4))
    gla = {"k": np.ones((2, 50, 4)), "log_g": lg, "chunk_size": 64}  # per key channel: the channel axis moves first
    assert np.isclose(oracle.decay_floor("linear_rnn.gated_linear_attention", gla), e * C_eff(np.moveaxis(lg, -1, -2), 64))
    m = {"dt": np.full((1, 64, 2), 30.0), "dt_bias": np.zeros(2), "dt_softplus": True, "dt_limit": (0.0, 0.1),
         "A": -np.array([1.0, 2.0]), "chunk_size": 64}  # Δ clamped to 0.1: log-decays −0.1 and −0.2 per step
    assert np.isclose(oracle.decay_floor("linear_rnn.mamba_chunk_scan_combined", m), e * C_eff(np.full(64, -0.2), 64))
    assert oracle.decay_floor("linear_rnn.delta_rule", {"beta": np.ones((1, 9)), "chunk_size": 4}) == 0.0  # no gates
    assert oracle.decay_floor("linear_rnn.gated_linear_attention", {**gla, "log_g": lg / 1e3}) == 0.0  # C_eff <= 1
    assert oracle.decay_floor("attention.softmax_attention", {"q": np.ones((3, 2))}) == 0.0
    with pytest.raises(ValueError, match="^args: the arguments of linear_rnn.ssd lack 'dt'"):
        oracle.decay_floor("linear_rnn.ssd", {"A": A})
    with pytest.raises(ValueError, match="^function: unknown"):
        oracle.decay_floor("ssd", ssd)


@pytest.mark.parametrize("shape", [(7,), (3, 5, 70), (2, 300, 4, 129), (1, 257, 65)])
def test_time_major_blocks_round_trip(shape):
    # the plain selective scans read blocks of steps time-major (tiled transposing copies) and write them back:
    # every step of every row lands where moveaxis puts it, for partial tiles, broadcast and complex inputs too
    from refimpl._lowprec import _put_time_major, _time_major

    rng = np.random.default_rng(6)
    x = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    L = shape[-1]
    for t0, t1 in ((0, L), (L // 3, L), (1, max(2, L // 2))):
        want = np.moveaxis(x[..., t0:t1], -1, 0)
        got = _time_major(x, t0, t1)
        assert got.flags.c_contiguous and np.array_equal(got, want)
        back = np.zeros_like(x)
        _put_time_major(back, t0, got)
        assert np.array_equal(back[..., t0:t1], x[..., t0:t1]) and not back[..., :t0].any() and not back[..., t1:].any()
    wide = np.broadcast_to(x[:1], (3,) + shape[1:]) if len(shape) > 1 else x  # a stride-0 axis: read through a copy
    assert np.array_equal(_time_major(wide, 0, L), np.moveaxis(wide, -1, 0))
    target = np.zeros(shape, dtype=x.dtype, order="F")  # Fortran order: written in place where its axes merge into
    try:  # rows, else refused — never written into a silent copy
        _put_time_major(target, 0, _time_major(x, 0, L))
    except AttributeError:
        assert len([n for n in shape[:-1] if n > 1]) > 1
    else:
        assert np.array_equal(target, x)
