"""Tool calling on the OpenAI endpoint, and background (`task`) requests kept out of people's way.

Through the `openai` SDK and LangChain's `ChatOpenAI(...).bind_tools` against a served app on the real
local stand-ins: the Gemini stand-in answers a `functionCall` (written by the small model under
llama.cpp's grammar) through the unmodified `ChatVertexAI`, and the Gemma stand-in (SmolLM2-135M, which
does not call tools) hands tool turns to Gemini, saying so, or refuses them in words when fallback is
off. The `task` model's cap and vLLM priority are checked on the request a vLLM-shaped server receives.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import openai
import pytest

from graph.backends import Backends
from graph.memory.contract import ConversationNotFound
from tests.browser.appserver import serve_app
from tests.support.fault_server import fault_server
from tests.test_openai_api import app_for, post
from ui.chat import rows_from_messages

pytestmark = pytest.mark.integration

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "the city's name"}},
            "required": ["city"],
        },
    },
}
QUESTION = {"role": "user", "content": "What is the weather in Paris?"}
RESULT = json.dumps({"city": "Paris", "forecast": "sunny", "temperature_c": 21})


def _sdk(base: str, user: str | None = None) -> openai.OpenAI:
    """The SDK against the served app; `user`: "name:password", signed in with HTTP Basic."""
    signed = {"Authorization": "Basic " + base64.b64encode(user.encode()).decode()} if user else None
    return openai.OpenAI(
        base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120, default_headers=signed
    )


def _streamed_call(sdk: openai.OpenAI, **ask: Any) -> tuple[list[dict[str, Any]], str | None, str]:
    """A streamed answer put together as a client does: tool calls by their index, the finish reason,
    and the model named by the last chunk."""
    calls: dict[int, dict[str, Any]] = {}
    finish, model = None, ""
    for chunk in sdk.chat.completions.create(**ask, stream=True):
        model = chunk.model
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = delta.id or call["id"]
                if delta.function is not None:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
    return [calls[i] for i in sorted(calls)], finish, model


def test_a_two_step_tool_call_through_the_openai_sdk_streamed_and_not(
    tmp_path: Path, local_backends: Backends
) -> None:
    """Gemini (its stand-in) is asked for a call, gets the result, and answers with it: the call comes in
    OpenAI's shape (an id, the function's name, its arguments as JSON text, finish `tool_calls`), and the
    answer after the result reads it."""
    app = app_for(tmp_path, local_backends)
    with serve_app(app) as base:
        sdk = _sdk(base)
        ask: dict[str, Any] = {"model": "hybrid-chat/gemini", "tools": [WEATHER], "temperature": 0}
        first = sdk.chat.completions.create(**ask, messages=[QUESTION], tool_choice="required", max_tokens=60)
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls", first
        (call,) = choice.message.tool_calls or []
        assert call.id and call.type == "function" and call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Paris"}
        assert first.model == "hybrid-chat/gemini"

        streamed, finish, model = _streamed_call(
            sdk, **ask, messages=[QUESTION], tool_choice="required", max_tokens=60
        )
        assert finish == "tool_calls" and model == "hybrid-chat/gemini"
        assert [(c["name"], json.loads(c["arguments"])) for c in streamed] == [
            ("get_weather", {"city": "Paris"})
        ]
        assert streamed[0]["id"]

        history = [
            QUESTION,
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": RESULT},
        ]
        final = sdk.chat.completions.create(**ask, messages=history, max_tokens=40)
        text = final.choices[0].message.content or ""
        assert (
            final.choices[0].finish_reason in ("stop", "length") and not final.choices[0].message.tool_calls
        )
        assert "sunny" in text.lower() or "21" in text, text
        pieces = sdk.chat.completions.create(**ask, messages=history, max_tokens=40, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in pieces if c.choices) == text


def test_langchain_bind_tools_against_the_endpoint(tmp_path: Path, local_backends: Backends) -> None:
    """LangChain's own tool loop against `/v1`: bind_tools, the call, a ToolMessage, the answer."""
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city"""
        return RESULT

    app = app_for(tmp_path, local_backends)
    with serve_app(app) as base:
        llm = ChatOpenAI(
            base_url=f"{base}/v1", api_key="unused", model="hybrid-chat/gemini", max_tokens=60, temperature=0
        )
        forced = llm.bind_tools([get_weather], tool_choice="required")
        question = HumanMessage("What is the weather in Paris?")
        call = forced.invoke([question])
        assert [(c["name"], c["args"]) for c in call.tool_calls] == [("get_weather", {"city": "Paris"})]
        streamed = None
        for piece in forced.stream([question]):
            streamed = piece if streamed is None else streamed + piece
        assert streamed is not None and [c["name"] for c in streamed.tool_calls] == ["get_weather"]
        result = ToolMessage(
            get_weather.invoke(call.tool_calls[0]["args"]), tool_call_id=call.tool_calls[0]["id"]
        )
        answer = llm.bind_tools([get_weather]).invoke([question, call, result])
        assert not answer.tool_calls and ("sunny" in answer.text.lower() or "21" in answer.text), answer


def test_a_tool_turn_for_the_gemma_stand_in_is_answered_by_gemini_saying_why(
    tmp_path: Path, local_backends: Backends
) -> None:
    """SmolLM2 on llama.cpp does not call tools: a tool turn asked of Gemma goes to Gemini, and the
    answer says so (the model that answered, the route's reason). A named tool_choice is Gemini's
    mode ANY with that function allowed."""
    app = app_for(tmp_path, local_backends)
    with serve_app(app) as base:
        first = _sdk(base).chat.completions.create(
            model="hybrid-chat/gemma",
            messages=[QUESTION],
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},  # named
            max_tokens=60,
            temperature=0,
        )
        assert first.model == "hybrid-chat/gemini" and first.choices[0].finish_reason == "tool_calls"
        ext = first.model_extra["hybrid_chat"]  # type: ignore[index]
        assert (
            ext["requested_backend"] == "gemini" and "Gemma stand-in cannot call tools" in ext["route_reason"]
        )


async def test_with_fallback_off_a_tool_turn_for_gemma_is_refused_in_words_and_logged(
    tmp_path: Path, local_backends: Backends, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ui.openai_api")
    app = app_for(tmp_path, local_backends, fallback_enabled=False)
    body = {"model": "hybrid-chat/gemma", "messages": [QUESTION], "tools": [WEATHER], "max_tokens": 8}
    r = await post(app, body)
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert "cannot call tools" in message and "Gemini" in message, message
    refused = [rec.getMessage() for rec in caplog.records if rec.name == "ui.openai_api"]
    assert any("refused: status=400" in line for line in refused), refused
    assert all("Paris" not in line for line in refused)  # never the content


async def test_bad_tool_requests_are_refused_saying_what_to_change(
    tmp_path: Path, local_backends: Backends
) -> None:
    app = app_for(tmp_path, local_backends)
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    asked = [QUESTION, {"role": "assistant", "content": None, "tool_calls": [call]}]
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"tools": {"get_weather": {}}}, "tools", "list"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0]", "function tools"),
        ({"tools": [{**WEATHER, "function": {"name": "get weather!"}}]}, "tools[0].function.name", "letters"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
            "one of",
        ),
        ({"tool_choice": "required"}, "tool_choice", "needs `tools`"),
        ({"functions": [WEATHER["function"]]}, "functions", "as `tools`"),
        (
            {"messages": [*asked, {"role": "tool", "content": "x"}], "tools": [WEATHER]},
            "messages[2].tool_call_id",
            "tool_call_id",
        ),
        (
            {
                "messages": [
                    QUESTION,
                    {
                        "role": "assistant",
                        "tool_calls": [{**call, "function": {"name": "f", "arguments": "[1"}}],
                    },
                ]
            },
            "messages[1].tool_calls[0]",
            "JSON object",
        ),
    ]
    for extra, param, words in cases:
        r = await post(app, {"model": "hybrid-chat/gemini", "messages": [QUESTION], "max_tokens": 8, **extra})
        assert r.status_code == 400, (extra, r.text)
        error = r.json()["error"]
        assert error["param"] == param and words in error["message"], (extra, error)
    # A result for a call the answer before it did not make: refused by the graph, in words.
    stray = [*asked, {"role": "tool", "tool_call_id": "call_9", "content": "x"}]
    r = await post(
        app, {"model": "hybrid-chat/gemini", "messages": stray, "tools": [WEATHER], "max_tokens": 8}
    )
    assert r.status_code == 400 and "call_9" in r.json()["error"]["message"], r.text


def test_a_saved_conversation_keeps_the_call_and_its_result_for_the_next_turn(
    tmp_path: Path, local_backends: Backends
) -> None:
    """Signed in, with `x-hybrid-chat-conversation`, the call and the result are stored in order, and the
    next turn's prompt holds them: the conversation reads question, call, result, answer, question,
    answer. Another user naming the same conversation cannot answer its call: theirs is their own."""
    app = app_for(tmp_path, local_backends, auth_users="alice:wonder,bob:builder")
    headers = {"x-hybrid-chat-conversation": "weather-1"}
    with serve_app(app) as base:
        sdk = _sdk(base, "alice:wonder")
        ask: dict[str, Any] = {
            "model": "hybrid-chat/gemini",
            "tools": [WEATHER],
            "temperature": 0,
            "max_tokens": 40,
            "extra_headers": headers,
        }
        first = sdk.chat.completions.create(**ask, messages=[QUESTION], tool_choice="required")
        message = first.choices[0].message
        call = (message.tool_calls or [])[0]
        history = [
            QUESTION,
            message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": RESULT},
        ]
        final = sdk.chat.completions.create(**ask, messages=history)
        answer = final.choices[0].message.content or ""
        assert final.model_extra["hybrid_chat"]["saved"] is True  # type: ignore[index]
        again = [*history, {"role": "assistant", "content": answer}, {"role": "user", "content": "Thanks!"}]
        last = sdk.chat.completions.create(**ask, messages=again)
        assert last.model_extra["hybrid_chat"]["history"] == "matches", last.model_extra  # type: ignore[index]
        with pytest.raises(openai.BadRequestError, match="not a tool call of the answer before it"):
            _sdk(base, "bob:builder").chat.completions.create(**ask, messages=history)
    with pytest.raises(ConversationNotFound):  # nothing of the refused turn was stored for bob
        asyncio.run(app.state.chat.messages("bob", "weather-1"))
    stored = asyncio.run(app.state.chat.messages("alice", "weather-1"))
    kinds = [(m.type, bool(getattr(m, "tool_calls", None))) for m in stored]
    assert kinds == [
        ("human", False),
        ("ai", True),
        ("tool", False),
        ("ai", False),
        ("human", False),
        ("ai", False),
    ], kinds
    assert stored[1].tool_calls[0]["args"] == {"city": "Paris"} and stored[2].text == RESULT
    shown = [row["text"] for row in rows_from_messages(stored)]  # what the page shows of it
    assert shown[1] == f'Called `get_weather` with `{{"city": "Paris"}}`\n\nreturned: `{RESULT}`', shown
    assert len(shown) == 5 and shown[2] == answer


def test_task_requests_are_capped_and_queued_behind_peoples_turns(tmp_path: Path) -> None:
    """`hybrid-chat/task` is listed; on a vLLM with priority scheduling its requests carry the lower
    priority and the capped max_tokens, people's turns priority 0 (what the vLLM-shaped server received)."""
    with fault_server("ok") as vllm:
        app = app_for(
            tmp_path,
            vllm_backends(tmp_path, vllm.base_url),
            gemma_base_url=vllm.base_url,
            gemma_priority_scheduling=True,
            task_max_tokens=32,
            task_priority=7,
        )
        with serve_app(app) as base:
            sdk = _sdk(base)
            assert "hybrid-chat/task" in [m.id for m in sdk.models.list().data]
            title = [{"role": "user", "content": "Generate a concise title for this chat."}]
            sdk.chat.completions.create(model="hybrid-chat/task", messages=title, max_tokens=2000)
            sdk.chat.completions.create(model="hybrid-chat/gemma", messages=[QUESTION], max_tokens=100)
        task, person = vllm.bodies[-2], vllm.bodies[-1]
    assert (task["priority"], task["max_completion_tokens"]) == (7, 32), task
    assert (person["priority"], person["max_completion_tokens"]) == (0, 100), person


def vllm_backends(tmp_path: Path, gemma_base_url: str) -> Backends:
    from tests.conftest import local_settings

    return Backends(local_settings(tmp_path, gemma_base_url=gemma_base_url))


def test_which_backends_call_tools_and_where_a_tool_turn_goes(tmp_path: Path) -> None:
    """The router's rule, without a server: the embedded Gemma stand-in does not call tools, vLLM's
    Gemma does (unless the settings say it was started without a tool-call parser), Gemini does."""
    from graph.policies import default_router
    from graph.router import NoBackendTakes, RouteRequest
    from tests.conftest import local_settings

    local = Backends(local_settings(tmp_path))
    vllm = Backends(local_settings(tmp_path, gemma_base_url="http://vllm:8000/v1"))
    plain = Backends(local_settings(tmp_path, gemma_base_url="http://vllm:8000/v1", gemma_tools=False))
    assert (local.accepts("gemma").tools, vllm.accepts("gemma").tools, plain.accepts("gemma").tools) == (
        False,
        True,
        False,
    )
    assert local.accepts("gemini").tools
    router = default_router(local.settings, local)
    asked = replace(router.signals(), tools=True, accepts={b: local.accepts(b) for b in ("gemma", "gemini")})
    for model in ("gemma", "auto", "task"):
        decision = router.decide(RouteRequest(model, prompt_tokens=10, signals=asked))  # type: ignore[arg-type]
        assert decision.backend == "gemini" and decision.fallback is None, (model, decision)
    assert router.decide(RouteRequest("gemma", prompt_tokens=10, signals=asked)).reason == (
        "tools: Gemma stand-in cannot call tools"
    )
    strict = default_router(local_settings(tmp_path, fallback_enabled=False), local)
    with pytest.raises(NoBackendTakes, match="fallback to another model is off: choose Gemini stand-in"):
        strict.decide(RouteRequest("gemma", prompt_tokens=10, signals=asked))


def test_task_requests_go_to_the_cheaper_backend_unless_it_is_busy_or_down() -> None:
    from graph.policies.task import TaskPolicy
    from graph.router import RouteRequest, Signals

    policy = TaskPolicy(preferred="gemma", gemma_max_model_len=4096, gemma_max_waiting=2)

    def route(waiting: float | None = None, up: bool = True, tokens: int = 100) -> tuple[str, str | None]:
        signals = Signals({"gemma": up, "gemini": True}, gemma_waiting=waiting)
        decision = policy.decide(RouteRequest("task", prompt_tokens=tokens, max_tokens=256, signals=signals))  # type: ignore[arg-type]
        return decision.backend, decision.fallback

    assert route() == ("gemma", "gemini")
    assert route(waiting=1) == ("gemma", "gemini")
    assert route(waiting=2) == ("gemini", "gemma")  # people's queue on vLLM: not behind it
    assert route(up=False) == ("gemini", "gemma")
    assert route(tokens=4000) == ("gemini", None)


def test_gemma_on_a_vllm_with_a_tool_parser_calls_tools_streamed_and_not(tmp_path: Path) -> None:
    """Gemma on vLLM (a server that answers as vLLM's tool-call parser does, arguments streamed in
    pieces) keeps the tool turn: the call goes out through ChatOpenAI's bind_tools with the tools and
    tool_choice as sent, comes back whole in OpenAI's shape, and the result reaches vLLM's prompt."""
    with fault_server("tools") as vllm:
        app = app_for(tmp_path, vllm_backends(tmp_path, vllm.base_url), gemma_base_url=vllm.base_url)
        with serve_app(app) as base:
            sdk = _sdk(base)
            ask: dict[str, Any] = {"model": "hybrid-chat/gemma", "tools": [WEATHER], "max_tokens": 60}
            first = sdk.chat.completions.create(**ask, messages=[QUESTION], tool_choice="required")
            (call,) = first.choices[0].message.tool_calls or []
            assert first.model == "hybrid-chat/gemma" and first.choices[0].finish_reason == "tool_calls"
            assert (call.function.name, json.loads(call.function.arguments)) == (
                "get_weather",
                {"city": "Paris"},
            )
            sent = vllm.bodies[-1]
            assert sent["tool_choice"] == "required" and sent["tools"][0]["function"]["name"] == "get_weather"
            streamed, finish, model = _streamed_call(sdk, **ask, messages=[QUESTION])
            assert (finish, model) == ("tool_calls", "hybrid-chat/gemma")
            assert [(c["name"], json.loads(c["arguments"])) for c in streamed] == [
                ("get_weather", {"city": "Paris"})
            ]
            history = [
                QUESTION,
                first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": RESULT},
            ]
            final = sdk.chat.completions.create(**ask, messages=history)
            assert final.choices[0].message.content == f"echo:{RESULT}", final
            prompt = vllm.prompts[-1]
            assert [m["role"] for m in prompt][-3:] == ["user", "assistant", "tool"], prompt
            assert prompt[-2]["tool_calls"][0]["id"] == call.id and prompt[-1]["tool_call_id"] == call.id


def test_a_prompt_keeps_each_call_with_its_results_and_drops_halves() -> None:
    """What the backends refuse never reaches them: a result whose call was trimmed away is dropped, an
    answer's calls never answered are dropped from it (its text stays), and a call with its result is
    kept as is, never merged with the messages around it."""
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    from graph.nodes import alternate_roles

    call = {"name": "get_weather", "args": {"city": "Paris"}, "id": "c1", "type": "tool_call"}
    prompt = alternate_roles(
        [
            ToolMessage("orphan", tool_call_id="c0"),  # its call was trimmed away
            HumanMessage("weather?"),
            AIMessage("", tool_calls=[call]),
            ToolMessage(RESULT, tool_call_id="c1"),
            AIMessage("Sunny."),
            HumanMessage("and Rome?"),
            AIMessage("Let me check.", tool_calls=[{**call, "id": "c2"}]),  # never answered
            HumanMessage("never mind"),
        ]
    )
    assert [(m.type, m.text, bool(getattr(m, "tool_calls", None))) for m in prompt] == [
        ("human", "weather?", False),
        ("ai", "", True),
        ("tool", RESULT, False),
        ("ai", "Sunny.", False),
        ("human", "and Rome?", False),
        ("ai", "Let me check.", False),
        ("human", "never mind", False),
    ]
