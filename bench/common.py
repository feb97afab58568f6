"""Helpers shared by the benchmarks: percentiles, the stub process, a store that does nothing."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
from langchain_core.messages import BaseMessage

from graph.memory.contract import ChatHistory, ConversationStore, Page


class Child:
    """A server in a process of its own, its output in a log file: started, waited for until `ready_url`
    answers 200 (or it exits, or `timeout_s` passes: an error naming the log), and stopped."""

    def __init__(
        self, cmd: list[str], env: dict[str, str], log_path: Path, ready_url: str, *, timeout_s: float = 60
    ) -> None:
        self.log = open(log_path, "w")  # open for the child's lifetime, closed by stop()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)  # noqa: S603
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.close()
                raise RuntimeError(f"{cmd[0]} exited with {self.proc.returncode}: see {log_path}")
            try:
                if httpx.get(ready_url, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{cmd[0]} did not answer {ready_url} within {timeout_s:g} s: see {log_path}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def stub_server(chunk_delay_ms: float = 0) -> Iterator[str]:
    """The OpenAI-compatible stub in its own process (instant unless `chunk_delay_ms`); yields …/v1."""
    port = free_port()
    cmd = [sys.executable, "-m", "bench.stub", "--port", str(port), "--chunk-delay-ms", str(chunk_delay_ms)]
    proc = subprocess.Popen(cmd)  # noqa: S603
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(url + "/v1/models", timeout=0.5)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url + "/v1"
    finally:
        proc.terminate()
        proc.wait(5)


class NullHistory(ChatHistory):
    """Memory excluded: reads nothing, writes nothing (to isolate the graph's own cost)."""

    def __init__(self, session_id: str, user_id: str) -> None:
        self.session_id, self.user_id = session_id, user_id

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        return []

    async def aget_window(self, max_messages: int | None = None, max_tokens: int | None = None) -> list:
        return []

    def get_window(self, max_messages: int | None = None, max_tokens: int | None = None) -> list:
        return []

    async def aget_page(self, before: int | None = None, limit: int = 50) -> Page:
        return Page([], None)

    async def aadd_messages(self, messages: Sequence[BaseMessage], *, model: str | None = None) -> None:
        return None

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        return None

    def clear(self) -> None:
        return None

    async def aget_messages(self) -> list[BaseMessage]:
        return []

    async def aclear(self) -> None:
        return None

    async def atruncate(self, from_message_id: str) -> int:
        return 0


class NullStore(ConversationStore):
    def history(self, session_id: str, user_id: str) -> NullHistory:
        return NullHistory(session_id, user_id)

    async def alist_conversations(self, user_id: str, limit: int = 20, cursor: str | None = None):  # type: ignore[override]
        raise NotImplementedError

    async def aget_conversation(self, session_id: str, user_id: str):  # type: ignore[override]
        raise NotImplementedError

    async def arename(self, session_id: str, user_id: str, title: str) -> None:
        raise NotImplementedError

    async def adelete(self, session_id: str, user_id: str) -> None:
        raise NotImplementedError

    async def aping(self) -> None:
        return None
