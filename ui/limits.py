"""Limits: message length, a per-user rate limit, and the one limit on answers streaming at once.

The rate limit is a token bucket per user: `per_minute` messages may be sent in a burst, and the bucket
refills at `per_minute / 60` messages a second. It is kept in the shared store (ui/shared.py) when one is
configured (`HYBRID_CHAT_REDIS_URL`), so it holds across replicas; else in this process, and N replicas
allow up to N times the rate. On a store outage it fails open (the message goes through, a line in the
log once a minute): the limit bounds abuse and accidents (a stuck key, a script in a loop), and an outage
must not refuse everyone's messages. Regenerate and edit-and-resend count as messages.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from ui.shared import Fallbacks, LocalState, SharedState, StoreUnavailable, key_part

log = logging.getLogger(__name__)


class LimitExceeded(Exception):
    """A request refused by a limit; the message is meant for the user."""


class RateLimited(LimitExceeded):
    """The per-user rate limit: `retry_after_s` is when the next message will be accepted (the HTTP
    ways in send it as `Retry-After`)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\r?\n)+")


def check_message(text: str, max_chars: int, *, what: str = "Your message") -> str:
    """The message without trailing whitespace and leading blank lines (the first line's indentation is
    kept: pasted code stays as typed); `LimitExceeded` if empty or too long."""
    stripped = _LEADING_BLANK_LINES.sub("", text.rstrip()) if isinstance(text, str) else ""
    if not stripped:
        raise LimitExceeded(f"{what} is empty.")
    if len(stripped) > max_chars:
        raise LimitExceeded(
            f"{what} is {len(stripped):,} characters long; the limit is {max_chars:,}. "
            "Shorten it or split it into several messages."
        )
    return stripped


class RateLimiter:
    """Token bucket per user, in `state` (shared by the replicas, or this process's). `per_minute <= 0`
    disables the limit."""

    def __init__(
        self,
        per_minute: int,
        *,
        state: SharedState | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.state = state or LocalState(clock=clock)
        self.fallbacks = Fallbacks(log)

    @staticmethod
    def _key(user: str) -> str:
        return f"rate:{key_part(user)}"

    async def retry_after(self, user: str) -> float:
        """Seconds until `user` may send again (0: now), without using the allowance."""
        if self.capacity <= 0:
            return 0.0
        try:
            return await self.state.take(self._key(user), self.capacity, self.rate, dry_run=True)
        except StoreUnavailable:
            return 0.0

    async def acquire(self, user: str) -> None:
        """Use one message of `user`'s allowance, or raise `RateLimited` saying when to retry."""
        if self.capacity <= 0:
            return
        try:
            wait = await self.state.take(self._key(user), self.capacity, self.rate)
        except StoreUnavailable as exc:
            self.fallbacks.note("rate limit not applied, the shared store is unavailable", exc)
            return
        if wait <= 0:
            return
        seconds = math.ceil(wait - 1e-6)
        raise RateLimited(
            f"You are sending messages too fast (limit: {int(self.capacity)} a minute). "
            f"Try again in {seconds} s.",
            seconds,
        )


class Busy(LimitExceeded):
    """No place for another answer within the wait: `retry_after_s` says when to try again."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StreamSlot:
    """A place held by one streaming answer, and by its user when known; `release` is idempotent."""

    def __init__(self, slots: StreamSlots, user: str | None) -> None:
        self._slots: StreamSlots | None = slots
        self.user = user

    async def claim(self, user: str) -> None:
        """Count a place taken without its user (the caller did not say) as `user`'s, without waiting:
        `Busy` (the place is released) when `user` already holds their share."""
        slots = self._slots
        if self.user is not None or slots is None:
            return
        share = slots._share(user)
        if share.places.locked():
            self.release()
            slots._forget(user, share)
            raise slots._busy_for_user()
        await share.places.acquire()  # free: taken at once
        self.user = user

    def release(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None:
            slots._release(self.user)


@dataclass
class _UserShare:
    places: asyncio.Semaphore
    interested: int = 0  # holding or waiting for a place: the share is dropped at 0


class StreamSlots:
    """The one limit on answers streaming at once, shared by every way in (the page, Gradio's `/chat`,
    `/api/chat`): a semaphore whose waiters give up after `wait_s` with `Busy`. Places are taken before
    the graph runs, so time spent waiting here never counts against a backend's first-token deadline.

    One user holds at most `per_user` of the places (a load from two users held all 32, and most others
    got 503): a user at their share waits, within the same `wait_s`, for one of their own answers to end.
    `acquire(None)` (no user known: everyone is the local user) takes a place of the limit alone."""

    def __init__(self, limit: int, wait_s: float, per_user: int | None = None) -> None:
        self.limit = limit
        self.wait_s = wait_s
        self.per_user = min(limit, per_user or limit)
        self.in_use = 0
        self._free = asyncio.Semaphore(limit)
        self._users: dict[str, _UserShare] = {}

    async def acquire(self, user: str | None = None) -> StreamSlot:
        """A place (and one of `user`'s share) within `wait_s`, else `Busy`."""
        deadline = asyncio.get_running_loop().time() + self.wait_s
        share = self._share(user) if user is not None else None
        held_share = False
        try:
            if share is not None:
                held_share = await _take(share.places, deadline)
                if not held_share:
                    raise self._busy_for_user()
            if not await _take(self._free, deadline):
                raise Busy(
                    f"The server is busy answering {self.limit} questions right now. "
                    f"Please try again in a few seconds.",
                    max(1, math.ceil(self.wait_s)),
                )
        except BaseException:  # Busy, or the caller cancelled while waiting
            if user is not None and share is not None:
                if held_share:
                    share.places.release()
                self._forget(user, share)
            raise
        self.in_use += 1
        return StreamSlot(self, user)

    def _share(self, user: str) -> _UserShare:
        share = self._users.get(user)
        if share is None:
            share = self._users[user] = _UserShare(asyncio.Semaphore(self.per_user))
        share.interested += 1
        return share

    def _forget(self, user: str, share: _UserShare) -> None:
        share.interested -= 1
        if share.interested == 0:
            del self._users[user]

    def _busy_for_user(self) -> Busy:
        return Busy(
            f"The server is busy: you have {self.per_user} answers streaming already, the most one user "
            "may have at once. Try again when one has finished.",
            max(1, math.ceil(self.wait_s)),
        )

    def _release(self, user: str | None) -> None:
        self.in_use -= 1
        self._free.release()
        if user is not None and (share := self._users.get(user)) is not None:
            share.places.release()
            self._forget(user, share)


async def _take(places: asyncio.Semaphore, deadline: float) -> bool:
    """One of `places` by `deadline` (loop time): False once it passed. A free place is taken at once (a
    zero wait would time out even then)."""
    if not places.locked():
        await places.acquire()
        return True
    try:
        await asyncio.wait_for(
            places.acquire(), timeout=max(0.0, deadline - asyncio.get_running_loop().time())
        )
    except TimeoutError:
        return False
    return True
