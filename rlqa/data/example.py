"""One prompt of a dataset: what the model sees, the gold answer, and the columns reward functions may read."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Example:
    """A prompt with its gold answer.

    `prompt_id` is stable and unique within a dataset: sampling seeds and per-prompt state are keyed by it.
    `answer` is the gold final answer as math-verify's gold takes it (e.g. "56" or "\\frac{1}{2}").
    `solution` is a worked solution ending in the boxed answer (the SFT completion), or None.
    `columns` holds the row's other dataset columns (e.g. rank, source, level), passed on to reward functions.
    `messages` are the chat messages `prompt` was rendered from when the chat template is on (conversational data,
    as TRL calls it), else None.
    """

    prompt_id: str
    prompt: str
    answer: str
    solution: str | None = None
    columns: Mapping[str, Any] = field(default_factory=dict)
    messages: tuple[Mapping[str, str], ...] | None = None


def reward_inputs(examples: list[Example], texts: list[str]) -> tuple[list, list]:
    """(prompts, completions) as TRL's GRPOTrainer passes them to reward functions, one per completion text: for
    conversational examples the prompt's messages and `[{"role": "assistant", "content": text}]`, else the prompt text
    and the completion text. Each call gets fresh lists, as TRL's do (a function may change them in place)."""
    prompts = [e.prompt if e.messages is None else [dict(m) for m in e.messages] for e in examples]
    completions = [
        text if e.messages is None else [{"role": "assistant", "content": text}] for e, text in zip(examples, texts, strict=True)
    ]
    return prompts, completions
