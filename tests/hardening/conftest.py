"""Shared pieces of the hardening suite: a scripted chat model, graph builders, the real Firestore emulator.

Most examples run through the real graph with a scripted model (milliseconds) and the real stores
(SQLite always; the real Cloud Firestore emulator for the `integration` cases); a few run through the
real local llama.cpp / Vertex stand-ins (`local_backends` from tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field

from graph import build_graph
from graph.backends import Backends
from graph.memory.codec import message_text
from graph.memory.contract import ConversationStore
from graph.settings import Settings
from tests.fakes import ScriptedBackends
from tests.support.firestore_emulator import FirestoreEmulator, firestore_emulator

FS_DATABASE = "hardening-db"
FS_COLLECTION = "chat_sessions"

# Examples are random on purpose (new inputs every run); a failure prints the example and a blob to
# reproduce it (`@reproduce_failure`). No example database: nothing is written into the checkout.
settings.register_profile(
    "hardening",
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "hardening"))


class ScriptedModel(BaseChatModel):
    """A chat model that answers `reply(prompt)` in small chunks and records every prompt it got.

    `delay_s` sleeps between chunks (async path); `gate`, when set, is awaited before the first chunk
    (a test can hold every answer mid-turn, e.g. to stop the store while the model "thinks").
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    reply: Callable[[list[BaseMessage]], str] = lambda prompt: "ok"
    chunk_chars: int = 5
    delay_s: float = 0.0
    gate: Any = None  # asyncio.Event
    prompts: list[list[BaseMessage]] = Field(default_factory=list)
    lock: Any = Field(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _answer(self, messages: list[BaseMessage]) -> str:
        with self.lock:
            self.prompts.append(list(messages))
        return self.reply(list(messages))

    def _pieces(self, text: str) -> list[str]:
        return [text[i : i + self.chunk_chars] for i in range(0, len(text), self.chunk_chars)] or [""]

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any):
        return ChatResult(generations=[ChatGeneration(message=AIMessage(self._answer(messages)))])

    def _stream(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any):
        for piece in self._pieces(self._answer(messages)):
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))

    async def _astream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> AsyncIterator[ChatGenerationChunk]:
        text = self._answer(messages)
        if self.gate is not None:
            await self.gate.wait()
        for piece in self._pieces(text):
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))


async def until(predicate: Callable[[], bool], within_s: float = 10.0) -> None:
    """Wait (polling, bounded) until `predicate()` holds."""
    for _ in range(int(within_s / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"condition not met within {within_s} s")


def echo(prompt: list[BaseMessage]) -> str:
    """An answer that repeats every user message of the prompt: any cross-talk becomes visible."""
    return "echo:" + "|".join(message_text(m) for m in prompt if m.type == "human")


def scripted_graph(
    store: ConversationStore, model: BaseChatModel, gemini: BaseChatModel | None = None, **overrides: Any
) -> Any:
    s = Settings(_env_file=None, **{"max_tokens": 16, **overrides})  # type: ignore[arg-type]
    backends = ScriptedBackends(s, {"gemma": model, "gemini": gemini or model})
    return build_graph(s, store=store, backends=backends)


def turn(
    text: str, session: str, model: str = "gemma", **extra: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    return {"messages": [{"role": "user", "content": text}], "model": model, **extra}, {
        "configurable": {"session_id": session}
    }


def new_id() -> str:
    return uuid.uuid4().hex


@pytest.fixture(scope="session")
def fs_emulator() -> Iterator[FirestoreEmulator]:
    """One real Cloud Firestore emulator for the hardening suite (its own process: tests may freeze it)."""
    with firestore_emulator(set_env=False) as emu:
        yield emu


@pytest.fixture
def fs_env(fs_emulator: FirestoreEmulator, monkeypatch: pytest.MonkeyPatch) -> FirestoreEmulator:
    """Point Firestore clients created in this test at the emulator, with a wiped database."""
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", fs_emulator.host)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", fs_emulator.project)
    fs_emulator.wipe(FS_DATABASE)
    return fs_emulator


def make_store(
    kind: str, tmp_path: Path, emu: FirestoreEmulator | None = None, **kw: Any
) -> ConversationStore:
    if kind == "sqlite":
        from graph.memory.sqlite import SQLiteConversationStore

        return SQLiteConversationStore(tmp_path / f"{new_id()}.db", **kw)
    from graph.memory.firestore import FirestoreConversationStore

    assert emu is not None
    return FirestoreConversationStore(
        project=emu.project, database=FS_DATABASE, collection=FS_COLLECTION, **{"timeout": 5.0, **kw}
    )


STORES = ["sqlite", pytest.param("firestore", marks=pytest.mark.integration)]


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ConversationStore]:
    """Each store kind in turn (Firestore on the real emulator, marked integration)."""
    emu = request.getfixturevalue("fs_env") if request.param == "firestore" else None
    s = make_store(request.param, tmp_path, emu)
    yield s
    await s.aclose()


