"""Offline eval runs: dataset validation, checks, runner (resume, failures), metrics, reports, compare.

Unit tests use scripted models (milliseconds); the `integration` ones run the smoke set and a judge
against the real local stand-ins (llama.cpp + the Vertex-shaped endpoint).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from evals.checks import (
    check_contains,
    check_json_schema,
    check_not_contains,
    check_regex,
    check_route,
    extract_json,
)
from evals.cli import main as eval_main
from evals.cli import register
from evals.dataset import Contains, DatasetError, JsonSchema, NotContains, Regex, load_dataset, resolve
from evals.metrics import percentile
from evals.report import PLOTS, compare_runs
from evals.results import read_results
from evals.runner import DEFAULT_PRICES, RunConfig, RunMismatch, cost_usd, run_eval
from graph.backends import Backends
from tests.conftest import local_settings
from tests.fakes import FailingChatModel, InMemoryStore, ScriptedBackends

REPORT_FILES = ("results.jsonl", "summary.json", "report.md", *PLOTS.values())


def write_jsonl(path: Path, cases: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(c) + "\n" for c in cases), encoding="utf-8")
    return path


def qa(case_id: str, question: str, expect: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": case_id,
        "messages": [{"role": "user", "content": question}],
        "checks": [{"type": "contains", "value": expect}],
        **extra,
    }


# --- datasets --------------------------------------------------------------------------------------
def test_shipped_datasets_are_valid_and_big_enough() -> None:
    smoke, memory, routing, safety = (resolve(n) for n in ("smoke", "memory", "routing", "safety"))
    assert len(smoke.cases) >= 20
    assert len(memory.cases) >= 10 and all(len(c.messages) >= 2 for c in memory.cases)
    assert len(routing.cases) >= 20 and all(c.expected_route for c in routing.cases)
    window = 1024
    long_ = [c for c in routing.cases if sum(len(t) // 4 for t in c.render(window)) > window]
    assert {c.expected_route for c in long_} == {"gemini"} and len(long_) >= 8
    assert any(c.expected_route == "gemma" for c in routing.cases)
    # Long contexts come from a compact spec, not from huge files; and they fit the local model.
    assert resolve("routing").path.endswith(".jsonl") and Path(routing.path).stat().st_size < 20_000
    assert max(sum(len(t) // 4 for t in c.render(window)) for c in routing.cases) < 3000
    assert len(safety.cases) >= 10
    tags = {t for c in safety.cases for t in c.tags}
    assert {"role-injection", "prompt-format-injection", "other-user-data"} <= tags
    assert any("User's Turn:" in c.render(window)[-1] for c in safety.cases)  # the codelab's format


def test_a_malformed_line_names_file_line_and_field(tmp_path: Path) -> None:
    good = qa("ok", "hi", "hello")
    bad_regex = {**qa("bad", "hi", "x"), "checks": [{"type": "regex", "pattern": "(unclosed"}]}
    path = write_jsonl(tmp_path / "set.jsonl", [good, good | {"id": "ok2"}, bad_regex])
    with pytest.raises(DatasetError) as err:
        load_dataset(path)
    assert str(err.value).startswith(f"{path}:3 (case 'bad'): checks[0].pattern: invalid regex")

    path.write_text(json.dumps(good) + "\n\n" + '{"id": "x", "messages": [\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(path))}:3: invalid JSON"):
        load_dataset(path)

    for case, field in (
        ({**good, "checks": [{"type": "contain", "value": "a"}]}, "checks[0]"),
        ({**good, "messages": [{"role": "assistant", "content": "hi"}]}, "messages[0].role"),
        ({**good, "expectd_route": "gemma"}, "expectd_route"),
        ({**good, "checks": [{"type": "json_schema", "schema": {"type": "objekt"}}]}, "checks[0].schema"),
        ({**good, "messages": [{"role": "user", "content": [{"text": "x"}]}]}, "messages[0].content[0]"),
    ):
        write_jsonl(path, [case])
        with pytest.raises(
            DatasetError, match=rf"^{re.escape(str(path))}:1 \(case 'ok'\): {re.escape(field)}: "
        ):
            load_dataset(path)

    write_jsonl(path, [good, good])
    with pytest.raises(DatasetError, match=r":2: id: duplicate case id 'ok' \(first on line 1\)"):
        load_dataset(path)


def test_repeat_and_fill_expand_long_contexts() -> None:
    from evals.dataset import Case

    case = Case.model_validate(
        {
            "id": "long",
            "messages": [
                {"role": "user", "content": ["A", {"text": "line {i}. ", "repeat": 3}, "B"]},
                {"role": "user", "content": [{"text": "xxxx", "fill": 2}]},
            ],
            "expected_route": "gemini",
        }
    )
    first, second = case.render(100)
    assert first == "Aline 1. line 2. line 3. B"
    assert len(second) // 4 == 200  # 2 x the window, in the graph's ~4 characters a token
    assert case.fingerprint(100) != case.fingerprint(200)


# --- checks ----------------------------------------------------------------------------------------
def test_deterministic_checks() -> None:
    assert check_contains(Contains(type="contains", value=["paris", "France"]), "Paris, France").passed
    assert not check_contains(Contains(type="contains", value="PARIS", case_sensitive=True), "Paris").passed
    assert check_contains(Contains(type="contains", value=["x", "Paris"], match="any"), "Paris").passed
    assert not check_not_contains(NotContains(type="not_contains", value=["ORCA-77"]), "code orca-77").passed
    assert check_regex(Regex(type="regex", pattern=r"^\D*51\D*$", fullmatch=True), " 51.\n").passed
    assert not check_regex(Regex(type="regex", pattern=r"^\D*51\D*$", fullmatch=True), "51 or 52").passed
    schema = JsonSchema.model_validate({"type": "json_schema", "schema": {"const": [2, 4, 6]}})
    assert check_json_schema(schema, "Sure:\n```json\n[2, 4, 6]\n```").passed
    assert check_json_schema(schema, "The list is [2, 4, 6].").passed
    result = check_json_schema(schema, "two, four, six")
    assert not result.passed and "no JSON" in result.detail
    assert extract_json('{"a": 1} trailing') == {"a": 1}
    assert check_route("gemini", "gemma", "gemma").passed is None  # pinned: not applicable
    assert check_route("gemini", "auto", "gemma").passed is False


def test_cost_prices_each_turn_by_the_backend_that_answered_it() -> None:
    turns = [
        {"backend": "gemini", "input_tokens": 1_000_000, "output_tokens": 1_000_000},
        {"backend": "gemma", "input_tokens": 5_000_000, "output_tokens": 5_000_000},
        {"backend": None, "input_tokens": None, "output_tokens": None},  # an error: nothing billed
    ]
    assert cost_usd(turns, DEFAULT_PRICES) == pytest.approx(0.30 + 2.50)
    assert cost_usd(turns, {**DEFAULT_PRICES, "gemma": (0.01, 0.02)}) == pytest.approx(2.80 + 0.15)


def test_percentile_is_numpys_linear_interpolation() -> None:
    rng = np.random.default_rng(7)
    for n in (1, 2, 3, 7, 20, 24, 61):
        values = [round(float(v), 1) for v in rng.lognormal(7, 1, n)]
        for q in (0, 50, 95, 100):
            assert percentile(values, q) == float(np.percentile(values, q))  # exactly, not approx
    assert percentile([], 50) is None


# --- runner with scripted models ------------------------------------------------------------------
class HangingModel(GenericFakeChatModel):
    """Never answers (a stuck backend): the run is interrupted while waiting on it."""

    async def _astream(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        await asyncio.Event().wait()
        yield  # pragma: no cover


def scripted(tmp_path: Path, answer: str = "Paris", *, hang_after: int | None = None, **models: Any):
    settings = local_settings(tmp_path)
    made = {"n": 0}

    def model() -> Any:
        made["n"] += 1
        if hang_after is not None and made["n"] > hang_after:
            return HangingModel(messages=iter([]))
        return GenericFakeChatModel(messages=iter([AIMessage(answer)]))

    backends = ScriptedBackends(
        settings, {"gemma": models.get("gemma", model), "gemini": models.get("gemini", model)}
    )
    return settings, backends


async def test_an_interrupted_run_resumes_without_redoing_finished_cases(tmp_path: Path) -> None:
    dataset = write_jsonl(tmp_path / "qa.jsonl", [qa(f"q{i}", f"question {i}?", "Paris") for i in range(6)])
    out = tmp_path / "run"
    config = RunConfig(
        datasets=[str(dataset)], models=["gemma", "gemini"], out_dir=out, concurrency=2, progress=False
    )
    settings, backends = scripted(tmp_path, hang_after=5)
    task = asyncio.create_task(run_eval(config, settings, store=InMemoryStore(), backends=backends))
    results = out / "results.jsonl"
    for _ in range(500):  # the first 5 calls answer, the next ones hang: wait for 5 lines
        await asyncio.sleep(0.01)
        if results.exists() and len(read_results(results)) == 5:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(read_results(results)) == 5
    with results.open("a", encoding="utf-8") as fh:
        fh.write('{"dataset": "qa", "case_id": "q5", "mod')  # a write torn by the interruption

    settings, backends = scripted(tmp_path)
    outcome = await run_eval(config, settings, store=InMemoryStore(), backends=backends)
    assert outcome.skipped == 5 and outcome.ran == 7
    assert len(backends.calls) == 7  # only the unfinished (case, model) pairs called a model
    lines = read_results(results)
    keys = [(r["case_id"], r["model"]) for r in lines]
    assert len(keys) == len(set(keys)) == 12
    assert all(r["passed"] for r in lines)
    assert all(f.exists() for f in (out / n for n in REPORT_FILES))

    # Nothing left to do: a third run calls no model and rewrites the same figures.
    settings, backends = scripted(tmp_path)
    outcome = await run_eval(config, settings, store=InMemoryStore(), backends=backends)
    assert (outcome.ran, outcome.skipped, backends.calls) == (0, 12, [])

    # Resuming with other generation parameters would mix two runs: refused.
    with pytest.raises(RunMismatch, match=re.escape("temperature 0.0 -> 0.7")):
        await run_eval(
            RunConfig(datasets=[str(dataset)], out_dir=out, temperature=0.7, progress=False),
            settings,
            store=InMemoryStore(),
            backends=backends,
        )


async def test_fallbacks_errors_and_routing_are_counted(tmp_path: Path) -> None:
    cases = [
        qa("short", "capital of France?", "Paris", expected_route="gemma"),
        {
            **qa("long", "x", "Paris", expected_route="gemini"),
            "messages": [{"role": "user", "content": [{"text": "filler text. ", "fill": 1.5}, "capital?"]}],
        },
    ]
    dataset = write_jsonl(tmp_path / "r.jsonl", cases)
    settings, backends = scripted(
        tmp_path, gemma=lambda: FailingChatModel(messages=iter([AIMessage("never")]))
    )
    # Gemma fails before its first token; the circuit breaker stays closed (order-independent figures).
    settings = local_settings(tmp_path, gemma_max_model_len=512, breaker_failures=100)
    backends.settings = settings
    config = RunConfig(
        datasets=[str(dataset)],
        models=["gemma", "auto"],
        out_dir=tmp_path / "run",
        progress=False,
        max_tokens=16,
    )
    outcome = await run_eval(config, settings, store=InMemoryStore(), backends=backends)
    by = {(r["case_id"], r["model"]): r for r in read_results(tmp_path / "run" / "results.jsonl")}
    for model in ("gemma", "auto"):  # pinned and auto alike: Gemini answered, after Gemma failed
        r = by[("short", model)]
        assert r["status"] == "ok" and r["fallback"] and r["backend"] == "gemini", r
        assert r["routed_backend"] == "gemma"  # the router's choice, before the fallback
    assert by[("long", "auto")]["routed_backend"] == "gemini" and not by[("long", "auto")]["fallback"]
    groups = {(g["dataset"], g["model"]): g for g in outcome.summary["groups"]}
    assert groups[("r", "gemma")]["fallbacks"] == 2 and groups[("r", "auto")]["fallbacks"] == 1
    assert groups[("r", "gemma")]["errors"] == 0
    routing = outcome.summary["routing"]
    assert routing["n"] == 2 and routing["accuracy"] == 1.0
    assert routing["confusion"] == {
        "gemma": {"gemma": 1, "gemini": 0, "none": 0},
        "gemini": {"gemma": 0, "gemini": 1, "none": 0},
    }
    report = (tmp_path / "run" / "report.md").read_text()
    assert "2 answers of pinned gemma came from gemini" in report  # its quality figures mix backends


async def test_the_routing_set_is_routed_as_labelled(tmp_path: Path) -> None:
    """The shipped routing set against the real router (scripted models): over-long contexts go to
    Gemini, the rest to the preferred Gemma. This is the router's regression test on labelled data."""
    settings = local_settings(tmp_path, gemma_max_model_len=1024)
    _, backends = scripted(tmp_path)
    backends.settings = settings
    config = RunConfig(datasets=["routing"], models=["auto"], out_dir=tmp_path / "run", progress=False)
    outcome = await run_eval(config, settings, store=InMemoryStore(), backends=backends)
    routing = outcome.summary["routing"]
    assert routing["n"] >= 20
    assert routing["misrouted"] == [] and routing["accuracy"] == 1.0


