import collections
import re
import statistics

import math_verify
import pytest

from rlqa.config import DatasetConfig
from rlqa.recipe_files import validate_recipe
from rlqa.errors import UserError
from rlqa.tasks.arithmetic import LEVELS, _Problem, _solution, split_of
from rlqa.tasks.arithmetic import make_examples as make_from_section


def make_examples(split: str, n: int, *, seed: int, **section) -> list:
    """The task's examples for a data section holding `split`, `size: n`, `seed` and `section`."""
    return make_from_section(DatasetConfig(task="arithmetic", split=split, size=n, seed=seed, **section))

PROMPT = re.compile(r"(\d+(?:[-+*]\d+)+)=\?\n")
STEP = re.compile(r"(-?\d+)([-+*])(\d+)=(?:.*=)?(-?\d+)")  # a step line; worked steps have parts in between
BOXED = re.compile(r"\\boxed\{(-?\d+)\}")


def expression(example) -> str:
    return PROMPT.fullmatch(example.prompt).group(1)


def boxed(solution: str) -> int:
    (value,) = BOXED.findall(solution)
    assert solution.endswith(f"\\boxed{{{value}}}")
    return int(value)


def test_hand_checked_solutions():
    problem = _Problem(operands=(23, 45, 12), operators=("+", "-"))
    # 23+45 = 68, 68-12 = 56; checks undo each step: 68-45 = 23, 56+12 = 68
    assert _solution(problem, verbose=False) == ("23+45=68\n68-12=56\n\\boxed{56}", 56)
    assert _solution(problem, verbose=True) == (
        "we have 23+45-12\n23+45=68\ncheck 68-45=23 ok\n68-12=56\ncheck 56+12=68 ok\nso the answer is 56\n\\boxed{56}",
        56,
    )
    # 12-45 = -33, -33+7 = -26: negative intermediate and final values
    assert _solution(_Problem((12, 45, 7), ("-", "+")), verbose=False) == ("12-45=-33\n-33+7=-26\n\\boxed{-26}", -26)
    # multiplication is re-checked by commuting: 0*7 = 0, check 7*0 = 0 (no division by zero)
    text, _ = _solution(_Problem((0, 7), ("*",)), verbose=True)
    assert text == "we have 0*7\n0*7=0\ncheck 7*0=0 ok\nso the answer is 0\n\\boxed{0}"


def test_same_arguments_give_the_same_list():
    first = make_examples("train", 300, seed=3, levels=(1, 2, 3, 4, 5))
    assert first == make_examples("train", 300, seed=3, levels=(1, 2, 3, 4, 5))
    assert [e.prompt for e in first] != [e.prompt for e in make_examples("train", 300, seed=4, levels=(1, 2, 3, 4, 5))]


def test_train_and_test_are_disjoint_for_any_seeds():
    train = {e.prompt for seed in (0, 1) for e in make_examples("train", 2000, seed=seed, levels=(1, 2, 3, 4, 5))}
    test = {e.prompt for seed in (0, 1) for e in make_examples("test", 400, seed=seed, levels=(1, 2, 3, 4, 5))}
    assert len(train) > 2000 and len(test) > 400  # the two seeds drew different problems
    assert train.isdisjoint(test)
    assert {split_of(p[:-3]) for p in train} == {"train"} and {split_of(p[:-3]) for p in test} == {"test"}


def test_prompt_ids_are_unique_and_name_the_split():
    examples = make_examples("test", 500, seed=0)
    assert len({e.prompt_id for e in examples}) == 500
    assert all(re.fullmatch(r"arith-test-[0-9a-f]{12}", e.prompt_id) for e in examples)


def test_levels_are_spread_evenly():
    examples = make_examples("train", 300, seed=0, levels=(2, 3, 4))
    assert collections.Counter(e.columns["level"] for e in examples) == {2: 100, 3: 100, 4: 100}
    # the order is shuffled, not grouped by level
    assert len({e.columns["level"] for e in examples[:20]}) == 3


def test_a_small_level_gives_all_it_has_and_the_others_share_the_rest():
    level_one_test = sum(split_of(f"{a}+{b}") == "test" for a in range(10) for b in range(10))
    assert level_one_test == 21
    # round-robin: 21 full rounds over 4 levels (84 examples), then the last 16 over levels 2, 3, 4 (6, 5, 5)
    examples = make_examples("test", 100, seed=0)
    assert collections.Counter(e.columns["level"] for e in examples) == {1: 21, 2: 27, 3: 26, 4: 26}
    assert {expression(e) for e in examples if e.columns["level"] == 1} == {
        f"{a}+{b}" for a in range(10) for b in range(10) if split_of(f"{a}+{b}") == "test"
    }


