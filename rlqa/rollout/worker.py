"""The RolloutWorker actor: a copy of the policy that generates completions for its share of a step's requests."""

from __future__ import annotations

import torch

from rlqa.config import ModelConfig, RolloutConfig
from rlqa.models import quiet_hf
from rlqa.rollout.backends import make_backend
from rlqa.rollout.shared_weights import read_weights
from rlqa.rollout.types import GenerationRequest, Rollout, SamplingParams


class RolloutWorker:
    def __init__(self, model_dir: str, model: ModelConfig, rollout: RolloutConfig, base_dir: str = "."):
        quiet_hf()
        torch.set_num_threads(rollout.torch_threads)
        self.backend = make_backend(model_dir, model, rollout, base_dir)  # base_dir: where rollout.tools' files are

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.backend.load_weights(weights.items())

    def load_shared_weights(self, directory: str) -> None:
        """Weights from the learner's shared-memory file on this node (rlqa.rollout.shared_weights), copied in place."""
        self.backend.load_weights(read_weights(directory))

    def join_channel(self, host: str, port: int, rank: int, world_size: int) -> None:
        self.backend.join_channel(host, port, rank, world_size)

    def receive_weights(self, spec) -> None:
        """Weights over the broadcast channel (rlqa.rollout.sync), straight into the engine."""
        self.backend.receive(spec)

    def load_ipc_weights(self, handles: dict) -> None:
        """Weights from CUDA IPC handles of the colocated learner's tensors."""
        self.backend.load_ipc(handles)

    def generate(self, requests: list[GenerationRequest], params: SamplingParams, version: int) -> list[Rollout]:
        """Rollouts tagged with `version`, the driver's count of the weights this worker was last sent."""
        return self.backend.generate(requests, params, version)

    def sleep(self) -> None:
        self.backend.sleep()

    def wake(self) -> None:
        self.backend.wake()
