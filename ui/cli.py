"""The `hybrid-chat` command: `serve` (browser chat), `chat` (terminal), `ask` (one turn)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
import uuid
import warnings
from typing import Any

MODELS = ("gemma", "gemini", "auto")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hybrid-chat", description="Chat with Gemma (vLLM) and Gemini (Vertex AI)."
    )
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start the browser chat (Gradio in FastAPI)")
    serve.add_argument("--host", help="bind address (default: HYBRID_CHAT_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: HYBRID_CHAT_PORT or 7860)")

    for name, help_ in (("chat", "chat in the terminal"), ("ask", "ask one question, print the answer")):
        cmd = sub.add_parser(name, help=help_)
        if name == "ask":
            cmd.add_argument("question", help="the message to send")
        cmd.add_argument("--model", choices=MODELS, help="backend or routing policy (default: settings)")
        cmd.add_argument("--session", help="conversation id to continue (default: a new one)")
        cmd.add_argument("--user", help="user id (default: HYBRID_CHAT_USER_ID)")
        cmd.add_argument("--temperature", type=float)
        cmd.add_argument("--max-tokens", type=int)
        cmd.add_argument("--quiet", action="store_true", help="print only the answer")

    from evals.cli import register  # `hybrid-chat eval run|compare|report`

    register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*ChatVertexAI.*")
    from graph.settings import get_settings

    settings = get_settings()
    # The terminal commands print answers: only problems go to stderr there. `serve` logs at the setting.
    level = settings.log_level if args.command == "serve" else "ERROR"
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        return _serve(settings, args.host, args.port)
    if args.command == "eval":
        return int(args.handler(args))
    try:
        return asyncio.run(_chat(settings, args))
    except KeyboardInterrupt:
        return 130


def _serve(settings: Any, host: str | None, port: int | None) -> int:
    import uvicorn

    from ui.app import create_app

    settings = settings.model_copy(update={k: v for k, v in {"host": host, "port": port}.items() if v})
    print(f"hybrid-chat: http://{settings.host}:{settings.port}", file=sys.stderr, flush=True)
    app = create_app(settings)
    # Everything imported and built so far lives as long as the process: move it out of the collector's
    # reach, so full collections under load stop scanning it (they cost 70-250 ms pauses otherwise).
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    return 0


async def _turn(graph: Any, text: str, args: argparse.Namespace, session: str) -> dict[str, Any]:
    """Stream one turn to stdout; returns the final output state."""
    payload: dict[str, Any] = {"messages": [{"role": "user", "content": text}]}
    for key in ("model", "temperature", "max_tokens"):
        if getattr(args, key, None) is not None:
            payload[key] = getattr(args, key)
    config = {"configurable": {"session_id": session}}
    context = {"user_id": args.user} if args.user else None
    final: dict[str, Any] = {}
    streamed = False
    async for mode, data in graph.astream(
        payload, config=config, context=context, stream_mode=["messages", "values"]
    ):
        if mode == "messages":
            chunk, meta = data
            if (
                meta.get("langgraph_node") == "call_model"
                and isinstance(chunk.content, str)
                and chunk.content
            ):
                sys.stdout.write(chunk.content)
                sys.stdout.flush()
                streamed = True
        else:
            final = data
    if not streamed and final.get("messages"):
        sys.stdout.write(str(final["messages"][-1].content))
    sys.stdout.write("\n")
    sys.stdout.flush()
    return final


def _describe(final: dict[str, Any]) -> str:
    answer = final["messages"][-1] if final.get("messages") else None
    meta = (answer.response_metadata.get("hybrid_chat") if answer is not None else None) or {}
    parts = [meta.get("backend_label") or final.get("backend", "?"), final.get("route_reason", "")]
    if meta.get("ttft_ms") is not None:
        parts.append(f"first token {meta['ttft_ms']:.0f} ms")
    if meta.get("tokens_per_s"):
        parts.append(f"{meta['tokens_per_s']:.0f} tok/s")
    parts.append(f"session {final.get('session_id')}")
    return " | ".join(p for p in parts if p)


async def _chat(settings: Any, args: argparse.Namespace) -> int:
    from rich.console import Console

    from graph import build_graph

    err = Console(stderr=True, highlight=False)
    graph = build_graph(settings)
    session = args.session or uuid.uuid4().hex
    if args.command == "ask":
        try:
            final = await _turn(graph, args.question, args, session)
        except ValueError as exc:  # refused before any model call (InvalidInput): a usage error
            err.print(f"[red]error:[/red] {exc}")
            return 2
        if not args.quiet:
            err.print(f"[dim]{_describe(final)}[/dim]")
        if final.get("error"):
            err.print(f"[red]error:[/red] {final['error']}")
            return 1
        return 0
    err.print(f"[bold]hybrid-chat[/bold] session {session} (empty line or Ctrl-D to quit)")
    while True:
        try:
            text = await asyncio.to_thread(input, "> ")
        except EOFError:
            return 0
        if not text.strip():
            return 0
        try:
            final = await _turn(graph, text, args, session)
        except ValueError as exc:  # refused (empty, too long, invalid text): say why, keep chatting
            err.print(f"[red]not sent:[/red] {exc}")
            continue
        if not args.quiet:
            err.print(f"[dim]{_describe(final)}[/dim]")


if __name__ == "__main__":
    raise SystemExit(main())
