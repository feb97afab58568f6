"""Images cannot exhaust the server's memory: a running `hybrid-chat serve`, its resident memory (RSS)
sampled from /proc while signed-in messages full of large, well-compressed images arrive at once.

The probe: ten `POST /api/chat` requests, each with four 6300x6300 PNGs of about 130 KB (a few MB sent
in all, within the rate limit), which once took a server from about 1 GB to a 2.6 GB peak and left it at
2.1 GB. Beside it, messages the limits accept whose images are at the largest size one takes (each one
decoded), so the bound is also shown for what is decoded, not only for what is refused from its header.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw

from graph.settings import Settings
from tests.support.fault_server import fault_server
from tests.support.server import running_server

USER, PASSWORD = "prober", "pw-image-memory-7Qx"  # a throwaway password of a local test server
MB = 1024 * 1024
ALLOWED_GROWTH = 100 * MB  # over the idle server's RSS, at the peak and after
LARGEST_SIDE = 4096  # the largest image accepted by default; two fit in one message


def png(width: int, height: int, accent: tuple[int, int, int]) -> bytes:
    """A mostly uniform RGB PNG: a few hundred KB on the wire, width x height pixels once decoded."""
    img = Image.new("RGB", (width, height), (240, 240, 240))
    ImageDraw.Draw(img).rectangle((100, 100, 600, 400), fill=accent)
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (the peak since the last reset) of `pid`, in bytes."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time `pid` has used (/proc/<pid>/stat, clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def settled(pid: int, within_s: float = 90.0) -> int:
    """The RSS of `pid` once it is idle: under 0.1 s of CPU and 2 MB of change over a second (the server
    goes on loading the graph and its models for seconds after its page answers)."""
    deadline = time.monotonic() + within_s
    before, cpu = proc_status(pid)["VmRSS"], cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now, cpu_now = proc_status(pid)["VmRSS"], cpu_seconds(pid)
        if abs(now - before) < 2 * MB and cpu_now - cpu < 0.1:
            return now
        before, cpu = now, cpu_now
    raise TimeoutError(f"the server did not settle within {within_s} s")


class RssSampler:
    """The highest RSS of a process seen while it runs, read every few milliseconds in a thread (VmHWM
    catches what falls between two readings)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, proc_status(self.pid)["VmRSS"])
            self._stop.wait(0.005)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A server of its own (the shared one carries other tests' memory): password sign-in, SQLite,
    Gemma on a fault server that takes images (so no local model is loaded)."""
    tmp = tmp_path_factory.mktemp("image-memory")
    with fault_server("ok") as fault:
        env = {
            "HYBRID_CHAT_SQLITE_PATH": str(tmp / "chat.db"),
            "HYBRID_CHAT_GEMMA_BASE_URL": fault.base_url,
            "HYBRID_CHAT_GEMMA_ATTACHMENTS": "image",
            "HYBRID_CHAT_MAX_TOKENS": "4",
            "HYBRID_CHAT_LOCAL_MODEL_THREADS": "1",
            "HYBRID_CHAT_RATE_LIMIT_PER_MINUTE": "100",
            "HYBRID_CHAT_AUTH_USERS": f"{USER}:{PASSWORD}",
            "GRADIO_TEMP_DIR": str(tmp / "gradio"),
        }
        with running_server(env, tmp / "serve.log") as (url, _, pid):
            yield {"url": url, "pid": pid, "log": tmp / "serve.log"}


async def send(client: httpx.AsyncClient, images: list[bytes]) -> httpx.Response:
    body = {
        "message": "What is this?",
        "model": "gemma",
        "attachments": [{"data": b64(d), "name": f"shot{i}.png"} for i, d in enumerate(images)],
    }
    return await client.post("/api/chat", json=body)


def answered(r: httpx.Response) -> bool:
    return r.status_code == 200 and '"kind": "answer"' in r.text


async def test_large_images_keep_the_server_within_its_memory(server: dict[str, Any]) -> None:
    """The probe, a message over its pixel budget and messages at the largest accepted size, all at once:
    the server's RSS stays within 100 MB of idle at its peak and after; every message over a limit is
    refused in words (the limit, and what to send instead), the accepted ones are answered, and a
    normal image still works after."""
    pid = server["pid"]
    probe = [png(6300, 6300, (200, 30 * i, 30)) for i in range(4)]  # 39.7 MP each
    largest = [png(LARGEST_SIDE, LARGEST_SIDE, (30, 30 * i, 200)) for i in range(2)]  # each one decoded
    small = png(64, 48, (10, 120, 10))

    async with httpx.AsyncClient(
        base_url=server["url"], auth=(USER, PASSWORD), timeout=httpx.Timeout(120, connect=5)
    ) as client:
        warm = await send(client, [small])  # the image code is imported and warm before idle is read
        assert answered(warm), warm.text
        idle = await asyncio.to_thread(settled, pid)
        hwm_reset = reset_peak(pid)
        cpu_before = cpu_seconds(pid)
        with RssSampler(pid) as sampler:
            started = time.perf_counter()
            responses = await asyncio.gather(
                *[send(client, probe) for _ in range(10)],
                send(client, largest * 2),  # each image within its limit, the four over the message's
                *[send(client, largest) for _ in range(3)],
            )
            took = time.perf_counter() - started
            after = await asyncio.to_thread(settled, pid)  # the turns' tails (saving, streams) are done
        cpu = cpu_seconds(pid) - cpu_before
        peak = max(sampler.peak, proc_status(pid)["VmHWM"] if hwm_reset else 0)
        after_small = await send(client, [small])

    figures = (
        f"idle {idle / MB:.0f} MB, peak {peak / MB:.0f} MB (+{(peak - idle) / MB:.0f}), after "
        f"{after / MB:.0f} MB (+{(after - idle) / MB:.0f}), server CPU {cpu:.1f} s, {took:.1f} s"
    )
    print(f"\nimage memory probe: {figures}")
    assert peak - idle <= ALLOWED_GROWTH, figures
    assert after - idle <= ALLOWED_GROWTH, figures
    for r in responses[:10]:
        assert r.status_code == 400, (r.status_code, r.text[:300])
        said = r.json()["detail"]
        assert "6300x6300 pixels" in said and "the limit is" in said and "smaller" in said, said
    over_budget = responses[10]
    assert over_budget.status_code == 400, (over_budget.status_code, over_budget.text[:300])
    said = over_budget.json()["detail"]
    assert "67,108,864 pixels together; the limit is" in said and "send fewer or smaller images" in said, said
    for r in responses[11:]:
        assert answered(r), (r.status_code, r.text[:300])
    assert answered(after_small), after_small.text
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert LARGEST_SIDE**2 == defaults.attachment_max_pixels
    assert 2 * LARGEST_SIDE**2 <= defaults.attachment_max_message_pixels
    assert "Traceback" not in server["log"].read_text()
