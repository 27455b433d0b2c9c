"""Offline HTML book builder: ``python -m refimpl book``.

The textbook is the ordered list of Jupyter notebooks declared in ``book.toml``. This
module executes every chapter in a fresh kernel of the *current* Python environment
(nbclient), renders it to HTML (nbconvert, with the ``refimpl`` template shipped in
``refimpl/_book_templates``) and writes a self-contained site::

    OUT/index.html                 contents page (title, authors, chapter list)
    OUT/NN-slug.html               one page per chapter, same stem as the notebook
    OUT/_static/mathjax/...        MathJax 2 copied from ``jupyter_server_mathjax``

Nothing on the pages is fetched from the network: the require.js, widget-manager and
mermaid CDN scripts of nbconvert's ``lab`` template are removed, MathJax is loaded from
the local copy (STIX-Web fonts, the only ones that package ships) and images are inlined
as base64. :func:`find_network_urls` checks this on every page that is written.

The notebook files themselves are never modified: execution happens on an in-memory copy.

Manifest format (``book.toml``, read with :mod:`tomllib`)::

    [book]
    title = "..."            # required
    authors = ["..."]        # required, list of strings
    description = "..."      # required
    language = "en"          # required, the pages' ``lang`` attribute
    src = "notebooks"        # optional, folder of the notebooks, relative to book.toml

    [build]
    build-dir = "_build/book"   # optional, relative to book.toml

    [[chapters]]             # ordered, at least one
    file = "01-linear-sde.ipynb"   # notebook file name inside src
    title = "The linear Itô SDE"
    modules = ["refimpl.sde"]      # refimpl modules the chapter derives (may be empty)
"""

from __future__ import annotations

import argparse
import html.parser
import os
import re
import shutil
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:  # the book extras are imported lazily: load_book() works without them
    from jupyter_client.manager import AsyncKernelManager
    from nbconvert import HTMLExporter
    from nbformat import NotebookNode

__all__ = [
    "BookConfigError",
    "ChapterError",
    "build",
    "find_book",
    "find_network_urls",
    "load_book",
    "main",
]

#: Folder holding the nbconvert template ``refimpl/`` and the contents-page template.
TEMPLATES_DIR = Path(__file__).resolve().with_name("_book_templates")
#: nbconvert template name (a folder of :data:`TEMPLATES_DIR`).
TEMPLATE_NAME = "refimpl"
#: Where MathJax is copied to, relative to the output folder.
MATHJAX_DIR = "_static/mathjax"
#: MathJax 2 entry point as seen from a page in the output folder. ``TeX-AMS-MML_HTMLorMML``
#: is the combined config that jupyter_server_mathjax ships; ``local/offline`` is ours.
MATHJAX_URL = f"{MATHJAX_DIR}/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe,local/offline"
#: ``OUT/_static/mathjax/config/local/offline.js``: jupyter_server_mathjax ships only the
#: STIX-Web woff fonts, so select them explicitly; otherwise MathJax probes for TeX
#: fonts, finds none and falls back to image fonts that are not there either.
OFFLINE_CONFIG_JS = (
    'MathJax.Hub.Config({"HTML-CSS": {availableFonts: [], preferredFont: null, '
    'webFont: "STIX-Web", imageFont: null}, SVG: {font: "STIX-Web"}});\n'
    'MathJax.Ajax.loadComplete("[MathJax]/config/local/offline.js");\n'
)

_DEFAULT_SRC = "notebooks"
_DEFAULT_BUILD_DIR = "_build/book"
_CHAPTER_KEYS = {"file", "title", "modules"}
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


class BookConfigError(ValueError):
    """``book.toml`` is missing, malformed, or names notebooks that do not exist."""


class ChapterError(RuntimeError):
    """A chapter could not be executed or rendered; the message says where and why."""


# ----------------------------------------------------------------------------- manifest


