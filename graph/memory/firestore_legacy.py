"""Reading what the released `langchain-google-firestore` wrote (imported only when such a document is met).

That package (0.5.0) keeps a whole session in ONE document: a field `messages`, an array whose items are
the UTF-8 JSON of each message's flattened `model_dump` (`{"content": ..., "type": "human", ...}`), as
bytes, or as str with `encode_message=False`; there is no owner. `graph.memory.firestore` reads such a
document through this module and migrates it to its own layout on the next write.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from langchain_core.messages import BaseMessage, messages_from_dict

from graph.memory.codec import DEFAULT_TITLE, derive_title
from graph.memory.contract import Conversation, Page


def is_legacy(data: dict[str, Any]) -> bool:
    """Whether a session document is in the package's layout (a `messages` array in the document)."""
    return isinstance(data.get("messages"), list)


def legacy_message(item: bytes | str, index: int) -> BaseMessage:
    """One item of the `messages` array.

    `messages_from_dict` wants `{"type": ..., "data": {...}}`, so the flat dump is wrapped. Items without
    an id get a stable one (`legacy-000042`) so reading before and after migration yields the same ids
    (and regenerate/edit can name them).
    """
    text = item.decode("utf-8") if isinstance(item, bytes | bytearray) else str(item)
    d = json.loads(text)
    if "data" in d and "type" in d and isinstance(d["data"], dict):
        d = {**d["data"], "type": d["type"]}
    message = messages_from_dict([{"type": d["type"], "data": d}])[0]
    if not message.id:
        message.id = f"legacy-{index:06d}"
    return message


def legacy_messages(data: dict[str, Any]) -> list[BaseMessage]:
    """Every message of a legacy document, oldest first."""
    return [legacy_message(item, i) for i, item in enumerate(data["messages"])]


def legacy_page(messages: list[BaseMessage], before: int | None, limit: int) -> Page:
    """Paging over a legacy conversation (positions are array indexes), same contract as the query."""
    end = len(messages) if before is None else max(0, min(before, len(messages)))
    start = max(0, end - limit)
    return Page(list(messages[start:end]), start if start > 0 else None)


def legacy_conversation(
    session_id: str,
    user_id: str,
    data: dict[str, Any],
    messages: list[BaseMessage],
    created: datetime,
    updated: datetime,
) -> Conversation:
    """The header of a legacy document (it has none: the title is derived, times are the document's)."""
    title = data.get("title") or derive_title(messages) or DEFAULT_TITLE
    return Conversation(session_id, user_id, title, created, updated, len(messages))
