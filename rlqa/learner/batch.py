"""Turn rollouts into the padded tensors the learner trains on, and per-position results back into per-sample lists.

Per-token fields (old log-probs, and what the learner adds before a PPO update: reference log-probs, values,
GAE advantages, returns) are kept per sample as one value per completion token, so a sample can be re-collated
into any mini- or micro-batch.

The loss mask of a row is 1 where the position predicts a completion token the model sampled. A sample's
`loss_mask` (multi-turn rollouts: 0 on the tokens a tool or environment inserted) switches positions of the
completion span off; every loss, aggregation, KL, entropy and log-prob-gap metric of the learner reads this one
mask, so all of them count the model's tokens only. Per-token fields still cover the whole completion span.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from rlqa.rollout.types import check_loss_mask


@dataclass(frozen=True)
class TrainSample:
    """One rollout as the learner needs it. `loss_mask` (the rollout's): one 0/1 per completion token, 0 for a
    token the model did not sample (tool or environment output), which then carries no loss, gradient or metric;
    None means all ones."""

    prompt_tokens: list[int]
    completion_tokens: list[int]
    old_logprobs: list[float]  # sampling policy's log-probs of the completion tokens
    advantage: float  # outcome advantage (driver); unused with GAE
    reward: float = 0.0  # scalar reward of the response: what PPO's critic learns from
    # filled by the learner before an update, one value per completion token (None: not used)
    ref_logprobs: list[float] | None = None
    old_values: list[float] | None = None
    token_advantages: list[float] | None = None
    returns: list[float] | None = None
    tis_weights: list[float] | None = None  # algorithm.tis_cap only
    loss_mask: list[int] | None = None  # per completion token: 1 the model's, 0 a tool's / environment's; None: all 1

    def __post_init__(self):
        check_loss_mask(self.loss_mask, len(self.completion_tokens))

    @property
    def length(self) -> int:
        """Prompt + completion tokens: the row's width before padding."""
        return len(self.prompt_tokens) + len(self.completion_tokens)


PER_TOKEN_FIELDS = ("old_logprobs", "ref_logprobs", "old_values", "token_advantages", "returns", "tis_weights")


@dataclass
class TensorBatch:
    input_ids: torch.Tensor  # (B, L) prompt + completion, right-padded
    attention_mask: torch.Tensor  # (B, L)
    targets: torch.Tensor  # (B, L-1) the token each position predicts
    mask: torch.Tensor  # (B, L-1) 1.0 where the target is a completion token the model sampled (loss_mask)
    old_logprobs: torch.Tensor  # (B, L-1) zeros outside the mask
    advantages: torch.Tensor  # (B,)
    rewards: torch.Tensor  # (B,)
    # (B, L-1), zeros outside the mask, when every sample has the field; else None
    ref_logprobs: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    token_advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    tis_weights: torch.Tensor | None = None

    def to(self, device: torch.device) -> TensorBatch:
        """The same batch on `device` (itself when already there)."""
        return replace(self, **{k: v.to(device) for k, v in vars(self).items() if isinstance(v, torch.Tensor)})


def collate(samples: list[TrainSample], pad_token_id: int) -> TensorBatch:
    """Right-pad prompt + completion so positions start at 0 for every sample, as they did in generation."""
    width = max(len(s.prompt_tokens) + len(s.completion_tokens) for s in samples)
    input_ids = torch.full((len(samples), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
    mask = torch.zeros((len(samples), width - 1))
    per_token = {name: torch.zeros((len(samples), width - 1)) for name in PER_TOKEN_FIELDS if _everyone_has(samples, name)}
    for row, s in enumerate(samples):
        tokens = s.prompt_tokens + s.completion_tokens
        input_ids[row, : len(tokens)] = torch.tensor(tokens)
        attention_mask[row, : len(tokens)] = 1
        start, end = completion_span(s)
        mask[row, start:end] = 1.0 if s.loss_mask is None else torch.tensor(s.loss_mask, dtype=mask.dtype)
        for name, tensor in per_token.items():
            tensor[row, start:end] = torch.tensor(getattr(s, name))
    return TensorBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        targets=input_ids[:, 1:],
        mask=mask,
        advantages=torch.tensor([s.advantage for s in samples], dtype=torch.float32),
        rewards=torch.tensor([s.reward for s in samples], dtype=torch.float32),
        **per_token,
    )


def padding(batch: TensorBatch) -> tuple[int, int]:
    """(padded, processed) tokens of a collated batch: the pad positions, and all B x L positions a forward pass runs."""
    processed = batch.input_ids.numel()
    return processed - int(batch.attention_mask.sum()), processed


def _everyone_has(samples: list[TrainSample], name: str) -> bool:
    return all(getattr(s, name) is not None for s in samples)


def completion_span(sample: TrainSample) -> tuple[int, int]:
    """Positions [start, end) of a collated row that predict the completion tokens: token P + j is predicted at
    position P + j - 1 (P = prompt length)."""
    start = len(sample.prompt_tokens) - 1
    return start, start + len(sample.completion_tokens)


def per_sample(values: torch.Tensor, samples: list[TrainSample]) -> list[list[float]]:
    """The completion positions of each row of a collated (B, L-1) tensor, as one list per sample (collate's inverse)."""
    rows = values.detach().float().cpu()
    return [rows[row, slice(*completion_span(s))].tolist() for row, s in enumerate(samples)]
