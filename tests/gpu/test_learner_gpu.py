"""A single learner on its GPU (`learner.gpus > 0`): the policy, reference and batches live on the device, and a GRPO
step with the HF rollout backend trains there, in process and as the Ray actor `rlqa train` starts."""

import json
import math

import pytest
import ray
import torch
import yaml

import in_process
import tis_check
from rlqa import trainer
from rlqa.cli import main
from rlqa.recipe_files import validate_recipe
from rlqa.learner.learner import Learner
from rlqa.models import create_model_dir
from rewards.pipeline import RewardPipeline, RewardTermSpec

pytestmark = pytest.mark.gpu

RAW = {
    "model": {"tiny": {"hidden_size": 32, "layers": 2, "heads": 2, "intermediate_size": 64, "max_positions": 64}},
    "data": {
        "train": {"task": "arithmetic", "size": 8, "levels": [1]},
        "test": {"task": "arithmetic", "split": "test", "size": 2, "levels": [1]},
    },
    "rollout": {"backend": "hf", "workers": 1, "prompts_per_step": 2, "rollouts_per_prompt": 2, "max_new_tokens": 8},
    "learner": {"gpus": 1},
    "algorithm": {"kl_coef": 0.02, "tis_cap": 2.0},  # a reference to place too; TIS reads the sampler's log-probs
    "trainer": {"steps": 1},
    "logging": {"progress": False},
}


def test_one_grpo_step_with_the_learner_on_the_gpu(tmp_path):
    recipe = validate_recipe(RAW, source="test", base_dir=tmp_path)
    with RewardPipeline([RewardTermSpec("accuracy", "accuracy")]) as rewards:
        c = in_process.components(recipe, tmp_path, rewards)
        learner = c.schedule.learner
        assert next(learner.policy.model.parameters()).device.type == "cuda"
        assert next(learner.reference.model.parameters()).device.type == "cuda"
        metrics, _ = trainer.rl_step(c, 0)
    assert math.isfinite(metrics["policy/loss"]) and metrics["policy/grad_norm"] > 0
    # the same fp32 model samples (HF backend on this GPU) and trains: the gap is rounding, TIS weights ≈ 1
    assert metrics["rollout/logprob_diff_max"] < 1e-2
    assert metrics["policy/tis_weight_mean"] == pytest.approx(1.0, abs=1e-2)
    assert all(v.device.type == "cpu" for v in learner.weights().values())  # what the workers load


def test_tis_corrects_an_off_policy_token_once_on_the_gpu(tmp_path):
    # Off-policy by 0.5 nats, TIS as verl and TRL apply it: loss -e^0.5 = -1.6487 and gradient -1.6487 · ∇log π,
    # worked in tests/tis_check.py; tests/learner/test_ppo_learner.py runs the same check on the CPU
    raw = {"model": RAW["model"], "learner": {"gpus": 1}, "algorithm": tis_check.TIS_ALGORITHM}
    recipe = validate_recipe(raw, source="test", base_dir=tmp_path)
    create_model_dir(recipe.model, tmp_path / "model", seed=0)
    learner = Learner(str(tmp_path / "model"), recipe, total_steps=1)
    learner.start_rl()
    assert next(learner.policy.model.parameters()).device.type == "cuda"
    tis_check.check_tis_update(learner, rel=1e-3)  # fp32 on the GPU: other kernels, the same arithmetic


def test_rlqa_train_runs_a_step_with_its_learner_actor_on_the_gpu(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(RAW))
    try:
        assert main(["train", str(path), "--run-dir", str(tmp_path / "run")]) == 0
    finally:
        ray.shutdown()
    (row,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(row["policy/loss"]) and row["rollout/logprob_diff_max"] < 1e-2
