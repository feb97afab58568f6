"""Attachments in the page (issue 15), in Chromium against the real stand-ins: a conversation whose
message carried an image (sent through `POST /api/chat`, the way in that takes files today) opens in the
page with the attachment shown under the message (name, type, size: the stored message holds a reference,
not the bytes), and who answered and why under the answer, as for any answer; also after a reload."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.sync_api import expect

from tests.browser.appserver import SwitchableBackends
from tests.browser.test_chat_ui import bots
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
