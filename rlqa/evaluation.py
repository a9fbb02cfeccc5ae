"""Held-out evaluation: unbiased pass@k and majority vote (maj@k), the evaluation `rlqa train` runs before and after
RL, and `rlqa eval` on a run directory, a checkpoint or any Hugging Face model directory.

`rlqa eval` runs the very evaluation training runs (same rollout workers, same seeds, same correctness function),
so its numbers are comparable with a run's summary.json.
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

from rlqa import checkpoint
from rlqa.cluster import ray_session
from rlqa.config import DatasetConfig, Recipe
from rlqa.recipe_files import load_recipe
from rlqa.data.example import Example, reward_inputs
from rlqa.data.sources import build_examples
from rlqa.errors import UserError
from rlqa.models import load_tokenizer
from rlqa.rollout.group import RolloutGroup
from rlqa.rollout.seeding import seeded_requests
from rlqa.rollout.types import Generator, SamplingParams
from rewards.format import boxed_format
from rewards.pipeline import RewardPipeline

EVAL_STEP = -1  # eval samples use the same seeds before and after RL, so the comparison is paired

# -- metrics over sampled answers ------------------------------------------------------------------------------------

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al., 2021):

        pass@k = 1 - C(n - c, k) / C(n, k) = 1 - Π_{i = n-c+1}^{n} (1 - k / i)

    The product form avoids the huge binomials. With n - c < k every draw of k samples holds a correct one: 1.0.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}: pass@k needs at least k samples per prompt")
    if n - c < k:
        return 1.0
    failure = 1.0
    for i in range(n - c + 1, n + 1):
        failure *= 1.0 - k / i
    return 1.0 - failure


def mean_pass_at_k(per_prompt: list[tuple[int, int]], k: int) -> float:
    """Average of pass_at_k(n, c, k) over prompts; per_prompt holds one (n, c) pair per prompt."""
    if not per_prompt:
        raise ValueError("mean_pass_at_k needs at least one prompt")
    return sum(pass_at_k(n, c, k) for n, c in per_prompt) / len(per_prompt)


def maj_at_k(answers: list[str | None], correct: list[bool]) -> float:
    """Majority vote over one prompt's k samples: 1.0 if the most frequent answer is correct, else 0.0.

    `answers[i]` is sample i's extracted answer (None when none could be extracted; such samples do not vote) and
    `correct[i]` whether it is right. Answers vote by exact string equality, so normalise them first. A tie goes to
    the answer that appeared first; the winner's correctness is that of its first sample. No answers at all: 0.0.
    """
    if len(answers) != len(correct):
        raise ValueError(f"answers and correct differ in length: {len(answers)} vs {len(correct)}")
    votes = Counter(answer for answer in answers if answer is not None)
    if not votes:
        return 0.0
    # Counter keeps first-insertion order and most_common sorts stably, so ties go to the earliest answer.
    winner, _ = votes.most_common(1)[0]
    return 1.0 if correct[answers.index(winner)] else 0.0


# -- the evaluation, through the rollout workers -----------------------------------------------------------------


def scorer(pipeline):
    """`score(texts, examples)` for `evaluate`: the pipeline's correctness function, and the extracted answers."""

    def score(texts: list[str], examples: list[Example]) -> tuple[list[bool], list[str | None]]:
        columns = {
            "answer": [e.answer for e in examples], "prompt_id": [e.prompt_id for e in examples],
            "prompt_text": [e.prompt for e in examples],
        }
        prompts, completions = reward_inputs(examples, texts)
        correct, answers = pipeline.correctness(completions, prompts, columns)
        return [bool(ok) for ok in correct], answers

    return score


