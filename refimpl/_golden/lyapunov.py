"""Golden cases of :mod:`refimpl.lyapunov`, chapter 2 (the differential Lyapunov equation): the φ₁
kernel and the closed-form covariances.
"""

import numpy as np

from ._base import LAM3, Case, called, spd


FUNCTIONS = [
    called("lyapunov.phi1", "phi"),
    called("lyapunov.dle_covariance", "Sigma"),
    called("lyapunov.dle_covariance_backward", "Sigma"),
    called("lyapunov.steady_state_covariance", "Sigma"),
    called("lyapunov.isotropic_covariance", "Sigma"),
]

CASES = [
    Case("lyapunov.phi1/near_zero", 201,
         lambda r: {"z": np.array([0.0, 1e-300, 1e-12, -1e-8 + 1e-9j, 2e-6j, -0.5 + 3j, 1.0, -50.0, -2.0 + 0.0j]),
                    "tau": np.array([1.0, 2.0, 3.0, 0.5, 1e3, 2.0, 1.0, 10.0, 1e-9])},
         "the kernel (e^{z tau} - 1)/z through z -> 0 (series), large and tiny tau"),
    Case("lyapunov.dle_covariance/diagonal", 202,
         lambda r: {"eigvals": LAM3, "noise": np.array([0.7, 0.2, 1.5]), "tau": np.array([0.0, 0.1, 1.0, 7.5])},
         "diagonal noise spectrum, a few lags"),
    Case("lyapunov.dle_covariance/full", 203,
         lambda r: {"eigvals": LAM3, "noise": spd(r, 3), "tau": np.array([0.0, 0.3, 2.0])},
         "full Hermitian noise in the eigenbasis"),
    Case("lyapunov.dle_covariance/slow_decay", 204,
         lambda r: {"eigvals": np.array([0.0 + 0.0j, -1e-13 + 0.5j, -1e-7 + 0.0j, -2.0 + 1.0j]),
                    "noise": np.array([1.0, 0.5, 2.0, 0.3]), "tau": np.array([1e-9, 1.0, 1e3, 1e6])},
         "mu -> 0 (exact Brownian limit g tau) next to a fast mode"),
    Case("lyapunov.dle_covariance/long_lags_full", 205,
         lambda r: {"eigvals": np.array([-1e-6 + 1j, -0.5 - 1j]), "noise": spd(r, 2), "tau": np.array([1e2, 1e5, 1e8])},
         "long lags: a slow and a fast mode, full noise"),
    Case("lyapunov.dle_covariance/growing_mode", 206,
         lambda r: {"eigvals": np.array([1.0 + 0.5j, -0.2 + 0.0j]), "noise": np.array([0.5, 1.0]), "tau": np.array([1.0, 100.0, 300.0])},
         "an unstable mode: e^{2 mu tau} up to e^{600}, large but finite"),
    Case("lyapunov.dle_covariance_backward/diagonal", 207,
         lambda r: {"eigvals": LAM3, "noise": np.array([0.7, 0.2, 1.5]), "tau": np.array([0.0, 0.5, 3.0, 100.0])},
         "pushed-back covariance, growing with the lag (up to e^{240})"),
    Case("lyapunov.dle_covariance_backward/full", 208,
         lambda r: {"eigvals": LAM3, "noise": spd(r, 3), "tau": np.array([0.0, 0.4, 2.5])},
         "pushed-back covariance, full noise"),
    Case("lyapunov.steady_state_covariance/diagonal", 209,
         lambda r: {"eigvals": LAM3, "noise": np.array([0.7, 0.2, 1.5])}, "g / (2 mu)"),
    Case("lyapunov.steady_state_covariance/full", 210,
         lambda r: {"eigvals": LAM3, "noise": spd(r, 3)}, "-G_kl / (lambda_k + conj(lambda_l))"),
    Case("lyapunov.isotropic_covariance/signed_lags", 211,
         lambda r: {"dt": np.arange(-10.0, 10.5, 0.5), "mu": 0.3, "sigma2": 0.5, "eta2": 0.1, "gamma2": 0.05},
         "forward (dt >= 0) and pushed-back (dt < 0) residual variance"),
    Case("lyapunov.isotropic_covariance/brownian_limit", 212,
         lambda r: {"dt": np.array([[0.0], [1e-6], [1.0], [1e4]]), "mu": np.array([0.0, 1e-15, 1e-9, 1e-3]),
                    "sigma2": 0.5, "eta2": 0.1, "gamma2": 0.05},
         "mu -> 0: sigma2 |dt| + eta2 + gamma2, broadcast over lags x decays"),
    Case("lyapunov.isotropic_covariance/long_pushed_back", 213,
         lambda r: {"dt": np.array([-1.0, -50.0, -300.0, 300.0]), "mu": 1.0, "sigma2": 0.5, "eta2": 0.1, "gamma2": 0.05},
         "pushed back by 300 time units: e^{600}, large but finite"),
]
