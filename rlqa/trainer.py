"""The driver: builds the actors from a recipe, then runs the RL loop of DESIGN.md, one numbered step at a time.

    1. sampler.next_batch(step)            prompts, each with a rollout count
    2. rollout workers generate            seeded per (run seed, step, prompt id, sample index)
    3. reward pipeline                     per-term rewards, total, correctness
    4. sampler.update, length history      the driver's state advances
    5. advantages -> learner.update        loss metrics + entropy at the sampling temperature
    6. temperature.update(entropy)
    7. weights learner -> rollout workers  (policy version + 1)
    8. metrics; checkpoint every k steps; periodic held-out evaluation

The driver owns the sampler, the temperature controller and the length history; the learner owns the weights and
the optimizer; both are saved in every checkpoint, which is all a resumed run needs to continue bit for bit.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import torch

from rlqa import checkpoint
from rlqa.algorithms.advantages import get_advantage_estimator
from rlqa.config import Recipe, to_yaml
from rlqa.data.example import Example
from rlqa.data.sources import build_examples
from rlqa.heldout import evaluate, scorer
from rlqa.learner.batch import TrainSample
from rlqa.learner.learner import Learner
from rlqa.length_history import LengthHistory
from rlqa.metrics import MetricsWriter, open_sinks
from rlqa.models import create_model_dir, load_tokenizer, quiet_hf
from rlqa.rollout.group import RolloutGroup
from rlqa.rollout.seeding import sample_seed
from rlqa.rollout.types import GenerationRequest, Rollout, SamplingParams
from rlqa.sampler import RolloutSampler
from rlqa.temperature import TemperatureController
from rewards.pipeline import RewardPipeline, RewardTermSpec
from rewards.registry import function_name, resolve_spec

log = logging.getLogger("rlqa")


@dataclass
class Components:
    recipe: Recipe
    run_dir: Path
    model_dir: str
    tokenizer: object
    train: dict[str, Example]
    test: list[Example]
    prompt_tokens: dict[str, tuple[int, ...]]
    learner: object  # Learner actor handle
    rollouts: RolloutGroup
    rewards: RewardPipeline
    sampler: RolloutSampler
    temperature: TemperatureController
    history: LengthHistory


# -- building ------------------------------------------------------------------------------------------------------


def init_ray(recipe: Recipe, address: str | None) -> None:
    address = address or recipe.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    needed = recipe.rollout.workers * recipe.rollout.cpus_per_worker + recipe.learner.workers * recipe.learner.cpus
    ray.init(
        num_cpus=recipe.ray.num_cpus or max(int(needed + 0.999), 1),
        include_dashboard=False,
        log_to_driver=True,
        configure_logging=False,
        runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}},
    )


def reward_pipeline(recipe: Recipe) -> RewardPipeline:
    terms = [
        RewardTermSpec(name=t.name or function_name(resolve_spec(t.fn)), fn=t.fn, weight=t.weight, kwargs=t.kwargs, deadline_s=t.deadline_s)
        for t in recipe.rewards.terms
    ]
    return RewardPipeline(
        terms,
        correctness=recipe.rewards.correctness,
        strict=recipe.rewards.strict,
        failure_value=recipe.rewards.failure_value,
        workers=recipe.rewards.workers,
        base_dir=Path(recipe.base_dir),
    )


def rollout_sampler(recipe: Recipe, train: list[Example]) -> RolloutSampler:
    s, n = recipe.sampler, recipe.rollout.rollouts_per_prompt
    priors = None
    if s.rank_column is not None:
        priors = {e.prompt_id: float(e.columns[s.rank_column]) for e in train if e.columns.get(s.rank_column) is not None}
    return RolloutSampler(
        [e.prompt_id for e in train],
        prompts_per_step=recipe.rollout.prompts_per_step,
        rollouts_per_prompt=n,
        seed=recipe.trainer.seed,
        allocation=s.allocation,
        estimator=s.estimator,
        n_min=s.n_min,
        n_max=s.n_max,
        schedule_delta=s.schedule_delta,
        n_low=s.n_low,
        n_high=s.n_high,
        priors=priors or None,
        decay=s.decay,
        prior_strength=s.prior_strength,
        skip_mastered=s.skip_mastered,
        revisit_prob=s.revisit_prob,
    )


def temperature_controller(recipe: Recipe, vocab_size: int) -> TemperatureController:
    t = recipe.temperature
    return TemperatureController(
        mode=t.mode,
        initial=t.initial,
        target=t.target,
        warmup_updates=t.warmup_updates,
        vocab_size=vocab_size,
        t_min=t.t_min,
        t_max=t.t_max,
        anneal_fraction=t.anneal_fraction,
        total_steps=max(recipe.trainer.steps, 1),  # steps=0 is an SFT-only run
    )


def build(recipe: Recipe, run_dir: Path) -> Components:
    model_dir = str(create_model_dir(recipe.model, run_dir / "init_model", recipe.trainer.seed, recipe.base_dir))
    tokenizer = load_tokenizer(model_dir, recipe.model.trust_remote_code)
    train = build_examples(recipe.data.train, recipe, tokenizer, "data.train")
    test = build_examples(recipe.data.test, recipe, tokenizer, "data.test")
    prompt_tokens = {e.prompt_id: tuple(tokenizer(e.prompt, add_special_tokens=False).input_ids) for e in train + test}
    learner_cfg = recipe.learner
    learner = (
        ray.remote(Learner)
        .options(num_cpus=learner_cfg.cpus, num_gpus=learner_cfg.gpus)
        .remote(model_dir, recipe, recipe.trainer.steps)
    )
    return Components(
        recipe=recipe,
        run_dir=run_dir,
        model_dir=model_dir,
        tokenizer=tokenizer,
        train={e.prompt_id: e for e in train},
        test=test,
        prompt_tokens=prompt_tokens,
        learner=learner,
        rollouts=RolloutGroup(model_dir, recipe),
        rewards=reward_pipeline(recipe),
        sampler=rollout_sampler(recipe, train),
        temperature=temperature_controller(recipe, len(tokenizer)),
        history=LengthHistory(),
    )


# -- one RL step ---------------------------------------------------------------------------------------------------


def reward_columns(c: Components, rollouts: list[Rollout]) -> dict[str, list]:
    """The columns every reward function may ask for, aligned with the rollouts."""
    examples = [c.train[r.prompt_id] for r in rollouts]
    columns: dict[str, list] = {
        "answer": [e.answer for e in examples],
        "prompt_id": [r.prompt_id for r in rollouts],
        "completion_length": [len(r.completion_tokens) for r in rollouts],
        "finish_reason": [r.finish_reason for r in rollouts],
        "max_new_tokens": [c.recipe.rollout.max_new_tokens] * len(rollouts),
        "history_length": c.history.lengths_for([r.prompt_id for r in rollouts]),
    }
    for key in sorted({k for e in examples for k in e.columns}):
        columns.setdefault(key, [e.columns.get(key) for e in examples])
    return columns


def group_stats(rollouts: list[Rollout], correct: list[bool | None]) -> dict[str, float]:
    by_prompt: dict[str, list[bool]] = {}
    for r, ok in zip(rollouts, correct):
        by_prompt.setdefault(r.prompt_id, []).append(bool(ok))
    groups = list(by_prompt.values())
    return {
        "sampler/all_correct_frac": sum(all(g) for g in groups) / len(groups),
        "sampler/all_wrong_frac": sum(not any(g) for g in groups) / len(groups),
        "sampler/prompts": float(len(groups)),
    }


def rl_step(c: Components, step: int) -> tuple[dict[str, float], list[dict]]:
    recipe, cfg = c.recipe, c.recipe.rollout
    timings: dict[str, float] = {}
    step_start = time.perf_counter()

    # 1. prompts and their rollout counts
    batch = c.sampler.next_batch(step)

    # 2. generation, each sample seeded by (run seed, step, prompt id, sample index)
    started = time.perf_counter()
    requests = [
        GenerationRequest(pid, j, c.prompt_tokens[pid], sample_seed(recipe.trainer.seed, step, pid, j))
        for pid, count in batch
        for j in range(count)
    ]
    temperature = c.temperature.temperature
    params = SamplingParams(temperature, cfg.max_new_tokens, cfg.top_k, cfg.top_p)
    rollouts = c.rollouts.generate(requests, params)
    timings["time/generate"] = time.perf_counter() - started

    # 3. rewards
    started = time.perf_counter()
    scored = c.rewards([r.text for r in rollouts], [c.train[r.prompt_id].prompt for r in rollouts], reward_columns(c, rollouts))
    timings["time/reward"] = time.perf_counter() - started

    # 4. driver state advances: difficulty estimates and length history
    outcomes: dict[str, list[bool]] = {}
    for r, ok in zip(rollouts, scored.correct):
        if ok is not None:
            outcomes.setdefault(r.prompt_id, []).append(ok)
    c.sampler.update(outcomes)
    c.history.update([r.prompt_id for r in rollouts], [len(r.completion_tokens) for r in rollouts], scored.correct)

    # 5. advantages, then the update at the sampling temperature
    kept = [i for i, dropped in enumerate(scored.dropped) if not dropped]
    group_index = {pid: g for g, (pid, _) in enumerate(batch)}
    rewards = torch.tensor([scored.total[i] for i in kept], dtype=torch.float32)
    groups = torch.tensor([group_index[rollouts[i].prompt_id] for i in kept])
    if recipe.algorithm.advantage == "gae":  # GAE needs the critic's values: the learner turns rewards into advantages
        advantages = torch.zeros_like(rewards)
    else:
        advantages = get_advantage_estimator(recipe.algorithm.advantage)(rewards, groups)
    samples = [
        TrainSample(rollouts[i].prompt_tokens, rollouts[i].completion_tokens, rollouts[i].logprobs, float(a), reward=float(r))
        for i, a, r in zip(kept, advantages.tolist(), rewards.tolist())
    ]
    started = time.perf_counter()
    train_metrics = ray.get(c.learner.update.remote(samples, temperature, step))
    timings["time/train"] = time.perf_counter() - started

    # 6. temperature follows the entropy just measured
    c.temperature.update(train_metrics["policy/entropy"], step + 1)

    # 7. new weights to every rollout worker
    started = time.perf_counter()
    version = sync_weights(c)
    timings["time/sync"] = time.perf_counter() - started

    # 8. metrics
    lengths = [len(r.completion_tokens) for r in rollouts]
    correct_lengths = [n for n, ok in zip(lengths, scored.correct) if ok]
    timings["time/step"] = time.perf_counter() - step_start
    metrics = {
        **scored.metrics,
        **train_metrics,
        **timings,
        **group_stats(rollouts, scored.correct),
        **c.sampler.metrics(),
        **c.temperature.metrics(),
        "reward/mean": float(rewards.mean()) if len(kept) else float("nan"),
        "correct/mean": sum(bool(ok) for ok in scored.correct) / len(rollouts),
        "rollout/temperature": temperature,
        "rollout/count": float(len(rollouts)),
        "rollout/tokens": float(sum(lengths)),
        "rollout/length_mean": sum(lengths) / len(lengths),
        "rollout/length_correct_mean": sum(correct_lengths) / len(correct_lengths) if correct_lengths else float("nan"),
        "rollout/truncated_frac": sum(r.finish_reason == "length" for r in rollouts) / len(rollouts),
        "rollout/dropped": float(len(rollouts) - len(kept)),
        "rollout/worker_restarts": float(c.rollouts.restarts),
        "advantage/nonzero_frac": train_metrics.get(
            "advantage/nonzero_frac", float((advantages.abs() > 1e-8).float().mean()) if len(kept) else 0.0
        ),
        "throughput/tokens_per_s": sum(lengths) / timings["time/step"],
        "policy/version": float(version),
    }
    samples_out = [
        {"prompt_id": r.prompt_id, "sample_index": r.sample_index, "policy_version": r.policy_version,
         "prompt": c.train[r.prompt_id].prompt, "completion": r.text, "reward": scored.total[i], "correct": scored.correct[i]}
        for i, r in enumerate(rollouts[: recipe.logging.samples_per_step])
    ]
    return metrics, samples_out


def sync_weights(c: Components) -> int:
    version = ray.get(c.learner.get_version.remote())
    c.rollouts.sync(c.learner.weights.remote(), version)
    return version


# -- evaluation, checkpoints, the whole run --------------------------------------------------------------------------


def run_eval(c: Components) -> dict[str, float]:
    t = c.recipe.trainer
    return evaluate(
        c.rollouts, c.test, c.prompt_tokens, scorer(c.rewards),
        seed=t.seed, k=t.eval_k, temperature=t.eval_temperature, max_new_tokens=c.recipe.rollout.max_new_tokens,
    )


def save_checkpoint(c: Components, step: int, summary: dict) -> Path:
    """Everything the next step depends on. `step` is the number of completed RL steps."""
    tmp = checkpoint.begin(c.run_dir, step)
    ray.get(c.learner.save_state.remote(str(tmp)))
    driver_state = {
        "step": step,
        "sampler": c.sampler.state_dict(),
        "temperature": c.temperature.state_dict(),
        "length_history": c.history.state_dict(),
        "summary": summary,
    }
    final = checkpoint.commit(tmp, checkpoint.step_dir(c.run_dir, step), driver_state)
    checkpoint.prune(c.run_dir, c.recipe.checkpoint.keep_last)
    return final


def restore(c: Components, ckpt: Path) -> tuple[int, dict]:
    checkpoint.verify(ckpt)
    state = checkpoint.read_driver_state(ckpt)
    ray.get(c.learner.load_state.remote(str(ckpt)))
    c.sampler.load_state_dict(state["sampler"])
    c.temperature.load_state_dict(state["temperature"])
    c.history.load_state_dict(state["length_history"])
    return state["step"], state["summary"]


class _Interrupt:
    """First Ctrl-C: finish the current step, checkpoint, exit 0. Second: stop at once."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            signal.signal(signal.SIGINT, self.previous)
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)


