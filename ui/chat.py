"""The chat logic behind the browser page, free of Gradio: parameters, rendering, and `ChatService`.

`ChatService.turn` streams a turn through the one `ChatClient` (graph/client.py) and yields the growing
answer text, then one `Done` as the page shows it. It never raises for a failed turn: a backend failure,
a store outage or a conversation of another user becomes a `Done` whose text says so. Cancelling the
task that consumes it (the Stop button) cancels the graph and with it the backend's HTTP request; the
graph saves what was streamed, marked as stopped.

Conversation ids come from the browser, so every read, rename and delete first checks that the
conversation belongs to the signed-in user (`aget_conversation` raises `AccessDenied` otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import html
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from langchain_core.messages import BaseMessage
from prometheus_client import Counter, Gauge, Histogram

from graph.attachments.blocks import REF_KEY, is_reference
from graph.client import MODELS as CLIENT_MODELS
from graph.client import ChatClient, Delta
from graph.client import Done as ClientDone
from graph.finish import LENGTH, finish_reason
from graph.local.llama import LOCAL_MODEL_LABEL
from graph.memory.codec import message_text
from graph.memory.contract import (
    META_KEY,
    AccessDenied,
    ConversationList,
    ConversationNotFound,
    MemoryUnavailable,
)
from graph.settings import Settings
from graph.validation import InvalidInput
from ui.health import HealthBoard
from ui.limits import Busy, LimitExceeded, StreamSlot, StreamSlots, check_message

log = logging.getLogger(__name__)

AUTO_HINT = "Auto: picks Gemma or Gemini for each message"


def model_choices(client: ChatClient) -> list[tuple[str, str]]:
    """The model picker's choices: what really answers (the backends' own labels, which say "stand-in"
    with the embedded defaults), then any other policy of the router by name."""
    backends = client.services.backends
    out: list[tuple[str, str]] = []
    for name in client.models:
        if name == "task":  # clients' background requests (titles, tags), not a model to chat with
            continue
        if name == "auto":
            out.append((AUTO_HINT, name))
        elif name in SHORT_NAMES and backends.is_local(name):
            # The stand-in's full label (on each answer) also names its server: the picker keeps the model.
            out.append((f"{short_name(name)} stand-in: {LOCAL_MODEL_LABEL.split(' (')[0]}", name))
        elif name in SHORT_NAMES:
            out.append((backends.label(name), name))
        else:
            out.append((name.replace("_", " ").capitalize(), name))
    return out


def picker_choices(client: ChatClient) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The picker's short names (a long one was cut under its arrow, on a phone most of all) and each
    value's long name from `model_choices`, shown as the picker's hint: "Gemma stand-in" hinted
    "Gemma stand-in: SmolLM2-135M-Instruct", "Auto" hinted "Auto: picks Gemma or Gemini ...". With real
    backends the short name is the model's own label when it is short, its family's name otherwise."""
    choices, hints = [], {}
    for label, value in model_choices(client):
        if value == "auto":
            short = "Auto"
        elif value in SHORT_NAMES:
            short = label.split(":")[0] if ":" in label else label
            short = short if len(short) <= 24 else short_name(value)
        else:
            short = label
        choices.append((short, value))
        hints[value] = label
    return choices, hints


def model_of(rows: list[dict[str, Any]], models: Collection[str]) -> str | None:
    """The model the conversation's last answer was asked of (its route reason names the policy:
    "auto: preferred gemma", "chosen: gemini"), so that a reopened conversation shows it in the picker
    (a reload went back to the default though the conversation used Auto). None if unknown."""
    for row in reversed(rows):
        if row["role"] != "assistant":
            continue
        reason = str((row.get("meta") or {}).get("route_reason") or "")
        head, _, rest = reason.partition(":")
        name = (rest.split() or [""])[0] if head.strip() == "chosen" else head.strip()
        if name in models:
            return name
    return None


MAX_TOKENS_CEILING = 8192

UI_TURNS = Counter("hybrid_chat_ui_turns_total", "Chat turns served by the UI, by outcome.", ["outcome"])
UI_FIRST_TOKEN = Histogram(
    "hybrid_chat_ui_first_token_seconds",
    "From the UI handler's start to the first streamed token (includes history load and routing).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32),
)
UI_ACTIVE = Gauge("hybrid_chat_ui_active_streams", "Answers streaming to browsers or API clients now.")
UI_REJECTED = Counter("hybrid_chat_ui_rejected_total", "Messages refused by a UI limit.", ["limit"])


