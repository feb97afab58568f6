"""The page's turns, each run once on its own task and followed by whoever shows it.

Why: the issue's goal is that the page adds at most 10% to the backend's time to first token. Through
Gradio's event path a message waits ~20-50 ms in Gradio's front end before it is even sent, then Gradio's
queue, then a render per update (tens to hundreds of ms in all, measured in issue 13's note). So the page
sends a typed message twice at once: straight to `POST /page/turn` (ui/page.py's EARLY_TOKENS, which
draws the first tokens itself), and through Gradio's event as before. Both name the same turn id; the
first to arrive starts the turn here, the other follows the same run: one turn, one save, whoever is
late. Gradio's event stays the page's source of truth (the chat's rows, the footer, Stop, the list);
the straight path only draws tokens sooner.

With several replicas the two requests can land on two of them (the page keeps to one through the
balancer's cookie, but a straight request is an ordinary POST and an IAP'd client may spread them). So a
doubly sent turn is also claimed in the shared store (ui/shared.py) under its user and id: the replica
that wins runs it and writes its state there (started, refused, ended with its `Done`); the other one
follows that record (`LiveTurn` with `remote` set) instead of running a second turn: Gradio's event
there shows the question and, when the turn ends, the saved answer, and a straight request there is
answered 409 (Gradio's event, wherever it runs, shows the turn). Tokens as they stream stay on the replica
that runs the turn. During a store outage the claim is this process's only, as with one replica.

Every page turn runs here, not only the doubly sent ones, so that Stop (`LiveTurn.stop`), a reload
mid-answer (`LiveTurns.running`) and the shutdown's drain meet one kind of turn. A turn does not end
when a follower leaves (a closed tab, a reload, Gradio's cancel of its event): it finishes and is
saved, and a reload shows it whole. Only Stop (and the shutdown) ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError

# The same bounded SSE response and request checks as /api/chat.
from ui.api import EventStream, checked_session_id, require_json, sse_event
from ui.chat import Delta, Done
from ui.limits import LimitExceeded
from ui.shared import Fallbacks, LocalState, SharedState, StoreUnavailable, key_part

log = logging.getLogger(__name__)

KEEP_ENDED_S = 120.0  # a late follower (Gradio's event after a short answer) still finds the end
RECORD_TTL_S = 900.0  # a turn's record in the shared store, renewed at each change
REMOTE_POLL_S = 0.2  # how often a follower on another replica reads the record
STOP_POLL_S = 0.5  # how often the replica running a shared turn looks for a Stop pressed elsewhere


class LiveTurn:
    """One page turn: started once (`start`) or refused (`refuse`) by whoever claimed it first; any
    number of followers (`follow`) see the latest text and the end."""

    def __init__(self, user: str, turn_id: str) -> None:
        self.user, self.turn_id = user, turn_id
        self.sid: str | None = None
        self.human_id: str | None = None
        self.text = ""
        self.delta: Delta | None = None
        self.done: Done | None = None
        self.refused: LimitExceeded | None = None
        self.task: asyncio.Task[None] | None = None
        self.resolved = asyncio.Event()  # started or refused
        self.ended = asyncio.Event()
        self.ended_at: float | None = None
        self._changed = asyncio.Event()
        self.record: TurnRecord | None = None  # this replica runs it: its state goes to the shared store
        self.remote = False  # another replica runs it: followed through the shared store
        self._remote_started = False
        self._watch: asyncio.Task[None] | None = None
        self._stop_elsewhere: Callable[[], Awaitable[None]] | None = None  # a remote turn's Stop

    @property
    def started(self) -> bool:
        return self.task is not None or self._remote_started

    def start(self, events: AsyncIterator[Delta | Done], *, sid: str, human_id: str, text: str) -> None:
        if self.resolved.is_set():
            raise RuntimeError("this turn was already started or refused")
        self.sid, self.human_id, self.text = sid, human_id, text
        self.task = asyncio.get_running_loop().create_task(self._pump(events), name=f"turn-{sid}")
        self.resolved.set()
        if self.record is not None:
            self.record.write({"state": "started", "sid": sid, "human_id": human_id, "text": text})
            self._watch = self.record.watch_for_stop(self)

    def refuse(self, exc: LimitExceeded) -> None:
        self.refused = exc
        self.resolved.set()
        self._end()

    async def _pump(self, events: AsyncIterator[Delta | Done]) -> None:
        try:
            async with contextlib.aclosing(events):
                async for event in events:
                    if isinstance(event, Delta):
                        self.delta = event
                    else:
                        self.done = event
                    self._notify()
        finally:
            self._end()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _end(self) -> None:
        self.ended_at = time.monotonic()
        self.ended.set()
        self._notify()
        if self.record is not None:
            if self.refused is not None:
                self.record.write({"state": "refused", "message": str(self.refused)})
            else:
                done = None
                if self.done is not None:  # its error (an exception) stays here: the kind and text say it
                    fields = dataclasses.fields(self.done)
                    done = {f.name: getattr(self.done, f.name) for f in fields if f.name != "error"}
                started = {"sid": self.sid, "human_id": self.human_id, "text": self.text}
                self.record.write({"state": "ended", **started, "done": done})

    def follow_record(self, state: SharedState, key: str) -> None:
        """Follow the turn another replica runs, through its record in the shared store; `stop` asks
        that replica to stop it (`TurnRecord.watch_for_stop`)."""
        self.remote = True
        self._watch = asyncio.get_running_loop().create_task(self._read_record(state, key))

        async def stop_elsewhere() -> None:
            try:
                await state.put(f"{key}:stop", "1", RECORD_TTL_S)
            except StoreUnavailable:
                log.warning("Stop of a turn run by another replica not sent: the shared store is unavailable")

        self._stop_elsewhere = stop_elsewhere

    async def _read_record(self, state: SharedState, key: str) -> None:
        misses = 0
        while not self.ended.is_set():
            try:
                raw = await state.get(key)
            except StoreUnavailable:
                raw, misses = "", misses + 1
            if raw is None or misses * REMOTE_POLL_S > 30:  # expired, or the store gone for long
                if not self.resolved.is_set():
                    self.refuse(LimitExceeded("The message was not started. Send it again."))
                else:
                    self._end()
                return
            record = json.loads(raw) if raw else {}
            kind = record.get("state")
            if kind in ("started", "ended") and not self._remote_started and "sid" in record:
                self.sid, self.human_id, self.text = record["sid"], record["human_id"], record["text"]
            if kind == "started" and not self._remote_started:
                self._remote_started = True
                self.resolved.set()
            elif kind == "refused":
                self.refuse(LimitExceeded(str(record.get("message") or "The message was not sent.")))
                return
            elif kind == "ended":
                if not self._remote_started:  # started and ended between two reads
                    self._remote_started = True
                    self.resolved.set()
                if record.get("done"):
                    self.done = Done(**record["done"])
                self._end()
                return
            await asyncio.sleep(REMOTE_POLL_S)

    async def follow(self) -> AsyncIterator[Delta | Done]:
        """The answer so far whenever it grows, then its `Done` (none: the turn was stopped or refused).
        Leaving early only stops following."""
        sent: Delta | None = None
        while True:
            changed = self._changed
            if self.delta is not None and self.delta is not sent:
                sent = self.delta
                yield sent
                continue
            if self.ended.is_set():
                if self.done is not None:
                    yield self.done
                return
            await changed.wait()

    async def stop(self, wait_s: float = 5.0) -> Done | None:
        """Stop the turn (its graph saves what streamed, marked stopped) and wait for it to end: its
        `Done` if it ended on its own before the stop landed, else None."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
        elif self._stop_elsewhere is not None and not self.ended.is_set():
            await self._stop_elsewhere()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ended.wait(), wait_s)
        return self.done


