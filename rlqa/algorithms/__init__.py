"""The math of RL post-training as pure tensor functions: tensors in, tensors out, no Ray, no I/O.

- advantages: GRPO, Dr. GRPO, RLOO, REINFORCE++ outcome advantages over groups of responses; the estimator registry
  (GAE included)
- gae: PPO's token-level rewards, GAE for PPO with a critic, masked whitening
- policy_losses: clipped surrogate (with dual clip), GSPO, CISPO, their registry, the whole policy objective
- losses: aggregation modes, clipped value loss
- kl: k1 / k2 / k3 per-token KL estimators, the adaptive KL coefficient
- entropy: sampled-token log-probs and entropy from logits
- mismatch: the learner-vs-sampler log-prob gap, truncated importance sampling (TIS) weights
"""

from rlqa.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageEstimator,
    get_advantage_estimator,
    grpo_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
)
from rlqa.algorithms.entropy import entropy_from_logits, token_logprobs
from rlqa.algorithms.gae import gae_advantages, token_level_rewards, whiten
from rlqa.algorithms.kl import AdaptiveKLController, kl_penalty
from rlqa.algorithms.losses import aggregate, masked_mean, value_loss
from rlqa.algorithms.mismatch import logprob_gap, tis_weights
from rlqa.algorithms.policy_losses import (
    POLICY_LOSSES,
    cispo_policy_loss,
    clipped_policy_loss,
    get_policy_loss,
    policy_objective,
    register_policy_loss,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "POLICY_LOSSES",
    "AdaptiveKLController",
    "AdvantageEstimator",
    "aggregate",
    "cispo_policy_loss",
    "clipped_policy_loss",
    "entropy_from_logits",
    "gae_advantages",
    "get_advantage_estimator",
    "get_policy_loss",
    "grpo_advantages",
    "kl_penalty",
    "logprob_gap",
    "masked_mean",
    "policy_objective",
    "register_policy_loss",
    "reinforce_pp_advantages",
    "rloo_advantages",
    "tis_weights",
    "token_level_rewards",
    "token_logprobs",
    "value_loss",
    "whiten",
]
