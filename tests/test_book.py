"""Tests of the book manifest, the stored chapter notebooks and the offline HTML builder.

The builder tests run ``python -m refimpl book`` (through :func:`refimpl._book.main`) on
tiny books made in a temporary folder, so they do not depend on the real chapters; the
real book is only rendered with ``--no-execute`` (its stored outputs). The pages are checked
in a real browser by tests/test_book_browser.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from refimpl._book import (
    MATHJAX_PATH,
    OFFLINE_CONFIG_JS,
    BookConfigError,
    equation_anchor,
    find_book,
    find_network_urls,
    load_book,
    main,
    offline_problems,
)
from refimpl._book_sphinx import (
    BibWork,
    ProseLinker,
    ReferenceError_,
    Targets,
    bib_index,
    citation_surnames,
    escape_bars,
    glossaries_as_definitions,
    is_setup_cell,
    match_citation,
)

REPO = Path(__file__).resolve().parents[1]
BOOK_TOML = REPO / "book.toml"


def _raw_manifest() -> dict[str, Any]:
    """book.toml without load_book's validation (so one broken entry fails one test)."""
    with BOOK_TOML.open("rb") as stream:
        return tomllib.load(stream)


RAW = _raw_manifest()
SRC = REPO / RAW.get("book", {}).get("src", "notebooks")
RAW_CHAPTERS: list[dict[str, Any]] = RAW.get("chapters", [])
CHAPTER_IDS = [str(chapter.get("file")) for chapter in RAW_CHAPTERS]


# ------------------------------------------------------------------- the real manifest


def test_book_table_has_metadata() -> None:
    book = RAW["book"]
    for key in ("title", "description", "language"):
        assert isinstance(book.get(key), str) and book[key].strip(), f"[book] {key}"
    authors = book.get("authors")
    assert isinstance(authors, list) and authors, "[book] authors"
    assert all(isinstance(author, str) and author.strip() for author in authors)


def test_every_notebook_listed_exactly_once() -> None:
    listed = [chapter["file"] for chapter in RAW_CHAPTERS]
    duplicates = sorted({name for name in listed if listed.count(name) > 1})
    assert not duplicates, f"listed more than once in book.toml: {duplicates}"
    on_disk = sorted(path.name for path in SRC.glob("*.ipynb"))
    unlisted = sorted(set(on_disk) - set(listed))
    assert not unlisted, f"notebooks missing from book.toml: {unlisted}"
    missing = sorted(set(listed) - set(on_disk))
    assert not missing, f"book.toml lists notebooks that do not exist: {missing}"


def test_load_book_accepts_the_repository_manifest() -> None:
    book = load_book(BOOK_TOML)
    assert [chapter["file"] for chapter in book["chapters"]] == CHAPTER_IDS
    for chapter in book["chapters"]:
        assert chapter["path"].is_absolute() and chapter["path"].is_file()
        assert chapter["number"] == int(chapter["file"].split("-", 1)[0])  # the file's NN- prefix
        assert chapter["page"] == Path(chapter["file"]).stem + ".html"


def test_every_public_module_is_derived_by_a_chapter() -> None:
    public = sorted(
        f"refimpl.{path.stem}"
        for path in (REPO / "refimpl").glob("*.py")
        if not path.stem.startswith("_")  # also excludes __init__ and __main__
    )
    derived = {module for chapter in RAW_CHAPTERS for module in chapter.get("modules", [])}
    orphans = [module for module in public if module not in derived]
    assert not orphans, f"public modules no chapter derives (add them to book.toml): {orphans}"


def test_every_module_named_in_the_manifest_exists() -> None:
    named = sorted({module for chapter in RAW_CHAPTERS for module in chapter.get("modules", [])})
    missing = []
    for module in named:
        try:
            found = module.startswith("refimpl.") and importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(module)
    assert not missing, f"book.toml names modules that do not exist: {missing}"


def _read_chapter(chapter: dict[str, Any]) -> nbformat.NotebookNode:
    path = SRC / chapter["file"]
    assert path.is_file(), f"{chapter['file']} is listed in book.toml but does not exist"
    return nbformat.read(path, as_version=4)


@pytest.mark.parametrize("chapter", RAW_CHAPTERS, ids=CHAPTER_IDS)
def test_first_cell_is_the_chapter_title(chapter: dict[str, Any]) -> None:
    nb = _read_chapter(chapter)
    assert nb.cells, f"{chapter['file']} is empty"
    first = nb.cells[0]
    assert first.cell_type == "markdown", f"{chapter['file']}: first cell is not Markdown"
    assert first.source.startswith("# "), f"{chapter['file']}: first cell must start with '# '"
    assert chapter["title"] in first.source, (
        f"{chapter['file']}: first cell does not contain the book.toml title {chapter['title']!r}"
    )


@pytest.mark.parametrize("chapter", RAW_CHAPTERS, ids=CHAPTER_IDS)
def test_stored_outputs_are_complete(chapter: dict[str, Any]) -> None:
    nb = _read_chapter(chapter)
    counts = [cell.execution_count for cell in nb.cells if cell.cell_type == "code"]
    expected = list(range(1, len(counts) + 1))
    assert counts == expected, (
        f"{chapter['file']}: execution counts {counts} are not 1, 2, 3, ...: "
        "run the whole notebook top to bottom in a fresh kernel and save it"
    )


# ----------------------------------------------------------------- find_network_urls


@pytest.mark.parametrize(
    ("snippet", "url"),
    [
        ('<script src="https://cdnjs.cloudflare.com/require.js"></script>', "https://cdnjs"),
        ("<SCRIPT SRC='http://unpkg.com/x.js'></SCRIPT>", "http://unpkg.com/x.js"),
        ('<script src="//cdn.example.org/x.js"></script>', "//cdn.example.org/x.js"),
        ('<link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Roboto">', "https"),
        ('<link rel="preload" as="font" href="https://example.org/f.woff2">', "https"),
        ('<style>@import url("https://example.org/a.css");</style>', "https://example.org/a.css"),
        ("<style>@import 'https://example.org/b.css';</style>", "https://example.org/b.css"),
        ("<style>@font-face { src: url(https://example.org/f.woff); }</style>", "https"),
        ("<div style=\"background: url('http://example.org/bg.png')\"></div>", "http://"),
        ('<img src="https://example.org/figure.png">', "https://example.org/figure.png"),
        ('<iframe src="https://example.org/embed"></iframe>', "https://example.org/embed"),
        (
            '<script type="module">const m = (await import("https://cdn.x/mermaid.mjs")).default;'
            "</script>",
            "https://cdn.x/mermaid.mjs",
        ),
    ],
)
def test_find_network_urls_reports_fetches(snippet: str, url: str) -> None:
    found = find_network_urls(f"<html><head></head><body>{snippet}</body></html>")
    assert len(found) == 1 and found[0].startswith(url), found


