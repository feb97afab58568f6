"""The browser chat's logic without a browser: limits, identity, the chat service, the app's endpoints,
isolation between users through the UI's API, and graceful shutdown of `hybrid-chat serve`."""

from __future__ import annotations

import asyncio
import html
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.auth import jwt as gjwt
from google.auth.crypt import es256
from pydantic import SecretStr

from graph.backends import Backends
from graph.client import ChatClient
from graph.memory.contract import META_KEY, ConversationNotFound
from graph.memory.sqlite import SQLiteConversationStore
from graph.settings import Settings
from tests.browser.appserver import serve_app
from tests.conftest import local_settings
from tests.support.server import free_port
from ui.auth import IapError, IapVerifier, Identity, parse_auth_users, parse_iap_email_header
from ui.chat import (
    ChatService,
    Delta,
    Done,
    answer_row,
    chatbot_value,
    decorations,
    meta_line,
    model_choices,
    reference,
    row_decoration,
    rows_from_messages,
    turn_params,
    user_row,
)
from ui.handlers import plain_title
from ui.health import HealthBoard
from ui.limits import LimitExceeded, RateLimiter, check_message
from ui.security import SESSION_COOKIES

AUD = "/projects/123/global/backendServices/456"
pytestmark = [  # Gradio's queue calls pandas APIs that pandas 3 deprecates; not ours to fix.
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


# --- limits ---------------------------------------------------------------------------------
def test_message_length_limit() -> None:
    assert check_message("  hi  ", 10) == "  hi"
    code = "    def f():\n        return 1"  # pasted code keeps its first line's indentation
    assert check_message(f"\n  \n{code}\n\n", 100) == code
    with pytest.raises(LimitExceeded, match="empty"):
        check_message("   ", 10)
    with pytest.raises(LimitExceeded, match="11 characters long; the limit is 10"):
        check_message("x" * 11, 10)


async def test_rate_limit_is_a_token_bucket_per_user() -> None:
    now = [0.0]
    limiter = RateLimiter(3, clock=lambda: now[0])
    for _ in range(3):
        await limiter.acquire("alice")
    with pytest.raises(LimitExceeded, match=r"limit: 3 a minute\). Try again in 20 s"):
        await limiter.acquire("alice")
    await limiter.acquire("bob")  # users do not share a bucket
    now[0] = 19.0
    assert await limiter.retry_after("alice") == pytest.approx(1.0)
    now[0] = 20.0
    await limiter.acquire("alice")  # refilled at 3 a minute
    await RateLimiter(0).acquire("anyone")  # 0 = no limit


def test_turn_params_are_validated_and_clamped(tmp_path: Path) -> None:
    s = local_settings(tmp_path)
    p = turn_params(s, "gemini", 9, -1, 10**9, "Be brief.")
    assert (p.model, p.temperature, p.top_p, p.max_tokens) == ("gemini", 2.0, 0.01, 8192)
    assert turn_params(s, None, "nan", None, None, None).temperature == s.temperature
    with pytest.raises(LimitExceeded, match="Unknown model"):
        turn_params(s, "gpt-5")
    with pytest.raises(LimitExceeded, match="persona"):
        turn_params(s, "auto", system_prompt="x" * (s.max_message_chars + 1))


def test_answer_rendering() -> None:
    meta = {
        "backend_label": "Gemma",
        "route_reason": "auto: preferred gemma",
        "ttft_ms": 95.4,
        "tokens_per_s": 111.6,
    }
    assert meta_line(meta) == "Gemma · auto: preferred gemma · first token 95 ms · 112 tok/s"
    assert meta_line({"interrupted": "stopped"}) == "stopped"
    # An interruption's detail (an exception's text, an address) stays off the screen.
    cut = meta_line({"interrupted": "ServiceUnavailable: 503 ... ipv4:127.0.0.1:7899"}, ref="ab12cd34")
    assert cut == "cut off: the model stopped answering · reference ab12cd34"
    assert meta_line({"finish_reason": "length"}) == "cut at the token limit"

    # The chat's value is the answer's own text: the footer travels beside it, as escaped data.
    rows = [
        user_row("# not a heading", "h1"),
        answer_row("```python\ndef f(", {**meta, "finish_reason": "length"}, row_id="a1", turn="h1"),
    ]
    assert chatbot_value(rows) == [
        {"role": "user", "content": "# not a heading"},
        {
            "role": "assistant",
            "content": "```python\ndef f(",
            "options": [{"label": "Continue", "value": "continue"}],
        },
    ]
    decor = decorations(rows, "s1")
    assert "<span" not in decor and "&quot;typed&quot;: &quot;# not a heading&quot;" in decor
    data = json.loads(html.unescape(decor.split('data-hc="')[1].split('"')[0]))
    assert data["sid"] == "s1" and data["rows"][1]["cls"] == "hc-meta hc-turn-h1"
    assert "cut at the token limit" in data["rows"][1]["line"]

    failed = answer_row("Gemma is unavailable.", {"backend": "gemma", "error": "connect"}, row_id="e1")
    assert failed["kind"] == "backend_error"
    assert row_decoration(failed)["line"].endswith(f"reference {reference('e1')}")
    assert chatbot_value([failed])[0]["options"] == [{"label": "Retry with Gemini", "value": "retry:gemini"}]
    assert chatbot_value([failed], ("auto", "gemma"))[0].get("options") is None  # no Gemini to offer

    fell_back = answer_row("Hi", {"backend": "gemini", "requested_backend": "gemma", "fallback": True})
    assert row_decoration(fell_back)["badge"] == "answered by Gemini: Gemma unavailable"
    assert "badge" not in row_decoration(answer_row("Hi", {"backend": "gemma", "requested_backend": "gemma"}))


def test_conversation_titles_are_plain_text() -> None:
    assert plain_title("# comment def __init__(self): pass") == "comment def __init__(self): pass"
    assert plain_title("**Bold** and `code`, [a link](http://x)") == "Bold and code, a link"
    assert plain_title("a * b = c") == "a * b = c"


def test_model_choices_say_what_answers(tmp_path: Path) -> None:
    client = ChatClient.from_settings(local_settings(tmp_path))
    labels = dict((value, label) for label, value in model_choices(client))
    assert labels["gemma"].startswith("Gemma stand-in: SmolLM2") and "12B" not in labels["gemma"]
    assert labels["gemini"].startswith("Gemini stand-in: SmolLM2") and "2.5" not in labels["gemini"]
    assert "picks Gemma or Gemini" in labels["auto"]
    real = local_settings(tmp_path, gemma_base_url="http://vllm:8000/v1", gemini_project="my-project")
    labels = dict((v, label) for label, v in model_choices(ChatClient.from_settings(real)))
    assert "stand-in" not in labels["gemma"] + labels["gemini"]


def test_health_board_prefers_the_circuit_breaker() -> None:
    now = [100.0]
    breaker = SimpleNamespace(state="closed", seconds_until_probe=lambda: 12.0)
    board = HealthBoard(SimpleNamespace(breakers={"gemma": breaker}), clock=lambda: now[0])
    assert board.status("gemma").state == "unknown"
    board.record_answer({"backend": "gemini", "route_reason": "fallback: gemma unavailable"}, failed=False)
    assert board.status("gemma").state == "failing" and board.status("gemini").state == "up"
    breaker.state = "open"
    assert board.status("gemma").state == "down" and not board.status("gemma").usable
    assert 'data-state="down"' in board.html()
    assert 'Gemma <span class="hc-health-state">down</span>' in board.html()  # a legend in words


# --- identity -------------------------------------------------------------------------------
def test_iap_email_header_format() -> None:
    assert parse_iap_email_header("accounts.google.com:Alice@Example.com") == "alice@example.com"
    for bad in (None, "", "alice@example.com", "accounts.google.com:", ":a@b.c", "x:not an email"):
        assert parse_iap_email_header(bad) is None


def test_auth_users_parsing() -> None:
    assert parse_auth_users("alice:pw1, bob:p:w2") == [("alice", "pw1"), ("bob", "p:w2")]
    for bad in ("alice", "alice:", ":pw", " , "):
        with pytest.raises(ValueError):
            parse_auth_users(bad)


class _Keys:
    """An ES256 key pair standing in for IAP's, served as IAP serves them (kid -> PEM)."""

    def __init__(self, kid: str = "k1") -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        self.kid = kid
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        self.signer = es256.ES256Signer.from_string(pem, key_id=kid)
        self.public = (
            key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )
        self.fetches = 0

    def transport(self) -> httpx.MockTransport:
        def handler(request: httpx.Request) -> httpx.Response:
            self.fetches += 1
            return httpx.Response(200, json={self.kid: self.public})

        return httpx.MockTransport(handler)

    def token(self, **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "iss": "https://cloud.google.com/iap",
            "aud": AUD,
            "email": "alice@example.com",
            "sub": "accounts.google.com:1234",
            "iat": now,
            "exp": now + 600,
            **claims,
        }
        return gjwt.encode(self.signer, payload).decode()


async def test_iap_jwt_verification() -> None:
    keys = _Keys()
    verifier = IapVerifier(AUD, "https://keys.test/iap", transport=keys.transport())
    assert (await verifier.verify(keys.token()))["email"] == "alice@example.com"
    assert (await verifier.verify(keys.token(email="bob@example.com")))["email"] == "bob@example.com"
    assert keys.fetches == 1  # keys are cached
    bad_tokens = {
        "wrong audience": keys.token(aud="/projects/1/global/backendServices/2"),
        "wrong issuer": keys.token(iss="https://evil.test"),
        "expired": keys.token(iat=int(time.time()) - 1200, exp=int(time.time()) - 600),
        "no e-mail": keys.token(email=None),
        "other key": _Keys().token(),  # same kid, another key: signature fails
        "unknown key id": _Keys("k2").token(),
        "HS256": gjwt.encode(SimpleNamespace(key_id="k1", sign=lambda m: b"x" * 32), {"aud": AUD}).decode(),
        "garbage": "not.a.jwt",
    }
    for why, token in bad_tokens.items():
        with pytest.raises(IapError):
            await verifier.verify(token)
            pytest.fail(f"accepted a token with {why}")


async def test_identity_modes(tmp_path: Path) -> None:
    s = local_settings(tmp_path)
    local = Identity(s)
    assert not {"auth", "auth_dependency"} & local.gradio_kwargs().keys()  # no sign-in in front of Gradio
    assert local.user_of(SimpleNamespace(username="x")) == "local"

    pw = Identity(local_settings(tmp_path, auth_users=SecretStr("alice:pw")))
    kwargs = pw.gradio_kwargs()
    assert "auth" not in kwargs  # not Gradio's in-memory token table: the signed cookie, on any replica
    assert pw.sessions is not None
    cookie = {SESSION_COOKIES[1]: await pw.sessions.issue("alice")}
    assert await kwargs["auth_dependency"](SimpleNamespace(cookies=cookie)) == "alice"
    assert pw.user_of(SimpleNamespace(username="alice")) == "alice"
    with pytest.raises(PermissionError):
        pw.user_of(SimpleNamespace(username=None))

    # No audience yet (first deploy): starts, lets nobody in, says why (tests/test_readiness.py).
    unconfigured = Identity(local_settings(tmp_path, trust_iap=True))
    assert unconfigured.unconfigured is not None and "IAP_AUDIENCE" in unconfigured.unconfigured
    forged = {"x-goog-authenticated-user-email": "accounts.google.com:bob@example.com"}
    assert await unconfigured.iap_user(SimpleNamespace(headers=forged)) is None
    with pytest.raises(ValueError, match="not both"):
        Identity(local_settings(tmp_path, trust_iap=True, auth_users=SecretStr("a:b"), iap_audience=AUD))

    unsigned = Identity(local_settings(tmp_path, trust_iap=True, iap_verify_jwt=False))
    header = {"x-goog-authenticated-user-email": "accounts.google.com:bob@example.com"}
    assert await unsigned.iap_user(SimpleNamespace(headers=header)) == "bob@example.com"
    assert await unsigned.iap_user(SimpleNamespace(headers={})) is None

    keys = _Keys()
    signed = Identity(
        local_settings(tmp_path, trust_iap=True, iap_audience=AUD),
        verifier=IapVerifier(AUD, "https://keys.test/iap", transport=keys.transport()),
    )
    token = keys.token()
    assert await signed.iap_user(SimpleNamespace(headers={"x-goog-iap-jwt-assertion": token})) == (
        "alice@example.com"
    )
    assert await signed.iap_user(SimpleNamespace(headers=header)) is None  # unsigned header alone
    spoofed = {**header, "x-goog-iap-jwt-assertion": token}  # header says bob, the JWT says alice
    assert await signed.iap_user(SimpleNamespace(headers=spoofed)) is None
    assert signed.gradio_kwargs()["auth_dependency"] == signed.iap_user


# --- the chat service -----------------------------------------------------------------------
@pytest.fixture
def service(tmp_path: Path, local_backends: Backends) -> ChatService:
    settings = local_settings(tmp_path)
    backends = Backends(settings, **local_backends.shared_standins())
    return ChatService(ChatClient.from_settings(settings, backends=backends))


async def _turn(svc: ChatService, user: str, sid: str, text: str) -> tuple[list[str], Done]:
    deltas: list[str] = []
    done: Done | None = None
    async for event in svc.turn(user, sid, text, turn_params(svc.settings, "gemma")):
        if isinstance(event, Delta):
            deltas.append(event.text)
        else:
            done = event
    assert done is not None
    return deltas, done


@pytest.mark.integration
async def test_turn_streams_then_saves(service: ChatService) -> None:
    deltas, done = await _turn(service, "alice", "s1", "What is the capital of France?")
    assert len(deltas) >= 2 and deltas[-1] == done.text and "Paris" in done.text
    assert done.kind == "answer" and done.human_saved and done.answer_saved
    assert done.meta["backend"] == "gemma" and done.meta["ttft_ms"] > 0
    stored = await service.messages("alice", "s1")
    assert [m.type for m in stored] == ["human", "ai"] and stored[1].id == done.answer_id


@pytest.mark.integration
async def test_conversations_are_private(service: ChatService) -> None:
    """Conversation ids are scoped to their owner (issue 17, finding 10): bob presenting alice's id reads,
    renames, deletes or cuts nothing of hers, and a turn under that id is a conversation of his own."""
    await _turn(service, "alice", "secret", "Hello")
    with pytest.raises(ConversationNotFound):
        await service.messages("bob", "secret")
    with pytest.raises(ConversationNotFound):
        await service.rename("bob", "secret", "mine now")
    await service.delete("bob", "secret")  # his own (none): nothing of alice's goes
    assert await service.truncate("bob", "secret", "any-id") == 0
    assert [c.session_id for c in (await service.conversations("bob")).conversations] == []
    _, done = await _turn(service, "bob", "secret", "Let me in")
    assert done.kind == "answer"
    bobs = await service.messages("bob", "secret")
    assert [m.content for m in bobs if m.type == "human"] == ["Let me in"]
    alices = await service.messages("alice", "secret")
    assert [m.content for m in alices if m.type == "human"] == ["Hello"] and len(alices) == 2  # untouched


@pytest.mark.integration
async def test_regenerate_cuts_the_conversation_in_place(service: ChatService) -> None:
    """Regenerate and edit forget the dropped turns in the store itself: same conversation, same title."""
    await _turn(service, "alice", "r1", "First question")
    await _turn(service, "alice", "r1", "Second question")
    await service.rename("alice", "r1", "My chat")
    stored = await service.messages("alice", "r1")
    assert await service.truncate("alice", "r1", str(stored[2].id)) == 2
    kept = await service.messages("alice", "r1")
    assert [(m.id, m.content) for m in kept] == [(m.id, m.content) for m in stored[:2]]
    assert kept[1].response_metadata[META_KEY]["backend"] == "gemma"
    conversation = await service.client.store.aget_conversation("r1", "alice")
    assert conversation.title == "My chat" and conversation.message_count == 2
    assert await service.truncate("alice", "r1", "not-stored") == 0
    await _turn(service, "alice", "r1", "Second question, again")
    assert [m.content for m in await service.messages("alice", "r1")][:3] == [
        "First question",
        stored[1].content,
        "Second question, again",
    ]


@pytest.mark.integration
async def test_stopping_a_turn_keeps_what_was_streamed(service: ChatService) -> None:
    params = turn_params(service.settings, "gemma", max_tokens=300)
    got_tokens = asyncio.Event()

    async def consume() -> None:
        async for event in service.turn("alice", "stop1", "Count from 1 to 300, one per line.", params):
            if isinstance(event, Delta) and len(event.text) > 10:
                got_tokens.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_tokens.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await service.saved()
    stored = await service.messages("alice", "stop1")
    assert [m.type for m in stored] == ["human", "ai"]
    assert stored[1].response_metadata[META_KEY]["interrupted"] == "stopped"
    assert 10 < len(str(stored[1].content)) < 1000
    assert not service.active


# --- the app's endpoints --------------------------------------------------------------------
async def _get(app: Any, path: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        return await client.get(path)


async def test_health_ready_and_metrics(tmp_path: Path, local_backends: Backends) -> None:
    from ui.server import create_app

    settings = local_settings(tmp_path)
    app = create_app(settings, client=ChatClient.from_settings(settings, backends=local_backends))
    assert (await _get(app, "/healthz")).json() == {"status": "ok"}
    ready = await _get(app, "/readyz")
    assert ready.status_code == 200 and ready.json()["memory"] == "ok"
    metrics = (await _get(app, "/metrics")).text
    assert "hybrid_chat_ui_turns_total" in metrics and "hybrid_chat_backend_requests_total" in metrics

    app.state.chat.draining = True  # shutting down: take this replica out of the load balancer
    assert (await _get(app, "/readyz")).status_code == 503


async def test_not_ready_when_the_memory_store_is_down(tmp_path: Path, local_backends: Backends) -> None:
    from ui.server import create_app

    (tmp_path / "not-a-dir").write_text("")
    settings = local_settings(tmp_path, sqlite_path=tmp_path / "not-a-dir" / "chat.db")
    store = SQLiteConversationStore(settings.sqlite_path)
    app = create_app(
        settings, client=ChatClient.from_settings(settings, store=store, backends=local_backends)
    )
    ready = await _get(app, "/readyz")
    assert ready.status_code == 503 and ready.json()["memory"] == "unavailable"
    assert "not-a-dir" not in ready.text and "Error" not in ready.text  # the detail is in the log only
    assert (await _get(app, "/healthz")).status_code == 200


async def test_iap_mode_refuses_requests_without_identity(tmp_path: Path, local_backends: Backends) -> None:
    from ui.server import create_app

    settings = local_settings(tmp_path, trust_iap=True, iap_verify_jwt=False)
    app = create_app(settings, client=ChatClient.from_settings(settings, backends=local_backends))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.get("/config")).status_code == 401
        header = {"X-Goog-Authenticated-User-Email": "accounts.google.com:alice@example.com"}
        assert (await client.get("/config", headers=header)).status_code == 200
        assert (await client.get("/healthz")).status_code == 200  # probes do not pass IAP


async def test_iap_mode_with_jwt_verification_refuses_the_unsigned_header(
    tmp_path: Path, local_backends: Backends
) -> None:
    """As deployed (verification on): only IAP's signed assertion signs a user in, and the unsigned
    e-mail header must agree with it."""
    from ui.server import create_app

    keys = _Keys()
    settings = local_settings(tmp_path, trust_iap=True, iap_audience=AUD)
    identity = Identity(
        settings, verifier=IapVerifier(AUD, "https://keys.test/iap", transport=keys.transport())
    )
    client = ChatClient.from_settings(settings, backends=local_backends)
    app = create_app(settings, client=client, identity=identity)
    email = {"X-Goog-Authenticated-User-Email": "accounts.google.com:alice@example.com"}
    signed = {"X-Goog-IAP-JWT-Assertion": keys.token()}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        assert (await http.get("/config")).status_code == 401
        assert (await http.get("/config", headers=email)).status_code == 401  # spoofable alone: refused
        assert (await http.get("/config", headers=signed)).status_code == 200
        assert (await http.get("/config", headers={**signed, **email})).status_code == 200
        other = {"X-Goog-Authenticated-User-Email": "accounts.google.com:eve@example.com"}
        assert (await http.get("/config", headers={**signed, **other})).status_code == 401  # disagrees
        forged = {"X-Goog-IAP-JWT-Assertion": _Keys().token()}  # signed by a key IAP never had
        assert (await http.get("/config", headers=forged)).status_code == 401
        assert (await http.post("/api/chat", json={"message": "hi"}, headers=email)).status_code == 401


@pytest.mark.integration
def test_users_are_isolated_through_the_ui_api(tmp_path: Path, local_backends: Backends) -> None:
    from gradio_client import Client

    from ui.server import create_app

    settings = local_settings(
        tmp_path, auth_users=SecretStr("alice:alice-pw,bob:bob-pw"), rate_limit_per_minute=2
    )
    app = create_app(settings, client=ChatClient.from_settings(settings, backends=local_backends))
    with serve_app(app) as url:
        assert httpx.get(url + "/config").status_code == 401  # not signed in
        alice = Client(url, auth=("alice", "alice-pw"), verbose=False)
        answer = alice.predict("What is the capital of France?", "gemma", "alice-1", api_name="/chat")
        assert "Paris" in answer
        assert [c["session_id"] for c in alice.predict(api_name="/conversations")] == ["alice-1"]
        assert alice.predict("alice-1", api_name="/conversation")[0]["content"].startswith("What is")

        bob = Client(url, auth=("bob", "bob-pw"), verbose=False)
        assert bob.predict(api_name="/conversations") == []
        with pytest.raises(Exception, match="not available") as theirs:
            bob.predict("alice-1", api_name="/conversation")
        with pytest.raises(Exception, match="not available") as missing:
            bob.predict("no-such-conversation", api_name="/conversation")
        assert str(theirs.value) == str(missing.value)  # "not yours" reads the same as "not found"
        # The same id is bob's own conversation (ids are scoped to their owner): nothing of alice's in it.
        bob.predict("Tell me Alice's secrets", "gemma", "alice-1", api_name="/chat")
        theirs_now = bob.predict("alice-1", api_name="/conversation")
        assert [m["content"] for m in theirs_now if m["role"] == "user"] == ["Tell me Alice's secrets"]
        assert "capital of France" not in json.dumps(theirs_now)

        alice.predict("Thanks", "gemma", "alice-1", api_name="/chat")
        with pytest.raises(Exception, match="too fast"):  # 2 a minute
            alice.predict("One more", "gemma", "alice-1", api_name="/chat")
        assert len(alice.predict("alice-1", api_name="/conversation")) == 4


@pytest.mark.integration
def test_gradio_api_turn_says_which_conversation_and_who_answered(
    tmp_path: Path, local_backends: Backends
) -> None:
    from gradio_client import Client

    from ui.server import create_app

    settings = local_settings(tmp_path, rate_limit_per_minute=0)
    app = create_app(settings, client=ChatClient.from_settings(settings, backends=local_backends))
    with serve_app(app) as url:
        client = Client(url, verbose=False)
        api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
        names = {n: [p["parameter_name"] for p in api[n]["parameters"]] for n in ("/chat", "/turn")}
        five = ["message", "model", "session_id", "temperature", "max_tokens"]
        assert names["/chat"] == five  # unchanged: a raw /gradio_api/call/chat sends every input
        assert names["/turn"] == [*five, "top_p", "system_prompt", "files"]
        first = client.predict(
            "What is the capital of France?",
            "gemma",
            "",
            0.0,
            24,
            1.0,
            "Answer in one sentence.",
            api_name="/turn",
        )
        assert re.fullmatch(r"[0-9a-f]{32}", first["session_id"]) and first["done"] and first["saved"]
        assert "Paris" in first["text"] and first["kind"] == "answer"
        assert first["backend"] == "gemma" and "stand-in" in first["backend_label"]
        assert first["route_reason"] == "chosen: gemma" and first["fallback"] is False
        assert first["output_tokens"] > 0 and first["ttft_ms"] > 0 and first["reference"] is None
        again = client.predict("And of Italy?", "gemini", first["session_id"], api_name="/turn")
        assert again["session_id"] == first["session_id"] and again["backend"] == "gemini"
        assert len(client.predict(first["session_id"], api_name="/conversation")) == 4
        text = client.predict("What is the capital of France?", "gemma", max_tokens=24, api_name="/chat")
        assert isinstance(text, str) and "Paris" in text  # /chat still streams text, with its five inputs

        # Files through gradio_client's handle_file (uploaded by the client, checked from their bytes).
        from gradio_client import handle_file

        image = tmp_path / "shot.png"
        image.write_bytes(_png(12, 10))
        seen = client.predict("What is this?", "auto", files=[handle_file(str(image))], api_name="/turn")
        assert seen["backend"] == "gemini" and "Gemma stand-in cannot see images" in seen["route_reason"]
        assert f"image/png 12x10, {len(_png(12, 10))} bytes" in seen["text"]  # the model got these bytes
        only = client.predict("", "gemini", files=[handle_file(str(image))], api_name="/turn")
        assert only["kind"] == "answer" and "image/png 12x10" in only["text"]  # files alone are a message
        stored = client.predict(seen["session_id"], api_name="/conversation")
        assert stored[0]["content"] == "What is this?"
        zipped = tmp_path / "holiday.png"
        zipped.write_bytes(b"PK\x03\x04" + b"\x00" * 64)
        with pytest.raises(Exception, match="ZIP archive"):
            client.predict("Look", "gemini", files=[handle_file(str(zipped))], api_name="/turn")


@pytest.mark.integration
def test_sigterm_lets_a_running_answer_finish(tmp_path: Path) -> None:
    """`hybrid-chat serve` with a browser-like client attached (Gradio's heartbeat stream stays open)."""
    from gradio_client import Client

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRID_CHAT_")}
    env.update(
        {
            "GRADIO_ANALYTICS_ENABLED": "False",
            "HYBRID_CHAT_SQLITE_PATH": str(tmp_path / "c.db"),
            "HYBRID_CHAT_TEMPERATURE": "0",
            "HYBRID_CHAT_LOCAL_MODEL_THREADS": "1",
            "HYBRID_CHAT_SHUTDOWN_GRACE_S": "20",
        }
    )
    exe = str(Path(sys.executable).with_name("hybrid-chat"))
    with open(tmp_path / "serve.log", "w") as log:
        proc = subprocess.Popen(  # noqa: S603
            [exe, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "the server did not start"
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        client = Client(url, verbose=False)
        job = client.submit("Count from 1 to 40, one per line.", "gemma", "", 0, 160, api_name="/chat")
        deadline = time.monotonic() + 60
        while not job.outputs() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert job.outputs(), "the answer did not start streaming"
        streaming_when_stopped = job.outputs()[-1]
        stopped_at = time.monotonic()
        proc.terminate()
        proc.wait(timeout=30)
        assert time.monotonic() - stopped_at < 25
        final = job.result(timeout=5)
        assert len(final) > len(streaming_when_stopped)  # it finished after SIGTERM
        assert "answers drained" in (tmp_path / "serve.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_stored_attachment_reference_becomes_a_chip_in_the_decorations() -> None:
    """The graph stores a reference block (name, type, size; the bytes in its attachment store): the page
    shows those facts under the message, and the message's text stays its own."""
    from langchain_core.messages import HumanMessage

    ref = {"ref": "ab" * 32, "size": 1_234_567, "name": "scan <1>.pdf"}
    block = {"type": "file", "mime_type": "application/pdf", "extras": {"hybrid_chat_attachment": ref}}
    image = {"type": "image", "mime_type": "image/png", "extras": {"hybrid_chat_attachment": {"size": 136}}}
    message = HumanMessage(content=[{"type": "text", "text": "Read"}, block, image], id="h1")
    [row] = rows_from_messages([message])
    assert row["text"] == "Read"
    assert row_decoration(row) == {
        "typed": "Read",
        "files": [
            {"name": "scan <1>.pdf", "mime": "application/pdf", "size": "1.2 MB"},
            {"name": "image", "mime": "image/png", "size": "136 bytes"},
        ],
    }
    assert "scan &lt;1&gt;.pdf" in decorations([row], "s1")  # data in an attribute, never markup
    assert "files" not in row_decoration(user_row("plain", "h2"))


# --- attachments from the page (issue 15) --------------------------------------------------------
def _png(width: int = 8, height: int = 6) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), "blue").save(buf, "PNG")
    return buf.getvalue()


def test_the_message_box_value_splits_into_text_and_files() -> None:
    from ui.handlers import split_input

    box = {"text": "look", "files": [{"path": "/cache/1/a.png", "meta": {}}, "/cache/2/b.pdf"]}
    assert split_input(box) == ("look", ["/cache/1/a.png", "/cache/2/b.pdf"])
    assert split_input({"text": None, "files": None}) == ("", [])
    assert split_input("plain text") == ("plain text", [])  # a caller of the plain box's shape
    assert split_input(None) == ("", [])


def test_uploads_are_checked_from_their_bytes_and_discarded_once_sent(tmp_path: Path) -> None:
    from ui.handlers import discard_uploads, read_uploads

    settings = local_settings(tmp_path)
    shot, zipped = tmp_path / "shot.gif", tmp_path / "holiday.png"
    shot.write_bytes(_png())  # a PNG named .gif: the bytes decide
    zipped.write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    (upload,) = read_uploads([str(shot)], settings)
    assert (upload.name, upload.mime, upload.data) == ("shot.gif", "image/png", _png())
    assert upload.block()["type"] == "image" and upload.block()["mime_type"] == "image/png"
    assert upload.facts() == {"name": "shot.gif", "mime": "image/png", "size": f"{len(_png())} bytes"}
    with pytest.raises(LimitExceeded, match=r"^The attachment 'holiday\.png' .*ZIP archive"):
        read_uploads([str(shot), str(zipped)], settings)
    assert shot.exists() and zipped.exists()  # a refused message keeps its files in the box
    with pytest.raises(LimitExceeded, match="attach it again"):
        read_uploads([str(tmp_path / "gone.png")], settings)
    five = [str(shot)] * 5
    with pytest.raises(LimitExceeded, match="4"):  # HYBRID_CHAT_ATTACHMENT_MAX_COUNT
        read_uploads(five, settings)
    discard_uploads([str(shot), str(tmp_path / "never-there.png")])
    assert not shot.exists()


def test_upload_owners_know_each_path_by_any_spelling(tmp_path: Path) -> None:
    from ui.security import UploadOwners, _event_files

    owners = UploadOwners(limit=2)
    a = tmp_path / "h1" / "a.png"
    owners.add(str(a), "alice")
    owners.add(str(a), "bob")  # the same file uploaded by both: Gradio gives it one path
    assert owners.allows(str(tmp_path / "h1" / ".." / "h1" / "a.png"), "alice")
    assert owners.allows(str(a), "bob") and not owners.allows(str(a), "eve")
    assert not owners.allows(str(tmp_path / "h1" / "b.png"), "alice")
    owners.add(str(tmp_path / "b"), "alice")
    owners.add(str(tmp_path / "c"), "alice")  # over the limit: the oldest is forgotten (refused)
    assert not owners.allows(str(a), "alice")
    data = [{"text": "x", "files": [{"path": "/p/1", "meta": {}}, {"path": 3}]}, None, "gemma"]
    assert _event_files(data) == ["/p/1", ""]


def _echo_service(settings: Settings) -> ChatService:
    """A ChatService on SQLite whose models answer with what they were sent (no model server)."""
    from tests.fakes import ScriptedBackends
    from tests.hardening.conftest import ScriptedModel, echo

    model = ScriptedModel(reply=echo)
    client = ChatClient.from_settings(
        settings,
        store=SQLiteConversationStore(settings.sqlite_path),
        backends=ScriptedBackends(settings, {"gemma": model, "gemini": model}),
    )
    return ChatService(client)


async def test_a_message_of_files_only_goes_as_content_blocks_and_resends_with_them(
    tmp_path: Path,
) -> None:
    import gradio as gr
    from langchain_core.messages import HumanMessage

    from ui.handlers import ChatHandlers

    settings = local_settings(tmp_path)
    service = _echo_service(settings)
    sent: list[Any] = []
    turn = service.turn

    def recording(user: str, sid: str, text: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(text)
        return turn(user, sid, text, *args, **kwargs)

    service.turn = recording  # type: ignore[method-assign]
    h = ChatHandlers(service, Identity(settings), RateLimiter(0))
    request = gr.Request(username=None, session_hash="t1")
    upload = tmp_path / "only.png"
    upload.write_bytes(_png())
    gen = ("gemini", 0.0, 0.9, 16, "")
    outs = [o async for o in h.send({"text": "  ", "files": [str(upload)]}, None, *gen, request=request)]
    st = next(o[2] for o in outs if not isinstance(o[2], dict) and hasattr(o[2], "rows"))
    (question,) = sent[0]
    assert isinstance(question, HumanMessage)
    assert [b["type"] for b in question.content] == ["image"]  # no empty text block
    assert question.content[0]["base64"] and question.content[0]["filename"] == "only.png"
    assert st.rows[0]["files"] == [{"name": "only.png", "mime": "image/png", "size": f"{len(_png())} bytes"}]
    assert not upload.exists()  # Gradio's copy is gone once sent
    # Regenerate resends the question with its file (this page still holds it) ...
    first_answer = gr.RetryData(None, {"index": 1, "value": ""})
    async for _ in h.regenerate(st, *gen, first_answer, request=request):
        pass
    assert isinstance(sent[1][0], HumanMessage) and sent[1][0].content[0]["filename"] == "only.png"
    # ... an earlier question's files are not kept: refused in words rather than resent without them.
    async for _ in h.send("and text now", st, *gen, request=request):
        pass
    with pytest.warns(UserWarning, match="attach them again"):
        async for _ in h.regenerate(st, *gen, first_answer, request=request):
            pass
    assert len(sent) == 3


async def test_every_turn_of_the_page_runs_as_the_signed_in_user(tmp_path: Path) -> None:
    """Send, a starter prompt, Continue, Regenerate, Edit and Retry each reach the signed-in user's
    conversation: none loses Gradio's request on the way (as the local user, a lost request would pass
    unnoticed: everyone is that user)."""
    import gradio as gr

    from ui.handlers import CONTINUE, ChatHandlers

    settings = local_settings(tmp_path, auth_users=SecretStr("alice:a"))
    service = _echo_service(settings)
    h = ChatHandlers(service, Identity(settings), RateLimiter(0))
    alice = gr.Request(username="alice", session_hash="tab")
    gen = ("gemma", 0.0, 0.9, 16, "")
    st: Any = None

    async def run(turns: Any) -> None:
        nonlocal st
        async for out in turns:
            st = out[2] if hasattr(out[2], "rows") else st

    def questions() -> list[str]:
        return [r["text"] for r in st.rows if r["role"] == "user"]

    await run(h.starter(st, *gen, gr.SelectData(None, {"index": 0, "value": {"text": "Hi there"}}), alice))
    await run(h.send("Count to three", st, *gen, request=alice))
    await run(h.follow_up(st, *gen, gr.SelectData(None, {"index": 3, "value": "continue"}), alice))
    assert questions() == ["Hi there", "Count to three", CONTINUE]
    await run(h.regenerate(st, *gen, gr.RetryData(None, {"index": 5, "value": ""}), alice))
    edit = gr.EditData(None, {"index": 4, "value": "Count to four", "previous_value": CONTINUE})
    await run(h.edit_resend(st, *gen, edit, alice))
    assert questions() == ["Hi there", "Count to three", "Count to four"]
    await run(h.follow_up(st, *gen, gr.SelectData(None, {"index": 5, "value": "retry:gemini"}), alice))
    assert st.rows[-1]["meta"]["backend"] == "gemini"
    stored = await service.messages("alice", st.sid)
    assert [m.text for m in stored if m.type == "human"] == questions()


async def test_inline_rename_renames_by_id_and_only_the_owners(tmp_path: Path) -> None:
    """The list's inline rename (`ChatHandlers.rename_listed`, what the page's Enter sends): any entry is
    renamed by its id without opening it, the Title box follows only for the open conversation, another
    user's id renames nothing, and a malformed request or an empty title changes nothing."""
    import gradio as gr

    from ui.handlers import ChatHandlers, Session

    settings = local_settings(tmp_path)
    service = _echo_service(settings)
    signed_in = SimpleNamespace(user_of=lambda request: request.username, mode="password")
    h = ChatHandlers(service, signed_in, RateLimiter(0))  # type: ignore[arg-type]
    alice, bob = (gr.Request(username=u, session_hash=u) for u in ("alice", "bob"))
    for sid in ("open", "other"):
        await _turn(service, "alice", sid, f"Hello {sid}")

    async def titles(user: str) -> dict[str, str]:
        return {c.session_id: c.title for c in (await service.conversations(user)).conversations}

    st = Session(user="alice", sid="open")
    conv, title = await h.rename_listed(json.dumps({"sid": "other", "title": "Trip <b>plan</b>"}), st, alice)
    assert (await titles("alice"))["other"] == "Trip <b>plan</b>"
    assert ("Trip <b>plan</b>", "other") in conv["choices"] and conv["value"] == "open"
    assert title == gr.skip() and st.sid == "open"  # not opened: the chat on screen stays
    conv, title = await h.rename_listed(json.dumps({"sid": "open", "title": "  My   chat "}), st, alice)
    assert title["value"] == "My chat" and (await titles("alice"))["open"] == "My chat"

    with pytest.warns(UserWarning, match="not available"):
        out = await h.rename_listed(json.dumps({"sid": "other", "title": "mine now"}), Session(), bob)
    assert out == (gr.skip(), gr.skip())
    for bad in ("", "not json", "[1, 2]", json.dumps({"sid": 3, "title": "x"}), json.dumps({"title": "x"})):
        assert await h.rename_listed(bad, st, alice) == (gr.skip(), gr.skip())
    with pytest.warns(UserWarning, match="Not renamed: title must not be empty"):
        assert await h.rename_listed(json.dumps({"sid": "open", "title": "  "}), st, alice) == (
            gr.skip(),
            gr.skip(),
        )
    assert await titles("alice") == {"open": "My chat", "other": "Trip <b>plan</b>"}
