"""Each backend's health as the UI shows it (a dot per backend) and as /readyz reports it.

The source of truth is the router's circuit breaker per backend (`graph.health.CircuitBreaker`,
`router.breakers`): open means the backend is skipped. What the breaker cannot say (has this backend
answered at all lately?) comes from the answers this process served, recorded here.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from graph.backends import BACKENDS

SHORT = {"gemma": "Gemma", "gemini": "Gemini"}


@dataclass(frozen=True)
class BackendHealth:
    backend: str
    state: str  # "up" | "down" | "recovering" | "failing" | "unknown"
    detail: str

    @property
    def usable(self) -> bool:
        return self.state != "down"


class HealthBoard:
    """Recent outcomes per backend plus the router's breakers."""

    def __init__(self, router: Any = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.router = router
        self.clock = clock
        self._last: dict[str, tuple[bool, float, str]] = {}

    def record(self, backend: str | None, ok: bool, detail: str = "") -> None:
        if backend in BACKENDS:
            self._last[backend] = (ok, self.clock(), detail)

    def record_answer(self, meta: dict[str, Any], failed: bool) -> None:
        """From an answer's `hybrid_chat` metadata: who answered, and who failed before (fallback)."""
        backend = meta.get("backend")
        reason = str(meta.get("route_reason") or "")
        if reason.startswith("fallback:"):
            self.record(next((b for b in BACKENDS if b != backend), None), False, reason)
        self.record(backend, not failed, str(meta.get("error") or ""))

    def _breaker(self, backend: str) -> Any:
        breakers = getattr(self.router, "breakers", None)
        return breakers.get(backend) if isinstance(breakers, dict) else None

    def status(self, backend: str) -> BackendHealth:
        breaker = self._breaker(backend)
        state = getattr(breaker, "state", None)
        if state == "open":
            wait = getattr(breaker, "seconds_until_probe", lambda: 0.0)()
            return BackendHealth(backend, "down", f"failing: skipped for {wait:.0f} s more")
        if state == "half-open":
            return BackendHealth(backend, "recovering", "was failing: the next message tests it")
        last = self._last.get(backend)
        if last is None:
            return BackendHealth(backend, "unknown", "no answer from it yet")
        ok, at, detail = last
        ago = self.clock() - at
        if ok:
            return BackendHealth(backend, "up", f"answered {_ago(ago)}")
        return BackendHealth(backend, "failing", f"failed {_ago(ago)}" + (f": {detail}" if detail else ""))

    def all(self) -> list[BackendHealth]:
        return [self.status(b) for b in BACKENDS]

    def html(self) -> str:
        parts = []
        for h in self.all():
            title = html.escape(f"{SHORT[h.backend]}: {h.state} ({h.detail})", quote=True)
            parts.append(
                f'<span class="hc-health-item" title="{title}" data-backend="{h.backend}" '
                f'data-state="{h.state}"><span class="hc-dot hc-{h.state}"></span>{SHORT[h.backend]}</span>'
            )
        return '<div class="hc-health" aria-label="backend health">' + "".join(parts) + "</div>"


def _ago(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"
