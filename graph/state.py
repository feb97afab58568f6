"""The graph's typed state: what a caller passes in, what flows between nodes, what comes out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, NotRequired, Required

from langchain_core.messages import AnyMessage
from langgraph.channels import EphemeralValue
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict

from graph.settings import ModelChoice

__all__ = ["OPTION_KEYS", "InputState", "ModelChoice", "OutputState", "PutBack", "State", "thread_messages"]

OPTION_KEYS = (
    "model",
    "temperature",
    "top_p",
    "max_tokens",
    "system_prompt",
    "seed",
    "stop",
    "response_format",
    "tools",
    "tool_choice",
)
"""Per-turn options: from the input, else the run's context, else `configurable`, else settings."""


@dataclass(frozen=True)
class PutBack:
    """Messages memory holds that the thread lacks, put back into the thread right after the message
    `after` (a run cancelled mid-answer keeps its question in the thread, while its graph saved the
    partial answer to memory). An instruction to the reducer rather than messages in the node's output,
    so LangGraph's messages stream does not replay them as this turn's answer."""

    after: str
    messages: tuple[AnyMessage, ...]


def thread_messages(
    left: Sequence[AnyMessage], right: Sequence[AnyMessage] | AnyMessage | Sequence[PutBack]
) -> list[AnyMessage]:
    """`add_messages`, plus `PutBack` instructions (a list of them, each applied in turn)."""
    if isinstance(right, list | tuple) and right and all(isinstance(r, PutBack) for r in right):
        merged = list(left)
        for put in right:
            at = next((i + 1 for i, m in enumerate(merged) if m.id == put.after), len(merged))
            merged[at:at] = list(put.messages)
        return merged
    return add_messages(left, right)  # type: ignore[arg-type]


class InputState(TypedDict, total=False):
    """What a caller passes: only `messages` is required (the new user message(s) of this turn).

    History is not passed in: it is loaded from memory by session id. The options are this run's only
    (`EphemeralValue`: under a checkpointer they do not carry over to the thread's next run).
    """

    messages: Required[Annotated[list[AnyMessage], thread_messages]]
    session_id: str
    model: Annotated[ModelChoice, EphemeralValue]
    temperature: Annotated[float, EphemeralValue]
    top_p: Annotated[float, EphemeralValue]
    max_tokens: Annotated[int, EphemeralValue]
    system_prompt: Annotated[str, EphemeralValue]
    seed: Annotated[int, EphemeralValue]  # sampling seed, for reproducible runs (evals)
    stop: Annotated[str | list[str], EphemeralValue]  # stop sequences (OpenAI's `stop`; graph.output)
    # What the answer must be (OpenAI's `response_format`: json_object or json_schema; graph.output)
    response_format: Annotated[dict[str, Any], EphemeralValue]
    # Functions the model may call, and how (OpenAI's `tools` and `tool_choice`; graph.tools)
    tools: Annotated[list[dict[str, Any]], EphemeralValue]
    tool_choice: Annotated[str | dict[str, Any], EphemeralValue]


class OutputState(TypedDict, total=False):
    """What a caller gets back: the messages (this turn's without a checkpointer, the thread's with one;
    the answer last), who answered and why."""

    messages: Annotated[list[AnyMessage], thread_messages]
    session_id: str
    backend: str
    route_reason: str
    error: str | None


class State(InputState, OutputState, total=False):
    """Everything the nodes share."""

    user_id: str
    turn_start: int  # index in `messages` where this turn's input begins
    # The prompt's history (memory's window, trimmed), keyed by message id. A mapping, not a list, on
    # purpose: LangGraph's "messages" stream emits every message listed in a node's output, and the
    # loaded history is not this turn's output.
    history: NotRequired[dict[str, AnyMessage]]
    options: dict[str, Any]  # the resolved per-turn options (see OPTION_KEYS)
    refused: dict[str, str] | None  # why `prepare` refused the turn: {"kind", "message"}
    stateless: bool  # the input is the whole conversation; memory is neither read nor written
    fallback: str | None  # the backend to try if the chosen one fails before its first token
    retry: bool  # try the chosen backend a second time before falling back (explicit choices)
