"""Tests of :mod:`refimpl.oracle`: golden vectors, their files, and the comparison harness.

* The committed vectors (``tests/golden/v2``) are regenerated in memory, case by case: the
  arguments rebuilt from the seed and every output and intermediate recomputed from the stored
  arguments must agree with the stored arrays to the case's ``regen_rtol`` (1e-12 norm-wise
  relative by default). Not bitwise: BLAS/LAPACK builds round the same exact result differently
  (summation order, blocking, FMA), by a few ulps times the case's conditioning; an unintended
  change of a formula moves the results by far more (a test below shows a 1e-9 change is caught).
* Export/verify round trip, byte reproducibility, tampered files (sha256), pickled arrays,
  missing files, unknown cases, bad directories, and the command line.
* :func:`compare` with independent implementations written here (not refimpl's code): a float64
  softmax attention and a float32 / float64 port of isotropic AFA pass; an injected bug fails and
  is localized by the intermediates; every malformed callable is reported per case.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import refimpl
from refimpl import oracle
from refimpl._testing import RATIO_RULE_FACTOR
from refimpl._vectors import read_npz, sha256, write_npz

GOLDEN = Path(__file__).parent / "golden" / "v2"


def oracle_kalman_weight_matrix_with_offset(**kw):
    from refimpl import kalman

    return kalman.kalman_weight_matrix(**kw, return_offset=True)
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text(encoding="utf-8"))
ENTRIES = {e["name"]: e for e in MANIFEST["cases"]}

#: public computations that have no golden case of their own, with the reason.
NOT_COVERED = {
    "sde.LinearSDE": "a model container; every sde case builds one from (A, Q, C, R)",
    "sde.spiral_system": "a fixed model, used as the input of the kalman cases",
    "kalman.from_sde": "builds the irregular-grid inputs of the kalman cases",
    "kalman.MAX_DENSE": "a constant",
    "afa.MAX_TENSOR": "a constant",
    "attention.attention_weights": "the intermediate A of attention.softmax_attention",
    "attention.attention_entropy": "covered by attention.attention_statistics",
    "attention.effective_support": "covered by attention.attention_statistics",
    "attention.materialize": "takes a callable (a token mixer), not arrays",
    "positional.frequencies": "the intermediate freqs of positional.sinusoidal_encoding",
    "ssm.semiseparable_matrix": "the intermediate M of ssm.selective_scan",
    "ssm.selective_scan_assoc": "a second algorithm for ssm.selective_scan (same cases apply)",
    "linear_rnn.ssd_quadratic": "a second algorithm for linear_rnn.ssd; its matrix M is an intermediate of the ssd cases",
    "linear_rnn.gated_linear_attention_parallel": "a second algorithm for linear_rnn.gated_linear_attention (same cases apply)",
    "linear_rnn.retention_parallel": "a second algorithm for linear_rnn.retention (same cases apply)",
    "linear_rnn.KEY_NORM_TOL": "a constant",
    "linear_rnn.BETA_MAX": "a constant",
    "ssm.selective_scan_matrix": "a second algorithm for ssm.selective_scan (same cases apply)",
    "ssm.hippo_legs_dplr": "eigenvectors are defined up to phase: the output is not unique",
    "iir.tf2zpk": "roots from an eigenvalue solver: their order is not unique",
    "iir.sos2zpk": "roots: their order is not unique",
    "iir.zpk2sos": "pairing of roots depends on their order, which is not unique",
    "iir.tf2sos": "roots: their order is not unique",
    "iir.lp2lp_zpk": "a scaling of the roots; lp2bp_zpk (the delicate transformation) is covered",
    "iir.lp2hp_zpk": "an inversion of the roots; lp2bp_zpk (the delicate transformation) is covered",
    "iir.lp2bs_zpk": "lp2hp_zpk (s → 1/s) then lp2bp_zpk, which is covered",
    "iir.matched_z": "root mapping e^{sT}; bilinear_zpk is covered",
    "iir.impulse_invariance_zpk": "zeros from a root solver: their order is not unique; impulse_invariance is covered",
    "iir.biquad_to_ssm": "partial fractions of a biquad; the inverse ssm_to_biquad is covered",
    "iir.in_stability_triangle": "a boolean predicate",
    "iir.is_stable": "a boolean predicate",
    "iir.pole_radius": "max |pole|: covered by biquad_poles",
    "rt_sde.SphereResiduals": "the named tuple returned by rt_sde.sphere_residuals",
    "focus.VARIANTS": "a constant",
    "focus.FIRST_BIN": "a constant",
    "focus.init_focus_params": "random parameter construction; its output is an input of the focus_layer cases",
    "focus.focus_op_counts": "integer operation counts of the paper's complexity claims",
    "random_features.SELF_ATTENTION_VALUE": "a constant",
    "random_features.KINDS": "a constant",
}


def _public_computations():
    """``module.name`` of every public callable of every public math module (loop twins excluded)."""
    names = []
    for path in sorted((Path(refimpl.__file__).parent).glob("*.py")):
        if path.stem.startswith("_") or path.stem == "oracle":
            continue
        mod = importlib.import_module(f"refimpl.{path.stem}")
        for n in mod.__all__:
            if n.endswith("_loop") and n[: -len("_loop")] in mod.__all__:
                continue  # loop twins equal their vectorized function (tested per module)
            names.append(f"{path.stem}.{n}")
    return names


# --------------------------------------------------------------------------------------------
# Independent implementations used as "user code"
# --------------------------------------------------------------------------------------------


def softmax_attention_numpy(q, k, v, *, causal=False, mask=None, scale=None, window=None, alibi_slopes=None,
                            causal_alignment="top_left", softcap=None, grouped_heads=False):
    """Plain NumPy attention in the dtype of its inputs, written from the formula (with the fused-kernel
    conventions: bottom-right alignment, sliding window, ALiBi, soft-capping, grouped key/value heads)."""
    dt = q.dtype
    if grouped_heads:  # query head h reads key/value head h // (H / H_kv)
        rep = q.shape[-3] // k.shape[-3]
        k, v = np.repeat(k, rep, axis=-3), np.repeat(v, rep, axis=-3)
    scale = dt.type(1 / np.sqrt(q.shape[-1])) if scale is None else dt.type(scale)
    s = scale * (q @ np.swapaxes(k, -1, -2))
    if softcap is not None:
        s = dt.type(softcap) * np.tanh(s / dt.type(softcap))
    n, m = s.shape[-2:]
    lag = np.arange(n)[:, None] + (m - n if causal_alignment == "bottom_right" else 0) - np.arange(m)[None, :]
    if alibi_slopes is not None:
        s = s - np.asarray(alibi_slopes, dtype=dt)[:, None, None] * np.abs(lag).astype(dt)
    allowed = np.ones(s.shape[-2:], dtype=bool)
    if causal:
        allowed &= lag >= 0
    if window is not None:
        allowed &= np.abs(lag) < window
    if mask is not None:
        allowed &= mask
    s = np.where(allowed, s, -np.inf)
    w = np.exp(s - s.max(axis=-1, keepdims=True))
    w /= w.sum(axis=-1, keepdims=True)
    return {"A": w, "y": w @ v}


def isotropic_afa_port(q, k, v, *, mu, omega, sigma2, eta2, gamma2, nu, t=None, weight="student",
                       kappa=None, temperature=1.0, causal=True, bug=None):
    """An independent NumPy port of isotropic AFA computing in the precision of its inputs.

    ``bug="decay"`` uses e^{−2μΔt} instead of e^{−μΔt} for the key decay (a plausible slip).
    """
    rdt = np.real(q.flat[0]).dtype
    N, d = q.shape[-2:]
    t = np.arange(N, dtype=rdt) if t is None else np.asarray(t, dtype=rdt)
    mu, sigma2, eta2, gamma2, nu, beta = (rdt.type(x) for x in (mu, sigma2, eta2, gamma2, nu, temperature))
    kappa = (nu + d) / rdt.type(d) if kappa is None else rdt.type(kappa)
    lag = t[:, None] - t[None, :]
    allowed = lag >= 0 if causal else np.ones(lag.shape, dtype=bool)
    process = sigma2 * np.abs(np.expm1(-2 * mu * lag)) / (2 * mu) if mu > 0 else sigma2 * np.abs(lag)
    P = 1 / (process + eta2 * np.exp(-2 * mu * lag) + gamma2)
    rate = 2 * mu if bug == "decay" else mu
    E = np.where(allowed, np.exp(-rate * np.where(allowed, lag, 0)), 0)
    rot = np.exp(-1j * omega.astype(rdt) * t[:, None]).astype(q.dtype)
    qt, kt, vt = rot * q, rot * k, rot * v
    qn = np.sum(np.abs(q) ** 2, axis=-1)
    kn = np.sum(np.abs(k) ** 2, axis=-1)
    R2 = qn[..., :, None] + E**2 * kn[..., None, :] - 2 * E * np.real(qt @ np.swapaxes(kt.conj(), -1, -2))
    d2 = P * R2
    L = np.log(P) - (kappa * np.log1p(d2 / nu) if weight == "student" else d2 / nu)
    L = np.where(allowed, beta * L, -np.inf)
    A = np.exp(L - L.max(axis=-1, keepdims=True))
    A /= A.sum(axis=-1, keepdims=True)
    return {"P": P, "R2": R2, "d2": d2, "A": A, "out": rot.conj() * ((A * E) @ vt)}


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


class TestRegistry:
    def test_every_function_has_cases(self):
        for name in oracle.function_names():
            assert oracle.case_names(name), f"{name} has no golden case"

    def test_case_names_are_prefixed_and_unique(self):
        names = [c.name for c in oracle.CASES]
        assert len(names) == len(set(names))
        assert all(c.name.startswith(c.function + "/") for c in oracle.CASES)

    def test_every_public_computation_is_covered_or_excused(self):
        registered = set(oracle.FUNCTIONS)
        missing = [n for n in _public_computations() if n not in registered and n not in NOT_COVERED]
        assert not missing, f"public computations without golden cases (add cases or a reason): {missing}"

    def test_excuses_are_not_stale(self):
        public = set(_public_computations()) | {n + "_loop" for n in _public_computations()}
        stale = [n for n in NOT_COVERED if n not in public and not n.endswith("_loop")]
        assert not stale, f"NOT_COVERED names that are not public any more: {stale}"
        assert not set(NOT_COVERED) & set(oracle.FUNCTIONS), "a covered function is also excused"

    def test_delicate_regimes_present(self):
        names = " ".join(oracle.case_names())
        for regime in ("long_sequence", "brownian_limit", "large_logits", "near_unit_circle", "missing", "irregular"):
            assert regime in names, regime

    def test_builds_are_deterministic(self):
        for case in oracle.CASES[::7]:
            a1, r1 = oracle.compute(case)
            a2, r2 = oracle.compute(case)
            for k in r1:
                np.testing.assert_array_equal(r1[k], r2[k])

    def test_compute_unknown_case(self):
        with pytest.raises(ValueError, match="case: unknown case 'nope'"):
            oracle.compute("nope")

    def test_case_names_of_function(self):
        assert oracle.case_names("isotropic_afa") == [c for c in oracle.case_names() if c.startswith("afa.isotropic_afa/")]


# --------------------------------------------------------------------------------------------
# The committed golden vectors
# --------------------------------------------------------------------------------------------


class TestCommittedVectors:
    def test_manifest_metadata(self):
        assert MANIFEST["format"] == oracle.FORMAT and MANIFEST["format_version"] in oracle.SUPPORTED_VERSIONS
        for key in ("refimpl_version", "numpy_version", "scipy_version", "python_version", "tolerance_policy"):
            assert key in MANIFEST
        assert MANIFEST["refimpl_version"] == refimpl.__version__

    def test_manifest_lists_exactly_the_registry(self):
        assert sorted(ENTRIES) == sorted(oracle.case_names()), (
            "tests/golden/v2 is out of date with the registry: run `python -m refimpl vectors export tests/golden/v2`"
        )

    def test_manifest_calls_match_the_registry(self):
        """The manifest tells users from any language how to call and what to return: its ``call`` is the registry's
        (a change of a call, e.g. the optional outputs marked ``[, dh0]``, needs the manifest rewritten)."""
        stale = {e["function"] for e in MANIFEST["cases"] if e["call"] != oracle.FUNCTIONS[e["function"]].call}
        assert not stale, f"tests/golden/v2/manifest.json has an old call for {sorted(stale)}"

    def test_total_size_small(self):
        # format 2 adds a plain reference per low-precision tier to every case, and the manifest its
        # per-tier bounds and the summaries of the cases generated from seeds (readable JSON)
        arrays = sum(p.stat().st_size for p in GOLDEN.glob("*.npz"))
        manifest = (GOLDEN / "manifest.json").stat().st_size
        # 3.81 MB and 1.0 MB before the 20 generated cases at the kernels' tiles of the official interfaces (fla,
        # mamba_ssm, flash-attn) and of the recurrences' backward passes added 0.33 MB of samples and 0.14 MB of
        # summaries: 4.14 MB and 1.14 MB
        assert arrays < 4_400_000 and manifest < 1_250_000, (arrays, manifest)

    @pytest.mark.parametrize("name", sorted(ENTRIES))
    def test_case_regenerates(self, name):
        """Unintended numerical changes fail here: rebuild, recompute, diff against the files."""
        entry = ENTRIES[name]
        case = next(c for c in oracle.CASES if c.name == name)
        path = GOLDEN / entry["file"]
        assert sha256(path) == entry["sha256"], f"{path.name} was modified without re-exporting the manifest"
        stored = read_npz(path)
        if entry.get("generated") is not None:  # too large to commit: regenerated and checked against its summary
            assert not oracle._generated_problems(case, entry, stored)
            return
        # the manifest describes the file
        for group in ("arguments", "outputs", "intermediates"):
            for key, desc in entry[group].items():
                arr = stored[desc["key"]]
                assert list(arr.shape) == desc["shape"], (key, arr.shape)
        assert list(entry["outputs"]) == list(case.output_names())
        assert entry["tolerance"]["regen_rtol"] == case.regen_rtol
        # arguments rebuilt from the seed
        args, fresh = oracle.compute(case)
        for key, value in args.items():
            if value is None:
                continue
            got = np.asarray(value)
            want = stored[f"arg.{key}"]
            assert got.shape == want.shape, key
            if got.dtype.kind in "fc":
                err = refimpl._testing.rel_error(got, want)
                assert err <= case.regen_rtol, f"argument {key}: rel error {err:.2e}"
            else:
                np.testing.assert_array_equal(got, want, err_msg=key)
        # results recomputed from the stored arguments
        _, fresh = oracle.compute(case, args=oracle._restore_args(stored))
        keys = {k.split(".", 1)[1] for k in stored if k.startswith(("out.", "mid."))}
        assert keys == set(fresh)
        for key, value in fresh.items():
            want = stored[f"out.{key}"] if f"out.{key}" in stored else stored[f"mid.{key}"]
            assert value.shape == want.shape and value.dtype == want.dtype, key
            if value.dtype.kind in "fc":
                err = refimpl._testing.rel_error(value, want)
                assert err <= case.regen_rtol, f"{name}: {key} changed by {err:.2e} (> {case.regen_rtol:.0e})"
            else:
                np.testing.assert_array_equal(value, want)

    def test_files_load_without_pickle(self):
        for entry in MANIFEST["cases"]:
            with np.load(GOLDEN / entry["file"], allow_pickle=False) as data:
                for key in data.files:
                    assert not data[key].dtype.hasobject

    def test_verify_committed(self):
        report = oracle.verify(GOLDEN)
        assert report.ok, str(report)
        assert report.not_exported == []
        assert "all agree" in str(report)


# --------------------------------------------------------------------------------------------
# Export, load, verify
# --------------------------------------------------------------------------------------------

SUBSET = ["lyapunov.phi1/near_zero", "afa.isotropic_afa/causal_student", "attention.softmax_attention/mask_cross",
          "sde.sample/seeded", "iir.butter/lowpass_ba"]


@pytest.fixture
def exported(tmp_path):
    oracle.export(tmp_path, cases=SUBSET)
    return tmp_path


def _rewrite(path: Path, key: str, fn):
    arrays = read_npz(path)
    arrays[key] = fn(arrays[key])
    write_npz(path, arrays)


class TestExportVerify:
    def test_version_1_directory_still_verifies(self, tmp_path):
        """Sets written in format 1 (no plain references) keep verifying after format 2 landed."""
        names = ["afa.isotropic_afa/causal_student", "attention.softmax_attention/" + next(
            c.split("/", 1)[1] for c in oracle.case_names() if c.startswith("attention.softmax_attention/"))]
        m = oracle.export(tmp_path, cases=names, format_version=1)
        assert m["format_version"] == 1 and all("low_precision" not in c for c in m["cases"])
        report = oracle.verify(tmp_path)
        assert report.ok and report.checked == sorted(names), str(report)

    def test_round_trip(self, exported):
        report = oracle.verify(exported)
        assert report.ok, str(report)
        assert report.checked == SUBSET
        assert len(report.not_exported) == len(oracle.CASES) - len(SUBSET)
        g = oracle.load_case(exported, "afa.isotropic_afa/causal_student")
        args, results = oracle.compute("afa.isotropic_afa/causal_student")
        assert list(g.intermediates) == ["P", "R2", "d2", "A"] and list(g.outputs) == ["out"]
        np.testing.assert_array_equal(g.outputs["out"], results["out"])
        np.testing.assert_array_equal(g.arguments["q"], args["q"])
        assert g.arguments["mu"] == args["mu"] and isinstance(g.arguments["weight"] if "weight" in g.arguments else "", str)
        assert g.seed == 611 and g.tolerance["regen_rtol"] == 1e-12

    def test_scalars_round_trip_as_python_scalars(self, exported):
        g = oracle.load_case(exported, "iir.butter/lowpass_ba")
        assert g.arguments == {"order": 4, "wn": 0.2, "btype": "lowpass", "fs": 2.0, "output": "ba"}
        entry = g.entry["arguments"]["btype"]
        assert entry["value"] == "lowpass" and entry["shape"] == []

    def test_byte_reproducible(self, exported, tmp_path_factory):
        other = tmp_path_factory.mktemp("again")
        oracle.export(other, cases=SUBSET)
        for name in SUBSET:
            f = oracle._CASES_BY_NAME[name].file
            assert sha256(exported / f) == sha256(other / f)

    def test_manifest_entries(self, exported):
        manifest = json.loads((exported / "manifest.json").read_text())
        e = {x["name"]: x for x in manifest["cases"]}["attention.softmax_attention/mask_cross"]
        assert e["function"] == "attention.softmax_attention" and e["seed"] == 403
        assert e["arguments"]["mask"]["dtype"] == "bool" and e["arguments"]["q"]["shape"] == [5, 4]
        assert e["outputs"] == {"y": {"key": "out.y", "shape": [5, 2], "dtype": "float64"}}
        assert e["intermediates"]["A"]["shape"] == [5, 8]
        assert e["tolerance"] == {"rtol": 1e-10, "atol": 0.0, "regen_rtol": 1e-12, "ulps": 4.0}
        assert len(e["sha256"]) == 64

    def test_tampered_file_detected(self, exported):
        f = exported / oracle._CASES_BY_NAME["lyapunov.phi1/near_zero"].file
        _rewrite(f, "out.phi", lambda a: a * (1 + 1e-6))
        report = oracle.verify(exported)
        assert not report.ok
        assert report.tampered == ["lyapunov.phi1/near_zero"]
        assert report.changed == ["lyapunov.phi1/near_zero"]
        msgs = report.problems["lyapunov.phi1/near_zero"]
        assert any("sha256 mismatch" in m for m in msgs) and any("result phi differs" in m for m in msgs)
        with pytest.raises(ValueError, match="does not match its sha256"):
            oracle.load_case(exported, "lyapunov.phi1/near_zero")
        g = oracle.load_case(exported, "lyapunov.phi1/near_zero", check_sha=False)
        assert g.outputs["phi"].shape == (9,)

    def test_tampered_argument_with_updated_sha(self, exported):
        """A consistent-looking forgery (manifest sha updated) still fails numerically."""
        name = "afa.isotropic_afa/causal_student"
        f = exported / oracle._CASES_BY_NAME[name].file
        _rewrite(f, "arg.q", lambda a: a + 1e-3)
        manifest = json.loads((exported / "manifest.json").read_text())
        for e in manifest["cases"]:
            if e["name"] == name:
                e["sha256"] = sha256(f)
        (exported / "manifest.json").write_text(json.dumps(manifest))
        report = oracle.verify(exported)
        assert report.tampered == []
        msgs = report.problems[name]
        assert any(m.startswith("argument q differs") for m in msgs)
        assert any(m.startswith("result out differs") for m in msgs)

    def test_unintended_numerical_change_detected(self, exported, monkeypatch):
        """A 1e-9 relative change of a formula is caught (regeneration tolerance 1e-12)."""
        fn = oracle.FUNCTIONS["lyapunov.phi1"]
        changed = dataclasses.replace(fn, run=lambda a, mid: {"phi": fn.run(a, mid)["phi"] * (1 + 1e-9)})
        monkeypatch.setitem(oracle.FUNCTIONS, "lyapunov.phi1", changed)
        report = oracle.verify(exported)
        assert list(report.problems) == ["lyapunov.phi1/near_zero"]
        assert "rel error 1.000e-09 > 1e-12" in report.problems["lyapunov.phi1/near_zero"][0]

    def test_pickled_array_refused(self, exported):
        name = "lyapunov.phi1/near_zero"
        f = exported / oracle._CASES_BY_NAME[name].file
        arrays = read_npz(f)
        arrays["mid.evil"] = np.array([{"a": 1}], dtype=object)
        np.savez(f, **arrays)  # numpy itself pickles object arrays (f ends in .npz: written in place)
        with pytest.raises(ValueError, match="pickled object array, refused"):
            read_npz(f)
        report = oracle.verify(exported)
        assert any("cannot be read safely" in m for m in report.problems[name])
        with pytest.raises(ValueError, match="pickled"):
            oracle.load_case(exported, name, check_sha=False)

    def test_write_npz_refuses_objects(self, tmp_path):
        with pytest.raises(TypeError, match="object arrays"):
            write_npz(tmp_path / "x.npz", {"a": np.array([None])})

    def test_missing_and_unknown_cases(self, exported):
        (exported / oracle._CASES_BY_NAME["sde.sample/seeded"].file).unlink()
        manifest = json.loads((exported / "manifest.json").read_text())
        manifest["cases"].append({"name": "mystery/case", "file": "mystery.npz", "sha256": "0"})
        (exported / "manifest.json").write_text(json.dumps(manifest))
        report = oracle.verify(exported)
        assert report.problems["sde.sample/seeded"] == [f"file {oracle._CASES_BY_NAME['sde.sample/seeded'].file} is missing"]
        assert "not a registered case" in report.problems["mystery/case"][0]
        with pytest.raises(ValueError, match="is missing"):
            oracle.load_case(exported, "sde.sample/seeded")
        with pytest.raises(ValueError, match="no case 'nope'"):
            oracle.load_case(exported, "nope")

    def test_corrupt_zip_reported(self, exported):
        f = exported / oracle._CASES_BY_NAME["iir.butter/lowpass_ba"].file
        f.write_bytes(b"not a zip archive")
        report = oracle.verify(exported)
        msgs = report.problems["iir.butter/lowpass_ba"]
        assert any("sha256 mismatch" in m for m in msgs) and any("cannot be read safely" in m for m in msgs)

    def test_bad_directories(self, tmp_path):
        with pytest.raises(ValueError, match="is not a directory"):
            oracle.verify(tmp_path / "absent")
        with pytest.raises(ValueError, match="no manifest.json"):
            oracle.verify(tmp_path)
        (tmp_path / "manifest.json").write_text("{not json")
        with pytest.raises(ValueError, match="not valid JSON"):
            oracle.verify(tmp_path)
        (tmp_path / "manifest.json").write_text(json.dumps({"format": "other", "format_version": 1}))
        with pytest.raises(ValueError, match="is not a refimpl-golden-vectors manifest of version 1"):
            oracle.load_case(tmp_path, "x")
        blocker = tmp_path / "file"
        blocker.write_text("x")
        with pytest.raises(ValueError, match="exists and is not a directory"):
            oracle.export(blocker)

    def test_export_unknown_case(self, tmp_path):
        with pytest.raises(ValueError, match="unknown case 'nope'"):
            oracle.export(tmp_path, cases=["nope"])

    def test_npz_is_plain_zip_of_npy(self, exported):
        """What another language needs: a zip archive of .npy members, sorted, fixed time stamps."""
        f = exported / oracle._CASES_BY_NAME["afa.isotropic_afa/causal_student"].file
        with zipfile.ZipFile(f) as zf:
            names = zf.namelist()
            assert names == sorted(names) and all(n.endswith(".npy") for n in names)
            assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
            assert zf.read("out.out.npy")[:6] == b"\x93NUMPY"


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


class TestCommandLine:
    def test_export_verify(self, tmp_path, capsys):
        assert oracle.main(["export", str(tmp_path), "--only", "phi1", "--only", "butter/lowpass"]) == 0
        assert "wrote 2 cases" in capsys.readouterr().out
        assert oracle.main(["verify", str(tmp_path)]) == 0
        assert "verified 2 cases" in capsys.readouterr().out

    def test_verify_failure_exit_1(self, tmp_path, capsys):
        oracle.main(["export", str(tmp_path), "--only", "phi1"])
        f = tmp_path / oracle._CASES_BY_NAME["lyapunov.phi1/near_zero"].file
        _rewrite(f, "out.phi", lambda a: a + 1)
        capsys.readouterr()
        assert oracle.main(["verify", str(tmp_path)]) == 1
        out = capsys.readouterr().out
        assert "sha256 mismatch" in out and "1 with problems" in out

    def test_usage_errors_exit_2(self, tmp_path, capsys):
        assert oracle.main(["verify", str(tmp_path / "nowhere")]) == 2
        assert "is not a directory" in capsys.readouterr().err
        assert oracle.main(["export", str(tmp_path), "--only", "zzz-no-such"]) == 2
        assert "no case matches" in capsys.readouterr().err
        assert oracle.main([]) == 2
        assert oracle.main(["frobnicate"]) == 2
        (tmp_path / "f").write_text("")
        assert oracle.main(["export", str(tmp_path / "f")]) == 2

    def test_python_m_refimpl_vectors(self, tmp_path):
        cmd = [sys.executable, "-m", "refimpl", "vectors", "export", str(tmp_path), "--only", "phi1"]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        done = subprocess.run([sys.executable, "-m", "refimpl", "vectors", "verify", str(tmp_path)],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0 and "all agree" in done.stdout
        done = subprocess.run([sys.executable, "-m", "refimpl"], capture_output=True, text=True, check=False)
        assert "vectors" in done.stdout


class TestRandomCase:
    """oracle.random_case: a case at the user's sizes, exported in full, rebuilt by verify from the manifest."""

    def test_export_in_full_and_verify(self, tmp_path):
        from refimpl import linear_rnn

        case = oracle.random_case("chunk_gla", seed=5, L=130, H=2, dk=16, dv=32, states=True)
        assert case.name == "linear_rnn.chunk_gla/random_seed5_L130_H2_dk16_dv32_statesTrue"
        assert case.name not in oracle._CASES_BY_NAME  # not registered
        entry = oracle.export(tmp_path, cases=[case])["cases"][0]
        assert entry["random_inputs"]["sizes"] == {"L": 130, "H": 2, "dk": 16, "dv": 32, "states": True}
        assert list(entry["outputs"]) == ["o", "final_state"] and "generated" not in entry
        g = oracle.load_case(tmp_path, case.name)
        inputs = oracle.random_inputs("linear_rnn.chunk_gla", seed=5, L=130, H=2, dk=16, dv=32, states=True)
        for k, v in inputs.items():  # every argument in full, as random_inputs draws it
            np.testing.assert_array_equal(np.asarray(g.arguments[k]), np.asarray(v))
        o, final = linear_rnn.chunk_gla(**inputs)
        np.testing.assert_array_equal(g.outputs["o"], o)
        np.testing.assert_array_equal(g.outputs["final_state"], final)
        assert set(g.plain) == {"float32", "tf32", "float16", "bfloat16"} and g.plain["float32"]["o"].shape == o.shape
        report = oracle.verify(tmp_path)
        assert report.ok and report.checked == [case.name], str(report)

    def test_optional_outputs_not_produced_are_left_out(self, tmp_path):
        case = oracle.random_case("linear_rnn.chunk_gla", seed=0, L=70, H=1, dk=8, dv=8)  # no states: no final state
        assert case.output_names() == ("o",)
        entry = oracle.export(tmp_path, cases=[case])["cases"][0]
        assert list(entry["outputs"]) == ["o"] and oracle.verify(tmp_path).ok

    def test_intermediates_on_request(self, tmp_path):
        case = oracle.random_case("attention.flash_attention", seed=1, intermediates=True, N=70, d=16, causal=True)
        entry = oracle.export(tmp_path, cases=[case])["cases"][0]
        assert "lse" in entry["intermediates"] and entry["random_inputs"]["intermediates"] is True
        assert oracle.verify(tmp_path).ok

    def test_verify_detects_a_changed_result_and_a_changed_record(self, tmp_path):
        case = oracle.random_case("ssm.selective_scan", seed=2, L=100, d_in=2, n=4)
        entry = oracle.export(tmp_path, cases=[case])["cases"][0]
        f = tmp_path / entry["file"]
        _rewrite(f, "out.y", lambda a: a * (1 + 1e-6))
        m = json.loads((tmp_path / "manifest.json").read_text())
        m["cases"][0]["sha256"] = sha256(f)  # the file re-hashed: only the recomputation can tell
        (tmp_path / "manifest.json").write_text(json.dumps(m))
        assert "result y" in str(oracle.verify(tmp_path))
        m["cases"][0]["random_inputs"]["sizes"]["L"] = 101
        (tmp_path / "manifest.json").write_text(json.dumps(m))
        assert "rebuild the case 'ssm.selective_scan/random_seed2_L101_d_in2_n4'" in str(oracle.verify(tmp_path))
        m["cases"][0]["random_inputs"]["sizes"] = {"L": 100, "colour": 3}
        (tmp_path / "manifest.json").write_text(json.dumps(m))
        assert "cannot be rebuilt" in str(oracle.verify(tmp_path)) and "colour" in str(oracle.verify(tmp_path))
        del m["cases"][0]["random_inputs"]
        (tmp_path / "manifest.json").write_text(json.dumps(m))
        assert "not a registered case" in str(oracle.verify(tmp_path))

    SMALL = {"L": 40, "N": 24, "d": 8, "dk": 8, "dv": 8, "P": 4, "H": 2, "d_in": 4, "n": 4, "m": 16, "seqlen_q": 40,
             "headdim": 8, "nheads": 2, "dstate": 4, "seqlens_q": [20, 13]}

    @pytest.mark.parametrize("function", oracle.RANDOM_INPUTS)
    def test_every_function_of_random_inputs_round_trips(self, function, tmp_path):
        """Exported in full and verified (options given as pairs, FlashAttention's window_size and mamba_ssm's
        dt_limit, come back as pairs: the recomputation refused an array window_size)."""
        options = oracle._RANDOM_OPTIONS[oracle._forward_of(function)]
        sizes = {k: v for k, v in self.SMALL.items() if k in options}
        case = oracle.random_case(function, seed=0, **sizes)
        entry = oracle.export(tmp_path, cases=[case])["cases"][0]
        report = oracle.verify(tmp_path)
        assert report.ok, str(report)
        g = oracle.load_case(tmp_path, case.name)
        for k, v in case.build(None).items():
            if isinstance(v, (tuple, list)):
                assert type(g.arguments[k]) is type(v) and list(g.arguments[k]) == list(v), k
                assert entry["arguments"][k]["sequence"] == type(v).__name__

    def test_lse_kept_in_float32_has_its_bound_in_the_manifest(self, tmp_path):
        """FlashAttention's softmax_lse returned in float32 is judged in float32 by compare; the manifest gives that
        bound too (returned_in_float32), so that the rule applied from the files alone is the same (the tier's
        bound was 7 to 13 times looser)."""
        from refimpl import attention

        sizes = dict(seqlen_q=150, headdim=32, causal=True)
        entry = oracle.export(tmp_path, cases=[oracle.random_case("flash_attn_func", seed=1, **sizes)])["cases"][0]
        inputs = oracle.random_inputs("attention.flash_attn_func", seed=1, **sizes)

        def kernel(**kw):
            out, lse = attention.flash_attn_func(**kw, return_attn_probs=True)[:2]
            return out, np.asarray(lse, dtype=np.float32)

        for tier in ("float16", "bfloat16"):
            stored = entry["low_precision"][tier]["softmax_lse"]
            q = next(q for q in oracle.compare("attention.flash_attn_func", kernel, dtype=tier, inputs=inputs)
                     .cases[0].quantities if q.name == "softmax_lse")
            assert "judged in float32" in q.model
            assert stored["returned_in_float32"]["bound"] == pytest.approx(q.bound, rel=1e-12)
            assert stored["returned_in_float32"]["plain_error"] == pytest.approx(q.plain_error, rel=1e-12)
            assert stored["bound"] > 3 * q.bound
        assert "out" in entry["low_precision"]["float16"] and "returned_in_float32" not in entry["low_precision"][
            "float16"]["out"]
        m = json.loads((tmp_path / "manifest.json").read_text())
        m["cases"][0]["low_precision"]["bfloat16"]["softmax_lse"]["returned_in_float32"]["bound"] *= 8
        (tmp_path / "manifest.json").write_text(json.dumps(m))
        assert "returned_in_float32 bound" in str(oracle.verify(tmp_path))

    def test_verify_reads_the_manifest_against_the_files(self, tmp_path):
        case = oracle.random_case("linear_rnn.chunk_gla", seed=0, L=70, H=1, dk=8, dv=8)
        oracle.export(tmp_path, cases=[case])
        report = str(oracle.verify(tmp_path))
        assert report.startswith("verified 1 case in") and "registered cases are not in the directory" not in report
        (tmp_path / "stale.npz").write_bytes((tmp_path / case.file).read_bytes())  # left by an earlier export
        assert "1 .npz file of the directory not in its manifest, not checked: stale.npz" in str(oracle.verify(tmp_path))
        m = json.loads((tmp_path / "manifest.json").read_text())
        m["cases"][0]["arguments"]["q"]["shape"] = [1, 999, 1, 8]  # a reader sizing its buffers from it is misled
        (tmp_path / "manifest.json").write_text(json.dumps(m))
        assert "manifest arguments q: shape [1, 999, 1, 8] dtype float64 but the file holds shape [1, 70, 1, 8]" in str(
            oracle.verify(tmp_path))

    def test_compare_on_a_directory_of_random_cases_says_how(self, tmp_path):
        oracle.export(tmp_path, cases=[oracle.random_case("linear_rnn.chunk_gla", seed=0, L=40, H=1, dk=8, dv=8)])
        from refimpl import linear_rnn

        with pytest.raises(ValueError, match=r"^vectors: name: no case 'linear_rnn.chunk_gla/.*inputs=random_inputs"):
            oracle.compare("linear_rnn.chunk_gla", linear_rnn.chunk_gla, vectors=tmp_path)

    def test_unknown_function_suggests_close_names(self):
        with pytest.raises(ValueError, match=r"unknown function 'attention.flash_attn_fnuc' \(did you mean "
                                             r"'attention.flash_attn_func'"):
            oracle.random_case("attention.flash_attn_fnuc", seed=0)

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="name: unknown function"):
            oracle.random_case("no_such_function", seed=0)
        with pytest.raises(ValueError, match="random_inputs does not support lyapunov.phi1"):
            oracle.random_case("lyapunov.phi1", seed=0)
        with pytest.raises(ValueError, match="T is L here"):
            oracle.random_case("linear_rnn.chunk_gla", seed=0, T=64)
        with pytest.raises(TypeError, match="intermediates"):
            oracle.random_case("linear_rnn.chunk_gla", seed=0, intermediates="yes")
        with pytest.raises((TypeError, ValueError), match="seed"):
            oracle.random_case("linear_rnn.chunk_gla", seed="zero")

    def test_command_line(self, tmp_path, capsys):
        args = ["export", str(tmp_path), "--random", "linear_rnn.mamba_chunk_scan_combined", "--seed", "4",
                "--size", "L=70", "--size", "H=2", "--size", "P=8", "--size", "N=4", "--size", "states=True"]
        assert oracle.main(args) == 0
        assert "wrote 1 case (" in capsys.readouterr().out
        m = json.loads((tmp_path / "manifest.json").read_text())
        assert m["cases"][0]["name"] == "linear_rnn.mamba_chunk_scan_combined/random_seed4_L70_H2_P8_N4_statesTrue"
        assert m["cases"][0]["seed"] == 4 and oracle.main(["verify", str(tmp_path)]) == 0
        assert oracle.main(["export", str(tmp_path / "b"), "--random", "linear_rnn.chunk_gla", "--size",
                            "seqlens=[30, 41]", "--size", "H=1", "--size", "dk=8", "--size", "dv=8"]) == 0
        name = json.loads((tmp_path / "b" / "manifest.json").read_text())["cases"][0]["name"]
        assert name == "linear_rnn.chunk_gla/random_seed0_seqlens30-41_H1_dk8_dv8"
        capsys.readouterr()
        assert oracle.main(["export", str(tmp_path / "d"), "--random", "chunk_gla", "--size", "L=40", "--size", "H=1",
                            "--size", "states=true"]) == 0  # JSON's spelling of True
        assert "other .npz" not in capsys.readouterr().out
        assert oracle.main(["export", str(tmp_path / "d"), "--random", "chunk_gla", "--size", "L=41", "--size", "H=1"]) == 0
        assert ("note: 1 other .npz file in" in capsys.readouterr().out)  # the first export's file, no longer listed
        for bad, message in ((["--size", "L=3"], "--size only with --random"),
                             (["--random", "chunk_gla", "--size", "L=64", "--size", "L=32"], "L is given twice"),
                             (["--random", "chunk_gla", "--only", "phi1"], "exclude each other"),
                             (["--random", "chunk_gla", "--size", "L2048"], "expected NAME=VALUE"),
                             (["--random", "chunk_gla", "--size", "T=64"], "T is L here")):
            assert oracle.main(["export", str(tmp_path / "c")] + bad) == 2
            assert message in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# compare()
