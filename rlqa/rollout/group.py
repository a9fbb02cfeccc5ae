"""The rollout workers as one group: deterministic work split, weight sync, and replacing a worker that dies.

Work is split by position in the request list (contiguous equal shares), never by arrival order, and each sample
carries its own seed, so a share regenerated on a replacement worker yields the very same tokens.
"""

from __future__ import annotations

import logging
import time

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from rlqa.config import Recipe
from rlqa.rollout.types import GenerationRequest, Rollout, SamplingParams
from rlqa.rollout.worker import RolloutWorker

log = logging.getLogger("rlqa.rollout")


def split_evenly(items: list, parts: int) -> list[list]:
    """Contiguous shares whose sizes differ by at most one, earlier shares larger."""
    base, extra = divmod(len(items), parts)
    shares, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        shares.append(items[start : start + size])
        start += size
    return shares


class RolloutGroup:
    def __init__(self, model_dir: str, recipe: Recipe, deadline_s: float = 600.0, max_retries: int = 2):
        self.model_dir = model_dir
        self.recipe = recipe
        self.deadline_s = deadline_s
        self.max_retries = max_retries
        self.workers = [self._start_worker() for _ in range(recipe.rollout.workers)]
        self.weights_ref = None
        self.version = 0
        self.restarts = 0

    def _start_worker(self):
        cfg = self.recipe.rollout
        actor = ray.remote(RolloutWorker).options(num_cpus=cfg.cpus_per_worker, num_gpus=cfg.gpus_per_worker)
        return actor.remote(
            self.model_dir, self.recipe.model.dtype, cfg.micro_batch_size, cfg.torch_threads, self.recipe.model.trust_remote_code
        )

    def sync(self, weights, version: int) -> None:
        """Send new weights to every worker through the object store (one copy, read by all)."""
        self.weights_ref = weights if isinstance(weights, ray.ObjectRef) else ray.put(weights)
        self.version = version
        ray.get([w.load_weights.remote(self.weights_ref, version) for w in self.workers])

    def _replace(self, index: int) -> None:
        try:
            ray.kill(self.workers[index], no_restart=True)
        except Exception:  # already gone
            pass
        self.workers[index] = self._start_worker()
        if self.weights_ref is not None:
            ray.get(self.workers[index].load_weights.remote(self.weights_ref, self.version))
        self.restarts += 1

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> list[Rollout]:
        """All requests' rollouts, in request order. A dead or hung worker is replaced and its share redone."""
        shares = split_evenly(requests, len(self.workers))
        pending = {i: self.workers[i].generate.remote(share, params) for i, share in enumerate(shares) if share}
        results: dict[int, list[Rollout]] = {}
        attempts = dict.fromkeys(pending, 0)
        while pending:
            index, ref = next(iter(pending.items()))
            try:
                results[index] = ray.get(ref, timeout=self.deadline_s)
                del pending[index]
            except (RayActorError, GetTimeoutError) as err:
                attempts[index] += 1
                if attempts[index] > self.max_retries:
                    raise RuntimeError(f"rollout worker {index} failed {attempts[index]} times") from err
                log.warning("rollout worker %d failed (%s); replacing it and regenerating its share", index, type(err).__name__)
                started = time.perf_counter()
                self._replace(index)
                pending[index] = self.workers[index].generate.remote(shares[index], params)
                log.warning("worker %d replaced in %.1fs", index, time.perf_counter() - started)
        return [rollout for i in sorted(results) for rollout in results[i]]

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w, no_restart=True)
