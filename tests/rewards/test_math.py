import pytest

import rewards.math
from rewards.math import accuracy


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        ("so \\boxed{4}", "4", 1.0),
        ("so \\boxed{0.5}", "\\frac{1}{2}", 1.0),  # math-verify: 1/2 == 0.5
        ("\\boxed{\\frac{2}{4}}", "0.5", 1.0),
        ("\\boxed{-3}", "-3", 1.0),
        ("\\boxed{3}", "-3", 0.0),  # the sign matters
        ("\\boxed{-3.0}", "-3", 1.0),
        ("\\boxed{5}", "4", 0.0),
        ("The answer is $\\pi + 2$.", "$2+\\pi$", 1.0),  # E3 golds may carry their own $ delimiters
        ("\\boxed{90}", "90^\\circ", 1.0),
        ("\\boxed{(-\\infty, 0]}", "(-\\infty, 0]", 1.0),
        ("\\boxed{(-\\infty, 0)}", "(-\\infty, 0]", 0.0),  # open and closed ends differ
        ("I cannot solve this.", "4", 0.0),  # no answer extracted
        ("\\boxed{1234}", "Janet has 1,000 + 234 = 1,234 eggs.\n#### 1,234", 1.0),  # a GSM8K worked-solution gold
    ],
)
def test_accuracy(completion, gold, expected):
    assert accuracy([completion], answer=[gold]) == [expected]


def test_accuracy_reads_chat_completions_and_ignores_other_columns():
    completions = [
        [{"role": "assistant", "content": "so \\boxed{\\frac{1}{3}}"}],
        [{"role": "assistant", "content": "so \\boxed{3}"}],
    ]
    assert accuracy(completions, ["q1", "q2"], answer=["1/3", "1/3"], prompt_id=[0, 1], level=[2, 2]) == [1.0, 0.0]


def test_accuracy_caches_answers_and_stays_bounded(monkeypatch):
    monkeypatch.setattr(rewards.math, "CACHE_SIZE", 2)
    monkeypatch.setattr(rewards.math, "_cache", type(rewards.math._cache)())
    completions = ["\\boxed{0.25}", "\\boxed{1/4}", "\\boxed{0.2}"]
    assert accuracy(completions, answer=["\\frac{1}{4}"] * 3) == [1.0, 1.0, 0.0]
    assert list(rewards.math._cache) == [("1/4", "\\frac{1}{4}"), ("0.2", "\\frac{1}{4}")]  # the oldest evicted
    assert rewards.math._cache[("0.2", "\\frac{1}{4}")] is False


def test_accuracy_rejects_misaligned_answers():
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        accuracy(["\\boxed{1}", "\\boxed{2}"], answer=["1"])
