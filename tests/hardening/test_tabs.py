"""Per-tab state, cancel and uploads (issue 17, findings 6 and 8), through HTTP as signed-in users.

Gradio keys a tab on the `session_hash` its browser chose. Another signed-in user presenting that hash
must not get the tab's on-screen chat (from a handler or from the tab's event stream), nor stop its
answer through `/gradio_api/cancel`, which a stranger must not reach at all. Uploads (the message box's
attachments, issue 15) need sign-in: without it `/gradio_api/upload` is refused and nothing lands in
Gradio's temporary directory; a file over the attachment limit is refused before it is kept; a file one
user uploaded is neither served to another (`/gradio_api/file=`) nor taken from another's message, and
Gradio's copy is gone once its message is sent. On every route of Gradio's (read from the installed
Gradio, not listed here), a request from another user that names the tab is refused, and so is one that
names a tab twice (Gradio reads the last query value: a check that read the first let another user
read a tab's live answer)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import gradio as gr
import httpx
import pytest

from tests.hardening.conftest import login, new_id, until

pytestmark = [pytest.mark.timeout(120)]


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


@pytest.mark.integration
async def test_uploads_need_sign_in_and_nothing_is_written(chat_server: dict[str, Any]) -> None:
    tmp = chat_server["gradio_tmp"]
    before = _files(tmp)
    payload = b"UPLOAD-MARKER-" + b"u" * 200_000
    client = httpx.AsyncClient(base_url=chat_server["url"], timeout=30)
    try:
        for path in (
            "/gradio_api/upload",
            "/gradio_api/upload/",
            "/gradio_api/upload?upload_id=abc",
            "/upload",
        ):
            r = await client.post(path, files=[("files", ("notes.txt", payload, "text/plain"))])
            # 307: Gradio's redirect of the trailing slash to the route that then refuses.
            assert r.status_code in (307, 401, 403, 404, 405), (path, r.status_code, r.text[:200])
            assert "notes.txt" not in r.text
        r = await client.get("/gradio_api/upload_progress", params={"upload_id": "abc"})
        assert r.status_code in (401, 403, 404, 405)
    finally:
        await client.aclose()
    new = _files(tmp) - before
    assert not [p for p in new if b"UPLOAD-MARKER" in p.read_bytes()], new


UPLOAD_PNG = (  # a real 1x1 PNG
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS"
    b"\xde\x00\x00\x00\x0cIDATx\x9cc\xf8\xcf\xc0\x00\x00\x03\x01\x01\x00\xc9\xfe\x92\xef\x00\x00"
    b"\x00\x00IEND\xaeB`\x82"
)


def _on_disk(path: str) -> bytes | None:
    """The file's bytes in Gradio's cache, None once it is gone."""
    return Path(path).read_bytes() if Path(path).exists() else None


def _file_data(path: str, name: str) -> dict[str, Any]:
    """A file in an event's data, as the page's box sends it (Gradio's FileData)."""
    return {"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}}


@pytest.mark.integration
async def test_an_upload_is_its_uploaders_alone_capped_and_gone_once_sent(
    chat_server: dict[str, Any],
) -> None:
    url, tmp = chat_server["url"], chat_server["gradio_tmp"]
    owner, other = await login(url, "uploader"), await login(url, "mallory")
    try:
        r = await owner.post("/gradio_api/upload", files=[("files", ("shot.png", UPLOAD_PNG, "image/png"))])
        assert r.status_code == 200, r.text
        (path,) = r.json()
        assert _on_disk(path) == UPLOAD_PNG and Path(path).is_relative_to(tmp)
        mine = await owner.get(f"/gradio_api/file={path}")
        assert mine.status_code == 200 and mine.content == UPLOAD_PNG  # the box's thumbnail
        # Another signed-in user who learns the path gets what a missing file gets, by either route.
        for route in (f"/gradio_api/file={path}", f"/gradio_api/file/{path}"):
            theirs = await other.get(route)
            assert theirs.status_code == 404, (route, theirs.status_code)
            assert UPLOAD_PNG not in theirs.content
        # ... nor can they send it as their own message's attachment (Gradio would read it for them).
        intruder = await Page.open(other)
        assert (await intruder.join(intruder.load, [])).status_code == 200
        assert (await intruder.read())[0] == 200
        r = await intruder.send("what is this?", files=[_file_data(path, "shot.png")])
        assert r.status_code == 404, r.text
        r = await intruder.send("fetch this", files=[_file_data("http://169.254.169.254/", "x.png")])
        assert r.status_code == 404, r.text  # a URL is nobody's upload either
        # ... nor through Gradio's API routes (`/turn` takes files), whichever route runs it.
        data = ["what is this?", "gemini", "", None, None, None, None, [_file_data(path, "shot.png")]]
        for route in ("call/turn", "call/v2/turn", "run/turn", "api/turn"):
            r = await other.post(f"/gradio_api/{route}", json={"data": data})
            assert r.status_code == 404, (route, r.status_code, r.text[:200])
        assert _on_disk(path) == UPLOAD_PNG  # the owner's file is untouched (a send would delete it)

        # Over the attachment limit (5 MB): refused by Gradio, saying why, and nothing kept.
        big = b"BIG-MARKER" + b"\x00" * 5_000_000
        r = await owner.post("/gradio_api/upload", files=[("files", ("big.png", big, "image/png"))])
        assert r.status_code == 413, r.status_code
        assert "maximum allowed size" in r.text
        assert not [p for p in _files(tmp) if p.stat().st_size > 5_000_000]

        # The owner sends it: answered, and Gradio's copy is deleted (the graph keeps the file now).
        tab = await Page.open(owner)
        assert (await tab.join(tab.load, [])).status_code == 200
        assert (await tab.read())[0] == 200
        r = await tab.send("what is this?", files=[_file_data(path, "shot.png")])
        assert r.status_code == 200, r.text
        status, text = await tab.read()
        assert status == 200 and "shot.png" in text, text[-500:]  # the chip's name, in the decorations
        assert _on_disk(path) is None
        gone = await owner.get(f"/gradio_api/file={path}")
        assert gone.status_code in (403, 404) and UPLOAD_PNG not in gone.content  # Gradio's "no such file"
    finally:
        await owner.aclose()
        await other.aclose()


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
        self.stop_fn = dep(self.textbox, "stop")
        self.new_button = ids["hc-new"]
        self.new_fn = dep(self.new_button, "click")  # "New conversation": resets the tab's state

    def new_conversation_event(self) -> dict[str, Any]:
        """The page's "New conversation" event, as its browser sends it to `/run/predict`, without its tab."""
        fn = self.new_fn["id"]
        return {"data": [None], "event_data": None, "fn_index": fn, "trigger_id": self.new_button}

    async def stop(self, event_id: str) -> tuple[httpx.Response, httpx.Response]:
        """The page's Stop, as the browser sends it: Gradio's cancel of the answer's event, then the
        Stop event itself (which ends the turn on the server: a cancel alone only stops following it)."""
        body = {"session_hash": self.hash, "fn_index": self.send_fn["id"], "event_id": event_id}
        cancelled = await self.client.post("/gradio_api/cancel", json=body)
        stop = {
            "data": [None],
            "event_data": None,
            "fn_index": self.stop_fn["id"],
            "trigger_id": self.textbox,
            "session_hash": self.hash,
        }
        return cancelled, await self.client.post("/gradio_api/run/predict", json=stop)

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

    async def send(
        self, text: str, max_tokens: int = 4, files: list[dict[str, Any]] | None = None
    ) -> httpx.Response:
        box = {"text": text, "files": files or []}  # the message box's value: its text and attachments
        return await self.join(
            self.send_fn, [box, None, "gemma", 0, 0.95, max_tokens, "Be brief.", ""], trigger=self.textbox
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
        # The tab's own user may stop it.
        r = await tab.send("another long one", max_tokens=40)
        event_id = r.json()["event_id"]
        answer = asyncio.create_task(tab.read())
        for _ in range(300):
            if fault.in_progress:
                break
            await asyncio.sleep(0.01)
        cancelled, stopped = await tab.stop(event_id)
        assert (cancelled.status_code, stopped.status_code) == (200, 200), stopped.text
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


# --- every Gradio route, as another signed-in user naming the tab ------------------------------------
# Gradio reads a tab's session_hash on many routes (the query, a JSON or form body, a path segment) and
# adds routes from one version to the next: the routes swept are read from the installed Gradio's app.
_PATH_PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")


async def gradio_routes(tmp_path: Path) -> list[tuple[str, str]]:
    """Every (method, path template) of Gradio's app as `hybrid-chat serve` mounts it with sign-in, read
    from the app at run time, so that a route a newer Gradio adds is swept without editing this test.
    Sign-out last: Gradio's GET /logout is sent as the app's POST /logout (ui.security.SameSiteGuard)."""
    from fastapi import routing

    from graph.client import ChatClient
    from graph.settings import Settings
    from tests.fakes import ScriptedBackends
    from tests.hardening.conftest import ScriptedModel
    from ui.server import create_app

    settings = Settings(_env_file=None, sqlite_path=tmp_path / "routes.db", auth_users="alice:a,bob:b")  # type: ignore[call-arg]
    model = ScriptedModel()
    backends = ScriptedBackends(settings, {"gemma": model, "gemini": model})
    client = ChatClient.from_settings(settings, backends=backends)
    app = create_app(settings, client=client)
    await client.services.store.aclose()  # only the routes are wanted
    gradio_app = next(r.app for r in app.routes if hasattr(getattr(r, "app", None), "stop_event"))
    flatten = getattr(routing, "iter_route_contexts", None)  # newer FastAPI nests included routers
    routes = list(flatten(gradio_app.routes)) if flatten else list(gradio_app.routes)
    found = {
        ("POST" if route.path == "/logout" else method, route.path)
        for route in routes
        for method in getattr(route, "methods", None) or ()
        if getattr(route, "path", None)
    }
    assert ("GET", "/gradio_api/queue/data") in found and ("POST", "/gradio_api/run/{api_name}") in found
    return sorted(found, key=lambda r: (r[1] == "/logout", r))


def _names_tab_in_path(template: str) -> bool:
    """Whether the route's path carries a tab: its session_hash, or an event id (Gradio's
    `/call/<name>/<event_id>` reads the tab of that name when no event has the id)."""
    return any(m.group(1) in ("session_hash", "event_id") for m in _PATH_PARAM.finditer(template))


def _path(template: str, tab: str) -> str:
    """The route's path naming `tab` wherever it takes a tab or an event id, a harmless value elsewhere."""

    def value(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in ("session_hash", "event_id"):
            return tab
        return "predict" if name == "api_name" else "1"

    return _PATH_PARAM.sub(value, template)


async def _answer(
    client: httpx.AsyncClient, method: str, url: str, within_s: float = 2.0, **request: Any
) -> tuple[int, str]:
    """(status, what came back within `within_s`): an event stream is read until then, or until the
    server drops it (0: no answer at all)."""
    status, body = 0, b""
    try:
        async with asyncio.timeout(within_s):
            async with client.stream(method, url, **request) as r:
                status = r.status_code
                async for chunk in r.aiter_raw():
                    body += chunk
    except (TimeoutError, httpx.HTTPError):
        pass
    return status, body.decode(errors="replace")


async def _comes(tab: Page, text: str, within_s: float = 20) -> bool:
    """Whether `text` comes in the tab's event stream within `within_s` (False if the server drops it)."""
    try:
        async with asyncio.timeout(within_s):
            params = {"session_hash": tab.hash}
            async with tab.client.stream("GET", "/gradio_api/queue/data", params=params) as r:
                async for line in r.aiter_lines():
                    if text in line:
                        return True
    except (TimeoutError, httpx.HTTPError):
        pass
    return False


def _logged(server: dict[str, Any], *secrets: str) -> list[str]:
    """Which of `secrets` (a tab's hash, what its user typed) the server's log shows: none should be."""
    log_text = Path(server["log"]).read_text(errors="replace")
    return [secret for secret in secrets if secret in log_text]


class TwoTabs:
    """The owner's tab with a conversation on screen and an answer waiting in its event stream (a live
    answer nobody has read yet), and the intruder's own tab: another signed-in user, same server. The
    model echoes every user message of its prompt: an answer shows which conversation it belongs to."""

    def __init__(self, owner: Page, intruder: Page, model: Any) -> None:
        self.owner, self.intruder, self.model = owner, intruder, model
        self.sent: list[str] = []  # the owner's messages, each a fresh id: found anywhere, it is theirs

    @classmethod
    async def open(cls, server: dict[str, Any], owner: str, intruder: str = "tab_intruder") -> TwoTabs:
        url = server["url"]
        owner_tab = await Page.open(await login(url, owner))
        tabs = cls(owner_tab, await Page.open(await login(url, intruder)), server["fault"])
        for tab in (tabs.owner, tabs.intruder):
            assert (await tab.join(tab.load, [])).status_code == 200
            assert (await tab.read())[0] == 200
        assert await tabs.say() == 200
        assert await _comes(tabs.owner, tabs.echo)  # on the owner's screen
        assert await tabs.say() == 200  # answered into the stream, not read yet
        return tabs

    @property
    def echo(self) -> str:
        """The answer to the owner's last message, when it is the same conversation throughout."""
        return "echo:" + "|".join(self.sent)

    async def say(self) -> int:
        """The owner sends a new message; back once the model has answered it (the answer then waits in
        the tab's stream until read), or within 20 s."""
        message = f"owner-{new_id()}"
        self.sent.append(message)
        status = (await self.owner.send(message)).status_code

        def answered() -> bool:
            return self.model.in_progress == 0 and any(message in json.dumps(p) for p in self.model.prompts)

        with contextlib.suppress(TimeoutError):
            await until(answered, within_s=20)
            await asyncio.sleep(0.3)  # the turn's save and Gradio's last messages
        return status

    def leaked(self, text: str) -> bool:
        return any(message in text for message in self.sent)

    def event(self) -> dict[str, Any]:
        return self.owner.new_conversation_event()

    async def intrude(self, method: str, url: str, **request: Any) -> tuple[int, bool]:
        """The intruder's request: (its status, whether anything of the owner's came back). What came
        back is read from the owner's stream: the owner sends again, so that the next request has an
        answer waiting to take too."""
        status, text = await _answer(self.intruder.client, method, url, **request)
        leaked = self.leaked(text)
        if leaked:
            await self.say()
        return status, leaked

    async def owner_tab_is_unchanged(self) -> list[str]:
        """What differs from an untouched tab: the waiting answer reaches the owner, and the next turn
        continues the same conversation."""
        problems = []
        if not await _comes(self.owner, self.echo):
            problems.append("the owner's waiting answer did not reach the owner's tab")
        if await self.say() != 200:
            problems.append("the owner could not send in their own tab")
        elif not await _comes(self.owner, self.echo):
            problems.append("the owner's tab no longer holds their conversation (it was reset)")
        return problems

    async def aclose(self) -> None:
        await self.owner.client.aclose()
        await self.intruder.client.aclose()


@pytest.mark.integration
async def test_a_tab_named_twice_is_refused_on_every_gradio_route(
    chat_server: dict[str, Any], tmp_path: Path
) -> None:
    """The intruder names their own tab and the owner's in one request (Gradio reads the last query
    value, a check could read the first): refused (400) on every route, and nothing of the owner's."""
    routes = await gradio_routes(tmp_path)
    fault = chat_server["fault"]
    fault.mode = "echo"
    tabs = await TwoTabs.open(chat_server, "tab_owner_twice")
    theirs, mine = tabs.owner.hash, tabs.intruder.hash
    twice = urlencode([("session_hash", mine), ("session_hash", theirs)])
    event = json.dumps(tabs.event())
    keys = f'"session_hash": {json.dumps(mine)}, "session_hash": {json.dumps(theirs)}'
    json_body = {"headers": {"content-type": "application/json"}}
    both_fields = {"session_hash": [mine, theirs]}
    theirs_in_body = {**tabs.event(), "session_hash": theirs}
    leaks, accepted = [], []
    try:
        for method, template in routes:
            path = _path(template, theirs)
            attempts: list[tuple[str, str, dict[str, Any]]] = [("query twice", f"{path}?{twice}", {})]
            if method == "POST":
                attempts = [
                    ("query twice", f"{path}?{twice}", {**json_body, "content": event}),
                    ("JSON key twice", path, {**json_body, "content": event[:-1] + f", {keys}}}"}),
                    ("query and JSON", f"{path}?session_hash={mine}", {"json": theirs_in_body}),
                    ("form field twice", path, {"data": both_fields}),
                    ("multipart field twice", path, {"data": both_fields, "files": {"f": b"x"}}),
                ]
            for how, url, request in attempts:
                status, leaked = await tabs.intrude(method, url, **request)
                if leaked:
                    leaks.append(f"{method} {template} ({how}): {status}")
                if status != 400:
                    accepted.append(f"{method} {template} ({how}): {status}")
        problems = await tabs.owner_tab_is_unchanged()
        problems += [f"the log shows {secret!r}" for secret in _logged(chat_server, theirs, *tabs.sent)]
    finally:
        fault.mode = "ok"
        await tabs.aclose()
    assert not (leaks or problems or accepted), (
        f"another user received the owner's chat from {leaks}; the owner's tab: {problems}; "
        f"not refused (400) though the request names two tabs: {accepted}"
    )


@pytest.mark.integration
async def test_another_users_tab_is_refused_on_every_gradio_route(
    chat_server: dict[str, Any], tmp_path: Path
) -> None:
    """The intruder names the owner's tab once, wherever the route takes it: refused (403) on every
    route, nothing of the owner's comes back, and the owner's tab is not reset (`/run/predict` with the
    page's "New conversation" event, naming the owner's tab, would empty it)."""
    routes = await gradio_routes(tmp_path)
    fault = chat_server["fault"]
    fault.mode = "echo"
    tabs = await TwoTabs.open(chat_server, "tab_owner_once")
    theirs = tabs.owner.hash
    leaks, accepted = [], []
    try:
        for method, template in routes:
            path = _path(template, theirs)
            attempts: list[tuple[str, str, dict[str, Any]]]
            if _names_tab_in_path(template):
                attempts = [("path", path, {"json": tabs.event()} if method == "POST" else {})]
            elif method == "POST":
                attempts = [
                    ("query", f"{path}?session_hash={theirs}", {"json": tabs.event()}),
                    ("JSON", path, {"json": {**tabs.event(), "session_hash": theirs}}),
                    ("multipart", path, {"data": {"session_hash": theirs}, "files": {"f": b"x"}}),
                ]
            else:
                attempts = [("query", f"{path}?session_hash={theirs}", {})]
            for how, url, request in attempts:
                status, leaked = await tabs.intrude(method, url, **request)
                if leaked:
                    leaks.append(f"{method} {template} ({how}): {status}")
                if status != 403:
                    accepted.append(f"{method} {template} ({how}): {status}")
        problems = await tabs.owner_tab_is_unchanged()
        problems += [f"the log shows {secret!r}" for secret in _logged(chat_server, theirs, *tabs.sent)]
    finally:
        fault.mode = "ok"
        await tabs.aclose()
    assert not (leaks or problems or accepted), (
        f"another user received the owner's chat from {leaks}; the owner's tab: {problems}; "
        f"not refused (403) though the tab is another user's: {accepted}"
    )


@pytest.mark.integration
async def test_a_tab_named_like_a_route_takes_it_from_no_one(chat_server: dict[str, Any]) -> None:
    """The browser chooses its tab's name: a user whose tab is called "predict" must not make
    `/run/predict` (the page's "New conversation", its Stop) another user's tab."""
    url = chat_server["url"]
    squatter, other = await login(url, "tab_intruder"), await login(url, "tab_owner_once")
    try:
        squatted = await Page.open(squatter, "predict")
        assert (await squatted.join(squatted.load, [])).status_code == 200
        tab = await Page.open(other)
        assert (await tab.join(tab.load, [])).status_code == 200
        assert (await tab.read())[0] == 200
        event = {**tab.new_conversation_event(), "session_hash": tab.hash}
        r = await other.post("/gradio_api/run/predict", json=event)
        assert r.status_code == 200, r.text
    finally:
        await squatter.aclose()
        await other.aclose()


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
