"""Running a model's tool calls, where nothing a tool does can take the rollout worker down.

User tools run in a `rewards.workers.WorkerPool` (the reward functions' pool): forks of a zygote that imported the
tools once, each call under `rollout.tool_deadline_s`; a tool that raises, hangs past its deadline (its process
group is killed) or kills its interpreter yields a `ToolOutcome` whose content is an error sentence the model reads,
and the worker is replaced. The built-in `python` tool runs the model's code in its own sandbox
(`rlqa.tools.python_tool`), with its wall deadline the same `tool_deadline_s` and the recipe's `rollout.python`
limits; sandboxes run side by side in threads (each is a subprocess; the threads only wait).

What counts: `status` "error" for a call that could not produce a result (a malformed call, an unknown tool,
arguments the function does not take, an exception, a crash, a sandbox that could not be built), "timeout" for one
stopped at its deadline. Python code that raises is not a tool error: its traceback is the tool's output.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlqa.tools.hermes import BadCall, ToolCall
from rlqa.tools.python_tool import SandboxLimits, python, run_python
from rlqa.tools.registry import PYTHON_SPEC, load_tool, load_tools
from rewards.workers import Outcome, WorkerPool

TOOL_PROCESSES = 2  # user-tool calls of one turn run this many at a time in each rollout worker
SANDBOXES = 4  # python-tool calls of one turn run this many at a time
MAX_RESULT_CHARS = 16384  # a longer result is cut here, with a note: the token budget bounds the rest


@dataclass(frozen=True)
class ToolOutcome:
    name: str
    content: str  # what the model reads in the tool message
    status: Literal["ok", "error", "timeout"]


class ToolRunner:
    """The tools of `rollout.tools`, ready to run calls. `schemas` are what the prompt showed the model."""

    def __init__(self, specs: list[str], base_dir: Path | str | None, deadline_s: float, python_limits: SandboxLimits):
        loaded = load_tools(specs, base_dir, python_limits)
        self.schemas = [schema for _, _, schema in loaded]
        self.deadline_s = deadline_s
        self.python_limits = python_limits
        self._index = {schema["function"]["name"]: i for i, (_, _, schema) in enumerate(loaded)}
        self._specs = [spec for spec, _, _ in loaded]
        self._functions = [fn for _, fn, _ in loaded]
        user = [spec for spec in self._specs if spec != PYTHON_SPEC]
        self._pool = None
        if user:
            self._pool = WorkerPool(_call_tool, initializer=_load_functions, initargs=(self._specs,), processes=TOOL_PROCESSES, name="rlqa-tool")
            self._pool.start()

    @property
    def names(self) -> list[str]:
        return list(self._index)

    def run(self, calls: list[ToolCall | BadCall]) -> list[ToolOutcome]:
        """One outcome per call, in order; never raises for what a call or a tool does."""
        outcomes: list[ToolOutcome | None] = [None] * len(calls)
        user, sandboxed = [], []
        for i, call in enumerate(calls):
            if isinstance(call, BadCall):
                outcomes[i] = ToolOutcome(call.name, f"Error: {call.error}", "error")
            elif call.name not in self._index:
                known = ", ".join(self.names)
                outcomes[i] = ToolOutcome(call.name, f"Error: there is no tool named {call.name!r} (tools: {known})", "error")
            elif (problem := _signature_problem(self._functions[self._index[call.name]], call)) is not None:
                outcomes[i] = ToolOutcome(call.name, f"Error: {problem}", "error")
            elif self._specs[self._index[call.name]] == PYTHON_SPEC:
                sandboxed.append(i)
            else:
                user.append(i)
        with ThreadPoolExecutor(max_workers=SANDBOXES) as threads:
            futures = {i: threads.submit(self._python, calls[i]) for i in sandboxed}
            if user:
                tasks = [(self._index[calls[i].name], calls[i].arguments) for i in user]
                for i, outcome in zip(user, self._pool.run(tasks, self.deadline_s)):
                    outcomes[i] = self._judge(calls[i].name, outcome)
            for i, future in futures.items():
                outcomes[i] = future.result()
        return outcomes

    def _python(self, call: ToolCall) -> ToolOutcome:
        try:
            result = run_python(call.arguments["code"], limits=self.python_limits)
        except Exception as err:  # a bug in the sandbox's caller: the model still gets its turn
            return ToolOutcome(call.name, f"Error: the sandbox failed: {type(err).__name__}: {err}", "error")
        status = "timeout" if result.timed_out else "error" if result.error.startswith("sandbox unavailable") else "ok"
        return ToolOutcome(call.name, _cut(result.for_model()), status)

    def _judge(self, name: str, outcome: Outcome) -> ToolOutcome:
        if outcome.status == "ok":
            return ToolOutcome(name, _cut(outcome.value), "ok")
        if outcome.status == "timeout":
            return ToolOutcome(name, f"Error: {name} did not finish within {self.deadline_s:g} s", "timeout")
        if outcome.status == "crashed":
            return ToolOutcome(name, f"Error: {name} crashed ({outcome.detail})", "error")
        return ToolOutcome(name, f"Error: {_last_line(outcome.detail)}", "error")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()


def python_limits(rollout) -> SandboxLimits:
    """The built-in python tool's limits from a validated `rollout` section: `tool_deadline_s` is its wall
    deadline, `rollout.python` the rest (the other limits keep the sandbox's defaults)."""
    cfg = rollout.python
    return SandboxLimits(wall_s=rollout.tool_deadline_s, cpu_s=cfg.cpu_s, memory_mb=cfg.memory_mb, max_output_bytes=cfg.max_output_bytes)


def _signature_problem(fn: Callable, call: ToolCall) -> str | None:
    """Why `fn(**arguments)` cannot be called (a missing or unknown argument), checked before anything runs."""
    try:
        inspect.signature(fn).bind(**call.arguments)
    except TypeError as err:
        return f"{call.name}: {err}"
    except ValueError:  # no signature to check: the call itself will say
        return None
    if fn is python and not isinstance(call.arguments.get("code"), str):
        return "python: code must be a string"
    return None


def _cut(text: str) -> str:
    if len(text) <= MAX_RESULT_CHARS:
        return text
    return text[:MAX_RESULT_CHARS] + f"\n[output cut at {MAX_RESULT_CHARS} characters]"


def _last_line(traceback_text: str) -> str:
    """The exception line of a worker's traceback ("ValueError: bad input")."""
    lines = [line for line in traceback_text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "the tool failed"


def _load_functions(specs: list[str]) -> list[Callable | None]:
    """Worker initializer: import each user tool once (the built-in python tool never runs here)."""
    return [None if spec == PYTHON_SPEC else load_tool(spec) for spec in specs]


def _call_tool(functions: list[Callable], task: tuple) -> str:
    """Worker handler: one call, its result as the text the model reads (JSON for a non-string result, as a
    template would show it)."""
    index, arguments = task
    return result_text(settle(functions[index](**arguments)))


def settle(value):
    """A value, or what an `async def` tool's coroutine returns."""
    return asyncio.run(value) if inspect.iscoroutine(value) else value


def result_text(result) -> str:
    """What the model reads of a tool's result: a string as it is, anything else as JSON (as a template would show
    it), or str() when it is not JSON."""
    if isinstance(result, str):
        return result
    try:
        return json.dumps(result, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(result)