@dataclass(frozen=True)
class TurnParams:
    model: str
    temperature: float
    top_p: float
    max_tokens: int
    system_prompt: str
    seed: int | None = None  # sampling seed (the OpenAI endpoint's `seed`)
    stop: tuple[str, ...] = ()  # stop sequences (its `stop`, checked by graph.output)
    response_format: dict[str, Any] | None = None  # what the answer must be (its `response_format`)
    caller_label: str | None = None  # who the caller says is asking (its `user`): logged, never identity
    tools: list[dict[str, Any]] | None = None  # functions the model may call (its `tools`; graph.tools)
    tool_choice: str | dict[str, Any] | None = None  # its `tool_choice`


def turn_params(
    settings: Settings,
    model: Any = None,
    temperature: Any = None,
    top_p: Any = None,
    max_tokens: Any = None,
    system_prompt: Any = None,
    seed: int | None = None,
    *,
    stop: Sequence[str] = (),
    response_format: dict[str, Any] | None = None,
    caller_label: str | None = None,
    tools: list[dict[str, Any]] | None = None,
    tool_choice: str | dict[str, Any] | None = None,
    models: Collection[str] = CLIENT_MODELS,
) -> TurnParams:
    """Parameters from the browser (or an API client), validated and clamped: never trusted as sent.
    `models`: what may be asked for (`ChatClient.models`)."""
    model = model or settings.default_model
    if model not in models:
        raise LimitExceeded(f"Unknown model {str(model)[:40]!r}: choose one of {', '.join(sorted(models))}.")

    def num(value: Any, default: float, lo: float, hi: float) -> float:
        try:
            x = float(value)
        except (TypeError, ValueError):
            return default
        return default if x != x else min(hi, max(lo, x))  # NaN -> default

    system = settings.system_prompt if system_prompt is None else str(system_prompt)
    if len(system) > settings.max_message_chars:
        raise LimitExceeded(
            f"The persona is {len(system):,} characters long; the limit is {settings.max_message_chars:,}."
        )
    return TurnParams(
        model=str(model),
        temperature=num(temperature, settings.temperature, 0.0, 2.0),
        top_p=num(top_p, settings.top_p, 0.01, 1.0),
        max_tokens=int(num(max_tokens, settings.max_tokens, 1, MAX_TOKENS_CEILING)),
        system_prompt=system,
        seed=seed,
        stop=tuple(stop),
        response_format=response_format,
        caller_label=caller_label,
        tools=tools,
        tool_choice=tool_choice,
    )


@dataclass
class Done:
    """The end of a turn, as the page shows it. `kind`: answer | backend_error | failed (nothing reached a
    model)."""

    kind: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)
    human_id: str | None = None
    human_saved: bool = False
    answer_id: str | None = None
    answer_saved: bool = False
    note: str | None = None  # e.g. "the turn could not be saved"
    error: BaseException | None = None  # kind "failed": why (an API maps it to a status code)


# --- rendering ------------------------------------------------------------------------------
# The answer's text is Markdown and nothing else: copying a message, copying the conversation and the
# API return what the model wrote. What the page says about an answer (who answered, why, how fast, a
# fallback, an error's reference) travels beside the chat's value (`decorations`) and is drawn next to
# the bubble by ui/page.js: Gradio's Chatbot has no per-message footer, and anything put in the Markdown
# would land inside an unclosed code block and on the clipboard.
SHORT_NAMES = {"gemma": "Gemma", "gemini": "Gemini"}


def reference(answer_id: Any) -> str:
    """A short reference for an answer that went wrong, shown on the page and written to the log with
    the detail: the same answer (also after a reload) always has the same reference."""
    return hashlib.sha256(str(answer_id).encode()).hexdigest()[:8]


def short_name(backend: Any) -> str:
    return SHORT_NAMES.get(str(backend), str(backend))


def cut_at_limit(meta: dict[str, Any]) -> bool:
    """The answer was cut at `max_tokens` (Continue is offered). Answers saved before finish reasons
    were normalised may hold Gemini's chunks' reasons glued together, ending in "max_tokens"."""
    raw = str(meta.get("finish_reason") or "").lower()
    return (finish_reason(raw) == LENGTH or raw.endswith("max_tokens")) and not meta.get("interrupted")


