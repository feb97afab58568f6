"""Per-tab state, cancel and uploads (issue 17, findings 6 and 8), through HTTP as signed-in users.

Gradio keys a tab on the `session_hash` its browser chose. Another signed-in user presenting that hash
must not get the tab's on-screen chat (from a handler or from the tab's event stream), nor stop its
answer through `/gradio_api/cancel`, which a stranger must not reach at all. The page takes no uploads:
`/gradio_api/upload` is refused and nothing lands in Gradio's temporary directory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import gradio as gr
import httpx
import pytest

from tests.hardening.conftest import login, new_id

pytestmark = [pytest.mark.timeout(120)]


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


@pytest.mark.integration
async def test_uploads_are_refused_and_nothing_is_written(chat_server: dict[str, Any]) -> None:
    tmp = chat_server["gradio_tmp"]
    before = _files(tmp)
    payload = b"UPLOAD-MARKER-" + b"u" * 200_000
    client = await login(chat_server["url"], "uploader")
    try:
        for path in (
            "/gradio_api/upload",
            "/gradio_api/upload/",
            "/gradio_api/upload?upload_id=abc",
            "/upload",
        ):
            r = await client.post(path, files=[("files", ("notes.txt", payload, "text/plain"))])
            assert r.status_code in (403, 404, 405), (path, r.status_code, r.text[:200])
            assert "notes.txt" not in r.text
        r = await client.get("/gradio_api/upload_progress", params={"upload_id": "abc"})
        assert r.status_code in (403, 404, 405)
    finally:
        await client.aclose()
    new = _files(tmp) - before
    assert not [p for p in new if b"UPLOAD-MARKER" in p.read_bytes()], new


# --- two users, one session_hash ---------------------------------------------------------------
class Page:
    """The page's events through Gradio's queue, as the browser sends them (`queue/join`, `queue/data`)."""

    def __init__(self, client: httpx.AsyncClient, config: dict[str, Any], session_hash: str) -> None:
        self.client, self.hash = client, session_hash
        ids = {c["props"].get("elem_id"): c["id"] for c in config["components"]}
        self.textbox = ids["hc-input"]

        def dep(target: int | None, event: str) -> dict[str, Any]:
            return next(
                d
                for d in config["dependencies"]
                if d.get("backend_fn")
                and any(t[1] == event and (target is None or t[0] == target) for t in d["targets"])
            )

        self.load = dep(None, "load")
        self.send_fn = dep(self.textbox, "submit")

    @classmethod
    async def open(cls, client: httpx.AsyncClient, session_hash: str | None = None) -> Page:
        config = (await client.get("/config")).json()
        return cls(client, config, session_hash or uuid.uuid4().hex[:11])

    async def join(self, fn: dict[str, Any], data: list[Any], trigger: int | None = None) -> httpx.Response:
        body = {
            "data": data,
            "event_data": None,
            "fn_index": fn["id"],
            "trigger_id": trigger,
            "session_hash": self.hash,
        }
        return await self.client.post("/gradio_api/queue/join", json=body)

    async def read(self, until_completed: int = 1, within_s: float = 30) -> tuple[int, str]:
        """The tab's event stream until `until_completed` events completed: (status, the raw text)."""
        text, done = "", 0
        async with asyncio.timeout(within_s):
            async with self.client.stream(
                "GET", "/gradio_api/queue/data", params={"session_hash": self.hash}
            ) as r:
                if r.status_code != 200:
                    return r.status_code, (await r.aread()).decode(errors="replace")
                async for line in r.aiter_lines():
                    text += line + "\n"
                    if '"process_completed"' in line:
                        done += 1
                        if done >= until_completed:
                            break
        return 200, text

    async def send(self, text: str, max_tokens: int = 4) -> httpx.Response:
        return await self.join(
            self.send_fn, [text, None, "gemma", 0, 0.95, max_tokens, "Be brief."], trigger=self.textbox
        )


@pytest.mark.integration
async def test_another_user_holding_a_tabs_session_hash_gets_nothing_of_it(
    chat_server: dict[str, Any],
) -> None:
    url = chat_server["url"]
    a, b = await login(url, "tab_a"), await login(url, "tab_b")
    try:
        tab = await Page.open(a)
        assert (await tab.join(tab.load, [])).status_code == 200
        assert (await tab.read())[0] == 200
        secret = f"tab_a's secret {new_id()}"
        assert (await tab.send(secret)).status_code == 200
        status, text = await tab.read()
        assert status == 200 and secret in text  # the owner sees their chat

        # tab_b presents the same session_hash: a send must not hand back tab_a's on-screen rows.
        intruder = await Page.open(b, tab.hash)
        r = await intruder.send("hello")
        if r.status_code == 200:
            _status, seen = await intruder.read()
            assert secret not in seen
        else:
            assert r.status_code == 403, r.text
        # Nor may tab_b listen to the tab's event stream while tab_a chats.
        later = f"tab_a's second secret {new_id()}"
        listen = asyncio.create_task(intruder.read(within_s=8))
        await asyncio.sleep(0.3)
        assert (await tab.send(later)).status_code == 200
        owner = asyncio.create_task(tab.read())
        try:
            status, seen = await listen
        except TimeoutError:
            status, seen = 200, ""
        assert later not in seen, "another user read the tab's event stream"
        assert later in (await owner)[1]
    finally:
        await a.aclose()
        await b.aclose()


