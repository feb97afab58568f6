"""The memory contract shared by every store (SQLite embedded default, Firestore in the cloud).

A store hands out one `ChatHistory` per (session, user) and answers the conversations API.
The graph only ever talks to these two abstractions, so swapping stores is a settings change.

The helpers at the bottom (serialization, window selection, titles, cursors, the legacy format) are
shared by both stores so that they implement exactly the same semantics, and one test suite checks both.

Message metadata convention
---------------------------
AI messages carry the graph's facts in `response_metadata["hybrid_chat"]` (`backend`, `route_reason`,
`latency_ms`, `ttft_ms`, `model`, ...) and token counts in `usage_metadata`. Stores persist the whole
message and, as separate queryable columns/fields, `backend`, `route_reason`, `latency_ms`, `ttft_ms`,
`model`, `input_tokens`, `output_tokens`. On read, every message (human ones too) gets
`response_metadata["hybrid_chat"]["seq"]` (its position in the conversation) and `["stored_at"]` (ISO
8601, UTC) added, so the UI can show timestamps without another query.
"""

from __future__ import annotations

import abc
import base64
import binascii
import json
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    BaseMessageChunk,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    messages_from_dict,
)
from langchain_core.messages.utils import message_chunk_to_message

META_KEY = "hybrid_chat"
"""Key of the graph's per-message metadata inside `response_metadata`."""

META_FIELDS = ("backend", "route_reason", "latency_ms", "ttft_ms", "model")
"""Metadata stored as their own columns/fields besides the serialized message (queryable, readable)."""

DEFAULT_TITLE = "New conversation"
TITLE_MAX_CHARS = 200
AUTO_TITLE_CHARS = 60

TokenCounter = Callable[[BaseMessage], int]


class MemoryError_(RuntimeError):
    """Base class of memory errors (named with a trailing underscore: `MemoryError` is a builtin)."""


class MemoryUnavailable(MemoryError_):
    """The store cannot be reached right now (network down, emulator stopped, disk full)."""


class ConversationNotFound(MemoryError_, LookupError):
    """No conversation with that id exists."""


class AccessDenied(MemoryError_, PermissionError):
    """The conversation belongs to another user. Raised instead of returning anything of it."""


@dataclass(frozen=True)
class Conversation:
    """A conversation's header, as the sidebar lists it."""

    session_id: str
    user_id: str
    title: str
    created_at: datetime
    updated_at: datetime
    message_count: int
    last_model: str | None = None


@dataclass(frozen=True)
class Page:
    """One page of a conversation, oldest first; `next_before` pages further back (None: no more)."""

    messages: list[BaseMessage]
    next_before: int | None


@dataclass(frozen=True)
class ConversationList:
    """One page of a user's conversations, newest first; pass `next_cursor` back for the next page."""

    conversations: list[Conversation]
    next_cursor: str | None


@dataclass
class StoreStats:
    """Counters a store keeps so tests and metrics can see what a read cost (rows/documents read)."""

    docs_read: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class ChatHistory(BaseChatMessageHistory, abc.ABC):
    """One conversation's messages, owned by one user.

    Construction never touches the network. Every read and write checks ownership: a conversation
    created by user A raises `AccessDenied` for user B. A conversation that does not exist yet reads
    as empty and is created (owned by `user_id`) by its first write.

    Messages are stored one per row/document with a sequence number. A message's `id` is its
    idempotency key: adding a message whose id is already stored is a no-op, so a retried save never
    duplicates. Messages without an id get one (a UUID) assigned before they are written, and the id is
    set on the message object passed in (so retrying with the same objects is safe). If a stored message
    has the same id but a different role or content, the new one is a different message whose id
    collided: it gets a fresh UUID instead of being dropped.

    `clear()`/`aclear()` delete the conversation (header included); the next write starts it afresh.
    """

    session_id: str
    user_id: str

    # --- reads -------------------------------------------------------------------------------
    @abc.abstractmethod
    async def aget_window(
        self, max_messages: int | None = None, max_tokens: int | None = None
    ) -> list[BaseMessage]:
        """The most recent messages that fit both limits, oldest first (what the prompt needs).

        Cost grows with the window, not with the conversation's length. Tokens are estimated with
        `estimate_tokens` unless the store was given a counter. A window never starts with an AI
        message cut off from its question: if the oldest message kept is an AI answer, it is dropped.
        """

    @abc.abstractmethod
    async def aget_page(self, before: int | None = None, limit: int = 50) -> Page:
        """Up to `limit` messages with sequence number < `before` (None: the newest), oldest first."""

    def get_window(self, max_messages: int | None = None, max_tokens: int | None = None) -> list[BaseMessage]:
        """Sync twin of `aget_window`. This default reads everything; stores override it."""
        return select_window(reversed(self.messages), max_messages, max_tokens, estimate_tokens)

    # --- writes ------------------------------------------------------------------------------
    @abc.abstractmethod
    async def aadd_messages(self, messages: Sequence[BaseMessage], *, model: str | None = None) -> None:
        """Append atomically, in order, after whatever other writers appended (no overwrite, no loss).

        `model` records the last model used on the conversation header. The title is derived from the
        first human message when the conversation is created.
        """

    # BaseChatMessageHistory requires: `messages` (sync property), `add_messages` (sync),
    # `clear` (sync), and provides async defaults that run the sync ones in a thread. Stores override
    # `aget_messages`/`aclear` with truly async versions.


