"""Golden cases of :mod:`refimpl.attention`, chapter 4 (softmax attention): attention, multi-head
attention and the weight matrix's statistics.
"""

import numpy as np

from refimpl import attention

from ._base import Case, Function, called, ordered, renormalize


def _run_softmax(args, with_mid):
    y, A = attention.softmax_attention(
        args["q"], args["k"], args["v"], mask=args.get("mask"), causal=args.get("causal", False), scale=args.get("scale"),
        return_weights=True, window=args.get("window"), alibi_slopes=args.get("alibi_slopes"),
    )
    return ordered({"A": A}, {"y": y}, with_mid)


def _run_flash(args, with_mid):
    y, lse = attention.flash_attention(
        args["q"], args["k"], args["v"], causal=args["causal"], scale=args.get("scale"),
        block_q=args["block_q"], block_k=args["block_k"], return_lse=True,
    )
    return ordered({"lse": lse}, {"y": y}, with_mid)


def _run_mha(args, with_mid):
    y, A = attention.multihead_attention(
        args["x"], args["w_q"], args["w_k"], args["w_v"], args["w_o"], args["n_heads"], causal=args["causal"], return_weights=True
    )
    return ordered({"A": A}, {"y": y}, with_mid)


def _run_attention_stats(args, with_mid):
    W = args["weights"]
    return {"entropy": attention.attention_entropy(W), "support": attention.effective_support(W)}


FUNCTIONS = [
    Function("attention.softmax_attention", _run_softmax, ("y",), intermediates=("A",)),
    Function("attention.multihead_attention", _run_mha, ("y",), skip=("mask", "scale"), intermediates=("A",)),
    Function("attention.attention_statistics", _run_attention_stats, ("entropy", "support"),
             "fn(weights) -> (attention_entropy, effective_support)"),
    called("attention.lag_profile", "lags", "profile"),
    called("attention.frequency_response", "omega", "H"),
    Function("attention.flash_attention", _run_flash, ("y",), intermediates=("lse",)),
    called("attention.alibi_geometric_slopes", "m"),
]

CASES = [
    Case("attention.softmax_attention/basic", 401,
         lambda r: {"q": r.standard_normal((6, 4)), "k": r.standard_normal((6, 4)), "v": r.standard_normal((6, 3)), "causal": False},
         "non-causal self-attention"),
    Case("attention.softmax_attention/causal_batched", 402,
         lambda r: {"q": r.standard_normal((2, 7, 4)), "k": r.standard_normal((2, 7, 4)), "v": r.standard_normal((2, 7, 4)), "causal": True},
         "causal, batch of two"),
    Case("attention.softmax_attention/mask_cross", 403,
         lambda r: {"q": r.standard_normal((5, 4)), "k": r.standard_normal((8, 4)), "v": r.standard_normal((8, 2)), "causal": False,
                    "mask": (r.random((5, 8)) < 0.7) | np.eye(5, 8, dtype=bool)},
         "cross-attention N != M with a boolean mask"),
    Case("attention.softmax_attention/large_logits", 404,
         lambda r: {"q": 300.0 * r.standard_normal((6, 4)), "k": 300.0 * r.standard_normal((6, 4)), "v": r.standard_normal((6, 3)),
                    "causal": True, "scale": 1.0},
         "logits of order 1e5: a naive exp overflows, the max-subtracted softmax does not"),
    Case("attention.multihead_attention/causal_two_heads", 405,
         lambda r: {"x": r.standard_normal((6, 8)), "w_q": r.standard_normal((8, 8)) / 3, "w_k": r.standard_normal((8, 8)) / 3,
                    "w_v": r.standard_normal((8, 8)) / 3, "w_o": r.standard_normal((8, 8)) / 3, "n_heads": 2, "causal": True},
         "two heads, causal"),
    Case("attention.attention_statistics/weights", 406,
         lambda r: {"weights": attention.attention_weights(r.standard_normal((6, 3)), r.standard_normal((6, 3)), causal=True)},
         "entropy and effective support of causal weights (one-hot first row)", constrain=renormalize("weights", by="sum")),
    Case("attention.lag_profile/toeplitz", 407,
         lambda r: {"W": np.tril(0.5 ** np.abs(np.subtract.outer(np.arange(8), np.arange(8)))) + 0.01 * r.random((8, 8))},
         "mean weight per lag of a nearly Toeplitz matrix"),
    Case("attention.frequency_response/exponential", 408,
         lambda r: {"W": np.tril(0.7 ** np.maximum(np.subtract.outer(np.arange(8), np.arange(8)), 0)) * (1 + 0.05 * r.random((8, 8))),
                    "omega": np.linspace(0.0, np.pi, 9)},
         "frequency response of an exponential-moving-average-like weight matrix"),
    # chapter 16: FlashAttention's online softmax (Eq. (16.15)) and ALiBi's slopes (Eq. (16.16))
    Case("attention.flash_attention/tile_boundaries", 410,
         lambda r: {"q": r.standard_normal((2, 21, 4)), "k": r.standard_normal((2, 13, 4)), "v": r.standard_normal((2, 13, 3)),
                    "causal": True, "block_q": 8, "block_k": 5},
         "N = 21, M = 13: neither a multiple of the 8 × 5 tiles; intermediate: the row log-sum-exp"),
    Case("attention.flash_attention/large_logits", 411,
         lambda r: {"q": 100.0 * r.standard_normal((10, 4)), "k": 100.0 * r.standard_normal((17, 4)), "v": r.standard_normal((17, 2)),
                    "causal": False, "scale": 1.0, "block_q": 4, "block_k": 4},
         "logits of order 1e4: the running max rescales every tile"),
    Case("attention.alibi_geometric_slopes/twelve_heads", 412, lambda r: {"n_heads": 12},
         "ALiBi's slopes for a head count that is not a power of two"),
]
