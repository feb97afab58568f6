"""The OpenAI endpoint's answer-shaping options (`stop`, `seed`, `stream_options`, `user`, `n`) and what
operators see of its refusals: through the `openai` SDK against the real local stand-ins, and over ASGI
against an echo model where only the endpoint's own behaviour is under test."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGenerationChunk

from graph.backends import Backends
from graph.client import ChatClient
from tests.browser.appserver import serve_app
from tests.conftest import local_settings
from tests.fakes import FailingChatModel, ScriptedBackends
from tests.test_openai_api import EchoModel, app_for, post

pytestmark = pytest.mark.integration

HI = [{"role": "user", "content": "hi"}]
COUNT = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]


class SlowModel(EchoModel):
    """Answers a token every 0.1 s, for 20 s: a stream that is still running when its client leaves."""

    async def _astream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> AsyncIterator[ChatGenerationChunk]:
        for _ in range(200):
            yield ChatGenerationChunk(message=AIMessageChunk(content="tick "))
            await asyncio.sleep(0.1)


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[tuple[Any, EchoModel]]:
    from ui.server import create_app

    model = EchoModel()
    settings = local_settings(tmp_path)
    backends = ScriptedBackends(settings, {"gemma": model, "gemini": model})
    yield create_app(settings, client=ChatClient.from_settings(settings, backends=backends)), model


def test_stop_cuts_where_asked_on_both_backends(tmp_path: Path, local_backends: Backends) -> None:
    """`stop` reaches llama.cpp through ChatOpenAI and through ChatVertexAI and the Vertex stand-in: the
    answer ends before the sequence, streamed and not, as a string or a list."""
    app = app_for(tmp_path, local_backends)
    with serve_app(app) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        for model in ("hybrid-chat/gemma", "hybrid-chat/gemini"):
            ask: dict[str, Any] = {"model": model, "messages": COUNT, "max_tokens": 40, "temperature": 0}
            whole = client.chat.completions.create(**ask).choices[0].message.content or ""
            assert "3, 4, 5" in whole, (model, whole)  # what the small model says unstopped
            head = whole[: whole.index("4")]
            for stop in ("4", ["4", "never said"]):
                cut = client.chat.completions.create(**ask, stop=stop)
                assert cut.choices[0].message.content == head, (model, stop, cut)
                assert cut.choices[0].finish_reason == "stop"
            chunks = list(client.chat.completions.create(**ask, stop=["4"], stream=True))
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == head, model


def test_a_seed_repeats_an_answer_on_both_backends(tmp_path: Path, local_backends: Backends) -> None:
    """`seed` reaches both backends: at temperature 1 the same seed gives the same answer."""
    app = app_for(tmp_path, local_backends)
    poem = [{"role": "user", "content": "Write one sentence about a cat."}]
    with serve_app(app) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        for model in ("hybrid-chat/gemma", "hybrid-chat/gemini"):
            answers = [
                client.chat.completions.create(
                    model=model, messages=poem, max_tokens=16, temperature=1.0, seed=seed
                )
                .choices[0]
                .message.content
                for seed in (7, 7, 2**31 - 1)
            ]
            assert answers[0] == answers[1] and answers[0], (model, answers)


async def test_options_a_backend_cannot_honour_are_refused_saying_what_to_change(
    echo: tuple[Any, EchoModel],
) -> None:
    app, model = echo
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"n": 2}, "n", "n=1"),
        ({"stop": ["1", "2", "3", "4", "5"]}, "stop", "at most 4"),
        ({"stop": ["x", ""]}, "stop", "empty"),
        ({"seed": 2**33}, "seed", "between"),
        ({"user": "alice\r\nturn session=forged"}, "user", "control characters"),
        ({"user": "u" * 129}, "user", "limit is 128"),
        (
            {"stream": True, "stream_options": {"include_usage": "yes"}},
            "stream_options.include_usage",
            "true or false",
        ),
    ]
    for extra, param, words in cases:
        r = await post(app, {"model": "hybrid-chat/gemma", "messages": HI, **extra})
        assert r.status_code == 400, (extra, r.text)
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert error["param"] == param and words in error["message"], (extra, error)
    assert model.prompts == []


async def test_stream_options_include_usage_as_openai_sends_it(echo: tuple[Any, EchoModel]) -> None:
    """With `include_usage`, every chunk carries `usage`: null, and one more chunk (no choices) carries the
    usage; without it, no chunk has `usage`."""
    app, _ = echo
    for include in (True, False):
        body = {
            "model": "hybrid-chat/gemma",
            "messages": HI,
            "stream": True,
            "stream_options": {"include_usage": include},
        }
        r = await post(app, body)
        lines = [x[6:] for x in r.text.split("\n\n") if x.startswith("data: ")]
        assert lines[-1] == "[DONE]"
        chunks = [json.loads(x) for x in lines[:-1]]
        if include:
            assert all("usage" in c and c["usage"] is None for c in chunks[:-1]), chunks
            assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] >= 0
        else:
            assert not any("usage" in c for c in chunks), chunks


async def test_user_is_the_turns_label_in_the_log_never_an_identity(
    echo: tuple[Any, EchoModel], caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = echo
    caplog.set_level(logging.INFO, logger="graph.nodes")
    body = {"model": "hybrid-chat/gemma", "messages": HI, "user": "team-a:alice"}
    r = await post(app, body, headers={"x-hybrid-chat-conversation": "labelled"})
    assert r.status_code == 200, r.text
    turns = [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("turn ")]
    assert len(turns) == 1 and "caller='team-a:alice'" in turns[0], turns
    # Saved for the signed-in user (the local one here), whatever `user` says.
    assert [c.session_id for c in (await app.state.chat.conversations("local")).conversations] == ["labelled"]
    assert (await app.state.chat.conversations("team-a:alice")).conversations == []


# --- what operators and clients are told when a request is refused or fails ------------------------
def _failing_app(tmp_path: Path, **overrides: Any) -> Any:
    """Both backends fail before their first token (the fallback is tried, then the note)."""
    from ui.server import create_app

    settings = local_settings(tmp_path, **overrides)
    failing = lambda: FailingChatModel(messages=iter([AIMessage("never")]))  # noqa: E731
    backends = ScriptedBackends(settings, {"gemma": failing, "gemini": failing})
    return create_app(settings, client=ChatClient.from_settings(settings, backends=backends))


def _v1_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ui.openai_api"]


async def test_each_refused_request_is_one_log_line_without_its_content(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Status, code, parameter and the key's public id, once per request; never what was asked."""
    from graph.memory.keys import key_store

    app = _failing_app(tmp_path, auth_users="alice:wonder")
    key = (await key_store(app.state.chat.client.store).acreate("alice")).key
    key_id = key.split("_")[1]
    content = "the plan nobody logs"
    ask = [{"role": "user", "content": content}]
    bearer = {"Authorization": f"Bearer {key}"}
    caplog.set_level(logging.INFO)
    stream = {"model": "hybrid-chat/gemma", "messages": ask, "stream": True}
    cases: list[tuple[dict[str, Any], dict[str, str], int, list[str]]] = [
        ({"model": "hybrid-chat/gemma", "messages": ask, "n": 3}, bearer, 400, ["refused", "param=n"]),
        ({"model": "gpt-4o", "messages": ask}, bearer, 404, ["code=model_not_found", "param=model"]),
        (
            {"model": "hybrid-chat/gemma", "messages": ask},
            {"Authorization": f"Bearer hck_{'0' * 12}_{'x' * 43}"},
            401,
            ["code=invalid_api_key", "key=000000000000"],
        ),
        (  # no backend answered: the failure after the turn ran is logged the same way
            {"model": "hybrid-chat/gemma", "messages": ask},
            bearer,
            503,
            ["failed", "code=no_backend_available", "param=-"],
        ),
        (stream, bearer, 200, ["failed mid-stream", "status=503", "code=no_backend_available"]),
    ]
    for body, headers, status, words in cases:
        caplog.clear()
        r = await post(app, body, headers=headers)
        assert r.status_code == status, r.text
        lines = _v1_lines(caplog)
        assert len(lines) == 1, (body, lines)
        assert lines[0].startswith("POST /v1/chat/completions "), lines
        if status != 200:
            words = [*words, f"status={status}"]
        if headers is bearer:
            words = [*words, f"key={key_id}"]
        assert all(w in lines[0] for w in words), (words, lines[0])
        assert not any(content in r.getMessage() for r in caplog.records)


