"""The policy RL trains, and the frozen reference the KL term compares it with.

Both compute log-probs at the sampling temperature (logits / T). The policy's are those of the distribution the
tokens were drawn from: with the rollout's top-k / top-p, the filtered one, renormalised, as the sampler records
them (rlqa.algorithms.entropy). The reference's stay those of its whole softmax(logits / T): the KL term measures
the sampling policy against the reference model as it is, and a filtered reference would give -inf to any token
outside its own nucleus. With
`model.lora` the policy is the base model plus adapters (rlqa.learner.lora), and the reference is that same model
with its adapters switched off.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file

from rlqa.algorithms.entropy import entropy_from_logits, token_logprobs
from rlqa.config import ModelConfig
from rlqa.learner import lora
from rlqa.learner.batch import TensorBatch
from rlqa.models import load_model, load_tokenizer

POLICY_WEIGHTS = "policy.safetensors"  # in a checkpoint, full fine-tuning: the whole state dict


class Forward(NamedTuple):
    logprobs: torch.Tensor  # (B, L-1) log-probs of the batch's targets at the sampling temperature
    entropy: torch.Tensor | None  # (B, L-1) entropy at that temperature, when asked for
    hidden: torch.Tensor | None  # (B, L, H) last hidden state, when asked for (a value head reads it)


def detached(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the state dict; tied weights (embeddings = LM head) become separate tensors, as safetensors needs."""
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


class Policy:
    """The trained model and its tokenizer, loaded from a Hugging Face directory; with `cfg.lora`, adapters on it."""

    def __init__(self, model_dir: str, cfg: ModelConfig, top_k: int = 0, top_p: float = 1.0):
        self.top_k, self.top_p = top_k, top_p  # the rollout's filter, which the recorded log-probs went through
        self.tokenizer = load_tokenizer(model_dir, cfg.trust_remote_code)
        self.model = load_model(model_dir, cfg.dtype, cfg.trust_remote_code)
        self.lora = cfg.lora is not None
        if self.lora:
            self.model = lora.with_adapters(self.model, cfg.lora, model_dir)

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    def forward(self, batch: TensorBatch, temperature: float, *, entropy: bool = False, hidden: bool = False) -> Forward:
        out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=hidden)
        logits = out.logits[:, :-1].float() / temperature  # (B, L-1, V)
        return Forward(
            token_logprobs(logits, batch.targets, self.top_k, self.top_p),
            entropy_from_logits(logits) if entropy else None,
            out.hidden_states[-1] if hidden else None,
        )

    def trainable(self) -> list[torch.nn.Parameter]:
        """What the optimizer steps: every parameter, or with LoRA the adapters only."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def weights(self) -> dict[str, torch.Tensor]:
        """A state dict of the base architecture (with LoRA: the adapters merged), as rollout workers load it.
        New tensors on the model's device, apart from the trained ones."""
        return lora.merged_weights(self.model) if self.lora else detached(self.model)

    def live_weights(self) -> dict[str, torch.Tensor]:
        """The same state dict for a direct transfer that reads it at once: without LoRA the parameters themselves,
        no copy."""
        return lora.merged_weights(self.model) if self.lora else self.model.state_dict()

    def save(self, out_dir: Path) -> None:
        """What a checkpoint holds of the policy: the adapters with LoRA, else the whole state dict."""
        if self.lora:
            lora.save_adapters(self.model, out_dir / lora.ADAPTER_DIR)
        else:
            save_file(self.weights(), out_dir / POLICY_WEIGHTS)

    def load(self, ckpt_dir: Path) -> None:
        if self.lora:
            lora.load_adapters(self.model, ckpt_dir / lora.ADAPTER_DIR)
        else:
            self.model.load_state_dict(load_file(ckpt_dir / POLICY_WEIGHTS))

    def save_pretrained(self, out_dir: str) -> None:
        """A Hugging Face model directory of the base architecture; with LoRA, the adapters merged into it."""
        if self.lora:
            self.model.get_base_model().save_pretrained(out_dir, state_dict=self.weights())
        else:
            self.model.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)


class Reference:
    """π_ref: the policy as RL starts, frozen (only when the KL term needs one). A copy of the model; with LoRA the
    policy's own model with the adapters switched off, which is the base exactly and costs no memory."""

    def __init__(self, policy: Policy):
        self.copied = not policy.lora  # whether the reference has weights of its own (a checkpoint then holds them)
        if policy.lora:
            self.model, self._frozen = policy.model, policy.model.disable_adapter
            return
        self.model, self._frozen = copy.deepcopy(policy.model).eval(), contextlib.nullcontext
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def logprobs(self, batch: TensorBatch, temperature: float) -> torch.Tensor:
        """(B, L-1) log-probs of the batch's targets at the sampling temperature."""
        with self._frozen():
            logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        return token_logprobs(logits[:, :-1].float() / temperature, batch.targets)
