"""Per-token estimators of KL(π_θ ‖ π_ref) from tokens sampled by π_θ (Schulman, "Approximating KL divergence").

With x = log π_ref - log π_θ on each sampled token:

    k1 = -x                  unbiased, high variance, can be negative
    k2 = x² / 2              biased, low variance, ≥ 0
    k3 = exp(x) - x - 1      unbiased, low variance, ≥ 0 (the common default)

Used as a loss term β·KL (GRPO) or subtracted from the per-token reward (PPO).
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