def find_book(start: str | os.PathLike[str] | None = None) -> Path:
    """Find ``book.toml`` in `start` or the nearest parent folder that has one.

    Parameters
    ----------
    start : path-like, optional
        Folder to start from; the current working directory by default.

    Returns
    -------
    pathlib.Path
        Absolute path of the manifest.

    Raises
    ------
    BookConfigError
        If neither `start` nor any of its parents contains ``book.toml``.
    """
    here = Path.cwd() if start is None else Path(start)
    here = here.resolve()
    for folder in (here, *here.parents):
        candidate = folder / "book.toml"
        if candidate.is_file():
            return candidate
    raise BookConfigError(f"no book.toml in {here} or any parent folder (use --book PATH)")


def _require(table: dict[str, Any], key: str, kind: type, where: str) -> Any:
    """Return ``table[key]``, checking it is present and of type `kind`."""
    if key not in table:
        raise BookConfigError(f"{where}: missing key {key!r}")
    value = table[key]
    if not isinstance(value, kind):
        raise BookConfigError(
            f"{where}: key {key!r} must be a {kind.__name__}, got {type(value).__name__}"
        )
    return value


def _string_list(value: Any, key: str, where: str) -> list[str]:
    """Check that `value` is a list of strings (TOML arrays are lists)."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise BookConfigError(f"{where}: key {key!r} must be a list of strings")
    return list(value)


def load_book(path: str | os.PathLike[str] = "book.toml") -> dict[str, Any]:
    """Read and validate a book manifest.

    Parameters
    ----------
    path : path-like, default "book.toml"
        The manifest. Relative paths inside it (``src``, ``build-dir``) are resolved
        against its folder, not the working directory.

    Returns
    -------
    dict
        ``{"path", "root", "book", "build", "chapters"}`` where ``path`` is the manifest,
        ``root`` its folder, ``book`` the ``[book]`` table with ``src`` made an absolute
        :class:`~pathlib.Path`, ``build`` the ``[build]`` table with ``build-dir`` made an
        absolute Path, and ``chapters`` the ``[[chapters]]`` list in order. Each chapter
        dict has ``file``, ``title``, ``modules`` and gains ``path`` (absolute notebook
        path), ``number`` (the file's ``NN-`` prefix, else the 1-based position) and ``page`` (HTML file name, same stem as the
        notebook).

    Raises
    ------
    BookConfigError
        A :class:`ValueError` naming the manifest and the offending key or file, if the
        manifest is missing or not TOML, a required key is missing or mistyped, a
        chapter table has an unknown key, a notebook does not exist, or a notebook is
        listed twice.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise BookConfigError(f"book file not found: {path}")
    try:
        with path.open("rb") as stream:  # tomllib wants binary mode
            data = tomllib.load(stream)
    except tomllib.TOMLDecodeError as exc:
        raise BookConfigError(f"{path}: invalid TOML: {exc}") from None
    root = path.parent

    book = dict(_require(data, "book", dict, f"{path}: [book]"))
    where = f"{path}: [book]"
    title = _require(book, "title", str, where)
    if not title.strip():
        raise BookConfigError(f"{where}: key 'title' is empty")
    book["authors"] = _string_list(_require(book, "authors", list, where), "authors", where)
    _require(book, "description", str, where)
    _require(book, "language", str, where)
    src = book.get("src", _DEFAULT_SRC)
    if not isinstance(src, str):
        raise BookConfigError(f"{where}: key 'src' must be a str")
    book["src"] = (root / src).resolve()
    if not book["src"].is_dir():
        raise BookConfigError(f"{where}: src folder not found: {book['src']}")

    build_table = data.get("build", {})
    if not isinstance(build_table, dict):
        raise BookConfigError(f"{path}: [build] must be a table")
    build_table = dict(build_table)
    build_dir = build_table.get("build-dir", _DEFAULT_BUILD_DIR)
    if not isinstance(build_dir, str):
        raise BookConfigError(f"{path}: [build]: key 'build-dir' must be a str")
    build_table["build-dir"] = (root / build_dir).resolve()

    raw_chapters = _require(data, "chapters", list, f"{path}: [[chapters]]")
    if not raw_chapters:
        raise BookConfigError(f"{path}: [[chapters]] is empty: the book needs a chapter")
    chapters: list[dict[str, Any]] = []
    seen_files: set[str] = set()
    seen_pages: set[str] = set()
    for number, raw in enumerate(raw_chapters, start=1):
        where = f"{path}: [[chapters]] #{number}"
        if not isinstance(raw, dict):
            raise BookConfigError(f"{where}: must be a table")
        # A misspelt key (e.g. "module") would silently drop information: reject it.
        unknown = sorted(set(raw) - _CHAPTER_KEYS)
        if unknown:
            raise BookConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}")
        file = _require(raw, "file", str, where)
        where = f"{path}: [[chapters]] #{number} ({file})"
        if Path(file).name != file or not file.endswith(".ipynb"):
            raise BookConfigError(f"{where}: 'file' must be a notebook file name (*.ipynb) in src")
        chapter_title = _require(raw, "title", str, where)
        if not chapter_title.strip():
            raise BookConfigError(f"{where}: key 'title' is empty")
        modules = _string_list(raw.get("modules", []), "modules", where)
        if file in seen_files:
            raise BookConfigError(f"{where}: duplicate chapter file {file!r}")
        page = Path(file).stem + ".html"
        if page in seen_pages:
            raise BookConfigError(f"{where}: duplicate chapter page {page!r}")
        notebook = book["src"] / file
        if not notebook.is_file():
            raise BookConfigError(f"{where}: notebook file not found: {notebook}")
        # The chapter number is the file's NN- prefix when it has one: equation tags such as
        # (11.2) are cited, so they must not shift when chapters are added before it.
        prefix = re.match(r"(\d+)-", file)
        chapter_number = int(prefix.group(1)) if prefix else number
        if chapters and chapter_number <= chapters[-1]["number"]:
            raise BookConfigError(
                f"{where}: chapter number {chapter_number} (from the file name) must be larger than "
                f"the previous chapter's {chapters[-1]['number']}: list chapters in order"
            )
        seen_files.add(file)
        seen_pages.add(page)
        chapters.append(
            {
                "file": file,
                "title": chapter_title,
                "modules": modules,
                "path": notebook,
                "number": chapter_number,
                "page": page,
            }
        )
    return {"path": path, "root": root, "book": book, "build": build_table, "chapters": chapters}


