"""Password guessing: failed sign-ins throttled per user name and per client address.

One `LoginThrottle` serves both ways to present a password: Gradio's login form (`POST /login`, through
`ui.security.SameSiteGuard`) and HTTP Basic on `/api/chat` (`ui.api.api_user`). Each attempt is counted
before the password is checked (`begin`), so a burst of parallel guesses is counted as it arrives; a
success (`succeeded`) clears the user name's count and takes the attempt back from the address.

Per key (a user name, known or not, and a client address):

- the first `free` failures cost nothing (typos);
- then each failure makes the next attempt wait 1, 2, 4, ... seconds (backing off);
- at `max_failures` the key is locked for `lockout_s` (logged once: user name and address, never the
  password);
- refusals are summed up in the log, wrong passwords and attempts refused unchecked apart: the first of
  each kind at once, then at most one line a minute with how many came since (`LogLimiter`); a line
  names the user name and address of the attempt it was written for, never a password;
- an attempt while waiting is refused without looking at the password: a correct password is refused
  too (429 with `Retry-After`), and works again once the wait is over;
- failures are forgotten after `lockout_s` without one.

A client address gets `ADDRESS_FACTOR` times the allowance of a user name: many people can share one
address (an office's NAT). State is in process memory, per replica, pruned past `MAX_KEYS` keys.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ui.logs import LogLimiter

log = logging.getLogger(__name__)

ADDRESS_FACTOR = 5
MAX_KEYS = 10_000
FREE_FAILURES = 3  # typos cost nothing
MAX_NAME_CHARS = 64  # of a user name kept as a key or logged
REFUSED_WRONG = "sign-in refused, wrong password"
REFUSED_UNCHECKED = "sign-in refused unchecked, too many failed attempts"


@dataclass
class _Key:
    failures: int = 0
    last: float = 0.0  # time of the last counted attempt
    locked_logged: bool = False


class LoginThrottle:
    def __init__(
        self,
        max_failures: int = 10,
        lockout_s: float = 300.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.lockout_s = lockout_s
        self.clock = clock
        self._keys: dict[tuple[str, str], _Key] = {}
        self._lock = threading.Lock()
        self.refusals = LogLimiter(log, clock=clock)  # a summary: one line a minute per kind of refusal

    @property
    def enabled(self) -> bool:
        return self.max_failures > 0

    def _limits(self, kind: str) -> tuple[int, int, int]:
        """(free failures, failures that lock, how much slower the wait grows) for a key kind."""
        factor = ADDRESS_FACTOR if kind == "address" else 1
        return FREE_FAILURES * factor, self.max_failures * factor, factor

    def _wait(self, kind: str, state: _Key, now: float) -> float:
        free, locks, slower = self._limits(kind)
        since = now - state.last
        if state.failures >= locks:
            return max(0.0, self.lockout_s - since)
        if state.failures < free:
            return 0.0
        return max(0.0, min(2.0 ** ((state.failures - free) / slower), self.lockout_s) - since)

    def _get(self, key: tuple[str, str], now: float) -> _Key:
        state = self._keys.get(key)
        if state is not None and now - state.last >= self.lockout_s:
            state = None  # forgotten (and a lockout over)
        if state is None:
            state = self._keys[key] = _Key()
        return state

    @staticmethod
    def _ids(user: str, address: str) -> tuple[tuple[str, str], tuple[str, str]]:
        return ("user", user[:MAX_NAME_CHARS]), ("address", address)

    def begin(self, user: str, address: str) -> float:
        """Before checking a password: 0 when the attempt may go on (it is then counted as a failure
        until `succeeded`), else the seconds to wait (refuse without checking the password)."""
        if not self.enabled:
            return 0.0
        now = self.clock()
        self.refusals.flush()
        with self._lock:
            self._prune(now)
            states = [(key[0], self._get(key, now)) for key in self._ids(user, address)]
            wait = max(self._wait(kind, state, now) for kind, state in states)
            if wait == 0:
                for _kind, state in states:
                    state.failures += 1
                    state.last = now
        if wait > 0:
            self.refusals.log(
                logging.WARNING, REFUSED_UNCHECKED, "user name %r from %s", user[:MAX_NAME_CHARS], address
            )
        return wait

    def failed(self, user: str, address: str) -> None:
        """The attempt `begin` let through had a wrong password: counted in the log's summary of refusals,
        and a lockout it caused logged (once)."""
        self.refusals.log(logging.INFO, REFUSED_WRONG, "user name %r from %s", user[:MAX_NAME_CHARS], address)
        if not self.enabled:
            return
        with self._lock:
            for key in self._ids(user, address):
                state = self._keys.get(key)
                if state and not state.locked_logged and state.failures >= self._limits(key[0])[1]:
                    state.locked_logged = True
                    log.warning(
                        "sign-in locked for %.0f s after %d failed attempts: %s %r (user %r, from %s)",
                        self.lockout_s,
                        state.failures,
                        "user name" if key[0] == "user" else "client address",
                        key[1],
                        user[:MAX_NAME_CHARS],
                        address,
                    )

    def succeeded(self, user: str, address: str) -> None:
        """The password was right: forget the user name's failures, take the attempt back from the address."""
        if not self.enabled:
            return
        user_key, address_key = self._ids(user, address)
        with self._lock:
            self._keys.pop(user_key, None)
            state = self._keys.get(address_key)
            if state is not None:
                state.failures = max(0, state.failures - 1)

    @staticmethod
    def retry_after(wait: float) -> str:
        """The `Retry-After` header's value for a wait."""
        return str(max(1, math.ceil(wait)))

    def _prune(self, now: float) -> None:
        if len(self._keys) <= MAX_KEYS:
            return
        for key in [k for k, s in self._keys.items() if now - s.last >= self.lockout_s]:
            del self._keys[key]
        if len(self._keys) > MAX_KEYS:  # still too many: drop the oldest half
            for key, _ in sorted(self._keys.items(), key=lambda kv: kv[1].last)[: len(self._keys) // 2]:
                del self._keys[key]


REFUSAL = "Too many failed sign-in attempts: try again later."
