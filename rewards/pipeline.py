"""The reward pipeline: run the recipe's reward terms on a batch, safely, and sum them.

    total_i = Σ_t weight_t · r_t,i          (a term's None, "no opinion", adds 0)
    correct_i = correctness_fn_i >= 0.5     (kept apart from the total; None when unknown)

User reward code may raise, hang, return garbage or kill its interpreter. So terms run in worker processes
(`rewards.workers`: one level of them, whose deaths take nothing else down and who die with the run), one call per
term on the whole batch under the term's deadline. The built-in correctness reward (`registry.PER_SAMPLE`) is
instead one task per completion, each under its own deadline (`verify_deadline_s`, default 5 s) and all under the
term's deadline as the batch's: a hung answer costs its own sample, never the batch.

A total that is not finite though its terms are (1e308 x 10) is zeroed, or dropped under failure_value="drop", and
counted in `reward/nonfinite_total`.

A failed sample (error, timeout, NaN/inf, wrong-length return) scores 0 (failure_value="zero") or is dropped
(failure_value="drop": its total is NaN and the caller removes it from its group); failures are counted in metrics,
the first of each kind per term is logged, and strict=True turns any failure into a `RewardError`.

Functions are called as TRL's GRPOTrainer calls them, by keyword:
`fn(prompts=..., completions=..., completion_ids=..., **columns, **term_kwargs)`, so TRL's documented
`def f(completions, **kwargs)` works unchanged. Correctness runs first and its result reaches the other terms as the
`correct` column (length rewards use it).
"""

import asyncio
import inspect
import logging
import math
import numbers
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rewards.registry import PER_SAMPLE, check_call, load_reward_fn, resolve_spec
from rewards.verify import prepare_verifier
from rewards.workers import Outcome, WorkerPool

logger = logging.getLogger("rlqa.rewards")

FAILURE_KINDS = ("errors", "timeouts", "nonfinite", "wrong_length")
CORRECTNESS_DEADLINE_S = 30.0
SAMPLE_DEADLINE_S = 5.0  # a per-sample term's own deadline per completion, unless its kwargs set one
# A per-sample task still running after this long goes behind every other task before it gets its whole deadline:
# right answers verify in milliseconds, and must not wait behind hung ones.
SAMPLE_FIRST_TRY_S = 1.0
# The unparsed-answer warning: more than this share of completions with no answer, on each of the first steps.
UNPARSED_WARN_FRAC = 0.9
UNPARSED_WARN_STEPS = 5


class RewardError(Exception):
    """A reward term failed while the pipeline runs with strict=True."""


@dataclass(frozen=True)
class RewardTermSpec:
    name: str
    fn: str  # a built-in name, "package.module:function" or "path/to/file.py:function"
    weight: float = 1.0
    kwargs: dict = field(default_factory=dict)
    deadline_s: float = 30.0


@dataclass
class RewardOutput:
    total: list[float]  # Σ weight · value per sample; NaN where dropped
    terms: dict[str, list[float]]  # per term after failure handling; NaN where dropped or the term had no opinion
    correct: list[bool | None]  # from the correctness function, kept apart from the total
    dropped: list[bool]  # a failing term dropped the sample (failure_value="drop")
    # "reward/<term>" (mean over values), "reward/<term>/<failure kind>" (counts), "reward/<term>/timeout_frac",
    # "reward/<term>/unparsed_frac" (per-sample terms: completions with no extractable answer)
    metrics: dict[str, float]


@dataclass
class _Judged:
    """One term's values on a batch: None where it gave no value (no opinion or failed); the failure kind per sample;
    the first failure's description."""

    values: list[float | None]
    failures: list[str | None]
    message: str = ""
    parsed: list[bool | None] | None = None  # per-sample terms: whether an answer could be extracted
    answers: list[str | None] | None = None  # per-sample terms: the answer as written


@dataclass(frozen=True, eq=False)  # hashed by identity: each call is one dict key
class _Call:
    """One function call on the batch: `name` labels its metrics and logs, `fn_index` picks the loaded function."""

    name: str
    spec: str
    fn_index: int  # what a batch call runs; a per-sample call runs the function at `detail_index` on each sample
    kwargs: dict
    deadline_s: float
    detail_index: int | None = None

    @property
    def per_sample(self) -> bool:
        return self.detail_index is not None

    @property
    def sample_deadline_s(self) -> float:
        return float(self.kwargs.get(PER_SAMPLE[self.spec][1], SAMPLE_DEADLINE_S))


