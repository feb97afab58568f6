"""Who is chatting: Google IAP (in the cluster), a local username/password login, or the single local user.

Exactly one mode is active, chosen by settings:

- `trust_iap=true`: the user is the e-mail IAP vouches for. By default the signed header
  `X-Goog-IAP-JWT-Assertion` is verified (ES256 signature against IAP's public keys, issuer
  `https://cloud.google.com/iap`, audience `iap_audience`, expiry with 30 s skew) with `google-auth`'s
  JWT code; the unsigned `X-Goog-Authenticated-User-Email` (`accounts.google.com:alice@example.com`)
  must then agree with it if present. With `iap_verify_jwt=false` the unsigned header alone is
  trusted: anything that reaches the pod without passing IAP (another pod, a port-forward) can then
  claim to be anyone, so only do that where a network policy lets nothing but the IAP load balancer in.
- `auth_users="alice:pw,bob:pw2"`: our sign-in form (ui/signin.py; constant-time compare), and a signed,
  expiring session cookie that every replica checks (`SessionCookies`), handed to Gradio as its
  `auth_dependency` in place of its in-memory token table.
- neither: everyone is the single local user `user_id` (a laptop, a trusted network).

Requests without a valid identity get 401 from Gradio for every page and API route. `/healthz`, `/readyz`
and `/metrics` are plain FastAPI routes and need none (probes and Prometheus do not pass IAP).

`trust_iap` with a verified JWT but no `iap_audience` is the first deploy behind IAP: the audience names
the load balancer's backend service, which exists only once the Ingress has made it. The server then
starts anyway (no crash loop), logs at ERROR what to set, and `Identity.unconfigured` says why sign-in
cannot work: `/readyz` answers 503 with that reason, every other route but `/healthz` and `/metrics`
answers 503 with a short message (`SignInNotConfigured`), and nobody is let in.

API keys (`hybrid-chat keys create --user U`, `graph.memory.keys`) sign in to the OpenAI-compatible
endpoint (`Authorization: Bearer hck_...`, the `api_key` of OpenAI clients) in every mode, beside the
mode's own sign-in: a bearer token that looks like one of our keys decides alone (valid: its user;
wrong, unknown or revoked: refused, never another mode's user); any other request signs in as the mode
says (IAP's headers, HTTP Basic, or the local user, so the placeholder `api_key` an OpenAI client needs
still works where there is no sign-in). See `key_user`.

Sessions (password mode): the cookie holds the user name, a fingerprint of their password and their
sign-out epoch, signed with `session_secret` by itsdangerous (`URLSafeTimedSerializer`, which also dates
it: older than `session_max_age_s` is refused). Any replica with the same secret accepts it; signing out
bumps the user's epoch in the shared store (ui/shared.py), which ends every session of theirs on every
replica, and a changed password no longer matches the fingerprint. Without `session_secret` a random key
is made per process (one replica only, said in the log); with a shared store configured it is required.

Failed passwords are throttled per user name and client address (`ui.throttle`, one `LoginThrottle` per
`Identity`, shared by the login form and HTTP Basic). A rejected IAP assertion is logged by its kind of
fault (malformed, wrong algorithm, unknown key, bad signature or claims, ...), once per kind per minute
with the count since: never the token or its text, and not one line per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import httpx
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from graph.memory.keys import KeyStore, looks_like_key
from graph.settings import Settings
from ui.gradio_errors import GradioCallErrors
from ui.logs import LogLimiter
from ui.security import SESSION_COOKIES, gradio_app_kwargs
from ui.shared import Fallbacks, LocalState, SharedState, StoreUnavailable, key_part
from ui.signin import SignInPage
from ui.throttle import LoginThrottle

log = logging.getLogger(__name__)

IAP_JWT_HEADER = "x-goog-iap-jwt-assertion"
IAP_EMAIL_HEADER = "x-goog-authenticated-user-email"
IAP_ISSUER = "https://cloud.google.com/iap"

SIGN_IN = "Sign in to hybrid-chat."
NO_AUDIENCE = "sign-in is not configured yet: HYBRID_CHAT_IAP_AUDIENCE is not set"
NO_AUDIENCE_HELP = (
    "HYBRID_CHAT_TRUST_IAP is on but HYBRID_CHAT_IAP_AUDIENCE is not set, so IAP's signed header cannot be "
    "verified: every request but /healthz and /metrics gets 503 and /readyz is 503 until it is set. Set "
    "HYBRID_CHAT_IAP_AUDIENCE=/projects/NUMBER/global/backendServices/ID (NUMBER: gcloud projects describe "
    "PROJECT_ID --format='value(projectNumber)'; ID: gcloud compute backend-services list --global "
    "--filter='name~gradio-chat-service' --format='value(id)', the backend service the Ingress created; "
    "or Security > Identity-Aware Proxy > the backend's menu > Get JWT audience code in the console), "
    "then restart the Pods (docs/deploy.md, IAP). Do not set HYBRID_CHAT_IAP_VERIFY_JWT=false instead: "
    "that trusts an unsigned header anyone inside the cluster can forge."
)
# Routes that answer without a sign-in (kubelet probes and Prometheus do not pass IAP).
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class IapError(ValueError):
    """An IAP assertion that does not prove who the user is. `reason`: a short, fixed kind of fault,
    safe to log (the message may quote the token's content)."""

    def __init__(self, message: str, reason: str = "invalid assertion") -> None:
        super().__init__(message)
        self.reason = reason


def parse_iap_email_header(value: str | None) -> str | None:
    """`accounts.google.com:alice@example.com` -> `alice@example.com`; anything else -> None."""
    if not value:
        return None
    namespace, sep, email = value.strip().partition(":")
    email = email.strip().lower()
    if not sep or not namespace or "@" not in email or any(c.isspace() for c in email):
        return None
    return email


def parse_auth_users(raw: str) -> list[tuple[str, str]]:
    """`"alice:pw1,bob:pw2"` -> [("alice", "pw1"), ("bob", "pw2")]. Passwords may contain ':' but not ','."""
    users: list[tuple[str, str]] = []
    for entry in raw.split(","):
        if not entry.strip():
            continue
        name, sep, password = entry.strip().partition(":")
        if not sep or not name.strip() or not password:
            raise ValueError("HYBRID_CHAT_AUTH_USERS must look like 'user:password,user2:password2'")
        users.append((name.strip(), password))
    if not users:
        raise ValueError("HYBRID_CHAT_AUTH_USERS is set but names no user")
    return users


class IapVerifier:
    """Verifies IAP's signed header. Keys are fetched (async) from `certs_url` and cached for an hour;
    an unknown key id triggers one refresh (IAP rotates keys), at most once a minute."""

    def __init__(
        self,
        audience: str,
        certs_url: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        cache_s: float = 3600.0,
    ) -> None:
        self.audience = audience
        self.certs_url = certs_url
        self._transport = transport
        self._clock = clock
        self._cache_s = cache_s
        self._certs: dict[str, str] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def _fetch(self) -> None:
        async with httpx.AsyncClient(transport=self._transport, timeout=5.0) as client:
            response = await client.get(self.certs_url)
            response.raise_for_status()
            certs = response.json()
        if not isinstance(certs, dict) or not all(isinstance(v, str) for v in certs.values()):
            raise IapError(f"unexpected key file at {self.certs_url}", "IAP keys unavailable")
        self._certs, self._fetched_at = certs, self._clock()

    async def _key(self, kid: str) -> str:
        async with self._lock:
            age = None if self._fetched_at is None else self._clock() - self._fetched_at
            stale = age is None or age > self._cache_s or (kid not in self._certs and age > 60)
            if stale:
                try:
                    await self._fetch()
                except (httpx.HTTPError, ValueError) as exc:
                    if not self._certs:
                        raise IapError(f"cannot fetch IAP keys: {exc}", "IAP keys unavailable") from exc
                    log.warning("refreshing IAP keys failed (keeping the cached ones): %s", exc)
        if kid not in self._certs:
            raise IapError(f"unknown key id {kid!r}", "unknown key id")
        return self._certs[kid]

    async def verify(self, token: str) -> dict[str, Any]:
        """The verified claims; `IapError` if the token is not a valid IAP assertion for our audience."""
        from google.auth import exceptions, jwt

        try:
            header = jwt.decode_header(token)
        except (ValueError, exceptions.GoogleAuthError) as exc:
            raise IapError(f"malformed assertion: {exc}", "malformed token") from exc
        if header.get("alg") != "ES256":
            raise IapError(f"unexpected algorithm {header.get('alg')!r}", "not ES256")
        key = await self._key(str(header.get("kid")))
        try:
            claims = jwt.decode(
                token, certs={str(header["kid"]): key}, audience=self.audience, clock_skew_in_seconds=30
            )
        except (ValueError, exceptions.GoogleAuthError) as exc:
            raise IapError(str(exc), "bad signature, audience or expiry") from exc
        if claims.get("iss") != IAP_ISSUER:
            raise IapError(f"unexpected issuer {claims.get('iss')!r}", "wrong issuer")
        if not isinstance(claims.get("email"), str) or "@" not in claims["email"]:
            raise IapError("no e-mail in the assertion", "no e-mail")
        return claims


MIN_SECRET_CHARS = 32
PER_PROCESS_SESSIONS = (
    "HYBRID_CHAT_SESSION_SECRET is unset: sign-in cookies are signed with a key made for this process, so "
    "sign-ins end when it restarts and no other replica accepts them. Fine for one replica; with several, "
    "set it to the same random value on all (openssl rand -base64 48; docs/deploy.md)."
)


class SessionCookies:
    """Signed, expiring sign-in cookies that every replica checks (see the module docstring)."""

    SALT = "hybrid-chat sign-in"

    def __init__(self, settings: Settings, users: list[tuple[str, str]], state: SharedState) -> None:
        secret = settings.session_secret.get_secret_value() if settings.session_secret else None
        if secret is None:
            if settings.redis_url is not None:
                raise ValueError(
                    "HYBRID_CHAT_REDIS_URL is set (several replicas) but HYBRID_CHAT_SESSION_SECRET is not: "
                    "set it to the same random value on every replica (openssl rand -base64 48)"
                )
            log.warning(PER_PROCESS_SESSIONS)
            secret = secrets.token_urlsafe(48)
        elif len(secret) < MIN_SECRET_CHARS:
            raise ValueError(
                f"HYBRID_CHAT_SESSION_SECRET must be at least {MIN_SECRET_CHARS} characters "
                "(openssl rand -base64 48)"
            )
        self._secret = secret.encode()
        self.serializer = URLSafeTimedSerializer(secret, salt=self.SALT)
        self.max_age_s = settings.session_max_age_s
        self.passwords = dict(users)
        self.state = state
        self.epochs_seen: dict[str, int] = {}  # what this replica last read, for a store outage
        self.fallbacks = Fallbacks(log)

    def fingerprint(self, user: str) -> str:
        """A keyed hash of the user's password: a changed password no longer matches old cookies."""
        password = self.passwords.get(user, "")
        digest = hmac.new(self._secret, f"{user}\0{password}".encode(), hashlib.sha256).hexdigest()
        return digest[:24]

    def check_password(self, name: str, password: str) -> str | None:
        """The user whose name and password these are, else None; constant time in the password's
        correctness (`compare_digest`)."""
        found = None
        for user, secret in self.passwords.items():
            if hmac.compare_digest(name.encode(), user.encode()) & hmac.compare_digest(
                password.encode(), secret.encode()
            ):
                found = user
        return found

    @staticmethod
    def _epoch_key(user: str) -> str:
        return f"signout-epoch:{key_part(user)}"

    async def _epoch(self, user: str) -> int:
        """The user's sign-out epoch: the shared store's, else (an outage) the last this replica saw."""
        try:
            epoch = int(await self.state.get(self._epoch_key(user)) or 0)
        except StoreUnavailable as exc:
            self.fallbacks.note("sign-outs: the shared store is unavailable, using the last epochs seen", exc)
            return self.epochs_seen.get(user, 0)
        self.epochs_seen[user] = epoch
        return epoch

    async def issue(self, user: str) -> str:
        """A cookie value for `user`, just signed in."""
        return self.serializer.dumps({"u": user, "p": self.fingerprint(user), "e": await self._epoch(user)})

    async def user(self, token: str | None) -> str | None:
        """The user a cookie value signs in, None when it is forged, expired, signed out or outdated."""
        if not token:
            return None
        try:
            data = self.serializer.loads(token, max_age=self.max_age_s)
        except BadSignature:  # SignatureExpired included
            return None
        if not isinstance(data, dict):
            return None
        user, fingerprint, epoch = data.get("u"), data.get("p"), data.get("e")
        if not isinstance(user, str) or user not in self.passwords or not isinstance(epoch, int):
            return None
        if not isinstance(fingerprint, str) or not hmac.compare_digest(fingerprint, self.fingerprint(user)):
            return None
        return user if epoch >= await self._epoch(user) else None

    async def sign_out(self, user: str) -> None:
        """End every session of `user`, on every replica."""
        try:
            self.epochs_seen[user] = await self.state.bump(self._epoch_key(user))
        except StoreUnavailable as exc:
            self.fallbacks.note("sign-out: the shared store is unavailable, ended on this replica only", exc)
            self.epochs_seen[user] = self.epochs_seen.get(user, 0) + 1

    async def request_user(self, request: Any) -> str | None:
        """Gradio's `auth_dependency` in password mode: the user of a request's sign-in cookie."""
        cookies = request.cookies
        return await self.user(next((cookies[c] for c in SESSION_COOKIES if cookies.get(c)), None))


class Identity:
    """Resolves the user of each request as the settings say (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        verifier: IapVerifier | None = None,
        clock: Callable[[], float] = time.monotonic,
        state: SharedState | None = None,
    ) -> None:
        self.settings = settings
        self.state = state or LocalState(clock=clock)  # what replicas share (ui/shared.py)
        self.mode = "local"
        self.users: list[tuple[str, str]] = []
        self.verifier: IapVerifier | None = None
        # Why nobody can sign in (the server answers 503 and is not ready); None when sign-in works.
        self.unconfigured: str | None = None
        self.throttle = LoginThrottle(
            settings.login_max_failures, settings.login_lockout_s, state=self.state, clock=clock
        )
        self.sessions: SessionCookies | None = None
        self.rejections = LogLimiter(log, clock=clock)
        if settings.trust_iap and settings.auth_users is not None:
            raise ValueError("set either HYBRID_CHAT_TRUST_IAP or HYBRID_CHAT_AUTH_USERS, not both")
        if settings.trust_iap:
            self.mode = "iap"
            if settings.iap_verify_jwt:
                if verifier is None and not settings.iap_audience:
                    self.unconfigured = NO_AUDIENCE
                    log.error(NO_AUDIENCE_HELP)
                else:
                    self.verifier = verifier or IapVerifier(
                        str(settings.iap_audience), settings.iap_certs_url
                    )
            else:
                log.warning(
                    "trusting IAP's unsigned user header without verifying its JWT: only safe when "
                    "nothing but the IAP load balancer can reach this server"
                )
        elif settings.auth_users is not None:
            self.mode = "password"
            self.users = parse_auth_users(settings.auth_users.get_secret_value())
            self.sessions = SessionCookies(settings, self.users, self.state)

    async def iap_user(self, request: Any) -> str | None:
        """Gradio's `auth_dependency`: the IAP user of a request, or None (Gradio answers 401)."""
        if self.unconfigured is not None:  # nothing can be verified: nobody is let in
            return None
        headers = request.headers
        header_email = parse_iap_email_header(headers.get(IAP_EMAIL_HEADER))
        if self.verifier is None:
            return header_email
        token = headers.get(IAP_JWT_HEADER)
        if not token:
            return None
        try:
            claims = await self.verifier.verify(token)
        except IapError as exc:
            self.rejections.warning("rejected an IAP assertion", exc.reason)
            return None
        email = claims["email"].strip().lower()
        if headers.get(IAP_EMAIL_HEADER) is not None and header_email != email:
            self.rejections.warning("rejected an IAP assertion", "e-mail header disagrees with the token")
            return None
        return email

    def gradio_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `gr.mount_gradio_app` enforcing this mode on every Gradio route (and,
        innermost, `GradioCallErrors`: its `call` routes' 500s for a wrong request answered in words)."""
        inner = Middleware(GradioCallErrors)
        if self.mode == "iap":
            app_kwargs = gradio_app_kwargs(None)
            app_kwargs["middleware"] = [*app_kwargs["middleware"], inner]
            return {"auth_dependency": self.iap_user, "app_kwargs": app_kwargs}
        if self.mode == "password":
            assert self.sessions is not None
            app_kwargs = gradio_app_kwargs(self.throttle, self.sessions)
            # Our form in place of Gradio's (ui/signin.py); outermost, so its sign-ins are throttled too.
            app_kwargs["middleware"] = [
                Middleware(SignInPage, message=SIGN_IN),
                *app_kwargs["middleware"],
                inner,
            ]
            # Gradio asks our signed cookie who is signed in, on every route (its token table is unused).
            return {
                "auth_dependency": self.sessions.request_user,
                "auth_message": SIGN_IN,
                "app_kwargs": app_kwargs,
            }
        return {"app_kwargs": {"middleware": [inner]}}

    def user_of(self, request: Any) -> str:
        """The user of a Gradio event (`gr.Request`): the signed-in name, else the single local user."""
        name = getattr(request, "username", None) if request is not None else None
        if self.mode == "local":
            return self.settings.user_id
        if not name:  # Gradio refuses unauthenticated requests before this; never fall back to a shared user
            raise PermissionError("not signed in")
        return str(name)


class SignInNotConfigured:
    """ASGI middleware for a server whose sign-in cannot work yet (`Identity.unconfigured`): every route
    but the probes answers 503 with a short message (JSON under /api/, plain text elsewhere) instead of a
    401 or a stack trace. Installed inside the edge middleware, so the 503 carries the security headers."""

    def __init__(self, app: ASGIApp, *, reason: str) -> None:
        self.app = app
        self.reason = reason

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "") in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        message = f"hybrid-chat is not available: {self.reason}. The operator must finish the set-up."
        if scope.get("path", "").startswith("/api/"):
            body, ctype = json.dumps({"detail": message}).encode(), b"application/json"
        else:
            body, ctype = message.encode() + b"\n", b"text/plain; charset=utf-8"
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", ctype),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                    (b"retry-after", b"60"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class KeyRefused(Exception):
    """A bearer token claiming to be an API key that is not an active one; the message is for the caller."""


def bearer_token(request: Any) -> str | None:
    """The token of an `Authorization: Bearer ...` header, or None."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


async def key_user(keys: KeyStore | None, request: Any) -> str | None:
    """The user whose API key the request carries; None when it carries none (the mode's own sign-in
    applies), `KeyRefused` when it carries one that is malformed, unknown, wrong or revoked. The key is
    never logged: only its public id."""
    token = bearer_token(request)
    if token is None or not looks_like_key(token):
        return None
    record = await keys.acheck(token) if keys is not None else None
    if record is None:
        raise KeyRefused("Invalid or revoked API key.")
    log.debug("signed in with API key %s", record.id)
    return record.user_id
