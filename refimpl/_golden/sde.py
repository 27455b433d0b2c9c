"""Golden cases of :mod:`refimpl.sde`, chapter 1 (linear SDEs): discretization, moments, exact
sampling, Euler–Maruyama. The user's callable gets the model as its matrices A, Q, C, R.
"""

import numpy as np

from refimpl import sde

from ._base import Case, Function


_SDE_CALL = "fn(A, Q, C, R, ...) for refimpl.sde.{f}(LinearSDE.from_matrices(A, Q, C=C, R=R), ...)"


_SPIRAL_A = np.array([[0.9, -2.0], [1.0, -1.1]])


def _model(args):
    return sde.LinearSDE.from_matrices(args["A"], args["Q"], C=args["C"], R=args["R"])


def _sde_base(rng, A=_SPIRAL_A):
    d = A.shape[0]
    G = 0.3 * rng.standard_normal((d, d))
    return {"A": A, "Q": G @ G.T + 0.1 * np.eye(d), "C": np.eye(d), "R": 0.25 * np.eye(d)}


def _run_discretize(args, with_mid):
    F, Qd = sde.discretize(_model(args), args["t"])
    return {"F": F, "Qd": Qd}


def _run_transition(args, with_mid):
    return {"F": sde.transition_matrix(_model(args), args["dt"])}


def _run_moments(args, with_mid):
    m, P = sde.moments(_model(args), args["t"], args["m0"], args["P0"])
    return {"m": m, "P": P}


def _run_sample(args, with_mid):
    x, z = sde.sample(_model(args), args["t"], x0=args["x0"], size=args["size"], rng=args["rng"])
    return {"x": x, "z": z}


def _run_euler(args, with_mid):
    x = sde.euler_maruyama(_model(args), args["t"], x0=args["x0"], n_substeps=args["n_substeps"], dW=args["dW"])
    return {"x": x}


FUNCTIONS = [
    Function("sde.discretize", _run_discretize, ("F", "Qd"),
             _SDE_CALL.format(f="discretize") + " -> (F, Qd)"),
    Function("sde.transition_matrix", _run_transition, ("F",),
             _SDE_CALL.format(f="transition_matrix") + " -> F"),
    Function("sde.moments", _run_moments, ("m", "P"),
             _SDE_CALL.format(f="moments") + " -> (m, P)"),
    Function("sde.sample", _run_sample, ("x", "z"),
             _SDE_CALL.format(f="sample") + " -> (x, z); rng is an int seed of numpy.random.default_rng"),
    Function("sde.euler_maruyama", _run_euler, ("x",),
             _SDE_CALL.format(f="euler_maruyama") + " -> x (increments dW given)"),
]

CASES = [
    Case("sde.discretize/spiral_regular", 101,
         lambda r: {**_sde_base(r), "t": np.arange(6) * 0.5}, "spiral drift, regular grid"),
    Case("sde.discretize/irregular_grid", 102,
         lambda r: {**_sde_base(r), "t": np.concatenate([[0.0], np.cumsum(r.exponential(0.7, 7))])},
         "irregular time stamps: step-dependent F and Qd"),
    Case("sde.discretize/slow_mode", 103,
         lambda r: {**_sde_base(r, np.array([[-1e-9, 0.3], [0.0, -1.0]])), "t": np.array([0.0, 1e-6, 1.0, 50.0, 5e3])},
         "a mode with mu = 1e-9 (Brownian limit) and lags from 1e-6 to 5e3"),
    Case("sde.transition_matrix/lags", 104,
         lambda r: {**_sde_base(r), "dt": np.array([0.0, 1e-8, 0.25, 1.0, 10.0])}, "e^{A dt} for lags 0 … 10"),
    Case("sde.moments/spiral", 105,
         lambda r: {**_sde_base(r), "t": np.linspace(0.0, 4.0, 9), "m0": r.standard_normal(2), "P0": 0.5 * np.eye(2)},
         "mean and covariance from a Gaussian initial state"),
    Case("sde.sample/seeded", 106,
         lambda r: {**_sde_base(r), "t": np.linspace(0.0, 3.0, 7), "x0": np.array([1.0, -0.5]), "size": 2, "rng": 7},
         "exact sampling; rng=7 (numpy.random.default_rng streams may change between NumPy versions)"),
    Case("sde.euler_maruyama/given_increments", 107,
         lambda r: {**_sde_base(r), "t": np.linspace(0.0, 2.0, 5), "x0": np.array([1.0, 0.0]), "n_substeps": 4,
                    "dW": r.standard_normal((16, 2)) * np.sqrt(0.125)},
         "Euler–Maruyama with given Brownian increments (deterministic)"),
]
