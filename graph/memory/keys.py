"""API keys per user, kept beside the conversations: SQLite in the embedded default, Firestore in the cluster.

A key is `hck_<id>_<secret>`: `id` (12 hex characters) is public and names the key in listings, logs
and `keys revoke`; `secret` is 32 random bytes from `secrets` (256 bits). Only the SHA-256 of the
whole key is stored, never the key: it is shown once, when created. A plain hash is enough (no
bcrypt/scrypt): those slow down guessing a low-entropy password, and a 256-bit random secret cannot be
guessed. Checking a key reads its record by `id` (one row or document, whatever the number of keys)
and compares the hashes with `hmac.compare_digest` (constant time).

Revoking keeps the record (with `revoked_at`): a revoked key never works again and stays listed, so
an operator can see what was revoked and when. Nothing is cached: a key revoked from the CLI (another
process) is refused by the very next request.

Written beside the conversation stores, not inside them: this module reuses a store's public
settings (SQLite `path` and `busy_timeout_s`; Firestore `async_client`, `collection`, `timeout`) and
keeps its own table (`api_keys` in the same SQLite file) or collection (`<collection>_api_keys`).
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from graph.memory.contract import ConversationStore, MemoryUnavailable
from graph.validation import InvalidInput, check_id

if TYPE_CHECKING:
    from graph.memory.firestore import FirestoreConversationStore
    from graph.memory.sqlite import SQLiteConversationStore

PREFIX = "hck_"
KEY_RE = re.compile(r"^hck_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
MAX_NAME = 100


def looks_like_key(token: str) -> bool:
    """Whether a bearer token claims to be one of our keys (then it must be valid: no fallback)."""
    return token.startswith(PREFIX)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """A key's record, as listed: never the key itself."""

    id: str
    user_id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def prefix(self) -> str:
        """What identifies the key to a person (the start of the key they were shown)."""
        return f"{PREFIX}{self.id}_"

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class NewKey:
    """A key just created: `key` is shown once and stored nowhere."""

    record: ApiKey
    key: str


class KeyStore(abc.ABC):
    """Create, list, revoke and check API keys. Every method is async; errors of the backing store are
    `MemoryUnavailable`, as for conversations."""

    async def acreate(self, user_id: str, name: str = "") -> NewKey:
        user_id = check_id(str(user_id), "user id")
        name = " ".join(str(name).split())
        if len(name) > MAX_NAME:
            raise InvalidInput(f"a key's name is at most {MAX_NAME} characters")
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        key = f"{PREFIX}{key_id}_{secret}"
        record = ApiKey(key_id, user_id, name, datetime.now(UTC))
        await self._put(record, digest(key))
        return NewKey(record, key)

    async def acheck(self, key: str) -> ApiKey | None:
        """The active key's record, or None when the key is malformed, unknown, wrong or revoked."""
        match = KEY_RE.match(key)
        if match is None:
            return None
        found = await self._get(match.group(1))
        if found is None:
            return None
        record, stored = found
        if not hmac.compare_digest(stored, digest(key)) or not record.active:
            return None
        return record

    @abc.abstractmethod
    async def alist(self, user_id: str) -> list[ApiKey]:
        """The user's keys, revoked ones included, oldest first."""

    @abc.abstractmethod
    async def arevoke(self, key_id: str) -> ApiKey | None:
        """Revoke the key `key_id` (idempotent); its record, or None when there is no such key."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    @abc.abstractmethod
    async def _put(self, record: ApiKey, key_hash: str) -> None: ...

    @abc.abstractmethod
    async def _get(self, key_id: str) -> tuple[ApiKey, str] | None: ...


def _key_id(key_id: str) -> str:
    """`abc123...`, `hck_abc123...` or `hck_abc123..._` all name the key `abc123...`."""
    key_id = key_id.strip()
    key_id = key_id[len(PREFIX) :] if key_id.startswith(PREFIX) else key_id
    return key_id.split("_", 1)[0]


# --- SQLite ---------------------------------------------------------------------------------
_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id     TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    name       TEXT NOT NULL,
    key_hash   TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE INDEX IF NOT EXISTS api_keys_by_user ON api_keys (user_id, created_at);
"""


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


