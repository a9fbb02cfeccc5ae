"""Two training arms from one SFT warm-up, over several seeds, compared at equal generated rollouts.

    python benchmarks/compare_arms.py e3 --seeds 0 1 2 3 4 --out runs/bench/e3
    python benchmarks/compare_arms.py dapo --seeds 0 1 2 --out runs/bench/dapo
    python benchmarks/compare_arms.py spread --seeds 0 1 2 3 4 --steps 40 --out runs/bench/spread

Presets:
  e3    E3's difficulty-based allocation with its (n_min, n_max) schedule, (8, 8) -> (6, 10) -> (4, 12), and the
        entropy-holding temperature, against uniform GRPO at a fixed T, on the quickstart with recurring prompts
        (data.train.size=256): every step spends the same rollout budget.
  dapo  recipes/dapo.yaml (dynamic sampling on) against the same recipe with dynamic sampling off. Dynamic sampling
        generates extra rounds, so the GRPO arm of each seed runs for as many steps as it takes to generate as many
        rollouts as the DAPO arm did (`rollout/generated`).

  spread  recipes/spread.yaml (prompts from mastered to never solved after the warm-up): uniform GRPO against DAPO's
        dynamic sampling, E3 (allocation with its schedule, and the temperature), QuestA hints, the learning-signal
        curriculum, and all of them together. Every arm stops at the same rollout budget (trainer.rollout_budget:
        --steps x prompts x rollouts per step), so arms that generate extra rounds train fewer steps (and reach
        less of schedules set by share of trainer.steps). Reports, per
        arm against uniform (paired by seed): the rollouts needed to reach the uniform arm's final held-out greedy
        accuracy as a ratio to uniform's budget, the final figures with bootstrap 95% intervals, the yield, and the
        final accuracy per level (a third of the prompts each).

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
    arms: tuple[Arm, ...]
    common: list[str]  # overrides for every RL run
    equal_generated: bool  # the second arm runs until it has generated what the first did
    budget: bool = False  # every arm stops at --steps x the step's rollouts (trainer.rollout_budget); the first is the reference


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
    "spread": Preset(
        arms=(
            Arm("uniform", "recipes/spread.yaml"),
            Arm("dapo", "recipes/spread.yaml", ["sampler.dynamic_sampling=true"]),
            Arm("e3", "recipes/spread.yaml", ["sampler.allocation=difficulty", "sampler.bounds_schedule=e3", "temperature.mode=entropy"]),
            Arm("hints", "recipes/spread.yaml", ["sampler.hints={column: steps}"]),
            Arm("curriculum", "recipes/spread.yaml", ["sampler.curriculum=signal"]),
            Arm("all", "recipes/spread.yaml", [
                "sampler.dynamic_sampling=true", "sampler.allocation=difficulty", "sampler.bounds_schedule=e3",
                "temperature.mode=entropy", "sampler.hints={column: steps}", "sampler.curriculum=signal",
            ]),
        ),
        common=[],
        equal_generated=False,
        budget=True,
    ),
    "dapo": Preset(
        arms=(Arm("dapo", "recipes/dapo.yaml"), Arm("grpo", "recipes/dapo.yaml", ["sampler.dynamic_sampling=false"])),
        common=[],
        equal_generated=True,
    ),
}
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def rlqa_train(recipe: str, overrides: list[str], run_dir: Path) -> None:
    """One run, skipped when it already finished and resumed when it stopped part-way (so an interrupted comparison
    can be rerun)."""
    if (run_dir / "summary.json").is_file():
        return
    resume = ["--resume"] if run_dir.is_dir() else []
    cmd = [sys.executable, "-m", "rlqa.cli", "train", recipe, *overrides, "logging.progress=false", "--run-dir", str(run_dir), *resume]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=REPO)


def read_run(run_dir: Path) -> tuple[list[dict], dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return rows, json.loads((run_dir / "summary.json").read_text())


def generated(row: dict) -> float:
    return row["rollout/generated"] if "rollout/generated" in row else row["rollout/count"]


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


def rollouts_to_reach(rows: list[dict], summary: dict, target: float) -> float:
    """Rollouts generated when held-out greedy accuracy first reached `target` (inf: never)."""
    for x, y in zip(*eval_curve(rows, summary, "accuracy")):
        if y >= target - 1e-12:
            return x
    return float("inf")


def interval(values: list[float]) -> str:
    low, high = bootstrap_interval(values)
    return f"{statistics.fmean(values):+.3f} [{low:+.3f}, {high:+.3f}]"


def budget_report(runs: dict, arms: tuple[Arm, ...], seeds: list[int], k: int) -> str:
    """Every arm against the first, paired by seed (module docstring, preset spread)."""
    reference = arms[0].name
    levels = sorted({key.split("/")[0] for (_, s) in runs.values() for key in s["eval"]["after"] if key.startswith("level=")},
                    key=lambda v: int(v.split("=")[1]))
    head = ["| arm | rollouts generated | greedy after | pass@1 after | " + f"pass@{k} after | informative tokens | "
            + " | ".join(f"{v} greedy after" for v in levels) + " |", "|---|" + "---|" * (5 + len(levels))]
    for arm in arms:
        results = [runs[(arm.name, seed)] for seed in seeds]
        cells = [mean_sd([sum(generated(r) for r in rows) for rows, _ in results])]
        cells += [mean_sd([s["eval"]["after"][key] for _, s in results]) for key in ("accuracy", "pass@1", f"pass@{k}")]
        cells.append(mean_sd([s["yield"]["informative_token_frac"] for _, s in results]))
        cells += [mean_sd([s["eval"]["after"][f"{v}/accuracy"] for _, s in results]) for v in levels]
        head.append(f"| {arm.name} | " + " | ".join(cells) + " |")
    before = [runs[(reference, seed)][1]["eval"]["before"] for seed in seeds]
    head += ["", "Before RL (the shared warm-up): greedy " + mean_sd([b["accuracy"] for b in before]) + ", "
             + ", ".join(f"{v} {mean_sd([b[f'{v}/accuracy'] for b in before])}" for v in levels) + "."]
    lines = ["", f"Against {reference}, paired by seed: rollouts to reach {reference}'s final greedy accuracy as a share of "
             f"{reference}'s budget (per seed; inf: never), and the final differences, mean and bootstrap 95% interval:", "",
             "| arm | rollouts to reach, per seed | mean ratio [95%] | greedy | pass@1 | " + f"pass@{k} |", "|---|---|---|---|---|---|"]
    for arm in arms:
        ratios, diffs = [], {key: [] for key in ("accuracy", "pass@1", f"pass@{k}")}
        for seed in seeds:
            ref_rows, ref_summary = runs[(reference, seed)]
            budget = sum(generated(r) for r in ref_rows)
            rows, summary = runs[(arm.name, seed)]
            ratios.append(rollouts_to_reach(rows, summary, ref_summary["eval"]["after"]["accuracy"]) / budget)
            for key in diffs:
                diffs[key].append(summary["eval"]["after"][key] - ref_summary["eval"]["after"][key])
        finite = all(r != float("inf") for r in ratios)
        low, high = bootstrap_interval(ratios) if finite else (float("nan"), float("inf"))
        ratio = f"{statistics.fmean(ratios):.2f} [{low:.2f}, {high:.2f}]" if finite else f"inf ({sum(r == float('inf') for r in ratios)} seeds never)"
        lines.append(f"| {arm.name} | " + ", ".join(f"{r:.2f}" for r in ratios) + f" | {ratio} | "
                     + " | ".join(interval(diffs[key]) for key in diffs) + " |")
    return "\n".join(head + lines)


def plot_levels(runs: dict, arms: tuple[Arm, ...], seeds: list[int], out: Path) -> Path:
    """Held-out greedy accuracy per level against rollouts generated, each arm's seeds in its colour."""
    some = next(iter(runs.values()))[1]
    levels = sorted({key.split("/")[0] for key in some["eval"]["after"] if key.startswith("level=")}, key=lambda v: int(v.split("=")[1]))
    fig, axes = plt.subplots(1, len(levels) + 1, figsize=(5 * (len(levels) + 1), 4), sharey=True)
    for ax, key in zip(axes, ["accuracy", *[f"{v}/accuracy" for v in levels]]):
        for arm, color in zip(arms, COLORS):
            for seed in seeds:
                xs, ys = eval_curve(*runs[(arm.name, seed)], key)
                ax.plot(xs, ys, color=color, alpha=0.6, marker="o", ms=2, label=arm.name if seed == seeds[0] else None)
        ax.set(title=f"held-out greedy {key.removesuffix('/accuracy')}", xlabel="rollouts generated")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = out / "arms_by_level.png"
    fig.savefig(path, dpi=100)
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

    first = preset.arms[0]
    sft_dir = args.sft_dir.resolve() if args.sft_dir else out / "warmup"
    if args.sft_dir is None:  # the warm-up once, shared by every arm and seed
        rlqa_train(first.recipe, ["trainer.steps=0", "trainer.eval_before=false", "trainer.eval_after=false"], sft_dir)
    common = ["sft=null", f"model.path={sft_dir / 'final'}", f"trainer.eval_every={args.eval_every}",
              f"trainer.eval_k={args.k}", *preset.common, *args.overrides]
    runs = {}
    if preset.budget:
        rollout = yaml.safe_load((sft_dir / "recipe.yaml").read_text())["rollout"]
        budget = args.steps * rollout["prompts_per_step"] * rollout["rollouts_per_prompt"]
        # trainer.steps as given (schedules by share of the run stay where they are): an arm whose extra rounds cost
        # more stops at the budget first, after fewer steps
        common += [f"trainer.rollout_budget={budget}"]
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
    if preset.budget:
        print(budget_report(runs, preset.arms, args.seeds, args.k))
        print(f"plot: {plot_levels(runs, preset.arms, args.seeds, out)}")
        return
    print(table(runs, preset.arms, args.seeds, args.k))
    print(f"plot: {plot(runs, preset.arms, args.seeds, args.k, out)}")


if __name__ == "__main__":
    main()
