"""Length bucketing changes how a step's rollouts are grouped into micro-batches, never the gradient: each
micro-batch's loss is weighted by its share of the whole batch's normaliser, for every loss aggregation.

A real tiny transformers model; the reference is the padded path (the whole batch as one micro-batch, padded to the
longest sequence), the bucketed path keeps each micro-batch's padding within 15%.
"""

from pathlib import Path

import pytest
import torch

from rlqa.recipe_files import validate_recipe
from rlqa.learner.batch import TrainSample
from rlqa.learner.learner import Learner
from rlqa.learner.plan import pack_by_tokens
from rlqa.models import create_model_dir

pytestmark = pytest.mark.integration  # trains a model (a tiny one)

TINY = {"hidden_size": 32, "layers": 2, "heads": 2, "intermediate_size": 64, "max_positions": 64}
COMPLETIONS = [2, 30, 5, 25, 8, 40, 3, 12, 18, 35, 6, 22]  # tokens per response: a step with mixed lengths


def samples() -> list[TrainSample]:
    generator = torch.Generator().manual_seed(0)
    out = []
    for i, n in enumerate(COMPLETIONS):
        prompt = torch.randint(3, 90, (3 + i % 4,), generator=generator).tolist()
        completion = torch.randint(3, 90, (n,), generator=generator).tolist()
        logprobs = (-4 + torch.rand(n, generator=generator)).tolist()
        out.append(TrainSample(prompt, completion, logprobs, (-1.0) ** i * (0.5 + i / 12), reward=float(i % 2)))
    return out


def gradients(tmp_path: Path, algorithm: dict, learner: dict) -> tuple[torch.Tensor, dict]:
    raw = {"model": {"tiny": TINY}, "learner": {"lr": 1e-3, "grad_clip": 1e9, **learner}, "algorithm": algorithm}
    recipe = validate_recipe(raw, source="test", base_dir=tmp_path)
    model_dir = tmp_path / "model"
    if not model_dir.exists():
        create_model_dir(recipe.model, model_dir, seed=0)
    result = Learner(str(model_dir), recipe, total_steps=1)
    result.start_rl()
    metrics = result.update(samples(), temperature=0.9, step=0)
    grads = [p.grad.flatten() for p in result.policy.model.parameters() if p.grad is not None]
    if result.critic is not None:
        grads += [p.grad.flatten() for p in result.critic.parameters() if p.grad is not None]
    return torch.cat(grads), metrics


PADDED = {"micro_batch_size": 64, "micro_batch_pad_frac": 1.0}  # one micro-batch: the padded path
BUCKETED = {"micro_batch_size": 64, "micro_batch_pad_frac": 0.15}
PPO = {"name": "ppo", "advantage": "gae", "old_logprobs": "recompute", "critic": {"kind": "head", "lr": 1e-2}}


@pytest.mark.parametrize(
    "algorithm",
    [
        {"loss_aggregation": "token-mean", "kl_coef": 0.1, "entropy_coef": 0.01},
        {"loss_aggregation": "seq-mean-token-mean", "kl_coef": 0.1, "entropy_coef": 0.01},
        {"loss_aggregation": "seq-mean-token-sum-norm", "kl_coef": 0.1, "entropy_coef": 0.01},
        {"loss_aggregation": "token-mean", "policy_loss": "gspo"},
        {**PPO, "loss_aggregation": "seq-mean-token-mean"},
    ],
    ids=["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm", "gspo", "ppo"],
)
def test_bucketed_micro_batches_give_the_padded_paths_gradient(tmp_path, algorithm):
    padded, padded_metrics = gradients(tmp_path, algorithm, PADDED)
    bucketed, bucketed_metrics = gradients(tmp_path, algorithm, BUCKETED)
    assert float(padded.norm()) > 0
    assert float((bucketed - padded).norm() / padded.norm()) < 1e-6
    for key in ("policy/loss", "policy/entropy", "policy/kl", "policy/clip_frac"):
        assert bucketed_metrics[key] == pytest.approx(padded_metrics[key], rel=1e-5, abs=1e-7), key

    # the preparing pass and the optimizer step run the same micro-batches, so pad_frac is that of one plan
    lengths = [s.length for s in samples()]
    assert padded_metrics["learner/pad_frac"] == pytest.approx(1 - sum(lengths) / (len(lengths) * max(lengths)))
    buckets = pack_by_tokens(list(range(len(lengths))), lengths, None, 64, 0.15)
    processed = sum(len(b) * max(lengths[i] for i in b) for b in buckets)
    assert bucketed_metrics["learner/pad_frac"] == pytest.approx(1 - sum(lengths) / processed)
    assert bucketed_metrics["learner/pad_frac"] <= 0.15 < padded_metrics["learner/pad_frac"]
