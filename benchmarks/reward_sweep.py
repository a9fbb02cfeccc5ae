"""The correctness reward over real benchmark data: every gold against itself, and against other problems' answers.

    python benchmarks/reward_sweep.py [--data ../shared/data] [--processes 2] [--mv-self] [--judge boxed|any]

Cases (tests/rewards/test_real_data.py asserts every one; this script times them):
- E3 test set (1288 problems): "\\boxed{gold}" scored against its own gold -> 1;
- GSM8K test set (1319): the published worked solution ("... <<9*2=18>>18 ... #### 1,234") scored against its own
  gold as the gsm8k loader reads it ("1234") -> 1;
- each problem against another problem's answer (a seeded derangement), and E3 problems against the other
  problems whose answer has the same value ("025" and "25") -> 1 exactly where the values are equal.

"Equal" is decided here without math-verify (`same_value`): numbers (integers, decimals, a/b, \\frac{a}{b}) compare as
exact fractions, anything else compares as text after dropping spacing and delimiters. So the reward disagreeing with
it, either way, fails the test. `--mv-self` also checks each E3 gold against itself through math-verify's parser
(bypassing the reward's string fast path), to count golds that math-verify cannot read. `--judge FORMAT` scores the
cases with `rewards.answers.judge` directly (answer_format FORMAT), each in a worker process under `--deadline-s`,
instead of through the `accuracy` reward.
"""

import argparse
import json
import random
import re
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.deadline_map import deadline_map  # noqa: E402
from rewards.answers import normalise  # noqa: E402
from rlqa.config import DatasetConfig  # noqa: E402
from rlqa.data import load_examples  # noqa: E402

# ../shared/data next to the checkout when present, else the copies of the two test sets kept in the repository
_SHARED = REPO.parent / "shared" / "data"
DATA = _SHARED if (_SHARED / "e3" / "test.jsonl").is_file() else REPO / "tests" / "data" / "real"
SEED = 0

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_RATIO = re.compile(r"(-?\d+)/(\d+)")
_FRAC = re.compile(r"(-?)\\frac(\d|\{\d+\})(\d|\{\d+\})")
_SPACING = re.compile(r"\\[,;:! ]|\\quad|\\qquad|\\left|\\right|\s+")
_DEGREES = re.compile(r"\^\{?\\circ\}?$")
_ASSIGNMENT = re.compile(r"^[a-zA-Z](?:_\{?\\?\w+\}?)?=(?!=)")  # "x=5", "m_{max}=...": the value is the right side


@dataclass(frozen=True)
class Case:
    name: str  # which check, e.g. "e3/self"
    completion: str
    gold: str
    expected: float


def value_key(answer: str) -> Fraction | str:
    """What `same_value` compares: an exact Fraction for a plain number, else the text without spacing; a leading
    "x=" is dropped (the value of "x=5" is 5)."""
    text = _SPACING.sub("", normalise(answer)).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = _ASSIGNMENT.sub("", _DEGREES.sub("", text))
    if _NUMBER.fullmatch(text):
        return Fraction(text)
    if match := _RATIO.fullmatch(text):
        return Fraction(int(match[1]), int(match[2]))
    if match := _FRAC.fullmatch(text):
        numerator, denominator = (int(group.strip("{}")) for group in match.groups()[1:])
        return Fraction(-numerator if match[1] else numerator, denominator)
    return text


def same_value(a: str, b: str) -> bool:
    """Whether two gold answers have the same value, decided without math-verify.

    >>> same_value("025", "25"), same_value("$\\\\frac{1}{2}$", "0.5"), same_value("90^\\\\circ", "90")
    (True, True, True)
    >>> same_value("(1, 2)", "$(1,2)$"), same_value("2", "-2"), same_value("x+1", "1+x")
    (True, False, False)
    """
    return value_key(a) == value_key(b)


def derangement(n: int, seed: int) -> list[int]:
    """partner[i] != i for every i: the next index along a seeded random cycle through all n."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    partner = [0] * n
    for position, index in enumerate(order):
        partner[index] = order[(position + 1) % n]
    return partner


def e3_cases(golds: list[str]) -> list[Case]:
    cases = [Case("e3/self", f"\\boxed{{{gold}}}", gold, 1.0) for gold in golds]
    for i, j in enumerate(derangement(len(golds), SEED)):
        cases.append(Case("e3/other", f"\\boxed{{{golds[j]}}}", golds[i], float(same_value(golds[j], golds[i]))))
    groups: dict = {}
    for i, gold in enumerate(golds):
        groups.setdefault(value_key(gold), []).append(i)
    for members in groups.values():  # each problem against the next one with the same value: all must score 1
        for i, j in zip(members, members[1:] + members[:1]):
            if i != j:
                cases.append(Case("e3/equal", f"\\boxed{{{golds[j]}}}", golds[i], 1.0))
    return cases


def gsm8k_cases(published: list[str], golds: list[str]) -> list[Case]:
    """published: the file's worked solutions, as written; golds: the final answers the gsm8k loader reads."""
    cases = [Case("gsm8k/self", solution, gold, 1.0) for solution, gold in zip(published, golds)]
    for i, j in enumerate(derangement(len(golds), SEED)):
        cases.append(Case("gsm8k/other", published[j], golds[i], float(int(golds[i]) == int(golds[j]))))
    return cases


