"""The embedded default store: one SQLite file, stdlib `sqlite3`, same semantics as the Firestore store.

Why it looks like this:
- WAL journal + `synchronous=NORMAL`: readers never block the writer, and a commit costs no fsync (a
  checkpoint does). A crash of the app or the machine never corrupts the file; a power cut may lose the
  last commits. Pass `synchronous="FULL"` to trade ~1 ms per append for power-cut durability.
- A conversation is keyed by its owner and its id, `(user_id, session_id)`: ids are scoped to their
  owner, so two users may each use the same client-chosen id (two conversations), nobody can claim an
  id before its owner uses it, and another user's id is simply not there (no `AccessDenied`: "not
  yours" is "not found", by the same query and so in the same time).
- One row per message, keyed `(user_id, session_id, seq)` in a WITHOUT ROWID table (a conversation is
  one contiguous B-tree range: reading the last N messages is a range scan whatever the length), plus
  a unique `(user_id, session_id, message_id)` that makes retried saves no-ops.
- Schema 1 (keyed by session id alone) is migrated when the file is opened (`_migrate_v1`): one
  transaction copies both tables into the owner-keyed ones.
- Appends run in `BEGIN IMMEDIATE`: the write lock is taken before reading `next_seq`, so concurrent
  writers (threads or processes) queue instead of deadlocking or reusing a sequence number.
- One connection per thread (thread-local, reused), never one per call. Async methods run the sync code
  with `asyncio.to_thread`, so the event loop never blocks on disk.
- Timestamps are stored as UTC epoch seconds (REAL). `expire_at` mirrors the Firestore TTL field on the
  conversation; SQLite has no TTL, `apurge_expired()` deletes what has expired.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage

from graph.memory.codec import (
    DEFAULT_TITLE,
    decode_cursor,
    derive_title,
    deserialize_message,
    encode_cursor,
    message_fields,
    message_text,
    normalize_message,
    plan_keys,
    serialize_message,
    stored_ids,
    trim_to_tokens,
    utcnow,
    validate_title,
)
from graph.memory.contract import (
    ChatHistory,
    Conversation,
    ConversationList,
    ConversationNotFound,
    ConversationStore,
    MemoryUnavailable,
    Page,
    StoreStats,
)

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    user_id       TEXT NOT NULL,
    session_id    TEXT NOT NULL,
    title         TEXT NOT NULL DEFAULT '',
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    last_model    TEXT,
    message_count INTEGER NOT NULL DEFAULT 0,
    next_seq      INTEGER NOT NULL DEFAULT 0,
    expire_at     REAL,
    PRIMARY KEY (user_id, session_id)
);
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (user_id, updated_at DESC, session_id DESC);
CREATE TABLE IF NOT EXISTS messages (
    user_id       TEXT NOT NULL,
    session_id    TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    message_id    TEXT NOT NULL,
    role          TEXT NOT NULL,
    content       TEXT NOT NULL,
    created_at    REAL NOT NULL,
    backend       TEXT,
    route_reason  TEXT,
    latency_ms    REAL,
    ttft_ms       REAL,
    model         TEXT,
    input_tokens  INTEGER,
    output_tokens INTEGER,
    message       TEXT NOT NULL,
    PRIMARY KEY (user_id, session_id, seq),
    UNIQUE (user_id, session_id, message_id)
) WITHOUT ROWID;
"""

_SESSION_COLUMNS = (
    "session_id, user_id, title, created_at, updated_at, last_model, message_count, next_seq, expire_at"
)
_MSG_COLUMNS = (
    "user_id, session_id, seq, message_id, role, content, created_at, backend, route_reason, latency_ms, "
    "ttft_ms, model, input_tokens, output_tokens, message"
)


