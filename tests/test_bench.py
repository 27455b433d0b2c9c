"""The benchmark harness (``python -m refimpl bench``): names, selection, baselines, limits, load, verdicts.

Everything here runs at tiny sizes; no timing is asserted except that it is positive and sane.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from refimpl import _bench as bench
from refimpl.__main__ import main as cli_main

NAME = re.compile(r"^[a-z0-9_]+\.[a-z0-9_]+\[[A-Za-z0-9_=,.\-]+\]$")
TEST_CASES = bench.cases("test")


# ----------------------------------------------------------------------------------------- names
@pytest.mark.parametrize("mode", bench.MODES)
def test_case_names_follow_module_function_variant(mode):
    all_cases = bench.cases(mode)
    names = [c.name for c in all_cases]
    assert len(names) == len(set(names)), "case names must be unique"
    for case in all_cases:
        assert NAME.match(case.name), case.name
        module = importlib.import_module(f"refimpl.{case.module}")
        assert callable(getattr(module, case.function)), f"{case.name}: refimpl.{case.module} has no {case.function}"


def test_full_mode_covers_the_hot_paths():
    functions = {f"{c.module}.{c.function}" for c in bench.cases("full")}
    for hot in (
        "attention.softmax_attention",
        "afa.isotropic_afa",
        "random_features.linear_attention",
        "random_features.performer_attention",
        "random_features.rfa_attention",
        "ssm.selective_scan",
        "ssm.selective_scan_vjp",
        "attention.softmax_attention_vjp",
        "ssm.s4d_kernel",
        "ssm.s4_kernel_dplr",
        "linear_rnn.ssd",
        "linear_rnn.gated_linear_attention",
        "linear_rnn.delta_rule",
        "mixing.fft_conv",
        "lyapunov.dle_covariance",
        "kalman.rts_smoother",
        "kalman.kalman_filter_scan",
        "iir.biquad_filter",
        "iir.sos_filter",
    ):
        assert hot in functions, hot
    softmax = [c.variant for c in bench.cases("full") if c.function == "softmax_attention" and "torch" not in c.variant]
    for want in ("N=1024,d=64", "N=16384,d=64", "N=16384,d=64,causal", "N=4096,d=128,causal", "N=4096,d=64,weights"):
        assert want in softmax, want


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode"):
        bench.cases("huge")


# -------------------------------------------------------------------------------------- --only
def _functions(selected):
    return {f"{c.module}.{c.function}" for c in selected}


def test_only_matches_modules_and_functions_by_substring():
    assert _functions(bench.select(TEST_CASES, ["softmax"])) == {"attention.softmax_attention", "attention.softmax_attention_vjp"}
    assert _functions(bench.select(TEST_CASES, ["LINEAR_RNN"])) == {
        "linear_rnn.ssd",
        "linear_rnn.gated_linear_attention",
        "linear_rnn.delta_rule",
    }
    # a substring of the variant alone ("causal") selects nothing: only module and function names count
    assert bench.select(TEST_CASES, ["causal"]) == []
    assert len(bench.select(TEST_CASES, None)) == len(TEST_CASES)


def test_only_matches_globs_and_several_patterns():
    assert _functions(bench.select(TEST_CASES, ["*_filter"])) == {"iir.biquad_filter", "iir.tf_filter", "iir.sos_filter"}
    assert _functions(bench.select(TEST_CASES, ["ssm.s4*"])) == {"ssm.s4d_kernel", "ssm.s4_kernel_dplr"}
    assert _functions(bench.select(TEST_CASES, ["kalman", "fft_conv"])) == {
        "kalman.rts_smoother",
        "kalman.kalman_filter_scan",
        "kalman.rts_smoother_scan",
        "mixing.fft_conv",
    }
    one = bench.select(TEST_CASES, ["attention.softmax_attention[N=300,d=8,causal]"])
    assert [c.variant for c in one] == ["N=300,d=8,causal"]


def test_only_without_match_lists_the_valid_names_and_exits_2(capsys):
    assert cli_main(["bench", "--quick", "--only", "no-such-case"]) == 2
    err = capsys.readouterr().err
    assert "no case matches --only no-such-case" in err
    for name in ("attention.softmax_attention", "kalman.rts_smoother", "iir.sos_filter"):
        assert f"  {name}\n" in err


# ------------------------------------------------------------------------------------ baselines
@pytest.mark.parametrize("case", TEST_CASES, ids=lambda c: c.name)
def test_baseline_agrees_with_refimpl(case):
    calls = case.make()
    err = bench._agreement(calls.refimpl(), calls.baseline())
    assert err <= min(case.tol, 1e-10), f"{case.name}: baseline differs by {err:.2e}"
    if calls.loop is not None:
        assert bench._agreement(calls.refimpl(), calls.loop()) <= 1e-10


def test_baselines_cross_block_boundaries():
    """The test sizes exceed one block/chunk, so the blocked and chunked code paths are exercised."""
    for case in TEST_CASES:
        for part in case.variant.split(","):
            key, _, value = part.partition("=")
            if key in ("N", "L") and case.module in ("attention", "afa", "random_features", "linear_rnn"):
                assert int(value) > (bench.BLOCK if case.module in ("attention", "afa") else bench.CHUNK), case.name


@pytest.mark.skipif(not bench._have("filterpy"), reason="filterpy not installed (optional peer)")
def test_filterpy_peer_agrees_with_refimpl():
    from refimpl import kalman

    model = bench._kalman_model(4, 0)
    z = np.random.default_rng(1).normal(size=(200, 2))
    err = bench._agreement(kalman.rts_smoother(z, *model), bench.filterpy_rts_smoother(z, *model))
    assert err <= 1e-10


def test_a_wrong_baseline_is_caught():
    """The agreement check can fail: a baseline off by one key in the causal mask disagrees."""
    q, k, v = np.random.default_rng(0).normal(size=(3, 40, 4))
    good = bench.blocked_softmax_attention(q, k, v, causal=True, block=16)
    wrong = bench.blocked_softmax_attention(q, k, v, causal=False, block=16)
    assert bench._agreement(good, wrong) > 1e-3


# ---------------------------------------------------------------------------- cost and limits
@pytest.mark.parametrize("mode", ("quick", "full"))
def test_cost_models_are_positive(mode):
    for case in bench.cases(mode):
        c = case.cost
        assert min(c.flops, c.exps, c.bytes) >= 0 and c.flops + c.exps + c.bytes > 0, case.name


def test_limit_probe_returns_sane_numbers():
    limits = bench.measure_limits(quick=True)
    assert 1e7 < limits.gemm_flops < 1e14
    assert 1e6 < limits.exp_rate < 1e12 and 1e6 < limits.exp_rate_large < 1e12
    assert 1e7 < limits.copy_bandwidth < 1e13


def test_limit_time_is_the_largest_of_the_three_bounds():
    limits = bench.Limits(gemm_flops=1e10, exp_rate=1e8, exp_rate_large=5e7, copy_bandwidth=1e9)
    assert limits.time(bench.Cost(flops=1e10)) == pytest.approx(1.0)
    assert limits.time(bench.Cost(flops=1e10, exps=3e8)) == pytest.approx(3.0)
    assert limits.time(bench.Cost(flops=1e9, exps=1e7, bytes=2e9)) == pytest.approx(2.0)


# ------------------------------------------------------------------------------ competing load
def test_competing_load_starts_and_is_stopped():
    with bench.competing_load() as proc:
        assert proc.poll() is None, "the competing process should be running inside the block"
        assert proc in bench._RUNNING
    assert proc.poll() is not None, "the competing process should be stopped after the block"
    assert proc not in bench._RUNNING


def test_competing_load_is_stopped_when_the_block_raises():
    with pytest.raises(RuntimeError):
        with bench.competing_load() as proc:
            raise RuntimeError("a case failed")
    assert proc.poll() is not None


def _running(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split()[2] not in ("Z", "X")  # a zombie has stopped running
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("paused", (False, True), ids=("spinning", "paused"))
def test_competing_load_ends_when_the_bench_is_killed(paused):
    """Even a SIGKILL of the bench (no finally clause runs) leaves no process behind, spinning or paused."""
    # a stand-in for the bench that starts the same child as competing_load (without importing refimpl)
    code = (
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-I', '-c', {bench._SPIN!r}], stdin=subprocess.PIPE,"
        " stdout=subprocess.PIPE)\n"
        "child.stdout.readline()\n"
        + ("child.stdin.write(b'p'); child.stdin.flush(); child.stdout.readline()\n" if paused else "")
        + "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    bench_proc = subprocess.Popen([sys.executable, "-I", "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(bench_proc.stdout.readline())
    assert _running(child)
    bench_proc.kill()
    bench_proc.wait()
    bench_proc.stdout.close()
    deadline = time.monotonic() + 10
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(child)


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_one_competing_process_spins_only_inside_busy():
    """The run's single competing process uses no CPU while paused, spins inside busy(), and pauses again after."""
    with bench.CompetingLoad() as load:
        pid = load.proc.pid
        assert not load.spinning
        before = _cpu_ticks(pid)
        time.sleep(0.3)
        assert _cpu_ticks(pid) - before <= 1, "a paused competing process must not use the CPU"
        for _ in range(2):  # resumed and paused again, twice: the same process serves every busy phase
            with load.busy() as proc:
                assert proc is load.proc and load.spinning
                start, deadline = _cpu_ticks(pid), time.monotonic() + 5
                while _cpu_ticks(pid) - start < 5 and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert _cpu_ticks(pid) - start >= 5, "the competing process should spin inside busy()"
            assert not load.spinning
            before = _cpu_ticks(pid)
            time.sleep(0.2)
            assert _cpu_ticks(pid) - before <= 1
        with pytest.raises(KeyError):
            with load.busy():
                raise KeyError("a case failed")
        assert not load.spinning and load.proc.poll() is None, "paused again after an error, still alive"
    assert load.proc.poll() is not None and load.proc not in bench._RUNNING


