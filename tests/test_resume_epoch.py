"""Resuming from a checkpoint taken on the last step of an epoch continues into the next epoch: it neither replays
the finished epoch nor skips the start of the next (a bug class reported against other frameworks)."""

import json

import numpy as np

from rlqa.config import SamplerConfig
from rlqa.sampler import RolloutSampler

IDS = [f"p{i}" for i in range(8)]


def sampler() -> RolloutSampler:
    cfg = SamplerConfig(n_min=2, n_max=6, schedule_delta=1, n_low=1, n_high=7)
    return RolloutSampler(IDS, cfg, prompts_per_step=4, rollouts_per_prompt=4, seed=3)


def test_resume_at_the_end_of_an_epoch_starts_the_next_epoch():
    original = sampler()
    for step in range(2):  # 8 prompts, 4 per step: step 1 is the last step of epoch 0
        original.update({pid: [True, False] for pid, _ in original.next_batch(step)})
    state = json.loads(json.dumps(original.state_dict()))  # as it goes through driver.json
    assert (state["epoch"], state["position"]) == (0, 8)  # epoch 0 used up, epoch 1 not begun

    resumed = sampler()
    resumed.load_state_dict(state)
    batch = resumed.next_batch(2)
    epoch_1 = [IDS[i] for i in np.random.default_rng([3, 1]).permutation(8)]  # the sampler's seeded order of epoch 1
    assert [pid for pid, _ in batch] == epoch_1[:4]
    assert resumed.epoch == 1
    assert (resumed.n_min, resumed.n_max) == (1, 7)  # the schedule widened once, at the start of epoch 1
    assert batch == original.next_batch(2)
    # and epoch 1 then finishes with exactly its other four prompts
    assert [pid for pid, _ in resumed.next_batch(3)] == epoch_1[4:]