class RewardPipeline:
    """Reward terms run in `workers` processes, started here, which import every function once. Term names are
    distinct (the recipe schema checks it; `from_config` builds a pipeline from that validated section).

    correctness: spec of the function whose value >= 0.5 makes a sample correct (None: `correct` stays None).
    strict: raise `RewardError` on any failure instead of counting it.
    failure_value: what a failed sample gets, "zero" (0 for that term) or "drop" (NaN total, `dropped` True).
    base_dir: where relative "path/to/file.py:function" specs are found (the recipe's directory).
    """

    def __init__(
        self,
        terms: list[RewardTermSpec],
        *,
        correctness: str | None = "accuracy",
        strict: bool = False,
        failure_value: Literal["zero", "drop"] = "zero",
        workers: int = 1,
        base_dir: Path | None = None,
    ):
        self.terms = list(terms)
        self.strict = strict
        self.failure_value = failure_value
        self._logged: set[tuple[str, str]] = set()
        # Workers load each distinct function once; a call names its function by index into this list.
        specs = [resolve_spec(term.fn, base_dir=base_dir) for term in terms]
        correctness_spec = None if correctness is None else resolve_spec(correctness, base_dir=base_dir)
        used = specs + ([correctness_spec] if correctness_spec else [])
        loaded = list(dict.fromkeys(used + [PER_SAMPLE[spec][0] for spec in used if spec in PER_SAMPLE]))

        def call(name: str, spec: str, kwargs: dict, deadline_s: float) -> _Call:
            detail = loaded.index(PER_SAMPLE[spec][0]) if spec in PER_SAMPLE else None
            return _Call(name, spec, loaded.index(spec), dict(kwargs), deadline_s, detail)

        self._calls = [call(term.name, spec, term.kwargs, term.deadline_s) for term, spec in zip(terms, specs)]
        # `correct` comes from a term running the correctness function (one without kwargs first; else the first,
        # so `answer_format: any` on the accuracy term applies to correctness too), else from its own call.
        self._correctness: _Call | None = None
        if correctness_spec is not None:
            same = [c for c in self._calls if c.spec == correctness_spec]
            self._correctness = next(
                (c for c in same if not c.kwargs), same[0] if same else call("correctness", correctness_spec, {}, CORRECTNESS_DEADLINE_S)
            )
        self._unparsed_steps = 0  # leading calls in which most completions had no answer (then the warning)
        checks = [(c.spec, c.kwargs) for c in self._calls]
        self._pool = WorkerPool(
            _call_reward, initializer=_load_functions, initargs=(loaded, checks), processes=workers, name="rlqa-reward"
        )
        self._pool.start()

    @classmethod
    def from_config(cls, config, base_dir: Path) -> "RewardPipeline":
        """The pipeline of a recipe's validated `rewards` section (`rlqa.config.RewardsConfig`)."""
        terms = [
            RewardTermSpec(name=name, fn=t.fn, weight=t.weight, kwargs=t.kwargs, deadline_s=t.deadline_s)
            for name, t in zip(config.term_names(), config.terms)
        ]
        return cls(
            terms, correctness=config.correctness, strict=config.strict, failure_value=config.failure_value,
            workers=config.workers, base_dir=base_dir,
        )

    def __call__(
        self, completions: list, prompts: list, columns: dict[str, list], completion_ids: list | None = None
    ) -> RewardOutput:
        """Score one step's batch. `columns` are aligned with the completions; `completion_ids` (token ids) reach
        the functions as TRL passes them (None per sample when not given)."""
        batch = len(completions)
        columns = {"completion_ids": completion_ids or [None] * batch, **columns}
        for key, values in {"prompts": prompts, **columns}.items():
            if len(values) != batch:
                raise ValueError(f"{key} has {len(values)} entries for {batch} completions")
        judged: dict[_Call, _Judged] = {}
        correct: list[bool | None] = [None] * batch
        if self._correctness is not None:
            if "correct" in columns:
                raise ValueError("columns hold 'correct', which the pipeline computes from the correctness function")
            judged[self._correctness] = self._run([self._correctness], completions, prompts, columns)[0]
            correct = _as_correct(judged[self._correctness])
            columns = {**columns, "correct": correct}
        rest = [call for call in self._calls if call not in judged]
        judged |= dict(zip(rest, self._run(rest, completions, prompts, columns)))
        out = self._combine([judged[call] for call in self._calls], correct, batch)
        self._warn_if_unparsed(out.metrics)
        return out

    def correctness(
        self, completions: list, prompts: list, columns: dict[str, list]
    ) -> tuple[list[bool | None], list[str | None]]:
        """Only the correctness function (held-out evaluation needs no shaped terms): whether each completion is
        correct (None where unknown), and the answer it gives (None where the function does not say, as a custom
        one does not)."""
        if self._correctness is None:
            return [None] * len(completions), [None] * len(completions)
        columns = {"completion_ids": [None] * len(completions), **columns}
        judged = self._run([self._correctness], completions, prompts, columns)[0]
        return _as_correct(judged), judged.answers or [None] * len(completions)

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> "RewardPipeline":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _run(self, calls: list[_Call], completions, prompts, columns) -> list[_Judged]:
        """Batch calls side by side, one task each; then each per-sample call, one task per completion."""
        batch = len(completions)
        judged: dict[_Call, _Judged] = {}
        whole = [call for call in calls if not call.per_sample]
        tasks = [(call.fn_index, _arguments(completions, prompts, columns, call.kwargs), False) for call in whole]
        for call, outcome in zip(whole, self._pool.run(tasks, [call.deadline_s for call in whole])):
            judged[call] = judge(outcome, batch, call.spec, call.deadline_s)
        for call in (call for call in calls if call.per_sample):
            tasks = [
                (call.detail_index, _arguments([completions[i]], [prompts[i]], _row(columns, i), call.kwargs), True)
                for i in range(batch)
            ]
            outcomes = self._pool.run(
                tasks,
                call.sample_deadline_s,
                first_try_s=min(SAMPLE_FIRST_TRY_S, call.sample_deadline_s),
                batch_deadline_s=call.deadline_s,
            )
            judged[call] = judge_samples(outcomes, call.spec, call.sample_deadline_s, call.deadline_s)
        for call in calls:
            self._report(call, judged[call])
        return [judged[call] for call in calls]

    def _warn_if_unparsed(self, metrics: dict[str, float]) -> None:
        """One warning when most completions have had no extractable answer on each of the first steps."""
        if self._unparsed_steps < 0 or self._correctness is None:
            return
        unparsed = metrics.get(f"reward/{self._correctness.name}/unparsed_frac")
        if unparsed is None or unparsed <= UNPARSED_WARN_FRAC:
            self._unparsed_steps = -1  # the run has left its first steps healthy: never warn
            return
        self._unparsed_steps += 1
        if self._unparsed_steps == UNPARSED_WARN_STEPS:
            self._unparsed_steps = -1
            logger.warning(
                "reward %r found no answer in more than %.0f%% of completions on each of the first %d steps: the "
                "prompts may not ask for the answer format (e.g. 'put the final answer in \\boxed{}'), or the "
                "term's answer_format does not match how the model answers",
                self._correctness.name,
                100 * UNPARSED_WARN_FRAC,
                UNPARSED_WARN_STEPS,
            )

    def _report(self, call: _Call, judged: _Judged) -> None:
        for kind in FAILURE_KINDS:
            if kind not in judged.failures:
                continue
            if self.strict:
                raise RewardError(f"reward term {call.name!r} failed with {kind}: {judged.message}")
            if (call.name, kind) not in self._logged:
                self._logged.add((call.name, kind))
                logger.warning("reward term %r, first %s (later ones counted): %s", call.name, kind, judged.message)

    def _combine(self, judged: list[_Judged], correct: list[bool | None], batch: int) -> RewardOutput:
        drop = self.failure_value == "drop"
        dropped = [drop and any(result.failures[i] is not None for result in judged) for i in range(batch)]
        terms: dict[str, list[float]] = {}
        metrics: dict[str, float] = {}
        for term, result in zip(self.terms, judged):
            terms[term.name] = [
                _term_value(value, failure, is_dropped)
                for value, failure, is_dropped in zip(result.values, result.failures, dropped)
            ]
            metrics[f"reward/{term.name}"] = _nanmean(terms[term.name])
            for kind in FAILURE_KINDS:
                metrics[f"reward/{term.name}/{kind}"] = float(result.failures.count(kind))
            metrics[f"reward/{term.name}/timeout_frac"] = result.failures.count("timeouts") / batch if batch else 0.0
            if result.parsed is not None:
                metrics[f"reward/{term.name}/unparsed_frac"] = result.parsed.count(False) / batch if batch else 0.0
        total = [math.nan if dropped[i] else _weighted_sum(self.terms, terms, i) for i in range(batch)]
        # Finite terms can still sum to inf (1e308 x 10, an infinite weight given in code) or NaN (inf - inf), which
        # would make every advantage of the group NaN: such a total is zeroed, or dropped with failure_value="drop".
        nonfinite = [i for i in range(batch) if not dropped[i] and not math.isfinite(total[i])]
        for i in nonfinite:
            if drop:
                dropped[i], total[i] = True, math.nan
                for values in terms.values():
                    values[i] = math.nan
            else:
                total[i] = 0.0
        metrics["reward/nonfinite_total"] = float(len(nonfinite))
        if nonfinite and "nonfinite_total" not in {kind for _, kind in self._logged}:
            self._logged.add(("", "nonfinite_total"))
            logger.warning(
                "the weighted sum of the reward terms is not finite for %d of %d samples (first: sample %d); "
                "they score %s (later ones counted in reward/nonfinite_total)",
                len(nonfinite), batch, nonfinite[0], "nothing and are dropped" if drop else "0",
            )
        metrics["reward/mean"] = _nanmean(total)
        if self._correctness is not None:
            known = [value for value in correct if value is not None]
            metrics["correct/mean"] = sum(known) / len(known) if known else math.nan
            metrics["correct/unknown"] = float(batch - len(known))
        return RewardOutput(total=total, terms=terms, correct=correct, dropped=dropped, metrics=metrics)


