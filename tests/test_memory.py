"""Durable chat memory, as a user's checklist, run against BOTH stores with the same assertions.

`sqlite` runs on a file in tmp_path. `firestore` runs on the REAL Cloud Firestore emulator (java, started
once per session, database wiped before each test); those cases are marked `integration`.
Figures (latency, window load) are printed: `pytest tests/test_memory.py -q -s -k "figures or costs"`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from graph.memory import (
    META_KEY,
    AccessDenied,
    ChatHistory,
    ConversationNotFound,
    ConversationStore,
    MemoryUnavailable,
    Page,
)
from tests.support.firestore_emulator import FirestoreEmulator, firestore_emulator, free_port

ROOT = Path(__file__).resolve().parents[1]
DATABASE = "chat-app-db"
COLLECTION = "chat_sessions"

pytestmark = pytest.mark.timeout(120)


# ------------------------------------------------------------------------------------------------
# Fixtures: one `Backend` per store kind, with raw access for checks the API cannot show.
# ------------------------------------------------------------------------------------------------
class Clock:
    """A deterministic clock: every reading is 1 ms later (distinct, ordered timestamps)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


@dataclass
class Backend:
    kind: str
    make: Callable[..., ConversationStore]
    raw_session: Callable[..., dict[str, Any] | None]  # (session id, owner="alice"; None: unowned)
    raw_messages: Callable[..., list[dict[str, Any]]]
    outage: Callable[[], contextlib.AbstractContextManager[None]]
    outage_kwargs: dict[str, Any]
    clock: Clock = field(default_factory=Clock)
    emulator: FirestoreEmulator | None = None


@pytest.fixture(scope="session")
def emulator() -> Iterator[FirestoreEmulator]:
    with firestore_emulator(set_env=False) as emu:
        yield emu


def _sqlite_backend(tmp_path: Path) -> Backend:
    from graph.memory.sqlite import SQLiteConversationStore

    path = tmp_path / "chat.db"

    def make(**kw: Any) -> ConversationStore:
        kw.setdefault("clock", backend.clock)
        return SQLiteConversationStore(path, **kw)

    def raw_session(sid: str, user: str = "alice") -> dict[str, Any] | None:
        with contextlib.closing(sqlite3.connect(path)) as c:
            c.row_factory = sqlite3.Row
            row = c.execute("SELECT * FROM sessions WHERE user_id = ? AND session_id = ?", (user, sid))
            found = row.fetchone()
            return dict(found) if found else None

    def raw_messages(sid: str, user: str = "alice") -> list[dict[str, Any]]:
        with contextlib.closing(sqlite3.connect(path)) as c:
            c.row_factory = sqlite3.Row
            q = "SELECT * FROM messages WHERE user_id = ? AND session_id = ? ORDER BY seq"
            return [dict(r) for r in c.execute(q, (user, sid))]

    @contextlib.contextmanager
    def outage() -> Iterator[None]:
        """Another process holds the write lock longer than the store waits (a stuck writer)."""
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()

    backend = Backend("sqlite", make, raw_session, raw_messages, outage, {"busy_timeout_s": 0.3})
    return backend


def _firestore_backend(emu: FirestoreEmulator, monkeypatch: pytest.MonkeyPatch) -> Backend:
    from google.cloud import firestore

    from graph.memory.firestore import FirestoreConversationStore, document_id

    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", emu.host)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", emu.project)
    emu.wipe(DATABASE)
    raw = firestore.Client(project=emu.project, database=DATABASE)

    def make(**kw: Any) -> ConversationStore:
        kw.setdefault("clock", backend.clock)
        kw.setdefault("timeout", 5.0)
        return FirestoreConversationStore(project=emu.project, database=DATABASE, collection=COLLECTION, **kw)

    def raw_session(sid: str, user: str | None = "alice") -> dict[str, Any] | None:
        snap = raw.collection(COLLECTION).document(document_id(sid, user)).get()
        return snap.to_dict() if snap.exists else None

    def raw_messages(sid: str, user: str | None = "alice") -> list[dict[str, Any]]:
        col = raw.collection(COLLECTION).document(document_id(sid, user)).collection("messages")
        return [s.to_dict() for s in col.order_by("seq").stream()]

    @contextlib.contextmanager
    def outage() -> Iterator[None]:
        """The emulator process is frozen (SIGSTOP): connections stay open, nothing answers."""
        emu.pause()
        try:
            yield
        finally:
            emu.resume()

    backend = Backend("firestore", make, raw_session, raw_messages, outage, {"timeout": 1.5}, emulator=emu)
    return backend


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.integration)])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        b = _sqlite_backend(tmp_path)
    else:
        b = _firestore_backend(request.getfixturevalue("emulator"), monkeypatch)
    made: list[ConversationStore] = []
    inner = b.make

    def tracking(**kw: Any) -> ConversationStore:
        s = inner(**kw)
        made.append(s)
        return s

    b.make = tracking
    yield b
    for s in made:
        await s.aclose()


@pytest.fixture
def store(backend: Backend) -> ConversationStore:
    return backend.make()


@dataclass
class Api:
    """The history's sync or async methods behind one interface, so both run the same cases.

    The sync calls run in a worker thread without an event loop, as a sync caller's would."""

    kind: str

    async def add(self, h: ChatHistory, msgs: list[BaseMessage], model: str | None = None) -> None:
        if self.kind == "async":
            await h.aadd_messages(msgs, model=model)
        else:
            await asyncio.to_thread(h.add_messages, msgs, model=model)

    async def messages(self, h: ChatHistory) -> list[BaseMessage]:
        if self.kind == "async":
            return await h.aget_messages()
        return await asyncio.to_thread(lambda: h.messages)

    async def window(self, h: ChatHistory, max_messages: int | None = None) -> list[BaseMessage]:
        if self.kind == "async":
            return await h.aget_window(max_messages)
        return await asyncio.to_thread(h.get_window, max_messages)

    async def truncate(self, h: ChatHistory, from_message_id: str) -> int:
        if self.kind == "async":
            return await h.atruncate(from_message_id)
        return await asyncio.to_thread(h.truncate, from_message_id)

    async def clear(self, h: ChatHistory) -> None:
        if self.kind == "async":
            await h.aclear()
        else:
            await asyncio.to_thread(h.clear)


