"""refimpl — a float64 NumPy/SciPy reference implementation of attention as adaptive filtering.

Each public module pairs with a chapter of the book (``book.toml``):

``refimpl.sde``        the linear Itô SDE: model, exact discretization, sampling (chapter 1)
``refimpl.lyapunov``   closed-form differential Lyapunov covariances (chapter 2)
``refimpl.ssm``        HiPPO, S4/S4D kernels, the Mamba selective scan (chapter 11)

Every computation ``f`` has a loop twin ``f_loop`` that reads like the equation; tests assert
they agree, and check both against independent oracles (SciPy, closed forms). The tolerance
policy is in :mod:`refimpl._testing`.
"""

from . import lyapunov, sde, ssm

__version__ = "0.1.0"

__all__ = ["lyapunov", "sde", "ssm", "__version__"]
