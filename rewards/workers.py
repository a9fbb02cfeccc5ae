"""Persistent worker processes that run hang-prone or crash-prone code, each task under its own deadline.

Reward code and math-verify may hang (sympy on `5^{5^{5^{5}}}`), kill their interpreter (`os._exit`, a segfault in an
extension) or raise anything, BaseException included; none of it may reach the training driver. So each worker is a
process that sets itself up once (`initializer(*initargs)` -> state), then answers `handler(state, task)` one task at
a time over a pipe. A task past its deadline gets its worker killed (SIGKILL) and replaced; the caller sees a
"timeout" outcome for that task and the other tasks go on.

- A worker is a fresh interpreter (`python -c`, like multiprocessing's "spawn"), never a fork: the caller may be a
  Ray actor with threads, and a forked copy of a threaded process can deadlock. Unlike "spawn" it does not re-run
  the caller's `__main__` (a console script would import torch into every worker; a script without the
  `if __name__ == "__main__"` guard would recurse), and it works under daemonic processes too.
- No signals in the caller: `run` may be called from any thread, several threads at once. Each worker serves one
  caller at a time; a caller holds only the workers it has work for.
- Workers exit when their pipe closes or their parent dies (checked every `ORPHAN_CHECK_S`); the pool kills its
  workers on `close()`, when it is garbage-collected, and at interpreter exit.
"""

import itertools
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rlqa.errors import UserError

ORPHAN_CHECK_S = 0.5
# Spawning a Python interpreter and importing sympy takes seconds on a busy 2-core machine; this bounds a broken start.
START_TIMEOUT_S = 120.0
# The worker's whole program: take the caller's import path over the pipe, then serve.
_BOOTSTRAP = """\
import sys
from multiprocessing.connection import Connection
conn = Connection(int(sys.argv[1]))
sys.path[:] = conn.recv()
from rewards.workers import _worker_main
_worker_main(conn)
"""


@dataclass(frozen=True)
class Outcome:
    """What became of one task: "ok" (value holds the handler's result), "error" (detail holds the traceback),
    "timeout" (the worker was killed at the deadline) or "crashed" (the worker died, detail says how)."""

    status: Literal["ok", "error", "timeout", "crashed"]
    value: Any = None
    detail: str = ""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, chained under it when it is re-raised in the caller."""


class _Worker:
    def __init__(self, name: str, setup: tuple):
        self.name = name
        self.conn, child_conn = multiprocessing.Pipe(duplex=True)
        child_fd = child_conn.fileno()
        self.process = subprocess.Popen([sys.executable, "-c", _BOOTSTRAP, str(child_fd)], pass_fds=(child_fd,))
        child_conn.close()
        self.conn.send(sys.path)
        self.conn.send(setup)
        self.ready = False

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def exit_description(self) -> str:
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "closed its pipe but did not exit"
        return f"killed by signal {-code}" if code < 0 else f"exited with code {code}"

    def kill(self) -> None:
        self.process.kill()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # stuck in the kernel; subprocess reaps it later
            pass
        self.conn.close()


@dataclass(frozen=True)
class _Job:
    index: int
    expires: float  # time.monotonic() at which the worker is killed
    sent: bool  # False while the worker is still starting up


class WorkerPool:
    """`processes` workers running `handler(state, task)`, with `state = initializer(*initargs)` once per worker.

    `handler` and `initializer` must be module-level functions (they are pickled by reference).
    """

    def __init__(
        self,
        handler: Callable[[Any, Any], Any],
        *,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple = (),
        processes: int = 1,
        name: str = "rlqa-worker",
    ):
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        self._setup = (handler, initializer, initargs)
        self._processes = processes
        self._name = name
        self._names = itertools.count()
        self._lock = threading.Lock()
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        # Every live worker, idle or held; shared with the exit finalizer, which must not hold a reference to self.
        self._workers: list[_Worker] = []
        self._started = False
        self._closed = False
        weakref.finalize(self, _kill_all, self._workers)

    def start(self) -> None:
        """Start the workers and wait until each has run its initializer; re-raises an initializer's exception."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self._name}: the pool is closed")
            if self._started:
                return
            workers = [self._spawn_locked() for _ in range(self._processes)]
            try:
                for worker in workers:
                    _await_ready(worker, self._name)
            except BaseException:
                _kill_all(self._workers)
                raise
            for worker in workers:
                self._idle.put(worker)
            self._started = True

    def run(self, tasks: Sequence[Any], deadlines_s: float | Sequence[float]) -> list[Outcome]:
        """One outcome per task, in order. A task's deadline counts from when its worker received it."""
        if isinstance(deadlines_s, (int, float)):
            deadlines_s = [float(deadlines_s)] * len(tasks)
        if len(deadlines_s) != len(tasks):
            raise ValueError(f"{len(tasks)} tasks but {len(deadlines_s)} deadlines")
        self.start()
        outcomes: list[Outcome | None] = [None] * len(tasks)
        todo = deque(range(len(tasks)))
        held: dict[_Worker, _Job] = {}

        def assign(worker: _Worker, index: int) -> None:
            held[worker] = _send(worker, index, tasks[index], deadlines_s[index])

        while todo or held:
            while todo:
                worker = self._take(block=not held)
                if worker is None:
                    break
                assign(worker, todo.popleft())
            timeout = max(0.0, min(job.expires for job in held.values()) - time.monotonic())
            ready = multiprocessing.connection.wait([worker.conn for worker in held], timeout=timeout)
            now = time.monotonic()
            for worker, job in list(held.items()):
                if worker.conn in ready:
                    del held[worker]
                    outcome, worker = self._receive(worker)
                elif now >= job.expires:
                    del held[worker]
                    outcome, worker = _expired(worker, job), self._replace(worker)
                else:
                    continue
                if outcome is None:  # the worker has just finished starting: now it gets its task
                    assign(worker, job.index)
                    continue
                outcomes[job.index] = outcome
                if todo:
                    assign(worker, todo.popleft())
                else:
                    self._idle.put(worker)
        return outcomes

    def close(self) -> None:
        """Kill every worker; call it once no `run` is in flight."""
        with self._lock:
            self._closed = True
            _kill_all(self._workers)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _spawn_locked(self) -> _Worker:
        worker = _Worker(f"{self._name}-{next(self._names)}", self._setup)
        self._workers.append(worker)
        return worker

    def _replace(self, worker: _Worker) -> _Worker:
        worker.kill()
        with self._lock:
            if worker in self._workers:
                self._workers.remove(worker)
            if self._closed:
                raise RuntimeError(f"{self._name}: the pool was closed while tasks were running")
            return self._spawn_locked()

    def _take(self, block: bool) -> _Worker | None:
        """An idle worker; one that died while idle (killed from outside, OOM) is replaced before it gets a task."""
        try:
            worker = self._idle.get(block=block)
        except queue.Empty:
            return None
        return worker if worker.is_alive() else self._replace(worker)

    def _receive(self, worker: _Worker) -> tuple[Outcome | None, _Worker]:
        """The outcome the worker's message settles (None when it only says it is ready), and the worker to go on
        with: a replacement when this one died."""
        try:
            kind, payload = worker.conn.recv()
        except (EOFError, OSError):
            return Outcome("crashed", detail=f"{worker.name} {worker.exit_description()}"), self._replace(worker)
        except Exception:  # the result arrived whole but does not unpickle here
            return Outcome("error", detail=traceback.format_exc()), worker
        if kind == "ready":
            worker.ready = True
            return None, worker
        if kind == "init_error":
            return Outcome("crashed", detail=f"worker failed to start: {payload[0]}"), self._replace(worker)
        if kind == "ok":
            return Outcome("ok", value=payload), worker
        return Outcome("error", detail=payload), worker


