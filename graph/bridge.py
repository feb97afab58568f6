"""The one bridge from sync callers to the async core.

The graph's nodes and the stores are async (the server runs them in its event loop). Sync callers
(`graph.invoke`, a notebook, `FirestoreChatMessageHistory.messages`) reach the same code through this
module instead of a sync copy of it: the coroutine runs on one background event loop owned by the
process, and the caller's thread waits for its result. This is how langgraph's `AsyncSqliteSaver`
serves its sync methods (`asyncio.run_coroutine_threadsafe(coro, loop).result()`).

A client bound to an event loop (Firestore's `AsyncClient`, an `httpx.AsyncClient`) must therefore be
created per loop: the bridge's loop is one loop among others.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def bridge_loop() -> asyncio.AbstractEventLoop:
    """The background loop (started on first use, a daemon thread: it never keeps the process alive)."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="hybrid-chat-bridge", daemon=True).start()
            _loop = loop
        return _loop


def _check_caller(loop: asyncio.AbstractEventLoop) -> None:
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        return
    if running is loop:  # waiting here for work queued behind us would never end
        raise asyncio.InvalidStateError("a sync call from the bridge's own event loop: use the async API")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion on the bridge's loop and return its result (or raise its exception)."""
    loop = bridge_loop()
    try:
        _check_caller(loop)
    except asyncio.InvalidStateError:
        coro.close()
        raise
    return asyncio.run_coroutine_threadsafe(coro, loop).result()


def iterate_sync(agen: AsyncIterator[T]) -> Iterator[T]:
    """Iterate an async iterator from sync code, one item at a time (streaming stays streaming).

    Closing the returned iterator early (a `break`, an exception in the caller) closes `agen` on the
    bridge's loop, so whatever it holds (a backend's HTTP request) is released."""
    loop = bridge_loop()
    _check_caller(loop)
    done = object()

    async def next_item() -> Any:
        try:
            return await anext(agen)
        except StopAsyncIteration:
            return done

    try:
        while True:
            item = asyncio.run_coroutine_threadsafe(next_item(), loop).result()
            if item is done:
                return
            yield item
    finally:
        aclose = getattr(agen, "aclose", None)
        if aclose is not None:
            asyncio.run_coroutine_threadsafe(aclose(), loop).result()
