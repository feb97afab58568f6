"""How a replica stops without failing a request: Kubernetes' SIGTERM at a rolling update, a scale-down
or a node drain, behind a load balancer that only learns of it from `/readyz`.

In order:
1. SIGTERM: `/readyz` answers 503 at once ("stopping"); every other request is served as before, each
   response with `Connection: close`, so balancers and clients drop their pooled connections to us.
2. For `drain_s` (HYBRID_CHAT_DRAIN_S) the listener stays open: the time the balancer needs to see the
   failed readiness and stop sending (the kubelet's probe period x failureThreshold, haproxy's inter x
   fall, GKE's endpoint removal). What it still sends meanwhile is answered.
3. Then uvicorn stops listening and new turns are refused; answers streaming get `shutdown_grace_s` to
   finish, then stop, what streamed saved and marked stopped; those saves end (each bounded by the
   store's own deadline) before anything closes.
4. Gradio's heartbeat streams end, the stores close (server.py's lifespan), the process exits.

A second SIGTERM, or SIGINT (Ctrl-C in a terminal: no balancer to wait for), skips the drain delay.
uvicorn has no drain delay of its own (its SIGTERM closes the listener at once), so the SIGTERM handler
it installs is wrapped here: the app sees the signal first, and hands it on once the delay is over.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from graph.settings import Settings
from ui.chat import ChatService

log = logging.getLogger(__name__)

STOPPING_REASON = "this replica is stopping: the load balancer sends new requests to the others"


class Shutdown:
    """One replica's way out (the module docstring): `stopping` from the SIGTERM on, then one drain,
    however many callers ask for it (uvicorn's exit flag, the lifespan's end, an embedder)."""

    def __init__(self, service: ChatService, settings: Settings) -> None:
        self.service, self.settings = service, settings
        self.stopping_since: float | None = None  # monotonic time of the SIGTERM
        self.on_drained: Callable[[], None] | None = None  # ends Gradio's heartbeat streams
        self._drained: asyncio.Task[None] | None = None

    @property
    def stopping(self) -> bool:
        return self.stopping_since is not None or self.service.draining

    def begin_stopping(self) -> None:
        """Readiness fails from now on; requests are still served (step 1)."""
        if self.stopping_since is None:
            self.stopping_since = time.monotonic()
            if self.settings.drain_s > 0:
                log.info(
                    "stopping: not ready; serving on for %.0f s while the load balancer notices",
                    self.settings.drain_s,
                )

    def hook_signals(self, server: Any) -> None:
        """Wrap uvicorn's SIGTERM handler (installed in the main thread before our lifespan starts)
        so the listener stays open for `drain_s` first. Nothing to wrap without a drain delay, outside
        the main thread, or when SIGTERM is not uvicorn's."""
        previous = signal.getsignal(signal.SIGTERM)
        if self.settings.drain_s <= 0 or threading.current_thread() is not threading.main_thread():
            return
        if getattr(previous, "__self__", None) is not server:
            return
        loop = asyncio.get_running_loop()

        def on_sigterm(sig: int, frame: FrameType | None) -> None:
            if self.stopping_since is not None:  # a second SIGTERM: stop now
                previous(sig, frame)
                return
            loop.call_soon_threadsafe(self._stop_after_drain, previous, sig, frame)

        signal.signal(signal.SIGTERM, on_sigterm)

    def _stop_after_drain(self, stop: Callable[[int, FrameType | None], Any], sig: int, frame: Any) -> None:
        self.begin_stopping()
        asyncio.get_running_loop().call_later(self.settings.drain_s, stop, sig, frame)

    async def watch(self, server: Any) -> None:
        """Drain once uvicorn stops listening. uvicorn waits for open connections before the lifespan's
        end, and browsers keep a heartbeat stream open: without this a SIGTERM waits for every tab."""
        while not server.should_exit:  # noqa: ASYNC110 - uvicorn's flag, no event to wait on
            await asyncio.sleep(0.2)
        await self.drain()

    async def drain(self) -> None:
        """Steps 3 and 4 up to the stores: one run, which every caller waits for to the end (a second
        caller returning early would let the stores close under the stopped turns' saves)."""
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_task(self._drain())
        await asyncio.shield(self._drained)

    async def _drain(self) -> None:
        self.begin_stopping()
        self.service.draining = True
        log.info("shutting down: %d answer(s) streaming", len(self.service.active))
        started = time.perf_counter()
        await self.service.drain(self.settings.shutdown_grace_s)
        # The stopped turns' saves: each is bounded by the store's deadline (the question's, then the
        # answer's), so this ends; the stores must stay open until it does.
        await self.service.client.settle(2 * self.settings.memory_timeout_s + 1)
        log.info("shutting down: answers drained and saved in %.1f s", time.perf_counter() - started)
        if self.on_drained is not None:
            self.on_drained()


class CloseWhileStopping:
    """ASGI middleware: once the replica is stopping, every response says `Connection: close`, so the
    balancer's (and clients') kept-alive connections end with the request in flight instead of being
    cut when the listener closes."""

    def __init__(self, app: ASGIApp, shutdown: Shutdown) -> None:
        self.app, self.shutdown = app, shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and self.shutdown.stopping:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)
