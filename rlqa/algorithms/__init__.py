"""The math of RL post-training as pure tensor functions: tensors in, tensors out, no Ray, no I/O.

- advantages: GRPO, Dr. GRPO, RLOO, REINFORCE++ outcome advantages over groups of responses
- gae: PPO's token-level rewards, GAE for PPO with a critic, masked whitening
- losses: clipped policy loss (with dual clip), the whole policy objective, clipped value loss, aggregation modes
- kl: k1 / k2 / k3 per-token KL estimators, the adaptive KL coefficient
- entropy: sampled-token log-probs and entropy from logits
"""

from rlqa.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    get_advantage_estimator,
    grpo_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
)
from rlqa.algorithms.entropy import entropy_from_logits, token_logprobs
from rlqa.algorithms.gae import gae_advantages, token_level_rewards, whiten
from rlqa.algorithms.kl import AdaptiveKLController, kl_penalty
from rlqa.algorithms.losses import aggregate, clipped_policy_loss, masked_mean, policy_objective, value_loss

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AdaptiveKLController",
    "aggregate",
    "clipped_policy_loss",
    "entropy_from_logits",
    "gae_advantages",
    "get_advantage_estimator",
    "grpo_advantages",
    "kl_penalty",
    "masked_mean",
    "policy_objective",
    "reinforce_pp_advantages",
    "rloo_advantages",
    "token_level_rewards",
    "token_logprobs",
    "value_loss",
    "whiten",
]