def test_a_full_run_starts_one_competing_process(monkeypatch, capsys):
    started = []

    class Counted(bench.CompetingLoad):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self.proc)

    monkeypatch.setattr(bench, "CompetingLoad", Counted)
    monkeypatch.setattr(bench, "cases", lambda mode="full": _toy_cases(slow_factor=2))
    monkeypatch.setattr(bench, "measure_limits", lambda quick=False: bench.Limits(1e10, 1e8, 1e8, 1e9))
    report = bench.run(quick=False)
    capsys.readouterr()
    assert len(started) == 1 and started[0].poll() is not None, "one competing process, stopped at the end"
    assert all(rec["ratio_busy"] is not None for rec in report["cases"])


# ---------------------------------------------------------------------------- run policy and time
@pytest.mark.parametrize("first", [1e-5, 1e-4, 1e-3, 4e-3, 0.01, 0.019, 0.021, 0.1, 0.5, 0.74, 0.76, 0.99, 1.01, 5.0, 30.0])
def test_run_plan_keeps_each_phase_within_its_budget(first):
    case = bench.Case("attention", "softmax_attention", "v", lambda: None, bench.Cost(flops=1.0), "b")
    plan = bench._plan(case, first, first, quick=False)
    pair = 2 * first
    if first > bench.SINGLE_RUN:
        assert (plan.runs, plan.stat) == (1, "median"), "a call over SINGLE_RUN is timed once (its warm-up)"
    elif first > bench.BEST_OF:
        assert (plan.runs, plan.stat) == (3, "median")
    else:
        low, high = bench.BEST_OF_RUNS
        assert plan.stat == "best" and low <= plan.runs <= high
        assert plan.runs * pair <= max(bench.BEST_OF_BUDGET, low * pair) + 1e-12, "best-of runs within the budget"
    quick = bench._plan(case, first, first, quick=True)
    assert quick.runs * pair <= max(bench.QUICK_BUDGET, 2 * pair) + 1e-12 and 1 <= quick.runs <= 10
    fixed = dataclasses.replace(case, repeats=5)
    assert (bench._plan(fixed, first, first, quick=False).runs, bench._plan(fixed, first, first, quick=True).runs) == (5, 5)


