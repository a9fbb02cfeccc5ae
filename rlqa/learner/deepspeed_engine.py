"""One rank of `learner.workers` learners that form one DeepSpeed data-parallel group (the Learner's TrainEngine).

Why this shape:

- Every rank receives the whole rollout batch (one object-store copy read by all) and runs the same gradient-free
  preparation and the same mini-batch shuffle as one learner would. Batch-wide numbers (PPO's whitening, the loss
  normalisers) therefore need no communication; each rank then trains on its own share of every mini-batch.
- The shares and their micro-batches come from one deterministic plan over the whole mini-batch
  (`plan_micro_batches`): shares balanced by tokens, micro-batches capped by a token budget (padded length x
  sequences) and by `learner.micro_batch_size`. Every rank runs the same number of micro-batches, because ZeRO
  reduces gradients inside backward; a rank with too few sequences runs filler passes whose loss mask is empty,
  which add exactly zero to the loss, the gradient and the metrics.
- Each micro-batch's loss is weighted by its share of the global normaliser and multiplied by the world size, so
  DeepSpeed's mean over ranks gives the very gradient a single learner computes on the whole mini-batch.
- Gradients are reduced with NCCL on GPUs and gloo on CPU (DeepSpeed's CPU accelerator picks gloo when oneCCL is
  absent); rank 0's actor publishes MASTER_ADDR/MASTER_PORT.
- ZeRO-3 partitions the parameters: gathering them is a collective, so every rank enters `gathered` and rank 0
  writes. Each rank saves its own optimizer partition.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from pathlib import Path
from typing import ContextManager

import torch

from rlqa.config import LearnerConfig
from rlqa.learner.batch import TensorBatch, TrainSample, collate
from rlqa.learner.engine import normaliser_count
from rlqa.learner.plan import plan_micro_batches


def deepspeed_config(cfg: LearnerConfig, world_size: int, dtype: str) -> dict:
    """The DeepSpeed config of the group. The learner owns the micro-batching (a variable number per step), so
    DeepSpeed sees one micro-batch per step and the boundary is set by hand; stage 0 clips by itself (DeepSpeed
    keeps no gradient norm there), stages 1-3 clip inside the ZeRO optimizer and report the norm."""
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "train_batch_size": world_size,
        "gradient_clipping": cfg.grad_clip if cfg.zero_stage > 0 else 0.0,
        "zero_optimization": {"stage": cfg.zero_stage},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if dtype == "bfloat16":
        config["bf16"] = {"enabled": True}
    elif dtype == "float16":
        config["fp16"] = {"enabled": True, "initial_scale_power": 16}
    return config


class DeepSpeedEngine:
    """Rank `rank` of `world_size`. Built on the driver (plain data), used inside the rank's Learner actor."""

    def __init__(self, cfg: LearnerConfig, dtype: str, rank: int, world_size: int):
        self.cfg = cfg
        self.dtype = dtype
        self.rank = rank
        self.world_size = world_size
        self.leads = rank == 0
        self.master: tuple[str, int] | None = None  # rank 0's rendezvous, set by `connect`
        self.engine = None
        self.device = torch.device("cpu")

    def connect(self, address: str, port: int) -> None:
        self.master = (address, port)

    def join(self, model: torch.nn.Module) -> None:
        import deepspeed
        import torch.distributed as dist

        if not dist.is_initialized():
            address, port = self.master
            os.environ.update(
                MASTER_ADDR=address, MASTER_PORT=str(port), RANK=str(self.rank), WORLD_SIZE=str(self.world_size), LOCAL_RANK="0"
            )
            deepspeed.init_distributed(dist_backend=_backend(), auto_mpi_discovery=False, verbose=False)
        for tensor in model.state_dict().values():  # rank 0's policy (after its SFT) is everyone's
            dist.broadcast(tensor, 0)

    def wrap(self, model: torch.nn.Module, optimizer, scheduler) -> tuple:
        import deepspeed

        self.engine, optimizer, _, scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler,
            config=deepspeed_config(self.cfg, self.world_size, self.dtype),
        )
        self.device = self.engine.device
        return optimizer, scheduler

    def micro_batches(self, samples: list[TrainSample], pad_token_id: int, aggregation: str) -> tuple[list[TensorBatch], float, float]:
        lengths = [s.length for s in samples]
        cfg = self.cfg
        plan = plan_micro_batches(lengths, self.world_size, cfg.micro_batch_tokens, cfg.micro_batch_size, cfg.micro_batch_pad_frac)
        everyone = [collate([samples[i] for i in batch], pad_token_id) for share in plan for batch in share if batch]
        total = sum(normaliser_count(b.mask, aggregation) for b in everyone)
        tokens = sum(float(b.mask.sum()) for b in everyone)
        own = [
            self._filler(samples[0], pad_token_id) if not batch else self.collate([samples[i] for i in batch], pad_token_id)
            for batch in plan[self.rank]
        ]
        return own, total, tokens

    def collate(self, samples: list[TrainSample], pad_token_id: int) -> TensorBatch:
        return collate(samples, pad_token_id).to(self.device)

    def _filler(self, sample: TrainSample, pad_token_id: int) -> TensorBatch:
        """A real forward/backward (so every ZeRO hook fires) with an empty loss mask: zero loss and gradient."""
        batch = self.collate([sample], pad_token_id)
        return replace(batch, mask=torch.zeros_like(batch.mask))

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        # DeepSpeed averages gradients over ranks; the weights already make the ranks' losses sum to the whole
        self.engine.set_gradient_accumulation_boundary(last)
        self.engine.backward(loss * self.world_size, scale_wrt_gas=False)

    def step(self, model: torch.nn.Module, optimizer, scheduler) -> float:
        """DeepSpeed steps the scheduler it was given."""
        if self.cfg.zero_stage == 0:  # the boundary backward has averaged the gradients already
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)
            self.engine.step()
        else:
            self.engine.step()
            norm = self.engine.get_global_grad_norm()
        return float(norm)

    def discard(self, model: torch.nn.Module, optimizer) -> None:
        """The engine's own zero_grad clears the gradients (and ZeRO's reduced partitions) without a step."""
        self.engine.zero_grad()

    def all_ranks(self, stats: dict[str, float]) -> dict[str, float]:
        """Each rank's metrics are its share of the whole; their sum is the single learner's number."""
        import torch.distributed as dist

        keys = sorted(stats)
        values = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(values)
        return dict(zip(keys, values.tolist()))

    def gathered(self, model: torch.nn.Module) -> ContextManager:
        if self.cfg.zero_stage < 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)

    def optimizer_state(self, optimizer, out_dir: Path) -> dict:
        """This rank's share: the wrapped torch optimizer's state and ZeRO's fp32 master partition (DeepSpeed's own
        state_dict holds Python objects, which a weights_only load refuses). Rank 0's goes into optimizer.pt;
        rank r > 0 writes optimizer_rank<r>.pt."""
        base = getattr(optimizer, "optimizer", optimizer)
        state = {"base": base.state_dict(), "fp32": [t.detach().clone() for t in _fp32_partitions(optimizer)]}
        if self.rank > 0:
            torch.save(state, Path(out_dir) / f"optimizer_rank{self.rank}.pt")
        return state

    def load_optimizer_state(self, optimizer, state: dict, ckpt_dir: Path) -> None:
        if self.rank > 0:
            state = torch.load(Path(ckpt_dir) / f"optimizer_rank{self.rank}.pt", weights_only=True)
        getattr(optimizer, "optimizer", optimizer).load_state_dict(state["base"])
        for master, saved in zip(_fp32_partitions(optimizer), state["fp32"], strict=True):
            master.data.copy_(saved)


def _fp32_partitions(optimizer) -> list[torch.Tensor]:
    """The fp32 master copy a ZeRO optimizer keeps of this rank's partition (stage 0 keeps none)."""
    for name in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):
        if hasattr(optimizer, name):
            return list(getattr(optimizer, name))
    return []


def _backend() -> str:
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().communication_backend_name()
