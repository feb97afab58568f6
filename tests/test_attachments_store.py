"""One contract for every attachment store (graph/attachments/store.py): the local directory, and Cloud
Storage through the real google-cloud-storage client against a local counterpart of the GCS JSON API
(`gcp-storage-emulator`, PyPI; the GCS case is skipped, saying so, where it is not installed).

A file reads back byte for byte; the same file is kept once; a reference finds only its own user's
file; a missing or malformed reference finds nothing.
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


async def test_a_file_reads_back_byte_for_byte(store: Any) -> None:
    data = os.urandom(3_000_000)
    ref = await store.aput("alice@example.com", data)
    assert ref == reference(data)
    assert await store.aget("alice@example.com", ref) == data


async def test_the_same_file_is_kept_once(store: Any) -> None:
    data = b"%PDF-1.4 same bytes"
    first = await store.aput("alice@example.com", data)
    assert await store.aput("alice@example.com", data) == first
    assert await store.aget("alice@example.com", first) == data


async def test_a_reference_finds_only_its_own_users_file(store: Any) -> None:
    ref = await store.aput("alice@example.com", b"alice's screenshot")
    assert await store.aget("bob@example.com", ref) is None


async def test_missing_or_malformed_references_find_nothing(store: Any) -> None:
    assert await store.aget("alice@example.com", reference(b"never stored")) is None
    for bad in ("", "../../etc/passwd", "A" * 64, "0" * 63):
        assert await store.aget("alice@example.com", bad) is None
