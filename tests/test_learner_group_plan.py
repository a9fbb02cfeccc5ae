"""The micro-batch plan of a learner group: shares balanced by tokens, a token budget, equal counts per rank."""

from rlqa.learner.deepspeed_engine import deepspeed_config
from rlqa.learner.plan import equalize, pack_by_tokens, plan_micro_batches, shard_by_tokens
from rlqa.config import LearnerConfig


def test_shards_balance_tokens_longest_first():
    # lengths 5, 3, 8, 2 in order of length: 8 (i2) -> rank 0 (load 8); 5 (i0) -> rank 1 (5); 3 (i1) -> rank 1
    # (least loaded, 5 < 8; now 8); 2 (i3) -> tie 8 = 8, the lower rank: rank 0 (10). Shares keep index order.
    assert shard_by_tokens([5, 3, 8, 2], 2) == [[2, 3], [0, 1]]


def test_one_rank_takes_everything():
    assert shard_by_tokens([4, 1, 7], 1) == [[0, 1, 2]]


def test_packing_respects_the_padded_token_budget():
    # budget 10: [0 (5), 1 (3)] pads to 2 x 5 = 10 <= 10; adding 2 (8) would pad to 3 x 8 = 24; [2 (8), 3 (2)]
    # would pad to 2 x 8 = 16 > 10, so 3 starts its own micro-batch.
    assert pack_by_tokens([0, 1, 2, 3], [5, 3, 8, 2], max_tokens=10, max_sequences=64) == [[0, 1], [2], [3]]


def test_packing_caps_sequences_and_keeps_an_overlong_sequence_alone():
    assert pack_by_tokens([0, 1, 2, 3, 4], [1] * 5, max_tokens=None, max_sequences=2) == [[0, 1], [2, 3], [4]]
    # 30 tokens exceed the budget of 20 on their own: a micro-batch of one, never dropped
    assert pack_by_tokens([0, 1, 2], [4, 30, 4], max_tokens=20, max_sequences=64) == [[0], [1], [2]]


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
