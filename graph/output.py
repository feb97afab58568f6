"""Per-turn options that shape the answer itself: stop sequences, the sampling seed, the response format.

They travel like the other options (the input, the run's context, `configurable`; `resolve_options`)
and are checked here, once, for every way in: a value a backend would refuse mid-turn (Vertex AI takes
an int32 seed; llama.cpp and vLLM more) is refused before any call, with `OptionError`, whose text
names the option and says what to send instead. An OpenAI client sees that text and `param` as is.

The response format is OpenAI's `response_format`: `{"type": "json_object"}` (the answer is JSON) or
`{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}` (the answer is JSON that matches
the schema). Each backend is asked in its own terms (`Backends`): vLLM and llama.cpp take OpenAI's
`response_format` as is and constrain their decoding with it; Gemini takes `response_mime_type`
"application/json" and a `response_schema` in its OpenAPI subset (`gemini_schema`). Whatever the
backend, the answer is then checked (`ResponseFormat.mismatch`, with `jsonschema`) and one that does not
match is an error, never passed on as if it did: `strict: false` is checked too.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from jsonschema import SchemaError
from jsonschema.exceptions import best_match
from jsonschema.validators import validator_for

from graph.validation import InvalidInput

MAX_STOP_SEQUENCES = 4  # OpenAI's limit (Gemini takes 5, llama.cpp and vLLM more)
SEED_MIN, SEED_MAX = -(2**31), 2**31 - 1  # Gemini's seed is an int32: the range every backend takes


class OptionError(InvalidInput):
    """An option the graph cannot honour; `param` is its name in OpenAI's request body."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def stop_sequences(value: Any) -> list[str]:
    """`stop` as a list ("" and None: none); a string is one sequence, as OpenAI reads it."""
    if value is None or value == "":
        return []
    sequences = [value] if isinstance(value, str) else value
    if not isinstance(sequences, list | tuple) or not all(isinstance(s, str) for s in sequences):
        raise OptionError("`stop` must be a string or a list of strings.", "stop")
    if len(sequences) > MAX_STOP_SEQUENCES:
        raise OptionError(
            f"`stop` takes at most {MAX_STOP_SEQUENCES} sequences ({len(sequences)} sent): send fewer.",
            "stop",
        )
    if any(s == "" for s in sequences):
        raise OptionError("`stop` sequences must not be empty: leave out the empty one.", "stop")
    return list(sequences)


def check_seed(value: Any) -> int | None:
    """`seed` as an int within the range every backend takes (None: none)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError("`seed` must be an integer.", "seed")
    if not SEED_MIN <= value <= SEED_MAX:
        raise OptionError(
            f"`seed` must be between {SEED_MIN} and {SEED_MAX} (Gemini's seed is 32 bits): send a "
            "smaller one.",
            "seed",
        )
    return value


SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for `json_schema.name`
MAX_REF_DEPTH = 32  # `$ref`s inlined for Gemini, one inside another: deeper is taken for recursion


@dataclass(frozen=True)
class ResponseFormat:
    """What the answer must be. Hashable (the schema kept as JSON text), as the generation parameters
    it travels in (`GenerationParams`) must be."""

    kind: Literal["json_object", "json_schema"]
    name: str = ""
    schema_json: str = ""  # json_schema: the JSON Schema, as canonical JSON
    strict: bool | None = None

    @property
    def schema(self) -> dict[str, Any] | None:
        return json.loads(self.schema_json) if self.schema_json else None

    def openai(self) -> dict[str, Any]:
        """As OpenAI's `response_format` (what vLLM and llama.cpp take)."""
        if self.kind == "json_object":
            return {"type": "json_object"}
        spec: dict[str, Any] = {"name": self.name, "schema": self.schema}
        if self.strict is not None:
            spec["strict"] = self.strict
        return {"type": "json_schema", "json_schema": spec}

    def gemini(self) -> dict[str, Any]:
        """As ChatVertexAI's parameters: `response_mime_type`, and `response_schema` for a schema."""
        out: dict[str, Any] = {"response_mime_type": "application/json"}
        if (schema := self.schema) is not None:
            out["response_schema"] = gemini_schema(schema)
        return out

    def mismatch(self, text: str, *, cut: bool = False) -> str | None:
        """Why `text` is not an answer of this format (None: it is). `cut`: the answer ended at
        max_tokens. The reason may quote the answer: it is for the caller, not for the log."""
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            if cut:
                return "it was cut at max_tokens before its JSON was complete: raise max_tokens"
            return f"it is not valid JSON ({exc.msg} at character {exc.pos})"
        schema = self.schema
        if schema is None:
            return None
        error = best_match(validator_for(schema)(schema).iter_errors(value))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "the top level"
        return f"it does not match the schema at {where}: {error.message[:300]}"


