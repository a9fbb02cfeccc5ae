"""rlqa against TRL's GRPOTrainer, side by side on one machine in one invocation.

Both start RL from the same SFT warm-up checkpoint, on the same tiny model, task split, prompts per step, rollouts
per step, max new tokens, learning rate, clipping and seed (TRL's settings are derived from the same recipe by
`trl_grpo.py`). Every run is its own process, so neither inherits the other's threads or caches.

    0. warm-up    rlqa SFT only (trainer.steps=0); its held-out greedy accuracy A0 sets the target A0 + 0.10
    1. RL runs    per seed: TRL GRPOTrainer, rlqa defaults (difficulty allocation + entropy temperature control),
                  rlqa with uniform allocation; held-out greedy accuracy every --eval-every steps
    2. SFT        continued SFT from the warm-up for the RL training time of rlqa defaults (seed 0)

The table it prints (and writes to OUT/results.md, with the raw figures in OUT/results.json):
    (a) throughput: completions/s and generated tokens/s per step, median over the steps after the first two, and
        the step-time split, from the seed-0 runs
    (b) time to target: training time (the sum of step times; start-up and evaluation are not counted) until the
        held-out greedy accuracy first reaches the target
    (c) RL against continued SFT at equal training time

    python benchmarks/trl_compare.py              # full: the quickstart recipe, 3 seeds (~20-25 min on 2 CPU cores)
    python benchmarks/trl_compare.py --quick      # a few minutes: smaller problem, one seed, a smoke check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_GAIN = 0.10  # the target is the warm-up's held-out accuracy plus ten points
SKIP_STEPS = 2  # warm-up steps left out of the throughput medians (first-call allocation, lazy imports)
PHASES = ("generate", "reward", "train", "sync", "other")


@dataclass(frozen=True)
class Plan:
    recipe: str
    steps: int  # RL steps per run
    eval_every: int
    seeds: tuple[int, ...]
    overrides: tuple[str, ...] = ()  # applied to every run (the quick mode shrinks the problem)


FULL = Plan("recipes/quickstart.yaml", steps=40, eval_every=5, seeds=(0, 1, 2))  # the quickstart's RL stage
QUICK = Plan(
    "recipes/quickstart.yaml",
    steps=4,
    eval_every=2,
    seeds=(0,),
    overrides=(
        "data.train.size=200", "data.test.size=32", "sft.max_steps=40", "rollout.prompts_per_step=4",
        "rollout.rollouts_per_prompt=4", "sampler.n_min=2", "sampler.n_max=6", "rollout.max_new_tokens=48",
    ),
)
SYSTEMS = {  # name -> extra recipe overrides; "trl" runs benchmarks/trl_grpo.py instead of rlqa
    "TRL GRPOTrainer": None,
    "rlqa defaults": (),
    "rlqa uniform allocation": ("sampler.allocation=uniform", "sampler.n_min=null", "sampler.n_max=null"),
}


# -- running -------------------------------------------------------------------------------------------------------


def run(cmd: list[str], log: Path) -> float:
    """Run one stage in its own process, output to `log`; its wall seconds. A failed stage stops the benchmark."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    started = time.perf_counter()
    with log.open("w") as f:
        code = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    seconds = time.perf_counter() - started
    if code != 0:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise SystemExit(f"stage failed (exit {code}): {' '.join(cmd)}\n--- {log} ---\n{tail}")
    return seconds


def rlqa_train(plan: Plan, overrides: list[str], run_dir: Path) -> float:
    cmd = [sys.executable, "-m", "rlqa.cli", "train", plan.recipe, *plan.overrides, *overrides, "logging.progress=false",
           "--run-dir", str(run_dir)]
    return run(cmd, run_dir.with_suffix(".log"))


def warm_up(plan: Plan, out: Path) -> dict:
    """The SFT warm-up every RL run starts from. A finished one in OUT/warmup (a run of the same recipe with
    trainer.steps=0, e.g. a link to the one other benchmarks made) is reused."""
    run_dir = out / "warmup"
    wall = None
    if not (run_dir / "summary.json").is_file():
        wall = rlqa_train(plan, ["trainer.steps=0", "trainer.eval_after=false", "trainer.eval_k=1"], run_dir)
    summary = read_json(run_dir / "summary.json")
    sft, evaluated = summary["sft"], summary["eval"].get("before") or summary["eval"]["after"]
    return {"model": str(run_dir / "final"), "accuracy": evaluated["accuracy"], "process_seconds": wall,
            "sft_seconds": sft["time/sft"], "sft_steps": sft["sft/steps"]}


