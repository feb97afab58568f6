"""Chat memory in Cloud Firestore, written directly on `google-cloud-firestore`'s AsyncClient.

Why not the released `langchain-google-firestore` (0.5.0, the latest): every release pins
`langchain-core<1` (installing it downgrades the whole LangChain 1.x stack to 0.3), and its
`FirestoreChatMessageHistory` keeps a whole session in ONE document (`{"messages": [json, ...]}`): the
1 MiB document limit caps a conversation, every message rewrites the whole array, two writers overwrite
each other (no transaction), it reads the document in `__init__` (network at construction) and it has no
async API. `FirestoreChatMessageHistory` below is a drop-in for it (same constructor, same sync methods,
messages read back as written) and reads, then migrates, what the package wrote
(`graph.memory.firestore_legacy`).

Layout (database `chat-app-db`, collection `chat_sessions` by default)::

    chat_sessions/{doc}                    session_id, user_id, title, created_at, updated_at,
                                           last_model, message_count, next_seq, expire_at (TTL on),
                                           messages_expire_min (TTL on), schema
    chat_sessions/{doc}/messages/{key}     message_id (the key), seq, role, content, created_at,
                                           backend, route_reason, latency_ms, ttft_ms, model,
                                           input_tokens, output_tokens, message (JSON), expire_at

`{doc}` is `document_id(session_id, user_id)`: `<hash of the owner>:<session_id>` for a user's
conversation, so ids are scoped to their owner: two users may each use the same client-chosen id (two
documents), nobody can claim an id before its owner uses it, and another user's id is not there to
find ("not yours" is "not found": the same reads, in the same time). An unowned session (`user_id`
None, the package's drop-in use) keeps the package's layout, `{doc}` = `session_id`, without the
`session_id` field. Conversations that users created before ids were scoped also live at
`{doc}` = `session_id` (with their `user_id`): when a user's document is missing, the store reads the
one at the bare id and uses it if it is theirs (or unowned, see Owners), so they keep working where they
are; a new conversation is created at the scoped id. That fallback costs one more read (one round
trip) on opening a conversation that is new or of the old layout, never on one at its scoped id.

No document grows with the conversation. The key is the message id (hashed when it is not a valid
document id; a fresh key for a message without an id), which makes saves idempotent.

- One implementation, async. The sync methods (`messages`, `add_messages`, `clear`, ...) run it through
  `graph.bridge.run_sync`. An AsyncClient belongs to the event loop it was first used on, so the store
  keeps one per loop (the app's loop, the bridge's loop, a test's `asyncio.run`).
- Appends are one transaction: read the session document and the would-be message documents, check the
  owner, skip ids already stored, assign `seq = next_seq...`, `create` the message documents, update the
  header. Firestore serializes transactions touching the same session document, so concurrent writers
  (two tabs, two pods) never lose or overwrite a message and each batch (a turn) stays contiguous.
  Within one loop, writers of the same conversation also queue on a lock first: the emulator resolves
  read-lock deadlocks between transactions only after seconds, and a lock costs nothing.
- The prompt window is `order_by(seq desc).limit(N)`: documents read = window size (+1 header),
  whatever the conversation's length. The UI pages with `seq < before`.
- Truncate (regenerate, edit) and delete remove messages in batched transactions; delete first flags
  the header so no append lands meanwhile.
- TTL (`ttl_days` > 0): `expire_at = last update + N days` on the header and on each message document
  (a Firestore TTL policy must be set on both collection groups; deleting a parent does not delete its
  subcollection). Message documents get their `expire_at` when written, so an active conversation would
  see its oldest messages expire first: when the oldest message's `expire_at` is less than half a TTL
  away (tracked as `messages_expire_min` on the header), an append pushes every message's `expire_at`
  to the header's. Cost: one pass over the conversation per half TTL of activity.
- Owners. A session document without `user_id` is unowned: written by the package, or by a history
  built without `user_id` (the drop-in use). A history without `user_id` opens unowned sessions only
  (`AccessDenied` for an owned one). A history with a `user_id` whose scoped document does not exist
  opens an unowned session of that id only if `legacy_owner` allows it (session ids may be guessable):
  None (default) nobody (`AccessDenied`, the data stays untouched); `"<user id>"` that user (the old
  app had a single user); `"*"` anyone, and the first to write or rename claims it (in place, at the
  bare id). Unowned sessions are not listed (there is no user to list them for). Only the package's
  drop-in (or an operator) writes unowned sessions, never a user of the app.
- Errors: gRPC/network failures (unavailable, deadline, retry exhausted, auth transport) become
  `MemoryUnavailable`. Every operation is bounded by `timeout` seconds, also when the server hangs.
  A timed-out append may or may not have committed; retrying it with the same messages is safe when
  they have ids.
- Nothing touches the network at construction: clients are created on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.api_core import retry as retries
from google.auth import exceptions as auth_exc
from google.cloud import firestore
from google.cloud.firestore_v1.async_transaction import async_transactional
from langchain_core.messages import BaseMessage, HumanMessage
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

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
    AccessDenied,
    ChatHistory,
    Conversation,
    ConversationList,
    ConversationNotFound,
    ConversationStore,
    MemoryError_,
    MemoryUnavailable,
    Page,
    StoreStats,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
SCHEMA = 2
MESSAGES = "messages"
DESC = firestore.Query.DESCENDING
LEGACY_ANYONE = "*"
_MAX_TX_WRITES = 500  # Firestore's limit of writes in one transaction or batch


_SIMPLE_KEY = re.compile(r"^[A-Za-z0-9_.:\-~+=@]{1,400}$")


def _doc_id(key: str) -> str:
    """A valid, stable document id for a message key (hashed when the key has `/`, is too long, ...).
    Changing this rule would orphan stored keys: retries and truncates look documents up by it."""
    simple = (
        bool(_SIMPLE_KEY.match(key))
        and key not in (".", "..")
        and not (key.startswith("__") and key.endswith("__"))
    )
    return key if simple else "h-" + hashlib.sha256(key.encode()).hexdigest()[:40]


def document_id(session_id: str, user_id: str | None) -> str:
    """The document of `user_id`'s conversation `session_id`: `<sha256(user_id)[:32]>:<session_id>`, or
    `session_id` itself for an unowned session (the package's layout). The owner is hashed because a
    user id may hold any character (`/` is not allowed in a document id); the session id stays readable
    for whoever browses the collection. Changing this rule would orphan every stored conversation."""
    if user_id is None:
        return session_id
    return f"{hashlib.sha256(user_id.encode('utf-8')).hexdigest()[:32]}:{session_id}"


class _Elsewhere(Exception):
    """Inside an append: the user's conversation is the old-layout document `ref`, not the scoped one."""

    def __init__(self, ref: Any) -> None:
        self.ref = ref


def _is_contention(exc: BaseException) -> bool:
    """Transaction lost to a concurrent writer (retry it), as opposed to a real failure."""
    if isinstance(exc, gexc.Aborted | gexc.AlreadyExists):
        return True
    return isinstance(exc, ValueError) and isinstance(exc.__cause__, gexc.Aborted)


def _translate(exc: BaseException) -> BaseException:
    """Library/network exceptions -> the contract's exceptions (others pass through unchanged)."""
    if isinstance(exc, MemoryError_):
        return exc
    if _is_contention(exc):
        return MemoryUnavailable(f"Firestore: too much contention on this conversation ({exc})")
    if isinstance(exc, gexc.InvalidArgument):
        return ValueError(f"Firestore rejected the write (a message over ~1 MiB?): {exc.message}")
    if isinstance(exc, gexc.NotFound):
        return ConversationNotFound(str(exc.message))
    if isinstance(exc, gexc.GoogleAPICallError | gexc.RetryError | auth_exc.GoogleAuthError):
        return MemoryUnavailable(f"Firestore unavailable: {type(exc).__name__}: {exc}")
    if isinstance(exc, TimeoutError | ConnectionError):
        return MemoryUnavailable(f"Firestore unavailable: {exc!r}")
    return exc


@dataclass
class _Header:
    """What a read needs from a session document: ownership and, for legacy documents, the messages."""

    exists: bool
    data: dict[str, Any] = field(default_factory=dict)
    legacy: list[BaseMessage] | None = None
    create_time: datetime | None = None
    update_time: datetime | None = None
    ref: Any = None  # the document (when it does not exist: where the conversation would be created)


@dataclass
class _Plan:
    """The writes of one append transaction, computed from what it read (pure)."""

    header: dict[str, Any] | None = None  # full document to `set` (creation, legacy migration)
    update: dict[str, Any] | None = None  # fields to `update`
    creates: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    refresh_expiry: bool = False
    ref: Any = None  # the session document written


class FirestoreConversationStore(ConversationStore):
    """Conversations in Firestore. Holds the (lazily created, per event loop) clients; hands out histories.

    `client`, a sync `firestore.Client` as `langchain-google-firestore` takes it, is used only as the
    template (project, database, credentials, options) of the AsyncClients this store creates.
    """

    def __init__(
        self,
        *,
        project: str | None = None,
        database: str = "(default)",
        collection: str = "chat_sessions",
        client: firestore.Client | None = None,
        ttl_days: int = 0,
        legacy_owner: str | None = None,
        timeout: float = 10.0,
        delete_batch_size: int = 500,
        max_attempts: int = 8,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if not 1 <= delete_batch_size <= _MAX_TX_WRITES:
            raise ValueError(f"delete_batch_size must be within 1..{_MAX_TX_WRITES}")
        self.project = project if client is None else client.project
        # A Client has no public accessor for its database; `_database` is set in its constructor.
        self.database = database if client is None else client._database
        self.collection = collection
        self.ttl_days = ttl_days
        self.legacy_owner = legacy_owner
        self.timeout = timeout
        self.delete_batch_size = delete_batch_size
        self.max_attempts = max_attempts
        self.clock = clock or utcnow
        self.stats = StoreStats()
        self._template = client
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, firestore.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        self._clients_lock = threading.Lock()
        self._alocks: weakref.WeakValueDictionary[tuple[int, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    # --- clients (lazy: construction never touches the network) -------------------------------
    @property
    def async_client(self) -> firestore.AsyncClient:
        """The AsyncClient of the running event loop: a grpc.aio channel belongs to the loop that
        created it, so a store used from several loops (the app's, the bridge's) keeps one per loop."""
        loop = asyncio.get_running_loop()
        with self._clients_lock:
            client = self._clients.get(loop)
            if client is None:
                for old in [lp for lp in self._clients if lp.is_closed()]:
                    del self._clients[old]  # its channel died with its loop
                client = firestore.AsyncClient(**self._client_kwargs())
                self._clients[loop] = client
            return client

    def _client_kwargs(self) -> dict[str, Any]:
        t = self._template
        if t is None:
            return {"project": self.project, "database": self.database}
        # Copy the sync client's settings (private attributes: it has no public accessors for them).
        return {
            "project": t.project,
            "database": t._database,
            "credentials": t._credentials,
            "client_info": t._client_info,
            "client_options": t._client_options,
        }

    def history(self, session_id: str, user_id: str | None) -> FirestoreChatMessageHistory:
        return FirestoreChatMessageHistory(session_id, user_id=user_id, store=self)

    # --- policies ------------------------------------------------------------------------------
    def _rpc(self) -> dict[str, Any]:
        """Per-call retry/timeout: transient errors retried briefly, bounded by `timeout`."""
        retry = retries.AsyncRetry(
            predicate=retries.if_transient_error,
            initial=0.1,
            maximum=1.0,
            multiplier=2.0,
            timeout=self.timeout,
        )
        return {"retry": retry, "timeout": self.timeout}

    def _lock(self, path: str) -> asyncio.Lock:
        key = (id(asyncio.get_running_loop()), path)
        lock = self._alocks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._alocks[key] = lock
        return lock

    def _expire(self, now: datetime) -> datetime | None:
        return now + timedelta(days=self.ttl_days) if self.ttl_days > 0 else None

    async def _bounded(self, coro: Awaitable[T], what: str, limit_s: float | None = None) -> T:
        """Run `coro`, give up after `timeout` (the call is cancelled), map errors to the contract's."""
        timeout = limit_s or self.timeout
        task = asyncio.ensure_future(coro)
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not done:
            task.cancel()
            task.add_done_callback(_consume)
            raise MemoryUnavailable(f"Firestore did not answer within {timeout:g} s ({what})")
        try:
            return task.result()
        except Exception as exc:
            mapped = _translate(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    async def _transaction(self, path: str, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run `fn(tx)` in a transaction, queued behind this loop's other writers of the session document
        `path`, retried (with jitter) when it loses to a concurrent writer."""
        run = async_transactional(fn)
        async with self._lock(path):
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.max_attempts),
                wait=wait_random_exponential(multiplier=0.05, max=2.0),
                retry=retry_if_exception(_is_contention),
                reraise=True,
            ):
                with attempt:
                    return await run(self.async_client.transaction(max_attempts=1))
        raise AssertionError("unreachable: AsyncRetrying returns or raises")  # pragma: no cover

    def _count(self, what: str) -> None:
        self.stats.extra[what] = self.stats.extra.get(what, 0) + 1

    # --- documents -> records ------------------------------------------------------------------
    def _header(self, snap: Any, user_id: str | None, ref: Any = None) -> _Header:
        """Ownership check of a session document (snapshot, maybe missing); parses a legacy array."""
        ref = ref if ref is not None else getattr(snap, "reference", None)
        if snap is None or not snap.exists:
            return _Header(exists=False, ref=ref)
        data = snap.to_dict() or {}
        owner = data.get("user_id")
        if owner is None:
            if user_id is not None and self.legacy_owner not in (LEGACY_ANYONE, user_id):
                raise AccessDenied("conversation without an owner (see legacy_owner)")
        elif owner != user_id:
            raise AccessDenied("conversation belongs to another user")
        if data.get("deleting"):
            return _Header(exists=False, ref=ref)
        legacy = None
        if isinstance(data.get("messages"), list):
            from graph.memory.firestore_legacy import legacy_messages

            legacy = legacy_messages(data)
        return _Header(True, data, legacy, snap.create_time, snap.update_time, ref)

    def _conversation(self, session_id: str, user_id: str | None, head: _Header) -> Conversation:
        d = head.data
        now = self.clock()
        created, updated = head.create_time or now, head.update_time or now
        if head.legacy is not None:
            from graph.memory.firestore_legacy import legacy_conversation

            return legacy_conversation(session_id, user_id or "", d, head.legacy, created, updated)
        return Conversation(
            session_id=session_id,
            user_id=d.get("user_id") or user_id or "",
            title=d.get("title") or DEFAULT_TITLE,
            created_at=d.get("created_at") or created,
            updated_at=d.get("updated_at") or updated,
            message_count=int(d.get("message_count", 0)),
            last_model=d.get("last_model"),
        )

    def _to_message(self, data: dict[str, Any]) -> BaseMessage:
        self.stats.docs_read += 1
        return deserialize_message(data["message"], data.get("content") or "")

    def _sess(self, session_id: str, user_id: str | None) -> Any:
        """The scoped document of `user_id`'s conversation (`document_id`)."""
        return self.async_client.collection(self.collection).document(document_id(session_id, user_id))

    async def _locate(self, session_id: str, user_id: str | None) -> tuple[Any, Any]:
        """(document, snapshot) of `user_id`'s conversation: the scoped document if it exists, else the
        old-layout document at the bare id if it may be theirs (`_theirs`), else the scoped one (missing).
        Another user's conversation and no conversation cost the same two reads."""
        ref = self._sess(session_id, user_id)
        snap = await ref.get(**self._rpc())
        self.stats.docs_read += 1
        if snap.exists or user_id is None:
            return ref, snap
        bare = self._sess(session_id, None)
        old = await bare.get(**self._rpc())
        self.stats.docs_read += 1
        return (bare, old) if _theirs(old, user_id) else (ref, snap)

    async def _aheader(self, session_id: str, user_id: str | None) -> _Header:
        ref, snap = await self._locate(session_id, user_id)
        return self._header(snap, user_id, ref)

    async def _read(
        self, session_id: str, user_id: str | None, query: Callable[[Any], Any]
    ) -> tuple[_Header, list[dict[str, Any]]]:
        """The header and the messages `query(document)` selects, in one round trip for a conversation at
        its scoped document (both read at once); a second query for an old-layout one."""
        guess = self._sess(session_id, user_id)
        head, docs = await asyncio.gather(self._aheader(session_id, user_id), self._query(query(guess)))
        if head.exists and head.legacy is None and head.ref.path != guess.path:
            docs = await self._query(query(head.ref))
        return head, docs

    async def _query(self, query: Any) -> list[dict[str, Any]]:
        return [s.to_dict() async for s in query.stream(**self._rpc())]

    # --- append --------------------------------------------------------------------------------
    def _plan(
        self,
        head: _Header,
        stored: dict[str, tuple[str, str]],
        msgs: list[BaseMessage],
        user_id: str | None,
        model: str | None,
        session_id: str | None = None,
    ) -> _Plan:
        """`session_id`: set on a document created at a scoped id (not on the bare-id layouts)."""
        now = self.clock()
        expire = self._expire(now)
        plan = _Plan(ref=head.ref)
        legacy = head.legacy or []
        for m in legacy:
            stored.setdefault(str(m.id), (m.type, message_text(m)))
        new = plan_keys(msgs, stored)
        if not new and not legacy:
            return plan
        data = head.data if head.exists else {}
        seq = int(data.get("next_seq", 0)) if not legacy else 0
        for key, m in [*((str(m.id), m) for m in legacy), *new]:
            doc = {
                "message_id": key,
                "seq": seq,
                "role": m.type,
                "content": message_text(m),
                "created_at": now,
            }
            doc.update(message_fields(m))
            doc["message"] = serialize_message(m)
            if expire is not None:
                doc["expire_at"] = expire
            plan.creates.append((_doc_id(key), doc))
            seq += 1
        written = [m for _, m in new]
        fields: dict[str, Any] = {
            "updated_at": now,
            "next_seq": seq,
            "message_count": int(data.get("message_count", 0)) + len(new) + len(legacy),
            "title": data.get("title") or derive_title([*legacy, *written]) or "",
        }
        if model is not None:
            fields["last_model"] = model
        if head.exists and data.get("user_id") is None and user_id is not None:
            fields["user_id"] = user_id  # an allowed writer claims an unowned conversation
        floor = data.get("messages_expire_min")
        if expire is not None:
            fields["expire_at"] = expire
            if not head.exists or legacy:
                fields["messages_expire_min"] = expire  # every message is written with `expire`
            elif floor is None or floor < now + timedelta(days=self.ttl_days / 2):
                plan.refresh_expiry = True  # TTL newly enabled, or the oldest messages expire soon
        elif floor is not None or "expire_at" in data:
            fields["expire_at"] = firestore.DELETE_FIELD  # TTL turned off: nothing may expire
            plan.refresh_expiry = True
        if head.exists and not legacy:
            plan.update = fields
        else:
            plan.header = {
                "user_id": user_id,
                "created_at": data.get("created_at") or head.create_time or now,
                "last_model": data.get("last_model"),
                "schema": SCHEMA,
                **({"session_id": session_id} if session_id is not None else {}),
                **fields,
            }
        return plan

    async def _append(
        self, session_id: str, user_id: str | None, msgs: list[BaseMessage], model: str | None
    ) -> _Plan:
        """One transaction on the scoped document, which also reads the bare-id one when the scoped one
        does not exist (the user may have an old-layout conversation there); if they do, a second
        transaction appends to that one."""
        scoped = self._sess(session_id, user_id)
        bare = self._sess(session_id, None) if user_id is not None else None
        try:
            return await self._append_at(scoped, bare, session_id, user_id, msgs, model)
        except _Elsewhere as moved:
            return await self._append_at(moved.ref, None, session_id, user_id, msgs, model, old=True)

    async def _append_at(
        self,
        sess: Any,
        bare: Any,
        session_id: str,
        user_id: str | None,
        msgs: list[BaseMessage],
        model: str | None,
        *,
        old: bool = False,
    ) -> _Plan:
        """Append to the session document `sess` (`bare`: the old-layout document to check first when
        `sess` does not exist; `old`: `sess` is that document, which must still exist)."""
        refs = [sess] + [sess.collection(MESSAGES).document(_doc_id(i)) for i in stored_ids(msgs)]

        async def run(tx: Any) -> _Plan:
            # Not `tx.get_all`: in google-cloud-firestore 2.34 it awaits an async generator (TypeError).
            gen = self.async_client.get_all(refs, transaction=tx, **self._rpc())
            snaps = {s.reference.path: s async for s in gen}
            s0 = snaps.get(sess.path)
            if bare is not None and not (s0 is not None and s0.exists):
                # A new conversation, or one of the old layout: read the bare id only then (one more
                # round trip on a conversation's first append, none on the next ones).
                if _theirs(await bare.get(transaction=tx, **self._rpc()), user_id):
                    raise _Elsewhere(bare)
            head = self._header(s0, user_id, sess)
            if not head.exists and ((s0 is not None and s0.exists) or old):
                raise ConversationNotFound(f"conversation {session_id!r} is being deleted")
            stored = _stored(s for s in snaps.values() if s.exists and s.reference.path != sess.path)
            scoped = user_id is not None and not old
            plan = self._plan(head, stored, msgs, user_id, model, session_id if scoped else None)
            if plan.header is not None:
                tx.set(sess, plan.header)  # replaces the document: drops a legacy `messages` array
            elif plan.update is not None:
                tx.update(sess, plan.update)
            for doc_id, doc in plan.creates:
                tx.create(sess.collection(MESSAGES).document(doc_id), doc)
            return plan

        return await self._transaction(sess.path, run)

    async def _refresh_expiry(self, sess: Any) -> None:
        """Set every message's `expire_at` to the header's (see the module docstring), page by page."""
        target = self._expire(self.clock())
        last: int | None = None
        while True:
            q = sess.collection(MESSAGES).order_by("seq").select(["seq", "expire_at"])
            if last is not None:
                q = q.start_after({"seq": last})
            snaps = [s async for s in q.limit(self.delete_batch_size).stream(**self._rpc())]
            if not snaps:
                break
            batch = self.async_client.batch()
            for ref, update in _expiry_updates(snaps, target):
                batch.update(ref, update)
            if len(batch):
                await batch.commit(**self._rpc())
            last = snaps[-1].get("seq")
        with contextlib.suppress(gexc.NotFound):  # deleted meanwhile
            await sess.update({"messages_expire_min": target or firestore.DELETE_FIELD}, **self._rpc())

    async def _add(
        self, session_id: str, user_id: str | None, messages: Sequence[BaseMessage], model: str | None
    ) -> None:
        msgs = [normalize_message(m) for m in messages]
        try:
            plan = await self._append(session_id, user_id, msgs, model)
        finally:
            for original, m in zip(messages, msgs, strict=True):
                if m is not original:
                    original.id = m.id  # a collision got a fresh id: a retry must reuse it
        if plan.refresh_expiry:
            try:
                await self._refresh_expiry(plan.ref)
            except Exception:  # the turn is saved; the next append retries the refresh
                log.warning("expire_at refresh of %s failed", session_id, exc_info=True)

    # --- reads ---------------------------------------------------------------------------------
    async def _window(
        self, session_id: str, user_id: str | None, max_messages: int | None
    ) -> list[BaseMessage]:
        if max_messages is not None and max_messages <= 0:
            await self._aheader(session_id, user_id)  # still refuses an unowned conversation
            return []

        def newest(sess: Any) -> Any:
            q = sess.collection(MESSAGES).order_by("seq", direction=DESC)
            return q.limit(max_messages) if max_messages is not None else q

        # Header and newest messages in parallel: one round trip; the messages are dropped if denied.
        head, docs = await self._read(session_id, user_id, newest)
        if not head.exists:
            return []
        if head.legacy is not None:
            return head.legacy[-max_messages:] if max_messages is not None else head.legacy
        return [self._to_message(d) for d in reversed(docs)]

    async def _page(self, session_id: str, user_id: str | None, before: int | None, limit: int) -> Page:
        if limit <= 0:
            raise ValueError("limit must be positive")

        def page(sess: Any) -> Any:
            q = sess.collection(MESSAGES).order_by("seq", direction=DESC)
            if before is not None:
                q = q.where(filter=firestore.FieldFilter("seq", "<", before))
            return q.limit(limit + 1)

        head, docs = await self._read(session_id, user_id, page)
        if not head.exists:
            return Page([], None)
        if head.legacy is not None:
            from graph.memory.firestore_legacy import legacy_page

            return legacy_page(head.legacy, before, limit)
        more = len(docs) > limit
        docs = docs[:limit]
        return Page([self._to_message(d) for d in reversed(docs)], docs[-1]["seq"] if more and docs else None)

    async def _all(self, session_id: str, user_id: str | None) -> list[BaseMessage]:
        head, docs = await self._read(
            session_id, user_id, lambda sess: sess.collection(MESSAGES).order_by("seq")
        )
        if not head.exists:
            return []
        if head.legacy is not None:
            return head.legacy
        return [self._to_message(d) for d in docs]

    # --- truncate, delete, rename ----------------------------------------------------------------
    async def _truncate(self, session_id: str, user_id: str | None, from_message_id: str) -> int:
        head = await self._aheader(session_id, user_id)
        if not head.exists:
            return 0
        if head.legacy is not None:
            await self._append(session_id, user_id, [], None)  # migrate first: one layout to cut
        sess = head.ref
        col = sess.collection(MESSAGES)
        target = await col.document(_doc_id(from_message_id)).get(**self._rpc())
        if not target.exists or target.get("message_id") != from_message_id:
            return 0
        start: int = target.get("seq")
        earlier = col.where(filter=firestore.FieldFilter("seq", "<", start)).select([]).limit(1)
        # Cut from the first message: a title it gave the conversation follows the edited message.
        auto_title = (
            derive_title([HumanMessage(str(target.get("content") or ""))])
            if target.get("role") == "human" and not [d async for d in earlier.stream(**self._rpc())]
            else None
        )
        end: int | None = None  # next_seq when the truncate started: later appends are kept
        size = min(self.delete_batch_size, _MAX_TX_WRITES - 1)  # one write is the header's

        async def run(tx: Any) -> int:
            nonlocal end
            head = self._header(await sess.get(transaction=tx, **self._rpc()), user_id)
            if not head.exists:
                return 0
            end = int(head.data.get("next_seq", 0)) if end is None else end
            q = (
                col.where(filter=firestore.FieldFilter("seq", ">=", start))
                .where(filter=firestore.FieldFilter("seq", "<", end))
                .order_by("seq")
                .select([])
                .limit(size)
            )
            snaps = [s async for s in q.stream(transaction=tx, **self._rpc())]
            for s in snaps:
                tx.delete(s.reference)
            if snaps:
                count = max(0, int(head.data.get("message_count", 0)) - len(snaps))
                update: dict[str, Any] = {"message_count": count, "updated_at": self.clock()}
                if auto_title is not None and head.data.get("title") == auto_title:
                    update["title"] = ""
                tx.update(sess, update)
            return len(snaps)

        total = 0
        while n := await self._transaction(sess.path, run):
            total += n
            self._count("truncate_batches")
        return total

    async def _delete(self, session_id: str, user_id: str | None) -> None:
        sess, _ = await self._locate(session_id, user_id)

        async def mark(tx: Any) -> bool:
            """Flag the header (owner checked) so no append lands during deletion."""
            snap = await sess.get(transaction=tx, **self._rpc())
            if not snap.exists:
                return False
            self._header(snap, user_id)
            tx.update(sess, {"deleting": True})
            return True

        if not await self._transaction(sess.path, mark):
            return
        col = sess.collection(MESSAGES)
        while True:
            snaps = [s async for s in col.select([]).limit(self.delete_batch_size).stream(**self._rpc())]
            if not snaps:
                break
            batch = self.async_client.batch()
            for s in snaps:
                batch.delete(s.reference)
            await batch.commit(**self._rpc())
            self._count("delete_batches")
        await sess.delete(**self._rpc())

    async def _rename(self, session_id: str, user_id: str | None, title: str) -> None:
        title = validate_title(title)
        sess, _ = await self._locate(session_id, user_id)

        async def run(tx: Any) -> None:
            head = self._header(await sess.get(transaction=tx, **self._rpc()), user_id)
            if not head.exists:
                raise ConversationNotFound(session_id)
            update: dict[str, Any] = {"title": title}
            if head.data.get("user_id") is None and user_id is not None:
                update["user_id"] = user_id  # renaming an unowned conversation claims it
            tx.update(sess, update)

        await self._transaction(sess.path, run)

    async def _get_conversation(self, session_id: str, user_id: str) -> Conversation:
        head = await self._aheader(session_id, user_id)
        if not head.exists:
            raise ConversationNotFound(session_id)
        return self._conversation(session_id, user_id, head)

    async def _list(self, user_id: str, limit: int, cursor: str | None) -> ConversationList:
        if limit <= 0:
            raise ValueError("limit must be positive")
        col = self.async_client.collection(self.collection)
        q = (
            col.where(filter=firestore.FieldFilter("user_id", "==", user_id))
            .order_by("updated_at", direction=DESC)
            .order_by("__name__", direction=DESC)
        )
        if cursor:
            ts, sid = decode_cursor(cursor)
            q = q.start_after({"updated_at": ts, "__name__": col.document(sid)})
        snaps = [s async for s in q.limit(limit + 1).stream(**self._rpc())]
        self.stats.docs_read += len(snaps)
        more = len(snaps) > limit
        snaps = snaps[:limit]
        convs = [
            self._conversation(d.get("session_id") or s.id, user_id, _Header(True, d))
            for s in snaps
            if not (d := s.to_dict() or {}).get("deleting")
        ]
        last = snaps[-1] if snaps else None
        nxt = encode_cursor(last.get("updated_at"), last.id) if more and last is not None else None
        return ConversationList(convs, nxt)

    # --- public API ----------------------------------------------------------------------------
    async def alist_conversations(
        self, user_id: str, limit: int = 20, cursor: str | None = None
    ) -> ConversationList:
        return await self._bounded(self._list(user_id, limit, cursor), "list conversations")

    async def aget_conversation(self, session_id: str, user_id: str) -> Conversation:
        return await self._bounded(self._get_conversation(session_id, user_id), "get conversation")

    async def arename(self, session_id: str, user_id: str, title: str) -> None:
        await self._bounded(self._rename(session_id, user_id, title), "rename")

    async def adelete(self, session_id: str, user_id: str | None) -> None:
        # Deleting a long conversation may take several batches: allow more than one timeout.
        await self._bounded(self._delete(session_id, user_id), "delete", self.timeout * 6)

    async def aping(self) -> None:
        async def ping() -> None:
            await self.async_client.collection(self.collection).document("-ping-").get(**self._rpc())

        await self._bounded(ping(), "ping")

    async def aclose(self) -> None:
        """Close the gRPC channels of this store's clients: this loop's now, other running loops'
        (the bridge's) scheduled on them; those of stopped loops are dropped."""
        with self._clients_lock:
            clients = list(self._clients.items())
            self._clients.clear()
        current = asyncio.get_running_loop()
        for loop, client in clients:
            if loop is current:
                await _close(client)
            elif loop.is_running() and not loop.is_closed():
                asyncio.run_coroutine_threadsafe(_close(client), loop)


_SHARED: dict[tuple[Any, ...], FirestoreConversationStore] = {}
_SHARED_LOCK = threading.Lock()


def _shared_store(collection: str, client: firestore.Client | None) -> FirestoreConversationStore:
    """One store (so one AsyncClient per loop) for every standalone history of a collection and client:
    code written for the package builds a history per request, and each must not open a channel."""
    env = (os.environ.get("FIRESTORE_EMULATOR_HOST"), os.environ.get("GOOGLE_CLOUD_PROJECT"))
    key = (collection, id(client), *env)  # the store holds `client`, so its id is not reused meanwhile
    with _SHARED_LOCK:
        store = _SHARED.get(key)
        if store is None:
            store = _SHARED[key] = FirestoreConversationStore(collection=collection, client=client)
        return store


class FirestoreChatMessageHistory(ChatHistory):
    """One conversation in Firestore; a drop-in for `langchain-google-firestore`'s class of this name.

    `FirestoreChatMessageHistory(session_id, collection="ChatHistory", client=None, encode_message=True)`
    behaves as the package's: sync `messages`/`add_messages`/`clear`, messages read back as written,
    and it reads (then migrates) sessions the package wrote. Differences: one document per message (no
    1 MiB cap, no lost concurrent writes), async methods, no I/O at construction, and an owner.

    The owner: `user_id=None` (the package's use) opens unowned sessions only; a session owned by a user
    raises `AccessDenied`. With `user_id`, the session is that user's; an unowned one opens only as
    `legacy_owner` allows (see the module docstring). `encode_message` is accepted for compatibility:
    each message is its own document here, so there is no array of encoded items to choose for.

    The app gets histories from `FirestoreConversationStore.history()` (sharing its clients and locks);
    standalone histories without `store_kwargs` share one store per collection and client.
    """

    def __init__(
        self,
        session_id: str,
        collection: str = "ChatHistory",
        client: firestore.Client | None = None,
        encode_message: bool = True,
        *,
        user_id: str | None = None,
        store: FirestoreConversationStore | None = None,
        **store_kwargs: Any,
    ) -> None:
        if not session_id or "/" in session_id:
            raise ValueError("session_id must be non-empty, without '/'")
        if user_id == "":
            raise ValueError("user_id must be None (unowned) or non-empty")
        if store is None:
            store = (
                FirestoreConversationStore(collection=collection, client=client, **store_kwargs)
                if store_kwargs
                else _shared_store(collection, client)
            )
        self.store = store
        self.session_id = session_id
        self.user_id = user_id
        self.collection = store.collection
        self.encode_message = encode_message

    def _load_messages(self) -> None:
        """The package's refresh hook: a no-op, `messages` always reads the stored conversation."""

    async def aget_messages(self) -> list[BaseMessage]:
        return await self.store._bounded(self.store._all(self.session_id, self.user_id), "messages")

    async def aget_window(
        self, max_messages: int | None = None, *, max_tokens: int | None = None
    ) -> list[BaseMessage]:
        window = await self.store._bounded(
            self.store._window(self.session_id, self.user_id, max_messages), "window"
        )
        return window if max_tokens is None else trim_to_tokens(window, max_tokens)

    async def aget_page(self, before: int | None = None, limit: int = 50) -> Page:
        return await self.store._bounded(
            self.store._page(self.session_id, self.user_id, before, limit), "page"
        )

    async def aadd_messages(self, messages: Sequence[BaseMessage], *, model: str | None = None) -> None:
        if messages:
            await self.store._bounded(
                self.store._add(self.session_id, self.user_id, messages, model), "append"
            )

    async def atruncate(self, from_message_id: str) -> int:
        return await self.store._bounded(
            self.store._truncate(self.session_id, self.user_id, from_message_id),
            "truncate",
            self.store.timeout * 6,
        )

    async def aclear(self) -> None:
        await self.store.adelete(self.session_id, self.user_id)


# --- small helpers -----------------------------------------------------------------------------
def _stored(snaps: Iterable[Any]) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for s in snaps:
        d = s.to_dict() or {}
        out[str(d.get("message_id", s.id))] = (str(d.get("role", "")), str(d.get("content", "")))
    return out


def _theirs(snap: Any, user_id: str | None) -> bool:
    """Whether a document at a bare session id may be `user_id`'s conversation: one of the old layout
    (no `session_id` field: a scoped document found by a crafted id is never another's) that is theirs,
    or unowned (`legacy_owner` decides then, in `_header`)."""
    if snap is None or not snap.exists:
        return False
    data = snap.to_dict() or {}
    return "session_id" not in data and data.get("user_id") in (None, user_id)


def _expiry_updates(snaps: Iterable[Any], target: datetime | None) -> list[tuple[Any, dict[str, Any]]]:
    """Message documents whose `expire_at` is before `target` (or set at all, when TTL is off)."""
    out = []
    for s in snaps:
        exp = (s.to_dict() or {}).get("expire_at")
        if target is None:
            if exp is not None:
                out.append((s.reference, {"expire_at": firestore.DELETE_FIELD}))
        elif exp is None or exp < target:
            out.append((s.reference, {"expire_at": target}))
    return out


async def _close(client: firestore.AsyncClient) -> None:
    """Close an AsyncClient's channel (it has no public close; its transport does)."""
    api = getattr(client, "_firestore_api_internal", None)
    if api is not None:
        await api.transport.close()


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of an abandoned (timed-out) task so asyncio does not log it."""
    if not task.cancelled():
        task.exception()
