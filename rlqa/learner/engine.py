"""How a learner's optimizer step runs: `LocalEngine` on one process, or one rank of a DeepSpeed data-parallel group
(`rlqa.learner.deepspeed_engine`). The Learner holds one and calls it at each point where the two differ; nothing
else about the learner changes with the number of ranks.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import ContextManager, Protocol

import torch

from rlqa.config import LearnerConfig
from rlqa.learner.batch import TensorBatch, TrainSample, collate
from rlqa.learner.plan import pack_by_tokens


def normaliser_count(mask: torch.Tensor, aggregation: str) -> float:
    """What an aggregation averages over: tokens for token-mean, every sequence for seq-mean-token-sum-norm,
    sequences with a token for seq-mean-token-mean."""
    if aggregation == "token-mean":
        return float(mask.sum())
    if aggregation == "seq-mean-token-sum-norm":
        return float(mask.shape[0])
    return float((mask.sum(-1) > 0).sum())


def micro_batch_plan(cfg: LearnerConfig, samples: list[TrainSample]) -> list[list[int]]:
    """One process's micro-batches of `samples` (indices), bucketed by length within learner.micro_batch_size,
    micro_batch_tokens and micro_batch_pad_frac."""
    lengths = [s.length for s in samples]
    return pack_by_tokens(list(range(len(samples))), lengths, cfg.micro_batch_tokens, cfg.micro_batch_size, cfg.micro_batch_pad_frac)


class TrainEngine(Protocol):
    device: torch.device
    leads: bool  # holds the full weights and writes the files (rank 0)

    def join(self, model: torch.nn.Module) -> None:
        """As RL starts, before anything is built from the policy: a group forms and takes rank 0's weights."""

    def wrap(self, model: torch.nn.Module, optimizer, scheduler) -> tuple:
        """The (optimizer, scheduler) the updates step."""

    def micro_batches(self, samples: list[TrainSample], pad_token_id: int, aggregation: str) -> tuple[list[TensorBatch], float, float]:
        """This process's micro-batches of one optimizer step (gradient accumulation), and what the step's loss
        and metrics average over across all processes: the aggregation's count and the completion tokens."""

    def collate(self, samples: list[TrainSample], pad_token_id: int) -> TensorBatch:
        """Tensors for a forward pass, on the device the policy lives on."""

    def backward(self, loss: torch.Tensor, last: bool) -> None: ...

    def step(self, model: torch.nn.Module, optimizer, scheduler) -> float:
        """Clip, step the optimizer and the schedule; the gradient norm before clipping."""

    def discard(self, model: torch.nn.Module, optimizer) -> None:
        """Drop the accumulated gradients of a step that will not be taken (its loss was not finite)."""

    def all_ranks(self, stats: dict[str, float]) -> dict[str, float]:
        """Each process's share of the step's metrics summed: the whole batch's numbers."""

    def gathered(self, model: torch.nn.Module) -> ContextManager:
        """Full parameters inside (ZeRO-3 partitions them); every process must enter."""

    def optimizer_state(self, optimizer, out_dir: Path) -> dict:
        """The optimizer's state as tensors and numbers; a rank > 0 also writes its own partition into out_dir."""

    def load_optimizer_state(self, optimizer, state: dict, ckpt_dir: Path) -> None: ...


class LocalEngine:
    """One learner process: plain torch on the device the policy lives on (the CPU, or the GPU Ray assigned)."""

    leads = True

    def __init__(self, cfg: LearnerConfig):
        self.cfg = cfg
        self.device = torch.device("cpu")

    def join(self, model: torch.nn.Module) -> None:
        self.device = next(model.parameters()).device

    def wrap(self, model: torch.nn.Module, optimizer, scheduler) -> tuple:
        return optimizer, scheduler

    def micro_batches(self, samples: list[TrainSample], pad_token_id: int, aggregation: str) -> tuple[list[TensorBatch], float, float]:
        chunks = micro_batch_plan(self.cfg, samples)
        batches = [self.collate([samples[i] for i in chunk], pad_token_id) for chunk in chunks]
        return batches, sum(normaliser_count(b.mask, aggregation) for b in batches), sum(float(b.mask.sum()) for b in batches)

    def collate(self, samples: list[TrainSample], pad_token_id: int) -> TensorBatch:
        return collate(samples, pad_token_id).to(self.device)

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        loss.backward()

    def step(self, model: torch.nn.Module, optimizer, scheduler) -> float:
        trained = [p for group in optimizer.param_groups for p in group["params"]]
        norm = torch.nn.utils.clip_grad_norm_(trained, self.cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        return float(norm)

    def discard(self, model: torch.nn.Module, optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)

    def all_ranks(self, stats: dict[str, float]) -> dict[str, float]:
        return stats

    def gathered(self, model: torch.nn.Module) -> ContextManager:
        return contextlib.nullcontext()

    def optimizer_state(self, optimizer, out_dir: Path) -> dict:
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer, state: dict, ckpt_dir: Path) -> None:
        optimizer.load_state_dict(state)
