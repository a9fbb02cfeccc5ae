"""The HF backend on a GPU: the seeded sampler draws the same tokens as on CPU (the noise depends only on the
sample's seed, never on the device), and sleeping hands the GPU memory back."""

import pytest
import torch

from rlqa.config import TinyModelConfig
from rlqa.models import build_char_tokenizer, build_tiny_model
from rlqa.rollout.hf_backend import HFBackend
from rlqa.rollout.seeding import sample_seed
from rlqa.rollout.types import GenerationRequest, SamplingParams

pytestmark = pytest.mark.gpu


def backend(device: str) -> HFBackend:
    tokenizer = build_char_tokenizer()
    shape = TinyModelConfig(hidden_size=64, layers=2, heads=4, intermediate_size=128, max_positions=96)
    return HFBackend(build_tiny_model(shape, len(tokenizer), seed=0).to(device), tokenizer, micro_batch_size=8)


def requests() -> list[GenerationRequest]:
    tokenizer = build_char_tokenizer()
    prompts = {"a": "12+30=", "b": "7*8=", "c": "100-1="}
    return [
        GenerationRequest(pid, j, tuple(tokenizer(text, add_special_tokens=False).input_ids), sample_seed(0, 3, pid, j))
        for pid, text in prompts.items()
        for j in range(2)
    ]


def test_gpu_samples_the_same_tokens_as_cpu():
    params = SamplingParams(temperature=1.0, max_new_tokens=24)
    on_cpu = backend("cpu").generate(requests(), params, version=0)
    on_gpu = backend("cuda").generate(requests(), params, version=0)
    assert [r.completion_tokens for r in on_gpu] == [r.completion_tokens for r in on_cpu]
    for a, b in zip(on_gpu, on_cpu):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_sleep_frees_the_gpu_and_wake_restores_the_same_engine():
    engine = backend("cuda")
    params = SamplingParams(temperature=1.0, max_new_tokens=8)
    before = engine.generate(requests(), params, version=0)
    awake = torch.cuda.memory_allocated()
    engine.sleep()
    assert torch.cuda.memory_allocated() < awake
    engine.wake()
    assert [r.completion_tokens for r in engine.generate(requests(), params, version=0)] == [r.completion_tokens for r in before]
