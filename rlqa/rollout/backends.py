"""The generation backends a RolloutWorker can hold, behind one small interface.

- `hf`: Hugging Face `generate` with the seeded Gumbel-max sampler, on CPU or a GPU; bit-reproducible per sample.
- `vllm`: a vLLM engine on a GPU (extra `rlqa[vllm]`); much faster, seeded per sample by vLLM's own sampler.

Each backend changes its weights in place (no new engine per update) and can release its GPU memory while a
colocated learner trains (`sleep`/`wake`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from typing import Protocol

import torch

from rlqa.config import ModelConfig, RolloutConfig
from rlqa.errors import UserError
from rlqa.rollout.types import GenerationRequest, Rollout, SamplingParams
from rlqa.rollout.weight_sync import WeightSpec


class GenerationBackend(Protocol):
    def generate(self, requests: list[GenerationRequest], params: SamplingParams, version: int) -> list[Rollout]: ...

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy (name, tensor) pairs into the engine's parameters in place; tensors may arrive one at a time."""

    def join_channel(self, host: str, port: int, rank: int, world_size: int) -> None:
        """Become rank `rank` of the learner's broadcast channel (rlqa.rollout.weight_sync)."""

    def receive(self, spec: WeightSpec) -> None:
        """Load the tensors the learner broadcasts next, in `spec` order."""

    def load_ipc(self, handles: dict[str, tuple]) -> None:
        """Load from CUDA IPC handles of the colocated learner's tensors."""

    def sleep(self) -> None:
        """Free GPU memory while the learner trains on the same GPU (a no-op on CPU)."""

    def wake(self) -> None: ...


def check_backend(backend: str, gpus_available: float) -> None:
    """A user error (exit 2, one line) when the recipe asks for a backend this installation or cluster cannot run
    (the schema has checked the name)."""
    if backend == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise UserError("rollout.backend: vllm is not installed; pip install 'rlqa[vllm]' or use backend: hf")
        if gpus_available <= 0:
            raise UserError("rollout.backend: vllm needs a GPU and the Ray cluster has none; use backend: hf")


def make_backend(model_dir: str, model: ModelConfig, rollout: RolloutConfig, base_dir: str = ".") -> GenerationBackend:
    """The engine `rollout.backend` names, holding the policy in `model_dir` (the recipe's validated sections);
    with `rollout.tools` or `rollout.environment` (found from `base_dir`, the recipe's directory), one that runs
    multi-turn episodes.
    The schema refuses tools on vllm, so only the hf backend meets them."""
    if rollout.backend == "vllm":
        from rlqa.rollout.vllm_backend import VLLMBackend

        return VLLMBackend(model_dir, model.dtype, rollout.vllm_gpu_memory, model.trust_remote_code)
    from rlqa.models import load_model, load_tokenizer
    from rlqa.rollout.hf_backend import HFBackend

    policy = load_model(model_dir, model.dtype, model.trust_remote_code)
    if torch.cuda.is_available():  # Ray shows a worker its GPU only when it asked for one
        policy = policy.to("cuda")
    tokenizer = load_tokenizer(model_dir, model.trust_remote_code)
    return HFBackend(policy, tokenizer, rollout.micro_batch_size, tool_turns(tokenizer, rollout, base_dir))


def tool_turns(tokenizer, rollout: RolloutConfig, base_dir: str):
    """The multi-turn machinery of `rollout.tools` and `rollout.environment` (None without either: single-turn
    generation)."""
    if not rollout.tools and not rollout.environment:
        return None
    from rlqa.rollout.multi_turn import ToolTurns
    from rlqa.tools.environment import EnvironmentHost, resolve_environment_spec
    from rlqa.tools.registry import tool_schemas
    from rlqa.tools.runner import ToolRunner, python_limits

    runner = ToolRunner(list(rollout.tools), base_dir, rollout.tool_deadline_s, python_limits(rollout))
    environment = None
    if rollout.environment:
        environment = EnvironmentHost(resolve_environment_spec(rollout.environment, base_dir), rollout.tool_deadline_s)
    return ToolTurns(tokenizer, runner, rollout.max_turns, rollout.total_token_limit(), environment, tool_schemas(rollout, base_dir))
