"""Length rewards and the length history count the model's tokens of a multi-turn rollout, never a tool's or an
environment's inserted ones (issue 27 point 7): HAPO's L and h, the overlong and plain length penalties."""

import pytest

from rlqa import stages
from rlqa.config import SamplerConfig
from rlqa.data.example import Example
from rlqa.length_history import LengthHistory
from rlqa.rollout.types import Rollout
from rlqa.sampler import RolloutSampler
from rewards.pipeline import RewardPipeline, RewardTermSpec


def episode(index: int, model: int, inserted: int, text: str) -> Rollout:
    """A two-turn rollout: `model` sampled tokens, then `inserted` tool tokens in the middle (mask 0)."""
    first = model // 2
    mask = [1] * first + [0] * inserted + [1] * (model - first)
    return Rollout("q", index, [5, 6], [7] * len(mask), [-0.5 if m else 0.0 for m in mask], "stop", 0, text=text,
                   loss_mask=mask, turns=2, tool_calls=1)


def test_hapo_and_the_length_penalties_read_model_tokens_and_the_history_keeps_them():
    examples = {"q": Example("q", "q?", "7")}
    sampler = RolloutSampler(["q"], SamplerConfig(), prompts_per_step=1, rollouts_per_prompt=2, seed=0)
    history = LengthHistory()
    history.update(["q"], [40], [True])  # h = 40 from an earlier step
    # 20 model tokens + 100 tool tokens, right; 60 model tokens + 10 tool tokens, wrong
    rollouts = [episode(0, 20, 100, "\\boxed{7}"), episode(1, 60, 10, "\\boxed{8}")]
    batch = stages.StepBatch(1, 1.0, [("q", 2)], rollouts)
    terms = [
        RewardTermSpec("accuracy", "accuracy"),
        RewardTermSpec("hapo", "hapo_length", weight=0.5, kwargs={"variant": "linear"}),
        RewardTermSpec("length", "length_penalty", weight=0.1),
    ]
    with RewardPipeline(terms) as pipeline:
        metrics = stages.score(batch, pipeline, examples, history, sampler, max_new_tokens=80)
    # HAPO linear, h = 40: right L = 20 → 1 - 20/40 = 0.5; wrong L = 60 → min(0, 1 - 60/40) = -0.5
    # (the whole completions, 120 and 70 tokens, would give -1 and -0.75)
    assert metrics["reward/hapo"] == pytest.approx((0.5 - 0.5) / 2)
    # length penalty -L / 80: -20/80 = -0.25 and -60/80 = -0.75
    # totals: 1 + 0.5 x 0.5 + 0.1 x -0.25 = 1.225; 0 + 0.5 x -0.5 + 0.1 x -0.75 = -0.325
    assert batch.rewards == pytest.approx([1.225, -0.325])
    # the history takes the right answer's model tokens, 20, not its 120 completion tokens
    stages.advance_sampler(batch, sampler, history)
    assert history.get("q") == 20
    # and the rollout metrics' lengths are model tokens: (20 + 60) / 2 = 40; rollout/tokens counts all 190
    metrics = stages.rollout_metrics(batch, version=1, worker_restarts=0)
    assert metrics["rollout/length_mean"] == 40.0 and metrics["rollout/length_correct_mean"] == 20.0
    assert metrics["rollout/tokens"] == 190.0