@pytest.mark.integration
async def test_cancel_needs_sign_in_as_the_tabs_user(chat_server: dict[str, Any]) -> None:
    url, fault = chat_server["url"], chat_server["fault"]
    a, b = await login(url, "tab_a"), await login(url, "tab_b")
    fault.mode = "echo_slow"
    try:
        tab = await Page.open(a)
        assert (await tab.join(tab.load, [])).status_code == 200
        assert (await tab.read())[0] == 200
        r = await tab.send("a long answer please", max_tokens=12)  # 12 words: 2.4 s
        event_id = r.json()["event_id"]
        answer = asyncio.create_task(tab.read())
        for _ in range(300):
            if fault.in_progress:
                break
            await asyncio.sleep(0.01)
        body = {"session_hash": tab.hash, "fn_index": tab.send_fn["id"], "event_id": event_id}
        async with httpx.AsyncClient(base_url=url) as stranger:
            r = await stranger.post("/gradio_api/cancel", json=body)
            assert r.status_code in (401, 403), r.status_code
        r = await b.post("/gradio_api/cancel", json=body)
        assert r.status_code == 403, r.status_code
        status, text = await answer
        assert status == 200
        assert "stopped" not in text and "..." in text  # answered to the end (echo_slow pads with " ...")
        # The tab's own user may cancel.
        r = await tab.send("another long one", max_tokens=40)
        body["event_id"] = r.json()["event_id"]
        answer = asyncio.create_task(tab.read())
        for _ in range(300):
            if fault.in_progress:
                break
            await asyncio.sleep(0.01)
        r = await a.post("/gradio_api/cancel", json=body)
        assert r.status_code == 200
        await answer
        for _ in range(200):
            if not fault.in_progress:
                break
            await asyncio.sleep(0.01)
        assert fault.in_progress == 0
    finally:
        fault.mode = "ok"
        await a.aclose()
        await b.aclose()


# --- the handlers themselves -------------------------------------------------------------------
async def test_a_tabs_state_belongs_to_the_user_who_opened_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Even when Gradio hands one user's state to another (the same session_hash), the handlers give
    the other user a fresh tab, and say so in the log."""
    from graph.client import ChatClient
    from graph.memory.sqlite import SQLiteConversationStore
    from graph.settings import Settings
    from tests.fakes import ScriptedBackends
    from tests.hardening.conftest import ScriptedModel, echo
    from ui.auth import Identity
    from ui.chat import ChatService
    from ui.handlers import ChatHandlers
    from ui.limits import RateLimiter

    settings = Settings(_env_file=None, sqlite_path=tmp_path / "c.db", auth_users="alice:a,bob:b")  # type: ignore[call-arg]
    model = ScriptedModel(reply=echo)
    client = ChatClient.from_settings(
        settings,
        store=SQLiteConversationStore(settings.sqlite_path),
        backends=ScriptedBackends(settings, {"gemma": model, "gemini": model}),
    )
    h = ChatHandlers(ChatService(client), Identity(settings), RateLimiter(0))
    alice = gr.Request(username="alice", session_hash="h1")
    bob = gr.Request(username="bob", session_hash="h1")
    st, *_ = await h.on_load(alice)
    gen = ("gemma", 0.0, 0.9, 16, "")
    async for out in h.send("alice's secret", st, *gen, request=alice):
        st = out[2] if not isinstance(out[2], dict) else st
    assert "alice's secret" in json.dumps(st.rows)
    with caplog.at_level(logging.WARNING, logger="ui.handlers"):
        outs = [out async for out in h.send("hello", st, *gen, request=bob)]
        edits = [
            out
            async for out in h.edit_resend(
                st, *gen, gr.EditData(None, {"index": 99, "value": "x", "previous_value": "y"}), request=bob
            )
        ]
    assert "alice's secret" not in json.dumps([o[0] for o in outs + edits], default=str)
    assert "another user" in caplog.text
    # alice's own state is untouched (bob got a fresh one).
    assert "alice's secret" in json.dumps(st.rows) and "hello" not in json.dumps(st.rows)