async def test_a_failing_judge_leaves_the_check_unjudged_and_a_new_judge_redoes_it(tmp_path: Path) -> None:
    case = {**qa("j", "capital of France?", "Paris"), "reference": "Paris"}
    case["checks"] = [*case["checks"], {"type": "judge", "criteria": "Names Paris."}]
    dataset = write_jsonl(tmp_path / "j.jsonl", [case])
    out = tmp_path / "run"
    settings, backends = scripted(tmp_path)
    no_judge = RunConfig(datasets=[str(dataset)], models=["gemma"], out_dir=out, progress=False)
    await run_eval(no_judge, settings, store=InMemoryStore(), backends=backends)
    (first,) = read_results(out / "results.jsonl")
    assert [c["passed"] for c in first["checks"]] == [True, None] and first["passed"] is True

    # With a judge now, the case is redone. The scripted model cannot give structured output: the
    # judge fails, which leaves the answer unjudged (not failed) and is counted.
    settings, backends = scripted(tmp_path)
    judged = RunConfig(datasets=[str(dataset)], models=["gemma"], out_dir=out, progress=False, judge="gemma")
    outcome = await run_eval(judged, settings, store=InMemoryStore(), backends=backends)
    assert outcome.ran == 1
    second = read_results(out / "results.jsonl")[-1]
    judge = second["checks"][1]
    assert judge["passed"] is None and judge["detail"].startswith("judge failed (gemma)")
    assert second["passed"] is True
    assert outcome.summary["groups"][0]["judge"] == {"n": 0, "mean": None, "errors": 1}
    assert "1 judge call(s) failed" in (out / "report.md").read_text()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_a_backend_that_is_down_is_counted_as_errors_not_a_crash(tmp_path: Path) -> None:
    dataset = write_jsonl(
        tmp_path / "d.jsonl", [qa(f"q{i}", "capital of France?", "Paris") for i in range(3)]
    )
    settings = local_settings(
        tmp_path, gemma_base_url=f"http://127.0.0.1:{closed_port()}/v1", fallback_enabled=False
    )
    config = RunConfig(datasets=[str(dataset)], models=["gemma"], out_dir=tmp_path / "run", progress=False)
    outcome = await run_eval(config, settings)
    group = outcome.summary["groups"][0]
    assert (group["cases"], group["errors"], group["passed"], group["evaluated"]) == (3, 3, 0, 3)
    results = read_results(tmp_path / "run" / "results.jsonl")
    assert all(r["status"] == "error" for r in results)
    # The first calls hit the closed port; then the circuit breaker marks Gemma down: both are errors.
    assert results[0]["error"] == "no backend answered: connection"
    assert all(r["error"].endswith((": connection", ": circuit_open")) for r in results)
    assert all((tmp_path / "run" / n).exists() for n in REPORT_FILES)
    assert "| d | gemma | 3 | 0/3 (0.0%) | 3 |" in (tmp_path / "run" / "report.md").read_text()


