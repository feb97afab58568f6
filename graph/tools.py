"""Tool calling: the caller's `tools` and `tool_choice`, checked once for every way in.

The shapes are OpenAI's (what `/v1` receives and what LangChain's `bind_tools` takes on both backends):
`tools` is a list of `{"type": "function", "function": {"name", "description", "parameters"}}`, and
`tool_choice` is "auto", "none", "required" or `{"type": "function", "function": {"name": ...}}`. The
model answers with tool calls (an `AIMessage`'s `tool_calls`); the caller runs them and sends the
results back as tool messages, and the model then answers (or calls again). The graph never runs a
tool itself: it has none, and a caller's tool is the caller's to run.

Kept as canonical JSON text (`ToolSpec`): the options travel through LangGraph's state and the backends'
hashable generation parameters.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from jsonschema import SchemaError
from jsonschema.validators import validator_for

from graph.output import OptionError

TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for a function's name (Gemini's fits it)
MAX_TOOLS = 128  # OpenAI's limit
CHOICES = ("auto", "none", "required")


@dataclass(frozen=True)
class ToolSpec:
    """The tools a turn offers and how the model must use them; hashable (JSON text)."""

    tools_json: str
    choice_json: str = '"auto"'

    @property
    def tools(self) -> list[dict[str, Any]]:
        return json.loads(self.tools_json)

    @property
    def choice(self) -> str | dict[str, Any]:
        return json.loads(self.choice_json)

    @property
    def names(self) -> list[str]:
        return [t["function"]["name"] for t in self.tools]

    def for_backend(self, backend: str) -> str | dict[str, Any]:
        """`tool_choice` as the backend's `bind_tools` takes it: ChatOpenAI takes OpenAI's words;
        ChatVertexAI says "any" for OpenAI's "required" (Gemini's mode ANY) and takes the rest as is."""
        choice = self.choice
        if backend == "gemini" and choice == "required":
            return "any"
        return choice


def tool_spec(tools: Any, choice: Any = None) -> ToolSpec | None:
    """`tools` and `tool_choice` checked (None: no tools, or none given); `OptionError` saying what to
    change otherwise. A `tool_choice` without tools is refused, as OpenAI does, except "none"/"auto"."""
    if tools is None or tools == []:
        if choice not in (None, "none", "auto"):
            raise OptionError(
                "`tool_choice` needs `tools`: send the tools the model may call.", "tool_choice"
            )
        return None
    if not isinstance(tools, list):
        raise OptionError("`tools` must be a list of function tools.", "tools")
    if len(tools) > MAX_TOOLS:
        raise OptionError(f"`tools` takes at most {MAX_TOOLS} functions ({len(tools)} sent).", "tools")
    kept: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        kept.append(_function_tool(tool, i))
    names = [t["function"]["name"] for t in kept]
    if len(set(names)) != len(names):
        raise OptionError("`tools` names a function twice: give each function its own name.", "tools")
    return ToolSpec(json.dumps(kept, sort_keys=True), json.dumps(_choice(choice, names)))


def _function_tool(tool: Any, i: int) -> dict[str, Any]:
    where = f"tools[{i}]"
    if (
        not isinstance(tool, dict)
        or tool.get("type") != "function"
        or not isinstance(tool.get("function"), dict)
    ):
        raise OptionError(
            f'`{where}` must be {{"type": "function", "function": {{"name": ..., "parameters": ...}}}}: '
            "only function tools are supported.",
            where,
        )
    fn = tool["function"]
    name = fn.get("name")
    if not isinstance(name, str) or not TOOL_NAME.match(name):
        raise OptionError(
            f"`{where}.function.name` must be 1 to 64 letters, digits, underscores or dashes.",
            f"{where}.function.name",
        )
    out: dict[str, Any] = {"name": name}
    description = fn.get("description")
    if description is not None:
        if not isinstance(description, str):
            raise OptionError(
                f"`{where}.function.description` must be text.", f"{where}.function.description"
            )
        out["description"] = description
    params = fn.get("parameters")
    if params is not None:
        if not isinstance(params, dict):
            raise OptionError(
                f"`{where}.function.parameters` must be a JSON Schema object.", f"{where}.function.parameters"
            )
        try:
            validator_for(params).check_schema(params)
        except SchemaError as exc:
            raise OptionError(
                f"`{where}.function.parameters` is not a valid JSON Schema: {exc.message[:200]}.",
                f"{where}.function.parameters",
            ) from None
        out["parameters"] = params
    else:
        out["parameters"] = {"type": "object", "properties": {}}
    return {"type": "function", "function": out}


def _choice(choice: Any, names: list[str]) -> str | dict[str, Any]:
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        if choice in CHOICES:
            return choice
        raise OptionError(
            f'`tool_choice` {choice[:40]!r} is not one of "auto", "none", "required" or a function.',
            "tool_choice",
        )
    name = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or not isinstance(name, str):
        raise OptionError(
            '`tool_choice` must be "auto", "none", "required" or {"type": "function", "function": '
            '{"name": ...}}.',
            "tool_choice",
        )
    if name not in names:
        raise OptionError(
            f"`tool_choice` names {name[:64]!r}, not one of `tools`: name one of {', '.join(names)}.",
            "tool_choice",
        )
    return {"type": "function", "function": {"name": name}}


def carries_tools(messages: Any) -> bool:
    """Does this prompt hold tool calls or their results (a turn only a tool-calling backend can read)?"""
    return any(m.type == "tool" or (m.type == "ai" and getattr(m, "tool_calls", None)) for m in messages)
