"""Graph logic with scripted models and an in-memory store (milliseconds; no servers)."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, SystemMessage

from graph import build_graph
from graph.context import Services
from graph.settings import Settings
from tests.fakes import FailingChatModel, InMemoryStore, ScriptedBackends, fake_model


def make(models: dict, **settings: object):
    store = InMemoryStore()
    s = Settings(_env_file=None, **settings)  # type: ignore[call-arg]
    backends = ScriptedBackends(s, models)
    services = Services.build(s, store=store, backends=backends)
    SERVICES[id(store)] = services
    return build_graph(services=services), store, backends


SERVICES: dict[int, Services] = {}  # each test graph's services, by its store (breakers are checked)


def ask(text: str, session: str = "s1", **extra: object) -> tuple[dict, dict]:
    return {"messages": [{"role": "user", "content": text}], **extra}, {
        "configurable": {"session_id": session}
    }


def test_an_answer_comes_back_with_who_answered_and_why() -> None:
    g, _, _ = make({"gemma": fake_model("Paris."), "gemini": fake_model("nope")})
    out = g.invoke(*ask("Capital of France?", model="gemma"))
    answer = out["messages"][-1]
    assert isinstance(answer, AIMessage) and answer.content == "Paris."
    assert out["backend"] == "gemma" and out["route_reason"] == "chosen: gemma"
    meta = answer.response_metadata["hybrid_chat"]
    assert meta["backend"] == "gemma" and meta["latency_ms"] >= 0 and meta["ttft_ms"] is not None
    assert out["session_id"] == "s1" and not out.get("error")


def test_the_explicit_choice_is_honoured() -> None:
    g, _, backends = make({"gemma": fake_model("g"), "gemini": fake_model("Gemini here")})
    out = g.invoke(*ask("hi", model="gemini"))
    assert out["messages"][-1].content == "Gemini here" and backends.calls == ["gemini"]


def test_a_second_turn_sees_the_first_and_both_are_saved() -> None:
    seen: list[list] = []

    class Recording(type(fake_model())):  # type: ignore[misc]
        def _generate(self, messages, *a, **k):  # type: ignore[no-untyped-def]
            seen.append(messages)
            return super()._generate(messages, *a, **k)

    model = Recording(messages=iter([AIMessage("Hello Ada."), AIMessage("Your name is Ada.")]))
    g, store, _ = make({"gemma": model, "gemini": model})
    g.invoke(*ask("My name is Ada."))
    g.invoke(*ask("What is my name?"))
    prompt = seen[-1]
    assert isinstance(prompt[0], SystemMessage)
    assert [m.content for m in prompt[1:]] == ["My name is Ada.", "Hello Ada.", "What is my name?"]
    assert [m.content for m in store.of("s1")] == [
        "My name is Ada.",
        "Hello Ada.",
        "What is my name?",
        "Your name is Ada.",
    ]


async def test_streaming_yields_tokens_from_the_model_node() -> None:
    g, _, _ = make({"gemma": fake_model("one two three four"), "gemini": fake_model("x")})
    chunks = [
        c
        async for c, meta in g.astream(*ask("count"), stream_mode="messages")
        if meta["langgraph_node"] == "call_model" and c.content
    ]
    assert len(chunks) > 1 and "".join(c.content for c in chunks) == "one two three four"


def failing(tokens_before_failure: int = 0):
    return lambda: FailingChatModel(
        messages=iter([AIMessage("a b c d e f")]), tokens_before_failure=tokens_before_failure
    )


async def test_a_failed_model_call_keeps_the_users_message_and_says_so() -> None:
    g, store, _ = make({"gemma": failing(), "gemini": fake_model("x")}, fallback_enabled=False)
    out = await g.ainvoke(*ask("Are you there?", model="gemma"))
    assert out["error"] and "unavailable" in out["messages"][-1].content
    assert [m.content for m in store.of("s1")] == ["Are you there?"]


async def test_an_explicit_choice_is_retried_once_then_answered_by_the_other_with_a_note() -> None:
    g, store, backends = make({"gemma": failing(), "gemini": fake_model("From Gemini")})
    out = await g.ainvoke(*ask("hi", model="gemma"))
    assert backends.calls == ["gemma", "gemma", "gemini"]
    assert out["messages"][-1].content == "From Gemini" and out["backend"] == "gemini"
    assert out["route_reason"] == "fallback: Gemma unavailable; answered by Gemini"
    assert [m.content for m in store.of("s1")] == ["hi", "From Gemini"]


async def test_the_circuit_opens_skips_the_dead_backend_and_closes_when_it_is_back() -> None:
    now = [0.0]
    healthy = {"gemma": False}

    def gemma():
        return fake_model("Gemma is back") if healthy["gemma"] else failing()()

    g, store, backends = make(
        {"gemma": gemma, "gemini": lambda: fake_model("From Gemini")}, breaker_failures=2, breaker_open_s=30
    )
    services = SERVICES[id(store)]
    for breaker in services.router.breakers.values():
        breaker.clock = lambda: now[0]
    await g.ainvoke(*ask("one", session="a", model="gemma"))  # two failures (try + retry): circuit opens
    assert services.router.breakers["gemma"].state == "open"
    backends.calls.clear()
    out = await g.ainvoke(*ask("two", session="b", model="gemma"))
    assert backends.calls == ["gemini"] and out["backend"] == "gemini"  # skipped without calling gemma
    healthy["gemma"] = True
    now[0] += 31  # half-open: the next request probes gemma
    out = await g.ainvoke(*ask("three", session="c", model="gemma"))
    assert out["backend"] == "gemma" and services.router.breakers["gemma"].state == "closed"


async def test_auto_falls_back_to_the_other_backend_before_the_first_token() -> None:
    g, _, backends = make({"gemma": failing(), "gemini": fake_model("From Gemini")})
    out = await g.ainvoke(*ask("hi", model="auto"))
    assert out["messages"][-1].content == "From Gemini" and out["backend"] == "gemini"
    assert out["route_reason"] == "fallback: Gemma unavailable; answered by Gemini"
    assert backends.calls == ["gemma", "gemini"]  # auto does not retry: the other backend is as good


async def test_a_failure_mid_answer_keeps_the_partial_answer_marked_interrupted() -> None:
    broken = FailingChatModel(messages=iter([AIMessage("a b c d e f")]), tokens_before_failure=3)
    g, store, backends = make({"gemma": broken, "gemini": fake_model("never spliced")}, default_model="auto")
    out = await g.ainvoke(*ask("go"))
    answer = out["messages"][-1]
    assert answer.content == "a b" and answer.response_metadata["hybrid_chat"]["interrupted"]
    assert backends.calls == ["gemma"]  # no second model's text is appended
    assert store.of("s1")[-1].content == "a b"


async def test_a_memory_outage_on_save_is_reported_not_raised() -> None:
    g, store, _ = make({"gemma": fake_model("ok"), "gemini": fake_model("x")})
    store.fail_writes = True
    out = await g.ainvoke(*ask("hi"))
    assert out["messages"][-1].content == "ok" and "could not be saved" in out["error"]


def test_an_unknown_model_is_a_clear_error() -> None:
    g, _, _ = make({"gemma": fake_model("x"), "gemini": fake_model("x")})
    with pytest.raises(ValueError, match="unknown model 'gpt'"):
        g.invoke(*ask("hi", model="gpt"))


def test_the_user_comes_from_the_run_context() -> None:
    g, store, _ = make({"gemma": fake_model("a", "b"), "gemini": fake_model("x")})
    g.invoke(*ask("mine"), context={"user_id": "alice"})
    g.invoke(*ask("let me in"), context={"user_id": "mallory"})  # the same id: her own conversation
    assert [m.content for m in store.of("s1", "alice")] == ["mine", "a"]
    assert [m.content for m in store.of("s1", "mallory")] == ["let me in", "b"]


async def test_metrics_count_requests_routes_and_fallbacks(caplog: pytest.LogCaptureFixture) -> None:
    from prometheus_client import REGISTRY

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = value("hybrid_chat_fallbacks_total", from_backend="gemma", to_backend="gemini")
    before_routes = value("hybrid_chat_route_decisions_total", backend="gemma", reason="chosen: gemma")
    g, _, _ = make({"gemma": failing(), "gemini": lambda: fake_model("ok")})
    with caplog.at_level("INFO", logger="graph.nodes"):
        await g.ainvoke(*ask("secret question", model="gemma"))
    assert value("hybrid_chat_fallbacks_total", from_backend="gemma", to_backend="gemini") == before + 1
    assert (
        value("hybrid_chat_route_decisions_total", backend="gemma", reason="chosen: gemma")
        == before_routes + 1
    )
    assert value("hybrid_chat_backend_errors_total", backend="gemma", kind="connection") >= 2
    turn_logs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("turn ")]
    assert turn_logs and "session=s1" in turn_logs[0] and "backend=gemini" in turn_logs[0]
    assert not any("secret question" in r.getMessage() for r in caplog.records)  # no content in logs


async def test_with_a_checkpointer_the_prompt_still_holds_only_the_history_window() -> None:
    """The LangGraph server keeps a thread's messages in its checkpoint: they must not pile up."""
    from langgraph.checkpoint.memory import InMemorySaver

    prompts: list[list] = []

    class Recording(type(fake_model())):  # type: ignore[misc]
        def _stream(self, messages, *a, **k):  # type: ignore[no-untyped-def]
            prompts.append(messages)
            return super()._stream(messages, *a, **k)

    store = InMemoryStore()
    s = Settings(_env_file=None, history_max_messages=4)  # type: ignore[call-arg]
    model = Recording(messages=iter([AIMessage(f"answer {i}") for i in range(6)]))
    g = build_graph(
        s,
        store=store,
        backends=ScriptedBackends(s, {"gemma": model, "gemini": model}),
        checkpointer=InMemorySaver(),
    )
    thread = {"configurable": {"thread_id": "t1"}}
    for i in range(6):
        out = await g.ainvoke({"messages": [{"role": "user", "content": f"question {i}"}]}, thread)
        assert out["messages"][-1].content == f"answer {i}"
    last = prompts[-1]
    assert [m.content for m in last[1:]] == ["question 3", "answer 3", "question 4", "answer 4", "question 5"]
    assert [m.content for m in store.of("t1")][-2:] == ["question 5", "answer 5"]
    assert len(store.of("t1")) == 12  # every turn saved once


