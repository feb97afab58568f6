"""Limits on what one user may send: message length and a per-user rate limit.

The rate limit is a token bucket per user, kept in this process: `per_minute` messages may be sent in a
burst, and the bucket refills at `per_minute / 60` messages a second. It is per replica (N replicas
allow up to N times the rate); that bounds abuse and accidents (a stuck key, a script in a loop)
without a shared store on the hot path. Regenerate and edit-and-resend count as messages.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


class LimitExceeded(Exception):
    """A request refused by a limit; the message is meant for the user."""


def check_message(text: str, max_chars: int, *, what: str = "Your message") -> str:
    """The message, stripped; `LimitExceeded` if empty or too long."""
    stripped = text.strip() if isinstance(text, str) else ""
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
        """Use one message of `user`'s allowance, or raise `LimitExceeded` saying when to retry."""
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
        raise LimitExceeded(
            f"You are sending messages too fast (limit: {int(self.capacity)} a minute). "
            f"Try again in {wait} s."
        )

    def _prune(self, now: float) -> None:
        for user, bucket in list(self._buckets.items()):
            self._refill(bucket, now)
            if bucket.tokens >= self.capacity:
                del self._buckets[user]
        if len(self._buckets) >= self.MAX_USERS:  # all busy: forget the oldest half
            for user in sorted(self._buckets, key=lambda u: self._buckets[u].updated)[: self.MAX_USERS // 2]:
                del self._buckets[user]
