"""The chat logic behind the browser page, free of Gradio: parameters, rendering, and `ChatService`.

`ChatService.turn` streams a turn through the one `ChatClient` (graph/client.py) and yields the growing
answer text, then one `Done` as the page shows it. It never raises for a failed turn: a backend failure,
a store outage or a conversation of another user becomes a `Done` whose text says so. Cancelling the
task that consumes it (the Stop button) cancels the graph and with it the backend's HTTP request; the
graph saves what was streamed, marked as stopped.

Conversation ids come from the browser, so every read, rename and delete first checks that the
conversation belongs to the signed-in user (`aget_conversation` raises `AccessDenied` otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import re
import time
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import BaseMessage
from prometheus_client import Counter, Gauge, Histogram

from graph.client import MODELS as CLIENT_MODELS
from graph.client import ChatClient, Delta
from graph.client import Done as ClientDone
from graph.memory.codec import message_text
from graph.memory.contract import (
    META_KEY,
    AccessDenied,
    ConversationList,
    ConversationNotFound,
    MemoryUnavailable,
)
from graph.settings import Settings
from graph.validation import InvalidInput
from ui.health import HealthBoard
from ui.limits import Busy, LimitExceeded, StreamSlot, StreamSlots, check_message

log = logging.getLogger(__name__)

MODEL_CHOICES: list[tuple[str, str]] = [
    ("Auto", "auto"),
    ("Gemma 3 12B (in-cluster)", "gemma"),
    ("Gemini 2.5 Flash", "gemini"),
]
MAX_TOKENS_CEILING = 8192

UI_TURNS = Counter("hybrid_chat_ui_turns_total", "Chat turns served by the UI, by outcome.", ["outcome"])
UI_FIRST_TOKEN = Histogram(
    "hybrid_chat_ui_first_token_seconds",
    "From the UI handler's start to the first streamed token (includes history load and routing).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32),
)
UI_ACTIVE = Gauge("hybrid_chat_ui_active_streams", "Answers streaming to browsers or API clients now.")
UI_REJECTED = Counter("hybrid_chat_ui_rejected_total", "Messages refused by a UI limit.", ["limit"])


@dataclass(frozen=True)
class TurnParams:
    model: str
    temperature: float
    top_p: float
    max_tokens: int
    system_prompt: str
    seed: int | None = None  # sampling seed (the OpenAI endpoint's `seed`)


def turn_params(
    settings: Settings,
    model: Any = None,
    temperature: Any = None,
    top_p: Any = None,
    max_tokens: Any = None,
    system_prompt: Any = None,
    seed: int | None = None,
    *,
    models: Collection[str] = CLIENT_MODELS,
) -> TurnParams:
    """Parameters from the browser (or an API client), validated and clamped: never trusted as sent.
    `models`: what may be asked for (`ChatClient.models`)."""
    model = model or settings.default_model
    if model not in models:
        raise LimitExceeded(f"Unknown model {str(model)[:40]!r}: choose one of {', '.join(sorted(models))}.")

    def num(value: Any, default: float, lo: float, hi: float) -> float:
        try:
            x = float(value)
        except (TypeError, ValueError):
            return default
        return default if x != x else min(hi, max(lo, x))  # NaN -> default

    system = settings.system_prompt if system_prompt is None else str(system_prompt)
    if len(system) > settings.max_message_chars:
        raise LimitExceeded(
            f"The persona is {len(system):,} characters long; the limit is {settings.max_message_chars:,}."
        )
    return TurnParams(
        model=str(model),
        temperature=num(temperature, settings.temperature, 0.0, 2.0),
        top_p=num(top_p, settings.top_p, 0.01, 1.0),
        max_tokens=int(num(max_tokens, settings.max_tokens, 1, MAX_TOKENS_CEILING)),
        system_prompt=system,
        seed=seed,
    )


@dataclass
class Done:
    """The end of a turn, as the page shows it. `kind`: answer | backend_error | failed (nothing reached a
    model)."""

    kind: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)
    human_id: str | None = None
    human_saved: bool = False
    answer_id: str | None = None
    answer_saved: bool = False
    note: str | None = None  # e.g. "the turn could not be saved"
    error: BaseException | None = None  # kind "failed": why (an API maps it to a status code)


# --- rendering ------------------------------------------------------------------------------
def meta_line(meta: dict[str, Any]) -> str:
    """The unobtrusive line under an answer: who answered, why, how fast."""
    parts: list[str] = []
    if meta.get("backend_label") or meta.get("backend"):
        parts.append(str(meta.get("backend_label") or meta.get("backend")))
    if meta.get("route_reason"):
        parts.append(str(meta["route_reason"]))
    if meta.get("ttft_ms") is not None:
        parts.append(f"first token {float(meta['ttft_ms']):.0f} ms")
    if meta.get("tokens_per_s"):
        parts.append(f"{float(meta['tokens_per_s']):.0f} tok/s")
    if meta.get("interrupted"):
        stopped = meta["interrupted"] == "stopped"
        parts.append("stopped" if stopped else f"interrupted: {str(meta['interrupted'])[:120]}")
    if meta.get("note"):
        parts.append(str(meta["note"]))
    return " · ".join(parts)


def render_answer(
    text: str, meta: dict[str, Any] | None = None, *, kind: str = "answer", turn: str | None = None
) -> str:
    """Markdown for the chat bubble: the answer, then the meta line as small text. Its class
    `hc-turn-<id>` names the turn (the sanitizer keeps classes, not data attributes), so scripts and
    tests can tell a regenerated answer from the one it replaced."""
    meta = meta or {}
    body = text if text.strip() else "*(no answer)*"
    if kind != "answer":
        body = f"⚠️ {text}"
    line = meta_line(meta)
    if not line:
        return body
    css = "hc-meta hc-meta-error" if kind != "answer" else "hc-meta"
    if turn:
        css += " hc-turn-" + re.sub(r"[^A-Za-z0-9_-]", "_", str(turn))[:64]
    return f'{body}\n\n<span class="{css}">{html.escape(line)}</span>'


def rows_from_messages(messages: list[BaseMessage]) -> list[dict[str, Any]]:
    """Server-side rows (role, stored id, text, display markdown) for stored messages."""
    rows: list[dict[str, Any]] = []
    for m in messages:
        text = message_text(m)
        if m.type == "human":
            rows.append({"role": "user", "id": m.id, "text": text, "content": text})
        elif m.type == "ai":
            meta = dict(m.response_metadata.get(META_KEY) or {})
            rows.append(
                {
                    "role": "assistant",
                    "id": m.id,
                    "text": text,
                    "content": render_answer(text, meta, turn=m.id),
                }
            )
    return rows


def chatbot_value(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"role": r["role"], "content": r["content"]} for r in rows]


NOT_AVAILABLE = (
    "This conversation is not available: it does not exist (it may have been deleted), or it belongs to "
    "another account."
)


def friendly_error(exc: BaseException) -> str:
    if isinstance(exc, InvalidInput):
        return f"This message was not sent: {exc}"
    if isinstance(exc, AccessDenied | ConversationNotFound):
        # One text for both: whether an id exists under another account is nobody else's business.
        return NOT_AVAILABLE
    if isinstance(exc, MemoryUnavailable):
        return (
            "The conversation store is unreachable right now, so this message was not sent. "
            "Your earlier messages are safe; try again in a moment."
        )
    if isinstance(exc, LimitExceeded):
        return str(exc)
    return f"Something went wrong ({type(exc).__name__}). Your earlier messages are safe; try again."


# --- the service ----------------------------------------------------------------------------
class ChatService:
    """What the page (and the API) can do for a signed-in user, over the one `ChatClient`: this adds
    the page's metrics, the health board and shutdown draining. Everything here is async."""

    def __init__(self, client: ChatClient, *, health: HealthBoard | None = None) -> None:
        self.client = client
        self.settings: Settings = client.settings
        self.health = health or HealthBoard(client.services.router)
        self.active: set[asyncio.Task[Any]] = set()
        self.draining = False  # set on shutdown: no new turns
        self.streams = StreamSlots(self.settings.max_concurrent_streams, self.settings.stream_wait_s)

    async def stream_slot(self) -> StreamSlot:
        """A place for one streaming answer, within `stream_wait_s`; `Busy` otherwise. A caller that
        must answer "busy" before it starts streaming (the API's status code, the page's input box)
        takes it first and hands it to `turn`."""
        try:
            return await self.streams.acquire()
        except Busy:
            UI_REJECTED.labels("busy").inc()
            raise

    async def turn(
        self,
        user: str,
        session_id: str,
        text: str | Sequence[BaseMessage],
        params: TurnParams,
        *,
        human_id: str | None = None,
        slot: StreamSlot | None = None,
        stateless: bool = False,
    ) -> AsyncIterator[Delta | Done]:
        """Stream one turn. `stateless=True`: `text` is the whole conversation as messages (an OpenAI
        client's), and memory is neither read nor written (`ChatClient.stream_turn`).

        Every answer holds a place of `streams` (the one limit shared by the page,
        Gradio's `/chat` and `/api/chat`) while it runs: `slot` if the caller took one (released here,
        like one taken here), else one taken now; none free within the wait: a `Done("failed")` saying
        the server is busy."""
        if slot is None:
            try:
                slot = await self.stream_slot()
            except Busy as exc:
                yield Done("failed", str(exc))
                return
        try:
            # aclosing: a consumer leaving early (Stop, a client gone) cancels the graph at once.
            run = self._turn(user, session_id, text, params, human_id=human_id, stateless=stateless)
            async with contextlib.aclosing(run):
                async for event in run:
                    yield event
        finally:
            slot.release()

    async def _turn(
        self,
        user: str,
        session_id: str,
        text: str | Sequence[BaseMessage],
        params: TurnParams,
        *,
        human_id: str | None = None,
        stateless: bool = False,
    ) -> AsyncIterator[Delta | Done]:
        if isinstance(text, str):
            text = check_message(text, self.settings.max_message_chars)
        options = {
            "model": params.model,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "system_prompt": params.system_prompt,
            "seed": params.seed,
        }
        started = time.perf_counter()
        first = True
        task = asyncio.current_task()
        if task is not None:
            self.active.add(task)
        UI_ACTIVE.inc()
        turn = self.client.stream_turn(
            user, session_id, text, options, human_id=human_id, stateless=stateless
        )
        try:
            async with contextlib.aclosing(turn):
                async for event in turn:
                    if isinstance(event, Delta):
                        if first:
                            UI_FIRST_TOKEN.observe(time.perf_counter() - started)
                            first = False
                        yield event
                        continue
                    yield self._done(event)
        except (asyncio.CancelledError, GeneratorExit):
            UI_TURNS.labels("stopped").inc()
            raise
        finally:
            UI_ACTIVE.dec()
            if task is not None:
                self.active.discard(task)

    def _done(self, done: ClientDone) -> Done:
        if done.kind == "failed":
            UI_TURNS.labels("failed").inc()
            text = friendly_error(done.error) if done.error is not None else done.text
            return Done("failed", text, human_id=done.human_id, error=done.error)
        answer = done.answer
        assert answer is not None
        self.health.record_answer(done.meta, failed=done.kind == "backend_error")
        note = "not saved: the conversation store is unreachable" if done.save_error else None
        UI_TURNS.labels("ok" if done.kind == "answer" and not answer.interrupted else "backend_error").inc()
        return Done(
            done.kind,
            done.text,
            meta={**done.meta, **({"note": note} if note else {})},
            human_id=done.human_id,
            human_saved=done.saved,
            answer_id=answer.id,
            answer_saved=done.saved and done.kind == "answer",
            note=note,
        )

    # --- conversations (the client's, for the signed-in user) ---------------------------------
    def pages(self, user: str, session_id: str) -> AsyncIterator[list[BaseMessage]]:
        return self.client.pages(user, session_id)

    async def messages(self, user: str, session_id: str) -> list[BaseMessage]:
        return await self.client.messages(user, session_id)

    async def conversations(self, user: str, limit: int = 30, cursor: str | None = None) -> ConversationList:
        return await self.client.conversations(user, limit=limit, cursor=cursor)

    async def rename(self, user: str, session_id: str, title: str) -> None:
        await self.client.rename(user, session_id, title)

    async def delete(self, user: str, session_id: str) -> None:
        await self.client.delete(user, session_id)

    async def truncate(self, user: str, session_id: str, from_message_id: str) -> int:
        return await self.client.truncate(user, session_id, from_message_id)

    async def saved(self, limit_s: float = 3.0) -> None:
        """Wait (at most `limit_s`) for the background saves of stopped turns."""
        await self.client.settle(limit_s)

    # --- shutdown ----------------------------------------------------------------------------
    async def drain(self, grace_s: float) -> None:
        """Let running answers finish for up to `grace_s`, then stop them (their partial text is saved)."""
        if self.active:
            await asyncio.wait(list(self.active), timeout=grace_s)
        for task in list(self.active):
            task.cancel()
        if self.active:
            await asyncio.wait(list(self.active), timeout=5)
        await self.client.settle(5)
