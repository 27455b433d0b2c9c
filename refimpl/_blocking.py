"""One workspace budget for every blocked loop of the package.

Several vectorized functions process their data in blocks — query rows of attention and AFA,
groups of chunks of linear and LSH attention, slabs of blocks of the IIR block filter, time
steps of the selective scan — so that their temporaries stay cache-sized instead of growing with
the sequence (N × N logits, an (N, C, dv) cumulative sum, another copy of the signal). The
blocking never changes what is computed, only how much of it is held at once: every block is
an independent slice of the same formula. Each caller states what one item (a row, a chunk,
a block) costs in float64 numbers, and :func:`per_block` says how many items fit.

The budget is a machine property, not a property of a formula, so it is written once, here.
Tests shrink it (``monkeypatch.setattr(refimpl._blocking, "WORKSPACE_FLOATS", 1)``) to force
one item per block and check that the blocked result equals the unblocked one.
"""

from __future__ import annotations

__all__ = ["WORKSPACE_FLOATS", "MIN_BLOCK_ROWS", "per_block"]

#: float64 numbers the temporaries of one block may hold (2**18 = 2 MiB: a block stays in a
#: typical L2/L3 cache while it is shifted, exponentiated, summed and multiplied)
WORKSPACE_FLOATS = 2**18

#: the fewest query rows a block of attention (softmax or AFA) holds, whatever the budget says:
#: each block costs a few matrix products, and BLAS spends its time well only on large ones. With
#: 16- or 32-row blocks at N = 4096 … 8192 the many small multithreaded calls ran 2x to 20x slower
#: than 256-row blocks, worst when another process kept a core busy. A 256 x 8192 float64 block
#: (16 MiB) still fits a shared L3 cache.
MIN_BLOCK_ROWS = 256


def per_block(floats_per_item: int, *, minimum: int = 1) -> int:
    """How many items of ``floats_per_item`` float64 numbers each fit the workspace budget.

    At least ``minimum`` (default 1): an item larger than the budget is still processed, alone.

    Examples
    --------
    >>> per_block(1024) == WORKSPACE_FLOATS // 1024
    True
    >>> per_block(10**9)
    1
    """
    return max(minimum, WORKSPACE_FLOATS // max(1, int(floats_per_item)))
