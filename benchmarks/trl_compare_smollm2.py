"""rlqa against TRL's GRPOTrainer on a real checkpoint, SmolLM2-135M-Instruct: throughput, side by side in one
invocation. The sibling of `trl_compare.py`, which compares on the tiny model and also measures time to target.

Both start from the stand-in checkpoint itself (no warm-up), with equal settings: the arithmetic prompts of
recipes/smollm2.yaml in the model's chat template, prompts per step x rollouts per prompt, max new tokens, learning
rate, the loss (GRPO advantages, clipped ratio, token-mean), one update per step, and the reward (math-verify
`accuracy` alone: TRL's baseline script knows no other term). TRL's settings are derived from the same recipe by
`trl_grpo.py`. Every run is its own process.

    per seed:         TRL GRPOTrainer, rlqa defaults
    then, first seed: rlqa with rollout.weight_sync=object_store (the transport before the shared-memory file, for
                      time/sync before and after), rlqa with rollout.async_steps=1 (generation of step t+1 overlaps
                      the update of step t)

The tables are rewritten after every run, so a benchmark stopped early keeps what it measured.

It prints (and writes to OUT/results.md, raw figures in OUT/results.json) completions/s and generated tokens/s per
step, median over the steps after the first two, with the step-time split (generate, reward, train, sync, other),
per seed, and the machine and library versions.

    python benchmarks/trl_compare_smollm2.py [--model DIR] [--steps 10] [--seeds 0 1] [--out DIR]
        DIR: the stand-in as `rlqa import-gguf --smollm2 DIR` writes it (default: the one tests/.cache holds)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from trl_compare import PHASES, ROOT, SKIP_STEPS, machine, ratio, run, throughput, write_results

RECIPE = "recipes/smollm2.yaml"
SHAPE = ("rollout.prompts_per_step=8", "rollout.rollouts_per_prompt=4", "rollout.max_new_tokens=24")
SYSTEMS = {"TRL GRPOTrainer": None, "rlqa defaults": ()}  # name -> extra overrides; None: benchmarks/trl_grpo.py
VARIANTS = {  # first seed only
    "rlqa object_store sync": ("rollout.weight_sync=object_store",),
    "rlqa async_steps=1": ("rollout.async_steps=1",),
}


def default_model() -> Path | None:
    found = sorted((ROOT / "tests" / ".cache").glob("smollm2-135m-instruct-*"))
    return found[-1] if found else None


def overrides(model: Path, steps: int, seed: int) -> list[str]:
    return [f"model.path={model}", "sft=null", *SHAPE, "rewards.terms=[{fn: accuracy}]", f"trainer.steps={steps}",
            f"trainer.seed={seed}", "trainer.eval_every=0", "trainer.eval_before=false", "trainer.eval_after=false",
            "checkpoint.every=0"]


def rl_run(system: str, extra: tuple[str, ...] | None, seed: int, model: Path, steps: int, out: Path) -> dict:
    run_dir = out / f"{system.replace(' ', '_')}-seed{seed}"
    common = overrides(model, steps, seed)
    if extra is None:
        cmd = [sys.executable, "benchmarks/trl_grpo.py", RECIPE, *common, "--run-dir", str(run_dir)]
    else:
        cmd = [sys.executable, "-m", "rlqa.cli", "train", RECIPE, *common, *extra, "logging.progress=false",
               "--run-dir", str(run_dir)]
    wall = run(cmd, run_dir.with_suffix(".log"))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"system": system, "seed": seed, "process_seconds": wall, "throughput": throughput(rows), "rows": rows}


def table(runs: list[dict]) -> list[str]:
    lines = ["| system | seed | s/step | completions/s | gen. tokens/s | generate | reward | train | sync | other | "
             "completions/s vs TRL |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    trl = {r["seed"]: r["throughput"]["completions_per_s"] for r in runs if r["system"] == "TRL GRPOTrainer"}
    for r in runs:
        t = r["throughput"]
        split = " | ".join(f"{t['phase_s'][p]:.2f} s ({t['phase_share'][p]:.0%})" for p in PHASES)
        lines.append(f"| {r['system']} | {r['seed']} | {t['step_s']:.2f} | {t['completions_per_s']:.2f} | "
                     f"{t['tokens_per_s']:.0f} | {split} | {ratio(t['completions_per_s'], trl.get(r['seed']))} |")
    return lines


def summary(runs: list[dict]) -> list[str]:
    """Per system: completions/s averaged over seeds, and its ratio to TRL's."""
    systems = list(dict.fromkeys(r["system"] for r in runs))
    mean = {s: statistics.fmean(r["throughput"]["completions_per_s"] for r in runs if r["system"] == s) for s in systems}
    sync = {s: statistics.fmean(r["throughput"]["phase_share"]["sync"] for r in runs if r["system"] == s) for s in systems}
    lines = ["| system | completions/s (mean over seeds) | vs TRL | sync share of step time |", "|---|---|---|---|"]
    lines += [f"| {s} | {mean[s]:.2f} | {ratio(mean[s], mean['TRL GRPOTrainer'])} | {sync[s]:.1%} |" for s in systems]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="rlqa vs TRL GRPOTrainer on SmolLM2-135M-Instruct: throughput")
    parser.add_argument("--model", type=Path, default=default_model(), help="the stand-in model directory")
    parser.add_argument("--steps", type=int, default=10, help="RL steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, help="output directory (default runs/bench-trl-smollm2-<time>)")
    args = parser.parse_args(argv)
    if args.model is None or not (args.model / "config.json").is_file():
        raise SystemExit("trl_compare_smollm2.py: no stand-in model; `rlqa import-gguf --smollm2 DIR`, then --model DIR")
    out = (args.out or ROOT / "runs" / f"bench-trl-smollm2-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict = {"model": str(args.model), "steps": args.steps, "seeds": args.seeds, "shape": SHAPE,
                     "machine": machine(), "runs": []}
    plan = [(s, seed) for seed in args.seeds for s in SYSTEMS] + [(s, args.seeds[0]) for s in VARIANTS]
    for system, seed in plan:
        print(f"[bench] {system}, seed {seed}", flush=True)
        extra = SYSTEMS[system] if system in SYSTEMS else VARIANTS[system]
        results["runs"].append(rl_run(system, extra, seed, args.model.resolve(), args.steps, out))
        t = results["runs"][-1]["throughput"]
        print(f"[bench]   {t['completions_per_s']:.2f} completions/s, {t['step_s']:.1f} s/step", flush=True)
        results["wall_seconds"] = time.perf_counter() - started
        write_results(out, results, report(results, args))
    return 0


def report(results: dict, args: argparse.Namespace) -> str:
    return "\n".join([
        f"Machine: {results['machine']}.",
        f"Model {args.model.name}; recipe {RECIPE} {' '.join(SHAPE)}, reward accuracy only; {args.steps} steps per run; "
        f"seeds {', '.join(map(str, args.seeds))}. Benchmark wall time {results['wall_seconds'] / 60:.1f} min.",
        "",
        f"Per run (median over steps {SKIP_STEPS + 1}-{args.steps}; phase: median seconds per step (share of all step "
        "time)):",
        "",
        *table(results["runs"]),
        "",
        *summary(results["runs"]),
        "",
    ])


if __name__ == "__main__":
    raise SystemExit(main())