def _ts(dt: datetime) -> float:
    return dt.timestamp()


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class SQLiteConversationStore(ConversationStore):
    """Conversations in one SQLite file. Cheap to construct: the file is opened on first use."""

    def __init__(
        self,
        path: str | Path,
        *,
        ttl_days: int = 0,
        busy_timeout_s: float = 10.0,
        synchronous: str = "NORMAL",
        clock: Any = None,
    ) -> None:
        if str(path) == ":memory:":
            raise ValueError("an in-memory database cannot be shared between threads; use a file path")
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"invalid synchronous mode {synchronous!r}")
        self.path = Path(path)
        self.ttl_days = ttl_days
        self.busy_timeout_s = busy_timeout_s
        self.synchronous = synchronous.upper()
        self.clock = clock or utcnow
        self.stats = StoreStats()
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._schema_ready = False
        self._closed = False

    # --- connections -------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise MemoryUnavailable("the store is closed")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            self._enable_wal(conn)
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            if not self._schema_ready:
                self._ensure_schema(conn)
        except (sqlite3.OperationalError, OSError) as exc:
            if conn is not None:
                conn.close()
            raise MemoryUnavailable(f"cannot open {self.path}: {exc}") from exc
        self._local.conn = conn
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        """Switch to WAL (persistent in the file). Two processes creating the file at once make this
        fail with "locked" at once, without the busy handler, so retry until the busy timeout."""
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise MemoryUnavailable(f"{self.path} has schema {version}, newer than this code")
            if version < 2 and _columns(conn, "messages") and "user_id" not in _columns(conn, "messages"):
                _migrate_v1(conn)
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._schema_ready = True

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the database's write lock from its first statement."""
        conn = self._conn()
        with _mapped():
            conn.execute("BEGIN IMMEDIATE")
        try:
            with _mapped():
                yield conn
                conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _expire(self, now: datetime) -> float | None:
        return _ts(now + timedelta(days=self.ttl_days)) if self.ttl_days > 0 else None

    # --- histories ---------------------------------------------------------------------------
    def history(self, session_id: str, user_id: str) -> SQLiteChatMessageHistory:
        return SQLiteChatMessageHistory(self, session_id, user_id)

    # --- sync implementations (run in worker threads by the async API) -------------------------
    def _append(
        self, session_id: str, user_id: str, messages: Sequence[BaseMessage], model: str | None
    ) -> None:
        msgs = [normalize_message(m) for m in messages]
        if not msgs:
            return
        now = self.clock()
        try:
            with self._write() as conn:
                self._append_in(conn, session_id, user_id, msgs, model, now)
        finally:
            for original, m in zip(messages, msgs, strict=True):
                if m is not original:
                    original.id = m.id  # a collision got a fresh id: a retry must reuse it

    def _append_in(
        self,
        conn: sqlite3.Connection,
        session_id: str,
        user_id: str,
        msgs: list[BaseMessage],
        model: str | None,
        now: datetime,
    ) -> None:
        key = (user_id, session_id)
        row = conn.execute(
            "SELECT next_seq, title FROM sessions WHERE user_id = ? AND session_id = ?", key
        ).fetchone()
        ids = stored_ids(msgs)
        marks = ",".join("?" * len(ids))
        stored = {
            r[0]: (r[1], r[2])
            for r in conn.execute(
                f"SELECT message_id, role, content FROM messages WHERE user_id = ? AND session_id = ? "  # noqa: S608 - only "?" placeholders are formatted in
                f"AND message_id IN ({marks})",
                (*key, *ids),
            )
        }
        new = plan_keys(msgs, stored)
        if not new:
            return
        seq = row[0] if row else 0
        ts = _ts(now)
        rows = []
        for mkey, m in new:
            f = message_fields(m)
            rows.append(
                (
                    user_id, session_id, seq, mkey, m.type, message_text(m), ts, f["backend"],
                    f["route_reason"], f["latency_ms"], f["ttft_ms"], f["model"],
                    f["input_tokens"], f["output_tokens"], serialize_message(m),
                )
            )  # fmt: skip
            seq += 1
        expire = self._expire(now)
        title = derive_title(m for _, m in new) or ""
        if row is None:
            conn.execute(
                f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608 - constant columns
                (session_id, user_id, title, ts, ts, model, len(new), seq, expire),
            )
        else:
            conn.execute(
                "UPDATE sessions SET updated_at = ?, last_model = COALESCE(?, last_model), "
                "message_count = message_count + ?, next_seq = ?, expire_at = ?, "
                "title = CASE WHEN title = '' THEN ? ELSE title END WHERE user_id = ? AND session_id = ?",
                (ts, model, len(new), seq, expire, title, *key),
            )
        conn.executemany(f"INSERT INTO messages ({_MSG_COLUMNS}) VALUES ({','.join('?' * 15)})", rows)  # noqa: S608 - constant columns, "?" placeholders

    def _to_messages(self, rows: Iterable[tuple[Any, ...]]) -> list[BaseMessage]:
        """(message, content) rows -> messages, exactly as written."""
        out = [deserialize_message(raw, content) for raw, content in rows]
        self.stats.docs_read += len(out)
        return out

    def _window(self, session_id: str, user_id: str, max_messages: int | None) -> list[BaseMessage]:
        if max_messages is not None and max_messages <= 0:
            return []
        with _mapped():
            rows = (
                self._conn()
                .execute(
                    "SELECT message, content FROM messages WHERE user_id = ? AND session_id = ? "
                    "ORDER BY seq DESC LIMIT ?",
                    (user_id, session_id, -1 if max_messages is None else max_messages),
                )
                .fetchall()
            )
        return self._to_messages(reversed(rows))

    def _page(self, session_id: str, user_id: str, before: int | None, limit: int) -> Page:
        if limit <= 0:
            raise ValueError("limit must be positive")
        with _mapped():
            rows = (
                self._conn()
                .execute(
                    "SELECT seq, message, content FROM messages WHERE user_id = ? AND session_id = ? "
                    "AND seq < ? ORDER BY seq DESC LIMIT ?",
                    (user_id, session_id, before if before is not None else 2**62, limit + 1),
                )
                .fetchall()
            )
        more = len(rows) > limit
        rows = rows[:limit]
        msgs = self._to_messages(r[1:] for r in reversed(rows))
        return Page(msgs, rows[-1][0] if more and rows else None)

    def _all(self, session_id: str, user_id: str) -> list[BaseMessage]:
        with _mapped():
            rows = (
                self._conn()
                .execute(
                    "SELECT message, content FROM messages WHERE user_id = ? AND session_id = ? ORDER BY seq",
                    (user_id, session_id),
                )
                .fetchall()
            )
        return self._to_messages(rows)

    def _truncate(self, session_id: str, user_id: str, from_message_id: str) -> int:
        """`ChatHistory.atruncate`: one write transaction (concurrent appends queue behind it)."""
        key = (user_id, session_id)
        with self._write() as conn:
            row = conn.execute(
                "SELECT seq, role, content FROM messages WHERE user_id = ? AND session_id = ? "
                "AND message_id = ?",
                (*key, from_message_id),
            ).fetchone()
            if row is None:
                return 0
            first = conn.execute(
                "SELECT NOT EXISTS (SELECT 1 FROM messages WHERE user_id = ? AND session_id = ? AND seq < ?)",
                (*key, row[0]),
            ).fetchone()[0]
            n = conn.execute(
                "DELETE FROM messages WHERE user_id = ? AND session_id = ? AND seq >= ?", (*key, row[0])
            ).rowcount
            conn.execute(
                "UPDATE sessions SET message_count = MAX(0, message_count - ?), updated_at = ?, "
                "title = CASE WHEN ? AND title = ? THEN '' ELSE title END "
                "WHERE user_id = ? AND session_id = ?",
                (n, _ts(self.clock()), bool(first), _derived_title(row[1], row[2]), *key),
            )
            return n

    def _delete(self, session_id: str, user_id: str) -> None:
        with self._write() as conn:
            _delete_in(conn, user_id, session_id)

    def _rename(self, session_id: str, user_id: str, title: str) -> None:
        title = validate_title(title)
        with self._write() as conn:
            changed = conn.execute(
                "UPDATE sessions SET title = ? WHERE user_id = ? AND session_id = ?",
                (title, user_id, session_id),
            ).rowcount
            if not changed:
                raise ConversationNotFound(session_id)

    def _get_conversation(self, session_id: str, user_id: str) -> Conversation:
        conn = self._conn()
        with _mapped():
            row = conn.execute(
                "SELECT session_id, user_id, title, created_at, updated_at, message_count, last_model "
                "FROM sessions WHERE user_id = ? AND session_id = ?",
                (user_id, session_id),
            ).fetchone()
        if row is None:
            raise ConversationNotFound(session_id)
        return _conversation(row)

    def _list(self, user_id: str, limit: int, cursor: str | None) -> ConversationList:
        if limit <= 0:
            raise ValueError("limit must be positive")
        sql = (
            "SELECT session_id, user_id, title, created_at, updated_at, message_count, last_model "
            "FROM sessions WHERE user_id = ?"
        )
        params: list[Any] = [user_id]
        if cursor:
            ts, sid = decode_cursor(cursor)
            sql += " AND (updated_at < ? OR (updated_at = ? AND session_id < ?))"
            params += [_ts(ts), _ts(ts), sid]
        sql += " ORDER BY updated_at DESC, session_id DESC LIMIT ?"
        params.append(limit + 1)
        conn = self._conn()
        with _mapped():
            rows = conn.execute(sql, params).fetchall()
        convs = [_conversation(r) for r in rows[:limit]]
        nxt = encode_cursor(convs[-1].updated_at, convs[-1].session_id) if len(rows) > limit else None
        return ConversationList(convs, nxt)

    def _ping(self) -> None:
        with _mapped():
            self._conn().execute("SELECT 1").fetchone()

    def purge_expired(self) -> int:
        """Delete conversations whose `expire_at` has passed (SQLite's stand-in for Firestore TTL)."""
        now = _ts(self.clock())
        with self._write() as conn:
            expired = "SELECT user_id, session_id FROM sessions WHERE expire_at < ?"
            keys = conn.execute(expired, (now,)).fetchall()
            for user_id, session_id in keys:
                _delete_in(conn, user_id, session_id)
        return len(keys)

    # --- async API -----------------------------------------------------------------------------
    async def alist_conversations(
        self, user_id: str, limit: int = 20, cursor: str | None = None
    ) -> ConversationList:
        return await asyncio.to_thread(self._list, user_id, limit, cursor)

    async def aget_conversation(self, session_id: str, user_id: str) -> Conversation:
        return await asyncio.to_thread(self._get_conversation, session_id, user_id)

    async def arename(self, session_id: str, user_id: str, title: str) -> None:
        await asyncio.to_thread(self._rename, session_id, user_id, title)

    async def adelete(self, session_id: str, user_id: str) -> None:
        await asyncio.to_thread(self._delete, session_id, user_id)

    async def aping(self) -> None:
        await asyncio.to_thread(self._ping)

    async def apurge_expired(self) -> int:
        return await asyncio.to_thread(self.purge_expired)

    def close(self) -> None:
        """Close every thread's connection (a checkpoint happens when the last one closes)."""
        self._closed = True
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.close()
            except sqlite3.Error:  # pragma: no cover - closing is best effort
                pass
        self._local = threading.local()

    async def aclose(self) -> None:
        self.close()


