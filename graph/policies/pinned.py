"""The user chose a backend explicitly: honour it; if it fails before its first token, retry once,
then (when fallback is on) let the other backend answer, with a visible note."""

from __future__ import annotations

from dataclasses import dataclass

from graph.backends import BackendName
from graph.router import RouteDecision, RouteRequest, other


@dataclass(frozen=True)
class PinnedPolicy:
    backend: BackendName
    fallback: bool = True

    def decide(self, request: RouteRequest) -> RouteDecision:
        return RouteDecision(
            self.backend,
            f"chosen: {self.backend}",
            fallback=other(self.backend) if self.fallback else None,
            retry=True,
        )