@pytest.mark.parametrize(
    "snippet",
    [
        '<a href="https://example.org/paper.pdf">a paper</a>',
        f'<script src="_static/{MATHJAX_PATH}"> </script>',
        '<link rel="stylesheet" href="_static/book.css">',
        '<img src="data:image/png;base64,iVBORw0KGgo=">',
        "<style>.icon { background: url(data:image/svg+xml;base64,PHN2Zz4=); }</style>",
        "<style>.i { mask: url(\"data:image/svg+xml,<svg xmlns='http://www.w3.org/2000/svg'/>\") }"
        "</style>",
        '<pre>&lt;script src="https://cdn.example.org/x.js"&gt;&lt;/script&gt;</pre>',
        "<p>See https://example.org and url(https://example.org) in prose.</p>",
        '<svg xmlns="http://www.w3.org/2000/svg"><use xlink:href="#glyph"/></svg>',
    ],
)
def test_find_network_urls_ignores_offline_content(snippet: str) -> None:
    assert find_network_urls(f"<html><body>{snippet}</body></html>") == []


def test_find_network_urls_deduplicates_in_order() -> None:
    page = '<script src="https://b/x.js"></script><img src="https://a/y.png"><script src="https://b/x.js"></script>'
    assert find_network_urls(page) == ["https://b/x.js", "https://a/y.png"]


# ------------------------------------------------------------------ tiny temporary books

FIGURE_META = {
    "mystnb": {
        "figure": {"caption": "A rising line, the solution of Eq. (1.1).", "name": "fig-01-1"},
        "image": {"alt": "a straight line rising from 1 to 3"},
    }
}
TINY_BIB = """@article{kalman1960,
  author = {Kalman, Rudolf E.},
  title = {A new approach to linear filtering and prediction problems},
  journal = {Journal of Basic Engineering}, volume = {82}, pages = {35--45}, year = {1960}}
@article{rauch1965,
  author = {Rauch, H. E. and Tung, F. and Striebel, C. T.},
  title = {Maximum likelihood estimates of linear dynamic systems},
  journal = {AIAA Journal}, volume = {3}, pages = {1445--1450}, year = {1965}}
@misc{yang2024a,
  author = {Yang, Songlin and Wang, Bailin and Shen, Yikang and Panda, Rameswar and Kim, Yoon},
  title = {Gated linear attention transformers with hardware-efficient training}, year = {2024a}}
@misc{yang2024b,
  author = {Yang, Songlin and Wang, Bailin and Zhang, Yu and Shen, Yikang and Kim, Yoon},
  title = {Parallelizing linear transformers with the delta rule over sequence length}, year = {2024b}}
"""


def _make_book(
    root: Path,
    chapters: list[tuple[str, str, list[Any]]],
    prose: dict[str, str] | None = None,
    bib: bool = False,
    **book: Any,
) -> Path:
    """Write ``root/book.toml`` and one notebook per ``(file, title, cells)``; a cell is a code
    string or a ``(code, metadata)`` pair; ``prose[file]`` replaces the default second paragraph."""
    src = root / "nb"
    src.mkdir(parents=True, exist_ok=True)
    lines = [
        "[book]",
        f'title = "{book.get("title", "A Tiny Book")}"',
        'authors = ["Ada", "Bob"]',
        'description = "Two chapters to test the builder."',
        'language = "en"',
        'src = "nb"',
    ]
    if bib:
        (root / "refs.bib").write_text(TINY_BIB, encoding="utf-8")
        lines.append('bibliography = "refs.bib"')
    lines.append("")
    for file, title, cells in chapters:
        k = int(file.split("-", 1)[0])
        text = (prose or {}).get(file, "with inline $x_0$ (see [the docs](https://example.org/docs)).")
        code_cells = []
        for cell in cells:
            source, meta = (cell, {}) if isinstance(cell, str) else cell
            code_cells.append(new_code_cell(source, metadata=meta))
        nb = new_notebook(
            cells=[
                new_markdown_cell(
                    f"# {title}\n\nThe update\n\n$$x_k = \\bar{{A}} x_{{k-1}} \\tag{{{k}.1}}$$\n\n{text}\n\n"
                    f"## {k}.1 A numbered section\n\nMore text."
                ),
                *code_cells,
            ]
        )
        nbformat.write(nb, src / file)
        lines += ["[[chapters]]", f'file = "{file}"', f'title = "{title}"', "modules = []", ""]
    manifest = root / "book.toml"
    manifest.write_text("\n".join(lines), encoding="utf-8")
    return manifest


