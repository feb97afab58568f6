"""Attachments in the page (issue 15), in Chromium against the real stand-ins: a file attached by the
message box's button, by paste or by drag-and-drop shows a thumbnail before sending, goes with the message
(the Gemini stand-in names the very bytes it received), and shows as a chip under the message (name,
type, size: the stored message holds a reference, not the bytes) with who answered and why under the
answer, also after a reload; a message may be files only; a bad file is refused in words with the
message kept in the box; a file over the size limit never leaves the browser. A conversation whose
message carried an image through `POST /api/chat` opens in the page the same way."""

from __future__ import annotations

import base64
import io
import json
import re
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.sync_api import expect

from tests.browser.appserver import SwitchableBackends
from tests.browser.conftest import PAGE_MODES
from tests.browser.test_chat_ui import bots, pick_model, wait_answer
from tests.browser.test_first_minutes import users

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


def png(width: int = 64, height: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), "red").save(buf, "PNG")
    return buf.getvalue()


def post_chat(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """The `done` event of one `POST /api/chat` turn."""
    r = httpx.post(f"{url}/api/chat", json=body, timeout=60)
    assert r.status_code == 200, r.text
    for block in r.text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if lines.get("event") == "done":
            return dict(json.loads(lines["data"]))
    raise AssertionError(r.text)


def test_a_sent_image_shows_in_the_conversation_and_after_a_reload(
    page: Any, app_env: tuple[str, SwitchableBackends]
) -> None:
    url, _ = app_env
    image = png()
    done = post_chat(
        url,
        {
            "message": "What is in this picture?",
            "model": "auto",
            "attachments": [{"data": base64.b64encode(image).decode(), "name": "shot.png"}],
        },
    )
    assert done["kind"] == "answer" and done["meta"]["backend"] == "gemini", done
    page.goto(f"{url}/?c={done['session_id']}")
    for _ in range(2):  # as opened, then after a reload
        question = users(page).first
        expect(question).to_contain_text("What is in this picture?")
        chip = question.locator(".hc-file")
        expect(chip).to_have_count(1)
        expect(chip).to_have_text(f"shot.png · image/png · {len(image)} bytes")
        answer = bots(page).first
        expect(answer).to_contain_text(f"image/png 64x48, {len(image):,} bytes")  # the model saw it
        expect(answer.locator(".hc-meta")).to_contain_text("Gemini stand-in")
        expect(answer.locator(".hc-meta")).to_contain_text("image: Gemma stand-in cannot see images")
        expect(answer.locator(".hc-file")).to_have_count(0)
        page.reload()


# A file put in the page as a person would: pasted into the message box (a screenshot from the
# clipboard), or dragged from a file manager and dropped on the box. Playwright has no file-level
# clipboard or drag from outside the page, so the browser's own events carry a DataTransfer holding it.
PASTE = """([name, b64, type]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], name, {type}));
  const box = document.querySelector('#hc-input textarea');
  box.focus();
  box.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data, bubbles: true, cancelable: true}));
}"""
DROP = """([name, b64, type]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], name, {type}));
  const target = document.querySelector('#hc-input [role="group"]');
  for (const kind of ['dragenter', 'dragover', 'drop']) {
    target.dispatchEvent(new DragEvent(kind, {dataTransfer: data, bubbles: true, cancelable: true}));
  }
}"""
THUMBS = "#hc-input img"  # the box's thumbnails of attached images


def attach(page: Any, how: str, name: str, data: bytes, mime: str = "image/png") -> None:
    """Attach a file to the message box by its button, by paste or by drag-and-drop."""
    if how == "button":
        page.locator("#hc-input input[type=file]").set_input_files(
            {"name": name, "mimeType": mime, "buffer": data}
        )
    else:
        page.evaluate(PASTE if how == "paste" else DROP, [name, base64.b64encode(data).decode(), mime])


@pytest.mark.parametrize("how", ["button", "paste", "drop"])
def test_attach_see_the_thumbnail_send_and_reload(page: Any, how: str) -> None:
    pick_model(page, "Auto")
    width = {"button": 40, "paste": 30, "drop": 50}[how]
    image = png(width, 20)
    name = f"by-{how}.png"
    attach(page, how, name, image)
    thumb = page.locator(THUMBS)
    expect(thumb).to_have_count(1)  # the thumbnail, before sending: the uploaded image itself
    expect(thumb).to_have_js_property("naturalWidth", width)
    box = page.locator("#hc-input textarea")
    box.fill("What is in this picture?")
    box.press("Enter")
    answer = bots(page).first
    expect(answer.locator(".hc-meta")).to_contain_text("image: Gemma stand-in cannot see images")
    expect(answer).to_contain_text(f"image/png {width}x20, {len(image):,} bytes")  # the model saw these bytes
    expect(page.locator(THUMBS)).to_have_count(0)  # the file left the box with the message
    chip = users(page).first.locator(".hc-file")
    expect(chip).to_have_text(f"{name} · image/png · {len(image)} bytes")
    page.reload()
    expect(users(page).first.locator(".hc-file")).to_have_text(f"{name} · image/png · {len(image)} bytes")
    expect(users(page).first).to_contain_text("What is in this picture?")
    expect(bots(page).first.locator(".hc-meta")).to_contain_text("image: Gemma stand-in cannot see images")


def test_a_message_of_files_only_is_sent(page: Any) -> None:
    pick_model(page, "Auto")
    image = png(24, 24)
    attach(page, "button", "only.png", image)
    expect(page.locator(THUMBS)).to_have_count(1)
    box = page.locator("#hc-input textarea")
    box.press("Enter")  # no text: the image is the message
    # Typed at once, before the page's event has even left (it leaves tens of milliseconds after
    # Enter): the start of the next message, kept in the box, neither wiped nor sent with this one.
    box.press_sequentially("and then")
    answer = bots(page).first
    expect(answer).to_contain_text(f"image/png 24x24, {len(image):,} bytes")
    expect(answer.locator(".hc-meta")).to_be_visible()
    expect(box).to_have_value("and then")
    expect(users(page).first.locator(".hc-typed")).to_have_text("")
    expect(page.locator(THUMBS)).to_have_count(0)
    expect(users(page).first.locator(".hc-file")).to_have_text(f"only.png · image/png · {len(image)} bytes")


def test_a_bad_file_is_refused_in_words_and_stays_in_the_box(page: Any) -> None:
    pick_model(page, "Auto")
    zipped = b"PK\x03\x04" + b"\x00" * 200  # a ZIP archive named .png: the bytes decide
    attach(page, "button", "holiday.png", zipped)
    expect(page.locator("#hc-input .thumbnail-item, #hc-input img")).not_to_have_count(0)
    box = page.locator("#hc-input textarea")
    box.fill("Look at this")
    box.press("Enter")
    toast = page.get_by_text("looks like a ZIP archive")
    expect(toast).to_be_visible()
    expect(users(page)).to_have_count(0)  # nothing sent, nothing saved
    expect(box).to_have_value("Look at this")  # the text and the file are back in the box, to fix
    expect(page.locator("#hc-input .thumbnail-item, #hc-input img")).not_to_have_count(0)
    expect(box).to_be_enabled()


def test_a_file_over_the_size_limit_is_refused_in_words(page: Any) -> None:
    big = png(8, 8) + b"\x00" * 5_000_001  # over HYBRID_CHAT_ATTACHMENT_MAX_BYTES (5 MB)
    attach(page, "button", "huge.png", big)
    expect(page.get_by_text(re.compile("maximum allowed size|exceed", re.I)).first).to_be_visible()
    expect(page.locator(THUMBS)).to_have_count(0)


@pytest.mark.parametrize("page", PAGE_MODES, indirect=True)
def test_an_image_and_a_pdf_go_together_and_leave_the_box(page: Any) -> None:
    from tests.test_api_attachments import pdf

    pick_model(page, "Auto")
    image, doc = png(16, 16), pdf()
    attach(page, "button", "chart.png", image)
    expect(page.locator(THUMBS)).to_have_count(1)
    attach(page, "drop", "report.pdf", doc, "application/pdf")
    tiles = page.locator('#hc-input [aria-label="File thumbnail"]')
    expect(tiles).to_have_count(2)  # a PDF has an icon
    box = page.locator("#hc-input textarea")
    box.fill("Compare these")
    box.press("Enter")
    expect(tiles).to_have_count(0)  # both files left the box with the message, and the text too
    expect(box).to_have_value("")
    answer = bots(page).first
    expect(answer).to_contain_text(f"image/png 16x16, {len(image):,} bytes")
    expect(answer).to_contain_text("application/pdf")
    expect(answer.locator(".hc-meta")).to_be_visible()
    chips = users(page).first.locator(".hc-file")
    expect(chips).to_have_text(
        [f"chart.png · image/png · {len(image)} bytes", f"report.pdf · application/pdf · {len(doc)} bytes"]
    )
    expect(tiles).to_have_count(0)
    box.fill("Thanks")
    box.press("Enter")  # the next message carries nothing of the last one's
    wait_answer(page, 1)
    expect(users(page).nth(1)).to_have_text("Thanks", use_inner_text=True)
    expect(users(page).nth(1).locator(".hc-file")).to_have_count(0)
    expect(page.get_by_text("no longer on the server")).to_have_count(0)
