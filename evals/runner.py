"""The eval runner: every (case, model) through the one `ChatClient`, as every way in calls the graph.

- One client (`ChatClient.from_settings(settings, ...)`), one session per (case, model, attempt); the
  user turns are sent one by one with `client.stream_turn(...)`, so history comes
  from memory and the first token is timed as a streaming client sees it.
- Fixed generation: temperature (default 0), max_tokens and the seed are sent with every turn (the
  graph's `seed` input; at temperature 0 llama.cpp and vLLM decode greedily anyway).
- Concurrency: N workers share a queue; each result is appended to `results.jsonl` when it finishes.
  A resumed run skips every (dataset, case, model) already there with the same case fingerprint
  (`--retry-errors` also redoes those that ended in an error; a case with judge checks is redone when
  the run's judge differs from the one that judged it).
- A failing backend is a result (`status: "error"`), never a crash: the graph turns backend failures
  into error notes, and any exception the graph raises is caught per case.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evals.checks import CheckResult, LLMJudge, check_route, deterministic_checks
from evals.dataset import Case, Dataset, Judge, resolve
from evals.results import RESULTS, ResultWriter, key_of, latest, read_results

log = logging.getLogger(__name__)

MODELS = ("gemma", "gemini", "auto")  # the default set; `learned` too when a router file is set
ROUTED = (*MODELS, "learned")
RUN_FILE = "run.json"

# USD per 1M tokens (input, output). Gemini 2.5 Flash: Vertex AI list price for text (checked
# 2025; verify on https://cloud.google.com/vertex-ai/generative-ai/pricing before quoting). Gemma in
# your cluster has no per-token price: its cost is the GPU nodes' hourly price, whatever the traffic.
# Put an amortised per-token figure here (`--price gemma=IN,OUT`) to compare both on one axis.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {"gemma": (0.0, 0.0), "gemini": (0.30, 2.50)}


class RunMismatch(ValueError):
    """The output directory holds a run with other generation parameters; resuming would mix them."""


@dataclass
class RunConfig:
    datasets: list[str] = field(default_factory=lambda: ["smoke"])
    models: list[str] = field(default_factory=lambda: list(MODELS))
    out_dir: Path = Path("eval-runs/latest")
    concurrency: int = 2
    temperature: float = 0.0
    seed: int = 0
    max_tokens: int = 128
    judge: str | None = None  # "gemma" | "gemini" | None
    judge_max_tokens: int = 256
    prices: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    retry_errors: bool = False
    user_id: str = "eval"
    progress: bool = True

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        bad = [m for m in self.models if m not in ROUTED]
        if bad:
            raise ValueError(f"unknown model(s) {', '.join(bad)}: choose from {', '.join(ROUTED)}")
        if not self.models:
            raise ValueError("no model given")
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.judge not in (None, "gemma", "gemini"):
            raise ValueError(f"unknown judge {self.judge!r}: gemma, gemini or none")

    def identity(self) -> dict[str, Any]:
        """What must not change between a run and its resumption."""
        return {"temperature": self.temperature, "seed": self.seed, "max_tokens": self.max_tokens}


@dataclass
class RunOutcome:
    out_dir: Path
    ran: int
    skipped: int
    summary: dict[str, Any]
    files: dict[str, Path]


def _other(backend: str) -> str:
    return "gemini" if backend == "gemma" else "gemma"


def _seed_supported() -> bool:
    from graph.state import InputState

    return "seed" in getattr(InputState, "__annotations__", {})


def cost_usd(turns: list[dict[str, Any]], prices: dict[str, tuple[float, float]]) -> float:
    total = 0.0
    for t in turns:
        p_in, p_out = prices.get(t.get("backend") or "", (0.0, 0.0))
        total += (t.get("input_tokens") or 0) * p_in / 1e6 + (t.get("output_tokens") or 0) * p_out / 1e6
    return total


class CaseRunner:
    """Runs one (case, model) in a fresh session and returns its result record."""

    def __init__(self, client: Any, config: RunConfig, judge: LLMJudge | None) -> None:
        self.client = client
        self.config = config
        self.judge = judge
        self.settings = client.settings
        self.seed_ok = _seed_supported()

    async def _seed_other_user(self, case: Case, session_id: str) -> None:
        from langchain_core.messages import AIMessage, HumanMessage

        spec = case.other_user_history
        if spec is None:
            return
        history = self.client.store.history(f"{session_id}-other", spec.user_id)
        msgs = [HumanMessage(m.content) if m.role == "user" else AIMessage(m.content) for m in spec.messages]
        await history.aadd_messages(msgs)

    async def _turn(self, text: str, case: Case, model: str, session_id: str) -> dict[str, Any]:
        """One turn through the one client, exactly as every other way in sends it."""
        from graph.client import Delta

        options: dict[str, Any] = {
            "model": model,
            "temperature": self.config.temperature,
            "max_tokens": case.max_tokens or self.config.max_tokens,
            "system_prompt": case.system_prompt,
            "seed": self.config.seed if self.seed_ok else None,
        }
        started = time.perf_counter()
        first: float | None = None
        done: Any = None
        async for event in self.client.stream_turn(self.config.user_id, session_id, text, options):
            if isinstance(event, Delta):
                first = first or time.perf_counter()
            else:
                done = event
        ended = time.perf_counter()
        if done.kind == "failed":
            err = done.error
            return {"error": f"{type(err).__name__}: {err}"[:500], "answer": "", "raised": True}
        a = done.answer
        return {
            "answer": a.text,
            "backend": a.backend,
            "routed_backend": a.requested_backend,
            "fallback": a.fallback,
            "route_reason": a.route_reason,
            "error": (f"no backend answered: {a.error}" if a.error else None) or done.save_error,
            "latency_ms": round((ended - started) * 1000, 1),
            "ttft_ms": round((first - started) * 1000, 1) if first is not None else None,
            "model_latency_ms": a.latency_ms,
            "model_ttft_ms": a.ttft_ms,
            "input_tokens": a.input_tokens,
            "output_tokens": a.output_tokens,
            "tokens_per_s": a.tokens_per_s,
        }

    async def run(self, dataset: str, case: Case, model: str, fingerprint: str) -> dict[str, Any]:
        session_id = f"eval-{dataset}-{case.id}-{model}-{uuid.uuid4().hex[:8]}"
        texts = case.render(self.settings.gemma_max_model_len)
        turns: list[dict[str, Any]] = []
        setup_error: str | None = None
        try:
            await self._seed_other_user(case, session_id)
        except Exception as exc:
            setup_error = f"seeding other_user_history failed: {type(exc).__name__}: {exc}"[:500]
        if setup_error is None:
            for text in texts:
                turn = await self._turn(text, case, model, session_id)
                turns.append(turn)
                if turn.get("raised"):
                    break  # the graph itself raised: later turns would raise the same way
        last = turns[-1] if turns else {}
        errors = [t["error"] for t in turns if t.get("error")]
        error = setup_error or (errors[-1] if errors else None)
        if error is None and len(turns) < len(texts):
            error = "not all turns ran"
        status = "error" if error else "ok"
        answer = last.get("answer", "")
        backend, reason = last.get("backend"), last.get("route_reason")

        checks: list[CheckResult]
        if status == "ok":
            checks = deterministic_checks(case, answer, latency_ms=last.get("latency_ms"))
        else:
            checks = [
                CheckResult(c.type, False, "not run: no answer (error)")
                for c in case.checks
                if not isinstance(c, Judge)
            ]
        for check in case.checks:
            if not isinstance(check, Judge):
                continue
            if self.judge is None:
                checks.append(CheckResult("judge", None, "not applicable: no judge configured (--judge)"))
            elif status != "ok":
                checks.append(CheckResult("judge", False, "not run: no answer (error)"))
            else:
                checks.append(
                    await self.judge.score(check, conversation=texts, answer=answer, reference=case.reference)
                )
        routed = last.get("routed_backend")
        if case.expected_route is not None:
            checks.append(check_route(case.expected_route, model, routed))
        applicable = [c.passed for c in checks if c.passed is not None]
        passed: bool | None = (status == "ok" and all(applicable)) if applicable else None
        judge_scores = [c.score for c in checks if c.type == "judge" and c.score is not None]
        turn_records = [
            {k: t.get(k) for k in ("backend", "route_reason", "latency_ms", "input_tokens", "output_tokens")}
            | {"error": t.get("error")}
            for t in turns
        ]
        return {
            "dataset": dataset,
            "case_id": case.id,
            "model": model,
            "fingerprint": fingerprint,
            "tags": list(case.tags),
            "expected_route": case.expected_route,
            "status": status,
            "error": error,
            "passed": passed,
            "checks": [c.to_dict() for c in checks],
            "judge_score": (sum(judge_scores) / len(judge_scores)) if judge_scores else None,
            "answer": answer,
            "backend": backend,
            "routed_backend": routed,
            "route_reason": reason,
            "fallback": bool(last.get("fallback")),
            "latency_ms": last.get("latency_ms"),
            "ttft_ms": last.get("ttft_ms"),
            "model_latency_ms": last.get("model_latency_ms"),
            "model_ttft_ms": last.get("model_ttft_ms"),
            "output_tokens": last.get("output_tokens"),
            "tokens_per_s": last.get("tokens_per_s"),
            "turns": turn_records,
            "input_tokens_total": sum(t.get("input_tokens") or 0 for t in turns),
            "output_tokens_total": sum(t.get("output_tokens") or 0 for t in turns),
            "cost_usd": round(cost_usd(turn_records, self.config.prices), 8),
            "temperature": self.config.temperature,
            "max_tokens": case.max_tokens or self.config.max_tokens,
            "seed": self.config.seed,
            "judge": self.config.judge,
            "session_id": session_id,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }


def _check_run_file(config: RunConfig, path: Path) -> None:
    if not path.exists():
        return
    previous = json.loads(path.read_text(encoding="utf-8"))
    old = previous.get("identity") or {}
    new = config.identity()
    diff = {k: (old.get(k), v) for k, v in new.items() if k in old and old[k] != v}
    if diff:
        what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise RunMismatch(
            f"{path.parent} holds a run with other parameters ({what}); resuming would mix them: "
            "use another --out"
        )


def _warn_context(datasets: list[Dataset], backends: Any, settings: Any) -> None:
    """Say so when a case cannot fit the local stand-in's context (it would fail, truthfully)."""
    if not (backends.is_local("gemma") or backends.is_local("gemini")):
        return
    limit = settings.local_model_ctx
    for ds in datasets:
        for case in ds.cases:
            tokens = sum(len(t) // 4 + 4 for t in case.render(settings.gemma_max_model_len))
            if tokens > limit:
                log.warning(
                    "%s/%s: ~%d prompt tokens, beyond the local stand-in's context (%d): it will fail "
                    "on local backends; lower gemma_max_model_len (fill is relative to it)",
                    ds.name,
                    case.id,
                    tokens,
                    limit,
                )


async def run_eval(
    config: RunConfig,
    settings: Any = None,
    *,
    store: Any = None,
    backends: Any = None,
    router: Any = None,
    client: Any = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> RunOutcome:
    """Run (or resume) an eval into `config.out_dir`, then write the summary, report and plots."""
    from evals.report import write_reports

    datasets = [resolve(spec) for spec in config.datasets]
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise ValueError(f"dataset names must be unique: {names}")
    if client is None:
        from graph.client import ChatClient

        client = ChatClient.from_settings(settings, store=store, backends=backends, router=router)
    settings = client.settings
    if missing := [m for m in config.models if m not in client.models]:
        raise ValueError(
            f"model(s) {', '.join(missing)} not offered here: `learned` needs HYBRID_CHAT_ROUTER_FILE "
            "(a router file from `hybrid-chat eval calibrate`)"
        )
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    _check_run_file(config, out / RUN_FILE)
    _warn_context(datasets, client.services.backends, settings)

    results_path = out / RESULTS
    done = latest(read_results(results_path))
    todo: list[tuple[str, Case, str, str]] = []
    skipped = 0
    for ds in datasets:
        for case in ds.cases:
            fp = case.fingerprint(settings.gemma_max_model_len)
            for model in config.models:
                prev = done.get((ds.name, case.id, model))
                judged = any(isinstance(c, Judge) for c in case.checks)
                if (
                    prev is not None
                    and prev.get("fingerprint") == fp
                    and not (config.retry_errors and prev.get("status") == "error")
                    and not (judged and prev.get("judge") != config.judge)  # judged by another judge
                ):
                    skipped += 1
                    continue
                todo.append((ds.name, case, model, fp))

    backends_info = {b: client.services.backends.label(b) for b in ("gemma", "gemini")}
    run_info = {
        "identity": config.identity(),
        "datasets": {d.name: d.path for d in datasets},
        "models": config.models,
        "concurrency": config.concurrency,
        "judge": config.judge,
        "prices_usd_per_1m_tokens": {k: list(v) for k, v in config.prices.items()},
        "backends": backends_info,
        "seed_sent": _seed_supported(),
        "settings": {
            "gemma_max_model_len": settings.gemma_max_model_len,
            "auto_preference": settings.auto_preference,
            "history_max_messages": settings.history_max_messages,
            "history_max_tokens": settings.history_max_tokens,
            "memory": settings.memory,
            "local_model_ctx": settings.local_model_ctx,
            "local_model_parallel": settings.local_model_parallel,
        },
        "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (out / RUN_FILE).write_text(json.dumps(run_info, indent=2) + "\n", encoding="utf-8")

    judge = None
    if config.judge and todo and any(isinstance(c, Judge) for _, case, _, _ in todo for c in case.checks):
        from graph.backends import GenerationParams

        params = GenerationParams(temperature=0.0, top_p=1.0, max_tokens=config.judge_max_tokens)
        judge = LLMJudge(config.judge, await client.services.backends.amodel(config.judge, params))
    runner = CaseRunner(client, config, judge)
    writer = ResultWriter(results_path)
    queue: asyncio.Queue[tuple[str, Case, str, str]] = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)

    progress = _progress(config.progress)
    task_id = progress.add_task("eval", total=len(todo)) if progress else None

    async def worker() -> None:
        while True:
            try:
                ds_name, case, model, fp = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            result = await runner.run(ds_name, case, model, fp)
            writer.write(result)
            if on_result is not None:
                on_result(result)
            if progress is not None:
                mark = "ok" if result["passed"] else ("error" if result["status"] == "error" else "fail")
                progress.update(task_id, advance=1, description=f"{ds_name}/{case.id} [{model}] {mark}")

    try:
        if progress is not None:
            progress.start()
        await asyncio.gather(*(worker() for _ in range(min(config.concurrency, max(1, len(todo))))))
    finally:
        if progress is not None:
            progress.stop()
        writer.close()

    selected = {(d.name, c.id, m) for d in datasets for c in d.cases for m in config.models}
    final = [r for r in latest(read_results(results_path)).values() if key_of(r) in selected]
    summary, files = write_reports(out, final, run_info)
    return RunOutcome(out_dir=out, ran=len(todo), skipped=skipped, summary=summary, files=files)


def _progress(enabled: bool) -> Any:
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    )
