"""Offline HTML book builder: ``python -m refimpl book``.

The textbook is the ordered list of Jupyter notebooks declared in ``book.toml``. This module
reads the manifest, executes every chapter in a fresh kernel of the *current* Python
environment (nbclient, two chapters at a time), and renders the book with **Sphinx +
MyST-NB + sphinx-book-theme** (the engine of Jupyter Book 1)::

    OUT/index.html                 title page and table of contents
    OUT/NN-slug.html               one page per chapter, same stem as the notebook
    OUT/api/refimpl.x.html         one API page per module named in book.toml (numpydoc)
    OUT/equations.html             the equation -> function -> test index
    OUT/bibliography.html          references.bib (sphinxcontrib-bibtex)
    OUT/search.html                Sphinx's full-text search (works from file://)
    OUT/_sources/NN-slug.ipynb     the chapter as a notebook (the download button)
    OUT/_static/mathjax/...        MathJax 2 copied from ``jupyter_server_mathjax``

The Sphinx project itself (``conf.py``, the rewritten chapters, the API pages) is generated
from the manifest into ``OUT.sphinx/`` next to the output by :mod:`refimpl._book_sphinx`;
``book.toml`` stays the only table of contents. Nothing on the pages is fetched from the
network: MathJax, fonts, icons and scripts are local, which :func:`find_network_urls` checks
on every page written. The notebook files themselves are never modified.

Manifest format (``book.toml``, read with :mod:`tomllib`)::

    [book]
    title = "..."            # required
    authors = ["..."]        # required, list of strings
    description = "..."      # required
    language = "en"          # required, the pages' ``lang`` attribute
    src = "notebooks"        # optional, folder of the notebooks, relative to book.toml
    bibliography = "references.bib"   # optional, BibTeX file of the bibliography page

    [build]
    build-dir = "_build/book"   # optional, relative to book.toml

    [[chapters]]             # ordered, at least one
    file = "01-linear-sde.ipynb"   # notebook file name inside src; NN- is the chapter number
    title = "The linear Itô SDE"
    modules = ["refimpl.sde"]      # refimpl modules the chapter derives (API pages; may be empty)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import html.parser
import io
import multiprocessing
import os
import re
import shutil
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ._book_sphinx import ReferenceError_, equation_anchor

if TYPE_CHECKING:  # the book extras are imported lazily: load_book() works without them
    from jupyter_client.manager import AsyncKernelManager
    from nbformat import NotebookNode

__all__ = [
    "BookConfigError",
    "ChapterError",
    "build",
    "equation_anchor",
    "find_book",
    "find_network_urls",
    "load_book",
    "main",
]

#: Where MathJax is copied to, relative to the output folder.
MATHJAX_DIR = "_static/mathjax"
#: MathJax 2 entry point relative to ``_static`` (Sphinx's ``mathjax_path``).
#: ``TeX-AMS-MML_HTMLorMML`` is the combined config jupyter_server_mathjax ships; ``local/offline``
#: is ours.
MATHJAX_PATH = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe,local/offline"
#: ``OUT/_static/mathjax/config/local/offline.js``: jupyter_server_mathjax ships only the
#: STIX-Web woff fonts, so select them explicitly; otherwise MathJax probes for TeX
#: fonts, finds none and falls back to image fonts that are not there either.
OFFLINE_CONFIG_JS = (
    'MathJax.Hub.Config({"HTML-CSS": {availableFonts: [], preferredFont: null, '
    'webFont: "STIX-Web", imageFont: null}, SVG: {font: "STIX-Web"}});\n'
    'MathJax.Ajax.loadComplete("[MathJax]/config/local/offline.js");\n'
)
#: Chapters executed at the same time (each in its own kernel); ``--jobs`` overrides it.
DEFAULT_JOBS = 2

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
    bibliography = book.get("bibliography")
    if bibliography is not None:
        if not isinstance(bibliography, str):
            raise BookConfigError(f"{where}: key 'bibliography' must be a str")
        book["bibliography"] = (root / bibliography).resolve()
        if not book["bibliography"].is_file():
            raise BookConfigError(f"{where}: bibliography file not found: {book['bibliography']}")

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




def _execute_file(path: str, timeout: int | None) -> tuple[str | None, str | None, float]:
    """Worker of the process pool: execute one chapter file; ``(notebook JSON, None, seconds)``
    on success, ``(None, message, seconds)`` on failure. Top level, so that it pickles."""
    import nbformat

    start = time.perf_counter()
    try:
        nb = nbformat.read(path, as_version=4)
        execute_notebook(nb, Path(path).parent, timeout=timeout)
    except ChapterError as exc:
        return None, str(exc), time.perf_counter() - start
    except Exception as exc:  # unreadable notebook and the like
        return None, f"{type(exc).__name__}: {exc}", time.perf_counter() - start
    return nbformat.writes(nb), None, time.perf_counter() - start


def _share_cores(jobs: int) -> None:
    """Initializer of the process pool's workers: the environment their kernels inherit caps the BLAS
    threads at the worker's share of the cores (chapters run ``jobs`` at a time)."""
    from refimpl._blocking import share_cores_env

    os.environ.update(share_cores_env(jobs))