def test_each_level_matches_its_spec_and_rank():
    examples = make_examples("train", 500, seed=1, levels=(1, 2, 3, 4, 5))
    for example in examples:
        level = example.columns["level"]
        spec = LEVELS[level]
        operands = [int(x) for x in re.split(r"[-+*]", expression(example))]
        operators = set(re.findall(r"[-+*]", expression(example)))
        assert len(operands) == spec.operand_count
        assert max(operands) <= spec.max_operand and operators <= set(spec.operators)
        assert example.columns["rank"] == (level - 1) / 5
    # levels are disjoint: no level-2 problem could have been a level-1 one (two one-digit operands added)
    assert not any(
        e.columns["level"] == 2 and re.fullmatch(r"\d\+\d", expression(e)) for e in examples
    )
    assert {e.columns["rank"] for e in examples} == {0.0, 0.2, 0.4, 0.6, 0.8}


def test_the_sums_family_has_its_own_levels_and_ranks():
    examples = make_examples("train", 600, seed=2, levels=(6, 7, 8), worked_fraction=0.0, verbose_fraction=0.0)
    assert collections.Counter(e.columns["level"] for e in examples) == {6: 200, 7: 200, 8: 200}
    for example in examples:
        operands = [int(x) for x in expression(example).split("+")]
        assert len(operands) == example.columns["level"] - 4  # 2, 3 and 4 numbers
        assert 1 <= min(operands) and max(operands) <= 30
        assert example.columns["rank"] == {6: 0.0, 7: 1 / 3, 8: 2 / 3}[example.columns["level"]]
    # membership is decided within the family: 12+25 is a level-2 problem among the mixed levels and a level-6
    # one among the sums, and level 6 lists all 30 * 30 of its problems, 1 in 5 of them in the test split
    assert len(make_examples("train", 10, seed=0, levels=(6,))) == 10
    test_sums = {expression(e) for e in make_examples("test", 150, seed=0, levels=(6,))}
    listed = {f"{a}+{b}" for a in range(1, 31) for b in range(1, 31) if split_of(f"{a}+{b}") == "test"}
    assert test_sums <= listed and len(listed) < 250
    # a sum's solution is its running total, a line per addition
    assert _solution(_Problem((12, 7, 25, 3), ("+", "+", "+")), verbose=False)[0] == (
        "12+7=19\n19+25=44\n44+3=47\n\\boxed{47}"
    )


def test_hand_checked_worked_solutions():
    # 23+45: tens 20+40 = 60, ones 3+5 = 8, 60+8 = 68; 68-12: 60-10 = 50, 8-2 = 6, 50+6 = 56
    assert _solution(_Problem((23, 45, 12), ("+", "-")), verbose=False, worked=True) == (
        "23+45=(20+40)+(3+5)=60+8=68\n68-12=(60-10)+(8-2)=50+6=56\n\\boxed{56}",
        56,
    )
    # 17-52: 10-50 = -40, 7-2 = 5, -40+5 = -35; then -35+7 splits -35 into -30 and -5: -30+0, -5+7 = 2
    assert _solution(_Problem((17, 52, 7), ("-", "+")), verbose=False, worked=True)[0] == (
        "17-52=(10-50)+(7-2)=-40+5=-35\n-35+7=(-30+0)+(-5+7)=-30+2=-28\n\\boxed{-28}"
    )
    # three places, and a one-digit step that stays direct; padding wraps the worked lines
    assert _solution(_Problem((168, 12, 3), ("-", "+")), verbose=True, worked=True)[0] == (
        "we have 168-12+3\n168-12=(100+0)+(60-10)+(8-2)=100+50+6=156\ncheck 156+12=168 ok\n"
        "156+3=(100+0)+(50+0)+(6+3)=100+50+9=159\ncheck 159-3=156 ok\nso the answer is 159\n\\boxed{159}"
    )
    assert _solution(_Problem((6, 1), ("+",)), verbose=False, worked=True)[0] == "6+1=7\n\\boxed{7}"


def test_worked_parts_are_one_digit_facts_that_add_up():
    part = re.compile(r"\((-?\d+)([-+])(\d+)\)")
    for example in make_examples("train", 300, seed=3, worked_fraction=1.0, verbose_fraction=0.0):
        for line in example.solution.split("\n")[:-1]:
            if "(" not in line:
                continue
            _, split, summed, result = line.split("=")
            pairs = [(int(x), int(f"{sign}{y}")) for x, sign, y in part.findall(split)]
            for x, y in pairs:  # each part is one nonzero digit times a power of ten, or 0
                for v in (x, y):
                    assert v == 0 or str(abs(v)).rstrip("0") in "123456789" and len(str(abs(v)).rstrip("0")) == 1
            assert eval(summed) == sum(x + y for x, y in pairs) == int(result)


def test_every_solution_is_correct_arithmetic():
    examples = make_examples("train", 600, seed=2, levels=(1, 2, 3, 4, 5))
    for example in examples:
        expected = eval(expression(example))  # left-to-right equals Python's precedence for these levels
        assert boxed(example.solution) == expected
        assert example.answer == str(expected)
        for line in example.solution.replace("check ", "").removesuffix(" ok").split("\n"):
            if step := STEP.fullmatch(line.removesuffix(" ok")):
                left, op, right, result = step.groups()
                assert eval(f"{left}{op}{right}") == int(result)
    assert any(example.answer.startswith("-") for example in examples)


