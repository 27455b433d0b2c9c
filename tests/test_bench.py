"""The benchmark harness (``python -m refimpl bench``): names, selection, baselines, limits, load, verdicts.

Everything here runs at tiny sizes; no timing is asserted except that it is positive and sane.
"""

from __future__ import annotations

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
    assert _functions(bench.select(TEST_CASES, ["softmax"])) == {"attention.softmax_attention"}
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
def test_competing_load_ends_when_the_bench_is_killed():
    """Even a SIGKILL of the bench (no finally clause runs) leaves no process spinning."""
    # a stand-in for the bench that starts the same child as competing_load (without importing refimpl)
    code = (
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-I', '-c', {bench._SPIN!r}], stdout=subprocess.PIPE)\n"
        "child.stdout.readline()\n"
        "print(child.pid, flush=True)\n"
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
