"""TRL's GRPOTrainer on an rlqa recipe: the same model directory (`model.path`), task split, batch shape, generation
limit, learning rate, clipping, steps and seed, with rlqa's math-verify `accuracy` as the reward. The baseline of
`trl_compare.py`, which passes both frameworks the same recipe and overrides.

It writes a run directory in rlqa's format (metrics.jsonl with rlqa's metric names, summary.json), so the comparison
reads both frameworks the same way and `rlqa report` plots this run too. Each step is timed like rlqa's:

    time/generate   TRL's `_generate` (HF `generate` on the training model, then decoding)
    time/reward     TRL's `_calculate_rewards` (the reward function, math-verify)
    time/train      end of input preparation -> after `optimizer.step()` (forward, backward, clipping, AdamW)
    time/sync       0: TRL generates with the model it trains, so there are no weights to send
    time/step       wall time of the whole step; what the phases leave is TRL's own bookkeeping

Held-out greedy accuracy is measured before training and every `trainer.eval_every` steps with HF `generate`,
outside the step clock (as rlqa's evaluation is outside its `time/step`). Recipe keys TRL has no counterpart for
(the sampler, the temperature controller, rollout workers) are ignored: TRL allocates uniformly at a fixed
temperature (`temperature.initial`).

    python benchmarks/trl_grpo.py RECIPE [key.path=value ...] --run-dir DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from rlqa.config import Recipe
from rlqa.recipe_files import load_recipe, resolve_path
from rlqa.data.sources import build_examples
from rlqa.models import load_model, load_tokenizer, quiet_hf
from rewards.math import accuracy

EVAL_BATCH = 64  # prompts per greedy `generate` call, as rlqa's rollout.micro_batch_size


def grpo_config(recipe: Recipe, out_dir: Path) -> GRPOConfig:
    """rlqa's recipe in TRL's terms. One step = prompts_per_step x rollouts_per_prompt completions, one update."""
    r, lr, alg = recipe.rollout, recipe.learner, recipe.algorithm
    return GRPOConfig(
        output_dir=str(out_dir),
        max_steps=recipe.trainer.steps,
        per_device_train_batch_size=r.prompts_per_step * r.rollouts_per_prompt,
        gradient_accumulation_steps=1,
        num_generations=r.rollouts_per_prompt,
        num_iterations=lr.epochs,
        max_completion_length=r.max_new_tokens,
        temperature=recipe.temperature.initial,
        top_p=r.top_p,
        top_k=r.top_k,
        learning_rate=lr.lr,
        lr_scheduler_type="constant_with_warmup" if lr.schedule == "constant" else lr.schedule,
        warmup_steps=lr.warmup_steps,
        weight_decay=lr.weight_decay,
        adam_beta1=lr.betas[0],
        adam_beta2=lr.betas[1],
        max_grad_norm=lr.grad_clip,
        beta=alg.kl_coef,
        epsilon=alg.clip_low,
        epsilon_high=alg.clip_high,
        loss_type="dapo",  # token-mean over the batch: rlqa's algorithm.loss_aggregation=token-mean
        scale_rewards="group",  # GRPO's (r - mean) / std within the group: rlqa's advantage=grpo
        seed=recipe.trainer.seed,
        data_seed=recipe.trainer.seed,
        use_cpu=not torch.cuda.is_available(),
        bf16=False,  # fp32 like the rlqa run; TRL's bf16 autocast is far slower on CPU
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        save_strategy="no",
        report_to=[],
        logging_steps=10,
        disable_tqdm=True,
    )


class TimedGRPOTrainer(GRPOTrainer):
    """GRPOTrainer with its generation, reward and input-preparation calls timed, and the batch counted."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.clock: dict[str, float] = {"generate": 0.0, "reward": 0.0}
        self.counts: dict[str, float] = {}
        self.prepared_at = 0.0

    def _generate(self, prompts):
        started = time.perf_counter()
        out = super()._generate(prompts)
        self.clock["generate"] += time.perf_counter() - started
        completion_ids = out[1]
        self.counts["rollout/count"] = float(len(completion_ids))
        self.counts["rollout/tokens"] = float(sum(len(ids) for ids in completion_ids))
        return out

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        started = time.perf_counter()
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)  # (B, terms)
        self.clock["reward"] += time.perf_counter() - started
        self.counts["reward/mean"] = float(rewards.sum(dim=1).mean())
        self.counts["correct/mean"] = float(rewards[:, 0].mean())  # the only term is accuracy: 1.0 = correct
        return rewards

    def _prepare_inputs(self, generation_batch):
        inputs = super()._prepare_inputs(generation_batch)
        self.prepared_at = time.perf_counter()
        return inputs


