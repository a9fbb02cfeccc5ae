"""The records that travel between the driver, the rollout workers and the learner."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GenerationRequest:
    prompt_id: str
    sample_index: int
    prompt_tokens: tuple[int, ...]
    seed: int  # from rlqa.rollout.seeding.sample_seed(run seed, step, prompt id, sample index)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float  # 0 = greedy
    max_new_tokens: int
    top_k: int = 0
    top_p: float = 1.0


@dataclass
class Rollout:
    prompt_id: str
    sample_index: int
    prompt_tokens: list[int]
    completion_tokens: list[int]  # up to and including EOS when finish_reason == "stop"
    logprobs: list[float]  # log-prob of each completion token under the sampling policy at its temperature
    finish_reason: str  # "stop" | "length"
    policy_version: int
    text: str = ""  # the decoded completion, without special tokens
