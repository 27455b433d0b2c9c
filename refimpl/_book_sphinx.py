"""Sphinx side of ``python -m refimpl book``: the generated sources and a Sphinx extension.

:mod:`refimpl._book` reads ``book.toml``, executes the chapters and calls :func:`write_sources`,
which writes a complete Sphinx project (``conf.py``, ``index.md``, the chapters as notebooks,
API pages, the equation index and the bibliography) into a scratch folder; Sphinx with
MyST-NB and sphinx-book-theme then renders it. Nothing here is a second table of contents:
every generated file is derived from ``book.toml``, the notebooks, the docstrings and
``references.bib``.

What the generated copy of a chapter adds to the notebook (the notebook files themselves are
never written):

* the chapter number in the title (``# 2. The differential Lyapunov equation ...``);
* links for the references in the prose: ``Eq. (k.n)`` / ``Eqs. (k.n)–(k.m)`` to the equation,
  ``chapter k`` to the chapter, ``§k.m`` to the section, ``Figure k.n`` to the figure,
  `` `refimpl.x` `` to the module's API page and author–year citations (``Gu & Dao 2024``,
  ``Vaswani et al. (2017, §3.5)``, ``Yang et al. 2024a``, ``Jackson's (2000)``) to their entry of
  the bibliography (matched by :func:`match_citation`); a reference to an equation, section or
  figure of this book that does not exist, and a citation that fits more than one entry of the
  bibliography, stop the build (:class:`ReferenceError_`);
* the ``hide-input`` tag on the first code cell when it only imports and sets up.

This module is also the Sphinx extension (:func:`setup`) loaded by the generated ``conf.py``:
it gives every ``\\tag{k.n}`` equation the HTML id and Sphinx label ``eq-k-n``, every
``k.m`` section the label ``sec-k-m``, numbers figures ``Figure k.n`` by chapter, and links
the ``Eq. (k.n)`` citations in docstrings on the API pages.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ReferenceError_", "setup", "write_sources"]

#: Cell metadata that makes MyST-NB render an output image as a numbered figure.
FIGURE_KEY = "mystnb"
_TAG = re.compile(r"\\tag\{(\d+)\.(\d+)\}")
_SECTION = re.compile(r"^(#{2,6})\s+(\d+)\.(\d+)\s", re.M)


class ReferenceError_(ValueError):
    """A chapter cites an equation, section or figure of the book that does not exist, defines an
    equation tag twice, or writes an author–year citation that fits more than one entry of the
    bibliography. The message names the notebook, the cell and the reference."""


def equation_anchor(tag: str) -> str:
    """The stable HTML id of equation ``tag`` ("2.4" -> "eq-2-4"): link ``NN-slug.html#eq-2-4``."""
    return "eq-" + tag.replace(".", "-")


# --------------------------------------------------------------------------- the book's targets


@dataclass(frozen=True)
class BibWork:
    """One entry of the bibliography as the prose cites it.

    ``surnames`` are all its authors' surnames in order, folded by :func:`_fold` (``"van loan"``,
    ``"garcia-fernandez"``); ``year`` is the four digits of its ``year`` field and ``suffix`` the
    letter that may follow them (``year = {2024a}``): the author–year convention for two works that
    would otherwise be cited alike, "Yang et al. 2024a" and "Yang et al. 2024b".
    """

    key: str
    surnames: tuple[str, ...]
    year: str
    suffix: str = ""

    def citation_form(self) -> tuple[str, ...]:
        """What an author–year citation of this entry says: first surname, year and suffix, and the
        second surname for two authors or ``"et al."`` for three or more. Two entries with the same
        form cannot be told apart by a citation (the bibliography then needs year suffixes)."""
        rest = () if len(self.surnames) == 1 else self.surnames[1:2] if len(self.surnames) == 2 else ("et al.",)
        return (self.surnames[0], self.year + self.suffix, *rest)


def match_citation(
    works: list[BibWork], surnames: list[str], et_al: bool, year: str, suffix: str = ""
) -> list[BibWork]:
    """The entries an author–year citation fits.

    A citation fits an entry when its first surname and year are the entry's, its year suffix is the
    entry's (a citation without a suffix fits the entry whatever its suffix, so that "2024" against
    a bibliography of "2024a" and "2024b" is seen to be ambiguous), and its authors are written as
    the entry's: one surname for one author ("Dao 2024"), both for two ("Dao & Gu 2024"), "et al."
    for three or more, or every surname in order ("Ali, Zimerman & Wolf 2024"). Surnames compare by
    :func:`_fold` (case and accents do not matter).

    Examples
    --------
    >>> works = [BibWork("dao2024", ("dao", "gu"), "2024"), BibWork("dao2024fa2", ("dao",), "2024")]
    >>> [w.key for w in match_citation(works, ["dao"], False, "2024")]
    ['dao2024fa2']
    >>> [w.key for w in match_citation(works, ["dao", "gu"], False, "2024")]
    ['dao2024']
    >>> match_citation(works, ["dao"], True, "2024")
    []
    """
    found = []
    for work in works:
        if work.surnames[0] != surnames[0] or work.year != year or (suffix and work.suffix != suffix):
            continue
        if (len(work.surnames) >= 3) if et_al else (work.surnames == tuple(surnames)):
            found.append(work)
    return found


