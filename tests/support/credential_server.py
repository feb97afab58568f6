"""A backend that checks nothing but answers the credential checks: vLLM's `GET /v1/models` and Vertex
AI's REST `:countTokens` (`/v1beta1/projects/P/locations/L/publishers/google/models/M:countTokens`).

`status` 200 answers them as the real services do; any other status answers every request (those two,
chat completions, `:generateContent`, `:streamGenerateContent`) with that status and Google's error body
(`{"error": {"code", "message", "status"}}`, which the OpenAI client reads too). Set `status` at any
time: a test flips a healthy backend into a refusing one. `seen` records (method, path) in arrival order.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class CredentialServer:
    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.seen: list[tuple[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._answer("GET")

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._answer("POST")

            def _answer(self, method: str) -> None:
                path = self.path.split("?")[0]
                server.seen.append((method, path))
                status = server.status
                if status != 200:
                    phrase = HTTPStatus(status).phrase
                    name = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND"}.get(
                        status, phrase.upper().replace(" ", "_")
                    )
                    error = {"code": status, "message": f"{phrase} (test server)", "status": name}
                    return self._send(status, {"error": error})
                if method == "GET" and path.endswith("/models"):
                    return self._send(200, {"object": "list", "data": [{"id": "m", "object": "model"}]})
                if path.endswith(":countTokens"):
                    return self._send(200, {"totalTokens": 1, "totalBillableCharacters": 4})
                error = {"code": 404, "message": "not served", "status": "NOT_FOUND"}
                return self._send(404, {"error": error})

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`: Vertex AI's `api_endpoint`; vLLM's base URL is this + `/v1`."""
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def credential_server(status: int = 200) -> Iterator[CredentialServer]:
    server = CredentialServer(status)
    threading.Thread(target=server.httpd.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.stop()
