"""The graph's nodes: prepare -> call model -> save turn (a refused turn: prepare -> refuse).

Each node is an async function of LangGraph's public API (the state, the run's config and `Runtime`),
bound to the long-lived `Services` by `build_graph`. Sync callers (`graph.invoke`) reach the same code
through `graph/bridge.py`: nothing here is written twice.

The conversation store is the truth. Under a checkpointer (the LangGraph server) the thread agrees with
it: a run from an earlier checkpoint (regenerate, edit, time travel) cuts memory back to what the thread
shows before the turn; refused input is removed from the thread again; the per-turn options never carry
over (see `graph/state.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    AnyMessage,
    BaseMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
)
from langchain_core.messages.utils import count_tokens_approximately, trim_messages
from langchain_core.runnables import RunnableConfig
from langgraph.graph.message import add_messages
from langgraph.runtime import Runtime

from graph import metrics
from graph.attachments import blocks
from graph.attachments.store import AttachmentStore, make_attachment_store
from graph.backends import BACKENDS, Accepts, BackendName, GenerationParams
from graph.context import Context, Services
from graph.finish import LENGTH, TOOL_CALLS, finish_reason
from graph.health import http_status
from graph.memory.contract import AccessDenied, ChatHistory, ConversationNotFound, MemoryUnavailable
from graph.output import check_seed, response_format, stop_sequences
from graph.router import SHORT_NAMES, RouteRequest, Signals
from graph.sanitize import for_model
from graph.settings import Settings
from graph.state import OPTION_KEYS, PutBack, State, thread_messages
from graph.tools import carries_tools, tool_spec
from graph.validation import (
    AttachmentInfo,
    AttachmentLimits,
    InvalidInput,
    check_id,
    check_message_attachments,
    check_new_messages,
    check_session_id,
    check_system_prompt,
    clean_text,
)

log = logging.getLogger(__name__)

META = "hybrid_chat"  # key of our metadata in an answer's response_metadata
REFUSALS: dict[str, type[Exception]] = {
    "invalid": InvalidInput,
    "access_denied": AccessDenied,
    "not_found": ConversationNotFound,
    "memory_unavailable": MemoryUnavailable,
}


# --- prepare --------------------------------------------------------------------------------
def turn_start(messages: Sequence[BaseMessage]) -> int:
    """Where this turn's input begins: after the last answer. Without a checkpointer the input is the
    whole turn (0); with one, the thread's earlier turns come first."""
    return next((i + 1 for i in range(len(messages) - 1, -1, -1) if messages[i].type == "ai"), 0)


INPUT_TYPES = ("human", "tool")  # what a caller sends in a turn: a user's message, or a tool's result