def meta_line(meta: dict[str, Any], *, ref: str | None = None) -> str:
    """The unobtrusive line under an answer: who answered, why, how fast; never an exception's text (an
    interruption's detail goes to the log under `ref`)."""
    parts: list[str] = []
    if meta.get("backend_label") or meta.get("backend"):
        parts.append(str(meta.get("backend_label") or short_name(meta.get("backend"))))
    if meta.get("route_reason"):
        parts.append(str(meta["route_reason"]))
    if meta.get("ttft_ms") is not None:
        parts.append(f"first token {float(meta['ttft_ms']):.0f} ms")
    if meta.get("tokens_per_s"):
        parts.append(f"{float(meta['tokens_per_s']):.0f} tok/s")
    if meta.get("interrupted"):
        stopped = meta["interrupted"] == "stopped"
        parts.append("stopped" if stopped else "cut off: the model stopped answering")
    elif cut_at_limit(meta):
        parts.append("cut at the token limit")
    if meta.get("note"):
        parts.append(str(meta["note"]))
    if ref:
        parts.append(f"reference {ref}")
    return " · ".join(parts)


def fallback_badge(meta: dict[str, Any]) -> str | None:
    """'answered by Gemini: Gemma unavailable' when another backend than the one routed to answered."""
    asked, answered = meta.get("requested_backend"), meta.get("backend")
    if not meta.get("fallback") or not asked or not answered or asked == answered:
        return None
    return f"answered by {short_name(answered)}: {short_name(asked)} unavailable"


def answer_row(
    text: str,
    meta: dict[str, Any] | None,
    *,
    kind: str = "answer",
    row_id: str | None = None,
    turn: str | None = None,
) -> dict[str, Any]:
    """A server-side row for an answer (or a note standing in for one). `turn` names the turn in the
    footer's class `hc-turn-<id>`, so tests can tell a regenerated answer from the one it replaced."""
    meta = dict(meta or {})
    if kind == "answer" and meta.get("error"):
        kind = "backend_error"
    return {"role": "assistant", "id": row_id, "text": text, "meta": meta, "kind": kind, "turn": turn}


def user_row(text: str, row_id: str | None, files: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"role": "user", "id": row_id, "text": text}
    if files:
        row["files"] = files
    return row


def human_size(size: Any) -> str:
    """Bytes in words a person reads at a glance: 136 bytes, 12.4 KB, 1.0 MB."""
    n = int(size or 0)
    if n < 1000:
        return f"{n} bytes"
    return f"{n / 1000:.1f} KB" if n < 1_000_000 else f"{n / 1_000_000:.1f} MB"


def attachment_facts(content: Any) -> list[dict[str, Any]]:
    """The attachments a stored message refers to (the graph keeps the bytes in its attachment store and
    a reference block in the message): name, type and size, what the page shows as a chip."""
    if not isinstance(content, list):
        return []
    out = []
    for block in content:
        if not is_reference(block):
            continue
        ref = block["extras"][REF_KEY]
        mime = str(block.get("mime_type") or "")
        name = str(ref.get("name") or ("image" if block.get("type") == "image" else "file"))
        out.append({"name": name, "mime": mime, "size": human_size(ref.get("size"))})
    return out


def needs_reference(row: dict[str, Any]) -> bool:
    meta = row.get("meta") or {}
    interrupted = meta.get("interrupted")
    return row.get("kind") == "backend_error" or bool(interrupted and interrupted != "stopped")


def row_decoration(row: dict[str, Any]) -> dict[str, Any]:
    """What ui/page.js draws for one row: a user's text as typed; an answer's footer, badge and look."""
    if row["role"] == "user":
        return {"typed": row["text"], **({"files": row["files"]} if row.get("files") else {})}
    meta = row.get("meta") or {}
    kind = row.get("kind", "answer")
    ref = reference(row.get("ref_id") or row.get("id") or row.get("turn")) if needs_reference(row) else None
    classes = ["hc-meta"]
    if kind != "answer":
        classes.append("hc-meta-error")
    if row.get("turn"):
        classes.append("hc-turn-" + re.sub(r"[^A-Za-z0-9_-]", "_", str(row["turn"]))[:64])
    out: dict[str, Any] = {"line": meta_line(meta, ref=ref), "cls": " ".join(classes), "kind": kind}
    if kind == "answer" and (badge := fallback_badge(meta)):
        out["badge"] = badge
    return out


