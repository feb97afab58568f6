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
`gradio_app_kwargs`), `SignInGuard` answers `POST /login` in password mode (throttled by `ui.throttle`,
then the signed session cookie of `ui.auth.SessionCookies`, which every replica accepts) and the sign-out
(every session of the user ends, on every replica), and keeps the API description out of the login page
(Gradio embeds `window.gradio_api_info`, every named endpoint with its parameters, in the page it serves
before sign-in); Gradio's `/openapi.json`, `/docs` and `/redoc` are turned off.

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
browser chose, and reads it wherever a route takes it: the query, a JSON or form body, a path segment.
With sign-in on, `SignInGuard` binds each hash to the first signed-in user who presents it, and checks
every request into Gradio's app, whatever its route, rather than a list of Gradio's routes (Gradio has
many that take a tab, and adds more): a request that names a tab there must come from the tab's user
(401 without sign-in, 403 for anyone else). A request that names a tab more than once (the query twice,
the query and the body, a duplicated JSON key) is refused with 400: Gradio and a check can read
different ones (the first query value, the last). The handlers check the same
(`ui.handlers.Session.user`).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
from collections import OrderedDict
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import fastapi.routing
from fastapi import FastAPI
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ui.throttle import REFUSAL, LoginThrottle

if TYPE_CHECKING:
    from ui.auth import SessionCookies

log = logging.getLogger(__name__)

SIGN_IN_COOKIE_PREFIX = "access-token"  # Gradio's `access-token-<id>` and `access-token-unsecure-<id>`
# Password mode's signed session cookie (ui.auth.SessionCookies), named as Gradio names its own: one for
# HTTPS, its twin for plain HTTP (a Secure cookie is dropped there), each tightened by `SameSiteGuard`.
SESSION_COOKIES = (f"{SIGN_IN_COOKIE_PREFIX}-hybrid-chat", f"{SIGN_IN_COOKIE_PREFIX}-unsecure-hybrid-chat")

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


async def _form_fields(scope: Scope, body: bytes) -> tuple[str, str]:
    """The `username` (stripped) and `password` fields of a sign-in form (urlencoded or multipart), as
    Gradio's login route reads them; "" for a field that is missing or not text."""

    async def once() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(dict(scope), once).form(max_files=0, max_fields=20)
        user, password = form.get("username"), form.get("password")
        return (user.strip() if isinstance(user, str) else "", password if isinstance(password, str) else "")
    except Exception:  # any unreadable form has no user name nor password (then refused)
        return "", ""


SESSION_HASH = "session_hash"  # how Gradio names the tab a request is for, in every place it reads one
EVENT_ID = "event_id"  # a path parameter Gradio reads as a tab's name when no event has that id
MAX_TABS = 100_000  # tab owners remembered (the least recently seen are forgotten first)
MAX_FORM_PART_BYTES = 64 * 1024 * 1024  # a form field read for its tab: bounded by the body limit anyway
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


def _has_body(scope: Scope) -> bool:
    """Whether a request may carry a body: any method but GET and HEAD, or one that declares a body."""
    headers = Headers(scope=scope)
    declared = "transfer-encoding" in headers or headers.get("content-length", "0").strip() != "0"
    return scope["method"] not in ("GET", "HEAD") or declared


def _query_tabs(scope: Scope) -> list[Any]:
    """Every `session_hash` value in the query, read as Starlette (and so Gradio) reads a query."""
    query = scope.get("query_string", b"").decode("latin-1")
    return [value for key, value in parse_qsl(query, keep_blank_values=True) if key == SESSION_HASH]


def _routes(app: Any) -> list[BaseRoute]:
    """The routes of Gradio's app, one entry each (newer FastAPI keeps an included router as one entry:
    `iter_route_contexts` lists its routes)."""
    routes = getattr(app, "routes", None) or []
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    return list(flatten(routes)) if flatten is not None else list(routes)


def _route_of(scope: Scope) -> tuple[str, dict[str, Any]]:
    """The route Gradio's router will pick for this request, as Starlette picks it (the first full match,
    else the first that differs by method only): its path template ("" for none) and path parameters."""
    partial: tuple[str, dict[str, Any]] | None = None
    for route in _routes(scope.get("app")):
        match, child = route.matches(scope)
        if match is Match.NONE:
            continue
        found = (str(getattr(route, "path", "")), dict(child.get("path_params", {})))
        if match is Match.FULL:
            return found
        partial = partial or found
    return partial or ("", {})