def test_measure_records_where_the_time_goes():
    x = np.random.default_rng(0).normal(size=(60, 60))
    case = bench.Case("attention", "softmax_attention", "toy", lambda: bench.Calls(lambda: x @ x, lambda: x @ x, lambda: x @ x),
                      bench.Cost(flops=1.0), "x @ x", limit_target=None)
    rec = bench.measure(case, None, quick=False)
    phases = rec["phase_s"]
    assert set(phases) == {"make", "settle", "warmup", "quiet", "peak", "loop", "busy"}
    assert all(t >= 0 for t in phases.values()) and sum(phases.values()) <= rec["case_wall_s"]


def test_loop_ratio_is_the_median_of_back_to_back_pairs(monkeypatch):
    """The loop-twin ratio pairs each loop call with a refimpl call right after it (the machine's
    speed drifts within a run): here the machine slows 3x between pairs, which a loop sample set
    against the refimpl time of an earlier phase would read as a 3x smaller ratio."""
    speed = {"factor": 1.0}

    def fake_timed(fn, wait=True):
        return fn() * speed["factor"], None

    calls = bench.Calls(lambda: 1.0, lambda: 1.0, lambda: 30.0)
    case = bench.Case("linear_rnn", "ssd", "toy", lambda: calls, bench.Cost(flops=1.0), "x", limit_target=None,
                      loop_target=20.0, contention=False, memory=False)
    order = []

    def timed(fn, wait=True):
        t, out = fake_timed(fn)
        order.append(fn)
        if fn is calls.refimpl and len(order) > 2:  # after each refimpl call of the loop phase the machine slows
            speed["factor"] *= 3.0
        return t, out

    monkeypatch.setattr(bench, "_timed", timed)
    monkeypatch.setattr(bench, "_agreement", lambda a, b: 0.0)
    rec = bench.measure(case, None, quick=False)
    loop_phase = order[-2 * bench.LOOP_PAIRS:]
    assert loop_phase == [calls.loop, calls.refimpl] * bench.LOOP_PAIRS, "loop and refimpl alternate"
    assert rec["loop_pairs"] == bench.LOOP_PAIRS == 3
    assert rec["loop_ratio"] == pytest.approx(30.0), "each pair is timed under one machine state"
    assert bench._verdicts(case, rec)["loop"] == "PASS"
    speed["factor"] = 1.0
    order.clear()
    quick = bench.measure(case, None, quick=True)
    assert quick["loop_pairs"] == 1 and order.count(calls.loop) == 1


