"""Readiness on a first deploy (issue 12, findings 3 and 6).

- IAP without an audience: the server starts, `/healthz` is 200, `/readyz` and every page and API route
  answer 503 saying sign-in is not configured, and one ERROR line says what to set.
- Credentials: each real backend is checked with the real client and credentials at start-up and every
  `credential_check_s` (vLLM: `GET /v1/models`; Vertex AI: `countTokens`). One that refuses them
  (401/403/404, no credentials) is `misconfigured` and not usable until a check passes; a real answer
  refused that way marks it at once; `/readyz` is 503 with the reason when no backend is usable.
- Readiness is the Pod's own: it gates the first "ready" on the configuration (sign-in, credentials, the
  memory store answering), then stays ready until shutdown. A dependency shared by every Pod going down
  later (Firestore stopped under a steady page load, both backends refusing) makes `/readyz` say
  "degraded" with 200, not take every Pod out of the load balancer at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import google.api_core.exceptions as gexc
import httpx
import openai
import pytest
from google.auth.credentials import AnonymousCredentials
from google.auth.exceptions import DefaultCredentialsError

from graph.backends import Backends
from graph.client import ChatClient
from graph.health import CredentialCheck, credential_fault, watch_credentials
from tests.conftest import local_settings
from tests.support.credential_server import CredentialServer, credential_server
from tests.support.fault_server import fault_server
from tests.support.firestore_emulator import MAIN_CLASS, find_jar
from tests.support.server import free_port, running_server
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


# --- finding 6: credentials, unit ---------------------------------------------------------------
def _openai_error(cls: type, status: int) -> BaseException:
    response = httpx.Response(status, request=httpx.Request("GET", "http://vllm/v1/models"))
    return cls("refused", response=response, body=None)


def test_credential_faults_are_told_from_transient_ones() -> None:
    refused = {
        gexc.PermissionDenied("no"): "permission denied (HTTP 403)",
        gexc.Forbidden("no"): "permission denied (HTTP 403)",  # REST's name for it
        gexc.Unauthenticated("no"): "credentials refused (HTTP 401)",
        gexc.NotFound("no model"): "model or endpoint not found (HTTP 404)",
        DefaultCredentialsError("none"): "no Google credentials found (DefaultCredentialsError)",
        _openai_error(openai.AuthenticationError, 401): "credentials refused (HTTP 401)",
        _openai_error(openai.NotFoundError, 404): "model or endpoint not found (HTTP 404)",
    }
    for exc, fault in refused.items():
        assert credential_fault(exc) == fault, exc
    wrapped = RuntimeError("the model failed")
    wrapped.__cause__ = gexc.PermissionDenied("no")
    assert credential_fault(wrapped) == "permission denied (HTTP 403)"
    transient = [
        gexc.ServiceUnavailable("later"),
        gexc.TooManyRequests("slow down"),
        gexc.BadRequest("bad"),
        _openai_error(openai.InternalServerError, 500),
        openai.APIConnectionError(request=httpx.Request("GET", "http://vllm/v1/models")),
        httpx.ConnectError("refused"),
        TimeoutError(),
        OSError(111, "refused"),  # errno, not an HTTP status
    ]
    for exc in transient:
        assert credential_fault(exc) is None, exc


async def test_a_credential_check_has_explicit_states_and_a_clock() -> None:
    now = [100.0]
    outcome: list[BaseException | None] = [gexc.PermissionDenied("Permission denied on project PROJECT_ID")]

    async def probe() -> None:
        if outcome[0] is not None:
            raise outcome[0]

    check = CredentialCheck("gemini", probe, hint="check HYBRID_CHAT_GEMINI_PROJECT", clock=lambda: now[0])
    assert (check.state, check.usable, check.checked_at) == ("unchecked", False, None)
    assert await check.run() == "misconfigured" and not check.usable and check.checked_at == 100.0
    assert check.detail == "permission denied (HTTP 403): check HYBRID_CHAT_GEMINI_PROJECT"
    assert "PROJECT_ID" not in check.detail  # the exception's text goes to the log only

    outcome[0] = httpx.ConnectError("refused")  # unreachable does not prove the credentials work
    assert await check.run() == "misconfigured"
    check.record_failure(httpx.ConnectError("refused"), source="answer")
    assert check.state == "misconfigured"

    now[0] = 160.0
    outcome[0] = None
    assert await check.run() == "ok" and check.usable and check.checked_at == 160.0

    check.record_failure(TimeoutError(), source="answer")  # a slow answer says nothing about credentials
    assert check.state == "ok"
    check.record_failure(gexc.Unauthenticated("expired"), source="answer")  # a refused answer: at once
    assert check.state == "misconfigured" and check.fault == "credentials refused (HTTP 401)"
    check.record_success(source="answer")
    assert check.state == "ok"

    outcome[0] = gexc.ServiceUnavailable("starting")
    assert await check.run() == "unreachable" and check.usable

    local = CredentialCheck("gemma", None)  # a local stand-in: nothing to check
    assert (local.state, local.usable, await local.run()) == ("skipped", True, "skipped")
    local.record_failure(gexc.PermissionDenied("no"))
    assert local.state == "skipped"


async def test_watch_credentials_checks_at_once_then_every_interval() -> None:
    calls: list[str] = []
    sleeps: list[float] = []

    async def probe() -> None:
        calls.append("probe")

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            raise asyncio.CancelledError

    checks = [CredentialCheck("gemma", probe), CredentialCheck("gemini", None)]
    with pytest.raises(asyncio.CancelledError):
        await watch_credentials(checks, 60.0, sleep=fake_sleep)
    assert calls == ["probe"] * 3 and sleeps == [60.0] * 3
    await watch_credentials([CredentialCheck("gemini", None)], 60.0, sleep=fake_sleep)  # returns at once


def test_local_stand_ins_are_not_checked(tmp_path: Path) -> None:
    backends = Backends(local_settings(tmp_path))
    assert {n: c.state for n, c in backends.credentials.items()} == {"gemma": "skipped", "gemini": "skipped"}
    real = Backends(local_settings(tmp_path, gemma_base_url="http://vllm:8000/v1", gemini_project="p"))
    assert {n: c.state for n, c in real.credentials.items()} == {"gemma": "unchecked", "gemini": "unchecked"}


# --- finding 6: credentials, through the app ----------------------------------------------------
@pytest.fixture
def google_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Application default credentials that need no token server (the test servers check nothing)."""
    import google.auth

    monkeypatch.setattr(google.auth, "default", lambda *a, **k: (AnonymousCredentials(), "my-project"))