async def test_error_texts_say_what_is_true_for_this_endpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stateless call stores nothing and says nothing of saving; a saved turn says its message is
    saved; the models named are this endpoint's ids, the one asked for and the fallback that failed too."""
    app = _failing_app(tmp_path)
    body = {"model": "hybrid-chat/gemma", "messages": [{"role": "user", "content": "hello"}]}
    r = await post(app, body)
    assert r.status_code == 503, r.text
    message = r.json()["error"]["message"]
    assert message.startswith("hybrid-chat/gemma did not answer, nor did its fallback hybrid-chat/gemini")
    assert "saved" not in message, message

    # The graph's own note for a stateless turn (any way in) says nothing of saving either.
    turn = app.state.chat.client.stream_turn(
        "local", None, [HumanMessage("hello")], {"model": "gemma"}, stateless=True
    )
    done = [event async for event in turn][-1]
    assert done.kind == "backend_error" and "saved" not in done.text, done.text

    r = await post(app, body, headers={"x-hybrid-chat-conversation": "kept"})
    assert r.status_code == 503 and "Your message is saved" in r.json()["error"]["message"], r.text
    stored = await app.state.chat.messages("local", "kept")
    assert [m.text for m in stored] == ["hello"]

    pinned = _failing_app(tmp_path / "pinned", fallback_enabled=False)
    r = await post(pinned, {**body, "model": "hybrid-chat/gemini"})
    assert r.json()["error"]["message"].startswith("hybrid-chat/gemini did not answer"), r.text
    assert "gemma" not in r.json()["error"]["message"]


