"""`deadline_map(fn, items, processes, deadline_s)`: fn over items in worker processes, each under its own deadline.

For the benchmark scripts: math-verify can hang on some inputs, so a call past its deadline has its worker killed
and replaced, and scores as a timeout; the other items still run. Each result carries the seconds the call took
inside its worker (start-up and transfer not counted). Workers are forked, so `fn` may be any module-level function.
"""

import multiprocessing
import time
from dataclasses import dataclass
from multiprocessing.connection import wait


@dataclass(frozen=True)
class Outcome:
    status: str  # "ok", "error" (fn raised: value is the message) or "timeout"
    value: object
    seconds: float


def deadline_map(fn, items: list, processes: int = 2, deadline_s: float = 10.0, initializer=None) -> list[Outcome]:
    """`initializer()` runs once in each worker before its first item (imports), outside every deadline."""
    context = multiprocessing.get_context("fork")
    results: list[Outcome | None] = [None] * len(items)
    pending = list(range(len(items)))[::-1]  # popped from the end: items run in order
    workers: dict = {}  # connection -> (process, item index, started)

    def start_worker():
        parent, child = context.Pipe()
        process = context.Process(target=_serve, args=(fn, initializer, child), daemon=True)
        process.start()
        child.close()
        parent.recv()  # ready: the initializer has run
        return parent, process

    idle = [start_worker() for _ in range(min(processes, len(items)))]
    while pending or workers:
        while idle and pending:
            connection, process = idle.pop()
            index = pending.pop()
            connection.send(items[index])
            workers[connection] = (process, index, time.monotonic())
        first_deadline = min(started for _, _, started in workers.values()) + deadline_s
        for connection in wait(list(workers), timeout=max(0.0, first_deadline - time.monotonic())):
            process, index, _ = workers.pop(connection)
            try:
                results[index] = Outcome(*connection.recv())
                idle.append((connection, process))
            except EOFError:  # the worker died (e.g. out of memory): replace it
                results[index] = Outcome("error", "worker died", deadline_s)
                process.join()
                idle.append(start_worker())
        now = time.monotonic()
        for connection, (process, index, started) in list(workers.items()):
            if now - started > deadline_s:
                del workers[connection]
                process.kill()
                process.join()
                results[index] = Outcome("timeout", None, deadline_s)
                idle.append(start_worker())
    for connection, process in idle:
        connection.close()
        process.kill()
        process.join()
    return results


def _serve(fn, initializer, connection) -> None:
    if initializer is not None:
        initializer()
    connection.send("ready")
    while True:
        try:
            item = connection.recv()
        except EOFError:
            return
        started = time.perf_counter()
        try:
            value = fn(item)
            status = "ok"
        except Exception as error:  # noqa: BLE001 - a benchmark counts a failing call and goes on
            value, status = f"{type(error).__name__}: {error}", "error"
        connection.send((status, value, time.perf_counter() - started))
