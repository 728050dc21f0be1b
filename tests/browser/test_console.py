"""The console at /ui in headless Chromium (Debian's, driven by Playwright's Python package).

Browser downloads are impossible here: Playwright launches ``/usr/bin/chromium`` through
``executable_path``. Without it the tests skip, except under ``CI=true``, where they fail.
Screenshots of every step go to ``test-artifacts/console/``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flowhost.testing import FakeLLM, Reply

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "console"
CHROMIUM = Path(os.environ.get("FLOWHOST_CHROMIUM", "/usr/bin/chromium"))
IN_CI = os.environ.get("CI", "").lower() == "true"
TOKEN = "console-token-123"
HEX32 = re.compile(r"^[0-9a-f]{32}$")
# as the machine's notes advise: without these, Chromium calls home and the closed network
# refuses it, many times a second
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
APPS = {
    "chat": ROOT / "examples" / "flows" / "chat",
    "typed": ROOT / "tests" / "flows_fixtures" / "served" / "typed",
    "fail": ROOT / "tests" / "flows_fixtures" / "served" / "fail",
}


def _need(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what}; CI must run the browser tests (see .ci/run)")
    pytest.skip(what)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        _need(f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("the playwright package is missing (pip install -e '.[dev]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1366, "height": 820})
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    problems: list[str] = []
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    yield pg
    context.close()
    assert problems == []


@pytest.fixture
def console(
    server_factory: Callable[..., Any], chat_llm_env: dict[str, str], tmp_path: Path
) -> Any:
    apps = tmp_path / "apps"
    for name, src in APPS.items():
        shutil.copytree(src, apps / name)
    return server_factory(apps, "--default-app", "chat", token=TOKEN, env=chat_llm_env)


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def sign_in(page: Any, server: Any) -> None:
    page.goto(f"{server.url}/ui")
    page.wait_for_selector("#view-signin:not([hidden])")
    page.fill("#token", TOKEN)
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#view-playground:not([hidden])")


def send(page: Any, text: str) -> None:
    page.fill("#chat-input", text)
    page.press("#chat-input", "Enter")


def last_answer(page: Any) -> Any:
    return page.locator(".bubble.assistant").last


def wait_answered(page: Any, count: int) -> None:
    page.wait_for_function(
        "n => document.querySelectorAll('#transcript .bubble.assistant .trace-link').length === n",
        arg=count,
    )


def test_chat_sessions_and_traces(page: Any, console: Any, llm: FakeLLM) -> None:
    # sign in: a wrong token is refused with a visible error, the right one gets in
    page.goto(f"{console.url}/ui")
    page.wait_for_selector("#view-signin:not([hidden])")
    shot(page, "01-sign-in")
    page.fill("#token", "wrong-token")
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#error:not([hidden])")
    assert "401" in page.inner_text("#error-text")
    page.fill("#token", TOKEN)
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#view-playground:not([hidden])")
    assert page.input_value("#app-select") == "chat"
    assert page.inner_text("#session-id") == "new"

    # chat: the answer is seen while it streams, then complete
    llm.enqueue(Reply(chunks=["Streaming ", "is ", "visible ", "here."], chunk_delay=0.4))
    send(page, "Hello console")
    page.wait_for_function(
        "() => { const b = [...document.querySelectorAll('.bubble.assistant')].pop();"
        " return b && b.classList.contains('streaming')"
        " && b.querySelector('.bubble-text').textContent.length > 0; }"
    )
    partial = last_answer(page).locator(".bubble-text").inner_text()
    assert partial
    assert partial != "Streaming is visible here."
    shot(page, "02-streaming")
    wait_answered(page, 1)
    assert last_answer(page).locator(".bubble-text").inner_text() == "Streaming is visible here."
    first_session = page.inner_text("#session-id")
    assert HEX32.match(first_session)

    send(page, "and again")
    wait_answered(page, 2)
    assert last_answer(page).locator(".bubble-text").inner_text() == "echo: and again"
    assert page.inner_text("#session-id") == first_session
    shot(page, "03-chat")

    # a new session
    page.click("#new-session")
    assert page.inner_text("#session-id") == "new"
    assert page.locator("#transcript .bubble").count() == 0
    send(page, "a fresh start")
    wait_answered(page, 1)
    second_session = page.inner_text("#session-id")
    assert HEX32.match(second_session)
    assert second_session != first_session

    # the session list and one session's messages
    page.click("#nav a[data-view=sessions]")
    page.wait_for_selector(f"#sessions-table tr[data-session='{first_session}']")
    assert page.locator("#sessions-table tbody tr").count() == 2
    shot(page, "04-sessions")
    page.click(f"#sessions-table tr[data-session='{first_session}'] a")
    page.wait_for_selector("#view-session:not([hidden]) .message")
    assert page.inner_text("#session-title") == "Hello console"
    assert page.locator("#messages .message").count() == 2
    shot(page, "05-session")

    # the first turn's trace, as a tree: the run and its llm node
    page.locator("#messages .message").first.locator(".trace-link").click()
    page.wait_for_selector("#view-trace:not([hidden]) .span-row")
    assert page.locator("#trace-tree .span-row").count() == 2
    page.click("#trace-tree .span-row >> nth=1")
    detail = page.inner_text("#span-detail")
    assert "fake-chat" in detail
    assert "Hello console" in detail
    assert "PROMPT" in detail.upper()
    shot(page, "06-trace")

    page.click("#nav a[data-view=traces]")
    page.wait_for_selector("#traces-table tr[data-trace]")
    assert page.locator("#traces-table tr[data-trace]").count() == 3
    shot(page, "07-traces")

    # delete a session (confirming the dialog)
    page.click("#nav a[data-view=sessions]")
    page.wait_for_selector(f"#sessions-table tr[data-session='{first_session}']")
    page.once("dialog", lambda d: d.accept())
    page.click(f"#sessions-table tr[data-session='{first_session}'] button.danger")
    page.wait_for_selector(f"#sessions-table tr[data-session='{first_session}']", state="detached")
    assert page.locator("#sessions-table tr[data-session]").count() == 1
    resp = httpx.get(
        f"{console.url}/api/v1/history/sessions/{first_session}",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert resp.status_code == 404


def test_form_flows_and_failures(page: Any, console: Any) -> None:
    sign_in(page, console)
    page.select_option("#app-select", "typed")
    page.wait_for_selector("#form-run:not([hidden])")
    assert page.locator("#run-fields [data-type]").count() == 6
    page.fill("#input-question", "what types?")
    page.fill("#input-count", "3")
    page.check("#input-flag")
    page.fill("#input-tags", '["a", "b"]')
    page.click("#run-button")
    page.wait_for_selector("#run-status.status-completed")
    output = page.inner_text("#run-output")
    assert '"count": [\n      "int",\n      3' in output
    assert '"flag": [\n      "bool",\n      true' in output
    assert "describe" in page.inner_text("#run-nodes")
    trace_href = page.get_attribute("#run-trace", "href") or ""
    assert HEX32.match(trace_href.rsplit("/", 1)[-1])
    shot(page, "08-form")

    # a bad JSON input is refused in the page, with the reason shown
    page.fill("#input-meta", "{not json")
    page.click("#run-button")
    page.wait_for_selector("#error:not([hidden])")
    assert "meta" in page.inner_text("#error-text")
    page.click("#error-close")

    # a failing flow: the error is shown in the answer, and its trace is marked failed
    page.select_option("#app-select", "fail")
    send(page, "why?")
    page.wait_for_selector(".bubble.assistant.failed .trace-link")
    assert "unknowable" in last_answer(page).inner_text()
    last_answer(page).locator(".trace-link").click()
    page.wait_for_selector("#trace-tree .span-row.status-failed")
    page.click("#trace-tree .span-row.status-failed >> nth=-1")
    assert "unknowable" in page.inner_text("#span-detail .span-error")
    shot(page, "09-failed-trace")
