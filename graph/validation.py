"""Input checks of one turn, run by `load_history`: the ids and the system prompt before any I/O, the
new messages once the history is loaded (they are the input minus what memory already holds), so
nothing refused ever reaches a model or is written.

What the graph refuses, with `InvalidInput` (a `ValueError`) whose text says why:

- a turn without a new message, or whose last new message is not the user's (a system prompt goes in
  `system_prompt`; history is loaded from memory, never passed in), or any `system`/`tool` message;
- a user message that is empty or only whitespace;
- text that is not valid Unicode (a lone UTF-16 surrogate such as "\\ud800": no store can encode it);
- a user message whose text is over `MAX_MESSAGE_BYTES` of UTF-8 (it must fit one Firestore document,
  1 MiB, with its metadata; both stores then accept the same messages); attachments do not count here:
  they have their own limits and are stored apart;
- a session id that is not valid for every store (empty, over 256 characters, control characters, `/`,
  `.`/`..`, `__name__`), and an empty or invalid user id.

Attachments (images and PDFs in a user message's content, see `graph.attachments`), each checked from
its bytes, never from its name or declared type (`check_attachment`), with `AttachmentLimits`:

- the type is sniffed from the first bytes: PNG, JPEG, GIF, WebP images and PDF; anything else is refused
  naming what it looks like (a declared `image/png` that is a ZIP is a ZIP);
- over `max_bytes` decoded, or more than `max_count` in one message;
- an image that does not decode (truncated, corrupt), or whose width x height is over `max_pixels`
  (a decompression bomb: its header is read, its pixels never are, before the refusal);
- a PDF without its `%%EOF` trailer, or with more than `max_pdf_pages` pages (counted from its plain
  `/Type /Page` objects, without a PDF library: pages inside compressed object streams are not seen, so
  the count is a lower bound; the backend's own limit still applies).

Everything else is plain user text: stored and read back exactly as sent (no stripping, no escaping):
control characters, any Unicode, and strings that look like chat-template markers or serialized
messages. Answers are cleaned of lone surrogates (`clean_text`) so a backend cannot make a turn unsavable.
"""

from __future__ import annotations

import io
import re
import unicodedata
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

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


# Content block types that carry a file (see graph.attachments.blocks).
FILE_BLOCK_TYPES = frozenset({"image", "file", "image_url", "input_image", "input_file", "audio", "video"})


def _without_files(content: Any) -> Any:
    if not isinstance(content, list):
        return content
    return [b for b in content if not (isinstance(b, dict) and b.get("type") in FILE_BLOCK_TYPES)]


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
        for text in _strings(m.content):
            _check_unicode(text, "the message")
        # Attachments have limits of their own (below) and are stored apart: only the text counts here.
        size = sum(len(t.encode("utf-8")) for t in _strings(_without_files(m.content)))
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


# --- attachments ------------------------------------------------------------------------------------
AttachmentKind = Literal["image", "pdf"]

# Magic numbers of what the models take (Gemini: PNG, JPEG, WebP, HEIC; Gemma 3 on vLLM: what Pillow opens).
_IMAGE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
# What a refused file looks like, to say so in the error (never trusted to accept anything).
_OTHER_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"\x7fELF", "a program (ELF)"),
    (b"MZ", "a Windows program"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"<svg", "an SVG drawing"),
    (b"<?xml", "an XML document"),
    (b"BM", "a BMP image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
)
_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")


@dataclass(frozen=True)
class AttachmentLimits:
    """What every way in accepts (the settings' `attachment_*`); each backend may take less."""

    max_bytes: int = 5_000_000
    max_count: int = 4
    max_pixels: int = 40_000_000
    max_pdf_pages: int = 100


@dataclass(frozen=True)
class AttachmentInfo:
    """What an attachment is, from its bytes."""

    kind: AttachmentKind
    mime_type: str
    size: int
    width: int | None = None
    height: int | None = None
    pages: int | None = None

    def describe(self) -> str:
        """For people and logs: 'image/png 640x480, 12,345 bytes'."""
        if self.width:
            shape = f" {self.width}x{self.height}"
        else:
            shape = f", {self.pages} page(s)" if self.pages else ""
        return f"{self.mime_type}{shape}, {self.size:,} bytes"


def sniff(data: bytes) -> str | None:
    """The MIME type the bytes say (PNG, JPEG, GIF, WebP, PDF), or None."""
    for magic, mime in _IMAGE_MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:1024].lstrip(b"\x00\t\n\r ").startswith(b"%PDF-"):
        return "application/pdf"
    return None


def _looks_like(data: bytes) -> str:
    head = data[:16].lstrip()
    for magic, what in _OTHER_MAGIC:
        if head.startswith(magic):
            return what
    try:
        data[:4096].decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "an unknown binary format"


def check_attachment(data: bytes, limits: AttachmentLimits, name: str | None = None) -> AttachmentInfo:
    """One attachment's bytes checked (see the module docstring); `InvalidInput` says why not."""
    what = f"the attachment {name!r}" if name else "the attachment"
    if not data:
        raise InvalidInput(f"{what} is empty")
    if len(data) > limits.max_bytes:
        raise InvalidInput(f"{what} is {len(data):,} bytes; the limit is {limits.max_bytes:,}")
    mime = sniff(data)
    if mime is None:
        raise InvalidInput(
            f"{what} is not an image (PNG, JPEG, GIF, WebP) or a PDF: it looks like {_looks_like(data)}"
        )
    if mime == "application/pdf":
        return _check_pdf(data, limits, what)
    return _check_image(data, mime, limits, what)


def _check_image(data: bytes, mime: str, limits: AttachmentLimits, what: str) -> AttachmentInfo:
    from PIL import Image  # Pillow: the decoder Gradio already brings; imported when an image comes

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:  # reads the header only
                width, height = img.size
                if width * height > limits.max_pixels:
                    raise InvalidInput(
                        f"{what} is {width}x{height} pixels; the limit is {limits.max_pixels:,} pixels"
                    )
                img.load()  # decodes: a truncated or corrupt image fails here
    except InvalidInput:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise InvalidInput(f"{what} is too large once decoded (limit {limits.max_pixels:,} pixels)") from None
    except Exception:  # Pillow raises OSError, SyntaxError, ValueError... for a broken file
        raise InvalidInput(f"{what} is a {mime} that does not decode (truncated or corrupt)") from None
    return AttachmentInfo("image", mime, len(data), width=width, height=height)


def _check_pdf(data: bytes, limits: AttachmentLimits, what: str) -> AttachmentInfo:
    if b"%%EOF" not in data[-2048:]:
        raise InvalidInput(f"{what} is not a complete PDF (no end-of-file marker: truncated?)")
    pages = len(_PAGE.findall(data)) or 1
    if pages > limits.max_pdf_pages:
        raise InvalidInput(f"{what} has {pages} pages; the limit is {limits.max_pdf_pages}")
    return AttachmentInfo("pdf", "application/pdf", len(data), pages=pages)


def check_attachment_count(count: int, limits: AttachmentLimits) -> None:
    if count > limits.max_count:
        raise InvalidInput(f"the message has {count} attachments; the limit is {limits.max_count}")
