r"""The driver: builds the actors from a recipe, then runs the RL loop of DESIGN.md, one numbered stage at a time.

    1. sampler.next_batch(step)            prompts, each with a rollout count, and one     stages.draw
                                           request per sample, seeded per (run seed,
                                           step, prompt id, sample index)
    2. rollout workers generate            requests in, rollouts out, at the controller's  stages.generate, run by the
                                           temperature                                     Schedule
    3. reward pipeline                     per-term rewards, total, correctness           stages.score
       (DAPO) drop constant groups, more rounds of 1-3 until enough remain                  stages.dynamic_sampling
    4. sampler.update, length history      the driver's state advances                    stages.advance_sampler
    5. advantages -> learner.update        outcome advantages, then the update at the     stages.estimate_advantages,
                                           sampling temperature: loss metrics + entropy   Schedule.train
       (async) step t + 1's prompts are drawn (stage 1) just before the update, which generates them meanwhile
    6. temperature.update(entropy)                                                        stages.update_temperature
    7. weights learner -> rollout workers  (policy version + 1)                           Schedule.sync
    8. metrics; checkpoint every k steps; periodic held-out evaluation

Every stage works on one `StepBatch` and returns its metrics under its own namespace; `metrics.merge` refuses a key
produced twice. A group of the batch is a position in it (a prompt drawn twice makes two groups). Generation has one
seam, `Generator.generate(requests, params, version) -> rollouts` (rlqa.rollout.types): the step's first round,
dynamic sampling's extra rounds and the held-out evaluation all build their requests with
`seeding.seeded_requests` and generate through it. The `Schedule` (sync, async or colocated) takes a round's
requests and decides when generation, training and weight sync happen, so `rl_step` reads the same in every mode.
The driver owns the sampler, the temperature controller, the length history and the policy version; the learner
owns the weights and the optimizer; both are saved in every checkpoint, which is all a resumed run needs to continue
bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray.exceptions import RayActorError, RayTaskError

from rlqa import checkpoint, stages
from rlqa.cluster import TOKEN_VARIABLE, ray_session, shared_dir
from rlqa.config import Recipe
from rlqa.recipe_files import to_yaml
from rlqa.data.example import Example
from rlqa.data.sources import build_examples
from rlqa.errors import UserError
from rlqa.evaluation import describe, evaluate, scorer
from rlqa.hints import HintedExamples, HintedTokens, schedule_lines
from rlqa.learner import lora
from rlqa.learner.group import LearnerGroup, check_learner_gpus, start_learners
from rlqa.length_history import LengthHistory
from rlqa.metrics import MetricsWriter, merge, open_sinks
from rlqa.models import create_model_dir, load_tokenizer, logits_width, quiet_hf
from rlqa.placement import actor_options, shortfall
from rlqa.rollout.backends import check_backend
from rlqa.rollout.group import RolloutFailure, RolloutGroup, actor_pid
from rlqa.rollout.sync import make_weight_sync
from rlqa.yields import YieldTotals
from rlqa.sampler import RolloutSampler
from rlqa.schedule import Schedule
from rlqa.temperature import TemperatureController
from rewards.pipeline import RewardPipeline

RESOURCE_REPORT_EVERY_S = 30.0


@dataclass
class Driver:
    """What the driver holds without Ray: the data, and the state that advances step by step."""

    recipe: Recipe
    model_dir: str
    tokenizer: object
    train: dict[str, Example]
    test: list[Example]
    prompt_tokens: dict[str, tuple[int, ...]]
    sampler: RolloutSampler
    temperature: TemperatureController
    history: LengthHistory
    yields: YieldTotals = field(default_factory=YieldTotals)


@dataclass
class Components:
    driver: Driver
    run_dir: Path
    learner: LearnerGroup
    rollout_workers: RolloutGroup
    rewards: RewardPipeline
    schedule: Schedule
    learner_pids: list[int] | None = None  # for RUN_DIR/processes.json

    @property
    def recipe(self) -> Recipe:
        return self.driver.recipe


# -- building ------------------------------------------------------------------------------------------------------


def ray_resources(recipe: Recipe) -> dict:
    """What `ray_session` needs to start an embedded Ray big enough for the recipe's actors."""
    needed = recipe.rollout.workers * recipe.rollout.cpus_per_worker + recipe.learner.workers * recipe.learner.cpus
    return {
        "num_cpus": recipe.ray.num_cpus or max(int(needed + 0.999), 1),
        "num_gpus": recipe.ray.num_gpus,
        "configure_logging": False,
        "runtime_env": {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}},
    }


