"""What the replicas share, and what each keeps to itself.

The chat Deployment runs as several Pods behind a load balancer that sends each request wherever it
likes (the page is kept on one Pod by the balancer's cookie, the APIs are not). Conversations, API keys
and attachments already live in Firestore and the bucket (graph/). The rest of what must agree across
replicas goes through one small interface, `SharedState`, kept in one place so it can be read at a glance:

| what | kept | on a store outage |
|---|---|---|
| per-user rate limit (ui.limits) | shared: a token bucket per user | fails open, logged once a minute |
| sign-in throttle (ui.throttle) | shared: failures per name and address | counted in this process meanwhile |
| sign-out, password change (ui.auth) | shared: a sign-out epoch per user | the epoch this replica last saw |
| one message = one turn (ui.live) | shared: the turn's claim and state | claimed in this process only |
| conversations, API keys, attachments | Firestore, the bucket (graph/) | the store's own errors |
| Gradio's queue, tabs, unsent uploads | this replica | (the balancer's cookie keeps a page here) |
| stream places, breaker, IAP keys | this replica | (each replica limits and learns for itself) |
| a turn's tokens as they stream | this replica | (another replica sees the turn's end) |

Two implementations: `LocalState` (in this process: one replica, tests) and `RedisState` (Valkey or
Redis through `redis.asyncio`: Memorystore in the cluster, a local `redis-server` in tests), chosen by
`HYBRID_CHAT_REDIS_URL` (`shared_state`). Without it every limit is per process: N replicas allow N
times the rate, and a sign-in is only known where it was made. Every call into `RedisState` is bounded
(`redis_timeout_s`) and raises `StoreUnavailable` when the store does not answer; after a failure the
store is skipped for `RETRY_AFTER_FAILURE_S`, so an outage costs a request no more than one timeout.
Each caller decides which way it fails (the table above).

Keys are short ASCII strings; callers put user names in them (`key_part`), bounded and without spaces.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from graph.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "hybrid-chat:"  # every key this app writes, so one Valkey instance can serve other things too
RETRY_AFTER_FAILURE_S = 1.0
MAX_LOCAL_KEYS = 100_000  # LocalState: expired keys are dropped first, then the oldest half


class StoreUnavailable(Exception):
    """The shared store did not answer (down, unreachable, too slow); the caller falls back."""


def key_part(value: str, max_chars: int = 64) -> str:
    """A user name or address as a key part: as typed when short and plain, else a hash of it (a key
    never holds spaces, separators or megabytes a client sent)."""
    if len(value) <= max_chars and value.isprintable() and not any(c in value for c in " :{}"):
        return value
    return "h-" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class SharedState(abc.ABC):
    """State every replica sees (see the module docstring). Times are in seconds."""

    shared: bool = False  # True when other replicas see the same state

    @abc.abstractmethod
    async def hit(self, key: str, ttl_s: float) -> int:
        """Count one more at `key`, kept `ttl_s` after this hit (each hit restarts the time): the count."""

    @abc.abstractmethod
    async def take_back(self, key: str) -> None:
        """Undo one `hit` (never below 0)."""

    @abc.abstractmethod
    async def forget(self, *keys: str) -> None:
        """Delete keys."""

    @abc.abstractmethod
    async def claim(self, key: str, value: str, ttl_s: float) -> bool:
        """Set `key` to `value` for `ttl_s` only if it is absent: True when this caller set it."""

    @abc.abstractmethod
    async def put(self, key: str, value: str, ttl_s: float) -> None:
        """Set `key` to `value` for `ttl_s`, whatever it held."""

    @abc.abstractmethod
    async def get(self, key: str) -> str | None:
        """The value at `key`, None if absent or expired."""

    @abc.abstractmethod
    async def expires_in(self, key: str) -> float:
        """Seconds until `key` expires; 0 if it is absent (or never expires)."""

    @abc.abstractmethod
    async def bump(self, key: str) -> int:
        """Add one to a counter that never expires (an epoch): the new value."""

    @abc.abstractmethod
    async def take(self, key: str, capacity: float, per_s: float, *, dry_run: bool = False) -> float:
        """A token bucket of `capacity` refilled at `per_s` a second: 0 when a token was taken (none is
        with `dry_run`), else the seconds until one can be. One atomic step (GCRA)."""

    async def ping(self) -> None:  # noqa: B027 - nothing to check in this process
        """Raise `StoreUnavailable` when the store does not answer."""

    async def aclose(self) -> None:  # noqa: B027 - nothing to close in this process
        """Close connections."""


@dataclass
class _Entry:
    value: Any
    expires: float | None  # on the state's clock; None: never


class LocalState(SharedState):
    """`SharedState` in this process: one replica, and tests (`clock` can be driven)."""

    shared = False

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._data: dict[str, _Entry] = {}
        self._lock = threading.Lock()  # the sync callers of old (and tests) may use it from threads

    def _live(self, key: str, now: float) -> _Entry | None:
        entry = self._data.get(key)
        if entry is not None and entry.expires is not None and now >= entry.expires:
            del self._data[key]
            return None
        return entry

    def _set(self, key: str, value: Any, expires: float | None) -> None:
        if key not in self._data and len(self._data) >= MAX_LOCAL_KEYS:
            self._prune()
        self._data[key] = _Entry(value, expires)

    def _prune(self) -> None:
        now = self.clock()
        for key in [k for k, e in self._data.items() if e.expires is not None and now >= e.expires]:
            del self._data[key]
        if len(self._data) >= MAX_LOCAL_KEYS:
            by_expiry = sorted(self._data, key=lambda k: self._data[k].expires or math.inf)
            for key in by_expiry[: len(by_expiry) // 2]:
                del self._data[key]

    async def hit(self, key: str, ttl_s: float) -> int:
        with self._lock:
            now = self.clock()
            entry = self._live(key, now)
            count = (int(entry.value) if entry else 0) + 1
            self._set(key, count, now + ttl_s)
            return count

    async def take_back(self, key: str) -> None:
        with self._lock:
            entry = self._live(key, self.clock())
            if entry is not None:
                entry.value = max(0, int(entry.value) - 1)

    async def forget(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._data.pop(key, None)

    async def claim(self, key: str, value: str, ttl_s: float) -> bool:
        with self._lock:
            now = self.clock()
            if self._live(key, now) is not None:
                return False
            self._set(key, value, now + ttl_s)
            return True

    async def put(self, key: str, value: str, ttl_s: float) -> None:
        with self._lock:
            self._set(key, value, self.clock() + ttl_s)

    async def get(self, key: str) -> str | None:
        with self._lock:
            entry = self._live(key, self.clock())
            return None if entry is None else str(entry.value)

    async def expires_in(self, key: str) -> float:
        with self._lock:
            now = self.clock()
            entry = self._live(key, now)
            return 0.0 if entry is None or entry.expires is None else entry.expires - now

    async def bump(self, key: str) -> int:
        with self._lock:
            entry = self._live(key, self.clock())
            value = (int(entry.value) if entry else 0) + 1
            self._set(key, value, None)
            return value

    async def take(self, key: str, capacity: float, per_s: float, *, dry_run: bool = False) -> float:
        with self._lock:
            now = self.clock()
            entry = self._live(key, now)
            wait, arrival = _gcra(float(entry.value) if entry else now, now, capacity, per_s)
            if wait == 0 and not dry_run:
                self._set(key, arrival, arrival)  # forgotten once the bucket is full again
            return wait


def _gcra(tat: float, now: float, capacity: float, per_s: float) -> tuple[float, float]:
    """GCRA, a token bucket kept as one time: (the wait, 0 when a token is free; the theoretical arrival
    time after taking it). `tat`: when the bucket is full again."""
    interval = 1.0 / per_s
    arrival = max(tat, now) + interval
    allowed_at = arrival - capacity * interval
    return (allowed_at - now if allowed_at > now else 0.0), arrival


# The same GCRA in the store, on its own clock (replicas' clocks may differ): one round trip, atomic.
# Returns the wait in milliseconds as a string (Lua numbers come back as integers otherwise).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local arrival = tat + interval
local allowed_at = arrival - capacity * interval
if allowed_at > now then return tostring(allowed_at - now) end
if ARGV[3] == '1' then
  redis.call('SET', KEYS[1], tostring(arrival), 'PX', math.max(1, math.ceil(arrival - now)))
end
return '0'
"""

