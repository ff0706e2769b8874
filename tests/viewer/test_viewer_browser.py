"""The viewer page in a real headless browser (Debian's Chromium, driven by Playwright).

Needs ``apt-get install -y chromium`` and ``pip install playwright`` (never
``playwright install``: the system browser is used). Without them these tests
skip, except under CI (``CI`` set), where they fail.

``UPDATE_VIEWER_SCREENSHOT=1`` also writes the page of the recorded run to docs/viewer.png.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
PAYLOAD = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
TIMEOUT_MS = 10_000


def _chromium() -> str | None:
    for candidate in (shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium, or the reason there is none (the test then fails under CI, else skips)."""
    chromium = _chromium()
    if chromium is None:
        yield "Debian's chromium is not installed (apt-get install -y chromium)"
        return
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        yield "playwright is not installed (pip install playwright; the system chromium is used)"
        return
    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=chromium)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def open_page(browser) -> Iterator[Any]:
    """``open_page(url)``: a fresh page at ``url`` that records script errors and console errors."""
    pages = []

    def open_(url: str):
        if isinstance(browser, str):
            if os.environ.get("CI"):
                pytest.fail(f"browser tests must run in CI: {browser}")
            pytest.skip(browser)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        page.problems = []
        page.on("pageerror", lambda e: page.problems.append(f"pageerror: {e}"))
        page.on("console", lambda m: m.type == "error" and page.problems.append(f"console: {m.text}"))
        pages.append(page)
        page.goto(url)
        return page

    yield open_
    for page in pages:
        page.close()


def wait_loaded(page) -> None:
    page.wait_for_selector("#timeline li.ev")
    page.wait_for_selector("#live:not([hidden])")


def test_page_shows_the_run(recorded_run, start_viewer, open_page) -> None:
    run = recorded_run
    page = open_page(start_viewer(run.path))
    wait_loaded(page)

    assert page.text_content("#title") == run.path.name
    assert page.text_content("#status") == "completed"
    assert page.text_content("#answer-text").strip() == str(run.expected)
    assert run.question in page.text_content("#question")
    assert page.locator("#subcalls table.subcalls tbody tr.call").count() == run.subcalls
    assert page.locator("#timeline li.ev").count() == len(run.event_lines())
    assert page.locator("#timeline li.ev.agent_text").count() >= 1
    writes = page.locator("#timeline li.ev.tool_use code").all_text_contents()
    assert "scratch/scripts/count.py" in writes  # the Write's path, shown relative to the run folder
    assert page.locator("#artifacts tbody tr").count() == run.subcalls
    # the script, syntax-highlighted
    assert "scratch/scripts/count.py" in page.text_content("#scripts summary")
    code = page.text_content("#scripts pre.code")
    assert code == (run.path / "scratch" / "scripts" / "count.py").read_text()
    assert page.locator("#scripts pre.code span.py-kw").count() > 3
    assert page.locator("#scripts pre.code span.py-str").count() > 1
    # totals from the run's result
    assert "subcalls" in page.text_content("#totals") and "$0" in page.text_content("#totals")

    # a subcall row opens to its prompt and answer
    page.locator("#subcalls tr.call").first.click()
    detail = page.locator("#subcalls tr.detail")
    assert "Count the lines that contain the label ERROR." in detail.text_content()
    first_answer = page.locator("#subcalls tr.call").first.locator("td").nth(9).text_content()
    assert first_answer.isdigit()
    assert page.problems == []

    if os.environ.get("UPDATE_VIEWER_SCREENSHOT"):
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(REPO / "docs" / "viewer.png"), full_page=True)


def test_planted_markup_is_shown_as_text_never_run(recorded_run, start_viewer, open_page) -> None:
    run = recorded_run
    (run.path / "output" / "answer.md").write_text(PAYLOAD)
    (run.path / "scratch" / "scripts" / '<img src=x onerror="window.__pwned=3">.py').write_text(
        f"# {PAYLOAD}\nprint('{PAYLOAD}')\n")
    run.append_event(kind="agent_text", text=PAYLOAD)
    run.append_event(kind="tool_use", tool="<b>Bash</b>", detail=PAYLOAD)
    with (run.path / "state" / "artifacts.jsonl").open("a") as f:
        f.write('{"note": "<script>window.__pwned=4</script>"}\n')

    page = open_page(start_viewer(run.path))
    wait_loaded(page)
    page.wait_for_selector("#answer-text")
    assert page.text_content("#answer-text") == PAYLOAD
    assert PAYLOAD in page.text_content("#timeline")
    assert 'onerror="window.__pwned=3">.py' in page.text_content("#scripts")
    assert "window.__pwned=4" in page.text_content("#artifacts")
    page.wait_for_timeout(500)  # give a planted handler every chance to fire
    assert page.evaluate("typeof window.__pwned") == "undefined"
    # nothing from the run became an element: the only script is the viewer's own, and there is no image
    assert page.evaluate("document.scripts.length") == 1
    assert page.evaluate("document.images.length") == 0
    assert page.evaluate("document.querySelectorAll('b').length") == 0


def test_page_updates_live_without_reload(recorded_run, start_viewer, open_page) -> None:
    run = recorded_run
    page = open_page(start_viewer(run.path))
    wait_loaded(page)
    before = page.locator("#timeline li.ev").count()
    page.evaluate("window.__sameDocument = true")

    run.append_event(kind="agent_text", text="a line that arrived while the page was open")
    page.wait_for_selector("#timeline li.ev.agent_text >> text=a line that arrived while the page was open")
    run.append_event(kind="script_started", detail="scratch/scripts/second.py")
    (run.path / "scratch" / "scripts" / "second.py").write_text("print('second')\n")
    page.wait_for_selector("#timeline li.ev.script_started >> text=scratch/scripts/second.py")
    page.wait_for_selector("#scripts summary >> text=scratch/scripts/second.py")  # panels refresh too

    assert page.locator("#timeline li.ev").count() == before + 2
    assert page.evaluate("window.__sameDocument") is True  # no reload happened
    assert page.problems == []


def test_folder_page_lists_runs_and_links_to_each(recorded_run, start_viewer, open_page) -> None:
    run = recorded_run
    page = open_page(start_viewer(run.path.parent))
    link = page.locator(f"#runs a >> text={run.path.name}")
    link.wait_for()
    row = page.locator("#runs tr.run")
    assert row.count() == 1
    assert run.question in row.text_content() and "completed" in row.text_content()
    link.click()
    page.wait_for_url(f"**/run/{run.path.name}/")
    wait_loaded(page)
    assert page.text_content("#answer-text").strip() == str(run.expected)
    assert page.locator("#subcalls tr.call").count() == run.subcalls
    assert page.problems == []
