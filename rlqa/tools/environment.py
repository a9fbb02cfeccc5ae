"""Stateful environments (issue 27 point 3), by TRL's `environment_factory` convention.

`rollout.environment: path/to/file.py:ClassName` (or `package.module:ClassName`) names a class that rlqa treats as
TRL's GRPOTrainer treats what `environment_factory` returns:

- one instance per rollout (episode), made by calling the class with no arguments;
- `reset(**row)` starts the episode from its dataset row (`prompt`: the chat messages, `answer`, `solution` when the
  row has one, and every other column); it returns None, or a string appended to the last message of the prompt
  before the first turn (the prompt is rendered and tokenised again, in the rollout worker);
- every public method (not `reset`, `get_reward`, nor `_private`) is a tool the model calls, typed and with a
  docstring like any `rollout.tools` function; its result is the tool message, and what the model sees next depends
  on what its calls did to the instance;
- `get_reward()`, if defined, is called once when the episode ends and scores it from the instance's state; it
  reaches the total as the built-in reward term `environment` (rewards.environment), a term like any other (weight,
  `reward/<name>` metrics, failures);
- rlqa adds one thing TRL has not: a `done` attribute or property (OpenEnv's `Observation.done`), read after every
  round of calls; once true, the episode ends there.

Where the instance lives: each episode's instance lives in a worker process of its own (`rewards.workers`' pool
sessions: a fork of a zygote that imported the class), for the whole episode; so a method that raises gives the
model an error message, and one that hangs past `rollout.tool_deadline_s` or kills its interpreter ends that
instance (the model reads an error; its later calls do too), never the rollout worker. The reward is a number sent
back as JSON (nothing is unpickled from a worker), so reward functions do not get the instances (TRL's
`environments=`): `get_reward` is where the state is read.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, replace
from pathlib import Path

from rlqa.errors import UserError
from rlqa.loading import absolute_location, load_attribute
from rlqa.tools.registry import tool_schema
from rlqa.tools.runner import result_text, settle
from rewards.workers import Outcome, Session, WorkerPool

RESERVED = ("reset", "get_reward")  # methods of the convention, never tools


def resolve_environment_spec(spec: str, base_dir: Path | str | None = None) -> str:
    """The canonical form of a spec, a file path made absolute. Imports nothing."""
    spec = spec.strip()
    location, _, attribute = spec.rpartition(":")
    if not location or not attribute:
        raise UserError(f"rollout.environment: {spec!r}: expected 'package.module:ClassName' or 'path/to/file.py:ClassName'")
    return f"{absolute_location(location, base_dir)}:{attribute}"


def load_environment(spec: str) -> type:
    """The class a resolved spec names, checked against the convention (a UserError naming what is wrong)."""
    attribute = spec.rpartition(":")[2]
    where = f"rollout.environment: {spec!r}"
    target = load_attribute(spec, where, "rlqa_user_environments")
    if not inspect.isclass(target):
        raise UserError(f"{where}: {attribute} is not a class (type {type(target).__name__}); an environment is a class whose instances are episodes")
    if not callable(getattr(target, "reset", None)):
        raise UserError(f"{where}: {attribute} has no reset method; reset(**row) starts each episode")
    if inspect.isfunction(inspect.getattr_static(target, "done", None)):
        raise UserError(f"{where}: {attribute}.done is a method; done is an attribute or property that is true once the episode is over")
    try:
        inspect.signature(target).bind()
    except TypeError as err:
        raise UserError(f"{where}: {attribute}() must take no arguments, as TRL's environment_factory is called ({err})") from None
    except ValueError:
        pass
    return target


def method_names(cls: type) -> list[str]:
    """The methods the model may call, as TRL lists them: public functions of the class, `reset` and `get_reward`
    aside (listed on the class, so no property is evaluated)."""
    return [name for name, _ in inspect.getmembers(cls, predicate=inspect.isfunction) if name not in RESERVED and not name.startswith("_")]


def method_schemas(cls: type, spec: str) -> list[dict]:
    """The JSON schema of each method, as of a function without its `self` (transformers' `get_json_schema`)."""
    schemas = []
    for name, bound in unbound_methods(cls).items():
        try:
            schemas.append(tool_schema(bound, f"{spec.rpartition(':')[2]}.{name}"))
        except UserError as err:  # the registry's words name rollout.tools
            raise UserError(str(err).replace("rollout.tools", "rollout.environment", 1)) from None
    return schemas


def unbound_methods(cls: type) -> dict:
    """Each method bound to a stand-in object, so its signature and schema leave `self` out (nothing runs)."""
    stand_in = object()
    return {name: getattr(cls, name).__get__(stand_in) for name in method_names(cls)}


@dataclass(frozen=True)
class EnvironmentInfo:
    spec: str  # resolved
    schemas: list[dict]
    has_reward: bool


def environment_info(rollout, base_dir: Path | str | None = None) -> EnvironmentInfo | None:
    """What a validated `rollout` section's environment shows the model and whether it scores episodes; None
    without one."""
    if not rollout.environment:
        return None
    spec = resolve_environment_spec(rollout.environment, base_dir)
    cls = load_environment(spec)
    return EnvironmentInfo(spec, method_schemas(cls, spec), callable(getattr(cls, "get_reward", None)))


def check_environment(recipe) -> None:
    """`rlqa check` and `rlqa train`, before anything starts: the environment loads and keeps the convention, its
    method names do not clash with `rollout.tools`, and a reward term or correctness reading its reward has one."""
    from rlqa.tools.registry import load_tools

    info = environment_info(recipe.rollout, recipe.base_dir)
    if info is None:
        return
    tools = {schema["function"]["name"] for _, _, schema in load_tools(list(recipe.rollout.tools), recipe.base_dir)}
    for schema in info.schemas:
        if schema["function"]["name"] in tools:
            raise UserError(f"rollout.environment: its method {schema['function']['name']!r} has the name of a tool in rollout.tools; a model calls a tool by its name")
    if not info.schemas:
        raise UserError(f"rollout.environment: {recipe.rollout.environment!r} has no public method for the model to call")
    uses_reward = any(_is_environment_reward(t.fn) for t in recipe.rewards.terms) or _is_environment_reward(recipe.rewards.correctness)
    if uses_reward and not info.has_reward:
        raise UserError(f"rewards: the environment term reads get_reward(), which {recipe.rollout.environment!r} does not define")


def _is_environment_reward(spec: str | None) -> bool:
    return spec is not None and spec.strip() in ("environment", "rewards.environment:environment")


def episode_row(example) -> dict:
    """The keyword arguments of `reset`: the row as TRL passes it, its prompt as chat messages."""
    row = {"prompt": [dict(m) for m in example.messages] if example.messages is not None else example.prompt, "answer": example.answer}
    if example.solution is not None:
        row["solution"] = example.solution
    return {**row, **{k: v for k, v in example.columns.items() if k not in row}}


def environment_rows(recipe, model_dir: str) -> dict[str, dict] | None:
    """rollout.environment: the reset row of every prompt of the recipe's datasets, by prompt id (None without an
    environment). The rollout group hands each request its row."""
    if not recipe.rollout.environment:
        return None
    from rlqa.data.sources import build_examples
    from rlqa.models import load_tokenizer

    tokenizer = load_tokenizer(model_dir, recipe.model.trust_remote_code)
    examples = build_examples(recipe.data.train, recipe, tokenizer, "data.train") + build_examples(recipe.data.test, recipe, tokenizer, "data.test")
    return {e.prompt_id: episode_row(e) for e in examples}


def with_rows(requests: list, rows: dict[str, dict] | None) -> list:
    """The requests, each with its prompt's row (unchanged without an environment)."""
    if rows is None:
        return requests
    missing = next((r.prompt_id for r in requests if r.prompt_id not in rows), None)
    if missing is not None:
        raise ValueError(f"rollout.environment: no dataset row for prompt {missing!r}")
    return [replace(r, row=rows[r.prompt_id]) for r in requests]


# -- the episodes' processes -----------------------------------------------------------------------------------------


@dataclass
class EpisodeState:
    """What one episode's environment did, read by the multi-turn loop."""

    session: Session | None
    error: str = ""  # the first thing that went wrong with the instance (reset, a crash, get_reward), for the logs

    def fail(self, what: str) -> None:
        self.error = self.error or what


class EnvironmentHost:
    """The processes of a rollout worker's episodes: one session (worker process) per episode, forked from a zygote
    that imported the environment's class."""

    def __init__(self, spec: str, deadline_s: float):
        self.spec = spec
        self.cls_name = spec.rpartition(":")[2]
        cls = load_environment(spec)
        self.methods = unbound_methods(cls)  # name -> function (signature checks before a call is sent)
        self.has_reward = callable(getattr(cls, "get_reward", None))
        self.deadline_s = deadline_s
        self._pool = WorkerPool(_environment_task, initializer=_new_state, initargs=(spec,), processes=1, name="rlqa-env")
        self._pool.start()

    def reset(self, rows: list[dict]) -> tuple[list[EpisodeState], list[str | None]]:
        """A fresh instance per row, reset from it: each episode's state, and the observation its reset returned
        (None, or the text to append to the prompt)."""
        states = [EpisodeState(self._pool.session()) for _ in rows]
        outcomes = self._pool.run_sessions([(s.session, ("reset", row)) for s, row in zip(states, rows)], self.deadline_s)
        observations = []
        for state, outcome in zip(states, outcomes):
            observation = None
            if outcome.status != "ok":
                state.fail(f"reset: {self._describe(outcome)}")
            elif outcome.value is not None and not isinstance(outcome.value, str):
                state.fail(f"reset returned {type(outcome.value).__name__}; it returns None or a string")
            else:
                observation = outcome.value
            observations.append(observation)
        return states, observations

    def call(self, calls: list[tuple[EpisodeState, str, dict]]) -> list[tuple[str, str, bool]]:
        """One method call on each of these episodes (distinct), side by side: (what the model reads, "ok" / "error" /
        "timeout", whether the episode is done)."""
        live = [i for i, (state, _, _) in enumerate(calls) if not state.error]
        results: list[tuple[str, str, bool]] = [
            (f"Error: the environment is gone ({state.error})", "error", False) for state, _, _ in calls
        ]
        outcomes = self._pool.run_sessions([(calls[i][0].session, ("call", calls[i][1], calls[i][2])) for i in live], self.deadline_s)
        for i, outcome in zip(live, outcomes):
            state, name, _ = calls[i]
            if outcome.status == "ok":
                content, done = outcome.value
                results[i] = (content, "ok", bool(done))
                continue
            if outcome.status == "error" and not state.session.ended:  # the method raised: the instance lives on
                results[i] = (f"Error: {_last_line(outcome.detail)}", "error", False)
                continue
            state.fail(f"{name}: {self._describe(outcome)}")
            status = "timeout" if outcome.status == "timeout" else "error"
            what = f"did not finish within {self.deadline_s:g} s" if status == "timeout" else f"crashed ({outcome.detail})"
            results[i] = (f"Error: {name} {what}; the environment is gone", status, False)
        return results

    def finish(self, states: list[EpisodeState]) -> list[float | None]:
        """Each episode's `get_reward()` (None without one; NaN where the instance is gone or the call failed), then
        its process is ended."""
        rewards: list[float | None] = [None] * len(states)
        try:
            if self.has_reward:
                live = [i for i, s in enumerate(states) if not s.error]
                rewards = [math.nan] * len(states)
                outcomes = self._pool.run_sessions([(states[i].session, ("reward",)) for i in live], self.deadline_s)
                for i, outcome in zip(live, outcomes):
                    value = outcome.value if outcome.status == "ok" else None
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        rewards[i] = float(value)
                    else:
                        states[i].fail(f"get_reward: {self._describe(outcome)}" if outcome.status != "ok" else f"get_reward returned {value!r}, not a number")
        finally:
            self.close_sessions(states)
        return rewards

    def close_sessions(self, states: list[EpisodeState]) -> None:
        for state in states:
            if state.session is not None:
                self._pool.close_session(state.session)

    def _describe(self, outcome: Outcome) -> str:
        if outcome.status == "timeout":
            return f"did not finish within {self.deadline_s:g} s"
        if outcome.status == "crashed":
            return f"crashed ({outcome.detail})"
        return _last_line(outcome.detail)

    def close(self) -> None:
        self._pool.close()


def _last_line(traceback_text: str) -> str:
    lines = [line for line in traceback_text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "the environment failed"


# -- what runs in an episode's process -------------------------------------------------------------------------------


def _new_state(spec: str) -> dict:
    """Zygote initializer: import the class once; each forked episode process makes its own instance."""
    return {"cls": load_environment(spec), "instance": None}


def _environment_task(state: dict, task: tuple):
    """Worker handler: ("reset", row) makes the episode's instance and resets it; ("call", name, arguments) runs a
    method and gives (the text the model reads, done); ("reward",) gives get_reward()."""
    kind = task[0]
    if kind == "reset":
        state["instance"] = state["cls"]()
        return settle(state["instance"].reset(**task[1]))
    instance = state["instance"]
    if kind == "reward":
        return settle(instance.get_reward())
    _, name, arguments = task
    result = settle(getattr(instance, name)(**arguments))
    return [result_text(result), bool(getattr(instance, "done", False))]
