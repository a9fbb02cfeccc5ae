"""When generation, training and weight sync happen, so that one step reads the same in every mode.

    sync        step t generates, trains, sends the new weights; then step t + 1 begins
    async       step t + 1 generates while step t trains (`rollout.async_steps: 1`): its rollouts come from the policy
                one update behind, at the temperature the controller had before step t's update, and the loss
                corrects with their sampling log-probs (`rollout/staleness` 1). They are ready before the weight
                sync, and a checkpoint saves them (`pending`), so a resumed run trains on the very same rollouts
    colocated   learners and rollout engines share GPU bundles (`ray.placement: colocate`): the engines sleep while
                the learners train and wake for the weight sync

The Schedule also owns the policy version: how many times the weights the rollout workers hold have changed (the
SFT warm-up once, each RL update once more). It tags every rollout, and goes into the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import ray

from rlqa.learner.batch import TrainSample
from rlqa.learner.group import LearnerGroup
from rlqa.rollout.group import RolloutGroup
from rlqa.rollout.sync import WeightSync
from rlqa.stages import StepBatch

# (step, temperature, policy version[, number of prompts]) -> the step's rollouts
Generate = Callable[..., StepBatch]


class Schedule:
    def __init__(
        self, generate: Generate, learner: LearnerGroup, rollout_workers: RolloutGroup, weight_sync: WeightSync, *,
        steps: int, overlap: bool, colocated: bool,
    ):
        self.version = 0
        self._generate = generate
        self._learner = learner
        self._workers = rollout_workers
        self._weight_sync = weight_sync
        self._steps = steps
        self._colocated = colocated
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="rlqa-prefetch") if overlap else None
        self._next: Future | None = None  # async: the next step's generation, running during this step's update
        self._pending: StepBatch | None = None  # and once it is done, until that step begins
        self._asleep = False

    def generation(self, step: int, temperature: float) -> StepBatch:
        """Stages 1-2 of `step` at `temperature`: generated now, or (async) during the previous step's update at the
        temperature the controller had then, or restored with a checkpoint that was saved while it was in flight."""
        if self._next is not None:  # sync() waits for it; a caller that did not sync waits here
            self._pending, self._next = self._next.result(), None
        if self._pending is not None:
            batch, self._pending = self._pending, None
            if batch.step != step:
                raise ValueError(f"the prefetched rollouts are for step {batch.step}, not step {step}")
            return batch
        return self._generate(step, temperature, self.version)

    def extra_round(self, step: int, temperature: float, num_prompts: int) -> StepBatch:
        """Dynamic sampling: `num_prompts` more prompts of `step`, generated now by the policy the workers hold (in
        async mode one version newer than the step's first round; each rollout records its own)."""
        return self._generate(step, temperature, self.version, num_prompts=num_prompts)

    def train(self, samples: list[TrainSample], temperature: float, step: int, next_temperature: float) -> dict[str, float]:
        """Stage 5's update at `temperature`, the one its rollouts were sampled at (so the entropy it measures is the
        entropy at that temperature). Meanwhile the next step generates at `next_temperature`, the controller's
        temperature now (async: it lags the controller by one update, which moves after this one), or the engines
        sleep (colocated). Returns the learner's metrics."""
        update = self._learner.update(samples, temperature, step)
        if self._executor is not None and step + 1 < self._steps:
            self._next = self._executor.submit(self._generate, step + 1, next_temperature, self.version)
        elif self._colocated:  # the engines give the shared GPUs to the learners meanwhile
            ray.get([w.sleep.remote() for w in self._workers.workers])
            self._asleep = True
        metrics = ray.get(update)
        self.version += 1
        return metrics

    def sync(self) -> int:
        """Stage 7: the learner's weights to every rollout worker; the version they now hold. The next step's
        generation (async) finishes first: the workers are busy with it until then anyway, and afterwards the driver's
        state (the sampler drew its prompts) is settled, so a checkpoint taken now holds it whole."""
        if self._next is not None:
            self._pending, self._next = self._next.result(), None
        if self._asleep:
            ray.get([w.wake.remote() for w in self._workers.workers])
            self._asleep = False
        self._weight_sync.sync(self._learner, self._workers)
        return self.version

    @property
    def pending(self) -> StepBatch | None:
        """The next step's rollouts, generated ahead (async) and not trained on yet: part of a checkpoint."""
        return self._pending

    def restore_pending(self, batch: StepBatch | None) -> None:
        self._pending = batch
