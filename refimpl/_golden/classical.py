"""Golden cases of :mod:`refimpl.classical`, chapter 6 (classical signal processing): matched
filter, correlations, Wiener filtering, LMS/RLS and beamforming.
"""

import numpy as np

from refimpl import classical, iir

from ._base import Case, called, cplx


FUNCTIONS = [
    called("classical.lfm_pulse", "s"),
    called("classical.matched_filter", "y"),
    called("classical.autocorrelation", "r"),
    called("classical.cross_correlation", "p"),
    called("classical.wiener_hopf", "w"),
    called("classical.ar1_psd", "S"),
    called("classical.wiener_smoother_response", "H"),
    called("classical.wiener_smoother_weights", "lags", "h"),
    called("classical.lms", "w", "e"),
    called("classical.rls", "w", "e"),
    called("classical.steering_vector", "a"),
    called("classical.das_weights", "w"),
    called("classical.mvdr_weights", "w"),
    called("classical.beampattern", "B"),
    called("classical.dirichlet_beampattern", "B"),
    called("classical.sample_covariance", "R"),
    called("classical.beamform", "y"),
    called("classical.bartlett_spectrum", "P"),
    called("classical.capon_spectrum", "P"),
]

CASES = [
    Case("classical.lfm_pulse/chirp", 1001, lambda r: {"n_samples": 64, "bandwidth": 0.4}, "linear-FM pulse"),
    Case("classical.matched_filter/normalized", 1002,
         lambda r: {"received": np.concatenate([np.zeros(20), classical.lfm_pulse(32, 0.3), np.zeros(30)]) + 0.3 * cplx(r, 82),
                    "template": classical.lfm_pulse(32, 0.3), "normalize": True},
         "a chirp buried in complex noise, normalized correlation"),
    Case("classical.autocorrelation/ar1", 1003,
         lambda r: {"x": iir.tf_filter([1.0], [1.0, -0.9], r.standard_normal(200)), "n_lags": 12}, "biased estimate of an AR(1)"),
    Case("classical.cross_correlation/delayed", 1004,
         lambda r: {"d": np.roll(r.standard_normal(100), 3), "u": r.standard_normal(100), "n_lags": 8}, "cross-correlation"),
    Case("classical.wiener_hopf/ill_conditioned", 1005,
         lambda r: {"r": 0.99 ** np.arange(12) / (1 - 0.99**2), "p": 0.99 ** np.arange(1, 13) / (1 - 0.99**2)},
         "AR(1) with a = 0.99: an ill-conditioned Toeplitz system (Levinson–Durbin)"),
    Case("classical.ar1_psd/near_unit_pole", 1006, lambda r: {"a": 0.98, "q": 0.5, "n_fft": 64},
         "peak 1/(1 − a)² at ω = 0"),
    Case("classical.wiener_smoother_response/ar1", 1007,
         lambda r: {"psd_signal": classical.ar1_psd(0.9, 1.0, 32), "psd_noise": np.full(32, 0.5)}, "S_x / (S_x + S_n)"),
    Case("classical.wiener_smoother_weights/ar1", 1008,
         lambda r: {"psd_signal": classical.ar1_psd(0.9, 1.0, 64), "psd_noise": np.full(64, 0.5)}, "two-sided impulse response"),
    Case("classical.lms/system_identification", 1009,
         lambda r: (lambda u: {"u": u, "d": iir.tf_filter([0.5, -0.3, 0.1], [1.0], u) + 0.01 * r.standard_normal(u.shape),
                               "n_taps": 3, "mu": 0.05})(r.standard_normal((2, 60))),
         "two runs identifying a 3-tap FIR"),
    Case("classical.rls/system_identification", 1010,
         lambda r: (lambda u: {"u": u, "d": iir.tf_filter([0.5, -0.3, 0.1], [1.0], u) + 0.01 * r.standard_normal(60),
                               "n_taps": 3, "lam": 0.98, "delta": 0.01})(r.standard_normal(60)),
         "RLS with forgetting 0.98"),
    Case("classical.steering_vector/angles", 1011,
         lambda r: {"theta": np.array([-1.2, 0.0, 0.3, 1.5]), "n_sensors": 8, "spacing": 0.5}, "ULA steering vectors"),
    Case("classical.das_weights/broadside", 1012,
         lambda r: {"theta0": 0.4, "n_sensors": 6, "spacing": 0.5}, "delay-and-sum weights"),
    Case("classical.mvdr_weights/interference", 1013,
         lambda r: (lambda a: {"R": np.outer(a, a.conj()) * 100 + np.eye(6), "steering": classical.steering_vector(np.array([0.0, 0.2]), 6),
                               "loading": 1e-3})(classical.steering_vector(0.5, 6)),
         "a strong interferer at 0.5 rad, diagonal loading"),
    Case("classical.beampattern/das", 1014,
         lambda r: {"w": classical.das_weights(0.2, 8), "theta": np.linspace(-1.5, 1.5, 31)}, "power beampattern"),
    Case("classical.dirichlet_beampattern/mainlobe", 1015,
         lambda r: {"theta": np.array([0.2, 0.2 + 1e-9, 0.5, -1.0]), "theta0": 0.2, "n_sensors": 8},
         "0/0 at the look direction and next to it"),
    Case("classical.sample_covariance/snapshots", 1016,
         lambda r: {"x": cplx(r, 40, 4)}, "(1/T) Σ x xᴴ"),
    Case("classical.beamform/snapshots", 1017,
         lambda r: {"x": cplx(r, 2, 10, 4), "w": classical.das_weights(0.1, 4)}, "array output wᴴ x"),
    Case("classical.bartlett_spectrum/two_sources", 1018,
         lambda r: {"R": sum(np.outer(a, a.conj()) for a in classical.steering_vector(np.array([-0.3, 0.4]), 8)) + 0.1 * np.eye(8),
                    "theta": np.linspace(-1.0, 1.0, 21)}, "two sources"),
    Case("classical.capon_spectrum/two_sources", 1019,
         lambda r: {"R": sum(np.outer(a, a.conj()) for a in classical.steering_vector(np.array([-0.3, 0.4]), 8)) + 1e-3 * np.eye(8),
                    "theta": np.linspace(-1.0, 1.0, 21), "loading": 0.0}, "two sources at high SNR: a nearly singular R"),
]
