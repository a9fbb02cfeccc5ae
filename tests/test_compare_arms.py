"""benchmarks/compare_arms.py's arithmetic on hand-made runs: rollouts to reach a target, and the budget report."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_arms.py"
spec = importlib.util.spec_from_file_location("compare_arms", SCRIPT)
compare_arms = importlib.util.module_from_spec(spec)
sys.modules["compare_arms"] = compare_arms  # its dataclasses look their module up
spec.loader.exec_module(compare_arms)


def run(accuracies: list[float | None], after: float, generated_per_step: float = 100.0, before: float = 0.2):
    """Rows with `rollout/generated` and an eval/accuracy where given; the summary's before/after and yield."""
    rows = [{"step": i, "rollout/generated": generated_per_step, **({} if a is None else {"eval/accuracy": a, "eval/pass@1": a, "eval/pass@8": a})}
            for i, a in enumerate(accuracies)]
    figures = {"accuracy": after, "pass@1": after, "pass@8": after, "level=1/accuracy": after}
    summary = {"eval": {"before": {"accuracy": before, "pass@1": before, "pass@8": before, "level=1/accuracy": before},
                        "after": figures},
               "yield": {"informative_token_frac": 0.5}}
    return rows, summary


def test_rollouts_to_reach_reads_the_eval_curve():
    rows, summary = run([None, 0.4, None, 0.6], after=0.7)
    # curve: (0, 0.2), (200, 0.4), (400, 0.6), then after at 400 → 0.7 replaces nothing: the last eval is at 400
    assert compare_arms.rollouts_to_reach(rows, summary, 0.4) == 200.0
    assert compare_arms.rollouts_to_reach(rows, summary, 0.5) == 400.0
    assert compare_arms.rollouts_to_reach(rows, summary, 0.9) == float("inf")


def test_budget_report_ratios_and_paired_differences():
    arms = (compare_arms.Arm("uniform", "r.yaml"), compare_arms.Arm("fast", "r.yaml"))
    runs = {
        # uniform: 4 steps of 100 (budget 400), final 0.6 on both seeds
        ("uniform", 0): run([None, None, None, 0.6], after=0.6),
        ("uniform", 1): run([None, None, None, 0.6], after=0.6),
        # fast reaches 0.6 at 200 on seed 0 (ratio 0.5) and at 100 on seed 1 (0.25); finals 0.7 and 0.8
        ("fast", 0): run([None, 0.6, None, 0.7], after=0.7),
        ("fast", 1): run([0.65, None, None, 0.8], after=0.8),
    }
    report = compare_arms.budget_report(runs, arms, [0, 1], k=8)
    assert "| fast | 0.50, 0.25 | 0.38 [0.25, 0.50] |" in report  # mean (0.5 + 0.25) / 2 = 0.375
    assert "| uniform | 1.00, 1.00 | 1.00 [1.00, 1.00] |" in report
    # paired final differences: +0.1 and +0.2 → mean +0.15; the bootstrap interval of two values spans them
    assert "+0.150 [+0.100, +0.200]" in report
