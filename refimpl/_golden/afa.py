"""Golden cases of :mod:`refimpl.afa`, chapters 7–8 (adaptive filter attention): the tensor and
isotropic forms and the IRLS estimator.
"""

import numpy as np

from refimpl import afa

from ._base import LAM3, Case, Function, cplx


_AFA_KW = ("sigma2", "eta2", "gamma2", "nu", "t", "weight", "kappa", "temperature", "causal")


def _run_afa(args, with_mid):
    kw = {k: args.get(k) for k in _AFA_KW}
    kw["temperature"] = args.get("temperature", 1.0)
    kw["weight"] = args.get("weight", "student")
    kw["causal"] = args.get("causal", True)
    if not with_mid:
        return {"out": afa.afa(args["q"], args["k"], args["v"], eigvals=args["eigvals"], **kw)}
    out, inter = afa.afa(args["q"], args["k"], args["v"], eigvals=args["eigvals"], return_intermediates=True, **kw)
    m = _outside(args, kw["causal"])
    return {"P": _nan_at(inter["P"], m[..., None]), "R": _nan_at(inter["R"], m[..., None]), "d2": _nan_at(inter["d2"], m),
            "logits": _nan_at(inter["logits"], m[..., None]), "A": inter["A"], "out": out}


def _outside(args, causal):
    """Pairs (i, j) outside a causal computation (t_j > t_i): their intermediates are NaN (not compared)."""
    n = np.shape(args["q"])[-2]
    t = np.arange(n, dtype=np.float64) if args.get("t") is None else np.asarray(args["t"], dtype=np.float64)
    return np.subtract.outer(t, t) < 0 if causal else np.zeros((n, n), dtype=bool)


def _nan_at(x, mask):
    return np.where(mask, np.nan, x)


def _run_isotropic(args, with_mid):
    kw = {k: args.get(k) for k in _AFA_KW}
    kw["temperature"] = args.get("temperature", 1.0)
    kw["weight"] = args.get("weight", "student")
    kw["causal"] = args.get("causal", True)
    if not with_mid:
        return {"out": afa.isotropic_afa(args["q"], args["k"], args["v"], mu=args["mu"], omega=args["omega"], **kw)}
    out, A = afa.isotropic_afa(args["q"], args["k"], args["v"], mu=args["mu"], omega=args["omega"], return_weights=True, **kw)
    # The isotropic intermediates are the tensor form's, which do not depend on the channel for
    # P and A; ||R_ij||^2 = sum_k |R_kij|^2 is the squared residual norm of Eq. (8.2).
    eig = -np.asarray(args["mu"], dtype=np.float64) + 1j * np.asarray(args["omega"], dtype=np.float64)
    _, inter = afa.afa(args["q"], args["k"], args["v"], eigvals=eig, return_intermediates=True, **kw)
    R2 = np.sum(np.abs(inter["R"]) ** 2, axis=-1)
    m = _outside(args, kw["causal"])
    return {"P": _nan_at(inter["P"][..., 0], m), "R2": _nan_at(R2, m), "d2": _nan_at(inter["d2"], m), "A": A, "out": out}


def _run_irls(args, with_mid):
    kw = {k: args.get(k) for k in ("sigma2", "eta2", "gamma2", "nu", "t")}
    return {"estimates": afa.afa_irls(args["z"], eigvals=args["eigvals"], n_iter=args["n_iter"], step=args["step"], **kw)}


def _afa_inputs(rng, N, d, t=None):
    out = {"q": cplx(rng, N, d), "k": cplx(rng, N, d), "v": cplx(rng, N, d)}
    if t is not None:
        out["t"] = t
    return out


FUNCTIONS = [
    Function("afa.afa", _run_afa, ("out",), skip=("rotate_values",), intermediates=("P", "R", "d2", "logits", "A")),
    Function("afa.isotropic_afa", _run_isotropic, ("out",), skip=("rotate_values",), intermediates=("P", "R2", "d2", "A")),
    Function("afa.afa_irls", _run_irls, ("estimates",), skip=("weight", "kappa", "causal")),
]

