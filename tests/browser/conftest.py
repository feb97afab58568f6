"""Browser fixtures: Debian's Chromium driven by Playwright (never `playwright install`), one app per module.

The app runs in-process on the session's real local stand-ins (llama.cpp + the Vertex-shaped endpoint),
temperature 0 and short answers. Fallback is off so that a failing Gemma shows its error in the chat.
A test of the page runs as the local user; parametrized with PAGE_MODES it also runs signed in (on one
signed-in app for the whole run).
Screenshots and measured timings go to .pytest_cache/browser/.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect
from pydantic import SecretStr

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
SIGNED_IN = ("alice", "alices-pw")  # the user of `signed_in_env`
# For a test of the page that must hold for a named user as well as for the local user.
PAGE_MODES = ["local", "signed-in"]


@pytest.fixture(scope="session")
def artifacts() -> Iterator[Path]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield ARTIFACTS
    if MEASUREMENTS:
        # One file per pytest-xdist worker (`make test` runs two): neither overwrites the other's.
        worker = os.environ.get("PYTEST_XDIST_WORKER")
        name = f"measurements-{worker}.json" if worker else "measurements.json"
        (ARTIFACTS / name).write_text(json.dumps(MEASUREMENTS, indent=2) + "\n")


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


@contextlib.contextmanager
def _served_app(
    tmp_path: Path, local_backends: Backends, **overrides: Any
) -> Iterator[tuple[str, SwitchableBackends]]:
    """The app on the shared stand-ins, fallback off and no rate limit; `overrides`: more settings."""
    from ui.server import create_app

    settings = local_settings(tmp_path, fallback_enabled=False, rate_limit_per_minute=0, **overrides)
    backends = SwitchableBackends(settings, **local_backends.shared_standins())
    started = time.perf_counter()
    app = create_app(settings, client=ChatClient.from_settings(settings, backends=backends))
    with serve_app(app) as url:
        MEASUREMENTS["app_start_s"] = round(time.perf_counter() - started, 2)
        yield url, backends


@pytest.fixture(scope="module")
def app_env(
    tmp_path_factory: pytest.TempPathFactory, local_backends: Backends
) -> Iterator[tuple[str, SwitchableBackends]]:
    """The app as `hybrid-chat run` serves it: no sign-in, everyone is the local user."""
    with _served_app(tmp_path_factory.mktemp("browser"), local_backends) as env:
        yield env


@pytest.fixture(scope="session")
def signed_in_env(
    tmp_path_factory: pytest.TempPathFactory, local_backends: Backends
) -> Iterator[tuple[str, SwitchableBackends]]:
    """The same app behind a user name and password: what depends on the user runs for a named one
    (the local user is everyone, so a handler that lost the request passes there unnoticed). One for
    the whole run: each test opens a new conversation, and an app's start costs seconds."""
    user, password = SIGNED_IN
    with _served_app(
        tmp_path_factory.mktemp("signed-in"), local_backends, auth_users=SecretStr(f"{user}:{password}")
    ) as env:
        yield env


def sign_in(page: Any, user: str, password: str) -> None:
    """Fill and send the sign-in form, as a person does."""
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context (a new Gradio session) on the chat page, ready for input. Local by
    default; `@pytest.mark.parametrize("page", PAGE_MODES, indirect=True)` runs a test signed in too."""
    mode = getattr(request, "param", "local")
    url, _ = request.getfixturevalue("signed_in_env" if mode == "signed-in" else "app_env")
    context = browser.new_context(
        viewport={"width": 1280, "height": 800}, permissions=["clipboard-read", "clipboard-write"]
    )
    page = context.new_page()
    page.set_default_timeout(20_000)
    started = time.perf_counter()
    page.goto(url)
    if mode == "signed-in":
        sign_in(page, *SIGNED_IN)
    page.locator("#hc-input textarea").wait_for()
    MEASUREMENTS.setdefault("page_ready_s", []).append(round(time.perf_counter() - started, 2))
    yield page
    context.close()
