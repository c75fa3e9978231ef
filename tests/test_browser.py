"""The browser check (ragft.browser) catches what it says it does, on pages made to fail; the built
smoke book passes it (tests/test_notebooks.py). Needs Debian's chromium: `make chromium` installs it,
CI always does (RAGFT_BROWSER_REQUIRED=1 turns a missing browser into a failure)."""

import pytest

from ragft import browser

pytestmark = pytest.mark.browser


def book(tmp_path, body: str):
    (tmp_path / "chapters").mkdir()
    (tmp_path / "chapters" / "ok.png").write_bytes(b"")
    page = tmp_path / "chapters" / "page.html"
    page.write_text(f"<html><head><title>t</title></head><body>{body}</body></html>")
    return tmp_path, page


@pytest.mark.parametrize("body,problem", [
    ('<p>fine</p><img src="ok.png" alt="a plot"><a href="page.html#top">self</a><a href="https://example.org">out</a>', None),
    ('<img src="ok.png" alt="ok.png">', "an image without alt text"),  # Sphinx's default: the file name
    ("<script>undefinedFunction();</script>", "JavaScript error"),
    ('<img src="missing.png" alt="x">', "broken image missing.png"),
    ('<a href="../elsewhere.html">x</a>', "broken link ../elsewhere.html"),
    ('<p>{glue:text}`key`</p>', "a glue value that did not render"),
    ('<div style="width: 3000px">wide</div>', "scrolls sideways"),
    # a theme's wrapper scrolls a wide table inside the page: the page fits, the table does not
    ('<div style="overflow-x: auto; width: 600px"><table><tr><th>wide</th><td style="min-width: 900px">x</td></tr>'
     '</table></div>', "table 1 ('wide') runs 3"),
    ('<table><tr><th>tall</th><td style="height: 1000px">x</td></tr></table>', "has a row 10"),
    ('<div style="width: 600px"><table><tr><th>fits</th><td>x</td></tr></table></div>', None),
], ids=["good", "no-alt", "js-error", "image", "link", "glue", "wide", "wide-table", "tall-row", "table-fits"])
def test_the_check_finds_what_is_wrong(chromium, tmp_path, body, problem):
    html, page = book(tmp_path, body)
    problems = browser.check_page(chromium, page, tmp_path / "shots", fit_tables=True)
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems
    assert (tmp_path / "shots" / "page.png").exists()
    assert not list(html.glob("chapters/.probe-*"))  # the probe copy is cleaned up


def test_no_book_is_a_clear_error(chromium, tmp_path):
    with pytest.raises(FileNotFoundError, match="no built book"):
        browser.check_book(tmp_path)


def test_a_relative_book_path_is_checked(chromium, tmp_path, monkeypatch):
    """`make browser` passes _build/html, a relative path; Chromium needs absolute file URIs (CI failed on it)."""
    (tmp_path / "html").mkdir()
    book(tmp_path / "html", '<p>fine</p>')
    monkeypatch.chdir(tmp_path)
    assert browser.main(["html"]) == 0
    assert (tmp_path / "screenshots" / "page.png").exists()


def test_only_the_front_pages_tables_are_held_to_the_screen(chromium, tmp_path):
    """A chapter's wide data table scrolls sideways in its own box; the front page's tables must fit."""
    wide = '<div style="overflow-x: auto; width: 600px"><table><tr><th>wide</th><td style="min-width: 900px">x</td></tr></table></div>'
    html, page = book(tmp_path, wide)
    assert browser.check_page(chromium, page, tmp_path / "shots") == []
    front = page.with_name(browser.FIT_PAGES[0])
    front.write_text(page.read_text())
    assert any("runs" in p for p in browser.check_page(chromium, front, tmp_path / "shots"))