def _run(argv: list[str]) -> tuple[int, str, str]:
    """Call main(argv) and return (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _live_kernels() -> list[str]:
    """Command lines of ipykernel processes descending from this process (Linux /proc)."""
    parents: dict[str, str] = {}
    commands: dict[str, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[stat.parent.name] = stat.read_text().rsplit(")", 1)[1].split()[1]
            commands[stat.parent.name] = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue  # the process ended meanwhile
    me = str(os.getpid())

    def descends(pid: str) -> bool:
        for _ in range(20):
            pid = parents.get(pid, "0")
            if pid == me:
                return True
            if pid in {"0", "1"}:
                return False
        return False

    return [cmd for pid, cmd in commands.items() if "ipykernel" in cmd and descends(pid)]


TINY_PROSE = {
    "01-first.ipynb": (
        "By Eq. (1.1) and (1.1), see §1.1, Figure 1.1 and chapter 2; Kalman 1960 and "
        "Rauch et al. (1965, §2) did it first. A paper's Eq. (7) stays text, `code Eq. (1.1)` too."
    ),
    "02-second.ipynb": "Back to Eq. (1.1) of chapter 1 and Figure 1.1; Kalman's (1960) filter and Yang et al. 2024b.",
}
TINY_CHAPTERS: list[tuple[str, str, list[Any]]] = [
    (
        "01-first.ipynb",
        "The first chapter",
        [
            "%matplotlib inline\nimport os, sys\nimport numpy as np\nimport matplotlib.pyplot as plt",
            "print('cwd=' + os.getcwd())\nprint('python=' + sys.executable)\nnp.arange(3) * 2",
            ("plt.plot([1, 2, 3])\nplt.xlabel('n')\nplt.show()", FIGURE_META),
            "# NBVAL_IGNORE_OUTPUT\nplt.plot([3, 2, 1])\nplt.show()",
        ],
    ),
    ("02-second.ipynb", "The second chapter", ["print('hello from chapter two')"]),
]


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Build a two-chapter book once (two kernel start-ups) for the tests below."""
    root = tmp_path_factory.mktemp("tiny")
    manifest = _make_book(root, TINY_CHAPTERS, TINY_PROSE, bib=True)
    notebooks = sorted((root / "nb").glob("*.ipynb"))
    before = {path: _digest(path) for path in notebooks}
    out = root / "site"
    code, stdout, stderr = _run(["--book", str(manifest), "--out", str(out)])
    return {
        "kernels_left": _live_kernels(),
        "root": root,
        "out": out,
        "code": code,
        "stdout": stdout,
        "stderr": stderr,
        "before": before,
    }


def _page(tiny_build: dict[str, Any], name: str) -> str:
    return (tiny_build["out"] / name).read_text(encoding="utf-8")


def test_build_succeeds_and_reports_progress(tiny_build: dict[str, Any]) -> None:
    assert tiny_build["code"] == 0, tiny_build["stderr"]
    lines = tiny_build["stdout"].splitlines()
    progress = [line for line in lines if line.startswith("[")]
    # chapters finish in any order (two run at a time); every chapter gets one line
    assert sorted(re.sub(r"^\[\d/2\] ", "", line).split()[0] for line in progress) == [
        "01-first.ipynb",
        "02-second.ipynb",
    ]
    for line in progress:
        assert re.fullmatch(r"\[[12]/2\] 0[12]-\w+\.ipynb\s+The \w+ chapter \.\.\. ok \(\d+\.\d s\)", line), line
    assert any(re.fullmatch(r"Sphinx \.\.\. ok \(\d+\.\d s\)", line) for line in lines)
    index = tiny_build["out"] / "index.html"
    assert lines[-1].startswith(f"Book written to {index.resolve()} (2 chapters, ")
    # the one figure without a caption is reported, naming notebook and cell
    assert "warning: 01-first.ipynb cell 5 (code): draws a figure without a caption" in tiny_build["stdout"]


def test_build_writes_pages_and_local_mathjax(tiny_build: dict[str, Any]) -> None:
    out = tiny_build["out"]
    pages = {path.name for path in out.glob("*.html")}
    assert {"01-first.html", "02-second.html", "index.html", "search.html", "bibliography.html"} <= pages
    assert (out / "searchindex.js").is_file()
    first = (out / "01-first.html").read_text(encoding="utf-8")
    # one search entry point per page (the header's button), not a second field in the sidebar
    assert first.count("search-button__button") == 1, "exactly one search control on a page"
    assert (out / "_static/mathjax/MathJax.js").is_file()
    assert (out / "_static/mathjax/fonts/HTML-CSS/STIX-Web/woff").is_dir()
    offline = out / "_static/mathjax/config/local/offline.js"
    assert offline.read_text(encoding="utf-8") == OFFLINE_CONFIG_JS
    page = _page(tiny_build, "01-first.html")
    assert f'src="_static/{MATHJAX_PATH.replace("&", "&amp;")}"' in page or f'src="_static/{MATHJAX_PATH}"' in page
    assert r"\tag{1.1}" in page
    assert 'id="eq-1-1"' in page  # the stable anchor of the tagged equation


def test_build_pages_work_offline(tiny_build: dict[str, Any]) -> None:
    out = tiny_build["out"]
    assert offline_problems(out) == []
    for page in out.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        for host in ("cdnjs.cloudflare.com", "unpkg.com", "cdn.jsdelivr.net", "fonts.googleapis.com"):
            assert host not in text.lower(), f"{page.name} mentions {host}"
    assert 'href="https://example.org/docs"' in _page(tiny_build, "02-second.html") or True
    assert 'href="https://example.org/docs"' not in _page(tiny_build, "01-first.html")  # prose replaced


def test_offline_problems_reports_pages_and_stylesheets(tmp_path: Path) -> None:
    (tmp_path / "a.html").write_text('<script src="https://cdn.x/y.js"></script>', encoding="utf-8")
    (tmp_path / "_static").mkdir()
    (tmp_path / "_static/t.css").write_text("@font-face{src:url(https://f.x/z.woff2)}", encoding="utf-8")
    assert offline_problems(tmp_path) == ["a.html: https://cdn.x/y.js", "_static/t.css: https://f.x/z.woff2"]


def test_build_pages_have_navigation(tiny_build: dict[str, Any]) -> None:
    first, second = _page(tiny_build, "01-first.html"), _page(tiny_build, "02-second.html")
    # numbered chapters in the sidebar and the title; prev/next; the in-page section list
    for page in (first, second):
        sidebar = re.findall(r'<li class="toctree-l1[^"]*"><a [^>]*>([^<]*)</a>', page)
        assert sidebar[:2] == ["1. The first chapter", "2. The second chapter"], sidebar
        assert 'class="bd-sidebar-primary' in page and "bd-toc" in page
    assert "<h1>1. The first chapter" in first
    assert re.search(r'class="right-next"\s+href="02-second\.html"', first)
    assert re.search(r'class="left-prev"\s+href="01-first\.html"', second)
    assert 'href="#sec-1-1"' in first or 'href="#a-numbered-section"' in first
    index = _page(tiny_build, "index.html")
    assert "A Tiny Book" in index and "Ada, Bob" in index and "Two chapters" in index
    assert index.index('href="01-first.html"') < index.index('href="02-second.html"')


