"""`results.jsonl`: one line per finished (dataset, case, model), appended as each finishes.

The file is the run's only state: a resumed run reads it, skips what is finished, and appends the rest.
A line cut short by a crash is dropped (and cut off the file) before appending, so the file stays valid
JSONL. When a key appears twice (a retried error), the last line wins.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RESULTS = "results.jsonl"

Key = tuple[str, str, str]  # (dataset, case_id, model)


def key_of(result: dict[str, Any]) -> Key:
    return (result["dataset"], result["case_id"], result["model"])


def read_results(path: Path) -> list[dict[str, Any]]:
    """All complete lines, in file order (a torn last line is skipped)."""
    if not path.exists():
        return []
    out: list[dict[str, Any]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            if i == len(lines):
                log.warning("%s:%d: incomplete last line (interrupted write), ignored", path, i)
                continue
            raise ValueError(f"{path}:{i}: not a JSON line") from None
    return out


def latest(results: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """The last result per key (file order)."""
    return {key_of(r): r for r in results}


def repair_tail(path: Path) -> None:
    """Cut an incomplete last line (no trailing newline) so appends start on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    try:
        json.loads(data[cut:])
    except ValueError:
        with path.open("r+b") as fh:
            fh.truncate(cut)
        return
    with path.open("ab") as fh:  # a complete line that only lacks its newline
        fh.write(b"\n")


class ResultWriter:
    """Appends one JSON line per result and flushes it at once."""

    def __init__(self, path: Path) -> None:
        repair_tail(path)
        self._fh = path.open("a", encoding="utf-8")

    def write(self, result: dict[str, Any]) -> None:
        self._fh.write(json.dumps(result, ensure_ascii=False, separators=(",", ":")) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()
