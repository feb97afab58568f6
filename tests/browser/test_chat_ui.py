"""The chat page in a real browser (Playwright + Debian's Chromium) against the real local stand-ins."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from graph.backends import Backends
from tests.browser.appserver import SwitchableBackends
from tests.browser.conftest import MEASUREMENTS

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    # Gradio's queue calls pandas APIs that pandas 3 deprecates; not ours to fix.
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

INPUT = "#hc-input textarea"
# The message box's Send and Stop (Gradio's multimodal box gives Stop no data-testid, only this class).
SEND = "#hc-input button.submit-button"
STOP = "#hc-input button.stop-button"

# Records, from just before Send, every change of the last answer: (ms since Send, text length, final?).
# Times an answer on screen from the Enter key (its keydown): the first token (in Gradio's bubble, or in
# the page's own early bubble, ui.page.EARLY_TOKENS), then each update of Gradio's bubble.
WATCH = """(n0) => {
  const hc = window.__hc = {start: performance.now(), first: null, lens: [], early: false};
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !hc.keyed) { hc.keyed = true; hc.start = e.timeStamp; }
  }, {capture: true, once: true});
  new MutationObserver(() => {
    const early = document.querySelector('#hc-chatbot .hc-live');
    if (hc.first === null && early && early.innerText.trim()) {
      hc.first = performance.now() - hc.start;
      hc.early = true;
    }
    const bots = document.querySelectorAll('#hc-chatbot [data-testid="bot"]');
    if (bots.length <= n0) return;
    const el = bots[bots.length - 1];
    const text = el.innerText.trim();
    if (!text) return;
    const t = performance.now() - hc.start;
    if (hc.first === null) hc.first = t;
    const last = hc.lens[hc.lens.length - 1];
    const final = !!el.querySelector('.hc-meta');
    if (!last || last[1] !== text.length || last[2] !== final) hc.lens.push([t, text.length, final]);
  }).observe(document.querySelector('#hc-chatbot'), {subtree: true, childList: true, characterData: true});
}"""


def bots(page: Any) -> Any:
    return page.locator("#hc-chatbot").get_by_test_id("bot")


def send(page: Any, text: str, *, watch: bool = False) -> int:
    """Type and send `text`; returns how many answers were on screen before."""
    before = bots(page).count()
    box = page.locator(INPUT)
    expect(box).to_be_enabled()
    box.fill(text)
    if watch:
        page.evaluate(WATCH, before)
    box.press("Enter")
    return before


def wait_answer(page: Any, before: int) -> Any:
    """Wait until the answer after `before` is final (meta line shown) and the input is usable again."""
    answer = bots(page).nth(before)
    expect(answer.locator(".hc-meta")).to_be_visible()
    expect(page.locator(STOP)).to_be_hidden()  # found while answers stream: test_stop_cancels_...
    expect(page.locator(SEND)).to_be_visible()  # and Send back in its place
    expect(page.locator(INPUT)).to_be_enabled()
    return answer


def turn_of(answer: Any) -> str:
    """The `hc-turn-<id>` class naming the turn an answer ends."""
    classes = answer.locator(".hc-meta").get_attribute("class") or ""
    return next(c for c in classes.split() if c.startswith("hc-turn-"))


def pick_model(page: Any, label: str) -> None:
    page.get_by_role("combobox", name="Model").click()
    page.get_by_role("option", name=label).click()


def test_round_trip_streams_and_says_who_answered(page: Any, artifacts: Any) -> None:
    before = send(page, "What is the capital of France?", watch=True)
    answer = wait_answer(page, before)
    expect(answer).to_contain_text("Paris")
    meta = answer.locator(".hc-meta").inner_text()
    assert "Gemma stand-in" in meta and "chosen: gemma" in meta and "tok/s" in meta

    hc = page.evaluate("window.__hc")
    growing = [length for _, length, final in hc["lens"] if not final]
    assert len(set(growing)) >= 2, f"the answer did not grow on screen while streaming: {hc['lens']}"
    backend_ttft = float(re.search(r"first token (\d+) ms", meta).group(1))  # type: ignore[union-attr]
    MEASUREMENTS["send_to_first_token_on_screen_ms"] = round(hc["first"])
    MEASUREMENTS["backend_ttft_ms_same_turn"] = backend_ttft
    MEASUREMENTS["send_to_final_answer_on_screen_ms"] = round(hc["lens"][-1][0])
    assert hc["first"] < 5000

    # A second turn: warm caches (the first one pays one-off imports and connections).
    answer = wait_answer(page, send(page, "And the capital of Germany?", watch=True))
    hc = page.evaluate("window.__hc")
    meta = answer.locator(".hc-meta").inner_text()
    MEASUREMENTS["warm_send_to_first_token_on_screen_ms"] = round(hc["first"])
    MEASUREMENTS["warm_backend_ttft_ms_same_turn"] = float(
        re.search(r"first token (\d+) ms", meta).group(1)  # type: ignore[union-attr]
    )
    MEASUREMENTS["warm_send_to_final_answer_on_screen_ms"] = round(hc["lens"][-1][0])
    page.screenshot(path=str(artifacts / "chat-desktop.png"))


def test_model_choice_changes_the_backend(page: Any) -> None:
    page.get_by_role("combobox", name="Model").click()
    options = page.get_by_role("option")
    expect(options).to_have_count(3)
    # With the embedded defaults the picker names the stand-ins that answer, short enough never to be
    # cut; each one's hint says the model behind it, and what Auto does.
    assert [o.removeprefix("✓").strip() for o in options.all_inner_texts()] == [
        "Auto",
        "Gemma stand-in",
        "Gemini stand-in",
    ]
    assert [o.get_attribute("title") for o in options.all()] == [
        "Auto: picks Gemma or Gemini for each message",
        "Gemma stand-in: SmolLM2-135M-Instruct",
        "Gemini stand-in: SmolLM2-135M-Instruct",
    ]
    page.get_by_role("option", name="Gemini stand-in").click()
    answer = wait_answer(page, send(page, "Name one planet."))
    expect(answer.locator(".hc-meta")).to_contain_text("Gemini stand-in")
    expect(answer.locator(".hc-meta")).to_contain_text("chosen: gemini")
    pick_model(page, "Auto")
    answer = wait_answer(page, send(page, "Name one ocean."))
    expect(answer.locator(".hc-meta")).to_contain_text("auto:")


def test_conversation_survives_reload_then_rename_and_delete(page: Any) -> None:
    wait_answer(page, send(page, "Remember the word kiwi."))
    assert re.search(r"[?&]c=[0-9a-f]{32}\b", page.url), page.url  # the conversation's own address
    page.reload()
    entry = page.get_by_role("radio", name="Remember the word kiwi.")
    expect(entry).to_be_checked()  # the address reopened it
    users = page.locator("#hc-chatbot").get_by_test_id("user")
    expect(users).to_have_text(["Remember the word kiwi."], use_inner_text=True)
    expect(bots(page)).to_have_count(1)
    expect(bots(page).first.locator(".hc-meta")).to_contain_text("chosen: gemma")  # its footer too
    wait_answer(page, send(page, "Which word did I ask you to remember?"))  # continues the same one

    page.reload()
    expect(bots(page)).to_have_count(2)

    page.locator("#hc-title input").fill("Kiwi chat")
    page.locator("#hc-title input").press("Enter")
    expect(page.get_by_role("radio", name="Kiwi chat")).to_be_visible()
    expect(page.get_by_role("radio", name="Remember the word kiwi.")).to_have_count(0)

    page.locator("#hc-delete").click()
    page.locator("#hc-delete-cancel").click()  # changed my mind: nothing deleted
    expect(page.locator("#hc-delete-confirm")).to_be_hidden()
    expect(page.get_by_role("radio", name="Kiwi chat")).to_be_checked()
    page.locator("#hc-delete").click()
    page.locator("#hc-delete-confirm").click()
    expect(page.get_by_role("radio", name="Kiwi chat")).to_have_count(0)
    expect(bots(page)).to_have_count(0)
    expect(page).not_to_have_url(re.compile(r"[?&]c="))
    page.reload()
    page.locator("#hc-new").wait_for()
    expect(page.get_by_role("radio", name="Kiwi chat")).to_have_count(0)


def test_regenerate_and_edit_replace_the_last_turn(page: Any) -> None:
    first = turn_of(wait_answer(page, send(page, "Say hello to Ada.")))
    page.get_by_role("button", name="Retry").click()
    expect(bots(page).first.locator(f".hc-meta.{first}")).to_have_count(0)  # replaced...
    second = turn_of(wait_answer(page, 0))  # ...by a new answer
    assert second != first
    expect(bots(page)).to_have_count(1)

    page.locator("#hc-chatbot").get_by_role("button", name="Edit").click()
    page.locator("#hc-chatbot textarea").fill("Say hello to Grace.")
    page.locator("#hc-chatbot").get_by_role("button", name="Send", exact=True).click()
    users = page.locator("#hc-chatbot").get_by_test_id("user")
    expect(users).to_have_text(["Say hello to Grace."], use_inner_text=True)
    expect(bots(page).first.locator(f".hc-meta.{second}")).to_have_count(0)
    wait_answer(page, 0)
    expect(bots(page)).to_have_count(1)
    page.reload()  # the store has the edited turn only: one conversation, titled by the new message
    expect(page.get_by_role("radio", name="Say hello to Grace.")).to_be_visible()
    expect(page.get_by_role("radio", name="Say hello to Ada.")).to_have_count(0)
    page.get_by_role("radio", name="Say hello to Grace.").check()
    users = page.locator("#hc-chatbot").get_by_test_id("user")
    expect(users).to_have_text(["Say hello to Grace."], use_inner_text=True)


def test_backend_failure_shows_in_chat_and_next_message_works(
    page: Any, app_env: tuple[str, SwitchableBackends]
) -> None:
    _, backends = app_env
    wait_answer(page, send(page, "What is the capital of Italy?"))
    backends.set_gemma_dead(True)
    try:
        failed = wait_answer(page, send(page, "And of Spain?"))
        expect(failed).to_contain_text("unavailable")
        expect(failed.locator(".hc-meta-error")).to_be_visible()
        expect(page.locator("#hc-chatbot").get_by_test_id("user")).to_have_count(2)  # earlier turns stay
        expect(page.locator('.hc-health-item[data-backend="gemma"]')).not_to_have_attribute(
            "data-state", "up"
        )
    finally:
        backends.set_gemma_dead(False)
    answer = wait_answer(page, send(page, "Thanks!"))  # no reload needed
    expect(answer.locator(".hc-meta")).to_contain_text("chosen: gemma")
    expect(answer.locator(".hc-meta-error")).to_have_count(0)
    expect(page.locator('.hc-health-item[data-backend="gemma"]')).to_have_attribute("data-state", "up")


def _llama_metrics(local_backends: Backends) -> dict[str, float]:
    url = local_backends.gemma_metrics_url()
    assert url is not None
    out: dict[str, float] = {}
    for line in httpx.get(url, timeout=5).text.splitlines():
        if line.startswith("llamacpp:"):
            name, value = line.split()[:2]
            out[name] = float(value)
    return out


def test_stop_cancels_the_backend_request(page: Any, local_backends: Backends) -> None:
    page.get_by_text("Generation settings").click()
    page.get_by_label("number input for Max tokens").fill("400")
    page.get_by_label("number input for Max tokens").press("Enter")
    before = send(page, "Count from 1 to 300, one number per line.")
    stop = page.locator(STOP)
    expect(stop).to_be_visible()
    expect(bots(page).nth(before)).not_to_have_text("")  # streaming has started
    stop.click()
    expect(stop).to_be_hidden()
    expect(page.locator(INPUT)).to_be_enabled()
    # Stop's reply draws the answer as it was saved, with its footer, in one update: once the footer is
    # there, the text is what a reload shows.
    answer = bots(page).nth(before)
    expect(answer.locator(".hc-meta")).to_contain_text("stopped")
    after_stop = answer.locator(".message-content").inner_text().strip()
    assert after_stop

    # The llama.cpp stand-in stopped generating: nothing is processing and no more tokens are decoded.
    deadline = time.monotonic() + 5
    while (
        _llama_metrics(local_backends).get("llamacpp:requests_processing", 0) and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    first = _llama_metrics(local_backends)
    assert first.get("llamacpp:requests_processing", 0) == 0
    time.sleep(0.5)
    assert _llama_metrics(local_backends)["llamacpp:n_decode_total"] == first["llamacpp:n_decode_total"]
    shown = len(bots(page).nth(before).inner_text())
    assert shown < 1000, "the whole answer arrived: Stop did not stop it"

    expect(page.get_by_role("radio", name="Count from 1 to 300, one number per line.")).to_be_visible()
    page.reload()  # the stopped turn was kept as the page showed it after Stop
    page.get_by_role("radio", name="Count from 1 to 300, one number per line.").check()
    kept = bots(page).first
    expect(kept.locator(".hc-meta")).to_contain_text("stopped")  # saved, with its footer
    assert kept.locator(".message-content").inner_text().strip() == after_stop


def test_limits_refuse_with_a_clear_message_and_keep_the_text(page: Any) -> None:
    too_long = "x" * 8001
    page.locator(INPUT).fill(too_long)
    page.locator(INPUT).press("Enter")
    expect(page.get_by_text(re.compile("8,001 characters long; the limit is 8,000"))).to_be_visible()
    expect(page.locator(INPUT)).to_have_value(too_long)
    expect(bots(page)).to_have_count(0)


def test_a_reopened_conversation_shows_the_model_it_used(page: Any) -> None:
    pick_model(page, "Auto")
    wait_answer(page, send(page, "Name one river."))
    page.reload()
    expect(page.locator("#hc-chatbot").get_by_test_id("user")).to_have_count(1)
    # The picker says Auto again (it went back to the default, Gemma, though Auto answered).
    expect(page.locator("#hc-model input")).to_have_value("Auto")


def test_phone_width(browser: Any, app_env: tuple[str, SwitchableBackends], artifacts: Any) -> None:
    url, _ = app_env
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    try:
        page.goto(url)
        page.locator(INPUT).wait_for()
        expect(page.locator("#hc-sidebar")).not_to_have_class(re.compile(r"\bopen\b"))  # not over the chat
        answer = wait_answer(page, send(page, "What is the capital of France?"))
        expect(answer).to_contain_text("Paris")
        page.screenshot(path=str(artifacts / "chat-phone.png"))
        assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1  # no sideways scrolling
        header = page.locator("#hc-header").bounding_box()
        assert header is not None and header["height"] <= 844 * 0.12, header  # not a quarter of the screen
        expect(page.locator(".hc-health-state").first).to_be_visible()  # the dots' legend, no hover needed
        # The app's name and who is chatting are in the header on a phone too.
        expect(page.locator("#hc-header h1")).to_have_text("hybrid-chat")
        expect(page.locator(".hc-user")).to_be_visible()
        # The keyboard does not pop up on load (the box does not take the focus on a touch screen).
        page.reload()
        page.locator(INPUT).wait_for()
        expect(page.locator(".hc-health-state").first).to_be_visible()
        expect(page.locator(INPUT)).not_to_be_focused()
    finally:
        context.close()
