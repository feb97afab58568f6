"""`POST /api/chat`: the programmatic HTTP API, streaming Server-Sent Events straight from the graph.

The browser goes through Gradio's queue, which costs tens of milliseconds of CPU per event on top of
the graph; a service calling the chat from code needs none of it. This route shares everything else
with the page: the same `ChatService.turn` (graph, memory, ownership), the same sign-in (IAP's signed
header, or HTTP Basic with the configured users, or the single local user), the same limits.

Request: `{"message": "...", "model": "auto", "session_id": "...", "temperature": 0.2, "max_tokens": 256,
"top_p": 0.9, "system_prompt": "...", "attachments": [{"data": "<base64>", "name": "shot.png"}]}` (only
`message` is required, and it may be empty when there are attachments; no `session_id` starts a
conversation with a new id). A `session_id` names one of the caller's conversations, or starts one: ids
are scoped to their owner, so another user's conversation of the same id is a different one, never
reached from here (issue 17, finding 10). An attachment is an image (PNG, JPEG, GIF, WebP) or a PDF,
base64 in JSON (what an SSE client sends without multipart); its type is sniffed from the bytes
(`mime_type`, if sent, is ignored), and it is checked here as the graph does (`graph.validation`): a bad
one is refused with 400 saying why, before any model is called. The whole body is bounded by
`HYBRID_CHAT_MAX_REQUEST_BYTES` (413).
Response: `text/event-stream`; `event: delta` with `{"text": "<the new piece>"}` as tokens come, then one
`event: done` with `{"kind": "answer"|"backend_error"|"failed", "text", "session_id", "meta"}`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from langchain_core.messages import BaseMessage, HumanMessage
from pydantic import BaseModel, Field, ValidationError
from starlette.types import Message, Receive, Scope, Send

from graph.validation import InvalidInput, check_session_id
from ui.auth import Identity
from ui.chat import ChatService, Delta, Done, turn_params
from ui.limits import Busy, LimitExceeded, RateLimited, RateLimiter, StreamSlot, check_message
from ui.security import client_address
from ui.throttle import REFUSAL

log = logging.getLogger(__name__)


class AttachmentIn(BaseModel):
    """One file of `POST /api/chat`: its bytes in base64; the bytes decide its type, not the name."""

    data: str
    name: str | None = Field(default=None, max_length=200)
    mime_type: str | None = Field(default=None, max_length=100)  # accepted, not trusted


class ChatRequest(BaseModel):
    message: str = ""
    attachments: list[AttachmentIn] = Field(default_factory=list, max_length=64)
    model: str | None = None
    session_id: str | None = Field(default=None, max_length=200)
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    system_prompt: str | None = None


def require_json(request: Request) -> None:
    """415 unless the body is declared JSON (`application/json` or a `+json` type, any charset): a
    form, `text/plain` or multipart body is not parsed as JSON, and a form on another site cannot send
    JSON without a preflight (which is refused)."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        raise HTTPException(415, "Send the body as JSON (Content-Type: application/json).")


async def read_body(request: Request) -> ChatRequest:
    """The request's JSON as a `ChatRequest`; 415 when it is not declared JSON, 400 naming the fields at
    fault, never echoing the input."""
    require_json(request)
    try:
        return ChatRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in e["loc"]) or "body" for e in exc.errors()})
        raise HTTPException(400, f"Invalid request body: check {', '.join(fields)[:200]}.") from None