class ConversationStore(abc.ABC):
    """Factory of histories plus the conversations API (listing, rename, delete, health)."""

    stats: StoreStats

    @abc.abstractmethod
    def history(self, session_id: str, user_id: str) -> ChatHistory:
        """A history handle; cheap, no I/O."""

    @abc.abstractmethod
    async def alist_conversations(
        self, user_id: str, limit: int = 20, cursor: str | None = None
    ) -> ConversationList:
        """The user's conversations, most recently updated first. Never another user's."""

    @abc.abstractmethod
    async def aget_conversation(self, session_id: str, user_id: str) -> Conversation:
        """The header; `ConversationNotFound` if absent, `AccessDenied` if owned by someone else."""

    @abc.abstractmethod
    async def arename(self, session_id: str, user_id: str, title: str) -> None:
        """Set the title (stripped, non-empty, at most 200 chars: else `ValueError`).

        `ConversationNotFound` if absent. Renaming does not move the conversation in the listing.
        """

    @abc.abstractmethod
    async def adelete(self, session_id: str, user_id: str) -> None:
        """Delete the conversation and all its messages (in batches).

        Deleting a conversation that does not exist is a no-op, so a retried delete is safe.
        """

    @abc.abstractmethod
    async def aping(self) -> None:
        """Cheap reachability check for /readyz; raises `MemoryUnavailable` when down."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release clients and connections."""


# ---------------------------------------------------------------------------------------------
# Shared helpers: both stores use these so their semantics cannot drift apart.
# ---------------------------------------------------------------------------------------------


def message_text(message: BaseMessage) -> str:
    """The plain text of a message (string content, or the text blocks of a multimodal content)."""
    content = message.content
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and isinstance(block.get("text"), str):
            parts.append(block["text"])
    return "\n".join(parts)


def estimate_tokens(message: BaseMessage) -> int:
    """A cheap, deterministic token estimate (~4 characters a token, plus per-message overhead)."""
    return len(message_text(message)) // 4 + 4


def utcnow() -> datetime:
    """Aware UTC now (the default clock of the stores; tests inject another)."""
    return datetime.now(UTC)


def normalize_message(message: BaseMessage) -> BaseMessage:
    """Chunks (from streaming) are stored as the full message type they stand for."""
    if isinstance(message, BaseMessageChunk):
        return message_chunk_to_message(message)
    return message


def ensure_ids(messages: Sequence[BaseMessage]) -> None:
    """Give every message without an id a UUID, on the object itself (retries then reuse it)."""
    for m in messages:
        if not m.id:
            m.id = str(uuid.uuid4())


def message_fields(message: BaseMessage) -> dict[str, Any]:
    """The per-message columns/fields stored beside the serialized message."""
    meta = message.response_metadata.get(META_KEY) if message.response_metadata else None
    meta = meta if isinstance(meta, dict) else {}
    usage = getattr(message, "usage_metadata", None) or {}
    out: dict[str, Any] = {k: meta.get(k) for k in META_FIELDS}
    out["input_tokens"] = usage.get("input_tokens")
    out["output_tokens"] = usage.get("output_tokens")
    return out


_CLASSES: dict[str, type[BaseMessage]] = {
    "human": HumanMessage,
    "ai": AIMessage,
    "system": SystemMessage,
    "tool": ToolMessage,
    "chat": ChatMessage,
}


def serialize_message(message: BaseMessage) -> str:
    """JSON of the message's `model_dump` (it carries `type`), string content left out: it is stored
    once, in its own column/field, so a message costs its size once (Firestore's 1 MiB per document).
    Read-side annotations (`seq`, `stored_at`) are not stored: they describe where it is stored."""
    d = message.model_dump()
    if isinstance(message.content, str):
        d["content"] = None
    meta = d.get("response_metadata", {}).get(META_KEY)
    if isinstance(meta, dict) and ("seq" in meta or "stored_at" in meta):
        meta = {k: v for k, v in meta.items() if k not in ("seq", "stored_at")}
        if meta:
            d["response_metadata"][META_KEY] = meta
        else:
            del d["response_metadata"][META_KEY]
    return json.dumps(d, ensure_ascii=False, separators=(",", ":"), default=str)


def annotate(message: BaseMessage, seq: int, stored_at: datetime | None) -> BaseMessage:
    """Add the read-side `seq`/`stored_at` to `response_metadata["hybrid_chat"]` (module docstring)."""
    meta = dict(message.response_metadata.get(META_KEY) or {})
    meta["seq"] = seq
    if stored_at is not None:
        meta["stored_at"] = stored_at.astimezone(UTC).isoformat()
    message.response_metadata[META_KEY] = meta
    return message


