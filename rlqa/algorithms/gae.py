"""Token-level rewards and generalised advantage estimation for PPO with a critic (ReFT), and masked whitening.

Each row of `mask` is 1 on the response tokens the model sampled, as in the learner's (B, L-1) tensors: after prompt
positions (0), before padding (0), and in a multi-turn rollout with holes (0) where a tool's or an environment's
tokens sit between the model's turns. Those tokens are not actions: the reward goes on the last model token, and
GAE steps over them, so an earlier turn sees the later turns' rewards and values as if they were adjacent (verl's
multi-turn GAE does the same).
"""

import torch
from torch import Tensor

from rlqa.algorithms.losses import masked_mean


def token_level_rewards(scores: Tensor, mask: Tensor, kl: Tensor | None = None, kl_coef: float = 0.0) -> Tensor:
    """PPO's per-token reward (ReFT, InstructGPT): the response's scalar score on its last (model) token, minus β·KL
    on each.

        r_t = -β · KL_t + [t is the last response token] · score

    scores: (B,); mask: (B, T); kl: (B, T) per-token KL to the reference, or None (no penalty). Returns (B, T),
    0 where mask is 0; a row without response tokens gets no reward at all.
    """
    mask = mask.bool()
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)  # (B, T)
    last = torch.where(mask, positions, -1).amax(dim=-1, keepdim=True)  # (B, 1); -1 for an empty row
    rewards = torch.where(positions == last, scores.unsqueeze(-1), 0.0)  # (B, T)
    if kl is not None:
        rewards = rewards - kl_coef * torch.where(mask, kl, 0.0)
    return rewards


@torch.no_grad()
def gae_advantages(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """GAE over right-padded token sequences.

        δ_t = r_t + γ V_{t+1} - V_t        (V past the last response token is 0: the episode ends there;
                                            t + 1 is the next model token, masked tokens skipped)
        A_t = Σ_k (γλ)^k δ_{t+k} = δ_t + γλ A_{t+1}
        returns_t = A_t + V_t

    rewards, values, mask: (B, T). Returns (advantages (B, T), returns (B, T)), both 0 where mask is 0.
    Computed without gradient: advantages and returns are targets, not functions of the critic being trained.
    """
    mask = mask.bool()
    # Padding may hold anything (even inf); select rather than multiply so it cannot leak in as nan.
    rewards = torch.where(mask, rewards, 0.0)  # (B, T)
    values = torch.where(mask, values, 0.0)  # (B, T)
    advantages = torch.zeros_like(values)  # (B, T)
    next_value = torch.zeros_like(values[:, 0])  # (B,)
    next_advantage = torch.zeros_like(values[:, 0])  # (B,)
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        # A masked step carries the next model token's value and advantage through unchanged: past the response
        # (padding) they stay 0, so the episode ends at its last model token; inside it (tool tokens) the recursion
        # skips them; before it (the prompt) they are never read.
        next_advantage = torch.where(mask[:, t], delta + gamma * lam * next_advantage, next_advantage)  # (B,)
        next_value = torch.where(mask[:, t], values[:, t], next_value)
        advantages[:, t] = torch.where(mask[:, t], next_advantage, 0.0)
    returns = torch.where(mask, advantages + values, 0.0)  # (B, T)
    return advantages, returns


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Masked whitening: (x - μ) / sqrt(σ² + eps) over the positions where mask is 1.

    σ² is the unbiased (n - 1) variance, as in TRL and verl; with fewer than two masked positions it is taken as 0.
    `shift_mean=False` keeps the original mean: (x - μ) / sqrt(σ² + eps) + μ (TRL/verl semantics).
    x, mask: same shape, e.g. (B, T) or (N,). Returns that shape, 0 where mask is 0.
    """
    mask = mask.bool()
    x = torch.where(mask, x, 0.0)
    count = mask.sum()
    mean = masked_mean(x, mask)
    variance = torch.where(mask, x - mean, 0.0).square().sum() / (count - 1).clamp(min=1)
    whitened = (x - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, 0.0)
