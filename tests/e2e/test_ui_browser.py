"""The web UI at :9070/ui/ in a real headless Chromium against a real stack (broker, processor, ingress, deployment).

The admin requires a token here, as in production: the UI's files load without it, the user pastes it,
and every API call carries it. The browser is Debian's chromium (scripts/install-browser.sh), driven by
playwright; the test skips, saying why, only where no browser is installed. Set
KEYSTATE_UI_SCREENSHOT=PATH to keep the journal page's screenshot (docs/ui-journal.png comes from here).
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from harness import Stack, free_port, http
from png_pixels import read_png

pytestmark = pytest.mark.integration

CHROMIUM = Path(os.environ.get("KEYSTATE_TEST_CHROMIUM", "/usr/bin/chromium"))
# Without the background-networking flags Chromium keeps calling home, which a closed network refuses.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SERVICES = str(Path(__file__).with_name("_ui_services.py"))
TOKEN = "ui-test-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# The failure background of app.css (--bad-bg): a failed journal entry is painted with it.
FAILURE_BACKGROUND = (0xFD, 0xEC, 0xEC)
T = TypeVar("T")


def _playwright() -> Any:
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: run scripts/install-browser.sh as root (apt-get install chromium), "
                    "or point KEYSTATE_TEST_CHROMIUM at a Chromium binary")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed: run make install (it is in the dev extra)")
    return sync_playwright


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    sync_playwright = _playwright()
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            tab.on("pageerror", lambda exc: errors.append(str(exc)))
            tab.set_default_timeout(30_000)
            yield tab
            assert not errors, f"the UI raised in the browser: {errors}"
        finally:
            browser.close()


@pytest.fixture
def ui_stack(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Stack:
    """processor + ingress whose admin requires TOKEN + the UI test's deployment, registered."""
    monkeypatch.setenv("KEYSTATE_ADMIN_TOKEN", TOKEN)
    stack.processor("a")
    stack.ingress()
    port = free_port()
    stack.deployment(SERVICES, port, name="ui-deployment")
    registered = http("POST", f"{stack.admin_url}/deployments", {"uri": f"http://127.0.0.1:{port}"}, headers=AUTH)
    assert registered.status in (200, 201), registered.body
    return stack


def _wait(what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.2)


def _query(stack: Stack, sql: str) -> list[dict[str, Any]]:
    resp = http("POST", f"{stack.admin_url}/query", {"query": sql}, headers={**AUTH, "Accept": "application/json"})
    assert resp.status == 200, f"POST /query answered {resp.status}: {resp.body[:300]!r}"
    return resp.json()["rows"]


def _completed(stack: Stack, invocation_id: str) -> dict[str, Any] | None:
    rows = _query(stack, f"SELECT * FROM sys_invocation WHERE id = '{invocation_id}'")
    return rows[0] if rows and rows[0]["status"] == "completed" else None


def _invoke(stack: Stack, path: str, body: Any) -> tuple[int, str, Any]:
    resp = http("POST", f"{stack.url}/{path}", body)
    return resp.status, resp.headers["x-restate-id"], resp.json()


def _open_with_token(page: Any, stack: Stack) -> None:
    """Open the UI as a new user: it asks for the token, the user pastes it."""
    page.goto(f"{stack.admin_url}/ui")
    page.locator("#notice.error").wait_for()
    assert "requires a token" in page.locator("#notice").inner_text()
    page.locator("#token-input").fill(TOKEN)
    page.locator("#token-form button[type=submit]").click()
    page.locator("#invocations").wait_for()


def _check_screenshot(png: bytes, journal_box: dict[str, float] | None) -> None:
    image = read_png(png)
    assert len(png) > 20_000, f"the screenshot has only {len(png)} bytes"
    assert (image.width, image.height) >= (1280, 800)
    assert len(image.colours()) > 50, "the screenshot is (nearly) one colour: the page did not render"
    assert journal_box is not None and journal_box["width"] > 300 and journal_box["height"] > 150, journal_box
    # The stylesheet applied: the failed entries are painted with the failure background.
    assert image.share_near(FAILURE_BACKGROUND) > 0.01


