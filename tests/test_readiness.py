"""Readiness on a first deploy (issue 12, findings 3 and 6).

- IAP without an audience: the server starts, `/healthz` is 200, `/readyz` and every page and API route
  answer 503 saying sign-in is not configured, and one ERROR line says what to set.
- Credentials: each real backend is checked with the real client and credentials at start-up and every
  `credential_check_s` (vLLM: `GET /v1/models`; Vertex AI: `countTokens`). One that refuses them
  (401/403/404, no credentials) is `misconfigured` and not usable until a check passes; a real answer
  refused that way marks it at once; `/readyz` is 503 with the reason when no backend is usable.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from graph.backends import Backends
from graph.client import ChatClient
from tests.conftest import local_settings
from tests.support.server import running_server
from ui.security import SECURITY_HEADERS

pytestmark = [  # Gradio's queue calls pandas APIs that pandas 3 deprecates; not ours to fix.
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


# --- finding 3: IAP without an audience -------------------------------------------------------
PAGE_PATHS = ("/", "/config", "/gradio_api/info", "/login", "/theme.css", "/gradio_api/queue/join")


async def test_iap_without_an_audience_starts_and_answers_503_until_it_is_set(
    tmp_path: Path, local_backends: Backends, caplog: pytest.LogCaptureFixture
) -> None:
    from ui.server import create_app

    settings = local_settings(tmp_path, trust_iap=True)  # verify_jwt defaults to true; no audience
    with caplog.at_level(logging.ERROR):
        app = create_app(settings, client=ChatClient.from_settings(settings, backends=local_backends))
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors  # said once, at start
    assert "HYBRID_CHAT_IAP_AUDIENCE=/projects/NUMBER/global/backendServices/ID" in errors[0]
    assert "gcloud compute backend-services list" in errors[0] and "projectNumber" in errors[0]

    async with _client(app) as client:
        assert (await client.get("/healthz")).status_code == 200  # the liveness probe does not restart it
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["reason"] == "sign-in is not configured yet: HYBRID_CHAT_IAP_AUDIENCE is not set"
        assert (await client.get("/metrics")).status_code == 200
        # IAP's unsigned header is no way in either: nothing can be verified.
        forged = {"X-Goog-Authenticated-User-Email": "accounts.google.com:alice@example.com"}
        for path in PAGE_PATHS:
            for headers in ({}, forged):
                r = await client.get(path, headers=headers)
                assert r.status_code == 503, (path, r.status_code, r.text[:200])
                assert r.text.startswith("hybrid-chat is not available: sign-in is not configured yet")
                assert len(r.text) < 200 and "Traceback" not in r.text
                for name, value in SECURITY_HEADERS.items():
                    assert r.headers.get(name) == value, (path, name)
        r = await client.post("/api/chat", json={"message": "hi"}, headers=forged)
        assert r.status_code == 503 and r.headers["content-type"] == "application/json"
        assert "HYBRID_CHAT_IAP_AUDIENCE is not set" in r.json()["detail"]
        r = await client.post("/gradio_api/queue/join", json={})
        assert r.status_code == 503


@pytest.mark.integration
def test_hybrid_chat_serve_behind_iap_without_an_audience_does_not_crash_loop(tmp_path: Path) -> None:
    env = {"HYBRID_CHAT_SQLITE_PATH": str(tmp_path / "c.db"), "HYBRID_CHAT_TRUST_IAP": "true"}
    log_path = tmp_path / "serve.log"
    with running_server(env, log_path, wait_for="/healthz") as (url, _started_in, _pid):
        ready = httpx.get(url + "/readyz")
        assert ready.status_code == 503 and "HYBRID_CHAT_IAP_AUDIENCE" in ready.json()["reason"]
        page = httpx.get(url + "/")
        assert page.status_code == 503 and "sign-in is not configured yet" in page.text
        assert httpx.post(url + "/api/chat", json={"message": "hi"}).status_code == 503
        assert httpx.get(url + "/healthz").status_code == 200
    log = log_path.read_text()
    assert log.count("HYBRID_CHAT_IAP_AUDIENCE=/projects/NUMBER/global/backendServices/ID") == 1, log
    assert "Traceback" not in log


@asynccontextmanager
async def _client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as client:
        yield client