def test_a_v1_client_gone_is_logged_as_v1(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The stream's own log lines name the way in the client used."""
    import time

    import httpx

    from ui.server import create_app

    settings = local_settings(tmp_path)
    backends = ScriptedBackends(settings, {"gemma": SlowModel(), "gemini": SlowModel()})
    app = create_app(settings, client=ChatClient.from_settings(settings, backends=backends))
    caplog.set_level(logging.INFO, logger="ui.api")
    body = {"model": "hybrid-chat/gemma", "messages": HI, "stream": True}
    with serve_app(app) as base:
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=30) as r:
            next(r.iter_lines())  # the stream started; then the client goes away
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not [x for x in caplog.records if x.name == "ui.api"]:
            time.sleep(0.05)
    lines = [x.getMessage() for x in caplog.records if x.name == "ui.api"]
    assert lines == ["a /v1/chat/completions client went away: its answer was stopped"], lines


# --- structured output ------------------------------------------------------------------------------
PLACE = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
    "required": ["city", "country"],
    "additionalProperties": False,
}
CAPITAL = [{"role": "user", "content": "What is the capital of France? Answer in JSON."}]


def test_json_schema_answers_validate_on_both_backends(tmp_path: Path, local_backends: Backends) -> None:
    """`response_format` reaches llama.cpp's JSON-schema grammar through ChatOpenAI (as vLLM's guided
    decoding would take it) and through ChatVertexAI's response schema and the Vertex stand-in: the
    answers parse and match, streamed and not; the SDK's own `parse` with a Pydantic model (a nested one:
    `$defs` and `$ref`, inlined for Gemini) gets its object back."""
    import jsonschema
    from pydantic import BaseModel

    class Country(BaseModel):
        name: str

    class Capital(BaseModel):
        city: str
        country: Country

    fmt = {"type": "json_schema", "json_schema": {"name": "place", "schema": PLACE, "strict": True}}
    app = app_for(tmp_path, local_backends)
    with serve_app(app) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        for model in ("hybrid-chat/gemma", "hybrid-chat/gemini"):
            ask: dict[str, Any] = {"model": model, "messages": CAPITAL, "max_tokens": 60, "temperature": 0}
            whole = client.chat.completions.create(**ask, response_format=fmt)
            jsonschema.validate(json.loads(whole.choices[0].message.content or ""), PLACE)
            assert whole.model == model and whole.usage is not None and whole.usage.completion_tokens < 60
            chunks = list(
                client.chat.completions.create(
                    **ask, response_format=fmt, stream=True, stream_options={"include_usage": True}
                )
            )
            streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            jsonschema.validate(json.loads(streamed), PLACE)
            usage = chunks[-1].usage
            assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens, usage
            as_json = client.chat.completions.create(**ask, response_format={"type": "json_object"})
            assert isinstance(json.loads(as_json.choices[0].message.content or ""), dict), as_json
            parsed = client.chat.completions.parse(**ask, response_format=Capital).choices[0].message.parsed
            assert isinstance(parsed, Capital) and isinstance(parsed.country, Country), parsed


