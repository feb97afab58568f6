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
its bytes, never from its name or declared type (`check_message_attachments`; `check_attachment` for
one file), with `AttachmentLimits`:

- the type is sniffed from the first bytes: PNG, JPEG, GIF, WebP images and PDF; anything else is refused
  naming what it looks like (a declared `image/png` that is a ZIP is a ZIP);
- over `max_bytes` decoded, or more than `max_count` in one message;
- an image whose width x height is over `max_pixels`, or a message whose images have more than
  `max_message_pixels` together: both read from the headers before any image of the message is
  decoded (a decompression bomb, or a few small well-compressed files of many pixels, are refused
  without one pixel being decoded);
- an image that does not decode (truncated, corrupt);
- a PDF without its `%%EOF` trailer, or that pypdf cannot read (no cross-reference table it can find or
  rebuild, no catalog, damaged objects), or protected by a password;
- a PDF whose page tree is not a tree: a page count (`/Count`) other than the pages it holds (10^9, -5),
  no page at all, a loop, more than `PDF_MAX_TREE_DEPTH` levels; or whose catalog or page-tree nodes
  hold arrays or dictionaries nested more than `PDF_MAX_NESTING` deep (a parser that recurses would
  crash on them);
- a PDF with more than `max_pdf_pages` pages, counted by walking the page tree (pages inside compressed
  object streams included).

Decoding is what costs memory and CPU (a 6300x6300 PNG of 150 KB is 160 MB of pixels), so it is bounded
(`check_message_attachments`):

- per image by `max_pixels`, 16,777,216 (4096x4096) by default: at most 64 MiB decoded (Pillow keeps
  up to 4 bytes a pixel). No model reads more: Gemini gives an image a bounded number of tokens (its
  media resolution) and Gemma 3 reads 896x896 crops, so a larger image is scaled down anyway; 12-16 MP
  photos and 5K screenshots still pass whole;
