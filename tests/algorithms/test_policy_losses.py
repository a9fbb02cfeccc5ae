"""The policy losses of the registry (clip, GSPO, CISPO) and the whole objective, against numbers worked by hand."""

import math

import pytest
import torch

from rlqa.algorithms.policy_losses import (
    POLICY_LOSSES,
    cispo_policy_loss,
    clipped_policy_loss,
    get_policy_loss,
    importance_ratio,
    policy_objective,
)
from rlqa.config import AlgorithmConfig

NAN, INF = float("nan"), float("inf")


def _logprobs(ratios):
    """log-probs whose ratio to old log-probs of 0 is `ratios`."""
    return torch.tensor(ratios).log().requires_grad_()


# Row 0, A = +2, ratios 1.0, 1.5, 0.5:
#   ρ=1.0: -min(2, 2) = -2
#   ρ=1.5: -min(3, 1.2·2 = 2.4) = -2.4      clipped (ρ > 1.2, A > 0): gradient 0
#   ρ=0.5: -min(1, 0.8·2 = 1.6) = -1        not clipped: the unclipped term is smaller
# Row 1, A = -1, ratios 0.5, 2.0, 1.0:
#   ρ=0.5: -min(-0.5, -0.8) = 0.8           clipped (ρ < 0.8, A < 0): gradient 0
#   ρ=2.0: -min(-2, -1.2) = 2               not clipped
#   ρ=1.0: 1
# The 4th position is padding with a wild ratio (e^30, beyond the ±20 log-ratio clamp).
RATIOS = [[1.0, 1.5, 0.5, math.exp(30)], [0.5, 2.0, 1.0, math.exp(30)]]
POLICY_MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])
ADVANTAGES = torch.tensor([2.0, -1.0])


def test_clipped_policy_loss_both_sides_both_signs():
    logprobs = _logprobs(RATIOS)
    loss, stats = clipped_policy_loss(logprobs, torch.zeros(2, 4), ADVANTAGES, POLICY_MASK)
    # (-2 - 2.4 - 1 + 0.8 + 2 + 1) / 6 = -1.6 / 6
    assert loss.item() == pytest.approx(-1.6 / 6)
    # 2 clipped tokens out of 6
    assert stats["clip_frac"].item() == pytest.approx(2 / 6)
    # (1 + 1.5 + 0.5 + 0.5 + 2 + 1) / 6
    assert stats["ratio_mean"].item() == pytest.approx(6.5 / 6)
    # k3 = (ρ - 1) - ln ρ: 0, 0.094535, 0.193147, 0.193147, 0.306853, 0 → sum 0.787682 / 6
    assert stats["approx_kl"].item() == pytest.approx(0.787682 / 6, abs=1e-6)
    assert all(not value.requires_grad for value in stats.values())

    loss.backward()
    # d/dlogp of -ρA is -ρA, divided by 6 tokens; clipped tokens and padding get 0
    expected = torch.tensor([[-2.0, 0.0, -1.0, 0.0], [0.0, 2.0, 1.0, 0.0]]) / 6
    assert torch.allclose(logprobs.grad, expected)


def test_per_token_advantages_match_per_sequence_ones():
    per_sequence, _ = clipped_policy_loss(_logprobs(RATIOS), torch.zeros(2, 4), ADVANTAGES, POLICY_MASK)
    per_token, _ = clipped_policy_loss(
        _logprobs(RATIOS), torch.zeros(2, 4), ADVANTAGES.unsqueeze(-1).expand(2, 4), POLICY_MASK
    )
    assert per_token.item() == pytest.approx(per_sequence.item())


def test_clip_higher_uses_the_upper_bound_for_positive_advantages():
    # clip_high 0.6: ρ=1.5 is inside (1 - 0.2, 1 + 0.6), so row 0 becomes -2, -3, -1 and nothing there is clipped;
    # row 1 unchanged (0.8, 2, 1). Loss (-6 + 3.8) / 6; only ρ=0.5 with A < 0 is clipped.
    loss, stats = clipped_policy_loss(_logprobs(RATIOS), torch.zeros(2, 4), ADVANTAGES, POLICY_MASK, clip_high=0.6)
    assert loss.item() == pytest.approx(-2.2 / 6)
    assert stats["clip_frac"].item() == pytest.approx(1 / 6)