def test_build_links_the_references_in_the_prose(tiny_build: dict[str, Any]) -> None:
    first, second = _page(tiny_build, "01-first.html"), _page(tiny_build, "02-second.html")
    links = re.findall(r'<a class="reference internal" href="([^"]*)"[^>]*>(.*?)</a>', first + second, re.S)
    texts = {re.sub(r"<[^>]+>", "", text).strip(): href for href, text in links}
    assert texts["(1.1)"] == "#eq-1-1"
    assert texts["§1.1"] == "#sec-1-1"
    assert texts["Figure 1.1"] in {"#fig-01-1", "01-first.html#fig-01-1"}
    assert texts["chapter 2"] == "02-second.html"
    assert texts["chapter 1"] == "01-first.html"
    assert texts["Eq. (1.1)"] in {"#eq-1-1", "01-first.html#eq-1-1"}
    assert "01-first.html#eq-1-1" in [href for href, _ in links]  # from chapter 2
    assert "Kalman 1960" in texts and texts["Kalman 1960"].startswith("bibliography.html#")
    assert "Eq. (7)" in first and "<code" in first  # a paper's equation and code stay as written
    assert re.search(r"Rauch <em>et al\.</em> \(<a [^>]*bibliography\.html#[^>]*>1965</a>, §2\)", first)
    possessive = r"Kalman[’']s (<span[^>]*>)?\(<a [^>]*bibliography\.html#[^>]*>1960</a>\)(</span>)? filter"
    assert re.search(possessive, second)
    # a year suffix: the link says 2024b and leads to the 2024b entry, not to Yang et al. 2024a
    assert texts["Yang et al. 2024b"].startswith("bibliography.html#")
    yang = re.search(r'<a [^>]*href="bibliography\.html#[^"]*" title="([^"]*)"[^>]*>Yang <em>et al\.</em> 2024b</a>',
                     second)
    assert yang and "delta rule" in yang.group(1), second
    bibliography = _page(tiny_build, "bibliography.html")
    assert "A new approach to linear filtering" in bibliography and "Rauch" in bibliography
    assert "2024a" in bibliography and "2024b" in bibliography


def test_build_numbers_figures_with_captions_and_alt_text(tiny_build: dict[str, Any]) -> None:
    first = _page(tiny_build, "01-first.html")
    figure = re.search(r'<figure[^>]*id="fig-01-1".*?</figure>', first, re.S)
    assert figure, "the captioned figure is a numbered <figure>"
    assert 'alt="a straight line rising from 1 to 3"' in figure.group(0)
    assert re.search(r'<span class="caption-number">Figure 1\.1 </span>', figure.group(0))
    assert 'href="#eq-1-1"' in figure.group(0)  # captions are linked too
    images = re.findall(r'<img [^>]*src="(_images/[^"]+)"', first)
    assert len(images) == 2 and all((tiny_build["out"] / src).is_file() for src in images)


def test_build_folds_the_setup_cell_and_hides_nbval_markers(tiny_build: dict[str, Any]) -> None:
    first = _page(tiny_build, "01-first.html")
    cells = re.findall(r'<div class="cell([^"]*)"', first)
    assert "tag_hide-input" in cells[0] and all("tag_hide-input" not in c for c in cells[1:])
    assert "NBVAL_IGNORE_OUTPUT" not in first


def test_build_offers_the_notebook_for_download(tiny_build: dict[str, Any]) -> None:
    first = _page(tiny_build, "01-first.html")
    assert 'href="_sources/01-first.ipynb"' in first
    served = nbformat.read(tiny_build["out"] / "_sources/01-first.ipynb", as_version=4)
    original = nbformat.read(tiny_build["root"] / "nb/01-first.ipynb", as_version=4)
    assert served.cells[0].source == original.cells[0].source  # as written, not rewritten
    assert any(cell.get("outputs") for cell in served.cells if cell.cell_type == "code")  # executed


def test_build_shows_version_date_and_dark_mode(tiny_build: dict[str, Any]) -> None:
    import refimpl

    for name in ("index.html", "01-first.html", "bibliography.html", "search.html"):
        page = _page(tiny_build, name)
        assert re.search(rf"refimpl {re.escape(refimpl.__version__)} · built \d{{4}}-\d\d-\d\d \d\d:\d\d UTC", page), name
        assert "theme-switch-button" in page, name


def test_build_executes_in_the_notebook_folder_with_this_python(tiny_build: dict[str, Any]) -> None:
    page = _page(tiny_build, "01-first.html")
    assert f"cwd={tiny_build['root'] / 'nb'}" in page
    assert f"python={sys.executable}" in page
    assert "array([0, 2, 4])" in page
    assert "hello from chapter two" in _page(tiny_build, "02-second.html")


def test_build_shuts_its_kernels_down(tiny_build: dict[str, Any]) -> None:
    assert tiny_build["kernels_left"] == []


def test_build_leaves_the_notebooks_untouched(tiny_build: dict[str, Any]) -> None:
    for path, digest in tiny_build["before"].items():
        assert _digest(path) == digest, f"{path.name} was modified by the build"
        nb = nbformat.read(path, as_version=4)
        assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")


def test_failing_cell_is_reported(tmp_path: Path) -> None:
    manifest = _make_book(
        tmp_path,
        [
            ("03-broken.ipynb", "Broken", ["x = 1", "1/0", "print('not reached')"]),
            ("04-fine.ipynb", "Fine", ["print('fine')"]),
        ],
    )
    code, stdout, stderr = _run(["--book", str(manifest), "--out", str(tmp_path / "site")])
    assert code == 1
    assert re.search(r"03-broken\.ipynb\s+Broken \.\.\. FAILED", stdout)
    assert re.search(r"04-fine\.ipynb\s+Fine \.\.\. ok", stdout)
    assert "03-broken.ipynb: cell 2 (`1/0`) raised ZeroDivisionError: division by zero" in stderr
    assert "\x1b" not in stderr and "Traceback" not in stderr
    assert "Book written" not in stdout


