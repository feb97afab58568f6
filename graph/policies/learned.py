"""`learned`: Gemma when a model fitted on the team's eval runs says it answers this turn as well as Gemini.

The model comes from `hybrid-chat eval calibrate` as a small versioned JSON file (vocabulary, idf,
coefficients, intercept, threshold): TF-IDF of the latest user message (scikit-learn's
`TfidfVectorizer` with the settings below) plus the conversation's length, fed to a logistic regression.
Inference is written here by hand on purpose: scikit-learn is an eval-only extra, a pickle would run
arbitrary code, and the arithmetic (tokenise, sparse dot product, sigmoid) is a few lines that run in
well under a millisecond (tests/test_learned_router.py checks it equals `predict_proba`).

`auto`'s protective rules come first, by asking `AutoPolicy` itself: a prompt too long for Gemma, a
backend whose circuit is open or whose credentials are refused, a queueing vLLM. Only when those leave
the choice open does the probability decide. A missing file, or one written for another format version,
leaves `learned` routing as `auto` would (said in the reason and the log); a file that is broken in any
other way is refused at start-up (`RouterFileError`), never discovered on a user's turn.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

from graph.policies.auto import AutoPolicy
from graph.router import RouteDecision, RouteRequest

log = logging.getLogger(__name__)

FORMAT = "hybrid-chat-router"
VERSION = 1
# The tokeniser, as scikit-learn's TfidfVectorizer is configured by evals.calibrate (the file repeats
# these; one that differs is refused rather than silently scored with another tokenisation).
TOKENIZER: dict[str, Any] = {
    "lowercase": True,
    "token_pattern": r"(?u)\b\w\w+\b",
    "ngram_range": [1, 2],
    "sublinear_tf": True,
    "norm": "l2",
}
MAX_CHARS = (
    4000  # only the start of a long message is read (bounds the decision time; its length still counts)
)
LENGTH_SCALE = 10.0

_TOKEN = re.compile(TOKENIZER["token_pattern"])


class RouterFileError(ValueError):
    """The router file cannot be used: says which file and why."""


class RouterVersionError(RouterFileError):
    """The router file is for another format version (recalibrate with this release)."""


def message_text(text: str) -> str:
    """What the model reads of a message (the fit applies the same cut)."""
    return text[:MAX_CHARS]


def length_feature(prompt_tokens: int) -> float:
    """The conversation's length as one feature: log-scaled so a 10x longer prompt adds a constant."""
    return math.log1p(max(0, prompt_tokens)) / LENGTH_SCALE


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@dataclass(frozen=True)
class RouterModel:
    """The fitted model: P(Gemma's answer is at least as good as Gemini's | message, length)."""

    vocabulary: dict[str, int]
    idf: tuple[float, ...]
    coef: tuple[float, ...]
    length_coef: float
    intercept: float
    threshold: float
    target: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def decision_function(self, text: str, prompt_tokens: int) -> float:
        tokens = _TOKEN.findall(message_text(text).lower())
        counts = Counter(tokens)  # unigrams, then bigrams "a b" (counted in C: the hot loop)
        counts.update(map(" ".join, pairwise(tokens)))
        vocab, idf = self.vocabulary, self.idf
        weights = {
            j: (1.0 + math.log(c)) * idf[j]
            for term, c in counts.items()
            if (j := vocab.get(term)) is not None
        }
        norm = math.sqrt(sum(w * w for w in weights.values())) or 1.0
        z = sum(w * self.coef[j] for j, w in weights.items()) / norm
        return self.intercept + z + self.length_coef * length_feature(prompt_tokens)

    def probability(self, text: str, prompt_tokens: int) -> float:
        return _sigmoid(self.decision_function(text, prompt_tokens))

    def to_json(self) -> dict[str, Any]:
        terms = sorted(self.vocabulary, key=self.vocabulary.__getitem__)
        return {
            "format": FORMAT,
            "version": VERSION,
            "tokenizer": TOKENIZER,
            "max_chars": MAX_CHARS,
            "length_scale": LENGTH_SCALE,
            "vocabulary": terms,
            "idf": list(self.idf),
            "coef": list(self.coef),
            "length_coef": self.length_coef,
            "intercept": self.intercept,
            "threshold": self.threshold,
            "target": self.target,
            "metadata": self.metadata,
        }


def _number(data: dict[str, Any], key: str, where: str) -> float:
    v = data.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise RouterFileError(f"{where}: {key!r} must be a finite number")
    return float(v)


