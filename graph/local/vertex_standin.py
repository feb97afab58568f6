"""A local stand-in for the Vertex AI Gemini REST API, backed by the embedded llama.cpp model.

When no Vertex project is configured, the `gemini` backend is still the REAL `ChatVertexAI` client
(REST transport, anonymous credentials) pointed at this server, so the code path a user runs offline
is the one that runs against Vertex AI. It answers `:generateContent` and `:streamGenerateContent`
(a chunked JSON array, written piece by piece as the model produces tokens) by translating to the
local model's `/v1/chat/completions`. It is a stand-in, labelled as such wherever a model name shows.
Generation settings go across as llama.cpp names them, stop sequences and the seed included; Gemini's
JSON mode (`responseMimeType` "application/json", with `responseSchema` or `responseJsonSchema`) becomes
llama.cpp's `response_format`, so its grammar constrains the answer as Gemini's schema would.

Function calling (Gemini's `tools` and `toolConfig`): with mode ANY (LangChain's `tool_choice="any"`
or a function's name; OpenAI's "required") the answer is a `functionCall` part whose name and `args`
the small model writes under llama.cpp's JSON-schema grammar (one of the declared functions, its
arguments matching the declared parameters), so a client meets the call Gemini would send. With mode
AUTO the model answers in text: SmolLM2-135M does not decide to call a tool by itself. A request's
`functionCall` and `functionResponse` parts reach the model as text ("Called get_weather with
{...}", "get_weather returned {...}"), so the answer after a call reads its result.

Attachments: the small model sees text only, so inline data is checked the way Vertex AI checks it
(a MIME type Gemini takes: PNG, JPEG, WebP, HEIC, HEIF, PDF; valid base64; an image that decodes; at
most 20 MB inline per request: otherwise HTTP 400 INVALID_ARGUMENT, as Vertex AI answers) and the
answer starts with a plain statement of what arrived, e.g. "[stand-in received image/png 640x480,
1,234 bytes]", so a test can prove the bytes reached Gemini's side unchanged.

Written on the standard library's HTTP server: it is a loopback test double with one route, so a web
framework would add start-up cost and nothing else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import logging
import re
import sys
import threading
from collections.abc import Callable, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from graph.local.llama import UNCACHED_PROMPT

log = logging.getLogger(__name__)

_ROUTE = re.compile(r"^/v1(?:beta1)?/projects/[^/]+/locations/[^/]+/publishers/google/models/([^/:]+):(\w+)")


def _text_of(parts: list[dict[str, Any]] | None) -> str:
    """A content's parts as the text model reads them: text as is, function calls and their results
    said in words (the model has no other way to see them)."""
    out = []
    for p in parts or []:
        call = p.get("functionCall") or p.get("function_call")
        result = p.get("functionResponse") or p.get("function_response")
        if call is not None:
            out.append(f"Called {call.get('name')} with {json.dumps(call.get('args') or {})}.")
        elif result is not None:
            out.append(f"{result.get('name')} returned {json.dumps(result.get('response') or {})}.")
        else:
            out.append(p.get("text", ""))
    return "\n".join(x for x in out if x)


FUNCTION_MODES = ("MODE_UNSPECIFIED", "AUTO", "ANY", "NONE")  # FunctionCallingConfig.Mode by number


def forced_functions(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The declared functions the answer must call one of (mode ANY, within `allowedFunctionNames`);
    [] when the model may answer in text."""
    config = body.get("toolConfig") or body.get("tool_config") or {}
    calling = config.get("functionCallingConfig") or config.get("function_calling_config") or {}
    mode = calling.get("mode")
    if isinstance(mode, int):
        mode = FUNCTION_MODES[mode] if 0 <= mode < len(FUNCTION_MODES) else ""
    if str(mode or "").upper() != "ANY":
        return []
    allowed = calling.get("allowedFunctionNames") or calling.get("allowed_function_names")
    declared = [
        d
        for tool in body.get("tools") or []
        for d in tool.get("functionDeclarations") or tool.get("function_declarations") or []
    ]
    return [d for d in declared if not allowed or d.get("name") in allowed]


