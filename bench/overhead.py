"""Overhead per turn of the chat path over the bare openai SDK, against an instant stub (issue 8).

Every variant calls the same stub (its own process), one call at a time, interleaved round by round so
machine noise hits all alike. Reported: p50/p99 latency, the median added over the SDK baseline of the
same wire mode, and CPU per turn (this process only; the stub runs elsewhere).

  sdk            AsyncOpenAI chat.completions.create(stream=True), chunks consumed
  chatopenai     ChatOpenAI.astream (what our gemma backend does)
  graph          build_graph(...).ainvoke: prepare -> call model -> save (memory excluded)
  litellm        litellm.Router.acompletion(stream=True), chunks consumed (in-process router)

Run: .venv/bin/python -m bench.overhead [--rounds 400] [--no-freeze]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import time
from collections.abc import Awaitable, Callable

from bench.common import NullStore, pct, stub_server

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost-map download


async def main(rounds: int, freeze: bool) -> dict[str, dict[str, float]]:
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI
    from openai import AsyncOpenAI

    from graph import build_graph
    from graph.settings import Settings

    with stub_server() as base_url:
        messages = [{"role": "user", "content": "Hello"}]
        sdk = AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
        settings = Settings(_env_file=None, gemma_base_url=base_url, max_tokens=16)  # type: ignore[call-arg]
        from graph.backends import GenerationParams
        from graph.context import Services

        services = Services.build(settings, store=NullStore())
        graph = build_graph(services=services)
        lc = services.backends.model("gemma", GenerationParams(settings.temperature, settings.top_p, 16))
        assert isinstance(lc, ChatOpenAI)
        variants: dict[str, Callable[[int], Awaitable[object]]] = {}

        async def run_sdk(i: int) -> None:
            stream = await sdk.chat.completions.create(
                model="stub",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                max_tokens=16,
            )
            async for _ in stream:
                pass

        async def run_lc(i: int) -> None:
            async for _ in lc.astream([HumanMessage("Hello")]):
                pass

        async def run_graph(i: int) -> None:
            out = await graph.ainvoke(
                {"messages": [{"role": "user", "content": "Hello"}], "model": "gemma"},
                {"configurable": {"session_id": f"s{i}"}},
            )
            assert out["messages"][-1].content == "Hello from the stub.", out

        variants = {"sdk": run_sdk, "chatopenai": run_lc, "graph": run_graph}
        try:
            import litellm

            router = litellm.Router(
                model_list=[
                    {
                        "model_name": "gemma",
                        "litellm_params": {"model": "openai/stub", "api_base": base_url, "api_key": "x"},
                    }
                ],
                num_retries=0,
            )

            async def run_litellm(i: int) -> None:
                resp = await router.acompletion(model="gemma", messages=messages, stream=True, max_tokens=16)
                async for _ in resp:
                    pass

            variants["litellm"] = run_litellm
        except ImportError:
            print("litellm not installed: `pip install 'hybrid-chat[bench]'` to compare")

        for fn in variants.values():  # warm up: imports, connection pools, caches
            for i in range(20):
                await fn(i)
        if freeze:
            gc.collect()
            gc.freeze()
        wall: dict[str, list[float]] = {n: [] for n in variants}
        cpu: dict[str, float] = dict.fromkeys(variants, 0.0)
        order = list(variants)
        for r in range(rounds):
            random.shuffle(order)
            for name in order:
                c0, t0 = time.process_time(), time.perf_counter()
                await variants[name](r)
                wall[name].append(time.perf_counter() - t0)
                cpu[name] += time.process_time() - c0
        base = wall["sdk"]
        results: dict[str, dict[str, float]] = {}
        print(
            f"{'variant':<12}{'p50 ms':>9}{'p99 ms':>9}{'added p50':>11}{'added p99':>11}{'CPU ms/turn':>13}"
        )
        for name in variants:
            w = wall[name]
            row = {
                "p50": pct(w, 50) * 1000,
                "p99": pct(w, 99) * 1000,
                "added_p50": (pct(w, 50) - pct(base, 50)) * 1000,
                "added_p99": (pct(w, 99) - pct(base, 99)) * 1000,
                "cpu": cpu[name] / rounds * 1000,
            }
            results[name] = row
            print(
                f"{name:<12}{row['p50']:>9.2f}{row['p99']:>9.2f}{row['added_p50']:>11.2f}"
                f"{row['added_p99']:>11.2f}{row['cpu']:>13.2f}"
            )
        return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=400)
    ap.add_argument("--no-freeze", action="store_true", help="skip gc.freeze() after warm-up")
    args = ap.parse_args()
    asyncio.run(main(args.rounds, not args.no_freeze))
