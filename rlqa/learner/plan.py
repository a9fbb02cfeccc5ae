"""How one optimizer step's sequences become micro-batches, on one learner or across a data-parallel group.

Pure functions over sequence lengths; the learner collates what they choose. A micro-batch is capped by a token
budget (padded size = sequences x longest, what a forward pass costs), by a number of sequences and by the share of
padding it may hold. Sequences are bucketed by length (longest first), so a micro-batch holds sequences of similar
length and little padding. Every loss aggregation weights a micro-batch by its share of the whole batch's
normaliser (`rlqa.learner.engine.normaliser_count`), so the grouping changes no gradient.
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


def pack_by_tokens(
    indices: list[int], lengths: list[int], max_tokens: int | None, max_sequences: int, max_pad_frac: float = 1.0
) -> list[list[int]]:
    """Micro-batches of `indices`, longest first (ties: lower index first, so every process plans the same), whose
    padded size (sequences x longest) stays within `max_tokens`, whose size stays within `max_sequences` and whose
    padding stays within `max_pad_frac` of its padded size. A sequence longer than the budget gets a micro-batch of
    its own. Each micro-batch keeps its padding within the bound, so the whole step does too."""
    batches: list[list[int]] = []
    current: list[int] = []
    longest = tokens = 0
    for index in sorted(indices, key=lambda i: (-lengths[i], i)):
        rows = len(current) + 1
        too_many = rows > max_sequences
        too_long = max_tokens is not None and rows * longest > max_tokens
        too_padded = 1 - (tokens + lengths[index]) / (rows * longest) > max_pad_frac if current else False
        if current and (too_many or too_long or too_padded):
            batches.append(current)
            current, tokens = [], 0
        if not current:
            longest = lengths[index]  # the first is the longest: lengths only fall from here
        current.append(index)
        tokens += lengths[index]
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


def plan_micro_batches(
    lengths: list[int], ranks: int, max_tokens: int | None, max_sequences: int, max_pad_frac: float = 1.0
) -> list[list[list[int]]]:
    """plan[rank] = that rank's micro-batches (sample indices; [] is a filler), the same count on every rank."""
    shards = shard_by_tokens(lengths, ranks)
    return equalize([pack_by_tokens(shard, lengths, max_tokens, max_sequences, max_pad_frac) for shard in shards])
