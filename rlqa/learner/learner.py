"""The Learner actor: holds the policy (and the reference when β > 0), its optimizer, and runs updates.

It is a thin shell around the pure functions in `rlqa.algorithms`: it pads rollouts into tensors, runs the forward
pass at the sampling temperature (logits / T), and steps AdamW. It also runs the SFT warm-up, so the policy that
RL starts from never leaves the process that trains it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import get_scheduler

from rlqa.algorithms.entropy import entropy_from_logits, token_logprobs
from rlqa.algorithms.kl import kl_penalty
from rlqa.algorithms.losses import aggregate, clipped_policy_loss
from rlqa.config import Recipe
from rlqa.learner.batch import TrainSample, collate
from rlqa.learner.sft import run_sft
from rlqa.models import load_model, load_tokenizer, quiet_hf


def _count(mask: torch.Tensor, aggregation: str) -> float:
    """What an aggregation averages over: tokens for token-mean, sequences with a token otherwise."""
    if aggregation == "token-mean":
        return float(mask.sum())
    return float((mask.sum(-1) > 0).sum())


class Learner:
    def __init__(self, model_dir: str, recipe: Recipe, total_steps: int):
        quiet_hf()
        torch.set_num_threads(recipe.learner.torch_threads)
        torch.manual_seed(recipe.trainer.seed)
        self.recipe = recipe
        self.cfg = recipe.learner
        self.algo = recipe.algorithm
        self.total_steps = total_steps
        self.tokenizer = load_tokenizer(model_dir, recipe.model.trust_remote_code)
        self.model = load_model(model_dir, recipe.model.dtype, recipe.model.trust_remote_code)
        self.reference = None
        self.optimizer = None
        self.scheduler = None
        self.version = 0

    def sft(self, pairs: list[tuple[str, str]], out_dir: str) -> dict[str, float]:
        """ReFT's warm-up: supervised fine-tuning on (prompt, worked solution) pairs."""
        metrics = run_sft(self.model, self.tokenizer, pairs, self.recipe.sft, self.recipe.trainer.seed, out_dir)
        self.version += 1
        return metrics

    def start_rl(self) -> None:
        """Freeze the reference (only when the KL term needs it) and build the RL optimizer from the current policy."""
        if self.algo.kl_coef > 0:
            self.reference = load_model_copy(self.model)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=self.cfg.lr, betas=self.cfg.betas, weight_decay=self.cfg.weight_decay
        )
        updates = self.total_steps * self.cfg.epochs * self.cfg.mini_batches
        self.scheduler = get_scheduler(
            self.cfg.schedule, self.optimizer, num_warmup_steps=self.cfg.warmup_steps, num_training_steps=max(updates, 1)
        )

    def get_version(self) -> int:
        return self.version

    def weights(self) -> dict[str, torch.Tensor]:
        return _detached(self.model)

    def update(self, samples: list[TrainSample], temperature: float, step: int) -> dict[str, float]:
        """One RL update on a rollout batch: `epochs` passes of `mini_batches` optimizer steps each."""
        self.model.train()
        order = list(range(len(samples)))
        sums: dict[str, float] = {}
        updates = 0
        for epoch in range(self.cfg.epochs):
            if self.cfg.mini_batches > 1 or self.cfg.epochs > 1:
                random.Random(f"{self.recipe.trainer.seed}/{step}/{epoch}").shuffle(order)
            size = -(-len(order) // self.cfg.mini_batches)
            for start in range(0, len(order), size):
                stats = self._optimizer_step([samples[i] for i in order[start : start + size]], temperature)
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + value
                updates += 1
        self.version += 1
        metrics = {f"policy/{k}": v / updates for k, v in sums.items()}
        metrics["policy/lr"] = self.scheduler.get_last_lr()[0]
        return metrics

    def _optimizer_step(self, samples: list[TrainSample], temperature: float) -> dict[str, float]:
        micro = self.cfg.micro_batch_size
        batches = [collate(samples[i : i + micro], self.tokenizer.pad_token_id) for i in range(0, len(samples), micro)]
        total = sum(_count(b.mask, self.algo.loss_aggregation) for b in batches)
        tokens = sum(float(b.mask.sum()) for b in batches)
        stats = {"loss": 0.0, "entropy": 0.0, "kl": 0.0, "clip_frac": 0.0, "approx_kl_old": 0.0}
        self.optimizer.zero_grad(set_to_none=True)
        for batch in batches:
            weight = _count(batch.mask, self.algo.loss_aggregation) / total
            token_share = float(batch.mask.sum()) / tokens
            logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
            logits = logits.float() / temperature  # (B, L-1, V)
            logprobs = token_logprobs(logits, batch.targets)  # (B, L-1)
            entropy = entropy_from_logits(logits)  # (B, L-1)
            loss, pg_stats = clipped_policy_loss(
                logprobs,
                batch.old_logprobs,
                batch.advantages,
                batch.mask,
                clip_low=self.algo.clip_low,
                clip_high=self.algo.clip_high,
                dual_clip=self.algo.dual_clip,
                aggregation=self.algo.loss_aggregation,
                max_len=self.recipe.rollout.max_new_tokens,
            )
            if self.reference is not None:
                with torch.no_grad():
                    ref_logits = self.reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
                    ref_logprobs = token_logprobs(ref_logits[:, :-1].float() / temperature, batch.targets)
                kl = kl_penalty(logprobs, ref_logprobs, self.algo.kl_estimator)
            else:  # no reference loaded: report the divergence from the sampling policy instead
                kl = kl_penalty(logprobs.detach(), batch.old_logprobs, self.algo.kl_estimator)
            kl_term = aggregate(kl, batch.mask, self.algo.loss_aggregation, self.recipe.rollout.max_new_tokens)
            entropy_term = aggregate(entropy, batch.mask, self.algo.loss_aggregation, self.recipe.rollout.max_new_tokens)
            objective = loss + self.algo.kl_coef * kl_term - self.algo.entropy_coef * entropy_term
            (objective * weight).backward()
            stats["loss"] += float(objective) * weight
            stats["entropy"] += float((entropy * batch.mask).sum()) / tokens
            stats["kl"] += float((kl.detach() * batch.mask).sum()) / tokens
            stats["clip_frac"] += float(pg_stats["clip_frac"]) * token_share
            stats["approx_kl_old"] += float(pg_stats["approx_kl"]) * token_share
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        stats["grad_norm"] = float(grad_norm)
        return stats

    # -- persistence --------------------------------------------------------------------------------------------

    def save_pretrained(self, out_dir: str) -> None:
        self.model.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)

    def save_state(self, out_dir: str) -> None:
        """Weights as safetensors; optimizer, scheduler and RNG as tensors-and-numbers (loadable weights_only)."""
        out = Path(out_dir)
        save_file(_detached(self.model), out / "policy.safetensors")
        torch.save(
            {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
            out / "optimizer.pt",
        )
        torch.save({"torch": torch.get_rng_state()}, out / "learner_rng.pt")
        if self.reference is not None:
            save_file(_detached(self.reference), out / "reference.safetensors")
        (out / "learner.json").write_text(json.dumps({"version": self.version}))

    def load_state(self, ckpt_dir: str) -> None:
        src = Path(ckpt_dir)
        self.model.load_state_dict(load_file(src / "policy.safetensors"))
        self.start_rl()
        state = torch.load(src / "optimizer.pt", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(torch.load(src / "learner_rng.pt", weights_only=True)["torch"])
        if self.reference is not None:
            self.reference.load_state_dict(load_file(src / "reference.safetensors"))
        self.version = json.loads((src / "learner.json").read_text())["version"]


def _detached(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the state dict; tied weights (embeddings = LM head) become separate tensors, as safetensors needs."""
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def load_model_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of the policy to serve as the KL reference."""
    import copy

    reference = copy.deepcopy(model).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    return reference


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
