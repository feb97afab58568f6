"""The page's handlers: what each button, box and API route of the chat page does, for one user.

They are methods of one class so that a test can call them without a browser or a Gradio server
(`ui/page.py` only lays out the components and wires these to their events). Every handler resolves the
user from the request, never from the browser's data; per-tab state (the open conversation and the rows
on screen with their stored ids) is a `Session` kept on the server (`gr.State`). Handlers are async and
never block the event loop; the work behind them is `ChatService`'s (ui/chat.py), over the one
`ChatClient`.

Programmatic users call `chat` (message, model, session_id: streams the answer as text),
`conversations` and `conversation` through Gradio's API.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from graph.memory.codec import validate_title
from graph.memory.contract import AccessDenied, ConversationNotFound, MemoryUnavailable
from ui.auth import Identity
from ui.chat import (
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
from ui.limits import LimitExceeded, RateLimiter, StreamSlot, check_message

log = logging.getLogger(__name__)

CONVERSATIONS_PAGE = 30


@dataclass
class Session:
    """One browser tab's state, kept server-side (gr.State is never sent to the browser). It belongs to
    the signed-in user who opened the tab (`user`): Gradio finds a tab's state by the `session_hash` the
    browser chose, so another user presenting that hash gets a fresh `Session`, never this one."""

    user: str | None = None
    sid: str | None = None  # the open conversation (None: a new one, created by its first message)
    rows: list[dict[str, Any]] = field(default_factory=list)  # what the chat shows, with stored ids
    cursor: str | None = None  # conversations listing: where the next page starts
    listed: list[tuple[str, str]] = field(default_factory=list)  # (title, id) shown in the sidebar
    busy: bool = False  # an answer is streaming
    live: str = ""  # the answer streamed so far
    stopped: bool = False


def _session(st: Any, user: str) -> Session:
    """The tab's state if it is `user`'s; a fresh one for anyone else (logged: someone presented
    another user's session_hash)."""
    if isinstance(st, Session):
        if st.user == user:
            return st
        if st.user is None:
            st.user = user
            return st
        log.warning("%r presented the tab of another user (the same session_hash): given a fresh tab", user)
    return Session(user=user)


def _index(index: Any) -> int:
    """Gradio's message index (an int, or [i, j] for grouped messages) -> int."""
    if isinstance(index, list | tuple):
        index = index[0]
    return int(index)


class ChatHandlers:
    """The page's event handlers (see the module docstring)."""

    def __init__(self, service: ChatService, identity: Identity, limiter: RateLimiter) -> None:
        self.service = service
        self.identity = identity
        self.limiter = limiter
        self.settings = service.settings

    def user_of(self, request: gr.Request | None) -> str:
        return self.identity.user_of(request)

    def textbox_busy(self) -> Any:
        return gr.update(value="", interactive=False, submit_btn=False, stop_btn=True)

    def textbox_ready(self) -> Any:
        return gr.update(interactive=True, submit_btn=True, stop_btn=False)

    # --- the streamed turn, shared by send / regenerate / edit -------------------------------
    async def run_turn(
        self, user: str, st: Session, text: str, params: TurnParams, slot: StreamSlot
    ) -> AsyncIterator[tuple]:
        st.sid = st.sid or uuid.uuid4().hex
        human_id = str(uuid.uuid4())
        rows = st.rows
        rows.append({"role": "user", "id": human_id, "text": text, "content": text})
        st.busy, st.live, st.stopped = True, "", False
        answer: dict[str, Any] | None = None
        try:
            yield chatbot_value(rows), self.textbox_busy(), st, gr.skip()
            turn = self.service.turn(user, st.sid, text, params, human_id=human_id, slot=slot)
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
                    yield chatbot_value(rows), gr.skip(), st, self.service.health.html()
        finally:
            st.busy = False
            slot.release()  # the turn releases it; this covers a turn closed before it started

    async def take_slot(self) -> StreamSlot:
        """A place among the answers streaming at once (shared with Gradio's `/chat` and `/api/chat`),
        waiting at most `stream_wait_s`: `Busy` (a LimitExceeded) tells the user the server is busy
        while their text stays in the input box."""
        return await self.service.stream_slot()

    def check_turn(self, user: str, text: str, params_in: tuple) -> tuple[str, TurnParams]:
        """Limits first (length, parameters, rate): a refused message stays in the input box."""
        if self.service.draining:
            raise LimitExceeded("The server is restarting: send your message again in a few seconds.")
        try:
            text = check_message(text, self.settings.max_message_chars)
            params = turn_params(self.settings, *params_in, models=self.service.client.models)
        except LimitExceeded:
            UI_REJECTED.labels("message").inc()
            raise
        try:
            self.limiter.acquire(user)
        except LimitExceeded:
            UI_REJECTED.labels("rate").inc()
            raise
        return text, params

    def refused(self, st: Session, exc: Exception) -> tuple:
        gr.Warning(str(exc), title="Message not sent")
        return gr.skip(), gr.skip(), st, gr.skip()

    async def send(
        self,
        text: str,
        st: Any,
        model: str,
        temperature: float,
        top_p: float,
        max_tokens: float,
        system: str,
        request: gr.Request,
    ) -> AsyncIterator[tuple]:
        user = self.user_of(request)
        st = _session(st, user)
        if st.busy:
            yield self.refused(st, LimitExceeded("Wait for the current answer, or press Stop."))
            return
        try:
            text, params = self.check_turn(user, text, (model, temperature, top_p, max_tokens, system))
            slot = await self.take_slot()
        except LimitExceeded as exc:
            yield self.refused(st, exc)
            return
        async for out in self.run_turn(user, st, text, params, slot):
            yield out

    async def resend_from(
        self, user: str, st: Session, j: int, text: str, params_in: tuple
    ) -> AsyncIterator[tuple]:
        """Regenerate / edit-and-resend: forget the stored turn(s) from row j on, then send `text`."""
        if st.busy:
            yield self.refused(st, LimitExceeded("Wait for the current answer, or press Stop."))
            return
        try:
            text, params = self.check_turn(user, text, params_in)
            slot = await self.take_slot()
        except LimitExceeded as exc:
            yield self.refused(st, exc)
            return
        try:
            drop = next((r["id"] for r in st.rows[j:] if r.get("id")), None)
            if st.sid is not None and drop is not None:
                try:
                    await self.service.truncate(user, st.sid, str(drop))
                except (AccessDenied, MemoryUnavailable) as exc:
                    yield self.refused(st, LimitExceeded(friendly_error(exc)))
                    return
            del st.rows[j:]
            async for out in self.run_turn(user, st, text, params, slot):
                yield out
        finally:
            slot.release()

    async def regenerate(
        self,
        st: Any,
        model: str,
        temperature: float,
        top_p: float,
        max_tokens: float,
        system: str,
        retry: gr.RetryData,
        request: gr.Request,
    ) -> AsyncIterator[tuple]:
        user = self.user_of(request)
        st = _session(st, user)
        i = min(_index(retry.index), len(st.rows) - 1)
        j = next((k for k in range(i, -1, -1) if st.rows[k]["role"] == "user"), None)
        if j is None:
            yield self.refused(st, LimitExceeded("Nothing to regenerate."))
            return
        async for out in self.resend_from(
            user, st, j, st.rows[j]["text"], (model, temperature, top_p, max_tokens, system)
        ):
            yield out

    async def edit_resend(
        self,
        st: Any,
        model: str,
        temperature: float,
        top_p: float,
        max_tokens: float,
        system: str,
        edit: gr.EditData,
        request: gr.Request,
    ) -> AsyncIterator[tuple]:
        user = self.user_of(request)
        st = _session(st, user)
        j = _index(edit.index)
        value = edit.value
        if isinstance(value, list):  # content blocks
            value = "".join(b.get("text", "") for b in value if isinstance(b, dict))
        if not (0 <= j < len(st.rows)) or st.rows[j]["role"] != "user":
            yield chatbot_value(st.rows), gr.skip(), st, gr.skip()
            return
        async for out in self.resend_from(
            user, st, j, str(value), (model, temperature, top_p, max_tokens, system)
        ):
            yield out

    async def stop(self, st: Any, request: gr.Request) -> tuple:
        user = self.user_of(request)
        st = _session(st, user)
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
        await self.service.saved(3)
        conv, _more = await self.conversation_choices(user, st)
        return shown, conv

    # --- conversations -----------------------------------------------------------------------
    async def conversation_choices(self, user: str, st: Session, *, more: bool = False) -> tuple[Any, Any]:
        try:
            page = await self.service.conversations(
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

    def user_html(self, user: str) -> str:
        who = "local user" if self.identity.mode == "local" else html.escape(user)
        out = f'<div class="hc-user">{who}'
        if self.identity.mode == "password":
            # POST: a sign-out link would let any site's <img> sign the user out.
            out += (
                ' · <form method="post" action="/logout" class="hc-logout">'
                '<button type="submit">Sign out</button></form>'
            )
        return out + "</div>"

    async def on_load(self, request: gr.Request) -> tuple:
        user = self.user_of(request)
        st = Session(user=user)
        conv, more = await self.conversation_choices(user, st)
        return st, conv, more, self.user_html(user), self.service.health.html()

    async def after_turn(self, st: Any, request: gr.Request) -> tuple:
        user = self.user_of(request)
        st = _session(st, user)
        conv, _more = await self.conversation_choices(user, st)
        return self.textbox_ready(), conv

    async def more_conversations(self, st: Any, request: gr.Request) -> tuple:
        user = self.user_of(request)
        st = _session(st, user)
        conv, more = await self.conversation_choices(user, st, more=True)
        return conv, more

    async def open_conversation(self, sid: Any, st: Any, request: gr.Request) -> AsyncIterator[tuple]:
        user = self.user_of(request)
        st = _session(st, user)
        if st.busy:
            gr.Warning("Wait for the current answer, or press Stop.")
            yield gr.skip(), st, gr.skip()
            return
        if not isinstance(sid, str) or not sid:
            yield gr.skip(), st, gr.skip()
            return
        messages: list = []
        try:
            async for page in self.service.pages(user, sid):
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

    async def new_conversation(self, st: Any, request: gr.Request) -> tuple:
        st = _session(st, self.user_of(request))
        if st.busy:
            gr.Warning("Wait for the current answer, or press Stop.")
            return gr.skip(), st, gr.skip(), gr.skip()
        st.sid, st.rows = None, []
        return [], st, gr.update(value=None), gr.update(value="")

    async def rename(self, title: str, st: Any, request: gr.Request) -> Any:
        user = self.user_of(request)
        st = _session(st, user)
        if st.sid is None or not st.rows:
            gr.Warning("Send a message first: an empty conversation has nothing to rename.")
            return gr.skip()
        try:
            await self.service.rename(user, st.sid, validate_title(title))
        except ValueError as exc:
            gr.Warning(f"Not renamed: {exc}.")
            return gr.skip()
        except (AccessDenied, ConversationNotFound, MemoryUnavailable) as exc:
            gr.Warning(friendly_error(exc))
            return gr.skip()
        gr.Info("Renamed.")
        conv, _more = await self.conversation_choices(user, st)
        return conv

    def arm_delete(self, st: Any, request: gr.Request) -> tuple:
        st = _session(st, self.user_of(request))
        if st.sid is None or not st.rows:
            gr.Warning("No saved conversation is open.")
            return gr.skip(), gr.skip()
        return gr.update(visible=False), gr.update(visible=True)

    def disarm_delete(self) -> tuple:
        return gr.update(visible=True), gr.update(visible=False)

    async def delete(self, st: Any, request: gr.Request) -> tuple:
        user = self.user_of(request)
        st = _session(st, user)
        if st.sid is not None and not st.busy:
            try:
                await self.service.delete(user, st.sid)
            except (AccessDenied, MemoryUnavailable) as exc:
                gr.Warning(friendly_error(exc))
                return gr.skip(), st, gr.skip(), gr.skip(), gr.update(visible=True), gr.update(visible=False)
            st.sid, st.rows = None, []
            gr.Info("Conversation deleted.")
        conv, more = await self.conversation_choices(user, st)
        return [], st, conv, more, gr.update(visible=True), gr.update(visible=False)

    def health_html(self) -> str:
        return self.service.health.html()

    # --- the API for programmatic users ------------------------------------------------------
    async def chat(
        self,
        message: str,
        model: str = "",
        session_id: str = "",
        temperature: float | None = None,
        max_tokens: int | None = None,
        request: gr.Request = None,
    ) -> AsyncIterator[str]:
        """Send one message and stream the answer as text. Empty `session_id`: a new conversation.

        The answer text accumulates: each streamed value is the whole answer so far."""
        user = self.user_of(request)
        try:
            text, params = self.check_turn(
                user, message, (model or None, temperature, None, max_tokens, None)
            )
        except LimitExceeded as exc:
            raise gr.Error(str(exc)) from None
        sid = session_id.strip() if isinstance(session_id, str) and session_id.strip() else uuid.uuid4().hex
        async for event in self.service.turn(user, sid, text, params):
            if isinstance(event, Done) and event.kind == "failed":
                raise gr.Error(event.text)  # refused (another user's conversation, store down)
            yield event.text  # a backend failure is an answer saying so, as in the graph's contract

    async def conversations(self, request: gr.Request = None) -> list[dict[str, Any]]:
        """The caller's conversations, newest first: session_id, title, updated_at, message_count."""
        page = await self.service.conversations(self.user_of(request), limit=100)
        return [
            {
                "session_id": c.session_id,
                "title": c.title,
                "updated_at": c.updated_at.isoformat(),
                "message_count": c.message_count,
            }
            for c in page.conversations
        ]

    async def conversation(self, session_id: str, request: gr.Request = None) -> list[dict[str, str]]:
        """One of the caller's conversations: [{role, content}], oldest first."""
        try:
            messages = await self.service.messages(self.user_of(request), str(session_id))
        except (AccessDenied, ConversationNotFound, MemoryUnavailable) as exc:
            raise gr.Error(friendly_error(exc)) from None
        return [{"role": r["role"], "content": r["text"]} for r in rows_from_messages(messages)]
