"""Turn rollouts into the padded tensors the learner trains on."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TrainSample:
    """One rollout as the learner needs it."""

    prompt_tokens: list[int]
    completion_tokens: list[int]
    old_logprobs: list[float]  # sampling policy's log-probs of the completion tokens
    advantage: float


@dataclass
class TensorBatch:
    input_ids: torch.Tensor  # (B, L) prompt + completion, right-padded
    attention_mask: torch.Tensor  # (B, L)
    targets: torch.Tensor  # (B, L-1) the token each position predicts
    mask: torch.Tensor  # (B, L-1) 1.0 where the target is a completion token
    old_logprobs: torch.Tensor  # (B, L-1) zeros outside the mask
    advantages: torch.Tensor  # (B,)


def collate(samples: list[TrainSample], pad_token_id: int) -> TensorBatch:
    """Right-pad prompt + completion so positions start at 0 for every sample, as they did in generation."""
    width = max(len(s.prompt_tokens) + len(s.completion_tokens) for s in samples)
    input_ids = torch.full((len(samples), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
    mask = torch.zeros((len(samples), width - 1))
    old_logprobs = torch.zeros((len(samples), width - 1))
    for row, s in enumerate(samples):
        tokens = s.prompt_tokens + s.completion_tokens
        input_ids[row, : len(tokens)] = torch.tensor(tokens)
        attention_mask[row, : len(tokens)] = 1
        # the completion token at index P + j is predicted at position P + j - 1
        start, end = len(s.prompt_tokens) - 1, len(tokens) - 1
        mask[row, start:end] = 1.0
        old_logprobs[row, start:end] = torch.tensor(s.old_logprobs)
    return TensorBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        targets=input_ids[:, 1:],
        mask=mask,
        old_logprobs=old_logprobs,
        advantages=torch.tensor([s.advantage for s in samples], dtype=torch.float32),
    )
