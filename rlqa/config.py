"""The recipe schema: one frozen config of sections, each field with a default and one line of help; a recipe holds
only what it changes. Reading a recipe file, its overrides and its paths is rlqa.recipe_files.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


# The ceiling of an integer key that sets no bound of its own: a count past it is a typo (`steps: 1e12`), and numbers
# this size overflow the C code they reach (torch, Ray, select timeouts).
INT_CEILING = 2**31 - 1
# Ceilings of the keys that size processes, rollouts and waits: past them a recipe cannot run on any machine.
MAX_PROCESSES = 4096
MAX_ROLLOUTS_PER_PROMPT = 4096
MAX_DEADLINE_S = 7 * 24 * 3600.0  # a week; an infinite or astronomic deadline overflows time.monotonic() + it


class Section(BaseModel):
    """A recipe section: unknown keys refused, frozen, and every float finite (`.inf`, `.nan` are refused in every
    key, lists and tuples included); an integer key without its own upper bound is capped at INT_CEILING."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _int_ceiling(cls, value, info):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_CEILING:
            field = cls.model_fields[info.field_name]
            if not any(hasattr(bound, "le") or hasattr(bound, "lt") for bound in field.metadata):
                raise ValueError(f"{value} is out of range (at most {INT_CEILING} in absolute value)")
        return value


class TinyModelConfig(Section):
    hidden_size: int = Field(128, ge=1, description="width of the tiny Llama-style model built when model.path is null")
    layers: int = Field(4, ge=1, description="number of transformer blocks")
    heads: int = Field(4, ge=1, description="attention heads; hidden_size / heads must be even (rotary embeddings)")
    intermediate_size: int = Field(512, ge=1, description="MLP width")
    max_positions: int = Field(256, ge=1, description="longest prompt + completion in tokens")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TinyModelConfig:
        if self.hidden_size % (2 * self.heads):
            raise ValueError(f"hidden_size / heads must be an even number (rotary embeddings), got {self.hidden_size} / {self.heads}")
        return self


class LoraConfig(Section):
    r: int = Field(8, ge=1, description="rank of each adapter (B A, with A of r rows)")
    alpha: float = Field(16.0, gt=0, description="scale of the adapters' update: W + (alpha / r) B A")
    target_modules: list[str] | str = Field(
        "all-linear", description="modules that get adapters: names (e.g. [q_proj, v_proj]), a regex, or all-linear (every linear layer but the LM head)"
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapters' input while training")


class ModelConfig(Section):
    path: str | None = Field(None, min_length=1, description="local Hugging Face model directory; null builds the tiny model")
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig, description="shape of the tiny built-in model")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="parameter dtype")
    trust_remote_code: bool = Field(False, description="allow custom modelling code from model.path")
    lora: LoraConfig | None = Field(None, description="train LoRA adapters (peft) on a frozen base; null: full fine-tuning")


class DatasetConfig(Section):
    path: str | None = Field(
        None, min_length=1, description="JSONL or Parquet file, or a Hugging Face `datasets` directory (save_to_disk); relative paths: to the recipe's directory"
    )
    task: Literal["arithmetic"] | None = Field(None, description="a built-in generated task instead of a file")
    split: Literal["train", "test"] = Field("train", description="which split of the built-in task, or of a saved DatasetDict")
    size: int = Field(1000, gt=0, description="number of examples generated for a built-in task")
    levels: list[int] = Field([1, 2, 3, 4], description="difficulty levels of the built-in task (distinct, from one family: 1-5 mixed +-*, 6-8 sums of 2-4 numbers in 1-30, 9-11 sums of 2, 3 and 5 numbers in 1-30)")
    verbose_fraction: float = Field(0.5, ge=0, le=1, description="share of solutions padded with restating and re-checking (built-in task)")
    worked_fraction: float = Field(0.5, ge=0, le=1, description="share of solutions showing place-value work (built-in task)")
    answer_only_fraction: float = Field(0.0, ge=0, le=1, description="share of solutions that state the boxed answer alone, without steps (built-in task)")
    seed: int = Field(0, ge=0, lt=2**63, description="seed of the built-in task generator")
    format: Literal["auto", "jsonl", "parquet", "verl", "gsm8k"] = Field("auto", description="file format")
    prompt_key: str | None = Field(None, description="column holding the prompt (default: the format's own)")
    answer_key: str | None = Field(None, description="column holding the gold answer, dotted for nested (default: the format's)")
    solution_key: str | None = Field(None, description="column holding a worked solution (SFT target)")
    id_key: str | None = Field(None, description="column holding a stable prompt id (default: file stem + row)")
    prompt_template: str = Field("{prompt}", description="str.format template over the row's columns")
    chat_template: bool = Field(False, description="render prompts with the tokenizer's chat template")
    system_prompt: str | None = Field(None, description="system message when chat_template is on")
    limit: int | None = Field(None, gt=0, description="use only the first N rows")

    @model_validator(mode="after")
    def _one_source(self) -> DatasetConfig:
        if (self.path is None) == (self.task is None):
            raise ValueError("give exactly one of 'path' (a file) or 'task' (a built-in task)")
        if self.system_prompt is not None and not self.chat_template:
            raise ValueError("system_prompt needs chat_template: true (it is only sent as a chat message)")
        if self.task == "arithmetic":
            from rlqa.tasks.arithmetic import LEVELS, family_levels

            if not self.levels or len(set(self.levels)) != len(self.levels) or not set(self.levels) <= set(LEVELS):
                raise ValueError(f"levels must be distinct values among {sorted(LEVELS)}, got {self.levels}")
            if not set(self.levels) <= set(family_levels(self.levels[0])):
                raise ValueError(f"levels must come from one family (1-5 mixed, 6-8 sums of small numbers, 9-11 sums of 2, 3 and 5 numbers), got {self.levels}")
        return self


