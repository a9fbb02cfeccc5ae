"""The policy RL trains, and the frozen reference the KL term compares it with: each holds one model.

Both compute log-probs at the sampling temperature (logits / T): the distribution the tokens were drawn from.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch

from rlqa.algorithms.entropy import entropy_from_logits, token_logprobs
from rlqa.config import ModelConfig
from rlqa.learner.batch import TensorBatch
from rlqa.models import load_model, load_tokenizer


class Forward(NamedTuple):
    logprobs: torch.Tensor  # (B, L-1) log-probs of the batch's targets at the sampling temperature
    entropy: torch.Tensor | None  # (B, L-1) entropy at that temperature, when asked for
    hidden: torch.Tensor | None  # (B, L, H) last hidden state, when asked for (a value head reads it)


def detached(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the state dict; tied weights (embeddings = LM head) become separate tensors, as safetensors needs."""
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


class Policy:
    """The trained model and its tokenizer, loaded from a Hugging Face directory."""

    def __init__(self, model_dir: str, cfg: ModelConfig):
        self.tokenizer = load_tokenizer(model_dir, cfg.trust_remote_code)
        self.model = load_model(model_dir, cfg.dtype, cfg.trust_remote_code)

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    def forward(self, batch: TensorBatch, temperature: float, *, entropy: bool = False, hidden: bool = False) -> Forward:
        out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=hidden)
        logits = out.logits[:, :-1].float() / temperature  # (B, L-1, V)
        return Forward(
            token_logprobs(logits, batch.targets),
            entropy_from_logits(logits) if entropy else None,
            out.hidden_states[-1] if hidden else None,
        )

    def weights(self) -> dict[str, torch.Tensor]:
        return detached(self.model)

    def save_pretrained(self, out_dir: str) -> None:
        self.model.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)


class Reference:
    """π_ref: a frozen copy of the policy as RL starts (only when the KL term needs one)."""

    def __init__(self, policy: torch.nn.Module):
        self.model = copy.deepcopy(policy).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def logprobs(self, batch: TensorBatch, temperature: float) -> torch.Tensor:
        """(B, L-1) log-probs of the batch's targets at the sampling temperature."""
        logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        return token_logprobs(logits[:, :-1].float() / temperature, batch.targets)
