"""`hybrid-chat eval run|compare|report|calibrate`: the command-line face of `evals`.

`register(subparsers)` adds the `eval` command to an argparse subparsers object; `handle(args)` runs
it and returns the exit code. Nothing heavy is imported until a command runs.

Exit codes: `run` 0 when the run completed (failed cases are results, not errors), 2 on bad arguments
or a bad dataset; `compare` 0 without regressions, 1 with (like `diff`), 2 on missing runs;
`calibrate` 0 when the router file is written, 2 when the runs cannot be calibrated on (says why).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MODELS = ("gemma", "gemini", "auto")


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _price(value: str) -> tuple[str, tuple[float, float]]:
    try:
        name, rest = value.split("=", 1)
        p_in, p_out = (float(x) for x in rest.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r}: expected BACKEND=IN,OUT (USD per 1M tokens), e.g. gemini=0.30,2.50"
        ) from None
    if name not in ("gemma", "gemini"):
        raise argparse.ArgumentTypeError(f"{name!r}: price a backend, gemma or gemini")
    return name, (p_in, p_out)


def _fraction(value: str) -> float:
    try:
        v = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a fraction, e.g. 0.95 or 95%") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{value!r}: must be between 0 and 1 (0% and 100%)")
    return v


def _prices(value: str) -> tuple[float, float]:
    try:
        p_in, p_out = (float(x) for x in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected IN,OUT (USD per 1M tokens)") from None
    return p_in, p_out


def _setting(value: str) -> tuple[str, str]:
    if "=" not in value:
        raise argparse.ArgumentTypeError(f"{value!r}: expected KEY=VALUE, e.g. gemma_max_model_len=1024")
    k, v = value.split("=", 1)
    return k.strip().lower().removeprefix("hybrid_chat_"), v


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `eval` (with `run`, `compare`, `report`) to `subparsers`; returns the `eval` parser."""
    ev = subparsers.add_parser(
        "eval",
        help="offline eval runs: datasets -> results, metrics, report, plots",
        description="Run eval datasets through the chat graph and report quality, latency, routing, cost.",
    )
    sub = ev.add_subparsers(dest="eval_command", required=True)

    run = sub.add_parser("run", help="run (or resume) datasets against models")
    run.add_argument(
        "--dataset",
        action="append",
        type=_csv,
        metavar="NAME|PATH[,...]",
        help="shipped set (smoke, memory, routing, safety) or a JSONL file; repeat or comma-separate "
        "(default: smoke)",
    )
    run.add_argument(
        "--model",
        type=_csv,
        default=list(MODELS),
        metavar="M[,M...]",
        help="gemma, gemini, auto, learned (with HYBRID_CHAT_ROUTER_FILE) (default: the first three)",
    )
    run.add_argument("--concurrency", type=int, default=2, help="cases in flight (default 2)")
    run.add_argument(
        "--out",
        type=Path,
        help="run directory; an existing one is resumed (default: eval-runs/<UTC timestamp>)",
    )
    run.add_argument("--temperature", type=float, default=0.0, help="fixed for every call (default 0)")
    run.add_argument("--seed", type=int, default=0, help="recorded with the run (default 0)")
    run.add_argument("--max-tokens", type=int, default=128, help="per answer unless a case sets it")
    run.add_argument(
        "--judge",
        choices=("none", "gemma", "gemini"),
        default="none",
        help="backend that scores `judge` checks (default none: judge checks not applicable)",
    )
    run.add_argument(
        "--price",
        type=_price,
        action="append",
        default=[],
        metavar="BACKEND=IN,OUT",
        help="USD per 1M input,output tokens (defaults: gemma 0,0; gemini 0.30,2.50)",
    )
    run.add_argument(
        "--set",
        dest="overrides",
        type=_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="settings override for this run, e.g. gemma_max_model_len=1024",
    )
    run.add_argument(
        "--retry-errors", action="store_true", help="on resume, redo cases that ended in an error"
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    cmp_ = sub.add_parser("compare", help="what regressed from run A to run B")
    cmp_.add_argument("a", type=Path, help="baseline run directory")
    cmp_.add_argument("b", type=Path, help="new run directory")
    cmp_.add_argument(
        "--latency-tolerance",
        type=float,
        default=0.2,
        help="relative latency increase that counts as a regression (default 0.2)",
    )
    cmp_.add_argument("--out", type=Path, help="also write the comparison (Markdown) to this file")

    rep = sub.add_parser("report", help="re-write summary, report and plots of a run from its results")
    rep.add_argument("dir", type=Path)

    cal = sub.add_parser(
        "calibrate",
        help="learn the `learned` router from runs where gemma and gemini answered the same cases",
        description="Fit P(Gemma's answer is at least as good as Gemini's) from the message and the "
        "conversation's length, choose the threshold on held-out data for a target, write the router file "
        "(HYBRID_CHAT_ROUTER_FILE) and its report (Markdown + PNG) beside it.",
    )
    cal.add_argument(
        "--runs", nargs="+", type=Path, required=True, metavar="DIR", help="eval run directories"
    )
    cal.add_argument(
        "--out", type=Path, default=Path("router.json"), help="router file (default router.json)"
    )
    goal = cal.add_mutually_exclusive_group()
    goal.add_argument(
        "--keep-quality",
        type=_fraction,
        metavar="F",
        help="keep this share of always-Gemini's quality, with the fewest turns to Gemini (default 0.95)",
    )
    goal.add_argument(
        "--max-gemini-share",
        type=_fraction,
        metavar="F",
        help="send at most this share of turns to Gemini, with the best quality (e.g. 0.3)",
    )
    cal.add_argument(
        "--test-size",
        type=_fraction,
        default=0.3,
        help="cases held out: one stratified fold in round(1/F), by case (default 0.3: a third)",
    )
    cal.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    cal.add_argument("--seed", type=int, default=0, help="for the split and the folds (default 0)")
    cal.add_argument(
        "--gemini-price", type=_prices, metavar="IN,OUT", help="USD per 1M tokens (default: Gemini 2.5 Flash)"
    )
    ev.set_defaults(handler=handle)
    return ev


def handle(args: argparse.Namespace) -> int:
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for noisy in ("graph.nodes", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if args.eval_command == "run":
        return _run(args)
    if args.eval_command == "compare":
        return _compare(args)
    if args.eval_command == "calibrate":
        return _calibrate(args)
    return _report(args)


def _settings(overrides: list[tuple[str, str]], out: Path) -> Any:
    from pydantic import ValidationError

    from graph.settings import Settings, get_settings

    base = get_settings()
    values = base.model_dump()
    unknown = [k for k, _ in overrides if k not in Settings.model_fields]
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
    if "sqlite_path" not in dict(overrides) and base.memory == "sqlite":
        values["sqlite_path"] = out / "memory.db"  # eval sessions stay out of the user's chat history
    values.update(dict(overrides))
    try:
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]
    except ValidationError as exc:
        raise ValueError(f"bad --set: {exc}") from None


def _missing(judge: str) -> list[str]:
    """The eval extras not installed (checked before a run, not after it: the report needs them)."""
    import importlib.util

    needed = ["matplotlib", "jsonschema"] + (["openevals"] if judge != "none" else [])
    return [m for m in needed if importlib.util.find_spec(m) is None]


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from rich.console import Console

    from evals.dataset import DatasetError
    from evals.runner import DEFAULT_PRICES, RunConfig, RunMismatch, run_eval

    # Not a terminal (CI logs, pipes): rich would squeeze the table into 80 columns.
    err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 140)
    if missing := _missing(args.judge):
        print(f"error: {', '.join(missing)} not installed: pip install 'hybrid-chat[eval]'", file=sys.stderr)
        return 2
    datasets = [d for group in (args.dataset or [["smoke"]]) for d in group]
    out = args.out or Path("eval-runs") / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    try:
        config = RunConfig(
            datasets=datasets,
            models=args.model,
            out_dir=out,
            concurrency=args.concurrency,
            temperature=args.temperature,
            seed=args.seed,
            max_tokens=args.max_tokens,
            judge=None if args.judge == "none" else args.judge,
            prices={**DEFAULT_PRICES, **dict(args.price)},
            retry_errors=args.retry_errors,
            progress=not args.no_progress,
        )
        settings = _settings(args.overrides, out)
        outcome = asyncio.run(run_eval(config, settings))
    except (DatasetError, RunMismatch, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)  # plain: a file:line must not be wrapped
        return 2
    except KeyboardInterrupt:
        err.print(f"\ninterrupted: finished cases are in {out / 'results.jsonl'}; run again to resume")
        return 130
    _print_summary(err, outcome.summary)
    err.print(f"ran {outcome.ran}, skipped {outcome.skipped} already finished")
    for name, path in outcome.files.items():
        err.print(f"  {name:9} {path}")
    return 0


