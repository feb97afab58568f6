"""The OpenAI-compatible endpoint (`/v1/models`, `/v1/chat/completions`) through the official clients."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field

from graph.backends import Backends
from graph.client import ChatClient
from tests.browser.appserver import serve_app
from tests.conftest import local_settings
from tests.fakes import ScriptedBackends

pytestmark = pytest.mark.integration


def app_for(tmp_path: Path, backends: Backends, **overrides: Any) -> Any:
    from ui.server import create_app

    settings = local_settings(tmp_path, **overrides)
    return create_app(settings, client=ChatClient.from_settings(settings, backends=backends))


class EchoModel(BaseChatModel):
    """Answers "echo:" + the prompt's user messages joined by "|", in small chunks; records the prompts."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    prompts: list[list[BaseMessage]] = Field(default_factory=list)
    lock: Any = Field(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "echo"

    def _answer(self, messages: list[BaseMessage]) -> str:
        with self.lock:
            self.prompts.append(list(messages))
        return "echo:" + "|".join(str(m.content) for m in messages if m.type == "human")

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any):
        return ChatResult(generations=[ChatGeneration(message=AIMessage(self._answer(messages)))])

    async def _astream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> AsyncIterator[ChatGenerationChunk]:
        text = self._answer(messages)
        for i in range(0, len(text), 4):
            yield ChatGenerationChunk(message=AIMessageChunk(content=text[i : i + 4]))


@pytest.fixture
def echo_app(tmp_path: Path) -> Iterator[tuple[Any, EchoModel]]:
    model = EchoModel()
    settings = local_settings(tmp_path)
    backends = ScriptedBackends(settings, {"gemma": model, "gemini": model})
    from ui.server import create_app

    yield create_app(settings, client=ChatClient.from_settings(settings, backends=backends)), model


