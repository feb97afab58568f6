"""Inline rename in the conversation list (issue 13), in Chromium against the real stand-ins: by keyboard
(Enter saves, Escape or leaving the field cancels), a title with Markdown and HTML characters shown as
typed, and at phone width by a tap, renaming a conversation that is not the open one. Each rename is
checked after a reload: the store has it (or, cancelled, does not)."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import MEASUREMENTS
from tests.browser.test_chat_ui import INPUT, send, wait_answer

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


def entry(page: Any, title: str) -> Any:
    """The list's entry (its label) whose conversation is titled exactly `title`."""
    radio = page.get_by_role("radio", name=title, exact=True)
    return page.locator("#hc-conversations label").filter(has=radio)


def shown_title(page: Any, title: str) -> str:
    """The title as the entry shows it on screen."""
    return str(entry(page, title).locator("input[type=radio] + span").inner_text())


def test_rename_in_the_list_by_keyboard(page: Any, artifacts: Any) -> None:
    wait_answer(page, send(page, "Remember the word mango."))
    radio = page.get_by_role("radio", name="Remember the word mango.", exact=True)
    expect(radio).to_be_checked()
    radio.focus()
    page.keyboard.press("Tab")  # from the entry to its Rename button
    pencil = entry(page, "Remember the word mango.").get_by_role("button", name=re.compile("^Rename"))
    expect(pencil).to_be_focused()
    page.keyboard.press("Enter")
    field = page.get_by_role("textbox", name="New title")
    expect(field).to_be_focused()
    expect(field).to_have_value("Remember the word mango.")  # prefilled with the title
    page.screenshot(path=str(artifacts / "rename-desktop.png"))
    page.keyboard.press("Control+A")
    page.keyboard.type("Mango notes")
    started = time.perf_counter()
    page.keyboard.press("Enter")
    expect(page.get_by_role("radio", name="Mango notes", exact=True)).to_be_checked()
    MEASUREMENTS["rename_enter_to_new_title_in_list_ms"] = round((time.perf_counter() - started) * 1000)
    expect(field).to_have_count(0)
    assert shown_title(page, "Mango notes") == "Mango notes"
    expect(page.locator("#hc-title input")).to_have_value("Mango notes")  # the open conversation's title
    expect(page.get_by_role("radio", name="Remember the word mango.", exact=True)).to_have_count(0)
    page.reload()
    expect(page.get_by_role("radio", name="Mango notes", exact=True)).to_be_checked()
    expect(page.get_by_role("radio", name="Remember the word mango.", exact=True)).to_have_count(0)


def test_escape_or_leaving_the_field_cancels(page: Any) -> None:
    title = "Remember the word lime."
    wait_answer(page, send(page, title))
    pencil = entry(page, title).get_by_role("button", name=re.compile("^Rename"))
    pencil.click()
    field = page.get_by_role("textbox", name="New title")
    field.fill("Not this one")
    field.press("Escape")
    expect(field).to_have_count(0)
    assert shown_title(page, title) == title  # restored
    expect(pencil).to_be_focused()  # the keyboard stays where it was

    pencil.click()
    field.fill("Nor this one")
    page.locator(INPUT).click()  # leaving the field cancels too
    expect(field).to_have_count(0)
    assert shown_title(page, title) == title
    page.reload()  # nothing was saved
    expect(page.get_by_role("radio", name=title, exact=True)).to_be_checked()
    expect(page.get_by_role("radio", name=re.compile("this one"))).to_have_count(0)


def test_f2_or_a_double_click_opens_the_field_too(page: Any) -> None:
    title = "Remember the word quince."
    wait_answer(page, send(page, title))
    page.get_by_role("radio", name=title, exact=True).focus()
    page.keyboard.press("F2")
    field = page.get_by_role("textbox", name="New title")
    expect(field).to_be_focused()
    expect(field).to_have_value(title)
    page.keyboard.press("Escape")
    expect(field).to_have_count(0)
    entry(page, title).locator("input[type=radio] + span").dblclick()
    expect(field).to_be_focused()
    page.keyboard.press("Control+A")
    page.keyboard.type("Quince")
    page.keyboard.press("Enter")
    expect(page.get_by_role("radio", name="Quince", exact=True)).to_be_checked()


def test_a_title_with_markdown_and_html_characters_shows_as_typed(page: Any) -> None:
    """Characters that Markdown or HTML would act on (the list's cleaning of auto titles keeps these:
    `__init__`, a lone `*`, tags)."""
    wait_answer(page, send(page, "Remember the word pear."))
    typed = "Notes on __init__ & <b>tags</b>, a*b > c"
    entry(page, "Remember the word pear.").get_by_role("button", name=re.compile("^Rename")).click()
    field = page.get_by_role("textbox", name="New title")
    field.fill(typed)
    field.press("Enter")
    expect(page.get_by_role("radio", name=typed, exact=True)).to_be_visible()
    assert shown_title(page, typed) == typed
    expect(page.locator("#hc-conversations b, #hc-conversations strong")).to_have_count(0)
    page.reload()
    assert shown_title(page, typed) == typed


def test_rename_at_phone_width_by_a_tap_without_opening_it(
    browser: Any, app_env: Any, artifacts: Any
) -> None:
    url, _ = app_env
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    try:
        page.goto(url)
        wait_answer(page, send(page, "Remember the word cherry."))
        page.locator("#hc-sidebar").get_by_role("button", name="Toggle Sidebar").tap()
        page.locator("#hc-new").tap()  # the sidebar closes on a phone
        expect(page.locator("#hc-chatbot").get_by_test_id("bot")).to_have_count(0)
        wait_answer(page, send(page, "Remember the word plum, please."))
        page.locator("#hc-sidebar").get_by_role("button", name="Toggle Sidebar").tap()
        pencil = entry(page, "Remember the word cherry.").get_by_role("button", name=re.compile("^Rename"))
        expect(pencil).to_be_visible()  # no hover on a phone: the affordance is there to tap
        assert pencil.evaluate("e => getComputedStyle(e).opacity") == "1"
        pencil.tap()
        field = page.get_by_role("textbox", name="New title")
        page.screenshot(path=str(artifacts / "rename-phone.png"))
        expect(field).to_have_value("Remember the word cherry.")
        field.fill("Cherry")
        field.press("Enter")
        expect(page.get_by_role("radio", name="Cherry", exact=True)).to_be_visible()
        # Renamed by its id: the open conversation is still the other one, on screen and in the list.
        expect(page.get_by_role("radio", name="Remember the word plum, please.", exact=True)).to_be_checked()
        users = page.locator("#hc-chatbot").get_by_test_id("user")
        expect(users).to_have_text(["Remember the word plum, please."], use_inner_text=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1
        page.reload()
        page.locator("#hc-sidebar").get_by_role("button", name="Toggle Sidebar").tap()
        expect(page.get_by_role("radio", name="Cherry", exact=True)).to_be_visible()
    finally:
        context.close()