def test_a_backend_refusing_our_credentials_is_routed_around_without_asking_it() -> None:
    g, _, backends = make({"gemma": fake_model("never"), "gemini": fake_model("From Gemini", "Again")})
    backends.credentials["gemma"].state = "misconfigured"  # what a 403 from vLLM leaves behind
    out = g.invoke(*ask("hi", session="a", model="auto"))
    assert out["backend"] == "gemini" and out["route_reason"] == "auto: gemma unavailable (misconfigured)"
    out = g.invoke(*ask("hi", session="b", model="gemma"))  # chosen explicitly: straight to the fallback
    assert out["backend"] == "gemini" and out["messages"][-1].content == "Again"
    assert "gemma" not in backends.calls


async def test_a_stop_as_the_answer_ends_still_saves_it() -> None:
    """Stop (the run's stream closed) between the answer's end and its save: the answer is kept."""
    g, store, _ = make({"gemma": fake_model("Kept."), "gemini": fake_model("x")})
    stream = g.astream(*ask("Keep this", model="gemma"), stream_mode="updates")
    async for update in stream:
        if "call_model" in update:  # the answer is complete: the user presses Stop now
            await stream.aclose()
            break
    await SERVICES[id(store)].turns.settle()
    assert [m.content for m in store.of("s1")] == ["Keep this", "Kept."]


