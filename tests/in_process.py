"""One process runs `rl_step` with every real stage: the recipe's driver state, a real Learner, a real HF generation
backend and the reward pipeline, with no Ray. The Schedule and the rollout group are the two parts replaced (by
their sync-mode behaviour), so a step costs about a second on the tiny model."""

from pathlib import Path

from rlqa import stages
from rlqa.config import Recipe
from rlqa.learner.learner import Learner
from rlqa.rollout.backends import make_backend
from rlqa.tools.environment import environment_rows, with_rows
from rlqa.trainer import Components, build_driver
from rewards.pipeline import RewardPipeline


class RolloutWorkers:
    """A RolloutGroup of one in-process engine."""

    restarts = 0

    def __init__(self, model_dir: str, recipe: Recipe):
        self.backend = make_backend(model_dir, recipe.model, recipe.rollout, recipe.base_dir)
        self.rows = environment_rows(recipe, model_dir)

    def generate(self, requests, params, version):
        return self.backend.generate(with_rows(requests, self.rows), params, version)


class Schedule:
    """The sync Schedule without Ray: generate through the seam, train, load the new weights into the engine."""

    def __init__(self, learner: Learner, workers: RolloutWorkers):
        self.version = 0
        self.learner, self.workers = learner, workers

    def prefetched(self, step):
        return None

    def generate(self, asked):
        return stages.generate(self.workers, asked, self.version)

    def ahead(self, step):
        return False

    def train(self, samples, temperature, step, next_step=None):
        metrics = self.learner.update(samples, temperature, step)
        self.version += 1
        return metrics

    def sync(self):
        self.workers.backend.load_weights(self.learner.weights().items())
        return self.version


def components(recipe: Recipe, run_dir: Path, rewards: RewardPipeline) -> Components:
    driver = build_driver(recipe, run_dir)
    learner = Learner(driver.model_dir, recipe, recipe.trainer.steps)
    learner.start_rl()
    workers = RolloutWorkers(driver.model_dir, recipe)
    schedule = Schedule(learner, workers)
    return Components(driver, run_dir, learner=None, rollout_workers=workers, rewards=rewards, schedule=schedule)
