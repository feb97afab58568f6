"""`ChatClient`: the one façade every way in uses (the page, `/api/chat`, the CLI, the eval runner).

It owns the compiled graph and its services, and is the one place that turns the graph's stream into
deltas and a final `Done` whose `answer` has typed fields (who was asked, who answered, fallback,
interrupted, finish reason, timings, tokens): no caller parses prose to learn what happened.
Conversations are listed, paged, renamed, deleted and truncated (regenerate, edit) through it, always
for one user: conversation ids are scoped to their owner, so another user's conversation of the same id
is not theirs to find (`ConversationNotFound`, as for an id nobody uses).

`stream_turn` never raises for a failed turn: a refused message, a store outage or a conversation the
store refuses becomes a `Done(kind="failed")` with the reason in `error`. Leaving its iteration early
(Stop, a closed tab, a client gone) cancels the graph and with it the backend's request; the graph then
saves the question and what streamed, marked stopped.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage

from graph.context import Services
from graph.graph import ChatGraph, build_graph
from graph.memory.contract import (
    META_KEY,
    AccessDenied,
    ConversationList,
    ConversationNotFound,
    MemoryUnavailable,
)
from graph.settings import Settings, get_settings
from graph.validation import InvalidInput

log = logging.getLogger(__name__)

MODELS = ("auto", "gemma", "gemini")  # always there; a router may offer more (see `ChatClient.models`)
HISTORY_PAGE = 100
HISTORY_MAX_MESSAGES = 5000
REFUSED = (AccessDenied, MemoryUnavailable, ConversationNotFound, InvalidInput)


@dataclass(frozen=True)
class Answer:
    """What happened in a turn, as typed fields (from the answer's `response_metadata["hybrid_chat"]`)."""

    text: str
    id: str | None = None
    backend: str | None = None  # who answered (or whose failure the note reports)
    backend_label: str | None = None
    requested_backend: str | None = None  # who the route picked first
    fallback: bool = False
    route_reason: str | None = None
    interrupted: str | None = None  # why the answer stops early ("stopped", a timeout, ...)
    finish_reason: str | None = None
    error: str | None = None  # set when no backend answered: the kind of failure
    ttft_ms: float | None = None
    latency_ms: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    tokens_per_s: float | None = None

    @classmethod
    def of(cls, message: BaseMessage) -> Answer:
        meta = dict(message.response_metadata.get(META_KEY) or {})
        names = set(cls.__dataclass_fields__) - {"text", "id"}
        return cls(text=message.text, id=message.id, **{k: meta[k] for k in names if meta.get(k) is not None})


@dataclass
class Delta:
    """The answer so far (whole text, not just the new piece)."""

    text: str


@dataclass
class Done:
    """The end of a turn. `kind`: answer | backend_error (no backend answered: `answer` is the note) |
    failed (refused before any model: `error` says why, as an exception)."""

    kind: str
    text: str
    answer: Answer | None = None
    human_id: str | None = None
    saved: bool = False  # the question and the answer are in memory
    error: BaseException | None = None
    save_error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # the answer's raw metadata (for display)


class ChatClient:
    """The façade over the compiled graph and its services (see the module docstring)."""

    def __init__(self, services: Services, graph: ChatGraph | None = None) -> None:
        self.services = services
        self.graph = graph or build_graph(services=services)
        self.settings: Settings = services.settings
        self.store = services.store

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **deps: Any) -> ChatClient:
        """`deps`: any of `store`, `backends`, `router` to hand in instead of the settings' defaults."""
        return cls(Services.build(settings or get_settings(), **deps))

    @property
    def models(self) -> tuple[str, ...]:
        """What a caller may ask for: the router's policies (`MODELS` first, then any other by name)."""
        names = self.services.router.policies
        return tuple(m for m in MODELS if m in names) + tuple(sorted(set(names) - set(MODELS)))

    # --- one turn ----------------------------------------------------------------------------
    async def stream_turn(
        self,
        user: str,
        session_id: str | None,
        text: str | Sequence[BaseMessage],
        options: dict[str, Any] | None = None,
        *,
        human_id: str | None = None,
        stateless: bool = False,
        caller_label: str | None = None,
    ) -> AsyncIterator[Delta | Done]:
        """Stream one turn: `Delta`s at most every `stream_interval_ms` (the first at once), then `Done`.

        `text` is this turn's message; or, with `stateless=True`, the whole conversation as messages (an
        OpenAI client's `messages`), in which case memory is neither read nor written. `caller_label`:
        who the caller says is asking (an OpenAI client's `user`), written with the turn's log line."""
        if isinstance(text, str):
            sent: list[BaseMessage] = [HumanMessage(content=text, id=human_id or str(uuid.uuid4()))]
        else:
            sent = [m if m.id else m.model_copy(update={"id": str(uuid.uuid4())}) for m in text]
        human = next((m for m in reversed(sent) if m.type == "human"), sent[-1])
        payload = {"messages": sent, **{k: v for k, v in (options or {}).items() if v is not None}}
        config = {"configurable": {"session_id": session_id or uuid.uuid4().hex}}
        context: dict[str, Any] = {"user_id": user, **({"stateless": True} if stateless else {})}
        if caller_label:
            context["caller_label"] = caller_label
        interval = self.settings.stream_interval_ms / 1000
        last_yield, shown, streamed = float("-inf"), 0, ""
        answer: AIMessage | None = None
        saved, save_error = False, None
        stream = self.graph.astream(
            payload, config=config, context=context, stream_mode=["messages", "updates"]
        )
        try:
            # aclosing: leaving early closes the graph's stream at once, which cancels the node
            # running the model and with it the backend's HTTP request.
            async with contextlib.aclosing(stream):
                async for mode, data in stream:
                    if mode == "messages":
                        chunk, meta = data
                        if meta.get("langgraph_node") == "call_model" and isinstance(chunk, AIMessageChunk):
                            piece = chunk.text
                            if not piece:
                                continue
                            streamed += piece
                            now = time.perf_counter()
                            # The first piece at once; then at most one update per interval: every
                            # update costs a page far more than a token.
                            if now - last_yield >= interval or shown == 0:
                                last_yield, shown = now, len(streamed)
                                yield Delta(streamed)
                        continue
                    for node, update in (data or {}).items():
                        update = update or {}
                        if node == "call_model":
                            answer = next((m for m in update.get("messages", []) if m.type == "ai"), None)
                        elif node == "save_turn":
                            saved, save_error = True, update.get("error")
        except REFUSED as exc:
            log.warning("chat turn refused: %s", type(exc).__name__)
            yield Done("failed", str(exc), human_id=human.id, error=exc)
            return
        except Exception as exc:
            log.exception("chat turn failed")
            yield Done("failed", "The answer failed unexpectedly.", human_id=human.id, error=exc)
            return
        if answer is None:  # the graph ended without an answer: should not happen
            yield Done("failed", "No answer came back.", human_id=human.id, error=RuntimeError("no answer"))
            return
        if shown < len(streamed):  # the last pieces arrived within the interval: show them too
            yield Delta(streamed)
        typed = Answer.of(answer)
        yield Done(
            "backend_error" if typed.error else "answer",
            typed.text,
            answer=typed,
            human_id=human.id,
            saved=saved and not save_error,
            save_error=save_error,
            meta=dict(answer.response_metadata.get(META_KEY) or {}),
        )

    async def stopped_saved(self, human_id: str, limit_s: float = 5.0) -> bool:
        """Wait (at most `limit_s`) until the stopped turn that asked `human_id` is saved; False if not."""
        return await self.services.turns.stopped(human_id, limit_s)

    async def settle(self, limit_s: float = 3.0) -> None:
        """Wait (at most `limit_s`) for the background saves of stopped turns."""
        await self.services.turns.settle(limit_s)

    # --- conversations -----------------------------------------------------------------------
    async def check_owner(self, user: str, session_id: str) -> None:
        """`ConversationNotFound` unless `user` has a conversation `session_id` (`AccessDenied`: an unowned
        Firestore session the settings do not open to them)."""
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
        """The conversation, then its attachments (issue 15). A conversation already gone still has
        its user's attachment folder emptied: a retry after the files could not be deleted finishes
        the job (the folder is keyed by this user, so nobody else's files can be reached)."""
        try:
            await self.check_owner(user, session_id)
        except ConversationNotFound:
            await self._delete_attachments(user, session_id)
            return
        await self.store.adelete(session_id, user)
        await self._delete_attachments(user, session_id)

    async def _delete_attachments(self, user: str, session_id: str) -> None:
        from graph.nodes import _store_error, attachment_store

        try:
            await attachment_store(self.services).adelete_conversation(user, str(session_id))
        except Exception as exc:
            if _store_error(exc):
                log.error("deleting a conversation's attachments failed: %s", type(exc).__name__)
                raise MemoryUnavailable(f"the attachment store failed ({type(exc).__name__})") from exc
            raise

    async def truncate(self, user: str, session_id: str, from_message_id: str) -> int:
        """Forget the message `from_message_id` and every later one (regenerate, edit): the count removed."""
        try:
            await self.check_owner(user, session_id)
        except ConversationNotFound:
            return 0
        return await self.store.history(session_id, user).atruncate(str(from_message_id))

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.store.aclose()
