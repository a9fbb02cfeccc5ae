"""The stages of one RL step (DESIGN.md "One step"), as functions over one typed `StepBatch`.

Each stage reads what earlier stages put into the batch, adds its own part, and returns its metrics under its own
namespace; the trainer merges them and refuses a key produced twice (`rlqa.metrics.merge`). The batch computes each
grouping of rollouts once (`group_ids`, `groups`), and every stage uses those. A group is a position in the step's
list of prompts, not a prompt id: should a step hold the same prompt twice (drawn again in an extra round), each
occurrence is a group of its own for the advantages, dynamic sampling, the sampler update and the yield, with
sample indices of its own (a hinted prompt is another prompt, `<id>#hint<k>`).

    draw                   1     the sampler's prompts and rollout counts, one seeded request     (a StepRequests)
                                 per sample
    generate               2     requests in, rollouts out (the one seam, rlqa.rollout.types.      rollout/*, tools/*
                                 Generator); the Schedule decides when it runs
    score                  3     rewards, correctness                                              reward/*, correct/*
    dynamic_sampling       2-3   DAPO: constant groups out, extra rounds of 1-3 until enough remain sampler/filtered_groups,
                                 (only with `sampler.dynamic_sampling`)                             extra_rounds, prompts_generated
    advance_sampler        4     difficulty estimates and the length history                       sampler/*
    estimate_advantages    5     outcome advantages (token-level ones, GAE, are the learner's)     advantage/*
    account_yield          5b    rollouts and tokens with learning signal, step and run totals     yield/*
    (the Schedule trains: 5, the learner's update; and syncs the weights: 7)                      policy/*, critic/*,
                                 the learner's log-prob gap to the sampler before it updates   rollout/logprob_diff_*
    update_temperature     6     the controller follows the entropy just measured                  policy/target_entropy,
                                                                                                       temperature/next

A new stage slots in the same way: a function over the batch that returns its own metrics.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cached_property

import torch

from rlqa.algorithms.advantages import get_advantage_estimator, group_stats
from rlqa.config import Recipe
from rlqa.data.example import Example, reward_inputs
from rlqa.learner.batch import TrainSample
from rlqa.length_history import LengthHistory
from rlqa.rollout.seeding import seeded_requests
from rlqa.rollout.types import GenerationRequest, Generator, Rollout, SamplingParams
from rlqa.sampler import RolloutSampler
from rlqa.temperature import TemperatureController
from rlqa.yields import YieldTotals
from rewards.pipeline import RewardPipeline


@dataclass(frozen=True)
class StepRequests:
    """One round of a step's generation, before it runs (stage 1's output, the Schedule's input): the groups drawn,
    as (prompt id, rollout count) in the sampler's order, one request per sample in the same order, and how to
    sample them. The step's first round and each of dynamic sampling's extra rounds are one."""

    step: int
    prompts: list[tuple[str, int]]
    requests: list[GenerationRequest]
    params: SamplingParams


@dataclass
class StepBatch:
    """One step's data. `rollouts` are in request order: group by group as the sampler drew them (dynamic sampling's
    extra rounds after the first), then by sample index; group g is the g-th entry of `prompts` and owns the next
    count_g rollouts, whatever its prompt id. Stages fill the later fields; N = number of rollouts, G of groups,
    K = those kept: in a group the update trains on, and not dropped by a reward failure."""

    step: int
    temperature: float  # the temperature the rollouts were sampled at (and the update's forward uses)
    prompts: list[tuple[str, int]]  # (prompt id, rollout count) of each group, in the sampler's order
    rollouts: list[Rollout]  # (N,)
    rewards: list[float] = field(default_factory=list)  # (N,) total reward; NaN where dropped          (stage 3)
    correct: list[bool | None] = field(default_factory=list)  # (N,) None: no verdict                 (stage 3)
    dropped: list[bool] = field(default_factory=list)  # (N,)                                           (stage 3)
    advantages: torch.Tensor | None = None  # (K,) outcome advantages; None when the learner computes them (stage 5)
    filtered: list[bool] = field(default_factory=list)  # (G,) left out of the update; empty: none   (dynamic sampling)

    @cached_property
    def group_ids(self) -> torch.Tensor:
        """(N,) long: the group of each rollout, its group's position in `prompts`. Rollouts that do not line up with
        the groups (a generator that lost or reordered some) are a bug, and raise."""
        counts = [count for _, count in self.prompts]
        expected = [prompt_id for prompt_id, count in self.prompts for _ in range(count)]
        if [r.prompt_id for r in self.rollouts] != expected:
            raise ValueError(f"step {self.step}: the rollouts do not follow the groups {self.prompts} in request order")
        return torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts, dtype=torch.long))

    @cached_property
    def groups(self) -> list[list[int]]:
        """The rollout indices of each prompt, in `prompts` order."""
        members: list[list[int]] = [[] for _ in self.prompts]
        for i, g in enumerate(self.group_ids.tolist()):
            members[g].append(i)
        return members

    @property
    def trained(self) -> list[int]:
        """Indices of the rollouts in the groups the update trains on (all, unless dynamic sampling filtered some)."""
        if not self.filtered:
            return list(range(len(self.rollouts)))
        return [i for i, g in enumerate(self.group_ids.tolist()) if not self.filtered[g]]

    @property
    def kept(self) -> list[int]:
        """Indices of the trained rollouts a reward failure did not drop."""
        return [i for i in self.trained if not self.dropped[i]]

    def informative(self, signal: str = "accuracy") -> list[bool]:
        """(G,) whether a group's rollouts (those not dropped) differ in `signal`: "accuracy", their verdicts (no
        verdict counts as wrong), as DAPO filters, or "reward", their total rewards. A group all right or all wrong
        teaches DAPO nothing, even when a shaping term (an overlong penalty) spreads its rewards; a group of equal
        rewards has advantages all 0."""
        flags = [False] * len(self.prompts)
        scored = [i for i, dropped in enumerate(self.dropped) if not dropped]
        if scored:
            ids = self.group_ids[scored]  # (S,)
            values = [float(bool(self.correct[i])) for i in scored] if signal == "accuracy" else [self.rewards[i] for i in scored]
            values = torch.tensor(values, dtype=torch.float32)
            for g, constant in zip(ids.tolist(), group_stats(values, ids).constant.tolist()):
                flags[g] = not constant
        return flags

    def generated_tokens(self) -> int:
        """Completion tokens of every rollout generated, filtered groups included."""
        return sum(len(r.completion_tokens) for r in self.rollouts)

    def extended(self, more: StepBatch) -> StepBatch:
        """This scored batch followed by `more`, a scored extra round of the same step (its groupings recomputed)."""
        return StepBatch(
            self.step, self.temperature, self.prompts + more.prompts, self.rollouts + more.rollouts,
            self.rewards + more.rewards, self.correct + more.correct, self.dropped + more.dropped,
        )

    def to_state(self) -> dict:
        """A generated, not yet scored batch as JSON-ready data (an async checkpoint holds the next step's). Floats
        survive JSON exactly (shortest round-trip repr)."""
        if self.rewards:
            raise ValueError("only an unscored batch is saved: scoring is the step's own work")
        return {
            "step": self.step, "temperature": self.temperature, "prompts": [list(p) for p in self.prompts],
            "rollouts": [asdict(r) for r in self.rollouts],
        }

    @classmethod
    def from_state(cls, state: dict) -> StepBatch:
        return cls(
            state["step"], state["temperature"], [(pid, count) for pid, count in state["prompts"]],
            [Rollout(**r) for r in state["rollouts"]],
        )

    def kept_rewards(self) -> torch.Tensor:
        """(K,) float32 total rewards of the kept rollouts."""
        return torch.tensor([self.rewards[i] for i in self.kept], dtype=torch.float32)

    def train_samples(self) -> list[TrainSample]:
        """What the learner trains on: the kept rollouts with their advantage (0 when the learner computes its own)
        and reward."""
        kept, rewards = self.kept, self.kept_rewards()
        advantages = torch.zeros_like(rewards) if self.advantages is None else self.advantages
        return [
            TrainSample(
                self.rollouts[i].prompt_tokens, self.rollouts[i].completion_tokens, self.rollouts[i].logprobs, a,
                reward=r, loss_mask=self.rollouts[i].loss_mask,
            )
            for i, a, r in zip(kept, advantages.tolist(), rewards.tolist())
        ]


# -- 1-2. prompts, then their rollouts ---------------------------------------------------------------------------------


def draw(
    sampler: RolloutSampler, step: int, temperature: float, recipe: Recipe, prompt_tokens: dict[str, tuple[int, ...]],
    *, num_prompts: int | None = None, after: StepBatch | None = None,
) -> StepRequests:
    """Stage 1: the sampler's prompts and rollout counts for `step`, and one request per sample, seeded by (run seed,
    step, prompt id, sample index), sampled at `temperature`. `num_prompts` (default: the step's count) more prompts
    `after` the step's batch so far make an extra round of dynamic sampling; a prompt drawn again goes on with its
    sample indices (rlqa.rollout.seeding.seeded_requests)."""
    cfg = recipe.rollout
    prompts = sampler.next_batch(step, num_prompts)
    earlier = [] if after is None else [r.prompt_id for r in after.rollouts]
    requests = seeded_requests(prompts, step, recipe.trainer.seed, prompt_tokens, earlier)
    return StepRequests(step, prompts, requests, SamplingParams(temperature, cfg.max_new_tokens, cfg.top_k, cfg.top_p))


def generate(generator: Generator, asked: StepRequests, version: int) -> StepBatch:
    """Stage 2: the round's requests in, their rollouts out, by a generator holding policy `version`."""
    rollouts = generator.generate(asked.requests, asked.params, version)
    return StepBatch(asked.step, asked.params.temperature, list(asked.prompts), rollouts)


def rollout_metrics(batch: StepBatch, version: int, worker_restarts: int) -> dict[str, float]:
    """The rollouts the update trains on (dynamic sampling: `sampler/prompts_generated` says what was generated), and
    how many policy versions behind `version` (the policy the update started from + 1) they are. Lengths count the
    model's tokens (a multi-turn rollout's tool output is not the model's length); `rollout/tokens` counts every
    completion token, the work the learner's forward passes do."""
    trained = batch.trained
    rollouts = [batch.rollouts[i] for i in trained]
    lengths = [r.model_tokens for r in rollouts]
    correct_lengths = [n for n, i in zip(lengths, trained) if batch.correct[i]]
    return {
        "rollout/temperature": batch.temperature,
        "rollout/count": float(len(rollouts)),
        "rollout/generated": float(len(batch.rollouts)),
        "rollout/tokens": float(sum(len(r.completion_tokens) for r in rollouts)),
        "rollout/length_mean": sum(lengths) / len(lengths),
        "rollout/length_correct_mean": sum(correct_lengths) / len(correct_lengths) if correct_lengths else math.nan,
        "rollout/truncated_frac": sum(r.finish_reason == "length" for r in rollouts) / len(rollouts),
        "rollout/dropped": float(len(rollouts) - len(batch.kept)),
        "rollout/worker_restarts": float(worker_restarts),
        "rollout/staleness": staleness(version - 1, rollouts),
    } | tool_metrics(batch.rollouts)


def tool_metrics(rollouts: list[Rollout]) -> dict[str, float]:
    """Multi-turn (rollout.tools) rollouts only: every rollout generated this step, filtered groups included (their
    tools ran too): tool calls, the errors and timeouts among them (totals), and the model turns (mean)."""
    if not rollouts or any(r.turns is None for r in rollouts):
        return {}
    return {
        "tools/calls": float(sum(r.tool_calls for r in rollouts)),
        "tools/errors": float(sum(r.tool_errors for r in rollouts)),
        "tools/timeouts": float(sum(r.tool_timeouts for r in rollouts)),
        "tools/environment_errors": float(sum(bool(r.environment_error) for r in rollouts)),
        "rollout/turns": sum(r.turns for r in rollouts) / len(rollouts),
    }


def staleness(trained_version: int, rollouts: list[Rollout]) -> float:
    """Policy versions between the weights an update starts from and those that sampled its rollouts (mean):
    0 when synchronous, 1 in async mode (generated during the previous update)."""
    return trained_version - sum(r.policy_version for r in rollouts) / len(rollouts)


# -- 3. rewards ----------------------------------------------------------------------------------------------------------


def reward_columns(
    batch: StepBatch, examples: dict[str, Example], history: LengthHistory, sampler: RolloutSampler, max_new_tokens: int
) -> dict[str, list]:
    """The columns every reward function may ask for, aligned with the rollouts. `difficulty` is the sampler's live
    estimate as it stood before this step's outcomes (stage 4 comes after), None for a prompt it knows nothing of."""
    rollouts = batch.rollouts
    rows = [examples[r.prompt_id] for r in rollouts]
    columns: dict[str, list] = {
        "answer": [e.answer for e in rows],
        "prompt_id": [r.prompt_id for r in rollouts],
        "prompt_text": [e.prompt for e in rows],
        "completion_length": [r.model_tokens for r in rollouts],  # the model's tokens: what length rewards judge
        "finish_reason": [r.finish_reason for r in rollouts],
        "max_new_tokens": [max_new_tokens] * len(rollouts),
        "history_length": history.lengths_for([r.prompt_id for r in rollouts]),
        "difficulty": [sampler.estimate(r.prompt_id) for r in rollouts],
        "environment_reward": [r.environment_reward for r in rollouts],  # rollout.environment's get_reward()
    }
    for key in sorted({k for e in rows for k in e.columns}):
        columns.setdefault(key, [e.columns.get(key) for e in rows])
    return columns


def score(
    batch: StepBatch, pipeline: RewardPipeline, examples: dict[str, Example], history: LengthHistory,
    sampler: RolloutSampler, max_new_tokens: int,
) -> dict[str, float]:
    """Per-term rewards, their total and correctness per rollout; the pipeline's metrics (reward/*, correct/*).
    Prompts and completions reach the reward functions in TRL's shapes (message lists for conversational data)."""
    prompts, completions = reward_inputs([examples[r.prompt_id] for r in batch.rollouts], [r.text for r in batch.rollouts])
    scored = pipeline(
        completions, prompts, reward_columns(batch, examples, history, sampler, max_new_tokens),
        completion_ids=[list(r.completion_tokens) for r in batch.rollouts],
    )
    batch.rewards, batch.correct, batch.dropped = scored.total, scored.correct, scored.dropped
    return scored.metrics


# -- 2-3 again. dynamic sampling (DAPO) ------------------------------------------------------------------------------


def dynamic_sampling(
    batch: StepBatch, extra_round: Callable[[StepBatch, int], StepBatch], sampler: RolloutSampler, *, target: int,
    max_extra_rounds: int, signal: str = "accuracy",
) -> tuple[StepBatch, dict[str, float]]:
    """DAPO (ALGORITHMS.md §3): groups all right or all wrong (`signal` "accuracy", DAPO's filter; "reward": groups
    whose total rewards are all equal) are left out of the update; while fewer than
    `target` informative groups remain, `extra_round(batch, k)` draws, generates and scores k more prompts of the
    step after `batch` (stages 1-3 again), at most `max_extra_rounds` times, with

        k = min(target, ⌈shortfall · G / informative⌉, prompts the step may still draw)    (target if none informative)

    the shortfall over the informative share so far. The update takes the first `target` informative groups; every
    group still informs the sampler (stage 4). A step left with no informative group trains on all of them (all
    advantages 0) rather than on nothing. Returns the extended batch and its metrics."""
    rounds = 0
    while rounds < max_extra_rounds:
        informative = sum(batch.informative(signal))
        shortfall = target - informative
        k = min(target, sampler.prompts_left_in_step, -(-shortfall * len(batch.prompts) // informative) if informative else target)
        if shortfall <= 0 or k <= 0:
            break
        batch = batch.extended(extra_round(batch, k))
        rounds += 1
    informative = batch.informative(signal)
    trained = set([g for g, ok in enumerate(informative) if ok][:target])
    if trained:
        batch.filtered = [g not in trained for g in range(len(informative))]
    return batch, {
        "sampler/filtered_groups": float(informative.count(False)),
        "sampler/extra_rounds": float(rounds),
        "sampler/prompts_generated": float(len(batch.prompts)),
    }


# -- 4. the driver's state advances ----------------------------------------------------------------------------------


def advance_sampler(batch: StepBatch, sampler: RolloutSampler, history: LengthHistory) -> dict[str, float]:
    """Difficulty estimates from the verdicts (None: left out), the length history from the correct lengths, both from
    every group generated, each group one visit of its prompt (a prompt drawn twice in the step is updated twice);
    the allocation of this step, the share of groups that were all right or all wrong (no verdict counts as wrong),
    and the number of prompts the update trains on."""
    groups = batch.groups
    sampler.update([(pid, [batch.correct[i] for i in groups[g]]) for g, (pid, _) in enumerate(batch.prompts)])
    history.update([r.prompt_id for r in batch.rollouts], [r.model_tokens for r in batch.rollouts], batch.correct)
    verdicts = [[bool(batch.correct[i]) for i in members] for members in groups]
    return {
        **sampler.metrics(),
        "sampler/all_correct_frac": sum(all(g) for g in verdicts) / len(verdicts),
        "sampler/all_wrong_frac": sum(not any(g) for g in verdicts) / len(verdicts),
        "sampler/prompts": float(len(verdicts) - sum(batch.filtered)),
    }


# -- 5. advantages -------------------------------------------------------------------------------------------------------


def estimate_advantages(batch: StepBatch, estimator_name: str) -> dict[str, float]:
    """Outcome advantages of the kept rollouts within their groups. A token-level estimator (GAE) needs the critic's
    values: the learner computes it, and reports its own advantage/nonzero_frac."""
    estimator = get_advantage_estimator(estimator_name)
    if estimator.level == "token":
        batch.advantages = None
        return {}
    kept = batch.kept
    batch.advantages = estimator(batch.kept_rewards(), batch.group_ids[kept])  # (K,)
    return {"advantage/nonzero_frac": float((batch.advantages.abs() > 1e-8).float().mean()) if kept else 0.0}


# -- 5b. yield: how much of what was generated carried any learning signal ----------------------------------------------


def informative_rollouts(batch: StepBatch) -> list[int]:
    """Indices of the rollouts the update learns from: kept rollouts of a trained group whose advantages are not all
    zero. A token-level estimator (GAE) has no outcome advantages here; its groups count when their rewards differ
    (the critic's values make every advantage nonzero, signal or not)."""
    kept = batch.kept
    if batch.advantages is None:
        flags = batch.informative()
        return [i for i in kept if flags[int(batch.group_ids[i])]]
    signal = {int(g) for g, a in zip(batch.group_ids[kept].tolist(), batch.advantages.tolist()) if a != 0.0}
    return [i for i in kept if int(batch.group_ids[i]) in signal]


def account_yield(batch: StepBatch, totals: YieldTotals) -> dict[str, float]:
    """yield/*: the step's informative rollouts and their generated tokens, against everything generated this step
    (filtered groups and dropped rollouts included, as they were paid for), and the running totals of the run."""
    informative = informative_rollouts(batch)
    tokens = batch.generated_tokens()
    informative_tokens = sum(len(batch.rollouts[i].completion_tokens) for i in informative)
    totals.rollouts += len(batch.rollouts)
    totals.tokens += tokens
    totals.informative_rollouts += len(informative)
    totals.informative_tokens += informative_tokens
    return {
        "yield/informative_rollouts": float(len(informative)),
        "yield/informative_tokens": float(informative_tokens),
        "yield/informative_rollout_frac": len(informative) / len(batch.rollouts),
        "yield/informative_token_frac": informative_tokens / tokens if tokens else 0.0,
        "yield/total_rollouts": float(totals.rollouts),
        "yield/total_tokens": float(totals.tokens),
        "yield/total_informative_rollouts": float(totals.informative_rollouts),
        "yield/total_informative_tokens": float(totals.informative_tokens),
        "yield/total_informative_token_frac": totals.informative_tokens / totals.tokens if totals.tokens else 0.0,
    }


# -- 6. temperature ------------------------------------------------------------------------------------------------------


def update_temperature(temperature: TemperatureController, train_metrics: dict[str, float], step: int) -> dict[str, float]:
    """E3's controller takes the entropy the learner measured on update `step` + 1, at the temperature that update's
    rollouts were sampled at (Schedule.train). `temperature/next` is what the controller holds afterwards: the next
    step samples at it (sync), or the step after next (async, whose next step is already generated)."""
    temperature.update(train_metrics["policy/entropy"], step + 1)
    return {**temperature.metrics(), "temperature/next": temperature.temperature}


def sample_rows(batch: StepBatch, examples: dict[str, Example], count: int) -> list[dict]:
    """The first `count` rollouts for samples.jsonl."""
    return [
        {"prompt_id": r.prompt_id, "sample_index": r.sample_index, "policy_version": r.policy_version,
         "prompt": examples[r.prompt_id].prompt, "completion": r.text, "reward": batch.rewards[i], "correct": batch.correct[i]}
        for i, r in enumerate(batch.rollouts[:count])
    ]
