"""The official interfaces of Mamba-2 (``mamba_chunk_scan_combined``) and fla (``chunk_gla``,
``chunk_simple_gla``, ``chunk_delta_rule``, ``chunk_gated_delta_rule``) and their backward passes.

Checked against (1) refimpl's own functions after explicit transposes (the wrappers add nothing but
the layout), (2) an independent step-by-step recurrence written here in the *official* layout from
the equations (fla's state orientation (K, V), Mamba-2's (P, N)), complex-capable so that (3) every
gradient is checked by the complex step (directional derivatives, error ~1e-15), including the
chain rules of softplus, the clamp, silu(z), D per channel and the ℓ2 normalization, and the states'
gradients; (4) loop twins; (5) bad input named in the official terms; (6) the low-precision oracle.
"""

from __future__ import annotations

import numpy as np
import pytest

from refimpl import linear_rnn as lr
from refimpl import oracle

from _fla import fla_inputs  # noqa: E402 (tests/ is on sys.path)

RTOL = 1e-13
rng0 = np.random.default_rng


def sw(a):
    return np.swapaxes(a, 1, 2)


def tr(a):
    return np.swapaxes(a, -1, -2)


# ---- an independent reference in the official layouts, complex-capable -----------------------------


def softplus(x):
    return np.log(1.0 + np.exp(x))


def clamp(x, lo, hi):
    return np.where(x.real < lo, lo, np.where(x.real > hi, hi, x))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def ref_mamba(x, dt, A, B, C, D=None, z=None, dt_bias=None, h0=None, dt_softplus=False, dt_limit=(0.0, np.inf)):
    """mamba_ssm's semantics step by step: out (b, l, h, p), final states (b, h, p, n)."""
    b, L, H, P = x.shape
    G, N = B.shape[2:]
    ct = np.result_type(x, dt, A, B, C, *(a for a in (D, z, dt_bias, h0) if a is not None), float)
    raw = dt + (0 if dt_bias is None else dt_bias)
    delta = clamp(softplus(raw) if dt_softplus else raw, *dt_limit)
    out = np.zeros(x.shape, ct)
    fin = np.zeros((b, H, P, N), ct)
    for i in range(b):
        for h in range(H):
            g = h // (H // G)
            S = np.zeros((P, N), ct) if h0 is None else h0[i, h].astype(ct)
            for t in range(L):
                d = delta[i, t, h]
                S = np.exp(d * A[h]) * S + d * np.outer(x[i, t, h], B[i, t, g])
                y = S @ C[i, t, g]
                if D is not None:
                    y = y + (D[h] if D.ndim == 1 else D[h]) * x[i, t, h]
                if z is not None:
                    y = y * z[i, t, h] * sigmoid(z[i, t, h])
                out[i, t, h] = y
            fin[i, h] = S
    return out, fin


def l2n(x):
    return x / np.sqrt(np.sum(x * x, axis=-1, keepdims=True) + 1e-6)


def ref_fla(q, k, v, g=None, beta=None, scale=None, h0=None, l2norm=False, gate="none"):
    """fla's semantics step by step, state h (K, V): returns o (B, T, H, V) and the final state (B, H, K, V)."""
    Bb, T, H, K = q.shape
    V = v.shape[-1]
    if l2norm:
        q, k = l2n(q), l2n(k)
    scale = K ** -0.5 if scale is None else scale
    ct = np.result_type(q, k, v, *(a for a in (g, beta, h0) if a is not None), float)
    o = np.zeros((Bb, T, H, V), ct)
    fin = np.zeros((Bb, H, K, V), ct)
    for i in range(Bb):
        for h in range(H):
            S = np.zeros((K, V), ct) if h0 is None else h0[i, h].astype(ct)
            for t in range(T):
                kt, vt = k[i, t, h], v[i, t, h]
                if gate == "channel":
                    S = np.exp(g[i, t, h])[:, None] * S
                elif gate == "head":
                    S = np.exp(g[i, t, h]) * S
                if beta is None:
                    S = S + np.outer(kt, vt)
                else:  # h = (I − β k kᵀ) h + β k vᵀ
                    S = S - beta[i, t, h] * np.outer(kt, kt @ S) + beta[i, t, h] * np.outer(kt, vt)
                o[i, t, h] = S.T @ (scale * q[i, t, h])
            fin[i, h] = S
    return o, fin


# ---- inputs ----------------------------------------------------------------------------------------


def mamba_inputs(seed=0, b=2, L=9, H=4, G=2, P=3, N=2, full=True, d_per_channel=True):
    r = rng0(seed)
    kw = dict(x=r.standard_normal((b, L, H, P)), dt=r.normal(-0.3, 1.0, (b, L, H)), A=-np.exp(r.standard_normal(H)),
              B=r.standard_normal((b, L, G, N)), C=r.standard_normal((b, L, G, N)))
    opts = {}
    if full:
        opts = dict(D=r.standard_normal((H, P) if d_per_channel else H), z=r.standard_normal((b, L, H, P)),
                    dt_bias=r.normal(0.3, 0.5, H), initial_states=r.standard_normal((b, H, P, N)), dt_softplus=True,
                    dt_limit=(0.3, 1.4))
    else:
        kw["dt"] = r.uniform(0.05, 1.0, (b, L, H))
    return kw, opts


FLA = {  # name: (function, gate, delta)
    "chunk_gla": (lr.chunk_gla, "channel", False),
    "chunk_simple_gla": (lr.chunk_simple_gla, "head", False),
    "chunk_delta_rule": (lr.chunk_delta_rule, "none", True),
    "chunk_gated_delta_rule": (lr.chunk_gated_delta_rule, "head", True),
}
FLA_CALLS = [(n, l2) for n in FLA for l2 in ([False, True] if FLA[n][2] else [False])]


def close(a, b, rtol=RTOL, what=""):
    err = np.linalg.norm(np.asarray(a) - np.asarray(b)) / max(np.linalg.norm(np.asarray(b)), 1e-300)
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:g}"
    return err


# ---- 1. equality with the underlying refimpl functions after explicit transposes ----------------------


@pytest.mark.parametrize("full, per_channel", [(True, True), (True, False), (False, False)])
def test_mamba_is_ssd_after_transposes(full, per_channel):
    kw, opts = mamba_inputs(1, full=full, d_per_channel=per_channel)
    out, fin = lr.mamba_chunk_scan_combined(*kw.values(), 4, **opts, return_final_states=True)
    x = np.transpose(kw["x"], (0, 2, 1, 3))
    raw = kw["dt"] + opts.get("dt_bias", 0.0)
    delta = np.transpose(np.clip(np.logaddexp(0, raw), *opts["dt_limit"]) if full else raw, (0, 2, 1))
    B, C = (np.transpose(kw[n], (0, 2, 1, 3)) for n in "BC")
    D = opts.get("D")
    y, states = lr.ssd(x, delta, kw["A"], B, C, D if D is not None and D.ndim == 1 else None, chunk_size=3,
                       return_chunk_states=True, initial_state=opts.get("initial_states"))
    y = np.transpose(y, (0, 2, 1, 3))
    if D is not None and D.ndim == 2:
        y = y + D * kw["x"]
    if "z" in opts:
        y = y * opts["z"] / (1 + np.exp(-opts["z"]))
    close(out, y, what="out")
    close(fin, states[:, :, -1], what="final_states")
    assert lr.mamba_chunk_scan_combined(*kw.values(), 4, **opts).shape == kw["x"].shape  # out alone by default


@pytest.mark.parametrize("name, l2", FLA_CALLS)
def test_fla_is_refimpl_after_transposes(name, l2):
    fn, gate, delta = FLA[name]
    kw, opts = fla_inputs(2, gate=gate, delta=delta, l2norm=l2)
    o, ht = fn(*kw.values(), **opts, output_final_state=True)
    assert fn(*kw.values(), **opts)[1] is None  # fla returns (o, None) without output_final_state
    q, k, v = (np.transpose(kw[n], (0, 2, 1, 3)) for n in "qkv")
    if l2:
        q, k = (a / np.sqrt((a * a).sum(-1, keepdims=True) + 1e-6) for a in (q, k))
    S0 = np.transpose(opts["initial_state"], (0, 1, 3, 2))
    g = None if gate == "none" else np.moveaxis(kw["g"], 1, 2)
    if delta:
        y, st = lr.delta_rule(q, k, v, np.moveaxis(kw["beta"], 1, 2), log_g=g, return_chunk_states=True, initial_state=S0)
    else:
        y, st = lr.gated_linear_attention(q, k, v, g, return_chunk_states=True, initial_state=S0)
    close(o, np.transpose(y, (0, 2, 1, 3)), what="o")
    close(ht, np.transpose(st[:, :, -1], (0, 1, 3, 2)), what="final_state")


