"""Tests of the book manifest, the stored chapter notebooks and the offline HTML builder.

The builder tests run ``python -m refimpl book`` (through :func:`refimpl._book.main`) on
tiny books made in a temporary folder, so they do not depend on the real chapters; the
real book is only rendered with ``--no-execute`` (its stored outputs), which is fast.
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
    MATHJAX_URL,
    OFFLINE_CONFIG_JS,
    BookConfigError,
    add_equation_anchors,
    equation_anchor,
    find_book,
    find_network_urls,
    load_book,
    main,
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
        f'<script src="{MATHJAX_URL}"> </script>',
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


def _make_book(root: Path, chapters: list[tuple[str, str, list[str]]], **book: Any) -> Path:
    """Write ``root/book.toml`` and one notebook per ``(file, title, code cells)``."""
    src = root / "nb"
    src.mkdir(parents=True, exist_ok=True)
    lines = [
        "[book]",
        f'title = "{book.get("title", "A Tiny Book")}"',
        'authors = ["Ada", "Bob"]',
        'description = "Two chapters to test the builder."',
        'language = "en"',
        'src = "nb"',
        "",
    ]
    for file, title, cells in chapters:
        nb = new_notebook(
            cells=[
                new_markdown_cell(
                    f"# {title}\n\nThe update\n\n$$x_k = \\bar{{A}} x_{{k-1}} \\tag{{1.1}}$$\n\n"
                    "with inline $x_0$ (see [the docs](https://example.org/docs))."
                ),
                *(new_code_cell(source) for source in cells),
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
    """Command lines of this process's ipykernel children (Linux /proc; [] elsewhere)."""
    parent = str(os.getpid())
    kernels = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = stat.read_text().rsplit(")", 1)[1].split()[1]
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue  # the process ended meanwhile
        if ppid == parent and "ipykernel" in cmdline:
            kernels.append(cmdline)
    return kernels