# --- the running server (`hybrid-chat serve`), shared by the HTTP tests ----------------------------
# One user per purpose: the rate limit is per user and per minute, and the tests share one server.
SERVER_USERS = [f"{p}{i}" for p in ("user", "api") for i in range(20)] + [
    *("spammer", "alice", "eve", "smoke", "mallory", "logger", "tab_a", "tab_b", "uploader", "leaver"),
    *("tab_owner_twice", "tab_owner_once", "tab_intruder", "typist", "prober"),
]
SERVER_PASSWORD = "pw-Zq8-hardening"  # noqa: S105 - a throwaway password of a local test server
SERVER_SECRET = "sk-hardening-SECRET-4f9c2e"  # noqa: S105 - must never appear in a log
SERVER_RATE_PER_MINUTE = 10
ALLOWED_ORIGIN = "https://portal.example.com"  # a site configured to call the app with the user's sign-in


@pytest.fixture(scope="session")
def chat_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`hybrid-chat serve` on 127.0.0.1 as deployed: local sign-in, a rate limit, SQLite, Gemma behind
    an API key. Gemma is the fault server (an instant OpenAI-compatible stand-in the tests can break:
    `fault.mode`); Gemini is the embedded Vertex stand-in (llama.cpp, started on first use).
    The fault server records the Authorization headers it received (`auth_headers`)."""
    from tests.support.fault_server import fault_server
    from tests.support.server import running_server

    tmp = tmp_path_factory.mktemp("serve")
    with fault_server("ok") as fault:
        auth_headers: list[str | None] = []
        base = fault.httpd.RequestHandlerClass

        class Recording(base):  # type: ignore[misc, valid-type]
            def do_POST(self) -> None:
                auth_headers.append(self.headers.get("Authorization"))
                super().do_POST()

        fault.httpd.RequestHandlerClass = Recording
        env = {
            "HYBRID_CHAT_SQLITE_PATH": str(tmp / "chat.db"),
            "HYBRID_CHAT_GEMMA_BASE_URL": fault.base_url,
            "HYBRID_CHAT_GEMMA_API_KEY": SERVER_SECRET,
            "HYBRID_CHAT_TEMPERATURE": "0",
            "HYBRID_CHAT_MAX_TOKENS": "4",
            "HYBRID_CHAT_FIRST_TOKEN_TIMEOUT_S": "2",
            "HYBRID_CHAT_REQUEST_TIMEOUT_S": "20",
            "HYBRID_CHAT_BREAKER_FAILURES": "1000",  # every turn reaches the fault server
            "HYBRID_CHAT_LOCAL_MODEL_THREADS": "1",
            "HYBRID_CHAT_RATE_LIMIT_PER_MINUTE": str(SERVER_RATE_PER_MINUTE),
            "HYBRID_CHAT_AUTH_USERS": ",".join(f"{u}:{SERVER_PASSWORD}" for u in SERVER_USERS),
            "HYBRID_CHAT_LOG_LEVEL": "INFO",
            "HYBRID_CHAT_ALLOWED_ORIGINS": ALLOWED_ORIGIN,
            "GRADIO_TEMP_DIR": str(tmp / "gradio"),  # where Gradio would keep uploads
        }
        log = tmp / "serve.log"
        with running_server(env, log) as (url, started_in, pid):
            yield {
                "url": url,
                "db": tmp / "chat.db",
                "log": log,
                "started_in": started_in,
                "pid": pid,
                "fault": fault,
                "auth_headers": auth_headers,
                "gradio_tmp": tmp / "gradio",
            }


async def login(url: str, user: str) -> Any:
    """An httpx.AsyncClient signed in as `user` (Gradio's login form sets the session cookie)."""
    import httpx

    client = httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(60, connect=5))
    r = await client.post("/login", data={"username": user, "password": SERVER_PASSWORD})
    assert r.status_code == 200, r.text
    return client


