"""Weights through the run's shared-memory file: what the learner writes is what every worker loads, bit for bit,
through real Ray actors, a replaced worker included, as through the object store; and a whole run with it trains on
the weights its workers sampled with."""

import json
import random

import pytest
import ray
import torch
import yaml

from rlqa import trainer
from rlqa.cli import main
from rlqa.cluster import shared_dir
from rlqa.recipe_files import validate_recipe
from rlqa.learner.batch import TrainSample
from rlqa.learner.group import start_learners
from rlqa.models import create_model_dir
from rlqa.rollout.group import RolloutGroup
from rlqa.rollout.shared_weights import ALIGN, read_weights, write_weights
from rlqa.rollout.sync import ObjectStoreSync, SharedMemorySync

TINY_MODEL = {"tiny": {"hidden_size": 32, "layers": 2, "heads": 2, "intermediate_size": 64, "max_positions": 64}}


def test_what_is_written_is_read_back_bit_for_bit_and_tied_tensors_are_stored_once(tmp_path):
    embed = torch.randn(5, 3)
    state = {
        "embed.weight": embed,
        "head.weight": embed,  # tied: the same tensor under two names
        "norm.weight": torch.randn(3, dtype=torch.bfloat16),
        "steps": torch.tensor(7, dtype=torch.int64),
        "odd": torch.randn(2, 2, dtype=torch.float16),
    }
    # 60 bytes at 0, then 6 at 64, 8 at 128, 8 at 192: offsets aligned to 64, the tied tensor not repeated
    assert write_weights(state, tmp_path) == 192 + 8
    index = json.loads((tmp_path / "weights.json").read_text())
    assert [row[3] for row in index["tensors"]] == [0, 0, ALIGN, 2 * ALIGN, 3 * ALIGN]
    read = dict(read_weights(tmp_path))
    assert list(read) == list(state)
    for name, tensor in state.items():
        assert read[name].dtype == tensor.dtype and read[name].shape == tensor.shape
        assert torch.equal(read[name].view(torch.uint8), tensor.view(torch.uint8)) if tensor.dim() else read[name] == tensor

    # the next sync rewrites the same file in place
    inode = (tmp_path / "weights.bin").stat().st_ino
    state = {name: tensor + 1 for name, tensor in state.items()}
    write_weights(state, tmp_path)
    assert (tmp_path / "weights.bin").stat().st_ino == inode
    assert all(torch.equal(tensor, state[name]) for name, tensor in read_weights(tmp_path))


def _recipe(rollout: dict | None = None):
    raw = {"model": TINY_MODEL, "trainer": {"steps": 4}, "learner": {"lr": 1e-2, "torch_threads": 1},
           "rollout": {"workers": 2, "torch_threads": 1, **(rollout or {})}}
    return validate_recipe(raw, source="test", base_dir=".")


def _samples() -> list[TrainSample]:
    rng = random.Random(0)
    out = []
    for _ in range(6):
        prompt = [rng.randrange(3, 90) for _ in range(rng.randrange(3, 8))]
        completion = [rng.randrange(3, 90) for _ in range(rng.randrange(2, 8))]
        out.append(TrainSample(prompt, completion, [-4.0] * len(completion), rng.uniform(-1.5, 1.5)))
    return out


def _worker_weights(worker) -> dict[str, torch.Tensor]:
    return ray.get(worker.__ray_call__.remote(lambda self: {k: v.clone() for k, v in self.backend.model.state_dict().items()}))


@pytest.mark.integration
def test_every_worker_holds_the_learners_weights_bit_for_bit(tmp_path):
    ray.init(address="local", num_cpus=3, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        recipe = _recipe()
        model_dir = str(create_model_dir(recipe.model, tmp_path / "model", seed=0))
        learner = start_learners(model_dir, recipe)
        ray.get(learner.start_rl())
        ray.get(learner.update(_samples(), 1.0, 0))  # the weights move away from the workers' initial copy
        sent = ray.get(learner.weights())
        group = RolloutGroup(model_dir, recipe)
        assert not torch.equal(_worker_weights(group.workers[0])["model.norm.weight"], sent["model.norm.weight"])

        SharedMemorySync(tmp_path / "shm").sync(learner, group)
        assert (tmp_path / "shm" / "weights.bin").is_file()
        group._replace(1, "a test replaces it")  # a replacement loads the same file
        for worker in group.workers:
            received = _worker_weights(worker)
            assert received.keys() == sent.keys()
            assert all(torch.equal(received[k], sent[k]) for k in sent)

        ray.get(learner.update(_samples(), 1.0, 1))
        ObjectStoreSync().sync(learner, group)  # the other transport delivers the very same bits
        sent = ray.get(learner.weights())
        assert all(torch.equal(_worker_weights(group.workers[0])[k], sent[k]) for k in sent)
    finally:
        ray.shutdown()


def _metrics(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "throughput/"))} for r in rows]


@pytest.mark.integration
def test_a_run_through_shared_memory_trains_on_the_weights_the_workers_used_and_leaves_no_file(tmp_path, monkeypatch):
    """The default transport in a whole run: the learner's log-probs reproduce the workers' at every step (they
    sampled with the weights it sent), and nothing of the shared-memory file is left once the run has ended. That
    the object store delivers the very same bits is the test above."""
    raw = {
        "model": TINY_MODEL,
        "data": {"train": {"task": "arithmetic", "size": 16, "levels": [1]},
                 "test": {"task": "arithmetic", "split": "test", "size": 2, "levels": [1]}},
        "rollout": {"workers": 2, "prompts_per_step": 2, "rollouts_per_prompt": 4, "max_new_tokens": 12},
        "rewards": {"terms": [{"fn": "accuracy"}, {"fn": "length_penalty"}]},
        "learner": {"lr": 1e-2, "torch_threads": 1},
        "sampler": {"allocation": "uniform"},
        "trainer": {"steps": 3, "eval_before": False, "eval_after": False},
        "logging": {"progress": False},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    used = []  # the run's shared-memory directory (other runs on the machine have their own)
    monkeypatch.setattr(trainer, "shared_dir", lambda token: used.append(shared_dir(token)) or used[-1])
    assert main(["train", str(path), "rollout.weight_sync=shared_memory", "--run-dir", str(tmp_path / "run")]) == 0
    shared = _metrics(tmp_path / "run")
    assert len(shared) == 3 and all(r["policy/grad_norm"] > 0 for r in shared)  # the weights move every step
    assert all(r["rollout/logprob_diff_max"] < 1e-4 for r in shared)  # the learner sees the weights the workers used
    assert len(used) == 1 and not used[0].exists()