# ----------------------------------------------------------------------- network check


_NETWORK = re.compile(r"^\s*(?:https?:)?//", re.IGNORECASE)
# Only URLs that open a css url(...) or an @import count: a data: URI may contain
# "http://www.w3.org/2000/svg" further in, which is not a fetch.
_CSS_URL = re.compile(r"""url\(\s*['"]?\s*((?:https?:)?//[^'")\s]+)""", re.IGNORECASE)
_CSS_IMPORT = re.compile(r"""@import\s+['"]\s*((?:https?:)?//[^'"\s]+)""", re.IGNORECASE)
# ES module imports, static or dynamic (how nbconvert's mermaid block loads its CDN copy).
_JS_IMPORT = re.compile(r"""(?:\bimport\s*\(?|\bfrom)\s*(['"`])\s*((?:https?:)?//[^'"`\s]+)\1""")
# Attributes that make a browser fetch something as the page loads, on any element.
_FETCH_ATTRIBUTES = {"src", "poster"}
# Elements whose href is fetched (a plain <a href> is a link the reader may follow).
_FETCH_HREF_ELEMENTS = {"link", "image", "use", "feimage"}


class _NetworkURLParser(html.parser.HTMLParser):
    """Collect URLs that a browser would fetch from the network while loading a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[str] = []
        self._raw_element: str | None = None

    def _add(self, url: str | None) -> None:
        if url and _NETWORK.match(url):
            self.urls.append(url.strip())

    def _scan_css(self, css: str) -> None:
        self.urls.extend(match.group(1) for match in _CSS_URL.finditer(css))
        self.urls.extend(match.group(1) for match in _CSS_IMPORT.finditer(css))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name in _FETCH_ATTRIBUTES:
                self._add(value)
            elif name == "srcset":
                for candidate in value.split(","):
                    self._add(candidate.strip().split(" ")[0])
            elif name == "data" and tag == "object":
                self._add(value)
            elif name in {"href", "xlink:href"} and tag in _FETCH_HREF_ELEMENTS:
                self._add(value)
            elif name == "style":
                self._scan_css(value)
        if tag in {"style", "script"}:
            self._raw_element = tag

    def handle_endtag(self, tag: str) -> None:
        if tag == self._raw_element:
            self._raw_element = None

    def handle_data(self, data: str) -> None:
        # HTMLParser hands <style>/<script> content over verbatim (CDATA content).
        if self._raw_element == "style":
            self._scan_css(data)
        elif self._raw_element == "script":
            self.urls.extend(match.group(2) for match in _JS_IMPORT.finditer(data))
            self._scan_css(data)  # scripts that inject CSS text


def find_network_urls(html_text: str) -> list[str]:
    """List the network URLs a browser would load while opening an HTML page.

    Checked: ``src``/``srcset``/``poster`` of any element (``<script>``, ``<img>``,
    ``<iframe>`` ...), ``href`` of ``<link>`` (stylesheets, fonts, preloads) and of SVG
    ``<image>``/``<use>``, ``<object data>``, CSS ``url(...)`` and ``@import`` in
    ``<style>`` elements and ``style`` attributes, and ES module ``import`` in scripts.
    A URL counts as network if it is ``http://``, ``https://`` or protocol-relative
    (``//host/...``). Hyperlinks (``<a href="https://...">``) and escaped text (code
    cells showing HTML) are not fetched and are not reported.

    Parameters
    ----------
    html_text : str
        The page source.

    Returns
    -------
    list of str
        The offending URLs, in order of appearance, without duplicates; empty if the
        page works offline.
    """
    parser = _NetworkURLParser()
    parser.feed(html_text)
    parser.close()
    return list(dict.fromkeys(parser.urls))


# ----------------------------------------------------------------------------- execution


def _current_python_kernel_manager() -> AsyncKernelManager:
    """Return a kernel manager whose ``python3`` kernel runs this very interpreter.

    The stock ``python3`` spec is used when it already resolves to
    ``sys.executable -m ipykernel_launcher`` (jupyter_client maps a bare ``python``
    argv to ``sys.executable``). Otherwise -- e.g. a ``python3`` spec installed in the
    user's or system's Jupyter path for another interpreter -- an explicit spec is
    used, so a chapter always runs against the refimpl that is installed here. The
    kernel keeps the name ``python3`` so nbclient still treats it as an IPython kernel.

    Returns
    -------
    jupyter_client.manager.AsyncKernelManager
        A fresh, not yet started manager.
    """
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel
    from jupyter_client.manager import AsyncKernelManager

    def this_python(executable: str) -> bool:
        if executable in {"python", "python3", f"python3.{sys.version_info[1]}"}:
            return True  # jupyter_client substitutes sys.executable for these
        # No resolve(): a venv's python is a symlink to the base interpreter, which
        # would then wrongly compare equal to a kernel of the base environment.
        normalize = os.path.normcase
        return normalize(os.path.abspath(executable)) == normalize(os.path.abspath(sys.executable))

    try:
        stock = KernelSpecManager().get_kernel_spec("python3")
        argv = list(stock.argv)
        if len(argv) >= 3 and this_python(argv[0]) and argv[1:3] == ["-m", "ipykernel_launcher"]:
            return _with_encryption(AsyncKernelManager(kernel_name="python3"))
    except NoSuchKernel:
        pass

    class _ThisPythonSpecs(KernelSpecManager):  # type: ignore[misc]
        def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
            if kernel_name == "python3":
                # ipykernel's own spec for this interpreter (argv, metadata such as the
                # encryption it supports), pinned to sys.executable.
                from ipykernel.kernelspec import get_kernel_dict

                spec = get_kernel_dict()
                spec["argv"] = [
                    sys.executable,
                    "-m",
                    "ipykernel_launcher",
                    "-f",
                    "{connection_file}",
                ]
                return KernelSpec(**spec)
            return super().get_kernel_spec(kernel_name)

    km = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=_ThisPythonSpecs())
    return _with_encryption(km)


def _with_encryption(km: AsyncKernelManager) -> AsyncKernelManager:
    """Encrypt the kernel's ZMQ traffic (CurveZMQ) when jupyter_client and pyzmq can.

    Recent ipykernels warn on stderr for every unencrypted TCP kernel; with ``"auto"``
    jupyter_client only provisions keys for kernel specs that declare Curve support, so
    older kernels keep working unencrypted.
    """
    import zmq

    if km.has_trait("transport_encryption") and zmq.has("curve"):
        km.transport_encryption = "auto"
    return km


def _kernel_env() -> dict[str, str]:
    """Environment of the chapter kernels."""
    env = dict(os.environ)
    # An inherited non-inline backend (MPLBACKEND=Agg is common in CI) would make every
    # figure vanish from the book; without it ipykernel selects the inline backend.
    env.pop("MPLBACKEND", None)
    # Silences pydevd's "frozen modules" warning that the kernel would print to stderr.
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    return env


def _describe_cell(nb: NotebookNode, cell_index: int | None) -> str:
    """``cell N (`first line`)`` with N the 1-based index among the code cells."""
    if cell_index is None or not 0 <= cell_index < len(nb.cells):
        return "a cell"
    number = sum(1 for cell in nb.cells[: cell_index + 1] if cell.cell_type == "code")
    lines = [line.strip() for line in nb.cells[cell_index].source.splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if len(first) > 80:
        first = first[:77] + "..."
    return f"cell {number} (`{first}`)"


def execute_notebook(nb: NotebookNode, cwd: Path, *, timeout: int | None = 600) -> None:
    """Execute `nb` in place in a fresh kernel of the current Python environment.

    Parameters
    ----------
    nb : nbformat.NotebookNode
        The notebook (a copy: outputs and execution counts are replaced).
    cwd : pathlib.Path
        Working directory of the kernel, normally the notebook's folder, so relative
        paths in the chapter behave as in Jupyter.
    timeout : int or None, default 600
        Seconds allowed per cell; None for no limit.

    Raises
    ------
    ChapterError
        On the first failing cell (naming it and the exception), a cell timeout, a dead
        kernel or a kernel that does not start. The message has no ANSI codes.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    current: dict[str, int | None] = {"index": None}

    def on_cell_start(cell: NotebookNode, cell_index: int) -> None:
        # Remember which cell runs: nbclient's exceptions do not carry its index.
        current["index"] = cell_index

    client = NotebookClient(
        nb,
        km=_current_python_kernel_manager(),
        timeout=timeout,
        allow_errors=False,  # cells tagged "raises-exception" are still allowed to raise
        resources={"metadata": {"path": str(cwd)}},
        on_cell_start=on_cell_start,
    )
    try:
        # cleanup_kc: nbclient only shuts down kernels whose manager it created itself;
        # without it every chapter's kernel would outlive its chapter.
        client.execute(cleanup_kc=True, env=_kernel_env())
    except CellExecutionError as exc:
        where = _describe_cell(nb, current["index"])
        value = _ANSI.sub("", str(exc.evalue)).strip()
        message = f"{exc.ename}: {value}" if value else exc.ename
        raise ChapterError(f"{where} raised {message}") from None
    except CellTimeoutError:
        where = _describe_cell(nb, current["index"])
        raise ChapterError(f"{where} timed out after {timeout} s (--timeout)") from None
    except DeadKernelError as exc:
        where = _describe_cell(nb, current["index"])
        raise ChapterError(f"kernel died while running {where}: {exc}") from None
    except Exception as exc:  # kernel start-up failures and the like
        detail = _ANSI.sub("", str(exc)).strip().splitlines()
        raise ChapterError(
            f"could not execute: {type(exc).__name__}: {detail[0] if detail else ''}"
        ) from None