class TurnRecord:
    """A turn's state in the shared store, written by the replica that runs it, in order, each write
    renewing the record's time."""

    def __init__(self, state: SharedState, key: str) -> None:
        self.state, self.key = state, key
        self._last: asyncio.Task[None] | None = None
        self.fallbacks = Fallbacks(log)

    def write(self, record: dict[str, Any]) -> None:
        previous = self._last

        async def write() -> None:
            if previous is not None:
                with contextlib.suppress(Exception):
                    await previous
            try:
                await self.state.put(self.key, json.dumps(record, default=str), RECORD_TTL_S)
            except StoreUnavailable as exc:
                self.fallbacks.note("a turn's state was not written to the shared store", exc)

        self._last = asyncio.get_running_loop().create_task(write())

    def watch_for_stop(self, turn: LiveTurn) -> asyncio.Task[None]:
        """While `turn` runs here, look for a Stop pressed on another replica (its follower's `stop`)."""

        async def watch() -> None:
            while not turn.ended.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(turn.ended.wait(), STOP_POLL_S)
                    return
                try:
                    asked = await self.state.get(f"{self.key}:stop")
                except StoreUnavailable:
                    continue
                if asked and turn.task is not None and not turn.task.done():
                    log.info("a turn was stopped from another replica")
                    turn.task.cancel()
                    return

        return asyncio.get_running_loop().create_task(watch())


