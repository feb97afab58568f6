"""Where attachments are kept: outside the message documents (a Firestore document holds 1 MiB), one
object per distinct file and conversation; messages keep a reference (`blocks.REF_KEY`).

`AttachmentStore` is the interface; `GCSAttachmentStore` a Cloud Storage bucket (the cluster:
`attachments_bucket`); `LocalAttachmentStore` a directory (the embedded defaults). Both keep one folder
per user and, inside it, one per conversation (hashes of the ids), each file named by the SHA-256 of
its bytes: `<owner_key(user)>/<conversation_key(session)>/<sha256>`.

- The same file sent twice in a conversation is stored once, and a retried save is a no-op.
- A reference is only ever looked up among its own user's files of its own conversation (a reference
  crafted to name another user's file finds nothing).
- Deleting a conversation deletes its folder (`adelete_conversation`): nothing counts references, so
  the same file sent in two conversations is kept twice (the dedup given up for a delete that is one
  prefix, with no shared state to keep consistent; a user who deletes a chat expects its images gone).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shutil
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Protocol

from graph.settings import Settings

log = logging.getLogger(__name__)
_REF = re.compile(r"^[0-9a-f]{64}$")


def reference(data: bytes) -> str:
    """The reference of a file: the SHA-256 of its bytes (hex)."""
    return hashlib.sha256(data).hexdigest()


def valid_reference(ref: object) -> bool:
    return isinstance(ref, str) and _REF.match(ref) is not None


def owner_key(user_id: str) -> str:
    """A user's folder name: a hash (user ids are e-mail addresses; they stay out of paths and URLs)."""
    return hashlib.sha256(user_id.encode("utf-8")).hexdigest()[:32]


def conversation_key(session_id: str) -> str:
    """A conversation's folder name inside its user's: a hash (any session id makes a safe path)."""
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()[:32]


def prefix(user_id: str, session_id: str) -> str:
    """The folder (object name prefix) of one conversation's files, ending in '/'."""
    return f"{owner_key(user_id)}/{conversation_key(session_id)}/"


class AttachmentStore(Protocol):
    async def aput(self, user_id: str, session_id: str, data: bytes) -> str:
        """Keep `data` for `user_id`'s conversation `session_id`; returns its reference. Idempotent."""
        ...

    async def aget(self, user_id: str, session_id: str, ref: str) -> bytes | None:
        """The bytes of `ref` among that conversation's files; None when there is no such file."""
        ...

    async def adelete_conversation(self, user_id: str, session_id: str) -> int:
        """Delete every file of `user_id`'s conversation `session_id`; returns how many were deleted."""
        ...


class ThreadedStore(ABC):
    """A store whose I/O is blocking (files, google-cloud-storage's sync client): the async API runs each
    call in a thread, written once here."""

    @abstractmethod
    def put(self, user_id: str, session_id: str, data: bytes) -> str: ...

    @abstractmethod
    def get(self, user_id: str, session_id: str, ref: str) -> bytes | None: ...

    @abstractmethod
    def delete_conversation(self, user_id: str, session_id: str) -> int: ...

    async def aput(self, user_id: str, session_id: str, data: bytes) -> str:
        return await asyncio.to_thread(self.put, user_id, session_id, data)

    async def aget(self, user_id: str, session_id: str, ref: str) -> bytes | None:
        return await asyncio.to_thread(self.get, user_id, session_id, ref)

    async def adelete_conversation(self, user_id: str, session_id: str) -> int:
        return await asyncio.to_thread(self.delete_conversation, user_id, session_id)


