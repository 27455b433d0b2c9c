"""Golden cases of :mod:`refimpl.mixing`, chapter 10 (token mixing without attention): FNet, gMLP's
gating unit, long convolutions and Hyena.
"""

import numpy as np

from refimpl import mixing

from ._base import Case, Function, called, ordered


def _run_hyena_filter(args, with_mid):
    return {"h": mixing.hyena_filter(int(args["L"]), int(args["d"]), n_filters=int(args["n_filters"]), rng=int(args["seed"]))}


def _run_hyena_operator(args, with_mid):
    y, v, x = mixing.hyena_operator(args["u"], args["w_in"], args["filters"], b_in=args.get("b_in"), skip=args.get("skip"),
                                    return_projections=True)
    return ordered({"v": v, "x": x}, {"y": y}, with_mid)  # the projections (v, x^1 … x^N), then the output


FUNCTIONS = [
    called("mixing.fnet", "y"),
    called("mixing.fnet_matrix", "M"),
    called("mixing.spatial_gating_unit", "y"),
    called("mixing.fft_conv", "y"),
    called("mixing.causal_toeplitz", "T"),
    Function("mixing.hyena_filter", _run_hyena_filter, ("h",),
             "fn(L, d, n_filters, seed) -> h (refimpl: rng=seed)"),
    called("mixing.hyena_recurrence", "y"),
    Function("mixing.hyena_operator", _run_hyena_operator, ("y",), skip=("short_filter", "short_bias"), intermediates=("v", "x")),
    called("mixing.hyena_matrix", "H"),
]

CASES = [
    Case("mixing.fnet/basic", 1001, lambda r: {"x": r.standard_normal((2, 12, 6))}, "Re 2-D DFT, batched"),
    Case("mixing.fnet_matrix/small", 1002, lambda r: {"N": 6, "d": 4}, "the real N·d × N·d operator"),
    Case("mixing.spatial_gating_unit/causal", 1003,
         lambda r: {"x": r.standard_normal((10, 8)), "w": r.standard_normal((10, 10)) / 10, "b": np.ones(10), "causal": True},
         "gMLP SGU, lower-triangular W"),
    Case("mixing.fft_conv/long_filter", 1004,
         lambda r: {"u": r.standard_normal((2, 300, 3)), "h": r.standard_normal((300, 3)) * np.exp(-np.arange(300) / 50.0)[:, None]},
         "causal linear convolution, filter as long as the signal (no wrap-around)"),
    Case("mixing.causal_toeplitz/basic", 1005,
         lambda r: {"h": r.standard_normal((5, 2)), "N": 8}, "the convolution as a lower-triangular Toeplitz matrix"),
    Case("mixing.hyena_filter/defaults", 1006,
         lambda r: {"L": 32, "d": 4, "n_filters": 2, "seed": 7}, "implicit filters from a seeded FFN, decay window"),
    Case("mixing.hyena_recurrence/order2", 1007,
         lambda r: {"v": r.standard_normal((16, 3)), "x": r.standard_normal((2, 16, 3)),
                    "filters": r.standard_normal((2, 16, 3)) * 0.3, "skip": r.standard_normal((2, 3))},
         "Def. 3.1 of Poli et al., order 2"),
    Case("mixing.hyena_operator/order2", 1008,
         lambda r: {"u": r.standard_normal((16, 3)), "w_in": r.standard_normal((3, 9)) / 3,
                    "filters": r.standard_normal((2, 16, 3)) * 0.3, "b_in": r.standard_normal(9), "skip": r.standard_normal((2, 3))},
         "projections, then the recurrence; intermediates: the projections"),
    Case("mixing.hyena_matrix/order2", 1009,
         lambda r: {"x": r.standard_normal((2, 12, 2)), "filters": r.standard_normal((2, 12, 2)) * 0.3},
         "H(u) as diagonal gates times Toeplitz matrices"),
]
