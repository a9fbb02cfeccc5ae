"""Reward functions and the pipeline that runs them safely.

A reward function is called as TRL calls one, by keyword: `fn(prompts=..., completions=..., completion_ids=...,
**columns) -> list[float | None]` (None: no opinion), so it needs a `**kwargs`; it may be `async def`. Recipes name one by a built-in name (`BUILTIN_REWARDS`), "package.module:function" or
"path/to/file.py:function"; `RewardPipeline` runs the terms in worker processes with deadlines and sums them.
"""

from rewards.math import accuracy
from rewards.pipeline import RewardError, RewardOutput, RewardPipeline, RewardTermSpec
from rewards.registry import BUILTIN_REWARDS, load_reward_fn
from rewards.answers import Verdict, extract, judge
from rewards.verify import VerifierPool

__all__ = [
    "BUILTIN_REWARDS",
    "RewardError",
    "RewardOutput",
    "RewardPipeline",
    "RewardTermSpec",
    "VerifierPool",
    "Verdict",
    "accuracy",
    "extract",
    "judge",
    "load_reward_fn",
]
