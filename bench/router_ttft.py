"""Router and streaming figures on the embedded backends (issue 4).

- router decision time (the `auto` policy with signals, as the route node calls it);
- time to first token through the whole graph vs the same ChatOpenAI model called directly, interleaved
  in one run so machine noise hits both alike (ratio of medians);
- time from the Gemma backend dying to the first answer served by Gemini (refused connections, and a
  backend that hangs, bounded by the first-token timeout).

Run: .venv/bin/python -m bench.router_ttft [--turns 30]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import tempfile
import time
import timeit
from pathlib import Path

from graph import build_graph
from graph.backends import Backends, GenerationParams
from graph.context import Services
from graph.router import RouteRequest
from graph.settings import Settings


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 2 else max(values)


async def ttft_direct(model, prompt) -> float:
    start = time.perf_counter()
    async for chunk in model.astream(prompt):
        if chunk.content:
            return time.perf_counter() - start
    raise RuntimeError("no token")


async def ttft_graph(graph, text: str, session: str) -> float:
    start = time.perf_counter()
    payload = {"messages": [{"role": "user", "content": text}], "model": "gemma"}
    config = {"configurable": {"session_id": session}}
    async for chunk, meta in graph.astream(payload, config=config, stream_mode="messages"):
        if meta["langgraph_node"] == "call_model" and chunk.content:
            return time.perf_counter() - start
    raise RuntimeError("no token")


async def main(turns: int) -> None:
    tmp = Path(tempfile.mkdtemp())
    settings = Settings(_env_file=None, sqlite_path=tmp / "b.db", temperature=0.0, max_tokens=8)  # type: ignore[call-arg]
    backends = Backends(settings)
    services = Services.build(settings, backends=backends)
    graph = build_graph(services=services)
    router = services.router

    req = RouteRequest(
        "auto", prompt_tokens=500, max_tokens=512, new_conversation=False, signals=router.signals()
    )
    n = 20000
    per = timeit.timeit(
        lambda: router.decide(RouteRequest(**{**req.__dict__, "signals": router.signals()})), number=n
    )
    print(f"router decision (auto, with signals): {per / n * 1e6:.1f} us")

    model = await backends.amodel("gemma", GenerationParams(0.0, settings.top_p, 8))
    from langchain_core.messages import HumanMessage, SystemMessage

    await ttft_graph(graph, "warm up", "warm")
    direct, through = [], []
    for i in range(turns):  # interleaved; a new session each time so both send the same prompt size
        # Different numbers: llama.cpp caches prompts, and a repeated prompt would answer faster.
        text = f"Say a word about the number {2 * i}."
        direct.append(await ttft_direct(model, [SystemMessage(settings.system_prompt), HumanMessage(text)]))
        through.append(await ttft_graph(graph, f"Say a word about the number {2 * i + 1}.", f"s{i}"))
    md, mg = statistics.median(direct), statistics.median(through)
    print(f"TTFT direct ChatOpenAI: p50 {md * 1000:.1f} ms, p90 {pct(direct, 90) * 1000:.1f} ms  (n={turns})")
    print(f"TTFT through the graph: p50 {mg * 1000:.1f} ms, p90 {pct(through, 90) * 1000:.1f} ms")
    print(f"ratio graph/direct (p50): {mg / md:.3f}  (+{(mg - md) * 1000:.1f} ms)")

    from tests.support.fault_server import fault_server

    for mode in ("reset", "hang"):
        with fault_server("ok") as server:
            s2 = settings.model_copy(update={"gemma_base_url": server.base_url, "first_token_timeout_s": 2.0})
            b2 = Backends(s2, **backends.shared_standins())
            b2.warm()  # as the server does at start-up: the fallback's client is built already
            services2 = Services.build(s2, backends=b2)
            g2 = build_graph(services=services2)
            await g2.ainvoke(
                {"messages": [{"role": "user", "content": "hi"}], "model": "gemma"},
                {"configurable": {"session_id": "alive"}},
            )
            server.mode = mode
            start = time.perf_counter()
            out = await g2.ainvoke(
                {"messages": [{"role": "user", "content": "still there?"}], "model": "gemma"},
                {"configurable": {"session_id": "dead"}},
            )
            took = time.perf_counter() - start
            assert out["backend"] == "gemini", out
            print(
                f"gemma dies ({mode}) -> answer from gemini in {took * 1000:.0f} ms ({out['route_reason']})"
            )
            start = time.perf_counter()
            out = await g2.ainvoke(
                {"messages": [{"role": "user", "content": "and now?"}], "model": "gemma"},
                {"configurable": {"session_id": "dead2"}},
            )
            print(
                f"  next turn: {(time.perf_counter() - start) * 1000:.0f} ms "
                f"(circuit {services2.router.breakers['gemma'].state})"
            )
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=30)
    asyncio.run(main(ap.parse_args().turns))
