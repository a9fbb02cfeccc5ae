"""The DeepSpeed learner group on CPU (gloo): two ranks under ZeRO-2 reproduce one learner's first update, and a
short run with learner.workers=2 completes through the CLI.

Real Ray actors, a real (tiny) transformers model and real DeepSpeed engines; nothing is mocked.
"""

import json
import random

import pytest
import ray
import yaml

from rlqa.cli import main
from rlqa.recipe_files import validate_recipe
from rlqa.learner.batch import TrainSample
from rlqa.learner.group import start_learners
from rlqa.learner.learner import Learner
from rlqa.learner.plan import plan_micro_batches
from rlqa.models import create_model_dir

pytestmark = pytest.mark.integration

TINY_MODEL = {"tiny": {"hidden_size": 32, "layers": 2, "heads": 2, "intermediate_size": 64, "max_positions": 64}}


def recipe(learner: dict, algorithm: dict | None = None):
    learner = {"lr": 1e-3, "grad_clip": 0.1, "torch_threads": 1, **learner}
    raw = {"model": TINY_MODEL, "trainer": {"steps": 4}, "learner": learner}
    return validate_recipe({**raw, "algorithm": algorithm or {}}, source="test", base_dir=".")


def samples(count: int, seed: int = 0) -> list[TrainSample]:
    """Rollouts of varied lengths with made-up sampling log-probs and advantages of both signs."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        prompt = [rng.randrange(3, 90) for _ in range(rng.randrange(4, 10))]
        completion = [rng.randrange(3, 90) for _ in range(rng.randrange(2, 14))]
        out.append(TrainSample(prompt, completion, [rng.uniform(-6.0, -3.0) for _ in completion], rng.uniform(-1.5, 1.5)))
    return out


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=3, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def no_ray():
    """The CLI starts its own Ray: end the module's one first."""
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("group") / "model"
    return str(create_model_dir(recipe({}).model, path, seed=0))


def first_update(model_dir: str, learner: dict, algorithm: dict, batch: list[TrainSample]) -> tuple[dict, dict]:
    """Metrics and weights after one update from the same initial policy: one learner in this process, or a
    DeepSpeed group of Ray actors."""
    config = recipe(learner, algorithm)
    if config.learner.workers == 1:
        one = Learner(model_dir, config, config.trainer.steps)
        one.start_rl()
        return one.update(batch, 0.9, 0), one.weights()
    group = start_learners(model_dir, config)
    ray.get(group.start_rl())
    metrics = ray.get(group.update(batch, 0.9, 0))
    weights = ray.get(group.weights())
    group.shutdown()
    return metrics, weights


@pytest.mark.parametrize(
    "aggregation, count, split",
    [
        # a 40-token budget splits each rank's share into several micro-batches (gradient accumulation)
        ("token-mean", 7, {"micro_batch_tokens": 40}),
        # one sequence per micro-batch and 3 sequences on 2 ranks: rank 0 runs a filler pass to keep ZeRO in step
        ("seq-mean-token-sum-norm", 3, {"micro_batch_size": 1}),
    ],
)
def test_two_ranks_under_zero2_match_one_learner(local_ray, model_dir, aggregation, count, split):
    batch = samples(count)
    algorithm = {"loss_aggregation": aggregation}
    one, one_weights = first_update(model_dir, {"workers": 1}, algorithm, batch)
    two, two_weights = first_update(model_dir, {"workers": 2, "zero_stage": 2, **split}, algorithm, batch)
    for key in ("policy/grad_norm", "policy/loss", "policy/pg_loss", "policy/entropy", "policy/kl", "policy/clip_frac"):
        assert two[key] == pytest.approx(one[key], rel=1e-3, abs=1e-6), key
    assert one["policy/grad_norm"] > 0.1  # clipping is active (grad_clip 0.1): the clipped steps must match as well
    for name, tensor in one_weights.items():
        assert (two_weights[name] - tensor).abs().max() < 1e-5, name


def test_the_filler_case_really_has_a_filler():
    lengths = [len(s.prompt_tokens) + len(s.completion_tokens) for s in samples(3)]
    plan = plan_micro_batches(lengths, 2, max_tokens=None, max_sequences=1)
    assert [len(share) for share in plan] == [2, 2] and [] in plan[0] + plan[1]


