"""Every public function under bad input: a named refusal or a finite answer, never anything else.

The suite enumerates every callable in the ``__all__`` of every public module (a new function
without a registered valid call fails :func:`test_every_public_function_has_a_valid_call`), builds
a small valid call for each (the table ``VALID``; a ``*_loop`` twin reuses its vectorized twin's
call; ``VARIANTS`` adds further calls of one function with other options, masks, given draws or
grids), then mutates **one argument at a time** and calls again. Each mutated call must end in
one of two ways:

* a ``ValueError``/``TypeError`` whose message names the mutated argument (the project's
  convention: ``"name: expected ..., got ..."``; a consistency error naming several arguments
  counts for each of them), or
* a result whose numeric arrays are all finite, with no warning emitted.

Anything else fails: another exception type, NaN/inf in the output, a floating-point warning, an
input array modified in place, or a mutated value that must be refused (a flag given a string, an
unknown option, a bad ``rng``, non-numeric data) being accepted.

The mutations: NaN/±inf entries, wrong rank, scalars, empty and length-1 sequences, mismatched
lengths, int/bool/object/str/complex dtypes, lists, None, scaling by ±1e300 and 1e-300, negated
values, unsorted and duplicated 1-D entries (time stamps), unknown option strings, bad ``rng``.
Hypothesis draws the data of each valid call and the position of the poisoned entry; it runs
derandomized (``tests/conftest.py``), so every run draws the same cases.
"""

from __future__ import annotations

import collections
import copy
import importlib
import inspect
import re
import time
import warnings

import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

def _public_modules() -> tuple:
    """Every public module of the package (no leading underscore): a new module is fuzzed too."""
    import pkgutil

    import refimpl

    return tuple(sorted(m.name for m in pkgutil.iter_modules(refimpl.__path__) if not m.name.startswith("_")))


MODULES = _public_modules()
#: Examples (valid-call data sets) per function; each runs every mutation of every argument.
EXAMPLES = 2


def _public_functions() -> dict:
    out = {}
    for mod in MODULES:
        module = importlib.import_module(f"refimpl.{mod}")
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or not callable(obj):
                continue  # data containers and constants
            out[f"{mod}.{name}"] = obj
    from refimpl.sde import LinearSDE

    out["sde.LinearSDE.from_matrices"] = LinearSDE.from_matrices
    out["sde.LinearSDE.from_eigen"] = LinearSDE.from_eigen
    return out


FUNCTIONS = _public_functions()


# ---------------------------------------------------------------------------------------------
# valid calls: name -> builder(rng) -> {argument: value}
# ---------------------------------------------------------------------------------------------


def _spd(rng, n, floor=0.5):
    g = rng.standard_normal((n, n))
    return g @ g.T / n + floor * np.eye(n)


def _unit(rng, *shape):
    x = rng.standard_normal(shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _skew(rng, d):
    g = rng.standard_normal((d, d))
    return g - g.T


def _times(rng, n):
    return np.cumsum(rng.uniform(0.2, 0.6, n))


def _model(rng):
    from refimpl import sde

    A = np.array([[-0.4, -1.0], [1.0, -0.6]]) + 0.05 * rng.standard_normal((2, 2))
    return sde.LinearSDE.from_matrices(A, _spd(rng, 2), C=np.eye(2), R=0.25 * np.eye(2))


def _kalman(rng, N=6):
    from refimpl import kalman, sde

    model = sde.spiral_system()
    F, Q, H, R = kalman.from_sde(model, np.arange(2) * 0.3)
    z = rng.standard_normal((N, 2))
    return dict(z=z, F=F[0], H=H, Q=Q[0], R=R, m0=np.zeros(2), P0=np.eye(2))


def _stable_biquad(rng):
    r, th = rng.uniform(0.3, 0.8), rng.uniform(0.2, 2.5)
    return rng.standard_normal(3), np.array([1.0, -2 * r * np.cos(th), r * r])


def _sos(rng, n=2):
    rows = []
    for _ in range(n):
        b, a = _stable_biquad(rng)
        rows.append(np.concatenate([b, a]))
    return np.array(rows)


def _focus_params(d=3, seed=0):
    from refimpl import focus

    return focus.init_focus_params(d, kernel_len=8, hidden=4, rng=seed)


def _afa_common(rng, N=5, d=3):
    return dict(
        q=rng.standard_normal((N, d)) + 1j * rng.standard_normal((N, d)),
        k=rng.standard_normal((N, d)) + 1j * rng.standard_normal((N, d)),
        v=rng.standard_normal((N, d)) + 1j * rng.standard_normal((N, d)),
        sigma2=0.4, eta2=0.1, gamma2=0.05, nu=2.0,
    )


def _rt_noises():
    return dict(sigma2_perp=0.3, sigma2_par=0.05, eta2_perp=0.1, eta2_par=0.02, gamma2_perp=0.05, gamma2_par=0.01)


def _case_name():
    from refimpl import oracle

    return oracle.case_names("classical.lfm_pulse")[0]


_EXPORTED: list = []


def _lfm(**kw):
    from refimpl import classical

    return classical.lfm_pulse(**kw)


def _exported() -> str:
    """A directory holding one exported golden case (written once per session)."""
    if not _EXPORTED:
        from refimpl import oracle

        d = _tempdir("refimpl-bad-input-")
        oracle.export(d, cases=[_case_name()])
        _EXPORTED.append(d)
    return _EXPORTED[0]


def _small_repository() -> str:
    """A stand-in repository for ``citation_index``: one chapter, one module, one test file."""
    import json
    import pathlib

    root = pathlib.Path(_tempdir("refimpl-bad-input-repo-"))
    for sub in ("notebooks", "refimpl", "tests"):
        (root / sub).mkdir()
    cell = {"cell_type": "markdown", "metadata": {}, "source": ["$$ y = x \\tag{5.1} $$"]}
    (root / "notebooks" / "05-x.ipynb").write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4,
                                                               "nbformat_minor": 5}))
    (root / "refimpl" / "positional.py").write_text("")
    (root / "tests" / "test_positional.py").write_text("from refimpl.positional import rope\n")
    return str(root)


def _export_dir() -> str:
    return _tempdir("refimpl-bad-input-export-")


def _tempdir(prefix: str) -> str:
    """A temporary directory removed when the test process exits (builders run outside fixtures)."""
    import atexit
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    return d


