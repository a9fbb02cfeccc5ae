"""A built-in example environment (rlqa.tools.environment's convention): reach the row's answer by adding.

`rollout.environment: rlqa.tools.examples:SumToTarget` on a dataset whose answers are integers (the arithmetic task's
sums): the model has one tool, `add`, and the episode is over once an addition gives the answer; the reward is 1 if
one did, else 0. What the episode does next depends on what the model added: a call that reaches the target ends it.
"""

from __future__ import annotations


class SumToTarget:
    def reset(self, answer: str, **row) -> None:
        self.target = int(str(answer).strip())
        self.results: list[int] = []

    def add(self, a: int, b: int) -> int:
        """Add two integers.

        Args:
            a: the first integer
            b: the second integer
        """
        self.results.append(a + b)
        return a + b

    @property
    def done(self) -> bool:
        return self.target in self.results

    def get_reward(self) -> float:
        return 1.0 if self.done else 0.0
