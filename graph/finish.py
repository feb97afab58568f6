"""Why an answer ended: one reason per answer, in one vocabulary for every backend.

The vocabulary is OpenAI's (what `/v1` returns, and what vLLM and llama.cpp already send): `stop` (the
model ended its answer), `length` (cut at `max_tokens`), `tool_calls`, `content_filter` (refused or
cut by the provider's filters). Gemini names an enum instead (`STOP`, `MAX_TOKENS`, `SAFETY`, ...) and
streams `FINISH_REASON_UNSPECIFIED` on every chunk but the last, which says nothing: it is no reason.
A reason outside both vocabularies is kept, lower-cased, so nothing a backend said is lost.
"""

from __future__ import annotations

STOP = "stop"
LENGTH = "length"
TOOL_CALLS = "tool_calls"
CONTENT_FILTER = "content_filter"

# Gemini's FinishReason names (Vertex AI), lower-cased, in OpenAI's words.
_GEMINI = {
    "max_tokens": LENGTH,
    "safety": CONTENT_FILTER,
    "recitation": CONTENT_FILTER,
    "blocklist": CONTENT_FILTER,
    "prohibited_content": CONTENT_FILTER,
    "spii": CONTENT_FILTER,
    "image_safety": CONTENT_FILTER,
    "function_call": TOOL_CALLS,
}
_NO_REASON = {"", "none", "null", "unspecified", "finish_reason_unspecified"}


def finish_reason(raw: object) -> str | None:
    """`raw` (a backend's finish reason, any case) in the shared vocabulary; None when it says nothing."""
    if raw is None:
        return None
    value = str(getattr(raw, "name", raw)).strip().lower()  # an enum member, or its name
    if value in _NO_REASON:
        return None
    return _GEMINI.get(value, value)