# --- compare and CLI ---------------------------------------------------------------------------
def fake_result(case_id: str, passed: bool, latency: float, **extra: Any) -> dict[str, Any]:
    return {
        "dataset": "smoke",
        "case_id": case_id,
        "model": "gemma",
        "fingerprint": "f",
        "status": "ok",
        "passed": passed,
        "checks": [{"type": "contains", "passed": passed, "detail": "", "score": None}],
        "latency_ms": latency,
        "ttft_ms": latency / 10,
        "tokens_per_s": 50.0,
        "backend": "gemma",
        "routed_backend": "gemma",
        "fallback": False,
        "input_tokens_total": 10,
        "output_tokens_total": 5,
        "cost_usd": 0.0,
        **extra,
    }


def test_compare_shows_what_regressed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d, rows in (
        (a, [fake_result("x", True, 100), fake_result("y", False, 100), fake_result("z", True, 100)]),
        (b, [fake_result("x", False, 400), fake_result("y", True, 400), fake_result("z", True, 400)]),
    ):
        d.mkdir()
        write_jsonl(d / "results.jsonl", rows)
    c = compare_runs(a, b)
    assert c["cases"]["regressed"] == ["smoke/x/gemma"] and c["cases"]["fixed"] == ["smoke/y/gemma"]
    assert any("latency p95" in r for r in c["regressions"])
    assert eval_main(["compare", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "smoke/x/gemma" in out and "regression(s)" in out
    assert eval_main(["compare", str(a), str(a)]) == 0
    assert eval_main(["compare", str(a), str(tmp_path / "missing")]) == 2


def test_register_adds_eval_run_and_compare() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="hybrid-chat")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "eval",
            "run",
            "--dataset",
            "smoke,routing",
            "--dataset",
            "x.jsonl",
            "--model",
            "gemma,auto",
            "--concurrency",
            "3",
            "--out",
            "d",
            "--price",
            "gemma=0.1,0.2",
            "--set",
            "gemma_max_model_len=1024",
        ]
    )
    assert args.eval_command == "run" and args.dataset == [["smoke", "routing"], ["x.jsonl"]]
    assert args.model == ["gemma", "auto"] and args.concurrency == 3 and str(args.out) == "d"
    assert args.price == [("gemma", (0.1, 0.2))] and args.overrides == [("gemma_max_model_len", "1024")]
    assert callable(args.handler)
    args = parser.parse_args(["eval", "compare", "a", "b"])
    assert (str(args.a), str(args.b)) == ("a", "b")