@pytest.fixture(params=["async", "sync"])
def api(request: pytest.FixtureRequest) -> Api:
    return Api(request.param)


def turn(label: str, answer: str | None = None, *, ids: bool = False, **meta: Any) -> list[BaseMessage]:
    """A human question and its AI answer, labelled so tests can check they stay together.

    `ids=True` gives them ids as the graph does (`q-<label>`, `a-<label>`)."""
    hc = {"backend": "gemma", "route_reason": "default", "latency_ms": 12.5, "ttft_ms": 3.0, **meta}
    return [
        HumanMessage(f"question {label}", id=f"q-{label}" if ids else None),
        AIMessage(
            answer or f"answer {label}",
            id=f"a-{label}" if ids else None,
            response_metadata={META_KEY: hc},
            usage_metadata={"input_tokens": 7, "output_tokens": 11, "total_tokens": 18},
        ),
    ]


def texts(msgs: list[BaseMessage]) -> list[str]:
    return [str(m.content) for m in msgs]


# ------------------------------------------------------------------------------------------------
# The checklist
# ------------------------------------------------------------------------------------------------
async def test_a_saved_turn_reads_back_equal_to_what_was_written(
    backend: Backend, store: ConversationStore, api: Api
) -> None:
    h = store.history("s1", "alice")
    system = SystemMessage("be brief")
    multimodal = HumanMessage([{"type": "text", "text": "look at this"}], id="mm-1")
    first = turn("1", backend="gemini", route_reason="long_context", latency_ms=812.0)
    await api.add(h, [system, *first], model="gemini")
    await api.add(h, [multimodal, AIMessage("seen", id="seen-1")], model="gemma")
    written = [system, *first, multimodal, AIMessage("seen", id="seen-1")]

    got = await api.messages(h)
    assert got == written  # type, content, id, metadata, usage: nothing added, nothing lost
    assert [m.id for m in got] == [None, None, None, "mm-1", "seen-1"]  # id-less stay id-less
    assert got[3].content == multimodal.content  # content blocks survive as blocks
    assert all(
        "seq" not in str(m.response_metadata) and "stored_at" not in str(m.response_metadata) for m in got
    )
    assert await api.window(h, 2) == written[-2:]
    assert (await h.aget_page(limit=5)).messages == written

    raw = backend.raw_messages("s1")
    assert [r["role"] for r in raw] == ["system", "human", "ai", "human", "ai"]
    assert raw[2]["backend"] == "gemini" and raw[2]["route_reason"] == "long_context"
    assert (raw[2]["latency_ms"], raw[2]["input_tokens"], raw[2]["output_tokens"]) == (812.0, 7, 11)
    assert raw[2]["content"] == "answer 1" and raw[3]["content"] == "look at this"

    conv = await store.aget_conversation("s1", "alice")
    assert (conv.message_count, conv.last_model, conv.user_id) == (5, "gemma", "alice")


async def test_a_new_store_instance_sees_the_history_after_a_restart(backend: Backend) -> None:
    first = backend.make()
    await first.history("s1", "alice").aadd_messages(turn("1"), model="gemma")
    await first.aclose()
    again = backend.make()
    assert texts(await again.history("s1", "alice").aget_window(10)) == ["question 1", "answer 1"]


