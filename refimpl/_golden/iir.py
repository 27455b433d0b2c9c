"""Golden cases of :mod:`refimpl.iir`, chapter 13 (IIR filters): filtering, responses, conversions,
analog prototypes and design, diagonal SSMs as filters.
"""

import numpy as np

from refimpl import iir

from ._base import Case, Function, called, cplx


def _resonator(r, theta):
    """A biquad with poles r e^{±iθ} and zeros at ±1 (a band-pass resonator)."""
    return np.array([1.0, 0.0, -1.0]) * (1 - r), np.array([1.0, -2 * r * np.cos(theta), r * r])


def _zpk(z, p, k):
    return {"z": np.asarray(z), "p": np.asarray(p), "k": np.asarray(k)}


def _run_biquad(args, with_mid):
    res = iir.biquad_filter(args["b"], args["a"], args["x"], args.get("zi"), form=args.get("form", "tdf2"))
    return {"y": res[0], "zf": res[1]} if args.get("zi") is not None else {"y": res}


def _run_sos(args, with_mid):
    sos = np.asarray(args["sos"], dtype=np.float64)
    res = {}
    if with_mid:  # the cascade after each section: where a wrong section shows up first
        for s in range(sos.shape[0] - 1):
            res[f"section{s}"] = iir.sos_filter(args["sos"][: s + 1], args["x"], form=args["form"])
    res["y"] = iir.sos_filter(args["sos"], args["x"], form=args["form"])
    return res


def _design(fn):
    def run(args, with_mid):
        extra = (args["rp"],) if "rp" in args else ()
        res = fn(args["order"], *extra, args["wn"], btype=args["btype"], fs=args["fs"], output=args["output"])
        return {"b": res[0], "a": res[1]} if args["output"] == "ba" else {"sos": res}

    return run


FUNCTIONS = [
    Function("iir.biquad_filter", _run_biquad, ("y",),
             "fn(b, a, x, [zi], form) -> y (or (y, zf) when zi is given)"),
    Function("iir.sos_filter", _run_sos, ("y",),
             "fn(sos, x, form) -> y; intermediates section<s> (the cascade after section s)"),
    called("iir.tf_filter", "y"),
    called("iir.impulse_response", "h"),
    called("iir.biquad_impulse_closed_form", "h"),
    called("iir.frequency_response", "w", "h"),
    called("iir.sos_frequency_response", "w", "h"),
    called("iir.group_delay", "w", "gd"),
    Function("iir.butter", _design(iir.butter), ("sos",),
             "fn(order, wn, btype, fs, output) -> (b, a) or sos"),
    Function("iir.cheby1", _design(iir.cheby1), ("sos",),
             "fn(order, rp, wn, btype, fs, output) -> (b, a) or sos"),
    called("iir.bilinear", "bz", "az"),
    called("iir.impulse_invariance", "bz", "az"),
    called("iir.diagonal_ssm_filter", "y"),
    called("iir.buttap", "z", "p", "k"),
    called("iir.cheb1ap", "z", "p", "k"),
    called("iir.lp2bp_zpk", "z", "p", "k"),
    called("iir.bilinear_zpk", "z", "p", "k"),
    called("iir.zpk2tf", "b", "a"),
    called("iir.sos2tf", "b", "a"),
    called("iir.prewarp", "omega"),
    called("iir.analog_frequency_response", "w", "h"),
    called("iir.biquad_poles", "poles"),
    called("iir.scalar_ssm_to_iir", "b", "a"),
    called("iir.ssm_to_biquad", "b", "a"),
]