def evaluate(
    generator: Generator,
    examples: list[Example],
    prompt_tokens: dict[str, tuple[int, ...]],
    score,
    *,
    seed: int,
    k: int,
    temperature: float,
    max_new_tokens: int,
    version: int,
    by: str | None = None,
) -> dict[str, float]:
    """`score(texts, examples) -> (correct flags, extracted answers)` decides correctness, as in training; the
    generator (the rollout workers) holds policy `version`. Requests go through the seam training uses
    (`seeded_requests`, then `generator.generate`), seeded at step EVAL_STEP: one greedy sample per prompt (the seed
    does not matter at temperature 0), then k sampled ones. Each prompt's k samples are its group, by position.
    `by`: a dataset column; accuracy and pass@k are also given for the prompts of each of its values, as
    `<by>=<value>/accuracy` etc."""
    greedy_requests = seeded_requests([(e.prompt_id, 1) for e in examples], EVAL_STEP, seed, prompt_tokens)
    greedy = generator.generate(greedy_requests, SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens), version)
    greedy_correct, _ = score([r.text for r in greedy], examples)

    sampled_requests = seeded_requests([(e.prompt_id, k) for e in examples], EVAL_STEP, seed, prompt_tokens)
    sampled = generator.generate(sampled_requests, SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens), version)
    sampled_correct, answers = score([r.text for r in sampled], [e for e in examples for _ in range(k)])
    # per prompt, in `examples` order: its k (correct, answer) pairs
    pairs = list(zip(sampled_correct, answers))
    per_prompt = [pairs[i * k : (i + 1) * k] for i in range(len(examples))]

    counts = [(len(v), sum(ok for ok, _ in v)) for v in per_prompt]
    correct_lengths = [r.model_tokens for r, ok in zip(greedy, greedy_correct) if ok]  # the model's tokens
    results = {
        "accuracy": sum(greedy_correct) / len(examples),
        "mean_length": sum(r.model_tokens for r in greedy) / len(examples),
        # what a length reward should shorten without costing accuracy (NaN when nothing is correct)
        "mean_length_correct": sum(correct_lengths) / len(correct_lengths) if correct_lengths else float("nan"),
        # the format a chat model has to learn: one final answer in \boxed{} (rewards.format.boxed_format), greedy
        "boxed_rate": sum(boxed_format([r.text for r in greedy])) / len(examples),
        "sampled_accuracy": sum(sampled_correct) / len(sampled),
        "sampled_boxed_rate": sum(boxed_format([r.text for r in sampled])) / len(sampled),
        f"maj@{k}": sum(maj_at_k([a for _, a in v], [ok for ok, _ in v]) for v in per_prompt) / len(per_prompt),
        "num_prompts": len(examples),
        "temperature": temperature,
    }
    for kk in sorted({1, k}):
        results[f"pass@{kk}"] = mean_pass_at_k(counts, kk)
    if by is not None:
        results |= _by_column(examples, by, greedy_correct, per_prompt, k)
    return results


def _by_column(examples, column: str, greedy_correct: list[bool], per_prompt: list, k: int) -> dict[str, float]:
    """Greedy accuracy and pass@1 / pass@k of the prompts of each value of `column` (those without it left out)."""
    values: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        if column in e.columns:
            values[str(e.columns[column])].append(i)
    results = {}
    for value in sorted(values, key=lambda v: (len(v), v)):
        members = values[value]
        counts = [(len(per_prompt[i]), sum(ok for ok, _ in per_prompt[i])) for i in members]
        results[f"{column}={value}/accuracy"] = sum(greedy_correct[i] for i in members) / len(members)
        for kk in sorted({1, k}):
            results[f"{column}={value}/pass@{kk}"] = mean_pass_at_k(counts, kk)
    return results


# -- `rlqa eval` ----------------------------------------------------------------------------------------------------


def _recipe_of(run_dir: Path) -> Recipe:
    path = run_dir / "recipe.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir}: no recipe.yaml (not a run directory)")
    return load_recipe(path)  # its base_dir keeps relative paths pointing where the run found them


def _checkpoint_model(ckpt: Path, recipe: Recipe, scratch: Path, trust_remote_code: bool) -> Path:
    """A Hugging Face directory of a checkpoint's policy, exported as `rlqa export` does."""
    try:
        return checkpoint.export_hf(ckpt, scratch, trust_remote_code=trust_remote_code, dtype=recipe.model.dtype)
    except checkpoint.CheckpointError as err:
        raise UserError(str(err)) from None


