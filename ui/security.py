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

Every response that passes `SameSiteGuard` carries `SECURITY_HEADERS`: a Content-Security-Policy the
Gradio page works under (same-origin everything; inline scripts and styles, which Gradio's page needs),
`frame-ancestors 'none'` and `X-Frame-Options: DENY` (no framing, so no click-jacking of "Delete for
good"), `nosniff`, `Referrer-Policy: same-origin`.

Inside Gradio's own app (through `mount_gradio_app(app_kwargs=...)`, a public parameter:
`gradio_app_kwargs`), `SignInGuard` throttles password guessing on `POST /login` (`ui.throttle`) and
keeps the API description out of the login page (Gradio embeds `window.gradio_api_info`, every named
endpoint with its parameters, in the page it serves before sign-in); Gradio's `/openapi.json`, `/docs`
and `/redoc` are turned off.

Uploads: the message box takes images and PDFs (issue 15). `/gradio_api/upload` is Gradio's, behind its
own sign-in check (`login_check`), its per-file cap (`max_file_size`, set to the graph's
`attachment_max_bytes` in ui/server.py: a larger file is refused with 413 before it is kept) and the app's
body limit. Gradio keeps each upload in its cache and serves it to any signed-in user who presents its
path (`/gradio_api/file=<path>`), and takes any cached path as an event's input: `SignInGuard` remembers
which user uploaded each path (`UploadOwners`, from Gradio's answer to the upload) and answers 404 to
anyone else, for `/gradio_api/file=` and for a file named in an event's data (a `path` there that is not
one of the caller's uploads, a URL included, is refused before Gradio reads it). The page's handler reads
each upload when the message is sent and deletes Gradio's copy at once (ui.handlers.read_uploads); the
graph checks type, size and count from the bytes.

Tabs: Gradio keys a tab (its state, its event stream, cancelling its events) on the `session_hash` the
browser chose. With sign-in on, `SignInGuard` binds each hash to the first signed-in user who presents
it; the tab's event stream, events and heartbeat are refused (403) to any other user, and
`/gradio_api/cancel`, which Gradio serves without sign-in, needs the tab's own user (401 without
sign-in, 403 for anyone else). The handlers check the same (`ui.handlers.Session.user`).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
from collections import OrderedDict
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import FastAPI
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ui.throttle import REFUSAL, LoginThrottle

log = logging.getLogger(__name__)

SIGN_IN_COOKIE_PREFIX = "access-token"  # Gradio's `access-token-<id>` and `access-token-unsecure-<id>`

# Gradio's page runs inline scripts (its config) and inline styles, and uses blob:/data: URLs for
# media and workers; everything else it loads is its own (fonts included). Checked in Chromium: no
# violation on the login page nor during a chat (tests/hardening/test_headers.py).
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline' 'unsafe-eval'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "media-src 'self' data: blob:",
        "worker-src 'self' blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


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
        send = _with_security_headers(send)
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


def _with_security_headers(send: Send) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            out = MutableHeaders(scope=message)
            for name, value in SECURITY_HEADERS.items():
                if name not in out:
                    out[name] = value
        await send(message)

    return sending


def client_address(scope: Scope) -> str:
    """The client's address as the server saw it (uvicorn applies X-Forwarded-For from trusted proxies:
    `--forwarded-allow-ips`, default 127.0.0.1)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


async def _form_user(scope: Scope, body: bytes) -> str:
    """The `username` field of a login form (urlencoded or multipart), as Gradio reads it; "" if none."""

    async def once() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(dict(scope), once).form(max_files=0, max_fields=20)
        value = form.get("username")
        return value.strip() if isinstance(value, str) else ""
    except Exception:  # any unreadable form has no user name (Gradio then refuses it)
        return ""


# Gradio's routes that act on a tab, found by its session_hash: in a JSON body, the query, or the path.
_TAB_BODY = re.compile(r"^/gradio_api/(queue/join|cancel|call/[^/]+)/?$")
_TAB_QUERY = re.compile(r"^/gradio_api/queue/data/?$")
_TAB_PATH = re.compile(r"^/gradio_api/heartbeat/([^/]+)/?$")
MAX_TABS = 100_000  # tab owners remembered (the least recently seen are forgotten first)
_UPLOAD = re.compile(r"^/gradio_api/upload/?$")
# Any other POST into Gradio's API may carry an event's `data` (run, api, call/v2, stream, ...): its files
# are checked too. Not the upload itself (a multipart body) nor sign-in (a form).
_DATA_BODY = re.compile(r"^/gradio_api/(?!upload/?$).+")
_FILE = re.compile(r"^/gradio_api/file[=/](.+)$")  # Gradio's file route and its deprecated form
MAX_UPLOADS = 100_000  # uploaded paths remembered (the oldest are forgotten first: then nobody gets them)


def _real(path: str) -> str:
    """A path as the file system resolves it (`..`, doubled slashes, symlinks), so that two spellings
    of one file are one key."""
    return os.path.realpath(path)


class UploadOwners:
    """Which signed-in users uploaded each file in Gradio's cache (Gradio names an upload by its
    content's hash and its name, so two users sending the same file share a path: both own it)."""

    def __init__(self, limit: int = MAX_UPLOADS) -> None:
        self.limit = limit
        self._owners: OrderedDict[str, set[str]] = OrderedDict()

    def add(self, path: str, user: str) -> None:
        key = _real(path)
        self._owners.setdefault(key, set()).add(user)
        self._owners.move_to_end(key)
        while len(self._owners) > self.limit:
            self._owners.popitem(last=False)

    def allows(self, path: str, user: str) -> bool:
        return user in self._owners.get(_real(path), ())


def _event_files(value: Any, depth: int = 0) -> list[str]:
    """Every `path` of a file object (Gradio's FileData: `{"path": ..., "meta": {"_type": ...}}`) in an
    event's data; a non-string path is returned as "" (refused)."""
    if depth > 8:
        return []
    if isinstance(value, dict):
        found = [value["path"] if isinstance(value["path"], str) else ""] if "path" in value else []
        return found + [p for v in value.values() for p in _event_files(v, depth + 1)]
    if isinstance(value, list):
        return [p for v in value for p in _event_files(v, depth + 1)]
    return []


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body (already bounded by the app's max_body_size); None if the client left."""
    body, more = b"", True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives `body` again, then whatever comes next (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def signed_in_user(scope: Scope, app: Any = None) -> str | None:
    """The signed-in user of a request inside Gradio's app (or beside it: `app`, the Gradio app), as
    Gradio's own `/user` route finds it: its `auth_dependency` (IAP), else its sign-in cookie."""
    app = app or scope.get("app")
    request = Request(scope)
    dependency = getattr(app, "auth_dependency", None)
    if dependency is not None:
        user = dependency(request)
        if inspect.isawaitable(user):
            user = await user
        return str(user) if user else None
    cookie_id = getattr(app, "cookie_id", "")
    token = request.cookies.get(f"access-token-{cookie_id}") or request.cookies.get(
        f"access-token-unsecure-{cookie_id}"
    )
    user = getattr(app, "tokens", {}).get(token) if token else None
    return str(user) if user else None


_API_INFO = re.compile(rb"window\.gradio_api_info = .*?;</script>", re.DOTALL)
_NO_API_INFO = b'window.gradio_api_info = {"named_endpoints":{},"unnamed_endpoints":{}};</script>'


class SignInGuard:
    """Inside Gradio's app: `POST /login` throttled (`ui.throttle`), the login page (the page Gradio
    serves before sign-in, its config saying `auth_required`) without the API description, and each tab
    (`session_hash`) kept to the user who opened it (see the module docstring)."""

    def __init__(self, app: ASGIApp, throttle: LoginThrottle | None = None) -> None:
        self.app = app
        self.throttle = throttle
        self.tab_owners: OrderedDict[str, str] = OrderedDict()
        self.uploads = UploadOwners()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "POST" and scope["path"].rstrip("/") == "/login" and self.throttle:
            await self._login(scope, receive, send, self.throttle)
            return
        path = scope["path"]
        if scope["method"] == "POST" and _UPLOAD.match(path):
            await self._upload(scope, receive, send)
            return
        if (found := _FILE.match(path)) is not None:
            user = await signed_in_user(scope)
            if user is not None and not self.uploads.allows(found.group(1), user):
                log.warning("refused a cached file that %r did not upload", user)
                await _not_found(scope, receive, send)
                return
            await self.app(scope, receive, send)  # not signed in: Gradio's own 401
            return
        if _TAB_BODY.match(path) or _TAB_QUERY.match(path) or _TAB_PATH.match(path):
            await self._tab(scope, receive, send)
            return
        if scope["method"] == "POST" and _DATA_BODY.match(path):
            await self._data(scope, receive, send)
            return
        if scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, _without_api_info(send))
            return
        await self.app(scope, receive, send)

    async def _tab(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A request on a tab: passed on only for the tab's own user (the first to present its hash)."""
        path = scope["path"]
        session_hash: str | None = None
        if (found := _TAB_PATH.match(path)) is not None:
            session_hash = found.group(1)
        elif _TAB_QUERY.match(path):
            session_hash = (
                parse_qs(scope.get("query_string", b"").decode("latin-1")).get("session_hash") or [None]
            )[0]
        else:
            body = await _read_body(receive)
            if body is None:
                return
            receive = _replay(body, receive)
            try:
                value = json.loads(body).get("session_hash")
            except (ValueError, AttributeError):  # not a JSON object: Gradio refuses it itself
                value = None
            session_hash = value if isinstance(value, str) else None
            if not await self._own_files(scope, body):
                await _not_found(scope, receive, send)
                return
        cancel = path.rstrip("/").endswith("/cancel")
        if session_hash is None and not cancel:
            await self.app(scope, receive, send)  # no tab named (e.g. a /call without one): Gradio's own
            return
        user = await signed_in_user(scope)
        if user is None:
            await JSONResponse({"detail": "Not authenticated"}, status_code=401)(scope, receive, send)
            return
        owner = self.tab_owners.get(session_hash) if session_hash else None
        if owner is None and not cancel and session_hash:
            owner = self.tab_owners[session_hash] = user
            if len(self.tab_owners) > MAX_TABS:
                self.tab_owners.popitem(last=False)
        if owner != user:
            log.warning("refused %s on a tab of another user (or none) to %r", path, user)
            await JSONResponse({"detail": "Not your tab."}, status_code=403)(scope, receive, send)
            return
        if session_hash:
            self.tab_owners.move_to_end(session_hash)
        await self.app(scope, receive, send)

    async def _own_files(self, scope: Scope, body: bytes) -> bool:
        """False when the JSON body's `data` names a file (a `path`) that is not one of the caller's
        uploads (a URL included)."""
        try:
            files = _event_files(json.loads(body).get("data"))
        except (ValueError, AttributeError):  # not a JSON object: no files named
            return True
        if not files:
            return True
        user = await signed_in_user(scope)
        if user is not None and all(self.uploads.allows(f, user) for f in files):
            return True
        log.warning("refused an event naming a file that %r did not upload", user)
        return False

    async def _data(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Gradio's other routes that run a function on `data` (`/run/<name>`, `/api/<name>`,
        `/call/v2/<name>`, ...): the same check of the files they name."""
        body = await _read_body(receive)
        if body is None:
            return
        receive = _replay(body, receive)
        if not await self._own_files(scope, body):
            await _not_found(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _upload(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Gradio's upload, its answer (the cached paths, JSON) noted as the caller's before it is sent:
        the page fetches a thumbnail as soon as it has the path."""
        user = await signed_in_user(scope)
        if user is None:
            await self.app(scope, receive, send)  # Gradio's own 401
            return
        status, chunks = 0, []

        async def note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status == 200:
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    try:
                        paths = json.loads(b"".join(chunks))
                    except ValueError:
                        paths = []
                    for p in paths if isinstance(paths, list) else []:
                        if isinstance(p, str):
                            self.uploads.add(p, user)
            await send(message)

        await self.app(scope, receive, note)

    async def _login(self, scope: Scope, receive: Receive, send: Send, throttle: LoginThrottle) -> None:
        # The form is small and the body already bounded by the app's max_body_size: read it, take the
        # user name, then hand the same bytes to Gradio.
        body = await _read_body(receive)
        if body is None:
            return
        user, address = await _form_user(scope, body), client_address(scope)
        wait = throttle.begin(user, address)
        if wait > 0:
            refusal = JSONResponse(
                {"detail": REFUSAL}, status_code=429, headers={"retry-after": throttle.retry_after(wait)}
            )
            await refusal(scope, receive, send)
            return
        replay = _replay(body, receive)
        status = 0

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, replay, watch)
        finally:
            if status == 200:
                throttle.succeeded(user, address)
            else:
                throttle.failed(user, address)


async def _not_found(scope: Scope, receive: Receive, send: Send) -> None:
    # One answer whether the path is another user's upload or nothing at all: a stranger learns nothing.
    await JSONResponse({"detail": "File not found."}, status_code=404)(scope, receive, send)


def _without_api_info(send: Send) -> Send:
    """A page response whose embedded config says `auth_required` (the login page) is sent without the
    API description Gradio embeds in it; other responses pass as they are."""
    start: Message | None = None
    chunks: list[bytes] = []

    async def sending(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            if Headers(raw=message["headers"]).get("content-type", "").startswith("text/html"):
                start = message  # held until the body is complete
                return
            await send(message)
            return
        if start is None or message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = b"".join(chunks)
        if b'"auth_required":true' in body:
            body = _API_INFO.sub(lambda _m: _NO_API_INFO, body, count=1)
        headers = MutableHeaders(scope=start)
        if "content-length" in headers:
            headers["content-length"] = str(len(body))
        await send(start)
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return sending


def gradio_app_kwargs(throttle: LoginThrottle | None) -> dict[str, Any]:
    """`mount_gradio_app(app_kwargs=...)` with sign-in on: Gradio's FastAPI app without its OpenAPI
    description and docs pages, and with `SignInGuard`."""
    return {
        "openapi_url": None,
        "docs_url": None,
        "redoc_url": None,
        "middleware": [Middleware(SignInGuard, throttle=throttle)],
    }


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
