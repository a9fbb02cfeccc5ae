"""The micro-batch plan of a learner group: shares balanced by tokens, a token budget, equal counts per rank."""

from rlqa.learner.deepspeed_engine import deepspeed_config
from rlqa.learner.plan import equalize, pack_by_tokens, plan_micro_batches, shard_by_tokens
from rlqa.config import LearnerConfig
from rlqa.learner.batch import TrainSample
from rlqa.learner.engine import micro_batch_plan


def test_shards_balance_tokens_longest_first():
    # lengths 5, 3, 8, 2 in order of length: 8 (i2) -> rank 0 (load 8); 5 (i0) -> rank 1 (5); 3 (i1) -> rank 1
    # (least loaded, 5 < 8; now 8); 2 (i3) -> tie 8 = 8, the lower rank: rank 0 (10). Shares keep index order.
    assert shard_by_tokens([5, 3, 8, 2], 2) == [[2, 3], [0, 1]]


def test_one_rank_takes_everything():
    assert shard_by_tokens([4, 1, 7], 1) == [[0, 1, 2]]


def test_packing_respects_the_padded_token_budget():
    # longest first: 2 (8), 0 (5), 1 (3), 3 (2). Budget 10: [2, 0] would pad to 2 x 8 = 16; [0, 1] pads to
    # 2 x 5 = 10 <= 10; adding 3 would pad to 3 x 5 = 15, so 3 starts its own micro-batch.
    assert pack_by_tokens([0, 1, 2, 3], [5, 3, 8, 2], max_tokens=10, max_sequences=64) == [[2], [0, 1], [3]]


def test_packing_caps_sequences_and_keeps_an_overlong_sequence_alone():
    assert pack_by_tokens([0, 1, 2, 3, 4], [1] * 5, max_tokens=None, max_sequences=2) == [[0, 1], [2, 3], [4]]
    # 30 tokens exceed the budget of 20 on their own: a micro-batch of one, never dropped; the two 4s pad to 8
    assert pack_by_tokens([0, 1, 2], [4, 30, 4], max_tokens=20, max_sequences=64) == [[1], [0, 2]]


LENGTHS = [10, 9, 6, 5, 10, 3]  # 43 tokens


def pad_fraction(batches: list[list[int]], lengths: list[int]) -> float:
    """Padded / processed tokens of micro-batches each padded to its longest sequence (what learner/pad_frac logs)."""
    processed = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths[i] for b in batches for i in b) / processed


def test_bucketing_keeps_each_micro_batchs_padding_within_the_bound():
    # longest first (ties: lower index): 0 (10), 4 (10), 1 (9), 2 (6), 3 (5), 5 (3). With 15%: [0, 4, 1] holds
    # 29 of 30 tokens; + 2: 35 of 40, 12.5% padding; + 3 would be 40 of 50 (20%), so 3 starts a micro-batch; + 5
    # would be 8 of 10 (20%), so 5 does too. Padding: 1 - 43 / (40 + 5 + 3) = 5/48.
    buckets = pack_by_tokens(list(range(6)), LENGTHS, max_tokens=None, max_sequences=64, max_pad_frac=0.15)
    assert buckets == [[0, 4, 1, 2], [3], [5]]
    assert pad_fraction(buckets, LENGTHS) == 1 - 43 / 48 < 0.15
    # no bound: one micro-batch padded to 10, 1 - 43 / 60 = 28%; the old order (index order, 2 per micro-batch)
    # pads to 2 x 10 + 2 x 6 + 2 x 10 = 52 tokens: 1 - 43 / 52 = 17%
    assert pack_by_tokens(list(range(6)), LENGTHS, None, 64) == [[0, 4, 1, 2, 3, 5]]
    assert pad_fraction([[0, 4, 1, 2, 3, 5]], LENGTHS) == 1 - 43 / 60
    assert pad_fraction([[0, 1], [2, 3], [4, 5]], LENGTHS) == 1 - 43 / 52


def test_micro_batch_pad_frac_is_what_the_learner_plans_with():
    samples = [TrainSample([1] * (n - 1), [2], [-1.0], 0.0) for n in LENGTHS]
    assert micro_batch_plan(LearnerConfig(), samples) == [[0, 4, 1, 2], [3], [5]]  # the default: 15%
    assert micro_batch_plan(LearnerConfig(micro_batch_pad_frac=0.3), samples) == [[0, 4, 1, 2, 3, 5]]
    assert micro_batch_plan(LearnerConfig(micro_batch_pad_frac=0.0), samples) == [[0, 4], [1], [2], [3], [5]]


def test_equalize_splits_the_largest_then_pads_with_fillers():
    # rank 0 has one micro-batch of 3 sequences, rank 1 has 3: split [0, 1, 2] -> [0, 1], [2]; then [0, 1] -> [0], [1]
    assert equalize([[[0, 1, 2]], [[3], [4], [5]]]) == [[[0], [1], [2]], [[3], [4], [5]]]
    # rank 1 has a single sequence: it cannot be split, so two fillers ([]) make up the count
    assert equalize([[[0, 1], [2], [3]], [[4]]]) == [[[0, 1], [2], [3]], [[4], [], []]]


def test_plan_covers_every_sample_once_with_equal_counts():
    lengths = [12, 7, 30, 5, 5, 9, 21]
    plan = plan_micro_batches(lengths, 3, max_tokens=24, max_sequences=4)
    assert len({len(batches) for batches in plan}) == 1
    used = sorted(i for batches in plan for batch in batches for i in batch)
    assert used == list(range(len(lengths)))


def test_more_ranks_than_samples_gives_fillers():
    assert plan_micro_batches([6], 2, max_tokens=None, max_sequences=8) == [[[0]], [[]]]


def test_deepspeed_config_hands_micro_batching_to_the_learner():
    config = deepspeed_config(LearnerConfig(workers=2, zero_stage=2, grad_clip=0.5), world_size=2, dtype="float32")
    assert config["train_batch_size"] == 2 and config["gradient_accumulation_steps"] == 1
    assert config["zero_optimization"] == {"stage": 2}
    assert config["gradient_clipping"] == 0.5  # ZeRO clips and keeps the norm
    assert "bf16" not in config and "fp16" not in config
    stage0 = deepspeed_config(LearnerConfig(workers=2, zero_stage=0), world_size=2, dtype="bfloat16")
    assert stage0["gradient_clipping"] == 0.0 and stage0["bf16"] == {"enabled": True}  # stage 0: the learner clips
