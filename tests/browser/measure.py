"""Measure the browser chat as a user meets it: `python -m tests.browser.measure [--turns N]`.

Starts `hybrid-chat serve` (a subprocess, embedded defaults, temperature 0), opens the page in Debian's
Chromium and sends N messages. Prints JSON: process start to /healthz, page load to interactive, and per
turn the time from Send to the first token on screen next to the backend's own time to first token
(the answer's meta line, same turn), and to the final answer on screen; then the time from Stop to a
usable Send. The first turn also pays the
local stand-in's start (first use) and the client build; the backend's figure excludes those.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from playwright.sync_api import expect, sync_playwright

from tests.browser.conftest import CHROMIUM_ARGS
from tests.browser.test_chat_ui import INPUT, SEND, STOP, WATCH
from tests.support.server import free_port

QUESTIONS = ["What is the capital of France?", "And the capital of Germany?", "And of Italy?", "Thanks!"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument(
        "--model-threads",
        type=int,
        default=None,
        help="CPU threads of the embedded Gemma stand-in (default: the settings'); 1 leaves a core of a "
        "2-core machine to the page and the browser, as a model on its own GPU node does",
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hybrid-chat-measure-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRID_CHAT_")}
    env.update(
        {
            "GRADIO_ANALYTICS_ENABLED": "False",
            "HYBRID_CHAT_SQLITE_PATH": str(tmp / "chat.db"),
            "HYBRID_CHAT_TEMPERATURE": "0",
            "HYBRID_CHAT_MAX_TOKENS": "64",
        }
    )
    if args.model_threads:
        env["HYBRID_CHAT_LOCAL_MODEL_THREADS"] = str(args.model_threads)
    exe = str(Path(sys.executable).with_name("hybrid-chat"))
    out: dict[str, object] = {}
    with sync_playwright() as p, open(tmp / "serve.log", "w") as log:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        started = time.perf_counter()
        proc = subprocess.Popen([exe, "serve", "--port", str(port)], env=env, stdout=log, stderr=log)  # noqa: S603
        url = f"http://127.0.0.1:{port}"
        try:
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.05)
            out["process_start_to_healthz_s"] = round(time.perf_counter() - started, 2)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            loading = time.perf_counter()
            page.goto(url)
            expect(page.locator(INPUT)).to_be_enabled(timeout=30_000)
            expect(page.locator("#hc-health-box .hc-health")).to_be_visible()
            out["page_load_to_interactive_s"] = round(time.perf_counter() - loading, 2)
            out["process_start_to_usable_page_s"] = round(time.perf_counter() - started, 2)
            bots = page.locator("#hc-chatbot").get_by_test_id("bot")
            for i in range(args.turns):
                before = bots.count()
                page.locator(INPUT).fill(QUESTIONS[i % len(QUESTIONS)])
                page.evaluate(WATCH, before)
                page.locator(INPUT).press("Enter")
                meta = bots.nth(before).locator(".hc-meta")
                expect(meta).to_be_visible(timeout=60_000)
                expect(page.locator(INPUT)).to_be_enabled()
                hc = page.evaluate("window.__hc")
                backend = re.search(r"first token (\d+) ms", meta.inner_text())
                out[f"turn{i + 1}"] = {
                    "send_to_first_token_on_screen_ms": round(hc["first"]),
                    "first_token_drawn_by_the_page_itself": hc["early"],
                    "backend_ttft_ms": float(backend.group(1)) if backend else None,
                    "send_to_final_answer_on_screen_ms": round(hc["lens"][-1][0]),
                    "screen_updates": len(hc["lens"]),
                }
            # Stop: from the click to Send being usable again (a long answer, stopped while it streams).
            page.get_by_text("Generation settings").click()
            page.get_by_label("number input for Max tokens").fill("400")
            page.get_by_label("number input for Max tokens").press("Enter")
            before = bots.count()
            page.locator(INPUT).fill("Count from 1 to 300, one number per line.")
            page.locator(INPUT).press("Enter")
            stop = page.locator(STOP)
            expect(stop).to_be_visible(timeout=30_000)
            expect(bots.nth(before)).not_to_have_text("", timeout=60_000)
            stopping = time.perf_counter()
            try:
                stop.click(timeout=5_000)
            except PlaywrightTimeoutError:  # the small model ended its answer first: nothing to stop
                out["stop_to_usable_send_ms"] = None
            else:
                expect(page.locator(SEND)).to_be_visible()
                out["stop_to_usable_send_ms"] = round((time.perf_counter() - stopping) * 1000)
        finally:
            proc.terminate()
            proc.wait(30)
            browser.close()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
