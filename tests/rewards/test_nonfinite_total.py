"""Finite terms whose weighted sum is not finite (issue 28 item 7): the total is zeroed, or dropped, and counted in
`reward/nonfinite_total`, so no NaN reaches the advantages."""

import math
from pathlib import Path

import pytest
import torch

from rewards.pipeline import RewardPipeline, RewardTermSpec
from rlqa.algorithms.advantages import get_advantage_estimator

HERE = Path(__file__).parent
FIXTURES = "fixtures/misbehaving.py"


def run(terms, failure_value="zero", batch=("a", "bb")):
    with RewardPipeline(terms, correctness=None, failure_value=failure_value, base_dir=HERE) as pipeline:
        return pipeline(list(batch), ["p"] * len(batch), {})


def test_an_infinite_weight_is_zeroed_and_counted():
    # length = [1, 2]; weight inf: inf · 1 = inf for both samples -> zeroed; the term's own values stay
    out = run([RewardTermSpec("length", f"{FIXTURES}:length", weight=math.inf)])
    assert out.total == [0.0, 0.0]
    assert out.terms["length"] == [1.0, 2.0]
    assert out.metrics["reward/nonfinite_total"] == 2.0
    assert out.metrics["reward/mean"] == 0.0


def test_1e308_times_10_is_zeroed_and_the_grpo_advantages_stay_finite():
    # totals = 10 · huge + length: sample 0: 10 · 1e308 + 4 = inf (float max is 1.8e308) -> 0; samples 1, 2: 2, 3
    terms = [RewardTermSpec("huge", f"{FIXTURES}:huge_on_huge", weight=10.0), RewardTermSpec("length", f"{FIXTURES}:length")]
    out = run(terms, batch=("huge", "ab", "abc"))
    assert out.total == [0.0, 2.0, 3.0]
    assert out.metrics["reward/nonfinite_total"] == 1.0
    # GRPO on [0, 2, 3]: mean 5/3, unbiased std sqrt(((5/3)^2 + (1/3)^2 + (4/3)^2) / 2) = sqrt(7/3) = 1.52753
    # A = [-5/3, 1/3, 4/3] / 1.52753 = [-1.09109, 0.21822, 0.87287] (all NaN before the guard)
    advantages = get_advantage_estimator("grpo")(torch.tensor(out.total), torch.tensor([0, 0, 0]))
    assert advantages.tolist() == pytest.approx([-1.09109, 0.21822, 0.87287], abs=1e-4)


def test_drop_policy_drops_a_nonfinite_total():
    # weight inf on length = [1, 2]: both totals inf; under "drop" both samples leave their groups
    out = run([RewardTermSpec("length", f"{FIXTURES}:length", weight=math.inf)], failure_value="drop")
    assert out.dropped == [True, True]
    assert all(math.isnan(t) for t in out.total)
    assert all(math.isnan(v) for v in out.terms["length"])
    assert out.metrics["reward/nonfinite_total"] == 2.0


def test_finite_totals_count_zero():
    out = run([RewardTermSpec("length", f"{FIXTURES}:length", weight=2.0)])
    assert out.total == [2.0, 4.0]  # 2 · [1, 2]
    assert out.metrics["reward/nonfinite_total"] == 0.0