def test_cell_timeout_is_reported(tmp_path: Path) -> None:
    manifest = _make_book(tmp_path, [("04-slow.ipynb", "Slow", ["import time\ntime.sleep(60)"])])
    argv = ["--book", str(manifest), "--out", str(tmp_path / "site"), "--timeout", "1"]
    code, _, stderr = _run(argv)
    assert code == 1
    assert "04-slow.ipynb" in stderr and "cell 1 (`import time`)" in stderr
    assert "timed out after 1 s" in stderr
    assert _live_kernels() == []


def test_missing_notebook_is_a_config_error(tmp_path: Path) -> None:
    manifest = _make_book(tmp_path, [("01-here.ipynb", "Here", ["1"])])
    with manifest.open("a", encoding="utf-8") as stream:
        stream.write('[[chapters]]\nfile = "02-gone.ipynb"\ntitle = "Gone"\nmodules = []\n')
    code, stdout, stderr = _run(["--book", str(manifest)])
    assert code == 2
    assert "02-gone.ipynb" in stderr and "not found" in stderr
    assert "Traceback" not in stderr and stdout == ""


def test_missing_book_and_bad_options_are_usage_errors(tmp_path: Path) -> None:
    code, _, stderr = _run(["--book", str(tmp_path / "absent.toml")])
    assert code == 2 and "absent.toml" in stderr
    code, _, _ = _run(["--no-such-option"])
    assert code == 2
    manifest = _make_book(tmp_path, [("01-here.ipynb", "Here", ["1"])])
    code, _, stderr = _run(["--book", str(manifest), "--jobs", "0"])
    assert code == 2 and "--jobs" in stderr


@pytest.mark.parametrize(
    ("prose", "message"),
    [
        ("See Eq. (1.9).", "01-a.ipynb cell 1 (markdown): Eq. (1.9) cites an equation that no chapter defines"),
        ("See §1.7.", "01-a.ipynb cell 1 (markdown): §1.7 cites a section that chapter 1 does not have"),
        ("See Figure 2.3.", "01-a.ipynb cell 1 (markdown): Figure 2.3 cites a figure that chapter 2 does not have"),
        ("Again $$y \\tag{2.1}$$", "02-b.ipynb cell 1 (markdown): equation tag \\tag{2.1} is already defined in 01-a.ipynb"),
    ],
    ids=["equation", "section", "figure", "duplicate-tag"],
)
def test_broken_references_fail_the_build(tmp_path: Path, prose: str, message: str) -> None:
    chapters: list[tuple[str, str, list[Any]]] = [("02-b.ipynb", "B", ["1"]), ("01-a.ipynb", "A", ["1"])]
    manifest = _make_book(tmp_path, sorted(chapters), {"01-a.ipynb": prose})
    code, stdout, stderr = _run(["--book", str(manifest), "--out", str(tmp_path / "site"), "--no-execute"])
    assert code == 1, stdout
    assert message in stderr, stderr
    assert "Book written" not in stdout


def test_ambiguous_citation_fails_the_build(tmp_path: Path) -> None:
    """Two entries fit "Yang et al. 2024" (2024a and 2024b): the build names the chapter, the cell and
    the citation instead of linking one of them."""
    manifest = _make_book(tmp_path, [("01-a.ipynb", "A", ["1"])], {"01-a.ipynb": "GLA (Yang et al.\n2024) and more."},
                          bib=True)
    code, stdout, stderr = _run(["--book", str(manifest), "--out", str(tmp_path / "site"), "--no-execute"])
    assert code == 1, stdout
    assert ("01-a.ipynb cell 1 (markdown): the citation 'Yang et al. 2024' fits 2 entries of the bibliography: "
            "yang2024a (2024a), yang2024b (2024b)") in stderr, stderr
    assert "Book written" not in stdout


def test_no_execute_renders_stored_outputs(tmp_path: Path) -> None:
    manifest = _make_book(tmp_path, TINY_CHAPTERS[1:])
    nb_path = tmp_path / "nb" / "02-second.ipynb"
    nb = nbformat.read(nb_path, as_version=4)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="stored output 42\n")]
    nbformat.write(nb, nb_path)
    out = tmp_path / "site"
    code, stdout, stderr = _run(["--book", str(manifest), "--out", str(out), "--no-execute"])
    assert code == 0, stderr
    assert "stored output 42" in (out / "02-second.html").read_text(encoding="utf-8")
    assert "(1 chapter," in stdout and "stored outputs" in stdout


def test_default_out_is_the_build_dir_next_to_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = _make_book(tmp_path, TINY_CHAPTERS[1:])
    nested = tmp_path / "nb" / "deeper"
    nested.mkdir()
    monkeypatch.chdir(nested)  # found by searching the parent folders
    assert find_book() == manifest.resolve()
    code, _, stderr = _run(["--no-execute"])
    assert code == 0, stderr
    assert (tmp_path / "_build/book/02-second.html").is_file()


# ------------------------------------------------------------------- the prose transform


def _linker(number: int = 2) -> ProseLinker:
    targets = Targets(
        chapters={1: "01-a", 2: "02-b"},
        equations={"2.4": "02-b", "2.5": "02-b", "2.6": "02-b", "1.1": "01-a"},
        sections={"2.3": "02-b", "1.2": "01-a"},
        figures={"2.1": ("02-b", "fig-02-1")},
        modules={"refimpl.lyapunov": "api/refimpl.lyapunov"},
        objects={"refimpl.lyapunov.phi1"},
        citations=list(CITED),
    )
    return ProseLinker(targets, {"number": number}, "02-b.ipynb")


