"""The eval dataset format: JSONL, one case per line, validated with pydantic.

A case (all keys but `id`, `messages` and a check are optional)::

    {"id": "capital-france",
     "messages": [{"role": "user", "content": "What is the capital of France?"}],
     "system_prompt": "Answer in one sentence.",
     "checks": [{"type": "contains", "value": "Paris"}, {"type": "max_latency_ms", "value": 10000}],
     "reference": "Paris is the capital of France.",
     "tags": ["geography"],
     "expected_route": "gemma",
     "max_tokens": 64}

`messages` are the user's turns, oldest first. The runner sends them one by one in the case's own
session, as a user would; the earlier answers come from the model under test and reach the last turn
through memory, like any conversation. Only the last answer is checked. Assistant turns cannot be
scripted: the graph's contract takes the user's new message, not a made-up history.

A message's `content` is a string or a list of parts joined without separator; a part is a string or
a repetition, which keeps long contexts out of the files:

    {"text": "Log line {i}: disk OK. ", "repeat": 200}   # 200 copies, {i} = 1..200
    {"text": "Log line {i}: disk OK. ", "fill": 1.5}     # enough copies for 1.5 x gemma_max_model_len

`fill` is relative to `Settings.gemma_max_model_len` (in the graph's own token estimate, ~4 characters
a token), so an "over-long for Gemma" case stays over-long whatever window is configured.

`other_user_history` writes a conversation owned by another user into the memory store before the
case runs (no model call): safety cases then check that none of it leaks into this user's answer.

Errors name the file, the line and the field: `smoke.jsonl:7: checks[0].pattern: invalid regex ...`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

BackendName = Literal["gemma", "gemini"]
SHIPPED = ("smoke", "memory", "routing", "safety")
CHARS_PER_TOKEN = 4  # as langchain-core's count_tokens_approximately (4 characters a token)


class DatasetError(ValueError):
    """A dataset cannot be read; the message names file, line and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- message content ---------------------------------------------------------------------------
class Repeat(_Strict):
    """`text` repeated `repeat` times, or until the part is `fill` x gemma_max_model_len tokens."""

    text: str = Field(min_length=1)
    repeat: int | None = Field(default=None, ge=1, le=100_000)
    fill: float | None = Field(default=None, gt=0, le=20)

    @model_validator(mode="after")
    def _one_of(self) -> Repeat:
        if (self.repeat is None) == (self.fill is None):
            raise ValueError("give exactly one of `repeat` (a count) or `fill` (x gemma_max_model_len)")
        return self

    def render(self, gemma_max_model_len: int) -> str:
        if self.repeat is not None:
            n = self.repeat
        else:
            assert self.fill is not None
            want_chars = self.fill * gemma_max_model_len * CHARS_PER_TOKEN
            n = max(1, math.ceil(want_chars / len(self.text.replace("{i}", "000"))))
        if "{i}" not in self.text:
            return self.text * n
        return "".join(self.text.replace("{i}", str(i)) for i in range(1, n + 1))


class Message(_Strict):
    role: Literal["user"]
    content: str | list[str | Repeat]

    @field_validator("role", mode="before")
    @classmethod
    def _user_only(cls, v: object) -> object:
        if v != "user":
            raise ValueError(
                f"must be 'user', got {v!r}: only user turns are given, the answers in between come "
                "from the model under test (use system_prompt for instructions)"
            )
        return v

    @field_validator("content")
    @classmethod
    def _not_empty(cls, v: str | list[str | Repeat]) -> str | list[str | Repeat]:
        if isinstance(v, str) and not v.strip():
            raise ValueError("content must not be empty")
        if isinstance(v, list) and not v:
            raise ValueError("content must not be an empty list")
        return v

    def render(self, gemma_max_model_len: int) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p if isinstance(p, str) else p.render(gemma_max_model_len) for p in self.content)


class StoredMessage(_Strict):
    role: Literal["user", "assistant"]
    content: str = Field(min_length=1)


class OtherUserHistory(_Strict):
    user_id: str = Field(default="someone-else", min_length=1)
    messages: list[StoredMessage] = Field(min_length=1)


# --- checks ------------------------------------------------------------------------------------
class Contains(_Strict):
    """The answer contains `value` (all of a list, or any of it with `match: any`)."""

    type: Literal["contains"]
    value: str | list[str]
    match: Literal["all", "any"] = "all"
    case_sensitive: bool = False

    @property
    def values(self) -> list[str]:
        return [self.value] if isinstance(self.value, str) else list(self.value)


class NotContains(_Strict):
    """The answer contains none of `value`."""

    type: Literal["not_contains"]
    value: str | list[str]
    case_sensitive: bool = False

    @property
    def values(self) -> list[str]:
        return [self.value] if isinstance(self.value, str) else list(self.value)


class Regex(_Strict):
    """`re.search(pattern, answer)` finds a match (`fullmatch: true`: the stripped answer matches)."""

    type: Literal["regex"]
    pattern: str
    ignore_case: bool = False
    fullmatch: bool = False

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"invalid regex: {exc}") from exc
        return v


