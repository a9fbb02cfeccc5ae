"""The HF backend samples from exactly the distribution whose log-probs it records, whatever the checkpoint's
generation_config.json asks for, and stops at every one of the checkpoint's EOS ids.

The stand-in real model (SmolLM2-135M-Instruct) gets a generation config like Qwen2.5-Instruct's: a repetition
penalty and two EOS ids. A plain forward pass over prompt + completion must then give the recorded log-probs
(logits / T, log_softmax), and each sampled token must be the Gumbel-max choice of those very logits.
"""

import json

import pytest
import torch

from rlqa.config import ModelConfig, RolloutConfig, TinyModelConfig
from rlqa.models import build_char_tokenizer, build_tiny_model, load_model, load_tokenizer
from rlqa.rollout.backends import make_backend
from rlqa.rollout.hf_backend import HFBackend
from rlqa.rollout.seeding import gumbel_noise, sample_seed
from rlqa.rollout.types import GenerationRequest, SamplingParams

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = {"sum": "What is 17 + 25?", "story": "Write one sentence about the sea."}
PARAMS = SamplingParams(temperature=0.8, max_new_tokens=24)
IM_END, ENDOFTEXT = 2, 0  # SmolLM2's <|im_end|> and <|endoftext|>


def standin_copy(src, dst, **generation_config):
    """The stand-in's directory with another generation_config.json (the weights are links, not copies)."""
    dst.mkdir()
    for item in src.iterdir():
        if item.name != "generation_config.json":
            (dst / item.name).symlink_to(item)
    (dst / "generation_config.json").write_text(json.dumps({"pad_token_id": IM_END, **generation_config}))
    return dst


def requests(tokenizer):
    out = []
    for pid, text in PROMPTS.items():
        chat = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        tokens = tuple(tokenizer(chat, add_special_tokens=False).input_ids)
        out += [GenerationRequest(pid, j, tokens, sample_seed(0, 1, pid, j)) for j in range(2)]
    return out


def backend(model_dir):
    return make_backend(str(model_dir), ModelConfig(path=str(model_dir)), RolloutConfig(backend="hf", micro_batch_size=8))


@torch.no_grad()
def plain_logits(model, rollout) -> torch.Tensor:
    """(N, V) logits predicting each completion token, from one forward pass without a cache, padding or processor."""
    ids = torch.tensor([list(rollout.prompt_tokens) + rollout.completion_tokens])
    logits = model(input_ids=ids).logits[0].double()
    start = len(rollout.prompt_tokens) - 1
    return logits[start : start + len(rollout.completion_tokens)]


def max_logprob_diff(model, rollout, temperature) -> float:
    logits = plain_logits(model, rollout)
    tokens = torch.tensor(rollout.completion_tokens)
    recomputed = torch.log_softmax(logits / temperature, -1).gather(-1, tokens[:, None]).squeeze(-1)
    return (recomputed - torch.tensor(rollout.logprobs, dtype=torch.float64)).abs().max().item()


def gumbel_max_agrees(model, rollout, seed, temperature) -> bool:
    """Every sampled token is argmax(logits / T + g) of the plain logits (within float noise)."""
    logits = plain_logits(model, rollout)
    for position, token in enumerate(rollout.completion_tokens):
        scores = logits[position] / temperature + gumbel_noise(torch.tensor([seed]), position, logits.shape[-1])[0]
        if scores[token] < scores.max() - 1e-4:
            return False
    return True


@pytest.fixture(scope="module")
def penalised(smollm2_dir, tmp_path_factory):
    """A backend on the stand-in with repetition_penalty 1.1 and EOS ids [<|im_end|>, <|endoftext|>], and what it
    generated."""
    model_dir = standin_copy(smollm2_dir, tmp_path_factory.mktemp("gen") / "model", repetition_penalty=1.1, eos_token_id=[IM_END, ENDOFTEXT])
    engine = backend(model_dir)
    batch = requests(engine.tokenizer)
    return engine, batch, engine.generate(batch, PARAMS, version=0)


