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
import os
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
from ray.exceptions import RayActorError, RayTaskError

from rlqa import checkpoint
from rlqa.algorithms.advantages import get_advantage_estimator
from rlqa.config import Recipe, to_yaml
from rlqa.data.example import Example
from rlqa.data.sources import build_examples
from rlqa.evaluation import evaluate, scorer
from rlqa.learner.batch import TrainSample
from rlqa.learner.group import start_learners
from rlqa.length_history import LengthHistory
from rlqa.metrics import MetricsWriter, open_sinks
from rlqa.models import create_model_dir, load_tokenizer, quiet_hf
from rlqa.placement import actor_options
from rlqa.rollout.backends import check_backend
from rlqa.rollout.direct_sync import DirectSync
from rlqa.rollout.group import RolloutFailure, RolloutGroup, actor_pid
from rlqa.rollout.seeding import sample_seed
from rlqa.rollout.types import GenerationRequest, Rollout, SamplingParams
from rlqa.sampler import RolloutSampler
from rlqa.scaleout import engines_sleep, engines_wake, staleness
from rlqa.temperature import TemperatureController
from rewards.pipeline import RewardPipeline, RewardTermSpec
from rewards.registry import function_name, resolve_spec

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
    weight_sync: DirectSync | None = None  # rollout.weight_sync other than object_store
    prefetch: Future | None = None  # async mode: the next step's generation, running during this step's update
    executor: ThreadPoolExecutor | None = None
    learner_pids: list[int] | None = None  # for RUN_DIR/processes.json


# -- building ------------------------------------------------------------------------------------------------------


