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
7. **Every author–year citation is a link to its one entry of the bibliography.** What counts as
   a citation is defined by ``author_year_citations`` (the rule is stated there); each one in the
   prose of a chapter (markdown cells and figure captions) must come out of the book's linker as a
   link, i.e. fit exactly one entry of ``references.bib`` (``_book_sphinx.match_citation``: first
   surname, year, year suffix and the way the authors are named). A citation that fits two entries
   stops the build and fails here; one that fits none (a work missing from the bibliography, a year
   or co-author that differs, a year suffix left out) fails here with the entries that come closest;
   and each link must lead to the entry its citation names (matched again here, independently of the
   linker, so that "Dao 2024" cannot silently link to Dao & Gu 2024).
   Besides, no two entries of the bibliography may be cited alike, and a year suffix (2024a) is used
   only where two entries need it.

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


# ----------------------------------------------------------------------------------------------
# rule 7: every author–year citation is a link to exactly one entry of the bibliography
# ----------------------------------------------------------------------------------------------

#: One surname: capitalized, perhaps hyphenated, accented or with an apostrophe (Lee-Thorp,
#: García-Fernández, O'Brien), after particles (Van Loan, van der Vaart); a possessive 's is not part of it.
_SURNAME = r"(?:(?:[Vv]an|[Vv]on|[Dd]e[nr]?|[Dd]i|[Dd]u|[Ll][ae])\s+)*[A-ZÀ-Þ](?:[\w\-]|['’](?!s\b))*[^\W\d_]"
_AUTHOR_YEAR = re.compile(
    rf"(?<![\w'’\-])(?P<names>{_SURNAME}(?:\s+et\s+al\.|(?:,\s+{_SURNAME})*,?\s+(?:&|and)\s+{_SURNAME})?)"
    r"(?P<poss>['’]s)?(?P<sep>\s+\(?|,\s+(?:[A-Z][\w\-]*\s+)?)(?P<year>(?:1[5-9]|20)\d\d)(?P<suffix>[a-z]?)(?!\w)"
)
#: Markdown that is not prose: fenced code, MyST roles (the linker's own output among them), code
#: spans, display and inline math, links (their text is already a link), raw HTML.
_NOT_PROSE = re.compile(
    r"^[ \t]*(```+|~~~+).*?^[ \t]*\1[ \t]*$|\{[\w:.-]+\}`[^`]*`|(`+).+?\2|\$\$.+?\$\$"
    r"|(?<![\\$])\$(?!\s)(?:\\.|[^$\\])+?(?<![\s\\])\$|!?\[(?:[^\]\\]|\\.)*\]\([^)]*\)|<[A-Za-z/!][^>\n]*>",
    re.M | re.S,
)
#: A chapter's closing list of full references ("**References.** [1] R. E. Kalman, A new approach ...,
#: *J. Basic Eng.* 82 (1960)."), to the end of its cell: a bibliography, not author–year citations.
_REFERENCE_LIST = re.compile(r"\*\*References\.?\*\*.*|^#{1,6}\s+References\b.*", re.S | re.M)
#: Capitalized words that precede a year without naming an author, with the reason.
NOT_A_NAME = {
    **{month: "a date (\"the August 2025 version\" of the paper's code), not a citation" for month in (
        "January", "February", "March", "April", "June", "July", "August", "September", "October",
        "November", "December")},  # not "May": a surname too
}


def author_year_citations(text: str) -> list[re.Match[str]]:
    """The author–year citations of a markdown text.

    The rule: one or more surnames — ``Kalman``, ``Gu & Dao``, ``Dong, Cordonnier and Loukas``,
    ``Vaswani et al.``, possessive ``Jackson's`` — followed by a year 1500–2099 with an optional
    suffix letter, either right after the names (``Kalman 1960``, ``Yang et al. 2024a``), in
    parentheses (``Vaswani et al. (2017, §3.5)``) or after a comma and perhaps a venue
    (``Lutati, Zimerman & Wolf, EMNLP 2023``: a citation, in a form the linker does not link). Not
    citations: text that is not prose (code, math, links, HTML, MyST roles), a chapter's closing
    **References.** list (full references with titles and venues), and a capitalized word of
    ``NOT_A_NAME`` before a year (a month). Years elsewhere (``N = 2000``, ``v4 (2026)``,
    ``arXiv:2509.04154 (2025)``, ``in 2025``) have no capitalized name before them.
    """
    text = _NOT_PROSE.sub(lambda m: " " * len(m.group(0)), _REFERENCE_LIST.sub("", text))
    return [m for m in _AUTHOR_YEAR.finditer(text) if m.group("names").split()[0] not in NOT_A_NAME]


