"""Golden cases of :mod:`refimpl.positional`, chapter 5 (positional encodings): sinusoidal
encodings, their shift matrix, RoPE and its decay bound.
"""

import numpy as np

from refimpl import positional

from ._base import Case, Function, called, ordered


def _run_sinusoidal(args, with_mid):
    return ordered(
        {"freqs": positional.frequencies(args["d_model"], args["base"])},
        {"pe": positional.sinusoidal_encoding(args["n_positions"], args["d_model"], args["base"])},
        with_mid,
    )


FUNCTIONS = [
    Function("positional.sinusoidal_encoding", _run_sinusoidal, ("pe",), intermediates=("freqs",)),
    called("positional.relative_shift_matrix", "M"),
    called("positional.rope", "y"),
    called("positional.rope_complex", "y", as_complex=True, skip=("as_complex",),
           call="fn(x, positions, base, freqs) -> y, complex (..., N, d/2) (refimpl: as_complex=True)"),
    called("positional.rope_decay_bound", "bound"),
]

CASES = [
    Case("positional.sinusoidal_encoding/small", 501,
         lambda r: {"n_positions": 16, "d_model": 8, "base": 10000.0}, "16 positions, 8 channels"),
    Case("positional.sinusoidal_encoding/long", 502,
         lambda r: {"n_positions": 1024, "d_model": 4, "base": 100.0}, "1024 positions: arguments up to 1023 rad"),
    Case("positional.relative_shift_matrix/k5", 503,
         lambda r: {"k": 5.0, "d_model": 8, "base": 10000.0}, "the block rotation with PE(p + k) = M PE(p)"),
    Case("positional.rope/basic", 504,
         lambda r: {"x": r.standard_normal((2, 6, 8)), "positions": np.arange(6.0), "base": 10000.0}, "interleaved pairs"),
    Case("positional.rope/large_positions", 505,
         lambda r: {"x": r.standard_normal((5, 4)), "positions": np.array([0.0, 1e3, 1e5, 3e6, 1e8]), "base": 10000.0},
         "positions up to 1e8: the rotation angle is reduced exactly only in float64"),
    Case("positional.rope_complex/basic", 506,
         lambda r: {"x": r.standard_normal((6, 8)), "positions": np.arange(6.0) * 3, "base": 500.0}, "complex form, complex output"),
    Case("positional.rope_decay_bound/roformer", 507,
         lambda r: {"distances": np.array([0.0, 1.0, 10.0, 100.0, 250.0]), "d": 128, "base": 10000.0},
         "RoFormer's long-term decay curve at a few distances"),
]
