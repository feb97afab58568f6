"""The sync and the async way into the graph behave the same (issue 11: they were two copies that drifted).

Every case runs through `graph.invoke` and through `graph.ainvoke` on the real SQLite store with a
scripted model, so a behaviour that one path has and the other lacks fails here.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from graph.memory.sqlite import SQLiteConversationStore
from tests.hardening.conftest import ScriptedModel, new_id, scripted_graph, turn

PATHS = ["invoke", "ainvoke"]


async def run(graph: Any, path: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    if path == "invoke":  # what a script or a notebook does: a plain sync call (in a worker thread here)
        return await asyncio.to_thread(graph.invoke, *args, **kwargs)
    return await graph.ainvoke(*args, **kwargs)


@pytest.mark.parametrize("path", PATHS)
async def test_a_turn_records_who_answered_on_the_conversation(path: str, tmp_path: Path) -> None:
    store = SQLiteConversationStore(tmp_path / "chat.db")
    graph = scripted_graph(
        store, ScriptedModel(reply=lambda p: "Paris."), ScriptedModel(reply=lambda p: "Rome.")
    )
    sid = new_id()
    out = await run(graph, path, *turn("Capital of France?", sid, model="gemini"))
    assert out["backend"] == "gemini" and out["messages"][-1].content == "Rome."
    conversation = await store.aget_conversation(sid, "local")
    assert conversation.last_model == "gemini" and conversation.message_count == 2
    await store.aclose()


@pytest.mark.parametrize("path", PATHS)
async def test_no_first_token_within_the_deadline_falls_back_at_once(path: str, tmp_path: Path) -> None:
    store = SQLiteConversationStore(tmp_path / "chat.db")
    stuck = ScriptedModel(reply=lambda p: "too late", delay_s=30)  # the first piece would come after 30 s
    graph = scripted_graph(
        store, stuck, ScriptedModel(reply=lambda p: "From Gemini"), first_token_timeout_s=0.5
    )
    started = time.perf_counter()
    out = await run(graph, path, *turn("hello", new_id(), model="gemma"))
    elapsed = time.perf_counter() - started
    assert out["messages"][-1].content == "From Gemini" and out["backend"] == "gemini"
    meta = out["messages"][-1].response_metadata["hybrid_chat"]
    assert meta["fallback"] is True and meta["requested_backend"] == "gemma"
    assert elapsed < 3, f"{path} waited {elapsed:.1f} s for a first token due after 0.5 s"
    await store.aclose()


@pytest.mark.parametrize("path", PATHS)
async def test_a_refused_turn_raises_the_same_error_and_stores_nothing(path: str, tmp_path: Path) -> None:
    from graph.validation import InvalidInput

    store = SQLiteConversationStore(tmp_path / "chat.db")
    model = ScriptedModel(reply=lambda p: "never")
    graph = scripted_graph(store, model)
    sid = new_id()
    for bad in ("   ", "\ud800"):
        with pytest.raises(InvalidInput):
            await run(graph, path, *turn(bad, sid))
    with pytest.raises(InvalidInput, match="unknown model"):
        await run(graph, path, *turn("hi", sid, model="gpt-9"))
    assert model.prompts == []
    assert await store.history(sid, "local").aget_messages() == []
    await store.aclose()


async def test_a_stateless_turn_uses_the_conversation_it_is_given_and_stores_nothing(tmp_path: Path) -> None:
    """OpenAI clients send the whole conversation each time: nothing is read from or written to memory."""
    from langchain_core.messages import AIMessage, HumanMessage

    from graph.client import ChatClient, Done
    from tests.fakes import ScriptedBackends

    store = SQLiteConversationStore(tmp_path / "chat.db")
    model = ScriptedModel(reply=lambda p: "echo:" + "|".join(m.text for m in p if m.type == "human"))
    from graph.settings import Settings

    s = Settings(_env_file=None, max_tokens=16)  # type: ignore[call-arg]
    client = ChatClient.from_settings(
        s, store=store, backends=ScriptedBackends(s, {"gemma": model, "gemini": model})
    )
    conversation = [HumanMessage("first"), AIMessage("an answer"), HumanMessage("second")]
    done = [
        e async for e in client.stream_turn("alice", None, conversation, {"model": "gemma"}, stateless=True)
    ][-1]
    assert isinstance(done, Done) and done.kind == "answer"
    assert done.text == "echo:first|second"
    assert (await store.alist_conversations("alice")).conversations == []
    await store.aclose()
