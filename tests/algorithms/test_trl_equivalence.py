"""Our policy loss against TRL's GRPOTrainer, run through TRL's own code path.

How: a real `trl.GRPOTrainer` is built (tiny local model, `GRPOConfig` with the loss type, β, ε and ε_high under
test) and its `_compute_loss(model, inputs)` is called on a hand-made batch: left-padded prompts, completions of
uneven lengths (masks), mixed-sign advantages, and old and reference log-probs set apart from the current ones so
that ratios fall on both sides of both clip bounds. TRL computes the current log-probs with the model itself; a spy
on `_get_per_token_logps_and_entropies` hands us exactly the tensor TRL used, and we feed that same tensor (with
the same advantages, masks, old and reference log-probs) to `rlqa.algorithms.losses.policy_objective`. Both the
loss and its gradient with respect to the log-probs must agree to within 1e-6.

TRL loss type -> our aggregation: grpo -> seq-mean-token-mean, bnpo, dapo and cispo -> token-mean (dapo and cispo
normalise by the generation batch's token count: one process, no accumulation), dr_grpo -> seq-mean-token-sum-norm
with max_len = max_completion_length. TRL's importance_sampling_level="sequence" is our policy_loss gspo, its
loss_type cispo our policy_loss cispo (TRL's epsilon_high is then our cispo_max_ratio); everything else is our
policy_loss clip. clip-higher is TRL's epsilon_high; the KL term is TRL's k3 with beta, by default weighted by the
loss's importance ratio (per token; per sequence for GSPO) (TRL's `use_bias_correction_kl=True`, our
`kl_ratio_weighted`), and without that weight when TRL is told `use_bias_correction_kl=False`.
TRL's entropy bonus is a token mean whatever the loss type; ours follows the aggregation (as verl does), so the
bonus is compared only where the two coincide (token-mean).
"""

import pytest
import torch

pytest.importorskip("trl")
from datasets import Dataset  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from rlqa.algorithms.policy_losses import policy_objective  # noqa: E402
from rlqa.config import AlgorithmConfig, TinyModelConfig  # noqa: E402
from rlqa.models import build_char_tokenizer, build_tiny_model  # noqa: E402

MAX_COMPLETION = 6
AGGREGATION = {
    "grpo": "seq-mean-token-mean", "bnpo": "token-mean", "dapo": "token-mean", "cispo": "token-mean",
    "dr_grpo": "seq-mean-token-sum-norm",
}

CASES = [
    # (loss_type, importance_sampling_level, beta, epsilon_high, entropy_coef, ratio-weighted KL)
    ("grpo", "token", 0.0, 0.2, 0.0, True),  # TRL's defaults: symmetric clip, no KL
    ("grpo", "token", 0.04, 0.28, 0.0, True),
    ("grpo", "token", 0.04, 0.28, 0.0, False),
    ("bnpo", "token", 0.04, 0.28, 0.01, True),
    ("dr_grpo", "token", 0.04, 0.28, 0.0, True),
    ("dr_grpo", "token", 0.04, 0.2, 0.0, False),
    ("dapo", "token", 0.0, 0.28, 0.01, True),
    ("dapo", "token", 0.04, 0.28, 0.0, False),
    # GSPO: the paper's setup (loss_type grpo), then with the KL weighted by the sequence ratio, and token-mean
    ("grpo", "sequence", 0.0, 0.2, 0.0, True),
    ("grpo", "sequence", 0.04, 0.28, 0.0, True),
    ("bnpo", "sequence", 0.04, 0.2, 0.01, False),
    # CISPO: epsilon_high is the bound of the importance weight; 1.3 caps some of this batch's ratios (up to 1.65)
    ("cispo", "token", 0.0, 1.3, 0.0, True),
    ("cispo", "token", 0.04, 1.3, 0.01, True),
    ("cispo", "token", 0.04, 5.0, 0.0, False),  # ScaleRL's bound: no ratio of this batch reaches it
]


