"""API keys per user: the store (SQLite and the REAL Firestore emulator, same assertions), the
`hybrid-chat keys` command, and signing in to the OpenAI-compatible endpoint with them through the
official `openai` SDK (its `api_key`)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from graph.client import ChatClient
from graph.memory.keys import KeyStore, key_store
from tests.browser.appserver import serve_app
from tests.conftest import local_settings
from tests.fakes import ScriptedBackends
from tests.support.firestore_emulator import FirestoreEmulator, firestore_emulator
from tests.test_openai_api import EchoModel

pytestmark = pytest.mark.timeout(120)
DATABASE = "keys-db"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def emulator() -> Iterator[FirestoreEmulator]:
    with firestore_emulator(set_env=False) as emu:
        yield emu


@contextlib.asynccontextmanager
async def sqlite_keys(tmp_path: Path) -> AsyncIterator[tuple[KeyStore, Any]]:
    from graph.memory.sqlite import SQLiteConversationStore

    store = SQLiteConversationStore(tmp_path / "chat.db")
    keys = key_store(store)

    def raw() -> list[dict[str, Any]]:
        with contextlib.closing(sqlite3.connect(tmp_path / "chat.db")) as c:
            c.row_factory = sqlite3.Row
            return [dict(r) for r in c.execute("SELECT * FROM api_keys")]

    try:
        yield keys, raw
    finally:
        await keys.aclose()
        await store.aclose()


@contextlib.asynccontextmanager
async def firestore_keys(emu: FirestoreEmulator) -> AsyncIterator[tuple[KeyStore, Any]]:
    from google.cloud import firestore

    from graph.memory.firestore import FirestoreConversationStore

    emu.wipe(DATABASE)
    store = FirestoreConversationStore(project=emu.project, database=DATABASE, collection="chats", timeout=5)
    keys = key_store(store)
    client = firestore.Client(project=emu.project, database=DATABASE)

    def raw() -> list[dict[str, Any]]:
        return [s.to_dict() for s in client.collection("chats_api_keys").stream()]

    try:
        yield keys, raw
    finally:
        await keys.aclose()
        await store.aclose()
        client.close()


@pytest.fixture(params=["sqlite", pytest.param("firestore", marks=pytest.mark.integration)])
def kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "firestore":
        emu = request.getfixturevalue("emulator")
        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", emu.host)
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", emu.project)
    return str(request.param)


def opened(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    return sqlite_keys(tmp_path) if kind == "sqlite" else firestore_keys(request.getfixturevalue("emulator"))


async def test_a_key_signs_in_as_its_user_until_revoked(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with opened(kind, request, tmp_path) as (keys, raw):
        alice = await keys.acreate("alice", "  open   webui ")
        other = await keys.acreate("alice")
        bob = await keys.acreate("bob", "ci")
        assert alice.key.startswith(alice.record.prefix) and len(alice.key) == len("hck_") + 12 + 1 + 43
        assert len({alice.key, other.key, bob.key}) == 3 and alice.record.name == "open webui"

        # Stored: the SHA-256 of the key, never the key or its secret part.
        rows = raw()
        assert len(rows) == 3
        assert hashlib.sha256(alice.key.encode()).hexdigest() in {r["key_hash"] for r in rows}
        secret = alice.key.rsplit("_", 1)[1]
        assert not any(secret in str(v) for r in rows for v in r.values())

        assert (await keys.acheck(alice.key)).user_id == "alice"  # type: ignore[union-attr]
        assert (await keys.acheck(bob.key)).user_id == "bob"  # type: ignore[union-attr]
        wrong_secret = alice.key[:-4] + ("AAAA" if not alice.key.endswith("AAAA") else "BBBB")
        for bad in (
            wrong_secret,
            bob.record.prefix + secret,
            "hck_nothing",
            "",
            "hck_" + "0" * 12 + "_" + "x" * 43,
        ):
            assert await keys.acheck(bad) is None, bad

        listed = await keys.alist("alice")
        assert [k.id for k in listed] == sorted(
            [alice.record.id, other.record.id], key=[alice.record.id, other.record.id].index
        )
        assert all(k.active for k in listed) and [k.id for k in await keys.alist("bob")] == [bob.record.id]
        assert await keys.alist("carol") == []

        revoked = await keys.arevoke(alice.record.prefix)  # the prefix names the key too
        assert revoked is not None and revoked.id == alice.record.id and revoked.revoked_at is not None
        assert await keys.acheck(alice.key) is None
        assert (await keys.acheck(other.key)).user_id == "alice"  # type: ignore[union-attr]
        again = await keys.arevoke(alice.record.id)  # idempotent: the first revocation time stays
        assert again is not None and again.revoked_at == revoked.revoked_at
        assert await keys.arevoke("0123456789ab") is None
        states = {k.id: k.active for k in await keys.alist("alice")}
        assert states == {alice.record.id: False, other.record.id: True}


async def test_keys_are_checked_concurrently_without_mixing_users(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with opened(kind, request, tmp_path) as (keys, _):
        made = [await keys.acreate(f"user{i}") for i in range(6)]
        found = await asyncio.gather(*(keys.acheck(k.key) for k in made * 5))
        assert [r.user_id for r in found] == [k.record.user_id for k in made * 5]  # type: ignore[union-attr]


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], db: Path, *argv: str) -> Any:
    from graph.settings import get_settings
    from ui.cli import main

    monkeypatch.setenv("HYBRID_CHAT_SQLITE_PATH", str(db))
    get_settings.cache_clear()
    try:
        code = main(list(argv))
    finally:
        get_settings.cache_clear()
    out = capsys.readouterr()
    return code, out.out, " ".join(out.err.split())  # rich wraps to the terminal's width


def echo_app(tmp_path: Path, **overrides: Any) -> tuple[Any, EchoModel]:
    from ui.server import create_app

    model = EchoModel()
    settings = local_settings(tmp_path, **overrides)
    backends = ScriptedBackends(settings, {"gemma": model, "gemini": model})
    return create_app(settings, client=ChatClient.from_settings(settings, backends=backends)), model


def test_cli_keys_sign_in_to_the_endpoint_until_revoked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "chat.db"
    code, key, err = run_cli(monkeypatch, capsys, db, "keys", "create", "--user", "alice", "--name", "webui")
    key = key.strip()
    assert code == 0 and key.startswith("hck_") and "cannot be shown again" in err
    code, listing, _ = run_cli(monkeypatch, capsys, db, "keys", "list", "--user", "alice")
    key_id = key.split("_")[1]
    assert code == 0 and key_id in listing and "active" in listing and "webui" in listing
    assert key.rsplit("_", 1)[1] not in listing  # the secret is never shown again

    app, model = echo_app(tmp_path, auth_users="alice:wonder,bob:builder")
    with serve_app(app) as base:

        def sdk(api_key: str) -> openai.OpenAI:
            return openai.OpenAI(base_url=f"{base}/v1", api_key=api_key, max_retries=0)

        answer = sdk(key).chat.completions.create(
            model="hybrid-chat/gemma", messages=HI, metadata={"conversation_id": "c-alice"}
        )
        assert answer.choices[0].message.content == "echo:hi"
        assert [c.session_id for c in asyncio.run(app.state.chat.conversations("alice")).conversations] == [
            "c-alice"
        ]
        assert next(m.id for m in sdk(key).models.list()) == "hybrid-chat/auto"

        wrong = key[:-3] + ("abc" if not key.endswith("abc") else "xyz")
        for bad in (
            "unused",
            wrong,
            "hck_bogus",
        ):  # no key at all (password mode), a wrong one, a malformed one
            with pytest.raises(openai.AuthenticationError) as refused:
                sdk(bad).chat.completions.create(model="hybrid-chat/gemma", messages=HI)
            body = refused.value.body
            assert isinstance(body, dict) and body.get("type") == "authentication_error", body
            assert wrong not in str(body)

        code, _, err = run_cli(monkeypatch, capsys, db, "keys", "revoke", key_id)
        assert code == 0 and "Revoked" in err
        with pytest.raises(openai.AuthenticationError):  # the server caches nothing: refused at once
            sdk(key).chat.completions.create(model="hybrid-chat/gemma", messages=HI)
        with pytest.raises(openai.AuthenticationError):
            sdk(key).models.list()
    code, listing, _ = run_cli(monkeypatch, capsys, db, "keys", "list", "--user", "alice")
    assert "revoked" in listing
    code, _, err = run_cli(monkeypatch, capsys, db, "keys", "revoke", "0123456789ab")
    assert code == 1 and "no key" in err
    assert model.prompts and all(p[-1].content == "hi" for p in model.prompts)
    assert len(model.prompts) == 1  # nothing refused reached the model


async def test_without_sign_in_a_key_still_names_its_user(tmp_path: Path) -> None:
    """Auth mode none (the local user): OpenAI clients need some api_key, so a placeholder is the local
    user; a real key names its user; a revoked or wrong one is refused, never the local user."""
    from tests.test_openai_api import post

    app, _ = echo_app(tmp_path)
    keys = key_store(app.state.chat.client.store)
    new = await keys.acreate("alice")
    body = {"model": "hybrid-chat/gemma", "messages": HI, "metadata": {"conversation_id": "c1"}}
    assert (await post(app, body, headers={"Authorization": "Bearer unused"})).status_code == 200
    body["metadata"] = {"conversation_id": "c2"}
    assert (await post(app, body, headers={"Authorization": f"Bearer {new.key}"})).status_code == 200
    chats = app.state.chat
    assert [c.session_id for c in (await chats.conversations("local")).conversations] == ["c1"]
    assert [c.session_id for c in (await chats.conversations("alice")).conversations] == ["c2"]
    await keys.arevoke(new.record.id)
    body["metadata"] = {"conversation_id": "c3"}
    r = await post(app, body, headers={"Authorization": f"Bearer {new.key}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert [c.session_id for c in (await chats.conversations("local")).conversations] == ["c1"]
    await keys.aclose()


@pytest.mark.integration
def test_keys_and_saved_turns_in_firestore_through_the_server(
    emulator: FirestoreEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The cluster's set-up: keys made by the CLI in Firestore (the real emulator), checked by the
    server on its own event loop, the turn saved into the caller's conversation there."""
    from ui.server import create_app

    emulator.wipe(DATABASE)
    firestore_env = {
        "FIRESTORE_EMULATOR_HOST": emulator.host,
        "GOOGLE_CLOUD_PROJECT": emulator.project,
        "HYBRID_CHAT_MEMORY": "firestore",
        "HYBRID_CHAT_FIRESTORE_PROJECT": emulator.project,
        "HYBRID_CHAT_FIRESTORE_DATABASE": DATABASE,
    }
    for name, value in firestore_env.items():
        monkeypatch.setenv(name, value)
    code, key, _ = run_cli(monkeypatch, capsys, tmp_path / "unused.db", "keys", "create", "--user", "alice")
    key = key.strip()
    assert code == 0 and key.startswith("hck_")

    model = EchoModel()
    settings = local_settings(
        tmp_path,
        auth_users="alice:wonder",
        memory="firestore",
        firestore_project=emulator.project,
        firestore_database=DATABASE,
    )
    backends = ScriptedBackends(settings, {"gemma": model, "gemini": model})
    app = create_app(settings, client=ChatClient.from_settings(settings, backends=backends))
    with serve_app(app) as base:
        sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
        for text in ("first", "second"):
            answer = sdk.chat.completions.create(
                model="hybrid-chat/gemma",
                messages=[{"role": "user", "content": text}],
                extra_headers={"x-hybrid-chat-conversation": "fs-1"},
            )
            assert (answer.model_extra or {})["hybrid_chat"]["saved"] is True
        assert answer.choices[0].message.content == "echo:first|second"
        code, _, _ = run_cli(monkeypatch, capsys, tmp_path / "unused.db", "keys", "revoke", key.split("_")[1])
        assert code == 0
        with pytest.raises(openai.AuthenticationError):
            sdk.chat.completions.create(model="hybrid-chat/gemma", messages=HI)
    store = app.state.chat.client.store
    texts = [m.text for m in asyncio.run(store.history("fs-1", "alice").aget_messages())]
    assert texts == ["first", "echo:first", "second", "echo:first|second"]
    asyncio.run(store.aclose())
