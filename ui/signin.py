"""Our sign-in page, in place of Gradio's login form (password mode, `HYBRID_CHAT_AUTH_USERS`).

Gradio's form forgets the user name after a wrong password, says "Incorrect Credentials", shows a
throttled sign-in as the same error, and does not wear the chat's theme; it has no option for any of it.
So `SignInPage` (ASGI middleware inside Gradio's app, outside `ui.security.SignInGuard`):

- `GET /` without a sign-in (Gradio answers 401, or its login form: its page config says
  `"auth_required":true`) is sent to `signin?c=...`: the conversation address (`?c=<id>`) is carried
  through.
- `GET signin` is a plain HTML form (no script) in the chat's colours and fonts.
- `POST signin` hands the name and password to the app's `POST /login` (`ui.security.SignInGuard`:
  throttled, checked, and answered with the signed session cookie every replica accepts). Success goes
  back to the chat with that cookie; a wrong password shows the form again with the user name kept and
  the password field focused; a throttled sign-in says how long to wait.
"""

from __future__ import annotations

import html
import logging
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ui.theme import FONT

log = logging.getLogger("hybrid_chat.ui")

WRONG = "Wrong user name or password."
BROKEN = "Signing in failed on our side. Try again in a moment."
KEPT_PARAMS = ("c",)  # what the chat's address may carry through sign-in: the open conversation


