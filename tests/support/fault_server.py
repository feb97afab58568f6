"""An OpenAI-compatible server that misbehaves on purpose: the faults a vLLM backend really shows.

Modes: "ok" (answers, streaming), "hang" (accepts, never answers), "reset" (drops the connection),
"fail_after_3" (3 chunks, then the connection drops), "http_429" / "http_503" (an error status),
"echo" (streams "echo:" + the user messages' texts joined by "|", a word at a time, so a test sees the
prompt a graph sent) and "echo_slow" (the same, one word every 0.2 s, padded with " ..." or cut to the
request's max_tokens words: an answer of a known length, e.g. 5 words = 1 s), "tools" (as vLLM with a
tool-call parser: a request with `tools` whose last message is the user's gets a call of the named or
first tool, its first parameter set to the user message's last word; streamed as vLLM streams calls, the
arguments in pieces; after tool results, "echo:" + the results joined by "|").
`/metrics` serves `waiting` as vLLM's `vllm:num_requests_waiting`. Counts the chat requests it received;
`bodies` keeps every chat request's JSON body and `prompts` its messages, in arrival order.
`in_progress` counts the chat requests being answered now (a client that goes away ends its request at
the next word it is sent) and `max_in_progress` the most at once.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from typing import Any

from graph.local.vertex_standin import QuietHTTPServer


class FaultServer:
    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.waiting = 0.0
        self.requests = 0
        self.bodies: list[dict[str, Any]] = []
        self.prompts: list[list[dict[str, Any]]] = []
        self.in_progress = 0
        self.max_in_progress = 0
        self._count = threading.Lock()
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/metrics":
                    gauge = "vllm:num_requests_waiting"
                    body = f"# TYPE {gauge} gauge\n{gauge} {server.waiting}\n"
                    self._send(200, body.encode(), "text/plain")
                else:
                    self._send(200, b"{}", "application/json")

            def do_POST(self) -> None:
                with server._count:
                    server.in_progress += 1
                    server.max_in_progress = max(server.max_in_progress, server.in_progress)
                try:
                    self._post()
                finally:
                    with server._count:
                        server.in_progress -= 1

            def _post(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = json.loads(self.rfile.read(length) or b"{}")
                server.requests += 1
                server.bodies.append(request)
                server.prompts.append(request.get("messages") or [])
                mode = server.mode
                if (
                    mode == "tools"
                    and request.get("tools")
                    and (request.get("messages") or [{}])[-1].get("role") == "user"
                ):
                    self._call(request)
                    return
                if mode == "tools":  # after the results: echo them
                    results = [m for m in request.get("messages") or [] if m.get("role") == "tool"]
                    request = {
                        **request,
                        "messages": [{"role": "user", "content": _text(m.get("content"))} for m in results],
                    }
                if mode in ("echo", "echo_slow", "tools"):
                    self._echo(request, slow=mode == "echo_slow")
                    return
                if mode == "hang":
                    server._stop.wait(60)
                    return
                if mode == "reset":  # the pod is gone: connections drop without an answer
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if mode.startswith("http_"):
                    status = int(mode[5:])
                    self._send(status, json.dumps({"error": {"message": f"status {status}"}}).encode())
                    return
                words = ["Hello", " from", " the", " fault", " server", "."]
                if not request.get("stream"):
                    message = {"role": "assistant", "content": "".join(words)}
                    body = {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": "m",
                        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    }
                    self._send(200, json.dumps(body).encode())
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i, word in enumerate(words):
                    if mode == "fail_after_3" and i == 3:
                        self.wfile.flush()
                        self.connection.shutdown(2)  # the connection drops mid-answer
                        return
                    chunk = {
                        "id": "x",
                        "object": "chat.completion.chunk",
                        "created": 0,
                        "model": "m",
                        "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}],
                    }
                    self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
                    time.sleep(0.02)
                self._chunk(b"data: [DONE]\n\n")
                self._chunk(b"")

            def _call(self, request: dict[str, Any]) -> None:
                choice = request.get("tool_choice")
                named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
                tool = next(
                    (t for t in request["tools"] if t["function"]["name"] == named), request["tools"][0]
                )
                fn = tool["function"]
                params = list((fn.get("parameters") or {}).get("properties") or {})
                said = _text(request["messages"][-1].get("content"))
                value = (re.findall(r"\w+", said) or [""])[-1]
                arguments = json.dumps({params[0]: value} if params else {})
                call_id = f"chatcmpl-tool-{uuid.uuid4().hex}"
                if not request.get("stream"):
                    call = {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": fn["name"], "arguments": arguments},
                    }
                    message = {"role": "assistant", "content": None, "tool_calls": [call]}
                    body = {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": "m",
                        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
                    }
                    self._send(200, json.dumps(body).encode())
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                head = {
                    "index": 0,
                    "id": call_id,
                    "type": "function",
                    "function": {"name": fn["name"], "arguments": ""},
                }
                pieces = [arguments[i : i + 5] for i in range(0, len(arguments), 5)]
                deltas = [
                    {"tool_calls": [head]},
                    *({"tool_calls": [{"index": 0, "function": {"arguments": p}}]} for p in pieces),
                ]
                for delta, finish in [*((d, None) for d in deltas), ({}, "tool_calls")]:
                    chunk = {
                        "id": "x",
                        "object": "chat.completion.chunk",
                        "created": 0,
                        "model": "m",
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                    }
                    self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
                self._chunk(b"data: [DONE]\n\n")
                self._chunk(b"")

            def _echo(self, request: dict[str, Any], *, slow: bool) -> None:
                users = [
                    _text(m.get("content")) for m in request.get("messages") or [] if m.get("role") == "user"
                ]
                words = re.findall(r"\s*\S+", "echo:" + "|".join(users)) or ["echo:"]
                if slow:
                    limit = request.get("max_completion_tokens") or request.get("max_tokens") or 5
                    words = (words + [" ..."] * limit)[:limit]
                rid = f"chatcmpl-{uuid.uuid4().hex}"  # one id per answer, as vLLM gives
                if not request.get("stream"):
                    message = {"role": "assistant", "content": "".join(words)}
                    choice = {"index": 0, "message": message, "finish_reason": "stop"}
                    body = {
                        "id": rid,
                        "object": "chat.completion",
                        "created": 0,
                        "model": "m",
                        "choices": [choice],
                    }
                    self._send(200, json.dumps(body).encode())
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                deltas: list[tuple[dict[str, Any], str | None]] = [({"content": w}, None) for w in words]
                try:
                    for delta, finish in [*deltas, ({}, "stop")]:
                        if slow and finish is None:
                            time.sleep(0.2)
                        choice = {"index": 0, "delta": delta, "finish_reason": finish}
                        chunk = {
                            "id": rid,
                            "object": "chat.completion.chunk",
                            "created": 0,
                            "model": "m",
                            "choices": [choice],
                        }
                        self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
                    self._chunk(b"data: [DONE]\n\n")
                    self._chunk(b"")
                except (BrokenPipeError, ConnectionResetError):  # the client went away (a cancelled run)
                    self.close_connection = True

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = QuietHTTPServer(("127.0.0.1", 0), Handler)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def stop(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _text(content: Any) -> str:
    """The text of an OpenAI message content: a string, or a list of parts."""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content or [] if isinstance(p, dict))


@contextmanager
def fault_server(mode: str = "ok") -> Iterator[FaultServer]:
    server = FaultServer(mode)
    threading.Thread(target=server.httpd.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.stop()


def closed_port_url() -> str:
    """A URL nobody listens on: connections are refused at once."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
