"""Transitional shim: the memory contract moved to `contract`, the helpers to `codec`.

Kept only while callers switch their imports; it is deleted once none imports it.
"""

from __future__ import annotations

from langchain_core.messages import BaseMessage

from graph.memory.codec import (  # noqa: F401
    DEFAULT_TITLE,
    derive_title,
    deserialize_message,
    message_fields,
    message_text,
    serialize_message,
    validate_title,
)
from graph.memory.contract import (  # noqa: F401
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


def estimate_tokens(message: BaseMessage) -> int:
    """The old estimate (~4 characters a token + 4); new code uses `count_tokens_approximately`."""
    return len(message_text(message)) // 4 + 4
