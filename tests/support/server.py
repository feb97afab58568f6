"""Start `hybrid-chat serve` as a user does (a subprocess on a free port) and wait until it answers."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(
    env: dict[str, str], log_path: Path, *, timeout: float = 90, wait_for: str = "/"
) -> Iterator[tuple[str, float, int]]:
    """Yields (base URL, seconds until `wait_for` (the chat page) answered 200, the server's process id)."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRID_CHAT_")}
    full_env.update({"GRADIO_ANALYTICS_ENABLED": "False", **env})
    exe = str(Path(sys.executable).with_name("hybrid-chat"))
    log = open(log_path, "w")
    start = time.perf_counter()
    proc = subprocess.Popen(  # noqa: S603
        [exe, "serve", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=full_env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"hybrid-chat serve exited with {proc.returncode}; see {log.name}")
            if time.perf_counter() - start > timeout:
                raise TimeoutError(f"hybrid-chat serve did not answer within {timeout} s; see {log.name}")
            try:
                # Followed: with sign-in on, the chat page sends a visitor to the sign-in form.
                if httpx.get(url + wait_for, timeout=1, follow_redirects=True).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield url, time.perf_counter() - start, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
