import json

from rewards.length import hapo_length
from rlqa.length_history import LengthHistory


def test_new_history_knows_nothing():
    history = LengthHistory()
    assert history.get("a") is None
    assert history.lengths_for(["a", "b"]) == [None, None]


def test_update_keeps_shortest_correct_length_and_skips_wrong_and_unknown():
    history = LengthHistory()
    # Prompt a: correct at 120 and 80, a wrong one at 10 and an unknown one at 5 → 80. Prompt b: only wrong → none.
    history.update(["a", "a", "a", "a", "b"], [120, 80, 10, 5, 30], [True, True, False, None, False])
    assert history.lengths_for(["a", "b"]) == [80, None]
    # A longer correct answer later does not raise h; a shorter one lowers it.
    history.update(["a"], [90], [True])
    assert history.get("a") == 80
    history.update(["a"], [60], [True])
    assert history.get("a") == 60


def test_two_steps_use_history_from_before_each_step():
    history = LengthHistory()

    # Step 1: no history yet, so every length reward is 0 even though correct answers of 100 and 200 arrive.
    ids, lengths, correct = ["p", "p"], [100, 200], [True, True]
    h = history.lengths_for(ids)
    assert h == [None, None]
    assert hapo_length(["x", "y"], completion_length=lengths, correct=correct, history_length=h) == [0.0, 0.0]
    history.update(ids, lengths, correct)
    assert history.get("p") == 100

    # Step 2: h = 100 from step 1. L = 50 (correct) → cos(π/4) = 0.70711; L = 100 (correct) → 0;
    # L = 300 (wrong) → -1. The 50 would give h = 50 had it been recorded first; it is recorded only afterwards.
    ids, lengths, correct = ["p", "p", "p"], [50, 100, 300], [True, True, False]
    h = history.lengths_for(ids)
    assert h == [100, 100, 100]
    rewards = hapo_length(["x"] * 3, completion_length=lengths, correct=correct, history_length=h)
    assert rewards[0] == 0.7071067811865476
    assert abs(rewards[1]) < 1e-12
    assert rewards[2] == -1.0
    history.update(ids, lengths, correct)
    assert history.get("p") == 50


def test_state_round_trips_through_json_keeping_id_types():
    history = LengthHistory()
    history.update(["a", 7, "7"], [12, 34, 56], [True, True, True])
    restored = LengthHistory()
    restored.load_state_dict(json.loads(json.dumps(history.state_dict())))
    # The int 7 and the string "7" stay distinct prompts.
    assert restored.lengths_for(["a", 7, "7", "missing"]) == [12, 34, 56, None]
    assert restored.state_dict() == history.state_dict()


def test_load_state_dict_replaces_what_was_there():
    history = LengthHistory()
    history.update(["old"], [5], [True])
    history.load_state_dict({"shortest_correct_length": [["new", 9]]})
    assert history.lengths_for(["old", "new"]) == [None, 9]
