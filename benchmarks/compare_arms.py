"""Two training arms from one SFT warm-up, over several seeds, compared at equal generated rollouts.

    python benchmarks/compare_arms.py e3 --seeds 0 1 2 3 4 --out runs/bench/e3
    python benchmarks/compare_arms.py dapo --seeds 0 1 2 --out runs/bench/dapo

Presets:
  e3    E3's difficulty-based allocation with its (n_min, n_max) schedule, (8, 8) -> (6, 10) -> (4, 12), and the
        entropy-holding temperature, against uniform GRPO at a fixed T, on the quickstart with recurring prompts
        (data.train.size=256): every step spends the same rollout budget.
  dapo  recipes/dapo.yaml (dynamic sampling on) against the same recipe with dynamic sampling off. Dynamic sampling
        generates extra rounds, so the GRPO arm of each seed runs for as many steps as it takes to generate as many
        rollouts as the DAPO arm did (`rollout/generated`).

The warm-up runs once (the recipe with trainer.steps=0) and every arm and seed starts RL from it. Held-out greedy
accuracy, pass@1 and pass@k are measured every --eval-every steps. Prints a markdown table with the paired
difference of the final held-out figures (first arm minus second, per seed) and its bootstrap 95% interval over
seeds, and writes a plot of held-out accuracy against rollouts generated.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Arm:
    name: str
    recipe: str
    overrides: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Preset:
    arms: tuple[Arm, Arm]
    common: list[str]  # overrides for every RL run
    equal_generated: bool  # the second arm runs until it has generated what the first did


PRESETS = {
    "e3": Preset(
        arms=(
            Arm("e3", "recipes/quickstart.yaml", ["sampler.allocation=difficulty", "temperature.mode=entropy",
                                                  "sampler.n_min=null", "sampler.n_max=null", "sampler.bounds_schedule=e3"]),
            Arm("uniform", "recipes/quickstart.yaml",
                ["sampler.allocation=uniform", "sampler.n_min=null", "sampler.n_max=null", "temperature.mode=fixed"]),
        ),
        common=["data.train.size=256"],
        equal_generated=False,
    ),
    "dapo": Preset(
        arms=(Arm("dapo", "recipes/dapo.yaml"), Arm("grpo", "recipes/dapo.yaml", ["sampler.dynamic_sampling=false"])),
        common=[],
        equal_generated=True,
    ),
}
COLORS = ("tab:blue", "tab:orange")


def rlqa_train(recipe: str, overrides: list[str], run_dir: Path) -> None:
    """One run, skipped when it already finished (so an interrupted comparison can be rerun)."""
    if (run_dir / "summary.json").is_file():
        return
    cmd = [sys.executable, "-m", "rlqa.cli", "train", recipe, *overrides, "logging.progress=false", "--run-dir", str(run_dir)]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=REPO)


def read_run(run_dir: Path) -> tuple[list[dict], dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return rows, json.loads((run_dir / "summary.json").read_text())


def generated(row: dict) -> float:
    return row.get("rollout/generated", row["rollout/count"])


def eval_curve(rows: list[dict], summary: dict, key: str) -> tuple[list[float], list[float]]:
    """Held-out `key` against rollouts generated so far: before RL, at every periodic evaluation, after the last step."""
    xs, ys, spent = [0.0], [summary["eval"]["before"][key]], 0.0
    for row in rows:
        spent += generated(row)
        if f"eval/{key}" in row:
            xs.append(spent)
            ys.append(row[f"eval/{key}"])
    if xs[-1] != spent:
        xs.append(spent)
        ys.append(summary["eval"]["after"][key])
    return xs, ys


def bootstrap_interval(diffs: list[float], resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of `diffs`, resampling them with replacement."""
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(diffs, k=len(diffs))) for _ in range(resamples))
    return means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def table(runs: dict, arms: tuple[Arm, Arm], seeds: list[int], k: int) -> str:
    keys = ["accuracy", "pass@1", f"pass@{k}"]
    lines = [
        "| arm | rollouts generated | " + " | ".join(f"{key} before | {key} after" for key in keys) + " | best greedy during run |",
        "|---|---|" + "---|---|" * len(keys) + "---|",
    ]
    for arm in arms:
        results = [runs[(arm.name, s)] for s in seeds]
        cells = [mean_sd([sum(generated(r) for r in rows) for rows, _ in results])]
        for key in keys:
            cells += [mean_sd([s["eval"]["before"][key] for _, s in results]), mean_sd([s["eval"]["after"][key] for _, s in results])]
        cells.append(mean_sd([max(eval_curve(rows, s, "accuracy")[1]) for rows, s in results]))
        lines.append(f"| {arm.name} | " + " | ".join(cells) + " |")
    first, second = arms
    lines += ["", f"Paired difference, {first.name} − {second.name}, final held-out figures (per seed, then the mean "
              "and its bootstrap 95% interval over seeds):", "",
              "| figure | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | 95% interval |",
              "|---|" + "---|" * len(seeds) + "---|---|"]
    for key in keys:
        diffs = [runs[(first.name, s)][1]["eval"]["after"][key] - runs[(second.name, s)][1]["eval"]["after"][key] for s in seeds]
        low, high = bootstrap_interval(diffs)
        lines.append(f"| {key} | " + " | ".join(f"{d:+.3f}" for d in diffs) + f" | {statistics.fmean(diffs):+.3f} | [{low:+.3f}, {high:+.3f}] |")
    return "\n".join(lines)


