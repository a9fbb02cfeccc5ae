"""The recipe schema offers exactly the names the algorithm registries implement, and a wrong name in a recipe is
a one-line user error (exit 2) that names the key and lists what is supported."""

import typing

import pytest
import yaml

from rlqa.algorithms.advantages import ADVANTAGE_ESTIMATORS
from rlqa.algorithms.kl import KL_ESTIMATORS
from rlqa.algorithms.losses import AGGREGATIONS
from rlqa.algorithms.policy_losses import POLICY_LOSSES
from rlqa.cli import main
from rlqa.config import AlgorithmConfig


def _choices(field: str) -> set[str]:
    return set(typing.get_args(AlgorithmConfig.model_fields[field].annotation))


def test_recipe_choices_are_the_registered_names():
    assert _choices("advantage") == set(ADVANTAGE_ESTIMATORS)
    assert _choices("policy_loss") == set(POLICY_LOSSES)
    assert _choices("kl_estimator") == set(KL_ESTIMATORS)
    assert _choices("loss_aggregation") == set(AGGREGATIONS)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("algorithm.advantage=ppo", "algorithm.advantage: Input should be 'grpo', 'dr_grpo', 'rloo', 'reinforce_pp' or 'gae'"),
        ("algorithm.kl_estimator=k4", "algorithm.kl_estimator: Input should be 'k1', 'k2' or 'k3'"),
        ("algorithm.loss_aggregation=sum", "algorithm.loss_aggregation: Input should be 'token-mean'"),
        ("algorithm.critic.kind=shared", "algorithm.critic.kind: Input should be 'head' or 'separate'"),
        ("algorithm.advantage=gae", "algorithm: name 'ppo' goes with advantage 'gae'"),
        ("algorithm.kl_in_reward=true", "algorithm: kl_in_reward is PPO's token-level reward"),
        ("algorithm.policy_loss=ppo", "algorithm.policy_loss: Input should be 'clip', 'gspo' or 'cispo'"),
        ("algorithm.dual_clip=3", "algorithm: dual_clip belongs to the clipped surrogate"),
    ],
)
def test_bad_algorithm_names_exit_2_naming_the_key(tmp_path, capsys, override, named):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"algorithm": {"kl_coef": 0.01, "policy_loss": "cispo"}}))
    assert main(["check", str(recipe), override]) == 2
    err = capsys.readouterr().err.strip()
    assert named in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_ppo_needs_its_critic_and_the_critic_needs_ppo(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"algorithm": {"name": "ppo", "advantage": "gae"}}))
    assert main(["check", str(recipe)]) == 2
    assert "a critic section is required by name 'ppo'" in capsys.readouterr().err
    assert main(["check", str(recipe), "algorithm.critic.kind=separate"]) == 0