def decorations(rows: list[dict[str, Any]], sid: str | None, updated: dict[str, str] | None = None) -> str:
    """The hidden element the page's script reads: one entry per row of the chat, the open conversation
    (for the page's address, `?c=<id>`), and when each listed conversation last changed (ISO 8601, so
    the browser groups the list by day in its own time zone). Escaped into an attribute: data, never
    markup."""
    data = json.dumps(
        {"sid": sid, "rows": [row_decoration(r) for r in rows], "updated": updated or {}},
        ensure_ascii=False,
    )
    return f'<div class="hc-decor" data-hc="{html.escape(data, quote=True)}"></div>'


def row_actions(row: dict[str, Any], models: Collection[str]) -> list[dict[str, str]]:
    """One-click follow-ups under the last answer (Gradio shows a message's options under the chat):
    retry a failed answer with the other backend; continue an answer cut at the token limit or stopped."""
    meta = row.get("meta") or {}
    if row.get("kind") == "backend_error":
        failed = meta.get("backend")
        other = next((b for b in SHORT_NAMES if b != failed and b in models), None)
        return [{"label": f"Retry with {short_name(other)}", "value": f"retry:{other}"}] if other else []
    if row.get("kind") == "answer" and (cut_at_limit(meta) or meta.get("interrupted")):
        return [{"label": "Continue", "value": "continue"}]
    return []


def tool_calls_text(message: BaseMessage, results: dict[str, str]) -> str:
    """An answer's tool calls (an OpenAI client's conversation) in words, each with what it returned."""
    lines = []
    for call in getattr(message, "tool_calls", None) or []:
        args = json.dumps(call.get("args") or {}, ensure_ascii=False)
        lines.append(f"Called `{call.get('name')}` with `{args}`")
        if (result := results.get(str(call.get("id")))) is not None:
            lines.append(f"returned: `{result[:500]}`")
    return "\n\n".join(lines)


def rows_from_messages(messages: list[BaseMessage]) -> list[dict[str, Any]]:
    """Server-side rows (role, stored id, text, metadata) for stored messages. Tool calls and their
    results (saved by an OpenAI client) show as the calling answer's text."""
    results = {str(getattr(m, "tool_call_id", "")): message_text(m) for m in messages if m.type == "tool"}
    rows: list[dict[str, Any]] = []
    for m in messages:
        text = message_text(m)
        if m.type == "human":
            rows.append(user_row(text, m.id, attachment_facts(m.content)))
        elif m.type == "ai":
            meta = dict(m.response_metadata.get(META_KEY) or {})
            if getattr(m, "tool_calls", None):
                text = "\n\n".join(t for t in (text, tool_calls_text(m, results)) if t)
            rows.append(answer_row(text, meta, row_id=m.id, turn=m.id))
    return rows


def chatbot_value(
    rows: list[dict[str, Any]], models: Collection[str] = CLIENT_MODELS
) -> list[dict[str, Any]]:
    """The Chatbot's value: each message's own text, nothing added; the last answer's follow-ups as
    options."""
    out: list[dict[str, Any]] = []
    for r in rows:
        text = r["text"]
        if r["role"] == "assistant" and not text.strip():
            text = "(no answer)"
        out.append({"role": r["role"], "content": text})
    if rows and rows[-1]["role"] == "assistant" and (actions := row_actions(rows[-1], models)):
        out[-1]["options"] = actions
    return out


class TurnResult(TypedDict):
    """What Gradio's `/turn` streams: the whole answer so far, then (`done`) what happened."""

    session_id: str
    done: bool
    kind: str  # "answer" | "backend_error" (no backend answered: `text` says so)
    text: str
    backend: str | None  # who answered
    backend_label: str | None
    requested_backend: str | None  # who the route picked first
    fallback: bool
    route_reason: str | None
    interrupted: str | None  # "stopped" | "error" (the model stopped answering; see `reference`)
    finish_reason: str | None  # e.g. "stop", "length" (cut at max_tokens)
    ttft_ms: float | None
    latency_ms: float | None
    input_tokens: int
    output_tokens: int
    saved: bool  # the question and answer are in the conversation
    reference: str | None  # quote it to the operator: the log has the detail under it


