"""The gap between the sampler's and the learner's log-probs of the sampled tokens, and truncated importance
sampling (TIS) to correct for it.

The rollout engine and the learner compute π_old differently (kernels, precision, batching), so the tokens were
drawn from π_sampler, not the π_old the loss assumes. TIS (Yao et al. 2025, "Your efficient RL framework secretly
brings you off-policy RL training"; verl's `tis_imp_ratio_cap`, TRL's `vllm_importance_sampling_correction`)
reweights each token's policy-gradient loss by the capped ratio of the two:

    w_t = min(exp(log π_old_learner(y_t) - log π_sampler(y_t)), C)      (detached)
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlqa.algorithms.kl import MAX_LOG_RATIO
from rlqa.algorithms.losses import masked_mean


def tis_weights(learner_logprobs: Tensor, sampling_logprobs: Tensor, cap: float) -> Tensor:
    """w_t = min(exp(log π_learner - log π_sampler), cap), detached. (B, T), (B, T) -> (B, T).

    The log-ratio is clamped to ±20 first, as for the policy ratio, so padding cannot overflow exp."""
    log_ratio = (learner_logprobs - sampling_logprobs).detach().clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)  # (B, T)
    return log_ratio.exp().clamp(max=cap)


def logprob_gap(learner_logprobs: Tensor, sampling_logprobs: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and max over the masked tokens of |log π_learner - log π_sampler|. (B, T) x3 -> (), () (0, 0 if empty)."""
    gap = (learner_logprobs - sampling_logprobs).detach().abs()  # (B, T)
    mask = mask.bool()
    return masked_mean(gap, mask), torch.where(mask, gap, 0.0).max() if mask.any() else gap.new_zeros(())
