"""`hybrid-chat serve`: the browser chat's server answers over Gradio's API, health endpoints work."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from gradio_client import Client

from tests.support.server import running_server

pytestmark = pytest.mark.integration


def test_serve_answers_through_the_gradio_api(tmp_path: Path) -> None:
    env = {
        "HYBRID_CHAT_SQLITE_PATH": str(tmp_path / "c.db"),
        "HYBRID_CHAT_TEMPERATURE": "0",
        "HYBRID_CHAT_MAX_TOKENS": "24",
    }
    with running_server(env, tmp_path / "serve.log") as (url, _started_in, _pid):
        assert httpx.get(url + "/healthz").json() == {"status": "ok"}
        assert httpx.get(url + "/readyz").status_code == 200
        client = Client(url, verbose=False)
        answer = client.predict("What is the capital of France?", "gemma", api_name="/chat")
        assert isinstance(answer, str) and "Paris" in answer