def call_schema(functions: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON Schema of one call of one of `functions` ({"name", "arguments"}), for llama.cpp's grammar."""

    def one(d: dict[str, Any]) -> dict[str, Any]:
        params = d.get("parametersJsonSchema") or d.get("parameters_json_schema")
        if params is None:
            params = json_schema(d.get("parameters") or {"type": "object"})
        return {
            "type": "object",
            "properties": {"name": {"const": d.get("name")}, "arguments": params or {"type": "object"}},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }

    options = [one(d) for d in functions]
    return options[0] if len(options) == 1 else {"anyOf": options}


def _call_response(call: dict[str, Any], usage: dict[str, Any] | None) -> dict[str, Any]:
    out = _response("", "stop", usage)
    out["candidates"][0]["content"]["parts"] = [
        {"functionCall": {"name": call["name"], "args": call.get("arguments") or {}}}
    ]
    return out


# What Gemini 2.5 takes as inline images and documents (Vertex AI's documented MIME types): checked
# here on its own, as Vertex AI does, whatever the router already knows.
GEMINI_MIME_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/webp", "image/heic", "image/heif", "application/pdf"}
)
INLINE_MAX_BYTES = 20_000_000


class BadRequest(ValueError):
    """Answered with HTTP 400 INVALID_ARGUMENT, as Vertex AI does."""


def _describe(mime: str, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()[:12]
    if mime.startswith("image/") and mime not in ("image/heic", "image/heif"):
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                size = f" {img.size[0]}x{img.size[1]}"
        except Exception:
            raise BadRequest(f"Unable to process input image ({mime}).") from None
        return f"{mime}{size}, {len(data):,} bytes, sha256 {digest}"
    return f"{mime}, {len(data):,} bytes, sha256 {digest}"


def received(body: dict[str, Any]) -> list[str]:
    """What the request carries besides text, one description per inline part ("image/png 640x480,
    1,234 bytes, sha256 ..."); `BadRequest` for a part Vertex AI would refuse."""
    out: list[str] = []
    total = 0
    for content in body.get("contents", []):
        for part in content.get("parts") or []:
            if "fileData" in part or "file_data" in part:
                raise BadRequest("The stand-in cannot read Cloud Storage URIs (fileData).")
            inline = part.get("inlineData") or part.get("inline_data")
            if inline is None:
                continue
            mime = inline.get("mimeType") or inline.get("mime_type") or ""
            if mime not in GEMINI_MIME_TYPES:
                raise BadRequest(f"Unsupported MIME type: {mime}")
            try:
                data = base64.b64decode(inline.get("data") or "", validate=True)
            except (binascii.Error, ValueError):
                raise BadRequest("Invalid base64 in inline data.") from None
            total += len(data)
            if total > INLINE_MAX_BYTES:
                raise BadRequest("Request payload size exceeds the limit: 20971520 bytes.")
            out.append(_describe(mime, data))
    return out


def statement(described: list[str]) -> str:
    return "".join(f"[stand-in received {d}] " for d in described)


def to_openai_request(body: dict[str, Any], model: str, stream: bool) -> dict[str, Any]:
    """Translate a GenerateContentRequest (camelCase or snake_case JSON) to a chat completion."""
    messages: list[dict[str, str]] = []
    system = body.get("systemInstruction") or body.get("system_instruction")
    if system and (text := _text_of(system.get("parts"))):
        messages.append({"role": "system", "content": text})
    for content in body.get("contents", []):
        role = "assistant" if content.get("role") == "model" else "user"
        messages.append({"role": role, "content": _text_of(content.get("parts"))})
    cfg = body.get("generationConfig") or body.get("generation_config") or {}

    def pick(*names: str) -> Any:
        return next((cfg[n] for n in names if n in cfg), None)

    request: dict[str, Any] = {"model": model, "messages": messages, "stream": stream, **UNCACHED_PROMPT}
    if (fmt := _response_format(cfg)) is not None:
        request["response_format"] = fmt
    for key, names in {
        "temperature": ("temperature",),
        "top_p": ("topP", "top_p"),
        "max_tokens": ("maxOutputTokens", "max_output_tokens"),
        "stop": ("stopSequences", "stop_sequences"),
        "seed": ("seed",),
    }.items():
        if (value := pick(*names)) is not None:
            request[key] = value
    if stream:
        request["stream_options"] = {"include_usage": True}
    return request


SCHEMA_TYPES = ("", "string", "number", "integer", "boolean", "array", "object")  # Schema.Type by number
SCHEMA_KEPT = ("description", "title", "enum", "required", "pattern", "minimum", "maximum")  # as they are
SCHEMA_COUNTS = {  # int64 fields: proto JSON writes them as strings
    "minItems": "minItems",
    "min_items": "minItems",
    "maxItems": "maxItems",
    "max_items": "maxItems",
    "minLength": "minLength",
    "min_length": "minLength",
    "maxLength": "maxLength",
    "max_length": "maxLength",
    "minProperties": "minProperties",
    "min_properties": "minProperties",
    "maxProperties": "maxProperties",
    "max_properties": "maxProperties",
}


def _response_format(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """Gemini's JSON mode (`responseMimeType` "application/json", with `responseSchema` or
    `responseJsonSchema`) as llama.cpp's `response_format`, which constrains its decoding to it."""
    mime = cfg.get("responseMimeType") or cfg.get("response_mime_type")
    if mime != "application/json":
        return None
    schema = cfg.get("responseJsonSchema") or cfg.get("response_json_schema")
    if schema is None and (vertex := cfg.get("responseSchema") or cfg.get("response_schema")):
        schema = json_schema(vertex)
    if not schema:
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "response", "schema": schema, "strict": True}}