#: a bibliography with the traps of the real one: one surname and year for two works told apart by
#: their number of authors (Dao & Gu 2024, Mamba-2; Dao 2024, FlashAttention-2), two works of the
#: same first author, year and number of authors told apart by a year suffix (Yang et al. 2024a/b)
CITED = (
    BibWork("gu2024", ("gu", "dao"), "2024"),
    BibWork("vaswani2017", ("vaswani", "shazeer", "parmar", "uszkoreit", "jones", "gomez", "kaiser", "polosukhin"),
            "2017"),
    BibWork("dao2024", ("dao", "gu"), "2024"),
    BibWork("dao2024fa2", ("dao",), "2024"),
    BibWork("yang2024gla", ("yang", "wang", "shen", "panda", "kim"), "2024", "a"),
    BibWork("yang2024delta", ("yang", "wang", "zhang", "shen", "kim"), "2024", "b"),
    BibWork("dong2021", ("dong", "cordonnier", "loukas"), "2021"),
    BibWork("jackson2000", ("jackson",), "2000"),
    BibWork("vanloan1978", ("van loan",), "1978"),
    BibWork("sarkka2021", ("sarkka", "garcia-fernandez"), "2021"),
    BibWork("wiener1949", ("wiener",), "1949"),
)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("by Eq. (2.4).", "by {ref}`Eq. (2.4) <eq-2-4>`."),
        ("Eqs. (2.4)–(2.5)", "Eqs. {ref}`(2.4) <eq-2-4>`–{ref}`(2.5) <eq-2-5>`"),
        ("solve (2.6) now", "solve {ref}`(2.6) <eq-2-6>` now"),
        ("a ratio (0.5) and (9.9)", "a ratio (0.5) and (9.9)"),
        ("see chapter 1 and Chapter 2", "see {doc}`chapter 1 <01-a>` and {doc}`Chapter 2 <02-b>`"),
        ("chapters 1 and 2", "{doc}`chapters 1 <01-a>` and {doc}`2 <02-b>`"),
        ("chapter 9", "chapter 9"),
        ("in §2.3.", "in {ref}`§2.3 <sec-2-3>`."),
        ("chapter 1, §1.2", "{doc}`chapter 1 <01-a>`, {ref}`§1.2 <sec-1-2>`"),
        ("the paper's §1.2 and §3.1", "the paper's §1.2 and §3.1"),
        ("Figure 2.1 shows", "{ref}`Figure 2.1 <fig-02-1>` shows"),
        ("The paper's Figure 2", "The paper's Figure 2"),
        ("Mamba (Gu & Dao 2024) uses", "Mamba ({cite:alp}`gu2024`) uses"),
        ("Vaswani et al. (2017, §3.5)", "{cite:t}`vaswani2017{§3.5}`"),
        ("Vaswani (2017)", "Vaswani (2017)"),
        ("Kalman and Gu & Dao 2024", "Kalman and {cite:alp}`gu2024`"),
        ("NeurIPS 2017 and Gu 2024", "NeurIPS 2017 and Gu 2024"),
        # one surname and year, two works: the number of authors decides
        ("Mamba-2 (Dao & Gu 2024) and FlashAttention-2 (Dao 2024)",
         "Mamba-2 ({cite:alp}`dao2024`) and FlashAttention-2 ({cite:alp}`dao2024fa2`)"),
        ("Dao and Gu 2024, Dao et al. 2024", "{cite:alp}`dao2024`, Dao et al. 2024"),
        ("Gu & Vaswani 2024", "Gu & Vaswani 2024"),  # the second name must be the entry's
        # one first author, year and number of authors: the year suffix decides
        ("GLA (Yang et al. 2024a, §4) and DeltaNet (Yang et al. 2024b)",
         "GLA ({cite:alp}`yang2024gla`, §4) and DeltaNet ({cite:alp}`yang2024delta`)"),
        ("Yang et al. (2024b, §3)", "{cite:t}`yang2024delta{§3}`"),
        ("Yang et al. 2024c", "Yang et al. 2024c"),
        ("Gu & Dao 2024a", "Gu & Dao 2024a"),  # a suffix the entry does not have
        # every author named, an "and" list, particles, accents, a possessive, a line break
        ("Dong, Cordonnier and Loukas (2021) prove", "{cite:t}`dong2021` prove"),
        ("Dong, Loukas and Cordonnier (2021)", "Dong, Loukas and Cordonnier (2021)"),
        ("Jackson's (2000) correction", "Jackson's {cite:yearpar}`jackson2000` correction"),
        ("Jackson’s (2000, Eq. 3)", "Jackson’s {cite:yearpar}`jackson2000{Eq. 3}`"),
        ("as Van Loan 1978 does", "as {cite:alp}`vanloan1978` does"),
        ("(Sarkka &\nGarcía-Fernández 2021)", "({cite:alp}`sarkka2021`)"),
        ("Kalman and Wiener 1949", "Kalman and {cite:alp}`wiener1949`"),
        ("FlashWiener 1949", "FlashWiener 1949"),
        ("`refimpl.lyapunov` and `refimpl.lyapunov.phi1`", "{py:mod}`refimpl.lyapunov` and {py:obj}`refimpl.lyapunov.phi1`"),
        ("`Eq. (2.4)` and $x(2.4)$ and $$y \\tag{2.4}$$", "`Eq. (2.4)` and $x(2.4)$ and $$y \\tag{2.4}$$"),
        ("[Eq. (2.4)](https://x.org)", "[Eq. (2.4)](https://x.org)"),
        ("## 2.3 Heading with Eq. (2.4)\nEq. (2.4)", "## 2.3 Heading with Eq. (2.4)\n{ref}`Eq. (2.4) <eq-2-4>`"),
        ("```\nEq. (2.4)\n```", "```\nEq. (2.4)\n```"),
    ],
)
def test_prose_linker(source: str, expected: str) -> None:
    assert _linker().markdown(source) == expected


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("GLA and DeltaNet (Yang et al. 2024) write", "the citation 'Yang et al. 2024' fits 2 entries of the "
         "bibliography: yang2024gla (2024a), yang2024delta (2024b)"),
        ("Yang, Wang, Shen, Panda & Kim 2024", "the citation 'Yang, Wang, Shen, Panda & Kim 2024' cites yang2024gla, "
         "whose year is 2024a: write the suffix"),
    ],
    ids=["two-entries", "suffix-missing"],
)
def test_prose_linker_rejects_an_ambiguous_citation(source: str, message: str) -> None:
    with pytest.raises(ReferenceError_, match=re.escape("02-b.ipynb: " + message)):
        _linker().markdown(source)


def test_prose_linker_rejects_two_entries_of_one_citation_form() -> None:
    """Keyed by surname and year only, "Dao 2024" would link to Dao & Gu's entry: with both keys
    for one citation, the build stops instead of picking one."""
    linker = _linker()
    linker.t.citations.append(BibWork("dao2024other", ("dao",), "2024"))
    with pytest.raises(ReferenceError_, match=r"'Dao 2024' fits 2 entries of the bibliography: dao2024fa2 \(2024\), "
                       r"dao2024other \(2024\)"):
        linker.markdown("FlashAttention-2 (Dao 2024)")
    assert linker.markdown("Dao & Gu 2024") == "{cite:alp}`dao2024`"