def inputs(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    """A turn's input as stored: the user's message(s), or the results of the tools the last answer
    called (the caller ran them)."""
    return [m for m in messages if m.type in INPUT_TYPES]


def is_error_note(message: BaseMessage) -> bool:
    """The graph's note that no backend answered: shown, never stored, never part of a prompt."""
    return message.type == "ai" and bool((message.response_metadata.get(META) or {}).get("error"))


def _identity(
    state: State, config: RunnableConfig, runtime: Runtime[Context], s: Settings
) -> tuple[str, str]:
    configurable = config.get("configurable") or {}
    # On a thread (a checkpointer: the LangGraph server), the thread is the conversation: its id comes
    # before the session id its state carries, which a copied thread inherits from its original.
    session_id = (
        configurable.get("session_id")
        or _thread_id(runtime)
        or state.get("session_id")
        or configurable.get("thread_id")
        or uuid.uuid4().hex
    )
    user_id = (runtime.context or {}).get("user_id") or s.user_id
    return check_session_id(str(session_id)), check_id(str(user_id), "user id")


def resolve_options(
    state: State, config: RunnableConfig, runtime: Runtime[Context], services: Services
) -> dict[str, Any]:
    """Each option from, in order: the input, the run's context, `configurable`, the settings."""
    s = services.settings
    defaults = {
        "model": s.default_model,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "max_tokens": s.max_tokens,
        "system_prompt": s.system_prompt,
        "seed": None,
        "stop": None,
        "response_format": None,
        "tools": None,
        "tool_choice": None,
    }
    sources = (state, runtime.context or {}, config.get("configurable") or {})
    out = {k: next((src[k] for src in sources if src.get(k) is not None), defaults[k]) for k in OPTION_KEYS}
    out["seed"], out["stop"] = check_seed(out["seed"]), stop_sequences(out["stop"])
    if response_format(out["response_format"]) is None:  # checked here; kept as sent (plain JSON)
        out["response_format"] = None
    if tool_spec(out["tools"], out["tool_choice"]) is None:  # checked here; kept as sent
        out["tools"] = out["tool_choice"] = None
    if out["model"] == "task":  # clients' background requests: capped (graph/policies/task.py)
        out["max_tokens"] = min(int(out["max_tokens"]), s.task_max_tokens)
    if out["model"] not in services.router.policies:
        choices = ", ".join(sorted(services.router.policies))
        raise InvalidInput(f"unknown model {str(out['model'])[:40]!r}: choose one of {choices}")
    if out["system_prompt"] is not None and not isinstance(out["system_prompt"], str):
        raise InvalidInput("the system prompt must be text")
    check_system_prompt(out["system_prompt"])
    return out


def _thread_id(runtime: Runtime[Context]) -> str | None:
    """The run's thread (LangGraph's checkpointer), None when the graph runs without one (`ChatClient`)."""
    return runtime.execution_info.thread_id if runtime.execution_info else None


async def _follow_thread(
    history: ChatHistory,
    window: list[BaseMessage],
    prior: Sequence[BaseMessage],
    sent: Sequence[BaseMessage],
    *,
    max_messages: int,
) -> list[BaseMessage]:
    """Memory made equal to the run's thread, which is the truth where there is one (`prior`: what the
    thread shows before this turn; `sent`: this run's input as the thread holds it):
    - the thread shows nothing, memory holds turns and none of them was sent again: a fork from the
      thread's first checkpoint (an edit of the first message): the conversation starts afresh, the
      abandoned turns forgotten (a cancelled run's question, still in the thread, is not a fork);
    - the thread shows turns memory has none of: a copied thread (`threads.copy`), or memory lost: the
      thread's turns are stored, so this prompt and the later ones see them;
    - otherwise memory is cut back to the thread's last message (`_rewind`)."""
    shown = [m for m in prior if m.type in ("human", "ai") and not is_error_note(m)]
    if not shown:
        stored = {m.id for m in window}
        if window and not any(m.id in stored for m in sent):
            await history.aclear()
            return []
        return window
    if not window:
        await history.aadd_messages(shown)
        return shown[-max_messages:]
    return await _rewind(history, window, prior)


def _stopped_answers(thread_input: Sequence[BaseMessage], window: Sequence[BaseMessage]) -> list[PutBack]:
    """The partial answers memory kept for questions the thread shows unanswered (`thread_input`: the
    thread's messages after its last answer). A run cancelled mid-answer (the LangGraph server's cancel,
    or a newer run with `multitask_strategy="interrupt"`) leaves its question in the thread, while its
    graph saved the question and the partial answer, marked stopped, to memory: both must hold the same."""
    at = {m.id: i for i, m in enumerate(window)}
    out: list[PutBack] = []
    for question in thread_input[:-1]:  # the last one is this run's own question
        if question.type != "human" or question.id not in at:
            continue
        after = window[at[question.id] + 1 :]
        kept = []
        for m in after:
            if m.type != "ai" or (m.response_metadata.get(META) or {}).get("interrupted") != "stopped":
                break
            kept.append(m)
        if kept:
            out.append(PutBack(str(question.id), tuple(kept)))
    return out


async def _rewind(
    history: ChatHistory, window: list[BaseMessage], prior: Sequence[BaseMessage]
) -> list[BaseMessage]:
    """Cut memory back to the thread's last stored message (`prior` is what the thread shows before this
    turn). Memory ahead of the thread means the run starts from an earlier checkpoint (regenerate, edit,
    time travel): the abandoned turns must not reach this prompt or any later one. A thread whose
    messages memory does not know (memory wiped, or history passed in without a checkpointer) leaves
    memory untouched."""
    anchor = next((m for m in reversed(prior) if not is_error_note(m)), None)
    if anchor is None or not window or window[-1].id == anchor.id:
        return window
    ids = [m.id for m in window]
    if anchor.id in ids:
        cut = ids.index(anchor.id) + 1
        await history.atruncate(str(ids[cut]))
        return window[:cut]
    after = await _stored_after(history, str(anchor.id), newer=window[0])
    if after is None:
        return window
    await history.atruncate(after)
    return await history.aget_window(max_messages=len(window))


async def _stored_after(history: ChatHistory, anchor_id: str, newer: BaseMessage) -> str | None:
    """The id of the stored message right after `anchor_id`, paging back from the window's start
    (`newer`); None when memory does not hold `anchor_id`."""
    page = await history.aget_page(limit=200)
    while True:
        ids = [m.id for m in page.messages]
        if anchor_id in ids:
            i = ids.index(anchor_id)
            return str(ids[i + 1]) if i + 1 < len(ids) else str(newer.id)
        if page.next_before is None or not page.messages:
            return None
        newer = page.messages[0]
        page = await history.aget_page(before=page.next_before, limit=200)


def attachment_limits(s: Settings) -> AttachmentLimits:
    return AttachmentLimits(
        max_bytes=s.attachment_max_bytes,
        max_count=s.attachment_max_count,
        max_pixels=s.attachment_max_pixels,
        max_message_pixels=s.attachment_max_message_pixels,
        max_pdf_pages=s.attachment_max_pdf_pages,
        decode_threads=s.attachment_decode_threads,
    )


def check_attachments(messages: Sequence[BaseMessage], s: Settings) -> list[AttachmentInfo]:
    """This turn's attachments, checked from their bytes a message at a time (every limit before any
    decoding: `graph.validation.check_message_attachments`)."""
    limits = attachment_limits(s)
    found: list[AttachmentInfo] = []
    for m in messages:
        if m.type != "human":
            continue
        found += check_message_attachments([(r.data, r.name) for r in blocks.find(m.content)], limits)
    return found


def check_turn_input(unstored: Sequence[BaseMessage], earlier: Sequence[BaseMessage]) -> None:
    """This turn's new messages: the user's (`check_new_messages`), or tool results, each answering a
    call of the answer before them (by `tool_call_id`), as text within the user message's limits."""
    results = [m for m in unstored if m.type == "tool"]
    if not results:
        check_new_messages(unstored)
        return
    others = [m for m in unstored if m.type != "tool"]
    if others:
        check_new_messages(others)
    if unstored[-1].type not in INPUT_TYPES:
        raise InvalidInput(
            f"the last message of a turn must be the user's or a tool's, not {unstored[-1].type!r}"
        )
    asked = next((m for m in reversed([*earlier, *unstored]) if m.type == "ai"), None)
    called = {c.get("id") for c in getattr(asked, "tool_calls", None) or []}
    for m in results:
        call_id = getattr(m, "tool_call_id", None)
        if call_id not in called:
            raise InvalidInput(
                f"a tool result answers {str(call_id)[:64]!r}, not a tool call of the answer before it"
            )
        if m.text.strip():  # a tool may return nothing; what it returns is checked as a user's text
            check_new_messages([HumanMessage(content=m.content, id=m.id)])


def attachment_signals(
    base: Signals, files: Sequence[AttachmentInfo], services: Services, *, tools: bool = False
) -> Signals:
    """The router's signals plus this turn's attachments and tools, and what each backend takes."""
    if not files and not tools:
        return base
    if not files:
        return replace(base, tools=True, accepts={b: services.backends.accepts(b) for b in BACKENDS})
    return replace(
        base,
        tools=tools,
        attachments=frozenset(f.kind for f in files),
        attachment_count=len(files),
        attachment_types=frozenset(f.mime_type for f in files),
        attachment_bytes=sum(f.size for f in files),
        accepts={b: services.backends.accepts(b) for b in BACKENDS},
    )


def _store_error(exc: BaseException) -> bool:
    """What the attachment stores raise when they cannot keep a file: a disk's OSError, Cloud Storage's
    API and auth errors (requests' errors are OSErrors). Imported here: the Google libraries take 0.1 s
    to import, and a text-only process never needs them."""
    from google.api_core.exceptions import GoogleAPICallError
    from google.auth.exceptions import GoogleAuthError

    return isinstance(exc, OSError | GoogleAPICallError | GoogleAuthError)


def attachment_store(services: Services) -> AttachmentStore:
    return services.attachments or make_attachment_store(services.settings)


async def stored_form(
    messages: Sequence[BaseMessage], user_id: str, services: Services, session_id: str
) -> list[BaseMessage]:
    """`messages` as memory keeps them: user messages' attachments put in the attachment store and
    replaced by references (a message document stays small; Firestore caps one at 1 MiB)."""
    store = attachment_store(services)
    out: list[BaseMessage] = []
    for m in messages:
        if m.type == "human" and isinstance(m.content, list):
            try:
                content = await blocks.to_stored(m.content, user_id, session_id, store)
            except Exception as exc:  # a disk, a bucket: the turn is reported not saved, as memory's
                if _store_error(exc):
                    raise MemoryUnavailable(f"the attachment store failed ({type(exc).__name__})") from exc
                raise
            m = m.model_copy(update={"content": content})
        out.append(m)
    return out


async def _save_questions(
    history: ChatHistory, questions: list[BaseMessage], user_id: str, services: Services, session_id: str
) -> None:
    await history.aadd_messages(await stored_form(questions, user_id, services, session_id))


async def resolved_history(state: State, services: Services) -> dict[str, BaseMessage]:
    """The prompt's history with earlier attachments loaded back from the store, the newest first, at
    most `attachment_history_max` of them (the rest stay references: the model reads a line saying
    what was there)."""
    history = dict(state.get("history") or {})
    budget = services.settings.attachment_history_max
    store = attachment_store(services)
    for key in reversed(list(history)):
        m = history[key]
        if budget <= 0:
            break
        if m.type == "human" and isinstance(m.content, list):
            content, used = await blocks.resolve(
                m.content, state["user_id"], state["session_id"], store, budget
            )
            if used:
                history[key] = m.model_copy(update={"content": content})
                budget -= used
    return history


def estimate_tokens(messages: Sequence[BaseMessage]) -> int:
    """`count_tokens_approximately`, an attachment counted as what the models count, not its base64."""
    return count_tokens_approximately(
        [m.model_copy(update={"content": blocks.without_files(m.content)}) for m in messages]
    )


def _refusal(unstored: Sequence[BaseMessage], exc: Exception) -> dict[str, Any]:
    """Refused: this run's input leaves the thread again (a checkpointer keeps the input of a run that
    raised, and every later run on the thread would be refused with it); `refuse` then raises."""
    kind = next((k for k, t in REFUSALS.items() if isinstance(exc, t)), "invalid")
    return {
        "messages": [RemoveMessage(id=str(m.id)) for m in unstored if m.id],
        "refused": {"kind": kind, "message": str(exc)},
    }


async def prepare(
    state: State, config: RunnableConfig, runtime: Runtime[Context], *, services: Services
) -> dict[str, Any]:
    """Identity, options, memory's window (cut back to the thread), this turn's input checked, route."""
    s = services.settings
    messages = state["messages"]
    start = turn_start(messages)
    unstored: Sequence[BaseMessage] = messages[start:]
    put_back: list[PutBack] = []
    try:
        session_id, user_id = _identity(state, config, runtime, s)
        options = resolve_options(state, config, runtime, services)
        stateless = bool((runtime.context or {}).get("stateless"))
        history = None if stateless else services.store.history(session_id, user_id)
        if history is None:  # the caller sends the whole conversation (OpenAI clients): memory unused
            window = [m for m in messages[:start] if m.type in ("human", "ai", "tool")]
            window = window[-s.history_max_messages :]
        else:
            on_thread = bool(_thread_id(runtime))
            if on_thread:  # a cancelled run's partial answer may still be on its way to memory
                for question in unstored[:-1]:
                    if question.type == "human" and question.id:
                        await services.turns.pending_stop(str(question.id), limit_s=5.0)
            window = await history.aget_window(max_messages=s.history_max_messages)
            if on_thread:
                put_back = _stopped_answers(messages[start:], window)
                if put_back:
                    messages = thread_messages(messages, put_back)
                    start = turn_start(messages)
                    unstored = messages[start:]
                window = await _follow_thread(
                    history, window, messages[:start], unstored, max_messages=s.history_max_messages
                )
            else:
                window = await _rewind(history, window, messages[:start])
        seen = {m.id for m in window}
        unstored = [m for m in messages[start:] if m.id not in seen]
        if not unstored and messages and messages[-1].id not in seen and messages[-1].type == "ai":
            unstored = [messages[-1]]  # an answer passed in as the input: refused as such, never stored
        check_turn_input(unstored, window)
        files: list[AttachmentInfo] = []
        if _count_files(unstored):  # decoding images is CPU work: off the event loop
            files = await asyncio.to_thread(check_attachments, unstored, s)
    except (InvalidInput, AccessDenied, ConversationNotFound, MemoryUnavailable) as exc:
        log.warning("turn refused: %s", type(exc).__name__)
        return _refusal(unstored, exc)
    system = options["system_prompt"] or ""
    new_tokens = estimate_tokens(unstored) + len(system) // 4
    kept = trim_messages(
        [m for m in window if not is_error_note(m)],
        max_tokens=max(0, s.history_max_tokens - new_tokens),
        token_counter=estimate_tokens,
        strategy="last",
        start_on="human",
    )
    if services.router.gemma_load is not None:
        services.router.gemma_load.kick()  # refresh vLLM's queue length in the background
    try:  # the one rule on attachments is applied by the router, whatever the policy
        decision = services.router.decide(
            RouteRequest(
                requested=options["model"],
                prompt_tokens=estimate_tokens(kept) + new_tokens,
                max_tokens=options["max_tokens"],
                new_conversation=not window,
                signals=attachment_signals(
                    services.router.signals(),
                    files,
                    services,
                    tools=options["tools"] is not None or carries_tools([*kept, *unstored]),
                ),
                text=next((m.text for m in reversed(unstored) if m.type == "human"), ""),  # for `learned`
            )
        )
    except InvalidInput as exc:  # no backend takes the attachments: refused before anything is saved
        log.warning("turn refused: %s", type(exc).__name__)
        return _refusal(unstored, exc)
    metrics.ROUTES.labels(decision.backend, decision.reason.split(" (")[0]).inc()
    # The question is saved now, in the background: a crash mid-answer keeps it; the answer waits for it.
    questions = inputs(unstored)
    if history is not None:
        save = _save_questions(history, questions, user_id, services, session_id)
        services.turns.begin(str(unstored[-1].id), save)
    return {
        **({"messages": put_back} if put_back else {}),
        "stateless": history is None,
        "session_id": session_id,
        "user_id": user_id,
        "turn_start": start,
        "history": {str(m.id): m for m in kept},
        "options": options,
        "refused": None,
        "error": None,
        "backend": decision.backend,
        "route_reason": decision.reason,
        "fallback": decision.fallback,
        "retry": decision.retry,
    }


def after_prepare(state: State) -> str:
    return "refuse" if state.get("refused") else "call_model"


async def refuse(state: State) -> dict[str, Any]:
    """Ends a refused run with the error that says why (the thread is already clean)."""
    refused = state.get("refused") or {}
    raise REFUSALS.get(refused.get("kind", ""), InvalidInput)(refused.get("message", "refused"))


# --- call model -----------------------------------------------------------------------------
def new_messages(state: State) -> list[AnyMessage]:
    """This turn's messages (its input, then its answer once there), minus any already in the history."""
    seen = set((state.get("history") or {}).keys())
    return [m for m in state["messages"][state.get("turn_start", 0) :] if m.id not in seen]


def _params(options: dict[str, Any], s: Settings) -> GenerationParams:
    priority = None
    if s.gemma_priority_scheduling:  # people's turns first; clients' background requests after them
        priority = s.task_priority if options.get("model") == "task" else 0
    return GenerationParams(
        temperature=options["temperature"],
        top_p=options["top_p"],
        max_tokens=options["max_tokens"],
        seed=options.get("seed"),
        stop=tuple(options.get("stop") or ()),
        response_format=response_format(options.get("response_format")),
        tools=tool_spec(options.get("tools"), options.get("tool_choice")),
        priority=priority,
    )


def _prompt(
    state: State,
    accepts: Accepts | None = None,
    history_max: int = 0,
    loaded: dict[str, BaseMessage] | None = None,
) -> list[BaseMessage]:
    """The prompt for one backend: this turn's attachments as the models take them (the router made
    sure this backend can); earlier turns' newest first within `history_max` and what the backend takes
    (`blocks.fit_content`), the rest as a line saying what was there."""
    system = (state.get("options") or {}).get("system_prompt")
    head: list[BaseMessage] = [SystemMessage(system)] if system and system.strip() else []
    turn = inputs(new_messages(state))
    turn = [
        m.model_copy(update={"content": blocks.to_model_content(m.content)}) if m.type == "human" else m
        for m in turn
    ]
    kinds = accepts.kinds if accepts else frozenset({"image", "pdf"})
    budget = min(history_max, (accepts.max_count if accepts else history_max) - _count_files(turn))
    bytes_left = accepts.max_bytes - _file_bytes(turn) if accepts else None
    history: list[BaseMessage] = []
    for m in reversed(list((loaded if loaded is not None else state.get("history") or {}).values())):
        if m.type == "human" and isinstance(m.content, list):
            content, kept, used = blocks.fit_content(m.content, kinds, max(0, budget), bytes_left)
            budget -= kept
            bytes_left = None if bytes_left is None else bytes_left - used
            m = m.model_copy(update={"content": content})
        history.append(m)
    return for_model([*head, *alternate_roles([*history[::-1], *turn])])


def _file_bytes(messages: Sequence[BaseMessage]) -> int:
    """Decoded bytes of the attachments in `messages` (prompt-ready blocks: base64)."""
    return sum(
        len(b.get("base64") or "") * 3 // 4
        for m in messages
        if isinstance(m.content, list)
        for b in m.content
        if blocks.is_file_block(b)
    )


def _count_files(messages: Sequence[BaseMessage]) -> int:
    return sum(
        sum(1 for b in m.content if blocks.is_file_block(b)) for m in messages if isinstance(m.content, list)
    )


def _calls(message: BaseMessage) -> bool:
    return message.type == "ai" and bool(getattr(message, "tool_calls", None))


def _paired_tool_calls(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    """Human, answer and tool messages, where every tool call has its result and every result its call
    (the backends refuse either alone): a result whose call was trimmed away is dropped, and an answer's
    calls that were never answered (the caller moved on) are dropped from it (its text stays)."""
    kept = [m for m in messages if m.type in ("human", "ai", "tool")]
    out: list[BaseMessage] = []
    for i, m in enumerate(kept):
        if m.type == "tool":
            call = next((x for x in reversed(out) if x.type != "tool"), None)
            ids = (
                {c.get("id") for c in (getattr(call, "tool_calls", None) or [])}
                if call is not None
                else set()
            )
            if getattr(m, "tool_call_id", None) in ids:
                out.append(m)
            continue
        if _calls(m):
            answered = {getattr(x, "tool_call_id", None) for x in kept[i + 1 :] if x.type == "tool"}
            if not {c.get("id") for c in m.tool_calls} <= answered:  # type: ignore[attr-defined]
                m = m.model_copy(update={"tool_calls": []})
                if not m.text.strip():
                    continue
        out.append(m)
    return out


def _as_blocks(content: Any) -> list[Any]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def alternate_roles(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    """user/assistant/user/... starting with the user, as Gemma's chat template demands.

    Gemma 3's template puts the system prompt in front of the first user turn and raises
    "Conversation roles must alternate" otherwise (vLLM answers 400). Our history can hold two user
    messages in a row (a turn whose answer failed keeps the question), so consecutive messages of one
    role are merged, and a leading answer without its question is dropped. Gemini accepts the result too.
    """
    out: list[BaseMessage] = []
    for message in _paired_tool_calls(messages):
        if not out and message.type != "human":
            continue
        if message.type == "tool" or _calls(message) or (out and (_calls(out[-1]) or out[-1].type == "tool")):
            out.append(message)  # a tool call and its results stay as they are, in their order
        elif out and out[-1].type == message.type:
            before, content = out[-1].content, message.content
            if isinstance(before, str) and isinstance(content, str):
                merged: Any = f"{out[-1].text}\n\n{message.text}"
            else:  # keep the attachments: blocks one after the other
                merged = [*_as_blocks(before), {"type": "text", "text": "\n\n"}, *_as_blocks(content)]
            out[-1] = out[-1].model_copy(update={"content": merged})
        else:
            out.append(message)
    return out


class _Answer:
    """Accumulates streamed chunks and times them (time to first token, tokens per second)."""

    def __init__(self, backend: BackendName, label: str, reason: str, routed: BackendName) -> None:
        self.backend, self.label, self.reason, self.routed = backend, label, reason, routed
        self.started = time.perf_counter()
        self.first_token: float | None = None
        self.full: AIMessageChunk | None = None
        self.metadata: dict[str, Any] = {}  # the chunks' response metadata, each field's last value
        self.finish: str | None = None  # the last chunk's reason that says something (graph.finish)

    def restart_clock(self) -> None:
        self.started = time.perf_counter()

    def feed(self, chunk: AIMessageChunk) -> None:
        if self.first_token is None and (chunk.content or chunk.tool_call_chunks):
            self.first_token = time.perf_counter()
        # Adding chunks concatenates their string metadata (Gemini repeats its model name and
        # "FINISH_REASON_UNSPECIFIED" on every chunk): each field keeps its last value instead.
        for key, value in chunk.response_metadata.items():
            if key in ("finish_reason", "finishReason"):
                self.finish = finish_reason(value) or self.finish
            elif value not in (None, "", [], {}):
                self.metadata[key] = value
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
            "requested_backend": self.routed,
            "fallback": self.backend != self.routed,
            "route_reason": self.reason,
            "latency_ms": round(elapsed * 1000, 1),
            "ttft_ms": round((self.first_token - self.started) * 1000, 1) if self.first_token else None,
            "input_tokens": usage.get("input_tokens") or 0,
            "output_tokens": out_tokens,
            "tokens_per_s": round(out_tokens / gen_time, 1) if out_tokens and gen_time > 0 else None,
            "finish_reason": "interrupted" if interrupted else self.finish,
        }
        calls = (
            []
            if interrupted
            else [{**c, "id": c.get("id") or f"call_{uuid.uuid4().hex[:24]}"} for c in full.tool_calls]
        )
        if calls:  # OpenAI's word for an answer that calls tools (Gemini says STOP)
            meta["finish_reason"] = TOOL_CALLS
            meta["tool_calls"] = [{"id": c["id"], "name": c["name"], "args": c["args"]} for c in calls]
        if interrupted:
            meta["interrupted"] = interrupted
        return AIMessage(
            content=clean_text(full.text),  # a lone surrogate from a backend would make the turn unsavable
            # The streamed chunks' id: LangGraph's "messages" stream then does not emit it a second time.
            id=full.id or f"ai-{uuid.uuid4().hex}",
            tool_calls=calls,
            response_metadata={
                **self.metadata,
                "finish_reason": TOOL_CALLS if calls else self.finish,
                META: meta,
            },
            usage_metadata=full.usage_metadata,
        )


def _error_answer(
    backend: BackendName, routed: BackendName, label: str, reason: str, exc: BaseException, saved: bool
) -> AIMessage:
    """`saved`: the turn's question is kept (not for a stateless turn, which stores nothing)."""
    log.warning("no backend answered (last: %s, %s): %s", backend, _kind(exc), str(exc)[:300])
    if saved:
        text = f"{label} is unavailable right now. Your message is saved; try again or pick another model."
    else:
        text = f"{label} is unavailable right now: try again or pick another model."
    return _note(text, backend, routed, reason, _kind(exc))


def _note(text: str, backend: BackendName, routed: BackendName, reason: str, error: str) -> AIMessage:
    """An error note in the chat's place of an answer (not part of the chat: never saved as one)."""
    return AIMessage(
        content=text,
        id=f"err-{uuid.uuid4().hex}",
        response_metadata={
            META: {
                "backend": backend,
                "requested_backend": routed,
                "fallback": backend != routed,
                "route_reason": reason,
                "error": error,
                "finish_reason": "error",
            }
        },
    )


# What a backend says when it refuses the input itself, not because it is unwell: llama.cpp without a
# vision projector answers HTTP 500 "image input is not supported"; vLLM and Vertex AI answer 400
# (INVALID_ARGUMENT), 413 or 415 for a file they cannot take.
_REJECTED_STATUS = frozenset({400, 413, 415, 422})
_REJECTED_WORDS = ("not supported", "unsupported", "cannot identify image", "invalid image")


def rejected_input(exc: BaseException) -> bool:
    """Did the backend refuse the turn's attachments (the user's input) rather than fail? Asked only for
    turns that carry attachments: such a refusal is reported to the user, never retried, never counted
    toward the breaker (one user's files must not mark a healthy backend down for everyone)."""
    status = http_status(exc)
    if status in _REJECTED_STATUS:
        return True
    if status is None and isinstance(exc, ValueError | TypeError):  # the client could not encode it
        return True
    text = str(exc).lower()
    return any(w in text for w in _REJECTED_WORDS)


def _rejected_answer(
    backend: BackendName, routed: BackendName, label: str, reason: str, saved: bool
) -> AIMessage:
    kept = "Your message is saved; send it" if saved else "Send it"
    text = (
        f"{label} did not accept the attachment: it cannot read this kind of file, or the file is not "
        f"valid. {kept} to another model, or without the attachment."
    )
    return _note(text, backend, routed, reason, "rejected_input")


def _off_format_answer(
    backend: BackendName, routed: BackendName, label: str, reason: str, why: str, saved: bool
) -> AIMessage:
    """The answer is not what the response format asked for: an error, never passed on as if it were
    (`why` may quote the answer: it goes to the caller, not to the log)."""
    kept = " Your message is saved." if saved else ""
    text = f"{label} answered outside the requested response format: {why}.{kept}"
    note = _note(text, backend, routed, reason, "invalid_output")
    note.response_metadata[META]["detail"] = why  # for a way in that words it its own way
    return note


def _has_files(prompt: Sequence[BaseMessage]) -> bool:
    return any(
        isinstance(m.content, list) and any(blocks.is_file_block(b) for b in m.content) for m in prompt
    )


class BackendDown(RuntimeError):
    """The backend's circuit is open: skipped without calling it."""


class FirstTokenTimeout(TimeoutError):
    pass


def _attempts(state: State) -> list[tuple[BackendName, str]]:
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


async def _astream_into(
    answer: _Answer, model: Any, prompt: list[BaseMessage], config: RunnableConfig, s: Settings
) -> None:
    """Stream with a first-token deadline and a total deadline (one timer, moved at the first token)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        async with asyncio.timeout_at(start + min(s.first_token_timeout_s, s.request_timeout_s)) as timer:
            # aclosing: a deadline or a cancel closes the stream here and now, which ends the backend's
            # HTTP request (left to the garbage collector, it would go on and be closed in any thread).
            async with contextlib.aclosing(model.astream(prompt, config=config)) as stream:
                async for chunk in stream:
                    had_tokens = answer.has_tokens
                    answer.feed(chunk)
                    if answer.has_tokens and not had_tokens:
                        timer.reschedule(start + s.request_timeout_s)
    except TimeoutError as exc:
        if not answer.has_tokens:
            raise FirstTokenTimeout(f"no first token within {s.first_token_timeout_s:g} s") from exc
        raise TimeoutError(f"answer not finished within {s.request_timeout_s:g} s") from exc


async def call_model(state: State, config: RunnableConfig, *, services: Services) -> dict[str, Any]:
    """Stream the answer from the routed backend: a retry, then the fallback, before the first token;
    after it, a failure keeps the partial answer (two models' text is never spliced). Cancelled (Stop,
    a cancelled run, a closed connection): the question and what streamed are saved, marked stopped.

    The finished turn's save starts here, as the answer ends, and `save_turn` awaits it: a Stop that
    lands between the two nodes cancels the run before `save_turn` starts, and would lose the answer."""
    update = await _answer(state, config, services)
    humans = inputs(new_messages(state))
    if not state.get("stateless") and humans:
        after: Any = {**state, **update, "messages": add_messages(state["messages"], update["messages"])}
        services.turns.start_save(str(humans[-1].id), _save_turn(after, _to_save(after), services))
    return update


async def _answer(state: State, config: RunnableConfig, services: Services) -> dict[str, Any]:
    params = _params(state["options"], services.settings)
    prompts: dict[BackendName, list[BaseMessage]] = {}
    loaded = await resolved_history(state, services) if not state.get("stateless") else None
    routed: BackendName = state["backend"]  # type: ignore[assignment]
    last: tuple[BackendName, str, BaseException] | None = None
    answer: _Answer | None = None
    for backend, reason in _attempts(state):
        if last is not None and last[0] == backend and _kind(last[2]) in NO_RETRY:
            continue  # a backend that just timed out is not asked again: go to the fallback
        answer = _Answer(backend, services.backends.label(backend), reason, routed)
        if backend not in prompts:
            accepts = services.backends.accepts(backend)
            prompts[backend] = _prompt(state, accepts, services.settings.attachment_history_max, loaded)
        prompt = prompts[backend]
        has_files = _has_files(prompt)
        breaker = services.router.breakers[backend]
        probing = False
        try:
            probing = breaker.state == "half-open"  # allow() below then claims the one probe
            if services.router.misconfigured(backend):  # a 403 again would only make the user wait
                raise BackendDown(f"{SHORT_NAMES[backend]} refuses our credentials")
            if not breaker.allow():
                raise BackendDown(f"{SHORT_NAMES[backend]} is marked down after repeated failures")
            model = await services.backends.amodel(backend, params)
            answer.restart_clock()  # time the answer, not a one-off client build or stand-in start
            await _astream_into(answer, model, prompt, config, services.settings)
        except asyncio.CancelledError:
            if probing:  # else the breaker would wait forever for this probe's verdict
                breaker.cancel_probe()
            _save_stopped(state, answer, services)
            raise
        except Exception as exc:
            if has_files and not answer.has_tokens and rejected_input(exc):
                metrics.ERRORS.labels(backend, "rejected_input").inc()
                log.warning("backend %s refused the attachments: %s", backend, str(exc)[:300])
                label = services.backends.label(backend)
                note = _rejected_answer(backend, routed, label, reason, saved=not state.get("stateless"))
                return _result(note, reason, "rejected_input: the backend did not accept the attachment")
            _failed(backend, exc, services)
            if answer.has_tokens:  # never splice two models' text: keep the partial, say so
                return _result(
                    answer.message(interrupted=str(exc)[:200]), reason, f"interrupted: {_kind(exc)}"
                )
            last = (backend, reason, exc)
            continue
        message = answer.message()
        _succeeded(backend, message, services, routed)
        fmt = params.response_format
        checked = fmt is not None and not message.tool_calls  # a tool call is not the answer yet
        if checked and (why := fmt.mismatch(message.text, cut=answer.finish == LENGTH)):  # type: ignore[union-attr]
            metrics.ERRORS.labels(backend, "invalid_output").inc()
            log.warning("backend %s answered outside the requested response format", backend)
            label = services.backends.label(backend)
            note = _off_format_answer(backend, routed, label, reason, why, saved=not state.get("stateless"))
            return _result(note, reason, "invalid_output: the answer does not match the response format")
        return _result(message, reason, None)
    assert last is not None
    backend, reason, exc = last
    label = services.backends.label(backend)
    note = _error_answer(backend, routed, label, reason, exc, saved=not state.get("stateless"))
    return _result(note, reason, f"no backend answered: {_kind(exc)}")


def _save_stopped(state: State, answer: _Answer | None, services: Services) -> None:
    """After a cancel: keep the question and what was streamed (marked stopped), as chat UIs do. Saved
    in a task of its own: the cancelled node cannot await it."""
    if state.get("stateless"):
        return
    humans = inputs(new_messages(state))
    messages: list[BaseMessage] = list(humans)
    if answer is not None and answer.has_tokens:
        messages.append(answer.message(interrupted="stopped"))
    session_id, user_id = state["session_id"], state["user_id"]
    key = str(humans[-1].id) if humans else None
    if key:
        services.turns.stopped_save(key)  # known as pending from now: the next turn on the thread waits

    async def save() -> None:
        try:
            if key:  # after the question's own save, so the order stays question, answer
                await services.turns.end(key)
            history = services.store.history(session_id, user_id)
            stored = await stored_form(messages, user_id, services, session_id)
            await history.aadd_messages(stored, model=answer.backend if answer else None)
        except Exception as exc:
            log.warning("saving a stopped turn failed: %s", type(exc).__name__)
        finally:
            if key and not (done := services.turns.stopped_save(key)).done():
                done.set_result(None)  # whoever stopped the turn may now read it back

    services.turns.keep(asyncio.get_running_loop().create_task(save()))


# --- save turn ------------------------------------------------------------------------------
def _to_save(state: State) -> list[BaseMessage]:
    """The user's message(s) always; this turn's answer (the last message, from call_model) unless it
    is an error note (not part of the chat). An AI message passed in as input is never stored."""
    new = new_messages(state)
    keep = inputs(new)
    answer = new[-1] if new and new[-1].type == "ai" else None
    if answer is not None and not is_error_note(answer):
        keep.append(answer)
    return keep


def _log_turn(state: State, answer: BaseMessage | None, caller_label: str | None = None) -> None:
    """One line per turn, with what operators need and no message content. `caller_label`: who the
    caller says is asking, as it says it (bounded, quoted: it is the caller's word, not an identity)."""
    meta = (answer.response_metadata.get(META) if answer else None) or {}
    log.info(
        "turn session=%s caller=%s backend=%s route=%r ttft_ms=%s latency_ms=%s output_tokens=%s error=%s",
        state.get("session_id"),
        repr(caller_label[:128]) if caller_label else "-",
        state.get("backend"),
        state.get("route_reason"),
        meta.get("ttft_ms"),
        meta.get("latency_ms"),
        meta.get("output_tokens"),
        "yes" if state.get("error") else "no",
    )


async def _replayed(history: ChatHistory, state: State, to_save: list[BaseMessage]) -> None:
    """A turn saved a second time is a run resumed from a checkpoint inside it (regenerate: LangGraph
    runs only the nodes after that checkpoint). Memory then holds this turn's question with the old
    answer after it: cut from that answer on, so the new one takes its place. Only this turn's own
    question (by id) is looked for: another tab's turns are never cut."""
    humans = [str(m.id) for m in inputs(to_save)]
    if not humans:
        return
    window = await history.aget_window(max_messages=len(state.get("history") or {}) + len(to_save) + 8)
    ids = [str(m.id) for m in window]
    if humans[-1] in ids and ids.index(humans[-1]) + 1 < len(ids):
        await history.atruncate(ids[ids.index(humans[-1]) + 1])


async def save_turn(state: State, runtime: Runtime[Context], *, services: Services) -> dict[str, Any]:
    """Saves the turn, then clears what must not outlive it."""
    to_save = _to_save(state)
    answer = state["messages"][-1] if state["messages"] and state["messages"][-1].type == "ai" else None
    _log_turn(state, answer, (runtime.context or {}).get("caller_label"))
    done: dict[str, Any] = {"history": {}, "refused": None}
    if state.get("stateless"):
        return done
    # Started by call_model as the answer ended (a run resumed at this node starts it here). Shielded:
    # a Stop that lands while the answer is being saved must not lose it; the save finishes regardless.
    humans = inputs(to_save)
    save = services.turns.take_save(str(humans[-1].id)) if humans else None
    if save is None:
        save = asyncio.ensure_future(_save_turn(state, to_save, services))
        services.turns.keep(save)
    return {**done, **await asyncio.shield(save)}


async def _save_turn(state: State, to_save: list[BaseMessage], services: Services) -> dict[str, Any]:
    history = services.store.history(state["session_id"], state["user_id"])
    try:
        humans = inputs(to_save)
        if humans and not await services.turns.end(str(humans[-1].id)):
            await _replayed(history, state, to_save)
        stored = await stored_form(to_save, state["user_id"], services, state["session_id"])
        await history.aadd_messages(stored, model=state.get("backend"))
    except MemoryUnavailable as exc:
        metrics.MEMORY_ERRORS.labels("save_turn").inc()
        log.error("saving the turn failed: %s", type(exc).__name__)
        return {"error": "the turn could not be saved: the conversation store is unreachable"}
    return {}


def last_answer(messages: Sequence[BaseMessage]) -> AIMessage | None:
    return next((m for m in reversed(messages) if isinstance(m, AIMessage)), None)
