"""``refimpl._blocking.in_parts``: independent parts in threads give the unthreaded result.

The split must change nothing: every part is computed by the same operations whether it runs
in a thread or in the caller, NumPy's error state reaches the threads, and an exception of a
part reaches the caller.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import refimpl._blocking as blocking


def _rows_softmax(x: np.ndarray, out: np.ndarray):
    """A ``run`` for in_parts: a row softmax of x[part] (a GEMM and ufuncs, like attention's blocks)."""

    def run(part: slice) -> None:
        s = x[part] @ np.swapaxes(x[part], -1, -2)
        s -= s.max(axis=-1, keepdims=True)
        np.exp(s, out=s)
        out[part] = s / s.sum(axis=-1, keepdims=True)

    return run


@pytest.mark.parametrize("n", [1, 2, 3, 7, 16])
def test_threaded_parts_are_bitwise_the_unthreaded_ones(monkeypatch, n):
    x = np.random.default_rng(n).standard_normal((n, 40, 8))
    threaded, single = np.empty((n, 40, 40)), np.empty((n, 40, 40))
    monkeypatch.setattr(blocking, "THREADS", 4)
    blocking.in_parts(_rows_softmax(x, threaded), n, elems=10**9)
    monkeypatch.setattr(blocking, "THREADS", 1)
    blocking.in_parts(_rows_softmax(x, single), n, elems=10**9)
    assert np.array_equal(threaded, single)


def _record(calls: list):
    def run(part: slice) -> None:
        calls.append((part.start, part.stop, threading.get_ident()))

    return run


def test_parts_cover_the_range_once_in_contiguous_slices(monkeypatch):
    monkeypatch.setattr(blocking, "THREADS", 3)
    calls = []
    blocking.in_parts(_record(calls), 10, elems=blocking.THREAD_MIN_ELEMS)
    spans = sorted(c[:2] for c in calls)
    assert spans == [(0, 3), (3, 6), (6, 10)]
    assert threading.get_ident() not in {c[2] for c in calls}  # the parts ran in the pool's threads


@pytest.mark.parametrize(
    "threads, n, elems", [(1, 10, 10**9), (4, 1, 10**9), (4, 10, blocking.THREAD_MIN_ELEMS - 1), (4, 0, 10**9)]
)
def test_one_call_in_the_caller_when_threads_do_not_pay(monkeypatch, threads, n, elems):
    monkeypatch.setattr(blocking, "THREADS", threads)
    calls = []
    blocking.in_parts(_record(calls), n, elems)
    assert calls == [(0, n, threading.get_ident())]


def test_threads_see_the_callers_numpy_error_state(monkeypatch):
    monkeypatch.setattr(blocking, "THREADS", 2)
    seen = {}

    def run(part: slice) -> None:
        seen[part.start] = np.geterr()["over"]
        np.exp(np.array([1000.0]))  # overflows: raises only under the caller's errstate

    with np.errstate(over="raise"), pytest.raises(FloatingPointError):
        blocking.in_parts(run, 2, elems=10**9)
    assert seen == {0: "raise", 1: "raise"}
    with np.errstate(over="ignore"):
        blocking.in_parts(run, 2, elems=10**9)  # the same parts, silent under the caller's "ignore"


def test_an_exception_of_a_part_reaches_the_caller(monkeypatch):
    monkeypatch.setattr(blocking, "THREADS", 2)

    def run(part: slice) -> None:
        if part.start > 0:
            raise ValueError(f"part {part.start}")

    with pytest.raises(ValueError, match="part 1"):
        blocking.in_parts(run, 2, elems=10**9)


def test_threads_default_to_the_usable_cores():
    assert 1 <= blocking.THREADS <= 8
    assert blocking.THREADS == min(8, blocking._usable_cores())


def _fake_blas(monkeypatch):
    """A stand-in for OpenBLAS's (set, get) thread count, recording every change."""
    state = {"n": 2, "sets": []}

    def set_fn(n):
        state["n"] = n
        state["sets"].append(n)

    monkeypatch.setattr(blocking, "_BLAS", (set_fn, lambda: state["n"]))
    return state


def test_one_thread_blas_sets_one_thread_and_restores_the_count(monkeypatch):
    state = _fake_blas(monkeypatch)
    state["n"] = 5
    with blocking.one_thread_blas() as limited:
        assert limited and state["n"] == 1
        with blocking.one_thread_blas() as inner:  # nested: no change, and no restore on leaving
            assert inner and state["n"] == 1
        assert state["n"] == 1
    assert state["n"] == 5 and state["sets"] == [1, 5]


def test_one_thread_blas_restores_once_when_callers_overlap_in_threads(monkeypatch):
    state = _fake_blas(monkeypatch)
    inside, release = threading.Barrier(3), threading.Event()

    def caller():
        with blocking.one_thread_blas():
            inside.wait()
            release.wait()

    threads = [threading.Thread(target=caller) for _ in range(2)]
    for t in threads:
        t.start()
    inside.wait()  # both callers are inside
    assert state["n"] == 1
    release.set()
    for t in threads:
        t.join()
    assert state["n"] == 2 and state["sets"] == [1, 2]  # set once by the first, restored once by the last


def test_one_thread_blas_restores_the_count_after_an_exception(monkeypatch):
    state = _fake_blas(monkeypatch)
    with pytest.raises(RuntimeError), blocking.one_thread_blas():
        raise RuntimeError("inside")
    assert state["n"] == 2


def test_one_thread_blas_changes_nothing_without_an_openblas(monkeypatch):
    monkeypatch.setattr(blocking, "_BLAS", None)
    with blocking.one_thread_blas() as limited:
        assert limited is False


def test_parts_hold_blas_to_one_thread_only_when_asked_and_split(monkeypatch):
    """in_parts(one_blas=True): BLAS on one thread while two or more parts run in threads, restored
    after; left alone when the work runs in the caller (one part), or when not asked."""
    state = _fake_blas(monkeypatch)
    monkeypatch.setattr(blocking, "THREADS", 2)
    seen = []

    def run(part):
        seen.append(state["n"])

    blocking.in_parts(run, 4, elems=10**9, one_blas=True)
    assert seen == [1, 1] and state["n"] == 2 and state["sets"] == [1, 2]
    seen.clear()
    blocking.in_parts(run, 4, elems=10**9)  # not asked
    blocking.in_parts(run, 1, elems=10**9, one_blas=True)  # one part: in the caller
    blocking.in_parts(run, 4, elems=1, one_blas=True)  # too little work for threads
    assert seen == [2, 2, 2, 2] and state["sets"] == [1, 2]


def test_chunked_recurrences_hold_blas_to_one_thread_while_heads_run_in_threads(monkeypatch):
    """The forward and backward passes of SSD, GLA and the delta rule run their heads in threads with
    BLAS held to one thread: with heads of 128 dimensions their chunk products have more than 64 x 64
    outputs, which OpenBLAS would split over the same cores again."""
    from refimpl import linear_rnn as lr

    calls = []
    real = blocking.in_parts

    def spy(run, n, elems, *, one_blas=False):
        calls.append(one_blas)
        return real(run, n, elems, one_blas=one_blas)

    monkeypatch.setattr(blocking, "in_parts", spy)
    rng = np.random.default_rng(0)
    H, L, d = 2, 20, 3
    q, k, v, dy = rng.normal(size=(4, H, L, d))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    dt, A, B = rng.uniform(0.1, 1.0, (H, L)), -np.ones(H), rng.normal(size=(1, L, d))
    log_g, beta = -rng.uniform(0, 1, (H, L, d)), rng.uniform(0.1, 0.9, (H, L))
    lr.ssd(q, dt, A, B, B)
    lr.gated_linear_attention(q, k, v, log_g)
    lr.delta_rule(q, k, v, beta)
    lr.ssd_vjp(q, dt, A, B, B, None, dy)
    lr.gated_linear_attention_vjp(q, k, v, log_g, dy)
    lr.delta_rule_vjp(q, k, v, beta, dy)
    assert calls == [True] * 6


def test_numpys_openblas_is_found_and_its_thread_count_set():
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    if "openblas" not in str(blas.get("name", "")).lower():
        pytest.skip(f"NumPy's BLAS is {blas.get('name')}, not OpenBLAS")
    assert blocking._BLAS is not None, blocking._openblas_candidates()
    before = blocking._BLAS[1]()
    with blocking.one_thread_blas() as limited:
        assert limited and blocking._BLAS[1]() == 1
    assert blocking._BLAS[1]() == before


def _part_threads() -> int:
    return sum(t.name == "refimpl-part" for t in threading.enumerate())


def _slow_run(calls: list):
    def run(part: slice) -> None:
        calls.append(threading.get_ident())
        np.linalg.svd(np.ones((60, 60)))  # long enough for both parts to need a thread

    return run


def _no_part_threads(monkeypatch) -> None:
    """Wait for the threads left by earlier calls to end (their linger time shortened)."""
    import time

    monkeypatch.setattr(blocking, "_LINGER_S", 0.01)
    blocking.in_parts(_slow_run([]), 2, elems=10**9)  # wakes any waiting thread: it then waits 0.01 s
    deadline = time.monotonic() + 5.0
    while _part_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _part_threads() == 0


def test_a_call_right_after_another_reuses_its_threads(monkeypatch):
    monkeypatch.setattr(blocking, "THREADS", 2)
    _no_part_threads(monkeypatch)
    monkeypatch.setattr(blocking, "_LINGER_S", 10.0)  # no thread ends during the test
    seen = []
    for _ in range(4):
        calls = []
        blocking.in_parts(_slow_run(calls), 2, elems=10**9)
        seen.append(set(calls))
    assert len(set().union(*seen)) <= 3, seen  # threads are reused (a third at most, if one was not free yet)
    monkeypatch.setattr(blocking, "_LINGER_S", 0.01)
    blocking.in_parts(_slow_run([]), 2, elems=10**9)  # wakes the waiting threads with the short linger


def test_idle_threads_end_after_the_linger_time(monkeypatch):
    monkeypatch.setattr(blocking, "THREADS", 2)
    blocking.in_parts(_slow_run([]), 2, elems=10**9)
    assert _part_threads() >= 1
    _no_part_threads(monkeypatch)  # after a pause the next call starts new threads
    calls = []
    blocking.in_parts(_slow_run(calls), 2, elems=10**9)
    assert len(calls) == 2


def test_a_nested_call_runs_in_the_part_that_makes_it(monkeypatch):
    monkeypatch.setattr(blocking, "THREADS", 2)
    inner = {}

    def outer(part: slice) -> None:
        calls = []
        blocking.in_parts(_record(calls), 4, elems=10**9)  # would wait forever for busy pool threads
        inner[part.start] = (calls, threading.get_ident())

    blocking.in_parts(outer, 2, elems=10**9)
    for calls, ident in inner.values():
        assert calls == [(0, 4, ident)]


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork on this platform")
def test_a_forked_child_makes_its_own_pool(monkeypatch):
    import os

    monkeypatch.setattr(blocking, "THREADS", 2)
    blocking.in_parts(_record([]), 2, elems=10**9)  # the parent's pool exists
    pid = os.fork()
    if pid == 0:  # the child: the parent's threads are gone; a call must still complete
        import signal

        signal.alarm(20)  # a call that waits for the parent's threads would hang: end the child instead
        try:
            out = np.zeros(4)

            def run(part):
                out[part] = 1.0

            blocking.in_parts(run, 4, elems=10**9)
            os._exit(0 if out.sum() == 4 else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
