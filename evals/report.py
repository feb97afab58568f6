"""Reports of a run (`summary.json`, `report.md`, PNG plots) and `compare A B`.

Every figure is computed from `results.jsonl` by `evals.metrics`; the Markdown only formats them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evals.metrics import ALL, CHECK_TYPES, ROUTED_COLUMNS, ROUTES, find_group, summarize
from evals.results import RESULTS, key_of, latest, read_results

SUMMARY = "summary.json"
REPORT = "report.md"
PLOTS = {
    "latency": "latency_by_backend.png",
    "pass_rate": "pass_rate.png",
    "confusion": "routing_confusion.png",
}


# --- formatting (tests parse these) ------------------------------------------------------------
def fmt_num(v: float | None, digits: int = 0) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def fmt_rate(passed: int, n: int) -> str:
    return "—" if n == 0 else f"{passed}/{n} ({100 * passed / n:.1f}%)"


def fmt_cost(v: float) -> str:
    return f"{v:.6f}"


SUMMARY_HEADER = (
    "dataset",
    "model",
    "cases",
    "passed",
    "errors",
    "fallbacks",
    "latency p50 ms",
    "latency p95 ms",
    "TTFT p50 ms",
    "TTFT p95 ms",
    "tok/s p50",
    "judge mean",
    "tokens in",
    "tokens out",
    "est. cost USD",
)


def summary_row(g: dict[str, Any]) -> list[str]:
    return [
        g["dataset"],
        g["model"],
        str(g["cases"]),
        fmt_rate(g["passed"], g["evaluated"]),
        str(g["errors"]),
        str(g["fallbacks"]),
        fmt_num(g["latency_ms"]["p50"]),
        fmt_num(g["latency_ms"]["p95"]),
        fmt_num(g["ttft_ms"]["p50"]),
        fmt_num(g["ttft_ms"]["p95"]),
        fmt_num(g["tokens_per_s"]["median"], 1),
        fmt_num(g["judge"]["mean"], 2),
        str(g["input_tokens"]),
        str(g["output_tokens"]),
        fmt_cost(g["cost_usd"]),
    ]


def _table(header: list[str] | tuple[str, ...], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows]
    return out


def render_markdown(summary: dict[str, Any], results: list[dict[str, Any]], title: str) -> str:
    run = summary.get("run") or {}
    ident = run.get("identity") or {}
    lines = [f"# Eval report: {title}", ""]
    lines.append(
        f"Generated {datetime.now(UTC).isoformat(timespec='seconds')} from `{RESULTS}` "
        f"({len(results)} results). Temperature {ident.get('temperature')}, max_tokens "
        f"{ident.get('max_tokens')}, seed {ident.get('seed')}"
        + ("" if run.get("seed_sent", True) else " (recorded; the graph's input has no seed key yet)")
        + f", concurrency {run.get('concurrency')}, judge {run.get('judge') or 'none'}."
    )
    lines.append("")
    for name, label in (run.get("backends") or {}).items():
        lines.append(f"- **{name}**: {label}")
    settings = run.get("settings") or {}
    if settings:
        lines.append("- settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    prices = run.get("prices_usd_per_1m_tokens") or {}
    if prices:
        lines.append(
            "- prices (USD per 1M tokens in/out): "
            + ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in prices.items())
        )
    lines += ["", "## Summary", ""]
    lines += _table(SUMMARY_HEADER, [summary_row(g) for g in summary["groups"]])
    lines += [
        "",
        "`passed`: cases whose every applicable check passed (errors count as failed). Latency and TTFT:",
        "end to end for the last user turn, answered cases only. `ALL`: every dataset of the run.",
        "",
    ]
    for g in summary["groups"]:
        if g["model"] in ROUTES and g["dataset"] != ALL and g["fallbacks"]:
            other = "gemini" if g["model"] == "gemma" else "gemma"
            lines.append(
                f"**Note:** {g['fallbacks']} answers of pinned {g['model']} came from {other} (fallback) "
                f"in `{g['dataset']}`: its figures mix backends. To measure {g['model']} alone: "
                "`--set fallback_enabled=false`."
            )
            lines.append("")
    lines += [
        "## Pass rate per check",
        "",
    ]
    rows = []
    for g in summary["groups"]:
        cells = []
        for t in CHECK_TYPES:
            c = g["checks"].get(t)
            cells.append(f"{c['passed']}/{c['evaluated']}" if c else "—")
        rows.append([g["dataset"], g["model"], *cells])
    lines += _table(["dataset", "model", *CHECK_TYPES], rows)
    judge_errors = sum(g["judge"]["errors"] for g in summary["groups"] if g["dataset"] != ALL)
    if judge_errors:
        lines += ["", f"{judge_errors} judge call(s) failed: those answers were not judged (not counted)."]

    routing = summary["routing"]
    lines += ["", "## Routing (`auto`)", ""]
    if routing["n"]:
        lines.append(f"Routing accuracy: {fmt_rate(routing['correct'], routing['n'])}")
        lines.append("")
        conf = routing["confusion"]
        lines += _table(
            ["expected \\ routed", *ROUTED_COLUMNS],
            [[e, *(str(conf[e][c]) for c in ROUTED_COLUMNS)] for e in ROUTES],
        )
        if routing["misrouted"]:
            lines += ["", "Misrouted:", ""]
            lines += [
                f"- {m['dataset']}/{m['case_id']}: expected {m['expected']}, routed {m['routed']} "
                f"({m['route_reason']})"
                for m in routing["misrouted"]
            ]
    else:
        lines.append("No case with an expected route was run with `auto`.")

    lines += ["", "## Latency per answering backend", ""]
    rows = [
        [
            b,
            str(s["answers"]),
            fmt_num(s["latency_ms"]["p50"]),
            fmt_num(s["latency_ms"]["p95"]),
            fmt_num(s["ttft_ms"]["p50"]),
            fmt_num(s["ttft_ms"]["p95"]),
            fmt_num(s["tokens_per_s"]["median"], 1),
        ]
        for b, s in summary["by_backend"].items()
    ]
    lines += _table(
        ["backend", "answers", "latency p50 ms", "latency p95 ms", "TTFT p50 ms", "TTFT p95 ms", "tok/s p50"],
        rows,
    )

    lines += ["", "## Plots", ""]
    lines += [f"![{k}]({v})" for k, v in PLOTS.items()]

    failed = [r for r in results if r.get("passed") is False]
    lines += ["", f"## Failed cases ({len(failed)})", ""]
    if failed:
        rows = []
        for r in sorted(failed, key=lambda r: (r["dataset"], r["case_id"], r["model"])):
            why = "; ".join(
                f"{c['type']}: {c['detail']}" if c["detail"] else c["type"]
                for c in r["checks"]
                if c.get("passed") is False
            )
            if r.get("status") == "error":
                why = f"error: {r.get('error')}"
            answer = (r.get("answer") or "").strip().replace("\n", " ")
            rows.append(
                [
                    r["dataset"],
                    r["case_id"],
                    r["model"],
                    why[:200],
                    answer[:120] + ("…" if len(answer) > 120 else ""),
                ]
            )
        lines += _table(["dataset", "case", "model", "why", "answer"], rows)
    return "\n".join(lines) + "\n"


# --- plots ---------------------------------------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency(results: list[dict[str, Any]], path: Path) -> None:
    plt = _pyplot()
    backends = sorted({r["backend"] for r in results if r.get("status") == "ok" and r.get("backend")})
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, key, label in (
        (axes[0], "latency_ms", "latency (ms)"),
        (axes[1], "ttft_ms", "time to first token (ms)"),
    ):
        data = [
            [
                r[key]
                for r in results
                if r.get("status") == "ok" and r.get("backend") == b and r.get(key) is not None
            ]
            for b in backends
        ]
        if any(data):
            # Every answer as a dot (with a little horizontal jitter), the box over them; log scale:
            # a queued or long answer is 100x a short one.
            ax.boxplot(data, tick_labels=backends, showfliers=False, widths=0.5)
            for i, d in enumerate(data, start=1):
                jitter = [i + 0.15 * ((k * 7919) % 11 - 5) / 5 for k in range(len(d))]
                ax.scatter(jitter, d, s=10, alpha=0.5)
            if min(min(d) for d in data if d) > 0:
                ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, "no answers", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(label)
        ax.set_ylabel("ms (log scale)" if ax.get_yscale() == "log" else "ms")
    fig.suptitle("End-to-end latency per answering backend")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_pass_rate(summary: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    datasets = summary["datasets"]
    models = summary["models"]
    fig, ax = plt.subplots(figsize=(max(5, 1.8 * len(datasets) + 2), 4))
    width = min(0.25, 0.8 / max(1, len(models)))
    for i, model in enumerate(models):
        xs, ys = [], []
        for j, ds in enumerate(datasets):
            g = find_group(summary, ds, model)
            if g and g["pass_rate"] is not None:
                xs.append(j + i * width)
                ys.append(100 * g["pass_rate"])
        bars = ax.bar(xs, ys, width, label=model)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(datasets))], datasets)
    ax.set_ylim(0, 110)
    ax.set_ylabel("cases passed (%)")
    ax.set_title("Pass rate per dataset and model")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(summary: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    routing = summary["routing"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if routing["n"]:
        conf = routing["confusion"]
        matrix = [[conf[e][c] for c in ROUTED_COLUMNS] for e in ROUTES]
        ax.imshow(matrix, cmap="Blues", vmin=0)
        top = max(max(row) for row in matrix) or 1
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                color = "white" if v > top / 2 else "black"
                ax.text(j, i, str(v), ha="center", va="center", fontsize=14, color=color)
        ax.set_xticks(range(len(ROUTED_COLUMNS)), ROUTED_COLUMNS)
        ax.set_yticks(range(len(ROUTES)), ROUTES)
        ax.set_xlabel("routed by auto")
        ax.set_ylabel("expected")
        ax.set_title(f"Routing: {routing['correct']}/{routing['n']} correct")
    else:
        ax.axis("off")
        ax.text(0.5, 0.5, "no labelled case was run with auto", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_reports(
    out: Path, results: list[dict[str, Any]], run_info: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Path]]:
    summary = summarize(results, run_info)
    files = {"results": out / RESULTS, "summary": out / SUMMARY, "report": out / REPORT}
    files["summary"].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    plot_latency(results, out / PLOTS["latency"])
    plot_pass_rate(summary, out / PLOTS["pass_rate"])
    plot_confusion(summary, out / PLOTS["confusion"])
    files.update({k: out / v for k, v in PLOTS.items()})
    files["report"].write_text(render_markdown(summary, results, out.name), encoding="utf-8")
    return summary, files


def rebuild(out: Path) -> dict[str, Any]:
    """Re-write the reports of a run directory from its results (e.g. after editing prices)."""
    run_info = (
        json.loads((out / "run.json").read_text(encoding="utf-8")) if (out / "run.json").exists() else {}
    )
    results = list(latest(read_results(out / RESULTS)).values())
    summary, _ = write_reports(out, results, run_info)
    return summary


# --- compare ---------------------------------------------------------------------------------------
def compare_runs(a: Path, b: Path, *, latency_tolerance: float = 0.2, latency_floor_ms: float = 50.0) -> dict:
    """What changed from run A to run B: per group figures and per case verdicts.

    Regressions: a case that passed in A and fails in B (same case fingerprint); per group, a lower
    pass rate, more errors or fallbacks, lower routing accuracy, or a p50/p95 latency or TTFT higher by
    more than `latency_tolerance` (relative) and `latency_floor_ms` (absolute).
    """
    ra, rb = latest(read_results(a / RESULTS)), latest(read_results(b / RESULTS))
    if not ra:
        raise FileNotFoundError(f"{a / RESULTS}: no results")
    if not rb:
        raise FileNotFoundError(f"{b / RESULTS}: no results")
    common = sorted(set(ra) & set(rb))
    sa = summarize([ra[k] for k in common])
    sb = summarize([rb[k] for k in common])
    regressions: list[str] = []
    cases = {"regressed": [], "fixed": [], "changed": [], "new_errors": []}
    for k in common:
        x, y = ra[k], rb[k]
        name = "/".join(k)
        if x.get("fingerprint") != y.get("fingerprint"):
            cases["changed"].append(name)
            continue
        if x.get("passed") is True and y.get("passed") is False:
            cases["regressed"].append(name)
        elif x.get("passed") is False and y.get("passed") is True:
            cases["fixed"].append(name)
        if x.get("status") == "ok" and y.get("status") == "error":
            cases["new_errors"].append(name)
    regressions += [f"case {c} passed in A, fails in B" for c in cases["regressed"]]

    groups = []
    for gb in sb["groups"]:
        ga = find_group(sa, gb["dataset"], gb["model"])
        if ga is None:
            continue
        flags = []
        if ga["pass_rate"] is not None and gb["pass_rate"] is not None and gb["pass_rate"] < ga["pass_rate"]:
            flags.append("pass rate")
        if gb["errors"] > ga["errors"]:
            flags.append("errors")
        if gb["fallbacks"] > ga["fallbacks"]:
            flags.append("fallbacks")
        for metric in ("latency_ms", "ttft_ms"):
            for q in ("p50", "p95"):
                va, vb = ga[metric][q], gb[metric][q]
                if (
                    va is not None
                    and vb is not None
                    and vb - va > max(latency_floor_ms, latency_tolerance * va)
                ):
                    flags.append(f"{metric.removesuffix('_ms')} {q}")
        groups.append({"dataset": gb["dataset"], "model": gb["model"], "a": ga, "b": gb, "regressed": flags})
        if flags and gb["dataset"] != ALL:
            regressions.append(f"{gb['dataset']}/{gb['model']}: " + ", ".join(flags))
    rta, rtb = sa["routing"], sb["routing"]
    if rta["accuracy"] is not None and rtb["accuracy"] is not None and rtb["accuracy"] < rta["accuracy"]:
        regressions.append(f"routing accuracy {rta['accuracy']:.1%} -> {rtb['accuracy']:.1%}")
    return {
        "a": str(a),
        "b": str(b),
        "common": len(common),
        "only_a": len(set(ra) - set(rb)),
        "only_b": len(set(rb) - set(ra)),
        "groups": groups,
        "cases": cases,
        "routing": {"a": rta["accuracy"], "b": rtb["accuracy"]},
        "regressions": regressions,
    }


def _delta(va: float | None, vb: float | None, digits: int = 0, pct: bool = False) -> str:
    if va is None or vb is None:
        return f"{fmt_num(va, digits)} → {fmt_num(vb, digits)}"
    k = 100 if pct else 1
    return f"{va * k:.{digits}f} → {vb * k:.{digits}f} ({(vb - va) * k:+.{digits}f})"


def render_compare(c: dict[str, Any]) -> str:
    lines = [f"# Compare {c['a']} (A) → {c['b']} (B)", ""]
    lines.append(f"{c['common']} results in both; {c['only_a']} only in A, {c['only_b']} only in B.")
    lines += [""]
    rows = []
    for g in c["groups"]:
        a, b = g["a"], g["b"]
        rows.append(
            [
                g["dataset"],
                g["model"],
                _delta(a["pass_rate"], b["pass_rate"], 1, pct=True),
                f"{a['errors']} → {b['errors']}",
                f"{a['fallbacks']} → {b['fallbacks']}",
                _delta(a["latency_ms"]["p50"], b["latency_ms"]["p50"]),
                _delta(a["latency_ms"]["p95"], b["latency_ms"]["p95"]),
                _delta(a["ttft_ms"]["p50"], b["ttft_ms"]["p50"]),
                _delta(a["cost_usd"], b["cost_usd"], 6),
                ", ".join(g["regressed"]) or "—",
            ]
        )
    lines += _table(
        [
            "dataset",
            "model",
            "pass rate %",
            "errors",
            "fallbacks",
            "latency p50 ms",
            "latency p95 ms",
            "TTFT p50 ms",
            "cost USD",
            "regressed",
        ],
        rows,
    )
    ra, rb = c["routing"]["a"], c["routing"]["b"]
    if ra is not None or rb is not None:
        lines += ["", f"Routing accuracy: {_delta(ra, rb, 1, pct=True)} %"]
    for key, label in (
        ("regressed", "Cases that regressed (passed in A, fail in B)"),
        ("fixed", "Cases fixed (failed in A, pass in B)"),
        ("new_errors", "Cases that newly error"),
        ("changed", "Cases whose definition changed (not compared)"),
    ):
        if c["cases"][key]:
            lines += ["", f"## {label}: {len(c['cases'][key])}", ""] + [f"- {x}" for x in c["cases"][key]]
    lines += ["", f"## Verdict: {len(c['regressions'])} regression(s)", ""]
    lines += [f"- {r}" for r in c["regressions"]] or ["No regression."]
    return "\n".join(lines) + "\n"


__all__ = ["compare_runs", "key_of", "rebuild", "render_compare", "render_markdown", "write_reports"]
