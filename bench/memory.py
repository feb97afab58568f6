"""Memory figures (issues 3 and 8): cost per turn, and history loads versus conversation length.

For SQLite (a file in a temp dir) and the real Cloud Firestore emulator:
- append one turn (question + answer) then read the prompt window, p50/p95, on a 40-message conversation;
- the prompt window (40 messages) and the UI's first page (50 messages) of conversations of 100, 1,000
  and 5,000 turns (each turn = 2 messages), p50 of repeated loads, and the rows/documents read.

Run: .venv/bin/python -m bench.memory [--sizes 100,1000,5000] [--stores sqlite,firestore]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path

from langchain_core.messages import AIMessage, HumanMessage

from bench.common import pct


def turn(i: int) -> list:
    return [
        HumanMessage(f"Question {i}: what about the item number {i} in the list we discussed?"),
        AIMessage(f"Answer {i}: the item number {i} is fine, and here is a sentence of detail about it."),
    ]


async def seed(history, turns: int) -> None:
    batch: list = []
    for i in range(turns):
        batch.extend(turn(i))
        if len(batch) >= 200:
            await history.aadd_messages(batch)
            batch = []
    if batch:
        await history.aadd_messages(batch)


async def timed(fn, n: int) -> tuple[float, float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - t0)
    return pct(samples, 50) * 1000, pct(samples, 95) * 1000


async def bench_store(name: str, store, sizes: list[int], reps: int) -> None:
    h = store.history("per-turn", "u")
    await seed(h, 20)
    i = [1000]

    async def append_and_window() -> None:
        i[0] += 1
        await h.aadd_messages(turn(i[0]))
        await h.aget_window(max_messages=40, max_tokens=6000)

    p50, p95 = await timed(append_and_window, reps)
    print(f"{name:<10} append turn + window(40): p50 {p50:.2f} ms, p95 {p95:.2f} ms")
    for size in sizes:
        hs = store.history(f"conv-{size}", "u")
        t0 = time.perf_counter()
        await seed(hs, size)
        seeded = time.perf_counter() - t0
        stats = getattr(store, "stats", None)
        before = stats.docs_read if stats else 0
        w50, _ = await timed(lambda hs=hs: hs.aget_window(max_messages=40, max_tokens=6000), reps)
        reads = ((stats.docs_read - before) / reps) if stats else float("nan")
        p_50, _ = await timed(lambda hs=hs: hs.aget_page(limit=50), reps)
        print(
            f"{name:<10} {size:>5} turns: window(40) p50 {w50:.2f} ms ({reads:.0f} read/load), "
            f"first page(50) p50 {p_50:.2f} ms   [seeded in {seeded:.1f} s]"
        )


async def main(sizes: list[int], stores: list[str], reps: int) -> None:
    if "sqlite" in stores:
        from graph.memory.sqlite import SQLiteConversationStore

        with tempfile.TemporaryDirectory() as tmp:
            await bench_store("sqlite", SQLiteConversationStore(Path(tmp) / "b.db"), sizes, reps)
    if "firestore" in stores:
        from graph.memory.firestore import FirestoreConversationStore
        from tests.support.firestore_emulator import firestore_emulator

        with firestore_emulator() as emu:
            store = FirestoreConversationStore(project=emu.project, database="chat-app-db")
            with contextlib.suppress(Exception):
                await bench_store("firestore", store, sizes, max(10, reps // 5))
            await store.aclose()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100,1000,5000")
    ap.add_argument("--stores", default="sqlite,firestore")
    ap.add_argument("--reps", type=int, default=100)
    a = ap.parse_args()
    asyncio.run(main([int(x) for x in a.sizes.split(",")], a.stores.split(","), a.reps))
