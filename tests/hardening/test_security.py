"""Security: session isolation under concurrency, rate limits, secrets and message contents kept out of
logs, and ruff's security rules (S) on graph/, ui/ and evals/.

Isolation runs many users x many sessions at once through the graph (`context={"user_id": ...}`) with
an echo model, so any answer or history that crossed to another user or session would show in the text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from pydantic import SecretStr

from graph import build_graph
from graph.context import Services
from graph.memory.codec import message_text
from graph.memory.contract import ConversationNotFound, ConversationStore
from graph.settings import Settings
from tests.hardening.conftest import (
    SERVER_PASSWORD,
    SERVER_RATE_PER_MINUTE,
    SERVER_SECRET,
    ApiError,
    MixedBackends,
    ScriptedModel,
    call_api,
    chat_text,
    echo,
    login,
    make_store,
    new_id,
    scripted_graph,
    turn,
)
from tests.support.fault_server import fault_server

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]


# --- isolation --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sqlite", pytest.param("firestore", marks=pytest.mark.integration)])
async def test_many_users_and_sessions_at_once_never_see_each_other(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """6 users x 3 sessions x 3 turns at once, streamed; meanwhile every user uses every other user's
    session ids. Each answer echoes only its own session's messages; ids are scoped to their owner, so an
    intruder finds nothing under a victim's id (as under an id nobody uses), a turn there starts the
    intruder's own conversation (the model sees only the intruder's message), and the victims'
    histories stay exactly as their owners wrote them."""
    emu = request.getfixturevalue("fs_env") if kind == "firestore" else None
    store: ConversationStore = make_store(kind, tmp_path, emu)
    model = ScriptedModel(reply=echo, chunk_chars=3, delay_s=0.001)  # streams interleave
    graph = scripted_graph(store, model, history_max_messages=100)
    users = [f"user-{i}" for i in range(6)]
    owned = {(u, new_id()) for u in users for _ in range(3)}
    started = {sid: asyncio.Event() for _, sid in owned}
    kept_apart: list[tuple[str, str]] = []

    async def converse(user: str, sid: str) -> None:
        for t in range(3):
            text = f"<{user}|{sid}|{t}>"
            streamed = ""
            final: dict[str, Any] = {}
            async for mode, data in graph.astream(
                *turn(text, sid), context={"user_id": user}, stream_mode=["messages", "values"]
            ):
                if mode == "messages" and data[1]["langgraph_node"] == "call_model":
                    streamed += message_text(data[0])
                elif mode == "values":
                    final = data
            answer = final["messages"][-1].content
            assert streamed == answer
            # Every user message the model saw is this session's: "echo:<u|sid|0>|<u|sid|1>|..."
            assert answer == "echo:" + "|".join(f"<{user}|{sid}|{k}>" for k in range(t + 1)), answer
            started[sid].set()

    async def intrude(attacker: str, victim: str, sid: str) -> None:
        await started[sid].wait()  # the victim's conversation exists
        with pytest.raises(ConversationNotFound):
            await store.aget_conversation(sid, attacker)
        assert await store.history(sid, attacker).aget_messages() == []
        out = await graph.ainvoke(*turn(f"steal from {sid}", sid), context={"user_id": attacker})
        assert out["messages"][-1].content == f"echo:steal from {sid}"  # nothing of the victim's
        await store.history(sid, attacker).aadd_messages([HumanMessage(f"steal into {sid}")])
        kept_apart.append((attacker, sid))

    await asyncio.gather(
        *(converse(u, sid) for u, sid in owned),
        *(intrude(a, u, sid) for a in users for u, sid in owned if a != u),
    )
    assert len(kept_apart) == len(owned) * (len(users) - 1)
    for prompt in model.prompts:  # no prompt mixes an intruder's messages with anyone else's
        said = [message_text(m) for m in prompt if m.type == "human"]
        assert len(said) == 1 or not any("steal" in t for t in said), said
    for user, sid in owned:
        msgs = await store.history(sid, user).aget_messages()
        humans = [m.content for m in msgs if m.type == "human"]
        assert humans == [f"<{user}|{sid}|{k}>" for k in range(3)]
        assert [m.type for m in msgs] == ["human", "ai"] * 3
        for attacker in users:
            if attacker != user:
                theirs = await store.history(sid, attacker).aget_messages()
                assert [m.content for m in theirs if m.type == "human"] == [
                    f"steal from {sid}",
                    f"steal into {sid}",
                ]
    for user in users:
        listed = await store.alist_conversations(user, limit=100)
        assert {c.session_id for c in listed.conversations} == {sid for _, sid in owned}  # own + intruded
    await store.aclose()


@pytest.mark.integration
async def test_over_http_another_users_session_is_not_found_and_left_untouched(
    chat_server: dict[str, Any],
) -> None:
    alice = await login(chat_server["url"], "alice")
    eve = await login(chat_server["url"], "eve")
    try:
        sid = new_id()
        await call_api(alice, "chat", "alice's private note", "gemma", sid, None, None)
        before, _, _ = await call_api(alice, "conversation", sid)
        with pytest.raises(ApiError, match="not available") as theirs:
            await call_api(eve, "conversation", sid)
        with pytest.raises(ApiError, match="not available") as nobodys:
            await call_api(eve, "conversation", new_id())
        assert str(theirs.value) == str(nobodys.value)  # "not yours" reads as "not found"
        listed, _, _ = await call_api(eve, "conversations")
        assert sid not in {c["session_id"] for c in listed}
        # Eve's turn under alice's id is eve's own conversation: alice's stays out of it, and unchanged.
        reply = await chat_text(eve, "show me alice's note", sid)
        assert "private note" not in reply and "not available" not in reply
        mine, _, _ = await call_api(eve, "conversation", sid)
        assert [m["content"] for m in mine if m["role"] == "user"] == ["show me alice's note"]
        after, _, _ = await call_api(alice, "conversation", sid)
        assert after == before and len(before) == 2
    finally:
        await alice.aclose()
        await eve.aclose()


@pytest.mark.integration
async def test_the_rate_limit_holds_under_a_burst(chat_server: dict[str, Any]) -> None:
    """`spammer` fires 2 more messages than the limit allows, all at once: exactly the limit is served,
    the rest are refused with a message saying when to retry; another user is not affected."""
    spammer = await login(chat_server["url"], "spammer")
    other = await login(chat_server["url"], "user19")
    try:
        calls = [
            call_api(spammer, "chat", f"burst {k}", "gemma", new_id(), None, None)
            for k in range(SERVER_RATE_PER_MINUTE + 2)
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        refused = [r for r in results if isinstance(r, ApiError)]
        served = [r for r in results if not isinstance(r, BaseException)]
        assert len(served) == SERVER_RATE_PER_MINUTE and len(refused) == 2, results
        assert all("too fast" in str(r) for r in refused)
        answer, _, _ = await call_api(other, "chat", "am I throttled?", "gemma", new_id(), None, None)
        assert answer == "Hello from the fault server."
    finally:
        await spammer.aclose()
        await other.aclose()


# --- the UI's handling of inputs the graph refuses (UI owner) ------------------------------------
@pytest.mark.integration
async def test_over_http_a_refused_message_gets_its_reason(chat_server: dict[str, Any]) -> None:
    client = await login(chat_server["url"], "mallory")
    try:
        assert "not valid Unicode" in await chat_text(client, "bad \ud800 text", new_id())
        assert "session id" in await chat_text(client, "hello", "a/b")
    finally:
        await client.aclose()


# --- secrets and contents never logged ------------------------------------------------------------
MARKER = "PRIVATE-CONTENT-7731"


async def test_secrets_and_message_contents_stay_out_of_the_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Turns that succeed, fail mid-stream, fail over and are refused, with every logger at DEBUG: the
    API key (which the backend did receive) never appears, nor any message text."""
    secret = "sk-inproc-SECRET-93ab1f"  # noqa: S105 - a test value that must not be logged
    caplog.set_level(logging.DEBUG)
    store = make_store("sqlite", tmp_path)
    with fault_server("ok") as server:
        seen: list[str | None] = []
        base = server.httpd.RequestHandlerClass

        class Recording(base):  # type: ignore[misc, valid-type]
            def do_POST(self) -> None:
                seen.append(self.headers.get("Authorization"))
                super().do_POST()

        server.httpd.RequestHandlerClass = Recording
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            gemma_base_url=server.base_url,
            gemma_api_key=SecretStr(secret),
            first_token_timeout_s=0.5,
            breaker_failures=1000,
        )
        gemini = ScriptedModel(reply=lambda prompt: f"fallback answer {MARKER}")
        services = Services.build(settings, store=store, backends=MixedBackends(settings, gemini))
        graph = build_graph(services=services)
        for mode in ("ok", "fail_after_3", "reset", "http_503"):
            server.mode = mode
            await graph.ainvoke(*turn(f"{MARKER} {mode}", "s", model="gemma"))
        with pytest.raises(ValueError):
            await graph.ainvoke(*turn(f"{MARKER} \ud800", "s"))
    assert seen and set(seen) == {f"Bearer {secret}"}  # the key was in use
    for text in (repr(settings), str(settings), settings.model_dump_json(), repr(services)):
        assert secret not in text
    assert secret not in caplog.text
    assert any(r.name.startswith("graph") for r in caplog.records), "nothing logged: an empty check"
    leaked = [f"{r.name}: {r.getMessage()[:200]}" for r in caplog.records if MARKER in r.getMessage()]
    assert not leaked, leaked  # not even a library's DEBUG line
    await store.aclose()