def test_author_year_citation_rule():
    found = lambda text: [" ".join(m.group(0).split()) for m in author_year_citations(text)]  # noqa: E731
    assert found(
        "Kalman 1960 and Vaswani et al. (2017, §3.5); Gu & Dao 2024, Dong, Cordonnier and Loukas (2021) and "
        "Jackson's (2000) correction; Yang et al. 2024a; Milakov &\nGimelshein 2018; as Van Loan 1978 does; "
        "Focus (Lutati, Zimerman & Wolf, EMNLP 2023)."
    ) == ["Kalman 1960", "Vaswani et al. (2017", "Gu & Dao 2024", "Dong, Cordonnier and Loukas (2021",
          "Jackson's (2000", "Yang et al. 2024a", "Milakov & Gimelshein 2018", "Van Loan 1978",
          "Lutati, Zimerman & Wolf, EMNLP 2023"]
    assert found(
        "In the August 2025 version, N = 2000 draws, v4 (2026), arXiv:2509.04154 (2025), in 2025, `Kalman 1960`, "
        "$\\mathrm{Kalman}\\ 1960$, [Kalman 1960](https://x.org), {cite:alp}`kalman1960`, Figure 2000, "
        "FlashAttention-2 (2023).\n\n**References.** [1] S. Haykin, *Adaptive Filter Theory*, Pearson 2014."
    ) == ["Figure 2000"]  # a year after a capitalized word is a citation unless NOT_A_NAME says why not


@lru_cache(maxsize=None)
def _linked_book():
    """The bibliography and the book's link targets, as ``python -m refimpl book`` collects them."""
    import nbformat

    from refimpl._book_sphinx import bib_index, collect_targets

    chapters = [dict(c, number=chapter_number(c["file"]), docname=Path(c["file"]).stem) for c in BOOK["chapters"]]
    notebooks = {c["file"]: nbformat.read(NOTEBOOK_DIR / c["file"], as_version=4) for c in chapters}
    targets = collect_targets(chapters, notebooks)
    targets.citations = bib_index(ROOT / BOOK["book"]["bibliography"])
    return {c["file"]: c for c in chapters}, notebooks, targets


def _closest(works, m: re.Match[str]) -> str:
    """Why an author–year citation is not a link: the entries that share its first surname."""
    from refimpl._book_sphinx import citation_surnames, match_citation

    surnames, et_al = citation_surnames(m.group("names"))
    year, suffix = m.group("year"), m.group("suffix")
    if m.group("sep").strip().startswith(","):
        return "write the year right after the names: 'Lutati, Zimerman & Wolf 2023, EMNLP'"
    fits = match_citation(works, surnames, et_al, year, suffix)
    if len(fits) > 1:
        return "fits " + ", ".join(w.key for w in fits)
    near = [f"{w.key} ({', '.join(w.surnames[:3])}{' …' if len(w.surnames) > 3 else ''}; {w.year}{w.suffix})"
            for w in works if w.surnames[0] == surnames[0]]
    if not near:
        return "no entry fits (add the work to references.bib)"
    return f"no entry fits; entries of {surnames[0]!r}: {', '.join(near)}"


def cited_keys(text: str, works) -> list[str]:
    """The entries that the author–year citations of ``text`` name, each citation fitting exactly one,
    matched here independently of the linker: same first surname and year, the suffix if the
    citation has one, and "et al." for three or more authors or else every author named; when a list
    of names fits nothing, its later names are tried ("Kalman and Wiener 1949" names Wiener 1949)."""
    from refimpl._book_sphinx import citation_surnames

    keys = []
    for m in author_year_citations(text):
        if m.group("sep").strip().startswith(","):
            continue  # "Lutati, Zimerman & Wolf, EMNLP 2023": not a form the linker links
        names, et_al = citation_surnames(m.group("names"))
        year, suffix = m.group("year"), m.group("suffix")
        while True:
            fits = [w.key for w in works if w.surnames[0] == names[0] and w.year == year
                    and (not suffix or w.suffix == suffix)
                    and (len(w.surnames) >= 3 if et_al else list(w.surnames) == names)]
            if fits or et_al or len(names) == 1:
                break
            names = names[1:]
        if len(fits) == 1:
            keys.append(fits[0])
    return keys


def citation_problems(source: str, linked: str, works) -> list[str]:
    """What is wrong with the citations of ``source`` (markdown) once ``linked`` (the same markdown after
    the book's linker): a citation still shown as plain text, with the reason, or links that lead to
    other entries than the ones the citations name."""
    problems = [f"{' '.join(m.group(0).split())!r}: {_closest(works, m)}" for m in author_year_citations(linked)]
    named = sorted(cited_keys(source, works))
    linked_to = sorted(re.findall(r"\{cite:\w+\}`([^`{]+)", linked))
    if not problems and named != linked_to:
        problems.append(f"the citations name {named} but link to {linked_to}")
    return problems


