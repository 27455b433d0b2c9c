"""Equation citations: every public function names the book's equation it implements, and back.

The book's convention (DESIGN.md, "Docstrings"): a function's docstring names the tag of the
equation it implements as ``Eq. (k.n)`` or ``Eqs. (k.n)–(k.m)`` (also ``Eqs. (k.n) and (k.m)``,
``Eqs. (k.n), (k.m)``); the chapter ``NN-…ipynb`` displays it with ``\\tag{k.n}``, k = NN. Checked:

1. every public function (a function in ``__all__`` of a public module, except loop twins
   ``f_loop``, which may cite through ``f``, and the tooling listed in ``NOT_AN_EQUATION``)
   cites at least one tag in that form;
2. every tag cited by any public callable exists as ``\\tag{k.n}`` in chapter k's notebook;
3. every ``\\tag`` in the notebooks is cited by some public callable, or is listed in
   ``NON_COMPUTATIONAL`` with the reason it defines no computation of its own;
4. the index equation → function(s) → test file(s) (the appendix of chapter 15) is complete.

The parsing is :func:`refimpl.oracle.cited_tags`, tested here on examples first.
"""

from __future__ import annotations

import inspect
import re

import pytest

from refimpl import oracle

INDEX = oracle.citation_index()

#: Public functions that implement no equation (tooling), with the reason.
NOT_AN_EQUATION = {
    "oracle.function_names": "lists the registry",
    "oracle.case_names": "lists the registry",
    "oracle.compute": "runs a registered case (the equations are the registered functions')",
    "oracle.export": "file output",
    "oracle.verify": "recomputes and diffs stored files",
    "oracle.load_case": "file input",
    "oracle.cited_tags": "parses docstrings",
    "oracle.citation_index": "builds this index",
}

#: Tagged equations that define no computation of their own, with the reason.
NON_COMPUTATIONAL = {
    "1.3": "variation-of-constants solution of the SDE: a derivation step towards (1.5)–(1.7)",
    "1.4": "the diagonalizability assumption A = S Λ S⁻¹ (a model definition)",
    "2.1": "the differential Lyapunov equation itself, solved in closed form by (2.4)–(2.5)",
    "2.2": "the integral that defines V(τ), computed by (2.4)–(2.5)",
    "2.3": "the DLE in the eigenbasis: a derivation step",
    "2.10": "the stationary identity linking (2.4) and (2.8), verified in chapter 2 and its tests",
    "2.11": "error covariance of the backward estimate: an identity compared with (2.7) in the chapter",
    "3.1": "the linear-Gaussian state-space model (a model definition)",
    "3.14": "the steady-state filter read as an exponential moving average: an identity",
    "3.15": "the Wiener smoother's closed form, used as an oracle in the chapter and tests",
    "4.4": "the matched filter's SNR inequality (Cauchy–Schwarz)",
    "4.5": "small-angle approximation explaining temperature",
    "4.8": "the variance identity behind the 1/√d scale",
    "4.13": "the limit of multi-head attention as a convolution (Cordonnier et al.), verified numerically in chapter 4",
    "5.4": "the inner product of two encodings as a sum of cosines: an identity",
    "5.6": "RoPE's relative-position identity, verified by the tests of rope",
    "8.5": "the RoPE-limit identity (chordal distance), verified numerically in chapter 8",
    "8.6": "the rotation identity linking (8.2) to RoPE, verified numerically in chapter 8",
    "8.7": "the sign analysis of the additive prior log P (regimes, not a computation)",
    "9.4": "the integral that defines the RT covariance, computed in closed form by (9.5)–(9.8)",
    "11.1": "the continuous SSM (a model definition)",
    "11.2": "the HiPPO-LegS ODE whose matrices (11.3) hippo_legs returns",
    "11.19": "the gated recurrence as a special case of the selective scan: an identity",
    "11.20": "the steady-state Kalman filter as a one-pole IIR: an identity",
    "10.11": "τ(W), the chapter's measure of a mixer's distance from a convolution: a notebook diagnostic",
}


def _callables():
    return INDEX["functions"]