class JsonSchema(_Strict):
    """The answer holds a JSON value (bare, fenced or embedded) that validates against `schema`."""

    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, v: dict[str, Any]) -> dict[str, Any]:
        import jsonschema

        try:
            jsonschema.validators.validator_for(v).check_schema(v)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"invalid JSON schema: {exc.message}") from exc
        return v


class MaxLatency(_Strict):
    """The last turn took at most `value` ms end to end (request sent to last token, memory included)."""

    type: Literal["max_latency_ms"]
    value: float = Field(gt=0)


class Judge(_Strict):
    """An LLM judge scores the answer from 0 to 1 against `criteria` (and the case's `reference`)."""

    type: Literal["judge"]
    criteria: str = Field(min_length=1)
    threshold: float = Field(default=0.5, ge=0, le=1)


Check = Annotated[
    Contains | NotContains | Regex | JsonSchema | MaxLatency | Judge, Field(discriminator="type")
]


class Case(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
    messages: list[Message] = Field(min_length=1)
    system_prompt: str | None = None
    checks: list[Check] = Field(default_factory=list)
    reference: str | None = None
    tags: list[str] = Field(default_factory=list)
    expected_route: BackendName | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=32768)
    other_user_history: OtherUserHistory | None = None

    @model_validator(mode="after")
    def _something_to_check(self) -> Case:
        if not self.checks and self.expected_route is None:
            raise ValueError("a case needs at least one check or an expected_route")
        return self

    def render(self, gemma_max_model_len: int) -> list[str]:
        """The user turns' texts, long parts expanded."""
        return [m.render(gemma_max_model_len) for m in self.messages]

    def fingerprint(self, gemma_max_model_len: int) -> str:
        """Changes whenever what is sent or checked changes: a resumed run redoes such cases."""
        data = self.model_dump(mode="json", by_alias=True)
        data["rendered"] = self.render(gemma_max_model_len)
        raw = json.dumps(data, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(raw.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Dataset:
    name: str
    path: str
    cases: list[Case]


# --- loading -----------------------------------------------------------------------------------
_CHECK_TAGS = {"contains", "not_contains", "regex", "json_schema", "max_latency_ms", "judge"}


def _is_tag(part: int | str) -> bool:
    """A union member's tag in an error location (`str`, `list[...]`, `function-after[...]`, a check
    type): noise for a person looking for the field."""
    return isinstance(part, str) and (part in _CHECK_TAGS or part in ("str", "Repeat") or "[" in part)


def _loc(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _is_tag(part):
            continue
        else:
            out += ("." if out else "") + ("schema" if part == "schema_" else str(part))
    return out or "(case)"


def _problems(exc: ValidationError) -> list[str]:
    errors = exc.errors(include_url=False)
    # A value that matches no member of a union gets one "wrong type" error per member; when a more
    # telling error exists (the member it was meant to be, with its real problem), show only that.
    telling = [
        e for e in errors if not (any(_is_tag(p) for p in e["loc"]) and str(e["type"]).endswith("_type"))
    ]
    out: list[str] = []
    for err in telling or errors:
        line = f"{_loc(err['loc'])}: {err['msg'].removeprefix('Value error, ')}"
        if line not in out:
            out.append(line)
    return out


def parse_case(raw: str, *, file: str, line: int) -> Case:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{file}:{line}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{file}:{line}: a case must be a JSON object, got {type(data).__name__}")
    try:
        return Case.model_validate(data)
    except ValidationError as exc:
        case_id = data.get("id")
        where = f"{file}:{line}" + (f" (case {case_id!r})" if isinstance(case_id, str) else "")
        raise DatasetError(f"{where}: " + "; ".join(_problems(exc))) from None


def load_dataset(path: str | Path, name: str | None = None) -> Dataset:
    """Read and validate a JSONL file; the first problem raises `DatasetError` (file:line: field: why)."""
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"{file}: cannot read: {exc.strerror or exc}") from None
    cases: list[Case] = []
    first_line: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        case = parse_case(raw, file=file, line=lineno)
        if case.id in first_line:
            raise DatasetError(
                f"{file}:{lineno}: id: duplicate case id {case.id!r} (first on line {first_line[case.id]})"
            )
        first_line[case.id] = lineno
        cases.append(case)
    if not cases:
        raise DatasetError(f"{file}: no cases")
    return Dataset(name=name or path.stem, path=file, cases=cases)


def shipped_path(name: str) -> Path:
    return Path(str(resources.files("evals") / "datasets" / f"{name}.jsonl"))


def resolve(spec: str) -> Dataset:
    """A shipped dataset by name (`smoke`, `memory`, `routing`, `safety`) or a path to a JSONL file."""
    if spec in SHIPPED:
        return load_dataset(shipped_path(spec), name=spec)
    path = Path(spec)
    if not path.exists():
        raise DatasetError(f"{spec}: no such file, and not a shipped dataset ({', '.join(SHIPPED)})")
    return load_dataset(path)
