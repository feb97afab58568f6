"""Headers and disclosure (issue 17, finding 9): security headers on every response (page, API, probes),
a CSP the Gradio page works under (Chromium reports no violation while signing in and chatting), no API
description before sign-in, `/readyz` without raw exception text, rejected IAP assertions logged by kind
at most once a minute.
"""

from __future__ import annotations

import json
import logging
import shutil
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from tests.hardening.conftest import SERVER_PASSWORD, login
from ui.auth import IapError, Identity
from ui.security import SECURITY_HEADERS

EXPECTED = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


def _check(r: httpx.Response) -> None:
    for name, value in EXPECTED.items():
        assert r.headers.get(name) == value, (r.request.url.path, r.status_code, name, r.headers)
    csp = r.headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp, (r.request.url.path, csp)


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_every_response_carries_the_security_headers(chat_server: dict[str, Any]) -> None:
    url = chat_server["url"]
    async with httpx.AsyncClient(base_url=url, timeout=30) as anon:
        for path in ("/", "/healthz", "/readyz", "/metrics", "/gradio_api/info", "/nothing-here"):
            _check(await anon.get(path))
        _check(await anon.post("/api/chat", content=b"{}"))  # 401
        _check(await anon.post("/api/chat", content=b"{}", headers={"origin": "https://evil.example"}))
        _check(await anon.get("/logout"))  # 405
        _check(await anon.post("/login", data={"username": "logger", "password": "nope"}))  # 400
    alice = await login(url, "alice")
    try:
        _check(await alice.get("/"))
        _check(await alice.get("/gradio_api/info"))
        async with alice.stream(
            "POST",
            "/api/chat",
            content=json.dumps({"message": "hi", "model": "gemma"}).encode(),
            headers={"content-type": "application/json"},
            auth=("alice", SERVER_PASSWORD),
        ) as stream:
            assert stream.status_code == 200
            _check(stream)
            await stream.aread()
    finally:
        await alice.aclose()


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_nothing_describes_the_api_before_sign_in(chat_server: dict[str, Any]) -> None:
    async with httpx.AsyncClient(base_url=chat_server["url"], timeout=30) as anon:
        chat = await anon.get("/")
        assert chat.status_code == 303 and chat.headers["location"] == "signin"  # to the sign-in form
        assert "gradio_api_info" not in chat.text and "named_endpoints" not in chat.text
        page = (await anon.get("/signin")).text
        assert 'name="password"' in page
        assert "gradio_api_info" not in page and "gradio_config" not in page
        assert "/conversations" not in page and "parameter_name" not in page
        for path in ("/openapi.json", "/docs", "/redoc"):
            r = await anon.get(path)
            assert r.status_code in (401, 404), (path, r.status_code)
            assert "/login" not in r.text and "paths" not in r.text
        assert (await anon.get("/gradio_api/info")).status_code == 401
    alice = await login(chat_server["url"], "alice")
    try:  # signed in, Gradio's own API page still works (gradio_client reads /gradio_api/info)
        assert "/chat" in (await alice.get("/gradio_api/info")).json()["named_endpoints"]
    finally:
        await alice.aclose()


class _Verifier:
    def __init__(self) -> None:
        self.reason = "malformed token"

    async def verify(self, token: str) -> dict[str, Any]:
        raise IapError(f"malformed assertion: {token}", self.reason)


async def test_a_flood_of_bad_iap_tokens_is_logged_once_per_reason_per_minute(
    caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    from tests.conftest import local_settings

    now = [0.0]
    verifier = _Verifier()
    identity = Identity(
        local_settings(tmp_path, trust_iap=True, iap_audience="/projects/1/global/backendServices/2"),
        verifier=verifier,  # type: ignore[arg-type]
        clock=lambda: now[0],
    )

    def request(token: str) -> Any:
        return SimpleNamespace(headers={"x-goog-iap-jwt-assertion": token})

    with caplog.at_level(logging.WARNING, logger="ui.auth"):
        for i in range(500):
            assert await identity.iap_user(request(f"FORGED-TOKEN-{i}\n[fake log line]")) is None
        verifier.reason = "not ES256"
        for i in range(10):
            await identity.iap_user(request(f"FORGED-TOKEN-alg-{i}"))
        now[0] += 61
        verifier.reason = "malformed token"
        await identity.iap_user(request("FORGED-TOKEN-late"))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert "malformed token" in lines[0] and "not ES256" in lines[1]
    assert "499 more" in lines[2]
    assert "FORGED-TOKEN" not in caplog.text and "fake log line" not in caplog.text


@pytest.mark.browser
@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_the_page_works_under_its_csp_in_chromium(chat_server: dict[str, Any]) -> None:
    """Sign in on the login page and chat once, in Chromium: no CSP violation reported."""
    from playwright.async_api import async_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    from tests.browser.conftest import CHROMIUM_ARGS

    violations: list[str] = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            page.on(
                "console",
                lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None,
            )
            await page.add_init_script(
                "document.addEventListener('securitypolicyviolation', e => console.error("
                "'Content Security Policy violation: ' + e.violatedDirective + ' ' + e.blockedURI))"
            )
            response = await page.goto(chat_server["url"] + "/")
            assert response is not None
            assert "frame-ancestors 'none'" in (await response.all_headers())["content-security-policy"]
            await page.get_by_label("User name").fill("smoke")  # the sign-in form, under the same CSP
            await page.get_by_label("Password").fill(SERVER_PASSWORD)
            await page.get_by_role("button", name="Sign in").click()
            box = page.locator("#hc-input textarea")
            await box.wait_for(timeout=30_000)
            await box.fill("Hello under a CSP")
            await box.press("Enter")
            await page.locator("#hc-chatbot").get_by_test_id("bot").first.wait_for(timeout=30_000)
            await page.wait_for_timeout(500)
        finally:
            await browser.close()
    assert violations == [], violations


def test_the_headers_the_edge_sets() -> None:
    assert {k: SECURITY_HEADERS[k] for k in EXPECTED} == EXPECTED
