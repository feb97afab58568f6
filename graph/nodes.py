"""The graph's nodes: load history -> route -> call model -> save turn.

Each I/O node has an async version (the UI runs the graph in its event loop; nothing here blocks it)
and a sync twin for `graph.invoke`. Both share every decision through the small pure helpers below;
only the I/O calls differ. `build_graph` binds the `Services` they are handed.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, AnyMessage, BaseMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from langgraph.runtime import get_runtime

from graph import metrics
from graph.backends import BackendName, GenerationParams
from graph.context import Context, Services
from graph.memory.base import MemoryUnavailable, estimate_tokens
from graph.router import SHORT_NAMES, RouteRequest
from graph.settings import Settings
from graph.state import State
from graph.validation import check_id, check_new_messages, check_session_id, check_system_prompt, clean_text

log = logging.getLogger(__name__)

META = "hybrid_chat"  # key of our metadata in an answer's response_metadata


# --- load history ---------------------------------------------------------------------------
def _identity(state: State, config: RunnableConfig, services: Services) -> tuple[str, str]:
    configurable = config.get("configurable") or {}
    session_id = (
        state.get("session_id")
        or configurable.get("session_id")
        or configurable.get("thread_id")
        or uuid.uuid4().hex
    )
    context: Context | None = get_runtime(Context).context
    user_id = (context or {}).get("user_id") or services.settings.user_id
    # Refused before any I/O: ids some store could not hold (or that would forge a log line), and a
    # system prompt that is not valid Unicode.
    check_system_prompt(state.get("system_prompt"))
    return check_session_id(str(session_id)), check_id(str(user_id), "user id")


def _turn_start(messages: list[AnyMessage], config: RunnableConfig) -> int:
    """Where this turn begins in `messages`. Without a checkpointer, 0: the input is the whole turn.
    With one (the LangGraph server), the thread's earlier turns come first: the turn starts after the
    last answer, and the earlier ones must not reach the prompt again past the history window."""
    # LangGraph puts the run's checkpointer (None without one) in the config under this key.
    if (config.get("configurable") or {}).get("__pregel_checkpointer") is None:
        return 0
    return next((i + 1 for i in range(len(messages) - 1, -1, -1) if messages[i].type == "ai"), 0)


def _loaded(
    state: State, config: RunnableConfig, session_id: str, user_id: str, history: list[AnyMessage]
) -> dict[str, Any]:
    turn_start = _turn_start(state["messages"], config)
    # This turn's messages are known once the history is: `InvalidInput` before any model call.
    check_new_messages(new_messages({**state, "history": history, "turn_start": turn_start}))
    return {"session_id": session_id, "user_id": user_id, "history": history, "turn_start": turn_start}


async def aload_history(state: State, config: RunnableConfig, *, services: Services) -> dict[str, Any]:
    session_id, user_id = _identity(state, config, services)
    s = services.settings
    history = await services.store.history(session_id, user_id).aget_window(
        max_messages=s.history_max_messages, max_tokens=s.history_max_tokens
    )
    return _loaded(state, config, session_id, user_id, history)


def load_history(state: State, config: RunnableConfig, *, services: Services) -> dict[str, Any]:
    session_id, user_id = _identity(state, config, services)
    s = services.settings
    history = services.store.history(session_id, user_id).get_window(
        max_messages=s.history_max_messages, max_tokens=s.history_max_tokens
    )
    return _loaded(state, config, session_id, user_id, history)


def new_messages(state: State) -> list[AnyMessage]:
    """This turn's messages (its input, then its answer once there), minus any already in the history."""
    seen = {m.id for m in state.get("history") or []}
    return [m for m in state["messages"][state.get("turn_start", 0) :] if m.id not in seen]


# --- route ----------------------------------------------------------------------------------
def route(state: State, *, services: Services) -> dict[str, Any]:
    requested = state.get("model") or services.settings.default_model
    history = state.get("history") or []
    prompt = [*history, *new_messages(state)]
    system = state.get("system_prompt", services.settings.system_prompt) or ""
    router = services.router
    decision = router.decide(
        RouteRequest(
            requested=requested,
            prompt_tokens=sum(estimate_tokens(m) for m in prompt) + len(system) // 4,
            max_tokens=state.get("max_tokens", services.settings.max_tokens),
            new_conversation=not history,
            signals=router.signals(),
        )
    )
    metrics.ROUTES.labels(decision.backend, decision.reason.split(" (")[0]).inc()
    return {
        "backend": decision.backend,
        "route_reason": decision.reason,
        "fallback": decision.fallback,
        "retry": decision.retry,
    }