def test_cli_rejects_a_bad_dataset_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\n', encoding="utf-8")
    assert eval_main(["run", "--dataset", str(bad), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert f"{bad}:1 (case 'x'): messages: Field required" in capsys.readouterr().err


def test_cli_runs_learned_only_where_a_router_file_offers_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HYBRID_CHAT_ROUTER_FILE", raising=False)
    monkeypatch.setenv("HYBRID_CHAT_SQLITE_PATH", str(tmp_path / "c.db"))
    out = tmp_path / "o"
    assert eval_main(["run", "--model", "learned", "--out", str(out), "--no-progress"]) == 2
    assert "`learned` needs HYBRID_CHAT_ROUTER_FILE" in capsys.readouterr().err
    assert not (out / "results.jsonl").exists()  # refused before any case ran


# --- the smoke set on the real local backends ----------------------------------------------------
def _table_rows(markdown: str, heading: str) -> list[list[str]]:
    section = markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip().strip("|").split(" | ") for line in section.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in r] for r in rows[1:]]  # drop the header


def _recompute(results: list[dict[str, Any]]) -> dict[tuple[str, str], list[str]]:
    """The report's summary row of each (dataset, model), recomputed independently with numpy."""
    rows = {}
    for ds, model in sorted({(r["dataset"], r["model"]) for r in results}):
        rs = [r for r in results if (r["dataset"], r["model"]) == (ds, model)]
        ok = [r for r in rs if r["status"] == "ok"]
        judged = [r for r in rs if r["passed"] is not None]
        passed = sum(1 for r in judged if r["passed"])

        def pct(key: str, q: float, ok: list[dict[str, Any]] = ok) -> str:
            vals = [r[key] for r in ok if r[key] is not None]
            return f"{np.percentile(vals, q):.0f}" if vals else "—"

        tps = [r["tokens_per_s"] for r in ok if r["tokens_per_s"] is not None]
        rows[(ds, model)] = [
            ds,
            model,
            str(len(rs)),
            f"{passed}/{len(judged)} ({100 * passed / len(judged):.1f}%)",
            str(sum(r["status"] == "error" for r in rs)),
            str(sum(bool(r["fallback"]) for r in rs)),
            pct("latency_ms", 50),
            pct("latency_ms", 95),
            pct("ttft_ms", 50),
            pct("ttft_ms", 95),
            f"{np.percentile(tps, 50):.1f}" if tps else "—",
            "—",
            str(sum(r["input_tokens_total"] for r in rs)),
            str(sum(r["output_tokens_total"] for r in rs)),
            f"{sum(r['cost_usd'] for r in rs):.6f}",
        ]
    return rows


