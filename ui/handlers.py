"""The page's handlers: what each button, box and API route of the chat page does, for one user.

They are methods of one class so that a test can call them without a browser or a Gradio server
(`ui/page.py` only lays out the components and wires these to their events). Every handler resolves the
user from the request, never from the browser's data; per-tab state (the open conversation and the rows
on screen with their stored ids) is a `Session` kept on the server (`gr.State`). Handlers are async and
never block the event loop; the work behind them is `ChatService`'s (ui/chat.py), over the one
`ChatClient`.

Programmatic users call `chat` (message, model, session_id: streams the answer as text), `turn` (the
same with the answer's facts, and files), `conversations` and `conversation` through Gradio's API.

Files (the message box's attachments, `turn`'s `files`) arrive as paths in Gradio's upload cache (each
one its uploader's alone: ui.security.UploadOwners); they are read and checked with the graph's own
check before the turn, sent as LangChain standard content blocks, and Gradio's copies are deleted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import html
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import gradio as gr
from gradio import FileData
from langchain_core.messages import HumanMessage

from graph.memory.codec import validate_title
from graph.memory.contract import AccessDenied, ConversationNotFound, MemoryUnavailable
from ui.auth import Identity
from ui.chat import (
    UI_REJECTED,
    ChatService,
    Delta,
    Done,
    TurnParams,
    TurnResult,
    answer_row,
    chatbot_value,
    decorations,
    friendly_error,
    human_size,
    model_of,
    picker_choices,
    rows_from_messages,
    turn_params,
    turn_result,
    user_row,
)
from ui.limits import LimitExceeded, RateLimiter, StreamSlot, check_message
from ui.live import LiveTurn, LiveTurns
from ui.shared import SharedState

log = logging.getLogger(__name__)

CONVERSATIONS_PAGE = 30
CONTINUE = "Continue from where you stopped."
RELOAD_WAIT_S = 30.0


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
    updated: dict[str, str] = field(default_factory=dict)  # id -> last change (ISO 8601), for grouping
    busy: bool = False  # an answer is streaming
    live: str = ""  # the answer streamed so far
    stopped: bool = False
    turn: str | None = None  # this tab's latest turn (ui/live.py), and whether its end is in `rows`
    turn_shown: bool = True


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


_MARKUP = [
    (re.compile(r"!?\[([^\]]*)\]\([^)]*\)"), r"\1"),  # [text](url), ![alt](src)
    (re.compile(r"^\s*(#{1,6}|>|[-*+]|\d+\.)\s+", re.M), ""),  # headings, quotes, list markers
    (re.compile(r"(\*{1,3}|`+|~~)(\S(?:.*?\S)?)\1"), r"\2"),  # *em*, **strong**, `code`, ~~del~~
    (re.compile(r"\s+"), " "),
]


def plain_title(title: str) -> str:
    """A conversation's title as the list shows it: the first message's words, without its Markdown
    (`# heading`, `**bold**`, links); identifiers such as `__init__` stay as written."""
    out = str(title)
    for pattern, repl in _MARKUP:
        out = pattern.sub(repl, out)
    return out.strip() or str(title).strip()


@dataclass(frozen=True)
class Upload:
    """A file attached in the page: its name, its bytes and the type its bytes show (the graph's check)."""

    name: str
    data: bytes
    mime: str

    def block(self) -> dict[str, Any]:
        """A LangChain standard content block, what every way in sends the graph."""
        kind = "file" if self.mime == "application/pdf" else "image"
        b64 = base64.b64encode(self.data).decode()
        return {"type": kind, "base64": b64, "mime_type": self.mime, "filename": self.name}

    def facts(self) -> dict[str, str]:
        """What the chip under the message shows (as for a stored message: ui.chat.attachment_facts)."""
        return {"name": self.name, "mime": self.mime, "size": human_size(len(self.data))}


def split_input(value: Any) -> tuple[str, list[str]]:
    """The multimodal box's value -> (text, uploaded file paths); a plain string is text alone."""
    if isinstance(value, dict):
        files = [str(f.get("path") if isinstance(f, dict) else f) for f in value.get("files") or []]
        return str(value.get("text") or ""), [f for f in files if f]
    return (value if isinstance(value, str) else ""), []


def read_uploads(paths: list[str], settings: Any) -> list[Upload]:
    """Each upload's bytes, checked as the graph checks them (type from the bytes, size, count,
    decoding, pixels, PDF pages): `LimitExceeded` in the graph's words otherwise. Gradio's copies are
    left in place (a refused message keeps its files in the box): `discard_uploads` once sent. Runs in
    a thread: reading and decoding are blocking work."""
    from graph.nodes import check_attachments  # the graph's modules load with the first attachment
    from graph.validation import InvalidInput

    found: list[tuple[str, bytes]] = []
    for p in paths:
        path = Path(p)
        try:
            found.append((path.name, path.read_bytes()))
        except OSError:
            raise LimitExceeded(
                f"{path.name} is no longer on the server (it was sent, or kept too long): attach it again."
            ) from None
    probe = [{"type": "image", "base64": base64.b64encode(d).decode(), "filename": n} for n, d in found]
    try:
        infos = check_attachments([HumanMessage(content=probe)], settings)  # type: ignore[list-item]
    except InvalidInput as exc:
        raise LimitExceeded(f"{str(exc)[:1].upper()}{str(exc)[1:]}.") from None
    return [Upload(n, d, info.mime_type) for (n, d), info in zip(found, infos, strict=True)]


def question(text: str, files: list[Upload] | None) -> str | list[HumanMessage]:
    """What `ChatService.turn` sends: the text alone, or one message of the text (if any) and each file
    as a LangChain standard content block, as on every way in."""
    if not files:
        return text
    typed: list[str | dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    return [HumanMessage(content=[*typed, *[f.block() for f in files]])]


def discard_uploads(paths: list[str]) -> None:
    """Delete Gradio's copies of sent files: the message holds them now (the graph keeps them in its
    attachment store), and nobody can fetch them from Gradio's cache afterwards."""
    for p in paths:
        with contextlib.suppress(OSError):
            Path(p).unlink()


def _file_path(f: Any) -> str:
    """A file of Gradio's API (FileData, or its dict) -> its path in Gradio's cache."""
    path = f.get("path") if isinstance(f, dict) else getattr(f, "path", None)
    return path if isinstance(path, str) else ""


def _index(index: Any) -> int:
    """Gradio's message index (an int, or [i, j] for grouped messages) -> int."""
    if isinstance(index, list | tuple):
        index = index[0]
    return int(index)


@dataclass(frozen=True)
class GenerationOptions:
    """The page's five generation settings as the browser sent them (`turn_params` checks and clamps
    them before a turn). One value handed on by field name, so that no setting, nor anything else, can
    slip into another's place on the way."""

    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: float | None = None
    system_prompt: str | None = None


class TurnKind(StrEnum):
    """What a page turn does with the conversation on screen."""

    NEW = "new"  # a message after the last answer: typed, a starter prompt, Continue
    RESEND = "resend"  # the question answered at `row` (None: the last) asked again as it was
    EDIT = "edit"  # the question at `row` asked again as edited: what came after it is forgotten


@dataclass(frozen=True)
class TurnAsk:
    """One turn the page asks for, whichever control asked (Send, a starter prompt, Continue, Retry,
    Regenerate, Edit). Built from Gradio's positional inputs by the event handler Gradio calls, then
    handed to `ChatHandlers.page_turn`: the request travels by name, never in another input's place."""

    state: Any  # the tab's gr.State value (the user's `Session` only if it is theirs: `_session`)
    request: gr.Request | None  # who asks (`ChatHandlers.user_of`)
    options: GenerationOptions
    kind: TurnKind = TurnKind.NEW
    text: str = ""  # NEW: what was typed; EDIT: the edited question (RESEND asks the stored one's)
    files: tuple[str, ...] = ()  # NEW: the box's uploads (paths in Gradio's cache)
    turn_id: str | None = None  # NEW: the id the page's script also sent it under (ui/live.py)
    row: int | None = None  # RESEND, EDIT: the chat's row it is about


class ChatHandlers:
    """The page's event handlers (see the module docstring)."""

    def __init__(
        self,
        service: ChatService,
        identity: Identity,
        limiter: RateLimiter,
        *,
        shared: SharedState | None = None,
    ) -> None:
        self.service = service
        self.identity = identity
        self.limiter = limiter
        self.settings = service.settings
        # The page's turns in this process (ui/live.py): Stop ends one; a reload mid-answer waits for
        # its conversation's turn to end (and be saved) instead of showing the question alone. A turn
        # sent two ways is claimed in `shared` too, so that two replicas never both run it.
        self.live = LiveTurns(shared)

    def user_of(self, request: gr.Request | None) -> str:
        return self.identity.user_of(request)

    def textbox_busy(self) -> Any:
        """While an answer streams the box stays usable (people type their next message meanwhile);
        only Send waits, replaced by Stop."""
        return gr.update(submit_btn=False, stop_btn=True)

    def textbox_ready(self) -> Any:
        return gr.update(interactive=True, submit_btn=True, stop_btn=False)

    def shown(self, st: Session) -> list[dict[str, Any]]:
        """The chat's value for `st`'s rows (the answers' own text, follow-ups on the last one)."""
        return chatbot_value(st.rows, self.service.client.models)

    def decor(self, st: Session) -> str:
        """What ui/page.js draws beside the chat (footers, badges, typed text) and the page's `?c=`."""
        return decorations(st.rows, st.sid if st.rows else None, st.updated)

    # --- the streamed turn, shared by send / regenerate / edit -------------------------------
    def start_turn(
        self,
        turn: LiveTurn,
        user: str,
        sid: str | None,
        sent: Any,
        params: TurnParams,
        slot: StreamSlot,
        *,
        text: str,
        human_id: str | None = None,
    ) -> None:
        """Run the turn `turn` (claimed first by the caller) on its own task: `sent` into `user`'s
        conversation `sid` (None: a new one). Its stream place is released when it ends."""
        human_id = human_id or str(uuid.uuid4())
        sid = sid or uuid.uuid4().hex
        turn.start(
            self.service.turn(user, sid, sent, params, human_id=human_id, slot=slot),
            sid=sid,
            human_id=human_id,
            text=text,
        )
        assert turn.task is not None
        turn.task.add_done_callback(lambda _task: slot.release())  # also if it never began

    def finish(self, st: Session, done: Done, human_id: str | None) -> None:
        """The turn's end in the rows: its answer (or note) in place of the streamed text."""
        rows = st.rows
        final = answer_row(
            done.text,
            done.meta,
            kind=done.kind,
            row_id=done.answer_id if done.answer_saved else None,
            turn=human_id,
        )
        final["ref_id"] = done.answer_id
        if rows and rows[-1]["role"] == "assistant" and rows[-1].get("turn") == human_id:
            rows[-1] = final
        else:
            rows.append(final)
        if not done.human_saved and len(rows) >= 2:
            rows[-2]["id"] = None

    async def run_turn(
        self,
        user: str,
        st: Session,
        text: str,
        params: TurnParams | None,
        slot: StreamSlot | None,
        *,
        files: list[Upload] | None = None,
        turn: LiveTurn | None = None,
    ) -> AsyncIterator[tuple]:
        """Show a turn as it streams: `turn` already started (by the page's straight request,
        ui/live.py), or started here (`turn` claimed but not started, or None)."""
        if turn is None or not turn.started:
            assert params is not None
            assert slot is not None
            turn = turn or self.live.new(user)
            st.sid = st.sid or uuid.uuid4().hex
            self.start_turn(turn, user, st.sid, question(text, files), params, slot, text=text)
        st.sid = turn.sid
        st.turn, st.turn_shown = turn.turn_id, False
        human_id = turn.human_id
        rows = st.rows
        for row in rows:  # only the last question keeps its files' bytes (for regenerate, retry, edit)
            row.pop("uploads", None)
        rows.append(user_row(text, human_id, [f.facts() for f in files or []]))
        if files:
            rows[-1]["uploads"] = files
        st.busy, st.live, st.stopped = True, "", False
        answer: dict[str, Any] | None = None
        try:
            # The box's text and files were taken in the browser already (ui.page.TAKE_INPUT).
            yield self.shown(st), self.textbox_busy(), st, gr.skip(), self.decor(st)
            async for event in turn.follow():
                if st.stopped:
                    return
                if isinstance(event, Delta):
                    st.live = event.text
                    if answer is None:
                        answer = answer_row("", None, turn=human_id)
                        rows.append(answer)
                    answer["text"] = event.text
                    # The decorations wait for the end: a streaming answer has no footer yet.
                    yield self.shown(st), gr.skip(), gr.skip(), gr.skip(), gr.skip()
                    continue
                self.finish(st, event, human_id)
                st.turn_shown = True
                yield self.shown(st), gr.skip(), st, self.service.health.html(), self.decor(st)
        finally:
            st.busy = False

    async def take_slot(self, user: str) -> StreamSlot:
        """A place among the answers streaming at once (shared with Gradio's `/chat` and `/api/chat`),
        within `user`'s share of them, waiting at most `stream_wait_s`: `Busy` (a LimitExceeded) tells
        the user the server is busy while their text stays in the input box."""
        return await self.service.stream_slot(user)

    async def check_turn(
        self, user: str, text: str, options: GenerationOptions | tuple, *, files: bool = False
    ) -> tuple[str, TurnParams]:
        """Limits first (length, parameters, rate): a refused message stays in the input box. With
        `files` the text may be empty (a message of attachments only, as `/api/chat` takes). A tuple of
        the five settings in `GenerationOptions`' order is taken too (ui/live.py's straight request)."""
        if isinstance(options, tuple):
            options = GenerationOptions(*options)
        if self.service.draining:
            raise LimitExceeded("The server is restarting: send your message again in a few seconds.")
        try:
            if files and not (text if isinstance(text, str) else "").strip():
                text = ""
            else:
                text = check_message(text, self.settings.max_message_chars)
            params = turn_params(
                self.settings,
                model=options.model,
                temperature=options.temperature,
                top_p=options.top_p,
                max_tokens=options.max_tokens,
                system_prompt=options.system_prompt,
                models=self.service.client.models,
            )
        except LimitExceeded:
            UI_REJECTED.labels("message").inc()
            raise
        try:
            await self.limiter.acquire(user)
        except LimitExceeded:
            UI_REJECTED.labels("rate").inc()
            raise
        return text, params

    def refused(self, st: Session, exc: Exception, restore: Any = None) -> tuple:
        """A turn refused before it started; `restore`: what to put back in the input box (the text, or
        the box's text and files)."""
        gr.Warning(str(exc), title="Message not sent")
        box = gr.update(value=restore) if restore is not None else gr.skip()
        return gr.skip(), box, st, gr.skip(), gr.skip()

    # --- the page's turns: one entry point, and the event handlers Gradio calls -----------------
    async def page_turn(self, ask: TurnAsk) -> AsyncIterator[tuple]:
        """Every turn the page asks for: the user from the request, their tab, then a new message or a
        question asked again. Streams the outputs of `ui.page`'s turn events."""
        user = self.user_of(ask.request)
        st = _session(ask.state, user)
        turns = self.new_message(user, st, ask) if ask.kind is TurnKind.NEW else self.ask_again(user, st, ask)
        async for out in turns:
            yield out

    async def new_message(self, user: str, st: Session, ask: TurnAsk) -> AsyncIterator[tuple]:
        """A message after the last answer. `ask.turn_id`: the id under which the page's script also
        sent it straight to `POST /page/turn` (ui/live.py); whichever arrives first runs the turn, the
        other follows it."""
        paths = list(ask.files)
        restore = {"text": ask.text, "files": paths} if paths else ask.text
        turn: LiveTurn | None = None
        if ask.turn_id is not None and 8 <= len(ask.turn_id) <= 64 and not paths:
            turn, first = await self.live.claim(user, ask.turn_id)
            if not first:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(turn.resolved.wait(), self.settings.stream_wait_s + 5)
                if not turn.resolved.is_set():
                    log.warning("a straight page turn was not started in time: Gradio's event runs it")
                    turn.refuse(LimitExceeded("not started in time"))
                if turn.started and not st.busy and st.sid in (None, turn.sid):
                    async for out in self.run_turn(user, st, turn.text, None, None, turn=turn):
                        yield out
                    return
                if turn.started and turn.remote:  # run by another replica: it cannot be stopped from here
                    log.warning("a page turn run by another replica did not match its tab: not run twice")
                    busy = "This message is being answered in another window: reload the page to see it."
                    yield self.refused(st, LimitExceeded(busy))
                    return
                if turn.started:  # not this tab's to show (it streams, or shows another conversation)
                    log.warning("a straight page turn did not match its tab: stopped")
                    await turn.stop()
                turn = None  # refused there: the checks below say why, in the page's words
        try:
            if st.busy:  # another tab of this session, or Enter pressed twice at once
                raise LimitExceeded("Wait for the current answer, or press Stop.")
            text, params = await self.check_turn(user, ask.text, ask.options, files=bool(paths))
            # A bad file is refused here, in the graph's words, with the message and its files kept.
            files = await asyncio.to_thread(read_uploads, paths, self.settings) if paths else []
            slot = await self.take_slot(user)
        except LimitExceeded as exc:
            if turn is not None:
                turn.refuse(exc)
            yield self.refused(st, exc, None if st.busy else restore)
            return
        except BaseException:  # cancelled while waiting for a place: the straight request must not wait
            if turn is not None and not turn.resolved.is_set():
                turn.refuse(LimitExceeded("The message was not sent."))
            raise
        await asyncio.to_thread(discard_uploads, paths)
        async for out in self.run_turn(user, st, text, params, slot, files=files, turn=turn):
            yield out

    async def ask_again(self, user: str, st: Session, ask: TurnAsk) -> AsyncIterator[tuple]:
        """A question on screen asked again (RESEND as it was, EDIT as edited): the stored turn(s) from
        it on are forgotten, then it is sent with its files when this page still holds them (the last
        question sent from it)."""
        if ask.kind is TurnKind.EDIT:
            j = ask.row if ask.row is not None and 0 <= ask.row < len(st.rows) else None
            if j is None or st.rows[j]["role"] != "user":
                yield self.shown(st), gr.skip(), st, gr.skip(), self.decor(st)
                return
            text = ask.text
        else:
            last = len(st.rows) - 1
            at = last if ask.row is None else min(ask.row, last)
            j = next((k for k in range(at, -1, -1) if st.rows[k]["role"] == "user"), None)
            if j is None:
                yield self.refused(st, LimitExceeded("There is no question to ask again."))
                return
            text = st.rows[j]["text"]
        if st.busy:
            yield self.refused(st, LimitExceeded("Wait for the current answer, or press Stop."))
            return
        files: list[Upload] = list(st.rows[j].get("uploads") or [])
        if not files and st.rows[j].get("files"):
            yield self.refused(
                st,
                LimitExceeded(
                    "This message's attachments are not kept on this page: attach them again in a new "
                    "message (only the last message sent from this page can be resent with its files)."
                ),
            )
            return
        try:
            text, params = await self.check_turn(user, text, ask.options, files=bool(files))
            slot = await self.take_slot(user)
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
            async for out in self.run_turn(user, st, text, params, slot, files=files):
                yield out
        finally:
            slot.release()

    # Gradio calls these with the page's inputs in the order ui/page.py wires them: each turns its
    # inputs into a `TurnAsk` at once, by name, and hands it to `page_turn`.
    async def send(
        self,
        box: Any,
        st: Any,
        model: str,
        temperature: float,
        top_p: float,
        max_tokens: float,
        system: str,
        turn_id: Any = "",
        request: gr.Request = None,
    ) -> AsyncIterator[tuple]:
        """Enter or Send: the box's text and files (taken from the box in the browser: ui.page.TAKE_INPUT)."""
        text, paths = split_input(box)
        ask = TurnAsk(
            state=st,
            request=request,
            options=GenerationOptions(
                model=model, temperature=temperature, top_p=top_p, max_tokens=max_tokens, system_prompt=system
            ),
            text=text,
            files=tuple(paths),
            turn_id=turn_id if isinstance(turn_id, str) and turn_id else None,
        )
        async for out in self.page_turn(ask):
            yield out

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
        """The chat's Retry button on an answer: its question asked again."""
        ask = TurnAsk(
            state=st,
            request=request,
            options=GenerationOptions(
                model=model, temperature=temperature, top_p=top_p, max_tokens=max_tokens, system_prompt=system
            ),
            kind=TurnKind.RESEND,
            row=_index(retry.index),
        )
        async for out in self.page_turn(ask):
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
        """A question edited in the chat, sent as edited."""
        value = edit.value
        if isinstance(value, list):  # content blocks
            value = "".join(b.get("text", "") for b in value if isinstance(b, dict))
        ask = TurnAsk(
            state=st,
            request=request,
            options=GenerationOptions(
                model=model, temperature=temperature, top_p=top_p, max_tokens=max_tokens, system_prompt=system
            ),
            kind=TurnKind.EDIT,
            text=str(value),
            row=_index(edit.index),
        )
        async for out in self.page_turn(ask):
            yield out

    async def follow_up(
        self,
        st: Any,
        model: str,
        temperature: float,
        top_p: float,
        max_tokens: float,
        system: str,
        choice: gr.SelectData,
        request: gr.Request,
    ) -> AsyncIterator[tuple]:
        """An option under the last answer: "retry:<model>" asks the last question again of that model
        (a failed answer's "Retry with Gemini"); "continue" asks the model to go on where it was cut."""
        value = str(choice.value or "")
        options = GenerationOptions(
            model=model, temperature=temperature, top_p=top_p, max_tokens=max_tokens, system_prompt=system
        )
        if value.startswith("retry:"):
            options = replace(options, model=value.removeprefix("retry:"))
            ask = TurnAsk(state=st, request=request, options=options, kind=TurnKind.RESEND)
        elif value == "continue":
            ask = TurnAsk(state=st, request=request, options=options, text=CONTINUE)
        else:
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        async for out in self.page_turn(ask):
            yield out

    async def starter(
        self,
        st: Any,
        model: str,
        temperature: float,
        top_p: float,
        max_tokens: float,
        system: str,
        choice: gr.SelectData,
        request: gr.Request,
    ) -> AsyncIterator[tuple]:
        """A starter prompt of the empty chat, sent as if typed."""
        value = choice.value
        ask = TurnAsk(
            state=st,
            request=request,
            options=GenerationOptions(
                model=model, temperature=temperature, top_p=top_p, max_tokens=max_tokens, system_prompt=system
            ),
            text=value.get("text", "") if isinstance(value, dict) else str(value or ""),
        )
        async for out in self.page_turn(ask):
            yield out

    async def stop(self, st: Any, request: gr.Request) -> tuple:
        """Stop the answer streaming in this tab and show it as it was saved: stopped with what
        streamed, or whole when the model had finished before Stop landed (a reload shows the same)."""
        user = self.user_of(request)
        st = _session(st, user)
        running = self.live.turns.get((user, st.turn)) if st.turn else None
        if running is None:
            return gr.skip(), gr.skip(), gr.skip()
        # Its end not in the rows yet: streaming, no longer followed (Gradio's cancel of the event may
        # come first), or just ended (then its end is what was saved).
        if not st.turn_shown:
            st.stopped, st.turn_shown = True, True
            human_id = running.human_id
            done = await running.stop()
            if done is not None:  # it had ended on its own before Stop landed: shown (and saved) whole
                self.finish(st, done, human_id)
            else:
                # What streamed, as far as this process knows: the tab's own copy can lag the turn's
                # (the page's straight request draws the first tokens, not this tab's event).
                latest = running.delta.text if running.delta is not None else ""
                shown_text = latest if len(latest) > len(st.live) else st.live
                row = answer_row(shown_text, {"interrupted": "stopped"}, turn=human_id)
                # The stopped turn is saved in the background (graph.turns), possibly after the turn's
                # task ended: once its own save is done, show what was kept, which holds the pieces
                # that came after the last update on screen and is whole if the model finished just
                # as Stop landed. A turn stopped before its first token may have no save of its own.
                if human_id:
                    await self.service.stopped_saved(human_id, 5.0 if latest else 1.0)
                row = await self.saved_answer(user, st.sid, human_id) or row
                if st.rows and st.rows[-1]["role"] == "assistant":
                    st.rows[-1] = row
                elif row["text"]:
                    st.rows.append(row)
        # An end already in the rows is sent again as well: the browser drops what the event Stop
        # cancels had not delivered yet, and the end may have been on its way.
        shown = self.shown(st)
        for _ in range(30):
            if not st.busy:
                break
            await asyncio.sleep(0.1)
        conv, _more = await self.conversation_choices(user, st)
        return shown, conv, self.decor(st)  # with the list's new dates

    async def saved_answer(self, user: str, sid: str | None, human_id: str | None) -> dict[str, Any] | None:
        """The stored answer to the question `human_id` as a row, if it is among the newest messages."""
        if not sid or not human_id:
            return None
        try:
            async with contextlib.aclosing(self.service.pages(user, sid)) as pages:
                page = await anext(pages, [])  # the newest page holds the last question
                rows = rows_from_messages(page)
                at = next((i for i, r in enumerate(rows) if r["id"] == human_id), None)
                if at is None or at + 1 >= len(rows) or rows[at + 1]["role"] != "assistant":
                    return None
                return {**rows[at + 1], "turn": human_id}
        except (AccessDenied, ConversationNotFound, MemoryUnavailable) as exc:
            log.warning("reading a stopped answer back failed: %s", type(exc).__name__)
        return None

    # --- conversations -----------------------------------------------------------------------
    async def conversation_choices(self, user: str, st: Session, *, more: bool = False) -> tuple[Any, Any]:
        try:
            page = await self.service.conversations(
                user, limit=CONVERSATIONS_PAGE, cursor=st.cursor if more else None
            )
        except MemoryUnavailable as exc:
            gr.Warning(friendly_error(exc))
            return gr.skip(), gr.skip()
        items = [(plain_title(c.title), c.session_id) for c in page.conversations]
        updated = {c.session_id: c.updated_at.isoformat() for c in page.conversations}
        if not more and st.sid and st.rows and st.sid not in {sid for _, sid in items}:
            # Just sent, not listed by the store yet (its first answer streams, its save is under way):
            # listed at the top under its first message's words, as the store will title it.
            first = next((r["text"] for r in st.rows if r["role"] == "user"), "")
            items.insert(0, (plain_title(first)[:80] or "New conversation", st.sid))
            updated[st.sid] = datetime.now(UTC).isoformat()
        st.listed = [*st.listed, *items] if more else items
        st.updated = {**st.updated, **updated} if more else updated
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
        """A new tab: the user's conversations; with `?c=<id>` in the address (a reload, a bookmark),
        that conversation opened."""
        user = self.user_of(request)
        st = Session(user=user)
        query = getattr(request, "query_params", None) if request is not None else None  # none in a unit test
        wanted = str((query or {}).get("c") or "").strip()[:200]
        shown: Any = gr.skip()
        title: Any = gr.skip()
        if wanted:
            shown, title = await self.load_conversation(user, st, wanted)
        conv, more = await self.conversation_choices(user, st)
        model: Any = gr.skip()
        if wanted:
            title = gr.update(value=next((t for t, s in st.listed if s == st.sid), ""))
            picked = model_of(st.rows, [v for _, v in picker_choices(self.service.client)[0]])
            model = gr.update(value=picked) if picked else gr.skip()
        return (
            st,
            conv,
            more,
            self.user_html(user),
            self.service.health.html(),
            shown,
            title,
            self.decor(st),
            model,
        )

    async def after_turn(self, st: Any, request: gr.Request) -> tuple:
        """After a turn: the box ready, the list (with the new dates), the Title box showing the open
        conversation's title (a conversation started in this tab has one now, as when reopened)."""
        user = self.user_of(request)
        st = _session(st, user)
        conv, _more = await self.conversation_choices(user, st)
        title = next((t for t, s in st.listed if s == st.sid), None) if st.sid else None
        # A refused second message ends while the first answer still streams: Stop stays then.
        return (
            (gr.skip() if st.busy else self.textbox_ready()),
            conv,
            self.decor(st),
            gr.update(value=title) if title is not None else gr.skip(),
        )

    async def list_new_conversation(self, st: Any, request: gr.Request) -> tuple:
        """The list as soon as a new conversation's first message is on screen (the chat's decorations
        change then), so it is there while its first answer streams; nothing otherwise."""
        user = self.user_of(request)
        st = _session(st, user)
        if not st.sid or not st.rows or st.sid in {sid for _, sid in st.listed}:
            return gr.skip(), gr.skip()
        conv, _more = await self.conversation_choices(user, st)
        return conv, self.decor(st)  # with its date: under "Today"

    async def more_conversations(self, st: Any, request: gr.Request) -> tuple:
        user = self.user_of(request)
        st = _session(st, user)
        conv, more = await self.conversation_choices(user, st, more=True)
        return conv, more, self.decor(st)

    def selected(self, st: Session) -> Any:
        """The sidebar's selection for the open conversation (none if it is not listed)."""
        return gr.update(value=st.sid if st.sid in {sid for _, sid in st.listed} else None)

    async def load_conversation(self, user: str, st: Session, sid: str) -> tuple[Any, Any]:
        """Open `sid` into `st` at once (all pages): (chat value, title). Not found or not the user's: a
        note in the chat saying so, and a new conversation. An answer still streaming into it (the tab
        was reloaded mid-answer) is waited for, at most `RELOAD_WAIT_S`."""
        if (running := self.live.running(user, sid)) is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(running.ended.wait(), RELOAD_WAIT_S)
            await self.service.saved(3)  # a stopped turn is saved in the background
        try:
            messages = await self.service.messages(user, sid)
        except (AccessDenied, ConversationNotFound, MemoryUnavailable) as exc:
            log.warning("open conversation refused for %s: %s", user, type(exc).__name__)
            st.sid, st.rows = None, []
            self.open_failed_note(exc)  # said once, in a notice: no answer-like bubble with Retry
            return [], gr.update(value="")
        st.sid, st.rows = sid, rows_from_messages(messages)
        return self.shown(st), gr.update(value=next((t for t, s in st.listed if s == sid), ""))

    def open_failed_note(self, exc: Exception) -> str:
        """Say once, in a notice, why a conversation did not open; the chat shows the empty state."""
        if isinstance(exc, AccessDenied | ConversationNotFound):
            # One text for both: whether an id exists under another account is nobody else's business.
            text = (
                "Conversation not found. Its link may be incomplete, it may have been deleted, or it "
                "belongs to another account. Pick one in the list, or start a new one."
            )
        else:
            text = friendly_error(exc)
        gr.Warning(text, title="Cannot open this conversation")
        return text

    async def open_conversation(self, sid: Any, st: Any, request: gr.Request) -> AsyncIterator[tuple]:
        user = self.user_of(request)
        st = _session(st, user)
        if st.busy:
            gr.Warning("Wait for the current answer, or press Stop.")
            yield gr.skip(), st, gr.skip(), gr.skip(), self.selected(st)  # the selection stays put
            return
        if not isinstance(sid, str) or not sid:
            yield gr.skip(), st, gr.skip(), gr.skip(), gr.skip()
            return
        messages: list = []
        try:
            async for page in self.service.pages(user, sid):
                messages[:0] = page
                st.sid, st.rows = sid, rows_from_messages(messages)
                title = next((t for t, s in st.listed if s == sid), "")
                yield self.shown(st), st, gr.update(value=title), self.decor(st), gr.skip()
        except (AccessDenied, ConversationNotFound, MemoryUnavailable) as exc:
            log.warning("open conversation refused for %s: %s", user, type(exc).__name__)
            st.sid, st.rows = None, []
            self.open_failed_note(exc)
            yield [], st, gr.update(value=""), self.decor(st), gr.skip()

    async def new_conversation(self, st: Any, request: gr.Request) -> tuple:
        st = _session(st, self.user_of(request))
        if st.busy:
            gr.Warning("Wait for the current answer, or press Stop.")
            return gr.skip(), st, gr.skip(), gr.skip(), gr.skip()
        st.sid, st.rows = None, []
        return [], st, gr.update(value=None), gr.update(value=""), self.decor(st)

    async def renamed(self, user: str, sid: str, title: Any) -> bool:
        """Rename `user`'s conversation `sid` (the store checks it is theirs); a refusal is a note in
        words. One path for the Title box and the list's inline rename."""
        try:
            await self.service.rename(user, sid, validate_title(title))
        except ValueError as exc:
            gr.Warning(f"Not renamed: {exc}.")
            return False
        except (AccessDenied, ConversationNotFound, MemoryUnavailable) as exc:
            gr.Warning(friendly_error(exc))
            return False
        gr.Info("Renamed.")
        return True

    async def rename(self, title: str, st: Any, request: gr.Request) -> Any:
        """The Title box: renames the open conversation."""
        user = self.user_of(request)
        st = _session(st, user)
        if st.sid is None or not st.rows:
            gr.Warning("Send a message first: an empty conversation has nothing to rename.")
            return gr.skip()
        if not await self.renamed(user, st.sid, title):
            return gr.skip()
        conv, _more = await self.conversation_choices(user, st)
        return conv

    async def rename_listed(self, asked: Any, st: Any, request: gr.Request) -> tuple:
        """Inline rename in the list (ui.page.RENAME_INLINE): `asked` is '{"sid": ..., "title": ...}'
        for any entry, renamed by its id without opening it (a rename needs no history, and opening
        would stop the chat on screen); the id comes from the browser, so the store's owner check
        decides. The list, and the Title box if it is the open conversation, show the new title."""
        user = self.user_of(request)
        st = _session(st, user)
        try:
            wanted = json.loads(asked) if isinstance(asked, str) else None
            sid, title = wanted["sid"], wanted["title"]
        except (ValueError, TypeError, KeyError):
            return gr.skip(), gr.skip()
        if not isinstance(sid, str) or not sid or not await self.renamed(user, sid[:200], title):
            return gr.skip(), gr.skip()
        conv, _more = await self.conversation_choices(user, st)
        if sid != st.sid:
            return conv, gr.skip()
        return conv, gr.update(value=next((t for t, s in st.listed if s == sid), ""))

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
                return (
                    gr.skip(),
                    st,
                    gr.skip(),
                    gr.skip(),
                    gr.update(visible=True),
                    gr.update(visible=False),
                    gr.skip(),
                )
            st.sid, st.rows = None, []
            gr.Info("Conversation deleted.")
        conv, more = await self.conversation_choices(user, st)
        return [], st, conv, more, gr.update(visible=True), gr.update(visible=False), self.decor(st)

    def health_html(self) -> str:
        return self.service.health.html()

    # --- the API for programmatic users ------------------------------------------------------
    async def api_turn_args(
        self,
        user: str,
        message: str,
        session_id: str,
        options: GenerationOptions,
        *,
        files: bool = False,
    ) -> tuple[str, str, TurnParams]:
        """(conversation id, text, parameters) for Gradio's API, or `gr.Error` with the limit's words."""
        try:
            text, params = await self.check_turn(user, message, options, files=files)
        except LimitExceeded as exc:
            raise gr.Error(str(exc)) from None
        sid = session_id.strip() if isinstance(session_id, str) and session_id.strip() else uuid.uuid4().hex
        return sid, text, params

    async def chat(
        self,
        message: str,
        model: str = "",
        session_id: str = "",
        temperature: float | None = None,
        max_tokens: int | None = None,
        request: gr.Request = None,
    ) -> AsyncIterator[str]:
        """Send one message and stream the answer as text. Empty `session_id`: a new conversation
        (`/turn` says which). The answer text accumulates: each streamed value is the whole answer so far.
        Its five inputs stay as they were (a raw `/gradio_api/call/chat` sends every one); `/turn` takes
        `top_p` and `system_prompt` too."""
        user = self.user_of(request)
        options = GenerationOptions(model=model or None, temperature=temperature, max_tokens=max_tokens)
        sid, text, params = await self.api_turn_args(user, message, session_id, options)
        async for event in self.service.turn(user, sid, text, params):
            if isinstance(event, Done) and event.kind == "failed":
                raise gr.Error(event.text)  # refused (another user's conversation, store down)
            yield event.text  # a backend failure is an answer saying so, as in the graph's contract

    async def turn(
        self,
        message: str,
        model: str = "",
        session_id: str = "",
        temperature: float | None = None,
        max_tokens: int | None = None,
        top_p: float | None = None,
        system_prompt: str | None = None,
        files: list[FileData] | None = None,
        request: gr.Request = None,
    ) -> AsyncIterator[TurnResult]:
        """Like `/chat`, but each streamed value is a `TurnResult`: the conversation's id (a new one when
        `session_id` is empty), the answer so far, and at the end (`done`) who answered and why. `files`:
        images and PDFs (gradio_client's `handle_file`; Gradio uploads them first), checked as the page's;
        with files the message may be empty."""
        user = self.user_of(request)
        paths = [p for p in (_file_path(f) for f in files or []) if p]
        options = GenerationOptions(
            model=model or None,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            system_prompt=system_prompt,
        )
        sid, text, params = await self.api_turn_args(user, message, session_id, options, files=bool(paths))
        try:
            uploads = await asyncio.to_thread(read_uploads, paths, self.settings) if paths else []
        except LimitExceeded as exc:
            raise gr.Error(str(exc)) from None
        finally:
            await asyncio.to_thread(discard_uploads, paths)  # an API call's files are not kept for a retry
        async for event in self.service.turn(user, sid, question(text, uploads), params):
            if isinstance(event, Done) and event.kind == "failed":
                raise gr.Error(event.text)
            yield turn_result(sid, event)

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