# --------------------------------------------------------------------------------------------


class TestCompare:
    def test_correct_float64_implementation_passes(self):
        report = oracle.compare("attention.softmax_attention", softmax_attention_numpy)
        assert report.passed, str(report)
        assert [c.case for c in report.cases] == oracle.case_names("attention.softmax_attention")
        large = report["large_logits"]
        assert [q.name for q in large.quantities] == ["A", "y"]
        assert all(q.rel_error < 1e-13 for q in large.quantities)

    def test_float64_port_of_isotropic_afa_passes(self):
        report = oracle.compare("afa.isotropic_afa", isotropic_afa_port)
        assert report.passed, str(report)
        assert [q.name for q in report["causal_student"].quantities] == ["P", "R2", "d2", "A", "out"]

    def test_float32_port_passes_by_ratio_rule(self):
        report = oracle.compare("afa.isotropic_afa", isotropic_afa_port, dtype=np.float32)
        assert report.passed, str(report)
        assert report.dtype == "float32" and "ratio rule" in str(report)
        eps = np.finfo(np.float32).eps
        for c in report.cases:
            for q in c.quantities:
                assert q.bound == pytest.approx(RATIO_RULE_FACTOR * max(q.plain_error, 4 * eps))
                assert 1e-9 < q.rel_error < 1e-5  # genuinely float32, not float64 in disguise

    def test_float32_softmax_attention_passes(self):
        report = oracle.compare("softmax_attention", softmax_attention_numpy, dtype=np.float32)
        assert report.passed, str(report)

    def test_float16_port_passes(self):
        report = oracle.compare("afa.isotropic_afa", isotropic_afa_port, dtype=np.float16,
                                cases=["causal_student", "brownian_limit"])
        assert report.passed, str(report)

    def test_float32_port_fails_float64_bounds(self):
        """The tolerance rule follows the declared dtype: float32 results are not float64-accurate."""
        def f32(**kw):
            cast = {k: (v.astype(np.complex64) if isinstance(v, np.ndarray) and v.dtype.kind == "c" else v) for k, v in kw.items()}
            return isotropic_afa_port(**cast)

        report = oracle.compare("afa.isotropic_afa", f32, dtype=np.float64, cases=["causal_student"])
        assert not report.passed

    def test_injected_bug_is_localized(self):
        report = oracle.compare("afa.isotropic_afa", lambda **kw: isotropic_afa_port(bug="decay", **kw), dtype=np.float32)
        assert not report.passed
        bad = report["causal_student"]
        assert bad.status == "fail" and bad.first_failure == "R2"
        q = {x.name: x for x in bad.quantities}
        assert q["P"].passed and not q["R2"].passed and not q["out"].passed
        assert "first failure: R2" in str(report)
        assert report["brownian_limit"].passed  # μ = 0: the bug is invisible there, as it should be

    def test_outputs_only_and_tuple_returns(self):
        report = oracle.compare("afa.isotropic_afa", lambda **kw: isotropic_afa_port(**kw)["out"], cases="causal_student")
        assert report.passed and [q.name for q in report.cases[0].quantities] == ["out"]
        from refimpl import kalman

        report = oracle.compare("kalman.kalman_filter", lambda **kw: kalman.kalman_filter_loop(**kw))
        assert report.passed, str(report)

    def test_inputs_cast_to_dtype(self):
        seen = {}

        def spy(**kw):
            seen.update({k: (type(v), getattr(v, "dtype", None)) for k, v in kw.items()})
            return np.zeros((5, 2), dtype=np.float32)

        oracle.compare("attention.softmax_attention", spy, dtype=np.float32, cases="mask_cross")
        assert seen["q"][1] == np.float32 and seen["mask"][1] == np.bool_ and seen["causal"][0] is bool
        oracle.compare("afa.isotropic_afa", spy, dtype=np.float32, cases="causal_student")
        assert seen["q"][1] == np.complex64 and seen["omega"][1] == np.float32
        # a scalar is a host number (a Python float) on the tier's grid, as kernels take options: a NumPy float16
        # softcap made a correct FlashAttention port compute scale / softcap in float16
        assert seen["mu"][0] is float
        oracle.compare("afa.isotropic_afa", spy, dtype=np.float16, cases="causal_student")
        assert seen["q"][1] == np.complex64 and seen["omega"][1] == np.float16 and seen["mu"][0] is float
        got = {}
        inp = oracle.random_inputs("attention.flash_attention", seed=0, N=70, d=8)
        inp.update(softcap=0.1, scale=0.3)
        oracle.compare("attention.flash_attention", lambda **kw: got.update(kw) or np.zeros((70, 8), np.float32),
                       dtype="float16", inputs=inp)
        assert type(got["softcap"]) is float and got["softcap"] == float(np.float16(0.1)) and got["scale"] == float(np.float16(0.3))

    def test_against_exported_vectors(self, exported):
        report = oracle.compare("afa.isotropic_afa", isotropic_afa_port, cases="causal_student", vectors=exported)
        assert report.passed
        f = exported / oracle._CASES_BY_NAME["afa.isotropic_afa/causal_student"].file
        _rewrite(f, "out.out", lambda a: a + 1)
        with pytest.raises(ValueError, match="sha256"):
            oracle.compare("afa.isotropic_afa", isotropic_afa_port, cases="causal_student", vectors=exported)

    # ---- faulty callables are reported per case, never raised

    def test_callable_that_raises(self):
        def boom(**kw):
            raise RuntimeError("kernel launch failed")

        report = oracle.compare("afa.isotropic_afa", boom)
        assert not report.passed
        assert all(c.status == "error" and c.message == "raised RuntimeError: kernel launch failed" for c in report.cases)
        assert "ERROR raised RuntimeError" in str(report)

    def test_wrong_signature(self):
        report = oracle.compare("lyapunov.phi1", lambda z: z)
        assert report.cases[0].status == "error" and "TypeError" in report.cases[0].message

    def test_wrong_shape(self):
        report = oracle.compare("attention.softmax_attention", lambda **kw: softmax_attention_numpy(**kw)["y"][..., :1])
        c = report["basic"]
        assert c.status == "fail" and "shape (6, 1) != expected (6, 3)" in c.quantities[0].message

    def test_wrong_dtype_kind(self):
        report = oracle.compare("afa.isotropic_afa", lambda **kw: isotropic_afa_port(**kw)["out"].real, cases="causal_student")
        assert "is real, expected complex" in report.cases[0].quantities[0].message
        report = oracle.compare("lyapunov.isotropic_covariance",
                                lambda **kw: np.zeros(41, dtype=complex), cases="signed_lags")
        assert "is complex, expected real" in report.cases[0].quantities[0].message
        report = oracle.compare("lyapunov.isotropic_covariance", lambda **kw: np.array(["x"] * 41), cases="signed_lags")
        assert "is not numeric" in report.cases[0].quantities[0].message
        report = oracle.compare("lyapunov.isotropic_covariance", lambda **kw: np.array([None] * 41), cases="signed_lags")
        assert "is not numeric" in report.cases[0].quantities[0].message
        report = oracle.compare("lyapunov.isotropic_covariance", lambda **kw: [[1.0], [1.0, 2.0]], cases="signed_lags")
        assert not report.passed

    def test_wrong_number_of_outputs(self):
        report = oracle.compare("kalman.kalman_filter", lambda **kw: np.zeros((12, 2)), cases="regular")
        assert report.cases[0].status == "error" and "expected a tuple (m, P)" in report.cases[0].message
        report = oracle.compare("kalman.kalman_filter", lambda **kw: (1, 2, 3), cases="regular")
        assert "of 3 items, expected 2 (m, P)" in report.cases[0].message

    def test_optional_outputs_may_be_left_out(self):
        """The last state of the selective scan is returned only on request (return_last_state): a
        kernel that returns y alone, or a dict without it, is judged on y; h_last is reported as not
        returned. A wrong y still fails, and an output that is not optional is still required."""
        from refimpl import ssm

        for fn in (ssm.selective_scan, lambda **kw: {"y": ssm.selective_scan(**kw)}, lambda **kw: (ssm.selective_scan(**kw),)):
            c = oracle.compare("ssm.selective_scan", fn, cases="mamba").cases[0]
            assert c.status == "pass", c
            assert [q.name for q in c.quantities] == ["y", "h_last"]
            assert c.quantities[1].message == "not returned (optional): not judged"
        both = oracle.compare("ssm.selective_scan", lambda **kw: ssm.selective_scan(**kw, return_last_state=True),
                              cases="mamba").cases[0]
        assert both.status == "pass" and both.quantities[1].message == "" and both.quantities[1].rel_error == 0.0
        wrong = oracle.compare("ssm.selective_scan", lambda **kw: 1.001 * ssm.selective_scan(**kw), cases="mamba")
        assert wrong.cases[0].status == "fail" and wrong.cases[0].first_failure == "y"
        c = oracle.compare("ssm.selective_scan", lambda **kw: (1, 2, 3), cases="mamba").cases[0]
        assert c.status == "error" and "expected 2 (y, h_last) or y alone" in c.message
        c = oracle.compare("ssm.selective_scan_fn", ssm.selective_scan_fn, cases="shared_gated").cases[0]
        assert c.status == "pass" and c.quantities[-1].name == "last_state"
        c = oracle.compare("kalman.kalman_filter", lambda **kw: {"m": np.zeros((12, 2))}, cases="regular").cases[0]
        assert c.status == "fail" and c.quantities[-1].message == "missing from the returned values"
        c = oracle.compare("ssm.selective_scan", lambda **kw: None, cases="mamba").cases[0]  # nothing returned
        assert c.status == "error" and c.message == "returned None, expected the outputs y, h_last"

    def test_refimpl_functions_pass_their_own_oracle(self):
        """Where the documented call is refimpl's own signature, refimpl's function itself, passed as
        the user's callable, passes every golden case in float64 (a kernel written to that call
        can): this found kalman_weight_matrix, whose offset c is returned only on request (now an
        optional output), and rope_complex, whose call now says that y is complex."""
        from refimpl._golden._base import call_string, resolve

        checked = 0
        for name, f in oracle.FUNCTIONS.items():
            try:
                own = f.call == call_string(name, f.outputs, f.intermediates, f.skip, f.optional)
            except AttributeError:  # not a public function (e.g. attention.attention_statistics)
                own = False
            if not own:
                continue  # a call of its own (seeds, callables, flags fixed by the oracle)
            report = oracle.compare(name, resolve(name))
            assert {c.status for c in report.cases} == {"pass"}, (name, [c.message for c in report.cases])
            checked += 1
        assert checked >= 100
        c = oracle.compare("kalman.kalman_weight_matrix", oracle_kalman_weight_matrix_with_offset).cases[0]
        assert c.status == "pass" and c.quantities[-1].name == "c" and c.quantities[-1].message == ""
        assert "complex" in oracle.FUNCTIONS["positional.rope_complex"].call

    def test_user_inputs_judge_the_outputs_their_arguments_produce(self):
        """With user inputs the outputs are those refimpl produces for them: the final state zf of a
        filter only with zi, b and a for output="ba", and no dlog_g for an ungated delta rule (each
        was an error before: "expected 1 (y)", "expected sos", "refimpl rejects the inputs")."""
        from refimpl import iir, linear_rnn

        x = np.random.default_rng(0).standard_normal(100)
        ba = dict(b=np.array([0.2, 0.1, 0.05]), a=np.array([1.0, -0.5, 0.2]), x=x)
        c = oracle.compare("iir.biquad_filter", iir.biquad_filter, inputs={**ba, "zi": np.array([0.1, 0.2])}).cases[0]
        assert c.status == "pass" and [q.name for q in c.quantities] == ["y", "zf"]
        wrong_zf = lambda **kw: (iir.biquad_filter(**kw)[0], 1.01 * iir.biquad_filter(**kw)[1])  # noqa: E731
        c = oracle.compare("iir.biquad_filter", wrong_zf, inputs={**ba, "zi": np.array([0.1, 0.2])}).cases[0]
        assert c.status == "fail" and c.first_failure == "zf"
        c = oracle.compare("iir.biquad_filter", iir.biquad_filter, inputs=ba).cases[0]
        assert c.status == "pass" and [q.name for q in c.quantities] == ["y"]
        c = oracle.compare("iir.butter", iir.butter, inputs={"order": 4, "wn": 0.2, "output": "ba"}).cases[0]
        assert c.status == "pass" and [q.name for q in c.quantities] == ["b", "a"]
        inp = oracle.random_inputs("linear_rnn.delta_rule_vjp", seed=3, L=50, dk=8, dv=4)  # DeltaNet: no log_g
        for dtype in ("float64", "bfloat16"):
            c = oracle.compare("linear_rnn.delta_rule_vjp", linear_rnn.delta_rule_vjp, inputs=inp, dtype=dtype).cases[0]
            assert c.status == "pass" and [q.name for q in c.quantities] == ["dq", "dk", "dv", "dbeta"]

    @pytest.mark.parametrize("name, option", [
        ("attention.softmax_attention", "return_weights"),
        ("attention.multihead_attention", "return_weights"),
        ("rt_sde.rt_attention", "return_weights"),
        ("attention.flash_attention", "return_intermediates"),
        ("linear_rnn.ssd", "return_chunk_states"),
        ("linear_rnn.gated_linear_attention", "return_chunk_states"),
        ("linear_rnn.delta_rule", "return_chunk_states"),
    ])
    def test_intermediates_are_computed_only_when_wanted(self, name, option, monkeypatch):
        """The run wrapper asks for the N × M weights (flash attention: its running statistics, N per key tile; the
        chunked recurrences: their chunk states, the delta rule's WY factors) only when the intermediates are
        wanted: the same outputs either way, and no intermediate without."""
        case = next(c for c in oracle.CASES if c.function == name)
        args = case.build(np.random.default_rng(case.seed))
        run = oracle.FUNCTIONS[name].run
        with_mid = run(args, True)
        module, function = name.split(".")
        real = getattr(importlib.import_module(f"refimpl.{module}"), function)
        asked = []

        def spy(*a, **kw):
            asked.append(kw.get(option, False))
            return real(*a, **kw)

        monkeypatch.setattr(importlib.import_module(f"refimpl.{module}"), function, spy)
        without = run(args, False)
        assert asked == [False]
        outputs = list(oracle.FUNCTIONS[name].outputs)
        assert list(without) == outputs and set(with_mid) > set(outputs)
        for k in outputs:  # the same, or (the delta rule: without its WY factors) the same to rounding
            assert oracle.rel_error(without[k], with_mid[k]) <= 1e-14, k

    def test_user_inputs_without_intermediates_stay_o_of_n(self):
        """compare(..., inputs=...) for a callable that returns y alone: the float64 reference never forms the
        weights (2 heads × 2048² here, 64 MiB; the traced peak stays a fraction of that)."""
        import tracemalloc

        from refimpl import attention

        inp = oracle.random_inputs("attention.softmax_attention", seed=0, heads=2, N=2048, d=16)
        tracemalloc.start()
        try:
            report = oracle.compare("attention.softmax_attention", attention.softmax_attention, inputs=inp)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert report.passed
        assert peak < 16 * 2**20, peak / 2**20  # the weights alone: 64 MiB

    def test_missing_output_in_dict(self):
        report = oracle.compare("afa.isotropic_afa", lambda **kw: {"P": isotropic_afa_port(**kw)["P"], "junk": 1},
                                cases="causal_student")
        c = report.cases[0]
        assert c.status == "fail" and c.first_failure == "out"
        assert c.quantities[-1].message == "missing from the returned values"
        assert "ignored unknown names ['junk']" in c.message

    def test_nan_output_fails(self):
        report = oracle.compare("lyapunov.phi1", lambda **kw: np.full(9, np.nan + 0j))
        assert not report.passed and report.cases[0].quantities[0].rel_error == np.inf

    def test_float16_unrepresentable_inputs_reported(self):
        report = oracle.compare("lyapunov.dle_covariance", lambda **kw: None, dtype=np.float16, cases="long_lags_full")
        assert report.cases[0].status == "error" and "rounded to float16" in report.cases[0].message

    def test_overflowing_oracle_in_low_precision(self):
        from refimpl import lyapunov

        def f32(**kw):
            return np.float32(1) * lyapunov.isotropic_covariance(**kw).astype(np.float32)

        assert oracle.compare("lyapunov.isotropic_covariance", f32, dtype=np.float32).passed
        capped = oracle.compare("lyapunov.isotropic_covariance", lambda **kw: np.minimum(f32(**kw), 1e30),
                                dtype=np.float32, cases="long_pushed_back")
        assert "overflow float32 in the plain reference, but not alike in the returned values" in capped.cases[0].quantities[0].message
        assert capped.cases[0].status == "fail"  # the answer itself overflows float32: a capped kernel is wrong

    def test_plain_overflow_where_the_answer_is_representable(self):
        """float16 logits of order 1e5 overflow in the plain reference (its y is NaN in 12 entries) while y itself is
        moderate: a kernel that overflows alike passes, and so does one that returns the right finite values (refimpl
        itself, which failed before); a wrong finite value there fails."""
        from refimpl import attention
        from refimpl._lowprec import softmax_attention as plain

        right = oracle.compare("attention.softmax_attention", attention.softmax_attention, dtype="float16", cases="large_logits")
        q = right.cases[0].quantities[0]
        assert right.passed and "12 entries overflow float16 in the plain reference (12 returned finite: judged)" in q.message

        def like_plain(**kw):
            return plain(**kw, tier="float16")["y"]

        assert oracle.compare("attention.softmax_attention", like_plain, dtype="float16", cases="large_logits").passed

        def wrong_there(**kw):  # right where the plain reference is finite, 10% off where it overflows
            y, p = attention.softmax_attention(**kw), like_plain(**kw)
            return np.where(np.isfinite(p), y, 1.1 * y)

        assert not oracle.compare("attention.softmax_attention", wrong_there, dtype="float16", cases="large_logits").passed

    # ---- bad arguments of compare itself raise

    def test_unknown_name_lists_known(self):
        with pytest.raises(ValueError, match=r"name: unknown function 'afa\.nope'; known functions: .*afa\.afa,"):
            oracle.compare("afa.nope", isotropic_afa_port)

    def test_ambiguous_bare_name(self):
        with pytest.raises(ValueError, match="unknown function 'discretize'"):
            oracle.compare("discretize", lambda **kw: None)  # sde.discretize and ssm.discretize

    def test_name_type(self):
        with pytest.raises(TypeError, match="name must be a str"):
            oracle.compare(3, isotropic_afa_port)

    def test_not_callable(self):
        with pytest.raises(TypeError, match="fn must be callable"):
            oracle.compare("afa.isotropic_afa", "not a function")

    @pytest.mark.parametrize("dtype", [np.int32, "bfloat17", np.complex64, "nonsense", None])
    def test_bad_dtype(self, dtype):
        with pytest.raises(ValueError, match="dtype: expected one of float64, float32, tf32, float16, bfloat16"):
            oracle.compare("afa.isotropic_afa", isotropic_afa_port, dtype=dtype)

    def test_unknown_case(self):
        with pytest.raises(ValueError, match="cases: unknown case 'nope' of afa.isotropic_afa; known: "):
            oracle.compare("afa.isotropic_afa", isotropic_afa_port, cases=["nope"])
        with pytest.raises(ValueError, match="unknown case"):
            oracle.compare("afa.isotropic_afa", isotropic_afa_port, cases=["afa.afa/causal_student"])

    def test_report_table_and_lookup(self):
        report = oracle.compare("lyapunov.phi1", lambda **kw: oracle.FUNCTIONS["lyapunov.phi1"].run(kw, True)["phi"])
        text = report.table()
        assert text.startswith("compare lyapunov.phi1 in float64 (float64 rtol): PASS, 1/1 cases")
        assert report["near_zero"] is report["lyapunov.phi1/near_zero"]
        with pytest.raises(KeyError):
            report["nope"]