class DataConfig(Section):
    train: DatasetConfig = Field(
        default_factory=lambda: DatasetConfig(task="arithmetic", split="train", size=2000),
        description="prompts for RL (and the SFT warm-up unless sft.data is set)",
    )
    test: DatasetConfig = Field(
        default_factory=lambda: DatasetConfig(task="arithmetic", split="test", size=200),
        description="held-out prompts for evaluation",
    )


class PythonToolConfig(Section):
    cpu_s: int = Field(5, ge=1, le=3600, description="CPU seconds one python-tool call may use (RLIMIT_CPU); its wall deadline is rollout.tool_deadline_s")
    memory_mb: int = Field(1024, ge=64, le=1024 * 1024, description="address space of each process of a python-tool call, MB (RLIMIT_AS)")
    max_output_bytes: int = Field(65536, ge=1, le=16 * 1024**2, description="stdout and stderr of a python-tool call together; more stops the program")


class RolloutConfig(Section):
    workers: int = Field(2, ge=1, le=MAX_PROCESSES, description="RolloutWorker actors")
    backend: Literal["hf", "vllm"] = Field("hf", description="generation backend: hf (CPU or GPU) or vllm (GPU, extra rlqa[vllm])")
    vllm_gpu_memory: float = Field(0.4, gt=0, le=1, description="share of its GPU a vLLM engine may take (weights + KV cache)")
    async_steps: int = Field(0, ge=0, le=1, description="1: generate step t+1 while step t trains (one step off-policy, importance-corrected)")
    weight_sync: Literal["shared_memory", "object_store", "broadcast", "ipc"] = Field(
        "shared_memory", description="how new weights reach the workers: a shared-memory file mapped by the workers on the driver's node (object store beyond it); object store; broadcast (NCCL on GPUs, gloo on CPU); CUDA IPC (colocated GPUs)"
    )
    prompts_per_step: int = Field(16, ge=1, description="prompts in each step's batch")
    rollouts_per_prompt: int = Field(8, ge=1, le=MAX_ROLLOUTS_PER_PROMPT, description="nominal rollouts per prompt (budget = prompts x this)")
    max_new_tokens: int = Field(64, ge=1, description="generation limit per completion")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling; the log-probs recorded and recomputed are those of the filtered distribution, renormalised (vLLM's processed_logprobs)")
    top_k: int = Field(0, ge=0, description="top-k sampling, 0 = off; log-probs as for top_p")
    micro_batch_size: int = Field(64, ge=1, description="sequences generated together in one worker")
    cpus_per_worker: float = Field(1.0, ge=0, description="CPUs Ray reserves for each worker")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs Ray reserves for each worker")
    torch_threads: int = Field(1, ge=1, description="intra-op threads per worker on CPU")
    deadline_s: float = Field(600.0, gt=0, le=MAX_DEADLINE_S, description="a worker's share of a step taking longer counts as hung: the worker is replaced and the share redone")
    max_retries: int = Field(2, ge=0, description="replacements of one worker within a step before the run stops")
    tools: list[str] = Field(
        [], description="functions the model may call between turns (hf backend): python (the sandboxed built-in), 'package.module:function' or 'path/to/file.py:function', each typed and with a docstring; needs max_turns >= 2 and chat_template on the datasets"
    )
    environment: str | None = Field(
        None, description="a stateful environment, TRL's environment_factory convention (hf backend): 'path/to/file.py:ClassName' or 'package.module:ClassName'; one instance per rollout, reset(**row) from its dataset row, its public methods the model's tools, optional get_reward() (the reward term 'environment') and done; needs max_turns >= 2 and chat_template on the datasets"
    )
    max_turns: int = Field(1, ge=1, le=1000, description="model turns of a rollout: a turn ending in tool calls is followed by their results and the next turn; 1: single-turn generation")
    max_total_tokens: int | None = Field(None, ge=1, description="completion tokens of a multi-turn rollout, the model's and the tools' together (null: max_new_tokens x max_turns); max_new_tokens bounds each turn")
    tool_deadline_s: float = Field(10.0, gt=0, le=MAX_DEADLINE_S, description="wall deadline of one tool call (the python tool's included) and of an environment's reset and get_reward; past it the model reads an error")
    python: PythonToolConfig = Field(default_factory=PythonToolConfig, description="limits of the built-in python tool")

    def total_token_limit(self) -> int:
        """What `max_total_tokens` means: its value, or max_new_tokens x max_turns."""
        return self.max_total_tokens if self.max_total_tokens is not None else self.max_new_tokens * self.max_turns


class LearnerConfig(Section):
    workers: int = Field(1, ge=1, le=MAX_PROCESSES, description="Learner actors (more than one: DeepSpeed data parallel)")
    zero_stage: int = Field(0, ge=0, le=3, description="DeepSpeed ZeRO stage for learner.workers > 1")
    lr: float = Field(1e-5, gt=0, description="peak learning rate of AdamW")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    warmup_steps: int = Field(0, ge=0, description="linear LR warm-up, in optimizer steps")
    schedule: Literal["constant", "cosine", "linear"] = Field("constant", description="LR after warm-up")
    grad_clip: float = Field(1.0, gt=0, description="max global gradient norm")
    micro_batch_size: int = Field(64, ge=1, description="sequences per forward/backward (gradient accumulation)")
    micro_batch_tokens: int | None = Field(None, ge=1, description="token budget of a micro-batch (sequences x padded length); null: micro_batch_size alone")
    micro_batch_pad_frac: float = Field(
        0.15, ge=0, le=1, description="most padding a micro-batch may hold, as a share of its padded size (sequences are bucketed by length); 1: no limit"
    )
    epochs: int = Field(1, ge=1, description="passes over each rollout batch")
    mini_batches: int = Field(1, ge=1, description="optimizer steps per pass over a rollout batch")
    cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves for each learner")
    gpus: float = Field(0.0, ge=0, description="GPUs Ray reserves for each learner")
    torch_threads: int = Field(2, ge=1, description="intra-op threads of the learner on CPU")


class CriticConfig(Section):
    kind: Literal["head", "separate"] = Field("head", description="value head on the policy's backbone, or a separate model")
    path: str | None = Field(None, min_length=1, description="separate critic: local HF model directory (default: a copy of the policy when RL starts)")
    lr: float = Field(1e-5, gt=0, description="learning rate of the value head (and of the separate critic's backbone)")
    vf_coef: float = Field(0.5, gt=0, description="weight of the value loss (ReFT: 5)")
    value_clip: float | None = Field(0.2, gt=0, description="clip new values to old ± this in the value loss (null: no clipping)")


class AlgorithmConfig(Section):
    name: Literal["grpo", "ppo"] = Field("grpo", description="grpo: outcome advantages, no critic; ppo: a learned critic and GAE")
    advantage: Literal["grpo", "dr_grpo", "rloo", "reinforce_pp", "gae"] = Field(
        "grpo", description="advantage estimator (gae: PPO only, computed by the learner from the critic)"
    )
    policy_loss: Literal["clip", "gspo", "cispo"] = Field(
        "clip", description="clip: PPO/GRPO clipped token ratio; gspo: clipped sequence ratio (GSPO; with seq-mean-token-mean as in the paper); cispo: clipped, detached IS weight on REINFORCE (CISPO)"
    )
    clip_low: float = Field(0.2, ge=0, description="ratio clip below 1 (clip, gspo)")
    clip_high: float = Field(0.2, ge=0, description="ratio clip above 1 (clip, gspo; DAPO clip-higher: 0.28)")
    dual_clip: float | None = Field(None, gt=1, description="dual-clip constant c for negative advantages (clip, gspo)")
    cispo_max_ratio: float = Field(5.0, gt=0, description="cispo: upper bound of the importance weight (TRL's epsilon_high for cispo; ScaleRL: 5)")
    loss_aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = Field(
        "token-mean", description="how per-token losses are averaged"
    )
    kl_coef: float = Field(0.0, ge=0, description="beta of the KL-to-reference loss term (0: no reference)")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k3", description="per-token KL estimator")
    entropy_coef: float = Field(0.0, ge=0, description="entropy bonus in the loss (entropy is measured anyway)")
    kl_ratio_weighted: bool = Field(False, description="weigh the KL loss term per token by pi/pi_old (DeepSeek-V3.2's unbiased KL; TRL's default)")
    kl_in_reward: bool = Field(False, description="PPO: subtract kl_coef x KL per token from the reward instead of adding it to the loss")
    kl_target: float | None = Field(None, gt=0, description="adapt kl_coef so the mean per-token KL approaches this (null: fixed)")
    kl_horizon: int = Field(10000, ge=1, description="responses over which the adaptive kl_coef may change by 20%")
    gamma: float = Field(1.0, ge=0, le=1, description="GAE discount")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    whiten_advantages: bool = Field(True, description="GAE: whiten the advantages over the batch's response tokens")
    old_logprobs: Literal["sampling", "recompute"] = Field(
        "sampling", description="pi_old for the ratio: the rollout workers' log-probs, or a learner forward pass before the update"
    )
    tis_cap: float | None = Field(
        None, ge=1, description="truncated importance sampling for the engine/learner mismatch: the ratio is against the learner's own pi_old and each token's policy loss is weighed by min(pi_old_learner/pi_sampler, this), as verl and TRL do (null: off)"
    )
    critic: CriticConfig | None = Field(None, description="the learned value function (required by ppo)")

    @model_validator(mode="after")
    def _consistent(self) -> AlgorithmConfig:
        if (self.name == "ppo") != (self.advantage == "gae"):
            raise ValueError("name 'ppo' goes with advantage 'gae' (a critic), and 'gae' only with name 'ppo'")
        if (self.name == "ppo") != (self.critic is not None):
            raise ValueError("a critic section is required by name 'ppo' and used by nothing else")
        if self.kl_in_reward and self.name != "ppo":
            raise ValueError("kl_in_reward is PPO's token-level reward; with outcome advantages use kl_coef as a loss term")
        if (self.kl_in_reward or self.kl_target is not None) and self.kl_coef == 0:
            raise ValueError("kl_in_reward and kl_target need kl_coef > 0 (the initial coefficient)")
        if self.dual_clip is not None and self.policy_loss == "cispo":
            raise ValueError("dual_clip belongs to the clipped surrogate (policy_loss clip or gspo), not to cispo")
        return self


class RewardTermConfig(Section):
    fn: str = Field(description="built-in name, package.module:function or path/to/file.py:function")
    name: str | None = Field(None, description="metric name (default: the function's name)")
    weight: float = Field(1.0, description="weight in the total reward (hapo_length: in [0, 1], so every correct answer beats every wrong one)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments")
    deadline_s: float = Field(30.0, gt=0, le=MAX_DEADLINE_S, description="per-call deadline; past it the samples count as timeouts")

    @field_validator("kwargs", mode="after")
    @classmethod
    def _finite_kwargs(cls, value: dict) -> dict:
        for key, item in value.items():  # a per-sample deadline (verify_deadline_s: .inf) would overflow at the first call
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"{key}: {item} is not a finite number")
        return value

    @model_validator(mode="after")
    def _hapo_weight(self) -> RewardTermConfig:
        # HAPO's length reward is ≥ -0.7 for a correct answer and ≤ 0 for a wrong one, so with a 0/1 accuracy term
        # every correct answer (≥ 1 - 0.7 w) beats every wrong one (≤ 0) only for w in [0, 1] (ALGORITHMS.md §5)
        if self.fn.strip() in ("hapo_length", "rewards.length:hapo_length") and not 0 <= self.weight <= 1:
            raise ValueError(
                f"weight: hapo_length's weight must be in [0, 1], so that every correct answer beats every wrong one; got {self.weight:g}"
            )
        return self


