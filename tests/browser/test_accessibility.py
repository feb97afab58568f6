"""Everyone can use the page: axe-core (the engine behind Lighthouse's accessibility audit) finds no
serious or critical fault in any of its main states, in light and dark, on a desktop (1440x900) and a
phone (390x844); small grey text is readable (contrast from the computed styles); the keyboard reaches
every action with its focus visible. Along the way, what a user sees of the page's finish: "Thinking"
before the first token, the new conversation in the list at once, the picker's names not cut, an edit
field that sends on Enter and cancels on Escape, "Conversation not found" said once, toasts below the
header.

One page load per colour scheme and size walks through the states (axe takes about a second each); the
moderate findings left are written to .pytest_cache/browser/axe-moderate.json (docs/ui.md lists them).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import expect

from tests.browser.appserver import SwitchableBackends
from tests.browser.conftest import MEASUREMENTS, SIGNED_IN, sign_in
from tests.browser.test_chat_ui import INPUT, STOP, bots, send, wait_answer
from tests.browser.test_first_minutes import users

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

AXE = Axe()
SIZES = {"desktop": (1440, 900), "phone": (390, 844)}
AA = 4.5  # WCAG AA for text under 18.66 px bold / 24 px

# The contrast of one element's text (or of its pseudo-element's) with what is behind it, from the
# computed styles: the background is the nearest ancestors' colours composed over white.
CONTRAST = """([selector, pseudo]) => {
  const el = document.querySelector(selector);
  if (!el) return null;
  const parse = (c) => {
    const m = /rgba?\\(([^)]+)\\)/.exec(c || '');
    if (!m) return null;
    const p = m[1].split(/[ ,/]+/).filter(Boolean).map(Number);
    return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
  };
  const layers = [];
  for (let n = el; n; n = n.parentElement) {
    const c = parse(getComputedStyle(n).backgroundColor);
    if (c && c[3] > 0) layers.push(c);
    if (c && c[3] >= 1) break;
  }
  let bg = [255, 255, 255];
  for (const c of layers.reverse()) bg = bg.map((v, i) => v * (1 - c[3]) + c[i] * c[3]);
  const style = getComputedStyle(el, pseudo || null);
  const f = parse(style.color);
  const fg = f.slice(0, 3).map((v, i) => v * f[3] + bg[i] * (1 - f[3]));
  const lum = (rgb) => {
    const lin = (v) => (v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
    const [r, g, b] = rgb.map(lin);
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const [a, b] = [lum(fg), lum(bg)];
  return {ratio: (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05), size: style.fontSize,
    fg: fg.map(Math.round), bg: bg.map(Math.round)};
}"""


def audit(page: Any, state: str, found: list[dict[str, Any]]) -> None:
    """Run axe on the page as it is now and keep what it found, by state."""
    for v in AXE.run(page).response["violations"]:
        found.append(
            {
                "state": state,
                "impact": v["impact"],
                "rule": v["id"],
                "help": v["help"],
                "targets": [n["target"] for n in v["nodes"]][:4],
            }
        )


def readable(page: Any, texts: dict[str, tuple[str, str | None]]) -> dict[str, Any]:
    """Each named text's contrast; the ones under AA."""
    poor = {}
    for name, (selector, pseudo) in texts.items():
        got = page.evaluate(CONTRAST, [selector, pseudo])
        assert got is not None, f"{name}: {selector} is not on the page"
        if got["ratio"] < AA:
            poor[name] = got
    return poor


def not_cut(page: Any, selector: str) -> bool:
    return bool(page.locator(selector).evaluate("e => e.scrollWidth <= e.clientWidth + 1"))


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("size", list(SIZES))
def test_every_state_passes_axe_and_its_grey_text_is_readable(
    browser: Any,
    signed_in_env: tuple[str, SwitchableBackends],
    artifacts: Any,
    scheme: str,
    size: str,
) -> None:
    url, backends = signed_in_env
    width, height = SIZES[size]
    phone = size == "phone"
    context = browser.new_context(
        viewport={"width": width, "height": height}, color_scheme=scheme, is_mobile=phone, has_touch=phone
    )
    page = context.new_page()
    page.set_default_timeout(20_000)
    found: list[dict[str, Any]] = []
    poor: dict[str, Any] = {}

    def shot(state: str) -> None:
        page.screenshot(path=str(artifacts / f"a11y-{state}-{size}-{scheme}.png"))

    try:
        page.goto(url)
        expect(page.get_by_label("User name")).to_be_visible()
        audit(page, "signed out", found)
        shot("signin")
        sign_in(page, *SIGNED_IN)
        box = page.locator(INPUT)
        expect(box).to_be_visible()
        expect(page.locator(".hc-health-state").first).to_be_visible()
        expect(page.locator(".hc-user")).to_contain_text(SIGNED_IN[0])
        expect(page.locator("#hc-chatbot .examples")).to_be_visible()
        if phone:  # the keyboard does not pop up over the page on load
            assert not page.evaluate("document.activeElement?.matches('#hc-input textarea')")
        audit(page, "empty", found)
        poor |= readable(
            page,
            {
                "placeholder": (INPUT, "::placeholder"),
                "user name": (".hc-user", None),
                "Sign out": (".hc-logout button", None),
                "health words": (".hc-health-state", None),
                "Use via API": ("footer .show-api", None),
                "starter": ("#hc-chatbot .example", None),
            },
        )
        shot("empty")
        # The picker: a short name, never cut nor under its arrow; the long one is its hint.
        assert not_cut(page, "#hc-model input"), page.locator("#hc-model input").input_value()
        expect(page.locator("#hc-model input")).to_have_attribute("title", re.compile(r"\w+.*: "))

        page.get_by_text("Generation settings").click()
        expect(page.get_by_label("Temperature").first).to_be_visible()
        audit(page, "settings panel", found)
        shot("settings")
        page.get_by_text("Generation settings").click()

        # A new conversation, its first answer slow to come: "Thinking" says it is coming, and the
        # conversation is in the list already.
        question = f"Name a colour ({scheme}, {size})."
        with backends.gemma_held() as release:
            send(page, question)
            thinking = page.locator(".hc-thinking")
            expect(thinking).to_have_text("Thinking…")
            if phone:
                page.locator("#hc-sidebar button[aria-label='Toggle Sidebar']").click()
            expect(page.get_by_role("radio", name=question)).to_be_visible()
            if phone:
                page.locator("#hc-sidebar button[aria-label='Toggle Sidebar']").click()
            expect(thinking).to_be_visible()  # the answer has not started: the state audited is this one
            audit(page, "waiting for the first token", found)
            poor |= readable(page, {"thinking": (".hc-thinking", None)})
            shot("thinking")
            release.set()  # the model may answer now
            answer = bots(page).last
            expect(answer.locator(".hc-meta")).to_be_visible(timeout=30_000)
        expect(thinking).to_have_count(0)
        expect(page.locator(STOP)).to_be_hidden()
        audit(page, "finished answer", found)
        poor |= readable(page, {"answer footer": (".hc-meta", None)})
        assert page.locator(".hc-meta").last.evaluate("e => e.getClientRects().length") == 1 or not phone
        shot("answer")

        # Editing the question: a full-width field; Escape cancels, as in the message box.
        users(page).last.hover()
        page.locator("#hc-chatbot button[aria-label=Edit]").last.click()
        field = page.locator("#hc-chatbot .edit-textarea")
        expect(field).to_be_focused()
        bubble_width = page.locator("#hc-chatbot .message-wrap").evaluate("e => e.clientWidth")
        assert field.evaluate("e => e.offsetWidth") >= 0.8 * bubble_width
        expect(page.locator("#hc-chatbot").get_by_role("button", name="Send", exact=True)).to_be_visible()
        expect(page.locator("#hc-chatbot").get_by_role("button", name="Cancel", exact=True)).to_be_visible()
        audit(page, "edit field", found)
        shot("edit")
        field.press("Escape")
        expect(field).to_have_count(0)
        expect(users(page).last).to_contain_text(question)

        # A backend down: the error note.
        backends.set_gemma_dead(True)
        try:
            note = wait_answer(page, send(page, "Still there?"))
            expect(note.locator(".hc-meta-error")).to_be_visible()
        finally:
            backends.set_gemma_dead(False)
        audit(page, "error note", found)
        poor |= readable(page, {"error reference": (".hc-meta-error", None)})
        shot("error")

        # The list with a rename open (F2 on the open conversation's entry).
        if phone:
            page.locator("#hc-sidebar button[aria-label='Toggle Sidebar']").click()
        entry = page.get_by_role("radio", name=question)
        entry.focus()
        entry.press("F2")
        expect(page.locator(".hc-rename-input")).to_be_focused()
        audit(page, "conversation list, rename open", found)
        poor |= readable(page, {"list heading": ("#hc-conversations label[data-hc-group]", "::before")})
        shot("rename")
        page.locator(".hc-rename-input").press("Escape")
    finally:
        context.close()

    serious = [f for f in found if f["impact"] in ("serious", "critical")]
    moderate = [f for f in found if f["impact"] not in ("serious", "critical")]
    MEASUREMENTS.setdefault("axe_moderate", {})[f"{size}-{scheme}"] = moderate
    (artifacts / f"axe-{size}-{scheme}.json").write_text(json.dumps(found, indent=1) + "\n")
    assert not serious, json.dumps(serious, indent=1)
    assert not poor, f"text under {AA}:1: {poor}"


TAB_NAME = """() => {
  const el = document.activeElement;
  if (!el || el === document.body) return null;
  const label = el.closest('label');
  const name = el.getAttribute('aria-label') || el.getAttribute('title') || el.getAttribute('placeholder')
    || (el.innerText || '').trim() || label?.innerText?.trim() || el.tagName;
  // Focus shows on the element, or on its label for a hidden radio (the conversation list).
  const ring = (n) => { const s = getComputedStyle(n);
    return (s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) >= 2) || s.boxShadow !== 'none'; };
  const shown = ring(el) || (label ? ring(label) : false) || ring(el.parentElement);
  return {name: name.slice(0, 60), tag: el.tagName, shown,
    box: el.matches('#hc-input textarea'), visible: el.getClientRects().length > 0};
}"""


# Where a person starts tabbing on a fresh page: the top of the document (a focusable spot before
# everything, gone once left).
FROM_THE_TOP = """() => {
  const top = document.createElement('span');
  top.tabIndex = -1;
  document.body.prepend(top);
  top.focus();
  top.addEventListener('blur', () => top.remove(), {once: true});
}"""


def test_the_keyboard_reaches_every_action_with_focus_visible(page: Any) -> None:
    wait_answer(page, send(page, "Say one word."))
    page.reload()
    expect(users(page)).to_have_count(1)
    expect(page.locator("#hc-chatbot button[aria-label=Edit]")).to_have_count(1)
    page.evaluate(FROM_THE_TOP)
    stops: list[dict[str, Any]] = []
    for _ in range(45):
        page.keyboard.press("Tab")
        now = page.evaluate(TAB_NAME)
        if now is None:
            break
        stops.append(now)
        if len(stops) > 3 and now["name"] == stops[0]["name"]:
            break  # round the page
    names = [s["name"] for s in stops]
    MEASUREMENTS["tab_stops"] = names
    assert names[0] == "Skip to the message box", names
    box_at = next(i for i, s in enumerate(stops) if s["box"]) + 1
    MEASUREMENTS["tab_stops_to_the_message_box"] = box_at
    hidden_focus = [s["name"] for s in stops if s["visible"] and not s["shown"]]
    assert not hidden_focus, f"no visible focus on: {hidden_focus}"
    for action in [
        "New conversation",
        "Say one word.",  # the conversation, in the list (F2 renames it)
        "Model",
        "Copy message",
        "Edit",
        "Retry",
        "Delete conversation",
        "Upload a file",
        "Generation settings",
    ]:
        assert any(action in n for n in names), (action, names)
    # From the top: Tab once, Enter, and the focus is in the message box.
    page.evaluate(FROM_THE_TOP)
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(page.locator(INPUT)).to_be_focused()


def test_edit_sends_on_enter_and_keeps_shift_enter_for_a_new_line(page: Any) -> None:
    wait_answer(page, send(page, "Name a fruit."))
    users(page).first.hover()
    page.locator("#hc-chatbot button[aria-label=Edit]").first.click()
    field = page.locator("#hc-chatbot .edit-textarea")
    expect(field).to_be_focused()
    field.fill("Name a vegetable.")
    field.press("Shift+Enter")
    expect(field).to_have_value("Name a vegetable.\n")  # a new line, nothing sent
    field.press("Backspace")
    field.press("Enter")  # sent as edited
    expect(field).to_have_count(0)
    expect(users(page)).to_have_text(["Name a vegetable."], use_inner_text=True)
    wait_answer(page, 0)


def test_not_found_is_said_once_and_toasts_leave_the_header_visible(
    browser: Any, signed_in_env: tuple[str, SwitchableBackends]
) -> None:
    url, _ = signed_in_env
    for width, height in SIZES.values():
        context = browser.new_context(viewport={"width": width, "height": height})
        page = context.new_page()
        try:
            page.goto(f"{url}/?c=someone-elses-conversation")
            sign_in(page, *SIGNED_IN)
            notice = page.get_by_text("Conversation not found")
            expect(notice).to_have_count(1)  # one notice, not also an answer-like bubble
            expect(bots(page)).to_have_count(0)
            expect(page.locator("#hc-chatbot button[aria-label=Retry]")).to_have_count(0)
            toast = page.locator(".toast-body").first
            expect(toast).to_be_visible()
            header = page.locator("#hc-header").bounding_box()
            box = toast.bounding_box()
            assert header and box and box["y"] >= header["y"] + header["height"], (width, header, box)
            expect(page.get_by_role("button", name="Sign out")).to_be_visible()
        finally:
            context.close()
