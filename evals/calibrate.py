"""`hybrid-chat eval calibrate`: learn from eval runs which turns Gemma answers as well as Gemini.

Input: run directories (`hybrid-chat eval run ... --model gemma,gemini`) in which the same cases were
answered by both backends. Each answer's score is its judge score when judged, else the share of its
checks that passed (latency and routing checks left out: they do not grade the answer); an answer that
ended in an error scores 0; an answer given by the other backend (a fallback) is left out, as is a case
with nothing to grade. The label of a case: Gemma's score >= Gemini's.

Fit (scikit-learn): TF-IDF of the last user message (tokenised as `graph.policies.learned` reads it)
plus the conversation's length, logistic regression; C chosen by grouped, stratified k-fold
cross-validation (log loss); the router is the mean of the folds' models (see `calibrate`).
Cases are split once, by case, into a training part and a held-out part:
the threshold is chosen on the out-of-fold predictions of the training part (each predicted by a model
that did not see it), and every figure of the report is measured on the held-out part, which took part
in neither the fit nor the choice of threshold.

Output: the router file (JSON, no pickle; see `graph.policies.learned`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

from evals.dataset import SHIPPED, Case, load_dataset, resolve
from evals.results import RESULTS, latest, read_results
from evals.runner import RUN_FILE
from graph.policies.learned import TOKENIZER, RouterModel, length_feature, message_text

UNGRADED = ("max_latency_ms", "expected_route")
C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
MAX_FEATURES = 5000
MIN_PAIRS = 20


class CalibrationError(ValueError):
    """The runs cannot be calibrated on (too few pairs, one label only, a dataset not found...)."""


@dataclass(frozen=True)
class Pair:
    """One case answered by both backends."""

    key: str  # dataset/case_id (a case run several times stays on one side of every split)
    text: str  # the last user message, as the router sees it
    prompt_tokens: int  # the conversation's approximate size, as the graph estimates it when routing
    gemma: float
    gemini: float
    gemini_tokens: tuple[int, int] = (0, 0)  # measured input, output tokens of Gemini's answer
    gemma_seconds: float | None = None  # Gemma's measured model time for the case
    tags: tuple[str, ...] = ()

    @property
    def label(self) -> int:
        return int(self.gemma >= self.gemini)


@dataclass(frozen=True)
class Target:
    """What the threshold must achieve: keep a share of Gemini's quality, or cap Gemini's share."""

    kind: Literal["keep_quality", "max_gemini_share"]
    value: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.value <= 1.0:
            raise ValueError(f"target {self.kind} must be between 0 and 1, got {self.value}")

    def describe(self) -> str:
        if self.kind == "keep_quality":
            return f"keep {self.value:.0%} of always-Gemini's quality, fewest turns to Gemini"
        return f"at most {self.value:.0%} of turns to Gemini, best quality"


# --- reading runs -------------------------------------------------------------------------------
def score_of(result: dict[str, Any]) -> float | None:
    """The answer's grade in [0, 1], or None when nothing grades it."""
    if result.get("status") != "ok":
        return 0.0
    if result.get("judge_score") is not None:
        return float(result["judge_score"])
    graded = [c["passed"] for c in result.get("checks", []) if c["type"] not in UNGRADED]
    graded = [p for p in graded if p is not None]
    return sum(graded) / len(graded) if graded else None


def _datasets(run: Path, info: dict[str, Any]) -> dict[str, dict[str, Case]]:
    out: dict[str, dict[str, Case]] = {}
    for name, path in (info.get("datasets") or {}).items():
        if Path(path).exists():
            ds = load_dataset(path, name=name)
        elif name in SHIPPED:
            ds = resolve(name)
        else:
            raise CalibrationError(f"{run}: dataset {name!r} not found at {path}")
        out[name] = {c.id: c for c in ds.cases}
    return out


