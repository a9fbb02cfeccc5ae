import pytest
import torch

from rlqa.algorithms.gae import gae_advantages, whiten

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
