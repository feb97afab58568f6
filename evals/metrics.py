"""Figures of a run, computed from the result records alone (so `compare` and tests can recompute them).

Definitions (the report repeats them):
- pass rate: cases whose every applicable check passed / cases with at least one applicable check. An
  error (no answer) is a failed case. Inapplicable checks (no judge configured, a route check with a
  pinned model) count neither way.
- latency, TTFT: end to end, as the caller sees them: from sending the last user turn to the last token
  (memory read and write included) / to the first streamed token. Over answered cases only (errors
  fail fast and would flatter the figures). Percentiles interpolate linearly (numpy's default).
- tokens/s: the graph's own figure for the last turn (output tokens / generation time after the first
  token), median.
- fallbacks: answers served by the other backend because the routed one failed before its first token.
- judge: mean score of the judged answers; a judge call that failed (timeout, unparsable output)
  leaves the check not applicable and is counted in `judge.errors`.
- routing accuracy: over cases with an `expected_route` run with `auto`: the router's choice (before
  any fallback) equals the expected backend. Confusion matrix rows: expected; columns: routed.
- cost: input and output tokens of every turn priced per backend that answered it (USD per 1M tokens).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

CHECK_TYPES = (
    "contains",
    "not_contains",
    "regex",
    "json_schema",
    "max_latency_ms",
    "judge",
    "expected_route",
)
ALL = "ALL"
ROUTES = ("gemma", "gemini")
ROUTED_COLUMNS = ("gemma", "gemini", "none")


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks, computed exactly as numpy.percentile's default
    method (same operations, so figures formatted from either agree to the last digit)."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * (q / 100)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    t = pos - lo
    a, b = xs[lo], xs[hi]
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


def _dist(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "mean": (sum(values) / len(values)) if values else None,
    }


def group_stats(results: list[dict[str, Any]]) -> dict[str, Any]:
    judged = [r for r in results if r.get("passed") is not None]
    answered = [r for r in results if r.get("status") == "ok"]
    checks: dict[str, dict[str, int]] = {}
    for r in results:
        for c in r.get("checks") or []:
            if c.get("passed") is None:
                continue
            slot = checks.setdefault(c["type"], {"passed": 0, "evaluated": 0})
            slot["evaluated"] += 1
            slot["passed"] += 1 if c["passed"] else 0
    for slot in checks.values():
        slot["rate"] = slot["passed"] / slot["evaluated"]
    judge_checks = [c for r in results for c in r.get("checks") or [] if c["type"] == "judge"]
    judge_scores = [c["score"] for c in judge_checks if c.get("score") is not None]
    judge_errors = sum(1 for c in judge_checks if (c.get("detail") or "").startswith("judge failed"))
    tps = [r["tokens_per_s"] for r in answered if r.get("tokens_per_s") is not None]
    passed = sum(1 for r in judged if r["passed"])
    return {
        "cases": len(results),
        "evaluated": len(judged),
        "passed": passed,
        "pass_rate": (passed / len(judged)) if judged else None,
        "errors": sum(1 for r in results if r.get("status") == "error"),
        "fallbacks": sum(1 for r in results if r.get("fallback")),
        "checks": checks,
        "judge": {
            "n": len(judge_scores),
            "mean": (sum(judge_scores) / len(judge_scores)) if judge_scores else None,
            "errors": judge_errors,
        },
        "latency_ms": _dist([r["latency_ms"] for r in answered if r.get("latency_ms") is not None]),
        "ttft_ms": _dist([r["ttft_ms"] for r in answered if r.get("ttft_ms") is not None]),
        "tokens_per_s": {"n": len(tps), "median": percentile(tps, 50)},
        "input_tokens": sum(r.get("input_tokens_total") or 0 for r in results),
        "output_tokens": sum(r.get("output_tokens_total") or 0 for r in results),
        "cost_usd": sum(r.get("cost_usd") or 0.0 for r in results),
    }


def routing_stats(results: list[dict[str, Any]]) -> dict[str, Any]:
    labelled = [r for r in results if r.get("model") == "auto" and r.get("expected_route")]
    confusion = {e: dict.fromkeys(ROUTED_COLUMNS, 0) for e in ROUTES}
    correct = 0
    for r in labelled:
        routed = r.get("routed_backend") or "none"
        confusion[r["expected_route"]][routed if routed in ROUTES else "none"] += 1
        correct += 1 if routed == r["expected_route"] else 0
    return {
        "n": len(labelled),
        "correct": correct,
        "accuracy": (correct / len(labelled)) if labelled else None,
        "confusion": confusion,
        "misrouted": [
            {
                "dataset": r["dataset"],
                "case_id": r["case_id"],
                "expected": r["expected_route"],
                "routed": r.get("routed_backend"),
                "route_reason": r.get("route_reason"),
            }
            for r in labelled
            if r.get("routed_backend") != r["expected_route"]
        ],
    }


def backend_stats(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Latency per backend that answered (pinned and auto runs alike)."""
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        if r.get("status") == "ok" and r.get("backend"):
            by[r["backend"]].append(r)
    out = {}
    for backend in sorted(by):
        rs = by[backend]
        tps = [r["tokens_per_s"] for r in rs if r.get("tokens_per_s") is not None]
        out[backend] = {
            "answers": len(rs),
            "latency_ms": _dist([r["latency_ms"] for r in rs if r.get("latency_ms") is not None]),
            "ttft_ms": _dist([r["ttft_ms"] for r in rs if r.get("ttft_ms") is not None]),
            "tokens_per_s": {"n": len(tps), "median": percentile(tps, 50)},
        }
    return out


def summarize(results: list[dict[str, Any]], run_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per (dataset, model) and per model over all datasets (dataset `ALL`), plus routing and backends."""
    datasets = sorted({r["dataset"] for r in results})
    models = [m for m in ("gemma", "gemini", "auto") if any(r["model"] == m for r in results)]
    groups = []
    for ds in [*datasets, ALL]:
        for model in models:
            rs = [r for r in results if r["model"] == model and (ds == ALL or r["dataset"] == ds)]
            if rs and not (ds == ALL and len(datasets) == 1):
                groups.append({"dataset": ds, "model": model, **group_stats(rs)})
    return {
        "run": run_info or {},
        "datasets": datasets,
        "models": models,
        "groups": groups,
        "routing": routing_stats(results),
        "by_backend": backend_stats(results),
    }


def find_group(summary: dict[str, Any], dataset: str, model: str) -> dict[str, Any] | None:
    return next((g for g in summary["groups"] if g["dataset"] == dataset and g["model"] == model), None)