def _send(worker: _Worker, index: int, task: Any, deadline_s: float) -> _Job:
    if not worker.ready:  # the task waits until the worker says it is ready
        return _Job(index, time.monotonic() + START_TIMEOUT_S, sent=False)
    try:
        worker.conn.send(task)
    except OSError:  # the worker died: its end-of-file settles the job on the next wait
        pass
    return _Job(index, time.monotonic() + deadline_s, sent=True)


def _expired(worker: _Worker, job: _Job) -> Outcome:
    if job.sent:
        return Outcome("timeout", detail=f"no answer within the deadline; {worker.name} was killed")
    return Outcome("crashed", detail=f"{worker.name} did not start within {START_TIMEOUT_S:.0f} s")


def _await_ready(worker: _Worker, pool_name: str) -> None:
    if not worker.conn.poll(START_TIMEOUT_S):
        raise RuntimeError(f"{pool_name}: a worker did not start within {START_TIMEOUT_S:.0f} s")
    try:
        kind, payload = worker.conn.recv()
    except EOFError:
        raise RuntimeError(f"{pool_name}: {worker.name} died while starting ({worker.exit_description()})") from None
    if kind == "init_error":
        message, is_user_error, remote_traceback = payload
        if is_user_error:
            raise UserError(message) from RemoteTraceback(remote_traceback)
        raise RuntimeError(f"{pool_name}: a worker failed to start: {message}") from RemoteTraceback(remote_traceback)
    worker.ready = True


def _kill_all(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.kill()
    workers.clear()


def _worker_main(conn) -> None:
    """A worker's life: set up once, then answer tasks until the pipe closes."""
    # Ctrl-C reaches the whole process group; the caller decides what stops, and kills us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    try:
        handler, initializer, initargs = conn.recv()  # unpickling imports the handler's module
        state = initializer(*initargs) if initializer is not None else None
    except BaseException as exc:
        # Plain strings: the exception's class may not import in the caller.
        message = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        conn.send(("init_error", (message, isinstance(exc, UserError), traceback.format_exc())))
        return
    conn.send(("ready", None))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply = ("ok", handler(state, task))
        except BaseException as exc:  # user code may raise SystemExit, or math-verify its BaseException timeout
            # The traceback starts at the handler: this loop's frame says nothing about the failure.
            reply = ("error", "".join(traceback.format_exception(type(exc), exc, exc.__traceback__.tb_next)))
        try:
            conn.send(reply)
        except OSError:  # the caller is gone
            return
        except Exception:  # the result does not pickle; nothing was written yet
            conn.send(("error", traceback.format_exc()))


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(ORPHAN_CHECK_S)
    os._exit(1)
