"""The `hybrid-chat` command, run as a user runs it (a new process each time)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXE = str(Path(sys.executable).with_name("hybrid-chat"))


def run(*args: str, db: Path, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRID_CHAT_")}
    env.update(extra)
    env.update(
        HYBRID_CHAT_SQLITE_PATH=str(db),
        HYBRID_CHAT_TEMPERATURE="0",
        HYBRID_CHAT_MAX_TOKENS="24",
        HYBRID_CHAT_LOCAL_MODEL_THREADS="1",
    )
    return subprocess.run(  # noqa: S603
        [EXE, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def test_ask_prints_an_answer_and_exits_0(tmp_path: Path) -> None:
    r = run("ask", "What is the capital of France?", "--model", "gemma", db=tmp_path / "c.db")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "stand-in" in r.stderr  # who answered is shown, and labelled as a local stand-in
    assert "llama" not in r.stdout.lower() and "slot" not in r.stderr  # the server's logs stay out


def test_a_bad_model_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    r = run("ask", "hi", "--model", "gpt-4", db=tmp_path / "c.db")
    assert r.returncode == 2
    assert "invalid choice: 'gpt-4'" in r.stderr and "gemma" in r.stderr


def test_a_broken_router_file_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "router.json"
    bad.write_text('{"format": "hybrid-chat-router", "version": 1}', encoding="utf-8")
    r = run("ask", "hi", "--model", "learned", db=tmp_path / "c.db", HYBRID_CHAT_ROUTER_FILE=str(bad))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hybrid-chat: {bad}: missing "), r.stderr
    assert "threshold" in lines[0]  # says which fields are missing


def test_history_survives_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    assert run("ask", "My name is Ada.", "--session", "s1", "--model", "gemma", db=db).returncode == 0
    assert run("ask", "What is my name?", "--session", "s1", "--model", "gemini", db=db).returncode == 0
    # A third process, with nothing but the file and the session id, sees both turns.
    code = (
        "import asyncio; from graph.memory import make_store; from graph.settings import Settings;"
        f"h = make_store(Settings(sqlite_path={str(db)!r})).history('s1', 'local');"
        "print('|'.join(m.type + ':' + m.content for m in h.messages))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)  # noqa: S603
    turns = r.stdout.strip().split("|")
    assert [t.split(":", 1)[0] for t in turns] == ["human", "ai", "human", "ai"]
    assert turns[0] == "human:My name is Ada." and turns[2] == "human:What is my name?"


def test_chat_streams_in_the_terminal(tmp_path: Path) -> None:
    env_db = tmp_path / "c.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRID_CHAT_")}
    env.update(HYBRID_CHAT_SQLITE_PATH=str(env_db), HYBRID_CHAT_TEMPERATURE="0", HYBRID_CHAT_MAX_TOKENS="16")
    r = subprocess.run(  # noqa: S603
        [EXE, "chat", "--model", "gemma"],
        input="Hello!\n\n",
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() and "session" in r.stderr


def test_eval_run_through_the_command_writes_a_report(tmp_path: Path) -> None:
    dataset = tmp_path / "tiny.jsonl"
    dataset.write_text(
        '{"id": "capital", "messages": [{"role": "user", "content": "What is the capital of France?"}], '
        '"checks": [{"type": "contains", "value": "Paris"}]}\n'
    )
    out = tmp_path / "run"
    r = run(
        "eval",
        "run",
        "--dataset",
        str(dataset),
        "--model",
        "gemma",
        "--max-tokens",
        "16",
        "--out",
        str(out),
        "--no-progress",
        db=tmp_path / "c.db",
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert (out / "results.jsonl").read_text().count("\n") == 1
    assert "| tiny | gemma | 1 | 1/1 (100.0%) | 0 |" in (out / "report.md").read_text()
