"""Tools by name: the built-in `python`, any importable `package.module:function`, or `path/to/file.py:function`.

A tool is a plain typed function with a Google-style docstring, as TRL's GRPOTrainer takes them: transformers'
`get_json_schema` turns it into the JSON schema the chat template renders (`apply_chat_template(..., tools=...)`).
Loading a `rollout.tools` list is the one place a spec becomes code and a schema, so every way a spec can be wrong
(not importable, not callable, no type hints or docstring, two tools of one name) ends here as a one-line
`UserError`, at `rlqa check` and before a run starts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rlqa.errors import UserError
from rlqa.loading import absolute_location, load_attribute

# The short names a recipe may use; the built-in python tool runs in the sandbox with the recipe's limits
# (rlqa.tools.runner), not through this function's defaults.
BUILTIN_TOOLS: dict[str, str] = {"python": "rlqa.tools.python_tool:python"}
PYTHON_SPEC = BUILTIN_TOOLS["python"]


def resolve_tool_spec(spec: str, base_dir: Path | str | None = None) -> str:
    """The canonical form of a spec: a built-in name expanded, a file path made absolute. Imports nothing."""
    spec = spec.strip()
    if ":" not in spec:
        if spec not in BUILTIN_TOOLS:
            raise UserError(
                f"rollout.tools: {spec!r} is not a built-in tool (built-ins: {', '.join(sorted(BUILTIN_TOOLS))}); "
                "other tools are 'package.module:function' or 'path/to/file.py:function'"
            )
        return BUILTIN_TOOLS[spec]
    location, _, attribute = spec.rpartition(":")
    if not location or not attribute:
        raise UserError(f"rollout.tools: {spec!r}: expected 'package.module:function' or 'path/to/file.py:function'")
    return f"{absolute_location(location, base_dir)}:{attribute}"


def load_tool(spec: str) -> Callable:
    """The function a resolved spec names."""
    target = load_attribute(spec, f"rollout.tools: {spec!r}", "rlqa_user_tools")
    attribute = spec.rpartition(":")[2]
    if not callable(target):
        raise UserError(f"rollout.tools: {spec!r}: {attribute} is not callable (type {type(target).__name__})")
    return target


def tool_schema(fn: Callable, spec: str) -> dict:
    """The JSON schema of one tool, from its type hints and docstring (transformers' `get_json_schema`):
    {"type": "function", "function": {"name", "description", "parameters": {...}}}."""
    from transformers.utils import get_json_schema

    try:
        schema = get_json_schema(fn)
    except Exception as err:  # TypeHintParsingException, DocstringParsingException, or a hint it cannot map
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"rollout.tools: {spec!r}: {message}") from None
    schema["function"].pop("return", None)  # templates render the parameters; the return type is not the model's
    return schema


def load_tools(specs: list[str], base_dir: Path | str | None = None, python_limits=None) -> list[tuple[str, Callable, dict]]:
    """(resolved spec, function, schema) of each spec, in order; two tools of one name are a UserError, since the
    model calls a tool by its name alone. The built-in python tool's description states `python_limits` (a
    `SandboxLimits`, the recipe's) where its docstring states the defaults."""
    loaded, names = [], {}
    for spec in specs:
        resolved = resolve_tool_spec(spec, base_dir)
        fn = load_tool(resolved)
        schema = tool_schema(fn, spec)
        if resolved == PYTHON_SPEC and python_limits is not None:
            schema = _with_limits(schema, python_limits)
        name = schema["function"]["name"]
        if name in names:
            raise UserError(f"rollout.tools: {names[name]!r} and {spec!r} are both named {name!r}; a model calls a tool by its name")
        names[name] = spec
        loaded.append((resolved, fn, schema))
    return loaded


def tool_schemas(rollout, base_dir: Path | str | None = None) -> list[dict]:
    """The schemas of a validated `rollout` section's tools: what the prompt shows the model."""
    from rlqa.tools.environment import environment_info
    from rlqa.tools.runner import python_limits

    schemas = [schema for _, _, schema in load_tools(list(rollout.tools), base_dir, python_limits(rollout))]
    environment = environment_info(rollout, base_dir)
    return schemas + (environment.schemas if environment is not None else [])


def check_tools(recipe) -> None:
    """A recipe's tools and environment load and make schemas (a UserError if not): `rlqa check` and `rlqa train`
    run this before anything starts or is written."""
    from rlqa.tools.environment import check_environment

    if recipe.rollout.tools:
        tool_schemas(recipe.rollout, recipe.base_dir)
    check_environment(recipe)


def describe_limits(limits) -> str:
    """The python tool's limits as its docstring words them: "10 seconds, 1 GB of memory and 64 KB of output"."""
    memory = f"{limits.memory_mb // 1024} GB" if limits.memory_mb % 1024 == 0 else f"{limits.memory_mb} MB"
    output = limits.max_output_bytes
    output = f"{output // 1024} KB" if output % 1024 == 0 else f"{output} bytes"
    return f"{limits.wall_s:g} seconds, {memory} of memory and {output} of output"


def _with_limits(schema: dict, limits) -> dict:
    from rlqa.tools.python_tool import SandboxLimits

    function = schema["function"]
    description = function["description"].replace(describe_limits(SandboxLimits()), describe_limits(limits))
    return {**schema, "function": {**function, "description": description}}
