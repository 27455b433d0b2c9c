"""Golden cases of :mod:`refimpl.random_features`, chapter 12 (linear attention and random
features): kernelized attention, FAVOR+, RFA, LSH attention, reversible layers. Random draws are
passed as an integer seed or as given projections.
"""

import numpy as np

from refimpl import random_features

from ._base import Case, Function, called


def _run_orthogonal_gaussian(args, with_mid):
    return {"W": random_features.orthogonal_gaussian(int(args["m"]), int(args["d"]), rng=int(args["seed"]))}


def _run_performer(args, with_mid):
    kw = dict(n_features=args["projection"].shape[0], rng=None, causal=bool(args["causal"]), projection=args["projection"])
    return {"y": random_features.performer_attention(args["q"], args["k"], args["v"], **kw)}


def _run_performer_quadratic(args, with_mid):
    kw = dict(n_features=args["projection"].shape[0], rng=None, causal=bool(args["causal"]), projection=args["projection"])
    return {"y": random_features.performer_attention_quadratic(args["q"], args["k"], args["v"], **kw)}


def _run_rfa(args, with_mid):
    return {"y": random_features.rfa_attention(args["q"], args["k"], args["v"], n_features=int(args["n_features"]), sigma=float(args["sigma"]),
                                               rng=int(args["seed"]), gated=True, gates=args["gates"], causal=True)}


def _run_lsh_hash(args, with_mid):
    return {"buckets": random_features.lsh_hash(args["x"], int(args["n_buckets"]), rng=None, n_rounds=int(args["n_rounds"]),
                                                 rotations=args["rotations"])}


def _run_lsh_attention(args, with_mid):
    return {"y": random_features.lsh_attention(args["qk"], args["v"], n_buckets=int(args["n_buckets"]), n_rounds=int(args["n_rounds"]),
                                               chunk_size=int(args["chunk_size"]), rng=int(args["seed"]))}


def _rev_f(w):
    return lambda x: np.tanh(x @ w)


def _run_reversible_forward(args, with_mid):
    y1, y2 = random_features.reversible_forward(args["x1"], args["x2"], _rev_f(args["wf"]), _rev_f(args["wg"]))
    return {"y1": y1, "y2": y2}


def _run_reversible_inverse(args, with_mid):
    x1, x2 = random_features.reversible_inverse(args["y1"], args["y2"], _rev_f(args["wf"]), _rev_f(args["wg"]))
    return {"x1": x1, "x2": x2}


FUNCTIONS = [
    called("random_features.elu_plus_one", "phi"),
    called("random_features.linear_attention", "y"),
    called("random_features.favor_features", "phi"),
    Function("random_features.orthogonal_gaussian", _run_orthogonal_gaussian, ("W",),
             "fn(m, d, seed) -> W (refimpl: rng=seed)"),
    Function("random_features.performer_attention", _run_performer, ("y",),
             "fn(q, k, v, projection, causal) -> y (refimpl: n_features=len(projection), rng=None)"),
    Function("random_features.performer_attention_quadratic", _run_performer_quadratic, ("y",),
             "fn(q, k, v, projection, causal) -> y (refimpl: n_features=len(projection), rng=None)"),
    called("random_features.rff_features", "phi"),
    Function("random_features.rfa_attention", _run_rfa, ("y",),
             "fn(q, k, v, n_features, sigma, seed, gates) -> y, the causal gated form (refimpl: rng=seed, gated=True, causal=True)"),
    Function("random_features.lsh_hash", _run_lsh_hash, ("buckets",),
             "fn(x, n_buckets, n_rounds, rotations) -> buckets (refimpl: rng=None)"),
    Function("random_features.lsh_attention", _run_lsh_attention, ("y",),
             "fn(qk, v, n_buckets, n_rounds, chunk_size, seed) -> y (refimpl: rng=seed)"),
    Function("random_features.reversible_forward", _run_reversible_forward, ("y1", "y2"),
             "fn(x1, x2, wf, wg) -> (y1, y2) with F = tanh(· wf), G = tanh(· wg)"),
    Function("random_features.reversible_inverse", _run_reversible_inverse, ("x1", "x2"),
             "fn(y1, y2, wf, wg) -> (x1, x2) with F = tanh(· wf), G = tanh(· wg)"),
]

