"""Moving new policy weights to generation engines on GPUs without the object store.

Two transports, both plain PyTorch:

- A broadcast channel (learner and engines on different GPUs or nodes): a process group of its own, made from a
  TCPStore, so it lives beside DeepSpeed's default group; the learner (rank 0) broadcasts each tensor and every
  engine receives into a buffer on its device. Tensors travel in name order from a spec both sides hold, so only
  shapes and dtypes are agreed beforehand. NCCL on GPUs; the same channel over gloo runs on CPU, which is how the
  CPU tests exercise this road.
- CUDA IPC (learner and engine colocated on one GPU): the learner exports a handle per tensor and the engine maps
  the very same memory; nothing is copied until the engine loads it into its own parameters.

The broadcast's rendezvous store (a TCPStore, which has no authentication) listens on one address only, never on
every interface as a TCPStore does by default: loopback when the cluster is one node (an embedded Ray always is),
else the learner's node IP, which the other nodes must reach.

On CPU, weights keep going through the object store (one copy read by every worker), which is what a CPU run
needs anyway.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import timedelta

import torch

WeightSpec = list[tuple[str, torch.dtype, tuple[int, ...]]]  # (name, dtype, shape) in transfer order


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now, for a rendezvous store."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def rendezvous_address() -> tuple[str, int]:
    """Where a group's rank 0 hosts its store: loopback on a one-node cluster, else this Ray node's address; and a
    port free there."""
    import ray

    nodes = [node for node in ray.nodes() if node.get("Alive")]
    host = "127.0.0.1" if len(nodes) <= 1 else ray.util.get_node_ip_address()
    return host, free_port(host)


def listening_store(host: str, port: int, world_size: int, timeout: timedelta):
    """A TCPStore server that listens on `host` alone (the default binds every interface), for the others to join."""
    import torch.distributed as dist

    listener = socket.socket(_family(host), socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(max(world_size, 8))
    return dist.TCPStore(host, port, world_size, is_master=True, timeout=timeout, master_listen_fd=listener.detach())


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def weight_spec(state: dict[str, torch.Tensor]) -> WeightSpec:
    return [(name, t.dtype, tuple(t.shape)) for name, t in sorted(state.items())]


class BroadcastChannel:
    """One broadcast group: rank 0 sends, ranks 1..world-1 receive. NCCL when `device` is a GPU (each rank needs
    its own: NCCL refuses two ranks on one device), gloo on CPU."""

    def __init__(self, host: str, port: int, rank: int, world_size: int, device: torch.device, timeout_s: float = 600):
        import torch.distributed as dist

        timeout = timedelta(seconds=timeout_s)
        if rank == 0:
            base = listening_store(host, port, world_size, timeout)
        else:
            base = dist.TCPStore(host, port, world_size, is_master=False, timeout=timeout)
        store = dist.PrefixStore("rlqa-weights", base)
        if torch.device(device).type == "cuda":
            self.group = dist.ProcessGroupNCCL(store, rank, world_size)
        else:
            self.group = dist.ProcessGroupGloo(store, rank, world_size, timeout)
        self.rank = rank
        self.device = torch.device(device)

    def send(self, state: dict[str, torch.Tensor]) -> None:
        for name, _, _ in weight_spec(state):
            self._broadcast(state[name].to(self.device).contiguous())
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def receive(self, spec: WeightSpec) -> Iterator[tuple[str, torch.Tensor]]:
        """Yields each tensor as it arrives, so an engine can load it before the next one lands."""
        for name, dtype, shape in spec:
            tensor = torch.empty(shape, dtype=dtype, device=self.device)
            self._broadcast(tensor)
            yield name, tensor

    def _broadcast(self, tensor: torch.Tensor) -> None:
        import torch.distributed as dist

        options = dist.BroadcastOptions()
        options.rootRank = 0
        self.group.broadcast([tensor], options).wait()


def ipc_handles(state: dict[str, torch.Tensor]) -> dict[str, tuple]:
    """CUDA IPC handles of GPU tensors (picklable; the tensors must stay alive until the receiver has loaded)."""
    from torch.multiprocessing.reductions import reduce_tensor

    return {name: reduce_tensor(t.detach().contiguous()) for name, t in state.items()}


def open_ipc_handles(handles: dict[str, tuple], device_index: int) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors behind `ipc_handles`, mapped on this process's view of the same GPU (its index may differ when
    the processes see different CUDA_VISIBLE_DEVICES)."""
    for name, (rebuild, args) in handles.items():
        args = list(args)
        args[6] = device_index  # rebuild_cuda_tensor's storage_device
        yield name, rebuild(*args)