# A hit: count, then (re)start the key's time. DECR never below 0 for take_back.
_HIT = "local n = redis.call('INCR', KEYS[1]); redis.call('PEXPIRE', KEYS[1], ARGV[1]); return n"
_TAKE_BACK = (
    "local n = tonumber(redis.call('GET', KEYS[1]) or '0'); "
    "if n > 0 then redis.call('DECR', KEYS[1]) end; return 0"
)


class RedisState(SharedState):
    """`SharedState` in Valkey or Redis, through `redis.asyncio` (see the module docstring)."""

    shared = True

    def __init__(self, url: str, *, timeout_s: float = 0.5, prefix: str = PREFIX) -> None:
        import redis.asyncio as redis

        self.prefix = prefix
        self.client = redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            decode_responses=True,
            health_check_interval=30,
        )
        self._take = self.client.register_script(_TAKE)
        self._hit = self.client.register_script(_HIT)
        self._take_back = self.client.register_script(_TAKE_BACK)
        self._down_until = 0.0

    async def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """One command, bounded; `StoreUnavailable` (at once while the store was just found down)."""
        import redis.exceptions

        if time.monotonic() < self._down_until:
            raise StoreUnavailable(f"{what}: the shared store was unavailable less than a second ago")
        try:
            return await fn()
        except (redis.exceptions.RedisError, OSError) as exc:
            self._down_until = time.monotonic() + RETRY_AFTER_FAILURE_S
            raise StoreUnavailable(f"{what}: {type(exc).__name__}") from exc

    def _k(self, key: str) -> str:
        return self.prefix + key

    async def hit(self, key: str, ttl_s: float) -> int:
        ms = max(1, math.ceil(ttl_s * 1000))
        return int(await self._call("hit", lambda: self._hit(keys=[self._k(key)], args=[ms])))

    async def take_back(self, key: str) -> None:
        await self._call("take_back", lambda: self._take_back(keys=[self._k(key)]))

    async def forget(self, *keys: str) -> None:
        if keys:
            await self._call("forget", lambda: self.client.delete(*(self._k(k) for k in keys)))

    async def claim(self, key: str, value: str, ttl_s: float) -> bool:
        ms = max(1, math.ceil(ttl_s * 1000))
        return bool(await self._call("claim", lambda: self.client.set(self._k(key), value, px=ms, nx=True)))

    async def put(self, key: str, value: str, ttl_s: float) -> None:
        ms = max(1, math.ceil(ttl_s * 1000))
        await self._call("put", lambda: self.client.set(self._k(key), value, px=ms))

    async def get(self, key: str) -> str | None:
        value = await self._call("get", lambda: self.client.get(self._k(key)))
        return None if value is None else str(value)

    async def expires_in(self, key: str) -> float:
        ms = int(await self._call("expires_in", lambda: self.client.pttl(self._k(key))))
        return ms / 1000 if ms > 0 else 0.0

    async def bump(self, key: str) -> int:
        return int(await self._call("bump", lambda: self.client.incr(self._k(key))))

    async def take(self, key: str, capacity: float, per_s: float, *, dry_run: bool = False) -> float:
        interval_ms = 1000.0 / per_s
        args = [repr(interval_ms), repr(float(capacity)), "0" if dry_run else "1"]
        wait_ms = await self._call("take", lambda: self._take(keys=[self._k(key)], args=args))
        return float(wait_ms) / 1000

    async def ping(self) -> None:
        await self._call("ping", self.client.ping)

    async def aclose(self) -> None:
        await self.client.aclose()