def json_schema(vertex: dict[str, Any]) -> dict[str, Any]:
    """A Vertex AI Schema (REST JSON) as the JSON Schema it means. An object takes only the properties
    it lists, as Gemini writes them."""
    out: dict[str, Any] = {}
    if kind := _type_name(vertex.get("type")):
        out["type"] = [kind, "null"] if vertex.get("nullable") else kind
    out.update((name, vertex[name]) for name in SCHEMA_KEPT if name in vertex)
    if vertex.get("format") == "date-time":  # the others (int32, double, enum) add nothing to the type
        out["format"] = "date-time"
    for name, key in SCHEMA_COUNTS.items():
        if name in vertex:
            out[key] = int(vertex[name])
    if isinstance(props := vertex.get("properties"), dict):
        out["properties"] = {k: json_schema(v) for k, v in props.items()}
        out["additionalProperties"] = False
    if isinstance(items := vertex.get("items"), dict):
        out["items"] = json_schema(items)
    alternatives = vertex.get("anyOf") or vertex.get("any_of")
    if alternatives:
        out["anyOf"] = [json_schema(a) for a in alternatives]
        if vertex.get("nullable"):
            out["anyOf"].append({"type": "null"})
    return out


def _type_name(value: Any) -> str:
    """Schema.Type as JSON Schema names it: the REST transport sends its number, others its name."""
    if isinstance(value, int):
        return SCHEMA_TYPES[value] if 0 <= value < len(SCHEMA_TYPES) else ""
    name = str(value or "").lower()
    return name if name in SCHEMA_TYPES else ""


