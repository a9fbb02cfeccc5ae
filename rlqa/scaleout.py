"""Small driver-side pieces of the scale-out modes: colocated engines sleeping while the learners train, and how
stale an asynchronous step's rollouts are."""

from __future__ import annotations

import ray

from rlqa.rollout.types import Rollout


def engines_sleep(rollouts) -> None:
    """Colocated engines free their GPU memory for the learners (vLLM level-1 sleep; HF moves to CPU)."""
    ray.get([w.sleep.remote() for w in rollouts.workers])


def engines_wake(rollouts) -> None:
    ray.get([w.wake.remote() for w in rollouts.workers])


def staleness(trained_version: int, rollouts: list[Rollout]) -> float:
    """Policy versions between the weights an update starts from and those that sampled its rollouts (mean):
    0 when synchronous, 1 in async mode (generated during the previous update)."""
    return trained_version - sum(r.policy_version for r in rollouts) / len(rollouts)
