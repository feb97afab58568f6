"""How both stores encode what they keep: messages, storage keys, dedupe, titles, cursors.

Shared so that the SQLite and Firestore stores implement exactly the same semantics and one test suite
checks both. Pure functions, no I/O. Where langchain-core already does a job (`message.text`,
`trim_messages`, `count_tokens_approximately`) it is used rather than a helper of ours.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
import warnings
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    BaseMessageChunk,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    messages_from_dict,
    trim_messages,
)
from langchain_core.messages.utils import count_tokens_approximately, message_chunk_to_message

from graph.memory.contract import META_KEY

META_FIELDS = ("backend", "route_reason", "latency_ms", "ttft_ms", "model")
"""Metadata stored as their own columns/fields besides the serialized message (queryable, readable)."""

DEFAULT_TITLE = "New conversation"
TITLE_MAX_CHARS = 200
AUTO_TITLE_CHARS = 60


def message_text(message: BaseMessage) -> str:
    """The plain text of a message as a `str` (langchain-core's `message.text`, which joins the text
    blocks of a multimodal content): a function, so it can be mapped, and a plain `str` to store."""
    return str(message.text)


def utcnow() -> datetime:
    """Aware UTC now (the default clock of the stores; tests inject another)."""
    return datetime.now(UTC)


def normalize_message(message: BaseMessage) -> BaseMessage:
    """Chunks (from streaming) are stored as the full message type they stand for."""
    if isinstance(message, BaseMessageChunk):
        return message_chunk_to_message(message)
    return message


# --- ids and dedupe ------------------------------------------------------------------------------
def new_key() -> str:
    """A storage key for a message without an id (never shown: the message reads back id-less)."""
    return f"k-{uuid.uuid4().hex}"


def stored_ids(messages: Sequence[BaseMessage]) -> list[str]:
    """The ids to look up before writing `messages` (those without an id cannot be stored already)."""
    return list(dict.fromkeys(str(m.id) for m in messages if m.id))


def plan_keys(
    messages: Sequence[BaseMessage], stored: dict[str, tuple[str, str]]
) -> list[tuple[str, BaseMessage]]:
    """(storage key, message) for each message still to write, given `stored` = {id: (role, text)}.

    Same id and same role+text: a retry, skipped. Same id, different message: a collision, the new
    message gets a fresh UUID (on the object, so a retry reuses it). A repeated id within the batch is
    written once. A message without an id is always written, under a fresh key.
    """
    out: list[tuple[str, BaseMessage]] = []
    seen: set[str] = set()
    for m in messages:
        if not m.id:
            out.append((new_key(), m))
            continue
        mid = str(m.id)
        if mid in stored:
            role, text = stored[mid]
            if role == m.type and text == message_text(m):
                continue
            m.id = mid = str(uuid.uuid4())
        if mid in seen:
            continue
        seen.add(mid)
        out.append((mid, m))
    return out


# --- serialisation -------------------------------------------------------------------------------
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
    once, in its own column/field, so a message costs its size once (Firestore's 1 MiB per document)."""
    d = message.model_dump()
    if isinstance(message.content, str):
        d["content"] = None
    return json.dumps(d, ensure_ascii=False, separators=(",", ":"), default=str)


def deserialize_message(raw: str, content: str) -> BaseMessage:
    """Inverse of `serialize_message`: the message exactly as it was written."""
    d = json.loads(raw)
    if d.get("content") is None:
        d["content"] = content
    cls = _CLASSES.get(d.get("type", ""))
    return cls(**d) if cls is not None else messages_from_dict([{"type": d["type"], "data": d}])[0]


# --- window --------------------------------------------------------------------------------------
def trim_to_tokens(messages: list[BaseMessage], max_tokens: int) -> list[BaseMessage]:
    """The deprecated `aget_window(max_tokens=...)`: the newest messages within the budget (estimated
    by `count_tokens_approximately`), starting on a question. Trimming belongs to the caller."""
    warnings.warn(
        "aget_window(max_tokens=...) is deprecated: trim the window with "
        "langchain_core.messages.trim_messages in the caller",
        DeprecationWarning,
        stacklevel=3,
    )
    return trim_messages(
        messages,
        max_tokens=max_tokens,
        token_counter=count_tokens_approximately,
        strategy="last",
        start_on="human",
        include_system=False,
    )


# --- titles --------------------------------------------------------------------------------------
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


# --- listing cursors -----------------------------------------------------------------------------
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