@dataclass
class Targets:
    """Everything a chapter may link to, collected from all chapters before any is rewritten."""

    chapters: dict[int, str] = field(default_factory=dict)  # number -> docname
    equations: dict[str, str] = field(default_factory=dict)  # "2.4" -> docname
    sections: dict[str, str] = field(default_factory=dict)  # "2.3" -> docname
    figures: dict[str, tuple[str, str]] = field(default_factory=dict)  # "2.1" -> (docname, name)
    modules: dict[str, str] = field(default_factory=dict)  # "refimpl.x" -> docname of its page
    objects: set[str] = field(default_factory=set)  # "refimpl.x.f" documented on the API pages
    citations: list[BibWork] = field(default_factory=list)  # the entries of the bibliography
    warnings: list[str] = field(default_factory=list)


def cell_label(file: str, nb: Any, index: int) -> str:
    """``03-kalman.ipynb cell 7 (markdown)``: the 1-based position among all cells."""
    return f"{file} cell {index + 1} ({nb.cells[index].cell_type})"


def _is_figure_output(output: Any) -> bool:
    data = output.get("data", {}) if output.get("output_type") in {"display_data", "execute_result"} else {}
    return any(mime.startswith("image/") for mime in data)


def collect_targets(chapters: list[dict[str, Any]], notebooks: dict[str, Any]) -> Targets:
    """Collect the equation tags, numbered sections and captioned figures of every chapter.

    Raises
    ------
    ReferenceError_
        If an equation tag is defined twice (in one chapter or two).
    """
    targets = Targets()
    for chapter in chapters:
        doc, number, nb = chapter["docname"], chapter["number"], notebooks[chapter["file"]]
        targets.chapters[number] = doc
        figure = 0
        for index, cell in enumerate(nb.cells):
            where = cell_label(chapter["file"], nb, index)
            if cell.cell_type == "markdown":
                for a, b in _TAG.findall(cell.source):
                    tag = f"{int(a)}.{int(b)}"
                    if tag in targets.equations:
                        raise ReferenceError_(
                            f"{where}: equation tag \\tag{{{tag}}} is already defined in "
                            f"{targets.equations[tag]}.ipynb (tags must be unique in the book)"
                        )
                    targets.equations[tag] = doc
                for _, a, b in _SECTION.findall(cell.source):
                    targets.sections.setdefault(f"{int(a)}.{int(b)}", doc)
            elif cell.cell_type == "code":
                meta = cell.metadata.get(FIGURE_KEY, {})
                has_image = any(_is_figure_output(out) for out in cell.get("outputs", []))
                caption = meta.get("figure", {}).get("caption") if isinstance(meta, dict) else None
                if caption:
                    figure += 1
                    name = meta["figure"].get("name") or f"fig-{number:02d}-{figure}"
                    targets.figures[f"{number}.{figure}"] = (doc, name)
                    if name != f"fig-{number:02d}-{figure}":
                        targets.warnings.append(
                            f"{where}: figure {name} is Figure {number}.{figure} (figures are numbered in "
                            f"order); its name would normally be fig-{number:02d}-{figure}"
                        )
                    if not has_image:
                        targets.warnings.append(f"{where}: figure {name} has a caption but no image output")
                    if not meta.get("image", {}).get("alt"):
                        targets.warnings.append(f"{where}: figure {name} has no alt text (mystnb.image.alt)")
                elif has_image:
                    targets.warnings.append(
                        f"{where}: draws a figure without a caption (cell metadata "
                        "mystnb.figure.caption); it is shown unnumbered"
                    )
    return targets


# ------------------------------------------------------------------------- the prose transform

# Spans of Markdown that are not prose: code, math, links, raw HTML, MyST roles, headings.
_PROTECTED = re.compile(
    r"""
    (?P<fence>^[ \t]*(?P<f>```+|~~~+).*?^[ \t]*(?P=f)[ \t]*$)
  | (?P<role>\{[\w:.-]+\}`[^`]*`)
  | (?P<code>(?P<ticks>`+)(?P<codebody>.+?)(?P=ticks))
  | (?P<dmath>\$\$.+?\$\$)
  | (?P<imath>(?<![\\$])\$(?!\s)(?:\\.|[^$\\])+?(?<![\s\\])\$)
  | (?P<link>!?\[(?:[^\]\\]|\\.)*\]\([^)]*\))
  | (?P<html><(?:[A-Za-z/!][^>\n]*)>)
  | (?P<heading>^\#{1,6}[ \t][^\n]*$)
    """,
    re.M | re.S | re.X,
)
_EQ_HEAD = re.compile(r"\b(Eqs?\.|Equations?)\s*(?=\(\d+\.\d+\))")
_EQ_NUM = re.compile(r"\((\d+)\.(\d+)\)")
_EQ_SEP = re.compile(r"\s*(?:–|—|-|to|,\s*and|,|and|/)\s*(?=\(\d+\.\d+\))")
_BARE_EQ = re.compile(r"(?<![\w.])\((\d+)\.(\d+)\)")
_CHAPTER = re.compile(r"\b([Cc]hapters?)(\s+)(\d+)\b((?:\s*(?:,|and|–|—|-|or)\s*\d+\b(?!\.\d))*)")
_SECTION_REF = re.compile(r"§\s?(\d+)\.(\d+)(?!\.\d|\d)")
_FIGURE_REF = re.compile(r"\b(Figures?|Figs?\.)(\s+)(\d+)\.(\d+)\b(?!\.\d)")
#: a surname as the prose writes it: capitalized, perhaps hyphenated or with an apostrophe (Lee-Thorp,
#: García-Fernández, O'Brien), after particles (Van Loan, van der Vaart); a possessive 's is not part of it
_NAME = r"(?:(?:[Vv]an|[Vv]on|[Dd]e[nr]?|[Dd]i|[Dd]u|[Ll][ae])\s+)*[A-ZÀ-Þ](?:[\w\-]|['’](?!s\b))*[^\W\d_]"
#: "Kalman 1960", "Gu & Dao 2024", "Ali, Zimerman & Wolf 2024", "Yang et al. 2024a",
#: "Vaswani et al. (2017, §3.5)", "Jackson's (2000)": names, then the year (and a suffix a-z)
_CITATION = re.compile(
    rf"(?<![\w'’\-])(?P<names>(?P<first>{_NAME})(?P<more>\s+et\s+al\.|(?:,\s+{_NAME})*,?\s+(?:&|and)\s+{_NAME})?)"
    r"(?:(?P<poss>['’]s)?\s+\((?P<tyear>\d{4})(?P<tsuffix>[a-z]?)(?:,\s*(?P<post>[^()]*?))?\)"
    r"|\s+(?P<year>\d{4})(?P<suffix>[a-z]?)\b)"
)
_JOINER = re.compile(r",?\s+(?:&|and)\s+|,\s+")


