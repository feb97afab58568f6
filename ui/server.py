"""The server: the Gradio chat page mounted in FastAPI beside /healthz, /readyz, /metrics and /api/chat.

One ASGI app with the edge middleware (ui/security.py: same-site requests only, bounded bodies), a
lifespan that warms both backends at start-up and, on SIGTERM, takes the replica out of the balancer
before it stops listening, drains running answers and saves the stopped ones before the stores close
(ui/shutdown.py), the probes, and the Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from typing import Any

import gradio as gr
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Gauge, generate_latest

from graph.client import ChatClient
from graph.settings import Settings
from ui import security
from ui.api import api_router
from ui.auth import Identity, SignInNotConfigured
from ui.chat import ChatService
from ui.handlers import ChatHandlers
from ui.limits import RateLimiter
from ui.live import page_turn_router
from ui.openai_api import openai_router
from ui.page import build_page
from ui.security import parse_origins
from ui.shared import shared_state
from ui.shutdown import STOPPING_REASON, CloseWhileStopping, Shutdown
from ui.theme import CSS, theme

log = logging.getLogger(__name__)

# Readiness pings the memory store with this deadline: well inside the probes' own timeouts (the
# Deployment's readinessProbe gives 3 s), so a store that hangs makes /readyz say so rather than time out.
READY_PING_TIMEOUT_S = 1.5
# Readiness no longer follows the memory store once the Pod was ready: this is where an outage shows.
MEMORY_UP = Gauge("hybrid_chat_memory_up", "1 when the memory store answered the last readiness ping.")


async def refuse_invalid_body(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming the fields at fault, never echoing what was sent (it could be megabytes, or a secret)."""
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()][:10]
    return JSONResponse({"detail": errors}, status_code=422)