def _json_object(body: bytes) -> tuple[dict[str, Any] | None, list[Any]]:
    """A JSON body as Gradio reads it (of duplicated keys, the last) and every top-level `session_hash`
    value in it (duplicates too); (None, []) for a body that is not a JSON object."""
    objects: list[list[tuple[str, Any]]] = []

    def keep(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        objects.append(pairs)  # innermost first: the top-level object comes last
        return dict(pairs)

    try:
        value = json.loads(body, object_pairs_hook=keep)
    except (ValueError, RecursionError):  # not JSON: Gradio cannot read it either
        return None, []
    if not isinstance(value, dict):
        return None, []
    return value, [v for k, v in objects[-1] if k == SESSION_HASH]


async def _form_tabs(scope: Scope, body: bytes) -> list[Any] | None:
    """Every `session_hash` field of a form body (urlencoded or multipart), read with Starlette's parser
    as Gradio's routes read forms; [] for a body that is not a form; None for a form that cannot be read."""

    async def once() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(dict(scope), once).form(max_part_size=MAX_FORM_PART_BYTES)
    except (HTTPException, MultiPartException):
        return None
    try:
        return list(form.getlist(SESSION_HASH))
    finally:
        await form.close()


async def signed_in_user(scope: Scope, app: Any = None) -> str | None:
    """The signed-in user of a request inside Gradio's app (or beside it: `app`, the Gradio app), as
    Gradio's own `/user` route finds it: its `auth_dependency` (IAP's header, or password mode's signed
    session cookie), else Gradio's own token table (unused by this app's modes)."""
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
    """Inside Gradio's app: sign-in (`POST /login`, throttled) and sign-out answered, the login page (the
    page Gradio serves before sign-in, its config saying `auth_required`) without the API description, and
    each tab (`session_hash`) kept to the user who opened it (see the module docstring)."""

    def __init__(
        self, app: ASGIApp, throttle: LoginThrottle | None = None, sessions: SessionCookies | None = None
    ) -> None:
        self.app = app
        self.throttle = throttle
        self.sessions = sessions  # password mode: sign-in and sign-out are answered here
        self.tab_owners: OrderedDict[str, str] = OrderedDict()
        self.uploads = UploadOwners()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        # Every request is checked for the tab it names, whatever its route: Gradio reads a tab on many
        # routes and adds more. The body (bounded by the app's max_body_size) is read whole for it, and
        # handed on to Gradio unchanged.
        route, params = _route_of(scope)
        # A path parameter names a tab when Gradio calls it so, and an event id that is a tab's hash
        # does too (Gradio's `/call/<name>/<event_id>` reads the tab of that name when no event has the
        # id). Not any parameter that is a tab's hash: a user could claim "predict" and block /run/predict.
        named = _query_tabs(scope) + [
            v for k, v in params.items() if k == SESSION_HASH or (k == EVENT_ID and v in self.tab_owners)
        ]
        event: dict[str, Any] | None = None
        if _has_body(scope):
            body = await _read_body(receive)
            if body is None:
                return
            receive = _replay(body, receive)
            event, in_json = _json_object(body)
            in_form = await _form_tabs(scope, body)
            if in_form is None:
                await JSONResponse({"detail": "Unreadable form."}, status_code=400)(scope, receive, send)
                return
            named += in_json + in_form
        refusal = await self._tab_refusal(scope, route, named)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if method == "POST" and path.rstrip("/") == "/login" and self.sessions is not None:
            await self._login(scope, receive, send, self.sessions)
            return
        if path.rstrip("/") == "/logout" and self.sessions is not None:
            await self._logout(scope, receive, send, self.sessions)
            return
        if method == "POST" and _UPLOAD.match(path):
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
        if event is not None and method == "POST" and _DATA_BODY.match(path):
            if not await self._own_files(scope, event):
                await _not_found(scope, receive, send)
                return
        if method in ("GET", "HEAD"):
            await self.app(scope, receive, _without_api_info(send))
            return
        await self.app(scope, receive, send)

    async def _tab_refusal(self, scope: Scope, route: str, named: list[Any]) -> Response | None:
        """The refusal of a request that names a tab ambiguously or names another user's; None when it
        names no tab, or one tab once as its user (the first signed-in user to name a tab claims it)."""
        if not named:
            return None
        where = f"{scope['method']} {route or 'an unrouted path'}"  # the route's template: no hash, no text
        if len(named) > 1:
            log.warning("refused %s: it names a tab %d times", where, len(named))
            detail = "This request names its tab (session_hash) more than once; name it once."
            return JSONResponse({"detail": detail}, status_code=400)
        (tab,) = named
        if tab is None:  # a JSON null: Gradio reads no tab
            return None
        if not isinstance(tab, str):
            log.warning("refused %s: its tab is not named by a string", where)
            return JSONResponse({"detail": "session_hash must be a string."}, status_code=400)
        user = await signed_in_user(scope)
        if user is None:
            return JSONResponse({"detail": "Not authenticated"}, status_code=401)
        owner = self.tab_owners.setdefault(tab, user)
        self.tab_owners.move_to_end(tab)
        while len(self.tab_owners) > MAX_TABS:
            self.tab_owners.popitem(last=False)
        if owner != user:
            log.warning("refused %s on another user's tab to %r", where, user)
            return JSONResponse({"detail": "Not your tab."}, status_code=403)
        return None

    async def _own_files(self, scope: Scope, event: dict[str, Any]) -> bool:
        """False when an event's `data` names a file (a `path`) that is not one of the caller's uploads
        (a URL included)."""
        files = _event_files(event.get("data"))
        if not files:
            return True
        user = await signed_in_user(scope)
        if user is not None and all(self.uploads.allows(f, user) for f in files):
            return True
        log.warning("refused an event naming a file that %r did not upload", user)
        return False

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

    async def _login(self, scope: Scope, receive: Receive, send: Send, sessions: SessionCookies) -> None:
        """`POST /login` (the form's fields, as Gradio's own route takes them): the password checked after
        the throttle lets the attempt through, then the signed session cookie (`ui.auth.SessionCookies`)
        in place of Gradio's token, which only the replica that made it would know. 200 as Gradio
        answers, 400 for a wrong name or password, 429 with `Retry-After` while throttled."""
        # The form is small and the body already bounded by the app's max_body_size.
        body = await _read_body(receive)
        if body is None:
            return
        (user, password), address = await _form_fields(scope, body), client_address(scope)
        throttle = self.throttle
        wait = await throttle.begin(user, address) if throttle is not None else 0.0
        if wait > 0 and throttle is not None:
            refusal = JSONResponse(
                {"detail": REFUSAL}, status_code=429, headers={"retry-after": throttle.retry_after(wait)}
            )
            await refusal(scope, receive, send)
            return
        signed_in = sessions.check_password(user, password)
        if signed_in is None:
            if throttle is not None:
                await throttle.failed(user, address)
            await JSONResponse({"detail": "Incorrect credentials."}, status_code=400)(scope, receive, send)
            return
        if throttle is not None:
            await throttle.succeeded(user, address)
        response = JSONResponse({"success": True})
        token = await sessions.issue(signed_in)
        secure_cookie, plain_cookie = SESSION_COOKIES
        response.set_cookie(secure_cookie, token, httponly=True, samesite="lax", secure=True)
        response.set_cookie(plain_cookie, token, httponly=True, samesite="lax")
        await response(scope, receive, send)

    async def _logout(self, scope: Scope, receive: Receive, send: Send, sessions: SessionCookies) -> None:
        """Sign-out (`SameSiteGuard` lets only a POST reach here): every session of the user ends, on
        every replica, and this browser's cookies are deleted; then back to the chat (its sign-in form)."""
        user = await signed_in_user(scope)
        if user is not None:
            await sessions.sign_out(user)
            log.info("signed out %r", user)
        response = RedirectResponse("./", status_code=302)
        for name in SESSION_COOKIES:
            response.delete_cookie(name, path="/")
        await response(scope, receive, send)


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


def gradio_app_kwargs(
    throttle: LoginThrottle | None, sessions: SessionCookies | None = None
) -> dict[str, Any]:
    """`mount_gradio_app(app_kwargs=...)` with sign-in on: Gradio's FastAPI app without its OpenAPI
    description and docs pages, and with `SignInGuard` (answering sign-in and sign-out with `sessions`)."""
    return {
        "openapi_url": None,
        "docs_url": None,
        "redoc_url": None,
        "middleware": [Middleware(SignInGuard, throttle=throttle, sessions=sessions)],
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
