import torch

from rlqa.learner.batch import TrainSample, collate


def test_collate_aligns_targets_mask_and_old_logprobs_by_hand():
    # prompt [5, 6] + completion [7, 8]: position 1 predicts 7, position 2 predicts 8
    a = TrainSample([5, 6], [7, 8], [-0.1, -0.2], 1.5)
    # prompt [9] + completion [4, 3, 2]: positions 0, 1, 2 predict 4, 3, 2
    b = TrainSample([9], [4, 3, 2], [-0.3, -0.4, -0.5], -0.5)
    batch = collate([a, b], pad_token_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8], [9, 4, 3, 2]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1]]
    assert batch.targets.tolist() == [[6, 7, 8], [4, 3, 2]]
    assert batch.mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert torch.allclose(batch.old_logprobs, torch.tensor([[0.0, -0.1, -0.2], [-0.3, -0.4, -0.5]]))
    assert batch.advantages.tolist() == [1.5, -0.5]


def test_collate_right_pads():
    batch = collate([TrainSample([1], [2], [-1.0], 0.0), TrainSample([1, 2, 3], [4, 5], [-1.0, -2.0], 1.0)], pad_token_id=9)
    assert batch.input_ids.tolist() == [[1, 2, 9, 9, 9], [1, 2, 3, 4, 5]]
    assert batch.attention_mask.tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert batch.mask.tolist() == [[1, 0, 0, 0], [0, 0, 1, 1]]
