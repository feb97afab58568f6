"""The OpenAI endpoint's answer-shaping options (`stop`, `seed`, `stream_options`, `user`, `n`) and what
operators see of its refusals: through the `openai` SDK against the real local stand-ins, and over ASGI
against an echo model where only the endpoint's own behaviour is under test."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from graph.backends import Backends
from graph.client import ChatClient
from tests.browser.appserver import serve_app
from tests.conftest import local_settings
from tests.fakes import ScriptedBackends
from tests.test_openai_api import EchoModel, app_for, post

pytestmark = pytest.mark.integration

HI = [{"role": "user", "content": "hi"}]
COUNT = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]


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
