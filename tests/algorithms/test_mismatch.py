"""The learner-vs-sampler log-prob gap and TIS weights, and TIS inside the policy objective, against numbers worked
out by hand."""

import math

import pytest
import torch

from rlqa.algorithms.mismatch import logprob_gap, tis_weights
from rlqa.algorithms.policy_losses import policy_objective
from rlqa.config import AlgorithmConfig

# π_learner / π_sampler per token: 0.5/0.5 = 1, 0.3/0.2 = 1.5, 0.6/0.2 = 3, 0.2/0.4 = 0.5
LEARNER = torch.tensor([[0.5, 0.3, 0.6, 0.2]]).log()  # (1, 4)
SAMPLER = torch.tensor([[0.5, 0.2, 0.2, 0.4]]).log()  # (1, 4)


def test_tis_weights_are_the_ratio_capped_and_detached():
    learner = LEARNER.clone().requires_grad_()
    weights = tis_weights(learner, SAMPLER, cap=2.0)
    assert torch.allclose(weights, torch.tensor([[1.0, 1.5, 2.0, 0.5]]))  # 3 is capped at 2
    assert not weights.requires_grad


def test_logprob_gap_is_the_mean_and_max_of_abs_diff_over_the_mask():
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0]])  # the ln 3 token is padding
    mean, largest = logprob_gap(LEARNER, SAMPLER, mask)
    # |diff| = 0, ln 1.5, (ln 3), ln 2 → mean (ln 1.5 + ln 2) / 3 = ln 3 / 3, max ln 2
    assert float(mean) == pytest.approx(math.log(3) / 3, abs=1e-6)
    assert float(largest) == pytest.approx(math.log(2), abs=1e-6)
    assert [float(x) for x in logprob_gap(LEARNER, SAMPLER, torch.zeros(1, 4))] == [0.0, 0.0]


@pytest.mark.parametrize("policy_loss", ["clip", "gspo", "cispo"])
def test_tis_with_equal_logprobs_leaves_the_loss_unchanged(policy_loss):
    cfg = AlgorithmConfig(policy_loss=policy_loss)
    logprobs = torch.tensor([[-1.0, -0.5, -2.0, -0.1]], requires_grad=True)
    old = torch.tensor([[-1.2, -0.4, -2.0, -0.3]])
    mask, advantages = torch.ones(1, 4), torch.tensor([0.7])
    plain, _ = policy_objective(logprobs, old, advantages, mask, cfg)
    weighted, _ = policy_objective(logprobs, old, advantages, mask, cfg, tis_weights=tis_weights(old, old, 2.0))
    assert torch.equal(plain, weighted)


def test_tis_scales_each_tokens_policy_loss_by_its_weight():
    # On-policy (ρ = 1), A = 1, token-mean: L_t = -w_t, so J = -(1 + 1.5 + 2 + 0.5) / 4 = -1.25 and dJ/dlogπ_t = -w_t / 4
    cfg = AlgorithmConfig(tis_cap=2.0)
    logprobs = torch.full((1, 4), -1.0, requires_grad=True)
    weights = tis_weights(LEARNER, SAMPLER, cfg.tis_cap)
    loss, stats = policy_objective(logprobs, logprobs.detach(), torch.tensor([1.0]), torch.ones(1, 4), cfg, tis_weights=weights)
    assert loss.item() == pytest.approx(-1.25)
    loss.backward()
    assert torch.allclose(logprobs.grad, torch.tensor([[-0.25, -0.375, -0.5, -0.125]]))
    # clipped tokens stay clipped: ρ = 1.5 > 1.2 with A = -1 is unclipped, L = 1.5 w; with A = +1 clipped, L = -1.2 w
    ratio_up = torch.log(torch.tensor([[1.5, 1.5]])).requires_grad_()
    loss, stats = policy_objective(ratio_up, torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]), torch.ones(1, 2), cfg,
                                   tis_weights=torch.tensor([[2.0, 0.5]]))
    assert loss.item() == pytest.approx((-1.2 * 2.0 + 1.5 * 0.5) / 2)
    assert float(stats["clip_frac"]) == 0.5
