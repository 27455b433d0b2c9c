"""The rules that keep the book true, checked for every chapter listed in ``book.toml``.

Each rule is a test parametrized by chapter, so a failure names the chapter:

1. **Tags in order.** Within a chapter the ``\\tag{k.n}`` of its markdown carry the chapter's
   number ``k`` and strictly increasing ``n`` in order of position (so no duplicates).
2. **Docstring citations exist.** Every ``Eq. (k.n)`` / ``Eqs. (k.n)–(k.m)`` cited in a docstring
   of ``refimpl/`` names a tag that chapter ``k`` displays (the citations are grouped by ``k``).
3. **No references the reader cannot open** in notebook markdown and in ``refimpl`` docstrings:
   internal notes ("spec", "survey §", "seed 002", ``*.md`` notes), issues, reviews, and
   unexplained erratum labels such as "P-5" (see ``FORBIDDEN``).
4. **Figures.** Every code cell with an image output carries the MyST-NB metadata
   ``mystnb.figure.caption``, ``mystnb.figure.name`` and ``mystnb.image.alt``; the cell draws one
   figure; the names are ``fig-CC-1``, ``fig-CC-2``, ... in order of appearance.
5. **Setup cell.** The first code cell is tagged ``hide-input``.
6. **Every number in prose is computed.** Each number in markdown prose (outside math, code spans
   and bibliographic/cross references, see ``prose_numbers``) appears among the numbers of the
   chapter's code-cell sources or outputs, at the precision the prose shows.
   ``NUMBER_ALLOWLIST`` lists, per chapter, the few genuinely non-quantitative numbers, each with
   the reason.

The test only reads files (no notebook is executed) and takes well under a second per chapter.
"""

from __future__ import annotations

import ast
import json
import math
import re
import tomllib
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BOOK = tomllib.loads((ROOT / "book.toml").read_text(encoding="utf-8"))
NOTEBOOK_DIR = ROOT / BOOK["book"].get("src", "notebooks")
CHAPTERS = [c["file"] for c in BOOK["chapters"]]
MODULES = sorted(p for p in (ROOT / "refimpl").glob("*.py"))


def chapter_number(file: str) -> int:
    return int(file[:2])


# ----------------------------------------------------------------------------------------------
# reading notebooks and docstrings
# ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def load(file: str) -> dict:
    return json.loads((NOTEBOOK_DIR / file).read_text(encoding="utf-8"))


def source(cell) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def markdown(file: str) -> list[str]:
    return [source(c) for c in load(file)["cells"] if c["cell_type"] == "markdown"]


def code_cells(file: str) -> list[dict]:
    return [c for c in load(file)["cells"] if c["cell_type"] == "code"]


def has_image(cell) -> int:
    return sum(1 for o in cell.get("outputs", []) if any(k.startswith("image/") for k in o.get("data", {})))


def output_text(cell) -> str:
    parts = []
    for o in cell.get("outputs", []):
        if "text" in o:
            parts.append(source({"source": o["text"]}))
        data = o.get("data", {})
        for key in ("text/plain", "text/markdown", "text/latex"):
            if key in data:
                parts.append(source({"source": data[key]}))
        if "traceback" in o:
            parts.append("\n".join(o["traceback"]))
    return "\n".join(parts)


@lru_cache(maxsize=None)
def docstrings() -> dict[str, list[tuple[int, str]]]:
    """``{module file name: [(line, docstring), ...]}`` for every module, class and function."""
    out = {}
    for path in MODULES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=False)
                if doc:
                    found.append((getattr(node, "lineno", 1), doc))
        out[path.name] = found
    return out


# ----------------------------------------------------------------------------------------------
# rule 1 and 2: equation tags
# ----------------------------------------------------------------------------------------------

TAG = re.compile(r"\\tag\{(\d+)\.(\d+)\}")


def tags(file: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for text in markdown(file) for a, b in TAG.findall(text)]


#: "Eq. (k.n)" or "Eqs. (k.n)–(k.m)", "Eqs. (k.n), (k.m) and (k.l)", "Eqs. (k.n)/(k.m)".
_CITE = re.compile(
    r"\bEqs?\.\s*\(\d+\.\d+\)(?:\s*(?:–|-|—|,|/|and|&|or)\s*\(\d+\.\d+\))*"
)
_PAIR = re.compile(r"\((\d+)\.(\d+)\)")


def cited_tags(text: str) -> list[tuple[int, int]]:
    """The tags a text cites in the book's citation form (the ends of a range, not its inside)."""
    return [(int(a), int(b)) for m in _CITE.finditer(text) for a, b in _PAIR.findall(m.group(0))]