def _response(text: str, finish: str | None, usage: dict[str, Any] | None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
    if finish:
        candidate["finishReason"] = "MAX_TOKENS" if finish == "length" else "STOP"
    out: dict[str, Any] = {"candidates": [candidate]}
    if usage:
        out["usageMetadata"] = {
            "promptTokenCount": usage.get("prompt_tokens", 0),
            "candidatesTokenCount": usage.get("completion_tokens", 0),
            "totalTokenCount": usage.get("total_tokens", 0),
        }
    return out


class QuietHTTPServer(ThreadingHTTPServer):
    """A client that goes away (a cancelled answer, an idle keep-alive connection closed at exit) is
    normal for a local stand-in: socketserver would print a traceback to stderr for each one."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        log.exception("request from %s failed", client_address)


class VertexStandIn:
    """Serve the Vertex REST shape on 127.0.0.1:<free port>; start lazily, stop with the process."""

    def __init__(self, backend_base_url: Callable[[], str], *, model_alias: str) -> None:
        self._backend_base_url = backend_base_url  # called on first request: starts the local model
        self._alias = model_alias
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._client = httpx.Client(timeout=httpx.Timeout(120.0, connect=5.0))

    @property
    def endpoint(self) -> str:
        """`http://127.0.0.1:PORT`, starting the server on first call."""
        if self._httpd is None:
            with self._lock:
                if self._httpd is None:
                    self._httpd = self._serve()
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        with self._lock:
            if self._httpd is not None:
                self._httpd.shutdown()
                self._httpd.server_close()
                self._httpd = None

    def _serve(self) -> ThreadingHTTPServer:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # keep the terminal clean
                log.debug("vertex stand-in: " + format, *args)

            def do_POST(self) -> None:
                match = _ROUTE.match(self.path.split("?")[0])
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError:
                    return self._error(HTTPStatus.BAD_REQUEST, "invalid JSON body")
                if not match or match.group(2) not in ("generateContent", "streamGenerateContent"):
                    return self._error(HTTPStatus.NOT_FOUND, f"no such method: {self.path}")
                stream = match.group(2) == "streamGenerateContent"
                try:
                    said = statement(received(body))
                except BadRequest as exc:
                    return self._error(HTTPStatus.BAD_REQUEST, str(exc), "INVALID_ARGUMENT")
                try:
                    if functions := forced_functions(body):
                        return self._call(body, functions, stream)
                    request = to_openai_request(body, standin._alias, stream)
                    if stream:
                        self._stream(request, said)
                    else:
                        self._unary(request, said)
                except (httpx.HTTPError, OSError) as exc:
                    self._error(HTTPStatus.SERVICE_UNAVAILABLE, f"local model unavailable: {exc}")

            def _url(self) -> str:
                return standin._backend_base_url() + "/chat/completions"

            def _call(self, body: dict[str, Any], functions: list[dict[str, Any]], stream: bool) -> None:
                """Mode ANY: one call, written by the model under the grammar of `call_schema`."""
                request = to_openai_request(body, standin._alias, False)
                listed = "; ".join(f"{d.get('name')}: {d.get('description') or ''}" for d in functions)
                note = f"Call one function. {listed}"
                messages = request["messages"]
                if messages and messages[0]["role"] == "system":
                    messages[0]["content"] = f"{messages[0]['content']}\n\n{note}"
                else:
                    messages.insert(0, {"role": "system", "content": note})
                schema = call_schema(functions)
                request["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "call", "schema": schema, "strict": True},
                }
                r = standin._client.post(self._url(), json=request)
                r.raise_for_status()
                data = r.json()
                try:
                    call = json.loads(data["choices"][0]["message"].get("content") or "")
                except json.JSONDecodeError:  # cut at max_tokens before the call was complete
                    return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "the model's call was cut short")
                payload = _call_response(call, data.get("usage"))
                if not stream:
                    return self._send_json(HTTPStatus.OK, payload)
                data_out = b"[" + json.dumps(payload).encode() + b"]"
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data_out)))
                self.end_headers()
                self.wfile.write(data_out)

            def _unary(self, request: dict[str, Any], said: str) -> None:
                r = standin._client.post(self._url(), json=request)
                r.raise_for_status()
                data = r.json()
                choice = data["choices"][0]
                text = said + (choice["message"].get("content") or "")
                payload = _response(text, choice.get("finish_reason"), data.get("usage"))
                self._send_json(HTTPStatus.OK, payload)

            def _stream(self, request: dict[str, Any], said: str) -> None:
                with standin._client.stream("POST", self._url(), json=request) as r:
                    r.raise_for_status()
                    self.send_response(HTTPStatus.OK)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self._chunk(b"[")
                    first = True
                    if said:
                        self._chunk(json.dumps(_response(said, None, None)).encode())
                        first = False
                    for piece in _sse_pieces(r.iter_lines()):
                        self._chunk((b"" if first else b",") + json.dumps(piece).encode())
                        first = False
                    self._chunk(b"]")
                    self._chunk(b"")

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _send_json(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: HTTPStatus, message: str, name: str | None = None) -> None:
                error = {"code": int(status), "message": message, "status": name or status.name}
                self._send_json(status, {"error": error})

        httpd = QuietHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, name="vertex-standin", daemon=True).start()
        log.info("Vertex AI stand-in listening on %s:%s", *httpd.server_address[:2])
        return httpd


def _sse_pieces(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """GenerateContentResponse pieces from an OpenAI SSE stream (text deltas, then usage)."""
    finish: str | None = None
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        event = json.loads(data)
        for choice in event.get("choices") or []:
            delta = (choice.get("delta") or {}).get("content") or ""
            finish = choice.get("finish_reason") or finish
            if delta:
                yield _response(delta, None, None)
        if event.get("usage"):
            yield _response("", finish or "stop", event["usage"])
            return
    yield _response("", finish or "stop", None)


def standin_chat_vertexai_class() -> type:
    """`ChatVertexAI` with an async transport that can reach the stand-in.

    With a custom `api_endpoint`, langchain-google-vertexai 3.2 builds its async client on the plain
    "rest" transport, whose streaming iterator cannot be awaited (`TypeError: object ResponseIterator
    can't be used in 'await' expression`). Against Vertex AI itself it uses grpc_asyncio and is fine.
    For the stand-in we hand it the "rest_asyncio" transport instead, one client per event loop (the
    aiohttp session belongs to its loop). Every other line of the client is the unmodified library.
    """
    import asyncio

    from google.api_core.client_options import ClientOptions
    from google.auth.aio.credentials import AnonymousCredentials
    from google.cloud.aiplatform_v1beta1 import PredictionServiceAsyncClient
    from langchain_google_vertexai import ChatVertexAI

    class StandInChatVertexAI(ChatVertexAI):
        @property
        def async_prediction_client(self) -> PredictionServiceAsyncClient:
            loop = asyncio.get_running_loop()
            cached = getattr(self, "_standin_async", None)
            if cached is None or cached[0] is not loop:
                client = PredictionServiceAsyncClient(
                    credentials=AnonymousCredentials(),
                    transport="rest_asyncio",
                    client_options=ClientOptions(api_endpoint=self.api_endpoint),
                )
                object.__setattr__(self, "_standin_async", (loop, client))
                return client
            return cached[1]

    return StandInChatVertexAI
