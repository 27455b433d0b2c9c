"""Repository-level contracts: README commands, CI script, environment.yml ↔ pyproject.toml, CLI.

These keep the promises of the README true: the two commands it shows are the ones CI runs,
the example runs, the chapter list is book.toml's, and conda users get the same packages as pip
users.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import refimpl
from refimpl.__main__ import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _shell_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, re.S)]


# ----------------------------------------------------------------------------- README and CI
class TestReadmeCommands:
    def _top_commands(self) -> list[str]:
        top = README.split("\n## ", 1)[0]  # "near the top": before the first section
        return _shell_blocks(top)

    def test_exactly_two_commands_near_the_top(self):
        blocks = self._top_commands()
        assert len(blocks) == 2, f"expected 2 command blocks before the first section, got {len(blocks)}"
        assert all("\n" not in b for b in blocks), "each command is a single line"

    def test_one_builds_the_book_one_runs_the_tests(self):
        book, test = self._top_commands()
        for cmd in (book, test):
            assert cmd.startswith("python3 -m venv .venv"), "commands must create their own environment"
            assert "pip install -e" in cmd
        assert "-m refimpl book" in book and '".[book]"' in book
        assert "-m pytest" in test and '".[test]"' in test

    def test_ci_runs_the_readme_test_command_verbatim(self):
        _, test = self._top_commands()
        ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
        assert test in ci.splitlines(), ".ci/run must contain the README's test command as one line"
        assert ci.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in ci
        assert (ROOT / ".ci" / "run").stat().st_mode & 0o111, ".ci/run must be executable"

    def test_ci_also_runs_the_book_command(self):
        book, _ = self._top_commands()
        assert book in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()

    def test_pytest_configuration_runs_notebooks_with_nbval(self):
        cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
        assert "notebooks" in cfg["testpaths"] and "tests" in cfg["testpaths"]
        assert "--nbval" in cfg["addopts"] and "--nbval-sanitize-with tests/nbval_sanitize.cfg" in cfg["addopts"]
        assert (ROOT / "tests" / "nbval_sanitize.cfg").exists()

    def test_oracle_example_runs(self, capsys):
        blocks = re.findall(r"```python\n(.*?)```", README, re.S)
        assert blocks, "README must show a Python example of using refimpl as an oracle"
        example = blocks[0]
        assert len(example.strip().splitlines()) <= 16
        exec(compile(example, "README.md", "exec"), {})
        assert "relative error:" in capsys.readouterr().out

    def test_chapter_table_matches_book_toml(self):
        book = tomllib.loads((ROOT / "book.toml").read_text(encoding="utf-8"))
        rows = re.findall(r"^\| (\d+) \| \[(.+?)\]\(notebooks/(.+?)\) \| `(.+?)` \|", README, re.M)
        assert [(int(n), title, file) for n, title, file, _ in rows] == [
            (int(ch["file"].split("-", 1)[0]), ch["title"], ch["file"]) for ch in book["chapters"]  # NN- prefix
        ]
        for (_, _, _, module), ch in zip(rows, book["chapters"]):
            assert module in ch["modules"]

    def test_citation_present(self):
        assert "## How to cite" in README and "@software{refimpl" in README
        assert f"version = {{{refimpl.__version__}}}" in README


def test_version_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == refimpl.__version__


# ----------------------------------------------------------------------------- environment.yml
_NAME_MAP = {"matplotlib-base": "matplotlib"}  # conda-forge name -> PyPI name


def _split_req(req: str) -> tuple[str, str | None]:
    m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(?:>=\s*([0-9][0-9.]*))?\s*", req)
    assert m, f"requirement {req!r} is not of the form 'name' or 'name>=version'"
    return m.group(1).lower(), m.group(2)


def _environment_yml() -> dict:
    """Parse the flat subset of YAML that environment.yml uses (no PyYAML needed)."""
    out: dict = {"channels": [], "dependencies": [], "pip": []}
    section = None
    for raw in (ROOT / "environment.yml").read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not line.startswith(" "):
            key, _, value = line.partition(":")
            section = key.strip()
            if value.strip():
                out[section] = value.strip()
            continue
        item = line.strip()
        assert item.startswith("- "), f"unexpected line in environment.yml: {raw!r}"
        item = item[2:].strip()
        if section == "dependencies" and raw.startswith("      - "):
            out["pip"].append(item)
        elif item == "pip:":
            continue
        else:
            out[section].append(item)
    return out


def _pyproject_requirements() -> dict[str, str | None]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += [r for r in extra if not r.startswith("refimpl")]  # self-references of extras
    return dict(_split_req(r) for r in reqs)


class TestEnvironmentSync:
    def test_same_packages_and_lower_bounds(self):
        env = _environment_yml()
        conda = {}
        for dep in env["dependencies"]:
            name, bound = _split_req(dep)
            if name in {"python", "pip"}:
                continue
            conda[_NAME_MAP.get(name, name)] = bound
        assert conda == _pyproject_requirements()

    def test_python_version_matches_requires_python(self):
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        python = [d for d in _environment_yml()["dependencies"] if d.startswith("python")]
        assert python == [f"python{project['requires-python']}"]

    def test_conda_forge_pip_and_editable_install(self):
        env = _environment_yml()
        assert env["name"] == "refimpl"
        assert env["channels"] == ["conda-forge"]
        assert "pip" in env["dependencies"], "a pip: section needs pip itself listed"
        assert env["pip"] == ["-e ."]

    def test_every_requirement_has_a_lower_bound_and_no_pin(self):
        text = (ROOT / "pyproject.toml").read_text()
        assert "==" not in text, "lower bounds only, no exact pins"
        for name, bound in _pyproject_requirements().items():
            assert bound is not None, f"{name} has no lower bound"


# ----------------------------------------------------------------------------- CLI and bench
class TestCommandLine:
    def test_help(self, capsys):
        assert cli_main(["--help"]) == 0
        out = capsys.readouterr().out
        assert "book" in out and "bench" in out

    def test_no_command_is_a_usage_error(self, capsys):
        assert cli_main([]) == 2

    def test_unknown_command(self, capsys):
        assert cli_main(["frobnicate"]) == 2
        assert "unknown command 'frobnicate'" in capsys.readouterr().err

    def test_module_entry_point(self):
        proc = subprocess.run([sys.executable, "-m", "refimpl", "--help"], capture_output=True, text=True, check=False)
        assert proc.returncode == 0 and "usage: python -m refimpl" in proc.stdout


# ----------------------------------------------------------------------------- processes side by side
def test_parallel_workers_share_the_blas_threads():
    """pyproject's addopts run the suite in pytest-xdist workers; conftest.py caps each one's BLAS threads at its
    share of the cores before they start (OpenBLAS's spinning threads in two processes made small products up to
    12x slower), unless the caller set a cap. A run in one process (-n 0) sets nothing."""
    from refimpl._blocking import BLAS_THREAD_VARS

    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")) > 1:
        for name in BLAS_THREAD_VARS:
            assert int(os.environ.get(name, "0")) >= 1, f"{name} not set in a pytest-xdist worker"
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "-n auto" in cfg["addopts"] and "--dist loadfile" in cfg["addopts"]  # a notebook's cells in one worker


def test_book_workers_share_the_blas_threads(monkeypatch):
    """The book builder's chapter workers (two at a time) start their kernels with the same caps."""
    from refimpl import _book
    from refimpl._blocking import BLAS_THREAD_VARS, _usable_cores, share_cores_env

    for name in BLAS_THREAD_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "environ", dict(os.environ))  # _share_cores updates this copy
    _book._share_cores(2)
    assert all(os.environ[name] == str(max(1, _usable_cores() // 2)) for name in BLAS_THREAD_VARS)
    assert share_cores_env(3, {"OMP_NUM_THREADS": "7"})["OMP_NUM_THREADS"] == "7"  # a caller's cap stays
    assert share_cores_env(1, {"PATH": "/bin"}) == {"PATH": "/bin"}
