"""The Learner actor: holds the policy (the reference when β > 0, the critic for PPO), its optimizer, and runs updates.

It is a thin shell around the pure functions in `rlqa.algorithms`: it pads rollouts into tensors, runs the forward
pass at the sampling temperature (logits / T), and steps AdamW. It also runs the SFT warm-up, so the policy that
RL starts from never leaves the process that trains it.

An update first makes one gradient-free pass over the rollout batch when it needs anything besides the sampling
log-probs (`_prepare`): reference log-probs, π_old's log-probs recomputed by the learner, and for PPO the critic's
values, from which the token-level rewards, GAE advantages and returns follow. Then `epochs` passes of
`mini_batches` optimizer steps run on those fixed targets, so every ratio is against π_old, not the moving policy.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import get_scheduler

from rlqa.algorithms.entropy import entropy_from_logits, token_logprobs
from rlqa.algorithms.gae import gae_advantages, token_level_rewards, whiten
from rlqa.algorithms.kl import AdaptiveKLController, kl_penalty
from rlqa.algorithms.losses import masked_mean, value_loss
from rlqa.algorithms.policy_losses import policy_objective
from rlqa.checkpoint import rng_state, set_rng_state
from rlqa.config import Recipe
from rlqa.learner.batch import TensorBatch, TrainSample, collate, per_sample
from rlqa.learner.critic import Critic
from rlqa.learner.plan import pack_by_tokens
from rlqa.learner.sft import run_sft
from rlqa.models import load_model, load_tokenizer, quiet_hf


def _count(mask: torch.Tensor, aggregation: str) -> float:
    """What an aggregation averages over: tokens for token-mean, every sequence for seq-mean-token-sum-norm,
    sequences with a token for seq-mean-token-mean."""
    if aggregation == "token-mean":
        return float(mask.sum())
    if aggregation == "seq-mean-token-sum-norm":
        return float(mask.shape[0])
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
        self.critic = None  # PPO only
        self.critic_optimizer = None  # a separate critic only; a value head trains with the policy's optimizer
        self.critic_scheduler = None
        self.kl_controller = None  # adaptive β only
        self.optimizer = None
        self.scheduler = None
        self.version = 0

    def sft(self, pairs: list[tuple[str, str]], out_dir: str) -> dict[str, float]:
        """ReFT's warm-up: supervised fine-tuning on (prompt, worked solution) pairs."""
        metrics = run_sft(self.model, self.tokenizer, pairs, self.recipe.sft, self.recipe.trainer.seed, out_dir)
        self.version += 1
        return metrics

    def start_rl(self) -> None:
        """Freeze the reference (only when the KL term needs it), build the critic (PPO) from the current policy,
        and the RL optimizers."""
        if self.algo.kl_coef > 0:
            self.reference = load_model_copy(self.model)
        if self.algo.kl_target is not None:
            self.kl_controller = AdaptiveKLController(self.algo.kl_coef, self.algo.kl_target, self.algo.kl_horizon)
        groups = [{"params": list(self.model.parameters()), "lr": self.cfg.lr}]
        critic_cfg = self.algo.critic
        if critic_cfg is not None:
            dtype = getattr(torch, self.recipe.model.dtype)
            device = next(self.model.parameters()).device
            self.critic = Critic(critic_cfg, self.model, dtype, self.recipe.model.trust_remote_code).to(device)
            critic_group = {"params": list(self.critic.parameters()), "lr": critic_cfg.lr}
            if self.critic.backbone is None:
                groups.append(critic_group)
            else:
                self.critic_optimizer, self.critic_scheduler = self._optimizer([critic_group])
        self.optimizer, self.scheduler = self._optimizer(groups)

    def _optimizer(self, groups: list[dict]) -> tuple[torch.optim.Optimizer, object]:
        """AdamW over parameter groups (each with its own lr) and the LR schedule over all RL updates."""
        optimizer = torch.optim.AdamW(groups, betas=self.cfg.betas, weight_decay=self.cfg.weight_decay)
        updates = self.total_steps * self.cfg.epochs * self.cfg.mini_batches
        scheduler = get_scheduler(
            self.cfg.schedule, optimizer, num_warmup_steps=self.cfg.warmup_steps, num_training_steps=max(updates, 1)
        )
        return optimizer, scheduler

    @property
    def kl_coef(self) -> float:
        """β now: fixed, or where the adaptive controller has moved it."""
        return self.kl_controller.value if self.kl_controller is not None else self.algo.kl_coef

    def get_version(self) -> int:
        return self.version

    def weights(self) -> dict[str, torch.Tensor]:
        return _detached(self.model)

    def update(self, samples: list[TrainSample], temperature: float, step: int) -> dict[str, float]:
        """One RL update on a rollout batch: `epochs` passes of `mini_batches` optimizer steps each."""
        samples, metrics = self._prepare(samples, temperature)
        kl_coef = self.kl_coef
        self.model.train()
        if self.critic is not None:
            self.critic.train()
        order = list(range(len(samples)))
        sums: dict[str, float] = {}
        updates = 0
        for epoch in range(self.cfg.epochs):
            if self.cfg.mini_batches > 1 or self.cfg.epochs > 1:
                random.Random(f"{self.recipe.trainer.seed}/{step}/{epoch}").shuffle(order)
            size = -(-len(order) // self.cfg.mini_batches)
            for start in range(0, len(order), size):
                stats = self._optimizer_step([samples[i] for i in order[start : start + size]], temperature, kl_coef)
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + value
                updates += 1
        self.version += 1
        metrics.update({key: value / updates for key, value in sums.items()})
        metrics["policy/lr"] = self.scheduler.get_last_lr()[0]
        metrics["policy/kl_coef"] = kl_coef
        if self.kl_controller is not None and self.reference is not None:
            # the KL the coefficient was meant to hold: that of the policy that sampled this batch
            self.kl_controller.update(metrics["policy/kl_sampled"], len(samples))
        return metrics

    @torch.no_grad()
    def _prepare(self, samples: list[TrainSample], temperature: float) -> tuple[list[TrainSample], dict[str, float]]:
        """What stays fixed during the update, per sample: reference log-probs (β > 0), π_old's log-probs
        (`old_logprobs: recompute`), and for PPO the critic's values, GAE advantages and returns."""
        recompute = self.algo.old_logprobs == "recompute"
        if self.reference is None and self.critic is None and not recompute:
            return samples, {}
        self.model.eval()  # π_old, V_old and π_ref as functions, without dropout noise
        if self.critic is not None:
            self.critic.eval()
        prepared: list[TrainSample] = []
        micro = self.cfg.micro_batch_size
        for chunk in (samples[i : i + micro] for i in range(0, len(samples), micro)):
            batch = self._collate(chunk)
            fields: dict[str, list[list[float]]] = {}
            head = self.critic is not None and self.critic.backbone is None
            if recompute or head:
                out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=head)
                if recompute:
                    fields["old_logprobs"] = per_sample(self._logprobs(out.logits, batch, temperature), chunk)
            if self.reference is not None:
                ref_logits = self.reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
                fields["ref_logprobs"] = per_sample(self._logprobs(ref_logits, batch, temperature), chunk)
            if self.critic is not None:
                values = self.critic.values(batch, out.hidden_states[-1] if head else None)  # (B, L-1)
                fields["old_values"] = per_sample(values, chunk)
            prepared.extend(replace(s, **{name: rows[i] for name, rows in fields.items()}) for i, s in enumerate(chunk))
        metrics = {}
        if self.reference is not None:
            whole = collate(prepared, self.tokenizer.pad_token_id)
            metrics["policy/kl_sampled"] = float(masked_mean(self._reference_kl(whole), whole.mask))
        if self.critic is not None:
            prepared, critic_metrics = self._gae(prepared)
            metrics.update(critic_metrics)
        return prepared, metrics

    def _collate(self, samples: list[TrainSample]) -> TensorBatch:
        """Tensors for a forward pass, on the device the policy lives on (the CPU for one learner)."""
        return collate(samples, self.tokenizer.pad_token_id)

    def _logprobs(self, logits: torch.Tensor, batch: TensorBatch, temperature: float) -> torch.Tensor:
        """Log-probs of the batch's targets at the sampling temperature. logits: (B, L, V) -> (B, L-1)"""
        return token_logprobs(logits[:, :-1].float() / temperature, batch.targets)

    def _reference_kl(self, batch: TensorBatch) -> torch.Tensor:
        """Per-token KL of π_old (the sampling policy) to the reference. (B, L-1)"""
        return kl_penalty(batch.old_logprobs, batch.ref_logprobs, self.algo.kl_estimator)

    def _gae(self, samples: list[TrainSample]) -> tuple[list[TrainSample], dict[str, float]]:
        """PPO's targets: token rewards (score on the last token, minus β·KL when the KL is in the reward), GAE
        advantages whitened over all response tokens of the batch, and returns = advantages + old values."""
        batch = collate(samples, self.tokenizer.pad_token_id)  # the whole rollout batch: whitening is batch-wide
        kl = self._reference_kl(batch) if self.algo.kl_in_reward else None
        rewards = token_level_rewards(batch.rewards, batch.mask, kl, self.kl_coef)  # (N, L-1)
        advantages, returns = gae_advantages(rewards, batch.old_values, batch.mask, self.algo.gamma, self.algo.lam)
        if self.algo.whiten_advantages:
            advantages = whiten(advantages, batch.mask)
        prepared = [
            replace(s, token_advantages=a, returns=r)
            for s, a, r in zip(samples, per_sample(advantages, samples), per_sample(returns, samples))
        ]
        metrics = {
            "critic/values_mean": float(masked_mean(batch.old_values, batch.mask)),
            "critic/returns_mean": float(masked_mean(returns, batch.mask)),
            "advantage/nonzero_frac": float(masked_mean((advantages.abs() > 1e-8).float(), batch.mask)),
        }
        return prepared, metrics

    def _micro_batches(self, samples: list[TrainSample]) -> tuple[list[TensorBatch], float, float]:
        """One optimizer step's micro-batches (gradient accumulation), and what its loss and metrics average over:
        the aggregation's count and the completion tokens. The learner group overrides this with its share."""
        lengths = [len(s.prompt_tokens) + len(s.completion_tokens) for s in samples]
        chunks = pack_by_tokens(list(range(len(samples))), lengths, self.cfg.micro_batch_tokens, self.cfg.micro_batch_size)
        batches = [collate([samples[i] for i in chunk], self.tokenizer.pad_token_id) for chunk in chunks]
        aggregation = self.algo.loss_aggregation
        return batches, sum(_count(b.mask, aggregation) for b in batches), sum(float(b.mask.sum()) for b in batches)

    def _optimizer_step(self, samples: list[TrainSample], temperature: float, kl_coef: float) -> dict[str, float]:
        aggregation, max_len = self.algo.loss_aggregation, self.recipe.rollout.max_new_tokens
        batches, total, tokens = self._micro_batches(samples)
        head = self.critic is not None and self.critic.backbone is None
        stats = {name: 0.0 for name in ("policy/loss", "policy/pg_loss", "policy/entropy", "policy/kl", "policy/clip_frac", "policy/approx_kl_old")}
        self.optimizer.zero_grad(set_to_none=True)
        if self.critic_optimizer is not None:
            self.critic_optimizer.zero_grad(set_to_none=True)
        for batch in batches:
            weight = _count(batch.mask, aggregation) / total
            token_share = float(batch.mask.sum()) / tokens
            out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=head)
            logits = out.logits[:, :-1].float() / temperature  # (B, L-1, V)
            logprobs = token_logprobs(logits, batch.targets)  # (B, L-1)
            entropy = entropy_from_logits(logits)  # (B, L-1)
            objective, pg = policy_objective(
                logprobs,
                batch.old_logprobs,
                batch.advantages if batch.token_advantages is None else batch.token_advantages,
                batch.mask,
                self.algo,
                ref_logprobs=batch.ref_logprobs,
                kl_coef=0.0 if self.algo.kl_in_reward else kl_coef,
                entropy=entropy,
                max_len=max_len,
            )
            if batch.ref_logprobs is None:  # no reference loaded: report the divergence from the sampling policy
                pg["kl"] = masked_mean(kl_penalty(logprobs.detach(), batch.old_logprobs, self.algo.kl_estimator), batch.mask)
            stats["policy/pg_loss"] += float(pg["pg_loss"]) * weight
            if self.critic is not None:
                values = self.critic.values(batch, out.hidden_states[-1] if head else None)  # (B, L-1)
                v_loss = value_loss(
                    values, batch.old_values, batch.returns, batch.mask, self.algo.critic.value_clip, aggregation, max_len
                )
                objective = objective + self.algo.critic.vf_coef * v_loss
                stats["critic/value_loss"] = stats.get("critic/value_loss", 0.0) + v_loss.item() * weight
            self._backward(objective * weight, last=batch is batches[-1])
            stats["policy/loss"] += objective.item() * weight
            stats["policy/entropy"] += float(pg["entropy"]) * token_share
            stats["policy/kl"] += float(pg["kl"]) * token_share
            stats["policy/clip_frac"] += float(pg["clip_frac"]) * token_share
            stats["policy/approx_kl_old"] += float(pg["approx_kl"]) * token_share
        stats = self._all_ranks(stats)
        stats.update(self._apply_gradients())
        return stats

    def _backward(self, loss: torch.Tensor, last: bool) -> None:
        loss.backward()

    def _all_ranks(self, stats: dict[str, float]) -> dict[str, float]:
        """One learner's metrics are already the whole batch's (the group sums its ranks' shares)."""
        return stats

    def _apply_gradients(self) -> dict[str, float]:
        """Clip, step the optimizers and schedules; the gradient norms before clipping."""
        stats = {}
        trained = [p for group in self.optimizer.param_groups for p in group["params"]]
        stats["policy/grad_norm"] = float(torch.nn.utils.clip_grad_norm_(trained, self.cfg.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        if self.critic_optimizer is not None:
            stats["critic/grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.critic.parameters(), self.cfg.grad_clip))
            self.critic_optimizer.step()
            self.critic_scheduler.step()
        return stats

    # -- persistence --------------------------------------------------------------------------------------------

    def save_pretrained(self, out_dir: str) -> None:
        self.model.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)

    def save_state(self, out_dir: str) -> None:
        """Weights as safetensors; optimizer, scheduler and RNG as tensors-and-numbers (loadable weights_only)."""
        out = Path(out_dir)
        save_file(_detached(self.model), out / "policy.safetensors")
        optimizers = {"optimizer": self._optimizer_state(), "scheduler": self.scheduler.state_dict()}
        if self.critic_optimizer is not None:
            optimizers["critic_optimizer"] = self.critic_optimizer.state_dict()
            optimizers["critic_scheduler"] = self.critic_scheduler.state_dict()
        torch.save(optimizers, out / "optimizer.pt")
        (out / "learner_rng.json").write_text(json.dumps(rng_state()))  # Python, NumPy, torch (+ CUDA) RNGs
        if self.reference is not None:
            save_file(_detached(self.reference), out / "reference.safetensors")
        if self.critic is not None:
            save_file(_detached(self.critic), out / "critic.safetensors")
        state = {"version": self.version}
        if self.kl_controller is not None:
            state["kl_controller"] = self.kl_controller.state_dict()
        (out / "learner.json").write_text(json.dumps(state))

    def _optimizer_state(self) -> dict:
        """The policy optimizer's state as tensors and numbers (the learner group saves each rank's partition)."""
        return self.optimizer.state_dict()

    def _load_optimizer_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)

    def load_state(self, ckpt_dir: str) -> None:
        src = Path(ckpt_dir)
        self.model.load_state_dict(load_file(src / "policy.safetensors"))
        self.start_rl()
        state = torch.load(src / "optimizer.pt", weights_only=True)
        self._load_optimizer_state(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.critic_optimizer is not None:
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])
            self.critic_scheduler.load_state_dict(state["critic_scheduler"])
        set_rng_state(json.loads((src / "learner_rng.json").read_text()))
        if self.reference is not None:
            self.reference.load_state_dict(load_file(src / "reference.safetensors"))
        if self.critic is not None:
            self.critic.load_state_dict(load_file(src / "critic.safetensors"))
        learner_state = json.loads((src / "learner.json").read_text())
        self.version = learner_state["version"]
        if self.kl_controller is not None:
            self.kl_controller.load_state_dict(learner_state["kl_controller"])


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