def test_dual_clip_bounds_the_loss_for_negative_advantages():
    # A = -1, c = 3: ρ=5 → max(5, 1.2) = 5, dual min(5, 3) = 3 (gradient 0); ρ=2 → 2 < 3 unchanged; ρ=0.5 → 0.8.
    # A = +2, ρ=5 → -2.4 (the dual clip only applies when A < 0); ρ=1 → -2; ρ=0.5 → -1.
    logprobs = _logprobs([[5.0, 2.0, 0.5], [5.0, 1.0, 0.5]])
    advantages = torch.tensor([-1.0, 2.0])
    mask = torch.ones(2, 3)
    loss, stats = clipped_policy_loss(logprobs, torch.zeros(2, 3), advantages, mask, dual_clip=3.0)
    # (3 + 2 + 0.8 - 2.4 - 2 - 1) / 6
    assert loss.item() == pytest.approx(0.4 / 6)
    assert stats["dual_clip_frac"].item() == pytest.approx(1 / 6)
    loss.backward()
    assert logprobs.grad[0, 0].item() == 0.0
    without, _ = clipped_policy_loss(logprobs, torch.zeros(2, 3), advantages, mask)
    # without the dual clip the ρ=5 token costs 5: (5 + 2 + 0.8 - 2.4 - 2 - 1) / 6
    assert without.item() == pytest.approx(2.4 / 6)
    with pytest.raises(ValueError, match="dual_clip"):
        clipped_policy_loss(logprobs, torch.zeros(2, 3), advantages, mask, dual_clip=1.0)


def test_on_policy_token_mean_gradient_is_minus_advantage_over_tokens():
    # ρ = 1 (logprobs equal the old ones): ∂L/∂logp_t = -A / number of masked tokens (3 here), 0 on padding
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -0.9]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    loss, stats = clipped_policy_loss(logprobs, logprobs.detach(), torch.tensor([2.0, -1.0]), mask)
    loss.backward()
    assert torch.allclose(logprobs.grad, torch.tensor([[-2 / 3, -2 / 3, 0.0], [1 / 3, 0.0, 0.0]]))
    assert stats["clip_frac"].item() == 0.0
    assert stats["approx_kl"].item() == 0.0
    assert stats["ratio_mean"].item() == 1.0


def test_policy_loss_passes_the_aggregation_on():
    # seq-mean-token-mean: row means (-2 - 2.4 - 1) / 3 = -1.8 and (0.8 + 2 + 1) / 3 ≈ 1.266667; mean ≈ -0.266667
    # (equal row lengths make it match token-mean); seq-mean-token-sum-norm with max_len 10:
    # row sums -5.4 and 3.8 over 10 → -0.54, 0.38; mean -0.08
    loss, _ = clipped_policy_loss(
        _logprobs(RATIOS), torch.zeros(2, 4), ADVANTAGES, POLICY_MASK, aggregation="seq-mean-token-sum-norm", max_len=10
    )
    assert loss.item() == pytest.approx(-0.08)


def test_policy_objective_adds_kl_and_entropy_terms_by_hand():
    # Same ratios and advantages as above: clipped surrogate (token mean) = -1.6 / 6 = -0.266667.
    # Reference log-probs: x = ref - logp = 0.5 at (0, 0) and -0.5 at (1, 1), 0 elsewhere; padding holds inf.
    #   k3 = e^0.5 - 1.5 = 0.148721 and e^-0.5 - 0.5 = 0.106531 → KL token mean 0.255252 / 6 = 0.042542
    # Entropy 1..6 on the masked tokens → token mean 3.5.
    # β = 0.1, c_H = 0.01: J = -0.266667 + 0.1 · 0.042542 - 0.01 · 3.5 = -0.297413
    logprobs = _logprobs(RATIOS)
    offsets = torch.tensor([[0.5, 0.0, 0.0, INF], [0.0, -0.5, 0.0, INF]])
    ref_logprobs = logprobs.detach() + offsets
    entropy = torch.tensor([[1.0, 2.0, 3.0, NAN], [4.0, 5.0, 6.0, NAN]])
    cfg = AlgorithmConfig(kl_coef=0.1, entropy_coef=0.01)
    common = dict(ref_logprobs=ref_logprobs, entropy=entropy)
    loss, stats = policy_objective(logprobs, torch.zeros(2, 4), ADVANTAGES, POLICY_MASK, cfg, **common)
    assert loss.item() == pytest.approx(-0.297413, abs=1e-6)
    assert stats["pg_loss"].item() == pytest.approx(-1.6 / 6)
    assert stats["kl"].item() == pytest.approx(0.042542, abs=1e-6)
    assert stats["entropy"].item() == pytest.approx(3.5)
    loss.backward()
    # the KL term adds β/6 · ∂k3/∂logp = β/6 · -(e^x - 1): -0.1/6 · 0.648721 at (0, 0), +0.1/6 · 0.393469 at (1, 1)
    policy_only = torch.tensor([[-2.0, 0.0, -1.0, 0.0], [0.0, 2.0, 1.0, 0.0]]) / 6
    kl_part = torch.tensor([[-0.648721, 0, 0, 0], [0, 0.393469, 0, 0]]) * 0.1 / 6
    assert torch.allclose(logprobs.grad, policy_only + kl_part, atol=1e-6)

    # weighted by the ratio ρ (1 at (0, 0), 2 at (1, 1)): KL term (0.148721 + 2 · 0.106531) / 6 = 0.060297
    #   → J = -0.266667 + 0.0060297 - 0.035 = -0.295637; the reported KL stays the unweighted 0.042542
    weighted, stats = policy_objective(
        _logprobs(RATIOS), torch.zeros(2, 4), ADVANTAGES, POLICY_MASK, cfg.model_copy(update={"kl_ratio_weighted": True}), **common
    )
    assert weighted.item() == pytest.approx(-0.295637, abs=1e-6)
    assert stats["kl"].item() == pytest.approx(0.042542, abs=1e-6)