# ----------------------------------------------------------------------------- rendering


def make_exporter(language: str = "en") -> HTMLExporter:
    """Return the nbconvert exporter configured with the book template.

    Parameters
    ----------
    language : str, default "en"
        Value of the pages' ``<html lang>``.

    Returns
    -------
    nbconvert.HTMLExporter
    """
    from nbconvert import HTMLExporter

    return HTMLExporter(
        template_name=TEMPLATE_NAME,
        extra_template_basedirs=[str(TEMPLATES_DIR)],
        theme="light",
        language_code=language,
        mathjax_url=MATHJAX_URL,
        embed_images=True,  # markdown ![](figure.png) would otherwise point outside OUT
    )


def _nav_entry(chapter: dict[str, Any] | None) -> dict[str, Any] | None:
    if chapter is None:
        return None
    return {"number": chapter["number"], "title": chapter["title"], "page": chapter["page"]}


_TAG = re.compile(r"\\tag\{(\d+)\.(\d+)\}")


def equation_anchor(tag: str) -> str:
    """The stable HTML id of equation ``tag`` ("2.4" -> "eq-2-4"): link ``NN-slug.html#eq-2-4``."""
    return "eq-" + tag.replace(".", "-")


def add_equation_anchors(source: str) -> str:
    """Put ``<a id="eq-k-n"></a>`` before every display-math block of a Markdown cell that has
    ``\\tag{k.n}``, so that cited equations have stable URLs in the built book."""
    lines = source.split("\n")
    out: list[str] = []
    block: list[str] | None = None
    for line in lines:
        opens_or_closes = line.count("$$") % 2 == 1
        if block is None:
            if opens_or_closes:
                block = [line]
            else:
                tags = _TAG.findall(line)  # a one-line $$ … \tag{} … $$ block
                out.extend(f'<a id="{equation_anchor(a + "." + b)}"></a>' for a, b in tags if "$$" in line)
                out.append(line)
        else:
            block.append(line)
            if opens_or_closes:
                tags = _TAG.findall("\n".join(block))
                out.extend(f'<a id="{equation_anchor(a + "." + b)}"></a>' for a, b in tags)
                out.extend(block)
                block = None
    if block is not None:
        out.extend(block)
    return "\n".join(out)


