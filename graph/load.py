"""Backend load from a Prometheus `/metrics` endpoint (vLLM, or llama.cpp's for the local stand-in).

The router reads the last known value; it never waits for it. A refresh runs in the background at most
every `refresh_s` seconds, triggered by routing itself, so an idle service does not poll.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

# Requests queued, not yet running: vLLM's gauge, and llama.cpp's equivalent.
WAITING_METRICS = ("vllm:num_requests_waiting", "llamacpp:requests_deferred")


def parse_waiting(text: str) -> float | None:
    total: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in WAITING_METRICS:
                total = (total or 0.0) + sample.value
    return total


class LoadMonitor:
    def __init__(
        self, metrics_url: Callable[[], str | None], *, refresh_s: float = 5.0, timeout_s: float = 1.0
    ):
        self._metrics_url = metrics_url
        self.refresh_s = refresh_s
        self._timeout = timeout_s
        self._waiting: float | None = None
        self._fetched_at = float("-inf")
        self._task: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> float | None:
        """Requests waiting at the last refresh (None: unknown, e.g. never read or unreadable)."""
        return self._waiting

    def stale(self) -> bool:
        return time.monotonic() - self._fetched_at >= self.refresh_s

    def kick(self) -> None:
        """Start a background refresh if the value is stale (call from the event loop)."""
        if self.stale() and (self._task is None or self._task.done()):
            self._fetched_at = time.monotonic()  # one refresh per period, even if it fails
            self._task = asyncio.get_running_loop().create_task(self.refresh())

    async def refresh(self) -> None:
        url = self._metrics_url()
        if url is None:
            return
        try:
            async with httpx.AsyncClient(timeout=self._timeout) as client:
                r = await client.get(url)
                r.raise_for_status()
            self._waiting = parse_waiting(r.text)
        except (httpx.HTTPError, ValueError) as exc:
            log.debug("load refresh from %s failed: %s", url, exc)
            self._waiting = None
        self._fetched_at = time.monotonic()
