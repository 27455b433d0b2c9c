"""Golden cases of the vector–Jacobian products (the backward passes) of softmax attention
(chapter 4), linear attention (chapter 12) and the selective scan (chapter 11): ``compare`` checks
a kernel's gradients like any output. Each case draws the cotangent ``dy`` with the inputs.
"""

import numpy as np

from refimpl import ssm

from ._base import Case, Function, called


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


def _scan(r, L, d_in, n, with_zero, discretization):
    A = -np.exp(r.standard_normal((d_in, n)))
    if with_zero:
        A[0, 0] = 0.0  # a pure integrator: the series branch of ∂B̄/∂A
    return {"u": r.standard_normal((2, L, d_in)), "delta": r.uniform(0.01, 0.5, (2, L, d_in)), "A": A,
            "B": r.standard_normal((2, L, n)), "C": r.standard_normal((2, L, n)), "D": r.standard_normal(d_in),
            "dy": r.standard_normal((2, L, d_in)), "discretization": discretization}


FUNCTIONS = [
    called("attention.softmax_attention_vjp", "dq", "dk", "dv"),
    called("random_features.linear_attention_vjp", "dq", "dk", "dv"),
    Function("ssm.selective_scan_vjp", _run_selective_scan_vjp, ("du", "ddelta", "dA", "dB", "dC", "dD")),
]

CASES = [
    Case("attention.softmax_attention_vjp/causal_heads", 1501, _softmax_causal_heads,
         "causal, two heads, N = 70 (one full query block of 64 plus 6 rows)"),
    Case("attention.softmax_attention_vjp/mask_cross", 1502, _softmax_mask_cross,
         "cross-attention N = 5 ≠ M = 9 with a boolean mask and scale 0.5"),
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
]
