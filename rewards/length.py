"""Length rewards: terms added to correctness that make a response's length matter.

- `hapo_length`: HAPO's history-aware reward (ALGORITHMS.md §5): beat the shortest correct answer seen so far.
- `overlong_penalty`: DAPO's soft overlong punishment (§3): ramps from 0 to -1 over the last `cache_length` tokens.
- `length_penalty`: a plain linear -L / max_new_tokens.
- `easy_prompt_length_bias`: E3's length bias on easy prompts (§4, end).

Every function has the TRL reward signature and reads the driver's columns (lists aligned with `completions`):
`completion_length` (the tokens the model sampled; a tool's output between turns is not its length), `correct` (bool, or None when correctness is unknown), `history_length`
(HAPO h_i, None before any correct answer), `max_new_tokens`, `difficulty` (the sampler's live estimate, 0 easiest;
None when it knows nothing of the prompt) and dataset columns such as `rank`. A term's weight is applied by the reward
pipeline, not here. None in the output means "no opinion" for that sample.
"""

import math

from rlqa.errors import UserError

# HAPO floors a correct answer's length reward here, so that correct (≥ 1 - 0.7) always beats incorrect (≤ 0).
HAPO_CORRECT_FLOOR = -0.7
HAPO_VARIANTS = ("cosine", "linear")


def _hapo_shape(length: int, history: int, variant: str) -> float:
    """c(L, h): 1 at L = 0, 0 at L = h, -1 from L = 2h on."""
    if length >= 2 * history:  # also covers h = 0, before any division
        return -1.0
    if variant == "cosine":
        return math.cos(math.pi / 2 * length / history)
    return 1.0 - length / history


def hapo_length(
    completions: list[str],
    prompts: list[str] | None = None,
    *,
    completion_length: list[int],
    correct: list[bool | None],
    history_length: list[int | None],
    variant: str = "cosine",
    **_,
) -> list[float | None]:
    """HAPO history-aware length reward, with h = the prompt's shortest correct length from earlier steps.

        cosine:  c = cos(π/2 · L / h)   if L < 2h  else -1      (L = 0 → 1, L = h → 0, L = 2h → -1)
        linear:  c = 1 - L / h          if L < 2h  else -1      (same three points, straight lines between)
        correct:   r = max(-0.7, c)
        incorrect: r = min(0, c)          short wrong answers go unpunished, so exploring stays cheap
        no history yet (h is None): r = 0;   correctness unknown: None

    >>> hapo_length(["a", "b", "c", "d"], completion_length=[50, 300, 150, 50],
    ...             correct=[True, True, False, False], history_length=[100, 100, 100, None])
    [0.7071067811865476, -0.7, -0.7071067811865475, 0.0]
    """
    if variant not in HAPO_VARIANTS:
        raise UserError(f"hapo_length: variant={variant!r} is not one of {', '.join(HAPO_VARIANTS)}")
    rewards: list[float | None] = []
    for _, length, is_correct, history in zip(completions, completion_length, correct, history_length, strict=True):
        if is_correct is None:
            rewards.append(None)
        elif history is None:
            rewards.append(0.0)
        elif is_correct:
            rewards.append(max(HAPO_CORRECT_FLOOR, _hapo_shape(length, history, variant)))
        else:
            rewards.append(min(0.0, _hapo_shape(length, history, variant)))
    return rewards


def overlong_penalty(
    completions: list[str],
    prompts: list[str] | None = None,
    *,
    completion_length: list[int],
    max_new_tokens: list[int],
    cache_length: int | None = None,
    **_,
) -> list[float]:
    """DAPO soft overlong punishment, with L_max = max_new_tokens and L_cache = cache_length.

        r = 0                                   if L ≤ L_max - L_cache
          = ((L_max - L_cache) - L) / L_cache   if L_max - L_cache < L ≤ L_max
          = -1                                  if L > L_max

    cache_length defaults to L_max // 5 (at least 1), DAPO's own ratio (4096 of 20480).

    >>> overlong_penalty(["a", "b", "c"], completion_length=[100, 150, 200], max_new_tokens=[200] * 3,
    ...                  cache_length=100)
    [0.0, -0.5, -1.0]
    """
    rewards = []
    for _, length, max_length in zip(completions, completion_length, max_new_tokens, strict=True):
        cache = max(1, max_length // 5) if cache_length is None else cache_length
        if not 0 < cache <= max_length:
            raise UserError(
                f"overlong_penalty: cache_length={cache} must be between 1 and max_new_tokens={max_length}"
            )
        if length > max_length:
            rewards.append(-1.0)
        else:
            rewards.append(min(0.0, (max_length - cache - length) / cache))
    return rewards


def length_penalty(
    completions: list[str],
    prompts: list[str] | None = None,
    *,
    completion_length: list[int],
    max_new_tokens: list[int],
    **_,
) -> list[float]:
    """Linear length penalty r = -L / max_new_tokens (0 for an empty answer, -1 at the generation limit).

    >>> length_penalty(["a", "b"], completion_length=[0, 64], max_new_tokens=[256, 256])
    [0.0, -0.25]
    """
    lengths = zip(completions, completion_length, max_new_tokens, strict=True)
    return [-length / max_length for _, length, max_length in lengths]


def easy_prompt_length_bias(
    completions: list[str],
    prompts: list[str] | None = None,
    *,
    completion_length: list[int],
    correct: list[bool | None],
    difficulty: list[float | None] | None = None,
    rank: list[float | None] | None = None,
    threshold: float = 0.1,
    mu: float = 0.001,
    **_,
) -> list[float | None]:
    """E3's length bias on easy prompts, as a term added to a 0/1 accuracy reward.

        r = -μL / (1 + μL)   if the answer is correct and the prompt is easy: d ≤ threshold (0 = easiest)
          = 0                otherwise (also when the prompt has no d);   correctness unknown: None

    d is the sampler's live `difficulty` (rlqa passes it: E3's rank by accuracy under `sampler.estimator: rank`,
    1 - the estimated pass rate under `beta`), so a prompt counts as easy once the policy finds it easy, not only when
    the offline data said so. Where the sampler knows nothing of a prompt yet (None: no outcome, no offline rank), or
    outside rlqa (no such column), d is the dataset's `rank` column.
    accuracy + r then reproduces E3's reward for correct easy answers, 1 - μl / (1 + μl).

    >>> easy_prompt_length_bias(["a", "b", "c", "d"], completion_length=[1000] * 4, correct=[True, True, False, True],
    ...                         difficulty=[0.05, 0.5, 0.05, None], rank=[0.9, 0.0, 0.0, 0.0])
    [-0.5, 0.0, 0.0, -0.5]
    """
    if difficulty is None and rank is None:
        raise UserError("easy_prompt_length_bias: needs a `difficulty` column (rlqa's sampler) or a `rank` column")
    count = len(completions)
    live = [None] * count if difficulty is None else difficulty
    offline = [None] * count if rank is None else rank
    rewards: list[float | None] = []
    for _, length, is_correct, estimate, fallback in zip(completions, completion_length, correct, live, offline, strict=True):
        prompt_difficulty = fallback if estimate is None else estimate
        if is_correct is None:
            rewards.append(None)
        elif is_correct and prompt_difficulty is not None and prompt_difficulty <= threshold:
            rewards.append(-mu * length / (1 + mu * length))
        else:
            rewards.append(0.0)
    return rewards