def _as_correct(judged: _Judged) -> list[bool | None]:
    return [None if value is None else value >= 0.5 for value in judged.values]


def _term_value(value: float | None, failure: str | None, dropped: bool) -> float:
    """NaN for a dropped sample or no opinion; 0 for a failure that does not drop (failure_value="zero")."""
    if dropped:
        return math.nan
    if failure is not None:
        return 0.0
    return math.nan if value is None else value


def _weighted_sum(specs: list[RewardTermSpec], terms: dict[str, list[float]], i: int) -> float:
    """Σ_t weight_t · r_t,i over the terms that have a value for sample i (no opinion adds 0)."""
    return sum(spec.weight * terms[spec.name][i] for spec in specs if not math.isnan(terms[spec.name][i]))


def judge(outcome: Outcome, batch: int, label: str, deadline_s: float) -> _Judged:
    """Check one term call's outcome against the batch: every sample fails alike on an error, a timeout or a
    wrong-length return; single samples fail on NaN or inf. `label` names the function in the failure message."""
    if outcome.status == "timeout":
        message = f"{label} ran past its deadline of {deadline_s:g} s; its worker was killed and restarted"
        return _all_failed("timeouts", batch, message)
    if outcome.status == "crashed":
        return _all_failed("errors", batch, f"{label} killed its worker: {outcome.detail}")
    if outcome.status == "error":
        return _all_failed("errors", batch, f"{label} raised:\n{outcome.detail}")
    values = outcome.value  # data from the worker, checked here: it may have been written by the reward itself
    if isinstance(values, str):
        message = f"{label} returned a value of type {values}, not a list of {batch} values"
        return _all_failed("wrong_length", batch, message)
    if isinstance(values, dict) and type(values.get("count")) is int:
        message = f"{label} returned {outcome.value['count']} values for a batch of {batch}"
        return _all_failed("wrong_length", batch, message)
    if not isinstance(values, list) or not all(v is None or type(v) in (int, float) for v in values):
        return _all_failed("errors", batch, f"{label}'s worker sent a result that is not a list of numbers or None")
    if len(values) != batch:
        return _all_failed("wrong_length", batch, f"{label} returned {len(values)} values for a batch of {batch}")
    judged = _Judged(values=list(values), failures=[None] * batch)
    for i, value in enumerate(values):
        if value is not None and not math.isfinite(value):
            judged.values[i], judged.failures[i] = None, "nonfinite"
            judged.message = judged.message or f"{label} returned {value} for sample {i}"
    return judged


