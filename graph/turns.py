"""Turns in flight in this process: the question's save started by `prepare`, the answer's save started
by `call_model` as the answer ends, and the stopped turns' background saves.

`prepare` saves the turn's question at once, in the background (the model is asked meanwhile: a crash
mid-answer keeps the question, and the first token does not wait for the write); `save_turn` awaits that
save before saving the answer. `save_turn` also learns here whether its turn was prepared by this very
run: it was not when LangGraph resumed the run from a checkpoint after `prepare` (regenerate), and
memory must then be cut back before the new answer is saved. A turn is named by its (last) question's
message id.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any

MAX_TURNS = 10_000  # turns that never reach their save (a crash mid-node) must not pile up


class Turns:
    def __init__(self) -> None:
        self._open: OrderedDict[str, asyncio.Task[Any]] = OrderedDict()
        self._background: set[asyncio.Task[Any]] = set()
        self._saves: OrderedDict[str, asyncio.Task[Any]] = OrderedDict()
        self._stopped: OrderedDict[str, asyncio.Future[None]] = OrderedDict()

    def begin(self, key: str, question_saved: Awaitable[Any]) -> None:
        """The turn `key` starts; `question_saved` saves its question (run as a task at once)."""
        task = asyncio.ensure_future(question_saved)
        self.keep(task)
        self._open[key] = task
        while len(self._open) > MAX_TURNS:
            self._open.popitem(last=False)

    async def end(self, key: str) -> bool:
        """True when this process prepared the turn `key` and had not ended it yet; waits for its
        question's save first (a failed one is redone by the answer's save, which re-adds the question)."""
        task = self._open.pop(key, None)
        if task is None:
            return False
        with contextlib.suppress(Exception):
            await task
        return True

    def start_save(self, key: str, turn_saved: Awaitable[Any]) -> None:
        """The turn `key`'s answer is complete: its save starts now (a task, kept until done), before
        the run reaches `save_turn`, which takes it (`take_save`) and awaits it."""
        task = asyncio.ensure_future(turn_saved)
        self.keep(task)
        self._saves[key] = task
        while len(self._saves) > MAX_TURNS:
            self._saves.popitem(last=False)

    def take_save(self, key: str) -> asyncio.Task[Any] | None:
        return self._saves.pop(key, None)

    def stopped_save(self, key: str) -> asyncio.Future[None]:
        """Done once the stopped turn `key`'s save has ended (stored or failed). Made by whichever comes
        first, the save or someone waiting for it: a Stop can return before the cancelled node has even
        started its save."""
        done = self._stopped.get(key)
        if done is None:
            done = self._stopped[key] = asyncio.get_running_loop().create_future()
            while len(self._stopped) > MAX_TURNS:
                self._stopped.popitem(last=False)
        return done

    async def stopped(self, key: str, limit_s: float) -> bool:
        """Wait (at most `limit_s`) for the stopped turn `key`'s save; False when it did not end in time."""
        try:
            await asyncio.wait_for(asyncio.shield(self.stopped_save(key)), limit_s)
            return True
        except TimeoutError:
            return False
        finally:
            self._stopped.pop(key, None)

    async def pending_stop(self, key: str, limit_s: float) -> None:
        """If the stopped turn `key`'s save is under way, wait for it (at most `limit_s`)."""
        if key in self._stopped:
            await self.stopped(key, limit_s)

    def keep(self, task: asyncio.Task[Any]) -> None:
        """Holds a background save until it is done (the loop keeps only weak references)."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def settle(self, limit_s: float = 3.0) -> None:
        """Wait (at most `limit_s`) for the background saves."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=limit_s)
