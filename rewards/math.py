"""The verifiable math reward: 1 when a completion's final answer is mathematically equal to the gold answer.

The final answer is the last `\\boxed{...}` (else "The answer is X", else GSM8K's "#### X"); equality is math-verify's
(`rewards.verify`). In the reward pipeline each completion is its own task in a reward worker, with its own deadline
(`verify_deadline_s`), so a hung answer costs only itself; called anywhere else, the checks run in `rewards.verify`'s
worker pool. Either way nothing can hang or crash the caller.
"""

import threading
from collections import OrderedDict

from rewards.verify import DEFAULT_DEADLINE_S, extract_answer, get_pool, verify_here
from rewards.workers import in_worker

# (extracted answer, gold) -> verified; a group's samples often repeat an answer, and epochs repeat prompts.
CACHE_SIZE = 65536

_cache: OrderedDict[tuple[str, str], bool] = OrderedDict()
_cache_lock = threading.Lock()


def accuracy(
    completions: list,
    prompts: list | None = None,
    *,
    answer: list,
    verify_deadline_s: float = DEFAULT_DEADLINE_S,
    **columns,
) -> list[float]:
    """r = 1.0 if verify(gold, extract_answer(completion)) else 0.0; no extractable answer scores 0.0.

    A completion is a string or a chat message list (TRL's conversational format; the last message is read). A gold
    that is itself a worked solution ("... #### 72", "... \\boxed{72}") is reduced to its final answer first.
    `verify_deadline_s` bounds each single check; past it the sample scores 0.0.

    >>> accuracy(["so \\\\boxed{4}", "I am not sure", [{"role": "assistant", "content": "The answer is 4."}]],
    ...          answer=["4", "4", "4"])
    [1.0, 0.0, 1.0]
    """
    return [score for score, _ in judge_completions(completions, answer=answer, verify_deadline_s=verify_deadline_s)]


def judge_completions(
    completions: list, *, answer: list, verify_deadline_s: float = DEFAULT_DEADLINE_S, **columns
) -> list[tuple[float, bool]]:
    """(accuracy, whether an answer could be extracted) per completion: what the pipeline's per-sample tasks run."""
    predictions = [extract_answer(_completion_text(completion)) for completion in completions]
    golds = [_gold_answer(gold) for gold in answer]
    if len(golds) != len(predictions):
        raise ValueError(f"accuracy: {len(predictions)} completions but {len(golds)} answers")
    verified: list[bool | None] = [False if prediction is None else None for prediction in predictions]
    with _cache_lock:
        for index, key in enumerate(zip(predictions, golds)):
            if key in _cache:
                _cache.move_to_end(key)
                verified[index] = _cache[key]
    missing = [index for index, known in enumerate(verified) if known is None]
    if missing:
        if in_worker():  # this process is killed at the deadline: no pool of its own
            results = [verify_here(golds[i], predictions[i]) for i in missing]
        else:
            results = get_pool().verify(
                [golds[i] for i in missing], [predictions[i] for i in missing], deadline_s=verify_deadline_s
            )
        with _cache_lock:
            for index, result in zip(missing, results):
                verified[index] = result
                _cache[(predictions[index], golds[index])] = result
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
    return [(1.0 if result else 0.0, prediction is not None) for result, prediction in zip(verified, predictions)]


def _completion_text(completion) -> str:
    if isinstance(completion, str):
        return completion
    return completion[-1]["content"]


def _gold_answer(gold) -> str:
    gold = str(gold)
    return extract_answer(gold) or gold
