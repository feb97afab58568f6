"""langgraph.json: the LangGraph CLI's server loads the graph and serves it (`langgraph dev`, in-memory).

There the input is just `{"messages": [...]}` and the thread id stands in for the session id. The server
runs from its own venv (`make langgraph-server`), as it pins newer grpcio/protobuf than the main one.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.server import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
LANGGRAPH = ROOT / ".venv-langgraph" / "bin" / "langgraph"


@pytest.fixture(scope="module")
def langgraph_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not LANGGRAPH.exists():
        pytest.fail("the LangGraph server's venv is missing: run `make langgraph-server`")
    tmp = tmp_path_factory.mktemp("langgraph")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRID_CHAT_")}
    env.update(
        HYBRID_CHAT_SQLITE_PATH=str(tmp / "chat.db"),
        HYBRID_CHAT_TEMPERATURE="0",
        HYBRID_CHAT_MAX_TOKENS="16",
        HYBRID_CHAT_LOCAL_MODEL_THREADS="1",
        LANGGRAPH_CLI_NO_ANALYTICS="1",
        LANGGRAPH_NO_VERSION_CHECK="true",
        LANGSMITH_TRACING="false",
    )
    log = open(tmp / "dev.log", "w")
    proc = subprocess.Popen(  # noqa: S603
        [
            str(LANGGRAPH),
            "dev",
            "--config",
            str(ROOT / "langgraph.json"),
            "--no-browser",
            "--no-reload",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=tmp,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp / "dev.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "langgraph dev did not start"
            try:
                if httpx.get(url + "/ok", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


async def test_the_langgraph_server_streams_the_chat_and_keeps_the_thread(langgraph_server: str) -> None:
    from langgraph_sdk import get_client

    client = get_client(url=langgraph_server)
    thread = await client.threads.create()
    for question in ("My name is Ada.", "What is the capital of France?"):
        chunks = []
        async for part in client.runs.stream(
            thread["thread_id"],
            "chat",
            input={"messages": [{"role": "user", "content": question}]},
            stream_mode="messages-tuple",
        ):
            if part.event == "messages":
                chunk, meta = part.data
                if meta.get("langgraph_node") == "call_model" and chunk.get("content"):
                    chunks.append(chunk["content"])
        assert len(chunks) > 1  # streamed token by token
    state = (await client.threads.get_state(thread["thread_id"]))["values"]
    assert [m["type"] for m in state["messages"]] == ["human", "ai", "human", "ai"]
    assert state["backend"] == "gemma" and state["route_reason"] == "chosen: gemma"
