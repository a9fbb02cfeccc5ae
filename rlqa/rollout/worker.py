"""The RolloutWorker actor: a copy of the policy that generates completions for its share of a step's requests."""

from __future__ import annotations

import torch

from rlqa.models import load_model, load_tokenizer, quiet_hf
from rlqa.rollout.hf_backend import HFBackend
from rlqa.rollout.types import GenerationRequest, Rollout, SamplingParams


class RolloutWorker:
    def __init__(self, model_dir: str, dtype: str, micro_batch_size: int, torch_threads: int, trust_remote_code=False):
        quiet_hf()
        torch.set_num_threads(torch_threads)
        tokenizer = load_tokenizer(model_dir, trust_remote_code)
        model = load_model(model_dir, dtype, trust_remote_code)
        self.backend = HFBackend(model, tokenizer, micro_batch_size)
        self.version = 0

    def load_weights(self, weights: dict[str, torch.Tensor], version: int) -> int:
        self.backend.model.load_state_dict(weights)
        self.version = version
        return version

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[Rollout]:
        return self.backend.generate(requests, params, self.version)

    def ping(self) -> int:
        return self.version
