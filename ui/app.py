"""The ASGI app: the Gradio chat page mounted in FastAPI beside /healthz, /readyz and /metrics.

The page (Gradio 6 Blocks) is a thin layer over `ui.chat.ChatService`: a conversations sidebar
(newest first, New, resume, rename, delete), the chat with streaming answers, Stop, regenerate,
edit-and-resend and copy, the model choice and generation settings, and a health dot per backend.
History lives in the memory store; the browser holds nothing but what it displays. Per-tab state
(the open conversation and the rows on screen with their stored ids) is a `gr.State`, kept on the
server. Handlers are async and never block the event loop.

Programmatic users call the same service through Gradio's API: `/chat` (message, model, session_id)
streams the answer as text; `/conversations` and `/conversation` list and read the caller's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from graph.client import ChatClient
from graph.memory.codec import validate_title
from graph.memory.contract import AccessDenied, ConversationNotFound, MemoryUnavailable
from graph.settings import Settings
from ui import security
from ui.api import api_router
from ui.auth import Identity
from ui.chat import (
    MODEL_CHOICES,
    UI_REJECTED,
    ChatService,
    Delta,
    Done,
    TurnParams,
    chatbot_value,
    friendly_error,
    render_answer,
    rows_from_messages,
    turn_params,
)
from ui.limits import LimitExceeded, RateLimiter, check_message
from ui.security import parse_origins
from ui.theme import CSS, theme

log = logging.getLogger(__name__)

CONVERSATIONS_PAGE = 30
PHONE_MAX_WIDTH = 768
# On a phone the sidebar would cover the chat: close it at load and after picking a conversation.
CLOSE_SIDEBAR_ON_PHONE = f"""() => {{
  if (window.innerWidth >= {PHONE_MAX_WIDTH}) return;
  const bar = document.querySelector('#hc-sidebar');
  const open = bar && (bar.classList.contains('open') || bar.closest('.sidebar.open'));
  if (open) bar.querySelector('button[aria-label="Toggle Sidebar"]')?.click();
}}"""
TURN_CONCURRENCY_ID = "chat-turn"


@dataclass
class Session:
    """One browser tab's state, kept server-side (gr.State is never sent to the browser)."""

    sid: str | None = None  # the open conversation (None: a new one, created by its first message)
    rows: list[dict[str, Any]] = field(default_factory=list)  # what the chat shows, with stored ids
    cursor: str | None = None  # conversations listing: where the next page starts
    listed: list[tuple[str, str]] = field(default_factory=list)  # (title, id) shown in the sidebar
    busy: bool = False  # an answer is streaming
    live: str = ""  # the answer streamed so far
    stopped: bool = False


def _session(st: Any) -> Session:
    return st if isinstance(st, Session) else Session()


def _index(index: Any) -> int:
    """Gradio's message index (an int, or [i, j] for grouped messages) -> int."""
    if isinstance(index, list | tuple):
        index = index[0]
    return int(index)