async def aroute(state: State, *, services: Services) -> dict[str, Any]:
    if services.router.gemma_load is not None:
        services.router.gemma_load.kick()  # refresh vLLM's queue length in the background
    return route(state, services=services)


# --- call model -----------------------------------------------------------------------------
def _params(state: State, services: Services) -> GenerationParams:
    s = services.settings
    return GenerationParams(
        temperature=state.get("temperature", s.temperature),
        top_p=state.get("top_p", s.top_p),
        max_tokens=state.get("max_tokens", s.max_tokens),
        seed=state.get("seed"),
    )


def _prompt(state: State, services: Services) -> list[BaseMessage]:
    system = state.get("system_prompt", services.settings.system_prompt)
    head: list[BaseMessage] = [SystemMessage(system)] if system and system.strip() else []
    return [*head, *alternate_roles([*(state.get("history") or []), *new_messages(state)])]


def alternate_roles(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    """user/assistant/user/... starting with the user, as Gemma's chat template demands.

    Gemma 3's template puts the system prompt in front of the first user turn and raises
    "Conversation roles must alternate" otherwise (vLLM answers 400). Our history can hold two user
    messages in a row (a turn whose answer failed keeps the question), so consecutive messages of one
    role are merged, and a leading answer without its question is dropped. Gemini accepts the result too.
    """
    out: list[BaseMessage] = []
    for message in messages:
        if message.type not in ("human", "ai"):
            continue
        if not out and message.type == "ai":
            continue
        if out and out[-1].type == message.type:
            merged = f"{_text(out[-1])}\n\n{_text(message)}"
            out[-1] = out[-1].model_copy(update={"content": merged})
        else:
            out.append(message)
    return out


def _text(message: BaseMessage) -> str:
    return message.content if isinstance(message.content, str) else message.text


class _Answer:
    """Accumulates streamed chunks and times them (time to first token, tokens per second)."""

    def __init__(self, backend: BackendName, label: str, reason: str) -> None:
        self.backend, self.label, self.reason = backend, label, reason
        self.started = time.perf_counter()
        self.first_token: float | None = None
        self.full: AIMessageChunk | None = None

    def restart_clock(self) -> None:
        self.started = time.perf_counter()

    def feed(self, chunk: AIMessageChunk) -> None:
        if self.first_token is None and chunk.content:
            self.first_token = time.perf_counter()
        self.full = chunk if self.full is None else self.full + chunk

    @property
    def has_tokens(self) -> bool:
        return self.first_token is not None

    def message(self, *, interrupted: str | None = None) -> AIMessage:
        full = self.full or AIMessageChunk(content="")
        elapsed = time.perf_counter() - self.started
        usage = full.usage_metadata or {}
        out_tokens = usage.get("output_tokens") or 0
        gen_time = elapsed - ((self.first_token or self.started) - self.started)
        meta: dict[str, Any] = {
            "backend": self.backend,
            "backend_label": self.label,
            "route_reason": self.reason,
            "latency_ms": round(elapsed * 1000, 1),
            "ttft_ms": round((self.first_token - self.started) * 1000, 1) if self.first_token else None,
            "output_tokens": out_tokens,
            "tokens_per_s": round(out_tokens / gen_time, 1) if out_tokens and gen_time > 0 else None,
        }
        if interrupted:
            meta["interrupted"] = interrupted
        content = full.content if isinstance(full.content, str) else full.text
        return AIMessage(
            content=clean_text(content),  # a lone surrogate from a backend would make the turn unsavable
            # The streamed chunks' id: LangGraph's "messages" stream then does not emit it a second time.
            id=full.id or f"ai-{uuid.uuid4().hex}",
            response_metadata={**full.response_metadata, META: meta},
            usage_metadata=full.usage_metadata,
        )


def _error_answer(backend: BackendName, label: str, reason: str, exc: BaseException) -> AIMessage:
    detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    text = (
        f"{label} is unavailable right now ({type(exc).__name__}: {detail}). "
        "Your message is saved; try again or pick another model."
    )
    return AIMessage(
        content=text,
        id=f"err-{uuid.uuid4().hex}",
        response_metadata={META: {"backend": backend, "route_reason": reason, "error": detail}},
    )


class BackendDown(RuntimeError):
    """The backend's circuit is open: skipped without calling it."""


class FirstTokenTimeout(TimeoutError):
    pass


def _attempts(state: State, services: Services) -> list[tuple[BackendName, str]]:
    backend: BackendName = state["backend"]  # type: ignore[assignment]
    reason = state["route_reason"]
    attempts = [(backend, reason)] * (2 if state.get("retry") else 1)
    if fallback := state.get("fallback"):
        note = f"fallback: {SHORT_NAMES[backend]} unavailable; answered by {SHORT_NAMES[fallback]}"  # type: ignore[index]
        attempts.append((fallback, note))  # type: ignore[arg-type]
    return attempts


# Failures not worth a retry of the same backend: waiting for it again would double the user's wait.
NO_RETRY = frozenset({"first_token_timeout", "timeout", "circuit_open"})


def _kind(exc: BaseException) -> str:
    """A bounded label for the metrics: what kind of failure this was."""
    if isinstance(exc, BackendDown):
        return "circuit_open"
    if isinstance(exc, FirstTokenTimeout):
        return "first_token_timeout"
    if isinstance(exc, TimeoutError) or "timeout" in type(exc).__name__.lower():
        return "timeout"
    status = getattr(exc, "status_code", None) or getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int):
        return "http_429" if status == 429 else f"http_{status // 100}xx"
    if "connect" in type(exc).__name__.lower() or isinstance(exc, ConnectionError):
        return "connection"
    return "other"


