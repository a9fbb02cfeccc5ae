"""New weights from the learner straight to the rollout workers, without the object store (`rollout.weight_sync`).

- `broadcast`: the learner (rank 0 of the learner group) and every worker form one BroadcastChannel (NCCL on GPUs,
  gloo on CPU); each update is one broadcast per tensor, received in place by each engine.
- `ipc`: learner and workers share a GPU (ray.placement: colocate); the learner exports CUDA IPC handles of its
  parameters and each engine copies from that memory.

The learner side runs through Ray's `__ray_call__`, so the Learner class needs no transport code. Under ZeRO-3 the
parameters are partitioned across learner ranks; recipes using it keep `object_store` (the config says so).
A worker replaced after a failure could not rejoin a formed NCCL group mid-step, so these modes stop the run on a
worker failure instead (`rollout.max_retries: 0`); the channel is formed again if the worker list changes.
"""

from __future__ import annotations

import ray

from rlqa.rollout.weight_sync import BroadcastChannel, ipc_handles, rendezvous_address, weight_spec


def _first_rank(learner):
    """The actor holding the full weights: the learner itself, or rank 0 of a LearnerGroup (ZeRO 0-2 replicate)."""
    return getattr(learner, "actors", [learner])[0]


def _learner_address(actor) -> tuple[str, int]:
    return rendezvous_address()


def _learner_join(actor, host: str, port: int, world_size: int) -> list:
    device = next(actor.model.parameters()).device
    actor.weight_channel = BroadcastChannel(host, port, 0, world_size, device)
    return weight_spec(actor.model.state_dict())


def _learner_send(actor) -> None:
    actor.weight_channel.send(actor.model.state_dict())


def _learner_export(actor) -> dict:
    state = {k: v.detach().contiguous() for k, v in actor.model.state_dict().items()}
    actor.exported = state  # alive until the workers have copied from it
    return ipc_handles(state)


def _learner_release(actor) -> None:
    actor.exported = None


class DirectSync:
    def __init__(self, mode: str):
        self.mode = mode
        self.members: list = []
        self.spec = None

    def sync(self, learner, rollouts, version: int) -> None:
        """Send the learner's current weights to every worker of `rollouts` (a RolloutGroup) as `version`."""
        sender = _first_rank(learner)
        if self.mode == "ipc":
            handles = ray.get(sender.__ray_call__.remote(_learner_export))
            ray.get([w.load_ipc_weights.remote(handles, version) for w in rollouts.workers])
            ray.get(sender.__ray_call__.remote(_learner_release))
        else:
            if self.members != rollouts.workers:
                self._form(sender, rollouts.workers)
            sending = sender.__ray_call__.remote(_learner_send)
            ray.get([w.receive_weights.remote(self.spec, version) for w in rollouts.workers] + [sending])
        rollouts.version = version

    def _form(self, sender, workers: list) -> None:
        """Rendezvous: the learner hosts the store, every worker joins (all block until the group is complete)."""
        host, port = ray.get(sender.__ray_call__.remote(_learner_address))
        world = 1 + len(workers)
        joined = [w.join_channel.remote(host, port, rank, world) for rank, w in enumerate(workers, start=1)]
        self.spec = ray.get(sender.__ray_call__.remote(_learner_join, host, port, world))
        ray.get(joined)
        self.members = list(workers)
