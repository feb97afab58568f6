"""Issue 17, finding 10: conversation ids are scoped to their owner.

A client-chosen id used to be first come, first served: bob could take "project-x" before alice used it,
and alice's requests with it then failed. Now each user's "project-x" is their own conversation, through
`POST /api/chat` on both stores (SQLite, and Firestore on the real emulator), and "not yours" reads as
"not found". The model is an echo (`tests.hardening.conftest.echo`): an answer repeats every user
message the model was given, so any message crossing from one user's conversation to the other's shows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from graph.client import ChatClient
from graph.memory.contract import ConversationNotFound
from tests.conftest import local_settings
from tests.fakes import ScriptedBackends
from tests.hardening.conftest import FS_COLLECTION, FS_DATABASE, ScriptedModel, echo

pytestmark = pytest.mark.timeout(120)
USERS = {"alice": "wonder", "bob": "builder"}


def _app(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    from ui.server import create_app

    overrides: dict[str, Any] = {}
    if kind == "firestore":
        emu = request.getfixturevalue("fs_env")
        overrides = {
            "memory": "firestore",
            "firestore_project": emu.project,
            "firestore_database": FS_DATABASE,
            "firestore_collection": FS_COLLECTION,
        }
    settings = local_settings(
        tmp_path, auth_users=",".join(f"{u}:{p}" for u, p in USERS.items()), **overrides
    )
    model = ScriptedModel(reply=echo, chunk_chars=4)
    backends = ScriptedBackends(settings, {"gemma": model, "gemini": model})
    return create_app(settings, client=ChatClient.from_settings(settings, backends=backends))


async def _say(app: Any, user: str, text: str, session_id: str) -> dict[str, Any]:
    """One `/api/chat` turn as `user` (HTTP Basic); the `done` event."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as client:
        r = await client.post(
            "/api/chat",
            json={"message": text, "session_id": session_id, "model": "gemma"},
            auth=(user, USERS[user]),
        )
    assert r.status_code == 200, r.text
    done = [json.loads(b.split("data: ", 1)[1]) for b in r.text.split("\n\n") if b.startswith("event: done")]
    assert len(done) == 1, r.text
    return done[0]


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("firestore", marks=pytest.mark.integration)])
async def test_api_chat_two_users_with_the_same_id_get_two_conversations(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Bob uses the predictable id "project-x" first; alice's turns with it still work, in her own
    conversation, and each user's model sees, and each user lists, only their own."""
    app = _app(kind, tmp_path, request)
    chats = app.state.chat

    done = await _say(app, "bob", "bob squats", "project-x")
    assert (done["kind"], done["text"], done["session_id"]) == ("answer", "echo:bob squats", "project-x")
    done = await _say(app, "alice", "alice's plan", "project-x")
    assert (done["kind"], done["text"], done["session_id"]) == ("answer", "echo:alice's plan", "project-x")
    assert (await _say(app, "bob", "bob again", "project-x"))["text"] == "echo:bob squats|bob again"
    assert (await _say(app, "alice", "and then", "project-x"))["text"] == "echo:alice's plan|and then"

    async def humans(user: str) -> list[str]:
        return [m.text for m in await chats.messages(user, "project-x") if m.type == "human"]

    assert await humans("alice") == ["alice's plan", "and then"]
    assert await humans("bob") == ["bob squats", "bob again"]
    for user in USERS:
        listed = (await chats.conversations(user)).conversations
        assert [(c.session_id, c.user_id, c.message_count) for c in listed] == [("project-x", user, 4)]

    # Bob renaming, cutting and deleting his "project-x" leaves alice's as it was.
    await chats.rename("bob", "project-x", "Bob's project")
    bobs = await chats.messages("bob", "project-x")
    assert await chats.truncate("bob", "project-x", str(bobs[2].id)) == 2
    await chats.delete("bob", "project-x")
    assert (await chats.conversations("bob")).conversations == []
    assert await humans("alice") == ["alice's plan", "and then"]
    (alices,) = (await chats.conversations("alice")).conversations
    assert (alices.title, alices.message_count) == ("alice's plan", 4)
    await chats.client.aclose()


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("firestore", marks=pytest.mark.integration)])
async def test_another_users_id_reads_exactly_as_an_id_nobody_uses(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Opening, renaming, cutting or deleting alice's conversation as bob gives bob what an id nobody uses
    gives him: the same error, word for word (the page shows one text for both), and alice's is untouched."""
    app = _app(kind, tmp_path, request)
    chats = app.state.chat
    await _say(app, "alice", "private", "alices")

    async def refusals(sid: str) -> list[tuple[type, str]]:
        out = []
        for call in (
            chats.messages("bob", sid),
            chats.rename("bob", sid, "mine"),
            chats.client.check_owner("bob", sid),
        ):
            with pytest.raises(ConversationNotFound) as exc:
                await call
            out.append((type(exc.value), str(exc.value).replace(sid, "<id>")))
        assert await chats.truncate("bob", sid, "any") == 0
        await chats.delete("bob", sid)  # a no-op, as for any id that is not his
        return out

    assert await refusals("alices") == await refusals("nobody-uses-this")
    assert [m.text for m in await chats.messages("alice", "alices")] == ["private", "echo:private"]
    assert (await chats.conversations("alice")).conversations[0].title == "private"
    await chats.client.aclose()