def render_chapter(
    nb: NotebookNode,
    book: dict[str, Any],
    chapter: dict[str, Any],
    exporter: HTMLExporter | None = None,
) -> str:
    """Render one chapter to an HTML page with book navigation.

    Parameters
    ----------
    nb : nbformat.NotebookNode
        The (executed) notebook; its metadata title is set on this object.
    book : dict
        The manifest from :func:`load_book` (for the title and prev/next chapters).
    chapter : dict
        The chapter of `book` that `nb` is.
    exporter : nbconvert.HTMLExporter, optional
        Reused across chapters; :func:`make_exporter` by default.

    Returns
    -------
    str
        The page source.
    """
    if exporter is None:
        exporter = make_exporter(book["book"]["language"])
    chapters = book["chapters"]
    position = chapters.index(chapter)
    nb.metadata["title"] = f"{chapter['number']}. {chapter['title']} · {book['book']['title']}"
    for cell in nb.cells:  # stable anchors for the tagged equations (id="eq-k-n")
        if cell.cell_type == "markdown" and "\\tag{" in cell.source:
            cell.source = add_equation_anchors(cell.source)
    resources = {
        "metadata": {"name": chapter["path"].stem, "path": str(chapter["path"].parent)},
        "book": {
            "title": book["book"]["title"],
            "mathjax_url": MATHJAX_URL,
            "index": "index.html",
            "chapter": {**_nav_entry(chapter), "file": chapter["file"]},  # type: ignore[dict-item]
            "prev": _nav_entry(chapters[position - 1] if position > 0 else None),
            "next": _nav_entry(chapters[position + 1] if position + 1 < len(chapters) else None),
        },
    }
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    return body


