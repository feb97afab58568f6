"""One contract for every attachment store (graph/attachments/store.py): the local directory, and Cloud
Storage through the real google-cloud-storage client against a local counterpart of the GCS JSON API
(`gcp-storage-emulator`, PyPI; the GCS case is skipped, saying so, where it is not installed).

A file reads back byte for byte; the same file is kept once per conversation; a reference finds only
its own user's file of its own conversation; a missing or malformed reference finds nothing; deleting a
conversation deletes its files from the disk or the bucket, and only its.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from graph.attachments.store import GCSAttachmentStore, LocalAttachmentStore, reference
from tests.support.server import free_port

BUCKET = "hybrid-chat-attachments-test"


@pytest.fixture(scope="module")
def gcs_emulator() -> Iterator[str]:
    exe = shutil.which("gcp-storage-emulator", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("gcp-storage-emulator is not installed (pip install gcp-storage-emulator)")
    port = free_port()
    proc = subprocess.Popen(  # noqa: S603
        [exe, "start", "--host=127.0.0.1", f"--port={port}", "--in-memory"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, "the GCS emulator exited"
            assert time.monotonic() < deadline, "the GCS emulator did not start"
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(params=["local", pytest.param("gcs", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    if request.param == "local":
        return LocalAttachmentStore(tmp_path / "files")
    url = request.getfixturevalue("gcs_emulator")
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    client = storage.Client(project="test", credentials=AnonymousCredentials())
    bucket = client.bucket(BUCKET)
    if not bucket.exists():
        client.create_bucket(BUCKET)
    for blob in client.list_blobs(BUCKET):
        blob.delete()
    return GCSAttachmentStore(BUCKET, client=client)


ALICE, BOB = "alice@example.com", "bob@example.com"


def stored_names(store: Any) -> list[str]:
    """Every file the store holds, as the disk or the bucket lists them (not through the store)."""
    if isinstance(store, LocalAttachmentStore):
        return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file())
    return sorted(b.name for b in store._client.list_blobs(BUCKET))


async def test_a_file_reads_back_byte_for_byte(store: Any) -> None:
    data = os.urandom(3_000_000)
    ref = await store.aput(ALICE, "s1", data)
    assert ref == reference(data)
    assert await store.aget(ALICE, "s1", ref) == data


async def test_the_same_file_is_kept_once_in_a_conversation(store: Any) -> None:
    data = b"%PDF-1.4 same bytes"
    first = await store.aput(ALICE, "s1", data)
    assert await store.aput(ALICE, "s1", data) == first
    assert await store.aget(ALICE, "s1", first) == data
    assert len(stored_names(store)) == 1


async def test_a_reference_finds_only_its_own_users_file(store: Any) -> None:
    ref = await store.aput(ALICE, "s1", b"alice's screenshot")
    assert await store.aget(BOB, "s1", ref) is None


async def test_a_reference_finds_only_its_own_conversations_file(store: Any) -> None:
    ref = await store.aput(ALICE, "s1", b"alice's screenshot")
    assert await store.aget(ALICE, "s2", ref) is None


async def test_missing_or_malformed_references_find_nothing(store: Any) -> None:
    assert await store.aget(ALICE, "s1", reference(b"never stored")) is None
    for bad in ("", "../../etc/passwd", "A" * 64, "0" * 63):
        assert await store.aget(ALICE, "s1", bad) is None


async def test_deleting_a_conversation_deletes_its_files_and_only_its(store: Any) -> None:
    """The same image in two of Alice's conversations and one of Bob's (same session id): deleting
    Alice's first conversation removes its files from the disk or the bucket; the identical file of
    her other conversation, and Bob's, stay and read back."""
    image, pdf = os.urandom(50_000), b"%PDF-1.4 only in s1"
    for user, session, data in (
        (ALICE, "s1", image),
        (ALICE, "s1", pdf),
        (ALICE, "s2", image),
        (BOB, "s1", image),
    ):
        await store.aput(user, session, data)
    assert len(stored_names(store)) == 4  # per conversation: the same image is kept three times
    assert await store.adelete_conversation(ALICE, "s1") == 2
    assert len(stored_names(store)) == 2
    assert await store.aget(ALICE, "s1", reference(image)) is None
    assert await store.aget(ALICE, "s1", reference(pdf)) is None
    assert await store.aget(ALICE, "s2", reference(image)) == image
    assert await store.aget(BOB, "s1", reference(image)) == image
    assert await store.adelete_conversation(ALICE, "s1") == 0  # again: nothing left, no error
    assert await store.adelete_conversation(ALICE, "never") == 0


async def test_names_hold_no_user_or_session_id(store: Any) -> None:
    await store.aput(ALICE, "my-session", b"x")
    [name] = stored_names(store)
    assert "alice" not in name and "my-session" not in name


# --- through the façade: a user deletes a chat ----------------------------------------------------
def _png(color: str) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.integration
async def test_deleting_a_chat_deletes_its_attachments(
    store: Any, tmp_path: Path, local_backends: Any
) -> None:
    """Alice sends the same image in two chats (answered by the Gemini stand-in, which names the bytes
    it got); `ChatClient.delete` of the first removes its files from the disk or
    the bucket; the second chat's identical image stays, and a later turn there still sees it."""
    import base64
    import dataclasses
    import hashlib

    from langchain_core.messages import HumanMessage

    from graph.client import ChatClient
    from graph.context import Services
    from tests.conftest import local_settings

    services = Services.build(local_settings(tmp_path), backends=local_backends)
    client = ChatClient(dataclasses.replace(services, attachments=store))
    image = _png("green")

    async def send(session: str, text: str, *files: bytes) -> str:
        blocks = [
            {"type": "image", "base64": base64.b64encode(f).decode(), "mime_type": "image/png"} for f in files
        ]
        message = HumanMessage(content=[{"type": "text", "text": text}, *blocks] if blocks else text)
        done = [e async for e in client.stream_turn(ALICE, session, [message], {"model": "gemini"})][-1]
        assert done.kind == "answer" and done.saved, (done.kind, done.text, done.save_error)
        return done.text

    seen = f"image/png 32x24, {len(image):,} bytes, sha256 {hashlib.sha256(image).hexdigest()[:12]}"
    assert seen in await send("chat-1", "What is this?", image)
    assert seen in await send("chat-2", "And this one?", image)
    assert len(stored_names(store)) == 2  # one per chat
    await client.delete(ALICE, "chat-1")
    assert [n.split("/")[1] for n in stored_names(store)] == [hashlib.sha256(b"chat-2").hexdigest()[:32]]
    assert await store.aget(ALICE, "chat-2", reference(image)) == image
    assert seen in await send("chat-2", "The picture again?")  # loaded back from the store
    await client.aclose()