def _print_summary(console: Any, summary: dict[str, Any]) -> None:
    from rich.table import Table

    from evals.report import summary_row

    # A narrow subset of report.md's summary table (which has them all), to fit a terminal.
    cols = {
        0: "dataset",
        1: "model",
        3: "passed",
        4: "err",
        5: "fallb.",
        6: "p50 ms",
        7: "p95 ms",
        8: "TTFT p50",
        10: "tok/s",
    }
    table = Table(title="eval summary (all figures: report.md)")
    for name in cols.values():
        table.add_column(name, no_wrap=True)
    for g in summary["groups"]:
        row = summary_row(g)
        table.add_row(*(row[i] for i in cols))
    console.print(table)
    r = summary["routing"]
    if r["n"]:
        console.print(f"routing accuracy (auto): {r['correct']}/{r['n']}")


def _compare(args: argparse.Namespace) -> int:
    from evals.report import compare_runs, render_compare

    try:
        result = compare_runs(args.a, args.b, latency_tolerance=args.latency_tolerance)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = render_compare(result)
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    return 1 if result["regressions"] else 0


def _report(args: argparse.Namespace) -> int:
    from evals.report import rebuild

    try:
        rebuild(args.dir)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(args.dir / "report.md")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    import shlex

    from evals import calibrate_report
    from evals.calibrate import CalibrationError, Target, calibrate, load_pairs, write_router
    from evals.dataset import DatasetError

    if args.max_gemini_share is not None:
        target = Target("max_gemini_share", args.max_gemini_share)
    else:
        target = Target("keep_quality", 0.95 if args.keep_quality is None else args.keep_quality)
    if not 0.0 < args.test_size < 1.0 or args.folds < 2:
        print("error: --test-size must be between 0 and 1 (exclusive), --folds at least 2", file=sys.stderr)
        return 2
    try:
        pairs = load_pairs(args.runs)
        cal = calibrate(
            pairs,
            target,
            test_size=args.test_size,
            folds=args.folds,
            seed=args.seed,
            sources=[str(r) for r in args.runs],
        )
    except (CalibrationError, DatasetError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    price = args.gemini_price or calibrate_report.GEMINI_FLASH_USD_PER_1M
    write_router(cal.model, args.out)
    command = (
        "hybrid-chat eval " + shlex.join(sys.argv[sys.argv.index("calibrate") :])
        if "calibrate" in sys.argv
        else ""
    )
    md, png = calibrate_report.write(cal, args.out, target=target.describe(), price=price, command=command)
    learned = calibrate_report.rows(cal, price)[-1]
    print(
        f"router: {args.out} (threshold {cal.model.threshold:.3f}; held out: {learned.share:.1%} of turns "
        f"to Gemini, quality {learned.quality:.3f})\nreport: {md}\nplot:   {png}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m evals ...`: the same commands as `hybrid-chat eval ...`."""
    parser = argparse.ArgumentParser(prog="python -m evals")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(["eval", *(argv if argv is not None else sys.argv[1:])])
    return handle(args)
