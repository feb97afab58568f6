"""The graph's typed state: what a caller passes in, what flows between nodes, what comes out."""

from __future__ import annotations

from typing import Annotated, NotRequired, Required

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict

from graph.settings import ModelChoice

__all__ = ["InputState", "ModelChoice", "OutputState", "State"]


class InputState(TypedDict, total=False):
    """What a caller passes: only `messages` is required (the new user message(s) of this turn).

    Everything else defaults from settings. History is not passed in: it is loaded from memory by
    session id (`config["configurable"]["session_id"]`, else the thread id, else `session_id` here).
    """

    messages: Required[Annotated[list[AnyMessage], add_messages]]
    session_id: str
    model: ModelChoice
    temperature: float
    top_p: float
    max_tokens: int
    system_prompt: str
    seed: int  # sampling seed, for reproducible runs (evals); backends that ignore it still answer


class OutputState(TypedDict, total=False):
    """What a caller gets back: this turn's messages (the answer last), who answered and why."""

    messages: Annotated[list[AnyMessage], add_messages]
    session_id: str
    backend: str
    route_reason: str
    error: str | None


class State(InputState, OutputState, total=False):
    """Everything the nodes share."""

    history: NotRequired[list[AnyMessage]]  # the prompt window loaded from memory, oldest first
    user_id: str
    turn_start: int  # index in `messages` where this turn's input begins (0 without a checkpointer)
    fallback: str | None  # the backend to try if the chosen one fails before its first token
    retry: bool  # try the chosen backend a second time before falling back (explicit choices)