class SQLiteKeyStore(KeyStore):
    """Keys in a table of the conversations' SQLite file. One connection, used under a lock from worker
    threads (`asyncio.to_thread`): key operations are rare and each is one short statement."""

    def __init__(self, store: SQLiteConversationStore) -> None:
        self.path = store.path
        self.busy_timeout_s = store.busy_timeout_s
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                if self._conn is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    conn = sqlite3.connect(
                        self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
                    )
                    conn.executescript(_SCHEMA)
                    self._conn = conn
                return self._conn.execute(sql, args).fetchall()
            except (sqlite3.OperationalError, OSError) as exc:
                raise MemoryUnavailable(f"API keys: {exc}") from exc

    @staticmethod
    def _record(row: tuple[Any, ...]) -> ApiKey:
        return ApiKey(row[0], row[1], row[2], _ts(row[3]) or datetime.now(UTC), _ts(row[4]))

    async def _put(self, record: ApiKey, key_hash: str) -> None:
        await asyncio.to_thread(
            self._run,
            "INSERT INTO api_keys (key_id, user_id, name, key_hash, created_at) VALUES (?, ?, ?, ?, ?)",
            (record.id, record.user_id, record.name, key_hash, record.created_at.timestamp()),
        )

    async def _get(self, key_id: str) -> tuple[ApiKey, str] | None:
        rows = await asyncio.to_thread(
            self._run,
            "SELECT key_id, user_id, name, created_at, revoked_at, key_hash FROM api_keys WHERE key_id = ?",
            (key_id,),
        )
        return (self._record(rows[0]), rows[0][5]) if rows else None

    async def alist(self, user_id: str) -> list[ApiKey]:
        rows = await asyncio.to_thread(
            self._run,
            "SELECT key_id, user_id, name, created_at, revoked_at FROM api_keys WHERE user_id = ? "
            "ORDER BY created_at, key_id",
            (user_id,),
        )
        return [self._record(r) for r in rows]

    async def arevoke(self, key_id: str) -> ApiKey | None:
        key_id = _key_id(key_id)
        now = datetime.now(UTC).timestamp()
        await asyncio.to_thread(
            self._run,
            "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
            (now, key_id),
        )
        found = await self._get(key_id)
        return found[0] if found else None

    async def aclose(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


# --- Firestore ------------------------------------------------------------------------------
class FirestoreKeyStore(KeyStore):
    """Keys in the collection `<collection>_api_keys` of the conversations' database, one document per
    key (document id = key id), through the store's AsyncClient of the running loop."""

    def __init__(self, store: FirestoreConversationStore) -> None:
        self.store = store
        self.collection = f"{store.collection}_api_keys"
        self.timeout = store.timeout

    def _doc(self, key_id: str) -> Any:
        return self.store.async_client.collection(self.collection).document(key_id)

    async def _call(self, coro: Any) -> Any:
        from google.api_core import exceptions

        try:
            return await asyncio.wait_for(coro, timeout=self.timeout)
        except (TimeoutError, exceptions.GoogleAPIError) as exc:
            raise MemoryUnavailable(f"API keys: {type(exc).__name__}") from exc

    @staticmethod
    def _record(key_id: str, data: dict[str, Any]) -> ApiKey:
        return ApiKey(
            key_id, data["user_id"], data.get("name", ""), data["created_at"], data.get("revoked_at")
        )

    async def _put(self, record: ApiKey, key_hash: str) -> None:
        data = {
            "user_id": record.user_id,
            "name": record.name,
            "key_hash": key_hash,
            "created_at": record.created_at,
            "revoked_at": None,
        }
        await self._call(self._doc(record.id).create(data))  # create: never overwrites another key

    async def _get(self, key_id: str) -> tuple[ApiKey, str] | None:
        snap = await self._call(self._doc(key_id).get())
        if not snap.exists:
            return None
        data = snap.to_dict() or {}
        return self._record(key_id, data), str(data.get("key_hash", ""))

    async def alist(self, user_id: str) -> list[ApiKey]:
        from google.cloud.firestore_v1.base_query import FieldFilter

        query = self.store.async_client.collection(self.collection).where(
            filter=FieldFilter("user_id", "==", user_id)
        )

        async def fetch() -> list[Any]:
            return [snap async for snap in query.stream()]

        snaps = await self._call(fetch())
        keys = [self._record(s.id, s.to_dict() or {}) for s in snaps]
        return sorted(keys, key=lambda k: (k.created_at, k.id))  # sorted here: no composite index needed

    async def arevoke(self, key_id: str) -> ApiKey | None:
        key_id = _key_id(key_id)
        if not re.fullmatch(r"[0-9a-f]{12}", key_id):
            return None
        found = await self._get(key_id)
        if found is None:
            return None
        if found[0].active:
            await self._call(self._doc(key_id).update({"revoked_at": datetime.now(UTC)}))
            found = await self._get(key_id)
        return found[0] if found else None


def key_store(store: ConversationStore) -> KeyStore:
    """The key store kept beside `store` (the one `make_store(settings)` gave)."""
    from graph.memory.sqlite import SQLiteConversationStore

    if isinstance(store, SQLiteConversationStore):
        return SQLiteKeyStore(store)
    from graph.memory.firestore import FirestoreConversationStore

    if isinstance(store, FirestoreConversationStore):
        return FirestoreKeyStore(store)
    raise TypeError(f"no API key store for {type(store).__name__}")
