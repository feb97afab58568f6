"""Routing: which backend answers this message, and why.

A policy is a small object behind one interface (`RoutingPolicy.decide`), one policy per module in
`graph.policies`, in the spirit of LiteLLM's `router_strategy/`. The `Router` maps the requested model
(`gemma`, `gemini`, `auto`) to its policy and hands it a snapshot of what is known at that moment:
the prompt's size, each backend's circuit breaker, and vLLM's queue. Deciding never does I/O.

Attachments (and tools: a turn that offers tools, or whose prompt holds tool calls and their results,
needs a backend that calls tools) are decided in one place every policy goes through (`Router.decide`,
`fit_attachments`): a turn is never sent to a backend that cannot take its attachments (the signals
say what this turn carries and what each backend accepts). A policy's choice that cannot take them
goes to its fallback when that one can, with the reason saying why ("image: Gemma stand-in cannot see
images"); a fallback that cannot take them is dropped (never an answer that silently ignores the
image); when no backend can, `NoBackendTakes` (an `InvalidInput`) refuses the turn before any model
call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from graph.backends import BACKENDS, Accepts, BackendName
from graph.health import CircuitBreaker
from graph.load import LoadMonitor
from graph.settings import ModelChoice
from graph.validation import InvalidInput

SHORT_NAMES: dict[BackendName, str] = {"gemma": "Gemma", "gemini": "Gemini"}


@dataclass(frozen=True)
class Signals:
    """What is known about the backends right now."""

    available: Mapping[BackendName, bool]
    gemma_waiting: float | None = None  # requests queued in vLLM (None: unknown)
    misconfigured: frozenset[BackendName] = frozenset()  # refusing our credentials (not available)
    # This turn's attachments: their kinds ("image", "pdf"), how many, their bytes together.
    attachments: frozenset[str] = frozenset()
    attachment_count: int = 0
    attachment_bytes: int = 0
    attachment_types: frozenset[str] = frozenset()  # their MIME types, sniffed from the bytes
    # What each backend takes besides text (empty: not known, no rule applied).
    accepts: Mapping[BackendName, Accepts] = field(default_factory=dict)
    tools: bool = False  # this turn offers tools, or its prompt holds tool calls or their results

    def refusal(self, backend: BackendName) -> str | None:
        """Why `backend` cannot take this turn's attachments or tools, or None."""
        if backend not in self.accepts:
            return None
        if self.tools and not self.accepts[backend].tools:
            return f"tools: {self.accepts[backend].label} cannot call tools"
        if not self.attachments:
            return None
        return self.accepts[backend].refusal(
            self.attachments, self.attachment_count, self.attachment_bytes, self.attachment_types
        )


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


class NoBackendTakes(InvalidInput):
    """No backend can take this turn's attachments (or the one asked for cannot, with no fallback)."""


def fit_attachments(decision: RouteDecision, signals: Signals) -> RouteDecision:
    """`decision` made to respect what the backends take (see the module docstring)."""
    why = signals.refusal(decision.backend)
    if why is None:
        if decision.fallback is not None and signals.refusal(decision.fallback) is not None:
            return replace(decision, fallback=None)
        return decision
    alternative = decision.fallback
    if alternative is not None and signals.refusal(alternative) is None:
        return RouteDecision(alternative, why, fallback=None, retry=decision.retry)
    others = {b: signals.refusal(b) for b in BACKENDS if b != decision.backend}
    able = [signals.accepts[b].label for b, r in others.items() if r is None]
    if alternative is None and able:
        raise NoBackendTakes(f"{why}, and fallback to another model is off: choose {' or '.join(able)}")
    raise NoBackendTakes("; ".join([why, *(r for r in others.values() if r)]))


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
        return fit_attachments(policy.decide(request), request.signals)
