"""An instant OpenAI-compatible stub (a raw ASGI app on uvicorn), run in its own process.

Answers `/v1/chat/completions` at once with a fixed short answer, streaming or not, with usage. Used to
measure what the client stack adds per turn, with no model time in the way.

Run: .venv/bin/python -m bench.stub --port 8899
"""

from __future__ import annotations

import argparse
import json

WORDS = ["Hello", " from", " the", " stub", "."]


def _chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
    body = {
        "id": "stub",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "stub",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if usage is None else [],
    }
    if usage is not None:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


USAGE = {"prompt_tokens": 10, "completion_tokens": len(WORDS), "total_tokens": 10 + len(WORDS)}
STREAM_BODY = (
    _chunk({"role": "assistant", "content": ""})
    + b"".join(_chunk({"content": w}) for w in WORDS)
    + _chunk({}, "stop")
    + _chunk({}, usage=USAGE)
    + b"data: [DONE]\n\n"
)
UNARY_BODY = json.dumps(
    {
        "id": "stub",
        "object": "chat.completion",
        "created": 0,
        "model": "stub",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "".join(WORDS)}, "finish_reason": "stop"}
        ],
        "usage": USAGE,
    }
).encode()


CHUNK_DELAY_S = 0.0  # --chunk-delay-ms: a streaming backend that takes its time (sessions overlap)


async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    stream = b'"stream":true' in body.replace(b" ", b"")
    payload, ctype = (STREAM_BODY, b"text/event-stream") if stream else (UNARY_BODY, b"application/json")
    if scope["path"].endswith("/models"):
        payload, ctype = b'{"data":[{"id":"stub","object":"model"}]}', b"application/json"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", ctype)]})
    if stream and CHUNK_DELAY_S > 0:
        import asyncio

        for piece in payload.split(b"\n\n")[:-1]:
            await send({"type": "http.response.body", "body": piece + b"\n\n", "more_body": True})
            await asyncio.sleep(CHUNK_DELAY_S)
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.body", "body": payload})


if __name__ == "__main__":
    import uvicorn

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--chunk-delay-ms", type=float, default=0.0)
    args = ap.parse_args()
    port = args.port
    CHUNK_DELAY_S = args.chunk_delay_ms / 1000
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        loop="uvloop" if __import__("importlib.util").util.find_spec("uvloop") else "asyncio",
    )
