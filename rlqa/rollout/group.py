"""The rollout workers as one group: deterministic work split, weight sync, and replacing a worker that dies or hangs.

Work is split by position in the request list (contiguous equal shares), never by arrival order, and each sample
carries its own seed, so a share regenerated on a replacement worker yields the very same tokens: a dead worker
costs a retry, not the run, and not a sample. A share that has not come back `rollout.deadline_s` seconds after it
was sent counts as hung and is handled like a death.
"""

from __future__ import annotations

import logging
import os
import time

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from rlqa.config import Recipe
from rlqa.rollout.types import GenerationRequest, Rollout, SamplingParams
from rlqa.rollout.worker import RolloutWorker
from rlqa.tools.environment import environment_rows, with_rows

log = logging.getLogger("rlqa.rollout")


class RolloutFailure(RuntimeError):
    """A worker's share failed more than `rollout.max_retries` times in one step."""


def split_evenly(items: list, parts: int) -> list[list]:
    """Contiguous shares whose sizes differ by at most one, earlier shares larger."""
    base, extra = divmod(len(items), parts)
    shares, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        shares.append(items[start : start + size])
        start += size
    return shares


def actor_pid(actor) -> int:
    """The operating-system process id of a Ray actor (for operators, and for fault tests that kill it)."""
    return ray.get(actor.__ray_call__.remote(lambda _self: os.getpid()))


def actor_node(actor) -> str:
    """The Ray node id an actor runs on."""
    return ray.get(actor.__ray_call__.remote(lambda _self: ray.get_runtime_context().get_node_id()))


class RolloutGroup:
    def __init__(self, model_dir: str, recipe: Recipe, actor_options: list[dict] | None = None):
        self.model_dir = model_dir
        self.recipe = recipe
        cfg = recipe.rollout  # Ray options per worker (rlqa.placement); a replacement reuses its slot's
        self.actor_options = actor_options or [{"num_cpus": cfg.cpus_per_worker, "num_gpus": cfg.gpus_per_worker}] * cfg.workers
        self.deadline_s = recipe.rollout.deadline_s
        self.max_retries = recipe.rollout.max_retries
        self.workers = [self._start_worker(i) for i in range(recipe.rollout.workers)]
        self._pids: list[int] | None = None  # asked once, while every worker is healthy; a replacement updates its slot
        self._nodes: list[str] | None = None  # Ray node ids, asked once like the pids
        self._load = None  # how the weights last sent reach a worker (index, actor) -> ObjectRef; for a replacement
        self.restarts = 0  # over the whole run; the trainer keeps it in the checkpoint
        self.rows = environment_rows(recipe, model_dir)  # rollout.environment: each prompt's reset row (else None)

    def _start_worker(self, index: int):
        actor = ray.remote(RolloutWorker).options(**self.actor_options[index])
        return actor.remote(self.model_dir, self.recipe.model, self.recipe.rollout, self.recipe.base_dir)

    def pids(self) -> list[int]:
        """The workers' process ids, without asking a worker that may hang now."""
        if self._pids is None:
            self._pids = [actor_pid(w) for w in self.workers]
        return list(self._pids)

    def node_ids(self) -> list[str]:
        """The Ray node each worker runs on."""
        if self._nodes is None:
            self._nodes = [actor_node(w) for w in self.workers]
        return self._nodes

    def load_weights(self, weights) -> None:
        """New weights into every worker through the object store (one copy, read by all)."""
        ref = weights if isinstance(weights, ray.ObjectRef) else ray.put(weights)
        self.load(lambda _index, worker: worker.load_weights.remote(ref))

    def load(self, load) -> None:
        """New weights into every worker, `load(index, worker)` starting one worker's load. A worker that died
        since the last step is replaced here, and the replacement gets these weights the same way."""
        self._load = load
        loads = [load(index, w) for index, w in enumerate(self.workers)]
        for index, ref in enumerate(loads):
            try:
                ray.get(ref, timeout=self.deadline_s)
            except (RayActorError, GetTimeoutError) as err:
                self._replace(index, f"{type(err).__name__} while loading weights")

    def _replace(self, index: int, reason: str) -> None:
        log.warning("rollout worker %d failed (%s); replacing it", index, reason)
        started = time.perf_counter()
        try:
            ray.kill(self.workers[index], no_restart=True)
        except Exception:  # already gone
            pass
        self.workers[index] = self._start_worker(index)
        if self._nodes is not None:
            self._nodes[index] = actor_node(self.workers[index])
        if self._load is not None:
            ray.get(self._load(index, self.workers[index]))
        self.restarts += 1
        pid = actor_pid(self.workers[index])
        if self._pids is not None:
            self._pids[index] = pid
        log.warning("rollout worker %d replaced in %.1fs (pid %d)", index, time.perf_counter() - started, pid)

    def generate(self, requests: list[GenerationRequest], params: SamplingParams, version: int) -> list[Rollout]:
        """All requests' rollouts, in request order, tagged with policy `version`. A dead or hung worker is replaced
        and its share redone."""
        shares = split_evenly(with_rows(requests, self.rows), len(self.workers))
        pending: dict = {}  # ObjectRef -> (worker index, deadline)
        results: dict[int, list[Rollout]] = {}
        failures = [0] * len(shares)

        def send(index: int) -> None:
            ref = self.workers[index].generate.remote(shares[index], params, version)
            pending[ref] = (index, time.monotonic() + self.deadline_s)

        for index, share in enumerate(shares):
            if share:
                send(index)
        while pending:
            first_deadline = min(deadline for _, deadline in pending.values())
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(first_deadline - time.monotonic(), 0.0))
            if ready:
                index, _ = pending.pop(ready[0])
                try:
                    results[index] = ray.get(ready[0])
                    continue
                except RayActorError as err:
                    reason = type(err).__name__
            else:  # the oldest share is past its deadline: the worker hangs
                late = min(pending, key=lambda ref: pending[ref][1])
                index, _ = pending.pop(late)
                reason = f"no result within rollout.deadline_s={self.deadline_s:g}s"
            failures[index] += 1
            if failures[index] > self.max_retries:
                raise RolloutFailure(f"rollout worker {index} failed {failures[index]} times in one step (last: {reason})")
            self._replace(index, reason)
            send(index)
        return [rollout for i in sorted(results) for rollout in results[i]]

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w, no_restart=True)
