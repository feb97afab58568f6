"""The ASGI app: the Gradio chat mounted in FastAPI, beside /healthz and /readyz.

This is the walking skeleton's chat: streaming answers, a model choice, one conversation per page
load. The full front end (conversations, sign-in, controls) grows from here.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import gradio as gr
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from graph.settings import Settings

log = logging.getLogger(__name__)

MODEL_CHOICES = [("Gemma 3 12B (in-cluster)", "gemma"), ("Gemini 2.5 Flash", "gemini"), ("Auto", "auto")]


def build_blocks(graph: Any, settings: Settings) -> gr.Blocks:
    """The chat page. `graph` is a compiled graph from `graph.build_graph`."""

    async def respond(message: str, history: list, model: str, session_id: str) -> AsyncIterator[str]:
        text = ""
        payload = {"messages": [{"role": "user", "content": message}], "model": model}
        config = {"configurable": {"session_id": session_id}}
        async for chunk, meta in graph.astream(payload, config=config, stream_mode="messages"):
            if meta.get("langgraph_node") != "call_model" or not isinstance(chunk.content, str):
                continue
            if chunk.content:
                text += chunk.content
                yield text
        if not text:
            yield "(no answer)"

    with gr.Blocks(title="hybrid-chat") as blocks:
        gr.Markdown("## hybrid-chat")
        session = gr.State(lambda: uuid.uuid4().hex)
        model = gr.Dropdown(MODEL_CHOICES, value=settings.default_model, label="Model")
        gr.ChatInterface(respond, additional_inputs=[model, session], api_name="chat")
    return blocks


def create_app(settings: Settings | None = None, graph: Any = None) -> FastAPI:
    from graph import build_graph
    from graph.settings import get_settings

    settings = settings or get_settings()
    graph = graph or build_graph(settings)
    services = graph.services
    app = FastAPI(title="hybrid-chat", docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        try:
            await services.store.aping()
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "memory": str(exc)}, status_code=503)
        return JSONResponse({"status": "ok"})

    return gr.mount_gradio_app(app, build_blocks(graph, settings), path="")