def _obj(qual):
    module, name = qual.split(".", 1)
    return getattr(__import__(f"refimpl.{module}", fromlist=[name]), name)


class TestParser:
    @pytest.mark.parametrize(
        "text, tags",
        [
            ("Implements Eq. (2.9) of the book (Racioppo 2025, Eq. 6).", ["2.9"]),
            ("Eqs. (7.2)–(7.5)", ["7.2", "7.3", "7.4", "7.5"]),
            ("Eqs. (8.1)-(8.3)", ["8.1", "8.2", "8.3"]),
            ("Eqs. (1.7) and (1.2)", ["1.7", "1.2"]),
            ("Eqs. (11.9), (11.10), (11.13)", ["11.9", "11.10", "11.13"]),
            ("Eqs. (9.6)/(9.8)", ["9.6", "9.8"]),
            ("Eq. (3.2) … Eq. (3.2)", ["3.2"]),
            ("see Eq. 1.6 and P-30, App. A.1, (2.4)", []),  # not the citation form
            ("Eqs. (4.1)–(4.3) and (4.10)", ["4.1", "4.2", "4.3", "4.10"]),
        ],
    )
    def test_examples(self, text, tags):
        assert oracle.cited_tags(text) == tags

    def test_bad_root(self, tmp_path):
        with pytest.raises(ValueError, match="root: no notebooks/"):
            oracle.citation_index(tmp_path)


class TestCitations:
    def test_tags_are_in_their_chapter(self):
        """\\tag{k.n} lives in notebook NN-… with NN = k, and appears once."""
        for tag, notebook in INDEX["tags"].items():
            assert int(notebook[:2]) == int(tag.split(".")[0]), (tag, notebook)

    def test_every_public_function_cites_an_equation(self):
        missing = []
        for qual, tags in _callables().items():
            if qual in INDEX["loop_twins"] or qual in NOT_AN_EQUATION or not inspect.isfunction(_obj(qual)):
                continue
            if not tags:
                missing.append(qual)
        assert not missing, (
            "public functions whose docstring cites no 'Eq. (k.n)' / 'Eqs. (k.n)–(k.m)': " + ", ".join(missing)
        )

    def test_cited_tags_exist(self):
        unknown = {
            qual: [t for t in tags if t not in INDEX["tags"]]
            for qual, tags in _callables().items()
            if any(t not in INDEX["tags"] for t in tags)
        }
        assert not unknown, f"cited equation tags with no \\tag in the notebooks: {unknown}"

    def test_every_tag_is_cited_or_non_computational(self):
        cited = {t for tags in _callables().values() for t in tags}
        uncited = sorted(set(INDEX["tags"]) - cited - set(NON_COMPUTATIONAL), key=lambda t: tuple(map(int, t.split("."))))
        assert not uncited, f"tagged equations cited by no function and not listed as non-computational: {uncited}"

    def test_allow_lists_are_not_stale(self):
        stale = [t for t in NON_COMPUTATIONAL if t not in INDEX["tags"]]
        assert not stale, f"NON_COMPUTATIONAL entries with no \\tag in the notebooks: {stale}"
        assert all(reason.strip() for reason in NON_COMPUTATIONAL.values())
        gone = [q for q in NOT_AN_EQUATION if q not in _callables()]
        assert not gone, gone

    def test_loop_twins_have_their_function(self):
        for qual in INDEX["loop_twins"]:
            assert qual[: -len("_loop")] in _callables()

    def test_every_citing_function_is_tested(self):
        untested = [q for q, tags in _callables().items() if tags and not INDEX["tests"][q]]
        assert not untested, f"functions that cite an equation but appear in no test file: {untested}"

    def test_index_rows(self):
        rows = INDEX["rows"]
        assert [r[0] for r in rows] == sorted(INDEX["tags"], key=lambda t: tuple(map(int, t.split("."))))
        for tag, notebook, funcs, tests in rows:
            assert re.fullmatch(r"\d\d-[a-z0-9-]+\.ipynb", notebook)
            assert bool(funcs) or tag in NON_COMPUTATIONAL
            assert all(t.startswith("test_") for t in tests)
