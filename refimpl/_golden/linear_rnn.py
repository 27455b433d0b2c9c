"""Golden cases of :mod:`refimpl.linear_rnn`, chapter 16 (linear recurrences as adaptive filters):
SSD, gated linear attention, retention, the delta rule, RLS on the key→value regression.

Intermediates that localize a bug in a chunked kernel: the states at the chunk ends (every
function with chunks), SSD's semiseparable matrix M (Eq. (16.8)), and the delta rule's WY factor
``W = T diag(β γ) K`` and ``T diag(β) V`` per chunk (Eq. (16.11)).
"""

import numpy as np

from refimpl import linear_rnn

from ._base import Case, Function, called, mid_pair, ordered, renormalize, unit


def _run_ssd(args, with_mid):
    operands = (args["x"], args["dt"], args["A"], args["B"], args["C"], args.get("D"))
    y, states = mid_pair(linear_rnn.ssd(*operands, chunk_size=args["chunk_size"], return_chunk_states=with_mid,
                                        initial_state=args.get("initial_state")), with_mid)
    mid = {"chunk_states": states}
    if with_mid and args.get("initial_state") is None:  # M does not involve the state: left out of those cases
        mid["M"] = linear_rnn.ssd_quadratic(*operands[:5], return_matrix=True)[1]
    return ordered(mid, {"y": y}, with_mid)


def _run_gla(args, with_mid):
    y, states = mid_pair(linear_rnn.gated_linear_attention(
        args["q"], args["k"], args["v"], args["log_g"], scale=args.get("scale"), chunk_size=args["chunk_size"],
        return_chunk_states=with_mid, initial_state=args.get("initial_state"),
    ), with_mid)
    return ordered({"chunk_states": states}, {"y": y}, with_mid)


def _run_delta(args, with_mid):
    def public(**kw):  # linear_rnn.delta_rule on the case's arguments
        return linear_rnn.delta_rule(args["q"], args["k"], args["v"], args["beta"], log_g=args.get("log_g"),
                                     scale=args.get("scale"), chunk_size=args["chunk_size"],
                                     initial_state=args.get("initial_state"), **kw)

    if not with_mid:  # y alone: no WY factors, no chunk states (1.5 times the time at L = 4096, batch 8)
        return {"y": public()}
    q, k, v, b, g, c = linear_rnn._delta_setup(
        args["q"], args["k"], args["v"], args["beta"], args.get("log_g"), args.get("scale"), args["chunk_size"], False
    )
    y, states, W, TV = linear_rnn._delta_chunked(q, k, v, b, g, c, return_factors=True)
    if args.get("initial_state") is not None:  # the WY factors do not depend on the state entering a chunk
        y, states = public(return_chunk_states=True)
    return ordered({"W": W, "TbetaV": TV, "chunk_states": states}, {"y": y}, with_mid)


def _run_mamba(args, with_mid):
    out, final = linear_rnn.mamba_chunk_scan_combined(**args, return_final_states=True)
    opts = ("D", "z", "dt_bias", "initial_states", "dt_softplus", "dt_limit")
    m = linear_rnn._check_mamba(*(args[n] for n in ("x", "dt", "A", "B", "C", "chunk_size")),
                                *(args.get(n, d) for n, d in zip(opts, (None, None, None, None, False, (0.0, np.inf)))))
    # intermediate: the step sizes Δ = clamp(softplus(dt + dt_bias), dt_limit) (batch, seqlen, nheads)
    return ordered({"Delta": m.step}, {"out": out, "final_states": final}, with_mid)


FUNCTIONS = [
    Function("linear_rnn.mamba_chunk_scan_combined", _run_mamba, ("out", "final_states"), intermediates=("Delta",),
             optional=("final_states",)),
    called("linear_rnn.chunk_gla", "o", "final_state", optional=("final_state",)),
    called("linear_rnn.chunk_simple_gla", "o", "final_state", optional=("final_state",)),
    called("linear_rnn.chunk_delta_rule", "o", "final_state", optional=("final_state",)),
    called("linear_rnn.chunk_gated_delta_rule", "o", "final_state", optional=("final_state",)),
    Function("linear_rnn.ssd", _run_ssd, ("y",), intermediates=("chunk_states", "M")),
    Function("linear_rnn.gated_linear_attention", _run_gla, ("y",), intermediates=("chunk_states",)),
    called("linear_rnn.retention", "y"),
    Function("linear_rnn.delta_rule", _run_delta, ("y",), intermediates=("W", "TbetaV", "chunk_states")),
    called("linear_rnn.rls_memory", "y"),
    called("linear_rnn.segsum", "seg"),
]


