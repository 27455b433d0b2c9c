"""The built book in a real browser: headless Chromium, ``file://`` pages, the network off.

The book is rendered from the stored outputs (``python -m refimpl book --no-execute``) into a
temporary folder and every chapter is opened in Chromium, driven through the DevTools protocol
over ``--remote-debugging-pipe`` (standard library only; no selenium or playwright). For every
chapter the test asserts that MathJax typeset every equation with no error and drew each
``\\tag{k.n}`` as "(k.n)" at the anchor ``#eq-k-n``; that every internal link points to a page
and an anchor that exist; that every image loaded; and that nothing was requested from the
network. Then the search page, opened from ``file://`` with ``?q=Lyapunov``, must list chapter 2.

Chromium comes from the Debian package ``chromium``. The test is skipped when it is not
installed, unless ``REFIMPL_REQUIRE_BROWSER`` is set (``.ci/run`` sets it), then it fails.
Nothing is written into the repository (no screenshots).
"""

from __future__ import annotations

import contextlib
import fcntl
import html.parser
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
import tomllib
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


REPO = Path(__file__).resolve().parents[1]
BOOK_TOML = REPO / "book.toml"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--allow-file-access-from-files",  # search.html reads searchindex.js next to it
    "--host-resolver-rules=MAP * ~NOTFOUND",  # no DNS: any http(s) request fails ...
    "--proxy-server=127.0.0.1:9",  # ... and has nowhere to go
    "--remote-debugging-pipe",
    # the chapters load in tabs side by side (the fixture ``reports``): none is throttled as a background tab
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--disable-renderer-backgrounding",
]
PAGE_TIMEOUT = 120.0  # seconds for one chapter to load and typeset on a loaded 2-core machine
TABS = 2  # chapters typeset side by side (the fixture ``reports``)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class DevTools:
    """A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe``.

    Chromium reads commands from its fd 3 and writes replies and events to its fd 4, each a
    JSON object terminated by a NUL byte.
    """

    def __init__(self, executable: str, profile: str) -> None:
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # duplicate above any fd the child might need, so that dup2 to 3 and 4 cannot clobber
        child_in = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 100)
        child_out = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 100)
        for fd in (to_browser_r, from_browser_w):
            os.close(fd)

        def wire_pipes() -> None:  # runs in the child, before exec
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        self.proc = subprocess.Popen(
            [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,  # fds 3 and 4 must survive exec; Python's own fds are close-on-exec
            preexec_fn=wire_pipes,
        )
        os.close(child_in)
        os.close(child_out)
        self._write, self._read = to_browser_w, from_browser_r
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("Browser.close", timeout=10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._write, self._read):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self._read], [], [], left)
            if ready:
                chunk = os.read(self._read, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe (did it start?)")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 60.0) -> dict[str, Any]:  # fmt: skip
        """Send a command and return its result; events that arrive meanwhile are kept."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, session: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for index, event in enumerate(self.events):
                if event.get("method") == method and event.get("sessionId") == session:
                    return self.events.pop(index)
            self.events.append(self._receive(deadline))

    def evaluate(self, session: str, expression: str, timeout: float = 60.0) -> Any:
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True, "timeout": timeout * 1000},
            session,
            timeout=timeout + 5,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")


class Tab:
    """One page with the network switched off and every request recorded."""

    def __init__(self, browser: DevTools) -> None:
        self.browser = browser
        self.target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = browser.call("Target.attachToTarget", {"targetId": self.target, "flatten": True})["sessionId"]
        for method in ("Page.enable", "Network.enable", "Runtime.enable"):
            browser.call(method, session=self.session)
        browser.call(
            "Network.emulateNetworkConditions",
            {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
            self.session,
        )

    def open(self, url: str) -> list[str]:
        """Load `url`; return the URLs the page requested."""
        self.navigate(url)
        self.wait_loaded()
        return self.requests()

    def navigate(self, url: str) -> None:
        """Start loading `url` (the requests recorded so far are forgotten); :meth:`wait_loaded` waits for it."""
        self.browser.events = [e for e in self.browser.events if e.get("sessionId") != self.session]
        self.browser.call("Page.navigate", {"url": url}, self.session)

    def wait_loaded(self) -> None:
        self.browser.wait_event("Page.loadEventFired", self.session, PAGE_TIMEOUT)

    def close(self) -> None:
        self.browser.call("Target.closeTarget", {"targetId": self.target})

    def requests(self) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.browser.events
            if e.get("sessionId") == self.session and e.get("method") == "Network.requestWillBeSent"
        ]

    def js(self, expression: str, timeout: float = PAGE_TIMEOUT) -> Any:
        return self.browser.evaluate(self.session, expression, timeout)


# The page-side checks, run after MathJax has finished its start-up typesetting.
WAIT_FOR_MATHJAX = """
new Promise((resolve) => {
  // MathJax 2 is done when it is ready and its queue has stayed empty for two polls
  let quiet = 0;
  const poll = () => {
    const hub = window.MathJax && MathJax.Hub;
    if (!hub) { resolve(false); return; }
    quiet = MathJax.isReady && !hub.queue.pending && !hub.queue.running ? quiet + 1 : 0;
    if (quiet >= 2) resolve(true); else setTimeout(poll, 250);
  };
  poll();
})
"""
PAGE_REPORT = r"""
(async () => {
  const imgs = [...document.images];
  imgs.forEach((img) => { img.loading = "eager"; });
  await Promise.all(imgs.map((img) => img.decode().catch(() => null)));
  // Sphinx's math elements (MathJax's own output also has spans of class "math")
  const math = [...document.querySelectorAll("div.math.notranslate, span.math.notranslate")];
  const tags = {};
  document.querySelectorAll('[id^="eq-"]').forEach((el) => {
    const shown = el.querySelector(".MathJax_Display, .MathJax, .MathJax_SVG_Display");
    tags[el.id] = shown ? shown.textContent.replace(/\s+/g, "") : null;
  });
  return {
    math: math.length,
    untypeset: math.filter((el) => !el.querySelector(".MathJax, .MathJax_Display, .MathJax_SVG, .MathJax_CHTML")).length,
    errors: [...document.querySelectorAll(".MathJax_Error, merror, .merror, [data-mjx-error]")].map((e) => e.textContent.slice(0, 80)),
    rawTex: math.filter((el) => /\\\(|\\\[|\$\$/.test([...el.childNodes].filter((n) => n.nodeType === 3).map((n) => n.textContent).join(""))).length,
    tags,
    ids: [...document.querySelectorAll("[id]")].map((el) => el.id),
    links: [...document.querySelectorAll("a[href]")].map((a) => a.href),
    images: imgs.map((img) => ({ src: img.currentSrc || img.src, ok: img.complete && img.naturalWidth > 0, alt: img.alt })),
  };
})()
"""
# Tagged display equations wider than their box: how far the typeset content (the tag included) runs past
# the right edge of the first ancestor that does not let it overflow visibly, and whether that box scrolls.
WIDE_EQUATIONS = r"""
(() => {
  const out = [];
  document.querySelectorAll('[id^="eq-"]').forEach((el) => {
    const shown = el.querySelector(".MathJax_Display");
    if (!shown) return;
    let right = shown.getBoundingClientRect().right;
    shown.querySelectorAll("span").forEach((s) => {
      const r = s.getBoundingClientRect();
      if (r.width > 0) right = Math.max(right, r.right);
    });
    let box = shown;
    while (box && box !== document.body && getComputedStyle(box).overflowX === "visible") box = box.parentElement;
    const edge = box && box !== document.body ? box.getBoundingClientRect().right : window.innerWidth;
    const scrolls = box && box !== document.body && ["auto", "scroll"].includes(getComputedStyle(box).overflowX);
    if (right > edge + 1) out.push({id: el.id, over: Math.round(right - edge), scrolls: !!scrolls});
  });
  return out;
})()
"""
SEARCH_RESULTS = """
new Promise((resolve) => {
  const started = Date.now();
  const poll = () => {
    // Sphinx lists results one by one, then writes its summary "Search finished, found N pages ..."
    const status = document.querySelector(".search-summary");
    const text = status ? status.textContent : "";
    const done = /finished|found|did not match/i.test(text);
    if (done || Date.now() - started > 60000) {
      resolve({found: [...document.querySelectorAll("#search-results a")].map((a) => a.href), status: text});
    } else setTimeout(poll, 200);
  };
  poll();
})
"""


class _Ids(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids.update(value for name, value in attrs if name == "id" and value)


def _static_ids(page: Path) -> set[str]:
    parser = _Ids()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.ids


@pytest.fixture(scope="module")
def chromium() -> str:
    executable = _chromium()
    if executable is None:
        if os.environ.get("REFIMPL_REQUIRE_BROWSER"):
            pytest.fail("REFIMPL_REQUIRE_BROWSER is set but chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium); set REFIMPL_REQUIRE_BROWSER to require it")
    return executable


@pytest.fixture(scope="module")
def book(stored_book: tuple[Path, int, str, str]) -> Path:
    """The book rendered from the stored outputs, shared with test_book.py (conftest.py)."""
    out, code, _, stderr = stored_book
    assert code == 0, stderr
    return out


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[DevTools]:
    with tempfile.TemporaryDirectory(prefix="refimpl-chromium-") as profile:
        devtools = DevTools(chromium, profile)
        try:
            devtools.call("Browser.getVersion", timeout=60)
            yield devtools
        finally:
            devtools.close()


def _chapters() -> list[str]:
    with BOOK_TOML.open("rb") as stream:
        return [chapter["file"] for chapter in tomllib.load(stream)["chapters"]]


CHAPTERS = _chapters()


@pytest.fixture(scope="module")
def reports(book: Path, browser: DevTools) -> dict[str, dict[str, Any]]:
    """Open every chapter once, in a 1200 × 900 desktop tab of its own; the tests below read the reports.

    Typesetting is a few CPU-seconds of one renderer's main thread per chapter (MathJax 2 with
    automatic line breaks): ``TABS`` chapters load and typeset side by side, one per core."""
    out: dict[str, dict[str, Any]] = {}
    waiting: list[tuple[str, Tab]] = []
    queue = list(CHAPTERS)
    while queue or waiting:
        while queue and len(waiting) < TABS:
            file = queue.pop(0)
            tab = Tab(browser)
            browser.call("Emulation.setDeviceMetricsOverride",
                         {"width": 1200, "height": 900, "deviceScaleFactor": 1, "mobile": False}, tab.session)
            tab.navigate((book / f"{Path(file).stem}.html").as_uri())
            waiting.append((file, tab))
        file, tab = waiting.pop(0)
        tab.wait_loaded()
        browser.call("Page.bringToFront", session=tab.session)  # a hidden tab never settles img.decode()
        typeset = tab.js(WAIT_FOR_MATHJAX)
        report = tab.js(PAGE_REPORT)
        report["wide"] = tab.js(WIDE_EQUATIONS) if typeset is True else None
        report["mathjax"] = typeset
        report["requests"] = tab.requests()
        out[file] = report
        tab.close()
    return out


@pytest.mark.parametrize("file", CHAPTERS)
def test_chapter_math_is_typeset_with_its_tags(file: str, reports: dict[str, dict[str, Any]]) -> None:
    report = reports[file]
    source = (REPO / "notebooks" / file).read_text(encoding="utf-8")
    tags = sorted(set(re.findall(r"\\\\tag\{(\d+\.\d+)\}", source)))
    if report["math"] == 0:
        assert not tags, f"{file}: tagged equations but no math on the page"
        return
    assert report["mathjax"] is True, f"{file}: MathJax did not load from the local copy"
    assert report["errors"] == [], f"{file}: MathJax errors {report['errors'][:5]}"
    assert report["untypeset"] == 0, f"{file}: {report['untypeset']} of {report['math']} math elements not typeset"
    assert report["rawTex"] == 0, f"{file}: raw TeX delimiters left on the page"
    for tag in tags:
        anchor = "eq-" + tag.replace(".", "-")
        assert anchor in report["tags"], f"{file}: no element with id {anchor}"
        shown = report["tags"][anchor]
        assert shown is not None, f"{file}: #{anchor} holds no typeset math"
        assert f"({tag})" in shown, f"{file}: #{anchor} does not show the tag ({tag}): {shown[-40:]!r}"


@pytest.mark.parametrize("file", CHAPTERS)
def test_chapter_images_load_and_have_alt_text(file: str, reports: dict[str, dict[str, Any]]) -> None:
    broken = [image["src"] for image in reports[file]["images"] if not image["ok"]]
    assert not broken, f"{file}: images that did not load: {broken[:5]}"


@pytest.mark.parametrize("file", CHAPTERS)
def test_chapter_requests_nothing_from_the_network(file: str, reports: dict[str, dict[str, Any]]) -> None:
    remote = [url for url in reports[file]["requests"] if not url.startswith(("file:", "data:", "about:", "blob:"))]
    assert not remote, f"{file}: requested {remote[:5]}"


@pytest.mark.parametrize("file", CHAPTERS)
def test_chapter_internal_links_resolve(file: str, book: Path, reports: dict[str, dict[str, Any]]) -> None:
    live = {f"{Path(name).stem}.html": set(report["ids"]) for name, report in reports.items()}
    cache: dict[Path, set[str]] = {}
    broken = []
    for href in reports[file]["links"]:
        url = urllib.parse.urlsplit(href)
        if url.scheme != "file":
            continue  # links to the web are for the reader to follow, not fetched
        target = Path(urllib.parse.unquote(url.path))
        if not target.is_file():
            broken.append(href)
            continue
        if not url.fragment:
            continue
        if target.parent == book and target.name in live:
            ids = live[target.name]
        else:
            ids = cache.setdefault(target, _static_ids(target) if target.suffix == ".html" else set())
        if urllib.parse.unquote(url.fragment) not in ids:
            broken.append(href)
    assert not broken, f"{file}: links to missing pages or anchors: {sorted(set(broken))[:8]}"


def test_search_from_file_url_finds_chapter_2(book: Path, browser: DevTools) -> None:
    tab = Tab(browser)
    requests = tab.open((book / "search.html").as_uri() + "?q=Lyapunov")
    results = tab.js(SEARCH_RESULTS)
    pages = [urllib.parse.urlsplit(href).path.rsplit("/", 1)[-1] for href in results["found"]]
    lyapunov = next(file for file in CHAPTERS if file.startswith("02-"))
    assert f"{Path(lyapunov).stem}.html" in pages, f"search for Lyapunov returned {pages[:10]} ({results['status']!r})"
    remote = [url for url in requests + tab.requests() if not url.startswith(("file:", "data:", "about:"))]
    assert not remote, remote


def test_wide_equations_scroll_instead_of_being_cut_off(reports: dict[str, dict[str, Any]]) -> None:
    """At a 1200-pixel desktop window the text column is about 640 pixels wide: the theme clipped every
    display equation wider than that, cutting off its end and its tag (130 tagged equations, among them
    the Joseph form of Eq. (3.3) and the tag of Eq. (4.2)). MathJax now breaks long lines, and what is
    still too wide scrolls sideways: no tagged equation is cut off."""
    clipped, wide = {}, 0
    for file in CHAPTERS:
        over = reports[file]["wide"]
        assert over is not None, f"{file}: MathJax did not finish"
        wide += len(over)
        cut = [f"{e['id']} (+{e['over']} px)" for e in over if not e["scrolls"]]
        if cut:
            clipped[file] = cut
    assert not clipped, f"tagged equations cut off at 1200 px (not scrollable): {clipped}"
    print(f"{wide} tagged equations wider than the text column at 1200 px, each in a box that scrolls")