class RewardsConfig(Section):
    terms: list[RewardTermConfig] = Field(
        default_factory=lambda: [RewardTermConfig(fn="accuracy")], description="terms of the total reward"
    )
    correctness: str | None = Field("accuracy", description="function whose 1/0 gives `correct`")
    strict: bool = Field(False, description="stop the run on any reward failure")
    failure_value: Literal["zero", "drop"] = Field("zero", description="what a failed sample gets")
    workers: int = Field(1, ge=1, le=MAX_PROCESSES, description="reward worker processes")

    def term_names(self) -> list[str]:
        """Each term's metric name: its `name`, else its function's own name."""
        from rewards.registry import function_name

        return [t.name or function_name(t.fn) for t in self.terms]

    @model_validator(mode="after")
    def _distinct_names(self) -> RewardsConfig:
        names = self.term_names()
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"terms: more than one term is named {duplicates[0]!r}; give each a distinct name")
        return self


class RolloutBounds(NamedTuple):
    n_min: int  # fewest rollouts per prompt now
    n_max: int  # most rollouts per prompt now
    n_low: int  # floor of the n_min schedule
    n_high: int  # ceiling of the n_max schedule


class BoundsPhase(Section):
    from_fraction: float = Field(ge=0, lt=1, description="share of trainer.steps done when the phase begins (the first phase: 0)")
    n_min: int = Field(ge=1, le=MAX_ROLLOUTS_PER_PROMPT, description="fewest rollouts per prompt in the phase")
    n_max: int = Field(ge=1, le=MAX_ROLLOUTS_PER_PROMPT, description="most rollouts per prompt in the phase")


