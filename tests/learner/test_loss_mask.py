"""The per-token loss mask (issue 27): a rollout's `loss_mask` marks the completion tokens the model sampled (1) and
those a tool or environment inserted (0). The learner trains on, and measures, the model's tokens only; no mask is
all ones, today's single-turn path.

Pure tensor tests work the numbers out by hand; the learner tests run a real tiny transformers model.
"""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from rlqa.algorithms.entropy import entropy_from_logits, token_logprobs
from rlqa.algorithms.gae import gae_advantages, token_level_rewards
from rlqa.algorithms.losses import aggregate
from rlqa.algorithms.mismatch import logprob_gap
from rlqa.algorithms.policy_losses import policy_objective
from rlqa.recipe_files import validate_recipe
from rlqa.learner.batch import TrainSample, collate, per_sample
from rlqa.learner.learner import Learner
from rlqa.models import create_model_dir
from rlqa.rollout.types import Rollout
from rlqa.stages import StepBatch, rollout_metrics

# -- the mask through collate ------------------------------------------------------------------------------------------


def test_collate_turns_the_loss_mask_into_the_token_mask():
    # prompt [5, 6] + completion [7, 8, 9] where 8 is a tool's token: positions 1, 2, 3 predict 7, 8, 9
    a = TrainSample([5, 6], [7, 8, 9], [-0.1, -0.2, -0.3], 1.0, loss_mask=[1, 0, 1])
    # prompt [4] + completion [3, 2], no mask: all ones
    b = TrainSample([4], [3, 2], [-0.4, -0.5], -1.0)
    batch = collate([a, b], pad_token_id=0)
    assert batch.mask.tolist() == [[0, 1, 0, 1], [1, 1, 0, 0]]
    # per-token fields still cover the whole completion, so a sample re-collates and reads back whole
    assert torch.allclose(batch.old_logprobs, torch.tensor([[0.0, -0.1, -0.2, -0.3], [-0.4, -0.5, 0.0, 0.0]]))
    rows = per_sample(batch.old_logprobs, [a, b])
    assert rows[0] == pytest.approx([-0.1, -0.2, -0.3]) and rows[1] == pytest.approx([-0.4, -0.5])


def test_an_all_ones_mask_collates_to_the_unmasked_batch():
    plain = TrainSample([5, 6], [7, 8, 9], [-0.1, -0.2, -0.3], 1.0)
    ones = replace(plain, loss_mask=[1, 1, 1])
    for name, tensor in vars(collate([plain], 0)).items():
        if isinstance(tensor, torch.Tensor):
            assert torch.equal(tensor, getattr(collate([ones], 0), name)), name


@pytest.mark.parametrize("mask", [[1, 0], [1, 0, 1, 1], [1, 2, 0]])
def test_a_loss_mask_is_one_0_or_1_per_completion_token(mask):
    with pytest.raises(ValueError, match="loss_mask"):
        TrainSample([1], [2, 3, 4], [-1.0] * 3, 0.0, loss_mask=mask)
    with pytest.raises(ValueError, match="loss_mask"):
        Rollout("p", 0, [1], [2, 3, 4], [-1.0] * 3, "stop", 0, loss_mask=mask)


# -- aggregation, KL, entropy and the log-prob gap by hand -------------------------------------------------------------