def deserialize_message(raw: str, content: str, seq: int, stored_at: datetime | None) -> BaseMessage:
    """Inverse of `serialize_message`, annotated with `seq` and `stored_at`."""
    d = json.loads(raw)
    if d.get("content") is None:
        d["content"] = content
    cls = _CLASSES.get(d.get("type", ""))
    message = cls(**d) if cls is not None else messages_from_dict([{"type": d["type"], "data": d}])[0]
    return annotate(message, seq, stored_at)


def same_message(role_a: str, content_a: str, role_b: str, content_b: str) -> bool:
    """Whether an id collision is a retry of the same message (same role and text) or a real clash."""
    return role_a == role_b and content_a == content_b


def dedupe_messages(messages: Sequence[BaseMessage], stored: dict[str, tuple[str, str]]) -> list[BaseMessage]:
    """The messages still to write, given `stored` = {id: (role, text)} of those already stored.

    Same id and same role+text: a retry, skipped. Same id, different message: a collision, the new
    message gets a fresh UUID (on the object). A repeated id within the batch is written once.
    """
    new: list[BaseMessage] = []
    seen: set[str] = set()
    for m in messages:
        mid = str(m.id)
        if mid in stored:
            role, content = stored[mid]
            if same_message(role, content, m.type, message_text(m)):
                continue
            m.id = mid = str(uuid.uuid4())
        if mid in seen:
            continue
        seen.add(mid)
        new.append(m)
    return new


def derive_title(messages: Iterable[BaseMessage]) -> str | None:
    """Title from the first human message: whitespace collapsed, cut at a word near 60 chars, with '…'."""
    for m in messages:
        if m.type == "human":
            text = " ".join(message_text(m).split())
            if not text:
                continue
            if len(text) <= AUTO_TITLE_CHARS:
                return text
            cut = text[:AUTO_TITLE_CHARS]
            space = cut.rfind(" ")
            if space >= AUTO_TITLE_CHARS // 2:
                cut = cut[:space]
            return cut.rstrip(" ,.;:-") + "…"
    return None


def validate_title(title: str) -> str:
    """Rename validation: stripped, non-empty, at most 200 characters, no control characters."""
    if not isinstance(title, str):
        raise ValueError("title must be a string")
    t = " ".join(title.split())
    if not t:
        raise ValueError("title must not be empty")
    if len(t) > TITLE_MAX_CHARS:
        raise ValueError(f"title must be at most {TITLE_MAX_CHARS} characters")
    return t


def select_window(
    newest_first: Iterable[BaseMessage],
    max_messages: int | None,
    max_tokens: int | None,
    counter: TokenCounter,
) -> list[BaseMessage]:
    """Take messages newest first while both limits hold; return them oldest first, no orphan answer.

    Consumes the iterable lazily, so a store can feed it a cursor and stop reading once full.
    """
    if max_messages is not None and max_messages <= 0:
        return []
    kept: list[BaseMessage] = []
    used = 0
    for m in newest_first:
        if max_messages is not None and len(kept) >= max_messages:
            break
        if max_tokens is not None:
            cost = counter(m)
            if used + cost > max_tokens:
                break
            used += cost
        kept.append(m)
    kept.reverse()
    # An answer (or tool result) whose question fell out of the window would confuse the model.
    while kept and kept[0].type in ("ai", "tool"):
        kept.pop(0)
    return kept


def encode_cursor(updated_at: datetime, session_id: str) -> str:
    """Opaque listing cursor: the (updated_at, session_id) of the last conversation of a page."""
    raw = json.dumps([updated_at.astimezone(UTC).isoformat(), session_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Inverse of `encode_cursor`; `ValueError` on anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        ts, sid = json.loads(raw)
        return datetime.fromisoformat(ts), str(sid)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ValueError("invalid cursor") from exc


def legacy_message(item: bytes | str, index: int) -> BaseMessage:
    """One item of the `langchain-google-firestore` `messages` array (bytes or str of JSON).

    The package stores `{"content": ..., "type": "human", ...}` (a flattened `model_dump`), while
    `messages_from_dict` wants `{"type": ..., "data": {...}}`. Items without an id get a stable one
    (`legacy-000042`) so reading before and after migration yields the same ids.
    """
    text = item.decode("utf-8") if isinstance(item, bytes | bytearray) else str(item)
    d = json.loads(text)
    if "data" in d and "type" in d and isinstance(d["data"], dict):
        d = {**d["data"], "type": d["type"]}
    message = messages_from_dict([{"type": d["type"], "data": d}])[0]
    if not message.id:
        message.id = f"legacy-{index:06d}"
    return message


_SAFE_ID = re.compile(r"^[A-Za-z0-9_.:\-~+=@]{1,400}$")


def is_simple_id(message_id: str) -> bool:
    """Whether an id can be used verbatim as a key (Firestore document id rules plus a length cap)."""
    return (
        bool(_SAFE_ID.match(message_id))
        and message_id not in (".", "..")
        and not (message_id.startswith("__") and message_id.endswith("__"))
    )
