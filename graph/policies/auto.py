"""`auto`: decide from what is known at this moment, cheapest acceptable backend first.

In order: a prompt that does not fit Gemma's context goes to Gemini; a backend whose circuit is open
is avoided; a new conversation avoids a queueing vLLM (an ongoing one stays, for its prompt cache);
otherwise the configured preference (default Gemma: in-cluster, no per-token cost).
"""

from __future__ import annotations

from dataclasses import dataclass

from graph.backends import BackendName
from graph.router import RouteDecision, RouteRequest, other


@dataclass(frozen=True)
class AutoPolicy:
    preferred: BackendName = "gemma"
    gemma_max_model_len: int = 16384
    gemma_max_waiting: float = 2

    def decide(self, request: RouteRequest) -> RouteDecision:
        needed = request.prompt_tokens + request.max_tokens
        if needed > self.gemma_max_model_len:
            return RouteDecision(
                "gemini", f"auto: context too long for gemma ({needed} > {self.gemma_max_model_len} tokens)"
            )
        up = request.signals.available
        first, second = self.preferred, other(self.preferred)
        if not up.get(first, True) and up.get(second, True):
            why = "misconfigured" if first in request.signals.misconfigured else "circuit open"
            return RouteDecision(second, f"auto: {first} unavailable ({why})", fallback=first)
        waiting = request.signals.gemma_waiting
        if (
            request.new_conversation
            and waiting is not None
            and waiting >= self.gemma_max_waiting
            and up.get("gemini", True)
        ):
            return RouteDecision(
                "gemini", f"auto: gemma busy ({waiting:g} requests waiting)", fallback="gemma"
            )
        return RouteDecision(first, f"auto: preferred {first}", fallback=second)
