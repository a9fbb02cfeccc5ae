"""RL on a real pretrained chat model, measured: SmolLM2-135M-Instruct learns to answer arithmetic in `\\boxed{}`.

Runs `rlqa train recipes/smollm2.yaml` once per seed, as a user would (each run is its own process, timed end to
end), and reports held-out greedy accuracy, sampled pass@1 (at the recipe's eval temperature) and the boxed-format
rate of greedy and of sampled answers (the share that are one final `\\boxed{}`; rewards.format.boxed_format) before
and after RL, per seed and as a mean with its paired difference.
"Before" is the recipe's evaluation before the first RL step, after the SFT warm-up; "imported" is the model as
`rlqa import-gguf` wrote it, scored with the same prompts and seeds (a run with no warm-up and no RL step).

    python benchmarks/smollm2_demo.py [--model DIR] [--seeds 0 1] [--out DIR] [OVERRIDE ...]
        DIR: the stand-in as `rlqa import-gguf --smollm2 DIR` writes it (default: the one tests/.cache holds)
        OVERRIDE: recipe keys for every run, e.g. trainer.steps=40

Writes OUT/results.md and OUT/results.json; a finished seed is not run again when the benchmark is restarted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from compare_arms import bootstrap_interval, mean_sd, read_run
from trl_compare_smollm2 import default_model

ROOT = Path(__file__).resolve().parent.parent
RECIPE = "recipes/smollm2.yaml"
KEYS = ("accuracy", "pass@1", "boxed_rate", "sampled_boxed_rate")


def train(model: Path, seed: int, overrides: list[str], run_dir: Path) -> float:
    """One run, in its own process; its wall-clock seconds (as recorded, when it had finished before)."""
    if (run_dir / "summary.json").is_file():
        return json.loads((run_dir / "demo_wall.json").read_text())["seconds"]
    cmd = [sys.executable, "-m", "rlqa.cli", "train", RECIPE, f"model.path={model}", f"trainer.seed={seed}",
           *overrides, "logging.progress=false", "--run-dir", str(run_dir)]
    print("+", " ".join(cmd), flush=True)
    started = time.perf_counter()
    with (run_dir.parent / f"{run_dir.name}.log").open("w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    seconds = time.perf_counter() - started
    (run_dir / "demo_wall.json").write_text(json.dumps({"seconds": seconds}))
    return seconds


def imported(model: Path, seed: int, overrides: list[str], out: Path) -> dict:
    """The imported model itself on the same held-out prompts and seeds: a run with no warm-up and no RL step."""
    run_dir = out / "imported"
    train(model, seed, [*overrides, "sft=null", "trainer.steps=0", "trainer.eval_after=false"], run_dir)
    return json.loads((run_dir / "summary.json").read_text())["eval"]["before"]  # no step: no metrics.jsonl


def report(runs: list[dict], base: dict | None, overrides: list[str]) -> str:
    lines = [f"`{' '.join(['rlqa train', RECIPE, *overrides])}`, seeds {', '.join(str(r['seed']) for r in runs)}.", ""]
    if base is not None:
        lines.append("Imported model (no training): " + ", ".join(f"{k} {base[k]:.3f}" for k in KEYS) + ".")
        lines.append("")
    lines += ["| seed | wall (min) | " + " | ".join(f"{k} before → after" for k in KEYS) + " |",
              "|---|---|" + "---|" * len(KEYS)]
    for r in runs:
        cells = " | ".join(f"{r['before'][k]:.3f} → {r['after'][k]:.3f}" for k in KEYS)
        lines.append(f"| {r['seed']} | {r['seconds'] / 60:.1f} | {cells} |")
    lines.append("")
    for k in KEYS:
        diffs = [r["after"][k] - r["before"][k] for r in runs]
        low, high = bootstrap_interval(diffs) if len(diffs) > 1 else (diffs[0], diffs[0])
        lines.append(f"- {k}: before {mean_sd([r['before'][k] for r in runs])}, after {mean_sd([r['after'][k] for r in runs])}; "
                     f"after − before per seed {', '.join(f'{d:+.3f}' for d in diffs)} (mean {statistics.fmean(diffs):+.3f}, "
                     f"bootstrap 95% [{low:+.3f}, {high:+.3f}])")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=default_model(), help="the stand-in model directory")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, help="output directory (default runs/smollm2-demo-<time>)")
    parser.add_argument("overrides", nargs="*", help="recipe overrides for every run")
    args = parser.parse_args()
    if args.model is None or not (args.model / "config.json").is_file():
        raise SystemExit("smollm2_demo.py: no stand-in model; `rlqa import-gguf --smollm2 DIR`, then --model DIR")
    out = (args.out or ROOT / "runs" / f"smollm2-demo-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = []
    base = None
    for seed in args.seeds:
        run_dir = out / f"seed{seed}"
        seconds = train(args.model.resolve(), seed, args.overrides, run_dir)
        _, summary = read_run(run_dir)
        runs.append({"seed": seed, "seconds": seconds, **summary["eval"]})
        if base is None:
            base = imported(args.model.resolve(), seed, args.overrides, out)
        text = report(runs, base, args.overrides)
        (out / "results.md").write_text(text)
        (out / "results.json").write_text(json.dumps({"imported": base, "runs": runs}, indent=1))
        print(text, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
