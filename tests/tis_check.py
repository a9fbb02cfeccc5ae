"""Issue 25's TIS example, worked by hand, checked on a real Learner's update (CPU tests and the GPU test share it).

The sampler recorded log π_sampler(y) = -1.0 for a token whose learner log-prob is -0.5, A = 1, C = 2,
ε_high = 0.28, one token, token-mean. TIS as verl and TRL apply it:

    w = min(π_old,learner / π_sampler, C) = min(e^(-0.5 + 1.0), 2) = e^0.5 = 1.648721
    ρ = π_θ / π_old,learner = 1 on the update's first forward (the weights have not moved yet)
    J = -min(ρ A w, clip(ρ, 0.8, 1.28) A w) = -1.648721;  dJ/dlog π_θ = -ρ A w = -1.648721

Corrected twice (the ratio against π_sampler as well): ρ = e^0.5 = 1.648721 > 1.28, so J = -1.28 · 1.648721 = -2.110363
and the clip leaves no gradient.

A real model's log-prob of a token is not -0.5, but only the difference matters: the sampler's log-prob is set to the
learner's own minus 0.5. With one response of one token the parameter gradient is dJ/dlog π_θ · ∇_θ log π_θ(y), so the
update's gradient norm is 1.648721 · ‖∇_θ log π_θ(y)‖, the latter taken from the model directly.
"""

from __future__ import annotations

import math

import pytest
import torch

from rlqa.learner.batch import TrainSample, collate

E_HALF = math.exp(0.5)  # 1.6487212707
LOSS = -E_HALF  # J with TIS applied once
DOUBLE_CORRECTED_LOSS = -1.28 * E_HALF  # -2.110363, what the double correction gave
TIS_ALGORITHM = {"kl_coef": 0.0, "tis_cap": 2.0, "clip_high": 0.28}
PROMPT, COMPLETION = [5, 17, 42], [23]


def model_logprob_and_grad_norm(learner, temperature: float) -> tuple[float, float]:
    """log π_θ(y | prompt) at `temperature` and ‖∇_θ log π_θ(y)‖ over the trained parameters, from the model's own
    forward and backward (none of the learner's loss code)."""
    model = learner.policy.model
    device = next(model.parameters()).device
    ids = torch.tensor([PROMPT + COMPLETION], device=device)
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, len(PROMPT) - 1].float() / temperature
    logprob = torch.log_softmax(logits, dim=-1)[COMPLETION[0]]
    logprob.backward()
    trained = learner.policy.trainable()
    norm = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in trained if p.grad is not None))
    model.zero_grad(set_to_none=True)
    return float(logprob.detach()), norm


def check_tis_update(learner, step: int = 0, temperature: float = 1.0, rel: float = 1e-4) -> dict[str, float]:
    """One update on the one-token response whose sampler log-prob is the learner's minus 0.5: loss -e^0.5, TIS
    weight e^0.5 and gradient -e^0.5 · ∇log π (see the module docstring)."""
    logprob, grad_norm = model_logprob_and_grad_norm(learner, temperature)
    assert grad_norm > 0
    sample = TrainSample(PROMPT, COMPLETION, [logprob - 0.5], advantage=1.0, reward=1.0)
    assert collate([sample], learner.policy.pad_token_id).mask.sum() == 1  # one response token
    metrics = learner.update([sample], temperature, step)
    assert metrics["policy/tis_weight_mean"] == pytest.approx(E_HALF, rel=rel)
    assert metrics["policy/tis_capped_frac"] == 0.0
    assert metrics["policy/pg_loss"] == pytest.approx(LOSS, rel=rel)
    assert metrics["policy/loss"] == pytest.approx(LOSS, rel=rel)
    assert metrics["policy/clip_frac"] == 0.0  # ρ = 1: the clip is not active (it was, at ρ = e^0.5)
    assert metrics["policy/grad_norm"] == pytest.approx(E_HALF * grad_norm, rel=max(rel, 1e-4))
    return metrics