def test_loop_pairs_time_refimpl_after_its_warm_up(monkeypatch):
    """In each loop pair refimpl runs untimed for LOOP_WARMUP seconds after the loop twin, then its
    sample is timed (the first threaded calls after the single-threaded loop are slow); not in quick mode."""
    log = []
    calls = bench.Calls(lambda: log.append("ref") or 1.0, lambda: 1.0, lambda: log.append("loop") or 30.0)

    def timed(fn, wait=True):
        log.append("timed")
        return fn(), None

    monkeypatch.setattr(bench, "_timed", timed)
    monkeypatch.setattr(bench, "_agreement", lambda a, b: 0.0)
    monkeypatch.setattr(bench, "LOOP_WARMUP", 0.01)
    case = bench.Case("linear_rnn", "ssd", "toy", lambda: calls, bench.Cost(flops=1.0), "x", limit_target=None,
                      loop_target=20.0, contention=False, memory=False)
    rec = bench.measure(case, None, quick=False)
    assert rec["loop_ratio"] == pytest.approx(30.0)
    text = " ".join(log)
    pairs = text[text.index("timed loop"):].split("timed loop")[1:]
    assert len(pairs) == bench.LOOP_PAIRS
    for pair in pairs:
        warm, _, sample = pair.strip().rpartition("timed")
        assert warm.split() and set(warm.split()) == {"ref"}, "untimed refimpl calls first"
        assert sample.split() == ["ref"]
    log.clear()
    rec = bench.measure(case, None, quick=True)
    assert " ".join(log).endswith("timed loop"), "quick mode: no warm-up and no refimpl call after the loop"
    assert rec["loop_ratio"] == pytest.approx(30.0 / rec["time_s"])


def _scripted_case(monkeypatch, durations: dict):
    """A toy case whose calls take the scripted ``durations`` (each function's list, popped in order) instead of
    being timed; returns the case and the list of the calls made, by name."""
    calls = bench.Calls(lambda: "refimpl", lambda: "baseline")
    order = []

    def timed(fn, wait=True):
        name = fn()
        order.append(name)
        return durations[name].pop(0), name

    monkeypatch.setattr(bench, "_timed", timed)
    monkeypatch.setattr(bench, "_agreement", lambda a, b: 0.0)
    case = bench.Case("attention", "softmax_attention", "toy", lambda: calls, bench.Cost(flops=1.0), "x",
                      limit_target=None, contention=False, memory=False)
    return case, order


def test_single_run_case_times_its_faster_function_twice(monkeypatch):
    """A case whose slower function is over SINGLE_RUN is timed once (the warm-ups are the samples),
    but its faster function runs once more and keeps the faster call: a first call can carry a
    one-time cost (the kernel compacting memory for a first large array); the slow one is not rerun."""
    durations = {"refimpl": [0.5, 0.1, 0.1, 0.1], "baseline": [2.0, 2.0, 2.0]}  # refimpl's first call: +0.4 s
    case, order = _scripted_case(monkeypatch, durations)
    rec = bench.measure(case, None, quick=False)
    assert order == ["baseline", "refimpl", "refimpl"], "the slow baseline is not rerun"
    assert (rec["time_s"], rec["baseline_s"], rec["runs"], rec["rerun"]) == (0.1, 2.0, 1, "refimpl")
    assert "1 run, refimpl best of 2" in "\n".join(bench._case_lines(case, rec, quick=False))
    durations.update(refimpl=[0.05, 0.3], baseline=[2.0])  # the warm-up was the faster call: it stays
    order.clear()
    assert bench.measure(case, None, quick=False)["time_s"] == 0.05
    durations.update(refimpl=[0.5], baseline=[2.0])
    order.clear()
    assert bench.measure(case, None, quick=True)["rerun"] is None and order == ["baseline", "refimpl"]


def test_plan_is_chosen_from_a_second_call_when_the_first_is_just_over_best_of(monkeypatch):
    """A warm-up between BEST_OF and PLAN_RECHECK · BEST_OF is followed by a second call of each function: a
    first call slowed by one-time costs must not turn a short call's best-of runs into the median of 3."""
    durations = {"refimpl": [0.03] + [0.004] * 40, "baseline": [0.006] * 41}  # refimpl's first call: one-time costs
    case, order = _scripted_case(monkeypatch, durations)
    rec = bench.measure(case, None, quick=False)
    assert order[:4] == ["baseline", "refimpl", "baseline", "refimpl"], "a second call of each before the plan"
    assert rec["stat"] == "best" and rec["time_s"] == 0.004 and rec["baseline_s"] == 0.006
    durations.update(refimpl=[0.05] * 5, baseline=[0.006] * 5)  # still over BEST_OF on the second call: median of 3
    order.clear()
    rec = bench.measure(case, None, quick=False)
    assert (rec["stat"], rec["runs"], rec["time_s"]) == ("median", 3, 0.05) and len(order) == 2 + 2 + 6
    durations.update(refimpl=[0.5, 0.01, 0.01, 0.01], baseline=[0.006] * 4)  # over PLAN_RECHECK · BEST_OF: no second call
    order.clear()
    rec = bench.measure(case, None, quick=False)
    assert order[:3] == ["baseline", "refimpl", "refimpl"] and rec["stat"] == "median"


def test_time_by_function_adds_the_cases_largest_first():
    records = [
        dict(module="a", function="f", variant="x", case_wall_s=1.0),
        dict(module="a", function="f", variant="y", case_wall_s=2.5),
        dict(module="a", function="f", variant="z,vs-torch", case_wall_s=3.0),
        dict(module="b", function="g", variant="x", case_wall_s=0.5),
    ]
    assert list(bench.time_by_family(records).items()) == [("a.f", 3.5), ("a.f vs torch", 3.0), ("b.g", 0.5)]


