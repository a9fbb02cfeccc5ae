"""Placement bundles from the recipe's ray section, the staleness metric, and the backend checks (exit 2)."""

import importlib.util

import pytest
import ray
import yaml

from rlqa.recipe_files import validate_recipe
from rlqa.errors import UserError
from rlqa.placement import layout, shortfall
from rlqa.rollout.backends import check_backend
from rlqa.rollout.types import Rollout
from rlqa.stages import staleness


def recipe(**sections):
    return validate_recipe(sections, source="test", base_dir=".")


def test_no_placement_group_by_default():
    plan = layout(recipe(learner={"workers": 2}, rollout={"workers": 3}))
    assert plan.bundles == [] and plan.learner_bundles == [None, None] and plan.rollout_bundles == [None] * 3


def test_separate_bundles_learners_first():
    plan = layout(recipe(
        learner={"workers": 2, "cpus": 2, "gpus": 1}, rollout={"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 1},
        ray={"placement": "separate"},
    ))
    assert plan.bundles == [{"CPU": 2, "GPU": 1}, {"CPU": 2, "GPU": 1}, {"CPU": 1, "GPU": 1}]
    assert plan.learner_bundles == [0, 1] and plan.rollout_bundles == [2]


def test_colocated_bundles_add_up_the_shares():
    # bundle 0: learner 0 (1 CPU, 0.5 GPU) + worker 0 (1 CPU, 0.5 GPU) = 2 CPU, 1 GPU; bundle 1: learner 1 alone;
    # bundle 2: worker 2 alone. A zero GPU amount is left out (Ray rejects zero-sized resources).
    plan = layout(recipe(
        learner={"workers": 2, "cpus": 1, "gpus": 0.5}, rollout={"workers": 3, "cpus_per_worker": 1, "gpus_per_worker": 0.5},
        ray={"placement": "colocate"},
    ))
    assert plan.bundles == [{"CPU": 2, "GPU": 1.0}, {"CPU": 2, "GPU": 1.0}, {"CPU": 1, "GPU": 0.5}]
    assert plan.learner_bundles == [0, 1] and plan.rollout_bundles == [0, 1, 2]
    cpu_only = layout(recipe(learner={"workers": 1}, rollout={"workers": 1}, ray={"placement": "colocate"}))
    assert cpu_only.bundles == [{"CPU": 2.0}]


def test_staleness_counts_versions_behind_the_trained_policy():
    def rollout(version):
        return Rollout("p", 0, [1], [2], [-0.5], "stop", version)

    assert staleness(4, [rollout(4), rollout(4)]) == 0.0  # synchronous
    assert staleness(5, [rollout(4), rollout(4), rollout(3)]) == pytest.approx(5 - 11 / 3)  # 1.333...


VLLM_INSTALLED = importlib.util.find_spec("vllm") is not None


def test_vllm_without_vllm_or_gpu_is_a_user_error():
    with pytest.raises(UserError, match="rollout.backend: vllm (is not installed|needs a GPU)"):
        check_backend("vllm", gpus_available=0)
    if not VLLM_INSTALLED:
        with pytest.raises(UserError, match="rollout.backend: vllm is not installed; pip install 'rlqa\\[vllm\\]'"):
            check_backend("vllm", gpus_available=8)
    check_backend("hf", gpus_available=0)


@pytest.mark.integration
@pytest.mark.parametrize(
    "sections, message",
    [
        ({"rollout": {"workers": 1, "backend": "vllm", "gpus_per_worker": 1}}, "rollout.backend: vllm"),
        ({"learner": {"gpus": 1}}, "learner.gpus: 1 asks for a GPU"),
    ],
    ids=["vllm", "learner on a GPU"],
)
def test_rlqa_train_needing_a_gpu_on_a_cluster_without_one_exits_2_with_one_line(sections, message, tmp_path, capsys):
    from rlqa.cli import main

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"tiny": {"hidden_size": 16, "layers": 1, "heads": 2, "intermediate_size": 32}},
        "data": {"train": {"task": "arithmetic", "size": 4}, "test": {"task": "arithmetic", "split": "test", "size": 2}},
        "ray": {"num_gpus": 0},
        **sections,
    }))
    try:
        assert main(["train", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    finally:
        ray.shutdown()  # the check runs once Ray is up (it asks the cluster for GPUs), before any actor starts
    # Ray's own notice (printed when ~/.ray/auth_token exists, e.g. after a `ray start --head`) is not ours
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("Token authentication")]
    assert len(err) == 1 and err[0].startswith(f"rlqa: error: {message}")


def test_recipe_rules_of_the_scale_out_modes():
    with pytest.raises(UserError, match="rollout.gpus_per_worker: the vllm backend needs a GPU"):
        recipe(rollout={"backend": "vllm"})
    with pytest.raises(UserError, match="rollout.max_retries: direct weight sync"):
        recipe(rollout={"weight_sync": "broadcast"})
    with pytest.raises(UserError, match="ipc needs learners and workers on the same GPUs"):
        recipe(rollout={"weight_sync": "ipc", "max_retries": 0})
    with pytest.raises(UserError, match="learner.workers: the PPO critic"):
        recipe(learner={"workers": 2}, algorithm={"name": "ppo", "advantage": "gae", "critic": {}})
    with pytest.raises(UserError, match="rollout.async_steps"):
        recipe(rollout={"async_steps": 1}, algorithm={"old_logprobs": "recompute"})


def test_shortfall_is_none_when_every_actor_fits():
    r = recipe(learner={"cpus": 1}, rollout={"workers": 2, "cpus_per_worker": 1})
    assert shortfall(r, [{"CPU": 3.0}]) is None
    assert shortfall(r, [{"CPU": 1.0}, {"CPU": 2.0}]) is None  # first fit over two nodes


def test_shortfall_names_what_the_recipe_needs_and_what_the_cluster_offers():
    r = recipe(learner={"cpus": 1}, rollout={"workers": 2, "cpus_per_worker": 1})
    assert shortfall(r, [{"CPU": 2.0, "memory": 1e9}]) == (
        "the cluster cannot hold this recipe: it needs 3 CPU, 0 GPU in all (1 learner: 1 CPU, 0 GPU; "
        "2 rollout workers: 1 CPU, 0 GPU each); the cluster offers 2 CPU, 0 GPU over 1 node (largest 2 CPU, 0 GPU)"
    )


def test_shortfall_fits_whole_actors_on_single_nodes():
    # 4 CPUs in all, but a 3-CPU learner fits on neither 2-CPU node
    r = recipe(learner={"cpus": 3}, rollout={"workers": 1, "cpus_per_worker": 1})
    assert "largest 2 CPU, 0 GPU" in shortfall(r, [{"CPU": 2.0}, {"CPU": 2.0}])
    # GPUs: two 1-GPU learners need two GPUs; a 0.5 + 0.5 colocated bundle needs one
    two = recipe(learner={"workers": 2, "gpus": 1, "zero_stage": 2}, rollout={"workers": 1})
    assert shortfall(two, [{"CPU": 8.0, "GPU": 1.0}]) is not None
    assert shortfall(two, [{"CPU": 8.0, "GPU": 2.0}]) is None
    shared = recipe(learner={"gpus": 0.5}, rollout={"workers": 1, "gpus_per_worker": 0.5}, ray={"placement": "colocate"})
    assert shortfall(shared, [{"CPU": 2.0, "GPU": 1.0}]) is None


def test_shortfall_under_strict_strategies():
    r = recipe(learner={"cpus": 1}, rollout={"workers": 1, "cpus_per_worker": 1}, ray={"placement": "separate", "strategy": "STRICT_PACK"})
    assert shortfall(r, [{"CPU": 1.0}, {"CPU": 1.0}]) is not None  # both bundles must share a node
    assert shortfall(r, [{"CPU": 2.0}]) is None
    spread = recipe(learner={"cpus": 1}, rollout={"workers": 1, "cpus_per_worker": 1}, ray={"placement": "separate", "strategy": "STRICT_SPREAD"})
    assert "STRICT_SPREAD" in shortfall(spread, [{"CPU": 4.0}])  # one node per bundle
    assert shortfall(spread, [{"CPU": 1.0}, {"CPU": 1.0}]) is None
