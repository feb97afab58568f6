"""`POST /api/chat`: the programmatic HTTP API streams Server-Sent Events from the graph."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from graph.backends import Backends
from graph.client import ChatClient
from tests.conftest import local_settings

pytestmark = pytest.mark.integration


def app_for(tmp_path: Path, local_backends: Backends, **overrides: Any) -> Any:
    from ui.server import create_app

    settings = local_settings(tmp_path, **overrides)
    return create_app(settings, client=ChatClient.from_settings(settings, backends=local_backends))


async def post_chat(app: Any, body: dict, **kw: Any) -> tuple[int, list[tuple[str, dict]], str]:
    """Status, the (event, data) pairs, and the raw text of a call."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as client:
        r = await client.post("/api/chat", json=body, **kw)
    events = []
    for block in r.text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return r.status_code, events, r.text


async def test_an_answer_streams_as_deltas_then_done(tmp_path: Path, local_backends: Backends) -> None:
    app = app_for(tmp_path, local_backends)
    status, events, _ = await post_chat(app, {"message": "What is the capital of France?", "model": "gemma"})
    assert status == 200
    deltas = [d["text"] for e, d in events if e == "delta"]
    done = [d for e, d in events if e == "done"]
    assert len(deltas) > 1 and len(done) == 1
    assert "".join(deltas) == done[0]["text"] and "Paris" in done[0]["text"]
    assert done[0]["kind"] == "answer" and done[0]["meta"]["backend"] == "gemma"
    # The conversation continues by its session id.
    sid = done[0]["session_id"]
    status, events, _ = await post_chat(
        app, {"message": "And of Italy?", "session_id": sid, "model": "gemini"}
    )
    assert status == 200 and events[-1][1]["session_id"] == sid
    stored = await app.state.chat.messages("local", sid)
    assert [m.type for m in stored] == ["human", "ai", "human", "ai"]


async def test_bad_requests_get_clear_errors(tmp_path: Path, local_backends: Backends) -> None:
    app = app_for(tmp_path, local_backends, rate_limit_per_minute=2)
    status, _, text = await post_chat(app, {"message": "   "})
    assert status == 400 and "empty" in text.lower()
    status, _, text = await post_chat(app, {"message": "hi", "model": "gpt-4"})
    assert status == 400 and "Unknown model" in text
    for _ in range(2):
        assert (await post_chat(app, {"message": "hi", "max_tokens": 4}))[0] == 200
    status, _, text = await post_chat(app, {"message": "hi"})
    assert status == 429 and "too fast" in text


async def test_the_http_contract_statuses_and_headers(tmp_path: Path, local_backends: Backends) -> None:
    """What an HTTP client checks: 429 says when to retry in `Retry-After` (as `/v1` does), a bad session
    id is 400 whatever its fault, a body that is not JSON is 415, another method is 405."""
    app = app_for(tmp_path, local_backends, rate_limit_per_minute=1)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as client:
        # Bad input, refused before the rate limit counts it.
        for bad in ("a/b", "..", "x" * 201, "__all__", "tab\there"):
            r = await client.post("/api/chat", json={"message": "hi", "session_id": bad})
            assert r.status_code == 400, (bad, r.status_code, r.text)
            assert "session" in r.json()["detail"].lower(), r.text
        body = json.dumps({"message": "hi", "max_tokens": 4})
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; b=x"):
            r = await client.post("/api/chat", content=body, headers={"content-type": content_type})
            assert r.status_code == 415, (content_type, r.status_code)
            assert "JSON" in r.json()["detail"]
        r = await client.get("/api/chat")
        assert r.status_code == 405 and r.headers["allow"] == "POST"
        # JSON with a charset is JSON.
        r = await client.post(
            "/api/chat", content=body, headers={"content-type": "application/json; charset=utf-8"}
        )
        assert r.status_code == 200, r.text
        r = await client.post("/api/chat", json={"message": "hi"})
        assert r.status_code == 429 and "too fast" in r.json()["detail"]
        wait = int(r.headers["retry-after"])
        assert 1 <= wait <= 60 and f"in {wait} s" in r.json()["detail"]
        # The limit is checked before any attachment is decoded: over it, images cost the server nothing.
        r = await client.post(
            "/api/chat", json={"message": "hi", "attachments": [{"data": "bm90IGFuIGltYWdl"}]}
        )
        assert r.status_code == 429


async def test_password_mode_needs_http_basic_and_keeps_users_apart(
    tmp_path: Path, local_backends: Backends
) -> None:
    app = app_for(tmp_path, local_backends, auth_users="alice:wonder,bob:builder")
    assert (await post_chat(app, {"message": "hi"}))[0] == 401
    assert (await post_chat(app, {"message": "hi"}, auth=("alice", "wrong")))[0] == 401
    status, events, _ = await post_chat(
        app, {"message": "Alice's secret plan", "max_tokens": 4}, auth=("alice", "wonder")
    )
    assert status == 200
    sid = events[-1][1]["session_id"]
    # Bob cannot continue or read Alice's conversation through the API: ids are scoped to their owner,
    # so the same id is bob's own conversation, which starts empty.
    status, events, text = await post_chat(
        app, {"message": "show me", "session_id": sid, "max_tokens": 4}, auth=("bob", "builder")
    )
    assert status == 200 and events[-1][1]["kind"] == "answer" and events[-1][1]["session_id"] == sid
    assert "secret plan" not in text
    stored = await app.state.chat.messages("alice", sid)
    assert [m.content for m in stored if m.type == "human"] == ["Alice's secret plan"]
    bobs = await app.state.chat.messages("bob", sid)
    assert [m.content for m in bobs if m.type == "human"] == ["show me"]