VALID = {
    # sde
    "sde.spiral_system": lambda r: dict(sigma2=0.3, eta2=0.5),
    "sde.transition_matrix": lambda r: dict(model=_model(r), dt=r.uniform(0, 1, 4)),
    "sde.discretize": lambda r: dict(model=_model(r), t=_times(r, 5)),
    "sde.moments": lambda r: dict(model=_model(r), t=_times(r, 5), m0=r.standard_normal(2), P0=_spd(r, 2)),
    "sde.sample": lambda r: dict(model=_model(r), t=_times(r, 5), x0=r.standard_normal(2), size=2, rng=3),
    "sde.euler_maruyama": lambda r: dict(model=_model(r), t=_times(r, 5), x0=r.standard_normal(2), n_substeps=2,
                                         size=None, rng=4),
    "sde.LinearSDE.from_matrices": lambda r: dict(A=np.array([[-0.5, -1.0], [1.0, -0.7]]), Q=_spd(r, 2), C=np.eye(2),
                                                  R=0.3 * np.eye(2)),
    "sde.LinearSDE.from_eigen": lambda r: dict(eigvals=np.array([-0.3 + 1j, -0.3 - 1j]),
                                               S=np.array([[1, 1], [1j, -1j]]) / np.sqrt(2),
                                               process_noise=np.array([0.4, 0.4]), measurement_noise=0.2 * np.eye(2),
                                               C=np.eye(2)),
    # lyapunov
    "lyapunov.phi1": lambda r: dict(z=-r.uniform(0.1, 2, 4) + 1j * r.standard_normal(4), tau=r.uniform(0, 2, 4)),
    "lyapunov.dle_covariance": lambda r: dict(eigvals=-r.uniform(0.1, 1, 3) + 1j * r.standard_normal(3),
                                              noise=r.uniform(0.1, 1, 3), tau=r.uniform(0, 2, 4)),
    "lyapunov.dle_covariance_backward": lambda r: dict(eigvals=-r.uniform(0.1, 1, 3) + 1j * r.standard_normal(3),
                                                       noise=r.uniform(0.1, 1, 3), tau=r.uniform(0, 2, 4)),
    "lyapunov.steady_state_covariance": lambda r: dict(eigvals=-r.uniform(0.1, 1, 3) + 1j * r.standard_normal(3),
                                                       noise=r.uniform(0.1, 1, 3)),
    "lyapunov.isotropic_covariance": lambda r: dict(dt=r.uniform(-2, 2, 7), mu=0.3, sigma2=0.5, eta2=0.1, gamma2=0.05),
    # kalman
    "kalman.kalman_filter": lambda r: _kalman(r),
    "kalman.kalman_filter_scan": lambda r: _kalman(r),
    "kalman.rts_smoother": lambda r: _kalman(r),
    "kalman.rts_smoother_scan": lambda r: _kalman(r),
    "kalman.batch_smoother": lambda r: _kalman(r),
    "kalman.kalman_weight_matrix": lambda r: {**{k: v for k, v in _kalman(r).items() if k != "z"}, "n_steps": 5,
                                              "kind": "smoother", "missing": None, "return_offset": True},
    "kalman.from_sde": lambda r: dict(model=_model(r), t=_times(r, 4)),
    "kalman.steady_state": lambda r: {k: v for k, v in _kalman(r).items() if k in ("F", "H", "Q", "R")},
    # attention
    "attention.softmax_attention": lambda r: dict(q=r.standard_normal((5, 3)), k=r.standard_normal((5, 3)),
                                                  v=r.standard_normal((5, 2)), mask=None, causal=True, scale=None,
                                                  return_weights=True),
    "attention.attention_weights": lambda r: dict(q=r.standard_normal((5, 3)), k=r.standard_normal((5, 3)),
                                                  causal=False, scale=0.5),
    "attention.multihead_attention": lambda r: dict(x=r.standard_normal((5, 4)), w_q=r.standard_normal((4, 4)),
                                                    w_k=r.standard_normal((4, 4)), w_v=r.standard_normal((4, 4)),
                                                    w_o=r.standard_normal((4, 4)), n_heads=2, causal=True,
                                                    return_weights=True),
    "attention.attention_entropy": lambda r: dict(weights=np.full((4, 4), 0.25)),
    "attention.effective_support": lambda r: dict(weights=np.full((4, 4), 0.25)),
    "attention.materialize": lambda r: dict(mixer=lambda v: np.cumsum(v, axis=0), n=4, check_linear=True),
    "attention.lag_profile": lambda r: dict(W=r.standard_normal((5, 5))),
    "attention.frequency_response": lambda r: dict(W=r.standard_normal((5, 5)), omega=np.linspace(0, 3, 6)),
    # positional
    "positional.frequencies": lambda r: dict(d_model=8, base=10000.0),
    "positional.sinusoidal_encoding": lambda r: dict(n_positions=6, d_model=4, base=100.0),
    "positional.relative_shift_matrix": lambda r: dict(k=3.0, d_model=4, base=100.0),
    "positional.rope": lambda r: dict(x=r.standard_normal((5, 4)), positions=np.arange(5.0), base=100.0),
    "positional.rope_complex": lambda r: dict(x=r.standard_normal((5, 4)), positions=np.arange(5.0), base=100.0,
                                              as_complex=True),
    "positional.rope_decay_bound": lambda r: dict(distances=np.arange(1.0, 6.0), d=16, base=100.0),
    # classical
    "classical.lfm_pulse": lambda r: dict(n_samples=16, bandwidth=0.4),
    "classical.matched_filter": lambda r: dict(received=r.standard_normal(20), template=r.standard_normal(5),
                                               normalize=True),
    "classical.autocorrelation": lambda r: dict(x=r.standard_normal(30), n_lags=4),
    "classical.cross_correlation": lambda r: dict(d=r.standard_normal(30), u=r.standard_normal(30), n_lags=4),
    "classical.wiener_hopf": lambda r: dict(r=0.6 ** np.arange(4), p=r.standard_normal(4)),
    "classical.ar1_psd": lambda r: dict(a=0.8, q=0.5, n_fft=16),
    "classical.wiener_smoother_response": lambda r: dict(psd_signal=r.uniform(0.5, 2, 8), psd_noise=r.uniform(0.1, 1, 8)),
    "classical.wiener_smoother_weights": lambda r: dict(psd_signal=r.uniform(0.5, 2, 8), psd_noise=r.uniform(0.1, 1, 8)),
    "classical.lms": lambda r: dict(u=r.standard_normal(20), d=r.standard_normal(20), n_taps=3, mu=0.05, w0=None),
    "classical.rls": lambda r: dict(u=r.standard_normal(20), d=r.standard_normal(20), n_taps=3, lam=0.98, delta=0.1,
                                    w0=None),
    "classical.steering_vector": lambda r: dict(theta=r.uniform(-1, 1, 3), n_sensors=4, spacing=0.5),
    "classical.das_weights": lambda r: dict(theta0=0.3, n_sensors=4, spacing=0.5),
    "classical.mvdr_weights": lambda r: dict(R=_spd(r, 4), steering=np.exp(1j * 0.7 * np.arange(4)), loading=0.01),
    "classical.beampattern": lambda r: dict(w=np.ones(4) / 4, theta=np.linspace(-1, 1, 7), spacing=0.5),
    "classical.dirichlet_beampattern": lambda r: dict(theta=np.linspace(-1, 1, 5), theta0=0.2, n_sensors=4,
                                                      spacing=0.5),
    "classical.sample_covariance": lambda r: dict(x=r.standard_normal((10, 3))),
    "classical.beamform": lambda r: dict(x=r.standard_normal((6, 4)), w=np.ones(4) / 4),
    "classical.bartlett_spectrum": lambda r: dict(R=_spd(r, 4), theta=np.linspace(-1, 1, 5), spacing=0.5),
    "classical.capon_spectrum": lambda r: dict(R=_spd(r, 4), theta=np.linspace(-1, 1, 5), spacing=0.5, loading=0.0),
    # afa
    "afa.afa": lambda r: {**_afa_common(r), "eigvals": -r.uniform(0.1, 0.5, 3) + 1j * r.standard_normal(3),
                          "t": _times(r, 5), "weight": "student", "causal": True, "return_weights": True},
    "afa.isotropic_afa": lambda r: {**_afa_common(r), "mu": 0.3, "omega": r.standard_normal(3), "t": _times(r, 5),
                                    "causal": False, "return_weights": True},
    "afa.afa_irls": lambda r: {**{k: v for k, v in _afa_common(r).items() if k not in "qkv"},
                               "z": r.standard_normal((5, 3)) + 1j * r.standard_normal((5, 3)),
                               "eigvals": -r.uniform(0.1, 0.5, 3) + 1j * r.standard_normal(3), "n_iter": 2,
                               "step": 0.7},
    # rt_sde
    "rt_sde.rt_transition": lambda r: dict(mu=0.2, omega=_skew(r, 3), s=r.uniform(0, 2, 3)),
    "rt_sde.rt_direction": lambda r: dict(omega=_skew(r, 3), u0=_unit(r, 3), s=r.uniform(0, 2, 3)),
    "rt_sde.rt_noise_rate": lambda r: dict(omega=_skew(r, 3), u0=_unit(r, 3), s=r.uniform(0, 2, 3), sigma2_perp=0.3,
                                           sigma2_par=0.05),
    "rt_sde.rt_covariance": lambda r: dict(mu=0.3, omega=_skew(r, 3), u0=_unit(r, 3), tau=r.uniform(0, 2, 3),
                                           **_rt_noises()),
    "rt_sde.rt_variances": lambda r: dict(mu=0.3, tau=r.uniform(0, 2, 4), **_rt_noises()),
    "rt_sde.rt_precision": lambda r: dict(u=_unit(r, 3, 4), a_perp=r.uniform(0.5, 1, 3), a_par=r.uniform(0.1, 0.5, 3)),
    "rt_sde.rt_distance": lambda r: dict(r=r.standard_normal((4, 3)), u=_unit(r, 4, 3), a_perp=0.7, a_par=0.05),
    "rt_sde.rt_logdet_precision": lambda r: dict(a_perp=r.uniform(0.5, 1, 3), a_par=r.uniform(0.1, 0.5, 3), d=4),
    "rt_sde.sphere_residuals": lambda r: dict(q=_unit(r, 4, 3), k=_unit(r, 4, 3)),
    "rt_sde.rt_attention": lambda r: dict(q=r.standard_normal((5, 3)), k=r.standard_normal((5, 3)),
                                          v=r.standard_normal((5, 3)), mu=0.2, omega=_skew(r, 3), **_rt_noises(),
                                          nu=2.0, t=_times(r, 5), return_weights=True),
    "rt_sde.rt_step": lambda r: dict(z=_unit(r, 5, 3), alpha=0.5, mu=0.1, omega=_skew(r, 3), **_rt_noises(), nu=2.0),
    # mixing
    "mixing.fnet": lambda r: dict(x=r.standard_normal((6, 3))),
    "mixing.fnet_matrix": lambda r: dict(N=5, d=3),
    "mixing.spatial_gating_unit": lambda r: dict(x=r.standard_normal((5, 4)), w=r.standard_normal((5, 5)),
                                                 b=r.standard_normal(5), causal=True),
    "mixing.fft_conv": lambda r: dict(u=r.standard_normal((8, 2)), h=r.standard_normal((4, 2))),
    "mixing.causal_toeplitz": lambda r: dict(h=r.standard_normal((4, 2)), N=6),
    "mixing.hyena_filter": lambda r: dict(L=8, d=2, n_filters=2, emb_dim=3, width=4, depth=2, rng=5),
    "mixing.hyena_recurrence": lambda r: dict(v=r.standard_normal((8, 2)), x=r.standard_normal((2, 8, 2)),
                                              filters=r.standard_normal((2, 8, 2)), skip=r.standard_normal((2, 2))),
    "mixing.hyena_operator": lambda r: dict(u=r.standard_normal((8, 2)), w_in=r.standard_normal((2, 6)),
                                            filters=r.standard_normal((2, 8, 2)), b_in=r.standard_normal(6),
                                            skip=r.standard_normal((2, 2)), return_projections=True),
    "mixing.hyena_matrix": lambda r: dict(x=r.standard_normal((2, 6, 2)), filters=r.standard_normal((2, 6, 2)),
                                          skip=r.standard_normal((2, 2))),
    # ssm
    "ssm.hippo_legs": lambda r: dict(N=4),
    "ssm.hippo_legs_dplr": lambda r: dict(N=4),
    "ssm.hippo_legs_online": lambda r: dict(u=r.standard_normal((20, 1)), N=3),
    "ssm.legs_reconstruct": lambda r: dict(c=r.standard_normal((2, 4)), x=np.linspace(0, 1, 9)),
    "ssm.discretize": lambda r: dict(A=-_spd(r, 3), B=r.standard_normal(3), step=0.1, method="bilinear",
                                     diagonal=False),
    "ssm.ssm_kernel": lambda r: dict(Ab=0.5 * np.eye(3) + 0.1 * r.standard_normal((3, 3)), Bb=r.standard_normal(3),
                                     C=r.standard_normal(3), L=8, diagonal=False),
    "ssm.s4d_kernel": lambda r: dict(A=-0.5 + 1j * np.pi * np.arange(3), B=np.ones(3), C=r.standard_normal((2, 3)),
                                     step=np.array([0.1, 0.05]), L=8, method="zoh", conj_pairs=True),
    "ssm.s4_kernel_dplr": lambda r: dict(Lambda=-0.5 + 1j * np.arange(4.0), P=0.3 * r.standard_normal(4),
                                         Q=0.3 * r.standard_normal(4), B=r.standard_normal(4), C=r.standard_normal(4),
                                         step=0.1, L=8),
    "ssm.ssm_recurrent": lambda r: dict(u=r.standard_normal((10, 2)), Ab=r.uniform(0.2, 0.8, (2, 3)),
                                        Bb=r.standard_normal((2, 3)), C=r.standard_normal((2, 3)),
                                        D=r.standard_normal(2), diagonal=True),
    "ssm.ssm_convolution": lambda r: dict(u=r.standard_normal((10, 2)), Ab=0.5 * np.eye(3), Bb=r.standard_normal(3),
                                          C=r.standard_normal(3), D=r.standard_normal(2), diagonal=False),
    "ssm.selective_scan": lambda r: dict(u=r.standard_normal((6, 2)), delta=r.uniform(0.05, 0.5, (6, 2)),
                                         A=-r.uniform(0.2, 1, (2, 3)), B=r.standard_normal((6, 3)),
                                         C=r.standard_normal((6, 3)), D=r.standard_normal(2),
                                         discretization="mamba", return_last_state=True),
    "ssm.selective_scan_fn": lambda r: dict(u=r.standard_normal((2, 4, 5)), delta=r.standard_normal((2, 4, 5)),
                                            A=-r.uniform(0.2, 1, (4, 3)), B=r.standard_normal((2, 2, 3, 5)),
                                            C=r.standard_normal((2, 3, 5)), D=r.standard_normal(4),
                                            z=r.standard_normal((2, 4, 5)), delta_bias=r.standard_normal(4),
                                            delta_softplus=True, return_last_state=True),
    "ssm.selective_scan_fn_vjp": lambda r: dict(u=r.standard_normal((2, 4, 5)), delta=r.standard_normal((2, 4, 5)),
                                                A=-r.uniform(0.2, 1, (4, 3)), B=r.standard_normal((2, 2, 3, 5)),
                                                C=r.standard_normal((4, 3)), dout=r.standard_normal((2, 4, 5)),
                                                D=r.standard_normal(4), z=r.standard_normal((2, 4, 5)),
                                                delta_bias=r.standard_normal(4), delta_softplus=True),
    "ssm.selective_state_update": lambda r: dict(state=r.standard_normal((3, 4, 3, 5)), x=r.standard_normal((2, 4, 3)),
                                                 dt=r.standard_normal((2, 4, 3)), A=-r.uniform(0.2, 1, (4, 3, 5)),
                                                 B=r.standard_normal((2, 2, 5)), C=r.standard_normal((2, 2, 5)),
                                                 D=r.standard_normal((4, 3)), z=r.standard_normal((2, 4, 3)),
                                                 dt_bias=r.standard_normal((4, 3)), dt_softplus=True,
                                                 state_batch_indices=np.array([2, 0])),
    "ssm.semiseparable_matrix": lambda r: dict(delta=r.uniform(0.05, 0.5, (6, 2)), A=-r.uniform(0.2, 1, (2, 3)),
                                               B=r.standard_normal((6, 3)), C=r.standard_normal((6, 3)),
                                               D=r.standard_normal(2), discretization="zoh"),
    # random_features
    "random_features.elu_plus_one": lambda r: dict(x=r.standard_normal(6)),
    "random_features.linear_attention": lambda r: dict(q=r.standard_normal((6, 3)), k=r.standard_normal((6, 3)),
                                                       v=r.standard_normal((6, 2)), causal=True),
    "random_features.favor_features": lambda r: dict(x=r.standard_normal((5, 3)), projection=r.standard_normal((8, 3)),
                                                     kind="positive", stabilize=True),
    "random_features.orthogonal_gaussian": lambda r: dict(m=6, d=3, rng=5, scaling="chi"),
    "random_features.performer_attention": lambda r: dict(q=r.standard_normal((6, 3)), k=r.standard_normal((6, 3)),
                                                          v=r.standard_normal((6, 2)), n_features=8, rng=None,
                                                          causal=True, projection=r.standard_normal((8, 3))),
    "random_features.performer_attention_quadratic": lambda r: dict(
        q=r.standard_normal((6, 3)), k=r.standard_normal((6, 3)), v=r.standard_normal((6, 2)), n_features=8, rng=2,
        causal=False, orthogonal=True),
    "random_features.rff_features": lambda r: dict(x=r.standard_normal((4, 3)), projection=r.standard_normal((5, 3))),
    "random_features.rfa_attention": lambda r: dict(q=r.standard_normal((6, 3)), k=r.standard_normal((6, 3)),
                                                    v=r.standard_normal((6, 2)), n_features=8, sigma=1.5, rng=7,
                                                    gated=True, gates=r.uniform(0.1, 0.9, 6), causal=True),
    "random_features.lsh_hash": lambda r: dict(x=r.standard_normal((8, 3)), n_buckets=4, rng=None, n_rounds=2,
                                               rotations=r.standard_normal((2, 3, 2))),
    "random_features.lsh_attention": lambda r: dict(qk=r.standard_normal((8, 3)), v=r.standard_normal((8, 2)),
                                                    n_buckets=4, n_rounds=2, chunk_size=4, rng=3, causal=False),
    "random_features.reversible_forward": lambda r: dict(x1=r.standard_normal((4, 3)), x2=r.standard_normal((4, 3)),
                                                         f=np.tanh, g=np.sin),
    "random_features.reversible_inverse": lambda r: dict(y1=r.standard_normal((4, 3)), y2=r.standard_normal((4, 3)),
                                                         f=np.tanh, g=np.sin),
    # iir
    "iir.tf_filter": lambda r: dict(b=_stable_biquad(r)[0], a=_stable_biquad(r)[1], x=r.standard_normal(12),
                                    zi=r.standard_normal(2)),
    "iir.biquad_filter": lambda r: dict(b=_stable_biquad(r)[0], a=_stable_biquad(r)[1], x=r.standard_normal(12),
                                        zi=None, form="df1", require_stable=True),
    "iir.sos_filter": lambda r: dict(sos=_sos(r), x=r.standard_normal(12), zi=None, form="tdf2", require_stable=True),
    "iir.impulse_response": lambda r: dict(b=_stable_biquad(r)[0], a=_stable_biquad(r)[1], n=10),
    "iir.biquad_impulse_closed_form": lambda r: dict(b=_stable_biquad(r)[0], a=_stable_biquad(r)[1], n=10),
    "iir.frequency_response": lambda r: dict(b=_stable_biquad(r)[0], a=_stable_biquad(r)[1],
                                             w=np.linspace(0, 3, 7), whole=False),
    "iir.sos_frequency_response": lambda r: dict(sos=_sos(r), w=16, whole=True),
    "iir.group_delay": lambda r: dict(b=_stable_biquad(r)[0], a=_stable_biquad(r)[1], w=np.linspace(0.1, 3, 7),
                                      whole=False),
    "iir.analog_frequency_response": lambda r: dict(b=np.array([1.0]), a=np.array([1.0, 1.4, 1.0]),
                                                    w=np.linspace(0, 3, 7)),
    "iir.tf2zpk": lambda r: dict(b=_stable_biquad(r)[0], a=_stable_biquad(r)[1]),
    "iir.zpk2tf": lambda r: dict(z=np.array([-1.0, 0.5]), p=np.array([0.3 + 0.4j, 0.3 - 0.4j, 0.2]), k=0.5),
    "iir.zpk2sos": lambda r: dict(z=np.array([-1.0, 0.5]), p=np.array([0.3 + 0.4j, 0.3 - 0.4j, 0.2]), k=0.5),
    "iir.sos2zpk": lambda r: dict(sos=_sos(r)),
    "iir.sos2tf": lambda r: dict(sos=_sos(r)),
    "iir.tf2sos": lambda r: dict(b=_stable_biquad(r)[0], a=_stable_biquad(r)[1]),
    "iir.biquad_poles": lambda r: dict(a=np.stack([_stable_biquad(r)[1] for _ in range(3)])),
    "iir.in_stability_triangle": lambda r: dict(a=np.stack([_stable_biquad(r)[1] for _ in range(3)])),
    "iir.pole_radius": lambda r: dict(a=_stable_biquad(r)[1]),
    "iir.is_stable": lambda r: dict(a=_stable_biquad(r)[1]),
    "iir.buttap": lambda r: dict(order=3),
    "iir.cheb1ap": lambda r: dict(order=3, rp=1.0),
    "iir.lp2lp_zpk": lambda r: dict(z=np.array([]), p=np.array([-0.5 + 0.8j, -0.5 - 0.8j, -1.0]), k=1.0, wo=2.0),
    "iir.lp2hp_zpk": lambda r: dict(z=np.array([]), p=np.array([-0.5 + 0.8j, -0.5 - 0.8j, -1.0]), k=1.0, wo=2.0),
    "iir.lp2bp_zpk": lambda r: dict(z=np.array([]), p=np.array([-0.5 + 0.8j, -0.5 - 0.8j, -1.0]), k=1.0, wo=2.0,
                                    bw=0.5),
    "iir.lp2bs_zpk": lambda r: dict(z=np.array([]), p=np.array([-0.5 + 0.8j, -0.5 - 0.8j, -1.0]), k=1.0, wo=2.0,
                                    bw=0.5),
    "iir.impulse_invariance_zpk": lambda r: dict(z=np.array([-3.0]), p=np.array([-0.5 + 0.8j, -0.5 - 0.8j, -1.0]),
                                                 k=1.0, fs=10.0),
    "iir.prewarp": lambda r: dict(f=np.array([10.0, 100.0]), fs=1000.0),
    "iir.bilinear_zpk": lambda r: dict(z=np.array([]), p=np.array([-0.5 + 0.8j, -0.5 - 0.8j, -1.0]), k=1.0, fs=10.0),
    "iir.bilinear": lambda r: dict(b=np.array([1.0]), a=np.array([1.0, 1.4, 1.0]), fs=10.0),
    "iir.impulse_invariance": lambda r: dict(b=np.array([1.0]), a=np.array([1.0, 1.4, 1.0]), fs=10.0),
    "iir.matched_z": lambda r: dict(z=np.array([]), p=np.array([-0.5 + 0.8j, -0.5 - 0.8j, -1.0]), k=1.0, fs=10.0,
                                    gain_at=0.0),
    "iir.butter": lambda r: dict(order=3, wn=0.3, btype="lowpass", fs=2.0, output="sos"),
    "iir.cheby1": lambda r: dict(order=3, rp=1.0, wn=0.3, btype="highpass", fs=2.0, output="ba"),
    "iir.scalar_ssm_to_iir": lambda r: dict(A=0.9, B=0.5, C=2.0, D=0.1),
    "iir.biquad_to_ssm": lambda r: dict(b=_stable_biquad(r)[0], a=_stable_biquad(r)[1]),
    "iir.ssm_to_biquad": lambda r: dict(lam=np.array([0.5 + 0.3j, 0.5 - 0.3j]), B=np.array([1.0, 1.0]),
                                        C=np.array([0.3 + 0.1j, 0.3 - 0.1j]), D=0.2),
    "iir.diagonal_ssm_filter": lambda r: dict(lam=np.array([0.5 + 0.3j, 0.5 - 0.3j, 0.7]), B=np.ones(3),
                                              C=np.array([0.3 + 0.1j, 0.3 - 0.1j, 0.5]), D=0.3,
                                              x=r.standard_normal(12), scan="chunked"),
    # focus
    "focus.focus_frequency_response": lambda r: dict(theta=np.array([[0.5, 0.2], [0.3, 0.6]]), n_fft=8),
    "focus.periodized_impulse_response": lambda r: dict(theta=np.array([[0.5, 0.2], [0.3, 0.6]]), n=8),
    "focus.adaptive_filter": lambda r: dict(x=r.standard_normal((12, 2)), theta=r.uniform(0.1, 0.6, (3, 2, 1, 2)),
                                            variant="causal-recursive", n_fft=None),
    "focus.continuous_exponents": lambda r: dict(theta=r.uniform(0.1, 0.6, (3, 2))),
    "focus.continuous_impulse_response": lambda r: dict(theta=np.array([0.5, 0.2]), t=np.linspace(0, 3, 7)),
    "focus.global_conv": lambda r: dict(x=r.standard_normal((10, 2)), kernel=r.standard_normal((4, 2)),
                                        skip=r.standard_normal(2), squash=0.0),
    "focus.adaptive_max_pool": lambda r: dict(g=r.standard_normal((10, 2)), n_out=3),
    "focus.hypernetwork": lambda r: dict(x=r.standard_normal((16, 3)), params=_focus_params(), n_bins=2,
                                         first_bin="zero", shift=True),
    "focus.chunked_attention": lambda r: dict(x=r.standard_normal((8, 3)), x_f=r.standard_normal((8, 3)),
                                              w_q=r.standard_normal((3, 3)), w_k=r.standard_normal((3, 3)),
                                              w_v=r.standard_normal((3, 3)), chunk_size=4, scale=None),
    "focus.gated_residual": lambda r: dict(x=r.standard_normal((6, 3)), x_f=r.standard_normal((6, 3)),
                                           y=r.standard_normal((6, 3)), w_gamma=r.standard_normal((3, 3)),
                                           b_gamma=r.standard_normal(3), w_phi=r.standard_normal((3, 3)),
                                           b_phi=r.standard_normal(3), w_h=r.standard_normal((3, 3)),
                                           u_h=r.standard_normal((3, 3)), b_h=r.standard_normal(3)),
    "focus.init_focus_params": lambda r: dict(d=3, n_bank=1, oversample=2, hidden=4, kernel_len=8, d_head=None, rng=1),
    "focus.focus_layer": lambda r: dict(x=r.standard_normal((16, 3)), params=_focus_params(),
                                        variant="causal-recursive", chunk_size=4, n_bins=2, first_bin="zero",
                                        return_intermediates=True),
    "focus.focus_op_counts": lambda r: dict(L=64, d=4, n_bins=4, chunk_size=8, n_bank=1),
    "focus.mega_ema_kernel": lambda r: dict(alpha=r.uniform(0.1, 0.9, (2, 2)), delta=r.uniform(0.1, 0.9, (2, 2)),
                                            beta=r.standard_normal((2, 2)), eta=r.standard_normal((2, 2)), n=8),
    "focus.mega_ema": lambda r: dict(x=r.standard_normal((8, 2)), alpha=r.uniform(0.1, 0.9, (2, 2)),
                                     delta=r.uniform(0.1, 0.9, (2, 2)), beta=r.standard_normal((2, 2)),
                                     eta=r.standard_normal((2, 2))),
    # attention: blocked exact attention, gradients, ALiBi
    "attention.flash_attention": lambda r: dict(q=r.standard_normal((5, 3)), k=r.standard_normal((6, 3)),
                                                v=r.standard_normal((6, 2)), causal=False, scale=None, block_q=2,
                                                block_k=4, return_lse=True),
    "attention.softmax_attention_vjp": lambda r: dict(q=r.standard_normal((4, 3)), k=r.standard_normal((4, 3)),
                                                      v=r.standard_normal((4, 2)), dy=r.standard_normal((4, 2)),
                                                      causal=True),
    "attention.alibi_geometric_slopes": lambda r: dict(n_heads=4),
    "random_features.linear_attention_vjp": lambda r: dict(q=r.standard_normal((5, 3)), k=r.standard_normal((5, 3)),
                                                           v=r.standard_normal((5, 2)), dy=r.standard_normal((5, 2)),
                                                           causal=True),
    "ssm.selective_scan_vjp": lambda r: dict(u=r.standard_normal((5, 2)), delta=r.uniform(0.05, 0.5, (5, 2)),
                                             A=-r.uniform(0.2, 1, (2, 3)), B=r.standard_normal((5, 3)),
                                             C=r.standard_normal((5, 3)), D=r.standard_normal(2),
                                             dy=r.standard_normal((5, 2)), discretization="mamba"),
    # linear_rnn
    "linear_rnn.segsum": lambda r: dict(a=-r.uniform(0, 1, 5)),
    "linear_rnn.ssd": lambda r: dict(x=r.standard_normal((2, 5, 3)), dt=r.uniform(0.1, 1.0, (2, 5)),
                                     A=np.array([-1.0, -0.5]), B=r.standard_normal((1, 5, 4)),
                                     C=r.standard_normal((1, 5, 4)), D=np.array([1.0, 0.5]), chunk_size=2),
    "linear_rnn.ssd_quadratic": lambda r: dict(x=r.standard_normal((2, 5, 3)), dt=r.uniform(0.1, 1.0, (2, 5)),
                                               A=np.array([-1.0, -0.5]), B=r.standard_normal((1, 5, 4)),
                                               C=r.standard_normal((1, 5, 4)), D=np.array([1.0, 0.5]),
                                               return_matrix=True),
    "linear_rnn.gated_linear_attention": lambda r: dict(q=r.standard_normal((6, 3)), k=r.standard_normal((6, 3)),
                                                        v=r.standard_normal((6, 2)),
                                                        log_g=np.log(r.uniform(0.5, 1.0, (6, 3))), chunk_size=4,
                                                        return_chunk_states=True),
    "linear_rnn.gated_linear_attention_parallel": lambda r: dict(q=r.standard_normal((6, 3)),
                                                                 k=r.standard_normal((6, 3)),
                                                                 v=r.standard_normal((6, 2)),
                                                                 log_g=np.log(r.uniform(0.5, 1.0, 6)), scale=0.5),
    "linear_rnn.retention": lambda r: dict(q=r.standard_normal((2, 5, 3)), k=r.standard_normal((2, 5, 3)),
                                           v=r.standard_normal((2, 5, 2)), gamma=np.array([0.9, 0.5]), chunk_size=2),
    "linear_rnn.retention_parallel": lambda r: dict(q=r.standard_normal((2, 5, 3)), k=r.standard_normal((2, 5, 3)),
                                                    v=r.standard_normal((2, 5, 2)), gamma=np.array([0.9, 0.5])),
    "linear_rnn.delta_rule": lambda r: dict(q=r.standard_normal((6, 3)), k=_unit(r, 6, 3),
                                            v=r.standard_normal((6, 2)), beta=r.uniform(0.1, 0.9, 6),
                                            log_g=np.log(r.uniform(0.5, 1.0, 6)), chunk_size=4,
                                            return_chunk_states=True),
    "linear_rnn.rls_memory": lambda r: dict(q=r.standard_normal((6, 3)), k=r.standard_normal((6, 3)),
                                            v=r.standard_normal((6, 2)), lam=0.95, delta=0.1),
    "linear_rnn.ssd_vjp": lambda r: dict(x=r.standard_normal((2, 5, 3)), dt=r.uniform(0.1, 1.0, (2, 5)),
                                         A=np.array([-1.0, -0.5]), B=r.standard_normal((1, 5, 4)),
                                         C=r.standard_normal((1, 5, 4)), D=np.array([1.0, 0.5]),
                                         dy=r.standard_normal((2, 5, 3)), chunk_size=2),
    "linear_rnn.gated_linear_attention_vjp": lambda r: dict(q=r.standard_normal((6, 3)), k=r.standard_normal((6, 3)),
                                                            v=r.standard_normal((6, 2)),
                                                            log_g=np.log(r.uniform(0.5, 1.0, (6, 3))),
                                                            dy=r.standard_normal((6, 2)), scale=0.5, chunk_size=4),
    "linear_rnn.retention_vjp": lambda r: dict(q=r.standard_normal((2, 5, 3)), k=r.standard_normal((2, 5, 3)),
                                               v=r.standard_normal((2, 5, 2)), gamma=np.array([0.9, 0.5]),
                                               dy=r.standard_normal((2, 5, 2)), scale=0.5, chunk_size=2),
    "linear_rnn.delta_rule_vjp": lambda r: dict(q=r.standard_normal((6, 3)), k=_unit(r, 6, 3),
                                                v=r.standard_normal((6, 2)), beta=r.uniform(0.1, 0.9, 6),
                                                dy=r.standard_normal((6, 2)), log_g=np.log(r.uniform(0.5, 1.0, 6)),
                                                scale=0.5, chunk_size=4),
    "linear_rnn.mamba_chunk_scan_combined": lambda r: dict(
        x=r.standard_normal((1, 5, 2, 3)), dt=r.standard_normal((1, 5, 2)), A=np.array([-1.0, -0.5]),
        B=r.standard_normal((1, 5, 1, 4)), C=r.standard_normal((1, 5, 1, 4)), chunk_size=2, D=r.standard_normal((2, 3)),
        z=r.standard_normal((1, 5, 2, 3)), dt_bias=r.standard_normal(2), initial_states=r.standard_normal((1, 2, 3, 4)),
        dt_softplus=True, dt_limit=(0.001, 10.0), return_final_states=True),
    "linear_rnn.mamba_chunk_scan_combined_vjp": lambda r: dict(
        x=r.standard_normal((1, 5, 2, 3)), dt=r.standard_normal((1, 5, 2)), A=np.array([-1.0, -0.5]),
        B=r.standard_normal((1, 5, 1, 4)), C=r.standard_normal((1, 5, 1, 4)), dout=r.standard_normal((1, 5, 2, 3)),
        chunk_size=2, D=r.standard_normal(2), z=r.standard_normal((1, 5, 2, 3)), dt_bias=r.standard_normal(2),
        initial_states=r.standard_normal((1, 2, 3, 4)), dt_softplus=True, dt_limit=(0.001, 10.0),
        dfinal_states=r.standard_normal((1, 2, 3, 4))),
    "attention.flash_attn_func": lambda r: dict(q=r.standard_normal((1, 5, 2, 3)), k=r.standard_normal((1, 6, 1, 3)),
                                                v=r.standard_normal((1, 6, 1, 2)), dropout_p=0.0, softmax_scale=0.5,
                                                causal=True, window_size=(3, -1), softcap=5.0,
                                                alibi_slopes=np.array([0.5, 0.25]), deterministic=False,
                                                return_attn_probs=True),
    "attention.flash_attn_func_vjp": lambda r: dict(q=r.standard_normal((1, 5, 2, 3)), k=r.standard_normal((1, 6, 1, 3)),
                                                    v=r.standard_normal((1, 6, 1, 2)), dout=r.standard_normal((1, 5, 2, 2)),
                                                    dropout_p=0.0, softmax_scale=0.5, causal=True, window_size=(3, -1),
                                                    softcap=5.0, alibi_slopes=np.array([0.5, 0.25]), deterministic=False),
    "attention.flash_attn_varlen_func": lambda r: dict(
        q=r.standard_normal((7, 2, 3)), k=r.standard_normal((8, 1, 3)), v=r.standard_normal((8, 1, 2)),
        cu_seqlens_q=np.array([0, 3, 7]), cu_seqlens_k=np.array([0, 4, 8]), max_seqlen_q=4, max_seqlen_k=4, dropout_p=0.0,
        softmax_scale=0.5, causal=True, window_size=(3, -1), softcap=5.0, alibi_slopes=np.array([0.5, 0.25]),
        deterministic=False, return_attn_probs=True),
    "attention.flash_attn_varlen_func_vjp": lambda r: dict(
        q=r.standard_normal((7, 2, 3)), k=r.standard_normal((8, 1, 3)), v=r.standard_normal((8, 1, 2)),
        dout=r.standard_normal((7, 2, 2)), cu_seqlens_q=np.array([0, 3, 7]), cu_seqlens_k=np.array([0, 4, 8]),
        max_seqlen_q=4, max_seqlen_k=4, dropout_p=0.0, softmax_scale=0.5, causal=True, window_size=(3, -1), softcap=5.0,
        alibi_slopes=np.array([0.5, 0.25]), deterministic=False),
    "linear_rnn.chunk_gla": lambda r: dict(q=r.standard_normal((1, 6, 2, 3)), k=r.standard_normal((1, 6, 2, 3)),
                                           v=r.standard_normal((1, 6, 2, 2)), g=np.log(r.uniform(0.5, 1.0, (1, 6, 2, 3))),
                                           scale=0.5, initial_state=r.standard_normal((1, 2, 3, 2)),
                                           output_final_state=True),
    "linear_rnn.chunk_simple_gla": lambda r: dict(q=r.standard_normal((1, 6, 2, 3)), k=r.standard_normal((1, 6, 2, 3)),
                                                  v=r.standard_normal((1, 6, 2, 2)),
                                                  g=np.log(r.uniform(0.5, 1.0, (1, 6, 2))), scale=0.5,
                                                  initial_state=r.standard_normal((1, 2, 3, 2)), output_final_state=True),
    "linear_rnn.chunk_delta_rule": lambda r: dict(q=r.standard_normal((1, 6, 2, 3)), k=_unit(r, 1, 6, 2, 3),
                                                  v=r.standard_normal((1, 6, 2, 2)), beta=r.uniform(0.1, 0.9, (1, 6, 2)),
                                                  scale=0.5, initial_state=r.standard_normal((1, 2, 3, 2)),
                                                  output_final_state=True, use_qk_l2norm_in_kernel=False),
    "linear_rnn.chunk_gated_delta_rule": lambda r: dict(q=r.standard_normal((1, 6, 2, 3)), k=r.standard_normal((1, 6, 2, 3)),
                                                        v=r.standard_normal((1, 6, 2, 2)),
                                                        g=np.log(r.uniform(0.5, 1.0, (1, 6, 2))),
                                                        beta=r.uniform(0.1, 0.9, (1, 6, 2)), scale=0.5,
                                                        initial_state=r.standard_normal((1, 2, 3, 2)),
                                                        output_final_state=True, use_qk_l2norm_in_kernel=True),
    "linear_rnn.chunk_gla_vjp": lambda r: dict(q=r.standard_normal((1, 6, 2, 3)), k=r.standard_normal((1, 6, 2, 3)),
                                               v=r.standard_normal((1, 6, 2, 2)), g=np.log(r.uniform(0.5, 1.0, (1, 6, 2, 3))),
                                               do=r.standard_normal((1, 6, 2, 2)), scale=0.5,
                                               initial_state=r.standard_normal((1, 2, 3, 2)),
                                               dht=r.standard_normal((1, 2, 3, 2))),
    "linear_rnn.chunk_simple_gla_vjp": lambda r: dict(q=r.standard_normal((1, 6, 2, 3)), k=r.standard_normal((1, 6, 2, 3)),
                                                      v=r.standard_normal((1, 6, 2, 2)),
                                                      g=np.log(r.uniform(0.5, 1.0, (1, 6, 2))),
                                                      do=r.standard_normal((1, 6, 2, 2)), scale=0.5,
                                                      initial_state=r.standard_normal((1, 2, 3, 2)),
                                                      dht=r.standard_normal((1, 2, 3, 2))),
    "linear_rnn.chunk_delta_rule_vjp": lambda r: dict(q=r.standard_normal((1, 6, 2, 3)), k=r.standard_normal((1, 6, 2, 3)),
                                                      v=r.standard_normal((1, 6, 2, 2)), beta=r.uniform(0.1, 0.9, (1, 6, 2)),
                                                      do=r.standard_normal((1, 6, 2, 2)), scale=0.5,
                                                      initial_state=r.standard_normal((1, 2, 3, 2)),
                                                      dht=r.standard_normal((1, 2, 3, 2)), use_qk_l2norm_in_kernel=True),
    "linear_rnn.chunk_gated_delta_rule_vjp": lambda r: dict(
        q=r.standard_normal((1, 6, 2, 3)), k=_unit(r, 1, 6, 2, 3), v=r.standard_normal((1, 6, 2, 2)),
        g=np.log(r.uniform(0.5, 1.0, (1, 6, 2))), beta=r.uniform(0.1, 0.9, (1, 6, 2)), do=r.standard_normal((1, 6, 2, 2)),
        scale=0.5, initial_state=r.standard_normal((1, 2, 3, 2)), dht=r.standard_normal((1, 2, 3, 2)),
        use_qk_l2norm_in_kernel=False),
    # oracle (the harness: names, one small case, a directory)
    "oracle.function_names": lambda r: dict(),
    "oracle.case_names": lambda r: dict(function="classical.lfm_pulse"),
    "oracle.compute": lambda r: dict(case=_case_name(), args=None),
    "oracle.cited_tags": lambda r: dict(text="see Eq. (4.1) and Eqs. (2.4)-(2.5)"),
    "oracle.export": lambda r: dict(directory=_export_dir(), cases=[_case_name()], quiet=True),
    "oracle.verify": lambda r: dict(directory=_exported()),
    "oracle.load_case": lambda r: dict(directory=_exported(), name=_case_name(), check_sha=True),
    "oracle.compare": lambda r: dict(name="classical.lfm_pulse", fn=_lfm, dtype=np.float64, cases=[_case_name()],
                                     vectors=None),
    "oracle.citation_index": lambda r: dict(root=_small_repository()),
    "oracle.rel_error": lambda r: dict(actual=r.normal(size=(3, 4)), desired=r.normal(size=(3, 4))),
    "oracle.plain_functions": lambda r: dict(),
    "oracle.decay_floor": lambda r: dict(function="linear_rnn.gated_linear_attention",
                                         args={"k": r.standard_normal((2, 9, 3)), "log_g": -r.uniform(0, 1, (2, 9)),
                                               "chunk_size": 4}),
    "oracle.effective_log_decay": lambda r: dict(log_g=-r.uniform(0, 1, (2, 9)), chunk=4),
    "oracle.random_inputs": lambda r: dict(name="attention.softmax_attention", seed=0, N=5, M=7, d=3),
    "oracle.random_case": lambda r: dict(name="attention.softmax_attention", seed=0, N=5, M=7, d=3),
    "oracle.round_to": lambda r: dict(x=r.normal(size=(3, 4)), tier="bfloat16"),
    "oracle.tier_eps": lambda r: dict(tier="tf32"),
}