def test_tokens_come_from_the_distribution_whose_logprobs_are_recorded(penalised, smollm2_dir):
    engine, batch, rollouts = penalised
    assert engine.eos_ids == [IM_END, ENDOFTEXT]
    reference = load_model(smollm2_dir)  # the checkpoint as the learner loads it
    for request, rollout in zip(batch, rollouts):
        assert max_logprob_diff(reference, rollout, PARAMS.temperature) < 1e-4
        assert gumbel_max_agrees(reference, rollout, request.seed, PARAMS.temperature)


def test_the_check_sees_a_penalty_that_reaches_the_sampler(penalised, smollm2_dir, monkeypatch):
    """What the backend did before: the checkpoint's generation config ran its repetition penalty ahead of the
    seeded sampler, so the tokens came from another distribution than the recorded log-probs."""
    engine, batch, rollouts = penalised
    clean = engine._generation_config

    def with_the_checkpoints_config(max_new_tokens):
        config = clean(max_new_tokens)
        config.repetition_penalty = 1.1
        return config

    monkeypatch.setattr(engine, "_generation_config", with_the_checkpoints_config)
    old = engine.generate(batch, PARAMS, version=0)
    reference = load_model(smollm2_dir)
    assert [r.completion_tokens for r in old] != [r.completion_tokens for r in rollouts]
    assert not all(gumbel_max_agrees(reference, r, q.seed, PARAMS.temperature) for q, r in zip(batch, old))


def test_generation_stops_at_either_eos_id(penalised, smollm2_dir, tmp_path):
    _, batch, rollouts = penalised
    # a second EOS id the model will surely produce: a token from the middle of the longest completion
    longest = max(rollouts, key=lambda r: len(r.completion_tokens))
    cut = len(longest.completion_tokens) // 2
    other = longest.completion_tokens[cut]
    engine = backend(standin_copy(smollm2_dir, tmp_path / "model", eos_token_id=[IM_END, other]))
    assert engine.eos_ids == [IM_END, other]
    stopped = engine.generate(batch, PARAMS, version=0)
    for before, after in zip(rollouts, stopped):
        tokens = before.completion_tokens
        ends = [i for i, t in enumerate(tokens) if t in (IM_END, other)]
        if ends:  # the same seeded tokens, up to and including the first of either EOS id
            assert after.completion_tokens == tokens[: ends[0] + 1] and after.finish_reason == "stop"
        elif before.finish_reason == "length":
            assert after.completion_tokens == tokens and after.finish_reason == "length"
        else:  # it stopped at <|endoftext|>, no EOS id here
            assert after.completion_tokens[: len(tokens) - 1] == tokens[:-1]
    assert stopped[rollouts.index(longest)].completion_tokens[-1] == other


def test_greedy_decoding_records_the_log_prob_of_the_argmax_token():
    tokenizer = build_char_tokenizer()
    shape = TinyModelConfig(hidden_size=32, layers=2, heads=2, intermediate_size=64, max_positions=64)
    engine = HFBackend(build_tiny_model(shape, len(tokenizer), seed=0), tokenizer, micro_batch_size=4)
    prompts = {"a": "12+30=", "b": "7*8="}
    batch = [GenerationRequest(pid, 0, tuple(tokenizer(t, add_special_tokens=False).input_ids), 0) for pid, t in prompts.items()]
    for rollout in engine.generate(batch, SamplingParams(temperature=0.0, max_new_tokens=6), version=0):
        logits = plain_logits(engine.model, rollout)  # (N, V)
        assert rollout.completion_tokens == logits.argmax(-1).tolist()
        expected = torch.log_softmax(logits, -1).max(-1).values
        assert torch.allclose(torch.tensor(rollout.logprobs, dtype=torch.float64), expected, atol=1e-4)
