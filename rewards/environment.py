"""The reward of `rollout.environment` as a reward term: what the episode's `get_reward()` returned.

The environment scores its episode in the rollout worker, from the instance's state, when the episode ends
(rlqa.tools.environment); the number travels with the rollout and reaches reward functions as the
`environment_reward` column. This term hands it to the pipeline, so it is weighted, summed, logged
(`reward/<name>`) and failure-counted like any other: NaN, an instance that failed (reset or get_reward raised, hung
or crashed), is a failure (zero or dropped, as `rewards.failure_value` says). TRL adds this term by itself, named
after the class with weight 1; rlqa has it listed (`- fn: environment`), so the recipe shows every term of the total.
"""


def environment(completions, environment_reward=None, **kwargs) -> list[float | None]:
    """Each completion's `get_reward()` value (None: the environment has no opinion on it)."""
    if environment_reward is None:
        raise ValueError("no environment_reward column: the environment term needs rollout.environment's episodes")
    return list(environment_reward)