def _ssd_args(r, *, L, H=4, G=2, P=3, N=4, dt_scale=1.0, A=None, chunk_size=8, batch=()):
    return {
        "x": r.standard_normal(batch + (H, L, P)),
        "dt": dt_scale * np.log1p(np.exp(r.standard_normal(batch + (H, L)) - 1.0)),  # softplus, as Mamba-2
        "A": -np.exp(r.standard_normal(H)) if A is None else A,
        "B": r.standard_normal(batch + (G, L, N)),
        "C": r.standard_normal(batch + (G, L, N)),
        "D": r.standard_normal(H),
        "chunk_size": chunk_size,
    }


def _qkv(r, L, dk=4, dv=3, batch=(2,), unit_keys=False):
    k = r.standard_normal(batch + (L, dk))
    return {"q": r.standard_normal(batch + (L, dk)), "k": unit(k) if unit_keys else k, "v": r.standard_normal(batch + (L, dv))}


def _mamba(r, *, b=1, L=12, H=2, G=1, P=2, N=3, gated=True):
    """Arguments of ``mamba_chunk_scan_combined`` in mamba_ssm's layout (sequence before heads)."""
    args = {"x": r.standard_normal((b, L, H, P)), "dt": r.normal(-0.5, 1.0, (b, L, H)), "A": -np.exp(r.standard_normal(H)),
            "B": r.standard_normal((b, L, G, N)), "C": r.standard_normal((b, L, G, N)), "chunk_size": 4}
    if gated:  # every option: D per channel, the gate z, dt_bias + softplus + a clamp hit at both ends, h0
        args.update(D=r.standard_normal((H, P)), z=r.standard_normal((b, L, H, P)), dt_bias=r.normal(0.5, 0.5, H),
                    initial_states=r.standard_normal((b, H, P, N)), dt_softplus=True, dt_limit=(0.25, 1.5))
    else:  # D per head, Δ given directly
        args.update(dt=r.uniform(0.05, 1.0, (b, L, H)), D=r.standard_normal(H))
    return args


def _fla(r, *, T=12, H=2, K=3, V=2, gate=None, delta=False, l2norm=False, state=True):
    """Arguments of an fla function in fla's layout [B, T, H, ·] (B = 1), states [B, H, K, V]."""
    k = r.standard_normal((1, T, H, K))
    args = {"q": r.standard_normal((1, T, H, K)), "k": k if l2norm or not delta else unit(k),
            "v": r.standard_normal((1, T, H, V))}
    if gate == "channel":
        args["g"] = -r.uniform(0, 1, (1, T, H, K))
    elif gate == "head":
        args["g"] = -r.uniform(0, 0.5, (1, T, H))
    if delta:
        args["beta"] = r.uniform(0.1, 0.9, (1, T, H))
    if state:
        args["initial_state"] = r.standard_normal((1, H, K, V))
    args["output_final_state"] = True
    if delta:
        args["use_qk_l2norm_in_kernel"] = l2norm
    return args