def plot(runs: dict, arms: tuple[Arm, Arm], seeds: list[int], k: int, out: Path) -> Path:
    panels = [("accuracy", "held-out greedy accuracy"), ("pass@1", "held-out pass@1 (sampled)"), (f"pass@{k}", f"held-out pass@{k}")]
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4))
    for ax, (key, title) in zip(axes, panels):
        for arm, color in zip(arms, COLORS):
            for seed in seeds:
                xs, ys = eval_curve(*runs[(arm.name, seed)], key)
                ax.plot(xs, ys, color=color, alpha=0.7, marker="o", ms=3, label=arm.name if seed == seeds[0] else None)
        ax.set(title=title, xlabel="rollouts generated", ylabel="fraction of held-out prompts")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / f"{'_vs_'.join(a.name for a in arms)}.png"
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", choices=sorted(PRESETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=40, help="RL steps of the first arm")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sft-dir", type=Path, help="a finished warm-up run to start from (default: run it once)")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE recipe overrides for every RL run")
    args = parser.parse_intermixed_args()
    preset = PRESETS[args.preset]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    first, second = preset.arms
    sft_dir = args.sft_dir.resolve() if args.sft_dir else out / "warmup"
    if args.sft_dir is None:  # the warm-up once, shared by every arm and seed
        rlqa_train(first.recipe, ["trainer.steps=0", "trainer.eval_before=false", "trainer.eval_after=false"], sft_dir)
    common = ["sft=null", f"model.path={sft_dir / 'final'}", f"trainer.eval_every={args.eval_every}",
              f"trainer.eval_k={args.k}", *preset.common, *args.overrides]
    runs = {}
    for seed in args.seeds:
        steps = args.steps
        for arm in preset.arms:
            run_dir = out / f"{arm.name}-seed{seed}"
            rlqa_train(arm.recipe, [*common, f"trainer.seed={seed}", f"trainer.steps={steps}", *arm.overrides], run_dir)
            runs[(arm.name, seed)] = read_run(run_dir)
            if preset.equal_generated:  # the next arm runs until it has generated as many rollouts as this one
                rollout = yaml.safe_load((run_dir / "recipe.yaml").read_text())["rollout"]
                spent = sum(generated(row) for row in runs[(arm.name, seed)][0])
                steps = round(spent / (rollout["prompts_per_step"] * rollout["rollouts_per_prompt"]))
    print(table(runs, preset.arms, args.seeds, args.k))
    print(f"plot: {plot(runs, preset.arms, args.seeds, args.k, out)}")


if __name__ == "__main__":
    main()