class SQLiteChatMessageHistory(ChatHistory):
    """One user's conversation in a `SQLiteConversationStore` (a cheap handle; no I/O until used).

    sqlite3 is sync: the sync methods call the store directly, the async ones run the same calls in a
    worker thread (as langgraph's SqliteSaver pairs with its async twin), so nothing is written twice.
    """

    def __init__(self, store: SQLiteConversationStore, session_id: str, user_id: str) -> None:
        if not session_id or not user_id:
            raise ValueError("session_id and user_id are required")
        self.store = store
        self.session_id = session_id
        self.user_id = user_id

    # sync: native
    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        return self.store._all(self.session_id, self.user_id)

    def add_messages(self, messages: Sequence[BaseMessage], *, model: str | None = None) -> None:
        self.store._append(self.session_id, self.user_id, messages, model)

    def clear(self) -> None:
        self.store._delete(self.session_id, self.user_id)

    def truncate(self, from_message_id: str) -> int:
        return self.store._truncate(self.session_id, self.user_id, from_message_id)

    def get_window(
        self, max_messages: int | None = None, *, max_tokens: int | None = None
    ) -> list[BaseMessage]:
        window = self.store._window(self.session_id, self.user_id, max_messages)
        return window if max_tokens is None else trim_to_tokens(window, max_tokens)

    # async: the same calls in a worker thread
    async def aget_messages(self) -> list[BaseMessage]:
        return await asyncio.to_thread(self.store._all, self.session_id, self.user_id)

    async def aadd_messages(self, messages: Sequence[BaseMessage], *, model: str | None = None) -> None:
        await asyncio.to_thread(self.store._append, self.session_id, self.user_id, messages, model)

    async def aclear(self) -> None:
        await asyncio.to_thread(self.store._delete, self.session_id, self.user_id)

    async def atruncate(self, from_message_id: str) -> int:
        return await asyncio.to_thread(self.store._truncate, self.session_id, self.user_id, from_message_id)

    async def aget_window(
        self, max_messages: int | None = None, *, max_tokens: int | None = None
    ) -> list[BaseMessage]:
        window = await asyncio.to_thread(self.store._window, self.session_id, self.user_id, max_messages)
        return window if max_tokens is None else trim_to_tokens(window, max_tokens)

    async def aget_page(self, before: int | None = None, limit: int = 50) -> Page:
        return await asyncio.to_thread(self.store._page, self.session_id, self.user_id, before, limit)