def citation_surnames(names: str) -> tuple[list[str], bool]:
    """The folded surnames of a citation's names and whether it ends in "et al.".

    >>> citation_surnames("Dong, Cordonnier and Loukas")
    (['dong', 'cordonnier', 'loukas'], False)
    >>> citation_surnames("Särkkä & García-Fernández"), citation_surnames("Van  Loan")
    ((['sarkka', 'garcia-fernandez'], False), (['van loan'], False))
    >>> citation_surnames("Yang et al.")
    (['yang'], True)
    """
    et_al = re.search(r"\s+et\s+al\.$", names)
    if et_al:
        names = names[: et_al.start()]
    return [_fold(" ".join(part.split())) for part in _JOINER.split(names)], bool(et_al)


def _role(role: str, text: str, target: str) -> str:
    return f"{{{role}}}`{text} <{target}>`"


class ProseLinker:
    """Rewrite one chapter's Markdown so that its references are MyST cross-references."""

    def __init__(self, targets: Targets, chapter: dict[str, Any], file: str) -> None:
        self.t = targets
        self.number = chapter["number"]
        self.file = file
        self.where = file
        self.links = 0

    # Each rule gets a piece of prose (no code, no math, no links) and returns it rewritten.
    def _equations(self, text: str) -> str:
        out, pos = [], 0
        for head in _EQ_HEAD.finditer(text):
            if head.start() < pos:
                continue
            items, cursor = [], head.end()
            while True:
                m = _EQ_NUM.match(text, cursor)
                if not m:
                    break
                items.append(m)
                sep = _EQ_SEP.match(text, m.end())
                if not sep:
                    cursor = m.end()
                    break
                cursor = sep.end()
            tags = [f"{int(m.group(1))}.{int(m.group(2))}" for m in items]
            known = [tag in self.t.equations for tag in tags]
            for tag, ok in zip(tags, known):
                if not ok and int(tag.split(".")[0]) in self.t.chapters:
                    raise ReferenceError_(
                        f"{self.where}: {head.group(1)} ({tag}) cites an equation that no chapter "
                        f"defines (no \\tag{{{tag}}})"
                    )
            if not all(known):
                continue  # a paper's equation numbering, not this book's
            out.append(text[pos : head.start()])
            if len(items) == 1:
                whole = text[head.start() : items[0].end()]
                out.append(_role("ref", whole, equation_anchor(tags[0])))
            else:
                out.append(text[head.start() : items[0].start()])
                last = items[0].start()
                for m, tag in zip(items, tags):
                    out.append(text[last : m.start()])
                    out.append(_role("ref", m.group(0), equation_anchor(tag)))
                    last = m.end()
            self.links += len(items)
            pos = items[-1].end()
        out.append(text[pos:])
        return "".join(out)

    def _bare_equations(self, text: str) -> str:
        """``(k.n)`` alone, as in "solve (6.3)" or a table's "(1.1)–(1.2)": linked when the book
        has that tag (a parenthesized decimal that is not a tag stays as written)."""

        def repl(m: re.Match[str]) -> str:
            tag = f"{int(m.group(1))}.{int(m.group(2))}"
            if tag not in self.t.equations:
                return m.group(0)
            self.links += 1
            return _role("ref", m.group(0), equation_anchor(tag))

        parts = re.split(r"(\{[\w:.-]+\}`[^`]*`)", text)
        return "".join(p if i % 2 else _BARE_EQ.sub(repl, p) for i, p in enumerate(parts))

    def _chapters(self, text: str) -> str:
        def repl(m: re.Match[str]) -> str:
            word, space, first, rest = m.group(1), m.group(2), int(m.group(3)), m.group(4)
            if first not in self.t.chapters:
                return m.group(0)
            self.links += 1
            head = _role("doc", f"{word}{space}{first}", self.t.chapters[first])
            more = re.sub(
                r"\d+",
                lambda n: _role("doc", n.group(0), self.t.chapters[int(n.group(0))])
                if int(n.group(0)) in self.t.chapters
                else n.group(0),
                rest,
            )
            return head + more

        return _CHAPTER.sub(repl, text)

    def _sections(self, text: str) -> str:
        def repl(m: re.Match[str]) -> str:
            k, tag = int(m.group(1)), f"{int(m.group(1))}.{int(m.group(2))}"
            before = text[max(0, m.start() - 24) : m.start()]
            own = k == self.number or re.search(rf"[Cc]hapter\s+{k}\b", before)
            if tag in self.t.sections and own:
                self.links += 1
                return _role("ref", m.group(0), "sec-" + tag.replace(".", "-"))
            if k == self.number and tag not in self.t.sections:
                raise ReferenceError_(f"{self.where}: {m.group(0)} cites a section that chapter {k} does not have")
            return m.group(0)

        return _SECTION_REF.sub(repl, text)

    def _figures(self, text: str) -> str:
        def repl(m: re.Match[str]) -> str:
            k, tag = int(m.group(3)), f"{int(m.group(3))}.{int(m.group(4))}"
            if tag in self.t.figures:
                self.links += 1
                return _role("ref", m.group(0), self.t.figures[tag][1])
            if k in self.t.chapters:
                raise ReferenceError_(
                    f"{self.where}: {m.group(0)} cites a figure that chapter {k} does not have "
                    "(figures are the code cells with a mystnb.figure.caption, numbered in order)"
                )
            return m.group(0)

        return _FIGURE_REF.sub(repl, text)

    def _citations(self, text: str) -> str:
        def repl(m: re.Match[str]) -> str:
            whole = m.group(0)
            year = m.group("tyear") or m.group("year")
            suffix = m.group("tsuffix") if m.group("tyear") else m.group("suffix")
            surnames, et_al = citation_surnames(m.group("names"))
            found = match_citation(self.t.citations, surnames, et_al, year, suffix)
            if not found and len(surnames) > 1 and not et_al:
                # "Kalman and Wiener 1949": not a joint work; the citation may be the later names
                split = m.end("first") - m.start()
                joint = _JOINER.match(whole, split)
                if joint:
                    return whole[: joint.end()] + _CITATION.sub(repl, whole[joint.end() :])
            if not found:
                return whole  # no entry (or the prose names the authors differently): left as written
            if len(found) > 1:
                keys = ", ".join(f"{w.key} ({w.year}{w.suffix})" for w in found)
                hint = (
                    "cite the one meant with its year suffix"
                    if len({w.suffix for w in found} - {""}) == len(found)
                    else "give them year suffixes in the bibliography (year = {2024a}, {2024b}) and cite them with it"
                )
                raise ReferenceError_(
                    f"{self.where}: the citation {' '.join(whole.split())!r} fits {len(found)} entries of the "
                    f"bibliography: {keys}; {hint}"
                )
            work = found[0]
            if work.suffix and not suffix:
                raise ReferenceError_(
                    f"{self.where}: the citation {' '.join(whole.split())!r} cites {work.key}, whose year is "
                    f"{work.year}{work.suffix}: write the suffix, as the bibliography does"
                )
            self.links += 1
            post = m.group("post")
            target = f"{work.key}{{{post}}}" if post else work.key
            if m.group("poss"):  # "Jackson's (2000)": the names stay, the year becomes the link
                return f"{m.group('names')}{m.group('poss')} {{cite:yearpar}}`{target}`"
            if m.group("tyear"):
                return f"{{cite:t}}`{target}`"
            return f"{{cite:alp}}`{work.key}`"

        return _CITATION.sub(repl, text)

    def _code(self, body: str, raw: str) -> str:
        name = body.strip()
        if name in self.t.modules:
            self.links += 1
            return f"{{py:mod}}`{name}`"
        if name in self.t.objects:
            self.links += 1
            return f"{{py:obj}}`{name}`"
        return raw

    def prose(self, text: str) -> str:
        for rule in (self._equations, self._bare_equations, self._sections, self._figures, self._chapters):
            text = rule(text)
        if self.t.citations:
            # roles written by the rules above are protected from the citation rule
            parts = re.split(r"(\{[\w:.-]+\}`[^`]*`)", text)
            text = "".join(p if i % 2 else self._citations(p) for i, p in enumerate(parts))
        return text

    def markdown(self, source: str) -> str:
        out, pos = [], 0
        for m in _PROTECTED.finditer(source):
            out.append(self.prose(source[pos : m.start()]))
            if m.group("code") is not None:
                out.append(self._code(m.group("codebody"), m.group(0)))
            else:
                out.append(m.group(0))
            pos = m.end()
        out.append(self.prose(source[pos:]))
        return "".join(out)


