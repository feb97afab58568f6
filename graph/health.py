"""Backend health: a circuit breaker per backend, and a credential check per real backend.

After `failures` consecutive failures a backend is marked down for `open_s` seconds: requests skip it at
once instead of waiting for a timeout. After that, the next request is let through as a probe
(half-open): success closes the breaker, failure opens it again. Written by hand because it is a dozen
lines of state tied to our routing decision; the libraries (pybreaker, aiobreaker) wrap calls and raise
instead of letting a policy ask "is it up?" before choosing.

A `CredentialCheck` asks a real backend (not a local stand-in), with the real credentials, whether it
accepts us at all: at start-up, then every `credential_check_s`, in the background. A refusal (401, 403,
404, no credentials) marks it `misconfigured` until a later check or answer succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class CircuitBreaker:
    failures: int = 3
    open_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    _consecutive: int = 0
    _opened_at: float | None = None
    _probing: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self._opened_at >= self.open_s else "open"

    def available(self) -> bool:
        """May a request be sent now? (Does not claim the half-open probe; see `allow`.)"""
        return self.state != "open"

    def allow(self) -> bool:
        """Claim the right to send: always when closed, once per open period when half-open."""
        with self._lock:
            state = self.state
            if state == "closed":
                return True
            if state == "half-open" and not self._probing:
                self._probing = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            self._consecutive, self._opened_at, self._probing = 0, None, False

    def record_failure(self) -> None:
        with self._lock:
            self._consecutive += 1
            if self._probing or self._consecutive >= self.failures:
                self._opened_at = self.clock()
            self._probing = False

    def cancel_probe(self) -> None:
        """The probe was cancelled before it could tell (Stop, a client gone): let the next request probe."""
        with self._lock:
            self._probing = False

    def seconds_until_probe(self) -> float:
        if self._opened_at is None:
            return 0.0
        return max(0.0, self.open_s - (self.clock() - self._opened_at))


# --- credentials ------------------------------------------------------------------------------
# A breaker counts failures of real answers; it cannot tell "down for a minute" from "will never work
# with these credentials" (a project id left as PROJECT_ID, a missing Workload Identity binding, a wrong
# API key), and before the first message it says nothing at all. A `CredentialCheck` asks the backend
# itself, cheaply and with the real credentials, at start-up and then periodically.

CHECK_TIMEOUT_S = 10.0

# What each credential fault is called where operators and users read it: fixed texts, never the
# exception's own message (it can quote project ids, URLs or tokens; that goes to the log only).
_FAULTS = {
    401: "credentials refused (HTTP 401)",
    403: "permission denied (HTTP 403)",
    404: "model or endpoint not found (HTTP 404)",
}


def _status_of(exc: BaseException) -> int | None:
    """The HTTP status an exception carries: openai's `status_code`, httpx's `response.status_code`,
    google.api_core's `code` (gRPC errors are mapped to their HTTP equivalent there)."""
    for value in (
        getattr(exc, "status_code", None),
        getattr(getattr(exc, "response", None), "status_code", None),
        getattr(exc, "code", None),
    ):
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
    return None


def http_status(exc: BaseException) -> int | None:
    """The HTTP status `exc` carries, if any (see `_status_of`)."""
    return _status_of(exc)


def credential_fault(exc: BaseException | None) -> str | None:
    """A short fixed description when `exc` says the credentials or the configuration are wrong (HTTP
    401/403/404, PermissionDenied, Unauthenticated, NotFound, DefaultCredentialsError), following
    `__cause__`; None for anything else (timeouts, refused connections, 5xx, 429: transient)."""
    from google.auth.exceptions import DefaultCredentialsError

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DefaultCredentialsError):
            return "no Google credentials found (DefaultCredentialsError)"
        if (fault := _FAULTS.get(_status_of(exc) or 0)) is not None:
            return fault
        exc = exc.__cause__
    return None


class CredentialCheck:
    """Does one real backend accept our credentials and configuration? Explicit states:

    - `skipped`: a local stand-in (no project / base URL configured): nothing to check.
    - `unchecked`: not known yet (the first check has not finished).
    - `ok`: the last check, or a real answer since, succeeded.
    - `misconfigured`: the backend refused us (see `credential_fault`); stays so until a later check
      or answer succeeds. A real answer failing that way sets it at once.
    - `unreachable`: the last check failed otherwise (refused connection, timeout, 5xx): the backend may
      be starting (vLLM takes minutes); the breaker, not this, judges transient faults.

    `probe` is an async callable doing the cheap credentialed call; it raises on failure and bounds its
    own network call (`CHECK_TIMEOUT_S`), not the client's construction (first use imports for seconds).
    """

    def __init__(
        self,
        backend: str,
        probe: Callable[[], Awaitable[None]] | None,
        *,
        hint: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.probe = probe
        self.hint = hint
        self.clock = clock
        self.state = "skipped" if probe is None else "unchecked"
        self.fault: str | None = None  # the fixed text of the last credential fault
        self.checked_at: float | None = None
        self._lock = threading.Lock()

    @property
    def usable(self) -> bool:
        """False while misconfigured or not yet checked: readiness waits for the first verdict."""
        return self.state in ("ok", "unreachable", "skipped")

    @property
    def detail(self) -> str:
        """What the health board and /readyz say about it (fixed texts only)."""
        if self.state == "misconfigured":
            return f"{self.fault}: {self.hint}" if self.hint else str(self.fault)
        return {
            "skipped": "local stand-in: nothing to check",
            "unchecked": "checking its credentials",
            "ok": "credentials accepted",
            "unreachable": "not reachable at the last check",
        }[self.state]

    async def run(self) -> str:
        """One check (never raises); returns the new state."""
        if self.probe is None:
            return self.state
        try:
            await self.probe()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.record_failure(exc, source="check")
        else:
            self.record_success(source="check")
        return self.state

    def record_success(self, source: str = "answer") -> None:
        if self.probe is None:
            return
        with self._lock:
            before, self.state, self.fault, self.checked_at = self.state, "ok", None, self.clock()
        if before == "misconfigured":
            log.info("%s: credentials accepted again (%s)", self.backend, source)

    def record_failure(self, exc: BaseException, source: str = "answer") -> None:
        """A failed check or real answer. Only a credential fault changes the state after an answer;
        after a check, any other fault means `unreachable`."""
        if self.probe is None:
            return
        fault = credential_fault(exc)
        if fault is None and source != "check":
            return
        with self._lock:
            before = (self.state, self.fault)
            self.checked_at = self.clock()
            if fault is not None:
                self.state, self.fault = "misconfigured", fault
            elif self.state != "misconfigured":  # a refused connection does not prove the keys work
                self.state = "unreachable"
        if fault is not None and before != ("misconfigured", fault):
            log.error(
                "%s is misconfigured: %s, from its %s (%s: %s). %s",
                self.backend,
                fault,
                source,
                type(exc).__name__,
                str(exc)[:300],
                self.hint,
            )
        elif fault is None and before[0] not in ("unreachable", "misconfigured"):
            log.warning("%s: credential check could not reach it: %s", self.backend, type(exc).__name__)


async def watch_credentials(
    checks: Iterable[CredentialCheck],
    interval_s: float,
    *,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> None:
    """Check every backend that has something to check now, then every `interval_s`, concurrently, until
    cancelled. Meant to run as a background task: requests never wait for it."""
    checks = [c for c in checks if c.probe is not None]
    if not checks:
        return
    while True:
        await asyncio.gather(*(c.run() for c in checks))
        await sleep(interval_s)
