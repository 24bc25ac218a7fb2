"""The live page in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``) driven through selenium, against a real local server with the real model,
while two tenants' calls play as real Twilio Media Streams, both asking for interim results.

The server runs on this test's event loop, so every browser call (selenium blocks on
chromedriver) goes through a thread: the server keeps answering the page meanwhile."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from callscribe.testing.simulate import PlayedCall, WebhookReceiver, load_sample_call, play_call
from tests.conftest import RunningServer
from tests.serve_support import TwilioCall, agent_lines

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# The sample call twice as fast as real time. (Four times, as the end-to-end test plays it,
# leaves a second or less of wall time per utterance: about what an interim decode may take on
# a busy machine, and one that ends after its utterance is not shown.)
SPEED = 2.0

# What the page shows, read in one go.
PAGE_STATE = """
const all = (selector, root) => [...(root || document).querySelectorAll(selector)];
return {
  signInShown: !document.getElementById("sign-in").hidden,
  callsShown: !document.getElementById("calls-view").hidden,
  connection: document.getElementById("connection").textContent,
  text: document.body.innerText,
  calls: all("article.call").map((call) => ({
    guid: call.dataset.guid,
    status: call.querySelector(".call-status").textContent,
    lines: all(".line", call).map((line) => {
      const text = line.querySelector(".text");
      const region = line.closest("[aria-live]");
      return {
        role: line.closest(".transcript").dataset.role,
        kind: line.classList.contains("interim") ? "interim" : "final",
        text: text.textContent,
        messageId: line.dataset.messageId || null,
        liveRegion: region ? region.getAttribute("aria-live") : null,
        fontStyle: getComputedStyle(text).fontStyle,
      };
    }),
  })),
};
"""

# Every interim line the page shows or updates, noted as it happens (a look at the page every
# few hundred milliseconds could miss a line that its final replaced in between).
WATCH_INTERIM_LINES = """
window.interimLinesShown = [];
const note = (line) => {
  const text = line.querySelector(".text");
  const region = line.closest("[aria-live]");
  window.interimLinesShown.push({
    guid: line.closest("article.call").dataset.guid,
    role: line.closest(".transcript").dataset.role,
    utterance: line.dataset.utterance,
    text: text.textContent,
    stable: line.querySelector(".stable").textContent,
    fontStyle: getComputedStyle(text).fontStyle,
    liveRegion: region ? region.getAttribute("aria-live") : null,
    afterItsFinal: Boolean(line.parentElement.querySelector(
      `.line.final[data-utterance="${CSS.escape(line.dataset.utterance)}"]`)),
  });
};
new MutationObserver((mutations) => {
  for (const mutation of mutations) {
    for (const node of mutation.addedNodes) {
      if (!(node instanceof Element)) continue;
      const line = node.matches(".line.interim") ? node : node.closest(".line.interim");
      if (line && line.isConnected) note(line);
    }
  }
}).observe(document.getElementById("calls"), { childList: true, subtree: true });
"""

# WCAG's contrast ratio of each visible element's text against the first opaque background
# behind it.
CONTRASTS = """
const rgb = (colour) => (colour.match(/[\\d.]+/g) || []).map(Number);
const luminance = ([r, g, b]) => {
  const channel = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
  return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
};
const background = (element) => {
  for (let e = element; e; e = e.parentElement) {
    const parts = rgb(getComputedStyle(e).backgroundColor);
    if (parts.length === 3 || (parts.length === 4 && parts[3] > 0.99)) return parts.slice(0, 3);
  }
  return [255, 255, 255];
};
return [...document.querySelectorAll(arguments[0])]
  .filter((e) => e.offsetParent !== null && e.textContent.trim())
  .map((e) => {
    const [a, b] = [luminance(rgb(getComputedStyle(e).color)), luminance(background(e))];
    return [e.className || e.tagName, (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)];
  });
