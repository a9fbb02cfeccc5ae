import pytest

from rewards.length import easy_prompt_length_bias, hapo_length, length_penalty, overlong_penalty
from rlqa.errors import UserError


def _hapo(lengths, correct, history, variant="cosine"):
    return hapo_length(
        ["x"] * len(lengths),
        completion_length=lengths,
        correct=correct,
        history_length=history,
        variant=variant,
    )


# h = 100 throughout. Breakpoints L = 0, h/2, h, 3h/2, 2h, and beyond 2h.
LENGTHS = [0, 50, 100, 150, 200, 250]


def test_hapo_cosine_correct_at_breakpoints():
    # c = cos(π/2 · L/h): cos 0 = 1, cos(π/4) = √2/2 = 0.70711, cos(π/2) = 0, cos(3π/4) = -0.70711
    # → floored at -0.7; L = 2h and beyond: c = -1 → floored at -0.7.
    rewards = _hapo(LENGTHS, [True] * 6, [100] * 6)
    assert rewards == pytest.approx([1.0, 0.7071067811865476, 0.0, -0.7, -0.7, -0.7], abs=1e-12)


def test_hapo_cosine_incorrect_at_breakpoints():
    # min(0, c): min(0, 1) = 0, min(0, 0.70711) = 0, min(0, 0) = 0, min(0, -0.70711) = -0.70711, -1, -1.
    rewards = _hapo(LENGTHS, [False] * 6, [100] * 6)
    assert rewards == pytest.approx([0.0, 0.0, 0.0, -0.7071067811865476, -1.0, -1.0], abs=1e-12)


def test_hapo_linear_at_breakpoints():
    # c = 1 - L/h: 1, 0.5, 0, -0.5, then -1 from 2h on.
    correct = _hapo(LENGTHS, [True] * 6, [100] * 6, variant="linear")
    incorrect = _hapo(LENGTHS, [False] * 6, [100] * 6, variant="linear")
    assert correct == [1.0, 0.5, 0.0, -0.5, -0.7, -0.7]
    assert incorrect == [0.0, 0.0, 0.0, -0.5, -1.0, -1.0]


def test_hapo_just_below_twice_history_follows_the_curve():
    # L = 199, h = 100: cos(π/2 · 1.99) = -cos(0.005π) = -(1 - (0.015708)²/2) = -0.9998766, not yet the flat -1;
    # linear: 1 - 1.99 = -0.99.
    assert _hapo([199], [False], [100]) == pytest.approx([-0.9998766], abs=1e-7)
    assert _hapo([199], [False], [100], variant="linear") == pytest.approx([-0.99])


def test_hapo_without_history_is_zero_and_unknown_correctness_is_none():
    assert _hapo([0, 500, 500, 10], [True, True, False, None], [None, None, None, 100]) == [0.0, 0.0, 0.0, None]


def test_hapo_correct_always_beats_incorrect():
    # Total = correct + r_len with w = 1: correct ≥ 1 - 0.7 = 0.3 > 0 ≥ any incorrect total.
    lengths = list(range(0, 400, 7))
    correct = _hapo(lengths, [True] * len(lengths), [60] * len(lengths))
    incorrect = _hapo(lengths, [False] * len(lengths), [60] * len(lengths))
    assert min(1.0 + r for r in correct) == pytest.approx(0.3)
    assert max(incorrect) == 0.0


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0, 1.5, -0.5])
def test_every_hapo_weight_a_recipe_accepts_keeps_correct_above_wrong(tmp_path, weight):
    # total = accuracy (1/0) + w · r_len. Correct: r_len ≥ -0.7, so ≥ 1 - 0.7 w (0.3 at w = 1; -0.05 at w = 1.5);
    # wrong: r_len ≤ 0, so ≤ 0 for w ≥ 0 (w = -0.5 turns a long wrong answer's -1 into +0.5). The schema admits
    # exactly the weights for which the worst correct total beats the best wrong one, and names the key otherwise.
    from rlqa.recipe_files import validate_recipe

    raw = {"rewards": {"terms": [{"fn": "accuracy"}, {"fn": "hapo_length", "weight": weight}]}}
    if not 0 <= weight <= 1:
        with pytest.raises(UserError, match=r"rewards.terms.1: weight: hapo_length's weight must be in \[0, 1\]"):
            validate_recipe(raw, source="r.yaml", base_dir=tmp_path)
        return
    w = validate_recipe(raw, source="r.yaml", base_dir=tmp_path).rewards.terms[1].weight
    lengths = list(range(0, 400, 7))  # h = 60: from L = 0 (c = 1) past 2h (c = -1)
    correct = [1.0 + w * r for r in _hapo(lengths, [True] * len(lengths), [60] * len(lengths))]
    wrong = [0.0 + w * r for r in _hapo(lengths, [False] * len(lengths), [60] * len(lengths))]
    assert min(correct) == pytest.approx(1 - 0.7 * w) and max(wrong) == 0.0
    assert min(correct) > max(wrong)


