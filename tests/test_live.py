"""The page sends a message two ways at once (ui/live.py): straight to `POST /page/turn`, for the first
tokens on screen sooner, and through Gradio's event. Checked here without a browser, on SQLite with a
model that echoes what it was sent: whichever arrives first, the turn runs once and is saved once; a
refusal speaks in the page; Stop shows what was saved; a tab that goes away does not stop the answer.
The browser's side is tests/browser/test_first_minutes.py::test_the_first_tokens_come_straight_...
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import gradio as gr
import httpx
import pytest
from fastapi import FastAPI

from graph.client import ChatClient
from graph.memory.sqlite import SQLiteConversationStore
from graph.settings import Settings
from tests.conftest import local_settings
from ui.auth import Identity
from ui.chat import ChatService, Delta, Done
from ui.handlers import ChatHandlers
from ui.limits import RateLimiter
from ui.live import LiveTurn, page_turn_router

GEN = ("gemma", 0.0, 0.9, 64, "")
USER = "local"


def _setup(
    tmp_path: Path, settings_kw: dict[str, Any] | None = None, **model_kw: Any
) -> tuple[ChatHandlers, Any, FastAPI]:
    from tests.fakes import ScriptedBackends
    from tests.hardening.conftest import ScriptedModel, echo

    settings: Settings = local_settings(tmp_path, **(settings_kw or {}))
    model = ScriptedModel(reply=echo, **model_kw)
    client = ChatClient.from_settings(
        settings,
        store=SQLiteConversationStore(settings.sqlite_path),
        backends=ScriptedBackends(settings, {"gemma": model, "gemini": model}),
    )
    h = ChatHandlers(ChatService(client), Identity(settings), RateLimiter(0))

    async def user_of(_request: Any) -> str | None:
        return USER

    app = FastAPI()
    app.include_router(page_turn_router(h, user_of))
    return h, model, app


def _http(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://page")


def _body(turn_id: str, message: str, session_id: str | None = None) -> dict[str, Any]:
    model, temperature, top_p, max_tokens, system = GEN
    return {
        "turn_id": turn_id,
        "session_id": session_id,
        "message": message,
        "model": model,
        "temperature": temperature,
        "top_p": top_p,
        "max_tokens": max_tokens,
        "system_prompt": system,
    }


def _streamed(sse: str) -> tuple[str, dict[str, Any]]:
    """The text of the `delta` events, and the `end` event's data."""
    text, end = "", {}
    for block in sse.strip().split("\n\n"):
        event, data = block.split("\n", 1)
        payload = json.loads(data.removeprefix("data: "))
        if event == "event: delta":
            text += payload["text"]
        elif event == "event: end":
            end = payload
    return text, end


async def _send(h: ChatHandlers, text: str, st: Any, turn_id: str) -> tuple[Any, list[tuple]]:
    request = gr.Request(username=None, session_hash="tab")
    outs = [o async for o in h.send(text, st, *GEN, turn_id, request=request)]
    st = next(o[2] for o in outs if hasattr(o[2], "rows"))
    return st, outs


async def _stored(h: ChatHandlers, sid: str) -> list[tuple[str, str]]:
    return [(m.type, m.text) for m in await h.service.messages(USER, sid)]


