"""The `hybrid-chat` command: `serve` (browser chat), `chat` (terminal), `ask` (one turn), `keys` (API
keys for the OpenAI-compatible endpoint)."""

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

MODELS = ("gemma", "gemini", "auto", "learned")  # learned: with HYBRID_CHAT_ROUTER_FILE


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

    keys = sub.add_parser("keys", help="API keys for the OpenAI-compatible endpoint (/v1)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key for a user and print it (shown only once)")
    create.add_argument("--user", required=True, help="the user the key signs in as")
    create.add_argument("--name", default="", help="what the key is for (e.g. open-webui)")
    listing = keys_sub.add_parser("list", help="a user's keys (never the keys themselves)")
    listing.add_argument("--user", required=True)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its id (see `keys list`)")
    revoke.add_argument("id", help="the key's id (or its hck_<id>_ prefix)")

    from evals.cli import register  # `hybrid-chat eval run|compare|report`

    register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*ChatVertexAI.*")
    from graph.policies.learned import RouterFileError
    from graph.settings import get_settings

    settings = get_settings()
    try:
        return _run(args, settings)
    except RouterFileError as exc:  # a broken router file: one line saying which and why, no traceback
        print(f"hybrid-chat: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, settings: Any) -> int:
    # The terminal commands print answers: only problems go to stderr there. `serve` logs at the setting.
    level = settings.log_level if args.command == "serve" else "ERROR"
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        return _serve(settings, args.host, args.port)
    if args.command == "eval":
        return int(args.handler(args))
    if args.command == "keys":
        return asyncio.run(_keys(settings, args))
    try:
        return asyncio.run(_chat(settings, args))
    except KeyboardInterrupt:
        return 130


def _serve(settings: Any, host: str | None, port: int | None) -> int:
    import uvicorn

    from ui.header_timeout import with_header_timeout
    from ui.logs import install_server_logging
    from ui.server import create_app

    settings = settings.model_copy(update={k: v for k, v in {"host": host, "port": port}.items() if v})
    print(f"hybrid-chat: http://{settings.host}:{settings.port}", file=sys.stderr, flush=True)
    app = create_app(settings)
    # Everything imported and built so far lives as long as the process: move it out of the collector's
    # reach, so full collections under load stop scanning it (they cost 70-250 ms pauses otherwise).
    gc.collect()
    gc.freeze()
    install_server_logging()  # nothing a user typed in the log, one line for a failure anyone repeats
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        http=with_header_timeout(settings.header_timeout_s),  # stalled requests are closed
        # Once it stops listening, uvicorn waits this long for open connections, then cancels their
        # requests: the answers were stopped at the grace period, and a stream Gradio never ends (the
        # queue's, for a cut event) must not hold the exit. The saves and the stores' close come after
        # it either way (ui/shutdown.py).
        timeout_graceful_shutdown=settings.shutdown_grace_s + 5,
    )
    return 0


async def _keys(settings: Any, args: argparse.Namespace) -> int:
    """`keys create|list|revoke` on the key store beside the configured conversation store."""
    from rich.console import Console

    from graph.memory import MemoryUnavailable, make_store
    from graph.memory.keys import key_store
    from graph.validation import InvalidInput

    err = Console(stderr=True, highlight=False)
    store = make_store(settings)
    keys = key_store(store)
    try:
        if args.keys_command == "create":
            new = await keys.acreate(args.user, args.name)
            err.print(
                f"Created key {new.record.id} for {new.record.user_id}. Copy it now: it is not stored and "
                "cannot be shown again."
            )
            print(new.key, flush=True)  # stdout: the key alone, for scripts
        elif args.keys_command == "list":
            for k in await keys.alist(args.user):
                state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M} UTC" if k.revoked_at else "active"
                print(f"{k.id}  {k.prefix}…  {k.created_at:%Y-%m-%d %H:%M} UTC  {state}  {k.name}".rstrip())
        else:
            record = await keys.arevoke(args.id)
            if record is None:
                err.print(f"[red]error:[/red] no key with id {args.id[:40]!r}")
                return 1
            err.print(f"Revoked key {record.id} of {record.user_id}: it is refused from now on.")
    except InvalidInput as exc:
        err.print(f"[red]error:[/red] {exc}")
        return 2
    except MemoryUnavailable as exc:
        err.print(f"[red]error:[/red] the store is unreachable: {exc}")
        return 1
    finally:
        await keys.aclose()
        await store.aclose()
    return 0


async def _turn(client: Any, text: str, args: argparse.Namespace, session: str) -> Any:
    """Stream one turn to stdout through the one client; returns its `Done`."""
    from graph.client import Delta

    options = {k: getattr(args, k, None) for k in ("model", "temperature", "max_tokens")}
    user = args.user or client.settings.user_id
    shown = 0
    done: Any = None
    async for event in client.stream_turn(user, session, text, options):
        if isinstance(event, Delta):
            sys.stdout.write(event.text[shown:])
            sys.stdout.flush()
            shown = len(event.text)
        else:
            done = event
    if done.kind != "failed":
        sys.stdout.write(done.text[shown:] + "\n")
        sys.stdout.flush()
    return done


def _describe(done: Any, session: str) -> str:
    a = done.answer
    parts = [a.backend_label or a.backend or "?", a.route_reason or ""]
    if a.ttft_ms is not None:
        parts.append(f"first token {a.ttft_ms:.0f} ms")
    if a.tokens_per_s:
        parts.append(f"{a.tokens_per_s:.0f} tok/s")
    parts.append(f"session {session}")
    return " | ".join(p for p in parts if p)


async def _chat(settings: Any, args: argparse.Namespace) -> int:
    from rich.console import Console

    from graph.client import ChatClient

    err = Console(stderr=True, highlight=False)
    client = ChatClient.from_settings(settings)
    session = args.session or uuid.uuid4().hex
    interactive = args.command == "chat"
    if interactive:
        err.print(f"[bold]hybrid-chat[/bold] session {session} (empty line or Ctrl-D to quit)")
    while True:
        if interactive:
            try:
                text = await asyncio.to_thread(input, "> ")
            except EOFError:
                return 0
            if not text.strip():
                return 0
        else:
            text = args.question
        done = await _turn(client, text, args, session)
        if done.kind == "failed":  # refused before any model call (empty, too long, not yours, ...)
            err.print(f"[red]{'not sent' if interactive else 'error'}:[/red] {done.text}")
            if not interactive:
                return 2 if isinstance(done.error, ValueError) else 1
            continue
        if not args.quiet:
            err.print(f"[dim]{_describe(done, session)}[/dim]")
        if done.kind == "backend_error" or done.save_error:
            err.print(f"[red]error:[/red] {done.answer.error or done.save_error}")
            if not interactive:
                return 1
        if not interactive:
            return 0


if __name__ == "__main__":
    raise SystemExit(main())