# ---- 2. the official semantics, from an independent recurrence in the official layout ----------------


@pytest.mark.parametrize("full, per_channel", [(True, True), (True, False), (False, False)])
def test_mamba_matches_the_official_recurrence(full, per_channel):
    kw, opts = mamba_inputs(3, full=full, d_per_channel=per_channel)
    out, fin = lr.mamba_chunk_scan_combined(*kw.values(), 4, **opts, return_final_states=True)
    ref = ref_mamba(*kw.values(), opts.get("D"), opts.get("z"), opts.get("dt_bias"), opts.get("initial_states"),
                    opts.get("dt_softplus", False), opts.get("dt_limit", (0.0, np.inf)))
    close(out, ref[0], 1e-12, "out")
    close(fin, ref[1], 1e-12, "final_states")
    if full:  # the clamp is active at both ends in these inputs
        pre = np.logaddexp(0, kw["dt"] + opts["dt_bias"])
        assert (pre < 0.3).any() and (pre > 1.4).any()


@pytest.mark.parametrize("name, l2", FLA_CALLS)
def test_fla_matches_the_official_recurrence(name, l2):
    fn, gate, delta = FLA[name]
    kw, opts = fla_inputs(4, gate=gate, delta=delta, l2norm=l2)
    o, ht = fn(*kw.values(), scale=0.7, **opts, output_final_state=True)
    ro, rh = ref_fla(kw["q"], kw["k"], kw["v"], kw.get("g"), kw.get("beta"), 0.7, opts["initial_state"], l2, gate)
    close(o, ro, 1e-12, "o")
    close(ht, rh, 1e-12, "final_state")
    o2, _ = fn(*kw.values(), **opts)  # default scale K^-1/2
    close(o2, ref_fla(kw["q"], kw["k"], kw["v"], kw.get("g"), kw.get("beta"), None, opts["initial_state"], l2, gate)[0],
          1e-12, "default scale")


# ---- 3. gradients by the complex step of the reference --------------------------------------------------


H_CS = 1e-30


def _complex_step(loss, args: dict, grads: dict, names, seed=0, ndir=3, rtol=1e-10):
    """Σ grad·e against Im ℓ(args + i h e)/h for random directions e of each named argument."""
    r = rng0(seed)
    for name in names:
        for _ in range(ndir):
            e = r.standard_normal(np.shape(args[name]))
            pert = dict(args)
            pert[name] = np.asarray(args[name]) + 1j * H_CS * e
            want = loss(pert).imag / H_CS
            got = float(np.sum(grads[name] * e))
            assert abs(got - want) <= rtol * max(abs(want), 1e-12), (name, got, want)


@pytest.mark.parametrize("per_channel", [True, False])
def test_mamba_vjp_by_complex_step(per_channel):
    kw, opts = mamba_inputs(5, b=1, L=7, H=2, G=1, P=2, N=2, d_per_channel=per_channel)
    r = rng0(6)
    dout, dfs = r.standard_normal(kw["x"].shape), r.standard_normal(opts["initial_states"].shape)
    g = lr.mamba_chunk_scan_combined_vjp(*kw.values(), dout, 3, **opts, dfinal_states=dfs)
    args = {**kw, **{k: v for k, v in opts.items() if k not in ("dt_softplus", "dt_limit")}}

    def loss(a):
        out, fin = ref_mamba(a["x"], a["dt"], a["A"], a["B"], a["C"], a["D"], a["z"], a["dt_bias"], a["initial_states"],
                             True, opts["dt_limit"])
        return np.sum(out * dout) + np.sum(fin * dfs)

    names = ["x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states"]
    grads = {n: g["d" + n] for n in names}
    _complex_step(loss, args, grads, names)
    pre = np.logaddexp(0, kw["dt"] + opts["dt_bias"])
    outside = (pre < 0.3) | (pre > 1.4)
    assert outside.any() and np.all(g["ddt"][outside] == 0) and np.all(g["ddt"][~outside] != 0)  # the clamp
    assert sorted(g) == sorted("d" + n for n in names)


def test_mamba_vjp_without_options_by_complex_step():
    kw, _ = mamba_inputs(7, b=2, L=6, H=2, G=2, P=2, N=3, full=False)
    dout = rng0(8).standard_normal(kw["x"].shape)
    g = lr.mamba_chunk_scan_combined_vjp(*kw.values(), dout, 4)
    assert sorted(g) == ["dA", "dB", "dC", "ddt", "dx"]
    _complex_step(lambda a: np.sum(ref_mamba(*a.values())[0] * dout), kw, {n: g["d" + n] for n in kw}, list(kw))


def test_mamba_negative_dt_is_a_step_of_zero_as_the_kernel_clamps_it():
    """Without the softplus, mamba_ssm clamps dt to dt_limit = (0, inf) by default: a negative dt is Δ = 0 (the
    state is left unchanged, the output is still read), and its gradient is 0 (strictly outside the limit)."""
    kw, opts = mamba_inputs(12, b=1, L=9, H=2, G=1, P=2, N=3, full=False)
    kw["dt"] = rng0(13).normal(0.0, 0.5, kw["dt"].shape)
    kw["dt"][0, 4] = 0.0  # Δ = 0 exactly, at the clamp's boundary
    D = rng0(14).standard_normal(2)
    assert (kw["dt"] < 0).sum() >= 4
    for fn in (lr.mamba_chunk_scan_combined, lr.mamba_chunk_scan_combined_loop):
        out, fin = fn(*kw.values(), 4, D, return_final_states=True)
        ref = ref_mamba(*kw.values(), D)
        close(out, ref[0], 1e-12, "out")
        close(fin, ref[1], 1e-12, "final_states")
    dout = rng0(15).standard_normal(kw["x"].shape)
    g = lr.mamba_chunk_scan_combined_vjp(*kw.values(), dout, 4, D=D)
    args = {**kw, "D": D}
    names = ["x", "A", "B", "C", "D"]
    _complex_step(lambda a: np.sum(ref_mamba(*a.values())[0] * dout), args, {n: g["d" + n] for n in names}, names)
    assert np.all(g["ddt"][kw["dt"] < 0] == 0) and np.all(g["ddt"][kw["dt"] > 0] != 0)


@pytest.mark.parametrize("name, l2", FLA_CALLS)
def test_fla_vjp_by_complex_step(name, l2):
    fn, gate, delta = FLA[name]
    vjp = getattr(lr, name + "_vjp")
    kw, opts = fla_inputs(9, B=1, T=7, gate=gate, delta=delta, l2norm=l2)
    r = rng0(10)
    do, dht = r.standard_normal(kw["v"].shape), r.standard_normal(opts["initial_state"].shape)
    g = vjp(*kw.values(), do, 0.8, opts["initial_state"], dht, **({"use_qk_l2norm_in_kernel": l2} if delta else {}))
    args = {**kw, "initial_state": opts["initial_state"]}

    def loss(a):
        o, fin = ref_fla(a["q"], a["k"], a["v"], a.get("g"), a.get("beta"), 0.8, a["initial_state"], l2, gate)
        return np.sum(o * do) + np.sum(fin * dht)

    names = list(kw) + ["initial_state"]
    grads = {n: g["dh0" if n == "initial_state" else "d" + n] for n in names}
    if delta and not l2:  # unit keys: refimpl's dk is the gradient with respect to the keys as given (as fla's);
        names.remove("k")  # the reference runs off the unit sphere in direction e, which refimpl refuses
        e = rng0(11).standard_normal(kw["k"].shape)
        pert = dict(args, k=kw["k"] + 1j * H_CS * e)
        o, fin = ref_fla(pert["q"], pert["k"], pert["v"], pert.get("g"), pert.get("beta"), 0.8, pert["initial_state"],
                         False, gate)
        want = (np.sum(o * do) + np.sum(fin * dht)).imag / H_CS
        assert abs(np.sum(g["dk"] * e) - want) <= 1e-10 * abs(want)
    _complex_step(loss, args, grads, names)
    assert list(g) == (["dq", "dk", "dv"] + (["dg"] if gate != "none" else []) + (["dbeta"] if delta else []) + ["dh0"])


