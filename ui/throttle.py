"""Password guessing: failed sign-ins throttled per user name and per client address.

One `LoginThrottle` serves both ways to present a password: the sign-in form (`POST /login`, through
`ui.security.SignInGuard`) and HTTP Basic on `/api/chat` (`ui.api.api_user`). Each attempt is counted
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
address (an office's NAT).

The counts live in the shared store (ui/shared.py), so several replicas throttle together: a key's
failures are a counter (`hit`, kept `lockout_s` after the last), and the wait before its next attempt a
gate claimed by the attempt that makes one due (`claim` with the wait as its time; a parallel attempt
that finds it taken is refused, and its count taken back). Without a store configured, and during a
store outage, the counting happens in this process: guessing is never let run free, and nobody is
locked out by the outage itself (a replica's own count starts empty).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ui.logs import LogLimiter
from ui.shared import Fallbacks, LocalState, SharedState, StoreUnavailable, key_part

log = logging.getLogger(__name__)

ADDRESS_FACTOR = 5
FREE_FAILURES = 3  # typos cost nothing
MAX_NAME_CHARS = 64  # of a user name kept as a key or logged
REFUSED_WRONG = "sign-in refused, wrong password"
REFUSED_UNCHECKED = "sign-in refused unchecked, too many failed attempts"
T = TypeVar("T")


class LoginThrottle:
    def __init__(
        self,
        max_failures: int = 10,
        lockout_s: float = 300.0,
        *,
        state: SharedState | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.lockout_s = lockout_s
        self.clock = clock
        self.state = state or LocalState(clock=clock)
        # Where the counting goes while the shared store is down (this process's own).
        self.local = self.state if isinstance(self.state, LocalState) else LocalState(clock=clock)
        self.fallbacks = Fallbacks(log)
        self.refusals = LogLimiter(log, clock=clock)  # a summary: one line a minute per kind of refusal

    @property
    def enabled(self) -> bool:
        return self.max_failures > 0

    def _limits(self, kind: str) -> tuple[int, int, int]:
        """(free failures, failures that lock, how much slower the wait grows) for a key kind."""
        factor = ADDRESS_FACTOR if kind == "address" else 1
        return FREE_FAILURES * factor, self.max_failures * factor, factor

    def _wait_after(self, kind: str, failures: int) -> float:
        """How long the next attempt of a key waits after its `failures`-th."""
        free, locks, slower = self._limits(kind)
        if failures >= locks:
            return self.lockout_s
        if failures < free:
            return 0.0
        return min(2.0 ** ((failures - free) / slower), self.lockout_s)

    @staticmethod
    def _ids(user: str, address: str) -> list[tuple[str, str]]:
        return [("user", key_part(user[:MAX_NAME_CHARS])), ("address", key_part(address))]

    async def _store(self, what: str, step: Callable[[SharedState], Awaitable[T]]) -> T:
        """`step` against the shared store, or this process's counts while the store is down."""
        if self.state is not self.local:
            try:
                return await step(self.state)
            except StoreUnavailable as exc:
                self.fallbacks.note(f"sign-in throttle counting in this process ({what})", exc)
        return await step(self.local)

    async def begin(self, user: str, address: str) -> float:
        """Before checking a password: 0 when the attempt may go on (it is then counted as a failure
        until `succeeded`), else the seconds to wait (refuse without checking the password)."""
        if not self.enabled:
            return 0.0
        self.refusals.flush()
        wait = await self._store("begin", lambda state: self._begin(state, user, address))
        if wait > 0:
            self.refusals.log(
                logging.WARNING, REFUSED_UNCHECKED, "user name %r from %s", user[:MAX_NAME_CHARS], address
            )
        return wait

    async def _begin(self, state: SharedState, user: str, address: str) -> float:
        ids = self._ids(user, address)
        waits = [await state.expires_in(f"login-wait:{kind}:{key}") for kind, key in ids]
        if max(waits) > 0:  # a wait is running: refused unchecked, not counted
            return max(waits)
        counts = [await state.hit(f"login-fails:{kind}:{key}", self.lockout_s) for kind, key in ids]
        refused = 0.0
        for (kind, key), count in zip(ids, counts, strict=True):
            due = self._wait_after(kind, count)
            if due > 0 and not await state.claim(f"login-wait:{kind}:{key}", "1", due):
                # A parallel attempt made the wait due first: this one waits too, uncounted.
                refused = max(refused, await state.expires_in(f"login-wait:{kind}:{key}"), 0.001)
        if refused > 0:
            for kind, key in ids:
                await state.take_back(f"login-fails:{kind}:{key}")
        return refused

    async def failed(self, user: str, address: str) -> None:
        """The attempt `begin` let through had a wrong password: counted in the log's summary of refusals,
        and a lockout it caused logged (once, by one replica)."""
        self.refusals.log(logging.INFO, REFUSED_WRONG, "user name %r from %s", user[:MAX_NAME_CHARS], address)
        if not self.enabled:
            return
        await self._store("failed", lambda state: self._failed(state, user, address))

    async def _failed(self, state: SharedState, user: str, address: str) -> None:
        for (kind, key), name in zip(self._ids(user, address), (user[:MAX_NAME_CHARS], address), strict=True):
            failures = int(await state.get(f"login-fails:{kind}:{key}") or 0)
            if failures < self._limits(kind)[1]:
                continue
            if await state.claim(f"login-locked:{kind}:{key}", "1", self.lockout_s):
                log.warning(
                    "sign-in locked for %.0f s after %d failed attempts: %s %r (user %r, from %s)",
                    self.lockout_s,
                    failures,
                    "user name" if kind == "user" else "client address",
                    name,
                    user[:MAX_NAME_CHARS],
                    address,
                )

    async def succeeded(self, user: str, address: str) -> None:
        """The password was right: forget the user name's failures, take the attempt back from the address."""
        if not self.enabled:
            return
        await self._store("succeeded", lambda state: self._succeeded(state, user, address))

    async def _succeeded(self, state: SharedState, user: str, address: str) -> None:
        (_, name_key), (_, address_key) = self._ids(user, address)
        await state.forget(
            f"login-fails:user:{name_key}", f"login-wait:user:{name_key}", f"login-locked:user:{name_key}"
        )
        await state.take_back(f"login-fails:address:{address_key}")

    @staticmethod
    def retry_after(wait: float) -> str:
        """The `Retry-After` header's value for a wait."""
        return str(max(1, math.ceil(wait)))


REFUSAL = "Too many failed sign-in attempts: try again later."