def test_citation_rule_can_fail():
    """The check itself, on a bibliography with the traps of the real one."""
    from refimpl._book_sphinx import BibWork, ProseLinker, ReferenceError_, Targets

    works = [BibWork("dao2024", ("dao", "gu"), "2024"), BibWork("dao2024fa2", ("dao",), "2024"),
             BibWork("yang2024gla", ("yang", "wang", "shen"), "2024", "a"),
             BibWork("yang2024delta", ("yang", "wang", "zhang"), "2024", "b")]
    linker = ProseLinker(Targets(citations=works), {"number": 99}, "99-x.ipynb")
    text = ("Mamba-2 (Dao & Gu 2024), FlashAttention-2 (Dao 2024), GLA (Yang et al. 2024a), Dao et al. 2024, "
            "Hillis & Steele 1986, Focus (Lutati, Zimerman & Wolf, EMNLP 2023).")
    assert citation_problems(text, linker.markdown(text), works) == [
        "'Dao et al. 2024': no entry fits; entries of 'dao': dao2024 (dao, gu; 2024), dao2024fa2 (dao; 2024)",
        "'Hillis & Steele 1986': no entry fits (add the work to references.bib)",
        "'Lutati, Zimerman & Wolf, EMNLP 2023': write the year right after the names: "
        "'Lutati, Zimerman & Wolf 2023, EMNLP'",
    ]
    with pytest.raises(ReferenceError_, match="'Yang et al. 2024' fits 2 entries"):
        linker.markdown("DeltaNet (Yang et al. 2024)")
    # a link to the wrong work of one surname and year (a linker keyed by surname and year only)
    assert citation_problems("FlashAttention-2 (Dao 2024)", "FlashAttention-2 ({cite:alp}`dao2024`)", works) == [
        "the citations name ['dao2024fa2'] but link to ['dao2024']"]
    text = "Mamba-2 (Dao and Gu 2024), Kalman and Yang et al. 2024b"
    assert linker.markdown(text) == "Mamba-2 ({cite:alp}`dao2024`), Kalman and {cite:alp}`yang2024delta`"
    assert citation_problems(text, linker.markdown(text), works) == []


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_author_year_citations_are_links(chapter):
    from refimpl._book_sphinx import ReferenceError_, rewrite_chapter

    chapters, notebooks, targets = _linked_book()
    nb = notebooks[chapter]
    try:
        linked = rewrite_chapter(nb, chapters[chapter], targets)
    except ReferenceError_ as exc:
        pytest.fail(f"the book's linker stops: {exc}")
    problems = []
    for i, (cell, out) in enumerate(zip(nb.cells, linked.cells)):
        pairs = [(cell.source, out.source)] if cell.cell_type == "markdown" else []
        caption = cell.metadata.get("mystnb", {}).get("figure", {}).get("caption") if cell.cell_type == "code" else None
        if caption:  # a figure caption, linked like the prose
            pairs.append((caption, out.metadata["mystnb"]["figure"]["caption"]))
        for before, after in pairs:
            problems += [f"cell {i + 1}: {p}" for p in citation_problems(before, after, targets.citations)]
    assert not problems, (
        f"{chapter}: author–year citations that are not links to the bibliography (add the work to "
        f"references.bib, or write the citation as its entry is: surname(s), year, suffix): {problems}"
    )


def test_bibliography_entries_are_cited_apart():
    """No two entries of references.bib are cited alike (first surname, year with suffix, authors'
    form), each has a year (YYYY, or YYYY and a suffix letter), and a suffix is used only where it is
    needed: another entry with the same first surname, year and form."""
    from collections import Counter

    from pybtex.database import parse_file

    from refimpl._book_sphinx import bib_index

    bibfile = ROOT / BOOK["book"]["bibliography"]
    bad_years = [f"{key}: {e.fields.get('year')!r}" for key, e in parse_file(str(bibfile)).entries.items()
                 if not re.fullmatch(r"\d{4}[a-z]?", e.fields.get("year", ""))]
    assert not bad_years, f"entries without a year YYYY or YYYYa: {bad_years}"
    works = bib_index(bibfile)
    forms = Counter(w.citation_form() for w in works)
    alike = [[w.key for w in works if w.citation_form() == form] for form, n in forms.items() if n > 1]
    assert not alike, f"entries a citation cannot tell apart (give them year suffixes 2024a, 2024b): {alike}"
    unsuffixed = Counter((w.surnames[0], w.year, *w.citation_form()[2:]) for w in works)
    needless = [w.key for w in works if w.suffix and unsuffixed[(w.surnames[0], w.year, *w.citation_form()[2:])] < 2]
    assert not needless, f"year suffixes no other entry makes necessary: {needless}"

