"""Shared pytest configuration of the unit tests.

Hypothesis runs derandomized (the examples are a fixed function of the test), so every run of
the suite draws the same cases; each property test still chooses its own ``max_examples``.

Set ``REFIMPL_WORST_ERRORS=1`` to print, after the run, the worst error that each oracle
comparison observed (test modules that collect them keep a ``WORST_ERRORS`` dict).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "refimpl",
    derandomize=True,
    deadline=None,
    print_blob=True,
    database=None,  # no .hypothesis/ folder in the work tree; derandomized runs need no replay store
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("refimpl")


def pytest_configure(config):
    """With pytest-xdist workers side by side (pyproject's ``-n auto``), the workers and the notebook kernels
    they start inherit BLAS thread caps that share the cores between them (refimpl._blocking.share_cores_env):
    OpenBLAS's spinning threads in two processes on two cores made small multithreaded products up to 12 times
    slower. Set here, in the controller, before the workers start."""
    workers = getattr(config.option, "numprocesses", None)
    if isinstance(workers, int) and workers > 1 and not hasattr(config, "workerinput"):
        from refimpl._blocking import share_cores_env

        os.environ.update(share_cores_env(workers))


def pytest_terminal_summary(terminalreporter):
    if not os.environ.get("REFIMPL_WORST_ERRORS"):
        return
    for name, module in sorted(sys.modules.items()):
        worst = getattr(module, "WORST_ERRORS", None)
        if not name.startswith("test_") or not isinstance(worst, dict) or not worst:
            continue
        terminalreporter.section(f"worst observed errors: {name}")
        for what, (err, tol) in sorted(worst.items()):
            terminalreporter.write_line(f"{what:<60s} {err:10.3e}  (tolerance {tol:.0e})")


@pytest.fixture(autouse=True)
def runtime_warnings_are_errors():
    """Overflow/invalid warnings fail a test even when pyproject's filterwarnings is not in force
    (e.g. a single test file run with ``-o addopts=""``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


@pytest.fixture(params=[(1, 1), (100, 3), (1 << 20, 2)], ids=["1chunk-1thread", "2-3chunks-3threads", "all-2threads"])
def chunk_groups(request, monkeypatch):
    """The chunked linear recurrences run on groups of chunks and split the heads over threads: one chunk
    per group in one thread; groups of 2 or 3 chunks (a shorter last one) over 3 threads (uneven parts
    for 4 heads); all chunks in one group over 2 threads. Returns ``(group_rows, threads)``."""
    from refimpl import _blocking, linear_rnn

    group_rows, threads = request.param
    monkeypatch.setattr(linear_rnn, "_GROUP_ROWS", group_rows)
    monkeypatch.setattr(_blocking, "THREADS", threads)
    monkeypatch.setattr(_blocking, "THREAD_MIN_ELEMS", 0)
    return request.param


@pytest.fixture(scope="session")
def stored_book(tmp_path_factory):
    """The repository's book rendered once from the stored outputs (``--no-execute``), for every test
    module that reads it (the page checks of test_book.py and the browser's of test_book_browser.py):
    one render is about 40 s. Returns ``(out, exit code, stdout, stderr)``; the tests only read ``out``."""
    from refimpl._book import main as book_main

    out = tmp_path_factory.mktemp("stored") / "book"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = book_main(["--book", str(Path(__file__).resolve().parent.parent / "book.toml"), "--out", str(out),
                          "--no-execute"])
    return out, code, stdout.getvalue(), stderr.getvalue()