def judge_samples(outcomes: list[Outcome], label: str, sample_deadline_s: float, deadline_s: float) -> _Judged:
    """Combine a per-sample term's outcomes (each the value and the parse flag of one completion): a failure costs
    only its own sample."""
    # a failed sample's parse flag is unknown (None), not "no answer"
    judged = _Judged(
        values=[None] * len(outcomes), failures=[None] * len(outcomes), parsed=[None] * len(outcomes),
        answers=[None] * len(outcomes),
    )
    for i, outcome in enumerate(outcomes):
        sample = _sample_result(outcome.value) if outcome.status == "ok" else None
        if sample is not None:
            value, judged.parsed[i], judged.answers[i] = sample
            one = judge(Outcome("ok", value=[value]), 1, label, sample_deadline_s)
        elif outcome.status == "ok":
            one = _all_failed("errors", 1, f"{label}'s worker sent a malformed result for sample {i}")
        else:
            one = judge(outcome, 1, label, sample_deadline_s)
            if outcome.status == "timeout":
                one.message = (
                    f"{label} ran past its deadline of {sample_deadline_s:g} s per sample (or {deadline_s:g} s for "
                    f"the batch) on sample {i}; its worker was killed and replaced"
                )
        judged.values[i], judged.failures[i] = one.values[0], one.failures[0]
        judged.message = judged.message or one.message
    return judged