def test_fixed_protocol_compares_the_first_output():
    calls = iter(range(100))
    x = np.ones(3)
    case = bench.Case("attention", "softmax_attention", "toy,first", lambda: bench.Calls(lambda: x * next(calls), lambda: x * 0),
                      bench.Cost(flops=1.0), "zeros", limit_target=None, repeats=3, contention=False, memory=False)
    rec = bench.measure(case, None, quick=False)
    assert rec["runs"] == 3 and rec["agree"] == 0.0, "the first refimpl output (0 · x) is the one compared"


# ---------------------------------------------------------------------------- cost models
def test_cost_models_do_not_depend_on_the_baselines_blocking(monkeypatch):
    """A lower bound counts work every code must do: the baselines' block and chunk sizes are not in it."""
    before = {c.name: c.cost for c in bench.cases("full")}
    monkeypatch.setattr(bench, "CHUNK", 16)
    monkeypatch.setattr(bench, "BLOCK", 64)
    after = {c.name: c.cost for c in bench.cases("full")}
    assert after == before


def test_cost_models_count_the_work_that_cannot_be_avoided():
    full = {c.name: c.cost for c in bench.cases("full")}
    n, d = 4096, 64
    plain, weights = full[f"attention.softmax_attention[N={n},d={d}]"], full[f"attention.softmax_attention[N={n},d={d},weights]"]
    assert weights.bytes - plain.bytes == 8 * n * n, "return_weights writes the N x N weights"
    causal = full[f"attention.softmax_attention[N={n},d={d},causal,weights]"]
    assert causal.flops == pytest.approx(plain.flops * (n + 1) / (2 * n)) and causal.bytes - 8 * 4 * n * d == 4 * n * (n + 1)
    for kind in ("linear_attention[N=8192,d=64", "performer_attention[N=8192,d=64,m=256", "rfa_attention[N=8192,d=64,m=256"):
        assert full[f"random_features.{kind},causal]"] == full[f"random_features.{kind}]"], kind
    # RFA projects on m/2 frequencies, Performer on m directions
    rfa, performer = full["random_features.rfa_attention[N=8192,d=64,m=256]"], full["random_features.performer_attention[N=8192,d=64,m=256]"]
    assert performer.flops - rfa.flops == 2 * 8192 * 64 * 256
    afa_cost = full["afa.isotropic_afa[N=4096,d=64,causal]"]
    assert afa_cost.flops == pytest.approx(2 * full["attention.softmax_attention[N=4096,d=64,causal]"].flops)
    for fn in ("ssd[H=4,L=8192,d=64]", "gated_linear_attention[H=4,L=8192,d=64,gate-per-channel]"):
        assert full[f"linear_rnn.{fn}"].flops == 4 * 4 * 8192 * 64**2  # the recurrent form: 4d² per step and head
    assert full["linear_rnn.delta_rule[H=4,L=8192,d=64]"].flops == 6 * 4 * 8192 * 64**2
    # the filter alone cannot cost more per step than the filter and smoother together
    for n in (2, 8, 32):
        scan = next(c for name, c in full.items() if name.startswith("kalman.kalman_filter_scan") and name.endswith(f"n={n}]"))
        rts = next(c for name, c in full.items() if name.startswith("kalman.rts_smoother") and name.endswith(f"n={n}]"))
        steps = {c.name: int(c.variant.split(",")[0][2:]) for c in bench.cases("full") if c.module == "kalman"}
        scan_steps = next(v for k, v in steps.items() if "scan" in k and k.endswith(f"n={n}]"))
        rts_steps = next(v for k, v in steps.items() if "rts" in k and k.endswith(f"n={n}]"))
        assert scan.flops / scan_steps < rts.flops / rts_steps


def test_fft_count_is_below_the_split_radix_count():
    """The FFT convolution's flops: below the real split-radix count, above the modified split radix's leading term less 4m."""
    (case,) = [c for c in bench.cases("full") if c.function == "fft_conv"]
    n, d = 65536, 64
    m = 2**17  # next fast length of 2N − 1
    split_radix = 2 * m * np.log2(m) - 4 * m + 6
    assert case.cost.flops < (3 * split_radix + 3 * m) * d
    assert case.cost.flops > (3 * (17 / 9 * m * np.log2(m) - 5 * m) + 3 * m) * d


def test_hot_paths_have_a_limit_target():
    for case in bench.cases("full"):
        if case.module in ("attention", "afa", "random_features", "ssm", "linear_rnn", "mixing", "lyapunov") and "vs-torch" not in case.variant:
            assert case.limit_target == pytest.approx(1 / 3), case.name


@pytest.mark.skipif(not bench._have("torch"), reason="torch not installed (optional peer)")
def test_torch_peer_runs_the_flash_kernel_and_agrees():
    (case,) = [c for c in bench.cases("quick") if c.variant.endswith("causal,vs-torch")]
    calls = case.make()
    assert "flash CPU kernel" in calls.note
    assert bench._agreement(calls.refimpl(), calls.baseline()) <= 1e-10


