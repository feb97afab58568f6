"""Durable chat memory: pick a store from settings; the graph only sees the contract in `contract`.

Store modules are imported lazily so an SQLite deployment never imports the Firestore client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from graph.memory.contract import (
    META_KEY,
    AccessDenied,
    ChatHistory,
    Conversation,
    ConversationList,
    ConversationNotFound,
    ConversationStore,
    MemoryError_,
    MemoryUnavailable,
    Page,
    StoreStats,
)

if TYPE_CHECKING:
    from graph.settings import Settings

__all__ = [
    "META_KEY",
    "AccessDenied",
    "ChatHistory",
    "Conversation",
    "ConversationList",
    "ConversationNotFound",
    "ConversationStore",
    "MemoryError_",
    "MemoryUnavailable",
    "Page",
    "StoreStats",
    "make_store",
]


def make_store(settings: Settings) -> ConversationStore:
    """The store `settings.memory` names. No I/O: files and clients open on first use.

    Firestore talks to the emulator when `FIRESTORE_EMULATOR_HOST` is set (the client library reads it).
    `firestore_legacy_owner` says who may open unowned documents (see `graph.memory.firestore`).
    """
    if settings.memory == "sqlite":
        from graph.memory.sqlite import SQLiteConversationStore

        return SQLiteConversationStore(settings.sqlite_path, ttl_days=settings.history_ttl_days)
    if settings.memory == "firestore":
        from graph.memory.firestore import FirestoreConversationStore

        return FirestoreConversationStore(
            project=settings.firestore_project,
            database=settings.firestore_database,
            collection=settings.firestore_collection,
            ttl_days=settings.history_ttl_days,
            legacy_owner=settings.firestore_legacy_owner,
            timeout=settings.memory_timeout_s,
        )
    raise ValueError(f"unknown memory store {settings.memory!r}")