class HintsConfig(Section):
    """QuestA's hints: a prompt the policy (nearly) never solves is shown with the first lines of its reference
    solution, a share that fades per prompt as it starts being solved and over the run (rlqa/hints.py)."""

    column: str = Field("solution", description="where the reference solution is: 'solution' (the example's SFT solution) or a dataset column")
    below: float = Field(0.1, gt=0, le=1, description="hint prompts whose estimated pass rate is below this (once the sampler has an estimate)")
    fraction: float = Field(0.5, gt=0, lt=1, description="share of the solution's lines before its last (the answer) shown at first")
    solved_at: float = Field(0.5, gt=0, le=1, description="a hinted group whose pass rate reaches this fades its prompt's hint")
    fade: float = Field(0.5, ge=0, lt=1, description="each such group multiplies its prompt's hint share by this")
    until: float = Field(0.8, gt=0, le=1, description="share of trainer.steps by which every hint has faded to nothing (linearly)")


# E3's three epochs at (n_min, n_max) = (8, 8), (6, 10), (4, 12) (ALGORITHMS.md §4), as thirds of the run
E3_BOUNDS = (
    BoundsPhase(from_fraction=0.0, n_min=8, n_max=8),
    BoundsPhase(from_fraction=1 / 3, n_min=6, n_max=10),
    BoundsPhase(from_fraction=2 / 3, n_min=4, n_max=12),
)


