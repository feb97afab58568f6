"""A client that disconnects from `/api/chat` stops the model (issue 17, finding 4).

The fault server answers one word every 0.2 s (`echo_slow`) and counts the requests it is answering
(`in_progress`), as llama.cpp's `/slots` would: once the client goes away, that count is back to 0
within 2 s (the backend's HTTP request is cancelled), and what streamed is kept, marked stopped.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from tests.hardening.conftest import SERVER_PASSWORD, call_api, login, new_id

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_a_client_that_disconnects_cancels_the_backend_request(chat_server: dict[str, Any]) -> None:
    url, fault = chat_server["url"], chat_server["fault"]
    sid = new_id()
    fault.mode = "echo_slow"
    try:
        streamed = ""
        async with httpx.AsyncClient(base_url=url, auth=("leaver", SERVER_PASSWORD), timeout=30) as c:
            body = {"message": "tell me a long story", "model": "gemma", "max_tokens": 100, "session_id": sid}
            async with c.stream("POST", "/api/chat", json=body) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line.startswith("data:"):
                        streamed += __import__("json").loads(line[5:]).get("text", "")
                    if len(streamed.split()) >= 3:
                        break  # leave mid-answer: the connection closes
            assert fault.in_progress == 1  # 100 words at 0.2 s: the backend has ~19 s to go
        left = time.perf_counter()
        while fault.in_progress and time.perf_counter() - left < 10:  # noqa: ASYNC110 - another thread's count
            await asyncio.sleep(0.01)
        stopped_in = time.perf_counter() - left
        assert fault.in_progress == 0
        assert stopped_in < 2, f"the backend kept answering {stopped_in:.1f} s after the client left"
    finally:
        fault.mode = "ok"
    # What streamed is kept with the question, marked stopped.
    client = await login(url, "leaver")
    try:
        rows: list = []
        for _ in range(100):
            rows, _, _ = await call_api(client, "conversation", sid)
            if len(rows) == 2:
                break
            await asyncio.sleep(0.05)
        assert [r["role"] for r in rows] == ["user", "assistant"], rows
        assert rows[0]["content"] == "tell me a long story"
        assert rows[1]["content"].startswith(streamed.strip()[:10]), (rows[1], streamed)
    finally:
        await client.aclose()
