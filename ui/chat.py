"""The chat logic behind the browser page, free of Gradio: one streamed turn, conversations, rewind.

`ChatService.turn` runs the compiled graph with `astream(..., stream_mode=["messages", "updates"])`
and yields the growing answer text, then one `Done`. It never raises for a failed turn: a backend
failure, a store outage or a conversation of another user becomes a `Done` whose text says so, so the
page shows it inside the conversation. Cancelling the task that consumes it (the Stop button) cancels
the graph and with it the backend's HTTP request; what was streamed so far is then saved, marked as
stopped, in a background task.

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
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from prometheus_client import Counter, Gauge, Histogram

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
from ui.limits import LimitExceeded, check_message

log = logging.getLogger(__name__)

MODEL_CHOICES: list[tuple[str, str]] = [
    ("Auto", "auto"),
    ("Gemma 3 12B (in-cluster)", "gemma"),
    ("Gemini 2.5 Flash", "gemini"),
]
MODELS = {value for _, value in MODEL_CHOICES}
MAX_TOKENS_CEILING = 8192
HISTORY_PAGE = 100
HISTORY_MAX_MESSAGES = 5000

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


def turn_params(
    settings: Settings,
    model: Any = None,
    temperature: Any = None,
    top_p: Any = None,
    max_tokens: Any = None,
    system_prompt: Any = None,
) -> TurnParams:
    """Parameters from the browser (or an API client), validated and clamped: never trusted as sent."""
    model = model or settings.default_model
    if model not in MODELS:
        raise LimitExceeded(f"Unknown model {str(model)[:40]!r}: choose one of {', '.join(sorted(MODELS))}.")

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
    )


@dataclass
class Delta:
    """The answer so far (whole text, not just the new piece)."""

    text: str


@dataclass
class Done:
    """The end of a turn. `kind`: answer | backend_error | failed (nothing reached a model)."""

    kind: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)
    human_id: str | None = None
    human_saved: bool = False
    answer_id: str | None = None
    answer_saved: bool = False
    note: str | None = None  # e.g. "the turn could not be saved"


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


def friendly_error(exc: BaseException) -> str:
    if isinstance(exc, InvalidInput):
        return f"This message was not sent: {exc}"
    if isinstance(exc, AccessDenied):
        return "This conversation belongs to another account: it cannot be opened or continued here."
    if isinstance(exc, ConversationNotFound):
        return "This conversation no longer exists (it may have been deleted on another device)."
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
    """What the page (and the API) can do for a signed-in user. Everything here is async, no blocking I/O."""

    def __init__(self, graph: Any, *, health: HealthBoard | None = None) -> None:
        self.graph = graph
        self.services = graph.services
        self.settings: Settings = self.services.settings
        self.store = self.services.store
        self.health = health or HealthBoard(getattr(self.services, "router", None))
        self.active: set[asyncio.Task[Any]] = set()
        self.draining = False  # set on shutdown: no new turns
        self._background: set[asyncio.Task[Any]] = set()

    # --- one turn ----------------------------------------------------------------------------
    async def turn(
        self, user: str, session_id: str, text: str, params: TurnParams, *, human_id: str | None = None
    ) -> AsyncIterator[Delta | Done]:
        text = check_message(text, self.settings.max_message_chars)
        human = HumanMessage(content=text, id=human_id or str(uuid.uuid4()))
        payload = {
            "messages": [human],
            "model": params.model,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "system_prompt": params.system_prompt,
        }
        config = {"configurable": {"session_id": session_id}}
        started = time.perf_counter()
        first: float | None = None
        streamed = ""
        route: dict[str, Any] = {}
        answer: AIMessage | None = None
        call_error: str | None = None
        saved = False
        save_error: str | None = None
        task = asyncio.current_task()
        if task is not None:
            self.active.add(task)
        UI_ACTIVE.inc()
        interval = self.settings.stream_interval_ms / 1000
        last_yield = float("-inf")
        shown = 0
        stream = self.graph.astream(
            payload, config=config, context={"user_id": user}, stream_mode=["messages", "updates"]
        )
        try:
            # aclosing: leaving early (Stop, a closed tab) closes the graph's stream at once, which
            # cancels the node running the model and with it the backend's HTTP request.
            async with contextlib.aclosing(stream):
                async for mode, data in stream:
                    if mode == "messages":
                        chunk, meta = data
                        if (
                            meta.get("langgraph_node") == "call_model"
                            and isinstance(chunk, AIMessageChunk)
                            and isinstance(chunk.content, str)
                            and chunk.content
                        ):
                            now = time.perf_counter()
                            if first is None:
                                first = now
                                UI_FIRST_TOKEN.observe(first - started)
                            streamed += chunk.content
                            # The first piece at once (time to first token); then at most one update
                            # per interval: every update costs the page (Gradio's queue, a re-render)
                            # far more than a token, and a fast backend sends hundreds a second.
                            if now - last_yield >= interval or len(streamed) == len(chunk.content):
                                last_yield = now
                                yield Delta(streamed)
                                shown = len(streamed)
                        continue
                    for node, update in (data or {}).items():
                        update = update or {}
                        if node == "route":
                            route = dict(update)
                        elif node == "call_model":
                            answer = next(
                                (m for m in reversed(update.get("messages", [])) if m.type == "ai"), None
                            )
                            call_error = update.get("error")
                        elif node == "save_turn":
                            saved = True
                            save_error = update.get("error")
        except (asyncio.CancelledError, GeneratorExit):
            self._save_stopped(user, session_id, human, answer, streamed, route, started, first, saved)
            UI_TURNS.labels("stopped").inc()
            raise
        except Exception as exc:
            if not isinstance(exc, AccessDenied | MemoryUnavailable | ConversationNotFound | InvalidInput):
                log.exception("chat turn failed")
            else:
                log.warning("chat turn refused: %s: %s", type(exc).__name__, exc)
            UI_TURNS.labels("failed").inc()
            yield Done("failed", friendly_error(exc), human_id=human.id)
            return
        finally:
            UI_ACTIVE.dec()
            if task is not None:
                self.active.discard(task)
        if answer is None:  # the graph ended without an answer: should not happen
            UI_TURNS.labels("failed").inc()
            yield Done("failed", "No answer came back. Try again.", human_id=human.id)
            return
        if shown < len(streamed):  # the last pieces arrived within the interval: show them too
            yield Delta(streamed)
        meta = dict(answer.response_metadata.get(META_KEY) or {})
        is_error_note = bool(meta.get("error"))  # the graph's note saying which backend failed
        self.health.record_answer(meta, failed=bool(meta.get("error")))
        note = None
        if save_error:
            note = "not saved: the conversation store is unreachable"
        kind = "backend_error" if is_error_note else "answer"
        UI_TURNS.labels("ok" if kind == "answer" and not call_error else "backend_error").inc()
        yield Done(
            kind,
            message_text(answer),
            meta={**meta, **({"note": note} if note else {})},
            human_id=human.id,
            human_saved=saved and not save_error,
            answer_id=answer.id,
            answer_saved=saved and not save_error and kind == "answer",
            note=note,
        )

    def _save_stopped(
        self,
        user: str,
        session_id: str,
        human: HumanMessage,
        answer: AIMessage | None,
        streamed: str,
        route: dict[str, Any],
        started: float,
        first: float | None,
        saved: bool,
    ) -> None:
        """After Stop: keep the question and what was streamed (marked stopped), as chat UIs do."""
        if saved:
            return
        messages: list[BaseMessage] = [human]
        if answer is not None:
            messages.append(answer)
        elif streamed:
            backend = route.get("backend")
            meta = {
                "backend": backend,
                "backend_label": self.services.backends.label(backend) if backend else None,
                "route_reason": route.get("route_reason"),
                "latency_ms": round((time.perf_counter() - started) * 1000, 1),
                "ttft_ms": round((first - started) * 1000, 1) if first else None,
                "interrupted": "stopped",
            }
            messages.append(
                AIMessage(content=streamed, id=f"ai-{uuid.uuid4().hex}", response_metadata={META_KEY: meta})
            )

        async def save() -> None:
            try:
                await self.store.history(session_id, user).aadd_messages(messages, model=route.get("backend"))
            except Exception as exc:
                log.warning("saving a stopped turn failed: %s", exc)

        task = asyncio.get_running_loop().create_task(save())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- conversations -----------------------------------------------------------------------
    async def check_owner(self, user: str, session_id: str) -> None:
        """`AccessDenied` unless `session_id` is `user`'s (or does not exist yet: `ConversationNotFound`)."""
        await self.store.aget_conversation(str(session_id), user)

    async def pages(self, user: str, session_id: str) -> AsyncIterator[list[BaseMessage]]:
        """A conversation's messages, newest page first (each page oldest first), after an ownership check."""
        await self.check_owner(user, session_id)
        history = self.store.history(session_id, user)
        before: int | None = None
        loaded = 0
        while True:
            page = await history.aget_page(before=before, limit=HISTORY_PAGE)
            yield page.messages
            loaded += len(page.messages)
            if page.next_before is None or loaded >= HISTORY_MAX_MESSAGES or not page.messages:
                return
            before = page.next_before

    async def messages(self, user: str, session_id: str) -> list[BaseMessage]:
        out: list[BaseMessage] = []
        async for page in self.pages(user, session_id):
            out[:0] = page
        return out

    async def conversations(self, user: str, limit: int = 30, cursor: str | None = None) -> ConversationList:
        return await self.store.alist_conversations(user, limit=limit, cursor=cursor)

    async def rename(self, user: str, session_id: str, title: str) -> None:
        await self.check_owner(user, session_id)
        await self.store.arename(session_id, user, title)

    async def delete(self, user: str, session_id: str) -> None:
        try:
            await self.check_owner(user, session_id)
        except ConversationNotFound:
            return
        await self.store.adelete(session_id, user)

    async def rewind(self, user: str, session_id: str, drop_from: list[str]) -> tuple[str, dict[str, str]]:
        """Forget the stored messages from the first of `drop_from` (ids) on, for regenerate/edit.

        Stores append only, so the kept messages are copied into a new conversation (same title) and
        the old one is deleted after the copy succeeded: a failure midway leaves the old one intact.
        Returns (the conversation id to continue, {old message id: new id}).
        """
        try:
            stored = await self.messages(user, session_id)
        except ConversationNotFound:
            return session_id, {}
        drop = set(drop_from)
        cut = next((i for i, m in enumerate(stored) if m.id in drop), None)
        if cut is None:
            return session_id, {}
        kept = stored[:cut]
        new_id = uuid.uuid4().hex
        mapping: dict[str, str] = {}
        if kept:
            copies: list[BaseMessage] = []
            for m in kept:
                meta = {
                    k: v
                    for k, v in (m.response_metadata.get(META_KEY) or {}).items()
                    if k not in ("seq", "stored_at")
                }
                new_msg_id = str(uuid.uuid4())
                mapping[str(m.id)] = new_msg_id
                copies.append(
                    m.model_copy(
                        update={
                            "id": new_msg_id,
                            "response_metadata": {**m.response_metadata, META_KEY: meta},
                        }
                    )
                )
            title = (await self.store.aget_conversation(session_id, user)).title
            await self.store.history(new_id, user).aadd_messages(copies)
            try:
                await self.store.arename(new_id, user, title)
            except ValueError:
                pass
        await self.store.adelete(session_id, user)
        return new_id, mapping

    async def saved(self, limit_s: float = 3.0) -> None:
        """Wait (at most `limit_s`) for the background saves of stopped turns."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=limit_s)

    # --- shutdown ----------------------------------------------------------------------------
    async def drain(self, grace_s: float) -> None:
        """Let running answers finish for up to `grace_s`, then stop them (their partial text is saved)."""
        if self.active:
            await asyncio.wait(list(self.active), timeout=grace_s)
        for task in list(self.active):
            task.cancel()
        if self._background or self.active:
            await asyncio.wait([*self._background, *self.active], timeout=5)