def build_blocks(service: ChatService, identity: Identity, limiter: RateLimiter) -> gr.Blocks:
    """The chat page. Every handler resolves the user from the request, never from the browser's data."""
    settings = service.settings

    def user_of(request: gr.Request | None) -> str:
        return identity.user_of(request)

    def textbox_busy() -> Any:
        return gr.update(value="", interactive=False, submit_btn=False, stop_btn=True)

    def textbox_ready() -> Any:
        return gr.update(interactive=True, submit_btn=True, stop_btn=False)

    # --- the streamed turn, shared by send / regenerate / edit -------------------------------
    async def run_turn(user: str, st: Session, text: str, params: TurnParams) -> AsyncIterator[tuple]:
        st.sid = st.sid or uuid.uuid4().hex
        human_id = str(uuid.uuid4())
        rows = st.rows
        rows.append({"role": "user", "id": human_id, "text": text, "content": text})
        st.busy, st.live, st.stopped = True, "", False
        answer: dict[str, Any] | None = None
        try:
            yield chatbot_value(rows), textbox_busy(), st, gr.skip()
            turn = service.turn(user, st.sid, text, params, human_id=human_id)
            async with contextlib.aclosing(turn):
                async for event in turn:
                    if st.stopped:
                        return
                    if isinstance(event, Delta):
                        st.live = event.text
                        if answer is None:
                            answer = {"role": "assistant", "id": None, "text": "", "content": ""}
                            rows.append(answer)
                        answer["text"] = answer["content"] = event.text
                        yield chatbot_value(rows), gr.skip(), gr.skip(), gr.skip()
                        continue
                    done = event
                    if answer is None:
                        answer = {"role": "assistant", "id": None, "text": "", "content": ""}
                        rows.append(answer)
                    answer["id"] = done.answer_id if done.answer_saved else None
                    answer["text"] = done.text
                    answer["content"] = render_answer(done.text, done.meta, kind=done.kind, turn=human_id)
                    if not done.human_saved:
                        rows[-2]["id"] = None
                    yield chatbot_value(rows), gr.skip(), st, service.health.html()
        finally:
            st.busy = False

    def check_turn(user: str, text: str, params_in: tuple) -> tuple[str, TurnParams]:
        """Limits first (length, parameters, rate): a refused message stays in the input box."""
        if service.draining:
            raise LimitExceeded("The server is restarting: send your message again in a few seconds.")
        try:
            text = check_message(text, settings.max_message_chars)
            params = turn_params(settings, *params_in)
        except LimitExceeded:
            UI_REJECTED.labels("message").inc()
            raise
        try:
            limiter.acquire(user)
        except LimitExceeded:
            UI_REJECTED.labels("rate").inc()
            raise
        return text, params

    def refused(st: Session, exc: Exception) -> tuple:
        gr.Warning(str(exc), title="Message not sent")
        return gr.skip(), gr.skip(), st, gr.skip()

    async def send(
        text: str,
        st: Any,
        model: str,
        temperature: float,
        top_p: float,
        max_tokens: float,
        system: str,
        request: gr.Request,
    ) -> AsyncIterator[tuple]:
        st = _session(st)
        user = user_of(request)
        if st.busy:
            yield refused(st, LimitExceeded("Wait for the current answer, or press Stop."))
            return
        try:
            text, params = check_turn(user, text, (model, temperature, top_p, max_tokens, system))
        except LimitExceeded as exc:
            yield refused(st, exc)
            return
        async for out in run_turn(user, st, text, params):
            yield out

    async def resend_from(
        user: str, st: Session, j: int, text: str, params_in: tuple
    ) -> AsyncIterator[tuple]:
        """Regenerate / edit-and-resend: forget the stored turn(s) from row j on, then send `text`."""
        if st.busy:
            yield refused(st, LimitExceeded("Wait for the current answer, or press Stop."))
            return
        try:
            text, params = check_turn(user, text, params_in)
        except LimitExceeded as exc:
            yield refused(st, exc)
            return
        drop = next((r["id"] for r in st.rows[j:] if r.get("id")), None)
        if st.sid is not None and drop is not None:
            try:
                await service.truncate(user, st.sid, str(drop))
            except (AccessDenied, MemoryUnavailable) as exc:
                yield refused(st, LimitExceeded(friendly_error(exc)))
                return
        del st.rows[j:]
        async for out in run_turn(user, st, text, params):
            yield out

    async def regenerate(
        st: Any,
        model: str,
        temperature: float,
        top_p: float,
        max_tokens: float,
        system: str,
        retry: gr.RetryData,
        request: gr.Request,
    ) -> AsyncIterator[tuple]:
        st = _session(st)
        i = min(_index(retry.index), len(st.rows) - 1)
        j = next((k for k in range(i, -1, -1) if st.rows[k]["role"] == "user"), None)
        if j is None:
            yield refused(st, LimitExceeded("Nothing to regenerate."))
            return
        async for out in resend_from(
            user_of(request), st, j, st.rows[j]["text"], (model, temperature, top_p, max_tokens, system)
        ):
            yield out

    async def edit_resend(
        st: Any,
        model: str,
        temperature: float,
        top_p: float,
        max_tokens: float,
        system: str,
        edit: gr.EditData,
        request: gr.Request,
    ) -> AsyncIterator[tuple]:
        st = _session(st)
        j = _index(edit.index)
        value = edit.value
        if isinstance(value, list):  # content blocks
            value = "".join(b.get("text", "") for b in value if isinstance(b, dict))
        if not (0 <= j < len(st.rows)) or st.rows[j]["role"] != "user":
            yield chatbot_value(st.rows), gr.skip(), st, gr.skip()
            return
        async for out in resend_from(
            user_of(request), st, j, str(value), (model, temperature, top_p, max_tokens, system)
        ):
            yield out

    async def stop(st: Any, request: gr.Request) -> tuple:
        st = _session(st)
        if not st.busy:
            return gr.skip(), gr.skip()
        st.stopped = True
        if st.rows and st.rows[-1]["role"] == "assistant":
            st.rows[-1]["content"] = render_answer(st.live, {"interrupted": "stopped"})
        elif st.live:
            st.rows.append(
                {
                    "role": "assistant",
                    "id": None,
                    "text": st.live,
                    "content": render_answer(st.live, {"interrupted": "stopped"}),
                }
            )
        shown = chatbot_value(st.rows)
        # The stopped turn is saved in the background: list the conversations once it is.
        for _ in range(30):
            if not st.busy:
                break
            await asyncio.sleep(0.1)
        await service.saved(3)
        conv, _more = await conversation_choices(user_of(request), st)
        return shown, conv

    # --- conversations -----------------------------------------------------------------------
    async def conversation_choices(user: str, st: Session, *, more: bool = False) -> tuple[Any, Any]:
        try:
            page = await service.conversations(
                user, limit=CONVERSATIONS_PAGE, cursor=st.cursor if more else None
            )
        except MemoryUnavailable as exc:
            gr.Warning(friendly_error(exc))
            return gr.skip(), gr.skip()
        items = [(c.title, c.session_id) for c in page.conversations]
        st.listed = [*st.listed, *items] if more else items
        st.cursor = page.next_cursor
        value = st.sid if st.sid in {sid for _, sid in st.listed} else None
        return gr.update(choices=st.listed, value=value), gr.update(visible=page.next_cursor is not None)

    def user_html(user: str) -> str:
        who = "local user" if identity.mode == "local" else html.escape(user)
        out = f'<div class="hc-user">{who}'
        if identity.mode == "password":
            # POST: a sign-out link would let any site's <img> sign the user out.
            out += (
                ' · <form method="post" action="/logout" class="hc-logout">'
                '<button type="submit">Sign out</button></form>'
            )
        return out + "</div>"

    async def on_load(request: gr.Request) -> tuple:
        user = user_of(request)
        st = Session()
        conv, more = await conversation_choices(user, st)
        return st, conv, more, user_html(user), service.health.html()

    async def after_turn(st: Any, request: gr.Request) -> tuple:
        st = _session(st)
        conv, _more = await conversation_choices(user_of(request), st)
        return textbox_ready(), conv

    async def more_conversations(st: Any, request: gr.Request) -> tuple:
        st = _session(st)
        conv, more = await conversation_choices(user_of(request), st, more=True)
        return conv, more

    async def open_conversation(sid: Any, st: Any, request: gr.Request) -> AsyncIterator[tuple]:
        st = _session(st)
        user = user_of(request)
        if st.busy:
            gr.Warning("Wait for the current answer, or press Stop.")
            yield gr.skip(), st, gr.skip()
            return
        if not isinstance(sid, str) or not sid:
            yield gr.skip(), st, gr.skip()
            return
        messages: list = []
        try:
            async for page in service.pages(user, sid):
                messages[:0] = page
                st.sid, st.rows = sid, rows_from_messages(messages)
                title = next((t for t, s in st.listed if s == sid), "")
                yield chatbot_value(st.rows), st, gr.update(value=title)
        except (AccessDenied, ConversationNotFound, MemoryUnavailable) as exc:
            log.warning("open conversation refused for %s: %s", user, type(exc).__name__)
            gr.Warning(friendly_error(exc), title="Cannot open this conversation")
            st.sid, st.rows = None, []
            note = {"role": "assistant", "content": render_answer(friendly_error(exc), kind="failed")}
            yield [note], st, gr.update(value="")

    async def new_conversation(st: Any) -> tuple:
        st = _session(st)
        if st.busy:
            gr.Warning("Wait for the current answer, or press Stop.")
            return gr.skip(), st, gr.skip(), gr.skip()
        st.sid, st.rows = None, []
        return [], st, gr.update(value=None), gr.update(value="")

    async def rename(title: str, st: Any, request: gr.Request) -> Any:
        st = _session(st)
        user = user_of(request)
        if st.sid is None or not st.rows:
            gr.Warning("Send a message first: an empty conversation has nothing to rename.")
            return gr.skip()
        try:
            await service.rename(user, st.sid, validate_title(title))
        except ValueError as exc:
            gr.Warning(f"Not renamed: {exc}.")
            return gr.skip()
        except (AccessDenied, ConversationNotFound, MemoryUnavailable) as exc:
            gr.Warning(friendly_error(exc))
            return gr.skip()
        gr.Info("Renamed.")
        conv, _more = await conversation_choices(user, st)
        return conv

    def arm_delete(st: Any) -> tuple:
        st = _session(st)
        if st.sid is None or not st.rows:
            gr.Warning("No saved conversation is open.")
            return gr.skip(), gr.skip()
        return gr.update(visible=False), gr.update(visible=True)

    def disarm_delete() -> tuple:
        return gr.update(visible=True), gr.update(visible=False)

    async def delete(st: Any, request: gr.Request) -> tuple:
        st = _session(st)
        user = user_of(request)
        if st.sid is not None and not st.busy:
            try:
                await service.delete(user, st.sid)
            except (AccessDenied, MemoryUnavailable) as exc:
                gr.Warning(friendly_error(exc))
                return gr.skip(), st, gr.skip(), gr.skip(), gr.update(visible=True), gr.update(visible=False)
            st.sid, st.rows = None, []
            gr.Info("Conversation deleted.")
        conv, more = await conversation_choices(user, st)
        return [], st, conv, more, gr.update(visible=True), gr.update(visible=False)

    def health_html() -> str:
        return service.health.html()

    # --- the API for programmatic users ------------------------------------------------------
    async def chat(
        message: str,
        model: str = settings.default_model,
        session_id: str = "",
        temperature: float | None = None,
        max_tokens: int | None = None,
        request: gr.Request = None,
    ) -> AsyncIterator[str]:
        """Send one message and stream the answer as text. Empty `session_id`: a new conversation.

        The answer text accumulates: each streamed value is the whole answer so far."""
        user = user_of(request)
        try:
            text, params = check_turn(user, message, (model, temperature, None, max_tokens, None))
        except LimitExceeded as exc:
            raise gr.Error(str(exc)) from None
        sid = session_id.strip() if isinstance(session_id, str) and session_id.strip() else uuid.uuid4().hex
        async for event in service.turn(user, sid, text, params):
            if isinstance(event, Done) and event.kind == "failed":
                raise gr.Error(event.text)  # refused (another user's conversation, store down)
            yield event.text  # a backend failure is an answer saying so, as in the graph's contract

    async def conversations(request: gr.Request = None) -> list[dict[str, Any]]:
        """The caller's conversations, newest first: session_id, title, updated_at, message_count."""
        page = await service.conversations(user_of(request), limit=100)
        return [
            {
                "session_id": c.session_id,
                "title": c.title,
                "updated_at": c.updated_at.isoformat(),
                "message_count": c.message_count,
            }
            for c in page.conversations
        ]

    async def conversation(session_id: str, request: gr.Request = None) -> list[dict[str, str]]:
        """One of the caller's conversations: [{role, content}], oldest first."""
        try:
            messages = await service.messages(user_of(request), str(session_id))
        except (AccessDenied, ConversationNotFound, MemoryUnavailable) as exc:
            raise gr.Error(friendly_error(exc)) from None
        return [{"role": r["role"], "content": r["text"]} for r in rows_from_messages(messages)]

    # --- layout ------------------------------------------------------------------------------
    with gr.Blocks(title="hybrid-chat", fill_height=True) as demo:
        state = gr.State(None)
        with gr.Sidebar(label="Conversations", open=True, elem_id="hc-sidebar"):
            new_btn = gr.Button("New conversation", variant="primary", size="sm", elem_id="hc-new")
            conv = gr.Radio(
                choices=[],
                label="Conversations",
                show_label=False,
                elem_id="hc-conversations",
                interactive=True,
            )
            more_btn = gr.Button("Older conversations", size="sm", visible=False, elem_id="hc-more")
            title_box = gr.Textbox(
                label="Title",
                placeholder="New title",
                max_lines=1,
                elem_id="hc-title",
                submit_btn="Rename",
            )
            delete_btn = gr.Button("Delete conversation", size="sm", variant="secondary", elem_id="hc-delete")
            confirm_btn = gr.Button(
                "Delete for good", size="sm", variant="stop", visible=False, elem_id="hc-delete-confirm"
            )
        with gr.Row(elem_id="hc-header", equal_height=True):
            gr.HTML("<h1>hybrid-chat</h1>", padding=False, scale=0, min_width=110)
            model = gr.Dropdown(
                choices=MODEL_CHOICES,
                value=settings.default_model,
                label="Model",
                show_label=False,
                elem_id="hc-model",
                interactive=True,
                container=False,
                scale=1,
                min_width=190,
            )
            health = gr.HTML(
                service.health.html(), elem_id="hc-health-box", padding=False, scale=0, min_width=140
            )
            who = gr.HTML("", elem_id="hc-user-box", padding=False, scale=0, min_width=80)
        chatbot = gr.Chatbot(
            elem_id="hc-chatbot",
            show_label=False,
            editable="user",
            buttons=["copy", "copy_all"],
            group_consecutive_messages=False,
            feedback_options=None,
            placeholder="Ask anything. Answers stream from the model you choose above.",
            height="60vh",
            min_height=260,
            autoscroll=True,
        )
        textbox = gr.Textbox(
            placeholder="Message hybrid-chat",
            label="Message",
            show_label=False,
            submit_btn=True,
            stop_btn=False,
            lines=1,
            max_lines=8,
            autofocus=True,
            elem_id="hc-input",
        )
        with gr.Accordion("Generation settings", open=False, elem_id="hc-settings"):
            with gr.Row():
                temperature = gr.Slider(0, 2, value=settings.temperature, step=0.05, label="Temperature")
                top_p = gr.Slider(0.01, 1, value=settings.top_p, step=0.01, label="Top p")
                max_tokens = gr.Slider(
                    1, 4096, value=min(settings.max_tokens, 4096), step=1, label="Max tokens"
                )
            system = gr.Textbox(value=settings.system_prompt, label="Persona (system prompt)", lines=2)
        timer = gr.Timer(20)

        gen_inputs = [model, temperature, top_p, max_tokens, system]
        turn_outputs = [chatbot, textbox, state, health]
        turn_kwargs: dict[str, Any] = {
            "api_visibility": "private",
            "concurrency_limit": settings.max_concurrent_streams,
            "concurrency_id": TURN_CONCURRENCY_ID,
            "show_progress": "minimal",
        }
        send_ev = textbox.submit(send, [textbox, state, *gen_inputs], turn_outputs, **turn_kwargs)
        retry_ev = chatbot.retry(regenerate, [state, *gen_inputs], turn_outputs, **turn_kwargs)
        edit_ev = chatbot.edit(edit_resend, [state, *gen_inputs], turn_outputs, **turn_kwargs)
        for ev in (send_ev, retry_ev, edit_ev):
            ev.then(after_turn, [state], [textbox, conv], api_visibility="private", show_progress="hidden")
        textbox.stop(
            stop,
            [state],
            [chatbot, conv],
            cancels=[send_ev, retry_ev, edit_ev],
            api_visibility="private",
            queue=False,
        )

        demo.load(on_load, None, [state, conv, more_btn, who, health], api_visibility="private")
        demo.load(None, js=CLOSE_SIDEBAR_ON_PHONE)
        conv.input(
            open_conversation,
            [conv, state],
            [chatbot, state, title_box],
            api_visibility="private",
            show_progress="minimal",
        )
        more_btn.click(more_conversations, [state], [conv, more_btn], api_visibility="private")
        new_btn.click(
            new_conversation,
            [state],
            [chatbot, state, conv, title_box],
            api_visibility="private",
            queue=False,
        )
        title_box.submit(rename, [title_box, state], [conv], api_visibility="private")
        delete_btn.click(
            arm_delete, [state], [delete_btn, confirm_btn], api_visibility="private", queue=False
        )
        confirm_btn.click(
            delete,
            [state],
            [chatbot, state, conv, more_btn, delete_btn, confirm_btn],
            api_visibility="private",
        )
        chatbot.clear(
            new_conversation,
            [state],
            [chatbot, state, conv, title_box],
            api_visibility="private",
            queue=False,
        )
        for trigger in (new_btn.click, conv.input):
            trigger(disarm_delete, None, [delete_btn, confirm_btn], api_visibility="private", queue=False)
            trigger(None, js=CLOSE_SIDEBAR_ON_PHONE)
        timer.tick(health_html, None, health, api_visibility="private", show_progress="hidden", queue=False)

        gr.api(
            chat,
            api_name="chat",
            concurrency_limit=settings.max_concurrent_streams,
            concurrency_id=TURN_CONCURRENCY_ID,
        )
        gr.api(conversations, api_name="conversations")
        gr.api(conversation, api_name="conversation")
    demo.queue(default_concurrency_limit=settings.max_concurrent_streams)
    _skip_gradio_event_analytics(demo)
    return demo


