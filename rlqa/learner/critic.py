"""PPO's learned value function V(s_t): a linear head on a transformer's last hidden state.

Two shapes, chosen by `algorithm.critic.kind`:
- "head": the head sits on the policy's own backbone. One forward pass gives logits and values; the value loss
  also trains the shared backbone (cheap; the two losses can pull the representation in different directions).
- "separate": a backbone of its own, initialised from the policy at the start of RL (as ReFT and verl do) or from
  `critic.path`, with its own optimizer. Twice the forward passes and memory, no interference.

The head starts at zero, so every value is 0 before the first update and the first advantages are the (whitened)
rewards-to-go.
"""

from __future__ import annotations

import copy

import torch
from transformers import AutoModel

from rlqa.algorithms.losses import value_loss
from rlqa.config import CriticConfig
from rlqa.learner.batch import TensorBatch


def _hidden_size(model: torch.nn.Module) -> int:
    config = model.config
    return (config.get_text_config() if hasattr(config, "get_text_config") else config).hidden_size


class Critic(torch.nn.Module):
    def __init__(self, cfg: CriticConfig, policy: torch.nn.Module, dtype: torch.dtype, trust_remote_code: bool = False):
        super().__init__()
        self.kind = cfg.kind
        self.value_clip = cfg.value_clip
        self.backbone = None
        if cfg.kind == "separate":
            if cfg.path is None:
                self.backbone = copy.deepcopy(policy.base_model)
            else:
                self.backbone = AutoModel.from_pretrained(cfg.path, dtype=dtype, trust_remote_code=trust_remote_code)
            self.backbone.train()
        # float32 whatever the backbone's dtype: values are regression targets of order 1, where bf16 is too coarse
        self.head = torch.nn.Linear(_hidden_size(policy), 1, dtype=torch.float32)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def values(self, batch: TensorBatch, policy_hidden: torch.Tensor | None = None) -> torch.Tensor:
        """V at every position of the collated batch, aligned with `batch.mask`: the value at position p is that
        of the state after tokens 0..p, from which token p + 1 is generated. Returns (B, L-1) float32.

        policy_hidden: (B, L, H), the policy's last hidden state; required for kind "head", ignored otherwise.
        """
        if self.backbone is None:
            hidden = policy_hidden
        else:
            hidden = self.backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        return self.head(hidden[:, :-1].float()).squeeze(-1)  # (B, L-1)

    def loss(self, batch: TensorBatch, policy_hidden: torch.Tensor | None, aggregation: str, max_len: int | None) -> torch.Tensor:
        """The clipped value loss against the batch's returns, around its old values (`value_loss`). Returns ()."""
        values = self.values(batch, policy_hidden)  # (B, L-1)
        return value_loss(values, batch.old_values, batch.returns, batch.mask, self.value_clip, aggregation, max_len)
