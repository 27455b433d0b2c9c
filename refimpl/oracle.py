r"""refimpl as a ground-truth oracle: golden vectors and a comparison harness for other implementations.

Chapter 15 of the book (``notebooks/15-using-refimpl-as-an-oracle.ipynb``) walks through it.

Three things are offered to people who validate their own (PyTorch, JAX, CUDA, …) kernels:

1. **A registry of golden cases** (:data:`CASES`): for every public computation of the package,
   small deterministic inputs built from a seed, the outputs, and the intermediates that help
   to localize a bug (AFA's precisions ``P``, residuals ``R``, Mahalanobis distances ``d2``,
   weights ``A``; the output of every section of a biquad cascade; attention weights …),
   including the delicate regimes (λ → 0, long sequences whose ``e^{μt}`` would overflow, large
   logits, poles near the unit circle, missing data, irregular time grids).
2. **Golden-vector files**: :func:`export` writes one ``.npz`` per case (loadable with
   ``numpy.load(path, allow_pickle=False)``, no object arrays; any language that reads a zip of
   ``.npy`` files can read it) and ``manifest.json``; :func:`verify` recomputes and diffs them;
   :func:`load_case` reads one case back. ``python -m refimpl vectors export|verify DIR`` is the
   command line.
3. **A comparison harness**: :func:`compare` runs a user's callable on the cases of one function,
   casts the inputs to the user's dtype, and judges every output and intermediate by the
   tolerance policy below, per case, without ever crashing on a faulty callable.

File format (version 1)
-----------------------
``<case>.npz`` members (``/`` in a case name becomes ``__`` in the file name):

``arg.<name>``   an argument of the call (0-d arrays for scalars, strings as 0-d unicode);
``out.<name>``   an output, in the order the function returns them;
``mid.<name>``   an intermediate, in the order of computation. NaN marks entries outside the
                 computation (e.g. AFA's pairs with t_j > t_i when causal): not compared.

``manifest.json``: ``format``, ``format_version``, ``refimpl_version``, ``numpy_version``,
``scipy_version``, ``python_version``, the tolerance policy, and per case its ``name``,
``function``, ``file``, ``sha256``, ``seed``, ``description``, ``call`` (how the function is
called), ``arguments`` (key, shape, dtype and, for scalars, the value), ``outputs`` and
``intermediates`` (key, shape, dtype) and ``tolerance`` (``rtol``, ``atol``, ``regen_rtol``).
The files are byte-reproducible (fixed zip time stamps), so the sha256 of an export depends
only on the numbers.

Tolerance policy (Eqs. (15.1)–(15.3) of the book; the constants are in :mod:`refimpl._testing`)
------------------------------------------------------------------------------------------------
Errors are norm-wise: ``e_abs = max|y − y*|``, ``e_rel = e_abs / max|y*|`` (``rel_error``),
against the float64 oracle ``y*``.

*float64 callables* pass a quantity if ``e_rel ≤ rtol`` or ``e_abs ≤ atol`` (per case; the
default ``rtol`` is ``SELF = 1e-10``, the bound refimpl's own loop and vectorized forms meet).

*float32 / float16 callables* are judged by the **ratio rule**,

.. math::  e_{rel}(\text{user}) \le 2\,\max\bigl(e_{rel}(\text{plain}),\ u\,ε_{dtype}\bigr),

where ``ε_dtype`` is the machine epsilon of the dtype, ``u`` the case's ``ulps`` (default 4),
and ``plain`` is refimpl's own computation
*at that precision*: the inputs are rounded to the dtype (complex part-wise; float16 complex is
carried as complex64), refimpl evaluates them (in float64, so without further rounding), and
the result is rounded to the dtype. ``e_rel(plain)`` is therefore the error that no
implementation in the dtype can avoid — the conditioning of the problem times the rounding of
its inputs and outputs. What this emulation lacks is the rounding of a plain kernel's own
arithmetic (its sums, exponentials, logarithms), which is a few ulps for the short reductions
of these cases: the floor ``u ε_dtype`` stands for it (an independent float32 port of isotropic
AFA reaches 2.3 ε on the cases). A correct port passes; an error of a formula, typically far
above ``√ε_dtype``, fails, and the first failing intermediate says where.

Regeneration (``verify`` and the CI test): recomputing a committed case must reproduce every
stored array to ``regen_rtol`` (default ``ORACLE = 1e-12``) relative, not bitwise — BLAS and
LAPACK builds differ in summation order and blocking between machines (different roundings of
the same exact result, a few ulps amplified by the case's conditioning); every real change of
a formula moves results by far more.

Adding a module: write a ``run`` wrapper returning ``{name: array}`` (intermediates first, in
order of computation, then outputs), add a :class:`Function` to :data:`FUNCTIONS` and a few
:class:`Case` entries (with a builder ``rng -> {argument: value}``) to :data:`CASES`, then
re-export ``tests/golden/v1`` with ``python -m refimpl vectors export tests/golden/v1``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import platform
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import scipy

from . import afa, attention, classical, focus, iir, kalman, lyapunov, mixing, positional, random_features, rt_sde, sde, ssm
from ._testing import ORACLE, RATIO_RULE_FACTOR, SELF, max_abs_error, rel_error
from ._vectors import read_npz, sha256, write_npz

__all__ = [
    "Function",
    "Case",
    "FUNCTIONS",
    "CASES",
    "FORMAT_VERSION",
    "function_names",
    "case_names",
    "compute",
    "export",
    "verify",
    "load_case",
    "compare",
    "GoldenCase",
    "QuantityReport",
    "CaseReport",
    "CompareReport",
    "VerifyReport",
    "cited_tags",
    "citation_index",
]

FORMAT = "refimpl-golden-vectors"
FORMAT_VERSION = 1
_LOW_DTYPES = ("float32", "float16")


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Function:
    """A public computation of refimpl as the oracle sees it.

    ``run(args, intermediates)`` evaluates refimpl on the keyword arguments ``args`` and returns
    an ordered ``{name: ndarray}``: the intermediates first (in order of computation, only if
    ``intermediates`` is true), then the outputs named in ``outputs``. ``call`` documents how a
    user's callable is called (always with the case's arguments as keywords).
    """

    name: str
    run: Callable[[dict, bool], dict]
    outputs: tuple
    call: str


@dataclass(frozen=True)
class Case:
    """One golden case: deterministic arguments ``build(np.random.default_rng(seed))``."""

    name: str
    function: str
    seed: int
    build: Callable[[np.random.Generator], dict]
    description: str
    rtol: float = SELF
    atol: float = 0.0
    regen_rtol: float = ORACLE
    intermediates: bool = True
    ulps: float = 4.0  # low dtypes: floor of the ratio rule, in units of the dtype's epsilon
    # low dtypes: maps the rounded arguments back onto a constraint refimpl validates (unit vectors,
    # rows summing to 1) before the plain evaluation of Eq. (15.3); the user's callable gets them as rounded
    constrain: Callable[[dict], dict] | None = None
    outputs: tuple | None = None  # overrides Function.outputs (e.g. ``zf`` when ``zi`` is given)

    @property
    def file(self) -> str:
        return self.name.replace("/", "__") + ".npz"

    def output_names(self) -> tuple:
        return self.outputs if self.outputs is not None else FUNCTIONS[self.function].outputs


def _cplx(rng, *shape):
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


def _ordered(mid: dict, out: dict, intermediates: bool) -> dict:
    res = dict(mid) if intermediates else {}
    res.update(out)
    return res


# ---- sde ------------------------------------------------------------------------------------

_SPIRAL_A = np.array([[0.9, -2.0], [1.0, -1.1]])


def _model(a):
    return sde.LinearSDE.from_matrices(a["A"], a["Q"], C=a["C"], R=a["R"])


def _sde_base(rng, A=_SPIRAL_A):
    d = A.shape[0]
    G = 0.3 * rng.standard_normal((d, d))
    return {"A": A, "Q": G @ G.T + 0.1 * np.eye(d), "C": np.eye(d), "R": 0.25 * np.eye(d)}


def _run_discretize(a, mid):
    F, Qd = sde.discretize(_model(a), a["t"])
    return {"F": F, "Qd": Qd}


def _run_transition(a, mid):
    return {"F": sde.transition_matrix(_model(a), a["dt"])}


def _run_moments(a, mid):
    m, P = sde.moments(_model(a), a["t"], a["m0"], a["P0"])
    return {"m": m, "P": P}


def _run_sample(a, mid):
    x, z = sde.sample(_model(a), a["t"], x0=a["x0"], size=a["size"], rng=a["rng"])
    return {"x": x, "z": z}


def _run_euler(a, mid):
    x = sde.euler_maruyama(_model(a), a["t"], x0=a["x0"], n_substeps=a["n_substeps"], dW=a["dW"])
    return {"x": x}


# ---- lyapunov -------------------------------------------------------------------------------


def _run_phi1(a, mid):
    return {"phi": lyapunov.phi1(a["z"], a["tau"])}


def _run_dle(a, mid):
    return {"Sigma": lyapunov.dle_covariance(a["eigvals"], a["noise"], a["tau"])}


def _run_dle_back(a, mid):
    return {"Sigma": lyapunov.dle_covariance_backward(a["eigvals"], a["noise"], a["tau"])}


def _run_steady(a, mid):
    return {"Sigma": lyapunov.steady_state_covariance(a["eigvals"], a["noise"])}


def _run_iso_cov(a, mid):
    return {"Sigma": lyapunov.isotropic_covariance(a["dt"], a["mu"], a["sigma2"], a["eta2"], a["gamma2"])}


# ---- kalman ---------------------------------------------------------------------------------

_KF_ARGS = ("z", "F", "H", "Q", "R", "m0", "P0")


def _kf(fn, names):
    def run(a, mid):
        res = fn(*(a[k] for k in _KF_ARGS))
        return dict(zip(names, res if isinstance(res, tuple) else (res,)))

    return run


def _run_weight_matrix(a, mid):
    W, c = kalman.kalman_weight_matrix(
        a["n_steps"], a["F"], a["H"], a["Q"], a["R"], a["m0"], a["P0"],
        kind=a["kind"], missing=a.get("missing"), return_offset=True,
    )
    return {"W": W, "c": c}


def _run_kalman_steady(a, mid):
    K, P_prior, P_post = kalman.steady_state(a["F"], a["H"], a["Q"], a["R"])
    return {"K": K, "P_prior": P_prior, "P_post": P_post}


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


# ---- attention / positional -----------------------------------------------------------------


def _run_softmax(a, mid):
    y, A = attention.softmax_attention(
        a["q"], a["k"], a["v"], mask=a.get("mask"), causal=a["causal"], scale=a.get("scale"), return_weights=True
    )
    return _ordered({"A": A}, {"y": y}, mid)


def _run_mha(a, mid):
    y, A = attention.multihead_attention(
        a["x"], a["w_q"], a["w_k"], a["w_v"], a["w_o"], a["n_heads"], causal=a["causal"], return_weights=True
    )
    return _ordered({"A": A}, {"y": y}, mid)


def _run_attention_stats(a, mid):
    W = a["weights"]
    return {"entropy": attention.attention_entropy(W), "support": attention.effective_support(W)}


def _run_lag_profile(a, mid):
    lags, prof = attention.lag_profile(a["W"])
    return {"lags": lags, "profile": prof}


def _run_attn_freq(a, mid):
    omega, H = attention.frequency_response(a["W"], a["omega"])
    return {"omega": omega, "H": H}


def _run_sinusoidal(a, mid):
    return _ordered(
        {"freqs": positional.frequencies(a["d_model"], a["base"])},
        {"pe": positional.sinusoidal_encoding(a["n_positions"], a["d_model"], a["base"])},
        mid,
    )


def _run_rope(a, mid):
    return {"y": positional.rope(a["x"], a["positions"], a["base"])}


def _run_rope_complex(a, mid):
    return {"y": positional.rope_complex(a["x"], a["positions"], a["base"], return_complex=True)}


def _run_shift(a, mid):
    return {"M": positional.relative_shift_matrix(a["k"], a["d_model"], a["base"])}


# ---- afa ------------------------------------------------------------------------------------

_AFA_KW = ("sigma2", "eta2", "gamma2", "nu", "t", "weight", "kappa", "temperature", "causal")


def _run_afa(a, mid):
    kw = {k: a.get(k) for k in _AFA_KW}
    kw["temperature"] = a.get("temperature", 1.0)
    kw["weight"] = a.get("weight", "student")
    kw["causal"] = a.get("causal", True)
    if not mid:
        return {"out": afa.afa(a["q"], a["k"], a["v"], eigvals=a["eigvals"], **kw)}
    out, inter = afa.afa(a["q"], a["k"], a["v"], eigvals=a["eigvals"], return_intermediates=True, **kw)
    m = _outside(a, kw["causal"])
    return {"P": _nan_at(inter["P"], m[..., None]), "R": _nan_at(inter["R"], m[..., None]), "d2": _nan_at(inter["d2"], m),
            "logits": _nan_at(inter["logits"], m[..., None]), "A": inter["A"], "out": out}


def _outside(a, causal):
    """Pairs (i, j) outside a causal computation (t_j > t_i): their intermediates are NaN (not compared)."""
    n = np.shape(a["q"])[-2]
    t = np.arange(n, dtype=np.float64) if a.get("t") is None else np.asarray(a["t"], dtype=np.float64)
    return np.subtract.outer(t, t) < 0 if causal else np.zeros((n, n), dtype=bool)


def _nan_at(x, mask):
    return np.where(mask, np.nan, x)


def _run_isotropic(a, mid):
    kw = {k: a.get(k) for k in _AFA_KW}
    kw["temperature"] = a.get("temperature", 1.0)
    kw["weight"] = a.get("weight", "student")
    kw["causal"] = a.get("causal", True)
    if not mid:
        return {"out": afa.isotropic_afa(a["q"], a["k"], a["v"], mu=a["mu"], omega=a["omega"], **kw)}
    out, A = afa.isotropic_afa(a["q"], a["k"], a["v"], mu=a["mu"], omega=a["omega"], return_weights=True, **kw)
    # The isotropic intermediates are the tensor form's, which do not depend on the channel for
    # P and A; ||R_ij||^2 = sum_k |R_kij|^2 is the squared residual norm of Eq. (8.2).
    eig = -np.asarray(a["mu"], dtype=np.float64) + 1j * np.asarray(a["omega"], dtype=np.float64)
    _, inter = afa.afa(a["q"], a["k"], a["v"], eigvals=eig, return_intermediates=True, **kw)
    R2 = np.sum(np.abs(inter["R"]) ** 2, axis=-1)
    m = _outside(a, kw["causal"])
    return {"P": _nan_at(inter["P"][..., 0], m), "R2": _nan_at(R2, m), "d2": _nan_at(inter["d2"], m), "A": A, "out": out}


def _run_irls(a, mid):
    kw = {k: a.get(k) for k in ("sigma2", "eta2", "gamma2", "nu", "t")}
    return {"estimates": afa.afa_irls(a["z"], eigvals=a["eigvals"], n_iter=a["n_iter"], step=a["step"], **kw)}


def _afa_inputs(rng, N, d, t=None):
    out = {"q": _cplx(rng, N, d), "k": _cplx(rng, N, d), "v": _cplx(rng, N, d)}
    if t is not None:
        out["t"] = t
    return out


# ---- iir ------------------------------------------------------------------------------------


def _run_biquad(a, mid):
    res = iir.biquad_filter(a["b"], a["a"], a["x"], a.get("zi"), form=a["form"])
    return {"y": res[0], "zf": res[1]} if "zi" in a else {"y": res}


def _run_sos(a, mid):
    sos = np.asarray(a["sos"], dtype=np.float64)
    res = {}
    if mid:  # the cascade after each section: where a wrong section shows up first
        for s in range(sos.shape[0] - 1):
            res[f"section{s}"] = iir.sos_filter(a["sos"][: s + 1], a["x"], form=a["form"])
    res["y"] = iir.sos_filter(a["sos"], a["x"], form=a["form"])
    return res


def _run_tf(a, mid):
    return {"y": iir.tf_filter(a["b"], a["a"], a["x"])}


def _run_impulse(a, mid):
    return {"h": iir.impulse_response(a["b"], a["a"], a["n"])}


def _run_impulse_closed(a, mid):
    return {"h": iir.biquad_impulse_closed_form(a["b"], a["a"], a["n"])}


def _run_freqz(a, mid):
    w, h = iir.frequency_response(a["b"], a["a"], a["w"])
    return {"w": w, "h": h}


def _run_sos_freqz(a, mid):
    w, h = iir.sos_frequency_response(a["sos"], a["w"])
    return {"w": w, "h": h}


def _run_group_delay(a, mid):
    w, gd = iir.group_delay(a["b"], a["a"], a["w"])
    return {"w": w, "gd": gd}


def _design(fn):
    def run(a, mid):
        extra = (a["rp"],) if "rp" in a else ()
        res = fn(a["order"], *extra, a["wn"], a["btype"], fs=a["fs"], output=a["output"])
        return {"b": res[0], "a": res[1]} if a["output"] == "ba" else {"sos": res}

    return run


def _run_bilinear(a, mid):
    b, a_ = iir.bilinear(a["b"], a["a"], a["fs"])
    return {"bz": b, "az": a_}


def _run_impulse_invariance(a, mid):
    b, a_ = iir.impulse_invariance(a["b"], a["a"], a["fs"])
    return {"bz": b, "az": a_}


def _run_ssm_filter(a, mid):
    return {"y": iir.diagonal_ssm_filter(a["lam"], a["B"], a["C"], a["D"], a["x"], scan=a["scan"])}


# ---- ssm ------------------------------------------------------------------------------------


def _run_hippo(a, mid):
    A, B = ssm.hippo_legs(a["N"])
    return {"A": A, "B": B}


def _run_ssm_discretize(a, mid):
    Ab, Bb = ssm.discretize(a["A"], a["B"], a["step"], a["method"], diagonal=a["diagonal"])
    return {"Ab": Ab, "Bb": Bb}


def _run_ssm_kernel(a, mid):
    return {"K": ssm.ssm_kernel(a["Ab"], a["Bb"], a["C"], a["L"], diagonal=a["diagonal"])}


def _run_s4d_kernel(a, mid):
    return {"K": ssm.s4d_kernel(a["A"], a["B"], a["C"], a["step"], a["L"], method=a["method"], conj_pairs=a["conj_pairs"])}


def _run_dplr_kernel(a, mid):
    return {"K": ssm.s4_kernel_dplr(a["Lambda"], a["P"], a["Q"], a["B"], a["C"], a["step"], a["L"])}


def _run_ssm_modes(a, mid):
    args = (a["u"], a["Ab"], a["Bb"], a["C"], a.get("D"))
    kernel = ssm.ssm_kernel(a["Ab"], a["Bb"], a["C"], a["u"].shape[-2], diagonal=a["diagonal"])
    return _ordered({"K": kernel}, {"y": ssm.ssm_recurrent(*args, diagonal=a["diagonal"])}, mid)


def _run_ssm_conv(a, mid):
    args = (a["u"], a["Ab"], a["Bb"], a["C"], a.get("D"))
    kernel = ssm.ssm_kernel(a["Ab"], a["Bb"], a["C"], a["u"].shape[-2], diagonal=a["diagonal"])
    return _ordered({"K": kernel}, {"y": ssm.ssm_convolution(*args, diagonal=a["diagonal"])}, mid)


def _run_selective(a, mid):
    args = (a["u"], a["delta"], a["A"], a["B"], a["C"], a.get("D"))
    y, h = ssm.selective_scan(*args, discretization=a["discretization"], return_last_state=True)
    res = {}
    if mid:  # the data-dependent L x L matrix of each channel (Eq. (11.18)): y_d = M_d u_d (+ D u)
        res["M"] = ssm.semiseparable_matrix(*args[1:], discretization=a["discretization"])
    res.update({"y": y, "h_last": h})
    return res


def _run_legs_online(a, mid):
    return {"c": ssm.hippo_legs_online(a["u"], a["N"])}


def _run_legs_reconstruct(a, mid):
    return {"f": ssm.legs_reconstruct(a["c"], a["x"])}


# ---- mixing ---------------------------------------------------------------------------------


def _run_fnet(a, mid):
    return {"y": mixing.fnet(a["x"])}


def _run_fnet_matrix(a, mid):
    return {"M": mixing.fnet_matrix(int(a["N"]), int(a["d"]))}


def _run_sgu(a, mid):
    return {"y": mixing.spatial_gating_unit(a["x"], a["w"], a["b"], causal=bool(a["causal"]))}


def _run_fft_conv(a, mid):
    return {"y": mixing.fft_conv(a["u"], a["h"])}


def _run_causal_toeplitz(a, mid):
    return {"T": mixing.causal_toeplitz(a["h"], int(a["N"]))}


def _run_hyena_filter(a, mid):
    return {"h": mixing.hyena_filter(int(a["L"]), int(a["d"]), n_filters=int(a["n_filters"]), rng=int(a["seed"]))}


def _run_hyena_recurrence(a, mid):
    return {"y": mixing.hyena_recurrence(a["v"], a["x"], a["filters"], skip=a.get("skip"))}


def _run_hyena_operator(a, mid):
    y, v, x = mixing.hyena_operator(a["u"], a["w_in"], a["filters"], b_in=a.get("b_in"), skip=a.get("skip"),
                                    return_projections=True)
    return _ordered({"v": v, "x": x}, {"y": y}, mid)  # the projections (v, x^1 … x^N), then the output


def _run_hyena_matrix(a, mid):
    return {"H": mixing.hyena_matrix(a["x"], a["filters"], skip=a.get("skip"))}


# ---- focus ----------------------------------------------------------------------------------


def _run_focus_response(a, mid):
    return {"H": focus.focus_frequency_response(a["theta"], int(a["n_fft"]))}


def _run_periodized(a, mid):
    return {"h": focus.periodized_impulse_response(a["theta"], int(a["n"]))}


def _run_adaptive_filter(a, mid):
    return {"y": focus.adaptive_filter(a["x"], a["theta"], variant=str(a["variant"]))}


def _run_continuous_exponents(a, mid):
    return {"s": focus.continuous_exponents(a["theta"])}


def _run_continuous_impulse(a, mid):
    return {"h": focus.continuous_impulse_response(a["theta"], a["t"])}


def _run_global_conv(a, mid):
    return {"g": focus.global_conv(a["x"], a["kernel"], a["skip"], squash=float(a["squash"]))}


def _run_max_pool(a, mid):
    return {"p": focus.adaptive_max_pool(a["g"], int(a["n_out"]))}


def _focus_params(a):
    return {k[2:]: v for k, v in a.items() if k.startswith("p_")}


def _run_hypernetwork(a, mid):
    return {"theta": focus.hypernetwork(a["x"], _focus_params(a), n_bins=int(a["n_bins"]))}


def _run_chunked_attention(a, mid):
    return {"y": focus.chunked_attention(a["x"], a["x_f"], a["w_q"], a["w_k"], a["w_v"], chunk_size=int(a["chunk_size"]))}


def _run_gated_residual(a, mid):
    keys = ("x", "x_f", "y", "w_gamma", "b_gamma", "w_phi", "b_phi", "w_h", "u_h", "b_h")
    return {"out": focus.gated_residual(*(a[k] for k in keys))}


def _run_focus_layer(a, mid):
    out, parts = focus.focus_layer(a["x"], _focus_params(a), variant=str(a["variant"]), chunk_size=int(a["chunk_size"]),
                                   n_bins=int(a["n_bins"]), return_intermediates=True)
    return _ordered({"theta": parts["theta"], "x_f": parts["x_f"], "y": parts["y"]}, {"out": out}, mid)


def _run_mega_kernel(a, mid):
    return {"K": focus.mega_ema_kernel(a["alpha"], a["delta"], a["beta"], a["eta"], int(a["n"]))}


def _run_mega_ema(a, mid):
    return {"y": focus.mega_ema(a["x"], a["alpha"], a["delta"], a["beta"], a["eta"])}


def _focus_layer_args(r, d=4, L=32):
    params = focus.init_focus_params(d, kernel_len=16, rng=int(r.integers(1_000_000)))
    return {"x": r.standard_normal((L, d)), **{"p_" + k: np.asarray(v) for k, v in params.items()}}


def _ema_args(r, D=3, h=2):
    return {"alpha": r.uniform(0.05, 0.95, (D, h)), "delta": r.uniform(0.05, 0.95, (D, h)),
            "beta": r.standard_normal((D, h)), "eta": r.standard_normal((D, h))}


# ---- random_features ------------------------------------------------------------------------


def _run_elu1(a, mid):
    return {"phi": random_features.elu_plus_one(a["x"])}


def _run_linear_attention(a, mid):
    return {"y": random_features.linear_attention(a["q"], a["k"], a["v"], causal=bool(a["causal"]))}


def _run_favor(a, mid):
    return {"phi": random_features.favor_features(a["x"], a["projection"], kind=str(a["kind"]))}


def _run_orthogonal_gaussian(a, mid):
    return {"W": random_features.orthogonal_gaussian(int(a["m"]), int(a["d"]), int(a["seed"]))}


def _run_performer(a, mid):
    kw = dict(n_features=a["projection"].shape[0], rng=None, causal=bool(a["causal"]), projection=a["projection"])
    return {"y": random_features.performer_attention(a["q"], a["k"], a["v"], **kw)}


def _run_performer_quadratic(a, mid):
    kw = dict(n_features=a["projection"].shape[0], rng=None, causal=bool(a["causal"]), projection=a["projection"])
    return {"y": random_features.performer_attention_quadratic(a["q"], a["k"], a["v"], **kw)}


def _run_rff(a, mid):
    return {"phi": random_features.rff_features(a["x"], a["projection"])}


def _run_rfa(a, mid):
    return {"y": random_features.rfa_attention(a["q"], a["k"], a["v"], n_features=int(a["n_features"]), sigma=float(a["sigma"]),
                                               rng=int(a["seed"]), gated=True, gates=a["gates"], causal=True)}


def _run_lsh_hash(a, mid):
    return {"buckets": random_features.lsh_hash(a["x"], int(a["n_buckets"]), None, int(a["n_rounds"]), rotations=a["rotations"])}


def _run_lsh_attention(a, mid):
    return {"y": random_features.lsh_attention(a["qk"], a["v"], n_buckets=int(a["n_buckets"]), n_rounds=int(a["n_rounds"]),
                                               chunk_size=int(a["chunk_size"]), rng=int(a["seed"]))}


def _rev_f(w):
    return lambda x: np.tanh(x @ w)


def _run_reversible_forward(a, mid):
    y1, y2 = random_features.reversible_forward(a["x1"], a["x2"], _rev_f(a["wf"]), _rev_f(a["wg"]))
    return {"y1": y1, "y2": y2}


def _run_reversible_inverse(a, mid):
    x1, x2 = random_features.reversible_inverse(a["y1"], a["y2"], _rev_f(a["wf"]), _rev_f(a["wg"]))
    return {"x1": x1, "x2": x2}


def _zpk(z, p, k):
    return {"z": np.asarray(z), "p": np.asarray(p), "k": np.asarray(k)}


def _run_prototype(a, mid):
    return _zpk(*(iir.buttap(a["order"]) if "rp" not in a else iir.cheb1ap(a["order"], a["rp"])))


def _run_lp2bp(a, mid):
    return _zpk(*iir.lp2bp_zpk(a["z"], a["p"], a["k"], a["wo"], a["bw"]))


def _run_bilinear_zpk(a, mid):
    return _zpk(*iir.bilinear_zpk(a["z"], a["p"], a["k"], a["fs"]))


def _run_zpk2tf(a, mid):
    b, a_ = iir.zpk2tf(a["z"], a["p"], a["k"])
    return {"b": b, "a": a_}


def _run_sos2tf(a, mid):
    b, a_ = iir.sos2tf(a["sos"])
    return {"b": b, "a": a_}


def _run_prewarp(a, mid):
    return {"omega": iir.prewarp(a["f"], a["fs"])}


def _run_freqs(a, mid):
    w, h = iir.analog_frequency_response(a["b"], a["a"], a["w"])
    return {"w": w, "h": h}


def _run_biquad_poles(a, mid):
    return {"poles": iir.biquad_poles(a["a"])}


def _run_ssm_to_iir(a, mid):
    b, a_ = iir.scalar_ssm_to_iir(a["A"], a["B"], a["C"], a["D"])
    return {"b": b, "a": a_}


def _run_ssm_to_biquad(a, mid):
    b, a_ = iir.ssm_to_biquad(a["lam"], a["B"], a["C"], a["D"])
    return {"b": b, "a": a_}


def _run_rope_bound(a, mid):
    return {"bound": positional.rope_decay_bound(a["distances"], a["d"], a["base"])}


# ---- generic: the function called with the case's arguments as keywords -----------------------


def _direct(fn, names, **fixed):
    """``run`` for a function called as ``fn(**args, **fixed)``, its result(s) named ``names``."""

    def run(a, mid):
        res = fn(**a, **fixed)
        if hasattr(res, "_fields"):  # a named tuple
            res = tuple(res)
        return dict(zip(names, res if isinstance(res, tuple) else (res,)))

    return run


def _run_rt_attention(a, mid):
    out, A = rt_sde.rt_attention(**a, return_weights=True)
    return _ordered({"A": A}, {"out": out}, mid)


def _skew(rng, d):
    W = rng.standard_normal((d, d))
    return (W - W.T) / 2


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _renormalize(*names, by="norm"):
    """``Case.constrain``: the named float arguments re-normalized in float64 (unit norm or unit row sum)."""

    def constrain(args):
        out = dict(args)
        for n in names:
            x = np.asarray(out[n], dtype=np.float64)
            out[n] = _unit(x) if by == "norm" else x / x.sum(axis=-1, keepdims=True)
        return out

    return constrain


_SPHERE = ("tangential", "sin2", "theta2", "chord2")
_RT_NOISE = {"sigma2_perp": 0.3, "sigma2_par": 0.05, "eta2_perp": 0.1, "eta2_par": 0.02, "gamma2_perp": 0.05, "gamma2_par": 0.01}


def _resonator(r, theta):
    """A biquad with poles r e^{±iθ} and zeros at ±1 (a band-pass resonator)."""
    return np.array([1.0, 0.0, -1.0]) * (1 - r), np.array([1.0, -2 * r * np.cos(theta), r * r])


# ---- the registry ---------------------------------------------------------------------------

_SDE_CALL = "fn(A, Q, C, R, ...) for refimpl.sde.{f}(LinearSDE.from_matrices(A, Q, C=C, R=R), ...)"
_KF_CALL = "fn(z, F, H, Q, R, m0, P0)"

FUNCTIONS: dict = {
    f.name: f
    for f in [
        Function("sde.discretize", _run_discretize, ("F",
                 "Qd"), _SDE_CALL.format(f="discretize") + " -> (F, Qd)"),
        Function("sde.transition_matrix", _run_transition, ("F",), _SDE_CALL.format(f="transition_matrix") + " -> F"),
        Function("sde.moments", _run_moments, ("m", "P"), _SDE_CALL.format(f="moments") + " -> (m, P)"),
        Function("sde.sample", _run_sample, ("x",
                 "z"), _SDE_CALL.format(f="sample") + " -> (x, z); rng is an int seed of numpy.random.default_rng"),
        Function("sde.euler_maruyama", _run_euler, ("x",), _SDE_CALL.format(f="euler_maruyama") + " -> x (increments dW given)"),
        Function("lyapunov.phi1", _run_phi1, ("phi",), "fn(z, tau) -> (e^{z tau} - 1)/z"),
        Function("lyapunov.dle_covariance", _run_dle, ("Sigma",), "fn(eigvals, noise, tau) -> Sigma"),
        Function("lyapunov.dle_covariance_backward", _run_dle_back, ("Sigma",),
                 "fn(eigvals, noise, tau) -> Sigma"),
        Function("lyapunov.steady_state_covariance", _run_steady, ("Sigma",), "fn(eigvals, noise) -> Sigma"),
        Function("lyapunov.isotropic_covariance", _run_iso_cov, ("Sigma",),
                 "fn(dt, mu, sigma2, eta2, gamma2) -> Sigma"),
        Function("kalman.kalman_filter", _kf(kalman.kalman_filter, ("m",
                 "P")), ("m", "P"), _KF_CALL + " -> (m, P)"),
        Function("kalman.kalman_filter_scan", _kf(kalman.kalman_filter_scan, ("m",
                 "P")), ("m", "P"), _KF_CALL + " -> (m, P)"),
        Function("kalman.rts_smoother", _kf(kalman.rts_smoother, ("m",
                 "P")), ("m", "P"), _KF_CALL + " -> (m, P)"),
        Function("kalman.rts_smoother_scan", _kf(kalman.rts_smoother_scan, ("m",
                 "P")), ("m", "P"), _KF_CALL + " -> (m, P)"),
        Function("kalman.batch_smoother", _kf(kalman.batch_smoother, ("m",
                 "P")), ("m", "P"), _KF_CALL + " -> (m, P)"),
        Function("kalman.kalman_weight_matrix", _run_weight_matrix, ("W",
                 "c"), "fn(n_steps, F, H, Q, R, m0, P0, kind, missing) -> (W, c)"),
        Function("kalman.steady_state", _run_kalman_steady, ("K",
                 "P_prior", "P_post"), "fn(F, H, Q, R) -> (K, P_prior, P_post)"),
        Function("attention.softmax_attention", _run_softmax, ("y",),
                 "fn(q, k, v, causal, [mask], [scale]) -> y; intermediate A"),
        Function("attention.multihead_attention", _run_mha, ("y",),
                 "fn(x, w_q, w_k, w_v, w_o, n_heads, causal) -> y; intermediate A"),
        Function("attention.attention_statistics", _run_attention_stats, ("entropy",
                 "support"), "fn(weights) -> (attention_entropy, effective_support)"),
        Function("attention.lag_profile", _run_lag_profile, ("lags", "profile"), "fn(W) -> (lags, profile)"),
        Function("attention.frequency_response", _run_attn_freq, ("omega",
                 "H"), "fn(W, omega) -> (omega, H)"),
        Function("positional.sinusoidal_encoding", _run_sinusoidal, ("pe",),
                 "fn(n_positions, d_model, base) -> pe; intermediate freqs"),
        Function("positional.relative_shift_matrix", _run_shift, ("M",), "fn(k, d_model, base) -> M"),
        Function("positional.rope", _run_rope, ("y",), "fn(x, positions, base) -> y"),
        Function("positional.rope_complex", _run_rope_complex, ("y",), "fn(x, positions, base) -> complex y"),
        Function("afa.afa", _run_afa, ("out",),
                 "fn(q, k, v, eigvals, sigma2, eta2, gamma2, nu, t, weight, kappa, temperature, causal) -> out;"
                  " intermediates P, R, d2, logits, A"),
        Function("afa.isotropic_afa", _run_isotropic, ("out",),
                 "fn(q, k, v, mu, omega, sigma2, eta2, gamma2, nu, t, weight, kappa, temperature, causal) -> out;"
                  " intermediates P, R2, d2, A"),
        Function("afa.afa_irls", _run_irls, ("estimates",),
                 "fn(z, eigvals, sigma2, eta2, gamma2, nu, t, n_iter, step) -> estimates"),
        Function("iir.biquad_filter", _run_biquad, ("y",),
                 "fn(b, a, x, [zi], form) -> y (or (y, zf) when zi is given)"),
        Function("iir.sos_filter", _run_sos, ("y",),
                 "fn(sos, x, form) -> y; intermediates section<s> (the cascade after section s)"),
        Function("iir.tf_filter", _run_tf, ("y",), "fn(b, a, x) -> y"),
        Function("iir.impulse_response", _run_impulse, ("h",), "fn(b, a, n) -> h"),
        Function("iir.biquad_impulse_closed_form", _run_impulse_closed, ("h",), "fn(b, a, n) -> h"),
        Function("iir.frequency_response", _run_freqz, ("w", "h"), "fn(b, a, w) -> (w, h)"),
        Function("iir.sos_frequency_response", _run_sos_freqz, ("w", "h"), "fn(sos, w) -> (w, h)"),
        Function("iir.group_delay", _run_group_delay, ("w", "gd"), "fn(b, a, w) -> (w, gd)"),
        Function("iir.butter", _design(iir.butter), ("sos",),
                 "fn(order, wn, btype, fs, output) -> (b, a) or sos"),
        Function("iir.cheby1", _design(iir.cheby1), ("sos",),
                 "fn(order, rp, wn, btype, fs, output) -> (b, a) or sos"),
        Function("iir.bilinear", _run_bilinear, ("bz", "az"), "fn(b, a, fs) -> (bz, az)"),
        Function("iir.impulse_invariance", _run_impulse_invariance, ("bz", "az"), "fn(b, a, fs) -> (bz, az)"),
        Function("iir.diagonal_ssm_filter", _run_ssm_filter, ("y",), "fn(lam, B, C, D, x, scan) -> y"),
        Function("rt_sde.rt_transition", _direct(rt_sde.rt_transition, ("T",)), ("T",),
                 "fn(mu, omega, s) -> T"),
        Function("rt_sde.rt_direction", _direct(rt_sde.rt_direction, ("u",)), ("u",),
                 "fn(omega, u0, s) -> u"),
        Function("rt_sde.rt_noise_rate", _direct(rt_sde.rt_noise_rate, ("Q",)), ("Q",),
                 "fn(omega, u0, s, sigma2_perp, sigma2_par) -> Q"),
        Function("rt_sde.rt_covariance", _direct(rt_sde.rt_covariance, ("Sigma",)), ("Sigma",),
                 "fn(mu, omega, u0, tau, sigma2_perp, sigma2_par, eta2_perp, eta2_par, gamma2_perp, gamma2_par) -> Sigma"),
        Function("rt_sde.rt_variances", _direct(rt_sde.rt_variances, ("a_perp", "a_par")), ("a_perp", "a_par"),
                 "fn(mu, tau, <six noises>) -> (a_perp, a_par)"),
        Function("rt_sde.rt_precision", _direct(rt_sde.rt_precision, ("P",)), ("P",),
                 "fn(u, a_perp, a_par) -> P"),
        Function("rt_sde.rt_distance", _direct(rt_sde.rt_distance, ("d2",)), ("d2",),
                 "fn(r, u, a_perp, a_par) -> d2"),
        Function("rt_sde.rt_logdet_precision", _direct(rt_sde.rt_logdet_precision, ("logdet",)), ("logdet",),
                 "fn(a_perp, a_par, d) -> logdet"),
        Function("rt_sde.sphere_residuals", _direct(rt_sde.sphere_residuals, _SPHERE), _SPHERE,
                 "fn(q, k) -> (tangential, sin2, theta2, chord2)"),
        Function("rt_sde.rt_attention", _run_rt_attention, ("out",),
                 "fn(q, k, v, mu, omega, <six noises>, nu, t, weight, kappa, temperature, direction) -> out; intermediate A"),
        Function("rt_sde.rt_step", _direct(rt_sde.rt_step, ("z_next",)), ("z_next",),
                 "fn(z, alpha, **rt_attention parameters) -> z_next"),
        Function("classical.lfm_pulse", _direct(classical.lfm_pulse, ("s",)), ("s",),
                 "fn(n_samples, bandwidth) -> s"),
        Function("classical.matched_filter", _direct(classical.matched_filter, ("y",)), ("y",),
                 "fn(received, template, normalize) -> y"),
        Function("classical.autocorrelation", _direct(classical.autocorrelation, ("r",)), ("r",),
                 "fn(x, n_lags) -> r"),
        Function("classical.cross_correlation", _direct(classical.cross_correlation, ("p",)), ("p",),
                 "fn(d, u, n_lags) -> p"),
        Function("classical.wiener_hopf", _direct(classical.wiener_hopf, ("w",)), ("w",), "fn(r, p) -> w"),
        Function("classical.ar1_psd", _direct(classical.ar1_psd, ("S",)), ("S",), "fn(a, q, n_fft) -> S"),
        Function("classical.wiener_smoother_response", _direct(classical.wiener_smoother_response, ("H",)), ("H",),
                 "fn(psd_signal, psd_noise) -> H"),
        Function("classical.wiener_smoother_weights", _direct(classical.wiener_smoother_weights, ("lags",
                 "h")), ("lags", "h"), "fn(psd_signal, psd_noise) -> (lags, h)"),
        Function("classical.lms", _direct(classical.lms, ("w",
                 "e")), ("w", "e"), "fn(u, d, n_taps, mu) -> (w, e)"),
        Function("classical.rls", _direct(classical.rls, ("w",
                 "e")), ("w", "e"), "fn(u, d, n_taps, lam, delta) -> (w, e)"),
        Function("classical.steering_vector", _direct(classical.steering_vector, ("a",)), ("a",),
                 "fn(theta, n_sensors, spacing) -> a"),
        Function("classical.das_weights", _direct(classical.das_weights, ("w",)), ("w",),
                 "fn(theta0, n_sensors, spacing) -> w"),
        Function("classical.mvdr_weights", _direct(classical.mvdr_weights, ("w",)), ("w",),
                 "fn(R, steering, loading) -> w"),
        Function("classical.beampattern", _direct(classical.beampattern, ("B",)), ("B",),
                 "fn(w, theta, spacing) -> B"),
        Function("classical.dirichlet_beampattern", _direct(classical.dirichlet_beampattern, ("B",)), ("B",),
                 "fn(theta, theta0, n_sensors, spacing) -> B"),
        Function("classical.sample_covariance", _direct(classical.sample_covariance, ("R",)), ("R",),
                 "fn(x) -> R"),
        Function("classical.beamform", _direct(classical.beamform, ("y",)), ("y",), "fn(x, w) -> y"),
        Function("classical.bartlett_spectrum", _direct(classical.bartlett_spectrum, ("P",)), ("P",),
                 "fn(R, theta, spacing) -> P"),
        Function("classical.capon_spectrum", _direct(classical.capon_spectrum, ("P",)), ("P",),
                 "fn(R, theta, spacing, loading) -> P"),
        Function("iir.buttap", _run_prototype, ("z", "p", "k"), "fn(order) -> (z, p, k)"),
        Function("iir.cheb1ap", _run_prototype, ("z", "p", "k"), "fn(order, rp) -> (z, p, k)"),
        Function("iir.lp2bp_zpk", _run_lp2bp, ("z", "p", "k"), "fn(z, p, k, wo, bw) -> (z, p, k)"),
        Function("iir.bilinear_zpk", _run_bilinear_zpk, ("z", "p", "k"), "fn(z, p, k, fs) -> (z, p, k)"),
        Function("iir.zpk2tf", _run_zpk2tf, ("b", "a"), "fn(z, p, k) -> (b, a)"),
        Function("iir.sos2tf", _run_sos2tf, ("b", "a"), "fn(sos) -> (b, a)"),
        Function("iir.prewarp", _run_prewarp, ("omega",), "fn(f, fs) -> omega"),
        Function("iir.analog_frequency_response", _run_freqs, ("w", "h"), "fn(b, a, w) -> (w, h)"),
        Function("iir.biquad_poles", _run_biquad_poles, ("poles",), "fn(a) -> poles"),
        Function("iir.scalar_ssm_to_iir", _run_ssm_to_iir, ("b", "a"), "fn(A, B, C, D) -> (b, a)"),
        Function("iir.ssm_to_biquad", _run_ssm_to_biquad, ("b", "a"), "fn(lam, B, C, D) -> (b, a)"),
        Function("positional.rope_decay_bound", _run_rope_bound, ("bound",),
                 "fn(distances, d, base) -> bound"),
        Function("ssm.hippo_legs", _run_hippo, ("A", "B"), "fn(N) -> (A, B)"),
        Function("ssm.discretize", _run_ssm_discretize, ("Ab",
                 "Bb"), "fn(A, B, step, method, diagonal) -> (Ab, Bb)"),
        Function("ssm.ssm_kernel", _run_ssm_kernel, ("K",), "fn(Ab, Bb, C, L, diagonal) -> K"),
        Function("ssm.s4d_kernel", _run_s4d_kernel, ("K",), "fn(A, B, C, step, L, method, conj_pairs) -> K"),
        Function("ssm.s4_kernel_dplr", _run_dplr_kernel, ("K",), "fn(Lambda, P, Q, B, C, step, L) -> K"),
        Function("ssm.ssm_recurrent", _run_ssm_modes, ("y",),
                 "fn(u, Ab, Bb, C, D, diagonal) -> y; intermediate K (the kernel)"),
        Function("ssm.ssm_convolution", _run_ssm_conv, ("y",),
                 "fn(u, Ab, Bb, C, D, diagonal) -> y; intermediate K (the kernel)"),
        Function("ssm.selective_scan", _run_selective, ("y",
                 "h_last"), "fn(u, delta, A, B, C, D, discretization) -> (y, h_last); intermediate M"),
        Function("ssm.hippo_legs_online", _run_legs_online, ("c",), "fn(u, N) -> c"),
        Function("ssm.legs_reconstruct", _run_legs_reconstruct, ("f",), "fn(c, x) -> f"),
        Function("random_features.elu_plus_one", _run_elu1, ("phi",), "fn(x) -> phi"),
        Function("random_features.linear_attention", _run_linear_attention, ("y",), "fn(q, k, v, causal) -> y"),
        Function("random_features.favor_features", _run_favor, ("phi",), "fn(x, projection, kind) -> phi"),
        Function("random_features.orthogonal_gaussian", _run_orthogonal_gaussian, ("W",), "fn(m, d, seed) -> W"),
        Function("random_features.performer_attention", _run_performer, ("y",), "fn(q, k, v, projection, causal) -> y"),
        Function("random_features.performer_attention_quadratic", _run_performer_quadratic, ("y",),
                 "fn(q, k, v, projection, causal) -> y"),
        Function("random_features.rff_features", _run_rff, ("phi",), "fn(x, projection) -> phi"),
        Function("random_features.rfa_attention", _run_rfa, ("y",), "fn(q, k, v, n_features, sigma, seed, gates) -> y"),
        Function("random_features.lsh_hash", _run_lsh_hash, ("buckets",), "fn(x, n_buckets, n_rounds, rotations) -> buckets"),
        Function("random_features.lsh_attention", _run_lsh_attention, ("y",),
                 "fn(qk, v, n_buckets, n_rounds, chunk_size, seed) -> y"),
        Function("random_features.reversible_forward", _run_reversible_forward, ("y1", "y2"),
                 "fn(x1, x2, wf, wg) -> (y1, y2) with F = tanh(· wf), G = tanh(· wg)"),
        Function("random_features.reversible_inverse", _run_reversible_inverse, ("x1", "x2"),
                 "fn(y1, y2, wf, wg) -> (x1, x2) with F = tanh(· wf), G = tanh(· wg)"),
        Function("mixing.fnet", _run_fnet, ("y",), "fn(x) -> y"),
        Function("mixing.fnet_matrix", _run_fnet_matrix, ("M",), "fn(N, d) -> M"),
        Function("mixing.spatial_gating_unit", _run_sgu, ("y",), "fn(x, w, b, causal) -> y"),
        Function("mixing.fft_conv", _run_fft_conv, ("y",), "fn(u, h) -> y"),
        Function("mixing.causal_toeplitz", _run_causal_toeplitz, ("T",), "fn(h, N) -> T"),
        Function("mixing.hyena_filter", _run_hyena_filter, ("h",), "fn(L, d, n_filters, seed) -> h"),
        Function("mixing.hyena_recurrence", _run_hyena_recurrence, ("y",), "fn(v, x, filters, skip) -> y"),
        Function("mixing.hyena_operator", _run_hyena_operator, ("y",),
                 "fn(u, w_in, filters, b_in, skip) -> y; intermediates: the projections"),
        Function("mixing.hyena_matrix", _run_hyena_matrix, ("H",), "fn(x, filters, skip) -> H"),
        Function("focus.focus_frequency_response", _run_focus_response, ("H",), "fn(theta, n_fft) -> H"),
        Function("focus.periodized_impulse_response", _run_periodized, ("h",), "fn(theta, n) -> h"),
        Function("focus.adaptive_filter", _run_adaptive_filter, ("y",), "fn(x, theta, variant) -> y"),
        Function("focus.continuous_exponents", _run_continuous_exponents, ("s",), "fn(theta) -> s"),
        Function("focus.continuous_impulse_response", _run_continuous_impulse, ("h",), "fn(theta, t) -> h"),
        Function("focus.global_conv", _run_global_conv, ("g",), "fn(x, kernel, skip, squash) -> g"),
        Function("focus.adaptive_max_pool", _run_max_pool, ("p",), "fn(g, n_out) -> p"),
        Function("focus.hypernetwork", _run_hypernetwork, ("theta",), "fn(x, params as p_<key>, n_bins) -> theta"),
        Function("focus.chunked_attention", _run_chunked_attention, ("y",), "fn(x, x_f, w_q, w_k, w_v, chunk_size) -> y"),
        Function("focus.gated_residual", _run_gated_residual, ("out",),
                 "fn(x, x_f, y, w_gamma, b_gamma, w_phi, b_phi, w_h, u_h, b_h) -> out"),
        Function("focus.focus_layer", _run_focus_layer, ("out",),
                 "fn(x, params as p_<key>, variant, chunk_size, n_bins) -> out; intermediates theta, x_f, y"),
        Function("focus.mega_ema_kernel", _run_mega_kernel, ("K",), "fn(alpha, delta, beta, eta, n) -> K"),
        Function("focus.mega_ema", _run_mega_ema, ("y",), "fn(x, alpha, delta, beta, eta) -> y"),
    ]
}


def _spd(rng, d, scale=1.0):
    G = rng.standard_normal((d, d)) + 1j * rng.standard_normal((d, d))
    return scale * (G @ G.conj().T) / d


_LAM3 = np.array([-0.3 + 1.0j, -0.05 - 2.0j, -1.2 + 0.0j])

CASES: list = [
    # ---- sde
    Case("sde.discretize/spiral_regular", "sde.discretize", 101,
         lambda r: {**_sde_base(r), "t": np.arange(6) * 0.5}, "spiral drift, regular grid"),
    Case("sde.discretize/irregular_grid", "sde.discretize", 102,
         lambda r: {**_sde_base(r), "t": np.concatenate([[0.0], np.cumsum(r.exponential(0.7, 7))])},
         "irregular time stamps: step-dependent F and Qd"),
    Case("sde.discretize/slow_mode", "sde.discretize", 103,
         lambda r: {**_sde_base(r, np.array([[-1e-9, 0.3], [0.0, -1.0]])), "t": np.array([0.0, 1e-6, 1.0, 50.0, 5e3])},
         "a mode with mu = 1e-9 (Brownian limit) and lags from 1e-6 to 5e3"),
    Case("sde.transition_matrix/lags", "sde.transition_matrix", 104,
         lambda r: {**_sde_base(r), "dt": np.array([0.0, 1e-8, 0.25, 1.0, 10.0])}, "e^{A dt} for lags 0 … 10"),
    Case("sde.moments/spiral", "sde.moments", 105,
         lambda r: {**_sde_base(r), "t": np.linspace(0.0, 4.0, 9), "m0": r.standard_normal(2), "P0": 0.5 * np.eye(2)},
         "mean and covariance from a Gaussian initial state"),
    Case("sde.sample/seeded", "sde.sample", 106,
         lambda r: {**_sde_base(r), "t": np.linspace(0.0, 3.0, 7), "x0": np.array([1.0, -0.5]), "size": 2, "rng": 7},
         "exact sampling; rng=7 (numpy.random.default_rng streams may change between NumPy versions)"),
    Case("sde.euler_maruyama/given_increments", "sde.euler_maruyama", 107,
         lambda r: {**_sde_base(r), "t": np.linspace(0.0, 2.0, 5), "x0": np.array([1.0, 0.0]), "n_substeps": 4,
                    "dW": r.standard_normal((16, 2)) * np.sqrt(0.125)},
         "Euler–Maruyama with given Brownian increments (deterministic)"),
    # ---- lyapunov
    Case("lyapunov.phi1/near_zero", "lyapunov.phi1", 201,
         lambda r: {"z": np.array([0.0, 1e-300, 1e-12, -1e-8 + 1e-9j, 2e-6j, -0.5 + 3j, 1.0, -50.0, -2.0 + 0.0j]),
                    "tau": np.array([1.0, 2.0, 3.0, 0.5, 1e3, 2.0, 1.0, 10.0, 1e-9])},
         "the kernel (e^{z tau} - 1)/z through z -> 0 (series), large and tiny tau"),
    Case("lyapunov.dle_covariance/diagonal", "lyapunov.dle_covariance", 202,
         lambda r: {"eigvals": _LAM3, "noise": np.array([0.7, 0.2, 1.5]), "tau": np.array([0.0, 0.1, 1.0, 7.5])},
         "diagonal noise spectrum, a few lags"),
    Case("lyapunov.dle_covariance/full", "lyapunov.dle_covariance", 203,
         lambda r: {"eigvals": _LAM3, "noise": _spd(r, 3), "tau": np.array([0.0, 0.3, 2.0])},
         "full Hermitian noise in the eigenbasis"),
    Case("lyapunov.dle_covariance/slow_decay", "lyapunov.dle_covariance", 204,
         lambda r: {"eigvals": np.array([0.0 + 0.0j, -1e-13 + 0.5j, -1e-7 + 0.0j, -2.0 + 1.0j]),
                    "noise": np.array([1.0, 0.5, 2.0, 0.3]), "tau": np.array([1e-9, 1.0, 1e3, 1e6])},
         "mu -> 0 (exact Brownian limit g tau) next to a fast mode"),
    Case("lyapunov.dle_covariance/long_lags_full", "lyapunov.dle_covariance", 205,
         lambda r: {"eigvals": np.array([-1e-6 + 1j, -0.5 - 1j]), "noise": _spd(r, 2), "tau": np.array([1e2, 1e5, 1e8])},
         "long lags: a slow and a fast mode, full noise"),
    Case("lyapunov.dle_covariance/growing_mode", "lyapunov.dle_covariance", 206,
         lambda r: {"eigvals": np.array([1.0 + 0.5j, -0.2 + 0.0j]), "noise": np.array([0.5, 1.0]), "tau": np.array([1.0, 100.0, 300.0])},
         "an unstable mode: e^{2 mu tau} up to e^{600}, large but finite"),
    Case("lyapunov.dle_covariance_backward/diagonal", "lyapunov.dle_covariance_backward", 207,
         lambda r: {"eigvals": _LAM3, "noise": np.array([0.7, 0.2, 1.5]), "tau": np.array([0.0, 0.5, 3.0, 100.0])},
         "pushed-back covariance, growing with the lag (up to e^{240})"),
    Case("lyapunov.dle_covariance_backward/full", "lyapunov.dle_covariance_backward", 208,
         lambda r: {"eigvals": _LAM3, "noise": _spd(r, 3), "tau": np.array([0.0, 0.4, 2.5])},
         "pushed-back covariance, full noise"),
    Case("lyapunov.steady_state_covariance/diagonal", "lyapunov.steady_state_covariance", 209,
         lambda r: {"eigvals": _LAM3, "noise": np.array([0.7, 0.2, 1.5])}, "g / (2 mu)"),
    Case("lyapunov.steady_state_covariance/full", "lyapunov.steady_state_covariance", 210,
         lambda r: {"eigvals": _LAM3, "noise": _spd(r, 3)}, "-G_kl / (lambda_k + conj(lambda_l))"),
    Case("lyapunov.isotropic_covariance/signed_lags", "lyapunov.isotropic_covariance", 211,
         lambda r: {"dt": np.arange(-10.0, 10.5, 0.5), "mu": 0.3, "sigma2": 0.5, "eta2": 0.1, "gamma2": 0.05},
         "forward (dt >= 0) and pushed-back (dt < 0) residual variance"),
    Case("lyapunov.isotropic_covariance/brownian_limit", "lyapunov.isotropic_covariance", 212,
         lambda r: {"dt": np.array([[0.0], [1e-6], [1.0], [1e4]]), "mu": np.array([0.0, 1e-15, 1e-9, 1e-3]),
                    "sigma2": 0.5, "eta2": 0.1, "gamma2": 0.05},
         "mu -> 0: sigma2 |dt| + eta2 + gamma2, broadcast over lags x decays"),
    Case("lyapunov.isotropic_covariance/long_pushed_back", "lyapunov.isotropic_covariance", 213,
         lambda r: {"dt": np.array([-1.0, -50.0, -300.0, 300.0]), "mu": 1.0, "sigma2": 0.5, "eta2": 0.1, "gamma2": 0.05},
         "pushed back by 300 time units: e^{600}, large but finite"),
    # ---- kalman
    *[
        Case(f"{fn}/{label}", fn, seed, build, desc)
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
        Case(f"{fn}/{label}", fn, seed, build, desc)
        for fn, base in [("kalman.kalman_filter_scan", 320), ("kalman.rts_smoother_scan", 330), ("kalman.batch_smoother", 340)]
        for seed, label, build, desc in [
            (base + 1, "regular", lambda r: _kalman_regular(r), "spiral system, regular grid"),
            (base + 2, "missing_irregular", lambda r: _kalman_irregular(r, missing=(2, 3, 9)),
             "irregular grid with missing measurements"),
        ]
    ],
    Case("kalman.kalman_weight_matrix/smoother", "kalman.kalman_weight_matrix", 351,
         lambda r: {**{k: v for k, v in _kalman_regular(r, N=10).items() if k != "z"}, "n_steps": 10, "kind": "smoother"},
         "the smoother's attention matrix W and offset c"),
    Case("kalman.kalman_weight_matrix/filter_missing", "kalman.kalman_weight_matrix", 352,
         lambda r: {**{k: v for k, v in _kalman_regular(r, N=10).items() if k != "z"}, "n_steps": 10, "kind": "filter",
                    "missing": np.isin(np.arange(10), [3, 4])},
         "the filter's causal W with two missing measurements (zero columns)"),
    Case("kalman.steady_state/spiral", "kalman.steady_state", 353,
         lambda r: {k: v for k, v in _kalman_regular(r).items() if k in ("F", "H", "Q", "R")}, "DARE solution and gain"),
    # ---- attention
    Case("attention.softmax_attention/basic", "attention.softmax_attention", 401,
         lambda r: {"q": r.standard_normal((6, 4)), "k": r.standard_normal((6, 4)), "v": r.standard_normal((6, 3)), "causal": False},
         "non-causal self-attention"),
    Case("attention.softmax_attention/causal_batched", "attention.softmax_attention", 402,
         lambda r: {"q": r.standard_normal((2, 7, 4)), "k": r.standard_normal((2, 7, 4)), "v": r.standard_normal((2, 7, 4)), "causal": True},
         "causal, batch of two"),
    Case("attention.softmax_attention/mask_cross", "attention.softmax_attention", 403,
         lambda r: {"q": r.standard_normal((5, 4)), "k": r.standard_normal((8, 4)), "v": r.standard_normal((8, 2)), "causal": False,
                    "mask": (r.random((5, 8)) < 0.7) | np.eye(5, 8, dtype=bool)},
         "cross-attention N != M with a boolean mask"),
    Case("attention.softmax_attention/large_logits", "attention.softmax_attention", 404,
         lambda r: {"q": 300.0 * r.standard_normal((6, 4)), "k": 300.0 * r.standard_normal((6, 4)), "v": r.standard_normal((6, 3)),
                    "causal": True, "scale": 1.0},
         "logits of order 1e5: a naive exp overflows, the max-subtracted softmax does not"),
    Case("attention.multihead_attention/causal_two_heads", "attention.multihead_attention", 405,
         lambda r: {"x": r.standard_normal((6, 8)), "w_q": r.standard_normal((8, 8)) / 3, "w_k": r.standard_normal((8, 8)) / 3,
                    "w_v": r.standard_normal((8, 8)) / 3, "w_o": r.standard_normal((8, 8)) / 3, "n_heads": 2, "causal": True},
         "two heads, causal"),
    Case("attention.attention_statistics/weights", "attention.attention_statistics", 406,
         lambda r: {"weights": attention.attention_weights(r.standard_normal((6, 3)), r.standard_normal((6, 3)), causal=True)},
         "entropy and effective support of causal weights (one-hot first row)", constrain=_renormalize("weights", by="sum")),
    Case("attention.lag_profile/toeplitz", "attention.lag_profile", 407,
         lambda r: {"W": np.tril(0.5 ** np.abs(np.subtract.outer(np.arange(8), np.arange(8)))) + 0.01 * r.random((8, 8))},
         "mean weight per lag of a nearly Toeplitz matrix"),
    Case("attention.frequency_response/exponential", "attention.frequency_response", 408,
         lambda r: {"W": np.tril(0.7 ** np.maximum(np.subtract.outer(np.arange(8), np.arange(8)), 0)) * (1 + 0.05 * r.random((8, 8))),
                    "omega": np.linspace(0.0, np.pi, 9)},
         "frequency response of an exponential-moving-average-like weight matrix"),
    # ---- positional
    Case("positional.sinusoidal_encoding/small", "positional.sinusoidal_encoding", 501,
         lambda r: {"n_positions": 16, "d_model": 8, "base": 10000.0}, "16 positions, 8 channels"),
    Case("positional.sinusoidal_encoding/long", "positional.sinusoidal_encoding", 502,
         lambda r: {"n_positions": 1024, "d_model": 4, "base": 100.0}, "1024 positions: arguments up to 1023 rad"),
    Case("positional.relative_shift_matrix/k5", "positional.relative_shift_matrix", 503,
         lambda r: {"k": 5.0, "d_model": 8, "base": 10000.0}, "the block rotation with PE(p + k) = M PE(p)"),
    Case("positional.rope/basic", "positional.rope", 504,
         lambda r: {"x": r.standard_normal((2, 6, 8)), "positions": np.arange(6.0), "base": 10000.0}, "interleaved pairs"),
    Case("positional.rope/large_positions", "positional.rope", 505,
         lambda r: {"x": r.standard_normal((5, 4)), "positions": np.array([0.0, 1e3, 1e5, 3e6, 1e8]), "base": 10000.0},
         "positions up to 1e8: the rotation angle is reduced exactly only in float64"),
    Case("positional.rope_complex/basic", "positional.rope_complex", 506,
         lambda r: {"x": r.standard_normal((6, 8)), "positions": np.arange(6.0) * 3, "base": 500.0}, "complex form, complex output"),
    # ---- afa
    Case("afa.afa/causal_student", "afa.afa", 601,
         lambda r: {**_afa_inputs(r, 8, 3), "eigvals": _LAM3, "sigma2": np.array([0.5, 0.2, 1.0]), "eta2": 0.1, "gamma2": 0.05, "nu": 2.0},
         "tensor form, causal, Student-t weight, per-channel noise"),
    Case("afa.afa/exponential_noncausal", "afa.afa", 602,
         lambda r: {**_afa_inputs(r, 7, 3, t=np.cumsum(r.exponential(0.5, 7))), "eigvals": _LAM3, "sigma2": 0.3, "eta2": 0.2,
                    "gamma2": 0.0, "nu": 3.0, "weight": "exponential", "causal": False, "temperature": 0.7},
         "Gaussian weight, non-causal (pushed-back pairs), irregular times, temperature"),
    Case("afa.afa/brownian_limit", "afa.afa", 603,
         lambda r: {**_afa_inputs(r, 6, 2), "eigvals": np.array([0.0 + 0.4j, -1e-12 - 0.7j]), "sigma2": 0.4, "eta2": 0.1,
                    "gamma2": 0.1, "nu": 1.0, "kappa": 1.0},
         "mu = 0 and 1e-12: Sigma = sigma2 dt + eta2 + gamma2; Cauchy weight kappa = 1"),
    Case("afa.afa/long_sequence", "afa.afa", 604,
         lambda r: {**_afa_inputs(r, 200, 2, t=np.arange(200) * 4.0), "eigvals": np.array([-1.0 + 0.3j, -0.5 - 1.0j]), "sigma2": 0.5,
                    "eta2": 0.1, "gamma2": 0.05, "nu": 2.0},
         "t up to 796 with mu = 1: e^{mu t} would overflow", intermediates=False),
    Case("afa.isotropic_afa/causal_student", "afa.isotropic_afa", 611,
         lambda r: {**_afa_inputs(r, 8, 4), "mu": 0.3, "omega": np.array([1.0, -0.5, 2.0, 0.0]), "sigma2": 0.5, "eta2": 0.1,
                    "gamma2": 0.05, "nu": 2.0},
         "isotropic form, causal, Student-t weight"),
    Case("afa.isotropic_afa/exponential_noncausal", "afa.isotropic_afa", 612,
         lambda r: {**_afa_inputs(r, 7, 4, t=np.cumsum(r.exponential(0.6, 7))), "mu": 0.2, "omega": np.array([0.3, -1.0, 1.7, 0.9]),
                    "sigma2": 0.3, "eta2": 0.2, "gamma2": 0.01, "nu": 4.0, "weight": "exponential", "causal": False, "temperature": 1.5},
         "Gaussian weight, non-causal, irregular times, temperature 1.5"),
    Case("afa.isotropic_afa/brownian_limit", "afa.isotropic_afa", 613,
         lambda r: {**_afa_inputs(r, 8, 4), "mu": 0.0, "omega": np.array([0.5, -0.5, 1.0, 2.0]), "sigma2": 0.5, "eta2": 0.1,
                    "gamma2": 0.05, "nu": 2.0},
         "mu = 0 (lambda -> 0 limit): Sigma = sigma2 dt + eta2 + gamma2"),
    Case("afa.isotropic_afa/long_sequence", "afa.isotropic_afa", 614,
         lambda r: {**_afa_inputs(r, 600, 4), "mu": 1.5, "omega": np.array([0.1, 0.7, -1.3, 2.9]), "sigma2": 0.5, "eta2": 0.1,
                    "gamma2": 0.05, "nu": 2.0},
         "N = 600, mu = 1.5: e^{mu t} reaches e^{898} (overflow if formed)", intermediates=False),
    Case("afa.afa_irls/three_iterations", "afa.afa_irls", 621,
         lambda r: {"z": _cplx(r, 8, 3), "eigvals": _LAM3, "sigma2": 0.4, "eta2": 0.2, "gamma2": 0.05, "nu": 2.0, "n_iter": 3, "step": 0.7},
         "IRLS with relaxation 0.7"),
    # ---- iir
    Case("iir.biquad_filter/near_unit_circle", "iir.biquad_filter", 701,
         lambda r: {"b": _resonator(0.999, 0.3)[0], "a": _resonator(0.999, 0.3)[1], "x": r.standard_normal(400), "form": "tdf2"},
         "poles at radius 0.999: a ring-down of ~1000 samples"),
    Case("iir.biquad_filter/df1_state", "iir.biquad_filter", 702,
         lambda r: {"b": np.array([0.2, 0.1, 0.05]), "a": np.array([1.0, -1.2, 0.5]), "x": r.standard_normal((20, 2)), "form": "df1",
                    "zi": r.standard_normal((4, 2))},
         "direct form I with an initial state, two channels", outputs=("y", "zf")),
    Case("iir.sos_filter/cheby1_near_unit_circle", "iir.sos_filter", 703,
         lambda r: {"sos": iir.cheby1(6, 1.0, 0.05, output="sos"), "x": r.standard_normal(300), "form": "tdf2"},
         "narrow Chebyshev I low-pass: poles near z = 1"),
    Case("iir.sos_filter/butter_bandpass_df1", "iir.sos_filter", 704,
         lambda r: {"sos": iir.butter(3, [0.2, 0.3], "bandpass", output="sos"), "x": r.standard_normal((64, 2)), "form": "df1"},
         "three-section band-pass, direct form I"),
    Case("iir.tf_filter/order4", "iir.tf_filter", 705,
         lambda r: {"b": iir.butter(4, 0.3, output="ba")[0], "a": iir.butter(4, 0.3, output="ba")[1], "x": r.standard_normal(50)},
         "direct-form transfer function of order 4"),
    Case("iir.impulse_response/near_unit_circle", "iir.impulse_response", 706,
         lambda r: {"b": _resonator(0.9995, 1.0)[0], "a": _resonator(0.9995, 1.0)[1], "n": 300}, "radius 0.9995"),
    Case("iir.biquad_impulse_closed_form/repeated_and_complex", "iir.biquad_impulse_closed_form", 707,
         lambda r: {"b": np.array([1.0, 0.5, 0.25]), "a": np.array([1.0, -1.8, 0.81]), "n": 40}, "a double pole at 0.9"),
    Case("iir.frequency_response/near_unit_circle", "iir.frequency_response", 708,
         lambda r: {"b": _resonator(0.999, 0.3)[0], "a": _resonator(0.999, 0.3)[1], "w": np.linspace(0.25, 0.35, 41)},
         "a peak of height ~1 and width ~1e-3 around the pole angle"),
    Case("iir.sos_frequency_response/cheby1", "iir.sos_frequency_response", 709,
         lambda r: {"sos": iir.cheby1(6, 1.0, 0.05, output="sos"), "w": 64}, "Chebyshev ripple in the pass band"),
    Case("iir.group_delay/near_unit_circle", "iir.group_delay", 710,
         lambda r: {"b": _resonator(0.99, 0.5)[0], "a": _resonator(0.99, 0.5)[1], "w": np.linspace(0.3, 0.7, 21)},
         "group delay up to ~100 samples at the pole angle"),
    Case("iir.butter/lowpass_ba", "iir.butter", 711,
         lambda r: {"order": 4, "wn": 0.2, "btype": "lowpass", "fs": 2.0, "output": "ba"}, "order 4 low-pass", outputs=("b", "a")),
    Case("iir.butter/bandpass_sos", "iir.butter", 712,
         lambda r: {"order": 3, "wn": np.array([100.0, 300.0]), "btype": "bandpass", "fs": 2000.0, "output": "sos"},
         "band-pass at fs = 2000 (pre-warped)"),
    Case("iir.butter/highpass_narrow", "iir.butter", 713,
         lambda r: {"order": 5, "wn": 0.01, "btype": "highpass", "fs": 2.0, "output": "sos"}, "cut-off 0.01: poles near z = 1"),
    Case("iir.cheby1/lowpass_sos", "iir.cheby1", 714,
         lambda r: {"order": 5, "rp": 0.5, "wn": 0.3, "btype": "lowpass", "fs": 2.0, "output": "sos"}, "0.5 dB ripple"),
    Case("iir.bilinear/second_order", "iir.bilinear", 715,
         lambda r: {"b": np.array([1.0]), "a": np.array([1.0, 0.2, 4.0]), "fs": 10.0}, "a lightly damped analog resonator"),
    Case("iir.impulse_invariance/second_order", "iir.impulse_invariance", 716,
         lambda r: {"b": np.array([1.0]), "a": np.array([1.0, 0.2, 4.0]), "fs": 10.0}, "the same resonator, impulse invariance"),
    Case("iir.diagonal_ssm_filter/chunked", "iir.diagonal_ssm_filter", 717,
         lambda r: {"lam": np.array([0.999 * np.exp(0.2j), 0.9, 0.5 * np.exp(-1j)]), "B": _cplx(r, 3), "C": _cplx(r, 3), "D": 0.3,
                    "x": r.standard_normal(200), "scan": "chunked"},
         "three complex modes, one at radius 0.999, across chunk boundaries"),
    Case("iir.diagonal_ssm_filter/associative", "iir.diagonal_ssm_filter", 718,
         lambda r: {"lam": np.array([0.99 * np.exp(0.5j), -0.8]), "B": _cplx(r, 2), "C": _cplx(r, 2), "D": 0.0,
                    "x": r.standard_normal((100, 2)), "scan": "associative"},
         "associative scan, two channels"),
    Case("iir.buttap/order5", "iir.buttap", 721, lambda r: {"order": 5}, "Butterworth prototype poles on the unit circle"),
    Case("iir.cheb1ap/order4", "iir.cheb1ap", 722, lambda r: {"order": 4, "rp": 1.0}, "Chebyshev I prototype, 1 dB ripple"),
    Case("iir.lp2bp_zpk/narrow", "iir.lp2bp_zpk", 723,
         lambda r: {**_zpk(*iir.buttap(3)), "wo": 2.0, "bw": 0.01}, "a band 0.01 wide around 2 rad/s: pole pairs close together"),
    Case("iir.bilinear_zpk/high_fs", "iir.bilinear_zpk", 724,
         lambda r: {**_zpk(*iir.cheb1ap(3, 0.5)), "fs": 1e3}, "fs = 1000: the poles land near z = 1"),
    Case("iir.zpk2tf/clustered", "iir.zpk2tf", 725,
         lambda r: {"z": np.array([-1.0, -1.0, 1.0]), "p": 0.99 * np.exp(1j * np.array([0.1, -0.1, 0.12, -0.12])), "k": 0.5},
         "expansion of clustered poles near the unit circle"),
    Case("iir.sos2tf/three_sections", "iir.sos2tf", 726,
         lambda r: {"sos": iir.butter(5, 0.1, output="sos")}, "the product of the sections' polynomials"),
    Case("iir.prewarp/grid", "iir.prewarp", 727, lambda r: {"f": np.array([1.0, 100.0, 400.0, 499.0]), "fs": 1000.0},
         "2 fs tan(pi f / fs), up to just below Nyquist"),
    Case("iir.analog_frequency_response/resonator", "iir.analog_frequency_response", 728,
         lambda r: {"b": np.array([1.0]), "a": np.array([1.0, 0.02, 4.0]), "w": np.linspace(1.9, 2.1, 21)},
         "a lightly damped analog resonator around its peak"),
    Case("iir.biquad_poles/regimes", "iir.biquad_poles", 729,
         lambda r: {"a": np.array([[1.0, -1.8, 0.81], [1.0, -2 * 0.999 * np.cos(0.3), 0.998001], [1.0, 0.5, -0.3], [1.0, 0.0, 0.0]])},
         "double, complex near the unit circle, real distinct, and zero poles"),
    Case("iir.scalar_ssm_to_iir/scalar", "iir.scalar_ssm_to_iir", 730, lambda r: {"A": 0.9, "B": 0.5, "C": 2.0, "D": 0.1},
         "the first-order IIR of a scalar SSM (corrected P-30/P-31)"),
    Case("iir.ssm_to_biquad/conjugate_pair", "iir.ssm_to_biquad", 731,
         lambda r: {"lam": 0.95 * np.exp(0.4j * np.array([1, -1])), "B": np.array([1.0 + 0.5j, 1.0 - 0.5j]),
                    "C": np.array([0.3 - 0.2j, 0.3 + 0.2j]), "D": 0.2},
         "a conjugate pair of modes as one real biquad"),
    Case("positional.rope_decay_bound/roformer", "positional.rope_decay_bound", 507,
         lambda r: {"distances": np.array([0.0, 1.0, 10.0, 100.0, 250.0]), "d": 128, "base": 10000.0},
         "RoFormer's long-term decay curve at a few distances"),
    # ---- ssm
    Case("ssm.hippo_legs/N8", "ssm.hippo_legs", 801, lambda r: {"N": 8}, "the LegS matrices, eigenvalues -1 … -8"),
    Case("ssm.discretize/bilinear_dense", "ssm.discretize", 802,
         lambda r: {"A": ssm.hippo_legs(6)[0], "B": ssm.hippo_legs(6)[1], "step": 0.05, "method": "bilinear", "diagonal": False},
         "S4's bilinear rule on HiPPO-LegS"),
    Case("ssm.discretize/zoh_diagonal_small_step", "ssm.discretize", 803,
         lambda r: {"A": np.array([[-0.5 + 3j, -1e-9 + 1j], [-2.0 + 0.0j, -0.5 - 7j]]), "B": _cplx(r, 2, 2),
                    "step": np.array([1e-7, 0.3]), "method": "zoh", "diagonal": True},
         "zero-order hold per channel, Δ = 1e-7 and a mode with Re λ = -1e-9"),
    Case("ssm.ssm_kernel/dense_long", "ssm.ssm_kernel", 804,
         lambda r: {**dict(zip(("Ab", "Bb"), ssm.discretize(*ssm.hippo_legs(8), 0.02))), "C": r.standard_normal(8), "L": 300,
                    "diagonal": False},
         "C Ab^l Bb for l < 300 (baby-step giant-step powers)"),
    Case("ssm.s4d_kernel/s4d_lin_conj_pairs", "ssm.s4d_kernel", 805,
         lambda r: {"A": -0.5 + 1j * np.pi * np.arange(4), "B": np.ones(4, dtype=complex), "C": _cplx(r, 2, 4) / 2,
                    "step": np.array([0.01, 0.1]), "L": 128, "method": "zoh", "conj_pairs": True},
         "S4D-Lin, two channels with steps 0.01 and 0.1, real kernel 2 Re K"),
    Case("ssm.s4_kernel_dplr/random_dplr", "ssm.s4_kernel_dplr", 806,
         lambda r: {"Lambda": -0.5 + 1j * np.sort(r.uniform(-10, 10, 6)), "P": _cplx(r, 6) / 3, "Q": _cplx(r, 6) / 3,
                    "B": _cplx(r, 6), "C": _cplx(r, 6), "step": 0.05, "L": 64},
         "Cauchy kernel + Woodbury + inverse FFT for a random DPLR matrix"),
    Case("ssm.ssm_recurrent/diagonal", "ssm.ssm_recurrent", 807,
         lambda r: {"u": r.standard_normal((2, 40, 3)), "Ab": 0.95 * np.exp(1j * r.uniform(-1, 1, (3, 4))), "Bb": _cplx(r, 3, 4),
                    "C": _cplx(r, 3, 4), "D": r.standard_normal(3), "diagonal": True},
         "recurrence of three diagonal channels, batch of two"),
    Case("ssm.ssm_convolution/dense", "ssm.ssm_convolution", 808,
         lambda r: {"u": r.standard_normal((50, 2)), **dict(zip(("Ab", "Bb"), ssm.discretize(*ssm.hippo_legs(5), 0.05))),
                    "C": r.standard_normal(5), "D": np.array([0.5, -0.2]), "diagonal": False},
         "causal convolution with the HiPPO kernel"),
    Case("ssm.selective_scan/mamba", "ssm.selective_scan", 809,
         lambda r: {"u": r.standard_normal((12, 3)), "delta": np.log1p(np.exp(r.standard_normal((12, 3)))),
                    "A": -np.exp(r.standard_normal((3, 4))), "B": r.standard_normal((12, 4)), "C": r.standard_normal((12, 4)),
                    "D": r.standard_normal(3), "discretization": "mamba"},
         "S6 with Mamba's simplified discretization; intermediate M (L x L per channel)"),
    Case("ssm.selective_scan/zoh_long", "ssm.selective_scan", 810,
         lambda r: {"u": r.standard_normal((2, 400, 2)), "delta": 0.01 + 2 * r.random((2, 400, 2)),
                    "A": -np.array([[1e-8, 0.5, 3.0], [1.0, 10.0, 40.0]]), "B": r.standard_normal((2, 400, 3)),
                    "C": r.standard_normal((2, 400, 3)), "discretization": "zoh"},
         "exact ZOH, 400 steps, a mode with A = -1e-8 (B̄ -> Δ B) and a fast one", intermediates=False),
    Case("ssm.hippo_legs_online/ramp", "ssm.hippo_legs_online", 811,
         lambda r: {"u": np.cumsum(r.standard_normal((200, 1)), axis=0) / 10, "N": 6},
         "online LegS projection of a random walk, 200 steps"),
    Case("ssm.legs_reconstruct/points", "ssm.legs_reconstruct", 812,
         lambda r: {"c": r.standard_normal((3, 8)), "x": np.linspace(-1.0, 1.0, 33)}, "Legendre series on 33 points"),

    # ---- random_features
    Case("random_features.elu_plus_one/grid", "random_features.elu_plus_one", 1201,
         lambda r: {"x": np.linspace(-30.0, 5.0, 36)}, "φ(x) = elu(x) + 1, including deep negative inputs"),
    Case("random_features.linear_attention/causal", "random_features.linear_attention", 1202,
         lambda r: {"q": r.standard_normal((300, 8)), "k": r.standard_normal((300, 8)), "v": r.standard_normal((300, 4)),
                    "causal": True}, "the causal linear attention over several chunks (prefix sums)"),
    Case("random_features.linear_attention/noncausal", "random_features.linear_attention", 1203,
         lambda r: {"q": r.standard_normal((2, 20, 8)), "k": r.standard_normal((2, 20, 8)), "v": r.standard_normal((2, 20, 3)),
                    "causal": False}, "non-causal, batched"),
    Case("random_features.favor_features/positive", "random_features.favor_features", 1204,
         lambda r: {"x": 2.0 * r.standard_normal((6, 8)), "projection": r.standard_normal((32, 8)), "kind": "positive"},
         "FAVOR+ positive features with large norms (stabilized)"),
    Case("random_features.favor_features/trig", "random_features.favor_features", 1205,
         lambda r: {"x": r.standard_normal((6, 8)), "projection": r.standard_normal((16, 8)), "kind": "trig"},
         "trigonometric random features"),
    Case("random_features.orthogonal_gaussian/blocks", "random_features.orthogonal_gaussian", 1206,
         lambda r: {"m": 20, "d": 8, "seed": 5}, "orthogonal blocks with chi-distributed row norms"),
    Case("random_features.performer_attention/causal", "random_features.performer_attention", 1207,
         lambda r: {"q": r.standard_normal((260, 8)) / 2, "k": r.standard_normal((260, 8)) / 2, "v": r.standard_normal((260, 4)),
                    "projection": r.standard_normal((64, 8)), "causal": True}, "linear-time causal Performer, given projection"),
    Case("random_features.performer_attention_quadratic/noncausal", "random_features.performer_attention_quadratic", 1208,
         lambda r: {"q": r.standard_normal((24, 8)) / 2, "k": r.standard_normal((24, 8)) / 2, "v": r.standard_normal((24, 4)),
                    "projection": r.standard_normal((64, 8)), "causal": False}, "the same features, quadratic path"),
    Case("random_features.rff_features/basic", "random_features.rff_features", 1209,
         lambda r: {"x": r.standard_normal((5, 6)), "projection": r.standard_normal((12, 6))}, "random Fourier features"),
    Case("random_features.rfa_attention/gated", "random_features.rfa_attention", 1210,
         lambda r: {"q": r.standard_normal((40, 8)), "k": r.standard_normal((40, 8)), "v": r.standard_normal((40, 3)),
                    "n_features": 32, "sigma": 1.5, "seed": 7, "gates": r.uniform(0.0, 0.99, 40)},
         "gated RFA (decay-masked form), seeded features"),
    Case("random_features.lsh_hash/rounds", "random_features.lsh_hash", 1211,
         lambda r: {"x": r.standard_normal((16, 6)), "n_buckets": 4, "n_rounds": 2, "rotations": r.standard_normal((2, 6, 2))},
         "bucket ids from given rotations, two rounds"),
    Case("random_features.lsh_attention/two_rounds", "random_features.lsh_attention", 1212,
         lambda r: {"qk": r.standard_normal((64, 8)), "v": r.standard_normal((64, 4)), "n_buckets": 4, "n_rounds": 2,
                    "chunk_size": 16, "seed": 3}, "shared-QK LSH attention, log-sum-exp over rounds"),
    Case("random_features.reversible_forward/tanh", "random_features.reversible_forward", 1213,
         lambda r: {"x1": r.standard_normal((10, 4)), "x2": r.standard_normal((10, 4)), "wf": r.standard_normal((4, 4)),
                    "wg": r.standard_normal((4, 4))}, "RevNet block with tanh sub-blocks"),
    Case("random_features.reversible_inverse/tanh", "random_features.reversible_inverse", 1214,
         lambda r: {"y1": r.standard_normal((10, 4)), "y2": r.standard_normal((10, 4)), "wf": r.standard_normal((4, 4)),
                    "wg": r.standard_normal((4, 4))}, "its inverse"),

    # ---- mixing
    Case("mixing.fnet/basic", "mixing.fnet", 1001, lambda r: {"x": r.standard_normal((2, 12, 6))}, "Re 2-D DFT, batched"),
    Case("mixing.fnet_matrix/small", "mixing.fnet_matrix", 1002, lambda r: {"N": 6, "d": 4}, "the real N·d × N·d operator"),
    Case("mixing.spatial_gating_unit/causal", "mixing.spatial_gating_unit", 1003,
         lambda r: {"x": r.standard_normal((10, 8)), "w": r.standard_normal((10, 10)) / 10, "b": np.ones(10), "causal": True},
         "gMLP SGU, lower-triangular W"),
    Case("mixing.fft_conv/long_filter", "mixing.fft_conv", 1004,
         lambda r: {"u": r.standard_normal((2, 300, 3)), "h": r.standard_normal((300, 3)) * np.exp(-np.arange(300) / 50.0)[:, None]},
         "causal linear convolution, filter as long as the signal (no wrap-around)"),
    Case("mixing.causal_toeplitz/basic", "mixing.causal_toeplitz", 1005,
         lambda r: {"h": r.standard_normal((5, 2)), "N": 8}, "the convolution as a lower-triangular Toeplitz matrix"),
    Case("mixing.hyena_filter/defaults", "mixing.hyena_filter", 1006,
         lambda r: {"L": 32, "d": 4, "n_filters": 2, "seed": 7}, "implicit filters from a seeded FFN, decay window"),
    Case("mixing.hyena_recurrence/order2", "mixing.hyena_recurrence", 1007,
         lambda r: {"v": r.standard_normal((16, 3)), "x": r.standard_normal((2, 16, 3)),
                    "filters": r.standard_normal((2, 16, 3)) * 0.3, "skip": r.standard_normal((2, 3))},
         "Def. 3.1 of Poli et al., order 2"),
    Case("mixing.hyena_operator/order2", "mixing.hyena_operator", 1008,
         lambda r: {"u": r.standard_normal((16, 3)), "w_in": r.standard_normal((3, 9)) / 3,
                    "filters": r.standard_normal((2, 16, 3)) * 0.3, "b_in": r.standard_normal(9), "skip": r.standard_normal((2, 3))},
         "projections, then the recurrence; intermediates: the projections"),
    Case("mixing.hyena_matrix/order2", "mixing.hyena_matrix", 1009,
         lambda r: {"x": r.standard_normal((2, 12, 2)), "filters": r.standard_normal((2, 12, 2)) * 0.3},
         "H(u) as diagonal gates times Toeplitz matrices"),

    # ---- focus
    Case("focus.focus_frequency_response/near_marginal", "focus.focus_frequency_response", 1101,
         lambda r: {"theta": np.array([[0.5, 0.5], [0.9, 1 - 1e-5], [0.01, 0.99]]), "n_fft": 64},
         "P-5 grid, including a pole pair at radius 1 − 5e-6"),
    Case("focus.periodized_impulse_response/basic", "focus.periodized_impulse_response", 1102,
         lambda r: {"theta": r.uniform(0.05, 0.95, (3, 2)), "n": 32}, "the response the FFT variants apply"),
    Case("focus.adaptive_filter/recursive", "focus.adaptive_filter", 1103,
         lambda r: {"x": r.standard_normal((64, 3)), "theta": r.uniform(0.0, 1.0, (4, 3, 1, 2)), "variant": "causal-recursive"},
         "per-bin difference equation, exactly causal"),
    Case("focus.adaptive_filter/literal", "focus.adaptive_filter", 1104,
         lambda r: {"x": r.standard_normal((64, 3)), "theta": r.uniform(0.0, 1.0, (4, 3, 1, 2)), "variant": "literal"},
         "the paper's per-bin FFT × conjugate response (non-causal within a bin)"),
    Case("focus.adaptive_filter/causal_circular", "focus.adaptive_filter", 1105,
         lambda r: {"x": r.standard_normal((64, 3)), "theta": r.uniform(0.0, 1.0, (4, 3, 1, 2)), "variant": "causal-circular"},
         "per-bin FFT × H (circular within a bin)"),
    Case("focus.continuous_exponents/grid", "focus.continuous_exponents", 1106,
         lambda r: {"theta": r.uniform(0.01, 0.99, (6, 2))}, "the paper's continuous-time reading of θ"),
    Case("focus.continuous_impulse_response/grid", "focus.continuous_impulse_response", 1107,
         lambda r: {"theta": r.uniform(0.01, 0.99, 2), "t": np.linspace(0.0, 10.0, 21)}, "continuous reading, corrected ω"),
    Case("focus.global_conv/basic", "focus.global_conv", 1108,
         lambda r: {"x": r.standard_normal((32, 3)), "kernel": r.standard_normal((16, 3)) / 4, "skip": r.standard_normal(3),
                    "squash": 0.0}, "the hypernetwork's global causal convolution"),
    Case("focus.adaptive_max_pool/uneven", "focus.adaptive_max_pool", 1109,
         lambda r: {"g": r.standard_normal((30, 3)), "n_out": 7}, "PyTorch's floor/ceil windows, 30 → 7"),
    Case("focus.hypernetwork/basic", "focus.hypernetwork", 1110,
         lambda r: {**_focus_layer_args(r), "n_bins": 4}, "θ per (bin, channel, branch) from previous bins"),
    Case("focus.chunked_attention/basic", "focus.chunked_attention", 1111,
         lambda r: {"x": r.standard_normal((32, 4)), "x_f": r.standard_normal((32, 4)), "w_q": r.standard_normal((4, 4)) / 2,
                    "w_k": r.standard_normal((4, 4)) / 2, "w_v": r.standard_normal((4, 4)) / 2, "chunk_size": 8},
         "causal attention within chunks, queries from x, keys/values from x_f"),
    Case("focus.gated_residual/basic", "focus.gated_residual", 1112,
         lambda r: {k: r.standard_normal(s) / 2 for k, s in (("x", (16, 4)), ("x_f", (16, 4)), ("y", (16, 4)), ("w_gamma", (4, 4)),
                    ("b_gamma", (4,)), ("w_phi", (4, 4)), ("b_phi", (4,)), ("w_h", (4, 4)), ("u_h", (4, 4)), ("b_h", (4,)))},
         "MEGA-style reset/update gates and residual"),
    Case("focus.focus_layer/recursive", "focus.focus_layer", 1113,
         lambda r: {**_focus_layer_args(r), "variant": "causal-recursive", "chunk_size": 8, "n_bins": 4},
         "the whole layer; intermediates θ, x_f, attention output"),
    Case("focus.mega_ema_kernel/basic", "focus.mega_ema_kernel", 1114, lambda r: {**_ema_args(r), "n": 40},
         "MEGA's multi-dimensional damped EMA kernel"),
    Case("focus.mega_ema/basic", "focus.mega_ema", 1115, lambda r: {"x": r.standard_normal((40, 3)), **_ema_args(r)},
         "the EMA as a causal FFT convolution"),

    # ---- rt_sde
    Case("rt_sde.rt_transition/rotation_decay", "rt_sde.rt_transition", 901,
         lambda r: {"mu": 0.2, "omega": _skew(r, 3), "s": np.array([-1.0, 0.0, 0.5, 20.0])}, "e^{(−μI + Ω)s}, both signs of s"),
    Case("rt_sde.rt_direction/transport", "rt_sde.rt_direction", 902,
         lambda r: {"omega": _skew(r, 3), "u0": _unit(r.standard_normal((4, 3))), "s": np.array([0.0, 0.3, 2.0, 50.0])},
         "unit directions carried by the rotation", constrain=_renormalize("u0")),
    Case("rt_sde.rt_noise_rate/corotating", "rt_sde.rt_noise_rate", 903,
         lambda r: {"omega": _skew(r, 3), "u0": _unit(r.standard_normal(3)), "s": np.array([0.0, 1.0, 4.0]),
                    "sigma2_perp": 0.3, "sigma2_par": 0.05}, "diagonal-plus-rank-1 noise rate along the moving direction",
         constrain=_renormalize("u0")),
    Case("rt_sde.rt_covariance/basic", "rt_sde.rt_covariance", 904,
         lambda r: {"mu": 0.3, "omega": _skew(r, 3), "u0": _unit(r.standard_normal(3)), "tau": np.array([0.0, 0.5, 3.0, 40.0]),
                    **_RT_NOISE}, "closed-form RT covariance over lags 0 … 40", constrain=_renormalize("u0")),
    Case("rt_sde.rt_covariance/brownian_limit", "rt_sde.rt_covariance", 905,
         lambda r: {"mu": 0.0, "omega": _skew(r, 4), "u0": _unit(r.standard_normal((2, 4))), "tau": np.array([[1e-8], [2.0]]),
                    **_RT_NOISE}, "μ = 0: variances linear in the lag", constrain=_renormalize("u0")),
    Case("rt_sde.rt_variances/small_decay", "rt_sde.rt_variances", 906,
         lambda r: {"mu": 1e-10, "tau": np.array([0.0, 1e-6, 1.0, 1e3]), **_RT_NOISE}, "μ = 1e-10: the series branch"),
    Case("rt_sde.rt_precision/batch", "rt_sde.rt_precision", 907,
         lambda r: {"u": _unit(r.standard_normal((3, 4))), "a_perp": np.array([0.5, 1.0, 2.0]), "a_par": np.array([0.1, 1.0, 1e6])},
         "Sherman–Morrison precision, nearly flat to nearly singular", constrain=_renormalize("u")),
    Case("rt_sde.rt_distance/batch", "rt_sde.rt_distance", 908,
         lambda r: {"r": r.standard_normal((5, 3)), "u": _unit(r.standard_normal((5, 3))), "a_perp": 0.7, "a_par": 0.05},
         "split Mahalanobis distance", constrain=_renormalize("u")),
    Case("rt_sde.rt_logdet_precision/grid", "rt_sde.rt_logdet_precision", 909,
         lambda r: {"a_perp": np.array([0.5, 1.0, 3.0]), "a_par": np.array([0.1, 1.0, 1e4]), "d": 5}, "log det of the RT precision"),
    Case("rt_sde.sphere_residuals/angles", "rt_sde.sphere_residuals", 910,
         lambda r: {"q": _unit(np.array([[1.0, 0.0, 0.0], [1.0, 1e-8, 0.0], [0.0, 1.0, 0.0], [-1.0, 1e-6, 0.0]])),
                    "k": np.array([[1.0, 0.0, 0.0]] * 4)},
         "θ = 0, 1e-8, π/2 and near π: sin²θ, θ², chord² and the tangential residual"),
    Case("rt_sde.rt_attention/key_direction", "rt_sde.rt_attention", 911,
         lambda r: {"q": r.standard_normal((7, 3)), "k": r.standard_normal((7, 3)), "v": r.standard_normal((7, 3)), "mu": 0.2,
                    "omega": _skew(r, 3), **_RT_NOISE, "nu": 2.0}, "RT attention, noise along the transported key"),
    Case("rt_sde.rt_attention/query_direction_exponential", "rt_sde.rt_attention", 912,
         lambda r: {"q": r.standard_normal((6, 4)), "k": r.standard_normal((6, 4)), "v": r.standard_normal((6, 4)), "mu": 0.0,
                    "omega": _skew(r, 4), **_RT_NOISE, "nu": 3.0, "weight": "exponential", "direction": "query",
                    "t": np.cumsum(r.exponential(0.5, 6))},
         "query direction, Gaussian weight, μ = 0, irregular times"),
    Case("rt_sde.rt_step/one_step", "rt_sde.rt_step", 913,
         lambda r: {"z": _unit(r.standard_normal((6, 3))), "alpha": 0.5, "mu": 0.1, "omega": _skew(r, 3), **_RT_NOISE, "nu": 2.0},
         "one residual-plus-normalization step on the sphere", constrain=_renormalize("z")),
    # ---- classical
    Case("classical.lfm_pulse/chirp", "classical.lfm_pulse", 1001, lambda r: {"n_samples": 64, "bandwidth": 0.4}, "linear-FM pulse"),
    Case("classical.matched_filter/normalized", "classical.matched_filter", 1002,
         lambda r: {"received": np.concatenate([np.zeros(20), classical.lfm_pulse(32, 0.3), np.zeros(30)]) + 0.3 * _cplx(r, 82),
                    "template": classical.lfm_pulse(32, 0.3), "normalize": True},
         "a chirp buried in complex noise, normalized correlation"),
    Case("classical.autocorrelation/ar1", "classical.autocorrelation", 1003,
         lambda r: {"x": iir.tf_filter([1.0], [1.0, -0.9], r.standard_normal(200)), "n_lags": 12}, "biased estimate of an AR(1)"),
    Case("classical.cross_correlation/delayed", "classical.cross_correlation", 1004,
         lambda r: {"d": np.roll(r.standard_normal(100), 3), "u": r.standard_normal(100), "n_lags": 8}, "cross-correlation"),
    Case("classical.wiener_hopf/ill_conditioned", "classical.wiener_hopf", 1005,
         lambda r: {"r": 0.99 ** np.arange(12) / (1 - 0.99**2), "p": 0.99 ** np.arange(1, 13) / (1 - 0.99**2)},
         "AR(1) with a = 0.99: an ill-conditioned Toeplitz system (Levinson–Durbin)"),
    Case("classical.ar1_psd/near_unit_pole", "classical.ar1_psd", 1006, lambda r: {"a": 0.98, "q": 0.5, "n_fft": 64},
         "peak 1/(1 − a)² at ω = 0"),
    Case("classical.wiener_smoother_response/ar1", "classical.wiener_smoother_response", 1007,
         lambda r: {"psd_signal": classical.ar1_psd(0.9, 1.0, 32), "psd_noise": np.full(32, 0.5)}, "S_x / (S_x + S_n)"),
    Case("classical.wiener_smoother_weights/ar1", "classical.wiener_smoother_weights", 1008,
         lambda r: {"psd_signal": classical.ar1_psd(0.9, 1.0, 64), "psd_noise": np.full(64, 0.5)}, "two-sided impulse response"),
    Case("classical.lms/system_identification", "classical.lms", 1009,
         lambda r: (lambda u: {"u": u, "d": iir.tf_filter([0.5, -0.3, 0.1], [1.0], u) + 0.01 * r.standard_normal(u.shape),
                               "n_taps": 3, "mu": 0.05})(r.standard_normal((2, 60))),
         "two runs identifying a 3-tap FIR"),
    Case("classical.rls/system_identification", "classical.rls", 1010,
         lambda r: (lambda u: {"u": u, "d": iir.tf_filter([0.5, -0.3, 0.1], [1.0], u) + 0.01 * r.standard_normal(60),
                               "n_taps": 3, "lam": 0.98, "delta": 0.01})(r.standard_normal(60)),
         "RLS with forgetting 0.98"),
    Case("classical.steering_vector/angles", "classical.steering_vector", 1011,
         lambda r: {"theta": np.array([-1.2, 0.0, 0.3, 1.5]), "n_sensors": 8, "spacing": 0.5}, "ULA steering vectors"),
    Case("classical.das_weights/broadside", "classical.das_weights", 1012,
         lambda r: {"theta0": 0.4, "n_sensors": 6, "spacing": 0.5}, "delay-and-sum weights"),
    Case("classical.mvdr_weights/interference", "classical.mvdr_weights", 1013,
         lambda r: (lambda a: {"R": np.outer(a, a.conj()) * 100 + np.eye(6), "steering": classical.steering_vector(np.array([0.0, 0.2]), 6),
                               "loading": 1e-3})(classical.steering_vector(0.5, 6)),
         "a strong interferer at 0.5 rad, diagonal loading"),
    Case("classical.beampattern/das", "classical.beampattern", 1014,
         lambda r: {"w": classical.das_weights(0.2, 8), "theta": np.linspace(-1.5, 1.5, 31)}, "power beampattern"),
    Case("classical.dirichlet_beampattern/mainlobe", "classical.dirichlet_beampattern", 1015,
         lambda r: {"theta": np.array([0.2, 0.2 + 1e-9, 0.5, -1.0]), "theta0": 0.2, "n_sensors": 8},
         "0/0 at the look direction and next to it"),
    Case("classical.sample_covariance/snapshots", "classical.sample_covariance", 1016,
         lambda r: {"x": _cplx(r, 40, 4)}, "(1/T) Σ x xᴴ"),
    Case("classical.beamform/snapshots", "classical.beamform", 1017,
         lambda r: {"x": _cplx(r, 2, 10, 4), "w": classical.das_weights(0.1, 4)}, "array output wᴴ x"),
    Case("classical.bartlett_spectrum/two_sources", "classical.bartlett_spectrum", 1018,
         lambda r: {"R": sum(np.outer(a, a.conj()) for a in classical.steering_vector(np.array([-0.3, 0.4]), 8)) + 0.1 * np.eye(8),
                    "theta": np.linspace(-1.0, 1.0, 21)}, "two sources"),
    Case("classical.capon_spectrum/two_sources", "classical.capon_spectrum", 1019,
         lambda r: {"R": sum(np.outer(a, a.conj()) for a in classical.steering_vector(np.array([-0.3, 0.4]), 8)) + 1e-3 * np.eye(8),
                    "theta": np.linspace(-1.0, 1.0, 21), "loading": 0.0}, "two sources at high SNR: a nearly singular R"),

]


def _check_registry():
    names = [c.name for c in CASES]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise RuntimeError(f"duplicate golden case names: {sorted(dup)}")
    for c in CASES:
        if c.function not in FUNCTIONS or not c.name.startswith(c.function + "/"):
            raise RuntimeError(f"case {c.name!r}: function {c.function!r} is not registered or not its prefix")


_check_registry()
_CASES_BY_NAME = {c.name: c for c in CASES}


def function_names() -> list:
    """The names accepted by :func:`compare`, e.g. ``"afa.isotropic_afa"``."""
    return sorted(FUNCTIONS)


def case_names(function: str | None = None) -> list:
    """Names of the golden cases (of one function if given)."""
    if function is not None and not isinstance(function, str):
        raise TypeError(f"function: expected a function name (str) or None, got {type(function).__name__}")
    if function is not None:
        function = _resolve_function(function)
    return [c.name for c in CASES if function is None or c.function == function]


def _resolve_function(name) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name in FUNCTIONS:
        return name
    matches = [f for f in FUNCTIONS if f.split(".", 1)[1] == name]
    if len(matches) == 1:
        return matches[0]
    raise ValueError(f"name: unknown function {name!r}; known functions: {', '.join(function_names())}")


def _resolve_cases(function: str, cases) -> list:
    mine = [c for c in CASES if c.function == function]
    if cases is None:
        return mine
    if isinstance(cases, str):
        cases = [cases]
    out = []
    for name in cases:
        full = name if "/" in str(name) else f"{function}/{name}"
        if full not in _CASES_BY_NAME or _CASES_BY_NAME[full].function != function:
            raise ValueError(f"cases: unknown case {name!r} of {function}; known: {', '.join(c.name for c in mine)}")
        out.append(_CASES_BY_NAME[full])
    return out


def compute(case, *, args: dict | None = None) -> tuple:
    """Arguments and results of one case: ``(args, results)``.

    ``case`` is a :class:`Case` or its name; ``args`` overrides the built arguments (used to
    recompute stored vectors from their own inputs). ``results`` is ordered: intermediates in
    the order of computation, then the outputs.
    """
    if not isinstance(case, (str, Case)):
        raise TypeError(f"case: expected a case name (str) or a Case, got {type(case).__name__}")
    if isinstance(case, str):
        if case not in _CASES_BY_NAME:
            raise ValueError(f"case: unknown case {case!r}")
        case = _CASES_BY_NAME[case]
    if args is None:
        args = case.build(np.random.default_rng(case.seed))
    with np.errstate(over="ignore"):  # documented overflow of pushed-back residuals (afa)
        results = FUNCTIONS[case.function].run(args, case.intermediates)
    results = {k: np.asarray(v) for k, v in results.items()}
    missing = [o for o in case.output_names() if o not in results]
    if missing:
        raise RuntimeError(f"case {case.name}: run() did not produce outputs {missing}")
    return args, results


# --------------------------------------------------------------------------------------------
# Files: export, load, verify
# --------------------------------------------------------------------------------------------


def _jsonable(value):
    arr = np.asarray(value)
    if arr.dtype.kind == "c":
        return {"real": float(arr.real), "imag": float(arr.imag)}
    return arr.item()


def _describe(key, arr) -> dict:
    arr = np.asarray(arr)
    d = {"key": key, "shape": list(arr.shape), "dtype": arr.dtype.str if arr.dtype.kind == "U" else arr.dtype.name}
    if arr.ndim == 0:
        d["value"] = _jsonable(arr)
    return d


def _case_arrays(case: Case, args: dict, results: dict) -> tuple:
    arrays, manifest = {}, {"arguments": {}, "outputs": {}, "intermediates": {}}
    for k, v in args.items():
        if v is None:
            continue
        arr = np.asarray(v)
        if arr.dtype.hasobject:
            raise TypeError(f"case {case.name}: argument {k} is not a numeric/string array")
        arrays[f"arg.{k}"] = arr
        manifest["arguments"][k] = _describe(f"arg.{k}", arr)
    outs = case.output_names()
    for k, v in results.items():
        group, prefix = ("outputs", "out") if k in outs else ("intermediates", "mid")
        arrays[f"{prefix}.{k}"] = v
        manifest[group][k] = _describe(f"{prefix}.{k}", v)
    # outputs in the order the function returns them
    manifest["outputs"] = {k: manifest["outputs"][k] for k in outs}
    return arrays, manifest


def _refimpl_version() -> str:
    version = getattr(sys.modules[__package__], "__version__", None)
    if version is None:  # refimpl seen as a namespace package (an editable install, from another directory)
        from importlib.metadata import version as dist_version

        version = dist_version("refimpl")
    return version


def _versions() -> dict:
    return {
        "refimpl_version": _refimpl_version(),
        "numpy_version": np.__version__,
        "scipy_version": scipy.__version__,
        "python_version": platform.python_version(),
    }


_POLICY = {
    "error": "norm-wise: max|y - y*| (abs) and max|y - y*| / max|y*| (rel) against the float64 oracle y*",
    "float64": "pass if rel <= rtol or abs <= atol (per case)",
    "float32/float16": "ratio rule: rel <= 2 * max(rel(plain), ulps * eps(dtype)); plain = refimpl on inputs "
    "rounded to the dtype, output rounded to the dtype",
    "regeneration": "recomputed arrays agree with the stored ones to regen_rtol (norm-wise relative)",
    "ratio_rule_factor": RATIO_RULE_FACTOR,
}


def export(directory, *, cases=None, quiet: bool = True) -> dict:
    """Write the golden vectors: one ``.npz`` per case and ``manifest.json``; return the manifest.

    Parameters
    ----------
    directory : str or Path
        Created if needed. Existing case files of the same name are overwritten.
    cases : iterable of str, optional
        Case names (default: all of :data:`CASES`).
    quiet : bool
        If False, print one line per case.
    """
    if not isinstance(directory, (str, Path)) and not hasattr(directory, "__fspath__"):
        raise TypeError(f"directory: expected a path (str or os.PathLike), got {type(directory).__name__}")
    if not isinstance(quiet, (bool, np.bool_)):
        raise TypeError(f"quiet: expected a bool (True or False), got {type(quiet).__name__} {quiet!r}")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"directory: {directory} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    selected = CASES if cases is None else [_CASES_BY_NAME[n] if n in _CASES_BY_NAME else _unknown_case(n) for n in cases]
    entries = []
    for case in selected:
        args, results = compute(case)
        arrays, desc = _case_arrays(case, args, results)
        path = directory / case.file
        write_npz(path, arrays)
        entries.append(
            {
                "name": case.name,
                "function": case.function,
                "file": case.file,
                "sha256": sha256(path),
                "bytes": path.stat().st_size,
                "seed": case.seed,
                "description": case.description,
                "call": FUNCTIONS[case.function].call,
                **desc,
                "tolerance": {"rtol": case.rtol, "atol": case.atol, "regen_rtol": case.regen_rtol, "ulps": case.ulps},
            }
        )
        if not quiet:
            print(f"  wrote {case.file} ({path.stat().st_size} bytes)")
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **_versions(), "tolerance_policy": _POLICY, "cases": entries}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    return manifest


def _unknown_case(name):
    raise ValueError(f"cases: unknown case {name!r}; see refimpl.oracle.case_names()")


def _read_manifest(directory: Path) -> dict:
    path = directory / "manifest.json"
    if not directory.is_dir():
        raise ValueError(f"directory: {directory} is not a directory")
    if not path.is_file():
        raise ValueError(f"directory: no manifest.json in {directory}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"directory: {path} is not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"directory: {path} is not a {FORMAT} manifest of version {FORMAT_VERSION} "
            f"(format={manifest.get('format')!r}, version={manifest.get('format_version')!r})"
        )
    return manifest


def _restore_args(arrays: dict) -> dict:
    args = {}
    for key, arr in arrays.items():
        if key.startswith("arg."):
            args[key[4:]] = arr.item() if arr.ndim == 0 else arr
    return args


@dataclass
class GoldenCase:
    """One case read back from a vectors directory."""

    name: str
    function: str
    seed: int
    arguments: dict
    outputs: dict
    intermediates: dict
    tolerance: dict
    entry: dict = field(repr=False, default_factory=dict)


def load_case(directory, name: str, *, check_sha: bool = True) -> GoldenCase:
    """Read the case ``name`` of an exported vectors directory.

    The file's sha256 is checked against the manifest (``ValueError`` on a mismatch, unless
    ``check_sha=False``); pickled object arrays are refused (``ValueError``).
    """
    if not isinstance(directory, (str, Path)) and not hasattr(directory, "__fspath__"):
        raise TypeError(f"directory: expected a path (str or os.PathLike), got {type(directory).__name__}")
    directory = Path(directory)
    if not isinstance(check_sha, (bool, np.bool_)):
        raise TypeError(f"check_sha: expected a bool (True or False), got {type(check_sha).__name__} {check_sha!r}")
    manifest = _read_manifest(directory)
    entries = {e["name"]: e for e in manifest["cases"]}
    if name not in entries:
        raise ValueError(f"name: no case {name!r} in {directory / 'manifest.json'}")
    entry = entries[name]
    path = directory / entry["file"]
    if not path.is_file():
        raise ValueError(f"name: file {entry['file']} of case {name!r} is missing from {directory}")
    if check_sha and sha256(path) != entry["sha256"]:
        raise ValueError(f"name: {entry['file']} does not match its sha256 in the manifest (tampered or corrupted)")
    arrays = read_npz(path)
    return GoldenCase(
        name=name,
        function=entry["function"],
        seed=entry["seed"],
        arguments=_restore_args(arrays),
        # in the manifest's order: outputs as returned, intermediates in the order of computation
        outputs={k: arrays[f"out.{k}"] for k in entry["outputs"]},
        intermediates={k: arrays[f"mid.{k}"] for k in entry["intermediates"]},
        tolerance=entry["tolerance"],
        entry=entry,
    )


@dataclass
class VerifyReport:
    """Result of :func:`verify`: per case ``"ok"`` or a list of problems."""

    directory: str
    problems: dict  # case name -> list of messages
    checked: list
    not_exported: list

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def tampered(self) -> list:
        return [n for n, msgs in self.problems.items() if any("sha256" in m for m in msgs)]

    @property
    def changed(self) -> list:
        return [n for n, msgs in self.problems.items() if any("differs" in m or "shape" in m for m in msgs)]

    def __str__(self) -> str:
        lines = [f"verified {len(self.checked)} cases in {self.directory}: "
                 + ("all agree" if self.ok else f"{len(self.problems)} with problems")]
        for name, msgs in self.problems.items():
            lines += [f"  {name}: {m}" for m in msgs]
        if self.not_exported:
            lines.append(f"  note: {len(self.not_exported)} registered cases are not in the directory: "
                         + ", ".join(self.not_exported))
        return "\n".join(lines)


def _diff(stored: dict, fresh: dict, rtol: float, what: str) -> list:
    msgs = []
    for key in sorted(set(stored) | set(fresh)):
        if key not in fresh:
            msgs.append(f"{what} {key} is stored but no longer computed")
            continue
        if key not in stored:
            msgs.append(f"{what} {key} is computed but not stored")
            continue
        a, b = np.asarray(fresh[key]), np.asarray(stored[key])
        if a.shape != b.shape:
            msgs.append(f"{what} {key}: shape {a.shape} != stored {b.shape}")
        elif a.dtype.kind in "USbiu" or b.dtype.kind in "USbiu":  # strings, flags, integers: exactly
            if not np.array_equal(a, b):
                msgs.append(f"{what} {key} differs: {a!r} != stored {b!r}")
        else:
            err = rel_error(a, b)
            if not err <= rtol:
                msgs.append(f"{what} {key} differs: rel error {err:.3e} > {rtol:.0e} (max abs {max_abs_error(a, b):.3e})")
    return msgs


def verify(directory) -> VerifyReport:
    """Recompute every case of an exported vectors directory and diff it.

    For each case of the manifest: the file's sha256 must match (else it is reported as
    tampered); the arguments rebuilt from the seed must equal the stored ones, and refimpl run
    on the *stored* arguments must reproduce every stored output and intermediate, both to the
    case's ``regen_rtol``. Cases that the registry no longer knows are problems; registered
    cases missing from the directory are listed as a note. ``ValueError`` if the directory has
    no valid manifest.
    """
    if not isinstance(directory, (str, Path)) and not hasattr(directory, "__fspath__"):
        raise TypeError(f"directory: expected a path (str or os.PathLike), got {type(directory).__name__}")
    directory = Path(directory)
    manifest = _read_manifest(directory)
    problems, checked = {}, []
    for entry in manifest["cases"]:
        name = entry.get("name", "?")
        msgs = []
        checked.append(name)
        case = _CASES_BY_NAME.get(name)
        path = directory / entry.get("file", "")
        if case is None:
            problems[name] = [f"not a registered case of refimpl {_versions()['refimpl_version']}"]
            continue
        if not path.is_file():
            problems[name] = [f"file {entry.get('file')} is missing"]
            continue
        if sha256(path) != entry.get("sha256"):
            msgs.append(f"{path.name}: sha256 mismatch with the manifest (tampered or corrupted file)")
        try:
            arrays = read_npz(path)
        except Exception as exc:  # unreadable zip, pickled member, truncated file …
            problems[name] = msgs + [f"{path.name} cannot be read safely: {exc}"]
            continue
        stored_args = _restore_args(arrays)
        rebuilt = {k: v for k, v in case.build(np.random.default_rng(case.seed)).items() if v is not None}
        msgs += _diff({k: np.asarray(v) for k, v in stored_args.items()},
                      {k: np.asarray(v) for k, v in rebuilt.items()}, case.regen_rtol, "argument")
        try:
            _, fresh = compute(case, args=stored_args)
        except Exception as exc:
            problems[name] = msgs + [f"recomputation raised {type(exc).__name__}: {exc}"]
            continue
        stored = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(("out.", "mid."))}
        msgs += _diff(stored, fresh, case.regen_rtol, "result")
        if msgs:
            problems[name] = msgs
    exported = {e.get("name") for e in manifest["cases"]}
    not_exported = [c.name for c in CASES if c.name not in exported]
    return VerifyReport(str(directory), problems, checked, not_exported)


# --------------------------------------------------------------------------------------------
# The comparison harness
# --------------------------------------------------------------------------------------------


@dataclass
class QuantityReport:
    """One output or intermediate of one case, judged by the tolerance policy."""

    name: str
    kind: str  # "output" or "intermediate"
    passed: bool
    abs_error: float = float("nan")
    rel_error: float = float("nan")
    bound: float = float("nan")  # the rel bound it was held to
    plain_error: float | None = None  # low dtypes: rel error of refimpl at that precision
    message: str = ""


@dataclass
class CaseReport:
    """The verdict on one case: ``status`` is ``"pass"``, ``"fail"`` or ``"error"``."""

    case: str
    status: str
    quantities: list
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    @property
    def first_failure(self) -> str | None:
        """The first failing quantity in the order of computation: where the bug is."""
        for q in self.quantities:
            if not q.passed:
                return q.name
        return None


@dataclass
class CompareReport:
    """Result of :func:`compare`; ``str(report)`` is a table, ``report.passed`` the verdict."""

    function: str
    dtype: str
    cases: list

    @property
    def passed(self) -> bool:
        return bool(self.cases) and all(c.passed for c in self.cases)

    def __getitem__(self, name) -> CaseReport:
        for c in self.cases:
            if c.case == name or c.case.split("/", 1)[1] == name:
                return c
        raise KeyError(name)

    def table(self, digits: int = 1) -> str:
        """A fixed-width table; errors printed with ``digits`` significant decimals."""
        rule = "ratio rule" if self.dtype in _LOW_DTYPES else "float64 rtol"
        lines = [f"compare {self.function} in {self.dtype} ({rule}): "
                 + ("PASS" if self.passed else "FAIL") + f", {sum(c.passed for c in self.cases)}/{len(self.cases)} cases"]
        for c in self.cases:
            head = f"  {c.case.split('/', 1)[1]:<28} {c.status.upper():<5}"
            if c.status == "error":
                lines.append(f"{head} {c.message}")
                continue
            where = f" first failure: {c.first_failure}" if c.first_failure else ""
            lines.append(head + where)
            for q in c.quantities:
                if q.message and not np.isfinite(q.rel_error):
                    lines.append(f"      {q.name:<10} {'ok' if q.passed else 'FAIL':<4} {q.message}")
                    continue
                lines.append(f"      {q.name:<10} {'ok' if q.passed else 'FAIL':<4} rel {q.rel_error:.{digits}e}"
                             f"  abs {q.abs_error:.{digits}e}  bound {q.bound:.{digits}e}" + (f"  {q.message}" if q.message else ""))
        return "\n".join(lines)

    __str__ = table


def _dtype_name(dtype) -> str:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype: expected float64, float32 or float16, got {dtype!r}") from None
    if dt.name not in ("float64",) + _LOW_DTYPES:
        raise ValueError(f"dtype: expected float64, float32 or float16, got {dt.name}")
    return dt.name


def _round(x, dtype: str):
    """Round a value to ``dtype`` (complex part-wise; complex float16 is carried as complex64)."""
    if isinstance(x, (bool, np.bool_, str, int, np.integer)) or x is None:
        return x
    with np.errstate(over="ignore"):  # values beyond the dtype's range become inf, as in a kernel
        return _round_array(np.asarray(x), dtype, x)


def _round_array(arr, dtype, x):
    if arr.dtype.kind == "f":
        out = arr.astype(dtype)
    elif arr.dtype.kind == "c":
        if dtype == "float16":  # NumPy has no complex32: both parts on the float16 grid, carried as complex64
            re, im = (part.astype(np.float16).astype(np.float32) for part in (arr.real, arr.imag))
            out = (re + 1j * im).astype(np.complex64)
        else:
            out = arr.astype(np.complex128 if dtype == "float64" else np.complex64)
    else:
        return x
    return out[()] if out.ndim == 0 else out


def _as_results(value, case: Case, oracle: dict) -> tuple:
    """Map the user's return value to ``{name: value}``; (mapping, error message or '')."""
    outs = case.output_names()
    if isinstance(value, dict):
        unknown = [k for k in value if k not in oracle]
        note = f"ignored unknown names {unknown}" if unknown else ""
        return {k: v for k, v in value.items() if k in oracle}, note
    if isinstance(value, (tuple, list)):
        if len(value) != len(outs):
            return None, f"returned a {type(value).__name__} of {len(value)} items, expected {len(outs)} ({', '.join(outs)})"
        return dict(zip(outs, value)), ""
    if len(outs) != 1:
        return None, f"returned one {type(value).__name__}, expected a tuple ({', '.join(outs)})"
    return {outs[0]: value}, ""


