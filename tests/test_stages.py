"""The stages of one step over a StepBatch (hand-made batches), and one whole in-process step per algorithm family in
which no metric key is produced twice."""

import math

import pytest
import torch

import in_process
from rlqa import stages, trainer
from rlqa.config import SamplerConfig, validate_recipe
from rlqa.length_history import LengthHistory
from rlqa.metrics import merge
from rlqa.rollout.types import Rollout
from rlqa.sampler import RolloutSampler
from rewards.pipeline import RewardPipeline, RewardTermSpec

from test_integration import DESIGN_METRICS


def rollout(prompt_id: str, index: int, length: int = 2, version: int = 3) -> Rollout:
    return Rollout(prompt_id, index, [5, 6], [7] * length, [-1.0] * length, "stop", version)


def batch() -> stages.StepBatch:
    """Prompts a (2 rollouts), b (1), c (3), in request order; rewards, verdicts and one dropped sample set by hand."""
    rollouts = [rollout("a", 0), rollout("a", 1), rollout("b", 0), rollout("c", 0), rollout("c", 1), rollout("c", 2)]
    b = stages.StepBatch(0, 0.9, [("a", 2), ("b", 1), ("c", 3)], rollouts)
    b.rewards = [1.0, 0.0, 0.3, math.nan, 0.5, 0.25]
    b.correct = [True, False, True, None, True, True]
    b.dropped = [False, False, False, True, False, False]
    return b


def test_groups_are_computed_once_from_the_samplers_order():
    b = batch()
    assert b.group_ids.tolist() == [0, 0, 1, 2, 2, 2]
    assert b.groups == [[0, 1], [2], [3, 4, 5]]
    assert b.kept == [0, 1, 2, 4, 5]


def test_advantages_over_the_kept_rollouts_of_each_group():
    b = batch()
    # a: rewards 1, 0 → mean 0.5, std √0.5 → ±0.5/√0.5 = ±0.707107; b alone → 0; c (kept 0.5, 0.25) → ±0.707107
    metrics = stages.estimate_advantages(b, "grpo")
    assert torch.allclose(b.advantages, torch.tensor([0.707107, -0.707107, 0.0, 0.707107, -0.707107]), atol=1e-5)
    assert metrics == {"advantage/nonzero_frac": pytest.approx(0.8)}
    samples = b.train_samples()
    assert [s.reward for s in samples] == [1.0, 0.0, pytest.approx(0.3), 0.5, 0.25]
    assert [s.advantage for s in samples] == b.advantages.tolist()
    # GAE is the learner's (it needs the critic): the driver leaves advantages to it and reports nothing
    assert stages.estimate_advantages(b, "gae") == {} and b.advantages is None
    assert [s.advantage for s in b.train_samples()] == [0.0] * 5


def test_sampler_stage_counts_groups_and_leaves_out_missing_verdicts():
    b = batch()
    sampler = RolloutSampler(["a", "b", "c"], SamplerConfig(), prompts_per_step=3, rollouts_per_prompt=2, seed=0)
    sampler.next_batch(0)
    history = LengthHistory()
    metrics = stages.advance_sampler(b, sampler, history)
    # a: one right, one wrong; b: right; c: no verdict, right, right → all right only for b (no verdict counts as
    # wrong for the fractions), all wrong for none
    assert metrics["sampler/all_correct_frac"] == pytest.approx(1 / 3) and metrics["sampler/all_wrong_frac"] == 0.0
    assert metrics["sampler/prompts"] == 3.0 and metrics["sampler/alloc_mean"] == 2.0
    # c's estimate counts its two verdicts only: Beta(1, 1) → α = 0.9 + 2, β = 0.9
    assert sampler.pass_rate("c") == pytest.approx(2.9 / 3.8)
    assert history.lengths_for(["a", "c"]) == [2, 2]


def test_rollout_metrics_and_staleness():
    b = batch()
    b.rollouts[5] = Rollout("c", 2, [5], [7] * 5, [-1.0] * 5, "length", 2)
    metrics = stages.rollout_metrics(b, version=4, worker_restarts=1)
    assert metrics["rollout/count"] == 6 and metrics["rollout/tokens"] == 15 and metrics["rollout/dropped"] == 1
    assert metrics["rollout/length_correct_mean"] == pytest.approx((2 + 2 + 2 + 5) / 4)
    assert metrics["rollout/truncated_frac"] == pytest.approx(1 / 6)
    # the update started from version 3; five rollouts came from 3, one from 2
    assert metrics["rollout/staleness"] == pytest.approx(3 - 17 / 6)
    assert metrics["rollout/temperature"] == 0.9


def test_merge_refuses_a_key_produced_twice():
    assert merge({"a/x": 1.0}, {"b/y": 2.0}) == {"a/x": 1.0, "b/y": 2.0}
    with pytest.raises(ValueError, match="produced twice in one step: reward/mean"):
        merge({"reward/mean": 1.0}, {"reward/mean": 0.5})


TINY = {"hidden_size": 16, "layers": 1, "heads": 2, "intermediate_size": 32, "max_positions": 64}
FAMILIES = {  # recipe's algorithm (and learner) sections, and a key only that family's learner reports
    "grpo with a reference": ({"algorithm": {"kl_coef": 0.02}}, "policy/kl_sampled"),
    "gspo": (
        {"algorithm": {"policy_loss": "gspo", "loss_aggregation": "seq-mean-token-mean", "kl_coef": 0.02, "kl_ratio_weighted": True}},
        "policy/kl_sampled",
    ),
    "cispo with TIS": (
        {"algorithm": {"policy_loss": "cispo", "old_logprobs": "recompute", "tis_cap": 2.0}, "learner": {"mini_batches": 2}},
        "policy/tis_weight_mean",
    ),
    "ppo": (
        {"algorithm": {"name": "ppo", "advantage": "gae", "kl_coef": 0.05, "kl_in_reward": True, "critic": {}}},
        "critic/value_loss",
    ),
}


@pytest.fixture(scope="module")
def rewards():
    with RewardPipeline([RewardTermSpec("accuracy", "accuracy"), RewardTermSpec("length_penalty", "length_penalty")]) as pipeline:
        yield pipeline


@pytest.mark.parametrize("family", FAMILIES)
def test_no_metric_key_is_produced_twice_in_a_step(family, tmp_path, rewards, monkeypatch):
    raw = {
        "model": {"tiny": TINY},
        "data": {"train": {"task": "arithmetic", "size": 8, "levels": [1]}},
        "rollout": {"prompts_per_step": 2, "rollouts_per_prompt": 2, "max_new_tokens": 6},
        "trainer": {"steps": 2},
        **FAMILIES[family][0],
    }
    c = in_process.components(validate_recipe(raw, source="test", base_dir=tmp_path), tmp_path, rewards)
    produced = []
    monkeypatch.setattr(trainer, "merge", lambda *parts: produced.append(parts) or merge(*parts))
    for step in range(2):
        metrics, samples = trainer.rl_step(c, step)
        (parts,) = produced[-1:]
        keys = [key for part in parts for key in part]
        assert len(keys) == len(set(keys))  # the union of the stages' metrics has no collisions
        assert not [name for name in DESIGN_METRICS if name not in metrics]
        assert metrics["policy/version"] == step + 1 and len(samples) == 4
    own = FAMILIES[family][1]
    assert own is None or own in metrics
