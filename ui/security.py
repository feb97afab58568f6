"""The app's edge: which sites may call it, and what its sign-in cookies allow.

Gradio's own CORS middleware echoes any `Origin` with `Access-Control-Allow-Credentials: true` once the
host is not localhost, and its sign-in cookie is `SameSite=None`: a page on another site could read a
signed-in user's conversations. Gradio steps aside when the parent app installs Starlette's
`CORSMiddleware` (`CustomCORSMiddleware.parent_configures_cors`), so the parent does, with only the
configured origins. On top of that, `SameSiteGuard` refuses every request that a browser marks as coming
from another site (a foreign `Origin`), which also stops cross-site form posts (CSRF), and rewrites the
sign-in cookies to `SameSite=Lax` (`Secure` behind HTTPS). `/logout` signs out by POST only: a GET from
an image tag on another site must not sign anyone out.

Request bodies are bounded by `FastAPI(max_body_size=...)` (Starlette's `RequestBodyLimitMiddleware`),
which covers the mounted Gradio app too: a body whose declared length is over the limit is refused with
413 before it is read, and a chunked one as soon as it passes the limit.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

SIGN_IN_COOKIE_PREFIX = "access-token"  # Gradio's `access-token-<id>` and `access-token-unsecure-<id>`


def parse_origins(raw: str | None) -> list[str]:
    """`"https://a.example, https://b.example"` -> the origins, normalised (scheme://host[:port])."""
    out: list[str] = []
    for item in (raw or "").split(","):
        item = item.strip().rstrip("/")
        if not item:
            continue
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
            raise ValueError(
                f"HYBRID_CHAT_ALLOWED_ORIGINS: {item!r} is not an origin like https://chat.example.com"
            )
        out.append(f"{parts.scheme}://{parts.netloc.lower()}")
    return out


def _is_https(scope: Scope, headers: Headers) -> bool:
    forwarded = headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return scope.get("scheme") == "https" or forwarded == "https"


class SameSiteGuard:
    """Refuses cross-site requests and tightens the sign-in cookies (see the module docstring)."""

    def __init__(self, app: ASGIApp, allowed_origins: list[str]) -> None:
        self.app = app
        self.allowed = set(allowed_origins)

    def _same_site(self, origin: str, headers: Headers) -> bool:
        if origin in self.allowed:
            return True
        netloc = urlsplit(origin).netloc.lower()
        # The page's own origin: the Host the browser used (or the one a proxy says it used). A site
        # cannot set X-Forwarded-Host on a victim's request without a preflight, which is refused here.
        hosts = {
            headers.get("host", "").lower(),
            headers.get("x-forwarded-host", "").split(",")[0].strip().lower(),
        }
        return bool(netloc) and netloc in hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is not None and not self._same_site(origin.rstrip("/"), headers):
            log.info("refused a cross-site %s %s (origin not allowed)", scope["method"], scope["path"])
            response = JSONResponse(
                {"detail": "Cross-site request refused: this site is not allowed to call hybrid-chat."},
                status_code=403,
            )
            await response(scope, receive, send)
            return
        if scope["path"].rstrip("/") == "/logout":
            if scope["method"] != "POST":
                await JSONResponse({"detail": "Sign out with POST."}, status_code=405)(scope, receive, send)
                return
            scope = {**scope, "method": "GET"}  # Gradio's sign-out route is a GET
        https = _is_https(scope, headers)

        async def tighten_cookies(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                cookies = out.getlist("set-cookie")
                if any(c.startswith(SIGN_IN_COOKIE_PREFIX) for c in cookies):
                    del out["set-cookie"]
                    for cookie in cookies:
                        out.append(
                            "set-cookie",
                            _tighten(cookie, https) if cookie.startswith(SIGN_IN_COOKIE_PREFIX) else cookie,
                        )
            await send(message)

        await self.app(scope, receive, tighten_cookies)


def _tighten(cookie: str, https: bool) -> str:
    """`SameSite=Lax` on a sign-in cookie (Gradio sets `None`), and `Secure` when served over HTTPS."""
    parts = [p.strip() for p in cookie.split(";")]
    kept = [p for p in parts if p and p.split("=", 1)[0].strip().lower() not in ("samesite", "secure")]
    kept.append("SameSite=Lax")
    # A cookie that says Secure over plain HTTP is dropped by browsers (except on localhost): keep the
    # unsecure twin working there, as Gradio intends.
    if https or any(p.lower() == "secure" for p in parts):
        kept.append("Secure")
    return "; ".join(kept)


def install(app: FastAPI, allowed_origins: list[str]) -> None:
    """Adds the edge middleware to the app (call before it starts)."""
    # Starlette's CORS middleware answers for the configured origins; its presence also turns off
    # Gradio's own, which would echo any origin.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=allowed_origins,
        allow_credentials=True,
        allow_methods=["GET", "POST"],
        allow_headers=["authorization", "content-type"],
    )
    app.add_middleware(SameSiteGuard, allowed_origins=allowed_origins)  # outermost: refuses first