def test_one_finish_reason_per_answer_in_openais_words() -> None:
    from langchain_core.messages import AIMessageChunk

    from graph.finish import finish_reason
    from graph.nodes import _Answer

    assert [finish_reason(r) for r in ("STOP", "MAX_TOKENS", "SAFETY", "length", "tool_calls")] == [
        "stop",
        "length",
        "content_filter",
        "length",
        "tool_calls",
    ]
    assert finish_reason("FINISH_REASON_UNSPECIFIED") is None and finish_reason(None) is None
    assert finish_reason("Something_New") == "something_new"  # kept, not lost
    # Gemini's stream: every chunk repeats its model name and a reason; only the last one says something.
    answer = _Answer("gemini", "Gemini", "pinned", "gemini")
    for text, reason in (
        ("Once", "FINISH_REASON_UNSPECIFIED"),
        (" upon", "FINISH_REASON_UNSPECIFIED"),
        ("", "MAX_TOKENS"),
    ):
        answer.feed(
            AIMessageChunk(
                content=text, response_metadata={"finish_reason": reason, "model_name": "gemini-2.5-flash"}
            )
        )
    message = answer.message()
    assert message.content == "Once upon"
    assert message.response_metadata["finish_reason"] == "length"
    assert message.response_metadata["model_name"] == "gemini-2.5-flash"
    assert message.response_metadata["hybrid_chat"]["finish_reason"] == "length"
