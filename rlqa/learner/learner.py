"""The Learner actor: the policy, the reference when β > 0 and the critic for PPO, their optimizers, and the updates.

It is a thin shell around the pure functions in `rlqa.algorithms`: it pads rollouts into tensors, runs the forward
pass at the sampling temperature (logits / T), and steps AdamW. Each model has one owner: `Policy` and `Reference`
(rlqa.learner.policy), `Critic` (rlqa.learner.critic). How the optimizer step runs, on one process or as one rank of
a DeepSpeed group, is the `TrainEngine` it is given (rlqa.learner.engine). It also runs the SFT warm-up, so the
policy that RL starts from never leaves the process that trains it.

An update first makes one gradient-free pass over the rollout batch (`_prepare`): the learner's own log-probs of the
sampled tokens, whose gap to the sampler's it reports (and, with `algorithm.tis_cap`, turns into TIS weights and
takes as π_old, so the ratio is against the learner's π_old and π_sampler enters once, through the weight), π_old's
log-probs when recomputed, reference log-probs, and for PPO the critic's values, from which the token-level rewards,
the token-level advantages (the registry's GAE) and returns follow. Then
`epochs` passes of `mini_batches` optimizer steps run on those fixed targets, so every ratio is against π_old, not
the moving policy. When that pass would yield nothing but the gap (sampling log-probs as π_old, no TIS, reference or
critic, one mini-batch, a model without dropout), it is skipped: the first optimizer step's forward sees every sample
before any weight moves, with the same log-probs, and measures the gap there at no extra cost.

An optimizer step whose loss is not finite (NaN or inf, over the whole batch) is skipped: the weights, the optimizer's
moments and the schedule stay as they were, and `learner/nonfinite_steps` counts it.

The policy version is the driver's to count (it tags the weights it sends to the rollout workers), not the learner's.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import get_scheduler

from rlqa.algorithms.advantages import get_advantage_estimator
from rlqa.algorithms.gae import token_level_rewards, whiten
from rlqa.algorithms.kl import AdaptiveKLController, kl_penalty
from rlqa.algorithms.losses import masked_mean
from rlqa.algorithms.mismatch import logprob_gap, tis_weights
from rlqa.algorithms.policy_losses import policy_objective
from rlqa.checkpoint import rng_state, set_rng_state
from rlqa.config import Recipe
from rlqa.learner.batch import TrainSample, collate, padding, per_sample
from rlqa.learner.critic import Critic
from rlqa.learner.engine import LocalEngine, TrainEngine, micro_batch_plan, normaliser_count
from rlqa.learner.policy import Policy, Reference, detached
from rlqa.learner.sft import run_sft
from rlqa.models import quiet_hf
from rlqa.rollout.shared_weights import write_weights


class Learner:
    def __init__(self, model_dir: str, recipe: Recipe, total_steps: int, engine: TrainEngine | None = None):
        quiet_hf()
        torch.set_num_threads(recipe.learner.torch_threads)
        torch.manual_seed(recipe.trainer.seed)
        self.recipe = recipe
        self.cfg = recipe.learner
        self.algo = recipe.algorithm
        self.total_steps = total_steps
        self.engine = engine or LocalEngine(recipe.learner)
        self.policy = Policy(model_dir, recipe.model, recipe.rollout.top_k, recipe.rollout.top_p)
        if recipe.learner.gpus > 0 and torch.cuda.is_available():  # Ray shows an actor only the GPU it assigned
            self.policy.model.to(torch.device("cuda"))
        self.reference: Reference | None = None  # β > 0 only
        self.critic: Critic | None = None  # PPO only
        self.critic_optimizer = None  # a separate critic only; a value head trains with the policy's optimizer
        self.critic_scheduler = None
        self.kl_controller = None  # adaptive β only
        self.optimizer = None
        self.scheduler = None

    # -- the remote methods (rlqa.learner.group.LearnerGroup calls them) -------------------------------------------

    def join_group(self, address: str, port: int) -> None:
        """DeepSpeed group only: where rank 0 hosts the rendezvous."""
        self.engine.connect(address, port)

    def sft(self, pairs: list[tuple[str, str]], out_dir: str) -> dict[str, float]:
        """ReFT's warm-up: supervised fine-tuning on (prompt, worked solution) pairs. In a group rank 0 runs it; the
        others receive its weights when the group forms in `start_rl`."""
        if not self.engine.leads:
            return {}
        return run_sft(self.policy.model, self.policy.tokenizer, pairs, self.recipe.sft, self.recipe.trainer.seed, out_dir)

    def start_rl(self) -> None:
        """Form the group (if any), freeze the reference (only when the KL term needs it), build the critic (PPO)
        from the current policy, and the RL optimizers."""
        model = self.policy.model
        self.engine.join(model)
        if self.algo.kl_coef > 0:
            self.reference = Reference(self.policy)
        if self.algo.kl_target is not None:
            self.kl_controller = AdaptiveKLController(self.algo.kl_coef, self.algo.kl_target, self.algo.kl_horizon)
        groups = [{"params": self.policy.trainable(), "lr": self.cfg.lr}]
        critic_cfg = self.algo.critic
        if critic_cfg is not None:
            dtype = getattr(torch, self.recipe.model.dtype)
            device = next(model.parameters()).device
            self.critic = Critic(critic_cfg, model, dtype, self.recipe.model.trust_remote_code).to(device)
            critic_group = {"params": list(self.critic.parameters()), "lr": critic_cfg.lr}
            if self.critic.backbone is None:
                groups.append(critic_group)
            else:
                self.critic_optimizer, self.critic_scheduler = self._optimizer([critic_group])
        self.optimizer, self.scheduler = self.engine.wrap(model, *self._optimizer(groups))
        if self.reference is not None:
            self.reference.model.to(self.engine.device)

    def update(self, samples: list[TrainSample], temperature: float, step: int) -> dict[str, float]:
        """One RL update on a rollout batch: `epochs` passes of `mini_batches` optimizer steps each."""
        gap = _TokenStats() if self._gap_in_update() else None  # measured by the first optimizer step's forward
        samples, metrics = (samples, {}) if gap is not None else self._prepare(samples, temperature)
        kl_coef = self.kl_coef
        self.policy.model.train()
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
                chunk = [samples[i] for i in order[start : start + size]]
                stats = self._optimizer_step(chunk, temperature, kl_coef, gap if updates == 0 else None)
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + value
                updates += 1
        if gap is not None:
            metrics.update(gap.metrics())
        # over every forward pass of the update (the preparing pass and the micro-batches of every rank)
        padded, processed = (metrics.pop(key) + sums.pop(key) for key in ("learner/padded_tokens", "learner/processed_tokens"))
        metrics["learner/pad_frac"] = padded / processed
        metrics["learner/nonfinite_steps"] = sums.pop("learner/nonfinite_steps", 0.0)  # a count, not a mean
        metrics.update({key: value / updates for key, value in sums.items()})
        metrics["policy/lr"] = self.scheduler.get_last_lr()[0]
        metrics["policy/kl_coef"] = kl_coef
        if self.kl_controller is not None and self.reference is not None:
            # the KL the coefficient was meant to hold: that of the policy that sampled this batch
            self.kl_controller.update(metrics["policy/kl_sampled"], len(samples))
        return metrics

    def weights(self) -> dict[str, torch.Tensor]:
        """The full policy weights on the CPU, LoRA merged (rank 0; the other ranks of a group return nothing)."""
        with self.engine.gathered(self.policy.model):
            return {k: v.cpu() for k, v in self.policy.weights().items()} if self.engine.leads else {}

    def write_shared_weights(self, directory: str) -> None:
        """The full policy weights, LoRA merged, into the run's shared-memory file (rank 0; rlqa.rollout.shared_weights)."""
        with self.engine.gathered(self.policy.model):
            if self.engine.leads:
                write_weights(self.policy.live_weights(), directory)

    def save_pretrained(self, out_dir: str) -> None:
        with self.engine.gathered(self.policy.model):
            if self.engine.leads:
                self.policy.save_pretrained(out_dir)

    def save_state(self, out_dir: str) -> None:
        """Weights (or LoRA adapters) as safetensors; optimizer, scheduler and RNG as tensors-and-numbers (loadable
        weights_only). In a group rank 0 writes what one learner writes, and each other rank its optimizer
        partition."""
        out = Path(out_dir)
        with self.engine.gathered(self.policy.model):
            optimizer = self.engine.optimizer_state(self.optimizer, out)
            if not self.engine.leads:
                return
            self.policy.save(out)
            optimizers = {"optimizer": optimizer, "scheduler": self.scheduler.state_dict()}
            if self.critic_optimizer is not None:
                optimizers["critic_optimizer"] = self.critic_optimizer.state_dict()
                optimizers["critic_scheduler"] = self.critic_scheduler.state_dict()
            torch.save(optimizers, out / "optimizer.pt")
            (out / "learner_rng.json").write_text(json.dumps(rng_state()))  # Python, NumPy, torch (+ CUDA) RNGs
            if self.reference is not None and self.reference.copied:
                save_file(detached(self.reference.model), out / "reference.safetensors")
            if self.critic is not None:
                save_file(detached(self.critic), out / "critic.safetensors")
            state = {} if self.kl_controller is None else {"kl_controller": self.kl_controller.state_dict()}
            (out / "learner.json").write_text(json.dumps(state))

    def load_state(self, ckpt_dir: str) -> None:
        src = Path(ckpt_dir)
        self.policy.load(src)
        self.start_rl()
        state = torch.load(src / "optimizer.pt", weights_only=True)
        self.engine.load_optimizer_state(self.optimizer, state["optimizer"], src)
        self.scheduler.load_state_dict(state["scheduler"])
        if self.critic_optimizer is not None:
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])
            self.critic_scheduler.load_state_dict(state["critic_scheduler"])
        set_rng_state(json.loads((src / "learner_rng.json").read_text()))
        if self.reference is not None and self.reference.copied:
            self.reference.model.load_state_dict(load_file(src / "reference.safetensors"))
        if self.critic is not None:
            self.critic.load_state_dict(load_file(src / "critic.safetensors"))
        if self.kl_controller is not None:
            self.kl_controller.load_state_dict(json.loads((src / "learner.json").read_text())["kl_controller"])

    # -- inside an update --------------------------------------------------------------------------------------

    @property
    def kl_coef(self) -> float:
        """β now: fixed, or where the adaptive controller has moved it."""
        return self.kl_controller.value if self.kl_controller is not None else self.algo.kl_coef

    def _optimizer(self, groups: list[dict]) -> tuple[torch.optim.Optimizer, object]:
        """AdamW over parameter groups (each with its own lr) and the LR schedule over all RL updates."""
        optimizer = torch.optim.AdamW(groups, betas=self.cfg.betas, weight_decay=self.cfg.weight_decay)
        updates = self.total_steps * self.cfg.epochs * self.cfg.mini_batches
        scheduler = get_scheduler(
            self.cfg.schedule, optimizer, num_warmup_steps=self.cfg.warmup_steps, num_training_steps=max(updates, 1)
        )
        return optimizer, scheduler

    def _gap_in_update(self) -> bool:
        """Whether `_prepare` would compute only the learner-vs-sampler gap, which the update's first forward pass
        then measures on the same weights and inputs (one mini-batch: no optimizer step comes before it; no
        dropout: train mode computes what eval mode does)."""
        algo = self.algo
        return (
            algo.old_logprobs == "sampling" and algo.tis_cap is None and self.reference is None
            and self.critic is None and self.cfg.mini_batches == 1 and not has_dropout(self.policy.model)
        )

    @torch.no_grad()
    def _prepare(self, samples: list[TrainSample], temperature: float) -> tuple[list[TrainSample], dict[str, float]]:
        """What stays fixed during the update, per sample: π_old's log-probs (`old_logprobs: recompute`, or with
        `tis_cap` whatever `old_logprobs` says), TIS weights min(π_old,learner / π_sampler, C) (`tis_cap`), reference log-probs (β > 0), and for PPO the critic's values, token-level advantages and
        returns. Also the gap between the learner's and the sampler's log-probs before any update."""
        tis_cap = self.algo.tis_cap
        # TIS takes the ratio against the learner's own π_old and leaves π_sampler to the weight (verl, TRL): with the
        # sampler's log-probs as π_old the ratio would already hold π_sampler, and the weight would correct twice
        learner_old = self.algo.old_logprobs == "recompute" or tis_cap is not None
        self.policy.model.eval()  # π_old, V_old and π_ref as functions, without dropout noise
        if self.critic is not None:
            self.critic.eval()
        head = self.critic is not None and self.critic.backbone is None
        pad = self.policy.pad_token_id
        prepared = list(samples)
        gap = _TokenStats()
        for indices in micro_batch_plan(self.cfg, samples):
            chunk = [samples[i] for i in indices]
            batch = self.engine.collate(chunk, pad)  # batch.old_logprobs: the sampler's
            gap.add_padding(batch)  # every rank runs this whole pass: its padding counts once
            fields: dict[str, list[list[float]]] = {}
            out = self.policy.forward(batch, temperature, hidden=head)
            gap.add(batch.mask, *logprob_gap(out.logprobs, batch.old_logprobs, batch.mask))
            if tis_cap is not None:
                weights = tis_weights(out.logprobs, batch.old_logprobs, tis_cap)  # (B, L-1) π_old,learner / π_sampler
                gap.add_tis(batch.mask, weights, tis_cap)
                fields["tis_weights"] = per_sample(weights, chunk)
            if learner_old:
                fields["old_logprobs"] = per_sample(out.logprobs, chunk)
            if self.reference is not None:
                fields["ref_logprobs"] = per_sample(self.reference.logprobs(batch, temperature), chunk)
            if self.critic is not None:
                values = self.critic.values(batch, out.hidden if head else None)  # (B, L-1)
                fields["old_values"] = per_sample(values, chunk)
            for row, index in enumerate(indices):
                prepared[index] = replace(samples[index], **{name: rows[row] for name, rows in fields.items()})
        metrics = gap.metrics()
        if self.reference is not None:
            whole = collate(prepared, pad)
            metrics["policy/kl_sampled"] = float(masked_mean(self._reference_kl(whole), whole.mask))
        if self.critic is not None:
            prepared, critic_metrics = self._token_advantages(prepared)
            metrics.update(critic_metrics)
        return prepared, metrics

    def _reference_kl(self, batch) -> torch.Tensor:
        """Per-token KL of π_old (the sampling policy) to the reference. (B, L-1)"""
        return kl_penalty(batch.old_logprobs, batch.ref_logprobs, self.algo.kl_estimator)

    def _token_advantages(self, samples: list[TrainSample]) -> tuple[list[TrainSample], dict[str, float]]:
        """PPO's targets: token rewards (score on the last token, minus β·KL when the KL is in the reward), the
        registry's token-level advantages (GAE) whitened over all response tokens of the batch, and returns =
        advantages + old values."""
        batch = collate(samples, self.policy.pad_token_id)  # the whole rollout batch: whitening is batch-wide
        kl = self._reference_kl(batch) if self.algo.kl_in_reward else None
        rewards = token_level_rewards(batch.rewards, batch.mask, kl, self.kl_coef)  # (N, L-1)
        estimator = get_advantage_estimator(self.algo.advantage)
        advantages, returns = estimator(rewards, batch.old_values, batch.mask, self.algo.gamma, self.algo.lam)
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

    def _optimizer_step(
        self, samples: list[TrainSample], temperature: float, kl_coef: float, gap: _TokenStats | None = None
    ) -> dict[str, float]:
        """One optimizer step over `samples`; `gap`, when given, accumulates the learner-vs-sampler gap of its forward
        passes (before the step)."""
        aggregation, max_len = self.algo.loss_aggregation, self.recipe.rollout.max_new_tokens
        batches, total, tokens = self.engine.micro_batches(samples, self.policy.pad_token_id, aggregation)
        head = self.critic is not None and self.critic.backbone is None
        names = ("policy/loss", "policy/pg_loss", "policy/entropy", "policy/kl", "policy/clip_frac", "policy/approx_kl_old")
        stats = {name: 0.0 for name in names} | {"learner/padded_tokens": 0.0, "learner/processed_tokens": 0.0}
        self.optimizer.zero_grad(set_to_none=True)
        if self.critic_optimizer is not None:
            self.critic_optimizer.zero_grad(set_to_none=True)
        for batch in batches:
            weight = normaliser_count(batch.mask, aggregation) / total
            token_share = float(batch.mask.sum()) / tokens
            padded, processed = padding(batch)
            stats["learner/padded_tokens"] += padded
            stats["learner/processed_tokens"] += processed
            out = self.policy.forward(batch, temperature, entropy=True, hidden=head)
            if gap is not None:
                gap.add(batch.mask, *logprob_gap(out.logprobs, batch.old_logprobs, batch.mask))
            objective, pg = policy_objective(
                out.logprobs,
                batch.old_logprobs,
                batch.advantages if batch.token_advantages is None else batch.token_advantages,
                batch.mask,
                self.algo,
                ref_logprobs=batch.ref_logprobs,
                kl_coef=0.0 if self.algo.kl_in_reward else kl_coef,
                entropy=out.entropy,
                tis_weights=batch.tis_weights,
                max_len=max_len,
            )
            if batch.ref_logprobs is None:  # no reference loaded: report the divergence from the sampling policy
                pg["kl"] = masked_mean(kl_penalty(out.logprobs.detach(), batch.old_logprobs, self.algo.kl_estimator), batch.mask)
            stats["policy/pg_loss"] += float(pg["pg_loss"]) * weight
            if self.critic is not None:
                v_loss = self.critic.loss(batch, out.hidden, aggregation, max_len)
                objective = objective + self.algo.critic.vf_coef * v_loss
                stats["critic/value_loss"] = stats.get("critic/value_loss", 0.0) + v_loss.item() * weight
            self.engine.backward(objective * weight, last=batch is batches[-1])
            stats["policy/loss"] += objective.item() * weight
            stats["policy/entropy"] += float(pg["entropy"]) * token_share
            stats["policy/kl"] += float(pg["kl"]) * token_share
            stats["policy/clip_frac"] += float(pg["clip_frac"]) * token_share
            stats["policy/approx_kl_old"] += float(pg["approx_kl"]) * token_share
        stats = self.engine.all_ranks(stats)  # the whole batch's numbers: every rank takes the same decision below
        if not all(math.isfinite(stats[key]) for key in ("policy/loss", "policy/pg_loss")):
            # A NaN or inf loss would write NaN into every weight (and AdamW's moments): skip the step, keep the
            # weights, the optimizer and the schedule as they are, and count it (learner/nonfinite_steps).
            self.engine.discard(self.policy.model, self.optimizer)
            if self.critic_optimizer is not None:
                self.critic_optimizer.zero_grad(set_to_none=True)
            return stats | {"policy/grad_norm": math.nan, "learner/nonfinite_steps": 1.0}
        stats["policy/grad_norm"] = self.engine.step(self.policy.model, self.optimizer, self.scheduler)
        if self.critic_optimizer is not None:
            stats["critic/grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.critic.parameters(), self.cfg.grad_clip))
            self.critic_optimizer.step()
            self.critic_scheduler.step()
        return stats


def has_dropout(model: torch.nn.Module) -> bool:
    """Whether training mode adds noise: a dropout module or a `*dropout*` rate in the model config above 0."""
    if any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        return True
    config = getattr(model, "config", None)
    rates = [] if config is None else [v for k, v in config.to_dict().items() if "dropout" in k]
    return any(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in rates)


class _TokenStats:
    """The learner-vs-sampler gap (and TIS weights) of a batch, and the padding of its forward passes, accumulated
    over the micro-batches of `_prepare`."""

    def __init__(self):
        self.padded, self.processed = 0, 0
        self.tokens = 0.0
        self.gap_sum, self.gap_max = 0.0, 0.0
        self.weight_sum, self.capped = 0.0, 0.0
        self.tis = False

    def add(self, mask: torch.Tensor, gap_mean: torch.Tensor, gap_max: torch.Tensor) -> None:
        tokens = float(mask.sum())
        self.tokens += tokens
        self.gap_sum += float(gap_mean) * tokens
        self.gap_max = max(self.gap_max, float(gap_max))

    def add_padding(self, batch) -> None:
        padded, processed = padding(batch)
        self.padded += padded
        self.processed += processed

    def add_tis(self, mask: torch.Tensor, weights: torch.Tensor, cap: float) -> None:
        self.tis = True
        tokens = float(mask.sum())
        self.weight_sum += float(masked_mean(weights, mask)) * tokens
        self.capped += float(masked_mean((weights >= cap).float(), mask)) * tokens

    def metrics(self) -> dict[str, float]:
        tokens = max(self.tokens, 1.0)
        metrics = {"rollout/logprob_diff_mean": self.gap_sum / tokens, "rollout/logprob_diff_max": self.gap_max}
        metrics |= {"learner/padded_tokens": self.padded, "learner/processed_tokens": self.processed}
        if self.tis:
            metrics["policy/tis_weight_mean"] = self.weight_sum / tokens
            metrics["policy/tis_capped_frac"] = self.capped / tokens
        return metrics