class LocalAttachmentStore(ThreadedStore):
    """A directory: `<root>/<owner_key(user)>/<conversation_key(session)>/<sha256>`, written atomically
    (temp file, rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, user_id: str, session_id: str, ref: str) -> Path:
        if not valid_reference(ref):
            raise ValueError("not an attachment reference")
        return self.root / prefix(user_id, session_id) / ref

    def put(self, user_id: str, session_id: str, data: bytes) -> str:
        ref = reference(data)
        path = self._path(user_id, session_id, ref)
        if path.is_file():
            return ref
        path.parent.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return ref

    def get(self, user_id: str, session_id: str, ref: str) -> bytes | None:
        if not valid_reference(ref):
            return None
        try:
            return self._path(user_id, session_id, ref).read_bytes()
        except FileNotFoundError:
            return None

    def delete_conversation(self, user_id: str, session_id: str) -> int:
        folder = self.root / prefix(user_id, session_id)
        if not folder.is_dir():
            return 0
        count = sum(1 for p in folder.iterdir() if valid_reference(p.name))
        shutil.rmtree(folder)  # temp files of a write under way go too (its rename then fails)
        return count


class GCSAttachmentStore(ThreadedStore):
    """A Cloud Storage bucket (the cluster's): objects `<owner_key(user)>/<conversation_key>/<sha256>`.
    Uploads are create-only (`if_generation_match=0`): a repeated or retried upload of a file is a no-op
    and an object is never overwritten. The client is google-cloud-storage's (sync): calls run in a thread."""

    def __init__(self, bucket: str, *, client: object | None = None, project: str | None = None) -> None:
        from google.cloud import storage

        self._client = client or storage.Client(project=project)
        self._bucket = self._client.bucket(bucket)  # type: ignore[attr-defined]

    def _blob(self, user_id: str, session_id: str, ref: str) -> object:
        return self._bucket.blob(prefix(user_id, session_id) + ref)

    def put(self, user_id: str, session_id: str, data: bytes) -> str:
        from google.api_core.exceptions import PreconditionFailed

        ref = reference(data)
        blob = self._blob(user_id, session_id, ref)
        if blob.exists():  # type: ignore[attr-defined]  # a metadata read, not a second upload
            return ref
        try:
            blob.upload_from_string(  # type: ignore[attr-defined]
                data, content_type="application/octet-stream", if_generation_match=0
            )
        except PreconditionFailed:  # already there: the same bytes, by their name
            pass
        return ref

    def get(self, user_id: str, session_id: str, ref: str) -> bytes | None:
        from google.api_core.exceptions import NotFound

        if not valid_reference(ref):
            return None
        try:
            blob = self._blob(user_id, session_id, ref)
            return blob.download_as_bytes()  # type: ignore[attr-defined,no-any-return]
        except NotFound:
            return None

    def delete_conversation(self, user_id: str, session_id: str) -> int:
        """Lists the conversation's prefix and deletes each object (a prefix delete is not one call in
        the JSON API). An object already gone is not an error: two deletes may race."""
        from google.api_core.exceptions import NotFound

        count = 0
        blobs = self._client.list_blobs(self._bucket, prefix=prefix(user_id, session_id))  # type: ignore[attr-defined]
        for blob in blobs:
            try:
                blob.delete()
                count += 1
            except NotFound:
                pass
        return count


def make_attachment_store(settings: Settings) -> AttachmentStore:
    """A Cloud Storage bucket when `attachments_bucket` is set; else the embedded default, a directory
    (`attachments_path`, or beside the SQLite file). Nothing connects here."""
    if settings.attachments_bucket:
        return _LazyGCS(settings.attachments_bucket, settings.firestore_project)
    if settings.memory == "firestore":
        log.warning(
            "attachments are kept in a local directory while memory is Firestore: set "
            "HYBRID_CHAT_ATTACHMENTS_BUCKET, or a later turn on another replica will not see them"
        )
    root = settings.attachments_path
    if root is None:
        root = settings.sqlite_path.with_name(settings.sqlite_path.stem + "-attachments")
    return LocalAttachmentStore(root)


class _LazyGCS(ThreadedStore):
    """`GCSAttachmentStore` built on first use (the client needs credentials; building the graph must
    not)."""

    def __init__(self, bucket: str, project: str | None) -> None:
        self._args = (bucket, project)
        self._store: GCSAttachmentStore | None = None

    def _get(self) -> GCSAttachmentStore:
        if self._store is None:
            self._store = GCSAttachmentStore(self._args[0], project=self._args[1])
        return self._store

    def put(self, user_id: str, session_id: str, data: bytes) -> str:
        return self._get().put(user_id, session_id, data)

    def get(self, user_id: str, session_id: str, ref: str) -> bytes | None:
        return self._get().get(user_id, session_id, ref)

    def delete_conversation(self, user_id: str, session_id: str) -> int:
        return self._get().delete_conversation(user_id, session_id)
