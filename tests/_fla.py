"""fla-layout inputs (B, T, H, K) for the tests of the official interfaces (shared by two test modules)."""

import numpy as np


def fla_inputs(seed=0, B=2, T=9, H=2, K=3, V=2, gate="none", delta=False, l2norm=False, state=True):
    r = np.random.default_rng(seed)
    k = r.standard_normal((B, T, H, K))
    kw = dict(q=r.standard_normal((B, T, H, K)), k=k if (l2norm or not delta) else k / np.linalg.norm(k, axis=-1, keepdims=True),
              v=r.standard_normal((B, T, H, V)))
    if gate == "channel":
        kw["g"] = -r.uniform(0, 1, (B, T, H, K))
    elif gate == "head":
        kw["g"] = -r.uniform(0, 0.7, (B, T, H))
    if delta:
        kw["beta"] = r.uniform(0.1, 1.5, (B, T, H))
    opts = dict(initial_state=r.standard_normal((B, H, K, V))) if state else {}
    if delta:
        opts["use_qk_l2norm_in_kernel"] = l2norm
    return kw, opts
