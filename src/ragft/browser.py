"""The browser check of the built book: every page opened in headless Chromium (Debian's `chromium`
package; no browser download), failing on a JavaScript error, a glue value that did not render, a
broken image or local link, an image without alt text, a page wider than a 1280-pixel window, or, on
the front page, a table that runs past its column (cut off, or scrolled sideways inside the page) or
holds a row taller than a 1280 x 800 laptop screen (the chapters' wide data tables scroll sideways
inside their own box, by the theme's design); a screenshot of each page is saved beside the book (<html>/../screenshots).

  python -m ragft.browser _build/html          (make browser: installs chromium first where it can)
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from html import unescape
from pathlib import Path

WIDTH = 1280
FIT_PAGES = ("00_front.html",)  # the pages whose every table must fit a laptop's screen: the front page
SCREEN_HEIGHT = 800  # a laptop's screen at WIDTH (1280 x 800): a table row taller than this cannot be read at once
CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
INSTALL = "apt-get install -y chromium (Debian's package; `make browser` runs it)"
# A probe appended to a copy of the page: after the page's own scripts ran, the page's width and the
# window's go into the title, and each table's measure into the body's data-ragft-tables: how far it
# runs past the box that holds it (a theme's scrolling wrapper hides, not fits, a wide table) and the
# height of its tallest row, with its first header's text to name it.
PROBE = ('<script>window.addEventListener("load", () => setTimeout(() => {'
         'const tables = [...document.querySelectorAll("table")].map(t => {'
         'let box = t.parentElement; while (box.parentElement && getComputedStyle(box).overflowX === "visible")'
         ' box = box.parentElement;'
         'const over = Math.max(t.getBoundingClientRect().width - box.clientWidth,'
         ' t.getBoundingClientRect().right - document.documentElement.clientWidth);'
         'const rows = [...t.querySelectorAll("tr")].map(r => r.getBoundingClientRect().height);'
         'const head = [...t.querySelectorAll("th")].map(h => h.textContent.trim()).find(h => h) || "";'
         'return [Math.round(over), Math.round(Math.max(0, ...rows)), head.slice(0, 40)];});'
         'document.body.setAttribute("data-ragft-tables", JSON.stringify(tables));'
         'document.title = "ragft-probe " + document.documentElement.scrollWidth + " " + document.documentElement.clientWidth;'
         '}, 500));</script>')


def find_chromium() -> str | None:
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


def pages(html: Path) -> list[Path]:
    """The book's pages: every chapter page, the front page among them (index.html only redirects to it)."""
    return sorted((html / "chapters").glob("*.html"))


def _chromium(chromium: str, *args: str) -> subprocess.CompletedProcess:
    # offline like the book's readers without a network: every host unresolvable, at once (a CDN script
    # that cannot load is the theme's business, not an error of this book's pages)
    return subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0", *args],
                          capture_output=True, text=True, timeout=120)


def _local_targets(dom: str, attribute: str, tag: str) -> list[str]:
    found = re.findall(rf"<{tag}\b[^>]*\b{attribute}=\"([^\"]*)\"", dom)
    return [unescape(t) for t in found if t and not re.match(r"^(https?:|mailto:|data:|javascript:|#)", t)]


def check_page(chromium: str, page: Path, screenshots: Path, fit_tables: bool | None = None) -> list[str]:
    """What is wrong with one page, each problem a line naming the page; `fit_tables` (default: a page
    of FIT_PAGES) holds its tables to the laptop's screen."""
    name = f"{page.parent.name}/{page.name}"
    screenshots.mkdir(parents=True, exist_ok=True)
    shot = screenshots / f"{page.stem}.png"
    shot.unlink(missing_ok=True)  # an earlier run's screenshot must not pass for this one
    # one Chromium a page: the DOM and the screenshot of the same load (the probe beside the page, so
    # its relative links resolve alike; it only adds a script that writes the widths into the title)
    probe = page.with_name(f".probe-{page.name}")
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    try:
        run = _chromium(chromium, f"--window-size={WIDTH},2400", "--virtual-time-budget=3000", "--dump-dom",
                        f"--screenshot={shot}", probe.as_uri())
    finally:
        probe.unlink()
    problems = [f"{name}: JavaScript error: {line.split('] ', 1)[-1]}" for line in run.stderr.splitlines()
                if ":CONSOLE" in line and re.search(r"Uncaught|Error", line)]
    dom = run.stdout
    if not dom.strip():
        return problems + [f"{name}: Chromium returned no page ({run.stderr.strip()[-300:]})"]
    width = re.search(r"<title>ragft-probe (\d+) (\d+)</title>", dom)
    if width is None:
        problems.append(f"{name}: the page did not finish loading")
    elif int(width.group(1)) > int(width.group(2)):
        problems.append(f"{name}: {width.group(1)} px wide in a {width.group(2)} px window (scrolls sideways)")
    if page.name in FIT_PAGES if fit_tables is None else fit_tables:
        problems += _table_problems(name, dom)
    for marker in ("{glue", "np.float64", "KeyError"):
        if marker in dom:
            problems.append(f"{name}: {marker!r} on the page (a glue value that did not render)")
    for img in re.findall(r"<img\b[^>]*>", dom):  # alt text a reader's screen reader can say (not the file name)
        alt, src = re.search(r'\balt="([^"]*)"', img), re.search(r'\bsrc="([^"]*)"', img)
        if alt is None or not alt.group(1).strip() or (src and alt.group(1) == src.group(1)):
            problems.append(f"{name}: an image without alt text ({src.group(1) if src else img[:80]})")
    for kind, attribute, tag in (("image", "src", "img"), ("link", "href", "a")):
        for target in _local_targets(dom, attribute, tag):
            path = (page.parent / target.split("#")[0].split("?")[0]).resolve()
            if target.split("#")[0] and not path.exists():
                problems.append(f"{name}: broken {kind} {target}")
    if not shot.exists():
        problems.append(f"{name}: no screenshot")
    return problems


def _table_problems(name: str, dom: str) -> list[str]:
    """Each table that runs past the box holding it (cut off, or scrolled sideways inside the page) or
    has a row taller than a laptop's screen, from the probe's measures."""
    found = re.search(r'data-ragft-tables="([^"]*)"', dom)
    if found is None:
        return [f"{name}: the table probe did not run"]
    problems = []
    for k, (over, row, head) in enumerate(json.loads(unescape(found.group(1))), 1):
        label = f"table {k}" + (f" ({head!r})" if head else "")
        if over > 1:  # a pixel of rounding
            problems.append(f"{name}: {label} runs {over} px past its column (cut off or scrolled sideways)")
        if row > SCREEN_HEIGHT:
            problems.append(f"{name}: {label} has a row {row} px tall, taller than a {SCREEN_HEIGHT} px screen")
    return problems


def check_book(html: Path, screenshots: Path | None = None) -> list[str]:
    """Every page's problems (empty: the book passes). Raises when there is no browser or no book."""
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError(f"no Chromium on this machine: {INSTALL}")
    html = Path(html).resolve()  # Chromium takes file:// URIs, which must be absolute (`make browser` passes _build/html)
    found = pages(html)
    if not found:
        raise FileNotFoundError(f"no built book in {html}: build it first (make book)")
    screenshots = screenshots or html.parent / "screenshots"
    return [p for page in found for p in check_page(chromium, page, screenshots)]


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    html = Path(args[0] if args else "_build/html")
    problems = check_book(html)
    for p in problems:
        print(f"[browser] {p}")
    print(f"[browser] {len(pages(html))} pages checked, {len(problems)} problems; screenshots in {html.parent / 'screenshots'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
