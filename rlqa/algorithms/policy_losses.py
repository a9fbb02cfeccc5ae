"""Policy losses, a registry of them (as verl's `core_algos`), and the whole policy objective the learner minimises.

Every loss takes the current log-probs (B, T) with gradient, π_old's log-probs (B, T), advantages (B,) or (B, T)
and the (B, T) response mask, and returns a scalar plus detached stats. With ρ = π_θ / π_old:

- "clip" (PPO / GRPO): per token, L_t = -min(ρ_t A, clip(ρ_t, 1 - ε_low, 1 + ε_high) A), optional dual clip.
- "gspo" (GSPO, Zheng et al. 2025): the same clipped surrogate on one ratio per response, the geometric mean of its
  token ratios, s_i = exp(mean_t log ρ_{i,t}); a response is kept or clipped as a whole (TRL:
  `importance_sampling_level="sequence"`).
- "cispo" (CISPO, MiniMax-M1): REINFORCE on log π weighted by the clipped, detached ratio,
  L_t = -sg(min(ρ_t, ε_max)) · A · log π_t, so no token loses its gradient to clipping (TRL: `loss_type="cispo"`,
  ε_max = its epsilon_high).

A registered loss reads its knobs from the recipe's `algorithm` section; the math is in the keyword functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
from torch import Tensor

from rlqa.algorithms.kl import MAX_LOG_RATIO, kl_penalty
from rlqa.algorithms.losses import aggregate, masked_mean

if TYPE_CHECKING:
    from rlqa.config import AlgorithmConfig


def importance_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor, level: Literal["token", "sequence"]) -> Tensor:
    """ρ with gradient, (B, T): per token exp(log π_θ - log π_old), or per response (GSPO) the exp of the mean
    log-ratio over its masked tokens, repeated on each of them. Log-ratios are clamped to ±20 first: a ratio of
    e^±20 is clipped either way, and the bound keeps exp finite so a stray log-prob cannot make the backward pass nan
    (verl does the same)."""
    log_ratio = logprobs - old_logprobs  # (B, T)
    if level == "sequence":
        mask = mask.bool()
        tokens = mask.sum(dim=-1, keepdim=True).clamp(min=1)  # (B, 1)
        log_ratio = (torch.where(mask, log_ratio, 0.0).sum(dim=-1, keepdim=True) / tokens).expand_as(log_ratio)
    return log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()


def _per_response(advantages: Tensor) -> Tensor:
    """(B,) -> (B, 1): every token of a response shares its advantage; (B, T) stays."""
    return advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages


def _ratio_stats(logprobs: Tensor, old_logprobs: Tensor, ratio: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """"approx_kl": k3 estimate of KL(π_old ‖ π_θ) per token, (ρ - 1) - log ρ ≥ 0; "ratio_mean": mean ρ."""
    return {
        "approx_kl": masked_mean(kl_penalty(old_logprobs, logprobs, "k3"), mask),
        "ratio_mean": masked_mean(ratio, mask),
    }


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
    level: Literal["token", "sequence"] = "token",
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO/GRPO clipped surrogate, per token, aggregated by `aggregation`; GSPO with level="sequence".

        ρ_t = importance_ratio(level)                    (token, or the response's geometric mean)
        L_t = -min(ρ_t A, clip(ρ_t, 1 - clip_low, 1 + clip_high) A)
        dual clip, only where A < 0:  L_t = min(L_t, -c A)   (c = dual_clip > 1)

    logprobs: (B, T) with gradient; old_logprobs: (B, T); advantages: (B,) (one per response) or (B, T);
    mask: (B, T). Returns the loss () and detached stats, each a token mean over the masked tokens:
    - "clip_frac": tokens where the clipped term is the active one: (ρ < 1 - clip_low and A < 0) or
      (ρ > 1 + clip_high and A > 0) (counted as TRL and verl do);
    - "approx_kl", "ratio_mean" (see `_ratio_stats`);
    - "dual_clip_frac" (only with dual_clip): tokens where the dual-clip bound -c A is the active one.
    """
    mask = mask.bool()
    advantages = _per_response(advantages)
    ratio = importance_ratio(logprobs, old_logprobs, mask, level)  # (B, T)
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
        stats.update(_ratio_stats(logprobs, old_logprobs, ratio, mask))
    return loss, {name: value.detach() for name, value in stats.items()}


