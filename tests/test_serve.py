"""`hybrid-chat serve`: the browser chat's server answers over Gradio's API, health endpoints work, and a
SIGTERM (how Kubernetes stops a Pod) loses nothing: readiness fails at once, the listener stays open for
the drain period, answers in flight finish or are saved as stopped, then the stores close and it exits."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradio_client import Client

from tests.conftest import local_settings
from tests.support.fault_server import fault_server
from tests.support.firestore_emulator import FirestoreEmulator, firestore_emulator
from tests.support.server import running_server

pytestmark = pytest.mark.integration

DATABASE = "serve-db"


@pytest.fixture(scope="module")
def emulator() -> Iterator[FirestoreEmulator]:
    with firestore_emulator(set_env=False) as emu:
        yield emu


def firestore_env(emulator: FirestoreEmulator) -> dict[str, str]:
    return {
        "FIRESTORE_EMULATOR_HOST": emulator.host,
        "GOOGLE_CLOUD_PROJECT": emulator.project,
        "HYBRID_CHAT_MEMORY": "firestore",
        "HYBRID_CHAT_FIRESTORE_PROJECT": emulator.project,
        "HYBRID_CHAT_FIRESTORE_DATABASE": DATABASE,
    }


def stored(emulator: FirestoreEmulator, user: str, session_id: str, tmp_path: Path) -> list[Any]:
    """The conversation's messages as the Firestore store reads them back."""
    from graph.memory import make_store

    settings = local_settings(
        tmp_path, memory="firestore", firestore_project=emulator.project, firestore_database=DATABASE
    )
    saved = os.environ.get("FIRESTORE_EMULATOR_HOST")
    os.environ["FIRESTORE_EMULATOR_HOST"] = emulator.host
    try:
        store = make_store(settings)

        async def read() -> list[Any]:
            try:
                return await store.history(session_id, user).aget_messages()
            finally:
                await store.aclose()

        return asyncio.run(read())
    finally:
        if saved is None:
            os.environ.pop("FIRESTORE_EMULATOR_HOST", None)
        else:
            os.environ["FIRESTORE_EMULATOR_HOST"] = saved


def exited(pid: int) -> bool:
    """Has the process ended (gone, or a zombie its parent has not reaped yet)?"""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except OSError:
        return True


class Stream:
    """One `/api/chat` answer read in a thread: the text so far, and how it ended."""

    def __init__(self, url: str, session_id: str, message: str, max_tokens: int) -> None:
        self.session_id, self.text, self.done, self.error = session_id, "", None, None
        body = {"message": message, "model": "gemma", "session_id": session_id, "max_tokens": max_tokens}
        self.thread = threading.Thread(target=self._read, args=(url, body), daemon=True)
        self.thread.start()

    def _read(self, url: str, body: dict[str, Any]) -> None:
        try:
            with httpx.stream("POST", url + "/api/chat", json=body, timeout=60) as r:
                event = None
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        data = json.loads(line[6:])
                        if event == "delta":
                            self.text += data["text"]
                        elif event == "done":
                            self.done = data
        except httpx.HTTPError as exc:
            self.error = exc


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


def test_sigterm_saves_every_partial_answer_on_firestore_marked_stopped(
    tmp_path: Path, emulator: FirestoreEmulator
) -> None:
    """Four answers streaming from a slow model when the server is stopped (two through /api/chat, two
    through the page's Gradio API): past the grace period each is stopped, and each conversation keeps
    its question and the partial answer, marked stopped, even when the store is slow to answer just
    then (the emulator paused from the stop until 4 s after the answers were cut)."""
    emulator.wipe(DATABASE)
    log_path = tmp_path / "serve.log"
    with fault_server("echo_slow") as gemma:  # one word every 0.2 s, max_tokens words
        env = {
            **firestore_env(emulator),
            "HYBRID_CHAT_GEMMA_BASE_URL": gemma.base_url,
            "HYBRID_CHAT_SHUTDOWN_GRACE_S": "2",
            "HYBRID_CHAT_MEMORY_TIMEOUT_S": "30",  # a slow store, not a failed one
        }
        with running_server(env, log_path, wait_for="/readyz") as (url, _started_in, pid):
            api = [Stream(url, f"cut-{i}", f"question {i}", max_tokens=300) for i in range(2)]
            page = Client(url, verbose=False)
            jobs = [
                page.submit(f"question {i}", "gemma", f"cut-{i}", None, 300, api_name="/chat") for i in (2, 3)
            ]
            deadline = time.monotonic() + 60
            while not (all(s.text for s in api) and all(j.outputs() for j in jobs)):
                assert time.monotonic() < deadline, [s.error for s in api]
                time.sleep(0.05)
            shown = [s.text for s in api] + [j.outputs()[-1] for j in jobs]
            stopped_at = time.monotonic()
            emulator.pause()
            try:
                os.kill(pid, signal.SIGTERM)
                for s in api:
                    s.thread.join(30)  # cut at the 2 s grace: the saves now wait for the store
                time.sleep(4)
            finally:
                emulator.resume()
            while not exited(pid):  # running_server's exit waits too; here the time it took is measured
                assert time.monotonic() - stopped_at < 40, "the server did not exit"
                time.sleep(0.05)
    log = log_path.read_text()
    assert "saving a stopped turn failed" not in log, log
    for i in range(4):
        messages = stored(emulator, "local", f"cut-{i}", tmp_path)
        assert [m.type for m in messages] == ["human", "ai"], (i, messages, log)
        question, answer = messages
        assert question.text == f"question {i}"
        assert answer.text.startswith(f"echo:question {i}") and len(answer.text) >= len(shown[i]) > 0
        assert answer.response_metadata["hybrid_chat"]["interrupted"] == "stopped"