# --------------------------------------------------------------------------------------------
# Generated cases: declared by a seed and sizes, stored as a summary, regenerated at verify time
# --------------------------------------------------------------------------------------------

GENERATED = ["attention.softmax_attention/tile_N65_d64_causal", "attention.flash_attention/tile_N129_d128_causal"]


@pytest.fixture(scope="module")
def generated_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("generated")
    return d, oracle.export(d, cases=GENERATED)


#: official backward passes, their required gradients and the gradients of the optional inputs that
#: ``random_inputs(..., states=True)`` gives (mamba_ssm: D, dt_bias, initial_states; no z without gated=True)
OFFICIAL_VJPS = {
    "linear_rnn.chunk_gla_vjp": (dict(L=70, H=2, dk=8, dv=4), ("dq", "dk", "dv", "dg"), ("dh0",)),
    "linear_rnn.chunk_delta_rule_vjp": (dict(L=70, H=2, dk=8, dv=4), ("dq", "dk", "dv", "dbeta"), ("dh0",)),
    "linear_rnn.mamba_chunk_scan_combined_vjp": (dict(L=70, H=4, P=4, N=8), ("dx", "ddt", "dA", "dB", "dC"),
                                                 ("dD", "ddt_bias", "dinitial_states")),
}


def _optional_input(grad: str) -> str:
    """The input a gradient is taken with respect to: ``dh0`` of fla's ``initial_state``, else the name without d."""
    return "initial_state" if grad == "dh0" else grad[1:]


