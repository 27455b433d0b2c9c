"""refimpl — a float64 NumPy/SciPy reference implementation of attention as adaptive filtering.

Each public module pairs with chapters of the book (``book.toml``):

``refimpl.sde``         the linear Itô SDE: model, exact discretization, sampling (chapter 1)
``refimpl.lyapunov``    closed-form differential Lyapunov covariances (chapter 2)
``refimpl.kalman``      Kalman filter, RTS smoother, parallel scan, dense GLS, weight matrices (chapter 3)
``refimpl.attention``   scaled dot-product and multi-head attention as data-dependent filters (chapter 4)
``refimpl.positional``  sinusoidal encodings and RoPE (chapter 5)
``refimpl.classical``   matched filter, Wiener–Hopf, LMS/RLS, beamforming (chapter 6)
``refimpl.afa``         Adaptive Filter Attention: tensor and isotropic forms, IRLS (chapters 7–8)
``refimpl.rt_sde``      the radial–tangential SDE, a reconstruction: RT precisions and attention (chapter 9)
``refimpl.mixing``      token mixing as filtering: FNet, gMLP's spatial gating, FFT long convolution, Hyena (chapter 10)
``refimpl.ssm``         HiPPO, S4/S4D kernels, recurrent vs convolutional SSMs, Mamba's selective scan (chapter 11)
``refimpl.random_features``  linear attention, Performer FAVOR+, RFA, Reformer LSH attention (chapter 12)
``refimpl.iir``         classical IIR filters: biquads, SOS, stability, s→z design, IIR ↔ SSM (chapter 13)
``refimpl.focus``       the Focus layer: adaptive IIR filters from a hypernetwork before chunked attention (chapter 14)
``refimpl.linear_rnn``  linear recurrences as adaptive filters: SSD (Mamba-2), GLA, RetNet, DeltaNet as LMS, RLS (chapter 16)

Every computation ``f`` has a loop twin ``f_loop`` that reads like the equation; tests assert
they agree, and check both against independent oracles (SciPy, closed forms). The tolerance
policy is in :mod:`refimpl._testing`.
"""

import importlib

_MODULES = ("afa", "attention", "classical", "focus", "iir", "kalman", "linear_rnn", "lyapunov", "mixing", "positional",
            "random_features", "rt_sde", "sde", "ssm")


def __getattr__(name: str):
    # The modules load on first use (PEP 562): ``from refimpl import kalman`` imports the Kalman chapter's
    # module and what it needs, not SciPy's signal package and the other thirteen (1.2 s for all of them).
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_MODULES))


__version__ = "0.1.0"

__all__ = [
    "afa",
    "attention",
    "classical",
    "focus",
    "iir",
    "kalman",
    "linear_rnn",
    "lyapunov",
    "mixing",
    "positional",
    "random_features",
    "rt_sde",
    "sde",
    "ssm",
    "__version__",
]
