"""The Hermes / Qwen tool-calling convention, both ways: the tools block a prompt shows, and the calls parsed back.

Qwen2.5's and Qwen3's chat templates render `tools=` as a `# Tools` section of the system message listing each
schema inside `<tools></tools>`, and the model answers a call as

    <tool_call>
    {"name": "add", "arguments": {"a": 1, "b": 2}}
    </tool_call>

Templates that ignore `tools=` (SmolLM2's renders roles and content only) get the same section written into the
system message by `with_tools_system_message`, so every model sees one convention and one parser reads it.
SmolLM2 was taught a JSON list inside the tags (`<tool_call>[{"name": ..., "arguments": ...}]</tool_call>`); a list
of calls is read too.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

# Qwen2.5-Instruct's chat template, word for word, so a model trained on it reads what it was trained on.
TOOLS_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>"
)
_CALL = re.compile(r"<tool_call>(.*?)(</tool_call>|\Z)", re.DOTALL)
_SHAPE = 'a tool call is {"name": <function-name>, "arguments": {...}} inside <tool_call></tool_call>'


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BadCall:
    """A `<tool_call>` that cannot be run; `error` is the sentence the model reads back."""

    error: str
    name: str = "unknown"


def tools_block(schemas: list[dict]) -> str:
    """The `# Tools` section for these schemas, as Qwen2.5's template writes it (one JSON schema a line)."""
    return TOOLS_HEADER + "".join("\n" + json.dumps(schema, ensure_ascii=False) for schema in schemas) + TOOLS_FOOTER


def with_tools_system_message(messages: list[dict], schemas: list[dict]) -> list[dict]:
    """The messages with the tools section appended to the system message (one is added when there is none)."""
    block = tools_block(schemas)
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": messages[0]["content"] + "\n\n" + block}, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


def parse_tool_calls(text: str) -> list[ToolCall | BadCall]:
    """Every `<tool_call>` of a model turn, in order: a `ToolCall`, or a `BadCall` saying what is wrong with it
    (not closed, not JSON, not a {"name", "arguments"} object). Text without the tag has no calls."""
    calls: list[ToolCall | BadCall] = []
    for match in _CALL.finditer(text):
        body, closed = match.group(1).strip(), match.group(2)
        if not closed:
            calls.append(BadCall("the tool call is not closed with </tool_call>"))
            continue
        try:
            data = json.loads(body)
        except ValueError as err:
            calls.append(BadCall(f"the tool call is not valid JSON ({err.msg} at character {err.pos})"))
            continue
        calls += [_call(item) for item in (data if isinstance(data, list) and data else [data])]
    return calls


def _call(data) -> ToolCall | BadCall:
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return BadCall(_SHAPE)
    name, arguments = data["name"], data.get("arguments", {})
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return BadCall(f"the arguments of {name} are not a JSON object", name)
    if not isinstance(arguments, dict):
        return BadCall(f"the arguments of {name} are not a JSON object", name)
    return ToolCall(name, arguments)
