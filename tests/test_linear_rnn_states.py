"""Initial states and the final state's cotangent of the linear recurrences of :mod:`refimpl.linear_rnn`.

``initial_state`` (S_{−1}, the state before the first step: Mamba-2's ``initial_states``, fla's
``initial_state`` transposed) on the forwards, and ``initial_state`` / ``dfinal_state`` (the cotangent
of S_{L−1}, fla's ``dht``) on the backward passes, which return ``dinitial_state`` (fla's ``dh0``).

Oracles, each independent of the code under test:

* the three forms against each other: the chunked algorithm, the recurrence (``*_loop``) and the
  dense form, whose initial-state term ``S_{−1}(q_t ⊙ e^{Σ_{r≤t} log g_r})`` is computed apart;
* splitting a sequence: a run of L1 steps, then the rest from its final state, is one run — forwards,
  and backwards (the second part's ``dinitial_state`` fed as the first part's ``dfinal_state``);
* complex-step derivatives (Squire & Trapp 1998) of recurrences written here again, one step at a
  time, in complex arithmetic, of the loss ``ℓ = Σ dy ∘ o + Σ dS ∘ S_{L−1}``;
* closed forms where the state alone carries the gradient (v = 0 or q = 0), in extended precision,
  for gradients through an initial state decayed by e^{−40} and a final state after a gate e^{−50}:
  entries of ~1e−18 to ~1e−23 to their last digits, where a difference of the chunk's larger terms
  would leave rounding noise of ~1e−16.

Tolerances: forms against each other 1e-12 norm-wise (``FORMS``, the measured errors ~1e-15); complex
step 1e-12; entries through strongly decayed states 1e-12 relative each (``ENTRY``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from refimpl import linear_rnn as lr
from _oracles import delta_recurrence  # noqa: E402 (tests/ is on sys.path)
from _recording import recorder  # noqa: E402

WORST_ERRORS, close, record = recorder()

FORMS = 1e-12  # chunked vs recurrence vs dense, and the split runs, norm-wise relative
CSTEP = 1e-12  # vjp vs complex step, norm-wise relative
ENTRY = 1e-12  # relative error of each entry of a gradient through a strongly decayed state
H = 1e-30  # the complex step


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _log_gates(regime, shape, rng):
    """'mixed' (log g ~ −U(0, 2)); 'near 0' (log g = −50: every chunk decays below e^-30); 'near 1' (−1e-9);
    'strong stretches' (~1 with stretches of −60 and −800: both paths of the chunked algorithms, underflow)."""
    if regime == "mixed":
        return -rng.uniform(0.0, 2.0, shape)
    if regime == "near 0":
        return np.full(shape, -50.0)
    if regime == "near 1":
        return -1e-9 * rng.uniform(0.5, 1.0, shape)
    a = -rng.uniform(0.0, 1e-3, shape)
    L = shape[-1]
    a[..., L // 4 : L // 4 + 9] = -60.0
    a[..., L // 2 : L // 2 + 5] = -800.0
    return a


def _gla_case(seed, L=37, per_channel=True, regime="mixed", batch=(2, 3), dk=5, dv=4):
    rng = np.random.default_rng(seed)
    q, k = rng.normal(size=(2, *batch, L, dk))
    v, dy = rng.normal(size=(2, *batch, L, dv))
    lg = _log_gates(regime, (*batch, dk, L) if per_channel else (*batch, L), rng)
    lg = np.swapaxes(lg, -1, -2) if per_channel else lg
    S0, dS = rng.normal(size=(2, *batch, dv, dk))
    return dict(q=q, k=k, v=v, log_g=lg), dy, S0, dS


def _ssd_case(seed, L=37, H=4, G=2, P=3, N=5, batch=(2,), dt_scale=1.0):
    rng = np.random.default_rng(seed)
    x, dy = rng.normal(size=(2, *batch, H, L, P))
    dt = dt_scale * np.exp(rng.normal(size=(*batch, H, L)) - 1.0)
    A = -rng.uniform(0.1, 2.0, H)
    B, C = rng.normal(size=(2, *batch, G, L, N))
    h0, dh = rng.normal(size=(2, *batch, H, P, N))
    return dict(x=x, dt=dt, A=A, B=B, C=C, D=rng.normal(size=H)), dy, h0, dh


def _delta_case(seed, L=37, gated=True, regime="mixed", batch=(3,), dk=4, dv=3, beta=(0.05, 1.9)):
    rng = np.random.default_rng(seed)
    q, k = rng.normal(size=(2, *batch, L, dk))
    v, dy = rng.normal(size=(2, *batch, L, dv))
    args = dict(q=q, k=_unit(k), v=v, beta=rng.uniform(*beta, (*batch, L)))
    if gated:
        args["log_g"] = _log_gates(regime, (*batch, L), rng)
    S0, dS = rng.normal(size=(2, *batch, dv, dk))
    return args, dy, S0, dS


def _ret_case(seed, L=37):
    rng = np.random.default_rng(seed)
    q, k, v, dy = rng.normal(size=(4, 2, 3, L, 4))
    S0, dS = rng.normal(size=(2, 2, 3, 4, 4))
    return dict(q=q, k=k, v=v, gamma=np.array([0.9, 0.5, 1e-30])), dy, S0, dS


# ---------------------------------------------------------------------------------------------
# Forward: the three forms
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 5, 8, 64])
@pytest.mark.parametrize("regime", ["mixed", "near 0", "near 1", "strong stretches"])
@pytest.mark.parametrize("per_channel", [True, False])
def test_gla_three_forms_from_an_initial_state(per_channel, regime, chunk):
    args, _, S0, _ = _gla_case(chunk, per_channel=per_channel, regime=regime)
    what = f"GLA {per_channel=} {regime} c={chunk}"
    for scale in (None, 0.7):
        kw = dict(scale=scale, initial_state=S0)
        o, st = lr.gated_linear_attention(**args, chunk_size=chunk, return_chunk_states=True, **kw)
        ol, stl = lr.gated_linear_attention_loop(**args, chunk_size=chunk, return_chunk_states=True, **kw)
        close(o, ol, rtol=FORMS, what=f"{what}: chunked vs recurrence")
        close(st, stl, rtol=FORMS, what=f"{what}: chunk states, chunked vs recurrence")
        close(lr.gated_linear_attention(**args, chunk_size=chunk, **kw), ol, rtol=FORMS, what=f"{what}: no states kept")
        close(lr.gated_linear_attention_parallel(**args, **kw), ol, rtol=FORMS, what=f"{what}: dense vs recurrence")
    # the state is read: a form that ignored it would differ from the run without it (except where it decays to 0)
    if regime != "near 0":
        assert np.linalg.norm(ol - lr.gated_linear_attention_loop(**args, scale=0.7)) > 1e-3 * np.linalg.norm(ol)


@pytest.mark.parametrize("chunk", [1, 6, 64])
def test_retention_three_forms_from_an_initial_state(chunk):
    args, _, S0, _ = _ret_case(chunk)
    ol = lr.retention_loop(**args, chunk_size=chunk, initial_state=S0)
    close(lr.retention(**args, chunk_size=chunk, initial_state=S0), ol, rtol=FORMS, what=f"retention c={chunk}: chunked")
    close(lr.retention_parallel(**args, initial_state=S0), ol, rtol=FORMS, what="retention: parallel vs recurrence")
    # γ^{n+1} S_{−1} q_n is the whole difference to the run from 0 (written out here)
    gam = args["gamma"][:, None, None]
    n = np.arange(args["q"].shape[-2])[:, None]
    extra = gam ** (n + 1.0) * (args["q"] / 2.0) @ np.swapaxes(S0, -1, -2)
    close(ol - lr.retention_loop(**args), extra, rtol=FORMS, what="retention: the initial state's term")


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
@pytest.mark.parametrize("regime", ["mixed", "strong", "tiny steps"])
@pytest.mark.parametrize("G", [1, 2, 4])
def test_ssd_three_forms_from_an_initial_state(G, regime, chunk):
    args, _, h0, _ = _ssd_case(10 * G + chunk, G=G, dt_scale=60.0 if regime == "strong" else 1.0)
    if regime == "tiny steps":  # D x_t added apart (no fold on the diagonal), exact decays e^{ΔA} ≈ 1
        args["dt"][..., 1, 10:20] = 1e-306
    what = f"SSD G={G} {regime} c={chunk}"
    y, st = lr.ssd(**args, chunk_size=chunk, return_chunk_states=True, initial_state=h0)
    yl, stl = lr.ssd_loop(**args, chunk_size=chunk, return_chunk_states=True, initial_state=h0)
    close(y, yl, rtol=FORMS, what=f"{what}: chunked vs recurrence")
    close(st, stl, rtol=FORMS, what=f"{what}: chunk states")
    close(lr.ssd_quadratic(**args, initial_state=h0), yl, rtol=FORMS, what=f"{what}: quadratic vs recurrence")
    close(lr.ssd(**args, chunk_size=chunk, initial_state=h0), yl, rtol=FORMS, what=f"{what}: no states kept")


@pytest.mark.parametrize("chunk", [1, 4, 7, 64])
@pytest.mark.parametrize("gated, regime", [(False, None), (True, "mixed"), (True, "near 0"), (True, "strong stretches")])
def test_delta_rule_chunked_equals_recurrence_from_an_initial_state(gated, regime, chunk):
    args, _, S0, _ = _delta_case(chunk, gated=gated, regime=regime)
    what = f"delta rule gated={gated} {regime} c={chunk}"
    for scale in (None, 0.6):
        o, st = lr.delta_rule(**args, chunk_size=chunk, return_chunk_states=True, scale=scale, initial_state=S0)
        ol, stl = lr.delta_rule_loop(**args, chunk_size=chunk, return_chunk_states=True, scale=scale, initial_state=S0)
        close(o, ol, rtol=FORMS, what=f"{what}: chunked vs recurrence")
        close(st, stl, rtol=FORMS, what=f"{what}: chunk states")
    if regime != "near 0":
        assert np.linalg.norm(ol - lr.delta_rule_loop(**args, scale=0.6)) > 1e-3 * np.linalg.norm(ol)


def test_gla_initial_state_alone_is_the_decayed_readout():
    """With v = 0 the output is the initial state read through the prefix decay: o_t = S_{−1}(q_t ⊙ Π_{r≤t} g_r)."""
    args, _, S0, _ = _gla_case(3, L=12, batch=(2,))
    args["v"] = np.zeros_like(args["v"])
    decay = np.cumprod(np.exp(args["log_g"]), axis=-2)  # the products themselves, not sums of logs
    want = np.einsum("bij,btj->bti", S0, args["q"] * decay) / math.sqrt(5)
    for c in (1, 5, 64):
        close(lr.gated_linear_attention(**args, chunk_size=c, initial_state=S0), want, rtol=FORMS,
              what="GLA v = 0: the decayed readout of S_{-1}")


@pytest.mark.parametrize("form", ["gla per channel", "gla per head", "ssd", "delta rule"])
def test_initial_state_batch_axes_broadcast(form):
    """One state shared by every batch entry equals the state tiled; a state with batch axes of its own runs the
    inputs once per state (the inputs broadcast to the state's batch)."""
    if form.startswith("gla"):
        args, _, S0, _ = _gla_case(5, per_channel=form.endswith("channel"), batch=(3,))
        fn = lr.gated_linear_attention
    elif form == "ssd":
        args, _, S0, _ = _ssd_case(5, batch=(3,))
        fn = lr.ssd
    else:
        args, _, S0, _ = _delta_case(5, batch=(3,))
        fn = lr.delta_rule
    shared = S0[0]
    want = fn(**args, chunk_size=8, initial_state=np.broadcast_to(shared, S0.shape).copy())
    close(fn(**args, chunk_size=8, initial_state=shared), want, rtol=1e-15, what=f"{form}: one shared state")
    if form == "ssd":  # a head axis of 1: one state for every head
        one = S0[:, :1]
        close(fn(**args, chunk_size=8, initial_state=one), fn(**args, chunk_size=8, initial_state=np.repeat(one, 4, axis=1)),
              rtol=1e-15, what="ssd: one state for all heads")
    # the inputs of entry 0 run from two states: a new leading batch axis
    first = {key: val if key in ("A", "D") else val[0] for key, val in args.items()}  # batch entry 0
    two = np.stack([S0[0], S0[1]])
    got = fn(**first, chunk_size=8, initial_state=two)
    for i in range(2):
        close(got[i], fn(**first, chunk_size=8, initial_state=two[i]), rtol=1e-15, what=f"{form}: a batch of states")


@pytest.mark.parametrize("form", ["gla per channel", "gla per head", "ssd one group", "ssd groups", "gated delta rule"])
def test_groups_of_chunks_and_threads_carry_the_initial_state(chunk_groups, form):
    L, kw = 203, dict(chunk_size=8, return_chunk_states=True)
    if form.startswith("ssd"):
        args, _, h0, _ = _ssd_case(41, L=L, batch=(), G=1 if form == "ssd one group" else 2)
        args["dt"][1, 40:60] = 1e3
        got, want = lr.ssd(**args, initial_state=h0, **kw), lr.ssd_loop(**args, initial_state=h0, **kw)
    elif form == "gated delta rule":
        args, _, S0, _ = _delta_case(42, L=L, batch=(4,), regime="strong stretches")
        got, want = lr.delta_rule(**args, initial_state=S0, **kw), lr.delta_rule_loop(**args, initial_state=S0, **kw)
    else:
        args, _, S0, _ = _gla_case(43, L=L, batch=(4,), per_channel=form.endswith("channel"), regime="strong stretches")
        got = lr.gated_linear_attention(**args, initial_state=S0, **kw)
        want = lr.gated_linear_attention_loop(**args, initial_state=S0, **kw)
    close(got[0], want[0], rtol=FORMS, what=f"{form}: groups of chunks and threads with S_(-1)")
    close(got[1], want[1], rtol=FORMS, what=f"{form}: chunk states, groups and threads with S_(-1)")


# ---------------------------------------------------------------------------------------------
# Splitting a sequence
# ---------------------------------------------------------------------------------------------


def _split(args, L1, seq_axes):
    """The inputs of steps [0, L1) and [L1, L): ``seq_axes`` gives each argument's sequence axis (None: not split)."""
    first, second = {}, {}
    for key, val in args.items():
        ax = seq_axes.get(key)
        if ax is None or val is None:
            first[key] = second[key] = val
        else:
            first[key] = np.take(val, np.arange(L1), axis=ax)
            second[key] = np.take(val, np.arange(L1, val.shape[ax]), axis=ax)
    return first, second


GLA_AXES = {"q": -2, "k": -2, "v": -2}
SSD_AXES = {"x": -2, "dt": -1, "B": -2, "C": -2}
DELTA_AXES = {"q": -2, "k": -2, "v": -2, "beta": -1, "log_g": -1}


def _families():
    out = []
    for pc in (True, False):
        args, dy, S0, dS = _gla_case(7, L=41, per_channel=pc, batch=(2,))
        axes = dict(GLA_AXES, log_g=-2 if pc else -1)
        out.append((f"gla per_channel={pc}", lr.gated_linear_attention, lr.gated_linear_attention_vjp, args, dy, S0, dS,
                    axes, -2, ("dq", "dk", "dv", "dlog_g")))
    args, dy, h0, dh = _ssd_case(8, L=41)
    out.append(("ssd", lr.ssd, lr.ssd_vjp, args, dy, h0, dh, SSD_AXES, -2, ("dx", "ddt", "dB", "dC")))
    args, dy, S0, dS = _delta_case(9, L=41)
    out.append(("delta rule", lr.delta_rule, lr.delta_rule_vjp, args, dy, S0, dS, DELTA_AXES, -2,
                ("dq", "dk", "dv", "dbeta", "dlog_g")))
    return out


FAMILIES = _families()


@pytest.mark.parametrize("L1, c", [(13, 8), (16, 8), (1, 64), (40, 5)])
@pytest.mark.parametrize("fam", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_split_sequence_forward(fam, L1, c):
    name, fn, _, args, _, S0, _, axes, y_axis, _ = fam
    first, second = _split(args, L1, axes)
    y1, st1 = fn(**first, chunk_size=c, initial_state=S0, return_chunk_states=True)
    y2, st2 = fn(**second, chunk_size=c, initial_state=st1[..., -1, :, :], return_chunk_states=True)
    y, st = fn(**args, chunk_size=c, initial_state=S0, return_chunk_states=True)
    close(np.concatenate([y1, y2], axis=y_axis), y, rtol=FORMS, what=f"{name}: split run vs one run (L1={L1}, c={c})")
    close(st2[..., -1, :, :], st[..., -1, :, :], rtol=FORMS, what=f"{name}: final state of the split run")


@pytest.mark.parametrize("L1, c", [(13, 8), (16, 8), (1, 64), (40, 5)])
@pytest.mark.parametrize("fam", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_split_sequence_backward(fam, L1, c):
    """Part 2's VJP from S_mid gives ∂ℓ/∂S_mid, the cotangent of part 1's final state: part 1's VJP with it
    gives the full run's gradients (per step: concatenated; the per-head constants of SSD: summed)."""
    name, fn, vjp, args, dy, S0, dS, axes, y_axis, per_step = fam
    first, second = _split(args, L1, axes)
    dy1, dy2 = np.split(dy, [L1], axis=y_axis)
    _, st1 = fn(**first, chunk_size=c, initial_state=S0, return_chunk_states=True)
    g2 = vjp(**second, dy=dy2, chunk_size=c, initial_state=st1[..., -1, :, :], dfinal_state=dS)
    g1 = vjp(**first, dy=dy1, chunk_size=c, initial_state=S0, dfinal_state=g2["dinitial_state"])
    g = vjp(**args, dy=dy, chunk_size=c, initial_state=S0, dfinal_state=dS)
    assert set(g) == set(g1) == set(g2)
    for key in g:
        src = key[1:]
        if key == "dinitial_state":
            got = g1[key]
        elif key in per_step:
            got = np.concatenate([g1[key], g2[key]], axis=axes.get(src, y_axis))
        else:  # dA, dD (SSD): sums over the steps
            got = g1[key] + g2[key]
        close(got, g[key], rtol=FORMS, what=f"{name}: split VJP vs one VJP: {key} (L1={L1}, c={c})")


# ---------------------------------------------------------------------------------------------
# Backward: complex step, loop twins
# ---------------------------------------------------------------------------------------------


def c_gla(q, k, v, log_g, S0, *, scale=None):
    """Eq. (16.2) one step at a time from S_{−1} = S0, complex-capable: (o, S_{L−1})."""
    c = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    per_channel = np.ndim(log_g) == np.ndim(k)
    S = np.asarray(S0, dtype=complex)
    out = []
    for t in range(q.shape[-2]):
        g = np.exp(log_g[..., t, :]) if per_channel else np.exp(log_g[..., t])[..., None]
        S = S * g[..., None, :] + v[..., t, :, None] * k[..., t, None, :]
        out.append(np.einsum("...ij,...j->...i", S, c * q[..., t, :]))
    return np.stack(out, axis=-2), S


def c_ssd(x, dt, A, B, C, D, h0):
    """Eq. (16.7) from h_{−1} = h0: (y, h_{L−1}), complex-capable."""
    Hh, G = x.shape[-3], B.shape[-3]
    Bh, Ch = np.repeat(B, Hh // G, axis=-3), np.repeat(C, Hh // G, axis=-3)
    h, ys = np.asarray(h0, dtype=complex), []
    for t in range(x.shape[-2]):
        d = dt[..., t]
        h = np.exp(d * A)[..., None, None] * h + d[..., None, None] * x[..., t, :, None] * Bh[..., t, None, :]
        ys.append(np.einsum("...pn,...n->...p", h, Ch[..., t, :]))
    return np.stack(ys, axis=-2) + D[:, None, None] * x, h


def c_delta(q, k, v, beta, log_g, S0, *, scale=None):
    """Eq. (16.9) from S_{−1} = S0: (o, S_{L−1}), complex-capable."""
    return delta_recurrence(q, k, v, beta, log_g, S0, scale=scale)


def _cstep_grad(fwd, args, name, dy, dS, **kw):
    """∂ℓ/∂args[name] of ℓ = Σ dy ∘ o + Σ dS ∘ S_{L−1}, one complex step per entry."""
    x = np.asarray(args[name], dtype=float)
    g = np.zeros(x.shape)
    for idx in np.ndindex(*x.shape):
        xc = x.astype(complex)
        xc[idx] += 1j * H
        o, SL = fwd(**{**args, name: xc}, **kw)
        g[idx] = (np.sum(dy * o) + np.sum(dS * SL)).imag / H
    return g


@pytest.mark.parametrize("states", ["both", "initial only", "final only", "shared initial"])
@pytest.mark.parametrize("form", ["gla per channel", "gla per head", "ssd", "delta rule", "gated delta rule"])
def test_vjp_with_states_against_complex_step(form, states):
    rng = np.random.default_rng(len(form) + len(states))
    L, c = 9, 4
    if form.startswith("gla"):
        args, dy, S0, dS = _gla_case(1, L=L, per_channel=form.endswith("channel"), batch=(2,), dk=3, dv=2)
        vjp, loop, fwd, kw, ref_kw = lr.gated_linear_attention_vjp, lr.gated_linear_attention_vjp_loop, c_gla, {}, {}
    elif form == "ssd":
        args, dy, S0, dS = _ssd_case(2, L=L, H=2, G=1, P=2, N=2, batch=(2,))
        vjp, loop, fwd, kw, ref_kw = lr.ssd_vjp, lr.ssd_vjp_loop, c_ssd, {}, {}
    else:
        args, dy, S0, dS = _delta_case(3, L=L, gated=form.startswith("gated"), batch=(2,), dk=3, dv=2)
        vjp, loop, fwd, kw, ref_kw = lr.delta_rule_vjp, lr.delta_rule_vjp_loop, c_delta, dict(scale=0.5), dict(scale=0.5)
    if states == "shared initial":
        S0 = S0[0]
    state_kw = {"both": dict(initial_state=S0, dfinal_state=dS), "initial only": dict(initial_state=S0),
                "final only": dict(dfinal_state=dS), "shared initial": dict(initial_state=S0, dfinal_state=dS)}[states]
    g = vjp(**args, dy=dy, chunk_size=c, **kw, **state_kw)
    gl = loop(**args, dy=dy, chunk_size=c, **kw, **state_kw)
    assert set(g) == set(gl)
    assert ("dinitial_state" in g) == ("initial_state" in state_kw)
    init = state_kw.get("initial_state", np.zeros(S0.shape))
    final = state_kw.get("dfinal_state", np.zeros(dS.shape))
    cargs = dict(args, **({"log_g": np.zeros(args["beta"].shape)} if form == "delta rule" else {}))
    for key in g:
        name = "S0" if key == "dinitial_state" else key[1:]
        if form == "ssd" and name == "S0":
            name = "h0"
        full = {**cargs, ("h0" if form == "ssd" else "S0"): init}
        ref = _cstep_grad(fwd, full, name, dy, final, **ref_kw)
        close(g[key], ref, rtol=CSTEP, what=f"{form}, {states}: {key} vs complex step")
        close(gl[key], ref, rtol=CSTEP, what=f"{form}, {states}: loop twin's {key} vs complex step")


REGIMES = ["mixed", "near 0", "near 1", "strong stretches"]
TWIN_CASES = [(form, regime) for form in ("gla per channel", "gla per head", "ssd", "gated delta rule") for regime in REGIMES]
TWIN_CASES += [("retention", "mixed"), ("delta rule", "mixed")]  # constant decays per head; no gates


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
@pytest.mark.parametrize("form, regime", TWIN_CASES)
def test_vjp_with_states_chunked_equals_loop_twin(form, regime, chunk):
    L = 47
    if form.startswith("gla"):
        args, dy, S0, dS = _gla_case(chunk, L=L, per_channel=form.endswith("channel"), regime=regime)
        vjp, loop = lr.gated_linear_attention_vjp, lr.gated_linear_attention_vjp_loop
    elif form == "ssd":
        args, dy, S0, dS = _ssd_case(chunk, L=L, dt_scale={"mixed": 1.0, "near 0": 60.0, "near 1": 1e-9,
                                                           "strong stretches": 1.0}[regime])
        if regime == "strong stretches":
            args["dt"][..., 10:19] = 200.0
        vjp, loop = lr.ssd_vjp, lr.ssd_vjp_loop
    elif form == "retention":  # γ = 0.9, 0.5, 1e-30: mild, moderate and vanishing decays
        args, dy, S0, dS = _ret_case(chunk, L=L)
        vjp, loop = lr.retention_vjp, lr.retention_vjp_loop
    else:
        args, dy, S0, dS = _delta_case(chunk, L=L, gated=form.startswith("gated"), regime=regime)
        vjp, loop = lr.delta_rule_vjp, lr.delta_rule_vjp_loop
    kw = dict(dy=dy, chunk_size=chunk, initial_state=S0, dfinal_state=dS)
    g, gl = vjp(**args, **kw), loop(**args, **kw)
    assert set(g) == set(gl) and "dinitial_state" in g
    for key in g:
        close(g[key], gl[key], rtol=FORMS, what=f"{form} {regime} c={chunk}: {key}, chunked vs loop twin")


# ---------------------------------------------------------------------------------------------
# Gradients through strongly decayed states, entry by entry
# ---------------------------------------------------------------------------------------------


def _entries(got, want, what):
    """Every entry to ENTRY relative (the exact zeros exactly)."""
    err = np.abs(got - want)
    rel = np.divide(err, np.abs(want), out=np.where(err > 0, np.inf, 0.0), where=want != 0)
    record(what, float(rel.max()), ENTRY)
    assert np.all(rel <= ENTRY), f"{what}: worst relative error {rel.max():.3e} at {np.unravel_index(rel.argmax(), rel.shape)}"


@pytest.mark.parametrize("c", [4, 16, 64])
@pytest.mark.parametrize("per_channel", [True, False])
def test_gla_gradient_through_an_initial_state_decayed_by_e_minus_40(per_channel, c):
    """v = 0: the initial state alone makes the output, o_t = S_{−1}(q_t ⊙ e^{cum_t}), cum_t = Σ_{r≤t} log g_r with
    log g_0 = −40, and ℓ = Σ dy ∘ o + ⟨dS, S_{−1} Diag(e^{cum_{L−1}})⟩. Closed forms (positive data: sums of
    positive terms, in extended precision):
    dlog g_{r,j} = Σ_{t≥r} q_tj e^{cum_tj} (S_{−1}ᵀ dy_t)_j + e^{cum_{L−1,j}} Σ_i dS_ij S_{−1,ij} (every entry ~e^{−40}),
    dS_{−1} = Σ_t dy_t (q_t ⊙ e^{cum_t})ᵀ + dS Diag(e^{cum_{L−1}})."""
    rng = np.random.default_rng(c + per_channel)
    L, dk, dv = 40, 3, 2
    q, k = rng.uniform(0.5, 1.5, (2, L, dk))
    dy = rng.uniform(0.5, 1.5, (L, dv))
    S0, dS = rng.uniform(0.5, 1.5, (2, dv, dk))
    lg = -rng.uniform(0.0, 1.0, (L, dk) if per_channel else (L,))
    lg[0] = -40.0
    lg[L // 2] = -50.0  # one more strong gate
    g = lr.gated_linear_attention_vjp(q, k, np.zeros((L, dv)), lg, dy, scale=1.0, chunk_size=c, initial_state=S0,
                                      dfinal_state=dS)
    ld = np.longdouble
    lgc = (lg if per_channel else lg[:, None] * np.ones(dk)).astype(ld)
    E = np.exp(np.cumsum(lgc, axis=0))  # e^{cum_t} (L, Dk), extended precision
    read = np.einsum("ij,ti->tj", S0.astype(ld), dy.astype(ld))  # (S_{−1}ᵀ dy_t)_j
    terms = q.astype(ld) * E * read  # (L, Dk)
    tail = E[-1] * np.sum(dS.astype(ld) * S0.astype(ld), axis=0)  # (Dk,)
    want = np.flip(np.cumsum(np.flip(terms, 0), 0), 0) + tail
    want = want if per_channel else want.sum(axis=-1)
    assert np.all(np.abs(want) < 1e-15)  # every entry carries e^{-40}
    _entries(g["dlog_g"], np.asarray(want, float), f"GLA dlog_g through S_-1 decayed by e^-40 ({per_channel=}, c={c})")
    dS0 = np.einsum("ti,tj->ij", dy.astype(ld), q.astype(ld) * E) + dS.astype(ld) * E[-1]
    _entries(g["dinitial_state"], np.asarray(dS0, float), f"GLA dinitial_state, decay e^-40 ({per_channel=})")


@pytest.mark.parametrize("small", [-50.0, -20.0])
@pytest.mark.parametrize("c", [4, 16, 64])
@pytest.mark.parametrize("per_channel", [True, False])
def test_gla_gradient_through_the_final_state_past_a_small_gate(per_channel, c, small):
    """q = 0: only the final state is seen, ℓ = ⟨dS, S_{L−1}⟩ with
    S_{L−1} = S_{−1} Diag(e^{cum_{L−1}}) + Σ_s v_s k_sᵀ Diag(e^{seg[L−1, s]}). The pairs s < r straddle step r:
    dlog g_{r,j} = e^{cum_{L−1,j}} (dSᵀ S_{−1})_jj + Σ_{s<r} (dSᵀ v_s)_j k_sj e^{seg_j[L−1, s]}. At a gate e^{−50}
    every one of them carries e^{−50} while the pairs s ≥ r (which a reverse cumulative sum of the chunk's terms
    subtracts) are O(1): the entry is ~1e−22 and must come out to its last digits. A gate e^{−50} makes its chunk
    decay below e^{−30} (the segment sums), a gate e^{−20} among gates near 1 does not (the factored decays, with
    the exact form of the log-gate gradient: entries ~1e−9)."""
    rng = np.random.default_rng(10 + c + per_channel)
    L, dk, dv = 45, 3, 2
    k, v = rng.uniform(0.5, 1.5, (L, dk)), rng.uniform(0.5, 1.5, (L, dv))
    S0, dS = rng.uniform(0.5, 1.5, (2, dv, dk))
    lg = -rng.uniform(0.0, 0.5 if small < -30 else 0.01, (L, dk) if per_channel else (L,))
    for r in (3, L // 2, L - 3):  # in the first chunk, a middle one and the last
        lg[r] = small
    g = lr.gated_linear_attention_vjp(np.zeros((L, dk)), k, v, lg, np.zeros((L, dv)), scale=1.0, chunk_size=c,
                                      initial_state=S0, dfinal_state=dS)
    ld = np.longdouble
    lgc = (lg if per_channel else lg[:, None] * np.ones(dk)).astype(ld)
    after = np.flip(np.cumsum(np.flip(lgc, 0), 0), 0)  # Σ_{r'≥s} log g_r'
    seg_end = np.vstack([after[1:], np.zeros((1, dk), ld)])  # seg[L−1, s] = Σ_{r'>s} log g_r' (suffix sums, no difference)
    w = np.einsum("ij,si->sj", dS.astype(ld), v.astype(ld)) * k.astype(ld) * np.exp(seg_end)  # pair s's term
    want = np.exp(after[0]) * np.sum(dS.astype(ld) * S0.astype(ld), axis=0) + np.vstack(
        [np.zeros((1, dk), ld), np.cumsum(w, axis=0)[:-1]])  # + Σ_{s<r}
    want = want if per_channel else want.sum(axis=-1)
    tiny = np.asarray(want[[3, L // 2, L - 3]], float)
    assert np.all(tiny < (1e-20 if small < -30 else 1e-6)) and np.all(tiny > 0)
    _entries(g["dlog_g"], np.asarray(want, float), f"GLA dlog_g through dfinal past e^{small:g} ({per_channel=}, c={c})")


@pytest.mark.parametrize("c", [4, 16, 64])
def test_ssd_gradients_through_an_initial_state_decayed_by_e_minus_40(c):
    """x = 0: y_t = e^{A T_t} h_{−1} C_t + D x_t with T_t = Σ_{r≤t} Δ_r and A Δ_0 = −40. Closed forms (positive
    data): dA = Σ_t T_t e^{A T_t} w_t + T_{L−1} e^{A T_{L−1}} ⟨dh, h_{−1}⟩ with w_t = dy_t·(h_{−1} C_t) (~e^{−40} each),
    dΔ_r = A (Σ_{t≥r} e^{A T_t} w_t + e^{A T_{L−1}} ⟨dh, h_{−1}⟩), dh_{−1} = Σ_t e^{A T_t} dy_t C_tᵀ + e^{A T_{L−1}} dh."""
    rng = np.random.default_rng(c)
    L, P, N = 40, 2, 3
    A = np.array([-1.0])
    dt = rng.uniform(0.1, 1.0, (1, L))
    dt[0, 0] = 40.0
    C = rng.uniform(0.5, 1.5, (1, L, N))
    B = rng.normal(size=(1, L, N))
    h0, dh = rng.uniform(0.5, 1.5, (2, 1, P, N))
    dy = rng.uniform(0.5, 1.5, (1, L, P))
    g = lr.ssd_vjp(np.zeros((1, L, P)), dt, A, B, C, None, dy, chunk_size=c, initial_state=h0, dfinal_state=dh)
    ld = np.longdouble
    T = np.cumsum(dt[0].astype(ld))
    E = np.exp(A[0] * T)
    w = np.einsum("tp,pn,tn->t", dy[0].astype(ld), h0[0].astype(ld), C[0].astype(ld))
    fin = np.sum(dh[0].astype(ld) * h0[0].astype(ld))
    dA = np.sum(T * E * w) + T[-1] * E[-1] * fin
    ddt = A[0] * (np.flip(np.cumsum(np.flip(E * w))) + E[-1] * fin)
    dh0 = np.einsum("t,tp,tn->pn", E, dy[0].astype(ld), C[0].astype(ld)) + E[-1] * dh[0].astype(ld)
    assert abs(float(dA)) < 1e-13  # ~T e^{-40}
    _entries(g["dA"], np.array([float(dA)]), f"SSD dA through h_-1 decayed by e^-40 (c={c})")
    _entries(g["ddt"][0], np.asarray(ddt, float), f"SSD ddt through h_-1 decayed by e^-40 (c={c})")
    _entries(g["dinitial_state"][0], np.asarray(dh0, float), f"SSD dinitial_state, decay e^-40 (c={c})")


@pytest.mark.parametrize("first_gate", [-40.0, -20.0])
@pytest.mark.parametrize("c", [4, 16, 64])
@pytest.mark.parametrize("form", ["gla per channel", "gla per head", "gated delta rule"])
def test_first_gate_gradient_through_a_strongly_decayed_initial_state(form, c, first_gate):
    """dlog g_0 = g_0 ⟨Λ_0, S_{−1}⟩ (GLA) or g_0 ⟨Λ_0, S_{−1}(I − β_0 k_0 k_0ᵀ)⟩ (delta rule): only the
    initial state straddles step 0. With log g_0 = −40 it is ~1e−17 (−20: ~1e−8, the first chunk decaying by less
    than e^−30 with gates near 1 after it), while the pairs inside the first chunk are O(1); the loop twin computes it
    as g_0 times an inner product of O(1) terms, as does the reference here (the recurrences in extended precision,
    dy, v, k of any sign). Both agree with it to a few ulps of the size of the inner product's terms, and to ENTRY
    relative where the entry is well conditioned (SSD: the closed forms above)."""
    L = 30
    if form.startswith("gla"):
        args, dy, S0, dS = _gla_case(c, L=L, per_channel=form.endswith("channel"), batch=(2,), regime="near 1")
        vjp, loop, scale = lr.gated_linear_attention_vjp, lr.gated_linear_attention_vjp_loop, 1 / math.sqrt(5)
    else:
        args, dy, S0, dS = _delta_case(c, L=L, batch=(2,), regime="near 1")
        vjp, loop, scale = lr.delta_rule_vjp, lr.delta_rule_vjp_loop, 0.5
    args["log_g"][:, 0] = first_gate
    kw = dict(dy=dy, chunk_size=c, initial_state=S0, dfinal_state=dS)
    want, mag = _first_gate_gradient(args, dy, S0, dS, scale)
    assert np.all(np.abs(want) < (1e-15 if first_gate < -30 else 1e-6)) and np.all(want != 0)
    for which, g in (("vectorized", vjp(**args, **kw)), ("loop twin", loop(**args, **kw))):
        err = np.abs(g["dlog_g"][:, 0] - want)
        what = f"{form}, {which}: first gate's gradient, S_-1 decayed by e^{first_gate:g} (c={c})"
        record(f"{what}: |error| / Σ|terms|", float(np.max(err / mag)), 1e-13)
        assert np.all(err <= 1e-13 * mag), (what, err / mag)
        sound = mag <= 10 * np.abs(want)
        assert sound.any()
        _entries(g["dlog_g"][:, 0][sound], want[sound], what)


def _first_gate_gradient(args, dy, S0, dS, scale):
    """``dlog g_0 = Σ_j g_0j Σ_i Λ_0[i, j] (S_{−1} P_0)[i, j]`` (P_0 = I − β_0 k_0 k_0ᵀ for the delta rule, I for
    GLA; per channel one entry per j) and the sum of its terms' magnitudes, from the recurrences (16.2)/(16.9) and
    their adjoint run in extended precision, per batch entry."""
    ld = np.longdouble
    q, k, v, lg = (np.asarray(args[key], ld) for key in ("q", "k", "v", "log_g"))
    beta = None if "beta" not in args else np.asarray(args["beta"], ld)
    per_channel = lg.ndim == k.ndim
    out, mag = [], []
    for b in range(q.shape[0]):
        L, dk = q.shape[-2:]
        g = np.exp(lg[b]) if per_channel else np.exp(lg[b])[:, None] * np.ones(dk, ld)  # (L, Dk)
        P = [np.eye(dk, dtype=ld) - (0 if beta is None else beta[b, t]) * np.outer(k[b, t], k[b, t]) for t in range(L)]
        w = [np.ones((1, 1), ld) if beta is None else beta[b, t] for t in range(L)]
        S = [np.asarray(S0[b], ld)]
        for t in range(L):  # GLA: S Diag(g) + v kᵀ; delta rule (per-head g): g S P + β v kᵀ
            S.append((S[-1] * g[t]) @ P[t] + w[t] * np.outer(v[b, t], k[b, t]))
        lam = np.zeros_like(S[0])
        for t in range(L - 1, -1, -1):  # Λ_t = dy_t q̃_tᵀ + (Λ_{t+1} P_{t+1}ᵀ) Diag(g_{t+1}); Λ_{L−1} gets dS
            lam = (lam @ P[t + 1].T) * g[t + 1] if t + 1 < L else lam
            lam = lam + scale * np.outer(np.asarray(dy[b, t], ld), q[b, t]) + (np.asarray(dS[b], ld) if t == L - 1 else 0)
        terms = lam * (S[0] @ P[0]) * g[0]
        out.append(terms.sum(axis=0) if per_channel else terms.sum())
        mag.append(np.abs(terms).sum(axis=0) if per_channel else np.abs(terms).sum())
    return np.asarray(out, float), np.asarray(mag, float)
    close(g["dinitial_state"], gl["dinitial_state"], rtol=FORMS, what=f"{form}: dinitial_state, decay e^-40")


# ---------------------------------------------------------------------------------------------
# The API: None, bad input, empty sequences
# ---------------------------------------------------------------------------------------------


def _calls():
    """(name, function, args, state shape) for every function that takes an initial state."""
    gl, _, S0, dS = _gla_case(1, L=9, batch=(2,), dk=3, dv=2)
    gh, _, _, _ = _gla_case(1, L=9, batch=(2,), dk=3, dv=2, per_channel=False)
    ss, sdy, h0, _ = _ssd_case(1, L=9, H=2, G=1, P=2, N=3, batch=(2,))
    de, _, _, _ = _delta_case(1, L=9, batch=(2,), dk=3, dv=2)
    rt, rdy, R0, _ = _ret_case(1, L=9)
    dy = np.random.default_rng(0).normal(size=(2, 9, 2))
    out = []
    for suffix in ("", "_loop"):
        out += [(f"gated_linear_attention{suffix}", dict(gl, chunk_size=4), S0.shape),
                (f"gated_linear_attention{suffix}#head", dict(gh, chunk_size=4), S0.shape),
                (f"ssd{suffix}", dict(ss, chunk_size=4), h0.shape),
                (f"retention{suffix}", dict(rt, chunk_size=4), R0.shape),
                (f"delta_rule{suffix}", dict(de, chunk_size=4), S0.shape),
                (f"gated_linear_attention_vjp{suffix}", dict(gl, dy=dy, chunk_size=4), S0.shape),
                (f"ssd_vjp{suffix}", dict(ss, dy=sdy, chunk_size=4), h0.shape),
                (f"retention_vjp{suffix}", dict(rt, dy=rdy, chunk_size=4), R0.shape),
                (f"delta_rule_vjp{suffix}", dict(de, dy=dy, chunk_size=4), S0.shape)]
    out += [("gated_linear_attention_parallel", gl, S0.shape), ("ssd_quadratic", ss, h0.shape),
            ("retention_parallel", rt, R0.shape)]
    return out


CALLS = _calls()


def _fn(name):
    return getattr(lr, name.split("#")[0])


def _same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[key], b[key]) for key in a)
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a.shape == b.shape and np.array_equal(a, b)


@pytest.mark.parametrize("name, args, shape", CALLS, ids=[c[0] for c in CALLS])
def test_none_is_bitwise_the_call_without_states(name, args, shape):
    fn = _fn(name)
    extra = dict(initial_state=None, dfinal_state=None) if "_vjp" in name else dict(initial_state=None)
    assert _same(fn(**args, **extra), fn(**args))
    if "_vjp" in name:
        assert "dinitial_state" not in fn(**args)
        assert "dinitial_state" not in fn(**args, dfinal_state=np.ones(shape))
        g = fn(**args, initial_state=np.zeros(shape))  # given (even zero): its gradient is returned, of its shape
        assert g["dinitial_state"].shape == shape and all(_same(g[key], fn(**args)[key]) for key in fn(**args))
    else:  # a zero initial state is the default
        got, want = fn(**args, initial_state=np.zeros(shape)), fn(**args)
        close(got[0] if isinstance(got, tuple) else got, want[0] if isinstance(want, tuple) else want, rtol=1e-15,
              what=f"{name}: a zero initial state is the default")


def _bad_values(shape):
    return [
        ("wrong shape", np.ones(shape[:-1] + (shape[-1] + 1,)), "initial_state"),
        ("too few axes", np.ones(shape[-1]), "initial_state"),
        ("NaN", np.where(np.arange(math.prod(shape)).reshape(shape) == 1, np.nan, 1.0), "initial_state"),
        ("inf", np.full(shape, np.inf), "initial_state"),
        ("complex", np.ones(shape) + 1j, "initial_state"),
        ("string", "zero", "initial_state"),
        ("batch mismatch", np.ones((3,) + shape[1:]), "initial_state"),  # 3 entries against a batch axis of 2
    ]


@pytest.mark.parametrize("name, args, shape", CALLS, ids=[c[0] for c in CALLS])
def test_bad_initial_and_final_states_are_refused_by_name(name, args, shape):
    fn = _fn(name)
    for what, bad, arg in _bad_values(shape):
        with pytest.raises((ValueError, TypeError), match=arg):
            fn(**args, initial_state=bad)
        if "_vjp" in name:
            with pytest.raises((ValueError, TypeError), match="dfinal_state"):
                fn(**args, dfinal_state=bad)
    if "_vjp" in name:  # the final state's cotangent has the final state's batch: no new batch axes
        with pytest.raises(ValueError, match="dfinal_state"):
            fn(**args, dfinal_state=np.ones((4,) + shape))


@pytest.mark.parametrize("name, args, shape", CALLS, ids=[c[0] for c in CALLS])
def test_the_states_are_not_written_to(name, args, shape):
    rng = np.random.default_rng(1)
    S0, dS = rng.normal(size=(2,) + shape)
    keep0, keepS = S0.copy(), dS.copy()
    S0.setflags(write=False)
    _fn(name)(**args, initial_state=S0, **(dict(dfinal_state=dS) if "_vjp" in name else {}))
    assert np.array_equal(S0, keep0) and np.array_equal(dS, keepS)


@pytest.mark.parametrize("form", ["gla", "ssd", "delta rule", "retention"])
def test_empty_sequence_with_states(form):
    """L = 0: no output, no chunk state; the final state is the initial one, so ∂ℓ/∂S_{−1} = dfinal_state."""
    if form == "gla":
        args, dy, S0, dS = _gla_case(1, L=0, batch=(2,))
        fns = (lr.gated_linear_attention, lr.gated_linear_attention_loop)
        vjps = (lr.gated_linear_attention_vjp, lr.gated_linear_attention_vjp_loop)
    elif form == "ssd":
        args, dy, S0, dS = _ssd_case(1, L=0)
        fns, vjps = (lr.ssd, lr.ssd_loop), (lr.ssd_vjp, lr.ssd_vjp_loop)
    elif form == "retention":
        args, dy, S0, dS = _ret_case(1, L=0)
        fns, vjps = (lr.retention, lr.retention_loop), (lr.retention_vjp, lr.retention_vjp_loop)
    else:
        args, dy, S0, dS = _delta_case(1, L=0)
        fns, vjps = (lr.delta_rule, lr.delta_rule_loop), (lr.delta_rule_vjp, lr.delta_rule_vjp_loop)
    for fn in fns:
        if form == "retention":
            assert fn(**args, initial_state=S0).shape[-2] == 0
        else:
            y, st = fn(**args, initial_state=S0, return_chunk_states=True)
            assert y.shape[-2] == 0 and st.shape[-3] == 0
    for vjp in vjps:
        g = vjp(**args, dy=dy, initial_state=S0, dfinal_state=dS)
        assert np.array_equal(g["dinitial_state"], dS)


def test_a_state_with_the_wrong_number_of_heads_is_named_as_such():
    """An independent tester's finding: a state with 3 heads for a layer of 2 was reported as a batch mismatch."""
    rng = np.random.default_rng(7)
    q = k = v = rng.normal(size=(2, 5, 3))
    gamma = np.array([0.9, 0.5])
    calls = [lambda S: lr.retention(q, k, v, gamma, initial_state=S),
             lambda S: lr.retention_loop(q, k, v, gamma, initial_state=S),
             lambda S: lr.retention_parallel(q, k, v, gamma, initial_state=S),
             lambda S: lr.retention_vjp(q, k, v, gamma, v, initial_state=S),
             lambda S: lr.retention_vjp_loop(q, k, v, gamma, v, initial_state=S),
             lambda S: lr.ssd(v, np.ones((2, 5)), -np.ones(2), q[:1], k[:1], initial_state=S)]
    for call in calls:
        with pytest.raises(ValueError, match=r"^initial_state: .* = \(\.\.\., 2, 3, 3\) with H = 2 heads"):
            call(np.zeros((3, 3, 3)))
        call(np.zeros((1, 3, 3)))  # one state shared by the heads


@pytest.mark.parametrize("beta_range, bound", [((0.01, 0.99), 16), ((1.9, 1.999999), 2000)])
def test_delta_rule_error_each_chunk_adds_scales_with_the_state_it_was_handed(beta_range, bound):
    # §16.5: the chunked delta rule hands the state on as a difference, so each chunk adds an error proportional to
    # the state it was handed plus its values — a few ε for β < 1, a few hundred ε for β near 2 with nearly
    # parallel keys (cond(I + A) ~ 1e3). The reference: the loop twin run over the same chunk from the same state.
    rng = np.random.default_rng(18)
    L, c, eps = 640, 64, np.finfo(float).eps
    k = rng.normal(size=(2, L, 8)) * 0.05 + np.r_[1.0, np.zeros(7)]
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    q, v, S0 = rng.normal(size=(2, L, 8)), rng.normal(size=(2, L, 4)), rng.normal(size=(2, 4, 8))
    beta = rng.uniform(*beta_range, size=(2, L))
    _, st = lr.delta_rule(q, k, v, beta, initial_state=S0, chunk_size=c, return_chunk_states=True)
    handed = np.concatenate([S0[:, None], st[:, :-1]], axis=1)
    size = lambda a: np.abs(a).max(axis=(-2, -1))  # noqa: E731
    worst = 0.0
    for n in range(L // c):
        part = slice(n * c, (n + 1) * c)
        _, s_n = lr.delta_rule_loop(q[:, part], k[:, part], v[:, part], beta[:, part], initial_state=handed[:, n],
                                    chunk_size=c, return_chunk_states=True)
        worst = max(worst, np.max(size(st[:, n] - s_n[:, -1]) / (size(handed[:, n]) + size(v[:, part])) / eps))
    record(f"delta rule, β in {beta_range}: error one chunk adds / (‖handed‖ + ‖v‖), in ε", worst, bound)
    assert worst < bound, worst