def _kalman_irregular(rng, N=6):
    from refimpl import kalman, sde

    t = _times(rng, N)
    F, Q, H, R = kalman.from_sde(sde.spiral_system(), t)
    z = rng.standard_normal((N, 2))
    z[2] = np.nan  # a missing measurement
    return dict(z=z, F=F, H=H, Q=Q, R=R, m0=np.zeros(2), P0=np.eye(2))


def _full_noise(rng, d=3):
    g = rng.standard_normal((d, d)) + 1j * rng.standard_normal((d, d))
    return g @ g.conj().T / d + 0.1 * np.eye(d)


#: Further valid calls of one function ("name#variant"): other options, masks, given draws, grids.
VARIANTS = {
    "sde.euler_maruyama#dW": lambda r: dict(model=_model(r), t=_times(r, 4), x0=None, n_substeps=2, size=None,
                                            rng=None, dW=0.1 * r.standard_normal((6, 2))),
    "sde.sample_loop#batch": lambda r: dict(model=_model(r), t=_times(r, 4), size=(2, 3), rng=np.random.default_rng(5)),
    "lyapunov.dle_covariance#full": lambda r: dict(eigvals=-r.uniform(0.1, 1, 3) + 1j * r.standard_normal(3),
                                                   noise=_full_noise(r), tau=r.uniform(0, 2, 4)),
    "lyapunov.dle_covariance_loop#full": lambda r: dict(eigvals=-r.uniform(0.1, 1, 3) + 1j * r.standard_normal(3),
                                                        noise=_full_noise(r), tau=r.uniform(0, 2, 4)),
    "lyapunov.steady_state_covariance#full": lambda r: dict(eigvals=-r.uniform(0.1, 1, 3) + 1j * r.standard_normal(3),
                                                            noise=_full_noise(r)),
    "kalman.kalman_filter#irregular": lambda r: _kalman_irregular(r),
    "kalman.rts_smoother_loop#irregular": lambda r: _kalman_irregular(r),
    "kalman.kalman_filter_scan#irregular": lambda r: _kalman_irregular(r),
    "kalman.kalman_weight_matrix#filter": lambda r: {**{k: v for k, v in _kalman(r).items() if k != "z"},
                                                     "n_steps": 4, "kind": "filter",
                                                     "missing": np.array([False, True, False, False])},
    "attention.softmax_attention#mask": lambda r: dict(q=r.standard_normal((2, 4, 3)), k=r.standard_normal((5, 3)),
                                                       v=r.standard_normal((5, 2)), mask=np.tri(4, 5, 1, dtype=bool),
                                                       causal=False, scale=0.7, return_weights=False),
    "attention.softmax_attention_loop#mask": lambda r: dict(q=r.standard_normal((4, 3)), k=r.standard_normal((5, 3)),
                                                            v=r.standard_normal((5, 2)),
                                                            mask=np.tri(4, 5, 1, dtype=bool), causal=False),
    # the kernel conventions: grouped heads (4 query heads, 2 kv heads), bottom-right causal, window, ALiBi, soft cap
    "attention.softmax_attention#kernel": lambda r: dict(q=r.standard_normal((4, 4, 3)), k=r.standard_normal((2, 6, 3)),
                                                         v=r.standard_normal((2, 6, 2)), causal=True,
                                                         causal_alignment="bottom_right", window=3,
                                                         alibi_slopes=np.array([0.5, 0.25, 0.125, 0.0625]),
                                                         softcap=2.0, grouped_heads=True),
    # large logits (q·k ~ 1e9, positive entries): one mutation of q, k or scale by ±1e300 makes logits overflow to
    # ±inf, which must be refused (−inf logits were taken for forbidden keys: y = 0, rows of A summing to 0 or NaN)
    "attention.attention_weights#large": lambda r: dict(q=1e5 * np.abs(r.standard_normal((5, 3))),
                                                        k=1e4 * np.abs(r.standard_normal((6, 3))), causal=False,
                                                        scale=1.0),
    "attention.softmax_attention#large": lambda r: dict(q=1e5 * np.abs(r.standard_normal((5, 3))),
                                                        k=1e4 * np.abs(r.standard_normal((6, 3))),
                                                        v=r.standard_normal((6, 2)), causal=True,
                                                        causal_alignment="bottom_right", scale=1.0),
    "attention.flash_attention#large": lambda r: dict(q=1e5 * np.abs(r.standard_normal((5, 3))),
                                                      k=1e4 * np.abs(r.standard_normal((6, 3))),
                                                      v=r.standard_normal((6, 2)), scale=1.0, block_q=2, block_k=4,
                                                      return_lse=True),
    "attention.flash_attention_loop#large": lambda r: dict(q=1e5 * np.abs(r.standard_normal((5, 3))),
                                                           k=1e4 * np.abs(r.standard_normal((6, 3))),
                                                           v=r.standard_normal((6, 2)), scale=1.0, softcap=50.0,
                                                           block_q=2, block_k=4),
    "attention.flash_attention_loop#kernel": lambda r: dict(q=r.standard_normal((4, 4, 3)), k=r.standard_normal((2, 6, 3)),
                                                            v=r.standard_normal((2, 6, 2)), causal=True,
                                                            causal_alignment="bottom_right", window=3, block_q=2,
                                                            block_k=4, alibi_slopes=np.array([0.5, 0.25, 0.125, 0.0625]),
                                                            softcap=2.0, grouped_heads=True),
    "afa.afa#exponential": lambda r: {**_afa_common(r), "eigvals": -r.uniform(0.1, 0.5, 3) + 1j * r.standard_normal(3),
                                      "t": _times(r, 5), "weight": "exponential", "kappa": 1.5, "temperature": 0.7,
                                      "causal": False, "rotate_values": False},
    "afa.isotropic_afa#exponential": lambda r: {**_afa_common(r), "mu": 0.3, "omega": r.standard_normal(3),
                                                "weight": "exponential", "causal": True, "temperature": 0.5},
    "afa.afa_irls#t": lambda r: {**{k: v for k, v in _afa_common(r).items() if k not in "qkv"},
                                 "z": r.standard_normal((2, 5, 3)) + 0j, "t": _times(r, 5),
                                 "eigvals": -r.uniform(0.1, 0.5, 3) + 1j * r.standard_normal(3), "causal": False},
    "rt_sde.rt_attention#query": lambda r: dict(q=r.standard_normal((5, 3)), k=r.standard_normal((5, 3)),
                                                v=r.standard_normal((5, 3)), mu=0.2, omega=_skew(r, 3), **_rt_noises(),
                                                nu=2.0, weight="exponential", direction="query", temperature=0.5),
    "rt_sde.rt_attention_loop#query": lambda r: dict(q=r.standard_normal((5, 3)), k=r.standard_normal((5, 3)),
                                                     v=r.standard_normal((5, 3)), mu=0.2, omega=_skew(r, 3),
                                                     **_rt_noises(), nu=2.0, direction="query"),
    "random_features.performer_attention#draw": lambda r: dict(
        q=r.standard_normal((6, 3)), k=r.standard_normal((6, 3)), v=r.standard_normal((6, 2)), n_features=8,
        rng=np.random.default_rng(4), causal=False, kind="trig", scale=0.5, orthogonal=False),
    "random_features.lsh_hash#rng": lambda r: dict(x=r.standard_normal((8, 3)), n_buckets=4, rng=3, n_rounds=1),
    "random_features.rfa_attention_loop#plain": lambda r: dict(q=r.standard_normal((6, 3)), k=r.standard_normal((6, 3)),
                                                               v=r.standard_normal((6, 2)), n_features=8, sigma=1.0,
                                                               rng=1, gated=False, causal=False),
    "random_features.favor_features#trig": lambda r: dict(x=r.standard_normal((5, 3)), projection=r.standard_normal((8, 3)),
                                                          kind="trig", stabilize=False),
    "random_features.lsh_attention#causal": lambda r: dict(qk=r.standard_normal((8, 3)), v=r.standard_normal((8, 2)),
                                                           n_buckets=2, n_rounds=1, chunk_size=2, rng=0, causal=True),
    "iir.biquad_filter#zi": lambda r: dict(b=_stable_biquad(r)[0], a=_stable_biquad(r)[1],
                                           x=r.standard_normal((12, 2)), zi=r.standard_normal((2, 2)), form="tdf2"),
    "iir.sos_filter_loop#df1": lambda r: dict(sos=_sos(r), x=r.standard_normal(12), zi=r.standard_normal((2, 4)),
                                              form="df1"),
    "iir.tf_filter_loop#zi": lambda r: dict(b=r.standard_normal(4), a=np.array([1.0, -0.5, 0.2, -0.1]),
                                            x=r.standard_normal(12), zi=r.standard_normal(3)),
    "iir.diagonal_ssm_filter#assoc": lambda r: dict(lam=r.uniform(0.2, 0.8, 3) * np.exp(1j * r.uniform(0, 3, 3)),
                                                    B=r.standard_normal(3), C=r.standard_normal(3), D=0.1,
                                                    x=r.standard_normal((10, 3)), scan="associative"),
    "iir.butter#bandpass": lambda r: dict(order=2, wn=np.array([100.0, 300.0]), btype="bandpass", fs=1000.0,
                                          output="zpk"),
    "iir.frequency_response#grid": lambda r: dict(b=_stable_biquad(r)[0], a=_stable_biquad(r)[1], w=16, whole=True),
    "ssm.s4d_kernel#bilinear": lambda r: dict(A=-0.5 + 1j * np.arange(3.0), B=r.standard_normal(3) + 0j,
                                              C=r.standard_normal(3), step=0.2, L=6, method="bilinear"),
    "ssm.ssm_recurrent#dense": lambda r: dict(u=r.standard_normal((2, 8, 2)), Ab=0.5 * np.eye(3),
                                              Bb=r.standard_normal(3), C=r.standard_normal(3), D=None),
    "ssm.selective_scan_loop#zoh": lambda r: dict(u=r.standard_normal((5, 2)), delta=r.uniform(0.05, 0.5, (5, 2)),
                                                  A=-r.uniform(0.2, 1, (2, 3)), B=r.standard_normal((5, 3)),
                                                  C=r.standard_normal((5, 3)), discretization="zoh"),
    "ssm.selective_scan_fn#complex": lambda r: dict(u=r.standard_normal((1, 2, 4)), delta=r.uniform(0.05, 0.5, (1, 2, 4)),
                                                    A=-r.uniform(0.2, 1, (2, 3)) + 1j * r.standard_normal((2, 3)),
                                                    B=r.standard_normal((2, 3)) + 1j * r.standard_normal((2, 3)),
                                                    C=r.standard_normal((1, 2, 3, 8)), D=None, z=None, delta_bias=None,
                                                    delta_softplus=False, return_last_state=False),
    "ssm.selective_scan_fn_vjp#complex": lambda r: dict(u=r.standard_normal((1, 2, 4)),
                                                        delta=r.uniform(0.05, 0.5, (1, 2, 4)),
                                                        A=-r.uniform(0.2, 1, (2, 3)) + 1j * r.standard_normal((2, 3)),
                                                        B=r.standard_normal((1, 3, 8)),
                                                        C=r.standard_normal((2, 3)) + 1j * r.standard_normal((2, 3)),
                                                        dout=r.standard_normal((1, 2, 4)), D=None, z=None,
                                                        delta_bias=None, delta_softplus=False),
    "ssm.selective_state_update#mamba_no_softplus": lambda r: dict(  # Mamba's layout, Δ = dt + dt_bias given directly
        state=r.standard_normal((2, 3, 4)), x=r.standard_normal((2, 3)), dt=r.uniform(0.05, 0.5, (2, 3)),
        A=-r.uniform(0.2, 1, (3, 4)), B=r.standard_normal((2, 4)), C=r.standard_normal((2, 4)), D=r.standard_normal(3),
        z=r.standard_normal((2, 3)), dt_bias=r.uniform(0.05, 0.5, 3), dt_softplus=False, state_batch_indices=None),
    "ssm.discretize#zoh_diagonal": lambda r: dict(A=-r.uniform(0.1, 1, (2, 3)), B=r.standard_normal(3),
                                                  step=np.array([[0.1], [0.2]]), method="zoh", diagonal=True),
    "focus.adaptive_filter#circular": lambda r: dict(x=r.standard_normal((12, 2)),
                                                     theta=r.uniform(0.1, 0.6, (3, 2, 1, 2)),
                                                     variant="causal-circular", n_fft=8),
    "focus.adaptive_filter_loop#literal": lambda r: dict(x=r.standard_normal((12, 2)),
                                                         theta=r.uniform(0.1, 0.6, (3, 2, 1, 2)), variant="literal"),
    "mixing.hyena_operator#short": lambda r: dict(u=r.standard_normal((8, 2)), w_in=r.standard_normal((2, 6)),
                                                  filters=r.standard_normal((2, 8, 2)),
                                                  short_filter=r.standard_normal((3, 6)),
                                                  short_bias=r.standard_normal(6)),
    "positional.rope#freqs": lambda r: dict(x=r.standard_normal((5, 4)), positions=None, freqs=np.array([1.0, 0.1])),
    "classical.mvdr_weights_loop#batch": lambda r: dict(R=_spd(r, 4), steering=np.exp(1j * np.outer([0.3, 0.9],
                                                                                              np.arange(4))),
                                                        loading=0.0),
    "classical.lms#w0": lambda r: dict(u=r.standard_normal((2, 20)), d=r.standard_normal((2, 20)), n_taps=3, mu=0.05,
                                       w0=r.standard_normal(3)),
}