def _with_attachments(text: str, files: list[AttachmentIn], service: ChatService) -> HumanMessage:
    """The user's message with its files as LangChain standard blocks, each checked from its bytes
    (`graph.nodes.check_attachments`, the graph's own check: type, size, count, decoding, pixels, PDF
    pages); `InvalidInput` says why not. Runs in a thread: decoding an image is CPU work."""
    from graph.nodes import check_attachments  # the graph's modules load with the first attachment

    blocks: list[dict[str, Any]] = [
        {"type": "image", "base64": f.data, **({"filename": f.name} if f.name else {})} for f in files
    ]
    probe = HumanMessage(content=blocks)
    infos = check_attachments([probe], service.settings)
    for block, info in zip(blocks, infos, strict=True):
        block["type"] = "file" if info.kind == "pdf" else "image"
        block["mime_type"] = info.mime_type
    content: list[str | dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    return HumanMessage(content=[*content, *blocks])


def checked_session_id(value: str | None) -> str | None:
    """A session id sent by a client, stripped (None when absent or blank); 400 saying why when the
    graph would refuse it (`graph.validation.check_session_id`), before any turn starts."""
    session_id = (value or "").strip()
    if not session_id:
        return None
    try:
        return check_session_id(session_id)
    except InvalidInput as exc:
        raise HTTPException(400, f"{str(exc)[:1].upper()}{str(exc)[1:]}.") from None


def sse_event(event: str, data: dict[str, Any]) -> bytes:
    """One Server-Sent Event (shared with the page's straight route, ui/live.py)."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def api_user(identity: Identity, request: Request) -> str:
    """The caller, as the settings say; 401 when the request does not prove it, 429 (with `Retry-After`)
    while its user name or address is throttled for failed passwords (`ui.throttle`, shared with the
    login form): a right password is refused then too."""
    if identity.mode == "local":
        return identity.settings.user_id
    if identity.mode == "iap":
        user = await identity.iap_user(request)
        if user:
            return user
        raise HTTPException(401, "IAP identity missing or invalid")
    header = request.headers.get("authorization", "")
    if header.lower().startswith("basic "):
        try:
            name, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            name, password = "", ""
        address = client_address(request.scope)
        wait = await identity.throttle.begin(name, address)
        if wait > 0:
            raise HTTPException(429, REFUSAL, headers={"Retry-After": identity.throttle.retry_after(wait)})
        assert identity.sessions is not None
        user = identity.sessions.check_password(name, password)  # constant time in what was right
        if user is not None:
            await identity.throttle.succeeded(name, address)
            return user
        await identity.throttle.failed(name, address)
    raise HTTPException(
        401, "sign in with HTTP Basic", headers={"WWW-Authenticate": 'Basic realm="hybrid-chat"'}
    )


class EventStream(Response):
    """The answer's Server-Sent Events, bounded on both sides of the connection.

    - The client goes away (`http.disconnect`): the stream is cancelled at once, which cancels the
      graph and with it the backend's request (the graph saves what streamed, marked stopped).
      Starlette's `StreamingResponse` would only notice at its next write, and not at all while a
      backend is slow to send its first token.
    - The client stops reading: once the socket's buffers are full a write waits; a write that waits
      longer than `write_timeout_s` drops the client (the connection is closed, the answer stopped).
    - Either way, and at the end, the answer's place among the streams (`slot`) is released.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncIterator[bytes],
        slot: StreamSlot | None,
        *,
        write_timeout_s: float,
        route: str = "/api/chat",
    ) -> None:
        """`route`: the way in whose client the log lines speak of."""
        self.events = events
        self.slot = slot
        self.write_timeout_s = write_timeout_s
        self.route = route
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-store"})  # no body attribute: no content-length

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._serve(receive, send)
        finally:
            if self.slot is not None:  # None: the answer's place is held elsewhere (ui/live.py)
                self.slot.release()
            with contextlib.suppress(Exception):
                await self.events.aclose()  # never started (a client gone at once): nothing runs

    async def _serve(self, receive: Receive, send: Send) -> None:
        async def write(message: Message) -> None:
            await asyncio.wait_for(send(message), timeout=self.write_timeout_s)

        async def stream() -> None:
            await write({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async with contextlib.aclosing(self.events) as events:
                async for chunk in events:
                    await write({"type": "http.response.body", "body": chunk, "more_body": True})
            await write({"type": "http.response.body", "body": b"", "more_body": False})

        async def gone() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        streaming = asyncio.ensure_future(stream())
        watching = asyncio.ensure_future(gone())
        try:
            await asyncio.wait({streaming, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (streaming, watching):
                task.cancel()
            await asyncio.gather(streaming, watching, return_exceptions=True)
        if not streaming.cancelled() and isinstance(streaming.exception(), TimeoutError):
            # Returning with the response unfinished makes the server close the connection.
            log.warning("dropped a %s client that stopped reading for %g s", self.route, self.write_timeout_s)
        elif streaming.cancelled():
            log.info("a %s client went away: its answer was stopped", self.route)
        elif streaming.exception() is not None:
            raise streaming.exception()  # type: ignore[misc]


def api_router(service: ChatService, identity: Identity, limiter: RateLimiter) -> APIRouter:
    router = APIRouter()

    @router.post("/api/chat")
    async def chat(request: Request) -> Response:
        # Who calls first, then the body (bounded by the app's max_body_size): a stranger's upload is
        # refused before a byte of it is read.
        user = await api_user(identity, request)
        if service.draining:
            raise HTTPException(503, "The server is restarting: send your message again in a few seconds.")
        body = await read_body(request)
        try:
            if body.attachments and not body.message.strip():
                text = ""
            else:
                text = check_message(body.message, service.settings.max_message_chars)
            params = turn_params(
                service.settings,
                body.model,
                body.temperature,
                body.top_p,
                body.max_tokens,
                body.system_prompt,
                models=service.client.models,
            )
        except LimitExceeded as exc:
            raise HTTPException(400, str(exc)) from None
        session_id = checked_session_id(body.session_id)
        # The rate limit before the attachments: decoding images is the costly check, and a user must
        # not make the server decode without bound by sending messages that are then refused.
        try:
            await limiter.acquire(user)
        except RateLimited as exc:
            raise HTTPException(429, str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from None
        question: str | list[BaseMessage] = text
        if body.attachments:
            try:
                question = [await asyncio.to_thread(_with_attachments, text, body.attachments, service)]
            except InvalidInput as exc:
                raise HTTPException(400, f"{str(exc)[:1].upper()}{str(exc)[1:]}.") from None
        session_id = session_id or uuid.uuid4().hex
        # A place among the answers streaming at once (shared with the page), before the response
        # starts: a busy server can still say 503 and when to come back.
        try:
            slot = await service.stream_slot(user)
        except Busy as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from None

        async def events() -> AsyncIterator[bytes]:
            sent = 0
            async for event in service.turn(user, session_id, question, params, slot=slot):
                if isinstance(event, Delta):
                    yield sse_event("delta", {"text": event.text[sent:]})
                    sent = len(event.text)
                elif isinstance(event, Done):
                    yield sse_event(
                        "done",
                        {
                            "kind": event.kind,
                            "text": event.text,
                            "session_id": session_id,
                            "meta": event.meta,
                        },
                    )

        return EventStream(events(), slot, write_timeout_s=service.settings.stream_write_timeout_s)

    # Without this, another method falls through to the Gradio mount at "/" and gets its 404.
    @router.api_route("/api/chat", methods=["GET", "HEAD", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def chat_other_methods() -> Response:
        raise HTTPException(405, "Use POST.", headers={"Allow": "POST"})

    return router
