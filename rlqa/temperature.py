"""Sampling temperature that holds the policy's entropy at a target (E3, ALGORITHMS.md §4).

RL on verifiable rewards sharpens the policy step by step; once its entropy collapses, the samples of a group agree
and the group stops teaching. E3 raises the sampling temperature when entropy falls below a target and lowers it
when entropy runs above. After each update, with H_t the token-mean entropy the learner measured at temperature T
and V the number of logits (the output layer's width, `rlqa.models.logits_width`, not the tokenizer's length:
ln V is the entropy's maximum over what the model outputs):

    T ← T · (1 + T · ln(H* / H_t) / (ln V + ln ln V))        clipped to [t_min, t_max] (E3 has no bounds)

H* is configured, or measured as the mean entropy of the first `warmup_updates` updates, during which T stays put.
Over the last `anneal_fraction` of training the target eases down by 10%, so the policy may commit at the end:

    H* = H*_0 · [0.9 + 0.1 · ½(1 + cos(π · progress))]        progress 0 → 1 across that window

The same T must reach generation, the old-log-prob pass and the training forward (logits / T). The learner must
measure entropy on every update, bonus or not: E3's code only did so with a non-zero entropy bonus, so T never moved.
"""

import math
from typing import Any

from rlqa.config import TemperatureConfig


def next_temperature(temperature: float, target_entropy: float, entropy: float, vocab_size: int) -> float:
    """E3's rule, unclipped: T · (1 + T · ln(H* / H) / (ln V + ln ln V))."""
    log_vocab = math.log(vocab_size)
    return temperature * (1 + temperature * math.log(target_entropy / entropy) / (log_vocab + math.log(log_vocab)))


def annealed_target(base: float, step: int, total_steps: int, anneal_fraction: float) -> float:
    """H*_0 · [0.9 + 0.1 · ½(1 + cos(π · progress))], progress 0 → 1 over steps (1 - f)·total … total."""
    if anneal_fraction == 0:
        return base
    start = (1 - anneal_fraction) * total_steps
    progress = min(max((step - start) / (total_steps - start), 0.0), 1.0)
    return base * (0.9 + 0.1 * 0.5 * (1 + math.cos(math.pi * progress)))


class TemperatureController:
    """Owned by the driver: `update(entropy, step)` after each learner update, `temperature` for the next rollouts.

    `step` counts updates from 1, so the last of `total_steps` sees the fully annealed target. Mode "fixed" keeps
    the same bookkeeping (target, annealing, metrics) but never moves T.
    """

    def __init__(self, cfg: TemperatureConfig, *, vocab_size: int, total_steps: int):
        """`cfg` is the recipe's validated temperature section; V = `vocab_size`; `total_steps` places the anneal."""
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self._mode = cfg.mode
        self._warmup_updates = cfg.warmup_updates
        self._vocab_size = vocab_size
        self._t_min = cfg.t_min
        self._t_max = cfg.t_max
        self._anneal_fraction = cfg.anneal_fraction
        self._total_steps = total_steps
        self._temperature = cfg.initial
        self._base_target = cfg.target  # H*_0; None until measured
        self._warmup_entropies: list[float] = []
        self._last_step: int | None = None

    @property
    def temperature(self) -> float:
        return self._temperature

    @property
    def target(self) -> float | None:
        """H* as of the last update (annealed), or None while it is still being measured."""
        if self._base_target is None:
            return None
        step = 0 if self._last_step is None else self._last_step
        return annealed_target(self._base_target, step, self._total_steps, self._anneal_fraction)

    def update(self, entropy: float, step: int) -> float:
        """Take the entropy measured on update `step`; return the temperature for the next rollouts."""
        if not (math.isfinite(entropy) and entropy > 0):
            raise ValueError(
                f"entropy must be a positive finite number, got {entropy}: the learner must measure the policy "
                "entropy on every update"
            )
        self._last_step = step
        if self._base_target is None:
            self._warmup_entropies.append(entropy)
            if len(self._warmup_entropies) == self._warmup_updates:
                self._base_target = sum(self._warmup_entropies) / len(self._warmup_entropies)
            return self._temperature
        if self._mode == "entropy":
            proposed = next_temperature(self._temperature, self.target, entropy, self._vocab_size)
            self._temperature = min(max(proposed, self._t_min), self._t_max)
        return self._temperature

    def metrics(self) -> dict[str, float]:
        """The entropy target, once there is one. (The temperature itself is logged with the rollouts it sampled.)"""
        return {} if self.target is None else {"policy/target_entropy": self.target}

    def state_dict(self) -> dict[str, Any]:
        return {
            "temperature": self._temperature,
            "base_target": self._base_target,
            "warmup_entropies": list(self._warmup_entropies),
            "last_step": self._last_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._temperature = state["temperature"]
        self._base_target = state["base_target"]
        self._warmup_entropies = list(state["warmup_entropies"])
        self._last_step = state["last_step"]