# ---- 3b. packed sequences (fla's cu_seqlens) -------------------------------------------------------------

CU = np.array([0, 4, 5, 11, 17])  # four sequences of 4, 1, 6 and 6 steps, chunked from their own starts by fla


def ref_fla_packed(a, cu, scale, l2, gate):
    """The step-by-step reference run on each packed sequence from its own initial state (h0 (N, H, K, V))."""
    outs, fins = [], []
    for i, (b, e) in enumerate(zip(cu[:-1], cu[1:])):
        cut = lambda x: None if x is None else x[:, b:e]  # noqa: E731
        o, fin = ref_fla(cut(a["q"]), cut(a["k"]), cut(a["v"]), cut(a.get("g")), cut(a.get("beta")), scale,
                         a["initial_state"][i:i + 1], l2, gate)
        outs.append(o)
        fins.append(fin)
    return np.concatenate(outs, axis=1), np.concatenate(fins, axis=0)


@pytest.mark.parametrize("name, l2", FLA_CALLS)
def test_fla_packed_sequences_match_the_official_recurrence(name, l2):
    fn, gate, delta = FLA[name]
    kw, _ = fla_inputs(21, B=1, T=int(CU[-1]), gate=gate, delta=delta, l2norm=l2, state=False)
    h0 = rng0(22).standard_normal((CU.size - 1,) + (kw["q"].shape[2], kw["q"].shape[3], kw["v"].shape[3]))
    opts = {"use_qk_l2norm_in_kernel": l2} if delta else {}
    ro, rh = ref_fla_packed({**kw, "initial_state": h0}, CU, 0.7, l2, gate)
    for run in (fn, getattr(lr, name + "_loop")):
        o, ht = run(*kw.values(), scale=0.7, initial_state=h0, output_final_state=True, cu_seqlens=CU, **opts)
        close(o, ro, 1e-12, "o")
        close(ht, rh, 1e-12, "final_state")
    # no state crosses a boundary: changing the first sequence leaves the others' outputs as they were
    v2 = kw["v"].copy()
    v2[:, :CU[1]] *= 2.0
    o, _ = fn(*kw.values(), scale=0.7, initial_state=h0, cu_seqlens=CU, **opts)
    o2, _ = fn(*{**kw, "v": v2}.values(), scale=0.7, initial_state=h0, cu_seqlens=CU, **opts)
    assert np.array_equal(o2[:, CU[1]:], o[:, CU[1]:]) and not np.allclose(o2[:, :CU[1]], o[:, :CU[1]])


@pytest.mark.parametrize("name, l2", [("chunk_gla", False), ("chunk_gated_delta_rule", True)])
def test_fla_packed_vjp_by_complex_step(name, l2):
    fn, gate, delta = FLA[name]
    kw, _ = fla_inputs(23, B=1, T=int(CU[-1]), gate=gate, delta=delta, l2norm=l2, state=False)
    shape = (CU.size - 1, kw["q"].shape[2], kw["q"].shape[3], kw["v"].shape[3])
    r = rng0(24)
    h0, dht, do = r.standard_normal(shape), r.standard_normal(shape), r.standard_normal(kw["v"].shape)
    opts = {"use_qk_l2norm_in_kernel": l2} if delta else {}
    args = {**kw, "initial_state": h0}
    for vjp in (getattr(lr, name + "_vjp"), getattr(lr, name + "_vjp_loop")):
        g = vjp(*kw.values(), do, 0.8, h0, dht, cu_seqlens=CU, **opts)

        def loss(a):
            o, fin = ref_fla_packed(a, CU, 0.8, l2, gate)
            return np.sum(o * do) + np.sum(fin * dht)

        names = list(kw) + ["initial_state"]
        _complex_step(loss, args, {n: g["dh0" if n == "initial_state" else "d" + n] for n in names}, names)


def test_fla_packed_sequences_bad_input():
    kw, _ = fla_inputs(25, B=1, T=int(CU[-1]), gate="channel", state=False)
    h0 = np.zeros((4, 2, 3, 2))
    for cu, err, match in [([0, 4, 16], ValueError, r"^cu_seqlens: expected offsets from 0 to T = 17"),
                           ([2, 4, 17], ValueError, "^cu_seqlens: expected offsets from 0"),
                           ([0, 4, 4, 17], ValueError, "^cu_seqlens: expected strictly increasing"),
                           ([[0, 17]], ValueError, r"^cu_seqlens: expected shape \(N \+ 1,\)"),
                           ([0], ValueError, r"^cu_seqlens: expected shape"),
                           (np.array([0.0, 17.0]), TypeError, "^cu_seqlens: expected integer offsets")]:
        with pytest.raises(err, match=match):
            lr.chunk_gla(*kw.values(), cu_seqlens=cu)
    with pytest.raises(ValueError, match=r"^initial_state: expected shape \[N, H, K, V\] = \(4, 2, 3, 2\)"):
        lr.chunk_gla(*kw.values(), initial_state=h0[:2], cu_seqlens=CU)
    two, _ = fla_inputs(25, B=2, T=int(CU[-1]), gate="channel", state=False)
    with pytest.raises(ValueError, match="^q: packed sequences"):
        lr.chunk_gla(*two.values(), cu_seqlens=CU)
    with pytest.raises(ValueError, match=r"^dht: expected shape \[N, H, K, V\]"):
        lr.chunk_gla_vjp(*kw.values(), kw["v"], initial_state=h0, dht=h0[:1], cu_seqlens=CU)


def test_oracle_judges_packed_sequences_one_by_one():
    """random_inputs(seqlens=...) packs sequences with their cu_seqlens; the plain models run per sequence; a kernel
    that carries the state across the boundaries fails; damage confined to one (sequence, head) is named."""
    name = "linear_rnn.chunk_gla"
    inp = oracle.random_inputs(name, seed=1, seqlens=[100, 37, 260, 64], H=3, dk=16, dv=16, states=True)
    assert inp["cu_seqlens"].tolist() == [0, 100, 137, 397, 461] and inp["initial_state"].shape == (4, 3, 16, 16)
    inp["v"][:, 100:137] *= 1e-2  # the second sequence's outputs are small: its errors vanish in the whole
    inp["initial_state"][1] *= 1e-2
    want_o, want_h = lr.chunk_gla(**inp)
    assert oracle.compare(name, lr.chunk_gla, inputs=inp).passed
    f32 = oracle.compare(name, lambda **kw: (want_o.astype(np.float32), want_h.astype(np.float32)), dtype="float32",
                         inputs=inp)
    assert f32.passed and f32.cases[0].quantities[0].model == "plain float32"

    def no_reset(**kw):  # one sequence of 461 steps, from the first initial state
        kw.pop("cu_seqlens")
        return lr.chunk_gla(**{**kw, "initial_state": kw["initial_state"][:1]})[0]

    assert oracle.compare(name, no_reset, dtype="float32", inputs=inp).cases[0].quantities[0].rel_error > 0.1

    def damaged(**kw):  # the second sequence's last head off by 20 float32 ulps of its largest entry
        o = want_o.astype(np.float32)
        o[0, 100:137, 2] += np.float32(20 * 2.0**-23 * np.abs(want_o[0, 100:137, 2]).max())
        return o

    q = oracle.compare(name, damaged, dtype="float32", inputs=inp).cases[0].quantities[0]
    assert not q.passed and "packed sequences × heads, shape (4, 3)" in q.message and "the worst, (1, 2)" in q.message, q


SEQ_IDX = np.array([[0] * 4 + [1] * 1 + [2] * 6, [3] * 5 + [4] * 6])  # row 0 starts with id 0, row 1 does not


