import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlqa.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    get_advantage_estimator,
    grpo_advantages,
    group_stats,
    reinforce_pp_advantages,
    rloo_advantages,
)

# Three groups, uneven and interleaved, with arbitrary ids:
#   id 7  (size 3) at positions 0, 2, 5 with rewards 1, 0, 0.5
#   id 3  (size 1) at position 1 with reward 5
#   id 42 (size 2) at positions 3, 4 with rewards 2, 0
REWARDS = torch.tensor([1.0, 5.0, 0.0, 2.0, 0.0, 0.5])
GROUP_IDS = torch.tensor([7, 3, 7, 42, 42, 7])
SQRT_HALF = math.sqrt(0.5)


def test_grpo_uneven_interleaved_groups():
    # id 7: mean 0.5, deviations (0.5, -0.5, 0), unbiased var (0.25 + 0.25 + 0) / 2 = 0.25, std 0.5 → A = 1, -1, 0
    # id 3: a single sample → 0
    # id 42: mean 1, deviations (1, -1), unbiased var (1 + 1) / 1 = 2, std √2 → A = ±1/√2
    expected = torch.tensor([1.0, 0.0, -1.0, SQRT_HALF, -SQRT_HALF, 0.0])
    assert torch.allclose(grpo_advantages(REWARDS, GROUP_IDS), expected, atol=1e-5)


def test_grpo_divides_by_std_plus_eps():
    # group std 0.5, eps 0.5 → A = 0.5 / (0.5 + 0.5) = 0.5 for the best sample of id 7
    advantages = grpo_advantages(REWARDS, GROUP_IDS, eps=0.5)
    assert advantages[0].item() == pytest.approx(0.5)


def test_dr_grpo_does_not_divide_by_std():
    # r - group mean: id 7 → 1 - 0.5, 0 - 0.5, 0.5 - 0.5; id 3 → 0; id 42 → 2 - 1, 0 - 1
    expected = torch.tensor([0.5, 0.0, -0.5, 1.0, -1.0, 0.0])
    assert torch.allclose(grpo_advantages(REWARDS, GROUP_IDS, scale_by_std=False), expected)
    assert torch.allclose(get_advantage_estimator("dr_grpo")(REWARDS, GROUP_IDS), expected)


def test_rloo_subtracts_mean_of_the_others():
    # id 7: 1 - (0 + 0.5) / 2 = 0.75; 0 - (1 + 0.5) / 2 = -0.75; 0.5 - (1 + 0) / 2 = 0
    # id 3: nobody else → 0;  id 42: 2 - 0 = 2; 0 - 2 = -2
    expected = torch.tensor([0.75, 0.0, -0.75, 2.0, -2.0, 0.0])
    assert torch.allclose(rloo_advantages(REWARDS, GROUP_IDS), expected)


def test_reinforce_pp_whitens_over_the_batch():
    # group-centred: (0.5, 0, -0.5, 1, -1, 0); batch mean 0;
    # unbiased var (0.25 + 0 + 0.25 + 1 + 1 + 0) / 5 = 0.5 → divide by √0.5, i.e. multiply by √2
    expected = torch.tensor([0.5, 0.0, -0.5, 1.0, -1.0, 0.0]) * math.sqrt(2)
    advantages = reinforce_pp_advantages(REWARDS, GROUP_IDS)
    assert torch.allclose(advantages, expected, atol=1e-5)
    assert advantages.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert advantages.std().item() == pytest.approx(1.0, abs=1e-5)


def test_reinforce_pp_leaves_a_constant_group_exactly_zero_after_whitening():
    # groups (.1, .7, .3 | .5, .5, .5 | .2, .9): centred -4/15, 1/3, -1/15 | 0, 0, 0 | -0.35, 0.35; batch mean 0,
    # unbiased var (16 + 25 + 1) / 225 + 2 · 0.1225 = 0.431667 over 7 = 0.0616667, sqrt(var + 1e-6) = 0.248330:
    #   A = -1.073841, 1.342301, -0.268460 | 0, 0, 0 | -1.409416, 1.409416
    # In float32 the batch mean is not exactly 0, so the middle group would come out as ±4.5e-8 without the zeroing.
    rewards = torch.tensor([0.1, 0.7, 0.3, 0.5, 0.5, 0.5, 0.2, 0.9])
    advantages = reinforce_pp_advantages(rewards, torch.tensor([0, 0, 0, 1, 1, 1, 2, 2]))
    assert torch.equal(advantages[3:6], torch.zeros(3))
    expected = [-1.073841, 1.342301, -0.268460, 0.0, 0.0, 0.0, -1.409416, 1.409416]
    assert advantages.tolist() == pytest.approx(expected, abs=1e-5)