async def post(app: Any, body: dict[str, Any], **kw: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as client:
        return await client.post("/v1/chat/completions", json=body, **kw)


def test_openai_sdk_lists_models_and_answers_streamed_and_not(
    tmp_path: Path, local_backends: Backends
) -> None:
    app = app_for(tmp_path, local_backends)
    with serve_app(app) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        ids = [m.id for m in client.models.list()]
        # `task`: for clients' background requests (titles, tags, follow-ups; graph/policies/task.py)
        assert ids == ["hybrid-chat/auto", "hybrid-chat/gemma", "hybrid-chat/gemini", "hybrid-chat/task"]

        raw = client.chat.completions.with_raw_response.create(
            model="hybrid-chat/gemma",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=24,
        )
        completion = raw.parse()
        assert completion.object == "chat.completion" and completion.model == "hybrid-chat/gemma"
        assert "Paris" in (completion.choices[0].message.content or "")
        assert completion.usage is not None and completion.usage.completion_tokens > 0
        assert raw.headers["x-hybrid-chat-backend"] == "gemma"
        assert raw.headers["x-hybrid-chat-fallback"] == "false" and raw.headers["x-hybrid-chat-route"]
        extra = completion.model_extra or {}
        assert extra["hybrid_chat"]["backend"] == "gemma"

        stream = client.chat.completions.create(
            model="hybrid-chat/gemini",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert "Paris" in text and sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1
        final = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
        assert (
            final.model == "hybrid-chat/gemini"
            and (final.model_extra or {})["hybrid_chat"]["backend"] == "gemini"
        )
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens > 0


def test_an_answer_cut_at_max_tokens_says_length_for_both_backends(
    tmp_path: Path, local_backends: Backends
) -> None:
    """One finish reason per answer, in OpenAI's words, streamed and not: Gemini's chunks each carry a
    reason ("FINISH_REASON_UNSPECIFIED" until the last, "MAX_TOKENS"), which must not be glued together."""
    app = app_for(tmp_path, local_backends)
    ask = [{"role": "user", "content": "Write a long story about a dragon and a knight."}]
    with serve_app(app) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        for model in ("hybrid-chat/gemma", "hybrid-chat/gemini"):
            completion = client.chat.completions.create(model=model, messages=ask, max_tokens=4)
            assert completion.choices[0].finish_reason == "length", model
            # The same one reason in /api/chat's meta (what the page and the store keep).
            r = httpx.post(
                f"{base}/api/chat",
                json={"message": ask[0]["content"], "model": model.split("/")[1], "max_tokens": 4},
                timeout=60,
            )
            done = json.loads(r.text.split("event: done\ndata: ", 1)[1].split("\n", 1)[0])
            assert done["meta"]["finish_reason"] == "length", (model, done["meta"])
            chunks = list(
                client.chat.completions.create(model=model, messages=ask, max_tokens=4, stream=True)
            )
            reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
            assert reasons == ["length"], (model, reasons)


async def test_async_sdk_streams_two_turns_into_a_conversation(
    tmp_path: Path, local_backends: Backends
) -> None:
    app = app_for(tmp_path, local_backends)
    with serve_app(app) as base:
        client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        messages: list[dict[str, str]] = []
        finals = []
        for question in ("What is the capital of France?", "And what is the capital of Italy?"):
            messages.append({"role": "user", "content": question})
            stream = await client.chat.completions.create(
                model="hybrid-chat/auto",
                messages=messages,  # type: ignore[arg-type]
                max_tokens=24,
                stream=True,
                metadata={"conversation_id": "async-sdk"},
            )
            chunks = [c async for c in stream]
            answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finals.append(next(c for c in chunks if c.choices and c.choices[0].finish_reason))
            messages.append({"role": "assistant", "content": answer})
        assert "Paris" in messages[1]["content"] and messages[3]["content"].strip()
        extension = [(f.model_extra or {})["hybrid_chat"] for f in finals]
        assert [e["history"] for e in extension] == [
            "matches",
            "matches",
        ]  # the streamed text is what was stored
        assert all(e["saved"] and e["conversation_id"] == "async-sdk" for e in extension)
        stored = await app.state.chat.messages("local", "async-sdk")
        assert [m.text for m in stored] == [m["content"] for m in messages]
        await client.close()


def test_langchain_chat_openai(tmp_path: Path, local_backends: Backends) -> None:
    from langchain_openai import ChatOpenAI

    app = app_for(tmp_path, local_backends)
    with serve_app(app) as base:
        llm = ChatOpenAI(base_url=f"{base}/v1", api_key="unused", model="hybrid-chat/gemma", max_tokens=24)
        answer = llm.invoke("What is the capital of France?")
        assert "Paris" in answer.text
        assert answer.response_metadata.get("model_name") == "hybrid-chat/gemma"
        streamed = "".join(c.text for c in llm.stream("What is the capital of France?"))
        assert "Paris" in streamed


async def test_a_conversation_sent_as_messages_reaches_the_model_and_nothing_is_stored(
    echo_app: tuple[Any, EchoModel],
) -> None:
    app, model = echo_app
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": [{"type": "text", "text": "second question"}]},
    ]
    r = await post(app, {"model": "hybrid-chat/gemma", "messages": messages, "seed": 7, "user": "u1"})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "echo:first question|second question"
    prompt = model.prompts[-1]
    assert [m.type for m in prompt] == ["system", "human", "ai", "human"]
    assert "Be brief.\n\nAnswer in French." in str(prompt[0].content)
    assert prompt[2].content == "first answer"
    listed = await app.state.chat.conversations("local")
    assert listed.conversations == []


async def test_bad_requests_are_refused_in_openais_shape(echo_app: tuple[Any, EchoModel]) -> None:
    app, model = echo_app
    hi = [{"role": "user", "content": "hi"}]
    cases = [
        ({"model": "hybrid-chat/gemma", "messages": hi, "n": 2}, 400, "n"),
        ({"model": "gpt-4o", "messages": hi}, 404, "model"),
        ({"model": "hybrid-chat/gemma", "messages": hi, "stop": ["1", "2", "3", "4", "5"]}, 400, "stop"),
        (
            {"model": "hybrid-chat/gemma", "messages": [{"role": "assistant", "content": "x"}]},
            400,
            "messages",
        ),
        (
            {"model": "hybrid-chat/gemma", "messages": [{"role": "function", "content": "x"}]},
            400,
            "messages[0].role",
        ),
        (  # a tool's result names the call it answers (tests/test_openai_tools.py has the rest)
            {"model": "hybrid-chat/gemma", "messages": [{"role": "tool", "content": "x"}]},
            400,
            "messages[0].tool_call_id",
        ),
        ({"model": "hybrid-chat/gemma", "messages": hi, "tools": [{"type": "function"}]}, 400, "tools[0]"),
        (  # a link: the graph never fetches a URL for a user
            {
                "model": "hybrid-chat/gemma",
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            },
            400,
            "messages",
        ),
        (  # images and files only in user messages
            {
                "model": "hybrid-chat/gemma",
                "messages": [
                    {"role": "system", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]},
                    *hi,
                ],
            },
            400,
            "messages[0].content",
        ),
        (
            {"model": "hybrid-chat/gemma", "messages": [{"role": "user", "content": [{"type": "audio"}]}]},
            400,
            "messages[0].content",
        ),
    ]
    for body, status, param in cases:
        r = await post(app, body)
        assert r.status_code == status, (body, r.text)
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    conversation_cases = [  # the conversation to save into: named twice differently, not an id, not text
        ({"x-hybrid-chat-conversation": "c1"}, {"conversation_id": "c2"}),
        ({"x-hybrid-chat-conversation": "a/b"}, None),
        ({}, {"conversation_id": "__x__"}),
        ({}, {"conversation_id": 7}),
    ]
    for headers, metadata in conversation_cases:
        body = {"model": "hybrid-chat/gemma", "messages": hi, "metadata": metadata}
        r = await post(app, body, headers=headers)
        assert r.status_code == 400 and r.json()["error"]["param"] == "metadata.conversation_id", r.text
    r = await post(app, {"messages": hi})
    assert r.status_code == 400 and "model" in r.json()["error"]["message"]
    assert model.prompts == []  # nothing refused reached the model


