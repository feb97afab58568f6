"""Gradio's `call` and `run` routes, answered in words when the request is wrong rather than with a 500.

`POST /gradio_api/call/v2/<name>` looks `<name>` up in the API description without checking it is
there, and fits the body to the endpoint's parameters by raising: a name that is not in the API (a
page-only event such as `stop`, or a typo) raises `KeyError`, arguments that do not fit raise
`TypeError`, and `POST /gradio_api/call/<name>` raises `FnIndexInferError` for an unknown name. Each was
a 500 with a traceback in the log. `GradioCallErrors` (ASGI middleware inside Gradio's app) answers them
404 (no such endpoint: see `/gradio_api/info`) and 422 (the arguments, in Gradio's words). Only on those
routes, and only before a response has started: there the request's shape is all that can fail (the
event itself runs later, on Gradio's queue).

`POST /gradio_api/run/<name>` (and its alias `/api/<name>`) runs the event at once and catches what it
raises: an unknown name or `fn_index`, or a `data` list of the wrong length, came back as a 500 with
Gradio's description of the event's components, and a traceback printed to stderr for anyone to repeat.
Here the request is checked against the event before Gradio sees it, with Gradio's own lookup
(`route_utils.get_fn`): 404 for no such event, 422 for the wrong number of inputs.
"""

from __future__ import annotations

import re

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ui.security import _read_body, _replay  # the edge's body reader: bounded, a disconnect is None

CALL = re.compile(r"^(?:/gradio_api)?/call/(?:v2/)?(?P<name>[^/]+)/?$")
RUN = re.compile(r"^(?:/gradio_api)?/(?:run|api)/(?P<name>[^/]+)/?$")


class GradioCallErrors:
    """See the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and (run := RUN.match(scope["path"])):
            await self.run(run["name"], scope, receive, send)
            return
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

    async def run(self, name: str, scope: Scope, receive: Receive, send: Send) -> None:
        """`/run/<name>`: the event looked up and its inputs counted before Gradio runs it."""
        from gradio.data_classes import PredictBody
        from gradio.route_utils import FnIndexInferError, get_fn
        from pydantic import ValidationError

        raw = await _read_body(receive)
        if raw is None:  # the client left
            return
        replay = _replay(raw, receive)
        try:
            body = PredictBody.model_validate_json(raw or b"{}")
        except ValidationError:  # not a predict body at all: Gradio's own 422 says what is missing
            await self.app(scope, replay, send)
            return
        try:
            fn = get_fn(blocks=scope["app"].get_blocks(), api_name=name, body=body)
        except (KeyError, FnIndexInferError):
            detail = f"There is no event named {name[:100]!r}: /gradio_api/info lists the API's."
            await JSONResponse({"detail": detail}, status_code=404)(scope, replay, send)
            return
        takes = {len(fn.inputs), len([b for b in fn.inputs if not b.skip_api])}  # page / API form
        if len(body.data) not in takes:
            wanted = " or ".join(str(n) for n in sorted(takes))
            sent = len(body.data)
            detail = f"The event {name[:100]!r} takes {wanted} input values in `data`; {sent} were sent."
            await JSONResponse({"detail": detail}, status_code=422)(scope, replay, send)
            return
        await self.app(scope, replay, send)

