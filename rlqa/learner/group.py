"""`learner.workers` Learner actors as one DeepSpeed data-parallel group that looks like a single Learner.

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

`LearnerGroup` has the call shape of one Learner actor handle (`group.update.remote(...)`): the call runs on every
rank and the returned ObjectRef is rank 0's result, so the driver loop is the same for one learner or many.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from pathlib import Path

import ray
import torch

from rlqa.config import LearnerConfig, Recipe
from rlqa.learner.batch import TensorBatch, TrainSample, collate
from rlqa.learner.learner import Learner, _count, _detached
from rlqa.learner.plan import plan_micro_batches
from rlqa.rollout.weight_sync import rendezvous_address


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


# -- one rank ----------------------------------------------------------------------------------------------------


class DistributedLearner(Learner):
    """One rank of the group: a Learner whose optimizer step runs through a DeepSpeed engine on its share."""

    def __init__(self, model_dir: str, recipe: Recipe, total_steps: int, rank: int, world_size: int):
        super().__init__(model_dir, recipe, total_steps)
        self.rank = rank
        self.world_size = world_size
        self.master: tuple[str, int] | None = None
        self.engine = None

    def rendezvous(self) -> tuple[str, int]:
        """Rank 0: the address every rank connects to."""
        return rendezvous_address()

    def connect(self, address: str, port: int) -> None:
        self.master = (address, port)

    def sft(self, pairs: list[tuple[str, str]], out_dir: str) -> dict[str, float]:
        """Rank 0 runs the warm-up; the others receive its weights when the group forms in `start_rl`."""
        if self.rank == 0:
            return super().sft(pairs, out_dir)
        self.version += 1
        return {}

    def start_rl(self) -> None:
        import deepspeed
        import torch.distributed as dist

        if not dist.is_initialized():
            address, port = self.master
            os.environ.update(
                MASTER_ADDR=address, MASTER_PORT=str(port), RANK=str(self.rank), WORLD_SIZE=str(self.world_size), LOCAL_RANK="0"
            )
            deepspeed.init_distributed(dist_backend=_backend(), auto_mpi_discovery=False, verbose=False)
        for tensor in self.model.state_dict().values():  # rank 0's policy (after its SFT) is everyone's, reference too
            dist.broadcast(tensor, 0)
        super().start_rl()
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.model,
            optimizer=self.optimizer,
            lr_scheduler=self.scheduler,
            config=deepspeed_config(self.cfg, self.world_size, self.recipe.model.dtype),
        )
        self.device = self.engine.device
        if self.reference is not None:
            self.reference.to(self.device)

    # the hooks of Learner._optimizer_step

    def _micro_batches(self, samples: list[TrainSample]) -> tuple[list[TensorBatch], float, float]:
        lengths = [len(s.prompt_tokens) + len(s.completion_tokens) for s in samples]
        plan = plan_micro_batches(lengths, self.world_size, self.cfg.micro_batch_tokens, self.cfg.micro_batch_size)
        pad, aggregation = self.tokenizer.pad_token_id, self.algo.loss_aggregation
        everyone = [collate([samples[i] for i in batch], pad) for share in plan for batch in share if batch]
        total = sum(_count(b.mask, aggregation) for b in everyone)
        tokens = sum(float(b.mask.sum()) for b in everyone)
        own = [self._filler(samples[0]) if not batch else self._collate([samples[i] for i in batch]) for batch in plan[self.rank]]
        return own, total, tokens

    def _collate(self, samples: list[TrainSample]) -> TensorBatch:
        batch = collate(samples, self.tokenizer.pad_token_id)
        return replace(batch, **{k: v.to(self.device) for k, v in vars(batch).items() if isinstance(v, torch.Tensor)})

    def _filler(self, sample: TrainSample) -> TensorBatch:
        """A real forward/backward (so every ZeRO hook fires) with an empty loss mask: zero loss and gradient."""
        batch = self._collate([sample])
        return replace(batch, mask=torch.zeros_like(batch.mask))

    def _backward(self, loss: torch.Tensor, last: bool) -> None:
        # DeepSpeed averages gradients over ranks; the weights already make the ranks' losses sum to the whole
        self.engine.set_gradient_accumulation_boundary(last)
        self.engine.backward(loss * self.world_size, scale_wrt_gas=False)

    def _apply_gradients(self) -> dict[str, float]:
        if self.cfg.zero_stage == 0:  # the boundary backward has averaged the gradients already
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.engine.step()
        else:
            self.engine.step()
            norm = self.engine.get_global_grad_norm()
        return {"policy/grad_norm": float(norm)}

    def _all_ranks(self, stats: dict[str, float]) -> dict[str, float]:
        """Each rank's metrics are its share of the whole; their sum is the single learner's number."""
        import torch.distributed as dist

        keys = sorted(stats)
        values = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(values)
        return dict(zip(keys, values.tolist()))

    # weights and persistence. ZeRO-3 partitions the parameters: gathering them is a collective, so every rank
    # enters `_gathered` and rank 0 writes.

    def _gathered(self):
        if self.cfg.zero_stage < 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None)

    def weights(self) -> dict[str, torch.Tensor]:
        with self._gathered():
            return {k: v.cpu() for k, v in _detached(self.model).items()} if self.rank == 0 else {}

    def save_pretrained(self, out_dir: str) -> None:
        with self._gathered():
            if self.rank == 0:
                super().save_pretrained(out_dir)

    def save_state(self, out_dir: str) -> None:
        """Rank 0 writes what one learner writes, with its optimizer partition in optimizer.pt; rank r > 0 adds
        its own partition as optimizer_rank<r>.pt."""
        with self._gathered():
            if self.rank == 0:
                super().save_state(out_dir)
            else:
                torch.save(self._optimizer_state(), Path(out_dir) / f"optimizer_rank{self.rank}.pt")

    def load_state(self, ckpt_dir: str) -> None:
        self.checkpoint_dir = Path(ckpt_dir)
        super().load_state(ckpt_dir)

    def _optimizer_state(self) -> dict:
        """This rank's share: the wrapped torch optimizer's state and ZeRO's fp32 master partition (DeepSpeed's own
        state_dict holds Python objects, which a weights_only load refuses)."""
        base = getattr(self.optimizer, "optimizer", self.optimizer)
        return {"base": base.state_dict(), "fp32": [t.detach().clone() for t in _fp32_partitions(self.optimizer)]}

    def _load_optimizer_state(self, state: dict) -> None:
        if self.rank > 0:
            state = torch.load(self.checkpoint_dir / f"optimizer_rank{self.rank}.pt", weights_only=True)
        getattr(self.optimizer, "optimizer", self.optimizer).load_state_dict(state["base"])
        for master, saved in zip(_fp32_partitions(self.optimizer), state["fp32"], strict=True):
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


# -- the group, as the driver sees it -------------------------------------------------------------------------------


class _Method:
    def __init__(self, group: LearnerGroup, name: str):
        self.group, self.name = group, name

    def remote(self, *args, **kwargs) -> ray.ObjectRef:
        return self.group.call(self.name, *args, **kwargs)


class LearnerGroup:
    """`learner.workers` DistributedLearner actors behind the call shape of one Learner actor handle."""

    def __init__(self, model_dir: str, recipe: Recipe, total_steps: int, actor_options: list[dict] | None = None):
        world = recipe.learner.workers
        options = actor_options or [{"num_cpus": recipe.learner.cpus, "num_gpus": recipe.learner.gpus}] * world
        self.actors = [
            ray.remote(DistributedLearner).options(**options[rank]).remote(model_dir, recipe, total_steps, rank, world)
            for rank in range(world)
        ]
        address, port = ray.get(self.actors[0].rendezvous.remote())
        ray.get([actor.connect.remote(address, port) for actor in self.actors])
        self.others: list[ray.ObjectRef] = []

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Method(self, name)

    def call(self, name: str, *args, **kwargs) -> ray.ObjectRef:
        """Run `name` on every rank (arguments stored once); rank 0's ObjectRef back. The other ranks' results are
        checked at the next call, so a failure on any rank surfaces."""
        ray.get(self.others)
        args = [ray.put(a) for a in args]
        kwargs = {k: ray.put(v) for k, v in kwargs.items()}
        refs = [getattr(actor, name).remote(*args, **kwargs) for actor in self.actors]
        self.others = refs[1:]
        return refs[0]

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)


def start_learners(model_dir: str, recipe: Recipe, actor_options: list[dict] | None = None):
    """One Learner actor, or a LearnerGroup when `learner.workers` > 1; either answers `.update.remote(...)`."""
    cfg = recipe.learner
    if cfg.workers > 1:
        return LearnerGroup(model_dir, recipe, recipe.trainer.steps, actor_options)
    options = (actor_options or [{"num_cpus": cfg.cpus, "num_gpus": cfg.gpus}])[0]
    return ray.remote(Learner).options(**options).remote(model_dir, recipe, recipe.trainer.steps)
