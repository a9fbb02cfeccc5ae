"""Per-token estimators of KL(π_θ ‖ π_ref) from tokens sampled by π_θ (Schulman, "Approximating KL divergence").

With x = log π_ref - log π_θ on each sampled token:

    k1 = -x                  unbiased, high variance, can be negative
    k2 = x² / 2              biased, low variance, ≥ 0
    k3 = exp(x) - x - 1      unbiased, low variance, ≥ 0 (the common default)

Used as a loss term β·KL (GRPO) or subtracted from the per-token reward (PPO). β is fixed, or adapted towards a
target KL by `AdaptiveKLController` (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences").
"""

from collections.abc import Callable

from torch import Tensor

# k3 exponentiates x; beyond ±20 the token's two probabilities differ by a factor of 5e8, the estimate is
# meaningless either way, and the bound keeps exp (and its gradient) finite instead of inf.
MAX_LOG_RATIO = 20.0


def _k1(x: Tensor) -> Tensor:
    return -x


def _k2(x: Tensor) -> Tensor:
    return 0.5 * x.square()


def _k3(x: Tensor) -> Tensor:
    x = x.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return x.exp() - x - 1


KL_ESTIMATORS: dict[str, Callable[[Tensor], Tensor]] = {"k1": _k1, "k2": _k2, "k3": _k3}


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: str = "k3") -> Tensor:
    """Per-token KL estimate `kind` ("k1" | "k2" | "k3") with x = ref_logprobs - logprobs.

    logprobs, ref_logprobs: (B, T) log-probabilities of the sampled tokens. Returns (B, T); for k3, x is clamped
    to [-20, 20] before exp.
    """
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kind!r}; supported: {', '.join(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[kind](ref_logprobs - logprobs)


class AdaptiveKLController:
    """β that moves the measured KL towards a target (Ziegler et al. 2019; the same rule as TRL's and verl's):

        e = clip(KL / target - 1, -0.2, 0.2)        β ← β · (1 + e · n / horizon)

    with KL the mean per-token KL of the batch just trained on and n its number of responses. A KL above the
    target raises β (at most 20% per `horizon` responses), one below lowers it. β is training state: it goes into
    the checkpoint through `state_dict`.
    """

    def __init__(self, initial: float, target: float, horizon: int):
        if initial <= 0 or target <= 0 or horizon <= 0:
            raise ValueError(f"adaptive KL needs initial, target and horizon > 0, got {initial}, {target}, {horizon}")
        self.value = initial
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_samples: int) -> float:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_samples / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