def test_sdk_raises_the_right_errors(tmp_path: Path, echo_app: tuple[Any, EchoModel]) -> None:
    app, _ = echo_app
    with serve_app(app) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        hi = [{"role": "user", "content": "hi"}]
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model="hybrid-chat/gemma", messages=hi, n=2)  # type: ignore[arg-type]
        assert "n=1" in str(bad.value)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=hi)  # type: ignore[arg-type]


async def test_sign_in_is_required_when_configured(tmp_path: Path, local_backends: Backends) -> None:
    app = app_for(tmp_path, local_backends, auth_users="alice:wonder")
    body = {"model": "hybrid-chat/gemma", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    r = await post(app, body)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert (await post(app, body, auth=("alice", "wrong"))).status_code == 401
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/v1/models")).status_code == 401
    r = await post(app, body, auth=("alice", "wonder"))
    assert r.status_code == 200 and r.json()["object"] == "chat.completion"
    assert (await app.state.chat.conversations("alice")).conversations == []


async def test_rate_limit_is_429_with_retry_after(tmp_path: Path) -> None:
    model = EchoModel()
    settings = local_settings(tmp_path, rate_limit_per_minute=1)
    from ui.server import create_app

    app = create_app(
        settings,
        client=ChatClient.from_settings(
            settings, backends=ScriptedBackends(settings, {"gemma": model, "gemini": model})
        ),
    )
    body = {"model": "hybrid-chat/gemma", "messages": [{"role": "user", "content": "hi"}]}
    assert (await post(app, body)).status_code == 200
    r = await post(app, body)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["type"] == "rate_limit_error"


async def test_streamed_response_over_asgi(echo_app: tuple[Any, EchoModel]) -> None:
    app, _ = echo_app
    body = {
        "model": "hybrid-chat/auto",
        "messages": [{"role": "user", "content": "one two three"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    r = await post(app, body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    lines = [line[6:] for line in r.text.split("\n\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "echo:one two three"
    final = chunks[-2]
    assert final["choices"][0]["finish_reason"] == "stop" and final["model"].startswith("hybrid-chat/")
    assert final["hybrid_chat"]["backend"] in ("gemma", "gemini") and final["hybrid_chat"]["route_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] >= 0


def test_sdk_signs_in_with_http_basic(tmp_path: Path) -> None:
    import base64

    model = EchoModel()
    settings = local_settings(tmp_path, auth_users="alice:wonder")
    from ui.server import create_app

    backends = ScriptedBackends(settings, {"gemma": model, "gemini": model})
    app = create_app(settings, client=ChatClient.from_settings(settings, backends=backends))
    hi = [{"role": "user", "content": "hi"}]
    with serve_app(app) as base:
        anonymous = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            anonymous.chat.completions.create(model="hybrid-chat/gemma", messages=hi)  # type: ignore[arg-type]
        basic = "Basic " + base64.b64encode(b"alice:wonder").decode()
        alice = openai.OpenAI(
            base_url=f"{base}/v1", api_key="unused", max_retries=0, default_headers={"Authorization": basic}
        )
        answer = alice.chat.completions.create(model="hybrid-chat/gemma", messages=hi)  # type: ignore[arg-type]
        assert answer.choices[0].message.content == "echo:hi"


def conv_headers(cid: str) -> dict[str, str]:
    return {"x-hybrid-chat-conversation": cid}


async def test_a_named_conversation_keeps_only_the_new_turn_and_memory_is_the_context(
    echo_app: tuple[Any, EchoModel],
) -> None:
    """OpenAI clients send the whole history each time: only the last question and its answer are
    stored, and the stored conversation (not the client's copy) is what the model sees."""
    app, model = echo_app
    chats = app.state.chat
    first = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "first question"}]
    r = await post(app, {"model": "hybrid-chat/gemma", "messages": first}, headers=conv_headers("c1"))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "echo:first question"
    assert r.headers["x-hybrid-chat-conversation"] == "c1" and r.headers["x-hybrid-chat-saved"] == "true"
    assert r.headers["x-hybrid-chat-history"] == "matches"  # nothing earlier sent: nothing to disagree
    assert r.json()["hybrid_chat"]["conversation_id"] == "c1" and r.json()["hybrid_chat"]["saved"] is True
    assert [m.text for m in await chats.messages("local", "c1")] == ["first question", "echo:first question"]

    # The client's copy disagrees with memory (an edited answer, a turn memory never saw): memory wins.
    history = [
        *first,
        {"role": "assistant", "content": "an answer the client edited"},
        {"role": "user", "content": "a question only the client has"},
        {"role": "assistant", "content": "its answer"},
        {"role": "user", "content": "second question"},
    ]
    body = {"model": "hybrid-chat/gemma", "messages": history, "metadata": {"conversation_id": "c1"}}
    r = await post(app, body)
    assert r.json()["choices"][0]["message"]["content"] == "echo:first question|second question"
    assert r.headers["x-hybrid-chat-history"] == "differs" and r.json()["hybrid_chat"]["history"] == "differs"
    prompt = model.prompts[-1]
    assert [m.type for m in prompt] == ["system", "human", "ai", "human"]
    assert prompt[0].content == "Be brief." and prompt[2].content == "echo:first question"

    streamed = {**body, "messages": [{"role": "user", "content": "third"}], "stream": True}
    r = await post(app, streamed)
    lines = [json.loads(x[6:]) for x in r.text.split("\n\n") if x.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in lines if c["choices"])
    assert text == "echo:first question|second question|third"
    assert lines[-1]["hybrid_chat"]["conversation_id"] == "c1" and lines[-1]["hybrid_chat"]["saved"] is True
    assert lines[-1]["hybrid_chat"]["history"] == "matches"
    stored = [m.text for m in await chats.messages("local", "c1")]
    assert stored == [
        "first question",
        "echo:first question",
        "second question",
        "echo:first question|second question",
        "third",
        "echo:first question|second question|third",
    ]
    assert [c.session_id for c in (await chats.conversations("local")).conversations] == ["c1"]

    # The client's copy as memory has it (its last turns, the older ones left out): "matches".
    roles = ["user", "assistant"] * 2
    copy = [{"role": role, "content": text} for role, text in zip(roles, stored[2:], strict=True)]
    body["messages"] = [*copy, {"role": "user", "content": "fourth"}]
    r = await post(app, body)
    assert r.headers["x-hybrid-chat-history"] == "matches", r.text
    # A new conversation, but the client has history: "differs"; the turn is saved all the same.
    body = {**body, "metadata": {"conversation_id": "c2"}}
    r = await post(app, body)
    assert r.headers["x-hybrid-chat-history"] == "differs" and r.headers["x-hybrid-chat-saved"] == "true"
    assert [m.text for m in await chats.messages("local", "c2")] == ["fourth", "echo:fourth"]


def test_two_users_naming_the_same_conversation_each_get_their_own(tmp_path: Path) -> None:
    """Conversation ids are scoped to their owner. Bob names "plans" first (as a squatter would a
    predictable id); alice then names "plans" and gets her own conversation, saved and continued, while
    bob goes on in his: through the `openai` SDK, by header and by `metadata.conversation_id`, streamed
    and not. Each one's model saw only their own messages."""
    import asyncio

    from graph.memory.keys import key_store
    from ui.server import create_app

    model = EchoModel()
    settings = local_settings(tmp_path, auth_users="alice:wonder,bob:builder")
    backends = ScriptedBackends(settings, {"gemma": model, "gemini": model})
    app = create_app(settings, client=ChatClient.from_settings(settings, backends=backends))
    chats = app.state.chat
    keys = key_store(chats.client.store)
    alice_key, bob_key = (asyncio.run(keys.acreate(u)).key for u in ("alice", "bob"))

    def ask(sdk: openai.OpenAI, text: str, *, by: str, stream: bool = False) -> tuple[str, Any]:
        """(answer, response headers) of one turn saved into "plans", named `by` header or metadata."""
        named: dict[str, Any] = (
            {"extra_headers": conv_headers("plans")}
            if by == "header"
            else {"metadata": {"conversation_id": "plans"}}
        )
        msgs = [{"role": "user", "content": text}]
        if stream:
            with sdk.chat.completions.with_streaming_response.create(
                model="hybrid-chat/gemma",
                messages=msgs,
                stream=True,
                **named,  # type: ignore[arg-type]
            ) as r:
                chunks = list(r.parse())
                return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), r.headers
        raw = sdk.chat.completions.with_raw_response.create(model="hybrid-chat/gemma", messages=msgs, **named)  # type: ignore[arg-type]
        return raw.parse().choices[0].message.content or "", raw.headers

    with serve_app(app) as base:
        alice, bob = (
            openai.OpenAI(base_url=f"{base}/v1", api_key=k, max_retries=0) for k in (alice_key, bob_key)
        )
        answer, headers = ask(bob, "bob squats", by="header")
        assert answer == "echo:bob squats" and headers["x-hybrid-chat-saved"] == "true"
        answer, headers = ask(alice, "alice's secret plan", by="header")
        assert answer == "echo:alice's secret plan", answer  # nothing of bob's in her context
        assert headers["x-hybrid-chat-conversation"] == "plans" and headers["x-hybrid-chat-saved"] == "true"
        answer, _ = ask(bob, "bob again", by="metadata", stream=True)
        assert answer == "echo:bob squats|bob again", answer  # nothing of alice's in his
        answer, _ = ask(alice, "and then", by="metadata")
        assert answer == "echo:alice's secret plan|and then"
        answer, _ = ask(alice, "last", by="header", stream=True)
        assert answer == "echo:alice's secret plan|and then|last"

    def humans(user: str) -> list[str]:
        return [m.text for m in asyncio.run(chats.messages(user, "plans")) if m.type == "human"]

    assert humans("alice") == ["alice's secret plan", "and then", "last"]
    assert humans("bob") == ["bob squats", "bob again"]
    for user in ("alice", "bob"):
        assert [c.session_id for c in asyncio.run(chats.conversations(user)).conversations] == ["plans"]
    for prompt in model.prompts:  # each prompt holds one user's messages only
        said = {str(m.content) for m in prompt if m.type == "human"}
        assert said <= set(humans("alice")) or said <= set(humans("bob")), said
    asyncio.run(keys.aclose())


def test_litellm_client_two_turns_saved_and_streamed(tmp_path: Path, local_backends: Backends) -> None:
    """LiteLLM's own client (`litellm.completion` / `acompletion`, `openai/` provider, `api_base`), with an
    API key and the conversation header, against the real local stand-ins."""
    import asyncio
    import os

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of its price list
    import litellm

    from graph.memory.keys import key_store

    app = app_for(tmp_path, local_backends, auth_users="alice:wonder")
    key = asyncio.run(key_store(app.state.chat.client.store).acreate("alice")).key
    common: dict[str, Any] = {
        "model": "openai/hybrid-chat/auto",
        "api_key": key,
        "max_tokens": 24,
        "temperature": 0,
        "extra_headers": conv_headers("via-litellm"),
        "num_retries": 0,
    }
    with serve_app(app) as base:
        common["api_base"] = f"{base}/v1"
        q1 = [{"role": "user", "content": "What is the capital of France?"}]
        first = litellm.completion(messages=q1, **common)
        a1 = first.choices[0].message.content or ""
        assert "Paris" in a1

        q2 = [*q1, {"role": "assistant", "content": a1}, {"role": "user", "content": "And of Italy?"}]
        chunks = list(litellm.completion(messages=q2, stream=True, **common))
        a2 = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert a2.strip() and sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1

        async def third() -> str:
            q3 = [{"role": "user", "content": "What is the capital of Spain?"}]
            stream = await litellm.acompletion(messages=q3, stream=True, **common)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        a3 = asyncio.run(third())
        assert a3.strip()
        stored = asyncio.run(app.state.chat.messages("alice", "via-litellm"))
        texts = [m.text for m in stored]
        assert texts == [q1[0]["content"], a1, "And of Italy?", a2, "What is the capital of Spain?", a3]

        with pytest.raises(litellm.AuthenticationError):
            litellm.completion(messages=q1, **{**common, "api_key": key[:-2] + "zz"})


def test_page_and_endpoint_share_a_users_rate_limit(tmp_path: Path) -> None:
    """Two messages a minute for alice, whichever way in: the page (through gradio_client) uses one,
    this endpoint the other, then both refuse her; bob is not affected."""
    import asyncio

    from gradio_client import Client

    from graph.memory.keys import key_store
    from ui.server import create_app

    model = EchoModel()
    settings = local_settings(tmp_path, auth_users="alice:wonder,bob:builder", rate_limit_per_minute=2)
    backends = ScriptedBackends(settings, {"gemma": model, "gemini": model})
    app = create_app(settings, client=ChatClient.from_settings(settings, backends=backends))
    keys = key_store(app.state.chat.client.store)
    alice_key, bob_key = (asyncio.run(keys.acreate(u)).key for u in ("alice", "bob"))
    hi = [{"role": "user", "content": "hi"}]
    with serve_app(app) as base:
        page = Client(base, auth=("alice", "wonder"), verbose=False)
        assert page.predict("from the page", "gemma", "p1", api_name="/chat") == "echo:from the page"
        api = openai.OpenAI(base_url=f"{base}/v1", api_key=alice_key, max_retries=0)
        assert api.chat.completions.create(model="hybrid-chat/gemma", messages=hi).choices[0].message.content
        with pytest.raises(openai.RateLimitError) as limited:
            api.chat.completions.create(model="hybrid-chat/gemma", messages=hi)  # type: ignore[arg-type]
        assert int(limited.value.response.headers["retry-after"]) >= 1
        with pytest.raises(Exception, match="too fast"):
            page.predict("again from the page", "gemma", "p1", api_name="/chat")
        bob = openai.OpenAI(base_url=f"{base}/v1", api_key=bob_key, max_retries=0)
        assert bob.chat.completions.create(model="hybrid-chat/gemma", messages=hi).choices[0].message.content
    assert len(model.prompts) == 3


def test_an_image_part_is_read_by_the_backend_that_can_see_it(
    tmp_path: Path, local_backends: Backends
) -> None:
    """OpenAI's `image_url` part with a data: URL, through the SDK: the router sends it to the backend
    that can read images (the Gemini stand-in, which names the bytes it got), stateless and saved."""
    import asyncio
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), "red").save(buf, "PNG")
    image = buf.getvalue()
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    parts = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    seen = f"[stand-in received image/png 64x48, {len(image):,} bytes"
    app = app_for(tmp_path, local_backends)
    with serve_app(app) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(
            model="hybrid-chat/auto", messages=[{"role": "user", "content": parts}], max_tokens=24
        )
        assert seen in (answer.choices[0].message.content or "")
        assert answer.model == "hybrid-chat/gemini"
        assert "image" in (answer.model_extra or {})["hybrid_chat"]["route_reason"]

        stream = client.chat.completions.create(
            model="hybrid-chat/auto",
            messages=[{"role": "user", "content": parts}],  # type: ignore[list-item]
            max_tokens=24,
            stream=True,
            metadata={"conversation_id": "picture"},
        )
        assert seen in "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        stored = asyncio.run(app.state.chat.messages("local", "picture"))
        assert [m.type for m in stored] == ["human", "ai"] and stored[0].text.startswith("What is in")
        assert any(
            isinstance(b, dict) and b.get("type") != "text" for b in stored[0].content
        )  # the file kept

        # OpenAI's `file` part, a PDF: read by the backend that can read PDFs too.
        from tests.test_attachments import pdf

        doc = pdf(2)
        data = "data:application/pdf;base64," + base64.b64encode(doc).decode()
        file_part = {"type": "file", "file": {"file_data": data, "filename": "notes.pdf"}}
        answer = client.chat.completions.create(
            model="hybrid-chat/auto",
            messages=[{"role": "user", "content": [{"type": "text", "text": "Summarise this."}, file_part]}],  # type: ignore[list-item]
            max_tokens=24,
        )
        assert f"[stand-in received application/pdf, {len(doc):,} bytes" in (
            answer.choices[0].message.content or ""
        )
        assert "pdf" in (answer.model_extra or {})["hybrid_chat"]["route_reason"]

        link = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(
                model="hybrid-chat/auto", messages=[{"role": "user", "content": link}]
            )
