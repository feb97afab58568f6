"""Prometheus metrics of the chat path (prometheus-client's default registry, served at /metrics).

Labels are bounded sets (backend names, route reason kinds), never user input: a label per session or
per message would explode the series count. No message content is ever recorded.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)

REQUESTS = Counter("hybrid_chat_backend_requests_total", "Model calls per backend.", ["backend"])
ERRORS = Counter(
    "hybrid_chat_backend_errors_total", "Failed model calls per backend and kind.", ["backend", "kind"]
)
FALLBACKS = Counter(
    "hybrid_chat_fallbacks_total",
    "Answers served by another backend than routed.",
    ["from_backend", "to_backend"],
)
ROUTES = Counter(
    "hybrid_chat_route_decisions_total", "Route decisions by backend and reason.", ["backend", "reason"]
)
TTFT = Histogram(
    "hybrid_chat_time_to_first_token_seconds",
    "Time to first token per backend.",
    ["backend"],
    buckets=_LATENCY_BUCKETS,
)
LATENCY = Histogram(
    "hybrid_chat_answer_seconds", "Total answer time per backend.", ["backend"], buckets=_LATENCY_BUCKETS
)
TOKENS = Counter("hybrid_chat_tokens_total", "Tokens per backend and direction.", ["backend", "direction"])
BACKEND_UP = Gauge("hybrid_chat_backend_up", "1 when the circuit breaker lets calls through.", ["backend"])
MEMORY_ERRORS = Counter("hybrid_chat_memory_errors_total", "Failed memory operations.", ["operation"])