class LiveTurns:
    """The page's turns in this process, by (user, turn id): the two ways a message arrives and a
    tab's Stop find a turn by its id, a reload mid-answer by its conversation (`running`). A turn sent
    two ways is also claimed in `state` when that is shared by the replicas (see the module docstring)."""

    def __init__(self, state: SharedState | None = None) -> None:
        self.turns: dict[tuple[str, str], LiveTurn] = {}
        self.state = state or LocalState()
        self.replica = uuid.uuid4().hex[:12]
        self.fallbacks = Fallbacks(log)

    async def claim(self, user: str, turn_id: str) -> tuple[LiveTurn, bool]:
        """The turn `turn_id` of `user`, and whether this caller is the first (then it must `start` or
        `refuse` it). Not the first: it follows the turn, run here or (`remote`) by another replica."""
        self._forget_old()
        key = (user, turn_id)
        if (turn := self.turns.get(key)) is not None:
            return turn, False
        turn = self.turns[key] = LiveTurn(user, turn_id)  # found by a second request here meanwhile
        if not self.state.shared:
            return turn, True
        record_key = f"turn:{key_part(user)}:{key_part(turn_id)}"
        claimed = json.dumps({"state": "claimed", "replica": self.replica})
        try:
            won = await self.state.claim(record_key, claimed, RECORD_TTL_S)
        except StoreUnavailable as exc:
            self.fallbacks.note("one turn per message: claimed in this process only", exc)
            return turn, True
        if won:
            turn.record = TurnRecord(self.state, record_key)
            return turn, True
        turn.follow_record(self.state, record_key)
        return turn, False

    def new(self, user: str) -> LiveTurn:
        """A turn sent one way only (no id from the page's script): nothing to claim elsewhere."""
        self._forget_old()
        turn_id = uuid.uuid4().hex
        turn = self.turns[(user, turn_id)] = LiveTurn(user, turn_id)
        return turn

    def running(self, user: str, sid: str | None) -> LiveTurn | None:
        """The turn streaming into `user`'s conversation `sid`, if any."""
        for turn in self.turns.values():
            if turn.user == user and turn.sid == sid and turn.started and not turn.ended.is_set():
                return turn
        return None

    def _forget_old(self) -> None:
        now = time.monotonic()
        for key, turn in list(self.turns.items()):
            if turn.ended_at is not None and now - turn.ended_at > KEEP_ENDED_S:
                del self.turns[key]


# --- the straight way in -------------------------------------------------------------------
class PageTurnRequest(BaseModel):
    """What ui/page.py's EARLY_TOKENS sends: the message and the settings Gradio's event sends too."""

    turn_id: str = Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9-]+$")
    session_id: str | None = Field(default=None, max_length=200)
    message: str
    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: float | None = None
    system_prompt: str | None = None


def page_turn_router(handlers: Any, user_of: Callable[[Request], Any]) -> APIRouter:
    """`POST /page/turn` for the page's own script (not an API: `/api/chat` is). `handlers`: the page's
    `ChatHandlers` (its checks, its stream places, its `LiveTurns`); `user_of`: the page's signed-in
    user of a request, None if none. Answers 409 when the turn is refused (Gradio's event then says
    why in the page's words), else the turn's text as Server-Sent Events (`delta`: the new piece; `end`)."""
    router = APIRouter()

    @router.post("/page/turn", include_in_schema=False)
    async def page_turn(request: Request) -> Response:
        user = await user_of(request)
        if not user:
            raise HTTPException(401, "not signed in")
        # JSON only: a form on another site cannot send it without a preflight (which is refused), on
        # top of the cross-site check every request passes (ui.security).
        require_json(request)
        try:
            body = PageTurnRequest.model_validate_json(await request.body())
        except ValidationError:
            raise HTTPException(400, "Invalid request body.") from None
        body.session_id = checked_session_id(body.session_id)
        turn, first = await handlers.live.claim(user, body.turn_id)
        if first:
            params_in = (body.model, body.temperature, body.top_p, body.max_tokens, body.system_prompt)
            slot = None
            try:
                text, params = await handlers.check_turn(user, body.message, params_in)
                slot = await handlers.take_slot(user)
                handlers.start_turn(turn, user, body.session_id, text, params, slot, text=text)
            except LimitExceeded as exc:
                turn.refuse(exc)
                raise HTTPException(409, str(exc)) from None
            except BaseException:
                if slot is not None:
                    slot.release()
                if not turn.resolved.is_set():  # Gradio's event must not wait for it: it runs its own
                    turn.refuse(LimitExceeded("The message could not be started."))
                raise
        elif turn.remote:  # another replica runs it: Gradio's event, wherever it is, shows it
            raise HTTPException(409, "This message is answered by another server.")
        else:  # Gradio's event claimed it first: follow its run once it starts (or say why not)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(turn.resolved.wait(), handlers.settings.stream_wait_s + 5)
            if not turn.resolved.is_set():
                raise HTTPException(409, "The message was not started.")
            if turn.refused is not None:
                raise HTTPException(409, str(turn.refused))

        async def pieces() -> AsyncIterator[bytes]:
            sent = 0
            async for event in turn.follow():
                if isinstance(event, Delta):
                    yield sse_event("delta", {"text": event.text[sent:]})
                    sent = len(event.text)
            yield sse_event("end", {"session_id": turn.sid})

        return EventStream(pieces(), None, write_timeout_s=handlers.settings.stream_write_timeout_s)

    return router
