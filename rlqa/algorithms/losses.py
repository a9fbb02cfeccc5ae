"""Per-token policy and value losses, and how they are aggregated over a batch.

Every loss here takes (B, T) tensors with a (B, T) mask that is 1 on response tokens, and returns a scalar.
Masked positions are selected away (`torch.where`), never multiplied by 0, so padding holding inf or nan cannot
make the loss nan. The gradient stays clean only while padding is finite: the policy loss clamps its log-ratio
for that reason; critic values and returns are finite wherever the model is.
"""

from collections.abc import Callable

import torch
from torch import Tensor

from rlqa.algorithms.kl import MAX_LOG_RATIO, kl_penalty


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


def clipped_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    aggregation: str = "token-mean",
    max_len: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO/GRPO clipped surrogate, per token, aggregated by `aggregation`.

        ρ_t = exp(log π_θ - log π_old)                    (log-ratio clamped to ±20 first)
        L_t = -min(ρ_t A, clip(ρ_t, 1 - clip_low, 1 + clip_high) A)
        dual clip, only where A < 0:  L_t = min(L_t, -c A)   (c = dual_clip > 1)

    logprobs: (B, T) with gradient; old_logprobs: (B, T); advantages: (B,) (one per response) or (B, T);
    mask: (B, T). Returns the loss () and detached stats, each a token mean over the masked tokens:
    - "clip_frac": tokens where the clipped term is the active one: (ρ < 1 - clip_low and A < 0) or
      (ρ > 1 + clip_high and A > 0) (counted as TRL and verl do);
    - "approx_kl": k3 estimate of KL(π_old ‖ π_θ), (ρ - 1) - log ρ, always ≥ 0;
    - "ratio_mean": mean ρ;
    - "dual_clip_frac" (only with dual_clip): tokens where the dual-clip bound -c A is the active one.
    """
    mask = mask.bool()
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)  # (B, 1): every token of a response shares its advantage
    # A ratio of e^±20 is clipped either way; the bound keeps exp finite so a stray log-prob cannot make the
    # backward pass nan (verl does the same).
    log_ratio = (logprobs - old_logprobs).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)  # (B, T)
    ratio = log_ratio.exp()  # (B, T)
    unclipped = -ratio * advantages  # (B, T)
    clipped = -ratio.clamp(1 - clip_low, 1 + clip_high) * advantages  # (B, T)
    per_token = torch.maximum(unclipped, clipped)  # (B, T)
    stats = {}
    if dual_clip is not None:
        if dual_clip <= 1:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        bound = -dual_clip * advantages  # (B, T) or (B, 1)
        dual_active = (advantages < 0) & (per_token > bound)  # (B, T)
        per_token = torch.where(dual_active, bound, per_token)
        stats["dual_clip_frac"] = masked_mean(dual_active.float(), mask)
    loss = aggregate(per_token, mask, aggregation, max_len)

    with torch.no_grad():
        clip_active = ((ratio < 1 - clip_low) & (advantages < 0)) | ((ratio > 1 + clip_high) & (advantages > 0))
        stats["clip_frac"] = masked_mean(clip_active.float(), mask)
        stats["approx_kl"] = masked_mean(kl_penalty(old_logprobs, logprobs, "k3"), mask)
        stats["ratio_mean"] = masked_mean(ratio, mask)
    return loss, {name: value.detach() for name, value in stats.items()}


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


def policy_objective(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    kl_ratio_weighted: bool = False,
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    aggregation: str = "token-mean",
    max_len: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The whole policy loss the learner minimises for one (micro-)batch:

        J = agg(L_clip) + β · agg(KL(π_θ ‖ π_ref)) - c_H · agg(H)

    every term aggregated the same way (`aggregation`): β·KL is added per token before aggregating, as in TRL's
    GRPOTrainer; the entropy bonus follows the aggregation too, as in verl (TRL takes its token mean whatever the
    loss type). The KL term is present only with `ref_logprobs` and β > 0 (with the KL in the reward
    instead, the caller passes β = 0); the entropy bonus only with `entropy` and c_H > 0.

    `kl_ratio_weighted` multiplies each token's KL by ρ_t = π_θ / π_old (with its gradient): the samples come from
    π_old, so this makes the KL term's gradient that of the true reverse KL (DeepSeek-V3.2; TRL's default,
    `use_bias_correction_kl`). Without it (verl, the GRPO paper) the two coincide only on-policy.

    logprobs: (B, T) with gradient; old_logprobs, ref_logprobs, entropy, mask: (B, T); advantages: (B,) or (B, T).
    Returns J () and the detached stats of `clipped_policy_loss` plus "pg_loss" and, when given, "kl" (token mean
    of the KL estimate) and "entropy" (token mean).
    """
    loss, stats = clipped_policy_loss(
        logprobs, old_logprobs, advantages, mask,
        clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip, aggregation=aggregation, max_len=max_len,
    )
    stats["pg_loss"] = loss.detach()
    if ref_logprobs is not None:
        kl = kl_penalty(logprobs, ref_logprobs, kl_estimator)  # (B, T)
        stats["kl"] = masked_mean(kl.detach(), mask)
        if kl_ratio_weighted:
            kl = kl * (logprobs - old_logprobs).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()
        if kl_coef > 0:
            loss = loss + kl_coef * aggregate(kl, mask, aggregation, max_len)
    if entropy is not None:
        stats["entropy"] = masked_mean(entropy.detach(), mask)
        if entropy_coef > 0:
            loss = loss - entropy_coef * aggregate(entropy, mask, aggregation, max_len)
    return loss, stats