def _real(tmp_path: Path, gemma_url: str, gemini: CredentialServer, **overrides: Any) -> Any:
    """Settings for the real backends (no stand-in): vLLM at `gemma_url`, Vertex AI at `gemini`."""
    return local_settings(
        tmp_path,
        gemma_base_url=gemma_url,
        gemini_project="my-project",
        gemini_api_endpoint=gemini.url,
        **overrides,
    )


@asynccontextmanager
async def _client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as client:
        yield client


async def _until(client: httpx.AsyncClient, ok: Callable[[httpx.Response], bool]) -> httpx.Response:
    deadline = time.monotonic() + 60
    while True:
        r = await client.get("/readyz")
        if ok(r):
            return r
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz never got there: {r.status_code} {r.text}")
        await asyncio.sleep(0.05)


async def _eventually(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, "never happened"
        await asyncio.sleep(0.05)


def _states(r: httpx.Response) -> dict[str, str]:
    return r.json()["backends"]


async def test_backends_refusing_our_credentials_make_the_server_not_ready(
    tmp_path: Path, google_credentials: None, caplog: pytest.LogCaptureFixture
) -> None:
    from ui.server import create_app

    with credential_server(401) as gemma, credential_server(403) as gemini:
        app = create_app(_real(tmp_path, gemma.url + "/v1", gemini, credential_check_s=0.2))
        async with _client(app) as client:
            before = await client.get("/readyz")  # no verdict yet (the checks start with the server)
            checking = {"gemma": "checking", "gemini": "checking"}
            assert before.status_code == 503 and _states(before) == checking
            with caplog.at_level(logging.INFO, logger="graph.health"):
                async with app.router.lifespan_context(app):
                    misconfigured = {"gemma": "misconfigured", "gemini": "misconfigured"}
                    ready = await _until(client, lambda r: _states(r) == misconfigured)
                    assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
                    reason = ready.json()["reason"]
                    assert reason.startswith("no backend is usable: gemma misconfigured (credentials refused")
                    assert "gemini misconfigured (permission denied (HTTP 403)" in reason
                    assert "HYBRID_CHAT_GEMMA_API_KEY" in reason and "HYBRID_CHAT_GEMINI_PROJECT" in reason
                    for leak in ("127.0.0.1", "test server", "Forbidden", "my-project"):
                        assert leak not in ready.text  # fixed texts only; the log has the detail
                    assert (await client.get("/healthz")).status_code == 200
                    board = app.state.chat.health.html()
                    assert board.count('data-state="misconfigured"') == 2 and "hc-misconfigured" in board
                    # The real clients made the calls, with the project and model of the settings.
                    assert ("GET", "/v1/models") in gemma.seen
                    count = "/v1beta1/projects/my-project/locations/us-central1/publishers/google/models/"
                    assert ("POST", count + "gemini-2.5-flash:countTokens") in gemini.seen
                    # more checks, same verdict: no more log lines (counted below)
                    await _eventually(lambda: gemma.seen.count(("GET", "/v1/models")) >= 3)

                    gemma.status = gemini.status = 200  # fixed (the ConfigMap, the IAM binding)
                    ready = await _until(client, lambda r: _states(r) == {"gemma": "up", "gemini": "up"})
                    assert ready.status_code == 200
                    assert 'data-state="misconfigured"' not in app.state.chat.health.html()
    # Ours only: a client session another test left behind may be collected (and logged by aiohttp at
    # ERROR) at any moment of this one.
    errors = [
        r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("graph.")
    ]
    assert len(errors) == 2, errors  # one per backend, not one per check
    assert any(e.startswith("gemini is misconfigured: permission denied (HTTP 403)") for e in errors)
    assert any("credentials accepted again" in r.getMessage() for r in caplog.records)


async def test_a_healthy_real_configuration_stays_ready(tmp_path: Path, google_credentials: None) -> None:
    from ui.server import create_app

    with fault_server("ok") as gemma, credential_server(200) as gemini:
        app = create_app(_real(tmp_path, gemma.base_url, gemini, credential_check_s=0.1))
        async with _client(app) as client, app.router.lifespan_context(app):
            ready = await _until(client, lambda r: _states(r) == {"gemma": "up", "gemini": "up"})
            assert ready.status_code == 200
            for _ in range(10):  # check after check, still ready
                await asyncio.sleep(0.05)
                r = await client.get("/readyz")
                assert r.status_code == 200 and _states(r) == {"gemma": "up", "gemini": "up"}, r.text
            await _eventually(lambda: sum(p.endswith(":countTokens") for _, p in gemini.seen) >= 3)
            assert (await client.get("/readyz")).status_code == 200
            # An answer through vLLM works as before.
            r = await client.post("/api/chat", json={"message": "hi", "model": "gemma"})
            assert r.status_code == 200 and "Hello from the fault server." in r.text


async def test_a_real_answer_refused_marks_the_backend_at_once(
    tmp_path: Path, google_credentials: None
) -> None:
    from ui.server import create_app

    with credential_server(200) as gemma, credential_server(200) as gemini:
        # One check at start-up, the next in an hour: only the answers can tell.
        app = create_app(_real(tmp_path, gemma.url + "/v1", gemini, credential_check_s=3600))
        async with _client(app) as client, app.router.lifespan_context(app):
            # Both start-up checks answered (ready comes with one usable backend, the other may still be
            # checking: a check answered after the flip below would mark it before any answer could).
            await _until(client, lambda r: _states(r) == {"gemma": "up", "gemini": "up"})
            gemma.status, gemini.status = 401, 403  # the key rotated, the binding removed
            r = await client.post("/api/chat", json={"message": "hi", "model": "gemma"})
            events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
            assert events[-1]["kind"] == "backend_error", events
            assert ("POST", "/v1/chat/completions") in gemma.seen
            assert any(p.endswith(":streamGenerateContent") for _, p in gemini.seen)  # the fallback
            ready = await client.get("/readyz")
            # The Pod was ready: it stays in the load balancer (both backends are shared by every Pod)
            # and says what is wrong; the health dots say it on the page.
            assert ready.status_code == 200 and ready.json()["status"] == "degraded"
            assert _states(ready) == {"gemma": "misconfigured", "gemini": "misconfigured"}
            assert ready.json()["reason"].startswith("no backend is usable: gemma misconfigured")
            assert app.state.chat.health.html().count('data-state="misconfigured"') == 2


async def test_a_starting_vllm_does_not_make_a_misconfigured_gemini_ready(
    tmp_path: Path, google_credentials: None
) -> None:
    """A first deploy: vLLM still downloading its weights (nothing listens), Gemini's binding missing.
    No backend can answer: not ready, and the page's dot says Gemma is not reachable."""
    from ui.server import create_app

    with credential_server(403) as gemini:
        gemma_url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there (yet)
        app = create_app(_real(tmp_path, gemma_url, gemini, credential_check_s=0.2))
        async with _client(app) as client, app.router.lifespan_context(app):
            states = {"gemma": "unreachable", "gemini": "misconfigured"}
            r = await _until(client, lambda r: _states(r) == states)
            assert r.status_code == 503
            assert r.json()["reason"].startswith("no backend is usable: gemma unreachable")
            assert 'data-state="unreachable"' in app.state.chat.health.html()
            assert "not reachable" in app.state.chat.health.html()


@pytest.mark.integration
def test_serve_with_the_project_id_placeholder_and_no_credentials_is_not_ready(tmp_path: Path) -> None:
    """`hybrid-chat serve` as the first deploy with `base/project.env` not substituted, outside GKE (no
    Workload Identity): Gemini has no credentials, vLLM refuses the key. Not ready, and the log says why."""
    with credential_server(401) as gemma:
        env = {
            "HYBRID_CHAT_SQLITE_PATH": str(tmp_path / "c.db"),
            "HYBRID_CHAT_GEMINI_PROJECT": "PROJECT_ID",
            "HYBRID_CHAT_GEMMA_BASE_URL": gemma.url + "/v1",
            "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "no-such-key.json"),
        }
        log_path = tmp_path / "serve.log"
        with running_server(env, log_path) as (url, _started_in, _pid):
            deadline = time.monotonic() + 60
            while True:
                ready = httpx.get(url + "/readyz")
                if ready.json()["backends"] == {"gemma": "misconfigured", "gemini": "misconfigured"}:
                    break
                assert time.monotonic() < deadline, ready.text
                time.sleep(0.1)
            assert ready.status_code == 503
            assert "no Google credentials found" in ready.json()["reason"]
            assert httpx.get(url + "/healthz").status_code == 200
        log = log_path.read_text()
        assert "gemini is misconfigured: no Google credentials found" in log
        assert "gemma is misconfigured: credentials refused (HTTP 401)" in log


# --- a shared dependency going down does not take the Pod out -----------------------------------
# The outage lasts 15 s: three of the Deployment's readiness probes (5 s apart; two failed take a Pod out),
# and long enough for gRPC's reconnect backoff to grow, so the recovery is tested as well as the outage.
OUTAGE_S = 15.0
LOAD_INTERVAL_S = 0.2
PROBE_TIMEOUT_S = 3.0  # the Deployment's readinessProbe timeoutSeconds
FAULT_ANSWER = "Hello from the fault server."


def _start_emulator(port: int, log: Path) -> subprocess.Popen[bytes]:
    """The Firestore emulator on `port` (again on the same port after a kill), in its own process group."""
    cmd = ["java", "-Duser.language=en", "-cp", str(find_jar()), MAIN_CLASS, "start", "--host=127.0.0.1"]
    with open(log, "ab") as fh:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [*cmd, f"--port={port}"], stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
                if r.read().strip() == b"Ok":
                    return proc
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError(f"the Firestore emulator did not start; see {log}")


def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    _signal(proc, signal.SIGCONT)
    _signal(proc, signal.SIGKILL)
    proc.wait(10)


async def _turn(client: httpx.AsyncClient, session_id: str, message: str) -> dict[str, Any]:
    """`/api/chat`'s `done` event for one turn on Gemma."""
    r = await client.post("/api/chat", json={"message": message, "model": "gemma", "session_id": session_id})
    assert r.status_code == 200, (r.status_code, r.text[:300])
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    return events[-1]


@pytest.mark.integration
@pytest.mark.parametrize("outage", ["killed", "frozen"])
async def test_a_firestore_outage_keeps_the_pod_ready_and_refuses_turns_in_words(
    outage: str, tmp_path: Path, google_credentials: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Firestore stops under a steady page load: killed (connections refused, then restarted empty on the
    same port) or frozen (SIGSTOP: nothing answers, like a partition; then SIGCONT, data intact). The Pod
    stays ready all along (/readyz 200, in time for the probe), the page loads, a turn is refused in words,
    and the first turn once Firestore answers again is answered and saved."""
    from ui.server import create_app

    port = free_port()
    log = tmp_path / "emulator.log"
    proc = await asyncio.to_thread(_start_emulator, port, log)
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{port}")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "demo-readiness")
    try:
        with fault_server("ok") as gemma, credential_server(200) as gemini:
            settings = _real(
                tmp_path,
                gemma.base_url,
                gemini,
                memory="firestore",
                firestore_project="demo-readiness",
                firestore_database="readiness-db",
                memory_timeout_s=2.0,
            )
            app = create_app(settings)
            store = app.state.chat.client.services.store
            async with _client(app) as client, app.router.lifespan_context(app):
                await _until(client, lambda r: r.status_code == 200)
                session = "outage-" + outage
                assert (await _turn(client, session, "before"))["kind"] == "answer"

                seen: list[tuple[str, int, float, dict[str, Any] | None]] = []
                stop = asyncio.Event()

                async def steady_load(path: str) -> None:
                    """The probes on /readyz, people on the page: each on its own, like the real ones."""
                    while not stop.is_set():
                        started = time.monotonic()
                        r = await client.get(path)
                        body = r.json() if path == "/readyz" else None
                        seen.append((path, r.status_code, time.monotonic() - started, body))
                        await asyncio.sleep(LOAD_INTERVAL_S)

                load = [asyncio.create_task(steady_load(path)) for path in ("/readyz", "/")]
                await asyncio.sleep(1.0)
                if outage == "killed":
                    await asyncio.to_thread(_kill, proc)
                else:
                    _signal(proc, signal.SIGSTOP)
                down_since = time.monotonic()
                await asyncio.sleep(1.0)
                refused = await _turn(client, session, "during the outage")
                assert refused["kind"] == "failed", refused
                assert "was not sent" in refused["text"] and "try again" in refused["text"], refused
                metrics_during = (await client.get("/metrics")).text
                await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_since)))
                outage_s = time.monotonic() - down_since

                if outage == "killed":
                    proc = await asyncio.to_thread(_start_emulator, port, log)
                else:
                    _signal(proc, signal.SIGCONT)
                # gRPC reconnects with a backoff: the store may need a few seconds to answer again.
                back = await _until(client, lambda r: r.json()["memory"] == "ok")
                stop.set()
                await asyncio.gather(*load)

                assert back.status_code == 200 and back.json()["status"] == "ok"
                not_ok = [(path, status) for path, status, _, _ in seen if status != 200]
                assert not_ok == [], f"{len(not_ok)} of {len(seen)} not 200 over {outage_s:.1f} s"
                during = [body for path, _, _, body in seen if path == "/readyz" and body is not None]
                unavailable = [b for b in during if b["memory"] == "unavailable"]
                assert len(unavailable) >= 2, during  # the probes saw the outage, in the body
                assert all(b["status"] == "degraded" for b in unavailable), unavailable
                assert all(b["reason"] == "the memory store is unavailable" for b in unavailable)
                slowest = max(elapsed for path, _, elapsed, _ in seen if path == "/readyz")
                assert slowest < PROBE_TIMEOUT_S, f"/readyz took {slowest:.1f} s: the probe would time out"
                assert sum(1 for path, *_ in seen if path == "/") >= 5  # the page kept loading
                assert "hybrid_chat_memory_up 0.0" in metrics_during  # where the outage shows instead

                # The first turn once the store takes writes again is answered and saved. The probe's
                # ping may come back before every gRPC channel has reconnected: until then a turn is
                # refused in words (and nothing of it stored), never lost silently.
                deadline = time.monotonic() + 30
                while (answered := await _turn(client, session, "after the outage"))["kind"] != "answer":
                    assert "not sent" in answered["text"], answered
                    assert time.monotonic() < deadline, answered
                    await asyncio.sleep(0.5)
                assert FAULT_ANSWER in answered["text"]
                assert not answered["meta"].get("note"), answered["meta"]  # no "not saved" note
                history = store.history(session, settings.user_id)
                rows = [(m.type, m.content) for m in await history.aget_messages()]
                if outage == "frozen":  # the data survived the freeze
                    assert rows[:2] == [("human", "before"), ("ai", FAULT_ANSWER)], rows
                assert rows[-2:] == [("human", "after the outage"), ("ai", FAULT_ANSWER)], rows
                assert ("human", "during the outage") not in rows
    finally:
        await asyncio.to_thread(_kill, proc)


# --- stopping: out of the balancer before the listener closes -------------------------------------
@pytest.mark.integration
def test_sigterm_fails_readiness_at_once_and_serves_on_for_the_drain_period(tmp_path: Path) -> None:
    """What a load balancer sees of a stopping replica: `/readyz` 503 with the reason from the SIGTERM
    on, every other request still answered (with `Connection: close`) for HYBRID_CHAT_DRAIN_S, then the
    port closes and the process exits."""
    drain_s = 4.0
    log_path = tmp_path / "serve.log"
    with (
        fault_server("ok") as gemma,  # a vLLM-shaped Gemma: no embedded model to stop at the exit
        running_server(
            {
                "HYBRID_CHAT_SQLITE_PATH": str(tmp_path / "c.db"),
                "HYBRID_CHAT_GEMMA_BASE_URL": gemma.base_url,
                "HYBRID_CHAT_DRAIN_S": str(drain_s),
            },
            log_path,
            wait_for="/readyz",
        ) as (url, _started_in, pid),
    ):
        assert httpx.get(url + "/readyz").status_code == 200
        deadline = time.monotonic() + 60  # the local stand-ins warmed (their start-up holds the loop)
        while "Vertex AI stand-in listening" not in log_path.read_text():
            assert time.monotonic() < deadline, log_path.read_text()[-2000:]
            time.sleep(0.2)
        sent = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        answered: list[float] = []  # seconds after the SIGTERM, once /readyz said 503
        while True:
            try:
                ready = httpx.get(url + "/readyz", timeout=10)
                page = httpx.get(url + "/healthz", timeout=10)
            except httpx.TransportError:  # refused, or reset as the listener closes under it
                break
            now = time.monotonic() - sent
            assert now < drain_s + 5, "still listening well after the drain period"
            if ready.status_code == 200:  # the signal not handled yet: only right after it
                assert not answered and now < 2, now
            else:
                assert ready.status_code == 503, ready.text
                assert ready.json()["status"] == "shutting down"
                assert "stopping" in ready.json()["reason"] and "load balancer" in ready.json()["reason"]
                assert page.status_code == 200 and page.headers["connection"] == "close"
                answered.append(now)
            time.sleep(0.1)
        closed_after = time.monotonic() - sent
        # Served through the drain (each round of two requests takes up to a second on a busy machine).
        assert answered and answered[-1] >= drain_s - 1.5, answered[-3:]
        assert drain_s - 0.5 <= closed_after < drain_s + 5
        # The exit itself: the stores close, then the embedded Gemini stand-in stops (tens of seconds
        # when it started just before, on 2 busy cores; no such stand-in runs in the cluster).
        deadline = time.monotonic() + 60
        while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]:
            assert time.monotonic() < deadline, "the server did not exit after the drain"
            time.sleep(0.05)
    log = log_path.read_text()
    assert "stopping: not ready; serving on for 4 s" in log and "shut down" in log


async def test_several_replicas_without_an_attachments_bucket_are_told_in_words(
    tmp_path: Path, local_backends: Backends, caplog: pytest.LogCaptureFixture
) -> None:
    """With HYBRID_CHAT_REPLICAS above 1 and attachments on the replica's own disk, start-up logs what
    to set and /readyz says it in its body (the Pod still serves: text turns are unaffected)."""
    from ui.server import create_app

    for replicas, bucket, told in ((3, None, True), (3, "chat-attachments", False), (1, None, False)):
        settings = local_settings(tmp_path, replicas=replicas, attachments_bucket=bucket)
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            app = create_app(settings, client=ChatClient.from_settings(settings, backends=local_backends))
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        async with _client(app) as client:
            ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        if told:
            assert len(errors) == 1 and "set HYBRID_CHAT_ATTACHMENTS_BUCKET" in errors[0]
            assert "3 replicas may serve" in ready.json()["attachments"]
            assert "HYBRID_CHAT_ATTACHMENTS_BUCKET" in ready.json()["attachments"]
        else:
            assert not errors and "attachments" not in ready.json(), (replicas, bucket)
