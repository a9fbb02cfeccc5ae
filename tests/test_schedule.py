"""The Schedule alone (real class, real Ray for its object refs): at which temperature each step is generated and
trained, and what a checkpoint taken between two async steps holds.

The learner, the generation and the weight sync are recording stand-ins: the Schedule's job is only *when* each is
called and with what, which is what these tests pin down (real training through each mode is in
tests/test_learner_group.py and tests/test_resume_async.py).
"""

import json

import pytest
import ray

from rlqa.rollout.types import Rollout
from rlqa.schedule import Schedule
from rlqa.stages import StepBatch


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(address="local", num_cpus=1, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()


class RecordingLearner:
    def __init__(self):
        self.update_temperatures: list[float] = []

    def update(self, samples, temperature, step):
        self.update_temperatures.append(temperature)
        return ray.put({"policy/entropy": 1.0})


class NoSync:
    def sync(self, learner, group):
        pass


def generate(step, temperature, version, num_prompts=None):
    rollout = Rollout(f"p{step}", 0, [1, 2], [3, 4], [-0.25, -1.5], "stop", version, "34")
    return StepBatch(step, temperature, [(f"p{step}", 1)], [rollout])


def run(overlap: bool, steps: int = 5) -> tuple[list[float], RecordingLearner]:
    """rl_step's calls to the Schedule, with a controller that adds 0.1 after every update."""
    learner = RecordingLearner()
    schedule = Schedule(generate, learner, None, NoSync(), steps=steps, overlap=overlap, colocated=False)
    controller, sampled_at = 1.0, []
    for step in range(steps):
        batch = schedule.generation(step, controller)
        sampled_at.append(batch.temperature)
        schedule.train([], batch.temperature, step, controller)
        controller += 0.1  # stage 6
        schedule.sync()
    return sampled_at, learner


def test_async_steps_sample_at_the_controllers_temperature_one_update_behind():
    sampled_at, learner = run(overlap=True)
    # step 1 is generated during update 0, before the controller moves; step t >= 2 during update t - 1, after the
    # controller moved t - 1 times: 1.0 + 0.1 (t - 1)
    assert sampled_at == pytest.approx([1.0, 1.0, 1.1, 1.2, 1.3], abs=1e-12)
    # each update measures the entropy at the temperature its own rollouts were sampled at
    assert learner.update_temperatures == sampled_at


def test_sync_steps_sample_at_the_temperature_after_the_previous_update():
    sampled_at, learner = run(overlap=False)
    assert sampled_at == pytest.approx([1.0, 1.1, 1.2, 1.3, 1.4], abs=1e-12)
    assert learner.update_temperatures == sampled_at


def test_an_async_checkpoint_holds_the_next_steps_rollouts_and_a_resumed_schedule_trains_on_them():
    learner = RecordingLearner()
    schedule = Schedule(generate, learner, None, NoSync(), steps=4, overlap=True, colocated=False)
    batch = schedule.generation(0, 1.0)
    schedule.train([], batch.temperature, 0, 1.25)
    schedule.sync()
    # after the sync the prefetched step-1 batch is done and waiting: what a checkpoint after step 0 saves
    assert schedule.pending is not None and schedule.pending.step == 1
    saved = json.loads(json.dumps(schedule.pending.to_state()))
    assert saved == {
        "step": 1, "temperature": 1.25, "prompts": [["p1", 1]],
        "rollouts": [{"prompt_id": "p1", "sample_index": 0, "prompt_tokens": [1, 2], "completion_tokens": [3, 4],
                      "logprobs": [-0.25, -1.5], "finish_reason": "stop", "policy_version": 0, "text": "34",
                      "loss_mask": None}],  # None: all the model's tokens (a state without the key loads the same)
    }

    def must_not_generate(*args, **kwargs):
        raise AssertionError("a resumed schedule with pending rollouts generated step 1 again")

    resumed = Schedule(must_not_generate, RecordingLearner(), None, NoSync(), steps=4, overlap=True, colocated=False)
    resumed.restore_pending(StepBatch.from_state(saved))
    again = resumed.generation(1, 9.0)  # the controller's temperature now does not matter: they are generated
    assert again.temperature == 1.25 and again.rollouts == schedule.pending.rollouts
    with pytest.raises(ValueError, match="for step 1, not step 2"):
        other = Schedule(must_not_generate, RecordingLearner(), None, NoSync(), steps=4, overlap=True, colocated=False)
        other.restore_pending(StepBatch.from_state(saved))
        other.generation(2, 1.0)