#: Twins called like their vectorized function (same signature): ``x_loop`` reuses ``x``'s call;
#: the other forms of one computation likewise.
ALIASES = {
    "kalman.kalman_filter_loop": "kalman.kalman_filter",
    "kalman.rts_smoother_loop": "kalman.rts_smoother",
    "afa.isotropic_afa_loop": "afa.isotropic_afa",
    "random_features.performer_attention_loop": "random_features.performer_attention",
    "ssm.selective_scan_assoc": "ssm.selective_scan",
    "ssm.selective_scan_matrix": "ssm.selective_scan",
}
#: Functions whose documented output may hold inf (``"inf"``) or NaN and inf (``"nan"``).
NONFINITE_OK = {
    "oracle.rel_error": "inf",  # an infinite entry not matched exactly: the error is inf (documented)
    "lyapunov.dle_covariance_backward": "inf",  # the pushed-back covariance grows without bound (documented)
    "lyapunov.dle_covariance_backward_loop": "inf",
    "iir.group_delay": "nan",  # undefined where B or A vanishes on the unit circle (documented)
    "iir.group_delay_loop": "nan",
    "iir.analog_frequency_response": "inf",  # on a pole
    "iir.frequency_response": "inf",
    "iir.frequency_response_loop": "inf",
    "iir.sos_frequency_response": "inf",
    "rt_sde.rt_variances": "inf",  # gamma2_par = inf is the documented sphere limit
    "rt_sde.rt_variances_loop": "inf",
    "rt_sde.rt_logdet_precision": "inf",  # a_par = inf: the sphere limit, log det = -inf
    "lyapunov.phi1": "inf",  # e^{zτ} of an unstable mode overflows (documented)
    "linear_rnn.segsum": "inf",  # −inf above the diagonal: the log of an empty product's complement (documented)
    "lyapunov.isotropic_covariance": "inf",  # pushed-back lags of a decaying mode (documented)
    "lyapunov.isotropic_covariance_loop": "inf",
    "oracle.round_to": "nan",  # rounding keeps NaN and ±inf, and overflows the tier's range to ±inf, as a kernel does
}
#: Arguments skipped entirely (with the reason): none may be skipped silently.
SKIP_ARGS = {
    ("oracle.compute", "args"): "a dict of overrides, checked by the registry's own build",
}