def create_app(
    settings: Settings | None = None, client: ChatClient | None = None, identity: Identity | None = None
) -> FastAPI:
    """The one ASGI app. `client` (a `graph.client.ChatClient`) defaults to one built from `settings`,
    `identity` (who is signed in) to the mode the settings say."""
    from graph.settings import get_settings

    owns_client = client is None
    if settings is None:
        settings = client.settings if client is not None else get_settings()
    if client is None:
        client = ChatClient.from_settings(settings)
    # What the replicas share (ui/shared.py): Valkey/Redis with HYBRID_CHAT_REDIS_URL, else this process.
    shared = identity.state if identity is not None else shared_state(settings)
    identity = identity or Identity(settings, state=shared)
    service = ChatService(client)
    limiter = RateLimiter(settings.rate_limit_per_minute, state=shared)
    services = client.services
    service.health.credentials = services.backends.credentials  # misconfigured backends are not usable

    gradio_app: Any = None  # the mounted Gradio app (its stop_event ends the heartbeat streams)

    # Attachments in a local directory are this replica's alone: with several, a file sent through one is
    # missing when the next turn lands on another. Said at start-up and in every /readyz answer.
    attachments_alone = None
    if settings.replicas > 1 and not settings.attachments_bucket:
        attachments_alone = (
            f"attachments are kept on this replica's disk while {settings.replicas} replicas may serve: a "
            "file sent through one is missing when a later turn reaches another; set "
            "HYBRID_CHAT_ATTACHMENTS_BUCKET"
        )
        log.error("%s", attachments_alone)

    shutdown = Shutdown(service, settings)  # SIGTERM: readiness fails, drain, save, close (ui/shutdown.py)

    async def begin_shutdown() -> None:
        """Stop taking turns, let running answers finish (up to the grace period, then stop them,
        saving what was streamed), then end Gradio's heartbeat streams so the server can exit."""
        await shutdown.drain()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # The uvicorn.Server running us: found through its SIGTERM handler (uvicorn installs it in the
        # main thread); embedders running a Server in another thread can set app.state.uvicorn_server.
        server = getattr(_app.state, "uvicorn_server", None)
        server = server or getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
        # Build both backends' clients (and any local stand-in) in the background now, so that the
        # first answer, or the first fallback, does not pay for imports and start-up.
        warm = asyncio.get_running_loop().create_task(asyncio.to_thread(services.backends.warm))
        # Check the real backends' credentials now and periodically (graph.health.CredentialCheck).
        credentials = asyncio.get_running_loop().create_task(services.backends.watch_credentials())
        watcher = None
        if server is not None and hasattr(server, "should_exit"):
            shutdown.hook_signals(server)
            watcher = asyncio.get_running_loop().create_task(shutdown.watch(server))
        try:
            yield
        finally:
            credentials.cancel()
            with contextlib.suppress(Exception):
                await warm
            await shutdown.drain()  # the watcher's, if it began: the stores close only after it
            if watcher is not None:
                watcher.cancel()
            if owns_client:
                with contextlib.suppress(Exception):
                    await services.store.aclose()
                await asyncio.to_thread(services.backends.close)
            with contextlib.suppress(Exception):
                await shared.aclose()
            log.info("shut down")

    app = FastAPI(
        title="hybrid-chat",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
        max_body_size=settings.max_request_bytes,  # every route, the Gradio mount included
    )
    if identity.unconfigured:  # inside the edge middleware: its 503 carries the security headers
        app.add_middleware(SignInNotConfigured, reason=identity.unconfigured)
    security.install(app, parse_origins(settings.allowed_origins))
    app.add_middleware(CloseWhileStopping, shutdown=shutdown)
    app.add_exception_handler(RequestValidationError, refuse_invalid_body)
    app.state.chat = service
    app.state.begin_shutdown = begin_shutdown  # for embedders running their own server loop
    app.state.shutdown = shutdown

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # Readiness says whether THIS Pod can serve, for the kubelet and the load balancer alike. A new Pod
    # turns ready once its configuration has proven itself: sign-in configured, the memory store
    # answering, a backend whose credentials were not refused. After that only shutting down takes it
    # out: a shared dependency going down (Firestore, Vertex AI, vLLM) is down for every Pod at once, and
    # failing them all would leave the load balancer nothing to send to (a 502 for everyone) instead of a
    # page that says what is down and refuses turns in words. The body still names each dependency.
    served_ready = False  # has /readyz answered "ready" once?

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        nonlocal served_ready
        body: dict[str, Any] = {"status": "ok", "memory": "ok"}
        try:
            await asyncio.wait_for(services.store.aping(), timeout=READY_PING_TIMEOUT_S)
        except Exception as exc:  # the detail goes to the log, not to whoever asks
            log.warning("readyz: memory store unavailable: %s: %s", type(exc).__name__, str(exc)[:300])
            body["memory"] = "unavailable"
        MEMORY_UP.set(1 if body["memory"] == "ok" else 0)
        backends = service.health.all()
        body["backends"] = {h.backend: h.state for h in backends}
        if attachments_alone:
            body["attachments"] = attachments_alone
        if shutdown.stopping:  # first: the balancer must stop sending here whatever else is true
            body.update(status="shutting down", reason=STOPPING_REASON)
            return JSONResponse(body, status_code=503)
        if identity.unconfigured:  # a fixed text saying what to set, never an exception's
            body.update(status="unavailable", reason=identity.unconfigured)
            return JSONResponse(body, status_code=503)
        problems = []
        if not any(h.usable for h in backends):
            reasons = ", ".join(f"{h.backend} {h.state} ({h.detail})" for h in backends)
            problems.append(f"no backend is usable: {reasons}")
        if body["memory"] != "ok":
            problems.append("the memory store is unavailable")
        if not problems:
            if not served_ready:
                served_ready = True
                log.info("ready: the memory store and a backend answer")
            return JSONResponse(body)
        body["reason"] = "; ".join(problems)
        if served_ready:  # ready before: serve on, and say what is down
            body["status"] = "degraded"
            return JSONResponse(body)
        body["status"] = "unavailable"
        return JSONResponse(body, status_code=503)

    @app.get("/metrics")
    async def metrics() -> Response:
        # Not prometheus_client's make_asgi_app: mounted at /metrics it would only answer /metrics/
        # (the Gradio mount at "/" takes the rest), and a Route takes a function for an endpoint.
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    app.include_router(api_router(service, identity, limiter))  # before the mount, which takes "/"
    app.include_router(openai_router(service, identity, limiter))  # /v1/models, /v1/chat/completions
    handlers = ChatHandlers(service, identity, limiter, shared=shared)

    async def page_user(request: Request) -> str | None:
        """The page's signed-in user, as Gradio finds it (its sign-in cookie, IAP), or the local user."""
        if identity.mode == "local":
            return settings.user_id
        return await security.signed_in_user(request.scope, app=gradio_app)

    app.include_router(page_turn_router(handlers, page_user))  # POST /page/turn (ui/live.py)
    gr.mount_gradio_app(
        app,
        build_page(handlers),
        path="",
        theme=theme(),
        css=CSS,
        footer_links=["api"],
        run_history=False,
        ssr_mode=False,
        # Gradio refuses a larger upload (413, and the page says so) before it keeps it: the graph's cap.
        max_file_size=settings.attachment_max_bytes,
        **identity.gradio_kwargs(),
    )
    gradio_app = next(r.app for r in app.routes if hasattr(getattr(r, "app", None), "stop_event"))
    shutdown.on_drained = gradio_app.stop_event.set
    return app
