"""The learner refuses a non-finite loss (issue 28 item 7): the step is skipped and counted, the weights, AdamW's
state and the LR schedule stay as they were; the next finite batch trains as usual."""

import math

import pytest
import torch

from rlqa.recipe_files import validate_recipe
from rlqa.learner.batch import TrainSample
from rlqa.learner.learner import Learner
from rlqa.models import create_model_dir

pytestmark = pytest.mark.integration  # a real (tiny) model and optimizer

TINY = {"hidden_size": 32, "layers": 2, "heads": 2, "intermediate_size": 64, "max_positions": 64}


def _learner(tmp_path) -> Learner:
    recipe = validate_recipe({"model": {"tiny": TINY}, "learner": {"lr": 1e-2, "warmup_steps": 2, "schedule": "linear"}}, source="test", base_dir=tmp_path)
    create_model_dir(recipe.model, tmp_path / "model", seed=0)
    learner = Learner(str(tmp_path / "model"), recipe, total_steps=10)
    learner.start_rl()
    return learner


def _samples(advantages: list[float]) -> list[TrainSample]:
    return [TrainSample([5, 6, 7], [8 + i, 9], [-4.0, -4.0], a, reward=float(a > 0)) for i, a in enumerate(advantages)]


def _weights(learner):
    return {name: p.detach().clone() for name, p in learner.policy.model.named_parameters()}


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_nonfinite_loss_skips_the_step_and_keeps_the_weights(tmp_path, bad):
    learner = _learner(tmp_path)
    before, lr_before = _weights(learner), learner.scheduler.get_last_lr()[0]
    metrics = learner.update(_samples([1.0, -1.0, bad, 1.0]), 1.0, step=0)
    assert metrics["learner/nonfinite_steps"] == 1.0
    assert not math.isfinite(metrics["policy/loss"])
    after = _weights(learner)
    assert all(torch.equal(before[name], after[name]) for name in before)  # bit for bit
    assert not learner.optimizer.state  # AdamW never stepped: no moments
    assert learner.scheduler.get_last_lr()[0] == lr_before  # warm-up did not advance (lr 1e-2 · 0/2 = 0)
    # the next finite batch takes the step the skipped one did not: the schedule moves to 1e-2 · 1/2
    metrics = learner.update(_samples([1.0, -1.0, 1.0, -1.0]), 1.0, step=1)
    assert metrics["learner/nonfinite_steps"] == 0.0 and math.isfinite(metrics["policy/loss"])
    assert learner.scheduler.get_last_lr()[0] == pytest.approx(5e-3)
    assert learner.optimizer.state