def rollout_sampler(recipe: Recipe, train: list[Example]) -> RolloutSampler:
    """The sampler over the training prompts, with the offline ranks of `sampler.rank_column` as priors."""
    column, priors = recipe.sampler.rank_column, {}
    for e in train:
        rank = None if column is None else e.columns.get(column)
        if rank is None:
            continue
        if isinstance(rank, bool) or not isinstance(rank, (int, float)) or not 0 <= rank < 1:
            raise UserError(f"sampler.rank_column: prompt {e.prompt_id!r} has {column} = {rank!r}, not a rank in [0, 1)")
        priors[e.prompt_id] = float(rank)
    return RolloutSampler(
        [e.prompt_id for e in train],
        recipe.sampler,
        prompts_per_step=recipe.rollout.prompts_per_step,
        rollouts_per_prompt=recipe.rollout.rollouts_per_prompt,
        seed=recipe.trainer.seed,
        priors=priors or None,
        total_steps=recipe.trainer.steps,
        hint_lines=None if recipe.sampler.hints is None else schedule_lines(train, recipe.sampler.hints),
    )


def build_driver(recipe: Recipe, run_dir: Path) -> Driver:
    """The model directory, the data and the driver's state; no Ray. A user mistake raises a one-line UserError."""
    model_dir = str(create_model_dir(recipe.model, run_dir / "init_model", recipe.trainer.seed, recipe.base_dir))
    if recipe.model.lora is not None:
        lora.check_targets(model_dir, recipe.model.lora, recipe.model.trust_remote_code)
    tokenizer = load_tokenizer(model_dir, recipe.model.trust_remote_code)
    train = build_examples(recipe.data.train, recipe, tokenizer, "data.train")
    test = build_examples(recipe.data.test, recipe, tokenizer, "data.test")
    # a hinted prompt's example and tokens are made from its prompt's when first asked for (rlqa.hints)
    examples = HintedExamples({e.prompt_id: e for e in train}, recipe.sampler.hints.column if recipe.sampler.hints else "solution")
    tokens = {e.prompt_id: tuple(tokenizer(e.prompt, add_special_tokens=False).input_ids) for e in train + test}
    return Driver(
        recipe=recipe,
        model_dir=model_dir,
        tokenizer=tokenizer,
        train=examples,
        test=test,
        prompt_tokens=HintedTokens(tokens, examples, tokenizer),
        sampler=rollout_sampler(recipe, train),
        # steps=0 is an SFT-only run
        temperature=TemperatureController(
            recipe.temperature, vocab_size=logits_width(model_dir, recipe.model.trust_remote_code), total_steps=max(recipe.trainer.steps, 1)
        ),
        history=LengthHistory(),
    )


def build(recipe: Recipe, run_dir: Path) -> Components:
    d = build_driver(recipe, run_dir)
    learner_options, worker_options = actor_options(recipe)
    learner = start_learners(d.model_dir, recipe, learner_options)
    workers = RolloutGroup(d.model_dir, recipe, worker_options)
    schedule = Schedule(
        learner, workers, make_weight_sync(recipe.rollout.weight_sync, shared_dir(os.environ[TOKEN_VARIABLE])),
        steps=recipe.trainer.steps, overlap=bool(recipe.rollout.async_steps), colocated=recipe.ray.placement == "colocate",
    )
    return Components(d, run_dir, learner, workers, RewardPipeline.from_config(recipe.rewards, Path(recipe.base_dir)), schedule)


# -- one RL step ---------------------------------------------------------------------------------------------------


class Stopwatch:
    """time/<name> of each timed part of a step, summed over its rounds (dynamic sampling)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        started = time.perf_counter()
        yield
        key = f"time/{name}"
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - started


def draw(
    d: Driver, step: int, temperature: float, *, num_prompts: int | None = None, after: stages.StepBatch | None = None
) -> stages.StepRequests:
    """Stage 1 with the driver's sampler and prompt tokens (`stages.draw`)."""
    return stages.draw(d.sampler, step, temperature, d.recipe, d.prompt_tokens, num_prompts=num_prompts, after=after)