def response_format(value: Any) -> ResponseFormat | None:
    """OpenAI's `response_format` checked (None for text, or none given); `OptionError` saying what to
    change otherwise."""
    if value is None or value == {}:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise OptionError(
            '`response_format` must be an object with a `type`: "text", "json_object" or "json_schema".',
            "response_format",
        )
    kind = value["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat("json_object")
    if kind != "json_schema":
        raise OptionError(
            f'`response_format.type` {kind[:40]!r} is not one of "text", "json_object", "json_schema".',
            "response_format.type",
        )
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise OptionError(
            "`response_format.json_schema` must be an object with a `name` and the `schema`.",
            "response_format.json_schema",
        )
    name = spec.get("name")
    if not isinstance(name, str) or not SCHEMA_NAME.match(name):
        raise OptionError(
            "`response_format.json_schema.name` must be 1 to 64 letters, digits, underscores or dashes.",
            "response_format.json_schema.name",
        )
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise OptionError(
            "`response_format.json_schema.schema` must be the JSON Schema (an object) the answer must match.",
            "response_format.json_schema.schema",
        )
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise OptionError(
            f"`response_format.json_schema.schema` is not a valid JSON Schema: {exc.message[:200]}.",
            "response_format.json_schema.schema",
        ) from None
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise OptionError(
            "`response_format.json_schema.strict` must be true or false.",
            "response_format.json_schema.strict",
        )
    gemini_schema(schema)  # one every backend can take: refused now, not after the route picks Gemini
    return ResponseFormat("json_schema", name, json.dumps(schema, sort_keys=True), strict)


# JSON Schema keywords Gemini's Schema takes, by their field names there (ChatVertexAI builds the
# request's Schema from these; keys it does not know make it raise). Others are left out: the answer
# is checked against the whole schema afterwards.
GEMINI_KEYWORDS = {
    "description": "description",
    "title": "title",
    "required": "required",
    "minItems": "min_items",
    "maxItems": "max_items",
    "minProperties": "min_properties",
    "maxProperties": "max_properties",
    "minLength": "min_length",
    "maxLength": "max_length",
    "pattern": "pattern",
    "minimum": "minimum",
    "maximum": "maximum",
}
GEMINI_TYPES = frozenset({"string", "number", "integer", "boolean", "array", "object"})
GEMINI_FORMATS = frozenset({"date-time", "enum", "float", "double", "int32", "int64"})  # the ones it takes


def gemini_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema in Gemini's OpenAPI subset, as ChatVertexAI's `response_schema` takes it: local
    `$ref`s inlined, a "null" type as `nullable`, `oneOf` as `any_of`, `const` as a one-value `enum`,
    properties kept in their order (`property_ordering`: Gemini writes them so). `OptionError` for what
    cannot be said there (a recursive or non-local `$ref`)."""

    def convert(node: Any, depth: int) -> dict[str, Any]:
        if not isinstance(node, dict):
            return {}
        if "$ref" in node:
            return convert(_resolve(schema, node["$ref"], depth), depth + 1)
        out: dict[str, Any] = {}
        types = node.get("type")
        types = [types] if isinstance(types, str) else list(types or [])
        if "null" in types:
            out["nullable"] = True
        known = [t for t in types if t in GEMINI_TYPES]
        if len(known) == 1:
            out["type_"] = known[0].upper()
        elif len(known) > 1:
            out["any_of"] = [{"type_": t.upper()} for t in known]
        for key, field in GEMINI_KEYWORDS.items():
            if key in node:
                out[field] = node[key]
        if node.get("format") in GEMINI_FORMATS:
            out["format_"] = node["format"]
        enum = node.get("enum", [node["const"]] if "const" in node else None)
        if isinstance(enum, list) and enum and all(isinstance(v, str) for v in enum):
            out["enum"] = enum
        if isinstance(props := node.get("properties"), dict):
            out["properties"] = {k: convert(v, depth) for k, v in props.items()}
            out["property_ordering"] = list(props)
        if isinstance(node.get("items"), dict):
            out["items"] = convert(node["items"], depth)
        alternatives = [*node.get("anyOf", []), *node.get("oneOf", [])]
        if alternatives:
            if any(isinstance(a, dict) and a.get("type") == "null" for a in alternatives):
                out["nullable"] = True
            kept = [
                convert(a, depth)
                for a in alternatives
                if not (isinstance(a, dict) and a.get("type") == "null")
            ]
            if len(kept) == 1:
                out.update(kept[0])
            elif kept:
                out["any_of"] = kept
        for part in node.get("allOf", []):
            out.update(convert(part, depth))
        return out

    return convert(schema, 0)


def _resolve(root: dict[str, Any], ref: Any, depth: int) -> Any:
    """The definition a local `$ref` ("#/$defs/Name", "#/definitions/Name", "#") points to."""
    where = "`response_format.json_schema.schema`"
    if depth >= MAX_REF_DEPTH:
        raise OptionError(
            f"{where} is recursive ($ref {str(ref)[:80]!r} inside itself): Gemini takes no recursive "
            "schemas; write it out to a fixed depth.",
            "response_format.json_schema.schema",
        )
    if not isinstance(ref, str) or not ref.startswith("#"):
        raise OptionError(
            f"{where} refers outside itself ($ref {str(ref)[:80]!r}): put the definitions in its $defs.",
            "response_format.json_schema.schema",
        )
    node: Any = root
    for part in [p for p in ref[1:].split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            raise OptionError(
                f"{where} has a $ref to nothing ({ref[:80]!r}): define it in $defs.",
                "response_format.json_schema.schema",
            )
        node = node[part]
    return node
