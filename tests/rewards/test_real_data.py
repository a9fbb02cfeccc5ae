"""The correctness reward over the real benchmark test sets (copies in tests/data/real), every case at once.

E3 test set (1288 problems: AIME, AMC, MATH500, OlympiadBench): each gold, boxed, scores 1 against itself. GSM8K test
set (1319): each published worked solution scores 1 against its own answer. Each problem against another problem's
answer, and E3 problems against others of equal value: 1 exactly where the values are equal, decided without
math-verify by `same_value` (benchmarks/reward_sweep.py builds the cases and times the same sweep).
"""

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("reward_sweep", REPO / "benchmarks" / "reward_sweep.py")
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)
DATA = Path(__file__).resolve().parents[1] / "data" / "real"


@pytest.fixture(scope="module")
def scored():
    cases = sweep.all_cases(DATA)
    return cases, sweep.score(cases)


def test_the_data_is_all_there():
    cases = sweep.all_cases(DATA)
    counts = {name: sum(case.name == name for case in cases) for name in ("e3/self", "gsm8k/self")}
    assert counts == {"e3/self": 1288, "gsm8k/self": 1319}


@pytest.mark.parametrize("name", ["e3/self", "e3/other", "e3/equal", "gsm8k/self", "gsm8k/other"])
def test_the_reward_agrees_with_same_value_on_every_case(scored, name):
    cases, scores = scored
    selected = [(case, value) for case, value in zip(cases, scores) if case.name == name]
    wrong = [(case.completion[-60:], case.gold, value) for case, value in selected if value != case.expected]
    assert wrong == []


def test_other_problems_answers_include_equal_values_and_score_one_only_there(scored):
    cases, scores = scored
    other = [(case, value) for case, value in zip(cases, scores) if case.name.endswith("/other")]
    # The seeded derangement pairs 9 E3 and 11 GSM8K problems with another of the same value ("3" and "3", ...):
    # those score 1, the other 2587 score 0.
    assert sum(value for _, value in other) == 9 + 11
    assert len(other) == 1288 + 1319


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ("025", "25", True),  # AIME's zero-padded answers
        ("$\\frac{1}{2}$", "0.5", True),
        ("\\frac9{19}", "\\dfrac{9}{19}", True),
        ("-\\frac{3}{4}", "-3/4", True),
        ("90^\\circ", "90", True),
        ("(1, 2)", "$(1,2)$", True),
        ("x=5", "5", True),  # an equation's value is its right side
        ("$m_{\\max }=n^{2}-n-1$", "n^{2} - n - 1", True),
        ("2", "-2", False),
        ("\\frac{1}{2}", "\\frac{1}{3}", False),
        ("x+1", "1+x", False),  # not plain numbers and not the same text: treated as different
    ],
)
def test_same_value(a, b, equal):
    assert sweep.same_value(a, b) is equal
