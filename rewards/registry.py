"""Reward functions by name: the built-ins, any importable `package.module:function`, or `path/to/file.py:function`.

A recipe names each reward term's function with one of these specs. Loading one is the only place a spec turns into
code, so every way a spec can be wrong ends here as a one-line `UserError`.
"""

import inspect
from collections.abc import Callable
from pathlib import Path

from rlqa.errors import UserError
from rlqa.loading import absolute_location, load_attribute

# Short names a recipe may use; other engineers add theirs here.
BUILTIN_REWARDS: dict[str, str] = {
    "accuracy": "rewards.math:accuracy",
    "hapo_length": "rewards.length:hapo_length",
    "overlong_penalty": "rewards.length:overlong_penalty",
    "length_penalty": "rewards.length:length_penalty",
    "easy_prompt_length_bias": "rewards.length:easy_prompt_length_bias",
    "boxed_format": "rewards.format:boxed_format",
    "think_format": "rewards.format:think_format",
    "environment": "rewards.environment:environment",
}


# Rewards the pipeline scores one completion per task, each under its own deadline, so that one hung answer costs only
# itself: spec -> (the function a task runs, returning (score, answer found) per completion; the keyword holding the
# per-completion deadline).
PER_SAMPLE: dict[str, tuple[str, str]] = {
    "rewards.math:accuracy": ("rewards.math:judge_completions", "verify_deadline_s"),
}


def resolve_spec(spec: str, *, base_dir: Path | None = None) -> str:
    """The canonical form of a spec: built-in names expanded, file paths made absolute. Imports nothing.

    Two specs naming the same function resolve to the same string, e.g. "accuracy" and "rewards.math:accuracy".
    """
    spec = spec.strip()
    if ":" not in spec:
        if spec not in BUILTIN_REWARDS:
            raise UserError(
                f"reward {spec!r}: not a built-in reward (built-ins: {', '.join(sorted(BUILTIN_REWARDS))}); "
                "custom rewards are 'package.module:function' or 'path/to/file.py:function'"
            )
        return BUILTIN_REWARDS[spec]
    location, _, attribute = spec.rpartition(":")
    if not location or not attribute:
        raise UserError(f"reward {spec!r}: expected 'package.module:function' or 'path/to/file.py:function'")
    return f"{absolute_location(location, base_dir)}:{attribute}"


def function_name(spec: str) -> str:
    """The name a term gets by default: the function's own name ("rewards.math:accuracy" -> "accuracy")."""
    return spec.rpartition(":")[2].rpartition(".")[2] or spec


def load_reward_fn(spec: str, *, base_dir: Path | None = None) -> Callable:
    """The function a spec names; relative file paths are resolved against base_dir (the recipe's directory)."""
    resolved = resolve_spec(spec, base_dir=base_dir)
    target = load_attribute(resolved, f"reward {spec!r}", "rlqa_user_rewards")
    attribute = resolved.rpartition(":")[2]
    if not callable(target):
        raise UserError(f"reward {spec!r}: {attribute} is not callable (type {type(target).__name__})")
    return target


def check_call(spec: str, fn: Callable, kwargs: dict) -> None:
    """A `UserError` unless `fn` can take the call rewards get, as TRL's GRPOTrainer makes it: by keyword, with
    prompts=, completions=, completion_ids=, every column and the term's kwargs, so it needs a `**kwargs`."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or C function: nothing to check
        return
    parameters = list(signature.parameters.values())
    positional = [p.name for p in parameters if p.kind == p.POSITIONAL_ONLY and p.default is p.empty]
    if positional:
        raise UserError(
            f"reward {spec!r}: {_name(fn)}{signature} takes {', '.join(positional)} positionally only; reward "
            "functions are called by keyword (prompts=, completions=, completion_ids=, then the dataset columns)"
        )
    if not any(p.kind == p.VAR_KEYWORD for p in parameters):
        raise UserError(
            f"reward {spec!r}: {_name(fn)}{signature} has no **kwargs; reward functions are called as TRL calls "
            "them, by keyword with prompts=, completions=, completion_ids= and every dataset column, so the "
            "signature needs one, e.g. def f(completions, **kwargs)"
        )


def _name(fn: Callable) -> str:
    return getattr(fn, "__name__", type(fn).__name__)
