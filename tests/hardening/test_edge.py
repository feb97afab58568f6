"""The app's edge, attacked as a foreign site and as a stranger would (issue 17, findings 1 and 2).

A page on another site must not read a signed-in user's data, nor post on their behalf; sign-in cookies
are `SameSite=Lax`; sign-out is a POST. No request body is read past the limit, whoever sends it, and
the server's memory stays flat while someone tries; errors never echo what was sent.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.hardening.conftest import ALLOWED_ORIGIN, SERVER_PASSWORD, call_api, login, new_id

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PUBLIC_HOST = "chat.example.com"  # the Host a browser sends to a deployed server (not localhost)
EVIL = "https://evil.example"
LIMIT = 1_048_576  # HYBRID_CHAT_MAX_REQUEST_BYTES's default


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_a_foreign_site_cannot_read_a_signed_in_users_conversations(
    chat_server: dict[str, Any],
) -> None:
    alice = await login(chat_server["url"], "alice")
    try:
        await call_api(alice, "chat", "alice's secret plan", "gemma", new_id(), None, None)
        body = json.dumps({"data": []})
        # What a page on evil.example gets when its script calls the API with the user's cookies:
        for origin_host in (PUBLIC_HOST, "127.0.0.1"):
            headers = {"origin": EVIL, "host": origin_host, "content-type": "application/json"}
            r = await alice.post("/gradio_api/call/conversations", content=body, headers=headers)
            assert r.status_code == 403, r.text
            assert "access-control-allow-origin" not in r.headers
            assert "event_id" not in r.text
            preflight = await alice.options(
                "/gradio_api/call/conversations",
                headers={"origin": EVIL, "host": origin_host, "access-control-request-method": "POST"},
            )
            assert "access-control-allow-origin" not in preflight.headers
            assert preflight.status_code >= 400
        # A cross-site form post (no CORS involved) is refused too.
        r = await alice.post(
            "/api/chat", content=b'{"message": "x"}', headers={"origin": EVIL, "host": PUBLIC_HOST}
        )
        assert r.status_code == 403
        # The app's own pages (Origin = the host the browser used) and a configured site still work.
        own = await alice.post(
            "/gradio_api/call/conversations",
            content=body,
            headers={
                "origin": f"https://{PUBLIC_HOST}",
                "host": PUBLIC_HOST,
                "content-type": "application/json",
            },
        )
        assert own.status_code == 200 and "event_id" in own.json()
        allowed = await alice.post(
            "/gradio_api/call/conversations",
            content=body,
            headers={"origin": ALLOWED_ORIGIN, "host": PUBLIC_HOST, "content-type": "application/json"},
        )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        assert allowed.headers["access-control-allow-credentials"] == "true"
    finally:
        await alice.aclose()


async def test_sign_in_cookies_are_same_site_lax_and_secure_behind_https(chat_server: dict[str, Any]) -> None:
    async with httpx.AsyncClient(base_url=chat_server["url"]) as client:
        for proto in ("http", "https"):
            r = await client.post(
                "/login",
                data={"username": "alice", "password": SERVER_PASSWORD},
                headers={"x-forwarded-proto": proto},
            )
            assert r.status_code == 200
            cookies = r.headers.get_list("set-cookie")
            assert len(cookies) == 2, cookies
            for cookie in cookies:
                attrs = [a.strip().lower() for a in cookie.split(";")]
                assert "samesite=lax" in attrs and "samesite=none" not in attrs, cookie
                assert "httponly" in attrs
                if proto == "https":
                    assert "secure" in attrs, cookie


async def test_sign_out_is_a_post(chat_server: dict[str, Any]) -> None:
    alice = await login(chat_server["url"], "alice")
    try:
        r = await alice.get("/logout")  # what an <img src=".../logout"> on another site would send
        assert r.status_code == 405
        await call_api(alice, "conversations")  # still signed in
        r = await alice.post("/logout", headers={"origin": chat_server["url"]})
        assert r.status_code in (302, 307), r.status_code
        r = await alice.post(
            "/gradio_api/call/conversations",
            content=b'{"data": []}',
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 401
    finally:
        await alice.aclose()


async def _raw_post(url: str, path: str, head: dict[str, str], body_part: bytes) -> tuple[int, bytes, float]:
    """POST with a declared Content-Length but only `body_part` of the body sent: (status, reply, seconds).
    A server that waited for the whole body would never answer (the test's timeout)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {parts.netloc}",
        *(f"{k}: {v}" for k, v in head.items()),
        "",
        "",
    ]
    writer.write("\r\n".join(lines).encode() + body_part)
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(65536), 10)
    elapsed = loop.time() - started
    writer.close()
    status = int(reply.split(b" ", 2)[1])
    return status, reply, elapsed


async def test_a_huge_body_is_refused_before_it_is_read(chat_server: dict[str, Any]) -> None:
    url, pid = chat_server["url"], chat_server["pid"]
    before = rss_mb(pid)
    # A stranger announcing 300 MB: refused at once, whatever route (ours or Gradio's).
    for path in ("/api/chat", "/gradio_api/queue/join", "/gradio_api/upload", "/login"):
        status, reply, elapsed = await _raw_post(
            url,
            path,
            {"Content-Type": "application/json", "Content-Length": str(300 * 2**20)},
            b'{"message": "',
        )
        assert status == 413, (path, reply[:200])
        assert elapsed < 5
    # A signed-in user streaming 8 MB without a length (chunked): cut off past the limit, with 413.
    alice = await login(url, "alice")
    try:

        async def chunks() -> Any:
            yield b'{"message": "'
            for _ in range(64):
                yield b"A" * 131072
            yield b'"}'

        basic = httpx.BasicAuth("alice", SERVER_PASSWORD)
        for path, auth in (("/api/chat", basic), ("/gradio_api/queue/join", None)):
            r = await alice.post(
                path, content=chunks(), headers={"content-type": "application/json"}, auth=auth
            )
            assert r.status_code == 413, (path, r.status_code, r.text[:200])
            assert len(r.content) < 1000  # nothing of the body echoed back
    finally:
        await alice.aclose()
    grown = rss_mb(pid) - before
    assert grown < 40, f"the server grew by {grown:.0f} MB while refusing large bodies"


async def test_errors_never_echo_the_request(chat_server: dict[str, Any]) -> None:
    auth = httpx.BasicAuth("alice", SERVER_PASSWORD)
    marker = "SECRET-INPUT-" + "x" * 5000
    async with httpx.AsyncClient(base_url=chat_server["url"], auth=auth) as client:
        for body in (
            json.dumps({"message": 42, "model": marker}),  # wrong types
            json.dumps({"nothing": marker}),  # missing field
            '{"message": "' + marker,  # not JSON
        ):
            r = await client.post("/api/chat", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400, r.text[:200]
            assert "SECRET-INPUT" not in r.text
            assert "message" in r.json()["detail"] or "body" in r.json()["detail"]
    # Unauthenticated: 401 without the body being looked at.
    async with httpx.AsyncClient(base_url=chat_server["url"]) as anon:
        r = await anon.post(
            "/api/chat", content='{"message": 1}', headers={"content-type": "application/json"}
        )
        assert r.status_code == 401
