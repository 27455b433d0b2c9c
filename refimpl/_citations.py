r"""The citation index of the book: which public function implements which tagged equation.

Book tooling (chapter 15's appendix and ``tests/test_citations.py``): it reads docstrings, the
chapters' ``\\tag{k.n}`` and the test files, and imports nothing of the mathematics except to
list each public module's ``__all__``. :mod:`refimpl.oracle` re-exports both functions.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from pathlib import Path

__all__ = ["cited_tags", "citation_index"]

_EQ_HEAD = re.compile(r"\bEqs?\.\s*(?=\()")
_EQ_NUM = re.compile(r"\((\d+)\.(\d+)\)")
_EQ_SEP = re.compile(r"\s*(–|—|-|to|,\s*and|,|and|/)\s*(?=\()")


def cited_tags(text: str) -> list:
    """The book's equation tags cited in ``text``, in order, without repeats.

    A citation is ``Eq. (k.n)``, or a list after ``Eqs.``: ``Eqs. (k.n) and (k.m)``,
    ``Eqs. (k.n), (k.m)``, ``Eqs. (k.n)/(k.m)``, and ranges ``Eqs. (k.n)–(k.m)`` (en dash, em dash,
    hyphen or "to"; both ends in chapter k), which cite every tag in between. Paper equation
    numbers (``Eq. 6``, ``Eq. 30``) have no parenthesized ``k.n`` and are not book tags.

    Examples
    --------
    >>> text = "Implements Eqs. " + "(2.4)–(2.6) and Eq. " + "(7.1) of the book (paper Eq. 6)."
    >>> cited_tags(text)  # (the text is split only so that this docstring cites nothing itself)
    ['2.4', '2.5', '2.6', '7.1']
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    tags = []
    for head in _EQ_HEAD.finditer(text or ""):
        pos, prev, dash = head.end(), None, False
        while True:
            m = _EQ_NUM.match(text, pos)
            if not m:
                break
            k, n = int(m.group(1)), int(m.group(2))
            if dash and prev is not None and prev[0] == k and prev[1] < n:
                tags += [f"{k}.{i}" for i in range(prev[1] + 1, n)]
            tags.append(f"{k}.{n}")
            prev, pos = (k, n), m.end()
            sep = _EQ_SEP.match(text, pos)
            if not sep:
                break
            dash, pos = sep.group(1) in ("–", "—", "-", "to"), sep.end()
    seen = set()
    return [t for t in tags if not (t in seen or seen.add(t))]


def _tag_key(tag: str) -> tuple:
    return tuple(int(x) for x in tag.split("."))


def citation_index(root=None) -> dict:
    r"""The index equation → function(s) → test file(s) of the book's appendix.

    Parameters
    ----------
    root : str or Path, optional
        The repository (with ``refimpl/``, ``notebooks/``, ``tests/``); default: the checkout
        that holds this package (an editable install).

    Returns
    -------
    dict with
        ``functions``  ``{"module.name": [tags cited by its docstring]}`` for every callable
                       in ``__all__`` of every public module (classes included);
        ``loop_twins``  the subset of ``functions`` that are loop twins ``f_loop`` of an ``f``;
        ``tags``       ``{tag: notebook file}`` for every ``\tag{k.n}`` in the chapters;
        ``tests``      ``{"module.name": [test files that use it]}``;
        ``rows``       ``[(tag, notebook, [functions], [test files])]`` sorted by tag.

    Examples
    --------
    >>> index = citation_index()
    >>> sorted(index)
    ['functions', 'loop_twins', 'rows', 'tags', 'tests']
    >>> 'lyapunov.phi1' in index['functions']  # its tags: the ones its docstring cites
    True
    """
    if root is not None and not isinstance(root, (str, Path)) and not hasattr(root, "__fspath__"):
        raise TypeError(f"root: expected a path (str or os.PathLike) or None, got {type(root).__name__}")
    root = Path(root) if root is not None else Path(__file__).resolve().parent.parent
    nb_dir, test_dir = root / "notebooks", root / "tests"
    if not nb_dir.is_dir():
        raise ValueError(f"root: no notebooks/ in {root} (the index needs the repository, not an installed wheel)")
    tags = {}
    for nb in sorted(nb_dir.glob("[0-9][0-9]-*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        for cell in cells:
            if cell["cell_type"] != "markdown":
                continue
            for tag in re.findall(r"\\tag\{(\d+\.\d+)\}", "".join(cell["source"])):
                tags.setdefault(tag, nb.name)
    functions, twins = {}, []
    for path in sorted((root / "refimpl").glob("*.py")):
        if path.stem.startswith("_"):
            continue
        mod = importlib.import_module(f"refimpl.{path.stem}")
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if not callable(obj):
                continue
            functions[f"{path.stem}.{name}"] = cited_tags(inspect.getdoc(obj) or "")
            if name.endswith("_loop") and name[: -len("_loop")] in mod.__all__:
                twins.append(f"{path.stem}.{name}")
    # Each test file's words (maximal runs of word characters): a name occurs as a whole word (\b…\b) exactly
    # when it is one of them. One pass per file instead of a regular-expression search per function and file.
    files = sorted(test_dir.glob("test_*.py")) if test_dir.is_dir() else []
    words = {p.name: set(re.findall(r"\w+", p.read_text(encoding="utf-8"))) for p in files}
    tests = {}
    for qual in functions:
        module, name = qual.split(".", 1)
        own = f"test_{module}.py"
        users = [f for f, ws in words.items() if name in ws and (f == own or module in ws)]
        tests[qual] = sorted(users, key=lambda f: (f != own, f))
    rows = []
    for tag in sorted(tags, key=_tag_key):
        funcs = [q for q, cited in functions.items() if tag in cited]
        files = sorted({f for q in funcs for f in tests[q]})
        rows.append((tag, tags[tag], funcs, files))
    return {"functions": functions, "loop_twins": twins, "tags": tags, "tests": tests, "rows": rows}


