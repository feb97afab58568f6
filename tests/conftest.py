"""Shared fixtures: settings isolated from the developer's environment, one local model per session."""

from __future__ import annotations

import gc
import inspect
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from graph.backends import Backends
from graph.settings import Settings


def local_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Embedded defaults (local stand-ins, SQLite in tmp_path), deterministic and short answers."""
    values: dict[str, object] = {
        "sqlite_path": tmp_path / "chat.db",
        "temperature": 0.0,
        "max_tokens": 24,
        "local_model_threads": 1,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("HYBRID_CHAT_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def local_backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backends]:
    """The real local stand-ins (llama.cpp server + Vertex-shaped endpoint), started once per run."""
    backends = Backends(local_settings(tmp_path_factory.mktemp("backends")))
    yield backends
    backends.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Browser tests last: Playwright's sync API keeps an event loop running in the main thread while its
    browser is open, and asyncio tests after it would fail with "cannot be called from a running loop"."""

    def order(item: pytest.Item) -> int:
        in_browser_dir = "browser" in item.path.parent.parts[-1:]  # a file there without the marker too
        if item.get_closest_marker("browser") is None and not in_browser_dir:
            return 0
        # Async browser tests (Playwright's async API) before the sync ones, whose loop stays running.
        return 1 if inspect.iscoroutinefunction(getattr(item, "obj", None)) else 2

    items.sort(key=order)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Collect the garbage before pytest's summary. CPython 3.11.7 aborts an `ast.parse` during which a
    finalizer runs ("AST constructor recursion depth mismatch", fixed in 3.11.8), and the summary imports
    (and so parses) plugin modules while clients that streams left behind (aiohttp sessions of the
    Vertex client, which nothing closes) wait for collection."""
    gc.collect()
