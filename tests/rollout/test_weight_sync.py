"""The broadcast channel on CPU (gloo): what rank 0 sends arrives at every other rank, named, in spec order."""

import threading

import torch

from rlqa.rollout.weight_sync import BroadcastChannel, free_port, weight_spec


def test_every_rank_receives_rank_0s_tensors():
    state = {"b.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.tensor([1, -2], dtype=torch.int64)}
    spec = weight_spec(state)
    assert spec == [("a.bias", torch.int64, (2,)), ("b.weight", torch.float32, (2, 3))]  # name order
    port, received = free_port(), {}

    def rank(r: int) -> None:
        channel = BroadcastChannel("127.0.0.1", port, r, 3, torch.device("cpu"), timeout_s=60)
        if r == 0:
            channel.send(state)
        else:
            received[r] = dict(channel.receive(spec))

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for r in (1, 2):
        assert set(received[r]) == set(state)
        for name, tensor in state.items():
            assert torch.equal(received[r][name], tensor) and received[r][name].dtype == tensor.dtype
