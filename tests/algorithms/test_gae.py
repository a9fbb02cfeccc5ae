import pytest
import torch

from rlqa.algorithms.gae import gae_advantages, token_level_rewards, whiten

INF = float("inf")
# Row 0: three tokens, terminal reward 1, values 0.5, 0.6, 0.7, then one padding position holding garbage.
# Row 1: one token, reward 2, value 0.5, then padding.
REWARDS = torch.tensor([[0.0, 0.0, 1.0, 3.0], [2.0, 9.0, 9.0, 9.0]])
VALUES = torch.tensor([[0.5, 0.6, 0.7, INF], [0.5, INF, 9.0, 9.0]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])


def test_gae_gamma_1_lambda_095():
    # Row 0, V past the last token = 0:
    #   δ2 = 1 + 0 - 0.7 = 0.3;   δ1 = 0 + 0.7 - 0.6 = 0.1;   δ0 = 0 + 0.6 - 0.5 = 0.1
    #   A2 = 0.3;   A1 = 0.1 + 0.95·0.3 = 0.385;   A0 = 0.1 + 0.95·0.385 = 0.46575
    #   returns = A + V = 0.96575, 0.985, 1.0
    # Row 1: δ0 = 2 + 0 - 0.5 = 1.5 = A0; return 2.0
    advantages, returns = gae_advantages(REWARDS, VALUES, MASK, gamma=1.0, lam=0.95)
    assert torch.allclose(advantages, torch.tensor([[0.46575, 0.385, 0.3, 0.0], [1.5, 0.0, 0.0, 0.0]]))
    assert torch.allclose(returns, torch.tensor([[0.96575, 0.985, 1.0, 0.0], [2.0, 0.0, 0.0, 0.0]]))


def test_gae_gamma_09_lambda_1_is_discounted_return_minus_value():
    # δ2 = 1 - 0.7 = 0.3;   δ1 = 0.9·0.7 - 0.6 = 0.03;   δ0 = 0.9·0.6 - 0.5 = 0.04
    # A2 = 0.3;   A1 = 0.03 + 0.9·0.3 = 0.3;   A0 = 0.04 + 0.9·0.3 = 0.31
    # check with λ = 1: A_t = 0.9^(2-t)·1 - V_t → 0.81 - 0.5, 0.9 - 0.6, 1 - 0.7; returns = 0.81, 0.9, 1.0
    advantages, returns = gae_advantages(REWARDS, VALUES, MASK, gamma=0.9, lam=1.0)
    assert torch.allclose(advantages[0], torch.tensor([0.31, 0.3, 0.3, 0.0]))
    assert torch.allclose(returns[0], torch.tensor([0.81, 0.9, 1.0, 0.0]))


def test_gae_does_not_track_gradients():
    values = VALUES.clone().requires_grad_()
    advantages, returns = gae_advantages(REWARDS, values, MASK)
    assert not advantages.requires_grad and not returns.requires_grad


def test_whiten_over_masked_positions_of_all_rows():
    # masked values 2, 4 (row 0) and 6 (row 1): mean 4, unbiased var (4 + 0 + 4) / 2 = 4, std 2
    x = torch.tensor([[2.0, 4.0, 100.0], [6.0, INF, -3.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert torch.allclose(whiten(x, mask), torch.tensor([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    # shift_mean=False keeps the mean: (x - 4) / 2 + 4
    assert torch.allclose(whiten(x, mask, shift_mean=False), torch.tensor([[3.0, 4.0, 0.0], [5.0, 0.0, 0.0]]))


def test_whiten_degenerate_masks():
    x = torch.tensor([[5.0, 7.0]])
    # one masked value: variance taken as 0 → centred value 0; without shifting the value is kept
    assert torch.equal(whiten(x, torch.tensor([[1, 0]])), torch.zeros(1, 2))
    assert whiten(x, torch.tensor([[1, 0]]), shift_mean=False)[0, 0].item() == pytest.approx(5.0)
    assert torch.equal(whiten(x, torch.zeros(1, 2)), torch.zeros(1, 2))


def test_token_level_rewards_score_on_the_last_token_minus_kl():
    # Row 0: prompt positions 0-1, response at 2-4, padding at 5; score 1, KL (0.1, 0.2, 0.3) on the response
    #   r = (0, 0, -0.05·0.1, -0.05·0.2, 1 - 0.05·0.3, 0) = (0, 0, -0.005, -0.01, 0.985, 0)
    # Row 1: response at 0 only, score 0.1 → r = (0.1 - 0.05·0.4 = 0.08, 0, ...); KL on padding (9, inf) ignored
    # Row 2: no response token at all → nothing, not even its score
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    kl = torch.tensor([[9.0, 9.0, 0.1, 0.2, 0.3, INF], [0.4, 9.0, INF, 9.0, 9.0, 9.0], [1.0] * 6])
    scores = torch.tensor([1.0, 0.1, 5.0])
    rewards = token_level_rewards(scores, mask, kl, kl_coef=0.05)
    expected = torch.tensor([[0, 0, -0.005, -0.01, 0.985, 0], [0.08, 0, 0, 0, 0, 0], [0.0] * 6])
    assert torch.allclose(rewards, expected)
    # without a KL term only the scores remain
    assert torch.equal(token_level_rewards(scores, mask), torch.tensor([[0, 0, 0, 0, 1.0, 0], [0.1, 0, 0, 0, 0, 0], [0.0] * 6]))


def test_gae_with_prompt_positions_before_the_response():
    # The learner's rows start with prompt positions (mask 0) and values there are garbage; the response of row 0
    # is the same as REWARDS/VALUES row 0 above, shifted right by two → the same advantages, shifted.
    rewards = torch.tensor([[7.0, 7.0, 0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[INF, 3.0, 0.5, 0.6, 0.7, INF]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 0]])
    advantages, returns = gae_advantages(rewards, values, mask, gamma=1.0, lam=0.95)
    assert torch.allclose(advantages, torch.tensor([[0.0, 0.0, 0.46575, 0.385, 0.3, 0.0]]))
    assert torch.allclose(returns, torch.tensor([[0.0, 0.0, 0.96575, 0.985, 1.0, 0.0]]))


def test_ppo_targets_from_scalar_rewards_by_hand():
    # Uneven lengths through the whole chain: token rewards → GAE (γ = 1, λ = 1) → whitening.
    # Row 0: 2 tokens, score 1, V = (0.5, 0.5) → returns (1, 1), A = (0.5, 0.5)
    # Row 1: 1 token, score 0, V = 0.5 → return 0, A = -0.5
    # whiten A over the 3 tokens: mean 1/6, deviations (1/3, 1/3, -2/3), unbiased var (1/9 + 1/9 + 4/9) / 2 = 1/3
    #   → (1/3, 1/3, -2/3) · √3 = (0.57735, 0.57735, -1.15470)
    mask = torch.tensor([[1, 1], [1, 0]])
    rewards = token_level_rewards(torch.tensor([1.0, 0.0]), mask)
    advantages, returns = gae_advantages(rewards, torch.full((2, 2), 0.5), mask, gamma=1.0, lam=1.0)
    assert torch.allclose(returns, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    assert torch.allclose(advantages, torch.tensor([[0.5, 0.5], [-0.5, 0.0]]))
    assert torch.allclose(whiten(advantages, mask), torch.tensor([[0.57735, 0.57735], [-1.15470, 0.0]]), atol=1e-5)