def train(recipe: Recipe, run_dir: Path, *, resume_from: Path | None = None, address: str | None = None) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.yaml").write_text(to_yaml(recipe, with_base_dir=True))
    quiet_hf()
    init_ray(recipe, address)
    wall_start = time.perf_counter()
    c = build(recipe, run_dir)
    try:
        return _run(c, resume_from, wall_start)
    finally:
        c.rewards.close()
        ray.shutdown()


def _run(c: Components, resume_from: Path | None, wall_start: float) -> dict:
    recipe = c.recipe
    summary: dict = {"eval": {}}
    start_step = 0
    if resume_from is not None:
        start_step, summary = restore(c, resume_from)
        print(f"resumed from {resume_from} (step {start_step})", flush=True)
    else:
        if recipe.sft is not None:
            spec = recipe.sft.data or recipe.data.train
            pairs = [(e.prompt, e.solution) for e in build_examples(spec, recipe, c.tokenizer, "sft.data") if e.solution]
            summary["sft"] = ray.get(c.learner.sft.remote(pairs, str(c.run_dir / "sft_tmp")))
            print(f"SFT warm-up: {summary['sft']['sft/steps']} steps in {summary['sft']['time/sft']:.0f}s", flush=True)
        ray.get(c.learner.start_rl.remote())
    sync_weights(c)
    if resume_from is None and recipe.trainer.eval_before:
        summary["eval"]["before"] = run_eval(c)
        print(f"held-out before RL: {json.dumps(summary['eval']['before'])}", flush=True)

    writer = MetricsWriter(
        c.run_dir, recipe.trainer.steps, start_step, recipe.logging.progress, sinks=open_sinks(recipe, c.run_dir, start_step)
    )
    every = recipe.checkpoint.every
    step = start_step
    with _Interrupt() as interrupt:
        try:
            while step < recipe.trainer.steps and not interrupt.requested:
                metrics, samples = rl_step(c, step)
                if recipe.trainer.eval_every and (step + 1) % recipe.trainer.eval_every == 0:
                    metrics.update({f"eval/{k}": v for k, v in run_eval(c).items()})
                writer.log(step, metrics, samples)
                step += 1
                if every and step % every == 0 and step < recipe.trainer.steps:
                    save_checkpoint(c, step, summary)
        finally:
            writer.close()
    if step < recipe.trainer.steps:  # interrupted: keep what is done, say how to continue
        ckpt = save_checkpoint(c, step, summary)
        print(f"stopped after step {step}; checkpoint {ckpt}\nresume with: rlqa train RECIPE --run-dir {c.run_dir} --resume", flush=True)
        return summary

    save_checkpoint(c, step, summary)
    if recipe.trainer.eval_after:
        summary["eval"]["after"] = run_eval(c)
        print(f"held-out after RL: {json.dumps(summary['eval']['after'])}", flush=True)
    ray.get(c.learner.save_pretrained.remote(str(c.run_dir / "final")))
    summary["steps"] = step
    summary["wall_seconds"] = time.perf_counter() - wall_start
    (c.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
