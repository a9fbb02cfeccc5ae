"""How new policy weights reach the rollout workers after an update (`rollout.weight_sync`): one interface, four
transports.

- `shared_memory` (the default): the learner writes its weights once into a file in /dev/shm (named after the run,
  deleted by the run's reaper however the run ends; rlqa.rollout.shared_weights), and every worker on that node
  maps it and copies into its parameters in place: no pickling, no object store. Workers on other nodes get the
  same weights through the object store, read back from that file once. A learner on a node other than the
  driver's (whose reaper owns the file) falls back to `object_store` altogether.
- `object_store`: the learner's weights go into Ray's object store once and every worker reads that copy (what a CPU
  run needs anyway). A worker replaced after a failure loads the same copy.
- `broadcast`: the learner (rank 0 of the learner group) and every worker form one BroadcastChannel (NCCL on GPUs,
  gloo on CPU); each update is one broadcast per tensor, received in place by each engine.
- `ipc`: learner and workers share a GPU (ray.placement: colocate); the learner exports CUDA IPC handles of its
  parameters and each engine copies from that memory.

The learner side of the direct transports runs through Ray's `__ray_call__`, so the Learner class needs no transport
code. Under ZeRO-3 the parameters are partitioned across learner ranks; recipes using it keep `object_store` (the
config says so). A worker replaced after a failure could not rejoin a formed NCCL group mid-step, so the direct
modes stop the run on a worker failure instead (`rollout.max_retries: 0`); the channel is formed again if the worker
list changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import ray

from rlqa.rollout.group import actor_node
from rlqa.rollout.shared_weights import read_weights
from rlqa.rollout.weight_sync import BroadcastChannel, ipc_handles, rendezvous_address, weight_spec


class WeightSync(Protocol):
    def sync(self, learner, group) -> None:
        """The learner group's current policy weights into every worker of the RolloutGroup `group`."""


class ObjectStoreSync:
    def sync(self, learner, group) -> None:
        group.load_weights(learner.weights())


class SharedMemorySync:
    def __init__(self, directory: Path):
        self.directory = str(directory)
        self.node = ray.get_runtime_context().get_node_id()  # the driver's: its reaper deletes the directory
        self.learner_local: bool | None = None

    def sync(self, learner, group) -> None:
        if self.learner_local is None:
            self.learner_local = actor_node(learner.leader) == self.node
        if not self.learner_local:
            group.load_weights(learner.weights())
            return
        ray.get(learner.write_shared_weights(self.directory))
        remote_copy: list[ray.ObjectRef] = []  # at most one, made only if a worker is on another node

        def load(index: int, worker) -> ray.ObjectRef:
            if group.node_ids()[index] == self.node:
                return worker.load_shared_weights.remote(self.directory)
            if not remote_copy:
                remote_copy.append(ray.put(dict(read_weights(self.directory))))
            return worker.load_weights.remote(remote_copy[0])

        group.load(load)


def _learner_address(learner) -> tuple[str, int]:
    return rendezvous_address()


def _learner_join(learner, host: str, port: int, world_size: int) -> list:
    model = learner.policy.model
    learner.weight_channel = BroadcastChannel(host, port, 0, world_size, next(model.parameters()).device)
    return weight_spec(learner.policy.live_weights())


def _learner_send(learner) -> None:
    learner.weight_channel.send(learner.policy.live_weights())


def _learner_export(learner) -> dict:
    state = {k: v.detach().contiguous() for k, v in learner.policy.live_weights().items()}
    learner.exported = state  # alive until the workers have copied from it
    return ipc_handles(state)


def _learner_release(learner) -> None:
    learner.exported = None


class BroadcastSync:
    def __init__(self):
        self.members: list = []
        self.spec = None

    def sync(self, learner, group) -> None:
        sender = learner.leader
        if self.members != group.workers:
            self._form(sender, group.workers)
        sending = sender.__ray_call__.remote(_learner_send)
        ray.get([w.receive_weights.remote(self.spec) for w in group.workers] + [sending])

    def _form(self, sender, workers: list) -> None:
        """Rendezvous: the learner hosts the store, every worker joins (all block until the group is complete)."""
        host, port = ray.get(sender.__ray_call__.remote(_learner_address))
        world = 1 + len(workers)
        joined = [w.join_channel.remote(host, port, rank, world) for rank, w in enumerate(workers, start=1)]
        self.spec = ray.get(sender.__ray_call__.remote(_learner_join, host, port, world))
        ray.get(joined)
        self.members = list(workers)


class IpcSync:
    def sync(self, learner, group) -> None:
        sender = learner.leader
        handles = ray.get(sender.__ray_call__.remote(_learner_export))
        ray.get([w.load_ipc_weights.remote(handles) for w in group.workers])
        ray.get(sender.__ray_call__.remote(_learner_release))


def make_weight_sync(mode: str, shared_dir: Path) -> WeightSync:
    """The transport `mode` names; `shared_dir` is the run's shared-memory directory (rlqa.cluster.shared_dir)."""
    if mode == "shared_memory":
        return SharedMemorySync(shared_dir)
    return {"object_store": ObjectStoreSync, "broadcast": BroadcastSync, "ipc": IpcSync}[mode]()