def test_ui_lists_invocations_shows_a_journal_timeline_and_cancels(page: Any, ui_stack: Stack) -> None:
    stack = ui_stack
    status, worked, answer = _invoke(stack, "Desk/alice/work", "hello")
    assert (status, answer) == (200, "hello: 84")
    status, failed, _ = _invoke(stack, "Checkout/pay", 100)
    assert status == 402
    status, waiting, _ = _invoke(stack, "Desk/carol/wait/send", 10)
    assert status == 202
    _wait(f"{worked} completed in sys_invocation", lambda: _completed(stack, worked))
    _wait(f"{failed} completed in sys_invocation", lambda: _completed(stack, failed))
    _wait(f"{waiting} suspended", lambda: _query(stack, f"SELECT id FROM sys_invocation WHERE id = '{waiting}' AND status = 'suspended'") or None)

    _open_with_token(page, stack)

    # The invocations table lists all three, the failed one marked.
    for invocation_id in (worked, failed, waiting):
        page.locator(f"#invocations tr[data-id='{invocation_id}']").wait_for()
    assert "Desk/alice/work" in page.locator(f"tr[data-id='{worked}']").inner_text()
    assert "failed" in (page.locator(f"tr[data-id='{failed}']").get_attribute("class") or "")
    assert page.locator(f"tr[data-id='{waiting}'] .badge").get_attribute("data-status") == "suspended"
    # The table refreshes by itself: a new invocation appears without a reload.
    _, later, _ = _invoke(stack, "Desk/dave/work", "later")
    page.locator(f"#invocations tr[data-id='{later}']").wait_for()
    # The key filter, typed by the user (a quote in it is data, not SQL).
    page.locator("#filters input[name=key]").fill("o'neil")
    page.locator("#filters button[type=submit]").click()
    page.locator("#invocations-summary", has_text="No invocations match").wait_for()
    page.locator("#filters input[name=key]").fill("alice")
    page.locator("#filters button[type=submit]").click()
    page.locator(f"#invocations tr[data-id='{worked}']").wait_for()
    assert page.locator("#invocations tbody tr").count() == 1
    assert not page.locator("#notice.error").is_visible()
    page.goto(f"{stack.admin_url}/ui/#/invocations")
    # The service filter narrows the table to Checkout's invocation.
    page.locator("#filters select[name=service]").select_option("Checkout")
    page.locator(f"#invocations tr[data-id='{failed}']").wait_for()
    page.locator(f"#invocations tr[data-id='{worked}']").wait_for(state="detached")
    assert "service=Checkout" in page.url

    # The failed invocation's journal: every entry in order, the failing step and the output highlighted.
    page.locator(f"tr[data-id='{failed}'] a").first.click()
    page.locator("#journal li.entry[data-type='Output']").wait_for()
    expected = _query(stack, f"SELECT index, entry_type, name FROM sys_journal WHERE id = '{failed}' ORDER BY index")
    entries = page.locator("#journal li.entry")
    assert entries.count() == len(expected)
    shown = [(int(e.get_attribute("data-index")), e.get_attribute("data-type")) for e in entries.all()]
    assert shown == [(row["index"], row["entry_type"]) for row in expected]
    charge = page.locator("#journal li.entry", has_text="charge")
    assert "failed" in (charge.get_attribute("class") or "")
    assert "card declined for r-100" in charge.inner_text()
    assert "failed" in (page.locator("#journal li.entry[data-type='Output']").get_attribute("class") or "")
    assert "card declined for r-100" in page.locator("#invocation-failure").inner_text()
    assert "Checkout/pay" in page.locator("#invocation").inner_text()

    png = page.screenshot(full_page=True)
    _check_screenshot(png, page.locator("#journal").bounding_box())
    keep = os.environ.get("KEYSTATE_UI_SCREENSHOT")
    if keep:
        Path(keep).write_bytes(png)

    # The successful one: its steps and its output value.
    page.goto(f"{stack.admin_url}/ui/#/invocation/{worked}")
    page.locator("#journal li.entry[data-type='Output']").wait_for()
    text = page.locator("#journal").inner_text()
    assert "fetch" in text and "double" in text and "hello: 84" in text
    assert not page.locator("#journal li.entry.failed").count()

    # Cancel the sleeping one from its page, confirming in the dialog; the admin API shows it cancelled.
    page.goto(f"{stack.admin_url}/ui/#/invocation/{waiting}")
    page.locator("#actions button[data-action='cancel']").click()
    page.locator("dialog#confirm[open]").wait_for()
    page.locator("#confirm-yes").click()
    page.locator("#notice:not(.error)").wait_for()
    done = _wait(f"{waiting} cancelled", lambda: _admin_completed(stack, waiting))
    assert done["completion_status"] == "CANCELLED"
    # ... and the page, refreshing by itself, shows it completed.
    page.locator("#invocation .badge[data-status='completed']").wait_for()


def _admin_completed(stack: Stack, invocation_id: str) -> dict[str, Any] | None:
    resp = http("GET", f"{stack.admin_url}/invocations/{invocation_id}", headers=AUTH)
    body = resp.json() if resp.status == 200 else None
    return body if body and body["status"] == "COMPLETED" else None


def test_ui_edits_an_objects_state_through_the_log(page: Any, ui_stack: Stack) -> None:
    stack = ui_stack
    assert _invoke(stack, "Desk/alice/work", "hello")[0] == 200

    _open_with_token(page, stack)
    page.goto(f"{stack.admin_url}/ui/#/state/Desk/alice")
    value = page.locator("#state-table tr[data-key='note'] textarea")
    value.wait_for()
    assert value.input_value() == json.dumps("hello")
    value.fill(json.dumps("edited in the UI"))
    page.locator("#state-save").click()
    page.locator("#confirm-yes").click()
    page.locator("#notice:not(.error)").wait_for()

    # Applied by the owning processor: the object's own handler reads the new value.
    def note() -> str | None:
        resp = http("POST", f"{stack.url}/Desk/alice/note", None)
        return resp.json() if resp.status == 200 and resp.json() == "edited in the UI" else None

    assert _wait("the edited state", note) == "edited in the UI"

    # The admin API reads state from the read model, which follows the changelog: it catches up.
    def admin_note() -> bytes | None:
        state = http("GET", f"{stack.admin_url}/services/Desk/state/alice", headers=AUTH).json()["state"]
        value = base64.b64decode(state.get("note", ""))
        return value if value != json.dumps("hello").encode() else None

    assert _wait("the edit in GET /services/Desk/state/alice", admin_note) == json.dumps("edited in the UI").encode()
    # ... and so does the page, reloaded.
    page.reload()
    page.locator("#state-table tr[data-key='note'] textarea").wait_for()
    assert page.locator("#state-table tr[data-key='note'] textarea").input_value() == json.dumps("edited in the UI")
