"""Golden cases of :mod:`refimpl.focus`, chapter 14 (Focus): the per-bin adaptive filter, the
hypernetwork, chunked attention, the gated layer and MEGA's EMA. Parameter dictionaries are passed
as arguments p_<key>.
"""

import numpy as np

from refimpl import focus

from ._base import Case, Function, called, ordered


def _run_global_conv(args, with_mid):
    return {"g": focus.global_conv(args["x"], args["kernel"], args["skip"], squash=float(args["squash"]))}


def _focus_params(args):
    return {k[2:]: v for k, v in args.items() if k.startswith("p_")}


def _run_hypernetwork(args, with_mid):
    return {"theta": focus.hypernetwork(args["x"], _focus_params(args), n_bins=int(args["n_bins"]))}


def _run_focus_layer(args, with_mid):
    out, parts = focus.focus_layer(args["x"], _focus_params(args), variant=str(args["variant"]), chunk_size=int(args["chunk_size"]),
                                   n_bins=int(args["n_bins"]), return_intermediates=True)
    return ordered({"theta": parts["theta"], "x_f": parts["x_f"], "y": parts["y"]}, {"out": out}, with_mid)


def _focus_layer_args(r, d=4, L=32):
    params = focus.init_focus_params(d, kernel_len=16, rng=int(r.integers(1_000_000)))
    return {"x": r.standard_normal((L, d)), **{"p_" + k: np.asarray(v) for k, v in params.items()}}


def _ema_args(r, D=3, h=2):
    return {"alpha": r.uniform(0.05, 0.95, (D, h)), "delta": r.uniform(0.05, 0.95, (D, h)),
            "beta": r.standard_normal((D, h)), "eta": r.standard_normal((D, h))}


FUNCTIONS = [
    called("focus.focus_frequency_response", "H"),
    called("focus.periodized_impulse_response", "h"),
    called("focus.adaptive_filter", "y"),
    called("focus.continuous_exponents", "s"),
    called("focus.continuous_impulse_response", "h"),
    Function("focus.global_conv", _run_global_conv, ("g",)),
    called("focus.adaptive_max_pool", "p"),
    Function("focus.hypernetwork", _run_hypernetwork, ("theta",),
             "fn(x, params as p_<key>, n_bins) -> theta"),
    called("focus.chunked_attention", "y"),
    called("focus.gated_residual", "out"),
    Function("focus.focus_layer", _run_focus_layer, ("out",),
             "fn(x, params as p_<key>, variant, chunk_size, n_bins) -> out; intermediates theta, x_f, y"),
    called("focus.mega_ema_kernel", "K"),
    called("focus.mega_ema", "y"),
]

CASES = [
    Case("focus.focus_frequency_response/near_marginal", 1101,
         lambda r: {"theta": np.array([[0.5, 0.5], [0.9, 1 - 1e-5], [0.01, 0.99]]), "n_fft": 64},
         "P-5 grid, including a pole pair at radius 1 − 5e-6"),
    Case("focus.periodized_impulse_response/basic", 1102,
         lambda r: {"theta": r.uniform(0.05, 0.95, (3, 2)), "n": 32}, "the response the FFT variants apply"),
    Case("focus.adaptive_filter/recursive", 1103,
         lambda r: {"x": r.standard_normal((64, 3)), "theta": r.uniform(0.0, 1.0, (4, 3, 1, 2)), "variant": "causal-recursive"},
         "per-bin difference equation, exactly causal"),
    Case("focus.adaptive_filter/literal", 1104,
         lambda r: {"x": r.standard_normal((64, 3)), "theta": r.uniform(0.0, 1.0, (4, 3, 1, 2)), "variant": "literal"},
         "the paper's per-bin FFT × conjugate response (non-causal within a bin)"),
    Case("focus.adaptive_filter/causal_circular", 1105,
         lambda r: {"x": r.standard_normal((64, 3)), "theta": r.uniform(0.0, 1.0, (4, 3, 1, 2)), "variant": "causal-circular"},
         "per-bin FFT × H (circular within a bin)"),
    Case("focus.continuous_exponents/grid", 1106,
         lambda r: {"theta": r.uniform(0.01, 0.99, (6, 2))}, "the paper's continuous-time reading of θ"),
    Case("focus.continuous_impulse_response/grid", 1107,
         lambda r: {"theta": r.uniform(0.01, 0.99, 2), "t": np.linspace(0.0, 10.0, 21)}, "continuous reading, corrected ω"),
    Case("focus.global_conv/basic", 1108,
         lambda r: {"x": r.standard_normal((32, 3)), "kernel": r.standard_normal((16, 3)) / 4, "skip": r.standard_normal(3),
                    "squash": 0.0}, "the hypernetwork's global causal convolution"),
    Case("focus.adaptive_max_pool/uneven", 1109,
         lambda r: {"g": r.standard_normal((30, 3)), "n_out": 7}, "PyTorch's floor/ceil windows, 30 → 7"),
    Case("focus.hypernetwork/basic", 1110,
         lambda r: {**_focus_layer_args(r), "n_bins": 4}, "θ per (bin, channel, branch) from previous bins"),
    Case("focus.chunked_attention/basic", 1111,
         lambda r: {"x": r.standard_normal((32, 4)), "x_f": r.standard_normal((32, 4)), "w_q": r.standard_normal((4, 4)) / 2,
                    "w_k": r.standard_normal((4, 4)) / 2, "w_v": r.standard_normal((4, 4)) / 2, "chunk_size": 8},
         "causal attention within chunks, queries from x, keys/values from x_f"),
    Case("focus.gated_residual/basic", 1112,
         lambda r: {k: r.standard_normal(s) / 2 for k, s in (("x", (16, 4)), ("x_f", (16, 4)), ("y", (16, 4)), ("w_gamma", (4, 4)),
                    ("b_gamma", (4,)), ("w_phi", (4, 4)), ("b_phi", (4,)), ("w_h", (4, 4)), ("u_h", (4, 4)), ("b_h", (4,)))},
         "MEGA-style reset/update gates and residual"),
    Case("focus.focus_layer/recursive", 1113,
         lambda r: {**_focus_layer_args(r), "variant": "causal-recursive", "chunk_size": 8, "n_bins": 4},
         "the whole layer; intermediates θ, x_f, attention output"),
    Case("focus.mega_ema_kernel/basic", 1114, lambda r: {**_ema_args(r), "n": 40},
         "MEGA's multi-dimensional damped EMA kernel"),
    Case("focus.mega_ema/basic", 1115, lambda r: {"x": r.standard_normal((40, 3)), **_ema_args(r)},
         "the EMA as a causal FFT convolution"),
]