def test_cited_tags_parser():
    assert cited_tags("Implements Eq. (2.9) of the book (Racioppo 2025, Eq. 6).") == [(2, 9)]
    assert cited_tags("Eqs. (7.2)–(7.5) and (7.9)") == [(7, 2), (7, 5), (7, 9)]
    assert cited_tags("see Eq. 1.6, App. A.1, (2.4)") == []


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_tags_increase(chapter):
    k = chapter_number(chapter)
    found = tags(chapter)
    wrong_chapter = [f"({a}.{b})" for a, b in found if a != k]
    assert not wrong_chapter, f"{chapter}: tags of another chapter: {wrong_chapter}"
    numbers = [b for _, b in found]
    bad = [f"({k}.{b}) after ({k}.{a})" for a, b in zip(numbers, numbers[1:]) if b <= a]
    assert not bad, f"{chapter}: tags not strictly increasing in order of position: {bad}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_docstring_citations_exist(chapter):
    k = chapter_number(chapter)
    have = {b for _, b in tags(chapter)}
    missing = sorted(
        {
            f"{module}:{line}: Eq. ({a}.{b})"
            for module, docs in docstrings().items()
            for line, doc in docs
            for a, b in cited_tags(doc)
            if a == k and b not in have
        }
    )
    assert not missing, f"{chapter}: docstrings cite tags the chapter does not display: {missing}"


def test_every_cited_chapter_exists():
    numbers = {chapter_number(c) for c in CHAPTERS}
    orphans = sorted(
        {
            f"{module}:{line}: Eq. ({a}.{b})"
            for module, docs in docstrings().items()
            for line, doc in docs
            for a, b in cited_tags(doc)
            if a not in numbers
        }
    )
    assert not orphans, f"docstrings cite chapters that book.toml does not list: {orphans}"


# ----------------------------------------------------------------------------------------------
# rule 3: references the reader cannot open
# ----------------------------------------------------------------------------------------------

#: Each pattern with what it catches. Case-insensitive. The word "seed" alone is allowed (a random
#: seed is a public notion); "seed" followed by a document number or "text" is an internal note.
FORBIDDEN = {
    # the project's specification notes; "kernel spec" (Jupyter) and "specific" are fine
    "internal spec": r"\b(?:the|project's|our|this|a)\s+specs?\b|\bspecs?(?:'s)?\s*(?:§|\(|afa\b|focus\b|survey\b|style\b)|\bspecs?/",
    "internal note file": r"\b(?:afa|focus|survey|style|DESIGN)\.md\b",
    "survey section": r"\bsurvey\s*§",
    "seed document": r"\bseeds?\s*(?:\d{3}\b|/|text\b|documents?\b|papers?\b)|\bseeds/",
    "issue": r"\bissues?\s*#?\s*\d+|#\d+\b",
    "erratum label": r"\bP-\d+\b",
    # "review" of the project, not a journal title such as SIAM Review or Phys. Rev.
    "review": r"(?<!SIAM )(?<!Physical )(?<!Annual )(?<!Modern )\breview(?:s|ed|er|ers)?\b",
}
_FORBIDDEN = {name: re.compile(p, re.IGNORECASE) for name, p in FORBIDDEN.items()}


def forbidden_hits(text: str) -> list[str]:
    hits = []
    for name, pat in _FORBIDDEN.items():
        for m in pat.finditer(text):
            lo, hi = max(0, m.start() - 30), min(len(text), m.end() + 30)
            hits.append(f"{name}: …{text[lo:hi]!r}…")
    return hits


def test_forbidden_patterns():
    for bad in ("see spec §2", "the spec's summary", "shared/spec/afa.md", "survey §18.1", "seed 002 says",
                "erratum P-5", "issue #13", "the review found"):
        assert forbidden_hits(bad), bad
    for ok in ("a fixed seed", "an int seed or None", "SIAM Review 43 (2001)", "spectral", "special", "RCA PTR-6C",
               "the ``python3`` kernel spec is used"):
        assert not forbidden_hits(ok), ok


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_no_forbidden_reference_in_markdown(chapter):
    hits = [h for text in markdown(chapter) for h in forbidden_hits(text)]
    assert not hits, f"{chapter}: references the reader cannot open: {hits}"


@pytest.mark.parametrize("module", [p.name for p in MODULES])
def test_no_forbidden_reference_in_docstrings(module):
    hits = [f"line {line}: {h}" for line, doc in docstrings()[module] for h in forbidden_hits(doc)]
    assert not hits, f"refimpl/{module}: references the reader cannot open: {hits}"