async def test_sent_both_ways_the_straight_request_first_the_turn_runs_once(tmp_path: Path) -> None:
    h, model, app = _setup(tmp_path)
    async with _http(app) as http:
        r = await http.post("/page/turn", json=_body("turn-0001", "hello there"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    text, end = _streamed(r.text)
    assert text == "echo:hello there"
    # Gradio's event arrives later with the same id: it shows that turn, it does not run another.
    st, _ = await _send(h, "hello there", None, "turn-0001")
    assert st.sid == end["session_id"]
    assert [(r["role"], r["text"]) for r in st.rows] == [("user", "hello there"), ("assistant", text)]
    assert all(r["id"] for r in st.rows)  # both saved, with their stored ids
    assert len(model.prompts) == 1
    assert await _stored(h, st.sid) == [("human", "hello there"), ("ai", "echo:hello there")]


async def test_sent_both_ways_gradio_first_the_straight_request_follows_it(tmp_path: Path) -> None:
    h, model, app = _setup(tmp_path)
    st, _ = await _send(h, "first message", None, "turn-0002")
    st, _ = await _send(h, "second one", st, "turn-0003")
    async with _http(app) as http:
        r = await http.post("/page/turn", json=_body("turn-0003", "second one", st.sid))
    text, end = _streamed(r.text)
    assert (text, end["session_id"]) == ("echo:first message|second one", st.sid)
    assert len(model.prompts) == 2
    assert [t for _, t in await _stored(h, st.sid)] == [
        "first message",
        "echo:first message",
        "second one",
        "echo:first message|second one",
    ]


async def test_a_straight_message_refused_is_refused_in_the_page_in_words(tmp_path: Path) -> None:
    h, model, app = _setup(tmp_path)
    too_long = "x" * (h.settings.max_message_chars + 1)
    async with _http(app) as http:
        r = await http.post("/page/turn", json=_body("turn-0004", too_long))
    assert r.status_code == 409 and "characters" in r.json()["detail"]
    with pytest.warns(UserWarning, match="characters"):
        st, outs = await _send(h, too_long, None, "turn-0004")
    assert outs[-1][1]["value"] == too_long  # the text goes back into the box
    assert st.rows == [] and model.prompts == []


async def test_a_page_event_cancelled_before_it_started_its_turn_does_not_hold_the_straight_request(
    tmp_path: Path,
) -> None:
    """Gradio's event claims the turn first, waits for a place among the streams, and is cancelled
    (Stop, a closed tab): the straight request for the same turn is answered at once, not left waiting."""
    h, model, app = _setup(tmp_path, {"max_concurrent_streams": 1, "stream_wait_s": 30})
    held = await h.take_slot(USER)  # the one place is taken: the event waits for it
    event = asyncio.create_task(_send(h, "wait for me", None, "turn-0011"))
    await asyncio.sleep(0.2)
    event.cancel()
    with pytest.raises(asyncio.CancelledError):
        await event
    async with _http(app) as http:
        r = await asyncio.wait_for(http.post("/page/turn", json=_body("turn-0011", "wait for me")), 5)
    assert r.status_code == 409
    held.release()
    assert model.prompts == []


async def test_only_json_is_taken(tmp_path: Path) -> None:
    """A form on another site can post text/plain with the user's cookie: refused before it runs."""
    h, model, app = _setup(tmp_path)
    async with _http(app) as http:
        r = await http.post(
            "/page/turn",
            content=json.dumps(_body("turn-0010", "hi")),
            headers={"content-type": "text/plain"},
        )
        assert r.status_code == 415
        r = await http.post("/page/turn", json={"turn_id": "x", "message": "hi"})
        assert r.status_code == 400
        # A session id the store would refuse is refused here, in words, before a turn is claimed.
        r = await http.post("/page/turn", json=_body("turn-0012", "hi", "../../etc"))
        assert r.status_code == 400 and "session id" in r.json()["detail"]
    assert model.prompts == [] and h.live.turns == {}


async def test_another_users_turn_id_is_not_followed(tmp_path: Path) -> None:
    """A turn id is scoped to its user: someone else sending the same id gets their own turn."""
    h, model, app = _setup(tmp_path)
    async with _http(app) as http:
        await http.post("/page/turn", json=_body("turn-0005", "mine"))
    bob = gr.Request(username="bob", session_hash="bob-tab")
    h.identity.user_of = lambda request: request.username or USER  # type: ignore[method-assign]
    outs = [o async for o in h.send("his", None, *GEN, "turn-0005", request=bob)]
    st = next(o[2] for o in outs if hasattr(o[2], "rows"))
    assert [r["text"] for r in st.rows] == ["his", "echo:his"]
    assert len(model.prompts) == 2


async def test_a_closed_tab_does_not_stop_the_answer(tmp_path: Path) -> None:
    """A reload or a closed tab leaves the turn: it finishes and is saved whole (only Stop ends it)."""
    gate = asyncio.Event()
    h, _model, _app = _setup(tmp_path, gate=gate)
    request = gr.Request(username=None, session_hash="tab")
    shown = h.send("keep going", None, *GEN, "turn-0006", request=request)
    first = await anext(shown)
    sid = first[2].sid
    await shown.aclose()  # the tab went away mid-answer
    running = h.live.running(USER, sid)
    assert running is not None
    gate.set()
    await asyncio.wait_for(running.ended.wait(), 10)
    assert await _stored(h, sid) == [("human", "keep going"), ("ai", "echo:keep going")]


async def test_stop_after_the_answer_ended_shows_it_as_saved(tmp_path: Path) -> None:
    """Stop that lands after the model finished (the race two CI runs met): the page shows the answer
    as it was saved, whole and not marked stopped, so a reload shows the same."""
    h, _model, _app = _setup(tmp_path)
    request = gr.Request(username=None, session_hash="tab")
    shown = h.send("quick one", None, *GEN, "turn-0007", request=request)
    st = (await anext(shown))[2]
    running = h.live.running(USER, st.sid)
    assert running is not None
    await asyncio.wait_for(running.ended.wait(), 10)  # the answer ended; the page has not drawn it yet
    chat, _conv, _decor = await h.stop(st, request)
    await shown.aclose()
    assert chat[-1]["content"] == "echo:quick one"
    assert "stopped" not in json.dumps(st.rows[-1].get("meta") or {})
    assert await _stored(h, st.sid) == [("human", "quick one"), ("ai", "echo:quick one")]


async def test_stop_as_the_answers_end_is_on_its_way_shows_the_end(tmp_path: Path) -> None:
    """Stop that lands after the page's event sent the answer's end, before the browser had it: the
    browser drops what the cancelled event had not delivered, so Stop's own reply shows the end."""
    h, _model, _app = _setup(tmp_path)
    request = gr.Request(username=None, session_hash="tab")
    shown = h.send("just in time", None, *GEN, "turn-0009", request=request)
    st = (await anext(shown))[2]
    async for _ in shown:  # up to the end's update, which Gradio's cancel then drops
        if st.turn_shown:
            break
    chat, _conv, decor = await h.stop(st, request)
    await shown.aclose()
    assert chat[-1]["content"] == "echo:just in time"
    assert "hc-decor" in decor  # the answer's footer and its follow-ups come with it


async def test_stop_mid_answer_keeps_what_streamed_marked_stopped(tmp_path: Path) -> None:
    h, _model, _app = _setup(tmp_path, delay_s=0.05, chunk_chars=2)
    request = gr.Request(username=None, session_hash="tab")
    shown = h.send("a long question to echo back", None, *GEN, "turn-0008", request=request)
    st = (await anext(shown))[2]
    async for _ in shown:  # until some of the answer is on screen
        if st.live:
            break
    chat, _conv, _decor = await h.stop(st, request)
    await shown.aclose()
    stored = await _stored(h, st.sid)
    assert stored[0] == ("human", "a long question to echo back")
    assert stored[1][0] == "ai" and "echo:a long question to echo back".startswith(stored[1][1])
    assert len(stored[1][1]) < len("echo:a long question to echo back")
    assert chat[-1]["content"] == stored[1][1]  # the page shows what was kept, as a reload would
    assert st.rows[-1]["meta"]["interrupted"] == "stopped"


async def test_stop_waits_for_a_slow_save_and_shows_what_was_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store slow to take the stopped turn's save (Firestore under load, seen in CI): the page waits
    for that turn's own save, then shows what was kept with its footer, as a reload would."""
    from graph.memory.sqlite import SQLiteChatMessageHistory

    slow_add = SQLiteChatMessageHistory.aadd_messages

    async def slow_for_answers(self: Any, messages: Any, **kw: Any) -> None:
        if any(m.type == "ai" for m in messages):
            await asyncio.sleep(3.5)  # longer than a fixed wait of a few seconds
        await slow_add(self, messages, **kw)

    monkeypatch.setattr(SQLiteChatMessageHistory, "aadd_messages", slow_for_answers)
    # One update on screen (the first piece), then none for a while: the pieces after it are only in
    # what the stopped turn saves.
    h, _model, _app = _setup(tmp_path, {"stream_interval_ms": 60_000}, delay_s=0.05, chunk_chars=2)
    request = gr.Request(username=None, session_hash="tab")
    shown = h.send("a long question to echo back", None, *GEN, "turn-0010", request=request)
    st = (await anext(shown))[2]
    async for _ in shown:
        if st.live:
            break
    await asyncio.sleep(0.5)  # more pieces stream, none drawn
    chat, _conv, decor = await h.stop(st, request)
    await shown.aclose()
    stored = await _stored(h, st.sid)
    assert stored[1][0] == "ai" and len(stored[1][1]) > len(st.live)
    assert chat[-1]["content"] == stored[1][1]
    assert st.rows[-1]["meta"]["interrupted"] == "stopped"
    assert "hc-decor" in decor


async def test_followers_see_every_update_and_the_end() -> None:
    async def events() -> Any:
        for text in ("a", "ab", "abc"):
            yield Delta(text)
            await asyncio.sleep(0)
        yield Done("answer", "abc")

    turn = LiveTurn(USER, "turn-0009")
    seen: list[list[str]] = [[], []]

    async def follow(i: int) -> None:
        async for event in turn.follow():
            seen[i].append(event.text)

    followers = [asyncio.create_task(follow(i)) for i in (0, 1)]
    await asyncio.sleep(0)
    turn.start(events(), sid="s", human_id="h", text="q")
    await asyncio.wait_for(asyncio.gather(*followers), 5)
    for got in seen:
        assert got[-2:] == ["abc", "abc"] and got[0] == "a"  # the last text, then the end's
    with pytest.raises(RuntimeError):
        turn.start(events(), sid="s", human_id="h", text="q")  # a turn runs once
