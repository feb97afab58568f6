"""Routing policies decide from what is known at the moment, and say why."""

from __future__ import annotations

import pytest

from graph.health import CircuitBreaker
from graph.load import parse_waiting
from graph.policies import AutoPolicy, PinnedPolicy, default_router
from graph.router import RouteRequest, Signals
from graph.settings import Settings

UP = Signals({"gemma": True, "gemini": True})


def auto(**kw: object) -> AutoPolicy:
    return AutoPolicy(gemma_max_model_len=1000, gemma_max_waiting=2, **kw)  # type: ignore[arg-type]


def test_auto_prefers_the_in_cluster_model() -> None:
    d = auto().decide(RouteRequest("auto", prompt_tokens=100, max_tokens=100, signals=UP))
    assert (d.backend, d.reason, d.fallback) == ("gemma", "auto: preferred gemma", "gemini")


def test_auto_sends_a_context_too_long_for_gemma_to_gemini_without_fallback() -> None:
    d = auto().decide(RouteRequest("auto", prompt_tokens=950, max_tokens=100, signals=UP))
    assert d.backend == "gemini" and d.fallback is None
    assert d.reason == "auto: context too long for gemma (1050 > 1000 tokens)"


def test_auto_avoids_a_backend_whose_circuit_is_open() -> None:
    down = Signals({"gemma": False, "gemini": True})
    d = auto().decide(RouteRequest("auto", prompt_tokens=10, signals=down))
    assert d.backend == "gemini" and d.reason == "auto: gemma unavailable (circuit open)"


def test_auto_sends_new_conversations_away_from_a_queueing_vllm_but_keeps_ongoing_ones() -> None:
    busy = Signals({"gemma": True, "gemini": True}, gemma_waiting=3)
    new = auto().decide(RouteRequest("auto", prompt_tokens=10, new_conversation=True, signals=busy))
    ongoing = auto().decide(RouteRequest("auto", prompt_tokens=10, new_conversation=False, signals=busy))
    assert new.backend == "gemini" and new.reason == "auto: gemma busy (3 requests waiting)"
    assert ongoing.backend == "gemma"


def test_auto_can_prefer_gemini() -> None:
    d = auto(preferred="gemini").decide(RouteRequest("auto", prompt_tokens=10, signals=UP))
    assert d.backend == "gemini" and d.fallback == "gemma"


def test_an_explicit_choice_is_retried_and_falls_back_unless_turned_off() -> None:
    assert PinnedPolicy("gemini").decide(RouteRequest("gemini", 10)).fallback == "gemma"
    assert PinnedPolicy("gemini", fallback=False).decide(RouteRequest("gemini", 10)).fallback is None


def test_the_router_rejects_unknown_models_clearly() -> None:
    router = default_router(Settings(_env_file=None))  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="choose one of auto, gemini, gemma"):
        router.decide(RouteRequest("gpt-4", 10))  # type: ignore[arg-type]


def test_the_circuit_breaker_opens_after_n_failures_and_lets_one_probe_through() -> None:
    now = [0.0]
    b = CircuitBreaker(failures=3, open_s=10, clock=lambda: now[0])
    for _ in range(2):
        b.record_failure()
    assert b.state == "closed" and b.allow()
    b.record_failure()
    assert b.state == "open" and not b.allow() and not b.available()
    now[0] = 10.5
    assert b.state == "half-open" and b.allow() and not b.allow()  # one probe only
    b.record_failure()  # the probe failed: open again for another period
    assert b.state == "open"
    now[0] = 21
    assert b.allow()
    b.record_success()
    assert b.state == "closed"


def test_queue_length_is_read_from_vllm_and_llamacpp_metrics() -> None:
    vllm = '# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name="g"} 4.0\n'
    llama = "# TYPE llamacpp:requests_deferred gauge\nllamacpp:requests_deferred 1\n"
    assert parse_waiting(vllm) == 4 and parse_waiting(llama) == 1 and parse_waiting("up 1\n") is None