# ----------------------------------------------------------------------------------------------
# rules 4 and 5: figures and the setup cell
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_figures_are_numbered_captioned_and_described(chapter):
    k = chapter_number(chapter)
    problems, names = [], []
    for i, cell in enumerate(code_cells(chapter)):
        n_img = has_image(cell)
        if not n_img:
            continue
        meta = cell.get("metadata", {}).get("mystnb", {})
        fig, img = meta.get("figure", {}), meta.get("image", {})
        first = source(cell).strip().splitlines()[:1]
        where = f"code cell {i} ({first[0][:40] if first else ''!r})"
        if n_img != 1:
            problems.append(f"{where}: {n_img} images in one cell (one figure per cell)")
        for key, val in (("figure.caption", fig.get("caption")), ("figure.name", fig.get("name")),
                         ("image.alt", img.get("alt"))):
            if not (isinstance(val, str) and val.strip()):
                problems.append(f"{where}: no mystnb {key}")
        names.append(fig.get("name"))
    expected = [f"fig-{k:02d}-{n}" for n in range(1, len(names) + 1)]
    if names != expected:
        problems.append(f"figure names {names}, expected {expected}")
    assert not problems, f"{chapter}: " + "; ".join(problems)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_setup_cell_hides_input(chapter):
    cells = code_cells(chapter)
    assert cells, f"{chapter}: no code cell"
    assert "hide-input" in cells[0].get("metadata", {}).get("tags", []), (
        f"{chapter}: the first code cell (setup) is not tagged hide-input"
    )


# ----------------------------------------------------------------------------------------------
# rule 6: every number in the prose is printed or appears in the code
# ----------------------------------------------------------------------------------------------

#: Per chapter: numbers that appear in prose but state no quantity, each with the reason.
NUMBER_ALLOWLIST: dict[int, dict[str, str]] = {
    1: {},
    2: {},
    3: {},
    4: {},
    5: {},
}

_MATH = re.compile(r"\$\$.*?\$\$|\$[^$\n]+?\$", re.DOTALL)
_DISPLAY_MATH = re.compile(r"\$\$.*?\$\$", re.DOTALL)
_INLINE_MATH = re.compile(r"\$([^$\n]+?)\$")
_DECIMAL = re.compile(r"(?<![\w.])\d*\.\d+(?:e[-−]?\d+)?(?![\w.])")
_TEX_SCI = re.compile(r"(\d*\.\d+)\s*(?:\\cdot|\\times|×|·)\s*10\^\{?([-−]?\d+)\}?")
_TEX_REF = re.compile(r"\\(?:tag|ref|eqref)\{[^}]*\}|\(\d+\.\d+\)")
_THOUSANDS = re.compile(r"(?<![\d.])\d{1,3}(?:[ \u00a0\u2009\u202f]\d{3})+(?![\d.])")
_CODE_SPAN = re.compile(r"``.+?``|`[^`\n]+`")
_LINK_URL = re.compile(r"\]\([^)]*\)|<https?://[^>]*>|https?://\S+")
_HTML = re.compile(r"<[^>]+>")
_REF_WORDS = (
    r"chapters?|ch\.|§|Eqs?\.|equations?|figures?|figs?\.|tables?|thm\.|theorems?|lemmas?|"
    r"sections?|secs?\.|app\.|appendix|appendices|props?\.|propositions?|corollary|definition|"
    r"algorithms?|alg\.|remarks?|examples?|steps?|parts?|ref\.|refs\.|cor\.|def\."
)
_NUM_OR_LABEL = r"\(?[A-Z]?\d+(?:\.\d+)*[a-z]?\)?"
_REFERENCE = re.compile(
    rf"(?<!\w)(?:{_REF_WORDS})\s*~?{_NUM_OR_LABEL}"
    rf"(?:\s*(?:–|-|—|,|/|and|&|or|to)\s*(?:(?:{_REF_WORDS})\s*)?{_NUM_OR_LABEL})*",
    re.IGNORECASE,
)
_EQ_REF = re.compile(r"\(\d+\.\d+(?:\s*[–—-]\s*\d+\.\d+)?\)(?:\s*(?:–|-|—|,|/|and|&|or)\s*\(\d+\.\d+\))*")
_ARXIV = re.compile(r"arXiv:\s*\d{4}\.\d{4,5}(?:v\d+)?", re.IGNORECASE)
_YEAR = re.compile(r"(?:(?<=[A-Za-zÀ-ž.,)])\s+|\(|,\s*)(?:19|20)\d\d[a-z]?\b")
_HEADING = re.compile(r"^#+\s*[\d.]*", re.MULTILINE)
_LIST_NUMBER = re.compile(r"^\s*\d+\.\s", re.MULTILINE)
_BIB_INDEX = re.compile(r"\[\d+\]")
_REFERENCES = re.compile(r"\*\*References\.?\*\*.*", re.DOTALL)
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:,\d{3})*(?:\.\d+)*(?:[eE][-+−]?\d+)?)(\s*%)?(?![\w])")
_CODE_NUMBER = re.compile(r"(?<![A-Za-z_])(\d+(?:\.\d*)?(?:[eE][-+−]?\d+)?|\.\d+(?:[eE][-+−]?\d+)?)")


