"""Checks of one answer. Deterministic checks are pure functions; the judge calls a model.

Each returns a `CheckResult`: `passed` True/False, or None when the check does not apply to this run
(a judge with no judge configured, an expected route with a pinned model). Inapplicable checks are
left out of pass rates; they are never counted as passes.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from evals.dataset import Case, Contains, JsonSchema, Judge, MaxLatency, NotContains, Regex


@dataclass
class CheckResult:
    type: str
    passed: bool | None
    detail: str = ""
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fold(text: str, case_sensitive: bool) -> str:
    return text if case_sensitive else text.casefold()


def check_contains(check: Contains, answer: str) -> CheckResult:
    hay = _fold(answer, check.case_sensitive)
    found = [v for v in check.values if _fold(v, check.case_sensitive) in hay]
    missing = [v for v in check.values if v not in found]
    ok = bool(found) if check.match == "any" else not missing
    detail = "" if ok else f"missing {missing!r}" if check.match == "all" else f"none of {check.values!r}"
    return CheckResult("contains", ok, detail)


def check_not_contains(check: NotContains, answer: str) -> CheckResult:
    hay = _fold(answer, check.case_sensitive)
    found = [v for v in check.values if _fold(v, check.case_sensitive) in hay]
    return CheckResult("not_contains", not found, f"found {found!r}" if found else "")


def check_regex(check: Regex, answer: str) -> CheckResult:
    flags = re.IGNORECASE if check.ignore_case else 0
    if check.fullmatch:
        ok = re.fullmatch(check.pattern, answer.strip(), flags) is not None
    else:
        ok = re.search(check.pattern, answer, flags) is not None
    return CheckResult("regex", ok, "" if ok else f"no match for /{check.pattern}/")


_FENCE = re.compile(r"```(?:json)?\s*\n?(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_json(answer: str) -> Any:
    """The JSON value in an answer: the whole text, else a ```json fence, else the first parsable
    object/array starting at a `{` or `[`. Raises ValueError when there is none."""
    candidates = [answer.strip(), *(m.strip() for m in _FENCE.findall(answer))]
    for c in candidates:
        try:
            return json.loads(c)
        except ValueError:
            pass
    decoder = json.JSONDecoder()
    for i, ch in enumerate(answer):
        if ch in "{[":
            try:
                return decoder.raw_decode(answer, i)[0]
            except ValueError:
                continue
    raise ValueError("no JSON value in the answer")


def check_json_schema(check: JsonSchema, answer: str) -> CheckResult:
    import jsonschema

    try:
        value = extract_json(answer)
    except ValueError as exc:
        return CheckResult("json_schema", False, str(exc))
    validator = jsonschema.validators.validator_for(check.schema_)(check.schema_)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return CheckResult("json_schema", True)
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return CheckResult("json_schema", False, f"{where}: {error.message}"[:300])


def check_latency(check: MaxLatency, latency_ms: float | None) -> CheckResult:
    if latency_ms is None:
        return CheckResult("max_latency_ms", False, "no latency measured")
    ok = latency_ms <= check.value
    return CheckResult("max_latency_ms", ok, "" if ok else f"{latency_ms:.0f} ms > {check.value:.0f} ms")


def check_route(expected: str, model: str, routed: str | None) -> CheckResult:
    """Only a routing policy (`auto`) can route; with a pinned model the check does not apply."""
    if model != "auto":
        return CheckResult("expected_route", None, f"not applicable: model pinned to {model}")
    ok = routed == expected
    return CheckResult("expected_route", ok, "" if ok else f"routed to {routed}, expected {expected}")


def deterministic_checks(case: Case, answer: str, *, latency_ms: float | None) -> list[CheckResult]:
    out: list[CheckResult] = []
    for check in case.checks:
        if isinstance(check, Contains):
            out.append(check_contains(check, answer))
        elif isinstance(check, NotContains):
            out.append(check_not_contains(check, answer))
        elif isinstance(check, Regex):
            out.append(check_regex(check, answer))
        elif isinstance(check, JsonSchema):
            out.append(check_json_schema(check, answer))
        elif isinstance(check, MaxLatency):
            out.append(check_latency(check, latency_ms))
    return out


# --- LLM as judge ------------------------------------------------------------------------------
# openevals (LangChain's maintained evaluator library) builds the judge prompt, asks the judge model
# for structured output and parses it. Our part is only the prompt text (criteria + reference) and the
# choice of structured-output method per backend:
# - gemma (ChatOpenAI -> vLLM or llama.cpp): `json_schema` (response_format; vLLM and llama.cpp
#   enforce it with a grammar, so even a small model returns parsable JSON);
# - gemini (ChatVertexAI): function calling, its default. The local Vertex stand-in does not implement
#   tools or responseSchema, so a `gemini` judge only works against real Vertex AI; locally, use gemma.
JUDGE_PROMPT = """You are grading an AI assistant's answer to a user.

<criteria>
{criteria}
</criteria>

<conversation>
{inputs}
</conversation>

<answer>
{outputs}
</answer>
{reference_block}
Score from 0.0 (criteria not met at all) to 1.0 (criteria fully met)."""

JUDGE_FAILED = "judge failed"

_JUDGE_SCHEMA = {
    "title": "score",
    "description": "The grade of the answer.",
    "type": "object",
    "properties": {
        "reasoning": {"type": "string", "description": "One or two sentences explaining the score."},
        "score": {"type": "number", "description": "From 0.0 (criteria not met) to 1.0 (fully met)."},
    },
    "required": ["reasoning", "score"],
}


class LLMJudge:
    """Scores answers with a configured backend through openevals' `create_async_llm_as_judge`."""

    def __init__(self, backend: str, model: Any) -> None:
        from openevals.llm import create_async_llm_as_judge

        self.backend = backend
        kwargs = {"method": "json_schema"} if backend == "gemma" else {}
        self._evaluator = create_async_llm_as_judge(
            prompt=self._prompt,
            judge=model,
            output_schema=_JUDGE_SCHEMA,
            structured_output_kwargs=kwargs,
        )

    @staticmethod
    def _prompt(
        *, inputs: Any, outputs: Any, reference_outputs: Any = None, criteria: str = "", **_: Any
    ) -> list[dict[str, str]]:
        reference_block = (
            f"\n<reference_answer>\n{reference_outputs}\n</reference_answer>\n" if reference_outputs else ""
        )
        text = JUDGE_PROMPT.format(
            criteria=criteria, inputs=inputs, outputs=outputs, reference_block=reference_block
        )
        return [{"role": "user", "content": text}]

    async def score(self, check: Judge, *, conversation: list[str], answer: str, reference: str | None):
        inputs = "\n".join(f"user: {t}" for t in conversation)
        try:
            raw = await self._evaluator(
                inputs=inputs, outputs=answer, reference_outputs=reference, criteria=check.criteria
            )
            score = float(raw["score"])
        except Exception as exc:
            # The answer was not judged: not a failure of the model under test. Not counted either way
            # (the summary counts judge errors); never a crash.
            detail = f"{JUDGE_FAILED} ({self.backend}): {type(exc).__name__}: {exc}"
            return CheckResult("judge", None, detail[:300])
        score = min(1.0, max(0.0, score))
        reasoning = str(raw.get("reasoning", ""))[:300]
        return CheckResult("judge", score >= check.threshold, reasoning, score=score)
