"""The one settings object: the only place that reads the environment (prefix `HYBRID_CHAT_`).

Everything else receives a `Settings` instance. Field names are part of the public interface:
the Kubernetes ConfigMap and users' scripts set them as `HYBRID_CHAT_<FIELD>`.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

ModelChoice = Literal["gemma", "gemini", "auto"]


class Settings(BaseSettings):
    """Configuration of hybrid-chat. See the README's "Configuration" table."""

    model_config = SettingsConfigDict(
        env_prefix="HYBRID_CHAT_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # --- Gemma on vLLM (OpenAI-compatible) ---------------------------------------------------
    gemma_base_url: str | None = Field(
        default=None,
        description="vLLM OpenAI-compatible base URL, e.g. http://gemma-service:8000/v1. "
        "Unset: an embedded local llama.cpp server (a small stand-in model) starts on first use.",
    )
    gemma_model: str = "google/gemma-3-12b-it"
    gemma_api_key: SecretStr = SecretStr("unused")
    gemma_max_model_len: int = Field(
        default=16384, description="Must match vLLM's --max-model-len (context window, tokens)."
    )
    gemma_tools: bool | None = Field(
        default=None,
        description="Gemma calls tools (vLLM started with --enable-auto-tool-choice, a tool-call parser and "
        "a tool chat template). Unset: vLLM yes, the embedded stand-in no (tool turns go to Gemini).",
    )
    gemma_priority_scheduling: bool = Field(
        default=False,
        description="vLLM runs with --scheduling-policy priority: each request carries a priority, people's "
        "turns 0 and background (`task` model) requests task_priority. Off: no priority is sent (vLLM "
        "refuses one it does not schedule by).",
    )

    # --- Gemini on Vertex AI -----------------------------------------------------------------
    gemini_project: str | None = Field(
        default=None, description="Google Cloud project for Vertex AI. Unset: a local stand-in."
    )
    gemini_location: str = "us-central1"
    gemini_model: str = "gemini-2.5-flash"
    gemini_thinking_budget: int = Field(
        default=0, description="Thinking tokens; 0 = off (thinking delays the first token by seconds)."
    )
    gemini_api_endpoint: str | None = Field(
        default=None,
        description="Override the Vertex AI endpoint (testing, private endpoints): host[:port] over gRPC, "
        "or an http(s):// URL over REST.",
    )

    # --- Generation defaults -----------------------------------------------------------------
    default_model: ModelChoice = "gemma"
    auto_preference: Literal["gemma", "gemini"] = Field(
        default="gemma", description="What `auto` prefers when both fit (in-cluster: no per-token cost)."
    )
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(default=512, ge=1, le=32768)
    system_prompt: str = "You are a helpful assistant."
    request_timeout_s: float = Field(default=120.0, gt=0, description="Total time for one answer.")
    connect_timeout_s: float = Field(default=3.0, gt=0, description="TCP connect to a backend.")
    first_token_timeout_s: float = Field(
        default=30.0, gt=0, description="No first token within this: the attempt fails (retry/fallback)."
    )

    # --- Routing -----------------------------------------------------------------------------
    fallback_enabled: bool = Field(
        default=True, description="An explicit choice that fails before its first token falls back."
    )
    breaker_failures: int = Field(
        default=3, ge=1, description="Consecutive failures that mark a backend down."
    )
    breaker_open_s: float = Field(default=30.0, gt=0, description="How long a down backend is skipped.")
    load_refresh_s: float = Field(default=5.0, gt=0, description="Read vLLM's /metrics at most this often.")
    credential_check_s: float = Field(
        default=60.0,
        gt=0,
        description="Check each real backend's credentials (vLLM GET /v1/models, Vertex AI countTokens) "
        "at start-up and this often; one refusing them (401/403/404) is not usable until one passes.",
    )
    auto_gemma_max_waiting: float = Field(
        default=2, ge=0, description="auto: new conversations go to Gemini when vLLM queues this many."
    )
    task_max_tokens: int = Field(
        default=256,
        ge=1,
        description="The `task` model (clients' background requests: titles, tags, follow-ups): its "
        "answers' token cap, whatever the request asks.",
    )
    task_priority: int = Field(
        default=10, description="vLLM priority of `task` requests (lower is served first; people's: 0)."
    )
    router_file: Path | None = Field(
        default=None,
        description="A router file from `hybrid-chat eval calibrate`: offers the `learned` model (auto's "
        "rules, then Gemma when it is predicted to answer as well as Gemini). Unset: no `learned` model.",
    )

    # --- Embedded local model (used when gemma_base_url / gemini_project are unset) ----------
    local_model_threads: int = Field(default=2, ge=1)
    local_model_ctx: int = Field(default=4096, ge=512, description="Context of the embedded model.")
    local_model_parallel: int = Field(default=2, ge=1, description="Concurrent slots of the embedded model.")

    # --- Memory ------------------------------------------------------------------------------
    memory: Literal["sqlite", "firestore"] = "sqlite"
    # A data directory, never the working directory: a repository root watched by `langgraph dev`
    # would see the database change on every turn.
    sqlite_path: Path = Field(default_factory=lambda: _data_dir() / "hybrid-chat.db")
    firestore_project: str | None = Field(
        default=None, description="Project of the Firestore database (default: the ambient project)."
    )
    firestore_database: str = "chat-app-db"
    firestore_collection: str = "chat_sessions"
    history_max_messages: int = Field(default=40, ge=1, description="Prompt window: most recent messages.")
    history_max_tokens: int = Field(default=6000, ge=64, description="Prompt window: token budget.")
    history_ttl_days: int = Field(default=0, ge=0, description="expire_at = last update + N days; 0 = never.")
    memory_timeout_s: float = Field(default=10.0, gt=0, description="Deadline of one memory operation.")
    firestore_legacy_owner: str | None = Field(
        default=None,
        description="Who may open sessions written by langchain-google-firestore (they have no owner): "
        'a user id, "*" (anyone; the first writer claims it), or unset (nobody).',
    )

    # --- Server ------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=7860, ge=1, le=65535)
    user_id: str = Field(default="local", description="The user when no sign-in is configured.")
    log_level: str = "INFO"

    # --- UI --- (browser chat: sign-in, limits; read by ui/) ---------------------------------
    stream_interval_ms: int = Field(
        default=50,
        ge=0,
        description="Streamed text reaches the page at most this often (the first piece at once).",
    )
    trust_iap: bool = Field(
        default=False,
        description="Take the user from Google IAP's headers. Turn on only when IAP fronts every request.",
    )
    iap_audience: str | None = Field(
        default=None,
        description="Expected `aud` of IAP's signed header: /projects/NUMBER/global/backendServices/ID.",
    )
    iap_verify_jwt: bool = Field(
        default=True,
        description="Verify X-Goog-IAP-JWT-Assertion (needs iap_audience). Off: the unsigned email header "
        "is trusted as is (spoofable by anything that reaches the pod without passing IAP).",
    )
    iap_certs_url: str = Field(
        default="https://www.gstatic.com/iap/verify/public_key", description="IAP's public keys (PEM)."
    )
    auth_users: SecretStr | None = Field(
        default=None, description='Local sign-in, "user:password,user2:password2". Unset: no login.'
    )
    allowed_origins: str | None = Field(
        default=None,
        description="Other sites (comma-separated origins, https://host[:port]) whose pages may call this "
        "app with the user's sign-in. Unset: only the app's own pages.",
    )
    login_max_failures: int = Field(
        default=10,
        ge=0,
        description="Failed sign-ins (login form or HTTP Basic) per user name before a lockout, with a "
        "growing wait from the 4th on; a client address gets 5x as many. 0 = no throttling.",
    )
    login_lockout_s: float = Field(
        default=300.0, gt=0, description="How long a lockout lasts; failures are forgotten after as long."
    )
    session_secret: SecretStr | None = Field(
        default=None,
        description="Signs the sign-in cookie (password mode), so that every replica can check it: the same "
        "value on all of them, at least 32 characters (a Kubernetes Secret). Unset: a random one per process "
        "(one replica only; sign-ins end when it restarts).",
    )
    session_max_age_s: int = Field(
        default=7 * 24 * 3600, ge=60, description="A sign-in lasts this long; then the form asks again."
    )
    redis_url: SecretStr | None = Field(
        default=None,
        description="Valkey/Redis holding what replicas share (rate limit, sign-in throttle, sign-outs, "
        "one turn per message): redis://host:6379/0, rediss:// with TLS. Unset: each process keeps its own.",
    )
    redis_timeout_s: float = Field(
        default=0.5, gt=0, description="Longest wait for the shared store; then each limit falls back."
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A connection that has not sent a whole request's headers this long after it opened "
        "(or after its next request began) is closed: uvicorn has no such limit of its own.",
    )
    max_request_bytes: int = Field(
        default=7_340_032,  # 7 MiB: one 5 MB attachment (6,666,668 bytes of base64) and the text fit
        ge=1024,
        description="Largest request body, every route; larger ones get 413 before they are read.",
    )
    max_message_chars: int = Field(default=8000, ge=1, description="Longest message (and persona) accepted.")
    rate_limit_per_minute: int = Field(
        default=20,
        ge=0,
        description="Messages per user per minute (across replicas with redis_url, else "
        "per replica); 0 = no limit.",
    )
    max_concurrent_streams: int = Field(
        default=32, ge=1, description="Answers streaming at once, per replica (page and API share it)."
    )
    streams_per_user: int | None = Field(
        default=None,
        ge=1,
        description="Answers one signed-in user may stream at once, of max_concurrent_streams (a user at "
        "it waits stream_wait_s for one of their own to end). Unset: a quarter of the limit, at least 2. "
        "Without sign-in everyone is one user, and there is no share.",
    )
    stream_wait_s: float = Field(
        default=5.0,
        ge=0,
        description="A turn over the stream limit waits this long for a place, then is refused "
        "(/api/chat: 503 with Retry-After; the page: a busy notice).",
    )
    stream_write_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="/api/chat: a client that takes no more of its answer for this long is dropped "
        "(its answer stops, its place is freed).",
    )
    shutdown_grace_s: float = Field(
        default=20.0, ge=0, description="On shutdown, running answers get this long to finish, then stop."
    )
    replicas: int = Field(
        default=1,
        ge=1,
        description="How many replicas may serve at once (the Deployment copies its autoscaler's "
        "maxReplicas). Above 1, whatever a replica keeps to itself must not matter: start-up and /readyz "
        "say so when attachments have no bucket (HYBRID_CHAT_ATTACHMENTS_BUCKET).",
    )
    drain_s: float = Field(
        default=0.0,
        ge=0,
        description="On SIGTERM, /readyz fails at once and the server goes on serving this long before it "
        "stops listening: the time a load balancer needs to notice (the Deployment sets it from its "
        "probes; docs/deploy.md). 0: stop listening at once (no balancer in front).",
    )
    # --- end UI ---

    # --- Attachments (images, PDFs: issue 15) --------------------------------------------------
    gemma_attachments: str | None = Field(
        default=None,
        description='What Gemma takes besides text: "image", "image,pdf" or "none". Unset: vLLM\'s Gemma 3 '
        "takes images; the embedded stand-in (a text-only model) nothing.",
    )
    gemini_attachments: str | None = Field(
        default=None, description='What Gemini takes besides text (as gemma_attachments). Unset: "image,pdf".'
    )
    gemma_max_images: int = Field(
        default=4, ge=0, description="Images per prompt Gemma takes: at most vLLM's --limit-mm-per-prompt."
    )
    attachment_max_bytes: int = Field(
        default=5_000_000, ge=1, description="Largest attachment, in bytes (decoded), on every way in."
    )
    attachment_max_count: int = Field(default=4, ge=0, description="Attachments per message.")
    attachment_max_pixels: int = Field(
        default=4096 * 4096,
        ge=1,
        description="Largest image, width x height, read from its header (decoding 4096x4096 holds at most "
        "64 MiB; the models scale a larger image down anyway).",
    )
    attachment_max_message_pixels: int = Field(
        default=50_000_000,
        ge=1,
        description="Pixels of one message's images together, read from their headers before any is "
        "decoded (bounds the CPU one message costs; four 12 MP photos fit).",
    )
    attachment_decode_threads: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Images this process decodes at once (checking them), whatever the number of users: "
        "each holds up to 4 bytes a pixel of the largest image while it decodes.",
    )
    attachment_max_pdf_pages: int = Field(default=100, ge=1, description="Longest PDF, in pages.")
    attachment_history_max: int = Field(
        default=2,
        ge=0,
        description="Earlier attachments the model sees again on later turns (the newest first), "
        "besides this turn's.",
    )
    attachments_path: Path | None = Field(
        default=None,
        description="Where the embedded defaults keep attachments (outside the message rows). Unset: a "
        "directory beside the SQLite file (<sqlite_path without .db>-attachments).",
    )
    attachments_bucket: str | None = Field(
        default=None,
        description="Cloud Storage bucket for attachments (in the cluster). Unset: the local directory.",
    )
    # --- end attachments ---


def _data_dir() -> Path:
    """$XDG_DATA_HOME/hybrid-chat (default ~/.local/share/hybrid-chat): where runtime files go."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "hybrid-chat"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    return Settings()