class TestOptionalGradients:
    """The gradient of an optional input (an initial state, D, z, dt_bias …) is an optional output: a kernel may
    leave it out or return None, and it is then reported as not returned and not judged, as the forward passes'
    optional outputs are (chapter 15, section 15.6); returned, it is judged. Before, a kernel returning exactly the
    documented ``(dq, dk, dv, dg)`` failed "dh0: missing from the returned values", and ``(…, None)`` failed
    "dtype object is not numeric"."""

    def test_the_registry_marks_the_gradients_of_optional_inputs(self):
        from refimpl._golden._base import resolve

        checked = 0
        for name, f in oracle.FUNCTIONS.items():
            if not name.endswith("_vjp"):
                continue
            params = inspect.signature(resolve(name)).parameters
            optional = {g for g in f.outputs if _optional_input(g) in params
                        and params[_optional_input(g)].default is None}
            assert set(f.optional) == optional, name  # inputs with a default of None, and only those
            assert all(g in params or _optional_input(g) in params for g in f.outputs), name
            n = len(f.outputs) - len(f.optional)
            assert set(f.outputs[n:]) == set(f.optional), name  # after the required ones: they may be left out
            outs = f.call.split(" -> ")[1].split(";")[0]
            assert all(f"[, {g}]" in outs for g in f.optional) and outs.count("[") == len(f.optional), f.call
            checked += bool(f.optional)
        assert checked == 10
        assert oracle.FUNCTIONS["linear_rnn.chunk_gla_vjp"].call.endswith("-> (dq, dk, dv, dg[, dh0])")
        assert oracle.FUNCTIONS["linear_rnn.mamba_chunk_scan_combined_vjp"].call.endswith(
            "-> (dx, ddt, dA, dB, dC[, dD][, dz][, ddt_bias][, dinitial_states])")
        assert oracle.FUNCTIONS["linear_rnn.chunk_gla"].call.endswith("-> (o[, final_state])")

    @pytest.mark.parametrize("name", sorted(OFFICIAL_VJPS))
    def test_the_required_gradients_alone_pass(self, name):
        from refimpl._golden._base import resolve

        sizes, required, optional = OFFICIAL_VJPS[name]
        inp = oracle.random_inputs(name, seed=0, states=True, **sizes)
        vjp = resolve(name)
        assert set(vjp(**inp)) == set(required + optional)  # refimpl computes them all for these inputs
        kernels = {"the documented tuple": lambda **kw: tuple(vjp(**kw)[g] for g in required),
                   "None in their place": lambda **kw: tuple(vjp(**kw)[g] for g in required) + (None,) * len(optional),
                   "a dict without them": lambda **kw: {g: vjp(**kw)[g] for g in required},
                   "a dict with None": lambda **kw: {**{g: vjp(**kw)[g] for g in required}, optional[0]: None}}
        for label, kernel in kernels.items():
            for report in (oracle.compare(name, kernel, inputs=inp), oracle.compare(name, kernel)):  # and golden case
                c = report.cases[0]
                assert c.status == "pass", (label, str(report))
                not_judged = [q.name for q in c.quantities if q.message == "not returned (optional): not judged"]
                assert not_judged and set(not_judged) <= set(oracle.FUNCTIONS[name].optional), (label, str(report))
                assert not_judged == list(optional) or c.case != f"{name}/inputs[0]", (label, str(report))
        everything = oracle.compare(name, vjp, inputs=inp).cases[0]  # returned, the optional gradients are judged
        assert everything.status == "pass" and all(q.message == "" for q in everything.quantities)
        assert [q.name for q in everything.quantities] == list(required + optional)

    @pytest.mark.parametrize("name", sorted(OFFICIAL_VJPS))
    def test_a_returned_optional_gradient_is_judged(self, name):
        from refimpl._golden._base import resolve

        sizes, required, optional = OFFICIAL_VJPS[name]
        inp = oracle.random_inputs(name, seed=1, states=True, **sizes)
        vjp = resolve(name)
        off = optional[-1]

        def kernel(**kw):  # the required gradients and the optional ones, the last 1% off, in a tuple
            g = vjp(**kw)
            return tuple(g[n] * (1.01 if n == off else 1.0) for n in required + optional)

        c = oracle.compare(name, kernel, inputs=inp).cases[0]
        assert c.status == "fail" and c.first_failure == off and c.quantities[-1].message == ""

    def test_a_required_gradient_returned_as_none_is_named(self):
        from refimpl import linear_rnn

        inp = oracle.random_inputs("linear_rnn.chunk_gla_vjp", seed=0, states=True, L=70, H=2, dk=8, dv=4)
        for kernel in (lambda **kw: (*(linear_rnn.chunk_gla_vjp(**kw)[g] for g in ("dq", "dk", "dv")), None),
                       lambda **kw: {**linear_rnn.chunk_gla_vjp(**kw), "dg": None}):
            c = oracle.compare("linear_rnn.chunk_gla_vjp", kernel, inputs=inp).cases[0]
            assert c.status == "fail" and c.first_failure == "dg"
            dg = next(q for q in c.quantities if q.name == "dg")
            assert dg.message == "returned None for dg, a required output (only dh0 may be None or left out)"
            assert "not numeric" not in str(oracle.compare("linear_rnn.chunk_gla_vjp", kernel, inputs=inp))

    def test_mamba_gradients_by_position(self):
        """mamba_ssm's order (dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinitial_states): any optional one may be None,
        the trailing ones left out; with no z given, all nine with dz None (the library's backward returns None for
        an input it was not given) or the eight refimpl computes."""
        from refimpl import linear_rnn

        name = "linear_rnn.mamba_chunk_scan_combined_vjp"
        inp = oracle.random_inputs(name, seed=2, states=True, L=70, H=4, P=4, N=8)
        full = ("dx", "ddt", "dA", "dB", "dC", "dD", "dz", "ddt_bias", "dinitial_states")

        def kernel(*names):  # the gradients in mamba_ssm's order, None for those not named, ddt_bias 1% off
            def run(**kw):
                g = linear_rnn.mamba_chunk_scan_combined_vjp(**kw)
                return tuple(g[n] * (1.01 if n == "ddt_bias" else 1.0) if n in names else None for n in full)
            return run

        c = oracle.compare(name, kernel(*full[:6], *full[7:]), inputs=inp).cases[0]  # dz None: no z given
        assert c.status == "fail" and c.first_failure == "ddt_bias" and len(c.quantities) == 8
        given = (*full[:6], *full[7:])
        c = oracle.compare(name, lambda **kw: kernel(*given)(**kw)[:6] + kernel(*given)(**kw)[7:], inputs=inp).cases[0]
        assert c.status == "fail" and c.first_failure == "ddt_bias"  # the eight refimpl computes, in its order
        # eight items are refimpl's eight: mamba_ssm's order cut after ddt_bias puts ddt_bias where dinitial_states is
        c = oracle.compare(name, lambda **kw: kernel(*full[:5], "ddt_bias")(**kw)[:8], inputs=inp).cases[0]
        assert c.status == "fail" and c.quantities[-1].message == "shape (4,) != expected (1, 4, 4, 8)"
        c = oracle.compare(name, lambda **kw: kernel(*full[:5], "dinitial_states")(**kw)[:6] + (None,
                           linear_rnn.mamba_chunk_scan_combined_vjp(**kw)["dinitial_states"]), inputs=inp).cases[0]
        assert c.status == "pass" and [q.name for q in c.quantities if q.message] == ["dD", "ddt_bias"]  # None
        c = oracle.compare(name, lambda **kw: kernel(*given)(**kw)[:4], inputs=inp).cases[0]
        assert c.status == "error" and c.message == (
            "returned a tuple of 4 items, expected 8 (dx, ddt, dA, dB, dC, dD, ddt_bias, dinitial_states) or fewer, "
            "down to 5 (dx, ddt, dA, dB, dC): optional ones left out from the end")