def _fold(name: str) -> str:
    """Surname key for matching prose to the bibliography: case and accents do not matter."""
    import unicodedata

    decomposed = unicodedata.normalize("NFKD", name)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower()


# ------------------------------------------------------------------------- setup cells

_SETUP_LINE = re.compile(
    r"^\s*(?:$|#|%|import\s|from\s+\S+\s+import\s|\w+\s*=\s*setup_chapter\(|setup_chapter\(|\)|[\w\s,]+,?\s*$"
    r"|\w+\s*=\s*(?:np\.random\.)?default_rng\(\d*\)\s*(?:#.*)?$)"
)


def is_setup_cell(source: str) -> bool:
    """True for a code cell that only imports, sets IPython options, calls setup_chapter() and
    seeds the random generator (``rng = np.random.default_rng(10)``)."""
    lines = source.splitlines()
    if not any(line.strip() for line in lines):
        return False
    return all(_SETUP_LINE.match(line) for line in lines) and any(
        re.match(r"\s*(import|from)\s", line) or "setup_chapter(" in line for line in lines
    )


# ------------------------------------------------------------------------- chapters


def rewrite_chapter(nb: Any, chapter: dict[str, Any], targets: Targets) -> Any:
    """The chapter as Sphinx reads it: numbered title, linked prose, folded setup cell.

    Parameters
    ----------
    nb : nbformat.NotebookNode
        The executed (or stored) chapter; not modified.
    chapter : dict
        The chapter entry of the manifest, with ``number`` and ``file``.
    targets : Targets
        From :func:`collect_targets` over the whole book.

    Returns
    -------
    nbformat.NotebookNode
        A rewritten copy.

    Raises
    ------
    ReferenceError_
        A reference to an equation, section or figure that does not exist.
    """
    nb = copy.deepcopy(nb)
    linker = ProseLinker(targets, chapter, chapter["file"])
    first_code = True
    titled = False
    for index, cell in enumerate(nb.cells):
        linker.where = cell_label(chapter["file"], nb, index)
        if cell.cell_type == "markdown":
            source = cell.source
            if not titled:
                source, count = re.subn(
                    r"^#\s+(.*)$", lambda m: f"# {chapter['number']}. {m.group(1)}", source, count=1, flags=re.M
                )
                titled = count == 1
            cell.source = linker.markdown(source)
        elif cell.cell_type == "code":
            # nbval's markers are for the test suite, not for the reader
            cell.source = "\n".join(
                line for line in cell.source.split("\n") if not re.fullmatch(r"\s*#\s*NBVAL_\w+\s*", line)
            )
            tags = cell.metadata.setdefault("tags", [])
            if first_code and is_setup_cell(cell.source) and "hide-input" not in tags:
                tags.append("hide-input")
            first_code = False
            meta = cell.metadata.get(FIGURE_KEY)
            if isinstance(meta, dict) and isinstance(meta.get("figure"), dict):
                caption = meta["figure"].get("caption")
                if caption:
                    meta["figure"]["caption"] = linker.markdown(caption)
    nb.metadata.pop("widgets", None)
    # the chapters are Python: highlight them so even when a notebook lacks language_info
    nb.metadata.setdefault("language_info", {"name": "python", "pygments_lexer": "ipython3"})
    return nb