def cispo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    max_ratio: float = 5.0,
    aggregation: str = "token-mean",
    max_len: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO: L_t = -sg(min(ρ_t, max_ratio)) · A · log π_t, aggregated by `aggregation`.

    The gradient of every token is -min(ρ_t, max_ratio) · A · ∇log π_t: clipping bounds the importance weight, it
    never drops a token from the gradient as PPO's clip does. Shapes as in `clipped_policy_loss`. Stats:
    "clip_frac" = tokens with ρ > max_ratio and A > 0 (as TRL counts it), "approx_kl", "ratio_mean".
    """
    mask = mask.bool()
    advantages = _per_response(advantages)
    ratio = importance_ratio(logprobs, old_logprobs, mask, "token")  # (B, T)
    weight = ratio.clamp(max=max_ratio).detach()  # (B, T)
    per_token = -weight * advantages * logprobs  # (B, T)
    loss = aggregate(per_token, mask, aggregation, max_len)
    with torch.no_grad():
        stats = {"clip_frac": masked_mean(((ratio > max_ratio) & (advantages > 0)).float(), mask)}
        stats.update(_ratio_stats(logprobs, old_logprobs, ratio, mask))
    return loss, {name: value.detach() for name, value in stats.items()}


# -- the registry --------------------------------------------------------------------------------------------------

PolicyLossFn = Callable[[Tensor, Tensor, Tensor, Tensor, "AlgorithmConfig", "int | None"], tuple[Tensor, dict[str, Tensor]]]


class PolicyLoss(NamedTuple):
    fn: PolicyLossFn  # (logprobs, old_logprobs, advantages, mask, algorithm section, max_len) -> (loss, stats)
    ratio: Literal["token", "sequence"]  # the level of its importance ratio, which also weighs a ratio-weighted KL


POLICY_LOSSES: dict[str, PolicyLoss] = {}


def register_policy_loss(name: str, ratio: Literal["token", "sequence"] = "token"):
    """Decorator: make `fn` the policy loss `algorithm.policy_loss: name` selects."""

    def register(fn: PolicyLossFn) -> PolicyLossFn:
        POLICY_LOSSES[name] = PolicyLoss(fn, ratio)
        return fn

    return register


def get_policy_loss(name: str) -> PolicyLoss:
    if name not in POLICY_LOSSES:
        raise ValueError(f"unknown policy loss {name!r}; supported: {', '.join(sorted(POLICY_LOSSES))}")
    return POLICY_LOSSES[name]


@register_policy_loss("clip")
def _clip(logprobs, old_logprobs, advantages, mask, cfg: AlgorithmConfig, max_len):
    return clipped_policy_loss(
        logprobs, old_logprobs, advantages, mask, clip_low=cfg.clip_low, clip_high=cfg.clip_high,
        dual_clip=cfg.dual_clip, aggregation=cfg.loss_aggregation, max_len=max_len,
    )


@register_policy_loss("gspo", ratio="sequence")
def _gspo(logprobs, old_logprobs, advantages, mask, cfg: AlgorithmConfig, max_len):
    return clipped_policy_loss(
        logprobs, old_logprobs, advantages, mask, clip_low=cfg.clip_low, clip_high=cfg.clip_high,
        dual_clip=cfg.dual_clip, aggregation=cfg.loss_aggregation, max_len=max_len, level="sequence",
    )


@register_policy_loss("cispo")
def _cispo(logprobs, old_logprobs, advantages, mask, cfg: AlgorithmConfig, max_len):
    return cispo_policy_loss(
        logprobs, old_logprobs, advantages, mask, max_ratio=cfg.cispo_max_ratio, aggregation=cfg.loss_aggregation,
        max_len=max_len,
    )


# -- the objective -----------------------------------------------------------------------------------------------


def policy_objective(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    cfg: AlgorithmConfig,
    *,
    ref_logprobs: Tensor | None = None,
    kl_coef: float | None = None,
    entropy: Tensor | None = None,
    tis_weights: Tensor | None = None,
    max_len: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The whole policy loss the learner minimises for one (micro-)batch, as the `algorithm` section `cfg` says:

        J = agg(L_policy_loss) + β · agg(KL(π_θ ‖ π_ref)) - c_H · agg(H)

    every term aggregated the same way (`cfg.loss_aggregation`): β·KL is added per token before aggregating, as in
    TRL's GRPOTrainer; the entropy bonus follows the aggregation too, as in verl (TRL takes its token mean whatever
    the loss type). The KL term is present only with `ref_logprobs` and β > 0 (β = `kl_coef`, default
    `cfg.kl_coef`; with the KL in PPO's reward instead, the caller passes 0); the entropy bonus only with `entropy`
    and c_H = `cfg.entropy_coef` > 0.

    `cfg.kl_ratio_weighted` multiplies each token's KL by the loss's own importance ratio (per token, or GSPO's per
    response), with its gradient: the samples come from π_old, so this makes the KL term's gradient that of the true
    reverse KL (DeepSeek-V3.2; TRL's default, `use_bias_correction_kl`). Without it (verl, the GRPO paper) the two
    coincide only on-policy.

    `tis_weights` (B, T), detached and > 0 (`rlqa.algorithms.mismatch.tis_weights`), multiply each token's
    policy-gradient loss L_t, not the KL or entropy terms. They are applied to the advantage, w_t · A: every
    registered loss is positively homogeneous in A per token (min/max/clip of terms linear in A, and the clip
    conditions depend on A's sign only), so L_t(w_t A) = w_t L_t(A) exactly.

    logprobs: (B, T) with gradient; old_logprobs, ref_logprobs, entropy, mask: (B, T); advantages: (B,) or (B, T).
    Returns J () and the detached stats of the policy loss plus "pg_loss" and, when given, "kl" (token mean of the
    KL estimate) and "entropy" (token mean).
    """
    policy_loss = get_policy_loss(cfg.policy_loss)
    if tis_weights is not None:
        advantages = _per_response(advantages) * tis_weights  # (B, T)
    loss, stats = policy_loss.fn(logprobs, old_logprobs, advantages, mask, cfg, max_len)
    stats["pg_loss"] = loss.detach()
    kl_coef = cfg.kl_coef if kl_coef is None else kl_coef
    if ref_logprobs is not None:
        kl = kl_penalty(logprobs, ref_logprobs, cfg.kl_estimator)  # (B, T)
        stats["kl"] = masked_mean(kl.detach(), mask)
        if cfg.kl_ratio_weighted:
            kl = kl * importance_ratio(logprobs, old_logprobs, mask, policy_loss.ratio)
        if kl_coef > 0:
            loss = loss + kl_coef * aggregate(kl, mask, cfg.loss_aggregation, max_len)
    if entropy is not None:
        stats["entropy"] = masked_mean(entropy.detach(), mask)
        if cfg.entropy_coef > 0:
            loss = loss - cfg.entropy_coef * aggregate(entropy, mask, cfg.loss_aggregation, max_len)
    return loss, stats
