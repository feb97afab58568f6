"""The memory contract every store implements (SQLite embedded default, Firestore in the cloud).

A store hands out one `ChatHistory` per (session, user) and answers the conversations API; the graph and
the ways in only ever talk to these two abstractions, so swapping stores is a settings change. This
module holds interfaces, errors and records only: how messages are encoded lives in `codec`, which this
module does not import.

Messages read back equal the messages written (same type, content, id, metadata): the store's own
bookkeeping (sequence numbers, timestamps) never appears in a message. The only place a position shows
is `Page.next_before`, the cursor for the page before.

Message metadata convention: AI messages carry the graph's facts in `response_metadata[META_KEY]`
(`backend`, `route_reason`, `latency_ms`, `ttft_ms`, `model`, ...) and token counts in
`usage_metadata`; stores also keep those as queryable columns/fields beside the message.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import BaseMessage

from graph.bridge import run_sync

META_KEY = "hybrid_chat"
"""Key of the graph's per-message metadata inside `response_metadata`."""


class MemoryError_(RuntimeError):
    """Base class of memory errors (named with a trailing underscore: `MemoryError` is a builtin)."""


class MemoryUnavailable(MemoryError_):
    """The store cannot be reached right now (network down, emulator stopped, disk full)."""


class ConversationNotFound(MemoryError_, LookupError):
    """The user has no conversation with that id (another user's of the same id is not theirs)."""


class AccessDenied(MemoryError_, PermissionError):
    """A conversation the caller may not open, raised instead of returning anything of it. Conversation
    ids are scoped to their owner, so another user's conversation is never met (it is "not found"):
    this is raised only by Firestore for a session without an owner (the drop-in's, or written by the
    `langchain-google-firestore` package) that `legacy_owner` does not open to this user, and to a
    drop-in history (`user_id=None`) opening a user's session."""


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
    """One page of a conversation, oldest first; `next_before` pages further back (None: no more).

    `next_before` is an opaque position: pass it back as `aget_page(before=...)`, do not interpret it.
    """

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

    Construction never touches the network. A conversation is named by its owner and its id together:
    `history("s1", "alice")` and `history("s1", "bob")` are two conversations, and neither user can read,
    change or claim the other's, nor learn that it exists. So a client-chosen id cannot be taken by
    someone else before its owner uses it. A conversation that does not exist yet reads as empty and is
    created (owned by `user_id`) by its first write.

    A message's `id` is its idempotency key: adding a message whose id is already stored is a no-op, so a
    retried save never duplicates (the graph's messages always carry ids). If a stored message has the
    same id but a different role or text, the new one is a different message whose id collided: it gets
    a fresh UUID (set on the object passed in) instead of being dropped. A message without an id is
    stored as it is and reads back without one, as in any LangChain history: it cannot be deduplicated
    nor named by `atruncate`.

    The async methods are the implementation. The sync ones (`messages`, `add_messages`, `clear`,
    `truncate`, `get_window`) run them through `graph.bridge.run_sync` unless a store has a native sync
    core (SQLite), so there is one implementation of each operation.
    """

    session_id: str
    user_id: str | None

    # --- async: the implementation -----------------------------------------------------------
    @abc.abstractmethod
    async def aget_messages(self) -> list[BaseMessage]:
        """Every message, oldest first (cost grows with the conversation: prefer a window or a page)."""

    @abc.abstractmethod
    async def aget_window(
        self, max_messages: int | None = None, *, max_tokens: int | None = None
    ) -> list[BaseMessage]:
        """The newest `max_messages` messages (None: all), oldest first: what the prompt starts from.

        Cost grows with the window, not with the conversation. Trimming to a token budget (and not
        starting on an orphan answer) is the caller's job (`trim_messages`). `max_tokens` is
        deprecated: when given, stores warn and apply `codec.trim_to_tokens` for old callers.
        """

    @abc.abstractmethod
    async def aget_page(self, before: int | None = None, limit: int = 50) -> Page:
        """Up to `limit` messages before the position `before` (None: the newest), oldest first."""

    @abc.abstractmethod
    async def aadd_messages(self, messages: Sequence[BaseMessage], *, model: str | None = None) -> None:
        """Append atomically, in order, after whatever other writers appended (no overwrite, no loss).

        `model` records the last model used on the conversation header. The title is derived from the
        first human message when the conversation is created.
        """

    @abc.abstractmethod
    async def atruncate(self, from_message_id: str) -> int:
        """Delete the stored message with id `from_message_id` and every later one; return how many.

        What regenerate and edit need: the conversation, its title, owner and creation time stay; the
        message count follows. Messages appended concurrently after the call started are kept.
        An id that is not stored (never saved, or already truncated) deletes nothing and returns 0, so
        a retried truncate is a no-op, like a retried delete.
        """

    @abc.abstractmethod
    async def aclear(self) -> None:
        """Delete the conversation, header included; the next write starts it afresh."""

    # --- sync: the same operations through the bridge ----------------------------------------
    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """Every message, oldest first (sync; `BaseChatMessageHistory`'s interface)."""
        return run_sync(self.aget_messages())

    def add_messages(self, messages: Sequence[BaseMessage], *, model: str | None = None) -> None:
        """Sync `aadd_messages`."""
        run_sync(self.aadd_messages(messages, model=model))

    def clear(self) -> None:
        """Sync `aclear`."""
        run_sync(self.aclear())

    def truncate(self, from_message_id: str) -> int:
        """Sync `atruncate`."""
        return run_sync(self.atruncate(from_message_id))

    def get_window(
        self, max_messages: int | None = None, *, max_tokens: int | None = None
    ) -> list[BaseMessage]:
        """Sync `aget_window`."""
        return run_sync(self.aget_window(max_messages, max_tokens=max_tokens))


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
        """The header; `ConversationNotFound` if the user has none of that id (whoever else has one)."""

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
