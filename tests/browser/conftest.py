"""Browser fixtures: Debian's Chromium driven by Playwright (never `playwright install`), one app per module.

The app runs in-process on the session's real local stand-ins (llama.cpp + the Vertex-shaped endpoint),
temperature 0 and short answers. Fallback is off so that a failing Gemma shows its error in the chat.
Screenshots and measured timings go to .pytest_cache/browser/.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from graph.backends import Backends
from graph.client import ChatClient
from tests.browser.appserver import SwitchableBackends, serve_app
from tests.conftest import local_settings

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
expect.set_options(timeout=30_000)  # a cold first Gemini call imports ChatVertexAI (~3 s on 2 cores)
ARTIFACTS = Path(__file__).resolve().parents[2] / ".pytest_cache" / "browser"
MEASUREMENTS: dict[str, Any] = {}


@pytest.fixture(scope="session")
def artifacts() -> Iterator[Path]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield ARTIFACTS
    if MEASUREMENTS:
        (ARTIFACTS / "measurements.json").write_text(json.dumps(MEASUREMENTS, indent=2) + "\n")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    with sync_playwright() as p:
        started = time.perf_counter()
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        MEASUREMENTS["browser_launch_s"] = round(time.perf_counter() - started, 2)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def app_env(
    tmp_path_factory: pytest.TempPathFactory, local_backends: Backends
) -> Iterator[tuple[str, SwitchableBackends]]:
    from ui.server import create_app

    settings = local_settings(
        tmp_path_factory.mktemp("browser"), fallback_enabled=False, rate_limit_per_minute=0
    )
    backends = SwitchableBackends(settings, **local_backends.shared_standins())
    started = time.perf_counter()
    app = create_app(settings, client=ChatClient.from_settings(settings, backends=backends))
    with serve_app(app) as url:
        MEASUREMENTS["app_start_s"] = round(time.perf_counter() - started, 2)
        yield url, backends


@pytest.fixture
def page(browser: Any, app_env: tuple[str, SwitchableBackends]) -> Iterator[Any]:
    """A fresh browser context (a new Gradio session) on the chat page, ready for input."""
    url, _ = app_env
    context = browser.new_context(
        viewport={"width": 1280, "height": 800}, permissions=["clipboard-read", "clipboard-write"]
    )
    page = context.new_page()
    page.set_default_timeout(20_000)
    started = time.perf_counter()
    page.goto(url)
    page.locator("#hc-input textarea").wait_for()
    MEASUREMENTS.setdefault("page_ready_s", []).append(round(time.perf_counter() - started, 2))
    yield page
    context.close()
