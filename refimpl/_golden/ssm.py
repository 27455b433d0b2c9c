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


def _run_selective_fn(args, with_mid):
    out, last = ssm.selective_scan_fn(**args, return_last_state=True)
    res = {}
    if with_mid:  # the step sizes after the bias and the softplus, Eq. (11.21)
        step = args["delta"] if args.get("delta_bias") is None else args["delta"] + np.asarray(args["delta_bias"])[:, None]
        res["Delta"] = np.logaddexp(0.0, step) if args.get("delta_softplus") else np.array(step, dtype=float)
    res.update({"out": out, "last_state": last})
    return res


def _run_state_update(args, with_mid):
    out, new = ssm.selective_state_update(**args)
    res = {}
    if with_mid:  # the step sizes after the bias and the softplus, Eq. (11.21)
        step = args["dt"] if args.get("dt_bias") is None else args["dt"] + np.asarray(args["dt_bias"])
        res["Delta"] = np.logaddexp(0.0, step) if args.get("dt_softplus") else np.array(step, dtype=float)
    res.update({"out": out, "new_state": new})
    return res


def _decode_step(r, batch, heads, dim, N, groups=1, pool=None, pads=0):
    """Arguments of ``selective_state_update``: Mamba's layout (``heads`` = 0, per-channel A) or Mamba-2's (a scalar
    A per head over (dim, N), ``groups`` of B and C); with ``pool`` rows of states addressed by ``state_batch_indices``,
    the last ``pads`` entries padding (index -1)."""
    lead = (batch, heads, dim) if heads else (batch, dim)
    rows = pool or batch
    A = (np.broadcast_to(-np.exp(r.standard_normal(heads))[:, None, None], (heads, dim, N)).copy() if heads
         else -np.exp(r.standard_normal((dim, N))))
    args = {"state": r.standard_normal((rows,) + lead[1:] + (N,)), "x": r.standard_normal(lead),
            "dt": r.normal(-2.0, 1.0, lead), "A": A,
            "B": r.standard_normal((batch, groups, N) if heads else (batch, N)),
            "C": r.standard_normal((batch, groups, N) if heads else (batch, N)),
            "D": r.standard_normal(lead[1:]), "z": r.standard_normal(lead), "dt_bias": r.normal(0.5, 0.5, lead[1:]),
            "dt_softplus": True}
    if pool:
        idx = r.permutation(pool)[:batch]
        idx[batch - pads:] = -1
        args["state_batch_indices"] = idx
    return args


def _official(r, batch, dim, L, N, B, C, complex_A=False, gate=True):
    """Arguments of ``selective_scan_fn`` in mamba_ssm's layout; ``B``, ``C`` are shapes (``"2L"``: interleaved)."""
    A = -np.exp(r.standard_normal((dim, N)))
    if complex_A:
        A = -0.5 + 1j * np.pi * np.broadcast_to(np.arange(N), (dim, N))  # S4D-Lin
    draw = lambda shape: r.standard_normal(tuple(2 * L if s == "2L" else s for s in shape))  # noqa: E731
    return {"u": r.standard_normal((batch, dim, L)), "delta": r.normal(-2.0, 1.0, (batch, dim, L)), "A": A,
            "B": draw(B), "C": draw(C), "D": r.standard_normal(dim), "z": r.standard_normal((batch, dim, L)) if gate else None,
            "delta_bias": r.normal(0.5, 0.5, dim), "delta_softplus": True}


FUNCTIONS = [
    called("ssm.hippo_legs", "A", "B"),
    called("ssm.discretize", "Ab", "Bb"),
    called("ssm.ssm_kernel", "K"),
    called("ssm.s4d_kernel", "K"),
    called("ssm.s4_kernel_dplr", "K"),
    Function("ssm.ssm_recurrent", _run_ssm_modes, ("y",), intermediates=("K",)),
    Function("ssm.ssm_convolution", _run_ssm_conv, ("y",), intermediates=("K",)),
    Function("ssm.selective_scan", _run_selective, ("y", "h_last"), intermediates=("M",), optional=("h_last",)),
    Function("ssm.selective_scan_fn", _run_selective_fn, ("out", "last_state"), intermediates=("Delta",),
             optional=("last_state",)),
    Function("ssm.selective_state_update", _run_state_update, ("out", "new_state"), intermediates=("Delta",)),
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
    Case("ssm.selective_scan_fn/shared_gated", 813,
         lambda r: _official(r, 2, 4, 65, 4, B=(2, 4, 65), C=(2, 4, 65)),
         "mamba_ssm layout (batch, D, L), L = 65: shared B, C (batch, N, L), delta_bias, softplus, D, SiLU gate z"),
    Case("ssm.selective_scan_fn/grouped_time_invariant", 814,
         lambda r: {**_official(r, 1, 6, 17, 3, B=(1, 3, 3, 17), C=(6, 3), gate=False), "delta_bias": None,
                    "delta_softplus": False, "delta": r.uniform(0.01, 1.0, (1, 6, 17))},
         "B in G = 3 groups of two channels (batch, G, N, L), C time-invariant (D, N), Δ given directly"),
    Case("ssm.selective_scan_fn/complex_interleaved", 815,
         lambda r: _official(r, 1, 2, 33, 4, B=(1, 4, "2L"), C=(1, 2, 4, "2L"), complex_A=True),
         "complex A (S4D-Lin), B and C stored as real (…, 2L) pairs, output 2 Re <C, h>, complex last state"),
    Case("ssm.selective_scan_fn/odd_length", 816,
         lambda r: _official(r, 1, 1, 257, 2, B=(1, 2, 257), C=(1, 2, 257)),
         "L = 257 (one past a power of two: a partial last tile), gate and softplus", intermediates=False),
    Case("ssm.selective_state_update/mamba_decode", 817,
         lambda r: _decode_step(r, 3, 0, 16, 8),
         "one decoding step, Mamba's layout: state (batch, D, N), per-channel A, D, SiLU gate, dt_bias, softplus"),
    Case("ssm.selective_state_update/mamba2_heads_pool", 818,
         lambda r: _decode_step(r, 3, 4, 8, 4, groups=2, pool=5, pads=1),
         "Mamba-2's layout: 4 heads of 8 channels, a scalar A per head, 2 groups of B, C; 3 entries of a pool of 5 "
         "states (state_batch_indices), the last one padding"),
    Case("ssm.hippo_legs_online/ramp", 811,
         lambda r: {"u": np.cumsum(r.standard_normal((200, 1)), axis=0) / 10, "N": 6},
         "online LegS projection of a random walk, 200 steps"),
    Case("ssm.legs_reconstruct/points", 812,
         lambda r: {"c": r.standard_normal((3, 8)), "x": np.linspace(-1.0, 1.0, 33)}, "Legendre series on 33 points"),
]
