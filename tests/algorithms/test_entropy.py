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


# z = (2, 1, 0, -1): softmax = (0.6439, 0.2369, 0.0871, 0.0321); e^2 + e^1 + e^0 = 11.107338
FOUR = torch.tensor([[[2.0, 1.0, 0.0, -1.0]] * 4])  # (1, 4, V=4): one position per target token


def test_top_p_logprobs_are_those_of_the_renormalised_nucleus():
    # top_p 0.7: the mass above token 1 is 0.6439 < 0.7, above token 2 0.8808 ≥ 0.7, so the nucleus is {0, 1}:
    #   log p0 = -ln(1 + e^-1) = -0.313262, log p1 = -1 - ln(1 + e^-1) = -1.313262
    # tokens 2 and 3 were not in it; a sampled token always counts as kept (rounding at the boundary), so over
    # {0, 1, 2} and {0, 1, 3}: log p2 = 0 - ln(e^2 + e^1 + e^0) = -2.407606, log p3 = -1 - ln(e^2 + e^1 + e^-1)
    #   = -1 - ln 10.475217 = -3.349012
    tokens = torch.tensor([[0, 1, 2, 3]])
    got = token_logprobs(FOUR, tokens, top_p=0.7)
    assert got.tolist()[0] == pytest.approx([-0.313262, -1.313262, -2.407606, -3.349012], abs=1e-6)
    assert torch.allclose(token_logprobs(FOUR, tokens), torch.log_softmax(FOUR, -1)[0, 0][None])  # no filter


def test_top_k_then_top_p_and_the_gradient_through_the_kept_tokens():
    # top_k 3 keeps {0, 1, 2}: renormalised (0.665241, 0.244728, 0.090031); top_p 0.95 then keeps all three (mass above
    # token 2 = 0.909969 < 0.95): log p0 = 2 - ln 11.107338 = -0.407606. d log p0 / dz = onehot(0) - p over the kept:
    #   (1 - 0.665241, -0.244728, -0.090031, 0) = (0.334759, -0.244728, -0.090031, 0)
    logits = FOUR[:, :1].clone().requires_grad_()
    got = token_logprobs(logits, torch.tensor([[0]]), top_k=3, top_p=0.95)
    assert got.item() == pytest.approx(-0.407606, abs=1e-6)
    got.sum().backward()
    assert logits.grad[0, 0].tolist() == pytest.approx([0.334759, -0.244728, -0.090031, 0.0], abs=1e-6)
