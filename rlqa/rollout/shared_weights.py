"""Policy weights in one shared-memory file per run, which every rollout worker on the node maps without
deserialising anything.

    DIR/weights.bin    the tensors back to back, each at a 64-byte aligned offset (a tensor tied to another, like
                       embeddings = LM head, is stored once)
    DIR/weights.json   {"bytes": N, "tensors": [[name, dtype, shape, offset], ...]}

The learner copies its parameters straight into the mapped file (one memcpy per tensor); a worker maps the same
pages (`torch.from_file`) and copies each slice into its own parameters in place. No pickle, no object store, no
second copy of 0.5 GB: on SmolLM2-135M this is what takes the sync from seconds to a fraction of one.

DIR is `/dev/shm/rlqa-<run token>` (rlqa.cluster), which the run's reaper deletes when the driver ends, however it
ends. DIR is 0700 and its files 0600: the weights are the run's, not every local user's. The file is rewritten in place at each sync; a sync waits for every worker's load, so no reader is ever left
mapping a file half rewritten. A worker replaced between syncs loads the same file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch

ALIGN = 64  # bytes; any element size divides it
DATA, INDEX = "weights.bin", "weights.json"


def _aligned(offset: int) -> int:
    return -(-offset // ALIGN) * ALIGN


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name.removeprefix("torch."))


def write_weights(state: dict[str, torch.Tensor], directory: str | Path) -> int:
    """Write `state` into DIR/weights.bin (mapped, in place when its size is unchanged) and DIR/weights.json; the
    bytes written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    directory.chmod(0o700)  # mkdir's mode is masked by the umask, and does nothing to a directory already there
    entries, placed, size = [], {}, 0  # placed: storage address -> offset, so tied tensors share one copy
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
        if key not in placed:
            placed[key] = size = _aligned(size)
            size += tensor.numel() * tensor.element_size()
        entries.append([name, str(tensor.dtype), list(tensor.shape), placed[key]])
    data = directory / DATA
    if not data.exists() or data.stat().st_size != size:
        with _private_file(data) as f:
            f.truncate(size)
    buffer = torch.from_file(str(data), shared=True, size=size, dtype=torch.uint8)  # (bytes,) mapped
    written = set()
    for (name, _, shape, offset), tensor in zip(entries, state.values()):
        if offset not in written:
            _view(buffer, tensor.dtype, shape, offset).copy_(tensor.detach())
            written.add(offset)
    index = directory / INDEX
    partial = index.with_suffix(".tmp")
    with _private_file(partial) as f:
        f.write(json.dumps({"bytes": size, "tensors": entries}).encode())
    os.replace(partial, index)
    return size


def _private_file(path: Path):
    """`path` opened for writing from empty, readable and writable by its owner alone (0600 whatever the umask)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file already there keeps its mode through os.open
    return os.fdopen(fd, "wb")


def read_weights(directory: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for each tensor in DIR, as views of the mapped file (valid while the caller holds them)."""
    directory = Path(directory)
    index = json.loads((directory / INDEX).read_text())
    buffer = torch.from_file(str(directory / DATA), shared=True, size=index["bytes"], dtype=torch.uint8)
    for name, dtype, shape, offset in index["tensors"]:
        yield name, _view(buffer, _dtype(dtype), shape, offset)


def _view(buffer: torch.Tensor, dtype: torch.dtype, shape: list[int], offset: int) -> torch.Tensor:
    count = 1
    for d in shape:
        count *= d
    nbytes = count * torch.empty((), dtype=dtype).element_size()
    return buffer[offset : offset + nbytes].view(dtype).view(shape)
