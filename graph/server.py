"""Entry point for the LangGraph CLI server (`langgraph dev`, see langgraph.json).

There the input is just `{"messages": [...]}` and the thread id stands in for the session id.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from graph.graph import build_graph


@cache
def _graph() -> Any:
    return build_graph()


def make_graph(config: Any = None) -> Any:
    """The server calls this factory per run: hand out one graph, so backends and stores are shared."""
    return _graph()
