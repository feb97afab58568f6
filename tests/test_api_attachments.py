"""`POST /api/chat` with attachments (issue 15): files as base64 in the JSON body, checked from their
bytes before any model is called, read by the backend that can see them (the Gemini stand-in names the
bytes it received), kept with the conversation; a bad file refused with 400 in words; the body limit
big enough for one attachment of the maximum size, and still a limit.

Through the real app in-process (httpx's ASGI transport, as tests/test_api.py), on the local stand-ins.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from graph.backends import Backends
from tests.test_api import app_for, post_chat
from tests.test_attachments import PAGE, pdf_of

pytestmark = pytest.mark.integration


def png(width: int = 64, height: int = 48, color: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


ONE_PAGE = ["<< /Type /Catalog /Pages 2 0 R >>", "<< /Type /Pages /Kids [3 0 R] /Count 1 >>", PAGE]


def pdf(size: int = 0) -> bytes:
    """A one-page PDF, padded with a comment to `size` bytes (when that is larger than the page)."""
    doc = pdf_of(ONE_PAGE)
    padding = size - len(doc)
    while padding >= 2 and len(doc) != size:  # the padding moves the table: its offset's digits may grow
        doc = pdf_of(ONE_PAGE, padding=padding)
        padding += size - len(doc)
    return doc


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def seen(data: bytes) -> str:
    """What the Gemini stand-in says it received: the size and the start of the SHA-256 of the bytes."""
    return f"{len(data):,} bytes, sha256 {hashlib.sha256(data).hexdigest()[:12]}]"


def done_of(events: list[tuple[str, dict]]) -> dict[str, Any]:
    [done] = [d for e, d in events if e == "done"]
    return done


async def test_an_image_is_read_by_the_model_that_can_see_it(
    tmp_path: Path, local_backends: Backends
) -> None:
    """On auto, the image goes to Gemini (the Gemma stand-in cannot see), which names the very bytes;
    the conversation keeps it, and a later text turn in it sees the image again."""
    app = app_for(tmp_path, local_backends)
    image = png()
    body = {"message": "What is in this picture?", "attachments": [{"data": b64(image), "name": "shot.png"}]}
    status, events, text = await post_chat(app, body)
    assert status == 200, text
    done = done_of(events)
    assert done["kind"] == "answer", done
    assert done["meta"]["backend"] == "gemini"
    assert done["meta"]["route_reason"].startswith("image: Gemma stand-in cannot see images")
    assert f"[stand-in received image/png 64x48, {seen(image)}" in done["text"]
    sid = done["session_id"]
    status, events, _ = await post_chat(app, {"message": "And again?", "session_id": sid, "model": "gemini"})
    assert status == 200 and seen(image) in done_of(events)["text"]
    [question, *_] = await app.state.chat.messages("local", sid)
    assert question.content[0] == {"type": "text", "text": "What is in this picture?"}
    assert question.content[1]["extras"]["hybrid_chat_attachment"]["name"] == "shot.png"


async def test_a_pdf_alone_without_text(tmp_path: Path, local_backends: Backends) -> None:
    app = app_for(tmp_path, local_backends)
    doc = pdf()
    status, events, text = await post_chat(
        app, {"attachments": [{"data": b64(doc), "mime_type": "image/png"}]}
    )
    assert status == 200, text
    done = done_of(events)
    assert done["meta"]["backend"] == "gemini" and "application/pdf" in done["text"]
    assert seen(doc) in done["text"]


@pytest.mark.parametrize(
    ("attachments", "says"),
    [
        ([{"data": b64(b"PK\x03\x04" + b"\x00" * 200), "name": "cat.png"}], "looks like a ZIP archive"),
        ([{"data": "not base64!"}], "not valid base64"),
        ([{"data": b64(png()[:60])}], "does not decode"),
        ([{"data": b64(png())}] * 5, "the limit is 4"),
        ([{"data": b64(b"")}], "is empty"),
        (
            [{"data": b64(pdf_of([*ONE_PAGE[:1], ONE_PAGE[1].replace("/Count 1", "/Count -5"), PAGE]))}],
            "-5 pages",
        ),
    ],
    ids=["zip-named-png", "bad-base64", "truncated-png", "too-many", "empty", "pdf-counting-minus-5"],
)
async def test_a_bad_file_is_refused_with_400_saying_why(
    tmp_path: Path, local_backends: Backends, attachments: list[dict[str, str]], says: str
) -> None:
    """Refused before any model is called and before anything is saved: no conversation is created."""
    app = app_for(tmp_path, local_backends)
    status, events, text = await post_chat(
        app, {"message": "Look", "session_id": "bad-upload", "attachments": attachments}
    )
    assert status == 400 and events == [], text
    assert says in text, text
    assert "Traceback" not in text and "InvalidInput" not in text
    assert (await app.state.chat.conversations("local")).conversations == []


async def test_an_attachment_gemma_cannot_take_with_fallback_off_is_refused_in_words(
    tmp_path: Path, local_backends: Backends
) -> None:
    app = app_for(tmp_path, local_backends, fallback_enabled=False)
    status, events, _ = await post_chat(
        app, {"message": "Look", "model": "gemma", "attachments": [{"data": b64(png())}]}
    )
    assert status == 200
    done = done_of(events)
    assert done["kind"] == "failed" and "Gemma stand-in cannot see images" in done["text"]


async def test_the_body_limit_takes_a_max_size_attachment_and_no_more(
    tmp_path: Path, local_backends: Backends
) -> None:
    """The default `max_request_bytes` (7 MiB) carries one attachment of `attachment_max_bytes` (5 MB,
    6.67 MB of base64) with its text; a body past it gets 413 before it is read."""
    app = app_for(tmp_path, local_backends)
    largest = pdf(5_000_000)
    assert len(largest) == 5_000_000
    status, events, text = await post_chat(
        app, {"message": "Summarise", "attachments": [{"data": b64(largest)}]}
    )
    assert status == 200, text[:300]
    assert seen(largest) in done_of(events)["text"]
    over = {"message": "hi", "attachments": [{"data": b64(os.urandom(5_600_000))}]}  # 7.47 MB of base64
    status, _, text = await post_chat(app, over)
    assert status == 413, text[:300]
    one_too_big = pdf(5_000_001)
    status, _, text = await post_chat(app, {"message": "hi", "attachments": [{"data": b64(one_too_big)}]})
    assert status == 400 and "5,000,001 bytes; the limit is 5,000,000" in text
