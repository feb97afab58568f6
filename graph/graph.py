"""`build_graph()`: the one place the chat graph is wired.

    prepare -> call_model -> save_turn          (a refused turn: prepare -> refuse, which raises)

Few nodes on purpose: each costs time on every turn. The nodes are async; `ChatGraph` serves the sync
`invoke`/`stream` by running `astream` on the bridge's loop (graph/bridge.py), so no node has a sync copy.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from graph import nodes
from graph.bridge import iterate_sync
from graph.context import Context, Services
from graph.memory.contract import ConversationStore
from graph.router import Router
from graph.settings import Settings, get_settings
from graph.state import InputState, OutputState, State


class ChatGraph(CompiledStateGraph):
    """The compiled chat graph; its sync `stream` (and so `invoke`) runs the async one on the bridge."""

    def stream(self, input: Any, config: Any = None, **kwargs: Any) -> Iterator[Any]:
        yield from iterate_sync(self.astream(input, config, **kwargs))


def build_graph(
    settings: Settings | None = None,
    *,
    services: Services | None = None,
    store: ConversationStore | None = None,
    backends: Any = None,
    router: Router | None = None,
    checkpointer: Any = None,
) -> ChatGraph:
    """The compiled chat graph. Settings default to the environment; every dependency can be handed in
    (`services`, or any of `store`, `backends`, `router`). Nothing connects here: the store, the
    backends and any local stand-in start on first use."""
    if services is None:
        services = Services.build(settings or get_settings(), store=store, backends=backends, router=router)
    builder = StateGraph(State, context_schema=Context, input_schema=InputState, output_schema=OutputState)
    builder.add_node("prepare", partial(nodes.prepare, services=services))
    builder.add_node("refuse", nodes.refuse)
    builder.add_node("call_model", partial(nodes.call_model, services=services))
    builder.add_node("save_turn", partial(nodes.save_turn, services=services))
    builder.add_edge(START, "prepare")
    builder.add_conditional_edges("prepare", nodes.after_prepare, ["refuse", "call_model"])
    builder.add_edge("refuse", END)
    builder.add_edge("call_model", "save_turn")
    builder.add_edge("save_turn", END)
    compiled = builder.compile(checkpointer=checkpointer, name="hybrid-chat")
    # `copy()` rebuilds a compiled graph from its attributes; the same, as our subclass.
    return ChatGraph(**{k: v for k, v in compiled.__dict__.items() if k != "__orig_class__"})