class TestGeneratedCases:
    def test_registry_has_tile_boundaries_and_long_sequences(self):
        gen = [c for c in oracle.CASES if c.sizes is not None]
        names = " ".join(c.name for c in gen)
        for fn in ("attention.softmax_attention/", "attention.flash_attention/", "attention.softmax_attention_vjp/",
                   "random_features.linear_attention/", "ssm.selective_scan/", "linear_rnn.ssd/",
                   "linear_rnn.gated_linear_attention/", "linear_rnn.retention/", "linear_rnn.delta_rule/"):
            assert fn in names, fn
        dims = {c.sizes.get("d") for c in gen if c.function.startswith("attention.")}
        assert {64, 128, 256} <= dims
        lengths = [c.sizes.get("N") or c.sizes.get("L") for c in gen if c.sizes.get("N") or c.sizes.get("L")]
        assert any(n % 64 and n > 64 for n in lengths) and max(lengths) >= 8192
        for c in gen:  # the builder is random_inputs with the case's own seed
            np.testing.assert_array_equal(np.asarray(c.build(None)[next(iter(c.build(None)))]),
                                          np.asarray(oracle.random_inputs(c.function, seed=c.seed, **c.sizes)[next(iter(c.build(None)))]))

    def test_export_stores_a_summary_and_verify_regenerates(self, generated_dir):
        d, manifest = generated_dir
        entry = manifest["cases"][0]
        assert entry["generated"]["sizes"] == {"N": 65, "d": 64, "causal": True}
        assert entry["arguments"]["q"] == {"key": "sample.arg.q", "shape": [65, 64], "dtype": "float64", "sampled": True}
        assert entry["arguments"]["causal"]["value"] is True
        assert set(entry["generated"]["summary"]) == {"arg.q", "arg.k", "arg.v", "out.y"}
        with np.load(d / entry["file"], allow_pickle=False) as z:
            assert z["sample.arg.q"].shape == (oracle.SAMPLE,) and "out.y" not in z.files
        low = entry["low_precision"]["bfloat16"]["y"]
        assert low["sampled"] and low["model"] == "plain bfloat16" and low["bound"] == 2 * max(low["plain_error"], low["eps"])
        flash = manifest["cases"][1]
        assert list(flash["intermediates"]) == ["running_max", "running_sum", "lse"]  # in the order of computation
        assert flash["intermediates"]["lse"]["shape"] == [129]
        assert flash["intermediates"]["running_max"]["shape"] == [3, 129]  # after each of the 3 key tiles of 64
        report = oracle.verify(d)
        assert report.ok, str(report)

    def test_changed_summary_or_registry_is_detected(self, generated_dir, tmp_path, monkeypatch):
        import shutil

        d, _ = generated_dir
        copy = tmp_path / "copy"
        shutil.copytree(d, copy)
        m = json.loads((copy / "manifest.json").read_text())
        m["cases"][0]["generated"]["summary"]["out.y"]["l2"] *= 1 + 1e-9
        m["cases"][1]["low_precision"]["float16"]["y"]["bound"] *= 2
        (copy / "manifest.json").write_text(json.dumps(m))
        report = oracle.verify(copy)
        assert "result y differs from the stored summary" in str(report) and "is not 2 max(plain_error" in str(report)
        case = oracle._CASES_BY_NAME[GENERATED[0]]
        monkeypatch.setitem(oracle._CASES_BY_NAME, GENERATED[0], dataclasses.replace(case, sizes={**case.sizes, "N": 66}))
        assert "differ from the registry" in str(oracle.verify(d))

    def test_load_case_and_compare_against_generated_vectors(self, generated_dir):
        d, _ = generated_dir
        g = oracle.load_case(d, GENERATED[0])
        assert g.arguments["q"].shape == (65, 64) and g.outputs["y"].shape == (65, 64) and g.plain == {}
        report = oracle.compare("attention.softmax_attention", lambda **kw: softmax_attention_numpy(**kw)["y"],
                                cases="tile_N65_d64_causal", vectors=d)
        assert report.passed
        r32 = oracle.compare("attention.flash_attention",
                             lambda **kw: {"y": softmax_attention_numpy(kw["q"], kw["k"], kw["v"], causal=kw["causal"])["y"]},
                             dtype="float32", cases="tile_N129_d128_causal", vectors=d)
        assert r32.passed and r32.cases[0].quantities[-1].model == "plain float32"

    # the official interfaces kernels are written against, forward and backward
    OFFICIAL = ("linear_rnn.chunk_gla", "linear_rnn.chunk_simple_gla", "linear_rnn.chunk_delta_rule",
                "linear_rnn.chunk_gated_delta_rule", "linear_rnn.mamba_chunk_scan_combined", "ssm.selective_scan_fn",
                "attention.flash_attn_func")

    @pytest.mark.parametrize("function", [f + s for f in OFFICIAL for s in ("", "_vjp")])
    def test_official_interfaces_have_cases_past_a_tile(self, function):
        """Each has a generated case whose length is past a multiple of its kernel's tile (64 steps; 2048 for
        mamba_ssm's selective scan, 128 for FlashAttention's rows) and, for the chunked ones, a head of >= 64."""
        gen = [c for c in oracle.CASES if c.function == function and c.sizes is not None]
        tile = {"ssm.selective_scan_fn": 2048, "attention.flash_attn_func": 128}.get(function.removesuffix("_vjp"), 64)
        args = [c.build(None) for c in gen]
        lengths = [a["u"].shape[-1] if function.startswith("ssm.") else
                   (a["q"] if "q" in a else a["x"]).shape[1] for a in args]
        assert any(n > tile and n % tile for n in lengths), (function, lengths)
        if function.startswith("linear_rnn."):
            assert any(max(a["q" if "q" in a else "x"].shape[-1], a.get("v", a.get("x")).shape[-1]) >= 64 for a in args)

    def test_a_dropped_last_chunk_is_caught_past_the_tile_only(self):
        """A chunk_gla 'kernel' that loses the partial last chunk (rows from 128 on) passes the small case and
        fails the one at T = 130: the reason for the tile cases."""
        from refimpl import linear_rnn

        def kernel(**kw):
            o = linear_rnn.chunk_gla(**kw)
            out = o[0] if isinstance(o, tuple) else o
            out = out.copy()
            out[:, 128:] = 0.0  # the partial chunk after two full chunks of 64
            return (out,) + tuple(o[1:]) if isinstance(o, tuple) else out

        small = oracle.compare("linear_rnn.chunk_gla", kernel, cases="states")
        tile = oracle.compare("linear_rnn.chunk_gla", kernel, cases="tile_T130_K64_V128")
        assert small.passed and not tile.passed
        assert tile.cases[0].first_failure.startswith("o")
        assert oracle.compare("linear_rnn.chunk_gla", linear_rnn.chunk_gla, cases="tile_T130_K64_V128").passed

    @pytest.mark.parametrize("function, case, quantity", [
        ("linear_rnn.mamba_chunk_scan_combined", "tile_T130_P64_N64", "out"),
        ("linear_rnn.chunk_delta_rule_vjp", "tile_T129", "dq"),
        ("linear_rnn.chunk_gla", "varlen_100_37_129", "o"),
        ("ssm.selective_scan_fn", "long_L2049_gated", "out"),
        ("ssm.selective_scan_fn_vjp", "long_L2049_gated", "du"),
        ("attention.flash_attn_func", "tile_N257_d128_causal", "out"),
        ("attention.flash_attn_func_vjp", "tile_N257_d128_causal", "dq"),
        ("attention.flash_attn_func", "tile_N257_M200_d128", "out"),
        ("attention.flash_attn_func", "causal_N65_M80", "out"),
    ])
    def test_planted_tile_bugs_fail_past_the_tile_only(self, function, case, quantity):
        """A bug a tiled kernel makes at its tile edge — the rows after the last full tile never written (fla's,
        mamba_ssm's chunks of 64; FlashAttention's blocks of 128), the scan restarted at the CUDA kernel's 2048-step
        chunk, a packed sequence that inherits the previous one's state — fails the generated case at the kernel's
        tile and passes every committed case of the function (where the bug does not act; FlashAttention-2's interfaces
        have generated cases only)."""
        from refimpl import attention, linear_rnn, ssm

        module = {"linear_rnn": linear_rnn, "ssm": ssm, "attention": attention}[function.split(".")[0]]
        ref = getattr(module, function.split(".")[1])

        def tail_unwritten(tile, axis, name):  # the rows from the last full tile on are left at 0 (T >= tile only)
            def kernel(**kw):
                res = ref(**kw)
                out = dict(res) if isinstance(res, dict) else list(res) if isinstance(res, tuple) else [res]
                key = name if isinstance(res, dict) else 0
                arr = np.array(out[key])
                full = arr.shape[axis] // tile * tile
                if full:
                    index = [slice(None)] * arr.ndim
                    index[axis] = slice(full, None)
                    arr[tuple(index)] = 0.0
                out[key] = arr
                return out if isinstance(res, dict) else tuple(out) if isinstance(res, tuple) else out[0]
            return kernel

        def scan_restarted(**kw):  # selective_scan_fn(_vjp) on [0, 2048) and [2048, L) separately
            L = kw["u"].shape[-1]
            if L <= 2048:
                return ref(**kw)
            parts = [ref(**{k: v[..., s] if isinstance(v, np.ndarray) and v.ndim == 3 and v.shape[-1] == L else v
                            for k, v in kw.items()}) for s in (slice(0, 2048), slice(2048, L))]
            if isinstance(parts[0], dict):
                return {k: np.concatenate([p[k] for p in parts], axis=-1) if parts[0][k].shape[-1:] == (2048,)
                        else parts[0][k] + parts[1][k] for k in parts[0]}
            first = parts[0] if isinstance(parts[0], tuple) else (parts[0],)
            second = parts[1] if isinstance(parts[1], tuple) else (parts[1],)
            out = (np.concatenate([first[0], second[0]], axis=-1),) + tuple(second[1:])
            return out if isinstance(parts[0], tuple) else out[0]

        def state_not_reset(**kw):  # chunk_gla on packed sequences, each started from the previous one's final state
            cu = kw.get("cu_seqlens")
            if cu is None:
                return ref(**kw)
            h0 = np.array(kw["initial_state"])
            outs, finals = [], []
            for i in range(len(cu) - 1):
                sl = slice(cu[i], cu[i + 1])
                o, final = ref(**{**kw, "q": kw["q"][:, sl], "k": kw["k"][:, sl], "v": kw["v"][:, sl],
                                  "g": kw["g"][:, sl], "initial_state": h0[i:i + 1] if i == 0 else finals[-1],
                                  "cu_seqlens": None, "output_final_state": True})
                outs.append(o)
                finals.append(final)
            return np.concatenate(outs, axis=1), np.concatenate(finals, axis=0)

        def pad_unmasked(**kw):  # the keys padded with zeros to a whole block of 128, the padding not masked
            Sk = kw["k"].shape[1]
            if kw.get("causal") or Sk % 128 == 0:
                return ref(**kw)
            pad = ((0, 0), (0, -Sk % 128), (0, 0), (0, 0))
            return ref(**{**kw, "k": np.pad(kw["k"], pad), "v": np.pad(kw["v"], pad)})

        def top_left(**kw):  # causal mask aligned to the top left (query i sees keys j <= i) when seqlen_q != seqlen_k
            q, k, v = kw["q"], kw["k"], kw["v"]
            if not kw.get("causal") or q.shape[1] == k.shape[1] or any(
                    kw.get(o) not in (None, 0.0, (-1, -1), [-1, -1]) for o in ("window_size", "softcap", "alibi_slopes")):
                return ref(**kw)
            y = attention.softmax_attention(np.swapaxes(q, 1, 2), np.swapaxes(k, 1, 2), np.swapaxes(v, 1, 2),
                                            causal=True, causal_alignment="top_left")
            return np.swapaxes(y, 1, 2)

        if case == "tile_N257_M200_d128":
            kernel = pad_unmasked
        elif case == "causal_N65_M80":
            kernel = top_left
        else:
            kernel = None
        kernel = kernel or {"linear_rnn.mamba_chunk_scan_combined": tail_unwritten(64, 1, "out"),
                  "linear_rnn.chunk_delta_rule_vjp": tail_unwritten(64, 1, "dq"),
                  "linear_rnn.chunk_gla": state_not_reset,
                  "ssm.selective_scan_fn": scan_restarted, "ssm.selective_scan_fn_vjp": scan_restarted,
                  "attention.flash_attn_func": tail_unwritten(128, 1, "out"),
                  "attention.flash_attn_func_vjp": tail_unwritten(128, 1, "dq")}[function]
        tile = oracle.compare(function, kernel, cases=case).cases[0]
        assert tile.status == "fail" and tile.first_failure == quantity, (tile.status, tile.message, tile.first_failure)
        committed = [c.split("/")[1] for c in oracle.case_names(function) if oracle._CASES_BY_NAME[c].sizes is None]
        assert not committed or oracle.compare(function, kernel, cases=committed).passed  # (flash_attn: none)
        assert oracle.compare(function, ref, cases=case).passed

    def test_packed_sequences_report_the_first_token_over_the_bound(self):
        """With cu_seqlens the time axis holds packed tokens: the first entry over the bound is found in token order
        (it was not reported: the order named the axis "step")."""
        from refimpl import linear_rnn

        def kernel(**kw):
            o, final = linear_rnn.chunk_gla(**kw)
            o = o.copy()
            o[:, 64:] *= 1.01  # wrong from token 64 on: sequence 0, chunk 1, step 64
            return o, final

        q = oracle.compare("linear_rnn.chunk_gla", kernel, cases="varlen_100_37_129").cases[0].quantities[0]
        assert q.name == "o" and not q.passed
        assert q.first_over == {"sequence": 0, "chunk": 1, "step": 64, "token": 64, "batch": 0, "head": 0, "channel": 0}

    def test_backward_passes_report_the_first_entry_in_the_adjoints_order(self):
        """Gradients from the adjoint (dk, dv, dg, ...: it runs from the last step back) are searched from the end for
        their first entry over the bound; those that read the forward states (dq) from the start. Before, a backward
        pass reported only its worst entry."""
        from refimpl import linear_rnn

        def kernel(**kw):
            g = dict(linear_rnn.chunk_gla_vjp(**kw))
            g["dk"] = g["dk"] * 1.01  # wrong everywhere: the first in the adjoint's order is the last step
            g["dq"] = g["dq"].copy()
            g["dq"][:, 64:] *= 1.01  # wrong from step 64 on
            return g

        report = oracle.compare("linear_rnn.chunk_gla_vjp", kernel, cases="tile_T129_K64").cases[0]
        first = {q.name: q.first_over for q in report.quantities if not q.passed}
        assert first["dq"] == {"chunk": 1, "step": 64, "batch": 0, "head": 0, "channel": 0}
        assert first["dk"] == {"chunk": 2, "step": 128, "batch": 0, "head": 0, "channel": 0}

    def test_attention_backward_reports_dk_key_by_key(self):
        from refimpl import attention

        def kernel(**kw):
            g = dict(attention.flash_attn_func_vjp(**kw))
            g["dk"] = g["dk"].copy()
            g["dk"][:, 256:] = 0.0  # the last key block's dk never written
            return g

        q = next(q for q in oracle.compare("attention.flash_attn_func_vjp", kernel, cases="tile_N257_d128_causal")
                 .cases[0].quantities if q.name == "dk")
        assert not q.passed and q.first_over == {"key": 256, "batch": 0, "head": 0, "column": 0}

    def test_version_1_export_of_a_generated_case(self, tmp_path):
        m = oracle.export(tmp_path, cases=GENERATED[:1], format_version=1)
        assert "low_precision" not in m["cases"][0] and oracle.verify(tmp_path).ok


