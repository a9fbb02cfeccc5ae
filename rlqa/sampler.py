"""Which prompts each step trains on, and how many rollouts each one gets.

E3 (ALGORITHMS.md §4) spends a fixed rollout budget T = n·B per step unevenly: a group whose samples are all right
or all wrong teaches nothing, and a hard prompt needs more tries before one of them comes out right. The pieces:

- `allocate`: the budget split, a pure function.
- `BetaEstimator` / `RankEstimator` (the `DifficultyEstimator` protocol): per-prompt difficulty learned from the
  outcomes of earlier rollouts.
- `RolloutSampler`: what the trainer drives. Data order (one seeded permutation per epoch), the n_min/n_max schedule
  across epochs, optional skipping of mastered prompts, exact resume through `state_dict`. A step may be refilled
  with more prompts (`next_batch(step, num_prompts=k)` again), which DAPO's dynamic sampling needs.

Nothing here carries a stateful random generator: epoch e's order comes from a Generator seeded by (seed, e) and a
mastered prompt's revisit coin from (seed, e, position). The checkpoint is a few counters plus the difficulty
estimates, all plain JSON.
"""

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any, Protocol

import numpy as np

from rlqa.config import BoundsPhase, SamplerConfig
from rlqa.errors import UserError
from rlqa.hints import HintSchedule, split_hinted
from rlqa.rollout.seeding import stable_seed


def allocate(difficulty: Sequence[float | Fraction], budget: int, n_min: int, n_max: int) -> list[int]:
    """Split `budget` rollouts over prompts by difficulty r_i ≥ 0, each getting between n_min and n_max.

    E3's rule, with both bounds kept (B prompts, T = budget):

        x_i = min(n_max, n_min + λ·r_i),  λ such that Σ x_i = T      water-filling; with no prompt at n_max,
                                                                      λ = (T - n_min·B) / Σ r_j as in E3
        n_i = floor(x_i), then the shortfall T - Σ n_i goes one rollout each to the hardest prompts below n_max

    All-zero difficulty spreads the budget evenly. A harder prompt never gets fewer rollouts than an easier one; among
    equals, the lower index goes first. The arithmetic is exact (fractions): a share of 6 never floors to 5.
    """
    count = len(difficulty)
    if not 0 <= n_min <= n_max:
        raise ValueError(f"need 0 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}")
    if not n_min * count <= budget <= n_max * count:
        raise ValueError(f"cannot split {budget} rollouts over {count} prompts with {n_min} to {n_max} each")
    if not all(math.isfinite(r) and r >= 0 for r in difficulty):
        raise ValueError(f"difficulty must be finite and >= 0, got {list(difficulty)}")
    if count == 0:
        return []
    weights = [Fraction(r) for r in difficulty]
    if sum(weights) == 0:
        weights = [Fraction(1)] * count
    hardest_first = sorted(range(count), key=lambda i: (-weights[i], i))
    counts = [math.floor(x) for x in _capped_shares(weights, hardest_first, budget, n_min, n_max)]
    # Each fractional share is below n_max and loses less than 1 to the floor: one pass hands the shortfall out.
    shortfall = budget - sum(counts)
    for i in hardest_first:
        if shortfall == 0:
            break
        if counts[i] < n_max:
            counts[i] += 1
            shortfall -= 1
    return counts


def _capped_shares(
    weights: list[Fraction], hardest_first: list[int], budget: int, n_min: int, n_max: int
) -> list[Fraction]:
    """x_i = min(n_max, n_min + λ·w_i) with Σ x_i = budget: cap the hardest prompts one by one until the rest fit."""
    capped = 0
    free_weight = sum(weights)
    while True:
        free = hardest_first[capped:]
        left = budget - n_max * capped - n_min * len(free)

        def share(i: int) -> Fraction:
            # Only zero-difficulty prompts left uncapped: what remains is spread over them evenly.
            return left * weights[i] / free_weight if free_weight else Fraction(left, len(free))

        # The hardest free prompt has the largest share; it fits, so all do. It always fits once the harder ones are
        # capped, because budget <= n_max·B.
        if n_min + share(free[0]) <= n_max:
            shares = [Fraction(n_max)] * len(weights)
            for i in free:
                shares[i] = n_min + share(i)
            return shares
        free_weight -= weights[free[0]]
        capped += 1