def parse_router(data: Any, where: str = "router file") -> RouterModel:
    """Check a decoded router file and build the model (every problem: `RouterFileError` saying what)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RouterFileError(f"{where}: not a hybrid-chat router file (expected format {FORMAT!r})")
    if data.get("version") != VERSION:
        raise RouterVersionError(
            f"{where}: router file version {data.get('version')!r}, this release reads version {VERSION}: "
            "run `hybrid-chat eval calibrate` again"
        )
    fields = ("tokenizer", "max_chars", "length_scale", "vocabulary", "idf", "coef")
    if missing := [k for k in (*fields, "length_coef", "intercept", "threshold") if k not in data]:
        raise RouterFileError(f"{where}: missing {', '.join(missing)}")
    if data.get("tokenizer") != TOKENIZER or data.get("max_chars") != MAX_CHARS:
        raise RouterFileError(f"{where}: written with another tokeniser than this release uses")
    if data.get("length_scale") != LENGTH_SCALE:
        raise RouterFileError(f"{where}: written with another length scale than this release uses")
    terms, idf, coef = data.get("vocabulary"), data.get("idf"), data.get("coef")
    if not (isinstance(terms, list) and isinstance(idf, list) and isinstance(coef, list)):
        raise RouterFileError(f"{where}: 'vocabulary', 'idf' and 'coef' must be lists")
    if not len(terms) == len(idf) == len(coef):
        raise RouterFileError(
            f"{where}: 'vocabulary', 'idf' and 'coef' differ in length "
            f"({len(terms)}, {len(idf)}, {len(coef)})"
        )
    if not all(isinstance(t, str) for t in terms) or len(set(terms)) != len(terms):
        raise RouterFileError(f"{where}: 'vocabulary' must be distinct strings")
    numbers = [*idf, *coef]
    if not all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in numbers):
        raise RouterFileError(f"{where}: 'idf' and 'coef' must hold finite numbers")
    threshold = _number(data, "threshold", where)
    if not 0.0 <= threshold <= 1.0:
        raise RouterFileError(f"{where}: 'threshold' must be between 0 and 1, got {threshold}")
    target, metadata = data.get("target", {}), data.get("metadata", {})
    if not isinstance(target, dict) or not isinstance(metadata, dict):
        raise RouterFileError(f"{where}: 'target' and 'metadata' must be objects")
    return RouterModel(
        vocabulary={t: i for i, t in enumerate(terms)},
        idf=tuple(float(x) for x in idf),
        coef=tuple(float(x) for x in coef),
        length_coef=_number(data, "length_coef", where),
        intercept=_number(data, "intercept", where),
        threshold=threshold,
        target=target,
        metadata=metadata,
    )


def load_router(path: Path) -> RouterModel:
    """Read a router file. A missing one raises FileNotFoundError; any other problem RouterFileError."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise RouterFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise RouterFileError(f"{path}: not valid JSON ({exc})") from None
    return parse_router(data, str(path))


@dataclass(frozen=True)
class LearnedPolicy:
    """`auto`'s protective rules, then Gemma when P(as good as Gemini) >= the calibrated threshold.

    `model` None (no usable file: see `from_file`): routes exactly as `auto` would, saying so.
    """

    model: RouterModel | None
    rules: AutoPolicy = field(default_factory=AutoPolicy)
    unavailable: str = ""  # why there is no model (shown in the reason)

    @classmethod
    def from_file(cls, path: Path, rules: AutoPolicy) -> LearnedPolicy:
        """Load once, at start-up. Missing or another version: `auto`'s routing (warned); broken: raises."""
        try:
            model = load_router(path)
        except FileNotFoundError:
            log.warning("learned routing: router file %s not found; `learned` routes as `auto`", path)
            return cls(None, rules, "no router file")
        except RouterVersionError as exc:
            log.warning("learned routing: %s; `learned` routes as `auto`", exc)
            return cls(None, rules, "router file of another version")
        log.info(
            "learned routing: %s (%d terms, threshold %.3f)", path, len(model.vocabulary), model.threshold
        )
        return cls(model, rules)

    def decide(self, request: RouteRequest) -> RouteDecision:
        gemma_first = replace(self.rules, preferred="gemma").decide(request)
        if self.model is None:
            return _relabel(gemma_first, f"as auto, {self.unavailable}")
        if gemma_first.backend != "gemma":  # a protective rule (context, breaker, credentials, queue)
            return _relabel(gemma_first)
        p = self.model.probability(request.text, request.prompt_tokens)
        t = self.model.threshold
        if p >= t:
            return RouteDecision(
                "gemma",
                f"learned: gemma likely as good (p={p:.2f} >= {t:.2f})",
                fallback=gemma_first.fallback,
            )
        gemini_first = replace(self.rules, preferred="gemini").decide(request)
        if gemini_first.backend != "gemini":  # Gemini is down or refuses our credentials
            return _relabel(gemini_first, f"p={p:.2f} < {t:.2f}")
        return RouteDecision(
            "gemini", f"learned: gemini likely better (p={p:.2f} < {t:.2f})", fallback=gemini_first.fallback
        )


def _relabel(decision: RouteDecision, note: str = "") -> RouteDecision:
    """`auto`'s decision, named as `learned`'s (its reason keeps auto's words)."""
    reason = "learned: " + decision.reason.removeprefix("auto: ") + (f" [{note}]" if note else "")
    return replace(decision, reason=reason)
