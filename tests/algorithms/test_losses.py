import math

import pytest
import torch

from rlqa.algorithms.losses import aggregate, clipped_policy_loss, masked_mean, policy_objective, value_loss

NAN, INF = float("nan"), float("inf")
# Row 0: 3 tokens (1, 2, 3); row 1: 2 tokens (5, 6); row 2: no tokens. Padding holds nan/inf on purpose.
PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0, NAN], [5.0, 6.0, INF, 0.0], [INF, INF, INF, INF]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])


def test_masked_mean():
    # (1 + 2 + 3 + 5 + 6) / 5 = 3.4; an empty mask gives 0
    assert masked_mean(PER_TOKEN, MASK).item() == pytest.approx(3.4)
    assert masked_mean(PER_TOKEN, torch.zeros_like(MASK)).item() == 0.0


@pytest.mark.parametrize(
    ("mode", "max_len", "expected"),
    [
        # all 5 tokens weigh the same: 17 / 5
        ("token-mean", None, 3.4),
        # row means 6/3 = 2 and 11/2 = 5.5; the empty row does not count: (2 + 5.5) / 2
        ("seq-mean-token-mean", None, 3.75),
        # row sums 6, 11, 0 divided by T = 4 → 1.5, 2.75, 0; mean over all 3 rows: 4.25 / 3
        ("seq-mean-token-sum-norm", None, 4.25 / 3),
        # divided by max_len 10 → 0.6, 1.1, 0; mean 1.7 / 3
        ("seq-mean-token-sum-norm", 10, 1.7 / 3),
    ],
)
def test_aggregation_modes(mode, max_len, expected):
    assert aggregate(PER_TOKEN, MASK, mode, max_len).item() == pytest.approx(expected)


def test_aggregation_gradients_weigh_tokens_differently():
    per_token = torch.zeros(3, 4, requires_grad=True)
    aggregate(per_token, MASK, "token-mean").backward()
    # every token 1/5
    assert torch.allclose(per_token.grad, MASK / 5)
    per_token.grad = None
    aggregate(per_token, MASK, "seq-mean-token-mean").backward()
    # row 0 tokens 1/(3·2) each, row 1 tokens 1/(2·2) each; padding gets exactly 0, not nan
    expected = torch.tensor([[1 / 6, 1 / 6, 1 / 6, 0], [1 / 4, 1 / 4, 0, 0], [0, 0, 0, 0]])
    assert torch.allclose(per_token.grad, expected)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_aggregation_of_an_empty_mask_is_zero(mode):
    assert aggregate(PER_TOKEN, torch.zeros_like(MASK), mode).item() == 0.0


def test_unknown_aggregation_lists_the_supported_ones():
    with pytest.raises(ValueError, match="token-mean, seq-mean-token-mean, seq-mean-token-sum-norm"):
        aggregate(PER_TOKEN, MASK, "sum")


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


def test_value_loss_clipped_and_unclipped():
    # returns 2, old values 1, clip 0.2 → the clipped value is kept within [0.8, 1.2]
    #   v=1.0: clipped 1.0; max((1-2)², (1-2)²) = 1       → 0.5
    #   v=2.0: clipped 1.2; max(0, (1.2-2)² = 0.64)       → 0.32
    #   v=0.5: clipped 0.8; max(2.25, (0.8-2)² = 1.44)    → 1.125
    #   4th position is padding
    values = torch.tensor([[1.0, 2.0, 0.5, 123.0]], requires_grad=True)
    old_values = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    returns = torch.tensor([[2.0, 2.0, 2.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss = value_loss(values, old_values, returns, mask, clip=0.2)
    assert loss.item() == pytest.approx((0.5 + 0.32 + 1.125) / 3)
    assert value_loss(values.detach().where(mask.bool(), INF), old_values, returns, mask).isfinite()
    loss.backward()
    # gradients: (v - R) / 3 where the unclipped term is active, 0 where the clipped one is (v=2.0)
    assert torch.allclose(values.grad, torch.tensor([[-1 / 3, 0.0, -1.5 / 3, 0.0]]))
    # without clipping: 0.5·(1, 0, 2.25) → 1.625 / 3
    unclipped = value_loss(values, old_values, returns, mask, clip=None)
    assert unclipped.item() == pytest.approx(1.625 / 3)


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
    common = dict(ref_logprobs=ref_logprobs, kl_coef=0.1, entropy=entropy, entropy_coef=0.01)
    loss, stats = policy_objective(logprobs, torch.zeros(2, 4), ADVANTAGES, POLICY_MASK, **common)
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
        _logprobs(RATIOS), torch.zeros(2, 4), ADVANTAGES, POLICY_MASK, kl_ratio_weighted=True, **common
    )
    assert weighted.item() == pytest.approx(-0.295637, abs=1e-6)
    assert stats["kl"].item() == pytest.approx(0.042542, abs=1e-6)


def test_policy_objective_without_reference_or_coefficients_is_the_clipped_loss():
    plain, _ = clipped_policy_loss(_logprobs(RATIOS), torch.zeros(2, 4), ADVANTAGES, POLICY_MASK)
    # β = 0 with a reference: KL measured, not added; entropy given with c_H = 0: measured, not added
    loss, stats = policy_objective(
        _logprobs(RATIOS), torch.zeros(2, 4), ADVANTAGES, POLICY_MASK,
        ref_logprobs=torch.zeros(2, 4), entropy=torch.ones(2, 4),
    )
    assert loss.item() == pytest.approx(plain.item())
    assert "kl" in stats and stats["entropy"].item() == 1.0
