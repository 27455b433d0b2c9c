"""Golden cases of the vector–Jacobian products (the backward passes) of softmax attention
(chapter 4), linear attention (chapter 12), the selective scan and mamba_ssm's
``selective_scan_fn`` (chapter 11) and the linear recurrences of chapter 16 (SSD, gated linear
attention, retention, the delta rule): ``compare`` checks a kernel's gradients like any output.
Each case draws the cotangent (``dy``, or the official ``dout``, ``do``) with the inputs.
"""

import numpy as np

from refimpl import attention, linear_rnn, ssm

from ._base import Case, Function, called, cplx, ordered, renormalize, unit
from .linear_rnn import _fla
from .ssm import _official


def _run_selective_scan_vjp(args, with_mid):
    g = ssm.selective_scan_vjp(**args)
    return {name: g[name] for name in ("du", "ddelta", "dA", "dB", "dC", "dD")}


def _softmax_causal_heads(r):
    return {"q": r.standard_normal((2, 70, 4)), "k": r.standard_normal((2, 70, 4)), "v": r.standard_normal((2, 70, 3)),
            "dy": r.standard_normal((2, 70, 3)), "causal": True}


def _softmax_mask_cross(r):
    mask = r.random((5, 9)) < 0.6
    mask[:, 0] = True  # every query keeps a key
    return {"q": r.standard_normal((5, 6)), "k": r.standard_normal((9, 6)), "v": r.standard_normal((9, 3)),
            "dy": r.standard_normal((5, 3)), "mask": mask, "scale": 0.5}


def _softmax_window_alibi_softcap(r):
    return {"q": r.standard_normal((2, 70, 4)), "k": r.standard_normal((2, 70, 4)), "v": r.standard_normal((2, 70, 3)),
            "dy": r.standard_normal((2, 70, 3)), "causal": True, "window": 5, "alibi_slopes": np.array([0.25, 1.0]),
            "softcap": 2.0}


def _softmax_gqa_bottom_right(r):
    return {"q": r.standard_normal((4, 9, 4)), "k": r.standard_normal((2, 6, 4)), "v": r.standard_normal((2, 6, 3)),
            "dy": r.standard_normal((4, 9, 3)), "causal": True, "causal_alignment": "bottom_right", "grouped_heads": True}


def _scan(r, L, d_in, n, with_zero, discretization):
    A = -np.exp(r.standard_normal((d_in, n)))
    if with_zero:
        A[0, 0] = 0.0  # a pure integrator: the series branch of ∂B̄/∂A
    return {"u": r.standard_normal((2, L, d_in)), "delta": r.uniform(0.01, 0.5, (2, L, d_in)), "A": A,
            "B": r.standard_normal((2, L, n)), "C": r.standard_normal((2, L, n)), "D": r.standard_normal(d_in),
            "dy": r.standard_normal((2, L, d_in)), "discretization": discretization}


def _run_softmax_vjp(args, with_mid):
    dq, dk, dv, mid = attention.softmax_attention_vjp(**args, return_intermediates=True)
    return ordered(mid, {"dq": dq, "dk": dk, "dv": dv}, with_mid)  # ℓ and D: the forward's and the preprocessing's


def _dict_run(fn, names):
    def run(args, with_mid):
        g = fn(**args)
        return {name: g[name] for name in names if name in g}

    return run


_SSD_GRADS = ("dx", "ddt", "dA", "dB", "dC", "dD")
_GLA_GRADS = ("dq", "dk", "dv", "dlog_g")
_DELTA_GRADS = ("dq", "dk", "dv", "dbeta", "dlog_g")
_STATE = ("dinitial_state",)


def _ssd(r, *, L, H=4, G=2, P=3, N=4, dt_scale=1.0, chunk_size=64, batch=(2,)):
    return {
        "x": r.standard_normal(batch + (H, L, P)),
        "dt": dt_scale * np.log1p(np.exp(r.standard_normal(batch + (H, L)) - 1.0)),  # softplus, as Mamba-2
        "A": -np.exp(r.standard_normal(H)),
        "B": r.standard_normal(batch + (G, L, N)),
        "C": r.standard_normal(batch + (G, L, N)),
        "D": r.standard_normal(H),
        "dy": r.standard_normal(batch + (H, L, P)),
        "chunk_size": chunk_size,
    }


