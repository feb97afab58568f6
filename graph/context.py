"""Run-time context (LangGraph `context_schema`) and the services the nodes are handed.

`Context` is per run: `graph.invoke(input, context={"user_id": "alice", "model": "gemini"})`. The UI
sets the signed-in user there; programmatic callers may omit it (the settings' single local user).
The per-turn options may be given here too (LangGraph Studio's assistant settings pass them so); the
input's own keys win over them. `Services` are the long-lived dependencies the nodes are bound to
(settings, memory store, backends, router), built once by `Services.build`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from typing_extensions import TypedDict

from graph.attachments.store import AttachmentStore, make_attachment_store
from graph.backends import Backends
from graph.memory.contract import ConversationStore
from graph.router import Router
from graph.settings import ModelChoice, Settings
from graph.turns import Turns


class Context(TypedDict, total=False):
    """Per-run settings. A TypedDict from typing_extensions: the LangGraph server needs that on 3.11."""

    user_id: str
    # True: the input holds the whole conversation (as OpenAI clients send it); nothing is read from
    # or written to memory.
    stateless: bool
    # Who the caller says is asking (an OpenAI client's `user`): a label for the turn's log line, never
    # an identity (the signed-in user is `user_id`).
    caller_label: str
    model: ModelChoice
    temperature: float
    top_p: float
    max_tokens: int
    system_prompt: str
    seed: int
    stop: str | list[str]
    response_format: dict[str, Any]
    tools: list[dict[str, Any]]  # functions the model may call (OpenAI's `tools`; graph.tools)
    tool_choice: str | dict[str, Any]


@dataclass(frozen=True)
class Services:
    settings: Settings
    store: ConversationStore
    backends: Backends
    router: Router
    turns: Turns = field(default_factory=Turns)
    attachments: AttachmentStore | None = None  # images and PDFs, outside the messages (issue 15)

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        store: ConversationStore | None = None,
        backends: Backends | None = None,
        router: Router | None = None,
    ) -> Services:
        """Settings' defaults for whatever is not handed in. Nothing connects here: the store, the
        backends and any local stand-in start on first use."""
        from graph.policies import default_router

        if store is None:
            from graph.memory import make_store

            store = make_store(settings)
        backends = backends or Backends(settings)
        router = router or default_router(settings, backends)
        return cls(settings, store, backends, router, attachments=make_attachment_store(settings))