# --------------------------------------------------------------------------------------------
# CITATION.cff
# --------------------------------------------------------------------------------------------


class TestCitationFile:
    CFF = Path(__file__).parent.parent / "CITATION.cff"

    def _fields(self):
        fields = {}
        for line in self.CFF.read_text(encoding="utf-8").splitlines():
            if line and not line.startswith((" ", "#", "-")) and ":" in line:
                key, value = line.split(":", 1)
                fields[key.strip()] = value.strip().strip('"')
        return fields

    def test_version_matches_package(self):
        assert self._fields()["version"] == refimpl.__version__

    def test_required_fields(self):
        f = self._fields()
        assert f["cff-version"] == "1.2.0"
        for key in ("message", "title", "authors", "version", "date-released", "license"):
            assert key in f, key
        assert f["license"] == "MIT" and f["date-released"] == "2026-11-22"
        assert "name: refimpl contributors" in self.CFF.read_text(encoding="utf-8")


class TestWrongTypesNamed:
    def test_wrong_types(self, tmp_path):
        with pytest.raises(TypeError, match="^case: expected a case name"):
            oracle.compute(3)
        with pytest.raises(TypeError, match="^case: expected a case name"):
            oracle.compute(None)
        for bad in (None, 3, b"Eq. (1.1)"):
            with pytest.raises(TypeError, match="^text: expected a str"):
                oracle.cited_tags(bad)
        with pytest.raises(TypeError, match="^function: expected a function name"):
            oracle.case_names(3)
        for f in (oracle.verify, lambda d: oracle.load_case(d, "x")):
            with pytest.raises(TypeError, match="^directory: expected a path"):
                f(3)
        with pytest.raises(TypeError, match="^root: expected a path"):
            oracle.citation_index(3)
        with pytest.raises(TypeError, match="^quiet: expected a bool"):
            oracle.export(tmp_path, cases=oracle.case_names("classical.lfm_pulse")[:1], quiet="no")


@pytest.mark.parametrize("name", ["attention.softmax_attention", "attention.flash_attention", "attention.softmax_attention_vjp"])
@pytest.mark.parametrize("options", [
    dict(causal=True, causal_alignment="bottom_right"),
    dict(causal=True, grouped_heads=True),
    dict(causal=True, window=24),
    dict(softcap=2.0, alibi_slopes=np.array([0.1, 0.3, 0.2, 0.4])),
    dict(causal=True, causal_alignment="bottom_right", grouped_heads=True, window=30, softcap=5.0),
], ids=["bottom-right", "grouped", "window", "softcap-alibi", "all"])
def test_every_attention_option_has_a_plain_low_precision_reference(name, options):
    """Without a plain model an option fell back to the rounded-inputs floor (8 ε32 in float32), which
    a correct float32 FlashAttention kernel with bottom-right alignment, grouped heads or a window
    under flash_attention exceeded (1.0-1.45e-6 over 2000 keys, an independent kernel author's trial).
    Every option is now modelled in the tier, and refimpl's own values rounded to float32 pass."""
    from refimpl import attention

    rng = np.random.default_rng(3)
    grouped = options.get("grouped_heads", False)
    q = rng.normal(size=(4, 60, 16))
    k, v = (rng.normal(size=(2 if grouped else 4, 90, 16)) for _ in range(2))
    args = dict(q=q, k=k, v=v, **options)
    if name.endswith("_vjp"):
        args["dy"] = rng.normal(size=(4, 60, 16))

        def fn(q, k, v, dy, **kw):
            return tuple(np.asarray(g, dtype=np.float32) for g in attention.softmax_attention_vjp(q, k, v, dy, **kw))
    elif name.endswith("flash_attention"):
        def fn(q, k, v, **kw):
            return attention.flash_attention(q, k, v, **kw).astype(np.float32)
    else:
        def fn(q, k, v, **kw):
            return attention.softmax_attention(q, k, v, **kw).astype(np.float32)
    report = oracle.compare(name, fn, dtype="float32", inputs=[args])
    models = {qr.name: qr.model for c in report.cases for qr in c.quantities}
    assert report.passed, report.table()
    assert all(m == "plain float32" for m in models.values()), models


# --------------------------------------------------------------------------------------------
# Where a failing report points: the largest error and the first entry over the bound, the table's format,
# tensors as returned values, cases the callable does not support, and the cost of `meets`
# --------------------------------------------------------------------------------------------


def _quantities(report, case=0) -> dict:
    return {q.name: q for q in report.cases[case].quantities}


class TestWhere:
    def test_attention_output_names_head_row_column(self):
        """The largest error (head 2, row 40) and, in the order rows are computed, the first entry over the bound
        (row 10 of head 0): both are reported, named, and printed on the quantity's line."""
        from refimpl import attention

        rng = np.random.default_rng(0)
        inp = {"q": rng.normal(size=(3, 70, 8)), "k": rng.normal(size=(3, 70, 8)), "v": rng.normal(size=(3, 70, 8)),
               "causal": True}

        def kernel(**kw):
            y = attention.softmax_attention(**kw)
            y[2, 40, 1] += 1e-3  # the largest error
            y[0, 10, 3] += 1e-6  # smaller, still over the bound 1e-10, in an earlier row
            return y

        report = oracle.compare("attention.softmax_attention", kernel, inputs=inp)
        y = _quantities(report)["y"]
        assert not y.passed and y.worst == {"head": 2, "row": 40, "column": 1} and y.worst_index == (2, 40, 1)
        assert y.first_over == {"row": 10, "head": 0, "column": 3} and y.first_over_index == (0, 10, 3)
        assert list(y.first_over) == ["row", "head", "column"]  # in the order of computation
        assert "> bound 1.0e-10 at head 2, row 40, column 1 (first over the bound: row 10, head 0, column 3)" in str(report)
        good = _quantities(oracle.compare("attention.softmax_attention", attention.softmax_attention, inputs=inp))["y"]
        assert good.passed and good.worst is not None and good.first_over is None

    def test_flash_attention_running_sum_first_wrong_key_tile(self):
        """FlashAttention's running statistics are computed key tile by key tile: the first entry over the bound is
        the earliest key tile (then row, then head), the largest error may come later; rows name their query tile."""
        from refimpl import attention

        inp = oracle.random_inputs("attention.flash_attention", seed=2, N=200, d=16, batch=2, causal=True)

        def kernel(**kw):
            y, lse, mid = attention.flash_attention(**kw, return_lse=True, return_intermediates=True)
            running_sum = mid["running_sum"].copy()
            running_sum[1, 2, 150] *= 1.1  # key tile 2, head 1: the largest error
            running_sum[0, 1, 100] *= 1.001  # key tile 1, head 0: the first over the bound
            return {"running_max": mid["running_max"], "running_sum": running_sum, "lse": lse, "y": y}

        report = oracle.compare("attention.flash_attention", kernel, dtype="float32", inputs=inp)
        q = _quantities(report)
        assert report.cases[0].first_failure == "running_sum" and q["y"].passed and q["running_max"].passed
        assert q["running_sum"].worst == {"head": 1, "key_tile": 2, "query_tile": 2, "row": 150}
        assert q["running_sum"].first_over == {"key_tile": 1, "query_tile": 1, "row": 100, "head": 0}
        assert "(first over the bound: key tile 1, query tile 1, row 100, head 0)" in str(report)

    @staticmethod
    def _ssd(perturb):
        from refimpl import linear_rnn

        def kernel(**kw):
            y, states = linear_rnn.ssd(**kw, return_chunk_states=True)
            y, states = y.copy(), states.copy()
            perturb(y, states)
            return {"chunk_states": states, "y": y}

        return kernel

    def test_chunked_recurrence_names_the_worst_sequence_when_the_whole_fails(self):
        """A 1 % error confined to head 2 from step 130 on: the whole output fails, and the report names the head
        (it named a sequence only when the whole passed), the chunk and step where it starts, and the first chunk
        state that went wrong."""
        inp = oracle.random_inputs("linear_rnn.ssd", seed=6, L=200, H=4, P=8, N=8, chunk_size=64)

        def perturb(y, states):
            y[2, 130:] += 1e-2 * np.abs(y).max()
            states[3, 1, 2, 5] += 1e-3 * np.abs(states).max()  # chunk 1 of head 3: the first state over the bound
            states[0, 2] += 1e-2 * np.abs(states).max()  # chunk 2 of head 0: larger

        report = oracle.compare("linear_rnn.ssd", self._ssd(perturb), dtype="float32", inputs=inp)
        q = _quantities(report)
        y, states = q["y"], q["chunk_states"]
        assert not y.passed and y.message == "" and y.worst_sequence == {"head": 2} and y.worst["head"] == 2
        assert y.first_over == {"chunk": 2, "step": 130, "head": 2, "channel": 0}
        assert states.first_over == {"chunk": 1, "head": 3, "channel": 2, "state": 5} and states.worst["chunk"] == 2
        assert "; worst sequence: head 2" in str(report)

    def test_one_by_one_failure_reports_the_worst_sequence(self):
        """Heads 1 and 3 fail their own bounds while the whole passes; head 3 by more: it is the one reported (the
        first failing sequence, head 1, was), and its location lies in head 3."""
        inp = oracle.random_inputs("linear_rnn.ssd", seed=6, L=200, H=4, P=8, N=8, chunk_size=64)

        def perturb(y, states):
            y[1, 130:] += 1.2e-6 * np.abs(y[1]).max()
            y[3, 150:] += 1.5e-6 * np.abs(y[3]).max()

        y = _quantities(oracle.compare("linear_rnn.ssd", self._ssd(perturb), dtype="float32", inputs=inp))["y"]
        assert not y.passed and y.message.startswith("2 of 4 sequences") and "the worst, (3,)" in y.message
        assert y.worst_sequence == {"head": 3} and y.worst["head"] == 3
        assert y.first_over == {"chunk": 2, "step": 150, "head": 3, "channel": 0}

    def test_smoother_is_computed_backwards(self):
        """The Kalman filter runs forwards, the RTS smoother backwards: the first wrong step differs."""
        from refimpl import kalman

        for name, first in [("kalman_filter", 3), ("rts_smoother", 8)]:
            def wrong(name=name, **kw):
                m, P = getattr(kalman, name)(**kw)
                m = m.copy()
                m[3, 0] += 1e-6
                m[8, 1] += 1e-3
                return m, P

            q = _quantities(oracle.compare(f"kalman.{name}", wrong, cases="regular"))["m"]
            assert q.worst == {"step": 8, "state": 1}
            assert q.first_over["step"] == first, (name, q.first_over)

    def test_packed_sequences_name_sequence_chunk_and_step(self):
        from refimpl import linear_rnn

        inp = oracle.random_inputs("linear_rnn.chunk_simple_gla", seed=0, seqlens=[70, 90], H=2, dk=8, dv=8)

        def wrong(**kw):
            o, state = linear_rnn.chunk_simple_gla(**kw)
            o = o.copy()
            o[0, 150, 1, 3] += 1e-3  # token 150: sequence 1 (tokens 70 … 159), its step 80, in its chunk 1
            return o, state

        q = _quantities(oracle.compare("linear_rnn.chunk_simple_gla", wrong, inputs=inp))["o"]
        assert q.worst == {"batch": 0, "sequence": 1, "chunk": 1, "step": 80, "token": 150, "head": 1, "channel": 3}

    def test_unknown_layout_gives_the_index(self):
        report = oracle.compare("lyapunov.phi1", lambda z, tau: (np.exp(z * tau) - 1) / z)  # 0/0 at z = 0
        q = _quantities(report)["phi"]
        assert not q.passed and list(q.worst) == ["axis0"] and q.first_over is None
        assert f"at index ({q.worst_index[0]},)" in str(report)


class TestReportFormat:
    def test_rel_is_printed_next_to_its_bound(self):
        passing = oracle.QuantityReport("running_max", "intermediate", True, 1.1e-6, 2.4e-7, 9.5e-7, 6.2e-8,
                                        model="plain float32")
        assert passing.line() == "running_max ok   rel 2.4e-07 <= bound 9.5e-07  abs 1.1e-06  plain 6.2e-08 (plain float32)"
        by_atol = oracle.QuantityReport("x", "output", True, 1e-15, 3e-9, 1e-10, atol=1e-14)
        assert "rel 3.0e-09 > bound 1.0e-10  abs 1.0e-15 <= atol 1.0e-14" in by_atol.line()
        report = oracle.compare("afa.isotropic_afa", isotropic_afa_port, dtype=np.float32, cases="causal_student")
        lines = str(report).splitlines()[2:]
        assert len(lines) == 5 and all(re.search(r" ok   rel \S+ <= bound \S+  abs \S+  plain ", line) for line in lines)


class FakeTensor:
    """Converts as a PyTorch tensor does: ``numpy()`` refuses while it requires grad or lives on a device, and a
    bfloat16 one has no NumPy dtype (``float()`` upcasts it); ``__array__`` calls ``numpy()``."""

    def __init__(self, a, requires_grad=False, device="cpu", bf16=False):
        self.a, self.requires_grad, self.device, self.bf16 = np.asarray(a), requires_grad, device, bf16

    def detach(self):
        return FakeTensor(self.a, False, self.device, self.bf16)

    def cpu(self):
        return FakeTensor(self.a, self.requires_grad, "cpu", self.bf16)

    def float(self):
        return FakeTensor(self.a.astype(np.float32), self.requires_grad, self.device, False)

    def numpy(self):
        if self.requires_grad:
            raise RuntimeError("Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy() instead.")
        if self.device != "cpu":
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor first.")
        if self.bf16:
            raise TypeError("Got unsupported ScalarType BFloat16")
        return self.a

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.numpy(), dtype=dtype)


