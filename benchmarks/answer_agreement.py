"""Correctness-reward fidelity: rlqa's `rewards.answers.judge` and math-verify called directly, on our curated cases.

    python benchmarks/answer_agreement.py [--cases tests/rewards/data/equivalence_cases.jsonl] [--processes 2]
                                          [--deadline-s 10] [--show-disagreements]

Each case (benchmarks/equivalence_cases.py writes them) is scored by
- `judge(gold, prediction, "any")` and `judge(gold, prediction, "boxed")`;
- math-verify as its README calls it, defaults throughout: `verify(parse(gold), parse(prediction))`;
- the same with a bare gold put in `$...$` first (math-verify's parser reads a bare `1, 2` as its last number), which
  is how rlqa hands golds to math-verify; the fairer of the two baselines.
Every call runs in a worker process under its own deadline (`--deadline-s`; past it the verdict is "not equal").

Agreement with the expected verdicts is reported by family. For `boxed`, a case whose answer is only in free text is
expected to score 0 (that format reads only boxes, "The answer is" and "####"). Time is per call inside the worker,
after math-verify is imported; judge's parse cache is warm for golds repeated within a family, as in training.
"""

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.deadline_map import deadline_map  # noqa: E402

CASES = REPO / "tests" / "rewards" / "data" / "equivalence_cases.jsonl"
METHODS = ("judge_any", "judge_boxed", "mv_direct", "mv_gold_in_dollars")


def score(item: tuple[str, str, str]) -> bool:
    """One method's verdict on one (gold, prediction)."""
    method, gold, prediction = item
    if method.startswith("judge"):
        from rewards.answers import judge

        return judge(gold, prediction, "any" if method == "judge_any" else "boxed").correct
    from math_verify import parse, verify

    if method == "mv_gold_in_dollars" and not any(mark in gold for mark in ("$", "\\boxed", "####")):
        gold = f"${gold}$"
    return bool(verify(parse(gold), parse(prediction)))


def warm_up() -> None:
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    for method in METHODS:  # imports, and math-verify's compiled regexes
        score((method, "0", "\\boxed{0}"))


def expected(case: dict, method: str) -> bool:
    if method == "judge_boxed" and case["form"] != "boxed":
        return False
    return case["equivalent"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=Path, default=CASES)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--deadline-s", type=float, default=10.0)
    parser.add_argument("--show-disagreements", action="store_true")
    args = parser.parse_args()

    cases = [json.loads(line) for line in args.cases.read_text().splitlines() if line.strip()]
    verdicts = defaultdict(list)  # method -> [bool per case]
    seconds = defaultdict(list)
    problems = []
    for method in METHODS:  # a pool each: math-verify's own parse cache is not shared between methods
        items = [(method, case["gold"], case["prediction"]) for case in cases]
        outcomes = deadline_map(score, items, processes=args.processes, deadline_s=args.deadline_s, initializer=warm_up)
        for (_, gold, prediction), outcome in zip(items, outcomes):
            verdicts[method].append(outcome.status == "ok" and bool(outcome.value))
            seconds[method].append(outcome.seconds)
            if outcome.status != "ok":
                problems.append(f"{method} {outcome.status} on gold {gold!r} prediction {prediction[-60:]!r}: "
                                f"{outcome.value}")

    print(f"{len(cases)} cases from {args.cases.relative_to(REPO) if args.cases.is_relative_to(REPO) else args.cases}")
    print_agreement(cases, verdicts)
    print_speed(seconds)
    for problem in problems:
        print("  " + problem)
    if args.show_disagreements:
        for index, case in enumerate(cases):
            wrong = [m for m in METHODS if verdicts[m][index] != expected(case, m)]
            if wrong:
                print(f"  {case['family']:18s} expected {case['equivalent']!s:5s} wrong: {','.join(wrong):40s} "
                      f"gold {case['gold'][-40:]!r} prediction {case['prediction'][-70:]!r}")


def print_agreement(cases: list[dict], verdicts: dict) -> None:
    families = list(dict.fromkeys(case["family"] for case in cases))
    print("\n| family | cases (equal) | judge `any` | judge `boxed` | math-verify direct "
          "| math-verify, gold in `$…$` "
          "| judge `any` = math-verify direct | judge `any` = math-verify, gold in `$…$` |")
    print("|---|---|---|---|---|---|---|---|")
    for family in families + ["all"]:
        rows = [i for i, case in enumerate(cases) if family in ("all", case["family"])]
        cells = []
        for method in METHODS:
            right = sum(verdicts[method][i] == expected(cases[i], method) for i in rows)
            cells.append(f"{right}/{len(rows)}")
        for baseline in ("mv_direct", "mv_gold_in_dollars"):
            same = sum(verdicts["judge_any"][i] == verdicts[baseline][i] for i in rows)
            cells.append(f"{same}/{len(rows)}")
        equal = sum(cases[i]["equivalent"] for i in rows)
        name = f"**{family}**" if family == "all" else family
        print(f"| {name} | {len(rows)} ({equal}) | " + " | ".join(cells) + " |")


def print_speed(seconds: dict) -> None:
    print("\n| method | median per case | mean per case | slowest |")
    print("|---|---|---|---|")
    for method in METHODS:
        values = seconds[method]
        print(f"| {method} | {_ms(statistics.median(values))} | {_ms(statistics.fmean(values))} | {_ms(max(values))} |")


def _ms(value: float) -> str:
    return f"{value * 1e6:.0f} µs" if value < 1e-3 else f"{value * 1e3:.1f} ms"


if __name__ == "__main__":
    main()
