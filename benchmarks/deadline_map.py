"""`deadline_map(fn, items, processes, deadline_s)`: fn over items in `rewards.workers` processes, each item under its
own deadline (a hung item is killed and costs only itself). For the benchmarks: `fn` and `initializer` are
module-level functions, of a module or of the script being run; `initializer()` runs once, before any deadline, in
the zygote every worker forks from."""

import importlib
import importlib.util
import sys
import time
from dataclasses import dataclass
from typing import Any

from rewards.workers import WorkerPool


@dataclass(frozen=True)
class Timed:
    status: str  # "ok", "error", "timeout" or "crashed", as rewards.workers.Outcome
    value: Any  # fn's result when ok, else what went wrong
    seconds: float  # fn's own time in its worker (ok only; else nan)


def deadline_map(fn, items: list, processes: int = 2, deadline_s: float = 10.0, initializer=None) -> list[Timed]:
    names = (_where(fn), _where(initializer) if initializer is not None else None)
    with WorkerPool(_call, initializer=_setup, initargs=names, processes=processes, name="bench") as pool:
        outcomes = pool.run(list(items), deadline_s)
    return [
        Timed("ok", o.value[0], o.value[1]) if o.status == "ok" else Timed(o.status, o.detail, float("nan"))
        for o in outcomes
    ]


def _where(fn) -> tuple[str, str]:
    """(module name or script path, function name): a script's functions are found again by importing its file."""
    module = fn.__module__
    if module == "__main__":
        module = sys.modules["__main__"].__file__
    return module, fn.__name__


def _load(where: tuple[str, str]):
    module, name = where
    if module.endswith(".py"):
        spec = importlib.util.spec_from_file_location("bench_script", module)
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)  # the script's main() stays behind its __name__ guard
        return getattr(loaded, name)
    return getattr(importlib.import_module(module), name)


def _setup(fn_where, initializer_where):
    if initializer_where is not None:
        _load(initializer_where)()
    return _load(fn_where)


def _call(fn, item):
    started = time.perf_counter()
    value = fn(item)
    return value, time.perf_counter() - started