class TestTensors:
    def test_tensors_that_require_grad_or_live_on_a_device_are_accepted(self):
        from refimpl import attention

        inp = oracle.random_inputs("attention.softmax_attention", seed=0, N=50, d=8, causal=True)
        y = attention.softmax_attention(**inp).astype(np.float32)
        for value in (FakeTensor(y, requires_grad=True), FakeTensor(y, requires_grad=True, device="cuda"), FakeTensor(y)):
            report = oracle.compare("attention.softmax_attention", lambda **kw: value, dtype="float32", inputs=inp)
            assert report.passed, report.table()
        bf = FakeTensor(oracle.round_to(y, "bfloat16").astype(np.float32), requires_grad=True, bf16=True)
        assert oracle.compare("attention.softmax_attention", lambda **kw: bf, dtype="bfloat16", inputs=inp).passed

    def test_lse_tensor_in_a_16_bit_tier(self):
        """FlashAttention's lse is judged in float32 when returned in float32: that check read the value itself,
        and a tensor that requires grad made compare raise."""
        from refimpl import attention

        inp = oracle.random_inputs("attention.flash_attention", seed=0, N=70, d=8, causal=True)
        y, lse = attention.flash_attention(**inp, return_lse=True)
        kernel = lambda **kw: {"lse": FakeTensor(lse.astype(np.float32), requires_grad=True),  # noqa: E731
                               "y": FakeTensor(oracle.round_to(y, "bfloat16"), requires_grad=True)}
        report = oracle.compare("attention.flash_attention", kernel, dtype="bfloat16", inputs=inp)
        assert report.passed and _quantities(report)["lse"].model.endswith("judged in float32"), report.table()

    def test_unconvertible_value_reports_the_original_error(self):
        class Broken:
            def __array__(self, dtype=None, copy=None):
                raise RuntimeError("device-side assert triggered")

        c = oracle.compare("lyapunov.phi1", lambda **kw: Broken()).cases[0]
        assert c.status == "fail" and c.quantities[0].message == "not an array (RuntimeError: device-side assert triggered)"
        c = oracle.compare("lyapunov.phi1", lambda **kw: {"phi": [[1.0], [1.0, 2.0]]}).cases[0]  # ragged
        assert c.quantities[0].message.startswith("not an array (ValueError: ")


class TestSkipped:
    @staticmethod
    def kernel(q, k, v, causal=False, **options):
        if options:
            raise NotImplementedError(f"options {sorted(options)}")
        return softmax_attention_numpy(q, k, v, causal=causal)

    def test_unsupported_options_are_skipped(self):
        report = oracle.compare("attention.softmax_attention", self.kernel, dtype="float32")
        skipped = [c for c in report.cases if c.status == "skipped"]
        assert skipped and {c.status for c in report.cases} == {"pass", "skipped"}
        assert all(c.message.startswith("not supported by the callable (raised NotImplementedError: options ") for c in skipped)
        assert report.passed and report.meets == "float32" and report.skipped == [c.case for c in skipped]
        text = str(report)
        n = len(report.cases) - len(skipped)
        assert f"PASS, {n}/{n} cases ({len(skipped)} skipped: not supported by the callable)" in text
        assert "SKIPPED not supported by the callable" in text

    def test_nothing_compared_is_not_a_pass(self):
        def unsupported(**kw):
            raise NotImplementedError

        report = oracle.compare("attention.softmax_attention", unsupported)
        assert {c.status for c in report.cases} == {"skipped"} and not report.passed and report.meets is None
        assert "NOTHING COMPARED, all" in str(report).splitlines()[0]

    def test_user_inputs_are_not_skipped(self):
        inp = oracle.random_inputs("attention.softmax_attention", seed=0, N=20, d=4, window=5)
        c = oracle.compare("attention.softmax_attention", self.kernel, inputs=inp).cases[0]
        assert c.status == "error" and c.message == "raised NotImplementedError: options ['window']"


def _ONE_BY_ONE_IN(report) -> bool:
    return any(oracle._ONE_BY_ONE in q.message for c in report.cases for q in c.quantities)


def _meets_in_full(case, args, oracle_values, mapped, tier, defaults, **_):
    """The finest tier met, judged in full: every tier from ``tier`` down, every quantity against its plain
    reference (as ``compare`` computed it before it became lazy and cheaper)."""
    from refimpl._precision import ladder
    from refimpl._testing import PLAIN_ULPS

    for t in (tier,) + ladder(tier):
        try:
            rounded = {k: oracle._round(v, t) for k, v in args.items() if v is not None}
            plain, models = oracle._plain(case, {**defaults, **rounded}, t, [q for q in oracle_values if q in mapped],
                                          oracle_values)
        except Exception:
            continue
        outs = case.output_names()
        floors = oracle._Floors(case.function, args, tier=t)
        on_rounded = oracle._OnRounded(case, {**defaults, **rounded})
        tiers = {q: oracle._judged_tier(case.function, q, mapped[q], t) for q in oracle_values if q in mapped}
        judged = [oracle._judge(q, "output" if q in outs else "intermediate", mapped[q], oracle_values[q], dtype=jt,
                                rtol=case.rtol, atol=case.atol, plain=plain[q],
                                ulps=PLAIN_ULPS[jt] if models[q].startswith("plain") else case.ulps,
                                floor=floors(q, oracle_values[q]), seq=floors.sequences(q), exact=on_rounded)
                  for q, jt in tiers.items()]
        if all(j.passed and j.plain_error is not None and j.plain_error <= oracle.MEETS_MAX_PLAIN_ERROR for j in judged):
            return t
    return None


class TestMeets:
    def test_meets_is_computed_when_first_read_from_a_copy(self, monkeypatch):
        from refimpl import _lowprec

        calls = []
        real = oracle._meets
        monkeypatch.setattr(oracle, "_meets", lambda *a, **kw: calls.append(1) or real(*a, **kw))
        inp = oracle.random_inputs("attention.softmax_attention", seed=0, N=300, d=32, causal=True)
        out = _lowprec.softmax_attention(**inp, tier="tf32", weights=False)["y"]  # a TF32 kernel, asked for float32
        report = oracle.compare("attention.softmax_attention", lambda **kw: out, dtype="float32", inputs=inp)
        assert not report.passed and calls == []  # a failing compare costs no more than a passing one …
        out[...] = 0.0  # … and the kernel may reuse its output buffer
        assert report.cases[0].meets == "tf32" and calls == [1]
        assert report.meets == "tf32" and "within the bounds of tier: tf32" in str(report) and calls == [1]

    def test_meets_counts_the_judged_quantities_only(self):
        """An optional output left out (None) is not judged, and does not count for the finest tier met: a chunk_gla
        kernel whose o is rounded to float16, asked for float32, meets the same tier whether it returns its state
        (rounded alike) or None (it met none: "errors within the bounds of tier: none"). Likewise a backward pass
        that leaves out dh0."""
        from refimpl import linear_rnn

        r16 = lambda a: oracle.round_to(a, "float16").astype(np.float32)  # noqa: E731
        inp = oracle.random_inputs("linear_rnn.chunk_gla", seed=0, L=128, H=2, dk=16, dv=16, states=True)
        reports = {}
        for state in (True, False):
            def kernel(state=state, **kw):
                o, h = linear_rnn.chunk_gla(**kw)
                return r16(o), r16(h) if state else None

            reports[state] = oracle.compare("linear_rnn.chunk_gla", kernel, dtype="float32", inputs=inp)
        assert not reports[True].passed and not reports[False].passed
        assert reports[False].cases[0].quantities[-1].message == "not returned (optional): not judged"
        assert reports[False].meets == reports[True].meets == "tf32"
        assert "errors within the bounds of tier: tf32" in str(reports[False])
        inp = oracle.random_inputs("linear_rnn.chunk_gla_vjp", seed=0, L=128, H=2, dk=16, dv=16, states=True)
        grads = linear_rnn.chunk_gla_vjp(**inp)
        meets = {n: oracle.compare("linear_rnn.chunk_gla_vjp", lambda **kw: tuple(r16(grads[g]) for g in names),
                                   dtype="float32", inputs=inp).meets
                 for n, names in (("with dh0", ("dq", "dk", "dv", "dg", "dh0")), ("without", ("dq", "dk", "dv", "dg")))}
        assert meets["without"] == meets["with dh0"] is not None, meets

    def test_a_pickled_report_carries_meets(self):
        """Reports sent between processes (a pool of workers comparing kernels) take ``meets`` computed along."""
        import pickle

        from refimpl import _lowprec

        inp = oracle.random_inputs("attention.softmax_attention", seed=0, N=100, d=16, causal=True)
        out = _lowprec.softmax_attention(**inp, tier="tf32", weights=False)["y"]
        report = oracle.compare("attention.softmax_attention", lambda **kw: out, dtype="float32", inputs=inp)
        back = pickle.loads(pickle.dumps(report))
        assert back.meets == "tf32" and back.cases[0].quantities[0].worst == report.cases[0].quantities[0].worst

    def test_meets_as_judged_in_full(self, monkeypatch, exported):
        """The lazy, staged `meets` (the compared tier not judged twice, hopeless tiers not run, a tier abandoned at
        its first failure) gives the tier that judging every quantity in every tier gives."""
        from refimpl import _lowprec, attention

        seen = []
        real = oracle._meets

        def both(*a, **kw):
            got = real(*a, **kw)
            seen.append((got, _meets_in_full(*a, **kw)))
            return got

        monkeypatch.setattr(oracle, "_meets", both)
        inp = oracle.random_inputs("attention.flash_attention", seed=1, N=150, d=16, batch=2, causal=True)
        y, lse, mid = attention.flash_attention(**inp, return_lse=True, return_intermediates=True)

        def plain(tier, scale=1.0, **more):
            got = _lowprec.softmax_attention(**{k: inp[k] for k in ("q", "k", "v", "causal")}, tier=tier, weights=False)
            return {**mid, "lse": got["lse"], "y": got["y"] * np.float32(scale), **more}

        runs = [("float32", plain("tf32")), ("float16", plain("bfloat16")), ("float32", plain("float32", 1.5)),
                ("float32", plain("float32", 1 + 3e-3)), ("float32", plain("float32", 1 + 3e-5)),
                ("float32", plain("float32", running_sum=mid["running_sum"] * 1.01)), ("tf32", plain("float16", 1.3))]
        for tier, values in runs:
            report = oracle.compare("attention.flash_attention", lambda **kw: values, dtype=tier, inputs=inp)
            assert not report.passed
            assert report.meets is not None or report.meets is None  # read it
        report = oracle.compare("afa.isotropic_afa", lambda **kw: isotropic_afa_port(bug="decay", **kw), dtype=np.float32)
        _ = report.meets
        report = oracle.compare("ssm.selective_scan", lambda **kw: 1.0001 * oracle.compute("ssm.selective_scan/mamba", args=kw)[1]["y"],
                                dtype="float32", cases="mamba")
        _ = report.meets
        report = oracle.compare("afa.isotropic_afa", lambda **kw: isotropic_afa_port(bug="decay", **kw), dtype=np.float32,
                                cases="causal_student", vectors=exported)  # the stored plain reference: tier judged again
        _ = report.meets
        ssd = oracle.random_inputs("linear_rnn.ssd", seed=6, L=200, H=4, P=8, N=8, chunk_size=64)

        def one_head(y, states):  # fails one sequence's bound, not the whole's (judged one by one)
            y[3, 150:] += 1.5e-6 * np.abs(y[3]).max()

        report = oracle.compare("linear_rnn.ssd", TestWhere._ssd(one_head), dtype="float32", inputs=ssd)
        assert _ONE_BY_ONE_IN(report) and report.meets == "tf32"
        lazy, full = zip(*seen)
        assert lazy == full, seen
        assert {"tf32", "bfloat16", None} <= set(lazy), seen


# ---- random_inputs: every option checked, none ignored; heads= for the attention draws ----------------------------

#: small sizes for each forward function of random_inputs (a backward pass takes its forward function's)
_SMALL = {
    "attention.softmax_attention": dict(N=6, d=3),
    "attention.flash_attention": dict(N=6, d=3),
    "random_features.linear_attention": dict(N=6, d=3),
    "random_features.performer_attention": dict(N=6, d=4, m=5),
    "ssm.selective_scan": dict(L=6, d_in=2, n=3),
    "ssm.selective_scan_fn": dict(L=6, d_in=2, n=3),
    "ssm.selective_state_update": dict(batch=1, nheads=2, dim=3, dstate=2, pool=2),
    "iir.sos_filter": dict(N=20),
    "iir.biquad_filter": dict(N=20),
    "linear_rnn.ssd": dict(L=6, H=2, P=2, N=2),
    "linear_rnn.gated_linear_attention": dict(L=6, dk=3, dv=2),
    "linear_rnn.retention": dict(L=6, H=2, dk=3, dv=2),
    "linear_rnn.delta_rule": dict(L=6, dk=3, dv=2),
    "linear_rnn.mamba_chunk_scan_combined": dict(L=6, H=2, P=2, N=2),
    "linear_rnn.chunk_gla": dict(L=6, H=2, dk=3, dv=2),
    "linear_rnn.chunk_simple_gla": dict(L=6, H=2, dk=3, dv=2),
    "linear_rnn.chunk_delta_rule": dict(L=6, H=2, dk=3, dv=2),
    "linear_rnn.chunk_gated_delta_rule": dict(L=6, H=2, dk=3, dv=2),
    "attention.flash_attn_func": dict(seqlen_q=5, nheads=2, headdim=3),
    "attention.flash_attn_varlen_func": dict(seqlens_q=[3, 2], nheads=2, headdim=3),
}

#: a valid value other than the default, for the options that are not plain sizes or flags
_OTHER = {"causal_alignment": "bottom_right", "discretization": "zoh", "window_size": (2, -1), "softcap": 5.0,
          "gate_normalizer": 2.0, "wn": 0.2, "r": 0.9, "theta": 1.0, "order": 4, "kv_heads": 2, "seqlens": [2, 4],
          "seqlens_q": [2, 2], "seqlens_k": [3, 1]}


def _forward(name: str) -> str:
    return name if name in _SMALL else name.removesuffix("_vjp")


def _same_draw(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(a[k], b[k]) and np.shape(a[k]) == np.shape(b[k]) if isinstance(a[k], np.ndarray)
        else type(a[k]) is type(b[k]) and a[k] == b[k] for k in a)


def _bad_values(option: str, default) -> list:
    """Values of ``option`` that random_inputs must refuse, naming it."""
    nan, inf = float("nan"), float("inf")
    if option == "softcap":  # None is refimpl's "no cap"; FlashAttention's is 0.0
        return [-1.0, nan, inf, "abc", True] + ([0.0] if default is None else [])
    if option in ("gate_normalizer", "wn", "r"):
        return [0.0, -1.0, nan, inf, "abc", None, True] + ([1.0, 1.5] if option != "gate_normalizer" else [])
    if option == "theta":
        return [-0.1, 4.0, nan, inf, "abc", None, True]
    if option in ("discretization", "causal_alignment"):
        return ["euler", 3] + ([None] if default is not None else [])
    if option == "window_size":
        return ["ab", (1,), (1, 2, 3), (1.5, 2), (True, 1), None, 5, np.array([1, 2])]
    if option.startswith("seqlens"):
        return [[], [0, 3], [2.5], "ab", 5, [True, 2]]
    if isinstance(default, bool):
        return ["yes", 1, None, 0.0, np.array([True])]
    assert isinstance(default, int), (option, default)
    return [-1, 2.5, "3", None, True, np.array([2])] + ([0] if default else [])


