"""Fault injection on real HTTP: the Gemma backend misbehaves, the real clients and the router cope.

Gemma points at a server the test controls; Gemini is the real ChatVertexAI client on the local
stand-in. Each fault gives the specified behaviour within the configured time, and the saved
history stays consistent.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from graph.backends import Backends
from graph.client import ChatClient
from tests.conftest import local_settings
from tests.support.fault_server import closed_port_url, fault_server

pytestmark = pytest.mark.integration


def make_chat(tmp_path: Path, local_backends: Backends, gemma_url: str, **overrides: object):
    settings = local_settings(
        tmp_path,
        gemma_base_url=gemma_url,
        request_timeout_s=20,
        **{"first_token_timeout_s": 2.0, **overrides},
    )
    backends = Backends(settings, **local_backends.shared_standins())
    backends.warm()  # as the server does at start-up: the fallback's first token is not a cold start
    return ChatClient.from_settings(settings, backends=backends)


def turn(text: str, session: str = "s", model: str = "gemma") -> tuple[dict, dict]:
    return {"messages": [{"role": "user", "content": text}], "model": model}, {
        "configurable": {"session_id": session}
    }


async def saved(chat, session: str = "s") -> list[tuple[str, str]]:
    window = await chat.store.history(session, "local").aget_window(max_messages=100)
    return [(m.type, m.content) for m in window]


async def test_refused_connections_fall_back_to_gemini_at_once(
    tmp_path: Path, local_backends: Backends
) -> None:
    # A long first-token deadline: nothing here waits for one (a refused connection fails at once).
    chat = make_chat(tmp_path, local_backends, closed_port_url(), first_token_timeout_s=20.0)
    started = time.perf_counter()
    out = await chat.graph.ainvoke(*turn("What is the capital of France?"))
    elapsed = time.perf_counter() - started
    assert (
        out["backend"] == "gemini"
        and out["route_reason"] == "fallback: Gemma unavailable; answered by Gemini"
    )
    assert out["messages"][-1].content.strip() and not out.get("error")
    assert elapsed < 6, elapsed  # no retry, no timeout: Gemini's answer at once
    assert await saved(chat) == [
        ("human", "What is the capital of France?"),
        ("ai", out["messages"][-1].content),
    ]


async def test_a_backend_that_hangs_before_the_first_token_times_out_then_falls_back(
    tmp_path: Path, local_backends: Backends
) -> None:
    with fault_server("hang") as server:
        chat = make_chat(tmp_path, local_backends, server.base_url)
        started = time.perf_counter()
        out = await chat.graph.ainvoke(*turn("hello"))
        elapsed = time.perf_counter() - started
    assert server.requests == 1  # a backend that timed out is not asked again: the user waited enough
    assert out["backend"] == "gemini" and "fallback" in out["route_reason"]
    assert 2.0 <= elapsed < 8, elapsed  # one first-token timeout of 2 s, then Gemini's answer


@pytest.mark.parametrize("status", [429, 503])
async def test_http_errors_are_retried_once_then_fall_back(
    tmp_path: Path, local_backends: Backends, status: int
) -> None:
    with fault_server(f"http_{status}") as server:
        chat = make_chat(tmp_path, local_backends, server.base_url)
        out = await chat.graph.ainvoke(*turn("hello"))
    assert server.requests == 2 and out["backend"] == "gemini"
    assert len(await saved(chat)) == 2


async def test_a_failure_after_three_chunks_keeps_the_partial_answer_marked_interrupted(
    tmp_path: Path, local_backends: Backends
) -> None:
    with fault_server("fail_after_3") as server:
        chat = make_chat(tmp_path, local_backends, server.base_url)
        chunks = []
        final = {}
        async for mode, data in chat.graph.astream(*turn("hello"), stream_mode=["messages", "values"]):
            if mode == "messages" and data[1]["langgraph_node"] == "call_model" and data[0].content:
                chunks.append(data[0].content)
            elif mode == "values":
                final = data
    answer = final["messages"][-1]
    assert "".join(chunks) == "Hello from the" == answer.content  # nothing from another model spliced in
    assert answer.response_metadata["hybrid_chat"]["interrupted"]
    assert final["backend"] == "gemma" and final["error"].startswith("interrupted")
    assert server.requests == 1
    assert await saved(chat) == [("human", "hello"), ("ai", "Hello from the")]


async def test_without_fallback_a_dead_backend_gives_a_clear_note_and_keeps_the_message(
    tmp_path: Path, local_backends: Backends
) -> None:
    chat = make_chat(tmp_path, local_backends, closed_port_url(), fallback_enabled=False)
    out = await chat.graph.ainvoke(*turn("Are you there?"))
    assert out["error"] and "unavailable right now" in out["messages"][-1].content
    assert "Traceback" not in out["messages"][-1].content
    assert await saved(chat) == [("human", "Are you there?")]


async def test_the_circuit_breaker_skips_a_dead_backend_and_closes_when_it_returns(
    tmp_path: Path, local_backends: Backends
) -> None:
    with fault_server("hang") as server:
        chat = make_chat(tmp_path, local_backends, server.base_url, breaker_failures=2, breaker_open_s=6)
        await chat.graph.ainvoke(*turn("one", session="a"))  # a first-token timeout (no retry after one)
        await chat.graph.ainvoke(*turn("one more", session="a2"))  # a second: the circuit opens
        assert server.requests == 2
        started = time.perf_counter()
        out = await chat.graph.ainvoke(*turn("two", session="b"))
        skipped_in = time.perf_counter() - started
        assert server.requests == 2 and out["backend"] == "gemini"  # not called at all
        assert skipped_in < 2.0, skipped_in  # no waiting for the 2 s first-token timeout
        server.mode = "ok"
        await asyncio.sleep(6.1)  # the circuit half-opens: the next turn probes Gemma
        out = await chat.graph.ainvoke(*turn("three", session="c"))
        assert out["backend"] == "gemma" and out["messages"][-1].content == "Hello from the fault server."
        assert chat.services.router.breakers["gemma"].state == "closed"


async def test_auto_sends_new_conversations_to_gemini_when_vllm_queues(
    tmp_path: Path, local_backends: Backends
) -> None:
    with fault_server("ok") as server:
        chat = make_chat(tmp_path, local_backends, server.base_url)
        out = await chat.graph.ainvoke(*turn("hi", session="calm", model="auto"))
        assert out["backend"] == "gemma" and out["route_reason"] == "auto: preferred gemma"
        server.waiting = 5
        await chat.services.router.gemma_load.refresh()  # what the background refresh does every few s
        busy = await chat.graph.ainvoke(*turn("hi", session="new", model="auto"))
        ongoing = await chat.graph.ainvoke(*turn("more", session="calm", model="auto"))
    assert busy["backend"] == "gemini" and busy["route_reason"] == "auto: gemma busy (5 requests waiting)"
    assert ongoing["backend"] == "gemma"


async def test_auto_sends_a_context_too_long_for_gemma_to_gemini(
    tmp_path: Path, local_backends: Backends
) -> None:
    with fault_server("ok") as server:
        chat = make_chat(tmp_path, local_backends, server.base_url, gemma_max_model_len=512, max_tokens=16)
        out = await chat.graph.ainvoke(*turn("word " * 600, model="auto"))
    assert out["backend"] == "gemini" and out["route_reason"].startswith("auto: context too long for gemma")
    assert server.requests == 0