def rl_step(c: Components, step: int) -> tuple[dict[str, float], list[dict]]:
    """One step of DESIGN.md: the numbered stages over one StepBatch; returns its metrics and sample rows."""
    d, recipe, clock = c.driver, c.recipe, Stopwatch()
    started = time.perf_counter()
    with clock("generate"):  # 1-2, unless (async) the previous step's update generated them
        batch = c.schedule.prefetched(step)
        if batch is None:
            batch = c.schedule.generate(draw(d, step, d.temperature.temperature))
    with clock("reward"):  # 3
        reward_metrics = stages.score(batch, c.rewards, d.train, d.history, d.sampler, recipe.rollout.max_new_tokens)
    dynamic_metrics: dict[str, float] = {}
    if recipe.sampler.dynamic_sampling:  # 1-3 again, until enough groups have signal

        def more(so_far: stages.StepBatch, num_prompts: int) -> stages.StepBatch:
            return extra_round(c, so_far, num_prompts, clock)

        batch, dynamic_metrics = stages.dynamic_sampling(
            batch, more, d.sampler, target=recipe.rollout.prompts_per_step,
            max_extra_rounds=recipe.sampler.max_extra_rounds, signal=recipe.sampler.dynamic_sampling_signal,
        )
    sampler_metrics = stages.advance_sampler(batch, d.sampler, d.history)  # 4
    advantage_metrics = stages.estimate_advantages(batch, recipe.algorithm.advantage)  # 5
    yield_metrics = stages.account_yield(batch, d.yields)
    # async: step t + 1's prompts, drawn after this step's sampler update, at the controller's temperature before it
    # moves; the update below generates them meanwhile
    next_step = draw(d, step + 1, d.temperature.temperature) if c.schedule.ahead(step) else None
    with clock("train"):
        train_metrics = c.schedule.train(batch.train_samples(), batch.temperature, step, next_step)
    temperature_metrics = stages.update_temperature(d.temperature, train_metrics, step)  # 6
    with clock("sync"):  # 7
        version = c.schedule.sync()
    clock.seconds["time/step"] = time.perf_counter() - started
    rollout_metrics = stages.rollout_metrics(batch, version, c.rollout_workers.restarts)  # 8
    metrics = merge(
        rollout_metrics, reward_metrics, dynamic_metrics, sampler_metrics, advantage_metrics, yield_metrics, train_metrics,
        temperature_metrics, clock.seconds,
        {"throughput/tokens_per_s": batch.generated_tokens() / clock.seconds["time/step"], "policy/version": float(version)},
    )
    return metrics, stages.sample_rows(batch, d.train, recipe.logging.samples_per_step)


def extra_round(c: Components, so_far: stages.StepBatch, num_prompts: int, clock: Stopwatch) -> stages.StepBatch:
    """Dynamic sampling's extra round of the step `so_far` holds: stages 1-3 for `num_prompts` more prompts, at the
    temperature of its first round, by the policy the workers hold now. Its reward metrics are left out: reward/*
    describe the step's first round, as without dynamic sampling."""
    d = c.driver
    with clock("generate"):
        batch = c.schedule.generate(draw(d, so_far.step, so_far.temperature, num_prompts=num_prompts, after=so_far))
    with clock("reward"):
        stages.score(batch, c.rewards, d.train, d.history, d.sampler, c.recipe.rollout.max_new_tokens)
    return batch


# -- evaluation, checkpoints, the whole run --------------------------------------------------------------------------


def run_eval(c: Components) -> dict[str, float]:
    t = c.recipe.trainer
    return evaluate(
        c.rollout_workers, c.driver.test, c.driver.prompt_tokens, scorer(c.rewards), seed=t.seed, k=t.eval_k,
        temperature=t.eval_temperature, max_new_tokens=c.recipe.rollout.max_new_tokens, version=c.schedule.version,
        by=t.eval_by,
    )


