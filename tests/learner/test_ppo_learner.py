"""The Learner's PPO and multi-epoch paths on a real tiny transformers model, called directly (no Ray, no rollouts):
synthetic samples stand in for a rollout batch so each property can be checked on its own in a few seconds."""

import math
from pathlib import Path

import pytest
import torch

from rlqa.config import validate_recipe
from rlqa.learner.batch import TrainSample
from rlqa.learner.learner import Learner
from rlqa.models import create_model_dir

pytestmark = pytest.mark.integration  # trains a model (a tiny one)

TINY = {"hidden_size": 32, "layers": 2, "heads": 2, "intermediate_size": 64, "max_positions": 64}


def _learner(tmp_path: Path, algorithm: dict, learner: dict | None = None) -> Learner:
    raw = {
        "model": {"tiny": TINY},
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


def test_prepare_reports_the_gap_to_the_sampler_and_caps_the_tis_weights(tmp_path):
    # The sampling log-probs are a deliberately wrong -4: the gap is |log π_learner + 4| and w = min(e^(log π + 4), 2)
    learner = _learner(tmp_path, {"old_logprobs": "recompute", "tis_cap": 2.0})
    prepared, metrics = learner._prepare(_samples(), 1.0)
    learned = torch.tensor([lp for s in prepared for lp in s.old_logprobs])  # the learner's π_old, recomputed
    weights = torch.tensor([w for s in prepared for w in s.tis_weights])
    assert torch.allclose(weights, (learned + 4).exp().clamp(max=2.0))
    assert metrics["rollout/logprob_diff_mean"] == pytest.approx(float((learned + 4).abs().mean()), rel=1e-5)
    assert metrics["rollout/logprob_diff_max"] == pytest.approx(float((learned + 4).abs().max()), rel=1e-5)
    assert metrics["policy/tis_weight_mean"] == pytest.approx(float(weights.mean()), rel=1e-5)
    assert metrics["policy/tis_capped_frac"] == pytest.approx(float((weights >= 2.0).float().mean()))


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