@pytest.mark.integration
async def test_smoke_set_on_local_backends_writes_reports_that_agree_with_results(
    tmp_path: Path, local_backends: Backends
) -> None:
    out = tmp_path / "smoke"
    config = RunConfig(
        datasets=["smoke"],
        models=["gemma", "gemini"],
        out_dir=out,
        concurrency=2,
        max_tokens=16,
        progress=False,
    )
    outcome = await run_eval(config, local_settings(tmp_path), backends=local_backends)
    for name in REPORT_FILES:
        assert (out / name).stat().st_size > 0, name
    for name in PLOTS.values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    results = read_results(out / "results.jsonl")
    assert len(results) == 2 * len(resolve("smoke").cases) == outcome.ran
    assert all(r["temperature"] == 0.0 and r["max_tokens"] in (16, 64) for r in results)
    answered = [r for r in results if r["status"] == "ok"]
    assert len(answered) == len(results)  # both local backends answer every case
    assert all(r["answer"] and r["latency_ms"] > 0 and r["ttft_ms"] for r in answered)
    assert {r["backend"] for r in results} == {"gemma", "gemini"}
    # Judge checks are not applicable without a judge: never counted as passes.
    judge = [c for r in results for c in r["checks"] if c["type"] == "judge"]
    assert judge and all(c["passed"] is None for c in judge)
    # The small stand-in answers simple facts: the figures are real, not all-fail or all-pass.
    capital = next(r for r in results if r["case_id"] == "capital-france" and r["model"] == "gemma")
    assert "Paris" in capital["answer"]
    assert next(c for c in capital["checks"] if c["type"] == "contains")["passed"] is True

    report = (out / "report.md").read_text(encoding="utf-8")
    in_report = {(r[0], r[1]): r for r in _table_rows(report, "Summary")}
    assert in_report == _recompute(results)
    assert "stand-in" in report  # who answered is said
    summary = json.loads((out / "summary.json").read_text())
    g = next(g for g in summary["groups"] if g["model"] == "gemma")
    assert g["latency_ms"]["p95"] == pytest.approx(
        np.percentile([r["latency_ms"] for r in results if r["model"] == "gemma"], 95)
    )


@pytest.mark.integration
async def test_judge_scores_with_a_local_backend(tmp_path: Path, local_backends: Backends) -> None:
    case = {
        **qa("capital", "What is the capital of France?", "Paris"),
        "reference": "Paris",
        "checks": [{"type": "judge", "criteria": "The answer names Paris as the capital of France."}],
    }
    dataset = write_jsonl(tmp_path / "j.jsonl", [case])
    config = RunConfig(
        datasets=[str(dataset)],
        models=["gemma"],
        out_dir=tmp_path / "run",
        max_tokens=16,
        judge="gemma",
        judge_max_tokens=96,
        progress=False,
    )
    outcome = await run_eval(config, local_settings(tmp_path), backends=local_backends)
    (result,) = read_results(tmp_path / "run" / "results.jsonl")
    (check,) = result["checks"]
    assert check["type"] == "judge" and check["passed"] is not None, check  # judged, not a judge error
    assert 0.0 <= check["score"] <= 1.0 and result["judge_score"] == check["score"]
    assert outcome.summary["groups"][0]["judge"] == {"n": 1, "mean": check["score"], "errors": 0}