def test_answer_only_solutions_state_the_boxed_answer_and_change_nothing_else():
    section = dict(levels=(6, 7, 8), verbose_fraction=0.3, worked_fraction=0.4)
    full = make_examples("train", 1000, seed=4, **section)
    mixed = make_examples("train", 1000, seed=4, answer_only_fraction=0.7, **section)
    assert [e.prompt for e in full] == [e.prompt for e in mixed]
    short = [m for m in mixed if m.solution == f"\\boxed{{{m.answer}}}"]
    assert 650 <= len(short) <= 750  # 700 expected, sd 14.5
    # the other solutions are exactly those drawn without the option: its draws come from a stream of their own
    assert all(m.solution == f.solution for f, m in zip(full, mixed) if m not in short)
    assert make_examples("train", 50, seed=4, answer_only_fraction=1.0, **section)[0].solution.count("\n") == 0


def test_verbose_is_the_same_arithmetic_padded():
    concise = make_examples("train", 400, seed=5, verbose_fraction=0.0, worked_fraction=0.0)
    verbose = make_examples("train", 400, seed=5, verbose_fraction=1.0, worked_fraction=0.0)
    assert [e.prompt for e in concise] == [e.prompt for e in verbose]
    for short, long in zip(concise, verbose):
        assert short.solution.count("\n") < long.solution.count("\n")
        # the concise lines appear, in order, among the verbose ones
        long_lines = iter(long.solution.split("\n"))
        assert all(line in long_lines for line in short.solution.split("\n"))
    ratio = statistics.mean(len(e.solution) for e in verbose) / statistics.mean(len(e.solution) for e in concise)
    assert 1.8 <= ratio <= 4.0


def test_verbose_and_worked_fractions_are_respected():
    examples = make_examples("train", 1000, seed=0, levels=(2,), verbose_fraction=0.5, worked_fraction=0.2)
    verbose = sum(e.solution.startswith("we have ") for e in examples)
    worked = sum("(" in e.solution for e in examples)
    assert 430 <= verbose <= 570  # binomial(1000, 0.5): mean 500, sd 16
    assert 150 <= worked <= 250  # binomial(1000, 0.2): mean 200, sd 13


def test_math_verify_accepts_solutions_against_gold():
    examples = make_examples("test", 50, seed=0, levels=(1, 2, 3, 4, 5))
    assert any(e.answer.startswith("-") for e in examples)
    for example in examples:
        gold = math_verify.parse(example.answer, parsing_timeout=None)
        prediction = math_verify.parse(example.solution, parsing_timeout=None)
        assert math_verify.verify(gold, prediction, timeout_seconds=None), example
    wrong = math_verify.parse("\\boxed{1000}", parsing_timeout=None)
    gold = math_verify.parse(examples[0].answer, parsing_timeout=None)
    assert not math_verify.verify(gold, wrong, timeout_seconds=None)


def test_text_is_printable_ascii_or_newline():
    allowed = {chr(code) for code in range(32, 127)} | {"\n"}
    for example in make_examples("train", 500, seed=0, levels=(1, 2, 3, 4, 5)):
        assert set(example.prompt + example.solution + example.answer) <= allowed
        assert PROMPT.fullmatch(example.prompt)


def test_bad_sections_are_refused_by_the_schema():
    def message(section: dict) -> str:
        with pytest.raises(UserError) as err:
            validate_recipe({"data": {"train": {"task": "arithmetic", **section}}}, source="r.yaml", base_dir=".")
        return str(err.value)

    assert message({"levels": [1, 12]}) == "r.yaml: data.train: levels must be distinct values among [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], got [1, 12]"
    assert message({"levels": [8, 9]}) == (
        "r.yaml: data.train: levels must come from one family (1-5 mixed, 6-8 sums of small numbers, 9-11 sums of 2, 3 and 5 "
        "numbers), got [8, 9]"
    )
    assert message({"levels": [2, 6]}) == (
        "r.yaml: data.train: levels must come from one family (1-5 mixed, 6-8 sums of small numbers, 9-11 sums of 2, 3 "
        "and 5 numbers), got [2, 6]"
    )
    assert message({"levels": [2, 2]}).endswith("got [2, 2]")
    assert message({"levels": []}).endswith("got []")
    assert message({"verbose_fraction": 1.5}) == "r.yaml: data.train.verbose_fraction: Input should be less than or equal to 1"
    assert message({"size": 0}) == "r.yaml: data.train.size: Input should be greater than 0"
    assert message({"split": "valid"}) == "r.yaml: data.train.split: Input should be 'train' or 'test'"


def test_asking_for_more_problems_than_the_levels_have():
    with pytest.raises(UserError, match="asked for 22 test examples but these levels have 21"):
        make_examples("test", 22, seed=0, levels=(1,))
