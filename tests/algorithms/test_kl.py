import math

import pytest
import torch

from rlqa.algorithms.kl import AdaptiveKLController, kl_penalty

# x = ref - logprobs = -0.5, 1.0, 0.0
LOGPROBS = torch.tensor([[-1.0, -2.0, -0.5]])
REF_LOGPROBS = torch.tensor([[-1.5, -1.0, -0.5]])


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        # k1 = -x
        ("k1", [0.5, -1.0, 0.0]),
        # k2 = x² / 2
        ("k2", [0.125, 0.5, 0.0]),
        # k3 = e^x - x - 1: e^-0.5 + 0.5 - 1 = 0.106531; e - 2 = 0.718282; 0
        ("k3", [math.exp(-0.5) - 0.5, math.e - 2, 0.0]),
    ],
)
def test_estimators(kind, expected):
    assert torch.allclose(kl_penalty(LOGPROBS, REF_LOGPROBS, kind), torch.tensor([expected]))


def test_k3_is_the_default():
    assert torch.equal(kl_penalty(LOGPROBS, REF_LOGPROBS), kl_penalty(LOGPROBS, REF_LOGPROBS, "k3"))


def test_k3_clamps_the_log_ratio_to_20():
    # x = 100 → clamped to 20: e^20 - 21 = 485165174.41;  x = -100 → -20: e^-20 + 19 ≈ 19.000000002
    logprobs = torch.tensor([[0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    kl = kl_penalty(logprobs, torch.tensor([[100.0, -100.0]], dtype=torch.float64))
    assert kl[0, 0].item() == pytest.approx(485165174.41)
    assert kl[0, 1].item() == pytest.approx(19.000000002)
    kl.sum().backward()
    assert torch.isfinite(logprobs.grad).all()


def test_unknown_kind_lists_the_supported_ones():
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(LOGPROBS, REF_LOGPROBS, "k4")


def test_adaptive_kl_controller_by_hand():
    controller = AdaptiveKLController(initial=0.1, target=0.02, horizon=1000)
    # KL 0.03: error 0.03 / 0.02 - 1 = 0.5, clipped to 0.2; 100 responses → β · (1 + 0.2 · 100 / 1000) = 0.1 · 1.02
    assert controller.update(0.03, 100) == pytest.approx(0.102)
    # KL 0.019: error -0.05; 500 responses → 0.102 · (1 - 0.05 · 0.5) = 0.102 · 0.975 = 0.09945
    assert controller.update(0.019, 500) == pytest.approx(0.09945)
    # on target: unchanged
    assert controller.update(0.02, 10_000) == pytest.approx(0.09945)
    restored = AdaptiveKLController(initial=0.1, target=0.02, horizon=1000)
    restored.load_state_dict(controller.state_dict())
    assert restored.value == controller.value


def test_adaptive_kl_controller_rejects_non_positive_settings():
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(initial=0.1, target=0.0, horizon=10)
