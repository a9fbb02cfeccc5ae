"""The Schedule alone (real class, real Ray for its object refs): at which temperature each step is generated and
trained, and what a checkpoint taken between two async steps holds.

The learner, the rollout workers (the generation seam) and the weight sync are recording stand-ins: the Schedule
takes a round's requests, and its job is only *when* each is called and with what, which is what these tests pin
down (real training through each mode is in tests/test_learner_group.py and tests/test_resume_async.py).
"""

import json

import pytest
import ray

from rlqa.rollout.types import GenerationRequest, Rollout, SamplingParams
from rlqa.schedule import Schedule
from rlqa.stages import StepBatch, StepRequests


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


class RecordingWorkers:
    """The rollout workers' seam: one rollout per request, tagged with the version it was asked for."""

    def __init__(self):
        self.asked: list[tuple[str, int]] = []  # (prompt id, version) of each request generated

    def generate(self, requests, params, version):
        self.asked += [(r.prompt_id, version) for r in requests]
        return [Rollout(r.prompt_id, r.sample_index, [1, 2], [3, 4], [-0.25, -1.5], "stop", version, "34") for r in requests]


def requests(step: int, temperature: float) -> StepRequests:
    """What stage 1 hands the Schedule: one prompt, p<step>, with one sample."""
    return StepRequests(step, [(f"p{step}", 1)], [GenerationRequest(f"p{step}", 0, (1, 2), step)], SamplingParams(temperature, 2))


def run(overlap: bool, steps: int = 5) -> tuple[list[float], RecordingLearner, RecordingWorkers]:
    """rl_step's calls to the Schedule, with a controller that adds 0.1 after every update."""
    learner, workers = RecordingLearner(), RecordingWorkers()
    schedule = Schedule(learner, workers, NoSync(), steps=steps, overlap=overlap, colocated=False)
    controller, sampled_at = 1.0, []
    for step in range(steps):
        batch = schedule.prefetched(step)
        if batch is None:
            batch = schedule.generate(requests(step, controller))
        sampled_at.append(batch.temperature)
        schedule.train([], batch.temperature, step, requests(step + 1, controller) if schedule.ahead(step) else None)
        controller += 0.1  # stage 6
        schedule.sync()
    return sampled_at, learner, workers


def test_async_steps_sample_at_the_controllers_temperature_one_update_behind():
    sampled_at, learner, workers = run(overlap=True)
    # step 1 is generated during update 0, before the controller moves; step t >= 2 during update t - 1, after the
    # controller moved t - 1 times: 1.0 + 0.1 (t - 1)
    assert sampled_at == pytest.approx([1.0, 1.0, 1.1, 1.2, 1.3], abs=1e-12)
    # each update measures the entropy at the temperature its own rollouts were sampled at
    assert learner.update_temperatures == sampled_at
    # step 0 now, by version 0; step t + 1 during update t, by the policy before it: version t (the last step, 4, is
    # generated during update 3 and nothing during update 4)
    assert workers.asked == [("p0", 0), ("p1", 0), ("p2", 1), ("p3", 2), ("p4", 3)]


def test_sync_steps_sample_at_the_temperature_after_the_previous_update():
    sampled_at, learner, workers = run(overlap=False)
    assert sampled_at == pytest.approx([1.0, 1.1, 1.2, 1.3, 1.4], abs=1e-12)
    assert learner.update_temperatures == sampled_at
    assert workers.asked == [(f"p{t}", t) for t in range(5)]  # step t by the policy after t updates


def test_the_schedule_refuses_next_step_requests_it_would_not_generate_and_wants_those_it_would():
    sync = Schedule(RecordingLearner(), RecordingWorkers(), NoSync(), steps=3, overlap=False, colocated=False)
    with pytest.raises(ValueError, match="step 0: the next step's requests are given, but the schedule does not"):
        sync.train([], 1.0, 0, requests(1, 1.0))
    overlapped = Schedule(RecordingLearner(), RecordingWorkers(), NoSync(), steps=3, overlap=True, colocated=False)
    with pytest.raises(ValueError, match="step 0: the next step's requests are missing, but the schedule does"):
        overlapped.train([], 1.0, 0)
    assert overlapped.ahead(1) and not overlapped.ahead(2)  # the last step has no next one


def test_an_async_checkpoint_holds_the_next_steps_rollouts_and_a_resumed_schedule_trains_on_them():
    learner = RecordingLearner()
    schedule = Schedule(learner, RecordingWorkers(), NoSync(), steps=4, overlap=True, colocated=False)
    batch = schedule.generate(requests(0, 1.0))
    schedule.train([], batch.temperature, 0, requests(1, 1.25))
    schedule.sync()
    # after the sync the prefetched step-1 batch is done and waiting: what a checkpoint after step 0 saves
    assert schedule.pending is not None and schedule.pending.step == 1
    saved = json.loads(json.dumps(schedule.pending.to_state()))
    assert saved == {
        "step": 1, "temperature": 1.25, "prompts": [["p1", 1]],
        "rollouts": [{"prompt_id": "p1", "sample_index": 0, "prompt_tokens": [1, 2], "completion_tokens": [3, 4],
                      "logprobs": [-0.25, -1.5], "finish_reason": "stop", "policy_version": 0, "text": "34",
                      "loss_mask": None,  # None: all the model's tokens (a state without the key loads the same)
                      "turns": None, "tool_calls": 0, "tool_errors": 0, "tool_timeouts": 0,  # single-turn
                      "environment_reward": None, "environment_error": ""}],
    }

    class MustNotGenerate:
        def generate(self, *args):
            raise AssertionError("a resumed schedule with pending rollouts generated step 1 again")

    resumed = Schedule(RecordingLearner(), MustNotGenerate(), NoSync(), steps=4, overlap=True, colocated=False)
    resumed.restore_pending(StepBatch.from_state(saved))
    again = resumed.prefetched(1)  # the controller's temperature now does not matter: they are generated
    assert again.temperature == 1.25 and again.rollouts == schedule.pending.rollouts
    assert resumed.prefetched(2) is None  # taken once; step 2 is drawn and generated as usual
    with pytest.raises(ValueError, match="for step 1, not step 2"):
        other = Schedule(RecordingLearner(), MustNotGenerate(), NoSync(), steps=4, overlap=True, colocated=False)
        other.restore_pending(StepBatch.from_state(saved))
        other.prefetched(2)
