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
    """

    prompt_id: str
    prompt: str
    answer: str
    solution: str | None = None
    columns: Mapping[str, Any] = field(default_factory=dict)