def rl_overrides(plan: Plan, model: str, seed: int) -> list[str]:
    return [f"model.path={model}", "sft=null", f"trainer.steps={plan.steps}", f"trainer.seed={seed}",
            f"trainer.eval_every={plan.eval_every}", "trainer.eval_k=1", "trainer.eval_before=false",
            "trainer.eval_after=false", "checkpoint.every=0"]


def rl_run(plan: Plan, system: str, seed: int, model: str, out: Path) -> dict:
    run_dir = out / f"{system.replace(' ', '_')}-seed{seed}"
    overrides = rl_overrides(plan, model, seed)
    if SYSTEMS[system] is None:
        cmd = [sys.executable, "benchmarks/trl_grpo.py", plan.recipe, *plan.overrides, *overrides, "--run-dir", str(run_dir)]
        wall = run(cmd, run_dir.with_suffix(".log"))
    else:
        wall = rlqa_train(plan, [*overrides, *SYSTEMS[system]], run_dir)
    return {"system": system, "seed": seed, "run_dir": str(run_dir), "process_seconds": wall,
            "rows": [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]}


def continued_sft(plan: Plan, warm: dict, budget_s: float, out: Path) -> dict:
    """SFT from the warm-up checkpoint with as many steps as fit in `budget_s` at the warm-up's measured step time."""
    steps = max(round(budget_s / (warm["sft_seconds"] / warm["sft_steps"])), 1)
    run_dir = out / "continued_sft"
    rlqa_train(plan, [f"model.path={warm['model']}", "trainer.steps=0", "trainer.eval_before=false", "trainer.eval_k=1",
                      f"sft.max_steps={steps}"], run_dir)
    summary = read_json(run_dir / "summary.json")
    return {"steps": steps, "seconds": summary["sft"]["time/sft"], "accuracy": summary["eval"]["after"]["accuracy"]}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# -- measuring -----------------------------------------------------------------------------------------------------


def throughput(rows: list[dict]) -> dict:
    """Medians over the steps after the first SKIP_STEPS: per-step rates and seconds per phase."""
    steady = rows[SKIP_STEPS:] or rows
    phases = {p: [r.get(f"time/{p}") or 0.0 for r in steady] for p in PHASES[:-1]}
    phases["other"] = [max(r["time/step"] - sum(phases[p][i] for p in PHASES[:-1]), 0.0) for i, r in enumerate(steady)]
    total = sum(r["time/step"] for r in steady)
    return {
        "steps": len(steady),
        "step_s": statistics.median(r["time/step"] for r in steady),
        "completions_per_s": statistics.median(r["rollout/count"] / r["time/step"] for r in steady),
        "tokens_per_s": statistics.median(r["rollout/tokens"] / r["time/step"] for r in steady),
        "phase_s": {p: statistics.median(v) for p, v in phases.items()},
        "phase_share": {p: sum(v) / total for p, v in phases.items()},
    }


def time_to_target(rows: list[dict], target: float) -> dict:
    """Training seconds (sum of step times) through the first evaluated step whose held-out accuracy >= target."""
    elapsed, best = 0.0, None
    for r in rows:
        elapsed += r["time/step"]
        accuracy = r.get("eval/accuracy")
        if accuracy is None:
            continue
        best = accuracy if best is None else max(best, accuracy)
        if accuracy >= target - 1e-9:
            return {"seconds": elapsed, "step": r["step"] + 1, "best": best}
    return {"seconds": None, "step": None, "best": best, "total_seconds": elapsed}


def final_accuracy(rows: list[dict]) -> float | None:
    evaluated = [r["eval/accuracy"] for r in rows if r.get("eval/accuracy") is not None]
    return evaluated[-1] if evaluated else None


# -- reporting -----------------------------------------------------------------------------------------------------