def _skip_gradio_event_analytics(demo: gr.Blocks) -> None:
    """Gradio's queue recomputes a pandas summary of up to 10,000 past events after every event, for a
    monitoring dashboard this app does not mount: a pandas import on the first event, then 3-8 ms of
    GIL-holding work per event (measured with 100 and 10,000 recorded events). Never compute it.
    (A private attribute, spelled as in Gradio 6.31; if it disappears, this does nothing.)"""
    queue = getattr(demo, "_queue", None)
    if queue is not None and hasattr(queue, "ANAYLTICS_CACHE_FREQUENCY"):
        queue.ANAYLTICS_CACHE_FREQUENCY = sys.maxsize


async def refuse_invalid_body(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming the fields at fault, never echoing what was sent (it could be megabytes, or a secret)."""
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()][:10]
    return JSONResponse({"detail": errors}, status_code=422)


def create_app(settings: Settings | None = None, client: ChatClient | None = None) -> FastAPI:
    """The one ASGI app. `client` (a `graph.client.ChatClient`) defaults to one built from `settings`."""
    from graph.settings import get_settings

    owns_client = client is None
    if settings is None:
        settings = client.settings if client is not None else get_settings()
    if client is None:
        client = ChatClient.from_settings(settings)
    identity = Identity(settings)
    service = ChatService(client)
    limiter = RateLimiter(settings.rate_limit_per_minute)
    services = client.services

    gradio_app: Any = None  # the mounted Gradio app (its stop_event ends the heartbeat streams)

    async def begin_shutdown() -> None:
        """Stop taking turns, let running answers finish (up to the grace period, then stop them,
        saving what was streamed), then end Gradio's heartbeat streams so the server can exit."""
        if service.draining:
            return
        service.draining = True
        log.info("shutting down: %d answer(s) streaming", len(service.active))
        started = time.perf_counter()
        await service.drain(settings.shutdown_grace_s)
        log.info("shutting down: answers drained in %.1f s", time.perf_counter() - started)
        if gradio_app is not None:
            gradio_app.stop_event.set()

    async def watch_server(server: Any) -> None:
        # uvicorn waits for open connections before the lifespan shutdown runs, and browsers keep a
        # heartbeat stream open: without this, a SIGTERM would wait for every tab to close.
        while not server.should_exit:  # noqa: ASYNC110 - uvicorn's flag, no event to wait on
            await asyncio.sleep(0.2)
        await begin_shutdown()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # The uvicorn.Server running us: found through its SIGTERM handler (uvicorn installs it in the
        # main thread); embedders running a Server in another thread can set app.state.uvicorn_server.
        server = getattr(_app.state, "uvicorn_server", None)
        server = server or getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
        # Build both backends' clients (and any local stand-in) in the background now, so that the
        # first answer, or the first fallback, does not pay for imports and start-up.
        warm = asyncio.get_running_loop().create_task(asyncio.to_thread(services.backends.warm))
        watcher = None
        if server is not None and hasattr(server, "should_exit"):
            watcher = asyncio.get_running_loop().create_task(watch_server(server))
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
            with contextlib.suppress(Exception):
                await warm
            await begin_shutdown()
            if owns_client:
                with contextlib.suppress(Exception):
                    await services.store.aclose()
                await asyncio.to_thread(services.backends.close)
            log.info("shut down")

    app = FastAPI(
        title="hybrid-chat",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
        max_body_size=settings.max_request_bytes,  # every route, the Gradio mount included
    )
    security.install(app, parse_origins(settings.allowed_origins))
    app.add_exception_handler(RequestValidationError, refuse_invalid_body)
    app.state.chat = service
    app.state.begin_shutdown = begin_shutdown  # for embedders running their own server loop

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        body: dict[str, Any] = {"status": "ok", "memory": "ok"}
        try:
            await asyncio.wait_for(services.store.aping(), timeout=3)
        except Exception as exc:
            body["memory"] = f"unavailable: {type(exc).__name__}: {exc}"[:300]
        backends = service.health.all()
        body["backends"] = {h.backend: h.state for h in backends}
        if service.draining:
            body["status"] = "shutting down"
            return JSONResponse(body, status_code=503)
        if body["memory"] != "ok" or not any(h.usable for h in backends):
            body["status"] = "unavailable"
            return JSONResponse(body, status_code=503)
        return JSONResponse(body)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    app.include_router(api_router(service, identity, limiter))  # before the mount, which takes "/"
    gr.mount_gradio_app(
        app,
        build_blocks(service, identity, limiter),
        path="",
        theme=theme(),
        css=CSS,
        footer_links=["api"],
        run_history=False,
        ssr_mode=False,
        **identity.gradio_kwargs(),
    )
    gradio_app = next(r.app for r in app.routes if hasattr(getattr(r, "app", None), "stop_event"))
    return app