class SamplerConfig(Section):
    allocation: Literal["uniform", "difficulty"] = Field("difficulty", description="how a step's rollouts are spread")
    n_min: int | None = Field(None, ge=1, le=MAX_ROLLOUTS_PER_PROMPT, description="fewest rollouts per prompt (default: rollout.rollouts_per_prompt)")
    n_max: int | None = Field(None, ge=1, le=MAX_ROLLOUTS_PER_PROMPT, description="most rollouts per prompt (default: rollout.rollouts_per_prompt)")
    schedule_delta: int = Field(0, ge=0, description="after each epoch n_min -= delta and n_max += delta (E3: 2)")
    n_low: int | None = Field(None, ge=1, le=MAX_ROLLOUTS_PER_PROMPT, description="floor of the n_min schedule (E3: 4)")
    n_high: int | None = Field(None, ge=1, le=MAX_ROLLOUTS_PER_PROMPT, description="ceiling of the n_max schedule (E3: 12)")
    decay: float = Field(0.9, gt=0, le=1, description="forgetting factor of each prompt's pass-rate estimate")
    prior_strength: float = Field(2.0, gt=0, description="pseudo-counts of the prior from the offline rank")
    estimator: Literal["beta", "rank"] = Field("beta", description="difficulty estimate: online Beta posterior, or E3's rank by cumulative accuracy (refreshed each epoch)")
    rank_column: str | None = Field("rank", description="dataset column with an offline difficulty in [0, 1)")
    skip_mastered: float | None = Field(None, gt=0, lt=1, description="skip prompts whose pass rate is above this")
    revisit_prob: float = Field(0.1, ge=0, le=1, description="chance a mastered prompt is visited anyway")
    bounds_schedule: list[BoundsPhase] | Literal["e3"] | None = Field(
        None, description="n_min/n_max by share of trainer.steps instead of by epoch (replaces n_min, n_max and the epoch schedule); e3: (8, 8), (6, 10), (4, 12) over thirds of the run"
    )
    dynamic_sampling: bool = Field(False, description="DAPO: leave groups without signal (sampler.dynamic_sampling_signal) out of the update; generate more prompts until rollout.prompts_per_step groups have signal")
    dynamic_sampling_signal: Literal["accuracy", "reward"] = Field(
        "accuracy", description="what must vary within a group for dynamic sampling to keep it: accuracy (the rewards.correctness verdicts; DAPO: all right or all wrong is filtered, whatever a length penalty adds) or reward (the total reward)"
    )
    max_extra_rounds: int = Field(3, ge=0, description="cap on dynamic sampling's extra rounds of generation per step")
    curriculum: Literal["none", "signal"] = Field(
        "none", description="signal: draw each step's prompts with probability in proportion to their expected learning signal 1 - p^n - (1-p)^n (p: estimated pass rate, n: rollouts_per_prompt) instead of in epochs"
    )
    hints: HintsConfig | None = Field(None, description="QuestA hints for prompts the policy cannot solve (held-out evaluation never sees them)")
    curriculum_floor: float = Field(0.05, gt=0, le=1, description="curriculum signal: no prompt's weight falls below this, so mastered and hopeless prompts come back rarely, not never")

    def phases(self) -> tuple[BoundsPhase, ...]:
        """The bounds schedule by share of the run, `e3` spelled out; empty without one."""
        if self.bounds_schedule == "e3":
            return E3_BOUNDS
        return tuple(self.bounds_schedule or ())

    def bounds(self, rollouts_per_prompt: int) -> RolloutBounds:
        """The n_min/n_max bounds with their defaults filled in (no spread, no schedule); a ValueError when they do
        not fit 1 <= n_low <= n_min <= rollouts_per_prompt <= n_max <= n_high. With a bounds schedule: its first
        phase, every phase checked against rollouts_per_prompt."""
        n = rollouts_per_prompt
        if self.allocation == "uniform" and (
            self.n_min not in (None, n) or self.n_max not in (None, n) or self.schedule_delta or self.bounds_schedule
        ):
            raise ValueError(
                "allocation 'uniform' gives every prompt rollouts_per_prompt: n_min, n_max, schedule_delta and "
                "bounds_schedule belong to allocation 'difficulty'"
            )
        if self.bounds_schedule is not None:
            return self._first_phase(n)
        n_min = n if self.n_min is None else self.n_min
        n_max = n if self.n_max is None else self.n_max
        bounds = RolloutBounds(n_min, n_max, n_min if self.n_low is None else self.n_low, n_max if self.n_high is None else self.n_high)
        if not 1 <= bounds.n_low <= n_min <= n <= n_max <= bounds.n_high:
            raise ValueError(
                "need 1 <= n_low <= n_min <= rollouts_per_prompt <= n_max <= n_high, got "
                f"{bounds.n_low}, {n_min}, {n}, {n_max}, {bounds.n_high}"
            )
        return bounds

    def _first_phase(self, n: int) -> RolloutBounds:
        phases = self.phases()
        for k, phase in enumerate(phases):
            if not phase.n_min <= n <= phase.n_max:
                raise ValueError(
                    f"bounds_schedule phase {k + 1}: need n_min <= rollouts_per_prompt <= n_max, got {phase.n_min}, {n}, "
                    f"{phase.n_max}"
                )
        return RolloutBounds(phases[0].n_min, phases[0].n_max, phases[0].n_min, phases[0].n_max)

    @field_validator("bounds_schedule", mode="before")
    @classmethod
    def _known_preset(cls, value):
        if isinstance(value, str) and value != "e3":
            raise ValueError(f"a list of phases, or the named schedule 'e3'; got {value!r}")
        return value

    @model_validator(mode="after")
    def _curriculum_without_epochs(self) -> SamplerConfig:
        if self.curriculum == "signal":
            if self.estimator != "beta":
                raise ValueError("curriculum 'signal' needs the online estimator (estimator: beta); the rank estimator moves only at epochs")
            if self.schedule_delta or self.skip_mastered is not None:
                raise ValueError("curriculum 'signal' has no epochs and weighs mastered prompts itself: leave out schedule_delta and skip_mastered")
        return self

    @model_validator(mode="after")
    def _schedule_alone(self) -> SamplerConfig:
        if self.bounds_schedule is None:
            return self
        if self.n_min is not None or self.n_max is not None or self.schedule_delta or self.n_low is not None or self.n_high is not None:
            raise ValueError("bounds_schedule sets the bounds: leave out n_min, n_max, schedule_delta, n_low and n_high")
        starts = [phase.from_fraction for phase in self.phases()]
        if not starts or starts[0] != 0 or any(a >= b for a, b in zip(starts, starts[1:])):
            raise ValueError(f"bounds_schedule: the phases' from_fraction must start at 0 and increase, got {starts}")
        return self


