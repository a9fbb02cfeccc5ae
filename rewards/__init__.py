"""Reward functions and the pipeline that runs them safely.

A reward function has TRL's signature, `fn(completions, prompts, **columns) -> list[float | None]` (None: no opinion),
and may be `async def`. Recipes name one by a built-in name (`BUILTIN_REWARDS`), "package.module:function" or
"path/to/file.py:function"; `RewardPipeline` runs the terms in worker processes with deadlines and sums them.
"""

from rewards.math import accuracy
from rewards.pipeline import RewardError, RewardOutput, RewardPipeline, RewardTermSpec
from rewards.registry import BUILTIN_REWARDS, load_reward_fn
from rewards.verify import VerifierPool, extract_answer

__all__ = [
    "BUILTIN_REWARDS",
    "RewardError",
    "RewardOutput",
    "RewardPipeline",
    "RewardTermSpec",
    "VerifierPool",
    "accuracy",
    "extract_answer",
    "load_reward_fn",
]
