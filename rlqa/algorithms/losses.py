"""How per-token losses are aggregated over a batch, and PPO's clipped value loss (policy losses: `policy_losses.py`).

Every loss takes (B, T) tensors with a (B, T) mask that is 1 on the response tokens the model sampled (0 on a
multi-turn rollout's tool or environment tokens, rlqa.learner.batch), and returns a scalar.
Masked positions are selected away (`torch.where`), never multiplied by 0, so padding holding inf or nan cannot
make the loss nan. The gradient stays clean only while padding is finite: the policy loss clamps its log-ratio
for that reason; critic values and returns are finite wherever the model is.
"""

from collections.abc import Callable

import torch
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x over the positions where mask is 1; 0 when the mask is empty. Any shape -> ()"""
    mask = mask.bool()
    return torch.where(mask, x, 0.0).sum() / mask.sum().clamp(min=1)


def _token_mean(per_token: Tensor, mask: Tensor, max_len: int | None) -> Tensor:
    return masked_mean(per_token, mask)


def _seq_mean_token_mean(per_token: Tensor, mask: Tensor, max_len: int | None) -> Tensor:
    tokens = mask.sum(dim=-1)  # (B,)
    per_sequence = torch.where(mask, per_token, 0.0).sum(dim=-1) / tokens.clamp(min=1)  # (B,)
    return masked_mean(per_sequence, tokens > 0)


def _seq_mean_token_sum_norm(per_token: Tensor, mask: Tensor, max_len: int | None) -> Tensor:
    norm = per_token.shape[-1] if max_len is None else max_len
    per_sequence = torch.where(mask, per_token, 0.0).sum(dim=-1) / norm  # (B,)
    return per_sequence.mean()


AGGREGATIONS: dict[str, Callable[[Tensor, Tensor, int | None], Tensor]] = {
    "token-mean": _token_mean,
    "seq-mean-token-mean": _seq_mean_token_mean,
    "seq-mean-token-sum-norm": _seq_mean_token_sum_norm,
}


def aggregate(per_token: Tensor, mask: Tensor, mode: str, max_len: int | None = None) -> Tensor:
    """Reduce a per-token loss (B, T) over the masked tokens to a scalar. The choice changes the gradient:

    - "token-mean": Σ_tokens L / number of tokens (DAPO; a long response weighs more).
    - "seq-mean-token-mean": mean over each response's tokens, then mean over the responses that have at least
      one token (original GRPO; every response weighs the same).
    - "seq-mean-token-sum-norm": Σ over each response's tokens / max_len (default T), then mean over all B
      responses (Dr. GRPO; a constant normaliser, so no length bias).

    An empty mask gives 0.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {mode!r}; supported: {', '.join(AGGREGATIONS)}")
    if per_token.shape != mask.shape or per_token.dim() != 2:
        raise ValueError(f"per_token and mask must both have shape (B, T), got {per_token.shape} and {mask.shape}")
    return AGGREGATIONS[mode](per_token, mask.bool(), max_len)


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip: float | None = 0.2,
    aggregation: str = "token-mean",
    max_len: int | None = None,
) -> Tensor:
    """Clipped critic loss: 0.5 · max((V - R)², (clip(V, V_old - c, V_old + c) - R)²), aggregated.

    With `clip=None`: 0.5 · (V - R)². values (with gradient), old_values, returns, mask: (B, T). Returns ().
    """
    unclipped = (values - returns).square()  # (B, T)
    if clip is None:
        per_token = 0.5 * unclipped
    else:
        clipped_values = old_values + (values - old_values).clamp(-clip, clip)  # (B, T)
        per_token = 0.5 * torch.maximum(unclipped, (clipped_values - returns).square())
    return aggregate(per_token, mask, aggregation, max_len)