def _copy_if_changed(src: str, dst: str) -> str:
    """shutil.copytree copy function that skips files already copied by a previous build."""
    try:
        source, target = os.stat(src), os.stat(dst)
    except FileNotFoundError:
        return shutil.copy2(src, dst)
    if source.st_size == target.st_size and int(source.st_mtime) == int(target.st_mtime):
        return dst
    return shutil.copy2(src, dst)


def copy_mathjax(out: Path) -> Path:
    """Copy MathJax 2 into ``out/_static/mathjax`` and write the offline font config.

    Parameters
    ----------
    out : pathlib.Path
        The book's output folder.

    Returns
    -------
    pathlib.Path
        The MathJax folder in `out`.
    """
    import jupyter_server_mathjax

    source = Path(jupyter_server_mathjax.__file__).resolve().parent / "static"
    if not (source / "MathJax.js").is_file():
        raise ChapterError(f"MathJax not found in {source} (reinstall jupyter-server-mathjax)")
    target = out / MATHJAX_DIR
    shutil.copytree(source, target, dirs_exist_ok=True, copy_function=_copy_if_changed)
    config = target / "config" / "local" / "offline.js"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(OFFLINE_CONFIG_JS, encoding="utf-8")
    return target


def write_index(book: dict[str, Any], out: Path) -> Path:
    """Write the contents page ``out/index.html``.

    Parameters
    ----------
    book : dict
        The manifest from :func:`load_book`.
    out : pathlib.Path
        The book's output folder.

    Returns
    -------
    pathlib.Path
        The page written.
    """
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=True,
        keep_trailing_newline=True,
    )
    page = env.get_template("contents.html.j2").render(book=book["book"], chapters=book["chapters"])
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