def ref_mamba_packed(a, seq_idx, opts_fixed):
    """The step-by-step reference on each run of equal ids, from 0 except the run that starts a row with id 0
    (which gets the row's initial state); the row's final state is its last run's."""
    out, fins = np.zeros(np.shape(a["x"]), complex), []
    for i, row in enumerate(seq_idx):
        cuts = [0] + (np.flatnonzero(np.diff(row)) + 1).tolist() + [row.size]
        for s, e in zip(cuts[:-1], cuts[1:]):
            cut = lambda v: None if v is None else v[i:i + 1, s:e]  # noqa: E731
            h0 = a["initial_states"][i:i + 1] if s == 0 and row[0] == 0 else None
            o, fin = ref_mamba(cut(a["x"]), cut(a["dt"]), a["A"], cut(a["B"]), cut(a["C"]), a["D"], cut(a["z"]),
                               a["dt_bias"], h0, *opts_fixed)
            out[i:i + 1, s:e] = o
        fins.append(fin)
    return out, np.concatenate(fins)


def test_mamba_packed_sequences_match_the_official_recurrence():
    kw, opts = mamba_inputs(26, b=2, L=SEQ_IDX.shape[1], H=4, G=2, P=3, N=2)
    ro, rf = ref_mamba_packed({**kw, **opts}, SEQ_IDX, (True, opts["dt_limit"]))
    for run in (lr.mamba_chunk_scan_combined, lr.mamba_chunk_scan_combined_loop):
        out, fin = run(*kw.values(), 3, **opts, seq_idx=SEQ_IDX, return_final_states=True)
        close(out, ro.real, 1e-12, "out")
        close(fin, rf.real, 1e-12, "final_states")
    one = {k: v[:1] for k, v in kw.items() if k != "A"}
    h0 = {**opts, "initial_states": opts["initial_states"][:1], "z": opts["z"][:1]}
    out, fin, varlen = lr.mamba_chunk_scan_combined(one["x"], one["dt"], kw["A"], one["B"], one["C"], 3, **h0,
                                                    seq_idx=SEQ_IDX[:1], cu_seqlens=np.array([0, 4, 5, 11]),
                                                    return_final_states=True, return_varlen_states=True)
    assert varlen.shape == (3, 4, 3, 2) and np.array_equal(varlen[-1], fin[0])
    first = lr.mamba_chunk_scan_combined(one["x"][:, :4], one["dt"][:, :4], kw["A"], one["B"][:, :4], one["C"][:, :4], 3,
                                         **{**h0, "z": h0["z"][:, :4]}, return_final_states=True)[1]
    close(varlen[0], first[0], 1e-13, "the first sequence's final state")
    for over, err, match in [(dict(seq_idx=SEQ_IDX[:, ::-1].copy()), ValueError, "^seq_idx: expected non-negative ids"),
                             (dict(seq_idx=SEQ_IDX[:1]), ValueError, r"^seq_idx: expected shape \(batch, seqlen\)"),
                             (dict(seq_idx=SEQ_IDX.astype(float)), TypeError, "^seq_idx: expected integer"),
                             (dict(return_varlen_states=True), ValueError, "^return_varlen_states: needs cu_seqlens"),
                             (dict(seq_idx=SEQ_IDX, cu_seqlens=[0, 4, 11], return_varlen_states=True), ValueError,
                              "^cu_seqlens: packed sequences")]:
        with pytest.raises(err, match=match):
            lr.mamba_chunk_scan_combined(*kw.values(), 3, **opts, **over)
    with pytest.raises(ValueError, match="^cu_seqlens: expected the offsets of seq_idx's sequences"):
        lr.mamba_chunk_scan_combined(one["x"], one["dt"], kw["A"], one["B"], one["C"], 3, seq_idx=SEQ_IDX[:1],
                                     cu_seqlens=[0, 5, 11], return_varlen_states=True)


def test_mamba_packed_vjp_by_complex_step():
    kw, opts = mamba_inputs(27, b=2, L=SEQ_IDX.shape[1], H=2, G=1, P=2, N=2)
    r = rng0(28)
    dout, dfs = r.standard_normal(kw["x"].shape), r.standard_normal(opts["initial_states"].shape)
    args = {**kw, **{k: v for k, v in opts.items() if k not in ("dt_softplus", "dt_limit")}}
    names = ["x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states"]

    def loss(a):
        out, fin = ref_mamba_packed(a, SEQ_IDX, (True, opts["dt_limit"]))
        return np.sum(out * dout) + np.sum(fin * dfs)

    for vjp in (lr.mamba_chunk_scan_combined_vjp, lr.mamba_chunk_scan_combined_vjp_loop):
        g = vjp(*kw.values(), dout, 3, **opts, dfinal_states=dfs, seq_idx=SEQ_IDX)
        _complex_step(loss, args, {n: g["d" + n] for n in names}, names)
        assert np.all(g["dinitial_states"][1] == 0)  # row 1 starts with id 3: its initial state is not read


def test_oracle_packs_mamba_sequences_by_seq_idx():
    name = "linear_rnn.mamba_chunk_scan_combined"
    inp = oracle.random_inputs(name, seed=2, seqlens=[100, 37, 260, 64], H=4, P=16, N=16, chunk_size=64, states=True)
    assert inp["seq_idx"].tolist() == [[0] * 100 + [1] * 37 + [2] * 260 + [3] * 64]
    want = lr.mamba_chunk_scan_combined(**inp, return_final_states=True)
    rep = oracle.compare(name, lambda **kw: tuple(a.astype(np.float32) for a in want), dtype="float32", inputs=inp)
    assert rep.passed and {q.model for q in rep.cases[0].quantities} == {"plain float32"}, rep

    def no_reset(**kw):
        kw.pop("seq_idx")
        return lr.mamba_chunk_scan_combined(**kw)

    q = {x.name: x for x in oracle.compare(name, no_reset, dtype="float32", inputs=inp).cases[0].quantities}
    assert not q["out"].passed and q["out"].rel_error > 1e-3
    g = oracle.random_inputs(name + "_vjp", seed=3, seqlens=[30, 50], H=2, P=4, N=4, chunk_size=16, states=True)
    rep = oracle.compare(name + "_vjp", lambda **kw: {k: v.astype(np.float32) for k, v in
                                                      lr.mamba_chunk_scan_combined_vjp(**kw).items()},
                         dtype="float32", inputs=g)
    assert rep.passed and {q.model for q in rep.cases[0].quantities} == {"plain float32"}, rep


# ---- 4. loop twins ------------------------------------------------------------------------------------


def test_loop_twins_agree():
    kw, opts = mamba_inputs(12)
    a = lr.mamba_chunk_scan_combined(*kw.values(), 4, **opts, return_final_states=True)
    b = lr.mamba_chunk_scan_combined_loop(*kw.values(), 4, **opts, return_final_states=True)
    for x, y in zip(a, b):
        close(x, y, 1e-12, "mamba loop")
    dout = rng0(13).standard_normal(kw["x"].shape)
    ga = lr.mamba_chunk_scan_combined_vjp(*kw.values(), dout, 4, **opts)
    gb = lr.mamba_chunk_scan_combined_vjp_loop(*kw.values(), dout, 4, **opts)
    assert ga.keys() == gb.keys()
    for n in ga:
        close(ga[n], gb[n], 1e-12, n)
    for name, l2 in FLA_CALLS:
        fn, gate, delta = FLA[name]
        kw, opts = fla_inputs(14, T=70, gate=gate, delta=delta, l2norm=l2)  # more than one chunk of 64
        o1, h1 = fn(*kw.values(), **opts, output_final_state=True)
        o2, h2 = getattr(lr, name + "_loop")(*kw.values(), **opts, output_final_state=True)
        close(o1, o2, 1e-12, name)
        close(h1, h2, 1e-12, name)
        do = rng0(15).standard_normal(kw["v"].shape)
        ga = getattr(lr, name + "_vjp")(*kw.values(), do, **opts)
        gb = getattr(lr, name + "_vjp_loop")(*kw.values(), do, **opts)
        for n in ga:
            close(ga[n], gb[n], 1e-11, f"{name} {n}")