def test_short_run_with_two_learners(no_ray, tmp_path):
    """SFT on rank 0, broadcast when the group forms, two RL steps under ZeRO-2 with each learner colocated with a
    rollout worker in one placement group, weights to the workers over the gloo broadcast channel, a checkpoint and
    the final model."""
    raw = {
        "model": TINY_MODEL,
        "data": {
            "train": {"task": "arithmetic", "size": 32, "levels": [1]},
            "test": {"task": "arithmetic", "split": "test", "size": 4, "levels": [1]},
        },
        "sft": {"max_steps": 2, "batch_size": 8},
        "rollout": {
            "workers": 2, "prompts_per_step": 2, "rollouts_per_prompt": 4, "max_new_tokens": 12,
            "weight_sync": "broadcast", "max_retries": 0,
        },
        "ray": {"placement": "colocate"},
        "learner": {"workers": 2, "zero_stage": 2, "lr": 1e-3, "micro_batch_tokens": 64, "torch_threads": 1},
        "sampler": {"allocation": "uniform"},
        "trainer": {"steps": 2, "eval_before": False, "eval_after": False},
        "logging": {"progress": False},
    }
    path = tmp_path / "two_learners.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run")]) == 0
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1]
    assert [m["policy/version"] for m in metrics] == [2.0, 3.0]  # SFT is version 1, each update adds one
    # every step's rollouts came from the weights the group trains from, broadcast to both workers: on-policy,
    # the importance ratio is exactly 1 (stale weights on either worker would move it)
    for m in metrics:
        assert abs(m["policy/approx_kl_old"]) < 1e-6 and m["rollout/staleness"] == 0.0
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000002"
    assert (checkpoint / "policy.safetensors").is_file() and (checkpoint / "optimizer_rank1.pt").is_file()
    assert (tmp_path / "run" / "final" / "config.json").is_file()


def test_async_run_is_one_step_off_policy(no_ray, tmp_path):
    """Step t+1 generates while step t trains: its rollouts come from the policy one update behind."""
    raw = {
        "model": TINY_MODEL,
        "data": {
            "train": {"task": "arithmetic", "size": 16, "levels": [1]},
            "test": {"task": "arithmetic", "split": "test", "size": 2, "levels": [1]},
        },
        "rollout": {"workers": 1, "prompts_per_step": 2, "rollouts_per_prompt": 4, "max_new_tokens": 12, "async_steps": 1},
        # the untrained model is never right: a length penalty gives the group nonzero advantages, so updates move it
        "rewards": {"terms": [{"fn": "accuracy"}, {"fn": "length_penalty"}]},
        "learner": {"lr": 1e-2, "torch_threads": 1},
        "sampler": {"allocation": "uniform"},
        # a target far below the untrained model's entropy: the controller lowers T after every update
        "temperature": {"mode": "entropy", "target": 0.1},
        "trainer": {"steps": 3, "eval_before": False, "eval_after": False},
        "logging": {"progress": False, "samples_per_step": 8},
    }
    path = tmp_path / "async.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run")]) == 0
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # step 0 has nothing to overlap with; steps 1 and 2 were generated during the previous update
    assert [m["rollout/staleness"] for m in metrics] == [0.0, 1.0, 1.0]
    # step 1 was submitted before update 0 ended, so it samples at T0 too; step 2 at what update 0 left (one step late)
    temperatures = [m["rollout/temperature"] for m in metrics]
    assert temperatures[:2] == [1.0, 1.0]
    assert temperatures[2] == metrics[0]["temperature/next"] < 1.0
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert [sorted({s["policy_version"] for s in samples if s["step"] == t}) for t in range(3)] == [[0], [0], [1]]
    # on-policy at step 0 (ratio 1); afterwards the learner is one update ahead of the sampler, and the loss
    # corrects with the sampling log-probs: the ratio moves off 1
    assert abs(metrics[0]["policy/approx_kl_old"]) < 1e-6
    assert all(abs(m["policy/approx_kl_old"]) > 1e-6 for m in metrics[1:])


def test_a_rollout_budget_ends_the_run_like_its_last_step(no_ray, tmp_path, capsys):
    raw = {
        "model": TINY_MODEL,
        "data": {
            "train": {"task": "arithmetic", "size": 16, "levels": [1]},
            "test": {"task": "arithmetic", "split": "test", "size": 2, "levels": [1]},
        },
        "rollout": {"workers": 1, "prompts_per_step": 2, "rollouts_per_prompt": 4, "max_new_tokens": 8},
        "learner": {"torch_threads": 1},
        "sampler": {"allocation": "uniform"},
        # 8 rollouts a step: 8, 16, 24 ≥ 20 after step 3 of 6
        "trainer": {"steps": 6, "rollout_budget": 20, "eval_before": False, "eval_k": 2},
        "logging": {"progress": False},
    }
    path = tmp_path / "budget.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["yield"]["rollouts"] == 24
    assert "after" in summary["eval"] and (tmp_path / "run" / "final" / "config.json").is_file()  # a complete run
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["yield/total_rollouts"] for m in metrics] == [8.0, 16.0, 24.0]
    assert "yield: " in capsys.readouterr().out  # the run's last line
