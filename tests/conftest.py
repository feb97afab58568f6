"""Shared fixtures: settings isolated from the developer's environment, one local model per session."""

from __future__ import annotations

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
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)
