"""Serve `ui.server.create_app` in this process (uvicorn in a thread, free port) for UI tests.

In-process so tests can share the session's local model servers and flip a backend to failing
mid-test. The real `hybrid-chat serve` subprocess path is covered by tests/test_serve.py.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from graph.backends import Backends
from tests.support.server import free_port


class SwitchableBackends(Backends):
    """Real backends whose Gemma can be pointed at a closed port (a dead vLLM) and back."""

    dead_gemma = False

    def set_gemma_dead(self, dead: bool) -> None:
        self.dead_gemma = dead
        self._models.clear()  # cached clients hold the old base URL

    def gemma_base_url(self) -> str:
        if self.dead_gemma:
            return f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there: connection refused
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
