"""Outcome advantages: one scalar per response, computed against the other responses to the same prompt.

Responses are grouped by `group_ids` (one id per prompt). Groups may have uneven sizes (E3 gives hard prompts
more rollouts) and need not be contiguous or sorted; every per-group statistic is a scatter (`index_add_`) over
the batch, never a Python loop over samples.

A group whose rewards are all equal gets advantage exactly 0. This is forced, not left to arithmetic: in float32
eight rewards of 0.1 have a mean that differs from 0.1 by one ulp, and dividing that by (std + ε) with std ≈ 0
turns it into an advantage of ≈ -0.0075 on every sample, i.e. a spurious push on a group that carries no signal.

The registry holds both kinds of estimator. "outcome" ones (above) need only the rewards and the groups, so the driver
computes them; "token" ones need a critic's values per token, so the learner computes them: PPO's GAE (`gae.py`;
recipe `algorithm.name: ppo`, `advantage: gae`).
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from rlqa.algorithms.gae import gae_advantages, whiten


def _group_sum(values: Tensor, dense_ids: Tensor, num_groups: int) -> Tensor:
    """Sum of `values` over each sample's group, handed back per sample. (N,) -> (N,)"""
    sums = torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add_(0, dense_ids, values)
    return sums[dense_ids]


class GroupStats(NamedTuple):
    """Statistics of each sample's group, handed back per sample: every field is (N,)."""

    count: Tensor  # group size (float)
    mean: Tensor  # mean reward of the group
    std: Tensor  # unbiased (n - 1) std of the group; 0 for a group of size 1
    constant: Tensor  # bool: all rewards in the group are equal (true for a group of size 1)


def group_stats(rewards: Tensor, group_ids: Tensor) -> GroupStats:
    """Size, mean, unbiased std and constancy of each sample's group. rewards: (N,) float; group_ids: (N,) long."""
    if rewards.dim() != 1 or rewards.shape != group_ids.shape:
        raise ValueError(f"rewards and group_ids must both have shape (N,), got {rewards.shape} and {group_ids.shape}")
    if not rewards.is_floating_point():
        raise ValueError(f"rewards must be a floating-point tensor, got {rewards.dtype}")
    uniques, dense_ids = torch.unique(group_ids, return_inverse=True)  # dense_ids: (N,) in [0, G)
    num_groups = uniques.numel()
    count = _group_sum(torch.ones_like(rewards), dense_ids, num_groups)  # (N,)
    mean = _group_sum(rewards, dense_ids, num_groups) / count  # (N,)
    squares = _group_sum((rewards - mean).square(), dense_ids, num_groups)  # (N,)
    std = (squares / (count - 1).clamp(min=1)).sqrt()  # (N,)
    empty = torch.zeros(num_groups, dtype=rewards.dtype, device=rewards.device)
    group_max = empty.scatter_reduce(0, dense_ids, rewards, "amax", include_self=False)  # (G,)
    group_min = empty.scatter_reduce(0, dense_ids, rewards, "amin", include_self=False)  # (G,)
    constant = (group_max == group_min)[dense_ids]  # (N,)
    return GroupStats(count, mean, std, constant)


@torch.no_grad()
def grpo_advantages(rewards: Tensor, group_ids: Tensor, *, scale_by_std: bool = True, eps: float = 1e-6) -> Tensor:
    """GRPO: A = (r - mean_group r) / (std_group r + eps); with `scale_by_std=False`, Dr. GRPO: A = r - mean_group r.

    std is the unbiased (n - 1) standard deviation, like `torch.std`, TRL and verl. A group of size 1, or whose
    rewards are all equal, gets A = 0.

    rewards: (N,) float; group_ids: (N,) long, one id per prompt. Returns (N,).
    """
    stats = group_stats(rewards, group_ids)
    advantages = rewards - stats.mean  # (N,)
    if scale_by_std:
        advantages = advantages / (stats.std + eps)
    return torch.where(stats.constant, torch.zeros_like(advantages), advantages)


def dr_grpo_advantages(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """Dr. GRPO: A = r - mean_group r (no division by the group's std). (N,) -> (N,)"""
    return grpo_advantages(rewards, group_ids, scale_by_std=False)


@torch.no_grad()
def rloo_advantages(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """RLOO: A = r - mean of the other rewards in the group = n / (n - 1) · (r - mean_group r).

    A group of size 1 (no other sample to compare with) or with all rewards equal gets A = 0. (N,) -> (N,)
    """
    stats = group_stats(rewards, group_ids)
    advantages = (rewards - stats.mean) * stats.count / (stats.count - 1).clamp(min=1)  # (N,)
    return torch.where(stats.constant, torch.zeros_like(advantages), advantages)


@torch.no_grad()
def reinforce_pp_advantages(rewards: Tensor, group_ids: Tensor, eps: float = 1e-6) -> Tensor:
    """REINFORCE++ (group baseline): A = r - mean_group r, then whitened over the whole batch.

    Whitening: (A - mean) / sqrt(var + eps) with the unbiased batch variance, so the result has mean 0 and
    `torch.std` 1 (unless every advantage is 0, which stays 0). A constant group is zeroed again after whitening:
    its centred 0s come out as -mean / std, a few ulps (±4.5e-8) off 0 in float32, which is still a push on a group
    with no signal and counts as nonzero in `advantage/nonzero_frac`. (N,) -> (N,)
    """
    stats = group_stats(rewards, group_ids)
    centered = dr_grpo_advantages(rewards, group_ids)  # (N,), 0 in constant groups
    whitened = whiten(centered, torch.ones_like(centered, dtype=torch.bool), eps=eps)
    return torch.where(stats.constant, torch.zeros_like(whitened), whitened)


@dataclass(frozen=True)
class AdvantageEstimator:
    """A registered estimator; calling it calls `compute`.

    level "outcome": (rewards (N,), group_ids (N,)) -> advantages (N,), one per response; the driver computes it.
    level "token": (token rewards (B, T), values (B, T), mask (B, T), gamma, lam) -> (advantages, returns), both
    (B, T); the learner computes it from its critic's values.
    """

    compute: Callable
    level: Literal["outcome", "token"]

    def __call__(self, *args, **kwargs):
        return self.compute(*args, **kwargs)


ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {
    "grpo": AdvantageEstimator(grpo_advantages, "outcome"),
    "dr_grpo": AdvantageEstimator(dr_grpo_advantages, "outcome"),
    "rloo": AdvantageEstimator(rloo_advantages, "outcome"),
    "reinforce_pp": AdvantageEstimator(reinforce_pp_advantages, "outcome"),
    "gae": AdvantageEstimator(gae_advantages, "token"),
}


def get_advantage_estimator(name: str) -> AdvantageEstimator:
    """The estimator registered under `name`; an unknown name lists the supported ones."""
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; supported: {', '.join(sorted(ADVANTAGE_ESTIMATORS))}")
    return ADVANTAGE_ESTIMATORS[name]