- per message by `max_message_pixels`, 50,000,000 by default (four 12 MP photos);
- per process by `decode_threads`: only those threads decode (one by default), whatever the number of
  callers, so one image's pixels at a time are held, always in the same malloc arenas; after a large
  image they are given back to the system (glibc's `malloc_trim`), not kept by the process for good;
- a JPEG is decoded at 1/8 scale (`Image.draft`): every byte is still read, so a truncated one fails,
  for 1/64 of the pixels;
- a PDF is read (pypdf) on the same threads, after every image's header and the message's pixels were
  checked, and its page tree walked with a bound on the nodes visited and `PDF_READ_S` of time (checked
  at every node; one object's parse is bounded by pypdf's own limits), so a crafted file costs at most
  that; what pypdf says about a user's file stays out of the server's log;
- bytes that decoded once are not decoded again (their digest is kept, never the bytes or pixels; a
  PDF's page count beside it): the way in and the graph each check a message.

Everything else is plain user text: stored and read back exactly as sent (no stripping, no escaping):
control characters, any Unicode, and strings that look like chat-template markers or serialized
messages. Answers are cleaned of lone surrogates (`clean_text`) so a backend cannot make a turn unsavable.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import io
import logging
import math
import threading
import time
import unicodedata
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
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


@dataclass(frozen=True)
class AttachmentLimits:
    """What every way in accepts (the settings' `attachment_*`); each backend may take less. The pixel
    limits and `decode_threads` bound what checking costs (see the module docstring)."""

    max_bytes: int = 5_000_000
    max_count: int = 4
    max_pixels: int = 4096 * 4096
    max_message_pixels: int = 50_000_000
    max_pdf_pages: int = 100
    decode_threads: int = 1


@dataclass(frozen=True)
class AttachmentInfo:
    """What an attachment is, from its bytes."""

    kind: AttachmentKind
    mime_type: str
    size: int
    width: int | None = None
    height: int | None = None
    pages: int | None = None

    @property
    def pixels(self) -> int:
        """Width x height of an image (what decoding it holds), 0 for a PDF."""
        return (self.width or 0) * (self.height or 0)

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


def _what(name: str | None) -> str:
    return f"the attachment {name!r}" if name else "the attachment"


def inspect_attachment(data: bytes, limits: AttachmentLimits, name: str | None = None) -> AttachmentInfo:
    """What one attachment is, from its bytes and an image's header (nothing decoded, no PDF read): its
    type, size and dimensions, each within `limits`; `InvalidInput` says why not."""
    what = _what(name)
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
        if b"%%EOF" not in data[-2048:]:
            raise InvalidInput(f"{what} is not a complete PDF (no end-of-file marker: truncated?)")
        return AttachmentInfo("pdf", "application/pdf", len(data))  # its pages: `_check_decodes`
    return _image_header(data, mime, limits, what)


def check_attachment(data: bytes, limits: AttachmentLimits, name: str | None = None) -> AttachmentInfo:
    """One attachment's bytes checked, an image decoded (see the module docstring); `InvalidInput` says
    why not."""
    return check_message_attachments([(data, name)], limits)[0]


def check_message_attachments(
    files: Sequence[tuple[bytes, str | None]], limits: AttachmentLimits
) -> list[AttachmentInfo]:
    """One message's attachments (bytes, name), checked: every limit read from the bytes and headers
    first, the images decoded and the PDFs read only then, so a message over a limit costs neither."""
    check_attachment_count(len(files), limits)
    infos = [inspect_attachment(data, limits, name) for data, name in files]
    pixels = sum(info.pixels for info in infos)
    if pixels > limits.max_message_pixels:
        raise InvalidInput(
            f"the message's images have {pixels:,} pixels together; the limit is "
            f"{limits.max_message_pixels:,} a message: send fewer or smaller images (or split them "
            "over several messages)"
        )
    return [
        _check_decodes(data, info, limits, _what(name))
        for (data, name), info in zip(files, infos, strict=True)
    ]


def _too_many_pixels(what: str, width: int, height: int, limits: AttachmentLimits) -> InvalidInput:
    side = math.isqrt(limits.max_pixels)
    return InvalidInput(
        f"{what} is {width}x{height} pixels; the limit is {limits.max_pixels:,} pixels (about {side}x{side}):"
        " send a smaller image (the models scale a larger one down anyway)"
    )


def _broken(what: str, mime: str) -> InvalidInput:
    return InvalidInput(f"{what} is a {mime} that does not decode (truncated or corrupt)")


def _image_header(data: bytes, mime: str, limits: AttachmentLimits, what: str) -> AttachmentInfo:
    """An image's dimensions from its header: Pillow's `Image.open` reads no pixel."""
    from PIL import Image  # Pillow: the decoder Gradio already brings; imported when an image comes

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        side = math.isqrt(limits.max_pixels)
        raise InvalidInput(
            f"{what} is too large once decoded (limit {limits.max_pixels:,} pixels, about {side}x{side}): "
            "send a smaller image"
        ) from None
    except Exception:  # Pillow raises OSError, SyntaxError, ValueError... for a broken file
        raise _broken(what, mime) from None
    if width * height > limits.max_pixels:
        raise _too_many_pixels(what, width, height, limits)
    return AttachmentInfo("image", mime, len(data), width=width, height=height)


# Decoding, bounded per process (see the module docstring).
_decoders: dict[int, ThreadPoolExecutor] = {}
# Digests of bytes that decoded (a PDF: with its page count), the newest last.
_decoded: OrderedDict[bytes, int | None] = OrderedDict()
_DECODED_MAX = 1024  # 32 bytes each
_decoding_lock = threading.Lock()


def _decoder(threads: int) -> ThreadPoolExecutor:
    """The process's decoders: the only threads that decode images and read PDFs, shared by every
    caller."""
    with _decoding_lock:
        if (pool := _decoders.get(threads)) is None:
            pool = _decoders[threads] = ThreadPoolExecutor(threads, thread_name_prefix="image-decode")
        return pool


def _decode(data: bytes) -> None:
    """Decodes `data` and lets the pixels go: a broken image raises. A JPEG is decoded at 1/8 scale
    (all its bytes are still read)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if img.format in ("JPEG", "MPO"):  # MPO: a phone's JPEG with a second picture
            img.draft(None, (max(1, img.width // 8), max(1, img.height // 8)))
        img.load()


def _decode_and_return_memory(data: bytes, pixels: int) -> None:
    """`_decode` on a decode thread, then the pixels of a large image (freed with `_decode`'s frame)
    given back to the system: glibc would keep them in the decode thread's arena (its mmap threshold
    rises to the largest block freed, up to 32 MB, so after the first image Pillow's 16 MB blocks come
    from the arena, and stay there once freed)."""
    try:
        _decode(data)
    finally:
        if pixels >= _TRIM_FROM_PIXELS and (trim := _malloc_trim()) is not None:
            trim(0)  # a few ms


_TRIM_FROM_PIXELS = 1_000_000  # 4 MB decoded: smaller images are not worth a trim


@functools.cache
def _malloc_trim() -> Any:
    """glibc's `malloc_trim`, or None (musl, macOS, Windows: nothing to call)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):
        return None


def _check_decodes(data: bytes, info: AttachmentInfo, limits: AttachmentLimits, what: str) -> AttachmentInfo:
    """`info` once `data` decoded (an image) or was read (a PDF: with its pages), on the decode threads
    (the caller waits for its turn); `InvalidInput` says why not."""
    digest = hashlib.sha256(data).digest()
    with _decoding_lock:
        if digest in _decoded:
            _decoded.move_to_end(digest)
            pages = _decoded[digest]
            return info if pages is None else _pdf_info(info, pages, limits, what)
    pages = None
    if info.kind == "pdf":
        pages = _decoder(limits.decode_threads).submit(_count_pdf_pages, data, limits.max_pdf_pages).result()
        if isinstance(pages, str):
            raise InvalidInput(f"{what} {pages}")
    else:
        try:
            _decoder(limits.decode_threads).submit(_decode_and_return_memory, data, info.pixels).result()
        except Exception:  # Pillow raises OSError, SyntaxError, ValueError... for a broken file
            raise _broken(what, info.mime_type) from None
    if pages is not None:
        info = _pdf_info(info, pages, limits, what)  # over the limit: the walk stopped, not a count to keep
    with _decoding_lock:
        _decoded[digest] = pages
        if len(_decoded) > _DECODED_MAX:
            _decoded.popitem(last=False)
    return info


def _pdf_info(info: AttachmentInfo, pages: int, limits: AttachmentLimits, what: str) -> AttachmentInfo:
    if pages > limits.max_pdf_pages:
        raise InvalidInput(
            f"{what} has over {limits.max_pdf_pages} pages; the limit is {limits.max_pdf_pages}"
        )
    return dataclasses.replace(info, pages=pages)


# Reading a PDF, bounded (see the module docstring). Real page trees are a few levels deep (a balanced
# tree of 10^6 pages needs 6) and their nodes' values a few levels of nesting.
PDF_READ_S = 5.0
PDF_MAX_TREE_DEPTH = 64
PDF_MAX_NESTING = 64
_PDF_MAX_NODES = 100_000  # page-tree nodes and the values inside them, visited in all


class _NotAPageTree(Exception):
    """The PDF's page tree is malformed; the message says how, to the user."""


def _count_pdf_pages(data: bytes, max_pages: int) -> int | str:
    """The pages of a PDF, counted by walking its page tree (at most `max_pages + 1` of them), or what
    is wrong with it in words (returned, not raised: it crosses the decode thread)."""
    try:
        return _walk_page_tree(data, max_pages)
    except _NotAPageTree as exc:
        return str(exc)
    except Exception:  # pypdf: PdfReadError, LimitReachedError, ValueError, KeyError... for a broken file
        return "is a damaged PDF: it cannot be read (its structure is broken)"


def _walk_page_tree(data: bytes, max_pages: int) -> int:
    from pypdf import PdfReader
    from pypdf.generic import ArrayObject, DictionaryObject, IndirectObject

    _quiet_pypdf()
    deadline = time.monotonic() + PDF_READ_S
    reader = PdfReader(io.BytesIO(data), strict=False)  # strict=False: what viewers open, pypdf reads
    if reader.is_encrypted and not reader.decrypt(""):  # an owner password alone still opens
        raise _NotAPageTree("is protected by a password: send it without one")
    root = reader.trailer["/Root"].get_object()
    tree = root["/Pages"] if isinstance(root, DictionaryObject) else None
    if tree is None:
        raise _NotAPageTree("is a damaged PDF: it has no page tree")
    declared = tree.get_object().get("/Count")
    pages, nodes = 0, _nesting_checked(root, _PDF_MAX_NODES)
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[Any, int]] = [(tree, 1)]
    while stack:
        ref, depth = stack.pop()
        if time.monotonic() > deadline:
            raise _NotAPageTree(f"is a PDF whose page tree takes too long to read (over {PDF_READ_S:.0f} s)")
        if depth > PDF_MAX_TREE_DEPTH:
            raise _NotAPageTree(f"is a malformed PDF: its page tree is over {PDF_MAX_TREE_DEPTH} levels deep")
        if isinstance(ref, IndirectObject):
            if (ref.idnum, ref.generation) in seen:
                raise _NotAPageTree("is a malformed PDF: its page tree loops (or names a page twice)")
            seen.add((ref.idnum, ref.generation))
        node = ref.get_object()
        if not isinstance(node, DictionaryObject):
            raise _NotAPageTree("is a damaged PDF: its page tree holds something that is not a page")
        nodes += 1 + _nesting_checked(node, _PDF_MAX_NODES - nodes)
        if "/Kids" in node:  # an inner node (`/Type /Pages`)
            kids = node["/Kids"].get_object()
            if not isinstance(kids, ArrayObject):
                raise _NotAPageTree("is a damaged PDF: its page tree holds something that is not a page")
            stack.extend((kid, depth + 1) for kid in reversed(kids))
        else:
            pages += 1
            if pages > max_pages:
                return pages
    if pages == 0:
        raise _NotAPageTree("is a PDF without any page")
    if not isinstance(declared, int):
        raise _NotAPageTree("is a malformed PDF: its page tree does not say how many pages it has")
    if declared != pages:
        raise _NotAPageTree(f"is a malformed PDF: it says it has {declared} pages but holds {pages}")
    return pages


def _nesting_checked(node: Any, budget: int) -> int:
    """The values inside the catalog or one page-tree node (references not followed), counted;
    `_NotAPageTree` if they nest over `PDF_MAX_NESTING` deep or are more than `budget`."""
    from pypdf.generic import ArrayObject, DictionaryObject

    count = 0
    stack: list[tuple[Any, int]] = [(node, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > PDF_MAX_NESTING:
            raise _NotAPageTree(f"is a malformed PDF: it holds values nested over {PDF_MAX_NESTING} deep")
        if isinstance(value, DictionaryObject | ArrayObject):
            for child in value.values() if isinstance(value, DictionaryObject) else value:
                count += 1
                if count > budget:
                    raise _NotAPageTree(
                        f"is a PDF whose page tree is too large to read (over {_PDF_MAX_NODES:,} values)"
                    )
                stack.append((child, depth + 1))
    return count


@functools.cache
def _quiet_pypdf() -> None:
    """pypdf logs what it finds wrong with a file (a crafted one: thousands of lines); a user's file
    is refused in words instead, and the server's log is for the server."""
    logging.getLogger("pypdf").setLevel(logging.CRITICAL)


def check_attachment_count(count: int, limits: AttachmentLimits) -> None:
    if count > limits.max_count:
        raise InvalidInput(f"the message has {count} attachments; the limit is {limits.max_count}")