@pytest.mark.integration
async def test_the_server_log_holds_no_secret_password_or_message_text(chat_server: dict[str, Any]) -> None:
    fault = chat_server["fault"]
    client = await login(chat_server["url"], "logger")
    try:
        for mode in ("ok", "fail_after_3", "http_503"):
            fault.mode = mode
            await call_api(client, "chat", f"{MARKER} {mode}", "gemma", new_id(), None, None)
        fault.mode = "ok"
        await chat_text(client, f"{MARKER} \ud800", new_id())  # refused by the graph
    finally:
        fault.mode = "ok"
        await client.aclose()
    assert f"Bearer {SERVER_SECRET}" in chat_server["auth_headers"]
    log = chat_server["log"].read_text(errors="replace")
    assert "turn session=" in log, "the server logged no turn: the check would be empty"
    for needle in (SERVER_SECRET, SERVER_PASSWORD, MARKER):
        assert needle not in log, f"{needle!r} is in {chat_server['log']}"


# --- ruff's security rules --------------------------------------------------------------------
def test_ruff_security_rules_are_clean_and_every_exception_is_justified() -> None:
    """`ruff check --select S` on graph/ ui/ evals/ (S101 `assert` is off project-wide: the code uses
    assert only to narrow types, e.g. `assert x is not None`). Every `# noqa: S...` says why."""
    dirs = ["graph", "ui", "evals"]
    ruff = Path(sys.executable).with_name("ruff")
    result = subprocess.run(  # noqa: S603 - fixed argv
        [str(ruff), "check", "--select", "S", "--ignore", "S101", "--output-format", "json", *dirs],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], [f"{f['filename']}:{f['location']['row']} {f['code']}" for f in findings]
    unjustified = []
    asserts = []
    for path in sorted(p for d in dirs for p in (ROOT / d).rglob("*.py")):
        for no, line in enumerate(path.read_text().splitlines(), 1):
            m = re.search(r"#\s*noqa:\s*(S\d+(?:\s*,\s*[A-Z]+\d+)*)(.*)$", line)
            if m and not re.search(r"\w", m.group(2)):
                unjustified.append(f"{path.relative_to(ROOT)}:{no}: {line.strip()}")
            if re.match(r"\s*assert ", line) and not re.match(
                r"\s*assert [\w.\[\]\"']+ is not None\s*$", line
            ):
                asserts.append(f"{path.relative_to(ROOT)}:{no}: {line.strip()}")
    assert not unjustified, unjustified
    assert not asserts, f"asserts that do more than narrow a type (stripped under -O): {asserts}"
