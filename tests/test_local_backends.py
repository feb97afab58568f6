"""The graph answers through the real local backends: llama.cpp (for Gemma) and ChatVertexAI (for Gemini).

These are the embedded defaults a user gets with no cloud account; the same client classes talk to
vLLM and Vertex AI in the cluster.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_core.messages import AIMessage

from graph import build_graph
from graph.backends import Backends
from tests.conftest import local_settings

pytestmark = pytest.mark.integration


def turn(text: str, session: str, **extra: object) -> tuple[dict, dict]:
    return {"messages": [{"role": "user", "content": text}], **extra}, {
        "configurable": {"session_id": session}
    }


@pytest.fixture
def chat(tmp_path: Path, local_backends: Backends):
    return build_graph(local_settings(tmp_path), backends=local_backends)


@pytest.mark.parametrize("model", ["gemma", "gemini"])
async def test_each_backend_answers_a_question(chat, model: str) -> None:
    out = await chat.ainvoke(*turn("What is the capital of France?", f"s-{model}", model=model))
    answer = out["messages"][-1]
    assert isinstance(answer, AIMessage) and not out.get("error")
    assert "Paris" in answer.content
    meta = answer.response_metadata["hybrid_chat"]
    assert meta["backend"] == model and "stand-in" in meta["backend_label"]
    assert answer.usage_metadata and answer.usage_metadata["output_tokens"] > 0


def test_gemini_is_served_by_the_real_chatvertexai_client(local_backends: Backends) -> None:
    from langchain_google_vertexai import ChatVertexAI
    from langchain_openai import ChatOpenAI

    from graph.backends import GenerationParams

    params = GenerationParams(0.0, 1.0, 8)
    assert isinstance(local_backends.model("gemini", params), ChatVertexAI)
    assert isinstance(local_backends.model("gemma", params), ChatOpenAI)


@pytest.mark.parametrize("model", ["gemma", "gemini"])
async def test_streaming_yields_tokens_as_they_come(chat, model: str) -> None:
    chunks = [
        chunk.content
        async for chunk, meta in chat.astream(
            *turn("Name three colours.", f"stream-{model}", model=model), stream_mode="messages"
        )
        if meta["langgraph_node"] == "call_model" and chunk.content
    ]
    assert len(chunks) > 1, chunks


@pytest.mark.parametrize("model", ["gemma", "gemini"])
async def test_a_second_turn_sees_the_first(chat, model: str) -> None:
    first = (await chat.ainvoke(*turn("My name is Ada.", f"mem-{model}", model=model)))["messages"][-1]
    second = (await chat.ainvoke(*turn("What is my name?", f"mem-{model}", model=model)))["messages"][-1]
    # The second prompt carries the first question and answer: the server counted them.
    assert (
        second.usage_metadata["input_tokens"]
        > first.usage_metadata["input_tokens"] + (first.usage_metadata["output_tokens"])
    )


def test_the_sync_api_works_too(chat) -> None:
    out = chat.invoke(*turn("Say hello.", "sync", model="gemma"))
    assert out["messages"][-1].content.strip() and not out.get("error")
