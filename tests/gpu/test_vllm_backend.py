"""The vLLM backend on a GPU: seeded samples independent of batching, log-probs that match the learner's
recomputation at the sampling temperature, and weights replaced in place (tensors, CUDA IPC), then sleep/wake."""

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'rlqa[vllm]')")

from rlqa.algorithms.entropy import token_logprobs  # noqa: E402
from rlqa.config import ModelConfig, TinyModelConfig  # noqa: E402
from rlqa.models import build_tiny_model, create_model_dir, load_tokenizer  # noqa: E402
from rlqa.rollout.seeding import sample_seed  # noqa: E402
from rlqa.rollout.types import GenerationRequest, SamplingParams  # noqa: E402
from rlqa.rollout.vllm_backend import VLLMBackend  # noqa: E402
from rlqa.rollout.weight_sync import ipc_handles  # noqa: E402

pytestmark = pytest.mark.gpu

SHAPE = TinyModelConfig(hidden_size=128, layers=2, heads=2, intermediate_size=256, max_positions=128)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model_dir = create_model_dir(ModelConfig(tiny=SHAPE), tmp_path_factory.mktemp("vllm") / "model", seed=0)
    tokenizer = load_tokenizer(model_dir)
    engine = VLLMBackend(str(model_dir), "float32", gpu_memory=0.3)
    prompts = {"a": "12+30=", "b": "7*8=", "c": "100-1="}
    requests = [
        GenerationRequest(pid, j, tuple(tokenizer(t, add_special_tokens=False).input_ids), sample_seed(0, 1, pid, j))
        for pid, t in prompts.items()
        for j in range(3)
    ]
    return engine, requests, tokenizer.vocab_size if hasattr(tokenizer, "vocab_size") else len(tokenizer)


def tokens(rollouts):
    return {(r.prompt_id, r.sample_index): r.completion_tokens for r in rollouts}


def test_samples_depend_on_the_seed_not_the_batch(setup):
    engine, requests, _ = setup
    params = SamplingParams(temperature=1.0, max_new_tokens=16)
    together = engine.generate(requests, params, version=0)
    apart = engine.generate(requests[::-1][:4], params, version=0)
    assert all(tokens(together)[key] == value for key, value in tokens(apart).items())


@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (20, 0.9)])
def test_logprobs_are_those_the_learner_computes(setup, top_k, top_p):
    # vLLM's processed_logprobs: log softmax of logits / T after top-k/top-p, the learner's token_logprobs
    engine, requests, vocab = setup
    temperature = 0.7
    params = SamplingParams(temperature=temperature, max_new_tokens=16, top_k=top_k, top_p=top_p)
    rollouts = engine.generate(requests, params, version=0)
    model = build_tiny_model(SHAPE, vocab, seed=0).cuda().eval()
    for r in rollouts:
        ids = torch.tensor([r.prompt_tokens + r.completion_tokens], device="cuda")
        with torch.no_grad():
            logits = model(ids).logits[:, len(r.prompt_tokens) - 1 : -1].float() / temperature
        expected = token_logprobs(logits, ids[:, len(r.prompt_tokens) :], top_k, top_p)[0]
        if top_k == 0:  # and without a filter, plain log softmax(logits / T)
            assert torch.allclose(expected, torch.log_softmax(logits[0], -1).gather(-1, ids[0, len(r.prompt_tokens) :, None]).squeeze(-1))
        assert r.logprobs == pytest.approx(expected.tolist(), abs=2e-3)


def test_weights_change_in_place_then_survive_sleep(setup):
    engine, requests, vocab = setup
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12)
    before = tokens(engine.generate(requests, greedy, version=0))
    other = build_tiny_model(SHAPE, vocab, seed=1)
    engine.load_weights(other.state_dict().items())
    with_tensors = tokens(engine.generate(requests, greedy, version=1))
    assert with_tensors != before
    engine.load_weights(build_tiny_model(SHAPE, vocab, seed=0).state_dict().items())
    state = {k: v.cuda() for k, v in other.state_dict().items()}
    engine.load_ipc(ipc_handles(state))
    assert tokens(engine.generate(requests, greedy, version=2)) == with_tensors
    engine.sleep()
    engine.wake()
    assert tokens(engine.generate(requests, greedy, version=2)) == with_tensors
