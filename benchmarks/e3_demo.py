"""E3 demonstration: difficulty-based rollout allocation + entropy-holding temperature vs uniform GRPO at a fixed T.

Both arms start RL from the same SFT warm-up checkpoint, spend the same rollout budget every step
(prompts_per_step x rollouts_per_prompt), and differ only in `sampler.allocation` and `temperature.mode`.
Held-out greedy accuracy, pass@1 and pass@k are measured every `--eval-every` steps.

    python benchmarks/e3_demo.py --seeds 0 1 2 --out runs/e3_demo

prints a markdown table and writes PNG plots next to the runs (copy them to docs/img/ for docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ARMS = {
    "e3": ["sampler.allocation=difficulty", "temperature.mode=entropy"],
    "uniform": ["sampler.allocation=uniform", "sampler.n_min=null", "sampler.n_max=null", "temperature.mode=fixed"],
}
COLORS = {"e3": "tab:blue", "uniform": "tab:orange"}


def rlqa_train(recipe: str, overrides: list[str], run_dir: Path) -> None:
    """One run, skipped when it already finished (so an interrupted demo can be rerun)."""
    if (run_dir / "summary.json").is_file():
        return
    cmd = [sys.executable, "-m", "rlqa.cli", "train", recipe, *overrides, "logging.progress=false", "--run-dir", str(run_dir)]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def read_run(run_dir: Path) -> tuple[list[dict], dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return rows, json.loads((run_dir / "summary.json").read_text())


def eval_curve(rows: list[dict], summary: dict, key: str) -> tuple[list[int], list[float]]:
    """Held-out `key` at step 0 (before RL), at every periodic evaluation, and after the last step."""
    steps, values = [0], [summary["eval"]["before"][key]]
    for row in rows:
        if f"eval/{key}" in row:
            steps.append(row["step"] + 1)
            values.append(row[f"eval/{key}"])
    if steps[-1] != len(rows):
        steps.append(len(rows))
        values.append(summary["eval"]["after"][key])
    return steps, values


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def plot(runs: dict, k: int, out: Path) -> list[Path]:
    paths = []
    panels = [
        ("accuracy", "held-out greedy accuracy (pass@1, T=0)"),
        (f"pass@{k}", f"held-out pass@{k} (sampled, T=1)"),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (key, title) in zip(axes, panels):
        for (arm, seed), (rows, summary) in runs.items():
            steps, values = eval_curve(rows, summary, key)
            ax.plot(steps, values, color=COLORS[arm], alpha=0.8, marker="o", ms=3, label=f"{arm} (seed {seed})")
        ax.set(title=title, xlabel="RL step", ylabel="fraction of held-out prompts")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "e3_accuracy.png")
    fig.savefig(paths[-1], dpi=110)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for (arm, seed), (rows, _) in runs.items():
        steps = [r["step"] for r in rows]
        style = dict(color=COLORS[arm], alpha=0.8)
        axes[0].plot(steps, [r["sampler/all_wrong_frac"] for r in rows], label=f"{arm} (seed {seed})", **style)
        axes[1].plot(steps, [r["policy/entropy"] for r in rows], label=f"{arm} entropy (seed {seed})", **style)
        if arm == "e3":
            axes[1].plot(steps, [r["policy/target_entropy"] for r in rows], color="black", ls="--", lw=1,
                         label="E3 target" if seed == min(s for a, s in runs if a == "e3") else None)
        axes[2].plot(steps, [r["rollout/temperature"] for r in rows], label=f"{arm} (seed {seed})", **style)
    axes[0].set(title="all-wrong groups", xlabel="RL step", ylabel="fraction of prompts in the batch")
    axes[1].set(title="policy entropy at the sampling temperature", xlabel="RL step", ylabel="nats per token")
    axes[2].set(title="sampling temperature", xlabel="RL step", ylabel="temperature T")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / "e3_entropy_temperature.png")
    fig.savefig(paths[-1], dpi=110)
    return paths


def table(runs: dict, k: int) -> str:
    lines = [
        f"| arm | greedy acc before | greedy acc after | pass@1 after | pass@{k} after | all-wrong frac (mean) "
        f"| rollouts/step | entropy within 10% of target (steps after the first fifth) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        results = [(rows, s) for (a, _), (rows, s) in runs.items() if a == arm]
        if not results:
            continue
        within = []
        for rows, _ in results:
            tail = rows[len(rows) // 5:]
            target = [r["policy/target_entropy"] for r in tail]
            within.append(sum(abs(r["policy/entropy"] - t) <= 0.1 * t for r, t in zip(tail, target)) / len(tail))
        budgets = sorted({int(r["rollout/count"]) for rows, _ in results for r in rows})
        lines.append(
            f"| {arm} | {mean_sd([s['eval']['before']['accuracy'] for _, s in results])} "
            f"| {mean_sd([s['eval']['after']['accuracy'] for _, s in results])} "
            f"| {mean_sd([s['eval']['after']['pass@1'] for _, s in results])} "
            f"| {mean_sd([s['eval']['after'][f'pass@{k}'] for _, s in results])} "
            f"| {mean_sd([statistics.mean(r['sampler/all_wrong_frac'] for r in rows) for rows, _ in results])} "
            f"| {budgets} | {mean_sd(within)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("runs/e3_demo"))
    parser.add_argument("--sft-dir", type=Path, help="a finished warm-up run to start from (default: run it once)")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE recipe overrides for every RL run (e.g. data.train.size=128)")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    sft_dir = args.sft_dir or args.out / "warmup"
    if args.sft_dir is None:  # the warm-up once, shared by every arm and seed
        rlqa_train(args.recipe, ["trainer.steps=0", "trainer.eval_before=false", "trainer.eval_after=false"], sft_dir)
    common = [
        "sft=null", f"model.path={(sft_dir / 'final').resolve()}", f"trainer.steps={args.steps}",
        f"trainer.eval_every={args.eval_every}", f"trainer.eval_k={args.k}", *args.overrides,
    ]
    runs = {}
    for seed in args.seeds:
        for arm, overrides in ARMS.items():
            run_dir = args.out / f"{arm}-seed{seed}"
            rlqa_train(args.recipe, [*common, f"trainer.seed={seed}", *overrides], run_dir)
            runs[(arm, seed)] = read_run(run_dir)
    print(table(runs, args.k))
    for path in plot(runs, args.k, args.out):
        print(f"plot: {path}")


if __name__ == "__main__":
    main()