def _judge(name, kind, got, want, *, dtype, rtol, atol, plain, ulps) -> QuantityReport:
    want = np.asarray(want)
    try:
        arr = np.asarray(got)
    except Exception as exc:  # e.g. a ragged list
        return QuantityReport(name, kind, False, message=f"not an array ({type(exc).__name__})")
    if arr.dtype.hasobject or arr.dtype.kind not in "biufc":
        return QuantityReport(name, kind, False, message=f"dtype {arr.dtype} is not numeric")
    if arr.shape != want.shape:
        return QuantityReport(name, kind, False, message=f"shape {arr.shape} != expected {want.shape}")
    if want.dtype.kind == "c" and arr.dtype.kind != "c":
        return QuantityReport(name, kind, False, message=f"dtype {arr.dtype} is real, expected complex")
    if want.dtype.kind != "c" and arr.dtype.kind == "c":
        return QuantityReport(name, kind, False, message=f"dtype {arr.dtype} is complex, expected real")
    arr64 = arr.astype(np.complex128 if arr.dtype.kind == "c" else np.float64)
    if kind == "intermediate":  # NaN in an oracle intermediate: a pair outside the computation, not compared
        care = ~np.isnan(want)
        if not care.all():
            arr64, want = arr64[care], want[care]
            plain = None if plain is None else np.asarray(plain)[care]
    if dtype == "float64":
        e_abs, e_rel = max_abs_error(arr64, want), rel_error(arr64, want)
        return QuantityReport(name, kind, bool(e_rel <= rtol or e_abs <= atol), e_abs, e_rel, rtol)
    with np.errstate(over="ignore", invalid="ignore"):
        # the user's values on the dtype's grid (a no-op for a kernel that returns the dtype)
        arr64 = np.asarray(_round(arr64, dtype)).astype(want.dtype)
        rounded = np.asarray(_round(plain, dtype)).astype(want.dtype)
    e_plain = rel_error(rounded, want)
    floor = ulps * float(np.finfo(dtype).eps)
    if not np.isfinite(e_plain):
        # The oracle overflows the dtype: those entries must overflow alike (inf of the same sign);
        # the finite entries are judged by the ratio rule.
        fin = np.isfinite(rounded)
        same = bool(np.array_equal(arr64[~fin], rounded[~fin], equal_nan=True))
        e_plain = rel_error(rounded[fin], want[fin])
        e_abs, e_rel = max_abs_error(arr64[fin], want[fin]), rel_error(arr64[fin], want[fin])
        bound = RATIO_RULE_FACTOR * max(e_plain, floor)
        msg = f"{int((~fin).sum())} entries overflow {dtype}" + ("" if same else ", but not in the returned values")
        return QuantityReport(name, kind, same and bool(e_rel <= bound), e_abs, e_rel, bound, e_plain, msg)
    e_abs, e_rel = max_abs_error(arr64, want), rel_error(arr64, want)
    bound = RATIO_RULE_FACTOR * max(e_plain, floor)
    return QuantityReport(name, kind, bool(e_rel <= bound), e_abs, e_rel, bound, e_plain)


