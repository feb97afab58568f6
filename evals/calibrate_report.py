"""The calibration report (Markdown + PNG): what the learned router buys, measured on held-out cases.

Quality versus the share of turns sent to Gemini for the learned router (every threshold), random
routing at the same share (its expectation: the straight line between the two), always-Gemma and
always-Gemini; the chosen threshold; cost per 1,000 turns at Gemini's list prices and Gemma's GPU
hours; RouteLLM's metrics (Ong et al., "RouteLLM: Learning to Route LLMs with Preference Data",
arXiv 2406.18665): PGR = (quality - weak) / (strong - weak), APGR = its mean over the share of calls to
the strong model from 0 to 100%, CPT(x%) = the smallest share of strong calls that recovers x% of the gap.
Here Gemma is the weak (cheap) model and Gemini the strong one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from evals.calibrate import Calibration, candidate_thresholds, gemini_share, routed_quality

# Gemini 2.5 Flash on Vertex AI, standard (not batch) text pricing, USD per 1M tokens (input, output),
# as published at general availability on 2025-06-17:
# https://cloud.google.com/vertex-ai/generative-ai/pricing (LiteLLM's bundled price map, 1.x, agrees).
# Check the page before quoting a bill; pass other prices with `--gemini-price IN,OUT`.
GEMINI_FLASH_USD_PER_1M = (0.30, 2.50)
GEMINI_PRICES_AS_OF = "2025-06-17"
TURNS = 1000


@dataclass(frozen=True)
class Point:
    threshold: float
    share: float  # of turns sent to Gemini
    quality: float


@dataclass(frozen=True)
class Row:
    name: str
    share: float
    quality: float
    usd: float  # Gemini's price per 1,000 turns
    gpu_hours: float | None  # Gemma's GPU time per 1,000 turns (one turn at a time: an upper bound)


def curve(p: Sequence[float], gemma: Sequence[float], gemini: Sequence[float]) -> list[Point]:
    pts = [Point(t, gemini_share(p, t), routed_quality(p, gemma, gemini, t)) for t in candidate_thresholds(p)]
    return sorted(pts, key=lambda pt: (pt.share, pt.quality))


def pgr(quality: float, weak: float, strong: float) -> float | None:
    return None if strong == weak else (quality - weak) / (strong - weak)


def apgr(points: Sequence[Point], weak: float, strong: float, steps: int = 100) -> float | None:
    """Mean PGR over shares 0..1 (the router's best quality at or below each share: a step curve)."""
    if strong == weak:
        return None
    total = 0.0
    for i in range(steps + 1):
        s = i / steps
        best = max((pt.quality for pt in points if pt.share <= s + 1e-12), default=weak)
        w = 0.5 if i in (0, steps) else 1.0  # trapezoid rule
        total += w * (best - weak) / (strong - weak)
    return total / steps


def cpt(points: Sequence[Point], weak: float, strong: float, x: float) -> float | None:
    """The smallest share of Gemini calls at which the router recovers x of the quality gap."""
    if strong == weak:
        return None
    ok = [pt.share for pt in points if (pt.quality - weak) / (strong - weak) >= x - 1e-12]
    return min(ok) if ok else None


def _costs(
    cal: Calibration, to_gemini: Sequence[float], price: tuple[float, float]
) -> tuple[float, float | None]:
    """USD to Gemini and Gemma GPU hours per 1,000 turns, each case weighted by its chance of each."""
    usd = gpu = 0.0
    seconds_known = all(q.gemma_seconds is not None for q in cal.test)
    for q, w in zip(cal.test, to_gemini, strict=True):
        tin, tout = q.gemini_tokens
        usd += w * (tin * price[0] + tout * price[1]) / 1e6
        gpu += (1 - w) * (q.gemma_seconds or 0.0)
    n = len(cal.test)
    return TURNS * usd / n, (TURNS * gpu / n / 3600 if seconds_known else None)


def rows(cal: Calibration, price: tuple[float, float] = GEMINI_FLASH_USD_PER_1M) -> list[Row]:
    p, t = cal.p_test, cal.model.threshold
    g = [q.gemma for q in cal.test]
    m = [q.gemini for q in cal.test]
    qg, qm = sum(g) / len(g), sum(m) / len(m)
    share = gemini_share(p, t)
    out = []
    for name, weights, quality in (
        ("always Gemma", [0.0] * len(p), qg),
        ("always Gemini", [1.0] * len(p), qm),
        (f"random, {share:.0%} to Gemini", [share] * len(p), (1 - share) * qg + share * qm),
        (f"learned (threshold {t:.3f})", [float(pi < t) for pi in p], routed_quality(p, g, m, t)),
    ):
        usd, gpu = _costs(cal, weights, price)
        out.append(Row(name, sum(weights) / len(weights), quality, usd, gpu))
    return out


def _fmt(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def render(
    cal: Calibration,
    *,
    target: str,
    png: str,
    price: tuple[float, float] = GEMINI_FLASH_USD_PER_1M,
    command: str = "",
) -> str:
    g = [q.gemma for q in cal.test]
    m = [q.gemini for q in cal.test]
    qg, qm = sum(g) / len(g), sum(m) / len(m)
    pts = curve(cal.p_test, g, m)
    table = rows(cal, price)
    learned = table[-1]
    meta = cal.model.metadata
    lines = [
        "# Learned router: calibration",
        "",
        f"- Runs: {', '.join(meta.get('runs') or []) or '—'}",
        f"- Cases answered and graded by both backends: {meta['cases']} "
        f"({meta['train_cases']} to fit and choose the threshold, {meta['held_out_cases']} held out)",
        f"- Target: {target}",
        f"- Chosen threshold: **{cal.model.threshold:.3f}** (Gemma when P(Gemma as good) >= it), chosen on "
        f"out-of-fold predictions of the fitting cases; regularisation C = {cal.c:g} by "
        f"{meta['cv_folds']}-fold cross-validation (log loss)",
        "",
        "## Held-out cases",
        "",
        "| routing | turns to Gemini | quality | of Gemini's quality | PGR | Gemini USD / 1,000 turns "
        "| Gemma GPU-hours / 1,000 turns |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r.name} | {r.share:.1%} | {r.quality:.3f} | {_fmt(r.quality / qm if qm else None, '.1%')} "
            f"| {_fmt(pgr(r.quality, qg, qm), '.2f')} | {r.usd:.4f} | {_fmt(r.gpu_hours, '.3f')} |"
        )
    cpt50, cpt80 = cpt(pts, qg, qm, 0.5), cpt(pts, qg, qm, 0.8)
    lines += [
        "",
        "RouteLLM's metrics, same held-out cases (Gemma weak, Gemini strong):",
        "",
        "| metric | learned | random |",
        "|---|---|---|",
        f"| APGR (mean PGR over 0-100% to Gemini) | {_fmt(apgr(pts, qg, qm), '.3f')} | "
        f"{'—' if qm == qg else '0.500'} |",
        f"| CPT(50%): turns to Gemini to recover half the gap | {_fmt(cpt50, '.1%')} | "
        f"{'—' if qm == qg else '50.0%'} |",
        f"| CPT(80%) | {_fmt(cpt80, '.1%')} | {'—' if qm == qg else '80.0%'} |",
        "",
        f"![quality versus share of turns to Gemini]({png})",
        "",
        f"Prices: Gemini 2.5 Flash, USD {price[0]:g} per 1M input tokens and {price[1]:g} per 1M output "
        f"tokens (Vertex AI list price published {GEMINI_PRICES_AS_OF}, unless `--gemini-price` was given), "
        "applied to the tokens each held-out case measured on Gemini. Gemma has no per-token price: its "
        "GPU-hours assume one turn at a time on one GPU (an upper bound: vLLM batches concurrent turns) "
        "from the model time each case measured on Gemma.",
        "",
        f"Learned router at its threshold: {learned.share:.1%} of turns to Gemini, "
        f"quality {learned.quality:.3f} "
        f"against {qm:.3f} for always-Gemini and {qg:.3f} for always-Gemma.",
    ]
    if command:
        lines += ["", f"Produced by: `{command}`"]
    return "\n".join(lines) + "\n"


def plot(cal: Calibration, path: Path) -> None:
    from evals.report import _pyplot

    plt = _pyplot()
    g = [q.gemma for q in cal.test]
    m = [q.gemini for q in cal.test]
    qg, qm = sum(g) / len(g), sum(m) / len(m)
    pts = curve(cal.p_test, g, m)
    t = cal.model.threshold
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.plot([100 * p.share for p in pts], [p.quality for p in pts], "o-", ms=3, label="learned router")
    ax.plot([0, 100], [qg, qm], "--", color="grey", label="random routing (expected)")
    ax.scatter([0], [qg], s=60, marker="s", zorder=3, label="always Gemma")
    ax.scatter([100], [qm], s=60, marker="D", zorder=3, label="always Gemini")
    share, quality = 100 * gemini_share(cal.p_test, t), routed_quality(cal.p_test, g, m, t)
    ax.scatter(
        [share], [quality], s=160, marker="*", color="red", zorder=4, label=f"chosen threshold {t:.3f}"
    )
    ax.set_xlabel("turns sent to Gemini (%)")
    ax.set_ylabel("mean score (held-out cases)")
    ax.set_title(f"Learned routing on {len(cal.test)} held-out cases")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(
    cal: Calibration,
    out: Path,
    *,
    target: str,
    price: tuple[float, float] = GEMINI_FLASH_USD_PER_1M,
    command: str = "",
) -> tuple[Path, Path]:
    """`<out stem>.report.md` and `<out stem>.png` beside the router file."""
    md, png = out.with_suffix(".report.md"), out.with_suffix(".png")
    plot(cal, png)
    md.write_text(render(cal, target=target, png=png.name, price=price, command=command), encoding="utf-8")
    return md, png