# ---- 5. bad input, named in the official terms -------------------------------------------------------


def test_bad_input_names_the_official_argument():
    kw, opts = mamba_inputs(16)
    call = lambda **over: lr.mamba_chunk_scan_combined(**{**kw, "chunk_size": 4, **opts, **over})  # noqa: E731
    for over, match in [
        # refimpl's layout: x is named (dt, B and C agree with each other), not dt (tests/test_official_layouts.py)
        (dict(x=np.swapaxes(kw["x"], 1, 2)), r"^x: expected shape \(batch, seqlen, nheads, headdim\); its sizes"),
        (dict(dt=np.swapaxes(kw["dt"], 1, 2)), r"^dt: expected shape \(batch, seqlen, nheads\)"),
        (dict(B=kw["B"][:, :, :1].repeat(3, axis=2)), "^B: its ngroups = 3"),
        (dict(D=np.ones(3)), r"^D: expected shape \(nheads,\)"),
        (dict(initial_states=np.swapaxes(opts["initial_states"], -1, -2)), "^initial_states: expected shape"),
        (dict(z=kw["x"][:, :-1]), "^z: expected shape"),
        (dict(dt_bias=np.ones(3)), "^dt_bias: expected shape"),
        (dict(dt_limit=(1.0, 0.5)), "^dt_limit: expected"),
        (dict(dt_limit=(np.nan, 1.0)), "^dt_limit: expected"),
        (dict(A=-kw["A"]), "^A: expected A <= 0"),
        (dict(x=np.where(np.arange(3) == 1, np.nan, kw["x"])), "^x: expected finite"),
    ]:
        with pytest.raises(ValueError, match=match):
            call(**over)
    with pytest.raises(TypeError, match="dt_softplus"):
        call(dt_softplus="yes")
    with pytest.raises(TypeError):
        call(seq_idx=np.zeros((2, 9), int), return_varlen_states=True, cu_seqlens=[0, 9], foo=1)  # unknown options
    with pytest.raises(ValueError, match="^dout: expected shape"):
        lr.mamba_chunk_scan_combined_vjp(*kw.values(), kw["x"][:, :-1], 4, **opts)
    with pytest.raises(ValueError, match="^dfinal_states: expected shape"):
        lr.mamba_chunk_scan_combined_vjp(*kw.values(), kw["x"], 4, **opts, dfinal_states=np.ones((2, 4, 2, 3)))

    kw, opts = fla_inputs(17, gate="head", delta=True)
    f = lambda **over: lr.chunk_gated_delta_rule(**{**kw, **opts, **over})  # noqa: E731
    for over, match in [
        (dict(q=np.swapaxes(kw["q"], 1, 2)), r"^q: expected shape \[B, T, H, K\]; its sizes"),  # k, v, g, beta agree
        (dict(k=np.swapaxes(kw["k"], 1, 2), v=np.swapaxes(kw["v"], 1, 2)),
         r"^k: expected shape \[B, T, H, K\] with B, T, H = .* its T and H are q's exchanged"),
        (dict(g=np.swapaxes(kw["g"], 1, 2)), r"^g: expected shape \[B, T, H\]"),
        (dict(g=-kw["g"]), "^g: expected log-space gates <= 0"),
        (dict(beta=kw["beta"][..., None]), r"^beta: expected shape \[B, T, H\]"),
        (dict(initial_state=np.swapaxes(opts["initial_state"], -1, -2)), r"^initial_state: expected shape \[N, H, K, V\]"),
        (dict(k=2 * kw["k"]), "use_qk_l2norm_in_kernel"),
        (dict(v=np.where(np.arange(2) == 0, np.inf, kw["v"])), "^v: expected finite"),
    ]:
        with pytest.raises(ValueError, match=match):
            f(**over)
    assert np.isfinite(f(k=2 * kw["k"], use_qk_l2norm_in_kernel=True)[0]).all()  # the fix the message names
    with pytest.raises(TypeError, match="use_qk_l2norm_in_kernel"):
        f(use_qk_l2norm_in_kernel=1)
    with pytest.raises(ValueError, match="^q: packed sequences"):  # B = 2 batch rows: packing needs one
        f(cu_seqlens=np.array([0, 9]))
    with pytest.raises(ValueError, match="^do: expected shape"):
        lr.chunk_gated_delta_rule_vjp(*kw.values(), kw["v"][:, :-1], **opts)
    with pytest.raises(ValueError, match="^dht: expected shape"):
        lr.chunk_gated_delta_rule_vjp(*kw.values(), kw["v"], **opts, dht=np.ones((2, 2, 2, 3)))
    kw, opts = fla_inputs(18, gate="channel")
    with pytest.raises(ValueError, match=r"^g: expected shape \[B, T, H, K\]"):
        lr.chunk_gla(kw["q"], kw["k"], kw["v"], kw["g"][..., 0])


# ---- 6. the low-precision oracle: refimpl's own results rounded pass, planted bugs fail -------------


NAMES = ["mamba_chunk_scan_combined", "chunk_gla", "chunk_simple_gla", "chunk_delta_rule", "chunk_gated_delta_rule",
         "mamba_chunk_scan_combined_vjp", "chunk_gla_vjp", "chunk_simple_gla_vjp", "chunk_delta_rule_vjp",
         "chunk_gated_delta_rule_vjp"]


