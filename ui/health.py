"""Each backend's health as the UI shows it (a dot per backend) and as /readyz reports it.

The source of truth is the router's circuit breaker per backend (`graph.health.CircuitBreaker`,
`router.breakers`): open means the backend is skipped. What the breaker cannot say (has this backend
answered at all lately?) comes from the answers this process served, recorded here. Before both, the
backend's credential check (`graph.health.CredentialCheck`, `Backends.credentials`): a backend that
refused our credentials is `misconfigured`, one whose first check has not finished is `checking`;
neither is usable. A real backend that no check has reached and that has not answered since is
`unreachable` (vLLM starting, for 10-30 minutes on a first deploy): the router still tries it, but
readiness does not count on it, so a pod whose only other backend is misconfigured is not ready.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from graph.backends import BACKENDS
from graph.health import CredentialCheck

SHORT = {"gemma": "Gemma", "gemini": "Gemini"}
# The dot's colour in words, shown beside it (a tooltip alone is out of reach on a phone).
LEGEND = {
    "up": "ready",
    "unknown": "not used yet",
    "failing": "failed lately",
    "recovering": "being retried",
    "down": "down",
    "misconfigured": "misconfigured",
    "checking": "checking",
    "unreachable": "not reachable",
}


@dataclass(frozen=True)
class BackendHealth:
    backend: str
    state: str  # up | down | recovering | failing | unknown | misconfigured | checking | unreachable
    detail: str

    @property
    def usable(self) -> bool:
        """Can readiness count on it? (Not what the router decides: it still tries `unreachable`.)"""
        return self.state not in ("down", "misconfigured", "checking", "unreachable")


class HealthBoard:
    """Recent outcomes per backend plus the router's breakers."""

    def __init__(
        self,
        router: Any = None,
        *,
        credentials: Mapping[str, CredentialCheck] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.router = router
        self.credentials = credentials  # Backends.credentials; None: nothing checked
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
        check = (self.credentials or {}).get(backend)
        if check is not None and check.state == "misconfigured":
            return BackendHealth(backend, "misconfigured", check.detail)
        if check is not None and check.state == "unchecked" and backend not in self._last:
            return BackendHealth(backend, "checking", check.detail)
        breaker = self._breaker(backend)
        state = getattr(breaker, "state", None)
        if state == "open":
            wait = getattr(breaker, "seconds_until_probe", lambda: 0.0)()
            return BackendHealth(backend, "down", f"failing: skipped for {wait:.0f} s more")
        if state == "half-open":
            return BackendHealth(backend, "recovering", "was failing: the next message tests it")
        last = self._last.get(backend)
        if last is None:
            if check is not None and check.state in ("ok", "unreachable"):
                state = "up" if check.state == "ok" else "unreachable"
                return BackendHealth(backend, state, f"no answer from it yet; {check.detail}")
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
                f'data-state="{h.state}"><span class="hc-dot hc-{h.state}"></span>{SHORT[h.backend]}'
                f' <span class="hc-health-state">{LEGEND.get(h.state, h.state)}</span></span>'
            )
        return '<div class="hc-health" aria-label="backend health">' + "".join(parts) + "</div>"


def _ago(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"
