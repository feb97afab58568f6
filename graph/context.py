"""Run-time context (LangGraph `context_schema`) and the services the nodes are handed.

`Context` is per run: `graph.invoke(input, context={"user_id": "alice"})`. The UI sets the signed-in
user there; programmatic callers may omit it (the settings' single local user). `Services` are the
long-lived dependencies `build_graph` wires into the nodes (settings, memory store, backends, router).
"""

from __future__ import annotations

from dataclasses import dataclass

from typing_extensions import TypedDict

from graph.backends import Backends
from graph.memory.contract import ConversationStore
from graph.router import Router
from graph.settings import Settings


class Context(TypedDict, total=False):
    """Per-run settings. A TypedDict from typing_extensions: the LangGraph server needs that on 3.11."""

    user_id: str


@dataclass(frozen=True)
class Services:
    settings: Settings
    store: ConversationStore
    backends: Backends
    router: Router