def resolve_target(target: Path, scratch: Path, trust_remote_code: bool = False) -> tuple[Path, Recipe]:
    """(model directory, recipe) for a checkpoint directory, a run directory or a Hugging Face model directory.

    A checkpoint is recognised first: it holds a recipe.yaml too (its run's), and is no run directory. Custom model
    code runs only with `trust_remote_code` (the user's --trust-remote-code), whatever the recipe found says."""
    if not target.exists():
        raise UserError(f"{target}: no such file or directory")
    if (target / checkpoint.MANIFEST).is_file() and (target / checkpoint.DRIVER_STATE).is_file():  # a checkpoint
        own = target / checkpoint.RECIPE  # the recipe it was saved with; older checkpoints: their run's
        recipe = load_recipe(own) if own.is_file() else _recipe_of(target.parent.parent)
        return _checkpoint_model(target, recipe, scratch, trust_remote_code), recipe
    if (target / "recipe.yaml").is_file():  # a run directory: its final policy, else its newest good checkpoint
        recipe = _recipe_of(target)
        final, bad_final = target / "final", None
        if final.is_dir():
            try:
                checkpoint.verify(final)
                return final, recipe
            except checkpoint.CheckpointError as err:  # torn, altered, or from before final/ had a manifest
                bad_final = err
        ckpt = checkpoint.latest_good(target, warn=lambda m: print(m, file=sys.stderr))
        if ckpt is None:
            raise UserError(f"{target}: the run has no usable checkpoint, and {f'final/ is bad: {bad_final}' if bad_final else 'no final/'}")
        if bad_final:
            print(f"skipping final/: {bad_final}", file=sys.stderr)
        return _checkpoint_model(ckpt, recipe, scratch, trust_remote_code), recipe
    if (target / "config.json").is_file():
        if (target / checkpoint.MANIFEST).is_file():  # a run's final/: checked like a checkpoint
            try:
                checkpoint.verify(target)
            except checkpoint.CheckpointError as err:
                raise UserError(str(err)) from None
        return target, Recipe()
    raise UserError(f"{target}: not a run directory, a checkpoint or a Hugging Face model directory")


def evaluate_target(
    target: Path, *, data: str | None = None, k: int | None = None, address: str | None = None, trust_remote_code: bool = False
) -> dict:
    with tempfile.TemporaryDirectory(prefix="rlqa-eval-") as scratch:
        model_dir, recipe = resolve_target(Path(target), Path(scratch), trust_remote_code)
        test_spec = recipe.data.test
        if data is not None:
            test_spec = DatasetConfig(path=str(Path(data).resolve()))
        model = recipe.model.model_copy(update={"path": str(model_dir), "trust_remote_code": trust_remote_code})
        recipe = recipe.model_copy(update={"model": model})
        tokenizer = load_tokenizer(model_dir, recipe.model.trust_remote_code)
        examples = build_examples(test_spec, recipe, tokenizer, "--data" if data else "data.test")
        prompt_tokens = {e.prompt_id: tuple(tokenizer(e.prompt, add_special_tokens=False).input_ids) for e in examples}
        t = recipe.trainer
        cpus = max(int(recipe.rollout.workers * recipe.rollout.cpus_per_worker + 0.999), 1)
        with ray_session(address, num_cpus=cpus, configure_logging=False), RewardPipeline(
            [], correctness=recipe.rewards.correctness, base_dir=Path(recipe.base_dir)
        ) as pipeline:
            group = RolloutGroup(str(model_dir), recipe)
            results = evaluate(
                group, examples, prompt_tokens, scorer(pipeline),
                seed=t.seed, k=k or t.eval_k, temperature=t.eval_temperature,
                max_new_tokens=recipe.rollout.max_new_tokens, version=0,  # the weights as loaded
                by=t.eval_by,
            )
    return {"target": str(target), "model": str(model_dir), **results}


def describe(results: dict) -> str:
    """One readable line of `evaluate`'s results, for the console and log files:

    >>> describe({"accuracy": 0.345, "boxed_rate": 1.0, "mean_length": 12.04, "pass@1": 0.4462, "pass@8": 0.97,
    ...           "maj@8": 0.5, "sampled_boxed_rate": 0.75, "num_prompts": 200, "temperature": 1.0})
    'greedy accuracy 0.345 (boxed 1.000, 12.0 tokens) | sampled at T=1: pass@1 0.446, pass@8 0.970, maj@8 0.500, boxed 0.750 | 200 prompts'
    """
    sampled = [f"{key} {results[key]:.3f}" for key in sorted(results, key=_k_order) if key.startswith(("pass@", "maj@"))]
    sampled.append(f"boxed {results['sampled_boxed_rate']:.3f}")
    return (
        f"greedy accuracy {results['accuracy']:.3f} (boxed {results['boxed_rate']:.3f}, {results['mean_length']:.1f} tokens)"
        f" | sampled at T={results['temperature']:g}: {', '.join(sampled)} | {results['num_prompts']} prompts"
    )


def _k_order(key: str) -> tuple[int, int]:
    """pass@1, pass@8, ... then maj@k."""
    name, _, k = key.partition("@")
    return (name != "pass", int(k) if k.isdigit() else 0)
