"""The Learner's PPO and multi-epoch paths on a real tiny transformers model, called directly (no Ray, no rollouts):
synthetic samples stand in for a rollout batch so each property can be checked on its own in a few seconds."""

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import tis_check
from rlqa.recipe_files import validate_recipe
from rlqa.learner.batch import TrainSample
from rlqa.learner.learner import Learner
from rlqa.models import create_model_dir

pytestmark = pytest.mark.integration  # trains a model (a tiny one)

TINY = {"hidden_size": 32, "layers": 2, "heads": 2, "intermediate_size": 64, "max_positions": 64}


def _learner(tmp_path: Path, algorithm: dict, learner: dict | None = None, rollout: dict | None = None) -> Learner:
    raw = {
        "model": {"tiny": TINY},
        "rollout": rollout or {},
        "learner": {"lr": 1e-3, "micro_batch_size": 3, **(learner or {})},
        "algorithm": algorithm,
    }
    recipe = validate_recipe(raw, source="test", base_dir=tmp_path)
    model_dir = tmp_path / "model"
    if not model_dir.exists():
        create_model_dir(recipe.model, model_dir, seed=0)
    result = Learner(str(model_dir), recipe, total_steps=10)
    result.start_rl()
    return result


def _samples(sampling_logprob: float = -4.0) -> list[TrainSample]:
    """Eight responses of 1-4 tokens after prompts of 2-4 tokens; rewards alternate 0, 1 (so GRPO advantages ±1)."""
    generator = torch.Generator().manual_seed(0)
    samples = []
    for i in range(8):
        prompt = torch.randint(3, 90, (2 + i % 3,), generator=generator).tolist()
        completion = torch.randint(3, 90, (1 + i % 4,), generator=generator).tolist()
        reward = float(i % 2)
        samples.append(TrainSample(prompt, completion, [sampling_logprob] * len(completion), 2 * reward - 1, reward=reward))
    return samples


PPO = {
    "name": "ppo",
    "advantage": "gae",
    "kl_coef": 0.05,
    "kl_in_reward": True,
    "kl_estimator": "k1",
    "old_logprobs": "recompute",
    "critic": {"kind": "head", "lr": 1e-2, "vf_coef": 1.0},
}


def test_ppo_update_logs_finite_losses_and_the_critic_fits_the_returns(tmp_path):
    learner = _learner(tmp_path, PPO, {"epochs": 2, "mini_batches": 2})
    samples = _samples()
    history = [learner.update(samples, 1.0, step) for step in range(4)]
    for metrics in history:
        for name in ("policy/pg_loss", "critic/value_loss", "policy/kl", "policy/loss", "policy/grad_norm"):
            assert math.isfinite(metrics[name]), name
    # The zero-initialised head predicts V = 0 at first and the KL is 0 (the reference is the starting policy), so
    # with γ = 1 the return of token t is λ^(T-1-t) · score. Rewarded responses have 2, 4, 2, 4 tokens:
    #   2 · (1 + 0.95) + 2 · (1 + 0.95 + 0.9025 + 0.857375) = 11.31975 over all 20 response tokens
    assert history[0]["critic/values_mean"] == 0.0
    assert history[0]["critic/returns_mean"] == pytest.approx(11.31975 / 20, abs=1e-6)
    # on a fixed batch the critic fits: its loss falls and its values move towards the returns
    assert history[-1]["critic/value_loss"] < 0.5 * history[0]["critic/value_loss"]
    assert history[-1]["critic/values_mean"] > 0.2
    # the KL to the reference is 0 before the first update (the reference is the starting policy), then positive
    assert history[0]["policy/kl_sampled"] == 0.0 and history[-1]["policy/kl_sampled"] > 0


