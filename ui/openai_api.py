"""An OpenAI-compatible endpoint: `GET /v1/models` and `POST /v1/chat/completions` (issue 14, first step).

Any OpenAI client (the `openai` SDK, LangChain's `ChatOpenAI`, Open WebUI) gets hybrid-chat's routing and
fallback. One implementation over the one core, `ChatService.turn`; streamed and non-streamed responses
are two renderings of the same events.

- Stateless by default: OpenAI clients send the whole conversation every time; it goes to the model as
  sent (`convert_to_messages`, `stateless=True`) and nothing is stored.
- Saving into a conversation: the header `x-hybrid-chat-conversation: ID` or `metadata.conversation_id`
  names one of the caller's conversations (an id the caller has not used starts one). Ids are scoped to
  their owner: two callers naming the same id have two conversations, and nobody can take an id before
  its owner uses it (issue 17, finding 10). The turn is then an ordinary
  turn of that conversation, as on the page: the stored conversation is the context, the request's
  last user message is the new question, and only the question and its answer are stored. The
  request's earlier messages are checked but not used (the client's copy of the history may be older,
  edited or shorter than the stored one; memory is the truth); the answer's `history` says whether they
  end as the stored conversation does (`matches`) or not (`differs`). A conversation the store refuses
  (an unowned Firestore session `legacy_owner` does not open to the caller) answers 404, with the
  page's text for one that cannot be found.

Sign-in: an API key (`Authorization: Bearer hck_...`, see `ui.auth.key_user`) or, without one, what
`/api/chat` takes (`api_user`: IAP, HTTP Basic with the configured users, or the local user). Shared with
`/api/chat` and the page: the per-user rate limit, the one limit on answers streaming at once, and
`EventStream` (the answer stops when the client goes away or stops reading).

Models: `hybrid-chat/auto`, `hybrid-chat/gemma`, `hybrid-chat/gemini` (the bare names work too). Which
backend answered never changes the text: `model` is `hybrid-chat/<backend that answered>`; non-streamed
responses carry `x-hybrid-chat-backend`, `x-hybrid-chat-route` and `x-hybrid-chat-fallback` headers, and
both carry the extension field `hybrid_chat` (`backend`, `requested_backend`, `route_reason`,
`fallback`, `interrupted`, `ttft_ms`) on the completion or on the final chunk of a stream.

Honoured as OpenAI does: `stop` (a string or up to 4, sent to either backend), `seed` (within the int32
range Gemini takes), `stream_options.include_usage` (`usage`: null on every chunk, then one chunk with
the usage), `user` (the caller's label for who is asking, at most 128 printable characters: written with
the turn's log line, never taken for an identity).

Structured output: `response_format` `json_object` or `json_schema` (graph.output): each backend is
asked to decode to it (vLLM's and llama.cpp's guided decoding, Gemini's response schema) and the answer
is checked against it; one that does not match is a 502 `invalid_output` (streamed: the text, then the
error event), never passed on as if it matched.

Tool calling as OpenAI does it: `tools` (function tools) and `tool_choice` ("auto", "none", "required",
or one function) go to the backend through LangChain's own `bind_tools` (graph.tools); an answer that
calls tools has `tool_calls` (an id, the function's name, its arguments as JSON text; `content` null
without text) and `finish_reason` "tool_calls", streamed as one `tool_calls` delta per call with its
`index` and `id`. The caller runs the tools and sends the results as `tool` messages (each with the
`tool_call_id` it answers) after the assistant message that made the calls. A turn with tools, or
with calls and results in its messages, goes to a backend that calls tools (the embedded Gemma
stand-in does not: routed to Gemini, the reason says so; with fallback off, refused in words). Saved
into a conversation, the call and the results are stored in order, so the next turn's prompt has them.

The `task` model (`hybrid-chat/task`) is for clients' background requests (titles, tags, follow-up
suggestions: Open WebUI's Task model setting): the cheaper, less loaded backend, answers capped at
`task_max_tokens`, and on a vLLM with priority scheduling a lower priority than people's turns.

Refused with 400 rather than ignored: `n` other than 1, `functions` and `function_call` (the
deprecated form of tools), `logprobs`, non-zero penalties, parts other than text in system, assistant
and tool messages and other than text, `image_url` and `file` in user ones, `function` messages.
Images and files (`data:` URLs, `file_data`) go through to the graph, which checks them from their
bytes and routes the turn to a backend that can read them
(links are refused: the graph never fetches a URL for a user).
Errors come in OpenAI's shape `{"error": {"message", "type", "param", "code"}}`; an error after a stream
started comes as one `data: {"error": ...}` event (the `openai` SDK raises it as `APIError`). Their
texts are this endpoint's: models by their ids here (the one asked for, and the fallback when it failed
too), "Your message is saved" only for a turn saved into a conversation. Each request answered with an
error is one log line (`log_refusal`: status, type, code, parameter, the API key's public id; never the
request's content), so operators see what clients are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from langchain_core.messages import BaseMessage, convert_to_messages
from pydantic import BaseModel, ConfigDict, ValidationError

from graph.finish import CONTENT_FILTER, LENGTH, STOP, TOOL_CALLS, finish_reason
from graph.memory.codec import message_text
from graph.memory.contract import AccessDenied, ConversationNotFound, MemoryUnavailable
from graph.memory.keys import KEY_RE, KeyStore, key_store, looks_like_key
from graph.output import OptionError, check_seed, response_format, stop_sequences
from graph.tools import ToolSpec, tool_spec
from graph.validation import InvalidInput, check_session_id
from ui.api import EventStream, api_user
from ui.auth import Identity, KeyRefused, bearer_token, key_user
from ui.chat import NOT_AVAILABLE, ChatService, Delta, Done, turn_params
from ui.limits import Busy, LimitExceeded, RateLimiter, StreamSlot, check_message

log = logging.getLogger(__name__)

PREFIX = "hybrid-chat/"
CONVERSATION_HEADER = "x-hybrid-chat-conversation"  # names the conversation to save the turn into
FILE_PARTS = frozenset({"image_url", "file"})  # OpenAI's content parts that carry a file
CREATED = 1_767_225_600  # the models' "created" (2026-01-01): fixed, so the list is stable
MAX_CALLER_LABEL = 128  # OpenAI's `user`: enough for a hash or an e-mail address


class CompletionRequest(BaseModel):
    """OpenAI's request body; unknown fields are accepted (clients send many) and ignored, except the
    ones `unsupported` refuses."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[dict[str, Any]]
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    n: int | None = None
    metadata: dict[str, Any] | None = None


