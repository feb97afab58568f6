"""Serve `ui.server.create_app` in this process (uvicorn in a thread, free port) for UI tests.

In-process so tests can share the session's local model servers and flip a backend to failing
mid-test. The real `hybrid-chat serve` subprocess path is covered by tests/test_serve.py.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from graph.backends import Backends
from tests.support.server import free_port


class SlowStart:
    """A TCP relay to the real Gemma stand-in that holds each connection until `release` is set (at most
    `limit_s`): the model answers as usual, later (a busy vLLM), so a test sees the page before the first
    token for as long as it needs, whatever the machine's load, without racing it."""

    def __init__(self, upstream: str, release: threading.Event, limit_s: float = 60.0) -> None:
        host_port = upstream.split("://", 1)[1].split("/", 1)[0]
        host, port = host_port.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.release, self.limit_s = release, limit_s
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        self.release.wait(self.limit_s)
        try:
            up = socket.create_connection(self.upstream)
        except OSError:
            conn.close()
            return

        def pipe(src: socket.socket, dst: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := src.recv(65536):
                    dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        threading.Thread(target=pipe, args=(up, conn), daemon=True).start()
        pipe(conn, up)

    def close(self) -> None:
        self.listener.close()


class SwitchableBackends(Backends):
    """Real backends whose Gemma can be pointed at a closed port (a dead vLLM) and back, or made slow
    to start answering."""

    dead_gemma = False
    slow_gemma: SlowStart | None = None

    def set_gemma_dead(self, dead: bool) -> None:
        self.dead_gemma = dead
        self._models.clear()  # cached clients hold the old base URL

    @contextlib.contextmanager
    def gemma_held(self) -> Iterator[threading.Event]:
        """Within the block each new connection to Gemma waits until the event yielded is set (at the
        block's end at the latest) before it reaches the model."""
        release = threading.Event()
        self.slow_gemma = SlowStart(super().gemma_base_url(), release)
        self._models.clear()
        try:
            yield release
        finally:
            release.set()
            self.slow_gemma.close()
            self.slow_gemma = None
            self._models.clear()

    def gemma_base_url(self) -> str:
        if self.dead_gemma:
            return f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there: connection refused
        if self.slow_gemma is not None:
            return f"http://127.0.0.1:{self.slow_gemma.port}/v1"
        return super().gemma_base_url()


@contextlib.contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """Run `app` on a free port; yields its base URL. Started in well under a second."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1, lifespan="on"
    )
    server = uvicorn.Server(config)
    app.state.uvicorn_server = server  # lets the app end its streams when we stop it
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the app did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