CASES = [
    Case("linear_rnn.mamba_chunk_scan_combined/gated_per_channel_D", 1620, lambda r: _mamba(r),
         "mamba_ssm layout (batch, seqlen, nheads, headdim), L = 12 with chunks of 4: D (nheads, headdim), gate z, "
         "dt_bias + softplus, dt_limit (0.25, 1.5) hit at both ends, initial_states; intermediate Δ"),
    Case("linear_rnn.chunk_gla/states", 1622, lambda r: _fla(r, gate="channel"),
         "fla layout [B, T, H, K], per-channel log-gates, initial_state [B, H, K, V] (fla's orientation), final state"),
    Case("linear_rnn.chunk_simple_gla/states", 1623, lambda r: _fla(r, gate="head"),
         "fla layout, one log-gate per head [B, T, H], initial_state and final state"),
    Case("linear_rnn.chunk_delta_rule/l2norm_in_kernel", 1624, lambda r: _fla(r, K=4, delta=True, l2norm=True),
         "DeltaNet in fla's layout, raw q and k normalized inside (use_qk_l2norm_in_kernel, eps 1e-6), initial_state"),
    Case("linear_rnn.chunk_gated_delta_rule/l2norm_states", 1626,
         lambda r: _fla(r, K=4, gate="head", delta=True, l2norm=True),
         "Gated DeltaNet in fla's layout, q and k normalized inside, log-gates [B, T, H], initial_state"),
    Case("linear_rnn.ssd/groups_chunk_not_dividing", 1601, lambda r: _ssd_args(r, L=21, batch=(2,)),
         "4 heads in 2 groups, L = 21 with chunks of 8; intermediates: chunk-end states and M (Eq. (16.8))"),
    Case("linear_rnn.ssd/fast_decay", 1602, lambda r: _ssd_args(r, L=40, dt_scale=300.0, chunk_size=16),
         "Δ·A down to −1e3 per step: decays underflow to exactly 0, no NaN"),
    Case("linear_rnn.ssd/A_zero_long_sequence", 1603,
         lambda r: _ssd_args(r, L=300, H=2, G=1, A=np.array([0.0, -1e-6]), chunk_size=64),
         "gates exactly 1 (A = 0) and A = −1e-6 over 300 steps: a pure cumulative sum", intermediates=False),
    Case("linear_rnn.gated_linear_attention/per_channel", 1604,
         lambda r: {**_qkv(r, 19), "log_g": -r.uniform(0, 1, (2, 19, 4)), "chunk_size": 4},
         "gates per key channel, L = 19, chunks of 4; intermediate: chunk-end states"),
    Case("linear_rnn.gated_linear_attention/gates_near_0_and_1", 1605,
         lambda r: {**_qkv(r, 48), "log_g": np.where(r.random((2, 48, 4)) < 0.5, -1e-12, -r.uniform(30, 80, (2, 48, 4))),
                    "chunk_size": 16},
         "per-channel gates of 1 − 1e-12 mixed with e^-30 … e^-80 (the exact segment-sum path)"),
    Case("linear_rnn.gated_linear_attention/per_head_long_sequence", 1606,
         lambda r: {**_qkv(r, 400, batch=()), "log_g": -r.uniform(0, 0.05, 400), "chunk_size": 64, "scale": 1.0},
         "one gate per head, 400 steps, cumulative log-gate about −10: e^{+Λ} factoring would lose digits",
         intermediates=False),
    Case("linear_rnn.retention/retnet_decays", 1607,
         lambda r: {**_qkv(r, 30, batch=(3,)), "gamma": 1 - 2.0 ** (-5 - np.arange(3)), "chunk_size": 8},
         "RetNet's decays 1 − 2^(−5−h) for three heads"),
    Case("linear_rnn.delta_rule/deltanet", 1608,
         lambda r: {**_qkv(r, 23, unit_keys=True), "beta": r.uniform(0.05, 0.95, (2, 23)), "chunk_size": 8},
         "DeltaNet (no gate), β ∈ (0, 1), L = 23 with chunks of 8; intermediates: WY factors, chunk states",
         constrain=renormalize("k")),
    Case("linear_rnn.delta_rule/gated_beta_near_2", 1609,
         lambda r: {**_qkv(r, 40, unit_keys=True), "beta": r.uniform(1.9, 1.99, (2, 40)),
                    "log_g": -r.uniform(0, 2.0, (2, 40)), "chunk_size": 16},
         "Gated DeltaNet with β near its bound 2 (eigenvalue 1 − β near −1)", constrain=renormalize("k")),
    Case("linear_rnn.ssd/initial_state", 1612,
         lambda r: {**_ssd_args(r, L=21, batch=(2,)), "initial_state": r.standard_normal((2, 4, 3, 4))},
         "Mamba-2's initial_states: a state (batch, H, P, N) before the first step, 4 heads in 2 groups, L = 21 "
         "with chunks of 8; intermediate: chunk-end states (the last one is the final state)"),
    Case("linear_rnn.delta_rule/initial_state", 1613,
         lambda r: {**_qkv(r, 23, unit_keys=True), "beta": r.uniform(0.1, 1.5, (2, 23)),
                    "log_g": -r.uniform(0, 0.5, (2, 23)), "chunk_size": 8, "initial_state": r.standard_normal((2, 3, 4))},
         "Gated DeltaNet from a given state S_{-1} (Dv, Dk) = fla's initial_state transposed, L = 23 with chunks of 8",
         constrain=renormalize("k")),
    Case("linear_rnn.rls_memory/forgetting", 1610,
         lambda r: {**_qkv(r, 25), "lam": 0.95, "delta": 0.1},
         "exponentially weighted ridge least squares, λ = 0.95, δ = 0.1"),
    Case("linear_rnn.segsum/long_decay", 1611,
         lambda r: {"a": np.concatenate([np.full(20, np.log(0.5)), -r.uniform(0, 1e-9, 12)])},
         "segment sums of log-gates, never differences of prefix sums"),
]