def builder(name: str):
    if name in VARIANTS:
        return VARIANTS[name]
    if name in VALID:
        return VALID[name]
    if name in ALIASES:
        return VALID[ALIASES[name]]
    if name.endswith("_loop") and name[: -len("_loop")] in VALID:
        return VALID[name[: -len("_loop")]]
    return None


# ---------------------------------------------------------------------------------------------
# mutations
# ---------------------------------------------------------------------------------------------

#: Mutation kinds that must be refused (accepting them is a silent wrong answer).
MUST_REFUSE = {
    "bool=str", "bool=int", "bool=None", "option=unknown", "option=int", "rng=float", "rng=str", "rng=-1",
    "rng=RandomState", "rng=list", "str_dtype", "object_dtype", "str", "callable=None", "callable=int",
    "model=None", "model=str", "dict=None", "dict=empty", "text=None", "text=int", "path=int", "path=list",
}


def _poison(x: np.ndarray, pos: int, value) -> np.ndarray:
    out = np.array(x, dtype=np.result_type(x.dtype, np.float64))
    out.flat[pos % out.size] = value
    return out


def mutations(name: str, value, pos: int):
    """(kind, mutated value) pairs for one argument."""
    from refimpl.sde import LinearSDE

    if name == "rng":
        return [("rng=float", 0.5), ("rng=str", "seed"), ("rng=-1", -1), ("rng=RandomState", np.random.RandomState(0)),
                ("rng=list", [1, 2])]
    if isinstance(value, (bool, np.bool_)):
        return [("bool=str", "no"), ("bool=int", 1), ("bool=None", None), ("bool=np", np.bool_(value))]
    if name == "size":  # a shape: int or tuple of ints
        return [("negative", -1), ("float_nonint", 2.5), ("str", "2"), ("tuple_negative", (2, -3)),
                ("tuple_float", (2.0, 3)), ("bool", True)]
    if name == "root":  # None is valid (this repository: a slow scan, not repeated here)
        return [("path=int", 3), ("path=list", [1])]
    if name in ("directory", "vectors"):
        return [("path=None", None), ("path=int", 3), ("path=list", [1])]
    if name == "dtype":
        return [("option=unknown", np.int8), ("option=int", 1), ("dtype=str", "float64")]
    if isinstance(value, str):
        if name == "text":
            return [("text=None", None), ("text=int", 3), ("text=empty", "")]
        if name in ("case", "function"):
            return [("option=unknown", "no.such/case"), ("option=int", 3), ("None", None)]
        return [("option=unknown", "no-such-option"), ("option=int", 1), ("None", None)]
    if isinstance(value, LinearSDE):
        return [("model=None", None), ("model=str", "model")]
    if isinstance(value, dict):
        return [("dict=None", None), ("dict=empty", {})]
    if callable(value):
        return [("callable=None", None), ("callable=int", 1)]
    if isinstance(value, (int, np.integer)):
        v = int(value)
        return [("zero", 0), ("negative", -1 - v), ("float_int", float(v)), ("float_nonint", v + 0.5), ("bool", True),
                ("str", str(v)), ("None", None), ("array", np.array([v, v])), ("complex", complex(v, 1))]
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return [("nan", np.nan), ("+inf", np.inf), ("-inf", -np.inf), ("zero", 0.0), ("negative", -abs(v) - 1.0),
                ("huge", 1e300 if v >= 0 else -1e300), ("-huge", -1e300), ("tiny", 1e-300), ("str", str(v)),
                ("None", None), ("array", np.array([v, v])), ("bool", True), ("complex", complex(v, 1.0))]
    if value is None:
        return [("str", "none"), ("array_bad", np.array([[np.nan]]))]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return [("option=unknown", ["no.such/case"]), ("option=int", [3]), ("empty", [])]
    x = np.asarray(value)
    out = []
    if x.dtype == bool:  # masks: other dtypes and shapes (no arithmetic)
        out += [("int_dtype", x.astype(np.int64)), ("float_dtype", x.astype(float)), ("object_dtype", x.astype(object)),
                ("None", None), ("rank+1", x[None]), ("scalar", True)]
        if x.ndim >= 1:
            out += [("empty", x[:0]), ("len1", x[:1]), ("mismatch", np.concatenate([x, x[:1]]))]
        return out
    if x.size:
        out += [("nan", _poison(x, pos, np.nan)), ("+inf", _poison(x, pos, np.inf)), ("-inf", _poison(x, pos, -np.inf)),
                ("huge", x * 1e300), ("-huge", x * -1e300), ("tiny", x * 1e-300), ("negative", -x),
                ("zero", np.zeros_like(x)), ("scalar", x.flat[pos % x.size].item()), ("list", x.tolist()),
                ("object_dtype", x.astype(object)), ("str_dtype", x.astype(str)), ("bool_dtype", x != 0)]
        if x.dtype.kind != "c":
            with np.errstate(invalid="ignore"):  # NaN entries (missing measurements) cast to some integer
                out += [("int_dtype", np.round(x).astype(np.int64)), ("complex", x + 1j * (np.abs(x) + 1.0))]
    out += [("None", None), ("rank+1", x[None])]
    if x.ndim >= 1:
        out += [("rank-1", x[0] if x.shape[0] else x.reshape(x.shape[1:] or (0,))), ("empty", x[:0]),
                ("len1", x[:1]), ("mismatch", np.concatenate([x, x[:1]]) if x.shape[0] else x[None])]
    if x.ndim == 1 and x.size >= 2:
        dup = x.copy()
        dup[1] = dup[0]
        out += [("unsorted", x[::-1].copy()), ("duplicate", dup)]
    return out


