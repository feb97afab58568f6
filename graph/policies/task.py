"""`task`: clients' background requests (titles, tags, follow-up suggestions), kept out of people's way.

Open WebUI and similar clients send such requests after every turn, on the chat's model and up to its
token limit; on a busy backend they pushed people's own turns past the first-token timeout. Pointing
the client's task model at `task` (Open WebUI: Admin settings, Interface, Task model) sends them here:
the cheaper backend (the configured preference, in-cluster Gemma by default) unless it is down, queueing
or the prompt does not fit it, then the other; answers capped at `task_max_tokens`; and on a vLLM with
priority scheduling, sent with a lower priority than people's turns (`graph.nodes._params`).
"""

from __future__ import annotations

from dataclasses import dataclass

from graph.backends import BackendName
from graph.router import RouteDecision, RouteRequest, other


@dataclass(frozen=True)
class TaskPolicy:
    preferred: BackendName = "gemma"
    gemma_max_model_len: int = 16384
    gemma_max_waiting: float = 2

    def decide(self, request: RouteRequest) -> RouteDecision:
        first, second = self.preferred, other(self.preferred)
        up = request.signals.available
        needed = request.prompt_tokens + request.max_tokens
        if first == "gemma" and needed > self.gemma_max_model_len:
            return RouteDecision("gemini", f"task: context too long for gemma ({needed} tokens)")
        if not up.get(first, True) and up.get(second, True):
            return RouteDecision(second, f"task: {first} unavailable", fallback=first)
        waiting = request.signals.gemma_waiting
        busy = waiting is not None and waiting >= self.gemma_max_waiting
        if first == "gemma" and busy and up.get("gemini", True):
            return RouteDecision(
                "gemini", f"task: gemma busy ({waiting:g} requests waiting)", fallback="gemma"
            )
        return RouteDecision(first, f"task: background request on {first}", fallback=second)