class SignInPage:
    """See the module docstring."""

    def __init__(self, app: ASGIApp, *, message: str = "Sign in to hybrid-chat.") -> None:
        self.app = app
        self.message = message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"].rstrip("/") or "/", scope["method"]
        if path == "/signin" and method in ("GET", "HEAD"):
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            await self.form(kept_query(query))(scope, receive, send)
        elif path == "/signin" and method == "POST":
            await self.sign_in(scope, receive, send)
        elif path == "/" and method == "GET":
            await self.page_or_form(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def form(self, query: str, *, user: str = "", error: str = "", status: int = 200) -> HTMLResponse:
        return HTMLResponse(
            render(self.message, query, user=user, error=error),
            status_code=status,
            headers={"cache-control": "no-store"},
        )

    async def page_or_form(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The chat page, or (not signed in) a redirect to our form with the address's `?c=` kept."""
        start: Message | None = None
        chunks: list[bytes] = []

        async def keep(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            else:
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, keep)
        body = b"".join(chunks)
        signed_out = start is not None and (
            start["status"] == 401 or (start["status"] == 200 and b'"auth_required":true' in body)
        )
        if signed_out:
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            kept = kept_query(query)
            await RedirectResponse("signin" + (f"?{kept}" if kept else ""), status_code=303)(
                scope, receive, send
            )
            return
        if start is None:  # the app ended without a response (it raised): nothing to pass on
            return
        await send(start)
        await send({"type": "http.response.body", "body": body})

    async def sign_in(self, scope: Scope, receive: Receive, send: Send) -> None:
        form: FormData = await Request(scope, receive).form()  # the body is bounded by the app
        user = str(form.get("username") or "").strip()
        password = str(form.get("password") or "")
        query = kept_query({k: str(v) for k, v in form.items() if k in KEPT_PARAMS})
        status, headers = await self.gradio_login(scope, user, password)
        if status == 200:
            done = RedirectResponse("./" + (f"?{query}" if query else ""), status_code=303)
            for name, value in headers:
                if name.lower() == b"set-cookie":
                    done.raw_headers.append((name, value))
            await done(scope, receive, send)
            return
        if status == 429:  # SignInGuard's throttle: say how long to wait, from its Retry-After
            retry = next((v.decode() for k, v in headers if k.lower() == b"retry-after"), "")
            refusal = self.form(query, user=user, error=wait_words(retry), status=429)
            if retry:
                refusal.headers["retry-after"] = retry
            await refusal(scope, receive, send)
            return
        if status in (400, 401, 422):
            await self.form(query, user=user, error=WRONG, status=401)(scope, receive, send)
            return
        log.warning("sign-in: Gradio's /login answered %s", status)
        await self.form(query, user=user, error=BROKEN, status=503)(scope, receive, send)

    async def gradio_login(
        self, scope: Scope, user: str, password: str
    ) -> tuple[int, list[tuple[bytes, bytes]]]:
        """The app's `POST /login` with this form's fields, answered here rather than to the browser."""
        body = urlencode({"username": user, "password": password}).encode()
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        headers += [
            (b"content-type", b"application/x-www-form-urlencoded"),
            (b"content-length", str(len(body)).encode()),
        ]
        inner = {**scope, "path": "/login", "raw_path": b"/login", "query_string": b"", "headers": headers}
        sent = False
        status, out_headers = 0, []

        async def receive() -> Message:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def capture(message: Message) -> None:
            nonlocal status, out_headers
            if message["type"] == "http.response.start":
                status, out_headers = message["status"], list(message.get("headers", []))

        await self.app(inner, receive, capture)
        return status, out_headers


def kept_query(params: dict[str, str]) -> str:
    """The part of the chat's address kept through sign-in (`c=<id>`), re-encoded: nothing else passes."""
    return urlencode({k: v for k, v in params.items() if k in KEPT_PARAMS and v})


def wait_words(retry_after: str) -> str:
    """ "Too many failed sign-ins. Try again in 2 minutes." from a Retry-After in seconds."""
    try:
        seconds = max(1, int(float(retry_after)))
    except ValueError:
        return "Too many failed sign-ins. Wait a few minutes, then try again."
    if seconds < 90:
        return f"Too many failed sign-ins. Try again in {seconds} second{'s' if seconds != 1 else ''}."
    minutes = round(seconds / 60)
    return f"Too many failed sign-ins. Try again in {minutes} minutes."


def render(message: str, query: str, *, user: str = "", error: str = "") -> str:
    """The form: the chat's palette and system fonts, light or dark as the device is; no script."""
    esc = html.escape
    hidden = "".join(f'<input type="hidden" name="{esc(k)}" value="{esc(v)}">' for k, v in parse_qsl(query))
    alert = f'<p class="error" role="alert">{esc(error)}</p>' if error else ""
    focus_user, focus_password = ("", " autofocus") if user else (" autofocus", "")
    fonts = ", ".join(f'"{f}"' if " " in f else f for f in FONT)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · hybrid-chat</title>
<style>
:root {{ color-scheme: light dark; --bg: #F8F9FA; --card: #FFFFFF; --text: #1F1F1F; --muted: #5F6368;
  --line: #DADCE0; --blue: #1A73E8; --blue-hover: #1967D2; --on-blue: #FFFFFF; --red: #D93025; }}
@media (prefers-color-scheme: dark) {{ :root {{ --bg: #1F1F1F; --card: #2D2E30; --text: #E8EAED;
  --muted: #9AA0A6; --line: #5F6368; --blue: #8AB4F8; --blue-hover: #AECBFA; --on-blue: #202124;
  --red: #F28B82; }} }}
body {{ margin: 0; min-height: 100vh; display: grid; place-items: center; background: var(--bg);
  color: var(--text); font-family: {fonts}; }}
main {{ width: min(360px, calc(100vw - 32px)); background: var(--card); border-radius: 16px;
  padding: 28px 24px; box-shadow: 0 1px 3px rgba(60, 64, 67, .3); }}
h1 {{ font-size: 1.25rem; font-weight: 600; margin: 0 0 4px; }}
p.lead {{ color: var(--muted); margin: 0 0 20px; }}
label {{ display: block; font-size: .9rem; margin: 14px 0 6px; }}
input {{ box-sizing: border-box; width: 100%; padding: 10px 12px; font: inherit; color: var(--text);
  background: var(--card); border: 1px solid var(--line); border-radius: 8px; }}
input:focus {{ outline: 2px solid var(--blue); outline-offset: -1px; }}
button {{ width: 100%; margin-top: 22px; padding: 10px; font: inherit; font-weight: 600; border: 0;
  border-radius: 8px; color: var(--on-blue); background: var(--blue); cursor: pointer; }}
button:hover {{ background: var(--blue-hover); }}
.error {{ color: var(--red); margin: 0 0 8px; }}
</style></head>
<body><main>
<h1>hybrid-chat</h1>
<p class="lead">{esc(message)}</p>
{alert}
<form method="post" action="signin">{hidden}
<label for="username">User name</label>
<input id="username" name="username" autocomplete="username" required value="{esc(user)}"{focus_user}>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required{focus_password}>
<button type="submit">Sign in</button>
</form>
</main></body></html>
"""