def test_separate_critic_adaptive_kl_and_exact_resume(tmp_path):
    algorithm = {**PPO, "kl_target": 0.001, "kl_horizon": 16, "critic": {"kind": "separate", "lr": 1e-3}}
    learner = _learner(tmp_path, algorithm, {"epochs": 2, "mini_batches": 2})
    assert learner.critic.backbone is not None and learner.critic_optimizer is not None
    samples = _samples()
    first = learner.update(samples, 1.0, 0)
    second = learner.update(samples, 1.0, 1)
    assert math.isfinite(second["critic/grad_norm"])
    # step 0: KL 0 (< target) → β · (1 - 0.2 · 8 / 16) = 0.05 · 0.9 = 0.045, the coefficient used in step 1
    assert first["policy/kl_coef"] == 0.05 and second["policy/kl_coef"] == pytest.approx(0.045)

    (tmp_path / "ckpt").mkdir()
    learner.save_state(str(tmp_path / "ckpt"))
    resumed = _learner(tmp_path, algorithm, {"epochs": 2, "mini_batches": 2})
    resumed.load_state(str(tmp_path / "ckpt"))
    assert resumed.kl_coef == learner.kl_coef
    # the next update is the same whether or not the learner was saved and restored (critic, its optimizer, β)
    assert resumed.update(samples, 1.0, 2) == learner.update(samples, 1.0, 2)


def test_old_logprobs_are_pi_old_not_the_moving_policy(tmp_path):
    # Recomputed π_old replaces the (deliberately wrong, -4) sampling log-probs: one on-policy update has ratio 1
    # exactly, whereas the sampling log-probs give a visibly different ratio.
    grpo = {"kl_coef": 0.0}
    on_policy = _learner(tmp_path, {**grpo, "old_logprobs": "recompute"}).update(_samples(), 1.0, 0)
    assert on_policy["policy/approx_kl_old"] == 0.0
    assert _learner(tmp_path, grpo).update(_samples(), 1.0, 0)["policy/approx_kl_old"] > 0.1
    # With two epochs the second pass measures its ratio against π_old, from which the first pass has moved.
    two_epochs = _learner(tmp_path, {**grpo, "old_logprobs": "recompute"}, {"epochs": 2, "lr": 1e-2}).update(_samples(), 1.0, 0)
    assert two_epochs["policy/approx_kl_old"] > 1e-5


def _model_logprobs(learner: Learner, sample: TrainSample) -> list[float]:
    """log π(y_j | y_<j) of each completion token, from the model's own unpadded forward pass (no learner code)."""
    ids = torch.tensor([sample.prompt_tokens + sample.completion_tokens])
    with torch.no_grad():
        logprobs = torch.log_softmax(learner.policy.model(input_ids=ids).logits[0].float(), dim=-1)  # (L, V)
    start = len(sample.prompt_tokens) - 1  # the position that predicts the first completion token
    return [float(logprobs[start + j, token]) for j, token in enumerate(sample.completion_tokens)]