def turn_result(session_id: str, event: Delta | Done) -> TurnResult:
    if isinstance(event, Delta):
        meta: dict[str, Any] = {}
        kind, done, saved, answer_id = "answer", False, False, None
    else:
        meta, kind, done, saved, answer_id = event.meta, event.kind, True, event.answer_saved, event.answer_id
    interrupted = meta.get("interrupted")
    row = answer_row(event.text, meta, kind=kind, row_id=answer_id)
    return TurnResult(
        session_id=session_id,
        done=done,
        kind=kind,
        text=event.text,
        backend=meta.get("backend"),
        backend_label=meta.get("backend_label"),
        requested_backend=meta.get("requested_backend"),
        fallback=bool(meta.get("fallback")),
        route_reason=meta.get("route_reason"),
        interrupted=None if not interrupted else ("stopped" if interrupted == "stopped" else "error"),
        finish_reason=meta.get("finish_reason"),
        ttft_ms=meta.get("ttft_ms"),
        latency_ms=meta.get("latency_ms"),
        input_tokens=int(meta.get("input_tokens") or 0),
        output_tokens=int(meta.get("output_tokens") or 0),
        saved=saved,
        reference=reference(answer_id) if done and needs_reference(row) else None,
    )


NOT_AVAILABLE = (
    "This conversation is not available: it does not exist (it may have been deleted), or it belongs to "
    "another account."
)


def friendly_error(exc: BaseException) -> str:
    if isinstance(exc, InvalidInput):
        return f"This message was not sent: {exc}"
    if isinstance(exc, AccessDenied | ConversationNotFound):
        # One text for both: whether an id exists under another account is nobody else's business.
        return NOT_AVAILABLE
    if isinstance(exc, MemoryUnavailable):
        return (
            "The conversation store is unreachable right now, so this message was not sent. "
            "Your earlier messages are safe; try again in a moment."
        )
    if isinstance(exc, LimitExceeded):
        return str(exc)
    ref = uuid.uuid4().hex[:8]
    log.error("unexpected failure, reference %s: %s", ref, type(exc).__name__, exc_info=exc)
    return f"Something went wrong on our side. Your earlier messages are safe; try again (reference {ref})."


