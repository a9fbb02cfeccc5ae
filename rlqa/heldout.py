"""Held-out evaluation through the rollout workers: greedy accuracy, and unbiased pass@k from sampled answers."""

from __future__ import annotations

from collections import defaultdict

from rlqa.data.example import Example
from rlqa.evaluation import maj_at_k, mean_pass_at_k
from rlqa.rollout.group import RolloutGroup
from rlqa.rollout.seeding import sample_seed
from rlqa.rollout.types import GenerationRequest, SamplingParams

EVAL_STEP = -1  # eval samples use the same seeds before and after RL, so the comparison is paired


def scorer(pipeline):
    """`score(texts, examples)` for `evaluate`: the pipeline's correctness function, and the extracted answers."""

    def score(texts: list[str], examples: list[Example]) -> tuple[list[bool], list[str | None]]:
        columns = {"answer": [e.answer for e in examples], "prompt_id": [e.prompt_id for e in examples]}
        correct, answers = pipeline.correctness(texts, [e.prompt for e in examples], columns)
        return [bool(ok) for ok in correct], answers

    return score


def evaluate(
    group: RolloutGroup,
    examples: list[Example],
    prompt_tokens: dict[str, tuple[int, ...]],
    score,
    *,
    seed: int,
    k: int,
    temperature: float,
    max_new_tokens: int,
) -> dict[str, float]:
    """`score(texts, examples) -> (correct flags, extracted answers)` decides correctness, as in training."""
    greedy_requests = [GenerationRequest(e.prompt_id, 0, prompt_tokens[e.prompt_id], 0) for e in examples]
    greedy = group.generate(greedy_requests, SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens))
    greedy_correct, _ = score([r.text for r in greedy], examples)

    sampled_requests = [
        GenerationRequest(e.prompt_id, j, prompt_tokens[e.prompt_id], sample_seed(seed, EVAL_STEP, e.prompt_id, j))
        for e in examples
        for j in range(k)
    ]
    sampled = group.generate(sampled_requests, SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens))
    by_id = {e.prompt_id: e for e in examples}
    sampled_correct, answers = score([r.text for r in sampled], [by_id[r.prompt_id] for r in sampled])
    per_prompt: dict[str, list[tuple[bool, str | None]]] = defaultdict(list)
    for rollout, ok, answer in zip(sampled, sampled_correct, answers):
        per_prompt[rollout.prompt_id].append((ok, answer))

    counts = [(len(v), sum(ok for ok, _ in v)) for v in per_prompt.values()]
    correct_lengths = [len(r.completion_tokens) for r, ok in zip(greedy, greedy_correct) if ok]
    results = {
        "accuracy": sum(greedy_correct) / len(examples),
        "mean_length": sum(len(r.completion_tokens) for r in greedy) / len(examples),
        # what a length reward should shorten without costing accuracy (NaN when nothing is correct)
        "mean_length_correct": sum(correct_lengths) / len(correct_lengths) if correct_lengths else float("nan"),
        "sampled_accuracy": sum(sampled_correct) / len(sampled),
        f"maj@{k}": sum(maj_at_k([a for _, a in v], [ok for ok, _ in v]) for v in per_prompt.values()) / len(per_prompt),
        "num_prompts": len(examples),
        "temperature": temperature,
    }
    for kk in sorted({1, k}):
        results[f"pass@{kk}"] = mean_pass_at_k(counts, kk)
    return results