class APIError(Exception):
    """An OpenAI-shaped error response."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _from_http(exc: HTTPException) -> APIError:
    """`api_user`'s refusals (401, 429 while throttled) in OpenAI's shape, their headers kept."""
    kinds = {
        401: ("authentication_error", "invalid_api_key"),
        429: ("rate_limit_error", "rate_limit_exceeded"),
    }
    type_, code = kinds.get(exc.status_code, ("invalid_request_error", None))
    return APIError(exc.status_code, str(exc.detail), type_, code=code, headers=dict(exc.headers or {}))


def _from_failed(done: Done, saved: bool = False) -> APIError:
    """A turn refused before any model (`Done("failed")`) or one no backend answered (`backend_error`).
    `saved`: the turn went into a conversation and its question is stored (a stateless call stores
    nothing, and its texts do not say otherwise)."""
    if done.kind == "backend_error":
        return _backend_failure(done.meta, saved and done.human_saved)
    err = done.error
    if isinstance(err, InvalidInput | LimitExceeded):
        return APIError(400, done.text, param=getattr(err, "param", "messages"))
    if isinstance(err, AccessDenied | ConversationNotFound):
        return APIError(404, done.text, code="conversation_not_found")
    if isinstance(err, MemoryUnavailable):
        return APIError(503, done.text, "service_unavailable")
    if "busy" in done.text.lower():  # the stream limit, when the turn took its own place
        return APIError(503, done.text, "service_unavailable", code="overloaded")
    return APIError(500, done.text, "server_error")


# A backend's failure (graph.nodes' error kinds) in words for the error text.
FAILURE_WORDS = {
    "first_token_timeout": "no first token in time",
    "timeout": "it timed out",
    "circuit_open": "it is marked down after repeated failures",
    "connection": "it cannot be reached",
    "http_429": "it is rate-limited",
}


def _backend_failure(meta: dict[str, Any], saved: bool) -> APIError:
    """No answer, in this endpoint's words: the models named by their ids here, the one that failed
    last and, after a fallback, the one asked for as well; "saved" only when it is."""
    failed = f"{PREFIX}{meta.get('backend')}"
    asked = f"{PREFIX}{meta.get('requested_backend') or meta.get('backend')}"
    kept = " Your message is saved in the conversation; its answer is not." if saved else ""
    kind = str(meta.get("error") or "")
    if kind == "rejected_input":
        return APIError(
            400,
            f"{failed} did not accept the attachment: it cannot read this kind of file, or the file is not "
            f"valid. Send it to another model, or without the attachment.{kept}",
            param="messages",
            code="unsupported_attachment",
        )
    if kind == "invalid_output":  # the model answered, but not as response_format asked
        return APIError(
            502,
            f"{failed} answered outside the requested response_format: {meta.get('detail') or 'unknown'}. "
            f"Try again, or simplify the schema.{kept}",
            "server_error",
            param="response_format",
            code="invalid_output",
        )
    why = FAILURE_WORDS.get(kind, f"error: {kind or 'unknown'}")
    if failed == asked:
        text = f"{failed} did not answer ({why}): try again in a moment, or use another model."
    else:
        text = f"{asked} did not answer, nor did its fallback {failed} ({why}): try again in a moment."
    return APIError(503, text + kept, "service_unavailable", code="no_backend_available")


def unsupported(body: CompletionRequest) -> None:
    """Parameters this endpoint cannot honour: refused clearly, never silently ignored."""
    extra = body.model_extra or {}
    if body.n not in (None, 1):
        raise APIError(
            400,
            "Only n=1 is supported: one answer per request. Send n=1 (or leave n out), and one request "
            "per answer you want.",
            param="n",
            code="unsupported_n",
        )
    for name in ("functions", "function_call"):  # OpenAI's deprecated form of tools
        if extra.get(name) not in (None, [], "none", "auto"):
            raise APIError(
                400,
                f"`{name}` is not supported: send the functions as `tools` (and `function_call` as "
                "`tool_choice`).",
                param=name,
            )
    if extra.get("logprobs") or extra.get("top_logprobs"):
        raise APIError(
            400, "`logprobs` are not supported: leave out logprobs and top_logprobs.", param="logprobs"
        )
    for name in ("presence_penalty", "frequency_penalty"):
        if extra.get(name) not in (None, 0, 0.0):
            raise APIError(
                400,
                f"`{name}` is not supported: leave it out or send 0.",
                param=name,
                code="unsupported_parameter",
            )
    if body.stream_options is not None and not body.stream:
        raise APIError(400, "`stream_options` needs `stream: true`.", param="stream_options")
    if not isinstance((body.stream_options or {}).get("include_usage", False), bool):
        raise APIError(
            400, "`stream_options.include_usage` must be true or false.", param="stream_options.include_usage"
        )


def caller_label(user: str | None) -> str | None:
    """OpenAI's `user`: the caller's own label for who is asking, written with the turn's log line and
    nothing else (never an identity: the API key or sign-in says who calls). Bounded and printable, so it
    cannot flood or forge log lines."""
    if user is None or user == "":
        return None
    if len(user) > MAX_CALLER_LABEL:
        raise APIError(
            400,
            f"`user` is {len(user):,} characters long; the limit is {MAX_CALLER_LABEL}: send a shorter "
            "label (a hash of your user's id, for one).",
            param="user",
        )
    if not user.isprintable():
        raise APIError(400, "`user` must be printable text: remove its control characters.", param="user")
    return user


def tool_options(body: CompletionRequest) -> ToolSpec | None:
    """`tools` and `tool_choice` checked as the graph checks them (graph.tools), refused with their
    `param`."""
    extra = body.model_extra or {}
    try:
        return tool_spec(extra.get("tools"), extra.get("tool_choice"))
    except OptionError as exc:
        raise APIError(400, str(exc), param=exc.param) from None


def output_options(body: CompletionRequest) -> tuple[list[str], int | None, dict[str, Any] | None]:
    """`stop`, `seed` and `response_format` (None for text) checked as the graph checks them
    (graph.output), refused with their `param`."""
    fmt = (body.model_extra or {}).get("response_format")
    try:
        return stop_sequences(body.stop), check_seed(body.seed), fmt if response_format(fmt) else None
    except OptionError as exc:
        raise APIError(400, str(exc), param=exc.param) from None


def _text(content: Any, index: int) -> str:
    """A message's text: a string, or a list of text parts (any other part is refused)."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise APIError(
                    400,
                    f"Only text parts are supported here (messages[{index}] has {str(kind)[:40]!r}); images "
                    "and files go in user messages, as image_url or file parts with their data.",
                    param=f"messages[{index}].content",
                )
        return "".join(texts)
    raise APIError(400, f"messages[{index}].content must be text.", param=f"messages[{index}].content")


