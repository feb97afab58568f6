"""Routing policies, one per module. `default_router` wires them as the settings say."""

from __future__ import annotations

from graph.backends import BACKENDS, Backends
from graph.health import CircuitBreaker
from graph.load import LoadMonitor
from graph.policies.auto import AutoPolicy
from graph.policies.learned import LearnedPolicy
from graph.policies.pinned import PinnedPolicy
from graph.policies.task import TaskPolicy
from graph.router import Router, RoutingPolicy
from graph.settings import Settings


def default_router(settings: Settings, backends: Backends | None = None) -> Router:
    s = settings
    auto = AutoPolicy(
        preferred=s.auto_preference,
        gemma_max_model_len=s.gemma_max_model_len,
        gemma_max_waiting=s.auto_gemma_max_waiting,
    )
    policies: dict[str, RoutingPolicy] = {
        "gemma": PinnedPolicy("gemma", fallback=s.fallback_enabled),
        "gemini": PinnedPolicy("gemini", fallback=s.fallback_enabled),
        "auto": auto,
        # Clients' background requests (titles, tags, follow-ups): the cheaper backend, a low token cap.
        "task": TaskPolicy(
            preferred=s.auto_preference,
            gemma_max_model_len=s.gemma_max_model_len,
            gemma_max_waiting=s.auto_gemma_max_waiting,
        ),
    }
    if s.router_file is not None:  # loaded once, here: a broken file stops start-up with RouterFileError
        policies["learned"] = LearnedPolicy.from_file(s.router_file, rules=auto)
    return Router(
        policies=policies,
        breakers={b: CircuitBreaker(failures=s.breaker_failures, open_s=s.breaker_open_s) for b in BACKENDS},
        gemma_load=LoadMonitor(backends.gemma_metrics_url, refresh_s=s.load_refresh_s) if backends else None,
        credentials=backends.credentials if backends else {},
    )


__all__ = ["AutoPolicy", "LearnedPolicy", "PinnedPolicy", "TaskPolicy", "default_router"]