def e3_golds(data: Path = DATA) -> list[str]:
    return [example.answer for example in load_examples(data / "e3" / "test.jsonl")]


def all_cases(data: Path = DATA) -> list[Case]:
    gsm8k = data / "gsm8k" / "test.jsonl"
    published = [json.loads(line)["answer"] for line in gsm8k.read_text().splitlines()]
    golds = [example.answer for example in load_examples(gsm8k, DatasetConfig(path=str(gsm8k), format="gsm8k"))]
    return e3_cases(e3_golds(data)) + gsm8k_cases(published, golds)


def score(cases: list[Case]) -> list[float]:
    """The correctness reward on every case, in one call: its verifier pool spreads the checks over its workers."""
    from rewards.math import accuracy

    return accuracy([case.completion for case in cases], answer=[case.gold for case in cases])


def score_with_judge(cases: list[Case], answer_format: str, processes: int, deadline_s: float) -> list[float]:
    """`rewards.answers.judge` on every case, spread over worker processes, each case under its own deadline."""
    items = [(case.gold, case.completion, answer_format) for case in cases]
    outcomes = deadline_map(_judge, items, processes=processes, deadline_s=deadline_s, initializer=_warm_judge)
    return [1.0 if outcome.status == "ok" and outcome.value else 0.0 for outcome in outcomes]


def _judge(item: tuple[str, str, str]) -> bool:
    from rewards.answers import judge

    return judge(*item).correct


def _warm_judge() -> None:
    _judge(("1", "\\boxed{2}", "boxed"))  # imports math-verify and sympy before the first deadline


def mismatches(cases: list[Case], scores: list[float]) -> list[tuple[Case, float]]:
    return [(case, value) for case, value in zip(cases, scores) if value != case.expected]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--processes", type=int, default=None, help="verifier worker processes (default: the pool's)")
    parser.add_argument("--mv-self", action="store_true", help="also verify each E3 gold against itself in math-verify")
    parser.add_argument("--judge", choices=["boxed", "any"], help="score with rewards.answers.judge in this format")
    parser.add_argument("--deadline-s", type=float, default=5.0, help="per case, with --judge")
    args = parser.parse_args()
    if args.judge:
        main_judge(args)
        return

    import rewards.verify
    from rewards.verify import VerifierPool

    if args.processes:
        rewards.verify.DEFAULT_PROCESSES = args.processes
    started = time.perf_counter()
    cases = all_cases(args.data)
    rewards.verify.get_pool()._pool.start()  # the workers' start-up (importing math-verify) is timed apart
    ready = time.perf_counter()
    scores = score(cases)
    done = time.perf_counter()
    print(f"{len(cases)} cases, {rewards.verify.DEFAULT_PROCESSES} verifier processes")
    print(f"load data + start workers: {ready - started:.1f} s; scoring: {done - ready:.1f} s "
          f"({len(cases) / (done - ready):.0f} cases/s)")
    print_counts(cases, scores)
    if args.mv_self:
        golds = e3_golds(args.data)
        with VerifierPool(processes=rewards.verify.DEFAULT_PROCESSES) as pool:
            pool._pool.start()
            started = time.perf_counter()
            tasks = [("verify", gold, gold, None) for gold in golds]
            outcomes = pool._pool.run(tasks, rewards.verify.DEFAULT_DEADLINE_S)
            elapsed = time.perf_counter() - started
        unread = [(gold, o.status) for gold, o in zip(golds, outcomes) if not (o.status == "ok" and o.value)]
        print(f"math-verify self-check of {len(golds)} E3 golds (no string fast path): {elapsed:.1f} s, "
              f"{len(unread)} not verified: {unread[:10]}")


def main_judge(args) -> None:
    processes = args.processes or 2
    started = time.perf_counter()
    cases = all_cases(args.data)
    scores = score_with_judge(cases, args.judge, processes, args.deadline_s)
    elapsed = time.perf_counter() - started
    print(f"{len(cases)} cases, rewards.answers.judge(answer_format={args.judge!r}), {processes} worker processes")
    print(f"load data, start workers and score: {elapsed:.1f} s ({len(cases) / elapsed:.0f} cases/s)")
    print_counts(cases, scores)


def print_counts(cases: list[Case], scores: list[float]) -> None:
    counts: dict[str, list[int]] = {}
    for case, value in zip(cases, scores):
        counts.setdefault(case.name, [0, 0, 0])
        counts[case.name][0] += 1
        counts[case.name][1] += int(value == 1.0)
        counts[case.name][2] += int(value != case.expected)
    for name, (total, ones, wrong) in counts.items():
        print(f"  {name:12s} {total:5d} cases, {ones:5d} scored 1, {wrong} disagree with same_value")
    for case, value in mismatches(cases, scores)[:20]:
        print(f"  MISMATCH {case.name}: completion {case.completion[-80:]!r} gold {case.gold!r} "
              f"scored {value}, expected {case.expected}")


if __name__ == "__main__":
    main()
