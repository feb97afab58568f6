"""Attachments in a message's content: which blocks carry a file, its bytes, and the form models get.

Accepted shapes, as LangChain clients, agent-chat-ui and OpenAI clients send them:

- LangChain's standard blocks: `{"type": "image" | "file", "base64": ..., "mime_type": ...}`;
- LangChain's older data blocks: `{"type": ..., "source_type": "base64", "data": ..., "mime_type": ...}`;
- agent-chat-ui's: `{"type": ..., "data": ..., "mimeType": ..., "metadata": {"name" | "filename": ...}}`;
- a `data:` URL: `{"type": "image", "url": ...}`, OpenAI's `{"type": "image_url", "image_url": {"url":
  ...}}` and `{"type": "file", "file": {"file_data": ..., "filename": ...}}`.

Links (an http(s) URL, a provider's file id) are refused: the graph never fetches a URL for a user.
Stored messages hold references instead of bytes (`REF_KEY`, see `graph.attachments.store`).
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from graph.validation import FILE_BLOCK_TYPES, AttachmentInfo, InvalidInput

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from graph.attachments.store import AttachmentStore

FILE_TYPES = FILE_BLOCK_TYPES
REF_KEY = "hybrid_chat_attachment"  # in a stored block's `extras`: the attachment's reference and facts


@dataclass(frozen=True)
class RawAttachment:
    """One file block of a message, its bytes decoded (not yet checked)."""

    index: int  # position in the content list
    data: bytes
    declared_mime: str | None
    name: str | None


def is_file_block(block: Any) -> bool:
    return isinstance(block, dict) and block.get("type") in FILE_TYPES


def is_reference(block: Any) -> bool:
    """A stored block: the attachment is in the attachment store, the block says where."""
    return is_file_block(block) and isinstance((block.get("extras") or {}).get(REF_KEY), dict)


def _decode(b64: Any, what: str) -> bytes:
    if not isinstance(b64, str):
        raise InvalidInput(f"{what}: its data must be base64 text")
    try:
        return base64.b64decode(b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{what}: its data is not valid base64") from None


def _data_url(url: Any, what: str) -> tuple[bytes, str | None]:
    if not isinstance(url, str) or not url.startswith("data:"):
        raise InvalidInput(f"{what} is a link: attach the file itself (links are not fetched)")
    head, sep, payload = url.partition(",")
    if not sep or ";base64" not in head:
        raise InvalidInput(f"{what}: only base64 data: URLs are accepted")
    return _decode(payload, what), head[5:].split(";")[0] or None


def _one(index: int, block: dict[str, Any]) -> RawAttachment:
    kind = block.get("type")
    what = f"attachment {index + 1}"
    meta = block.get("metadata") if isinstance(block.get("metadata"), dict) else {}
    name = block.get("filename") or block.get("name") or meta.get("filename") or meta.get("name")
    mime = block.get("mime_type") or block.get("mimeType")
    if kind in ("audio", "video"):
        raise InvalidInput(f"{what} is {kind}: only images and PDFs can be attached")
    if kind == "image_url":
        inner = block.get("image_url")
        url = inner.get("url") if isinstance(inner, dict) else inner
        data, declared = _data_url(url, what)
    elif kind == "file" and isinstance(block.get("file"), dict):  # OpenAI's file part
        f = block["file"]
        if "file_id" in f:
            raise InvalidInput(f"{what} names a file id: attach the file itself")
        data, declared = _data_url(f.get("file_data"), what)
        name = name or f.get("filename")
    elif "base64" in block:
        data, declared = _decode(block["base64"], what), None
    elif "data" in block and block.get("source_type", "base64") == "base64":
        data, declared = _decode(block["data"], what), None
    elif "url" in block or block.get("source_type") == "url":
        data, declared = _data_url(block.get("url"), what)
    elif "file_id" in block or ("id" in block and block.get("source_type") == "id"):
        raise InvalidInput(f"{what} names a file id: attach the file itself")
    else:
        raise InvalidInput(f"{what} ({kind}) has no data: send it base64-encoded")
    return RawAttachment(index, data, str(mime or declared or "") or None, str(name)[:200] if name else None)


def find(content: Any) -> list[RawAttachment]:
    """The file blocks of a message's content, decoded; `InvalidInput` for one that cannot be read.
    Stored references (earlier turns) are not input and are skipped."""
    if not isinstance(content, list):
        return []
    return [
        _one(i, block) for i, block in enumerate(content) if is_file_block(block) and not is_reference(block)
    ]


def model_block(data: bytes, info: AttachmentInfo) -> dict[str, Any]:
    """The block both chat model classes turn into their own form: `ChatOpenAI` an `image_url` data URL
    (what vLLM takes), `ChatVertexAI` inline data. The MIME type is the sniffed one."""
    return {
        "type": "image" if info.kind == "image" else "file",
        "base64": base64.b64encode(data).decode("ascii"),
        "mime_type": info.mime_type,
    }


def _sniffed(raw: RawAttachment) -> AttachmentInfo:
    """What the bytes are (sniffed; the declared type only where sniffing finds nothing)."""
    from graph.validation import sniff  # graph.validation imports this module

    mime = sniff(raw.data) or raw.declared_mime or "application/octet-stream"
    return AttachmentInfo("pdf" if mime == "application/pdf" else "image", mime, len(raw.data))


def placeholder(info: AttachmentInfo, name: str | None = None) -> dict[str, str]:
    """A text block standing in for an attachment the model does not get again (over the budget)."""
    label = f"{name}: " if name else ""
    return {"type": "text", "text": f"[attachment not shown again: {label}{info.describe()}]"}


def to_model_content(content: Any) -> Any:
    """`content` with each attachment (not a stored reference) as `model_block` makes it: the sniffed
    MIME type, one shape for both model classes. Input is checked before (`graph.validation`)."""
    if not isinstance(content, list) or not any(is_file_block(b) for b in content):
        return content
    out: list[Any] = []
    for i, block in enumerate(content):
        if not is_file_block(block) or is_reference(block):
            out.append(block)
            continue
        raw = _one(i, block)
        out.append(model_block(raw.data, _sniffed(raw)))
    return out


def without_files(content: Any, *, tokens_per_file: int = 258) -> Any:
    """`content` with each attachment replaced by text of about `tokens_per_file` tokens: what token
    estimates read (base64 counted as text would make a 1 MB image look like 300k tokens). 258 is what
    Gemini counts per image and per PDF page; Gemma 3 counts 256 per image."""
    if not isinstance(content, list):
        return content
    pad = {"type": "text", "text": "x" * (4 * tokens_per_file)}
    return [pad if is_file_block(b) else b for b in content]


def fit_content(
    content: Any, kinds: frozenset[str], budget: int, max_bytes: int | None = None
) -> tuple[Any, int, int]:
    """`content` as a backend gets it: each attachment as `model_block`, newest last, while `budget`
    lasts, within `max_bytes` together, and the backend takes its kind; the others as `placeholder`
    text. Returns the content, how many attachments it kept and their bytes. Earlier turns'
    attachments go through this (the model sees them again within a budget; a backend that cannot
    read them gets a line saying what was there)."""
    if not isinstance(content, list) or not any(is_file_block(b) for b in content):
        return content, 0, 0
    out: list[Any] = []
    kept = used = 0
    for i in range(len(content) - 1, -1, -1):  # newest attachment of the message first
        block = content[i]
        if is_reference(block):  # not loaded from the store (over the budget, or gone)
            out.append(placeholder(*_facts(block)))
            continue
        if not is_file_block(block):
            out.append(block)
            continue
        raw = _one(i, block)
        info = _sniffed(raw)
        if info.kind in kinds and kept < budget and (max_bytes is None or used + info.size <= max_bytes):
            out.append(model_block(raw.data, info))
            kept, used = kept + 1, used + info.size
        else:
            out.append(placeholder(info, raw.name))
    return out[::-1], kept, used


# --- stored form: references to the attachment store ------------------------------------------------
def _facts(block: dict[str, Any]) -> tuple[AttachmentInfo, str | None]:
    facts = (block.get("extras") or {}).get(REF_KEY) or {}
    mime = str(block.get("mime_type") or "application/octet-stream")
    kind = "pdf" if mime == "application/pdf" else "image"
    info = AttachmentInfo(kind, mime, int(facts.get("size") or 0), facts.get("width"), facts.get("height"))
    return info, facts.get("name")


async def to_stored(content: Any, user_id: str, session_id: str, store: AttachmentStore) -> Any:
    """`content` as memory keeps it: each attachment's bytes put in `store`, the block replaced by a
    reference with what a reader needs without the bytes (type, size, name, dimensions)."""
    if not isinstance(content, list) or not any(is_file_block(b) and not is_reference(b) for b in content):
        return content
    out: list[Any] = []
    for i, block in enumerate(content):
        if not is_file_block(block) or is_reference(block):
            out.append(block)
            continue
        raw = _one(i, block)
        mime = _sniffed(raw).mime_type
        ref = await store.aput(user_id, session_id, raw.data)
        facts: dict[str, Any] = {"ref": ref, "size": len(raw.data)}
        if raw.name:
            facts["name"] = raw.name
        kind = "file" if mime == "application/pdf" else "image"
        out.append({"type": kind, "mime_type": mime, "extras": {REF_KEY: facts}})
    return out


async def resolve(
    content: Any, user_id: str, session_id: str, store: AttachmentStore, budget: int
) -> tuple[Any, int]:
    """`content` with its references loaded back from `store`, the newest first while `budget` lasts
    (the others stay references: `fit_content` turns them into a line saying what was there). Returns
    the content and how many were loaded. A reference whose file is gone stays a reference."""
    if budget <= 0 or not isinstance(content, list) or not any(is_reference(b) for b in content):
        return content, 0
    out = list(content)
    used = 0
    for i in range(len(out) - 1, -1, -1):
        block = out[i]
        if not is_reference(block) or used >= budget:
            continue
        try:
            data = await store.aget(user_id, session_id, str(block["extras"][REF_KEY].get("ref")))
        except Exception as exc:  # the store down: the turn goes on, the model reads what was there
            log.warning("an earlier attachment could not be loaded: %s", type(exc).__name__)
            data = None
        if data is not None:
            out[i] = {
                "type": block["type"],
                "base64": base64.b64encode(data).decode("ascii"),
                "mime_type": block.get("mime_type"),
            }
            used += 1
    return out, used
