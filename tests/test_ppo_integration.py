"""A short real PPO run on CPU: rollout workers and a learner with a value head on Ray, KL to the reference in the
token-level reward, GAE, 2 epochs x 2 mini-batches. Nothing is mocked; the model is tiny and there is no warm-up."""

import json
import math

import pytest
import yaml

from rlqa.cli import main

pytestmark = pytest.mark.integration

RECIPE = {
    "model": {"tiny": {"hidden_size": 32, "layers": 2, "heads": 2, "intermediate_size": 64, "max_positions": 128}},
    "data": {
        "train": {"task": "arithmetic", "size": 32, "levels": [1]},
        "test": {"task": "arithmetic", "split": "test", "size": 4, "levels": [1]},
    },
    "rollout": {"workers": 1, "prompts_per_step": 4, "rollouts_per_prompt": 2, "max_new_tokens": 16},
    "learner": {"lr": 1e-3, "epochs": 2, "mini_batches": 2},
    "algorithm": {
        "name": "ppo",
        "advantage": "gae",
        "kl_coef": 0.05,
        "kl_in_reward": True,
        "kl_estimator": "k1",
        "critic": {"kind": "head", "lr": 1e-2},
    },
    "sampler": {"allocation": "uniform"},
    "temperature": {"mode": "fixed"},
    "trainer": {"steps": 3, "eval_k": 1},
    "logging": {"progress": False},
}


def test_short_ppo_run_logs_finite_policy_value_and_kl_losses_every_step(tmp_path):
    recipe = tmp_path / "ppo.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1, 2]
    for row in rows:
        for name in ("policy/pg_loss", "critic/value_loss", "policy/kl", "policy/loss", "critic/returns_mean"):
            assert math.isfinite(row[name]), (row["step"], name)
        assert row["policy/kl_coef"] == 0.05
    # the reference is the starting policy: KL 0 at the first step (up to the workers' and the learner's float
    # rounding), then the policy has moved away from it
    assert abs(rows[0]["policy/kl_sampled"]) < 1e-6 and rows[2]["policy/kl"] > 1e-6
    assert rows[0]["critic/values_mean"] == 0.0  # the zero-initialised value head
    # the critic is part of the checkpoint, next to the policy and the reference
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000003"
    assert {"policy.safetensors", "reference.safetensors", "critic.safetensors"} <= {p.name for p in checkpoint.iterdir()}