class TemperatureConfig(Section):
    mode: Literal["fixed", "entropy"] = Field("entropy", description="fixed, or E3's entropy-holding controller")
    initial: float = Field(1.0, gt=0, description="sampling temperature at the start")
    target: float | None = Field(None, gt=0, description="target entropy (default: measured over the warm-up updates)")
    warmup_updates: int = Field(1, ge=1, description="updates whose mean entropy becomes the target")
    t_min: float = Field(0.5, gt=0, description="lowest temperature")
    t_max: float = Field(2.0, gt=0, description="highest temperature")
    anneal_fraction: float = Field(0.4, ge=0, le=1, description="cosine-anneal the target to 0.9x over this last part")

    @model_validator(mode="after")
    def _initial_within_bounds(self) -> TemperatureConfig:
        if self.mode == "entropy" and not self.t_min <= self.initial <= self.t_max:
            raise ValueError("need t_min <= initial <= t_max")
        return self


class SFTConfig(Section):
    data: DatasetConfig | None = Field(None, description="SFT examples with solutions (default: data.train)")
    epochs: float = Field(2.0, gt=0, description="passes over the SFT data")
    max_steps: int = Field(-1, description="stop after this many optimizer steps (-1: epochs decide)")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    batch_size: int = Field(32, ge=1, description="examples per optimizer step")
    warmup_ratio: float = Field(0.05, ge=0, le=1, description="share of steps with linear LR warm-up")
    schedule: Literal["constant", "cosine", "linear"] = Field("cosine", description="LR schedule")


