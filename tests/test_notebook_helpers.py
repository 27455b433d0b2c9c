"""The chapters' cost helper: fits a power law to measured time and memory and extrapolates."""

import numpy as np
import pytest

from refimpl._notebook import cost_at_scale, print_cost


def test_cost_at_scale_recovers_linear_memory_and_extrapolates(capsys):
    # np.ones(n) allocates exactly 8n bytes: the memory fit must find exponent 1 and 8 MB at 10^6.
    cost = cost_at_scale(np.ones, lambda n: ((n,), {}), [10_000, 40_000, 160_000], repeat=1)
    assert abs(cost["memory_exponent"] - 1.0) < 0.05
    assert cost["memory_at_target"] == pytest.approx(8e6, rel=0.1)
    assert cost["memory_per_item"] == pytest.approx(8, rel=0.05)
    assert cost["memory_at_target_affine"] == pytest.approx(8e6, rel=0.05)
    assert cost["time_at_target"] > 0 and cost["target"] == 10**6
    print_cost("ones", cost)
    out = capsys.readouterr().out
    assert "N = 1,000,000" in out and "extrapolated" in out and "fixed + per-item" in out


def test_cost_at_scale_extrapolates_by_the_given_orders(capsys):
    # a fixed cost bends the fitted exponent below the true order; given the orders, the time of the largest
    # size is scaled by (target / N_max)^order and memory is fitted as a + b N^order
    calls = []

    def fn(n):
        calls.append(n)
        return np.ones(n)

    cost = cost_at_scale(fn, lambda n: ((n,), {}), [10_000, 40_000], repeat=1, time_order=2, memory_order=1)
    assert cost["time_order"] == 2 and cost["memory_order"] == 1
    assert cost["time_at_target"] == pytest.approx(cost["times"][1] * (10**6 / 40_000) ** 2)
    assert cost["memory_at_target"] == pytest.approx(8e6, rel=0.05)  # 8 bytes per item, exactly linear
    quad = cost_at_scale(lambda n: np.ones((n, n)), lambda n: ((n,), {}), [100, 200, 400], repeat=1, memory_order=2)
    assert quad["memory_at_target"] == pytest.approx(8e12, rel=0.05)  # 8 N² bytes
    print_cost("ones", cost)
    out = capsys.readouterr().out
    assert "time ∝ N^2 from the largest size" in out and "memory a + b·N^1" in out and "fixed + per-item" not in out


def test_cost_at_scale_needs_two_sizes():
    with pytest.raises(ValueError, match="sizes"):
        cost_at_scale(np.ones, lambda n: ((n,), {}), [100, 100])


def test_cost_at_scale_traces_memory_in_one_thread():
    """The peak is taken on a call in one thread (the threads' workspaces overlap in time or not as the
    scheduling falls); timed calls keep the caller's thread count, which is restored afterwards."""
    from refimpl import _blocking
    from refimpl._notebook import cost_at_scale

    seen = []

    def fn(n):
        seen.append(_blocking.THREADS)
        return np.ones(n)

    original = _blocking.THREADS
    before = _blocking.THREADS = max(2, original)
    try:
        cost = cost_at_scale(fn, lambda n: ((n,), {}), [1000, 4000], repeat=2)
        assert _blocking.THREADS == before
    finally:
        _blocking.THREADS = original
    # the traced first call of each size in one thread, then two rounds of timed calls with the caller's threads
    assert seen == [1, 1, before, before, before, before]
    assert cost["peaks"][1] > cost["peaks"][0] >= 8000


def test_cost_at_scale_times_in_rounds_over_the_sizes():
    """Inputs made once per size, in order; each size's first call is the traced one; the timed calls go in
    rounds over all sizes, in alternating order (a burst of load hits every size alike), and each size keeps
    its best time. A function slowed only while the third round runs keeps the times of the first two."""
    import time

    made, calls = [], []

    def make(n):
        made.append(n)
        return (n,), {}

    def fn(n):
        calls.append(n)
        if 9 <= len(calls) <= 11:  # the third round (the first three calls are the traced ones)
            time.sleep(0.05)
        return np.ones(n)

    cost = cost_at_scale(fn, make, [1000, 2000, 4000], repeat=3)
    assert made == [1000, 2000, 4000]
    assert calls == [1000, 2000, 4000] + [1000, 2000, 4000] + [4000, 2000, 1000] + [1000, 2000, 4000]
    assert max(cost["times"]) < 0.05  # the slowed round lost to the best of the others


def test_print_cost_says_measured_when_the_target_is_the_largest_size(capsys):
    # chapter 13 times N = 10^6 itself: with a time order the value at the target is that measurement, not an
    # extrapolation (the label said "extrapolated")
    cost = cost_at_scale(np.ones, lambda n: ((n,), {}), [10_000, 40_000], target=40_000, repeat=1, time_order=1,
                         memory_order=1)
    assert cost["time_at_target"] == cost["times"][1]
    print_cost("ones", cost)
    last = capsys.readouterr().out.splitlines()[-1]
    assert "time as measured above" in last and "extrapolated" not in last
