import threading
import time

import pytest

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


def test_answer_format_any_reads_free_text():
    assert accuracy(["so it is 7"], answer=["7"]) == [0.0]
    assert accuracy(["so it is 7"], answer=["7"], answer_format="any") == [1.0]
    with pytest.raises(ValueError, match="answer_format 'free' is not one of boxed, any"):
        accuracy(["so it is 7"], answer=["7"], answer_format="free")


def test_accuracy_rejects_misaligned_answers():
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        accuracy(["\\boxed{1}", "\\boxed{2}"], answer=["1"])


def test_hostile_completions_score_zero_from_a_thread_within_their_deadlines():
    hostile = [
        "\\boxed{5^{5^{5^{5^{5^{5}}}}}}",  # sympy hangs evaluating the tower
        "\\boxed{\\frac{1}{2}",  # unbalanced: no answer can be extracted
        "The answer is \\frac{1}{2}}}}{{",  # unbalanced, taken after "The answer is"
        "\\boxed{" + "9" * 200_000 + "}",  # a 200 kB answer
        "The answer is " + "(" * 200_000,  # 200 kB of open parentheses
        "\\boxed{1\x00\x07\x1b2\x7f}",  # control characters
    ]
    completions = hostile + ["\\boxed{0.5}"]  # a healthy one in the same batch is still verified
    deadline_s = 2.0
    results, elapsed = [], []

    def call() -> None:
        start = time.monotonic()
        results.append(accuracy(completions, answer=["5"] * len(hostile) + ["\\frac{1}{2}"], verify_deadline_s=deadline_s))
        elapsed.append(time.monotonic() - start)

    thread = threading.Thread(target=call)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert results == [[0.0] * len(hostile) + [1.0]]
    # 7 items on 2 workers: at most 4 rounds of (deadline + forking a replacement, milliseconds).
    assert elapsed[0] < 4 * (deadline_s + 1.0)
