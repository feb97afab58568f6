"""Turns in flight in this process: which prepared turn is still to be saved, and the stopped turns'
background saves.

`save_turn` asks whether its turn was prepared by this very run. It was not when LangGraph resumed the
run from a checkpoint after `prepare` (regenerate): the turn was saved once already, and memory must be
cut back before its new answer is saved. A turn is named by its (last) question's message id.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

MAX_TURNS = 10_000  # turns that never reach their save (a crash mid-node) must not pile up


class Turns:
    def __init__(self) -> None:
        self._open: OrderedDict[str, int] = OrderedDict()
        self._background: set[asyncio.Task[Any]] = set()

    def begin(self, key: str) -> None:
        self._open[key] = self._open.get(key, 0) + 1
        while len(self._open) > MAX_TURNS:
            self._open.popitem(last=False)

    def end(self, key: str) -> bool:
        """True when this process prepared the turn `key` and had not saved it yet."""
        count = self._open.pop(key, 0)
        if count > 1:
            self._open[key] = count - 1
        return count > 0

    def keep(self, task: asyncio.Task[Any]) -> None:
        """Holds a background save until it is done (the loop keeps only weak references)."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def settle(self, limit_s: float = 3.0) -> None:
        """Wait (at most `limit_s`) for the background saves of stopped turns."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=limit_s)
