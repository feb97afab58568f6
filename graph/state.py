"""The graph's typed state: what a caller passes in, what flows between nodes, what comes out."""

from __future__ import annotations

from typing import Annotated, Any, NotRequired, Required

from langchain_core.messages import AnyMessage
from langgraph.channels import EphemeralValue
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict

from graph.settings import ModelChoice

__all__ = ["OPTION_KEYS", "InputState", "ModelChoice", "OutputState", "State"]

OPTION_KEYS = (
    "model",
    "temperature",
    "top_p",
    "max_tokens",
    "system_prompt",
    "seed",
    "stop",
    "response_format",
)
"""Per-turn options: from the input, else the run's context, else `configurable`, else settings."""


class InputState(TypedDict, total=False):
    """What a caller passes: only `messages` is required (the new user message(s) of this turn).

    History is not passed in: it is loaded from memory by session id. The options are this run's only
    (`EphemeralValue`: under a checkpointer they do not carry over to the thread's next run).
    """

    messages: Required[Annotated[list[AnyMessage], add_messages]]
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


class OutputState(TypedDict, total=False):
    """What a caller gets back: the messages (this turn's without a checkpointer, the thread's with one;
    the answer last), who answered and why."""

    messages: Annotated[list[AnyMessage], add_messages]
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