def _load_from(vectors, case: Case) -> tuple:
    g = load_case(vectors, case.name)
    return g.arguments, {**g.intermediates, **g.outputs}


def compare(name, fn, *, dtype=np.float64, cases=None, vectors=None) -> CompareReport:
    r"""Run a user's implementation on the golden cases of ``name`` and judge it.

    Implements the acceptance rules Eqs. (15.1)–(15.3) of the book (norm-wise errors, float64
    bounds, and the ratio rule of FlashAttention's tests for low precision; see the module
    docstring).

    Parameters
    ----------
    name : str
        A registered function, ``"module.function"`` (e.g. ``"afa.isotropic_afa"``) or the bare
        function name when unique; see :func:`function_names`.
    fn : callable
        Called once per case with the case's arguments as keywords (the ``call`` column of the
        manifest; e.g. ``fn(q=…, k=…, v=…, mu=…, omega=…, …)``). Floating arguments are cast to
        ``dtype`` (complex ones to the matching complex dtype; complex float16 inputs are
        rounded part-wise to float16 and passed as complex64, NumPy having no complex32);
        integers, booleans and strings are passed unchanged. It returns the output (one
        array), the outputs as a tuple in refimpl's order, or a dict of named outputs and any
        of the case's intermediates (``P``, ``R2``, ``d2``, ``A`` … — see ``case_names`` and the
        manifest), which are then checked too, in the order of computation, so that the first
        failing one localizes a bug.
    dtype : {numpy.float64, numpy.float32, numpy.float16}
        The precision of the user's implementation: it selects the casting of the inputs and
        the tolerance rule.
    cases : str or iterable of str, optional
        Case names (full, or the part after ``/``); default all cases of ``name``.
    vectors : str or Path, optional
        A directory written by :func:`export`: compare against its stored arguments and values
        (sha256 checked) instead of recomputing them.

    Returns
    -------
    CompareReport
        Per case ``status`` (``pass``/``fail``/``error``) and, per quantity, the max abs and
        norm-wise relative errors and the bound. A callable that raises, returns the wrong
        number of outputs, a wrong shape or a wrong dtype kind gives a failed or errored
        case, never an exception.

    Raises
    ------
    ValueError
        Unknown ``name`` (the message lists the known names), unknown case, unsupported dtype.
    TypeError
        ``fn`` is not callable.
    """
    if vectors is not None and not isinstance(vectors, (str, Path)) and not hasattr(vectors, "__fspath__"):
        raise TypeError(f"vectors: expected a path (str or os.PathLike) or None, got {type(vectors).__name__}")
    function = _resolve_function(name)
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    dt = _dtype_name(dtype)
    selected = _resolve_cases(function, cases)
    reports = []
    for case in selected:
        if vectors is not None:
            args, oracle = _load_from(vectors, case)
        else:
            args, oracle = compute(case)
        user_args = {k: _round(v, dt) for k, v in args.items() if v is not None}
        plain = None
        if dt != "float64":
            try:
                with np.errstate(all="ignore"):
                    _, plain = compute(case, args=case.constrain(user_args) if case.constrain else user_args)
            except Exception as exc:  # e.g. time stamps that are no longer increasing once rounded
                reports.append(CaseReport(case.name, "error", [], f"refimpl cannot evaluate the inputs rounded to {dt} "
                                          f"({type(exc).__name__}: {exc}); the ratio rule is undefined for this case"))
                continue
        try:
            with np.errstate(all="ignore"):
                value = fn(**user_args)
        except Exception as exc:
            reports.append(CaseReport(case.name, "error", [], f"raised {type(exc).__name__}: {exc}"))
            continue
        mapped, note = _as_results(value, case, oracle)
        if mapped is None:
            reports.append(CaseReport(case.name, "error", [], note))
            continue
        quantities = []
        outs = case.output_names()
        for qname in oracle:  # intermediates first, in order of computation, then the outputs
            kind = "output" if qname in outs else "intermediate"
            if qname not in mapped:
                if kind == "output":
                    quantities.append(QuantityReport(qname, kind, False, message="missing from the returned values"))
                continue
            quantities.append(_judge(qname, kind, mapped[qname], oracle[qname], dtype=dt, rtol=case.rtol, atol=case.atol,
                                     plain=None if plain is None else plain[qname], ulps=case.ulps))
        status = "pass" if all(q.passed for q in quantities) else "fail"
        reports.append(CaseReport(case.name, status, quantities, note))
    return CompareReport(function, dt, reports)