# ------------------------------------------------------------------------- generated pages


def _module_page(module: str) -> str:
    return f"api/{module}"


def _api_page(module: str) -> str:
    title = f"``{module}``"
    return (
        f"{title}\n{'=' * len(title)}\n\n"
        f".. automodule:: {module}\n"
        "   :members:\n"
        "   :member-order: bysource\n"
    )


def _version() -> str:
    from refimpl import __version__

    return __version__


def _index_page(book: dict[str, Any], chapters: list[dict[str, Any]], extra: list[str]) -> str:
    meta = book["book"]
    lines = [
        f"# {meta['title']}",
        "",
        f"*{', '.join(meta['authors'])}*",
        "",
        meta["description"],
        "",
        "| chapter | derives |",
        "|---|---|",
    ]
    for chapter in chapters:
        modules = ", ".join(f"{{py:mod}}`{m}`" for m in chapter["modules"]) or "—"
        lines.append(f"| {{doc}}`{chapter['number']}. {chapter['title']} <{chapter['docname']}>` | {modules} |")
    lines += [
        "",
        "Equations carry tags (k.n), chapter k and the equation's position in it: cite them with the version, "
        f"*refimpl {_version()}, Eq. (k.n)*; the HTML anchor of Eq. (k.n) is `#eq-k-n` on the chapter's page.",
        "",
        "```{toctree}",
        ":caption: Chapters",
        ":maxdepth: 2",
        ":hidden:",
        "",
        *(f"{c['number']}. {c['title']} <{c['docname']}>" for c in chapters),
        "```",
        "",
    ]
    if extra:
        lines += ["```{toctree}", ":caption: Reference", ":maxdepth: 1", ":hidden:", "", *extra, "```", ""]
    return "\n".join(lines)


def _equation_index_page(rows: list[tuple[str, str, list[str], list[str]]], targets: Targets) -> str:
    lines = [
        "# Equation → function → test index",
        "",
        "Every tagged equation of the book, the functions whose docstrings cite it and the test files "
        "that exercise those functions (computed from the chapters, the docstrings and `tests/` at build time).",
        "",
        "| equation | chapter | functions | tests |",
        "|---|---|---|---|",
    ]
    for tag, notebook, functions, tests in rows:
        if tag not in targets.equations:
            continue
        chapter = int(tag.split(".")[0])
        funcs = ", ".join(f"{{py:obj}}`refimpl.{q}`" for q in functions) or "—"
        files = ", ".join(tests) or "—"  # plain text, so that a long list wraps
        lines.append(
            f"| {_role('ref', f'({tag})', equation_anchor(tag))} | "
            f"{_role('doc', str(chapter), targets.equations[tag])} | {funcs} | {files} |"
        )
    return "\n".join(lines) + "\n"


def _bibliography_page() -> str:
    return (
        "# Bibliography\n\n"
        "The papers and books the chapters cite; citations in the text link here.\n\n"
        "```{bibliography}\n:all:\n```\n"
    )