def _qkv_dy(r, L, dk=4, dv=3, batch=(2,), unit_keys=False):
    k = r.standard_normal(batch + (L, dk))
    return {"q": r.standard_normal(batch + (L, dk)), "k": unit(k) if unit_keys else k,
            "v": r.standard_normal(batch + (L, dv)), "dy": r.standard_normal(batch + (L, dv))}


_MAMBA_GRADS = ("dx", "ddt", "dA", "dB", "dC")
_MAMBA_ALL = _MAMBA_GRADS + ("dD", "dz", "ddt_bias", "dinitial_states")
_FLA_GRADS = ("dq", "dk", "dv", "dg")
_DELTA_FLA = ("dq", "dk", "dv", "dbeta")
_GDELTA_FLA = ("dq", "dk", "dv", "dg", "dbeta")


def _mamba_vjp(r):
    """Arguments of ``mamba_chunk_scan_combined_vjp`` (mamba_ssm's layout) and the cotangents."""
    b, L, H, G, P, N = 1, 12, 2, 1, 2, 3
    args = {"x": r.standard_normal((b, L, H, P)), "dt": r.normal(-0.5, 1.0, (b, L, H)), "A": -np.exp(r.standard_normal(H)),
            "B": r.standard_normal((b, L, G, N)), "C": r.standard_normal((b, L, G, N)),
            "dout": r.standard_normal((b, L, H, P)), "chunk_size": 4}
    args.update(D=r.standard_normal((H, P)), z=r.standard_normal((b, L, H, P)), dt_bias=r.normal(0.5, 0.5, H),
                initial_states=r.standard_normal((b, H, P, N)), dt_softplus=True, dt_limit=(0.25, 1.5),
                dfinal_states=r.standard_normal((b, H, P, N)))
    return args


_FN_GRADS = ("du", "ddelta", "dA", "dB", "dC")
_FN_ALL = _FN_GRADS + ("dD", "dz", "ddelta_bias")


def _fn_vjp(r, batch, dim, L, N, B, C, complex_A=False, gate=True):
    """Arguments of ``selective_scan_fn_vjp`` (:func:`refimpl._golden.ssm._official`) and the cotangent ``dout``."""
    args = _official(r, batch, dim, L, N, B=B, C=C, complex_A=complex_A, gate=gate)
    return {**args, "dout": r.standard_normal((batch, dim, L))}


def _fn_vjp_threshold(r):
    """Time-invariant B, C (D, N) and some steps above mamba_ssm's softplus threshold: x = delta + delta_bias in
    (25, 95) for about one step in six."""
    args = _fn_vjp(r, 2, 3, 16, 3, B=(3, 3), C=(3, 3))
    hot = r.random(args["u"].shape) < 1 / 6
    x = r.uniform(25.0, 95.0, hot.shape)
    args["delta"] = np.where(hot, x - args["delta_bias"][:, None], args["delta"])
    return args


def _fn_vjp_complex(r):
    """Complex A (S4D-Lin), B stored as real pairs (batch, N, 2L), C complex and time-invariant (D, N)."""
    args = _fn_vjp(r, 1, 2, 16, 3, B=(1, 3, "2L"), C=(2, 3), complex_A=True)
    args["C"] = cplx(r, 2, 3)
    return args


def _fla_vjp(r, **kw):
    """The forward case's arguments (:func:`refimpl._golden.linear_rnn._fla`), then ``do`` and ``dht``."""
    args = _fla(r, **kw)
    del args["output_final_state"]
    (b, T, H, V), K = args["v"].shape, args["k"].shape[-1]
    args.update(do=r.standard_normal((b, T, H, V)), dht=r.standard_normal((b, H, K, V)))
    return args


#: ``optional``: the gradients of optional inputs (initial states, D, z, dt_bias, delta_bias, DeltaNet's log_g), which a
#: callable may leave out or return as None, as the forward passes' optional outputs; a case has them among its
#: outputs when it gives the input (tests/test_oracle.py keeps them equal to the inputs with a default of None)
_FLA_STATE = ("dh0",)
_MAMBA_OPTIONAL = ("dD", "dz", "ddt_bias", "dinitial_states")