def machine() -> str:
    import ray
    import torch
    import transformers
    import trl

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPU cores, {platform.system()} "
            f"{platform.release()}; Python {platform.python_version()}, torch {torch.__version__}, transformers "
            f"{transformers.__version__}, TRL {trl.__version__}, Ray {ray.__version__}; load average at start {load} "
            f"(shared machine)")


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "n/a"


def throughput_table(results: dict) -> list[str]:
    lines = ["| system (seed 0) | s/step | completions/s | gen. tokens/s | generate | reward | train | sync | other | completions/s vs TRL |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    trl = results["throughput"]["TRL GRPOTrainer"]["completions_per_s"]
    for system, t in results["throughput"].items():
        split = " | ".join(f"{t['phase_s'][p]:.2f} s ({t['phase_share'][p]:.0%})" for p in PHASES)
        lines.append(f"| {system} | {t['step_s']:.2f} | {t['completions_per_s']:.1f} | {t['tokens_per_s']:.0f} | {split} | "
                     f"{ratio(t['completions_per_s'], trl)} |")
    return lines


def target_cell(hit: dict) -> str:
    if hit["seconds"] is None:
        return f"not reached (best {hit['best']:.3f})" if hit["best"] is not None else "not reached"
    return f"{hit['seconds']:.0f} s (step {hit['step']})"


def target_table(results: dict) -> list[str]:
    seeds = results["plan"]["seeds"]
    lines = [f"| system | {' | '.join(f'seed {s}' for s in seeds)} | median | vs TRL | final accuracy (mean) |",
             "|---|" + "---|" * (len(seeds) + 3)]
    medians = {}
    for system, per_seed in results["time_to_target"].items():
        hits = [per_seed[str(s)] for s in seeds]
        reached = [h["seconds"] for h in hits]
        # a run that never reached the target counts as slower than any that did
        medians[system] = statistics.median(r if r is not None else float("inf") for r in reached)
        finals = [a for a in results["final_accuracy"][system].values() if a is not None]
        final = f"{statistics.fmean(finals):.3f}" if finals else "-"
        median = "not reached" if medians[system] == float("inf") else f"{medians[system]:.0f} s"
        finite = float("inf") not in (medians[system], medians["TRL GRPOTrainer"])
        vs = ratio(medians[system], medians["TRL GRPOTrainer"]) if finite else "n/a"
        lines.append(f"| {system} | {' | '.join(target_cell(h) for h in hits)} | {median} | {vs} | {final} |")
    return lines


def sft_table(results: dict) -> list[str]:
    c, warm = results["rl_vs_sft"], results["warmup"]
    return ["| from the warm-up checkpoint | training time | held-out greedy accuracy |", "|---|---|---|",
            f"| warm-up (SFT, {warm['sft_steps']} steps) | {warm['sft_seconds']:.0f} s | {warm['accuracy']:.3f} |",
            f"| + rlqa RL (defaults, seed 0, {results['plan']['steps']} steps) | {c['rl_seconds']:.0f} s | {c['rl_accuracy']:.3f} |",
            f"| + continued SFT ({c['sft']['steps']} steps) | {c['sft']['seconds']:.0f} s | {c['sft']['accuracy']:.3f} |"]


def goals(results: dict) -> list[str]:
    t = results["throughput"]
    speed = t["rlqa defaults"]["completions_per_s"] / t["TRL GRPOTrainer"]["completions_per_s"]
    share = t["rlqa defaults"]["phase_share"]
    overhead = share["reward"] + share["sync"] + share["other"]
    tt = {s: [h["seconds"] for h in v.values()] for s, v in results["time_to_target"].items()}
    reached = {s: [x for x in v if x is not None] for s, v in tt.items()}
    if reached["TRL GRPOTrainer"] and len(reached["rlqa defaults"]) == len(tt["rlqa defaults"]):
        ttt = statistics.median(tt["rlqa defaults"]) / statistics.median(reached["TRL GRPOTrainer"])
        ttt_text = f"{ttt:.2f}x TRL's (median over seeds)"
        ttt_met = ttt <= 0.5
    else:
        ttt_text, ttt_met = "not measurable: a run did not reach the target within the steps run", False
    mark = {True: "met", False: "NOT met"}
    return [f"- throughput >= 1.0x TRL: {speed:.2f}x ({mark[speed >= 1.0]})",
            f"- time to target <= 0.5x TRL: {ttt_text} ({mark[ttt_met]})",
            f"- framework overhead <= 10% of step time: reward + sync + other = {overhead:.0%} of rlqa's step time "
            f"({mark[overhead <= 0.10]}; a lower bound: Ray call and (de)serialization time inside generate and train "
            f"is counted there, not here)"]


def markdown(results: dict) -> str:
    plan, warm = results["plan"], results["warmup"]
    target = warm["accuracy"] + TARGET_GAIN
    return "\n".join([
        f"Machine: {results['machine']}.",
        f"Recipe {plan['recipe']} {' '.join(plan['overrides'])}; {plan['steps']} RL steps per run, held-out greedy "
        f"accuracy every {plan['eval_every']} steps; seeds {', '.join(map(str, plan['seeds']))}. Benchmark wall time "
        f"{results['wall_seconds'] / 60:.1f} min.",
        "",
        f"(a) Throughput (median over steps {SKIP_STEPS + 1}-{plan['steps']}; phase: median seconds per step "
        "(share of all step time)):",
        "",
        *throughput_table(results),
        "",
        f"(b) Time to target: training time until held-out greedy accuracy >= {target:.3f} (warm-up {warm['accuracy']:.3f} "
        f"+ {TARGET_GAIN:.2f}); evaluation and start-up not counted:",
        "",
        *target_table(results),
        "",
        "(c) RL against continued SFT at equal training time:",
        "",
        *sft_table(results),
        "",
        "Goals:",
        *goals(results),
        "",
    ])


# -- the whole benchmark -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="rlqa vs TRL GRPOTrainer: throughput, time to target, RL vs SFT")
    parser.add_argument("--quick", action="store_true", help="small problem, one seed: a smoke check in minutes")
    parser.add_argument("--out", type=Path, help="output directory (default runs/bench-trl-<time>)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    out = (args.out or ROOT / "runs" / f"bench-trl-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict = {"plan": asdict(plan), "machine": machine()}

    print(f"[bench] warm-up (SFT) -> {out / 'warmup'}", flush=True)
    warm = results["warmup"] = warm_up(plan, out)
    print(f"[bench] warm-up accuracy {warm['accuracy']:.3f} after {warm['sft_seconds']:.0f} s of SFT", flush=True)
    runs = []
    for seed in plan.seeds:
        for system in SYSTEMS:
            print(f"[bench] {system}, seed {seed}", flush=True)
            runs.append(rl_run(plan, system, seed, warm["model"], out))
            print(f"[bench]   {runs[-1]['process_seconds']:.0f} s", flush=True)

    target = warm["accuracy"] + TARGET_GAIN
    seed0 = {r["system"]: r for r in runs if r["seed"] == plan.seeds[0]}
    results["throughput"] = {s: throughput(r["rows"]) for s, r in seed0.items()}
    results["time_to_target"] = {s: {str(r["seed"]): time_to_target(r["rows"], target) for r in runs if r["system"] == s} for s in SYSTEMS}
    results["final_accuracy"] = {s: {str(r["seed"]): final_accuracy(r["rows"]) for r in runs if r["system"] == s} for s in SYSTEMS}
    results["process_seconds"] = {f"{r['system']} seed {r['seed']}": r["process_seconds"] for r in runs}

    rl_rows = seed0["rlqa defaults"]["rows"]
    rl_seconds = sum(r["time/step"] for r in rl_rows)
    print(f"[bench] continued SFT for {rl_seconds:.0f} s", flush=True)
    results["rl_vs_sft"] = {"rl_seconds": rl_seconds, "rl_accuracy": final_accuracy(rl_rows),
                            "sft": continued_sft(plan, warm, rl_seconds, out)}
    results["wall_seconds"] = time.perf_counter() - started
    write_results(out, results, markdown(results))
    return 0


def write_results(out: Path, results: dict, text: str) -> None:
    """OUT/results.json (raw figures) and OUT/results.md (the tables), printed too."""
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(text)
    print(text)
    print(f"[bench] results: {out / 'results.md'}")


if __name__ == "__main__":
    raise SystemExit(main())