def shared_state(settings: Settings) -> SharedState:
    """`RedisState` when `HYBRID_CHAT_REDIS_URL` is set, else `LocalState` (said once in the log)."""
    if settings.redis_url is None:
        log.info(
            "no shared store (HYBRID_CHAT_REDIS_URL unset): rate limits, the sign-in throttle and sign-outs "
            "are kept in this process; set it when running more than one replica"
        )
        return LocalState()
    return RedisState(settings.redis_url.get_secret_value(), timeout_s=settings.redis_timeout_s)


STORE_FALLBACKS = Counter(
    "hybrid_chat_shared_store_fallbacks_total",
    "Calls that fell back because the shared store (HYBRID_CHAT_REDIS_URL) did not answer, by caller.",
    ["caller"],
)


class Fallbacks:
    """Says once a minute per kind that a limit fell back on a store outage (and never the key), and
    counts every fallback in `hybrid_chat_shared_store_fallbacks_total` (alert on its rate)."""

    def __init__(self, logger: logging.Logger) -> None:
        from ui.logs import LogLimiter

        self.limiter = LogLimiter(logger)
        self.caller = logger.name.rsplit(".", 1)[-1]

    def note(self, kind: str, exc: StoreUnavailable) -> None:
        STORE_FALLBACKS.labels(self.caller).inc()
        self.limiter.log(logging.WARNING, kind, "%s", str(exc))
