"""Input checks of one turn, run by `load_history`: the ids and the system prompt before any I/O, the
new messages once the history is loaded (they are the input minus what memory already holds), so
nothing refused ever reaches a model or is written.

What the graph refuses, with `InvalidInput` (a `ValueError`) whose text says why:

- a turn without a new message, or whose last new message is not the user's (a system prompt goes in
  `system_prompt`; history is loaded from memory, never passed in), or any `system`/`tool` message;
- a user message that is empty or only whitespace;
- text that is not valid Unicode (a lone UTF-16 surrogate such as "\\ud800": no store can encode it);
- a user message over `MAX_MESSAGE_BYTES` of UTF-8 (it must fit one Firestore document, 1 MiB, with
  its metadata; both stores then accept the same messages);
- a session id that is not valid for every store (empty, over 256 characters, control characters, `/`,
  `.`/`..`, `__name__`), and an empty or invalid user id.

Everything else is plain user text: stored and read back exactly as sent (no stripping, no escaping):
control characters, any Unicode, and strings that look like chat-template markers or serialized
messages. Answers are cleaned of lone surrogates (`clean_text`) so a backend cannot make a turn unsavable.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.messages import BaseMessage

MAX_MESSAGE_BYTES = 1_000_000
MAX_SESSION_ID_CHARS = 256
ALLOWED_TYPES = ("human", "ai")  # ai: earlier answers a checkpointer keeps in the state (never re-saved)


class InvalidInput(ValueError):
    """The turn was refused before any model call or store access; the message says why."""


def _strings(value: Any) -> Iterator[str]:
    """Every string in a message content (a str, or a list of blocks)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def _check_unicode(text: str, what: str) -> int:
    """UTF-8 size of `text`; `InvalidInput` naming the first lone surrogate."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        raise InvalidInput(
            f"{what} is not valid Unicode: a lone surrogate U+{code:04X} at position {exc.start} "
            "(send UTF-8 text)"
        ) from None


def _is_empty(message: BaseMessage) -> bool:
    """No text but whitespace, and no non-text block (an image, a file)."""
    content = message.content
    if isinstance(content, str):
        return not content.strip()
    for block in content:
        if isinstance(block, str) and block.strip():
            return False
        if isinstance(block, dict) and (block.get("type") != "text" or str(block.get("text", "")).strip()):
            return False
    return True


def check_new_messages(messages: Sequence[BaseMessage]) -> None:
    """This turn's new messages (not yet in memory): see the module docstring."""
    if not messages:
        raise InvalidInput("no new message: `messages` must hold this turn's user message")
    for m in messages:
        if m.type not in ALLOWED_TYPES:
            raise InvalidInput(
                f"a {m.type!r} message cannot be sent: only user messages are accepted "
                "(put a system prompt in `system_prompt`; history is loaded from memory)"
            )
    if messages[-1].type != "human":
        raise InvalidInput(f"the last message of a turn must be the user's, not {messages[-1].type!r}")
    for m in messages:
        if m.type != "human":
            continue
        size = sum(_check_unicode(s, "the message") for s in _strings(m.content))
        if m.id is not None:
            _check_unicode(str(m.id), "the message id")
        if _is_empty(m):
            raise InvalidInput("the message is empty")
        if size > MAX_MESSAGE_BYTES:
            raise InvalidInput(
                f"the message is {size:,} bytes long; the limit is {MAX_MESSAGE_BYTES:,} (UTF-8)"
            )


def check_system_prompt(system_prompt: str | None) -> None:
    if system_prompt:
        _check_unicode(system_prompt, "the system prompt")


def check_id(value: str, what: str) -> str:
    """A session or user id valid for every store (SQLite key, Firestore document id, log line)."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"the {what} must be a non-empty string")
    _check_unicode(value, f"the {what}")
    if len(value) > MAX_SESSION_ID_CHARS:
        raise InvalidInput(f"the {what} is {len(value)} characters long; the limit is {MAX_SESSION_ID_CHARS}")
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise InvalidInput(f"the {what} must not contain control characters")
    return value


def check_session_id(session_id: str) -> str:
    check_id(session_id, "session id")
    if (
        "/" in session_id
        or session_id in (".", "..")
        or (session_id.startswith("__") and session_id.endswith("__"))
    ):
        raise InvalidInput("the session id must not contain '/', be '.' or '..', or look like '__name__'")
    return session_id


def clean_text(text: str) -> str:
    """`text` as valid Unicode: surrogate pairs joined, lone surrogates replaced by U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