class TrainerConfig(Section):
    steps: int = Field(50, ge=0, le=10**7, description="RL steps")
    rollout_budget: int | None = Field(None, ge=1, le=10**12, description="also stop after the step that brings the rollouts generated (yield/total_rollouts) to this many: arms that generate extra rounds then compare at equal compute")
    seed: int = Field(0, ge=0, lt=2**63, description="run seed: every random choice derives from it")
    output_dir: str = Field("runs", min_length=1, description="parent of run directories when --run-dir is not given")
    eval_before: bool = Field(True, description="evaluate on data.test before RL")
    eval_after: bool = Field(True, description="evaluate on data.test after RL")
    eval_every: int = Field(0, ge=0, description="also evaluate every N steps (0: never)")
    eval_k: int = Field(4, ge=1, description="samples per prompt for pass@k")
    eval_temperature: float = Field(1.0, gt=0, description="temperature of the pass@k samples")
    eval_by: str | None = Field(None, description="also report held-out accuracy and pass@k per value of this dataset column (e.g. level): <column>=<value>/accuracy, ...")


class CheckpointConfig(Section):
    every: int = Field(0, ge=0, description="save every N steps (0: only at the end)")
    keep_last: int = Field(2, ge=1, description="newest checkpoints kept")
    best_metric: str | None = Field(None, description="also keep the checkpoint whose step scored best on this metric (e.g. eval/accuracy)")
    best_mode: Literal["max", "min"] = Field("max", description="whether a higher or a lower best_metric is better")


class LoggingConfig(Section):
    progress: bool = Field(True, description="live progress bar on the terminal")
    samples_per_step: int = Field(4, ge=0, description="completions written to samples.jsonl each step")
    tensorboard: bool = Field(False, description="also write TensorBoard scalars to RUN_DIR/tensorboard (pip install 'rlqa[tensorboard]')")
    wandb: bool = Field(False, description="also log to Weights & Biases offline, under RUN_DIR/wandb; `wandb sync` uploads later (pip install 'rlqa[wandb]')")
    wandb_project: str = Field("rlqa", description="W&B project of the offline run")


class RayConfig(Section):
    address: str | None = Field(None, min_length=1, description="cluster to join (default: start an embedded local Ray)")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded Ray (default: what actors need)")
    num_gpus: int | None = Field(None, ge=0, description="GPUs of the embedded Ray (default: those Ray detects)")
    placement: Literal["none", "separate", "colocate"] = Field(
        "none", description="none: plain actor requests; separate: one placement group, own bundles for learners and rollout workers; colocate: each bundle shared by a learner and a rollout worker (engines sleep during training)"
    )
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field("PACK", description="placement group strategy across nodes")
    wait_for_resources_s: float = Field(0.0, ge=0, le=MAX_DEADLINE_S, description="how long to wait for a cluster too small for the recipe to grow (an autoscaler adding nodes) before exit 2; 0: exit 2 at once")