def _content(content: Any, index: int) -> str | list[dict[str, Any]]:
    """A user message's content: its text, or its text and file parts (OpenAI's `image_url` with a
    `data:` URL, `file` with `file_data`) as they are. The graph reads, checks (from the bytes, not the
    declared type) and routes the files (`graph.attachments`); links are refused there."""
    if not isinstance(content, list) or not any(
        isinstance(p, dict) and p.get("type") in FILE_PARTS for p in content
    ):
        return _text(content, index)
    return [
        p
        if isinstance(p, dict) and p.get("type") in FILE_PARTS
        else {"type": "text", "text": _text([p], index)}
        for p in content
    ]


def _tool_calls(calls: Any, index: int) -> list[dict[str, Any]]:
    """An assistant message's `tool_calls` in OpenAI's shape, checked (their arguments are JSON text)."""
    where = f"messages[{index}].tool_calls"
    if not isinstance(calls, list):
        raise APIError(400, f"`{where}` must be a list.", param=where)
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        ok = isinstance(fn, dict) and isinstance(call.get("id"), str) and isinstance(fn.get("name"), str)
        try:
            args = json.loads(fn.get("arguments") or "{}") if ok else None  # type: ignore[union-attr]
        except (TypeError, json.JSONDecodeError):
            args = None
        if not ok or not isinstance(args, dict):
            raise APIError(
                400,
                f'`{where}[{j}]` must be {{"id", "type": "function", "function": {{"name", "arguments"}}}}, '
                "its arguments a JSON object as text.",
                param=f"{where}[{j}]",
            )
        out.append(
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": fn["name"], "arguments": json.dumps(args)},
            }
        )  # type: ignore[index]
    return out


