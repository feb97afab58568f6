"""`build_graph()`: the one place the chat graph is wired.

    load_history -> route -> call_model -> save_turn

Few nodes on purpose: each costs time on every turn.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from langgraph._internal._runnable import RunnableCallable
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from graph import nodes
from graph.backends import Backends
from graph.context import Context, Services
from graph.memory.contract import ConversationStore
from graph.router import Router
from graph.settings import Settings, get_settings
from graph.state import InputState, OutputState, State


def build_graph(
    settings: Settings | None = None,
    *,
    store: ConversationStore | None = None,
    backends: Backends | None = None,
    router: Router | None = None,
    checkpointer: object | None = None,
) -> CompiledStateGraph:
    """The compiled chat graph. Settings default to the environment; every dependency can be handed in.

    Nothing connects here: the memory store, the backends and any local stand-in start on first use.
    The services are reachable as `graph.services` (the UI and the CLI share them).
    """
    from graph.policies import default_router

    settings = settings or get_settings()
    if store is None:
        from graph.memory import make_store

        store = make_store(settings)
    backends = backends or Backends(settings)
    services = Services(
        settings=settings, store=store, backends=backends, router=router or default_router(settings, backends)
    )

    def io_node(name: str, sync: Callable[..., Any], asynchronous: Callable[..., Any]) -> RunnableCallable:
        # One node, two bodies: `invoke` runs the sync one, `ainvoke`/`astream` the async one. This is
        # what `add_node` itself builds for a plain function (LangGraph's RunnableCallable, untraced),
        # given both bodies; a sync-only node would be sent to a thread pool in async runs, and a
        # RunnableLambda re-inspects signatures and opens a callback run on every call (~1 ms a turn).
        return RunnableCallable(
            partial(sync, services=services), partial(asynchronous, services=services), name=name, trace=False
        )

    builder = StateGraph(State, context_schema=Context, input_schema=InputState, output_schema=OutputState)
    builder.add_node("load_history", io_node("load_history", nodes.load_history, nodes.aload_history))
    builder.add_node("route", io_node("route", nodes.route, nodes.aroute))
    builder.add_node("call_model", io_node("call_model", nodes.call_model, nodes.acall_model))
    builder.add_node("save_turn", io_node("save_turn", nodes.save_turn, nodes.asave_turn))
    builder.add_edge(START, "load_history")
    builder.add_edge("load_history", "route")
    builder.add_edge("route", "call_model")
    builder.add_edge("call_model", "save_turn")
    builder.add_edge("save_turn", END)
    graph = builder.compile(checkpointer=checkpointer, name="hybrid-chat")
    graph.services = services  # type: ignore[attr-defined]
    return graph