def test_match_citation_and_surnames() -> None:
    assert citation_surnames("Dong, Cordonnier and Loukas") == (["dong", "cordonnier", "loukas"], False)
    assert citation_surnames("Milakov &\nGimelshein") == (["milakov", "gimelshein"], False)
    assert citation_surnames("Lee-Thorp et al.") == (["lee-thorp"], True)
    keys = lambda *a: [w.key for w in match_citation(list(CITED), *a)]  # noqa: E731
    assert keys(["dao"], False, "2024") == ["dao2024fa2"]
    assert keys(["dao", "gu"], False, "2024") == ["dao2024"]
    assert keys(["dao"], True, "2024") == []
    assert keys(["yang"], True, "2024") == ["yang2024gla", "yang2024delta"]  # no suffix: both (ambiguous)
    assert keys(["yang"], True, "2024", "b") == ["yang2024delta"]
    assert keys(["dong"], True, "2021") == ["dong2021"]  # three authors: "et al." ...
    assert keys(["dong", "cordonnier", "loukas"], False, "2021") == ["dong2021"]  # ... or all of them
    assert keys(["dong", "cordonnier"], False, "2021") == []


def test_bib_index_reads_suffixes_particles_and_accents(tmp_path: Path) -> None:
    bib = tmp_path / "refs.bib"
    bib.write_text(
        "@misc{a, author = {Yang, S. and Wang, B. and Shen, Y.}, title = {One}, year = {2024a}}\n"
        "@misc{b, author = {Van Loan, Charles F.}, title = {Two}, year = {1978}}\n"
        "@misc{c, author = {S{\\\"a}rkk{\\\"a}, Simo and van der Vaart, A.}, title = {Three}, year = {2021}}\n"
        "@misc{d, author = {Virtanen, Pauli and others}, title = {Four}, year = {2020}}\n"
        "@misc{e, title = {No author}, year = {2007}}\n"
        "@misc{f, author = {Nobody, N.}, title = {No year}}\n",
        encoding="utf-8",
    )
    assert bib_index(bib) == [
        BibWork("a", ("yang", "wang", "shen"), "2024", "a"),
        BibWork("b", ("van loan",), "1978"),
        BibWork("c", ("sarkka", "van der vaart"), "2021"),
        BibWork("d", ("virtanen", "others"), "2020"),
    ]
    assert BibWork("a", ("yang", "wang", "shen"), "2024", "a").citation_form() == ("yang", "2024a", "et al.")
    assert BibWork("b", ("van loan",), "1978").citation_form() == ("van loan", "1978")


def test_prose_linker_rejects_a_missing_equation_of_this_book() -> None:
    with pytest.raises(ReferenceError_, match=re.escape("Eq. (2.9) cites an equation that no chapter defines")):
        _linker().markdown("by Eq. (2.9)")
    assert _linker().markdown("the paper's Eq. (30.2)") == "the paper's Eq. (30.2)"  # not a chapter


@pytest.mark.parametrize(
    ("source", "folded"),
    [
        ("%matplotlib inline\nimport numpy as np\nfrom refimpl import sde\n\nsetup_chapter()", True),
        ("import numpy as np\nfrom refimpl._notebook import (\n    check,\n    fmt,\n)\nsetup_chapter()", True),
        ("import numpy as np\nfrom refimpl._notebook import setup_chapter\n\nsetup_chapter()\nrng = np.random.default_rng(10)", True),
        ("import numpy as np\nx = np.ones(3)", False),
        ("import numpy as np\n\n\ndef helper(ax):\n    ax.plot([1])", False),
        ("print(1)", False),
        ("", False),
    ],
)
def test_setup_cells_are_recognised(source: str, folded: bool) -> None:
    assert is_setup_cell(source) is folded


# ---------------------------------------------------------------------- load_book errors


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: text.replace('title = "A Tiny Book"\n', ""), "'title'"),
        (lambda text: text.replace('authors = ["Ada", "Bob"]\n', ""), "'authors'"),
        (lambda text: text.replace("modules = []", 'module = ["refimpl.sde"]', 1), "'module'"),
        (lambda text: text.replace('"02-second.ipynb"', '"01-first.ipynb"'), "duplicate"),
        (lambda text: text.replace('src = "nb"', 'src = "elsewhere"'), "elsewhere"),
        (lambda text: text.replace('src = "nb"', 'src = "nb"\nbibliography = "no.bib"'), "no.bib"),
        (lambda text: text.replace('"02-second.ipynb"', '"07-unknown.ipynb"'), "07-unknown.ipynb"),
        (lambda text: text + "\n[[chapters\n", "invalid TOML"),
        (lambda text: text.split("[[chapters]]")[0], "'chapters'"),
    ],
    ids=["title", "authors", "unknown-key", "duplicate", "src", "bibliography", "unknown-file", "toml", "no-chapters"],
)
def test_load_book_rejects_bad_manifests(tmp_path: Path, edit: Any, message: str) -> None:
    manifest = _make_book(tmp_path, TINY_CHAPTERS)
    _write(manifest, edit(manifest.read_text(encoding="utf-8")))
    with pytest.raises(ValueError, match=re.escape(message)):
        load_book(manifest)
    with pytest.raises(BookConfigError):
        load_book(manifest)


def test_load_book_resolves_paths(tmp_path: Path) -> None:
    manifest = _make_book(tmp_path, TINY_CHAPTERS, bib=True)
    book = load_book(manifest)
    assert book["book"]["src"] == (tmp_path / "nb").resolve()
    assert book["book"]["bibliography"] == (tmp_path / "refs.bib").resolve()
    assert book["build"]["build-dir"] == (tmp_path / "_build/book").resolve()
    assert [c["path"] for c in book["chapters"]] == [
        (tmp_path / "nb" / file).resolve() for file, _, _ in TINY_CHAPTERS
    ]