def conversation(raw: list[dict[str, Any]]) -> tuple[list[BaseMessage], str | None]:
    """OpenAI `messages` as langchain messages (user, assistant with its tool calls, tool results) and the
    system prompt (the system and developer messages' texts joined; None when there are none: the
    service's persona applies)."""
    systems: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, m in enumerate(raw):
        role = m.get("role") if isinstance(m, dict) else None
        if role in ("system", "developer"):
            systems.append(_text(m.get("content"), i))
        elif role == "user":
            turns.append({"role": role, "content": _content(m.get("content"), i)})
        elif role == "assistant":
            if m.get("function_call"):
                raise APIError(
                    400,
                    "`function_call` is not supported: send `tool_calls`.",
                    param=f"messages[{i}].function_call",
                )
            turn: dict[str, Any] = {"role": role, "content": _text(m.get("content"), i)}
            if m.get("tool_calls"):
                turn["tool_calls"] = _tool_calls(m["tool_calls"], i)
            turns.append(turn)
        elif role == "tool":
            call_id = m.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise APIError(
                    400,
                    f"messages[{i}] needs the `tool_call_id` it answers.",
                    param=f"messages[{i}].tool_call_id",
                )
            turns.append({"role": role, "content": _text(m.get("content"), i), "tool_call_id": call_id})
        else:
            raise APIError(
                400,
                f"messages[{i}]: role {str(role)[:20]!r} is not supported (system, user, assistant, tool).",
                param=f"messages[{i}].role",
            )
    if not turns or turns[-1]["role"] not in ("user", "tool"):
        raise APIError(400, "The last message must be the user's, or a tool's result.", param="messages")
    last = turns[-1]["content"]
    if turns[-1]["role"] == "user" and not (last.strip() if isinstance(last, str) else last):
        raise APIError(400, "The last user message is empty.", param="messages")
    return convert_to_messages(turns), ("\n\n".join(systems) if systems else None)


