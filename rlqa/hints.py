"""QuestA's hints: a prompt the policy (nearly) never solves is trained on with the start of its reference solution.

Which prompts: those whose estimated pass rate (the sampler's estimate) is below `hints.below`, once the sampler has
an estimate for them. What the policy sees: the prompt followed by the first k lines of the solution, never its last
line (the answer), as the beginning of its own answer; the completion goes on from there and is scored as usual.

    k = floor(f_i · ramp(step) · (L_i - 1))         L_i: the solution's lines; f_i starts at hints.fraction
    ramp(step) = max(0, 1 - step / (until · trainer.steps))

How hints fade: per prompt, each hinted group whose pass rate reaches `solved_at` multiplies f_i by `fade`; over the
run, the ramp takes every k to 0 by `until` of the steps. A prompt whose k is 0 is drawn plain.

Grouping: a hinted prompt has its own id, `<id>#hint<k>`, which names its own prompt text and tokens and seeds its
samples. Its rollouts are a group of their own as every drawn prompt's are (a group is a position in the step,
rlqa.stages.StepBatch), and its outcomes fade its hint instead of counting as the plain prompt's pass rate.
Held-out evaluation never sees hints. The state is the f_i that faded, saved with the sampler's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from rlqa.config import HintsConfig
from rlqa.data.example import Example
from rlqa.errors import UserError

MARK = "#hint"


def hinted_id(prompt_id: str, lines: int) -> str:
    return f"{prompt_id}{MARK}{lines}"


def split_hinted(prompt_id: str) -> tuple[str, int]:
    """(plain prompt id, hint lines): ("q7#hint2") → ("q7", 2); a plain id → (id, 0)."""
    base, mark, lines = prompt_id.rpartition(MARK)
    if mark and lines.isdigit():
        return base, int(lines)
    return prompt_id, 0


def solution_of(example: Example, column: str) -> str | None:
    value = example.solution if column == "solution" else example.columns.get(column)
    return value if isinstance(value, str) and value.strip() else None


def hint_lines(solution: str | None) -> int:
    """How many lines a hint may show: all but the last (the answer)."""
    return max(len(solution.strip().splitlines()) - 1, 0) if solution else 0


def hint_text(solution: str, lines: int) -> str:
    return "".join(line + "\n" for line in solution.strip().splitlines()[:lines])


class HintSchedule:
    """Which prompts get a hint and how long it is (the module's rule); the sampler's, and saved with its state."""

    def __init__(self, cfg: HintsConfig, lines: Mapping[str, int], total_steps: int):
        self._cfg = cfg
        self._lines = dict(lines)  # prompt id → L - 1
        self._total_steps = total_steps
        self._fraction: dict[str, float] = {}  # prompt id → f_i, where it has faded from hints.fraction

    def lines(self, prompt_id: str, step: int) -> int:
        ramp = max(0.0, 1.0 - step / (self._cfg.until * self._total_steps))
        share = self._fraction.get(prompt_id, self._cfg.fraction) * ramp
        return math.floor(share * self._lines.get(prompt_id, 0))

    def choose(self, prompt_id: str, step: int, pass_rate: float, known: bool) -> str:
        """The id to draw `prompt_id` as at `step`: hinted when the estimate says it is (nearly) never solved."""
        if not known or pass_rate >= self._cfg.below:
            return prompt_id
        lines = self.lines(prompt_id, step)
        return hinted_id(prompt_id, lines) if lines else prompt_id

    def record(self, prompt_id: str, verdicts: Sequence[bool]) -> None:
        """A hinted group of `prompt_id` was scored: once solved often enough, its hint fades."""
        if verdicts and sum(verdicts) / len(verdicts) >= self._cfg.solved_at:
            self._fraction[prompt_id] = self._fraction.get(prompt_id, self._cfg.fraction) * self._cfg.fade

    def state_dict(self) -> dict[str, Any]:
        return {"fraction": dict(self._fraction)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._fraction = {prompt_id: float(f) for prompt_id, f in state["fraction"].items()}


def schedule_lines(examples: Sequence[Example], cfg: HintsConfig) -> dict[str, int]:
    """L - 1 per training prompt from `hints.column`; a one-line error when no prompt has a solution to hint with."""
    lines = {}
    for e in examples:
        if MARK in e.prompt_id:
            raise UserError(f"sampler.hints: prompt id {e.prompt_id!r} contains {MARK!r}, which marks hinted prompts")
        lines[e.prompt_id] = hint_lines(solution_of(e, cfg.column))
    if not any(lines.values()):
        raise UserError(
            f"sampler.hints.column: no training example has a solution of two or more lines in {cfg.column!r} to hint with"
        )
    return lines


class HintedExamples(dict):
    """Training examples by prompt id. A hinted id's example is made from its prompt's the first time it is looked up:
    the prompt followed by the hint."""

    def __init__(self, examples: Mapping[str, Example], column: str):
        super().__init__(examples)
        self._column = column

    def __missing__(self, prompt_id: str) -> Example:
        base, lines = split_hinted(prompt_id)
        if not lines:
            raise KeyError(prompt_id)
        plain = self[base]
        hinted = replace(plain, prompt_id=prompt_id, prompt=plain.prompt + hint_text(solution_of(plain, self._column), lines))
        self[prompt_id] = hinted
        return hinted


class HintedTokens(dict):
    """Prompt token ids by prompt id; a hinted id's are its prompt's followed by the hint's (made when first asked)."""

    def __init__(self, tokens: Mapping[str, tuple[int, ...]], examples: HintedExamples, tokenizer):
        super().__init__(tokens)
        self._examples, self._tokenizer = examples, tokenizer

    def __missing__(self, prompt_id: str) -> tuple[int, ...]:
        base, lines = split_hinted(prompt_id)
        if not lines:
            raise KeyError(prompt_id)
        hint = self._examples[prompt_id].prompt[len(self._examples[base].prompt):]
        tokens = self[base] + tuple(self._tokenizer(hint, add_special_tokens=False).input_ids)
        self[prompt_id] = tokens
        return tokens