def _stored_seconds(path: Path) -> float:
    """How long the chapter took when it was last run, from nbclient's timing metadata
    (used to start the longest chapters first); 0 when the notebook has none."""
    import json

    total = 0.0
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        for cell in cells:
            timing = cell.get("metadata", {}).get("execution", {})
            start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
            if start and end:
                parse = datetime.datetime.fromisoformat
                total += (parse(end.replace("Z", "+00:00")) - parse(start.replace("Z", "+00:00"))).total_seconds()
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0
    return total


def execute_chapters(
    chapters: Sequence[dict[str, Any]],
    *,
    timeout: int | None = 600,
    jobs: int = DEFAULT_JOBS,
    log: IO[str],
    meanwhile: Callable[[], None] | None = None,
) -> dict[str, NotebookNode]:
    """Execute the chapters, `jobs` at a time, each in a fresh kernel of this Python.

    Parameters
    ----------
    chapters : sequence of dict
        Chapter entries of :func:`load_book`.
    timeout : int or None, default 600
        Seconds allowed per cell; None for no limit.
    jobs : int, default 2
        Chapters run at the same time (worker processes).
    log : text stream
        One progress line per chapter as it finishes: ``[k/N] file  title ... ok (12.3 s)``.
    meanwhile : callable, optional
        Work for this (otherwise idle) process while the workers run the chapters.

    Returns
    -------
    dict
        ``{chapter file: executed NotebookNode}``.

    Raises
    ------
    ChapterError
        After every chapter has run, if any failed: one line per failed chapter naming the
        notebook, the cell and the exception.
    """
    import nbformat

    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    width = max(len(c["file"]) for c in chapters)
    # Longest first: with two workers the build ends when the last long chapter does.
    order = sorted(chapters, key=lambda c: -_stored_seconds(c["path"]))
    executed: dict[str, NotebookNode] = {}
    failures: list[str] = []
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
    # each worker's kernels get their share of the cores' BLAS threads (refimpl._blocking.share_cores_env)
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_share_cores,
                                                initargs=(jobs,)) as pool:
        futures = {pool.submit(_execute_file, str(c["path"]), timeout): c for c in order}
        if meanwhile is not None:
            meanwhile()
        for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
            chapter = futures[future]
            try:
                text, error, seconds = future.result()
            except Exception as exc:  # the worker process itself died
                text, error, seconds = None, f"{type(exc).__name__}: {exc}", 0.0
            status = f"ok ({seconds:.1f} s)" if error is None else f"FAILED ({seconds:.1f} s)"
            print(
                f"[{done}/{len(chapters)}] {chapter['file']:<{width}}  {chapter['title']} ... {status}",
                file=log,
                flush=True,
            )
            if error is None:
                executed[chapter["file"]] = nbformat.reads(text, as_version=4)
            else:
                failures.append(f"{chapter['file']}: {error}")
    if failures:
        raise ChapterError("\n".join(failures))
    return executed


# ----------------------------------------------------------------------------- rendering


def _copy_if_changed(src: str, dst: str) -> str:
    """shutil.copytree copy function that skips files already copied by a previous build."""
    try:
        source, target = os.stat(src), os.stat(dst)
    except FileNotFoundError:
        return shutil.copy2(src, dst)
    if source.st_size == target.st_size and int(source.st_mtime) == int(target.st_mtime):
        return dst
    return shutil.copy2(src, dst)