# ---------------------------------------------------------------------------------------------
# the property
# ---------------------------------------------------------------------------------------------

STATS: collections.Counter = collections.Counter()
DONE: set = set()
ELAPSED = [0.0]


def _snapshot(kwargs: dict) -> dict:
    return {k: copy.deepcopy(v) if not callable(v) or isinstance(v, np.ndarray) else v for k, v in kwargs.items()}


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) and a.dtype == object:
        return isinstance(b, np.ndarray) and a.shape == b.shape and all(_same(x, y) for x, y in zip(a.flat, b.flat))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.shape == b.shape and a.dtype == b.dtype and bool(
            np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, np.random.Generator):
        return True  # a Generator is meant to be consumed by the draw
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    if isinstance(a, np.random.RandomState):
        return True
    if hasattr(a, "__dataclass_fields__"):
        return type(a) is type(b) and all(_same(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
    try:
        return bool(a == b) or a is b
    except Exception:
        return a is b


def _nonfinite(out, found: set) -> None:
    if isinstance(out, np.ndarray):
        if out.dtype.kind in "fc" and out.size:
            if np.isnan(out).any():
                found.add("nan")
            if np.isinf(out).any():
                found.add("inf")
        elif out.dtype == object:
            for o in out.flat:
                _nonfinite(o, found)
    elif isinstance(out, (tuple, list)):
        for o in out:
            _nonfinite(o, found)
    elif isinstance(out, dict):
        for o in out.values():
            _nonfinite(o, found)
    elif hasattr(out, "__dataclass_fields__"):
        for f in out.__dataclass_fields__:
            _nonfinite(getattr(out, f), found)
    elif isinstance(out, (float, complex, np.floating, np.complexfloating)):
        _nonfinite(np.asarray(out), found)


_LEAD = re.compile(r"^([A-Za-z_][\w]*(?:\s*,\s*[A-Za-z_][\w]*)*)\s*:")


def names_argument(message: str, name: str) -> bool:
    """The message's subject (``"name: ..."`` or ``"a, b: ..."``) is the argument, or the message
    mentions it as a whole word (names of three or more characters: short ones are English words)."""
    m = _LEAD.match(message)
    if m and name in [s.strip() for s in m.group(1).split(",")]:
        return True
    if len(name) >= 3 and re.search(rf"(?<![\w.]){re.escape(name)}(?![\w(])", message):
        return True
    # a short name as a standalone token ("the shape of q (5, 3)"); "a" only where it cannot be the article
    token = rf"(?<![\w.']){re.escape(name)}(?![\w'])"
    message = re.sub(r"\((?:\s*[\w.·+−-]{0,8}\s*,)+\s*[\w.·+−-]{0,8}\s*\)", "", message)  # "(..., N, d)" names no argument
    if name != "a" and re.search(token, message):
        return True
    if name == "a" and re.search(r"(?<![\w.])a(?=\s*[\[=(,:]|$|\))", message):
        return True
    return False


def classify(fname: str, fn, kwargs: dict, arg: str, kind: str) -> tuple[str, str]:
    """(class, detail) of one mutated call; classes starting with "ok" pass."""
    before = _snapshot(kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = fn(**kwargs)
        except (ValueError, TypeError) as exc:
            err = exc
        except Exception as exc:  # noqa: BLE001 - any other type is the defect being tested for
            return "b:other-exception", f"{type(exc).__name__}: {exc}"
        else:
            err = None
    for k in kwargs:
        if not _same(before[k], kwargs[k]):
            return "g:input-mutated", k
    warned = [w for w in caught if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))]
    if err is not None:
        msg = str(err)
        if warned:
            return "e:warning-then-error", f"{warned[0].category.__name__}: {warned[0].message}"
        if not names_argument(msg, arg):
            return "a*:unnamed", f"{type(err).__name__}: {msg[:160]}"
        return "ok:refused", ""
    found: set = set()
    _nonfinite(out, found)
    allowed = NONFINITE_OK.get(fname.split("#")[0], "")
    bad = found - ({"inf", "nan"} if allowed == "nan" else {"inf"} if allowed == "inf" else set())
    if bad:
        return "c:nonfinite-output", ", ".join(sorted(bad))
    if warned:
        return "e:warning", f"{warned[0].category.__name__}: {warned[0].message}"
    if kind in MUST_REFUSE:
        return "d:accepted-bad-input", kind
    return "ok:accepted", ""


def _run_function(fname: str, seed: int, pos: int) -> list:
    fn = FUNCTIONS[fname.split("#")[0]]
    make = builder(fname)
    base = make(np.random.default_rng(seed))
    failures = []
    # the valid call itself: clean, finite, no warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(**base)
    found: set = set()
    _nonfinite(out, found)
    allowed = NONFINITE_OK.get(fname.split("#")[0], "")
    found -= {"inf", "nan"} if allowed == "nan" else {"inf"} if allowed == "inf" else set()
    assert not found and not caught, f"{fname}: the valid call is not clean ({found}, {[str(w.message) for w in caught]})"
    for arg in base:
        if (fname, arg) in SKIP_ARGS:
            continue
        for kind, value in mutations(arg, base[arg], pos):
            kwargs = dict(make(np.random.default_rng(seed)))
            kwargs[arg] = value
            cls, detail = classify(fname, fn, kwargs, arg, kind)
            STATS[cls] += 1
            if not cls.startswith("ok"):
                failures.append(f"{fname}({arg}: {kind}) -> {cls} {detail}")
    return failures


#: Functions merged after this suite was written whose messages do not yet name the mutated argument
#: (shape errors reported on a dependent argument, raw NumPy broadcast errors) or that raise
#: IndexError: strict xfail, so that fixing them turns the mark into a failure to remove.
KNOWN_DEFECTS: dict = {
}

NAMES = sorted(FUNCTIONS)
CALLS = NAMES + sorted(VARIANTS)


def test_every_public_function_has_a_valid_call():
    missing = [n for n in NAMES if builder(n) is None]
    assert not missing, f"public functions without a registered valid call in VALID: {missing}"
    unknown = sorted((set(VALID) | {v.split("#")[0] for v in VARIANTS}) - set(FUNCTIONS))
    assert not unknown, f"VALID names functions that are not public: {unknown}"


@pytest.mark.parametrize("fname", [
    pytest.param(n, marks=pytest.mark.xfail(reason=KNOWN_DEFECTS[n], strict=True)) if n in KNOWN_DEFECTS else n
    for n in CALLS if builder(n) is not None
])
def test_bad_input(fname):
    failures: list = []

    @settings(max_examples=EXAMPLES, phases=(Phase.explicit, Phase.generate), derandomize=True, deadline=None,
              database=None)
    @given(seed=st.integers(0, 2**32 - 1), pos=st.integers(0, 2**16))
    def prop(seed, pos):
        failures.extend(_run_function(fname, seed, pos))

    t0 = time.perf_counter()
    prop()
    ELAPSED[0] += time.perf_counter() - t0
    DONE.add(fname)
    assert not failures, "\n".join(sorted(set(failures)))


def test_as_int_array_casts_to_signed_before_any_arithmetic():
    """Offsets and ids are compared by differences: an unsigned array's np.diff wraps around (3 − 6 = 4294967293 in
    uint32). as_int_array returns int64, refusing non-integers and unsigned values past the int64 range by name."""
    from refimpl._validate import as_int_array

    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int32, np.int64):
        got = as_int_array(np.array([0, 6, 3], dtype), "cu")
        assert got.dtype == np.int64 and np.diff(got).tolist() == [6, -3]
    assert as_int_array([[0, 1], [2, 3]], "ids").dtype == np.int64
    assert as_int_array(np.array([2**63 - 1], np.uint64), "cu").tolist() == [2**63 - 1]
    for bad, err, match in [(np.array([2**63], np.uint64), ValueError, r"^cu: expected integers in the int64 range, "
                                                                          r"got maximum 9223372036854775808"),
                            (np.array([0.0, 1.0]), TypeError, "^cu: expected integers, got dtype float64"),
                            (np.array([True, False]), TypeError, "^cu: expected integers, got dtype bool"),
                            ([[0, 1], [2]], TypeError, r"^cu: could not convert to an array \(setting an array element"),
                            ("0, 1", TypeError, "^cu: expected a number or array, got str"),
                            ([2**70], TypeError, "^cu: expected numeric values")]:
        with pytest.raises(err, match=match):
            as_int_array(bad, "cu")


