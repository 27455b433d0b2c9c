"""Golden cases of :mod:`refimpl.attention`, chapter 4 (softmax attention): attention, multi-head
attention and the weight matrix's statistics.
"""

import numpy as np

from refimpl import attention

from ._base import Case, Function, called, mid_pair, ordered, renormalize


#: the fused-kernel conventions (chapter 4, §4.7), forwarded when a case or ``inputs=`` gives them
_KERNEL_OPTIONS = ("window", "alibi_slopes", "causal_alignment", "softcap", "grouped_heads")


def _kernel_options(args):
    return {k: args[k] for k in _KERNEL_OPTIONS if args.get(k) is not None}


def _run_softmax(args, with_mid):
    y, A = mid_pair(attention.softmax_attention(
        args["q"], args["k"], args["v"], mask=args.get("mask"), causal=args.get("causal", False), scale=args.get("scale"),
        return_weights=with_mid, **_kernel_options(args),
    ), with_mid)
    return ordered({"A": A}, {"y": y}, with_mid)


def _run_flash(args, with_mid):
    out = attention.flash_attention(
        args["q"], args["k"], args["v"], causal=args["causal"], scale=args.get("scale"),
        block_q=args["block_q"], block_k=args["block_k"], return_lse=with_mid, return_intermediates=with_mid,
        **_kernel_options(args),
    )
    if not with_mid:  # y alone (the running statistics are N per key tile and head)
        return {"y": out}
    y, lse, running = out
    return ordered({**running, "lse": lse}, {"y": y}, with_mid)  # m, z after each key tile, then ℓ


def _run_mha(args, with_mid):
    y, A = mid_pair(attention.multihead_attention(
        args["x"], args["w_q"], args["w_k"], args["w_v"], args["w_o"], args["n_heads"], causal=args["causal"],
        return_weights=with_mid,
    ), with_mid)
    return ordered({"A": A}, {"y": y}, with_mid)


def _run_attention_stats(args, with_mid):
    W = args["weights"]
    return {"entropy": attention.attention_entropy(W), "support": attention.effective_support(W)}


def _run_flash_official(fn):
    def run(args, with_mid):
        out, lse, _ = fn(**args, return_attn_probs=True)
        return {"out": out, "softmax_lse": lse}

    return run


FUNCTIONS = [
    Function("attention.softmax_attention", _run_softmax, ("y",), intermediates=("A",)),
    Function("attention.multihead_attention", _run_mha, ("y",), skip=("mask", "scale"), intermediates=("A",)),
    Function("attention.attention_statistics", _run_attention_stats, ("entropy", "support"),
             "fn(weights) -> (attention_entropy, effective_support)"),
    called("attention.lag_profile", "lags", "profile"),
    called("attention.frequency_response", "omega", "H"),
    Function("attention.flash_attention", _run_flash, ("y",), intermediates=("running_max", "running_sum", "lse")),
    called("attention.alibi_geometric_slopes", "m"),
    Function("attention.flash_attn_func", _run_flash_official(attention.flash_attn_func), ("out", "softmax_lse"),
             optional=("softmax_lse",), skip=("deterministic",)),
    Function("attention.flash_attn_varlen_func", _run_flash_official(attention.flash_attn_varlen_func),
             ("out", "softmax_lse"), optional=("softmax_lse",), skip=("deterministic",)),
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
    Case("attention.softmax_attention/gqa_bottom_right", 413,
         lambda r: {"q": r.standard_normal((4, 33, 16)), "k": r.standard_normal((2, 65, 16)), "v": r.standard_normal((2, 65, 8)),
                    "causal": True, "causal_alignment": "bottom_right", "grouped_heads": True},
         "grouped-query heads (4 query heads, 2 key/value heads), causal mask aligned bottom-right (a KV cache, N < M)"),
    Case("attention.softmax_attention/softcap_alibi_window", 414,
         lambda r: {"q": 3.0 * r.standard_normal((2, 65, 32)), "k": 3.0 * r.standard_normal((2, 65, 32)),
                    "v": r.standard_normal((2, 65, 8)), "causal": True, "softcap": 5.0, "window": 31,
                    "alibi_slopes": np.array([0.5, 0.125])},
         "logit soft-capping (Gemma 2's c·tanh(s/c)), ALiBi and a sliding window at a tile-boundary length"),
    Case("attention.flash_attention/gqa_bottom_right", 415,
         lambda r: {"q": r.standard_normal((4, 63, 32)), "k": r.standard_normal((1, 66, 32)), "v": r.standard_normal((1, 66, 8)),
                    "causal": True, "causal_alignment": "bottom_right", "grouped_heads": True, "block_q": 64, "block_k": 64},
         "multi-query heads (one key/value head), bottom-right causal alignment (N = 63 < M = 66), a last key tile of 2"),
    Case("attention.flash_attention/softcap_window", 416,
         lambda r: {"q": 3.0 * r.standard_normal((65, 64)), "k": 3.0 * r.standard_normal((65, 64)), "v": r.standard_normal((65, 4)),
                    "causal": True, "softcap": 10.0, "window": 20, "block_q": 32, "block_k": 32},
         "soft-capped logits and a sliding window across tile edges"),
    Case("attention.alibi_geometric_slopes/twelve_heads", 412, lambda r: {"n_heads": 12},
         "ALiBi's slopes for a head count that is not a power of two"),
]