def _succeeded(backend: BackendName, message: AIMessage, services: Services, routed: BackendName) -> None:
    services.router.breakers[backend].record_success()
    msg_meta = message.response_metadata[META]
    metrics.REQUESTS.labels(backend).inc()
    metrics.LATENCY.labels(backend).observe(msg_meta["latency_ms"] / 1000)
    if msg_meta["ttft_ms"] is not None:
        metrics.TTFT.labels(backend).observe(msg_meta["ttft_ms"] / 1000)
    usage = message.usage_metadata or {}
    metrics.TOKENS.labels(backend, "input").inc(usage.get("input_tokens") or 0)
    metrics.TOKENS.labels(backend, "output").inc(usage.get("output_tokens") or 0)
    if backend != routed:
        metrics.FALLBACKS.labels(routed, backend).inc()


def _failed(backend: BackendName, exc: BaseException, services: Services) -> None:
    kind = _kind(exc)
    metrics.ERRORS.labels(backend, kind).inc()
    if kind != "circuit_open":
        metrics.REQUESTS.labels(backend).inc()
        services.router.breakers[backend].record_failure()
    log.warning("backend %s failed (%s): %s", backend, kind, str(exc)[:300])


def _result(answer: AIMessage, reason: str, error: str | None) -> dict[str, Any]:
    meta = answer.response_metadata[META]
    return {"messages": [answer], "backend": meta["backend"], "route_reason": reason, "error": error}


def _give_up(services: Services, last: tuple[BackendName, str, BaseException]) -> dict[str, Any]:
    backend, reason, exc = last
    return _result(_error_answer(backend, services.backends.label(backend), reason, exc), reason, str(exc))