# --- the service ----------------------------------------------------------------------------
class ChatService:
    """What the page (and the API) can do for a signed-in user, over the one `ChatClient`: this adds
    the page's metrics, the health board and shutdown draining. Everything here is async."""

    def __init__(self, client: ChatClient, *, health: HealthBoard | None = None) -> None:
        self.client = client
        self.settings: Settings = client.settings
        self.health = health or HealthBoard(client.services.router)
        self.active: set[asyncio.Task[Any]] = set()
        self.draining = False  # set on shutdown: no new turns
        s = self.settings
        per_user = s.streams_per_user or max(2, s.max_concurrent_streams // 4)
        self.streams = StreamSlots(s.max_concurrent_streams, s.stream_wait_s, per_user=per_user)
        # Without sign-in everyone is the one local user: a share of the places would be all of them.
        self.shared_user = s.user_id if s.auth_users is None and not s.trust_iap else None

    async def stream_slot(self, user: str | None = None) -> StreamSlot:
        """A place for one streaming answer, within `stream_wait_s`, counted against `user`'s share of
        the places; `Busy` otherwise. A caller that must answer "busy" before it starts streaming (the
        API's status code, the page's input box) takes it first and hands it to `turn`."""
        try:
            return await self.streams.acquire(None if user == self.shared_user else user)
        except Busy:
            UI_REJECTED.labels("busy").inc()
            raise

    async def turn(
        self,
        user: str,
        session_id: str,
        text: str | Sequence[BaseMessage],
        params: TurnParams,
        *,
        human_id: str | None = None,
        slot: StreamSlot | None = None,
        stateless: bool = False,
    ) -> AsyncIterator[Delta | Done]:
        """Stream one turn. `stateless=True`: `text` is the whole conversation as messages (an OpenAI
        client's), and memory is neither read nor written (`ChatClient.stream_turn`).

        Every answer holds a place of `streams` (the one limit shared by the page,
        Gradio's `/chat` and `/api/chat`) while it runs, counted against `user`'s share: `slot` if the
        caller took one (released here, like one taken here), else one taken now; none free within the
        wait, or a `slot` taken without its user while `user` holds their share: a `Done("failed")`
        saying the server is busy."""
        try:
            if slot is None:
                slot = await self.stream_slot(user)
            elif user != self.shared_user:
                try:
                    await slot.claim(user)
                except Busy:
                    UI_REJECTED.labels("busy").inc()
                    raise
        except Busy as exc:
            yield Done("failed", str(exc))
            return
        try:
            # aclosing: a consumer leaving early (Stop, a client gone) cancels the graph at once.
            run = self._turn(user, session_id, text, params, human_id=human_id, stateless=stateless)
            async with contextlib.aclosing(run):
                async for event in run:
                    yield event
        finally:
            slot.release()

    async def _turn(
        self,
        user: str,
        session_id: str,
        text: str | Sequence[BaseMessage],
        params: TurnParams,
        *,
        human_id: str | None = None,
        stateless: bool = False,
    ) -> AsyncIterator[Delta | Done]:
        if isinstance(text, str):
            text = check_message(text, self.settings.max_message_chars)
        options = {
            "model": params.model,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "system_prompt": params.system_prompt,
            "seed": params.seed,
            "stop": list(params.stop) or None,
            "response_format": params.response_format,
            "tools": params.tools,
            "tool_choice": params.tool_choice,
        }
        started = time.perf_counter()
        first = True
        task = asyncio.current_task()
        if task is not None:
            self.active.add(task)
        UI_ACTIVE.inc()
        turn = self.client.stream_turn(
            user,
            session_id,
            text,
            options,
            human_id=human_id,
            stateless=stateless,
            caller_label=params.caller_label,
        )
        try:
            async with contextlib.aclosing(turn):
                async for event in turn:
                    if isinstance(event, Delta):
                        if first:
                            UI_FIRST_TOKEN.observe(time.perf_counter() - started)
                            first = False
                        yield event
                        continue
                    yield self._done(event)
        except (asyncio.CancelledError, GeneratorExit):
            UI_TURNS.labels("stopped").inc()
            raise
        finally:
            UI_ACTIVE.dec()
            if task is not None:
                self.active.discard(task)

    def _done(self, done: ClientDone) -> Done:
        if done.kind == "failed":
            UI_TURNS.labels("failed").inc()
            text = friendly_error(done.error) if done.error is not None else done.text
            return Done("failed", text, human_id=done.human_id, error=done.error)
        answer = done.answer
        assert answer is not None
        self.health.record_answer(done.meta, failed=done.kind == "backend_error")
        if done.kind == "backend_error" or (answer.interrupted and answer.interrupted != "stopped"):
            # The page shows the reference only; the detail is here.
            log.warning(
                "answer went wrong, reference %s: backend %s, route %r, error %s, interrupted %r",
                reference(answer.id),
                answer.backend,
                answer.route_reason,
                answer.error,
                answer.interrupted,
            )
        note = "not saved: the conversation store is unreachable" if done.save_error else None
        UI_TURNS.labels("ok" if done.kind == "answer" and not answer.interrupted else "backend_error").inc()
        return Done(
            done.kind,
            done.text,
            meta={**done.meta, **({"note": note} if note else {})},
            human_id=done.human_id,
            human_saved=done.saved,
            answer_id=answer.id,
            answer_saved=done.saved and done.kind == "answer",
            note=note,
        )

    # --- conversations (the client's, for the signed-in user) ---------------------------------
    def pages(self, user: str, session_id: str) -> AsyncIterator[list[BaseMessage]]:
        return self.client.pages(user, session_id)

    async def messages(self, user: str, session_id: str) -> list[BaseMessage]:
        return await self.client.messages(user, session_id)

    async def conversations(self, user: str, limit: int = 30, cursor: str | None = None) -> ConversationList:
        return await self.client.conversations(user, limit=limit, cursor=cursor)

    async def rename(self, user: str, session_id: str, title: str) -> None:
        await self.client.rename(user, session_id, title)

    async def delete(self, user: str, session_id: str) -> None:
        await self.client.delete(user, session_id)

    async def truncate(self, user: str, session_id: str, from_message_id: str) -> int:
        return await self.client.truncate(user, session_id, from_message_id)

    async def stopped_saved(self, human_id: str, limit_s: float) -> bool:
        """Wait (at most `limit_s`) until the stopped turn that asked `human_id` is saved; False if not."""
        return await self.client.stopped_saved(human_id, limit_s)

    async def saved(self, limit_s: float = 3.0) -> None:
        """Wait (at most `limit_s`) for the background saves of stopped turns."""
        await self.client.settle(limit_s)

    # --- shutdown ----------------------------------------------------------------------------
    async def drain(self, grace_s: float) -> None:
        """Let running answers finish for up to `grace_s`, then stop them (their partial text is saved)."""
        if self.active:
            await asyncio.wait(list(self.active), timeout=grace_s)
        for task in list(self.active):
            task.cancel()
        if self.active:
            await asyncio.wait(list(self.active), timeout=5)
        await self.client.settle(5)