FUNCTIONS = [
    Function("linear_rnn.mamba_chunk_scan_combined_vjp", _dict_run(linear_rnn.mamba_chunk_scan_combined_vjp, _MAMBA_ALL),
             _MAMBA_ALL, optional=_MAMBA_OPTIONAL),
    Function("linear_rnn.chunk_gla_vjp", _dict_run(linear_rnn.chunk_gla_vjp, _FLA_GRADS + _FLA_STATE),
             _FLA_GRADS + _FLA_STATE, optional=_FLA_STATE),
    Function("linear_rnn.chunk_simple_gla_vjp", _dict_run(linear_rnn.chunk_simple_gla_vjp, _FLA_GRADS + _FLA_STATE),
             _FLA_GRADS + _FLA_STATE, optional=_FLA_STATE),
    Function("linear_rnn.chunk_delta_rule_vjp", _dict_run(linear_rnn.chunk_delta_rule_vjp, _DELTA_FLA + _FLA_STATE),
             _DELTA_FLA + _FLA_STATE, optional=_FLA_STATE),
    Function("linear_rnn.chunk_gated_delta_rule_vjp",
             _dict_run(linear_rnn.chunk_gated_delta_rule_vjp, _GDELTA_FLA + _FLA_STATE), _GDELTA_FLA + _FLA_STATE,
             optional=_FLA_STATE),
    Function("attention.softmax_attention_vjp", _run_softmax_vjp, ("dq", "dk", "dv"), intermediates=("lse", "D")),
    Function("attention.flash_attn_func_vjp", _dict_run(attention.flash_attn_func_vjp, ("dq", "dk", "dv")),
             ("dq", "dk", "dv"), skip=("deterministic",)),
    Function("attention.flash_attn_varlen_func_vjp", _dict_run(attention.flash_attn_varlen_func_vjp, ("dq", "dk", "dv")),
             ("dq", "dk", "dv"), skip=("deterministic",)),
    called("random_features.linear_attention_vjp", "dq", "dk", "dv"),
    Function("ssm.selective_scan_vjp", _run_selective_scan_vjp, ("du", "ddelta", "dA", "dB", "dC", "dD")),
    Function("ssm.selective_scan_fn_vjp", _dict_run(ssm.selective_scan_fn_vjp, _FN_ALL), _FN_ALL,
             optional=("dD", "dz", "ddelta_bias")),
    Function("linear_rnn.ssd_vjp", _dict_run(linear_rnn.ssd_vjp, _SSD_GRADS + _STATE), _SSD_GRADS + _STATE,
             optional=_STATE),
    Function("linear_rnn.gated_linear_attention_vjp",
             _dict_run(linear_rnn.gated_linear_attention_vjp, _GLA_GRADS + _STATE), _GLA_GRADS + _STATE,
             optional=_STATE),
    Function("linear_rnn.retention_vjp", _dict_run(linear_rnn.retention_vjp, ("dq", "dk", "dv") + _STATE),
             ("dq", "dk", "dv") + _STATE, optional=_STATE),
    Function("linear_rnn.delta_rule_vjp", _dict_run(linear_rnn.delta_rule_vjp, _DELTA_GRADS + _STATE),
             _DELTA_GRADS + _STATE, optional=("dlog_g",) + _STATE),
]

