"""LoRA against full fine-tuning on SmolLM2-135M-Instruct: trainable parameters, the learner's peak memory and its
step time, side by side in one invocation.

Both learners train on the same rollouts: 4 chat-templated arithmetic prompts x 4 samples x up to 24 tokens,
generated once by the base model (rlqa's HF backend), with GRPO advantages of a digit-share reward. Each mode runs in
a fresh process (so that its peak RSS is its own) with the recipe's KL term on (β = 0.05): full fine-tuning then
holds a frozen copy of the model as the reference, LoRA the base with its adapters switched off. A step is one
`Learner.update` (forward passes for π_old and π_ref, then backward and AdamW) plus `Learner.weights()`, the state
dict the rollout workers receive (with LoRA the adapters merged into it).

    python benchmarks/lora_vs_full.py models/smollm2-135m-instruct [--steps 3] [--rank 16]

(the model directory as `rlqa import-gguf --smollm2 DIR` writes it; README "Train a real pretrained model on a
laptop").
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

PROMPTS, SAMPLES, NEW_TOKENS = 4, 4, 24
SYSTEM = "Reply with only the final answer in \\boxed{}, for example \\boxed{7}."


def recipe(model_dir: str, mode: str, rank: int):
    from rlqa.recipe_files import validate_recipe

    lora = {"r": rank, "alpha": 2 * rank, "target_modules": "all-linear"} if mode == "lora" else None
    raw = {
        "model": {"path": model_dir, "lora": lora},
        "data": {"train": {"task": "arithmetic", "levels": [1, 2], "size": PROMPTS, "chat_template": True, "system_prompt": SYSTEM}},
        "rollout": {"prompts_per_step": PROMPTS, "rollouts_per_prompt": SAMPLES, "max_new_tokens": NEW_TOKENS},
        # LoRA's usual learning rate is ~10x full fine-tuning's; the cost measured here does not depend on it
        "learner": {"lr": 1e-4 if mode == "lora" else 1e-5, "torch_threads": 2, "micro_batch_size": 16},
        "algorithm": {"kl_coef": 0.05},
        "trainer": {"steps": 10},
    }
    return validate_recipe(raw, source="benchmark", base_dir=".")


def rollouts(model_dir: str, out: Path) -> None:
    """The shared batch: the base model's samples with GRPO advantages of the share of digits in each."""
    from rlqa.algorithms.advantages import get_advantage_estimator
    from rlqa.rollout.backends import make_backend
    from rlqa.rollout.types import GenerationRequest, SamplingParams
    from rlqa.trainer import build_driver

    r = recipe(model_dir, "full", 16)
    with tempfile.TemporaryDirectory() as scratch:
        driver = build_driver(r, Path(scratch))
    backend = make_backend(driver.model_dir, r.model, r.rollout)
    requests = [
        GenerationRequest(pid, i, driver.prompt_tokens[pid], seed=1000 * p + i)
        for p, pid in enumerate(driver.train) for i in range(SAMPLES)
    ]
    done = backend.generate(requests, SamplingParams(0.7, NEW_TOKENS), 0)
    rewards = torch.tensor([sum(ch.isdigit() for ch in d.text) / max(len(d.text), 1) for d in done])
    groups = torch.arange(PROMPTS).repeat_interleave(SAMPLES)
    advantages = get_advantage_estimator("grpo")(rewards, groups)
    rows = [
        {"prompt_tokens": list(d.prompt_tokens), "completion_tokens": list(d.completion_tokens), "old_logprobs": list(d.logprobs), "advantage": float(a)}
        for d, a in zip(done, advantages)
    ]
    out.write_text(json.dumps(rows))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(model_dir: str, mode: str, rank: int, samples_path: Path, steps: int) -> dict:
    """One learner in this process: its figures as a dict."""
    from rlqa.learner.batch import TrainSample
    from rlqa.learner.learner import Learner

    samples = [TrainSample(**row) for row in json.loads(samples_path.read_text())]
    before = peak_rss_mib()
    learner = Learner(model_dir, recipe(model_dir, mode, rank), total_steps=10)
    learner.start_rl()
    trainable = sum(p.numel() for p in learner.policy.trainable())
    total = sum(p.numel() for p in learner.policy.model.parameters())
    times, sync = [], []
    for step in range(steps):
        started = time.perf_counter()
        learner.update(samples, 1.0, step)
        times.append(time.perf_counter() - started)
        started = time.perf_counter()
        learner.weights()
        sync.append(time.perf_counter() - started)
    return {
        "mode": mode, "trainable": trainable, "parameters": total, "rss_before_mib": before, "peak_rss_mib": peak_rss_mib(),
        "update_s": times, "weights_s": sync,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--child", choices=["lora", "full"], help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    model_dir = str(Path(args.model_dir).resolve())
    if args.child:
        torch.manual_seed(0)
        print(json.dumps(child(model_dir, args.child, args.rank, args.samples, args.steps)))
        return
    with tempfile.TemporaryDirectory() as scratch:
        samples = Path(scratch) / "samples.json"
        rollouts(model_dir, samples)
        tokens = sum(len(row["completion_tokens"]) for row in json.loads(samples.read_text()))
        print(f"batch: {PROMPTS * SAMPLES} samples, {tokens} completion tokens; {args.steps} steps per mode", flush=True)
        results = {}
        for mode in ("lora", "full"):
            command = [sys.executable, __file__, model_dir, "--child", mode, "--samples", str(samples), "--steps", str(args.steps), "--rank", str(args.rank)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    print("| | trainable parameters | learner peak RSS | update (median) | weights for the workers (median) |")
    print("|---|---|---|---|---|")
    for mode, r in results.items():
        median = lambda xs: sorted(xs)[len(xs) // 2]
        name = f"LoRA r={args.rank}, all-linear" if mode == "lora" else "full fine-tuning"
        print(
            f"| {name} | {r['trainable']:,} ({100 * r['trainable'] / r['parameters']:.2f}%) | {r['peak_rss_mib']:.0f} MiB "
            f"(+{r['peak_rss_mib'] - r['rss_before_mib']:.0f} over imports) | {median(r['update_s']):.2f} s | {median(r['weights_s']):.2f} s |"
        )
    lora, full = results["lora"], results["full"]
    print(
        f"\nfull / LoRA: peak RSS x{full['peak_rss_mib'] / lora['peak_rss_mib']:.2f} "
        f"(above imports x{(full['peak_rss_mib'] - full['rss_before_mib']) / (lora['peak_rss_mib'] - lora['rss_before_mib']):.2f}), "
        f"update time x{sorted(full['update_s'])[len(full['update_s']) // 2] / sorted(lora['update_s'])[len(lora['update_s']) // 2]:.2f}"
    )


if __name__ == "__main__":
    main()