def test_policy_objective_without_reference_or_coefficients_is_the_clipped_loss():
    plain, _ = clipped_policy_loss(_logprobs(RATIOS), torch.zeros(2, 4), ADVANTAGES, POLICY_MASK)
    # β = 0 with a reference: KL measured, not added; entropy given with c_H = 0: measured, not added
    loss, stats = policy_objective(
        _logprobs(RATIOS), torch.zeros(2, 4), ADVANTAGES, POLICY_MASK, AlgorithmConfig(),
        ref_logprobs=torch.zeros(2, 4), entropy=torch.ones(2, 4),
    )
    assert loss.item() == pytest.approx(plain.item())
    assert "kl" in stats and stats["entropy"].item() == 1.0


# -- GSPO: one ratio per response ------------------------------------------------------------------------------------
# Row 0, A = +2, token ratios 2, 0.5, 1:  s = (2 · 0.5 · 1)^(1/3) = 1              L = -2 on each token
# Row 1, A = -1, token ratios 0.25, 1, 1: s = 0.25^(1/3) = 0.629961 < 0.8         clipped: -min(-0.63, -0.8) = 0.8
# Row 2, A = +1, token ratios 1.21, 1 and one padding position: s = √1.21 = 1.1  L = -1.1 on each token
# A token-level clip would treat row 0's ratio-2 token as clipped (2 > 1.2, A > 0) and row 1's ratio-1 tokens as
# unclipped: GSPO keeps or clips a response as a whole.
GSPO_RATIOS = [[2.0, 0.5, 1.0], [0.25, 1.0, 1.0], [1.21, 1.0, math.exp(30)]]
GSPO_MASK = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0]])
GSPO_ADVANTAGES = torch.tensor([2.0, -1.0, 1.0])


def test_gspo_sequence_ratio_by_hand():
    ratio = importance_ratio(torch.tensor(GSPO_RATIOS).log(), torch.zeros(3, 3), GSPO_MASK, "sequence")
    assert torch.allclose(ratio[:, 0], torch.tensor([1.0, 0.25 ** (1 / 3), 1.1]))
    assert torch.equal(ratio[:, 0:1].expand(3, 3), ratio)  # one value per response, on every position


def test_gspo_loss_and_gradient_seq_mean_by_hand():
    logprobs = _logprobs(GSPO_RATIOS)
    loss, stats = clipped_policy_loss(
        logprobs, torch.zeros(3, 3), GSPO_ADVANTAGES, GSPO_MASK, aggregation="seq-mean-token-mean", level="sequence"
    )
    # response means -2, 0.8, -1.1 → (-2 + 0.8 - 1.1) / 3
    assert loss.item() == pytest.approx(-2.3 / 3)
    # the 3 tokens of row 1 are clipped, out of 8
    assert stats["clip_frac"].item() == pytest.approx(3 / 8)
    loss.backward()
    # ∂s_i/∂logp_t = s_i / |y_i|, so ∂loss/∂logp_t = (1/3) · -A_i · s_i / |y_i|: row 0 -2/9 each; row 1 clipped, 0;
    # row 2 -(1.1 / 2) / 3 = -0.183333 each; padding 0
    expected = torch.tensor([[-2 / 9] * 3, [0.0] * 3, [-1.1 / 6, -1.1 / 6, 0.0]])
    assert torch.allclose(logprobs.grad, expected, atol=1e-6)


def test_gspo_token_mean_weighs_responses_by_length():
    # token-mean over the 8 tokens: (3 · -2 + 3 · 0.8 + 2 · -1.1) / 8 = -5.8 / 8
    loss, _ = clipped_policy_loss(_logprobs(GSPO_RATIOS), torch.zeros(3, 3), GSPO_ADVANTAGES, GSPO_MASK, level="sequence")
    assert loss.item() == pytest.approx(-5.8 / 8)
    # the token-level clip on the same batch: row 0 → -2, -2.4 (clipped), -1; row 1 → 0.8 (clipped), 1, 1;
    # row 2 → -1.2 (clipped), -1: (-5.4 + 2.8 - 2.2) / 8 = -4.8 / 8
    token, _ = clipped_policy_loss(_logprobs(GSPO_RATIOS), torch.zeros(3, 3), GSPO_ADVANTAGES, GSPO_MASK)
    assert token.item() == pytest.approx(-4.8 / 8)