OUTCOME_ESTIMATORS = sorted(name for name, e in ADVANTAGE_ESTIMATORS.items() if e.level == "outcome")


@pytest.mark.parametrize("name", OUTCOME_ESTIMATORS)
def test_all_equal_group_gets_exactly_zero(name):
    # Eight float32 rewards of 0.1: their mean is one ulp off 0.1, which naive (r - mean) / (std + eps) turns into
    # ≈ -0.0075. The estimators must give exactly 0 for that group; the other group (0.1, 0.7, 0.3) still gets
    # signal. Its centred values (-4/15, 1/3, -1/15) do not sum to exactly 0 in float32, so a batch-wide step
    # (REINFORCE++'s whitening) moves the zeros off 0 unless the constant group is zeroed after it.
    rewards = torch.tensor([0.1] * 8 + [0.1, 0.7, 0.3], dtype=torch.float32)
    group_ids = torch.tensor([0] * 8 + [1, 1, 1])
    advantages = get_advantage_estimator(name)(rewards, group_ids)
    assert torch.equal(advantages[:8], torch.zeros(8))
    assert advantages[9] > 0 > advantages[8]


@pytest.mark.parametrize("name", OUTCOME_ESTIMATORS)
def test_singleton_groups_get_zero(name):
    advantages = get_advantage_estimator(name)(torch.tensor([3.0, -1.0]), torch.tensor([0, 1]))
    assert torch.equal(advantages, torch.zeros(2))


def test_group_stats_per_sample():
    stats = group_stats(REWARDS, GROUP_IDS)
    assert torch.equal(stats.count, torch.tensor([3.0, 1, 3, 2, 2, 3]))
    assert torch.allclose(stats.mean, torch.tensor([0.5, 5, 0.5, 1, 1, 0.5]))
    assert torch.allclose(stats.std, torch.tensor([0.5, 0, 0.5, math.sqrt(2), math.sqrt(2), 0.5]))
    assert stats.constant.tolist() == [False, True, False, False, False, False]


def test_unknown_estimator_lists_the_supported_ones():
    with pytest.raises(ValueError, match="dr_grpo, gae, grpo, reinforce_pp, rloo"):
        get_advantage_estimator("ppo")


def test_gae_is_registered_as_the_learners_token_level_estimator():
    # the driver computes outcome advantages from rewards and groups; GAE needs the critic, so the learner does
    assert OUTCOME_ESTIMATORS == ["dr_grpo", "grpo", "reinforce_pp", "rloo"]
    gae = get_advantage_estimator("gae")
    assert gae.level == "token"
    advantages, returns = gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.5]]), torch.ones(1, 2), 1.0, 1.0)
    # δ1 = 1 - 0.5 = 0.5 = A1; δ0 = 0.5 - 0.5 = 0, A0 = 0 + 0.5 = 0.5; returns = A + V = 1, 1
    assert torch.allclose(advantages, torch.tensor([[0.5, 0.5]])) and torch.allclose(returns, torch.ones(1, 2))


def test_rejects_integer_rewards_and_mismatched_shapes():
    with pytest.raises(ValueError, match="floating-point"):
        grpo_advantages(torch.tensor([1, 0]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="shape"):
        grpo_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0, 0]))


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 4), st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0])), min_size=1, max_size=20
    )
)
def test_grpo_matches_a_per_group_loop(samples):
    group_ids = torch.tensor([g for g, _ in samples])
    rewards = torch.tensor([r for _, r in samples], dtype=torch.float64)
    expected = torch.zeros_like(rewards)
    for g in group_ids.unique():
        members = group_ids == g
        group = rewards[members]
        if group.numel() > 1 and group.max() > group.min():
            expected[members] = (group - group.mean()) / (group.std() + 1e-6)
    assert torch.allclose(grpo_advantages(rewards, group_ids), expected, atol=1e-9)
