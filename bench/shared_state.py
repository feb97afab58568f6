"""What the shared store (ui/shared.py) adds to a turn: Valkey/Redis (a local `redis-server`) against the
in-process state, side by side.

1. The store's own part: what a page turn asks of it before the turn can start (the rate limit's token
   bucket and the turn's claim), `--rounds` times, LocalState and RedisState interleaved call by call.
2. Through the server: two `hybrid-chat serve` processes against the instant stub, one with
   `HYBRID_CHAT_REDIS_URL` and one without (both with a rate limit high enough never to refuse), one
   `POST /api/chat` turn to each alternately, `--turns` times; p50 and p99 of the whole turn and their
   ratios (Redis / in-process). A third server without the store runs in the same rounds as the
   baseline's baseline (in-process / in-process): the noise the ratios sit in.

Run: .venv/bin/python -m bench.shared_state [--rounds 2000] [--turns 300]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from bench.common import free_port, pct, stub_server
from bench.serve_load import Server, turn_api
from ui.limits import RateLimiter
from ui.live import LiveTurns
from ui.shared import LocalState, RedisState


def start_redis(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    log = open(work / "redis.log", "w")
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
    time.sleep(0.3)
    return proc, f"redis://127.0.0.1:{port}/0"


def summary(name: str, values: list[float], unit: float, label: str) -> tuple[float, float]:
    p50, p99 = pct(values, 50) * unit, pct(values, 99) * unit
    print(f"  {name:<28} p50 {p50:8.3f} {label}   p99 {p99:8.3f} {label}")
    return p50, p99


async def store_part(url: str, rounds: int) -> None:
    """1: the rate limit's bucket and the turn's claim, per turn, in each state."""
    redis = RedisState(url)
    states = {"in-process": LocalState(), "redis-server": redis}
    limiters = {name: RateLimiter(10**9, state=s) for name, s in states.items()}
    turns = {name: LiveTurns(s) for name, s in states.items()}
    for turn_registry in turns.values():
        turn_registry.state.shared = True  # the claim as several replicas make it, in both states
    took: dict[str, list[float]] = {name: [] for name in states}
    for i in range(rounds + 50):
        order = list(states)
        random.shuffle(order)
        for name in order:
            t0 = time.perf_counter()
            await limiters[name].acquire(f"user{i % 50}")
            await turns[name].claim(f"user{i % 50}", uuid.uuid4().hex)
            if i >= 50:  # warm-up rounds left out
                took[name].append(time.perf_counter() - t0)
    print(f"1. the store's part of a turn (rate limit + claim), {rounds} rounds, interleaved:")
    base = summary("in-process", took["in-process"], 1e3, "ms")
    shared = summary("redis-server (local)", took["redis-server"], 1e3, "ms")
    print(f"  added by redis: p50 {shared[0] - base[0]:.3f} ms, p99 {shared[1] - base[1]:.3f} ms")
    await redis.aclose()


async def server_part(url: str, turns: int) -> None:
    """2: whole turns through `POST /api/chat`, servers with and without the store, interleaved."""
    with stub_server() as stub:
        common = {"HYBRID_CHAT_GEMMA_BASE_URL": stub, "HYBRID_CHAT_RATE_LIMIT_PER_MINUTE": "1000000"}
        servers = {
            "in-process": Server(common, timeout_s=300),
            "in-process (again)": Server(common, timeout_s=300),
            "redis-server": Server({**common, "HYBRID_CHAT_REDIS_URL": url}, timeout_s=300),
        }
        took: dict[str, list[float]] = {name: [] for name in servers}
        try:
            async with httpx.AsyncClient(timeout=60) as client:
                for server in servers.values():
                    for k in range(10):
                        await turn_api(client, server.url, f"warm up {k}", f"warm-{uuid.uuid4().hex[:8]}")
                for i in range(turns):
                    order = list(servers)
                    random.shuffle(order)
                    for name in order:
                        _first, total, _ = await turn_api(
                            client, servers[name].url, f"turn {i}", f"s-{uuid.uuid4().hex[:12]}"
                        )
                        took[name].append(total)
        finally:
            for server in servers.values():
                server.stop()
    print(f"2. a whole /api/chat turn against the instant stub, {turns} turns per server, interleaved:")
    results = {name: summary(name, values, 1e3, "ms") for name, values in took.items()}
    base = results["in-process"]
    for name in ("in-process (again)", "redis-server"):
        p50, p99 = results[name]
        print(f"  {name} / in-process: p50 x{p50 / base[0]:.3f}, p99 x{p99 / base[1]:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--turns", type=int, default=300)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    proc, url = start_redis(work)
    try:
        asyncio.run(store_part(url, args.rounds))
        if args.turns:
            asyncio.run(server_part(url, args.turns))
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
