"""Attachments with Firestore memory (issue 15), on the REAL Cloud Firestore emulator: the message
document holds a reference, never the bytes (a document is capped at 1 MiB), and a conversation with
an image resumes after a restart (new store and graph objects), the model seeing the image again.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from PIL import Image

from graph import build_graph
from graph.backends import Backends
from graph.context import Services
from tests.conftest import local_settings
from tests.support.firestore_emulator import FirestoreEmulator, firestore_emulator

pytestmark = pytest.mark.integration
DATABASE, COLLECTION = "attachments-db", "chat_sessions"


@pytest.fixture(scope="module")
def emulator() -> Iterator[FirestoreEmulator]:
    with firestore_emulator(set_env=False) as emu:
        yield emu


def _graph(emu: FirestoreEmulator, tmp_path: Path, backends: Backends) -> Any:
    from graph.memory.firestore import FirestoreConversationStore

    settings = local_settings(
        tmp_path, memory="firestore", firestore_database=DATABASE, attachments_path=tmp_path / "files"
    )
    store = FirestoreConversationStore(project=emu.project, database=DATABASE, collection=COLLECTION)
    return build_graph(services=Services.build(settings, store=store, backends=backends))


async def test_a_conversation_with_an_image_resumes_on_firestore(
    emulator: FirestoreEmulator, tmp_path: Path, local_backends: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.cloud import firestore

    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", emulator.host)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", emulator.project)
    emulator.wipe(DATABASE)
    buf = io.BytesIO()
    Image.frombytes("RGB", (577, 577), os.urandom(577 * 577 * 3)).save(buf, "PNG")
    image = buf.getvalue()  # 1 MB: inline, it could not fit a Firestore document with anything else
    block = {
        "type": "image",
        "base64": base64.b64encode(image).decode(),
        "mime_type": "image/png",
    }
    config = {"configurable": {"session_id": "fs-img"}}
    digest = hashlib.sha256(image).hexdigest()[:12]
    said = f"[stand-in received image/png 577x577, {len(image):,} bytes, sha256 {digest}]"

    g = _graph(emulator, tmp_path, local_backends)
    out = await g.ainvoke(
        {
            "messages": [HumanMessage(content=[{"type": "text", "text": "Keep this"}, block])],
            "model": "gemini",
        },
        config=config,
    )
    assert out["error"] is None and said in out["messages"][-1].text

    from graph.memory.firestore import document_id

    raw = firestore.Client(project=emulator.project, database=DATABASE)
    session = raw.collection(COLLECTION).document(document_id("fs-img", "local"))  # the local user's
    docs = [d.to_dict() for d in session.collection("messages").stream()]
    question = next(d for d in docs if d["role"] == "human")
    size = len(json.dumps(question, default=str).encode())
    assert size < 2_000, f"the question's document is {size:,} bytes"
    assert [p.read_bytes() for p in (tmp_path / "files").rglob("*") if p.is_file()] == [image]

    again = _graph(emulator, tmp_path, local_backends)  # a restart: new store and graph objects
    out = await again.ainvoke(
        {"messages": [HumanMessage("What did I send?")], "model": "gemini"}, config=config
    )
    assert out["error"] is None and said in out["messages"][-1].text
