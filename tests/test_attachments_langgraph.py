"""Issue 15's scenario through the LangGraph server, as agent-chat-ui sends an upload: `langgraph dev`
serving the graph on the embedded stand-ins, driven with `langgraph_sdk`.

Before: the image block reached the Gemma stand-in (HTTP 500), was retried, then the Gemini stand-in
answered ignoring the image, and each such message counted two failures toward Gemma's breaker (three
open it). Now: Gemini answers and says it received the very bytes, the reason names why, Gemma stays
closed (a text turn after two images is still Gemma's), a bad file is refused in words and does not
poison the thread, and a later turn sees the image again from memory.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.test_langgraph_server import _client, _dev_server, _stream, _values

pytestmark = pytest.mark.integration
META = "hybrid_chat"
DATA: dict[str, Path] = {}  # the server's data directory, by its URL


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("langgraph-attachments")
    env = {
        "HYBRID_CHAT_SQLITE_PATH": str(tmp / "chat.db"),
        "HYBRID_CHAT_TEMPERATURE": "0",
        "HYBRID_CHAT_MAX_TOKENS": "8",
        "HYBRID_CHAT_LOCAL_MODEL_THREADS": "1",
    }
    with _dev_server(tmp, tmp, env) as url:
        DATA[url] = tmp
        yield url


def png(width: int, height: int, color: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


def upload(text: str, data: bytes, mime: str = "image/png", kind: str = "image") -> dict[str, Any]:
    """What agent-chat-ui sends for a message with an upload (its `fileToContentBlock`)."""
    block = {
        "type": kind,
        "mimeType": mime,
        "data": base64.b64encode(data).decode(),
        "metadata": {"name": "a"},
    }
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": text}, block]}]}


def said(data: bytes, shape: str) -> str:
    digest = hashlib.sha256(data).hexdigest()[:12]
    return f"[stand-in received image/png {shape}, {len(data):,} bytes, sha256 {digest}]"


def last(values: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    message = values["messages"][-1]
    content = message["content"]
    text = content if isinstance(content, str) else "".join(b.get("text", "") for b in content)
    return text, message["response_metadata"][META]


async def test_an_upload_through_the_langgraph_server(server: str) -> None:
    client = _client(server)
    thread = (await client.threads.create())["thread_id"]
    image = png(64, 48, "red")
    for _ in range(2):  # before the fix, two such messages were 4 failures: Gemma's breaker open
        streamed = await _stream(client, thread, upload("What is in this picture?", image))
        assert not streamed.errors, streamed.errors
        text, meta = last(await _values(client, thread))
        assert (meta["backend"], meta["route_reason"]) == (
            "gemini",
            "image: Gemma stand-in cannot see images",
        )
        assert said(image, "64x48") in text
    # Gemma was never asked, never marked down: a text message is still answered by Gemma itself.
    out = await client.runs.wait(thread, "chat", input={"messages": [{"role": "user", "content": "Hi"}]})
    meta = out["messages"][-1]["response_metadata"][META]
    assert (meta["backend"], meta["fallback"], meta["route_reason"]) == ("gemma", False, "chosen: gemma")
    # A later turn on Gemini sees the image again, loaded from memory.
    out = await client.runs.wait(
        thread,
        "chat",
        input={"messages": [{"role": "user", "content": "And the picture?"}]},
        context={"model": "gemini"},
    )
    assert said(image, "64x48") in out["messages"][-1]["content"]


async def test_a_bad_upload_is_refused_in_words_and_the_thread_goes_on(server: str) -> None:
    client = _client(server)
    thread = (await client.threads.create())["thread_id"]
    zip_named_png = b"PK\x03\x04" + b"\x00" * 200
    streamed = await _stream(client, thread, upload("Look", zip_named_png))
    assert streamed.errors, "the bad file was not refused"
    assert "looks like a ZIP archive" in str(streamed.errors[0])
    assert (await _values(client, thread)).get("messages", []) == []  # nothing of it stays in the thread
    image = png(16, 16, "blue")
    streamed = await _stream(client, thread, upload("This one then", image))
    assert not streamed.errors, streamed.errors
    text, _ = last(await _values(client, thread))
    assert said(image, "16x16") in text


def test_the_server_kept_each_file_once_outside_the_database(server: str) -> None:
    """Runs after the others in this module (file order): the attachment directory beside the database
    holds each distinct image once (the same image sent twice is one file)."""
    files = [p for p in (DATA[server] / "chat-attachments").rglob("*") if p.is_file()]
    assert sorted(len(p.read_bytes()) for p in files) == sorted(
        [len(png(64, 48, "red")), len(png(16, 16, "blue"))]
    )