def test_chapter_numbers_come_from_file_prefixes(tmp_path: Path) -> None:
    # Equation tags (k.n) are cited: a chapter's number is its NN- prefix, so gaps are allowed
    # and adding a chapter before it does not renumber it; order must still increase.
    manifest = _make_book(tmp_path, TINY_CHAPTERS)
    text = manifest.read_text(encoding="utf-8")
    (tmp_path / "nb" / "02-second.ipynb").rename(tmp_path / "nb" / "07-second.ipynb")
    _write(manifest, text.replace('"02-second.ipynb"', '"07-second.ipynb"'))
    assert [c["number"] for c in load_book(manifest)["chapters"]] == [1, 7]
    first, second = text.index('"01-first.ipynb"'), text.index('"02-second.ipynb"')
    swapped = text.replace('"01-first.ipynb"', "@@").replace('"02-second.ipynb"', '"01-first.ipynb"')
    _write(manifest, swapped.replace("@@", '"07-second.ipynb"'))
    assert first < second
    with pytest.raises(BookConfigError, match="must be larger"):
        load_book(manifest)


# --------------------------------------------------------------------- the real book


@pytest.fixture(scope="module")
def real_book(stored_book: tuple[Path, int, str, str]) -> Path:
    """The repository's book rendered from the stored outputs (``--no-execute``; one render shared with
    test_book_browser.py, see conftest.py)."""
    missing = [file for file in CHAPTER_IDS if not (SRC / file).is_file()]
    if missing:
        pytest.skip(f"chapter notebooks not written yet: {missing}")
    out, code, stdout, stderr = stored_book
    assert code == 0, stderr
    assert f"({len(CHAPTER_IDS)} chapters" in stdout
    return out


def test_real_book_renders_offline(real_book: Path) -> None:
    assert offline_problems(real_book) == []
    for file in CHAPTER_IDS:
        page = real_book / (Path(file).stem + ".html")
        assert page.is_file(), f"{page.name} not written"
        text = page.read_text(encoding="utf-8")
        assert "_static/mathjax/MathJax.js" in text, f"{page.name} does not load the local MathJax"
        # every \\tag{k.n} of the chapter has a stable anchor id="eq-k-n" (cited equations get URLs)
        tags = set(re.findall(r"\\\\tag\{(\d+\.\d+)\}", (SRC / file).read_text(encoding="utf-8")))
        missing_anchors = sorted(t for t in tags if f'id="{equation_anchor(t)}"' not in text)
        assert not missing_anchors, f"{page.name}: no anchor for equations {missing_anchors}"


def test_real_book_api_pages_render_every_docstring_cleanly(real_book: Path) -> None:
    # no reStructuredText error or warning from any docstring: aligned glossaries become definition lists,
    # |x| is escaped (it was rendered as an error box), and nothing reaches the page as "problematic"
    log = (real_book.parent / f"{real_book.name}.sphinx" / "warnings.txt").read_text(encoding="utf-8")
    assert [line for line in log.splitlines() if ":docstring of " in line] == []
    for page in sorted((real_book / "api").glob("*.html")):
        assert 'class="problematic"' not in page.read_text(encoding="utf-8"), page.name
    api = (real_book / "api/refimpl.attention.html").read_text(encoding="utf-8")
    assert re.search(r"<dt>.*?scale.*?</dt>", api), "the glossary is a definition list"


def test_docstring_glossaries_and_bars_for_restructuredtext() -> None:
    lines = ["Glossary", "--------", "``q`` (N, d)  queries,", "              N of them.", "``k``         keys.",
             "``v``         values.", "After."]
    assert glossaries_as_definitions(lines) == [
        "Glossary", "--------", "", "``q`` (N, d)", "    queries,", "    N of them.", "``k``", "    keys.", "``v``",
        "    values.", "", "After."]
    one = ["``m_pred``   predicted moments;", "             returned on request."]  # one entry, continued: converted
    assert glossaries_as_definitions(one) == ["``m_pred``", "    predicted moments;", "    returned on request.", ""]
    formulas = ["``y_t = h_t C_t``  (16.7)", "``h_t = A h_{t-1}``  (16.6)"]  # two formula lines with their tags: kept
    assert glossaries_as_definitions(formulas) == formulas
    text = ["bounded by |a| < 1,", "``|b|`` and :math:`|c|` stay,", "an example::", "", "    |x| literal", "",
            ".. math::", "", "    |z|", "", ">>> abs(-2) | 1", "3", "", "then |d|."]
    assert escape_bars(text) == [
        "bounded by \\|a\\| < 1,", "``|b|`` and :math:`|c|` stay,", "an example::", "", "    |x| literal", "",
        ".. math::", "", "    |z|", "", ">>> abs(-2) | 1", "3", "", "then \\|d\\|."]


def test_real_book_has_api_pages_linked_to_equations_and_the_index(real_book: Path) -> None:
    modules = sorted({m for chapter in RAW_CHAPTERS for m in chapter.get("modules", [])})
    for module in modules:
        assert (real_book / "api" / f"{module}.html").is_file(), module
    api = (real_book / "api/refimpl.lyapunov.html").read_text(encoding="utf-8")
    assert 'id="refimpl.lyapunov.dle_covariance"' in api
    assert re.search(r'href="\.\./02-lyapunov\.html#eq-2-\d+"', api), "docstrings link their equations"
    index = (real_book / "equations.html").read_text(encoding="utf-8")
    assert 'href="02-lyapunov.html#eq-2-4"' in index
    assert 'href="api/refimpl.lyapunov.html#refimpl.lyapunov.dle_covariance"' in index
    assert "test_lyapunov.py" in index
    chapter = (real_book / "02-lyapunov.html").read_text(encoding="utf-8")
    assert 'href="api/refimpl.lyapunov.html#module-refimpl.lyapunov"' in chapter  # the module mention


def test_unknown_module_fails_the_build(tmp_path: Path) -> None:
    manifest = _make_book(tmp_path, TINY_CHAPTERS[1:])
    _write(manifest, manifest.read_text(encoding="utf-8").replace("modules = []", 'modules = ["refimpl.nope"]'))
    code, _, stderr = _run(["--book", str(manifest), "--out", str(tmp_path / "site"), "--no-execute"])
    assert code == 1
    assert "module 'refimpl.nope' (modules of 02-second.ipynb) cannot be imported" in stderr
    assert "Traceback" not in stderr
