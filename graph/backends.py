"""The one backend factory: which chat model class serves `gemma` and `gemini`, and how it is built.

- `gemma`: `ChatOpenAI` against vLLM's OpenAI-compatible server. The server applies Gemma's own chat
  template to the chat messages we send; no prompt strings are built here.
- `gemini`: `ChatVertexAI` (Gemini on Vertex AI). Moving to its successor `ChatGoogleGenerativeAI` is a
  change to `_make_gemini` only.

With no cloud configuration both are backed by local stand-ins (see `graph.local`), reached by the same
client classes. Models are cached per (backend, generation parameters): building a client per turn
would cost milliseconds and connections.

Each real backend also has a `graph.health.CredentialCheck` (`credentials`): a cheap call through the
same client and credentials (vLLM: `GET /v1/models` with the API key; Vertex AI: `countTokens` of one
word), run by `watch_credentials` at start-up and every `credential_check_s`. A real answer refused the
same way marks the backend at once (a callback on its models sees the error). Local stand-ins are not
checked.

Each backend also declares what it takes besides text (`Backends.accepts`, an `Accepts`): Gemma 3 on
vLLM images (OpenAI `image_url` parts with data URLs), Gemini images and PDFs (inline data); the embedded
llama.cpp stand-in (SmolLM2-135M, a text-only model without a vision projector) nothing; the Vertex
stand-in images and PDFs (it checks them and says what it received). The settings' `gemma_attachments` /
`gemini_attachments` override the kinds (a vLLM serving a text-only model says "none").
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.callbacks import BaseCallbackHandler

from graph.health import CHECK_TIMEOUT_S, CredentialCheck, watch_credentials
from graph.local.llama import LOCAL_MODEL_LABEL, UNCACHED_PROMPT, LocalModelServer
from graph.output import ResponseFormat
from graph.settings import Settings
from graph.tools import ToolSpec

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import BaseMessage
    from langchain_core.runnables import Runnable

    from graph.local.vertex_standin import VertexStandIn

log = logging.getLogger(__name__)

BackendName = Literal["gemma", "gemini"]
BACKENDS: tuple[BackendName, ...] = ("gemma", "gemini")

# What to look at when a backend refuses our credentials (logged, shown on the health board).
CREDENTIAL_HINTS: dict[BackendName, str] = {
    "gemma": "check HYBRID_CHAT_GEMMA_BASE_URL (vLLM's /v1 URL) and HYBRID_CHAT_GEMMA_API_KEY "
    "(vLLM's --api-key)",
    "gemini": "check HYBRID_CHAT_GEMINI_PROJECT (a real project id, not the PROJECT_ID placeholder), "
    "HYBRID_CHAT_GEMINI_LOCATION and _MODEL, and that the Pod's service account (Workload Identity) "
    "has the hybridChatGemini role (aiplatform.endpoints.predict; infra/iam.tf)",
}


class _CredentialWatch(BaseCallbackHandler):
    """On a real backend's models: an answer refused for its credentials marks the backend at once, an
    answer that succeeds clears it (no need to wait for the next periodic check)."""

    run_inline = True  # two attribute writes: no thread hop

    def __init__(self, check: CredentialCheck) -> None:
        self.check = check

    def on_llm_error(self, error: BaseException, **kwargs: Any) -> None:
        self.check.record_failure(error, source="answer")

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.check.record_success(source="answer")


AttachmentKind = Literal["image", "pdf"]
KIND_WORDS: dict[str, tuple[str, str]] = {"image": ("images", "see images"), "pdf": ("PDFs", "read PDFs")}
# Gemini 2.5 on Vertex AI (its image and document understanding pages): 3,000 images or PDFs per prompt,
# an inline image up to 7 MB, a PDF up to 50 MB; a request's inline data is kept within 20 MB here (larger
# files would go by Cloud Storage URI, not built yet). Our own per-file limit (attachment_max_bytes, 5 MB
# by default) is below the 7 MB.
GEMINI_INLINE_MAX_BYTES = 20_000_000
GEMINI_MAX_FILES = 3000
# What Gemini reads inline (the same pages): no GIF, which vLLM's Gemma takes.
GEMINI_MIME_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/webp", "image/heic", "image/heif", "application/pdf"}
)


@dataclass(frozen=True)
class Accepts:
    """What one backend takes besides text, and its name in words (for the route's reason)."""

    label: str  # "Gemma stand-in", "Gemini"
    kinds: frozenset[str] = frozenset()
    max_bytes: int = 0  # all of one prompt's attachments together
    max_count: int = 0  # per prompt
    mime_types: frozenset[str] | None = None  # within `kinds`, only these (None: any we accept)
    tools: bool = True  # it calls the caller's tools (and reads tool calls and results in a prompt)

    def refusal(
        self, kinds: frozenset[str], count: int, total_bytes: int, mime_types: frozenset[str] = frozenset()
    ) -> str | None:
        """Why this backend cannot take these attachments ("image: Gemma stand-in cannot see images"),
        or None when it can."""
        for kind in sorted(kinds - self.kinds):
            return f"{kind}: {self.label} cannot {KIND_WORDS.get(kind, (kind, 'take ' + kind))[1]}"
        if self.mime_types is not None:
            for mime in sorted(mime_types - self.mime_types):
                return f"{mime}: {self.label} cannot read {mime} files"
        if count > self.max_count:
            kind = sorted(kinds)[0] if kinds else "attachment"
            return f"{kind}: {self.label} takes at most {self.max_count} attachment(s) per message"
        if total_bytes > self.max_bytes:
            kind = sorted(kinds)[0] if kinds else "attachment"
            return f"{kind}: {self.label} takes at most {self.max_bytes:,} bytes of attachments"
        return None


def parse_kinds(value: str | None, default: frozenset[str]) -> frozenset[str]:
    """A settings value ("image", "image,pdf", "none", "") as kinds; unset: `default`."""
    if value is None:
        return default
    words = {w.strip().lower() for w in value.replace(";", ",").split(",")} - {"", "none"}
    unknown = words - set(KIND_WORDS)
    if unknown:
        raise ValueError(f"unknown attachment kind(s) {sorted(unknown)}: use image, pdf or none")
    return frozenset(words)


@dataclass(frozen=True)
class GenerationParams:
    """Per-message generation parameters (from the request, else the settings)."""

    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None = None
    stop: tuple[str, ...] = ()  # stop sequences (checked: graph.output)
    response_format: ResponseFormat | None = None  # what the answer must be (graph.output)
    tools: ToolSpec | None = None  # functions the model may call (graph.tools)
    priority: int | None = None  # vLLM's request priority (lower first; --scheduling-policy priority)

    def for_client(self) -> GenerationParams:
        """What a chat model is built with (its cache key). Stop sequences, the response format, tools
        and the priority are bound per request instead (`Backends.model`): callers send new ones at
        will, and a client built for each (seconds for ChatVertexAI) would empty the cache for everyone."""
        return replace(self, stop=(), response_format=None, tools=None, priority=None)


class Backends:
    """Builds and caches the chat models; owns the local stand-ins' lifetimes."""

    def __init__(
        self,
        settings: Settings,
        *,
        local_server: LocalModelServer | None = None,
        vertex_standin: VertexStandIn | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`local_server`/`vertex_standin` let several Backends share one set of stand-ins (tests)."""
        self.settings = settings
        # One lock per backend: building Gemini's client (seconds of imports) never holds up Gemma's.
        self._locks = {name: threading.Lock() for name in BACKENDS}
        self._standin_lock = threading.Lock()  # each local stand-in is created once, by one thread
        self._models: dict[tuple[BackendName, GenerationParams], BaseChatModel] = {}
        self._local = local_server
        self._vertex_standin = vertex_standin
        self._owns_standins = local_server is None
        probes = {"gemma": self._check_gemma, "gemini": self._check_gemini}
        self.credentials: dict[BackendName, CredentialCheck] = {
            name: CredentialCheck(
                name,
                None if self.is_local(name) else probes[name],
                hint=CREDENTIAL_HINTS[name],
                clock=clock,
            )
            for name in BACKENDS
        }

    # --- what a user sees --------------------------------------------------------------------
    def is_local(self, name: BackendName) -> bool:
        """True when `name` is served by a local stand-in instead of the real cloud backend."""
        if name == "gemma":
            return self.settings.gemma_base_url is None
        return self.settings.gemini_project is None

    def label(self, name: BackendName) -> str:
        s = self.settings
        if name == "gemma":
            return (
                f"Gemma stand-in: {LOCAL_MODEL_LABEL}" if self.is_local(name) else f"{s.gemma_model} (vLLM)"
            )
        if self.is_local(name):
            return f"Gemini stand-in: {LOCAL_MODEL_LABEL} behind a local Vertex-shaped endpoint"
        return f"{s.gemini_model} (Vertex AI)"

    def short_label(self, name: BackendName) -> str:
        """ "Gemma", "Gemma stand-in", ...: the name in a route's reason."""
        return {"gemma": "Gemma", "gemini": "Gemini"}[name] + (" stand-in" if self.is_local(name) else "")

    def accepts(self, name: BackendName) -> Accepts:
        """What `name` takes besides text (see the module docstring)."""
        s = self.settings
        if name == "gemma":
            # The embedded model has no vision projector: llama.cpp answers HTTP 500 "image input is
            # not supported". vLLM's Gemma 3 takes images, as many as its --limit-mm-per-prompt.
            default = frozenset() if self.is_local(name) else frozenset({"image"})
            kinds = parse_kinds(s.gemma_attachments, default)
            # vLLM sets no byte limit of its own: ours (per attachment, times those one prompt holds).
            max_bytes = s.attachment_max_bytes * max(1, s.attachment_max_count + s.attachment_history_max)
            # Tools: vLLM started with a tool-call parser (deploy/base/gemma-deployment.yaml). The embedded
            # SmolLM2-135M does not call tools: llama.cpp puts them in the prompt with a tool template,
            # but the model answers prose, and `tool_choice: "required"` still lets it write text first.
            tools = s.gemma_tools if s.gemma_tools is not None else not self.is_local(name)
            return Accepts(self.short_label(name), kinds, max_bytes, s.gemma_max_images, tools=tools)
        kinds = parse_kinds(s.gemini_attachments, frozenset({"image", "pdf"}))
        return Accepts(
            self.short_label(name), kinds, GEMINI_INLINE_MAX_BYTES, GEMINI_MAX_FILES, GEMINI_MIME_TYPES
        )

    # --- models ------------------------------------------------------------------------------
    def model(self, name: BackendName, params: GenerationParams) -> Runnable[Any, BaseMessage]:
        """The chat model for `name` with this request's stop sequences and response format bound
        (`_per_request`); may start a local stand-in (blocking, <= 1 s, once)."""
        key = (name, params.for_client())
        if (model := self._models.get(key)) is None:
            with self._locks[name]:
                if (model := self._models.get(key)) is None:
                    built = key[1]
                    model = self._make_gemma(built) if name == "gemma" else self._make_gemini(built)
                    if len(self._models) > 64:  # parameters come from users: bound the cache
                        self._models.clear()
                    self._models[key] = model
        return self._per_request(name, model, params)

    async def amodel(self, name: BackendName, params: GenerationParams) -> Runnable[Any, BaseMessage]:
        """`model` for async callers: a first-use start of a local stand-in runs in a thread."""
        if (model := self._models.get((name, params.for_client()))) is not None:
            return self._per_request(name, model, params)
        return await asyncio.to_thread(self.model, name, params)

    @staticmethod
    def _per_request(
        name: BackendName, model: BaseChatModel, params: GenerationParams
    ) -> Runnable[Any, BaseMessage]:
        """`model` with what varies per request bound to it (see `GenerationParams.for_client`), in
        LangChain's own parameters: `stop` (OpenAI's `stop`; Vertex AI's `stopSequences`), and the
        response format as `response_mime_type` and `response_schema` for Gemini, or for vLLM and
        llama.cpp OpenAI's `response_format` (their guided decoding) in the request body as sent
        (`extra_body`). Not ChatOpenAI's `response_format`: with it, the SDK's parsing helper raises on
        an answer cut at max_tokens, which would count as the backend failing and be retried."""
        bound: dict[str, Any] = {"stop": list(params.stop)} if params.stop else {}
        body: dict[str, Any] = {}
        if (fmt := params.response_format) is not None:
            if name == "gemma":
                body["response_format"] = fmt.openai()
            elif params.tools is None:  # Gemini takes no JSON mode beside tools: the answer is checked
                bound.update(fmt.gemini())
        if name == "gemma" and params.priority is not None:
            body["priority"] = params.priority  # vLLM's priority scheduling (lower is served first)
        if body:
            bound["extra_body"] = {**(getattr(model, "extra_body", None) or {}), **body}
        if (spec := params.tools) is not None:  # LangChain's own bind_tools, in each client's terms
            return model.bind_tools(spec.tools, tool_choice=spec.for_backend(name), **bound)
        return model.bind(**bound) if bound else model

    def warm(self) -> None:
        """Build both default models now (imports, clients, local stand-ins) instead of on first use.

        Importing ChatVertexAI alone takes seconds: without this, the first answer that falls back to
        Gemini would pay for it. Blocking: call it in a thread (the server does, at start-up)."""
        params = self._default_params()
        for name in BACKENDS:
            try:
                self.model(name, params)
            except Exception as exc:  # a backend that cannot even be built is reported when used
                log.warning("warming up %s failed: %s", name, exc)

    # --- credentials -------------------------------------------------------------------------
    async def watch_credentials(self) -> None:
        """Check the real backends' credentials now and every `credential_check_s`, until cancelled
        (a background task: the server starts it at start-up)."""
        await watch_credentials(self.credentials.values(), self.settings.credential_check_s)

    def _default_params(self) -> GenerationParams:
        s = self.settings
        return GenerationParams(s.temperature, s.top_p, s.max_tokens)

    async def _check_gemma(self) -> None:
        """`GET /v1/models` through the answering client (its base URL and API key)."""
        model: Any = await self.amodel("gemma", self._default_params())
        await asyncio.wait_for(model.root_async_client.models.list(), CHECK_TIMEOUT_S)

    async def _check_gemini(self) -> None:
        """`countTokens` of one word through the answering client (its project, location, endpoint and
        credentials; free of charge). The client is sync: the call runs in a thread, bounded."""
        model: Any = await self.amodel("gemini", self._default_params())

        def count() -> None:
            model.prediction_client.count_tokens(
                {
                    "endpoint": model.full_model_name,
                    "model": model.full_model_name,
                    "contents": [{"role": "user", "parts": [{"text": "ping"}]}],
                },
                timeout=CHECK_TIMEOUT_S,
            )

        await asyncio.wait_for(asyncio.to_thread(count), CHECK_TIMEOUT_S + 1)

    def gemma_base_url(self) -> str:
        return self.settings.gemma_base_url or self._local_server().base_url

    def gemma_metrics_url(self) -> str | None:
        """vLLM's (or the stand-in's) Prometheus endpoint; None while a local stand-in is not running."""
        if self.settings.gemma_base_url:
            base = self.settings.gemma_base_url.rstrip("/")
            return (base[: -len("/v1")] if base.endswith("/v1") else base) + "/metrics"
        return self._local.address + "/metrics" if self.local_server_started() else None

    def local_server_started(self) -> bool:
        return self._local is not None and self._local.started

    def shared_standins(self) -> dict[str, Any]:
        """Keyword arguments for another `Backends` that should reuse these stand-ins."""
        self._local_server()
        return {"local_server": self._local, "vertex_standin": self._standin()}

    def _standin(self) -> VertexStandIn:
        from graph.local.vertex_standin import VertexStandIn

        with self._standin_lock:
            if self._vertex_standin is None:
                self._vertex_standin = VertexStandIn(
                    lambda: self._local_server().base_url, model_alias=self.settings.gemma_model
                )
            return self._vertex_standin

    def _local_server(self) -> LocalModelServer:
        with self._standin_lock:
            if self._local is None:
                s = self.settings
                self._local = LocalModelServer(
                    alias=s.gemma_model,
                    threads=s.local_model_threads,
                    ctx=s.local_model_ctx,
                    parallel=s.local_model_parallel,
                )
            return self._local

    def _make_gemma(self, params: GenerationParams) -> BaseChatModel:
        import openai
        from langchain_openai import ChatOpenAI

        s = self.settings
        return ChatOpenAI(
            base_url=self.gemma_base_url(),
            api_key=s.gemma_api_key,
            model=s.gemma_model,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            seed=params.seed,
            # read: the longest silence between two chunks (and before the first) on the sync path.
            # The SDK's own Timeout type: openai >= 3.63 refuses httpx's (its transport is httpx2).
            timeout=openai.Timeout(
                s.request_timeout_s, connect=s.connect_timeout_s, read=s.first_token_timeout_s
            ),
            max_retries=0,  # retries and fallback are the router's decision, not the client's
            stream_usage=True,
            callbacks=self._watch("gemma"),
            extra_body=dict(UNCACHED_PROMPT) if self.is_local("gemma") else None,
        )

    def _make_gemini(self, params: GenerationParams) -> BaseChatModel:
        s = self.settings
        kwargs: dict[str, object] = {}
        if self.is_local("gemini"):
            from google.auth.credentials import AnonymousCredentials

            kwargs = {
                "project": "local-standin",
                "credentials": AnonymousCredentials(),
                "api_transport": "rest",
                "api_endpoint": self._standin().endpoint,
            }
        else:
            kwargs = {"project": s.gemini_project, "callbacks": self._watch("gemini")}
            if s.gemini_api_endpoint:
                kwargs["api_endpoint"] = s.gemini_api_endpoint
                if s.gemini_api_endpoint.startswith(("http://", "https://")):
                    kwargs["api_transport"] = "rest"  # a URL is a REST endpoint; gRPC takes host[:port]
        with warnings.catch_warnings():
            # ChatVertexAI warns that it is deprecated in favour of ChatGoogleGenerativeAI; the
            # swap is this one function (see the module docstring).
            warnings.simplefilter("ignore", DeprecationWarning)
            from langchain_google_vertexai import ChatVertexAI

            cls = ChatVertexAI
            if self.is_local("gemini"):
                from graph.local.vertex_standin import standin_chat_vertexai_class

                cls = standin_chat_vertexai_class()
            return cls(
                model=s.gemini_model,
                location=s.gemini_location,
                temperature=params.temperature,
                top_p=params.top_p,
                max_output_tokens=params.max_tokens,
                seed=params.seed,
                thinking_budget=s.gemini_thinking_budget,
                timeout=s.request_timeout_s,
                max_retries=0,
                **kwargs,
            )

    def _watch(self, name: BackendName) -> list[BaseCallbackHandler] | None:
        check = self.credentials[name]
        return None if check.probe is None else [_CredentialWatch(check)]

    def close(self) -> None:
        """Stop the local stand-ins it started (they also stop with the process)."""
        if not self._owns_standins:
            self._models.clear()
            return
        if self._vertex_standin is not None:
            self._vertex_standin.stop()
        if self._local is not None:
            self._local.stop()
        self._models.clear()
