"""The verifiable math reward: 1 when a completion's final answer is mathematically equal to the gold answer.

Finding the answer and comparing it are `rewards.answers` (math-verify's extraction and comparison, plus the
readings it lacks); `answer_format` says where the answer is: "boxed" (the last `\\boxed{}`, "The answer is X", or
GSM8K's "#### X": for prompts that ask for a box) or "any" (also math-verify's extraction from free text).

In the reward pipeline each completion is its own task in a reward worker, with its own deadline
(`verify_deadline_s`), so a hung answer costs only itself; called anywhere else, the checks run in
`rewards.verify`'s worker pool. Either way nothing can hang or crash the caller.
"""

from rewards.answers import ANSWER_FORMATS, AnswerFormat
from rewards.text import completion_text
from rewards.verify import DEFAULT_DEADLINE_S, get_pool, judge_here
from rewards.workers import in_worker


def accuracy(
    completions: list,
    prompts: list | None = None,
    *,
    answer: list,
    answer_format: AnswerFormat = "boxed",
    verify_deadline_s: float = DEFAULT_DEADLINE_S,
    **columns,
) -> list[float]:
    """r = 1.0 if the completion's final answer equals the gold, else 0.0 (also when no answer is found).

    A completion is a string or a chat message list (TRL's conversational format; the last message is read). A gold
    that is itself a worked solution ("... #### 72", "... \\boxed{72}") is reduced to its final answer first.
    `verify_deadline_s` bounds each single check; past it the sample scores 0.0.

    >>> accuracy(["so \\\\boxed{4}", "I am not sure", [{"role": "assistant", "content": "The answer is 4."}]],
    ...          answer=["4", "4", "4"])
    [1.0, 0.0, 1.0]
    """
    judged = judge_completions(
        completions, answer=answer, answer_format=answer_format, verify_deadline_s=verify_deadline_s
    )
    return [score for score, _, _ in judged]


def judge_completions(
    completions: list,
    *,
    answer: list,
    answer_format: AnswerFormat = "boxed",
    verify_deadline_s: float = DEFAULT_DEADLINE_S,
    **columns,
) -> list[tuple[float, bool, str | None]]:
    """(accuracy, whether an answer was found, that answer as written) per completion: what the pipeline's
    per-sample tasks run."""
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"accuracy: answer_format {answer_format!r} is not one of {', '.join(ANSWER_FORMATS)}")
    texts = [completion_text(completion) for completion in completions]
    if len(answer) != len(texts):
        raise ValueError(f"accuracy: {len(texts)} completions but {len(answer)} answers")
    if in_worker():  # this process is killed at the deadline: no pool of its own
        verdicts = [judge_here(gold, text, answer_format) for gold, text in zip(answer, texts)]
    else:
        verdicts = get_pool().judge(answer, texts, answer_format, deadline_s=verify_deadline_s)
    return [(1.0 if v.correct else 0.0, v.parsed, v.answer) for v in verdicts]