@torch.no_grad()
def greedy_accuracy(model, tokenizer, examples, max_new_tokens: int) -> float:
    """Greedy held-out accuracy, scored by the same math-verify reward the training uses."""
    was_training = model.training
    model.eval()
    texts = []
    for start in range(0, len(examples), EVAL_BATCH):
        batch = tokenizer([e.prompt for e in examples[start : start + EVAL_BATCH]], return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, temperature=None, top_k=None, top_p=None)
        texts += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    model.train(was_training)
    scores = accuracy(texts, answer=[e.answer for e in examples])
    return sum(scores) / len(scores)


class StepLog(TrainerCallback):
    """One metrics.jsonl row per optimizer step; held-out evaluation between steps, off the step clock."""

    def __init__(self, run_dir: Path, evaluate, eval_every: int):
        self.path = run_dir / "metrics.jsonl"
        self.path.write_text("")
        self.evaluate = evaluate
        self.eval_every = eval_every
        self.trainer: TimedGRPOTrainer | None = None
        self.before: float | None = None
        self.last: float | None = None
        self.mark = 0.0  # when the current step's clock started
        self.train_seconds = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.before = self.evaluate()
        self.mark = time.perf_counter()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.train_seconds = time.perf_counter() - self.trainer.prepared_at

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        t = self.trainer
        row = {
            "step": state.global_step - 1,
            "time/generate": t.clock["generate"],
            "time/reward": t.clock["reward"],
            "time/train": self.train_seconds,
            "time/sync": 0.0,
            "time/step": now - self.mark,
            **t.counts,
        }
        row["throughput/tokens_per_s"] = row["rollout/tokens"] / row["time/step"]
        t.clock = dict.fromkeys(t.clock, 0.0)
        if self.eval_every and state.global_step % self.eval_every == 0:
            row["eval/accuracy"] = self.last = self.evaluate()
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.mark = time.perf_counter()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--run-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    quiet_hf()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    recipe = load_recipe(args.recipe, args.overrides)
    if recipe.model.path is None:
        raise SystemExit("trl_grpo.py: set model.path (TRL starts from a saved model, e.g. an rlqa warm-up's final/)")
    model_dir, eval_every = resolve_path(recipe, recipe.model.path), recipe.trainer.eval_every
    args.run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(model_dir)
    train = build_examples(recipe.data.train, recipe, tokenizer, "data.train")
    test = build_examples(recipe.data.test, recipe, tokenizer, "data.test")
    model = load_model(model_dir, recipe.model.dtype)
    dataset = Dataset.from_list([{"prompt": e.prompt, "answer": e.answer} for e in train])

    def evaluate() -> float:
        return greedy_accuracy(model, tokenizer, test, recipe.rollout.max_new_tokens)

    log = StepLog(args.run_dir, evaluate, eval_every)
    trainer = TimedGRPOTrainer(
        model=model, reward_funcs=accuracy, args=grpo_config(recipe, args.run_dir / "trl"), train_dataset=dataset,
        processing_class=tokenizer, callbacks=[log],
    )
    log.trainer = trainer
    trainer.train()
    after = log.last if eval_every and recipe.trainer.steps % eval_every == 0 else evaluate()
    summary = {
        "eval": {"before": {"accuracy": log.before, "num_prompts": len(test)}, "after": {"accuracy": after, "num_prompts": len(test)}},
        "steps": recipe.trainer.steps,
        "wall_seconds": time.perf_counter() - started,
    }
    (args.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