def new_input(messages: list[BaseMessage]) -> list[BaseMessage]:
    """The request's new input for a saved turn: its last user message, or the tool results after the
    last answer (the calls it made, run by the caller)."""
    if messages[-1].type != "tool":
        return [messages[-1]]
    start = len(messages)
    while start > 0 and messages[start - 1].type == "tool":
        start -= 1
    return messages[start:]


def tool_calls_out(done: Done) -> list[dict[str, Any]]:
    """The answer's tool calls in OpenAI's shape (`arguments` as JSON text)."""
    return [
        {
            "id": str(c.get("id")),
            "type": "function",
            "function": {"name": str(c.get("name")), "arguments": json.dumps(c.get("args") or {})},
        }
        for c in done.meta.get("tool_calls") or []
    ]


def conversation_id(header: str | None, metadata: dict[str, Any] | None) -> str | None:
    """The conversation to save into (header or `metadata.conversation_id`), None for a stateless turn;
    400 when it is not a valid id or the two disagree."""
    raw = (metadata or {}).get("conversation_id")
    if raw is not None and not isinstance(raw, str):
        raise APIError(400, "metadata.conversation_id must be a string.", param="metadata.conversation_id")
    named = [v.strip() for v in (header, raw) if v and v.strip()]
    if not named:
        return None
    if len(set(named)) > 1:
        raise APIError(
            400,
            f"The {CONVERSATION_HEADER} header and metadata.conversation_id name different conversations.",
            param="metadata.conversation_id",
        )
    try:
        return check_session_id(named[0])
    except InvalidInput as exc:
        raise APIError(400, f"Invalid conversation id: {exc}.", param="metadata.conversation_id") from None


def _ascii(value: Any) -> str:
    return str(value).encode("ascii", "replace").decode()[:300]


def _extension(done: Done, saved_to: dict[str, str] | None = None) -> dict[str, Any]:
    meta = done.meta
    ext = {
        "backend": meta.get("backend"),
        "requested_backend": meta.get("requested_backend"),
        "route_reason": meta.get("route_reason"),
        "fallback": bool(meta.get("fallback")),
        "interrupted": meta.get("interrupted"),
        "ttft_ms": meta.get("ttft_ms"),
    }
    if saved_to is not None:  # saved: where, whether the store took it, whether the client's copy agreed
        ext.update(saved_to, saved=done.answer_saved, note=done.note)
    return ext


def _store_refusal(exc: Exception) -> APIError:
    """A conversation the store refuses (`AccessDenied`: an unowned Firestore session the settings do not
    open to this user): 404 with the page's text for one that cannot be found; the store down: 503."""
    if isinstance(exc, AccessDenied):
        return APIError(404, NOT_AVAILABLE, param="metadata.conversation_id", code="conversation_not_found")
    return APIError(
        503, "The conversation store is unreachable right now: try again in a moment.", "service_unavailable"
    )


