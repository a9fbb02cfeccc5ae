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


# Issue 25's example: log π_sampler = -1.0, log π_old,learner = log π_θ = -0.5, A = 1, C = 2, ε_high = 0.28, one token.
# w = min(e^0.5, 2) = 1.648721 and ρ = π_θ / π_old,learner = 1:
#   clip, gspo: J = -min(ρ A w, clip(ρ) A w) = -1.648721, dJ/dlog π = -ρ A w = -1.648721
#   cispo:      J = -sg(min(ρ, 5)) A w log π = -1.648721 · (-0.5) = 0.824361, dJ/dlog π = -1.648721
@pytest.mark.parametrize("policy_loss, loss", [("clip", -1.648721), ("gspo", -1.648721), ("cispo", 0.824361)])
def test_tis_weighs_the_ratio_against_the_learners_pi_old(policy_loss, loss):
    cfg = AlgorithmConfig(policy_loss=policy_loss, clip_high=0.28, tis_cap=2.0)
    logprobs = torch.tensor([[-0.5]], requires_grad=True)
    learner_old, sampler = torch.tensor([[-0.5]]), torch.tensor([[-1.0]])
    weights = tis_weights(learner_old, sampler, cfg.tis_cap)
    assert weights.item() == pytest.approx(1.648721, abs=1e-6)
    objective, stats = policy_objective(logprobs, learner_old, torch.tensor([1.0]), torch.ones(1, 1), cfg, tis_weights=weights)
    assert objective.item() == pytest.approx(loss, abs=1e-6)
    objective.backward()
    assert logprobs.grad.item() == pytest.approx(-1.648721, abs=1e-6)
    assert float(stats["clip_frac"]) == 0.0


def test_tis_with_the_sampler_as_pi_old_would_correct_twice():
    # What the learner must not do: the ratio against π_sampler, ρ = e^0.5 = 1.648721 > 1.28, clipped, times w again:
    #   J = -1.28 · 1.648721 = -2.110363 and no gradient
    cfg = AlgorithmConfig(clip_high=0.28, tis_cap=2.0)
    logprobs = torch.tensor([[-0.5]], requires_grad=True)
    sampler = torch.tensor([[-1.0]])
    weights = tis_weights(logprobs, sampler, cfg.tis_cap)
    objective, _ = policy_objective(logprobs, sampler, torch.tensor([1.0]), torch.ones(1, 1), cfg, tis_weights=weights)
    assert objective.item() == pytest.approx(-2.110363, abs=1e-6)
    objective.backward()
    assert logprobs.grad.item() == 0.0


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
