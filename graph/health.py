"""Backend health: a circuit breaker per backend.

After `failures` consecutive failures a backend is marked down for `open_s` seconds: requests skip it at
once instead of waiting for a timeout. After that, the next request is let through as a probe
(half-open): success closes the breaker, failure opens it again. Written by hand because it is a dozen
lines of state tied to our routing decision; the libraries (pybreaker, aiobreaker) wrap calls and raise
instead of letting a policy ask "is it up?" before choosing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


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