def test_prepare_reports_the_gap_to_the_sampler_and_caps_the_tis_weights(tmp_path):
    # The sampler's log-prob of each token is the model's plus d, d cycling over the 20 response tokens through
    # 0, -ln 1.5, -ln 3, ln 2 (5 tokens each). π_learner / π_sampler = e^-d = 1, 1.5, 3, 0.5, so with C = 2:
    #   w = 1, 1.5, 2 (capped), 0.5 → mean (1 + 1.5 + 2 + 0.5) / 4 = 1.25, capped 5 / 20 = 0.25
    #   |gap| = 0, ln 1.5, ln 3, ln 2 → mean (ln 1.5 + ln 3 + ln 2) / 4 = ln 9 / 4 = 0.549306, max ln 3 = 1.098612
    learner = _learner(tmp_path, {"tis_cap": 2.0})  # old_logprobs: sampling, the default
    offsets = [0.0, -math.log(1.5), -math.log(3.0), math.log(2.0)]
    samples, model, expected_weights, index = [], [], [], 0
    for sample in _samples():
        own = _model_logprobs(learner, sample)
        cycle = [offsets[(index + j) % 4] for j in range(len(own))]
        index += len(own)
        samples.append(replace(sample, old_logprobs=[lp + d for lp, d in zip(own, cycle)]))
        model += own
        expected_weights += [{0.0: 1.0, offsets[1]: 1.5, offsets[2]: 2.0, offsets[3]: 0.5}[d] for d in cycle]
    assert index == 20
    prepared, metrics = learner._prepare(samples, 1.0)
    weights = [w for s in prepared for w in s.tis_weights]
    assert weights == pytest.approx(expected_weights, abs=1e-5)
    # π_old is the learner's own log-probs, not the sampler's: the ratio must not hold π_sampler as well as w
    assert [lp for s in prepared for lp in s.old_logprobs] == pytest.approx(model, abs=1e-5)
    assert metrics["rollout/logprob_diff_mean"] == pytest.approx(math.log(9) / 4, abs=1e-5)
    assert metrics["rollout/logprob_diff_max"] == pytest.approx(math.log(3), abs=1e-5)
    assert metrics["policy/tis_weight_mean"] == pytest.approx(1.25, abs=1e-5)
    assert metrics["policy/tis_capped_frac"] == pytest.approx(0.25)


@pytest.mark.parametrize(
    "old_logprobs, async_steps", [("sampling", 0), ("recompute", 0), ("sampling", 1)], ids=["sync", "sync-recompute", "async"]
)
def test_tis_corrects_the_sampler_gap_once(tmp_path, old_logprobs, async_steps):
    # tests/tis_check.py works the numbers: loss -e^0.5 = -1.6487 and gradient -1.6487 · ∇log π (the double
    # correction gave -2.1104 and no gradient). Async: the batch was sampled a version behind, so the learner has
    # trained once since; π_old is the learner's weights now, whatever sampled.
    learner = _learner(tmp_path, {**tis_check.TIS_ALGORITHM, "old_logprobs": old_logprobs}, rollout={"async_steps": async_steps})
    assert learner.recipe.rollout.async_steps == async_steps
    if async_steps:
        learner.update(_samples(), 1.0, 0)
    tis_check.check_tis_update(learner, step=async_steps)


def test_the_gap_to_the_sampler_costs_no_extra_forward_pass(tmp_path, monkeypatch):
    # GRPO with sampling log-probs: the gap (|log π_learner + 4| against the deliberately wrong -4) comes from the
    # update's own forward passes, one per micro-batch (8 samples / 3 = 3), and equals the separate pass's figure.
    learner = _learner(tmp_path, {"kl_coef": 0.0})
    assert learner._gap_in_update()
    _, expected = learner._prepare(_samples(), 1.0)  # the separate gradient-free pass, before any update
    calls = []
    forward = learner.policy.forward
    monkeypatch.setattr(learner.policy, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    metrics = learner.update(_samples(), 1.0, 0)
    assert len(calls) == 3
    assert metrics["rollout/logprob_diff_mean"] == pytest.approx(expected["rollout/logprob_diff_mean"], rel=1e-6)
    assert metrics["rollout/logprob_diff_max"] == pytest.approx(expected["rollout/logprob_diff_max"], rel=1e-6)
    # two mini-batches: the second forward runs after an optimizer step, so the separate pass stays
    assert not _learner(tmp_path, {"kl_coef": 0.0}, {"mini_batches": 2})._gap_in_update()
    assert not _learner(tmp_path, {"kl_coef": 0.0, "tis_cap": 2.0})._gap_in_update()


def test_dropout_in_a_module_or_the_model_config_keeps_the_separate_pass():
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlqa.learner.learner import has_dropout

    assert has_dropout(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1)))
    assert not has_dropout(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.0)))
    shape = {"vocab_size": 16, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16}
    assert has_dropout(LlamaForCausalLM(LlamaConfig(**shape, attention_dropout=0.1)))
    assert not has_dropout(LlamaForCausalLM(LlamaConfig(**shape)))
