"""Golden cases of :mod:`refimpl.ssm`, chapter 11 (state space models): HiPPO, discretization,
kernels, recurrent and convolutional modes, the selective scan.
"""

import numpy as np

from refimpl import ssm

from ._base import Case, Function, called, cplx, ordered


def _run_ssm_modes(args, with_mid):
    operands = (args["u"], args["Ab"], args["Bb"], args["C"], args.get("D"))
    kernel = ssm.ssm_kernel(args["Ab"], args["Bb"], args["C"], args["u"].shape[-2], diagonal=args["diagonal"])
    return ordered({"K": kernel}, {"y": ssm.ssm_recurrent(*operands, diagonal=args["diagonal"])}, with_mid)


def _run_ssm_conv(args, with_mid):
    operands = (args["u"], args["Ab"], args["Bb"], args["C"], args.get("D"))
    kernel = ssm.ssm_kernel(args["Ab"], args["Bb"], args["C"], args["u"].shape[-2], diagonal=args["diagonal"])
    return ordered({"K": kernel}, {"y": ssm.ssm_convolution(*operands, diagonal=args["diagonal"])}, with_mid)


def _run_selective(args, with_mid):
    operands = (args["u"], args["delta"], args["A"], args["B"], args["C"], args.get("D"))
    y, h = ssm.selective_scan(*operands, discretization=args["discretization"], return_last_state=True)
    res = {}
    if with_mid:  # the data-dependent L x L matrix of each channel (Eq. (11.18)): y_d = M_d u_d (+ D u)
        res["M"] = ssm.semiseparable_matrix(*operands[1:], discretization=args["discretization"])
    res.update({"y": y, "h_last": h})
    return res


FUNCTIONS = [
    called("ssm.hippo_legs", "A", "B"),
    called("ssm.discretize", "Ab", "Bb"),
    called("ssm.ssm_kernel", "K"),
    called("ssm.s4d_kernel", "K"),
    called("ssm.s4_kernel_dplr", "K"),
    Function("ssm.ssm_recurrent", _run_ssm_modes, ("y",), intermediates=("K",)),
    Function("ssm.ssm_convolution", _run_ssm_conv, ("y",), intermediates=("K",)),
    Function("ssm.selective_scan", _run_selective, ("y", "h_last"), intermediates=("M",)),
    called("ssm.hippo_legs_online", "c"),
    called("ssm.legs_reconstruct", "f"),
]

CASES = [
    Case("ssm.hippo_legs/N8", 801, lambda r: {"N": 8}, "the LegS matrices, eigenvalues -1 … -8"),
    Case("ssm.discretize/bilinear_dense", 802,
         lambda r: {"A": ssm.hippo_legs(6)[0], "B": ssm.hippo_legs(6)[1], "step": 0.05, "method": "bilinear", "diagonal": False},
         "S4's bilinear rule on HiPPO-LegS"),
    Case("ssm.discretize/zoh_diagonal_small_step", 803,
         lambda r: {"A": np.array([[-0.5 + 3j, -1e-9 + 1j], [-2.0 + 0.0j, -0.5 - 7j]]), "B": cplx(r, 2, 2),
                    "step": np.array([1e-7, 0.3]), "method": "zoh", "diagonal": True},
         "zero-order hold per channel, Δ = 1e-7 and a mode with Re λ = -1e-9"),
    Case("ssm.ssm_kernel/dense_long", 804,
         lambda r: {**dict(zip(("Ab", "Bb"), ssm.discretize(*ssm.hippo_legs(8), 0.02))), "C": r.standard_normal(8), "L": 300,
                    "diagonal": False},
         "C Ab^l Bb for l < 300 (baby-step giant-step powers)"),
    Case("ssm.s4d_kernel/s4d_lin_conj_pairs", 805,
         lambda r: {"A": -0.5 + 1j * np.pi * np.arange(4), "B": np.ones(4, dtype=complex), "C": cplx(r, 2, 4) / 2,
                    "step": np.array([0.01, 0.1]), "L": 128, "method": "zoh", "conj_pairs": True},
         "S4D-Lin, two channels with steps 0.01 and 0.1, real kernel 2 Re K"),
    Case("ssm.s4_kernel_dplr/random_dplr", 806,
         lambda r: {"Lambda": -0.5 + 1j * np.sort(r.uniform(-10, 10, 6)), "P": cplx(r, 6) / 3, "Q": cplx(r, 6) / 3,
                    "B": cplx(r, 6), "C": cplx(r, 6), "step": 0.05, "L": 64},
         "Cauchy kernel + Woodbury + inverse FFT for a random DPLR matrix"),
    Case("ssm.ssm_recurrent/diagonal", 807,
         lambda r: {"u": r.standard_normal((2, 40, 3)), "Ab": 0.95 * np.exp(1j * r.uniform(-1, 1, (3, 4))), "Bb": cplx(r, 3, 4),
                    "C": cplx(r, 3, 4), "D": r.standard_normal(3), "diagonal": True},
         "recurrence of three diagonal channels, batch of two"),
    Case("ssm.ssm_convolution/dense", 808,
         lambda r: {"u": r.standard_normal((50, 2)), **dict(zip(("Ab", "Bb"), ssm.discretize(*ssm.hippo_legs(5), 0.05))),
                    "C": r.standard_normal(5), "D": np.array([0.5, -0.2]), "diagonal": False},
         "causal convolution with the HiPPO kernel"),
    Case("ssm.selective_scan/mamba", 809,
         lambda r: {"u": r.standard_normal((12, 3)), "delta": np.log1p(np.exp(r.standard_normal((12, 3)))),
                    "A": -np.exp(r.standard_normal((3, 4))), "B": r.standard_normal((12, 4)), "C": r.standard_normal((12, 4)),
                    "D": r.standard_normal(3), "discretization": "mamba"},
         "S6 with Mamba's simplified discretization; intermediate M (L x L per channel)"),
    Case("ssm.selective_scan/zoh_long", 810,
         lambda r: {"u": r.standard_normal((2, 400, 2)), "delta": 0.01 + 2 * r.random((2, 400, 2)),
                    "A": -np.array([[1e-8, 0.5, 3.0], [1.0, 10.0, 40.0]]), "B": r.standard_normal((2, 400, 3)),
                    "C": r.standard_normal((2, 400, 3)), "discretization": "zoh"},
         "exact ZOH, 400 steps, a mode with A = -1e-8 (B̄ -> Δ B) and a fast one", intermediates=False),
    Case("ssm.hippo_legs_online/ramp", 811,
         lambda r: {"u": np.cumsum(r.standard_normal((200, 1)), axis=0) / 10, "N": 6},
         "online LegS projection of a random walk, 200 steps"),
    Case("ssm.legs_reconstruct/points", 812,
         lambda r: {"c": r.standard_normal((3, 8)), "x": np.linspace(-1.0, 1.0, 33)}, "Legendre series on 33 points"),
]