CASES = [
    Case("afa.afa/causal_student", 601,
         lambda r: {**_afa_inputs(r, 8, 3), "eigvals": LAM3, "sigma2": np.array([0.5, 0.2, 1.0]), "eta2": 0.1, "gamma2": 0.05, "nu": 2.0},
         "tensor form, causal, Student-t weight, per-channel noise"),
    Case("afa.afa/exponential_noncausal", 602,
         lambda r: {**_afa_inputs(r, 7, 3, t=np.cumsum(r.exponential(0.5, 7))), "eigvals": LAM3, "sigma2": 0.3, "eta2": 0.2,
                    "gamma2": 0.0, "nu": 3.0, "weight": "exponential", "causal": False, "temperature": 0.7},
         "Gaussian weight, non-causal (pushed-back pairs), irregular times, temperature"),
    Case("afa.afa/brownian_limit", 603,
         lambda r: {**_afa_inputs(r, 6, 2), "eigvals": np.array([0.0 + 0.4j, -1e-12 - 0.7j]), "sigma2": 0.4, "eta2": 0.1,
                    "gamma2": 0.1, "nu": 1.0, "kappa": 1.0},
         "mu = 0 and 1e-12: Sigma = sigma2 dt + eta2 + gamma2; Cauchy weight kappa = 1"),
    Case("afa.afa/long_sequence", 604,
         lambda r: {**_afa_inputs(r, 200, 2, t=np.arange(200) * 4.0), "eigvals": np.array([-1.0 + 0.3j, -0.5 - 1.0j]), "sigma2": 0.5,
                    "eta2": 0.1, "gamma2": 0.05, "nu": 2.0},
         "t up to 796 with mu = 1: e^{mu t} would overflow", intermediates=False),
    Case("afa.isotropic_afa/causal_student", 611,
         lambda r: {**_afa_inputs(r, 8, 4), "mu": 0.3, "omega": np.array([1.0, -0.5, 2.0, 0.0]), "sigma2": 0.5, "eta2": 0.1,
                    "gamma2": 0.05, "nu": 2.0},
         "isotropic form, causal, Student-t weight"),
    Case("afa.isotropic_afa/exponential_noncausal", 612,
         lambda r: {**_afa_inputs(r, 7, 4, t=np.cumsum(r.exponential(0.6, 7))), "mu": 0.2, "omega": np.array([0.3, -1.0, 1.7, 0.9]),
                    "sigma2": 0.3, "eta2": 0.2, "gamma2": 0.01, "nu": 4.0, "weight": "exponential", "causal": False, "temperature": 1.5},
         "Gaussian weight, non-causal, irregular times, temperature 1.5"),
    Case("afa.isotropic_afa/brownian_limit", 613,
         lambda r: {**_afa_inputs(r, 8, 4), "mu": 0.0, "omega": np.array([0.5, -0.5, 1.0, 2.0]), "sigma2": 0.5, "eta2": 0.1,
                    "gamma2": 0.05, "nu": 2.0},
         "mu = 0 (lambda -> 0 limit): Sigma = sigma2 dt + eta2 + gamma2"),
    Case("afa.isotropic_afa/long_sequence", 614,
         lambda r: {**_afa_inputs(r, 600, 4), "mu": 1.5, "omega": np.array([0.1, 0.7, -1.3, 2.9]), "sigma2": 0.5, "eta2": 0.1,
                    "gamma2": 0.05, "nu": 2.0},
         "N = 600, mu = 1.5: e^{mu t} reaches e^{898} (overflow if formed)", intermediates=False),
    Case("afa.afa_irls/three_iterations", 621,
         lambda r: {"z": cplx(r, 8, 3), "eigvals": LAM3, "sigma2": 0.4, "eta2": 0.2, "gamma2": 0.05, "nu": 2.0, "n_iter": 3, "step": 0.7},
         "IRLS with relaxation 0.7"),
]