def save_checkpoint(c: Components, step: int, summary: dict, metrics: dict | None = None) -> Path:
    """Everything the next step depends on. `step` is the number of completed RL steps; `metrics` those of the last
    one, which decide whether this is the best checkpoint so far (`checkpoint.best_metric`)."""
    tmp = checkpoint.begin(c.run_dir, step)
    ray.get(c.learner.save_state(str(tmp)))
    (tmp / checkpoint.RECIPE).write_text(to_yaml(c.recipe, with_base_dir=True))
    checkpoint.copy_model_files(Path(c.driver.model_dir), tmp / checkpoint.HF_FILES)
    best = track_best(c.recipe, summary, step, metrics or {})
    driver_state = {
        "step": step,
        "policy_version": c.schedule.version,
        "sampler": c.driver.sampler.state_dict(),
        "temperature": c.driver.temperature.state_dict(),
        "length_history": c.driver.history.state_dict(),
        "yield": c.driver.yields.state_dict(),
        "rng": checkpoint.rng_state(),
        "rollout_worker_restarts": c.rollout_workers.restarts,
        "summary": summary,
        # async: the next step's rollouts, generated during this step's update (the sampler's state above has drawn
        # their prompts already)
        "pending_rollouts": None if c.schedule.pending is None else c.schedule.pending.to_state(),
    }
    final = checkpoint.commit(tmp, checkpoint.step_dir(c.run_dir, step), driver_state)
    keep = checkpoint.step_dir(c.run_dir, best["step"]) if best else None
    checkpoint.prune(c.run_dir, c.recipe.checkpoint.keep_last, keep=(final, keep))
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
        ray.get(c.learner.load_state(str(ckpt)))
    except RayTaskError as err:  # it verified, so it was written by a different recipe (another model, no critic, ...)
        raise checkpoint.CheckpointError(f"{ckpt}: the learner cannot load it ({err.cause!r})") from None
    if "policy_version" in state:
        c.schedule.version = state["policy_version"]
    else:  # a checkpoint from before the driver owned the policy version: the learner kept it
        c.schedule.version = json.loads((ckpt / "learner.json").read_text())["version"]
    c.driver.sampler.load_state_dict(state["sampler"])
    c.driver.temperature.load_state_dict(state["temperature"])
    c.driver.history.load_state_dict(state["length_history"])
    c.driver.yields.load_state_dict(state.get("yield", {}))  # absent before yield accounting: counted from here
    checkpoint.set_rng_state(state["rng"])
    c.rollout_workers.restarts = state["rollout_worker_restarts"]
    pending = state.get("pending_rollouts")  # absent in checkpoints from before async runs saved them
    c.schedule.restore_pending(None if pending is None else stages.StepBatch.from_state(pending))
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
        c.learner_pids = [actor_pid(a) for a in c.learner.actors]
    pids = {"driver": os.getpid(), "learners": c.learner_pids, "rollout_workers": c.rollout_workers.pids()}
    checkpoint.write_text_atomic(c.run_dir / "processes.json", json.dumps(pids))  # read by others while it changes


