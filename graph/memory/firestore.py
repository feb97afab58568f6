"""Chat memory in Cloud Firestore, written directly on `google-cloud-firestore`.

Why not the released `langchain-google-firestore` (0.5.0, the latest): every release pins
`langchain-core<1` (installing it downgrades the whole LangChain 1.x stack to 0.3), and its
`FirestoreChatMessageHistory` keeps a whole session in ONE document (`{"messages": [json, ...]}`): the
1 MiB document limit caps a conversation, every message rewrites the whole array, two writers overwrite
each other (no transaction), it reads the document in `__init__` (network at construction) and it has no
async API. This module keeps the package's constructor shape (`session_id`, `collection`, `client`) so
code written for it reads naturally, and reads (then migrates) what the package wrote.

Layout (database `chat-app-db`, collection `chat_sessions` by default)::

    chat_sessions/{session_id}                    user_id, title, created_at, updated_at, last_model,
                                                  message_count, next_seq, expire_at (TTL on),
                                                  messages_expire_min (TTL on), schema
    chat_sessions/{session_id}/messages/{msg_id}  message_id, seq, role, content, created_at, backend,
                                                  route_reason, latency_ms, ttft_ms, model,
                                                  input_tokens, output_tokens, message (JSON), expire_at

No document grows with the conversation. The message document id is the message id (hashed when it is
not a valid document id), which makes saves idempotent.

- Appends are one transaction: read the session document and the would-be message documents, check the
  owner, skip ids already stored, assign `seq = next_seq...`, `create` the message documents, update the
  header. Firestore serializes transactions touching the same session document, so concurrent writers
  (two tabs, two pods) never lose or overwrite a message and each batch (a turn) stays contiguous.
  Within one process, writers of the same conversation also queue on a lock first: the emulator resolves
  read-lock deadlocks between transactions only after seconds, and a lock costs nothing.
- The prompt window is `order_by(seq desc).limit(N)`: documents read = window size (+1 header),
  whatever the conversation's length. The UI pages with `seq < before`.
- TTL (`ttl_days` > 0): `expire_at = last update + N days` on the header and on each message document
  (a Firestore TTL policy must be set on both collection groups; deleting a parent does not delete its
  subcollection). Message documents get their `expire_at` when written, so an active conversation would
  see its oldest messages expire first: when the oldest message's `expire_at` is less than half a TTL
  away (tracked as `messages_expire_min` on the header), an append pushes every message's `expire_at`
  to the header's. Cost: one pass over the conversation per half TTL of activity.
- Legacy documents (the package's layout: a `messages` array of JSON, bytes or str, no owner) are read
  as they are and migrated to this layout by the next append, inside the same transaction.
  Ownership of a legacy document: it has no owner field, and session ids may be guessable, so by
  default nobody can open it (`AccessDenied`; the data stays untouched). `legacy_owner="<user id>"`
  gives every legacy document to that user (the right choice when the old app had a single user,
  e.g. the default local user); `legacy_owner="*"` lets any user read one, and the first to write to
  it claims it (only for deployments whose users all trusted each other anyway). Legacy documents are
  not listed until migrated (they have no `user_id` to query on).
- Errors: gRPC/network failures (unavailable, deadline, retry exhausted, auth transport) become
  `MemoryUnavailable`. Every operation is bounded by `timeout` seconds, also when the server hangs.
  A timed-out append may or may not have committed; retrying it with the same message objects (their
  ids were set) is safe either way.
- Nothing touches the network at construction: clients are created on first use.
- Sync methods (`messages`, `add_messages`, `clear`, `get_window`) use the sync `Client`; async ones use
  `AsyncClient`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
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
from google.cloud.firestore_v1.transaction import transactional
from langchain_core.messages import BaseMessage
from tenacity import (
    AsyncRetrying,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from graph.memory.base import (
    DEFAULT_TITLE,
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
    TokenCounter,
    annotate,
    decode_cursor,
    dedupe_messages,
    derive_title,
    deserialize_message,
    encode_cursor,
    ensure_ids,
    estimate_tokens,
    is_simple_id,
    legacy_message,
    message_fields,
    message_text,
    normalize_message,
    select_window,
    serialize_message,
    utcnow,
    validate_title,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
SCHEMA = 2
MESSAGES = "messages"
DESC = firestore.Query.DESCENDING
LEGACY_ANYONE = "*"
_WINDOW_CHUNK = 50


def _doc_id(message_id: str) -> str:
    """A valid, stable document id for a message id (hashed when the id has `/` or is too long)."""
    if is_simple_id(message_id):
        return message_id
    return "h-" + hashlib.sha256(message_id.encode()).hexdigest()[:40]


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


@dataclass
class _Plan:
    """The writes of one append transaction, computed from what it read (pure, shared sync/async)."""

    header: dict[str, Any] | None = None  # full document to `set` (creation, legacy migration)
    update: dict[str, Any] | None = None  # fields to `update`
    creates: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    refresh_expiry: bool = False


class FirestoreConversationStore(ConversationStore):
    """Conversations in Firestore. Holds the (lazily created) clients; hands out histories."""

    def __init__(
        self,
        *,
        project: str | None = None,
        database: str = "(default)",
        collection: str = "chat_sessions",
        client: firestore.Client | None = None,
        async_client: firestore.AsyncClient | None = None,
        ttl_days: int = 0,
        legacy_owner: str | None = None,
        timeout: float = 10.0,
        delete_batch_size: int = 500,
        max_attempts: int = 8,
        token_counter: TokenCounter | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if not 1 <= delete_batch_size <= 500:
            raise ValueError("delete_batch_size must be within 1..500")
        self.project = project
        self.database = database
        self.collection = collection
        self.ttl_days = ttl_days
        self.legacy_owner = legacy_owner
        self.timeout = timeout
        self.delete_batch_size = delete_batch_size
        self.max_attempts = max_attempts
        self.token_counter: TokenCounter = token_counter or estimate_tokens
        self.clock = clock or utcnow
        self.stats = StoreStats()
        self._client = client
        self._async_client = async_client
        self._own_client = client is None
        self._loop_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, firestore.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        self._init_lock = threading.Lock()
        self._locks: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
        self._alocks: weakref.WeakValueDictionary[tuple[int, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    # --- clients (lazy: construction never touches the network) -------------------------------
    @property
    def client(self) -> firestore.Client:
        with self._init_lock:
            if self._client is None:
                self._client = firestore.Client(project=self.project, database=self.database)
            return self._client

    @property
    def async_client(self) -> firestore.AsyncClient:
        """The AsyncClient of the running event loop: a grpc.aio channel belongs to the loop that
        created it, so a store used from two loops (Gradio's, a worker thread's) keeps one per loop."""
        if self._async_client is not None:
            return self._async_client  # passed in: the caller manages its loop
        loop = asyncio.get_running_loop()
        client = self._loop_clients.get(loop)
        if client is None:
            client = firestore.AsyncClient(project=self.project, database=self.database)
            self._loop_clients[loop] = client
        return client

    def history(self, session_id: str, user_id: str) -> FirestoreChatMessageHistory:
        return FirestoreChatMessageHistory(session_id, self.collection, user_id=user_id, store=self)

    # --- policies ------------------------------------------------------------------------------
    def _rpc(self) -> dict[str, Any]:
        """Per-call retry/timeout for the sync client: transient errors retried briefly, bounded."""
        retry = retries.Retry(
            predicate=retries.if_transient_error,
            initial=0.1,
            maximum=1.0,
            multiplier=2.0,
            timeout=self.timeout,
        )
        return {"retry": retry, "timeout": self.timeout}

    def _arpc(self) -> dict[str, Any]:
        retry = retries.AsyncRetry(
            predicate=retries.if_transient_error,
            initial=0.1,
            maximum=1.0,
            multiplier=2.0,
            timeout=self.timeout,
        )
        return {"retry": retry, "timeout": self.timeout}

    def _lock(self, session_id: str) -> Any:
        with self._init_lock:
            lock = self._locks.get(session_id)
            if lock is None:
                lock = threading.Lock()
                self._locks[session_id] = lock
            return lock

    def _alock(self, session_id: str) -> asyncio.Lock:
        key = (id(asyncio.get_running_loop()), session_id)
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

    def _sync_bounded(self, fn: Callable[[], T], what: str) -> T:
        """Sync twin of `_bounded`: the call runs in a worker thread so a hung server cannot hang us."""
        with self._init_lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="firestore-sync")
            executor = self._executor
        future = executor.submit(fn)
        try:
            return future.result(timeout=self.timeout)
        except concurrent.futures.TimeoutError as exc:
            raise MemoryUnavailable(f"Firestore did not answer within {self.timeout:g} s ({what})") from exc
        except Exception as exc:
            mapped = _translate(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    def _retrying_kwargs(self) -> dict[str, Any]:
        return {
            "stop": stop_after_attempt(self.max_attempts),
            "wait": wait_random_exponential(multiplier=0.05, max=2.0),
            "retry": retry_if_exception(_is_contention),
            "reraise": True,
        }

    # --- shared, pure logic --------------------------------------------------------------------
    def _header(
        self, data: dict[str, Any] | None, user_id: str, *, create_time: Any = None, update_time: Any = None
    ) -> _Header:
        """Ownership check of a session document; parses a legacy `messages` array."""
        if data is None:
            return _Header(exists=False)
        owner = data.get("user_id")
        legacy_items = data.get("messages")
        if owner is None:
            if self.legacy_owner is None or self.legacy_owner not in (LEGACY_ANYONE, user_id):
                raise AccessDenied("legacy conversation without an owner (see legacy_owner)")
        elif owner != user_id:
            raise AccessDenied("conversation belongs to another user")
        if data.get("deleting"):
            return _Header(exists=False)
        legacy = None
        if isinstance(legacy_items, list):
            legacy = [legacy_message(item, i) for i, item in enumerate(legacy_items)]
            for i, m in enumerate(legacy):
                annotate(m, i, None)
        return _Header(True, data, legacy, create_time, update_time)

    def _plan(
        self,
        head: _Header,
        stored: dict[str, tuple[str, str]],
        msgs: list[BaseMessage],
        user_id: str,
        model: str | None,
    ) -> _Plan:
        now = self.clock()
        expire = self._expire(now)
        plan = _Plan()
        legacy = head.legacy or []
        for m in legacy:
            stored.setdefault(str(m.id), (m.type, message_text(m)))
        new = dedupe_messages(msgs, stored)
        if not new and not legacy:
            return plan
        data = head.data if head.exists else {}
        seq = int(data.get("next_seq", 0)) if not legacy else 0
        for m in [*legacy, *new]:
            doc = {"message_id": str(m.id), "seq": seq, "role": m.type, "content": message_text(m)}
            doc["created_at"] = now
            doc.update(message_fields(m))
            doc["message"] = serialize_message(m)
            if expire is not None:
                doc["expire_at"] = expire
            plan.creates.append((_doc_id(str(m.id)), doc))
            seq += 1
        title = data.get("title") or derive_title([*legacy, *new]) or ""
        fields: dict[str, Any] = {
            "updated_at": now,
            "next_seq": seq,
            "message_count": int(data.get("message_count", 0)) + len(new) + len(legacy),
            "title": title,
        }
        if model is not None:
            fields["last_model"] = model
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
                **fields,
            }
        return plan

    def _conversation(self, session_id: str, user_id: str, head: _Header) -> Conversation:
        d = head.data
        now = self.clock()
        if head.legacy is not None and d.get("user_id") is None:
            title = d.get("title") or derive_title(head.legacy) or DEFAULT_TITLE
            return Conversation(
                session_id, user_id, title, head.create_time or now, head.update_time or now, len(head.legacy)
            )
        return Conversation(
            session_id=session_id,
            user_id=d["user_id"],
            title=d.get("title") or DEFAULT_TITLE,
            created_at=d.get("created_at") or head.create_time or now,
            updated_at=d.get("updated_at") or head.update_time or now,
            message_count=int(d.get("message_count", len(head.legacy or []))),
            last_model=d.get("last_model"),
        )

    def _to_message(self, data: dict[str, Any]) -> BaseMessage:
        self.stats.docs_read += 1
        return deserialize_message(
            data["message"], data.get("content") or "", data["seq"], data.get("created_at")
        )

    # --- async implementation ------------------------------------------------------------------
    def _asess(self, session_id: str) -> Any:
        return self.async_client.collection(self.collection).document(session_id)

    async def _aheader(self, session_id: str, user_id: str) -> _Header:
        snap = await self._asess(session_id).get(**self._arpc())
        self.stats.docs_read += 1
        return self._header(
            snap.to_dict() if snap.exists else None,
            user_id,
            create_time=snap.create_time,
            update_time=snap.update_time,
        )

    async def _aquery(self, query: Any) -> list[dict[str, Any]]:
        return [s.to_dict() async for s in query.stream(**self._arpc())]

    async def _aappend(
        self, session_id: str, user_id: str, msgs: list[BaseMessage], model: str | None
    ) -> _Plan | None:
        sess = self._asess(session_id)
        refs = [sess] + [
            sess.collection(MESSAGES).document(i) for i in dict.fromkeys(_doc_id(str(m.id)) for m in msgs)
        ]

        @async_transactional
        async def run(tx: Any) -> _Plan:
            # Not `tx.get_all`: in google-cloud-firestore 2.34 it awaits an async generator (TypeError).
            gen = self.async_client.get_all(refs, transaction=tx, **self._arpc())
            snaps = {s.reference.path: s async for s in gen}
            s0 = snaps.get(sess.path)
            head = self._header(
                s0.to_dict() if s0 is not None and s0.exists else None,
                user_id,
                create_time=s0.create_time if s0 is not None else None,
            )
            if not head.exists and s0 is not None and s0.exists:
                raise ConversationNotFound(f"conversation {session_id!r} is being deleted")
            stored = _stored(s for s in snaps.values() if s.exists and s.reference.path != sess.path)
            plan = self._plan(head, stored, msgs, user_id, model)
            _apply(tx, sess, plan)
            return plan

        async with self._alock(session_id):
            async for attempt in AsyncRetrying(**self._retrying_kwargs()):
                with attempt:
                    return await run(self.async_client.transaction(max_attempts=1))
        return None  # pragma: no cover - AsyncRetrying either returns or raises

    async def _arefresh_expiry(self, session_id: str) -> None:
        """Set every message's `expire_at` to the header's (see the module docstring), page by page."""
        target = self._expire(self.clock())
        sess = self._asess(session_id)
        last: int | None = None
        while True:
            q = sess.collection(MESSAGES).order_by("seq").select(["seq", "expire_at"])
            if last is not None:
                q = q.start_after({"seq": last})
            snaps = [s async for s in q.limit(self.delete_batch_size).stream(**self._arpc())]
            if not snaps:
                break
            batch = self.async_client.batch()
            for ref, update in _expiry_updates(snaps, target):
                batch.update(ref, update)
            if len(batch):
                await batch.commit(**self._arpc())
            last = snaps[-1].get("seq")
        with contextlib.suppress(gexc.NotFound):  # deleted meanwhile
            await sess.update({"messages_expire_min": target or firestore.DELETE_FIELD}, **self._arpc())

    async def _awindow(
        self, session_id: str, user_id: str, max_messages: int | None, max_tokens: int | None
    ) -> list[BaseMessage]:
        col = self._asess(session_id).collection(MESSAGES)
        chunk = max_messages if max_messages is not None else _WINDOW_CHUNK
        if chunk <= 0:
            await self._aheader(session_id, user_id)
            return []
        # Header and newest messages in parallel: one round trip; the messages are dropped if denied.
        head, docs = await asyncio.gather(
            self._aheader(session_id, user_id), self._aquery(col.order_by("seq", direction=DESC).limit(chunk))
        )
        if not head.exists:
            return []
        if head.legacy is not None:
            return select_window(reversed(head.legacy), max_messages, max_tokens, self.token_counter)
        msgs = [self._to_message(d) for d in docs]
        while max_messages is None and len(docs) == chunk and self._fits(msgs, max_tokens):
            q = col.order_by("seq", direction=DESC).start_after({"seq": docs[-1]["seq"]}).limit(chunk)
            docs = await self._aquery(q)
            msgs += [self._to_message(d) for d in docs]
        return select_window(msgs, max_messages, max_tokens, self.token_counter)

    def _fits(self, msgs: list[BaseMessage], max_tokens: int | None) -> bool:
        return max_tokens is None or sum(self.token_counter(m) for m in msgs) <= max_tokens

    async def _apage(self, session_id: str, user_id: str, before: int | None, limit: int) -> Page:
        if limit <= 0:
            raise ValueError("limit must be positive")
        q = self._asess(session_id).collection(MESSAGES).order_by("seq", direction=DESC)
        if before is not None:
            q = q.where(filter=firestore.FieldFilter("seq", "<", before))
        head, docs = await asyncio.gather(
            self._aheader(session_id, user_id), self._aquery(q.limit(limit + 1))
        )
        if not head.exists:
            return Page([], None)
        if head.legacy is not None:
            return _page_of(head.legacy, before, limit)
        more = len(docs) > limit
        docs = docs[:limit]
        return Page([self._to_message(d) for d in reversed(docs)], docs[-1]["seq"] if more and docs else None)

    async def _aall(self, session_id: str, user_id: str) -> list[BaseMessage]:
        q = self._asess(session_id).collection(MESSAGES).order_by("seq")
        head, docs = await asyncio.gather(self._aheader(session_id, user_id), self._aquery(q))
        if not head.exists:
            return []
        if head.legacy is not None:
            return list(head.legacy)
        return [self._to_message(d) for d in docs]

    async def _amark_deleting(self, session_id: str, user_id: str) -> bool:
        """Flag the header (owner checked, in a transaction) so no append lands during deletion."""
        sess = self._asess(session_id)

        @async_transactional
        async def run(tx: Any) -> bool:
            snap = await sess.get(transaction=tx, **self._arpc())
            if not snap.exists:
                return False
            self._header(snap.to_dict(), user_id)
            tx.update(sess, {"deleting": True})
            return True

        async with self._alock(session_id):
            async for attempt in AsyncRetrying(**self._retrying_kwargs()):
                with attempt:
                    return await run(self.async_client.transaction(max_attempts=1))
        return False  # pragma: no cover

    async def _adelete(self, session_id: str, user_id: str) -> None:
        if not await self._amark_deleting(session_id, user_id):
            return
        sess = self._asess(session_id)
        col = sess.collection(MESSAGES)
        while True:
            snaps = [s async for s in col.select([]).limit(self.delete_batch_size).stream(**self._arpc())]
            if not snaps:
                break
            batch = self.async_client.batch()
            for s in snaps:
                batch.delete(s.reference)
            await batch.commit(**self._arpc())
            self.stats.extra["delete_batches"] = self.stats.extra.get("delete_batches", 0) + 1
        await sess.delete(**self._arpc())

    async def _arename(self, session_id: str, user_id: str, title: str) -> None:
        title = validate_title(title)
        sess = self._asess(session_id)

        @async_transactional
        async def run(tx: Any) -> None:
            snap = await sess.get(transaction=tx, **self._arpc())
            head = self._header(snap.to_dict() if snap.exists else None, user_id)
            if not head.exists:
                raise ConversationNotFound(session_id)
            update: dict[str, Any] = {"title": title}
            if head.data.get("user_id") is None:
                update["user_id"] = user_id  # renaming a legacy conversation claims it
            tx.update(sess, update)

        async with self._alock(session_id):
            async for attempt in AsyncRetrying(**self._retrying_kwargs()):
                with attempt:
                    await run(self.async_client.transaction(max_attempts=1))

    async def _aget_conversation(self, session_id: str, user_id: str) -> Conversation:
        head = await self._aheader(session_id, user_id)
        if not head.exists:
            raise ConversationNotFound(session_id)
        return self._conversation(session_id, user_id, head)

    async def _alist(self, user_id: str, limit: int, cursor: str | None) -> ConversationList:
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
        snaps = [s async for s in q.limit(limit + 1).stream(**self._arpc())]
        self.stats.docs_read += len(snaps)
        return self._listing(snaps, user_id, limit)

    def _listing(self, snaps: list[Any], user_id: str, limit: int) -> ConversationList:
        more = len(snaps) > limit
        snaps = snaps[:limit]
        convs = [
            self._conversation(s.id, user_id, _Header(True, s.to_dict()))
            for s in snaps
            if not (s.to_dict() or {}).get("deleting")
        ]
        last = snaps[-1] if snaps else None
        nxt = encode_cursor(last.get("updated_at"), last.id) if more and last is not None else None
        return ConversationList(convs, nxt)

    # --- sync implementation (sync Client; same logic) -----------------------------------------
    def _sess(self, session_id: str) -> Any:
        return self.client.collection(self.collection).document(session_id)

    def _sheader(self, session_id: str, user_id: str) -> _Header:
        snap = self._sess(session_id).get(**self._rpc())
        self.stats.docs_read += 1
        return self._header(
            snap.to_dict() if snap.exists else None,
            user_id,
            create_time=snap.create_time,
            update_time=snap.update_time,
        )

    def _squery(self, query: Any) -> list[dict[str, Any]]:
        return [s.to_dict() for s in query.stream(**self._rpc())]

    def _sappend(
        self, session_id: str, user_id: str, msgs: list[BaseMessage], model: str | None
    ) -> _Plan | None:
        sess = self._sess(session_id)
        refs = [sess] + [
            sess.collection(MESSAGES).document(i) for i in dict.fromkeys(_doc_id(str(m.id)) for m in msgs)
        ]

        @transactional
        def run(tx: Any) -> _Plan:
            snaps = {s.reference.path: s for s in tx.get_all(refs, **self._rpc())}
            s0 = snaps.get(sess.path)
            head = self._header(
                s0.to_dict() if s0 is not None and s0.exists else None,
                user_id,
                create_time=s0.create_time if s0 is not None else None,
            )
            if not head.exists and s0 is not None and s0.exists:
                raise ConversationNotFound(f"conversation {session_id!r} is being deleted")
            stored = _stored(s for s in snaps.values() if s.exists and s.reference.path != sess.path)
            plan = self._plan(head, stored, msgs, user_id, model)
            _apply(tx, sess, plan)
            return plan

        with self._lock(session_id):
            for attempt in Retrying(**self._retrying_kwargs()):
                with attempt:
                    return run(self.client.transaction(max_attempts=1))
        return None  # pragma: no cover

    def _srefresh_expiry(self, session_id: str) -> None:
        target = self._expire(self.clock())
        sess = self._sess(session_id)
        last: int | None = None
        while True:
            q = sess.collection(MESSAGES).order_by("seq").select(["seq", "expire_at"])
            if last is not None:
                q = q.start_after({"seq": last})
            snaps = list(q.limit(self.delete_batch_size).stream(**self._rpc()))
            if not snaps:
                break
            batch = self.client.batch()
            for ref, update in _expiry_updates(snaps, target):
                batch.update(ref, update)
            if len(batch):
                batch.commit(**self._rpc())
            last = snaps[-1].get("seq")
        with contextlib.suppress(gexc.NotFound):
            sess.update({"messages_expire_min": target or firestore.DELETE_FIELD}, **self._rpc())

    def _swindow(
        self, session_id: str, user_id: str, max_messages: int | None, max_tokens: int | None
    ) -> list[BaseMessage]:
        head = self._sheader(session_id, user_id)
        if not head.exists:
            return []
        if head.legacy is not None:
            return select_window(reversed(head.legacy), max_messages, max_tokens, self.token_counter)
        chunk = max_messages if max_messages is not None else _WINDOW_CHUNK
        if chunk <= 0:
            return []
        col = self._sess(session_id).collection(MESSAGES)
        docs = self._squery(col.order_by("seq", direction=DESC).limit(chunk))
        msgs = [self._to_message(d) for d in docs]
        while max_messages is None and len(docs) == chunk and self._fits(msgs, max_tokens):
            q = col.order_by("seq", direction=DESC).start_after({"seq": docs[-1]["seq"]}).limit(chunk)
            docs = self._squery(q)
            msgs += [self._to_message(d) for d in docs]
        return select_window(msgs, max_messages, max_tokens, self.token_counter)

    def _sall(self, session_id: str, user_id: str) -> list[BaseMessage]:
        head = self._sheader(session_id, user_id)
        if not head.exists:
            return []
        if head.legacy is not None:
            return list(head.legacy)
        docs = self._squery(self._sess(session_id).collection(MESSAGES).order_by("seq"))
        return [self._to_message(d) for d in docs]

    def _sdelete(self, session_id: str, user_id: str) -> None:
        sess = self._sess(session_id)

        @transactional
        def mark(tx: Any) -> bool:
            snap = sess.get(transaction=tx, **self._rpc())
            if not snap.exists:
                return False
            self._header(snap.to_dict(), user_id)
            tx.update(sess, {"deleting": True})
            return True

        with self._lock(session_id):
            if not mark(self.client.transaction()):
                return
        col = sess.collection(MESSAGES)
        while True:
            snaps = list(col.select([]).limit(self.delete_batch_size).stream(**self._rpc()))
            if not snaps:
                break
            batch = self.client.batch()
            for s in snaps:
                batch.delete(s.reference)
            batch.commit(**self._rpc())
        sess.delete(**self._rpc())

    # --- public async API ----------------------------------------------------------------------
    async def alist_conversations(
        self, user_id: str, limit: int = 20, cursor: str | None = None
    ) -> ConversationList:
        return await self._bounded(self._alist(user_id, limit, cursor), "list conversations")

    async def aget_conversation(self, session_id: str, user_id: str) -> Conversation:
        return await self._bounded(self._aget_conversation(session_id, user_id), "get conversation")

    async def arename(self, session_id: str, user_id: str, title: str) -> None:
        await self._bounded(self._arename(session_id, user_id, title), "rename")

    async def adelete(self, session_id: str, user_id: str) -> None:
        # Deleting a long conversation may take several batches: allow more than one timeout.
        await self._bounded(self._adelete(session_id, user_id), "delete", self.timeout * 6)

    async def aping(self) -> None:
        async def ping() -> None:
            await self.async_client.collection(self.collection).document("-ping-").get(**self._arpc())

        await self._bounded(ping(), "ping")

    async def aclose(self) -> None:
        """Close the gRPC channels of the clients this store created (not those passed in)."""
        loop = asyncio.get_running_loop()
        mine = self._loop_clients.pop(loop, None)
        if mine is not None:
            api = getattr(mine, "_firestore_api_internal", None)
            if api is not None:
                await api.transport.close()
        self._loop_clients.clear()  # other loops' channels cannot be awaited from here: dropped
        if self._own_client and self._client is not None:
            api = getattr(self._client, "_firestore_api_internal", None)
            if api is not None:
                api.transport.close()
            self._client = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


class FirestoreChatMessageHistory(ChatHistory):
    """One user's conversation in Firestore; constructor shaped like `langchain-google-firestore`'s.

    `FirestoreChatMessageHistory(session_id, collection, client, user_id=...)` works standalone (it
    builds its own store from the keyword arguments); the app gets histories from
    `FirestoreConversationStore.history()`, which share the store's clients and locks. `user_id` is
    required: every conversation has an owner. Construction does no I/O.
    """

    def __init__(
        self,
        session_id: str,
        collection: str = "chat_sessions",
        client: firestore.Client | None = None,
        *,
        user_id: str,
        async_client: firestore.AsyncClient | None = None,
        store: FirestoreConversationStore | None = None,
        **store_kwargs: Any,
    ) -> None:
        if not session_id or "/" in session_id or not user_id:
            raise ValueError("session_id (without '/') and user_id are required")
        if store is None:
            store = FirestoreConversationStore(
                collection=collection, client=client, async_client=async_client, **store_kwargs
            )
        self.store = store
        self.session_id = session_id
        self.user_id = user_id
        self.collection = store.collection

    def _prepare(self, messages: Sequence[BaseMessage]) -> list[BaseMessage]:
        msgs = [normalize_message(m) for m in messages]
        ensure_ids(msgs)
        for original, m in zip(messages, msgs, strict=True):
            original.id = m.id
        return msgs

    # --- async -------------------------------------------------------------------------------
    async def aadd_messages(self, messages: Sequence[BaseMessage], *, model: str | None = None) -> None:
        msgs = self._prepare(messages)
        if not msgs:
            return
        s = self.store

        async def op() -> None:
            try:
                plan = await s._aappend(self.session_id, self.user_id, msgs, model)
            finally:
                for original, m in zip(messages, msgs, strict=True):
                    original.id = m.id  # collisions got a fresh id: a retry must reuse it
            if plan is not None and plan.refresh_expiry:
                try:
                    await s._arefresh_expiry(self.session_id)
                except Exception:  # the turn is saved; the next append retries the refresh
                    log.warning("expire_at refresh of %s failed", self.session_id, exc_info=True)

        await s._bounded(op(), "append")

    async def aget_window(
        self, max_messages: int | None = None, max_tokens: int | None = None
    ) -> list[BaseMessage]:
        return await self.store._bounded(
            self.store._awindow(self.session_id, self.user_id, max_messages, max_tokens), "window"
        )

    async def aget_page(self, before: int | None = None, limit: int = 50) -> Page:
        return await self.store._bounded(
            self.store._apage(self.session_id, self.user_id, before, limit), "page"
        )

    async def aget_messages(self) -> list[BaseMessage]:
        return await self.store._bounded(self.store._aall(self.session_id, self.user_id), "messages")

    async def aclear(self) -> None:
        await self.store.adelete(self.session_id, self.user_id)

    # --- sync --------------------------------------------------------------------------------
    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        return self.store._sync_bounded(lambda: self.store._sall(self.session_id, self.user_id), "messages")

    def add_messages(self, messages: Sequence[BaseMessage], *, model: str | None = None) -> None:
        msgs = self._prepare(messages)
        if not msgs:
            return
        s = self.store

        def op() -> None:
            try:
                plan = s._sappend(self.session_id, self.user_id, msgs, model)
            finally:
                for original, m in zip(messages, msgs, strict=True):
                    original.id = m.id
            if plan is not None and plan.refresh_expiry:
                try:
                    s._srefresh_expiry(self.session_id)
                except Exception:  # the turn is saved; the next append retries the refresh
                    log.warning("expire_at refresh of %s failed", self.session_id, exc_info=True)

        s._sync_bounded(op, "append")

    def get_window(self, max_messages: int | None = None, max_tokens: int | None = None) -> list[BaseMessage]:
        return self.store._sync_bounded(
            lambda: self.store._swindow(self.session_id, self.user_id, max_messages, max_tokens), "window"
        )

    def clear(self) -> None:
        self.store._sync_bounded(lambda: self.store._sdelete(self.session_id, self.user_id), "clear")


# --- small helpers -----------------------------------------------------------------------------
def _stored(snaps: Iterable[Any]) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for s in snaps:
        d = s.to_dict() or {}
        out[str(d.get("message_id", s.id))] = (str(d.get("role", "")), str(d.get("content", "")))
    return out


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


def _apply(tx: Any, sess: Any, plan: _Plan) -> None:
    if plan.header is not None:
        tx.set(sess, plan.header)  # replaces the document: drops a legacy `messages` array
    elif plan.update is not None:
        tx.update(sess, plan.update)
    for doc_id, data in plan.creates:
        tx.create(sess.collection(MESSAGES).document(doc_id), data)


def _page_of(msgs: list[BaseMessage], before: int | None, limit: int) -> Page:
    """Paging over an in-memory (legacy) conversation, same contract as the query."""
    end = len(msgs) if before is None else max(0, min(before, len(msgs)))
    start = max(0, end - limit)
    return Page(list(msgs[start:end]), start if start > 0 else None)


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of an abandoned (timed-out) task so asyncio does not log it."""
    if not task.cancelled():
        task.exception()