@pytest.mark.parametrize("kind", ["sqlite"])
def test_another_process_sees_and_extends_the_history(kind: str, tmp_path: Path) -> None:
    """Two OS processes write the same SQLite file at the same time; nothing is lost."""
    db = tmp_path / "chat.db"
    script = textwrap.dedent(
        """
        import sys
        from langchain_core.messages import AIMessage, HumanMessage
        from graph.memory.sqlite import SQLiteConversationStore
        h = SQLiteConversationStore(sys.argv[1]).history("shared", "alice")
        for t in range(30):
            h.add_messages([HumanMessage(f"{sys.argv[2]}-{t}"), AIMessage(f"{sys.argv[2]}-{t}")])
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(db), name], env=env)  # noqa: S603
        for name in ("p1", "p2")
    ]
    assert [p.wait(60) for p in procs] == [0, 0]
    from graph.memory.sqlite import SQLiteConversationStore

    msgs = SQLiteConversationStore(db).history("shared", "alice").messages
    assert len(msgs) == 120
    assert sorted(texts(msgs)[::2]) == sorted(f"{p}-{t}" for p in ("p1", "p2") for t in range(30))
    assert all(a.content == b.content for a, b in zip(msgs[::2], msgs[1::2], strict=True))


async def test_the_window_is_the_newest_messages_oldest_first(store: ConversationStore, api: Api) -> None:
    h = store.history("s1", "alice")
    for i in range(10):
        await api.add(h, turn(str(i)))
    everything = await h.aget_messages()

    assert await api.window(h, 5) == everything[-5:]  # an answer may come first: the node trims
    assert await api.window(h, 100) == everything
    assert await api.window(h) == everything
    assert await api.window(h, 0) == []
    assert await api.window(store.history("never-written", "alice"), 10) == []


async def test_the_deprecated_token_budget_still_trims_and_says_so(store: ConversationStore) -> None:
    h = store.history("s1", "alice")
    for i in range(10):
        await h.aadd_messages(turn(str(i)))
    everything = await h.aget_messages()
    from langchain_core.messages.utils import count_tokens_approximately

    budget = count_tokens_approximately(everything[-3:])
    with pytest.warns(DeprecationWarning, match="trim_messages"):
        by_tokens = await h.aget_window(max_tokens=budget)
    assert by_tokens == everything[-2:]  # the newest that fit, starting on a question
    with pytest.warns(DeprecationWarning):
        assert await asyncio.to_thread(h.get_window, 6, max_tokens=10_000) == everything[-6:]


async def test_paging_covers_the_whole_conversation_exactly_once(store: ConversationStore) -> None:
    h = store.history("s1", "alice")
    await h.aadd_messages([HumanMessage(f"m{i}") for i in range(23)])
    pages: list[list[str]] = []
    before = None
    while True:
        page = await h.aget_page(before=before, limit=5)
        pages.append(texts(page.messages))
        if page.next_before is None:
            break
        before = page.next_before
    assert pages[0] == [f"m{i}" for i in range(18, 23)]  # the first page is the newest, oldest first
    assert [t for p in reversed(pages) for t in p] == [f"m{i}" for i in range(23)]
    assert len(pages) == 5


async def test_concurrent_writers_lose_nothing_and_keep_each_turn_together(
    backend: Backend, store: ConversationStore
) -> None:
    async def writer(w: int) -> None:
        h = store.history("s1", "alice")  # each writer has its own handle, like a browser tab
        for t in range(2):
            await h.aadd_messages(turn(f"w{w}-t{t}"), model="gemma")

    await asyncio.gather(*(writer(w) for w in range(20)))
    msgs = await store.history("s1", "alice").aget_messages()
    assert len(msgs) == 80
    assert [r["seq"] for r in backend.raw_messages("s1")] == list(range(80))
    for q, a in zip(msgs[::2], msgs[1::2], strict=True):
        assert (q.type, a.type) == ("human", "ai")
        assert str(q.content).removeprefix("question ") == str(a.content).removeprefix("answer ")
    assert sorted(str(q.content) for q in msgs[::2]) == sorted(
        f"question w{w}-t{t}" for w in range(20) for t in range(2)
    )
    assert (await store.aget_conversation("s1", "alice")).message_count == 80


def test_two_threads_using_the_sync_api_lose_nothing(store: ConversationStore) -> None:
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            h = store.history("s1", "alice")
            for t in range(10):
                h.add_messages(turn(f"{name}-{t}"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("a", "b")]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert errors == []
    msgs = store.history("s1", "alice").messages
    assert len(msgs) == 40
    assert all(str(q.content)[9:] == str(a.content)[7:] for q, a in zip(msgs[::2], msgs[1::2], strict=True))


async def test_two_independent_store_instances_writing_at_once_lose_nothing(backend: Backend) -> None:
    """Two pods: no shared in-process lock, so only the store's transactions keep order."""
    pods = [backend.make(), backend.make()]

    async def writer(i: int) -> None:
        h = pods[i].history("s1", "alice")
        for t in range(3):
            await h.aadd_messages(turn(f"pod{i}-{t}"))

    await asyncio.gather(writer(0), writer(1))
    msgs = await pods[0].history("s1", "alice").aget_messages()
    assert len(msgs) == 12
    assert [r["seq"] for r in backend.raw_messages("s1")] == list(range(12))
    assert all(str(q.content)[9:] == str(a.content)[7:] for q, a in zip(msgs[::2], msgs[1::2], strict=True))


async def test_retrying_a_save_with_the_same_message_ids_does_not_duplicate(
    store: ConversationStore, api: Api
) -> None:
    h = store.history("s1", "alice")
    first = turn("1", ids=True)  # the graph's messages carry ids
    await api.add(h, first)
    await api.add(h, first)
    await api.add(h, [m.model_copy() for m in first])  # a retry with new objects, same ids
    assert await api.messages(h) == first

    clash = HumanMessage("a different question", id=first[0].id)  # same id, different message
    await api.add(h, [clash])
    msgs = await api.messages(h)
    assert texts(msgs) == ["question 1", "answer 1", "a different question"]
    assert clash.id != first[0].id and msgs[-1].id == clash.id  # the clash got a fresh id, kept
    assert (await store.aget_conversation("s1", "alice")).message_count == 3

    anonymous = HumanMessage("no id")  # as LangChain's `add_user_message` makes them
    await api.add(h, [anonymous])
    await api.add(h, [anonymous])  # nothing names it: stored twice, as any LangChain history would
    assert (await api.messages(h))[-2:] == [HumanMessage("no id"), HumanMessage("no id")]
    assert anonymous.id is None  # the caller's message is not changed


async def test_two_users_with_the_same_id_have_two_conversations_and_neither_sees_the_other(
    store: ConversationStore,
) -> None:
    """Ids are scoped to their owner: bob's "s1" is not alice's "s1". What bob learns about "s1" is the same
    before and after alice uses it (an empty conversation, the same "not found"), nothing bob does with
    "s1" reaches alice's, and when bob writes to "s1" he starts his own."""

    async def what_bob_sees() -> tuple[Any, ...]:
        bob = store.history("s1", "bob")
        with pytest.raises(ConversationNotFound) as missing:
            await store.aget_conversation("s1", "bob")
        with pytest.raises(ConversationNotFound) as rename:
            await store.arename("s1", "bob", "hijacked")
        return (
            await bob.aget_window(10),
            await bob.aget_page(),
            await bob.aget_messages(),
            bob.messages,
            await bob.atruncate("q-secret"),
            (type(missing.value), str(missing.value)),
            (type(rename.value), str(rename.value)),
            (await store.alist_conversations("bob")).conversations,
        )

    before = await what_bob_sees()
    await store.history("s1", "alice").aadd_messages(turn("secret", ids=True), model="gemma")
    assert await what_bob_sees() == before == ([], Page([], None), [], [], 0, *before[5:7], [])
    await store.adelete("s1", "bob")  # a no-op: bob has no "s1"
    alice = await store.aget_conversation("s1", "alice")
    assert (alice.title, alice.message_count) == ("question secret", 2)

    # Bob's own "s1": a second conversation of the same id, each user sees only theirs.
    await store.history("s1", "bob").aadd_messages([HumanMessage("bob's question")], model="gemini")
    await store.arename("s1", "bob", "Bob's")
    assert texts(await store.history("s1", "bob").aget_messages()) == ["bob's question"]
    assert await store.history("s1", "alice").aget_messages() == turn("secret", ids=True)
    mine = await store.aget_conversation("s1", "bob")
    assert (mine.user_id, mine.title, mine.message_count, mine.last_model) == ("bob", "Bob's", 1, "gemini")
    alice = await store.aget_conversation("s1", "alice")
    assert (alice.user_id, alice.title, alice.message_count, alice.last_model) == (
        "alice",
        "question secret",
        2,
        "gemma",
    )
    assert [(c.session_id, c.title) for c in (await store.alist_conversations("bob")).conversations] == [
        ("s1", "Bob's")
    ]
    assert [c.session_id for c in (await store.alist_conversations("alice")).conversations] == ["s1"]
    # Truncating, clearing and deleting bob's "s1" leave alice's alone.
    assert await store.history("s1", "bob").atruncate("a-secret") == 0  # alice's message id: not in bob's
    await store.history("s1", "bob").aclear()
    assert (await store.alist_conversations("bob")).conversations == []
    assert await store.history("s1", "alice").aget_messages() == turn("secret", ids=True)
    await store.history("s1", "bob").aadd_messages([HumanMessage("again")])
    await store.adelete("s1", "bob")
    assert await store.history("s1", "alice").aget_messages() == turn("secret", ids=True)


async def test_an_id_used_first_by_someone_else_still_works_for_its_owner(store: ConversationStore) -> None:
    """A predictable id ("project-x") taken first by bob does not stop alice from using it: no squatting."""
    await store.history("project-x", "bob").aadd_messages([HumanMessage("squatting")])
    alice = store.history("project-x", "alice")
    assert await alice.aget_window(10) == []
    await alice.aadd_messages(turn("plan"))
    await alice.aadd_messages(turn("more"))
    assert texts(await alice.aget_messages()) == [
        "question plan",
        "answer plan",
        "question more",
        "answer more",
    ]
    assert texts(await store.history("project-x", "bob").aget_messages()) == ["squatting"]
    assert (await store.aget_conversation("project-x", "alice")).title == "question plan"


def test_an_sqlite_database_of_the_old_schema_opens_with_its_conversations(tmp_path: Path) -> None:
    """`tests/fixtures/memory/sqlite-v1.sql` is the dump of a file written by the store before ids were
    scoped (schema 1, keyed by session id alone; see the README beside it), restored here into a file:
    opening it migrates it, and every conversation is still there for its owner, titles, models and
    message ids included."""
    from graph.memory.sqlite import SQLiteConversationStore

    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as c:
        c.executescript((ROOT / "tests/fixtures/memory/sqlite-v1.sql").read_text())
        assert c.execute("PRAGMA user_version").fetchone()[0] == 1
    store = SQLiteConversationStore(path)
    try:
        plans = store.history("plans", "alice")
        assert texts(plans.messages) == ["Alice's plans for Monday", "Here they are", "And Tuesday?", "Rest"]
        assert [m.id for m in plans.messages] == ["q1", "a1", "q2", "a2"]
        assert plans.messages[1].response_metadata[META_KEY] == {"backend": "gemma"}
        listed = asyncio.run(store.alist_conversations("alice")).conversations
        assert [(c.session_id, c.title, c.message_count) for c in listed] == [
            ("notes", "a note", 1),
            ("plans", "Week plans", 4),
        ]
        conv = asyncio.run(store.aget_conversation("plans", "alice"))
        assert (conv.user_id, conv.last_model) == ("alice", "gemini")
        assert texts(store.history("project-x", "bob").messages) == ["Bob's project", "ok"]
        assert store.history("plans", "bob").messages == []  # still alice's only
        # The migrated store goes on: appends continue the sequence, retries stay no-ops, cuts work.
        plans.add_messages([HumanMessage("And Wednesday?", id="q3")])
        plans.add_messages([HumanMessage("And Wednesday?", id="q3")])
        assert [m.id for m in plans.messages] == ["q1", "a1", "q2", "a2", "q3"]
        assert plans.truncate("q2") == 3
        store.history("plans", "bob").add_messages([HumanMessage("bob's plans")])
        assert texts(plans.messages) == ["Alice's plans for Monday", "Here they are"]
    finally:
        store.close()
    with contextlib.closing(sqlite3.connect(path)) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == 2
        pk = [r[1] for r in sorted(c.execute("PRAGMA table_info(sessions)"), key=lambda r: r[5]) if r[5]]
        assert pk == ["user_id", "session_id"]
    reopened = SQLiteConversationStore(path)  # a second open is a no-op
    try:
        assert len(reopened.history("plans", "alice").messages) == 2
    finally:
        reopened.close()


async def test_the_list_is_newest_first_paged_and_only_mine(store: ConversationStore) -> None:
    for i in range(5):
        await store.history(f"c{i}", "alice").aadd_messages([HumanMessage(f"topic {i}")])
    await store.history("other", "bob").aadd_messages([HumanMessage("bob's")])
    await store.history("c1", "alice").aadd_messages([AIMessage("c1 updated last")])

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await store.alist_conversations("alice", limit=2, cursor=cursor)
        pages += 1
        seen += [c.session_id for c in page.conversations]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == ["c1", "c4", "c3", "c2", "c0"]
    assert pages == 3
    first = (await store.alist_conversations("alice", limit=1)).conversations[0]
    assert (first.title, first.message_count) == ("topic 1", 2)
    with pytest.raises(ValueError):
        await store.alist_conversations("alice", cursor="not-a-cursor!")


async def test_rename_is_validated_and_sticks(store: ConversationStore) -> None:
    h = store.history("s1", "alice")
    await h.aadd_messages(turn("1"))
    await store.arename("s1", "alice", "  My   plans  ")
    assert (await store.aget_conversation("s1", "alice")).title == "My plans"
    for bad in ("", "   ", "x" * 201):
        with pytest.raises(ValueError):
            await store.arename("s1", "alice", bad)
    with pytest.raises(ConversationNotFound):
        await store.arename("missing", "alice", "title")
    await h.aadd_messages(turn("2"))
    assert (await store.aget_conversation("s1", "alice")).title == "My plans"


async def test_the_title_comes_from_the_first_question_shortened_sensibly(store: ConversationStore) -> None:
    await store.history("short", "alice").aadd_messages([SystemMessage("sys"), HumanMessage(" Hi\n there ")])
    long_q = "Explain how the transformer attention mechanism scales with sequence length and memory please"
    await store.history("long", "alice").aadd_messages([HumanMessage(long_q)])
    assert (await store.aget_conversation("short", "alice")).title == "Hi there"
    title = (await store.aget_conversation("long", "alice")).title
    assert title.endswith("…") and len(title) <= 61
    assert long_q.startswith(title[:-1]) and not title[:-1].endswith(" ")


async def test_delete_removes_the_conversation_and_all_its_messages(backend: Backend, api: Api) -> None:
    store = backend.make(**({"delete_batch_size": 500} if backend.kind == "firestore" else {}))
    h = store.history("s1", "alice")
    await h.aadd_messages([HumanMessage(f"m{i}") for i in range(600)])
    await store.history("keep", "alice").aadd_messages(turn("keep"))
    assert len(backend.raw_messages("s1")) == 600

    await api.clear(h)  # sync `clear` and async `aclear` are the same delete (retries, batches)
    assert backend.raw_messages("s1") == [] and backend.raw_session("s1") is None
    if backend.kind == "firestore":
        assert store.stats.extra["delete_batches"] == 2  # 600 messages, batches of 500
    with pytest.raises(ConversationNotFound):
        await store.aget_conversation("s1", "alice")
    assert await h.aget_messages() == []
    assert [c.session_id for c in (await store.alist_conversations("alice")).conversations] == ["keep"]
    await store.adelete("s1", "alice")  # a retried delete is a no-op
    await h.aadd_messages(turn("fresh start"))
    assert texts(await h.aget_messages()) == ["question fresh start", "answer fresh start"]


async def test_truncate_cuts_from_a_message_on_and_keeps_the_conversation(
    backend: Backend, store: ConversationStore, api: Api
) -> None:
    """Regenerate drops the last answer, edit drops from a question on: the conversation stays."""
    h = store.history("s1", "alice")
    for i in range(3):
        await api.add(h, turn(str(i), ids=True), model="gemma")
    await api.add(h, [HumanMessage("odd id", id="run/42:x"), AIMessage("ok", id="a-odd")])
    await store.arename("s1", "alice", "My plans")

    assert await api.truncate(h, "run/42:x") == 2  # an id that is not a valid document id
    assert await api.truncate(h, "a-2") == 1  # regenerate
    assert texts(await api.messages(h))[-1] == "question 2"
    assert await api.truncate(h, "q-1") == 3  # edit from the second question
    assert await api.messages(h) == turn("0", ids=True)
    conv = await store.aget_conversation("s1", "alice")
    assert (conv.title, conv.message_count, conv.user_id, conv.last_model) == (
        "My plans",
        2,
        "alice",
        "gemma",
    )

    assert await api.truncate(h, "q-1") == 0  # already cut: a retried truncate is a no-op
    assert await api.truncate(h, "never-stored") == 0
    assert await api.truncate(store.history("missing", "alice"), "q-0") == 0
    assert await api.truncate(store.history("s1", "bob"), "q-0") == 0  # bob's "s1" is not alice's
    assert len(await api.messages(h)) == 2

    await api.add(h, turn("1", ids=True))  # the edited question may keep its id
    await api.add(h, turn("2", ids=True))
    assert texts(await api.messages(h)) == [f"{w} {i}" for i in range(3) for w in ("question", "answer")]
    assert [r["seq"] for r in backend.raw_messages("s1")] == [0, 1, 8, 9, 10, 11]  # order kept, gaps fine
    pages, before = [], None
    while True:
        page = await h.aget_page(before=before, limit=4)
        pages = page.messages + pages
        if page.next_before is None:
            break
        before = page.next_before
    assert pages == await api.messages(h)
    assert (await store.aget_conversation("s1", "alice")).message_count == 6

    assert await api.truncate(h, "q-0") == 6  # from the first message: empty, header kept
    conv = await store.aget_conversation("s1", "alice")
    assert (conv.title, conv.message_count) == ("My plans", 0)
    assert await api.messages(h) == [] and await api.window(h, 10) == []


async def test_editing_the_first_question_retitles_a_conversation_nobody_renamed(
    store: ConversationStore, api: Api
) -> None:
    """The automatic title follows the first question when it is edited; a chosen title stays."""
    auto, named = store.history("auto", "alice"), store.history("named", "alice")
    for h in (auto, named):
        await api.add(h, turn("Ada", ids=True))
    await store.arename("named", "alice", "Mine")
    for h in (auto, named):
        assert await api.truncate(h, "q-Ada") == 2
        await api.add(h, [HumanMessage("question Grace", id="q-Grace"), AIMessage("hi", id="a-Grace")])
    assert (await store.aget_conversation("auto", "alice")).title == "question Grace"
    assert (await store.aget_conversation("named", "alice")).title == "Mine"
    await api.add(auto, turn("later", ids=True))
    assert await api.truncate(auto, "q-later") == 2  # not from the first question: the title stays
    assert (await store.aget_conversation("auto", "alice")).title == "question Grace"


async def test_truncating_a_long_tail_works_in_batches(backend: Backend, api: Api) -> None:
    store = backend.make(**({"delete_batch_size": 250} if backend.kind == "firestore" else {}))
    h = store.history("s1", "alice")
    msgs = [HumanMessage(f"m{i}", id=f"m{i}") for i in range(620)]
    await h.aadd_messages(msgs)
    assert await api.truncate(h, "m20") == 600
    assert await h.aget_messages() == msgs[:20]
    assert (await store.aget_conversation("s1", "alice")).message_count == 20
    if backend.kind == "firestore":
        assert store.stats.extra["truncate_batches"] == 3  # 600 messages, 250 a transaction


async def test_expire_at_is_set_only_when_a_ttl_is_configured(backend: Backend) -> None:
    clock = backend.clock
    ttl = backend.make(ttl_days=30)
    await ttl.history("s1", "alice").aadd_messages(turn("1"))
    written = clock.now
    expire = backend.raw_session("s1")["expire_at"]  # type: ignore[index]
    if backend.kind == "sqlite":
        expire = datetime.fromtimestamp(expire, UTC)
    assert abs(expire - (written + timedelta(days=30))) < timedelta(seconds=1)
    if backend.kind == "firestore":
        assert all(abs(m["expire_at"] - expire) < timedelta(seconds=1) for m in backend.raw_messages("s1"))

    plain = backend.make()
    await plain.history("s2", "alice").aadd_messages(turn("1"))
    assert backend.raw_session("s2").get("expire_at") is None  # type: ignore[union-attr]
    assert all(m.get("expire_at") is None for m in backend.raw_messages("s2"))
    if backend.kind == "sqlite":  # no TTL engine: the store purges what has expired
        clock.advance(days=31)
        assert await ttl.apurge_expired() == 1  # type: ignore[attr-defined]
        assert backend.raw_session("s1") is None and backend.raw_messages("s1") == []
        assert backend.raw_session("s2") is not None


@pytest.mark.integration
async def test_firestore_pushes_old_messages_expiry_forward_in_an_active_conversation(
    emulator: FirestoreEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages get `expire_at` when written; an active conversation must not lose its oldest ones."""
    b = _firestore_backend(emulator, monkeypatch)
    store = b.make(ttl_days=30)
    h = store.history("s1", "alice")
    await h.aadd_messages(turn("day 0"))
    b.clock.advance(days=10)
    await h.aadd_messages(turn("day 10"))  # oldest still expires in 20 days > 15: nothing to do
    assert b.raw_messages("s1")[0]["expire_at"] < b.raw_messages("s1")[2]["expire_at"]
    b.clock.advance(days=10)
    await h.aadd_messages(turn("day 20"))  # oldest expires in 10 days < 15: all pushed to day 50
    expiries = {m["expire_at"] for m in b.raw_messages("s1")[:4]}
    session = b.raw_session("s1")
    assert session is not None
    assert all(abs(e - session["expire_at"]) < timedelta(seconds=1) for e in expiries)
    assert abs(session["messages_expire_min"] - session["expire_at"]) < timedelta(seconds=1)

    no_ttl = b.make()  # TTL switched off: nothing of a live conversation may expire any more
    await no_ttl.history("s1", "alice").aadd_messages(turn("ttl off"))
    session = b.raw_session("s1")
    assert session is not None and "expire_at" not in session and "messages_expire_min" not in session
    assert all("expire_at" not in m for m in b.raw_messages("s1"))
    for s in (store, no_ttl):
        await s.aclose()


@pytest.mark.integration
async def test_firestore_reads_a_legacy_document_and_migrates_it_on_the_next_write(
    emulator: FirestoreEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The document exactly as `langchain-google-firestore` 0.5.0 writes it: `messages` = bytes of JSON."""
    b = _firestore_backend(emulator, monkeypatch)
    from google.cloud import firestore

    raw = firestore.Client(project=emulator.project, database=DATABASE)
    legacy = [HumanMessage("first question"), AIMessage("first answer")]
    items: list[Any] = [json.dumps(m.model_dump(), separators=(",", ":")).encode() for m in legacy]
    items.append(json.dumps(HumanMessage("as str").model_dump()))  # encode_message=False writes str
    raw.collection(COLLECTION).document("old").set({"messages": items})

    with pytest.raises(AccessDenied):  # default: an ownerless document is nobody's
        await b.make().history("old", "alice").aget_window(10)

    store = b.make(legacy_owner="alice")
    h = store.history("old", "alice")
    assert texts(await h.aget_window(10)) == ["first question", "first answer", "as str"]
    assert texts((await h.aget_page(limit=2)).messages) == ["first answer", "as str"]
    with pytest.raises(AccessDenied):
        await store.history("old", "bob").aget_window(10)
    assert (await store.aget_conversation("old", "alice")).title == "first question"

    await h.aadd_messages(turn("after migration"), model="gemma")
    doc = b.raw_session("old", None)  # claimed in place: it stays at its bare id
    assert doc is not None and "messages" not in doc
    assert (doc["user_id"], doc["message_count"], doc["next_seq"], doc["title"]) == (
        "alice",
        5,
        5,
        "first question",
    )
    assert [m["seq"] for m in b.raw_messages("old", None)] == [0, 1, 2, 3, 4]
    expected = [
        "first question",
        "first answer",
        "as str",
        "question after migration",
        "answer after migration",
    ]
    assert texts(await h.aget_messages()) == expected
    assert [c.session_id for c in (await store.alist_conversations("alice")).conversations] == ["old"]

    raw.collection(COLLECTION).document("old3").set({"messages": items})
    assert await h.__class__("old3", user_id="alice", store=store).atruncate("legacy-000001") == 2
    assert b.raw_session("old3", None)["message_count"] == 1  # type: ignore[index]  # migrated, then cut
    assert [m["content"] for m in b.raw_messages("old3", None)] == ["first question"]

    anyone = b.make(legacy_owner="*")  # trusted single-tenant mode: the first writer claims it
    raw.collection(COLLECTION).document("old2").set({"messages": items[:1]})
    await anyone.history("old2", "carol").aadd_messages([AIMessage("claimed")])
    assert await anyone.history("old2", "dave").aget_window(10) == []  # carol's now: not dave's to see
    await anyone.history("old2", "dave").aadd_messages([HumanMessage("dave's own")])
    assert b.raw_session("old2", None)["user_id"] == "carol"  # type: ignore[index]
    assert texts(await anyone.history("old2", "carol").aget_messages()) == ["first question", "claimed"]


@pytest.mark.integration
async def test_firestore_history_without_an_owner_is_the_packages_drop_in(
    emulator: FirestoreEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`user_id=None` opens unowned sessions only; owned users open them only as `legacy_owner` says."""
    b = _firestore_backend(emulator, monkeypatch)
    from graph.memory.firestore import FirestoreChatMessageHistory

    store = b.make()
    anon = FirestoreChatMessageHistory("shared", user_id=None, store=store)
    await anon.aadd_messages([HumanMessage("hello")])
    assert await anon.aget_messages() == [HumanMessage("hello")]
    assert b.raw_session("shared", None)["user_id"] is None  # type: ignore[index]
    with pytest.raises(AccessDenied):
        await store.history("shared", "alice").aget_messages()  # default: nobody may open it
    await store.history("mine", "alice").aadd_messages([HumanMessage("private")])
    assert await FirestoreChatMessageHistory("mine", user_id=None, store=store).aget_messages() == []
    assert texts(await store.history("mine", "alice").aget_messages()) == ["private"]  # at its scoped id

    claims = b.make(legacy_owner="*")
    await claims.history("shared", "alice").aadd_messages([AIMessage("hi")])  # the first writer claims
    assert b.raw_session("shared", None)["user_id"] == "alice"  # type: ignore[index]
    with pytest.raises(AccessDenied):
        await anon.aget_messages()
    for s in (store, claims):
        await s.aclose()


@pytest.mark.integration
async def test_firestore_conversations_saved_before_ids_were_scoped_keep_working(
    emulator: FirestoreEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before ids were scoped, a user's conversation was the document `{session_id}` with its `user_id`.
    Such documents keep working for their owner where they are; to anyone else they are not there."""
    b = _firestore_backend(emulator, monkeypatch)
    from google.cloud import firestore

    from graph.memory.firestore import FirestoreChatMessageHistory, document_id

    store = b.make()
    raw = firestore.Client(project=emulator.project, database=DATABASE)
    for sid, owner in (("kept", "alice"), ("bobs", "bob")):
        # The old layout is the drop-in's plus the owner (the old code wrote exactly these fields).
        await FirestoreChatMessageHistory(sid, user_id=None, store=store).aadd_messages(turn(sid, ids=True))
        raw.collection(COLLECTION).document(sid).update({"user_id": owner})
    alice = store.history("kept", "alice")
    assert await alice.aget_messages() == turn("kept", ids=True)
    assert await alice.aget_window(1) == turn("kept", ids=True)[1:]
    assert (await alice.aget_page(limit=1)).messages == turn("kept", ids=True)[1:]
    assert [c.session_id for c in (await store.alist_conversations("alice")).conversations] == ["kept"]
    await alice.aadd_messages(turn("more", ids=True))
    await store.arename("kept", "alice", "Kept")
    assert b.raw_session("kept", "alice") is None  # appended where it was, not copied
    assert (b.raw_session("kept", None) or {})["message_count"] == 4
    assert await alice.atruncate("q-more") == 2
    assert (await store.aget_conversation("kept", "alice")).title == "Kept"

    # Someone else's old-layout conversation is not there for them, and their own takes its id.
    bob_kept = store.history("kept", "bob")
    assert await bob_kept.aget_messages() == []
    with pytest.raises(ConversationNotFound):
        await store.aget_conversation("kept", "bob")
    await bob_kept.aadd_messages([HumanMessage("bob's kept")])
    assert texts(await bob_kept.aget_messages()) == ["bob's kept"]
    assert await alice.aget_messages() == turn("kept", ids=True)
    assert await store.history("bobs", "alice").aget_messages() == []
    assert await store.history("bobs", "bob").aget_messages() == turn("bobs", ids=True)
    # A crafted id naming bob's scoped document is not bob's conversation either.
    crafted = document_id("kept", "bob")
    assert await store.history(crafted, "alice").aget_messages() == []
    await store.history(crafted, "alice").aadd_messages([HumanMessage("alice's odd id")])
    assert texts(await bob_kept.aget_messages()) == ["bob's kept"]
    listed = {c.session_id for c in (await store.alist_conversations("alice")).conversations}
    assert listed == {"kept", crafted}

    # Deleting the old-layout conversation removes it; the next turn of that id starts a scoped one.
    await store.adelete("kept", "alice")
    assert b.raw_session("kept", None) is None and b.raw_messages("kept", None) == []
    await alice.aadd_messages([HumanMessage("fresh")])
    assert texts(await alice.aget_messages()) == ["fresh"]
    assert (b.raw_session("kept", "alice") or {})["session_id"] == "kept"
    assert texts(await bob_kept.aget_messages()) == ["bob's kept"]
    await store.aclose()


async def test_a_5_mb_conversation_saves_and_loads(store: ConversationStore) -> None:
    h = store.history("big", "alice")
    chunk = "lorem ipsum " * 21_000  # ~250 kB per answer; 20 answers ~ 5 MB (one document could hold 1 MiB)
    for i in range(10):
        await h.aadd_messages([HumanMessage(f"q{i}"), AIMessage(f"{i}:{chunk}")])
        await h.aadd_messages([HumanMessage(f"r{i}"), AIMessage(f"{i}b:{chunk}")])
    msgs = await h.aget_messages()
    assert len(msgs) == 40 and sum(len(str(m.content)) for m in msgs) > 5_000_000
    window = await h.aget_window(max_messages=40)
    assert texts(window)[-2:] == ["r9", f"9b:{chunk}"]


async def test_the_window_costs_the_same_at_100_and_1000_messages(backend: Backend) -> None:
    store = backend.make()
    cost: dict[int, tuple[int, int, float]] = {}
    for n in (100, 1000):
        h = store.history(f"len{n}", "alice")
        for start in range(0, n, 500):
            await h.aadd_messages(
                [m for t in range(start // 2, min(n, start + 500) // 2) for m in turn(str(t))]
            )
        await h.aget_window(20)  # warm up
        store.stats.docs_read = 0
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            assert len(await h.aget_window(max_messages=20)) == 20
            times.append(time.perf_counter() - t0)
        cost[n] = (store.stats.docs_read // 5, 0, statistics.median(times))
    print(
        f"\n[figures] {backend.kind} window(20) load: "
        + ", ".join(f"{n} msgs {t * 1000:.2f} ms / {d} docs read" for n, (d, _, t) in cost.items())
    )
    assert cost[100][0] == cost[1000][0] <= 21  # the window's 20 messages (+ the header document)
    assert cost[1000][2] < 4 * cost[100][2] + 0.1  # loose: other work shares this machine


async def test_figures_append_turn_plus_window_latency(backend: Backend) -> None:
    store = backend.make()
    h = store.history("perf", "alice")
    for i in range(20):
        await h.aadd_messages(turn(f"warm{i}"))
    n = 200 if backend.kind == "sqlite" else 40
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        await h.aadd_messages(turn(str(i)), model="gemma")
        await h.aget_window(max_messages=40)
        samples.append(time.perf_counter() - t0)
    p50 = statistics.median(samples) * 1000
    p95 = statistics.quantiles(samples, n=20)[18] * 1000
    print(f"\n[figures] {backend.kind} append turn + window(40): p50 {p50:.2f} ms, p95 {p95:.2f} ms (n={n})")
    assert p50 < (10 if backend.kind == "sqlite" else 250)


async def test_an_outage_raises_memory_unavailable_quickly_and_a_retry_saves_the_turn_once(
    backend: Backend,
) -> None:
    store = backend.make(**backend.outage_kwargs)
    h = store.history("s1", "alice")
    await h.aadd_messages(turn("before"))
    pending = turn("during outage")
    with backend.outage():
        t0 = time.perf_counter()
        with pytest.raises(MemoryUnavailable):
            await h.aadd_messages(pending)
        assert time.perf_counter() - t0 < 5  # bounded, not a hang
    await h.aadd_messages(pending)  # the graph keeps the turn and retries with the same objects
    assert texts(await h.aget_messages()) == [
        "question before",
        "answer before",
        "question during outage",
        "answer during outage",
    ]
    await store.aping()


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("firestore", marks=pytest.mark.integration)])
async def test_construction_touches_nothing_and_an_unreachable_store_fails_fast(
    kind: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if kind == "sqlite":
        from graph.memory.sqlite import SQLiteConversationStore

        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory")
        store: Any = SQLiteConversationStore(blocker / "chat.db")  # cannot exist; constructing is fine
    else:
        from graph.memory.firestore import FirestoreChatMessageHistory, FirestoreConversationStore

        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{free_port()}")  # nothing listens
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "demo-test")
        store = FirestoreConversationStore(database=DATABASE, timeout=1.0)
        FirestoreChatMessageHistory("s1", COLLECTION, user_id="alice", timeout=1.0)  # package-like shape
    h = store.history("s1", "alice")
    t0 = time.perf_counter()
    with pytest.raises(MemoryUnavailable):
        await h.aadd_messages(turn("1"))
    with pytest.raises(MemoryUnavailable):
        await h.aget_window(10)
    with pytest.raises(MemoryUnavailable):
        await store.aping()
    with pytest.raises(MemoryUnavailable):
        h.add_messages(turn("sync"))
    assert time.perf_counter() - t0 < 12
    await store.aclose()


def test_the_sync_api_works_too(store: ConversationStore) -> None:
    h = store.history("s1", "alice")
    h.add_messages(turn("1"))
    h.add_message(HumanMessage("follow-up"))
    assert texts(h.messages) == ["question 1", "answer 1", "follow-up"]
    assert texts(h.get_window(max_messages=2)) == ["answer 1", "follow-up"]
    h.clear()
    assert h.messages == []


def test_one_store_serves_several_event_loops(store: ConversationStore) -> None:
    """Gradio's loop, a worker thread's `asyncio.run`: each gets working clients."""
    h = store.history("s1", "alice")
    asyncio.run(h.aadd_messages(turn("1")))
    results: list[list[str]] = []
    th = threading.Thread(target=lambda: results.append(texts(asyncio.run(h.aget_window(10)))))
    th.start()
    th.join(30)
    assert results == [["question 1", "answer 1"]]
    assert texts(asyncio.run(h.aget_window(10))) == ["question 1", "answer 1"]


def test_make_store_picks_the_store_from_settings(tmp_path: Path) -> None:
    from graph.memory import make_store
    from graph.memory.firestore import FirestoreConversationStore
    from graph.memory.sqlite import SQLiteConversationStore
    from graph.settings import Settings

    sqlite_store = make_store(Settings(_env_file=None, sqlite_path=tmp_path / "x.db"))  # type: ignore[call-arg]
    assert isinstance(sqlite_store, SQLiteConversationStore) and not (tmp_path / "x.db").exists()
    fs = make_store(
        Settings(_env_file=None, memory="firestore", firestore_project="p", history_ttl_days=7)  # type: ignore[call-arg]
    )
    assert isinstance(fs, FirestoreConversationStore)
    assert (fs.database, fs.collection, fs.ttl_days) == ("chat-app-db", "chat_sessions", 7)