def test_guard_overflow_names_a_ragged_argument():
    """A function that reads np.shape of a raw argument before validating it raises NumPy's own message for a
    ragged nested list, naming no argument; the guard every public function wears names it as _to_array does."""
    from refimpl._validate import guard_overflow

    @guard_overflow()
    def f(a, b, *, opts=(1, 2)):
        shapes = np.shape(a), np.shape(b)  # before validation (the _vjp forms did so until they used _given_shape)
        return np.zeros(shapes[0])

    assert f([1.0, 2.0], [[1.0], [2.0]]).shape == (2,)
    with pytest.raises(TypeError, match=r"^b: could not convert to an array \(setting an array element with a sequence"):
        f([1.0, 2.0], [[1.0], [2.0, 3.0]])
    with pytest.raises(TypeError, match="^a: could not convert"):
        f(a=[[1.0], [2.0, 3.0]], b=1.0)

    @guard_overflow()
    def g(a):
        raise ValueError("setting an array element with a sequence, from an intermediate")

    with pytest.raises(ValueError, match="^setting an array element"):  # no ragged argument: left as it is
        g([1.0, 2.0])


def test_zz_case_count():
    """At least 10,000 mutated calls when the whole suite runs (reported with ``-s``)."""
    if len(DONE) < len([n for n in CALLS if builder(n) is not None]):
        pytest.skip("only part of the suite ran")
    total = sum(STATS.values())
    print(f"\nbad-input cases: {total} in {ELAPSED[0]:.1f} s over {len(DONE)} valid calls "
          f"({len(NAMES)} public functions + {len(VARIANTS)} variants)")
    for cls, n in sorted(STATS.items()):
        print(f"  {cls:<24s} {n}")
    assert total >= 10_000
