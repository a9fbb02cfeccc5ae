"""Weights from a learner process to a rollout engine on GPUs, by CUDA IPC (colocated) or NCCL (separate GPUs).

Two real processes; the receiver is the HF backend a RolloutWorker holds, loading through the methods the worker
calls (`load_ipc`, `join_channel` + `receive`).
"""

import pytest
import torch
import torch.multiprocessing as mp

from rlqa.models import build_char_tokenizer, build_tiny_model
from rlqa.config import TinyModelConfig
from rlqa.rollout.weight_sync import BroadcastChannel, free_port, ipc_handles, weight_spec

pytestmark = pytest.mark.gpu

SHAPE = TinyModelConfig(hidden_size=64, layers=2, heads=4, intermediate_size=128, max_positions=64)


def tiny(seed: int, device: str):
    return build_tiny_model(SHAPE, len(build_char_tokenizer()), seed).to(device)


def checksum(state: dict[str, torch.Tensor]) -> float:
    return float(sum(t.double().sum() for _, t in sorted(state.items())))


def receive_ipc(handles, results):
    from rlqa.rollout.hf_backend import HFBackend

    backend = HFBackend(tiny(1, "cuda"), build_char_tokenizer(), micro_batch_size=8)  # other weights (seed 1)
    backend.load_ipc(handles)
    results.put(checksum(backend.model.state_dict()))


def test_cuda_ipc_moves_the_learner_weights_into_a_colocated_engine():
    learner = tiny(0, "cuda")
    state = learner.state_dict()
    context = mp.get_context("spawn")
    results = context.Queue()
    receiver = context.Process(target=receive_ipc, args=(ipc_handles(state), results))
    receiver.start()
    received = results.get(timeout=120)
    receiver.join(timeout=60)
    assert receiver.exitcode == 0
    assert received == pytest.approx(checksum(state), rel=0, abs=0)  # the very same bits
    assert received != pytest.approx(checksum(tiny(1, "cuda").state_dict()))


def nccl_rank(rank, port, results):
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    model = tiny(rank, device)  # rank 0 is the learner; rank 1 starts from other weights
    channel = BroadcastChannel("127.0.0.1", port, rank, 2, device)
    if rank == 0:
        channel.send(model.state_dict())
    else:
        params = model.state_dict()
        for name, tensor in channel.receive(weight_spec(params)):
            params[name].copy_(tensor)
    results.put((rank, checksum(model.state_dict())))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL refuses two ranks on one GPU: needs 2 GPUs")
def test_nccl_broadcast_moves_the_learner_weights_to_another_gpu():
    context = mp.get_context("spawn")
    results = context.Queue()
    port = free_port()
    ranks = [context.Process(target=nccl_rank, args=(r, port, results)) for r in range(2)]
    for p in ranks:
        p.start()
    sums = dict(results.get(timeout=300) for _ in ranks)
    for p in ranks:
        p.join(timeout=60)
    assert sums[0] == sums[1]