# --------------------------------------------------------------------------------------------
# Citations: which function implements which tagged equation of the book
# --------------------------------------------------------------------------------------------

_EQ_HEAD = re.compile(r"\bEqs?\.\s*(?=\()")
_EQ_NUM = re.compile(r"\((\d+)\.(\d+)\)")
_EQ_SEP = re.compile(r"\s*(–|—|-|to|,\s*and|,|and|/)\s*(?=\()")


def cited_tags(text: str) -> list:
    """The book's equation tags cited in ``text``, in order, without repeats.

    A citation is ``Eq. (k.n)``, or a list after ``Eqs.``: ``Eqs. (k.n) and (k.m)``,
    ``Eqs. (k.n), (k.m)``, ``Eqs. (k.n)/(k.m)``, and ranges ``Eqs. (k.n)–(k.m)`` (en dash, em dash,
    hyphen or "to"; both ends in chapter k), which cite every tag in between. Paper equation
    numbers (``Eq. 6``, ``Eq. P-30``) have no parenthesized ``k.n`` and are not book tags.
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    tags = []
    for head in _EQ_HEAD.finditer(text or ""):
        pos, prev, dash = head.end(), None, False
        while True:
            m = _EQ_NUM.match(text, pos)
            if not m:
                break
            k, n = int(m.group(1)), int(m.group(2))
            if dash and prev is not None and prev[0] == k and prev[1] < n:
                tags += [f"{k}.{i}" for i in range(prev[1] + 1, n)]
            tags.append(f"{k}.{n}")
            prev, pos = (k, n), m.end()
            sep = _EQ_SEP.match(text, pos)
            if not sep:
                break
            dash, pos = sep.group(1) in ("–", "—", "-", "to"), sep.end()
    seen = set()
    return [t for t in tags if not (t in seen or seen.add(t))]


def _tag_key(tag: str) -> tuple:
    return tuple(int(x) for x in tag.split("."))


def citation_index(root=None) -> dict:
    """The index equation → function(s) → test file(s) of the book's appendix.

    Parameters
    ----------
    root : str or Path, optional
        The repository (with ``refimpl/``, ``notebooks/``, ``tests/``); default: the checkout
        that holds this package (an editable install).

    Returns
    -------
    dict with
        ``functions``  ``{"module.name": [tags cited by its docstring]}`` for every callable
                       in ``__all__`` of every public module (classes included);
        ``loop_twins`` the subset of ``functions`` that are loop twins ``f_loop`` of an ``f``;
        ``tags``       ``{tag: notebook file}`` for every ``\tag{k.n}`` in the chapters;
        ``tests``      ``{"module.name": [test files that use it]}``;
        ``rows``       ``[(tag, notebook, [functions], [test files])]`` sorted by tag.
    """
    if root is not None and not isinstance(root, (str, Path)) and not hasattr(root, "__fspath__"):
        raise TypeError(f"root: expected a path (str or os.PathLike) or None, got {type(root).__name__}")
    root = Path(root) if root is not None else Path(__file__).resolve().parent.parent
    nb_dir, test_dir = root / "notebooks", root / "tests"
    if not nb_dir.is_dir():
        raise ValueError(f"root: no notebooks/ in {root} (the index needs the repository, not an installed wheel)")
    tags = {}
    for nb in sorted(nb_dir.glob("[0-9][0-9]-*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        for cell in cells:
            if cell["cell_type"] != "markdown":
                continue
            for tag in re.findall(r"\\tag\{(\d+\.\d+)\}", "".join(cell["source"])):
                tags.setdefault(tag, nb.name)
    functions, twins = {}, []
    for path in sorted((root / "refimpl").glob("*.py")):
        if path.stem.startswith("_"):
            continue
        mod = importlib.import_module(f"refimpl.{path.stem}")
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if not callable(obj):
                continue
            functions[f"{path.stem}.{name}"] = cited_tags(inspect.getdoc(obj) or "")
            if name.endswith("_loop") and name[: -len("_loop")] in mod.__all__:
                twins.append(f"{path.stem}.{name}")
    texts = {p.name: p.read_text(encoding="utf-8") for p in sorted(test_dir.glob("test_*.py"))} if test_dir.is_dir() else {}
    tests = {}
    for qual in functions:
        module, name = qual.split(".", 1)
        word = re.compile(rf"\b{re.escape(name)}\b")
        own = f"test_{module}.py"
        users = [f for f, text in texts.items() if word.search(text) and (f == own or re.search(rf"\b{module}\b", text))]
        tests[qual] = sorted(users, key=lambda f: (f != own, f))
    rows = []
    for tag in sorted(tags, key=_tag_key):
        funcs = [q for q, cited in functions.items() if tag in cited]
        files = sorted({f for q in funcs for f in tests[q]})
        rows.append((tag, tags[tag], funcs, files))
    return {"functions": functions, "loop_twins": twins, "tags": tags, "tests": tests, "rows": rows}


# --------------------------------------------------------------------------------------------
# Command line: python -m refimpl vectors export|verify DIR
# --------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    """``python -m refimpl vectors export DIR`` / ``verify DIR``. Exit 0 ok, 1 problems, 2 usage."""
    parser = argparse.ArgumentParser(
        prog="python -m refimpl vectors",
        description="Export or verify refimpl's golden vectors (one .npz per case + manifest.json).",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    p_exp = sub.add_parser("export", help="write the golden vectors to DIR")
    p_exp.add_argument("directory", metavar="DIR")
    p_exp.add_argument("--only", action="append", metavar="TEXT", help="export the cases whose name contains TEXT")
    p_ver = sub.add_parser("verify", help="recompute the vectors in DIR and report differences and tampered files")
    p_ver.add_argument("directory", metavar="DIR")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.action == "export":
        names = None
        if args.only:
            names = [c.name for c in CASES if any(t in c.name for t in args.only)]
            if not names:
                print(f"refimpl vectors: no case matches --only {args.only}", file=sys.stderr)
                return 2
        try:
            manifest = export(args.directory, cases=names)
        except (ValueError, OSError) as exc:
            print(f"refimpl vectors: {exc}", file=sys.stderr)
            return 2
        total = sum(e["bytes"] for e in manifest["cases"])
        print(f"wrote {len(manifest['cases'])} cases ({total / 1024:.0f} KiB) and manifest.json to {args.directory}")
        return 0
    try:
        report = verify(args.directory)
    except ValueError as exc:
        print(f"refimpl vectors: {exc}", file=sys.stderr)
        return 2
    print(report)
    return 0 if report.ok else 1