async def _astream_into(
    answer: _Answer, model: Any, prompt: list[BaseMessage], config: RunnableConfig, s: Settings
) -> None:
    """Stream with a first-token deadline and a total deadline (one timer, moved at the first token)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        async with asyncio.timeout(start + min(s.first_token_timeout_s, s.request_timeout_s)) as timer:
            async for chunk in model.astream(prompt, config=config):
                had_tokens = answer.has_tokens
                answer.feed(chunk)
                if answer.has_tokens and not had_tokens:
                    timer.reschedule(start + s.request_timeout_s)
    except TimeoutError as exc:
        if not answer.has_tokens:
            raise FirstTokenTimeout(f"no first token within {s.first_token_timeout_s:g} s") from exc
        raise TimeoutError(f"answer not finished within {s.request_timeout_s:g} s") from exc


async def acall_model(state: State, config: RunnableConfig, *, services: Services) -> dict[str, Any]:
    prompt, params = _prompt(state, services), _params(state, services)
    routed: BackendName = state["backend"]  # type: ignore[assignment]
    last: tuple[BackendName, str, BaseException] | None = None
    for backend, reason in _attempts(state, services):
        if last is not None and last[0] == backend and _kind(last[2]) in NO_RETRY:
            continue  # a backend that just timed out is not asked again: go to the fallback
        answer = _Answer(backend, services.backends.label(backend), reason)
        breaker = services.router.breakers[backend]
        probing = False
        try:
            probing = breaker.state == "half-open"  # allow() below then claims the one probe
            if not breaker.allow():
                raise BackendDown(f"{SHORT_NAMES[backend]} is marked down after repeated failures")
            model = await services.backends.amodel(backend, params)
            answer.restart_clock()  # time the answer, not a one-off client build or stand-in start
            await _astream_into(answer, model, prompt, config, services.settings)
        except asyncio.CancelledError:
            if probing:  # else the breaker would wait forever for this probe's verdict
                breaker.cancel_probe()
            raise
        except Exception as exc:
            _failed(backend, exc, services)
            if answer.has_tokens:  # never splice two models' text: keep the partial, say so
                return _result(answer.message(interrupted=str(exc)[:200]), reason, f"interrupted: {exc}")
            last = (backend, reason, exc)
            continue
        message = answer.message()
        _succeeded(backend, message, services, routed)
        return _result(message, reason, None)
    assert last is not None
    return _give_up(services, last)


def call_model(state: State, config: RunnableConfig, *, services: Services) -> dict[str, Any]:
    prompt, params = _prompt(state, services), _params(state, services)
    routed: BackendName = state["backend"]  # type: ignore[assignment]
    total = services.settings.request_timeout_s
    last: tuple[BackendName, str, BaseException] | None = None
    for backend, reason in _attempts(state, services):
        if last is not None and last[0] == backend and _kind(last[2]) in NO_RETRY:
            continue  # a backend that just timed out is not asked again: go to the fallback
        answer = _Answer(backend, services.backends.label(backend), reason)
        try:
            if not services.router.breakers[backend].allow():
                raise BackendDown(f"{SHORT_NAMES[backend]} is marked down after repeated failures")
            model = services.backends.model(backend, params)
            answer.restart_clock()
            # The sync path relies on the clients' read timeout for the first token (see backends).
            for chunk in model.stream(prompt, config=config):
                answer.feed(chunk)  # type: ignore[arg-type]
                if time.perf_counter() - answer.started > total:
                    raise TimeoutError(f"answer not finished within {total:g} s")
        except Exception as exc:
            _failed(backend, exc, services)
            if answer.has_tokens:
                return _result(answer.message(interrupted=str(exc)[:200]), reason, f"interrupted: {exc}")
            last = (backend, reason, exc)
            continue
        message = answer.message()
        _succeeded(backend, message, services, routed)
        return _result(message, reason, None)
    assert last is not None
    return _give_up(services, last)


# --- save turn ------------------------------------------------------------------------------
def _to_save(state: State) -> list[BaseMessage]:
    """The user's message(s) always; this turn's answer (the last message, from call_model) unless it
    is an error note (not part of the chat). An AI message passed in as input is never stored."""
    new = new_messages(state)
    keep = [m for m in new if m.type == "human"]
    answer = new[-1] if new and new[-1].type == "ai" else None
    if answer is not None and not (answer.response_metadata.get(META) or {}).get("error"):
        keep.append(answer)
    return keep


def _log_turn(state: State) -> None:
    """One line per turn, with what operators need and no message content."""
    answer = last_answer(state["messages"])
    meta = (answer.response_metadata.get(META) if answer else None) or {}
    log.info(
        "turn session=%s backend=%s route=%r ttft_ms=%s latency_ms=%s output_tokens=%s error=%s",
        state.get("session_id"),
        state.get("backend"),
        state.get("route_reason"),
        meta.get("ttft_ms"),
        meta.get("latency_ms"),
        meta.get("output_tokens"),
        "yes" if state.get("error") else "no",
    )


def _save_failed(exc: Exception) -> dict[str, Any]:
    metrics.MEMORY_ERRORS.labels("save_turn").inc()
    log.error("saving the turn failed: %s", exc)
    return {"error": f"the turn could not be saved: {exc}"}


async def asave_turn(state: State, *, services: Services) -> dict[str, Any]:
    _log_turn(state)
    history = services.store.history(state["session_id"], state["user_id"])
    try:
        await history.aadd_messages(_to_save(state), model=state.get("backend"))
    except MemoryUnavailable as exc:
        return _save_failed(exc)
    return {}


def save_turn(state: State, *, services: Services) -> dict[str, Any]:
    _log_turn(state)
    history = services.store.history(state["session_id"], state["user_id"])
    try:
        history.add_messages(_to_save(state))
    except MemoryUnavailable as exc:
        return _save_failed(exc)
    return {}


def last_answer(messages: Sequence[BaseMessage]) -> AIMessage | None:
    return next((m for m in reversed(messages) if isinstance(m, AIMessage)), None)
