"""What a new user notices in the first five minutes (issue 13), in Chromium against the real stand-ins:
an answer's footer stays out of its text (also on the clipboard and after a reload), messages show as
typed, the input stays usable while an answer streams, the sidebar does not lie, each conversation has
its address, errors speak to people and offer a retry, a fallback is a badge."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from graph.backends import Backends
from graph.client import ChatClient
from tests.browser.appserver import SwitchableBackends, serve_app
from tests.browser.conftest import MEASUREMENTS, PAGE_MODES
from tests.browser.test_chat_ui import INPUT, SEND, STOP, bots, send, wait_answer
from tests.conftest import local_settings

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

LONG = "Count from 1 to 300, one number per line."
RAW = re.compile(r"hc-meta|<span|Gemma stand-in|chosen: gemma|first token")


def users(page: Any) -> Any:
    return page.locator("#hc-chatbot").get_by_test_id("user")


def set_max_tokens(page: Any, n: int) -> None:
    field = page.get_by_label("number input for Max tokens")
    if not field.is_visible():  # the settings panel opens on a click and closes on the next
        page.get_by_text("Generation settings").click()
    field.fill(str(n))
    field.press("Enter")


def clipboard(page: Any) -> str:
    return str(page.evaluate("navigator.clipboard.readText()"))


def focused_on_input(page: Any) -> bool:
    return bool(page.evaluate("document.activeElement === document.querySelector('#hc-input textarea')"))


def test_footer_stays_out_of_the_answer_text(page: Any) -> None:
    set_max_tokens(page, 12)  # cut inside the code block
    answer = wait_answer(page, send(page, "Write a Python function that adds two numbers."))
    expect(answer.locator("pre")).to_have_count(1)  # the case at stake: the answer ends inside code
    expect(answer.locator("pre .hc-meta")).to_have_count(0)
    expect(answer.locator("pre")).not_to_contain_text("hc-meta")
    expect(answer.locator(".hc-meta")).to_contain_text("cut at the token limit")
    expect(page.locator("#hc-chatbot").get_by_role("button", name="Continue")).to_be_visible()
    assert focused_on_input(page), "focus did not come back to the input after the answer"

    answer.hover()
    page.locator("#hc-chatbot").get_by_role("button", name="Copy message").last.click()
    copied = clipboard(page)
    assert copied.startswith("```") and not RAW.search(copied), copied
    page.locator("#hc-chatbot").get_by_role("button", name="Copy conversation").click()
    deadline = time.monotonic() + 5
    while clipboard(page) == copied and time.monotonic() < deadline:
        time.sleep(0.05)
    conversation = clipboard(page)
    assert "Write a Python function" in conversation and not RAW.search(conversation), conversation

    page.reload()  # the address reopens it: the footer is still beside the text, not in it
    answer = bots(page).first
    expect(answer.locator(".hc-meta")).to_contain_text("chosen: gemma")
    expect(answer.locator("pre .hc-meta")).to_have_count(0)
    answer.hover()
    page.locator("#hc-chatbot").get_by_role("button", name="Copy message").last.click()
    assert clipboard(page) == copied


def test_user_messages_show_as_typed(page: Any) -> None:
    typed = "# comment\n    def __init__(self):\n        return 1\n__init__ stays *as is*"
    wait_answer(page, send(page, typed))
    shown = users(page).first
    expect(shown.locator(".hc-typed")).to_be_visible()
    assert shown.locator(".hc-typed").evaluate("e => e.innerText") == typed
    expect(shown.get_by_role("heading")).to_have_count(0)  # not Markdown: no heading, no bold
    expect(shown.locator("strong:visible, em:visible")).to_have_count(0)
    page.locator("#hc-chatbot").get_by_role("button", name="Copy message").first.click()
    assert clipboard(page) == typed


def test_input_stays_usable_while_an_answer_streams(page: Any) -> None:
    set_max_tokens(page, 2000)  # long enough to still stream while we type
    box = page.locator(INPUT)
    send(page, "Count from 1 to 1000, one number per line.")
    stop = page.locator(STOP)
    expect(stop).to_be_visible()
    expect(box).to_be_enabled()
    box.press_sequentially("and the next question")  # typed while the answer streams
    expect(bots(page).first).not_to_have_text("")
    box.press("Enter")  # only Send waits: nothing is sent, nothing typed is lost
    time.sleep(0.5)
    expect(box).to_have_value("and the next question")
    expect(users(page)).to_have_count(1)
    expect(stop).to_be_visible()

    started = time.perf_counter()
    stop.click()
    expect(page.locator(SEND)).to_be_visible()
    expect(box).to_be_enabled()
    stop_ms = round((time.perf_counter() - started) * 1000)
    MEASUREMENTS.setdefault("stop_to_usable_input_ms", []).append(stop_ms)
    # Stopped, or ended by the small model just before Stop landed: the page shows what was saved.
    expect(bots(page).first.locator(".hc-meta")).to_be_visible()
    expect(box).to_have_value("and the next question")
    set_max_tokens(page, 100)  # the small stand-in can loop until the limit: keep the follow-up short
    box.press("Enter")
    expect(users(page)).to_have_count(2)
    expect(users(page).nth(1)).to_have_text("and the next question", use_inner_text=True)
    wait_answer(page, 1)


def test_a_refused_switch_leaves_the_sidebar_alone(page: Any) -> None:
    wait_answer(page, send(page, "Remember the word apple."))
    page.locator("#hc-new").click()
    expect(bots(page)).to_have_count(0)
    set_max_tokens(page, 400)
    count = "Count from 1 to 200, one number per line."
    send(page, count)
    stop = page.locator(STOP)
    expect(stop).to_be_visible()
    expect(bots(page).first).not_to_have_text("")
    other = page.get_by_role("radio", name="Remember the word apple.")
    other.click()
    expect(page.get_by_text("Wait for the current answer")).to_be_visible()
    expect(other).not_to_be_checked()  # the selection did not move...
    expect(users(page)).to_have_text([count], use_inner_text=True)  # ...and the chat did not either
    stop.click()
    expect(page.get_by_role("radio", name=count)).to_be_checked()


def test_each_conversation_has_its_address(page: Any, browser: Any, app_env: Any) -> None:
    wait_answer(page, send(page, "Remember the word plum."))
    expect(page).to_have_url(re.compile(r"\?c=[0-9a-f]{32}$"))
    address = page.url
    other = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    try:
        other.goto(address)  # a bookmark, another tab
        expect(users(other)).to_have_text(["Remember the word plum."], use_inner_text=True)
        expect(other.get_by_role("radio", name="Remember the word plum.")).to_be_checked()
        other.goto(app_env[0] + "/?c=never-existed")
        # Said once, in a notice, not as an answer with Copy and Retry; the empty chat's starters instead.
        expect(other.get_by_text("Conversation not found")).to_have_count(1)
        expect(bots(other)).to_have_count(0)
        expect(other.locator("#hc-chatbot button[aria-label=Retry]")).to_have_count(0)
        expect(other.locator("#hc-chatbot .examples")).to_be_visible()
        expect(other).not_to_have_url(re.compile(r"c=never-existed"))
    finally:
        other.context.close()


def test_error_note_speaks_to_people_and_offers_a_retry(
    page: Any, app_env: tuple[str, SwitchableBackends], caplog: pytest.LogCaptureFixture
) -> None:
    _, backends = app_env
    backends.set_gemma_dead(True)  # fallback is off in this module: the error shows
    try:
        with caplog.at_level(logging.WARNING):
            note = wait_answer(page, send(page, "What is the capital of Spain?"))
        expect(note).to_contain_text("unavailable")
        text = note.inner_text()
        assert not re.search(r"Error|Exception|127\.0\.0\.1|ipv4|\b50[0-9]\b|http", text), text
        ref = re.search(r"reference ([0-9a-f]{8})", note.locator(".hc-meta").inner_text())
        assert ref, note.locator(".hc-meta").inner_text()
        assert any(ref.group(1) in r.getMessage() for r in caplog.records), "the reference is not in the log"
        background = note.locator("xpath=ancestor::div[contains(@class,'message')][1]").evaluate(
            "e => getComputedStyle(e).backgroundColor"
        )
        assert background == "rgb(252, 232, 230)", background  # looks different from an answer

        page.locator("#hc-chatbot").get_by_role("button", name="Retry with Gemini").click()
        answer = bots(page).first
        expect(answer.locator(".hc-meta")).to_contain_text("Gemini stand-in")
        expect(answer.locator(".hc-meta-error")).to_have_count(0)
        expect(users(page)).to_have_count(1)  # the failed turn was replaced, not repeated
    finally:
        backends.set_gemma_dead(False)


@pytest.fixture(scope="module")
def fallback_url(tmp_path_factory: pytest.TempPathFactory, local_backends: Backends) -> Iterator[str]:
    """An app with fallback on (the default) whose Gemma is down."""
    from ui.server import create_app

    settings = local_settings(tmp_path_factory.mktemp("fallback"), rate_limit_per_minute=0)
    backends = SwitchableBackends(settings, **local_backends.shared_standins())
    backends.set_gemma_dead(True)
    app = create_app(settings, client=ChatClient.from_settings(settings, backends=backends))
    with serve_app(app) as url:
        yield url


def test_a_fallback_is_a_badge(browser: Any, fallback_url: str) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    try:
        page.goto(fallback_url)
        answer = wait_answer(page, send(page, "Name one colour."))
        badge = answer.locator(".hc-badge")
        expect(badge).to_have_text("answered by Gemini: Gemma unavailable")
        expect(answer.locator(".hc-meta")).to_contain_text("Gemini stand-in")
    finally:
        context.close()


@pytest.mark.parametrize("page", PAGE_MODES, indirect=True)
def test_an_empty_chat_offers_starters_and_hides_what_needs_a_conversation(page: Any) -> None:
    manage = page.locator("#hc-manage")
    expect(manage).to_be_hidden()  # nothing open: no Title, Rename, Delete
    expect(page.locator(".hc-health-state").first).to_be_visible()  # the dots' legend, in words
    starter = page.locator("#hc-chatbot").get_by_role("button", name="Suggest a name for a team chat bot.")
    starter.click()
    wait_answer(page, 0)
    expect(users(page)).to_have_text(["Suggest a name for a team chat bot."], use_inner_text=True)
    expect(bots(page).first.locator(".hc-meta-error")).to_have_count(0)
    expect(manage).to_be_visible()
    expect(page.locator("#hc-chatbot").get_by_role("button", name="Clear")).to_be_hidden()  # one meaning
    page.locator("#hc-new").click()
    expect(manage).to_be_hidden()


def test_a_reload_during_an_answer_keeps_what_streamed_and_offers_to_continue(page: Any) -> None:
    set_max_tokens(page, 300)
    send(page, "Count from 1 to 150, one number per line.")
    expect(page.locator(STOP)).to_be_visible()
    expect(bots(page).first).to_contain_text("3")
    streamed = bots(page).first.locator(".message-content").inner_text()
    page.reload()  # the address reopens the conversation with what had streamed
    answer = bots(page).first
    # A reload does not stop the answer: it finishes on the server, and the reopened page waits for it
    # and shows it whole (here cut at the 300-token limit, or ended by the model), never "stopped".
    expect(answer.locator(".hc-meta")).to_be_visible()
    kept = answer.locator(".message-content").inner_text()
    assert kept.startswith(streamed.strip()[:5]) and len(kept) >= len(streamed.strip()), (streamed, kept)
    meta = answer.locator(".hc-meta").inner_text()
    assert "stopped" not in meta, meta
    if "cut at the token limit" not in meta:
        return  # the model ended its answer before the limit: nothing to continue
    set_max_tokens(page, 100)  # a reload resets the settings; keep the continuation short
    page.locator("#hc-chatbot").get_by_role("button", name="Continue").click()
    expect(users(page)).to_have_count(2)
    expect(users(page).nth(1)).to_have_text("Continue from where you stopped.", use_inner_text=True)
    wait_answer(page, 1)


@pytest.mark.parametrize("page", ["signed-in"], indirect=True)  # as the local user a lost request passes
def test_a_stopped_answer_continues(page: Any) -> None:
    """Continue under a stopped answer sends the follow-up as the same user, into the same conversation."""
    set_max_tokens(page, 2000)  # still streaming when Stop lands
    send(page, "Count from 1 to 1000, one number per line.")
    expect(bots(page).first).not_to_have_text("")
    # force: while tokens stream Gradio redraws the box's buttons, and Playwright's wait for a stable,
    # attached element could outlast the answer (seen: 20 s of "detached from the DOM, retrying").
    page.locator(STOP).click(force=True)
    expect(page.locator(SEND)).to_be_visible()
    # Stop's reply: the answer offers Continue, or its footer says it ended whole (the footer may be
    # missing when the stopped answer was not saved within Stop's wait: Continue is what matters here).
    go_on = page.locator("#hc-chatbot").get_by_role("button", name="Continue")
    meta = bots(page).first.locator(".hc-meta")
    expect(go_on.or_(meta)).not_to_have_count(0)
    if not go_on.count() and not re.search("stopped|cut at the token limit", meta.inner_text()):
        pytest.skip("the small model ended its answer before Stop landed: nothing to continue")
    set_max_tokens(page, 30)  # keep the continuation short
    go_on.click()
    expect(users(page)).to_have_count(2)
    expect(users(page).nth(1)).to_have_text("Continue from where you stopped.", use_inner_text=True)
    answer = wait_answer(page, 1)
    expect(answer.locator(".hc-meta-error")).to_have_count(0)
    expect(users(page).first).to_have_text("Count from 1 to 1000, one number per line.", use_inner_text=True)
    page.reload()  # both turns were saved in the one conversation
    expect(users(page)).to_have_count(2)
    expect(bots(page)).to_have_count(2)


def test_the_conversation_list_is_grouped_by_day(page: Any) -> None:
    wait_answer(page, send(page, "Remember the word fig."))
    first = page.locator("#hc-conversations label").first
    expect(first).to_have_attribute("data-hc-group", "Today")  # the heading of the newest group
    heading = first.evaluate("e => getComputedStyle(e, '::before').content")
    assert heading == '"Today"', heading
    expect(page.locator("#hc-conversations label[data-hc-group]")).to_have_count(1)  # one group today


# Records what the page's own early bubble (ui.page.EARLY_TOKENS) showed, and how it looked.
EARLY = """() => {
  const seen = window.__hcEarlySeen = {texts: [], bot: null, after_question: null};
  new MutationObserver(() => {
    const live = document.querySelector('#hc-chatbot .hc-live');
    const text = live?.querySelector('.hc-live-text')?.textContent;
    if (!text || seen.texts[seen.texts.length - 1] === text) return;
    seen.texts.push(text);
    seen.bot = live.classList.contains('bot-row') && !!live.querySelector('.message.bot');
    const rows = Array.from(live.parentElement.querySelectorAll(':scope > .message-row'));
    const at = rows.indexOf(live);
    seen.after_question = at > 0 && rows[at - 1].classList.contains('user-row');
  }).observe(document.querySelector('#hc-chatbot'), {childList: true, subtree: true, characterData: true});
}"""


def test_the_first_tokens_come_straight_and_the_turn_runs_once(page: Any) -> None:
    """Sent two ways at once (straight for the first tokens, through Gradio for the rest): the page
    draws the answer's first tokens in a bubble like an answer's, below the question, hands over to
    Gradio's bubble, and the conversation holds one question and one answer, also after a reload."""
    page.evaluate(EARLY)
    with page.expect_response(lambda r: r.url.endswith("/page/turn")) as straight:
        before = send(page, "Say hello in one short sentence.")
    answer = wait_answer(page, before)
    final = re.sub(r"\W", "", answer.locator(".message-content").inner_text())
    # The straight request was taken and streamed (the counts below show it ran no second turn) ...
    response = straight.value
    assert response.status == 200, response.status
    assert response.headers["content-type"].startswith("text/event-stream")
    # ... and when its first tokens beat Gradio's bubble (nearly every turn; a race on a busy machine,
    # counted by tests/browser/measure.py), the page drew them in a bubble like an answer's.
    seen = page.evaluate("window.__hcEarlySeen")
    MEASUREMENTS.setdefault("first_tokens_drawn_by_the_page", []).append(bool(seen["texts"]))
    if seen["texts"]:
        assert seen["bot"], "the early bubble does not look like an answer"
        assert seen["after_question"], "the early bubble was not below the question"
        assert re.sub(r"\W", "", seen["texts"][0])[:4] in final[:12], (seen["texts"][0], final)
    expect(page.locator("#hc-chatbot .hc-live")).to_have_count(0)  # handed over to Gradio's bubble
    expect(bots(page)).to_have_count(1)
    expect(users(page)).to_have_count(1)
    page.reload()
    expect(bots(page).first.locator(".hc-meta")).to_be_visible()
    expect(bots(page)).to_have_count(1)
    expect(users(page)).to_have_count(1)
    assert re.sub(r"\W", "", bots(page).first.locator(".message-content").inner_text()) == final