def _conf_py(settings: dict[str, Any]) -> str:
    lines = [
        "# Generated by `python -m refimpl book` from book.toml: edit book.toml, not this file.",
        "# Build by hand with: sphinx-build -b html <this folder> <out>",
    ]
    lines += [f"{key} = {value!r}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def write_if_changed(path: Path, text: str) -> None:
    """Write `text` unless the file already holds it (Sphinx then keeps its cached doctree)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def bib_index(bibfile: Path) -> list[BibWork]:
    """The entries of a BibTeX file that an author–year citation can name (they have authors, or
    editors, and a year ``YYYY`` or ``YYYY`` + one letter), in the file's order."""
    import codecs

    from pybtex.database import parse_file

    works: list[BibWork] = []
    data = parse_file(str(bibfile), bib_format="bibtex")
    for key, entry in data.entries.items():
        people = entry.persons.get("author") or entry.persons.get("editor") or []
        year = re.fullmatch(r"\s*(\d{4})([a-z]?)\s*", entry.fields.get("year", ""))
        if not people or not year:
            continue
        surnames = []
        for person in people:
            surname = " ".join(person.prelast_names + person.last_names)
            try:  # LaTeX accents such as S{\"a}rkk{\"a} (pybtex depends on latexcodec)
                import latexcodec  # noqa: F401

                surname = codecs.decode(surname, "ulatex")
            except Exception:  # no latexcodec, or text it cannot read: match the text as is
                pass
            surnames.append(_fold(" ".join(surname.replace("{", "").replace("}", "").split())))
        works.append(BibWork(key, tuple(surnames), year.group(1), year.group(2)))
    return works


def write_sources(
    book: dict[str, Any],
    notebooks: dict[str, Any],
    src: Path,
    *,
    static: dict[str, Any],
    log: Callable[[str], None],
    index_rows: list[tuple[str, str, list[str], list[str]]] | None = None,
) -> dict[str, Any]:
    """Write the Sphinx project of the book into `src`.

    Parameters
    ----------
    book : dict
        The manifest from :func:`refimpl._book.load_book`.
    notebooks : dict
        ``{chapter file: NotebookNode}``, executed or as stored.
    src : pathlib.Path
        The Sphinx source folder (created; files that did not change are not rewritten).
    static : dict
        Extra ``conf.py`` settings from the caller (MathJax path, footer, ...).
    log : callable
        Receives one line per warning (figures without captions or alt text).
    index_rows : list, optional
        :func:`equation_rows` computed beforehand (the builder does it while chapters run).

    Returns
    -------
    dict
        ``{"targets": Targets, "docnames": [chapter docnames]}``.

    Raises
    ------
    ReferenceError_
        A duplicate equation tag or a broken reference, naming notebook, cell and reference.
    """
    import nbformat

    chapters = [dict(c, docname=Path(c["file"]).stem) for c in book["chapters"]]
    targets = collect_targets(chapters, notebooks)
    for line in targets.warnings:
        log(line)

    modules = list(dict.fromkeys(m for c in chapters for m in c["modules"]))
    import importlib

    for module in modules:
        targets.modules[module] = _module_page(module)
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            users = [c["file"] for c in chapters if module in c["modules"]]
            raise ReferenceError_(
                f"{book['path']}: module {module!r} (modules of {', '.join(users)}) cannot be imported: {exc}"
            ) from None
        targets.objects.update(f"{module}.{name}" for name in getattr(mod, "__all__", []))
    bibfile = book["book"].get("bibliography")
    if bibfile is not None:
        targets.citations = bib_index(bibfile)

    expected = {"conf.py", "index.md"}
    for chapter in chapters:
        nb = rewrite_chapter(notebooks[chapter["file"]], chapter, targets)
        write_if_changed(src / chapter["file"], nbformat.writes(nb))
        expected.add(chapter["file"])
    extra: list[str] = []
    for module in modules:
        write_if_changed(src / f"{_module_page(module)}.rst", _api_page(module))
        expected.add(f"{_module_page(module)}.rst")
    if modules:
        extra += [f"{m} <{_module_page(m)}>" for m in modules]  # under the "Reference" caption, each by its name
        rows = index_rows if index_rows is not None else equation_rows(book)
        if rows is not None:
            write_if_changed(src / "equations.md", _equation_index_page(rows, targets))
            expected.add("equations.md")
            extra.append("equations")
    if bibfile is not None:
        write_if_changed(src / "references.bib", bibfile.read_text(encoding="utf-8"))
        write_if_changed(src / "bibliography.md", _bibliography_page())
        expected |= {"references.bib", "bibliography.md"}
        extra.append("bibliography")
    write_if_changed(src / "index.md", _index_page(book, chapters, extra))

    settings = dict(static)
    settings["refimpl_chapters"] = {c["docname"]: c["number"] for c in chapters}
    settings["refimpl_equations"] = targets.equations
    if bibfile is not None:
        settings["bibtex_bibfiles"] = ["references.bib"]
    else:
        settings["extensions"] = [e for e in settings["extensions"] if e != "sphinxcontrib.bibtex"]
    write_if_changed(src / "conf.py", _conf_py(settings))
    # files of chapters or modules that left the book would otherwise still be built
    for path in list(src.rglob("*")):
        rel = path.relative_to(src).as_posix()
        if path.is_file() and rel not in expected:
            path.unlink()
    return {"targets": targets, "docnames": [c["docname"] for c in chapters]}


def equation_rows(book: dict[str, Any]) -> list[tuple[str, str, list[str], list[str]]] | None:
    """Rows of the equation → function → test index, or None when the book is not refimpl's own
    repository (the index reads ``notebooks/``, ``refimpl/`` and ``tests/`` next to book.toml)."""
    try:
        from refimpl.oracle import citation_index
    except ImportError:
        return None
    root = book["root"]
    if not (root / "refimpl").is_dir() or not (root / "notebooks").is_dir():
        return None
    try:
        return citation_index(root)["rows"]
    except ValueError:
        return None


# ============================================================================ Sphinx extension


def _register_label(env: Any, docname: str, name: str, node_id: str, title: str) -> None:
    std = env.get_domain("std")
    if name in std.labels and std.labels[name][0] != docname:
        other = std.labels[name][0]
        raise ReferenceError_(f"{docname}: label {name!r} is also defined in {other}")
    std.anonlabels[name] = (docname, node_id)
    std.labels[name] = (docname, node_id, title)


def _on_doctree_read(app: Any, doctree: Any) -> None:
    """Labels ``eq-k-n`` on tagged equations, ``sec-k-m`` on numbered sections."""
    from docutils import nodes

    env = app.env
    docname = env.docname
    if docname not in app.config.refimpl_chapters:
        return
    for node in doctree.findall(nodes.math_block):
        if not node.get("nowrap"):
            # Sphinx would wrap a display with "\\" in \begin{split}, where \tag, cases and
            # aligned-with-tags fail in MathJax: hand MathJax the display as the chapter wrote it.
            latex = node.astext()
            node.children = []
            node += nodes.Text(f"\\[{latex}\\]")
            node["nowrap"] = True
    for node in doctree.findall(lambda n: isinstance(n, (nodes.math_block, nodes.math))):
        latex = node.astext()
        for a, b in _TAG.findall(latex):
            tag = f"{int(a)}.{int(b)}"
            anchor = equation_anchor(tag)
            if anchor not in node["ids"]:
                node["ids"].append(anchor)
                doctree.ids[anchor] = node
            _register_label(env, docname, anchor, anchor, f"Eq. ({tag})")
    for section in doctree.findall(nodes.section):
        title = section.next_node(nodes.title)
        match = re.match(r"(\d+)\.(\d+)\s", title.astext() + " ") if title is not None else None
        if match and section.parent is not None and not isinstance(section.parent, nodes.document):
            anchor = f"sec-{int(match.group(1))}-{int(match.group(2))}"
            if anchor not in section["ids"]:
                section["ids"].append(anchor)
                doctree.ids[anchor] = section
            _register_label(env, docname, anchor, anchor, f"§{int(match.group(1))}.{int(match.group(2))}")


def _on_env_updated(app: Any, env: Any) -> list[str]:
    """Number figures "Figure k.n": k the chapter's number, n the figure's position in it."""
    changed = []
    for docname, by_type in env.toc_fignumbers.items():
        chapter = app.config.refimpl_chapters.get(docname)
        figures = by_type.get("figure")
        if chapter is None or not figures:
            continue
        ordered = sorted(figures, key=lambda figure_id: figures[figure_id])
        renumbered = {figure_id: (chapter, n) for n, figure_id in enumerate(ordered, start=1)}
        if renumbered != figures:
            by_type["figure"] = renumbered
            changed.append(docname)
    return changed


_DOC_EQ = re.compile(r"(``.*?``|`[^`]*`)|\b(Eqs?\.)\s*(\((\d+)\.(\d+)\)(?:\s*(?:–|—|-|to|,\s*and|,|and|/)\s*\(\d+\.\d+\))*)")


#: a glossary line of the modules' docstrings: ``name`` and perhaps a shape or a second name (no double
#: space), two or more spaces, its meaning
_GLOSSARY = re.compile(r"^(?P<ind> *)(?P<term>``[^`]+``(?:[^ ]| (?! ))*?) {2,}(?P<text>\S.*)$")

#: runs shorter than this are not glossaries (a formula line with its tag two spaces after it)
_GLOSSARY_MIN = 3


def glossaries_as_definitions(lines: list[str]) -> list[str]:
    """Aligned glossaries (``name``  meaning, continuation lines indented) as reStructuredText definition lists.

    The modules' docstrings align their glossaries in columns, which reads well in ``help()``; to
    reStructuredText the same lines are a paragraph that swallows every entry, a block quote for each
    continuation line and a stray definition list. A run of at least three such entries at one
    indentation, or of fewer with a continuation line, becomes a definition list (term, then its
    meaning indented by four), set off by blank lines.

    Examples
    --------
    >>> glossaries_as_definitions(["``q``    queries,", "         N of them.", "``k``    keys.", "``v``    values."])
    ['``q``', '    queries,', '    N of them.', '``k``', '    keys.', '``v``', '    values.', '']
    """
    out: list[str] = []
    i = 0
    while i < len(lines):
        run, j = [], i  # the entries (term, [text lines]) of a run starting at line i
        while j < len(lines) and (m := _GLOSSARY.match(lines[j])) and (not run or m["ind"] == run[0][0]):
            texts, j = [m["text"]], j + 1
            while j < len(lines) and lines[j].strip() and len(lines[j]) - len(lines[j].lstrip()) > len(m["ind"]) \
                    and not _GLOSSARY.match(lines[j]):
                texts.append(lines[j].strip())
                j += 1
            run.append((m["ind"], m["term"], texts))
        if len(run) < _GLOSSARY_MIN and not any(len(texts) > 1 for _, _, texts in run):  # (continued lines: invalid as they are)
            out.append(lines[i])
            i += 1
            continue
        if out and out[-1].strip():
            out.append("")
        for ind, term, texts in run:
            out.append(ind + term)
            out.extend(f"{ind}    {t}" for t in texts)
        if j >= len(lines) or lines[j].strip():
            out.append("")
        i = j
    return out


#: inline literals and roles (:math:`…`, :func:`…`), left as they are by :func:`escape_bars`
_INLINE_CODE = re.compile(r"``.*?``|:\w+:`[^`]*`")


def escape_bars(lines: list[str]) -> list[str]:
    r"""Vertical bars of running text escaped for reStructuredText (``|x|`` is a substitution there).

    The docstrings write absolute values and norms as ``|a| < 1`` or ``|‖k‖ − 1|``; reStructuredText
    reads ``|…|`` as a substitution reference and renders an error in its place. Bars inside inline
    literals and roles, in ``.. math::`` blocks, in literal blocks (after ``::``) and in doctests are
    left alone (a backslash would show there, or mean ‖ in LaTeX).

    Examples
    --------
    >>> escape_bars(["a bound on |x| and ``|y|``", ">>> abs(-1) | 0", ".. math:: |z|"])
    ['a bound on \\|x\\| and ``|y|``', '>>> abs(-1) | 0', '.. math:: |z|']
    """
    out: list[str] = []
    block_indent = None  # indentation of the line that opened a math, literal or doctest block
    for line in lines:
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if block_indent is not None:
            if not stripped or indent > block_indent or (block_indent == -1 and stripped):
                out.append(line)
                if block_indent == -1 and not stripped:
                    block_indent = None  # a doctest ends at a blank line
                continue
            block_indent = None
        if stripped.startswith((">>>", "...")) and (stripped[3:4] in ("", " ")):
            out.append(line)
            block_indent = -1
            continue
        if stripped.startswith(".. math::") or (stripped.endswith("::") and not stripped.startswith("..")):
            block_indent = indent
            if stripped.startswith(".. math::"):
                out.append(line)
                continue
        pieces, last = [], 0
        for m in _INLINE_CODE.finditer(line):
            pieces.append(line[last:m.start()].replace("|", "\\|"))
            pieces.append(m.group(0))
            last = m.end()
        pieces.append(line[last:].replace("|", "\\|"))
        out.append("".join(pieces))
    return out


def _on_docstring(app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """Link the book's ``Eq. (k.n)`` citations of a docstring to the equations; glossaries as definition
    lists (:func:`glossaries_as_definitions`) and bars escaped (:func:`escape_bars`)."""
    lines[:] = escape_bars(glossaries_as_definitions(lines))
    known = app.config.refimpl_equations

    def link_list(m: re.Match[str]) -> str:
        if m.group(1):
            return m.group(0)
        numbers = m.group(3)

        def one(n: re.Match[str]) -> str:
            tag = f"{int(n.group(1))}.{int(n.group(2))}"
            if tag not in known:
                return n.group(0)
            return f":ref:`({tag}) <{equation_anchor(tag)}>`"

        return f"{m.group(2)} " + re.sub(r"\((\d+)\.(\d+)\)", one, numbers)

    for i, line in enumerate(lines):
        if "Eq" in line:
            lines[i] = _DOC_EQ.sub(link_list, line)
            below = lines[i + 1] if i + 1 < len(lines) else ""
            if lines[i] != line and re.fullmatch(r"([-=~^\"'`#*+])\1+", below) and len(below) >= len(line):
                lines[i + 1] = below[0] * len(lines[i])  # a section title: keep its underline long enough


def _register_bibtex_style() -> None:
    """Author–year citations as the chapters write them: "Gu & Dao 2024", "Vaswani et al. (2017)"."""
    import sphinxcontrib.bibtex.plugin
    from sphinxcontrib.bibtex.style.referencing import BracketStyle, PersonStyle
    from sphinxcontrib.bibtex.style.referencing.author_year import AuthorYearReferenceStyle

    @dataclass
    class RefimplStyle(AuthorYearReferenceStyle):  # type: ignore[misc]
        bracket_parenthetical: BracketStyle = field(default_factory=lambda: BracketStyle(left="(", right=")"))
        bracket_textual: BracketStyle = field(default_factory=lambda: BracketStyle(left="(", right=")"))
        bracket_author: BracketStyle = field(default_factory=lambda: BracketStyle(left="(", right=")"))
        bracket_year: BracketStyle = field(default_factory=lambda: BracketStyle(left="(", right=")"))
        person: PersonStyle = field(default_factory=lambda: PersonStyle(sep2=" & ", last_sep=", & "))
        author_year_sep: str = " "

    sphinxcontrib.bibtex.plugin.register_plugin(
        "sphinxcontrib.bibtex.style.referencing", "refimpl_author_year", RefimplStyle, force=True
    )


#: The book's own style sheet (``_static/refimpl.css``). The theme clips a display equation wider
#: than the text column (``div.math`` has ``overflow: hidden``): at a 1200-pixel window, the
#: text column of about 640 pixels cut off the end of 130 tagged equations and their tags (the
#: Joseph form of Eq. (3.3), the tag of Eq. (4.2)). MathJax breaks a long line where it can
#: (``linebreaks`` in :func:`refimpl._book.sphinx_settings`); what it cannot break (aligned rows,
#: matrices) scrolls sideways instead of being cut off.
BOOK_CSS = """\
/* refimpl: wide display equations scroll instead of being clipped, so their ends and tags stay readable */
div.math { overflow-x: auto; overflow-y: hidden; }
"""


def _write_css(app: Any, exception: Exception | None) -> None:
    if exception is None and app.builder.format == "html":
        static = Path(app.outdir) / "_static"
        static.mkdir(parents=True, exist_ok=True)
        (static / "refimpl.css").write_text(BOOK_CSS, encoding="utf-8")


def setup(app: Any) -> dict[str, Any]:
    """The Sphinx extension of the book (listed in the generated ``conf.py``)."""
    app.add_css_file("refimpl.css")
    app.connect("build-finished", _write_css)
    app.add_config_value("refimpl_chapters", {}, "env")
    app.add_config_value("refimpl_equations", {}, "env")
    app.connect("doctree-read", _on_doctree_read)
    app.connect("env-get-updated", _on_env_updated, priority=900)
    app.connect("autodoc-process-docstring", _on_docstring, priority=600)
    try:
        _register_bibtex_style()
    except ImportError:
        pass
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