def test_hapo_rejects_unknown_variant():
    with pytest.raises(UserError, match="variant='exp'"):
        _hapo([1], [True], [1], variant="exp")


def test_overlong_penalty_at_breakpoints():
    # L_max = 200, L_cache = 100: 0 up to 100, then (100 - L)/100: L = 150 → -0.5, L = 200 → -1; L > 200 → -1.
    rewards = overlong_penalty(
        ["x"] * 5, completion_length=[0, 100, 150, 200, 201], max_new_tokens=[200] * 5, cache_length=100
    )
    assert rewards == [0.0, 0.0, -0.5, -1.0, -1.0]


def test_overlong_penalty_default_cache_is_a_fifth_of_max_new_tokens():
    # L_max = 20480 → L_cache = 4096 (DAPO's pair); L = 18432 is halfway through the buffer: (16384 - 18432)/4096.
    assert overlong_penalty(["x"], completion_length=[18432], max_new_tokens=[20480]) == [-0.5]
    # L_max = 4 → 4 // 5 = 0 would divide by zero; the buffer is 1 token: L = 4 → (3 - 4)/1 = -1, L = 3 → 0.
    assert overlong_penalty(["x", "y"], completion_length=[3, 4], max_new_tokens=[4, 4]) == [0.0, -1.0]


@pytest.mark.parametrize("cache_length", [0, 201])
def test_overlong_penalty_rejects_cache_outside_generation_limit(cache_length):
    with pytest.raises(UserError, match="cache_length"):
        overlong_penalty(["x"], completion_length=[1], max_new_tokens=[200], cache_length=cache_length)


def test_length_penalty_is_linear_in_length():
    # -L/256: 0, -0.25, -1.
    assert length_penalty(["x"] * 3, completion_length=[0, 64, 256], max_new_tokens=[256] * 3) == [0.0, -0.25, -1.0]


def test_easy_prompt_length_bias():
    # μ = 0.001, L = 1000: μL = 1 → -1/2. L = 3000: -3/4. Rank 0.1 is still easy (≤); 0.11 and None are not.
    rewards = easy_prompt_length_bias(
        ["x"] * 6,
        completion_length=[1000, 3000, 1000, 1000, 1000, 1000],
        correct=[True, True, True, True, False, None],
        rank=[0.0, 0.1, 0.11, None, 0.0, 0.0],
    )
    assert rewards == [-0.5, -0.75, 0.0, 0.0, 0.0, None]
    # Added to accuracy 1 it is E3's 1 - μl/(1 + μl) = 0.5 at l = 1000.
    assert 1.0 + rewards[0] == 1 - 0.001 * 1000 / (1 + 0.001 * 1000)


def test_easy_prompt_length_bias_threshold_and_mu_are_arguments():
    # threshold 0.5 admits rank 0.3; μ = 0.01, L = 100 → -1/2.
    rewards = easy_prompt_length_bias(
        ["x"], completion_length=[100], correct=[True], rank=[0.3], threshold=0.5, mu=0.01
    )
    assert rewards == [-0.5]


def test_easy_prompt_length_bias_reads_the_live_difficulty_before_the_rank_column():
    # L = 1000 → -1/2 when easy. The live difficulty decides where there is one: 0.05 easy although the offline rank
    # says 0.9, 0.5 not easy although the rank says 0.0. None (the sampler knows nothing yet): the rank column.
    rewards = easy_prompt_length_bias(
        ["x"] * 4,
        completion_length=[1000] * 4,
        correct=[True] * 4,
        difficulty=[0.05, 0.5, None, None],
        rank=[0.9, 0.0, 0.1, 0.2],
    )
    assert rewards == [-0.5, 0.0, -0.5, 0.0]
    # outside rlqa (TRL passes only dataset columns) the rank column alone; with neither, a one-line user error
    assert easy_prompt_length_bias(["x"], completion_length=[1000], correct=[True], rank=[0.0]) == [-0.5]
    with pytest.raises(UserError, match="needs a `difficulty` column"):
        easy_prompt_length_bias(["x"], completion_length=[1000], correct=[True])


def test_every_function_returns_one_value_per_completion_and_ignores_other_columns():
    columns = {
        "completion_length": [10, 20, 30],
        "correct": [True, False, None],
        "history_length": [15, None, 5],
        "max_new_tokens": [40, 40, 40],
        "rank": [0.0, 0.5, 0.9],
        "difficulty": [0.05, None, 0.3],
        "prompt_id": ["a", "b", "c"],
        "answer": ["1", "2", "3"],
        "finish_reason": ["stop", "stop", "length"],
    }
    for reward in (hapo_length, overlong_penalty, length_penalty, easy_prompt_length_bias):
        assert len(reward(["p", "q", "r"], ["P", "Q", "R"], **columns)) == 3


def test_columns_shorter_than_completions_are_an_error():
    with pytest.raises(ValueError):
        length_penalty(["x", "y"], completion_length=[1], max_new_tokens=[10])