def prompt_tokens(texts: Sequence[str], system: str | None, result: dict[str, Any]) -> int:
    """The last turn's prompt size as the graph estimates it when routing (langchain-core's approximate
    count of the user turns, plus the system prompt; earlier answers by the tokens measured for them)."""
    from langchain_core.messages import HumanMessage
    from langchain_core.messages.utils import count_tokens_approximately

    earlier = sum(t.get("output_tokens") or 0 for t in (result.get("turns") or [])[:-1])
    users = count_tokens_approximately([HumanMessage(t) for t in texts])
    return int(users + len(system or "") // 4 + earlier)


def load_pairs(runs: Sequence[Path], gemma_max_model_len: int = 16384) -> list[Pair]:
    """Every case answered (and graded) by both backends in each run."""
    pairs: list[Pair] = []
    for run in runs:
        info_path, results_path = run / RUN_FILE, run / RESULTS
        if not results_path.exists() or not info_path.exists():
            raise CalibrationError(f"{run}: not an eval run directory (no {RESULTS} or {RUN_FILE})")
        info = json.loads(info_path.read_text(encoding="utf-8"))
        cases = _datasets(run, info)
        by_case: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        for (ds, case_id, model), r in latest(read_results(results_path)).items():
            if model in ("gemma", "gemini") and not r.get("fallback") and r.get("backend") in (None, model):
                by_case.setdefault((ds, case_id), {})[model] = r
        for (ds, case_id), both in sorted(by_case.items()):
            case = cases.get(ds, {}).get(case_id)
            if case is None or len(both) < 2:
                continue
            g, m = score_of(both["gemma"]), score_of(both["gemini"])
            if g is None or m is None:
                continue
            texts = case.render(gemma_max_model_len)
            seconds = both["gemma"].get("model_latency_ms") or both["gemma"].get("latency_ms")
            pairs.append(
                Pair(
                    key=f"{ds}/{case_id}",
                    text=message_text(texts[-1]),
                    prompt_tokens=prompt_tokens(texts, case.system_prompt, both["gemini"]),
                    gemma=g,
                    gemini=m,
                    gemini_tokens=(
                        int(both["gemini"].get("input_tokens_total") or 0),
                        int(both["gemini"].get("output_tokens_total") or 0),
                    ),
                    gemma_seconds=seconds / 1000 if seconds else None,
                    tags=tuple(case.tags),
                )
            )
    return pairs


# --- fitting ------------------------------------------------------------------------------------
def make_vectorizer() -> Any:
    """scikit-learn's TF-IDF, configured exactly as `graph.policies.learned` tokenises."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(
        lowercase=TOKENIZER["lowercase"],
        token_pattern=TOKENIZER["token_pattern"],
        ngram_range=tuple(TOKENIZER["ngram_range"]),
        sublinear_tf=TOKENIZER["sublinear_tf"],
        norm=TOKENIZER["norm"],
        max_features=MAX_FEATURES,
    )


def design(vectorizer: Any, texts: Sequence[str], tokens: Sequence[int], *, fit: bool = False) -> Any:
    """TF-IDF columns, then the length column (as `RouterModel.decision_function` adds them)."""
    from scipy.sparse import csr_matrix, hstack

    tfidf = vectorizer.fit_transform(texts) if fit else vectorizer.transform(texts)
    length = csr_matrix([[length_feature(t)] for t in tokens])
    return hstack([tfidf, length]).tocsr()


def routed_quality(p: Sequence[float], gemma: Sequence[float], gemini: Sequence[float], t: float) -> float:
    """Mean score when Gemma answers where p >= t and Gemini elsewhere."""
    return sum(g if pi >= t else m for pi, g, m in zip(p, gemma, gemini, strict=True)) / len(p)


def gemini_share(p: Sequence[float], t: float) -> float:
    return sum(pi < t for pi in p) / len(p)


def candidate_thresholds(p: Sequence[float]) -> list[float]:
    """0 (all to Gemma), the midpoints between distinct probabilities, 1 (all to Gemini)."""
    u = sorted(set(p))
    return [0.0, *((a + b) / 2 for a, b in pairwise(u)), 1.0]


def choose_threshold(
    p: Sequence[float], gemma: Sequence[float], gemini: Sequence[float], target: Target
) -> float:
    """The threshold meeting `target` on these (held-out) predictions."""
    points = [(t, gemini_share(p, t), routed_quality(p, gemma, gemini, t)) for t in candidate_thresholds(p)]
    if target.kind == "keep_quality":
        need = target.value * (sum(gemini) / len(gemini)) - 1e-12
        ok = [pt for pt in points if pt[2] >= need]
        return min(ok, key=lambda pt: (pt[1], -pt[2]))[0]  # t = 1 (all Gemini) always qualifies
    ok = [pt for pt in points if pt[1] <= target.value + 1e-12]
    return max(ok, key=lambda pt: (pt[2], -pt[1]))[0]  # t = 0 (all Gemma) always qualifies


@dataclass
class Calibration:
    model: RouterModel
    train: list[Pair]
    test: list[Pair]
    p_test: list[float]
    p_oof: list[float]
    c: float
    cv_log_loss: dict[float, float] = field(default_factory=dict)
    vectorizer: Any = None  # the fitted scikit-learn objects the file was written from
    classifier: Any = None  # the averaged model (the router file's coefficients)
    fold_classifiers: list[Any] = field(default_factory=list)  # each fitted by scikit-learn on one fold


def split(pairs: Sequence[Pair], test_size: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """One fold in round(1 / test_size), by case, stratified by label as far as groups allow."""
    from sklearn.model_selection import StratifiedGroupKFold

    folds = max(2, round(1 / test_size))
    sgkf = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    train_idx, test_idx = next(sgkf.split(pairs, [q.label for q in pairs], [q.key for q in pairs]))
    return [pairs[i] for i in train_idx], [pairs[i] for i in test_idx]


def calibrate(
    pairs: Sequence[Pair],
    target: Target,
    *,
    test_size: float = 0.3,
    folds: int = 5,
    seed: int = 0,
    sources: Sequence[str] = (),
) -> Calibration:
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedGroupKFold

    if len(pairs) < MIN_PAIRS:
        raise CalibrationError(
            f"{len(pairs)} cases answered and graded by both backends; at least {MIN_PAIRS} are needed"
        )
    if len({q.label for q in pairs}) < 2:
        which = "at least as good as" if pairs[0].label else "worse than"
        raise CalibrationError(
            f"in every one of the {len(pairs)} cases Gemma's answer was {which} Gemini's: nothing to learn "
            "(the local stand-ins are one model behind both names; calibrate on runs against the real "
            "backends)"
        )
    train, test = split(pairs, test_size, seed)
    y = [q.label for q in train]
    if len(set(y)) < 2 or not test:
        raise CalibrationError("too few cases of one kind to hold some out: add cases or runs")
    k = min(folds, min(y.count(0), y.count(1)))
    if k < 2:
        raise CalibrationError("too few cases of one kind to cross-validate: add cases or runs")
    cv = list(
        StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(
            train, y, [q.key for q in train]
        )
    )
    if any(len({y[i] for i in fit_idx}) < 2 for fit_idx, _ in cv):
        raise CalibrationError("too few cases of one kind to cross-validate: add cases or runs")
    # TF-IDF is fitted once on the training texts (no labels: nothing leaks into the folds but the idf).
    vec = make_vectorizer()
    x = design(vec, [q.text for q in train], [q.prompt_tokens for q in train], fit=True)

    def fold_models(c: float) -> tuple[list[Any], list[float]]:
        """One model per fold, and each training case predicted by the model that did not see it."""
        from sklearn.linear_model import LogisticRegression

        models, out = [], [0.0] * len(train)
        for fit_idx, val_idx in cv:
            clf = LogisticRegression(C=c, max_iter=2000, random_state=seed)
            clf.fit(x[fit_idx], [y[i] for i in fit_idx])
            for i, pi in zip(val_idx, clf.predict_proba(x[val_idx])[:, 1], strict=True):
                out[i] = float(pi)
            models.append(clf)
        return models, out

    scores: dict[float, float] = {}
    fitted: dict[float, tuple[list[Any], list[float]]] = {}
    for c in C_GRID:
        fitted[c] = fold_models(c)
        scores[c] = float(log_loss(y, fitted[c][1], labels=[0, 1]))
    best = min(C_GRID, key=lambda c: (scores[c], c))
    folds_fitted, p_oof = fitted[best]
    threshold = choose_threshold(p_oof, [q.gemma for q in train], [q.gemini for q in train], target)
    # The router is the folds' models averaged (their logits: still one logistic regression). Not a refit
    # on all training cases: the threshold was chosen on these models' predictions for cases they did not
    # see, and a refit model is more confident than they are, so the same threshold would route another
    # share of new turns to Gemini.
    coef = [float(v) for v in sum(m.coef_[0] for m in folds_fitted) / len(folds_fitted)]
    intercept = float(sum(m.intercept_[0] for m in folds_fitted) / len(folds_fitted))
    clf = averaged_classifier(folds_fitted, coef, intercept)
    x_test = design(vec, [q.text for q in test], [q.prompt_tokens for q in test])
    p_test = [float(v) for v in clf.predict_proba(x_test)[:, 1]]
    model = RouterModel(
        vocabulary={t: int(i) for t, i in vec.vocabulary_.items()},
        idf=tuple(float(v) for v in vec.idf_),
        coef=tuple(coef[:-1]),
        length_coef=coef[-1],
        intercept=intercept,
        threshold=threshold,
        target={"kind": target.kind, "value": target.value},
        metadata={
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "runs": list(sources),
            "cases": len(pairs),
            "train_cases": len(train),
            "held_out_cases": len(test),
            "label": "P(Gemma's score >= Gemini's score)",
            "model": f"mean of the {k} cross-validation folds' logistic regressions",
            "C": best,
            "cv_folds": k,
            "cv_log_loss": {str(c): round(v, 4) for c, v in scores.items()},
            "seed": seed,
        },
    )
    return Calibration(model, train, test, p_test, p_oof, best, scores, vec, clf, folds_fitted)


def averaged_classifier(models: Sequence[Any], coef: Sequence[float], intercept: float) -> Any:
    """A scikit-learn LogisticRegression holding the averaged coefficients (its public fitted attributes),
    so that `predict_proba` scores the held-out cases exactly as the router file will."""
    import numpy as np
    from sklearn.base import clone

    clf = clone(models[0])
    clf.coef_ = np.array([coef])
    clf.intercept_ = np.array([intercept])
    clf.classes_ = models[0].classes_
    clf.n_features_in_ = models[0].n_features_in_
    return clf


def write_router(model: RouterModel, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(model.to_json(), ensure_ascii=False, separators=(",", ":")) + "\n", "utf-8")