class Recipe(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    rewards: RewardsConfig = Field(default_factory=RewardsConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    temperature: TemperatureConfig = Field(default_factory=TemperatureConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    sft: SFTConfig | None = Field(None, description="SFT warm-up before RL (absent: RL starts from model.path)")
    base_dir: str = Field(".", description="directory relative paths resolve against (set to the recipe's)")

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        try:
            self.sampler.bounds(self.rollout.rollouts_per_prompt)
        except ValueError as err:
            raise ValueError(f"sampler: {err}") from None
        if self.learner.workers > 1 and self.algorithm.critic is not None:
            raise ValueError("learner.workers: the PPO critic trains on one learner; set learner.workers: 1")
        if self.model.lora is not None:
            if self.learner.workers > 1:
                raise ValueError("learner.workers: model.lora trains on one learner; set learner.workers: 1")
            if self.algorithm.critic is not None:
                raise ValueError("model.lora: PPO's critic does not train with LoRA; use a GRPO-family algorithm or full fine-tuning")
            if self.sft is not None:
                raise ValueError("model.lora: the SFT warm-up does not run with LoRA; drop the sft section or model.lora")
        if self.rollout.backend == "vllm" and self.rollout.gpus_per_worker <= 0:
            raise ValueError("rollout.gpus_per_worker: the vllm backend needs a GPU per worker (e.g. 1, or 0.5 to share)")
        if self.rollout.weight_sync not in ("shared_memory", "object_store"):
            if self.rollout.max_retries != 0:
                raise ValueError("rollout.max_retries: direct weight sync cannot re-admit a replaced worker mid-step; set 0")
            if self.learner.workers > 1 and self.learner.zero_stage == 3:
                raise ValueError("rollout.weight_sync: ZeRO-3 partitions the weights over the learners; use object_store")
        if self.sampler.dynamic_sampling and self.sampler.dynamic_sampling_signal == "accuracy" and self.rewards.correctness is None:
            raise ValueError("sampler.dynamic_sampling_signal: accuracy reads the rewards.correctness verdicts, which is null; name a correctness function or use reward")
        if self.rollout.async_steps and self.algorithm.old_logprobs != "sampling":
            raise ValueError("rollout.async_steps: the off-policy correction needs algorithm.old_logprobs: sampling")
        if self.rollout.weight_sync == "ipc" and self.ray.placement != "colocate":
            raise ValueError("rollout.weight_sync: ipc needs learners and workers on the same GPUs (ray.placement: colocate)")
        self._check_tools()
        return self

    def _check_tools(self) -> None:
        """Tools (or an environment) and turns make sense only together, on the hf backend, with chat-rendered
        prompts (a tool's result is a chat message); the `environment` reward term needs an environment."""
        rollout = self.rollout
        environment_terms = [t.fn for t in self.rewards.terms if t.fn.strip() in ENVIRONMENT_REWARD] + (
            [self.rewards.correctness] if (self.rewards.correctness or "").strip() in ENVIRONMENT_REWARD else []
        )
        if environment_terms and not rollout.environment:
            raise ValueError("rewards: the environment term reads the reward of rollout.environment, which is not set")
        if rollout.environment is not None and not rollout.environment.strip():
            raise ValueError("rollout.environment: empty; name a class ('path/to/file.py:ClassName') or leave it out")
        key = "rollout.environment" if rollout.environment and not rollout.tools else "rollout.tools"
        if not rollout.tools and not rollout.environment:
            if rollout.max_turns > 1:
                raise ValueError("rollout.max_turns: a turn ends at a tool call, so more than one needs rollout.tools or rollout.environment")
            if rollout.max_total_tokens is not None:
                raise ValueError("rollout.max_total_tokens: bounds a multi-turn rollout, which needs rollout.tools or rollout.environment")
            return
        if len(set(rollout.tools)) != len(rollout.tools):
            raise ValueError("rollout.tools: a tool is listed twice")
        if rollout.backend == "vllm":
            raise ValueError(f"{key}: the vllm backend does not run tools; use backend: hf")
        if rollout.max_turns < 2:
            raise ValueError(f"rollout.max_turns: a tool's result is read in the next turn; set max_turns >= 2 with {key}")
        for name in ("train", "test"):
            if not getattr(self.data, name).chat_template:
                raise ValueError(f"data.{name}.chat_template: {key} needs chat-rendered prompts (a tool's result is a chat message); set true")
        if rollout.environment and self.sampler.hints is not None:
            raise ValueError("sampler.hints: a hint continues the prompt's text, which an environment's reset may rewrite; leave hints out with rollout.environment")


ENVIRONMENT_REWARD = ("environment", "rewards.environment:environment")  # the reward term of rollout.environment