# ----------------------------------------------------------------------------- building


def build(
    book: dict[str, Any],
    out: Path,
    *,
    execute: bool = True,
    timeout: int | None = 600,
    only: Sequence[str] | None = None,
    log: IO[str] | None = None,
) -> list[Path]:
    """Execute and render the chapters of `book` into `out`.

    Parameters
    ----------
    book : dict
        The manifest from :func:`load_book`.
    out : pathlib.Path
        Output folder, created if needed.
    execute : bool, default True
        Run the chapters; False renders the outputs stored in the notebooks.
    timeout : int or None, default 600
        Seconds allowed per cell; None for no limit.
    only : sequence of str, optional
        Chapter file names to build (the contents page and navigation still cover the
        whole book).
    log : text stream, optional
        Where progress lines go; ``sys.stdout`` by default.

    Returns
    -------
    list of pathlib.Path
        The pages written, the contents page last.

    Raises
    ------
    ChapterError
        When a chapter fails (the message names the chapter file) or a page would load
        something from the network. Pages of earlier chapters are kept.
    """
    import nbformat

    log = sys.stdout if log is None else log
    selected = [c for c in book["chapters"] if only is None or c["file"] in only]
    out.mkdir(parents=True, exist_ok=True)
    copy_mathjax(out)
    exporter = make_exporter(book["book"]["language"])
    written: list[Path] = []
    width = max(len(c["file"]) for c in selected)
    for position, chapter in enumerate(selected, start=1):
        print(
            f"[{position}/{len(selected)}] {chapter['file']:<{width}}  {chapter['title']} ... ",
            end="",
            file=log,
            flush=True,
        )
        start = time.perf_counter()
        try:
            # Read afresh and never write back: the stored notebooks stay as committed.
            nb = nbformat.read(chapter["path"], as_version=4)
            if execute:
                execute_notebook(nb, chapter["path"].parent, timeout=timeout)
            page = out / chapter["page"]
            page.write_text(render_chapter(nb, book, chapter, exporter), encoding="utf-8")
        except ChapterError as exc:
            print(f"FAILED ({time.perf_counter() - start:.1f} s)", file=log, flush=True)
            raise ChapterError(f"{chapter['file']}: {exc}") from None
        except Exception as exc:  # unreadable notebook, template error ...
            print(f"FAILED ({time.perf_counter() - start:.1f} s)", file=log, flush=True)
            raise ChapterError(f"{chapter['file']}: {type(exc).__name__}: {exc}") from None
        print(f"ok ({time.perf_counter() - start:.1f} s)", file=log, flush=True)
        written.append(page)
    written.append(write_index(book, out))
    for page in written:
        urls = find_network_urls(page.read_text(encoding="utf-8"))
        if urls:
            raise ChapterError(f"{page.name} would load from the network: {', '.join(urls)}")
    return written


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m refimpl book",
        description="Execute the chapters listed in book.toml and write the offline HTML book.",
    )
    parser.add_argument(
        "--book",
        metavar="PATH",
        help="the book manifest (default: book.toml here or in the nearest parent folder)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="output folder (default: [build] build-dir of book.toml, relative to it)",
    )
    parser.add_argument(
        "--no-execute",
        action="store_true",
        help="render the outputs stored in the notebooks instead of running them",
    )
    parser.add_argument(
        "--timeout",
        type=int,
        default=600,
        metavar="SECONDS",
        help="time allowed per cell, 0 for no limit (default: 600)",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="FILE",
        help="build only this chapter file (repeatable)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point of ``python -m refimpl book``.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments after ``book``; ``sys.argv[1:]`` by default.

    Returns
    -------
    int
        0 on success, 1 if a chapter failed, 2 on usage or configuration errors.
    """
    try:
        args = _parser().parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # argparse already printed the usage message
        return exc.code if isinstance(exc.code, int) else 2

    def fail(message: str, code: int) -> int:
        print(f"refimpl book: error: {message}", file=sys.stderr, flush=True)
        return code

    started = time.perf_counter()
    try:
        book = load_book(args.book if args.book else find_book())
    except BookConfigError as exc:
        return fail(str(exc), 2)
    if args.only:
        known = {chapter["file"] for chapter in book["chapters"]}
        unknown = [name for name in args.only if name not in known]
        if unknown:
            return fail(f"--only: not a chapter of {book['path']}: {', '.join(unknown)}", 2)
    try:  # the book extras are optional dependencies of refimpl
        import jupyter_server_mathjax  # noqa: F401
        import nbclient  # noqa: F401
        import nbconvert  # noqa: F401
    except ImportError as exc:
        return fail(f"{exc.name} is missing: pip install 'refimpl[book]'", 2)

    out = Path(args.out) if args.out else book["build"]["build-dir"]
    try:
        written = build(
            book,
            out,
            execute=not args.no_execute,
            timeout=args.timeout if args.timeout > 0 else None,
            only=args.only,
        )
    except ChapterError as exc:
        return fail(str(exc), 1)
    chapters = len(written) - 1
    elapsed = time.perf_counter() - started
    print(
        f"Book written to {out / 'index.html'} "
        f"({chapters} chapter{'s' if chapters != 1 else ''}, {elapsed:.1f} s)",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
