"""How one optimizer step's sequences become micro-batches, on one learner or across a data-parallel group.

Pure functions over sequence lengths; the learner collates what they choose. A micro-batch is capped by a token
budget (padded size = sequences x longest, what a forward pass costs) and by a number of sequences.
"""

from __future__ import annotations


def shard_by_tokens(lengths: list[int], ranks: int) -> list[list[int]]:
    """Sample indices per rank, balanced by token count: longest first, each to the least-loaded rank (ties: the
    lower rank). Deterministic, so every rank computes the same plan."""
    loads = [0] * ranks
    shards: list[list[int]] = [[] for _ in range(ranks)]
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        rank = min(range(ranks), key=lambda r: (loads[r], r))
        shards[rank].append(index)
        loads[rank] += lengths[index]
    return [sorted(shard) for shard in shards]


def pack_by_tokens(indices: list[int], lengths: list[int], max_tokens: int | None, max_sequences: int) -> list[list[int]]:
    """Micro-batches of `indices` (in order) whose padded size (sequences x longest) stays within `max_tokens` and
    whose size stays within `max_sequences`. A sequence longer than the budget gets a micro-batch of its own."""
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in indices:
        grown = max(longest, lengths[index])
        too_many = len(current) >= max_sequences
        too_long = max_tokens is not None and (len(current) + 1) * grown > max_tokens
        if current and (too_many or too_long):
            batches.append(current)
            current, grown = [], lengths[index]
        current.append(index)
        longest = grown
    if current:
        batches.append(current)
    return batches


def equalize(plan: list[list[list[int]]]) -> list[list[list[int]]]:
    """Give every rank the same number of micro-batches: split a rank's largest micro-batch in two while it has one
    with more than one sequence, then pad with fillers (empty lists) that train on nothing."""
    count = max(len(batches) for batches in plan)
    equal = []
    for batches in plan:
        batches = [list(b) for b in batches]
        while len(batches) < count and any(len(b) > 1 for b in batches):
            largest = max(range(len(batches)), key=lambda i: (len(batches[i]), -i))
            half = -(-len(batches[largest]) // 2)
            batches[largest : largest + 1] = [batches[largest][:half], batches[largest][half:]]
        equal.append(batches + [[] for _ in range(count - len(batches))])
    return equal


def plan_micro_batches(lengths: list[int], ranks: int, max_tokens: int | None, max_sequences: int) -> list[list[list[int]]]:
    """plan[rank] = that rank's micro-batches (sample indices; [] is a filler), the same count on every rank."""
    return equalize([pack_by_tokens(shard, lengths, max_tokens, max_sequences) for shard in shard_by_tokens(lengths, ranks)])