TINY_CHAPTERS = [
    (
        "01-first.ipynb",
        "The first chapter",
        [
            "import os, sys\nprint('cwd=' + os.getcwd())\nprint('python=' + sys.executable)",
            "import numpy as np\nnp.arange(3) * 2",
        ],
    ),
    ("02-second.ipynb", "The second chapter", ["print('hello from chapter two')"]),
]


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Build a two-chapter book once (two kernel start-ups) for the tests below."""
    root = tmp_path_factory.mktemp("tiny")
    manifest = _make_book(root, TINY_CHAPTERS)
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


def test_build_succeeds_and_reports_progress(tiny_build: dict[str, Any]) -> None:
    assert tiny_build["code"] == 0, tiny_build["stderr"]
    lines = tiny_build["stdout"].splitlines()
    assert re.fullmatch(
        r"\[1/2\] 01-first\.ipynb\s+The first chapter \.\.\. ok \(\d+\.\d s\)", lines[0]
    )
    assert re.fullmatch(
        r"\[2/2\] 02-second\.ipynb\s+The second chapter \.\.\. ok \(\d+\.\d s\)", lines[1]
    )
    index = tiny_build["out"] / "index.html"
    assert lines[-1].startswith(f"Book written to {index} (2 chapters, ")


def test_build_writes_pages_and_local_mathjax(tiny_build: dict[str, Any]) -> None:
    out = tiny_build["out"]
    assert sorted(path.name for path in out.glob("*.html")) == [
        "01-first.html",
        "02-second.html",
        "index.html",
    ]
    assert (out / "_static/mathjax/MathJax.js").is_file()
    assert (out / "_static/mathjax/fonts/HTML-CSS/STIX-Web/woff").is_dir()
    offline = out / "_static/mathjax/config/local/offline.js"
    assert offline.read_text(encoding="utf-8") == OFFLINE_CONFIG_JS
    page = (out / "01-first.html").read_text(encoding="utf-8")
    assert f'<script src="{MATHJAX_URL}">' in page
    # nbconvert's Hub configuration is kept: $/$$ delimiters, escapes, AMS numbering.
    assert "inlineMath: [ ['$','$']" in page and "processEscapes: true" in page
    assert r"\tag{1.1}" in page


def test_build_pages_work_offline(tiny_build: dict[str, Any]) -> None:
    for page in tiny_build["out"].glob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert find_network_urls(text) == [], page.name
        for host in ("cdnjs.cloudflare.com", "unpkg.com", "cdn.jsdelivr.net"):
            assert host not in text.lower(), f"{page.name} mentions {host}"
    # Prose links stay.
    assert 'href="https://example.org/docs"' in (tiny_build["out"] / "01-first.html").read_text()


def test_build_pages_have_navigation(tiny_build: dict[str, Any]) -> None:
    out = tiny_build["out"]
    first = (out / "01-first.html").read_text(encoding="utf-8")
    second = (out / "02-second.html").read_text(encoding="utf-8")
    for page in (first, second):
        assert page.count('href="index.html"') == 2  # header and footer
    assert re.search(r'<a [^>]*href="02-second\.html"[^>]*>\s*2\. The second chapter', first)
    assert re.search(r'<a [^>]*href="01-first\.html"[^>]*>[^<]*1\. The first chapter', second)
    assert "Chapter 1: The first chapter" in first
    assert "Chapter 2: The second chapter" in second
    assert "01-first.html" not in first.split("<main>", 1)[1].split("</nav>", 1)[0]
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "A Tiny Book" in index and "Ada, Bob" in index and "Two chapters" in index
    assert index.index('href="01-first.html"') < index.index('href="02-second.html"')


def test_build_executes_in_the_notebook_folder_with_this_python(tiny_build: dict[str, Any]) -> None:
    page = (tiny_build["out"] / "01-first.html").read_text(encoding="utf-8")
    assert f"cwd={tiny_build['root'] / 'nb'}" in page
    assert f"python={sys.executable}" in page
    assert "array([0, 2, 4])" in page
    assert "hello from chapter two" in (tiny_build["out"] / "02-second.html").read_text()


def test_build_shuts_its_kernels_down(tiny_build: dict[str, Any]) -> None:
    assert tiny_build["kernels_left"] == []


def test_build_leaves_the_notebooks_untouched(tiny_build: dict[str, Any]) -> None:
    for path, digest in tiny_build["before"].items():
        assert _digest(path) == digest, f"{path.name} was modified by the build"
        nb = nbformat.read(path, as_version=4)
        assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")


def test_failing_cell_is_reported(tmp_path: Path) -> None:
    manifest = _make_book(
        tmp_path, [("03-broken.ipynb", "Broken", ["x = 1", "1/0", "print('not reached')"])]
    )
    code, stdout, stderr = _run(["--book", str(manifest), "--out", str(tmp_path / "site")])
    assert code == 1
    assert "03-broken.ipynb" in stdout and "FAILED" in stdout
    assert "03-broken.ipynb" in stderr
    assert "cell 2 (`1/0`)" in stderr
    assert "ZeroDivisionError" in stderr and "division by zero" in stderr
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


def test_unknown_only_and_missing_book_are_usage_errors(tmp_path: Path) -> None:
    manifest = _make_book(tmp_path, [("01-here.ipynb", "Here", ["1"])])
    code, _, stderr = _run(["--book", str(manifest), "--only", "09-nope.ipynb"])
    assert code == 2 and "09-nope.ipynb" in stderr
    code, _, stderr = _run(["--book", str(tmp_path / "absent.toml")])
    assert code == 2 and "absent.toml" in stderr
    code, _, _ = _run(["--no-such-option"])
    assert code == 2


def test_only_and_no_execute_render_a_subset(tmp_path: Path) -> None:
    manifest = _make_book(tmp_path, TINY_CHAPTERS)
    out = tmp_path / "site"
    code, stdout, stderr = _run(
        ["--book", str(manifest), "--out", str(out), "--no-execute", "--only", "02-second.ipynb"]
    )
    assert code == 0, stderr
    assert sorted(path.name for path in out.glob("*.html")) == ["02-second.html", "index.html"]
    assert "(1 chapter," in stdout
    # The navigation still covers the whole book.
    assert 'href="01-first.html"' in (out / "02-second.html").read_text(encoding="utf-8")


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
        (lambda text: text + "\n[[chapters\n", "invalid TOML"),
        (lambda text: text.split("[[chapters]]")[0], "'chapters'"),
    ],
    ids=["title", "authors", "unknown-key", "duplicate", "src", "toml", "no-chapters"],
)
def test_load_book_rejects_bad_manifests(tmp_path: Path, edit: Any, message: str) -> None:
    manifest = _make_book(tmp_path, TINY_CHAPTERS)
    _write(manifest, edit(manifest.read_text(encoding="utf-8")))
    with pytest.raises(ValueError, match=re.escape(message)):
        load_book(manifest)
    with pytest.raises(BookConfigError):
        load_book(manifest)


def test_load_book_resolves_paths(tmp_path: Path) -> None:
    manifest = _make_book(tmp_path, TINY_CHAPTERS)
    book = load_book(manifest)
    assert book["book"]["src"] == (tmp_path / "nb").resolve()
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


def test_real_book_renders_offline(tmp_path: Path) -> None:
    missing = [file for file in CHAPTER_IDS if not (SRC / file).is_file()]
    if missing:
        pytest.skip(f"chapter notebooks not written yet: {missing}")
    out = tmp_path / "book"
    code, stdout, stderr = _run(["--book", str(BOOK_TOML), "--out", str(out), "--no-execute"])
    assert code == 0, stderr
    assert f"({len(CHAPTER_IDS)} chapter" in stdout
    for file in CHAPTER_IDS:
        page = out / (Path(file).stem + ".html")
        assert page.is_file(), f"{page.name} not written"
        text = page.read_text(encoding="utf-8")
        assert find_network_urls(text) == [], page.name
        assert MATHJAX_URL in text, f"{page.name} does not load the local MathJax"
        # every \\tag{k.n} of the chapter has a stable anchor id="eq-k-n" (cited equations get URLs)
        tags = set(re.findall(r"\\\\tag\{(\d+\.\d+)\}", (SRC / file).read_text(encoding="utf-8")))
        missing_anchors = sorted(t for t in tags if f'id="{equation_anchor(t)}"' not in text)
        assert not missing_anchors, f"{page.name}: no anchor for equations {missing_anchors}"
    assert find_network_urls((out / "index.html").read_text(encoding="utf-8")) == []


def test_equation_anchors_precede_their_blocks() -> None:
    src = "a\n\n$$\nx \\tag{2.4}\n$$\nb $$y \\tag{2.5}$$\n$$z$$\n"
    out = add_equation_anchors(src).split("\n")
    assert out[2] == '<a id="eq-2-4"></a>' and out[3] == "$$"
    assert '<a id="eq-2-5"></a>' in out and out.index('<a id="eq-2-5"></a>') == out.index("b $$y \\tag{2.5}$$") - 1
    assert add_equation_anchors("no math here") == "no math here"
