"""A crash mid-answer keeps the question (issue 17, finding 11): it is saved when the turn starts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import httpx
import pytest

from graph.memory.sqlite import SQLiteConversationStore
from tests.support.fault_server import fault_server
from tests.support.server import running_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_kill_9_mid_answer_keeps_the_question(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    with fault_server("hang") as gemma:  # the answer never starts: the server is killed meanwhile
        env = {
            "HYBRID_CHAT_SQLITE_PATH": str(db),
            "HYBRID_CHAT_GEMMA_BASE_URL": gemma.base_url,
            "HYBRID_CHAT_FALLBACK_ENABLED": "false",
            "HYBRID_CHAT_FIRST_TOKEN_TIMEOUT_S": "60",
        }
        with running_server(env, tmp_path / "serve.log") as (url, _started, pid):
            body = json.dumps({"message": "Remember this question", "session_id": "crash-1"})
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                request = asyncio.create_task(
                    client.post("/api/chat", content=body, headers={"content-type": "application/json"})
                )
                for _ in range(100):  # until the backend has the request: the turn has started
                    if gemma.requests:
                        break
                    await asyncio.sleep(0.05)
                assert gemma.requests == 1
                os.kill(pid, signal.SIGKILL)
                with pytest.raises(httpx.HTTPError):
                    await request
    store = SQLiteConversationStore(db)
    messages = await store.history("crash-1", "local").aget_messages()
    assert [(m.type, m.content) for m in messages] == [("human", "Remember this question")]
    await store.aclose()