def _two_sequences() -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token values and the mask of two sequences: lengths 3 and 2, the second's last token a tool's."""
    a = TrainSample([1], [2, 3, 4], [1.0, 2.0, 3.0], 0.0)
    b = TrainSample([1], [5, 6], [4.0, 100.0], 0.0, loss_mask=[1, 0])
    batch = collate([a, b], pad_token_id=0)  # the per-token values ride in old_logprobs' slots
    return batch.old_logprobs, batch.mask


def test_aggregations_count_model_tokens_only_by_hand():
    values, mask = _two_sequences()
    # model tokens: 1, 2, 3 (sequence a) and 4 (sequence b); the tool's 100 counts nowhere
    assert float(aggregate(values, mask, "token-mean")) == pytest.approx((1 + 2 + 3 + 4) / 4)  # 2.5
    # a: (1 + 2 + 3) / 3 = 2; b: 4 / 1 = 4; mean of the two: 3
    assert float(aggregate(values, mask, "seq-mean-token-mean")) == pytest.approx(3.0)
    # each sequence's sum over max_len 3, then the mean: (6 / 3 + 4 / 3) / 2 = 5 / 3
    assert float(aggregate(values, mask, "seq-mean-token-sum-norm", max_len=3)) == pytest.approx(5 / 3)


def test_logprob_gap_measures_model_tokens_only_by_hand():
    learner, mask = _two_sequences()
    sampler = learner + torch.tensor([[0.1, 0.2, 0.3], [0.4, 50.0, 0.0]])  # a huge gap on the tool's token
    mean, largest = logprob_gap(learner, sampler, mask)
    # |gaps| 0.1, 0.2, 0.3, 0.4: mean 0.25, max 0.4
    assert float(mean) == pytest.approx(0.25) and float(largest) == pytest.approx(0.4)


def test_entropy_and_kl_stats_count_model_tokens_only_by_hand():
    _, mask = _two_sequences()  # [[1, 1, 1], [1, 0, 0]]
    cfg = validate_recipe({"algorithm": {"kl_estimator": "k1"}}, source="test", base_dir=Path(".")).algorithm
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -50.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-4.5, -1.0, 0.0]])
    entropy = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 0.0]])
    _, stats = policy_objective(logprobs, logprobs, torch.tensor([1.0, 1.0]), mask, cfg, ref_logprobs=ref, entropy=entropy)
    # the entropy the temperature controller follows: (1 + 2 + 3 + 4) / 4 = 2.5, the tool's 100 left out
    assert float(stats["entropy"]) == pytest.approx(2.5)
    # k1 = log π - log π_ref: 0.5, 0, -1, 0.5 on the model's tokens: mean 0 (the tool's -49 left out)
    assert float(stats["kl"]) == pytest.approx(0.0)


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("loss", ["clip", "gspo", "cispo"])
def test_masked_tokens_get_exactly_zero_gradient_from_every_term(aggregation, loss):
    # logits of 2 sequences x 4 positions x 5 tokens; row 0 predicts [model, tool, tool, model], row 1 [model x3, pad]
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, generator=generator, requires_grad=True)
    targets = torch.randint(0, 5, (2, 4), generator=generator)
    mask = torch.tensor([[1.0, 0, 0, 1], [1, 1, 1, 0]])
    cfg = validate_recipe(
        {"algorithm": {"policy_loss": loss, "loss_aggregation": aggregation, "kl_coef": 0.1, "entropy_coef": 0.01,
                       "kl_estimator": "k3", "kl_ratio_weighted": True}},
        source="test", base_dir=Path("."),
    ).algorithm
    logprobs = token_logprobs(logits, targets)
    old = logprobs.detach() - 0.3
    ref = logprobs.detach() + 0.2
    objective, stats = policy_objective(
        logprobs, old, torch.tensor([1.0, -0.5]), mask, cfg, ref_logprobs=ref, entropy=entropy_from_logits(logits),
        tis_weights=torch.full((2, 4), 0.8), max_len=4,
    )
    objective.backward()
    per_position = logits.grad.abs().sum(-1)  # (2, 4)
    assert torch.all(per_position[mask == 0] == 0.0)  # exactly zero: the masked positions are selected away
    assert torch.all(per_position[mask == 1] > 0)


def test_gae_steps_over_tool_tokens_by_hand():
    # one response of 3 model positions around a tool's token: mask [1, 0, 1]; the tool's value is garbage (9)
    mask = torch.tensor([[1.0, 0, 1]])
    values = torch.tensor([[0.5, 9.0, 0.25]])
    rewards = token_level_rewards(torch.tensor([1.0]), mask)
    assert rewards.tolist() == [[0.0, 0.0, 1.0]]  # the score sits on the last model token
    advantages, returns = gae_advantages(rewards, values, mask, gamma=1.0, lam=0.5)
    # t = 2: δ = 1 + 0 - 0.25 = 0.75, A = 0.75
    # t = 1: the tool's token: skipped (A 0 there), V_next stays 0.25, A_next stays 0.75
    # t = 0: δ = 0 + 0.25 - 0.5 = -0.25, A = -0.25 + 0.5 · 0.75 = 0.125
    assert advantages[0].tolist() == pytest.approx([0.125, 0.0, 0.75])
    assert returns[0].tolist() == pytest.approx([0.625, 0.0, 1.0])


# -- rollouts: the driver's side ---------------------------------------------------------------------------------------


def _rollout(completion: list[int], loss_mask: list[int] | None) -> Rollout:
    return Rollout("p", 0, [1, 2], completion, [-1.0] * len(completion), "stop", 3, "text", loss_mask)


def test_step_batch_state_round_trips_the_mask_and_loads_states_without_it():
    batch = StepBatch(0, 1.0, [("p", 2)], [_rollout([3, 4, 5], [1, 0, 1]), _rollout([6], None)])
    again = StepBatch.from_state(batch.to_state())
    assert [r.loss_mask for r in again.rollouts] == [[1, 0, 1], None]
    old = batch.to_state()  # an async checkpoint written before the field existed
    for r in old["rollouts"]:
        del r["loss_mask"]
    assert [r.loss_mask for r in StepBatch.from_state(old).rollouts] == [None, None]


def test_train_samples_carry_the_rollouts_mask():
    batch = StepBatch(0, 1.0, [("p", 2)], [_rollout([3, 4, 5], [1, 0, 1]), _rollout([6], None)])
    batch.rewards, batch.correct, batch.dropped = [1.0, 0.0], [True, False], [False, False]
    batch.advantages = torch.tensor([1.0, -1.0])
    assert [s.loss_mask for s in batch.train_samples()] == [[1, 0, 1], None]


def test_length_metrics_count_model_tokens():
    # completions of 5 tokens (2 of them a tool's) and 2 tokens: 3 and 2 model tokens
    batch = StepBatch(0, 1.0, [("p", 2)], [_rollout([3, 4, 5, 6, 7], [1, 0, 0, 1, 1]), _rollout([8, 9], None)])
    batch.rewards, batch.correct, batch.dropped = [1.0, 0.0], [True, False], [False, False]
    metrics = rollout_metrics(batch, version=4, worker_restarts=0)
    assert metrics["rollout/length_mean"] == 2.5  # (3 + 2) / 2
    assert metrics["rollout/length_correct_mean"] == 3.0
    assert metrics["rollout/tokens"] == 7.0  # every completion token: what the learner's forward passes process


# -- the learner ---------------------------------------------------------------------------------------------------------

TINY = {"hidden_size": 32, "layers": 2, "heads": 2, "intermediate_size": 64, "max_positions": 64}
COMPLETIONS = [2, 7, 5, 4, 8, 3]
# every other sample has a tool's span inside its completion (never its first or last token)
MASKS = [None, [1, 0, 0, 1, 1, 0, 1], None, [1, 0, 1, 1], None, [1, 0, 1]]


def _samples(masks: list[list[int] | None]) -> list[TrainSample]:
    generator = torch.Generator().manual_seed(0)
    out = []
    for i, (n, mask) in enumerate(zip(COMPLETIONS, masks)):
        prompt = torch.randint(3, 90, (3 + i % 3,), generator=generator).tolist()
        completion = torch.randint(3, 90, (n,), generator=generator).tolist()
        logprobs = (-4 + torch.rand(n, generator=generator)).tolist()
        out.append(TrainSample(prompt, completion, logprobs, (-1.0) ** i * (0.5 + i / 6), reward=float(i % 2), loss_mask=mask))
    return out


def _update(tmp_path: Path, algorithm: dict, samples: list[TrainSample]) -> tuple[torch.Tensor, dict, list[torch.Tensor]]:
    """One update from the same starting weights: its gradient, its metrics, and the logits and then their gradient
    of each forward pass with gradient (the hook keeps them)."""
    raw = {"model": {"tiny": TINY}, "learner": {"lr": 1e-3, "grad_clip": 1e9, "micro_batch_size": 64, "micro_batch_pad_frac": 1.0}, "algorithm": algorithm}
    recipe = validate_recipe(raw, source="test", base_dir=tmp_path)
    model_dir = tmp_path / "model"
    if not model_dir.exists():
        create_model_dir(recipe.model, model_dir, seed=0)
    learner = Learner(str(model_dir), recipe, total_steps=1)
    learner.start_rl()
    logit_grads: list[torch.Tensor] = []

    def keep_gradient(module, inputs, output):
        if output.requires_grad:
            logit_grads.append(output.detach().clone())  # the logits, then (backward) their gradient
            output.register_hook(lambda grad: logit_grads.append(grad.detach().clone()))

    learner.policy.model.get_output_embeddings().register_forward_hook(keep_gradient)
    metrics = learner.update(samples, temperature=0.9, step=0)
    grads = [p.grad.flatten() for p in learner.policy.model.parameters() if p.grad is not None]
    if learner.critic is not None:
        grads += [p.grad.flatten() for p in learner.critic.parameters() if p.grad is not None]
    return torch.cat(grads), metrics, logit_grads


ALGORITHMS = [
    {"loss_aggregation": "token-mean", "kl_coef": 0.1, "entropy_coef": 0.01},
    {"loss_aggregation": "seq-mean-token-mean", "kl_coef": 0.1, "entropy_coef": 0.01, "tis_cap": 2.0},
    {"loss_aggregation": "seq-mean-token-sum-norm", "entropy_coef": 0.01},
    {"loss_aggregation": "token-mean", "policy_loss": "gspo", "entropy_coef": 0.01},
    {"name": "ppo", "advantage": "gae", "kl_coef": 0.05, "kl_in_reward": True, "entropy_coef": 0.01,
     "critic": {"kind": "head", "lr": 1e-2}},
]  # each with an entropy bonus: a clipped token still gets its gradient, so every model position has one
IDS = ["token-mean", "seq-mean-token-mean+tis", "seq-mean-token-sum-norm", "gspo", "ppo"]


def _same_metrics(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == b[key] or (a[key] != a[key] and b[key] != b[key]), key  # equal, or both NaN


@pytest.mark.integration
@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=IDS)
def test_an_all_ones_mask_gives_todays_gradient_and_metrics_exactly(tmp_path, algorithm):
    plain = _samples([None] * len(COMPLETIONS))
    ones = [replace(s, loss_mask=[1] * len(s.completion_tokens)) for s in plain]
    grad, metrics, _ = _update(tmp_path, algorithm, plain)
    grad_ones, metrics_ones, _ = _update(tmp_path, algorithm, ones)
    assert float(grad.norm()) > 0
    assert torch.equal(grad, grad_ones)
    _same_metrics(metrics, metrics_ones)


@pytest.mark.integration
@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=IDS)
def test_the_tools_tokens_carry_no_gradient_and_change_no_metric(tmp_path, algorithm):
    masked = _samples(MASKS)
    grad, metrics, logit_grads = _update(tmp_path, algorithm, masked)
    # The sampler's log-probs of the tool's tokens mean nothing (the model did not sample them): move them anywhere
    # and the update, its gradient and every metric (the log-prob gap, TIS weights, KL, entropy) stay exactly the same.
    moved = [
        s if s.loss_mask is None else replace(s, old_logprobs=[lp if m else lp - 7.0 for lp, m in zip(s.old_logprobs, s.loss_mask)])
        for s in masked
    ]
    grad_moved, metrics_moved, _ = _update(tmp_path, algorithm, moved)
    assert torch.equal(grad, grad_moved)
    _same_metrics(metrics, metrics_moved)

    # The logits that predict a tool's token get exactly zero gradient; those that predict a model token do not.
    # One micro-batch (micro_batch_size 64, any padding): its rows are the samples longest first.
    batch = collate(sorted(masked, key=lambda s: -s.length), pad_token_id=0)
    logits, logit_grad = logit_grads
    per_position = logit_grad[:, :-1].abs().sum(-1)  # (B, L-1): position p predicts target p
    tool = torch.zeros_like(batch.mask, dtype=torch.bool)
    for row, s in enumerate(sorted(masked, key=lambda s: -s.length)):
        start = len(s.prompt_tokens) - 1
        for j, m in enumerate(s.loss_mask or []):
            tool[row, start + j] = m == 0
    assert int(tool.sum()) == 3 + 1 + 1  # the three samples' tool tokens
    assert torch.all(per_position[tool] == 0.0)
    assert torch.all(per_position[batch.mask.bool()] > 0)

    # policy/entropy, what the temperature controller follows: the mean entropy of softmax(logits / T) over the
    # model's tokens, computed here directly from the logits
    log_p = torch.log_softmax(logits[:, :-1].double() / 0.9, dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1)  # (B, L-1)
    assert metrics["policy/entropy"] == pytest.approx(float(entropy[batch.mask.bool()].mean()), rel=1e-6)
    assert metrics["policy/entropy"] != pytest.approx(float(entropy[batch.mask.bool() | tool].mean()), rel=1e-6)

    # and the masked update is not today's: the tools' tokens would have counted
    grad_plain, metrics_plain, _ = _update(tmp_path, algorithm, [replace(s, loss_mask=None) for s in masked])
    assert not torch.equal(grad, grad_plain)
    assert metrics["rollout/logprob_diff_mean"] != metrics_plain["rollout/logprob_diff_mean"]
