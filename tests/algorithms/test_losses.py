import pytest
import torch

from rlqa.algorithms.losses import aggregate, masked_mean, value_loss

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