def test_an_answer_outside_the_format_is_an_error_in_openais_shape(
    tmp_path: Path, local_backends: Backends, echo: tuple[Any, EchoModel]
) -> None:
    """Never passed on as if it matched: an answer cut before its JSON ends (both backends, streamed and
    not), and one that is not JSON at all (a model that ignores the format)."""
    fmt = {"type": "json_schema", "json_schema": {"name": "place", "schema": PLACE}}
    app = app_for(tmp_path, local_backends)
    with serve_app(app) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        for model in ("hybrid-chat/gemma", "hybrid-chat/gemini"):
            ask: dict[str, Any] = {
                "model": model,
                "messages": CAPITAL,
                "max_tokens": 3,
                "response_format": fmt,
            }
            with pytest.raises(openai.InternalServerError) as cut:
                client.chat.completions.create(**ask)
            assert cut.value.status_code == 502
            error = cut.value.body
            assert isinstance(error, dict) and error["code"] == "invalid_output", error
            assert error["param"] == "response_format" and "raise max_tokens" in error["message"], error
            assert error["message"].startswith(f"{model} answered outside"), error
            with pytest.raises(openai.APIError, match="raise max_tokens"):
                list(client.chat.completions.create(**ask, stream=True))
    echo_app, _ = echo
    with serve_app(echo_app) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.InternalServerError, match="not valid JSON"):
            client.chat.completions.create(
                model="hybrid-chat/gemma", messages=HI, response_format={"type": "json_object"}
            )


async def test_a_format_no_backend_can_take_is_refused_saying_what_to_change(
    echo: tuple[Any, EchoModel],
) -> None:
    app, model = echo
    recursive = {
        "type": "object",
        "properties": {"children": {"type": "array", "items": {"$ref": "#"}}},
    }
    cases: list[tuple[Any, str, str]] = [
        ({"type": "xml"}, "response_format.type", '"json_schema"'),
        ({"type": "json_schema"}, "response_format.json_schema", "`name` and the `schema`"),
        (
            {"type": "json_schema", "json_schema": {"name": "a b", "schema": PLACE}},
            "response_format.json_schema.name",
            "letters, digits",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}},
            "response_format.json_schema.schema",
            "not a valid JSON Schema",
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "tree", "schema": recursive}},
            "response_format.json_schema.schema",
            "recursive",
        ),
    ]
    for fmt, param, words in cases:
        r = await post(app, {"model": "hybrid-chat/auto", "messages": HI, "response_format": fmt})
        assert r.status_code == 400, (fmt, r.text)
        error = r.json()["error"]
        assert error["param"] == param and words in error["message"], (fmt, error)
    assert model.prompts == []
