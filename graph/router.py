"""Routing: which backend answers this message, and why.

A policy is a small object behind one interface (`RoutingPolicy.decide`), one policy per module in
`graph.policies`, in the spirit of LiteLLM's `router_strategy/`. The `Router` maps the requested model
(`gemma`, `gemini`, `auto`) to its policy and hands it a snapshot of what is known at that moment:
the prompt's size, each backend's circuit breaker, and vLLM's queue. Deciding never does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from graph.backends import BACKENDS, BackendName
from graph.health import CircuitBreaker
from graph.load import LoadMonitor
from graph.settings import ModelChoice

SHORT_NAMES: dict[BackendName, str] = {"gemma": "Gemma", "gemini": "Gemini"}


@dataclass(frozen=True)
class Signals:
    """What is known about the backends right now."""

    available: Mapping[BackendName, bool]
    gemma_waiting: float | None = None  # requests queued in vLLM (None: unknown)
    misconfigured: frozenset[BackendName] = frozenset()  # refusing our credentials (not available)


@dataclass(frozen=True)
class RouteRequest:
    requested: ModelChoice
    prompt_tokens: int
    max_tokens: int = 512
    new_conversation: bool = True
    signals: Signals = field(default_factory=lambda: Signals({b: True for b in BACKENDS}))
    text: str = ""  # this turn's user message (`learned` reads it; "" when the caller does not pass it)


@dataclass(frozen=True)
class RouteDecision:
    backend: BackendName
    reason: str
    # Tried when `backend` fails before its first token (None: no fallback).
    fallback: BackendName | None = None
    # Try `backend` a second time before falling back (explicit choices: the user asked for it).
    retry: bool = False


class RoutingPolicy(Protocol):
    def decide(self, request: RouteRequest) -> RouteDecision: ...


def other(backend: BackendName) -> BackendName:
    return BACKENDS[1 - BACKENDS.index(backend)]


@dataclass
class Router:
    """Picks the policy for the requested model; unknown names are a caller error (ValueError)."""

    policies: dict[str, RoutingPolicy]
    breakers: dict[BackendName, CircuitBreaker] = field(
        default_factory=lambda: {b: CircuitBreaker() for b in BACKENDS}
    )
    gemma_load: LoadMonitor | None = None
    # Each backend's credential check (graph.health.CredentialCheck), when the backends have them.
    credentials: Mapping[BackendName, Any] = field(default_factory=dict)

    def misconfigured(self, backend: BackendName) -> bool:
        """The backend refuses our credentials: asking it again cannot help until a check passes."""
        check = self.credentials.get(backend)
        return check is not None and check.state == "misconfigured"

    def signals(self) -> Signals:
        bad = frozenset(b for b in self.breakers if self.misconfigured(b))
        return Signals(
            available={b: br.available() and b not in bad for b, br in self.breakers.items()},
            gemma_waiting=self.gemma_load.waiting if self.gemma_load else None,
            misconfigured=bad,
        )

    def decide(self, request: RouteRequest) -> RouteDecision:
        policy = self.policies.get(request.requested)
        if policy is None:
            raise ValueError(
                f"unknown model {request.requested!r}: choose one of {', '.join(sorted(self.policies))}"
            )
        return policy.decide(request)