CASES = [
    Case("iir.biquad_filter/near_unit_circle", 701,
         lambda r: {"b": _resonator(0.999, 0.3)[0], "a": _resonator(0.999, 0.3)[1], "x": r.standard_normal(400), "form": "tdf2"},
         "poles at radius 0.999: a ring-down of ~1000 samples"),
    Case("iir.biquad_filter/df1_state", 702,
         lambda r: {"b": np.array([0.2, 0.1, 0.05]), "a": np.array([1.0, -1.2, 0.5]), "x": r.standard_normal((20, 2)), "form": "df1",
                    "zi": r.standard_normal((4, 2))},
         "direct form I with an initial state, two channels", outputs=("y", "zf")),
    Case("iir.sos_filter/cheby1_near_unit_circle", 703,
         lambda r: {"sos": iir.cheby1(6, 1.0, 0.05, output="sos"), "x": r.standard_normal(300), "form": "tdf2"},
         "narrow Chebyshev I low-pass: poles near z = 1"),
    Case("iir.sos_filter/butter_bandpass_df1", 704,
         lambda r: {"sos": iir.butter(3, [0.2, 0.3], btype="bandpass", output="sos"), "x": r.standard_normal((64, 2)), "form": "df1"},
         "three-section band-pass, direct form I"),
    Case("iir.tf_filter/order4", 705,
         lambda r: {"b": iir.butter(4, 0.3, output="ba")[0], "a": iir.butter(4, 0.3, output="ba")[1], "x": r.standard_normal(50)},
         "direct-form transfer function of order 4"),
    Case("iir.impulse_response/near_unit_circle", 706,
         lambda r: {"b": _resonator(0.9995, 1.0)[0], "a": _resonator(0.9995, 1.0)[1], "n": 300}, "radius 0.9995"),
    Case("iir.biquad_impulse_closed_form/repeated_and_complex", 707,
         lambda r: {"b": np.array([1.0, 0.5, 0.25]), "a": np.array([1.0, -1.8, 0.81]), "n": 40}, "a double pole at 0.9"),
    Case("iir.frequency_response/near_unit_circle", 708,
         lambda r: {"b": _resonator(0.999, 0.3)[0], "a": _resonator(0.999, 0.3)[1], "w": np.linspace(0.25, 0.35, 41)},
         "a peak of height ~1 and width ~1e-3 around the pole angle"),
    Case("iir.sos_frequency_response/cheby1", 709,
         lambda r: {"sos": iir.cheby1(6, 1.0, 0.05, output="sos"), "w": 64}, "Chebyshev ripple in the pass band"),
    Case("iir.group_delay/near_unit_circle", 710,
         lambda r: {"b": _resonator(0.99, 0.5)[0], "a": _resonator(0.99, 0.5)[1], "w": np.linspace(0.3, 0.7, 21)},
         "group delay up to ~100 samples at the pole angle"),
    Case("iir.butter/lowpass_ba", 711,
         lambda r: {"order": 4, "wn": 0.2, "btype": "lowpass", "fs": 2.0, "output": "ba"}, "order 4 low-pass", outputs=("b", "a")),
    Case("iir.butter/bandpass_sos", 712,
         lambda r: {"order": 3, "wn": np.array([100.0, 300.0]), "btype": "bandpass", "fs": 2000.0, "output": "sos"},
         "band-pass at fs = 2000 (pre-warped)"),
    Case("iir.butter/highpass_narrow", 713,
         lambda r: {"order": 5, "wn": 0.01, "btype": "highpass", "fs": 2.0, "output": "sos"}, "cut-off 0.01: poles near z = 1"),
    Case("iir.cheby1/lowpass_sos", 714,
         lambda r: {"order": 5, "rp": 0.5, "wn": 0.3, "btype": "lowpass", "fs": 2.0, "output": "sos"}, "0.5 dB ripple"),
    Case("iir.bilinear/second_order", 715,
         lambda r: {"b": np.array([1.0]), "a": np.array([1.0, 0.2, 4.0]), "fs": 10.0}, "a lightly damped analog resonator"),
    Case("iir.impulse_invariance/second_order", 716,
         lambda r: {"b": np.array([1.0]), "a": np.array([1.0, 0.2, 4.0]), "fs": 10.0}, "the same resonator, impulse invariance"),
    Case("iir.diagonal_ssm_filter/chunked", 717,
         lambda r: {"lam": np.array([0.999 * np.exp(0.2j), 0.9, 0.5 * np.exp(-1j)]), "B": cplx(r, 3), "C": cplx(r, 3), "D": 0.3,
                    "x": r.standard_normal(200), "scan": "chunked"},
         "three complex modes, one at radius 0.999, across chunk boundaries"),
    Case("iir.diagonal_ssm_filter/associative", 718,
         lambda r: {"lam": np.array([0.99 * np.exp(0.5j), -0.8]), "B": cplx(r, 2), "C": cplx(r, 2), "D": 0.0,
                    "x": r.standard_normal((100, 2)), "scan": "associative"},
         "associative scan, two channels"),
    Case("iir.buttap/order5", 721, lambda r: {"order": 5}, "Butterworth prototype poles on the unit circle"),
    Case("iir.cheb1ap/order4", 722, lambda r: {"order": 4, "rp": 1.0}, "Chebyshev I prototype, 1 dB ripple"),
    Case("iir.lp2bp_zpk/narrow", 723,
         lambda r: {**_zpk(*iir.buttap(3)), "wo": 2.0, "bw": 0.01}, "a band 0.01 wide around 2 rad/s: pole pairs close together"),
    Case("iir.bilinear_zpk/high_fs", 724,
         lambda r: {**_zpk(*iir.cheb1ap(3, 0.5)), "fs": 1e3}, "fs = 1000: the poles land near z = 1"),
    Case("iir.zpk2tf/clustered", 725,
         lambda r: {"z": np.array([-1.0, -1.0, 1.0]), "p": 0.99 * np.exp(1j * np.array([0.1, -0.1, 0.12, -0.12])), "k": 0.5},
         "expansion of clustered poles near the unit circle"),
    Case("iir.sos2tf/three_sections", 726,
         lambda r: {"sos": iir.butter(5, 0.1, output="sos")}, "the product of the sections' polynomials"),
    Case("iir.prewarp/grid", 727, lambda r: {"f": np.array([1.0, 100.0, 400.0, 499.0]), "fs": 1000.0},
         "2 fs tan(pi f / fs), up to just below Nyquist"),
    Case("iir.analog_frequency_response/resonator", 728,
         lambda r: {"b": np.array([1.0]), "a": np.array([1.0, 0.02, 4.0]), "w": np.linspace(1.9, 2.1, 21)},
         "a lightly damped analog resonator around its peak"),
    Case("iir.biquad_poles/regimes", 729,
         lambda r: {"a": np.array([[1.0, -1.8, 0.81], [1.0, -2 * 0.999 * np.cos(0.3), 0.998001], [1.0, 0.5, -0.3], [1.0, 0.0, 0.0]])},
         "double, complex near the unit circle, real distinct, and zero poles"),
    Case("iir.scalar_ssm_to_iir/scalar", 730, lambda r: {"A": 0.9, "B": 0.5, "C": 2.0, "D": 0.1},
         "the first-order IIR of a scalar SSM (Eqs. 30–31 of Lutati et al. 2023, sign corrected)"),
    Case("iir.ssm_to_biquad/conjugate_pair", 731,
         lambda r: {"lam": 0.95 * np.exp(0.4j * np.array([1, -1])), "B": np.array([1.0 + 0.5j, 1.0 - 0.5j]),
                    "C": np.array([0.3 - 0.2j, 0.3 + 0.2j]), "D": 0.2},
         "a conjugate pair of modes as one real biquad"),
]
