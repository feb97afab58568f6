"""Gradio's `call` routes, answered in words when the request is wrong rather than with a 500.

`POST /gradio_api/call/v2/<name>` looks `<name>` up in the API description without checking it is
there, and fits the body to the endpoint's parameters by raising: a name that is not in the API (a
page-only event such as `stop`, or a typo) raises `KeyError`, arguments that do not fit raise
`TypeError`, and `POST /gradio_api/call/<name>` raises `FnIndexInferError` for an unknown name. Each was
a 500 with a traceback in the log. `GradioCallErrors` (ASGI middleware inside Gradio's app) answers them
404 (no such endpoint: see `/gradio_api/info`) and 422 (the arguments, in Gradio's words). Only on those
routes, and only before a response has started: there the request's shape is all that can fail (the
event itself runs later, on Gradio's queue).
"""

from __future__ import annotations

import re

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CALL = re.compile(r"^(?:/gradio_api)?/call/(?:v2/)?(?P<name>[^/]+)/?$")


class GradioCallErrors:
    """See the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = CALL.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        from gradio.route_utils import FnIndexInferError

        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except (KeyError, FnIndexInferError):
            if started:
                raise
            detail = f"There is no API endpoint named {match['name'][:100]!r}: /gradio_api/info lists them."
            await JSONResponse({"detail": detail}, status_code=404)(scope, receive, send)
        except TypeError as exc:  # gradio_client's construct_args: what the endpoint's parameters take
            if started:
                raise
            await JSONResponse({"detail": str(exc)[:500]}, status_code=422)(scope, receive, send)
