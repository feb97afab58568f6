"""Limits: message length, a per-user rate limit, and the one limit on answers streaming at once.

The rate limit is a token bucket per user, kept in this process: `per_minute` messages may be sent in a
burst, and the bucket refills at `per_minute / 60` messages a second. It is per replica (N replicas
allow up to N times the rate); that bounds abuse and accidents (a stuck key, a script in a loop)
without a shared store on the hot path. Regenerate and edit-and-resend count as messages.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


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


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token bucket per user. `per_minute <= 0` disables the limit."""

    MAX_USERS = 10_000  # buckets kept; full buckets are dropped first when there are more

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def _refill(self, bucket: _Bucket, now: float) -> None:
        bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now

    def retry_after(self, user: str) -> float:
        """Seconds until `user` may send again (0: now), without using the allowance."""
        if self.capacity <= 0:
            return 0.0
        with self._lock:
            bucket = self._buckets.get(user)
            if bucket is None:
                return 0.0
            self._refill(bucket, self.clock())
            return 0.0 if bucket.tokens >= 1 else (1 - bucket.tokens) / self.rate

    def acquire(self, user: str) -> None:
        """Use one message of `user`'s allowance, or raise `RateLimited` saying when to retry."""
        if self.capacity <= 0:
            return
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(user)
            if bucket is None:
                if len(self._buckets) >= self.MAX_USERS:
                    self._prune(now)
                bucket = self._buckets[user] = _Bucket(self.capacity, now)
            self._refill(bucket, now)
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return
            wait = math.ceil((1 - bucket.tokens) / self.rate)
        raise RateLimited(
            f"You are sending messages too fast (limit: {int(self.capacity)} a minute). "
            f"Try again in {wait} s.",
            wait,
        )

    def _prune(self, now: float) -> None:
        for user, bucket in list(self._buckets.items()):
            self._refill(bucket, now)
            if bucket.tokens >= self.capacity:
                del self._buckets[user]
        if len(self._buckets) >= self.MAX_USERS:  # all busy: forget the oldest half
            for user in sorted(self._buckets, key=lambda u: self._buckets[u].updated)[: self.MAX_USERS // 2]:
                del self._buckets[user]


class Busy(LimitExceeded):
    """No place for another answer within the wait: `retry_after_s` says when to try again."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StreamSlot:
    """A place held by one streaming answer; `release` is idempotent."""

    def __init__(self, slots: StreamSlots) -> None:
        self._slots: StreamSlots | None = slots

    def release(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None:
            slots._release()


class StreamSlots:
    """The one limit on answers streaming at once, shared by every way in (the page, Gradio's `/chat`,
    `/api/chat`): a semaphore whose waiters give up after `wait_s` with `Busy`. Places are taken before
    the graph runs, so time spent waiting here never counts against a backend's first-token deadline."""

    def __init__(self, limit: int, wait_s: float) -> None:
        self.limit = limit
        self.wait_s = wait_s
        self.in_use = 0
        self._free = asyncio.Semaphore(limit)

    async def acquire(self) -> StreamSlot:
        try:
            if self._free.locked():
                await asyncio.wait_for(self._free.acquire(), timeout=self.wait_s)
            else:
                await self._free.acquire()  # free: no wait (a zero wait_s would time out at once)
        except TimeoutError:
            retry = max(1, math.ceil(self.wait_s))
            raise Busy(
                f"The server is busy answering {self.limit} questions right now. "
                f"Please try again in a few seconds.",
                retry,
            ) from None
        self.in_use += 1
        return StreamSlot(self)

    def _release(self) -> None:
        self.in_use -= 1
        self._free.release()
