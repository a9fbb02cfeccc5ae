"""Evaluation metrics over sampled answers: unbiased pass@k and majority vote (maj@k).

Plain Python, no torch: the eval CLI and the trainer's held-out evaluation both call these on counts and lists.
"""

from collections import Counter


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
