"""How hard the training prompts are for a model: each prompt's pass rate over k samples, as a histogram per level.

    python benchmarks/difficulty_spread.py runs/bench/spread/warmup/final recipes/spread.yaml --k 8

Samples every training prompt of the recipe k times at T = 1 (seeded as held-out evaluation is), scores them with the
recipe's correctness reward, and prints a markdown table: per level, the mean pass rate, the share of prompts
mastered (pass rate >= 0.9), in between, and never solved in k samples, and pass@k; then the histogram of pass rates
in tenths. One process, the HF backend, no Ray.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from rlqa.recipe_files import load_recipe
from rlqa.data.sources import build_examples
from rlqa.evaluation import EVAL_STEP, scorer
from rlqa.models import load_tokenizer
from rlqa.rollout.backends import make_backend
from rlqa.rollout.seeding import sample_seed
from rlqa.rollout.types import GenerationRequest, SamplingParams
from rewards.pipeline import RewardPipeline


def pass_rates(model_dir: Path, recipe_path: Path, k: int, column: str) -> dict[str, list[float]]:
    """Pass rates of the training prompts over k samples, by the value of `column`."""
    recipe = load_recipe(recipe_path, [f"model.path={model_dir}"])
    tokenizer = load_tokenizer(model_dir)
    examples = build_examples(recipe.data.train, recipe, tokenizer, "data.train")
    backend = make_backend(str(model_dir), recipe.model, recipe.rollout)
    requests = [
        GenerationRequest(e.prompt_id, j, tuple(tokenizer(e.prompt, add_special_tokens=False).input_ids),
                          sample_seed(recipe.trainer.seed, EVAL_STEP, e.prompt_id, j))
        for e in examples
        for j in range(k)
    ]
    rollouts = backend.generate(requests, SamplingParams(1.0, recipe.rollout.max_new_tokens), 0)
    by_id = {e.prompt_id: e for e in examples}
    with RewardPipeline([], correctness=recipe.rewards.correctness, base_dir=Path(recipe.base_dir)) as pipeline:
        correct, _ = scorer(pipeline)([r.text for r in rollouts], [by_id[r.prompt_id] for r in rollouts])
    right: dict[str, int] = defaultdict(int)
    for rollout, ok in zip(rollouts, correct):
        right[rollout.prompt_id] += ok
    rates: dict[str, list[float]] = defaultdict(list)
    for e in examples:
        rates[str(e.columns.get(column))].append(right[e.prompt_id] / k)
    return rates


def table(rates: dict[str, list[float]], k: int, column: str) -> str:
    lines = [f"| {column} | prompts | mean pass rate | mastered (>= 0.9) | in between | never in {k} | pass@{k} |",
             "|---|---|---|---|---|---|---|"]
    groups = sorted(rates, key=lambda v: (len(v), v)) + ["all"]
    for value in groups:
        values = [r for v in rates for r in rates[v]] if value == "all" else rates[value]
        mastered = sum(r >= 0.9 for r in values) / len(values)
        never = sum(r == 0 for r in values) / len(values)
        lines.append(f"| {value} | {len(values)} | {sum(values) / len(values):.3f} | {mastered:.2f} | "
                     f"{1 - mastered - never:.2f} | {never:.2f} | {1 - never:.3f} |")
    lines += ["", "Pass rates in tenths (prompts): " + ", ".join(
        f"[{b / 10:.1f}, {(b + 1) / 10:.1f}{']' if b == 9 else ')'} {sum(min(int(r * 10), 9) == b for v in rates for r in rates[v])}"
        for b in range(10))]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--by", default="level", help="dataset column to group the prompts by")
    args = parser.parse_args()
    print(table(pass_rates(args.model_dir.resolve(), args.recipe, args.k, args.by), args.k, args.by))


if __name__ == "__main__":
    main()
