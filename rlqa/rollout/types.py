"""The records that travel between the driver, the rollout workers and the learner."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class GenerationRequest:
    """One sample to generate. Requests are built in one place (rlqa.rollout.seeding.seeded_requests), for training,
    dynamic sampling's extra rounds and evaluation alike."""

    prompt_id: str
    sample_index: int
    prompt_tokens: tuple[int, ...]
    seed: int  # from rlqa.rollout.seeding.sample_seed(run seed, step, prompt id, sample index)
    row: dict | None = None  # rollout.environment: the dataset row its reset(**row) gets (rlqa.tools.environment)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float  # 0 = greedy
    max_new_tokens: int
    top_k: int = 0
    top_p: float = 1.0


@dataclass
class Rollout:
    """One sampled completion of one prompt.

    `loss_mask`, when given, has one entry per completion token: 1 for a token the model sampled, 0 for one it did
    not (a tool's output or an environment's message inserted between turns). The learner trains on, and every
    length, loss, KL, entropy and log-prob-gap metric counts, the model's tokens only. None (every rollout of a
    single-turn generation, and every checkpoint written before the field) means all ones."""

    prompt_id: str
    sample_index: int
    prompt_tokens: list[int]
    completion_tokens: list[int]  # up to and including EOS when finish_reason == "stop"
    logprobs: list[float]  # log-prob of each completion token under the sampling policy at its temperature
    finish_reason: str  # "stop" | "length"
    policy_version: int
    text: str = ""  # the decoded completion, without special tokens
    loss_mask: list[int] | None = None  # per completion token: 1 the model's, 0 a tool's / environment's; None: all 1
    # a multi-turn (tool) rollout's counts (rlqa.rollout.multi_turn); None / 0 for single-turn generation
    turns: int | None = None  # model turns
    tool_calls: int = 0  # tool calls answered, errors and timeouts included
    tool_errors: int = 0  # calls that gave an error message: malformed, unknown tool, bad arguments, raised, crashed
    tool_timeouts: int = 0  # calls stopped at rollout.tool_deadline_s
    # rollout.environment (rlqa.tools.environment): get_reward() at the episode's end (None: no environment or no
    # get_reward; NaN: the instance failed, `environment_error` says how, and the environment term counts a failure)
    environment_reward: float | None = None
    environment_error: str = ""

    def __post_init__(self):
        check_loss_mask(self.loss_mask, len(self.completion_tokens))

    @property
    def model_tokens(self) -> int:
        """How many completion tokens the model sampled: the length every length reward and metric counts."""
        return len(self.completion_tokens) if self.loss_mask is None else sum(self.loss_mask)


def check_loss_mask(loss_mask: list[int] | None, completion_length: int) -> None:
    """A loss mask is None or one 0/1 per completion token; anything else is a bug in whatever built it."""
    if loss_mask is None:
        return
    if len(loss_mask) != completion_length:
        raise ValueError(f"loss_mask has {len(loss_mask)} entries for {completion_length} completion tokens")
    if any(m not in (0, 1) for m in loss_mask):
        raise ValueError(f"loss_mask entries must be 0 or 1, got {sorted(set(loss_mask))}")


class Generator(Protocol):
    """The one seam of generation: requests in, rollouts out, one per request and in request order, each tagged with
    policy `version` (the weights its generator holds). The rollout workers (rlqa.rollout.group.RolloutGroup), a
    single engine (rlqa.rollout.backends) and the test stand-ins all are one; training, dynamic sampling and the
    held-out evaluation all generate through it."""

    def generate(self, requests: list[GenerationRequest], params: SamplingParams, version: int) -> list[Rollout]: ...