@pytest.mark.parametrize("name", oracle.RANDOM_INPUTS)
def test_random_inputs_checks_every_option_and_ignores_none(name):
    # for every option the function takes: its documented default given explicitly is the same draw as leaving it
    # out; a bad value is refused by a ValueError/TypeError whose subject is the option; another valid value changes
    # the draw (an option that changed nothing would be silently ignored). Keywords it does not take are refused.
    options = oracle._RANDOM_OPTIONS[_forward(name)]
    base = _SMALL[_forward(name)]
    assert _forward(name) in _SMALL and oracle._forward_of(name) == _forward(name)
    for option, default in options.items():
        assert f"``{option}``" in oracle.random_inputs.__doc__, f"{name}: {option} is not documented"
        # the other options an option needs: a head axis for grouped heads and ALiBi, the delta rule's gates
        needs = {"kv_heads": dict(heads=4), "alibi": dict(heads=2) if "heads" in options else {},
                 "gate_normalizer": dict(gated=True) if "gated" in options else {}}.get(option, {})
        without = {k: v for k, v in base.items() if k != option} | needs
        assert _same_draw(oracle.random_inputs(name, seed=1, **without, **{option: default}),
                          oracle.random_inputs(name, seed=1, **without)), (name, option)
        for bad in _bad_values(option, default):
            with pytest.raises((ValueError, TypeError)) as info:
                oracle.random_inputs(name, seed=1, **{**without, option: bad})
            subject = re.match(r"^([\w, ]+):", str(info.value))
            assert subject and option in [s.strip() for s in subject.group(1).split(",")], (name, option, bad, info.value)
        if option in _OTHER:
            other = _OTHER[option]
        elif isinstance(default, bool):
            other = not default
        else:
            other = base.get(option, default) + 1
        assert not _same_draw(oracle.random_inputs(name, seed=1, **{**base, **needs, option: other}),
                              oracle.random_inputs(name, seed=1, **{**base, **needs})), (name, option, other)
    with pytest.raises(ValueError, match=rf"^sizes: unknown \['width'\] for {re.escape(name)}\b"):
        oracle.random_inputs(name, seed=1, width=3, **base)


def test_random_inputs_options_cover_the_supported_functions():
    forwards = {_forward(n) for n in oracle.RANDOM_INPUTS}
    assert forwards == set(oracle._RANDOM_OPTIONS) == set(_SMALL)
    with pytest.raises(ValueError, match="^name: random_inputs supports"):
        oracle.random_inputs("linear_rnn.rls_memory", seed=0, states=True)  # not a supported function, whatever else


@pytest.mark.parametrize("name, sizes, match", [
    # DeltaNet has no gate: fuzz17's report found gate_normalizer accepted and ignored
    ("linear_rnn.chunk_delta_rule", dict(gate_normalizer=2.0), r"unknown \['gate_normalizer'\].*chunk_gated_delta_rule has one"),
    ("linear_rnn.chunk_delta_rule_vjp", dict(gate_normalizer=2.0), r"unknown \['gate_normalizer'\]"),
    # retention's leading axis holds its heads: batch was accepted and ignored
    ("linear_rnn.retention", dict(batch=2), r"unknown \['batch'\].*no batch axis: its leading axis holds the H heads"),
    ("linear_rnn.retention_vjp", dict(batch=2), r"unknown \['batch'\]"),
    # heads= is the attention draws' keyword; elsewhere the message says what the heads are called
    ("linear_rnn.ssd", dict(heads=2), r"unknown \['heads'\].*the number of heads is H here"),
    ("linear_rnn.chunk_gla", dict(heads=2), r"unknown \['heads'\].*the number of heads is H here"),
    ("attention.flash_attn_func", dict(heads=2), r"unknown \['heads'\].*the number of heads is nheads here"),
    ("random_features.linear_attention", dict(heads=2), r"unknown \['heads'\].*draws no head axis \(its leading axis is batch\)"),
    ("attention.softmax_attention", dict(dtype="float32"), r"unknown \['dtype'\].*compare's dtype="),
    ("linear_rnn.mamba_chunk_scan_combined", dict(width=2), r"unknown \['width'\] for linear_rnn.mamba_chunk_scan_combined; known: .*batch=1"),
])
def test_random_inputs_refuses_options_a_function_does_not_use(name, sizes, match):
    # each keyword is valid for another family, so a draw that ignored it would look plausible
    with pytest.raises(ValueError, match="^sizes: " + match):
        oracle.random_inputs(name, seed=0, **_SMALL[_forward(name)], **sizes)


def test_random_inputs_flash_attention_options():
    # fuzz17 finding: softcap=None failed in a bare float(), softcap=-1, True and window_size='ab' were accepted
    kw = dict(seqlen_q=4, headdim=2)
    for name in ("attention.flash_attn_func", "attention.flash_attn_func_vjp"):
        none = oracle.random_inputs(name, seed=0, softcap=None, **kw)
        assert none["softcap"] == 0.0 and _same_draw(none, oracle.random_inputs(name, seed=0, **kw))
        for bad, exc in (("abc", TypeError), (-1.0, ValueError), (True, TypeError), (float("nan"), ValueError)):
            with pytest.raises(exc, match="^softcap: "):
                oracle.random_inputs(name, seed=0, softcap=bad, **kw)
        for bad in ("ab", (1,), (0.5, 1), None):
            with pytest.raises(TypeError, match="^window_size: "):
                oracle.random_inputs(name, seed=0, window_size=bad, **kw)
    listed = oracle.random_inputs("attention.flash_attn_func", seed=0, window_size=[16, -1], **kw)
    assert listed["window_size"] == [16, -1]  # kept as given: the golden case's arguments are unchanged
    packed = oracle.random_inputs("attention.flash_attn_varlen_func", seed=0, seqlens_q=[3, 5], seqlens_k=None, headdim=2)
    assert np.array_equal(packed["cu_seqlens_k"], [0, 3, 8]) and packed["max_seqlen_k"] == 5


@pytest.mark.parametrize("name", ["attention.softmax_attention", "attention.flash_attention",
                                  "attention.softmax_attention_vjp"])
def test_random_inputs_heads_is_the_attention_head_axis(name):
    # heads= is the explicit name of the query heads; batch= (its older name) gives the same draw
    kw = dict(N=7, M=9, d=3, dv=2, kv_heads=2, window=3, alibi=True, causal=True, causal_alignment="bottom_right")
    by_heads = oracle.random_inputs(name, seed=5, heads=4, **kw)
    assert _same_draw(by_heads, oracle.random_inputs(name, seed=5, batch=4, **kw))
    assert by_heads["q"].shape == (4, 7, 3) and by_heads["k"].shape == (2, 9, 3) and by_heads["v"].shape == (2, 9, 2)
    assert by_heads["grouped_heads"] and by_heads["alibi_slopes"].shape == (4,)
    if name.endswith("_vjp"):
        assert by_heads["dy"].shape == (4, 7, 2)
    assert oracle.random_inputs(name, seed=5, N=7, d=3, heads=0)["q"].shape == (7, 3)  # 0: no head axis
    with pytest.raises(ValueError, match=r"^heads, batch: give the number of query heads once"):
        oracle.random_inputs(name, seed=5, N=7, d=3, heads=4, batch=4)
    with pytest.raises(ValueError, match=r"^heads, batch: kv_heads and alibi need a head axis"):
        oracle.random_inputs(name, seed=5, N=7, d=3, kv_heads=2)
    with pytest.raises(ValueError, match=r"^heads: kv_heads and alibi need a head axis"):
        oracle.random_inputs(name, seed=5, N=7, d=3, heads=0, alibi=True)
    with pytest.raises(ValueError, match=r"^kv_heads: the 6 query heads \(heads\) must be a multiple"):
        oracle.random_inputs(name, seed=5, N=7, d=3, heads=6, kv_heads=4)
    with pytest.raises(ValueError, match=r"^heads: expected an int >= 0"):
        oracle.random_inputs(name, seed=5, N=7, d=3, heads=2.0)


def test_random_inputs_heads_reshape_to_batch_and_heads():
    # the docstring's recipe for a (B, H, N, d) kernel: heads = B·H, kv_heads = B·H_kv, reshaped; each batch row's
    # query heads read their own row's key/value heads, so the reshaped call gives the flat call's output
    from refimpl import attention

    B, H, H_kv = 3, 4, 2
    flat = oracle.random_inputs("attention.softmax_attention", seed=2, N=5, d=3, heads=B * H, kv_heads=B * H_kv,
                                causal=True)
    y = attention.softmax_attention(**flat)
    four = {**flat, "q": flat["q"].reshape(B, H, 5, 3), "k": flat["k"].reshape(B, H_kv, 5, 3),
            "v": flat["v"].reshape(B, H_kv, 5, 3)}
    np.testing.assert_allclose(attention.softmax_attention(**four), y.reshape(B, H, 5, 3), rtol=1e-14, atol=0)


def test_random_inputs_packed_length_bound():
    # a packed batch longer than the int32 offsets of the kernels is refused, naming the argument (not NumPy's
    # "Maximum allowed dimension exceeded" from the allocation)
    with pytest.raises(ValueError, match="^seqlens: the packed length"):
        oracle.random_inputs("linear_rnn.chunk_gla", seed=0, seqlens=[3, 2**70])
    with pytest.raises(ValueError, match="^seqlens_q: the packed length"):
        oracle.random_inputs("attention.flash_attn_varlen_func", seed=0, seqlens_q=[2**31, 1])


def test_rel_error_is_public_and_is_compares_measure():
    # Eq. (15.1), the measure compare's verdicts use, is public as oracle.rel_error (a kernel author's own checks)
    assert "rel_error" in oracle.__all__
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    assert oracle.rel_error(a, b) == refimpl._testing.rel_error(a, b)  # the measure compare uses
    with pytest.raises(ValueError, match="^actual: expected the shape of desired"):
        oracle.rel_error(a[:2], b)
    with pytest.raises(ValueError, match="^desired: expected no NaN"):
        oracle.rel_error(a, np.full((3, 4), np.nan))
    with pytest.raises(TypeError, match="^actual: "):
        oracle.rel_error("x", b)
    assert oracle.rel_error([1.0, 2.0 + 1e-6], [1.0, 2.0]) == pytest.approx(5e-7, rel=1e-9)
    assert oracle.rel_error([0.5, -np.inf], [0.5, -np.inf]) == 0.0  # an infinite entry must match exactly
    assert oracle.rel_error([0.5, 0.0], [0.5, -np.inf]) == np.inf


def test_large_logits_bfloat16_output_bound_is_loose_and_lse_stays_tight():
    # Chapter 15, §15.5 (logits of order 100 in bfloat16): rounding the inputs alone moves the output by several
    # percent and the plain bfloat16 reference, which stores its logits in bfloat16, by more, so the output's bound
    # exceeds 10 %; the log-sum-exp returned in float32 is judged in float32 with a bound below 1 % of its largest
    # |ℓ| (about 120 here), which is still most of a nat: the plain ℓ comes from logits rounded to bfloat16 (spaced
    # by 1 above 128). An ℓ off by 2 % of its largest value (about 2.4 nats) fails; an output off by 2 % passes.
    from refimpl import attention

    inp = oracle.random_inputs("attention.flash_attention", seed=2, N=256, d=64, causal=True, block_k=128)
    inp["q"] = 30 * inp["q"]

    def kernel(shift_lse=0.0, scale_y=1.0):
        def fn(q, k, v, causal, block_q, block_k, **_):  # exact on its (bfloat16) inputs: the inputs' rounding only
            y, lse = attention.flash_attention(*(np.asarray(x, np.float64) for x in (q, k, v)), causal=causal,
                                               block_q=block_q, block_k=block_k, return_lse=True)
            return {"lse": (lse + shift_lse * np.abs(lse).max()).astype(np.float32),
                    "y": oracle.round_to(scale_y * y, "bfloat16")}
        return fn

    lse, y = oracle.compare("attention.flash_attention", kernel(), dtype="bfloat16", inputs=inp).cases[0].quantities
    assert lse.passed and y.passed and "judged in float32" in lse.model
    assert y.rel_error > 0.02 and y.plain_error > 1.5 * y.rel_error and y.bound > 0.1
    assert lse.bound < 0.01 < 2 * oracle.tier_eps("bfloat16")  # relative: below the bfloat16 grid's 2ε ...
    top = np.abs(attention.flash_attention(inp["q"], inp["k"], inp["v"], causal=True, return_lse=True)[1]).max()
    assert 0.4 < lse.bound * top < 1.5 and 0.1 < lse.abs_error < 0.6  # ... absolute: most of a nat, ℓ's own error tenths
    assert oracle.compare("attention.flash_attention", kernel(scale_y=1.02), dtype="bfloat16", inputs=inp).passed
    assert not oracle.compare("attention.flash_attention", kernel(shift_lse=0.02), dtype="bfloat16", inputs=inp).passed


def test_effective_log_decay_of_gates_relative_to_the_largest_cumulative_decay():
    # the ratios effective_log_decay's docstring and chapter 15 (§15.3) state for gates log σ(ξ) (τ = 1) and
    # log σ(ξ)/16 over draws of 4 × 256 steps in chunks of 64: C_eff / max|c| in (1.0, 1.45) and (1.55, 1.75)
    def ratio(log_g):
        return oracle.effective_log_decay(log_g, 64) / np.abs(np.cumsum(log_g.reshape(4, -1, 64), axis=-1)).max()

    gates = [-np.logaddexp(0, -np.random.default_rng(seed).standard_normal((4, 256))) for seed in range(20)]
    tau1, tau16 = [ratio(g) for g in gates], [ratio(g / 16) for g in gates]
    assert 1.0 < min(tau1) and max(tau1) < 1.45
    assert 1.55 < min(tau16) and max(tau16) < 1.75
    assert 0.70 < ratio(np.full((4, 256), -1.0)) < 0.75  # a decay of e^-1 per step: 0.73


def _refimpl_call(fn, call: str):
    """``fn`` called as a registered call's note ``(refimpl: name=expression, …)`` says: each keyword added, its
    expression evaluated with the case's arguments as names (``n_features=len(projection)``); an expression that is
    a bare argument name passes that argument under the keyword's name instead (``rng=seed``: the seed as rng)."""
    note = re.search(r"\(refimpl: (.*)\)\s*$", call)
    keywords = ast.parse(f"f({note.group(1)})", mode="eval").body.keywords if note else []
    renamed = {kw.value.id for kw in keywords if isinstance(kw.value, ast.Name)}

    def kernel(**args):
        extra = {kw.arg: eval(compile(ast.Expression(kw.value), call, "eval"), {"len": len}, dict(args))
                 for kw in keywords}
        return fn(**{k: v for k, v in args.items() if k not in renamed}, **extra)

    return kernel


def _public(name: str):
    module, function = name.split(".")
    return getattr(importlib.import_module(f"refimpl.{module}"), function)


#: registered functions whose calls describe a conversion, not keywords (prose in the call): refimpl's own function
#: takes a model, parameters or weights built from the case's arrays (or, attention_statistics, is no public function)
_CONVERTED_CALLS = {"attention.attention_statistics", "focus.focus_layer", "focus.hypernetwork",
                    "random_features.reversible_forward", "random_features.reversible_inverse", "sde.discretize",
                    "sde.euler_maruyama", "sde.moments", "sde.sample", "sde.transition_matrix"}


@pytest.mark.parametrize("name", sorted(oracle.RANDOM_INPUTS))
def test_refimpl_passes_its_own_oracle_by_the_documented_call(name):
    # every function random_inputs draws for: refimpl's own public function, called as the registry's call says
    # (the case's arguments by name, plus the keywords of its "(refimpl: …)" note), meets float64 and bfloat16 —
    # a call a user cannot follow with refimpl's own function is a documentation bug (performer_attention's was)
    kernel = _refimpl_call(_public(name), oracle.FUNCTIONS[name].call)
    inputs = oracle.random_inputs(name, seed=3)
    for dtype in ("float64", "bfloat16"):
        report = oracle.compare(name, kernel, dtype=dtype, inputs=inputs)
        assert report.passed, f"{name} in {dtype}:\n{report}"


def test_refimpl_passes_its_golden_cases_by_the_documented_call():
    # the same for every registered function and golden case (float64), but those whose calls describe a conversion
    failed = {}
    for name in sorted(set(oracle.function_names()) - _CONVERTED_CALLS):
        report = oracle.compare(name, _refimpl_call(_public(name), oracle.FUNCTIONS[name].call))
        if not report.passed:
            failed[name] = str(report)
    assert not failed, "\n".join(failed.values())
    assert _CONVERTED_CALLS <= set(oracle.function_names())


def test_refimpl_call_of_a_note():
    seen = lambda **kw: kw  # noqa: E731
    assert _refimpl_call(seen, "fn(x) -> y")(x=1) == {"x": 1}
    assert _refimpl_call(seen, "fn(m, d, seed) -> W (refimpl: rng=seed)")(m=2, seed=5) == {"m": 2, "rng": 5}
    got = _refimpl_call(seen, "fn(q, projection) -> y (refimpl: n_features=len(projection), rng=None)")(
        q=1, projection=np.zeros((7, 2)))
    assert got["n_features"] == 7 and got["rng"] is None and got["q"] == 1 and got["projection"].shape == (7, 2)