def _sample_result(value) -> tuple | None:
    """(score, parsed, answer) from a per-sample call's [[score], [parsed], [answer]], or None if it is not that."""
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, list) and len(v) == 1 for v in value)):
        return None
    (score,), (parsed,), (answer,) = value
    if (score is None or type(score) in (int, float)) and isinstance(parsed, bool) and (answer is None or isinstance(answer, str)):
        return score, parsed, answer
    return None


def _all_failed(kind: str, batch: int, message: str) -> _Judged:
    return _Judged(values=[None] * batch, failures=[kind] * batch, message=message)


def _nanmean(values: list[float]) -> float:
    finite = [value for value in values if not math.isnan(value)]
    return sum(finite) / len(finite) if finite else math.nan


def _arguments(completions: list, prompts: list, columns: dict[str, list], kwargs: dict) -> dict:
    """The keyword arguments of one call, as TRL passes them: prompts, completions, then every column."""
    return {"prompts": prompts, "completions": completions, **columns, **kwargs}


def _row(columns: dict[str, list], index: int) -> dict[str, list]:
    return {key: [values[index]] for key, values in columns.items()}


def _load_functions(specs: list[str], checks: list[tuple[str, dict]]) -> list[Callable]:
    """Worker initializer: import every reward function once; a term whose function cannot take TRL's keyword call
    is a user error now, not a failure on every step."""
    functions = [load_reward_fn(spec) for spec in specs]
    if any(detail in specs for detail, _ in PER_SAMPLE.values()):
        prepare_verifier()  # every worker forks with math-verify imported: a replacement starts in milliseconds
    for spec, kwargs in checks:
        check_call(spec, functions[specs.index(spec)], kwargs)
    return functions


def _call_reward(functions: list[Callable], task: tuple) -> list[float | None] | str | tuple:
    """Worker handler: one call, its result JSON data (the pool sends it as such). A batch call returns the values
    as plain floats (None kept), the type name of a return value that is not a sequence, or {"count": n} for n values
    that are not the batch's; a per-sample call returns (values, parse flags, answers) of its one sample."""
    fn_index, arguments, per_sample = task
    values = functions[fn_index](**arguments)
    if inspect.iscoroutine(values):  # an async def reward
        values = asyncio.run(values)
    if per_sample:
        scores, parsed, answers = zip(*values)
        answers = [None if answer is None else str(answer) for answer in answers]
        return [_as_float(value, i) for i, value in enumerate(scores)], [bool(f) for f in parsed], answers
    if hasattr(values, "tolist") and getattr(values, "ndim", 0) >= 1:  # a NumPy array or a torch tensor
        values = values.tolist()
    if isinstance(values, Iterator):  # TRL iterates the return value, so a generator works there too
        values = list(values)
    if not isinstance(values, (list, tuple)):
        return type(values).__name__
    if len(values) != len(arguments["completions"]):  # its length is all the caller needs (a huge return stays here)
        return {"count": len(values)}
    return [_as_float(value, i) for i, value in enumerate(values)]


def _as_float(value: Any, index: int) -> float | None:
    """A value as TRL takes it (`torch.tensor(values, dtype=float32)`): None, a bool or a number, and also NumPy's
    scalars (np.bool_, np.float32, np.int64, ...) and 0-d arrays or tensors, read with `.item()`."""
    if value is None:
        return None
    if isinstance(value, (bool, numbers.Real)):
        return float(value)
    if callable(getattr(value, "item", None)) and tuple(getattr(value, "shape", (None,))) == ():
        item = value.item()
        if isinstance(item, (bool, numbers.Real)):
            return float(item)
    raise TypeError(f"value {index} has type {type(value).__name__}, not a number or None")