class _Interrupt:
    """Ctrl-C (or SIGTERM, as preemption sends) during an RL step: finish the step, checkpoint, exit 0. With no
    step in flight (start-up, waiting for the cluster, the warm-up, an evaluation), or a second time: stop at once
    (KeyboardInterrupt); the last committed checkpoint stays intact."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self.in_step = False

    def __enter__(self):
        self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    @contextlib.contextmanager
    def step(self):
        """RL steps run inside: a first signal lets the one in flight end."""
        self.in_step = True
        try:
            yield
        finally:
            self.in_step = False

    def _handle(self, signum, frame):
        if self.requested or not self.in_step:
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
    if resume_from is None:  # a resumed run rewrites it only once its checkpoint has loaded (`_start`)
        write_recipe(recipe, run_dir)
    quiet_hf()
    if not (sys.stdout.isatty() and sys.stderr.isatty()):  # a log file: Ray's "(Learner pid=...)" prefixes uncoloured
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    address = address or recipe.ray.address or os.environ.get("RAY_ADDRESS")
    # Ctrl-C / SIGTERM once Ray is up (ray.init sets its own SIGTERM handler): at once, unless RL steps are running
    with ray_session(address, **ray_resources(recipe)), _Interrupt() as interrupt:
        gpus = ray.cluster_resources().get("GPU", 0)
        check_backend(recipe.rollout.backend, gpus)  # the clearer message first
        check_learner_gpus(recipe.learner, gpus)
        wait_for_resources(recipe)
        wall_start = time.perf_counter()
        c = build(recipe, run_dir)
        try:
            return _run(c, interrupt, resume_from, wall_start)
        finally:
            c.rewards.close()


def write_recipe(recipe: Recipe, run_dir: Path) -> None:
    """RUN_DIR/recipe.yaml, with every override: the file the printed resume command starts from."""
    checkpoint.write_text_atomic(run_dir / "recipe.yaml", to_yaml(recipe, with_base_dir=True))


def wait_for_resources(recipe: Recipe) -> None:
    """Exit 2 (UserError) when the cluster cannot hold the recipe's actors, after waiting up to
    `ray.wait_for_resources_s` for it to grow and saying what is missing when it starts waiting, then every 30 s."""
    started = time.monotonic()
    last_said = started - RESOURCE_REPORT_EVERY_S
    while (missing := shortfall(recipe, [n["Resources"] for n in ray.nodes() if n["Alive"]])) is not None:
        waited = time.monotonic() - started
        if waited >= recipe.ray.wait_for_resources_s:
            raise UserError(missing + (f" (waited {waited:.0f} s)" if waited >= 1 else ""))
        if time.monotonic() - last_said >= RESOURCE_REPORT_EVERY_S:
            print(f"waiting for the cluster to grow ({waited:.0f} s): {missing}", flush=True)
            last_said = time.monotonic()
        time.sleep(1.0)


def _start(c: Components, resume_from: Path | None) -> tuple[int, dict]:
    """Restore a checkpoint, or run the SFT warm-up (if any) and the evaluation before RL."""
    recipe = c.recipe
    if resume_from is not None:
        for change in checkpoint.recipe_changes(resume_from, recipe.model_dump(mode="json")):
            print(f"note: resuming with a changed recipe key, {change}", flush=True)
        start_step, summary = restore(c, resume_from)
        write_recipe(recipe, c.run_dir)  # a resume that failed has left the run's recipe as it was
        checkpoint.discard_after(c.run_dir, start_step)
        print(f"resumed from {resume_from} (step {start_step})", flush=True)
        c.schedule.sync()
        return start_step, summary
    summary: dict = {"eval": {}}
    if recipe.sft is not None:
        spec = recipe.sft.data or recipe.data.train
        pairs = [(e.prompt, e.solution) for e in build_examples(spec, recipe, c.driver.tokenizer, "sft.data") if e.solution]
        summary["sft"] = ray.get(c.learner.sft(pairs, str(c.run_dir / "sft_tmp")))
        shutil.rmtree(c.run_dir / "sft_tmp", ignore_errors=True)  # TRL's output directory; the weights live on
        c.schedule.version += 1  # the warm-up changed the weights: the workers get version 1
        print(f"SFT warm-up: {summary['sft']['sft/steps']} steps in {summary['sft']['time/sft']:.0f}s", flush=True)
    ray.get(c.learner.start_rl())
    c.schedule.sync()
    if recipe.trainer.eval_before:
        summary["eval"]["before"] = run_eval(c)
        print(f"held-out before RL: {describe(summary['eval']['before'])}", flush=True)
    return 0, summary


def budget_spent(c: Components) -> bool:
    """trainer.rollout_budget is reached: the run is complete, as at trainer.steps."""
    budget = c.recipe.trainer.rollout_budget
    return budget is not None and c.driver.yields.rollouts >= budget


def _run(c: Components, interrupt: _Interrupt, resume_from: Path | None, wall_start: float) -> dict:
    recipe = c.recipe
    steps, every = recipe.trainer.steps, recipe.checkpoint.every
    step, summary = _start(c, resume_from)
    write_processes(c)
    writer = MetricsWriter(c.run_dir, steps, step, recipe.logging.progress, sinks=open_sinks(recipe, c.run_dir, step))
    saved = step if resume_from is not None else None  # the step of the newest checkpoint on disk
    metrics = None
    try:
        with interrupt.step():  # a first Ctrl-C / SIGTERM from here: finish the step, save, stop
            while step < steps and not interrupt.requested and not budget_spent(c):
                restarts = c.rollout_workers.restarts
                metrics, samples = rl_step(c, step)
                if recipe.trainer.eval_every and (step + 1) % recipe.trainer.eval_every == 0:
                    metrics = merge(metrics, {f"eval/{k}": v for k, v in run_eval(c).items()})
                writer.log(step, metrics, samples)
                step += 1
                if c.rollout_workers.restarts != restarts:
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
    if step < steps and not budget_spent(c):  # interrupted: what is done is saved, say how to continue
        print(
            f"stopped after step {step}; checkpoint {checkpoint.step_dir(c.run_dir, step)}\n"
            f"resume with: {resume_command(c.run_dir)}",
            flush=True,
        )
        return summary

    if recipe.trainer.eval_after:
        summary["eval"]["after"] = run_eval(c)
        print(f"held-out after RL:  {describe(summary['eval']['after'])}", flush=True)
    save_final(c)
    summary["steps"] = step
    summary["yield"] = c.driver.yields.summary()
    summary["wall_seconds"] = time.perf_counter() - wall_start
    checkpoint.write_text_atomic(c.run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def save_final(c: Components) -> Path:
    """RUN_DIR/final, the trained policy as a Hugging Face directory, with a manifest (`rlqa eval` verifies it),
    written under a temporary name and renamed into place: complete or absent, like a checkpoint."""
    tmp = c.run_dir / ".tmp_final"
    shutil.rmtree(tmp, ignore_errors=True)
    ray.get(c.learner.save_pretrained(str(tmp)))
    return checkpoint.seal(tmp, c.run_dir / "final")