class ApiError(Exception):
    """Gradio's `error` event: a refused call (a limit, a validation error), with the user's message."""


async def call_api(client: Any, route: str, *data: Any) -> tuple[Any, float, float]:
    """One call through Gradio's HTTP API (`/gradio_api/call/<route>`, then its event stream):
    (the final value, seconds to the first streamed event, total seconds). `ApiError` on an error event."""
    import json
    import time

    started = time.perf_counter()
    # ASCII JSON: a lone surrogate travels as "\\ud800", as a browser's JSON.stringify would send it.
    body = json.dumps({"data": list(data)}).encode()
    r = await client.post(
        f"/gradio_api/call/{route}", content=body, headers={"content-type": "application/json"}
    )
    r.raise_for_status()
    event_id = r.json()["event_id"]
    first: float | None = None
    final: Any = None
    event = ""
    async with client.stream("GET", f"/gradio_api/call/{route}/{event_id}") as stream:
        async for line in stream.aiter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                first = first or time.perf_counter()
                value = json.loads(line[5:])
                if event == "error":
                    raise ApiError((value or {}).get("error") if isinstance(value, dict) else value)
                if event == "complete":
                    final = value[0]
    return final, (first or time.perf_counter()) - started, time.perf_counter() - started


class MixedBackends(ScriptedBackends):
    """Gemma: the real `ChatOpenAI` client at `settings.gemma_base_url` (a fault server); Gemini: scripted."""

    def __init__(self, settings: Settings, gemini: BaseChatModel) -> None:
        super().__init__(settings, {"gemini": gemini})

    def model(self, name: Any, params: Any) -> Any:
        if name == "gemini":
            return super().model(name, params)
        self.calls.append(name)
        return Backends.model(self, name, params)

    async def amodel(self, name: Any, params: Any) -> Any:
        return self.model(name, params)


async def chat_text(client: Any, message: str, session: str, model: str = "gemma") -> str:
    """What a `/chat` caller is told: the answer, or the refusal (an error event; older UIs streamed it)."""
    try:
        answer, _, _ = await call_api(client, "chat", message, model, session, None, None)
    except ApiError as exc:
        return str(exc)
    return str(answer)


async def call_rest(
    client: Any, message: str, session: str, model: str = "gemma"
) -> tuple[dict, str, float, float]:
    """One `POST /api/chat` (Server-Sent Events): (the `done` event, the concatenated deltas, seconds to
    the first event, total seconds). The client carries the sign-in (HTTP Basic)."""
    import json
    import time

    started = time.perf_counter()
    first: float | None = None
    deltas, done, event = "", None, ""
    body = json.dumps({"message": message, "model": model, "session_id": session}).encode()
    headers = {"content-type": "application/json"}
    async with client.stream("POST", "/api/chat", content=body, headers=headers) as stream:
        if stream.status_code != 200:
            raise ApiError(f"HTTP {stream.status_code}: {(await stream.aread()).decode(errors='replace')}")
        async for line in stream.aiter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                first = first or time.perf_counter()
                data = json.loads(line[5:])
                if event == "delta":
                    deltas += data["text"]
                elif event == "done":
                    done = data
    assert done is not None, "the stream ended without a done event"
    return done, deltas, (first or time.perf_counter()) - started, time.perf_counter() - started