def init_ray(recipe: Recipe, address: str | None) -> None:
    address = address or recipe.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    needed = recipe.rollout.workers * recipe.rollout.cpus_per_worker + recipe.learner.workers * recipe.learner.cpus
    ray.init(
        num_cpus=recipe.ray.num_cpus or max(int(needed + 0.999), 1),
        num_gpus=recipe.ray.num_gpus,
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
    """The sampler over the training prompts, with the offline ranks of `sampler.rank_column` as priors."""
    column = recipe.sampler.rank_column
    priors = {e.prompt_id: float(e.columns[column]) for e in train if column is not None and e.columns.get(column) is not None}
    return RolloutSampler(
        [e.prompt_id for e in train],
        recipe.sampler,
        prompts_per_step=recipe.rollout.prompts_per_step,
        rollouts_per_prompt=recipe.rollout.rollouts_per_prompt,
        seed=recipe.trainer.seed,
        priors=priors or None,
    )


def build(recipe: Recipe, run_dir: Path) -> Components:
    model_dir = str(create_model_dir(recipe.model, run_dir / "init_model", recipe.trainer.seed, recipe.base_dir))
    tokenizer = load_tokenizer(model_dir, recipe.model.trust_remote_code)
    train = build_examples(recipe.data.train, recipe, tokenizer, "data.train")
    test = build_examples(recipe.data.test, recipe, tokenizer, "data.test")
    prompt_tokens = {e.prompt_id: tuple(tokenizer(e.prompt, add_special_tokens=False).input_ids) for e in train + test}
    check_backend(recipe.rollout.backend, ray.cluster_resources().get("GPU", 0))
    learner_options, worker_options = actor_options(recipe)
    learner = start_learners(model_dir, recipe, learner_options)
    return Components(
        recipe=recipe,
        run_dir=run_dir,
        model_dir=model_dir,
        tokenizer=tokenizer,
        train={e.prompt_id: e for e in train},
        test=test,
        prompt_tokens=prompt_tokens,
        learner=learner,
        rollouts=RolloutGroup(model_dir, recipe, worker_options),
        rewards=reward_pipeline(recipe),
        sampler=rollout_sampler(recipe, train),
        # steps=0 is an SFT-only run
        temperature=TemperatureController(recipe.temperature, vocab_size=len(tokenizer), total_steps=max(recipe.trainer.steps, 1)),
        history=LengthHistory(),
        weight_sync=None if recipe.rollout.weight_sync == "object_store" else DirectSync(recipe.rollout.weight_sync),
        executor=ThreadPoolExecutor(1, thread_name_prefix="rlqa-prefetch") if recipe.rollout.async_steps else None,
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


def generate_step(c: Components, step: int) -> tuple[list[tuple[str, int]], float, list[Rollout]]:
    """1. the step's prompts and rollout counts; 2. their generation, each sample seeded by (run seed, step,
    prompt id, sample index), at the controller's current temperature."""
    recipe, cfg = c.recipe, c.recipe.rollout
    batch = c.sampler.next_batch(step)
    requests = [
        GenerationRequest(pid, j, c.prompt_tokens[pid], sample_seed(recipe.trainer.seed, step, pid, j))
        for pid, count in batch
        for j in range(count)
    ]
    temperature = c.temperature.temperature
    params = SamplingParams(temperature, cfg.max_new_tokens, cfg.top_k, cfg.top_p)
    return batch, temperature, c.rollouts.generate(requests, params)


def rl_step(c: Components, step: int) -> tuple[dict[str, float], list[dict]]:
    recipe = c.recipe
    timings: dict[str, float] = {}
    step_start = time.perf_counter()

    # 1-2. prompts and their rollout counts, then generation (async mode: it ran during the previous update)
    started = time.perf_counter()
    batch, temperature, rollouts = c.prefetch.result() if c.prefetch is not None else generate_step(c, step)
    c.prefetch = None
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
    update = c.learner.update.remote(samples, temperature, step)
    if c.executor is not None and step + 1 < recipe.trainer.steps:  # step t+1 generates while step t trains
        c.prefetch = c.executor.submit(generate_step, c, step + 1)
    elif recipe.ray.placement == "colocate":  # the engines give the shared GPUs to the learners meanwhile
        engines_sleep(c.rollouts)
    train_metrics = ray.get(update)
    timings["time/train"] = time.perf_counter() - started

    # 6. temperature follows the entropy just measured
    c.temperature.update(train_metrics["policy/entropy"], step + 1)

    # 7. new weights to every rollout worker
    started = time.perf_counter()
    if recipe.ray.placement == "colocate" and c.prefetch is None:
        engines_wake(c.rollouts)
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
        "rollout/staleness": staleness(version - 1, rollouts),
    }
    samples_out = [
        {"prompt_id": r.prompt_id, "sample_index": r.sample_index, "policy_version": r.policy_version,
         "prompt": c.train[r.prompt_id].prompt, "completion": r.text, "reward": scored.total[i], "correct": scored.correct[i]}
        for i, r in enumerate(rollouts[: recipe.logging.samples_per_step])
    ]
    return metrics, samples_out


def sync_weights(c: Components) -> int:
    version = ray.get(c.learner.get_version.remote())
    if c.weight_sync is not None:
        c.weight_sync.sync(c.learner, c.rollouts, version)
    else:
        c.rollouts.sync(c.learner.weights.remote(), version)
    return version


# -- evaluation, checkpoints, the whole run --------------------------------------------------------------------------


def run_eval(c: Components) -> dict[str, float]:
    t = c.recipe.trainer
    return evaluate(
        c.rollouts, c.test, c.prompt_tokens, scorer(c.rewards),
        seed=t.seed, k=t.eval_k, temperature=t.eval_temperature, max_new_tokens=c.recipe.rollout.max_new_tokens,
    )


def save_checkpoint(c: Components, step: int, summary: dict, metrics: dict | None = None) -> Path:
    """Everything the next step depends on. `step` is the number of completed RL steps; `metrics` those of the last
    one, which decide whether this is the best checkpoint so far (`checkpoint.best_metric`)."""
    tmp = checkpoint.begin(c.run_dir, step)
    ray.get(c.learner.save_state.remote(str(tmp)))
    (tmp / checkpoint.RECIPE).write_text(to_yaml(c.recipe, with_base_dir=True))
    checkpoint.copy_model_files(Path(c.model_dir), tmp / checkpoint.HF_FILES)
    best = track_best(c.recipe, summary, step, metrics or {})
    driver_state = {
        "step": step,
        "sampler": c.sampler.state_dict(),
        "temperature": c.temperature.state_dict(),
        "length_history": c.history.state_dict(),
        "rng": checkpoint.rng_state(),
        "rollout_worker_restarts": c.rollouts.restarts,
        "summary": summary,
    }
    final = checkpoint.commit(tmp, checkpoint.step_dir(c.run_dir, step), driver_state)
    keep = checkpoint.step_dir(c.run_dir, best["step"]) if best else None
    checkpoint.prune(c.run_dir, c.recipe.checkpoint.keep_last, keep=keep)
    return final


def track_best(recipe: Recipe, summary: dict, step: int, metrics: dict) -> dict | None:
    """summary["best_checkpoint"]: the step whose checkpoint scored best on `checkpoint.best_metric` so far."""
    cfg = recipe.checkpoint
    if cfg.best_metric is None:
        return None
    best = summary.get("best_checkpoint")
    value = metrics.get(cfg.best_metric)
    if checkpoint.is_better(value, best["value"] if best else None, cfg.best_mode):
        best = summary["best_checkpoint"] = {"step": step, "metric": cfg.best_metric, "value": value}
    return best


def restore(c: Components, ckpt: Path) -> tuple[int, dict]:
    """Load a verified checkpoint into the actors and the driver; returns (completed steps, summary so far)."""
    checkpoint.verify(ckpt)
    state = checkpoint.read_driver_state(ckpt)
    try:
        ray.get(c.learner.load_state.remote(str(ckpt)))
    except RayTaskError as err:  # it verified, so it was written by a different recipe (another model, no critic, ...)
        raise checkpoint.CheckpointError(f"{ckpt}: the learner cannot load it ({err.cause!r})") from None
    c.sampler.load_state_dict(state["sampler"])
    c.temperature.load_state_dict(state["temperature"])
    c.history.load_state_dict(state["length_history"])
    checkpoint.set_rng_state(state["rng"])
    c.rollouts.restarts = state["rollout_worker_restarts"]
    return state["step"], state["summary"]


class RunStopped(Exception):
    """The run cannot go on (the learner died, a rollout worker keeps failing); its last checkpoint is intact."""


def resume_command(run_dir: Path) -> str:
    """The command that continues this run: the run directory's recipe.yaml keeps every override it was started with."""
    return f"rlqa train {run_dir / 'recipe.yaml'} --run-dir {run_dir} --resume"


def write_processes(c: Components) -> None:
    """RUN_DIR/processes.json: which process is which, for operators (and the fault tests) that need to find one.
    Process ids are asked once (a dead or stopped actor would not answer); replacements update them."""
    if c.learner_pids is None:
        learners = getattr(c.learner, "actors", [c.learner])  # a DeepSpeed LearnerGroup holds one actor per rank
        c.learner_pids = [actor_pid(a) for a in learners]
    pids = {"driver": os.getpid(), "learners": c.learner_pids, "rollout_workers": c.rollouts.pids()}
    (c.run_dir / "processes.json").write_text(json.dumps(pids))


class _Interrupt:
    """First Ctrl-C (or SIGTERM, as preemption sends): finish the current step, checkpoint, exit 0.
    A second Ctrl-C stops at once; the last committed checkpoint stays intact."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.requested:
            self.__exit__()
            raise KeyboardInterrupt
        self.requested = True
        # os.write, not print: a handler may run while the main thread is inside print
        os.write(2, b"\nstopping after the current step and saving a checkpoint (Ctrl-C again: stop at once)\n")

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


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


def _start(c: Components, resume_from: Path | None) -> tuple[int, dict]:
    """Restore a checkpoint, or run the SFT warm-up (if any) and the evaluation before RL."""
    recipe = c.recipe
    if resume_from is not None:
        for change in checkpoint.recipe_changes(resume_from, recipe.model_dump(mode="json")):
            print(f"note: resuming with a changed recipe key, {change}", flush=True)
        start_step, summary = restore(c, resume_from)
        checkpoint.discard_after(c.run_dir, start_step)
        print(f"resumed from {resume_from} (step {start_step})", flush=True)
        sync_weights(c)
        return start_step, summary
    summary: dict = {"eval": {}}
    if recipe.sft is not None:
        spec = recipe.sft.data or recipe.data.train
        pairs = [(e.prompt, e.solution) for e in build_examples(spec, recipe, c.tokenizer, "sft.data") if e.solution]
        summary["sft"] = ray.get(c.learner.sft.remote(pairs, str(c.run_dir / "sft_tmp")))
        print(f"SFT warm-up: {summary['sft']['sft/steps']} steps in {summary['sft']['time/sft']:.0f}s", flush=True)
    ray.get(c.learner.start_rl.remote())
    sync_weights(c)
    if recipe.trainer.eval_before:
        summary["eval"]["before"] = run_eval(c)
        print(f"held-out before RL: {json.dumps(summary['eval']['before'])}", flush=True)
    return 0, summary


def _run(c: Components, resume_from: Path | None, wall_start: float) -> dict:
    recipe = c.recipe
    steps, every = recipe.trainer.steps, recipe.checkpoint.every
    with _Interrupt() as interrupt:  # from here on, Ctrl-C ends the run with a checkpoint
        step, summary = _start(c, resume_from)
        write_processes(c)
        writer = MetricsWriter(c.run_dir, steps, step, recipe.logging.progress, sinks=open_sinks(recipe, c.run_dir, step))
        saved = step if resume_from is not None else None  # the step of the newest checkpoint on disk
        metrics = None
        try:
            while step < steps and not interrupt.requested:
                restarts = c.rollouts.restarts
                metrics, samples = rl_step(c, step)
                if recipe.trainer.eval_every and (step + 1) % recipe.trainer.eval_every == 0:
                    metrics.update({f"eval/{k}": v for k, v in run_eval(c).items()})
                writer.log(step, metrics, samples)
                step += 1
                if c.rollouts.restarts != restarts:
                    write_processes(c)
                if every and step % every == 0:
                    save_checkpoint(c, step, summary, metrics)
                    saved = step
            if saved != step:  # the end of the run, or a stop requested by Ctrl-C / SIGTERM
                save_checkpoint(c, step, summary, metrics)
        except (RayActorError, RolloutFailure) as err:
            last = checkpoint.latest_good(c.run_dir, warn=lambda message: None)
            what = "the learner died" if isinstance(err, RayActorError) else "a rollout worker keeps failing"
            raise RunStopped(
                f"{what} during step {step + 1} of {steps} ({type(err).__name__}); the last checkpoint is {last or 'none'}"
                + (f"\nresume with: {resume_command(c.run_dir)}" if last else "")
            ) from err
        finally:
            writer.close()
    if step < steps:  # interrupted: what is done is saved, say how to continue
        print(
            f"stopped after step {step}; checkpoint {checkpoint.step_dir(c.run_dir, step)}\n"
            f"resume with: {resume_command(c.run_dir)}",
            flush=True,
        )
        return summary

    if recipe.trainer.eval_after:
        summary["eval"]["after"] = run_eval(c)
        print(f"held-out after RL: {json.dumps(summary['eval']['after'])}", flush=True)
    ray.get(c.learner.save_pretrained.remote(str(c.run_dir / "final")))
    summary["steps"] = step
    summary["wall_seconds"] = time.perf_counter() - wall_start
    (c.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
