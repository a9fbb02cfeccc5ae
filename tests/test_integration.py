"""Real few-step training on CPU: SFT warm-up, then GRPO with two rollout workers and a learner on Ray.

Nothing is mocked: a real (tiny) transformers model, real Ray actors, real TRL SFT and real math-verify rewards.
"""

import json

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from rlqa.cli import main

pytestmark = pytest.mark.integration

TINY = {
    "model": {"tiny": {"hidden_size": 32, "layers": 2, "heads": 2, "intermediate_size": 64, "max_positions": 128}},
    "data": {
        "train": {"task": "arithmetic", "size": 64, "levels": [1, 2]},
        "test": {"task": "arithmetic", "split": "test", "size": 6, "levels": [1, 2]},
    },
    "sft": {"max_steps": 3, "batch_size": 8},
    "rollout": {"workers": 2, "prompts_per_step": 4, "rollouts_per_prompt": 4, "max_new_tokens": 24},
    "learner": {"lr": 1e-3},
    "sampler": {"allocation": "difficulty", "n_min": 2, "n_max": 6},
    "trainer": {"steps": 2, "eval_k": 2},
    "checkpoint": {"every": 1},
    "logging": {"progress": False, "samples_per_step": 16},
}

DESIGN_METRICS = [
    "reward/mean", "reward/accuracy", "correct/mean", "policy/entropy", "policy/kl", "policy/clip_frac",
    "policy/grad_norm", "rollout/temperature", "rollout/count", "rollout/tokens", "rollout/length_mean",
    "rollout/logprob_diff_mean", "rollout/logprob_diff_max",
    "rollout/length_correct_mean", "sampler/all_correct_frac", "sampler/all_wrong_frac", "time/generate",
    "time/reward", "time/train", "time/sync", "time/step", "throughput/tokens_per_s", "policy/version",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("integration")
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    assert main(["train", str(recipe), "--run-dir", str(root / "run")]) == 0
    return root / "run"


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_step_logs_the_design_metrics(run):
    metrics = rows(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1]
    for m in metrics:
        missing = [name for name in DESIGN_METRICS if name not in m]
        assert not missing
        assert m["rollout/count"] == 16  # 4 prompts x 4 rollouts: the difficulty sampler keeps the budget
        assert m["time/step"] >= m["time/generate"] + m["time/train"]
        # one update per batch, on-policy: the learner's log-probs reproduce the workers' (ratio exactly 1)
        assert abs(m["policy/approx_kl_old"]) < 1e-6
        assert m["policy/clip_frac"] == 0.0


def test_weights_reach_the_workers_and_rollouts_record_their_policy_version(run):
    metrics = rows(run / "metrics.jsonl")
    # the SFT warm-up is version 1; each RL update adds one and is synced to every worker
    assert [m["policy/version"] for m in metrics] == [2.0, 3.0]
    samples = rows(run / "samples.jsonl")
    assert {s["policy_version"] for s in samples if s["step"] == 0} == {1}
    assert {s["policy_version"] for s in samples if s["step"] == 1} == {2}


def test_run_directory_contract(run):
    assert (run / "recipe.yaml").is_file()
    summary = json.loads((run / "summary.json").read_text())
    for when in ("before", "after"):
        result = summary["eval"][when]
        assert result["num_prompts"] == 6 and result["temperature"] == 1.0
        # 6 prompts, greedy: accuracy is a whole number of sixths
        assert result["accuracy"] * 6 == pytest.approx(round(result["accuracy"] * 6), abs=1e-12)
        # k = n = 2 samples a prompt, c of them right: pass@1 = mean of c/2 = the share of the 12 samples that are
        # right; pass@2 = the share of prompts with c >= 1; so 2·pass@1 - pass@2 = the share with c = 2
        assert result["pass@1"] == pytest.approx(result["sampled_accuracy"], abs=1e-12)
        both_right = 2 * result["pass@1"] - result["pass@2"]
        assert both_right * 6 == pytest.approx(round(both_right * 6), abs=1e-9) and 0 <= both_right <= result["pass@1"]
        assert result["pass@2"] * 6 == pytest.approx(round(result["pass@2"] * 6), abs=1e-12)
        assert result["maj@2"] * 6 == pytest.approx(round(result["maj@2"] * 6), abs=1e-12)
    assert summary["steps"] == 2 and summary["wall_seconds"] > 0
    assert summary["sft"]["sft/steps"] == 3
    assert not (run / "sft_tmp").exists()  # TRL's output directory is not left behind
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["step_00000001", "step_00000002"]
    model = AutoModelForCausalLM.from_pretrained(run / "final")
    assert sum(p.numel() for p in model.parameters()) < 10_000_000
    out = model(torch.tensor([[1, 2, 3]])).logits
    assert out.shape[-1] == model.config.vocab_size


def test_rlqa_eval_on_the_run_directory(run, capsys):
    capsys.readouterr()
    assert main(["eval", str(run), "--k", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    summary = json.loads((run / "summary.json").read_text())
    # the same seeds and the same weights give the run's own final evaluation, every figure of it
    after = summary["eval"]["after"]
    assert {key: printed[key] for key in after} == pytest.approx(after, nan_ok=True)
