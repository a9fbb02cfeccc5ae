"""Yield: how much of the generated compute carried learning signal (`yield/*`, stages.account_yield).

Light on purpose (no torch): `rlqa report` and the end-of-run line read it from summary.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class YieldTotals:
    """Running totals of `account_yield`, from step 0 of the run; saved in every checkpoint."""

    rollouts: int = 0
    tokens: int = 0
    informative_rollouts: int = 0
    informative_tokens: int = 0

    def state_dict(self) -> dict[str, int]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        for name, value in state.items():
            setattr(self, name, int(value))

    def summary(self) -> dict[str, float]:
        return {
            **self.state_dict(),
            "informative_rollout_frac": self.informative_rollouts / self.rollouts if self.rollouts else 0.0,
            "informative_token_frac": self.informative_tokens / self.tokens if self.tokens else 0.0,
        }


def describe_yield(totals: dict) -> str:
    """The end-of-run line on yield, from summary.json's "yield".

    >>> describe_yield(YieldTotals(rollouts=640, tokens=20_000, informative_rollouts=160, informative_tokens=6_000).summary())
    'yield: 160 of 640 rollouts (25.0%) and 6,000 of 20,000 generated tokens (30.0%) carried learning signal'
    """
    return (
        f"yield: {totals['informative_rollouts']:,} of {totals['rollouts']:,} rollouts "
        f"({totals['informative_rollout_frac']:.1%}) and {totals['informative_tokens']:,} of {totals['tokens']:,} "
        f"generated tokens ({totals['informative_token_frac']:.1%}) carried learning signal"
    )