# ---------------------------------------------------------------------------- output and verdicts
def test_quick_mode_prints_no_verdicts_and_json_has_everything(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert cli_main(["bench", "--quick", "--only", "fft_conv", "--only", "dle", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "PASS" not in printed and "MISS" not in printed
    assert "ratios not judged (quick mode)" in printed and "quick mode: no verdicts" in printed
    report = json.loads(out.read_text())
    assert report["lines"] == printed.rstrip("\n").split("\n"), "--json holds every printed line"
    env = report["environment"]
    assert env["numpy"] == np.__version__ and env["cpu_count"] >= 1 and "thread_env" in env
    assert "Build Dependencies" in env["numpy_config"]
    assert set(env["huge_pages"]) == {"numpy_madvise", "enabled", "defrag"} and "huge pages" in report["lines"][1]
    assert report["limits"]["gemm_flops"] > 0 and report["wall_time_s"] > 0
    names = [c["name"] for c in report["cases"]]
    assert names == [c.name for c in bench.select(bench.cases("quick"), ["fft_conv", "dle"])]
    for case in report["cases"]:
        assert case["time_s"] > 0 and case["baseline_s"] > 0
        assert case["ratio"] == pytest.approx(case["time_s"] / case["baseline_s"])
        assert case["agree"] <= case["tol"] and case["peak_bytes"] > 0
        assert case["fraction"] == pytest.approx(case["limit_s"] / case["time_s"])
        assert case["verdicts"] == {} and case["ratio_busy"] is None


def _toy_cases(slow_factor: float):
    """Two cheap cases with known answers: an exact baseline, and a refimpl that is slower on purpose."""
    x = np.random.default_rng(0).normal(size=(80, 80))

    def make_fast():
        return bench.Calls(lambda: x @ x, lambda: x @ x)

    def make_slow():
        def slow():
            for _ in range(int(slow_factor)):
                y = x @ x
            return y

        return bench.Calls(slow, lambda: x @ x)

    cost = bench.Cost(flops=2 * 80**3)
    return [
        bench.Case("attention", "softmax_attention", "toy,fast", make_fast, cost, "x @ x", base_target=None, limit_target=None),
        bench.Case("attention", "softmax_attention", "toy,slow", make_slow, cost, "x @ x", limit_target=None),
    ]


def test_full_mode_judges_quiet_and_busy_and_check_fails_on_a_miss(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(bench, "cases", lambda mode="full": _toy_cases(slow_factor=10))
    monkeypatch.setattr(bench, "measure_limits", lambda quick=False: bench.Limits(1e10, 1e8, 1e8, 1e9))
    out = tmp_path / "full.json"
    assert cli_main(["bench", "--check", "--json", str(out)]) == 1
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    fast, slow = report["cases"]
    assert fast["ratio_busy"] is not None and slow["ratio_busy"] is not None, "measured under contention too"
    assert slow["verdicts"]["baseline"] == "MISS" and slow["verdicts"]["agree"] == "PASS"
    assert report["missed"] == ["attention.softmax_attention[toy,slow] (baseline)"]
    assert "MISS attention.softmax_attention[toy,slow] (baseline)" in printed
    assert "ratio <= 1.5x quiet and busy" in printed and "total wall time" in printed
    assert report["within_wall_target"] is True and report["wall_target_s"] == 180.0
    assert "within the 180 s budget of a full run on a quiet machine" in printed
    assert set(report["time_by_function_s"]) == {"attention.softmax_attention"}
    assert report["time_by_function_s"]["attention.softmax_attention"] == pytest.approx(
        sum(c["case_wall_s"] for c in report["cases"]))


def test_the_time_budget_is_judged_for_a_run_of_every_case_only(monkeypatch, capsys):
    monkeypatch.setattr(bench, "cases", lambda mode="full": _toy_cases(slow_factor=2))
    monkeypatch.setattr(bench, "measure_limits", lambda quick=False: bench.Limits(1e10, 1e8, 1e8, 1e9))
    monkeypatch.setattr(bench, "WALL_TARGET", {"full": 0.0, "quick": 20.0})  # no run can be that fast
    report = bench.run(quick=False)
    assert report["within_wall_target"] is False and "over the 0 s budget of a full run" in capsys.readouterr().out
    report = bench.run(quick=True, only=["softmax"])
    assert report["within_wall_target"] is None and "(a selection of cases)" in capsys.readouterr().out


def test_verdicts_follow_the_targets():
    case = bench.Case("attention", "softmax_attention", "v", lambda: None, bench.Cost(flops=1.0), "b",
                      loop_target=20.0, memory_bound=1000)
    rec = dict(agree=1e-15, ratio=1.2, ratio_busy=1.6, fraction=0.5, loop_ratio=25.0, peak_bytes=999)
    assert bench._verdicts(case, rec) == {"agree": "PASS", "baseline": "MISS", "limit": "PASS", "loop": "PASS",
                                          "memory": "PASS"}
    rec.update(agree=1e-9, ratio_busy=1.4, fraction=0.2, loop_ratio=None, peak_bytes=None)
    assert bench._verdicts(case, rec) == {"agree": "MISS", "baseline": "PASS", "limit": "MISS", "loop": "MISS",
                                          "memory": "MISS"}


def test_fixed_protocol_cases_take_every_run_and_stop_over_budget():
    """The PyTorch comparison's protocol: median of a fixed number of runs, no contention phase."""
    x = np.random.default_rng(0).normal(size=(50, 50))
    case = bench.Case("attention", "softmax_attention", "toy,fixed", lambda: bench.Calls(lambda: x @ x, lambda: x @ x),
                      bench.Cost(flops=1.0), "x @ x", limit_target=None, repeats=5, contention=False, memory=False)
    rec = bench.measure(case, None, quick=False)
    assert rec["runs"] == 5 and rec["stat"] == "median" and rec["ratio_busy"] is None and rec["peak_bytes"] is None
    assert rec["verdicts"]["agree"] == "PASS"
    rec = bench.measure(case, None, quick=False, over_budget=0.0)  # every call is over a zero budget
    assert rec["runs"] == 1 and rec["over_budget"] and rec["verdicts"]["baseline"] == "MISS"


def test_best_of_runs_go_by_blocks_each_after_a_settle(monkeypatch):
    """Best-of runs of the full bench: refimpl, baseline, baseline, refimpl in blocks of half the
    runs, one settle before each block and none inside it (a short call timed right after the other
    function's two-thread products runs next to their spinning BLAS threads); the median-of-3 runs
    alternate call by call, each after a settle. Best-of plans are even."""
    events = []
    monkeypatch.setattr(bench, "settle", lambda max_wait=bench.SETTLE_MAX: events.append("settle") or 0.0)

    def timed(fn, wait=True):
        events.append(fn() + (" waits" if wait else ""))
        return {"R": 1.0, "B": 2.0}[fn()] - 0.01 * len(events), None

    monkeypatch.setattr(bench, "_timed", timed)
    calls = bench.Calls(lambda: "R", lambda: "B")
    t_ref, t_base = bench._sample(calls, bench._Plan(6, "best"), blocks=True)
    blocks = [["R"] * 3, ["B"] * 3, ["B"] * 3, ["R"] * 3]
    assert events == [e for block in blocks for e in ["settle"] + block]
    assert (t_ref, t_base) == (pytest.approx(1.0 - 0.16), pytest.approx(2.0 - 0.12)), "the best of each"
    events.clear()
    bench._sample(calls, bench._Plan(4, "best"))  # quick mode: call by call, no waits
    assert events == ["R", "B", "B", "R", "R", "B", "B", "R"]
    events.clear()
    bench._sample(calls, bench._Plan(3, "median"), blocks=True)
    assert events == ["R waits", "B waits", "B waits", "R waits", "R waits", "B waits"]
    case = bench.Case("attention", "softmax_attention", "v", lambda: None, bench.Cost(flops=1.0), "b")
    assert all(bench._plan(case, t, t, quick=False).runs % 2 == 0 for t in (1e-5, 1e-3, 4e-3, 0.01, 0.019))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread states from /proc")
def test_settle_waits_for_running_threads_and_not_otherwise():
    import threading

    bench.settle()  # BLAS threads of earlier tests asleep
    assert bench.settle() < 0.05  # nothing runs: no wait

    stop = time.perf_counter() + 0.15
    block = bytes(1 << 22)

    def spin():  # runnable throughout: hashing releases the GIL (a pure-Python loop would sleep on it whenever
        while time.perf_counter() < stop:  # the main thread holds it, and settle could see no running thread)
            hashlib.sha256(block).digest()

    t = threading.Thread(target=spin)
    t.start()
    try:
        assert bench._running_threads() >= 1
        waited = bench.settle()
    finally:
        t.join()
    assert 0.05 < waited <= bench.SETTLE_MAX + 0.1
    assert bench.settle(max_wait=0.0) < 0.05  # the cap holds


def test_environment_reports_numpy_huge_page_advice():
    multiarray = pytest.importorskip("numpy._core.multiarray")
    if not hasattr(multiarray, "_set_madvise_hugepage"):
        pytest.skip("this NumPy cannot toggle its huge-page advice")
    before = multiarray._set_madvise_hugepage(False)  # returns the previous setting
    try:
        off = bench.environment()["huge_pages"]
        multiarray._set_madvise_hugepage(True)
        on = bench.environment()["huge_pages"]
    finally:
        multiarray._set_madvise_hugepage(before)
    assert off["numpy_madvise"] is False and on["numpy_madvise"] is True
    assert "not advised by NumPy" in bench._huge_text(off) and bench._huge_text(on).startswith("advised by NumPy")
    for key in ("enabled", "defrag"):  # the kernel's choice, bracketed in /sys, or None where there is none
        assert on[key] is None or on[key] in ("always", "madvise", "never", "defer", "defer+madvise")


# ------------------------------------------------------------------------------------ a new user's findings
def test_the_help_examples_match_cases(capsys):
    """Brackets in a pattern are literal (a variant), never a character class: the help's bracketed examples match."""
    fast = bench.select(TEST_CASES, ["linear_rnn.ssd[*fast*]"])
    assert fast and all(c.function == "ssd" and "fast" in c.variant for c in fast)
    torch_like = bench.Case("attention", "softmax_attention", "H=8,N=8192,d=64,vs-torch", lambda: None, bench.Cost(), "")
    assert bench._matches(torch_like, "attention.softmax_attention[*vs-torch]")
    assert not bench._matches(torch_like, "attention.softmax_attention[*causal*]")
    # a bracketed prefix without wildcards is a substring of the full name
    assert bench.select(TEST_CASES, ["ssd[H="]) and all(c.function == "ssd" for c in bench.select(TEST_CASES, ["ssd[H="]))
    with pytest.raises(SystemExit):
        cli_main(["bench", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    assert "linear_rnn.ssd[*fast*]" in help_text and "fraction = limit / refimpl time" in help_text


def test_a_misspelled_name_gets_a_suggestion(capsys):
    assert cli_main(["bench", "--quick", "--only", "gated_linar_attention"]) == 2
    hint = capsys.readouterr().err.splitlines()[-1]
    assert hint.startswith("did you mean: ") and "linear_rnn.gated_linear_attention" in hint


def test_quick_loop_ratio_divides_by_the_quiet_time(monkeypatch):
    """Quick mode: one loop-twin run against the quiet time measured before (a cold call right after the loop
    twin gave 0.6x to 18x for the same case)."""
    x = np.random.default_rng(0).normal(size=(60, 60))

    def loop():
        time.sleep(0.02)
        return x @ x

    case = bench.Case("linear_rnn", "ssd", "toy", lambda: bench.Calls(lambda: x @ x, lambda: x @ x, loop),
                      bench.Cost(flops=1.0), "x @ x", loop_target=20.0)
    rec = bench.measure(case, bench.Limits(1e10, 1e8, 1e8, 1e9), quick=True)
    assert rec["loop_pairs"] == 1 and rec["loop_ratio"] == pytest.approx(rec["loop_s"] / rec["time_s"])
    line = bench._case_lines(case, rec, quick=True)[2]
    assert "(against the quiet time)" in line


def test_small_times_and_fractions_keep_two_digits():
    assert bench._t(3.1e-6) == "3.1 µs" and bench._t(3.3e-4) == "330 µs" and bench._t(0.0123) == "12.3 ms"
    assert bench._fraction(0.25) == "0.25" and bench._fraction(0.0021) == "2.1e-03"


def test_a_value_near_its_target_prints_the_side_it_falls_on():
    """19.97 against a target of 20 must not print as 20.0 beside a MISS (nor 0.331 as 0.33 against 1/3)."""
    assert bench._beside(19.97, 20.0, 1) == "19.97" and bench._beside(20.03, 20.0, 1) == "20.03"
    assert bench._beside(23.2, 20.0, 1) == "23.2" and bench._beside(20.0, 20.0, 1) == "20.0"
    assert bench._beside(1.4999, 1.5, 2) == "1.4999" and bench._beside(7.3, None, 1) == "7.3"
    assert bench._fraction(0.331, 1 / 3) == "0.331" and bench._fraction(0.3334, 1 / 3) == "0.3334"
    case = bench.Case("linear_rnn", "ssd", "v", lambda: None, bench.Cost(flops=1.0), "b", loop_target=20.0)
    rec = dict(name="linear_rnn.ssd[v]", baseline="b", runs=3, stat="median", time_s=0.025, baseline_s=0.05,
               ratio=0.5, ratio_busy=1.49999, time_busy_s=0.03, baseline_busy_s=0.02, over_budget=False,
               limit_s=0.0082, fraction=0.3328, case_wall_s=1.0, peak_bytes=None, agree=1e-16, loop_ratio=19.97,
               loop_s=0.5, loop_pairs=3, loop_agree=1e-16)
    rec["verdicts"] = bench._verdicts(case, rec)
    text = "\n".join(bench._case_lines(case, rec, quick=False))
    assert "loop/refimpl = 19.97x" in text and "fraction 0.3328" in text and "= 1.49999x" in text
    assert "fraction >= 1/3: MISS" in text and "loop/refimpl >= 20x: MISS" in text


def test_the_report_names_the_code_the_machine_and_its_load(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "_load_average", lambda: 99.0)
    out = tmp_path / "bench.json"
    assert cli_main(["bench", "--quick", "--only", "dle_covariance", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    env = report["environment"]
    assert env["refimpl"] and env["cpu_model"] and "git_commit" in env
    assert report["only"] == ["dle_covariance"] and report["load_average"] == {"start": 99.0, "end": 99.0}
    assert "warning: load average 99.0" in printed and "2 cases;" in printed
    assert "fraction = limit / refimpl time" in printed and "quick mode judges nothing" not in printed


def test_git_commit_is_only_refimpl_s_own(tmp_path, monkeypatch):
    """A copy of the package inside some other repository (a virtual environment in a project's folder) reports no
    commit: the repository's HEAD is not refimpl's."""
    if subprocess.run(["git", "--version"], capture_output=True).returncode != 0:
        pytest.skip("git not available")
    repo = tmp_path / "project"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.email=a@b", "-c", "user.name=x", "commit", "-q", "--allow-empty",
                    "-m", "x"], check=True)
    copy = repo / "venv" / "refimpl" / "_bench.py"
    copy.parent.mkdir(parents=True)
    copy.write_text(Path(bench.__file__).read_text())
    monkeypatch.setattr(bench, "__file__", str(copy))
    assert bench._git_commit() is None
