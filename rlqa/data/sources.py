"""Build the examples a recipe's dataset section describes: a file or dataset directory, or a built-in generated task."""

from __future__ import annotations

from dataclasses import replace

from rlqa.config import DatasetConfig, Recipe
from rlqa.recipe_files import resolve_path
from rlqa.data.example import Example
from rlqa.data.loaders import check_prompt_options, load_examples, render_prompt
from rlqa.errors import UserError
from rlqa.tasks.arithmetic import make_examples


def build_examples(spec: DatasetConfig, recipe: Recipe, tokenizer, where: str) -> list[Example]:
    """The examples of one dataset section; with `rollout.tools` or `rollout.environment`, each prompt shows the model
    its tools (the environment's methods among them)."""
    tools = None
    if recipe.rollout.tools or recipe.rollout.environment:
        from rlqa.rollout.multi_turn import check_tool_template
        from rlqa.tools.registry import tool_schemas

        tools = tool_schemas(recipe.rollout, recipe.base_dir)
        check_tool_template(tokenizer, f"{where}.chat_template")
    if spec.task == "arithmetic":
        examples = _templated(make_examples(spec), spec, tokenizer, where, tools)
    else:
        path = resolve_path(recipe, spec.path)
        if not path.exists():
            raise UserError(f"{where}.path: file not found: {path}")
        examples = load_examples(path, spec, tokenizer, tools)
    if spec.limit is not None:
        examples = examples[: spec.limit]
    ids = [e.prompt_id for e in examples]
    if len(set(ids)) != len(ids):
        raise UserError(f"{where}: prompt ids are not unique (set {where}.id_key to a column with unique values)")
    return examples


def _templated(examples: list[Example], spec: DatasetConfig, tokenizer, where: str, tools: list[dict] | None) -> list[Example]:
    """A built-in task's prompts through prompt_template (over the example's columns) and, if on, the chat template."""
    check_prompt_options(f"{where}.chat_template", spec.chat_template, tokenizer)
    rendered = [
        render_prompt(
            {**e.columns, "prompt": e.prompt}, "jsonl", "prompt", spec.prompt_template, spec.chat_template, tokenizer,
            spec.system_prompt, where, tools,
        )
        for e in examples
    ]
    return [replace(e, prompt=prompt, messages=messages) for e, (prompt, messages) in zip(examples, rendered)]
