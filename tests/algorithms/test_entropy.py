import math

import pytest
import torch

from rlqa.algorithms.entropy import entropy_from_logits, token_logprobs


def test_entropy_of_uniform_logits_is_log_vocab():
    # any constant logits give p = 1/V, H = ln V = ln 4 = 1.386294
    logits = torch.full((2, 3, 4), 3.7)
    assert torch.allclose(entropy_from_logits(logits), torch.full((2, 3), math.log(4)))


def test_entropy_of_known_distributions():
    # logits (0, ln 3) → p = (1/4, 3/4): H = ¼ ln 4 + ¾ ln(4/3) = 0.346574 + 0.215762 = 0.562335
    # logits (10, 0, 0) → nearly one-hot: p0 = 1 / (1 + 2e^-10), p1 = p2 = e^-10 / (1 + 2e^-10);
    #   H = -p0 ln p0 - 2 p1 ln p1 = 0.000998712 (float64 here: in float32, lse ≈ 10 and Σ p z ≈ 10 cancel to 1e-6)
    two_way = torch.tensor([[[0.0, math.log(3)]]])
    assert entropy_from_logits(two_way).item() == pytest.approx(0.562335, abs=1e-6)
    peaked = torch.tensor([[[10.0, 0.0, 0.0]]], dtype=torch.float64)
    assert entropy_from_logits(peaked).item() == pytest.approx(0.000998712, rel=1e-6)
    assert entropy_from_logits(peaked.float()).item() == pytest.approx(0.000998712, abs=2e-6)


def test_token_logprobs_by_hand():
    # position 0: logits (0, ln 3), token 1 → ln ¾ = -0.287682; position 1: logits (1, 1), token 0 → ln ½
    logits = torch.tensor([[[0.0, math.log(3)], [1.0, 1.0]]])
    tokens = torch.tensor([[1, 0]])
    assert torch.allclose(token_logprobs(logits, tokens), torch.tensor([[math.log(0.75), math.log(0.5)]]))


def test_token_logprobs_match_log_softmax_and_backpropagate():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=generator, requires_grad=True)
    tokens = torch.randint(0, 11, (2, 5), generator=generator)
    expected = logits.log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    result = token_logprobs(logits, tokens)
    assert torch.allclose(result, expected, atol=1e-6)
    result.sum().backward()
    # ∂ log p_token / ∂ z = onehot(token) - softmax(z): each position's gradient sums to 0
    assert torch.allclose(logits.grad.sum(-1), torch.zeros(2, 5), atol=1e-6)


def test_bf16_logits_are_computed_in_float32():
    generator = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 3, 7, generator=generator) * 5).to(torch.bfloat16).requires_grad_()
    tokens = torch.randint(0, 7, (2, 3), generator=generator)
    full = logits.detach().float()
    logprobs = token_logprobs(logits, tokens)
    assert logprobs.dtype == torch.float32
    assert torch.allclose(logprobs, full.log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1), atol=1e-6)
    entropy = entropy_from_logits(logits)
    assert entropy.dtype == torch.float32
    assert torch.allclose(entropy, entropy_from_logits(full), atol=1e-6)
    (logprobs.sum() + entropy.sum()).backward()
    assert logits.grad.dtype == torch.bfloat16
