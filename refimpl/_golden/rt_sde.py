"""Golden cases of :mod:`refimpl.rt_sde`, chapter 9 (the rotating-tangent SDE): transition,
covariance, precision, sphere residuals and RT attention.
"""

import numpy as np

from refimpl import rt_sde

from ._base import Case, Function, called, mid_pair, ordered, renormalize, skew, unit


_SPHERE = ("tangential", "sin2", "theta2", "chord2")


_RT_NOISE = {"sigma2_perp": 0.3, "sigma2_par": 0.05, "eta2_perp": 0.1, "eta2_par": 0.02, "gamma2_perp": 0.05, "gamma2_par": 0.01}


def _run_rt_attention(args, with_mid):
    out, A = mid_pair(rt_sde.rt_attention(**args, return_weights=with_mid), with_mid)  # N × N weights only if wanted
    return ordered({"A": A}, {"out": out}, with_mid)


FUNCTIONS = [
    called("rt_sde.rt_transition", "T"),
    called("rt_sde.rt_direction", "u"),
    called("rt_sde.rt_noise_rate", "Q"),
    called("rt_sde.rt_covariance", "Sigma"),
    called("rt_sde.rt_variances", "a_perp", "a_par"),
    called("rt_sde.rt_precision", "P"),
    called("rt_sde.rt_distance", "d2"),
    called("rt_sde.rt_logdet_precision", "logdet"),
    called("rt_sde.sphere_residuals", "tangential", "sin2", "theta2", "chord2"),
    Function("rt_sde.rt_attention", _run_rt_attention, ("out",), intermediates=("A",)),
    called("rt_sde.rt_step", "z_next",
           call="fn(z, alpha, **rt_attention parameters) -> z_next"),
]

CASES = [
    Case("rt_sde.rt_transition/rotation_decay", 901,
         lambda r: {"mu": 0.2, "omega": skew(r, 3), "s": np.array([-1.0, 0.0, 0.5, 20.0])}, "e^{(−μI + Ω)s}, both signs of s"),
    Case("rt_sde.rt_direction/transport", 902,
         lambda r: {"omega": skew(r, 3), "u0": unit(r.standard_normal((4, 3))), "s": np.array([0.0, 0.3, 2.0, 50.0])},
         "unit directions carried by the rotation", constrain=renormalize("u0")),
    Case("rt_sde.rt_noise_rate/corotating", 903,
         lambda r: {"omega": skew(r, 3), "u0": unit(r.standard_normal(3)), "s": np.array([0.0, 1.0, 4.0]),
                    "sigma2_perp": 0.3, "sigma2_par": 0.05}, "diagonal-plus-rank-1 noise rate along the moving direction",
         constrain=renormalize("u0")),
    Case("rt_sde.rt_covariance/basic", 904,
         lambda r: {"mu": 0.3, "omega": skew(r, 3), "u0": unit(r.standard_normal(3)), "tau": np.array([0.0, 0.5, 3.0, 40.0]),
                    **_RT_NOISE}, "closed-form RT covariance over lags 0 … 40", constrain=renormalize("u0")),
    Case("rt_sde.rt_covariance/brownian_limit", 905,
         lambda r: {"mu": 0.0, "omega": skew(r, 4), "u0": unit(r.standard_normal((2, 4))), "tau": np.array([[1e-8], [2.0]]),
                    **_RT_NOISE}, "μ = 0: variances linear in the lag", constrain=renormalize("u0")),
    Case("rt_sde.rt_variances/small_decay", 906,
         lambda r: {"mu": 1e-10, "tau": np.array([0.0, 1e-6, 1.0, 1e3]), **_RT_NOISE}, "μ = 1e-10: the series branch"),
    Case("rt_sde.rt_precision/batch", 907,
         lambda r: {"u": unit(r.standard_normal((3, 4))), "a_perp": np.array([0.5, 1.0, 2.0]), "a_par": np.array([0.1, 1.0, 1e6])},
         "Sherman–Morrison precision, nearly flat to nearly singular", constrain=renormalize("u")),
    Case("rt_sde.rt_distance/batch", 908,
         lambda r: {"r": r.standard_normal((5, 3)), "u": unit(r.standard_normal((5, 3))), "a_perp": 0.7, "a_par": 0.05},
         "split Mahalanobis distance", constrain=renormalize("u")),
    Case("rt_sde.rt_logdet_precision/grid", 909,
         lambda r: {"a_perp": np.array([0.5, 1.0, 3.0]), "a_par": np.array([0.1, 1.0, 1e4]), "d": 5}, "log det of the RT precision"),
    Case("rt_sde.sphere_residuals/angles", 910,
         lambda r: {"q": unit(np.array([[1.0, 0.0, 0.0], [1.0, 1e-8, 0.0], [0.0, 1.0, 0.0], [-1.0, 1e-6, 0.0]])),
                    "k": np.array([[1.0, 0.0, 0.0]] * 4)},
         "θ = 0, 1e-8, π/2 and near π: sin²θ, θ², chord² and the tangential residual"),
    Case("rt_sde.rt_attention/key_direction", 911,
         lambda r: {"q": r.standard_normal((7, 3)), "k": r.standard_normal((7, 3)), "v": r.standard_normal((7, 3)), "mu": 0.2,
                    "omega": skew(r, 3), **_RT_NOISE, "nu": 2.0}, "RT attention, noise along the transported key"),
    Case("rt_sde.rt_attention/query_direction_exponential", 912,
         lambda r: {"q": r.standard_normal((6, 4)), "k": r.standard_normal((6, 4)), "v": r.standard_normal((6, 4)), "mu": 0.0,
                    "omega": skew(r, 4), **_RT_NOISE, "nu": 3.0, "weight": "exponential", "direction": "query",
                    "t": np.cumsum(r.exponential(0.5, 6))},
         "query direction, Gaussian weight, μ = 0, irregular times"),
    Case("rt_sde.rt_step/one_step", 913,
         lambda r: {"z": unit(r.standard_normal((6, 3))), "alpha": 0.5, "mu": 0.1, "omega": skew(r, 3), **_RT_NOISE, "nu": 2.0},
         "one residual-plus-normalization step on the sphere", constrain=renormalize("z")),
]
