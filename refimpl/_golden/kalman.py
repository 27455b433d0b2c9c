"""Golden cases of :mod:`refimpl.kalman`, chapter 3 (Kalman filtering and smoothing): sequential,
scan and batch forms, the weight matrix, the steady state.
"""

import numpy as np

from refimpl import kalman, sde

from ._base import Case, called


def _kalman_regular(rng, *, N=12, missing=(), batch=()):
    model = sde.spiral_system()
    F, Q, H, R = kalman.from_sde(model, np.arange(2) * 0.3)
    x, z = sde.sample(model, np.arange(N) * 0.3, size=batch or None, rng=rng)
    z = z.copy()
    z[..., list(missing), :] = np.nan
    return {"z": z, "F": F[0], "H": H, "Q": Q[0], "R": R, "m0": np.zeros(2), "P0": np.eye(2)}


def _kalman_irregular(rng, N=12, missing=()):
    model = sde.spiral_system()
    t = np.concatenate([[0.0], np.cumsum(rng.exponential(0.4, N - 1) + 1e-3)])
    F, Q, H, R = kalman.from_sde(model, t)
    _, z = sde.sample(model, t, rng=rng)
    z[list(missing), :] = np.nan
    return {"z": z, "F": F, "H": H, "Q": Q, "R": R, "m0": np.zeros(2), "P0": np.eye(2)}


FUNCTIONS = [
    called("kalman.kalman_filter", "m", "P"),
    called("kalman.kalman_filter_scan", "m", "P"),
    called("kalman.rts_smoother", "m", "P"),
    called("kalman.rts_smoother_scan", "m", "P"),
    called("kalman.batch_smoother", "m", "P"),
    called("kalman.steady_state", "K", "P_prior", "P_post"),
    called("kalman.kalman_weight_matrix", "W", "c", return_offset=True, optional=("c",)),  # c: return_offset=True
]

CASES = [
    *[
        Case(f"{fn}/{label}", seed, build, desc)
        for fn, base in [("kalman.kalman_filter", 300), ("kalman.rts_smoother", 310)]
        for seed, label, build, desc in [
            (base + 1, "regular", lambda r: _kalman_regular(r), "spiral system, regular grid"),
            (base + 2, "missing_data", lambda r: _kalman_regular(r, missing=(0, 4, 5, 11)),
             "all-NaN rows: predict only (first and last missing too)"),
            (base + 3, "irregular_grid", lambda r: _kalman_irregular(r),
             "step-dependent F and Q from from_sde on an irregular grid"),
            (base + 4, "batch", lambda r: _kalman_regular(r, batch=(3,)), "three independent sequences"),
        ]
    ],
    *[
        Case(f"{fn}/{label}", seed, build, desc)
        for fn, base in [("kalman.kalman_filter_scan", 320), ("kalman.rts_smoother_scan", 330), ("kalman.batch_smoother", 340)]
        for seed, label, build, desc in [
            (base + 1, "regular", lambda r: _kalman_regular(r), "spiral system, regular grid"),
            (base + 2, "missing_irregular", lambda r: _kalman_irregular(r, missing=(2, 3, 9)),
             "irregular grid with missing measurements"),
        ]
    ],
    Case("kalman.kalman_weight_matrix/smoother", 351,
         lambda r: {**{k: v for k, v in _kalman_regular(r, N=10).items() if k != "z"}, "n_steps": 10, "kind": "smoother"},
         "the smoother's attention matrix W and offset c"),
    Case("kalman.kalman_weight_matrix/filter_missing", 352,
         lambda r: {**{k: v for k, v in _kalman_regular(r, N=10).items() if k != "z"}, "n_steps": 10, "kind": "filter",
                    "missing": np.isin(np.arange(10), [3, 4])},
         "the filter's causal W with two missing measurements (zero columns)"),
    Case("kalman.steady_state/spiral", 353,
         lambda r: {k: v for k, v in _kalman_regular(r).items() if k in ("F", "H", "Q", "R")}, "DARE solution and gain"),
]