def _mathjax_source() -> Path:
    """MathJax's folder in the jupyter_server_mathjax package, found without importing it
    (importing it imports jupyter_server: seconds for a folder name)."""
    import importlib.util

    spec = importlib.util.find_spec("jupyter_server_mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise ChapterError("jupyter-server-mathjax is missing: pip install 'refimpl[book]'")
    return Path(next(iter(spec.submodule_search_locations))).resolve() / "static"


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
    source = _mathjax_source()
    if not (source / "MathJax.js").is_file():
        raise ChapterError(f"MathJax not found in {source} (reinstall jupyter-server-mathjax)")
    target = out / MATHJAX_DIR
    shutil.copytree(source, target, dirs_exist_ok=True, copy_function=_copy_if_changed)
    config = target / "config" / "local" / "offline.js"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(OFFLINE_CONFIG_JS, encoding="utf-8")
    return target


def sphinx_settings(book: dict[str, Any], built: datetime.datetime) -> dict[str, Any]:
    """The ``conf.py`` of the book (everything but the per-chapter values)."""
    from . import __version__

    meta = book["book"]
    authors = ", ".join(meta["authors"])
    stamp = built.strftime("%Y-%m-%d %H:%M UTC")
    return {
        "project": meta["title"],
        "author": authors,
        "copyright": f"{built.year}, {authors}",
        "version": __version__,
        "release": __version__,
        "language": meta["language"],
        # refimpl._book_sphinx before sphinxcontrib.bibtex: it registers the citation style
        "extensions": ["myst_nb", "sphinx.ext.autodoc", "numpydoc", "refimpl._book_sphinx", "sphinxcontrib.bibtex"],
        "root_doc": "index",
        "exclude_patterns": ["**.ipynb_checkpoints"],
        "nb_execution_mode": "off",  # refimpl._book executes the chapters itself, in parallel
        "nb_merge_streams": True,
        "myst_enable_extensions": ["dollarmath", "amsmath"],
        "myst_dmath_double_inline": True,
        "mathjax_path": MATHJAX_PATH,
        "mathjax2_config": {
            "tex2jax": {
                "inlineMath": [["\\(", "\\)"]],
                "displayMath": [["\\[", "\\]"]],
                "processRefs": False,
                "processEnvironments": True,
                "processClass": "tex2jax_process|mathjax_process|math|output_area",
                "ignoreClass": "tex2jax_ignore|mathjax_ignore|bd-main",
            },
            "TeX": {"equationNumbers": {"autoNumber": "none"}},
            # the STIX-Web woff fonts are the ones jupyter_server_mathjax ships: no font probing
            # linebreaks: a display wider than the text column breaks at an operator where MathJax can break it
            # (the rest scrolls, refimpl._book_sphinx.BOOK_CSS) instead of losing its end and its tag
            "HTML-CSS": {"availableFonts": [], "preferredFont": None, "webFont": "STIX-Web", "imageFont": None,
                         "linebreaks": {"automatic": True}},
            "SVG": {"font": "STIX-Web", "linebreaks": {"automatic": True}},
            "showMathMenu": False,
            "messageStyle": "none",
        },
        "html_theme": "sphinx_book_theme",
        "html_title": meta["title"],
        "html_theme_options": {
            "use_download_button": True,
            "use_fullscreen_button": False,
            "use_repository_button": False,
            "home_page_in_toc": True,
            "show_toc_level": 2,
            "navigation_with_keys": False,
            "navbar_persistent": [],  # no search field in the (hidden) top navbar either
            "extra_footer": f"<p>refimpl {__version__} · built {stamp}</p>",
        },
        # One search entry point: the theme puts a search field in the sidebar AND a search button
        # in every page header (both open the same dialog); keep the header's, which is also there
        # when the sidebar is collapsed on narrow screens.
        "html_sidebars": {"**": ["navbar-logo.html", "icon-links.html", "sbt-sidebar-nav.html"]},
        "html_sourcelink_suffix": "",  # the download button serves the chapter's .ipynb
        "html_last_updated_fmt": "%Y-%m-%d",
        "html_copy_source": True,
        "numfig": True,
        "numfig_format": {"figure": "Figure %s", "table": "Table %s", "code-block": "Listing %s", "section": "§%s"},
        "bibtex_reference_style": "refimpl_author_year",
        "bibtex_default_style": "plain",
        "numpydoc_show_class_members": False,
        "numpydoc_xref_param_type": False,
        "autodoc_member_order": "bysource",
        "suppress_warnings": ["myst.header", "mystnb.unknown_mime_type", "config.cache", "ref.citation"],
    }


#: Sphinx warnings that mean a broken book: a reference, an image or an API page is missing.
_FATAL_WARNINGS = re.compile(
    r"undefined label|unknown document|could not find bibtex key|image file not readable|"
    r"duplicate label|failed to import|reference target not found|toctree contains reference",
    re.IGNORECASE,
)


def render_book(
    book: dict[str, Any],
    notebooks: dict[str, NotebookNode],
    out: Path,
    *,
    jobs: int,
    log: IO[str],
    index_rows: list[Any] | None = None,
) -> None:
    """Write the Sphinx project for `notebooks` and build the HTML book into `out`.

    Raises
    ------
    ChapterError
        On a broken reference (naming notebook, cell and reference), a duplicate equation tag,
        a Sphinx error, or a Sphinx warning about a missing label, document, citation, image or
        module.
    """
    from sphinx.application import Sphinx

    from ._book_sphinx import write_sources

    scratch = out.parent / f"{out.name}.sphinx"
    src, doctrees = scratch / "src", scratch / "doctrees"
    built = datetime.datetime.now(datetime.timezone.utc)
    try:
        write_sources(
            book,
            notebooks,
            src,
            static=sphinx_settings(book, built),
            log=lambda line: print(f"warning: {line}", file=log, flush=True),
            index_rows=index_rows,
        )
    except ReferenceError_ as exc:
        raise ChapterError(str(exc)) from None
    status, warnings = io.StringIO(), io.StringIO()
    try:
        app = Sphinx(
            str(src), str(src), str(out), str(doctrees), "html",
            status=status, warning=warnings, freshenv=False, parallel=jobs, keep_going=True,
        )  # fmt: skip
        app.build()
    except ReferenceError_ as exc:
        raise ChapterError(str(exc)) from None
    except Exception as exc:
        detail = warnings.getvalue().strip()
        raise ChapterError(f"Sphinx failed: {type(exc).__name__}: {exc}\n{detail}") from None
    lines = [_ANSI.sub("", line) for line in warnings.getvalue().splitlines() if line.strip()]
    lines = [line.replace(str(src) + os.sep, "") for line in lines]
    fatal = [line for line in lines if _FATAL_WARNINGS.search(line)]
    # reStructuredText slips in the modules' docstrings are counted, not listed one by one
    docstrings = [line for line in lines if ":docstring of " in line and line not in fatal]
    for line in lines:
        if line not in fatal and line not in docstrings and not line.startswith(("-----", "=====")):
            print(f"warning: {line}", file=log, flush=True)
    if docstrings:
        print(
            f"warning: {len(docstrings)} reStructuredText warnings in docstrings on the API pages "
            f"(see {scratch / 'warnings.txt'})",
            file=log,
            flush=True,
        )
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "warnings.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if fatal:
        raise ChapterError("broken references in the book:\n" + "\n".join(fatal))
    copy_mathjax(out)
    # The download button serves _sources/NN-slug.ipynb: the chapter as written (with the
    # outputs of this build), not the rewritten copy Sphinx read.
    import nbformat

    for chapter in book["chapters"]:
        target = out / "_sources" / chapter["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(nbformat.writes(notebooks[chapter["file"]]), encoding="utf-8")


_CSS_FILE_URL = re.compile(r"""url\(\s*['"]?\s*((?:https?:)?//[^'")\s]+)""", re.IGNORECASE)


def offline_problems(out: Path) -> list[str]:
    """``page: url`` for every network URL a page or stylesheet of the book would load."""
    problems = []
    for page in sorted(out.rglob("*.html")):
        if MATHJAX_DIR in page.relative_to(out).as_posix():
            continue
        problems += [f"{page.relative_to(out)}: {url}" for url in find_network_urls(page.read_text(encoding="utf-8"))]
    for sheet in sorted(out.rglob("*.css")):
        text = sheet.read_text(encoding="utf-8", errors="replace")
        problems += [f"{sheet.relative_to(out)}: {m.group(1)}" for m in _CSS_FILE_URL.finditer(text)]
    return problems


# ----------------------------------------------------------------------------- building


def build(
    book: dict[str, Any],
    out: Path,
    *,
    execute: bool = True,
    timeout: int | None = 600,
    jobs: int = DEFAULT_JOBS,
    log: IO[str] | None = None,
) -> list[Path]:
    """Execute the chapters of `book` and render the HTML book into `out`.

    Parameters
    ----------
    book : dict
        The manifest from :func:`load_book`.
    out : pathlib.Path
        Output folder, created if needed. The Sphinx project goes to ``OUT.sphinx`` beside it.
    execute : bool, default True
        Run the chapters; False renders the outputs stored in the notebooks.
    timeout : int or None, default 600
        Seconds allowed per cell; None for no limit.
    jobs : int, default 2
        Chapters executed at the same time, and Sphinx's parallel readers.
    log : text stream, optional
        Where progress lines go; ``sys.stdout`` by default.

    Returns
    -------
    list of pathlib.Path
        The chapter pages written, in book order, then the contents page.

    Raises
    ------
    ChapterError
        When a chapter fails (naming the notebook, the cell and the exception), a reference is
        broken, or a page would load something from the network.
    """
    import nbformat

    log = sys.stdout if log is None else log
    chapters = book["chapters"]
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    prepared: dict[str, Any] = {}
    if execute:
        from ._book_sphinx import equation_rows

        def meanwhile() -> None:  # the equation index reads the sources and the tests: seconds
            try:
                prepared["index_rows"] = equation_rows(book)
            except Exception:  # computed again, and reported, when the sources are written
                pass

        notebooks = execute_chapters(chapters, timeout=timeout, jobs=jobs, log=log, meanwhile=meanwhile)
    else:
        notebooks = {}
        width = max(len(c["file"]) for c in chapters)
        for position, chapter in enumerate(chapters, start=1):
            try:
                notebooks[chapter["file"]] = nbformat.read(chapter["path"], as_version=4)
            except Exception as exc:
                raise ChapterError(f"{chapter['file']}: {type(exc).__name__}: {exc}") from None
            print(
                f"[{position}/{len(chapters)}] {chapter['file']:<{width}}  {chapter['title']} ... stored outputs",
                file=log,
                flush=True,
            )
    start = time.perf_counter()
    print(f"Rendering {len(chapters)} chapters with Sphinx ...", file=log, flush=True)
    try:
        render_book(book, notebooks, out, jobs=jobs, log=log, index_rows=prepared.get("index_rows"))
    except ChapterError:
        print(f"Sphinx ... FAILED ({time.perf_counter() - start:.1f} s)", file=log, flush=True)
        raise
    print(f"Sphinx ... ok ({time.perf_counter() - start:.1f} s)", file=log, flush=True)
    problems = offline_problems(out)
    if problems:
        raise ChapterError("the book would load from the network: " + "; ".join(problems))
    return [out / f"{Path(c['file']).stem}.html" for c in chapters] + [out / "index.html"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m refimpl book",
        description="Execute the chapters listed in book.toml and write the offline HTML book "
        "(Sphinx + MyST-NB + sphinx-book-theme).",
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
        "--jobs",
        type=int,
        default=DEFAULT_JOBS,
        metavar="N",
        help=f"chapters executed at the same time (default: {DEFAULT_JOBS})",
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
        0 on success, 1 if a chapter failed or a reference is broken, 2 on usage or
        configuration errors.
    """
    try:
        args = _parser().parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # argparse already printed the usage message
        return exc.code if isinstance(exc.code, int) else 2

    def fail(message: str, code: int) -> int:
        print(f"refimpl book: error: {message}", file=sys.stderr, flush=True)
        return code

    if args.jobs < 1:
        return fail(f"--jobs must be at least 1, got {args.jobs}", 2)
    started = time.perf_counter()
    try:
        book = load_book(args.book if args.book else find_book())
    except BookConfigError as exc:
        return fail(str(exc), 2)
    try:  # the book extras are optional dependencies of refimpl
        import myst_nb  # noqa: F401
        import nbclient  # noqa: F401
        import sphinx  # noqa: F401
        import sphinx_book_theme  # noqa: F401
    except ImportError as exc:
        return fail(f"{exc.name} is missing: pip install 'refimpl[book]'", 2)
    try:
        _mathjax_source()
    except ChapterError as exc:
        return fail(str(exc), 2)

    out = Path(args.out) if args.out else book["build"]["build-dir"]
    try:
        written = build(
            book,
            out,
            execute=not args.no_execute,
            timeout=args.timeout if args.timeout > 0 else None,
            jobs=args.jobs,
        )
    except ChapterError as exc:
        return fail(str(exc), 1)
    chapters = len(written) - 1
    elapsed = time.perf_counter() - started
    print(
        f"Book written to {Path(out).resolve() / 'index.html'} "
        f"({chapters} chapter{'s' if chapters != 1 else ''}, {elapsed:.1f} s)",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