def _keys(service: ChatService) -> KeyStore | None:
    """The API keys kept beside the conversation store; None for a store without (every key refused)."""
    try:
        return key_store(service.client.store)
    except TypeError:
        log.info("API keys are not available with %s", type(service.client.store).__name__)
        return None


def _finish(done: Done) -> str:
    """OpenAI's finish reason: the answer's own (graph.finish speaks OpenAI's words), `stop` when it
    has none or one OpenAI has no word for."""
    reason = finish_reason(done.meta.get("finish_reason"))
    return reason if reason in (LENGTH, CONTENT_FILTER, TOOL_CALLS) else STOP


def _message(done: Done) -> dict[str, Any]:
    """The answer as OpenAI's assistant message: its text, or its tool calls (content null without text)."""
    calls = tool_calls_out(done)
    if not calls:
        return {"role": "assistant", "content": done.text}
    return {"role": "assistant", "content": done.text or None, "tool_calls": calls}


def _usage(done: Done) -> dict[str, int]:
    prompt = int(done.meta.get("input_tokens") or 0)
    completion = int(done.meta.get("output_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _data(payload: dict[str, Any] | str) -> bytes:
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


def key_id(request: Request) -> str:
    """The public id of the API key a request carries ("none": no key; "malformed": a token that claims
    to be one of ours and is not), for the log: never the key itself."""
    token = bearer_token(request)
    if token is None or not looks_like_key(token):
        return "none"
    match = KEY_RE.match(token)
    return match.group(1) if match else "malformed"


def log_refusal(request: Request, error: APIError, *, streaming: bool = False) -> None:
    """One line per /v1 request answered with an error, so operators see what clients are refused:
    the status, the code, the parameter and the key's public id; never the request's content."""
    log.warning(
        "%s %s %s%s: status=%d type=%s code=%s param=%s key=%s",
        request.method,
        request.url.path,
        "refused" if error.status < 500 else "failed",
        " mid-stream" if streaming else "",
        error.status,
        error.type,
        error.code or "-",
        error.param or "-",
        key_id(request),
    )


def model_ids(service: ChatService) -> dict[str, str]:
    """OpenAI model id -> what the router calls it (`hybrid-chat/auto` -> `auto`)."""
    return {f"{PREFIX}{m}": m for m in service.client.models}


def openai_router(service: ChatService, identity: Identity, limiter: RateLimiter) -> APIRouter:
    router = APIRouter()
    keys = _keys(service)

    async def caller(request: Request) -> str:
        """The API key's user; without a key, whoever the sign-in mode says (`api_user`)."""
        try:
            user = await key_user(keys, request)
        except KeyRefused as exc:
            raise APIError(401, str(exc), "authentication_error", code="invalid_api_key") from None
        except MemoryUnavailable:
            log.warning("API key check failed: the store is unreachable")
            raise APIError(
                503, "The API key cannot be checked right now: try again in a moment.", "service_unavailable"
            ) from None
        if user is not None:
            return user
        try:
            return await api_user(identity, request)
        except HTTPException as exc:
            raise _from_http(exc) from None

    @router.get("/v1/models")
    async def models(request: Request) -> Response:
        try:
            await caller(request)
        except APIError as exc:
            log_refusal(request, exc)
            return exc.response()
        data = [
            {"id": m, "object": "model", "created": CREATED, "owned_by": "hybrid-chat"}
            for m in model_ids(service)
        ]
        return JSONResponse({"object": "list", "data": data})

    @router.post("/v1/chat/completions")
    async def completions(request: Request) -> Response:
        try:
            return await _completions(request)
        except APIError as exc:
            log_refusal(request, exc)
            return exc.response()

    async def _completions(request: Request) -> Response:
        user = await caller(request)  # who calls first, then the body
        if service.draining:
            raise APIError(
                503, "The server is restarting: try again in a few seconds.", "service_unavailable"
            )
        try:
            body = CompletionRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            fields = sorted({".".join(str(p) for p in e["loc"]) or "body" for e in exc.errors()})
            raise APIError(400, f"Invalid request body: check {', '.join(fields)[:200]}.") from None
        ids = model_ids(service)
        model = ids.get(body.model) or (body.model if body.model in ids.values() else None)
        if model is None:
            raise APIError(
                404,
                f"The model {body.model[:60]!r} does not exist: use one of {', '.join(ids)}.",
                param="model",
                code="model_not_found",
            )
        unsupported(body)
        tools = tool_options(body)
        stop, seed, answer_format = output_options(body)
        label = caller_label(body.user)
        saving = conversation_id(request.headers.get(CONVERSATION_HEADER), body.metadata)
        messages, system = conversation(body.messages)
        # The new question of a saved turn: its text (checked like the page's), or the message itself
        # when it carries files (the graph checks its text and its files).
        question: str | list[BaseMessage] = new_input(messages)
        if saving is not None and messages[-1].type == "human" and isinstance(messages[-1].content, str):
            try:
                question = check_message(messages[-1].content, service.settings.max_message_chars)
            except LimitExceeded as exc:
                raise APIError(400, str(exc), param="messages") from None
        try:
            params = turn_params(
                service.settings,
                model,
                body.temperature,
                body.top_p,
                body.max_completion_tokens or body.max_tokens,
                system,
                seed=seed,
                stop=stop,
                response_format=answer_format,
                caller_label=label,
                tools=tools.tools if tools else None,
                tool_choice=tools.choice if tools else None,
                models=service.client.models,
            )
        except LimitExceeded as exc:
            raise APIError(400, str(exc)) from None
        try:
            await limiter.acquire(user)
        except LimitExceeded as exc:
            wait = max(1, round(await limiter.retry_after(user) + 0.5))
            raise APIError(
                429,
                str(exc),
                "rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(wait)},
            ) from None
        saved_to = None
        if saving is not None:
            await _check_owner(user, saving)
            agrees = await _agrees(user, saving, messages[: len(messages) - len(new_input(messages))])
            saved_to = {"conversation_id": saving, "history": "matches" if agrees else "differs"}
        try:
            slot = await service.stream_slot(user)
        except Busy as exc:
            raise APIError(
                503,
                str(exc),
                "service_unavailable",
                code="overloaded",
                headers={"Retry-After": str(exc.retry_after_s)},
            ) from None
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if saving is None:
            turn = service.turn(user, uuid.uuid4().hex, messages, params, slot=slot, stateless=True)
        else:  # an ordinary turn of the stored conversation: only the question and its answer are new
            turn = service.turn(user, saving, question, params, slot=slot)
        if body.stream:
            usage = bool((body.stream_options or {}).get("include_usage"))
            events = _chunks(request, turn, completion_id, body.model, usage, saved_to)
            return EventStream(
                events,
                slot,
                write_timeout_s=service.settings.stream_write_timeout_s,
                route=request.url.path,
            )
        return await _whole(request, turn, slot, completion_id, saved_to)

    async def _check_owner(user: str, session_id: str) -> None:
        """404 for a conversation the store refuses, with the page's text for one that cannot be found; an
        id the user has not used is a new conversation of theirs (its first turn creates it), whoever
        else has one of that id."""
        try:
            await service.client.check_owner(user, session_id)
        except ConversationNotFound:
            return
        except (AccessDenied, MemoryUnavailable) as exc:
            raise _store_refusal(exc) from None

    async def _agrees(user: str, session_id: str, prior: list[BaseMessage]) -> bool:
        """Whether the request's earlier messages end as the stored conversation does (role and text),
        as far back as the model's window goes (`history_max_messages`). Either way memory is what the
        model sees; the answer says which (`history`), so a client can tell that its copy was not used.
        One window read of at most that many messages (a Firestore read per message)."""
        n = min(len(prior), service.settings.history_max_messages)
        if n == 0:
            return True
        try:
            stored = await service.client.store.history(session_id, user).aget_window(max_messages=n)
        except (AccessDenied, MemoryUnavailable) as exc:
            raise _store_refusal(exc) from None
        if len(stored) < n:
            return False  # memory holds less than the client sent (or nothing: a new conversation)
        return [(m.type, message_text(m).strip()) for m in stored] == [
            (m.type, message_text(m).strip()) for m in prior[-n:]
        ]

    async def _whole(
        request: Request,
        turn: AsyncIterator[Delta | Done],
        slot: StreamSlot,
        cid: str,
        saved_to: dict[str, str] | None,
    ) -> Response:
        """The non-streamed answer: the turn run to its end, stopped if the client goes away first."""

        async def run() -> Done | None:
            async with contextlib.aclosing(turn) as events:
                last = None
                async for event in events:
                    last = event if isinstance(event, Done) else last
                return last

        async def gone() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        running, watching = asyncio.ensure_future(run()), asyncio.ensure_future(gone())
        try:
            await asyncio.wait({running, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (running, watching):
                task.cancel()
            await asyncio.gather(running, watching, return_exceptions=True)
            slot.release()
        if running.cancelled():
            log.info("a /v1/chat/completions client went away: its answer was stopped")
            return Response(status_code=499)
        done = running.result()
        if done is None:
            raise APIError(500, "No answer came back.", "server_error")
        if done.kind != "answer":
            raise _from_failed(done, saved=saved_to is not None)
        ext = _extension(done, saved_to)
        body = {
            "id": cid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": f"{PREFIX}{ext['backend']}",
            "choices": [
                {
                    "index": 0,
                    "message": _message(done),
                    "finish_reason": _finish(done),
                    "logprobs": None,
                }
            ],
            "usage": _usage(done),
            "hybrid_chat": ext,
        }
        headers = {
            "x-hybrid-chat-backend": _ascii(ext["backend"]),
            "x-hybrid-chat-route": _ascii(ext["route_reason"] or ""),
            "x-hybrid-chat-fallback": "true" if ext["fallback"] else "false",
        }
        if saved_to is not None:
            headers[CONVERSATION_HEADER] = _ascii(saved_to["conversation_id"])
            headers["x-hybrid-chat-saved"] = "true" if done.answer_saved else "false"
            headers["x-hybrid-chat-history"] = saved_to["history"]
        return JSONResponse(body, headers=headers)

    async def _chunks(
        request: Request,
        turn: AsyncIterator[Delta | Done],
        cid: str,
        requested: str,
        include_usage: bool,
        saved_to: dict[str, str] | None,
    ) -> AsyncIterator[bytes]:
        """The streamed answer. The backend is known at the end only: the chunks before name the model
        asked for; the final chunk names the backend that answered and carries `hybrid_chat`."""
        created = int(time.time())

        def chunk(model: str, delta: dict[str, Any], finish: str | None, **extra: Any) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            # With include_usage, OpenAI's chunks all carry `usage`: null but on the last, extra one.
            usage = {"usage": None} if include_usage else {}
            return _data(
                {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [choice],
                    **usage,
                    **extra,
                }
            )

        yield chunk(requested, {"role": "assistant", "content": ""}, None)
        sent = 0
        async with contextlib.aclosing(turn) as events:
            async for event in events:
                if isinstance(event, Delta):
                    if len(event.text) > sent:
                        yield chunk(requested, {"content": event.text[sent:]}, None)
                        sent = len(event.text)
                    continue
                if event.kind != "answer":
                    error = _from_failed(event, saved=saved_to is not None)
                    log_refusal(request, error, streaming=True)
                    yield _data(error.body())
                    return
                model = f"{PREFIX}{event.meta.get('backend')}"
                if len(event.text) > sent:
                    yield chunk(model, {"content": event.text[sent:]}, None)
                for i, call in enumerate(tool_calls_out(event)):  # each call whole, by its index and id
                    yield chunk(model, {"tool_calls": [{"index": i, **call}]}, None)
                yield chunk(model, {}, _finish(event), hybrid_chat=_extension(event, saved_to))
                if include_usage:
                    yield _data(
                        {
                            "id": cid,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": model,
                            "choices": [],
                            "usage": _usage(event),
                        }
                    )
        yield _data("[DONE]")

    return router