@pytest.mark.parametrize("tier", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", NAMES)
def test_rounded_refimpl_passes_with_plain_models(name, tier):
    fn = getattr(lr, name)
    rounded = lambda **kw: _round(fn(**kw), tier)  # noqa: E731
    report = oracle.compare("linear_rnn." + name, rounded, dtype=tier)
    assert report.cases and report.passed, [(c.case, c.message, c.first_failure) for c in report.cases]
    for c in report.cases:
        judged = [q for q in c.quantities if "not returned" not in q.message]
        assert judged and all(q.model == f"plain {tier}" for q in judged), [(q.name, q.model) for q in c.quantities]


def _round(res, tier):
    if isinstance(res, dict):
        return {k: oracle.round_to(v, tier) for k, v in res.items()}
    if isinstance(res, tuple):
        return tuple(None if v is None else oracle.round_to(v, tier) for v in res)
    return oracle.round_to(res, tier)


def _mamba_z_before_D(**kw):  # the gate applied to y before D x is added
    z, D = kw.pop("z"), kw.pop("D")
    out = lr.mamba_chunk_scan_combined(**kw) * z / (1 + np.exp(-z))
    return out + D * kw["x"]


def _mamba_bias_after_softplus(**kw):
    bias = kw.pop("dt_bias")
    return lr.mamba_chunk_scan_combined(**{**kw, "dt": np.log1p(np.exp(kw["dt"])) + bias, "dt_softplus": False})


def _mamba_state_transposed(**kw):
    h0 = kw["initial_states"]  # (b, h, p, n) with p = 2, n = 3: read as (n, p) and reshaped
    return lr.mamba_chunk_scan_combined(**{**kw, "initial_states": np.swapaxes(h0, -1, -2).reshape(h0.shape)})


def _gla_state_transposed(**kw):
    S = kw["initial_state"]
    return lr.chunk_gla(**{**kw, "initial_state": np.swapaxes(S, -1, -2).reshape(S.shape)})


def _delta_no_q_norm(**kw):  # only k normalized
    q = kw["q"] / np.sqrt((kw["q"] ** 2).sum(-1, keepdims=True))
    k = kw["k"] / np.sqrt((kw["k"] ** 2).sum(-1, keepdims=True) + 1e-6)
    return lr.chunk_delta_rule(**{**kw, "q": 3.0 * q, "k": k, "use_qk_l2norm_in_kernel": False})


def _gdelta_vjp_no_norm_chain(**kw):  # the gradient of the normalized k returned as dk
    g = lr.chunk_gated_delta_rule_vjp(**kw)
    raw = lr.chunk_gated_delta_rule_vjp(**{**kw, "k": lr._check_fla(kw["q"], kw["k"], kw["v"], kw["g"], kw["beta"], None,
                                                                      None, "head", True, True).k.swapaxes(1, 2),
                                           "use_qk_l2norm_in_kernel": False, "q": kw["q"]})
    return {**g, "dk": raw["dk"]}


def _mamba_vjp_no_clamp_mask(**kw):
    g = lr.mamba_chunk_scan_combined_vjp(**kw)
    return {**g, "ddt": g["ddt"] + 0.3 * np.abs(g["ddt"]).max() * (g["ddt"] == 0)}


@pytest.mark.parametrize("tier", ["float32", "bfloat16"])
@pytest.mark.parametrize("name, bug, quantity", [
    ("mamba_chunk_scan_combined", _mamba_z_before_D, "out"),
    ("mamba_chunk_scan_combined", _mamba_bias_after_softplus, "out"),
    ("mamba_chunk_scan_combined", _mamba_state_transposed, "out"),
    ("chunk_gla", _gla_state_transposed, "o"),
    ("chunk_delta_rule", _delta_no_q_norm, "o"),
    ("chunk_gated_delta_rule_vjp", _gdelta_vjp_no_norm_chain, "dk"),
    ("mamba_chunk_scan_combined_vjp", _mamba_vjp_no_clamp_mask, "ddt"),
])
def test_planted_bugs_fail(name, bug, quantity, tier):
    # the committed case each bug was planted for (the generated ones at the kernels' tiles come first)
    cases = [c.split("/")[1] for c in oracle.case_names("linear_rnn." + name) if oracle._CASES_BY_NAME[c].sizes is None][:1]
    report = oracle.compare("linear_rnn." + name, lambda **kw: _round(bug(**kw), tier), dtype=tier, cases=cases)
    c = report.cases[0]
    assert c.status == "fail" and c.first_failure == quantity, (c.status, c.message, c.first_failure)


@pytest.mark.parametrize("name", ["linear_rnn.mamba_chunk_scan_combined", "linear_rnn.chunk_gla", "linear_rnn.chunk_simple_gla",
                                  "linear_rnn.chunk_delta_rule", "linear_rnn.chunk_gated_delta_rule"])
@pytest.mark.parametrize("vjp", [False, True])
def test_random_inputs_of_the_official_interfaces(name, vjp):
    """random_inputs draws realistic inputs in the official layouts (with states, the final state and its
    cotangent); refimpl's own results rounded to float32 pass compare with every quantity judged by a plain model."""
    from refimpl._precision import store

    name = name + ("_vjp" if vjp else "")
    sizes = dict(L=130, H=3, states=True, **({"gated": True} if "mamba" in name else {"dk": 8, "dv": 4}))
    inp = oracle.random_inputs(name, seed=4, **sizes)
    again = oracle.random_inputs(name, seed=4, **sizes)  # reproducible from the seed
    assert sorted(again) == sorted(inp) and all(np.array_equal(again[k], v) for k, v in inp.items())
    seq = inp["x"] if "mamba" in name else inp["q"]
    assert seq.shape[:3] == (1, 130, 3)  # (batch, seqlen, heads, ·)
    fn = getattr(lr, name.split(".")[1])

    def run(**kw):
        r = fn(**kw, **({"return_final_states": True} if name == "linear_rnn.mamba_chunk_scan_combined" else {}))
        if isinstance(r, dict):
            return {k: store(v, "float32") for k, v in r.items()}
        return tuple(None if a is None else store(a, "float32") for a in (r if isinstance(r, tuple) else (r,)))

    report = oracle.compare(name, run, dtype="float32", inputs=inp)
    qs = report.cases[0].quantities
    assert report.passed and {q.model for q in qs} == {"plain float32"}, report.table()
    assert len(qs) >= (5 if vjp else 2)  # the state's gradient / the final state are judged too


def test_outputs_returned_as_none_are_not_returned_and_tuple_options_stay_tuples():
    """An independent kernel author's trial: fla returns (o, None) without output_final_state and a vjp
    tuple ending in dh0=None without h0 — both failed (\"dtype object is not numeric\", \"expected 4\"); and
    dt_limit reached the kernel as a float32 array, so mamba_ssm's `dt_limit != (0.0, float("inf"))` raised."""
    inp = oracle.random_inputs("linear_rnn.chunk_gla", seed=1, L=40, H=2, dk=4, dv=3)
    assert "output_final_state" not in inp
    for dtype in ("float64", "float32"):
        rep = oracle.compare("linear_rnn.chunk_gla", lr.chunk_gla, dtype=dtype, inputs=inp)
        assert rep.passed, rep.table()
        rep = oracle.compare("linear_rnn.chunk_gla", lambda **kw: {"o": lr.chunk_gla(**kw)[0], "final_state": None},
                             dtype=dtype, inputs=inp)
        assert rep.passed, rep.table()
    grad = oracle.random_inputs("linear_rnn.chunk_gla_vjp", seed=1, L=40, H=2, dk=4, dv=3)

    def vjp_tuple(**kw):  # fla's backward returns (dq, dk, dv, dg, dh0) with dh0 = None without h0
        g = lr.chunk_gla_vjp(**kw)
        return g["dq"], g["dk"], g["dv"], g["dg"], None

    assert oracle.compare("linear_rnn.chunk_gla_vjp", vjp_tuple, inputs=grad).passed
    missing = oracle.compare("linear_rnn.chunk_gla", lambda **kw: {"o": None}, inputs=inp)  # a required output
    assert not missing.passed and "o          FAIL returned None for o, a required output" in missing.table()
    seen = []

    def mamba(**kw):
        seen.append(kw["dt_limit"])
        assert kw["dt_limit"] != (0.0, float("inf"))  # the idiom of mamba_ssm's reference
        return lr.mamba_chunk_scan_combined(**kw)

    m = oracle.random_inputs("linear_rnn.mamba_chunk_scan_combined", seed=1, L=40, H=2, P=3, N=4)
    rep = oracle.compare("linear_rnn.mamba_chunk_scan_combined", mamba, dtype="bfloat16",
                         inputs={**m, "dt_limit": (0.01, 0.5)})
    assert rep.passed and isinstance(seen[0], tuple), rep.table()


def test_chunk_simple_gla_g_gamma_is_a_constant_decay_per_head():
    """fla's chunk_simple_gla(q, k, v, g=None, g_gamma=None, scale, ...): g_gamma alone is retention with
    γ = e^{g_gamma}; with g it adds to every step's log-gate; it has no gradient (a constant)."""
    rng = np.random.default_rng(3)
    B, T, H, K, V = 2, 70, 3, 4, 2
    q, k = rng.normal(size=(2, B, T, H, K))
    v, do = rng.normal(size=(2, B, T, H, V))
    g, gam = -rng.uniform(0, 0.5, (B, T, H)), np.log([0.9, 0.5, 0.99])
    sw = lambda a: np.swapaxes(a, 1, 2)  # noqa: E731
    o, _ = lr.chunk_simple_gla(q, k, v, None, gam)  # fla's positional order: g, g_gamma, scale
    np.testing.assert_allclose(o, sw(lr.retention_loop(sw(q), sw(k), sw(v), np.exp(gam))), rtol=1e-13, atol=1e-14)
    for f in (lr.chunk_simple_gla, lr.chunk_simple_gla_loop):
        np.testing.assert_allclose(f(q, k, v, g, gam, 0.7)[0], lr.chunk_simple_gla(q, k, v, g + gam, None, 0.7)[0],
                                   rtol=1e-13, atol=1e-14)
    for f in (lr.chunk_simple_gla_vjp, lr.chunk_simple_gla_vjp_loop):
        alone = f(q, k, v, None, do, g_gamma=gam)
        assert sorted(alone) == ["dk", "dq", "dv"]  # no dg: g was not given
        ref = lr.chunk_simple_gla_vjp(q, k, v, np.broadcast_to(gam, (B, T, H)).copy(), do)
        for n in alone:
            np.testing.assert_allclose(alone[n], ref[n], rtol=1e-12, atol=1e-13)
        both = f(q, k, v, g, do, g_gamma=gam)
        ref = lr.chunk_simple_gla_vjp(q, k, v, g + gam, do)
        for n in both:  # d/dg of g + g_gamma is the log-gate gradient
            np.testing.assert_allclose(both[n], ref[n], rtol=1e-12, atol=1e-13)
    with pytest.raises(ValueError, match="^g: chunk_simple_gla needs"):
        lr.chunk_simple_gla(q, k, v)
    with pytest.raises(ValueError, match="^g_gamma: expected shape"):
        lr.chunk_simple_gla(q, k, v, None, gam[:2])
    with pytest.raises(ValueError, match="^g_gamma: expected log-space decays <= 0"):
        lr.chunk_simple_gla(q, k, v, None, -gam)
    inp = {"q": q, "k": k, "v": v, "g_gamma": gam, "output_final_state": True}
    rep = oracle.compare("linear_rnn.chunk_simple_gla", lambda **kw: tuple(a.astype(np.float32) for a in
                                                                          lr.chunk_simple_gla(**kw)),
                         dtype="float32", inputs=inp)
    assert rep.passed and {x.model for x in rep.cases[0].quantities} == {"plain float32"}, rep.table()
    grad = {"q": q, "k": k, "v": v, "g": None, "do": do, "g_gamma": gam}  # g is positional: given as None
    rep = oracle.compare("linear_rnn.chunk_simple_gla_vjp",
                         lambda g=None, **kw: {n: a.astype(np.float32) for n, a in lr.chunk_simple_gla_vjp(g=g, **kw).items()},
                         dtype="float32", inputs=grad)
    assert rep.passed and [x.name for x in rep.cases[0].quantities] == ["dq", "dk", "dv"], rep.table()


# ---- 6. offsets and ids: signed int64 before any check; ragged input; cu_seqlens never ignored -------------------

FLA_FNS = [(name, suffix) for name in FLA for suffix in ("", "_loop", "_vjp", "_vjp_loop")]


def _fla_call(name, suffix, T=9, **over):
    """A call of an fla function (forward or _vjp, with twin), one batch row of T steps, with ``over``."""
    fn, gate, delta = FLA[name]
    kw, _ = fla_inputs(40, B=1, T=T, gate=gate, delta=delta, l2norm=delta, state=False)
    args = list(kw.values()) + ([kw["v"]] if "vjp" in suffix else [])  # the cotangent do after the inputs
    opts = {"use_qk_l2norm_in_kernel": True} if delta else {}
    return getattr(lr, name + suffix)(*args, **opts, **over)


@pytest.mark.parametrize("name, suffix", FLA_FNS)
def test_fla_unsigned_offsets_are_checked_as_signed(name, suffix):
    """np.diff of unsigned offsets wraps around (3 − 6 = 4294967293 in uint32): decreasing uint32 cu_seqlens passed
    the check, and the _vjp forms returned gradients of 12 steps for 9 (steps 3–5 counted twice). Offsets are cast
    to int64 first; valid unsigned offsets give the int64 result bit for bit."""
    with pytest.raises(ValueError, match=r"^cu_seqlens: expected strictly increasing offsets .* got \[0, 6, 3, 9\]"):
        _fla_call(name, suffix, cu_seqlens=np.array([0, 6, 3, 9], np.uint32))
    with pytest.raises(ValueError, match="^cu_seqlens: expected integer offsets .* in the int64 range"):
        _fla_call(name, suffix, cu_seqlens=np.array([0, 2**63, 9], np.uint64))
    with pytest.raises(TypeError, match="^cu_seqlens: expected integer offsets"):
        _fla_call(name, suffix, cu_seqlens=np.array([0.0, 4.0, 9.0]))
    want = _fla_call(name, suffix, cu_seqlens=np.array([0, 4, 9]))
    for dtype in (np.uint8, np.uint32, np.uint64, np.int32):
        got = _fla_call(name, suffix, cu_seqlens=np.array([0, 4, 9], dtype))
        pairs = zip(got.values(), want.values()) if isinstance(got, dict) else zip(got, want)
        assert all(np.array_equal(a, b) for a, b in pairs), dtype


def test_mamba_unsigned_ids_are_checked_as_signed():
    """uint32 seq_idx [[1, 1, 1, 0, …]] (ids that go back, refused as int64 by policy) was accepted."""
    kw, _ = mamba_inputs(41, b=1, L=9, H=2, G=1, P=2, N=3, full=False)
    ids = np.array([[1, 1, 1, 0, 0, 0, 0, 0, 0]])
    for fn in (lr.mamba_chunk_scan_combined, lr.mamba_chunk_scan_combined_loop):
        for dtype in (np.int64, np.uint32, np.uint64):
            with pytest.raises(ValueError, match="^seq_idx: expected non-negative ids, non-decreasing"):
                fn(*kw.values(), 4, seq_idx=ids.astype(dtype))
        with pytest.raises(ValueError, match="^seq_idx: expected integer sequence ids .* in the int64 range"):
            fn(*kw.values(), 4, seq_idx=np.full((1, 9), 2**63, np.uint64))
        good = np.array([[0, 0, 0, 1, 1, 2, 2, 2, 2]])
        assert np.array_equal(fn(*kw.values(), 4, seq_idx=good.astype(np.uint16)), fn(*kw.values(), 4, seq_idx=good))
    dout = rng0(42).standard_normal(kw["x"].shape)
    for vjp in (lr.mamba_chunk_scan_combined_vjp, lr.mamba_chunk_scan_combined_vjp_loop):
        with pytest.raises(ValueError, match="^seq_idx: expected non-negative ids"):
            vjp(*kw.values(), dout, 4, seq_idx=ids.astype(np.uint32))


def test_ragged_offsets_and_ids_are_named():
    """A ragged cu_seqlens or seq_idx gave NumPy's 'setting an array element with a sequence', naming nothing."""
    for suffix in ("", "_loop", "_vjp", "_vjp_loop"):
        with pytest.raises(TypeError, match="^cu_seqlens: could not convert to an array"):
            _fla_call("chunk_gla", suffix, cu_seqlens=[[0, 1], [2]])
    kw, _ = mamba_inputs(43, b=1, L=2, H=1, G=1, P=1, N=1, full=False)
    for fn in (lr.mamba_chunk_scan_combined, lr.mamba_chunk_scan_combined_loop):
        with pytest.raises(TypeError, match="^seq_idx: could not convert to an array"):
            fn(*kw.values(), 2, seq_idx=[[0], [0, 1]])


def test_ragged_arrays_in_the_vjp_forms_are_named():
    """The _vjp forms read np.shape of their inputs before validating them: a ragged q (x, …) gave NumPy's bare
    message; the overflow guard every public function wears now names the argument as the forward forms do."""
    rag = [[1.0, 2.0], [3.0]]
    r = rng0(44)
    q, k, v = r.standard_normal((3, 2, 5, 3))
    calls = {
        "q": lambda: lr.gated_linear_attention_vjp(rag, k, v, -np.ones((2, 5)), v),
        "x": lambda: lr.ssd_vjp(rag, np.ones((2, 5)), -np.ones(2), np.ones((1, 5, 2)), np.ones((1, 5, 2)), None,
                                np.ones((2, 5, 2))),
        "k": lambda: lr.retention_vjp(q, rag, v, np.array([0.5, 0.9]), v),
        "beta": lambda: lr.delta_rule_vjp(q, k / np.linalg.norm(k, axis=-1, keepdims=True), v, [[0.5] * 5, [0.5]], v),
        "dy": lambda: lr.gated_linear_attention_vjp_loop(q, k, v, -np.ones((2, 5)), [[[1.0]], [[1.0, 2.0]]]),
    }
    for name, call in calls.items():
        with pytest.raises(TypeError, match=f"^{name}: could not convert to an array"):
            call()


def test_mamba_cu_seqlens_is_checked_whenever_given():
    """mamba_ssm reads cu_seqlens only for return_varlen_states and ignores it otherwise; refimpl ignored it too —
    a string, float or decreasing offsets, offsets that contradict seq_idx, or cu_seqlens without seq_idx (a caller
    expecting it to pack sequences got one unpacked sequence). It is checked whenever given."""
    r = rng0(45)
    x, dt, B = r.standard_normal((1, 9, 2, 3)), r.standard_normal((1, 9, 2)), r.standard_normal((1, 9, 1, 4))
    sid = np.array([[0, 0, 0, 1, 1, 1, 1, 2, 2]])
    for fn in (lr.mamba_chunk_scan_combined, lr.mamba_chunk_scan_combined_loop):
        call = lambda **kw: fn(x, dt, -np.ones(2), B, B, 4, **kw)  # noqa: E731
        for kw, err, match in [
            (dict(cu_seqlens="abc", seq_idx=sid), TypeError, "^cu_seqlens: expected a number or array, got str"),
            (dict(cu_seqlens=np.array([0.5, 3.2]), seq_idx=sid), TypeError, "^cu_seqlens: expected integer offsets"),
            (dict(cu_seqlens=np.array([0, 7, 3, 9]), seq_idx=sid), ValueError, "^cu_seqlens: expected strictly increasing"),
            (dict(cu_seqlens=np.array([0, 3, 7, 9])), ValueError, "^cu_seqlens: packs nothing without seq_idx"),
            (dict(cu_seqlens=np.array([0, 4, 7, 9]), seq_idx=sid), ValueError,
             r"^cu_seqlens: expected the offsets of seq_idx's sequences, \[0, 3, 7, 9\]"),
            (dict(cu_seqlens=[[0, 1], [9]], seq_idx=sid), TypeError, "^cu_seqlens: could not convert"),
        ]:
            with pytest.raises(err, match=match):
                call(**kw)
        assert np.array_equal(call(cu_seqlens=np.array([0, 3, 7, 9], np.uint32), seq_idx=sid), call(seq_idx=sid))


# ---- 7. use_qk_l2norm_in_kernel: any finite raw q and k --------------------------------------------------------


def _short_raw_keys(seed, T=8, H=2, K=3):
    """Raw keys that stay short after fla's normalization: zero keys (padding), keys of norm ~1e-3 and ~1e-5."""
    kw, opts = fla_inputs(seed, B=1, T=T, H=H, K=K, gate="head", delta=True, l2norm=True)
    k = kw["k"].copy()
    k[:, 1] = 0.0  # a padded position
    k[:, 3] *= 1e-3 / np.linalg.norm(k[:, 3], axis=-1, keepdims=True)
    k[:, 6] *= 1e-5 / np.linalg.norm(k[:, 6], axis=-1, keepdims=True)
    kw["q"][:, 5] = 0.0  # a zero query too
    return {**kw, "k": k}, opts


@pytest.mark.parametrize("name", ["chunk_delta_rule", "chunk_gated_delta_rule"])
def test_fla_l2norm_accepts_zero_and_short_raw_keys(name):
    """fla runs raw keys of norm below ~0.011 (zero keys of padding included), which its x / sqrt(Σx² + 1e-6)
    leaves short: refimpl refused them. Forward, loop twin and packed against the step-by-step reference."""
    fn, gate, _ = FLA[name]
    kw, opts = _short_raw_keys(46)
    if gate == "none":
        kw.pop("g")
    ro, rh = ref_fla(kw["q"], kw["k"], kw["v"], kw.get("g"), kw["beta"], 0.7, opts["initial_state"], True, gate)
    assert np.linalg.norm(l2n(kw["k"])[:, [1, 3, 6]], axis=-1).max() < 0.75  # short after it: 0, 0.707, 0.01
    for run in (fn, getattr(lr, name + "_loop")):
        o, ht = run(*kw.values(), 0.7, opts["initial_state"], output_final_state=True, use_qk_l2norm_in_kernel=True)
        close(o, ro, 1e-12, "o")
        close(ht, rh, 1e-12, "final_state")
        cu = np.array([0, 2, 8])
        o, _ = run(*kw.values(), 0.7, np.stack([opts["initial_state"][0]] * 2), cu_seqlens=cu, use_qk_l2norm_in_kernel=True)
        assert np.isfinite(o).all()


@pytest.mark.parametrize("name", ["chunk_delta_rule", "chunk_gated_delta_rule"])
def test_fla_l2norm_vjp_with_zero_and_short_raw_keys_by_complex_step(name):
    fn, gate, _ = FLA[name]
    kw, opts = _short_raw_keys(47, T=7)
    if gate == "none":
        kw.pop("g")
    r = rng0(48)
    do, dht = r.standard_normal(kw["v"].shape), r.standard_normal(opts["initial_state"].shape)
    args = {**kw, "initial_state": opts["initial_state"]}

    def loss(a):
        o, fin = ref_fla(a["q"], a["k"], a["v"], a.get("g"), a["beta"], 0.8, a["initial_state"], True, gate)
        return np.sum(o * do) + np.sum(fin * dht)

    names = list(kw) + ["initial_state"]
    for vjp in (getattr(lr, name + "_vjp"), getattr(lr, name + "_vjp_loop")):
        g = vjp(*kw.values(), do, 0.8, opts["initial_state"], dht, use_qk_l2norm_in_kernel=True)
        _complex_step(loss, args, {n: g["dh0" if n == "initial_state" else "d" + n] for n in names}, names)


def test_fla_l2norm_of_huge_raw_keys_is_the_unit_key():
    """Σ x² overflowed for raw entries above ~1e154: such keys became zero vectors (refused as 'a key of norm 0';
    a huge query silently gave o = 0). Scaled by a power of two first, they normalize to their unit vectors."""
    kw, opts = fla_inputs(49, B=1, T=6, gate="head", delta=True, l2norm=True)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    kw["q"], kw["k"] = unit(kw["q"]), unit(kw["k"])
    big = {**kw, "q": kw["q"] * 1e160, "k": kw["k"] * 1e200}  # fla's eps is far below the rounding of Σ x² there
    ro, rh = ref_fla(kw["q"], kw["k"], kw["v"], kw["g"], kw["beta"], 0.7, opts["initial_state"], False, "head")
    for run in (lr.chunk_gated_delta_rule, lr.chunk_gated_delta_rule_loop):
        o, ht = run(*big.values(), 0.7, opts["initial_state"], output_final_state=True, use_qk_l2norm_in_kernel=True)
        close(o, ro, 1e-12, "o")
        close(ht, rh, 1e-12, "final_state")
    # the gradients of x / |x| scale as 1/|x|: against raw vectors of norm 10 (where eps moves them by ~5e-9)
    ten = {**kw, "q": kw["q"] * 10.0, "k": kw["k"] * 10.0}
    for vjp in (lr.chunk_gated_delta_rule_vjp, lr.chunk_gated_delta_rule_vjp_loop):
        g = vjp(*big.values(), kw["v"], 0.7, opts["initial_state"], use_qk_l2norm_in_kernel=True)
        g10 = vjp(*ten.values(), kw["v"], 0.7, opts["initial_state"], use_qk_l2norm_in_kernel=True)
        close(g["dq"] * 1e160, g10["dq"] * 10.0, 1e-7, "dq")
        close(g["dk"] * 1e200, g10["dk"] * 10.0, 1e-7, "dk")
        for n in ("dv", "dg", "dbeta", "dh0"):
            close(g[n], g10[n], 1e-7, n)


def test_delta_rule_still_refuses_short_keys_it_is_given():
    """Only the keys an fla call normalized itself skip the unit-key check: delta_rule and delta_rule_vjp (refimpl's
    layout) refuse short keys as before, also right after an fla call with use_qk_l2norm_in_kernel."""
    kw, opts = _short_raw_keys(50)
    lr.chunk_gated_delta_rule(*kw.values(), use_qk_l2norm_in_kernel=True)
    q, k, v, beta = (np.swapaxes(kw[n], 1, 2) for n in ("q", "k", "v", "beta"))
    k = l2n(k)  # fla's normalization done by the caller: keys 1, 3 and 6 are short
    for call in (lambda: lr.delta_rule(q, k, v, beta), lambda: lr.delta_rule_loop(q, k, v, beta),
                 lambda: lr.delta_rule_vjp(q, k, v, beta, v), lambda: lr.delta_rule_vjp_loop(q, k, v, beta, v)):
        with pytest.raises(ValueError, match="^k: the delta rule expects l2-normalized keys"):
            call()
    with pytest.raises(ValueError, match="^k: the delta rule expects l2-normalized keys .* use_qk_l2norm_in_kernel=True"):
        lr.chunk_gated_delta_rule(*kw.values())  # raw short keys without the flag