def test_gspo_objective_weighs_the_kl_by_the_sequence_ratio():
    # Reference offset x = 0.5 on row 2's first token only: k3 = e^0.5 - 1.5 = 0.148721. Weighted by s = 1.1 (not by
    # the token ratio 1.21): 0.163593; token mean over 8 tokens, β = 0.1 → 0.1 · 0.163593 / 8 = 0.0020449.
    cfg = AlgorithmConfig(policy_loss="gspo", kl_coef=0.1, kl_ratio_weighted=True)
    logprobs = _logprobs(GSPO_RATIOS)
    ref = logprobs.detach() + torch.tensor([[0.0, 0, 0], [0, 0, 0], [0.5, 0, 0]])
    loss, stats = policy_objective(logprobs, torch.zeros(3, 3), GSPO_ADVANTAGES, GSPO_MASK, cfg, ref_logprobs=ref)
    assert stats["pg_loss"].item() == pytest.approx(-5.8 / 8)
    assert loss.item() == pytest.approx(-5.8 / 8 + 0.1 * 0.148721 * 1.1 / 8, abs=1e-6)


# -- CISPO: a clipped, detached importance weight on REINFORCE ------------------------------------------------------
# log π: row 0 (-1, -2, -0.5), row 1 (-0.3, -0.7, padding); ratios to π_old: row 0 (1, 8, 0.5), row 1 (2, 0.25).
# A = +1, -2; max_ratio 5 → weights 1, 5, 0.5 and 2, 0.25.  L_t = -w_t · A · log π_t:
#   row 0: -(1)(1)(-1) = 1;  -(5)(1)(-2) = 10;  -(0.5)(1)(-0.5) = 0.25
#   row 1: -(2)(-2)(-0.3) = -1.2;  -(0.25)(-2)(-0.7) = -0.35          token mean: 9.7 / 5 = 1.94
CISPO_LOGPROBS = [[-1.0, -2.0, -0.5], [-0.3, -0.7, 0.0]]
CISPO_RATIOS = torch.tensor([[1.0, 8.0, 0.5], [2.0, 0.25, 1.0]])
CISPO_MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
CISPO_ADVANTAGES = torch.tensor([1.0, -2.0])


def test_cispo_loss_and_gradient_by_hand():
    logprobs = torch.tensor(CISPO_LOGPROBS, requires_grad=True)
    old = logprobs.detach() - CISPO_RATIOS.log()
    loss, stats = cispo_policy_loss(logprobs, old, CISPO_ADVANTAGES, CISPO_MASK, max_ratio=5.0)
    assert loss.item() == pytest.approx(1.94)
    # only the ratio-8 token, with A > 0, is above the bound: 1 of 5
    assert stats["clip_frac"].item() == pytest.approx(1 / 5)
    assert stats["ratio_mean"].item() == pytest.approx((1 + 8 + 0.5 + 2 + 0.25) / 5)
    loss.backward()
    # ∂L/∂log π_t = -w_t · A / 5: the capped token keeps a gradient (PPO's clip would give it 0)
    expected = torch.tensor([[-1.0, -5.0, -0.5], [4.0, 0.5, 0.0]]) / 5
    assert torch.allclose(logprobs.grad, expected)


def test_cispo_through_the_registry_reads_its_bound_from_the_recipe():
    logprobs = torch.tensor(CISPO_LOGPROBS, requires_grad=True)
    old = logprobs.detach() - CISPO_RATIOS.log()
    # max_ratio 1.5 caps ratio 8 and ratio 2: weights 1, 1.5, 0.5, 1.5, 0.25 → 1 + 3 + 0.25 - 0.9 - 0.35 = 3.0
    cfg = AlgorithmConfig(policy_loss="cispo", cispo_max_ratio=1.5)
    loss, stats = policy_objective(logprobs, old, CISPO_ADVANTAGES, CISPO_MASK, cfg)
    assert loss.item() == pytest.approx(3.0 / 5)
    assert stats["pg_loss"].item() == pytest.approx(3.0 / 5)


def test_registry_lists_the_supported_losses():
    assert set(POLICY_LOSSES) == {"clip", "gspo", "cispo"}
    assert get_policy_loss("gspo").ratio == "sequence" and get_policy_loss("cispo").ratio == "token"
    with pytest.raises(ValueError, match="unknown policy loss 'ppo'; supported: cispo, clip, gspo"):
        get_policy_loss("ppo")