CASES = [
    Case("attention.softmax_attention_vjp/causal_heads", 1501, _softmax_causal_heads,
         "causal, two heads, N = 70 (one full query block of 64 plus 6 rows)"),
    Case("attention.softmax_attention_vjp/mask_cross", 1502, _softmax_mask_cross,
         "cross-attention N = 5 ≠ M = 9 with a boolean mask and scale 0.5"),
    Case("attention.softmax_attention_vjp/window_alibi_softcap", 1515, _softmax_window_alibi_softcap,
         "causal sliding window of 5 keys, ALiBi slopes 0.25 and 1 for two heads, soft cap 2, N = 70 "
         "(one full query block of 64 plus 6 rows)"),
    Case("attention.softmax_attention_vjp/gqa_bottom_right", 1516, _softmax_gqa_bottom_right,
         "4 query heads sharing 2 key/value heads, causal aligned bottom-right with N = 9 > M = 6: the first "
         "3 query rows see no key (zero output, zero gradient)"),
    Case("random_features.linear_attention_vjp/causal", 1503,
         lambda r: {"q": r.standard_normal((130, 4)), "k": r.standard_normal((130, 4)), "v": r.standard_normal((130, 2)),
                    "dy": r.standard_normal((130, 2)), "causal": True},
         "causal, N = 130 across three chunks of the prefix sums"),
    Case("random_features.linear_attention_vjp/noncausal", 1504,
         lambda r: {"q": r.standard_normal((2, 20, 8)), "k": r.standard_normal((2, 25, 8)), "v": r.standard_normal((2, 25, 3)),
                    "dy": r.standard_normal((2, 20, 3)), "causal": False},
         "non-causal, batched, N = 20 ≠ M = 25"),
    Case("ssm.selective_scan_vjp/mamba", 1505, lambda r: _scan(r, 30, 3, 4, False, "mamba"),
         "Mamba's rule (B̄ = ΔB), batch 2, L = 30: the adjoint reverse-time scan"),
    Case("ssm.selective_scan_vjp/zoh", 1506, lambda r: _scan(r, 30, 3, 4, True, "zoh"),
         "exact zero-order hold with one A = 0 entry, batch 2, L = 30"),
    Case("ssm.selective_scan_fn_vjp/shared_gated", 1526, lambda r: _fn_vjp(r, 2, 4, 20, 3, B=(2, 3, 20), C=(2, 3, 20)),
         "mamba_ssm layout (batch, D, L), L = 20: B, C time-varying (batch, N, L) shared by the channels, D, gate z, "
         "delta_bias and softplus", outputs=_FN_ALL),
    Case("ssm.selective_scan_fn_vjp/grouped", 1527,
         lambda r: {**_fn_vjp(r, 1, 6, 17, 3, B=(1, 2, 3, 17), C=(1, 3, 3, 17)), "delta_bias": None},
         "B in G = 2 groups of three channels, C in G = 3 groups of two (batch, G, N, L): dB, dC summed over the "
         "channels of a group; D, gate z, softplus of delta without a bias", outputs=_FN_GRADS + ("dD", "dz")),
    Case("ssm.selective_scan_fn_vjp/time_invariant_threshold", 1528, _fn_vjp_threshold,
         "B, C time-invariant (D, N) (dB, dC summed over batch and time); about one step in six has "
         "x = delta + delta_bias in (25, 95), above mamba_ssm's softplus threshold 20 (the kernel's identity and "
         "the exact softplus differ there by less than 1.4e-11, and a float32 softplus without the threshold "
         "overflows above 88.7); D, delta_bias, no gate", outputs=_FN_GRADS + ("dD", "ddelta_bias")),
    Case("ssm.selective_scan_fn_vjp/complex_interleaved", 1529, _fn_vjp_complex,
         "complex A (S4D-Lin): B stored as real (real, imaginary) pairs along time (its gradient the same way), C "
         "complex time-invariant; complex gradients ∂ℓ/∂Re + i ∂ℓ/∂Im; D, gate z, delta_bias and softplus",
         outputs=_FN_ALL),
    Case("linear_rnn.ssd_vjp/groups_tile_boundary", 1507, lambda r: _ssd(r, L=65),
         "4 heads in 2 groups, batch 2, L = 65 with chunks of 64 (one full chunk plus one step)", outputs=_SSD_GRADS),
    Case("linear_rnn.ssd_vjp/fast_decay_small_chunks", 1508, lambda r: _ssd(r, L=40, dt_scale=100.0, chunk_size=7),
         "Δ·A down to about −300 per step (decays underflow to 0), chunks of 7 that do not divide L = 40",
         outputs=_SSD_GRADS),
    Case("linear_rnn.gated_linear_attention_vjp/per_channel", 1509,
         lambda r: {**_qkv_dy(r, 63), "log_g": -r.uniform(0, 1, (2, 63, 4)), "chunk_size": 16},
         "gates per key channel, L = 63 with chunks of 16", outputs=_GLA_GRADS),
    Case("linear_rnn.gated_linear_attention_vjp/gates_near_0_and_1", 1510,
         lambda r: {**_qkv_dy(r, 48), "log_g": np.where(r.random((2, 48, 4)) < 0.5, -1e-12, -r.uniform(30, 80, (2, 48, 4))),
                    "chunk_size": 16},
         "per-channel gates of 1 − 1e-12 mixed with e^-30 … e^-80 (the exact segment-sum path of the backward pass)",
         outputs=_GLA_GRADS),
    Case("linear_rnn.gated_linear_attention_vjp/per_head_long", 1511,
         lambda r: {**_qkv_dy(r, 200, batch=()), "log_g": -r.uniform(0, 0.05, 200), "chunk_size": 64, "scale": 1.0},
         "one gate per head, L = 200 across four chunks, cumulative log-gate about −5", outputs=_GLA_GRADS),
    Case("linear_rnn.retention_vjp/retnet_decays", 1512,
         lambda r: {**_qkv_dy(r, 30, batch=(3,)), "gamma": 1 - 2.0 ** (-5 - np.arange(3)), "chunk_size": 8},
         "RetNet's decays 1 − 2^(−5−h) for three heads, L = 30 with chunks of 8", outputs=("dq", "dk", "dv")),
    Case("linear_rnn.delta_rule_vjp/deltanet", 1513,
         lambda r: {**_qkv_dy(r, 23, unit_keys=True), "beta": r.uniform(0.05, 0.95, (2, 23)), "chunk_size": 8},
         "DeltaNet (no gate), β ∈ (0, 1), L = 23 with chunks of 8", constrain=renormalize("k"),
         outputs=("dq", "dk", "dv", "dbeta")),
    Case("linear_rnn.delta_rule_vjp/gated_beta_near_2", 1514,
         lambda r: {**_qkv_dy(r, 65, unit_keys=True), "beta": r.uniform(1.9, 1.99, (2, 65)),
                    "log_g": -r.uniform(0, 2.0, (2, 65)), "chunk_size": 64},
         "Gated DeltaNet with β near its bound 2, L = 65 with chunks of 64", constrain=renormalize("k"),
         outputs=_DELTA_GRADS),
    Case("linear_rnn.ssd_vjp/states", 1517,
         lambda r: {**_ssd(r, L=20, chunk_size=8), "initial_state": r.standard_normal((2, 4, 3, 4)),
                    "dfinal_state": r.standard_normal((2, 4, 3, 4))},
         "a state before the first step and a cotangent of the last (Mamba-2's initial_states, the dfinal_states "
         "of a chained segment), L = 20 with chunks of 8", outputs=_SSD_GRADS + _STATE),
    Case("linear_rnn.gated_linear_attention_vjp/states", 1518,
         lambda r: {**_qkv_dy(r, 21), "log_g": -r.uniform(0, 1, (2, 21, 4)), "chunk_size": 8,
                    "initial_state": r.standard_normal((2, 3, 4)), "dfinal_state": r.standard_normal((2, 3, 4))},
         "per-channel gates from fla's h0 (transposed) with a cotangent dht of the last state, L = 21 with chunks of 8",
         outputs=_GLA_GRADS + _STATE),
    Case("linear_rnn.delta_rule_vjp/states", 1519,
         lambda r: {**_qkv_dy(r, 19, unit_keys=True), "beta": r.uniform(0.1, 1.5, (2, 19)),
                    "log_g": -r.uniform(0, 0.5, (2, 19)), "chunk_size": 8, "initial_state": r.standard_normal((2, 3, 4)),
                    "dfinal_state": r.standard_normal((2, 3, 4))},
         "Gated DeltaNet from a given state with a cotangent of the last, L = 19 with chunks of 8",
         constrain=renormalize("k"), outputs=_DELTA_GRADS + _STATE),
    Case("linear_rnn.mamba_chunk_scan_combined_vjp/gated_per_channel_D_states", 1520, _mamba_vjp,
         "mamba_ssm layout, L = 12 with chunks of 4: D (nheads, headdim), gate z, dt_bias + softplus, dt_limit "
         "(0.25, 1.5) hit at both ends (zero ddt there), initial_states and dfinal_states", outputs=_MAMBA_ALL),
    Case("linear_rnn.chunk_gla_vjp/states", 1522, lambda r: _fla_vjp(r, gate="channel"),
         "fla layout, per-channel log-gates, initial_state h0 and the final state's cotangent dht (fla's orientation)",
         outputs=_FLA_GRADS + ("dh0",)),
    Case("linear_rnn.chunk_simple_gla_vjp/states", 1523, lambda r: _fla_vjp(r, gate="head"),
         "fla layout, one log-gate per head, h0 and dht", outputs=_FLA_GRADS + ("dh0",)),
    Case("linear_rnn.chunk_delta_rule_vjp/l2norm_states", 1524, lambda r: _fla_vjp(r, delta=True, l2norm=True, K=4),
         "DeltaNet in fla's layout, the gradient through the normalization of q and k (use_qk_l2norm_in_kernel), "
         "h0 and dht", outputs=_DELTA_FLA + ("dh0",)),
    Case("linear_rnn.chunk_gated_delta_rule_vjp/l2norm_states", 1525,
         lambda r: _fla_vjp(r, gate="head", delta=True, l2norm=True, K=4),
         "Gated DeltaNet in fla's layout through the normalization of q and k, h0 and dht",
         outputs=_GDELTA_FLA + ("dh0",)),
]