def _delete_in(conn: sqlite3.Connection, user_id: str, session_id: str) -> None:
    conn.execute("DELETE FROM messages WHERE user_id = ? AND session_id = ?", (user_id, session_id))
    conn.execute("DELETE FROM sessions WHERE user_id = ? AND session_id = ?", (user_id, session_id))


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    """The column names of `table` (empty: no such table)."""
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


def _migrate_v1(conn: sqlite3.Connection) -> None:
    """Schema 1 (conversations keyed by session id alone) -> 2 (keyed by owner and id), in the caller's
    transaction: the old tables are renamed, the new ones created and filled, the old ones dropped.
    Each message takes its conversation's owner; a message without a conversation (none are written:
    the header and its messages are one transaction) could not be read before and is not copied."""
    conn.execute("DROP INDEX IF EXISTS sessions_by_user")
    conn.execute("ALTER TABLE sessions RENAME TO sessions_v1")
    conn.execute("ALTER TABLE messages RENAME TO messages_v1")
    for stmt in _SCHEMA.split(";"):
        if stmt.strip():
            conn.execute(stmt)
    conn.execute(
        f"INSERT INTO sessions ({_SESSION_COLUMNS}) SELECT {_SESSION_COLUMNS} FROM sessions_v1"  # noqa: S608 - constant columns
    )
    old = ", ".join(f"m.{c.strip()}" for c in _MSG_COLUMNS.split(",")[1:])
    conn.execute(
        f"INSERT INTO messages ({_MSG_COLUMNS}) SELECT s.user_id, {old} "  # noqa: S608 - constant columns
        "FROM messages_v1 m JOIN sessions_v1 s ON s.session_id = m.session_id"
    )
    conn.execute("DROP TABLE messages_v1")
    conn.execute("DROP TABLE sessions_v1")


def _derived_title(role: str, content: str) -> str | None:
    """The title the first message gave the conversation: an edit of that message re-derives it
    (`atruncate` from the first message clears a title nobody chose)."""
    return derive_title([HumanMessage(content)]) if role == "human" else None


def _conversation(row: tuple[Any, ...]) -> Conversation:
    sid, uid, title, created, updated, count, last_model = row
    return Conversation(
        session_id=sid,
        user_id=uid,
        title=title or DEFAULT_TITLE,
        created_at=_dt(created),
        updated_at=_dt(updated),
        message_count=count,
        last_model=last_model,
    )


@contextmanager
def _mapped() -> Iterator[None]:
    """SQLite failures that mean "cannot store right now" (locked too long, disk full, I/O error)."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise MemoryUnavailable(f"SQLite: {exc}") from exc
