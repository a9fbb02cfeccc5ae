"""HAPO's history-aware length reward vs correctness-only GRPO on the built-in arithmetic task.

    python benchmarks/hapo_demo.py [--out runs/hapo_demo] [--seeds 0 1] [KEY=VALUE ...]

The quickstart recipe's warm-up data mixes concise and verbose (padded) solutions, so the SFT policy writes both.
One SFT warm-up (recipes/quickstart.yaml, trainer.steps=0) is shared by every RL run; then for each seed two RL runs
start from it with the same recipe and rollout budget, differing only in the reward:

    correctness:  accuracy                                   (1 / 0)
    hapo:         accuracy + hapo_length (cosine, weight 1)  (ALGORITHMS.md §5; h_i = shortest correct length so far)

Reported per run: held-out greedy accuracy and mean token length of the correct greedy answers (data.test), and
the training rollouts' mean correct length over the last 5 steps. The aim (HAPO's paper: 33-59% shorter for a 2-5
point drop) is at least 30% shorter correct answers for at most 5 points of accuracy. Extra KEY=VALUE overrides
apply to every run (e.g. trainer.steps=20). A run whose summary.json exists is not run again.
"""

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "quickstart.yaml"
ARMS = {
    "correctness": "[{fn: accuracy}]",
    "hapo": "[{fn: accuracy}, {fn: hapo_length, weight: 1.0, kwargs: {variant: cosine}}]",
}
LAST_STEPS = 5
RL_PROMPTS = 128
AIM_SHORTER = 0.30
AIM_ACCURACY_DROP = 0.05


def train(run_dir: Path, overrides: list[str]) -> float:
    """Runs `rlqa train` unless run_dir already holds a finished run; returns its wall time (0 when skipped)."""
    if (run_dir / "summary.json").is_file():
        return 0.0
    command = [sys.executable, "-m", "rlqa.cli", "train", str(RECIPE), *overrides, "logging.progress=false",
               "--run-dir", str(run_dir)]
    print("+", " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO)
    return time.perf_counter() - started


def result(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    after = summary["eval"]["after"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()] if summary.get(
        "steps") else []
    last = [row["rollout/length_correct_mean"] for row in rows[-LAST_STEPS:]]
    last = [value for value in last if value is not None and not math.isnan(value)]
    return {
        "accuracy": after["accuracy"],
        "length_correct": after["mean_length_correct"],
        "length": after["mean_length"],
        "train_length_correct": sum(last) / len(last) if last else math.nan,
        "train_correct": sum(row["correct/mean"] for row in rows[-LAST_STEPS:]) / len(rows[-LAST_STEPS:]) if rows else math.nan,
        "wall_s": summary.get("wall_seconds", math.nan),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "hapo_demo")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE recipe overrides for every run")
    args = parser.parse_args()
    out = args.out.resolve()
    started = time.perf_counter()

    sft_dir = out / "sft"
    train(sft_dir, ["trainer.steps=0", "trainer.eval_before=false", *args.overrides])
    # h_i is per prompt, so it only acts on a prompt's later visits: over the quickstart's 2000 training prompts at 16
    # per step, 40 steps never revisit one and HAPO would give 0 throughout. RL here draws 128 prompts from
    # the same task's train split (8 steps an epoch, 5 visits each); the warm-up above saw 2000.
    rl = ["sft=null", f"model.path={sft_dir / 'final'}", "trainer.eval_before=false", f"data.train.size={RL_PROMPTS}",
          *args.overrides]
    results: dict[tuple[str, int], dict] = {}
    for seed in args.seeds:
        for arm, terms in ARMS.items():
            run_dir = out / f"{arm}-seed{seed}"
            train(run_dir, [*rl, f"trainer.seed={seed}", f"rewards.terms={terms}"])
            results[arm, seed] = result(run_dir)

    sft = json.loads((sft_dir / "summary.json").read_text())["eval"]["after"]
    print(f"\nSFT warm-up (shared start): held-out greedy accuracy {sft['accuracy']:.3f}, "
          f"mean length of correct answers {sft['mean_length_correct']:.1f} tokens")
    print("\n| seed | reward | held-out accuracy | held-out length, correct | train length, correct (last 5) "
          "| train correct (last 5) | wall s |")
    print("|---|---|---|---|---|---|---|")
    for (arm, seed), r in sorted(results.items(), key=lambda item: (item[0][1], item[0][0])):
        print(f"| {seed} | {arm} | {r['accuracy']:.3f} | {r['length_correct']:.1f} | {r['train_length_correct']:.1f} "
              f"| {r['train_correct']:.3f} | {r['wall_s']:.0f} |")
    print()
    shorter, drops = [], []
    for seed in args.seeds:
        base, hapo = results["correctness", seed], results["hapo", seed]
        shorter.append(1 - hapo["length_correct"] / base["length_correct"])
        drops.append(base["accuracy"] - hapo["accuracy"])
        print(f"seed {seed}: HAPO correct answers {100 * shorter[-1]:.1f}% shorter, accuracy "
              f"{100 * (hapo['accuracy'] - base['accuracy']):+.1f} points")
    mean_shorter, mean_drop = sum(shorter) / len(shorter), sum(drops) / len(drops)
    met = mean_shorter >= AIM_SHORTER and mean_drop <= AIM_ACCURACY_DROP
    print(f"mean over seeds: {100 * mean_shorter:.1f}% shorter, accuracy {-100 * mean_drop:+.1f} points -> aim "
          f"(>= {100 * AIM_SHORTER:.0f}% shorter, <= {100 * AIM_ACCURACY_DROP:.0f} points drop) "
          f"{'met' if met else 'NOT met'}")
    print(f"total wall time of this invocation: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