CASES = [
    Case("random_features.elu_plus_one/grid", 1201,
         lambda r: {"x": np.linspace(-30.0, 5.0, 36)}, "φ(x) = elu(x) + 1, including deep negative inputs"),
    Case("random_features.linear_attention/causal", 1202,
         lambda r: {"q": r.standard_normal((300, 8)), "k": r.standard_normal((300, 8)), "v": r.standard_normal((300, 4)),
                    "causal": True}, "the causal linear attention over several chunks (prefix sums)"),
    Case("random_features.linear_attention/noncausal", 1203,
         lambda r: {"q": r.standard_normal((2, 20, 8)), "k": r.standard_normal((2, 20, 8)), "v": r.standard_normal((2, 20, 3)),
                    "causal": False}, "non-causal, batched"),
    Case("random_features.favor_features/positive", 1204,
         lambda r: {"x": 2.0 * r.standard_normal((6, 8)), "projection": r.standard_normal((32, 8)), "kind": "positive"},
         "FAVOR+ positive features with large norms (stabilized)"),
    Case("random_features.favor_features/trig", 1205,
         lambda r: {"x": r.standard_normal((6, 8)), "projection": r.standard_normal((16, 8)), "kind": "trig"},
         "trigonometric random features"),
    Case("random_features.orthogonal_gaussian/blocks", 1206,
         lambda r: {"m": 20, "d": 8, "seed": 5}, "orthogonal blocks with chi-distributed row norms"),
    Case("random_features.performer_attention/causal", 1207,
         lambda r: {"q": r.standard_normal((260, 8)) / 2, "k": r.standard_normal((260, 8)) / 2, "v": r.standard_normal((260, 4)),
                    "projection": r.standard_normal((64, 8)), "causal": True}, "linear-time causal Performer, given projection"),
    Case("random_features.performer_attention_quadratic/noncausal", 1208,
         lambda r: {"q": r.standard_normal((24, 8)) / 2, "k": r.standard_normal((24, 8)) / 2, "v": r.standard_normal((24, 4)),
                    "projection": r.standard_normal((64, 8)), "causal": False}, "the same features, quadratic path"),
    Case("random_features.rff_features/basic", 1209,
         lambda r: {"x": r.standard_normal((5, 6)), "projection": r.standard_normal((12, 6))}, "random Fourier features"),
    Case("random_features.rfa_attention/gated", 1210,
         lambda r: {"q": r.standard_normal((40, 8)), "k": r.standard_normal((40, 8)), "v": r.standard_normal((40, 3)),
                    "n_features": 32, "sigma": 1.5, "seed": 7, "gates": r.uniform(0.0, 0.99, 40)},
         "gated RFA (decay-masked form), seeded features"),
    Case("random_features.lsh_hash/rounds", 1211,
         lambda r: {"x": r.standard_normal((16, 6)), "n_buckets": 4, "n_rounds": 2, "rotations": r.standard_normal((2, 6, 2))},
         "bucket ids from given rotations, two rounds"),
    Case("random_features.lsh_attention/two_rounds", 1212,
         lambda r: {"qk": r.standard_normal((64, 8)), "v": r.standard_normal((64, 4)), "n_buckets": 4, "n_rounds": 2,
                    "chunk_size": 16, "seed": 3}, "shared-QK LSH attention, log-sum-exp over rounds"),
    Case("random_features.reversible_forward/tanh", 1213,
         lambda r: {"x1": r.standard_normal((10, 4)), "x2": r.standard_normal((10, 4)), "wf": r.standard_normal((4, 4)),
                    "wg": r.standard_normal((4, 4))}, "RevNet block with tanh sub-blocks"),
    Case("random_features.reversible_inverse/tanh", 1214,
         lambda r: {"y1": r.standard_normal((10, 4)), "y2": r.standard_normal((10, 4)), "wf": r.standard_normal((4, 4)),
                    "wg": r.standard_normal((4, 4))}, "its inverse"),
]