def prose_numbers(text: str) -> list[tuple[str, bool]]:
    """The numbers a markdown cell states in prose: ``[(number text, is_percent), ...]``."""
    text = _REFERENCES.sub(" ", text)
    text = _TEX_REF.sub(" ", text)
    text = _THOUSANDS.sub(lambda m: re.sub(r"[ \u00a0\u2009\u202f]", "", m.group(0)), text)
    # inline math is exempt except for decimal values (a computed result such as $\rho = 0.479$)
    math_decimals = [
        (m.group(0), False)
        for inline in _INLINE_MATH.findall(_DISPLAY_MATH.sub(" ", text))
        for m in _DECIMAL.finditer(_TEX_SCI.sub(r"\1e\2", _TEX_REF.sub(" ", inline)))
    ]
    for pat in (_MATH, _CODE_SPAN, _LINK_URL, _HTML, _ARXIV, _EQ_REF, _REFERENCE, _BIB_INDEX):
        text = pat.sub(" ", text)
    text = _HEADING.sub(" ", text)
    text = _LIST_NUMBER.sub(" ", text)
    text = _YEAR.sub(" ", text)
    # table rows are summaries of equation references and function names
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("|"))
    found = [(m.group(1), bool(m.group(2))) for m in _NUMBER.finditer(text)]
    # a dotted triple such as 0.1.0 is a version, not a quantity
    return [(n, p) for n, p in found if n.count(".") <= 1] + math_decimals


def _decimals(num: str) -> int | None:
    if re.search(r"[eE]", num):
        return None
    return len(num.split(".")[1]) if "." in num else 0


def _parse(num: str) -> float:
    return float(num.replace("−", "-").replace(",", ""))


@lru_cache(maxsize=None)
def code_numbers(file: str) -> tuple[float, ...]:
    values = set()
    for cell in code_cells(file):
        text = source(cell) + "\n" + output_text(cell)
        for m in _CODE_NUMBER.finditer(text):
            try:
                values.add(abs(float(m.group(1).replace("−", "-"))))
            except ValueError:
                pass
    return tuple(sorted(values))


def number_is_computed(num: str, percent: bool, values) -> bool:
    """Whether some code number ``y`` rounds to the prose number at the precision it is written.

    ``0.745`` matches ``0.7451``; ``63 %`` matches ``63`` or ``0.63``; ``1e-12`` matches to 3 digits.
    """
    x = abs(_parse(num))
    dec = _decimals(num)
    candidates = [(x, dec)] + ([(x / 100, None if dec is None else dec + 2)] if percent else [])
    for target, d in candidates:
        for y in values:
            if d is None:
                if math.isclose(y, target, rel_tol=5e-3, abs_tol=0.0) or y == target:
                    return True
            elif abs(y - target) <= 0.5 * 10.0 ** (-d) * (1 + 1e-9):
                return True
    return False


def test_prose_number_extraction():
    text = (
        "## 1.3 Heading\nSee chapter 2, Eq. (2.9), (3.19–3.21), §3.1 and Figure 4.2 (Racioppo 2025, arXiv:2509.04154v6); "
        "the value is 0.745, i.e. 63 % of 1 419; $x = 17$, $y = 0.25$, $z = 4.5\\cdot 10^{-5}$ and `n=5`.\n\n**References.** [1] X, *J.* 23 (1978)."
    )
    assert prose_numbers(text) == [("0.745", False), ("63", True), ("1419", False), ("0.25", False), ("4.5e-5", False)]
    assert number_is_computed("0.745", False, (0.7451,))
    assert number_is_computed("63", True, (0.6312,))
    assert not number_is_computed("0.745", False, (0.75,))
    assert number_is_computed("1e-12", False, (1e-12,))


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_prose_numbers_are_computed(chapter):
    allow = NUMBER_ALLOWLIST.get(chapter_number(chapter), {})
    values = code_numbers(chapter)
    missing = []
    for i, cell in enumerate(load(chapter)["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        for num, percent in prose_numbers(source(cell)):
            if num in allow:
                continue
            if not number_is_computed(num, percent, values):
                missing.append(f"cell {i}: {num}{' %' if percent else ''}")
    assert not missing, (
        f"{chapter}: numbers in the prose that no code cell prints or uses (print or check them, "
        f"or allow-list a non-quantitative one with its reason): {missing}"
    )