"""


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not installed: ./scripts/test.sh installs the Debian "
            "packages chromium and chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,1000")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The browser, from the event loop: each call in a thread, and every look at the page
    checks that the other tenant's call never shows."""

    def __init__(self, driver: WebDriver, never_shown: list[str]) -> None:
        self.driver = driver
        self.never_shown = never_shown
        self.looks = 0

    async def do(self, action: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(action, *args)

    async def state(self) -> dict[str, Any]:
        state = await self.do(self.driver.execute_script, PAGE_STATE)
        self.looks += 1
        for guid in self.never_shown:
            assert guid not in state["text"], f"another tenant's call {guid} is on the page"
            assert guid not in [call["guid"] for call in state["calls"]]
        return state

    async def until(
        self, check: Callable[[dict[str, Any]], bool], timeout_s: float, what: str
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            state = await self.state()
            if check(state):
                return state
            assert time.monotonic() < deadline, f"{what}: not within {timeout_s:g} s: {state}"
            await asyncio.sleep(0.2)

    async def active_element_id(self) -> str:
        return await self.do(self.driver.execute_script, "return document.activeElement.id")

    async def screenshot(self, path: Path) -> Path:
        assert await self.do(self.driver.save_screenshot, str(path))
        return path


def _call(state: dict[str, Any], guid: str) -> dict[str, Any] | None:
    return next((call for call in state["calls"] if call["guid"] == guid), None)


def _lines(state: dict[str, Any], guid: str, kind: str) -> list[dict[str, Any]]:
    call = _call(state, guid)
    return [line for line in (call["lines"] if call else []) if line["kind"] == kind]


async def _wait_for_quiet(receiver: WebhookReceiver, quiet_s: float = 2.0) -> None:
    seen, since = -1, time.monotonic()
    deadline = since + 90
    while time.monotonic() < deadline:
        if len(receiver.messages) != seen:
            seen, since = len(receiver.messages), time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        await asyncio.sleep(0.1)


async def test_the_live_page_shows_a_call_as_it_is_transcribed_and_no_other_tenants(
    server_factory: Callable[..., Awaitable[RunningServer]],
    receiver: WebhookReceiver,
    browser: WebDriver,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    server = await server_factory(receiver.url)
    acme_key = server.issue_key("acme")
    acme_api, globex_api = server.client("acme"), server.client("globex")
    sample = load_sample_call()
    acme = PlayedCall(call_sid="CA" + uuid.uuid4().hex, speed=SPEED)
    globex = PlayedCall(call_sid="CA" + uuid.uuid4().hex, speed=SPEED)
    page = Page(browser, never_shown=[globex.call_sid])

    # Signed out, the page asks for a key; the form is labelled and keyboard operable.
    await page.do(browser.get, f"{server.base_url}/live")
    await page.until(lambda s: s["signInShown"], 15, "the sign-in form")
    basics = await page.do(
        browser.execute_script,
        "return [document.documentElement.lang,"
        " [...document.querySelectorAll('input')].every((i) => i.labels.length > 0)]",
    )
    assert basics == ["en", True]
    deadline = time.monotonic() + 10
    while await page.active_element_id() != "api-id":
        assert time.monotonic() < deadline, "the API id field never had the focus"
        await asyncio.sleep(0.1)
    field = await page.do(lambda: browser.switch_to.active_element)
    await page.do(field.send_keys, acme_key.api_id, Keys.TAB)
    assert await page.active_element_id() == "api-secret"
    outline = await page.do(
        browser.execute_script,
        "const s = getComputedStyle(document.activeElement);"
        " return [s.outlineStyle, parseFloat(s.outlineWidth)]",
    )
    assert outline[0] != "none" and outline[1] >= 2, f"no visible focus: {outline}"
    field = await page.do(lambda: browser.switch_to.active_element)
    await page.do(field.send_keys, acme_key.api_secret, Keys.ENTER)
    await page.until(
        lambda s: s["callsShown"] and s["connection"].startswith("Connected"),
        15,
        "signed in and connected",
    )

    # The key went for a session cookie: HttpOnly, SameSite=Strict; nothing of it stays.
    cookies = {c["name"]: c for c in await page.do(browser.get_cookies)}
    session = cookies["callscribe_live_session"]
    assert session["httpOnly"] is True and session["sameSite"] == "Strict"
    kept = await page.do(
        browser.execute_script,
        "return [localStorage.length, sessionStorage.length, document.cookie,"
        " document.documentElement.outerHTML.includes(arguments[0]),"
        " [...document.querySelectorAll('input')].map((i) => i.value).join('')]",
        acme_key.api_secret,
    )
    assert kept == [0, 0, "", False, ""]

    # Two tenants' calls at once, both asking for interim results; the page is acme's.
    await page.do(browser.execute_script, WATCH_INTERIM_LINES)
    interim_params = {"interimResults": True}
    calls = [
        asyncio.ensure_future(
            play_call(
                await acme_api.stream_url(),
                sample,
                acme_api,
                played=acme,
                autotranscribe_params=interim_params,
            )
        ),
        asyncio.ensure_future(
            play_call(
                await globex_api.stream_url(),
                sample,
                globex_api,
                played=globex,
                autotranscribe_params=interim_params,
            )
        ),
    ]
    await page.until(lambda s: _call(s, acme.call_sid) is not None, 30, "acme's call listed")
    state = await page.until(
        lambda s: bool(_lines(s, acme.call_sid, "final")), 60, "the first final line"
    )
    first_final = _lines(state, acme.call_sid, "final")[0]
    assert first_final["role"] == "agent" and first_final["fontStyle"] == "normal"

    # Both calls play to their end; the page is looked at all along, and the first look
    # that finds an interim line on it keeps a picture of it.
    interim_shot: Path | None = None
    while not all(call.done() for call in calls):
        state = await page.state()
        if interim_shot is None and _lines(state, acme.call_sid, "interim"):
            interim_shot = await page.screenshot(tmp_path / "live-page-interim.png")
        await asyncio.sleep(0.2)
    for call in calls:
        call.result()
    await _wait_for_quiet(receiver)

    # Every utterance of acme's call is on the page as final text: the webhook's message,
    # by the same id, in its speaker's column, with the same (redacted) text.
    delivered = [m for m in receiver.messages if m.body["externalConversationId"] == acme.call_sid]
    assert len(delivered) >= 8
    assert any(m.body["externalConversationId"] == globex.call_sid for m in receiver.messages)
    expected = {
        m.headers["x-callscribe-message-id"]: (
            m.body["sender"]["role"],
            " ".join(u["text"] for u in m.body["autotranscribeResponse"]["utterance"]),
        )
        for m in delivered
    }
    state = await page.until(
        lambda s: (
            {line["messageId"] for line in _lines(s, acme.call_sid, "final")} == set(expected)
            and _call(s, acme.call_sid)["status"] == "Ended"
        ),
        30,
        "every transcript of acme's call on the page, and the call ended",
    )
    finals = _lines(state, acme.call_sid, "final")
    assert {line["messageId"]: (line["role"], line["text"]) for line in finals} == expected
    assert len(finals) == len(expected)  # none twice
    assert [call["guid"] for call in state["calls"]] == [acme.call_sid]
    # Redaction: the PIN is masked on the page as in the webhook's message.
    assert any("#" in line["text"] for line in finals if line["role"] == "customer")
    assert "4729" not in state["text"] and "four seven two nine" not in state["text"].lower()

    # The interim lines came from the call itself, as it was spoken: grey italic text in the
    # speaker's log, each shown before its utterance's final line (which has the same
    # utterance id) and replaced by it; none of the other tenant's.
    shown = await page.do(browser.execute_script, "return window.interimLinesShown")
    assert shown, "no interim line was shown"
    assert {line["guid"] for line in shown} == {acme.call_sid}
    final_utterances = await page.do(
        browser.execute_script,
        "return [...document.querySelectorAll('.line.final')].map((l) => l.dataset.utterance)",
    )
    for line in shown:
        assert line["text"].strip() and line["text"].startswith(line["stable"]), line
        assert line["fontStyle"] == "italic" and line["liveRegion"] == "polite", line
        assert not line["afterItsFinal"], line
        assert line["utterance"] in final_utterances, line
        assert line["utterance"].startswith(line["role"] + "-"), line
        assert not re.search(r"\d{3,}", line["text"]), line  # redacted as the finals are
    assert not _lines(state, acme.call_sid, "interim"), "an interim line outlived its final"

    contrasts = await page.do(
        browser.execute_script,
        CONTRASTS,
        ".line .text, .line .time, .party-heading, .call-meta, .call-status, .connection, button",
    )
    assert contrasts and all(ratio >= 4.5 for _, ratio in contrasts), contrasts

    shot = await page.screenshot(tmp_path / "live-page.png")
    for name, path in (("screenshot", shot), ("screenshot_interim", interim_shot)):
        if path is not None:
            record_property(name, str(path))
            print(f"{name}: {path}")

    # Signing out clears the session.
    sign_out = await page.do(browser.find_element, By.ID, "sign-out")
    await page.do(sign_out.send_keys, Keys.ENTER)
    await page.until(lambda s: s["signInShown"] and not s["callsShown"], 10, "signed out")
    names = {c["name"] for c in await page.do(browser.get_cookies)}
    assert "callscribe_live_session" not in names

    # Nothing the page did broke its policy or failed (a CSP refusal is logged as SEVERE).
    problems = [e for e in await page.do(browser.get_log, "browser") if e["level"] == "SEVERE"]
    assert not problems, problems
    assert page.looks > 20


async def test_the_page_opens_a_stream_elsewhere_with_a_token_as_in_aws(
    server_factory: Callable[..., Awaitable[RunningServer]],
    receiver: WebhookReceiver,
    browser: WebDriver,
) -> None:
    """The page as the API Lambda serves it: /live/config names a stream it must open with a
    token (there, the WebSocket API; here this server's own stream, which takes tokens too),
    so it gets one for its session, opens the stream with the page's filter, and asks
    /live/calls for the calls already live. One call of the tenant's two is watched."""
    server = await server_factory(receiver.url)
    assert server.app is not None
    services = server.app.state.live
    services.events_url = f"{server.ws_base}/callscribe/v1/live/events"
    key = server.issue_key("acme")
    watched = TwilioCall(server.client("acme"))
    await watched.open()
    other = TwilioCall(server.client("acme"))
    await other.open()
    page = Page(browser, never_shown=[other.call_sid])

    await page.do(browser.get, f"{server.base_url}/live?guid={watched.call_sid}&namespace=twilio")
    await page.until(lambda s: s["signInShown"], 15, "the sign-in form")
    await page.do(browser.find_element(By.ID, "api-id").send_keys, key.api_id)
    await page.do(browser.find_element(By.ID, "api-secret").send_keys, key.api_secret, Keys.ENTER)
    state = await page.until(
        lambda s: s["connection"].startswith("Connected") and _call(s, watched.call_sid),
        20,
        "connected, showing the call that was live before",
    )
    assert state["connection"] == f"Connected: showing call {watched.call_sid} only."
    asked = await page.do(
        browser.execute_script,
        "return performance.getEntriesByType('resource').map((e) => new URL(e.name).pathname)",
    )
    assert "/live/config" in asked and "/live/session/token" in asked and "/live/calls" in asked
    assert server.runtime.live_hub is not None and server.runtime.live_hub.viewers("acme") == 1

    # The call's first line, transcribed, reaches the page through the token's stream.
    await watched.send_line(agent_lines(watched.call)[0], speed=1.0)
    await other.send_line(agent_lines(other.call)[0], speed=1.0)
    await page.until(lambda s: bool(_lines(s, watched.call_sid, "final")), 60, "its final")
    await watched.close()
    await page.until(lambda s: _call(s, watched.call_sid)["status"] == "Ended", 30, "ended")
    await other.close()