def signal_weight(pass_rate: float, n: int, floor: float) -> float:
    """The chance that a group of n rollouts at `pass_rate` has both a right and a wrong answer, so that its
    advantages are not all zero: 1 - p^n - (1 - p)^n, at least `floor`."""
    return max(1.0 - pass_rate**n - (1.0 - pass_rate) ** n, floor)


def phase_starts(phases: Sequence[BoundsPhase], total_steps: int) -> list[tuple[int, int, int]]:
    """(first step, n_min, n_max) of each phase of a bounds schedule, steps counted from 0:

        first step of phase k = ⌈from_fraction_k · total_steps⌉

    with from_fraction read as the decimal the recipe wrote: 0.07 of 100 steps is step 7, not 8 (0.07 · 100 in
    floats is 7.000000000000001). E3's thirds of 30 steps: steps 0-9, 10-19, 20-29.
    """
    return [(math.ceil(Fraction(repr(p.from_fraction)) * total_steps), p.n_min, p.n_max) for p in phases]


class DifficultyEstimator(Protocol):
    """Per-prompt difficulty in [0, 1] (0 easiest) and estimated pass rate, learned from rollout outcomes."""

    def difficulty(self, prompt_id: str) -> float: ...

    def estimate(self, prompt_id: str) -> float | None:
        """The difficulty when it rests on outcomes or an offline rank; None when nothing is known of the prompt."""

    def pass_rate(self, prompt_id: str) -> float: ...

    def update(self, prompt_id: str, successes: int, trials: int) -> None: ...

    def end_epoch(self, epoch: int) -> None:
        """Epoch `epoch` begins."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class BetaEstimator:
    """Pass rate p_i ~ Beta(α_i, β_i) that forgets old evidence, because the policy it describes keeps changing.

    Prior: mean 1 - rank_i with `prior_strength` = k pseudo-counts when an offline rank is given
    (α = k·(1 - rank), β = k·rank), else uniform, Beta(1, 1). A visit with s successes out of n trials:

        α ← γ·α + s,   β ← γ·β + (n - s)          γ = decay
        pass_rate = α / (α + β),   difficulty = 1 - pass_rate

    With γ = 0.9 the posterior holds about ten visits' worth of evidence (Σ γ^k = 1 / (1 - γ)).
    """

    def __init__(self, priors: Mapping[str, float] | None = None, *, decay: float = 0.9, prior_strength: float = 2.0):
        self._priors = _checked_ranks(priors)
        self._decay = decay
        self._prior_strength = prior_strength
        self._posterior: dict[str, tuple[float, float]] = {}

    def difficulty(self, prompt_id: str) -> float:
        return 1.0 - self.pass_rate(prompt_id)

    def estimate(self, prompt_id: str) -> float | None:
        """The difficulty, or None for a prompt with neither outcomes nor an offline rank (its 0.5 is the prior's)."""
        known = prompt_id in self._posterior or prompt_id in self._priors
        return self.difficulty(prompt_id) if known else None

    def pass_rate(self, prompt_id: str) -> float:
        alpha, beta = self._alpha_beta(prompt_id)
        return alpha / (alpha + beta)

    def update(self, prompt_id: str, successes: int, trials: int) -> None:
        _check_outcome(prompt_id, successes, trials)
        alpha, beta = self._alpha_beta(prompt_id)
        self._posterior[prompt_id] = (
            self._decay * alpha + successes,
            self._decay * beta + (trials - successes),
        )

    def end_epoch(self, epoch: int) -> None:
        """Nothing to do: the posterior already moves with every visit."""

    def state_dict(self) -> dict[str, Any]:
        return {"posterior": {prompt_id: list(ab) for prompt_id, ab in self._posterior.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._posterior = {prompt_id: (alpha, beta) for prompt_id, (alpha, beta) in state["posterior"].items()}

    def _alpha_beta(self, prompt_id: str) -> tuple[float, float]:
        if prompt_id in self._posterior:
            return self._posterior[prompt_id]
        if prompt_id in self._priors:
            rank = self._priors[prompt_id]
            return self._prior_strength * (1.0 - rank), self._prior_strength * rank
        return 1.0, 1.0


class RankEstimator:
    """E3's estimator: difficulty = the prompt's position by cumulative accuracy, refreshed when an epoch begins.

    Epoch 0 uses the offline ranks (0 for every prompt when none are given: allocation is then uniform). When epoch
    e ≥ 1 begins, the N prompts are sorted easiest first: by acc_i = all successes / all trials of prompt i, highest
    first, and the never-seen prompts after every seen one (E3 counts them as hardest). Then

        rank_i = position_i / N          positions 0, 1, ..., N - 1: distinct, as in E3, so rank ∈ [0, 1)

    The ranks are exact fractions, so `allocate` sees 1/6, not the float below it: from float ranks, a share of
    6 + 6·(1/6)/Σr floors to 6 instead of 7.

    Ties (equal accuracy, or never seen) go in the order of a hash of (run seed, e, prompt id). Not by prompt id: that
    would give the same prompts of a tied block the most rollouts in every epoch. The hash draws a fresh order each
    epoch, does not depend on which other prompts tie or on the data order, and a resumed run recomputes it.
    pass_rate is acc_i, or 1 - offline rank (0 without one) for a prompt never seen.
    """

    def __init__(self, prompt_ids: Sequence[str], priors: Mapping[str, float] | None = None, *, seed: int):
        self._prompt_ids = list(prompt_ids)
        self._priors = _checked_ranks(priors)
        self._seed = seed
        self._epoch = 0  # the epoch the ranks are for: 0 = the offline ranks
        self._ranks: dict[str, Fraction | float] = {p: self._priors.get(p, 0.0) for p in self._prompt_ids}
        self._counts: dict[str, tuple[int, int]] = {}  # prompt id → (successes, trials), never forgotten

    def difficulty(self, prompt_id: str) -> Fraction | float:
        return self._ranks[prompt_id]

    def estimate(self, prompt_id: str) -> float | None:
        """The rank from outcomes once an epoch has ended; before that the offline rank, None without one."""
        return float(self._ranks[prompt_id]) if self._epoch > 0 else self._priors.get(prompt_id)

    def pass_rate(self, prompt_id: str) -> float:
        if prompt_id in self._counts:
            successes, trials = self._counts[prompt_id]
            return successes / trials
        return 1.0 - self._priors.get(prompt_id, 1.0)

    def update(self, prompt_id: str, successes: int, trials: int) -> None:
        _check_outcome(prompt_id, successes, trials)
        if prompt_id not in self._ranks:
            raise KeyError(f"unknown prompt id {prompt_id!r}")
        if trials == 0:
            return  # a prompt with no verdict stays never-seen, so its accuracy is never 0/0
        old_successes, old_trials = self._counts.get(prompt_id, (0, 0))
        self._counts[prompt_id] = (old_successes + successes, old_trials + trials)

    def end_epoch(self, epoch: int) -> None:
        def easiest_first(prompt_id: str) -> tuple[int, Fraction, int]:
            seen = prompt_id in self._counts
            accuracy = Fraction(*self._counts[prompt_id]) if seen else Fraction(0)  # exact: 1/3 ties 2/6
            return (0 if seen else 1, -accuracy, stable_seed("rank-tie", self._seed, epoch, prompt_id))

        order = sorted(self._prompt_ids, key=easiest_first)
        self._ranks = {prompt_id: Fraction(position, len(order)) for position, prompt_id in enumerate(order)}
        self._epoch = epoch

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self._epoch,
            "ranks": {prompt_id: float(rank) for prompt_id, rank in self._ranks.items()},
            "counts": {prompt_id: list(c) for prompt_id, c in self._counts.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        # checkpoints older than the live estimate have no epoch: their ranks came from outcomes once any were counted
        self._epoch = state.get("epoch", 1 if state["counts"] else 0)
        self._ranks = dict(state["ranks"])
        if self._epoch > 0:
            # ranks from outcomes are position / N: the nearest fraction with denominator <= N to the saved float is
            # that one exactly (two such fractions lie >= 1/N² apart, the float within 1e-16 of it)
            self._ranks = {p: Fraction(rank).limit_denominator(len(self._prompt_ids)) for p, rank in self._ranks.items()}
        self._counts = {prompt_id: (successes, trials) for prompt_id, (successes, trials) in state["counts"].items()}


def _checked_ranks(priors: Mapping[str, float] | None) -> dict[str, float]:
    for prompt_id, rank in (priors or {}).items():
        if not 0 <= rank < 1:
            raise ValueError(f"offline rank of prompt {prompt_id!r} must be in [0, 1), got {rank}")
    return dict(priors or {})


def _check_outcome(prompt_id: str, successes: int, trials: int) -> None:
    if not 0 <= successes <= trials:
        raise ValueError(f"prompt {prompt_id!r}: need 0 <= successes <= trials, got {successes} of {trials}")


class RolloutSampler:
    """The prompts of each step, in a seeded order, each with its rollout count.

    Order: epoch e is a permutation of the prompts drawn from a Generator seeded by (seed, e); batches take
    consecutive prompts. A step that runs past the end of an epoch is completed from the start of the next one, and
    the prompts it already holds move to the end of that next epoch's order, so no step holds a prompt twice and
    every prompt comes up exactly once per epoch. A step (refills included) draws at most N prompts.

    Budget: every batch of k prompts gets k·rollouts_per_prompt rollouts, split by `allocate` within
    [n_min, n_max] ("uniform": every prompt gets rollouts_per_prompt). When an epoch begins,
    n_min ← max(n_min - Δ, n_low) and n_max ← min(n_max + Δ, n_high); E3 runs n = 8, Δ = 2, n_low = 4,
    n_high = 12, i.e. (8, 8), (6, 10), (4, 12). A batch that straddles two epochs gets the new epoch's bounds.
    `sampler.bounds_schedule` instead sets the bounds by step (`phase_starts`): for runs too short to see three
    epochs, `e3` holds the same three pairs over thirds of trainer.steps.

    curriculum "signal" replaces the epochs: each draw takes prompts not yet in the step, without replacement, with
    probability in proportion to w_i = max(1 - p_i^n - (1 - p_i)^n, floor) (`signal_weight`): the chance that a group
    of n rollouts at pass rate p_i is informative. The keys are Efraimidis-Spirakis ones, log(u_i) / w_i, the
    largest k drawn, with u from a Generator seeded by (seed, step, prompts the step already holds): nothing to store.

    skip_mastered: a drawn prompt whose estimated pass rate exceeds it is passed over (it still counts as seen this
    epoch), except with probability revisit_prob, and the next prompt in order takes its place. A step looks at no
    more than N prompts: once skipping would need more, the rest of it skips nothing.
    """

    def __init__(
        self,
        prompt_ids: Sequence[str],
        cfg: SamplerConfig,
        *,
        prompts_per_step: int,
        rollouts_per_prompt: int,
        seed: int,
        priors: Mapping[str, float] | None = None,
        total_steps: int | None = None,
        hint_lines: Mapping[str, int] | None = None,
    ):
        """`cfg` is the recipe's validated sampler section; `priors` the offline ranks in [0, 1) by prompt id;
        `total_steps` (trainer.steps) places the phases of a bounds schedule and the hints' fading; `hint_lines`
        (with `cfg.hints`) how many solution lines each prompt's hint may show (rlqa.hints.schedule_lines)."""
        self._prompt_ids = list(prompt_ids)
        if len(set(self._prompt_ids)) != len(self._prompt_ids):
            raise ValueError("prompt ids must be unique")
        if not 1 <= prompts_per_step <= len(self._prompt_ids):
            raise UserError(
                f"prompts per step ({prompts_per_step}) must be between 1 and the number of training prompts "
                f"({len(self._prompt_ids)})"
            )
        bounds = cfg.bounds(rollouts_per_prompt)  # validated against rollouts_per_prompt
        self._n_min, self._n_max, self._n_low, self._n_high = bounds.n_min, bounds.n_max, bounds.n_low, bounds.n_high
        self._prompts_per_step = prompts_per_step
        self._rollouts_per_prompt = rollouts_per_prompt
        self._seed = seed
        self._schedule_delta = cfg.schedule_delta
        if cfg.phases() and total_steps is None:
            raise ValueError("a bounds schedule needs total_steps")
        self._phases = phase_starts(cfg.phases(), total_steps or 0)
        self._skip_mastered = cfg.skip_mastered
        self._curriculum_floor = cfg.curriculum_floor if cfg.curriculum == "signal" else None
        if cfg.hints is not None and (hint_lines is None or total_steps is None):
            raise ValueError("hints need hint_lines and total_steps")
        self._hints = None if cfg.hints is None else HintSchedule(cfg.hints, hint_lines, total_steps)
        self._revisit_prob = cfg.revisit_prob
        self._known = set(self._prompt_ids)
        self._estimator: DifficultyEstimator = (
            BetaEstimator(priors, decay=cfg.decay, prior_strength=cfg.prior_strength)
            if cfg.estimator == "beta"
            else RankEstimator(self._prompt_ids, priors, seed=seed)
        )
        self._epoch = 0
        self._position = 0  # index into self._order of the next prompt to draw
        self._deferred: list[str] = []  # prompts moved to the end of this epoch's order
        self._order = self._epoch_order(0, [])
        self._last_step: int | None = None
        # The last step so far, refills included: what it drew, the rollout counts, how many prompts it passed over.
        self._step_prompts: list[str] = []
        self._step_counts: list[int] = []
        self._step_skipped = 0
        self._step_hinted = 0

    @property
    def epoch(self) -> int:
        """Epoch of the latest prompt drawn, 0-based: it turns e + 1 when the first prompt of epoch e + 1 is drawn."""
        return self._epoch

    @property
    def n_min(self) -> int:
        return self._n_min

    @property
    def n_max(self) -> int:
        return self._n_max

    @property
    def prompts_left_in_step(self) -> int:
        """How many more prompts refills of the last step may draw: a step draws at most N."""
        return len(self._prompt_ids) - len(self._step_prompts)

    def next_batch(self, step: int, num_prompts: int | None = None) -> list[tuple[str, int]]:
        """(prompt id, rollout count) for `num_prompts` prompts (default prompts_per_step), Σ counts = k·n.

        Call with step = the previous step + 1 for a new step, or the same step again to refill it (dynamic
        sampling); any other step means the sampler state does not belong to this run.
        """
        count = self._prompts_per_step if num_prompts is None else num_prompts
        if not 1 <= count <= self._prompts_per_step:
            raise ValueError(f"num_prompts must be between 1 and {self._prompts_per_step}, got {count}")
        if self._last_step is not None and step not in (self._last_step, self._last_step + 1):
            raise ValueError(f"sampler asked for step {step} after step {self._last_step}")
        if step != self._last_step:
            self._step_prompts, self._step_counts, self._step_skipped, self._step_hinted = [], [], 0, 0
        if len(self._step_prompts) + count > len(self._prompt_ids):
            raise UserError(
                f"step {step} would draw {len(self._step_prompts) + count} prompts, more than the "
                f"{len(self._prompt_ids)} training prompts: lower the dynamic-sampling rounds or the prompts per step"
            )
        self._last_step = step
        prompt_ids = self._draw(count) if self._curriculum_floor is None else self._draw_by_signal(step, count)
        if self._phases:
            self._n_min, self._n_max = self.bounds_at(step)
        difficulty = [self._estimator.difficulty(prompt_id) for prompt_id in prompt_ids]
        counts = allocate(difficulty, count * self._rollouts_per_prompt, self._n_min, self._n_max)
        self._step_prompts += prompt_ids
        self._step_counts += counts
        if self._hints is not None:
            drawn = [self._hints.choose(p, step, self.pass_rate(p), self.estimate(p) is not None) for p in prompt_ids]
            self._step_hinted += sum(d != p for d, p in zip(drawn, prompt_ids))
            prompt_ids = drawn
        return list(zip(prompt_ids, counts, strict=True))

    def update(self, outcomes: Mapping[str, Sequence[bool | None]] | Iterable[tuple[str, Sequence[bool | None]]]) -> None:
        """Record whether each rollout was correct, group by group: (prompt id, verdicts) pairs, or a mapping of them.
        Each group is one visit of its prompt, in order, so a prompt with two groups in a step is updated twice.
        None (no verdict) is left out of the counts. A hinted group's outcomes fade its prompt's hint; they are not
        the plain prompt's pass rate."""
        for prompt_id, correct in outcomes.items() if isinstance(outcomes, Mapping) else outcomes:
            base, hint = split_hinted(prompt_id)
            if base not in self._known or (hint and self._hints is None):
                raise KeyError(f"unknown prompt id {prompt_id!r}")
            verdicts = [bool(c) for c in correct if c is not None]
            if hint:
                self._hints.record(base, verdicts)
            elif verdicts:
                self._estimator.update(prompt_id, sum(verdicts), len(verdicts))

    def bounds_at(self, step: int) -> tuple[int, int]:
        """(n_min, n_max) of the bounds schedule's phase that holds `step`."""
        at = bisect.bisect_right([first for first, _, _ in self._phases], step) - 1
        _, n_min, n_max = self._phases[at]
        return n_min, n_max

    def difficulty(self, prompt_id: str) -> float:
        return self._estimator.difficulty(split_hinted(prompt_id)[0])

    def estimate(self, prompt_id: str) -> float | None:
        """The live difficulty (0 easiest), None when the sampler knows nothing of the prompt yet: no outcome and no
        offline rank. Rank estimator: E3's rank, which moves when an epoch begins; beta: 1 - estimated pass rate.
        A hinted id reads its plain prompt's."""
        return self._estimator.estimate(split_hinted(prompt_id)[0])

    def pass_rate(self, prompt_id: str) -> float:
        return self._estimator.pass_rate(split_hinted(prompt_id)[0])

    def metrics(self) -> dict[str, float]:
        """Allocation of the last step (refills included), the current bounds and epoch."""
        metrics = {
            "sampler/n_min": float(self._n_min),
            "sampler/n_max": float(self._n_max),
            "sampler/epoch": float(self._epoch),
        }
        if self._step_counts:
            metrics |= {
                "sampler/alloc_min": float(min(self._step_counts)),
                "sampler/alloc_mean": sum(self._step_counts) / len(self._step_counts),
                "sampler/alloc_max": float(max(self._step_counts)),
                "sampler/skipped": float(self._step_skipped),
            }
        if self._hints is not None:
            metrics["sampler/hinted_prompts"] = float(self._step_hinted)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON. The epoch's order is not stored: it is regenerated from (seed, epoch) and the deferred ids."""
        return {
            "num_prompts": len(self._prompt_ids),
            "epoch": self._epoch,
            "position": self._position,
            "deferred": list(self._deferred),
            "n_min": self._n_min,
            "n_max": self._n_max,
            "last_step": self._last_step,
            "step_prompts": list(self._step_prompts),
            "step_counts": list(self._step_counts),
            "step_skipped": self._step_skipped,
            "estimator": self._estimator.state_dict(),
            **({} if self._hints is None else {"step_hinted": self._step_hinted, "hints": self._hints.state_dict()}),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["num_prompts"] != len(self._prompt_ids):
            raise UserError(
                f"the sampler checkpoint was made for {state['num_prompts']} training prompts, the data now has "
                f"{len(self._prompt_ids)}: resume with the same training data"
            )
        self._epoch = state["epoch"]
        self._position = state["position"]
        self._deferred = list(state["deferred"])
        self._order = self._epoch_order(self._epoch, self._deferred)
        self._n_min = state["n_min"]
        self._n_max = state["n_max"]
        self._last_step = state["last_step"]
        self._step_prompts = list(state["step_prompts"])
        self._step_counts = list(state["step_counts"])
        self._step_skipped = state["step_skipped"]
        self._estimator.load_state_dict(state["estimator"])
        if self._hints is not None:
            if "hints" not in state:
                raise UserError("the sampler checkpoint has no hint state: sampler.hints was added to the recipe; resume without it")
            self._step_hinted = state["step_hinted"]
            self._hints.load_state_dict(state["hints"])

    def _draw(self, count: int) -> list[str]:
        chosen: list[str] = []
        # A step scans at most N prompts, so it spans at most two epochs, and what it drew from the first was moved to
        # the end of the second, past the scan: no step holds a prompt twice.
        scanned = len(self._step_prompts) + self._step_skipped
        skips_left = len(self._prompt_ids) - scanned - count
        while len(chosen) < count:
            if self._position == len(self._order):
                self._start_epoch(self._epoch + 1, deferred=self._step_prompts + chosen)
            prompt_id = self._order[self._position]
            skip = skips_left > 0 and self._is_skipped(prompt_id)
            self._position += 1
            if skip:
                skips_left -= 1
                self._step_skipped += 1
            else:
                chosen.append(prompt_id)
        return chosen

    def _draw_by_signal(self, step: int, count: int) -> list[str]:
        held = set(self._step_prompts)
        candidates = [p for p in self._prompt_ids if p not in held]
        weights = np.array([signal_weight(self._estimator.pass_rate(p), self._rollouts_per_prompt, self._curriculum_floor) for p in candidates])
        u = np.random.default_rng([self._seed, step, len(self._step_prompts)]).random(len(candidates))
        keys = np.log(u) / weights  # Efraimidis-Spirakis: the k largest are a weighted draw without replacement
        order = sorted(range(len(candidates)), key=lambda i: (-keys[i], i))
        return [candidates[i] for i in order[:count]]

    def _is_skipped(self, prompt_id: str) -> bool:
        if self._skip_mastered is None or self._estimator.pass_rate(prompt_id) <= self._skip_mastered:
            return False
        coin = np.random.default_rng([self._seed, self._epoch, self._position]).random()
        return coin >= self._revisit_prob

    def _start_epoch(self, epoch: int, deferred: list[str]) -> None:
        self._epoch = epoch
        self._position = 0
        self._deferred = list(deferred)
        self._order = self._epoch_order(epoch, self._deferred)
        if self._schedule_delta:
            self._n_min = max(self._n_min - self._schedule_delta, self._n_low)
            self._n_max = min(self._n_max + self._schedule_delta, self._n_high)
        self._estimator.end_epoch(epoch)

    def _epoch_order(self, epoch: int, deferred: list[str]) -> list[str]:
        permutation = np.random.default_rng([self._seed, epoch]).permutation(len(self._prompt_ids))
        order = [self._prompt_ids[i] for i in permutation]
        moved = set(deferred)
        return [p for p in order if p not in moved] + [p for p in order if p in moved]