def our_algorithm(loss_type, level, beta, epsilon_high, entropy_coef, ratio_weighted_kl) -> AlgorithmConfig:
    """The recipe's algorithm section that asks for TRL's loss."""
    if loss_type == "cispo":
        policy_loss, clip = {"policy_loss": "cispo", "cispo_max_ratio": epsilon_high}, {}
    else:
        policy_loss = {"policy_loss": "gspo" if level == "sequence" else "clip"}
        clip = {"clip_low": 0.2, "clip_high": epsilon_high}
    return AlgorithmConfig(
        **policy_loss, **clip, kl_coef=beta, kl_estimator="k3", kl_ratio_weighted=ratio_weighted_kl,
        entropy_coef=entropy_coef, loss_aggregation=AGGREGATION[loss_type],
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("trl_model")
    tokenizer = build_char_tokenizer()
    shape = TinyModelConfig(hidden_size=16, layers=1, heads=2, intermediate_size=32, max_positions=64)
    build_tiny_model(shape, len(tokenizer), seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _trainer(model_dir, tmp_path, loss_type, level, beta, epsilon_high, entropy_coef, ratio_weighted_kl):
    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=MAX_COMPLETION,
        loss_type=loss_type,
        importance_sampling_level=level,
        beta=beta,
        epsilon=0.2,
        epsilon_high=epsilon_high,
        entropy_coef=entropy_coef,
        use_bias_correction_kl=ratio_weighted_kl,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
    )
    trainer = GRPOTrainer(
        model=str(model_dir),
        reward_funcs=lambda completions, **kwargs: [0.0] * len(completions),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["1+1=", "2+3="]}),
        processing_class=build_char_tokenizer(),
    )
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's training loop, which we do not run
    trainer.model.train()
    return trainer


def _inputs(trainer):
    """Four completions of 6, 4, 1 and 3 tokens behind left-padded prompts; old/ref log-probs moved off the
    current ones by up to ±0.5 nats (ratios ≈ 0.6 to 1.65, so both clip bounds are crossed)."""
    generator = torch.Generator().manual_seed(0)
    prompt_ids = torch.tensor([[0, 20, 21, 22], [23, 24, 25, 26], [0, 0, 27, 28], [0, 29, 30, 31]])
    completion_ids = torch.randint(3, 90, (4, MAX_COMPLETION), generator=generator)
    lengths = torch.tensor([6, 4, 1, 3])
    completion_mask = (torch.arange(MAX_COMPLETION) < lengths.unsqueeze(-1)).long()
    with torch.no_grad():
        current, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model,
            torch.cat([prompt_ids, completion_ids], 1),
            torch.cat([(prompt_ids != 0).long(), completion_mask], 1),
            MAX_COMPLETION,
        )
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": (prompt_ids != 0).long(),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.tensor([1.3, -0.7, 0.4, -1.1]),
        "old_per_token_logps": current + (torch.rand(4, MAX_COMPLETION, generator=generator) - 0.5),
        "ref_per_token_logps": current + (torch.rand(4, MAX_COMPLETION, generator=generator) - 0.5),
        "num_items_in_batch": completion_mask.sum(),
    }


@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, case)) for case in CASES])
def test_policy_objective_matches_trl(model_dir, tmp_path, case):
    loss_type, _, beta, epsilon_high, *_ = case
    trainer = _trainer(model_dir, tmp_path, *case)
    inputs = _inputs(trainer)
    seen = {}
    compute = trainer._get_per_token_logps_and_entropies

    def spy(*args, **kwargs):
        seen["logps"], seen["entropy"], aux = compute(*args, **kwargs)
        return seen["logps"], seen["entropy"], aux

    trainer._get_per_token_logps_and_entropies = spy
    trl_loss = trainer._compute_loss(trainer.model, inputs)

    mask = inputs["completion_mask"]
    ours, stats = policy_objective(
        seen["logps"],
        inputs["old_per_token_logps"],
        inputs["advantages"],
        mask,
        our_algorithm(*case),
        ref_logprobs=inputs["ref_per_token_logps"] if beta > 0 else None,
        entropy=seen["entropy"],
        max_len=MAX_COMPLETION,
    )
    assert ours.item() == pytest.approx(trl_loss.item(), abs=1e-6)
    # the same gradient with respect to every log-prob, padding included (where both must give 0)
    (trl_grad,) = torch.autograd.grad(trl_loss, seen["logps"], retain_graph=True)
    (our_grad,) = torch.autograd.grad(ours, seen["logps"])
    assert torch.allclose(our_grad, trl_grad, atol=1e-6, rtol=0)
    assert torch.equal(trl_grad[mask == 0], torch.zeros_like(trl_grad[mask == 0]))
    # the batch really exercises clipping: some tokens are clipped and some are not
    if epsilon_high < 2:
        assert 0 < stats["clip_frac"].item() < 1
